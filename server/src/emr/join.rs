//! The join of studies to orders and patients.
//!
//! A study is tied to the EMR in three steps, each tried only when the one before could not
//! decide; the first that decides records its [`MatchMethod`] and a confidence:
//!
//! 1. **Accession number** (confidence [`CONFIDENCE_ACCESSION`]): the study's
//!    AccessionNumber is an order's `ACSN` identifier. The RIS issued it for that order, so it
//!    names order and patient at once — unless two orders claim it, or the order's patient
//!    contradicts the study (other birth date *and* other identifier), which go to review.
//! 2. **Patient identifier** ([`CONFIDENCE_PATIENT_ID_ORDER`] with an order,
//!    [`CONFIDENCE_PATIENT_ID`] without): the PatientID, normalised
//!    ([`normalise_patient_id`]: the EMR drops padding and adds prefixes), is exactly one
//!    patient's MR identifier under the same issuer: the study's IssuerOfPatientID, mapped
//!    to a FHIR identifier system by `[emr.issuers]` (or an OID / URI as it stands), must be
//!    the identifier's `system` when both are known — `4127` at another hospital is another
//!    person. An issuer known on one side only does not exclude. The order is then that patient's one order that fits the
//!    study (date window, modality, no other accession number).
//! 3. **Demographics** ([`CONFIDENCE_DEMOGRAPHICS`]): the name, compared in every script
//!    and order the EMR writes it, plus birth date and sex when both sides have them; exactly
//!    one patient, then the order as in step 2.
//!
//! Whenever several candidates fit equally the outcome is [`JoinOutcome::Ambiguous`], with
//! the candidates, for a person to decide: a wrong link puts findings in the wrong record,
//! which is worse than no link.
//!
//! [`EmrIndex`] holds the EMR side in hash maps (accession → orders, normalised identifier
//! → patients, name key → patients, patient → orders), built once in O(records), so that
//! joining one study costs a handful of lookups and a scan of one patient's orders.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;

use super::{EmrOrder, EmrPatient, HumanName, MatchMethod, StudyFacts, StudyLink};

/// The RIS issued the accession number for this very order.
pub const CONFIDENCE_ACCESSION: f64 = 1.0;
/// Identifier match, and exactly one fitting order of that patient.
pub const CONFIDENCE_PATIENT_ID_ORDER: f64 = 0.9;
/// Identifier match, and no fitting order (the study was not ordered through this EMR, or
/// its order has not arrived yet).
pub const CONFIDENCE_PATIENT_ID: f64 = 0.85;
/// Name (and birth date or a fitting order) match, no identifier.
pub const CONFIDENCE_DEMOGRAPHICS: f64 = 0.7;

/// v2-0203 identifier types.
const MEDICAL_RECORD: &str = "MR";
const ACCESSION: &str = "ACSN";

/// Tunables of the join (`[emr.join]` in the configuration).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    /// Prefixes the EMR puts before the record number (`MRN4127`, `H-0004127`); compared
    /// without case, the longest that fits is removed.
    pub patient_id_prefixes: Vec<String>,
    /// An order fits a study when its occurrence date is within ±this many days of the study
    /// date (an order scheduled late in the evening may be done after midnight). Negative
    /// values count as 0.
    pub date_window_days: i64,
    /// `[emr.issuers]`: DICOM IssuerOfPatientID → the FHIR identifier system of the same
    /// assigning authority (`"HOSP-A" = "urn:oid:1.2.3"`). An issuer that is itself an OID
    /// or a URI needs no entry; one that is neither and has no entry is not compared.
    pub issuers: BTreeMap<String, String>,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            patient_id_prefixes: vec!["MRN".into(), "H-".into(), "H".into()],
            date_window_days: 1,
            issuers: BTreeMap::new(),
        }
    }
}

/// Whether `text` is an OID (dot-separated numbers, at least two arcs).
pub fn is_oid(text: &str) -> bool {
    text.split('.').count() > 1
        && text
            .split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
}

/// The FHIR identifier system of a DICOM IssuerOfPatientID, when it can be known.
pub fn issuer_system(issuer: &str, config: &JoinConfig) -> Option<String> {
    let issuer = issuer.trim();
    if issuer.is_empty() {
        return None;
    }
    if let Some(system) = config.issuers.get(issuer) {
        return Some(system.trim().to_owned());
    }
    if is_oid(issuer) {
        return Some(format!("urn:oid:{issuer}"));
    }
    if issuer.starts_with("urn:") || issuer.starts_with("http://") || issuer.starts_with("https://")
    {
        return Some(issuer.to_owned());
    }
    None
}

