//! Authentication, roles, audit and metrics end to end: tokens made with `radserve token
//! create`, every operation of the served OpenAPI document called with no token and with
//! each role, the audit trail an admin reads, and a log free of patient names and IDs.

use std::path::Path;
use std::process::Output;

use radserve_tests::{RadServe, http_client, radserve_command, run_to_exit, workspace_root};
use serde_json::Value;

const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";
const ROLES: [&str; 4] = ["pacs", "clinician", "ml", "admin"];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `radserve token create --role ROLE --label LABEL --data DATA`.
fn token_create(data: &Path, role: &str, label: &str) -> Output {
    run_to_exit(
        radserve_command()
            .args([
                "token", "create", "--role", role, "--label", label, "--data",
            ])
            .arg(data),
    )
}

/// Creates a token and returns it (the one line on stdout).
fn new_token(data: &Path, role: &str, label: &str) -> String {
    let output = token_create(data, role, label);
    assert!(
        output.status.success(),
        "token create failed: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout holds only the token: {stdout:?}");
    lines[0].to_owned()
}

fn start(data: &Path) -> RadServe {
    let mut cmd = radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(["serve", "--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(data);
    RadServe::start(cmd)
}

struct Reply {
    status: u16,
    www_authenticate: Option<String>,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// One request with an optional bearer token and body.
fn call(
    server: &RadServe,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(server.url(path));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let sent = if method == "POST" || method == "PUT" {
        let (content_type, bytes) = body.unwrap_or(("application/octet-stream", Vec::new()));
        let request = request.header("Content-Type", content_type);
        http_client().run(request.body(bytes).expect("a valid request"))
    } else {
        // ureq sends no body with GET, HEAD or DELETE.
        http_client().run(request.body(()).expect("a valid request"))
    };
    let mut response = sent.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let www_authenticate = header("www-authenticate");
    let content_type = header("content-type").unwrap_or_default();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {path}: cannot read body: {e}"));
    Reply {
        status: response.status().as_u16(),
        www_authenticate,
        content_type,
        body: text(&body),
    }
}

fn get(server: &RadServe, path: &str, token: Option<&str>) -> Reply {
    call(server, "GET", path, token, None)
}

const BOUNDARY: &str = "radserve-e2e-auth-boundary";

fn stow_body(files: &[Vec<u8>]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for file in files {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (
        format!(r#"multipart/related; type="application/dicom"; boundary={BOUNDARY}"#),
        body,
    )
}

/// Path parameters replaced by plausible values (UIDs, a frame number, a tag).
fn fill_path(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{frames}" | "{frame}" => "1",
            "{tag}" => "7FE00010",
            s if s.starts_with('{') => "1.2.3",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn token_create_prints_a_token_that_then_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let output = token_create(&data, "clinician", "e2e viewer");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = text(&output.stdout).trim().to_owned();
    assert!(token.starts_with("rs_") && token.len() == 67, "{token:?}");
    let said = text(&output.stderr);
    assert!(
        said.contains("role clinician") && said.contains("only this once"),
        "{said}"
    );

    // Usage errors exit 2 and store nothing.
    let bad = token_create(&data, "root", "");
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("pacs, clinician, ml, admin"));

    let server = start(&data);
    let reply = get(&server, "/dicomweb/studies", Some(&token));
    assert!(
        reply.status == 200 || reply.status == 204,
        "{} {}",
        reply.status,
        reply.body
    );
    assert_eq!(get(&server, "/dicomweb/studies", None).status, 401);
    // Only the hash is stored: a token one character off is refused.
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push(if token.ends_with('0') { '1' } else { '0' });
    let reply = get(&server, "/dicomweb/studies", Some(&wrong));
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.json()["error"], "invalid or revoked token");

    // A token created while the server runs works at once.
    let ml = new_token(&data, "ml", "");
    let reply = get(&server, "/metrics", Some(&ml));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(get(&server, "/metrics", Some(&token)).status, 403);

    let data_files = walk(&data);
    for file in &data_files {
        let bytes = std::fs::read(file).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token itself is stored in {}",
            file.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn every_documented_operation_needs_a_token_of_an_allowed_role() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tokens: Vec<(&str, String)> = ROLES
        .iter()
        .map(|role| (*role, new_token(&data, role, &format!("e2e-{role}"))))
        .collect();
    let server = start(&data);

    let reply = get(&server, "/api/v1/openapi.json", Some(ADMIN_TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.content_type.starts_with("application/json"));
    let doc = reply.json();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{:?}", paths.keys().collect::<Vec<_>>());

    let mut checked = 0;
    for (template, item) in paths {
        for method in ["get", "put", "post", "delete", "patch", "head"] {
            let Some(op) = item.get(method) else { continue };
            let method = method.to_uppercase();
            let path = fill_path(template);
            let what = format!("{method} {path}");
            let security = op["security"]
                .as_array()
                .expect("every operation states security");
            let anonymous = call(&server, &method, &path, None, None);
            if security.is_empty() {
                assert!(template.starts_with("/health/"), "{what} is public");
                assert_ne!(anonymous.status, 401, "{what}");
                continue;
            }
            assert_eq!(anonymous.status, 401, "{what}: {}", anonymous.body);
            assert!(
                anonymous
                    .www_authenticate
                    .as_deref()
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{what}: no WWW-Authenticate: Bearer"
            );
            assert!(anonymous.json()["error"].is_string(), "{what}");

            let allowed: Vec<&str> = security[0]["bearer"]
                .as_array()
                .expect("roles listed")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(allowed.contains(&"admin"), "{what}: {allowed:?}");
            for (role, token) in &tokens {
                let reply = call(&server, &method, &path, Some(token), None);
                if allowed.contains(role) {
                    assert!(
                        reply.status != 401 && reply.status != 403,
                        "{what} as {role}: {} {}",
                        reply.status,
                        reply.body
                    );
                } else {
                    assert_eq!(reply.status, 403, "{what} as {role}: {}", reply.body);
                    assert!(reply.json()["error"].is_string(), "{what} as {role}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations checked");

    // The two cases the issue names, explicitly.
    let pacs = &tokens[0].1;
    let clinician = &tokens[1].1;
    assert_eq!(get(&server, "/dicomweb/studies", Some(pacs)).status, 403);
    let (content_type, body) = stow_body(&[]);
    let reply = call(
        &server,
        "POST",
        "/dicomweb/studies",
        Some(clinician),
        Some((&content_type, body)),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    // Health stays open.
    assert_eq!(get(&server, "/health/live", None).status, 200);
}

/// The patient (name, ID) and the files of the committed sample study in `dir`.
fn committed_study(dir: &str) -> (String, String, String, Vec<Vec<u8>>) {
    let root = workspace_root().join("dicom-samples/studies");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("manifest.json")).unwrap())
            .unwrap();
    let study = manifest["studies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["directory"] == format!("studies/{dir}"))
        .expect("study in manifest");
    let patient = &manifest["patients"][study["patient_index"].as_u64().unwrap() as usize];
    let mut files: Vec<_> = std::fs::read_dir(root.join("studies").join(dir))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    (
        patient["name"]["given"].as_str().unwrap().to_owned(),
        patient["name"]["family"].as_str().unwrap().to_owned(),
        patient["patient_id"].as_str().unwrap().to_owned(),
        files
            .iter()
            .take(2)
            .map(|f| std::fs::read(f).unwrap())
            .collect(),
    )
}

#[test]
fn admin_reads_the_audit_trail_and_the_log_holds_no_patient_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let clinician = new_token(&data, "clinician", "e2e-clinician");
    let ml = new_token(&data, "ml", "e2e-ml");
    let mut server = start(&data);

    let (given, family, patient_id, files) = committed_study("0001_CT");
    let (content_type, body) = stow_body(&files);
    let reply = call(
        &server,
        "POST",
        "/dicomweb/studies",
        Some(ADMIN_TOKEN),
        Some((&content_type, body)),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A search by patient ID and name: the query string holds both.
    let reply = get(
        &server,
        &format!("/dicomweb/studies?PatientID={patient_id}&PatientName={family}*"),
        Some(&clinician),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json().as_array().map(Vec::len),
        Some(1),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains(&given),
        "the QIDO answer carries the name"
    );
    let study_uid = reply.json()[0]["0020000D"]["Value"][0]
        .as_str()
        .expect("StudyInstanceUID")
        .to_owned();
    let reply = get(
        &server,
        &format!("/dicomweb/studies/{study_uid}/metadata"),
        Some(&clinician),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A refused read is audited too.
    let pacs = new_token(&data, "pacs", "e2e-pacs");
    assert_eq!(get(&server, "/dicomweb/studies", Some(&pacs)).status, 403);

    // Only admins read the trail.
    assert_eq!(get(&server, "/api/v1/audit", Some(&clinician)).status, 403);
    let reply = get(&server, "/api/v1/audit?limit=10", Some(ADMIN_TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let page = reply.json();
    let records = page["records"].as_array().expect("records");
    let find = |user: &str, action: &str| {
        records
            .iter()
            .find(|r| r["user"] == user && r["action"] == action)
            .unwrap_or_else(|| panic!("no {action} record by {user}: {records:#?}"))
    };
    let qido = find("e2e-clinician", "qido.studies");
    assert_eq!(qido["role"], "clinician");
    assert_eq!(qido["outcome"], "success");
    assert_eq!(qido["resource"], "studies");
    assert!(qido["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(qido["at"].as_str().unwrap().ends_with('Z'));
    let metadata = find("e2e-clinician", "wado.metadata");
    assert_eq!(
        metadata["resource"],
        format!("studies/{study_uid}/metadata")
    );
    assert_eq!(find("env-admin", "stow.studies")["outcome"], "success");
    assert_eq!(find("e2e-pacs", "qido.studies")["outcome"], "denied");
    assert!(!reply.body.contains(&patient_id) && !reply.body.contains(&family));
    let reply = get(&server, "/api/v1/audit?limit=1&offset=1", Some(ADMIN_TOKEN));
    assert_eq!(reply.json()["records"].as_array().map(Vec::len), Some(1));
    let reply = get(&server, "/api/v1/audit?limit=5000", Some(ADMIN_TOKEN));
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"].as_str().unwrap().contains("limit"));

    // Metrics saw the STOW and the HTTP requests (labels are route templates).
    let reply = get(&server, "/metrics", Some(&ml));
    assert_eq!(reply.status, 200);
    for expected in [
        r#"radserve_instances_received_total{route="stow",transfer_syntax="1.2.840.10008.1.2.1"} 2"#,
        r#"radserve_http_request_duration_seconds_count{method="GET",route="/dicomweb/studies",status="200"}"#,
        r#"radserve_http_request_duration_seconds_count{method="GET",route="/dicomweb/studies",status="403"}"#,
        "radserve_store_duration_seconds_bucket",
        r#"radserve_rejections_total{route="http",reason="forbidden_role"}"#,
    ] {
        assert!(
            reply.body.contains(expected),
            "metrics lack {expected}:\n{}",
            reply.body
        );
    }
    assert!(!reply.body.contains(&study_uid), "no UIDs in metric labels");

    server.terminate();
    let log = server.stderr();
    assert!(
        log.contains("radserve::audit"),
        "audit lines are logged:\n{log}"
    );
    assert!(log.contains("qido.studies"), "{log}");
    for secret in [
        given.as_str(),
        family.as_str(),
        patient_id.as_str(),
        ADMIN_TOKEN,
        clinician.as_str(),
    ] {
        assert!(!log.contains(secret), "the log contains {secret:?}:\n{log}");
    }
}
