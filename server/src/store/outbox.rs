//! Results on their way to the EMR (schema in `migrations/0004_emr_outbox.sql`): one row
//! per (destination, finished job).
//!
//! Rows are created by the database itself, in the transaction that marks a job done (a
//! trigger reads `emr_destinations`), so a crash between "findings stored" and "queued for
//! the EMR" cannot happen. Another trigger puts delivered rows back in the queue with a new
//! `revision` when the study's EMR link changes afterwards. A sender records its outcome
//! only for the revision it sent ([`OutboxStore::record`]), so a link that changes during
//! a send is not lost: the row stays due.

use serde::Serialize;
use sqlx::{Row, SqlitePool};

use super::StoreError;
use super::jobs::timestamp;

/// One result for one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    /// `fhir` or `hl7`.
    pub destination: String,
    pub job_id: i64,
    pub study_instance_uid: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub revision: i64,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
    /// What the destination answered last.
    pub response: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub delivered_at: Option<String>,
}

/// How one send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the destination.
    Delivered { response: String },
    /// Not accepted, and it may pass (the destination is down, busy, or answered 5xx):
    /// due again at `retry_at` (RFC 3339).
    Retry {
        error: String,
        response: Option<String>,
        retry_at: String,
    },
    /// Refused for good (the destination says the content is wrong, or attempts ran out).
    Failed {
        error: String,
        response: Option<String>,
    },
}

/// What `GET /api/v1/emr/outbox` filters on.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    pub state: Option<String>,
    pub destination: Option<String>,
    pub study_instance_uid: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

const COLUMNS: &str = "id, destination, job_id, study_instance_uid, state, revision, attempts, \
     next_attempt_at, last_error, response, created_at, updated_at, delivered_at";

