//! Results out to the EMR, end to end, against independent receivers:
//! - a FHIR transaction endpoint (`scripts/fhir/fhir_receiver.py`) that validates every
//!   Bundle with `jsonschema` against HL7's R4 JSON Schema (the committed subset);
//! - an HL7 v2 MLLP receiver (`scripts/emr/oru_receiver.py`) that parses every message
//!   strictly with `hl7apy` (an independent HL7 v2 implementation) and ACKs it.
//!
//! dicom-samples writes radiographs and their EMR export. The studies go in by `storescu`
//! *before* the EMR knows them, so the results go out first without patient or order;
//! then the EMR Bundle arrives, the join links the studies, and the results go out again,
//! now tied to the patient and the order (same FHIR resources updated; the ORU a
//! correction). Each receiver refuses the first message (HTTP 503, ACK AR), so the retry
//! path runs too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use radserve_tests::{
    RadServe, emr_sample_set, get_json_authorized, http_client, serve_with_config, storescu_dir,
    wait_for_study_jobs, workspace_root,
};
use serde_json::Value;

const TOKEN: &str = "emr-outbound-token-71c3e0";
const PUSH_TOKEN: &str = "fhir-push-secret-9a1f";
const TIMEOUT: Duration = Duration::from_secs(300);

/// A receiver script, killed when dropped.
struct Peer {
    child: Child,
    port: u16,
    records: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// Starts `script` (under `scripts/`) on a free port; it prints `listening <port>`.
    fn start(script: &str, records: &Path, extra: &[&str]) -> Peer {
        let mut child = Command::new("python3")
            .arg(workspace_root().join("scripts").join(script))
            .args(["--port", "0", "--out"])
            .arg(records)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
        Peer {
            child,
            port,
            records: records.to_owned(),
        }
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.records)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

fn outbox(server: &RadServe, query: &str) -> Vec<Value> {
    let (status, body) = get_json_authorized(server, &format!("/api/v1/emr/outbox{query}"), TOKEN);
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().cloned().unwrap_or_default()
}

/// Waits until every outbox row of `study` is delivered at revision `revision` or more.
fn wait_delivered(server: &RadServe, study: &str, revision: i64, rows: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let entries = outbox(server, &format!("?study={study}"));
        let done = entries.len() == rows
            && entries
                .iter()
                .all(|e| e["state"] == "delivered" && e["revision"].as_i64() >= Some(revision));
        if done {
            return entries;
        }
        assert!(
            entries.iter().all(|e| e["state"] != "failed"),
            "a send failed: {entries:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "not delivered (revision {revision}): {entries:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The resources of the accepted transaction Bundles that carry `resource_type/id`.
fn accepted_with(records: &[Value], reference: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| {
            r["bundle"]["entry"]
                .as_array()?
                .iter()
                .find(|e| e["request"]["url"] == reference)
                .map(|e| e["resource"].clone())
        })
        .collect()
}

#[test]
fn results_reach_a_fhir_server_and_an_hl7_receiver_and_follow_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let (generated, truth, pair) = emr_sample_set(dir.path());
    let study = pair["study_instance_uid"].as_str().unwrap();
    let patient = pair["patient_resource_id"].as_str().unwrap();
    let order = pair["service_request_id"].as_str().unwrap();
    let accession = pair["accession_number"].as_str().unwrap();
    let bundle_text = std::fs::read(generated.join("emr_bundle.json")).unwrap();
    let bundle: Value = serde_json::from_slice(&bundle_text).unwrap();
    let placer = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "ServiceRequest" && r["id"] == order)
        .and_then(|r| {
            r["identifier"]
                .as_array()?
                .iter()
                .find(|i| i["type"]["coding"][0]["code"] == "PLAC")
                .and_then(|i| i["value"].as_str())
                .map(str::to_owned)
        })
        .expect("the order's placer number");

    let fhir = Peer::start(
        "fhir/fhir_receiver.py",
        &dir.path().join("fhir.jsonl"),
        &["--fail-first", "1"],
    );
    let hl7 = Peer::start(
        "emr/oru_receiver.py",
        &dir.path().join("hl7.jsonl"),
        &["--reject-first", "1"],
    );
    let token_file = dir.path().join("fhir-token");
    std::fs::write(&token_file, format!("{PUSH_TOKEN}\n")).unwrap();
    let config = dir.path().join("radserve.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nstable_after_s = 1\npoll_interval_ms = 100\n\n\
             [emr.fhir_push]\nurl = \"http://127.0.0.1:{}/fhir\"\nbearer_token_file = {:?}\n\
             backoff_initial_s = 0.2\nbackoff_max_s = 2\n\n\
             [emr.hl7_out]\nhost = \"127.0.0.1\"\nport = {}\nreceiving_application = \"RIS\"\n\
             receiving_facility = \"HOSP\"\nbackoff_initial_s = 0.2\nbackoff_max_s = 2\n",
            fhir.port,
            token_file.display().to_string(),
            hl7.port
        ),
    )
    .unwrap();
    let server = serve_with_config(&dir.path().join("data"), &config, TOKEN);

