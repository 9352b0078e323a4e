//! Held-out evaluation of the demo models: the numbers their model cards quote, recomputed
//! from a loaded package and seeded synthetic studies.

use std::collections::BTreeMap;

use burn::tensor::TensorData;
use serde::Serialize;

use crate::candidate_filter::candidate_patches;
use crate::metrics::{Overlap, roc_auc};
use crate::model::{LoadedModel, ModelError, Prediction};
use crate::postprocess::{self, ComponentOptions, MaskVolume, SliceGeometry};
use crate::preprocess::PreprocessError;
use crate::synthetic;

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Postprocess(#[from] postprocess::PostprocessError),
    #[error("{0}")]
    Data(String),
}

/// Nodules at least this large count for detection sensitivity (the target).
pub const DETECTION_MIN_DIAMETER_MM: f64 = 6.0;

/// Images per forward pass during evaluation.
const EVAL_BATCH: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct ClassifierMetrics {
    pub images: usize,
    /// ROC AUC per label name.
    pub auc: BTreeMap<String, f64>,
}

/// Runs the chest radiograph classifier on `count` radiographs drawn from `seed`.
pub fn evaluate_classifier(
    model: &LoadedModel,
    seed: u64,
    count: usize,
) -> Result<ClassifierMetrics, EvaluateError> {
    let manifest = &model.package.manifest;
    let examples = synthetic::xray_examples(seed, count, &manifest.input)?;
    let labels = manifest.output.labels.len();
    let mut scores: Vec<Vec<f32>> = vec![Vec::new(); labels];
    let mut truth: Vec<Vec<bool>> = vec![Vec::new(); labels];
    for (example, probabilities) in examples.iter().zip(classify(model, &examples)?) {
        for label in 0..labels {
            scores[label].push(probabilities[label]);
            truth[label].push(example.labels.get(label).copied().unwrap_or(0.0) > 0.5);
        }
    }
    let mut auc = BTreeMap::new();
    for (label, spec) in manifest.output.labels.iter().enumerate() {
        let value = roc_auc(&scores[label], &truth[label]).ok_or_else(|| {
            EvaluateError::Data(format!(
                "label {} has only one class in the held-out set",
                spec.name
            ))
        })?;
        auc.insert(spec.name.clone(), value);
    }
    Ok(ClassifierMetrics {
        images: examples.len(),
        auc,
    })
}

/// The classifier's probability per label (in the package's order) for each of `examples`,
/// run in batches.
pub fn classify(
    model: &LoadedModel,
    examples: &[synthetic::XrayExample],
) -> Result<Vec<Vec<f32>>, EvaluateError> {
    let [rows, columns] = model.package.manifest.input.target_size;
    let mut probabilities = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(EVAL_BATCH) {
        let data: Vec<f32> = chunk.iter().flat_map(|e| e.image.iter().copied()).collect();
        let images = TensorData::new(data, [chunk.len(), 1, rows, columns]);
        let Prediction::Probabilities { labels, values } = model.predict(images)? else {
            return Err(EvaluateError::Data("the classifier gave masks".into()));
        };
        probabilities.extend(values.chunks(labels).map(<[f32]>::to_vec));
    }
    Ok(probabilities)
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentationMetrics {
    pub scans: usize,
    /// Nodules of at least `min_diameter_mm` in the held-out scans.
    pub nodules: usize,
    /// Dice of the mask radserve reports (the components the rules and the reviewer keep)
    /// against the truth, over all voxels of all scans (the original 512×512 grid).
    pub dice: f64,
    /// Dice of every voxel at or above the mask threshold, before any component is dropped.
    pub dice_all_voxels: f64,
    /// Share of nodules ≥ `min_diameter_mm` that a predicted component hits.
    pub sensitivity: f64,
    /// Predicted components that match no nodule, per scan.
    pub false_positives_per_scan: f64,
    pub min_diameter_mm: f64,
}

/// One held-out scan as the segmenter saw it: every component it produced (only the
/// package's minimum volume applied, so that other component rules can be tried on the
/// same run), the candidate reviewer's score of each (empty without a reviewer) and the truth.
#[derive(Debug, Clone)]
pub struct SegmentedScan {
    pub components: Vec<postprocess::NoduleMeasurement>,
    pub review_scores: Vec<f32>,
    /// Per component: its voxels, and how many of them are nodule in the truth (for the
    /// Dice of the components a rule set keeps).
    pub component_voxels: Vec<(u64, u64)>,
    pub truth: Vec<dicom_samples::ground_truth::NoduleTruth>,
    /// Voxels that are nodule in the truth.
    pub truth_voxels: u64,
}

/// Runs the nodule segmenter slice by slice on `scans` phantoms drawn from `seed`, scores
/// it with the package's component rules ([`crate::package::OutputSpec::component_options`])
/// and its candidate reviewer's threshold.
pub fn evaluate_segmenter(
    model: &LoadedModel,
    seed: u64,
    scans: usize,
) -> Result<SegmentationMetrics, EvaluateError> {
    let options = model.package.manifest.output.component_options();
    let (segmented, overlap) = segment_scans(model, seed, scans)?;
    Ok(score_detection(
        &segmented,
        overlap.dice().unwrap_or(0.0),
        &options,
        model.candidate_filter().map(|f| f.threshold()),
    ))
}

/// A phantom's slices as the segmenter masked them, with their Hounsfield units and geometry.
#[derive(Debug, Clone)]
pub struct SegmentedVolume {
    pub rows: usize,
    pub columns: usize,
    pub geometry: Vec<SliceGeometry>,
    pub mask: Vec<u8>,
    pub hu: Vec<f32>,
    /// The phantom's own nodule mask, same layout (1: nodule).
    pub truth: Vec<u8>,
}

impl SegmentedVolume {
    pub fn volume(&self) -> MaskVolume<'_> {
        MaskVolume {
            rows: self.rows,
            columns: self.columns,
            slices: &self.geometry,
            mask: &self.mask,
            hu: &self.hu,
        }
    }
}

