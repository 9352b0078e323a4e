//! The fused preprocessing kernel in CubeCL: stored pixels → model input in one pass.
//!
//! One thread per output pixel (frame, row, column) reads the source pixels its filter covers,
//! applies the Modality LUT, the VOI (or clip) and the MONOCHROME1 inversion to each, weights
//! them, normalises, and writes every channel. Nothing is staged in between, so a batch of
//! 512×512 frames costs one read of the stored pixels and one write of the output.
//!
//! WGSL (wgpu's default shader path) has no 8- or 16-bit storage, so the stored pixels are
//! uploaded as they are and read as packed `u32` words: two 16-bit or four 8-bit pixels each,
//! little-endian, unpacked with shifts (and sign-extended for i16) in the kernel.

use std::borrow::Cow;

use cubecl::bytes::Bytes;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::spec::{
    AxisFilter, Frames, Intensity, PixelKind, Pixels, Plan, PreprocessError, PreprocessSpec,
    VoiFunction,
};

/// The intensity mapping, fixed when the kernel is compiled (one variant per mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mapping {
    Linear,
    LinearExact,
    Sigmoid,
    Clip,
}

/// What is fixed per compiled kernel: the branches a thread would otherwise test per pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub kind: PixelKind,
    pub mapping: Mapping,
    pub invert: bool,
    pub row_filter: AxisFilter,
    pub column_filter: AxisFilter,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("{what} needs {bytes} bytes in one buffer; the device allows {limit}")]
    TooLargeForDevice {
        what: &'static str,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "{pixels} stored pixels in one call; the kernels index with 32 bits (at most 4294967295)"
    )]
    TooManyPixels { pixels: u64 },
    #[error("the device failed: {0}")]
    Device(String),
}

/// The plan's sizes, passed by value with each launch (no buffer to create per call).
#[derive(CubeLaunch, CubeType, Clone)]
pub struct Geometry {
    rows: u32,
    columns: u32,
    target_rows: u32,
    target_columns: u32,
    /// The image's span in the output (letterbox padding outside it).
    row_offset: u32,
    row_span: u32,
    column_offset: u32,
    column_span: u32,
}

/// The plan's numbers: source pixels per output pixel, the Modality LUT, and the intensity
/// mapping's two parameters (centre and width, or min and max).
#[derive(CubeLaunch, CubeType, Clone)]
pub struct Factors {
    row_scale: f32,
    column_scale: f32,
    slope: f32,
    intercept: f32,
    p0: f32,
    p1: f32,
}

/// The stored value of pixel `index` from the packed words.
// CubeCL wants a variable declared before comptime branches assign it, and a comptime test
// kept apart from a runtime one, hence the allows.
#[cube]
#[allow(unused_assignments, clippy::collapsible_if)]
fn stored_value(words: &[u32], index: u32, #[comptime] kind: PixelKind) -> f32 {
    let mut value = 0.0f32;
    if comptime!(kind == PixelKind::U8) {
        let word = words[(index / 4u32) as usize];
        value = f32::cast_from((word >> ((index % 4u32) * 8u32)) & 0xFFu32);
    } else {
        let word = words[(index / 2u32) as usize];
        let bits = (word >> ((index % 2u32) * 16u32)) & 0xFFFFu32;
        value = f32::cast_from(bits);
        if comptime!(kind == PixelKind::I16) {
            if bits >= 0x8000u32 {
                value -= 65536.0f32;
            }
        }
    }
    value
}

/// Stored value → 0..1, as `spec::unit_intensity` computes it.
#[cube]
#[allow(unused_assignments)]
fn unit_value(
    stored: f32,
    slope: f32,
    intercept: f32,
    p0: f32,
    p1: f32,
    #[comptime] mapping: Mapping,
    #[comptime] invert: bool,
) -> f32 {
    let value = stored * slope + intercept;
    let mut unit = 0.0f32;
    if comptime!(mapping == Mapping::Linear) {
        // PS3.3 C.11.2.1.2.1; p0 = center, p1 = width (≥ 1).
        let low = p0 - 0.5f32 - (p1 - 1.0f32) / 2.0f32;
        let high = p0 - 0.5f32 + (p1 - 1.0f32) / 2.0f32;
        if value <= low {
            unit = 0.0f32;
        } else if value > high {
            unit = 1.0f32;
        } else {
            unit = (value - (p0 - 0.5f32)) / (p1 - 1.0f32) + 0.5f32;
        }
    } else {
        if comptime!(mapping == Mapping::LinearExact) {
            let low = p0 - p1 / 2.0f32;
            let high = p0 + p1 / 2.0f32;
            if value <= low {
                unit = 0.0f32;
            } else if value > high {
                unit = 1.0f32;
            } else {
                unit = (value - p0) / p1 + 0.5f32;
            }
        } else {
            if comptime!(mapping == Mapping::Sigmoid) {
                unit = 1.0f32 / (1.0f32 + (-4.0f32 * (value - p0) / p1).exp());
            } else {
                // Clip: p0 = min, p1 = max.
                unit = ((value - p0) / (p1 - p0)).clamp(0.0f32, 1.0f32);
            }
        }
    }
    if comptime!(invert) {
        unit = 1.0f32 - unit;
    }
    unit
}

