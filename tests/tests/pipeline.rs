//! The study pipeline end to end, against the real binary with its embedded demo models:
//! dcmtk's `storescu` sends synthetic studies (dicom-samples), the server decides they are
//! complete, runs the models in batches and writes findings, a DICOM SR and a DICOM SEG;
//! the SR and SEG come back through WADO-RS and are checked with `dciodvfy` (dicom3tools)
//! and read back with highdicom (`scripts/results/read_with_highdicom.py`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use radserve_tests::{
    RadServe, dcmtk, dicom_files, generate_samples, get_json_authorized, http_client,
    serve_with_config, split_multipart, storescu_dir, wait_for_study_jobs, workspace_root,
};
use serde_json::Value;

const TOKEN: &str = "pipeline-e2e-token-41c9e8a2";

/// A study's jobs must all finish within this long.
const JOBS_TIMEOUT: Duration = Duration::from_secs(300);

/// Writes a config for quick tests: studies complete after 1 s, leases of 3 s.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("radserve.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nstable_after_s = 1\npoll_interval_ms = 100\njob_lease_s = 3\nretry_backoff_s = 1\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn serve(data: &Path, config: &Path) -> RadServe {
    serve_with_config(data, config, TOKEN)
}

fn get(server: &RadServe, path: &str) -> (u16, Value) {
    get_json_authorized(server, path, TOKEN)
}

fn storescu(server: &RadServe, dir: &Path) {
    storescu_dir(server, dir)
}

fn wait_for_jobs(server: &RadServe, study: &str) -> Value {
    wait_for_study_jobs(server, study, TOKEN, JOBS_TIMEOUT)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Study directories of a generated set, with their ground truth.
fn studies(generated: &Path) -> Vec<(PathBuf, Value)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(generated.join("studies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let truth = read_json(&d.join("ground_truth.json"));
            (d, truth)
        })
        .collect()
}

/// Retrieves one instance through WADO-RS and writes it to `out`.
fn wado_instance(server: &RadServe, study: &str, series: &str, instance: &str, out: &Path) {
    let path = format!("/dicomweb/studies/{study}/series/{series}/instances/{instance}");
    let mut response = http_client()
        .get(&server.url(&path))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Accept", "multipart/related; type=\"application/dicom\"")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "GET {path}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.body_mut().read_to_vec().unwrap();
    let parts = split_multipart(&content_type, &body);
    assert_eq!(parts.len(), 1, "one instance from {path}");
    std::fs::write(out, &parts[0]).unwrap();
}

/// `dciodvfy` must report no error.
fn assert_valid_dicom(file: &Path) {
    let output = std::process::Command::new("dciodvfy")
        .arg(file)
        .output()
        .expect("dciodvfy (Debian dicom3tools) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(
        errors.is_empty(),
        "dciodvfy errors in {}:\n{text}",
        file.display()
    );
}

