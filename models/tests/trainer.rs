//! The trainer binary end to end, on a budget a test can afford: continuing the demo
//! segmenter with a hard-example stage writes a package that loads, records where its
//! weights came from, and carries the component rule it was given; a starting package of
//! another architecture, and the segmenter's flags on the classifier, are refused; the
//! classifier's nodule-crop stages run and are recorded in its package, and a classifier
//! continues from a package as the segmenter does.

use std::path::{Path, PathBuf};
use std::process::Command;

use radserve_models::package::ModelPackage;

fn demo_segmenter() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("zoo/ct-lung-nodule")
}

/// Runs the trainer for `model` writing to `out`; `args` follow `--out`.
fn train(model: &str, out: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("run the trainer")
}

/// Trains into `out` and returns what the trainer printed; fails the test if it failed.
fn trained(model: &str, out: &Path, args: &[&str]) -> String {
    let output = train(model, out, args);
    assert!(
        output.status.success(),
        "trainer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The trainer refuses `args` with a message containing each of `messages`, writing nothing.
fn refused(model: &str, args: &[&str], messages: &[&str]) {
    let out = tempfile::tempdir().expect("temp dir");
    let output = train(model, out.path(), args);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for message in messages {
        assert!(stderr.contains(message), "{stderr}");
    }
    assert!(
        !out.path().join("model.toml").exists(),
        "nothing is written for a refused run"
    );
}

#[test]
fn a_hard_example_stage_continues_a_package_and_says_so() {
    let out = tempfile::tempdir().expect("temp dir");
    let base = ModelPackage::open(demo_segmenter()).expect("demo segmenter");
    let stdout = trained(
        "ct-lung-nodule",
        out.path(),
        &[
            "--init-weights",
            demo_segmenter().to_str().expect("utf-8 path"),
            "--studies",
            "1",
            "--epochs",
            "0",
            "--hard-example-epochs",
            "1",
            "--eval-studies",
            "1",
            "--min-lung-border-fraction",
            "0.1",
            "--model-version",
            "9.9.9",
        ],
    );
    assert!(stdout.contains("hard slices added"), "{stdout}");

    let package = ModelPackage::open(out.path()).expect("the new package opens");
    let manifest = &package.manifest;
    assert_eq!(manifest.model.version, "9.9.9");
    assert_eq!(manifest.architecture, base.manifest.architecture);
    // The hard-example epoch moved the weights away from the ones it started from.
    assert_ne!(manifest.weights.sha256, base.manifest.weights.sha256);
    let data = &manifest.training.data;
    assert!(
        data.contains(&format!(
            "continued from ct-lung-nodule {}",
            base.manifest.model.version
        )),
        "{data}"
    );
    assert!(data.contains(&base.manifest.training.command), "{data}");
    assert!(data.contains("hard examples"), "{data}");
    let rules = manifest.output.component_options();
    assert_eq!(rules.min_lung_border_fraction, 0.1);
    for metric in ["dice", "sensitivity_6mm", "false_positives_per_scan"] {
        assert!(manifest.metrics.contains_key(metric), "{metric} measured");
    }
    let card = std::fs::read_to_string(out.path().join("MODEL_CARD.md")).expect("card");
    assert!(card.contains("lung border fraction ≥ 0.1"), "{card}");
}

#[test]
fn a_starting_package_of_another_architecture_is_refused() {
    let classifier = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("zoo/chest-xray-findings");
    refused(
        "ct-lung-nodule",
        &[
            "--init-weights",
            classifier.to_str().expect("utf-8 path"),
            "--studies",
            "1",
            "--epochs",
            "0",
        ],
        &["its architecture", "is not the one trained here"],
    );
}

#[test]
fn segmenter_flags_are_refused_for_the_classifier() {
    refused(
        "chest-xray-findings",
        &["--hard-example-epochs", "1"],
        &["are for the segmenter"],
    );
}

/// A classifier run a test can afford: one epoch of batches of 2 at 64 pixels, and enough
/// held-out radiographs that each label has both classes (AUC needs both).
const SMALL_CLASSIFIER_RUN: [&str; 8] = [
    "--epochs",
    "1",
    "--batch",
    "2",
    "--input-size",
    "64",
    "--eval-studies",
    "16",
];

#[test]
fn the_classifier_trains_on_nodule_crops_and_says_so() {
    let out = tempfile::tempdir().expect("temp dir");
    let stdout = trained(
        "chest-xray-findings",
        out.path(),
        &[
            SMALL_CLASSIFIER_RUN.as_slice(),
            &[
                "--studies",
                "6",
                "--nodule-patch-epochs",
                "1",
                "--nodule-patch-size",
                "32",
                "--nodule-patch-weight",
                "0.5",
            ],
        ]
        .concat(),
    );
    // A number, not "-": the six radiographs gave crops of both classes.
    let crop_auc: f64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("nodule crops, epoch 1: training AUC "))
        .and_then(|auc| auc.trim().parse().ok())
        .unwrap_or_else(|| panic!("no crop AUC in {stdout}"));
    assert!((0.0..=1.0).contains(&crop_auc), "{crop_auc}");
    let package = ModelPackage::open(out.path()).expect("the new package opens");
    let data = &package.manifest.training.data;
    assert!(
        data.contains("first trained 1 epochs on 32-pixel crops"),
        "{data}"
    );
    assert!(
        data.contains("8 crops of 32 pixels (half holding a nodule) at weight 0.5"),
        "{data}"
    );

    // More whole-radiograph epochs on top of that package: its weights are the start, and
    // the new card says how they were made.
    let continued = tempfile::tempdir().expect("temp dir");
    trained(
        "chest-xray-findings",
        continued.path(),
        &[
            SMALL_CLASSIFIER_RUN.as_slice(),
            &[
                "--init-weights",
                out.path().to_str().expect("utf-8 path"),
                "--studies",
                "4",
            ],
        ]
        .concat(),
    );
    let next = ModelPackage::open(continued.path()).expect("the continued package opens");
    let next_data = &next.manifest.training.data;
    assert!(
        next_data.starts_with("continued from chest-xray-findings 0.1.0 (data: 6 synthetic"),
        "{next_data}"
    );
    assert!(next_data.contains("32-pixel crops"), "{next_data}");
    assert_eq!(next.manifest.architecture, package.manifest.architecture);
    assert_ne!(
        next.manifest.weights.sha256,
        package.manifest.weights.sha256
    );
}

#[test]
fn a_crop_larger_than_the_input_is_refused() {
    refused(
        "chest-xray-findings",
        &[
            "--input-size",
            "64",
            "--nodule-patch-epochs",
            "1",
            "--nodule-patch-size",
            "96",
        ],
        &["--nodule-patch-size must be"],
    );
}

#[test]
fn a_candidate_filter_is_trained_into_a_copy_of_the_segmenter() {
    let out = tempfile::tempdir().expect("temp dir");
    let base = ModelPackage::open(demo_segmenter()).expect("demo segmenter");
    let stdout = trained(
        "ct-candidate-filter",
        out.path(),
        &[
            "--segmenter",
            demo_segmenter().to_str().expect("utf-8 path"),
            "--studies",
            "2",
            "--epochs",
            "1",
            "--batch",
            "8",
            "--patch-edge",
            "32",
            "--mask-threshold",
            "0.3",
            "--outline-threshold",
            "0.5",
            "--validation-studies",
            "1",
            "--eval-studies",
            "1",
            "--model-version",
            "9.9.9",
        ],
    );
    assert!(
        stdout.contains("candidate filter, epoch 1: training AUC"),
        "{stdout}"
    );
    assert!(stdout.contains("| review threshold |"), "{stdout}");

    let package = ModelPackage::open(out.path()).expect("the new package opens");
    let manifest = &package.manifest;
    assert_eq!(manifest.model.version, "9.9.9");
    // The segmenter itself is the one it was given, at the mask threshold asked for.
    assert_eq!(manifest.weights.sha256, base.manifest.weights.sha256);
    assert_eq!(manifest.output.labels[0].threshold, 0.3);
    assert_eq!(manifest.output.outline_threshold, Some(0.5));
    let spec = manifest
        .output
        .candidate_filter
        .as_ref()
        .expect("the package names its reviewer");
    assert_eq!(spec.package, "candidate-filter");
    let (filter, patch) = package
        .candidate_filter()
        .expect("the reviewer's package opens")
        .expect("and is there");
    assert_eq!(patch.edge, 32);
    assert_eq!(filter.manifest.architecture.in_channels(), 3);
    assert!(
        filter
            .manifest
            .training
            .command
            .contains("ct-candidate-filter"),
        "{}",
        filter.manifest.training.command
    );
    assert!(
        filter
            .manifest
            .model
            .disclaimer
            .contains("not for clinical use")
    );
    for metric in ["dice", "sensitivity_6mm", "false_positives_per_scan"] {
        assert!(manifest.metrics.contains_key(metric), "{metric} measured");
    }
    let card = std::fs::read_to_string(out.path().join("MODEL_CARD.md")).expect("card");
    assert!(
        card.contains("reviewed by the classifier in `candidate-filter/`"),
        "{card}"
    );
    assert!(out.path().join("candidate-filter/MODEL_CARD.md").exists());
}

#[test]
fn a_candidate_filter_needs_a_segmenter_and_distinct_seeds() {
    let classifier = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("zoo/chest-xray-findings");
    refused(
        "ct-candidate-filter",
        &["--segmenter", classifier.to_str().expect("utf-8 path")],
        &["not a segmentation package"],
    );
    refused(
        "ct-candidate-filter",
        &[
            "--segmenter",
            demo_segmenter().to_str().expect("utf-8 path"),
            "--validation-seed",
            "1000003",
        ],
        &["must differ"],
    );
    refused(
        "ct-candidate-filter",
        &[
            "--segmenter",
            demo_segmenter().to_str().expect("utf-8 path"),
            "--mask-threshold",
            "0.4",
            "--outline-threshold",
            "0.2",
        ],
        &["--outline-threshold must lie between"],
    );
}
