//! Where the chest radiograph classifier misses nodules: runs a package on `COUNT` synthetic
//! radiographs drawn from `SEED` and prints the nodule AUC of each nodule size band against
//! all radiographs without a nodule, so that one can tell whether small nodules (a few
//! pixels at the model's input size) or faint large ones hold the AUC down. A second column
//! runs the network on 64-pixel crops instead (one holding each nodule, one from a radiograph
//! without a nodule in the same window): where a band's crop AUC is low too, the network does
//! not see those nodules even when told roughly where to look; where only the whole
//! radiograph's is low, they are lost among the rest of the image.
//!
//! `cargo run -p radserve-models --example classifier_nodule_sizes -- SEED COUNT [PACKAGE_DIR]`

use burn::tensor::{Device, Tensor, TensorData};
use radserve_models::architecture::NetworkOutput;
use radserve_models::evaluate::classify;
use radserve_models::metrics::roc_auc;
use radserve_models::model::LoadedModel;
use radserve_models::package::{ModelPackage, load_network};
use radserve_models::synthetic::{self, XRAY_FIELD_MM, XrayExample};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Upper edges (mm) of the size bands; the generator draws 8–30 mm.
const BANDS_MM: [f64; 5] = [12.0, 16.0, 20.0, 25.0, f64::INFINITY];
/// Edge of the crops (pixels of the network's input), as the trainer's crop stage.
const CROP_EDGE: usize = 64;
/// Images per forward pass, as `evaluate::classify` runs them (crops: four times as many).
const BATCH: usize = 8;

/// A nodule score and the diameter (mm) of the nodule, when there is one.
type Scored = (f32, Option<f64>);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: classifier_nodule_sizes SEED COUNT [PACKAGE_DIR]";
    let seed: u64 = args.next().ok_or(usage)?.parse()?;
    let count: usize = args.next().ok_or(usage)?.parse()?;
    let dir = args
        .next()
        .unwrap_or_else(|| "models/zoo/chest-xray-findings".to_owned());
    let model = LoadedModel::load(ModelPackage::open(&dir)?, &Device::flex(), &[BATCH])?;
    let manifest = &model.package.manifest;
    let nodule = manifest
        .output
        .labels
        .iter()
        .position(|l| l.name == "nodule")
        .ok_or("the package has no nodule label")?;
    let examples = synthetic::xray_examples(seed, count, &manifest.input)?;
    let whole: Vec<Scored> = examples
        .iter()
        .zip(classify(&model, &examples)?)
        .map(|(example, probabilities)| (probabilities[nodule], diameter_mm(example)))
        .collect();
    let crops = crop_scores(&model, &examples, nodule)?;
    println!(
        "| nodule box (mm) | nodules | AUC, whole radiographs ({} without a nodule) | AUC, crops ({} without) |",
        negatives(&whole).len(),
        negatives(&crops).len()
    );
    println!("|---|---:|---:|---:|");
    let mut lower = 0.0;
    for upper in BANDS_MM.into_iter().chain([f64::NAN]) {
        // The last pass (NaN) is every nodule together.
        let all = upper.is_nan();
        let in_band = |d: f64| all || (d >= lower && d < upper);
        let (count, whole_auc) = band_auc(&whole, in_band);
        let (_, crop_auc) = band_auc(&crops, in_band);
        let name = if all {
            "all".to_owned()
        } else if upper.is_infinite() {
            format!("≥ {lower:.0}")
        } else {
            format!("{lower:.0}–{upper:.0}")
        };
        println!("| {name} | {count} | {whole_auc} | {crop_auc} |");
        lower = upper;
    }
    Ok(())
}

/// The larger side of the example's nodule box (mm), when it has a nodule.
fn diameter_mm(example: &XrayExample) -> Option<f64> {
    example.nodule_box.map(|[left, top, right, bottom]| {
        f64::from((right - left).max(bottom - top)) * XRAY_FIELD_MM
    })
}

fn negatives(scored: &[Scored]) -> Vec<f32> {
    scored
        .iter()
        .filter(|(_, d)| d.is_none())
        .map(|(s, _)| *s)
        .collect()
}

/// How many of `scored` have a nodule that `in_band` takes, and their AUC against all of
/// `scored` without a nodule.
fn band_auc(scored: &[Scored], in_band: impl Fn(f64) -> bool) -> (usize, String) {
    let band: Vec<f32> = scored
        .iter()
        .filter_map(|&(s, d)| d.filter(|&d| in_band(d)).map(|_| s))
        .collect();
    let scores: Vec<f32> = band.iter().chain(&negatives(scored)).copied().collect();
    let truth: Vec<bool> = (0..scores.len()).map(|i| i < band.len()).collect();
    let auc = roc_auc(&scores, &truth).map_or("—".to_owned(), |a| format!("{a:.3}"));
    (band.len(), auc)
}

/// The network's nodule logit on one crop holding each nodule of `examples` and one from a
/// radiograph without a nodule in the same window.
fn crop_scores(
    model: &LoadedModel,
    examples: &[XrayExample],
    nodule: usize,
) -> Result<Vec<Scored>, Box<dyn std::error::Error>> {
    let size = model.package.manifest.input.target_size;
    // A fixed seed: the same crops for every package compared.
    let patches = synthetic::nodule_patches(
        examples,
        size,
        CROP_EDGE,
        1,
        &mut ChaCha8Rng::seed_from_u64(7),
    );
    // The positives follow the radiographs with a nodule in order, each followed by a negative.
    let mut diameters = examples.iter().filter_map(diameter_mm);
    let device = Device::flex();
    let network = load_network(&model.package, &device)?;
    let edge = patches.edge;
    let mut scored = Vec::with_capacity(patches.labels.len());
    for (pixels, labels) in patches
        .pixels
        .chunks(4 * BATCH * edge * edge)
        .zip(patches.labels.chunks(4 * BATCH))
    {
        let batch = labels.len();
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels.to_vec(), [batch, 1, edge, edge]),
            &device,
        );
        let NetworkOutput::Scores(scores) = network.forward(images) else {
            return Err("the package is not a classifier".into());
        };
        let values = scores.into_data().try_to_vec::<f32>()?;
        let outputs = values.len() / batch;
        for (i, &label) in labels.iter().enumerate() {
            let diameter = if label > 0.5 {
                Some(diameters.next().ok_or("more positive crops than nodules")?)
            } else {
                None
            };
            scored.push((values[i * outputs + nodule], diameter));
        }
    }
    Ok(scored)
}
