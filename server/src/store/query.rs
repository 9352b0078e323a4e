//! The query model shared by QIDO-RS and C-FIND, and its translation to SQL (SQLite).
//!
//! Matching follows PS3.4 C.2.2.2: universal (`""`/`*`), single value (exact), wildcard
//! (`*`, `?`), range (DA/TM: `a-b`, `a-`, `-b`) and UID list (`\`-separated UIDs).
//! Wildcards become SQLite `GLOB` patterns (only `[` needs escaping there). Person names
//! match case-insensitively against an upper-cased copy, against the whole value or any
//! one component group (`Wu*` and `吴*` both match `Wu^Xiaodong=吴^小东`); with
//! `fuzzy_matching` a name also matches when any of its components starts with the
//! pattern. Other strings match case-sensitively. Time ranges compare prefixes, so
//! `-1015` includes `101500.123`; with `combined_datetime`, a StudyDate range and a
//! StudyTime range make one date-time range. ModalitiesInStudy matches when any series of
//! the study has one of the given modalities.
//!
//! Results: one [`AttributeSet`] per match with the QIDO-RS default attributes of the
//! level (PS3.18 Table 6.7.1-2 for what the index holds), the unique keys of the levels
//! above, the matching keys, and the [`Include`]d attributes the index holds (tags it does
//! not hold are left out; C-FIND callers keep only their identifier's keys).

use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::attributes::{Attribute, AttributeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueryLevel {
    Study,
    Series,
    Instance,
}

impl QueryLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryLevel::Study => "study",
            QueryLevel::Series => "series",
            QueryLevel::Instance => "instance",
        }
    }
}

/// One matching condition (PS3.4 C.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `""` or `*`: return the attribute, match anything.
    Universal,
    Exact(String),
    /// Contains `*` or `?`.
    Wildcard(String),
    /// DA / TM / DT `a-b`, `a-`, `-b`.
    Range {
        from: Option<String>,
        to: Option<String>,
    },
    /// UI with `\`-separated values.
    UidList(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchKey {
    pub tag: Tag,
    pub condition: Condition,
}

/// Which attributes to return beyond the level's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Include {
    #[default]
    Default,
    All,
    Tags(Vec<Tag>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub level: QueryLevel,
    pub keys: Vec<MatchKey>,
    pub include: Include,
    pub fuzzy_matching: bool,
    /// StudyDate and StudyTime ranges given together match as one date-time range
    /// (PS3.4 C.2.2.2.5): `StudyDate=20240105-20240107&StudyTime=1000-1800` is from
    /// 5 January 10:00 to 7 January 18:00, not 10:00–18:00 on each day. QIDO-RS always
    /// matches this way; C-FIND does not (it would need the SOP class extended
    /// negotiation's date-time matching flag, which we do not accept).
    pub combined_datetime: bool,
    /// Bounded by the caller (QIDO default 100, max 1000).
    pub limit: Option<u32>,
    pub offset: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown attribute {0:?}")]
    UnknownAttribute(String),
    #[error("{keyword} cannot be matched at the {level} level")]
    UnsupportedKey {
        keyword: String,
        level: &'static str,
    },
    #[error("invalid value {value:?} for {keyword}: {reason}")]
    InvalidValue {
        keyword: String,
        value: String,
        reason: String,
    },
}

/// How an indexed attribute is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Case-sensitive string (LO, SH, CS).
    Text,
    /// Person name: `norm` holds the upper-cased column.
    Pn {
        norm: &'static str,
    },
    Date,
    Time,
    Uid,
    Int,
    /// ModalitiesInStudy: any series of the study.
    Modalities,
    /// Computed, returned but not matchable.
    Computed,
}

pub(crate) struct Field {
    tag: Tag,
    keyword: &'static str,
    vr: VR,
    level: QueryLevel,
    /// SQL expression for the value (aliases: p patients, st studies, se series, i instances).
    expr: &'static str,
    kind: Kind,
}

const fn f(
    tag: Tag,
    keyword: &'static str,
    vr: VR,
    level: QueryLevel,
    expr: &'static str,
    kind: Kind,
) -> Field {
    Field {
        tag,
        keyword,
        vr,
        level,
        expr,
        kind,
    }
}

use QueryLevel::{Instance as I, Series as SE, Study as ST};

