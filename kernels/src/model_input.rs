//! Preprocessing straight into a burn tensor on the model's device.
//!
//! On a CubeCL device (wgpu, CUDA) the fused kernel writes into a buffer that becomes the
//! tensor's storage: the pixels go up once and the model input never comes back to the host.
//! On the CPU backend (flex) the plain-Rust reference computes the same values.
//!
//! Fusion stays on. The kernel runs on the device's CubeCL client outside burn's fusion
//! streams, and its finished buffer is handed to fusion exactly as burn hands over an uploaded
//! tensor (an `Init` operation on the current stream); later operations fuse as usual. The
//! tensor comes out without autodiff: this is the inference path.

use burn::backend::fusion::{NoOp, get_client, stream::StreamId};
use burn::backend::ir::{BackendIr, InitOperationIr, OperationIr, OperationOutput};
use burn::backend::wgpu::{CubeBackend, CubeTensor};
use burn::backend::{Cube, DispatchDevice};
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};

use crate::fused::{FusedPreprocessor, KernelError};
use crate::reference;
use crate::spec::{Frames, PreprocessSpec};

/// Stored pixels → the model's N×C×H×W input on `device`.
pub fn preprocess_to_tensor(
    device: &Device,
    input: &Frames<'_>,
    spec: &PreprocessSpec,
) -> Result<Tensor<4>, KernelError> {
    match device.as_dispatch() {
        DispatchDevice::Cube(cube_device) => {
            let client = cube_device.client();
            let output = FusedPreprocessor::with_client(client.clone()).launch(input, spec)?;
            let shape = Shape::new(output.shape);
            let tensor = CubeTensor::new_contiguous(
                client,
                cube_device.clone(),
                shape.clone(),
                output.handle,
                DType::F32,
            );
            let fusion = get_client::<CubeBackend>(cube_device);
            let handle = <CubeBackend as BackendIr>::float_tensor_handle(tensor);
            let init = InitOperationIr::create(shape, DType::F32, || {
                fusion.register_tensor_handle(handle)
            });
            let primitive = fusion
                .register(
                    StreamId::current(),
                    OperationIr::Init(init),
                    NoOp::<CubeBackend>::new(),
                )
                .output();
            Ok(Tensor::<4>::from_primitive::<Cube>(primitive))
        }
        _ => {
            let plan = spec.plan(input)?;
            let values = reference::preprocess(input, spec)?;
            let shape = [plan.frames, plan.channels, plan.target[0], plan.target[1]];
            Ok(Tensor::from_data(TensorData::new(values, shape), device))
        }
    }
}
