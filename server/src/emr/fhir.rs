//! FHIR R4 Bundles in: the EMR's Patients, ServiceRequests (imaging orders) and Encounters.
//!
//! [`parse_bundle`] reads a whole Bundle and checks it entry by entry. The body as a whole is
//! refused ([`BundleError`]) only when nothing in it can be trusted: not JSON, not a Bundle,
//! a Bundle type we do not accept, or more entries than [`MAX_ENTRIES`]. Anything wrong with
//! one entry becomes an [`EntryError`] naming the entry, the field and the rule, and the
//! other entries proceed — an EMR export with one malformed order should still deliver its
//! other ten thousand.
//!
//! Only the R4 rules the join relies on are checked: resource ids (they become keys),
//! the value sets of `gender`, `status` and `intent` (a typo there is a coding error the
//! sender must hear about), FHIR `date` / `dateTime` syntax (matching compares dates), and
//! the references that tie an order to its patient. Other resource types are counted in
//! [`ParsedBundle::ignored`], not refused: a Bundle may carry Practitioners or Organizations
//! we have no use for.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::{EmrEncounter, EmrOrder, EmrPatient, HumanName, Identifier};

/// Most entries one Bundle may hold: bounds the work (and memory) one request can cause.
pub const MAX_ENTRIES: usize = 100_000;

/// v2-0203, the code system of identifier types (`MR`, `ACSN`, ...).
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// Longest FHIR id (R4 `id` datatype).
const MAX_ID_LEN: usize = 64;

/// One entry that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryError {
    /// Position in `Bundle.entry` (0-based).
    pub index: usize,
    /// The entry's `fullUrl`, when it has one, so the sender can find it.
    pub full_url: Option<String>,
    /// Which field and which rule, e.g. `ServiceRequest.status is missing (required)`.
    pub message: String,
}

/// The usable content of a Bundle, and an account of the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParsedBundle {
    pub patients: Vec<EmrPatient>,
    pub orders: Vec<EmrOrder>,
    pub encounters: Vec<EmrEncounter>,
    /// resourceType → count of entries of types we do not read.
    pub ignored: BTreeMap<String, usize>,
    pub errors: Vec<EntryError>,
}

/// The whole body is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("body is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("body is not a FHIR Bundle: {0}")]
    NotABundle(String),
    #[error("Bundle.type {0:?} is not accepted (transaction, collection or batch)")]
    UnsupportedType(String),
    #[error("Bundle has {count} entries, more than the {max} accepted")]
    TooManyEntries { count: usize, max: usize },
}

/// Bundle types whose entries are resources we can take in. `searchset`, `history` and the
/// response types describe other traffic, and a `document` or `message` needs its own
/// processing rules.
const BUNDLE_TYPES: &[&str] = &["transaction", "collection", "batch"];
pub(crate) const GENDERS: &[&str] = &["male", "female", "other", "unknown"];
pub(crate) const REQUEST_STATUSES: &[&str] = &[
    "draft",
    "active",
    "on-hold",
    "revoked",
    "completed",
    "entered-in-error",
    "unknown",
];
const REQUEST_INTENTS: &[&str] = &[
    "proposal",
    "plan",
    "directive",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
];
const ENCOUNTER_STATUSES: &[&str] = &[
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
];

