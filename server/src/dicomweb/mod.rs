//! DICOMweb (PS3.18) under `/dicomweb`: STOW-RS, QIDO-RS and WADO-RS over the [`Archive`].
//!
//! Handlers are thin: they parse the request (media types, query parameters, multipart
//! bodies), call the store, and shape the answer. Modules:
//!
//! - [`media`]: `Content-Type` / `Accept` parsing and content negotiation;
//! - [`multipart`]: writing `multipart/related` responses (reading uses `multer`);
//! - [`json`]: the DICOM JSON model — query results and datasets, with `BulkDataURI`
//!   in place of pixel data and other large binary values;
//! - [`stow`]: `POST /studies[/{study}]`;
//! - [`qido`]: `GET /studies`, `/series`, `/instances` at every level;
//! - [`wado`]: study / series / instance retrieval, `metadata`, `bulkdata`, `frames`;
//! - [`render`]: `rendered` and `thumbnail` (PNG, JPEG), windowed by the VOI.
//!
//! Every error is answered as JSON `{"error": "..."}` with its status (see
//! [`crate::api::ApiError`]). Authentication wraps [`routes`] in [`crate::api`].
//!
//! [`Archive`]: crate::store::Archive

pub mod json;
pub mod media;
pub mod multipart;
pub mod qido;
pub mod render;
pub mod stow;
pub mod wado;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;

use crate::api::AppState;

/// The DICOMweb routes, relative to `/dicomweb` (the caller nests them there).
pub fn routes() -> Router<AppState> {
    const INSTANCE: &str = "/studies/{study}/series/{series}/instances/{instance}";
    Router::new()
        .route("/studies", get(qido::studies).post(stow::store))
        .route(
            "/studies/{study}",
            get(wado::study).post(stow::store_in_study),
        )
        .route("/studies/{study}/metadata", get(wado::study_metadata))
        .route("/studies/{study}/series", get(qido::study_series))
        .route("/studies/{study}/instances", get(qido::study_instances))
        .route("/studies/{study}/series/{series}", get(wado::series))
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(wado::series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::series_instances),
        )
        .route(INSTANCE, get(wado::instance))
        .route(
            &format!("{INSTANCE}/metadata"),
            get(wado::instance_metadata),
        )
        .route(&format!("{INSTANCE}/bulkdata/{{tag}}"), get(wado::bulkdata))
        .route(&format!("{INSTANCE}/frames/{{frames}}"), get(wado::frames))
        .route(&format!("{INSTANCE}/rendered"), get(render::rendered))
        .route(&format!("{INSTANCE}/thumbnail"), get(render::thumbnail))
        .route(
            &format!("{INSTANCE}/frames/{{frames}}/rendered"),
            get(render::frame_rendered),
        )
        .route(
            &format!("{INSTANCE}/frames/{{frames}}/thumbnail"),
            get(render::frame_thumbnail),
        )
        .route("/series", get(qido::all_series))
        .route("/instances", get(qido::all_instances))
}

/// The OpenAPI description of the DICOMweb routes (assembled into `/api/v1/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        stow::store,
        stow::store_in_study,
        qido::studies,
        qido::study_series,
        qido::study_instances,
        qido::series_instances,
        qido::all_series,
        qido::all_instances,
        wado::study,
        wado::series,
        wado::instance,
        wado::study_metadata,
        wado::series_metadata,
        wado::instance_metadata,
        wado::bulkdata,
        wado::frames,
        render::rendered,
        render::thumbnail,
        render::frame_rendered,
        render::frame_thumbnail,
    ),
    tags((name = "dicomweb", description = "DICOMweb (PS3.18): STOW-RS, QIDO-RS, WADO-RS"))
)]
pub struct DicomwebApi;

/// The base URL of the DICOMweb service as the client addressed it, for RetrieveURL and
/// BulkDataURI values (`http://<Host>/dicomweb`). A missing or odd Host header falls back
/// to a relative URL, which clients resolve against the request.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    match host {
        Some(host) => format!("{proto}://{host}/dicomweb"),
        None => "/dicomweb".to_owned(),
    }
}

/// A UID from a path segment: 1 to 64 characters of digits and dots (PS3.5 UI).
pub fn check_uid(uid: &str) -> Result<(), crate::api::ApiError> {
    if !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        Ok(())
    } else {
        Err(crate::api::ApiError::bad_request(format!(
            "invalid UID {:?}: expected up to 64 digits and dots",
            truncate(uid, 80)
        )))
    }
}

/// At most `max` characters of `s`, for echoing user input into error messages.
pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn base_url_uses_the_host_header_and_rejects_odd_ones() {
        let mut headers = HeaderMap::new();
        assert_eq!(base_url(&headers), "/dicomweb");
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(base_url(&headers), "http://127.0.0.1:8080/dicomweb");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(&headers), "https://127.0.0.1:8080/dicomweb");
        headers.insert("host", HeaderValue::from_static("evil.com/x?"));
        assert_eq!(base_url(&headers), "/dicomweb");
    }

    #[test]
    fn uids_are_checked() {
        assert!(check_uid("1.2.840.10008.1.2").is_ok());
        assert!(check_uid("").is_err());
        assert!(check_uid("1.2.x").is_err());
        assert!(check_uid(&"1".repeat(65)).is_err());
    }

    #[test]
    fn the_openapi_document_lists_the_routes() {
        use utoipa::OpenApi;
        let doc = DicomwebApi::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        assert!(paths.iter().any(|p| *p == "/dicomweb/studies"), "{paths:?}");
        assert!(
            paths
                .iter()
                .any(|p| p.ends_with("/instances/{instance}/rendered")),
            "{paths:?}"
        );
        assert_eq!(paths.len(), 18, "{paths:?}");
    }
}
