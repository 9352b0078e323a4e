//! What a preprocessing call takes and makes: the stored pixels, the transform, the output.
//!
//! Both implementations (the CubeCL kernel in [`crate::fused`] and the plain-Rust reference in
//! [`crate::reference`]) take a [`PreprocessSpec`] checked by [`PreprocessSpec::plan`], so bad
//! input is refused before anything is launched or allocated.

/// Stored pixel values as decoded from DICOM, frames one after another, each row-major.
#[derive(Debug, Clone, Copy)]
pub enum Pixels<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    I16(&'a [i16]),
}

impl Pixels<'_> {
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::U16(v) => v.len(),
            Pixels::I16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pixel type as DICOM names it (BitsAllocated, PixelRepresentation).
    pub fn kind(&self) -> PixelKind {
        match self {
            Pixels::U8(_) => PixelKind::U8,
            Pixels::U16(_) => PixelKind::U16,
            Pixels::I16(_) => PixelKind::I16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelKind {
    U8,
    U16,
    I16,
}

impl PixelKind {
    /// Bytes per stored pixel.
    pub fn bytes(self) -> usize {
        match self {
            PixelKind::U8 => 1,
            PixelKind::U16 | PixelKind::I16 => 2,
        }
    }

    /// The kind for a DICOM image's BitsAllocated and PixelRepresentation (0 unsigned, 1 signed).
    pub fn from_dicom(
        bits_allocated: u16,
        pixel_representation: u16,
    ) -> Result<PixelKind, PreprocessError> {
        match (bits_allocated, pixel_representation) {
            (8, 0) => Ok(PixelKind::U8),
            (16, 0) => Ok(PixelKind::U16),
            (16, 1) => Ok(PixelKind::I16),
            _ => Err(PreprocessError::UnsupportedPixels {
                bits_allocated,
                pixel_representation,
            }),
        }
    }
}

/// One call's input: `frames` images of `rows × columns` pixels.
#[derive(Debug, Clone, Copy)]
pub struct Frames<'a> {
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    pub pixels: Pixels<'a>,
}

impl<'a> Frames<'a> {
    /// Frames `first .. first + count` (both within the checked input).
    pub fn frame_range(&self, first: usize, count: usize) -> Frames<'a> {
        let per_frame = self.rows * self.columns;
        let range = first * per_frame..(first + count) * per_frame;
        let pixels = match self.pixels {
            Pixels::U8(v) => Pixels::U8(&v[range]),
            Pixels::U16(v) => Pixels::U16(&v[range]),
            Pixels::I16(v) => Pixels::I16(&v[range]),
        };
        Frames {
            frames: count,
            pixels,
            ..*self
        }
    }
}

/// VOI LUT function, PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3 (LINEAR_EXACT, SIGMOID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl VoiFunction {
    /// From the VOILUTFunction attribute's value; absent means LINEAR.
    pub fn from_dicom(value: Option<&str>) -> Result<VoiFunction, PreprocessError> {
        match value.map(str::trim) {
            None | Some("") | Some("LINEAR") => Ok(VoiFunction::Linear),
            Some("LINEAR_EXACT") => Ok(VoiFunction::LinearExact),
            Some("SIGMOID") => Ok(VoiFunction::Sigmoid),
            Some(other) => Err(PreprocessError::UnknownVoiFunction(other.to_owned())),
        }
    }
}

/// How modality values become 0..1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Intensity {
    /// A VOI window in modality units.
    Window {
        center: f32,
        width: f32,
        function: VoiFunction,
    },
    /// Modality values (e.g. Hounsfield units) clipped to `min..=max`, mapped linearly.
    Clip { min: f32, max: f32 },
}

/// How the resampled 0..1 values become the network's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalisation {
    /// `(v - mean) / std`.
    MeanStd { mean: f32, std: f32 },
    /// `low + v × (high - low)`: 0..1 rescaled to `low..high` (e.g. -1..1).
    MinMax { low: f32, high: f32 },
}

/// How the image is resampled to the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resample {
    /// Bilinear with half-pixel centres; shrinking by more than [`ANTIALIAS_ABOVE`] filters
    /// with a triangle as wide as the scale instead (PIL's and torchvision's antialiased
    /// bilinear).
    #[default]
    Bilinear,
    /// Area averaging when shrinking: each output pixel is the mean of the source area it
    /// covers, weighted by overlap (OpenCV's `INTER_AREA`, PyTorch's `adaptive_avg_pool2d` at
    /// whole scales); bilinear when enlarging. What radserve's model packages are trained with
    /// (`radserve_models::preprocess::resize`).
    Area,
}