/// Stored pixel `index` mapped to 0..1.
#[cube]
fn mapped(words: &[u32], index: u32, factors: &Factors, #[comptime] variant: Variant) -> f32 {
    unit_value(
        stored_value(words, index, variant.kind),
        factors.slope,
        factors.intercept,
        factors.p0,
        factors.p1,
        variant.mapping,
        variant.invert,
    )
}

/// First and last source index a filter centred on `centre` reads along one axis, and the
/// point it is evaluated at (`spec::axis_taps`, computed here).
#[cube]
#[allow(unused_assignments, clippy::collapsible_else_if)]
fn axis_window(
    centre: f32,
    scale: f32,
    last: u32,
    #[comptime] filter: AxisFilter,
) -> (u32, u32, f32) {
    let last_f = f32::cast_from(last);
    let mut first = 0u32;
    let mut end = 0u32;
    let mut at = centre;
    if comptime!(filter == AxisFilter::Triangle) {
        first = u32::cast_from((centre - scale).floor().max(0.0f32));
        end = u32::cast_from((centre + scale).ceil().min(last_f));
    } else {
        if comptime!(filter == AxisFilter::Area) {
            // As `spec::area_bounds`.
            let start = centre + 0.5f32 - scale / 2.0f32;
            end = u32::cast_from(((start + scale).ceil() - 1.0f32).max(0.0f32).min(last_f));
            first = u32::cast_from(start.floor().max(0.0f32)).min(end);
        } else {
            // Bilinear is the triangle of half-width 1 with the centre clamped to the image.
            at = centre.clamp(0.0f32, last_f);
            first = u32::cast_from(at.floor());
            end = (first + 1u32).min(last);
        }
    }
    (first, end, at)
}

/// The (unnormalised) weight of source index `i` for a filter evaluated at `at`.
#[cube]
#[allow(unused_assignments, clippy::collapsible_else_if)]
fn tap_weight(i: f32, at: f32, scale: f32, #[comptime] filter: AxisFilter) -> f32 {
    let mut weight = 0.0f32;
    if comptime!(filter == AxisFilter::Triangle) {
        weight = (1.0f32 - (i - at).abs() / scale).max(0.0f32);
    } else {
        if comptime!(filter == AxisFilter::Area) {
            // As `spec::area_overlap`.
            let start = at + 0.5f32 - scale / 2.0f32;
            weight = ((start + scale).min(i + 1.0f32) - start.max(i)).max(0.0f32);
        } else {
            weight = (1.0f32 - (i - at).abs()).max(0.0f32);
        }
    }
    weight
}

