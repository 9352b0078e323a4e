//! The EMR side of a generated set: a FHIR R4 `Bundle` (type `collection`) of `Patient`,
//! `Encounter` and `ServiceRequest` resources for the patients and studies of a [`Manifest`],
//! written with the inconsistencies a real PACS↔EMR join meets, and the truth of which
//! order each study answers ([`TruePair`]).
//!
//! # Resources
//! - one `Patient` per patient that has at least one study: an MR identifier in
//!   [`PATIENT_ID_SYSTEM`], a `HumanName` (family, given, text), `gender`, `birthDate`;
//! - one `Encounter` per patient and order date (orders of the same visit share it): status
//!   `finished`, class `AMB` (75 %) or `IMP`, `period.start` on that date;
//! - one `ServiceRequest` per order: status `completed` (answered by a study) or `active`
//!   (no study), intent `order`, category SNOMED 363679005 "Imaging", a LOINC procedure code,
//!   subject, encounter, `occurrenceDateTime` and `authoredOn` with a time-zone offset,
//!   `requester.display` from the study's referring physician ("Given Family"), a placer
//!   order number (`PLAC`, [`PLACER_SYSTEM`]) and the accession number (`ACSN`,
//!   [`ACCESSION_SYSTEM`]).
//!
//! Every resource id is a UUID drawn from the rng; every entry's `fullUrl` is
//! `urn:uuid:<id>` and every reference uses that same form. Entries are grouped by type
//! (patients, encounters, orders) and shuffled within each group, so that their order gives
//! nothing away about the manifest.
//!
//! # Inconsistencies and how they are chosen
//! `quota(k, r)` below is `max(1, round(k · r))`: every class appears at least once as soon
//! as the set has room for it, and roughly at rate `r` in larger sets. `P` is the number of
//! exported patients, `n` the number of studies.
//! 1. **Patient identifier format** (per patient). The DICOM PatientID is the MRN zero-padded
//!    to 8 digits; the EMR writes it unpadded (`4127`), padded to 6 (`004127`), with a prefix
//!    (`MRN4127`) or as `H-` plus 7 digits (`H-0004127`). Each of those four formats is given
//!    to at least one patient (as far as `P` allows); every other patient draws by weight
//!    among them and the DICOM form itself (`00004127`).
//! 2. **Name order and script** (per patient). Latin names: text given-first (`Hans Müller`,
//!    the usual FHIR rendering), text family-first (`Müller Hans`), uppercase without accents
//!    (`MULLER HANS`, in `family`/`given` as well), or family and given swapped in the fields
//!    (family `Hans`, given `Müller`). Chinese names: Han characters only (`王小东`, family
//!    `王`), pinyin only family-first (`Wang Xiaodong`), pinyin given-first
//!    (`Xiaodong Wang`), or both an official Han name and a usual pinyin name. Every variant
//!    except the plain ones (given-first Latin, Han + pinyin) goes to at least one patient of
//!    the right script; the rest are drawn by weight.
//! 3. **Missing birth date** on `quota(P, 0.08)` patients and, drawn independently,
//!    **missing gender** on `quota(P, 0.08)` patients.
//! 4. **Studies with no order**: `quota(n, 0.10)` studies (only when `n ≥ 2`, and never all
//!    of them) get no `ServiceRequest`; their [`TruePair::service_request_id`] is `None`.
//! 5. **Orders missing the accession number**: `quota(n, 0.10)` of the ordered studies get no
//!    `ACSN` identifier (the placer number is still there).
//! 6. **Two orders on the same day**: `quota(n, 0.05)` ordered studies get a second order
//!    for the same patient, date, encounter and requester, of the other kind (a chest
//!    radiograph beside a CT, a CT beside a radiograph), 30–150 minutes apart, with its own
//!    accession number and no study (status `active`).
//! 7. **Orders with no study**: `quota(n, 0.10)` orders in all answer no study (status
//!    `active`, with an accession number no study has): the same-day orders of item 6, and
//!    the remainder as follow-ups for random exported patients 1–45 days after a random
//!    study's date.
//!
//! Times are those of an EMR, not of the modality: `occurrenceDateTime` is the scheduled slot
//! (the study time rounded down to 15 minutes), `authoredOn` 20–240 minutes earlier on the
//! same date, both in Central European time (`+01:00`, `+02:00` in summer).
//!
//! Studies whose `patient_index` is out of range are left out of the export and of the true
//! pairs; unparseable dates or times leave the corresponding FHIR fields out (a date without a
//! time is written as a date). Nothing here panics on manifest content.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike};
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ground_truth::{Manifest, Modality, StudyRecord};
use crate::patient::{PATIENT_ID_SYSTEM, Patient};

/// File name of the FHIR Bundle at the output root.
pub const EMR_BUNDLE_FILE: &str = "emr_bundle.json";
/// File name of the true study↔order pairs at the output root.
pub const TRUE_PAIRS_FILE: &str = "true_pairs.json";
/// Identifier system of the accession numbers (the RIS that issues them).
pub const ACCESSION_SYSTEM: &str = "urn:oid:2.25.4224301201031992151317141002";
/// Identifier system of the placer order numbers (the order-entry system).
pub const PLACER_SYSTEM: &str = "urn:oid:2.25.4224301201031992151317141003";

const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";

/// The EMR export of one set.
#[derive(Debug, Clone, PartialEq)]
pub struct EmrExport {
    /// FHIR R4 Bundle, type `collection`.
    pub bundle: Value,
    /// One pair per exported study, in manifest order.
    pub true_pairs: Vec<TruePair>,
    /// Also list orders with no study (service_request_id of orders that no study answers).
    pub orders_without_study: Vec<String>,
}

/// Which order (if any) a study answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TruePair {
    pub study_instance_uid: String,
    /// As in the DICOM study.
    pub accession_number: String,
    /// FHIR `ServiceRequest.id`; `None` = the study has no order.
    pub service_request_id: Option<String>,
    /// FHIR `Patient.id` of the study's patient.
    pub patient_resource_id: String,
}

/// The JSON written to [`TRUE_PAIRS_FILE`]: `{"pairs": [...], "orders_without_study": [...]}`.
pub fn true_pairs_document(export: &EmrExport) -> Value {
    json!({
        "pairs": export.true_pairs,
        "orders_without_study": export.orders_without_study,
    })
}

