//! Settings: what the server is told, where each value comes from, and whether it makes sense.
//!
//! Every setting has four possible sources. Highest precedence first:
//!
//! 1. command-line flags (`--data`, `--dicom-port`, ...; see [`crate::cli`]),
//! 2. `RADSERVE_*` environment variables (see [`env`](mod@env); an empty value counts as unset),
//! 3. the config file: `--config FILE`, else `RADSERVE_CONFIG`, else `./radserve.toml`
//!    when it exists (see [`FileConfig`] for its keys),
//! 4. embedded defaults (`./radserve-data`, DIMSE 11112 as `RADSERVE`, HTTP 8080, device
//!    `auto`).
//!
//! Flags and environment variables are each read into an [`Overrides`] layer; the file
//! into a [`FileConfig`]; [`Settings::resolve`] merges the layers (pure, no I/O) and
//! [`Settings::load`] does the whole job. Values are validated where they are parsed
//! ([`AeTitle`], [`Device`], [`AllowedCaller`]) so an invalid value never reaches a
//! [`Settings`]; errors name the flag, variable or file key they came from.
//!
//! Relative paths in the config file are relative to the file's directory.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

pub use crate::store::DuplicatePolicy;

/// Embedded default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./radserve-data";
/// Embedded default DIMSE port.
pub const DEFAULT_DICOM_PORT: u16 = 11112;
/// Embedded default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Embedded default AE title.
pub const DEFAULT_AE_TITLE: &str = "RADSERVE";
/// The config file read when neither `--config` nor `RADSERVE_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "radserve.toml";
/// Default maximum PDU length we accept, in bytes.
pub const DEFAULT_MAX_PDU: u32 = 131_072;
/// Allowed range for `dicom.max_pdu` (dcmtk's lower bound; 16 MiB keeps buffers sane).
pub const MAX_PDU_RANGE: std::ops::RangeInclusive<u32> = 4096..=16 * 1024 * 1024;
/// Default maximum HTTP request body, in MiB.
pub const DEFAULT_MAX_BODY_MB: u64 = 2048;
/// Allowed range for `http.max_body_mb`.
pub const MAX_BODY_MB_RANGE: std::ops::RangeInclusive<u64> = 1..=1024 * 1024;

/// Names of the environment variables read by [`Overrides::from_env`].
pub mod env {
    pub const DATA: &str = "RADSERVE_DATA";
    pub const CONFIG: &str = "RADSERVE_CONFIG";
    pub const DICOM_PORT: &str = "RADSERVE_DICOM_PORT";
    pub const HTTP_PORT: &str = "RADSERVE_HTTP_PORT";
    pub const AE_TITLE: &str = "RADSERVE_AE_TITLE";
    pub const DEVICE: &str = "RADSERVE_DEVICE";
}

/// A value that failed validation (without saying where it came from).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid AE title {value:?}: {reason}")]
    AeTitle { value: String, reason: &'static str },
    #[error("unknown device {0:?}: expected one of auto, wgpu, vulkan, cuda, cpu")]
    Device(String),
    #[error("invalid port {0:?}: expected a number from 0 to 65535 (0 picks a free port)")]
    Port(String),
    #[error("invalid allowed caller {value:?}: {reason}")]
    AllowedCaller { value: String, reason: String },
    #[error("max_pdu {0} is out of range: expected 4096 to 16777216 bytes")]
    MaxPdu(u32),
    #[error("max_body_mb {0} is out of range: expected 1 to 1048576")]
    MaxBodyMb(u64),
    #[error("value is not valid UTF-8")]
    NotUnicode,
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {reason}", path.display())]
    ReadFile {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("invalid config file {}: {reason}", path.display())]
    ParseFile { path: PathBuf, reason: String },
    /// A flag, environment variable or file key holds an invalid value.
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: ValueError },
}

/// The compute device models run on. Only recorded for now; `auto` prefers a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Device {
    #[default]
    Auto,
    Wgpu,
    Vulkan,
    Cuda,
    Cpu,
}

