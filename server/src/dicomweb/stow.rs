//! STOW-RS (PS3.18 §10.5): `POST /studies` and `POST /studies/{study}` with a
//! `multipart/related; type="application/dicom"` body, one Part 10 file per part.
//!
//! Each part is streamed into an [`Upload`](crate::store::Upload) (the body is never held
//! whole in memory; only the first [`PREFIX_MAX`] bytes of a part are kept, to read its
//! UIDs before it is stored) and then [`Archive::put`](crate::store::Archive::put), so an
//! instance is listed as stored only once it is durable. Up to [`PUTS_IN_FLIGHT`] puts run
//! while the next parts are received. Every part gets its own outcome:
//!
//! | outcome | where | reason |
//! |---|---|---|
//! | stored, identical duplicate, replaced | ReferencedSOPSequence | — |
//! | same UID, different bytes, first copy kept | ReferencedSOPSequence | WarningReason 0xB000 |
//! | not DICOM / invalid / part not `application/dicom` | FailedSOPSequence | 0xC000 |
//! | StudyInstanceUID differs from the path's | FailedSOPSequence | 0xA900 |
//! | duplicate refused by policy | FailedSOPSequence | 0x0111 |
//! | archive failure (disk, index) | FailedSOPSequence | 0xA700 |
//!
//! Status: 200 when every part was stored without warning, 202 when some failed or
//! carry a warning, 409 when none was stored. 415 for another content type, 413 for a
//! body over `http.max_body_mb` or more than [`MAX_PARTS`] parts, 400 for a malformed
//! body, 406 when the answer cannot be DICOM JSON.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_object::file::ReadPreamble;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::json::{StowItem, stow_response};
use super::{base_url, check_uid, media};
use crate::api::{ApiError, AppState};
use crate::metrics;
use crate::store::{PutError, PutOutcome, Source, StoredInstance};

/// Most parts accepted in one request.
pub const MAX_PARTS: usize = 10_000;

/// Parts of one request being stored at once while the next ones are received (their
/// index inserts share commits, their fsyncs overlap the upload of the next parts).
const PUTS_IN_FLIGHT: usize = 4;

/// Bytes of each part kept in memory to read its UIDs (the header before PixelData).
pub const PREFIX_MAX: usize = 4 << 20;

pub const FAILURE_OUT_OF_RESOURCES: u16 = 0xA700;
pub const FAILURE_DATASET_MISMATCH: u16 = 0xA900;
pub const FAILURE_CANNOT_UNDERSTAND: u16 = 0xC000;
pub const FAILURE_DUPLICATE: u16 = 0x0111;
pub const WARNING_DUPLICATE_KEPT_FIRST: u16 = 0xB000;

/// The UIDs read from a part before it is stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartIds {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
}

/// Reads the UIDs of a Part 10 file from its first bytes (up to PixelData). None when
/// the bytes are not a readable Part 10 header.
pub fn identify(prefix: &[u8]) -> Option<PartIds> {
    // dicom-object allocates a value's declared length before reading it: refuse a header
    // that declares more than the prefix holds before handing it over.
    crate::store::attributes::check_prefix_lengths(prefix).ok()?;
    let preamble = if prefix.get(128..132) == Some(b"DICM") {
        ReadPreamble::Always
    } else {
        ReadPreamble::Never
    };
    let obj = OpenFileOptions::new()
        .read_preamble(preamble)
        .read_until(tags::PIXEL_DATA)
        .from_reader(prefix)
        .ok()?;
    let text = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
            .filter(|s| !s.is_empty())
    };
    Some(PartIds {
        sop_class_uid: text(tags::SOP_CLASS_UID)
            .or_else(|| Some(obj.meta().media_storage_sop_class_uid().to_owned())),
        sop_instance_uid: text(tags::SOP_INSTANCE_UID)
            .or_else(|| Some(obj.meta().media_storage_sop_instance_uid().to_owned())),
        study_instance_uid: text(tags::STUDY_INSTANCE_UID),
    })
    .map(|mut ids| {
        for uid in [&mut ids.sop_class_uid, &mut ids.sop_instance_uid] {
            *uid = uid
                .take()
                .map(|u| u.trim_end_matches(['\0', ' ']).to_owned())
                .filter(|u| !u.is_empty());
        }
        ids
    })
}

