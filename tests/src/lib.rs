//! Harness for the end-to-end tests in `tests/*.rs`: they start the real `radserve`
//! binary and talk to it with real clients (an HTTP client, dcmtk), as a PACS or an
//! operator would.
//!
//! # How the binary is found
//!
//! [`radserve_bin`] returns, in this order:
//!
//! 1. the path in `RADSERVE_BIN`, when set (to test a prebuilt or release binary);
//! 2. otherwise the binary that `cargo build -p radserve --bin radserve` produces. The
//!    build runs once per test process, with the same cargo that runs the tests (`$CARGO`)
//!    and the same profile, from the workspace root; the path is read from cargo's
//!    `compiler-artifact` message, so it is right whatever `CARGO_TARGET_DIR`, target
//!    triple or profile is in use. When the binary is up to date this takes well under a
//!    second, and `cargo test -p radserve-tests` alone never runs a stale server.
//!
//! (`env!("CARGO_BIN_EXE_radserve")` is only set for tests of the package that defines
//! the binary, and this crate deliberately does not depend on `radserve`.)
//!
//! # Servers
//!
//! [`RadServe::start`] spawns the binary, waits for its `listening dicom=<port>
//! http=<port>` line and keeps its stdout and stderr. Dropping a [`RadServe`] kills the
//! process, so a failing test never leaves a server running; [`RadServe::terminate`]
//! stops it with SIGTERM and returns how it exited.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variables radserve reads; scrubbed from every child so that a developer's
/// shell cannot change what a test sees.
pub const RADSERVE_ENV: &[&str] = &[
    "RADSERVE_DATA",
    "RADSERVE_CONFIG",
    "RADSERVE_DICOM_PORT",
    "RADSERVE_HTTP_PORT",
    "RADSERVE_AE_TITLE",
    "RADSERVE_DEVICE",
    "RADSERVE_ADMIN_TOKEN",
];

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to turn ready (loading and warming its models).
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a process may take to exit when asked to, or when it should fail at once.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `radserve` binary under test (see the crate docs for how it is found).
pub fn radserve_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("RADSERVE_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => build_radserve(),
    })
}

fn build_radserve() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--package",
        "radserve",
        "--bin",
        "radserve",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run cargo to build radserve");
    assert!(
        output.status.success(),
        "`cargo build -p radserve` failed ({})",
        output.status
    );
    // One JSON message per line; the binary's `compiler-artifact` names the executable.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "radserve")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no executable for the radserve binary")
}

