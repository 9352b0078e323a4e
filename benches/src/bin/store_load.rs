//! Load generator for the archive's ingest path: C-STORE over one and over several
//! associations, radserve against dcmtk's `storescp` writing to disk on the same machine in
//! the same run, and STOW-RS in batches.
//!
//! ```text
//! cargo run -p radserve-benches --bin store_load -- [--instances 1000] [--parallel 4] [--stow-batch 50] [--rounds 3]
//! ```
//!
//! This machine's disk and CPU drift within minutes, so each C-STORE case runs `--rounds`
//! times, storescp and radserve alternating, each on a new output directory (kept until the
//! run ends, so that no case follows a mass deletion); the ratio of
//! each round is its two neighbouring measurements', and the summary gives the median.
//!
//! The client is dcmtk's `storescu` in every C-STORE case (with `TCP_NODELAY=1`, as is the
//! server side of storescp, so Nagle's algorithm is not what we measure). radserve fsyncs and
//! indexes every instance before acknowledging it; storescp only writes the file — the ratio
//! is therefore conservative for radserve. A first case measures the disk floor: the same
//! files written durably one by one, with no server at all (see `durable_copies`).

use std::ffi::OsString;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dicom_samples::generate::{GenerateOptions, generate};
use radserve_tests::RadServe;

#[derive(Parser)]
#[command(about = "C-STORE and STOW-RS throughput of radserve against dcmtk storescp")]
struct Args {
    /// CT slices (512×512, 16-bit) to send; a multiple of 100.
    #[arg(long, default_value_t = 1000)]
    instances: usize,
    /// Parallel associations in the second C-STORE case.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Instances per STOW-RS request.
    #[arg(long, default_value_t = 50)]
    stow_batch: usize,
    /// Rounds of each C-STORE case (storescp, then radserve), for a median ratio.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct Measurement {
    name: String,
    instances: usize,
    bytes: u64,
    elapsed: Duration,
}