/// How the EMR writes a patient's MRN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdFormat {
    /// `00004127`, as the DICOM PatientID.
    Dicom,
    /// `4127`.
    Unpadded,
    /// `004127`.
    Padded6,
    /// `MRN4127`.
    MrnPrefix,
    /// `H-0004127`.
    HospitalPrefix,
}

impl IdFormat {
    fn render(self, mrn: u32) -> String {
        match self {
            IdFormat::Dicom => format!("{mrn:08}"),
            IdFormat::Unpadded => mrn.to_string(),
            IdFormat::Padded6 => format!("{mrn:06}"),
            IdFormat::MrnPrefix => format!("MRN{mrn}"),
            IdFormat::HospitalPrefix => format!("H-{mrn:07}"),
        }
    }
}

const ID_REQUIRED: &[IdFormat] = &[
    IdFormat::Unpadded,
    IdFormat::Padded6,
    IdFormat::MrnPrefix,
    IdFormat::HospitalPrefix,
];
const ID_WEIGHTS: &[(IdFormat, u32)] = &[
    (IdFormat::Dicom, 2),
    (IdFormat::Unpadded, 3),
    (IdFormat::Padded6, 1),
    (IdFormat::MrnPrefix, 1),
    (IdFormat::HospitalPrefix, 1),
];

/// How the EMR writes a patient's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameStyle {
    /// Latin, text "Given Family".
    GivenFirst,
    /// Latin, text "Family Given".
    FamilyFirstText,
    /// Latin, uppercase ASCII, "FAMILY GIVEN".
    UpperAscii,
    /// Latin, family and given swapped in the fields.
    SwappedFields,
    /// Chinese, Han characters only.
    HanOnly,
    /// Chinese, pinyin only, family first.
    PinyinOnly,
    /// Chinese, pinyin only, given first.
    PinyinGivenFirst,
    /// Chinese, an official Han name and a usual pinyin name.
    HanAndPinyin,
}

const LATIN_REQUIRED: &[NameStyle] = &[
    NameStyle::FamilyFirstText,
    NameStyle::UpperAscii,
    NameStyle::SwappedFields,
];
const LATIN_WEIGHTS: &[(NameStyle, u32)] = &[
    (NameStyle::GivenFirst, 7),
    (NameStyle::FamilyFirstText, 2),
    (NameStyle::UpperAscii, 2),
    (NameStyle::SwappedFields, 1),
];
const CHINESE_REQUIRED: &[NameStyle] = &[
    NameStyle::HanOnly,
    NameStyle::PinyinOnly,
    NameStyle::PinyinGivenFirst,
];
const CHINESE_WEIGHTS: &[(NameStyle, u32)] = &[
    (NameStyle::HanAndPinyin, 3),
    (NameStyle::HanOnly, 2),
    (NameStyle::PinyinOnly, 2),
    (NameStyle::PinyinGivenFirst, 1),
];

/// A LOINC imaging procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loinc {
    code: &'static str,
    display: &'static str,
}

const CT_CHEST: Loinc = Loinc {
    code: "24627-2",
    display: "CT Chest",
};
const CT_CHEST_WO: Loinc = Loinc {
    code: "29252-4",
    display: "CT Chest WO contrast",
};
const XR_CHEST_1V: Loinc = Loinc {
    code: "36554-4",
    display: "XR Chest Single view",
};
const XR_CHEST_2V: Loinc = Loinc {
    code: "36643-5",
    display: "XR Chest 2 Views",
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Procedure {
    Loinc(Loinc),
    /// A procedure we have no code for: the study description as text.
    Text(String),
}

impl Procedure {
    /// The order code a study of this modality and description was ordered with.
    fn for_study(study: &StudyRecord) -> Procedure {
        let description = study.study_description.to_ascii_uppercase();
        let body_part = study.body_part_examined.trim().to_ascii_uppercase();
        let chest = body_part.is_empty() || body_part == "CHEST" || description.contains("CHEST");
        if !chest {
            let text = match study.study_description.trim() {
                "" => study.modality.code().to_string(),
                text => text.to_string(),
            };
            return Procedure::Text(text);
        }
        match study.modality {
            Modality::Ct if description.contains("WITHOUT") || description.contains(" WO") => {
                Procedure::Loinc(CT_CHEST_WO)
            }
            Modality::Ct => Procedure::Loinc(CT_CHEST),
            Modality::Dx | Modality::Cr
                if description.contains("2 VIEW") || description.contains("LAT") =>
            {
                Procedure::Loinc(XR_CHEST_2V)
            }
            Modality::Dx | Modality::Cr => Procedure::Loinc(XR_CHEST_1V),
        }
    }

    fn to_fhir(&self) -> Value {
        match self {
            Procedure::Loinc(l) => json!({
                "coding": [{ "system": LOINC, "code": l.code, "display": l.display }],
                "text": l.display,
            }),
            Procedure::Text(text) => json!({ "text": text }),
        }
    }
}

/// A point in local time; `time` is `None` when only the date is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    date: NaiveDate,
    time: Option<NaiveTime>,
}

impl Stamp {
    /// FHIR `dateTime`: with seconds and offset when the time is known, else the date.
    fn to_fhir(self) -> String {
        match self.time {
            Some(time) => format!(
                "{}T{}{}",
                self.date.format("%Y-%m-%d"),
                time.format("%H:%M:%S"),
                central_european_offset(self.date.and_time(time))
            ),
            None => self.date.format("%Y-%m-%d").to_string(),
        }
    }

    /// Moved by `minutes`, but never off its date (a shift that would cross midnight goes the
    /// other way, or stops at the day's edge).
    fn shifted_within_day(self, minutes: i64) -> Stamp {
        let Some(time) = self.time else { return self };
        let start = self.date.and_time(time);
        let candidates = [
            start + TimeDelta::minutes(minutes),
            start - TimeDelta::minutes(minutes),
        ];
        let time = candidates
            .into_iter()
            .find(|t| t.date() == self.date)
            .map(|t| t.time())
            .unwrap_or(time);
        Stamp {
            date: self.date,
            time: Some(time),
        }
    }
}

