//! The dynamic batcher of one model: a task that alone owns the queue, fed over a channel;
//! its batches go to the device worker (see [`super::device`]), which alone owns the device
//! and every model on it.
//!
//! A batch closes when it holds `max_batch_size` images or when the first image waiting
//! has waited `max_queue_delay`, whichever comes first; its size is the largest size the
//! model was warmed at that fits, so the device only ever sees shapes it has compiled and
//! tuned. Stat images are taken before routine ones. While the device runs a batch, new
//! images queue up, so batches grow with the load. The queue is bounded by a semaphore:
//! [`Batcher::try_submit`] refuses at once when it is full (HTTP answers 429),
//! [`Batcher::submit`] waits (pipeline jobs, which are durable anyway).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use radserve_models::candidate_filter::PatchSpec;
use radserve_models::package::InputSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::device::{DeviceBatch, DeviceOutput, DeviceQueue, DeviceWork};
use super::model_input::ModelInput;
use crate::metrics;
use crate::store::Priority;

/// How a model's batches are formed (Triton's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    /// Sizes the model was warmed at, ascending; always holds 1 and `max_batch_size`.
    pub batch_sizes: Vec<usize>,
    /// Most images waiting at once.
    pub max_queue_size: usize,
}

impl BatchPolicy {
    /// The batch size to run when `waiting` images wait: the largest warmed size that fits.
    pub fn batch_size_for(&self, waiting: usize) -> usize {
        self.batch_sizes
            .iter()
            .copied()
            .filter(|&s| s <= waiting.min(self.max_batch_size))
            .max()
            .unwrap_or(1)
    }
}

/// Why an image got no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    #[error("the inference queue of model `{model}` is full ({capacity} images); retry later")]
    QueueFull { model: String, capacity: usize },
    #[error("{images} images are more than the queue of model `{model}` holds ({capacity})")]
    TooManyImages {
        model: String,
        images: usize,
        capacity: usize,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("model `{model}` failed on the device: {message}")]
    Device { model: String, message: String },
    #[error("model `{0}` has stopped")]
    Stopped(String),
}

/// Set when the work an image belongs to was withdrawn; the batcher drops such images.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one image got back.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageOutput {
    /// Probabilities `[labels]`, or masks `[labels × rows × columns]`.
    pub values: Vec<f32>,
    /// From submission to the start of its batch.
    pub queued: Duration,
    /// The batch's time on the device, its preprocessing left out.
    pub compute: Duration,
    /// The batch's preprocessing on the device.
    pub preprocess: Duration,
    pub batch_size: usize,
}

struct Pending {
    input: ModelInput,
    priority: Priority,
    arrived: Instant,
    cancel: CancelFlag,
    reply: oneshot::Sender<Result<ImageOutput, InferError>>,
    /// Holds one place in the queue until the image leaves it.
    _permit: Option<OwnedSemaphorePermit>,
}

/// The submitting side of one model's batcher. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    model: Arc<str>,
    policy: Arc<BatchPolicy>,
    queue: mpsc::UnboundedSender<Pending>,
    places: Arc<Semaphore>,
    /// For work that skips the batching queue (a scan's candidate patches).
    device: DeviceQueue,
    /// How the model's candidate reviewer takes its patches, when it has one.
    candidate_review: Option<Arc<CandidateReview>>,
}

/// What the server needs to know of a segmenter's candidate reviewer to make its input and
/// read its scores (the network itself lives on the device worker).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateReview {
    pub patch: PatchSpec,
    pub input: InputSpec,
    /// Components scoring at or above this stay.
    pub threshold: f64,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("model", &self.model)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Images waiting for a batch.
type Replies = Vec<oneshot::Receiver<Result<ImageOutput, InferError>>>;

impl Batcher {
    /// Starts the batching task; `device` runs the batches (see [`super::device`]).
    pub fn start(
        model: &str,
        policy: BatchPolicy,
        device: DeviceQueue,
        candidate_review: Option<CandidateReview>,
    ) -> Batcher {
        let (queue, incoming) = mpsc::unbounded_channel();
        let batcher = Batcher {
            model: model.into(),
            places: Arc::new(Semaphore::new(policy.max_queue_size)),
            policy: Arc::new(policy),
            queue,
            device: device.clone(),
            candidate_review: candidate_review.map(Arc::new),
        };
        tokio::spawn(run_batches(
            batcher.model.clone(),
            batcher.policy.clone(),
            incoming,
            device,
        ));
        batcher
    }

