//! Audit records for access to patient data: what was done to which resource, by whom,
//! from where, with what outcome.
//!
//! The auth middleware writes one record per request that the route table marks as
//! audited ([`super::routes::AuditKind`]), whether it was served or refused, so handlers
//! need nothing. Each record goes to the index ([`Archive::record_audit`]) and to the log
//! as one `info` line with target `radserve::audit`. Records name resources by UIDs from
//! the request path only: query strings (which may hold `PatientName=...`) are never
//! looked at, and a path segment that is not a DICOMweb keyword, a UID or a number is
//! replaced by `_`, so a record can never carry a patient name or ID.

use axum::http::{Method, StatusCode};
use chrono::{SecondsFormat, Utc};

use super::routes::AuditKind;
use crate::store::{Archive, AuditRecord, StoreError};

/// Longest resource string recorded (a WADO frame list can be long).
pub const MAX_RESOURCE_LEN: usize = 512;

/// Path segments kept as they are.
const KEYWORDS: &[&str] = &[
    "studies",
    "series",
    "instances",
    "metadata",
    "rendered",
    "thumbnail",
    "frames",
    "bulkdata",
    "pixeldata",
    "findings",
];

/// What a request does and to what: `("qido.series", "studies/1.2.3/series")`.
pub fn describe(kind: AuditKind, method: &Method, path: &str) -> (String, String) {
    let rest = path
        .strip_prefix("/dicomweb")
        .or_else(|| path.strip_prefix("/api/v1"))
        .unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let resource = resource(&segments);
    let action = match kind {
        AuditKind::Store => "stow.studies".to_owned(),
        AuditKind::Read => read_action(&segments, method),
    };
    (action, resource)
}

fn read_action(segments: &[&str], method: &Method) -> String {
    let verb = if method == Method::HEAD {
        "head"
    } else {
        "read"
    };
    let Some(last_keyword_at) = segments.iter().rposition(|s| KEYWORDS.contains(s)) else {
        return verb.to_owned();
    };
    let keyword = segments[last_keyword_at];
    let is_last = last_keyword_at + 1 == segments.len();
    match keyword {
        "findings" => format!("findings.{verb}"),
        // A collection: a search.
        "studies" | "series" | "instances" if is_last => format!("qido.{keyword}"),
        // One resource of a collection: a retrieval.
        "studies" => "wado.study".to_owned(),
        "series" => "wado.series".to_owned(),
        "instances" => "wado.instance".to_owned(),
        other => format!("wado.{other}"),
    }
}

fn resource(segments: &[&str]) -> String {
    let mut out = String::new();
    for segment in segments {
        let kept = if KEYWORDS.contains(segment) || is_uid_or_numbers(segment) || is_uuid(segment) {
            *segment
        } else {
            "_"
        };
        if out.len() + kept.len() + 1 > MAX_RESOURCE_LEN {
            out.push_str("/…");
            break;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(kept);
    }
    out
}

/// Digits, dots and commas (UIDs, frame lists), at most 64 characters per UID.
fn is_uid_or_numbers(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b',')
        && s.split(',').all(|part| part.len() <= 64)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The outcome recorded for a response status.
pub fn outcome(status: StatusCode) -> String {
    match status.as_u16() {
        200..=399 => "success".to_owned(),
        401 | 403 => "denied".to_owned(),
        code => format!("error: {code}"),
    }
}

/// One audited access, before it is written.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub user: &'a str,
    pub role: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub client: &'a str,
    pub outcome: &'a str,
}

/// Logs the event at `info` and writes it to the index.
pub async fn record(archive: &Archive, event: &Event<'_>) -> Result<(), StoreError> {
    tracing::info!(
        target: "radserve::audit",
        user = event.user,
        role = event.role,
        action = event.action,
        resource = event.resource,
        client = event.client,
        outcome = event.outcome,
        "audit"
    );
    archive
        .record_audit(&AuditRecord {
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            user: event.user.to_owned(),
            role: event.role.to_owned(),
            action: event.action.to_owned(),
            resource: event.resource.to_owned(),
            client: event.client.to_owned(),
            outcome: event.outcome.to_owned(),
        })
        .await
}

