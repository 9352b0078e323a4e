//! Load generator for the inference pipeline, in the manner of Triton's `perf_analyzer`:
//! keeps `--concurrency` studies in flight against a real radserve and measures how long a
//! study takes from "last instance acknowledged" to "findings available", and how many
//! studies an hour the server turns into findings.
//!
//! ```text
//! cargo run -p radserve-benches --bin loadgen -- --compare-batching --concurrency 8 \
//!     --mix xray --studies 64 --warmup 8 --protocol dimse [--json out.json]
//! ```
//!
//! One client thread per concurrency slot takes the next study, sends it (dcmtk `storescu`,
//! one association per study, or one STOW-RS request per study), asks for processing at
//! once (`POST /api/v1/studies/{uid}/process`, unless `--trigger stability`), then polls
//! `GET /api/v1/studies/{uid}/findings` every 50 ms until the study has jobs and all of them
//! are done. The latency is client-side wall time from the return of the send (the last
//! instance's acknowledgement) to the poll that saw the findings. Each configuration runs on
//! a fresh server and data directory with the same studies; `--warmup` studies go first and
//! are not counted (nor are their batches in the mean batch size, which is the difference
//! of `/metrics` before and after the measured studies).
//!
//! A job that fails or is cancelled, a study that takes longer than `--timeout-s`, a server
//! that does not start or get ready: the run stops with an error and a non-zero exit.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail, ensure};
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use dicom_samples::generate::{GenerateOptions, generate};
use dicom_samples::ground_truth::Modality;
use radserve_tests::RadServe;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    about = "Inference pipeline load: studies/hour and ack→findings latency at a concurrency"
)]
struct Args {
    /// Studies in flight at once (client threads).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Studies measured (after the warm-up).
    #[arg(long, default_value_t = 64)]
    studies: usize,
    /// Studies sent first and not counted.
    #[arg(long, default_value_t = 8)]
    warmup: usize,
    /// How studies are sent: DICOM C-STORE (dcmtk storescu) or STOW-RS.
    #[arg(long, value_enum, default_value_t = Protocol::Dimse)]
    protocol: Protocol,
    /// Radiographs only, CT only, or radiographs with every `--ct-every`-th study a CT.
    #[arg(long, value_enum, default_value_t = Mix::Xray)]
    mix: Mix,
    /// In `--mix mixed`, every this many studies one is a CT.
    #[arg(long, default_value_t = 8)]
    ct_every: usize,
    /// Slices per CT study.
    #[arg(long, default_value_t = 40)]
    ct_slices: usize,
    /// Radiograph size in pixels (square).
    #[arg(long, default_value_t = 512)]
    xray_size: u32,
    /// Run the measurement twice, batching on (max batch 8) and off (max batch 1).
    #[arg(long)]
    compare_batching: bool,
    /// Batching of the single run (ignored with --compare-batching).
    #[arg(long, value_enum, default_value_t = Batching::On)]
    batching: Batching,
    /// When a study is processed: at once (`POST .../process` right after the last
    /// instance's acknowledgement) or when the server finds it stable (`stable_after_s`).
    #[arg(long, value_enum, default_value_t = Trigger::Process)]
    trigger: Trigger,
    /// `[pipeline] workers`: jobs the server runs at once.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// `[pipeline] stable_after_s`.
    #[arg(long, default_value_t = 1.0)]
    stable_after_s: f64,
    /// Longest a study may take from its acknowledgement to its findings.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Seed of the synthetic studies.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the work directory (studies, server data, configs, server logs).
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Protocol {
    Dimse,
    Stow,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Mix {
    Xray,
    Ct,
    Mixed,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Batching {
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Trigger {
    Process,
    Stability,
}

impl Batching {
    fn label(self) -> &'static str {
        match self {
            Batching::On => "on (max 8)",
            Batching::Off => "off (max 1)",
        }
    }
}

/// Poll interval of the findings endpoint.
const POLL: Duration = Duration::from_millis(50);
/// How long a fresh server may take to load and warm its models.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Per-job stages reported by the server in `timings`, in pipeline order.
const STAGES: [&str; 6] = [
    "decode",
    "preprocess",
    "queue",
    "compute",
    "postprocess",
    "store",
];

/// One study to send.
#[derive(Clone)]
struct Study {
    uid: String,
    dir: PathBuf,
    files: Vec<PathBuf>,
    ct: bool,
}

/// What one study's way through the server looked like.
struct Outcome {
    latency_ms: f64,
    /// Each job's stage times (ms), in [`STAGES`] order.
    job_stages: Vec<[f64; 6]>,
    /// Of the last job to finish: ack → job created, created → started (waiting for a
    /// worker), started → finished minus the stages, finished → seen by the poll (ms).
    before_job_ms: f64,
    worker_wait_ms: f64,
    in_job_other_ms: f64,
    after_job_ms: f64,
    batch_sizes: Vec<f64>,
    /// Jobs cancelled as "superseded" although no instance arrived after the ack.
    superseded: usize,
    /// Done jobs beyond the first for the same series and model (work done twice).
    duplicates: usize,
}

/// One configuration's results.
struct RunResult {
    batching: Batching,
    studies: usize,
    wall_s: f64,
    latencies_ms: Vec<f64>,
    stage_medians_ms: [f64; 6],
    before_job_ms: f64,
    worker_wait_ms: f64,
    in_job_other_ms: f64,
    after_job_ms: f64,
    /// model → (batches, images) during the measured studies, from /metrics.
    batches: BTreeMap<String, (f64, f64)>,
    /// Mean of the batch sizes the jobs report (`timings.batch_sizes`).
    job_batch_mean: Option<f64>,
    superseded: usize,
    duplicates: usize,
    /// `backend (adapter)` of each model, from `/api/v1/models`.
    devices: Vec<String>,
}

impl RunResult {
    fn per_hour(&self) -> f64 {
        self.studies as f64 / self.wall_s * 3600.0
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("loadgen: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(args.studies >= 1, "--studies must be at least 1");
    ensure!(args.ct_every >= 1, "--ct-every must be at least 1");
    ensure!(
        (1..=64).contains(&args.workers),
        "--workers must be in 1..=64"
    );

    // Build (or locate) the server before anything is timed: a build would steal the cores.
    let bin = catch(|| radserve_tests::radserve_bin().to_path_buf())
        .context("cannot build or locate the radserve binary")?;
    eprintln!("loadgen: server binary {}", bin.display());

    let work = tempfile::Builder::new()
        .prefix("radserve-loadgen-")
        .tempdir()?;
    let work_path = if args.keep {
        let kept = work.keep();
        eprintln!("loadgen: keeping {}", kept.display());
        kept
    } else {
        work.path().to_path_buf()
    };
    let studies = make_studies(&args, &work_path.join("set"))?;

    let configs = if args.compare_batching {
        vec![Batching::On, Batching::Off]
    } else {
        vec![args.batching]
    };
    let mut results = Vec::new();
    for batching in configs {
        results.push(measure(&args, batching, &studies, &work_path)?);
    }
    let report = report(&args, &results);
    print!("{report}");
    if let Some(path) = &args.json {
        let json = to_json(&args, &results);
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    Ok(())
}

/// Runs `f`, turning a panic (the e2e harness panics on failure) into an error.
fn catch<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    // The message becomes the error; the default hook would print it a second time.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string());
        anyhow!(message)
    })
}

/// Generates the synthetic studies (warm-up first, then the measured ones) in send order.
fn make_studies(args: &Args, dir: &Path) -> anyhow::Result<Vec<Study>> {
    let total = args.warmup + args.studies;
    let is_ct = |i: usize| match args.mix {
        Mix::Xray => false,
        Mix::Ct => true,
        // The CTs are spread out: study ct_every-1, 2*ct_every-1, ... (and the warm-up's
        // first study is a CT when there is a warm-up, so that both models are warm).
        Mix::Mixed => i % args.ct_every == args.ct_every - 1 || (i == 0 && args.warmup > 0),
    };
    let ct_count = (0..total).filter(|&i| is_ct(i)).count();
    let xray_count = total - ct_count;
    eprintln!(
        "loadgen: generating {xray_count} radiograph studies ({0}×{0}) and {ct_count} CT studies ({1} slices), seed {2} ...",
        args.xray_size, args.ct_slices, args.seed
    );
    let mut options = GenerateOptions::new(dir);
    options.seed = args.seed;
    options.ct_studies = ct_count;
    options.xray_studies = xray_count;
    options.ct_slices = args.ct_slices.max(1);
    options.xray_size = args.xray_size;
    let manifest = generate(&options, &|| {}).context("generating the synthetic studies")?;
    let mut cts = Vec::new();
    let mut xrays = Vec::new();
    for record in &manifest.studies {
        let study_dir = dir.join(&record.directory);
        let files = radserve_tests::dicom_files(&study_dir);
        ensure!(
            !files.is_empty(),
            "no .dcm files under {}",
            study_dir.display()
        );
        let study = Study {
            uid: record.study_instance_uid.clone(),
            dir: study_dir,
            files,
            ct: record.modality == Modality::Ct,
        };
        if study.ct {
            cts.push(study)
        } else {
            xrays.push(study)
        }
    }
    let (mut cts, mut xrays) = (cts.into_iter(), xrays.into_iter());
    (0..total)
        .map(|i| {
            if is_ct(i) { cts.next() } else { xrays.next() }
                .ok_or_else(|| anyhow!("the generator wrote fewer studies than asked for"))
        })
        .collect()
}

fn config_toml(args: &Args, batching: Batching) -> String {
    let root = radserve_tests::workspace_root();
    let xray = root.join("models/zoo/chest-xray-findings");
    let ct = root.join("models/zoo/ct-lung-nodule");
    let (max_batch, preferred) = match batching {
        Batching::On => (8, "preferred_batch_sizes = [4]\n"),
        Batching::Off => (1, ""),
    };
    format!(
        "[pipeline]\nstable_after_s = {}\npoll_interval_ms = 50\nworkers = {}\n\n\
         [[models]]\npackage = {:?}\nmax_batch_size = {max_batch}\nmax_queue_delay_ms = 5\n{preferred}\n\
         [[models]]\npackage = {:?}\nmax_batch_size = {max_batch}\nmax_queue_delay_ms = 5\n",
        args.stable_after_s,
        args.workers,
        xray.display().to_string(),
        ct.display().to_string(),
    )
}

/// Everything a client thread needs to talk to one server.
struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
    dicom_port: u16,
    protocol: Protocol,
    trigger: Trigger,
    timeout: Duration,
}

fn measure(
    args: &Args,
    batching: Batching,
    studies: &[Study],
    work: &Path,
) -> anyhow::Result<RunResult> {
    let name = match batching {
        Batching::On => "batching-on",
        Batching::Off => "batching-off",
    };
    let config = work.join(format!("{name}.toml"));
    std::fs::write(&config, config_toml(args, batching))?;
    let data = work.join(format!("{name}-data"));
    let token = format!("loadgen-admin-token-{}", std::process::id());
    let mut cmd = radserve_tests::radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", &token)
        .env("RUST_LOG", "warn")
        .args(["serve", "--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config);
    eprintln!("loadgen: [{name}] starting radserve ...");
    let server = catch(|| RadServe::start(cmd)).context("radserve did not start")?;
    let client = Client {
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into(),
        base: server.url(""),
        token,
        dicom_port: server.dicom_port,
        protocol: args.protocol,
        trigger: args.trigger,
        timeout: Duration::from_secs(args.timeout_s),
    };
    let result = (|| {
        wait_ready(&client)?;
        let devices = models(&client)?;
        eprintln!("loadgen: [{name}] models: {}", devices.join("; "));
        let (warmup, measured) = studies.split_at(args.warmup.min(studies.len()));
        if !warmup.is_empty() {
            eprintln!("loadgen: [{name}] warm-up: {} studies ...", warmup.len());
            drive(&client, warmup, args.concurrency, name)?;
        }
        let before = batch_metrics(&client)?;
        eprintln!(
            "loadgen: [{name}] measuring {} studies at concurrency {} ...",
            measured.len(),
            args.concurrency
        );
        let started = Instant::now();
        let outcomes = drive(&client, measured, args.concurrency, name)?;
        let wall_s = started.elapsed().as_secs_f64();
        let after = batch_metrics(&client)?;
        Ok::<_, anyhow::Error>(summarise(
            batching, devices, wall_s, outcomes, &before, &after,
        ))
    })();
    match result {
        Ok(result) => Ok(result),
        Err(e) => {
            let log = server.stderr();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "loadgen: [{name}] last lines of the server's log:\n{}",
                tail.join("\n")
            );
            Err(e.context(format!("[{name}] run failed")))
        }
    }
}

fn wait_ready(client: &Client) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let url = format!("{}/health/ready", client.base);
        match client.agent.get(&url).call() {
            Ok(response) if response.status().as_u16() == 200 => {
                eprintln!(
                    "loadgen: ready after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            _ if started.elapsed() > READY_TIMEOUT => {
                bail!("/health/ready not 200 within {READY_TIMEOUT:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Sends `studies` with `concurrency` client threads; the outcomes in completion order.
fn drive(
    client: &Client,
    studies: &[Study],
    concurrency: usize,
    name: &str,
) -> anyhow::Result<Vec<Outcome>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes = Mutex::new(Vec::with_capacity(studies.len()));
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..concurrency.min(studies.len()) {
            scope.spawn(|| {
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(study) = studies.get(i) else { break };
                    match one_study(client, study, &failed) {
                        Ok(outcome) => {
                            let mut done = lock(&outcomes);
                            done.push(outcome);
                            let n = done.len();
                            if n % 8 == 0 || n == studies.len() {
                                eprintln!("loadgen: [{name}] {n}/{} studies", studies.len());
                            }
                        }
                        Err(e) => {
                            // The error first, so that it comes before the "stopped" of the
                            // other threads.
                            lock(&errors).push(e.context(format!("study {}", study.uid)));
                            failed.store(true, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = lock(&errors).drain(..).next() {
        return Err(e);
    }
    Ok(outcomes.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn one_study(client: &Client, study: &Study, failed: &AtomicBool) -> anyhow::Result<Outcome> {
    match client.protocol {
        Protocol::Dimse => storescu(client, &study.dir)?,
        Protocol::Stow => stow(client, &study.files)?,
    }
    let acked = Instant::now();
    let acked_wall = SystemTime::now();
    if client.trigger == Trigger::Process {
        let url = format!("{}/api/v1/studies/{}/process", client.base, study.uid);
        let mut response = client
            .agent
            .post(&url)
            .header("Authorization", format!("Bearer {}", client.token))
            .send_empty()
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        if status != 202 {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            bail!("POST {url} answered {status}: {body}");
        }
    }
    let url = format!("{}/api/v1/studies/{}/findings", client.base, study.uid);
    loop {
        if failed.load(Ordering::SeqCst) {
            bail!("stopped: another study failed");
        }
        let mut response = client
            .agent
            .get(&url)
            .header("Authorization", format!("Bearer {}", client.token))
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("GET {url}: reading the body"))?;
        ensure!(status == 200, "GET {url} answered {status}: {body}");
        let value: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {url}: the body is not JSON"))?;
        let jobs = value["jobs"]
            .as_array()
            .ok_or_else(|| anyhow!("GET {url}: no `jobs` array in {body}"))?;
        // A queued job cancelled as superseded by a newer job of the same series and model
        // is not a failure: the newer job carries the study.
        let superseded = |job: &Value| {
            job["state"] == "cancelled"
                && job["last_error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("superseded"))
        };
        let jobs: Vec<Value> = jobs.iter().filter(|j| !superseded(j)).cloned().collect();
        let superseded = value["jobs"].as_array().map_or(0, |all| all.len()) - jobs.len();
        for job in &jobs {
            let state = job["state"].as_str().unwrap_or("?");
            if state == "failed" || state == "cancelled" {
                bail!(
                    "job {} of model {} {state}: last_error = {}",
                    job["id"],
                    job["model"],
                    job["last_error"]
                );
            }
        }
        if !jobs.is_empty() && jobs.iter().all(|j| j["state"] == "done") {
            let latency = acked.elapsed();
            let seen_wall = SystemTime::now();
            let mut outcome = outcome(&jobs, latency, acked_wall, seen_wall)?;
            outcome.superseded = superseded;
            return Ok(outcome);
        }
        if acked.elapsed() > client.timeout {
            bail!(
                "no findings {:?} after the last instance was acknowledged; jobs: {}",
                client.timeout,
                Value::Array(jobs)
            );
        }
        std::thread::sleep(POLL);
    }
}

fn outcome(
    jobs: &[Value],
    latency: Duration,
    acked: SystemTime,
    seen: SystemTime,
) -> anyhow::Result<Outcome> {
    let acked: DateTime<Utc> = acked.into();
    let seen: DateTime<Utc> = seen.into();
    let mut job_stages = Vec::new();
    let mut batch_sizes = Vec::new();
    // The job that finished last decides when the findings were available.
    // (created, started, finished, sum of the stages)
    type JobSpan = (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, f64);
    let mut last: Option<JobSpan> = None;
    let mut seen_pairs = std::collections::BTreeSet::new();
    let mut duplicates = 0;
    for job in jobs {
        if !seen_pairs.insert((
            job["series_instance_uid"].to_string(),
            job["model"].to_string(),
        )) {
            duplicates += 1;
        }
        let timings = &job["timings"];
        let mut stages = [0.0; 6];
        for (slot, stage) in stages.iter_mut().zip(STAGES) {
            *slot = timings[format!("{stage}_ms")].as_f64().unwrap_or(0.0);
        }
        batch_sizes.extend(
            timings["batch_sizes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64),
        );
        let created = timestamp(&job["created_at"])?;
        let started = timestamp(&job["started_at"])?;
        let finished = timestamp(&job["finished_at"])?;
        if last.is_none_or(|(_, _, f, _)| finished > f) {
            last = Some((created, started, finished, stages.iter().sum()));
        }
        job_stages.push(stages);
    }
    let (created, started, finished, stage_sum) =
        last.ok_or_else(|| anyhow!("a study with no jobs"))?;
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1e3;
    Ok(Outcome {
        latency_ms: latency.as_secs_f64() * 1e3,
        job_stages,
        before_job_ms: ms(created - acked),
        worker_wait_ms: ms(started - created),
        in_job_other_ms: ms(finished - started) - stage_sum,
        after_job_ms: ms(seen - finished),
        batch_sizes,
        superseded: 0,
        duplicates,
    })
}

fn timestamp(value: &Value) -> anyhow::Result<DateTime<Utc>> {
    let text = value
        .as_str()
        .ok_or_else(|| anyhow!("a done job without a timestamp: {value}"))?;
    Ok(DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("job timestamp {text:?}"))?
        .with_timezone(&Utc))
}

/// `name: backend (adapter), max batch N` of each loaded model, from `/api/v1/models`.
fn models(client: &Client) -> anyhow::Result<Vec<String>> {
    let url = format!("{}/api/v1/models", client.base);
    let mut response = client
        .agent
        .get(&url)
        .header("Authorization", format!("Bearer {}", client.token))
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    ensure!(status == 200, "GET {url} answered {status}: {text}");
    let value: Value = serde_json::from_str(&text).context("/api/v1/models is not JSON")?;
    let models = value["models"]
        .as_array()
        .ok_or_else(|| anyhow!("/api/v1/models without `models`: {text}"))?;
    Ok(models
        .iter()
        .map(|m| {
            format!(
                "{}: {} ({}), max batch {}, batch sizes {}",
                m["name"].as_str().unwrap_or("?"),
                m["backend"].as_str().unwrap_or("?"),
                m["adapter"].as_str().unwrap_or("?"),
                m["max_batch_size"],
                m["batch_sizes"]
            )
        })
        .collect())
}

/// dcmtk storescu, one association for the whole study; fails on a non-zero exit.
fn storescu(client: &Client, dir: &Path) -> anyhow::Result<()> {
    let mut child = Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args([
            "-aet", "LOADGEN", "-aec", "RADSERVE", "+sd", "+r", "+sp", "*.dcm",
        ])
        .arg("127.0.0.1")
        .arg(client.dicom_port.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start storescu (install dcmtk)")?;
    let mut stderr = child.stderr.take().context("storescu stderr")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + client.timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("storescu still running after {:?}", client.timeout);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stderr = reader.join().unwrap_or_default();
    ensure!(
        status.success(),
        "storescu {} failed ({status}): {stderr}",
        dir.display()
    );
    Ok(())
}

/// One STOW-RS request with every instance of the study.
fn stow(client: &Client, files: &[PathBuf]) -> anyhow::Result<()> {
    let boundary = "radserve-loadgen-boundary-5c1e";
    let mut body = Vec::new();
    for file in files {
        write!(
            body,
            "--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
        )?;
        body.extend_from_slice(
            &std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
        );
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n")?;
    let url = format!("{}/dicomweb/studies", client.base);
    let mut response = client
        .agent
        .post(&url)
        .header("Authorization", format!("Bearer {}", client.token))
        .header(
            "Content-Type",
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        )
        .header("Accept", "application/dicom+json")
        .send(&body[..])
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        bail!("STOW-RS answered {status}: {text}");
    }
    Ok(())
}

/// model → (batches, images) from `/metrics`: `radserve_inference_batches_total` and the
/// sum of `radserve_inference_batch_size`.
fn batch_metrics(client: &Client) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let url = format!("{}/metrics", client.base);
    let mut response = client
        .agent
        .get(&url)
        .header("Authorization", format!("Bearer {}", client.token))
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    ensure!(status == 200, "GET {url} answered {status}: {text}");
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let Some(model) = label(labels, "model") else {
            continue;
        };
        let entry = out.entry(model).or_default();
        match name {
            "radserve_inference_batches_total" => entry.0 = value,
            "radserve_inference_batch_size_sum" => entry.1 = value,
            _ => {}
        }
    }
    Ok(out)
}

/// The value of `key` in a Prometheus label set `a="x",b="y"}`.
fn label(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &labels[start..];
    Some(rest[..rest.find('"')?].to_string())
}

fn summarise(
    batching: Batching,
    devices: Vec<String>,
    wall_s: f64,
    outcomes: Vec<Outcome>,
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) -> RunResult {
    let mut stage_medians_ms = [0.0; 6];
    for (i, slot) in stage_medians_ms.iter_mut().enumerate() {
        *slot = median(
            outcomes
                .iter()
                .flat_map(|o| o.job_stages.iter().map(move |s| s[i])),
        );
    }
    let batches = after
        .iter()
        .map(|(model, &(b, n))| {
            let (b0, n0) = before.get(model).copied().unwrap_or_default();
            (model.clone(), (b - b0, n - n0))
        })
        .filter(|(_, (b, _))| *b > 0.0)
        .collect();
    let sizes: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| o.batch_sizes.iter().copied())
        .collect();
    RunResult {
        batching,
        studies: outcomes.len(),
        wall_s,
        latencies_ms: outcomes.iter().map(|o| o.latency_ms).collect(),
        stage_medians_ms,
        before_job_ms: median(outcomes.iter().map(|o| o.before_job_ms)),
        worker_wait_ms: median(outcomes.iter().map(|o| o.worker_wait_ms)),
        in_job_other_ms: median(outcomes.iter().map(|o| o.in_job_other_ms)),
        after_job_ms: median(outcomes.iter().map(|o| o.after_job_ms)),
        batches,
        job_batch_mean: (!sizes.is_empty()).then(|| sizes.iter().sum::<f64>() / sizes.len() as f64),
        superseded: outcomes.iter().map(|o| o.superseded).sum(),
        duplicates: outcomes.iter().map(|o| o.duplicates).sum(),
        devices,
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    percentile(&values.collect::<Vec<_>>(), 50.0)
}

/// Nearest-rank percentile (0 for no values).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn describe(args: &Args) -> String {
    let mix = match args.mix {
        Mix::Xray => format!("radiographs {0}×{0} (1 instance each)", args.xray_size),
        Mix::Ct => format!("CT, {} slices each", args.ct_slices),
        Mix::Mixed => format!(
            "radiographs {0}×{0}, every {1}th study a CT of {2} slices",
            args.xray_size, args.ct_every, args.ct_slices
        ),
    };
    let protocol = match args.protocol {
        Protocol::Dimse => "DIMSE C-STORE (storescu, one association per study)",
        Protocol::Stow => "STOW-RS (one request per study)",
    };
    let trigger = match args.trigger {
        Trigger::Process => {
            "explicit: POST /api/v1/studies/{uid}/process right after the last ack".to_string()
        }
        Trigger::Stability => format!("stability: stable_after_s = {}", args.stable_after_s),
    };
    format!(
        "studies: {} measured + {} warm-up; {mix}\nprotocol: {protocol}\nconcurrency: {} studies in flight; server workers = {}\nprocessing trigger: {trigger}\n",
        args.studies, args.warmup, args.concurrency, args.workers
    )
}

fn report(args: &Args, results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{}", describe(args));
    let _ = writeln!(
        out,
        "| batching | studies | wall s | studies/h | p50 ms | p90 ms | p99 ms | mean batch size (/metrics) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        let batches: Vec<String> = r
            .batches
            .iter()
            .map(|(model, (b, n))| format!("{model} {:.2} ({b:.0} batches)", n / b))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            r.batching.label(),
            r.studies,
            r.wall_s,
            r.per_hour(),
            percentile(&r.latencies_ms, 50.0),
            percentile(&r.latencies_ms, 90.0),
            percentile(&r.latencies_ms, 99.0),
            if batches.is_empty() {
                "—".to_string()
            } else {
                batches.join("; ")
            }
        );
    }
    let _ = writeln!(
        out,
        "\nwhere the time goes, medians in ms (stages: over jobs, from the jobs' `timings`; the rest: over studies, of the last job to finish):\n"
    );
    let _ = writeln!(
        out,
        "| batching | ack→job created | wait for worker | decode | preprocess | queue | compute | postprocess | store | other in job | job done→seen |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let s = &r.stage_medians_ms;
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            r.batching.label(),
            r.before_job_ms,
            r.worker_wait_ms,
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            s[5],
            r.in_job_other_ms,
            r.after_job_ms
        );
    }
    let _ = writeln!(out);
    for r in results {
        let _ = writeln!(
            out,
            "batching {}: mean of the jobs' own batch_sizes {}; {} job(s) cancelled as superseded with no new instance, {} job(s) run twice for the same series and model; models: {}",
            r.batching.label(),
            r.job_batch_mean.map_or("—".into(), |m| format!("{m:.2}")),
            r.superseded,
            r.duplicates,
            r.devices.join("; ")
        );
    }
    if let [on, off] = results {
        let _ = writeln!(
            out,
            "\nthroughput ratio batching on / off: {:.2}× (p50 latency on / off: {:.2}×)",
            on.per_hour() / off.per_hour(),
            percentile(&on.latencies_ms, 50.0) / percentile(&off.latencies_ms, 50.0)
        );
    }
    out
}

fn to_json(args: &Args, results: &[RunResult]) -> Value {
    let runs: Vec<Value> = results
        .iter()
        .map(|r| {
            let stages: serde_json::Map<String, Value> = STAGES
                .iter()
                .zip(r.stage_medians_ms)
                .map(|(s, v)| (format!("{s}_ms"), json!(v)))
                .collect();
            let batches: serde_json::Map<String, Value> = r
                .batches
                .iter()
                .map(|(model, (b, n))| {
                    (
                        model.clone(),
                        json!({ "batches": b, "images": n, "mean_batch_size": n / b }),
                    )
                })
                .collect();
            json!({
                "batching": match r.batching { Batching::On => "on", Batching::Off => "off" },
                "studies": r.studies,
                "wall_s": r.wall_s,
                "studies_per_hour": r.per_hour(),
                "latency_ms": {
                    "p50": percentile(&r.latencies_ms, 50.0),
                    "p90": percentile(&r.latencies_ms, 90.0),
                    "p99": percentile(&r.latencies_ms, 99.0),
                    "all": r.latencies_ms,
                },
                "median_stage_ms": stages,
                "median_ack_to_job_created_ms": r.before_job_ms,
                "median_wait_for_worker_ms": r.worker_wait_ms,
                "median_other_in_job_ms": r.in_job_other_ms,
                "median_job_done_to_seen_ms": r.after_job_ms,
                "batches_from_metrics": batches,
                "mean_job_batch_size": r.job_batch_mean,
                "superseded_jobs": r.superseded,
                "duplicate_jobs": r.duplicates,
                "models": r.devices,
            })
        })
        .collect();
    let ratio = match results {
        [on, off] => json!(on.per_hour() / off.per_hour()),
        _ => Value::Null,
    };
    json!({
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "mix": format!("{:?}", args.mix).to_lowercase(),
        "concurrency": args.concurrency,
        "studies": args.studies,
        "warmup": args.warmup,
        "trigger": format!("{:?}", args.trigger).to_lowercase(),
        "workers": args.workers,
        "ct_slices": args.ct_slices,
        "xray_size": args.xray_size,
        "runs": runs,
        "throughput_ratio_on_off": ratio,
    })
}
