//! The SR and SEG writers checked by independent readers: every object is written to a file,
//! validated with `dciodvfy` (dicom3tools) — no "Error" line allowed —, dumped with `dcmdump`
//! (dcmtk), and read back with highdicom through `scripts/results/read_with_highdicom.py`,
//! whose JSON summary must equal what the writer was given. Sources are real files written
//! by `dicom-samples` (a small CT series and a radiograph) and read back with dicom-object.
//!
//! Tools are found on PATH (`scripts/install-test-deps.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_samples::generate::{GenerateOptions, generate};
use serde_json::Value;

use super::seg::{Segment, SegmentFrame, build_seg};
use super::sr::{SegReference, build_sr};
use super::{
    AlgorithmInfo, CodedConcept, Finding, Measurement, NewInstance, ResultError, SourceImage,
};

/// The generated sources, shared by every test of this module (generated once per run).
struct Samples {
    dir: PathBuf,
    ct: Vec<PathBuf>,
    xray: PathBuf,
}

fn samples() -> &'static Samples {
    static SAMPLES: OnceLock<Samples> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        // One directory per test process, removed by the OS's tmp cleaning; tests that fail
        // leave their result files next to it for inspection.
        let dir =
            std::env::temp_dir().join(format!("radserve-results-tests-{}", std::process::id()));
        let options = GenerateOptions {
            seed: 11,
            ct_studies: 1,
            xray_studies: 1,
            ct_slices: 4,
            xray_size: 64,
            ..GenerateOptions::new(&dir)
        };
        generate(&options, &|| {}).expect("dicom-samples generates the sources");
        let mut ct = Vec::new();
        let mut xray = None;
        for study in std::fs::read_dir(dir.join("studies")).expect("studies directory") {
            let study = study.expect("study entry").path();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&study)
                .expect("study directory")
                .map(|e| e.expect("file entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
                .collect();
            files.sort();
            if study.to_string_lossy().ends_with("_CT") {
                ct = files;
            } else {
                xray = files.into_iter().next();
            }
        }
        assert_eq!(ct.len(), 4, "four CT slices");
        Samples {
            dir,
            ct,
            xray: xray.expect("a radiograph"),
        }
    })
}

/// A source as the pipeline has it: the file's data set without PixelData.
fn read_source(path: &Path) -> SourceImage {
    let file = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    SourceImage {
        dataset: file.into_inner(),
    }
}

