//! The `radserve` binary: parses the command line and hands over to the library
//! (`serve`: the server; `token create`: a new bearer token, printed once).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use radserve::cli::{Cli, Command, ServeArgs, TokenCommand, TokenCreateArgs};
use radserve::config::Settings;
use radserve::serve::Server;
use radserve::store::{Archive, ArchiveConfig};
use radserve::{auth, shutdown, telemetry};

fn main() -> ExitCode {
    // Usage errors (unknown flag, invalid value) exit here with status 2.
    let cli = Cli::parse();
    telemetry::init();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Token(TokenCommand::Create(args)) => create_token(&args),
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

/// Prints the listening line on stdout and flushes it: tools wait for it.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "cannot write the listening line to stdout");
    }
}
