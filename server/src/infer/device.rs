//! The device worker: one thread that alone owns the burn device and every model on it. It
//! loads and warms the models one after another, then runs batches, one at a time, in the
//! order the batchers hand them over. A panic inside burn fails that batch only; the worker
//! goes on with the next.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use radserve_models::model::{LoadedModel, Prediction};
use tokio::sync::{mpsc, oneshot};

use super::model_input::{ModelInput, batch_tensor};

/// A batch to run for `model`.
pub struct DeviceBatch {
    pub model: String,
    pub work: DeviceWork,
    pub done: oneshot::Sender<Result<DeviceOutput, String>>,
}

/// What a batch holds.
pub enum DeviceWork {
    /// Images for the model itself, preprocessed on the device first.
    Images(Vec<ModelInput>),
    /// `count` candidate patches, laid end to end, for the segmenter's candidate reviewer
    /// (`radserve_models::candidate_filter`): one score each.
    CandidatePatches { patches: Vec<f32>, count: usize },
}

/// Where batchers hand batches to the device worker.
pub type DeviceQueue = mpsc::Sender<DeviceBatch>;

/// The network's outputs for a batch, image after image.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceOutput {
    pub values: Vec<f32>,
    /// The network's time, from its input to its outputs read back.
    pub compute: Duration,
    /// Making the input: the preprocessing kernel launched (its execution, asynchronous on a
    /// GPU, then counts in `compute`), or the reference run on the CPU backend.
    pub preprocess: Duration,
}

/// Loads and warms a model on the worker's device.
pub type LoadModel = Box<dyn FnOnce() -> Result<LoadedModel, String> + Send>;
/// Told how loading went (to make the model's batcher, or record the failure).
pub type OnLoaded = Box<dyn FnOnce(Result<(), String>, &DeviceQueue) + Send>;

/// A model to load on the worker.
pub struct LoadJob {
    pub name: String,
    pub load: LoadModel,
    pub loaded: OnLoaded,
}

/// Starts the worker: it loads `jobs` in order, then serves batches until every sender is
/// gone.
pub fn start(jobs: Vec<LoadJob>) -> std::io::Result<()> {
    // Each batcher waits for its batch before sending the next: one slot per model is enough.
    let (queue, mut batches) = mpsc::channel::<DeviceBatch>(jobs.len().max(1));
    std::thread::Builder::new()
        .name("device".into())
        .spawn(move || {
            let mut models: HashMap<String, LoadedModel> = HashMap::new();
            for job in jobs {
                let outcome = (job.load)().map(|model| {
                    models.insert(job.name.clone(), model);
                });
                (job.loaded)(outcome, &queue);
            }
            drop(queue);
            while let Some(batch) = batches.blocking_recv() {
                let outcome = match models.get(&batch.model) {
                    Some(model) => {
                        std::panic::catch_unwind(AssertUnwindSafe(|| run(model, &batch)))
                            .unwrap_or_else(|panic| {
                                let message = panic
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| {
                                        panic.downcast_ref::<&str>().map(|s| (*s).to_owned())
                                    })
                                    .unwrap_or_else(|| "unknown panic".to_owned());
                                Err(format!("the backend panicked: {message}"))
                            })
                    }
                    None => Err(format!(
                        "model `{}` is not loaded on this device",
                        batch.model
                    )),
                };
                let _ = batch.done.send(outcome);
            }
        })?;
    Ok(())
}

fn run(model: &LoadedModel, batch: &DeviceBatch) -> Result<DeviceOutput, String> {
    let inputs = match &batch.work {
        DeviceWork::Images(inputs) => inputs,
        DeviceWork::CandidatePatches { patches, count } => {
            let filter = model
                .candidate_filter()
                .ok_or_else(|| format!("model `{}` has no candidate filter", batch.model))?;
            let started = Instant::now();
            let values = filter.score(patches, *count).map_err(|e| e.to_string())?;
            return Ok(DeviceOutput {
                values,
                compute: started.elapsed(),
                preprocess: Duration::ZERO,
            });
        }
    };
    let manifest = &model.package.manifest;
    let [rows, columns] = manifest.input.target_size;
    let channels = manifest.architecture.in_channels();
    let started = Instant::now();
    let images = batch_tensor(model.device(), inputs, [channels, rows, columns])?;
    let preprocess = started.elapsed();
    let started = Instant::now();
    let values = match model.predict_tensor(images).map_err(|e| e.to_string())? {
        Prediction::Probabilities { values, .. } | Prediction::Masks { values, .. } => values,
    };
    Ok(DeviceOutput {
        values,
        compute: started.elapsed(),
        preprocess,
    })
}
