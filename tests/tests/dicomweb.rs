//! DICOMweb end to end: the real binary, the committed sample studies, a plain HTTP
//! client. STOW-RS stores them, QIDO-RS finds them (wildcards, Chinese names, date
//! ranges, ModalitiesInStudy, paging), WADO-RS gives back the same pixels, metadata with
//! BulkDataURIs, rendered PNGs; bad input gets 202/409/413/415/400 with JSON bodies.
//!
//! Every request carries the admin token the server is started with.

use std::path::{Path, PathBuf};

use radserve_tests::{RadServe, http_client, radserve_command, split_multipart};
use serde_json::Value;

const TOKEN: &str = "dicomweb-e2e-token-5b0d7f3c9a";

fn samples_dir() -> PathBuf {
    radserve_tests::workspace_root().join("dicom-samples/studies/studies")
}

/// Every committed sample file, sorted.
fn sample_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for study in std::fs::read_dir(samples_dir()).unwrap() {
        for f in std::fs::read_dir(study.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "dcm") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert_eq!(
        files.len(),
        13,
        "the committed sample set changed: {files:?}"
    );
    files
}

fn start(data: &Path, config: Option<&Path>) -> RadServe {
    let mut cmd = radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", TOKEN)
        .arg("serve")
        .args(["--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(data);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    RadServe::start(cmd)
}

struct Reply {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }
}

/// A POST that announces `length` body bytes with `Expect: 100-continue` and sends none of
/// them: (status, body) of the final answer. A server that wants the body answers 100
/// first and then waits, and the read times out.
fn post_announced_only(
    server: &RadServe,
    path: &str,
    content_type: &str,
    length: usize,
) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Accept: application/dicom+json\r\nContent-Type: {content_type}\r\n\
         Content-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("POST {path} (announced only): {e}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response head: {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a refusal from the headers alone has a sized body: {head:?}"
    );
    (status, body.as_bytes().to_vec())
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Reply {
    let mut response = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{what}: cannot read body: {e}"));
    Reply {
        status: response.status().as_u16(),
        content_type,
        headers,
        body,
    }
}

fn get(server: &RadServe, path: &str, accept: &str) -> Reply {
    let url = server.url(path);
    let request = http_client()
        .get(&url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Accept", accept);
    reply(request.call(), &format!("GET {url}"))
}

fn post(server: &RadServe, path: &str, content_type: &str, body: &[u8]) -> Reply {
    let url = server.url(path);
    let request = http_client()
        .post(&url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Accept", "application/dicom+json")
        .header("Content-Type", content_type);
    reply(request.send(body), &format!("POST {url}"))
}

const BOUNDARY: &str = "e2e-boundary-7d1f";

fn stow_content_type() -> String {
    format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}")
}

fn multipart(parts: &[Vec<u8>]) -> Vec<u8> {
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

fn pixel_data_of(bytes: &[u8]) -> Vec<u8> {
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(bytes)
        .expect("a Part 10 file");
    obj.element_by_name("PixelData")
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned()
}

fn uid_of(path: &Path, name: &str) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    obj.element_by_name(name)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

fn values(result: &Value, tag: &str) -> Vec<Value> {
    result[tag]["Value"].as_array().cloned().unwrap_or_default()
}

fn study_uids(results: &Value) -> Vec<String> {
    let mut uids: Vec<String> = results
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {results}"))
        .iter()
        .map(|r| values(r, "0020000D")[0].as_str().unwrap().to_owned())
        .collect();
    uids.sort();
    uids
}

fn stow_all(server: &RadServe) -> Value {
    let parts: Vec<Vec<u8>> = sample_files()
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let r = post(
        server,
        "/dicomweb/studies",
        &stow_content_type(),
        &multipart(&parts),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.content_type.starts_with("application/dicom+json"),
        "{}",
        r.content_type
    );
    r.json()
}

#[test]
fn stow_then_qido_and_wado_round_trip() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), None);
    let files = sample_files();

    let stored = stow_all(&server);
    let referenced = values(&stored, "00081199");
    assert_eq!(referenced.len(), files.len(), "{stored}");
    assert!(stored.get("00081198").is_none(), "{stored}");
    // Parts are stored several at a time; the response still lists them in part order.
    let sent: Vec<String> = files
        .iter()
        .map(|f| {
            let obj = dicom_object::open_file(f).unwrap();
            obj.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0')
                .to_owned()
        })
        .collect();
    let listed: Vec<String> = referenced
        .iter()
        .map(|item| values(item, "00081155")[0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, sent);
    for item in &referenced {
        let url = values(item, "00081190")[0].as_str().unwrap().to_owned();
        assert!(url.starts_with(&server.url("/dicomweb/studies/")), "{url}");
    }

    let qido = |q: &str| {
        let r = get(
            &server,
            &format!("/dicomweb/studies?{q}"),
            "application/dicom+json",
        );
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
        r
    };

    // Four studies; the study attributes and counts come back.
    let all = qido("").json();
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    let ct_study = uid_of(&files[0], "StudyInstanceUID");
    let ct = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| values(s, "0020000D")[0] == ct_study.as_str())
        .unwrap();
    assert_eq!(
        values(ct, "00201208")[0],
        10,
        "NumberOfStudyRelatedInstances: {ct}"
    );
    assert_eq!(values(ct, "00080061"), vec![Value::from("CT")]);
    assert!(
        values(ct, "00081190")[0]
            .as_str()
            .unwrap()
            .ends_with(&format!("/studies/{ct_study}"))
    );

    // PatientName: wildcard, case-insensitive; the Chinese name (GB18030 and UTF-8
    // files) decoded and matched.
    let wu = qido("PatientName=wu*").json();
    assert_eq!(wu.as_array().unwrap().len(), 2, "{wu}");
    let name = &values(&wu[0], "00100010")[0];
    assert_eq!(name["Alphabetic"], "Wu^Xiaodong", "{name}");
    assert_eq!(name["Ideographic"], "吴^小东", "{name}");
    let chinese = qido("PatientName=*%E5%90%B4*").json(); // *吴*
    assert_eq!(study_uids(&chinese), study_uids(&wu));
    assert_eq!(qido("PatientName=NOV*").json().as_array().unwrap().len(), 1);
    assert_eq!(qido("PatientName=nobody*").json(), Value::Array(vec![]));

    // Date ranges.
    let summer = qido("StudyDate=20260701-20260930").json();
    assert_eq!(summer.as_array().unwrap().len(), 2, "{summer}");
    assert!(study_uids(&summer).contains(&ct_study));
    assert_eq!(
        qido("StudyDate=-20260630").json().as_array().unwrap().len(),
        1
    );
    assert_eq!(qido("StudyDate=20270101-").json(), Value::Array(vec![]));
    // A date range with a time range is one date-time range: from 8 June 10:00 to
    // 15 September 12:00 holds the DX of 8 June 13:29 and the CR of 15 July, not the CT of
    // 15 September 17:17 (matched apart, no study lies between 10:00 and 12:00).
    let span = qido("StudyDate=20260608-20260915&StudyTime=1000-1200").json();
    let mut dates: Vec<String> = span
        .as_array()
        .unwrap()
        .iter()
        .map(|s| values(s, "00080020")[0].as_str().unwrap().to_owned())
        .collect();
    dates.sort();
    assert_eq!(dates, ["20260608", "20260715"], "{span}");

    // ModalitiesInStudy.
    assert_eq!(
        study_uids(&qido("ModalitiesInStudy=CT").json()),
        vec![ct_study.clone()]
    );
    assert_eq!(
        qido("ModalitiesInStudy=DX")
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Paging: 2 + 2 = all four, and the first page says there is more.
    let first = qido("limit=2");
    assert!(
        first
            .headers
            .iter()
            .any(|(k, v)| k == "warning" && v.contains("more results")),
        "{:?}",
        first.headers
    );
    let mut paged = study_uids(&first.json());
    paged.extend(study_uids(&qido("limit=2&offset=2").json()));
    paged.sort();
    assert_eq!(paged, study_uids(&all));
    assert_eq!(qido("offset=4").json(), Value::Array(vec![]));

    // Series and instances of the CT.
    let series = get(
        &server,
        &format!("/dicomweb/studies/{ct_study}/series"),
        "application/dicom+json",
    )
    .json();
    assert_eq!(series.as_array().unwrap().len(), 1, "{series}");
    let ct_series = uid_of(&files[0], "SeriesInstanceUID");
    let instances = get(
        &server,
        &format!("/dicomweb/studies/{ct_study}/series/{ct_series}/instances"),
        "application/dicom+json",
    )
    .json();
    assert_eq!(instances.as_array().unwrap().len(), 10);

    // WADO-RS: the series comes back as Part 10 files with the pixels sent.
    let r = get(
        &server,
        &format!("/dicomweb/studies/{ct_study}/series/{ct_series}"),
        "multipart/related; type=\"application/dicom\"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let parts = split_multipart(&r.content_type, &r.body);
    assert_eq!(parts.len(), 10);
    let mut sent: Vec<Vec<u8>> = files[..10]
        .iter()
        .map(|f| pixel_data_of(&std::fs::read(f).unwrap()))
        .collect();
    let mut got: Vec<Vec<u8>> = parts.iter().map(|p| pixel_data_of(p)).collect();
    sent.sort();
    got.sort();
    assert!(
        sent == got,
        "retrieved pixel data differs from what was sent"
    );

    // Metadata: BulkDataURI, not InlineBinary, for PixelData; the URI serves the pixels.
    let sop = uid_of(&files[0], "SOPInstanceUID");
    let instance_path = format!("/dicomweb/studies/{ct_study}/series/{ct_series}/instances/{sop}");
    let meta = get(
        &server,
        &format!("{instance_path}/metadata"),
        "application/dicom+json",
    );
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    let pixel = &meta[0]["7FE00010"];
    assert!(pixel.get("InlineBinary").is_none(), "{pixel}");
    let uri = pixel["BulkDataURI"]
        .as_str()
        .unwrap_or_else(|| panic!("{pixel}"));
    assert_eq!(meta[0]["00100010"]["Value"][0]["Ideographic"], "吴^小东");
    let bulk_path = uri.strip_prefix(&server.url("")).unwrap_or(uri).to_owned();
    let bulk = get(
        &server,
        &bulk_path,
        "multipart/related; type=\"application/octet-stream\"",
    );
    assert_eq!(bulk.status, 200, "{}", String::from_utf8_lossy(&bulk.body));
    let original = pixel_data_of(&std::fs::read(&files[0]).unwrap());
    assert!(split_multipart(&bulk.content_type, &bulk.body)[0] == original);
    // So do frames (native pixel data).
    let frame = get(
        &server,
        &format!("{instance_path}/frames/1"),
        "multipart/related; type=\"application/octet-stream\"",
    );
    assert_eq!(frame.status, 200);
    assert!(split_multipart(&frame.content_type, &frame.body)[0] == original);

    // Rendered: a PNG of the image's size; a thumbnail is small; JPEG by default.
    let png = get(&server, &format!("{instance_path}/rendered"), "image/png");
    assert_eq!((png.status, png.content_type.as_str()), (200, "image/png"));
    let image = image::load_from_memory(&png.body).unwrap();
    assert_eq!((image.width(), image.height()), (512, 512));
    let jpeg = get(&server, &format!("{instance_path}/thumbnail"), "*/*");
    assert_eq!(
        (jpeg.status, jpeg.content_type.as_str()),
        (200, "image/jpeg")
    );
    let thumb = image::load_from_memory(&jpeg.body).unwrap();
    assert!(thumb.width() <= 128 && thumb.height() <= 128);
    let windowed = get(
        &server,
        &format!("{instance_path}/rendered?window=0,1,LINEAR_EXACT"),
        "image/png",
    );
    assert_eq!(windowed.status, 200);
    assert_eq!(
        get(&server, &format!("{instance_path}/rendered"), "image/gif").status,
        406
    );

    // 404 and 406 with JSON bodies.
    let missing = get(
        &server,
        "/dicomweb/studies/1.2.3.4/metadata",
        "application/dicom+json",
    );
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
    let xml = get(
        &server,
        &format!("{instance_path}/metadata"),
        "application/dicom+xml",
    );
    assert_eq!(xml.status, 406);
    assert!(xml.json()["error"].is_string());
}

#[test]
fn stow_with_a_bad_part_stores_the_good_ones() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), None);
    let files = sample_files();
    let (dx, cr) = (&files[10], &files[12]);
    let good_a = std::fs::read(dx).unwrap();
    let good_b = std::fs::read(cr).unwrap();
    let mut truncated = good_a.clone();
    truncated.truncate(300);
    let body = multipart(&[good_a, b"this is not DICOM".to_vec(), good_b, truncated]);
    let r = post(&server, "/dicomweb/studies", &stow_content_type(), &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let json = r.json();
    assert_eq!(values(&json, "00081199").len(), 2, "{json}");
    let failed = values(&json, "00081198");
    assert_eq!(failed.len(), 2, "{json}");
    for item in &failed {
        assert_eq!(values(item, "00081197")[0], 0xC000, "{item}");
    }
    // The good ones are stored and found.
    for f in [dx, cr] {
        let study = uid_of(f, "StudyInstanceUID");
        let found = get(
            &server,
            &format!("/dicomweb/studies?StudyInstanceUID={study}"),
            "application/dicom+json",
        )
        .json();
        assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    }

    // Storing into a study the instance is not part of: failed with 0xA900, nothing stored.
    let ct = &files[0];
    let other_study = uid_of(dx, "StudyInstanceUID");
    let r = post(
        &server,
        &format!("/dicomweb/studies/{other_study}"),
        &stow_content_type(),
        &multipart(&[std::fs::read(ct).unwrap()]),
    );
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let failed = values(&r.json(), "00081198");
    assert_eq!(values(&failed[0], "00081197")[0], 0xA900);
    assert_eq!(
        values(&failed[0], "00081155")[0],
        uid_of(ct, "SOPInstanceUID").as_str()
    );
    let ct_study = uid_of(ct, "StudyInstanceUID");
    let none = get(
        &server,
        &format!("/dicomweb/studies?StudyInstanceUID={ct_study}"),
        "application/dicom+json",
    )
    .json();
    assert_eq!(none, Value::Array(vec![]));
}