/// The 0..1 value of output pixel (`frame`, `y`, `x`).
#[cube]
fn output_unit(
    words: &[u32],
    frame: u32,
    y: u32,
    x: u32,
    geometry: &Geometry,
    factors: &Factors,
    #[comptime] variant: Variant,
) -> f32 {
    let rows = geometry.rows;
    let columns = geometry.columns;
    let mut unit = 0.0f32;
    // Letterbox padding stays 0.
    if y >= geometry.row_offset
        && y < geometry.row_offset + geometry.row_span
        && x >= geometry.column_offset
        && x < geometry.column_offset + geometry.column_span
    {
        let row_centre =
            (f32::cast_from(y - geometry.row_offset) + 0.5f32) * factors.row_scale - 0.5f32;
        let column_centre =
            (f32::cast_from(x - geometry.column_offset) + 0.5f32) * factors.column_scale - 0.5f32;
        let (r_first, r_end, r_at) = axis_window(
            row_centre,
            factors.row_scale,
            rows - 1u32,
            variant.row_filter,
        );
        let (c_first, c_end, c_at) = axis_window(
            column_centre,
            factors.column_scale,
            columns - 1u32,
            variant.column_filter,
        );
        let base = frame * rows * columns;
        if comptime!(
            variant.row_filter == AxisFilter::Bilinear
                && variant.column_filter == AxisFilter::Bilinear
        ) {
            // Bilinear on both axes: exactly four taps whose weights sum to 1, unrolled.
            let r1 = (r_first + 1u32).min(r_end);
            let c1 = (c_first + 1u32).min(c_end);
            let tr = r_at - f32::cast_from(r_first);
            let tc = c_at - f32::cast_from(c_first);
            let top = base + r_first * columns;
            let bottom = base + r1 * columns;
            let v00 = mapped(words, top + c_first, factors, variant);
            let v01 = mapped(words, top + c1, factors, variant);
            let v10 = mapped(words, bottom + c_first, factors, variant);
            let v11 = mapped(words, bottom + c1, factors, variant);
            unit = (1.0f32 - tr) * ((1.0f32 - tc) * v00 + tc * v01)
                + tr * ((1.0f32 - tc) * v10 + tc * v11);
        } else {
            let mut total = 0.0f32;
            let mut row_weights = 0.0f32;
            for r in r_first..r_end + 1u32 {
                let wr = tap_weight(
                    f32::cast_from(r),
                    r_at,
                    factors.row_scale,
                    variant.row_filter,
                );
                let mut row_total = 0.0f32;
                let mut column_weights = 0.0f32;
                for c in c_first..c_end + 1u32 {
                    let wc = tap_weight(
                        f32::cast_from(c),
                        c_at,
                        factors.column_scale,
                        variant.column_filter,
                    );
                    row_total += wc * mapped(words, base + r * columns + c, factors, variant);
                    column_weights += wc;
                }
                total += wr * row_total / column_weights;
                row_weights += wr;
            }
            unit = total / row_weights;
        }
    }
    unit
}

/// Model input: N×C×H×W f32, `unit × out_scale + out_offset` in each of `channels`. One unit
/// per output pixel on a 3D grid (column, row, frame), so no unit divides to find its pixel
/// (integer division is slow on many devices, and scalarised on lavapipe).
#[cube(launch_unchecked)]
fn preprocess_kernel(
    words: &[u32],
    geometry: Geometry,
    factors: Factors,
    out: &mut [f32],
    frames: u32,
    out_scale: f32,
    out_offset: f32,
    #[comptime] channels: u32,
    #[comptime] variant: Variant,
) {
    let x = ABSOLUTE_POS_X;
    let y = ABSOLUTE_POS_Y;
    let frame = ABSOLUTE_POS_Z;
    if x >= geometry.target_columns || y >= geometry.target_rows || frame >= frames {
        terminate!();
    }
    let value =
        output_unit(words, frame, y, x, &geometry, &factors, variant) * out_scale + out_offset;
    let plane = geometry.target_rows * geometry.target_columns;
    let within = y * geometry.target_columns + x;
    #[unroll]
    for channel in 0..channels {
        out[((frame * channels + channel) * plane + within) as usize] = value;
    }
}

/// Display values: four output pixels per thread, packed into one little-endian `u32`.
#[cube(launch_unchecked)]
fn render_kernel(
    words: &[u32],
    geometry: Geometry,
    factors: Factors,
    out: &mut [u32],
    pixels_out: u32,
    #[comptime] variant: Variant,
) {
    let word = ABSOLUTE_POS as u32;
    if word * 4u32 >= pixels_out {
        terminate!();
    }
    let mut packed = 0u32;
    #[unroll]
    for k in 0..4u32 {
        let position = word * 4u32 + k;
        if position < pixels_out {
            let plane = geometry.target_rows * geometry.target_columns;
            let within = position % plane;
            let unit = output_unit(
                words,
                position / plane,
                within / geometry.target_columns,
                within % geometry.target_columns,
                &geometry,
                &factors,
                variant,
            );
            let display = u32::cast_from((unit.clamp(0.0f32, 1.0f32) * 255.0f32 + 0.5f32).floor());
            packed |= display << (k * 8u32);
        }
    }
    out[word as usize] = packed;
}

/// Output pixels per cube along x and y (the 3D grid's z is the frame).
const TILE: u32 = 16;

/// Stored pixels uploaded per launch, at most (a frame larger than this goes up alone).
pub const UPLOAD_CHUNK_BYTES: u64 = 1 << 20;

/// Runs the fused kernels on one CubeCL device (wgpu, CUDA).
pub struct FusedPreprocessor {
    client: Client,
}