/// The result of joining one study.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum JoinOutcome {
    Linked(StudyLink),
    /// Several candidates fit equally (or the one candidate is contradicted): for review,
    /// never guessed.
    Ambiguous {
        candidates: Vec<StudyLink>,
        reason: String,
    },
    Unmatched {
        reason: String,
    },
}

/// The patient identifier as matching compares it: uppercase, no whitespace, the longest
/// configured prefix removed (with the `-`, `_`, `/`, `:` or `.` after it), leading zeros
/// removed. So `00004127` (DICOM), `4127`, `004127`, `MRN4127`, `mrn 4127` and `H-0004127`
/// are all `4127`.
///
/// A prefix is removed only when a digit or a separator follows it, so that an
/// alphanumeric identifier that merely starts with the same letters (`HX77` under prefix `H`
/// — or a name-like `HANS1`) keeps them. An identifier of zeros only stays `0`.
pub fn normalise_patient_id(id: &str, config: &JoinConfig) -> String {
    let compact: String = id
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect();
    let is_separator = |c: char| matches!(c, '-' | '_' | '/' | ':' | '.');
    let mut rest = compact.as_str();
    let mut best: Option<&str> = None;
    for prefix in &config.patient_id_prefixes {
        let prefix: String = prefix
            .chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_uppercase)
            .collect();
        if prefix.is_empty() {
            continue;
        }
        if let Some(after) = compact.strip_prefix(prefix.as_str())
            && after.starts_with(|c: char| c.is_ascii_digit() || is_separator(c))
            && best.is_none_or(|b| after.len() < b.len())
        {
            best = Some(after);
        }
    }
    if let Some(after) = best {
        rest = after.trim_start_matches(is_separator);
    }
    let digits = rest.trim_start_matches('0');
    if digits.is_empty() && !rest.is_empty() {
        "0".to_string()
    } else {
        digits.to_string()
    }
}

/// Administrative sex on both sides' common ground.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sex {
    Male,
    Female,
    Other,
}

impl Sex {
    fn from_dicom(code: &str) -> Option<Sex> {
        match code.trim() {
            "M" => Some(Sex::Male),
            "F" => Some(Sex::Female),
            "O" => Some(Sex::Other),
            _ => None,
        }
    }

    /// FHIR `unknown` says nothing, so it contradicts nothing.
    fn from_fhir(code: &str) -> Option<Sex> {
        match code {
            "male" => Some(Sex::Male),
            "female" => Some(Sex::Female),
            "other" => Some(Sex::Other),
            _ => None,
        }
    }
}

/// The kinds of imaging procedure, as bits, so that an order mentioning several (PET/CT)
/// fits either.
mod kind {
    pub const CT: u8 = 1;
    pub const RADIOGRAPH: u8 = 1 << 1;
    pub const MR: u8 = 1 << 2;
    pub const US: u8 = 1 << 3;
    pub const MAMMOGRAPHY: u8 = 1 << 4;
    pub const NUCLEAR: u8 = 1 << 5;
}

