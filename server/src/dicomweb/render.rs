//! WADO-RS rendered resources (PS3.18 §10.4.1.1.3): `/rendered` and `/thumbnail` of an
//! instance or of one frame, as `image/jpeg` (the default) or `image/png`.
//!
//! Pixels are decoded with dicom-pixeldata: uncompressed, RLE, JPEG baseline and lossless
//! (native), JPEG-LS (CharLS, built from source by charls-sys with cmake) and JPEG 2000
//! (openjp2, pure Rust); JPEG Extended at 12 bits (1.2.840.10008.1.2.4.51), which
//! jpeg-decoder lacks, by radserve's own decoder (`pipeline::jpeg_extended`). Pixel data
//! that cannot be decoded gets 406.
//! The Modality LUT (rescale) is applied, then the values are windowed (PS3.3 C.11.2.1.2)
//! by, in order:
//! `window=centre,width[,LINEAR|LINEAR_EXACT|SIGMOID]`, the instance's first
//! WindowCenter/WindowWidth (and VOILUTFunction), or the frame's own value range.
//! MONOCHROME1 is inverted so that it displays like MONOCHROME2. Colour images are
//! rendered as RGB without windowing.
//!
//! Query parameters: `window`, `viewport=width,height` (fit inside, aspect kept; at most
//! [`MAX_VIEWPORT`]), `quality` (JPEG, 1..=100). Thumbnails fit in
//! [`THUMBNAIL_SIZE`] pixels unless a viewport is given.

use std::io::Cursor;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use image::{DynamicImage, GrayImage, ImageFormat};

use super::qido::parse_pairs;
use super::wado::{load, locate};
use super::{media, truncate};
use crate::api::{ApiError, AppState};
use crate::pipeline::decode::decode_frame;
use crate::store::Scope;

/// Largest side of a thumbnail (when no viewport is asked for).
pub const THUMBNAIL_SIZE: u32 = 128;
/// Largest viewport side accepted.
pub const MAX_VIEWPORT: u32 = 8192;
/// JPEG quality when none is asked for.
pub const DEFAULT_QUALITY: u8 = 90;

/// The VOI LUT functions of PS3.3 C.11.2.1.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl VoiFunction {
    pub fn parse(s: &str) -> Option<VoiFunction> {
        match s.trim().to_ascii_uppercase().as_str() {
            "LINEAR" => Some(VoiFunction::Linear),
            "LINEAR_EXACT" => Some(VoiFunction::LinearExact),
            "SIGMOID" => Some(VoiFunction::Sigmoid),
            _ => None,
        }
    }
}

/// A window: centre, width and function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
    pub function: VoiFunction,
}

impl Window {
    /// Parses `centre,width[,function]`.
    pub fn parse(s: &str) -> Result<Window, String> {
        let parts: Vec<&str> = s.split(',').collect();
        let number = |p: &str| p.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let (center, width) = match parts.as_slice() {
            [c, w] | [c, w, _] => (number(c), number(w)),
            _ => (None, None),
        };
        let (Some(center), Some(width)) = (center, width) else {
            return Err("window must be centre,width[,function] with numbers".into());
        };
        let function = match parts.get(2) {
            None => VoiFunction::Linear,
            Some(f) => VoiFunction::parse(f)
                .ok_or("window function must be LINEAR, LINEAR_EXACT or SIGMOID")?,
        };
        let window = Window {
            center,
            width,
            function,
        };
        window.check()?;
        Ok(window)
    }

    fn check(&self) -> Result<(), String> {
        let min = if self.function == VoiFunction::Linear {
            1.0
        } else {
            0.0
        };
        if self.width < min || (self.width == 0.0) {
            return Err(format!("window width must be at least {min} and not 0"));
        }
        Ok(())
    }

    /// Maps a (rescaled) value to 0..=255 (PS3.3 C.11.2.1.2).
    pub fn apply(&self, x: f64) -> u8 {
        let y = match self.function {
            VoiFunction::Linear => {
                let (c, w) = (self.center - 0.5, self.width - 1.0);
                if x <= c - w / 2.0 {
                    0.0
                } else if x > c + w / 2.0 || w <= 0.0 {
                    1.0
                } else {
                    (x - c) / w + 0.5
                }
            }
            VoiFunction::LinearExact => {
                let (c, w) = (self.center, self.width);
                if x <= c - w / 2.0 {
                    0.0
                } else if x > c + w / 2.0 {
                    1.0
                } else {
                    (x - c) / w + 0.5
                }
            }
            VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - self.center) / self.width).exp()),
        };
        (y.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// The rendering options of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub window: Option<Window>,
    pub viewport: Option<(u32, u32)>,
    pub quality: u8,
}

