//! The device worker: one thread that alone owns the burn device and every model on it. It
//! loads and warms the models one after another, then runs batches, one at a time, in the
//! order the batchers hand them over. A panic inside burn fails that batch only; the worker
//! goes on with the next.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use burn::tensor::TensorData;
use radserve_models::model::{LoadedModel, Prediction};
use tokio::sync::{mpsc, oneshot};

/// A batch to run: `images` preprocessed images of `model`, concatenated.
pub struct DeviceBatch {
    pub model: String,
    pub pixels: Vec<f32>,
    pub images: usize,
    pub done: oneshot::Sender<Result<DeviceOutput, String>>,
}

/// Where batchers hand batches to the device worker.
pub type DeviceQueue = mpsc::Sender<DeviceBatch>;

/// The network's outputs for a batch, image after image.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceOutput {
    pub values: Vec<f32>,
    pub compute: Duration,
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
                let started = Instant::now();
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
                let _ = batch.done.send(outcome.map(|values| DeviceOutput {
                    values,
                    compute: started.elapsed(),
                }));
            }
        })?;
    Ok(())
}

fn run(model: &LoadedModel, batch: &DeviceBatch) -> Result<Vec<f32>, String> {
    let manifest = &model.package.manifest;
    let [rows, columns] = manifest.input.target_size;
    let channels = manifest.architecture.in_channels();
    let expected = batch.images * channels * rows * columns;
    if batch.pixels.len() != expected || batch.images == 0 {
        return Err(format!(
            "batch of {} images holds {} values, expected {expected}",
            batch.images,
            batch.pixels.len()
        ));
    }
    let images = TensorData::new(
        batch.pixels.clone(),
        [batch.images, channels, rows, columns],
    );
    match model.predict(images).map_err(|e| e.to_string())? {
        Prediction::Probabilities { values, .. } | Prediction::Masks { values, .. } => Ok(values),
    }
}
