//! `radserve emr import` end to end: dicom-samples writes studies and their EMR export (a
//! FHIR Bundle); `scripts/emr/bundle_to_csv.py` turns the Bundle into a spreadsheet-style
//! CSV (independently of the Rust parsers); the CSV is imported offline into a data
//! directory with the example mapping, twice (the second time nothing changes); then a
//! server on that directory receives the studies by storescu and its links are compared
//! with `true_pairs.json`, the Bundle's ids translated to the ids the import made.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use radserve_tests::{
    generate_samples, get_json_authorized, radserve_command, run_to_exit, serve_with_config,
    storescu_dir, workspace_root,
};
use serde_json::Value;

const TOKEN: &str = "emr-import-e2e-token-3b81d0";

fn identifier<'a>(resource: &'a Value, code: &str) -> Option<&'a str> {
    resource["identifier"].as_array()?.iter().find_map(|i| {
        let coded = i["type"]["coding"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["code"] == code));
        if coded { i["value"].as_str() } else { None }
    })
}

/// Bundle Patient id → `csv-<MR>`, ServiceRequest id → `csv-<placer or accession>`.
fn csv_ids(bundle: &Value) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for entry in bundle["entry"].as_array().unwrap() {
        let r = &entry["resource"];
        let id = r["id"].as_str().unwrap().to_owned();
        let key = match r["resourceType"].as_str() {
            Some("Patient") => identifier(r, "MR"),
            Some("ServiceRequest") => identifier(r, "PLAC").or_else(|| identifier(r, "ACSN")),
            _ => None,
        };
        if let Some(key) = key {
            ids.insert(id, format!("csv-{key}"));
        }
    }
    ids
}

fn import(file: &std::path::Path, map: &std::path::Path, data: &std::path::Path) -> (i32, String) {
    let output = run_to_exit(
        radserve_command()
            .args(["emr", "import"])
            .arg(file)
            .args(["--format", "csv", "--map"])
            .arg(map)
            .arg("--data")
            .arg(data),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().unwrap_or(-1),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

#[test]
fn csv_import_links_studies_to_the_imported_orders() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &[
            "--seed",
            "31",
            "--ct",
            "2",
            "--slices",
            "2",
            "--xray",
            "6",
            "--xray-size",
            "64",
        ],
    );
    let root = workspace_root();
    let csv = dir.path().join("export.csv");
    let status = Command::new("python3")
        .arg(root.join("scripts/emr/bundle_to_csv.py"))
        .arg(generated.join("emr_bundle.json"))
        .arg(&csv)
        .status()
        .expect("cannot run python3");
    assert!(status.success(), "bundle_to_csv.py failed ({status})");
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(generated.join("emr_bundle.json")).unwrap()).unwrap();
    let truth: Value =
        serde_json::from_slice(&std::fs::read(generated.join("true_pairs.json")).unwrap()).unwrap();
    let pairs = truth["pairs"].as_array().unwrap();
    let ids = csv_ids(&bundle);
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count() - 1;
    assert!(!ids.is_empty() && rows > 0);

    // First import: everything created.
    let map = root.join("scripts/emr/csv-mapping.example.toml");
    let data = dir.path().join("data");
    let (code, out) = import(&csv, &map, &data);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("rows read: {rows}, refused: 0")),
        "{out}"
    );
    assert!(
        out.contains("patients: 5 created, 0 updated, 0 unchanged"),
        "{out}"
    );
    assert!(
        out.contains("orders: ") && out.contains(" created, 0 updated, 0 unchanged"),
        "{out}"
    );
    // Again: the same ids, nothing created or updated.
    let (code, again) = import(&csv, &map, &data);
    assert_eq!(code, 0, "{again}");
    for kind in ["patients", "orders", "encounters"] {
        assert!(
            again.contains(&format!("{kind}: 0 created, 0 updated, ")),
            "{kind}: {again}"
        );
    }

    // A mapping with an unknown key: refused, the key named, exit 1.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&map)
            .unwrap()
            .replace("family = ", "famly = "),
    )
    .unwrap();
    let (code, out) = import(&csv, &bad, &data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("famly"), "{out}");

    // The studies arrive at a server on that data directory.
    let config = dir.path().join("radserve.toml");
    std::fs::write(
        &config,
        "[pipeline]\nstable_after_s = 0.5\npoll_interval_ms = 100\ndemo_models = false\n",
    )
    .unwrap();
    let server = serve_with_config(&data, &config, TOKEN);
    storescu_dir(&server, &generated.join("studies"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut made, mut correct) = (0, 0);
    for pair in pairs {
        let study = pair["study_instance_uid"].as_str().unwrap();
        let link = loop {
            let (status, body) =
                get_json_authorized(&server, &format!("/api/v1/studies/{study}"), TOKEN);
            if status == 200 && !body["emr"]["link"].is_null() {
                break body["emr"]["link"].clone();
            }
            assert!(Instant::now() < deadline, "{study} never joined: {body}");
            std::thread::sleep(Duration::from_millis(200));
        };
        if link["state"] != "linked" {
            continue;
        }
        made += 1;
        let want_patient = pair["patient_resource_id"]
            .as_str()
            .and_then(|p| ids.get(p));
        let want_order = pair["service_request_id"].as_str().and_then(|o| ids.get(o));
        assert_eq!(
            (link["patient"].as_str(), link["order"].as_str()),
            (
                want_patient.map(String::as_str),
                want_order.map(String::as_str)
            ),
            "wrong link for {study}: {link}, truth {pair}"
        );
        correct += 1;
    }
    eprintln!(
        "links made {made}, correct {correct}, true pairs {}",
        pairs.len()
    );
    assert_eq!(made, correct, "precision 1.0");
    assert!(
        correct as f64 >= 0.95 * pairs.len() as f64,
        "recall {correct}/{}",
        pairs.len()
    );
}
