//! Where reports about a study come from: the study as archived, its EMR link, its
//! current results (jobs, findings, SR and SEG). Read by the FHIR API and by the senders
//! of results to the EMR ([`super::deliver`]), so both describe a result the same way.

use std::collections::BTreeMap;

use super::StudyFacts;
use super::fhir_out::{self, EmrLink, FindingSites, InstanceRef, JobResult, StudyContext};
use crate::infer::Models;
use crate::store::jobs::JobFilter;
use crate::store::{Archive, Scope, StoreError};

/// The most jobs read per study.
const MAX_JOBS: u32 = 1000;

/// Every served model's finding sites, by (model, label).
pub fn finding_sites(models: &Models) -> FindingSites {
    let mut sites = FindingSites::new();
    for model in models.list() {
        for label in &model.manifest.output.labels {
            if let Some(site) = &label.finding_site {
                sites.insert((model.name.clone(), label.name.clone()), site.clone());
            }
        }
    }
    sites
}

/// The study as reports need it: what the archive holds of it and its EMR link (only a
/// `linked` one: an ambiguous study has no patient yet). `None`: no such study.
pub async fn study_context(
    archive: &Archive,
    study: &str,
) -> Result<Option<StudyContext>, StoreError> {
    let emr = archive.emr();
    let facts: Option<StudyFacts> = emr.study_facts(Some(study)).await?.into_iter().next();
    let Some(facts) = facts else {
        return Ok(None);
    };
    let link = emr
        .link(study)
        .await?
        .filter(|l| l.state == "linked")
        .and_then(|l| {
            l.patient.map(|patient| EmrLink {
                patient,
                order: l.order,
            })
        });
    Ok(Some(StudyContext { facts, link }))
}

/// The current results of a study, one per job.
pub async fn job_results(archive: &Archive, study: &str) -> Result<Vec<JobResult>, StoreError> {
    let jobs = archive.jobs();
    let all = jobs
        .list(&JobFilter {
            state: Some("done".into()),
            study_instance_uid: Some(study.to_owned()),
            model: None,
            limit: MAX_JOBS,
            offset: 0,
        })
        .await?;
    let current = fhir_out::current_jobs(&all);
    if current.is_empty() {
        return Ok(Vec::new());
    }
    let findings = jobs.findings(study, false).await?;
    // Series of the SR and SEG, for their WADO-RS URLs.
    let wanted = |uid: &Option<String>| uid.as_ref().is_some();
    let series: BTreeMap<String, String> = if current
        .iter()
        .any(|j| wanted(&j.sr_sop_instance_uid) || wanted(&j.seg_sop_instance_uid))
    {
        archive
            .locate(&Scope::Study {
                study: study.to_owned(),
            })
            .await?
            .into_iter()
            .map(|i| (i.sop_instance_uid, i.series_instance_uid))
            .collect()
    } else {
        BTreeMap::new()
    };
    let instance = |sop: &Option<String>| {
        let sop = sop.as_ref()?;
        series.get(sop).map(|s| InstanceRef {
            series_instance_uid: s.clone(),
            sop_instance_uid: sop.clone(),
        })
    };
    Ok(current
        .into_iter()
        .map(|job| JobResult {
            findings: findings
                .iter()
                .filter(|f| f.job_id == job.id)
                .cloned()
                .collect(),
            sr: instance(&job.sr_sop_instance_uid),
            seg: instance(&job.seg_sop_instance_uid),
            job: job.clone(),
        })
        .collect())
}
