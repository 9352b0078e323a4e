//! The archive index, behind the [`Index`] trait; [`SqliteIndex`] is the implementation.
//!
//! SQLite through sqlx, WAL journal, `synchronous = FULL` (a put is acknowledged only
//! after its transaction is durable), foreign keys on, a pool of 8 connections. The
//! schema lives in `server/migrations/` and is embedded in the binary (see
//! [`EmbeddedMigrations`]); it is applied on open. Write transactions start with
//! `BEGIN IMMEDIATE` so that concurrent writers queue on SQLite's busy timeout instead of
//! failing on a read-to-write upgrade.
//!
//! **One writer, group commit**: every instance write (insert, replace, removal) is made
//! by one writer task. Whatever inserts are waiting when it becomes free go into one
//! transaction, each under its own savepoint (a failing insert is rolled back alone and
//! reported to its caller alone), and one WAL fsync makes the whole group durable; every
//! caller is answered only after that commit. With one association the group is one
//! insert (one autocommitted statement once its series row is cached); with many, the
//! fsyncs are shared. Being the only writer, the task also
//! remembers the patient/study/series rows it wrote last ([`HierarchyCache`]), so the
//! next instance of a series costs one statement, not four.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sqlx::Row;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::attributes::{AttributeSet, InstanceAttributes};
use super::blob::BoxFuture;
use super::query::{self, Query};
use super::{Scope, StoreError, StoredInstance};

/// A token to store (the auth layer hashes it first; the plain token is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub token_hash: String,
    pub role: String,
    pub label: String,
}

/// A stored API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub token_hash: String,
    pub role: String,
    pub label: String,
    pub created_at: String,
    pub revoked: bool,
}

/// One audit log entry. `resource` holds UIDs only, never patient names or IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub at: String,
    pub user: String,
    pub role: String,
    /// e.g. `qido.studies`.
    pub action: String,
    /// e.g. `studies/1.2.3`.
    pub resource: String,
    pub client: String,
    /// `success`, `denied` or `error: ...`.
    pub outcome: String,
}

/// One instance to index.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub attributes: InstanceAttributes,
    pub blob_key: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub received_at: String,
    pub source: String,
}

impl InstanceRecord {
    pub fn stored(&self) -> StoredInstance {
        let a = &self.attributes;
        StoredInstance {
            study_instance_uid: a.study_instance_uid.clone(),
            series_instance_uid: a.series_instance_uid.clone(),
            sop_instance_uid: a.sop_instance_uid.clone(),
            sop_class_uid: a.sop_class_uid.clone(),
            transfer_syntax_uid: a.transfer_syntax_uid.clone(),
            blob_key: self.blob_key.clone(),
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
        }
    }
}

/// A duplicate with different bytes, and what was done about it.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub sop_instance_uid: String,
    pub stored_sha256: String,
    pub received_sha256: String,
    pub received_size: u64,
    pub policy: String,
    pub action: String,
    pub source: String,
    pub at: String,
}

/// What the archive needs from an index. Object-safe, so a PostgreSQL implementation can
/// sit behind `Arc<dyn Index>` too.
pub trait Index: Send + Sync + 'static {
    fn find_instance<'a>(
        &'a self,
        sop_instance_uid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredInstance>, StoreError>>;
    /// Inserts a new instance (and its patient/study/series) in one transaction.
    fn insert_instance<'a>(
        &'a self,
        record: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Replaces the stored instance with the same SOP Instance UID and records the
    /// conflict, in one transaction.
    fn replace_instance<'a>(
        &'a self,
        record: &'a InstanceRecord,
        conflict: &'a Conflict,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn record_conflict<'a>(
        &'a self,
        conflict: &'a Conflict,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Removes the instances stored under blob `key` (and patients, studies and series
    /// left empty): an insert whose blob did not become durable, or, on open after a crash,
    /// rows whose blob is missing. Removing nothing is not an error.
    fn remove_instances_with_blob<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    fn blob_key_referenced<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn blob_keys(&self) -> BoxFuture<'_, Result<HashSet<String>, StoreError>>;
    fn query<'a>(
        &'a self,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<Vec<AttributeSet>, StoreError>>;
    fn locate<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<StoredInstance>, StoreError>>;
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    fn insert_token<'a>(
        &'a self,
        token: &'a NewToken,
        created_at: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;
    fn find_token<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<TokenRecord>, StoreError>>;
    fn record_audit<'a>(&'a self, record: &'a AuditRecord)
    -> BoxFuture<'a, Result<(), StoreError>>;
    fn audit_records(
        &self,
        limit: u32,
        offset: u32,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>>;
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Index(e.to_string())
    }
}

