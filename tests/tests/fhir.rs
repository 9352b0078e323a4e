//! Findings out as FHIR R4, end to end: dicom-samples writes radiographs and the matching
//! EMR export; the studies go in by `storescu`, the EMR Bundle by `POST /api/v1/emr/fhir`,
//! the embedded demo model reads them, and the findings come back from `/fhir/...` as
//! DiagnosticReports, Observations and an ImagingStudy. Every answer is validated against
//! HL7's FHIR R4 JSON Schema (the subset in `scripts/fhir/`, by `scripts/fhir/validate.py`,
//! offline) and must point at the true pair's patient and order.

use std::time::{Duration, Instant};

use radserve_tests::{
    RadServe, emr_sample_set, http_client, serve_with_config, storescu_dir, wait_for_study_jobs,
    workspace_root,
};
use serde_json::Value;

const TOKEN: &str = "fhir-e2e-token-5d20c7a9e1";
const TIMEOUT: Duration = Duration::from_secs(300);

/// GET or POST (with a FHIR body); (status, content type, JSON body).
fn call(server: &RadServe, path: &str, body: Option<&[u8]>) -> (u16, String, Value) {
    let url = server.url(path);
    let auth = format!("Bearer {TOKEN}");
    let mut response = match body {
        Some(body) => http_client()
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/fhir+json")
            .send(body),
        None => http_client()
            .get(&url)
            .header("Authorization", &auth)
            .header("Accept", "application/fhir+json")
            .call(),
    }
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, content_type, json)
}

/// A FHIR answer: FHIR's media type, and valid against the R4 schema.
fn fhir(server: &RadServe, path: &str, expected_status: u16) -> Value {
    let (status, content_type, body) = call(server, path, None);
    assert_eq!(status, expected_status, "GET {path}: {body}");
    assert!(
        content_type.starts_with("application/fhir+json"),
        "GET {path}: content type {content_type}"
    );
    validate(path, &body);
    body
}