/// The whole transform from stored pixels to model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessSpec {
    /// Modality LUT as RescaleSlope / RescaleIntercept (1, 0 when the image has none).
    pub rescale_slope: f32,
    pub rescale_intercept: f32,
    pub intensity: Intensity,
    /// MONOCHROME1: invert after the VOI so that dense is always bright.
    pub invert: bool,
    /// Rows, columns of the output.
    pub target: [usize; 2],
    pub resample: Resample,
    /// Keep the aspect ratio, centre the image and pad with 0 (black, before normalisation).
    pub letterbox: bool,
    pub normalisation: Normalisation,
    /// Channels of the output; the grey value is repeated in each (3 for ImageNet-style nets).
    pub channels: usize,
}

/// Largest image edge accepted, in or out (DX detectors reach ~4300 px).
pub const MAX_EDGE: usize = 16_384;
/// Most frames in one call (a large CT series; enhanced multi-frame objects).
pub const MAX_FRAMES: usize = 4_096;
/// Most output values in one call (4 GiB of f32).
pub const MAX_OUTPUT_VALUES: usize = 1 << 30;
/// Most channels per output image.
pub const MAX_CHANNELS: usize = 4;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("images of {rows}×{columns} pixels are outside 1..={MAX_EDGE} per edge")]
    BadImageSize { rows: usize, columns: usize },
    #[error("{frames} frames is outside 1..={MAX_FRAMES}")]
    BadFrameCount { frames: usize },
    #[error(
        "{frames} frames of {rows}×{columns} need {expected} pixels, the buffer holds {actual}"
    )]
    LengthMismatch {
        rows: usize,
        columns: usize,
        frames: usize,
        expected: usize,
        actual: usize,
    },
    #[error("target size {rows}×{columns} is outside 1..={MAX_EDGE} per edge")]
    BadTargetSize { rows: usize, columns: usize },
    #[error("{channels} channels is outside 1..={MAX_CHANNELS}")]
    BadChannels { channels: usize },
    #[error("the output would hold {values} values, more than {MAX_OUTPUT_VALUES}")]
    OutputTooLarge { values: usize },
    #[error(
        "BitsAllocated {bits_allocated} with PixelRepresentation {pixel_representation} is not supported (8-bit unsigned, 16-bit unsigned or signed)"
    )]
    UnsupportedPixels {
        bits_allocated: u16,
        pixel_representation: u16,
    },
    #[error("VOI LUT function {0:?} is not LINEAR, LINEAR_EXACT or SIGMOID")]
    UnknownVoiFunction(String),
    #[error("{0}")]
    BadParameter(String),
}

/// Resampling along one axis: output index `o` inside the image's span reads the source around
/// `(o + 0.5) × scale − 0.5` (half-pixel centres, PyTorch's `align_corners=False`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisPlan {
    pub source: usize,
    /// Output positions the image covers: `offset .. offset + span`; the rest is padding.
    pub offset: usize,
    pub span: usize,
    /// Source pixels per output pixel.
    pub scale: f32,
    pub filter: AxisFilter,
}

/// Shrinking by more than this (source/output) filters with a triangle of width `scale` instead
/// of sampling two neighbours, so fine detail does not alias ([`Resample::Bilinear`]).
pub const ANTIALIAS_ABOVE: f32 = 2.0;

/// The filter one axis is resampled with, from the [`Resample`] asked for and the axis' scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AxisFilter {
    /// The two neighbours of the sample point.
    Bilinear,
    /// A triangle of half-width `scale`.
    Triangle,
    /// The source interval `[o × scale, (o + 1) × scale)`, weighted by overlap.
    Area,
}

impl AxisFilter {
    fn for_axis(resample: Resample, scale: f32) -> AxisFilter {
        match resample {
            Resample::Bilinear if scale > ANTIALIAS_ABOVE => AxisFilter::Triangle,
            Resample::Area if scale > 1.0 => AxisFilter::Area,
            _ => AxisFilter::Bilinear,
        }
    }
}

