//! A pipeline worker: claim a job, run it, record the outcome; never two at once.

use std::sync::Arc;
use std::time::Instant;

use super::Pipeline;
use super::analyse::{Admission, Analysis, AnalysisError, analyse};
use super::decode::{DecodedImage, decode_instance};
use crate::infer::{CancelFlag, ModelState, ServedModel};
use crate::metrics;
use crate::results::forward::forward;
use crate::results::seg::{Segment, SegmentFrame, build_seg};
use crate::results::sr::{SegReference, build_sr};
use crate::results::{AlgorithmInfo, NewInstance, SourceImage};
use crate::shutdown::Shutdown;
use crate::store::jobs::{Completion, FindingRow, JobRecord};
use crate::store::{Scope, Source};

/// Series numbers of result series: far from the modality's own numbers.
const SR_SERIES_NUMBER: i32 = 9001;
const SEG_SERIES_NUMBER: i32 = 9002;

/// Runs until shutdown: waits for the models, then claims and runs jobs one at a time.
pub async fn run(pipeline: Pipeline, index: usize, mut shutdown: Shutdown) {
    // No job is claimed before every model has loaded (or failed to): a claimed job
    // would otherwise wait for its model while holding the lease.
    while pipeline
        .models
        .list()
        .iter()
        .any(|m| m.state == ModelState::Loading)
    {
        tokio::select! {
            () = tokio::time::sleep(pipeline.config.poll_interval()) => {}
            () = shutdown.requested() => return,
        }
    }
    loop {
        let claimed = match pipeline
            .archive
            .jobs()
            .claim(&pipeline.owner, pipeline.config.lease())
            .await
        {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(worker = index, error = %e, "cannot claim a job");
                None
            }
        };
        let Some(job) = claimed else {
            let woken = pipeline.jobs_created.notified();
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(pipeline.config.poll_interval()) => {}
                () = shutdown.requested() => return,
            }
            continue;
        };
        tracing::info!(worker = index, job = job.id, model = %job.model, "job started");
        run_claimed(&pipeline, &job).await;
        if shutdown.is_requested() {
            return;
        }
    }
}

/// Runs one claimed job with a heartbeat on its lease, and records how it ended.
async fn run_claimed(pipeline: &Pipeline, job: &JobRecord) {
    let cancel = CancelFlag::default();
    let heartbeat = {
        let (pipeline, cancel, id) = (pipeline.clone(), cancel.clone(), job.id);
        tokio::spawn(async move {
            let every = pipeline.config.lease() / 3;
            loop {
                tokio::time::sleep(every).await;
                match pipeline
                    .archive
                    .jobs()
                    .heartbeat(id, &pipeline.owner, pipeline.config.lease())
                    .await
                {
                    // Cancelled or taken over: stop feeding the batcher.
                    Ok(false) => {
                        cancel.cancel();
                        return;
                    }
                    Ok(true) => {}
                    Err(e) => tracing::warn!(job = id, error = %e, "lease heartbeat failed"),
                }
            }
        })
    };
    let outcome = run_job(pipeline, job, &cancel).await;
    heartbeat.abort();
    let jobs = pipeline.archive.jobs();
    let recorded = match outcome {
        Ok(()) => Ok(()),
        Err(AnalysisError::Cancelled) => {
            tracing::info!(job = job.id, "job cancelled");
            Ok(())
        }
        Err(AnalysisError::Unsuitable(reason)) => {
            tracing::warn!(job = job.id, %reason, "job failed: the images do not suit the model");
            jobs.record_failure(job, &pipeline.owner, &reason, None)
                .await
        }
        Err(AnalysisError::Busy(reason) | AnalysisError::Transient(reason)) => {
            let delay = pipeline.config.retry_delay(job.attempts);
            tracing::warn!(job = job.id, attempts = job.attempts, %reason, "job attempt failed");
            jobs.record_failure(job, &pipeline.owner, &reason, Some(delay))
                .await
        }
    };
    if let Err(e) = recorded {
        tracing::error!(job = job.id, error = %e, "cannot record the job's outcome; its lease will expire and it will run again");
    }
}