/// The procedure kinds of a study's modalities; derived objects (SR, SEG, PR, KO, ...) say
/// nothing about what was ordered.
fn study_kinds(modalities: &[String]) -> u8 {
    modalities
        .iter()
        .map(|m| match m.trim().to_ascii_uppercase().as_str() {
            "CT" => kind::CT,
            "DX" | "CR" | "DR" | "RG" => kind::RADIOGRAPH,
            "MR" => kind::MR,
            "US" => kind::US,
            "MG" => kind::MAMMOGRAPHY,
            "NM" | "PT" => kind::NUCLEAR,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// The procedure kinds an order's code or text mentions (`CT Chest`, `XR Chest 2 Views`,
/// `Chest X-ray`, `MRI brain`); 0 when it mentions none we know.
fn order_kinds(order: &EmrOrder) -> u8 {
    let text = [order.code_display.as_deref(), order.code.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut kinds = 0;
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        kinds |= match *word {
            "CT" | "CTA" => kind::CT,
            "COMPUTED" if next == "TOMOGRAPHY" => kind::CT,
            "XR" | "XRAY" | "CXR" | "DX" | "CR" | "RADIOGRAPH" | "RADIOGRAPHS" | "RADIOGRAPHY"
            | "RADIOGRAPHIC" => kind::RADIOGRAPH,
            "X" if next == "RAY" || next == "RAYS" => kind::RADIOGRAPH,
            "MR" | "MRI" | "MRA" => kind::MR,
            "MAGNETIC" if next == "RESONANCE" => kind::MR,
            "US" | "ULTRASOUND" | "SONOGRAPHY" => kind::US,
            "MG" | "MAMMOGRAM" | "MAMMOGRAPHY" | "MAMMO" => kind::MAMMOGRAPHY,
            "NM" | "PET" | "SPECT" | "SCINTIGRAPHY" => kind::NUCLEAR,
            _ => 0,
        };
    }
    kinds
}

/// `YYYYMMDD` (DICOM DA) or the date part of a FHIR `dateTime` (`YYYY-MM-DD...`, the local
/// date as the EMR wrote it: the study date is local too).
fn parse_date(value: &str) -> Option<NaiveDate> {
    let value = value.trim();
    if value.len() >= 10 && value.as_bytes().get(4) == Some(&b'-') {
        NaiveDate::parse_from_str(value.get(..10)?, "%Y-%m-%d").ok()
    } else {
        NaiveDate::parse_from_str(value, "%Y%m%d").ok()
    }
}

/// Uppercase, accents of Latin scripts removed (`Müller` → `MULLER`, `Øster` → `OSTER`),
/// apostrophes dropped (`O'Brien` → `OBRIEN`), other punctuation a word break. Han
/// characters pass unchanged: pinyin and Han are only compared within their script.
fn fold_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let folded = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' | 'ǎ' => "A",
            'æ' => "AE",
            'ç' | 'ć' | 'ĉ' | 'č' => "C",
            'ď' | 'đ' | 'ð' => "D",
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "E",
            'ğ' | 'ģ' => "G",
            'ì' | 'í' | 'î' | 'ï' | 'ī' | 'ı' | 'ǐ' | 'į' => "I",
            'ķ' => "K",
            'ł' | 'ľ' | 'ĺ' | 'ļ' => "L",
            'ñ' | 'ń' | 'ň' | 'ņ' => "N",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' | 'ǒ' => "O",
            'œ' => "OE",
            'ř' | 'ŕ' => "R",
            'ś' | 'š' | 'ş' | 'ș' => "S",
            'ß' => "SS",
            'ť' | 'ţ' | 'ț' => "T",
            'þ' => "TH",
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' | 'ǔ' | 'ǖ' | 'ǘ' | 'ǚ' | 'ǜ' | 'ų' => {
                "U"
            }
            'ý' | 'ÿ' => "Y",
            'ź' | 'ż' | 'ž' => "Z",
            '\'' | '’' | '`' | '´' => "",
            c if c.is_alphanumeric() => {
                out.extend(c.to_uppercase());
                continue;
            }
            _ => " ",
        };
        out.push_str(folded);
    }
    out
}

