//! Writes a few slices of a synthetic CT as 8-bit PGM images (lung window) to look at:
//! `cargo run -p dicom-samples --example preview_ct -- OUT_DIR SEED`.

use dicom_samples::ct::{CtPhantom, CtSpec, DEFAULT_NODULE_DIAMETER_MM};
use rand::SeedableRng;
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "preview".into()));
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    std::fs::create_dir_all(&out)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut spec = CtSpec::random_chest(&mut rng, 100, DEFAULT_NODULE_DIAMETER_MM);
    spec.nodule_count = 4;
    let phantom = CtPhantom::new(&spec, &mut rng)?;
    let mut picks: Vec<usize> = phantom
        .nodule_truth()
        .iter()
        .map(|n| n.center_voxel[2].round() as usize)
        .collect();
    picks.extend([10, 40, 70, 95]);
    for index in picks {
        let hu = phantom.render_slice_hu(index);
        let (centre, width) = (-500.0f32, 1500.0f32);
        let mut file = std::fs::File::create(out.join(format!("slice{index:03}.pgm")))?;
        writeln!(
            file,
            "P5 {} {} 255",
            phantom.geometry.columns, phantom.geometry.rows
        )?;
        let bytes: Vec<u8> = hu
            .iter()
            .map(|h| (((h - (centre - width / 2.0)) / width) * 255.0).clamp(0.0, 255.0) as u8)
            .collect();
        file.write_all(&bytes)?;
    }
    println!("{:#?}", phantom.nodule_truth());
    Ok(())
}
