//! `infer`: the loaded models, each behind its own dynamic batcher, all run by one device
//! worker.
//!
//! - [`batcher`]: the queue of one model (max batch size, max queue delay, priorities,
//!   cancellation, a bound that turns overload into 429);
//! - [`device`]: the worker thread that owns the burn device and every model on it;
//! - [`model_input`]: images as batches take them (stored pixels and a preprocessing spec)
//!   and the batch's input tensor, made on the device;
//! - [`demo`]: the demo model packages embedded in the binary, loaded when the config
//!   names no models.
//!
//! [`Models`] loads every configured package in the background at start (warming each
//! batch size it will run), so the listeners open at once and `/health/ready` turns ready
//! when every model is warm.

pub mod batcher;
pub mod demo;
pub mod device;
pub mod model_input;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use radserve_models::device::{DeviceChoice, SelectedDevice, select_device};
use radserve_models::model::LoadedModel;
use radserve_models::package::{Manifest, ModelPackage};
use serde::{Deserialize, Serialize};

pub use batcher::{BatchPolicy, Batcher, CancelFlag, CandidateReview, ImageOutput, InferError};

/// Defaults of a `[[models]]` entry (Triton's names).
pub const DEFAULT_MAX_BATCH_SIZE: usize = 8;
pub const DEFAULT_MAX_QUEUE_DELAY_MS: u64 = 5;
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 512;
/// Largest accepted `max_batch_size` (bounds device memory per batch).
pub const MAX_BATCH_SIZE_LIMIT: usize = 256;

/// One `[[models]]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The package directory (`model.toml` + weights). In the config file, relative paths
    /// are relative to the file's directory.
    pub package: PathBuf,
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    #[serde(default = "default_max_queue_delay_ms")]
    pub max_queue_delay_ms: u64,
    /// Batch sizes to warm and run besides 1 and `max_batch_size`.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
}

fn default_max_batch_size() -> usize {
    DEFAULT_MAX_BATCH_SIZE
}
fn default_max_queue_delay_ms() -> u64 {
    DEFAULT_MAX_QUEUE_DELAY_MS
}
fn default_max_queue_size() -> usize {
    DEFAULT_MAX_QUEUE_SIZE
}

/// Why the models could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("[[models]] entry {index}: {reason}")]
    Config { index: usize, reason: String },
    #[error("cannot write the demo model packages under {}: {reason}", path.display())]
    Demo {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error(transparent)]
    Device(#[from] radserve_models::device::DeviceError),
}

impl ModelConfig {
    /// Parses and checks one raw `[[models]]` table.
    pub fn parse(index: usize, table: &toml::Table) -> Result<ModelConfig, ModelsError> {
        let config: ModelConfig =
            table
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ModelsError::Config {
                    index,
                    reason: e.message().to_owned(),
                })?;
        let invalid = |reason: String| ModelsError::Config { index, reason };
        if !(1..=MAX_BATCH_SIZE_LIMIT).contains(&config.max_batch_size) {
            return Err(invalid(format!(
                "max_batch_size {} is outside 1..={MAX_BATCH_SIZE_LIMIT}",
                config.max_batch_size
            )));
        }
        if let Some(bad) = config
            .preferred_batch_sizes
            .iter()
            .find(|&&s| s == 0 || s > config.max_batch_size)
        {
            return Err(invalid(format!(
                "preferred batch size {bad} is outside 1..=max_batch_size ({})",
                config.max_batch_size
            )));
        }
        if config.max_queue_size < config.max_batch_size {
            return Err(invalid(format!(
                "max_queue_size {} is smaller than max_batch_size {}",
                config.max_queue_size, config.max_batch_size
            )));
        }
        if config.max_queue_delay_ms > 60_000 {
            return Err(invalid(format!(
                "max_queue_delay_ms {} is more than a minute",
                config.max_queue_delay_ms
            )));
        }
        Ok(config)
    }

    fn policy(&self) -> BatchPolicy {
        let mut sizes: Vec<usize> = self.preferred_batch_sizes.clone();
        sizes.extend([1, self.max_batch_size]);
        sizes.sort_unstable();
        sizes.dedup();
        BatchPolicy {
            max_batch_size: self.max_batch_size,
            max_queue_delay: Duration::from_millis(self.max_queue_delay_ms),
            batch_sizes: sizes,
            max_queue_size: self.max_queue_size,
        }
    }
}

/// Where a model is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ModelState {
    Loading,
    Ready,
    Failed(String),
}

/// A model the server serves.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub name: String,
    pub package_dir: PathBuf,
    pub manifest: Manifest,
    pub state: ModelState,
    pub batcher: Option<Batcher>,
    /// `flex`, `wgpu`, `cuda`, ... and the adapter's name.
    pub backend: String,
    pub adapter: String,
}

/// Every configured model. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Models {
    inner: Arc<RwLock<BTreeMap<String, ServedModel>>>,
}

