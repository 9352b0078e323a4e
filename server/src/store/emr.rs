//! The EMR's tables (schema in `migrations/0003_emr.sql`): records as parsed from FHIR, one
//! row per resource with a version, and the join's outcome per study.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{Row, SqlitePool};

use super::StoreError;
use crate::emr::join::JoinOutcome;
use crate::emr::{StudyFacts, StudyLink};

/// What storing a batch of records did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UpsertCounts {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// The join's outcome for one study, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredLink {
    pub study_instance_uid: String,
    /// `linked`, `ambiguous` or `unmatched`.
    pub state: String,
    pub patient: Option<String>,
    pub order: Option<String>,
    pub method: Option<String>,
    pub confidence: Option<f64>,
    pub reason: Option<String>,
    pub candidates: serde_json::Value,
    pub linked_at: String,
    pub resolved_by: Option<String>,
}

/// The EMR's persistence. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmrStore {
    pool: SqlitePool,
}

fn now() -> String {
    super::jobs::timestamp(chrono::Utc::now())
}

const LINK_COLUMNS: &str = "study_instance_uid, state, patient, order_id, method, confidence, reason, \
     candidates, linked_at, resolved_by";

fn link_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredLink, sqlx::Error> {
    let candidates: String = row.try_get("candidates")?;
    Ok(StoredLink {
        study_instance_uid: row.try_get("study_instance_uid")?,
        state: row.try_get("state")?,
        patient: row.try_get("patient")?,
        order: row.try_get("order_id")?,
        method: row.try_get("method")?,
        confidence: row.try_get("confidence")?,
        reason: row.try_get("reason")?,
        candidates: serde_json::from_str(&candidates).unwrap_or(serde_json::Value::Null),
        linked_at: row.try_get("linked_at")?,
        resolved_by: row.try_get("resolved_by")?,
    })
}

impl EmrStore {
    pub fn new(pool: SqlitePool) -> EmrStore {
        EmrStore { pool }
    }

    /// Stores records of one type in one transaction: new ids are created, changed ones
    /// replaced with the next version, identical ones left alone.
    pub async fn upsert<T: Serialize>(
        &self,
        resource_type: &str,
        records: &[(String, T)],
    ) -> Result<UpsertCounts, StoreError> {
        let mut counts = UpsertCounts::default();
        let at = now();
        let mut tx = super::index::begin_write(&self.pool).await?;
        for (id, record) in records {
            let body = serde_json::to_string(record)
                .map_err(|e| StoreError::Index(format!("encoding an EMR record: {e}")))?;
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT body FROM emr_resources WHERE resource_type = ? AND id = ?",
            )
            .bind(resource_type)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            match existing {
                Some(old) if old == body => counts.unchanged += 1,
                Some(_) => {
                    sqlx::query(
                        "UPDATE emr_resources SET body = ?, version = version + 1, updated_at = ? \
                         WHERE resource_type = ? AND id = ?",
                    )
                    .bind(&body)
                    .bind(&at)
                    .bind(resource_type)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    counts.updated += 1;
                }
                None => {
                    sqlx::query(
                        "INSERT INTO emr_resources (resource_type, id, version, body, updated_at) \
                         VALUES (?, ?, 1, ?, ?)",
                    )
                    .bind(resource_type)
                    .bind(id)
                    .bind(&body)
                    .bind(&at)
                    .execute(&mut *tx)
                    .await?;
                    counts.created += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// Every record of a type.
    pub async fn all<T: DeserializeOwned>(
        &self,
        resource_type: &str,
    ) -> Result<Vec<T>, StoreError> {
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM emr_resources WHERE resource_type = ? ORDER BY id",
        )
        .bind(resource_type)
        .fetch_all(&self.pool)
        .await?;
        bodies
            .iter()
            .map(|b| {
                serde_json::from_str(b).map_err(|e| {
                    StoreError::Index(format!("a stored EMR record is unreadable: {e}"))
                })
            })
            .collect()
    }

    /// One record and its version.
    pub async fn get<T: DeserializeOwned>(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(T, i64)>, StoreError> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT body, version FROM emr_resources WHERE resource_type = ? AND id = ?",
        )
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(body, version)| {
            serde_json::from_str(&body)
                .map(|record| (record, version))
                .map_err(|e| StoreError::Index(format!("a stored EMR record is unreadable: {e}")))
        })
        .transpose()
    }