/// A `Command` for the radserve binary with a clean environment for radserve's own
/// variables, `RUST_LOG=info`, and no stdin.
pub fn radserve_command() -> Command {
    let mut cmd = Command::new(radserve_bin());
    for var in RADSERVE_ENV {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    cmd
}

/// A running radserve process, killed on drop.
pub struct RadServe {
    child: Child,
    pub dicom_port: u16,
    pub http_port: u16,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl RadServe {
    /// `radserve serve` with `args` on free ports (`--dicom-port 0 --http-port 0`
    /// unless `args` set them).
    pub fn serve<I, S>(args: I) -> RadServe
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut cmd = radserve_command();
        cmd.arg("serve");
        if !args.iter().any(|a| a == "--dicom-port") {
            cmd.args(["--dicom-port", "0"]);
        }
        if !args.iter().any(|a| a == "--http-port") {
            cmd.args(["--http-port", "0"]);
        }
        cmd.args(args);
        RadServe::start(cmd)
    }

    /// Spawns `cmd` (a radserve command line) and waits for its listening line.
    /// Panics, with the server's stderr, if the line does not come.
    pub fn start(mut cmd: Command) -> RadServe {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", radserve_bin().display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (first_line_tx, first_line_rx) = mpsc::channel();

        let out = child.stdout.take().expect("stdout is piped");
        let lines = stdout.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = first_line_tx.send(line.clone());
                lock(&lines).push(line);
            }
        });
        let mut err = child.stderr.take().expect("stderr is piped");
        let text = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                lock(&text).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let mut server = RadServe {
            child,
            dicom_port: 0,
            http_port: 0,
            stdout,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        };
        match first_line_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => match parse_listening_line(&line) {
                Some((dicom, http)) => {
                    server.dicom_port = dicom;
                    server.http_port = http;
                    server
                }
                None => panic!(
                    "unexpected first stdout line {line:?}; stderr:\n{}",
                    server.stderr()
                ),
            },
            Err(e) => {
                // Give stderr a moment to arrive if the process died.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "radserve printed no listening line ({e}); exit: {:?}; stderr:\n{}",
                    server.child.try_wait().ok().flatten(),
                    server.stderr()
                )
            }
        }
    }

    /// `http://127.0.0.1:<http_port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Waits until `/health/ready` answers 200 (models loaded and warm), at most
    /// [`READY_TIMEOUT`]; panics with the server's log otherwise.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let status = http_client()
                .get(&self.url("/health/ready"))
                .call()
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the server wrote to stderr (its log) so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// The lines the server wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most [`EXIT_TIMEOUT`]) for the process to exit; then
    /// all of its output is available.
    pub fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.pid());
        let status = wait_timeout(&mut self.child, EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "radserve did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            )
        });
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for RadServe {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses `listening dicom=<port> http=<port>`.
pub fn parse_listening_line(line: &str) -> Option<(u16, u16)> {
    let rest = line.strip_prefix("listening dicom=")?;
    let (dicom, http) = rest.split_once(" http=")?;
    Some((dicom.parse().ok()?, http.parse().ok()?))
}

/// Runs `cmd` to completion, killing it after [`EXIT_TIMEOUT`] (a command expected to fail
/// at once must not hang the test suite if it starts a server instead).
pub fn run_to_exit(cmd: &mut Command) -> Output {
    try_run_to_exit(cmd).unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// [`run_to_exit`], with spawn errors returned.
pub fn try_run_to_exit(cmd: &mut Command) -> std::io::Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = match wait_timeout(&mut child, EXIT_TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} still running after {EXIT_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A blocking HTTP client that returns 4xx/5xx responses instead of errors.
pub fn http_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GETs `url`; returns the status and the body parsed as JSON.
pub fn get_json(url: &str) -> (u16, serde_json::Value) {
    let mut response = http_client()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: cannot read body: {e}"));
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON ({e}): {body:?}"));
    (status, json)
}

/// Runs dcmtk's `echoscu` (with `TCP_NODELAY=1`, see NOTES-dependencies.md) against
/// `127.0.0.1:port`, calling `called_ae`.
pub fn echoscu(called_ae: &str, port: u16) -> Output {
    let program = if Path::new("/usr/bin/echoscu").exists() {
        "/usr/bin/echoscu"
    } else {
        "echoscu"
    };
    let mut cmd = Command::new(program);
    cmd.env("TCP_NODELAY", "1")
        .args(["-aet", "RADSERVE-TEST", "-aec", called_ae, "-to", "10"])
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::null());
    match try_run_to_exit(&mut cmd) {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("echoscu not found: these tests need dcmtk (apt-get install dcmtk)")
        }
        Err(e) => panic!("cannot run echoscu: {e}"),
    }
}

// --- DIMSE helpers (C-STORE / C-FIND end-to-end tests) ---

/// The workspace root: the parent of the package cargo is running (`tests/` or
/// `benches/`, both directly under the root), read from `CARGO_MANIFEST_DIR` at run time.
/// The compile-time value is only the fallback: cargo does not rebuild this crate when the
/// same target directory serves another checkout, so it may name a checkout that is gone.
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let package = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        package
            .parent()
            .expect("the package lives inside the workspace")
            .to_path_buf()
    })
}

/// Runs a dcmtk tool (`storescu`, `findscu`, ...) with `TCP_NODELAY=1` (see
/// NOTES-dependencies.md) and no stdin, to completion.
pub fn dcmtk<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.env("TCP_NODELAY", "1").args(args).stdin(Stdio::null());
    match try_run_to_exit(&mut cmd) {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} not found: these tests need dcmtk (apt-get install dcmtk)")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

