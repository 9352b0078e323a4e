//! Analyse: decoded images → preprocessing → the model's batcher → findings.
//!
//! Shared by pipeline jobs and by `POST /api/v1/infer`; each stage is timed.

use std::time::{Duration, Instant};

use radserve_models::candidate_filter::{MAX_CANDIDATES, candidate_patches};
use radserve_models::package::{Manifest, OutputTask};
use radserve_models::postprocess::{self, MaskVolume, SliceGeometry, cross, dot};
use radserve_models::preprocess::resize;
use serde::Serialize;

use super::decode::DecodedImage;
use super::prepare;
use crate::infer::{Batcher, CancelFlag, CandidateReview, ImageOutput, InferError};
use crate::metrics;
use crate::results::{CodedConcept, Finding, Measurement};
use crate::store::Priority;

/// How an analysis failed; the pipeline retries only [`AnalysisError::Transient`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// The images do not fit the model (size, geometry, pixels): retrying cannot help.
    #[error("{0}")]
    Unsuitable(String),
    /// The queue is full and the caller asked not to wait.
    #[error("{0}")]
    Busy(String),
    #[error("cancelled")]
    Cancelled,
    /// The device or the server failed; may pass.
    #[error("{0}")]
    Transient(String),
}

impl From<InferError> for AnalysisError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::QueueFull { .. } => AnalysisError::Busy(e.to_string()),
            InferError::TooManyImages { .. } => AnalysisError::Unsuitable(e.to_string()),
            InferError::Cancelled => AnalysisError::Cancelled,
            InferError::Device { .. } | InferError::Stopped(_) => {
                AnalysisError::Transient(e.to_string())
            }
        }
    }
}

/// Milliseconds spent per stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub decode_ms: f64,
    /// Checking the images against the model on the host, and preprocessing them on the
    /// device with their batches (each batch counted once).
    pub preprocess_ms: f64,
    /// Longest wait of an image for its batch.
    pub queue_ms: f64,
    /// Device time of the batches the images ran in (each batch counted once).
    pub compute_ms: f64,
    pub postprocess_ms: f64,
    pub store_ms: f64,
    /// Batches the images ran in, and their sizes.
    pub batch_sizes: Vec<usize>,
    /// Forwarding of the results to the configured PACS: `sent N` or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Timings {
    /// As a `Server-Timing` header value (W3C Server Timing).
    pub fn header(&self) -> String {
        format!(
            "decode;dur={:.2}, preprocess;dur={:.2}, queue;dur={:.2}, compute;dur={:.2}, postprocess;dur={:.2}",
            self.decode_ms, self.preprocess_ms, self.queue_ms, self.compute_ms, self.postprocess_ms
        )
    }
}

/// A finding and what only the findings row holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysedFinding {
    pub finding: Finding,
    /// At or above the label's threshold.
    pub positive: bool,
    /// `{"patient_mm": [...], "pixel": {...}}` when localised, else null.
    pub location: serde_json::Value,
}

/// A frame of the segmentation, at the source image's size (for the SEG).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskFrame {
    /// Index into the images given to [`analyse`].
    pub image: usize,
    pub mask: Vec<bool>,
}

/// What the model found in a set of images.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub findings: Vec<AnalysedFinding>,
    /// Segmentation models: the kept components' voxels, slice by slice (empty slices left
    /// out).
    pub mask_frames: Vec<MaskFrame>,
    pub timings: Timings,
}

/// Whether to wait for room in the model's queue or refuse at once when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Wait,
    RefuseWhenFull,
}

