//! WADO-RS (PS3.18 §10.4): retrieval of studies, series and instances, their metadata,
//! bulk data and frames.
//!
//! - Instances go out as `multipart/related; type="application/dicom"`, streamed one
//!   stored Part 10 file at a time, in the transfer syntax they were stored in; with
//!   `transfer-syntax=1.2.840.10008.1.2.1` (Explicit VR Little Endian, which PS3.18 requires
//!   an origin server to offer) in that one, pixel data decoded. Another `transfer-syntax`
//!   that an instance is not stored in answers 406.
//! - Metadata is a DICOM JSON array, binary values as `BulkDataURI`s that point at
//!   `.../bulkdata/{tag}` (see [`super::json`]).
//! - Bulk data and frames go out as `multipart/related; type="application/octet-stream"`.
//!   Frames are always uncompressed, Explicit VR Little Endian layout (the default
//!   PS3.18 gives for octet-stream frames): native pixel data is sliced, greyscale pixel
//!   data in any other transfer syntax decoded; colour compressed frames answer 406.
//!
//! Nothing stored under the path: 404 with `{"error": ...}`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use serde_json::Value;

use super::json::{dataset_to_json, parse_tag_key, redecode_part10_text, tag_key};
use super::multipart::MultipartWriter;
use super::{base_url, check_uid, media, truncate};
use crate::api::{ApiError, AppState};
use crate::pipeline::decode::{decode_frame, to_explicit_little_endian};
use crate::store::{Scope, StoredInstance};
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

/// Most frame numbers in one `/frames/{list}` request.
pub const MAX_FRAMES_PER_REQUEST: usize = 1000;

/// Transfer syntaxes whose pixel data is native little endian once parsed.
pub const NATIVE_LE: &[&str] = &[
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
];

fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::Study { study } => format!("study {study}"),
        Scope::Series { study, series } => format!("series {series} of study {study}"),
        Scope::Instance {
            study,
            series,
            instance,
        } => format!("instance {instance} of series {series} of study {study}"),
    }
}

/// The instances under `scope`, 404 when none.
pub async fn locate(state: &AppState, scope: Scope) -> Result<Vec<StoredInstance>, ApiError> {
    match &scope {
        Scope::Study { study } => check_uid(study)?,
        Scope::Series { study, series } => {
            check_uid(study)?;
            check_uid(series)?;
        }
        Scope::Instance {
            study,
            series,
            instance,
        } => {
            check_uid(study)?;
            check_uid(series)?;
            check_uid(instance)?;
        }
    }
    let found = state
        .archive
        .locate(&scope)
        .await
        .map_err(|e| ApiError::internal("cannot locate instances", e))?;
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "no {} is stored",
            scope_name(&scope)
        )));
    }
    Ok(found)
}

/// The URL of one instance under the service base.
pub fn instance_url(base: &str, s: &StoredInstance) -> String {
    format!(
        "{base}/studies/{}/series/{}/instances/{}",
        s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid
    )
}

/// Parses a stored Part 10 file (preamble detected from the bytes).
pub fn parse_part10(bytes: &[u8], until_pixel_data: bool) -> Result<DefaultDicomObject, String> {
    let preamble = if bytes.get(128..132) == Some(b"DICM") {
        ReadPreamble::Always
    } else {
        ReadPreamble::Never
    };
    let mut options = OpenFileOptions::new().read_preamble(preamble);
    if until_pixel_data {
        options = options.read_until(tags::PIXEL_DATA);
    }
    options.from_reader(bytes).map_err(|e| e.to_string())
}