#[test]
fn bad_requests_get_clear_json_errors() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("radserve.toml");
    std::fs::write(&config, "[http]\nmax_body_mb = 1\n").unwrap();
    let server = start(&data.path().join("data"), Some(&config));

    // 415: not multipart/related; type="application/dicom".
    for ct in [
        "application/json",
        "multipart/related; type=\"application/dicom+json\"; boundary=x",
    ] {
        let r = post(&server, "/dicomweb/studies", ct, b"{}");
        assert_eq!(r.status, 415, "{ct}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("multipart/related")
        );
    }

    // 413: over http.max_body_mb, refused from the declared length alone. The body is held
    // back (`Expect: 100-continue`): a client that sends it anyway can lose the answer to
    // the server's close (a reset discards unread data), which is not what is tested here.
    let (status, body) = post_announced_only(
        &server,
        "/dicomweb/studies",
        &stow_content_type(),
        (1 << 20) + 1000,
    );
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let error: Value = serde_json::from_slice(&body).expect("413 body is JSON");
    assert!(error["error"].as_str().unwrap().contains("limit"));

    // 400: malformed date, unknown attribute, bad limit.
    for q in [
        "StudyDate=2026-13-45",
        "StudyDate=20261399",
        "NoSuchAttribute=1",
        "limit=abc",
    ] {
        let r = get(
            &server,
            &format!("/dicomweb/studies?{q}"),
            "application/dicom+json",
        );
        assert_eq!(r.status, 400, "{q}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["error"].is_string(), "{q}");
    }
    // An empty archive answers an empty list.
    let r = get(&server, "/dicomweb/studies", "application/dicom+json");
    assert_eq!((r.status, r.json()), (200, Value::Array(vec![])));
    // Nothing to retrieve.
    let r = get(
        &server,
        "/dicomweb/studies/1.2.3",
        "multipart/related; type=\"application/dicom\"",
    );
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
}