impl Measurement {
    fn per_second(&self) -> f64 {
        self.instances as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.instances == 0
        || args.instances % 100 != 0
        || args.parallel == 0
        || args.stow_batch == 0
        || args.rounds == 0
    {
        bail!(
            "--instances must be a positive multiple of 100; --parallel, --stow-batch and --rounds positive"
        );
    }
    let work = tempfile::tempdir()?;
    let set_dir = work.path().join("set");
    eprintln!("generating {} CT slices ...", args.instances);
    let mut options = GenerateOptions::new(&set_dir);
    options.ct_studies = args.instances / 100;
    options.ct_slices = 100;
    options.xray_studies = 0;
    options.seed = 1000;
    generate(&options, &|| {})?;
    let files = dicom_files(&set_dir)?;
    let bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    check_free_space(work.path(), bytes * (4 * args.rounds as u64 + 4))?;
    // The same files split into `parallel` directories, one storescu per directory.
    let shards = shard(&files, args.parallel, &work.path().join("shards"))?;

    // What the disk allows at all: the same files copied one after another, each made
    // durable as radserve makes a blob durable (write, fdatasync, rename, fsync the
    // directory), with no network, parsing or index. No durable store on one association
    // can beat this; it is the peer that says how much of radserve's cost is the disk's.
    let floor_dir = work.path().join("floor");
    std::fs::create_dir_all(&floor_dir)?;
    let mut results = vec![measure(
        "disk floor: write + fdatasync + rename + dir fsync, 1 thread".to_owned(),
        files.len(),
        bytes,
        || durable_copies(&files, &floor_dir),
    )?];
    for (case, (label, dirs)) in [
        ("1 association", vec![set_dir.clone()]),
        ("parallel", shards.clone()),
    ]
    .into_iter()
    .enumerate()
    {
        let label = if label == "parallel" {
            format!("{} associations", args.parallel)
        } else {
            label.to_string()
        };
        for round in 1..=args.rounds {
            let suffix = if args.rounds > 1 {
                format!(" (round {round})")
            } else {
                String::new()
            };
            // Each measurement writes into a new directory, and nothing is deleted before the
            // run ends (see `check_free_space`): ext4 without a journal (as here) skips inodes
            // freed in the last minute when it allocates one, looking each up in the buffer
            // cache, so a case measured right after 1,000 deletions pays for them on every
            // file it creates — a cost an archive, which rarely deletes, does not have.
            let out = work.path().join(format!("storescp-out-{case}-{round}"));
            let data = work.path().join(format!("radserve-data-{case}-{round}"));
            std::fs::create_dir_all(&out)?;
            let port = free_port()?;
            let storescp = StoreScp::start(port, &out)?;
            results.push(measure(
                format!("storescp, C-STORE, {label}{suffix}"),
                files.len(),
                bytes,
                || storescu_all(&dirs, port, "STORESCP"),
            )?);
            drop(storescp);

            let server = RadServe::serve([OsString::from("--data"), data.into_os_string()]);
            // The demo models load and warm up on both cores for a second or two after the
            // listening line: measured then, storage would share the CPU with them.
            server.wait_ready();
            results.push(measure(
                format!("radserve, C-STORE, {label}{suffix}"),
                files.len(),
                bytes,
                || storescu_all(&dirs, server.dicom_port, "RADSERVE"),
            )?);
        }
    }

    let token = format!("load-{}", std::process::id());
    let data = work.path().join("radserve-stow");
    let mut cmd = radserve_tests::radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", &token)
        .args(["serve", "--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(&data);
    let server = RadServe::start(cmd);
    server.wait_ready();
    results.push(measure(
        format!("radserve, STOW-RS, {} per request", args.stow_batch),
        files.len(),
        bytes,
        || stow_all(&server, &token, &files, args.stow_batch),
    )?);

    print_table(&results, args.parallel);
    Ok(())
}

/// Every case's output stays until the run ends: the set, its shards, the disk floor, two
/// servers × two cases × rounds, and STOW-RS. Refuse to start when the disk cannot hold it.
fn check_free_space(dir: &Path, needed: u64) -> anyhow::Result<()> {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("cannot run df")?;
    let available: u64 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .context("cannot read df's output")?;
    if available < needed {
        bail!(
            "this run keeps {} GB of output until it ends and {} has {} GB free: use fewer --rounds or --instances",
            needed / 1_000_000_000 + 1,
            dir.display(),
            available / 1_000_000_000
        );
    }
    Ok(())
}

fn measure(
    name: String,
    instances: usize,
    bytes: u64,
    run: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Measurement> {
    eprintln!("{name} ...");
    // Start every case with nothing left to write back: storescp does not fsync, so without
    // this the kernel writes its 500 MB back during the next case and charges it there.
    let synced = Command::new("sync").status().context("cannot run sync")?;
    if !synced.success() {
        bail!("sync failed: {synced}");
    }
    let started = Instant::now();
    run()?;
    Ok(Measurement {
        name,
        instances,
        bytes,
        elapsed: started.elapsed(),
    })
}

fn print_table(results: &[Measurement], parallel: usize) {
    let floor = results.iter().find(|m| m.name.starts_with("disk floor"));
    println!("| case | instances | seconds | instances/s | MB/s | vs storescp | vs disk floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, m) in results.iter().enumerate() {
        let ratio = storescp_ratio(results, i).map_or("—".to_string(), |r| format!("{r:.2}×"));
        let vs_floor = floor.map_or("—".to_string(), |f| {
            format!("{:.2}×", m.per_second() / f.per_second())
        });
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            m.name,
            m.instances,
            m.elapsed.as_secs_f64(),
            m.per_second(),
            m.mb_per_second(),
            ratio,
            vs_floor
        );
    }
    println!();
    for case in [
        "1 association".to_owned(),
        format!("{parallel} associations"),
    ] {
        let mut ratios: Vec<f64> = (0..results.len())
            .filter(|&i| results[i].name.contains(&format!("C-STORE, {case}")))
            .filter_map(|i| storescp_ratio(results, i))
            .collect();
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
        println!(
            "radserve / storescp, C-STORE, {case}: median {:.2}× over {} round(s) ({})",
            median(&ratios),
            ratios.len(),
            listed.join(", ")
        );
    }
    println!(
        "\n(storescp writes files without fsync; radserve fsyncs and indexes each instance; {parallel} parallel associations = {parallel} storescu processes)"
    );
}

/// For a radserve C-STORE measurement, its throughput over the storescp measurement just
/// before it (same case and round).
fn storescp_ratio(results: &[Measurement], i: usize) -> Option<f64> {
    let m = &results[i];
    if !m.name.starts_with("radserve, C-STORE") {
        return None;
    }
    let peer = results[..i].last()?;
    let same_case = peer.name.strip_prefix("storescp")? == m.name.strip_prefix("radserve")?;
    same_case.then(|| m.per_second() / peer.per_second())
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// dcmtk's storescp writing every instance to `out`, one process per association (--fork).
struct StoreScp(Child);

impl StoreScp {
    fn start(port: u16, out: &Path) -> anyhow::Result<StoreScp> {
        let child = Command::new("storescp")
            .env("TCP_NODELAY", "1")
            .args(["--fork", "-aet", "STORESCP", "-od"])
            .arg(out)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start storescp (install dcmtk)")?;
        // Wait until it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("storescp did not start listening on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(StoreScp(child))
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies every file into `dir` durably, one at a time (see the disk-floor case in `main`).
fn durable_copies(files: &[PathBuf], dir: &Path) -> anyhow::Result<()> {
    for (i, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file)?;
        let staged = dir.join(format!("{i:06}.tmp"));
        let mut out = std::fs::File::create(&staged)?;
        out.write_all(&bytes)?;
        out.sync_data()?;
        drop(out);
        std::fs::rename(&staged, dir.join(format!("{i:06}.dcm")))?;
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One storescu per directory, all at once; every one must succeed.
fn storescu_all(dirs: &[PathBuf], port: u16, called_ae: &str) -> anyhow::Result<()> {
    let children: Vec<Child> = dirs
        .iter()
        .map(|dir| {
            Command::new("storescu")
                .env("TCP_NODELAY", "1")
                .args([
                    "-aet", "LOADGEN", "-aec", called_ae, "+sd", "+r", "+sp", "*.dcm",
                ])
                .arg("127.0.0.1")
                .arg(port.to_string())
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot start storescu (install dcmtk)")
        })
        .collect::<Result<_, _>>()?;
    for child in children {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "storescu failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

fn stow_all(server: &RadServe, token: &str, files: &[PathBuf], batch: usize) -> anyhow::Result<()> {
    let agent = radserve_tests::http_client();
    let boundary = "radserve-load-boundary-7f3a";
    for chunk in files.chunks(batch) {
        let mut body = Vec::new();
        for file in chunk {
            write!(
                body,
                "--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
            )?;
            body.extend_from_slice(&std::fs::read(file)?);
            body.extend_from_slice(b"\r\n");
        }
        write!(body, "--{boundary}--\r\n")?;
        let response = agent
            .post(server.url("/dicomweb/studies"))
            .header("Authorization", format!("Bearer {token}"))
            .header(
                "Content-Type",
                format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
            )
            .header("Accept", "application/dicom+json")
            .send(&body[..])?;
        if response.status().as_u16() != 200 {
            bail!("STOW-RS answered {}", response.status());
        }
    }
    Ok(())
}

fn shard(files: &[PathBuf], parts: usize, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = (0..parts).map(|i| root.join(format!("{i}"))).collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir)?;
    }
    for (i, file) in files.iter().enumerate() {
        let target = dirs[i % parts].join(format!("{i:06}.dcm"));
        std::fs::hard_link(file, &target).or_else(|_| std::fs::copy(file, &target).map(|_| ()))?;
    }
    Ok(dirs)
}

fn dicom_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "dcm") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