/// Runs `dicom-samples generate --quiet --out OUT` with `generate_args` (the
/// generator's own CLI, built by cargo like the server).
pub fn generate_samples(out: &Path, generate_args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["run", "--quiet", "--package", "dicom-samples", "--"])
        .args(["generate", "--quiet", "--out"])
        .arg(out)
        .args(generate_args)
        .stdin(Stdio::null())
        .status()
        .expect("cannot run cargo to generate samples");
    assert!(status.success(), "dicom-samples generate failed ({status})");
}

/// A small EMR sample set: three radiograph studies of one patient (dicom-samples seed 13)
/// written to `dir/generated`, with its EMR export (`emr_bundle.json`). Returns that
/// directory, the true pairs (`true_pairs.json`) and the first pair that has an order.
pub fn emr_sample_set(dir: &Path) -> (PathBuf, serde_json::Value, serde_json::Value) {
    let generated = dir.join("generated");
    let args = [
        "--seed",
        "13",
        "--ct",
        "0",
        "--xray",
        "3",
        "--xray-size",
        "256",
    ];
    generate_samples(&generated, &args);
    let text = std::fs::read_to_string(generated.join("true_pairs.json"))
        .expect("dicom-samples writes true_pairs.json");
    let truth: serde_json::Value = serde_json::from_str(&text).expect("true pairs are JSON");
    let pair = truth["pairs"]
        .as_array()
        .and_then(|pairs| pairs.iter().find(|p| p["service_request_id"].is_string()))
        .expect("a study with an order")
        .clone();
    (generated, truth, pair)
}

/// Generates a synthetic sample set with dicom-samples (`generate_args` after
/// `generate --out OUT/generated --quiet`) and its transfer-syntax variants with
/// `make-transfer-syntax-variants.sh`; returns `(variant name, directory)`, sorted.
pub fn generate_sample_variants(out: &Path, generate_args: &[&str]) -> Vec<(String, PathBuf)> {
    let generated = out.join("generated");
    let variants = out.join("variants");
    generate_samples(&generated, generate_args);
    let script = workspace_root().join("dicom-samples/scripts/make-transfer-syntax-variants.sh");
    let output = run_to_exit(
        Command::new("bash")
            .arg(script)
            .arg(&generated)
            .arg(&variants),
    );
    assert!(
        output.status.success(),
        "make-transfer-syntax-variants.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(&variants)
        .expect("variants directory")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir())
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            )
        })
        .collect();
    dirs.sort();
    dirs
}

/// Every `*.dcm` file under `dir`, sorted.
pub fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "dcm") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A minimal DICOM upper-layer client over a plain `TcpStream`, built by hand so that
/// tests can send what no well-behaved tool sends (garbage data sets). Implicit VR
/// little endian command sets; one presentation context per proposal.
pub struct RawScu {
    stream: std::net::TcpStream,
    /// (context id, result: 0 = accepted, transfer syntax) from the A-ASSOCIATE-AC.
    pub contexts: Vec<(u8, u8, String)>,
}

/// Largest PDU we tell the server we accept.
const RAW_SCU_MAX_PDU: u32 = 16384;

fn ul_item(item_type: u8, body: &[u8]) -> Vec<u8> {
    let mut item = vec![item_type, 0];
    item.extend_from_slice(&(body.len() as u16).to_be_bytes());
    item.extend_from_slice(body);
    item
}

fn ae_field(title: &str) -> [u8; 16] {
    let mut field = [b' '; 16];
    for (slot, byte) in field.iter_mut().zip(title.bytes()) {
        *slot = byte;
    }
    field
}