/// The schema, embedded at compile time. Built by hand rather than with `sqlx::migrate!`
/// so that sqlx's proc-macro crate (and a second SQLite build for it) is not compiled.
#[derive(Debug)]
pub struct EmbeddedMigrations;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "archive",
        include_str!("../../migrations/0001_archive.sql"),
    ),
    (
        2,
        "pipeline",
        include_str!("../../migrations/0002_pipeline.sql"),
    ),
    (3, "emr", include_str!("../../migrations/0003_emr.sql")),
    (
        4,
        "emr outbox",
        include_str!("../../migrations/0004_emr_outbox.sql"),
    ),
];

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        description.into(),
                        MigrationType::Simple,
                        sql.into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The SQLite index.
#[derive(Debug, Clone)]
pub struct SqliteIndex {
    pool: SqlitePool,
    /// The writer task's own connection: SQLite drops a connection's page cache whenever
    /// another connection has written, so inserts made always on the same one find the
    /// instance table's and its indexes' pages still cached (page reads per stored instance
    /// fell from 18 to 4.6, `strace -c` on one association).
    writer: SqlitePool,
    writes: tokio::sync::mpsc::Sender<PendingWrite>,
}

/// The instance writes, all made by the index's one writer task (see the module docs).
#[derive(Debug)]
enum IndexWrite {
    Insert(InstanceRecord),
    Replace(InstanceRecord, Conflict),
    RemoveWithBlob(String),
}

/// A write waiting for the writer, and where to send its outcome (rows removed, for
/// `RemoveWithBlob`; 0 otherwise).
#[derive(Debug)]
struct PendingWrite {
    write: IndexWrite,
    done: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
}

/// Most inserts in one group transaction (bounds the time a group holds the write lock).
const MAX_GROUP: usize = 64;

/// Most series remembered by [`HierarchyCache`] (it is emptied when full).
const MAX_CACHED_SERIES: usize = 4096;

/// For each series recently written: a fingerprint of the patient, study and series
/// attributes it was written with, and its row id. An insert whose attributes match skips
/// the three upserts (one statement instead of four). Only the writer task touches the
/// rows, so the ids stay valid until it deletes rows itself, when it empties the cache.
#[derive(Default)]
struct HierarchyCache {
    series: std::collections::HashMap<String, (u64, i64)>,
}

impl HierarchyCache {
    /// The series row id, if the series was written with attributes of this fingerprint.
    fn lookup(&self, a: &InstanceAttributes, fingerprint: u64) -> Option<i64> {
        self.series
            .get(&a.series_instance_uid)
            .filter(|(known, _)| *known == fingerprint)
            .map(|(_, id)| *id)
    }

    fn remember(&mut self, a: &InstanceAttributes, fingerprint: u64, series_id: i64) {
        if self.series.len() >= MAX_CACHED_SERIES {
            self.series.clear();
        }
        self.series
            .insert(a.series_instance_uid.clone(), (fingerprint, series_id));
    }
}

/// A hash of every attribute `upsert_hierarchy` writes.
fn hierarchy_fingerprint(a: &InstanceAttributes) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &a.patient_id,
        &a.issuer_of_patient_id,
        &a.patient_name,
        &a.patient_birth_date,
        &a.patient_sex,
        &a.study_instance_uid,
        &a.study_date,
        &a.study_time,
        &a.accession_number,
        &a.study_id,
        &a.study_description,
    )
        .hash(&mut h);
    (&a.referring_physician_name, &a.specific_character_set).hash(&mut h);
    (
        &a.series_instance_uid,
        &a.modality,
        a.series_number,
        &a.series_description,
        &a.body_part_examined,
    )
        .hash(&mut h);
    h.finish()
}

