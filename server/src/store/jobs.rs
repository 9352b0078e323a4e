//! The pipeline's tables: study activity, jobs and findings (schema in
//! `migrations/0002_pipeline.sql`).
//!
//! Every state change is one SQL statement or one transaction, so a job is never lost and
//! never run to completion twice:
//! - [`JobStore::claim`] moves the oldest due job of the highest priority from `queued` to
//!   `running` in one `UPDATE … RETURNING`, with a lease (owner + expiry) kept alive by
//!   [`JobStore::heartbeat`];
//! - [`JobStore::complete`] writes the findings and marks the job `done` in one
//!   transaction, and only while the caller still holds the lease;
//! - [`JobStore::reclaim_expired`] puts back in the queue the jobs whose runner died
//!   (kill -9, power loss) once their lease has run out.

use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

use super::StoreError;

/// Job priority: stat work is claimed (and batched) before routine work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Stat,
    Routine,
}

impl Priority {
    pub fn as_i64(self) -> i64 {
        match self {
            Priority::Stat => 0,
            Priority::Routine => 1,
        }
    }

    pub fn from_i64(value: i64) -> Priority {
        if value <= 0 {
            Priority::Stat
        } else {
            Priority::Routine
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        match text.trim().to_ascii_lowercase().as_str() {
            "stat" | "high" | "urgent" => Some(Priority::Stat),
            "routine" | "medium" | "normal" | "low" => Some(Priority::Routine),
            _ => None,
        }
    }
}

/// A study with instances the pipeline has not routed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyActivity {
    pub study_instance_uid: String,
    pub last_instance_id: i64,
    /// `last_instance_id` when the study was last routed (0: never, or reprocessing asked).
    pub routed_instance_id: i64,
    /// RFC 3339, UTC.
    pub last_received_at: String,
    /// Where the newest instance came from (`dimse:AE@peer`, `stow:user@peer`, ...).
    pub last_source: String,
    pub process_requested: bool,
    pub requested_priority: Priority,
}

/// What routing looks at for one series of a study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSummary {
    pub series_instance_uid: String,
    pub modality: String,
    pub body_part_examined: String,
    pub series_description: String,
    pub sop_class_uid: String,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub instances: i64,
}

/// A job routing decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub series_instance_uid: String,
    pub model: String,
    pub priority: Priority,
    pub max_attempts: u32,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    pub id: i64,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub model: String,
    pub priority: Priority,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub last_error: Option<String>,
    pub not_before: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub result_version: i64,
    pub timings: Option<serde_json::Value>,
    pub sr_sop_instance_uid: Option<String>,
    pub seg_sop_instance_uid: Option<String>,
}

/// A finding to store with its job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingRow {
    pub label: String,
    pub code_scheme: String,
    pub code_value: String,
    pub code_meaning: String,
    pub probability: f64,
    pub positive: bool,
    pub tracking_uid: String,
    pub source_instances: Vec<String>,
    /// `[{"name", "code", "value", "unit"}]`
    pub measurements: serde_json::Value,
    /// `{"patient_mm": [x, y, z], "pixel": {...}}` or `null`
    pub location: serde_json::Value,
}

/// A stored finding with its provenance, as the findings API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredFinding {
    pub id: i64,
    pub job_id: i64,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub model: String,
    pub model_version: String,
    pub weights_sha256: String,
    pub result_version: i64,
    pub superseded: bool,
    #[serde(flatten)]
    pub finding: FindingRow,
    pub created_at: String,
}

/// How a finished job is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion<'a> {
    pub model_version: &'a str,
    pub weights_sha256: &'a str,
    pub findings: &'a [FindingRow],
    pub timings: serde_json::Value,
    pub sr_sop_instance_uid: Option<&'a str>,
    pub seg_sop_instance_uid: Option<&'a str>,
}

/// Filters of [`JobStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<String>,
    pub study_instance_uid: Option<String>,
    pub model: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// The states a job can be in.
pub const JOB_STATES: [&str; 5] = ["queued", "running", "done", "failed", "cancelled"];