fn words(text: &str) -> Vec<String> {
    fold_name(text)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The keys under which a name is found: its words sorted (so order and which field holds
/// which part do not matter), and the parts run together (a Han name is written without
/// spaces: `王小东` as text, `王^小东` in DICOM).
fn name_keys_of_parts(parts: &[&str], keys: &mut BTreeSet<String>) {
    let all: Vec<String> = parts.iter().flat_map(|p| words(p)).collect();
    if all.is_empty() {
        return;
    }
    let mut sorted = all.clone();
    sorted.sort_unstable();
    keys.insert(sorted.join(" "));
    keys.insert(all.concat());
}

/// Keys of a FHIR HumanName: from family + given, and from the text.
fn fhir_name_keys(name: &HumanName, keys: &mut BTreeSet<String>) {
    let mut parts: Vec<&str> = name.family.as_deref().into_iter().collect();
    parts.extend(name.given.iter().map(String::as_str));
    name_keys_of_parts(&parts, keys);
    // Given first as well: `王小东` as text is family + given run together.
    let mut reversed: Vec<&str> = name.given.iter().map(String::as_str).collect();
    reversed.extend(name.family.as_deref());
    let run_together: String = reversed.iter().flat_map(|p| words(p)).collect();
    if !run_together.is_empty() {
        keys.insert(run_together);
    }
    if let Some(text) = &name.text {
        name_keys_of_parts(&[text], keys);
    }
}

/// Keys of a DICOM PN: per component group (alphabetic, ideographic, phonetic), from
/// family, given and middle name, with and without the middle name; prefix and suffix
/// (`Dr.`, `Jr.`) are left out as EMRs rarely put them in the name.
fn dicom_name_keys(pn: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for group in pn.trim_end_matches(['\0', ' ']).split('=') {
        let components: Vec<&str> = group.split('^').collect();
        let component = |i: usize| components.get(i).copied().unwrap_or("");
        let (family, given, middle) = (component(0), component(1), component(2));
        name_keys_of_parts(&[family, given, middle], &mut keys);
        name_keys_of_parts(&[family, given], &mut keys);
        let reversed: String = [given, family].iter().flat_map(|p| words(p)).collect();
        if !reversed.is_empty() {
            keys.insert(reversed);
        }
    }
    keys
}

struct IndexedPatient {
    id: String,
    /// Raw MR identifier values (for a join run with other prefixes than the index's).
    mr_values: Vec<String>,
    /// Their systems (the issuer), in the same order.
    mr_systems: Vec<Option<String>>,
    /// The same, normalised with the index's prefixes.
    mr_keys: Vec<String>,
    /// FHIR `date` with its dashes removed (`1980`, `198005`, `19800512`).
    birth_date: Option<String>,
    sex: Option<Sex>,
}

struct IndexedOrder {
    id: String,
    patient: Option<String>,
    accession: Option<String>,
    /// Occurrence date (else the authored date).
    date: Option<NaiveDate>,
    kinds: u8,
}

/// Everything the EMR holds, indexed for matching (hash maps; built once, O(records)).
///
/// Records with the same id supersede earlier ones (the last is kept), as an update would.
/// Orders `entered-in-error` are left out: they never happened.
pub struct EmrIndex {
    /// The prefixes `mr_keys` and `by_patient_id` were normalised with.
    prefixes: Vec<String>,
    patients: Vec<IndexedPatient>,
    orders: Vec<IndexedOrder>,
    patient_by_id: HashMap<String, usize>,
    by_accession: HashMap<String, Vec<usize>>,
    by_patient_id: HashMap<String, Vec<usize>>,
    by_name: HashMap<String, Vec<usize>>,
    /// Patient resource id → that patient's orders (the patient need not be in the index:
    /// the order may have come before its patient).
    orders_of_patient: HashMap<String, Vec<usize>>,
}

impl EmrIndex {
    /// An index whose identifier keys use the default prefixes ([`JoinConfig::default`]).
    pub fn new(patients: &[EmrPatient], orders: &[EmrOrder]) -> EmrIndex {
        EmrIndex::with_config(patients, orders, &JoinConfig::default())
    }

    /// An index whose identifier keys use `config`'s prefixes; join with the same config to
    /// keep identifier lookups O(1) (another config still works, by a scan of all patients).
    pub fn with_config(
        patients: &[EmrPatient],
        orders: &[EmrOrder],
        config: &JoinConfig,
    ) -> EmrIndex {
        let mut index = EmrIndex {
            prefixes: config.patient_id_prefixes.clone(),
            patients: Vec::with_capacity(patients.len()),
            orders: Vec::with_capacity(orders.len()),
            patient_by_id: HashMap::with_capacity(patients.len()),
            by_accession: HashMap::with_capacity(orders.len()),
            by_patient_id: HashMap::with_capacity(patients.len()),
            by_name: HashMap::with_capacity(patients.len() * 4),
            orders_of_patient: HashMap::with_capacity(patients.len()),
        };
        // Last record per id wins.
        let mut last_patient: HashMap<&str, usize> = HashMap::with_capacity(patients.len());
        for (i, p) in patients.iter().enumerate() {
            last_patient.insert(&p.id, i);
        }
        for (i, p) in patients.iter().enumerate() {
            if last_patient.get(p.id.as_str()) != Some(&i) {
                continue;
            }
            let slot = index.patients.len();
            // An identifier without a type is taken as the record number: many EMRs leave
            // the type out of their one local identifier.
            let (mr_values, mr_systems): (Vec<String>, Vec<Option<String>>) = p
                .identifiers
                .iter()
                .filter(|id| {
                    id.type_code
                        .as_deref()
                        .is_none_or(|t| t.eq_ignore_ascii_case(MEDICAL_RECORD))
                })
                .map(|id| {
                    let system = id
                        .system
                        .as_deref()
                        .map(str::trim)
                        .filter(|s| !s.is_empty());
                    (id.value.clone(), system.map(str::to_owned))
                })
                .unzip();
            let mut mr_keys: Vec<String> = mr_values
                .iter()
                .map(|v| normalise_patient_id(v, config))
                .filter(|k| !k.is_empty())
                .collect();
            mr_keys.sort_unstable();
            mr_keys.dedup();
            for key in &mr_keys {
                index
                    .by_patient_id
                    .entry(key.clone())
                    .or_default()
                    .push(slot);
            }
            let mut keys = BTreeSet::new();
            for name in &p.names {
                fhir_name_keys(name, &mut keys);
            }
            for key in keys {
                index.by_name.entry(key).or_default().push(slot);
            }
            index.patient_by_id.insert(p.id.clone(), slot);
            index.patients.push(IndexedPatient {
                id: p.id.clone(),
                mr_values,
                mr_systems,
                mr_keys,
                birth_date: p
                    .birth_date
                    .as_deref()
                    .map(|d| d.chars().filter(char::is_ascii_digit).collect()),
                sex: p.gender.as_deref().and_then(Sex::from_fhir),
            });
        }

        let mut last_order: HashMap<&str, usize> = HashMap::with_capacity(orders.len());
        for (i, o) in orders.iter().enumerate() {
            last_order.insert(&o.id, i);
        }
        for (i, o) in orders.iter().enumerate() {
            if last_order.get(o.id.as_str()) != Some(&i) || o.status == "entered-in-error" {
                continue;
            }
            let slot = index.orders.len();
            let accession = o
                .identifiers
                .iter()
                .find(|id| id.type_code.as_deref() == Some(ACCESSION))
                .map(|id| id.value.trim().to_string())
                .filter(|v| !v.is_empty());
            if let Some(accession) = &accession {
                index
                    .by_accession
                    .entry(accession.clone())
                    .or_default()
                    .push(slot);
            }
            if let Some(patient) = &o.patient {
                index
                    .orders_of_patient
                    .entry(patient.clone())
                    .or_default()
                    .push(slot);
            }
            index.orders.push(IndexedOrder {
                id: o.id.clone(),
                patient: o.patient.clone(),
                accession,
                date: o
                    .occurrence
                    .as_deref()
                    .or(o.authored_on.as_deref())
                    .and_then(parse_date),
                kinds: order_kinds(o),
            });
        }
        index
    }

    /// Number of patients and orders indexed (after superseded and `entered-in-error`
    /// records were left out), for logs and the data-quality report.
    pub fn counts(&self) -> (usize, usize) {
        (self.patients.len(), self.orders.len())
    }

    /// Patients whose MR identifier normalises to `key` under `config`.
    fn patients_with_id(&self, key: &str, config: &JoinConfig) -> Vec<usize> {
        if config.patient_id_prefixes == self.prefixes {
            return self.by_patient_id.get(key).cloned().unwrap_or_default();
        }
        (0..self.patients.len())
            .filter(|&i| self.patient_has_id(i, key, config))
            .collect()
    }

    /// Whether the patient's identifier `key` can be the study's, issuers considered: some
    /// MR identifier with that key has no system, or the study's issuer is unknown, or they
    /// are the same.
    fn issuer_fits(
        &self,
        patient: usize,
        key: &str,
        study_system: Option<&str>,
        config: &JoinConfig,
    ) -> bool {
        let Some(study_system) = study_system else {
            return true;
        };
        let p = &self.patients[patient];
        p.mr_values
            .iter()
            .zip(&p.mr_systems)
            .filter(|(v, _)| normalise_patient_id(v, config) == key)
            .any(|(_, system)| system.as_deref().is_none_or(|s| s == study_system))
    }

    fn patient_has_id(&self, patient: usize, key: &str, config: &JoinConfig) -> bool {
        let p = &self.patients[patient];
        if config.patient_id_prefixes == self.prefixes {
            p.mr_keys.iter().any(|k| k == key)
        } else {
            p.mr_values
                .iter()
                .any(|v| normalise_patient_id(v, config) == key)
        }
    }
}

/// The study as matching reads it, computed once per study.
struct Study<'a> {
    facts: &'a StudyFacts,
    id_key: String,
    date: Option<NaiveDate>,
    kinds: u8,
    birth_date: String,
    sex: Option<Sex>,
    name_keys: BTreeSet<String>,
}

impl Study<'_> {
    /// `Some(true)` when both sides have a birth date and they differ; `Some(false)` when they
    /// agree; `None` when one side has none. A partial FHIR date (`1980`, `1980-05`) agrees
    /// with every day it covers.
    fn birth_date_differs(&self, p: &IndexedPatient) -> Option<bool> {
        let theirs = p.birth_date.as_deref().filter(|d| d.len() >= 4)?;
        if self.birth_date.len() != 8 {
            return None;
        }
        Some(!self.birth_date.starts_with(theirs))
    }

    fn sex_differs(&self, p: &IndexedPatient) -> bool {
        matches!((self.sex, p.sex), (Some(a), Some(b)) if a != b)
    }
}