/// An implicit VR little endian element.
fn implicit_element(group: u16, element: u16, value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + value.len() + 1);
    bytes.extend_from_slice(&group.to_le_bytes());
    bytes.extend_from_slice(&element.to_le_bytes());
    let padded = value.len() + value.len() % 2;
    bytes.extend_from_slice(&(padded as u32).to_le_bytes());
    bytes.extend_from_slice(value);
    if value.len() % 2 == 1 {
        bytes.push(0);
    }
    bytes
}

impl RawScu {
    /// Associates with `127.0.0.1:port`; `contexts` are (id, abstract syntax, transfer
    /// syntaxes).
    pub fn associate(
        port: u16,
        called_ae: &str,
        calling_ae: &str,
        contexts: &[(u8, &str, &[&str])],
    ) -> std::io::Result<RawScu> {
        use std::io::Write;
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut body = Vec::new();
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&ae_field(called_ae));
        body.extend_from_slice(&ae_field(calling_ae));
        body.extend_from_slice(&[0; 32]);
        body.extend(ul_item(0x10, b"1.2.840.10008.3.1.1.1"));
        for (id, abstract_syntax, transfer_syntaxes) in contexts {
            let mut pc = vec![*id, 0, 0, 0];
            pc.extend(ul_item(0x30, abstract_syntax.as_bytes()));
            for ts in *transfer_syntaxes {
                pc.extend(ul_item(0x40, ts.as_bytes()));
            }
            body.extend(ul_item(0x20, &pc));
        }
        let mut user = ul_item(0x51, &RAW_SCU_MAX_PDU.to_be_bytes());
        user.extend(ul_item(0x52, b"1.2.826.0.1.3680043.10.1"));
        body.extend(ul_item(0x50, &user));
        let mut pdu = vec![0x01, 0];
        pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
        pdu.extend(body);
        let mut scu = RawScu {
            stream,
            contexts: Vec::new(),
        };
        scu.stream.write_all(&pdu)?;
        let (pdu_type, body) = scu.read_pdu()?;
        if pdu_type != 0x02 {
            return Err(std::io::Error::other(format!(
                "association not accepted: PDU type {pdu_type:#04x}"
            )));
        }
        // Items follow the 68 fixed bytes.
        let mut at = 68;
        while at + 4 <= body.len() {
            let item_type = body[at];
            let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
            let item = body.get(at + 4..at + 4 + len).unwrap_or_default();
            if item_type == 0x21 && item.len() >= 4 {
                let ts = item
                    .get(8..)
                    .map(|t| String::from_utf8_lossy(t).trim_end_matches('\0').to_owned())
                    .unwrap_or_default();
                scu.contexts.push((item[0], item[2], ts));
            }
            at += 4 + len;
        }
        Ok(scu)
    }

    fn read_pdu(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        use std::io::Read;
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if len > 16 << 20 {
            return Err(std::io::Error::other("PDU too long"));
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body)?;
        Ok((header[0], body))
    }

    /// Sends `bytes` as PDVs of at most `fragment` bytes (command or data).
    pub fn send_pdvs(
        &mut self,
        context_id: u8,
        command: bool,
        bytes: &[u8],
        fragment: usize,
    ) -> std::io::Result<()> {
        use std::io::Write;
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(fragment.max(2)).collect()
        };
        let count = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let control = u8::from(command) | if i + 1 == count { 2 } else { 0 };
            let pdv_len = (chunk.len() + 2) as u32;
            let mut pdu = vec![0x04, 0];
            pdu.extend_from_slice(&(pdv_len + 4).to_be_bytes());
            pdu.extend_from_slice(&pdv_len.to_be_bytes());
            pdu.push(context_id);
            pdu.push(control);
            pdu.extend_from_slice(chunk);
            self.stream.write_all(&pdu)?;
        }
        Ok(())
    }

    /// Reads one whole command set (skipping nothing else: data PDVs are an error).
    fn read_command(&mut self) -> std::io::Result<Vec<u8>> {
        let mut command = Vec::new();
        loop {
            let (pdu_type, body) = self.read_pdu()?;
            if pdu_type != 0x04 {
                return Err(std::io::Error::other(format!(
                    "expected P-DATA, got PDU type {pdu_type:#04x}"
                )));
            }
            let mut at = 0;
            while at + 6 <= body.len() {
                let len = u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]])
                    as usize;
                let control = body[at + 5];
                let data = body.get(at + 6..at + 4 + len).unwrap_or_default();
                if control & 1 == 0 {
                    return Err(std::io::Error::other("expected a command PDV"));
                }
                command.extend_from_slice(data);
                if control & 2 != 0 {
                    return Ok(command);
                }
                at += 4 + len;
            }
        }
    }

    /// Sends a C-STORE-RQ and its data set (`fragment`-byte PDVs); returns the response's
    /// Status and ErrorComment.
    pub fn c_store(
        &mut self,
        context_id: u8,
        message_id: u16,
        sop_class: &str,
        sop_instance: &str,
        data_set: &[u8],
        fragment: usize,
    ) -> std::io::Result<(u16, Option<String>)> {
        let mut elements = Vec::new();
        elements.extend(implicit_element(0x0000, 0x0002, sop_class.as_bytes()));
        elements.extend(implicit_element(0x0000, 0x0100, &0x0001u16.to_le_bytes()));
        elements.extend(implicit_element(0x0000, 0x0110, &message_id.to_le_bytes()));
        elements.extend(implicit_element(0x0000, 0x0700, &0u16.to_le_bytes()));
        elements.extend(implicit_element(0x0000, 0x0800, &0u16.to_le_bytes()));
        elements.extend(implicit_element(0x0000, 0x1000, sop_instance.as_bytes()));
        let mut command = implicit_element(0x0000, 0x0000, &(elements.len() as u32).to_le_bytes());
        command.extend(elements);
        self.send_pdvs(context_id, true, &command, fragment)?;
        self.send_pdvs(context_id, false, data_set, fragment)?;
        let response = self.read_command()?;
        let mut status = None;
        let mut comment = None;
        let mut at = 0;
        while at + 8 <= response.len() {
            let group = u16::from_le_bytes([response[at], response[at + 1]]);
            let element = u16::from_le_bytes([response[at + 2], response[at + 3]]);
            let len = u32::from_le_bytes([
                response[at + 4],
                response[at + 5],
                response[at + 6],
                response[at + 7],
            ]) as usize;
            let value = response.get(at + 8..at + 8 + len).unwrap_or_default();
            match (group, element) {
                (0x0000, 0x0900) if value.len() == 2 => {
                    status = Some(u16::from_le_bytes([value[0], value[1]]))
                }
                (0x0000, 0x0902) => {
                    comment = Some(String::from_utf8_lossy(value).trim_end().to_owned())
                }
                _ => {}
            }
            at += 8 + len;
        }
        let status = status.ok_or_else(|| std::io::Error::other("response without Status"))?;
        Ok((status, comment))
    }

    /// Releases the association (A-RELEASE-RQ, waits for the RP).
    pub fn release(mut self) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(&[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])?;
        let (pdu_type, _) = self.read_pdu()?;
        if pdu_type != 0x06 {
            return Err(std::io::Error::other(format!(
                "expected A-RELEASE-RP, got PDU type {pdu_type:#04x}"
            )));
        }
        Ok(())
    }
}

