//! The `radserve` binary: parses the command line and hands over to the library
//! (`serve`: the server; `token create`: a new bearer token, printed once; `emr import`:
//! EMR records from an export file).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use radserve::cli::{
    Cli, Command, EmrCommand, EmrImportArgs, ServeArgs, TokenCommand, TokenCreateArgs,
};
use radserve::config::Settings;
use radserve::serve::Server;
use radserve::store::{Archive, ArchiveConfig};
use radserve::{auth, shutdown, telemetry};

/// mimalloc rather than glibc's malloc: ingest allocates and frees buffers of 64–512 KiB for
/// every instance, which glibc hands back to the kernel and faults in again (page faults and
/// `madvise` were ~10 % of the server's CPU on one association); mimalloc keeps them. Measured
/// in benches/README.md ("The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors (unknown flag, invalid value) exit here with status 2.
    let cli = Cli::parse();
    telemetry::init();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Token(TokenCommand::Create(args)) => create_token(&args),
        Command::Emr(EmrCommand::Import(args)) => emr_import(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("radserve: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::load(&args.overrides())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Handlers first: a signal sent right after the listening line must not kill us.
        let stop = shutdown::signal().context("cannot install signal handlers")?;
        let server = Server::bind(settings).await?;
        announce(&server.listening_line());
        server.run(stop).await?;
        Ok(())
    })
}

/// `radserve token create`: the token goes to stdout (alone, for scripts), what it is
/// to stderr.
fn create_token(args: &TokenCreateArgs) -> anyhow::Result<()> {
    let settings = Settings::load(&args.overrides())?;
    // Before the archive is opened (and its directory perhaps created).
    auth::token::validate_label(&args.label)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let created = runtime.block_on(async {
        let archive = Archive::open(ArchiveConfig {
            data_dir: settings.data.clone(),
            duplicate_policy: settings.store.duplicate_policy,
        })
        .await
        .with_context(|| format!("cannot open the archive in {}", settings.data.display()))?;
        anyhow::Ok(auth::token::create(&archive, args.role, &args.label).await?)
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", created.token)
        .and_then(|()| out.flush())
        .context("cannot write the token to stdout")?;
    eprintln!(
        "created token #{} with role {}{}; it is shown only this once",
        created.id,
        args.role,
        if args.label.is_empty() {
            String::new()
        } else {
            format!(" for {:?}", args.label)
        },
    );
    Ok(())
}

/// `radserve emr import`: reads the export (a progress bar on a terminal), stores its
/// records, joins the studies again and prints a summary; refused rows go to stderr.
fn emr_import(args: &EmrImportArgs) -> anyhow::Result<()> {
    use radserve::emr::csv_import::{self, Format, Mapping};
    let settings = Settings::load(&args.overrides())?;
    let emr_config = radserve::emr::EmrConfig::from_table(&settings.emr)
        .map_err(|e| anyhow::anyhow!("[emr]: {e}"))?;
    let mapping = match (&args.map, args.format) {
        (Some(path), Format::Csv) => Some(Mapping::load(path)?),
        (None, Format::Csv) => anyhow::bail!("--format csv needs --map FILE (the column mapping)"),
        (Some(_), _) => anyhow::bail!("--map applies to --format csv only"),
        (None, _) => None,
    };
    let data = csv_import::read_bounded(&args.file)?;
    let bar = indicatif::ProgressBar::new(data.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} reading {msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(args.file.display().to_string());
    let mut read = csv_import::read_export(&data, args.format, mapping.as_ref(), |at| {
        bar.set_position(at)
    })?;
    bar.finish_and_clear();
    drop(data);
    for error in &read.errors {
        eprintln!("refused: {error}");
    }
    if read.refused > read.errors.len() {
        eprintln!(
            "refused: {} more rows not listed",
            read.refused - read.errors.len()
        );
    }
    let records = std::mem::take(&mut read.records);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let archive = Archive::open(ArchiveConfig {
            data_dir: settings.data.clone(),
            duplicate_policy: settings.store.duplicate_policy,
        })
        .await
        .with_context(|| format!("cannot open the archive in {}", settings.data.display()))?;
        let emr = radserve::emr::Emr::open(archive, emr_config.join)
            .await
            .context("cannot load the stored EMR records")?;
        anyhow::Ok(emr.ingest(records).await?)
    })?;
    println!("{}", csv_import::summary(&read, &report));
    if !csv_import::imported_anything(&report) {
        anyhow::bail!("nothing was imported from {}", args.file.display());
    }
    Ok(())
}

/// Prints the listening line on stdout and flushes it: tools wait for it.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "cannot write the listening line to stdout");
    }
}
