//! Robustness end to end, against the real binary: a corpus of broken files
//! (`radserve_tests::corpus`) through STOW-RS and DIMSE never kills the server, is refused
//! file by file, and leaves exactly the valid files sent alongside; and a `kill -9` in the
//! middle of a `storescu` transfer loses no instance that was acknowledged.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use radserve_tests::corpus::{Broken, broken_corpus};
use radserve_tests::{RadServe, RawScu, http_client, radserve_command, workspace_root};
use serde_json::Value;

const TOKEN: &str = "robustness-admin-token-0123456789";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const BOUNDARY: &str = "robustness-boundary-3c9a";

fn start(data: &Path) -> RadServe {
    let mut cmd = radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", TOKEN)
        .arg("serve")
        .args(["--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(data);
    RadServe::start(cmd)
}

fn samples(dir: &str) -> Vec<PathBuf> {
    let mut files = radserve_tests::dicom_files(
        &workspace_root()
            .join("dicom-samples/studies/studies")
            .join(dir),
    );
    files.sort();
    assert!(!files.is_empty(), "no samples in {dir}");
    files
}

/// (status, content type, body) of an authorised GET.
fn get_typed(url: &str, accept: &str) -> (u16, String, Vec<u8>) {
    let mut response = http_client()
        .get(url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Accept", accept)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("GET {url}: cannot read body: {e}"));
    (response.status().as_u16(), content_type, body)
}

/// The first part of a multipart/related body.
fn first_part<'a>(content_type: &str, body: &'a [u8]) -> Option<&'a [u8]> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let start = find(body, delimiter.as_bytes(), 0)?;
    let headers_end = find(body, b"\r\n\r\n", start)? + 4;
    let end = find(body, format!("\r\n{delimiter}").as_bytes(), headers_end)?;
    body.get(headers_end..end)
}

/// (status, body) of an authorised request.
fn request(method: &str, url: &str, accept: &str, body: Option<(&str, &[u8])>) -> (u16, Vec<u8>) {
    let agent = http_client();
    let auth = format!("Bearer {TOKEN}");
    let result = match (method, body) {
        ("POST", Some((content_type, bytes))) => agent
            .post(url)
            .header("Authorization", &auth)
            .header("Accept", accept)
            .header("Content-Type", content_type)
            .send(bytes),
        _ => agent
            .get(url)
            .header("Authorization", &auth)
            .header("Accept", accept)
            .call(),
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {url}: cannot read body: {e}"));
    (status, body)
}

fn json(status: u16, body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "status {status}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        )
    })
}

fn values(item: &Value, tag: &str) -> Vec<Value> {
    item[tag]["Value"].as_array().cloned().unwrap_or_default()
}