/// File meta elements by (group, element).
pub type MetaElements = std::collections::BTreeMap<(u16, u16), Vec<u8>>;

/// Splits a Part 10 file into its meta elements (tag → value) and the data set bytes.
/// `None` when it is not a Part 10 file.
pub fn split_part10(file: &[u8]) -> Option<(MetaElements, &[u8])> {
    if file.get(128..132)? != b"DICM" {
        return None;
    }
    let mut meta = std::collections::BTreeMap::new();
    let mut at = 132;
    loop {
        let group = u16::from_le_bytes([*file.get(at)?, *file.get(at + 1)?]);
        if group != 0x0002 {
            return Some((meta, &file[at..]));
        }
        let element = u16::from_le_bytes([file[at + 2], file[at + 3]]);
        let vr = file.get(at + 4..at + 6)?;
        let (len, header) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"UC" | b"UR") {
            let b = file.get(at + 8..at + 12)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        } else {
            let b = file.get(at + 6..at + 8)?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 8)
        };
        let value = file.get(at + header..at + header + len)?;
        meta.insert((group, element), value.to_vec());
        at += header + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            parse_listening_line("listening dicom=11112 http=8080"),
            Some((11112, 8080))
        );
        assert_eq!(parse_listening_line("listening dicom=1 http="), None);
        assert_eq!(parse_listening_line("listening http=1 dicom=2"), None);
        assert_eq!(parse_listening_line("Listening dicom=1 http=2"), None);
    }
}
pub mod corpus;

