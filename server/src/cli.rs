//! The command line:
//!
//! - `radserve serve [--data DIR] [--config FILE] [--dicom-port N] [--http-port N]
//!   [--ae-title T] [--device auto|wgpu|vulkan|cuda|cpu]`;
//! - `radserve token create --role pacs|clinician|ml|admin [--label TEXT] [--data DIR]
//!   [--config FILE]`: prints a new bearer token once;
//! - `radserve emr import FILE --format csv|hl7|fhir [--map mapping.toml] [--data DIR]
//!   [--config FILE]`: EMR records from an export file into the data directory.
//!
//! Flags are the top layer of the settings; [`ServeArgs::overrides`] hands them to
//! [`crate::config`], which adds the environment, the config file and the defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::auth::Role;
use crate::config::{self, AeTitle, Device, Overrides};
use crate::emr::csv_import::Format;

/// radserve: medical imaging AI inference server.
#[derive(Debug, Parser)]
#[command(name = "radserve", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive studies over DICOM and serve the HTTP API until SIGINT/SIGTERM.
    ///
    /// Each setting can also be given as a RADSERVE_* environment variable or in the
    /// config file; a flag wins over the variable, which wins over the file.
    Serve(ServeArgs),
    /// Manage the bearer tokens HTTP clients authenticate with.
    #[command(subcommand)]
    Token(TokenCommand),
    /// EMR records: offline imports into the data directory.
    #[command(subcommand)]
    Emr(EmrCommand),
}

#[derive(Debug, Subcommand)]
pub enum EmrCommand {
    /// Import an EMR export (CSV with a mapping, HL7 v2 messages or a FHIR Bundle) and join
    /// the archived studies again; prints a summary. Exit 0 when anything was imported.
    Import(EmrImportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EmrImportArgs {
    /// The export file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The file's format: csv, hl7 or fhir
    #[arg(long, value_name = "csv|hl7|fhir", value_parser = parse_format)]
    pub format: Format,

    /// Mapping of the CSV columns (TOML; see scripts/emr/csv-mapping.example.toml); csv only
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,

    /// Data directory [env: RADSERVE_DATA] [default: ./radserve-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Config file [env: RADSERVE_CONFIG] [default: ./radserve.toml when it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl EmrImportArgs {
    /// The flags as the top settings layer (the data directory and the config file).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data: self.data.clone(),
            config: self.config.clone(),
            ..Overrides::default()
        }
    }
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token, store its SHA-256 hash and print the token once on stdout.
    Create(TokenCreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// What the token may do: pacs (store), clinician (read), ml (models, metrics), admin (all)
    #[arg(long, value_enum)]
    pub role: Role,

    /// Who or what the token is for; shown in audit records (at most 64 characters)
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub label: String,

    /// Data directory holding the index [env: RADSERVE_DATA] [default: ./radserve-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Config file [env: RADSERVE_CONFIG] [default: ./radserve.toml when it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TokenCreateArgs {
    /// The flags as the top settings layer (only the data directory matters here).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data: self.data.clone(),
            config: self.config.clone(),
            ..Overrides::default()
        }
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Data directory, created if missing [env: RADSERVE_DATA] [default: ./radserve-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Config file [env: RADSERVE_CONFIG] [default: ./radserve.toml when it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// DIMSE (DICOM) port; 0 picks a free port [env: RADSERVE_DICOM_PORT] [default: 11112]
    #[arg(long, value_name = "N")]
    pub dicom_port: Option<u16>,

    /// HTTP port; 0 picks a free port [env: RADSERVE_HTTP_PORT] [default: 8080]
    #[arg(long, value_name = "N")]
    pub http_port: Option<u16>,

    /// Our DICOM AE title, 1 to 16 characters [env: RADSERVE_AE_TITLE] [default: RADSERVE]
    #[arg(long, value_name = "T", value_parser = parse_ae_title)]
    pub ae_title: Option<AeTitle>,

    /// Compute device for the models [env: RADSERVE_DEVICE] [default: auto]
    #[arg(long, value_name = "auto|wgpu|vulkan|cuda|cpu", value_parser = parse_device)]
    pub device: Option<Device>,
}

impl ServeArgs {
    /// The flags as the top settings layer.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data: self.data.clone(),
            config: self.config.clone(),
            dicom_port: self.dicom_port,
            http_port: self.http_port,
            ae_title: self.ae_title.clone(),
            device: self.device,
        }
    }
}

fn parse_ae_title(s: &str) -> Result<AeTitle, config::ValueError> {
    AeTitle::new(s)
}

fn parse_device(s: &str) -> Result<Device, config::ValueError> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("radserve").chain(args.iter().copied()))?;
        match cli.command {
            Command::Serve(args) => Ok(args),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    fn parse_token_create(args: &[&str]) -> Result<TokenCreateArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["radserve", "token", "create"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        match cli.command {
            Command::Token(TokenCommand::Create(args)) => Ok(args),
            other => panic!("expected token create, got {other:?}"),
        }
    }

    #[test]
    fn token_create_flags() {
        let args =
            parse_token_create(&["--role", "clinician", "--label", "viewer", "--data", "/d"])
                .unwrap();
        assert_eq!(args.role, Role::Clinician);
        assert_eq!(args.label, "viewer");
        assert_eq!(args.overrides().data, Some("/d".into()));
        assert_eq!(parse_token_create(&["--role", "ml"]).unwrap().label, "");

        assert!(parse_token_create(&[]).is_err(), "--role is required");
        let err = parse_token_create(&["--role", "root"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pacs, clinician, ml, admin"), "{err}");
    }

    #[test]
    fn emr_import_flags() {
        let cli = Cli::try_parse_from([
            "radserve", "emr", "import", "x.csv", "--format", "csv", "--map", "m.toml", "--data",
            "/d",
        ])
        .unwrap();
        let Command::Emr(EmrCommand::Import(args)) = cli.command else {
            panic!("expected emr import");
        };
        assert_eq!(args.format, Format::Csv);
        assert_eq!(args.map, Some("m.toml".into()));
        assert_eq!(args.overrides().data, Some("/d".into()));
        let err = Cli::try_parse_from(["radserve", "emr", "import", "x", "--format", "xls"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("csv, hl7, fhir"), "{err}");
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags() {
        let args = parse(&[
            "serve",
            "--data",
            "/tmp/d",
            "--config",
            "c.toml",
            "--dicom-port",
            "0",
            "--http-port",
            "8081",
            "--ae-title",
            "MYAE",
            "--device",
            "cpu",
        ])
        .unwrap();
        let o = args.overrides();
        assert_eq!(o.data, Some("/tmp/d".into()));
        assert_eq!(o.config, Some("c.toml".into()));
        assert_eq!(o.dicom_port, Some(0));
        assert_eq!(o.http_port, Some(8081));
        assert_eq!(o.ae_title.unwrap().as_str(), "MYAE");
        assert_eq!(o.device, Some(Device::Cpu));

        assert_eq!(parse(&["serve"]).unwrap().overrides(), Overrides::default());
    }

    #[test]
    fn bad_flag_values_are_explained() {
        let err = parse(&["serve", "--device", "quantum"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--device"), "{err}");
        assert!(err.contains("unknown device \"quantum\""), "{err}");
        assert!(err.contains("auto, wgpu, vulkan, cuda, cpu"), "{err}");

        let err = parse(&["serve", "--ae-title", "WAY-TOO-LONG-AE-TITLE"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than 16 characters"), "{err}");

        let err = parse(&["serve", "--dicom-port", "65536"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dicom-port"), "{err}");
    }
}
