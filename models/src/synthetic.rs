//! Training and evaluation data for the demo models, drawn from `dicom-samples`' phantoms.
//!
//! The images go through [`crate::preprocess::prepare`] exactly as served images do, so a
//! model sees at training time what it will see from a PACS. Seeds decide everything: the
//! training and the held-out sets differ only by seed.

use dicom_samples::ct::{CtPhantom, CtSpec};
use dicom_samples::ground_truth::{NoduleTruth, XrayLabel};
use dicom_samples::radiograph::{RadiographSpec, render_radiograph};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::package::InputSpec;
use crate::preprocess::{self, PreprocessError, SourceImage};

/// The chest radiograph labels, in the classifier's output order.
pub const XRAY_LABELS: [XrayLabel; 4] = XrayLabel::ALL;

/// Edge of the rendered radiographs (pixels; the generator's default field below).
pub const XRAY_RENDER_EDGE: u32 = 512;
/// Their field of view (mm), square.
pub const XRAY_FIELD_MM: f64 = 358.4;
/// Their pixel spacing (mm).
const XRAY_PIXEL_MM: f64 = XRAY_FIELD_MM / XRAY_RENDER_EDGE as f64;

/// One preprocessed radiograph and its labels (1.0 present, 0.0 absent).
#[derive(Debug, Clone)]
pub struct XrayExample {
    pub image: Vec<f32>,
    pub labels: [f32; 4],
    /// The nodule's bounding box as fractions of the image: first column, first row, last
    /// column, last row (0..1). The trainer uses it to tell the class map where to look.
    pub nodule_box: Option<[f32; 4]>,
}

/// `count` radiographs from `seed`: each label present with probability 0.4, MONOCHROME1 in
/// a quarter of them.
pub fn xray_examples(
    seed: u64,
    count: usize,
    spec: &InputSpec,
) -> Result<Vec<XrayExample>, PreprocessError> {
    xray_examples_with_nodules_from(seed, count, spec, 0.0)
}

/// As [`xray_examples`], leaving out the radiographs whose nodule is smaller than
/// `min_nodule_mm` (a different set of studies for any minimum above the generator's 8 mm).
/// The trainer uses it to ask whether conspicuous nodules alone can be learned.
pub fn xray_examples_with_nodules_from(
    seed: u64,
    count: usize,
    spec: &InputSpec,
    min_nodule_mm: f64,
) -> Result<Vec<XrayExample>, PreprocessError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut examples = Vec::with_capacity(count);
    while examples.len() < count {
        let findings: Vec<XrayLabel> = XRAY_LABELS
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.4))
            .collect();
        let render_spec = RadiographSpec {
            rows: XRAY_RENDER_EDGE,
            columns: XRAY_RENDER_EDGE,
            pixel_spacing_mm: XRAY_PIXEL_MM,
            monochrome1: rng.random_bool(0.25),
            findings: findings.clone(),
        };
        let image_seed = rng.random::<u64>();
        // A finding that finds no room is a different study, not an error: draw again.
        let Ok(rendered) =
            render_radiograph(&render_spec, &mut ChaCha8Rng::seed_from_u64(image_seed))
        else {
            continue;
        };
        if rendered
            .findings
            .iter()
            .any(|f| f.label == XrayLabel::Nodule && f.size_mm < min_nodule_mm)
        {
            continue;
        }
        let values: Vec<f32> = rendered.pixels.iter().map(|&v| f32::from(v)).collect();
        let source = SourceImage {
            rows: XRAY_RENDER_EDGE as usize,
            columns: XRAY_RENDER_EDGE as usize,
            values: &values,
            monochrome1: render_spec.monochrome1,
            voi_window: Some((rendered.window_center, rendered.window_width)),
        };
        let mut image = Vec::new();
        preprocess::prepare(&source, spec, &mut image)?;
        let labels = XRAY_LABELS.map(|label| if findings.contains(&label) { 1.0 } else { 0.0 });
        let edge = XRAY_RENDER_EDGE as f32;
        let nodule_box = rendered
            .findings
            .iter()
            .find(|f| f.label == XrayLabel::Nodule)
            .map(|f| f.bbox_px.map(|v| v as f32 / edge));
        examples.push(XrayExample {
            image,
            labels,
            nodule_box,
        });
    }
    Ok(examples)
}

/// Square crops of preprocessed radiographs for teaching the classifier what a nodule looks
/// like before it sees whole images: in a whole radiograph a nodule is under 1 % of the
/// pixels and the label alone does not say where, while in a crop it fills much of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct NodulePatches {
    /// `count × edge × edge` pixels, crop after crop.
    pub pixels: Vec<f32>,
    /// 1.0 where the crop holds the whole nodule, 0.0 where the image has none.
    pub labels: Vec<f32>,
    pub edge: usize,
}

