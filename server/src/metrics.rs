//! Prometheus metrics: what the server records and the `GET /metrics` endpoint.
//!
//! Other modules call the small functions here at the moment something happens; they need
//! not know about Prometheus. Every label takes values from a small closed set (routes,
//! known transfer syntax UIDs, `&'static str` reasons, matched route templates) so that no
//! request can grow the number of series, and no label ever holds patient data.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `radserve_instances_received_total` | counter | `route` (dimse, stow), `transfer_syntax` |
//! | `radserve_received_bytes_total` | counter | `route`, `transfer_syntax` |
//! | `radserve_store_duration_seconds` | histogram | `outcome` |
//! | `radserve_active_associations` | gauge | |
//! | `radserve_rejections_total` | counter | `route` (dimse, stow, http), `reason` |
//! | `radserve_http_request_duration_seconds` | histogram | `method`, `route`, `status` |
//! | `radserve_inference_queue_depth` | gauge | `model` (loaded models only) |
//! | `radserve_inference_batches_total` | counter | `model` (device launches) |
//! | `radserve_inference_batch_size` | histogram | `model` |
//! | `radserve_stage_duration_seconds` | histogram | `model`, `stage` (queue, decode, preprocess, compute, postprocess, store) |
//! | `radserve_jobs` | gauge | `state` |
//! | `radserve_findings` | gauge | `model`, `label` (positive, current results) |
//! | `radserve_emr_deliveries_total` | counter | `destination` (`fhir`, `hl7`), `outcome` (`delivered`, `retry`, `failed`) |
//!
//! The recorder is installed once per process ([`handle`]); in unit tests, where several
//! servers share a process, they share it too.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const INSTANCES_RECEIVED: &str = "radserve_instances_received_total";
pub const BYTES_RECEIVED: &str = "radserve_received_bytes_total";
pub const STORE_DURATION: &str = "radserve_store_duration_seconds";
pub const ACTIVE_ASSOCIATIONS: &str = "radserve_active_associations";
pub const REJECTIONS: &str = "radserve_rejections_total";
pub const HTTP_DURATION: &str = "radserve_http_request_duration_seconds";
pub const QUEUE_DEPTH: &str = "radserve_inference_queue_depth";
pub const BATCHES: &str = "radserve_inference_batches_total";
pub const BATCH_SIZE: &str = "radserve_inference_batch_size";
pub const STAGE_DURATION: &str = "radserve_stage_duration_seconds";
pub const JOBS: &str = "radserve_jobs";
pub const FINDINGS: &str = "radserve_findings";
pub const EMR_DELIVERIES: &str = "radserve_emr_deliveries_total";

/// Batch-size buckets: the sizes models are warmed at and between.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Histogram buckets in seconds: from a cached index hit to a large fsynced upload.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How an instance reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Dimse,
    Stow,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Dimse => "dimse",
            Route::Stow => "stow",
        }
    }
}

/// The process's Prometheus recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        // set_buckets fails only on an empty slice.
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: default histogram buckets");
                PrometheusBuilder::new()
            }
        };
        let builder = match builder.set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(BATCH_SIZE.to_owned()),
            BATCH_SIZE_BUCKETS,
        ) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: batch size buckets");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = ::metrics::set_global_recorder(recorder) {
            // Another recorder was installed first (an embedding program): ours stays empty.
            tracing::warn!(error = %e, "metrics: a global recorder is already installed");
        }
        describe();
        handle
    })
}

fn describe() {
    ::metrics::describe_counter!(
        INSTANCES_RECEIVED,
        "DICOM instances stored, by route and transfer syntax"
    );
    ::metrics::describe_counter!(
        BYTES_RECEIVED,
        "bytes of DICOM instances stored, by route and transfer syntax"
    );
    ::metrics::describe_histogram!(
        STORE_DURATION,
        ::metrics::Unit::Seconds,
        "time to store one instance durably (fsync + index)"
    );
    ::metrics::describe_gauge!(ACTIVE_ASSOCIATIONS, "open DICOM associations");
    ::metrics::describe_counter!(
        REJECTIONS,
        "refused associations, instances and requests, by reason"
    );
    ::metrics::describe_gauge!(QUEUE_DEPTH, "images waiting for a batch, by model");
    ::metrics::describe_counter!(BATCHES, "batches run on the device (launches), by model");
    ::metrics::describe_histogram!(BATCH_SIZE, "images per batch, by model");
    ::metrics::describe_histogram!(
        STAGE_DURATION,
        ::metrics::Unit::Seconds,
        "time spent per stage of inference, by model and stage"
    );
    ::metrics::describe_gauge!(JOBS, "pipeline jobs by state");
    ::metrics::describe_gauge!(
        FINDINGS,
        "positive findings of current results, by model and label"
    );
    ::metrics::describe_counter!(
        EMR_DELIVERIES,
        "results sent to the EMR (FHIR push, HL7 v2 ORU), by destination and outcome"
    );
    ::metrics::describe_histogram!(
        HTTP_DURATION,
        ::metrics::Unit::Seconds,
        "HTTP request latency by route template"
    );
}

/// Standard transfer syntaxes we name in labels; anything else is `other`.
const KNOWN_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.5",
];

/// The label for a transfer syntax UID (trailing NUL/space padding ignored).
pub fn transfer_syntax_label(uid: &str) -> &'static str {
    let uid = uid.trim_end_matches(['\0', ' ']);
    KNOWN_TRANSFER_SYNTAXES
        .iter()
        .find(|known| **known == uid)
        .copied()
        .unwrap_or("other")
}

