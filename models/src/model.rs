//! A model ready to serve: package checked, weights loaded on a device, warmed up.

use burn::tensor::activation::sigmoid;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::architecture::{InputError, Network, NetworkOutput};
use crate::candidate_filter::{MAX_CANDIDATES, PATCH_PLANES, PatchSpec, REVIEW_BATCH};
use crate::package::{self, ModelPackage, PackageError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("model `{model}`: {source}")]
    Input {
        model: String,
        #[source]
        source: InputError,
    },
    #[error(
        "model `{model}` takes f32 images of shape [batch, {channels}, {rows}, {columns}], got {dtype:?} {shape:?}"
    )]
    InputLayout {
        model: String,
        channels: usize,
        rows: usize,
        columns: usize,
        dtype: DType,
        shape: Vec<usize>,
    },
    #[error("model `{model}`: reading the output back from the device failed: {message}")]
    Readback { model: String, message: String },
}

/// Per-image outputs, already through the output activation.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    /// `[batch][label]` probabilities.
    Probabilities { labels: usize, values: Vec<f32> },
    /// `[batch][label][row][column]` probabilities.
    Masks {
        labels: usize,
        rows: usize,
        columns: usize,
        values: Vec<f32>,
    },
}

#[derive(Debug)]
pub struct LoadedModel {
    pub package: ModelPackage,
    network: Network,
    device: Device,
    /// The candidate reviewer a segmentation package names, on the same device.
    candidate_filter: Option<CandidateFilter>,
}

/// A segmenter's candidate reviewer (see [`crate::candidate_filter`]).
#[derive(Debug)]
pub struct CandidateFilter {
    pub model: Box<LoadedModel>,
    pub patch: PatchSpec,
}

impl CandidateFilter {
    /// Components scoring at or above this stay.
    pub fn threshold(&self) -> f64 {
        self.model
            .package
            .manifest
            .output
            .labels
            .first()
            .map_or(0.5, |l| l.threshold)
    }

    /// Scores `count` patches laid end to end in `patches` (each [`PatchSpec::len`] values),
    /// in batches of [`REVIEW_BATCH`], the last one padded.
    pub fn score(&self, patches: &[f32], count: usize) -> Result<Vec<f32>, ModelError> {
        let per = self.patch.len();
        if patches.len() != per * count || count > MAX_CANDIDATES {
            return Err(self.model.layout_error(
                vec![count, PATCH_PLANES, self.patch.edge, self.patch.edge],
                DType::F32,
            ));
        }
        let mut scores = Vec::with_capacity(count);
        for chunk in patches.chunks(per * REVIEW_BATCH) {
            let real = chunk.len() / per;
            let mut data = chunk.to_vec();
            data.resize(per * REVIEW_BATCH, 0.0);
            let images = TensorData::new(
                data,
                [REVIEW_BATCH, PATCH_PLANES, self.patch.edge, self.patch.edge],
            );
            match self.model.predict(images)? {
                Prediction::Probabilities { values, labels } => {
                    scores.extend(values.iter().step_by(labels.max(1)).take(real));
                }
                Prediction::Masks { .. } => {
                    return Err(ModelError::Readback {
                        model: self.model.name().to_string(),
                        message: "the candidate filter gave masks, not scores".into(),
                    });
                }
            }
        }
        Ok(scores)
    }
}

impl LoadedModel {
    /// Loads `package` on `device` and runs one pass at each of `warm_batch_sizes`, so that
    /// kernel compilation and autotuning (keyed by shape, batch included) happen now, not on
    /// the first request.
    pub fn load(
        package: ModelPackage,
        device: &Device,
        warm_batch_sizes: &[usize],
    ) -> Result<Self, ModelError> {
        let network = package::load_network(&package, device)?;
        let candidate_filter = match package.candidate_filter()? {
            Some((filter, patch)) => Some(CandidateFilter {
                model: Box::new(LoadedModel::load(filter, device, &[REVIEW_BATCH])?),
                patch,
            }),
            None => None,
        };
        let model = LoadedModel {
            package,
            network,
            device: device.clone(),
            candidate_filter,
        };
        for &batch in warm_batch_sizes {
            let [rows, columns] = model.package.manifest.input.target_size;
            let channels = model.package.manifest.architecture.in_channels();
            let zeros = Tensor::<4>::zeros([batch.max(1), channels, rows, columns], device);
            model.forward(zeros)?;
            tracing::debug!(model = %model.name(), batch, "warmed up");
        }
        Ok(model)
    }

    pub fn name(&self) -> &str {
        &self.package.manifest.model.name
    }

    /// The reviewer of a segmenter's components, when its package names one.
    pub fn candidate_filter(&self) -> Option<&CandidateFilter> {
        self.candidate_filter.as_ref()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs preprocessed images (`[batch, channels, rows, columns]`, f32, as
    /// [`crate::preprocess::prepare`] makes them) and returns probabilities.
    pub fn predict(&self, images: TensorData) -> Result<Prediction, ModelError> {
        if images.dtype() != DType::F32 {
            return Err(self.layout_error(images.shape().to_vec(), images.dtype()));
        }
        let shape = images.shape().to_vec();
        self.check_layout(&shape)?;
        self.forward(Tensor::from_data(images, &self.device))
    }

    /// As [`LoadedModel::predict`], for input already on the model's device (e.g. made there
    /// by a preprocessing kernel).
    pub fn predict_tensor(&self, images: Tensor<4>) -> Result<Prediction, ModelError> {
        self.check_layout(&images.dims())?;
        self.forward(images)
    }

    fn check_layout(&self, shape: &[usize]) -> Result<(), ModelError> {
        let manifest = &self.package.manifest;
        let channels = manifest.architecture.in_channels();
        let [rows, columns] = manifest.input.target_size;
        let layout_ok = shape.len() == 4
            && shape[1] == channels
            && shape[2] == rows
            && shape[3] == columns
            && shape[0] > 0;
        if layout_ok {
            Ok(())
        } else {
            Err(self.layout_error(shape.to_vec(), DType::F32))
        }
    }

    fn layout_error(&self, shape: Vec<usize>, dtype: DType) -> ModelError {
        let manifest = &self.package.manifest;
        let [rows, columns] = manifest.input.target_size;
        ModelError::InputLayout {
            model: self.name().to_string(),
            channels: manifest.architecture.in_channels(),
            rows,
            columns,
            dtype,
            shape,
        }
    }

    fn forward(&self, images: Tensor<4>) -> Result<Prediction, ModelError> {
        let output = self
            .network
            .forward_checked(&self.package.manifest.architecture, images)
            .map_err(|source| ModelError::Input {
                model: self.name().to_string(),
                source,
            })?;
        let readback = |t: Tensor<1>| {
            t.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::Readback {
                    model: self.name().to_string(),
                    message: format!("{e:?}"),
                })
        };
        Ok(match output {
            NetworkOutput::Scores(scores) => {
                let [_, labels] = scores.dims();
                Prediction::Probabilities {
                    labels,
                    values: readback(sigmoid(scores).flatten(0, 1))?,
                }
            }
            NetworkOutput::Maps(maps) => {
                let [_, labels, rows, columns] = maps.dims();
                Prediction::Masks {
                    labels,
                    rows,
                    columns,
                    values: readback(sigmoid(maps).flatten(0, 3))?,
                }
            }
        })
    }
}