/// The pipeline's persistence. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobStore {
    pool: SqlitePool,
}

/// Now, as every timestamp in the index is written: RFC 3339 UTC with milliseconds, so
/// that text order is time order.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now() -> String {
    timestamp(chrono::Utc::now())
}

fn later(duration: std::time::Duration) -> String {
    let delta = chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
    timestamp(
        chrono::Utc::now()
            .checked_add_signed(delta)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
    )
}

const JOB_COLUMNS: &str = "id, study_instance_uid, series_instance_uid, model, priority, state, attempts, \
     max_attempts, last_error, not_before, created_at, started_at, finished_at, result_version, timings, \
     sr_sop_instance_uid, seg_sop_instance_uid";

fn job_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<JobRecord, sqlx::Error> {
    let timings: Option<String> = row.try_get("timings")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        study_instance_uid: row.try_get("study_instance_uid")?,
        series_instance_uid: row.try_get("series_instance_uid")?,
        model: row.try_get("model")?,
        priority: Priority::from_i64(row.try_get("priority")?),
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        last_error: row.try_get("last_error")?,
        not_before: row.try_get("not_before")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        result_version: row.try_get("result_version")?,
        timings: timings.and_then(|t| serde_json::from_str(&t).ok()),
        sr_sop_instance_uid: row.try_get("sr_sop_instance_uid")?,
        seg_sop_instance_uid: row.try_get("seg_sop_instance_uid")?,
    })
}

impl JobStore {
    pub fn new(pool: SqlitePool) -> JobStore {
        JobStore { pool }
    }

