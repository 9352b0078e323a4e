//! An image on its way into a batch, and how the device worker turns a batch of them into the
//! model's input tensor.
//!
//! Images normally travel as their stored pixels with the package's preprocessing written as a
//! kernel spec. The worker preprocesses them on the model's device when their batch runs:
//! `radserve_kernels::model_input` launches the fused CubeCL kernel on wgpu or CUDA (the pixels
//! go up once, the input never comes back) and runs its plain-Rust reference on the CPU
//! backend. Images whose pixel type the kernel does not take (32-bit, float) travel as values
//! prepared on the host by `radserve_models::preprocess`.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use radserve_kernels::model_input::preprocess_to_tensor;
use radserve_kernels::{Frames, Pixels, PreprocessSpec};

/// Stored pixel values of one frame, as BitsAllocated and PixelRepresentation say.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValues {
    U8(Vec<u8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
}

impl StoredValues {
    fn pixels(&self) -> Pixels<'_> {
        match self {
            StoredValues::U8(v) => Pixels::U8(v),
            StoredValues::U16(v) => Pixels::U16(v),
            StoredValues::I16(v) => Pixels::I16(v),
        }
    }

    /// Several images' values one after another (they must be of one kind).
    fn concat<'a>(parts: impl Iterator<Item = &'a StoredValues>) -> Option<StoredValues> {
        let mut parts = parts.peekable();
        let mut joined = match parts.peek()? {
            StoredValues::U8(_) => StoredValues::U8(Vec::new()),
            StoredValues::U16(_) => StoredValues::U16(Vec::new()),
            StoredValues::I16(_) => StoredValues::I16(Vec::new()),
        };
        for part in parts {
            match (&mut joined, part) {
                (StoredValues::U8(all), StoredValues::U8(v)) => all.extend_from_slice(v),
                (StoredValues::U16(all), StoredValues::U16(v)) => all.extend_from_slice(v),
                (StoredValues::I16(all), StoredValues::I16(v)) => all.extend_from_slice(v),
                _ => return None,
            }
        }
        Some(joined)
    }
}

/// One frame's stored pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPixels {
    pub rows: usize,
    pub columns: usize,
    pub values: StoredValues,
}

impl StoredPixels {
    pub fn frames(&self) -> Frames<'_> {
        Frames {
            rows: self.rows,
            columns: self.columns,
            frames: 1,
            pixels: self.values.pixels(),
        }
    }
}

/// One image as its batch takes it.
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// Preprocessed on the device when the batch runs. The spec was checked against the
    /// pixels when the input was made, so a bad image never fails its batch-mates.
    Device {
        pixels: Arc<StoredPixels>,
        spec: PreprocessSpec,
    },
    /// Already the model's C×H×W values.
    Host(Vec<f32>),
}

impl ModelInput {
    /// Checks `spec` against `pixels` now, before the image joins a batch.
    pub fn on_device(
        pixels: Arc<StoredPixels>,
        spec: PreprocessSpec,
    ) -> Result<ModelInput, radserve_kernels::PreprocessError> {
        spec.plan(&pixels.frames())?;
        Ok(ModelInput::Device { pixels, spec })
    }

    /// Whether `next` can share one kernel launch with `self` (same size, kind and spec).
    fn launches_with(&self, next: &ModelInput) -> bool {
        match (self, next) {
            (
                ModelInput::Device {
                    pixels: a,
                    spec: sa,
                },
                ModelInput::Device {
                    pixels: b,
                    spec: sb,
                },
            ) => {
                a.rows == b.rows
                    && a.columns == b.columns
                    && std::mem::discriminant(&a.values) == std::mem::discriminant(&b.values)
                    && sa == sb
            }
            (ModelInput::Host(_), ModelInput::Host(_)) => true,
            _ => false,
        }
    }
}

/// The batch's N×C×H×W input on `device`: one kernel launch per run of images that share size,
/// pixel type and spec (the slices of a CT series are one launch), one upload per run of host
/// inputs, joined along the batch axis.
pub fn batch_tensor(
    device: &Device,
    inputs: &[ModelInput],
    layout: [usize; 3],
) -> Result<Tensor<4>, String> {
    let [channels, rows, columns] = layout;
    let mut parts: Vec<Tensor<4>> = Vec::new();
    let mut start = 0;
    while start < inputs.len() {
        let mut end = start + 1;
        while end < inputs.len() && inputs[start].launches_with(&inputs[end]) {
            end += 1;
        }
        let run = &inputs[start..end];
        let part = match &run[0] {
            ModelInput::Device { pixels, spec } => {
                let joined;
                let frames = if run.len() == 1 {
                    pixels.frames()
                } else {
                    joined = StoredValues::concat(run.iter().filter_map(|i| match i {
                        ModelInput::Device { pixels, .. } => Some(&pixels.values),
                        ModelInput::Host(_) => None,
                    }))
                    .ok_or("images of one launch differ in pixel type")?;
                    Frames {
                        rows: pixels.rows,
                        columns: pixels.columns,
                        frames: run.len(),
                        pixels: joined.pixels(),
                    }
                };
                preprocess_to_tensor(device, &frames, spec).map_err(|e| e.to_string())?
            }
            ModelInput::Host(_) => {
                let mut values = Vec::with_capacity(run.len() * channels * rows * columns);
                for input in run {
                    if let ModelInput::Host(v) = input {
                        values.extend_from_slice(v);
                    }
                }
                if values.len() != run.len() * channels * rows * columns {
                    return Err(format!(
                        "{} prepared images hold {} values, expected {} each",
                        run.len(),
                        values.len(),
                        channels * rows * columns
                    ));
                }
                Tensor::from_data(
                    TensorData::new(values, [run.len(), channels, rows, columns]),
                    device,
                )
            }
        };
        let dims = part.dims();
        if dims != [run.len(), channels, rows, columns] {
            return Err(format!(
                "preprocessing made {dims:?}, the model takes [{}, {channels}, {rows}, {columns}]",
                run.len()
            ));
        }
        parts.push(part);
        start = end;
    }
    if parts.is_empty() {
        return Err("an empty batch".into());
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::cat(parts, 0)
    })
}