impl Models {
    /// Opens every package (a broken package fails the start, with its reason), then loads
    /// and warms them on the device in the background.
    pub fn start(configs: Vec<ModelConfig>, device: DeviceChoice) -> Result<Models, ModelsError> {
        let models = Models::default();
        let mut packages = Vec::new();
        for (index, config) in configs.into_iter().enumerate() {
            let package = ModelPackage::open(&config.package).map_err(|e| ModelsError::Config {
                index,
                reason: e.to_string(),
            })?;
            let name = package.manifest.model.name.clone();
            let mut slots = models.write();
            if slots.contains_key(&name) {
                return Err(ModelsError::Config {
                    index,
                    reason: format!("a second model named `{name}`"),
                });
            }
            slots.insert(
                name.clone(),
                ServedModel {
                    name,
                    package_dir: config.package.clone(),
                    manifest: package.manifest.clone(),
                    state: ModelState::Loading,
                    batcher: None,
                    backend: String::new(),
                    adapter: String::new(),
                },
            );
            packages.push((package, config));
        }
        if packages.is_empty() {
            return Ok(models);
        }
        let selected = select_device(device)?;
        tracing::info!(
            backend = selected.backend,
            adapter = %selected.adapter,
            reason = %selected.reason,
            "inference device selected"
        );
        let handle = tokio::runtime::Handle::current();
        let jobs = packages
            .into_iter()
            .map(|(package, config)| models.load_job(&handle, package, &config, &selected))
            .collect();
        // Loading and warming are long and blocking (kernel compilation, autotuning): the
        // device worker does them before it serves batches.
        device::start(jobs).map_err(|reason| ModelsError::Demo {
            path: PathBuf::from("device worker thread"),
            reason,
        })?;
        Ok(models)
    }

    /// How the device worker loads one model and what becomes of the outcome.
    fn load_job(
        &self,
        handle: &tokio::runtime::Handle,
        package: ModelPackage,
        config: &ModelConfig,
        selected: &SelectedDevice,
    ) -> device::LoadJob {
        let name = package.manifest.model.name.clone();
        let policy = config.policy();
        let warm_sizes = policy.batch_sizes.clone();
        let torch_device = selected.device.clone();
        let (backend, adapter) = (selected.backend.to_owned(), selected.adapter.clone());
        // The package was opened and checked at start; a reviewer that fails here fails the
        // load below with the same error.
        let candidate_review = package
            .candidate_filter()
            .ok()
            .flatten()
            .map(|(filter, patch)| CandidateReview {
                patch,
                threshold: filter
                    .manifest
                    .output
                    .labels
                    .first()
                    .map_or(0.5, |l| l.threshold),
                input: filter.manifest.input,
            });
        let (slots, handle, model_name) = (self.clone(), handle.clone(), name.clone());
        let started = std::time::Instant::now();
        device::LoadJob {
            name,
            load: Box::new(move || {
                LoadedModel::load(package, &torch_device, &warm_sizes).map_err(|e| e.to_string())
            }),
            loaded: Box::new(move |outcome, queue| {
                let mut all = slots.write();
                let Some(slot) = all.get_mut(&model_name) else {
                    return;
                };
                slot.backend = backend;
                slot.adapter = adapter;
                match outcome {
                    Ok(()) => {
                        let _entered = handle.enter();
                        slot.batcher = Some(Batcher::start(
                            &model_name,
                            policy,
                            queue.clone(),
                            candidate_review,
                        ));
                        slot.state = ModelState::Ready;
                        tracing::info!(
                            model = %model_name,
                            seconds = started.elapsed().as_secs_f64(),
                            "model loaded and warmed"
                        );
                    }
                    Err(reason) => {
                        tracing::error!(model = %model_name, %reason, "model failed to load");
                        slot.state = ModelState::Failed(reason);
                    }
                }
            }),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ServedModel>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every model, by name.
    pub fn list(&self) -> Vec<ServedModel> {
        let slots = self.inner.read().unwrap_or_else(|e| e.into_inner());
        slots.values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<ServedModel> {
        let slots = self.inner.read().unwrap_or_else(|e| e.into_inner());
        slots.get(name).cloned()
    }

    /// Ready when every configured model is loaded and warm; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        for model in self.list() {
            match model.state {
                ModelState::Ready => {}
                ModelState::Loading => return Err(format!("model `{}` is loading", model.name)),
                ModelState::Failed(reason) => {
                    return Err(format!("model `{}` failed to load: {reason}", model.name));
                }
            }
        }
        Ok(())
    }
}

/// The model configs to serve: the `[[models]]` tables, or, when there are none and
/// `demo_models` is on, the embedded demo packages (written under `data/models`).
pub fn configured_models(
    tables: &[toml::Table],
    demo_models: bool,
    data_dir: &Path,
) -> Result<Vec<ModelConfig>, ModelsError> {
    if tables.is_empty() {
        if !demo_models {
            return Ok(Vec::new());
        }
        return demo::install(&data_dir.join("models"));
    }
    tables
        .iter()
        .enumerate()
        .map(|(index, table)| ModelConfig::parse(index, table))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn model_configs_are_checked() {
        let ok =
            ModelConfig::parse(0, &table("package = \"x\"\npreferred_batch_sizes = [4]")).unwrap();
        assert_eq!(ok.policy().batch_sizes, vec![1, 4, 8]);
        for (text, needle) in [
            ("package = \"x\"\nmax_batch_size = 0", "max_batch_size 0"),
            (
                "package = \"x\"\npreferred_batch_sizes = [16]",
                "preferred batch size 16",
            ),
            ("package = \"x\"\nmax_queue_size = 2", "max_queue_size 2"),
            ("package = \"x\"\nbatch = 3", "unknown field"),
            ("max_batch_size = 4", "missing field"),
        ] {
            let err = ModelConfig::parse(3, &table(text)).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("entry 3"), "{err}");
        }
    }
}
