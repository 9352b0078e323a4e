//! `dicom-samples`: writes synthetic DICOM studies with ground truth and a matching EMR export.
//!
//! ```text
//! dicom-samples generate --out DIR [--seed N] [--ct K] [--xray M] [--slices S] [--xray-size PX]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use dicom_samples::ct::DEFAULT_NODULE_DIAMETER_MM;
use dicom_samples::generate::{GenerateOptions, generate};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "dicom-samples", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic set: CT chest series, chest radiographs, ground truth, EMR export.
    Generate {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed: the same seed writes the same set.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of CT chest studies.
        #[arg(long, default_value_t = 1)]
        ct: usize,
        /// Number of chest radiograph studies (DX and CR, alternating).
        #[arg(long, default_value_t = 4)]
        xray: usize,
        /// Slices per CT series.
        #[arg(long, default_value_t = 100)]
        slices: usize,
        /// Radiograph rows and columns (pixels).
        #[arg(long, default_value_t = 1024)]
        xray_size: u32,
        /// Smallest nodule diameter (mm).
        #[arg(long, default_value_t = DEFAULT_NODULE_DIAMETER_MM.0)]
        nodule_min_mm: f64,
        /// Largest nodule diameter (mm).
        #[arg(long, default_value_t = DEFAULT_NODULE_DIAMETER_MM.1)]
        nodule_max_mm: f64,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dicom-samples: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Generate {
        out,
        seed,
        ct,
        xray,
        slices,
        xray_size,
        nodule_min_mm,
        nodule_max_mm,
        quiet,
    } = cli.command;
    let options = GenerateOptions {
        out,
        seed,
        ct_studies: ct,
        xray_studies: xray,
        ct_slices: slices,
        xray_size,
        nodule_diameter_mm: (nodule_min_mm, nodule_max_mm),
    };
    options.validate()?;
    // A bar only when there is enough to wait for.
    let bar = if quiet || ct + xray <= 3 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(options.instance_count())
    };
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} instances ({per_sec}, eta {eta})",
    )?);
    let started = Instant::now();
    let manifest = generate(&options, &|| bar.inc(1))?;
    bar.finish_and_clear();
    println!(
        "wrote {} studies ({} instances, {} patients) to {} in {:.1} s",
        manifest.studies.len(),
        options.instance_count(),
        manifest.patients.len(),
        options.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
