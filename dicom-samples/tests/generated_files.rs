//! The generator's files, checked by independent tools: dciodvfy (dicom3tools) validates every
//! object against its IOD, dcmtk's dcmdump and pydicom read each, and the geometry and the
//! names read back from the files agree with the ground truth.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{dicom_files, generate, read_with_pydicom, tool};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, open_file};
use dicom_samples::ground_truth::{GROUND_TRUTH_FILE, Manifest, Modality, StudyGroundTruth};
use dicom_samples::patient::TextEncoding;

struct Set {
    _dir: tempfile::TempDir,
    root: PathBuf,
    manifest: Manifest,
}

/// One small set shared by the tests of this file: 2 CT series of 24 slices, 6 radiographs.
fn set() -> &'static Set {
    static SET: OnceLock<Set> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let manifest = generate(
            &root,
            &["--seed", "42", "--ct", "2", "--slices", "24", "--xray", "6"],
        );
        Set {
            _dir: dir,
            root,
            manifest,
        }
    })
}

fn ground_truth(root: &Path, directory: &str) -> StudyGroundTruth {
    let text =
        std::fs::read_to_string(root.join(directory).join(GROUND_TRUTH_FILE)).expect("sidecar");
    serde_json::from_str(&text).expect("sidecar parses")
}