/// The writer: see the module documentation. Ends when every [`SqliteIndex`] clone (every
/// sender) is gone.
async fn write_index(pool: SqlitePool, mut queue: tokio::sync::mpsc::Receiver<PendingWrite>) {
    let mut hierarchy = HierarchyCache::default();
    let mut held: Option<PendingWrite> = None;
    loop {
        let first = match held.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let PendingWrite { write, done } = first;
        let first_insert = match write {
            IndexWrite::Insert(record) => record,
            IndexWrite::Replace(record, conflict) => {
                // Deletes (and moves) rows: the cached ids may no longer exist.
                hierarchy.series.clear();
                let outcome = replace(&pool, &record, &conflict).await.map(|()| 0);
                let _ = done.send(outcome.map_err(StoreError::from));
                continue;
            }
            IndexWrite::RemoveWithBlob(key) => {
                hierarchy.series.clear();
                let outcome = remove_with_blob(&pool, &key).await;
                let _ = done.send(outcome.map_err(StoreError::from));
                continue;
            }
        };
        let mut records = vec![first_insert];
        let mut dones = vec![done];
        while records.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(PendingWrite {
                    write: IndexWrite::Insert(record),
                    done,
                }) => {
                    records.push(record);
                    dones.push(done);
                }
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let fingerprints: Vec<u64> = records
            .iter()
            .map(|r| hierarchy_fingerprint(&r.attributes))
            .collect();
        match insert_group(&pool, &records, &fingerprints, &hierarchy).await {
            Ok(outcomes) => {
                for ((record, fingerprint), outcome) in
                    records.iter().zip(&fingerprints).zip(&outcomes)
                {
                    if let Ok(series_id) = outcome {
                        hierarchy.remember(&record.attributes, *fingerprint, *series_id);
                    }
                }
                for (done, outcome) in dones.into_iter().zip(outcomes) {
                    let _ = done.send(outcome.map(|_| 0).map_err(StoreError::from));
                }
            }
            Err(e) => {
                hierarchy.series.clear();
                let message = e.to_string();
                for done in dones {
                    let _ = done.send(Err(StoreError::Index(format!("group commit: {message}"))));
                }
            }
        }
    }
}