/// `per_image` crops of `edge` pixels from every example with a nodule, each placed at random
/// so that it holds the whole nodule box, and as many from examples without one. A negative
/// crop takes the window of a random positive crop, so that where a crop lies in the image says
/// nothing about its label; the crops alternate positive, negative.
pub fn nodule_patches(
    examples: &[XrayExample],
    [rows, columns]: [usize; 2],
    edge: usize,
    per_image: usize,
    rng: &mut impl Rng,
) -> NodulePatches {
    let edge = edge.min(rows).min(columns);
    let negatives: Vec<&XrayExample> = examples.iter().filter(|e| e.nodule_box.is_none()).collect();
    let mut patches = NodulePatches {
        pixels: Vec::new(),
        labels: Vec::new(),
        edge,
    };
    let mut crop = |image: &[f32], [top, left]: [usize; 2], label: f32| {
        for row in top..top + edge {
            patches
                .pixels
                .extend_from_slice(&image[row * columns + left..row * columns + left + edge]);
        }
        patches.labels.push(label);
    };
    for example in examples {
        let Some([left, top, right, bottom]) = example.nodule_box else {
            continue;
        };
        for _ in 0..per_image {
            let origin = [
                window_start(top, bottom, rows, edge, rng),
                window_start(left, right, columns, edge, rng),
            ];
            crop(&example.image, origin, 1.0);
            if !negatives.is_empty() {
                let other = negatives[rng.random_range(0..negatives.len())];
                crop(&other.image, origin, 0.0);
            }
        }
    }
    patches
}

/// A random start along one axis of `size` pixels for an `edge`-wide window that holds the
/// span from fraction `first` to fraction `last` (centred on it when it cannot).
fn window_start(first: f32, last: f32, size: usize, edge: usize, rng: &mut impl Rng) -> usize {
    let first = ((first * size as f32).floor().max(0.0) as usize).min(size - 1);
    let last = ((last * size as f32).floor().max(0.0) as usize).clamp(first, size - 1);
    let lowest = (last + 1).saturating_sub(edge);
    let highest = first.min(size - edge);
    if lowest <= highest {
        rng.random_range(lowest..=highest)
    } else {
        (first + last)
            .div_ceil(2)
            .saturating_sub(edge / 2)
            .min(size - edge)
    }
}

/// Slices of each training and held-out CT scan.
pub const CT_SLICES: usize = 80;

/// A chest CT phantom with at least one nodule, as the generator's CLI would scan it.
pub fn ct_phantom(seed: u64, slices: usize) -> Option<CtPhantom> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut spec = CtSpec::random_chest(&mut rng, slices, (4.0, 30.0));
    spec.nodule_count = rng.random_range(1..=4);
    CtPhantom::new(&spec, &mut rng).ok()
}

/// One preprocessed CT slice and its nodule mask at the network's size (area fractions 0..1).
#[derive(Debug, Clone)]
pub struct CtSliceExample {
    pub image: Vec<f32>,
    pub mask: Vec<f32>,
}

/// Preprocesses slice `index` of `phantom`, with its mask resized the same way.
pub fn ct_slice_example(
    phantom: &CtPhantom,
    index: usize,
    spec: &InputSpec,
) -> Result<CtSliceExample, PreprocessError> {
    let g = &phantom.geometry;
    let (rows, columns) = (g.rows as usize, g.columns as usize);
    let hu = phantom.render_slice_hu(index);
    let source = SourceImage {
        rows,
        columns,
        values: &hu,
        monochrome1: false,
        voi_window: None,
    };
    let mut image = Vec::new();
    preprocess::prepare(&source, spec, &mut image)?;
    let mask: Vec<f32> = phantom
        .nodule_mask(index)
        .iter()
        .map(|&m| if m > 0 { 1.0 } else { 0.0 })
        .collect();
    let [target_rows, target_columns] = spec.target_size;
    let mask = preprocess::resize(&mask, rows, columns, target_rows, target_columns);
    Ok(CtSliceExample { image, mask })
}