    /// Studies with instances not yet routed.
    pub async fn pending_studies(&self, limit: u32) -> Result<Vec<StudyActivity>, StoreError> {
        let rows = sqlx::query(
            "SELECT study_instance_uid, last_instance_id, routed_instance_id, last_received_at, last_source, process_requested, \
             requested_priority FROM study_activity WHERE last_instance_id > routed_instance_id \
             ORDER BY last_received_at LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StudyActivity {
                    study_instance_uid: row.try_get("study_instance_uid")?,
                    last_instance_id: row.try_get("last_instance_id")?,
                    routed_instance_id: row.try_get("routed_instance_id")?,
                    last_received_at: row.try_get("last_received_at")?,
                    last_source: row.try_get("last_source")?,
                    process_requested: row.try_get::<i64, _>("process_requested")? != 0,
                    requested_priority: Priority::from_i64(row.try_get("requested_priority")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Asks for the study to be routed now (again, if it was routed before). False when
    /// the archive holds no such study.
    pub async fn request_processing(
        &self,
        study_instance_uid: &str,
        priority: Priority,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE study_activity SET process_requested = 1, requested_priority = ?, routed_instance_id = 0 \
             WHERE study_instance_uid = ?",
        )
        .bind(priority.as_i64())
        .bind(study_instance_uid)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The series of a study with instances stored after instance `after` (0: every
    /// series), summarised for routing. The pipeline's own results are left out.
    pub async fn series_of_study(
        &self,
        study_instance_uid: &str,
        after: i64,
    ) -> Result<Vec<SeriesSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT se.series_instance_uid, se.modality, se.body_part_examined, se.series_description, \
             MIN(i.sop_class_uid) AS sop_class_uid, MIN(i.rows) AS rows, MIN(i.columns) AS columns, \
             COUNT(*) AS instances \
             FROM studies st JOIN series se ON se.study_ref = st.id JOIN instances i ON i.series_ref = se.id \
             WHERE st.study_instance_uid = ? AND i.source NOT LIKE 'pipeline:%' GROUP BY se.id \
             HAVING MAX(i.id) > ? ORDER BY se.series_number, se.id",
        )
        .bind(study_instance_uid)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SeriesSummary {
                    series_instance_uid: row.try_get("series_instance_uid")?,
                    modality: row.try_get("modality")?,
                    body_part_examined: row.try_get("body_part_examined")?,
                    series_description: row.try_get("series_description")?,
                    sop_class_uid: row.try_get("sop_class_uid")?,
                    rows: row.try_get("rows")?,
                    columns: row.try_get("columns")?,
                    instances: row.try_get("instances")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records routing's decision for a study seen up to instance `through`: inserts the
    /// jobs (each the next result version of its series and model; older queued jobs of
    /// the same series and model are cancelled as superseded) and marks the study routed.
    /// Returns `None`, writing nothing, when an instance arrived meanwhile (the study is
    /// then routed again once stable) or when another routing pass got there first.
    pub async fn create_jobs(
        &self,
        study_instance_uid: &str,
        through: i64,
        jobs: &[NewJob],
    ) -> Result<Option<Vec<i64>>, StoreError> {
        let mut tx = super::index::begin_write(&self.pool).await?;
        let marked = sqlx::query(
            "UPDATE study_activity SET routed_instance_id = last_instance_id, process_requested = 0 \
             WHERE study_instance_uid = ? AND last_instance_id = ? AND routed_instance_id < last_instance_id",
        )
        .bind(study_instance_uid)
        .bind(through)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            return Ok(None);
        }
        let created_at = now();
        let mut ids = Vec::with_capacity(jobs.len());
        for job in jobs {
            let previous: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(result_version), 0) FROM jobs \
                 WHERE study_instance_uid = ? AND series_instance_uid = ? AND model = ?",
            )
            .bind(study_instance_uid)
            .bind(&job.series_instance_uid)
            .bind(&job.model)
            .fetch_one(&mut *tx)
            .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (study_instance_uid, series_instance_uid, model, priority, state, max_attempts, \
                 not_before, created_at, instances_through, result_version) \
                 VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(study_instance_uid)
            .bind(&job.series_instance_uid)
            .bind(&job.model)
            .bind(job.priority.as_i64())
            .bind(i64::from(job.max_attempts.max(1)))
            .bind(&created_at)
            .bind(&created_at)
            .bind(through)
            .bind(previous + 1)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, last_error = ? \
                 WHERE state = 'queued' AND study_instance_uid = ? AND series_instance_uid = ? AND model = ? AND id < ?",
            )
            .bind(&created_at)
            .bind(format!("superseded by job {id} (new instances)"))
            .bind(study_instance_uid)
            .bind(&job.series_instance_uid)
            .bind(&job.model)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(Some(ids))
    }

    /// Claims the next due job (stat first, then oldest), leased to `owner` for `lease`.
    pub async fn claim(
        &self,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        let now = now();
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, lease_owner = ?, \
             lease_until = ? WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND not_before <= ? \
             ORDER BY priority, id LIMIT 1) AND state = 'queued' RETURNING {JOB_COLUMNS}"
        ))
        .bind(&now)
        .bind(owner)
        .bind(later(lease))
        .bind(&now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(job_from_row)
            .transpose()
            .map_err(StoreError::from)
    }

    /// Extends the lease; false when the job is no longer ours (cancelled, reclaimed).
    pub async fn heartbeat(
        &self,
        id: i64,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND state = 'running'",
        )
        .bind(later(lease))
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Running jobs whose lease ran out go back to the queue (their runner died). Returns
    /// how many.
    pub async fn reclaim_expired(&self) -> Result<u64, StoreError> {
        let now = now();
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, not_before = ?, \
             last_error = 'the worker running it stopped (lease expired)' \
             WHERE state = 'running' AND lease_until < ?",
        )
        .bind(&now)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Stores the findings and marks the job done, atomically, if `owner` still holds it.
    /// Earlier result versions of the same series and model are marked superseded.
    /// Returns false (writing nothing) when the job is no longer ours.
    pub async fn complete(
        &self,
        job: &JobRecord,
        owner: &str,
        completion: &Completion<'_>,
    ) -> Result<bool, StoreError> {
        let at = now();
        let mut tx = super::index::begin_write(&self.pool).await?;
        let marked = sqlx::query(
            "UPDATE jobs SET state = 'done', finished_at = ?, lease_owner = NULL, lease_until = NULL, \
             last_error = NULL, timings = ?, sr_sop_instance_uid = ?, seg_sop_instance_uid = ? \
             WHERE id = ? AND lease_owner = ? AND state = 'running'",
        )
        .bind(&at)
        .bind(completion.timings.to_string())
        .bind(completion.sr_sop_instance_uid)
        .bind(completion.seg_sop_instance_uid)
        .bind(job.id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            return Ok(false);
        }
        for f in completion.findings {
            sqlx::query(
                "INSERT INTO findings (job_id, study_instance_uid, series_instance_uid, model, model_version, \
                 weights_sha256, result_version, label, code_scheme, code_value, code_meaning, probability, \
                 positive, tracking_uid, source_instances, measurements, location, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(job.id)
            .bind(&job.study_instance_uid)
            .bind(&job.series_instance_uid)
            .bind(&job.model)
            .bind(completion.model_version)
            .bind(completion.weights_sha256)
            .bind(job.result_version)
            .bind(&f.label)
            .bind(&f.code_scheme)
            .bind(&f.code_value)
            .bind(&f.code_meaning)
            .bind(f.probability)
            .bind(f.positive)
            .bind(&f.tracking_uid)
            .bind(serde_json::to_string(&f.source_instances).unwrap_or_else(|_| "[]".into()))
            .bind(f.measurements.to_string())
            .bind(f.location.to_string())
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE findings SET superseded = 1 WHERE study_instance_uid = ? AND series_instance_uid = ? \
             AND model = ? AND result_version < ?",
        )
        .bind(&job.study_instance_uid)
        .bind(&job.series_instance_uid)
        .bind(&job.model)
        .bind(job.result_version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed attempt: back to the queue after `retry_after` when attempts remain
    /// and the failure may pass, else `failed` for good. The reason is stored for readers.
    pub async fn record_failure(
        &self,
        job: &JobRecord,
        owner: &str,
        reason: &str,
        retry_after: Option<std::time::Duration>,
    ) -> Result<(), StoreError> {
        let retry = retry_after.filter(|_| job.attempts < job.max_attempts);
        let (state, not_before, finished_at) = match retry {
            Some(delay) => ("queued", later(delay), None),
            None => ("failed", now(), Some(now())),
        };
        sqlx::query(
            "UPDATE jobs SET state = ?, not_before = ?, finished_at = ?, last_error = ?, lease_owner = NULL, \
             lease_until = NULL WHERE id = ? AND lease_owner = ? AND state = 'running'",
        )
        .bind(state)
        .bind(not_before)
        .bind(finished_at)
        .bind(reason)
        .bind(job.id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels the queued and running jobs of a study (a withdrawn study). Returns how many.
    pub async fn cancel_study(&self, study_instance_uid: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?, last_error = 'cancelled on request', \
             lease_owner = NULL, lease_until = NULL \
             WHERE study_instance_uid = ? AND state IN ('queued', 'running')",
        )
        .bind(now())
        .bind(study_instance_uid)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The job's state now (the runner checks it to notice a cancellation).
    pub async fn state(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn job(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(job_from_row)
            .transpose()
            .map_err(StoreError::from)
    }

    /// Jobs, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR study_instance_uid = ?2) AND (?3 IS NULL OR model = ?3) \
             ORDER BY id DESC LIMIT ?4 OFFSET ?5"
        ))
        .bind(&filter.state)
        .bind(&filter.study_instance_uid)
        .bind(&filter.model)
        .bind(i64::from(filter.limit))
        .bind(i64::from(filter.offset))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(job_from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// Number of jobs in each state (every state listed, zero included).
    pub async fn counts_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(JOB_STATES
            .iter()
            .map(|state| {
                let count = rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                ((*state).to_owned(), count)
            })
            .collect())
    }

    /// The findings of a study, newest result first; superseded ones only when asked.
    pub async fn findings(
        &self,
        study_instance_uid: &str,
        include_superseded: bool,
    ) -> Result<Vec<StoredFinding>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, job_id, study_instance_uid, series_instance_uid, model, model_version, weights_sha256, \
             result_version, superseded, label, code_scheme, code_value, code_meaning, probability, positive, \
             tracking_uid, source_instances, measurements, location, created_at FROM findings \
             WHERE study_instance_uid = ? AND (? OR superseded = 0) ORDER BY result_version DESC, id",
        )
        .bind(study_instance_uid)
        .bind(include_superseded)
        .fetch_all(&self.pool)
        .await?;
        let json = |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        rows.iter()
            .map(|row| {
                let sources: String = row.try_get("source_instances")?;
                Ok(StoredFinding {
                    id: row.try_get("id")?,
                    job_id: row.try_get("job_id")?,
                    study_instance_uid: row.try_get("study_instance_uid")?,
                    series_instance_uid: row.try_get("series_instance_uid")?,
                    model: row.try_get("model")?,
                    model_version: row.try_get("model_version")?,
                    weights_sha256: row.try_get("weights_sha256")?,
                    result_version: row.try_get("result_version")?,
                    superseded: row.try_get::<i64, _>("superseded")? != 0,
                    finding: FindingRow {
                        label: row.try_get("label")?,
                        code_scheme: row.try_get("code_scheme")?,
                        code_value: row.try_get("code_value")?,
                        code_meaning: row.try_get("code_meaning")?,
                        probability: row.try_get("probability")?,
                        positive: row.try_get::<i64, _>("positive")? != 0,
                        tracking_uid: row.try_get("tracking_uid")?,
                        source_instances: serde_json::from_str(&sources).unwrap_or_default(),
                        measurements: json(row.try_get("measurements")?),
                        location: json(row.try_get("location")?),
                    },
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Findings by model and label among current (not superseded) positive results, for
    /// the metrics.
    pub async fn positive_findings_by_label(
        &self,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT model, label, COUNT(*) FROM findings WHERE superseded = 0 AND positive = 1 \
             GROUP BY model, label",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn store() -> (tempfile::TempDir, JobStore) {
        let (dir, archive) = crate::store::temp_archive().await;
        (dir, archive.jobs().clone())
    }

    /// A study with activity up to instance `last` (as the trigger would record it).
    async fn activity(store: &JobStore, study: &str, last: i64) {
        sqlx::query(
            "INSERT INTO study_activity (study_instance_uid, last_instance_id, last_received_at, last_source) \
             VALUES (?, ?, '2026-01-01T00:00:00.000Z', 'dimse:CT1@10.0.0.1:1') \
             ON CONFLICT(study_instance_uid) DO UPDATE SET last_instance_id = excluded.last_instance_id",
        )
        .bind(study)
        .bind(last)
        .execute(&store.pool)
        .await
        .unwrap();
    }

    fn job(series: &str) -> NewJob {
        NewJob {
            series_instance_uid: series.into(),
            model: "m".into(),
            priority: Priority::Routine,
            max_attempts: 2,
        }
    }

    fn finding(uid: &str) -> FindingRow {
        FindingRow {
            label: "nodule".into(),
            code_scheme: "SCT".into(),
            code_value: "786838002".into(),
            code_meaning: "Pulmonary nodule".into(),
            probability: 0.9,
            positive: true,
            tracking_uid: uid.into(),
            source_instances: vec!["1.2.3".into()],
            measurements: serde_json::json!([]),
            location: serde_json::Value::Null,
        }
    }

    fn completion(findings: &[FindingRow]) -> Completion<'_> {
        Completion {
            model_version: "1",
            weights_sha256: "ab",
            findings,
            timings: serde_json::json!({}),
            sr_sop_instance_uid: None,
            seg_sop_instance_uid: None,
        }
    }

    const LEASE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_job_is_claimed_once_and_completed_once() {
        let (_dir, store) = store().await;
        activity(&store, "1.1", 5).await;
        assert_eq!(store.pending_studies(10).await.unwrap().len(), 1);
        // An instance arrived after routing looked: nothing is written.
        assert_eq!(
            store.create_jobs("1.1", 4, &[job("1.1.1")]).await.unwrap(),
            None
        );
        let ids = store
            .create_jobs("1.1", 5, &[job("1.1.1")])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids.len(), 1);
        assert!(store.pending_studies(10).await.unwrap().is_empty());

        let (a, b) = tokio::join!(store.claim("a", LEASE), store.claim("b", LEASE));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.is_some() != b.is_some(),
            "exactly one claim wins: {a:?} {b:?}"
        );
        let (owner, claimed) = match (a, b) {
            (Some(j), None) => ("a", j),
            (None, Some(j)) => ("b", j),
            _ => unreachable!(),
        };
        assert_eq!(claimed.attempts, 1);
        let other = if owner == "a" { "b" } else { "a" };
        let rows = [finding("2.25.1")];
        assert!(
            !store
                .complete(&claimed, other, &completion(&rows))
                .await
                .unwrap()
        );
        assert!(
            store
                .complete(&claimed, owner, &completion(&rows))
                .await
                .unwrap()
        );
        assert!(
            !store
                .complete(&claimed, owner, &completion(&rows))
                .await
                .unwrap()
        );
        assert_eq!(store.findings("1.1", true).await.unwrap().len(), 1);
        assert_eq!(store.job(claimed.id).await.unwrap().unwrap().state, "done");
    }

    #[tokio::test]
    async fn expired_leases_are_reclaimed_and_failures_retried_then_failed() {
        let (_dir, store) = store().await;
        activity(&store, "1.2", 1).await;
        store.create_jobs("1.2", 1, &[job("1.2.1")]).await.unwrap();
        let first = store.claim("dead", Duration::ZERO).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.reclaim_expired().await.unwrap(), 1);
        // The dead worker's late completion is refused.
        assert!(
            !store
                .complete(&first, "dead", &completion(&[]))
                .await
                .unwrap()
        );
        let second = store.claim("alive", LEASE).await.unwrap().unwrap();
        assert_eq!((second.id, second.attempts), (first.id, 2));
        // The last attempt fails for good, with its reason.
        store
            .record_failure(&second, "alive", "device lost", Some(Duration::ZERO))
            .await
            .unwrap();
        let failed = store.job(second.id).await.unwrap().unwrap();
        assert_eq!(failed.state, "failed");
        assert_eq!(failed.last_error.as_deref(), Some("device lost"));
        assert!(store.claim("alive", LEASE).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn new_instances_make_a_new_result_version_that_supersedes_the_old() {
        let (_dir, store) = store().await;
        activity(&store, "1.3", 1).await;
        store.create_jobs("1.3", 1, &[job("1.3.1")]).await.unwrap();
        let v1 = store.claim("w", LEASE).await.unwrap().unwrap();
        store
            .complete(&v1, "w", &completion(&[finding("2.25.10")]))
            .await
            .unwrap();
        activity(&store, "1.3", 2).await;
        store.create_jobs("1.3", 2, &[job("1.3.1")]).await.unwrap();
        let v2 = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(v2.result_version, 2);
        store
            .complete(&v2, "w", &completion(&[finding("2.25.20")]))
            .await
            .unwrap();
        let current = store.findings("1.3", false).await.unwrap();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].finding.tracking_uid, "2.25.20");
        let all = store.findings("1.3", true).await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().any(|f| f.superseded && f.result_version == 1));
        // A queued job made obsolete by a newer one is cancelled, not run.
        activity(&store, "1.3", 3).await;
        store.create_jobs("1.3", 3, &[job("1.3.1")]).await.unwrap();
        activity(&store, "1.3", 4).await;
        store.create_jobs("1.3", 4, &[job("1.3.1")]).await.unwrap();
        let counts: BTreeMapCounts = store.counts_by_state().await.unwrap().into_iter().collect();
        assert_eq!(counts["cancelled"], 1);
        assert_eq!(counts["queued"], 1);
        assert_eq!(store.cancel_study("1.3").await.unwrap(), 1);
    }

    type BTreeMapCounts = std::collections::BTreeMap<String, i64>;
}
