//! The EMR join end to end: dicom-samples writes studies and the matching EMR export (a FHIR
//! R4 Bundle with the inconsistencies of a real PACS↔EMR join) and `true_pairs.json`; the
//! studies go in by `storescu`, the Bundle by `POST /api/v1/emr/fhir`, in both orders, and
//! the links the server makes are compared with the truth.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use radserve_tests::{RadServe, generate_samples, http_client, serve_with_config, storescu_dir};
use serde_json::Value;

const TOKEN: &str = "emr-e2e-token-7f3a91c2d4";

fn call(server: &RadServe, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
    let url = server.url(path);
    let auth = format!("Bearer {TOKEN}");
    let mut response = match body {
        Some(body) => http_client()
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/fhir+json")
            .send(body),
        None if method == "GET" => http_client()
            .get(&url)
            .header("Authorization", &auth)
            .call(),
        None => http_client()
            .post(&url)
            .header("Authorization", &auth)
            .send_empty(),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

/// The link of every study in `pairs` once the join has seen it, as (patient, order).
fn links(
    server: &RadServe,
    pairs: &[Value],
) -> BTreeMap<String, (Option<String>, Option<String>, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = BTreeMap::new();
    for pair in pairs {
        let study = pair["study_instance_uid"].as_str().unwrap();
        loop {
            let (status, body) = call(server, "GET", &format!("/api/v1/studies/{study}"), None);
            let link = &body["emr"]["link"];
            if status == 200 && !link.is_null() {
                out.insert(
                    study.to_owned(),
                    (
                        link["patient"].as_str().map(str::to_owned),
                        link["order"].as_str().map(str::to_owned),
                        link["state"].as_str().unwrap_or_default().to_owned(),
                    ),
                );
                break;
            }
            assert!(Instant::now() < deadline, "{study} never joined: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    out
}

/// Precision and recall of `links` against the true pairs.
fn score(
    links: &BTreeMap<String, (Option<String>, Option<String>, String)>,
    pairs: &[Value],
) -> (usize, usize, usize) {
    let (mut made, mut correct) = (0, 0);
    for pair in pairs {
        let study = pair["study_instance_uid"].as_str().unwrap();
        let (patient, order, state) = &links[study];
        if state != "linked" {
            continue;
        }
        made += 1;
        let right = patient.as_deref() == pair["patient_resource_id"].as_str()
            && order.as_deref() == pair["service_request_id"].as_str();
        assert!(
            right,
            "wrong link for {study}: {patient:?} {order:?}, truth {pair}"
        );
        correct += 1;
    }
    (made, correct, pairs.len())
}

#[test]
fn studies_join_their_orders_whichever_arrives_first() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &[
            "--seed",
            "31",
            "--ct",
            "3",
            "--slices",
            "2",
            "--xray",
            "9",
            "--xray-size",
            "64",
        ],
    );
    let bundle = std::fs::read(generated.join("emr_bundle.json")).unwrap();
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(generated.join("true_pairs.json")).unwrap())
            .unwrap();
    let pairs = truth["pairs"].as_array().unwrap().clone();
    // No model runs here: the join is what is tested.
    let config = dir.path().join("radserve.toml");
    std::fs::write(
        &config,
        "[pipeline]\nstable_after_s = 0.5\npoll_interval_ms = 100\ndemo_models = false\n",
    )
    .unwrap();

    // Studies first, then the EMR.
    let first = serve_with_config(&dir.path().join("a"), &config, TOKEN);
    storescu_dir(&first, &generated.join("studies"));
    std::thread::sleep(Duration::from_secs(2));
    let (status, report) = call(&first, "POST", "/api/v1/emr/fhir", Some(&bundle));
    assert_eq!(status, 200, "{report}");
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
    let studies_first = links(&first, &pairs);

    // The EMR first, then the studies.
    let second = serve_with_config(&dir.path().join("b"), &config, TOKEN);
    let (status, _) = call(&second, "POST", "/api/v1/emr/fhir", Some(&bundle));
    assert_eq!(status, 200);
    storescu_dir(&second, &generated.join("studies"));
    let emr_first = links(&second, &pairs);
    assert_eq!(
        studies_first, emr_first,
        "the same links whichever side came first"
    );

    let (made, correct, total) = score(&studies_first, &pairs);
    eprintln!("links made {made}, correct {correct}, true pairs {total}");
    assert_eq!(made, correct, "precision 1.0");
    assert!(
        correct as f64 >= 0.95 * total as f64,
        "recall {correct}/{total}"
    );

    // The same Bundle again changes nothing; the quality report accounts for every study.
    let (_, again) = call(&first, "POST", "/api/v1/emr/fhir", Some(&bundle));
    assert_eq!(again["patients"]["created"], 0, "{again}");
    assert_eq!(again["patients"]["updated"], 0, "{again}");
    let (status, quality) = call(&first, "GET", "/api/v1/emr/quality?stale_days=0", None);
    assert_eq!(status, 200);
    assert_eq!(
        quality["studies"].as_u64(),
        Some(pairs.len() as u64),
        "{quality}"
    );
    let orders_without_study = truth["orders_without_study"].as_array().unwrap().len() as u64;
    assert!(
        quality["orders_without_study"]["count"].as_u64() >= Some(orders_without_study),
        "{quality}"
    );

    // A malformed Bundle: a precise per-entry error, the rest stored.
    let bad = serde_json::json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:6c1f1f8e-2f43-4d0e-9d7a-000000000001",
             "resource": {"resourceType": "Patient", "id": "p-new", "gender": "female"}},
            {"resource": {"resourceType": "ServiceRequest", "id": "sr-bad", "intent": "order",
                          "subject": {"reference": "Patient/p-new"}}},
            {"resource": {"resourceType": "Observation", "id": "o1", "status": "final"}}
        ]
    });
    let (status, report) = call(
        &first,
        "POST",
        "/api/v1/emr/fhir",
        Some(bad.to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["patients"]["created"], 1, "{report}");
    assert_eq!(report["errors"][0]["index"], 1, "{report}");
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("status"),
        "{report}"
    );
    assert_eq!(report["ignored"]["Observation"], 1, "{report}");
    let (status, body) = call(
        &first,
        "POST",
        "/api/v1/emr/fhir",
        Some(b"{\"resourceType\": \"Patient\"}"),
    );
    assert_eq!(status, 400, "{body}");
}
