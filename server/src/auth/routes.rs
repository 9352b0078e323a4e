//! The one table that says who may call what, and which calls are audited.
//!
//! [`RULES`] maps a method class and a path prefix to the roles allowed and to the audit
//! kind. The auth middleware, the OpenAPI document (each operation's `security` lists the
//! roles) and the tests all read this table, so they cannot disagree. The first matching
//! rule wins; a request no rule matches falls to [`DEFAULT_RULE`] (admin only), so a new
//! route is closed until someone adds its line here.

use axum::http::Method;

use super::Role;

/// Which methods a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET and HEAD.
    Read,
    /// POST, PUT, PATCH, DELETE.
    Write,
    Any,
}

impl Verb {
    pub fn covers(self, method: &Method) -> bool {
        match self {
            Verb::Any => true,
            Verb::Read => method == Method::GET || method == Method::HEAD,
            Verb::Write => {
                method == Method::POST
                    || method == Method::PUT
                    || method == Method::PATCH
                    || method == Method::DELETE
            }
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (health probes only, by contract).
    Public,
    /// A bearer token with one of these roles.
    Roles(&'static [Role]),
}

/// What kind of audit record a call writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A read of patient data (QIDO-RS, WADO-RS, findings).
    Read,
    /// A store of patient data (STOW-RS).
    Store,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRule {
    pub verb: Verb,
    /// Matches the path itself and everything below it (`/dicomweb` matches
    /// `/dicomweb/studies`, not `/dicomwebx`).
    pub prefix: &'static str,
    pub access: Access,
    pub audit: Option<AuditKind>,
}

const READERS: &[Role] = &[Role::Clinician, Role::Admin];
const STORERS: &[Role] = &[Role::Pacs, Role::Admin];
const ML: &[Role] = &[Role::Ml, Role::Admin];
const ADMIN: &[Role] = &[Role::Admin];
const EVERYONE: &[Role] = &[Role::Pacs, Role::Clinician, Role::Ml, Role::Admin];

const fn rule(
    verb: Verb,
    prefix: &'static str,
    access: Access,
    audit: Option<AuditKind>,
) -> RouteRule {
    RouteRule {
        verb,
        prefix,
        access,
        audit,
    }
}

/// The table. Order matters only where prefixes overlap: the more specific rule first.
pub static RULES: &[RouteRule] = &[
    rule(Verb::Any, "/health", Access::Public, None),
    // DICOMweb: STOW-RS stores, everything else reads patient data.
    rule(
        Verb::Write,
        "/dicomweb",
        Access::Roles(STORERS),
        Some(AuditKind::Store),
    ),
    rule(
        Verb::Read,
        "/dicomweb",
        Access::Roles(READERS),
        Some(AuditKind::Read),
    ),
    // JSON API.
    rule(
        Verb::Read,
        "/api/v1/openapi.json",
        Access::Roles(EVERYONE),
        None,
    ),
    rule(Verb::Read, "/api/v1/audit", Access::Roles(ADMIN), None),
    rule(
        Verb::Read,
        "/api/v1/findings",
        Access::Roles(READERS),
        Some(AuditKind::Read),
    ),
    rule(Verb::Any, "/api/v1/models", Access::Roles(ML), None),
    // The EMR: records come from the interface engine (like studies from the PACS); the
    // review queue, quality report, manual links and timelines are patient data.
    rule(
        Verb::Write,
        "/api/v1/emr/fhir",
        Access::Roles(STORERS),
        Some(AuditKind::Store),
    ),
    rule(
        Verb::Write,
        "/api/v1/emr/links",
        Access::Roles(READERS),
        Some(AuditKind::Store),
    ),
    // Sending a result to the EMR again is an operator's decision.
    rule(
        Verb::Write,
        "/api/v1/emr/outbox",
        Access::Roles(ADMIN),
        Some(AuditKind::Store),
    ),
    rule(
        Verb::Read,
        "/api/v1/emr",
        Access::Roles(READERS),
        Some(AuditKind::Read),
    ),
    rule(
        Verb::Read,
        "/api/v1/patients",
        Access::Roles(READERS),
        Some(AuditKind::Read),
    ),
    // The pipeline: findings are patient data; asking for (re)processing is for anyone
    // who sends or reads studies; jobs and synchronous inference are for ML engineers.
    rule(
        Verb::Read,
        "/api/v1/studies",
        Access::Roles(READERS),
        Some(AuditKind::Read),
    ),
    rule(
        Verb::Write,
        "/api/v1/studies",
        Access::Roles(EVERYONE),
        None,
    ),
    rule(
        Verb::Read,
        "/api/v1/jobs",
        Access::Roles(ML),
        Some(AuditKind::Read),
    ),
    rule(
        Verb::Write,
        "/api/v1/infer",
        Access::Roles(ML),
        Some(AuditKind::Read),
    ),
    // Findings as FHIR R4: patient data, read-only.
    rule(
        Verb::Read,
        "/fhir",
        Access::Roles(READERS),
        Some(AuditKind::Read),
    ),
    rule(Verb::Read, "/metrics", Access::Roles(ML), None),
];

/// What applies when no rule matches: admin only, not audited.
pub static DEFAULT_RULE: RouteRule = rule(Verb::Any, "/", Access::Roles(ADMIN), None);

/// The rule for a request. Paths with `.` or `..` segments never match a rule (they would
/// let `/health/../dicomweb` pass as public if something downstream normalised them).
pub fn rule_for(method: &Method, path: &str) -> &'static RouteRule {
    if path.split('/').any(|s| s == "." || s == "..") {
        return &DEFAULT_RULE;
    }
    RULES
        .iter()
        .find(|r| r.verb.covers(method) && prefix_matches(r.prefix, path))
        .unwrap_or(&DEFAULT_RULE)
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

impl RouteRule {
    /// Whether `role` may call a route under this rule (`None`: no token).
    pub fn allows(&self, role: Option<Role>) -> bool {
        match (self.access, role) {
            (Access::Public, _) => true,
            (Access::Roles(roles), Some(role)) => roles.contains(&role),
            (Access::Roles(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protected_rule_admits_admin_and_only_health_is_public() {
        for r in RULES.iter().chain([&DEFAULT_RULE]) {
            match r.access {
                Access::Public => assert!(r.prefix.starts_with("/health"), "{r:?}"),
                Access::Roles(roles) => {
                    assert!(roles.contains(&Role::Admin), "{r:?}");
                    assert!(!r.allows(None), "{r:?}");
                }
            }
        }
    }

    #[test]
    fn no_rule_is_shadowed_by_an_earlier_one() {
        for (i, later) in RULES.iter().enumerate() {
            for earlier in &RULES[..i] {
                let verbs_covered = earlier.verb == Verb::Any || earlier.verb == later.verb;
                assert!(
                    !(verbs_covered && prefix_matches(earlier.prefix, later.prefix)),
                    "{later:?} is unreachable behind {earlier:?}"
                );
            }
        }
    }

    #[test]
    fn each_rule_is_what_its_own_prefix_resolves_to() {
        for r in RULES {
            let method = match r.verb {
                Verb::Read | Verb::Any => Method::GET,
                Verb::Write => Method::POST,
            };
            assert_eq!(rule_for(&method, r.prefix), r);
            assert_eq!(rule_for(&method, &format!("{}/x/y", r.prefix)), r);
        }
    }

    fn allowed(method: Method, path: &str) -> Vec<Role> {
        let r = rule_for(&method, path);
        Role::ALL
            .into_iter()
            .filter(|role| r.allows(Some(*role)))
            .collect()
    }

    #[test]
    fn roles_per_route() {
        use Role::*;
        assert!(rule_for(&Method::GET, "/health/live").allows(None));
        assert!(rule_for(&Method::GET, "/health/ready").allows(None));
        assert_eq!(allowed(Method::POST, "/dicomweb/studies"), [Pacs, Admin]);
        assert_eq!(
            allowed(Method::POST, "/dicomweb/studies/1.2.3"),
            [Pacs, Admin]
        );
        assert_eq!(
            allowed(Method::GET, "/dicomweb/studies"),
            [Clinician, Admin]
        );
        assert_eq!(
            allowed(
                Method::GET,
                "/dicomweb/studies/1.2/series/3.4/instances/5.6/rendered"
            ),
            [Clinician, Admin]
        );
        assert_eq!(
            allowed(Method::HEAD, "/dicomweb/studies"),
            [Clinician, Admin]
        );
        assert_eq!(allowed(Method::GET, "/metrics"), [Ml, Admin]);
        assert_eq!(
            allowed(Method::GET, "/fhir/DiagnosticReport"),
            [Clinician, Admin]
        );
        assert_eq!(allowed(Method::POST, "/fhir/Observation"), [Admin]);
        assert_eq!(allowed(Method::GET, "/api/v1/audit"), [Admin]);
        assert_eq!(allowed(Method::GET, "/api/v1/openapi.json"), Role::ALL);
        // Unknown routes and unlisted methods: admin only.
        assert_eq!(allowed(Method::GET, "/api/v1/secret"), [Admin]);
        assert_eq!(allowed(Method::DELETE, "/metrics"), [Admin]);
        assert_eq!(allowed(Method::GET, "/dicomwebx"), [Admin]);
        // Dot segments never reach the public rule.
        assert_eq!(allowed(Method::GET, "/health/../dicomweb/studies"), [Admin]);
    }

    #[test]
    fn patient_data_routes_are_audited() {
        assert_eq!(
            rule_for(&Method::GET, "/dicomweb/studies").audit,
            Some(AuditKind::Read)
        );
        assert_eq!(
            rule_for(&Method::POST, "/dicomweb/studies").audit,
            Some(AuditKind::Store)
        );
        assert_eq!(
            rule_for(&Method::GET, "/fhir/Observation").audit,
            Some(AuditKind::Read)
        );
        assert_eq!(rule_for(&Method::GET, "/metrics").audit, None);
        assert_eq!(rule_for(&Method::GET, "/health/live").audit, None);
    }
}