/// A stored Part 10 file re-encoded in Explicit VR Little Endian, pixel data decoded.
fn transcoded(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let object = to_explicit_little_endian(parse_part10(bytes, false)?)?;
    let mut out = Vec::with_capacity(bytes.len());
    object.write_all(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads and parses one stored instance off the async threads.
pub async fn load(
    state: &AppState,
    instance: &StoredInstance,
) -> Result<DefaultDicomObject, ApiError> {
    let bytes = state
        .archive
        .read_blob(instance)
        .await
        .map_err(|e| ApiError::internal("cannot read a stored instance", e))?;
    tokio::task::spawn_blocking(move || parse_part10(&bytes, false))
        .await
        .map_err(|e| ApiError::internal("parsing task failed", e))?
        .map_err(|e| ApiError::internal("a stored instance does not parse", e))
}

async fn retrieve(state: AppState, headers: HeaderMap, scope: Scope) -> Result<Response, ApiError> {
    let wanted_ts = media::negotiate_multipart(&media::accept(&headers), "application/dicom")
        .map_err(|media::NotAcceptable| {
            ApiError::not_acceptable(
                "instances are available as multipart/related; type=\"application/dicom\" only",
            )
        })?;
    let instances = locate(&state, scope).await?;
    // Explicit VR Little Endian is always available (decoded when stored otherwise); any
    // other transfer syntax only as stored.
    let transcode = wanted_ts.as_deref() == Some(EXPLICIT_VR_LITTLE_ENDIAN.uid());
    if let Some(ts) = &wanted_ts
        && !transcode
        && let Some(other) = instances.iter().find(|i| i.transfer_syntax_uid != *ts)
    {
        return Err(ApiError::not_acceptable(format!(
            "instance {} is stored as {}; it is served only as stored (transfer-syntax=*) or decoded as Explicit VR Little Endian (transfer-syntax=1.2.840.10008.1.2.1), not as {}",
            other.sop_instance_uid,
            other.transfer_syntax_uid,
            truncate(ts, 64)
        )));
    }
    let writer = MultipartWriter::new("application/dicom");
    let content_type = writer.content_type();
    let archive = state.archive.clone();
    // One instance in memory at a time: read, send, next.
    let stream = futures_util::stream::unfold(
        (instances.into_iter(), Some(writer)),
        move |(mut rest, writer)| {
            let archive = archive.clone();
            async move {
                let writer = writer?;
                match rest.next() {
                    Some(instance) => {
                        let stored = archive
                            .read_blob(&instance)
                            .await
                            .map_err(|e| e.to_string());
                        let as_asked = match stored {
                            Ok(bytes)
                                if transcode
                                    && instance.transfer_syntax_uid
                                        != EXPLICIT_VR_LITTLE_ENDIAN.uid() =>
                            {
                                tokio::task::spawn_blocking(move || transcoded(&bytes))
                                    .await
                                    .unwrap_or_else(|e| Err(format!("transcoding task: {e}")))
                            }
                            other => other,
                        };
                        let transfer_syntax = if transcode {
                            EXPLICIT_VR_LITTLE_ENDIAN.uid()
                        } else {
                            instance.transfer_syntax_uid.as_str()
                        };
                        let part = match as_asked {
                            Ok(bytes) => {
                                let head = writer.part_head(
                                    &format!(
                                        "application/dicom; transfer-syntax={transfer_syntax}"
                                    ),
                                    None,
                                );
                                let mut out = Vec::with_capacity(head.len() + bytes.len() + 2);
                                out.extend_from_slice(&head);
                                out.extend_from_slice(&bytes);
                                out.extend_from_slice(&writer.part_tail());
                                Ok(Bytes::from(out))
                            }
                            Err(e) => {
                                // The status is already sent: abort the body so the
                                // client sees a truncated response, not a short one.
                                tracing::error!(error = %e, "cannot read or transcode a stored instance while streaming");
                                Err(std::io::Error::other(
                                    "cannot read or transcode a stored instance",
                                ))
                            }
                        };
                        let next = if part.is_ok() { Some(writer) } else { None };
                        Some((part, (rest, next)))
                    }
                    None => Some((Ok(writer.close()), (rest, None))),
                }
            }
        },
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn metadata(state: AppState, headers: HeaderMap, scope: Scope) -> Result<Response, ApiError> {
    if !media::accepts_dicom_json(&media::accept(&headers)) {
        return Err(ApiError::not_acceptable(
            "metadata is available as application/dicom+json only",
        ));
    }
    let instances = locate(&state, scope).await?;
    let base = base_url(&headers);
    let mut out: Vec<Value> = Vec::with_capacity(instances.len());
    for instance in &instances {
        let bytes = state
            .archive
            .read_blob(instance)
            .await
            .map_err(|e| ApiError::internal("cannot read a stored instance", e))?;
        let url = instance_url(&base, instance);
        let ts = instance.transfer_syntax_uid.clone();
        let json = tokio::task::spawn_blocking(move || {
            let mut obj = parse_part10(&bytes, false)?;
            redecode_part10_text(&mut obj, &bytes);
            let mut json = dataset_to_json(&obj, &url);
            // AvailableTransferSyntaxUID: what a retrieval of this instance returns.
            if let Value::Object(map) = &mut json {
                map.insert(
                    tag_key(Tag(0x0008, 0x3002)),
                    serde_json::json!({ "vr": "UI", "Value": [ts] }),
                );
                map.sort_keys();
            }
            Ok::<Value, String>(json)
        })
        .await
        .map_err(|e| ApiError::internal("metadata task failed", e))?
        .map_err(|e| ApiError::internal("a stored instance does not parse", e))?;
        out.push(json);
    }
    let body =
        serde_json::to_vec(&out).map_err(|e| ApiError::internal("cannot encode metadata", e))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        body,
    )
        .into_response())
}

fn octet_multipart(headers: &HeaderMap) -> Result<MultipartWriter, ApiError> {
    match media::negotiate_multipart(&media::accept(headers), "application/octet-stream") {
        Ok(None) => Ok(MultipartWriter::new("application/octet-stream")),
        Ok(Some(ts)) if ts == "1.2.840.10008.1.2.1" => {
            Ok(MultipartWriter::new("application/octet-stream"))
        }
        _ => Err(ApiError::not_acceptable(
            "bulk data and frames are available as multipart/related; type=\"application/octet-stream\" (Explicit VR Little Endian) only",
        )),
    }
}

/// Parses `1,3,5` (1-based frame numbers).
pub fn parse_frame_list(list: &str) -> Result<Vec<u32>, ApiError> {
    let mut frames = Vec::new();
    for piece in list.split(',') {
        if frames.len() == MAX_FRAMES_PER_REQUEST {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_FRAMES_PER_REQUEST} frames in one request"
            )));
        }
        match piece.trim().parse::<u32>() {
            Ok(n) if n >= 1 => frames.push(n),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid frame number {:?}: frames are numbered from 1",
                    truncate(piece, 20)
                )));
            }
        }
    }
    Ok(frames)
}