/// Parses a FHIR R4 Bundle (JSON) of Patients, ServiceRequests and Encounters.
///
/// Entry-level problems are collected in [`ParsedBundle::errors`]; see the module docs for
/// what refuses the whole body.
pub fn parse_bundle(body: &[u8]) -> Result<ParsedBundle, BundleError> {
    let root: Value = serde_json::from_slice(body)?;
    let bundle = root
        .as_object()
        .ok_or_else(|| BundleError::NotABundle("the top level is not a JSON object".into()))?;
    match bundle.get("resourceType") {
        Some(Value::String(t)) if t == "Bundle" => {}
        Some(Value::String(t)) => {
            return Err(BundleError::NotABundle(format!("resourceType is {t:?}")));
        }
        Some(_) => {
            return Err(BundleError::NotABundle(
                "resourceType is not a string".into(),
            ));
        }
        None => return Err(BundleError::NotABundle("resourceType is missing".into())),
    }
    match bundle.get("type") {
        Some(Value::String(t)) if BUNDLE_TYPES.contains(&t.as_str()) => {}
        Some(Value::String(t)) => return Err(BundleError::UnsupportedType(t.clone())),
        Some(other) => return Err(BundleError::UnsupportedType(other.to_string())),
        None => return Err(BundleError::NotABundle("Bundle.type is missing".into())),
    }
    let entries: &[Value] = match bundle.get("entry") {
        None => &[],
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(BundleError::NotABundle(
                "Bundle.entry is not an array".into(),
            ));
        }
    };
    if entries.len() > MAX_ENTRIES {
        return Err(BundleError::TooManyEntries {
            count: entries.len(),
            max: MAX_ENTRIES,
        });
    }

    // First pass: what each fullUrl names, so references by `urn:uuid:` resolve whatever the
    // order of the entries.
    let mut by_full_url: HashMap<&str, (&str, String)> = HashMap::new();
    for entry in entries {
        let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) else {
            continue;
        };
        let Some(resource) = entry.get("resource").and_then(Value::as_object) else {
            continue;
        };
        let Some(kind) = resource.get("resourceType").and_then(Value::as_str) else {
            continue;
        };
        if let Ok(id) = resource_id(resource, Some(full_url)) {
            by_full_url.entry(full_url).or_insert((kind, id));
        }
    }
    let refs = References { by_full_url };

    let mut parsed = ParsedBundle::default();
    // (resourceType, id) → first entry index: a second resource with the same key would make
    // the join depend on which one wins.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut seen_urls: HashMap<&str, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let full_url = entry.get("fullUrl").and_then(Value::as_str);
        let fail = |message: String| EntryError {
            index,
            full_url: full_url.map(str::to_string),
            message,
        };
        let result = (|| -> Result<Option<Parsed>, String> {
            let entry = entry
                .as_object()
                .ok_or_else(|| "entry is not a JSON object".to_string())?;
            if let Some(url) = entry.get("fullUrl")
                && !url.is_string()
            {
                return Err("entry.fullUrl is not a string".into());
            }
            let Some(resource) = entry.get("resource") else {
                // A transaction may delete by URL with no resource; nothing for us to read.
                let method = entry
                    .get("request")
                    .and_then(|r| r.get("method"))
                    .and_then(Value::as_str);
                return match method {
                    Some("DELETE") => Ok(None),
                    _ => Err("entry.resource is missing".into()),
                };
            };
            let resource = resource
                .as_object()
                .ok_or_else(|| "entry.resource is not a JSON object".to_string())?;
            let kind = match resource.get("resourceType") {
                Some(Value::String(k)) if !k.is_empty() => k.as_str(),
                Some(_) => return Err("resource.resourceType is not a non-empty string".into()),
                None => return Err("resource.resourceType is missing".into()),
            };
            if !matches!(kind, "Patient" | "ServiceRequest" | "Encounter") {
                return Ok(Some(Parsed::Ignored(kind.to_string())));
            }
            let id = resource_id(resource, full_url).map_err(|m| format!("{kind}.{m}"))?;
            if let Some(first) = seen.get(&(kind.to_string(), id.clone())) {
                return Err(format!("{kind}.id {id:?} repeats entry {first}"));
            }
            if let Some(url) = full_url
                && let Some(&first) = seen_urls.get(url)
            {
                return Err(format!("fullUrl {url:?} repeats entry {first}"));
            }
            seen.insert((kind.to_string(), id.clone()), index);
            if let Some(url) = full_url {
                seen_urls.insert(url, index);
            }
            let fields = Fields { kind, resource };
            Ok(Some(match kind {
                "Patient" => Parsed::Patient(patient(&fields, id)?),
                "ServiceRequest" => Parsed::Order(order(&fields, id, &refs)?),
                _ => Parsed::Encounter(encounter(&fields, id, &refs)?),
            }))
        })();
        match result {
            Ok(Some(Parsed::Patient(p))) => parsed.patients.push(p),
            Ok(Some(Parsed::Order(o))) => parsed.orders.push(o),
            Ok(Some(Parsed::Encounter(e))) => parsed.encounters.push(e),
            Ok(Some(Parsed::Ignored(kind))) => *parsed.ignored.entry(kind).or_default() += 1,
            Ok(None) => *parsed.ignored.entry("DELETE".into()).or_default() += 1,
            Err(message) => parsed.errors.push(fail(message)),
        }
    }
    Ok(parsed)
}