fn link(
    study: &StudyFacts,
    patient: &str,
    order: Option<&str>,
    method: MatchMethod,
    confidence: f64,
) -> StudyLink {
    StudyLink {
        study_instance_uid: study.study_instance_uid.clone(),
        patient: patient.to_string(),
        order: order.map(str::to_string),
        method,
        confidence,
    }
}

/// Joins one study to the EMR: see the module docs for the steps.
pub fn join_study(study: &StudyFacts, index: &EmrIndex, config: &JoinConfig) -> JoinOutcome {
    let s = Study {
        facts: study,
        id_key: normalise_patient_id(&study.patient_id, config),
        date: parse_date(&study.study_date),
        kinds: study_kinds(&study.modalities),
        birth_date: study
            .patient_birth_date
            .chars()
            .filter(char::is_ascii_digit)
            .collect(),
        sex: Sex::from_dicom(&study.patient_sex),
        name_keys: dicom_name_keys(&study.patient_name),
    };
    // Why the steps that did not decide did not: the reason of an Unmatched outcome.
    let mut notes: Vec<String> = Vec::new();

    if let Some(outcome) = by_accession(&s, index, config, &mut notes) {
        return outcome;
    }
    if let Some(outcome) = by_patient_id(&s, index, config, &mut notes) {
        return outcome;
    }
    by_demographics(&s, index, config, notes)
}