/// One instance stored (new or duplicate), `bytes` long, arrived by `route`.
pub fn record_instance_received(route: Route, transfer_syntax_uid: &str, bytes: u64) {
    handle();
    let labels = [
        ("route", route.as_str()),
        (
            "transfer_syntax",
            transfer_syntax_label(transfer_syntax_uid),
        ),
    ];
    ::metrics::counter!(INSTANCES_RECEIVED, &labels).increment(1);
    ::metrics::counter!(BYTES_RECEIVED, &labels).increment(bytes);
}

/// How long one `Archive::put` took; `outcome` is e.g. `stored`, `duplicate`, `error`.
pub fn record_store_latency(elapsed: Duration, outcome: &'static str) {
    handle();
    ::metrics::histogram!(STORE_DURATION, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// Something refused: `route` is `dimse`, `stow` or `http`; `reason` a short snake_case
/// word (`calling_ae_not_allowed`, `unsupported_transfer_syntax`, `invalid_instance`,
/// `body_too_large`, `missing_token`, ...).
pub fn record_rejection(route: &'static str, reason: &'static str) {
    handle();
    ::metrics::counter!(REJECTIONS, "route" => route, "reason" => reason).increment(1);
}

/// Counts an open association while alive: create one when an association is
/// established, drop it when the association ends (however it ends).
#[derive(Debug)]
#[must_use = "the association counts as open only while the guard lives"]
pub struct AssociationGuard(());

impl AssociationGuard {
    pub fn open() -> AssociationGuard {
        handle();
        ::metrics::gauge!(ACTIVE_ASSOCIATIONS).increment(1.0);
        AssociationGuard(())
    }
}

impl Drop for AssociationGuard {
    fn drop(&mut self) {
        ::metrics::gauge!(ACTIVE_ASSOCIATIONS).decrement(1.0);
    }
}

/// Middleware: HTTP latency by method, route template and status. Mount it with
/// `route_layer(axum::middleware::from_fn(metrics::track_http))` so the route template
/// ([`MatchedPath`], never the UIDs in the path) is known.
pub async fn track_http(request: Request, next: Next) -> Response {
    handle();
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    ::metrics::histogram!(
        HTTP_DURATION,
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "observability",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String))
)]
pub async fn serve_metrics() -> Response {
    let handle = handle();
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The `/metrics` route, mergeable into any router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route("/metrics", axum::routing::get(serve_metrics))
}

/// Images waiting in a model's batcher.
pub fn set_queue_depth(model: &str, depth: usize) {
    ::metrics::gauge!(QUEUE_DEPTH, "model" => model.to_owned()).set(depth as f64);
}

/// One batch run on the device.
pub fn record_batch(model: &str, size: usize) {
    ::metrics::counter!(BATCHES, "model" => model.to_owned()).increment(1);
    ::metrics::histogram!(BATCH_SIZE, "model" => model.to_owned()).record(size as f64);
}

/// Time spent in one stage of inference (`queue`, `decode`, `preprocess`, `compute`,
/// `postprocess`, `store`).
pub fn record_stage(model: &str, stage: &'static str, elapsed: Duration) {
    ::metrics::histogram!(STAGE_DURATION, "model" => model.to_owned(), "stage" => stage)
        .record(elapsed.as_secs_f64());
}

/// Jobs in `state` now.
pub fn set_jobs(state: &str, count: i64) {
    ::metrics::gauge!(JOBS, "state" => state.to_owned()).set(count as f64);
}

/// Positive findings of current results for a model's label.
pub fn set_findings(model: &str, label: &str, count: i64) {
    ::metrics::gauge!(FINDINGS, "model" => model.to_owned(), "label" => label.to_owned())
        .set(count as f64);
}

/// One send of a result to the EMR and how it ended.
pub fn record_emr_delivery(destination: &str, outcome: &'static str) {
    ::metrics::counter!(EMR_DELIVERIES, "destination" => destination.to_owned(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_syntax_labels_are_a_closed_set() {
        assert_eq!(
            transfer_syntax_label("1.2.840.10008.1.2.1"),
            "1.2.840.10008.1.2.1"
        );
        assert_eq!(
            transfer_syntax_label("1.2.840.10008.1.2.1\0"),
            "1.2.840.10008.1.2.1"
        );
        assert_eq!(transfer_syntax_label("1.2.840.10008.1.2.1.9999"), "other");
        assert_eq!(transfer_syntax_label("Wu^Xiaodong"), "other");
    }

    #[tokio::test]
    async fn recorded_values_appear_in_the_exposition() {
        record_instance_received(Route::Stow, "1.2.840.10008.1.2.4.90", 1234);
        record_store_latency(Duration::from_millis(3), "stored");
        record_rejection("dimse", "calling_ae_not_allowed");
        let guard = AssociationGuard::open();
        let text = handle().render();
        assert!(
            text.contains(
                r#"radserve_received_bytes_total{route="stow",transfer_syntax="1.2.840.10008.1.2.4.90"}"#
            ),
            "{text}"
        );
        assert!(
            text.contains("radserve_store_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"radserve_rejections_total{route="dimse",reason="calling_ae_not_allowed"}"#
            ),
            "{text}"
        );
        assert!(text.contains("radserve_active_associations"), "{text}");
        drop(guard);
    }
}