/// The answer's status from the per-part outcomes (PS3.18 Table 10.5.3-1).
pub fn response_status(referenced: &[StowItem], failed: &[StowItem]) -> StatusCode {
    let warnings = referenced.iter().any(|r| r.warning_reason.is_some());
    if referenced.is_empty() {
        StatusCode::CONFLICT
    } else if failed.is_empty() && !warnings {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    }
}

/// Store instances.
#[utoipa::path(post, path = "/dicomweb/studies", tag = "dicomweb",
    request_body(content_type = "multipart/related; type=\"application/dicom\"", description = "Part 10 files, one per part"),
    responses(
        (status = 200, description = "All instances stored", content_type = "application/dicom+json"),
        (status = 202, description = "Some instances failed or carry warnings", content_type = "application/dicom+json"),
        (status = 409, description = "No instance stored", content_type = "application/dicom+json"),
        (status = 413, description = "Body over the configured limit"),
        (status = 415, description = "Not multipart/related; type=\"application/dicom\"")))]
pub async fn store(State(state): State<AppState>, request: Request) -> Response {
    stow(state, None, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Store instances of one study (instances of other studies fail with 0xA900).
#[utoipa::path(post, path = "/dicomweb/studies/{study}", tag = "dicomweb",
    params(("study" = String, Path, description = "Study Instance UID every instance must have")),
    request_body(content_type = "multipart/related; type=\"application/dicom\"", description = "Part 10 files, one per part"),
    responses(
        (status = 200, description = "All instances stored", content_type = "application/dicom+json"),
        (status = 202, description = "Some instances failed or carry warnings", content_type = "application/dicom+json"),
        (status = 409, description = "No instance stored", content_type = "application/dicom+json"),
        (status = 413, description = "Body over the configured limit"),
        (status = 415, description = "Not multipart/related; type=\"application/dicom\"")))]
pub async fn store_in_study(
    State(state): State<AppState>,
    Path(study): Path<String>,
    request: Request,
) -> Response {
    stow(state, Some(study), request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn too_large(limit: u64) -> ApiError {
    metrics::record_rejection("stow", "body_too_large");
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body over the limit of {} MiB (http.max_body_mb); instances stored before the limit was reached stay stored",
            limit >> 20
        ),
    )
}

