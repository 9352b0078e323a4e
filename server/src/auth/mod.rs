//! `auth`: who is calling, whether they may, and the audit trail of patient-data access.
//!
//! Every HTTP route except `/health/*` needs `Authorization: Bearer <token>`. Tokens carry
//! one [`Role`]; the table in [`routes`] says which roles may call which routes and which
//! calls are audited. [`require`] is the one axum middleware that enforces it (mounted as
//! a route layer on the whole router): missing or unknown token → 401 with
//! `WWW-Authenticate: Bearer`, wrong role → 403, both with a JSON `{"error": ...}` body;
//! audited routes get an audit record whatever the outcome. Handlers that want the caller
//! read the [`Principal`] the middleware puts in the request's extensions.
//!
//! Modules:
//! - [`role`]: the four roles;
//! - [`token`]: token generation, SHA-256 hashing, constant-time comparison, creation;
//! - [`routes`]: the route → roles (and audit) table;
//! - [`audit`]: audit events: action and resource from the path, written to index and log.

pub mod audit;
pub mod role;
pub mod routes;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use role::{Role, UnknownRole};
pub use routes::{Access, AuditKind, RouteRule, rule_for};
pub use token::{TokenHash, hash};

use crate::store::Archive;

/// The environment variable whose value, when set at start, is accepted as an admin token.
pub const ADMIN_TOKEN_ENV: &str = "RADSERVE_ADMIN_TOKEN";

/// The authenticated caller, available to handlers as `Extension<Principal>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's index row; `None` for the `RADSERVE_ADMIN_TOKEN` admin.
    pub token_id: Option<i64>,
    /// How the caller appears in audit records and logs: the token's label, or
    /// `token#<id>` when it has none, or `env-admin`.
    pub user: String,
    pub role: Role,
}

/// What the middleware needs: the archive (token lookups, audit records) and the digest
/// of the environment's admin token. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    archive: Archive,
    admin_token: Option<TokenHash>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("admin_token", &self.inner.admin_token.is_some())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `admin_token`: a token accepted as admin without an index row (empty = none).
    pub fn new(archive: Archive, admin_token: Option<&str>) -> Auth {
        let admin_token = admin_token.filter(|t| !t.is_empty()).map(|t| {
            if t.len() < 16 {
                tracing::warn!("{ADMIN_TOKEN_ENV} is shorter than 16 characters: easy to guess");
            }
            token::hash(t)
        });
        Auth {
            inner: Arc::new(Inner {
                archive,
                admin_token,
            }),
        }
    }

    /// [`Auth::new`] with the admin token from `RADSERVE_ADMIN_TOKEN`.
    pub fn from_env(archive: Archive) -> Auth {
        let value = std::env::var(ADMIN_TOKEN_ENV).ok();
        if value.as_deref().is_some_and(|v| !v.is_empty()) {
            tracing::info!("{ADMIN_TOKEN_ENV} is set: accepting it as an admin token");
        }
        Auth::new(archive, value.as_deref())
    }

    pub fn archive(&self) -> &Archive {
        &self.inner.archive
    }

    /// Who the `Authorization` header says the caller is.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let credential = bearer(headers)?;
        let digest = token::hash(credential);
        if self
            .inner
            .admin_token
            .as_ref()
            .is_some_and(|admin| admin.ct_eq(&digest))
        {
            return Ok(Principal {
                token_id: None,
                user: "env-admin".to_owned(),
                role: Role::Admin,
            });
        }
        let record = self
            .inner
            .archive
            .find_token(&digest.to_hex())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "token lookup failed");
                AuthError::Unavailable
            })?
            .ok_or(AuthError::InvalidToken)?;
        if record.revoked {
            return Err(AuthError::InvalidToken);
        }
        let role = record.role.parse::<Role>().map_err(|e| {
            tracing::warn!(token_id = record.id, error = %e, "token has an unknown role");
            AuthError::InvalidToken
        })?;
        let user = if record.label.is_empty() {
            format!("token#{}", record.id)
        } else {
            record.label
        };
        Ok(Principal {
            token_id: Some(record.id),
            user,
            role,
        })
    }
}