enum Parsed {
    Patient(EmrPatient),
    Order(EmrOrder),
    Encounter(EmrEncounter),
    Ignored(String),
}

/// `Resource.id`, or for a resource without one the uuid of its `urn:uuid:` fullUrl (how a
/// transaction names resources the server has not numbered yet). The error is the field
/// path after the resource type.
fn resource_id(resource: &Map<String, Value>, full_url: Option<&str>) -> Result<String, String> {
    match resource.get("id") {
        Some(Value::String(id)) if is_fhir_id(id) => Ok(id.clone()),
        Some(Value::String(id)) => Err(format!(
            "id {id:?} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})"
        )),
        Some(_) => Err("id is not a string".into()),
        None => match full_url.and_then(|u| u.strip_prefix("urn:uuid:")) {
            Some(uuid) if is_fhir_id(uuid) => Ok(uuid.to_string()),
            Some(uuid) => Err(format!(
                "id is missing and the fullUrl's uuid {uuid:?} is not a FHIR id"
            )),
            None => Err("id is missing (and the fullUrl is not urn:uuid:)".into()),
        },
    }
}

/// FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The fullUrls of the bundle, for resolving `urn:uuid:` references.
struct References<'a> {
    by_full_url: HashMap<&'a str, (&'a str, String)>,
}

impl References<'_> {
    /// The id of the `target` resource a Reference points at; `Ok(None)` when it points at
    /// another resource type (a Group as an order's subject is allowed by FHIR, it simply
    /// names no patient) or carries no `reference` (a logical reference or display only).
    ///
    /// Accepted forms: `Type/id`, an absolute `.../Type/id` (with an optional
    /// `/_history/n`), and `urn:uuid:x` — resolved through the bundle's fullUrls, or taken as
    /// the id itself when no entry has that fullUrl (this EMR names resources by that same
    /// uuid, and the resource may have come in an earlier bundle).
    fn resolve(&self, field: &str, value: &Value, target: &str) -> Result<Option<String>, String> {
        let reference = match value.get("reference") {
            None => return Ok(None),
            Some(Value::String(r)) => r.trim(),
            Some(_) => return Err(format!("{field}.reference is not a string")),
        };
        if let Some(uuid) = reference.strip_prefix("urn:uuid:") {
            if let Some((kind, id)) = self.by_full_url.get(reference) {
                return Ok((*kind == target).then(|| id.clone()));
            }
            if !is_fhir_id(uuid) {
                return Err(format!(
                    "{field}.reference {reference:?} is not a valid urn:uuid"
                ));
            }
            return Ok(Some(uuid.to_string()));
        }
        if let Some((kind, id)) = self.by_full_url.get(reference) {
            return Ok((*kind == target).then(|| id.clone()));
        }
        let path = match reference.find("/_history/") {
            Some(at) => &reference[..at],
            None => reference,
        };
        let mut segments = path.rsplit('/');
        let (Some(id), Some(kind)) = (segments.next(), segments.next()) else {
            return Err(format!(
                "{field}.reference {reference:?} is neither Type/id nor urn:uuid:"
            ));
        };
        if !kind.starts_with(|c: char| c.is_ascii_uppercase()) {
            return Err(format!(
                "{field}.reference {reference:?} is neither Type/id nor urn:uuid:"
            ));
        }
        if !is_fhir_id(id) {
            return Err(format!(
                "{field}.reference {reference:?}: {id:?} is not a FHIR id"
            ));
        }
        Ok((kind == target).then(|| id.to_string()))
    }
}

