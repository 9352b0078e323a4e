//! Calibrates the nodule segmenter's component rule on a validation set: runs the demo
//! segmenter once on `SCANS` synthetic CTs drawn from `SEED` (pick a seed apart from the
//! training seed and the card's held-out seed), lists every component with its lung border
//! fraction and whether it hits a nodule, then the sensitivity (nodules ≥ 6 mm) and false
//! positives per scan for each pair of minimum lung border fraction and minimum
//! through-plane ratio in a grid, and for each pair of minimum volume and minimum
//! through-plane ratio in another.
//!
//! `cargo run -p radserve-models --example segmenter_components -- SEED SCANS [PACKAGE_DIR [THRESHOLD]]`
//!
//! THRESHOLD replaces the package's probability threshold for the mask. With a candidate
//! reviewer in the package, each component's review score is listed too, and a table gives
//! the detection figures and the kept mask's Dice by review threshold; the component rule
//! tables apply the package's review threshold.

use burn::tensor::Device;
use radserve_models::evaluate::{
    DETECTION_MIN_DIAMETER_MM, hits_nodule, score_detection, segment_scans,
};
use radserve_models::model::LoadedModel;
use radserve_models::package::ModelPackage;
use radserve_models::postprocess::ComponentOptions;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: segmenter_components SEED SCANS [PACKAGE_DIR [THRESHOLD]]";
    let seed: u64 = args.next().ok_or(usage)?.parse()?;
    let scans: usize = args.next().ok_or(usage)?.parse()?;
    let dir = args
        .next()
        .unwrap_or_else(|| "models/zoo/ct-lung-nodule".to_owned());
    let mut package = ModelPackage::open(&dir)?;
    if let Some(threshold) = args.next() {
        let threshold: f64 = threshold.parse()?;
        for label in &mut package.manifest.output.labels {
            label.threshold = threshold;
        }
    }
    let model = LoadedModel::load(package, &Device::flex(), &[1, 8])?;
    let (segmented, overlap) = segment_scans(&model, seed, scans)?;
    println!(
        "| scan | volume mm³ | slices | lung border | through-plane ratio | review score | hits a nodule (diameter mm) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for (i, scan) in segmented.iter().enumerate() {
        for (k, c) in scan.components.iter().enumerate() {
            let hit = scan.truth.iter().find(|n| hits_nodule(c.center_mm, n));
            println!(
                "| {i} | {:.0} | {} | {:.2} | {} | {} | {} |",
                c.volume_mm3,
                c.slice_range[1] - c.slice_range[0] + 1,
                c.lung_border_fraction,
                c.through_plane_ratio
                    .map_or("cut by the scan".to_owned(), |r| format!("{r:.2}")),
                scan.review_scores
                    .get(k)
                    .map_or("—".to_owned(), |s| format!("{s:.3}")),
                hit.map_or("no".to_owned(), |n| format!("{:.1}", n.diameter_mm))
            );
        }
        for n in scan.truth.iter().filter(|n| {
            n.diameter_mm >= DETECTION_MIN_DIAMETER_MM
                && !scan.components.iter().any(|c| hits_nodule(c.center_mm, n))
        }) {
            println!(
                "| {i} | missed: a {:.1} mm {:?} nodule, solid part {:.0} HU, slices {}–{} | | | | |",
                n.diameter_mm, n.kind, n.solid_hu, n.slice_range[0], n.slice_range[1]
            );
        }
    }
    let dice = overlap.dice().unwrap_or(0.0);
    if model.candidate_filter().is_some() {
        let rules = model.package.manifest.output.component_options();
        println!(
            "\nsensitivity ≥ 6 mm / false positives per scan / Dice of the kept mask, by the reviewer's threshold (the package's component rules; Dice of every voxel above the mask threshold {dice:.3})\n"
        );
        println!("| review threshold | sensitivity | false positives per scan | Dice |");
        println!("|---:|---:|---:|---:|");
        let thresholds = [None, Some(0.05), Some(0.1), Some(0.2), Some(0.3), Some(0.5)];
        let more = [Some(0.7), Some(0.8), Some(0.9), Some(0.95), Some(0.99)];
        for threshold in thresholds.into_iter().chain(more) {
            let m = score_detection(&segmented, dice, &rules, threshold);
            println!(
                "| {} | {:.3} | {:.2} | {:.3} |",
                threshold.map_or("no review".to_owned(), |t| t.to_string()),
                m.sensitivity,
                m.false_positives_per_scan,
                m.dice
            );
        }
    }
    // The component rule tables apply the package's reviewer, as the server does.
    let review_threshold = model.candidate_filter().map(|f| f.threshold());
    let cell = |rules: ComponentOptions| {
        let m = score_detection(&segmented, dice, &rules, review_threshold);
        format!("{:.3} / {:.2}", m.sensitivity, m.false_positives_per_scan)
    };
    let ratios = [0.0, 0.2, 0.25, 0.3, 0.35, 0.4];
    // One table: a row per base rule, a column per minimum through-plane ratio.
    let grid = |title: &str, rows_name: &str, rows: Vec<(String, ComponentOptions)>| {
        println!("\n{title}\n");
        println!(
            "| {rows_name} | {} |",
            ratios.map(|r| format!("ratio ≥ {r}")).join(" | ")
        );
        println!("|---:|{}", "---|".repeat(ratios.len()));
        for (label, base) in rows {
            let cells = ratios.map(|min_through_plane_ratio| {
                cell(ComponentOptions {
                    min_through_plane_ratio,
                    ..base
                })
            });
            println!("| {label} | {} |", cells.join(" | "));
        }
    };
    grid(
        "sensitivity ≥ 6 mm / false positives per scan, by minimum lung border (rows) and minimum through-plane ratio (columns)",
        "lung border",
        (0..6)
            .map(|step| {
                let min_lung_border_fraction = f64::from(step) / 10.0;
                let rules = ComponentOptions {
                    min_lung_border_fraction,
                    ..ComponentOptions::default()
                };
                (format!("{min_lung_border_fraction:.1}"), rules)
            })
            .collect(),
    );
    // A 6 mm sphere is 113 mm³: the smallest nodule the detection target counts.
    grid(
        "the same by minimum component volume in mm³ (rows) and minimum through-plane ratio (columns), lung border rule off",
        "volume",
        [0.0, 10.0, 30.0, 50.0, 65.0, 80.0, 100.0]
            .map(|min_volume_mm3| {
                let rules = ComponentOptions {
                    min_volume_mm3,
                    ..ComponentOptions::default()
                };
                (format!("{min_volume_mm3:.0}"), rules)
            })
            .into(),
    );
    Ok(())
}