#[test]
fn every_file_passes_dciodvfy_without_errors() {
    let set = set();
    let files = dicom_files(&set.root);
    assert_eq!(files.len(), 2 * 24 + 6);
    let mut failures = Vec::new();
    for file in &files {
        let output = tool("dciodvfy", &[file.as_os_str()]);
        // dciodvfy reports on stderr; its lines start with "Error" or "Warning".
        let report = String::from_utf8_lossy(&output.stderr).to_string()
            + &String::from_utf8_lossy(&output.stdout);
        let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
        if !errors.is_empty() {
            failures.push(format!("{}:\n  {}", file.display(), errors.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "dciodvfy errors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn dcmdump_reads_every_file() {
    let set = set();
    for file in dicom_files(&set.root) {
        let output = tool(
            "dcmdump",
            &[
                "-q".as_ref(),
                "+P".as_ref(),
                "PatientID".as_ref(),
                file.as_os_str(),
            ],
        );
        assert!(
            output.status.success(),
            "dcmdump failed on {}",
            file.display()
        );
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("(0010,0020)"),
            "no PatientID in {}: {text}",
            file.display()
        );
    }
}

#[test]
fn pydicom_reads_every_file_and_agrees_with_the_manifest() {
    let set = set();
    let files = dicom_files(&set.root);
    let read = read_with_pydicom(&files);
    assert_eq!(read.len(), files.len());
    let studies: HashMap<&str, _> = set
        .manifest
        .studies
        .iter()
        .map(|s| (s.study_instance_uid.as_str(), s))
        .collect();
    for file in &read {
        let uid = file["study_instance_uid"].as_str().expect("study uid");
        let study = studies.get(uid).expect("study is in the manifest");
        let patient = &set.manifest.patients[study.patient_index];
        assert_eq!(file["patient_id"], patient.patient_id.as_str());
        assert_eq!(
            file["patient_name"],
            patient.name.to_dicom_pn().as_str(),
            "{}",
            file["path"]
        );
        assert_eq!(
            file["specific_character_set"],
            study.encoding.specific_character_set()
        );
    }
}

#[test]
fn gb18030_and_utf8_names_decode_to_the_same_string() {
    let set = set();
    let first = &set.manifest.studies[0];
    let second = &set.manifest.studies[1];
    assert_eq!(first.patient_index, second.patient_index);
    assert_eq!(first.encoding, TextEncoding::Gb18030);
    assert_eq!(second.encoding, TextEncoding::Utf8);
    let file_of = |dir: &str| dicom_files(&set.root.join(dir)).remove(0);
    let (gb, utf8) = (file_of(&first.directory), file_of(&second.directory));

    // The bytes on disk differ (two encodings) ...
    let expected = set.manifest.patients[first.patient_index]
        .name
        .to_dicom_pn();
    let han = expected.split('=').nth(1).expect("ideographic group");
    let gb_bytes = std::fs::read(&gb).expect("readable");
    let utf8_bytes = std::fs::read(&utf8).expect("readable");
    assert!(
        contains(&utf8_bytes, han.as_bytes()),
        "UTF-8 file holds the UTF-8 bytes"
    );
    assert!(
        !contains(&gb_bytes, han.as_bytes()),
        "GB18030 file must not hold UTF-8 bytes"
    );

    // ... and both decode to the same string, in pydicom and in dicom-rs.
    let read = read_with_pydicom(&[gb.clone(), utf8.clone()]);
    assert_eq!(read[0]["patient_name"], expected.as_str());
    assert_eq!(read[1]["patient_name"], expected.as_str());
    for path in [&gb, &utf8] {
        let obj = open_file(path).expect("opens");
        assert_eq!(
            obj.element(tags::PATIENT_NAME)
                .expect("name")
                .to_str()
                .expect("text"),
            expected
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn f64s(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Vec<f64> {
    obj.element(tag)
        .expect("present")
        .to_multi_float64()
        .expect("numeric")
}

/// HU at a patient-space point, from the files' own geometry and rescale (not the sidecar's).
fn hu_at(slices: &[(DefaultDicomObject, Vec<i16>)], p: [f64; 3]) -> f64 {
    let (obj, pixels) = slices
        .iter()
        .min_by(|a, b| {
            let za = f64s(&a.0, tags::IMAGE_POSITION_PATIENT)[2];
            let zb = f64s(&b.0, tags::IMAGE_POSITION_PATIENT)[2];
            (za - p[2]).abs().total_cmp(&(zb - p[2]).abs())
        })
        .expect("slices");
    let ipp = f64s(obj, tags::IMAGE_POSITION_PATIENT);
    let iop = f64s(obj, tags::IMAGE_ORIENTATION_PATIENT);
    let spacing = f64s(obj, tags::PIXEL_SPACING); // row spacing, column spacing
    let d = [p[0] - ipp[0], p[1] - ipp[1], p[2] - ipp[2]];
    let column = (d[0] * iop[0] + d[1] * iop[1] + d[2] * iop[2]) / spacing[1];
    let row = (d[0] * iop[3] + d[1] * iop[4] + d[2] * iop[5]) / spacing[0];
    let columns = usize::from(
        obj.element(tags::COLUMNS)
            .expect("cols")
            .to_int::<u16>()
            .expect("int"),
    );
    let slope = f64s(obj, tags::RESCALE_SLOPE)[0];
    let intercept = f64s(obj, tags::RESCALE_INTERCEPT)[0];
    let stored = pixels[row.round() as usize * columns + column.round() as usize];
    f64::from(stored) * slope + intercept
}

#[test]
fn ct_nodules_lie_where_the_ground_truth_says_in_patient_coordinates() {
    let set = set();
    let mut nodules_checked = 0;
    for study in set
        .manifest
        .studies
        .iter()
        .filter(|s| s.modality == Modality::Ct)
    {
        let truth = ground_truth(&set.root, &study.directory);
        let ct = truth.ct.expect("CT sidecar");
        let slices: Vec<(DefaultDicomObject, Vec<i16>)> =
            dicom_files(&set.root.join(&study.directory))
                .iter()
                .map(|path| {
                    let obj = open_file(path).expect("opens");
                    let bytes = obj
                        .element(tags::PIXEL_DATA)
                        .expect("pixels")
                        .to_bytes()
                        .expect("bytes")
                        .to_vec();
                    let pixels = bytes
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    (obj, pixels)
                })
                .collect();
        assert_eq!(slices.len(), ct.sop_instance_uids.len());
        for (obj, _) in &slices {
            let uid = obj
                .element(tags::FRAME_OF_REFERENCE_UID)
                .expect("FoR")
                .to_str()
                .expect("uid");
            assert_eq!(uid, ct.frame_of_reference_uid.as_str());
        }
        for nodule in &ct.nodules {
            let centre = hu_at(&slices, nodule.center_mm);
            assert!(
                centre > -650.0,
                "nodule {} centre reads {centre} HU",
                nodule.id
            );
            // 4 mm beyond the nodule's longest semi-axis, in every in-plane direction, is lung.
            let reach = nodule.diameter_mm / 2.0 + 4.0;
            for (dx, dy) in [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)] {
                let p = [
                    nodule.center_mm[0] + dx * reach,
                    nodule.center_mm[1] + dy * reach,
                    nodule.center_mm[2],
                ];
                let around = hu_at(&slices, p);
                assert!(
                    around < -600.0,
                    "nodule {} surroundings read {around} HU at {p:?}",
                    nodule.id
                );
            }
            nodules_checked += 1;
        }
    }
    assert!(
        nodules_checked > 0,
        "the seed should give at least one nodule"
    );
}

#[test]
fn radiograph_sidecars_match_their_files() {
    let set = set();
    for study in set
        .manifest
        .studies
        .iter()
        .filter(|s| s.modality != Modality::Ct)
    {
        let truth = ground_truth(&set.root, &study.directory)
            .radiograph
            .expect("radiograph sidecar");
        let file = dicom_files(&set.root.join(&study.directory)).remove(0);
        let obj = open_file(&file).expect("opens");
        let text = |tag| {
            obj.element(tag)
                .expect("present")
                .to_str()
                .expect("text")
                .to_string()
        };
        assert_eq!(text(tags::SOP_INSTANCE_UID), truth.sop_instance_uid);
        assert_eq!(
            text(tags::PHOTOMETRIC_INTERPRETATION),
            truth.photometric_interpretation
        );
        assert_eq!(
            f64s(&obj, tags::IMAGER_PIXEL_SPACING),
            truth.imager_pixel_spacing_mm.to_vec()
        );
        assert!(truth.rows >= 1024 && truth.columns >= 1024);
        assert_eq!(truth.normal, truth.findings.is_empty());
        for finding in &truth.findings {
            let [c0, r0, c1, r1] = finding.bbox_px;
            assert!(c0 <= c1 && r0 <= r1 && c1 < truth.columns && r1 < truth.rows);
            assert!(
                (finding.center_mm[0] - finding.center_px[0] * truth.imager_pixel_spacing_mm[1])
                    .abs()
                    < 1e-6
            );
        }
    }
}

#[test]
fn same_seed_writes_identical_files() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    // A small set per seed: one 3-slice CT and two 256² radiographs.
    let small_set = |dir: &Path, seed: &str| {
        generate(
            dir,
            &[
                "--seed",
                seed,
                "--ct",
                "1",
                "--slices",
                "3",
                "--xray",
                "2",
                "--xray-size",
                "256",
            ],
        )
    };
    let manifest_a = small_set(a.path(), "7");
    let manifest_b = small_set(b.path(), "7");
    assert_eq!(manifest_a, manifest_b);
    let files_a = dicom_files(a.path());
    assert_eq!(files_a.len(), 5);
    for file in files_a {
        let relative = file.strip_prefix(a.path()).expect("under a");
        let other = b.path().join(relative);
        assert!(
            std::fs::read(&file).expect("a") == std::fs::read(&other).expect("b"),
            "{relative:?} differs"
        );
    }
    let c = tempfile::tempdir().expect("temp dir");
    let manifest_c = small_set(c.path(), "8");
    assert_ne!(
        manifest_a.studies[0].study_instance_uid,
        manifest_c.studies[0].study_instance_uid
    );
}

#[test]
fn emr_export_and_true_pairs_cover_every_study() {
    let set = set();
    let pairs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(set.root.join("true_pairs.json")).expect("pairs"),
    )
    .expect("json");
    let bundle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(set.root.join("emr_bundle.json")).expect("bundle"),
    )
    .expect("json");
    assert_eq!(bundle["resourceType"], "Bundle");
    let pairs = pairs["pairs"].as_array().expect("pairs array");
    assert_eq!(pairs.len(), set.manifest.studies.len());
    let request_ids: Vec<&str> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "ServiceRequest")
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    for pair in pairs {
        if let Some(id) = pair["service_request_id"].as_str() {
            assert!(request_ids.contains(&id), "pair names unknown order {id}");
        }
    }
}

#[test]
fn committed_sample_is_what_the_generator_writes() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("studies");
    let fresh = tempfile::tempdir().expect("temp dir");
    // The same command as scripts/make-committed-sample.sh.
    generate(
        fresh.path(),
        &[
            "--seed", "2048", "--ct", "1", "--slices", "10", "--xray", "3",
        ],
    );
    let mut generated = dicom_files(fresh.path());
    for json in ["manifest.json", "emr_bundle.json", "true_pairs.json"] {
        generated.push(fresh.path().join(json));
    }
    assert_eq!(
        dicom_files(&committed).len(),
        13,
        "committed sample: 10 CT slices + 3 radiographs"
    );
    for file in generated {
        let relative = file.strip_prefix(fresh.path()).expect("under fresh");
        let committed_bytes = std::fs::read(committed.join(relative))
            .unwrap_or_else(|e| panic!("{relative:?} missing from dicom-samples/studies ({e}); run scripts/make-committed-sample.sh"));
        assert!(
            committed_bytes == std::fs::read(&file).expect("fresh file"),
            "{relative:?} differs from the generator's output; run dicom-samples/scripts/make-committed-sample.sh"
        );
    }
}