/// One resource's fields, with typed getters whose errors name the field.
struct Fields<'a> {
    kind: &'a str,
    resource: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.resource.get(name)
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{}.{name} is not a string", self.kind)),
        }
    }

    fn required_code(&self, name: &str, value_set: &[&str]) -> Result<String, String> {
        match self.string(name)? {
            None => Err(format!("{}.{name} is missing (required)", self.kind)),
            Some(code) => self.code_in(name, code, value_set),
        }
    }

    fn code_in(&self, name: &str, code: &str, value_set: &[&str]) -> Result<String, String> {
        if value_set.contains(&code) {
            Ok(code.to_string())
        } else {
            Err(format!(
                "{}.{name} {code:?} is not in its value set ({})",
                self.kind,
                value_set.join(", ")
            ))
        }
    }

    fn date_time(&self, name: &str) -> Result<Option<String>, String> {
        self.string(name)?
            .map(|v| {
                checked_date_time(v).map_err(|why| format!("{}.{name} {v:?}: {why}", self.kind))
            })
            .transpose()
    }

    fn array(&self, name: &str) -> Result<&'a [Value], String> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(format!("{}.{name} is not an array", self.kind)),
        }
    }
}

fn patient(f: &Fields<'_>, id: String) -> Result<EmrPatient, String> {
    let identifiers = identifiers(f)?;
    let mut names = Vec::new();
    for (i, name) in f.array("name")?.iter().enumerate() {
        names.push(human_name(name).map_err(|m| format!("Patient.name[{i}].{m}"))?);
    }
    let gender = f
        .string("gender")?
        .map(|g| f.code_in("gender", g, GENDERS))
        .transpose()?;
    let birth_date = f
        .string("birthDate")?
        .map(|d| {
            checked_date(d)
                .map(|()| d.to_string())
                .map_err(|why| format!("Patient.birthDate {d:?}: {why}"))
        })
        .transpose()?;
    Ok(EmrPatient {
        id,
        identifiers,
        names,
        birth_date,
        gender,
    })
}