/// `+01:00` (CET) or `+02:00` (CEST, last Sunday of March 02:00 to last Sunday of October
/// 03:00): the EMR exports local time with its offset, and the offset changes in summer.
fn central_european_offset(local: NaiveDateTime) -> &'static str {
    let year = local.year();
    let summer = (|| {
        let start = last_sunday(year, 3)?.and_time(NaiveTime::from_hms_opt(2, 0, 0)?);
        let end = last_sunday(year, 10)?.and_time(NaiveTime::from_hms_opt(3, 0, 0)?);
        Some(local >= start && local < end)
    })();
    if summer == Some(true) {
        "+02:00"
    } else {
        "+01:00"
    }
}

fn last_sunday(year: i32, month: u32) -> Option<NaiveDate> {
    let next_month = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    let last = next_month.pred_opt()?;
    last.checked_sub_days(Days::new(u64::from(last.weekday().num_days_from_sunday())))
}

/// DICOM DA (`YYYYMMDD`).
fn parse_da(value: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(value.trim(), "%Y%m%d").ok()
}

/// DICOM TM (`HH`, `HHMM`, `HHMMSS`, optionally `.FFFFFF`).
fn parse_tm(value: &str) -> Option<NaiveTime> {
    let main = value.trim().split('.').next().unwrap_or("");
    if !matches!(main.len(), 2 | 4 | 6) || !main.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All ASCII digits, so byte slicing is on char boundaries.
    let field = |range: std::ops::Range<usize>| main.get(range).and_then(|s| s.parse::<u32>().ok());
    let hour = field(0..2)?;
    let minute = if main.len() >= 4 { field(2..4)? } else { 0 };
    // DICOM allows a leap second (60); chrono does not.
    let second = if main.len() >= 6 {
        field(4..6)?.min(59)
    } else {
        0
    };
    NaiveTime::from_hms_opt(hour, minute, second)
}

/// A DICOM PN `Family^Given^Middle^Prefix^Suffix` as "Given Middle Family" (first non-empty
/// component group), or `None` when it names no one.
fn person_display(pn: &str) -> Option<String> {
    pn.split('=').find_map(|group| {
        let parts: Vec<&str> = group.split('^').map(str::trim).collect();
        let component = |i: usize| parts.get(i).copied().unwrap_or("");
        let words: Vec<&str> = [component(1), component(2), component(0)]
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect();
        (!words.is_empty()).then(|| words.join(" "))
    })
}

/// Uppercase with the accents of Latin scripts removed, as old registration systems store
/// names ("Müller" → "MULLER", "Øster" → "OSTER").
fn upper_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let folded = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ą' => "a",
            'æ' => "ae",
            'ç' | 'ć' | 'č' => "c",
            'ď' | 'đ' | 'ð' => "d",
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
            'ğ' => "g",
            'ì' | 'í' | 'î' | 'ï' | 'ī' | 'ı' => "i",
            'ł' | 'ľ' => "l",
            'ñ' | 'ń' | 'ň' => "n",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
            'œ' => "oe",
            'ř' => "r",
            'ś' | 'š' | 'ş' => "s",
            'ß' => "ss",
            'ť' | 'ţ' => "t",
            'þ' => "th",
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => "u",
            'ý' | 'ÿ' => "y",
            'ź' | 'ż' | 'ž' => "z",
            _ => {
                out.extend(c.to_uppercase());
                continue;
            }
        };
        out.push_str(&folded.to_ascii_uppercase());
    }
    out
}

fn human_name(use_: &str, family: &str, given: &str, text: String) -> Value {
    json!({ "use": use_, "text": text, "family": family, "given": [given] })
}

/// `Patient.name` in `style`. A Chinese style on a Latin name (or the reverse) falls back to
/// the plain rendering of the name's own script.
fn patient_names(patient: &Patient, style: NameStyle) -> Value {
    let name = &patient.name;
    let (family, given) = (name.family.as_str(), name.given.as_str());
    let names = match (style, &name.ideographic) {
        (NameStyle::HanOnly, Some((han_family, han_given))) => {
            vec![human_name(
                "official",
                han_family,
                han_given,
                format!("{han_family}{han_given}"),
            )]
        }
        (NameStyle::PinyinOnly, Some(_)) => {
            vec![human_name(
                "official",
                family,
                given,
                format!("{family} {given}"),
            )]
        }
        (NameStyle::PinyinGivenFirst, Some(_)) => {
            vec![human_name(
                "official",
                family,
                given,
                format!("{given} {family}"),
            )]
        }
        (_, Some((han_family, han_given))) => vec![
            human_name(
                "official",
                han_family,
                han_given,
                format!("{han_family}{han_given}"),
            ),
            human_name("usual", family, given, format!("{family} {given}")),
        ],
        (NameStyle::FamilyFirstText, None) => {
            vec![human_name(
                "official",
                family,
                given,
                format!("{family} {given}"),
            )]
        }
        (NameStyle::UpperAscii, None) => {
            let (family, given) = (upper_ascii(family), upper_ascii(given));
            let text = format!("{family} {given}");
            vec![human_name("official", &family, &given, text)]
        }
        // A registration clerk typed each name into the other field; the EMR renders the text
        // from the fields, given first.
        (NameStyle::SwappedFields, None) => {
            vec![human_name(
                "official",
                given,
                family,
                format!("{family} {given}"),
            )]
        }
        (_, None) => vec![human_name(
            "official",
            family,
            given,
            format!("{given} {family}"),
        )],
    };
    Value::Array(names)
}

/// A random version-4 UUID from `rng`, so ids follow the seed.
fn random_uuid(rng: &mut impl Rng) -> String {
    let mut bytes = rng.random::<u128>().to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn urn(id: &str) -> String {
    format!("urn:uuid:{id}")
}

/// `max(1, round(count · rate))`, or 0 when `count` is 0.
fn quota(count: usize, rate: f64) -> usize {
    if count == 0 {
        0
    } else {
        ((count as f64 * rate).round() as usize).max(1)
    }
}

/// `amount` distinct positions out of `0..length`, sorted (capped at `length`).
fn sample_sorted(rng: &mut impl Rng, length: usize, amount: usize) -> Vec<usize> {
    let mut picked = rand::seq::index::sample(rng, length, amount.min(length)).into_vec();
    picked.sort_unstable();
    picked
}

fn pick_weighted<T: Copy>(rng: &mut impl Rng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|&(_, w)| w).sum();
    let mut roll = rng.random_range(0..total.max(1));
    for &(value, weight) in table {
        if roll < weight {
            return value;
        }
        roll -= weight;
    }
    table.last().expect("non-empty constant table").0
}