/// Parses the query parameters of a rendered request (unknown ones are ignored, as
/// PS3.18 allows for parameters a server does not support).
pub fn parse_options(query: Option<&str>) -> Result<RenderOptions, ApiError> {
    let mut options = RenderOptions {
        window: None,
        viewport: None,
        quality: DEFAULT_QUALITY,
    };
    for (name, value) in parse_pairs(query.unwrap_or(""))? {
        match name.as_str() {
            "window" => {
                options.window = Some(Window::parse(&value).map_err(ApiError::bad_request)?)
            }
            "viewport" => {
                let dims: Vec<Option<u32>> = value
                    .split(',')
                    .map(|v| v.trim().parse::<u32>().ok())
                    .collect();
                match dims.as_slice() {
                    [Some(w), Some(h)]
                        if (1..=MAX_VIEWPORT).contains(w) && (1..=MAX_VIEWPORT).contains(h) =>
                    {
                        options.viewport = Some((*w, *h));
                    }
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "viewport must be width,height from 1 to {MAX_VIEWPORT}, not {:?}",
                            truncate(&value, 40)
                        )));
                    }
                }
            }
            "quality" => match value.parse::<u8>() {
                Ok(q @ 1..=100) => options.quality = q,
                _ => return Err(ApiError::bad_request("quality must be from 1 to 100")),
            },
            _ => {}
        }
    }
    Ok(options)
}

/// The output format from the Accept header: JPEG unless PNG is preferred.
pub fn choose_format(headers: &HeaderMap) -> Result<ImageFormat, ApiError> {
    for range in media::accept(headers) {
        if range.essence == "image/png" {
            return Ok(ImageFormat::Png);
        }
        if range.covers("image/jpeg") {
            return Ok(ImageFormat::Jpeg);
        }
    }
    Err(ApiError::not_acceptable(
        "rendered images are available as image/jpeg or image/png",
    ))
}

fn first_float(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
        .and_then(|v| v.first().copied())
        .filter(|v| v.is_finite())
}

/// The instance's own window, when it has a usable one.
fn dataset_window(obj: &DefaultDicomObject) -> Option<Window> {
    let center = first_float(obj, tags::WINDOW_CENTER)?;
    let width = first_float(obj, tags::WINDOW_WIDTH)?;
    let function = obj
        .element_opt(tags::VOILUT_FUNCTION)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .and_then(|s| VoiFunction::parse(&s))
        .unwrap_or(VoiFunction::Linear);
    let window = Window {
        center,
        width,
        function,
    };
    window.check().ok().map(|()| window)
}

/// Decodes frame `frame` (0-based) and renders it to an 8-bit image.
pub fn render_frame(
    obj: &DefaultDicomObject,
    frame: u32,
    window: Option<Window>,
) -> Result<DynamicImage, ApiError> {
    let decoded = decode_frame(obj, frame).map_err(|e| {
        ApiError::not_acceptable(format!("cannot decode this instance's pixel data: {e}"))
    })?;
    let (cols, rows) = (decoded.columns(), decoded.rows());
    if decoded.samples_per_pixel() != 1 {
        let image = decoded.to_dynamic_image(0).map_err(|e| {
            ApiError::not_acceptable(format!("cannot render colour pixel data: {e}"))
        })?;
        return Ok(DynamicImage::ImageRgb8(image.to_rgb8()));
    }
    let values: Vec<f64> = decoded
        .to_vec_frame::<f64>(0)
        .map_err(|e| ApiError::not_acceptable(format!("cannot convert pixel data: {e}")))?;
    let window = window.or_else(|| dataset_window(obj)).unwrap_or_else(|| {
        // No window anywhere: the frame's own range.
        let (lo, hi) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        Window {
            center: (lo + hi) / 2.0,
            width: (hi - lo).max(1.0),
            function: VoiFunction::LinearExact,
        }
    });
    let invert = decoded.photometric_interpretation().as_str() == "MONOCHROME1";
    let pixels: Vec<u8> = values
        .iter()
        .map(|&v| {
            let g = window.apply(v);
            if invert { 255 - g } else { g }
        })
        .collect();
    let image = GrayImage::from_raw(cols, rows, pixels).ok_or_else(|| {
        ApiError::internal(
            "decoded pixel data has the wrong size",
            format!("{cols}x{rows}"),
        )
    })?;
    Ok(DynamicImage::ImageLuma8(image))
}