impl Device {
    /// Every device, in the order the CLI lists them.
    pub const ALL: [Device; 5] = [
        Device::Auto,
        Device::Wgpu,
        Device::Vulkan,
        Device::Cuda,
        Device::Cpu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Wgpu => "wgpu",
            Device::Vulkan => "vulkan",
            Device::Cuda => "cuda",
            Device::Cpu => "cpu",
        }
    }
}

impl FromStr for Device {
    type Err = ValueError;

    /// Parses a device name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Device::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ValueError::Device(s.to_owned()))
    }
}

impl TryFrom<String> for Device {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DICOM application entity title (PS3.5 AE): 1 to 16 characters of the default
/// repertoire, no backslash, no control characters, not all spaces. Leading and trailing
/// spaces are not significant and are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct AeTitle(String);

impl AeTitle {
    pub fn new(value: &str) -> Result<Self, ValueError> {
        let invalid = |reason| ValueError::AeTitle {
            value: value.to_owned(),
            reason,
        };
        let trimmed = value.trim_matches(' ');
        if trimmed.is_empty() {
            return Err(invalid("it is empty or all spaces"));
        }
        if trimmed.chars().count() > 16 {
            return Err(invalid("it is longer than 16 characters"));
        }
        if trimmed.contains('\\') {
            return Err(invalid("it contains a backslash"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid("it contains a control character"));
        }
        if !trimmed.is_ascii() {
            return Err(invalid("it contains a non-ASCII character"));
        }
        Ok(AeTitle(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AeTitle {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AeTitle::new(s)
    }
}

impl TryFrom<String> for AeTitle {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AeTitle::new(&s)
    }
}

impl fmt::Display for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An entry of `dicom.allowed_callers`: a calling AE title, optionally bound to the
/// peer's IP address (`"MODALITY1"` or `"MODALITY1@10.0.0.7"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AllowedCaller {
    pub ae_title: AeTitle,
    pub host: Option<IpAddr>,
}

impl AllowedCaller {
    /// Whether an association from `calling_ae_title` at `peer` matches this entry.
    pub fn matches(&self, calling_ae_title: &str, peer: IpAddr) -> bool {
        self.ae_title.as_str() == calling_ae_title.trim_matches(' ')
            && self
                .host
                .is_none_or(|host| host.to_canonical() == peer.to_canonical())
    }
}

impl FromStr for AllowedCaller {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ValueError::AllowedCaller {
            value: s.to_owned(),
            reason,
        };
        let (ae, host) = match s.rsplit_once('@') {
            Some((ae, host)) => {
                let ip = host
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|_| invalid(format!("host {host:?} is not an IP address")))?;
                (ae, Some(ip))
            }
            None => (s, None),
        };
        let ae_title = AeTitle::new(ae).map_err(|e| invalid(e.to_string()))?;
        Ok(AllowedCaller { ae_title, host })
    }
}

impl TryFrom<String> for AllowedCaller {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for AllowedCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Some(host) => write!(f, "{}@{host}", self.ae_title),
            None => write!(f, "{}", self.ae_title),
        }
    }
}

/// One layer of settings given from outside the file: the flags or the environment.
/// `None` means "not set in this layer".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub data: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub dicom_port: Option<u16>,
    pub http_port: Option<u16>,
    pub ae_title: Option<AeTitle>,
    pub device: Option<Device>,
}

impl Overrides {
    /// Reads the `RADSERVE_*` variables through `lookup` (e.g. `std::env::var_os`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let path = |key: &str| lookup(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        Ok(Overrides {
            data: path(env::DATA),
            config: path(env::CONFIG),
            dicom_port: env_value(&lookup, env::DICOM_PORT, parse_port)?,
            http_port: env_value(&lookup, env::HTTP_PORT, parse_port)?,
            ae_title: env_value(&lookup, env::AE_TITLE, AeTitle::new)?,
            device: env_value(&lookup, env::DEVICE, str::parse)?,
        })
    }

    /// Reads the `RADSERVE_*` variables of this process.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::from_env(|key| std::env::var_os(key))
    }
}