/// The credential from `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::MissingToken)?;
    if value.len() > token::MAX_TOKEN_LEN + "Bearer ".len() {
        return Err(AuthError::MalformedHeader);
    }
    let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, credential) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthError::MalformedHeader)?;
    let credential = credential.trim();
    // RFC 6750: the scheme is case-insensitive; the token is one non-empty word.
    if !scheme.eq_ignore_ascii_case("bearer")
        || credential.is_empty()
        || credential.contains(char::is_whitespace)
    {
        return Err(AuthError::MalformedHeader);
    }
    Ok(credential)
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("malformed Authorization header: expected Bearer <token>")]
    MalformedHeader,
    #[error("invalid or revoked token")]
    InvalidToken,
    #[error("role {role} may not {method} {path}")]
    Forbidden {
        role: Role,
        method: String,
        path: String,
    },
    #[error("cannot check the token now: the index is unavailable")]
    Unavailable,
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken | AuthError::MalformedHeader | AuthError::InvalidToken => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The reason label used in the rejection metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedHeader => "malformed_authorization",
            AuthError::InvalidToken => "invalid_token",
            AuthError::Forbidden { .. } => "forbidden_role",
            AuthError::Unavailable => "auth_unavailable",
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let challenge = match self {
            AuthError::MissingToken => Some(r#"Bearer realm="radserve""#),
            AuthError::MalformedHeader => {
                Some(r#"Bearer realm="radserve", error="invalid_request""#)
            }
            AuthError::InvalidToken => Some(r#"Bearer realm="radserve", error="invalid_token""#),
            AuthError::Forbidden { .. } => {
                Some(r#"Bearer realm="radserve", error="insufficient_scope""#)
            }
            AuthError::Unavailable => None,
        };
        let body = axum::Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (status, body).into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// The auth and audit middleware (see the module docs). Mount it with
/// `route_layer(axum::middleware::from_fn_with_state(auth, auth::require))`.
pub async fn require(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let rule = rule_for(&method, &path);
    if rule.access == Access::Public {
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    let described = rule.audit.map(|kind| audit::describe(kind, &method, &path));

    let checked = match auth.authenticate(request.headers()).await {
        Ok(principal) if rule.allows(Some(principal.role)) => Ok(principal),
        Ok(principal) => Err((
            Some(principal.clone()),
            AuthError::Forbidden {
                role: principal.role,
                method: method.to_string(),
                path: path.clone(),
            },
        )),
        Err(e) => Err((None, e)),
    };
    let principal = match checked {
        Ok(principal) => principal,
        Err((who, error)) => {
            crate::metrics::record_rejection("http", error.reason());
            tracing::info!(
                method = %method,
                path = %audit_safe_path(&path, described.as_ref()),
                user = who.as_ref().map_or("anonymous", |p| p.user.as_str()),
                client = %client,
                reason = error.reason(),
                "request refused"
            );
            if let Some((action, resource)) = &described {
                let (user, role) = who.as_ref().map_or(("anonymous", "none"), |p| {
                    (p.user.as_str(), p.role.as_str())
                });
                let event = audit::Event {
                    user,
                    role,
                    action,
                    resource,
                    client: &client,
                    outcome: "denied",
                };
                if let Err(e) = audit::record(auth.archive(), &event).await {
                    tracing::error!(error = %e, "cannot write the audit record of a refused request");
                }
            }
            return error.into_response();
        }
    };

    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    let Some((action, resource)) = described else {
        return response;
    };
    let outcome = audit::outcome(response.status());
    let event = audit::Event {
        user: &principal.user,
        role: principal.role.as_str(),
        action: &action,
        resource: &resource,
        client: &client,
        outcome: &outcome,
    };
    match audit::record(auth.archive(), &event).await {
        Ok(()) => response,
        // Patient data goes out only with its audit record written.
        Err(e) if response.status().is_success() => {
            tracing::error!(error = %e, action = %action, "cannot write an audit record: withholding the response");
            let body = axum::Json(serde_json::json!({ "error": "cannot write the audit record" }));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, action = %action, "cannot write an audit record");
            response
        }
    }
}

/// The path as it may be logged: for audited (patient-data) routes, the audit resource
/// (UIDs only); other paths carry no patient data.
fn audit_safe_path(path: &str, described: Option<&(String, String)>) -> String {
    match described {
        Some((_, resource)) => resource.clone(),
        None => path.chars().take(256).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server with two fake DICOMweb routes behind [`require`]; returns its address.
    async fn serve(auth: Auth) -> SocketAddr {
        async fn who(axum::Extension(p): axum::Extension<Principal>) -> String {
            format!("{} {}", p.user, p.role)
        }
        let app = Router::new()
            .route("/health/live", get(|| async { "live" }))
            .route("/dicomweb/studies", get(who).post(who))
            .route(
                "/dicomweb/studies/{study}/series",
                get(|| async { (StatusCode::NOT_FOUND, "none") }),
            )
            .route_layer(axum::middleware::from_fn_with_state(auth, require));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        addr
    }

    /// A bare HTTP/1.1 exchange: (status, headers + body as text).
    async fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        (status, response)
    }

    #[tokio::test]
    async fn middleware_authenticates_authorises_and_audits() {
        let (_dir, archive) = crate::store::temp_archive().await;
        let clinician = token::create(&archive, Role::Clinician, "viewer-1")
            .await
            .unwrap();
        let pacs = token::create(&archive, Role::Pacs, "").await.unwrap();
        let env_admin = "an-admin-token-from-the-environment";
        let addr = serve(Auth::new(archive.clone(), Some(env_admin))).await;

        // Public: no token needed.
        assert_eq!(call(addr, "GET", "/health/live", None).await.0, 200);

        let (status, text) = call(addr, "GET", "/dicomweb/studies?PatientName=Doe", None).await;
        assert_eq!(status, 401, "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{text}"
        );
        assert!(
            text.contains(r#"{"error":"authentication required"#),
            "{text}"
        );
        assert_eq!(
            call(addr, "GET", "/dicomweb/studies", Some("rs_wrong"))
                .await
                .0,
            401
        );

        let (status, text) = call(addr, "GET", "/dicomweb/studies", Some(&clinician.token)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.ends_with("viewer-1 clinician"), "{text}");
        let (status, text) = call(addr, "GET", "/dicomweb/studies", Some(&pacs.token)).await;
        assert_eq!(status, 403, "{text}");
        assert!(
            text.contains("role pacs may not GET /dicomweb/studies"),
            "{text}"
        );
        let (status, text) = call(addr, "POST", "/dicomweb/studies", Some(&pacs.token)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.ends_with(&format!("token#{} pacs", pacs.id)), "{text}");
        assert_eq!(
            call(addr, "POST", "/dicomweb/studies", Some(&clinician.token))
                .await
                .0,
            403
        );
        let (status, text) = call(addr, "GET", "/dicomweb/studies", Some(env_admin)).await;
        assert_eq!(
            (status, text.ends_with("env-admin admin")),
            (200, true),
            "{text}"
        );
        assert_eq!(
            call(
                addr,
                "GET",
                "/dicomweb/studies/1.2.3/series",
                Some(&clinician.token)
            )
            .await
            .0,
            404
        );

        // Newest first; every access to /dicomweb, refused or not, is recorded.
        let records = archive.audit_records(100, 0).await.unwrap();
        let summary: Vec<(&str, &str, &str, &str)> = records
            .iter()
            .map(|r| {
                (
                    r.user.as_str(),
                    r.action.as_str(),
                    r.resource.as_str(),
                    r.outcome.as_str(),
                )
            })
            .collect();
        let pacs_user = format!("token#{}", pacs.id);
        assert_eq!(
            summary,
            [
                (
                    "viewer-1",
                    "qido.series",
                    "studies/1.2.3/series",
                    "error: 404"
                ),
                ("env-admin", "qido.studies", "studies", "success"),
                ("viewer-1", "stow.studies", "studies", "denied"),
                (pacs_user.as_str(), "stow.studies", "studies", "success"),
                (pacs_user.as_str(), "qido.studies", "studies", "denied"),
                ("viewer-1", "qido.studies", "studies", "success"),
                ("anonymous", "qido.studies", "studies", "denied"),
                ("anonymous", "qido.studies", "studies", "denied"),
            ]
        );
        assert!(
            records.iter().all(|r| r.client.starts_with("127.0.0.1:")),
            "{records:?}"
        );
        assert!(
            records
                .iter()
                .all(|r| chrono::DateTime::parse_from_rfc3339(&r.at).is_ok())
        );
        assert_eq!(records[0].role, "clinician");
        assert_eq!(records[7].role, "none");
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(&headers("Bearer rs_abc")), Ok("rs_abc"));
        assert_eq!(bearer(&headers("bearer  rs_abc ")), Ok("rs_abc"));
        assert_eq!(bearer(&HeaderMap::new()), Err(AuthError::MissingToken));
        for bad in [
            "Basic dXNlcjpwdw==",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "rs_abc",
        ] {
            assert_eq!(
                bearer(&headers(bad)),
                Err(AuthError::MalformedHeader),
                "{bad}"
            );
        }
        let huge = format!("Bearer {}", "a".repeat(token::MAX_TOKEN_LEN + 1));
        assert_eq!(bearer(&headers(&huge)), Err(AuthError::MalformedHeader));
    }

    #[test]
    fn errors_answer_json_with_a_challenge() {
        let r = AuthError::MissingToken.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="radserve""#
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = AuthError::Forbidden {
            role: Role::Pacs,
            method: "GET".into(),
            path: "/dicomweb/studies".into(),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