/// A checked spec with everything both implementations derive from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub frames: usize,
    pub kind: PixelKind,
    pub rows: AxisPlan,
    pub columns: AxisPlan,
    pub target: [usize; 2],
    pub channels: usize,
    /// `value = stored × slope + intercept`, then the intensity mapping to 0..1.
    pub slope: f32,
    pub intercept: f32,
    pub intensity: Intensity,
    pub invert: bool,
    /// Output = `unit × scale + offset` (normalisation folded into one multiply-add).
    pub out_scale: f32,
    pub out_offset: f32,
}

impl Plan {
    /// Values of the N×C×H×W output.
    pub fn output_len(&self) -> usize {
        self.frames * self.channels * self.target[0] * self.target[1]
    }
}

fn finite(name: &str, value: f32) -> Result<f32, PreprocessError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(PreprocessError::BadParameter(format!(
            "{name} is {value}, not a finite number"
        )))
    }
}

impl PreprocessSpec {
    /// Checks the spec against `input` and derives the resampling and the folded constants.
    pub fn plan(&self, input: &Frames<'_>) -> Result<Plan, PreprocessError> {
        let (rows, columns, frames) = (input.rows, input.columns, input.frames);
        if rows == 0 || columns == 0 || rows > MAX_EDGE || columns > MAX_EDGE {
            return Err(PreprocessError::BadImageSize { rows, columns });
        }
        if frames == 0 || frames > MAX_FRAMES {
            return Err(PreprocessError::BadFrameCount { frames });
        }
        let expected = rows * columns * frames;
        if input.pixels.len() != expected {
            return Err(PreprocessError::LengthMismatch {
                rows,
                columns,
                frames,
                expected,
                actual: input.pixels.len(),
            });
        }
        let [target_rows, target_columns] = self.target;
        if target_rows == 0
            || target_columns == 0
            || target_rows > MAX_EDGE
            || target_columns > MAX_EDGE
        {
            return Err(PreprocessError::BadTargetSize {
                rows: target_rows,
                columns: target_columns,
            });
        }
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            return Err(PreprocessError::BadChannels {
                channels: self.channels,
            });
        }
        let values = frames * self.channels * target_rows * target_columns;
        if values > MAX_OUTPUT_VALUES {
            return Err(PreprocessError::OutputTooLarge { values });
        }
        let slope = finite("RescaleSlope", self.rescale_slope)?;
        let intercept = finite("RescaleIntercept", self.rescale_intercept)?;
        match self.intensity {
            Intensity::Window {
                center,
                width,
                function,
            } => {
                finite("window center", center)?;
                finite("window width", width)?;
                // PS3.3 C.11.2.1.2.1: LINEAR needs width ≥ 1; the others any positive width.
                let least = if function == VoiFunction::Linear {
                    1.0
                } else {
                    f32::MIN_POSITIVE
                };
                if width < least {
                    return Err(PreprocessError::BadParameter(format!(
                        "window width {width} is below {least} for {function:?}"
                    )));
                }
            }
            Intensity::Clip { min, max } => {
                finite("clip min", min)?;
                finite("clip max", max)?;
                if min >= max {
                    return Err(PreprocessError::BadParameter(format!(
                        "clip range {min}..{max} is empty"
                    )));
                }
            }
        }
        let (out_scale, out_offset) = match self.normalisation {
            Normalisation::MeanStd { mean, std } => {
                finite("normalisation mean", mean)?;
                finite("normalisation std", std)?;
                if std <= 0.0 {
                    return Err(PreprocessError::BadParameter(format!(
                        "normalisation std {std} is not positive"
                    )));
                }
                (1.0 / std, -mean / std)
            }
            Normalisation::MinMax { low, high } => {
                finite("normalisation low", low)?;
                finite("normalisation high", high)?;
                if low >= high {
                    return Err(PreprocessError::BadParameter(format!(
                        "normalisation range {low}..{high} is empty"
                    )));
                }
                (high - low, low)
            }
        };
        let (row_span, column_span) = if self.letterbox {
            // The largest size with the source's aspect that fits; at least one pixel.
            let fit =
                (target_rows as f64 / rows as f64).min(target_columns as f64 / columns as f64);
            (
                ((rows as f64 * fit).round() as usize).clamp(1, target_rows),
                ((columns as f64 * fit).round() as usize).clamp(1, target_columns),
            )
        } else {
            (target_rows, target_columns)
        };
        let resample = self.resample;
        let axis = |source: usize, target: usize, span: usize| {
            let scale = (source as f64 / span as f64) as f32;
            AxisPlan {
                source,
                offset: (target - span) / 2,
                span,
                scale,
                filter: AxisFilter::for_axis(resample, scale),
            }
        };
        Ok(Plan {
            frames,
            kind: input.pixels.kind(),
            rows: axis(rows, target_rows, row_span),
            columns: axis(columns, target_columns, column_span),
            target: self.target,
            channels: self.channels,
            slope,
            intercept,
            intensity: self.intensity,
            invert: self.invert,
            out_scale,
            out_offset,
        })
    }
}