static FIELDS: &[Field] = &[
    f(
        tags::PATIENT_NAME,
        "PatientName",
        VR::PN,
        ST,
        "p.patient_name",
        Kind::Pn {
            norm: "p.patient_name_norm",
        },
    ),
    f(
        tags::PATIENT_ID,
        "PatientID",
        VR::LO,
        ST,
        "p.patient_id",
        Kind::Text,
    ),
    f(
        tags::ISSUER_OF_PATIENT_ID,
        "IssuerOfPatientID",
        VR::LO,
        ST,
        "p.issuer_of_patient_id",
        Kind::Text,
    ),
    f(
        tags::PATIENT_BIRTH_DATE,
        "PatientBirthDate",
        VR::DA,
        ST,
        "p.patient_birth_date",
        Kind::Date,
    ),
    f(
        tags::PATIENT_SEX,
        "PatientSex",
        VR::CS,
        ST,
        "p.patient_sex",
        Kind::Text,
    ),
    f(
        tags::STUDY_INSTANCE_UID,
        "StudyInstanceUID",
        VR::UI,
        ST,
        "st.study_instance_uid",
        Kind::Uid,
    ),
    f(
        tags::STUDY_DATE,
        "StudyDate",
        VR::DA,
        ST,
        "st.study_date",
        Kind::Date,
    ),
    f(
        tags::STUDY_TIME,
        "StudyTime",
        VR::TM,
        ST,
        "st.study_time",
        Kind::Time,
    ),
    f(
        tags::ACCESSION_NUMBER,
        "AccessionNumber",
        VR::SH,
        ST,
        "st.accession_number",
        Kind::Text,
    ),
    f(
        tags::STUDY_ID,
        "StudyID",
        VR::SH,
        ST,
        "st.study_id",
        Kind::Text,
    ),
    f(
        tags::STUDY_DESCRIPTION,
        "StudyDescription",
        VR::LO,
        ST,
        "st.study_description",
        Kind::Text,
    ),
    f(
        tags::REFERRING_PHYSICIAN_NAME,
        "ReferringPhysicianName",
        VR::PN,
        ST,
        "st.referring_physician_name",
        Kind::Pn {
            norm: "st.referring_physician_name_norm",
        },
    ),
    f(
        tags::MODALITIES_IN_STUDY,
        "ModalitiesInStudy",
        VR::CS,
        ST,
        "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT s3.modality AS m FROM series s3 \
         WHERE s3.study_ref = st.id AND s3.modality <> '' ORDER BY m))",
        Kind::Modalities,
    ),
    f(
        tags::SOP_CLASSES_IN_STUDY,
        "SOPClassesInStudy",
        VR::UI,
        ST,
        "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT i3.sop_class_uid AS c FROM instances i3 \
         JOIN series s3 ON s3.id = i3.series_ref WHERE s3.study_ref = st.id ORDER BY c))",
        Kind::Computed,
    ),
    f(
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        "NumberOfStudyRelatedSeries",
        VR::IS,
        ST,
        "(SELECT count(*) FROM series s3 WHERE s3.study_ref = st.id)",
        Kind::Computed,
    ),
    f(
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        "NumberOfStudyRelatedInstances",
        VR::IS,
        ST,
        "(SELECT count(*) FROM instances i3 JOIN series s3 ON s3.id = i3.series_ref WHERE s3.study_ref = st.id)",
        Kind::Computed,
    ),
    f(
        tags::MODALITY,
        "Modality",
        VR::CS,
        SE,
        "se.modality",
        Kind::Text,
    ),
    f(
        tags::SERIES_INSTANCE_UID,
        "SeriesInstanceUID",
        VR::UI,
        SE,
        "se.series_instance_uid",
        Kind::Uid,
    ),
    f(
        tags::SERIES_NUMBER,
        "SeriesNumber",
        VR::IS,
        SE,
        "se.series_number",
        Kind::Int,
    ),
    f(
        tags::SERIES_DESCRIPTION,
        "SeriesDescription",
        VR::LO,
        SE,
        "se.series_description",
        Kind::Text,
    ),
    f(
        tags::BODY_PART_EXAMINED,
        "BodyPartExamined",
        VR::CS,
        SE,
        "se.body_part_examined",
        Kind::Text,
    ),
    f(
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        "NumberOfSeriesRelatedInstances",
        VR::IS,
        SE,
        "(SELECT count(*) FROM instances i3 WHERE i3.series_ref = se.id)",
        Kind::Computed,
    ),
    f(
        tags::SOP_CLASS_UID,
        "SOPClassUID",
        VR::UI,
        I,
        "i.sop_class_uid",
        Kind::Uid,
    ),
    f(
        tags::SOP_INSTANCE_UID,
        "SOPInstanceUID",
        VR::UI,
        I,
        "i.sop_instance_uid",
        Kind::Uid,
    ),
    f(
        tags::INSTANCE_NUMBER,
        "InstanceNumber",
        VR::IS,
        I,
        "i.instance_number",
        Kind::Int,
    ),
    f(tags::ROWS, "Rows", VR::US, I, "i.rows", Kind::Int),
    f(tags::COLUMNS, "Columns", VR::US, I, "i.columns", Kind::Int),
    f(
        tags::NUMBER_OF_FRAMES,
        "NumberOfFrames",
        VR::IS,
        I,
        "i.number_of_frames",
        Kind::Int,
    ),
];