    /// The model's candidate reviewer, when its package names one.
    pub fn candidate_review(&self) -> Option<&Arc<CandidateReview>> {
        self.candidate_review.as_ref()
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Images waiting now.
    pub fn queue_depth(&self) -> usize {
        self.policy
            .max_queue_size
            .saturating_sub(self.places.available_permits())
    }

    /// Queues `images` if there is room for all of them now, else refuses.
    pub fn try_submit(
        &self,
        images: Vec<ModelInput>,
        priority: Priority,
        cancel: &CancelFlag,
    ) -> Result<Replies, InferError> {
        let count = self.check_count(images.len())?;
        let permits = self
            .places
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| InferError::QueueFull {
                model: self.model.to_string(),
                capacity: self.policy.max_queue_size,
            })?;
        self.enqueue(images, priority, cancel, permits)
    }

    /// Queues `images`, waiting for room, and waits for their outputs (in order).
    pub async fn submit(
        &self,
        images: Vec<ModelInput>,
        priority: Priority,
        cancel: &CancelFlag,
    ) -> Result<Vec<ImageOutput>, InferError> {
        // A series larger than half the queue goes in chunks, leaving room to others.
        let chunk = (self.policy.max_queue_size / 2).max(1);
        let mut outputs = Vec::with_capacity(images.len());
        let mut images = images.into_iter().peekable();
        while images.peek().is_some() {
            let part: Vec<ModelInput> = images.by_ref().take(chunk).collect();
            let count = self.check_count(part.len())?;
            let permits = self
                .places
                .clone()
                .acquire_many_owned(count)
                .await
                .map_err(|_| InferError::Stopped(self.model.to_string()))?;
            let replies = self.enqueue(part, priority, cancel, permits)?;
            outputs.extend(collect(replies, &self.model).await?);
        }
        Ok(outputs)
    }

    /// Scores `count` candidate patches (laid end to end) with the model's candidate
    /// reviewer, as one piece of device work: a scan's candidates are a batch already, and
    /// they come after the scan's slices, so they do not wait behind other images' queue.
    /// Returns the scores and the device time.
    pub async fn review_candidates(
        &self,
        patches: Vec<f32>,
        count: usize,
    ) -> Result<(Vec<f32>, Duration), InferError> {
        let (done, outcome) = oneshot::channel();
        let device_error = |message: String| InferError::Device {
            model: self.model.to_string(),
            message,
        };
        self.device
            .send(DeviceBatch {
                model: self.model.to_string(),
                work: DeviceWork::CandidatePatches { patches, count },
                done,
            })
            .await
            .map_err(|_| InferError::Stopped(self.model.to_string()))?;
        let output = outcome
            .await
            .map_err(|_| InferError::Stopped(self.model.to_string()))?
            .map_err(device_error)?;
        if output.values.len() != count {
            return Err(device_error(format!(
                "the candidate filter gave {} scores for {count} candidates",
                output.values.len()
            )));
        }
        Ok((output.values, output.compute))
    }

    fn check_count(&self, images: usize) -> Result<u32, InferError> {
        if images > self.policy.max_queue_size {
            return Err(InferError::TooManyImages {
                model: self.model.to_string(),
                images,
                capacity: self.policy.max_queue_size,
            });
        }
        Ok(u32::try_from(images).unwrap_or(u32::MAX))
    }

    fn enqueue(
        &self,
        images: Vec<ModelInput>,
        priority: Priority,
        cancel: &CancelFlag,
        permits: OwnedSemaphorePermit,
    ) -> Result<Replies, InferError> {
        let arrived = Instant::now();
        let mut replies = Vec::with_capacity(images.len());
        let count = images.len();
        let mut rest = Some(permits);
        for (i, input) in images.into_iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            // One permit per image, so each frees its place as it leaves the queue.
            let permit = if i + 1 == count {
                rest.take()
            } else {
                rest.as_mut().and_then(|p| p.split(1))
            };
            self.queue
                .send(Pending {
                    input,
                    priority,
                    arrived,
                    cancel: cancel.clone(),
                    reply,
                    _permit: permit,
                })
                .map_err(|_| InferError::Stopped(self.model.to_string()))?;
            replies.push(answer);
        }
        metrics::set_queue_depth(&self.model, self.queue_depth());
        Ok(replies)
    }
}

/// Waits for every reply, in order.
pub async fn collect(replies: Replies, model: &str) -> Result<Vec<ImageOutput>, InferError> {
    let mut outputs = Vec::with_capacity(replies.len());
    for reply in replies {
        outputs.push(
            reply
                .await
                .map_err(|_| InferError::Stopped(model.to_owned()))??,
        );
    }
    Ok(outputs)
}

