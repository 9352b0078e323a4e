//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the whole HTTP API.
//!
//! Assembled from the handlers' `#[utoipa::path]` annotations (ours, and DICOMweb's
//! `DicomwebApi`), plus the health probes. Each operation's `security` is then set from
//! the route table ([`crate::auth::routes`]): the bearer scheme with the allowed roles as
//! its role list (OpenAPI 3.1 allows role names for non-OAuth schemes), or none for the
//! public health probes. So the document says exactly what the middleware enforces, and
//! the end-to-end tests check every operation it lists against the running server.

use std::sync::OnceLock;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, RefOr, ResponseBuilder};

use crate::auth::{Access, rule_for};

/// The name of the security scheme in the document.
pub const SECURITY_SCHEME: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "radserve",
        description = "Medical imaging AI inference server: DICOMweb archive, findings and \
                       operations API. Every route except /health/* needs a bearer token; \
                       each operation's security lists the roles it accepts."
    ),
    paths(
        super::audit::list,
        crate::metrics::serve_metrics,
        serve,
        super::pipeline::findings,
        super::pipeline::process,
        super::pipeline::cancel,
        super::pipeline::jobs,
        super::pipeline::models,
        super::pipeline::infer,
        super::emr::ingest_fhir,
        super::emr::unmatched,
        super::emr::link,
        super::emr::quality,
        super::emr::outbox,
        super::emr::retry_delivery,
        super::emr::study,
        super::emr::patient_studies,
        super::fhir::search_reports,
        super::fhir::read_report,
        super::fhir::search_observations,
        super::fhir::read_imaging_study,
    ),
    components(schemas(super::audit::AuditPage, super::audit::AuditEntry)),
    tags(
        (name = "health", description = "Liveness and readiness probes (no token)"),
        (name = "audit", description = "Audit trail of access to patient data (admin)"),
        (name = "observability", description = "Prometheus metrics (ml, admin)"),
        (name = "meta", description = "This document"),
        (name = "pipeline", description = "Findings, jobs, models and synchronous inference"),
        (name = "emr", description = "EMR records in, the study join, review and data quality, the clinician's study view"),
        (name = "fhir", description = "Findings as FHIR R4 (DiagnosticReport, Observation, ImagingStudy; application/fhir+json)"),
    )
)]
struct RadserveApi;

/// The whole document, security included.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = RadserveApi::openapi();
    doc.merge(crate::dicomweb::DicomwebApi::openapi());
    add_health(&mut doc);
    apply_security(&mut doc);
    doc
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn serve() -> Response {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    match JSON.get_or_init(|| document().to_json().map_err(|e| e.to_string())) {
        Ok(json) => {
            let mut response = json.clone().into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            super::ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "cannot build the OpenAPI document".to_owned(),
            }
            .into_response()
        }
    }
}

/// The `/api/v1/openapi.json` route, mergeable into any router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route("/api/v1/openapi.json", axum::routing::get(serve))
}

fn add_health(doc: &mut utoipa::openapi::OpenApi) {
    let probe = |summary: &str, ok: &str, extra: Option<(&str, &str)>| {
        let mut op = OperationBuilder::new()
            .tag("health")
            .summary(Some(summary))
            .response("200", ResponseBuilder::new().description(ok));
        if let Some((code, description)) = extra {
            op = op.response(code, ResponseBuilder::new().description(description));
        }
        op.build()
    };
    doc.paths.paths.insert(
        "/health/live".to_owned(),
        PathItem::new(
            HttpMethod::Get,
            probe("The process answers", "{\"status\":\"live\"}", None),
        ),
    );
    doc.paths.paths.insert(
        "/health/ready".to_owned(),
        PathItem::new(
            HttpMethod::Get,
            probe(
                "The server can take work",
                "{\"status\":\"ready\"}",
                Some(("503", "{\"status\":\"not_ready\",\"reason\":...}")),
            ),
        ),
    );
}

/// The methods of a path item with their operations.
fn operations(item: &mut PathItem) -> [(Method, &mut Option<Operation>); 8] {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::OPTIONS, &mut item.options),
        (Method::HEAD, &mut item.head),
        (Method::PATCH, &mut item.patch),
        (Method::TRACE, &mut item.trace),
    ]
}

fn apply_security(doc: &mut utoipa::openapi::OpenApi) {
    let scheme = SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token from `radserve token create --role pacs|clinician|ml|admin`, or \
                 RADSERVE_ADMIN_TOKEN",
            ))
            .build(),
    );
    doc.components
        .get_or_insert_with(|| ComponentsBuilder::new().build())
        .add_security_scheme(SECURITY_SCHEME, scheme);

    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, slot) in operations(item) {
            let Some(op) = slot.as_mut() else { continue };
            match rule_for(&method, path).access {
                Access::Public => op.security = Some(Vec::new()),
                Access::Roles(roles) => {
                    let roles = roles.iter().map(|r| r.as_str());
                    op.security = Some(vec![SecurityRequirement::new(SECURITY_SCHEME, roles)]);
                    let responses = &mut op.responses.responses;
                    responses.entry("401".to_owned()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description("Missing or invalid token")
                                .build(),
                        )
                    });
                    responses.entry("403".to_owned()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description("The token's role may not call this")
                                .build(),
                        )
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn every_operation_carries_the_route_table_roles() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/health/live",
            "/health/ready",
            "/metrics",
            "/api/v1/audit",
            "/api/v1/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let Ok(m) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                if !op.is_object() || op.get("responses").is_none() {
                    continue;
                }
                let security = &op["security"];
                match rule_for(&m, path).access {
                    Access::Public => {
                        assert_eq!(security, &serde_json::json!([]), "{method} {path}")
                    }
                    Access::Roles(roles) => {
                        let listed: Vec<&str> = security[0]["bearer"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_str().unwrap())
                            .collect();
                        let expected: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                        assert_eq!(listed, expected, "{method} {path}");
                        assert!(listed.contains(&Role::Admin.as_str()));
                        assert!(op["responses"].get("401").is_some(), "{method} {path}");
                    }
                }
            }
        }
    }
}