/// Reads the series, analyses it, writes the results and completes the job.
async fn run_job(
    pipeline: &Pipeline,
    job: &JobRecord,
    cancel: &CancelFlag,
) -> Result<(), AnalysisError> {
    let transient = |e: crate::store::StoreError| AnalysisError::Transient(e.to_string());
    let model = pipeline.models.get(&job.model).ok_or_else(|| {
        AnalysisError::Unsuitable(format!("model `{}` is not configured", job.model))
    })?;
    let batcher = match (&model.state, &model.batcher) {
        (ModelState::Ready, Some(batcher)) => batcher.clone(),
        (ModelState::Failed(reason), _) => {
            return Err(AnalysisError::Unsuitable(format!(
                "model `{}` failed to load: {reason}",
                job.model
            )));
        }
        _ => {
            return Err(AnalysisError::Transient(format!(
                "model `{}` is not loaded yet",
                job.model
            )));
        }
    };

    let started = Instant::now();
    let images = read_series(pipeline, &job.study_instance_uid, &job.series_instance_uid).await?;
    let decode_time = started.elapsed();
    metrics::record_stage(&job.model, "decode", decode_time);

    let images = Arc::new(images);
    let mut analysis = analyse(
        &model.manifest,
        &batcher,
        images.clone(),
        job.priority,
        cancel,
        Admission::Wait,
    )
    .await?;
    analysis.timings.decode_ms = decode_time.as_secs_f64() * 1e3;

    let started = Instant::now();
    let stored = store_results(pipeline, job, &model, &images, &analysis).await?;
    analysis.timings.store_ms = started.elapsed().as_secs_f64() * 1e3;
    metrics::record_stage(&job.model, "store", started.elapsed());
    if let Some(node) = &pipeline.config.forward {
        // The results are safe in the archive; a PACS that is down does not fail the job,
        // the outcome is kept with its timings.
        analysis.timings.forward = Some(match forward(node, &stored.objects).await {
            Ok(report) => format!("sent {} to {}", report.sent, node.ae_title),
            Err(e) => {
                tracing::warn!(job = job.id, error = %e, "forwarding results failed");
                format!("failed: {e}")
            }
        });
    }
    let (sr_uid, seg_uid) = (stored.sr_uid, stored.seg_uid);

    let rows: Vec<FindingRow> = analysis
        .findings
        .iter()
        .map(|f| FindingRow {
            label: f.finding.label.clone(),
            code_scheme: f.finding.code.scheme.clone(),
            code_value: f.finding.code.value.clone(),
            code_meaning: f.finding.code.meaning.clone(),
            probability: f.finding.probability,
            positive: f.positive,
            tracking_uid: f.finding.tracking_uid.clone(),
            source_instances: f.finding.source_instances.clone(),
            measurements: serde_json::to_value(&f.finding.measurements)
                .unwrap_or(serde_json::Value::Null),
            location: f.location.clone(),
        })
        .collect();
    let manifest = &model.manifest;
    let completed = pipeline
        .archive
        .jobs()
        .complete(
            job,
            &pipeline.owner,
            &Completion {
                model_version: &manifest.model.version,
                weights_sha256: &manifest.weights.sha256,
                findings: &rows,
                timings: serde_json::to_value(&analysis.timings).unwrap_or(serde_json::Value::Null),
                sr_sop_instance_uid: sr_uid.as_deref(),
                seg_sop_instance_uid: seg_uid.as_deref(),
            },
        )
        .await
        .map_err(transient)?;
    if completed {
        tracing::info!(
            job = job.id,
            findings = rows.iter().filter(|r| r.positive).count(),
            "job done"
        );
    } else {
        tracing::warn!(
            job = job.id,
            "job was cancelled or taken over meanwhile: results not recorded"
        );
    }
    Ok(())
}

/// Reads and decodes every instance of a series (bounded), off the async threads.
pub async fn read_series(
    pipeline: &Pipeline,
    study: &str,
    series: &str,
) -> Result<Vec<DecodedImage>, AnalysisError> {
    let transient = |e: crate::store::StoreError| AnalysisError::Transient(e.to_string());
    let instances = pipeline
        .archive
        .locate(&Scope::Series {
            study: study.to_owned(),
            series: series.to_owned(),
        })
        .await
        .map_err(transient)?;
    if instances.is_empty() {
        return Err(AnalysisError::Unsuitable(
            "the series has no instances (withdrawn?)".into(),
        ));
    }
    let limit = pipeline.config.max_instances_per_series;
    if instances.len() > limit {
        return Err(AnalysisError::Unsuitable(format!(
            "the series has {} instances, more than max_instances_per_series ({limit})",
            instances.len()
        )));
    }
    let mut images = Vec::with_capacity(instances.len());
    for instance in &instances {
        let bytes = pipeline
            .archive
            .read_blob(instance)
            .await
            .map_err(transient)?;
        let decoded = tokio::task::spawn_blocking(move || decode_instance(&bytes))
            .await
            .map_err(|e| AnalysisError::Transient(format!("decode task: {e}")))?
            .map_err(AnalysisError::Unsuitable)?;
        images.push(decoded);
    }
    Ok(images)
}

/// The result objects of a job, as stored.
struct StoredResults {
    sr_uid: Option<String>,
    seg_uid: Option<String>,
    /// Part 10 bytes: the SEG (if any), then the SR.
    objects: Vec<Vec<u8>>,
}