/// Step 1: the accession number.
fn by_accession(
    s: &Study<'_>,
    index: &EmrIndex,
    config: &JoinConfig,
    notes: &mut Vec<String>,
) -> Option<JoinOutcome> {
    let accession = s.facts.accession_number.trim();
    if accession.is_empty() {
        notes.push("the study has no accession number".into());
        return None;
    }
    let Some(slots) = index.by_accession.get(accession) else {
        notes.push(format!("no order has accession {accession:?}"));
        return None;
    };
    let mut claimed: Vec<(&str, &str)> = slots
        .iter()
        .filter_map(|&o| {
            let order = &index.orders[o];
            Some((order.patient.as_deref()?, order.id.as_str()))
        })
        .collect();
    claimed.sort_unstable();
    let candidates = || {
        claimed
            .iter()
            .map(|(p, o)| {
                link(
                    s.facts,
                    p,
                    Some(o),
                    MatchMethod::Accession,
                    CONFIDENCE_ACCESSION,
                )
            })
            .collect::<Vec<_>>()
    };
    let patients: BTreeSet<&str> = claimed.iter().map(|(p, _)| *p).collect();
    match (claimed.as_slice(), patients.len()) {
        ([], _) => {
            notes.push(format!(
                "the order with accession {accession:?} names no patient"
            ));
            None
        }
        (_, 2..) => Some(JoinOutcome::Ambiguous {
            candidates: candidates(),
            reason: format!(
                "accession on two patients: {accession:?} is on orders of {} patients",
                patients.len()
            ),
        }),
        ([_, _, ..], _) => Some(JoinOutcome::Ambiguous {
            candidates: candidates(),
            reason: format!(
                "accession {accession:?} is on {} orders of one patient",
                claimed.len()
            ),
        }),
        ([(patient, order)], _) => {
            // The RIS number is trusted unless the order's patient is clearly someone else:
            // another birth date and another identifier.
            if let Some(&p) = index.patient_by_id.get(*patient)
                && s.birth_date_differs(&index.patients[p]) == Some(true)
                && !s.id_key.is_empty()
                && !index.patients[p].mr_values.is_empty()
                && !index.patient_has_id(p, &s.id_key, config)
            {
                return Some(JoinOutcome::Ambiguous {
                    candidates: candidates(),
                    reason: format!(
                        "order {order} has accession {accession:?} but its patient {patient} has another birth date and identifier than the study"
                    ),
                });
            }
            Some(JoinOutcome::Linked(link(
                s.facts,
                patient,
                Some(order),
                MatchMethod::Accession,
                CONFIDENCE_ACCESSION,
            )))
        }
    }
}

