//! The CLI refuses impossible parameters with a clear message and a non-zero exit, never a panic.

mod common;

use common::run_cli;

fn refused(args: &[&str], expected_message: &str) {
    let output = run_cli(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} should fail");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{args:?}: a refusal, not a crash: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(expected_message),
        "{args:?}: expected {expected_message:?} in {stderr}"
    );
}

#[test]
fn impossible_parameters_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("set");
    let out = out.to_str().expect("UTF-8 path");
    refused(
        &["generate", "--out", out, "--xray-size", "0"],
        "radiograph size must be between",
    );
    refused(
        &["generate", "--out", out, "--slices", "0"],
        "CT slices must be between 1 and",
    );
    refused(
        &["generate", "--out", out, "--ct", "0", "--xray", "0"],
        "nothing to generate",
    );
    refused(
        &["generate", "--out", out, "--nodule-max-mm", "250"],
        "a larger nodule would not fit in the lung",
    );
    refused(
        &[
            "generate",
            "--out",
            out,
            "--nodule-min-mm",
            "20",
            "--nodule-max-mm",
            "10",
        ],
        "need 1 mm ≤ min ≤ max",
    );
    refused(
        &["generate", "--out", out, "--nodule-min-mm", "NaN"],
        "need 1 mm ≤ min ≤ max",
    );
    // Nothing was written for refused parameters.
    assert!(!std::path::Path::new(out).exists());
}

#[test]
fn an_unwritable_output_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let inside_file = file.join("set");
    refused(
        &[
            "generate",
            "--out",
            inside_file.to_str().expect("UTF-8"),
            "--xray",
            "1",
            "--ct",
            "0",
        ],
        "cannot write to",
    );
}

#[test]
fn a_valid_run_reports_what_it_wrote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("set");
    let output = run_cli(&[
        "generate",
        "--out",
        out.to_str().expect("UTF-8"),
        "--ct",
        "1",
        "--slices",
        "2",
        "--xray",
        "1",
        "--xray-size",
        "128",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("wrote 2 studies (3 instances"),
        "{stdout}"
    );
}