async fn stow(
    state: AppState,
    study: Option<String>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(study) = &study {
        check_uid(study)?;
    }
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;

    let content_type = media::content_type(headers);
    let boundary = match &content_type {
        Some(ct)
            if ct.essence == "multipart/related"
                && ct
                    .param("type")
                    .is_none_or(|t| t.eq_ignore_ascii_case("application/dicom")) =>
        {
            ct.param("boundary").map(str::to_owned).ok_or_else(|| {
                ApiError::bad_request("multipart/related without a boundary parameter")
            })?
        }
        _ => {
            metrics::record_rejection("stow", "unsupported_media_type");
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "STOW-RS takes multipart/related; type=\"application/dicom\"",
            ));
        }
    };
    if !media::accepts_dicom_json(&media::accept(headers)) {
        return Err(ApiError::not_acceptable(
            "the STOW-RS response is available as application/dicom+json only",
        ));
    }
    let limit = state.max_body_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }

    let user = parts
        .extensions
        .get::<crate::auth::Principal>()
        .map_or_else(|| "anonymous".to_owned(), |p| p.user.clone());
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let source = Source::Stow { user, peer };

    // Count bytes as they arrive: a chunked body has no Content-Length to check.
    let received = Arc::new(AtomicU64::new(0));
    let exceeded = Arc::new(AtomicBool::new(false));
    let stream = {
        let (received, exceeded) = (received.clone(), exceeded.clone());
        body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            let total =
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            if total > limit {
                exceeded.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("request body over the limit"));
            }
            Ok::<Bytes, std::io::Error>(chunk)
        })
    };
    let mut multipart = multer::Multipart::new(stream, boundary);

    let base = base_url(headers);
    let mut referenced: Vec<StowItem> = Vec::new();
    let mut failed: Vec<StowItem> = Vec::new();
    let body_error = |e: multer::Error| {
        if exceeded.load(Ordering::Relaxed) {
            too_large(limit)
        } else {
            ApiError::bad_request(format!("malformed multipart body: {e}"))
        }
    };
    let mut count = 0usize;
    let mut in_flight = std::collections::VecDeque::new();
    while let Some(mut field) = multipart.next_field().await.map_err(body_error)? {
        count += 1;
        if count > MAX_PARTS {
            metrics::record_rejection("stow", "too_many_parts");
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {MAX_PARTS} parts in one request"),
            ));
        }
        let part_type = field
            .content_type()
            .map(|m| m.essence_str().to_ascii_lowercase());
        if part_type
            .as_deref()
            .is_some_and(|t| t != "application/dicom")
        {
            debug!(part = count, "STOW part is not application/dicom");
            failed.push(failure(PartIds::default(), FAILURE_CANNOT_UNDERSTAND));
            continue;
        }

        let mut upload = match state.archive.begin_file_upload().await {
            Ok(upload) => Some(upload),
            Err(e) => {
                warn!(error = %e, "cannot begin a STOW upload");
                None
            }
        };
        let mut prefix: Vec<u8> = Vec::new();
        let mut write_failed = upload.is_none();
        let mut part_len = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(body_error)? {
            part_len += chunk.len() as u64;
            if prefix.len() < PREFIX_MAX {
                let take = (PREFIX_MAX - prefix.len()).min(chunk.len());
                prefix.extend_from_slice(&chunk[..take]);
            }
            if let Some(up) = upload.as_mut()
                && let Err(e) = up.write(&chunk).await
            {
                warn!(error = %e, "cannot write a STOW upload");
                write_failed = true;
                upload = None;
            }
        }
        let ids = identify(&prefix);
        let known = ids.clone().unwrap_or_default();
        if write_failed {
            failed.push(failure(known, FAILURE_OUT_OF_RESOURCES));
            continue;
        }
        let Some(upload) = upload else { continue };
        if let Some(study) = &study {
            match &ids {
                Some(PartIds {
                    study_instance_uid: Some(uid),
                    ..
                }) if uid == study => {}
                Some(_) => {
                    // Not stored: the Upload is dropped, which discards its temporary file.
                    metrics::record_rejection("stow", "study_mismatch");
                    failed.push(failure(known, FAILURE_DATASET_MISMATCH));
                    continue;
                }
                None => {
                    metrics::record_rejection("stow", "invalid_instance");
                    failed.push(failure(known, FAILURE_CANNOT_UNDERSTAND));
                    continue;
                }
            }
        }
        // The put runs while the next parts arrive; the oldest is awaited once
        // `PUTS_IN_FLIGHT` are running, so outcomes are kept in part order.
        if in_flight.len() >= PUTS_IN_FLIGHT
            && let Some(oldest) = in_flight.pop_front()
        {
            collect(oldest.await, &base, &mut referenced, &mut failed);
        }
        let (archive, source) = (state.archive.clone(), source.clone());
        in_flight.push_back(tokio::spawn(async move {
            let started = Instant::now();
            let outcome = archive.put(upload, &source).await;
            PartOutcome {
                outcome,
                ids: known,
                part_len,
                started,
            }
        }));
    }
    for put in in_flight {
        collect(put.await, &base, &mut referenced, &mut failed);
    }
    if count == 0 {
        return Err(ApiError::bad_request("the multipart body has no parts"));
    }
    let status = response_status(&referenced, &failed);
    info!(
        stored = referenced.len(),
        failed = failed.len(),
        bytes = received.load(Ordering::Relaxed),
        status = status.as_u16(),
        "STOW-RS request done"
    );
    let study_url = study.as_ref().map(|s| format!("{base}/studies/{s}"));
    let body = stow_response(study_url.as_deref(), &referenced, &failed);
    Ok((
        status,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        body.to_string(),
    )
        .into_response())
}

/// A part's put, as its task returns it.
struct PartOutcome {
    outcome: Result<PutOutcome, PutError>,
    ids: PartIds,
    part_len: u64,
    started: Instant,
}