fn entry_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<OutboxEntry, sqlx::Error> {
    Ok(OutboxEntry {
        id: row.try_get("id")?,
        destination: row.try_get("destination")?,
        job_id: row.try_get("job_id")?,
        study_instance_uid: row.try_get("study_instance_uid")?,
        state: row.try_get("state")?,
        revision: row.try_get("revision")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        response: row.try_get("response")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

fn now() -> String {
    timestamp(chrono::Utc::now())
}

/// The outbox table.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    pool: SqlitePool,
}

impl OutboxStore {
    pub fn new(pool: SqlitePool) -> OutboxStore {
        OutboxStore { pool }
    }

    /// Makes `names` the configured destinations: jobs finishing from now on are queued
    /// for each of them (and for no other).
    pub async fn set_destinations(&self, names: &[&str]) -> Result<(), StoreError> {
        let mut tx = super::index::begin_write(&self.pool).await?;
        sqlx::query("DELETE FROM emr_destinations")
            .execute(&mut *tx)
            .await?;
        for name in names {
            sqlx::query("INSERT INTO emr_destinations (name) VALUES (?) ON CONFLICT DO NOTHING")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The pending rows of `destination` that are due, oldest first.
    pub async fn due(&self, destination: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM emr_outbox WHERE state = 'pending' AND destination = ? \
             AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
        ))
        .bind(destination)
        .bind(now())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(entry_from_row).collect::<Result<_, _>>()?)
    }

    /// Records how sending `revision` of row `id` ended. Returns false (writing nothing)
    /// when the row has a newer revision meanwhile: that one is still due.
    pub async fn record(
        &self,
        id: i64,
        revision: i64,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let at = now();
        let (state, error, response, next, delivered_at) = match outcome {
            Outcome::Delivered { response } => (
                "delivered",
                None,
                Some(response.as_str()),
                at.as_str(),
                Some(at.as_str()),
            ),
            Outcome::Retry {
                error,
                response,
                retry_at,
            } => (
                "pending",
                Some(error.as_str()),
                response.as_deref(),
                retry_at.as_str(),
                None,
            ),
            Outcome::Failed { error, response } => (
                "failed",
                Some(error.as_str()),
                response.as_deref(),
                at.as_str(),
                None,
            ),
        };
        let done = sqlx::query(
            "UPDATE emr_outbox SET state = ?, attempts = attempts + 1, last_error = ?, response = ?, \
             next_attempt_at = ?, delivered_at = COALESCE(?, delivered_at), updated_at = ? \
             WHERE id = ? AND revision = ?",
        )
        .bind(state)
        .bind(error)
        .bind(response)
        .bind(next)
        .bind(delivered_at)
        .bind(&at)
        .bind(id)
        .bind(revision)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts a row back in the queue now, with its attempts reset (an operator's retry).
    /// Returns false when there is no such row.
    pub async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        let at = now();
        let done = sqlx::query(
            "UPDATE emr_outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(&at)
        .bind(&at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn entry(&self, id: i64) -> Result<Option<OutboxEntry>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM emr_outbox WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(entry_from_row).transpose()?)
    }

    /// Rows matching the filter, newest first.
    pub async fn list(&self, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM emr_outbox WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR destination = ?2) AND (?3 IS NULL OR study_instance_uid = ?3) \
             ORDER BY id DESC LIMIT ?4 OFFSET ?5"
        ))
        .bind(&filter.state)
        .bind(&filter.destination)
        .bind(&filter.study_instance_uid)
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(entry_from_row).collect::<Result<_, _>>()?)
    }

    /// Rows by (destination, state), for the metrics.
    pub async fn counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT destination, state, COUNT(*) FROM emr_outbox GROUP BY destination, state",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::temp_archive as archive;

    /// A running job of `study`, then done (as `JobStore::complete` marks it).
    async fn finish_job(pool: &SqlitePool, study: &str) -> i64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (study_instance_uid, series_instance_uid, model, priority, state, max_attempts, \
             not_before, created_at, instances_through, result_version) \
             VALUES (?, '9.9', 'm', 1, 'running', 3, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 1, 1) \
             RETURNING id",
        )
        .bind(study)
        .fetch_one(pool)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE jobs SET state = 'done', finished_at = '2026-01-01T00:00:01.000Z' WHERE id = ?",
        )
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
        id
    }

    async fn link(pool: &SqlitePool, study: &str, patient: &str) {
        sqlx::query(
            "INSERT INTO study_links (study_instance_uid, state, patient, linked_at) \
             VALUES (?, 'linked', ?, '2026-01-01T00:00:00.000Z') \
             ON CONFLICT(study_instance_uid) DO UPDATE SET state = 'linked', patient = excluded.patient",
        )
        .bind(study)
        .bind(patient)
        .execute(pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn finished_jobs_are_queued_per_destination_and_again_when_the_link_changes() {
        let (_dir, archive) = archive().await;
        let pool = archive.outbox().pool.clone();
        let outbox = archive.outbox();
        // No destination: nothing is queued.
        finish_job(&pool, "1.1").await;
        assert!(
            outbox
                .list(&OutboxFilter {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .is_empty()
        );

        outbox.set_destinations(&["fhir", "hl7"]).await.unwrap();
        let job = finish_job(&pool, "1.2").await;
        let due = outbox.due("fhir", 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].job_id, due[0].revision), (job, 1));
        assert_eq!(outbox.due("hl7", 10).await.unwrap().len(), 1);

        // Delivered: no longer due.
        let fhir = &due[0];
        let delivered = Outcome::Delivered {
            response: "HTTP 200".into(),
        };
        assert!(outbox.record(fhir.id, 1, &delivered).await.unwrap());
        assert!(outbox.due("fhir", 10).await.unwrap().is_empty());

        // The study gets linked: due again with a new revision; the same link again does
        // not queue it a third time.
        link(&pool, "1.2", "p1").await;
        let again = outbox.due("fhir", 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].revision, again[0].attempts), (2, 0));
        // A send of the old revision that ends now records nothing.
        assert!(!outbox.record(fhir.id, 1, &delivered).await.unwrap());
        assert!(outbox.record(fhir.id, 2, &delivered).await.unwrap());
        link(&pool, "1.2", "p1").await;
        assert!(outbox.due("fhir", 10).await.unwrap().is_empty());
        link(&pool, "1.2", "p2").await;
        assert_eq!(outbox.due("fhir", 10).await.unwrap()[0].revision, 3);

        // A retry waits for its time; a failure stays failed until requeued.
        let hl7 = &outbox.due("hl7", 10).await.unwrap()[0];
        let later = Outcome::Retry {
            error: "refused".into(),
            response: None,
            retry_at: "2999-01-01T00:00:00.000Z".into(),
        };
        assert!(outbox.record(hl7.id, hl7.revision, &later).await.unwrap());
        assert!(outbox.due("hl7", 10).await.unwrap().is_empty());
        let failed = Outcome::Failed {
            error: "AE".into(),
            response: Some("ACK AE".into()),
        };
        assert!(outbox.record(hl7.id, hl7.revision, &failed).await.unwrap());
        let row = outbox.entry(hl7.id).await.unwrap().unwrap();
        assert_eq!((row.state.as_str(), row.attempts), ("failed", 2));
        assert_eq!(row.response.as_deref(), Some("ACK AE"));
        assert!(outbox.requeue(hl7.id).await.unwrap());
        assert_eq!(outbox.due("hl7", 10).await.unwrap().len(), 1);
        assert!(!outbox.requeue(9999).await.unwrap());
        let counts = outbox.counts().await.unwrap();
        assert!(counts.contains(&("hl7".into(), "pending".into(), 1)));
    }
}