/// Computed attributes belong to exactly their level (a series query does not count the
/// study's series).
fn returnable_at(field: &Field, level: QueryLevel) -> bool {
    if field.kind == Kind::Computed || field.kind == Kind::Modalities {
        field.level == level
    } else {
        field.level <= level
    }
}

fn field(tag: Tag) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.tag == tag)
}

static STUDY_KEYS: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::MODALITIES_IN_STUDY,
];
static SERIES_KEYS: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::MODALITY,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::SERIES_DESCRIPTION,
    tags::BODY_PART_EXAMINED,
];
static INSTANCE_KEYS: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::MODALITY,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::SERIES_DESCRIPTION,
    tags::BODY_PART_EXAMINED,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::INSTANCE_NUMBER,
    tags::ROWS,
    tags::COLUMNS,
    tags::NUMBER_OF_FRAMES,
];

/// The keys the index can match at a level (attributes of the levels above are allowed
/// too: the index joins them).
pub fn matchable_keys(level: QueryLevel) -> &'static [Tag] {
    match level {
        QueryLevel::Study => STUDY_KEYS,
        QueryLevel::Series => SERIES_KEYS,
        QueryLevel::Instance => INSTANCE_KEYS,
    }
}

/// QIDO-RS default return attributes (those the index holds), plus unique keys above.
fn default_tags(level: QueryLevel) -> &'static [Tag] {
    match level {
        QueryLevel::Study => &[
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::ACCESSION_NUMBER,
            tags::MODALITIES_IN_STUDY,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::STUDY_INSTANCE_UID,
            tags::STUDY_ID,
            tags::NUMBER_OF_STUDY_RELATED_SERIES,
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        ],
        QueryLevel::Series => &[
            tags::STUDY_INSTANCE_UID,
            tags::MODALITY,
            tags::SERIES_DESCRIPTION,
            tags::SERIES_NUMBER,
            tags::SERIES_INSTANCE_UID,
            tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        ],
        QueryLevel::Instance => &[
            tags::STUDY_INSTANCE_UID,
            tags::SERIES_INSTANCE_UID,
            tags::SOP_CLASS_UID,
            tags::SOP_INSTANCE_UID,
            tags::INSTANCE_NUMBER,
            tags::ROWS,
            tags::COLUMNS,
            tags::NUMBER_OF_FRAMES,
        ],
    }
}

/// A keyword (`PatientName`) or hex tag (`00100010`) to a Tag.
pub fn resolve_attribute(name: &str) -> Result<Tag, QueryError> {
    let unknown = || QueryError::UnknownAttribute(name.chars().take(64).collect());
    let name = name.trim();
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        let group = u16::from_str_radix(&name[0..4], 16).map_err(|_| unknown())?;
        let element = u16::from_str_radix(&name[4..8], 16).map_err(|_| unknown())?;
        return Ok(Tag(group, element));
    }
    if let Some(f) = FIELDS.iter().find(|f| f.keyword == name) {
        return Ok(f.tag);
    }
    use dicom_core::dictionary::DataDictionary;
    StandardDataDictionary
        .by_name(name)
        .map(|entry| entry.tag.inner())
        .ok_or_else(unknown)
}