/// A variant for each of `count` items: every one of `required` at least once (as far as
/// `count` allows, the rng choosing which), the others drawn from `weights`.
fn assign_variants<T: Copy>(
    rng: &mut impl Rng,
    count: usize,
    required: &[T],
    weights: &[(T, u32)],
) -> Vec<T> {
    let mut variants: Vec<T> = (0..count).map(|_| pick_weighted(rng, weights)).collect();
    let mut required = required.to_vec();
    required.shuffle(rng);
    let slots = rand::seq::index::sample(rng, count, required.len().min(count));
    for (slot, variant) in slots.into_iter().zip(required) {
        variants[slot] = variant;
    }
    variants
}

/// What the EMR knows of one exported patient.
struct PatientPlan {
    manifest_index: usize,
    id: String,
    id_format: IdFormat,
    name_style: NameStyle,
    omit_birth_date: bool,
    omit_gender: bool,
}

/// One ServiceRequest to write.
struct OrderPlan {
    id: String,
    patient: usize,
    procedure: Procedure,
    accession: Option<String>,
    placer: String,
    /// Scheduled slot; `None` when the study's date is unreadable.
    occurrence: Option<Stamp>,
    authored: Option<Stamp>,
    requester: Option<String>,
    answered: bool,
    encounter: String,
}

struct EncounterPlan {
    id: String,
    patient: usize,
    inpatient: bool,
    start: Option<Stamp>,
}

/// Issues ids and numbers for orders and keeps one encounter per patient and date.
struct OrderBook {
    orders: Vec<OrderPlan>,
    encounters: BTreeMap<(usize, Option<NaiveDate>), EncounterPlan>,
    used_accessions: BTreeSet<String>,
    next_placer: u64,
}

impl OrderBook {
    fn encounter_for(
        &mut self,
        rng: &mut impl Rng,
        patient: usize,
        authored: Option<Stamp>,
    ) -> String {
        let key = (patient, authored.map(|s| s.date));
        let encounter = self.encounters.entry(key).or_insert_with(|| EncounterPlan {
            id: random_uuid(rng),
            patient,
            inpatient: rng.random_bool(0.25),
            start: authored,
        });
        // The visit starts no later than its first order.
        encounter.start = match (encounter.start, authored) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        encounter.id.clone()
    }

    /// Placer numbers increase in the order orders are placed, with gaps from other wards.
    fn placer(&mut self, rng: &mut impl Rng) -> String {
        self.next_placer += rng.random_range(1..=9);
        format!("ORD{}", self.next_placer)
    }

    /// An accession number the RIS has issued for an order that no study answers yet: in the
    /// same format and range as the studies', never equal to one of them.
    fn fresh_accession(&mut self, rng: &mut impl Rng) -> String {
        let span = 113 * (self.used_accessions.len() as u64 + 20);
        let mut number = 10_000_000 + rng.random_range(0..span);
        while self.used_accessions.contains(&format!("A{number:08}")) {
            number += 1;
        }
        let accession = format!("A{number:08}");
        self.used_accessions.insert(accession.clone());
        accession
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        rng: &mut impl Rng,
        patient: usize,
        procedure: Procedure,
        accession: Option<String>,
        occurrence: Option<Stamp>,
        requester: Option<String>,
        answered: bool,
    ) -> String {
        let id = random_uuid(rng);
        let placer = self.placer(rng);
        let authored = occurrence.map(|s| s.shifted_within_day(-rng.random_range(20..=240)));
        let authored = authored.map(|a| match occurrence {
            // Ordered before it is scheduled, even when the shift had to go the other way.
            Some(o) if a > o => o,
            _ => a,
        });
        let encounter = self.encounter_for(rng, patient, authored);
        self.orders.push(OrderPlan {
            id: id.clone(),
            patient,
            procedure,
            accession,
            placer,
            occurrence,
            authored,
            requester,
            answered,
            encounter,
        });
        id
    }
}

/// The scheduled slot of a study: its date, and its time rounded down to 15 minutes.
fn scheduled_slot(study: &StudyRecord) -> Option<Stamp> {
    let date = parse_da(&study.study_date)?;
    let time = parse_tm(&study.study_time)
        .and_then(|t| NaiveTime::from_hms_opt(t.hour(), t.minute() / 15 * 15, 0));
    Some(Stamp { date, time })
}

