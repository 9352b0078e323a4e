//! How visible is a synthetic nodule at the classifier's input? Renders each radiograph twice
//! from the same seed, with and without the nodule (the generator draws the patient, the
//! exposure and the noise before the findings, so the two differ only by the nodule), runs
//! both through the package's preprocessing, and prints per nodule its diameter, the peak
//! difference at the network's input, and the spread of the image around it without the
//! nodule (the anatomy and noise the network must see the nodule against).
//!
//! `cargo run -p radserve-models --example xray_nodule_contrast -- SEED COUNT [PACKAGE_DIR]`

use dicom_samples::ground_truth::XrayLabel;
use dicom_samples::radiograph::{RadiographSpec, render_radiograph};
use radserve_models::package::ModelPackage;
use radserve_models::preprocess::{self, SourceImage};
use radserve_models::synthetic::{XRAY_PIXEL_MM, XRAY_RENDER_EDGE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: xray_nodule_contrast SEED COUNT [PACKAGE_DIR]";
    let seed: u64 = args.next().ok_or(usage)?.parse()?;
    let count: usize = args.next().ok_or(usage)?.parse()?;
    let dir = args
        .next()
        .unwrap_or_else(|| "models/zoo/chest-xray-findings".to_owned());
    let package = ModelPackage::open(&dir)?;
    let spec = &package.manifest.input;
    let [rows, columns] = spec.target_size;
    let scale = rows as f64 / f64::from(XRAY_RENDER_EDGE);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    println!("diameter_mm peak_delta background_std ratio");
    let mut shown = 0;
    while shown < count {
        let image_seed = rng.random::<u64>();
        let render = |findings: Vec<XrayLabel>| {
            let spec = RadiographSpec {
                rows: XRAY_RENDER_EDGE,
                columns: XRAY_RENDER_EDGE,
                pixel_spacing_mm: XRAY_PIXEL_MM,
                monochrome1: false,
                findings,
            };
            render_radiograph(&spec, &mut ChaCha8Rng::seed_from_u64(image_seed))
        };
        let (Ok(with), Ok(without)) = (render(vec![XrayLabel::Nodule]), render(Vec::new())) else {
            continue;
        };
        let Some(nodule) = with.findings.first() else {
            continue;
        };
        let mut inputs = Vec::new();
        for rendered in [&with, &without] {
            let values: Vec<f32> = rendered.pixels.iter().map(|&v| f32::from(v)).collect();
            let source = SourceImage {
                rows: XRAY_RENDER_EDGE as usize,
                columns: XRAY_RENDER_EDGE as usize,
                values: &values,
                monochrome1: false,
                voi_window: Some((rendered.window_center, rendered.window_width)),
            };
            let mut image = Vec::new();
            preprocess::prepare(&source, spec, &mut image)?;
            inputs.push(image);
        }
        let [cx, cy] = nodule.center_px.map(|v| v * scale);
        let r = nodule.size_mm / 2.0 / XRAY_PIXEL_MM * scale;
        let mut peak = 0.0f32;
        let (mut sum, mut sum2, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for y in 0..rows {
            for x in 0..columns {
                let d = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
                let i = y * columns + x;
                if d <= r {
                    peak = peak.max((inputs[0][i] - inputs[1][i]).abs());
                } else if d <= 3.0 * r {
                    let v = f64::from(inputs[1][i]);
                    sum += v;
                    sum2 += v * v;
                    n += 1.0;
                }
            }
        }
        let std = (sum2 / n - (sum / n).powi(2)).max(0.0).sqrt();
        println!(
            "{:.1} {:.3} {:.3} {:.2}",
            nodule.size_mm,
            peak,
            std,
            f64::from(peak) / std
        );
        shown += 1;
    }
    Ok(())
}