fn keyword(tag: Tag) -> String {
    use dicom_core::dictionary::DataDictionary;
    match field(tag) {
        Some(f) => f.keyword.to_owned(),
        None => StandardDataDictionary
            .by_tag(tag)
            .map(|e| e.alias.to_owned())
            .unwrap_or_else(|| format!("{:04X}{:04X}", tag.0, tag.1)),
    }
}

fn vr_of(tag: Tag) -> Option<VR> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    field(tag).map(|f| f.vr).or_else(|| {
        StandardDataDictionary
            .by_tag(tag)
            .and_then(|e| e.vr().exact())
    })
}

/// Maximum length of one matching value (bounds the SQL built from it).
const MAX_VALUE_LEN: usize = 1024;
/// Maximum number of UIDs in a UID list.
const MAX_UIDS: usize = 1000;

/// Parses one matching value for `tag` (VR from the standard dictionary) — PS3.4 C.2.2.2.
pub fn parse_condition(tag: Tag, value: &str) -> Result<Condition, QueryError> {
    let invalid = |reason: &str| QueryError::InvalidValue {
        keyword: keyword(tag),
        value: value.chars().take(64).collect(),
        reason: reason.to_owned(),
    };
    if value.len() > MAX_VALUE_LEN {
        return Err(invalid("value too long"));
    }
    let v = value.trim_matches(|c: char| c == ' ' || c == '\0');
    if v.is_empty() || v == "*" {
        return Ok(Condition::Universal);
    }
    let vr = vr_of(tag).unwrap_or(VR::LO);
    match vr {
        VR::DA | VR::TM | VR::DT => {
            let check = |s: &str| -> Result<(), QueryError> {
                let ok = match vr {
                    VR::DA => s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()),
                    VR::TM => {
                        (2..=13).contains(&s.len())
                            && s.bytes()
                                .all(|b| b.is_ascii_digit() || b == b'.' || b == b':')
                    }
                    _ => {
                        (4..=26).contains(&s.len())
                            && s.bytes().all(|b| b.is_ascii_digit() || b"+-.".contains(&b))
                    }
                };
                if ok {
                    Ok(())
                } else {
                    Err(invalid("not a valid date/time"))
                }
            };
            let norm = |s: &str| s.replace(':', "");
            // DT may carry a '-' timezone offset; a range separator in DT is " - " only
            // when the value splits into two well-formed halves.
            if vr != VR::DT
                && let Some((a, b)) = v.split_once('-')
            {
                let (a, b) = (a.trim(), b.trim());
                if a.is_empty() && b.is_empty() {
                    return Err(invalid("empty range"));
                }
                let from = (!a.is_empty()).then(|| norm(a));
                let to = (!b.is_empty()).then(|| norm(b));
                if let Some(x) = &from {
                    check(x)?;
                }
                if let Some(x) = &to {
                    check(x)?;
                }
                return Ok(Condition::Range { from, to });
            }
            let x = norm(v);
            check(&x)?;
            Ok(Condition::Exact(x))
        }
        VR::UI => {
            let uids: Vec<String> = v.split('\\').map(|u| u.trim().to_owned()).collect();
            if uids.len() > MAX_UIDS {
                return Err(invalid("too many UIDs"));
            }
            if uids.iter().any(|u| !super::attributes::valid_uid(u)) {
                return Err(invalid("not a valid UID"));
            }
            if uids.len() == 1 {
                Ok(Condition::Exact(
                    uids.into_iter().next().unwrap_or_default(),
                ))
            } else {
                Ok(Condition::UidList(uids))
            }
        }
        VR::IS | VR::US | VR::UL | VR::SS | VR::SL => {
            v.parse::<i64>().map_err(|_| invalid("not an integer"))?;
            Ok(Condition::Exact(v.to_owned()))
        }
        _ => {
            if v.contains('*') || v.contains('?') {
                Ok(Condition::Wildcard(v.to_owned()))
            } else {
                Ok(Condition::Exact(v.to_owned()))
            }
        }
    }
}

/// Escapes a value for SQLite GLOB, turning DICOM `*`/`?` into GLOB wildcards when
/// `wild`: only `[` is special besides them.
fn glob(value: &str, wild: bool) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '[' => out.push_str("[[]"),
            '*' if !wild => out.push_str("[*]"),
            '?' if !wild => out.push_str("[?]"),
            c => out.push(c),
        }
    }
    out
}

/// Upper-cases a person name for the `_norm` columns and PN patterns.
pub fn normalise_pn(value: &str) -> String {
    value.to_uppercase()
}