/// Builds the EMR export of `manifest`; the same manifest and rng state give the same export.
pub fn build_emr_export(manifest: &Manifest, rng: &mut impl Rng) -> EmrExport {
    // Studies whose patient exists; the others cannot be joined to anything.
    let studies: Vec<&StudyRecord> = manifest
        .studies
        .iter()
        .filter(|s| s.patient_index < manifest.patients.len())
        .collect();
    let exported: Vec<usize> = studies
        .iter()
        .map(|s| s.patient_index)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let patients = plan_patients(manifest, &exported, rng);
    let patient_ids: BTreeMap<usize, String> = patients
        .iter()
        .map(|p| (p.manifest_index, p.id.clone()))
        .collect();

    let n = studies.len();
    let mut book = OrderBook {
        orders: Vec::new(),
        encounters: BTreeMap::new(),
        used_accessions: studies.iter().map(|s| s.accession_number.clone()).collect(),
        next_placer: rng.random_range(700_000..800_000),
    };

    // Which studies get no order, and which orders lose their accession number.
    let no_order: BTreeSet<usize> = if n >= 2 {
        sample_sorted(rng, n, quota(n, 0.10).min(n - 1))
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    let ordered: Vec<usize> = (0..n).filter(|i| !no_order.contains(i)).collect();
    let missing_accession: BTreeSet<usize> = sample_sorted(rng, ordered.len(), quota(n, 0.10))
        .into_iter()
        .map(|k| ordered[k])
        .collect();

    let mut order_of_study: BTreeMap<usize, String> = BTreeMap::new();
    for &i in &ordered {
        let study = studies[i];
        let accession = (!missing_accession.contains(&i)).then(|| study.accession_number.clone());
        let id = book.add(
            rng,
            study.patient_index,
            Procedure::for_study(study),
            accession,
            scheduled_slot(study),
            person_display(&study.referring_physician),
            true,
        );
        order_of_study.insert(i, id);
    }

    let mut orders_without_study = Vec::new();
    // Same visit, second order of the other kind, never performed.
    let same_day = if ordered.is_empty() {
        0
    } else {
        quota(n, 0.05).min(ordered.len())
    };
    for k in sample_sorted(rng, ordered.len(), same_day) {
        let study = studies[ordered[k]];
        let procedure = match study.modality {
            Modality::Ct => Procedure::Loinc(XR_CHEST_1V),
            Modality::Dx | Modality::Cr => Procedure::Loinc(CT_CHEST_WO),
        };
        let accession = Some(book.fresh_accession(rng));
        let occurrence =
            scheduled_slot(study).map(|s| s.shifted_within_day(15 * rng.random_range(2..=10)));
        let id = book.add(
            rng,
            study.patient_index,
            procedure,
            accession,
            occurrence,
            person_display(&study.referring_physician),
            false,
        );
        orders_without_study.push(id);
    }

    // Follow-ups ordered for later dates that no study answers (yet).
    let physicians: Vec<String> = studies
        .iter()
        .filter_map(|s| person_display(&s.referring_physician))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let dates: Vec<NaiveDate> = studies
        .iter()
        .filter_map(|s| parse_da(&s.study_date))
        .collect();
    let follow_ups = quota(n, 0.10).saturating_sub(same_day);
    for _ in 0..follow_ups {
        let Some(&patient) = exported.choose(rng) else {
            break;
        };
        let procedure = match rng.random_range(0..4) {
            0 => Procedure::Loinc(CT_CHEST),
            1 => Procedure::Loinc(CT_CHEST_WO),
            2 => Procedure::Loinc(XR_CHEST_1V),
            _ => Procedure::Loinc(XR_CHEST_2V),
        };
        let occurrence = dates.choose(rng).and_then(|d| {
            let date = d.checked_add_days(Days::new(rng.random_range(1..=45)))?;
            let time =
                NaiveTime::from_hms_opt(rng.random_range(7..19), 15 * rng.random_range(0..4), 0);
            Some(Stamp { date, time })
        });
        let accession = Some(book.fresh_accession(rng));
        let requester = physicians.choose(rng).cloned();
        let id = book.add(
            rng, patient, procedure, accession, occurrence, requester, false,
        );
        orders_without_study.push(id);
    }

    let true_pairs = studies
        .iter()
        .enumerate()
        .map(|(i, study)| TruePair {
            study_instance_uid: study.study_instance_uid.clone(),
            accession_number: study.accession_number.clone(),
            service_request_id: order_of_study.get(&i).cloned(),
            patient_resource_id: patient_ids
                .get(&study.patient_index)
                .cloned()
                .unwrap_or_default(),
        })
        .collect();

    let bundle = assemble_bundle(manifest, patients, &book, &patient_ids, rng);
    EmrExport {
        bundle,
        true_pairs,
        orders_without_study,
    }
}

fn plan_patients(manifest: &Manifest, exported: &[usize], rng: &mut impl Rng) -> Vec<PatientPlan> {
    let count = exported.len();
    let ids: Vec<String> = (0..count).map(|_| random_uuid(rng)).collect();
    let id_formats = assign_variants(rng, count, ID_REQUIRED, ID_WEIGHTS);
    let is_chinese = |i: usize| manifest.patients[exported[i]].name.is_chinese();
    let latin: Vec<usize> = (0..count).filter(|&i| !is_chinese(i)).collect();
    let chinese: Vec<usize> = (0..count).filter(|&i| is_chinese(i)).collect();
    let mut styles = vec![NameStyle::GivenFirst; count];
    for (group, required, weights) in [
        (&latin, LATIN_REQUIRED, LATIN_WEIGHTS),
        (&chinese, CHINESE_REQUIRED, CHINESE_WEIGHTS),
    ] {
        for (&i, style) in group
            .iter()
            .zip(assign_variants(rng, group.len(), required, weights))
        {
            styles[i] = style;
        }
    }
    let no_birth_date: BTreeSet<usize> = sample_sorted(rng, count, quota(count, 0.08))
        .into_iter()
        .collect();
    let no_gender: BTreeSet<usize> = sample_sorted(rng, count, quota(count, 0.08))
        .into_iter()
        .collect();
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| PatientPlan {
            manifest_index: exported[i],
            id,
            id_format: id_formats[i],
            name_style: styles[i],
            omit_birth_date: no_birth_date.contains(&i),
            omit_gender: no_gender.contains(&i),
        })
        .collect()
}

fn coding_type(code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": V2_0203, "code": code, "display": display }] })
}

fn patient_resource(plan: &PatientPlan, patient: &Patient) -> Value {
    let mut resource = json!({
        "resourceType": "Patient",
        "id": plan.id,
        "identifier": [{
            "use": "usual",
            "type": coding_type("MR", "Medical record number"),
            "system": PATIENT_ID_SYSTEM,
            "value": plan.id_format.render(patient.mrn),
        }],
        "name": patient_names(patient, plan.name_style),
    });
    if !plan.omit_gender {
        resource["gender"] = json!(patient.sex.fhir_code());
    }
    if !plan.omit_birth_date {
        resource["birthDate"] = json!(patient.birth_date.format("%Y-%m-%d").to_string());
    }
    resource
}

fn encounter_resource(plan: &EncounterPlan, patient_id: &str) -> Value {
    let (code, display) = if plan.inpatient {
        ("IMP", "inpatient encounter")
    } else {
        ("AMB", "ambulatory")
    };
    let mut resource = json!({
        "resourceType": "Encounter",
        "id": plan.id,
        "status": "finished",
        "class": { "system": ACT_CODE, "code": code, "display": display },
        "subject": { "reference": urn(patient_id) },
    });
    if let Some(start) = plan.start {
        resource["period"] = json!({ "start": start.to_fhir() });
    }
    resource
}