/// Splits a multipart/related response into its parts' bodies.
pub fn split_multipart(content_type: &str, body: &[u8]) -> Vec<Vec<u8>> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .unwrap_or_else(|| panic!("no boundary in {content_type:?}"))
        .trim_matches('"');
    let delimiter = format!("\r\n--{boundary}");
    // Prepend CRLF so that the first delimiter looks like the others.
    let mut data = b"\r\n".to_vec();
    data.extend_from_slice(body);
    let mut parts = Vec::new();
    let positions: Vec<usize> = find_all(&data, delimiter.as_bytes());
    for pair in positions.windows(2) {
        let part = &data[pair[0] + delimiter.len()..pair[1]];
        let headers_end = find_all(part, b"\r\n\r\n")[0];
        parts.push(part[headers_end + 4..].to_vec());
    }
    assert!(
        data[*positions.last().unwrap() + delimiter.len()..].starts_with(b"--"),
        "no closing delimiter"
    );
    parts
}

pub fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

// --- Pipeline and EMR tests: a server with a config and a token, studies by storescu ---

/// `radserve serve` on free ports with `data` and `config`, `token` accepted as an admin
/// bearer token; returns once the server is ready (models loaded and warm).
pub fn serve_with_config(data: &Path, config: &Path, token: &str) -> RadServe {
    let mut cmd = radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", token)
        .arg("serve")
        .args(["--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(data)
        .arg("--config")
        .arg(config);
    let server = RadServe::start(cmd);
    server.wait_ready();
    server
}

/// GETs `path` on `server` with `token`; the status and the body as JSON.
pub fn get_json_authorized(server: &RadServe, path: &str, token: &str) -> (u16, serde_json::Value) {
    let mut response = http_client()
        .get(&server.url(path))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {path}: cannot read body: {e}"));
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: body is not JSON ({e}): {text:?}"));
    (status, json)
}

/// Sends every `*.dcm` under `dir` to `server` with dcmtk's `storescu` (one association).
pub fn storescu_dir(server: &RadServe, dir: &Path) {
    let port = server.dicom_port.to_string();
    let output = dcmtk(
        "storescu",
        [
            "-aec".as_ref(),
            "RADSERVE".as_ref(),
            "+sd".as_ref(),
            "+r".as_ref(),
            "+sp".as_ref(),
            "*.dcm".as_ref(),
            "127.0.0.1".as_ref(),
            OsStr::new(&port),
            dir.as_os_str(),
        ],
    );
    assert!(
        output.status.success(),
        "storescu failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Polls `/api/v1/studies/{study}/findings` until the study has jobs and none is queued or
/// running (at most `timeout`); returns the body (`findings`, `jobs`).
pub fn wait_for_study_jobs(
    server: &RadServe,
    study: &str,
    token: &str,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) =
            get_json_authorized(server, &format!("/api/v1/studies/{study}/findings"), token);
        let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
        let finished = |j: &serde_json::Value| {
            matches!(j["state"].as_str(), Some("done" | "failed" | "cancelled"))
        };
        if status == 200 && !jobs.is_empty() && jobs.iter().all(finished) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "jobs of {study} not finished in {timeout:?}: {body}\nstderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