fn int_attribute(obj: &DefaultDicomObject, tag: Tag) -> Option<u64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u64>().ok())
}

/// The bytes of each requested frame in the Explicit VR Little Endian layout: sliced from
/// native pixel data, or decoded from any other encoding ([`decoded_frames`]).
pub fn native_frames(obj: &DefaultDicomObject, frames: &[u32]) -> Result<Vec<Vec<u8>>, ApiError> {
    let ts = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    if !NATIVE_LE.contains(&ts) {
        return decoded_frames(obj, frames);
    }
    let int = |tag: Tag| int_attribute(obj, tag);
    let (Some(rows), Some(cols), Some(bits)) = (
        int(tags::ROWS),
        int(tags::COLUMNS),
        int(tags::BITS_ALLOCATED),
    ) else {
        return Err(ApiError::not_found("this instance has no pixel data"));
    };
    let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let count = int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    if bits % 8 != 0 {
        return Err(ApiError::not_acceptable(format!(
            "frames of {bits}-bit pixel data are not served"
        )));
    }
    let frame_len = rows * cols * samples * (bits / 8);
    let pixels = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::not_found("this instance has no pixel data"))?;
    let data = pixels
        .to_bytes()
        .map_err(|e| ApiError::internal("cannot read pixel data", e))?;
    let mut out = Vec::with_capacity(frames.len());
    for &n in frames {
        if u64::from(n) > count {
            return Err(ApiError::not_found(format!(
                "frame {n} does not exist: the instance has {count}"
            )));
        }
        let start = (u64::from(n) - 1) * frame_len;
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(start + frame_len).ok());
        let Some(bytes) = range.and_then(|(a, b)| data.get(a..b)) else {
            return Err(ApiError::internal(
                "pixel data shorter than its attributes say",
                format!("frame {n}"),
            ));
        };
        out.push(bytes.to_vec());
    }
    Ok(out)
}