/// Scales to fit inside `(w, h)`, keeping the aspect ratio (never upscales).
pub fn fit(image: DynamicImage, (w, h): (u32, u32)) -> DynamicImage {
    if image.width() <= w && image.height() <= h {
        return image;
    }
    image.resize(w, h, image::imageops::FilterType::Triangle)
}

/// Encodes as PNG or JPEG.
pub fn encode(image: &DynamicImage, format: ImageFormat, quality: u8) -> Result<Vec<u8>, ApiError> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
            image.write_with_encoder(encoder)
        }
        _ => image.write_to(&mut out, ImageFormat::Png),
    }
    .map_err(|e| ApiError::internal("cannot encode the image", e))?;
    Ok(out.into_inner())
}

async fn render(
    state: AppState,
    headers: HeaderMap,
    scope: Scope,
    frame: Option<String>,
    query: Option<String>,
    thumbnail: bool,
) -> Result<Response, ApiError> {
    let format = choose_format(&headers)?;
    let options = parse_options(query.as_deref())?;
    let frame = match frame {
        None => 0,
        Some(list) => {
            let numbers = super::wado::parse_frame_list(&list)?;
            match numbers.as_slice() {
                [n] => n - 1,
                _ => {
                    return Err(ApiError::bad_request(
                        "a rendered frame request names one frame",
                    ));
                }
            }
        }
    };
    let found = locate(&state, scope).await?;
    let obj = load(&state, &found[0]).await?;
    let body = tokio::task::spawn_blocking(move || {
        let frames = obj
            .element_opt(tags::NUMBER_OF_FRAMES)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        if frame >= frames {
            return Err(ApiError::not_found(format!(
                "frame {} does not exist: the instance has {frames}",
                frame + 1
            )));
        }
        if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
            return Err(ApiError::not_acceptable(
                "this instance has no pixel data to render",
            ));
        }
        let mut image = render_frame(&obj, frame, options.window)?;
        let target = options
            .viewport
            .or(thumbnail.then_some((THUMBNAIL_SIZE, THUMBNAIL_SIZE)));
        if let Some(target) = target {
            image = fit(image, target);
        }
        encode(&image, format, options.quality)
    })
    .await
    .map_err(|e| ApiError::internal("render task failed", e))??;
    let content_type = if format == ImageFormat::Png {
        "image/png"
    } else {
        "image/jpeg"
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn scope(study: String, series: String, instance: String) -> Scope {
    Scope::Instance {
        study,
        series,
        instance,
    }
}

/// An instance rendered (its first frame).
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID"),
           ("window" = Option<String>, Query, description = "centre,width[,LINEAR|LINEAR_EXACT|SIGMOID]"),
           ("viewport" = Option<String>, Query, description = "width,height to fit in"),
           ("quality" = Option<u8>, Query, description = "JPEG quality 1..=100")),
    responses(
        (status = 200, description = "The image", content_type = "image/jpeg"),
        (status = 404, description = "No such instance"),
        (status = 406, description = "Not image/jpeg or image/png, or pixel data that cannot be decoded")))]
pub async fn rendered(
    State(state): State<AppState>,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    render(
        state,
        headers,
        scope(study, series, instance),
        None,
        q,
        false,
    )
    .await
}

/// An instance's thumbnail.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/thumbnail", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID")),
    responses(
        (status = 200, description = "A small image", content_type = "image/jpeg"),
        (status = 404, description = "No such instance"),
        (status = 406, description = "Not image/jpeg or image/png")))]
pub async fn thumbnail(
    State(state): State<AppState>,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    render(
        state,
        headers,
        scope(study, series, instance),
        None,
        q,
        true,
    )
    .await
}