/// Orders of `patient` that fit the study: dated within the window, of a procedure kind
/// the study's modalities fit (unknown on either side fits), and not carrying an accession
/// number other than the study's — such an order was issued for another study. Sorted by id
/// so that the outcome does not depend on the order records arrived in.
fn fitting_orders<'i>(
    s: &Study<'_>,
    patient: &str,
    index: &'i EmrIndex,
    config: &JoinConfig,
) -> Vec<&'i IndexedOrder> {
    let Some(study_date) = s.date else {
        return Vec::new();
    };
    let window = config.date_window_days.max(0);
    let accession = s.facts.accession_number.trim();
    let mut fitting: Vec<&IndexedOrder> = index
        .orders_of_patient
        .get(patient)
        .into_iter()
        .flatten()
        .map(|&o| &index.orders[o])
        .filter(|o| {
            o.date
                .is_some_and(|d| (d - study_date).num_days().abs() <= window)
        })
        .filter(|o| s.kinds == 0 || o.kinds == 0 || s.kinds & o.kinds != 0)
        .filter(|o| match &o.accession {
            Some(theirs) => accession.is_empty() || theirs == accession,
            None => true,
        })
        .collect();
    fitting.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    fitting
}

/// The outcome once the patient is known: the one fitting order, or the patient alone, or
/// the fitting orders for review.
fn with_order(
    s: &Study<'_>,
    patient: &str,
    index: &EmrIndex,
    config: &JoinConfig,
    method: MatchMethod,
    (with_order, without): (f64, f64),
) -> JoinOutcome {
    let fitting = fitting_orders(s, patient, index, config);
    match fitting.as_slice() {
        [] => JoinOutcome::Linked(link(s.facts, patient, None, method, without)),
        [order] => JoinOutcome::Linked(link(s.facts, patient, Some(&order.id), method, with_order)),
        several => JoinOutcome::Ambiguous {
            candidates: several
                .iter()
                .map(|o| link(s.facts, patient, Some(&o.id), method, with_order))
                .collect(),
            reason: format!(
                "patient {patient} has {} orders that fit the study's date and modality",
                several.len()
            ),
        },
    }
}

fn name_matches(s: &Study<'_>, index: &EmrIndex, patient: usize) -> bool {
    s.name_keys
        .iter()
        .any(|k| index.by_name.get(k).is_some_and(|ps| ps.contains(&patient)))
}

/// Step 2: the normalised patient identifier.
fn by_patient_id(
    s: &Study<'_>,
    index: &EmrIndex,
    config: &JoinConfig,
    notes: &mut Vec<String>,
) -> Option<JoinOutcome> {
    if s.id_key.is_empty() {
        notes.push("the study has no patient id".into());
        return None;
    }
    let study_system = issuer_system(&s.facts.issuer_of_patient_id, config);
    let (found, other_issuer): (Vec<usize>, Vec<usize>) = index
        .patients_with_id(&s.id_key, config)
        .into_iter()
        .partition(|&p| index.issuer_fits(p, &s.id_key, study_system.as_deref(), config));
    match found.as_slice() {
        [] if !other_issuer.is_empty() => {
            notes.push(format!(
                "patient id {:?} is on {} EMR patient(s) under another issuer than {:?}",
                s.facts.patient_id,
                other_issuer.len(),
                s.facts.issuer_of_patient_id.trim()
            ));
            None
        }
        [] => {
            notes.push(format!(
                "patient id {:?} (normalised {:?}) is no EMR patient's",
                s.facts.patient_id, s.id_key
            ));
            None
        }
        [p] => {
            let patient = &index.patients[*p];
            if s.birth_date_differs(patient) == Some(true) && !name_matches(s, index, *p) {
                return Some(JoinOutcome::Ambiguous {
                    candidates: vec![link(
                        s.facts,
                        &patient.id,
                        None,
                        MatchMethod::PatientId,
                        CONFIDENCE_PATIENT_ID,
                    )],
                    reason: format!(
                        "patient id {:?} is patient {}'s, but birth date and name differ",
                        s.facts.patient_id, patient.id
                    ),
                });
            }
            Some(with_order(
                s,
                &patient.id,
                index,
                config,
                MatchMethod::PatientId,
                (CONFIDENCE_PATIENT_ID_ORDER, CONFIDENCE_PATIENT_ID),
            ))
        }
        several => {
            let mut candidates: Vec<StudyLink> = several
                .iter()
                .map(|&p| {
                    link(
                        s.facts,
                        &index.patients[p].id,
                        None,
                        MatchMethod::PatientId,
                        CONFIDENCE_PATIENT_ID,
                    )
                })
                .collect();
            candidates.sort_unstable_by(|a, b| a.patient.cmp(&b.patient));
            Some(JoinOutcome::Ambiguous {
                candidates,
                reason: format!(
                    "patient id {:?} (normalised {:?}) is on {} EMR patients",
                    s.facts.patient_id,
                    s.id_key,
                    several.len()
                ),
            })
        }
    }
}