fn push_pn(qb: &mut QueryBuilder<'_, Sqlite>, norm: &'static str, pattern: String, fuzzy: bool) {
    // Whole value, or one component group (first, middle, last).
    let variants = [
        pattern.clone(),
        format!("{pattern}=*"),
        format!("*={pattern}"),
        format!("*={pattern}=*"),
    ];
    qb.push("(");
    for (n, p) in variants.into_iter().enumerate() {
        if n > 0 {
            qb.push(" OR ");
        }
        qb.push(norm).push(" GLOB ").push_bind(p);
    }
    if fuzzy {
        // Any component starting with the pattern (component order does not matter).
        qb.push(" OR ")
            .push(norm)
            .push(" GLOB ")
            .push_bind(format!("{pattern}*"));
        qb.push(" OR ")
            .push(norm)
            .push(" GLOB ")
            .push_bind(format!("*[=^ ]{pattern}*"));
    }
    qb.push(")");
}

fn push_condition(qb: &mut QueryBuilder<'_, Sqlite>, fd: &Field, cond: &Condition, fuzzy: bool) {
    let expr = fd.expr;
    match (fd.kind, cond) {
        (_, Condition::Universal) | (Kind::Computed, _) => {
            qb.push("1");
        }
        (Kind::Modalities, c) => {
            qb.push("EXISTS (SELECT 1 FROM series s4 WHERE s4.study_ref = st.id AND ");
            match c {
                Condition::Wildcard(w) => {
                    qb.push("s4.modality GLOB ").push_bind(glob(w, true));
                }
                Condition::Exact(v) => {
                    let mut list = qb.separated(", ");
                    list.push_unseparated("s4.modality IN (");
                    for m in v
                        .split(['\\', ','])
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                    {
                        list.push_bind(m.to_owned());
                    }
                    list.push_unseparated(")");
                }
                Condition::UidList(vs) => {
                    let mut list = qb.separated(", ");
                    list.push_unseparated("s4.modality IN (");
                    for m in vs {
                        list.push_bind(m.clone());
                    }
                    list.push_unseparated(")");
                }
                _ => {
                    qb.push("0");
                }
            }
            qb.push(")");
        }
        (Kind::Pn { norm }, Condition::Exact(v)) => {
            push_pn(qb, norm, glob(&normalise_pn(v), false), fuzzy)
        }
        (Kind::Pn { norm }, Condition::Wildcard(w)) => {
            push_pn(qb, norm, glob(&normalise_pn(w), true), fuzzy)
        }
        (Kind::Int, Condition::Exact(v)) => {
            qb.push(expr)
                .push(" = ")
                .push_bind(v.parse::<i64>().unwrap_or(i64::MIN));
        }
        (_, Condition::Exact(v)) => {
            qb.push(expr).push(" = ").push_bind(v.clone());
        }
        (_, Condition::Wildcard(w)) => {
            qb.push(expr).push(" GLOB ").push_bind(glob(w, true));
        }
        (_, Condition::Range { from, to }) => {
            // Empty (unknown) values never match a range.
            qb.push("(").push(expr).push(" <> ''");
            push_bounds(qb, expr, from.as_deref(), to.as_deref());
            qb.push(")");
        }
        (_, Condition::UidList(vs)) => {
            let mut list = qb.separated(", ");
            list.push_unseparated(format!("{expr} IN ("));
            for v in vs {
                list.push_bind(v.clone());
            }
            list.push_unseparated(")");
        }
    }
}

/// One date-time range made of a StudyDate range and a StudyTime range: each bound is the
/// date's bound followed by the time's (a bound the date lacks is open, whatever the time
/// says, since a time alone names no day).
struct DateTimeRange {
    from: Option<String>,
    to: Option<String>,
}

fn combined_study_datetime(query: &Query) -> Option<DateTimeRange> {
    if !query.combined_datetime {
        return None;
    }
    let range = |tag: Tag| {
        query.keys.iter().find_map(|k| match &k.condition {
            Condition::Range { from, to } if k.tag == tag => Some((from, to)),
            _ => None,
        })
    };
    let (date_from, date_to) = range(tags::STUDY_DATE)?;
    let (time_from, time_to) = range(tags::STUDY_TIME)?;
    let join = |date: &Option<String>, time: &Option<String>| {
        date.as_ref()
            .map(|d| format!("{d}{}", time.as_deref().unwrap_or("")))
    };
    Some(DateTimeRange {
        from: join(date_from, time_from),
        to: join(date_to, time_to),
    })
}