/// Runs the segmenter on every slice of `phantom` and masks it with the package's thresholds
/// ([`crate::package::OutputSpec::mask_thresholds`]), adding the voxel overlap with the truth
/// to `overlap`.
pub fn segment_phantom(
    model: &LoadedModel,
    phantom: &dicom_samples::ct::CtPhantom,
    overlap: &mut Overlap,
) -> Result<SegmentedVolume, EvaluateError> {
    let manifest = &model.package.manifest;
    let [target_rows, target_columns] = manifest.input.target_size;
    let (detect, outline) = manifest.output.mask_thresholds();
    let g = &phantom.geometry;
    let (rows, columns) = (g.rows as usize, g.columns as usize);
    let mut probability = Vec::with_capacity(rows * columns * g.slices);
    let mut hu = Vec::with_capacity(rows * columns * g.slices);
    let mut truth_mask = Vec::with_capacity(rows * columns * g.slices);
    let indices: Vec<usize> = (0..g.slices).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let mut data = Vec::with_capacity(chunk.len() * target_rows * target_columns);
        for &index in chunk {
            let example = synthetic::ct_slice_example(phantom, index, &manifest.input)?;
            data.extend_from_slice(&example.image);
        }
        let images = TensorData::new(data, [chunk.len(), 1, target_rows, target_columns]);
        let Prediction::Masks { values, .. } = model.predict(images)? else {
            return Err(EvaluateError::Data("the segmenter gave scores".into()));
        };
        for (i, &index) in chunk.iter().enumerate() {
            let plane =
                &values[i * target_rows * target_columns..(i + 1) * target_rows * target_columns];
            probability.extend(crate::preprocess::resize(
                plane,
                target_rows,
                target_columns,
                rows,
                columns,
            ));
            truth_mask.extend(phantom.nodule_mask(index).iter().map(|&m| u8::from(m > 0)));
            hu.extend(phantom.render_slice_hu(index));
        }
    }
    let mask =
        postprocess::two_threshold_mask(rows, columns, g.slices, &probability, detect, outline)?;
    let predicted: Vec<bool> = mask.iter().map(|&m| m > 0).collect();
    let truth: Vec<bool> = truth_mask.iter().map(|&t| t > 0).collect();
    overlap.add(&predicted, &truth);
    let geometry = (0..g.slices)
        .map(|i| SliceGeometry {
            position_mm: g.slice_position(i),
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            pixel_spacing_mm: [g.pixel_spacing_mm, g.pixel_spacing_mm],
        })
        .collect();
    Ok(SegmentedVolume {
        rows,
        columns,
        geometry,
        mask,
        hu,
        truth: truth_mask,
    })
}

/// Per component of `components` (measured from `volume`): its voxels and how many of them
/// the truth marks. Components are matched to their labels by voxel count and slice range,
/// as the server matches them.
fn component_voxels(
    volume: &SegmentedVolume,
    components: &[postprocess::NoduleMeasurement],
) -> Result<Vec<(u64, u64)>, EvaluateError> {
    let slices = volume.geometry.len();
    let plane = volume.rows * volume.columns;
    let (labels, count) =
        postprocess::label_components_3d(volume.rows, volume.columns, slices, &volume.mask)?;
    // voxels, voxels on the truth, first and last slice
    let mut stats = vec![(0u64, 0u64, usize::MAX, 0usize); count as usize + 1];
    for (voxel, &label) in labels.iter().enumerate() {
        if label == 0 {
            continue;
        }
        let s = &mut stats[label as usize];
        s.0 += 1;
        s.1 += u64::from(volume.truth[voxel] > 0);
        s.2 = s.2.min(voxel / plane);
        s.3 = s.3.max(voxel / plane);
    }
    let mut taken = vec![false; stats.len()];
    Ok(components
        .iter()
        .map(|c| {
            let found = (1..stats.len()).find(|&l| {
                !taken[l]
                    && stats[l].0 == c.voxel_count as u64
                    && [stats[l].2, stats[l].3] == c.slice_range
            });
            match found {
                Some(l) => {
                    taken[l] = true;
                    (stats[l].0, stats[l].1)
                }
                None => (c.voxel_count as u64, 0),
            }
        })
        .collect())
}