/// Parses a TCP port (0 = pick a free one).
pub fn parse_port(s: &str) -> Result<u16, ValueError> {
    s.trim().parse().map_err(|_| ValueError::Port(s.to_owned()))
}

/// One environment variable, parsed; empty or absent is `None`.
fn env_value<T>(
    lookup: &impl Fn(&str) -> Option<OsString>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, ValueError>,
) -> Result<Option<T>, ConfigError> {
    match lookup(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(value) => {
            let value = value
                .into_string()
                .map_err(|_| invalid(key, ValueError::NotUnicode))?;
            parse(&value).map(Some).map_err(|e| invalid(key, e))
        }
    }
}

fn invalid(origin: &str, reason: ValueError) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        reason,
    }
}

/// The config file (`radserve.toml`). Every key is optional; unknown keys are errors.
///
/// ```toml
/// data = "./radserve-data"
/// device = "auto"                 # auto | wgpu | vulkan | cuda | cpu
/// [dicom]
/// port = 11112
/// ae_title = "RADSERVE"
/// allowed_callers = []            # empty = anyone; else "AE" or "AE@ip"
/// max_pdu = 131072
/// [http]
/// port = 8080
/// max_body_mb = 2048
/// [store]
/// duplicate_policy = "keep_first"  # keep_first | replace | reject
/// # [[models]], [[routes]] and [pipeline] are read by `infer` and `pipeline`
/// # (see `infer::ModelConfig`, `pipeline::routing::RouteConfig`, `pipeline::PipelineConfig`).
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data: Option<PathBuf>,
    pub device: Option<Device>,
    #[serde(default)]
    pub dicom: FileDicom,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub store: FileStore,
    #[serde(default)]
    pub models: Vec<toml::Table>,
    #[serde(default)]
    pub routes: Vec<toml::Table>,
    /// `[pipeline]`, kept raw until the pipeline reads it.
    #[serde(default)]
    pub pipeline: toml::Table,
    /// `[emr]`, kept raw until the EMR join reads it.
    #[serde(default)]
    pub emr: toml::Table,
}

/// `[dicom]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDicom {
    pub port: Option<u16>,
    pub ae_title: Option<AeTitle>,
    pub allowed_callers: Option<Vec<AllowedCaller>>,
    pub max_pdu: Option<u32>,
}

/// `[http]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    pub port: Option<u16>,
    pub max_body_mb: Option<u64>,
}

/// `[store]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    /// What to do with a second, different copy of a stored SOP Instance UID.
    pub duplicate_policy: Option<DuplicatePolicy>,
}

impl FileConfig {
    /// Parses the text of the config file found at `path` (used in messages and to
    /// resolve relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            reason: e.to_string().trim_end().to_owned(),
        })?;
        if let Some(dir) = path.parent() {
            if let Some(data) = &file.data {
                file.data = Some(dir.join(data));
            }
            // Model packages, like the data directory, are relative to the config file.
            for model in &mut file.models {
                if let Some(toml::Value::String(package)) = model.get_mut("package") {
                    *package = dir.join(&*package).to_string_lossy().into_owned();
                }
            }
        }
        Ok(file)
    }

    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::ReadFile {
            path: path.to_owned(),
            reason,
        })?;
        Self::parse(&text, path)
    }
}

/// Everything the server needs to know to start, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Root of all stored data; created at start.
    pub data: PathBuf,
    pub device: Device,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub dicom: DicomSettings,
    pub http: HttpSettings,
    pub store: StoreSettings,
    /// `[[models]]` tables, kept raw until the model registry reads them.
    pub models: Vec<toml::Table>,
    /// `[[routes]]` tables, kept raw until the routing stage reads them.
    pub routes: Vec<toml::Table>,
    /// `[pipeline]`, kept raw until the pipeline reads it.
    pub pipeline: toml::Table,
    /// `[emr]`, kept raw until the EMR join reads it.
    pub emr: toml::Table,
}

