//! `radserve serve` end to end: the real binary, real sockets, dcmtk's echoscu and an
//! HTTP client.

use std::net::TcpListener;
use std::process::Output;

use radserve_tests::{RadServe, echoscu, get_json, radserve_command, run_to_exit};
use serde_json::json;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_echo_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: echoscu failed ({}):\n{}{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

fn assert_echo_rejected(output: &Output, what: &str) {
    assert!(
        !output.status.success(),
        "{what}: echoscu should have been rejected"
    );
    let said = text(&output.stderr) + &text(&output.stdout);
    assert!(said.contains("Association Rejected"), "{what}: {said}");
}

#[test]
fn serves_health_and_c_echo_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let mut server = RadServe::serve(["--data".as_ref(), data.as_os_str()]);
    assert_ne!(server.dicom_port, 0);
    assert_ne!(server.http_port, 0);
    assert!(data.is_dir(), "the data directory is created at start");
    // Ready once the embedded demo models are loaded and warm.
    server.wait_ready();

    assert_eq!(
        get_json(&server.url("/health/live")),
        (200, json!({ "status": "live" }))
    );
    assert_eq!(
        get_json(&server.url("/health/ready")),
        (200, json!({ "status": "ready" }))
    );
    let (status, body) = get_json(&server.url("/api/v1/studies"));
    assert_eq!(status, 404);
    assert_eq!(body, json!({ "error": "no route for GET /api/v1/studies" }));

    let echo = echoscu("RADSERVE", server.dicom_port);
    assert_echo_ok(&echo, "echo to RADSERVE");
    assert_echo_rejected(&echoscu("NOT-RADSERVE", server.dicom_port), "wrong AE");

    let status = server.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert_eq!(
        server.stdout_lines(),
        [format!(
            "listening dicom={} http={}",
            server.dicom_port, server.http_port
        )],
        "stdout holds exactly the listening line"
    );
    let log = server.stderr();
    for expected in [
        "association established",
        "C-ECHO",
        "association released",
        "association rejected",
        "SIGTERM",
        "radserve stopped",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
}

#[test]
fn ready_is_503_when_the_data_dir_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = RadServe::serve(["--data".as_ref(), data.as_os_str()]);
    server.wait_ready();

    // Replace the directory with a file: nothing can be stored any more (this works even
    // as root, where permission bits would not stop a write). Moved away rather than
    // deleted: the running server may create a file in it while a removal walks it.
    std::fs::rename(&data, dir.path().join("moved-away")).unwrap();
    std::fs::write(&data, "not a directory").unwrap();

    let (status, body) = get_json(&server.url("/health/ready"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "data directory {} is not writable",
            data.display()
        )),
        "{reason}"
    );
    // Liveness does not depend on it.
    assert_eq!(get_json(&server.url("/health/live")).0, 200);
}

#[test]
fn settings_come_from_flag_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("radserve.toml"),
        r#"
        data = "file-data"          # relative to this file
        [dicom]
        port = 0
        ae_title = "FROMFILE"
        [http]
        port = 0
        "#,
    )
    .unwrap();

    // ./radserve.toml is read by default.
    let mut cmd = radserve_command();
    cmd.current_dir(dir.path()).arg("serve");
    let server = RadServe::start(cmd);
    assert!(dir.path().join("file-data").is_dir());
    assert_echo_ok(&echoscu("FROMFILE", server.dicom_port), "file AE");
    drop(server);

    // The environment beats the file.
    let mut cmd = radserve_command();
    cmd.current_dir(dir.path())
        .env("RADSERVE_AE_TITLE", "FROMENV")
        .arg("serve");
    let server = RadServe::start(cmd);
    assert_echo_ok(&echoscu("FROMENV", server.dicom_port), "env AE");
    assert_echo_rejected(&echoscu("FROMFILE", server.dicom_port), "file AE under env");
    drop(server);

    // A flag beats the environment; RADSERVE_CONFIG names the file from elsewhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = radserve_command();
    cmd.current_dir(elsewhere.path())
        .env("RADSERVE_CONFIG", dir.path().join("radserve.toml"))
        .env("RADSERVE_AE_TITLE", "FROMENV")
        .args(["serve", "--ae-title", "FROMFLAG"]);
    let server = RadServe::start(cmd);
    assert_echo_ok(&echoscu("FROMFLAG", server.dicom_port), "flag AE");
    assert_echo_rejected(&echoscu("FROMENV", server.dicom_port), "env AE under flag");
}

/// Runs `radserve serve` (free ports, throwaway data dir) expecting it to fail at once.
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = radserve_command();
    cmd.current_dir(dir.path()).arg("serve");
    for port_flag in ["--dicom-port", "--http-port"] {
        if !args.contains(&port_flag) {
            cmd.args([port_flag, "0"]);
        }
    }
    cmd.args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = run_to_exit(&mut cmd);
    assert!(
        !output.status.success(),
        "{args:?} {env:?} should fail; stderr:\n{}",
        text(&output.stderr)
    );
    assert!(output.stdout.is_empty(), "no listening line on failure");
    (output.status.code().unwrap_or(-1), text(&output.stderr))
}

#[test]
fn invalid_settings_exit_non_zero_with_a_clear_message() {
    // A bad flag value is a usage error (clap: status 2) naming the flag and the choices.
    let (code, err) = serve_fails(&["--device", "quantum"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid value 'quantum' for '--device"),
        "{err}"
    );
    assert!(
        err.contains("expected one of auto, wgpu, vulkan, cuda, cpu"),
        "{err}"
    );

    let (code, err) = serve_fails(&["--ae-title", "A\\B"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("backslash"), "{err}");

    // A bad environment value names the variable.
    let (code, err) = serve_fails(&[], &[("RADSERVE_DEVICE", "quantum")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("RADSERVE_DEVICE: unknown device \"quantum\": expected one of auto"),
        "{err}"
    );

    // A config file with an unknown key names the key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[dicom]\nprot = 104\n").unwrap();
    let (code, err) = serve_fails(&["--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown field `prot`"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");

    // A named config file must exist.
    let (code, err) = serve_fails(&["--config", "/nonexistent/radserve.toml"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot read config file /nonexistent/radserve.toml"),
        "{err}"
    );

    // A port in use.
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = serve_fails(&["--dicom-port", &port], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot listen for DICOM"), "{err}");
}