/// Matches `date || time` of the study against the range; prefixes compare as in a time
/// range, so an upper bound `20240107` + `18` includes `20240107` `1800.5`. A study without
/// a date never matches; one without a time counts as the start of its day.
fn push_datetime_range(qb: &mut QueryBuilder<'_, Sqlite>, range: &DateTimeRange) {
    const DATETIME: &str = "(st.study_date || st.study_time)";
    qb.push("(st.study_date <> ''");
    push_bounds(qb, DATETIME, range.from.as_deref(), range.to.as_deref());
    qb.push(")");
}

/// ` AND expr >= from AND <expr's prefix as long as to> <= to`, for the bounds given: an
/// upper bound compares as a prefix, so `-1015` includes `101500.123`.
fn push_bounds(
    qb: &mut QueryBuilder<'_, Sqlite>,
    expr: &str,
    from: Option<&str>,
    to: Option<&str>,
) {
    if let Some(from) = from {
        qb.push(" AND ")
            .push(expr)
            .push(" >= ")
            .push_bind(from.to_owned());
    }
    if let Some(to) = to {
        qb.push(" AND substr(")
            .push(expr)
            .push(", 1, ")
            .push_bind(to.len() as i64)
            .push(") <= ")
            .push_bind(to.to_owned());
    }
}

/// Validates the keys of a query against its level.
pub(crate) fn check_keys(query: &Query) -> Result<(), QueryError> {
    for key in &query.keys {
        if !matchable_keys(query.level).contains(&key.tag) {
            return Err(QueryError::UnsupportedKey {
                keyword: keyword(key.tag),
                level: query.level.as_str(),
            });
        }
    }
    Ok(())
}

/// The tags a query returns (in the index).
fn returned_fields(query: &Query) -> Vec<&'static Field> {
    let mut tags: Vec<Tag> = default_tags(query.level).to_vec();
    tags.extend(query.keys.iter().map(|k| k.tag));
    match &query.include {
        Include::Default => {}
        Include::All => tags.extend(FIELDS.iter().map(|f| f.tag)),
        Include::Tags(t) => tags.extend(t.iter().copied()),
    }
    let mut out: Vec<&'static Field> = FIELDS
        .iter()
        .filter(|f| tags.contains(&f.tag) && returnable_at(f, query.level))
        .collect();
    out.sort_by_key(|f| f.tag);
    out
}

/// Builds the SELECT for `query`. Callers run [`check_keys`] first.
pub(crate) fn build_sql(query: &Query) -> (QueryBuilder<'static, Sqlite>, Vec<&'static Field>) {
    let fields = returned_fields(query);
    let mut qb = QueryBuilder::new("SELECT ");
    for (n, fd) in fields.iter().enumerate() {
        if n > 0 {
            qb.push(", ");
        }
        qb.push(format!("CAST({} AS TEXT) AS c{n}", fd.expr));
    }
    if fields.is_empty() {
        qb.push("1");
    }
    let (from, order) = match query.level {
        QueryLevel::Study => (
            "studies st JOIN patients p ON p.id = st.patient_ref",
            "st.id",
        ),
        QueryLevel::Series => (
            "series se JOIN studies st ON st.id = se.study_ref JOIN patients p ON p.id = st.patient_ref",
            "st.id, se.series_number, se.id",
        ),
        QueryLevel::Instance => (
            "instances i JOIN series se ON se.id = i.series_ref JOIN studies st ON st.id = se.study_ref \
             JOIN patients p ON p.id = st.patient_ref",
            "st.id, se.series_number, se.id, i.instance_number, i.id",
        ),
    };
    qb.push(" FROM ").push(from).push(" WHERE 1");
    let combined = combined_study_datetime(query);
    if let Some(range) = &combined {
        qb.push(" AND ");
        push_datetime_range(&mut qb, range);
    }
    for key in &query.keys {
        if combined.is_some() && (key.tag == tags::STUDY_DATE || key.tag == tags::STUDY_TIME) {
            continue;
        }
        if let Some(fd) = field(key.tag) {
            qb.push(" AND ");
            push_condition(&mut qb, fd, &key.condition, query.fuzzy_matching);
        }
    }
    qb.push(" ORDER BY ").push(order);
    qb.push(" LIMIT ")
        .push_bind(query.limit.map(i64::from).unwrap_or(-1))
        .push(" OFFSET ")
        .push_bind(i64::from(query.offset));
    (qb, fields)
}