/// The segmenter's components and the truth of `scans` phantoms from `seed`, and the voxel
/// overlap of its masks with the truth.
pub fn segment_scans(
    model: &LoadedModel,
    seed: u64,
    scans: usize,
) -> Result<(Vec<SegmentedScan>, Overlap), EvaluateError> {
    let options = ComponentOptions {
        min_volume_mm3: model
            .package
            .manifest
            .output
            .component_options()
            .min_volume_mm3,
        ..ComponentOptions::default()
    };
    let mut overlap = Overlap::default();
    let mut segmented = Vec::with_capacity(scans);
    let mut scan_seed = seed;
    while segmented.len() < scans {
        scan_seed += 1;
        let Some(phantom) = synthetic::ct_phantom(scan_seed, synthetic::CT_SLICES) else {
            continue;
        };
        let volume = segment_phantom(model, &phantom, &mut overlap)?;
        let components = postprocess::measure_nodules(&volume.volume(), &options)?;
        let review_scores = match model.candidate_filter() {
            Some(filter) => {
                let centres: Vec<[f64; 3]> = components.iter().map(|c| c.center_mm).collect();
                let input = &filter.model.package.manifest.input;
                let patches = candidate_patches(volume.volume(), &centres, filter.patch, input)
                    .map_err(|e| EvaluateError::Data(e.to_string()))?;
                filter.score(&patches, centres.len())?
            }
            None => Vec::new(),
        };
        segmented.push(SegmentedScan {
            component_voxels: component_voxels(&volume, &components)?,
            components,
            review_scores,
            truth: phantom.nodule_truth(),
            truth_voxels: volume.truth.iter().map(|&t| u64::from(t)).sum(),
        });
    }
    Ok((segmented, overlap))
}

/// A component hits a nodule when its centre lies within the nodule's radius + 2 mm.
pub fn hits_nodule(centre: [f64; 3], nodule: &dicom_samples::ground_truth::NoduleTruth) -> bool {
    let d: f64 = (0..3)
        .map(|k| (centre[k] - nodule.center_mm[k]).powi(2))
        .sum::<f64>()
        .sqrt();
    d <= nodule.diameter_mm / 2.0 + 2.0
}

/// Detection sensitivity (nodules ≥ [`DETECTION_MIN_DIAMETER_MM`]), false positives per
/// scan and the Dice of the kept mask, keeping the components that `rules` keep and, with
/// `review_threshold`, that the candidate reviewer scores at or above it.
/// `dice_all_voxels` is passed through (it does not depend on the rules).
pub fn score_detection(
    segmented: &[SegmentedScan],
    dice_all_voxels: f64,
    rules: &ComponentOptions,
    review_threshold: Option<f64>,
) -> SegmentationMetrics {
    let min_diameter_mm = DETECTION_MIN_DIAMETER_MM;
    let (mut nodules, mut hits, mut false_positives) = (0usize, 0usize, 0usize);
    let mut kept_overlap = Overlap::default();
    for scan in segmented {
        kept_overlap.truth += scan.truth_voxels;
        let found: Vec<_> = scan
            .components
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                let reviewed = match (review_threshold, scan.review_scores.get(*i)) {
                    (Some(threshold), Some(&score)) => f64::from(score) >= threshold,
                    _ => true,
                };
                reviewed && rules.keeps(c.volume_mm3, c.lung_border_fraction, c.through_plane_ratio)
            })
            .map(|(i, c)| {
                let (voxels, on_truth) = scan.component_voxels.get(i).copied().unwrap_or((0, 0));
                kept_overlap.predicted += voxels;
                kept_overlap.both += on_truth;
                c
            })
            .collect();
        for n in scan
            .truth
            .iter()
            .filter(|n| n.diameter_mm >= min_diameter_mm)
        {
            nodules += 1;
            hits += usize::from(found.iter().any(|c| hits_nodule(c.center_mm, n)));
        }
        false_positives += found
            .iter()
            .filter(|c| !scan.truth.iter().any(|n| hits_nodule(c.center_mm, n)))
            .count();
    }
    SegmentationMetrics {
        scans: segmented.len(),
        nodules,
        dice: kept_overlap.dice().unwrap_or(0.0),
        dice_all_voxels,
        sensitivity: if nodules == 0 {
            1.0
        } else {
            hits as f64 / nodules as f64
        },
        false_positives_per_scan: false_positives as f64 / segmented.len().max(1) as f64,
        min_diameter_mm,
    }
}