/// DIMSE listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomSettings {
    /// 0 picks a free port.
    pub port: u16,
    /// Our AE title; associations calling another title are rejected.
    pub ae_title: AeTitle,
    /// Empty: any calling AE may associate. Otherwise only these.
    pub allowed_callers: Vec<AllowedCaller>,
    /// Largest PDU we accept, in bytes.
    pub max_pdu: u32,
}

/// HTTP listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// 0 picks a free port.
    pub port: u16,
    /// Largest request body, in MiB.
    pub max_body_mb: u64,
}

/// Archive settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreSettings {
    /// See [`DuplicatePolicy`]; `keep_first` by default.
    pub duplicate_policy: DuplicatePolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data: PathBuf::from(DEFAULT_DATA_DIR),
            device: Device::Auto,
            config_file: None,
            dicom: DicomSettings {
                port: DEFAULT_DICOM_PORT,
                ae_title: AeTitle(DEFAULT_AE_TITLE.to_owned()),
                allowed_callers: Vec::new(),
                max_pdu: DEFAULT_MAX_PDU,
            },
            http: HttpSettings {
                port: DEFAULT_HTTP_PORT,
                max_body_mb: DEFAULT_MAX_BODY_MB,
            },
            store: StoreSettings::default(),
            models: Vec::new(),
            routes: Vec::new(),
            pipeline: toml::Table::new(),
            emr: toml::Table::new(),
        }
    }
}

impl Settings {
    /// The config file to read, if any: `flags.config`, else `env.config`, else
    /// `default_file` when it exists. Whether a named file exists is checked when it is
    /// read: naming a missing file is an error, a missing default file is not.
    pub fn config_path(flags: &Overrides, env: &Overrides, default_file: &Path) -> Option<PathBuf> {
        flags
            .config
            .clone()
            .or_else(|| env.config.clone())
            .or_else(|| default_file.is_file().then(|| default_file.to_owned()))
    }

    /// Merges the layers: flags over environment over file over defaults. No I/O.
    pub fn resolve(
        flags: &Overrides,
        env: &Overrides,
        file: Option<(PathBuf, FileConfig)>,
    ) -> Result<Settings, ConfigError> {
        let defaults = Settings::default();
        let (config_file, file) = match file {
            Some((path, file)) => (Some(path), file),
            None => (None, FileConfig::default()),
        };
        let file_key = |key: &str| match &config_file {
            Some(path) => format!("{key} in {}", path.display()),
            None => key.to_owned(),
        };

        let max_pdu = file.dicom.max_pdu.unwrap_or(defaults.dicom.max_pdu);
        if !MAX_PDU_RANGE.contains(&max_pdu) {
            return Err(invalid(
                &file_key("dicom.max_pdu"),
                ValueError::MaxPdu(max_pdu),
            ));
        }
        let max_body_mb = file.http.max_body_mb.unwrap_or(defaults.http.max_body_mb);
        if !MAX_BODY_MB_RANGE.contains(&max_body_mb) {
            return Err(invalid(
                &file_key("http.max_body_mb"),
                ValueError::MaxBodyMb(max_body_mb),
            ));
        }

        Ok(Settings {
            data: flags
                .data
                .clone()
                .or_else(|| env.data.clone())
                .or(file.data)
                .unwrap_or(defaults.data),
            device: flags
                .device
                .or(env.device)
                .or(file.device)
                .unwrap_or(defaults.device),
            config_file,
            dicom: DicomSettings {
                port: flags
                    .dicom_port
                    .or(env.dicom_port)
                    .or(file.dicom.port)
                    .unwrap_or(defaults.dicom.port),
                ae_title: flags
                    .ae_title
                    .clone()
                    .or_else(|| env.ae_title.clone())
                    .or(file.dicom.ae_title)
                    .unwrap_or(defaults.dicom.ae_title),
                allowed_callers: file
                    .dicom
                    .allowed_callers
                    .unwrap_or(defaults.dicom.allowed_callers),
                max_pdu,
            },
            http: HttpSettings {
                port: flags
                    .http_port
                    .or(env.http_port)
                    .or(file.http.port)
                    .unwrap_or(defaults.http.port),
                max_body_mb,
            },
            store: StoreSettings {
                duplicate_policy: file
                    .store
                    .duplicate_policy
                    .unwrap_or(defaults.store.duplicate_policy),
            },
            models: file.models,
            routes: file.routes,
            pipeline: file.pipeline,
            emr: file.emr,
        })
    }