/// The point-wise part: stored value → modality value → 0..1 through the VOI or clip → inverted
/// for MONOCHROME1. Both implementations compute exactly this, in f32.
#[inline]
pub fn unit_intensity(plan: &Plan, stored: f32) -> f32 {
    let value = stored * plan.slope + plan.intercept;
    let unit = match plan.intensity {
        Intensity::Window {
            center,
            width,
            function: VoiFunction::Linear,
        } => {
            // PS3.3 C.11.2.1.2.1 with y in 0..1.
            let low = center - 0.5 - (width - 1.0) / 2.0;
            let high = center - 0.5 + (width - 1.0) / 2.0;
            if value <= low {
                0.0
            } else if value > high {
                1.0
            } else {
                (value - (center - 0.5)) / (width - 1.0) + 0.5
            }
        }
        Intensity::Window {
            center,
            width,
            function: VoiFunction::LinearExact,
        } => {
            let low = center - width / 2.0;
            let high = center + width / 2.0;
            if value <= low {
                0.0
            } else if value > high {
                1.0
            } else {
                (value - center) / width + 0.5
            }
        }
        Intensity::Window {
            center,
            width,
            function: VoiFunction::Sigmoid,
        } => 1.0 / (1.0 + (-4.0 * (value - center) / width).exp()),
        Intensity::Clip { min, max } => ((value - min) / (max - min)).clamp(0.0, 1.0),
    };
    if plan.invert { 1.0 - unit } else { unit }
}

/// First and last source index of the area filter centred on `centre`.
pub fn area_bounds(centre: f32, scale: f32, last: usize) -> (usize, usize) {
    let start = centre + 0.5 - scale / 2.0;
    let first = start.floor().max(0.0) as usize;
    let end = ((start + scale).ceil() as usize)
        .saturating_sub(1)
        .min(last);
    (first.min(end), end)
}

/// How much of source pixel `i` (the interval `[i, i + 1)`) the area of `centre` covers.
#[inline]
pub fn area_overlap(i: f32, centre: f32, scale: f32) -> f32 {
    let start = centre + 0.5 - scale / 2.0;
    ((start + scale).min(i + 1.0) - start.max(i)).max(0.0)
}

/// Taps of output index `o` (relative to the image's span) along one axis: source index and
/// weight, the weights summing to 1. The kernel computes the same taps on the fly.
pub fn axis_taps(axis: &AxisPlan, o: usize, taps: &mut Vec<(usize, f32)>) {
    taps.clear();
    let last = axis.source - 1;
    let centre = (o as f32 + 0.5) * axis.scale - 0.5;
    if axis.filter == AxisFilter::Triangle {
        // Triangle filter of half-width `scale`, renormalised at the borders.
        let first = (centre - axis.scale).floor().max(0.0) as usize;
        let end = ((centre + axis.scale).ceil() as usize).min(last);
        let mut total = 0.0;
        for i in first..=end {
            let weight = (1.0 - (i as f32 - centre).abs() / axis.scale).max(0.0);
            if weight > 0.0 {
                taps.push((i, weight));
                total += weight;
            }
        }
        for tap in taps.iter_mut() {
            tap.1 /= total;
        }
    } else if axis.filter == AxisFilter::Area {
        let (first, end) = area_bounds(centre, axis.scale, last);
        for i in first..=end {
            let weight = area_overlap(i as f32, centre, axis.scale);
            if weight > 0.0 {
                taps.push((i, weight / axis.scale));
            }
        }
    } else {
        let centre = centre.max(0.0);
        let i0 = (centre.floor() as usize).min(last);
        let i1 = (i0 + 1).min(last);
        let t = centre - i0 as f32;
        if i0 == i1 {
            taps.push((i0, 1.0));
        } else {
            taps.push((i0, 1.0 - t));
            taps.push((i1, t));
        }
    }
}