/// Validates with HL7's R4 JSON Schema (subset), offline, through `jsonschema`.
fn validate(what: &str, resource: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resource.json");
    std::fs::write(&file, serde_json::to_vec_pretty(resource).unwrap()).unwrap();
    let root = workspace_root();
    let output = std::process::Command::new("python3")
        .arg(root.join("scripts/fhir/validate.py"))
        .arg(root.join("scripts/fhir/fhir-r4-subset.schema.json"))
        .arg(&file)
        .output()
        .expect("python3 runs (scripts/install-test-deps.sh installs jsonschema)");
    assert!(
        output.status.success(),
        "{what} is not valid FHIR R4:\n{}\n{resource:#}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn entries(bundle: &Value) -> Vec<Value> {
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .collect()
}

#[test]
fn findings_come_out_as_valid_fhir_r4_tied_to_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let (generated, _, pair) = emr_sample_set(dir.path());
    let bundle = std::fs::read(generated.join("emr_bundle.json")).unwrap();
    let study = pair["study_instance_uid"].as_str().unwrap();
    let patient = pair["patient_resource_id"].as_str().unwrap();
    let order = pair["service_request_id"].as_str().unwrap();

    let config = dir.path().join("radserve.toml");
    std::fs::write(
        &config,
        "[pipeline]\nstable_after_s = 1\npoll_interval_ms = 100\n",
    )
    .unwrap();
    let server = serve_with_config(&dir.path().join("data"), &config, TOKEN);

    // A search with no parameter is refused, as FHIR says, with an OperationOutcome.
    let refused = fhir(&server, "/fhir/DiagnosticReport", 400);
    assert_eq!(refused["resourceType"], "OperationOutcome");
    assert_eq!(refused["issue"][0]["code"], "required");
    let unknown = fhir(&server, "/fhir/DiagnosticReport/job-999999", 404);
    assert_eq!(unknown["resourceType"], "OperationOutcome");

    let (status, _, report) = call(&server, "/api/v1/emr/fhir", Some(&bundle));
    assert_eq!(status, 200, "{report}");
    storescu_dir(&server, &generated.join("studies"));
    let jobs = wait_for_study_jobs(&server, study, TOKEN, TIMEOUT)["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(jobs.iter().all(|j| j["state"] == "done"), "{jobs:?}");

    // The join may finish just after the jobs: wait for the order's report.
    let search = format!("/fhir/DiagnosticReport?based-on={order}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let reports = loop {
        let found = entries(&fhir(&server, &search, 200));
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "no report for order {order}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(reports.len(), jobs.len(), "one report per job: {reports:?}");
    for report in &reports {
        assert_eq!(report["resourceType"], "DiagnosticReport");
        assert_eq!(report["status"], "preliminary");
        assert_eq!(report["subject"]["reference"], format!("Patient/{patient}"));
        assert_eq!(
            report["basedOn"][0]["reference"],
            format!("ServiceRequest/{order}")
        );
        assert_eq!(
            report["imagingStudy"][0]["reference"],
            format!("ImagingStudy/{study}")
        );
        // The SR is named and retrievable where the report says.
        let sr = report["presentedForm"][0]["url"].as_str().expect("SR url");
        let mut response = http_client()
            .get(&server.url(sr))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Accept", "multipart/related; type=\"application/dicom\"")
            .call()
            .unwrap_or_else(|e| panic!("GET {sr}: {e}"));
        let status = response.status().as_u16();
        assert!(!response.body_mut().read_to_vec().unwrap().is_empty());
        assert_eq!(status, 200, "GET {sr}");

        let id = report["id"].as_str().unwrap();
        let read = fhir(&server, &format!("/fhir/DiagnosticReport/{id}"), 200);
        assert_eq!(&read, report, "read and search agree");

        // The same report by the study's UID and by the SR's UID.
        let by_study = entries(&fhir(
            &server,
            &format!("/fhir/DiagnosticReport?identifier=urn:oid:{study}"),
            200,
        ));
        assert!(by_study.iter().any(|r| r["id"] == id));
        let sr_uid = report["identifier"][0]["value"].as_str().unwrap();
        let by_sr = entries(&fhir(
            &server,
            &format!("/fhir/DiagnosticReport?identifier={sr_uid}"),
            200,
        ));
        assert_eq!(by_sr.len(), 1, "{by_sr:?}");
        assert_eq!(by_sr[0]["id"], id);
    }

    // The patient's Observations: one per current finding of the study, each in a report.
    let findings = call(&server, &format!("/api/v1/studies/{study}/findings"), None).2;
    let current = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["superseded"] == false)
        .count();
    let observations = entries(&fhir(
        &server,
        &format!("/fhir/Observation?patient={patient}"),
        200,
    ));
    let of_study: Vec<&Value> = observations
        .iter()
        .filter(|o| o["derivedFrom"][0]["reference"] == format!("ImagingStudy/{study}"))
        .collect();
    assert_eq!(of_study.len(), current, "{observations:?}");
    let listed: Vec<String> = reports
        .iter()
        .flat_map(|r| r["result"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["reference"].as_str().map(str::to_owned))
        .collect();
    for obs in &of_study {
        assert_eq!(obs["subject"]["reference"], format!("Patient/{patient}"));
        assert_eq!(
            obs["basedOn"][0]["reference"],
            format!("ServiceRequest/{order}")
        );
        assert_eq!(obs["status"], "preliminary");
        assert!(listed.contains(&format!("Observation/{}", obs["id"].as_str().unwrap())));
    }
    let bounded = fhir(
        &server,
        &format!("/fhir/Observation?subject=Patient/{patient}&_count=1"),
        200,
    );
    assert_eq!(entries(&bounded).len(), 1.min(of_study.len()));
    assert_eq!(bounded["total"].as_u64(), Some(observations.len() as u64));

    let imaging = fhir(&server, &format!("/fhir/ImagingStudy/{study}"), 200);
    assert_eq!(
        imaging["subject"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(
        imaging["identifier"][1]["value"].as_str(),
        pair["accession_number"].as_str()
    );
    let bad = fhir(&server, "/fhir/Observation?colour=red", 400);
    assert_eq!(bad["resourceType"], "OperationOutcome");
}