    /// Loads the settings as `radserve serve` does: `flags` from the command line, the
    /// process environment, the config file they name (or `./radserve.toml`).
    pub fn load(flags: &Overrides) -> Result<Settings, ConfigError> {
        let env = Overrides::from_process_env()?;
        let file = match Settings::config_path(flags, &env, Path::new(DEFAULT_CONFIG_FILE)) {
            Some(path) => {
                let file = FileConfig::load(&path)?;
                Some((path, file))
            }
            None => None,
        };
        Settings::resolve(flags, &env, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> Result<Overrides, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Overrides::from_env(|k| map.get(k).cloned())
    }

    fn file_of(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("/etc/radserve/radserve.toml"))
    }

    fn ae(s: &str) -> AeTitle {
        AeTitle::new(s).unwrap()
    }

    #[test]
    fn model_packages_are_relative_to_the_config_file() {
        let file = file_of(
            "[[models]]\npackage = \"zoo/ct\"\n[[models]]\npackage = \"/opt/m\"\n[pipeline]\nworkers = 3",
        )
        .unwrap();
        assert_eq!(
            file.models[0]["package"].as_str(),
            Some("/etc/radserve/zoo/ct")
        );
        assert_eq!(file.models[1]["package"].as_str(), Some("/opt/m"));
        assert_eq!(file.pipeline["workers"].as_integer(), Some(3));
    }

    #[test]
    fn defaults_match_the_design_contract() {
        let s = Settings::resolve(&Overrides::default(), &Overrides::default(), None).unwrap();
        assert_eq!(s.data, PathBuf::from("./radserve-data"));
        assert_eq!(s.device, Device::Auto);
        assert_eq!(s.dicom.port, 11112);
        assert_eq!(s.dicom.ae_title.as_str(), "RADSERVE");
        assert!(s.dicom.allowed_callers.is_empty());
        assert_eq!(s.dicom.max_pdu, 131_072);
        assert_eq!(s.http.port, 8080);
        assert_eq!(s.http.max_body_mb, 2048);
        assert_eq!(s.store.duplicate_policy, DuplicatePolicy::KeepFirst);
        assert_eq!(s.config_file, None);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = file_of(
            r#"
            data = "/srv/file-data"
            device = "cuda"
            [dicom]
            port = 104
            ae_title = "FROMFILE"
            [http]
            port = 9000
            "#,
        )
        .unwrap();
        let env = env_of(&[
            ("RADSERVE_DATA", "/srv/env-data"),
            ("RADSERVE_DEVICE", "vulkan"),
            ("RADSERVE_DICOM_PORT", "4242"),
        ])
        .unwrap();
        let flags = Overrides {
            data: Some("/srv/flag-data".into()),
            ..Overrides::default()
        };
        let s = Settings::resolve(&flags, &env, Some(("radserve.toml".into(), file))).unwrap();
        assert_eq!(
            s.data,
            PathBuf::from("/srv/flag-data"),
            "flag beats env and file"
        );
        assert_eq!(s.device, Device::Vulkan, "env beats file");
        assert_eq!(s.dicom.port, 4242, "env beats file");
        assert_eq!(s.dicom.ae_title, ae("FROMFILE"), "file beats default");
        assert_eq!(s.http.port, 9000, "file beats default");
        assert_eq!(
            s.dicom.max_pdu, DEFAULT_MAX_PDU,
            "default when nobody sets it"
        );
        assert_eq!(s.config_file, Some(PathBuf::from("radserve.toml")));
    }

