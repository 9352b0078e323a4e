//! Where the chest radiograph classifier misses nodules: runs a package on `COUNT` synthetic
//! radiographs drawn from `SEED` and prints the nodule AUC of each nodule size band against
//! all radiographs without a nodule, so that one can tell whether small nodules (a few
//! pixels at the model's input size) or faint large ones hold the AUC down.
//!
//! `cargo run -p radserve-models --example classifier_nodule_sizes -- SEED COUNT [PACKAGE_DIR]`

use burn::tensor::{Device, TensorData};
use radserve_models::metrics::roc_auc;
use radserve_models::model::{LoadedModel, Prediction};
use radserve_models::package::ModelPackage;
use radserve_models::synthetic::{self, XRAY_FIELD_MM};

/// Upper edges (mm) of the size bands; the generator draws 8–30 mm.
const BANDS_MM: [f64; 5] = [12.0, 16.0, 20.0, 25.0, f64::INFINITY];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: classifier_nodule_sizes SEED COUNT [PACKAGE_DIR]";
    let seed: u64 = args.next().ok_or(usage)?.parse()?;
    let count: usize = args.next().ok_or(usage)?.parse()?;
    let dir = args
        .next()
        .unwrap_or_else(|| "models/zoo/chest-xray-findings".to_owned());
    let model = LoadedModel::load(ModelPackage::open(&dir)?, &Device::flex(), &[8])?;
    let manifest = &model.package.manifest;
    let nodule = manifest
        .output
        .labels
        .iter()
        .position(|l| l.name == "nodule")
        .ok_or("the package has no nodule label")?;
    let labels = manifest.output.labels.len();
    let [rows, columns] = manifest.input.target_size;
    let examples = synthetic::xray_examples(seed, count, &manifest.input)?;
    // (score, nodule diameter in mm when there is one)
    let mut scored: Vec<(f32, Option<f64>)> = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(8) {
        let data: Vec<f32> = chunk.iter().flat_map(|e| e.image.iter().copied()).collect();
        let Prediction::Probabilities { values, .. } =
            model.predict(TensorData::new(data, [chunk.len(), 1, rows, columns]))?
        else {
            return Err("the package is not a classifier".into());
        };
        for (i, example) in chunk.iter().enumerate() {
            let diameter = example.nodule_box.map(|[left, top, right, bottom]| {
                f64::from((right - left).max(bottom - top)) * XRAY_FIELD_MM
            });
            scored.push((values[i * labels + nodule], diameter));
        }
    }
    let negatives: Vec<f32> = scored
        .iter()
        .filter(|(_, d)| d.is_none())
        .map(|(s, _)| *s)
        .collect();
    println!(
        "| nodule box (mm) | nodules | AUC against {} without |",
        negatives.len()
    );
    println!("|---|---:|---:|");
    let mut lower = 0.0;
    for upper in BANDS_MM.into_iter().chain([f64::NAN]) {
        // The last pass (NaN) is every nodule together.
        let all = upper.is_nan();
        let band: Vec<f32> = scored
            .iter()
            .filter_map(|&(s, d)| d.filter(|&d| all || (d >= lower && d < upper)).map(|_| s))
            .collect();
        let scores: Vec<f32> = band.iter().chain(&negatives).copied().collect();
        let truth: Vec<bool> = (0..scores.len()).map(|i| i < band.len()).collect();
        let name = if all {
            "all".to_owned()
        } else if upper.is_infinite() {
            format!("≥ {lower:.0}")
        } else {
            format!("{lower:.0}–{upper:.0}")
        };
        let auc = roc_auc(&scores, &truth).map_or("—".to_owned(), |a| format!("{a:.3}"));
        println!("| {name} | {} | {auc} |", band.len());
        lower = upper;
    }
    Ok(())
}
