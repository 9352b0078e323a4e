//! `pipeline`: a stored study becomes findings without anyone asking.
//!
//! - [`stability`] — a study is complete once no instance arrived for `stable_after_s`
//!   (per calling AE, configurable), or at once when asked
//!   (`POST /api/v1/studies/{uid}/process`); then [`routing`] picks models per series and
//!   jobs are written to the database;
//! - [`worker`] — claims jobs atomically, runs [`decode`] → [`prepare`] → [`analyse`] (the
//!   model's batcher, which preprocesses on the device)
//!   → results (findings rows, SR, SEG stored back into the archive) and completes the job
//!   in one transaction; failures are stored with their reason, device failures retried
//!   with backoff.
//!
//! Activity is kept by a trigger on the instance table (in the insert's own transaction)
//! and jobs live in the database, so a crash or kill -9 loses neither: on restart,
//! stability picks up where it was and jobs whose lease ran out are claimed again.

pub mod analyse;
pub mod decode;
pub mod jpeg_extended;
pub mod prepare;
pub mod routing;
pub mod stability;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::infer::Models;
use crate::store::Archive;
use routing::Route;

/// `[pipeline]` in the config file. Every key optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Serve the embedded demo models when `[[models]]` names none.
    pub demo_models: bool,
    /// Jobs run at once (each feeds its model's batcher).
    pub workers: usize,
    /// Seconds without a new instance after which a study counts as complete.
    pub stable_after_s: f64,
    /// The same, per calling AE title (DIMSE senders).
    pub stable_after_by_caller: BTreeMap<String, f64>,
    /// How often stability and the job queue are looked at, milliseconds.
    pub poll_interval_ms: u64,
    /// A claimed job whose worker gives no sign of life for this long is run again.
    pub job_lease_s: f64,
    /// Attempts before a job fails for good (device failures only; bad input fails at once).
    pub max_attempts: u32,
    /// First retry delay, doubled at each attempt.
    pub retry_backoff_s: f64,
    /// Most instances of one series a job reads.
    pub max_instances_per_series: usize,
    /// `[pipeline.forward]`: a PACS node every SR and SEG is sent to by C-STORE.
    pub forward: Option<crate::results::forward::ForwardNode>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            demo_models: true,
            workers: 2,
            stable_after_s: 30.0,
            stable_after_by_caller: BTreeMap::new(),
            poll_interval_ms: 500,
            job_lease_s: 60.0,
            max_attempts: 3,
            retry_backoff_s: 5.0,
            max_instances_per_series: 2000,
            forward: None,
        }
    }
}

/// Why the pipeline's configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("[pipeline]: {0}")]
    Config(String),
    #[error(transparent)]
    Route(#[from] routing::RouteError),
}