    #[test]
    fn every_flag_overrides_the_environment() {
        let env = env_of(&[
            ("RADSERVE_DATA", "/e"),
            ("RADSERVE_DICOM_PORT", "1"),
            ("RADSERVE_HTTP_PORT", "2"),
            ("RADSERVE_AE_TITLE", "ENV"),
            ("RADSERVE_DEVICE", "cpu"),
        ])
        .unwrap();
        let flags = Overrides {
            data: Some("/f".into()),
            config: None,
            dicom_port: Some(0),
            http_port: Some(0),
            ae_title: Some(ae("FLAG")),
            device: Some(Device::Wgpu),
        };
        let s = Settings::resolve(&flags, &env, None).unwrap();
        assert_eq!(s.data, PathBuf::from("/f"));
        assert_eq!((s.dicom.port, s.http.port), (0, 0));
        assert_eq!(s.dicom.ae_title, ae("FLAG"));
        assert_eq!(s.device, Device::Wgpu);

        let s = Settings::resolve(&Overrides::default(), &env, None).unwrap();
        assert_eq!(s.data, PathBuf::from("/e"));
        assert_eq!((s.dicom.port, s.http.port), (1, 2));
        assert_eq!(s.dicom.ae_title, ae("ENV"));
        assert_eq!(s.device, Device::Cpu);
    }

    #[test]
    fn config_path_prefers_flag_then_env_then_existing_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("radserve.toml");
        let flag = Overrides {
            config: Some("flag.toml".into()),
            ..Overrides::default()
        };
        let env = env_of(&[("RADSERVE_CONFIG", "env.toml")]).unwrap();
        let none = Overrides::default();