fn service_request_resource(order: &OrderPlan, patient_id: &str) -> Value {
    let mut identifiers = vec![json!({
        "use": "official",
        "type": coding_type("PLAC", "Placer Identifier"),
        "system": PLACER_SYSTEM,
        "value": order.placer,
    })];
    if let Some(accession) = &order.accession {
        identifiers.push(json!({
            "use": "usual",
            "type": coding_type("ACSN", "Accession ID"),
            "system": ACCESSION_SYSTEM,
            "value": accession,
        }));
    }
    let mut resource = json!({
        "resourceType": "ServiceRequest",
        "id": order.id,
        "identifier": identifiers,
        "status": if order.answered { "completed" } else { "active" },
        "intent": "order",
        "category": [{ "coding": [{ "system": SNOMED, "code": "363679005", "display": "Imaging" }] }],
        "code": order.procedure.to_fhir(),
        "subject": { "reference": urn(patient_id) },
        "encounter": { "reference": urn(&order.encounter) },
    });
    if let Some(occurrence) = order.occurrence {
        resource["occurrenceDateTime"] = json!(occurrence.to_fhir());
    }
    if let Some(authored) = order.authored {
        resource["authoredOn"] = json!(authored.to_fhir());
    }
    if let Some(requester) = &order.requester {
        resource["requester"] = json!({ "display": requester });
    }
    resource
}

fn entry(resource: Value) -> Value {
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    json!({ "fullUrl": urn(&id), "resource": resource })
}