fn seconds(value: f64, key: &str, max: f64) -> Result<Duration, PipelineError> {
    if !(value.is_finite() && (0.0..=max).contains(&value)) {
        return Err(PipelineError::Config(format!(
            "{key} = {value} is outside 0..={max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

impl PipelineConfig {
    /// Parses and checks the raw `[pipeline]` table.
    pub fn parse(table: &toml::Table) -> Result<PipelineConfig, PipelineError> {
        let config: PipelineConfig = table
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| PipelineError::Config(e.message().to_owned()))?;
        seconds(config.stable_after_s, "stable_after_s", 86_400.0)?;
        for (ae, s) in &config.stable_after_by_caller {
            seconds(*s, &format!("stable_after_by_caller.{ae}"), 86_400.0)?;
        }
        seconds(config.job_lease_s, "job_lease_s", 86_400.0)?;
        seconds(config.retry_backoff_s, "retry_backoff_s", 86_400.0)?;
        if config.job_lease_s < 1.0 {
            return Err(PipelineError::Config(
                "job_lease_s must be at least 1".into(),
            ));
        }
        if !(1..=64).contains(&config.workers) {
            return Err(PipelineError::Config(format!(
                "workers = {} is outside 1..=64",
                config.workers
            )));
        }
        if !(10..=60_000).contains(&config.poll_interval_ms) {
            return Err(PipelineError::Config(format!(
                "poll_interval_ms = {} is outside 10..=60000",
                config.poll_interval_ms
            )));
        }
        if !(1..=100).contains(&config.max_attempts) {
            return Err(PipelineError::Config(format!(
                "max_attempts = {} is outside 1..=100",
                config.max_attempts
            )));
        }
        if !(1..=100_000).contains(&config.max_instances_per_series) {
            return Err(PipelineError::Config(format!(
                "max_instances_per_series = {} is outside 1..=100000",
                config.max_instances_per_series
            )));
        }
        if let Some(node) = &config.forward {
            node.check()
                .map_err(|e| PipelineError::Config(format!("forward: {e}")))?;
        }
        Ok(config)
    }

    /// How long a study from `source` (`dimse:AE@peer`, `stow:…`) must rest: the calling
    /// AE's own setting, else `route_default` (the routes that select the study), else
    /// `stable_after_s`.
    pub fn stable_after(&self, source: &str, route_default: Option<Duration>) -> Duration {
        let caller = source
            .strip_prefix("dimse:")
            .and_then(|rest| rest.rsplit_once('@').map(|(ae, _)| ae.trim()));
        match caller.and_then(|ae| self.stable_after_by_caller.get(ae)) {
            Some(secs) => Duration::from_secs_f64(secs.max(0.0)),
            None => route_default
                .unwrap_or_else(|| Duration::from_secs_f64(self.stable_after_s.max(0.0))),
        }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.job_lease_s)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// Delay before attempt `attempts + 1`: the backoff doubled per attempt, at most an hour.
    pub fn retry_delay(&self, attempts: i64) -> Duration {
        let factor = 2f64.powi(i32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0));
        Duration::from_secs_f64((self.retry_backoff_s * factor).min(3600.0))
    }
}

/// UIDs derived from what they identify (see [`crate::results::derived_uid`]): a retried
/// job writes the same UIDs again, so a result is never stored twice under different
/// identities.
pub use crate::results::derived_uid;

/// What the pipeline's tasks share.
#[derive(Clone)]
pub struct Pipeline {
    pub archive: Archive,
    pub models: Models,
    pub config: Arc<PipelineConfig>,
    pub routes: Arc<Vec<Route>>,
    /// Wakes idle workers when jobs were created.
    pub jobs_created: Arc<tokio::sync::Notify>,
    /// Identifies this process's job leases.
    pub owner: Arc<str>,
    /// One routing pass at a time (the timer and `POST …/process` both route).
    pub routing: Arc<tokio::sync::Mutex<()>>,
    /// The EMR join, run on each study when it is complete.
    pub emr: Option<crate::emr::Emr>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .field("routes", &self.routes)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Checks the routes against the models and builds the pipeline (nothing runs yet).
    pub fn new(
        archive: Archive,
        models: Models,
        config: PipelineConfig,
        route_tables: &[toml::Table],
    ) -> Result<Pipeline, PipelineError> {
        let names: Vec<String> = models.list().into_iter().map(|m| m.name).collect();
        let routes = if route_tables.is_empty() {
            models
                .list()
                .iter()
                .map(|m| Route::for_package(&m.manifest))
                .collect()
        } else {
            route_tables
                .iter()
                .enumerate()
                .map(|(i, t)| Route::parse(i, t, &names))
                .collect::<Result<Vec<_>, _>>()?
        };
        let owner = format!(
            "{}-{}-{:016x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "radserve".into()),
            std::process::id(),
            rand::random::<u64>()
        );
        Ok(Pipeline {
            archive,
            models,
            config: Arc::new(config),
            routes: Arc::new(routes),
            jobs_created: Arc::new(tokio::sync::Notify::new()),
            owner: owner.into(),
            routing: Arc::new(tokio::sync::Mutex::new(())),
            emr: None,
        })
    }

    /// The same pipeline, joining each complete study to the EMR.
    pub fn with_emr(mut self, emr: crate::emr::Emr) -> Self {
        self.emr = Some(emr);
        self
    }

    /// Starts stability and the workers; they stop when `shutdown` fires.
    pub fn start(&self, shutdown: crate::shutdown::Shutdown) {
        tokio::spawn(stability::run(self.clone(), shutdown.clone()));
        for index in 0..self.config.workers {
            tokio::spawn(worker::run(self.clone(), index, shutdown.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_and_stability_is_per_caller() {
        let config = PipelineConfig::parse(
            &"stable_after_s = 10\nstable_after_by_caller = { FAST = 1.5 }"
                .parse()
                .unwrap(),
        )
        .unwrap();
        let route = Some(Duration::from_secs(3));
        let fast = config.stable_after("dimse:FAST@10.0.0.1:4000", route);
        assert_eq!(fast, Duration::from_millis(1500));
        let slow = config.stable_after("dimse:SLOW@10.0.0.1:4000", None);
        assert_eq!(slow, Duration::from_secs(10));
        let routed = config.stable_after("dimse:SLOW@10.0.0.1:4000", route);
        assert_eq!(routed, Duration::from_secs(3));
        assert_eq!(
            config.stable_after("stow:admin", None),
            Duration::from_secs(10)
        );
        assert_eq!(config.retry_delay(1), Duration::from_secs(5));
        assert_eq!(config.retry_delay(3), Duration::from_secs(20));
        for (text, needle) in [
            ("workers = 0", "workers"),
            ("stable_after_s = -1", "stable_after_s"),
            ("job_lease_s = 0.1", "job_lease_s"),
            ("colour = 1", "unknown field"),
        ] {
            let err = PipelineConfig::parse(&text.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn derived_uids_are_valid_stable_and_distinct() {
        let a = derived_uid(&["sr", "1.2.3", "model", "1"]);
        assert_eq!(a, derived_uid(&["sr", "1.2.3", "model", "1"]));
        assert_ne!(a, derived_uid(&["sr", "1.2.3", "model", "2"]));
        assert_ne!(derived_uid(&["ab", "c"]), derived_uid(&["a", "bc"]));
        assert!(crate::store::attributes::valid_uid(&a), "{a}");
    }
}