/// A launched preprocessing: the output buffer on the device and what it holds.
pub struct DeviceOutput {
    pub handle: Handle,
    /// N, C, H, W.
    pub shape: [usize; 4],
}

impl FusedPreprocessor {
    pub fn new(device: &cubecl::Device) -> Self {
        FusedPreprocessor {
            client: device.client(),
        }
    }

    /// Wraps the client of a device that is already open (e.g. the one burn computes on).
    pub fn with_client(client: Client) -> Self {
        FusedPreprocessor { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Launches the kernel; the output stays on the device.
    ///
    /// Many frames go up in chunks of about [`UPLOAD_CHUNK_BYTES`], one launch each writing its
    /// frames' part of the output: wgpu stages one large write far more slowly than several
    /// small ones (on lavapipe 16 MB at once took 28 ms, 4 MB 1 to 5 ms), and a chunk's kernel can
    /// run while the next chunk uploads.
    pub fn launch(
        &self,
        input: &Frames<'_>,
        spec: &PreprocessSpec,
    ) -> Result<DeviceOutput, KernelError> {
        let plan = spec.plan(input)?;
        let out_values = plan.output_len();
        self.fits("the output", out_values as u64 * 4)?;
        let output = self.client.empty(out_values * std::mem::size_of::<f32>());
        let plane = plan.target[0] * plan.target[1];
        let frame_out_bytes = (plan.channels * plane * std::mem::size_of::<f32>()) as u64;
        let chunk_frames = self.frames_per_chunk(input, frame_out_bytes);
        let mut first = 0;
        while first < plan.frames {
            let count = chunk_frames.min(plan.frames - first);
            let chunk = input.frame_range(first, count);
            let (words, geometry, factors, variant) = self.upload(&chunk, &plan)?;
            let before = first as u64 * frame_out_bytes;
            let after = (plan.frames - first - count) as u64 * frame_out_bytes;
            let chunk_output = output.clone().offset_start(before).offset_end(after);
            let cube_dim = CubeDim::new_2d(TILE, TILE);
            let cube_count = CubeCount::Static(
                (plan.target[1] as u32).div_ceil(TILE),
                (plan.target[0] as u32).div_ceil(TILE),
                count as u32,
            );
            // SAFETY: every index the kernel computes is bounded by the plan checked above:
            // source indices by the clamped filter windows within the chunk's frames, output
            // indices by the grid test against the target size and `count` frames, inside the
            // chunk's part of the output.
            unsafe {
                preprocess_kernel::launch_unchecked(
                    &self.client,
                    cube_count,
                    cube_dim,
                    words,
                    geometry,
                    factors,
                    BufferArg::from_raw_parts(chunk_output, count * plan.channels * plane),
                    count as u32,
                    plan.out_scale,
                    plan.out_offset,
                    plan.channels as u32,
                    variant,
                );
            }
            first += count;
        }
        Ok(DeviceOutput {
            handle: output,
            shape: [plan.frames, plan.channels, plan.target[0], plan.target[1]],
        })
    }

    /// Frames per upload: all of them when they are small, or when a frame's part of the
    /// output is not at an offset the device can bind.
    fn frames_per_chunk(&self, input: &Frames<'_>, frame_out_bytes: u64) -> usize {
        let frame_bytes = (input.rows * input.columns * input.pixels.kind().bytes()) as u64;
        let alignment = self.client.properties().memory.alignment.max(1);
        if !frame_out_bytes.is_multiple_of(alignment) || frame_bytes == 0 {
            return input.frames;
        }
        ((UPLOAD_CHUNK_BYTES / frame_bytes) as usize).clamp(1, input.frames)
    }

    /// Runs the kernel and reads the N×C×H×W output back (tests, benches, the CPU fallback).
    pub fn preprocess(
        &self,
        input: &Frames<'_>,
        spec: &PreprocessSpec,
    ) -> Result<Vec<f32>, KernelError> {
        let output = self.launch(input, spec)?;
        let bytes = self.read_back(output.handle)?;
        Ok(f32::from_bytes(&bytes).to_vec())
    }

    /// The u8 variant for thumbnails and WADO `rendered`: N×H×W display values.
    pub fn render_u8(
        &self,
        input: &Frames<'_>,
        spec: &PreprocessSpec,
    ) -> Result<Vec<u8>, KernelError> {
        let plan = spec.plan(input)?;
        let pixels_out = plan.frames * plan.target[0] * plan.target[1];
        let out_words = pixels_out.div_ceil(4);
        self.fits("the rendered images", out_words as u64 * 4)?;
        let (words, geometry, factors, variant) = self.upload(input, &plan)?;
        let output = self.client.empty(out_words * 4);
        let cube_dim = CubeDim::new(&self.client, out_words);
        let cube_count = cubecl::calculate_cube_count_elemwise(&self.client, out_words, cube_dim);
        // SAFETY: as in `launch`; output words are bounded by `pixels_out / 4` rounded up.
        unsafe {
            render_kernel::launch_unchecked(
                &self.client,
                cube_count,
                cube_dim,
                words,
                geometry,
                factors,
                BufferArg::from_raw_parts(output.clone(), out_words),
                pixels_out as u32,
                variant,
            );
        }
        let mut display = self.read_back(output)?.to_vec();
        display.truncate(pixels_out);
        Ok(display)
    }

    /// Waits for the device and copies a buffer to the host (aligned for its element type).
    fn read_back(&self, handle: Handle) -> Result<Bytes, KernelError> {
        self.client
            .read_one(handle)
            .map_err(|e| KernelError::Device(format!("{e:?}")))
    }

    fn fits(&self, what: &'static str, bytes: u64) -> Result<(), KernelError> {
        let limit = self.client.properties().memory.max_page_size;
        if bytes > limit {
            return Err(KernelError::TooLargeForDevice { what, bytes, limit });
        }
        Ok(())
    }

    /// Uploads the packed pixels; the plan's parameters go with the launch, by value.
    #[allow(clippy::type_complexity)]
    fn upload(
        &self,
        input: &Frames<'_>,
        plan: &Plan,
    ) -> Result<(BufferArg, GeometryLaunch, FactorsLaunch, Variant), KernelError> {
        // The kernels index pixels with u32 (WGSL has no 64-bit indices everywhere).
        if input.pixels.len() as u64 > u64::from(u32::MAX) {
            return Err(KernelError::TooManyPixels {
                pixels: input.pixels.len() as u64,
            });
        }
        let bytes = packed_bytes(&input.pixels);
        self.fits("the stored pixels", bytes.len() as u64)?;
        let word_count = bytes.len() / 4;
        let words = self.client.create_from_slice(&bytes);
        let (mapping, p0, p1) = match plan.intensity {
            Intensity::Window {
                center,
                width,
                function,
            } => (
                match function {
                    VoiFunction::Linear => Mapping::Linear,
                    VoiFunction::LinearExact => Mapping::LinearExact,
                    VoiFunction::Sigmoid => Mapping::Sigmoid,
                },
                center,
                width,
            ),
            Intensity::Clip { min, max } => (Mapping::Clip, min, max),
        };
        let geometry = GeometryLaunch::new(
            plan.rows.source as u32,
            plan.columns.source as u32,
            plan.target[0] as u32,
            plan.target[1] as u32,
            plan.rows.offset as u32,
            plan.rows.span as u32,
            plan.columns.offset as u32,
            plan.columns.span as u32,
        );
        let factors = FactorsLaunch::new(
            plan.rows.scale,
            plan.columns.scale,
            plan.slope,
            plan.intercept,
            p0,
            p1,
        );
        let variant = Variant {
            kind: plan.kind,
            mapping,
            invert: plan.invert,
            row_filter: plan.rows.filter,
            column_filter: plan.columns.filter,
        };
        // SAFETY: the handle was created just above with exactly this many words.
        let words = unsafe { BufferArg::from_raw_parts(words, word_count) };
        Ok((words, geometry, factors, variant))
    }
}

/// The stored pixels as little-endian bytes, padded to whole `u32` words: the pixel buffer
/// itself when it already is (a little-endian host and a whole number of words), else a copy.
fn packed_bytes<'a>(pixels: &Pixels<'a>) -> Cow<'a, [u8]> {
    let native: &'a [u8] = match *pixels {
        Pixels::U8(v) => v,
        Pixels::U16(v) => u16::as_bytes(v),
        Pixels::I16(v) => i16::as_bytes(v),
    };
    if cfg!(target_endian = "little") && native.len().is_multiple_of(4) {
        return Cow::Borrowed(native);
    }
    let mut bytes: Vec<u8> = match *pixels {
        Pixels::U8(v) => v.to_vec(),
        Pixels::U16(v) => v.iter().flat_map(|p| p.to_le_bytes()).collect(),
        Pixels::I16(v) => v.iter().flat_map(|p| p.to_le_bytes()).collect(),
    };
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    Cow::Owned(bytes)
}