        assert_eq!(Settings::config_path(&none, &none, &default), None);
        std::fs::write(&default, "").unwrap();
        assert_eq!(
            Settings::config_path(&none, &none, &default),
            Some(default.clone())
        );
        assert_eq!(
            Settings::config_path(&none, &env, &default),
            Some("env.toml".into())
        );
        assert_eq!(
            Settings::config_path(&flag, &env, &default),
            Some("flag.toml".into())
        );
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let env = env_of(&[("RADSERVE_DEVICE", ""), ("RADSERVE_DATA", "")]).unwrap();
        assert_eq!(env, Overrides::default());
    }

    #[test]
    fn invalid_env_values_name_the_variable() {
        let err = env_of(&[("RADSERVE_DEVICE", "quantum")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RADSERVE_DEVICE: unknown device \"quantum\""),
            "{err}"
        );
        assert!(err.contains("auto, wgpu, vulkan, cuda, cpu"), "{err}");

        let err = env_of(&[("RADSERVE_HTTP_PORT", "80000")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RADSERVE_HTTP_PORT: invalid port \"80000\""),
            "{err}"
        );

        let err = env_of(&[("RADSERVE_AE_TITLE", "A\\B")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RADSERVE_AE_TITLE: invalid AE title"),
            "{err}"
        );
    }

    #[test]
    fn ae_title_validation() {
        assert_eq!(ae("RADSERVE").as_str(), "RADSERVE");
        assert_eq!(
            ae("  PACS 1 ").as_str(),
            "PACS 1",
            "edge spaces are not significant"
        );
        assert_eq!(ae("ABCDEFGHIJKLMNOP").as_str(), "ABCDEFGHIJKLMNOP");
        for (bad, why) in [
            ("", "empty"),
            ("    ", "all spaces"),
            ("ABCDEFGHIJKLMNOPQ", "longer than 16"),
            ("A\\B", "backslash"),
            ("A\tB", "control character"),
            ("A\nB", "control character"),
            ("RADSERVÉ", "non-ASCII"),
        ] {
            let err = AeTitle::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn device_parsing() {
        for d in Device::ALL {
            assert_eq!(d.as_str().parse::<Device>().unwrap(), d);
        }
        assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda);
        assert_eq!(
            "quantum".parse::<Device>().unwrap_err(),
            ValueError::Device("quantum".into())
        );
    }

    #[test]
    fn allowed_callers_parse_and_match() {
        let file = file_of(
            r#"
            [dicom]
            allowed_callers = ["PACS", "CT1@10.0.0.7"]
            "#,
        )
        .unwrap();
        let s = Settings::resolve(
            &Overrides::default(),
            &Overrides::default(),
            Some(("x.toml".into(), file)),
        )
        .unwrap();
        let [pacs, ct1] = &s.dicom.allowed_callers[..] else {
            panic!("two callers expected: {:?}", s.dicom.allowed_callers)
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(pacs.matches("PACS", ip("192.168.1.1")));
        assert!(!pacs.matches("PACS2", ip("192.168.1.1")));
        assert!(ct1.matches("CT1", ip("10.0.0.7")));
        assert!(
            ct1.matches("CT1", ip("::ffff:10.0.0.7")),
            "IPv4-mapped peers match"
        );
        assert!(!ct1.matches("CT1", ip("10.0.0.8")));
        assert_eq!(ct1.to_string(), "CT1@10.0.0.7");

        let err = file_of("[dicom]\nallowed_callers = [\"CT1@scanner.local\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an IP address"), "{err}");
    }

    #[test]
    fn file_keys_and_raw_tables() {
        let file = file_of(
            r#"
            data = "data"
            [dicom]
            max_pdu = 65536
            [http]
            max_body_mb = 16
            [store]
            duplicate_policy = "reject"
            [[models]]
            package = "models/zoo/ct-lung-nodule"
            max_batch_size = 8
            [[routes]]
            when = { modality = "CT", body_part = "CHEST" }
            models = ["ct-lung-nodule"]
            "#,
        )
        .unwrap();
        let s = Settings::resolve(
            &Overrides::default(),
            &Overrides::default(),
            Some(("/etc/radserve/radserve.toml".into(), file)),
        )
        .unwrap();
        assert_eq!(
            s.data,
            PathBuf::from("/etc/radserve/data"),
            "relative to the file's directory"
        );
        assert_eq!(s.dicom.max_pdu, 65536);
        assert_eq!(s.http.max_body_mb, 16);
        assert_eq!(s.store.duplicate_policy, DuplicatePolicy::Reject);
        assert_eq!(s.models.len(), 1);
        assert_eq!(s.models[0]["max_batch_size"].as_integer(), Some(8));
        assert_eq!(s.routes[0]["models"][0].as_str(), Some("ct-lung-nodule"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        for (text, key) in [
            ("dat = \"x\"", "dat"),
            ("[dicom]\nprot = 1", "prot"),
            ("[http]\nmax_body = 1", "max_body"),
            ("[grpc]\nport = 1", "grpc"),
            ("[store]\npolicy = \"replace\"", "policy"),
        ] {
            let err = file_of(text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("unknown field `{key}`")),
                "{text}: {err}"
            );
            assert!(err.contains("/etc/radserve/radserve.toml"), "{err}");
        }
    }

    #[test]
    fn invalid_file_values_are_rejected() {
        for (text, needle) in [
            ("device = \"quantum\"", "unknown device \"quantum\""),
            ("[dicom]\nae_title = \"\"", "empty or all spaces"),
            ("[dicom]\nport = 70000", "70000"),
            ("[dicom]\nport = \"x\"", "port"),
            (
                "[store]\nduplicate_policy = \"overwrite\"",
                "unknown variant `overwrite`",
            ),
        ] {
            let err = file_of(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        for (text, needle) in [
            (
                "[dicom]\nmax_pdu = 100",
                "dicom.max_pdu in x.toml: max_pdu 100",
            ),
            ("[http]\nmax_body_mb = 0", "http.max_body_mb in x.toml"),
        ] {
            let file = file_of(text).unwrap();
            let err = Settings::resolve(
                &Overrides::default(),
                &Overrides::default(),
                Some(("x.toml".into(), file)),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn missing_named_config_file_is_an_error() {
        let err = FileConfig::load(Path::new("/nonexistent/radserve.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/radserve.toml"),
            "{err}"
        );
    }
}
