//! The device thread of one model: it alone owns the loaded network and its burn device,
//! and runs one batch at a time. A panic inside burn fails that batch only; the thread
//! goes on with the next.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use burn::tensor::TensorData;
use radserve_models::model::{LoadedModel, Prediction};
use tokio::sync::oneshot;

/// A batch to run: `images` preprocessed images, concatenated.
pub struct DeviceBatch {
    pub pixels: Vec<f32>,
    pub images: usize,
    pub done: oneshot::Sender<Result<DeviceOutput, String>>,
}

/// The network's outputs for a batch, image after image.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceOutput {
    pub values: Vec<f32>,
    pub compute: Duration,
}

/// Batches waiting for the device beyond the one running (the batcher waits for each).
const DEVICE_QUEUE: usize = 1;

/// Starts the thread; batches sent to the returned channel run in order.
pub fn start(model: LoadedModel) -> std::io::Result<std::sync::mpsc::SyncSender<DeviceBatch>> {
    let (sender, batches) = std::sync::mpsc::sync_channel::<DeviceBatch>(DEVICE_QUEUE);
    let name = format!("device-{}", model.name());
    std::thread::Builder::new().name(name).spawn(move || {
        while let Ok(batch) = batches.recv() {
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&model, &batch)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "the backend panicked".to_owned());
                    Err(format!("the backend panicked: {message}"))
                });
            let _ = batch.done.send(outcome.map(|values| DeviceOutput {
                values,
                compute: started.elapsed(),
            }));
        }
    })?;
    Ok(sender)
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
