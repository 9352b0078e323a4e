//! Calibrates the nodule segmenter's component rule on a validation set: runs the demo
//! segmenter once on `SCANS` synthetic CTs drawn from `SEED` (pick a seed apart from the
//! training seed and the card's held-out seed), lists every component with its lung border
//! fraction and whether it hits a nodule, then the sensitivity (nodules ≥ 6 mm) and false
//! positives per scan for each minimum lung border fraction from 0 to 0.9.
//!
//! `cargo run -p radserve-models --example segmenter_components -- SEED SCANS [PACKAGE_DIR]`

use burn::tensor::Device;
use radserve_models::evaluate::{hits_nodule, score_detection, segment_scans};
use radserve_models::model::LoadedModel;
use radserve_models::package::ModelPackage;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: segmenter_components SEED SCANS [PACKAGE_DIR]";
    let seed: u64 = args.next().ok_or(usage)?.parse()?;
    let scans: usize = args.next().ok_or(usage)?.parse()?;
    let dir = args
        .next()
        .unwrap_or_else(|| "models/zoo/ct-lung-nodule".to_owned());
    let model = LoadedModel::load(ModelPackage::open(&dir)?, &Device::flex(), &[1, 8])?;
    let (segmented, overlap) = segment_scans(&model, seed, scans)?;
    println!("| scan | volume mm³ | slices | lung border | hits a nodule (diameter mm) |");
    println!("|---:|---:|---:|---:|---|");
    for (i, scan) in segmented.iter().enumerate() {
        for c in &scan.components {
            let hit = scan.truth.iter().find(|n| hits_nodule(c.center_mm, n));
            println!(
                "| {i} | {:.0} | {} | {:.2} | {} |",
                c.volume_mm3,
                c.slice_range[1] - c.slice_range[0] + 1,
                c.lung_border_fraction,
                hit.map_or("no".to_owned(), |n| format!("{:.1}", n.diameter_mm))
            );
        }
    }
    println!("\n| min lung border | sensitivity ≥ 6 mm | false positives / scan |");
    println!("|---:|---:|---:|");
    let dice = overlap.dice().unwrap_or(0.0);
    for step in 0..10 {
        let min = f64::from(step) / 10.0;
        let m = score_detection(&segmented, dice, min);
        println!(
            "| {min:.1} | {:.3} | {:.2} |",
            m.sensitivity, m.false_positives_per_scan
        );
    }
    Ok(())
}