/// One frame rendered.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID"),
           ("frames" = String, Path, description = "One frame number, from 1")),
    responses(
        (status = 200, description = "The image", content_type = "image/jpeg"),
        (status = 404, description = "No such instance or frame"),
        (status = 406, description = "Not image/jpeg or image/png")))]
pub async fn frame_rendered(
    State(state): State<AppState>,
    Path((study, series, instance, frames)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    render(
        state,
        headers,
        scope(study, series, instance),
        Some(frames),
        q,
        false,
    )
    .await
}

/// One frame's thumbnail.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID"),
           ("frames" = String, Path, description = "One frame number, from 1")),
    responses(
        (status = 200, description = "A small image", content_type = "image/jpeg"),
        (status = 404, description = "No such instance or frame"),
        (status = 406, description = "Not image/jpeg or image/png")))]
pub async fn frame_thumbnail(
    State(state): State<AppState>,
    Path((study, series, instance, frames)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    render(
        state,
        headers,
        scope(study, series, instance),
        Some(frames),
        q,
        true,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn windows_parse_and_apply() {
        let w = Window::parse("40,400").unwrap();
        assert_eq!(w.function, VoiFunction::Linear);
        assert_eq!(w.apply(-1000.0), 0);
        assert_eq!(w.apply(1000.0), 255);
        assert!((127..=128).contains(&w.apply(40.0)));
        let exact = Window::parse("0,100,linear_exact").unwrap();
        assert_eq!(exact.apply(-50.0), 0);
        assert_eq!(exact.apply(0.0), 128);
        let sig = Window::parse("0,100,SIGMOID").unwrap();
        assert_eq!(sig.apply(0.0), 128);
        assert!(sig.apply(100.0) > 240);
        for bad in [
            "40",
            "a,b",
            "40,0",
            "40,0.5,LINEAR",
            "40,400,CUBIC",
            "1,2,3,4",
            "NaN,1",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_and_formats() {
        let o = parse_options(Some(
            "window=40,400,SIGMOID&viewport=64,32&quality=50&annotation=x",
        ))
        .unwrap();
        assert_eq!(o.viewport, Some((64, 32)));
        assert_eq!(o.quality, 50);
        assert_eq!(o.window.unwrap().function, VoiFunction::Sigmoid);
        for bad in [
            "viewport=0,10",
            "viewport=10",
            "quality=0",
            "quality=101",
            "window=1",
        ] {
            assert_eq!(
                parse_options(Some(bad)).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let mut h = HeaderMap::new();
        assert_eq!(choose_format(&h).unwrap(), ImageFormat::Jpeg);
        h.insert("accept", HeaderValue::from_static("image/png"));
        assert_eq!(choose_format(&h).unwrap(), ImageFormat::Png);
        h.insert("accept", HeaderValue::from_static("image/gif"));
        assert_eq!(
            choose_format(&h).unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
    }

    #[test]
    fn renders_a_ct_slice_with_its_voi_and_a_radiograph_inverted() {
        let read = |p: &str| {
            let bytes = std::fs::read(format!(
                "{}/../dicom-samples/studies/studies/{p}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            super::super::wado::parse_part10(&bytes, false).unwrap()
        };
        let ct = read("0001_CT/CT0001.dcm");
        let image = render_frame(&ct, 0, None).unwrap();
        assert_eq!((image.width(), image.height()), (512, 512));
        let gray = image.to_luma8();
        // Air outside the body is black in any sensible CT window.
        assert_eq!(gray.get_pixel(0, 0).0[0], 0);
        let png = encode(&fit(image, (128, 128)), ImageFormat::Png, 90).unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (128, 128));

        // A window that puts everything above its top renders white (black when inverted).
        let cr = read("0004_CR/CR0001.dcm");
        let mono1 = cr
            .element(tags::PHOTOMETRIC_INTERPRETATION)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            == "MONOCHROME1";
        let all_high = Window {
            center: -1e6,
            width: 2.0,
            function: VoiFunction::Linear,
        };
        let rendered = render_frame(&cr, 0, Some(all_high)).unwrap().to_luma8();
        let expected = if mono1 { 0 } else { 255 };
        assert!(rendered.pixels().all(|p| p.0[0] == expected));
    }
}
