//! Shared harness of the dicom-samples integration tests: run the real CLI, list what it
//! wrote, run the independent tools (dcmtk, dicom3tools, GDCM, pydicom) on it.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dicom_samples::ground_truth::{MANIFEST_FILE, Manifest};

/// Runs `dicom-samples` with `args` and returns its output.
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dicom-samples"))
        .args(args)
        .output()
        .expect("the dicom-samples binary runs")
}

/// Generates a set into `out` with the CLI and returns its manifest.
pub fn generate(out: &Path, extra: &[&str]) -> Manifest {
    let out_arg = out.to_str().expect("temp paths are UTF-8");
    let mut args = vec!["generate", "--quiet", "--out", out_arg];
    args.extend_from_slice(extra);
    let output = run_cli(&args);
    assert!(
        output.status.success(),
        "dicom-samples {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(out.join(MANIFEST_FILE)).expect("manifest written");
    serde_json::from_str(&text).expect("manifest parses")
}

/// Every `*.dcm` under `dir`, sorted.
pub fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "dcm") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs an external tool; a missing tool fails the test with the install hint (the README's
/// test command installs them), it never skips.
pub fn tool(name: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} could not run ({e}); run scripts/install-test-deps.sh to install it")
    })
}

/// The repository's `dicom-samples/scripts` directory.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Reads files with pydicom; one JSON object per file.
pub fn read_with_pydicom(files: &[PathBuf]) -> Vec<serde_json::Value> {
    let mut args: Vec<&std::ffi::OsStr> = vec![];
    let script = scripts_dir().join("read_with_pydicom.py");
    args.push(script.as_os_str());
    args.extend(files.iter().map(|f| f.as_os_str()));
    let output = tool("python3", &args);
    let stdout = String::from_utf8(output.stdout).expect("pydicom output is UTF-8");
    assert!(
        output.status.success(),
        "pydicom failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}