/// Records a part's put in the response lists and the metrics.
fn collect(
    joined: Result<PartOutcome, tokio::task::JoinError>,
    base: &str,
    referenced: &mut Vec<StowItem>,
    failed: &mut Vec<StowItem>,
) {
    let PartOutcome {
        outcome,
        ids,
        part_len,
        started,
    } = match joined {
        Ok(part) => part,
        Err(e) => {
            // The put's task panicked or was cancelled: nothing is known of the part.
            warn!(error = %e, "STOW put task failed");
            failed.push(failure(PartIds::default(), FAILURE_OUT_OF_RESOURCES));
            return;
        }
    };
    let (label, item) = match outcome {
        Ok(outcome) => {
            let (label, stored, warning) = match outcome {
                PutOutcome::Stored(s) => ("stored", s, None),
                PutOutcome::Duplicate(s) => ("duplicate", s, None),
                PutOutcome::Replaced(s) => ("replaced", s, None),
                PutOutcome::ConflictKeptFirst(s) => {
                    ("conflict_kept_first", s, Some(WARNING_DUPLICATE_KEPT_FIRST))
                }
            };
            metrics::record_instance_received(
                metrics::Route::Stow,
                &stored.transfer_syntax_uid,
                part_len,
            );
            referenced.push(reference(base, &stored, warning));
            (label, None)
        }
        Err(PutError::Invalid(reason)) => {
            debug!(%reason, "STOW part refused");
            metrics::record_rejection("stow", "invalid_instance");
            ("invalid", Some(failure(ids, FAILURE_CANNOT_UNDERSTAND)))
        }
        Err(PutError::DuplicateRejected(_)) => {
            metrics::record_rejection("stow", "duplicate_rejected");
            ("duplicate_rejected", Some(failure(ids, FAILURE_DUPLICATE)))
        }
        Err(PutError::Store(e)) => {
            warn!(error = %e, "archive failure during STOW");
            ("error", Some(failure(ids, FAILURE_OUT_OF_RESOURCES)))
        }
    };
    metrics::record_store_latency(started.elapsed(), label);
    failed.extend(item);
}

fn failure(ids: PartIds, reason: u16) -> StowItem {
    StowItem {
        sop_class_uid: ids.sop_class_uid,
        sop_instance_uid: ids.sop_instance_uid,
        retrieve_url: None,
        failure_reason: Some(reason),
        warning_reason: None,
    }
}

fn reference(base: &str, s: &StoredInstance, warning: Option<u16>) -> StowItem {
    StowItem {
        sop_class_uid: Some(s.sop_class_uid.clone()),
        sop_instance_uid: Some(s.sop_instance_uid.clone()),
        retrieve_url: Some(format!(
            "{base}/studies/{}/series/{}/instances/{}",
            s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid
        )),
        failure_reason: None,
        warning_reason: warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../dicom-samples/studies/studies/0002_DX/DX0001.dcm"
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn identifies_a_part_from_its_first_bytes() {
        let bytes = sample();
        let whole = identify(&bytes).unwrap();
        assert!(
            whole
                .sop_instance_uid
                .as_deref()
                .unwrap()
                .starts_with("2.25.")
        );
        assert!(whole.study_instance_uid.is_some());
        assert_eq!(
            whole.sop_class_uid.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.1.1")
        );
        // The header alone (cut inside the pixel data) is enough.
        let cut = identify(&bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(cut, whole);
        assert_eq!(identify(b"not dicom at all"), None);
        assert_eq!(identify(&bytes[..200]), None);
    }

    fn item(warning: Option<u16>) -> StowItem {
        StowItem {
            sop_class_uid: None,
            sop_instance_uid: None,
            retrieve_url: None,
            failure_reason: None,
            warning_reason: warning,
        }
    }

    #[test]
    fn status_follows_ps3_18() {
        let ok = item(None);
        let warned = item(Some(WARNING_DUPLICATE_KEPT_FIRST));
        let bad = failure(PartIds::default(), FAILURE_CANNOT_UNDERSTAND);
        assert_eq!(
            response_status(std::slice::from_ref(&ok), &[]),
            StatusCode::OK
        );
        assert_eq!(response_status(&[warned], &[]), StatusCode::ACCEPTED);
        assert_eq!(
            response_status(&[ok], std::slice::from_ref(&bad)),
            StatusCode::ACCEPTED
        );
        assert_eq!(response_status(&[], &[bad]), StatusCode::CONFLICT);
    }
}