fn multipart(parts: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// STOW-RS `parts`; returns (stored, failed) counts from the response.
fn stow(server: &RadServe, parts: &[&[u8]]) -> (usize, usize) {
    let content_type =
        format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
    let (status, body) = request(
        "POST",
        &server.url("/dicomweb/studies"),
        "application/dicom+json",
        Some((&content_type, &multipart(parts))),
    );
    assert!(
        matches!(status, 200 | 202 | 409),
        "STOW status {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let response = json(status, &body);
    (
        values(&response, "00081199").len(),
        values(&response, "00081198").len(),
    )
}

/// Whether process `pid` (our child) is running: a dead child stays a zombie (state Z)
/// until the harness reaps it.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Asserts the process is alive and `/health/live` answers 200.
fn assert_alive(server: &RadServe, after: &str) {
    assert!(
        is_running(server.pid()),
        "radserve died after {after}; stderr:\n{}",
        server.stderr()
    );
    let (status, _) = request("GET", &server.url("/health/live"), "application/json", None);
    assert_eq!(status, 200, "health/live after {after}");
}

fn study_uids(server: &RadServe) -> Vec<String> {
    let (status, body) = request(
        "GET",
        &server.url("/dicomweb/studies?limit=1000"),
        "application/dicom+json",
        None,
    );
    let mut uids: Vec<String> = match status {
        204 => Vec::new(),
        200 => json(status, &body)
            .as_array()
            .unwrap_or_else(|| panic!("QIDO: not an array"))
            .iter()
            .map(|r| {
                values(r, "0020000D")[0]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect(),
        other => panic!("QIDO status {other}: {}", String::from_utf8_lossy(&body)),
    };
    uids.sort();
    uids
}

/// The value of a top-level explicit VR LE element of a Part 10 file (UIDs of samples).
fn uid_in(file: &[u8], group: u16, element: u16) -> String {
    let elements = radserve_tests::corpus::elements(file).expect("explicit VR LE Part 10 file");
    let e = elements
        .iter()
        .find(|e| (e.group, e.element) == (group, element))
        .unwrap_or_else(|| panic!("({group:04X},{element:04X}) missing"));
    String::from_utf8_lossy(&file[e.value_at..e.value_at + e.len as usize])
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

#[test]
fn broken_files_are_refused_one_by_one_and_the_server_survives() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());

    // Broken files are derived from CT study files only; the valid files sent alongside
    // are from the other studies, so a wrongly accepted broken file would show up in QIDO.
    let ct = samples("0001_CT");
    let sources: Vec<(String, Vec<u8>)> = ct[..2]
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(p).unwrap(),
            )
        })
        .collect();
    let corpus: Vec<Broken> = broken_corpus(&sources, 0x5EED_2026);
    assert!(corpus.len() > 100, "corpus of {}", corpus.len());
    let valid_stow: Vec<Vec<u8>> = [samples("0002_DX"), samples("0003_DX")]
        .concat()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let valid_dimse = std::fs::read(&samples("0004_CR")[0]).unwrap();

    // STOW-RS: batches of broken parts, a valid part in the first two.
    for (i, batch) in corpus.chunks(12).enumerate() {
        let mut parts: Vec<&[u8]> = batch.iter().map(|b| b.file.as_slice()).collect();
        let valid = valid_stow.get(i).map(Vec::as_slice);
        if let Some(v) = valid {
            parts.insert(batch.len() / 2, v);
        }
        let names: Vec<&str> = batch.iter().map(|b| b.name.as_str()).collect();
        let (stored, failed) = stow(&server, &parts);
        assert_eq!(
            (stored, failed),
            (usize::from(valid.is_some()), batch.len()),
            "STOW batch {names:?}"
        );
        assert_alive(&server, &format!("STOW batch {names:?}"));
    }

    // DIMSE: every broken data set in its own C-STORE (an association per file, so a
    // server that aborts one still has to answer the next), then the valid CR.
    let mut dimse_cases = 0;
    for broken in corpus.iter().filter(|b| b.data_set.is_some()) {
        let data_set = broken.data_set.as_deref().unwrap_or_default();
        let mut scu = RawScu::associate(
            server.dicom_port,
            "RADSERVE",
            "ROBUSTNESS",
            &[(1, broken.sop_class.as_str(), &[EXPLICIT_LE])],
        )
        .unwrap_or_else(|e| panic!("associate for {}: {e}", broken.name));
        match scu.c_store(
            1,
            1,
            &broken.sop_class,
            &broken.sop_instance,
            data_set,
            16000,
        ) {
            Ok((status, comment)) => {
                assert!(
                    matches!(status & 0xF000, 0xA000 | 0xC000) || status == 0x0122,
                    "{}: status {status:#06x} ({comment:?}) is not a failure",
                    broken.name
                );
                let _ = scu.release();
            }
            // Aborting the association is an acceptable refusal; the server must live on.
            Err(e) => eprintln!("{}: association ended: {e}", broken.name),
        }
        dimse_cases += 1;
        if dimse_cases % 20 == 0 {
            assert_alive(&server, &broken.name);
        }
    }
    assert!(dimse_cases > 80, "{dimse_cases} DIMSE cases");
    let cr_class = uid_in(&valid_dimse, 0x0002, 0x0002);
    let cr_instance = uid_in(&valid_dimse, 0x0002, 0x0003);
    let cr_start = radserve_tests::corpus::data_set_start(
        &radserve_tests::corpus::elements(&valid_dimse).unwrap(),
    )
    .unwrap();
    let mut scu = RawScu::associate(
        server.dicom_port,
        "RADSERVE",
        "ROBUSTNESS",
        &[(1, cr_class.as_str(), &[EXPLICIT_LE])],
    )
    .unwrap();
    let (status, comment) = scu
        .c_store(
            1,
            1,
            &cr_class,
            &cr_instance,
            &valid_dimse[cr_start..],
            16000,
        )
        .unwrap();
    assert_eq!(status, 0, "valid CR: {comment:?}");
    scu.release().unwrap();
    assert_alive(&server, "the DIMSE corpus");

    // Exactly the valid files' studies, and nothing else.
    let mut expected: Vec<String> = valid_stow
        .iter()
        .chain([&valid_dimse])
        .map(|f| uid_in(f, 0x0020, 0x000D))
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(study_uids(&server), expected);
    let (status, body) = request(
        "GET",
        &server.url("/dicomweb/instances?limit=1000"),
        "application/dicom+json",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(json(status, &body).as_array().map(Vec::len), Some(3));

    // The server keeps a few empty files ready for the next uploads (at most 4); anything
    // else in tmp/ is an upload left behind.
    let tmp_left: Vec<_> = std::fs::read_dir(data.path().join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let left_behind: Vec<_> = tmp_left
        .iter()
        .filter(|p| std::fs::metadata(p).map_or(true, |m| !m.is_file() || m.len() > 0))
        .collect();
    assert!(
        left_behind.is_empty() && tmp_left.len() <= 4,
        "left in tmp/: {tmp_left:?}"
    );
    let log = server.stderr();
    assert!(!log.contains("panicked"), "server log has a panic:\n{log}");
}

/// The (study, series, instance) UIDs of a Part 10 file.
fn instance_uids(path: &Path) -> (String, String, String) {
    let file = std::fs::read(path).unwrap();
    (
        uid_in(&file, 0x0020, 0x000D),
        uid_in(&file, 0x0020, 0x000E),
        uid_in(&file, 0x0008, 0x0018),
    )
}

/// WADO-RS instance GET: 200 and the returned Part 10 file has `sop` as its SOP Instance
/// UID.
fn assert_retrievable(server: &RadServe, (study, series, sop): (&str, &str, &str)) {
    let (status, content_type, body) = get_typed(
        &server.url(&format!(
            "/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        )),
        "multipart/related; type=\"application/dicom\"",
    );
    assert_eq!(
        status,
        200,
        "instance {sop}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let part = first_part(&content_type, &body)
        .unwrap_or_else(|| panic!("instance {sop}: no part in a {content_type} response"));
    assert_eq!(
        uid_in(part, 0x0008, 0x0018),
        sop,
        "instance {sop}: other bytes returned"
    );
}

#[test]
fn kill_9_during_storescu_loses_no_acknowledged_instance() {
    const SLICES: usize = 60;
    let work = tempfile::tempdir().unwrap();
    let mut options = dicom_samples::generate::GenerateOptions::new(work.path().join("ct"));
    options.ct_studies = 1;
    options.xray_studies = 0;
    options.ct_slices = SLICES;
    options.seed = 9;
    dicom_samples::generate::generate(&options, &|| {}).expect("generate a CT series");
    let files = radserve_tests::dicom_files(&work.path().join("ct"));
    assert_eq!(files.len(), SLICES);

    let data = work.path().join("data");
    let server = start(&data);
    let program = if Path::new("/usr/bin/storescu").exists() {
        "/usr/bin/storescu"
    } else {
        "storescu"
    };
    let mut storescu = Command::new(program)
        .env("TCP_NODELAY", "1")
        .args(["-v", "-aec", "RADSERVE", "-aet", "DURABILITY", "127.0.0.1"])
        .arg(server.dicom_port.to_string())
        .args(&files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run storescu (dcmtk): {e}"));
    // storescu -v logs to stderr: "Sending file: <path>" before each request, then
    // "Received Store Response (Success)" when that file was acknowledged.
    let log = storescu.stderr.take().unwrap();
    let mut sending: Option<PathBuf> = None;
    let mut acknowledged: Vec<PathBuf> = Vec::new();
    let mut transcript = String::new();
    let mut killed = false;
    for line in std::io::BufReader::new(log).lines() {
        let Ok(line) = line else { break };
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(path) = line.split_once("Sending file: ").map(|(_, p)| p.trim()) {
            sending = Some(PathBuf::from(path));
        } else if line.contains("Received Store Response (Success)") {
            acknowledged.extend(sending.take());
            if acknowledged.len() == 8 && !killed {
                let status = Command::new("kill")
                    .args(["-9", &server.pid().to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
                killed = true;
            }
        } else if line.contains("Received Store Response") {
            sending = None;
        }
    }
    let _ = storescu.wait();
    assert!(killed, "storescu finished before the kill:\n{transcript}");
    assert!(acknowledged.len() >= 8, "{transcript}");
    assert!(
        acknowledged.len() < SLICES,
        "every slice was acknowledged before the kill took effect:\n{transcript}"
    );
    drop(server);

    let server = start(&data);
    for path in &acknowledged {
        let (study, series, sop) = instance_uids(path);
        assert_retrievable(&server, (&study, &series, &sop));
    }
    let (status, body) = request(
        "GET",
        &server.url("/dicomweb/instances?limit=1000"),
        "application/dicom+json",
        None,
    );
    let listed = match status {
        204 => Vec::new(),
        200 => json(status, &body).as_array().cloned().unwrap_or_default(),
        other => panic!("QIDO status {other}"),
    };
    assert!(
        listed.len() >= acknowledged.len(),
        "QIDO lists {} instances, {} were acknowledged",
        listed.len(),
        acknowledged.len()
    );
    for item in &listed {
        let uid = |tag: &str| values(item, tag)[0].as_str().unwrap_or_default().to_owned();
        let (study, series, sop) = (uid("0020000D"), uid("0020000E"), uid("00080018"));
        assert_retrievable(&server, (&study, &series, &sop));
    }
    let log = server.stderr();
    assert!(!log.contains("panicked"), "server log has a panic:\n{log}");
}