    /// What matching reads of the archived studies (one study, or all).
    pub async fn study_facts(&self, study: Option<&str>) -> Result<Vec<StudyFacts>, StoreError> {
        let rows = sqlx::query(
            "SELECT st.study_instance_uid, st.accession_number, st.study_date, p.patient_id, \
             p.issuer_of_patient_id, p.patient_name, p.patient_birth_date, p.patient_sex, \
             GROUP_CONCAT(DISTINCT se.modality) AS modalities \
             FROM studies st JOIN patients p ON p.id = st.patient_ref \
             LEFT JOIN series se ON se.study_ref = st.id \
             WHERE (?1 IS NULL OR st.study_instance_uid = ?1) GROUP BY st.id",
        )
        .bind(study)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let modalities: Option<String> = row.try_get("modalities")?;
                Ok(StudyFacts {
                    study_instance_uid: row.try_get("study_instance_uid")?,
                    accession_number: row.try_get("accession_number")?,
                    patient_id: row.try_get("patient_id")?,
                    issuer_of_patient_id: row.try_get("issuer_of_patient_id")?,
                    patient_name: row.try_get("patient_name")?,
                    patient_birth_date: row.try_get("patient_birth_date")?,
                    patient_sex: row.try_get("patient_sex")?,
                    study_date: row.try_get("study_date")?,
                    modalities: modalities
                        .unwrap_or_default()
                        .split(',')
                        .filter(|m| !m.is_empty() && *m != "SR" && *m != "SEG")
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records the automatic join's outcomes; links resolved by hand are kept.
    pub async fn save_outcomes(
        &self,
        outcomes: &[(String, JoinOutcome)],
    ) -> Result<(), StoreError> {
        let at = now();
        let mut tx = super::index::begin_write(&self.pool).await?;
        for (study, outcome) in outcomes {
            let (state, link, reason, candidates): (
                &str,
                Option<&StudyLink>,
                Option<&str>,
                String,
            ) = match outcome {
                JoinOutcome::Linked(link) => ("linked", Some(link), None, "[]".into()),
                JoinOutcome::Ambiguous { candidates, reason } => (
                    "ambiguous",
                    None,
                    Some(reason.as_str()),
                    serde_json::to_string(candidates).unwrap_or_else(|_| "[]".into()),
                ),
                JoinOutcome::Unmatched { reason } => {
                    ("unmatched", None, Some(reason.as_str()), "[]".into())
                }
            };
            sqlx::query(
                "INSERT INTO study_links (study_instance_uid, state, patient, order_id, method, confidence, reason, \
                 candidates, linked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(study_instance_uid) DO UPDATE SET state = excluded.state, patient = excluded.patient, \
                 order_id = excluded.order_id, method = excluded.method, confidence = excluded.confidence, \
                 reason = excluded.reason, candidates = excluded.candidates, linked_at = excluded.linked_at \
                 WHERE study_links.resolved_by IS NULL",
            )
            .bind(study)
            .bind(state)
            .bind(link.map(|l| l.patient.as_str()))
            .bind(link.and_then(|l| l.order.as_deref()))
            .bind(link.map(|l| l.method.as_str()))
            .bind(link.map(|l| l.confidence))
            .bind(reason)
            .bind(candidates)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A link made by hand (audited by the caller); never replaced by the automatic join.
    pub async fn link_by_hand(
        &self,
        study: &str,
        patient: &str,
        order: Option<&str>,
        user: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO study_links (study_instance_uid, state, patient, order_id, method, confidence, reason, \
             candidates, linked_at, resolved_by) VALUES (?, 'linked', ?, ?, 'manual', 1.0, NULL, '[]', ?, ?) \
             ON CONFLICT(study_instance_uid) DO UPDATE SET state = 'linked', patient = excluded.patient, \
             order_id = excluded.order_id, method = 'manual', confidence = 1.0, reason = NULL, candidates = '[]', \
             linked_at = excluded.linked_at, resolved_by = excluded.resolved_by",
        )
        .bind(study)
        .bind(patient)
        .bind(order)
        .bind(now())
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn link(&self, study: &str) -> Result<Option<StoredLink>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LINK_COLUMNS} FROM study_links WHERE study_instance_uid = ?"
        ))
        .bind(study)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(link_from_row)
            .transpose()
            .map_err(StoreError::from)
    }

    /// Links in `states`, oldest first.
    pub async fn links(
        &self,
        states: &[&str],
        patient: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredLink>, StoreError> {
        // The states go in as one JSON array, so the filter and the bound stay in SQL.
        let states = serde_json::to_string(states).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(&format!(
            "SELECT {LINK_COLUMNS} FROM study_links WHERE (?1 IS NULL OR patient = ?1) \
             AND state IN (SELECT value FROM json_each(?2)) \
             ORDER BY linked_at, study_instance_uid LIMIT ?3"
        ))
        .bind(patient)
        .bind(states)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let links = rows
            .iter()
            .map(link_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(links)
    }
}