/// Slices of `phantom` worth training on: every slice a nodule touches, and
/// `others_per_nodule_slice` times as many drawn at random (rounded up; duplicates dropped).
pub fn ct_training_slices(
    phantom: &CtPhantom,
    others_per_nodule_slice: f64,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let truth: Vec<NoduleTruth> = phantom.nodule_truth();
    let mut slices: Vec<usize> = truth
        .iter()
        .flat_map(|n| n.slice_range[0]..=n.slice_range[1])
        .collect();
    let positives = slices.len().max(1);
    let others = (positives as f64 * others_per_nodule_slice.max(0.0)).ceil() as usize;
    for _ in 0..others {
        slices.push(rng.random_range(0..phantom.geometry.slices));
    }
    slices.sort_unstable();
    slices.dedup();
    slices
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::{Intensity, Normalisation, Photometric};

    fn small_input() -> InputSpec {
        InputSpec {
            modalities: vec!["DX".into()],
            body_part: "CHEST".into(),
            photometric: Photometric::Monochrome2,
            target_size: [32, 32],
            intensity: Intensity::VoiWindow,
            normalisation: Normalisation {
                mean: 0.5,
                std: 0.25,
            },
            slice_by_slice: false,
        }
    }

    /// The nodule's diameter from its tight pixel box (the box holds the pixel centres inside
    /// the nodule, so it is up to two pixels narrower than the diameter).
    fn box_width_mm(nodule_box: [f32; 4]) -> f64 {
        f64::from(nodule_box[2] - nodule_box[0]) * f64::from(XRAY_RENDER_EDGE) * XRAY_PIXEL_MM
    }

    #[test]
    fn nodule_patches_hold_the_whole_nodule_and_negatives_share_the_window() {
        let edge = 32;
        // Each pixel says which image it is from and where: id·10⁴ + row·100 + column.
        let example = |id: usize, nodule_box: Option<[f32; 4]>| XrayExample {
            image: (0..edge * edge)
                .map(|i| (id * 10_000 + (i / edge) * 100 + i % edge) as f32)
                .collect(),
            labels: [0.0; 4],
            nodule_box,
        };
        let examples = vec![
            example(0, Some([0.0, 0.0, 0.1, 0.1])),
            example(1, None),
            example(2, Some([0.7, 0.5, 0.95, 0.8])),
            example(3, None),
            // Wider than the crop: centred on it instead.
            example(4, Some([0.1, 0.1, 0.9, 0.9])),
        ];
        let patch = 12;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let patches = nodule_patches(&examples, [edge, edge], patch, 5, &mut rng);
        assert_eq!(patches.labels.len(), 3 * 5 * 2);
        assert_eq!(patches.pixels.len(), patches.labels.len() * patch * patch);
        let origin = |index: usize| {
            let first = patches.pixels[index * patch * patch] as usize;
            (first / 10_000, (first % 10_000) / 100, first % 100)
        };
        for pair in 0..15 {
            let (id, top, left) = origin(2 * pair);
            let (negative_id, negative_top, negative_left) = origin(2 * pair + 1);
            assert_eq!(patches.labels[2 * pair..2 * pair + 2], [1.0, 0.0]);
            assert!(
                negative_id == 1 || negative_id == 3,
                "negative from image {negative_id}"
            );
            assert_eq!((negative_top, negative_left), (top, left));
            assert!(top + patch <= edge && left + patch <= edge);
            // The box in pixels: fraction × 32, floored.
            let [box_left, box_top, box_right, box_bottom] = match id {
                0 => [0, 0, 3, 3],
                2 => [22, 16, 30, 25],
                4 => {
                    assert_eq!((top, left), (10, 10));
                    continue;
                }
                other => panic!("positive crop from image {other}"),
            };
            assert!(
                top <= box_top && box_bottom < top + patch,
                "rows {top}.. for {id}"
            );
            assert!(
                left <= box_left && box_right < left + patch,
                "columns {left}.. for {id}"
            );
        }
        // The windows vary: the crops are not all the same view of the nodule.
        let tops: std::collections::HashSet<_> = (0..15).map(|p| origin(2 * p).1).collect();
        assert!(tops.len() > 3);
    }

    #[test]
    fn a_minimum_nodule_size_leaves_out_the_smaller_nodules_only() {
        let spec = small_input();
        let widths = |min_mm: f64| -> Vec<f64> {
            let examples = xray_examples_with_nodules_from(5, 24, &spec, min_mm).unwrap();
            assert_eq!(examples.len(), 24);
            examples
                .iter()
                .filter_map(|e| e.nodule_box)
                .map(box_width_mm)
                .collect()
        };
        let all = widths(0.0);
        assert!(
            all.iter().any(|&w| w < 18.0),
            "no small nodule drawn: {all:?}"
        );
        let large = widths(20.0);
        assert!(!large.is_empty(), "no nodule at all with the minimum");
        for w in large {
            assert!(
                w >= 20.0 - 2.0 * XRAY_PIXEL_MM - 1e-3,
                "a {w:.1} mm nodule box kept"
            );
        }
    }
}