/// Frames of compressed (or big endian) pixel data, decoded. Greyscale only: a colour JPEG
/// decodes to RGB, which its metadata (YBR_FULL_422, say) would not describe.
fn decoded_frames(obj: &DefaultDicomObject, frames: &[u32]) -> Result<Vec<Vec<u8>>, ApiError> {
    let int = |tag: Tag| int_attribute(obj, tag);
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(ApiError::not_found("this instance has no pixel data"));
    }
    if int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 {
        return Err(ApiError::not_acceptable(
            "frames of compressed colour pixel data are served only as the whole instance (application/dicom)",
        ));
    }
    let bits = int(tags::BITS_ALLOCATED);
    if bits != Some(8) && bits != Some(16) {
        return Err(ApiError::not_acceptable(format!(
            "frames of compressed {}-bit pixel data are not served",
            bits.unwrap_or(0)
        )));
    }
    let count = int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let mut out = Vec::with_capacity(frames.len());
    for &n in frames {
        if u64::from(n) > count {
            return Err(ApiError::not_found(format!(
                "frame {n} does not exist: the instance has {count}"
            )));
        }
        let decoded = decode_frame(obj, n - 1).map_err(|e| {
            ApiError::not_acceptable(format!("cannot decode frame {n} of this instance: {e}"))
        })?;
        let bytes = if bits == Some(16) {
            decoded
                .frame_data_ow(0)
                .map(|words| words.iter().flat_map(|w| w.to_le_bytes()).collect())
        } else {
            decoded.frame_data(0).map(<[u8]>::to_vec)
        }
        .map_err(|e| ApiError::internal("decoded frame has the wrong size", e))?;
        out.push(bytes);
    }
    Ok(out)
}

fn multipart_response(writer: &MultipartWriter, parts: Vec<Vec<u8>>) -> Response {
    let parts = parts
        .into_iter()
        .map(|p| ("application/octet-stream".to_owned(), p))
        .collect();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, writer.content_type())],
        writer.body_of(parts),
    )
        .into_response()
}

fn instance_scope(study: String, series: String, instance: String) -> Scope {
    Scope::Instance {
        study,
        series,
        instance,
    }
}

/// Retrieve a study's instances.
#[utoipa::path(get, path = "/dicomweb/studies/{study}", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID")),
    responses(
        (status = 200, description = "The study's Part 10 files", content_type = "multipart/related; type=\"application/dicom\""),
        (status = 404, description = "Nothing stored"),
        (status = 406, description = "Asked-for media type or transfer syntax not available")))]
pub async fn study(
    State(state): State<AppState>,
    Path(study): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    retrieve(state, headers, Scope::Study { study }).await
}

/// Retrieve a series' instances.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID")),
    responses(
        (status = 200, description = "The series' Part 10 files", content_type = "multipart/related; type=\"application/dicom\""),
        (status = 404, description = "Nothing stored"),
        (status = 406, description = "Asked-for media type or transfer syntax not available")))]
pub async fn series(
    State(state): State<AppState>,
    Path((study, series)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    retrieve(state, headers, Scope::Series { study, series }).await
}

/// Retrieve one instance.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID")),
    responses(
        (status = 200, description = "The Part 10 file", content_type = "multipart/related; type=\"application/dicom\""),
        (status = 404, description = "Nothing stored"),
        (status = 406, description = "Asked-for media type or transfer syntax not available")))]
pub async fn instance(
    State(state): State<AppState>,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    retrieve(state, headers, instance_scope(study, series, instance)).await
}

/// A study's metadata.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/metadata", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID")),
    responses(
        (status = 200, description = "DICOM JSON, one object per instance, BulkDataURI for binary values", content_type = "application/dicom+json"),
        (status = 404, description = "Nothing stored")))]
pub async fn study_metadata(
    State(state): State<AppState>,
    Path(study): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(state, headers, Scope::Study { study }).await
}

/// A series' metadata.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/metadata", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID")),
    responses(
        (status = 200, description = "DICOM JSON, one object per instance", content_type = "application/dicom+json"),
        (status = 404, description = "Nothing stored")))]