fn order(f: &Fields<'_>, id: String, refs: &References<'_>) -> Result<EmrOrder, String> {
    let status = f.required_code("status", REQUEST_STATUSES)?;
    // Checked for its value set even though the join does not read it: a request with an
    // unknown intent is not one we can classify as an order.
    f.required_code("intent", REQUEST_INTENTS)?;
    let subject = f
        .get("subject")
        .ok_or_else(|| "ServiceRequest.subject is missing (required)".to_string())?;
    if !subject.is_object() {
        return Err("ServiceRequest.subject is not a Reference object".into());
    }
    let patient = refs.resolve("ServiceRequest.subject", subject, "Patient")?;
    let encounter = f
        .get("encounter")
        .map(|e| refs.resolve("ServiceRequest.encounter", e, "Encounter"))
        .transpose()?
        .flatten();
    let (code_system, code, code_display) = match f.get("code") {
        None => (None, None, None),
        Some(concept) => procedure(concept).map_err(|m| format!("ServiceRequest.code.{m}"))?,
    };
    // occurrence[x]: a dateTime, or a Period of which the start is the slot.
    let occurrence = match f.date_time("occurrenceDateTime")? {
        Some(at) => Some(at),
        None => match f.get("occurrencePeriod").and_then(|p| p.get("start")) {
            None => None,
            Some(Value::String(start)) => Some(checked_date_time(start).map_err(|why| {
                format!("ServiceRequest.occurrencePeriod.start {start:?}: {why}")
            })?),
            Some(_) => return Err("ServiceRequest.occurrencePeriod.start is not a string".into()),
        },
    };
    let authored_on = f.date_time("authoredOn")?;
    let requester = f.get("requester").and_then(|r| {
        r.get("display")
            .or_else(|| r.get("reference"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let mut reasons = Vec::new();
    for concept in f.array("reasonCode")? {
        if let Some(text) = concept.get("text").and_then(Value::as_str) {
            reasons.push(text.to_string());
        } else if let Some(codings) = concept.get("coding").and_then(Value::as_array) {
            reasons.extend(
                codings
                    .iter()
                    .filter_map(|c| c.get("display").and_then(Value::as_str))
                    .map(str::to_string),
            );
        }
    }
    Ok(EmrOrder {
        id,
        identifiers: identifiers(f)?,
        patient,
        encounter,
        status,
        code_system,
        code,
        code_display,
        occurrence,
        authored_on,
        requester,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    })
}

fn encounter(f: &Fields<'_>, id: String, refs: &References<'_>) -> Result<EmrEncounter, String> {
    let status = f.required_code("status", ENCOUNTER_STATUSES)?;
    let patient = f
        .get("subject")
        .map(|s| refs.resolve("Encounter.subject", s, "Patient"))
        .transpose()?
        .flatten();
    // R4 Encounter.class is a single Coding.
    let class_code = f
        .get("class")
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let period_start = match f.get("period").and_then(|p| p.get("start")) {
        None => None,
        Some(Value::String(start)) => Some(
            checked_date_time(start)
                .map_err(|why| format!("Encounter.period.start {start:?}: {why}"))?,
        ),
        Some(_) => return Err("Encounter.period.start is not a string".into()),
    };
    Ok(EmrEncounter {
        id,
        patient,
        status,
        class_code,
        period_start,
    })
}

/// `identifier[]`; identifiers without a value are skipped (they identify nothing).
fn identifiers(f: &Fields<'_>) -> Result<Vec<Identifier>, String> {
    let mut out = Vec::new();
    for (i, item) in f.array("identifier")?.iter().enumerate() {
        let field = |name: &str| format!("{}.identifier[{i}].{name}", f.kind);
        if !item.is_object() {
            return Err(format!("{}.identifier[{i}] is not an object", f.kind));
        }
        let value = match item.get("value") {
            None => continue,
            Some(Value::String(v)) => v.clone(),
            Some(_) => return Err(format!("{} is not a string", field("value"))),
        };
        let system = match item.get("system") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(format!("{} is not a string", field("system"))),
        };
        // The v2-0203 coding when there is one (an EMR may add local codings first).
        let codings = item
            .get("type")
            .and_then(|t| t.get("coding"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let type_code = codings
            .iter()
            .find(|c| c.get("system").and_then(Value::as_str) == Some(V2_0203))
            .or_else(|| codings.first())
            .and_then(|c| c.get("code"))
            .and_then(Value::as_str)
            .map(str::to_string);
        out.push(Identifier {
            system,
            value,
            type_code,
        });
    }
    Ok(out)
}

/// A HumanName; the error is the field path inside it.
fn human_name(value: &Value) -> Result<HumanName, String> {
    if !value.is_object() {
        return Err("is not an object".into());
    }
    let string = |name: &str| match value.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name} is not a string")),
    };
    let given = match value.get("given") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "given has a value that is not a string".to_string())?,
        Some(_) => return Err("given is not an array".into()),
    };
    Ok(HumanName {
        family: string("family")?,
        given,
        text: string("text")?,
    })
}

type Procedure = (Option<String>, Option<String>, Option<String>);

/// A CodeableConcept's first coding (system, code, display); the display falls back to the
/// text, so a procedure written only as text still reaches the join's modality check.
fn procedure(concept: &Value) -> Result<Procedure, String> {
    if !concept.is_object() {
        return Err("is not a CodeableConcept object".into());
    }
    let first = match concept.get("coding") {
        None => None,
        Some(Value::Array(codings)) => codings.first(),
        Some(_) => return Err("coding is not an array".into()),
    };
    let text_of = |v: Option<&Value>, name: &str| match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name} is not a string")),
    };
    let system = text_of(first.and_then(|c| c.get("system")), "coding[0].system")?;
    let code = text_of(first.and_then(|c| c.get("code")), "coding[0].code")?;
    let display = text_of(first.and_then(|c| c.get("display")), "coding[0].display")?;
    let text = text_of(concept.get("text"), "text")?;
    Ok((system, code, display.or(text)))
}

/// FHIR `date`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a real calendar date. `Err` says why not.
pub fn checked_date(value: &str) -> Result<(), &'static str> {
    let b = value.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let number = |r: std::ops::Range<usize>| {
        value
            .get(r)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0)
    };
    const SHAPE: &str = "not a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)";
    if !matches!(b.len(), 4 | 7 | 10) || !digits(0..4) {
        return Err(SHAPE);
    }
    if number(0..4) == 0 {
        return Err("year 0000 does not exist");
    }
    if b.len() >= 7 {
        if b[4] != b'-' || !digits(5..7) {
            return Err(SHAPE);
        }
        if !(1..=12).contains(&number(5..7)) {
            return Err("month out of range");
        }
    }
    if b.len() == 10 {
        if b[7] != b'-' || !digits(8..10) {
            return Err(SHAPE);
        }
        let (y, m, d) = (number(0..4), number(5..7), number(8..10));
        let year = i32::try_from(y).map_err(|_| SHAPE)?;
        if chrono::NaiveDate::from_ymd_opt(year, m, d).is_none() {
            return Err("no such day in that month");
        }
    }
    Ok(())
}