/// Writes the SR (and for segmentations the SEG) and stores them in the archive.
async fn store_results(
    pipeline: &Pipeline,
    job: &JobRecord,
    model: &ServedModel,
    images: &Arc<Vec<DecodedImage>>,
    analysis: &Analysis,
) -> Result<StoredResults, AnalysisError> {
    let manifest = &model.manifest;
    let algorithm = AlgorithmInfo {
        name: manifest.model.name.clone(),
        version: manifest.model.version.clone(),
        weights_sha256: manifest.weights.sha256.clone(),
        device: format!("{} ({})", model.backend, model.adapter),
    };
    let version = job.result_version.to_string();
    let key = [
        job.study_instance_uid.as_str(),
        job.series_instance_uid.as_str(),
        job.model.as_str(),
        version.as_str(),
    ];
    let now = chrono::Utc::now();
    let instance = |kind: &str, series_number: i32| NewInstance {
        series_instance_uid: super::derived_uid(&[&["series", kind], &key[..]].concat()),
        sop_instance_uid: super::derived_uid(&[&["instance", kind], &key[..]].concat()),
        series_number,
        instance_number: i32::try_from(job.result_version).unwrap_or(1),
        content_date: now.format("%Y%m%d").to_string(),
        content_time: now.format("%H%M%S").to_string(),
    };
    let sources: Vec<SourceImage> = images
        .iter()
        .map(|i| SourceImage {
            dataset: i.dataset.clone(),
        })
        .collect();
    let unsuitable = |e: crate::results::ResultError| AnalysisError::Unsuitable(e.to_string());

    let mut seg_reference = None;
    let mut seg_bytes = None;
    if !analysis.mask_frames.is_empty() {
        let label = manifest.output.labels.first();
        let seg_instance = instance("seg", SEG_SERIES_NUMBER);
        let segment = Segment {
            number: 1,
            label: label.map_or("finding".into(), |l| l.name.clone()),
            property_type: label.map_or_else(
                || crate::results::CodedConcept {
                    scheme: "SCT".into(),
                    value: "49755003".into(),
                    meaning: "Morphologically abnormal structure".into(),
                },
                |l| l.code.clone(),
            ),
            property_category: crate::results::CodedConcept {
                scheme: "SCT".into(),
                value: "49755003".into(),
                meaning: "Morphologically abnormal structure".into(),
            },
            tracking_id: format!("{} segmentation", manifest.model.name),
            tracking_uid: super::derived_uid(&[&["segment"], &key[..]].concat()),
        };
        let frames: Vec<SegmentFrame> = analysis
            .mask_frames
            .iter()
            .map(|f| SegmentFrame {
                segment_number: 1,
                source_index: f.image,
                mask: f.mask.clone(),
            })
            .collect();
        let (sources_for_seg, algorithm_for_seg, seg_for_build) =
            (sources.clone(), algorithm.clone(), seg_instance.clone());
        let bytes = tokio::task::spawn_blocking(move || {
            build_seg(
                &sources_for_seg,
                &algorithm_for_seg,
                &[segment],
                &frames,
                &seg_for_build,
            )
        })
        .await
        .map_err(|e| AnalysisError::Transient(format!("SEG task: {e}")))?
        .map_err(unsuitable)?;
        seg_reference = Some(SegReference {
            series_instance_uid: seg_instance.series_instance_uid.clone(),
            sop_instance_uid: seg_instance.sop_instance_uid.clone(),
        });
        seg_bytes = Some(bytes);
    }
    let positives: Vec<crate::results::Finding> = analysis
        .findings
        .iter()
        .filter(|f| f.positive)
        .map(|f| f.finding.clone())
        .collect();
    let sr_instance = instance("sr", SR_SERIES_NUMBER);
    let reference = seg_reference.clone();
    let sr_build = sr_instance.clone();
    let sr_bytes = tokio::task::spawn_blocking(move || {
        build_sr(
            &sources,
            &algorithm,
            &positives,
            reference.as_ref(),
            &sr_build,
        )
    })
    .await
    .map_err(|e| AnalysisError::Transient(format!("SR task: {e}")))?
    .map_err(unsuitable)?;

    let mut objects = Vec::with_capacity(2);
    if let Some(bytes) = seg_bytes {
        store_object(pipeline, &job.model, &bytes).await?;
        objects.push(bytes);
    }
    store_object(pipeline, &job.model, &sr_bytes).await?;
    objects.push(sr_bytes);
    Ok(StoredResults {
        sr_uid: Some(sr_instance.sop_instance_uid),
        seg_uid: seg_reference.map(|s| s.sop_instance_uid),
        objects,
    })
}

/// Stores one Part 10 result object in the archive (a retry storing it again is a no-op).
async fn store_object(pipeline: &Pipeline, model: &str, bytes: &[u8]) -> Result<(), AnalysisError> {
    let transient = |e: String| AnalysisError::Transient(format!("storing a result: {e}"));
    let archive = &pipeline.archive;
    let mut upload = archive
        .begin_file_upload()
        .await
        .map_err(|e| transient(e.to_string()))?;
    upload
        .write(bytes)
        .await
        .map_err(|e| transient(e.to_string()))?;
    archive
        .put(
            upload,
            &Source::Pipeline {
                model: model.to_owned(),
            },
        )
        .await
        .map_err(|e| match e {
            // Our own object refused by the archive: a bug of ours, not worth retrying.
            crate::store::PutError::Invalid(reason) => {
                AnalysisError::Unsuitable(format!("the archive refused a result object: {reason}"))
            }
            other => transient(other.to_string()),
        })?;
    Ok(())
}