/// Runs `manifest`'s model (behind `batcher`) on `images` and reads its outputs.
pub async fn analyse(
    manifest: &Manifest,
    batcher: &Batcher,
    images: std::sync::Arc<Vec<DecodedImage>>,
    priority: Priority,
    cancel: &CancelFlag,
    admission: Admission,
) -> Result<Analysis, AnalysisError> {
    let model = manifest.model.name.clone();
    let mut timings = Timings::default();
    if images.is_empty() {
        return Err(AnalysisError::Unsuitable("no images to analyse".into()));
    }

    // Host work only: each image's spec is checked here, so an unsuitable image fails its own
    // job before it joins a batch. The preprocessing itself runs on the device with the batch.
    let started = Instant::now();
    let input = manifest.input.clone();
    let channels = manifest.architecture.in_channels();
    let prepared_images = images.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        prepared_images
            .iter()
            .map(|image| {
                prepare::model_input(image, &input, channels).map_err(|e| {
                    AnalysisError::Unsuitable(format!(
                        "image {} cannot be prepared for the model: {e}",
                        image.sop_instance_uid
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| AnalysisError::Transient(format!("preprocessing task: {e}")))??;
    timings.preprocess_ms = ms(started.elapsed());

    let outputs = match admission {
        Admission::Wait => batcher.submit(prepared, priority, cancel).await?,
        Admission::RefuseWhenFull => {
            let replies = batcher.try_submit(prepared, priority, cancel)?;
            crate::infer::batcher::collect(replies, &model).await?
        }
    };
    record_batches(&outputs, &mut timings);

    let started = Instant::now();
    let manifest_owned = manifest.clone();
    let blocking_error =
        |e: tokio::task::JoinError| AnalysisError::Transient(format!("post-processing task: {e}"));
    let (findings, mask_frames) = match manifest.output.kind {
        OutputTask::MultiLabel => {
            let findings = tokio::task::spawn_blocking(move || {
                classifications(&manifest_owned, &images, &outputs)
            })
            .await
            .map_err(blocking_error)?;
            (findings, Vec::new())
        }
        OutputTask::Segmentation => {
            let review = batcher.candidate_review().cloned();
            let (series, patches) = {
                let images = images.clone();
                let review = review.clone();
                tokio::task::spawn_blocking(move || {
                    let series = SegmentedSeries::build(&manifest_owned, &images, &outputs)?;
                    let patches = match &review {
                        Some(review) => Some(series.candidate_patches(review)?),
                        None => None,
                    };
                    Ok::<_, AnalysisError>((series, patches))
                })
                .await
                .map_err(blocking_error)??
            };
            // The reviewer runs on the device; its time counts as compute, not post-processing.
            let reviewed = match (review, patches) {
                (Some(review), Some(patches)) if !series.nodules.is_empty() => {
                    let review_started = Instant::now();
                    let (scores, compute) = batcher
                        .review_candidates(patches, series.nodules.len())
                        .await?;
                    timings.compute_ms += ms(compute);
                    metrics::record_stage(&model, "candidate_review", review_started.elapsed());
                    Some((scores, review.threshold))
                }
                _ => None,
            };
            let manifest_owned = manifest.clone();
            tokio::task::spawn_blocking(move || {
                series.findings(&manifest_owned, &images, reviewed.as_ref())
            })
            .await
            .map_err(blocking_error)??
        }
    };
    timings.postprocess_ms = ms(started.elapsed());
    metrics::record_stage(&model, "postprocess", started.elapsed());
    Ok(Analysis {
        findings,
        mask_frames,
        timings,
    })
}

fn record_batches(outputs: &[ImageOutput], timings: &mut Timings) {
    // Images of one batch arrive together with the same compute time: count each once.
    let mut last: Option<(usize, Duration)> = None;
    let mut left_in_batch = 0usize;
    for output in outputs {
        timings.queue_ms = timings.queue_ms.max(ms(output.queued));
        if left_in_batch == 0 || last != Some((output.batch_size, output.compute)) {
            timings.compute_ms += ms(output.compute);
            timings.preprocess_ms += ms(output.preprocess);
            timings.batch_sizes.push(output.batch_size);
            left_in_batch = output.batch_size;
            last = Some((output.batch_size, output.compute));
        }
        left_in_batch = left_in_batch.saturating_sub(1);
    }
}

/// A tracking UID for a finding of this analysis: unique per image set, model and index.
fn tracking_uid(images: &[DecodedImage], model: &str, index: usize) -> String {
    let first = images.first().map_or("", |i| i.sop_instance_uid.as_str());
    crate::pipeline::derived_uid(&["tracking", first, model, &index.to_string()])
}

/// The `n`th finding of this analysis for `label`, without measurements, location or source
/// instances (the caller adds what its output kind has).
fn labelled_finding(
    manifest: &Manifest,
    label: &radserve_models::package::LabelSpec,
    probability: f64,
    images: &[DecodedImage],
    n: usize,
) -> Finding {
    Finding {
        label: label.name.clone(),
        code: label.code.clone(),
        finding_site: label.finding_site.clone(),
        probability,
        tracking_id: format!("{} {}", label.name, n + 1),
        tracking_uid: tracking_uid(images, &manifest.model.name, n),
        measurements: Vec::new(),
        center_mm: None,
        source_instances: Vec::new(),
        segment_number: None,
    }
}

fn classifications(
    manifest: &Manifest,
    images: &[DecodedImage],
    outputs: &[ImageOutput],
) -> Vec<AnalysedFinding> {
    let labels = &manifest.output.labels;
    let mut findings = Vec::new();
    for (image, output) in images.iter().zip(outputs) {
        for (index, label) in labels.iter().enumerate() {
            let probability = f64::from(output.values.get(index).copied().unwrap_or(0.0));
            let n = findings.len();
            findings.push(AnalysedFinding {
                finding: Finding {
                    source_instances: vec![image.sop_instance_uid.clone()],
                    ..labelled_finding(manifest, label, probability, images, n)
                },
                positive: probability >= label.threshold,
                location: serde_json::Value::Null,
            });
        }
    }
    findings
}

fn ucum(code: &str, meaning: &str) -> CodedConcept {
    CodedConcept {
        scheme: "UCUM".into(),
        value: code.into(),
        meaning: meaning.into(),
    }
}

fn concept(scheme: &str, value: &str, meaning: &str) -> CodedConcept {
    CodedConcept {
        scheme: scheme.into(),
        value: value.into(),
        meaning: meaning.into(),
    }
}

/// A CT series as the segmenter masked it: slices sorted along the normal, the mask's 3D
/// components and the nodules measured from them.
struct SegmentedSeries {
    /// Image indices in slice order.
    order: Vec<usize>,
    sorted_geometry: Vec<SliceGeometry>,
    normal: [f64; 3],
    rows: usize,
    columns: usize,
    /// Hounsfield units in slice order (the reviewer's patches are drawn from them).
    hu: Vec<f32>,
    /// Component label per voxel, in slice order (0: background).
    labels: Vec<u32>,
    nodules: Vec<postprocess::NoduleMeasurement>,
    /// Per nodule: its component's label and mean probability.
    components: Vec<(Option<u32>, f64)>,
}

impl SegmentedSeries {
    fn build(
        manifest: &Manifest,
        images: &[DecodedImage],
        outputs: &[ImageOutput],
    ) -> Result<SegmentedSeries, AnalysisError> {
        let label = manifest.output.labels.first().ok_or_else(|| {
            AnalysisError::Transient("the segmentation model has no label".into())
        })?;
        let threshold = label.threshold as f32;
        let (detect, outline) = manifest.output.mask_thresholds();
        let [target_rows, target_columns] = manifest.input.target_size;
        let (rows, columns) = (images[0].rows, images[0].columns);
        let mut geometry = Vec::with_capacity(images.len());
        for image in images {
            if (image.rows, image.columns) != (rows, columns) {
                return Err(AnalysisError::Unsuitable(format!(
                    "image {} is {}×{} but the series' first image is {rows}×{columns}",
                    image.sop_instance_uid, image.rows, image.columns
                )));
            }
            geometry.push(image.geometry.ok_or_else(|| {
                AnalysisError::Unsuitable(format!(
                    "image {} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing: \
                     nodules cannot be measured",
                    image.sop_instance_uid
                ))
            })?);
        }
        // Slices in order along the normal, so that neighbours in the stack touch in space.
        let normal = cross(geometry[0].row_direction, geometry[0].column_direction);
        let mut order: Vec<usize> = (0..images.len()).collect();
        order.sort_by(|&a, &b| {
            dot(geometry[a].position_mm, normal).total_cmp(&dot(geometry[b].position_mm, normal))
        });
        let plane = rows * columns;
        let mut probability = Vec::with_capacity(plane * images.len());
        let mut hu = Vec::with_capacity(plane * images.len());
        for &i in &order {
            let values = &outputs[i].values;
            if values.len() < target_rows * target_columns {
                return Err(AnalysisError::Transient(format!(
                    "the model gave {} values for a {target_rows}×{target_columns} mask",
                    values.len()
                )));
            }
            let full = resize(
                &values[..target_rows * target_columns],
                target_rows,
                target_columns,
                rows,
                columns,
            );
            probability.extend_from_slice(&full);
            hu.extend_from_slice(&images[i].values);
        }
        let unsuitable =
            |e: postprocess::PostprocessError| AnalysisError::Unsuitable(e.to_string());
        let mask = postprocess::two_threshold_mask(
            rows,
            columns,
            order.len(),
            &probability,
            detect,
            outline,
        )
        .map_err(unsuitable)?;
        let sorted_geometry: Vec<SliceGeometry> = order.iter().map(|&i| geometry[i]).collect();
        let volume = MaskVolume {
            rows,
            columns,
            slices: &sorted_geometry,
            mask: &mask,
            hu: &hu,
        };
        let nodules = postprocess::measure_nodules(&volume, &manifest.output.component_options())
            .map_err(unsuitable)?;
        if nodules.len() > MAX_CANDIDATES {
            return Err(AnalysisError::Unsuitable(format!(
                "the segmenter found {} nodule candidates, more than the {MAX_CANDIDATES} a scan may have: \
                 the series is not what the model was made for",
                nodules.len()
            )));
        }
        let (labels, _) = postprocess::label_components_3d(rows, columns, order.len(), &mask)
            .map_err(unsuitable)?;
        // Each measured nodule is the component with its voxel count and slice range.
        let mut component_stats: std::collections::HashMap<u32, (usize, usize, usize, f64)> =
            std::collections::HashMap::new();
        for (voxel, &component) in labels.iter().enumerate() {
            if component == 0 {
                continue;
            }
            let slice = voxel / plane;
            let entry = component_stats
                .entry(component)
                .or_insert((0, usize::MAX, 0, 0.0));
            entry.0 += 1;
            entry.1 = entry.1.min(slice);
            entry.2 = entry.2.max(slice);
            entry.3 += f64::from(probability[voxel]);
        }
        let mut taken = std::collections::HashSet::new();
        let components = nodules
            .iter()
            .map(|nodule| {
                let component = component_stats.iter().find(|(id, s)| {
                    !taken.contains(*id)
                        && s.0 == nodule.voxel_count
                        && [s.1, s.2] == nodule.slice_range
                });
                match component {
                    Some((&id, s)) => {
                        taken.insert(id);
                        (Some(id), s.3 / s.0.max(1) as f64)
                    }
                    None => (None, f64::from(threshold)),
                }
            })
            .collect();
        Ok(SegmentedSeries {
            order,
            sorted_geometry,
            normal,
            rows,
            columns,
            hu,
            labels,
            nodules,
            components,
        })
    }

    /// The candidate reviewer's input for every nodule, laid end to end.
    fn candidate_patches(&self, review: &CandidateReview) -> Result<Vec<f32>, AnalysisError> {
        let volume = MaskVolume {
            rows: self.rows,
            columns: self.columns,
            slices: &self.sorted_geometry,
            mask: &[],
            hu: &self.hu,
        };
        let centres: Vec<[f64; 3]> = self.nodules.iter().map(|n| n.center_mm).collect();
        candidate_patches(volume, &centres, review.patch, &review.input)
            .map_err(|e| AnalysisError::Unsuitable(e.to_string()))
    }

    /// The findings and mask frames of the nodules kept: all of them, or with `reviewed`
    /// (the reviewer's score per nodule and its threshold) those scoring at or above the
    /// threshold, each with the score as its probability.
    fn findings(
        &self,
        manifest: &Manifest,
        images: &[DecodedImage],
        reviewed: Option<&(Vec<f32>, f64)>,
    ) -> Result<(Vec<AnalysedFinding>, Vec<MaskFrame>), AnalysisError> {
        let label = manifest.output.labels.first().ok_or_else(|| {
            AnalysisError::Transient("the segmentation model has no label".into())
        })?;
        let (order, sorted_geometry, normal) = (&self.order, &self.sorted_geometry, self.normal);
        let plane = self.rows * self.columns;
        let mut kept = std::collections::HashSet::new();
        let mut findings = Vec::with_capacity(self.nodules.len());
        for (i, (nodule, &(component, mean_probability))) in
            self.nodules.iter().zip(&self.components).enumerate()
        {
            let probability = match reviewed {
                Some((scores, review_threshold)) => {
                    let score = f64::from(scores.get(i).copied().unwrap_or(0.0));
                    if score < *review_threshold {
                        continue;
                    }
                    score
                }
                None => mean_probability,
            };
            if let Some(id) = component {
                kept.insert(id);
            }
            let n = findings.len();
            // The slice nearest the centre, and the centre's pixel on it.
            let nearest = (nodule.slice_range[0]..=nodule.slice_range[1])
                .min_by(|&a, &b| {
                    let d = |s: usize| {
                        (dot(sorted_geometry[s].position_mm, normal)
                            - dot(nodule.center_mm, normal))
                        .abs()
                    };
                    d(a).total_cmp(&d(b))
                })
                .unwrap_or(nodule.slice_range[0]);
            let g = &sorted_geometry[nearest];
            let offset = [
                nodule.center_mm[0] - g.position_mm[0],
                nodule.center_mm[1] - g.position_mm[1],
                nodule.center_mm[2] - g.position_mm[2],
            ];
            let column = dot(offset, g.row_direction) / g.pixel_spacing_mm[1];
            let row = dot(offset, g.column_direction) / g.pixel_spacing_mm[0];
            let sources: Vec<String> = (nodule.slice_range[0]..=nodule.slice_range[1])
                .map(|s| images[order[s]].sop_instance_uid.clone())
                .collect();
            findings.push(AnalysedFinding {
                finding: Finding {
                    measurements: vec![
                        Measurement {
                            concept: concept("SCT", "81827009", "Diameter"),
                            value: nodule.longest_axial_diameter_mm,
                            unit: ucum("mm", "millimeter"),
                        },
                        Measurement {
                            concept: concept("SCT", "118565006", "Volume"),
                            value: nodule.volume_mm3,
                            unit: ucum("mm3", "cubic millimeter"),
                        },
                        Measurement {
                            concept: concept("DCM", "112031", "Attenuation Coefficient"),
                            value: nodule.mean_hu,
                            unit: ucum("[hnsf'U]", "Hounsfield unit"),
                        },
                    ],
                    center_mm: Some(nodule.center_mm),
                    source_instances: sources,
                    segment_number: Some(1),
                    ..labelled_finding(manifest, label, probability, images, n)
                },
                positive: true,
                location: serde_json::json!({
                    "patient_mm": nodule.center_mm,
                    "pixel": {
                        "sop_instance_uid": images[order[nearest]].sop_instance_uid,
                        "row": row,
                        "column": column,
                    },
                    "slices": sources_range(order, nodule.slice_range),
                }),
            });
        }
        let mut mask_frames = Vec::new();
        for (s, &image) in order.iter().enumerate() {
            let frame: Vec<bool> = self.labels[s * plane..(s + 1) * plane]
                .iter()
                .map(|c| *c != 0 && kept.contains(c))
                .collect();
            if frame.iter().any(|&v| v) {
                mask_frames.push(MaskFrame { image, mask: frame });
            }
        }
        Ok((findings, mask_frames))
    }
}

/// The slice range as indices into the images as given (not the sorted order).
fn sources_range(order: &[usize], range: [usize; 2]) -> Vec<usize> {
    (range[0]..=range[1])
        .filter_map(|s| order.get(s).copied())
        .collect()
}