/// Turns a result row into an AttributeSet.
pub(crate) fn row_to_attributes(
    row: &sqlx::sqlite::SqliteRow,
    fields: &[&'static Field],
) -> Result<AttributeSet, sqlx::Error> {
    let mut set = AttributeSet::new();
    for (n, fd) in fields.iter().enumerate() {
        let value: Option<String> = row.try_get(n)?;
        let values = match value {
            Some(v) if !v.is_empty() => v.split('\\').map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        set.insert(fd.tag, Attribute { vr: fd.vr, values });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        assert_eq!(
            parse_condition(tags::PATIENT_NAME, "").unwrap(),
            Condition::Universal
        );
        assert_eq!(
            parse_condition(tags::PATIENT_NAME, "*").unwrap(),
            Condition::Universal
        );
        assert_eq!(
            parse_condition(tags::PATIENT_NAME, "Wu*").unwrap(),
            Condition::Wildcard("Wu*".into())
        );
        assert_eq!(
            parse_condition(tags::PATIENT_ID, "123").unwrap(),
            Condition::Exact("123".into())
        );
        assert_eq!(
            parse_condition(tags::STUDY_DATE, "20260101-20261231").unwrap(),
            Condition::Range {
                from: Some("20260101".into()),
                to: Some("20261231".into())
            }
        );
        assert_eq!(
            parse_condition(tags::STUDY_DATE, "-20261231").unwrap(),
            Condition::Range {
                from: None,
                to: Some("20261231".into())
            }
        );
        assert_eq!(
            parse_condition(tags::STUDY_TIME, "10:15-").unwrap(),
            Condition::Range {
                from: Some("1015".into()),
                to: None
            }
        );
        assert!(parse_condition(tags::STUDY_DATE, "2026-01").is_err());
        assert!(parse_condition(tags::STUDY_DATE, "yesterday").is_err());
        assert_eq!(
            parse_condition(tags::STUDY_INSTANCE_UID, "1.2\\1.3").unwrap(),
            Condition::UidList(vec!["1.2".into(), "1.3".into()])
        );
        assert!(parse_condition(tags::STUDY_INSTANCE_UID, "1.2'; DROP TABLE").is_err());
        assert!(parse_condition(tags::SERIES_NUMBER, "x").is_err());
        assert!(parse_condition(tags::PATIENT_NAME, &"a".repeat(5000)).is_err());
    }

    #[test]
    fn attributes_resolve() {
        assert_eq!(
            resolve_attribute("PatientName").unwrap(),
            tags::PATIENT_NAME
        );
        assert_eq!(resolve_attribute("00100010").unwrap(), tags::PATIENT_NAME);
        assert_eq!(
            resolve_attribute("ModalitiesInStudy").unwrap(),
            tags::MODALITIES_IN_STUDY
        );
        assert_eq!(
            resolve_attribute("BitsAllocated").unwrap(),
            tags::BITS_ALLOCATED
        );
        assert!(matches!(
            resolve_attribute("NoSuchThing"),
            Err(QueryError::UnknownAttribute(_))
        ));
        assert!(matchable_keys(QueryLevel::Study).contains(&tags::MODALITIES_IN_STUDY));
        assert!(!matchable_keys(QueryLevel::Study).contains(&tags::SOP_INSTANCE_UID));
        assert!(matchable_keys(QueryLevel::Instance).contains(&tags::PATIENT_NAME));
    }

    #[test]
    fn glob_escaping() {
        assert_eq!(glob("a[b]*?", true), "a[[]b]*?");
        assert_eq!(glob("a*?", false), "a[*][?]");
    }

    #[test]
    fn unsupported_keys_are_refused() {
        let q = Query {
            level: QueryLevel::Study,
            keys: vec![MatchKey {
                tag: tags::SOP_INSTANCE_UID,
                condition: Condition::Universal,
            }],
            include: Include::Default,
            fuzzy_matching: false,
            combined_datetime: false,
            limit: None,
            offset: 0,
        };
        assert!(matches!(
            check_keys(&q),
            Err(QueryError::UnsupportedKey { .. })
        ));
    }
}