fn assemble_bundle(
    manifest: &Manifest,
    patients: Vec<PatientPlan>,
    book: &OrderBook,
    patient_ids: &BTreeMap<usize, String>,
    rng: &mut impl Rng,
) -> Value {
    let patient_id = |index: usize| {
        patient_ids
            .get(&index)
            .map(String::as_str)
            .unwrap_or_default()
    };
    let mut patient_entries: Vec<Value> = patients
        .iter()
        .filter_map(|plan| {
            let patient = manifest.patients.get(plan.manifest_index)?;
            Some(entry(patient_resource(plan, patient)))
        })
        .collect();
    let mut encounter_entries: Vec<Value> = book
        .encounters
        .values()
        .map(|e| entry(encounter_resource(e, patient_id(e.patient))))
        .collect();
    let mut order_entries: Vec<Value> = book
        .orders
        .iter()
        .map(|o| entry(service_request_resource(o, patient_id(o.patient))))
        .collect();
    // Shuffled so that position gives away neither the manifest order nor which orders are
    // the extra ones.
    patient_entries.shuffle(rng);
    encounter_entries.shuffle(rng);
    order_entries.shuffle(rng);

    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": random_uuid(rng),
        "type": "collection",
    });
    let entries: Vec<Value> = patient_entries
        .into_iter()
        .chain(encounter_entries)
        .chain(order_entries)
        .collect();
    // FHIR forbids empty arrays: an empty export has no `entry` at all.
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patient::{TextEncoding, random_patient};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const PHYSICIANS: &[&str] = &["Okafor^Chidi^^Dr.", "Lindqvist^Karin^^Dr.", "Tanaka^Yuki"];

    /// `patients` patients (every third Chinese) and `studies` studies spread over them.
    fn manifest(seed: u64, patients: usize, studies: usize) -> Manifest {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let patients: Vec<Patient> = (0..patients)
            .map(|i| random_patient(&mut rng, i, i % 3 == 0))
            .collect();
        let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let studies = (0..studies)
            .map(|i| {
                let modality = [Modality::Ct, Modality::Dx, Modality::Cr][i % 3];
                let date = start + Days::new(rng.random_range(0..300));
                StudyRecord {
                    study_instance_uid: crate::uid::random_uid(&mut rng),
                    accession_number: format!("A{:08}", 10_000_000 + i * 113),
                    // Every patient gets a study first, the rest at random.
                    patient_index: if i < patients.len() {
                        i
                    } else {
                        rng.random_range(0..patients.len())
                    },
                    modality,
                    study_date: date.format("%Y%m%d").to_string(),
                    study_time: format!(
                        "{:02}{:02}{:02}",
                        rng.random_range(7..19),
                        rng.random_range(0..60),
                        rng.random_range(0..60)
                    ),
                    study_description: match modality {
                        Modality::Ct => "CT CHEST WITHOUT CONTRAST",
                        _ => "XR CHEST PA",
                    }
                    .to_string(),
                    body_part_examined: "CHEST".to_string(),
                    referring_physician: PHYSICIANS[i % PHYSICIANS.len()].to_string(),
                    encoding: TextEncoding::Utf8,
                    directory: format!("studies/{:04}_{}", i + 1, modality.code()),
                    series_instance_uid: crate::uid::random_uid(&mut rng),
                    instance_count: 1,
                }
            })
            .collect();
        Manifest {
            generator: "test".into(),
            seed,
            patients,
            studies,
        }
    }

    fn export(manifest: &Manifest, seed: u64) -> EmrExport {
        build_emr_export(manifest, &mut ChaCha8Rng::seed_from_u64(seed))
    }

    fn entries(bundle: &Value) -> Vec<&Value> {
        bundle
            .get("entry")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    fn resources<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
        entries(bundle)
            .into_iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == kind)
            .collect()
    }

    fn by_id<'a>(bundle: &'a Value, kind: &str, id: &str) -> Option<&'a Value> {
        resources(bundle, kind).into_iter().find(|r| r["id"] == id)
    }

    fn identifier<'a>(resource: &'a Value, type_code: &str) -> Option<&'a str> {
        resource["identifier"]
            .as_array()?
            .iter()
            .find(|i| i["type"]["coding"][0]["code"] == type_code)?["value"]
            .as_str()
    }

    fn collect_references<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("reference", Value::String(s)) => out.push(s),
                        _ => collect_references(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_references(v, out)),
            _ => {}
        }
    }

    /// Structural checks every export must pass, whatever its size.
    fn assert_consistent(manifest: &Manifest, export: &EmrExport) {
        let bundle = &export.bundle;
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "collection");
        if let Some(entry) = bundle.get("entry") {
            assert!(
                !entry.as_array().unwrap().is_empty(),
                "FHIR forbids empty arrays"
            );
        }
        let mut full_urls = BTreeSet::new();
        for e in entries(bundle) {
            let resource = &e["resource"];
            let id = resource["id"].as_str().expect("every resource has an id");
            assert!(resource["resourceType"].is_string());
            assert_eq!(e["fullUrl"], format!("urn:uuid:{id}"));
            assert!(
                full_urls.insert(e["fullUrl"].as_str().unwrap()),
                "duplicate fullUrl {id}"
            );
        }
        let mut references = Vec::new();
        collect_references(bundle, &mut references);
        for reference in references {
            assert!(
                full_urls.contains(reference),
                "dangling reference {reference}"
            );
        }
        // References point at the right kind of resource, and an order's encounter is its
        // patient's.
        let kind_of = |reference: &Value| -> String {
            let url = reference["reference"].as_str().unwrap_or_default();
            entries(bundle)
                .into_iter()
                .find(|e| e["fullUrl"] == url)
                .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
                .unwrap_or_default()
        };
        for encounter in resources(bundle, "Encounter") {
            assert_eq!(kind_of(&encounter["subject"]), "Patient");
            assert_eq!(encounter["status"], "finished");
        }
        for order in resources(bundle, "ServiceRequest") {
            assert_eq!(kind_of(&order["subject"]), "Patient");
            assert_eq!(kind_of(&order["encounter"]), "Encounter");
            let encounter_id = order["encounter"]["reference"].as_str().unwrap();
            let encounter = by_id(bundle, "Encounter", &encounter_id["urn:uuid:".len()..]).unwrap();
            assert_eq!(encounter["subject"], order["subject"]);
            if let (Some(start), Some(authored)) = (
                encounter["period"]["start"].as_str(),
                order["authoredOn"].as_str(),
            ) {
                assert_eq!(
                    start[..10],
                    authored[..10],
                    "encounter starts on the order's date"
                );
            }
            assert!(
                identifier(order, "PLAC").is_some(),
                "every order has a placer number"
            );
            assert_eq!(order["intent"], "order");
            assert_eq!(order["category"][0]["coding"][0]["code"], "363679005");
        }

        // Each joinable study exactly once, its order really its patient's.
        let joinable: Vec<&StudyRecord> = manifest
            .studies
            .iter()
            .filter(|s| s.patient_index < manifest.patients.len())
            .collect();
        assert_eq!(export.true_pairs.len(), joinable.len());
        let uids: BTreeSet<&str> = export
            .true_pairs
            .iter()
            .map(|p| p.study_instance_uid.as_str())
            .collect();
        assert_eq!(uids.len(), joinable.len(), "each study exactly once");
        for (pair, study) in export.true_pairs.iter().zip(&joinable) {
            assert_eq!(pair.study_instance_uid, study.study_instance_uid);
            assert_eq!(pair.accession_number, study.accession_number);
            let patient =
                by_id(bundle, "Patient", &pair.patient_resource_id).expect("patient exists");
            let mrn_digits: String = identifier(patient, "MR")
                .unwrap()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            assert_eq!(
                mrn_digits.parse::<u32>().unwrap(),
                manifest.patients[study.patient_index].mrn
            );
            if let Some(order_id) = &pair.service_request_id {
                let order = by_id(bundle, "ServiceRequest", order_id).expect("order exists");
                assert_eq!(
                    order["subject"]["reference"],
                    format!("urn:uuid:{}", pair.patient_resource_id)
                );
                assert_eq!(order["status"], "completed");
                if let Some(accession) = identifier(order, "ACSN") {
                    assert_eq!(accession, study.accession_number);
                }
                let date = &study.study_date;
                let expected = format!("{}-{}-{}", &date[0..4], &date[4..6], &date[6..8]);
                assert!(
                    order["occurrenceDateTime"]
                        .as_str()
                        .unwrap()
                        .starts_with(&expected)
                );
                assert!(order["authoredOn"].as_str().unwrap().starts_with(&expected));
            }
        }
        // Every order is either answered by exactly one study or listed as without study.
        let answered: Vec<&str> = export
            .true_pairs
            .iter()
            .filter_map(|p| p.service_request_id.as_deref())
            .collect();
        let orphans: BTreeSet<&str> = export
            .orders_without_study
            .iter()
            .map(String::as_str)
            .collect();
        let all_orders = resources(bundle, "ServiceRequest");
        assert_eq!(answered.len() + orphans.len(), all_orders.len());
        assert_eq!(
            answered.iter().collect::<BTreeSet<_>>().len(),
            answered.len()
        );
        for order in all_orders {
            let id = order["id"].as_str().unwrap();
            if orphans.contains(id) {
                assert_eq!(order["status"], "active");
                let accession = identifier(order, "ACSN").expect("extra orders keep an accession");
                assert!(
                    manifest
                        .studies
                        .iter()
                        .all(|s| s.accession_number != accession)
                );
            } else {
                assert!(answered.contains(&id));
            }
        }
    }

    #[test]
    fn bundle_is_consistent_and_pairs_are_true() {
        for seed in 0..10 {
            let m = manifest(seed, 10, 40);
            assert_consistent(&m, &export(&m, seed));
        }
    }

    #[test]
    fn every_inconsistency_occurs_with_40_studies() {
        for seed in 0..20 {
            let m = manifest(seed, 10, 40);
            let e = export(&m, seed + 100);
            let b = &e.bundle;
            let patients = resources(b, "Patient");
            let orders = resources(b, "ServiceRequest");

            let ids: Vec<&str> = patients
                .iter()
                .map(|p| identifier(p, "MR").unwrap())
                .collect();
            let is_digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
            assert!(
                ids.iter().any(|v| is_digits(v) && !v.starts_with('0')),
                "unpadded {ids:?}"
            );
            assert!(
                ids.iter()
                    .any(|v| is_digits(v) && v.starts_with('0') && v.len() != 8),
                "{ids:?}"
            );
            assert!(ids.iter().any(|v| v.starts_with("MRN")), "{ids:?}");
            assert!(ids.iter().any(|v| v.starts_with("H-")), "{ids:?}");

            // Name texts, compared with the manifest patient behind each MRN.
            let mut styles = BTreeSet::new();
            for p in &patients {
                let mrn: u32 = identifier(p, "MR")
                    .unwrap()
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap();
                let source = m.patients.iter().find(|q| q.mrn == mrn).unwrap();
                let (family, given) = (&source.name.family, &source.name.given);
                let name = &p["name"][0];
                let text = name["text"].as_str().unwrap();
                match &source.name.ideographic {
                    Some((hf, hg)) if p["name"].as_array().unwrap().len() == 1 => {
                        if text == format!("{hf}{hg}") {
                            assert_eq!(name["family"], hf.as_str());
                            styles.insert("han only");
                        } else if text == format!("{family} {given}") {
                            styles.insert("pinyin family first");
                        } else if text == format!("{given} {family}") {
                            styles.insert("pinyin given first");
                        }
                    }
                    Some(_) => {}
                    None => {
                        if text == format!("{family} {given}") && name["family"] == family.as_str()
                        {
                            styles.insert("latin family first text");
                        } else if text == upper_ascii(&format!("{family} {given}"))
                            && text.is_ascii()
                        {
                            styles.insert("latin upper ascii");
                        } else if name["family"] == given.as_str()
                            && name["given"][0] == family.as_str()
                        {
                            styles.insert("latin swapped fields");
                        }
                    }
                }
            }
            assert_eq!(styles.len(), 6, "seed {seed}: {styles:?}");

            assert!(patients.iter().any(|p| p.get("birthDate").is_none()));
            assert!(patients.iter().any(|p| p.get("gender").is_none()));
            assert!(
                e.true_pairs.iter().any(|p| p.service_request_id.is_none()),
                "study without order"
            );
            assert!(!e.orders_without_study.is_empty(), "order without study");
            assert!(
                e.true_pairs
                    .iter()
                    .filter_map(|p| p.service_request_id.as_deref())
                    .any(|id| {
                        identifier(by_id(b, "ServiceRequest", id).unwrap(), "ACSN").is_none()
                    }),
                "answered order without accession"
            );
            let mut per_day: BTreeMap<(String, String), usize> = BTreeMap::new();
            for o in &orders {
                let day = o["occurrenceDateTime"].as_str().unwrap()[..10].to_string();
                *per_day
                    .entry((o["subject"]["reference"].to_string(), day))
                    .or_default() += 1;
            }
            assert!(per_day.values().any(|&c| c >= 2), "two orders on one day");
        }
    }

    #[test]
    fn same_seed_same_export_other_seed_other_export() {
        let m = manifest(3, 10, 40);
        assert_eq!(export(&m, 9), export(&m, 9));
        assert_ne!(export(&m, 9).bundle, export(&m, 10).bundle);
    }

    #[test]
    fn tiny_and_empty_manifests_work() {
        let empty = manifest(0, 0, 0);
        let e = export(&empty, 1);
        assert!(e.bundle.get("entry").is_none());
        assert!(e.true_pairs.is_empty() && e.orders_without_study.is_empty());
        assert_consistent(&empty, &e);

        for seed in 0..50 {
            for (patients, studies) in [(1, 1), (1, 2), (2, 3), (3, 5), (2, 0)] {
                let m = manifest(seed, patients, studies);
                assert_consistent(&m, &export(&m, seed));
            }
        }
        // 3 studies and 2 patients still show a study without order, an order without
        // study and an order without accession number.
        let m = manifest(5, 2, 3);
        let e = export(&m, 5);
        assert!(e.true_pairs.iter().any(|p| p.service_request_id.is_none()));
        assert!(!e.orders_without_study.is_empty());
        let orders = resources(&e.bundle, "ServiceRequest");
        assert!(orders.iter().any(|o| identifier(o, "ACSN").is_none()));
    }

    #[test]
    fn unreadable_studies_do_not_panic() {
        let mut m = manifest(1, 3, 6);
        m.studies[0].patient_index = 99;
        m.studies[1].study_date = "2026-13-45".into();
        m.studies[2].study_time = "".into();
        m.studies[3].referring_physician = "".into();
        m.studies[4].body_part_examined = "KNEE".into();
        m.studies[4].study_description = "".into();
        for seed in 0..20 {
            let e = export(&m, seed);
            assert_eq!(
                e.true_pairs.len(),
                5,
                "the study without a patient is left out"
            );
            let mut references = Vec::new();
            collect_references(&e.bundle, &mut references);
            let urls: BTreeSet<&str> = entries(&e.bundle)
                .iter()
                .filter_map(|x| x["fullUrl"].as_str())
                .collect();
            assert!(references.iter().all(|r| urls.contains(r)));
        }
    }

    #[test]
    fn true_pairs_document_has_pairs_and_orphans() {
        let m = manifest(2, 4, 12);
        let e = export(&m, 2);
        let doc = true_pairs_document(&e);
        assert_eq!(doc["pairs"].as_array().unwrap().len(), 12);
        assert_eq!(
            doc["orders_without_study"].as_array().unwrap().len(),
            e.orders_without_study.len()
        );
        let back: Vec<TruePair> = serde_json::from_value(doc["pairs"].clone()).unwrap();
        assert_eq!(back, e.true_pairs);
        assert!(
            doc["pairs"][0]["service_request_id"].is_string()
                || doc["pairs"][0]["service_request_id"].is_null()
        );
    }

    #[test]
    fn helpers_convert_dicom_values() {
        assert_eq!(
            person_display("Okafor^Chidi^^Dr.").as_deref(),
            Some("Chidi Okafor")
        );
        assert_eq!(
            person_display("Wang^Wei^Jun").as_deref(),
            Some("Wei Jun Wang")
        );
        assert_eq!(person_display("=王^伟").as_deref(), Some("伟 王"));
        assert_eq!(person_display("^^^").as_deref(), None);
        assert_eq!(
            upper_ascii("Müller Øster Lefèvre Åsa"),
            "MULLER OSTER LEFEVRE ASA"
        );
        assert_eq!(parse_tm("0930"), NaiveTime::from_hms_opt(9, 30, 0));
        assert_eq!(parse_tm("235960.123"), NaiveTime::from_hms_opt(23, 59, 59));
        assert_eq!(parse_tm("9:30"), None);
        assert_eq!(parse_tm("256000"), None);
        let winter = NaiveDate::from_ymd_opt(2026, 1, 5)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let summer = NaiveDate::from_ymd_opt(2026, 7, 5)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let after = NaiveDate::from_ymd_opt(2026, 10, 25)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        assert_eq!(central_european_offset(winter), "+01:00");
        assert_eq!(central_european_offset(summer), "+02:00");
        assert_eq!(central_european_offset(after), "+01:00");
        let uuid = random_uuid(&mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
    }

    #[test]
    fn procedure_codes_follow_the_study() {
        let m = manifest(4, 2, 3);
        let [ct, dx, _] = [&m.studies[0], &m.studies[1], &m.studies[2]];
        assert_eq!(Procedure::for_study(ct), Procedure::Loinc(CT_CHEST_WO));
        assert_eq!(Procedure::for_study(dx), Procedure::Loinc(XR_CHEST_1V));
    }
}