fn read_with_highdicom(file: &Path) -> Value {
    let script = workspace_root().join("scripts/results/read_with_highdicom.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "highdicom could not read {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn measurement(finding: &Value, meaning: &str) -> f64 {
    finding["measurements"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["concept"]["meaning"] == meaning))
        .and_then(|m| m["value"].as_f64())
        .unwrap_or_else(|| panic!("no {meaning} in {finding}"))
}

#[test]
fn stored_studies_become_findings_sr_and_seg() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &[
            "--seed",
            "7",
            "--ct",
            "1",
            "--slices",
            "60",
            "--xray",
            "4",
            "--xray-size",
            "512",
            "--nodule-min-mm",
            "8",
        ],
    );
    let config = write_config(dir.path(), "");
    let server = serve(&dir.path().join("data"), &config);
    // One radiograph goes as 12-bit JPEG Extended (dcmtk's `dcmcjpeg +ee`), on its own
    // association proposing that transfer syntax: it must become findings like the rest.
    let (jpeg_study_dir, jpeg_truth) = studies(&generated)
        .into_iter()
        .find(|(_, truth)| truth["radiograph"].is_object())
        .expect("a radiograph study");
    let jpeg_study = jpeg_truth["study_instance_uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let radiograph = dicom_files(&jpeg_study_dir).remove(0);
    let compressed = dir.path().join("jpeg-extended.dcm");
    let output = dcmtk(
        "dcmcjpeg",
        [
            "+ee".as_ref(),
            radiograph.as_os_str(),
            compressed.as_os_str(),
        ],
    );
    assert!(output.status.success(), "dcmcjpeg +ee");
    std::fs::remove_file(&radiograph).unwrap();
    storescu(&server, &generated.join("studies"));
    let port = server.dicom_port.to_string();
    let output = dcmtk(
        "storescu",
        [
            "-xx".as_ref(),
            "-aec".as_ref(),
            "RADSERVE".as_ref(),
            "127.0.0.1".as_ref(),
            port.as_ref(),
            compressed.as_os_str(),
        ],
    );
    assert!(
        output.status.success(),
        "storescu -xx: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, metadata) = get(&server, &format!("/dicomweb/studies/{jpeg_study}/metadata"));
    assert_eq!(
        metadata[0]["00083002"]["Value"][0], "1.2.840.10008.1.2.4.51",
        "stored as JPEG Extended: {metadata}"
    );

    let mut matched_nodules = 0;
    let mut measured_nodules = 0;
    let mut truth_nodules = 0;
    for (study_dir, truth) in studies(&generated) {
        let study = truth["study_instance_uid"].as_str().unwrap();
        let result = wait_for_jobs(&server, study);
        let jobs = result["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1, "one series, one model: {result}");
        let job = &jobs[0];
        assert_eq!(job["state"], "done", "{job}");
        for stage in [
            "decode_ms",
            "preprocess_ms",
            "queue_ms",
            "compute_ms",
            "postprocess_ms",
            "store_ms",
        ] {
            assert!(job["timings"][stage].as_f64().is_some(), "{stage} in {job}");
        }
        let findings = result["findings"].as_array().unwrap();
        for f in findings {
            assert_eq!(f["result_version"], 1);
            assert_eq!(f["superseded"], false);
            assert_eq!(f["weights_sha256"].as_str().unwrap().len(), 64);
        }

        let data = dir.path().join(format!(
            "{}-sr.dcm",
            study_dir.file_name().unwrap().to_string_lossy()
        ));
        let sr_uid = job["sr_sop_instance_uid"]
            .as_str()
            .expect("an SR was written");
        let (_, series) = get(
            &server,
            &format!("/dicomweb/studies/{study}/series?Modality=SR"),
        );
        let sr_series = series[0]["0020000E"]["Value"][0].as_str().unwrap();
        wado_instance(&server, study, sr_series, sr_uid, &data);
        assert_valid_dicom(&data);
        let sr = read_with_highdicom(&data);
        let positive_uids: BTreeSet<&str> = findings
            .iter()
            .filter(|f| f["positive"] == true)
            .map(|f| f["tracking_uid"].as_str().unwrap())
            .collect();
        let sr_uids: BTreeSet<&str> = sr["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["tracking_uid"].as_str().unwrap())
            .collect();
        assert_eq!(sr_uids, positive_uids, "the SR holds the positive findings");

        if let Some(ct) = truth.get("ct").filter(|c| !c.is_null()) {
            // Every nodule the model found that lies on a true nodule is where the truth
            // says and as large, in patient coordinates.
            for nodule in ct["nodules"].as_array().unwrap() {
                let diameter = nodule["diameter_mm"].as_f64().unwrap();
                if diameter < 6.0 {
                    continue;
                }
                truth_nodules += 1;
                let centre = floats(&nodule["center_mm"]);
                let hit = findings.iter().find(|f| {
                    distance(&floats(&f["location"]["patient_mm"]), &centre) <= diameter / 2.0 + 2.0
                });
                if let Some(f) = hit {
                    matched_nodules += 1;
                    let found = floats(&f["location"]["patient_mm"]);
                    assert!(
                        distance(&found, &centre) <= 3.0,
                        "centre {found:?} vs {centre:?}"
                    );
                    // A nodule the segmenter marks only in part is found but measured small:
                    // a model error, counted against the bound below like a miss.
                    let measured = measurement(f, "Diameter");
                    if (measured - diameter).abs() <= 2.0 {
                        measured_nodules += 1;
                    } else {
                        eprintln!("nodule of {diameter:.1} mm found, measured {measured:.1} mm");
                    }
                    let group = sr["groups"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|g| g["tracking_uid"] == f["tracking_uid"])
                        .unwrap();
                    let in_sr = group["measurements"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|m| m["concept"]["meaning"] == "Diameter")
                        .and_then(|m| m["value"].as_f64())
                        .unwrap();
                    assert!(
                        (in_sr - measured).abs() < 1e-3,
                        "SR diameter {in_sr} vs {measured}"
                    );
                }
            }
            let seg_uid = job["seg_sop_instance_uid"]
                .as_str()
                .expect("a SEG was written");
            let (_, series) = get(
                &server,
                &format!("/dicomweb/studies/{study}/series?Modality=SEG"),
            );
            let seg_series = series[0]["0020000E"]["Value"][0].as_str().unwrap();
            let seg_file = dir.path().join("seg.dcm");
            wado_instance(&server, study, seg_series, seg_uid, &seg_file);
            assert_valid_dicom(&seg_file);
            let seg = read_with_highdicom(&seg_file);
            assert_eq!(seg["segments"][0]["label"], "nodule");
            assert!(seg["segments"][0]["pixel_count"].as_i64().unwrap() > 0);
            let total_volume: f64 = findings.iter().map(|f| measurement(f, "Volume")).sum();
            let voxel = floats(&ct["pixel_spacing_mm"]).iter().product::<f64>()
                * ct["spacing_between_slices_mm"].as_f64().unwrap();
            let seg_volume = seg["segments"][0]["pixel_count"].as_f64().unwrap() * voxel;
            assert!(
                (seg_volume - total_volume).abs() <= 0.01 * total_volume,
                "the SEG holds the measured nodules: {seg_volume} vs {total_volume} mm³"
            );
        } else {
            // Radiographs: the labels whose held-out AUC is 0.9996 or more on the model card
            // (consolidation, effusion, cardiomegaly) agree with the truth; the nodule label
            // (below the project's AUC target on the card, small nodules most) is reported,
            // not asserted.
            let present: BTreeSet<&str> = truth["radiograph"]["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["label"].as_str().unwrap())
                .collect();
            let predicted: BTreeMap<&str, bool> = findings
                .iter()
                .map(|f| (f["label"].as_str().unwrap(), f["positive"] == true))
                .collect();
            for label in ["consolidation", "pleural_effusion", "cardiomegaly"] {
                assert_eq!(
                    predicted[label],
                    present.contains(label),
                    "{label} in {}: {findings:?}",
                    study_dir.display()
                );
            }
        }
    }
    eprintln!(
        "nodules ≥ 6 mm found: {matched_nodules} of {truth_nodules}, measured within 2 mm: {measured_nodules}"
    );
    assert!(truth_nodules > 0);
    // The segmenter's candidate reviewer ran on the device for the CT (its stage is timed).
    let text = metrics_text(&server);
    let reviews: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("radserve_stage_duration_seconds_count{")
                && l.contains("model=\"ct-lung-nodule\"")
                && l.contains("stage=\"candidate_review\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(reviews >= 1.0, "no candidate review in /metrics:\n{text}");
    assert!(
        measured_nodules * 2 >= truth_nodules,
        "the demo segmenter finds and measures {measured_nodules} of {truth_nodules} nodules ≥ 6 mm (found: {matched_nodules}; card: sensitivity 0.88)"
    );
}

/// Replaces the UIDs that make an instance part of its study and series.
fn modify(file: &Path, args: &[&str]) {
    let output = dcmtk(
        "dcmodify",
        args.iter().copied().chain([file.to_str().unwrap()]),
    );
    assert!(
        output.status.success(),
        "dcmodify failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_study_the_model_cannot_take_fails_with_its_reason_and_others_proceed() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &[
            "--seed",
            "11",
            "--ct",
            "1",
            "--slices",
            "6",
            "--xray",
            "1",
            "--xray-size",
            "256",
        ],
    );
    // The CT slices lose ImagePositionPatient: nodules cannot be measured.
    let ct_dir = studies(&generated)
        .into_iter()
        .find(|(_, t)| !t["ct"].is_null())
        .unwrap()
        .0;
    for file in dicom_files(&ct_dir) {
        modify(&file, &["-nb", "-ea", "(0020,0032)"]);
    }
    let config = write_config(dir.path(), "");
    let server = serve(&dir.path().join("data"), &config);
    storescu(&server, &generated.join("studies"));
    for (_, truth) in studies(&generated) {
        let study = truth["study_instance_uid"].as_str().unwrap();
        let result = wait_for_jobs(&server, study);
        let job = &result["jobs"][0];
        if truth["ct"].is_null() {
            assert_eq!(job["state"], "done", "the radiograph is not held up: {job}");
        } else {
            assert_eq!(job["state"], "failed", "{job}");
            assert_eq!(job["attempts"], 1, "bad input is not retried: {job}");
            let reason = job["last_error"].as_str().unwrap();
            assert!(reason.contains("ImagePositionPatient"), "{reason}");
            // The study stays in the archive.
            let (status, instances) = get(&server, &format!("/dicomweb/studies/{study}/instances"));
            assert_eq!(status, 200);
            assert_eq!(instances.as_array().unwrap().len(), 6);
        }
    }
}

#[test]
fn kill_9_during_inference_then_every_job_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &["--seed", "21", "--ct", "3", "--slices", "40", "--xray", "0"],
    );
    let data = dir.path().join("data");
    let config = write_config(dir.path(), "");
    let server = serve(&data, &config);
    storescu(&server, &generated.join("studies"));
    // Kill the server while a job runs on the device.
    let deadline = Instant::now() + JOBS_TIMEOUT;
    loop {
        let (_, body) = get(&server, "/api/v1/jobs?state=running");
        if !body["jobs"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no job ever ran: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(server);

    let server = serve(&data, &config);
    let mut tracking = BTreeSet::new();
    for (_, truth) in studies(&generated) {
        let study = truth["study_instance_uid"].as_str().unwrap();
        let result = wait_for_jobs(&server, study);
        let jobs = result["jobs"].as_array().unwrap();
        assert_eq!(
            jobs.len(),
            1,
            "one job per series and model, no duplicate: {result}"
        );
        assert_eq!(jobs[0]["state"], "done", "{result}");
        let (_, all) = get(
            &server,
            &format!("/api/v1/studies/{study}/findings?include_superseded=true"),
        );
        for f in all["findings"].as_array().unwrap() {
            assert_eq!(f["job_id"], jobs[0]["id"]);
            assert!(
                tracking.insert(f["tracking_uid"].as_str().unwrap().to_owned()),
                "a finding stored twice: {f}"
            );
        }
        // One SR, whatever the number of attempts.
        let (_, sr) = get(
            &server,
            &format!("/dicomweb/studies/{study}/series?Modality=SR"),
        );
        assert_eq!(sr.as_array().unwrap().len(), 1, "{sr}");
        let sr_series = sr[0]["0020000E"]["Value"][0].as_str().unwrap();
        let (_, instances) = get(
            &server,
            &format!("/dicomweb/studies/{study}/series/{sr_series}/instances"),
        );
        assert_eq!(instances.as_array().unwrap().len(), 1, "{instances}");
    }
    let (_, running) = get(&server, "/api/v1/jobs");
    let retried = running["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["attempts"].as_i64() > Some(1))
        .count();
    eprintln!("jobs run again after the kill: {retried}");
    assert!(retried >= 1, "the job killed mid-run ran again: {running}");
}

fn metric(text: &str, name: &str, model: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{model=\"{model}\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn metrics_text(server: &RadServe) -> String {
    http_client()
        .get(&server.url("/metrics"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

#[test]
fn concurrent_single_image_requests_share_device_launches() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &[
            "--seed",
            "5",
            "--ct",
            "0",
            "--xray",
            "1",
            "--xray-size",
            "512",
        ],
    );
    let radiograph = dicom_files(&generated.join("studies"))[0].clone();
    let body = std::fs::read(&radiograph).unwrap();
    let config = write_config(dir.path(), "");
    let server = serve(&dir.path().join("data"), &config);
    let model = "chest-xray-findings";
    let before = metric(
        &metrics_text(&server),
        "radserve_inference_batches_total",
        model,
    );

    let requests = 32;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(requests));
    let url = server.url(&format!("/api/v1/infer?model={model}"));
    let answers: Vec<(u16, Option<String>, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..requests)
            .map(|_| {
                let (barrier, url, body) = (barrier.clone(), url.clone(), body.clone());
                scope.spawn(move || {
                    barrier.wait();
                    let mut response = http_client()
                        .post(&url)
                        .header("Authorization", format!("Bearer {TOKEN}"))
                        .header("Content-Type", "application/dicom")
                        .send(&body[..])
                        .unwrap();
                    let timing = response
                        .headers()
                        .get("server-timing")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let status = response.status().as_u16();
                    let text = response.body_mut().read_to_string().unwrap();
                    (status, timing, serde_json::from_str(&text).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = &answers[0].2["findings"];
    for (status, timing, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let timing = timing.as_deref().expect("a Server-Timing header");
        assert!(
            timing.contains("compute;dur=") && timing.contains("queue;dur="),
            "{timing}"
        );
        // The same image gives the same probabilities whatever batch it ran in.
        for (a, b) in body["findings"]
            .as_array()
            .unwrap()
            .iter()
            .zip(first.as_array().unwrap())
        {
            let (pa, pb) = (
                a["finding"]["probability"].as_f64().unwrap(),
                b["finding"]["probability"].as_f64().unwrap(),
            );
            assert!((pa - pb).abs() < 1e-4, "{pa} vs {pb}");
        }
    }
    let launches = metric(
        &metrics_text(&server),
        "radserve_inference_batches_total",
        model,
    ) - before;
    eprintln!("{requests} concurrent requests ran in {launches} device launches");
    assert!(
        launches >= 1.0 && launches < requests as f64,
        "{launches} launches"
    );

    // Bad input: a clear 4xx with a JSON reason, and the server goes on.
    for (content_type, payload, expected) in [
        ("application/dicom", b"not dicom".to_vec(), 422),
        ("text/plain", b"hello".to_vec(), 415),
        (
            "application/json",
            b"{\"study_instance_uid\": \"1.2\"}".to_vec(),
            400,
        ),
    ] {
        let mut response = http_client()
            .post(&url)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", content_type)
            .send(&payload[..])
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "{content_type}");
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let (status, _) = get(&server, "/api/v1/models");
    assert_eq!(status, 200);
}

/// dcmtk's `storescp` as the hospital PACS, killed on drop.
struct Pacs {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Pacs {
    fn start(dir: &Path) -> Pacs {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(dir).unwrap();
        let child = std::process::Command::new("storescp")
            .env("TCP_NODELAY", "1")
            .args(["-aet", "PACS", "+xa", "-od"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("storescp (dcmtk) must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Pacs {
            child,
            port,
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Pacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn results_are_forwarded_to_the_configured_pacs() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &[
            "--seed",
            "9",
            "--ct",
            "0",
            "--xray",
            "1",
            "--xray-size",
            "256",
        ],
    );
    let pacs = Pacs::start(&dir.path().join("pacs"));
    let config = write_config(
        dir.path(),
        &format!(
            "[pipeline.forward]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {}\n",
            pacs.port
        ),
    );
    let server = serve(&dir.path().join("data"), &config);
    storescu(&server, &generated.join("studies"));
    let (_, truth) = studies(&generated).remove(0);
    let study = truth["study_instance_uid"].as_str().unwrap();
    let result = wait_for_jobs(&server, study);
    let job = &result["jobs"][0];
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["timings"]["forward"], "sent 1 to PACS", "{job}");
    let sr_uid = job["sr_sop_instance_uid"].as_str().unwrap();
    // storescp names files after the SOP class and instance, without an extension.
    let received = std::fs::read_dir(&pacs.dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
        .any(|bytes| find(&bytes, sr_uid.as_bytes()));
    assert!(received, "the PACS holds the SR {sr_uid}");
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
