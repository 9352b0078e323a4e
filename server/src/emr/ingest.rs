//! Ingest: EMR records in, stored with versions, and the join run again over the studies
//! whose link could change — whichever side arrives first, the link ends up the same.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use super::fhir::{EntryError, ParsedBundle, parse_bundle};
use super::join::{EmrIndex, JoinConfig, JoinOutcome, join_study};
use super::{EmrEncounter, EmrOrder, EmrPatient};
use crate::store::emr::{EmrStore, UpsertCounts};
use crate::store::{Archive, StoreError};

pub const PATIENT: &str = "Patient";
pub const ORDER: &str = "ServiceRequest";
pub const ENCOUNTER: &str = "Encounter";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Bundle(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a bundle did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub patients: UpsertCounts,
    pub orders: UpsertCounts,
    pub encounters: UpsertCounts,
    /// Resource types we do not use, with how many entries were skipped.
    pub ignored: BTreeMap<String, usize>,
    /// Entries refused, each with its index and reason; the rest was stored.
    pub errors: Vec<EntryError>,
    /// Studies joined again, by outcome.
    pub join: JoinSummary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinSummary {
    pub linked: usize,
    pub ambiguous: usize,
    pub unmatched: usize,
}

/// The EMR side of the server: records, the matching index built from them, and the
/// join. Cheap to clone.
#[derive(Clone)]
pub struct Emr {
    archive: Archive,
    config: Arc<JoinConfig>,
    index: Arc<RwLock<Arc<EmrIndex>>>,
    /// Serialises ingests, so two bundles never rebuild the index over each other.
    ingest_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Emr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emr")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Emr {
    /// Loads the stored records and builds the index.
    pub async fn open(archive: Archive, config: JoinConfig) -> Result<Emr, StoreError> {
        let emr = Emr {
            archive,
            config: Arc::new(config),
            index: Arc::new(RwLock::new(Arc::new(EmrIndex::new(&[], &[])))),
            ingest_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        emr.rebuild_index().await?;
        Ok(emr)
    }

    pub fn store(&self) -> &EmrStore {
        self.archive.emr()
    }

    pub fn config(&self) -> &JoinConfig {
        &self.config
    }

    async fn rebuild_index(&self) -> Result<Arc<EmrIndex>, StoreError> {
        let patients: Vec<EmrPatient> = self.store().all(PATIENT).await?;
        let orders: Vec<EmrOrder> = self.store().all(ORDER).await?;
        let config = self.config.clone();
        let index = tokio::task::spawn_blocking(move || {
            Arc::new(EmrIndex::with_config(&patients, &orders, &config))
        })
        .await
        .map_err(|e| StoreError::Index(format!("EMR index task: {e}")))?;
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index.clone();
        Ok(index)
    }

    fn index(&self) -> Arc<EmrIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stores a FHIR Bundle's records (bad entries are reported, the rest is stored) and
    /// joins every study again.
    pub async fn ingest_fhir(&self, body: &[u8]) -> Result<IngestReport, IngestError> {
        let parsed = parse_bundle(body).map_err(|e| IngestError::Bundle(e.to_string()))?;
        self.ingest(parsed).await
    }

    /// Stores parsed records (from FHIR, HL7 v2 or a file import: every source ends here)
    /// and joins every study again.
    pub async fn ingest(&self, parsed: ParsedBundle) -> Result<IngestReport, IngestError> {
        let _one_at_a_time = self.ingest_lock.lock().await;
        let patients: Vec<(String, EmrPatient)> = parsed
            .patients
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let orders: Vec<(String, EmrOrder)> = parsed
            .orders
            .into_iter()
            .map(|o| (o.id.clone(), o))
            .collect();
        let encounters: Vec<(String, EmrEncounter)> = parsed
            .encounters
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let store = self.store();
        let patient_counts = store.upsert(PATIENT, &patients).await?;
        let order_counts = store.upsert(ORDER, &orders).await?;
        let encounter_counts = store.upsert(ENCOUNTER, &encounters).await?;
        self.rebuild_index().await?;
        let join = self.join_all().await?;
        tracing::info!(
            patients = patients.len(),
            orders = orders.len(),
            encounters = encounters.len(),
            errors = parsed.errors.len(),
            linked = join.linked,
            "EMR records stored and studies joined"
        );
        Ok(IngestReport {
            patients: patient_counts,
            orders: order_counts,
            encounters: encounter_counts,
            ignored: parsed.ignored,
            errors: parsed.errors,
            join,
        })
    }

    /// Joins every archived study against the current index.
    pub async fn join_all(&self) -> Result<JoinSummary, StoreError> {
        let facts = self.store().study_facts(None).await?;
        self.join_facts(facts).await
    }

    /// Joins one study (when it arrives).
    pub async fn join_study(&self, study: &str) -> Result<JoinSummary, StoreError> {
        let facts = self.store().study_facts(Some(study)).await?;
        self.join_facts(facts).await
    }

    async fn join_facts(&self, facts: Vec<super::StudyFacts>) -> Result<JoinSummary, StoreError> {
        let (index, config) = (self.index(), self.config.clone());
        let outcomes = tokio::task::spawn_blocking(move || {
            facts
                .iter()
                .map(|f| (f.study_instance_uid.clone(), join_study(f, &index, &config)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| StoreError::Index(format!("join task: {e}")))?;
        let mut summary = JoinSummary::default();
        for (_, outcome) in &outcomes {
            match outcome {
                JoinOutcome::Linked(_) => summary.linked += 1,
                JoinOutcome::Ambiguous { .. } => summary.ambiguous += 1,
                JoinOutcome::Unmatched { .. } => summary.unmatched += 1,
            }
        }
        self.store().save_outcomes(&outcomes).await?;
        Ok(summary)
    }

    /// The data-quality report: how studies were matched, what is left for review, orders
    /// no study answered after `stale_days`, and identifier conflicts.
    pub async fn quality(&self, stale_days: i64) -> Result<serde_json::Value, StoreError> {
        let store = self.store();
        let links = store
            .links(&["linked", "ambiguous", "unmatched"], None, u32::MAX)
            .await?;
        let mut by_method: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
        let mut reasons: HashMap<String, usize> = HashMap::new();
        let mut answered: HashSet<String> = HashSet::new();
        for link in &links {
            *by_state.entry(link.state.clone()).or_default() += 1;
            if let Some(method) = &link.method {
                *by_method.entry(method.clone()).or_default() += 1;
            }
            if let Some(reason) = &link.reason {
                *reasons.entry(reason.clone()).or_default() += 1;
            }
            if let Some(order) = &link.order {
                answered.insert(order.clone());
            }
        }
        let mut top_reasons: Vec<(String, usize)> = reasons.into_iter().collect();
        top_reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top_reasons.truncate(10);

        let orders: Vec<EmrOrder> = store.all(ORDER).await?;
        let patients: Vec<EmrPatient> = store.all(PATIENT).await?;
        let cutoff = chrono::Utc::now() - chrono::Duration::days(stale_days.max(0));
        let stale: Vec<&str> = orders
            .iter()
            .filter(|o| !answered.contains(&o.id))
            .filter(|o| {
                o.occurrence
                    .as_deref()
                    .or(o.authored_on.as_deref())
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t < cutoff)
            })
            .map(|o| o.id.as_str())
            .collect();
        // The same accession number on orders of two patients.
        let mut accession_patients: HashMap<&str, HashSet<&str>> = HashMap::new();
        for order in &orders {
            for id in order
                .identifiers
                .iter()
                .filter(|i| i.type_code.as_deref() == Some("ACSN"))
            {
                if let Some(patient) = &order.patient {
                    accession_patients
                        .entry(id.value.as_str())
                        .or_default()
                        .insert(patient);
                }
            }
        }
        let accession_conflicts: Vec<&str> = accession_patients
            .iter()
            .filter(|(_, p)| p.len() > 1)
            .map(|(a, _)| *a)
            .collect();
        // A patient identifier (normalised) held by two EMR patients.
        let mut id_patients: HashMap<String, HashSet<&str>> = HashMap::new();
        for patient in &patients {
            for id in patient
                .identifiers
                .iter()
                .filter(|i| i.type_code.as_deref() != Some("ACSN"))
            {
                id_patients
                    .entry(super::join::normalise_patient_id(&id.value, &self.config))
                    .or_default()
                    .insert(patient.id.as_str());
            }
        }
        let id_conflicts: Vec<&String> = id_patients
            .iter()
            .filter(|(_, p)| p.len() > 1)
            .map(|(id, _)| id)
            .collect();
        Ok(serde_json::json!({
            "studies": links.len(),
            "by_state": by_state,
            "linked_by_method": by_method,
            "top_reasons": top_reasons.iter().map(|(r, n)| serde_json::json!({"reason": r, "studies": n})).collect::<Vec<_>>(),
            "orders": orders.len(),
            "orders_without_study": { "older_than_days": stale_days, "count": stale.len(), "orders": stale },
            "conflicts": {
                "accession_on_two_patients": accession_conflicts,
                "patient_id_on_two_patients": id_conflicts.len(),
            },
        }))
    }
}
