//! Calibrates the nodule segmenter's component rule on a validation set: runs the demo
//! segmenter once on `SCANS` synthetic CTs drawn from `SEED` (pick a seed apart from the
//! training seed and the card's held-out seed), lists every component with its lung border
//! fraction and whether it hits a nodule, then the sensitivity (nodules ≥ 6 mm) and false
//! positives per scan for each pair of minimum lung border fraction and minimum
//! through-plane ratio in a grid.
//!
//! `cargo run -p radserve-models --example segmenter_components -- SEED SCANS [PACKAGE_DIR]`

use burn::tensor::Device;
use radserve_models::evaluate::{
    DETECTION_MIN_DIAMETER_MM, hits_nodule, score_detection, segment_scans,
};
use radserve_models::model::LoadedModel;
use radserve_models::package::ModelPackage;
use radserve_models::postprocess::ComponentOptions;

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
    println!(
        "| scan | volume mm³ | slices | lung border | through-plane ratio | hits a nodule (diameter mm) |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    for (i, scan) in segmented.iter().enumerate() {
        for c in &scan.components {
            let hit = scan.truth.iter().find(|n| hits_nodule(c.center_mm, n));
            println!(
                "| {i} | {:.0} | {} | {:.2} | {} | {} |",
                c.volume_mm3,
                c.slice_range[1] - c.slice_range[0] + 1,
                c.lung_border_fraction,
                c.through_plane_ratio
                    .map_or("cut by the scan".to_owned(), |r| format!("{r:.2}")),
                hit.map_or("no".to_owned(), |n| format!("{:.1}", n.diameter_mm))
            );
        }
        for n in scan.truth.iter().filter(|n| {
            n.diameter_mm >= DETECTION_MIN_DIAMETER_MM
                && !scan.components.iter().any(|c| hits_nodule(c.center_mm, n))
        }) {
            println!("| {i} | missed: a {:.1} mm nodule | | | | |", n.diameter_mm);
        }
    }
    println!(
        "\nsensitivity ≥ 6 mm / false positives per scan, by minimum lung border (rows) and minimum through-plane ratio (columns)\n"
    );
    let ratios = [0.0, 0.2, 0.25, 0.3, 0.35, 0.4];
    println!(
        "| lung border | {} |",
        ratios.map(|r| format!("ratio ≥ {r}")).join(" | ")
    );
    println!("|---:|{}", "---|".repeat(ratios.len()));
    let dice = overlap.dice().unwrap_or(0.0);
    for step in 0..6 {
        let min_lung_border_fraction = f64::from(step) / 10.0;
        let cells = ratios.map(|min_through_plane_ratio| {
            let rules = ComponentOptions {
                min_lung_border_fraction,
                min_through_plane_ratio,
                ..ComponentOptions::default()
            };
            let m = score_detection(&segmented, dice, &rules);
            format!("{:.3} / {:.2}", m.sensitivity, m.false_positives_per_scan)
        });
        println!("| {min_lung_border_fraction:.1} | {} |", cells.join(" | "));
    }
    Ok(())
}