/// Audits a DIMSE read of patient data (a C-FIND), for the DIMSE service to call once per
/// request. `level` is the query level (`STUDY`, `SERIES`, `IMAGE`); the matching keys are
/// not recorded (they may hold names). The calling AE title stands for the user, with
/// anything but printable ASCII replaced, since it comes from the network.
pub async fn record_dimse_find(
    archive: &Archive,
    calling_ae_title: &str,
    peer: std::net::SocketAddr,
    level: &str,
    outcome: &str,
) -> Result<(), StoreError> {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .take(max)
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let user = format!("ae:{}", clean(calling_ae_title.trim(), 16));
    let level = clean(level.trim(), 16).to_ascii_lowercase();
    let event = Event {
        user: &user,
        role: "dimse",
        action: &format!("cfind.{level}"),
        resource: &format!("level={}", level.to_ascii_uppercase()),
        client: &peer.to_string(),
        outcome,
    };
    record(archive, &event).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> (String, String) {
        describe(AuditKind::Read, &Method::GET, path)
    }

    #[test]
    fn qido_and_wado_actions() {
        let cases = [
            ("/dicomweb/studies", "qido.studies", "studies"),
            ("/dicomweb/series", "qido.series", "series"),
            ("/dicomweb/instances", "qido.instances", "instances"),
            ("/dicomweb/studies/1.2.3", "wado.study", "studies/1.2.3"),
            (
                "/dicomweb/studies/1.2.3/series",
                "qido.series",
                "studies/1.2.3/series",
            ),
            (
                "/dicomweb/studies/1.2/series/3.4",
                "wado.series",
                "studies/1.2/series/3.4",
            ),
            (
                "/dicomweb/studies/1.2/series/3.4/instances",
                "qido.instances",
                "studies/1.2/series/3.4/instances",
            ),
            (
                "/dicomweb/studies/1.2/series/3.4/instances/5.6",
                "wado.instance",
                "studies/1.2/series/3.4/instances/5.6",
            ),
            (
                "/dicomweb/studies/1.2/metadata",
                "wado.metadata",
                "studies/1.2/metadata",
            ),
            (
                "/dicomweb/studies/1.2/series/3.4/instances/5.6/frames/1,2,3",
                "wado.frames",
                "studies/1.2/series/3.4/instances/5.6/frames/1,2,3",
            ),
            (
                "/dicomweb/studies/1.2/series/3.4/instances/5.6/rendered",
                "wado.rendered",
                "studies/1.2/series/3.4/instances/5.6/rendered",
            ),
            (
                "/api/v1/findings/123e4567-e89b-12d3-a456-426614174000",
                "findings.read",
                "findings/123e4567-e89b-12d3-a456-426614174000",
            ),
        ];
        for (path, action, resource) in cases {
            assert_eq!(
                read(path),
                (action.to_owned(), resource.to_owned()),
                "{path}"
            );
        }
        assert_eq!(
            describe(AuditKind::Store, &Method::POST, "/dicomweb/studies/1.2").0,
            "stow.studies"
        );
    }

    #[test]
    fn resources_never_carry_names_or_ids() {
        let (_, resource) = read("/dicomweb/studies/Wu%5EXiaodong/series/00001012abc");
        assert_eq!(resource, "studies/_/series/_");
        let (_, resource) = read(&format!("/dicomweb/studies/{}", "1.".repeat(400)));
        assert_eq!(resource, "studies/_");
        let long = format!("/dicomweb/studies/{}", "1.2/".repeat(300));
        assert!(read(&long).1.len() <= MAX_RESOURCE_LEN + "/…".len());
    }

    #[tokio::test]
    async fn dimse_finds_are_recorded_by_ae_title_and_level_only() {
        let (_dir, archive) = crate::store::temp_archive().await;
        let peer: std::net::SocketAddr = "10.1.2.3:4242".parse().unwrap();
        record_dimse_find(&archive, "PACS\n1 ", peer, "STUDY", "success")
            .await
            .unwrap();
        let records = archive.audit_records(10, 0).await.unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(
            (
                r.user.as_str(),
                r.role.as_str(),
                r.action.as_str(),
                r.resource.as_str()
            ),
            ("ae:PACS_1", "dimse", "cfind.study", "level=STUDY")
        );
        assert_eq!(
            (r.client.as_str(), r.outcome.as_str()),
            ("10.1.2.3:4242", "success")
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(StatusCode::OK), "success");
        assert_eq!(outcome(StatusCode::NO_CONTENT), "success");
        assert_eq!(outcome(StatusCode::UNAUTHORIZED), "denied");
        assert_eq!(outcome(StatusCode::FORBIDDEN), "denied");
        assert_eq!(outcome(StatusCode::NOT_FOUND), "error: 404");
    }
}