fn ct_sources() -> Vec<SourceImage> {
    samples().ct.iter().map(|p| read_source(p)).collect()
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

fn floats(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<f64> {
    obj.get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .unwrap_or_default()
}

fn concept(scheme: &str, value: &str, meaning: &str) -> CodedConcept {
    CodedConcept {
        scheme: scheme.into(),
        value: value.into(),
        meaning: meaning.into(),
    }
}

fn algorithm() -> AlgorithmInfo {
    AlgorithmInfo {
        name: "ct-lung-nodule".into(),
        version: "1.2.0".into(),
        weights_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        device: "wgpu (llvmpipe)".into(),
    }
}

fn instance(n: u32) -> NewInstance {
    NewInstance {
        series_instance_uid: format!("2.25.1000{n}"),
        sop_instance_uid: format!("2.25.2000{n}"),
        series_number: 900 + n as i32,
        instance_number: 1,
        content_date: "20261115".into(),
        content_time: "101530".into(),
    }
}

fn json_code(value: &Value) -> CodedConcept {
    concept(
        value["scheme"].as_str().unwrap_or_default(),
        value["value"].as_str().unwrap_or_default(),
        value["meaning"].as_str().unwrap_or_default(),
    )
}

// --- the independent readers ----------------------------------------------------------------

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it on PATH?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Writes the object, then: dciodvfy without errors, dcmdump without complaint, and the
/// highdicom summary (returned).
fn validate(bytes: &[u8], name: &str) -> Value {
    let path = samples().dir.join(name);
    std::fs::write(&path, bytes).expect("write the result file");
    let file = path.to_str().expect("UTF-8 temp path");

    let (_, dciodvfy) = run("dciodvfy", &[file]);
    let errors: Vec<&str> = dciodvfy
        .lines()
        .filter(|l| l.starts_with("Error"))
        .collect();
    assert!(
        errors.is_empty(),
        "dciodvfy found errors in {name}:\n{dciodvfy}"
    );
    let warnings: Vec<&str> = dciodvfy
        .lines()
        .filter(|l| l.starts_with("Warning"))
        .collect();
    if !warnings.is_empty() {
        eprintln!("dciodvfy warnings for {name}:\n{}", warnings.join("\n"));
    }

    let (ok, dump) = run("dcmdump", &["-q", file]);
    assert!(ok, "dcmdump failed on {name}:\n{dump}");
    assert!(
        !dump
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "dcmdump complained about {name}:\n{dump}"
    );

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/results/read_with_highdicom.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(file)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "highdicom could not read {name}:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

fn assert_close(actual: &Value, expected: f64, what: &str) {
    let actual = actual.as_f64().unwrap_or(f64::NAN);
    assert!(
        (actual - expected).abs() <= 1e-6,
        "{what}: highdicom read {actual}, we wrote {expected}"
    );
}

/// The measurements of a group as highdicom read them, against the finding's (the
/// probability first, as the writer puts it).
fn assert_measurements(group: &Value, finding: &Finding) {
    let read = group["measurements"].as_array().expect("measurements");
    assert_eq!(read.len(), finding.measurements.len() + 1, "{group}");
    assert_eq!(
        json_code(&read[0]["concept"]),
        concept("DCM", "111012", "Certainty of Finding")
    );
    assert_close(&read[0]["value"], finding.probability, "probability");
    for (read, written) in read[1..].iter().zip(&finding.measurements) {
        assert_eq!(json_code(&read["concept"]), written.concept);
        assert_eq!(json_code(&read["unit"]), written.unit);
        assert_close(&read["value"], written.value, &written.concept.meaning);
    }
}

fn assert_algorithm(group: &Value) {
    let a = algorithm();
    assert_eq!(group["algorithm"]["name"], serde_json::json!([a.name]));
    assert_eq!(
        group["algorithm"]["version"],
        serde_json::json!([a.version])
    );
    assert_eq!(
        group["algorithm"]["parameters"][0],
        format!("weights_sha256={}", a.weights_sha256)
    );
}

// --- SR -------------------------------------------------------------------------------------

fn nodule(sources: &[SourceImage], slice: usize, n: u16, column: f64, row: f64) -> Finding {
    let position = floats(&sources[slice].dataset, tags::IMAGE_POSITION_PATIENT);
    let spacing = floats(&sources[slice].dataset, tags::PIXEL_SPACING);
    let center = [
        position[0] + column * spacing[1],
        position[1] + row * spacing[0],
        position[2],
    ];
    Finding {
        label: "nodule".into(),
        code: concept("SCT", "27925004", "Nodule"),
        finding_site: Some(concept("SCT", "39607008", "Lung")),
        probability: 0.9137 - f64::from(n) * 0.1,
        tracking_id: format!("nodule {n}"),
        tracking_uid: format!("2.25.3000{n}"),
        measurements: vec![
            Measurement {
                concept: concept("SCT", "81827009", "Diameter"),
                value: 7.25 + f64::from(n) / 3.0,
                unit: concept("UCUM", "mm", "millimeter"),
            },
            Measurement {
                concept: concept("SCT", "118565006", "Volume"),
                value: 199.532_107_1 * f64::from(n),
                unit: concept("UCUM", "mm3", "cubic millimeter"),
            },
            Measurement {
                concept: concept("DCM", "112181", "Mean Attenuation Coefficient"),
                value: -12.5 * f64::from(n),
                unit: concept("UCUM", "[hnsf'U]", "Hounsfield unit"),
            },
        ],
        center_mm: Some(center),
        source_instances: vec![text(&sources[slice].dataset, tags::SOP_INSTANCE_UID)],
        segment_number: Some(n),
    }
}

#[test]
fn sr_for_ct_nodules_with_a_seg_validates_and_reads_back() {
    let sources = ct_sources();
    let findings = vec![
        nodule(&sources, 1, 1, 200.5, 180.25),
        nodule(&sources, 2, 2, 320.0, 260.0),
    ];
    let seg = SegReference {
        series_instance_uid: "2.25.40001".into(),
        sop_instance_uid: "2.25.40002".into(),
    };
    let bytes =
        build_sr(&sources, &algorithm(), &findings, Some(&seg), &instance(1)).expect("SR builds");
    let summary = validate(&bytes, "ct-nodules.sr.dcm");

    assert_eq!(summary["sop_class_uid"], "1.2.840.10008.5.1.4.1.1.88.34");
    let first = &sources[0].dataset;
    assert_eq!(summary["patient_id"], text(first, tags::PATIENT_ID));
    assert_eq!(
        summary["study_instance_uid"],
        text(first, tags::STUDY_INSTANCE_UID)
    );
    assert_eq!(
        summary["observer_types"][0],
        serde_json::json!({"scheme": "DCM", "value": "121007", "meaning": "Device"})
    );
    assert_eq!(summary["device_observer_names"][0], algorithm().name);
    let mut evidence: Vec<String> = sources
        .iter()
        .map(|s| text(&s.dataset, tags::SOP_INSTANCE_UID))
        .collect();
    evidence.push(seg.sop_instance_uid.clone());
    evidence.sort();
    assert_eq!(
        summary["evidence_sop_instance_uids"],
        serde_json::json!(evidence)
    );

    let groups = summary["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{summary}");
    let frame = text(first, tags::FRAME_OF_REFERENCE_UID);
    for (group, finding) in groups.iter().zip(&findings) {
        assert_eq!(group["template"], "1411");
        assert_eq!(group["tracking_id"], finding.tracking_id);
        assert_eq!(group["tracking_uid"], finding.tracking_uid);
        assert_eq!(json_code(&group["finding"]), finding.code);
        assert_eq!(
            json_code(&group["finding_sites"][0]),
            finding.finding_site.clone().expect("site")
        );
        assert_algorithm(group);
        assert_measurements(group, finding);
        let segment = &group["referenced_segment"];
        assert_eq!(segment["sop_instance_uid"], seg.sop_instance_uid);
        assert_eq!(
            segment["segment_numbers"],
            serde_json::json!([finding.segment_number.expect("segment")])
        );
        assert_eq!(
            segment["source_images"],
            serde_json::json!(finding.source_instances)
        );
        let center = &group["center"];
        assert_eq!(center["graphic_type"], "POINT");
        assert_eq!(center["frame_of_reference_uid"], frame);
        for (read, written) in center["center"]
            .as_array()
            .expect("centre")
            .iter()
            .zip(finding.center_mm.expect("centre"))
        {
            // GraphicData is FL: single precision.
            let read = read.as_f64().unwrap_or(f64::NAN);
            assert!(
                (read - written).abs() < 1e-4 * written.abs().max(1.0),
                "{read} vs {written}"
            );
        }
    }

    // dicom-rs reads it back with the source's character set and patient name intact.
    let path = samples().dir.join("ct-nodules.sr.dcm");
    let back = OpenFileOptions::new()
        .open_file(&path)
        .expect("dicom-rs reads the SR");
    for tag in [
        tags::SPECIFIC_CHARACTER_SET,
        tags::PATIENT_NAME,
        tags::ACCESSION_NUMBER,
    ] {
        assert_eq!(text(&back, tag), text(first, tag), "{tag}");
    }
}

#[test]
fn sr_for_radiograph_classification_validates_and_reads_back() {
    let sources = vec![read_source(&samples().xray)];
    let uid = text(&sources[0].dataset, tags::SOP_INSTANCE_UID);
    let findings = vec![
        Finding {
            label: "consolidation".into(),
            code: concept("SCT", "95436008", "Lung consolidation"),
            finding_site: Some(concept("SCT", "39607008", "Lung")),
            probability: 0.731_234_5,
            tracking_id: "consolidation".into(),
            tracking_uid: "2.25.51".into(),
            measurements: vec![],
            center_mm: None,
            source_instances: vec![uid.clone()],
            segment_number: None,
        },
        Finding {
            label: "cardiomegaly".into(),
            code: concept("RADLEX", "RID35289", "cardiomegaly"),
            finding_site: None,
            probability: 0.12,
            tracking_id: "cardiomegaly".into(),
            tracking_uid: "2.25.52".into(),
            measurements: vec![Measurement {
                concept: concept("DCM", "122157", "Probability"),
                value: 0.5512,
                unit: concept("UCUM", "1", "no units"),
            }],
            center_mm: None,
            source_instances: vec![],
            segment_number: None,
        },
    ];
    let bytes = build_sr(&sources, &algorithm(), &findings, None, &instance(2)).expect("SR builds");
    let summary = validate(&bytes, "xray.sr.dcm");
    let groups = summary["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{summary}");
    for (group, finding) in groups.iter().zip(&findings) {
        assert_eq!(group["template"], "1501");
        assert_eq!(group["tracking_id"], finding.tracking_id);
        assert_eq!(group["tracking_uid"], finding.tracking_uid);
        assert_eq!(json_code(&group["finding"]), finding.code);
        assert_eq!(
            group["finding_sites"].as_array().map(Vec::len),
            Some(finding.finding_site.iter().count())
        );
        assert_eq!(group["source_images"], serde_json::json!([uid]));
        assert!(group["center"].is_null());
        assert_algorithm(group);
        assert_measurements(group, finding);
    }
}

#[test]
fn sr_without_findings_is_a_valid_report() {
    let sources = ct_sources();
    let bytes = build_sr(&sources, &algorithm(), &[], None, &instance(3)).expect("SR builds");
    let summary = validate(&bytes, "empty.sr.dcm");
    assert_eq!(summary["groups"], serde_json::json!([]));
    assert_eq!(
        summary["qualitative"],
        serde_json::json!([{
            "name": {"scheme": "DCM", "value": "121071", "meaning": "Finding"},
            "value": {"scheme": "SCT", "value": "373572006", "meaning": "Clinical finding absent"},
        }])
    );
}

#[test]
fn sr_refuses_inconsistent_findings() {
    let sources = ct_sources();
    let mut finding = nodule(&sources, 0, 1, 10.0, 10.0);
    let err = build_sr(
        &sources,
        &algorithm(),
        &[finding.clone()],
        None,
        &instance(4),
    );
    assert!(
        matches!(err, Err(ResultError::Finding { index: 0, .. })),
        "{err:?}"
    );

    finding.segment_number = None;
    finding.probability = 1.5;
    let err = build_sr(
        &sources,
        &algorithm(),
        &[finding.clone()],
        None,
        &instance(4),
    );
    assert!(
        matches!(err, Err(ResultError::Finding { index: 0, .. })),
        "{err:?}"
    );

    finding.probability = 0.5;
    finding.source_instances = vec!["2.25.999".into()];
    let err = build_sr(&sources, &algorithm(), &[finding], None, &instance(4));
    assert!(
        matches!(err, Err(ResultError::Finding { index: 0, .. })),
        "{err:?}"
    );

    let err = build_sr(&[], &algorithm(), &[], None, &instance(4));
    assert!(matches!(err, Err(ResultError::NoSources)), "{err:?}");
}

// --- SEG ------------------------------------------------------------------------------------

fn lesion_segment() -> Segment {
    Segment {
        number: 1,
        label: "nodule".into(),
        property_type: concept("SCT", "27925004", "Nodule"),
        property_category: concept("SCT", "49755003", "Morphologically abnormal structure"),
        tracking_id: "nodule 1".into(),
        tracking_uid: "2.25.60001".into(),
    }
}

/// A disc of `radius` pixels around (column, row) on a rows × columns grid.
fn disc(rows: usize, columns: usize, column: f64, row: f64, radius: f64) -> Vec<bool> {
    (0..rows * columns)
        .map(|i| {
            let (r, c) = ((i / columns) as f64, (i % columns) as f64);
            (r - row).powi(2) + (c - column).powi(2) <= radius * radius
        })
        .collect()
}

fn grid(source: &SourceImage) -> (usize, usize) {
    let size = |tag| -> usize {
        source
            .dataset
            .get(tag)
            .and_then(|e| e.to_int::<usize>().ok())
            .unwrap_or(0)
    };
    (size(tags::ROWS), size(tags::COLUMNS))
}

#[test]
fn seg_with_two_frames_of_one_segment_validates_and_reads_back() {
    let sources = ct_sources();
    let (rows, columns) = grid(&sources[0]);
    let frames = vec![
        SegmentFrame {
            segment_number: 1,
            source_index: 2,
            mask: disc(rows, columns, 210.0, 190.0, 6.5),
        },
        SegmentFrame {
            segment_number: 1,
            source_index: 1,
            mask: disc(rows, columns, 211.0, 191.0, 9.0),
        },
        // Empty: skipped.
        SegmentFrame {
            segment_number: 1,
            source_index: 3,
            mask: vec![false; rows * columns],
        },
    ];
    let bytes = build_seg(
        &sources,
        &algorithm(),
        &[lesion_segment()],
        &frames,
        &instance(5),
    )
    .expect("SEG builds");
    let summary = validate(&bytes, "ct.seg.dcm");

    assert_eq!(summary["number_of_frames"], 2);
    assert_eq!(summary["rows"], rows);
    assert_eq!(summary["columns"], columns);
    let segments = summary["segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 1, "{summary}");
    let segment = &segments[0];
    let written = lesion_segment();
    assert_eq!(segment["number"], 1);
    assert_eq!(segment["label"], written.label);
    assert_eq!(segment["tracking_id"], written.tracking_id);
    assert_eq!(segment["tracking_uid"], written.tracking_uid);
    assert_eq!(json_code(&segment["property_type"]), written.property_type);
    assert_eq!(
        json_code(&segment["property_category"]),
        written.property_category
    );
    assert_eq!(segment["algorithm_type"], "AUTOMATIC");
    assert_eq!(segment["frames"], 2);
    let count = |mask: &[bool]| mask.iter().filter(|&&p| p).count();
    assert_eq!(
        segment["pixel_count"],
        count(&frames[0].mask) + count(&frames[1].mask)
    );
    for frame in &frames[..2] {
        let uid = text(&sources[frame.source_index].dataset, tags::SOP_INSTANCE_UID);
        assert_eq!(
            segment["pixel_count_by_source"][&uid],
            count(&frame.mask),
            "{uid}"
        );
    }
}

#[test]
fn seg_refuses_bad_masks_segments_and_sources() {
    let sources = ct_sources();
    let (rows, columns) = grid(&sources[0]);
    let good = SegmentFrame {
        segment_number: 1,
        source_index: 0,
        mask: disc(rows, columns, 100.0, 100.0, 4.0),
    };
    let build = |frames: &[SegmentFrame]| {
        build_seg(
            &sources,
            &algorithm(),
            &[lesion_segment()],
            frames,
            &instance(6),
        )
    };

    let short = SegmentFrame {
        mask: vec![true; rows * columns - 1],
        ..good.clone()
    };
    let err = build(&[good.clone(), short]);
    assert!(
        matches!(err, Err(ResultError::Mask { index: 1, .. })),
        "{err:?}"
    );

    let unknown = SegmentFrame {
        segment_number: 2,
        ..good.clone()
    };
    let err = build(&[unknown]);
    assert!(
        matches!(err, Err(ResultError::Mask { index: 0, .. })),
        "{err:?}"
    );

    let out_of_range = SegmentFrame {
        source_index: sources.len(),
        ..good.clone()
    };
    let err = build(&[out_of_range]);
    assert!(
        matches!(err, Err(ResultError::Mask { index: 0, .. })),
        "{err:?}"
    );

    let empty = SegmentFrame {
        mask: vec![false; rows * columns],
        ..good.clone()
    };
    let err = build(&[empty]);
    assert!(
        matches!(err, Err(ResultError::Mask { index: 1, .. })),
        "{err:?}"
    );
    let err = build(&[]);
    assert!(
        matches!(err, Err(ResultError::Mask { index: 0, .. })),
        "{err:?}"
    );

    let misnumbered = Segment {
        number: 2,
        ..lesion_segment()
    };
    let err = build_seg(
        &sources,
        &algorithm(),
        &[misnumbered],
        &[good.clone()],
        &instance(6),
    );
    assert!(matches!(err, Err(ResultError::Encode(_))), "{err:?}");

    // A projection radiograph has no patient-space geometry.
    let xray = vec![sources[0].clone(), read_source(&samples().xray)];
    let (xrows, xcolumns) = grid(&xray[1]);
    let on_xray = SegmentFrame {
        segment_number: 1,
        source_index: 1,
        mask: vec![true; xrows * xcolumns],
    };
    let err = build_seg(
        &xray,
        &algorithm(),
        &[lesion_segment()],
        &[on_xray],
        &instance(6),
    );
    assert!(
        matches!(err, Err(ResultError::Source { index: 1, .. })),
        "{err:?}"
    );

    // A CT slice stripped of its geometry.
    let mut stripped = sources.clone();
    stripped[0]
        .dataset
        .remove_element(tags::IMAGE_ORIENTATION_PATIENT);
    let err = build_seg(
        &stripped,
        &algorithm(),
        &[lesion_segment()],
        &[good],
        &instance(6),
    );
    match err {
        Err(ResultError::Source { index: 0, reason }) => {
            assert!(reason.contains("ImageOrientationPatient"), "{reason}")
        }
        other => panic!("expected a source error, got {other:?}"),
    }
}