pub async fn series_metadata(
    State(state): State<AppState>,
    Path((study, series)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(state, headers, Scope::Series { study, series }).await
}

/// One instance's metadata.
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID")),
    responses(
        (status = 200, description = "DICOM JSON (an array of one object)", content_type = "application/dicom+json"),
        (status = 404, description = "Nothing stored")))]
pub async fn instance_metadata(
    State(state): State<AppState>,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(state, headers, instance_scope(study, series, instance)).await
}

/// One binary value of an instance (a BulkDataURI from its metadata).
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID"),
           ("tag" = String, Path, description = "The attribute's tag, GGGGEEEE")),
    responses(
        (status = 200, description = "The value's bytes (little endian)", content_type = "multipart/related; type=\"application/octet-stream\""),
        (status = 404, description = "No such instance or attribute"),
        (status = 406, description = "Not available in the asked-for form")))]
pub async fn bulkdata(
    State(state): State<AppState>,
    Path((study, series, instance, tag)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tag = parse_tag_key(&tag).ok_or_else(|| {
        ApiError::bad_request("the bulk data tag must be 8 hex digits (GGGGEEEE)")
    })?;
    let writer = octet_multipart(&headers)?;
    let found = locate(&state, instance_scope(study, series, instance)).await?;
    let obj = load(&state, &found[0]).await?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_owned();
    let element = obj
        .element_opt(tag)
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::not_found(format!("the instance has no {}", tag_key(tag))))?;
    if tag == tags::PIXEL_DATA && !NATIVE_LE.contains(&ts.as_str()) {
        return Err(ApiError::not_acceptable(format!(
            "pixel data stored as {ts} is not served as bulk data yet"
        )));
    }
    let bytes = element
        .to_bytes()
        .map_err(|_| ApiError::not_acceptable("this value has no single byte representation"))?;
    Ok(multipart_response(&writer, vec![bytes.into_owned()]))
}

/// Frames of pixel data, uncompressed (compressed greyscale pixel data is decoded).
#[utoipa::path(get, path = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID"),
           ("series" = String, Path, description = "Series Instance UID"),
           ("instance" = String, Path, description = "SOP Instance UID"),
           ("frames" = String, Path, description = "Comma-separated frame numbers, from 1")),
    responses(
        (status = 200, description = "One part per frame", content_type = "multipart/related; type=\"application/octet-stream\""),
        (status = 404, description = "No such instance or frame"),
        (status = 406, description = "Compressed colour or undecodable pixel data, or another media type asked for")))]
pub async fn frames(
    State(state): State<AppState>,
    Path((study, series, instance, frames)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let numbers = parse_frame_list(&frames)?;
    let writer = octet_multipart(&headers)?;
    let found = locate(&state, instance_scope(study, series, instance)).await?;
    let obj = load(&state, &found[0]).await?;
    let parts = tokio::task::spawn_blocking(move || native_frames(&obj, &numbers))
        .await
        .map_err(|e| ApiError::internal("frame task failed", e))??;
    Ok(multipart_response(&writer, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lists() {
        assert_eq!(parse_frame_list("1").unwrap(), vec![1]);
        assert_eq!(parse_frame_list("1,3, 2").unwrap(), vec![1, 3, 2]);
        for bad in ["0", "", "1,,2", "a", "-1", "1.5"] {
            assert_eq!(
                parse_frame_list(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let many = vec!["1"; MAX_FRAMES_PER_REQUEST + 1].join(",");
        assert!(parse_frame_list(&many).is_err());
    }

    #[test]
    fn native_frames_slice_the_pixel_data() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../dicom-samples/studies/studies/0001_CT/CT0001.dcm"
        );
        let bytes = std::fs::read(path).unwrap();
        let obj = parse_part10(&bytes, false).unwrap();
        let frames = native_frames(&obj, &[1]).unwrap();
        let pixels = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        assert_eq!(frames[0].len(), 512 * 512 * 2);
        assert_eq!(&frames[0][..], &pixels[..512 * 512 * 2]);
        assert_eq!(
            native_frames(&obj, &[2]).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