/// FHIR `dateTime`: a [`checked_date`], or `YYYY-MM-DDThh:mm:ss[.f+](Z|±hh:mm)` — with a
/// time, the offset is required (R4), since a time without one cannot be placed. Returns
/// the value unchanged.
pub fn checked_date_time(value: &str) -> Result<String, &'static str> {
    let Some((date, rest)) = value.split_once('T') else {
        checked_date(value)?;
        return Ok(value.to_string());
    };
    if date.len() != 10 {
        return Err("a time needs a full date (YYYY-MM-DD) before the T");
    }
    checked_date(date)?;
    const SHAPE: &str = "not a FHIR dateTime (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm))";
    let (time, offset) = if let Some(time) = rest.strip_suffix('Z') {
        (time, None)
    } else {
        let at = rest
            .rfind(['+', '-'])
            .ok_or("a time needs a time-zone offset (Z or ±hh:mm)")?;
        (&rest[..at], Some(&rest[at + 1..]))
    };
    let two = |s: &str, max: u32| {
        s.len() == 2
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u32>().is_ok_and(|n| n <= max)
    };
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (time, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return Err(SHAPE);
    };
    // Seconds up to 60: FHIR allows a leap second.
    if !(two(h, 23) && two(m, 59) && two(s, 60)) {
        return Err("time out of range or not hh:mm:ss");
    }
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return Err(SHAPE);
    }
    if let Some(offset) = offset {
        let Some((oh, om)) = offset.split_once(':') else {
            return Err("time-zone offset is not ±hh:mm");
        };
        if !(two(oh, 14) && two(om, 59)) {
            return Err("time-zone offset is not ±hh:mm");
        }
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_follow_fhir() {
        for ok in ["2026", "2026-02", "2026-02-28", "2024-02-29"] {
            assert_eq!(checked_date(ok), Ok(()), "{ok}");
        }
        for bad in [
            "26",
            "2026-13",
            "2026-02-30",
            "2026/02/01",
            "0000",
            "2026-2-1",
            "",
        ] {
            assert!(checked_date(bad).is_err(), "{bad}");
        }
        for ok in [
            "2026-03-01",
            "2026-03-01T09:15:00+01:00",
            "2026-03-01T09:15:00.123Z",
            "2026-03-01T23:59:60-05:00",
        ] {
            assert!(checked_date_time(ok).is_ok(), "{ok}");
        }
        for bad in [
            "2026-03-01T09:15:00",
            "2026-03-01T25:00:00Z",
            "2026-03-01T09:15Z",
            "2026-03T09:15:00Z",
            "2026-03-01T09:15:00+1:00",
        ] {
            assert!(checked_date_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_follow_fhir() {
        assert!(is_fhir_id("a-1.B"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a_b"));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }

    #[test]
    fn whole_body_errors() {
        assert!(matches!(parse_bundle(b"{"), Err(BundleError::NotJson(_))));
        assert!(matches!(
            parse_bundle(br#"{"resourceType":"Patient"}"#),
            Err(BundleError::NotABundle(_))
        ));
        assert!(matches!(
            parse_bundle(br#"{"resourceType":"Bundle","type":"searchset"}"#),
            Err(BundleError::UnsupportedType(_))
        ));
        let empty = parse_bundle(br#"{"resourceType":"Bundle","type":"batch"}"#);
        assert_eq!(empty.ok(), Some(ParsedBundle::default()));
        let entries = vec![serde_json::json!({}); MAX_ENTRIES + 1];
        let body = serde_json::json!({"resourceType":"Bundle","type":"collection","entry":entries});
        assert!(matches!(
            parse_bundle(body.to_string().as_bytes()),
            Err(BundleError::TooManyEntries { .. })
        ));
    }
}