    // Unknown filters are refused with a reason.
    let (status, body) = get_json_authorized(&server, "/api/v1/emr/outbox?state=lost", TOKEN);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("state"));

    // 1. The studies arrive before the EMR knows them: results go out unlinked.
    storescu_dir(&server, &generated.join("studies"));
    let jobs = wait_for_study_jobs(&server, study, TOKEN, TIMEOUT)["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(jobs.iter().all(|j| j["state"] == "done"), "{jobs:?}");
    let job = jobs[0]["id"].as_i64().unwrap();
    let first = wait_delivered(&server, study, 1, 2 * jobs.len());
    let report_ref = format!("DiagnosticReport/job-{job}");
    let reports = accepted_with(&fhir.records(), &report_ref);
    let unlinked = reports.last().expect("the report reached the FHIR server");
    assert!(
        unlinked["subject"]["identifier"].is_object(),
        "unlinked: the subject is the DICOM Patient ID: {unlinked}"
    );
    assert!(unlinked.get("basedOn").is_none(), "{unlinked}");

    // The first message to each receiver was refused, retried, then accepted.
    let fhir_records = fhir.records();
    assert_eq!(fhir_records[0]["status"], 503);
    assert!(
        fhir_records.iter().all(|r| r["status"] != 400),
        "a Bundle failed the R4 schema: {fhir_records:#?}"
    );
    assert!(
        fhir_records
            .iter()
            .all(|r| r["authorization"] == format!("Bearer {PUSH_TOKEN}")),
        "{fhir_records:#?}"
    );
    let hl7_records = hl7.records();
    assert_eq!(hl7_records[0]["ack"], "AR");
    assert!(
        hl7_records.iter().skip(1).all(|r| r["ack"] == "AA"),
        "hl7apy refused an ORU: {hl7_records:#?}"
    );
    // The refused sends (of whichever study came first) were retried and delivered.
    let mut all_jobs = 0;
    for pair in truth["pairs"].as_array().unwrap() {
        let uid = pair["study_instance_uid"].as_str().unwrap();
        all_jobs += wait_for_study_jobs(&server, uid, TOKEN, TIMEOUT)["jobs"]
            .as_array()
            .map_or(0, Vec::len);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let everything = loop {
        let entries = outbox(&server, "");
        if entries.len() == 2 * all_jobs && entries.iter().all(|e| e["state"] == "delivered") {
            break entries;
        }
        assert!(Instant::now() < deadline, "not all delivered: {entries:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for destination in ["fhir", "hl7"] {
        assert!(
            everything
                .iter()
                .any(|e| e["destination"] == destination && e["attempts"].as_i64() >= Some(2)),
            "the refused {destination} send was retried: {everything:#?}"
        );
    }
    for entry in &first {
        let answer = entry["response"].as_str().unwrap_or_default();
        match entry["destination"].as_str() {
            Some("fhir") => assert!(answer.starts_with("HTTP 200"), "{entry}"),
            _ => assert!(answer.starts_with("ACK AA"), "{entry}"),
        }
    }
    let oru_of_study = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["ack"] == "AA" && r["obr"]["placer_field_1"] == accession)
            .cloned()
            .collect()
    };
    let unlinked_oru = oru_of_study(&hl7_records);
    let unlinked_oru = unlinked_oru.last().expect("the study's ORU was accepted");
    assert_eq!(unlinked_oru["message_type"], "ORU^R01^ORU_R01");
    assert_eq!(unlinked_oru["obr"]["result_status"], "P");
    assert_eq!(unlinked_oru["obr"]["placer"], "");

    // 2. The EMR export arrives: the join links the study, and the results go out again.
    let mut response = http_client()
        .post(&server.url("/api/v1/emr/fhir"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/fhir+json")
        .send(&bundle_text[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let _ = response.body_mut().read_to_string();
    let second = wait_delivered(&server, study, 2, 2 * jobs.len());
    assert!(second.iter().all(|e| e["revision"] == 2), "{second:#?}");

    let reports = accepted_with(&fhir.records(), &report_ref);
    let linked = reports.last().unwrap();
    assert_eq!(linked["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(
        linked["basedOn"][0]["reference"],
        format!("ServiceRequest/{order}")
    );
    // The same resource was updated, not a second one made.
    let ids: Vec<&Value> = reports.iter().map(|r| &r["id"]).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let imaging = accepted_with(&fhir.records(), &format!("ImagingStudy/{study}"));
    assert_eq!(
        imaging.last().unwrap()["subject"]["reference"],
        format!("Patient/{patient}")
    );

    let linked_oru = oru_of_study(&hl7.records());
    let linked_oru = linked_oru.last().unwrap();
    assert_eq!(linked_oru["obr"]["result_status"], "C", "{linked_oru}");
    assert_eq!(linked_oru["obr"]["placer"], placer);
    assert_eq!(linked_oru["orc"]["placer"], placer);
    assert_ne!(linked_oru["control_id"], unlinked_oru["control_id"]);
    // One OBX per finding (plus measurements), the conclusion and the SR pointer.
    let findings =
        get_json_authorized(&server, &format!("/api/v1/studies/{study}/findings"), TOKEN).1;
    let current = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["superseded"] == false && f["job_id"] == job)
        .count();
    let obx = linked_oru["obx"].as_array().unwrap();
    assert!(current > 0);
    assert_eq!(
        obx.iter()
            .filter(|o| o["value_type"] == "NM"
                && o["units"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("probability"))
            .count(),
        current,
        "{obx:#?}"
    );
    assert!(obx.iter().any(|o| o["value_type"] == "TX"));
    assert!(obx.iter().all(|o| o["status"] == "C"));

    // The clinician's view of the study says where its results went.
    let view = get_json_authorized(&server, &format!("/api/v1/studies/{study}"), TOKEN).1;
    let deliveries = view["deliveries"].as_array().expect("deliveries listed");
    assert_eq!(deliveries.len(), 2 * jobs.len(), "{view}");
    assert!(
        deliveries
            .iter()
            .all(|d| d["state"] == "delivered" && d["revision"] == 2),
        "{deliveries:#?}"
    );

    // 3. An operator sends one again by hand; it is delivered once more.
    let row = second[0]["id"].as_i64().unwrap();
    let mut response = http_client()
        .post(&server.url(&format!("/api/v1/emr/outbox/{row}/retry")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let requeued: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(requeued["attempts"], 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entry = outbox(&server, &format!("?study={study}"))
            .into_iter()
            .find(|e| e["id"] == row)
            .unwrap();
        if entry["state"] == "delivered" && entry["attempts"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not sent again: {entry}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Everything sent, linked or not, passed the receivers' validation.
    let fhir_records = fhir.records();
    assert!(
        fhir_records.iter().skip(1).all(|r| r["status"] == 200),
        "{fhir_records:#?}"
    );
    let hl7_records = hl7.records();
    assert!(
        hl7_records.iter().skip(1).all(|r| r["ack"] == "AA"),
        "{hl7_records:#?}"
    );

    let mut response = http_client()
        .post(&server.url("/api/v1/emr/outbox/999999/retry"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let _ = response.body_mut().read_to_string();
}