/// Step 3: name, birth date and sex.
fn by_demographics(
    s: &Study<'_>,
    index: &EmrIndex,
    config: &JoinConfig,
    mut notes: Vec<String>,
) -> JoinOutcome {
    let mut named: BTreeSet<usize> = BTreeSet::new();
    for key in &s.name_keys {
        if let Some(ps) = index.by_name.get(key) {
            named.extend(ps);
        }
    }
    let fitting: Vec<usize> = named
        .iter()
        .copied()
        .filter(|&p| {
            let patient = &index.patients[p];
            s.birth_date_differs(patient) != Some(true) && !s.sex_differs(patient)
        })
        .collect();
    let unmatched = |mut notes: Vec<String>, why: String| {
        notes.push(why);
        JoinOutcome::Unmatched {
            reason: notes.join("; "),
        }
    };
    match fitting.as_slice() {
        [] if named.is_empty() => unmatched(
            notes,
            format!("no EMR patient has the name {:?}", s.facts.patient_name),
        ),
        [] => unmatched(
            notes,
            format!(
                "{} EMR patient(s) named {:?}, each with another birth date or sex",
                named.len(),
                s.facts.patient_name
            ),
        ),
        [p] => {
            let patient = &index.patients[*p];
            let confirmed = s.birth_date_differs(patient) == Some(false);
            if !confirmed && fitting_orders(s, &patient.id, index, config).is_empty() {
                notes.push(format!(
                    "only the name agrees with patient {} (no birth date to compare, no fitting order)",
                    patient.id
                ));
                return JoinOutcome::Ambiguous {
                    candidates: vec![link(
                        s.facts,
                        &patient.id,
                        None,
                        MatchMethod::Demographics,
                        CONFIDENCE_DEMOGRAPHICS,
                    )],
                    reason: notes.join("; "),
                };
            }
            with_order(
                s,
                &patient.id,
                index,
                config,
                MatchMethod::Demographics,
                (CONFIDENCE_DEMOGRAPHICS, CONFIDENCE_DEMOGRAPHICS),
            )
        }
        several => {
            notes.push(format!(
                "{} EMR patients fit the name {:?}, birth date and sex",
                several.len(),
                s.facts.patient_name
            ));
            let mut candidates: Vec<StudyLink> = several
                .iter()
                .map(|&p| {
                    link(
                        s.facts,
                        &index.patients[p].id,
                        None,
                        MatchMethod::Demographics,
                        CONFIDENCE_DEMOGRAPHICS,
                    )
                })
                .collect();
            candidates.sort_unstable_by(|a, b| a.patient.cmp(&b.patient));
            JoinOutcome::Ambiguous {
                candidates,
                reason: notes.join("; "),
            }
        }
    }
}

/// Whether a DICOM PN (any component group) and the EMR's names are the same name, in any
/// word order and field assignment, without case or Latin accents; pinyin and Han only
/// match within their script. The rule step 3 applies, for review screens and tests.
pub fn names_match(dicom_pn: &str, names: &[HumanName]) -> bool {
    let ours = dicom_name_keys(dicom_pn);
    let mut theirs = BTreeSet::new();
    for name in names {
        fhir_name_keys(name, &mut theirs);
    }
    !ours.is_disjoint(&theirs)
}