/// The batching task: forms batches and hands them to the device thread, one at a time.
async fn run_batches(
    model: Arc<str>,
    policy: Arc<BatchPolicy>,
    mut incoming: mpsc::UnboundedReceiver<Pending>,
    device: DeviceQueue,
) {
    let mut stat: VecDeque<Pending> = VecDeque::new();
    let mut routine: VecDeque<Pending> = VecDeque::new();
    let push = |p: Pending, stat: &mut VecDeque<Pending>, routine: &mut VecDeque<Pending>| {
        if p.cancel.is_cancelled() {
            let _ = p.reply.send(Err(InferError::Cancelled));
        } else if p.priority == Priority::Stat {
            stat.push_back(p);
        } else {
            routine.push_back(p);
        }
    };
    loop {
        if stat.is_empty() && routine.is_empty() {
            match incoming.recv().await {
                Some(p) => push(p, &mut stat, &mut routine),
                None => return,
            }
        }
        while let Ok(p) = incoming.try_recv() {
            push(p, &mut stat, &mut routine);
        }
        // Wait for more until the batch is full or the oldest image has waited long enough.
        let oldest = stat
            .iter()
            .chain(routine.iter())
            .map(|p| p.arrived)
            .min()
            .unwrap_or_else(Instant::now);
        let deadline = tokio::time::Instant::from_std(oldest + policy.max_queue_delay);
        while stat.len() + routine.len() < policy.max_batch_size {
            tokio::select! {
                next = incoming.recv() => match next {
                    Some(p) => push(p, &mut stat, &mut routine),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        for queue in [&mut stat, &mut routine] {
            let (live, cancelled): (VecDeque<Pending>, VecDeque<Pending>) =
                queue.drain(..).partition(|p| !p.cancel.is_cancelled());
            *queue = live;
            for p in cancelled {
                let _ = p.reply.send(Err(InferError::Cancelled));
            }
        }
        let waiting = stat.len() + routine.len();
        if waiting == 0 {
            continue;
        }
        let size = policy.batch_size_for(waiting);
        let from_stat = size.min(stat.len());
        let from_routine = (size - from_stat).min(routine.len());
        let batch: Vec<Pending> = stat
            .drain(..from_stat)
            .chain(routine.drain(..from_routine))
            .collect();
        run_batch(&model, batch, &device).await;
        metrics::set_queue_depth(&model, stat.len() + routine.len() + incoming.len());
    }
}

/// Runs one batch on the device thread and answers each image.
async fn run_batch(model: &str, batch: Vec<Pending>, device: &DeviceQueue) {
    let started = Instant::now();
    let size = batch.len();
    let inputs = batch.iter().map(|p| p.input.clone()).collect();
    let (done, outcome) = oneshot::channel();
    let sent = device
        .send(DeviceBatch {
            model: model.to_owned(),
            work: DeviceWork::Images(inputs),
            done,
        })
        .await;
    let result = match sent {
        Ok(()) => outcome.await.unwrap_or_else(|_| {
            Err("the device thread stopped while running the batch".to_owned())
        }),
        Err(_) => Err("the device thread has stopped".to_owned()),
    };
    metrics::record_batch(model, size);
    match result {
        Ok(DeviceOutput {
            values,
            compute,
            preprocess,
        }) => {
            metrics::record_stage(model, "preprocess", preprocess);
            metrics::record_stage(model, "compute", compute);
            let per_image = values.len() / size.max(1);
            for (i, p) in batch.into_iter().enumerate() {
                let queued = started.saturating_duration_since(p.arrived);
                metrics::record_stage(model, "queue", queued);
                let _ = p.reply.send(Ok(ImageOutput {
                    values: values[i * per_image..(i + 1) * per_image].to_vec(),
                    queued,
                    compute,
                    preprocess,
                    batch_size: size,
                }));
            }
        }
        Err(message) => {
            tracing::warn!(model, batch = size, %message, "batch failed on the device");
            for p in batch {
                let _ = p.reply.send(Err(InferError::Device {
                    model: model.to_owned(),
                    message: message.clone(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_is_the_largest_warmed_size_that_fits() {
        let policy = BatchPolicy {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(5),
            batch_sizes: vec![1, 4, 8],
            max_queue_size: 64,
        };
        assert_eq!(policy.batch_size_for(1), 1);
        assert_eq!(policy.batch_size_for(3), 1);
        assert_eq!(policy.batch_size_for(5), 4);
        assert_eq!(policy.batch_size_for(8), 8);
        assert_eq!(policy.batch_size_for(30), 8);
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use std::sync::Mutex;

    /// A device that echoes each image's first value, records the batches it ran, and
    /// waits for `gate` before each batch (so tests can fill the queue meanwhile).
    struct FakeDevice {
        batches: Arc<Mutex<Vec<Vec<f32>>>>,
        gate: std::sync::mpsc::Sender<Result<(), String>>,
    }

    fn fake_device(policy: BatchPolicy) -> (Batcher, FakeDevice) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<DeviceBatch>(1);
        let (gate, gate_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        std::thread::spawn(move || {
            while let Some(batch) = receiver.blocking_recv() {
                let outcome = gate_rx.recv().unwrap_or(Err("gate closed".into()));
                let firsts: Vec<f32> = match &batch.work {
                    DeviceWork::Images(inputs) => inputs
                        .iter()
                        .map(|input| match input {
                            ModelInput::Host(values) => values[0],
                            ModelInput::Device { .. } => f32::NAN,
                        })
                        .collect(),
                    DeviceWork::CandidatePatches { .. } => Vec::new(),
                };
                seen.lock().unwrap().push(firsts.clone());
                let _ = batch.done.send(outcome.map(|()| DeviceOutput {
                    values: firsts,
                    compute: Duration::from_millis(1),
                    preprocess: Duration::ZERO,
                }));
            }
        });
        (
            Batcher::start("fake", policy, sender, None),
            FakeDevice { batches, gate },
        )
    }

    fn policy(max_batch_size: usize, max_queue_size: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch_size,
            max_queue_delay: Duration::from_millis(20),
            batch_sizes: vec![1, 2, max_batch_size],
            max_queue_size,
        }
    }

    fn images(first: f32, count: usize) -> Vec<ModelInput> {
        (0..count)
            .map(|i| ModelInput::Host(vec![first + i as f32, 0.0]))
            .collect()
    }

    #[tokio::test]
    async fn stat_images_run_before_routine_ones_in_warmed_batch_sizes() {
        let (batcher, device) = fake_device(policy(4, 64));
        let none = CancelFlag::default();
        // The first image occupies the device; the rest queue behind it.
        let first = batcher
            .try_submit(images(0.0, 1), Priority::Routine, &none)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let routine = batcher
            .try_submit(images(100.0, 5), Priority::Routine, &none)
            .unwrap();
        let stat = batcher
            .try_submit(images(200.0, 2), Priority::Stat, &none)
            .unwrap();
        assert_eq!(batcher.queue_depth(), 8);
        for _ in 0..4 {
            device.gate.send(Ok(())).unwrap();
        }
        let stat = collect(stat, "fake").await.unwrap();
        let routine = collect(routine, "fake").await.unwrap();
        collect(first, "fake").await.unwrap();
        assert_eq!(stat[0].values, vec![200.0]);
        assert_eq!(routine[4].values, vec![104.0]);
        let batches = device.batches.lock().unwrap().clone();
        // 1, then 4 (two stat + two routine), then the 3 routine left run as 2 + 1.
        assert_eq!(
            batches,
            vec![
                vec![0.0],
                vec![200.0, 201.0, 100.0, 101.0],
                vec![102.0, 103.0],
                vec![104.0]
            ]
        );
        assert_eq!(batcher.queue_depth(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_places_as_images_leave() {
        let (batcher, device) = fake_device(policy(2, 3));
        let none = CancelFlag::default();
        let held = batcher
            .try_submit(images(0.0, 3), Priority::Routine, &none)
            .unwrap();
        let refused = batcher.try_submit(images(10.0, 1), Priority::Stat, &none);
        assert!(
            matches!(refused, Err(InferError::QueueFull { capacity: 3, .. })),
            "{refused:?}"
        );
        let too_many = batcher.try_submit(images(10.0, 4), Priority::Stat, &none);
        assert!(matches!(too_many, Err(InferError::TooManyImages { .. })));
        device.gate.send(Ok(())).unwrap();
        device.gate.send(Ok(())).unwrap();
        collect(held, "fake").await.unwrap();
        let again = batcher
            .try_submit(images(20.0, 3), Priority::Routine, &none)
            .unwrap();
        device.gate.send(Ok(())).unwrap();
        device.gate.send(Ok(())).unwrap();
        assert_eq!(collect(again, "fake").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn cancelled_images_are_dropped_and_a_device_failure_fails_only_its_batch() {
        let (batcher, device) = fake_device(policy(4, 16));
        let none = CancelFlag::default();
        let first = batcher
            .try_submit(images(0.0, 1), Priority::Routine, &none)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let withdrawn = CancelFlag::default();
        let cancelled = batcher
            .try_submit(images(50.0, 2), Priority::Routine, &withdrawn)
            .unwrap();
        withdrawn.cancel();
        let failing = batcher
            .try_submit(images(60.0, 1), Priority::Routine, &none)
            .unwrap();
        device.gate.send(Ok(())).unwrap();
        device
            .gate
            .send(Err("out of device memory".into()))
            .unwrap();
        collect(first, "fake").await.unwrap();
        assert_eq!(collect(cancelled, "fake").await, Err(InferError::Cancelled));
        let failed = collect(failing, "fake").await.unwrap_err();
        assert!(
            failed.to_string().contains("out of device memory"),
            "{failed}"
        );
        // The batcher goes on.
        let later = batcher
            .try_submit(images(70.0, 1), Priority::Routine, &none)
            .unwrap();
        device.gate.send(Ok(())).unwrap();
        assert_eq!(collect(later, "fake").await.unwrap()[0].values, vec![70.0]);
    }
}