/// One transaction for `records` (with their [`hierarchy_fingerprint`]s): per insert its
/// series row id or its error, or the error that failed the whole transaction (then
/// nothing of the group is committed).
async fn insert_group(
    pool: &SqlitePool,
    records: &[InstanceRecord],
    fingerprints: &[u64],
    hierarchy: &HierarchyCache,
) -> Result<Vec<Result<i64, sqlx::Error>>, sqlx::Error> {
    // A group of one whose series row is known is one statement: SQLite's own transaction
    // around it (autocommit) is as durable, and saves the round trips of BEGIN and COMMIT.
    if let ([record], [fingerprint]) = (records, fingerprints)
        && let Some(series) = hierarchy.lookup(&record.attributes, *fingerprint)
    {
        insert_instance_query(series, record).execute(pool).await?;
        return Ok(vec![Ok(series)]);
    }
    let mut tx = begin_write(pool).await?;
    let mut outcomes = Vec::with_capacity(records.len());
    // A group of one needs no savepoint: its failure is the transaction's.
    let isolate = records.len() > 1;
    for (record, fingerprint) in records.iter().zip(fingerprints) {
        if isolate {
            sqlx::query("SAVEPOINT put").execute(&mut *tx).await?;
        }
        let outcome = async {
            let series = match hierarchy.lookup(&record.attributes, *fingerprint) {
                Some(id) => id,
                None => upsert_hierarchy(&mut tx, &record.attributes).await?,
            };
            insert_instance_query(series, record)
                .execute(&mut *tx)
                .await
                .map(|_| series)
        }
        .await;
        if !isolate {
            let series = outcome?;
            tx.commit().await?;
            return Ok(vec![Ok(series)]);
        }
        if outcome.is_err() {
            sqlx::query("ROLLBACK TO put").execute(&mut *tx).await?;
        }
        sqlx::query("RELEASE put").execute(&mut *tx).await?;
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Replaces the instance with the record's SOP Instance UID and records the conflict.
async fn replace(
    pool: &SqlitePool,
    record: &InstanceRecord,
    conflict: &Conflict,
) -> Result<(), sqlx::Error> {
    let mut tx = begin_write(pool).await?;
    sqlx::query("DELETE FROM instances WHERE sop_instance_uid = ?")
        .bind(&record.attributes.sop_instance_uid)
        .execute(&mut *tx)
        .await?;
    let series = upsert_hierarchy(&mut tx, &record.attributes).await?;
    insert_instance_query(series, record)
        .execute(&mut *tx)
        .await?;
    // The replacement may have moved the instance to another series/study.
    delete_empty_parents(&mut tx).await?;
    insert_conflict(&mut tx, conflict).await?;
    tx.commit().await
}

/// Removes the instances stored under blob `key`; returns how many.
async fn remove_with_blob(pool: &SqlitePool, key: &str) -> Result<u64, sqlx::Error> {
    let mut tx = begin_write(pool).await?;
    let removed = sqlx::query("DELETE FROM instances WHERE blob_key = ?")
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    delete_empty_parents(&mut tx).await?;
    tx.commit().await?;
    Ok(removed)
}

const INSTANCE_COLUMNS: &str = "st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, i.sop_class_uid, \
     i.transfer_syntax_uid, i.blob_key, i.size_bytes, i.sha256";
const INSTANCE_FROM: &str =
    "instances i JOIN series se ON se.id = i.series_ref JOIN studies st ON st.id = se.study_ref";

fn stored_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredInstance, sqlx::Error> {
    Ok(StoredInstance {
        study_instance_uid: row.try_get(0)?,
        series_instance_uid: row.try_get(1)?,
        sop_instance_uid: row.try_get(2)?,
        sop_class_uid: row.try_get(3)?,
        transfer_syntax_uid: row.try_get(4)?,
        blob_key: row.try_get(5)?,
        size_bytes: u64::try_from(row.try_get::<i64, _>(6)?).unwrap_or(0),
        sha256: row.try_get(7)?,
    })
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// Upserts patient, study and series; returns the series id.
async fn upsert_hierarchy(tx: &mut Tx, a: &InstanceAttributes) -> Result<i64, sqlx::Error> {
    let patient_key = if a.patient_id.is_empty() {
        format!("study:{}", a.study_instance_uid)
    } else {
        format!("id:{}\\{}", a.patient_id, a.issuer_of_patient_id)
    };
    let patient: i64 = sqlx::query_scalar(
        "INSERT INTO patients (patient_key, patient_id, issuer_of_patient_id, patient_name, patient_name_norm, \
         patient_birth_date, patient_sex) VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT(patient_key) DO UPDATE SET patient_name = excluded.patient_name, \
         patient_name_norm = excluded.patient_name_norm, patient_birth_date = excluded.patient_birth_date, \
         patient_sex = excluded.patient_sex RETURNING id",
    )
    .bind(patient_key)
    .bind(&a.patient_id)
    .bind(&a.issuer_of_patient_id)
    .bind(&a.patient_name)
    .bind(query::normalise_pn(&a.patient_name))
    .bind(&a.patient_birth_date)
    .bind(&a.patient_sex)
    .fetch_one(&mut **tx)
    .await?;
    let study: i64 = sqlx::query_scalar(
        "INSERT INTO studies (patient_ref, study_instance_uid, study_date, study_time, accession_number, study_id, \
         study_description, referring_physician_name, referring_physician_name_norm, specific_character_set) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT(study_instance_uid) DO UPDATE SET patient_ref = excluded.patient_ref, \
         study_date = excluded.study_date, study_time = excluded.study_time, \
         accession_number = excluded.accession_number, study_id = excluded.study_id, \
         study_description = excluded.study_description, \
         referring_physician_name = excluded.referring_physician_name, \
         referring_physician_name_norm = excluded.referring_physician_name_norm, \
         specific_character_set = excluded.specific_character_set RETURNING id",
    )
    .bind(patient)
    .bind(&a.study_instance_uid)
    .bind(&a.study_date)
    .bind(&a.study_time)
    .bind(&a.accession_number)
    .bind(&a.study_id)
    .bind(&a.study_description)
    .bind(&a.referring_physician_name)
    .bind(query::normalise_pn(&a.referring_physician_name))
    .bind(&a.specific_character_set)
    .fetch_one(&mut **tx)
    .await?;
    let series: i64 = sqlx::query_scalar(
        "INSERT INTO series (study_ref, series_instance_uid, modality, series_number, series_description, \
         body_part_examined) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT(series_instance_uid) DO UPDATE SET study_ref = excluded.study_ref, \
         modality = excluded.modality, series_number = excluded.series_number, \
         series_description = excluded.series_description, body_part_examined = excluded.body_part_examined \
         RETURNING id",
    )
    .bind(study)
    .bind(&a.series_instance_uid)
    .bind(&a.modality)
    .bind(a.series_number)
    .bind(&a.series_description)
    .bind(&a.body_part_examined)
    .fetch_one(&mut **tx)
    .await?;
    Ok(series)
}

/// A write transaction: `BEGIN IMMEDIATE` (see the module documentation). Every store's
/// transaction that writes starts here: a deferred one that reads first fails at once with
/// "database is locked" when another writer got there in between.
pub(crate) async fn begin_write(pool: &SqlitePool) -> Result<Tx, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// Deletes series, studies and patients that no longer have an instance below them.
async fn delete_empty_parents(tx: &mut Tx) -> Result<(), sqlx::Error> {
    for statement in [
        "DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM instances WHERE series_ref = series.id)",
        "DELETE FROM studies WHERE NOT EXISTS (SELECT 1 FROM series WHERE study_ref = studies.id)",
        "DELETE FROM patients WHERE NOT EXISTS (SELECT 1 FROM studies WHERE patient_ref = patients.id)",
    ] {
        sqlx::query(statement).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_conflict(tx: &mut Tx, c: &Conflict) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO duplicate_conflicts (sop_instance_uid, stored_sha256, received_sha256, received_size, policy, \
         action, source, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&c.sop_instance_uid)
    .bind(&c.stored_sha256)
    .bind(&c.received_sha256)
    .bind(i64::try_from(c.received_size).unwrap_or(i64::MAX))
    .bind(&c.policy)
    .bind(&c.action)
    .bind(&c.source)
    .bind(&c.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl SqliteIndex {
    /// Opens (creating if needed) the index file and applies the migrations.
    pub async fn open(path: &Path) -> Result<SqliteIndex, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            // A ping per acquire is a round trip to the connection's thread, and a local
            // file has no connection to lose.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let migrator = Migrator::new(EmbeddedMigrations)
            .await
            .map_err(|e| StoreError::Index(format!("migrations: {e}")))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Index(format!("migrations: {e}")))?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let (writes, queue) = tokio::sync::mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(write_index(writer.clone(), queue));
        Ok(SqliteIndex {
            pool,
            writer,
            writes,
        })
    }

    /// Hands a write to the writer task and waits for its outcome.
    async fn write(&self, write: IndexWrite) -> Result<u64, StoreError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let stopped = || StoreError::Index("the index writer has stopped".to_owned());
        self.writes
            .send(PendingWrite { write, done })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// The connection pool, shared with the pipeline's tables ([`super::jobs`]).
    pub fn pool(&self) -> SqlitePool {
        self.pool.clone()
    }

    /// Closes the pool (tests use this to simulate a restart).
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

fn insert_instance_query(
    series: i64,
    r: &InstanceRecord,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    let a = &r.attributes;
    sqlx::query(
        "INSERT INTO instances (series_ref, sop_instance_uid, sop_class_uid, instance_number, rows, columns, \
         number_of_frames, transfer_syntax_uid, blob_key, size_bytes, sha256, received_at, source) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(series)
    .bind(&a.sop_instance_uid)
    .bind(&a.sop_class_uid)
    .bind(a.instance_number)
    .bind(a.rows)
    .bind(a.columns)
    .bind(a.number_of_frames)
    .bind(&a.transfer_syntax_uid)
    .bind(&r.blob_key)
    .bind(i64::try_from(r.size_bytes).unwrap_or(i64::MAX))
    .bind(&r.sha256)
    .bind(&r.received_at)
    .bind(&r.source)
}

impl Index for SqliteIndex {
    fn find_instance<'a>(
        &'a self,
        sop_instance_uid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredInstance>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "SELECT {INSTANCE_COLUMNS} FROM {INSTANCE_FROM} WHERE i.sop_instance_uid = ?"
            ))
            .bind(sop_instance_uid)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| stored_from_row(&r)).transpose()?)
        })
    }

    fn insert_instance<'a>(
        &'a self,
        record: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.write(IndexWrite::Insert(record.clone()))
                .await
                .map(|_| ())
        })
    }

    fn replace_instance<'a>(
        &'a self,
        record: &'a InstanceRecord,
        conflict: &'a Conflict,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.write(IndexWrite::Replace(record.clone(), conflict.clone()))
                .await
                .map(|_| ())
        })
    }

    fn record_conflict<'a>(
        &'a self,
        conflict: &'a Conflict,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = begin_write(&self.pool).await?;
            insert_conflict(&mut tx, conflict).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn remove_instances_with_blob<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.write(IndexWrite::RemoveWithBlob(key.to_owned())))
    }

    fn blob_key_referenced<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE blob_key = ?")
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
            Ok(n > 0)
        })
    }

    fn blob_keys(&self) -> BoxFuture<'_, Result<HashSet<String>, StoreError>> {
        Box::pin(async move {
            let keys: Vec<String> = sqlx::query_scalar("SELECT blob_key FROM instances")
                .fetch_all(&self.pool)
                .await?;
            Ok(keys.into_iter().collect())
        })
    }

    fn query<'a>(&'a self, q: &'a Query) -> BoxFuture<'a, Result<Vec<AttributeSet>, StoreError>> {
        Box::pin(async move {
            let (mut qb, fields) = query::build_sql(q);
            let rows = qb.build().fetch_all(&self.pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(query::row_to_attributes(row, &fields)?);
            }
            Ok(out)
        })
    }

    fn locate<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<StoredInstance>, StoreError>> {
        Box::pin(async move {
            let order = "ORDER BY se.series_number, se.id, i.instance_number, i.id";
            let base = format!(
                "SELECT {INSTANCE_COLUMNS} FROM {INSTANCE_FROM} WHERE st.study_instance_uid = ?"
            );
            let rows =
                match scope {
                    Scope::Study { study } => {
                        sqlx::query(&format!("{base} {order}"))
                            .bind(study)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    Scope::Series { study, series } => {
                        sqlx::query(&format!("{base} AND se.series_instance_uid = ? {order}"))
                            .bind(study)
                            .bind(series)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    Scope::Instance {
                        study,
                        series,
                        instance,
                    } => sqlx::query(&format!(
                        "{base} AND se.series_instance_uid = ? AND i.sop_instance_uid = ? {order}"
                    ))
                    .bind(study)
                    .bind(series)
                    .bind(instance)
                    .fetch_all(&self.pool)
                    .await?,
                };
            Ok(rows
                .iter()
                .map(stored_from_row)
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&self.pool).await?;
            Ok(())
        })
    }

    fn insert_token<'a>(
        &'a self,
        token: &'a NewToken,
        created_at: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO api_tokens (token_hash, role, label, created_at) VALUES (?, ?, ?, ?) RETURNING id",
            )
            .bind(&token.token_hash)
            .bind(&token.role)
            .bind(&token.label)
            .bind(created_at)
            .fetch_one(&self.pool)
            .await?;
            Ok(id)
        })
    }

    fn find_token<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<TokenRecord>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, token_hash, role, label, created_at, revoked FROM api_tokens WHERE token_hash = ?",
            )
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
            let Some(r) = row else { return Ok(None) };
            Ok(Some(TokenRecord {
                id: r.try_get(0)?,
                token_hash: r.try_get(1)?,
                role: r.try_get(2)?,
                label: r.try_get(3)?,
                created_at: r.try_get(4)?,
                revoked: r.try_get::<i64, _>(5)? != 0,
            }))
        })
    }

    fn record_audit<'a>(&'a self, a: &'a AuditRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO audit (at, user, role, action, resource, client, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&a.at)
            .bind(&a.user)
            .bind(&a.role)
            .bind(&a.action)
            .bind(&a.resource)
            .bind(&a.client)
            .bind(&a.outcome)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn audit_records(
        &self,
        limit: u32,
        offset: u32,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT at, user, role, action, resource, client, outcome FROM audit ORDER BY id DESC LIMIT ? OFFSET ?",
            )
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(AuditRecord {
                    at: r.try_get(0)?,
                    user: r.try_get(1)?,
                    role: r.try_get(2)?,
                    action: r.try_get(3)?,
                    resource: r.try_get(4)?,
                    client: r.try_get(5)?,
                    outcome: r.try_get(6)?,
                });
            }
            Ok(out)
        })
    }
}
