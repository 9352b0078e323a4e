//! `radserve emr import`: an offline import of an EMR export file (CSV, HL7 v2 or a FHIR
//! Bundle) into the data directory, through the same [`super::Emr::ingest`] as the API.
//!
//! CSV exports are read with a mapping file (TOML, see
//! `scripts/emr/csv-mapping.example.toml`) that says which column holds what. A row is one
//! order with its patient's columns, or one patient (all order columns empty). A bad row is
//! reported with its line, column and reason, and the other rows proceed; the whole file
//! is refused ([`ImportError`]) only when it or the mapping cannot be used.
//!
//! Record ids are derived from the row (`csv-<patient id>`, `csv-<placer or accession>`),
//! so importing the same export again updates records instead of duplicating them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use chrono::format::{Item, StrftimeItems};
use chrono::{FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use serde::Deserialize;

use super::fhir::{ParsedBundle, parse_bundle};
use super::{EmrEncounter, EmrOrder, EmrPatient, HumanName, Identifier};

/// Largest file accepted.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Most data rows one CSV file may hold.
pub const MAX_ROWS: usize = 2_000_000;
/// Most row errors kept (and printed) in full; the rest are only counted.
pub const MAX_REPORTED_ERRORS: usize = 1_000;

use super::fhir::{GENDERS, REQUEST_STATUSES};

/// The file or the mapping cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, more than the {max} accepted")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("mapping {path}: {message}")]
    Mapping { path: PathBuf, message: String },
    #[error("mapping: {0}")]
    MappingRule(String),
    #[error("CSV header: {0}")]
    Header(String),
    #[error("the file has more than {max} data rows")]
    TooManyRows { max: usize },
    #[error("{0}")]
    Unusable(String),
}

/// The export formats `radserve emr import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Hl7,
    Fhir,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "hl7" => Ok(Format::Hl7),
            "fhir" => Ok(Format::Fhir),
            other => Err(format!("unknown format {other:?} (csv, hl7, fhir)")),
        }
    }
}

/// The mapping file: which CSV column holds what.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    #[serde(default)]
    pub csv: CsvOptions,
    pub patient: PatientColumns,
    pub order: Option<OrderColumns>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// One ASCII character; `,` by default.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: default_delimiter(),
        }
    }
}

fn default_delimiter() -> String {
    ",".into()
}

fn default_date_format() -> String {
    "%Y-%m-%d".into()
}

fn default_date_time_format() -> String {
    "%Y-%m-%dT%H:%M:%S".into()
}

/// `[patient]`: column names (and the formats of their values).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientColumns {
    /// The patient identifier (required).
    pub id: String,
    /// The identifier's system / issuer (e.g. `urn:oid:...`).
    pub id_system: Option<String>,
    pub family: Option<String>,
    /// Given names, separated by spaces.
    pub given: Option<String>,
    /// The full name as one text.
    pub name: Option<String>,
    pub birth_date: Option<String>,
    /// chrono format of `birth_date` (`%Y-%m-%d` by default).
    #[serde(default = "default_date_format")]
    pub birth_date_format: String,
    pub sex: Option<String>,
    /// Export value → `male`, `female`, `other` or `unknown` (case-insensitive keys).
    #[serde(default)]
    pub sex_values: BTreeMap<String, String>,
}

/// `[order]`: column names; absent, every row is a patient.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderColumns {
    pub accession: Option<String>,
    pub placer: Option<String>,
    pub procedure_code: Option<String>,
    /// The code system of `procedure_code` (a URI, e.g. `http://loinc.org`): a value, not
    /// a column.
    pub procedure_code_system: Option<String>,
    pub procedure_text: Option<String>,
    pub date_time: Option<String>,
    /// chrono format of `date_time` (`%Y-%m-%dT%H:%M:%S` by default).
    #[serde(default = "default_date_time_format")]
    pub date_time_format: String,
    /// The offset of the export's local times (`+02:00`, `Z`), unless the format has `%z`.
    pub time_zone: Option<String>,
    pub status: Option<String>,
    /// Export value → FHIR ServiceRequest.status (case-insensitive keys).
    #[serde(default)]
    pub status_values: BTreeMap<String, String>,
    /// The status of orders without a status column (`active` by default).
    pub default_status: Option<String>,
    pub reason: Option<String>,
    pub encounter: Option<String>,
}

/// The (key, column) pairs whose column is set.
fn present<'a>(pairs: &[(&'static str, &'a Option<String>)]) -> Vec<(&'static str, &'a str)> {
    pairs
        .iter()
        .filter_map(|&(k, c)| c.as_deref().map(|c| (k, c)))
        .collect()
}

impl Mapping {
    /// Reads and checks a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
            path: path.to_owned(),
            source,
        })?;
        Mapping::parse(&text).map_err(|message| ImportError::Mapping {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and checks a mapping; the error names the key.
    pub fn parse(text: &str) -> Result<Mapping, String> {
        let mapping: Mapping = toml::from_str(text).map_err(|e| e.to_string())?;
        mapping.check()?;
        Ok(mapping)
    }

    fn check(&self) -> Result<(), String> {
        let d = self.csv.delimiter.as_bytes();
        if d.len() != 1 || !d[0].is_ascii() {
            return Err(format!(
                "csv.delimiter {:?} must be one ASCII character",
                self.csv.delimiter
            ));
        }
        let p = &self.patient;
        if p.id.trim().is_empty() {
            return Err("patient.id must name a column".into());
        }
        check_format("patient.birth_date_format", &p.birth_date_format)?;
        for (from, to) in &p.sex_values {
            if !GENDERS.contains(&to.as_str()) {
                return Err(format!(
                    "patient.sex_values.{from} = {to:?} is not one of {}",
                    GENDERS.join(", ")
                ));
            }
        }
        if let Some(o) = &self.order {
            if o.accession.is_none() && o.placer.is_none() {
                return Err(
                    "order: needs order.accession or order.placer (the order's identifier)".into(),
                );
            }
            check_format("order.date_time_format", &o.date_time_format)?;
            if let Some(tz) = &o.time_zone {
                parse_offset(tz).map_err(|why| format!("order.time_zone {tz:?}: {why}"))?;
            } else if o.date_time.is_some() && !o.date_time_format.contains("%z") {
                return Err(
                    "order.time_zone is required when order.date_time_format has no %z".into(),
                );
            }
            for (key, status) in o
                .status_values
                .iter()
                .map(|(k, v)| (format!("order.status_values.{k}"), v))
                .chain(
                    o.default_status
                        .iter()
                        .map(|v| ("order.default_status".to_string(), v)),
                )
            {
                if !REQUEST_STATUSES.contains(&status.as_str()) {
                    return Err(format!(
                        "{key} = {status:?} is not one of {}",
                        REQUEST_STATUSES.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// (mapping key, column) for every column the mapping names.
    pub fn columns(&self) -> Vec<(&'static str, &str)> {
        let p = &self.patient;
        let mut out = vec![("patient.id", p.id.as_str())];
        let optional = [
            ("patient.id_system", &p.id_system),
            ("patient.family", &p.family),
            ("patient.given", &p.given),
            ("patient.name", &p.name),
            ("patient.birth_date", &p.birth_date),
            ("patient.sex", &p.sex),
        ];
        out.extend(present(&optional));
        if let Some(o) = &self.order {
            let optional = [
                ("order.accession", &o.accession),
                ("order.placer", &o.placer),
                ("order.procedure_code", &o.procedure_code),
                ("order.procedure_text", &o.procedure_text),
                ("order.date_time", &o.date_time),
                ("order.status", &o.status),
                ("order.reason", &o.reason),
                ("order.encounter", &o.encounter),
            ];
            out.extend(present(&optional));
        }
        out
    }
}

fn check_format(key: &str, format: &str) -> Result<(), String> {
    if format.trim().is_empty() || StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(format!("{key} {format:?} is not a valid date format"));
    }
    Ok(())
}

/// `Z`, `+hh:mm`, `-hh:mm` or `+hhmm`.
pub fn parse_offset(text: &str) -> Result<FixedOffset, &'static str> {
    const SHAPE: &str = "not a UTC offset (Z, +hh:mm or -hh:mm)";
    let t = text.trim();
    if t == "Z" || t == "UTC" {
        return FixedOffset::east_opt(0).ok_or(SHAPE);
    }
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(SHAPE),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SHAPE);
    }
    let hours: i32 = digits[..2].parse().map_err(|_| SHAPE)?;
    let minutes: i32 = digits[2..].parse().map_err(|_| SHAPE)?;
    if hours > 14 || minutes > 59 {
        return Err(SHAPE);
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).ok_or(SHAPE)
}

/// A birth date in `format` → FHIR `YYYY-MM-DD`.
pub fn parse_date(value: &str, format: &str) -> Result<String, String> {
    NaiveDate::parse_from_str(value.trim(), format)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .map_err(|e| format!("{value:?} is not a date in the format {format:?} ({e})"))
}

/// An order date-time in `format` (local to `offset` unless the format has `%z`) →
/// FHIR `dateTime` with its offset.
pub fn parse_date_time(
    value: &str,
    format: &str,
    offset: Option<FixedOffset>,
) -> Result<String, String> {
    let value = value.trim();
    let bad = |e: chrono::ParseError| {
        format!("{value:?} is not a date-time in the format {format:?} ({e})")
    };
    let at = match offset {
        Some(offset) if !format.contains("%z") => {
            let naive = NaiveDateTime::parse_from_str(value, format).map_err(bad)?;
            offset
                .from_local_datetime(&naive)
                .single()
                .ok_or_else(|| format!("{value:?} is not a valid local time"))?
        }
        _ => chrono::DateTime::parse_from_str(value, format).map_err(bad)?,
    };
    Ok(at.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

/// A sex value of the export → FHIR `gender`: through `values` (case-insensitive), else the
/// FHIR codes themselves and `M`/`F`/`O`/`U`.
pub fn parse_sex(value: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let v = value.trim();
    if let Some((_, to)) = values.iter().find(|(k, _)| k.eq_ignore_ascii_case(v)) {
        return Ok(to.clone());
    }
    let lower = v.to_ascii_lowercase();
    if GENDERS.contains(&lower.as_str()) {
        return Ok(lower);
    }
    match lower.as_str() {
        "m" => Ok("male".into()),
        "f" => Ok("female".into()),
        "o" => Ok("other".into()),
        "u" => Ok("unknown".into()),
        _ => Err(format!(
            "{v:?} is not a known sex value (map it in patient.sex_values)"
        )),
    }
}

/// A stable FHIR id `csv-<value>`: the value as is when it is FHIR-id-safe and short,
/// else a sanitised prefix and a hash of the whole value (so that distinct values stay
/// distinct).
pub fn record_id(value: &str) -> String {
    let value = value.trim();
    let safe = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if safe && !value.is_empty() && value.len() <= 60 {
        return format!("csv-{value}");
    }
    // FNV-1a, stable across runs and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let prefix: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("csv-{prefix}-{hash:016x}")
}

/// One refused row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    /// Line in the file (1-based; the header is line 1); 0 for formats whose message says
    /// where (a Bundle entry, an HL7 message).
    pub line: u64,
    /// The column at fault, when one is.
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}", self.line)?;
            if let Some(column) = &self.column {
                write!(f, ", column {column:?}")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// What a CSV file gave.
#[derive(Debug, Clone, Default)]
pub struct CsvRecords {
    pub records: ParsedBundle,
    /// Data rows read.
    pub rows: usize,
    /// Rows refused (all of them, even beyond [`MAX_REPORTED_ERRORS`]).
    pub refused: usize,
    /// The first [`MAX_REPORTED_ERRORS`] refusals.
    pub errors: Vec<RowError>,
}

/// Indices of the mapped columns in the header.
struct Columns {
    index: HashMap<&'static str, (usize, String)>,
}

impl Columns {
    fn new(mapping: &Mapping, header: &[String]) -> Result<Columns, ImportError> {
        let mut index = HashMap::new();
        for (key, column) in mapping.columns() {
            let at = header
                .iter()
                .position(|h| h.trim() == column.trim())
                .ok_or_else(|| {
                    ImportError::Header(format!(
                        "mapping key {key} names column {column:?}, which the header lacks \
                         (columns: {})",
                        header.join(", ")
                    ))
                })?;
            index.insert(key, (at, column.to_string()));
        }
        Ok(Columns { index })
    }
}

/// One row's values by mapping key.
struct Row<'a> {
    columns: &'a Columns,
    fields: &'a [String],
    line: u64,
}

impl Row<'_> {
    /// The trimmed value, `None` when unmapped or empty.
    fn get(&self, key: &str) -> Option<&str> {
        let (at, _) = self.columns.index.get(key)?;
        let v = self.fields.get(*at)?.trim();
        (!v.is_empty()).then_some(v)
    }

    fn error(&self, key: &str, message: String) -> RowError {
        RowError {
            line: self.line,
            column: self.columns.index.get(key).map(|(_, c)| c.clone()),
            message,
        }
    }
}

/// Reads a CSV export with `mapping`; `progress` gets the bytes read so far.
pub fn read_csv(
    data: &[u8],
    mapping: &Mapping,
    mut progress: impl FnMut(u64),
) -> Result<CsvRecords, ImportError> {
    let delimiter = mapping.csv.delimiter.as_bytes().first().copied();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter.unwrap_or(b','))
        .flexible(true)
        .has_headers(true)
        .from_reader(data);
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(|e| ImportError::Header(e.to_string()))?
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    if header.iter().all(|h| h.trim().is_empty()) {
        return Err(ImportError::Header("the file has no header row".into()));
    }
    let columns = Columns::new(mapping, &header)?;

    let mut out = CsvRecords::default();
    let mut patients: BTreeMap<String, (u64, EmrPatient)> = BTreeMap::new();
    let mut orders: BTreeMap<String, (u64, EmrOrder)> = BTreeMap::new();
    let mut encounters: BTreeMap<String, EmrEncounter> = BTreeMap::new();
    fn refuse(out: &mut CsvRecords, e: RowError) {
        out.refused += 1;
        if out.errors.len() < MAX_REPORTED_ERRORS {
            out.errors.push(e);
        }
    }
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                // An I/O or syntax error leaves the reader unable to go on reliably.
                refuse(
                    &mut out,
                    RowError {
                        line,
                        column: None,
                        message: format!("unreadable CSV: {e}"),
                    },
                );
                if !matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) {
                    break;
                }
                continue;
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        out.rows += 1;
        if out.rows > MAX_ROWS {
            return Err(ImportError::TooManyRows { max: MAX_ROWS });
        }
        if out.rows % 1024 == 0 {
            progress(reader.position().byte());
        }
        if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            out.rows -= 1;
            continue;
        }
        let mut fields = Vec::with_capacity(record.len());
        let mut bad_utf8 = None;
        for (i, f) in record.iter().enumerate() {
            match std::str::from_utf8(f) {
                Ok(s) => fields.push(s.to_string()),
                Err(_) => {
                    bad_utf8.get_or_insert(i);
                    fields.push(String::new());
                }
            }
        }
        if let Some(i) = bad_utf8 {
            refuse(
                &mut out,
                RowError {
                    line,
                    column: header.get(i).cloned(),
                    message: "the value is not UTF-8 (export the file as UTF-8)".into(),
                },
            );
            continue;
        }
        if fields.len() != header.len() {
            refuse(
                &mut out,
                RowError {
                    line,
                    column: None,
                    message: format!(
                        "the row has {} fields, the header {}",
                        fields.len(),
                        header.len()
                    ),
                },
            );
            continue;
        }
        let row = Row {
            columns: &columns,
            fields: &fields,
            line,
        };
        let (patient, order) = match read_row(&row, mapping) {
            Ok(parsed) => parsed,
            Err(e) => {
                refuse(&mut out, e);
                continue;
            }
        };
        // The same patient on several rows must say the same.
        if let Some((first, known)) = patients.get(&patient.id)
            && *known != patient
        {
            refuse(
                &mut out,
                RowError {
                    line,
                    column: None,
                    message: format!(
                        "patient {} differs from line {first} (same identifier, other \
                         demographics)",
                        patient.identifiers[0].value
                    ),
                },
            );
            continue;
        }
        if let Some((order, _)) = &order
            && let Some((first, known)) = orders.get(&order.id)
            && known != order
        {
            refuse(
                &mut out,
                row.error(
                    if mapping.order.as_ref().is_some_and(|o| o.placer.is_some()) {
                        "order.placer"
                    } else {
                        "order.accession"
                    },
                    format!("order {} differs from line {first}", order.id),
                ),
            );
            continue;
        }
        patients
            .entry(patient.id.clone())
            .or_insert((line, patient));
        if let Some((order, encounter)) = order {
            if let Some(encounter) = encounter {
                encounters.entry(encounter.id.clone()).or_insert(encounter);
            }
            orders.entry(order.id.clone()).or_insert((line, order));
        }
    }
    progress(reader.position().byte());
    out.records = ParsedBundle {
        patients: patients.into_values().map(|(_, p)| p).collect(),
        orders: orders.into_values().map(|(_, o)| o).collect(),
        encounters: encounters.into_values().collect(),
        ..ParsedBundle::default()
    };
    Ok(out)
}

type RowOrder = Option<(EmrOrder, Option<EmrEncounter>)>;

fn read_row(row: &Row<'_>, mapping: &Mapping) -> Result<(EmrPatient, RowOrder), RowError> {
    let p = &mapping.patient;
    let id = row
        .get("patient.id")
        .ok_or_else(|| row.error("patient.id", "the patient identifier is empty".into()))?;
    let birth_date = row
        .get("patient.birth_date")
        .map(|v| parse_date(v, &p.birth_date_format))
        .transpose()
        .map_err(|m| row.error("patient.birth_date", m))?;
    let gender = row
        .get("patient.sex")
        .map(|v| parse_sex(v, &p.sex_values))
        .transpose()
        .map_err(|m| row.error("patient.sex", m))?;
    let family = row.get("patient.family").map(str::to_string);
    let given: Vec<String> = row
        .get("patient.given")
        .map(|g| g.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let text = row.get("patient.name").map(str::to_string);
    let names = if family.is_none() && given.is_empty() && text.is_none() {
        Vec::new()
    } else {
        vec![HumanName {
            family,
            given,
            text,
        }]
    };
    let patient = EmrPatient {
        id: record_id(id),
        identifiers: vec![Identifier {
            system: row.get("patient.id_system").map(str::to_string),
            value: id.to_string(),
            type_code: Some("MR".into()),
        }],
        names,
        birth_date,
        gender,
    };
    let Some(o) = &mapping.order else {
        return Ok((patient, None));
    };
    let accession = row.get("order.accession");
    let placer = row.get("order.placer");
    let Some(key) = placer.or(accession) else {
        let stray = [
            "order.procedure_code",
            "order.procedure_text",
            "order.date_time",
            "order.reason",
            "order.encounter",
        ]
        .into_iter()
        .find(|k| row.get(k).is_some());
        return match stray {
            // A patient row: no order columns filled in.
            None => Ok((patient, None)),
            Some(k) => Err(row.error(
                k,
                "an order without an accession or placer order number".into(),
            )),
        };
    };
    let status = match row.get("order.status") {
        None => o.default_status.clone().unwrap_or_else(|| "active".into()),
        Some(v) => {
            let mapped = o
                .status_values
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(v))
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| v.to_ascii_lowercase());
            if !REQUEST_STATUSES.contains(&mapped.as_str()) {
                return Err(row.error(
                    "order.status",
                    format!("{v:?} is not a known order status (map it in order.status_values)"),
                ));
            }
            mapped
        }
    };
    let offset = o.time_zone.as_deref().and_then(|tz| parse_offset(tz).ok());
    let occurrence = row
        .get("order.date_time")
        .map(|v| parse_date_time(v, &o.date_time_format, offset))
        .transpose()
        .map_err(|m| row.error("order.date_time", m))?;
    let mut identifiers = Vec::new();
    if let Some(placer) = placer {
        identifiers.push(Identifier {
            system: None,
            value: placer.to_string(),
            type_code: Some("PLAC".into()),
        });
    }
    if let Some(accession) = accession {
        identifiers.push(Identifier {
            system: None,
            value: accession.to_string(),
            type_code: Some("ACSN".into()),
        });
    }
    let encounter = row.get("order.encounter").map(|e| EmrEncounter {
        id: record_id(e),
        patient: Some(patient.id.clone()),
        status: "unknown".into(),
        class_code: None,
        period_start: None,
    });
    let code = row.get("order.procedure_code").map(str::to_string);
    let order = EmrOrder {
        id: record_id(key),
        identifiers,
        patient: Some(patient.id.clone()),
        encounter: encounter.as_ref().map(|e| e.id.clone()),
        status,
        code_system: code
            .as_ref()
            .and(o.procedure_code_system.clone())
            .filter(|s| !s.is_empty()),
        code,
        code_display: row.get("order.procedure_text").map(str::to_string),
        occurrence,
        authored_on: None,
        requester: None,
        reason: row.get("order.reason").map(str::to_string),
    };
    Ok((patient, Some((order, encounter))))
}

/// Reads a file whole, refusing one larger than [`MAX_FILE_BYTES`].
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ImportError::TooLarge {
            path: path.to_owned(),
            size,
            max: MAX_FILE_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Reads an export file of `format` into records; refusals are rendered as text.
pub fn read_export(
    data: &[u8],
    format: Format,
    mapping: Option<&Mapping>,
    progress: impl FnMut(u64),
) -> Result<CsvRecords, ImportError> {
    match format {
        Format::Csv => {
            let mapping = mapping.ok_or_else(|| {
                ImportError::MappingRule("--format csv needs a mapping (--map FILE)".into())
            })?;
            read_csv(data, mapping, progress)
        }
        Format::Fhir => {
            let parsed = parse_bundle(data).map_err(|e| ImportError::Unusable(e.to_string()))?;
            let errors: Vec<RowError> = parsed
                .errors
                .iter()
                .map(|e| RowError {
                    line: 0,
                    column: None,
                    message: format!(
                        "entry {}{}: {}",
                        e.index,
                        e.full_url
                            .as_deref()
                            .map(|u| format!(" ({u})"))
                            .unwrap_or_default(),
                        e.message
                    ),
                })
                .collect();
            let rows = parsed.patients.len()
                + parsed.orders.len()
                + parsed.encounters.len()
                + errors.len();
            Ok(CsvRecords {
                records: ParsedBundle {
                    errors: Vec::new(),
                    ..parsed
                },
                rows,
                refused: errors.len(),
                errors,
            })
        }
        Format::Hl7 => {
            let text = std::str::from_utf8(data)
                .map_err(|e| ImportError::Unusable(format!("the file is not UTF-8: {e}")))?;
            let (messages, failed) = super::hl7::parse_file(text);
            let rows = messages.len() + failed.len();
            let errors: Vec<RowError> = failed
                .iter()
                .map(|e| RowError {
                    line: 0,
                    column: None,
                    message: e.to_string(),
                })
                .collect();
            Ok(CsvRecords {
                records: super::hl7::merge(messages),
                rows,
                refused: errors.len(),
                errors,
            })
        }
    }
}

/// The summary printed at the end of an import.
pub fn summary(read: &CsvRecords, report: &super::ingest::IngestReport) -> String {
    let counts = |c: &crate::store::emr::UpsertCounts| {
        format!(
            "{} created, {} updated, {} unchanged",
            c.created, c.updated, c.unchanged
        )
    };
    let mut out = format!(
        "rows read: {}, refused: {}\npatients: {}\norders: {}\nencounters: {}\n\
         join: {} linked, {} ambiguous, {} unmatched",
        read.rows,
        read.refused,
        counts(&report.patients),
        counts(&report.orders),
        counts(&report.encounters),
        report.join.linked,
        report.join.ambiguous,
        report.join.unmatched,
    );
    for (kind, n) in &report.ignored {
        out.push_str(&format!("\nignored: {n} {kind}"));
    }
    out
}

/// Whether the import stored anything (records created, updated or confirmed unchanged).
pub fn imported_anything(report: &super::ingest::IngestReport) -> bool {
    [&report.patients, &report.orders, &report.encounters]
        .iter()
        .any(|c| c.created + c.updated + c.unchanged > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPPING: &str = r#"
[patient]
id = "pid"
id_system = "issuer"
family = "last"
given = "first"
birth_date = "dob"
birth_date_format = "%d.%m.%Y"
sex = "sex"
sex_values = { W = "female", D = "other" }

[order]
accession = "acc"
placer = "placer"
procedure_text = "exam"
date_time = "when"
date_time_format = "%d.%m.%Y %H:%M"
time_zone = "+02:00"
status = "status"
status_values = { done = "completed" }
encounter = "visit"
"#;

    const HEADER: &str = "pid,issuer,last,first,dob,sex,acc,placer,exam,when,status,visit\n";

    fn mapping() -> Mapping {
        Mapping::parse(MAPPING).unwrap()
    }

    fn read(body: &str) -> CsvRecords {
        read_csv(format!("{HEADER}{body}").as_bytes(), &mapping(), |_| {}).unwrap()
    }

    #[test]
    fn mapping_errors_name_the_key() {
        let err = Mapping::parse(&MAPPING.replace("family =", "famly =")).unwrap_err();
        assert!(err.contains("famly"), "{err}");
        let err = Mapping::parse("[order]\naccession = \"a\"\n").unwrap_err();
        assert!(err.contains("patient"), "{err}");
        let err = Mapping::parse(&MAPPING.replace("W = \"female\"", "W = \"woman\"")).unwrap_err();
        assert!(err.contains("patient.sex_values.W"), "{err}");
        let err = Mapping::parse(&MAPPING.replace("\"+02:00\"", "\"CET\"")).unwrap_err();
        assert!(err.contains("order.time_zone"), "{err}");
        let err = Mapping::parse(&MAPPING.replace("%d.%m.%Y\"\n", "%Q\"\n")).unwrap_err();
        assert!(err.contains("patient.birth_date_format"), "{err}");
        let err = Mapping::parse(
            &MAPPING
                .replace("accession = \"acc\"\n", "")
                .replace("placer = \"placer\"\n", ""),
        )
        .unwrap_err();
        assert!(err.contains("order.accession"), "{err}");
        let err = Mapping::parse(&MAPPING.replace("time_zone = \"+02:00\"\n", "")).unwrap_err();
        assert!(err.contains("order.time_zone"), "{err}");
    }

    #[test]
    fn missing_columns_are_named() {
        let err = read_csv(
            b"pid,issuer,last,first,dob,sex,acc,placer,exam,status,visit\n",
            &mapping(),
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("order.date_time"), "{err}");
        assert!(err.contains("\"when\""), "{err}");
    }

    #[test]
    fn dates_sexes_and_offsets() {
        assert_eq!(parse_date("07.04.1962", "%d.%m.%Y").unwrap(), "1962-04-07");
        assert!(parse_date("31.02.1962", "%d.%m.%Y").is_err());
        assert!(parse_date("1962-04-07", "%d.%m.%Y").is_err());
        let offset = parse_offset("+02:00").ok();
        assert_eq!(
            parse_date_time("22.08.2026 18:15", "%d.%m.%Y %H:%M", offset).unwrap(),
            "2026-08-22T18:15:00+02:00"
        );
        assert_eq!(
            parse_date_time("2026-08-22 18:15 -0500", "%Y-%m-%d %H:%M %z", None).unwrap(),
            "2026-08-22T18:15:00-05:00"
        );
        assert!(parse_offset("CET").is_err());
        assert!(parse_offset("+25:00").is_err());
        assert_eq!(parse_offset("Z").unwrap().local_minus_utc(), 0);
        let values: BTreeMap<String, String> = [("W".to_string(), "female".to_string())].into();
        assert_eq!(parse_sex("w", &values).unwrap(), "female");
        assert_eq!(parse_sex("M", &values).unwrap(), "male");
        assert_eq!(parse_sex("Female", &values).unwrap(), "female");
        assert!(parse_sex("X", &values).unwrap_err().contains("sex_values"));
    }

    #[test]
    fn ids_are_stable_and_fhir_safe() {
        assert_eq!(record_id("00123"), "csv-00123");
        let odd = record_id("A/1 ü");
        assert!(super::super::fhir::is_fhir_id(&odd), "{odd}");
        assert_ne!(odd, record_id("A-1 ü"));
        assert_eq!(odd, record_id("A/1 ü"));
        let long = record_id(&"x".repeat(200));
        assert!(super::super::fhir::is_fhir_id(&long), "{long}");
    }

    #[test]
    fn rows_become_records() {
        let out = read(
            "001,urn:oid:1.2,Wu,Xiao Dong,07.04.1962,W,A1,P1,CT Chest,22.08.2026 18:15,done,V1\n\
             001,urn:oid:1.2,Wu,Xiao Dong,07.04.1962,W,A2,,XR Hand,23.08.2026 08:00,,\n\
             002,urn:oid:1.2,Roe,Jo,01.01.1970,M,,,,,,\n",
        );
        assert_eq!((out.rows, out.refused), (3, 0), "{:?}", out.errors);
        let r = &out.records;
        assert_eq!(r.patients.len(), 2);
        assert_eq!(r.orders.len(), 2);
        assert_eq!(r.encounters.len(), 1);
        let wu = &r.patients[0];
        assert_eq!(wu.id, "csv-001");
        assert_eq!(wu.birth_date.as_deref(), Some("1962-04-07"));
        assert_eq!(wu.gender.as_deref(), Some("female"));
        assert_eq!(wu.names[0].given, vec!["Xiao", "Dong"]);
        assert_eq!(wu.identifiers[0].system.as_deref(), Some("urn:oid:1.2"));
        let by_placer = r.orders.iter().find(|o| o.id == "csv-P1").unwrap();
        assert_eq!(by_placer.status, "completed");
        assert_eq!(by_placer.patient.as_deref(), Some("csv-001"));
        assert_eq!(by_placer.encounter.as_deref(), Some("csv-V1"));
        assert_eq!(
            by_placer.occurrence.as_deref(),
            Some("2026-08-22T18:15:00+02:00")
        );
        let by_accession = r.orders.iter().find(|o| o.id == "csv-A2").unwrap();
        assert_eq!(by_accession.status, "active");
        assert_eq!(
            by_accession.identifiers[0].type_code.as_deref(),
            Some("ACSN")
        );
    }

    #[test]
    fn bad_rows_are_reported_and_the_rest_kept() {
        let out = read(
            "001,,Wu,Xiao,07.04.1962,W,A1,,CT,22.08.2026 18:15,done,\n\
             002,,Roe,Jo,1970-01-01,M,A2,,CT,22.08.2026 18:15,,\n\
             003,,Doe,Al,01.01.1970,X,A3,,CT,22.08.2026 18:15,,\n\
             004,,Poe,Ed,01.01.1970,M,A4,,CT,yesterday,,\n\
             005,,Moe,Jo,01.01.1970,M,A5,,CT,22.08.2026 18:15,lost,\n\
             ,,Noe,Jo,01.01.1970,M,A6,,CT,22.08.2026 18:15,,\n\
             007,,Short\n\
             001,,Wu,Xiao,08.04.1962,W,A7,,CT,22.08.2026 18:15,,\n\
             008,,Koe,Jo,01.01.1970,M,,,CT,,,\n",
        );
        assert_eq!(out.rows, 9);
        assert_eq!(out.refused, 8, "{:#?}", out.errors);
        assert_eq!(out.records.patients.len(), 1);
        assert_eq!(out.records.orders.len(), 1);
        let e = |i: usize| out.errors[i].to_string();
        assert!(e(0).starts_with("line 3, column \"dob\""), "{}", e(0));
        assert!(e(1).contains("column \"sex\""), "{}", e(1));
        assert!(e(2).contains("column \"when\""), "{}", e(2));
        assert!(e(3).contains("column \"status\""), "{}", e(3));
        assert!(e(4).contains("column \"pid\""), "{}", e(4));
        assert!(e(5).contains("fields"), "{}", e(5));
        assert!(e(6).contains("differs from line 2"), "{}", e(6));
        assert!(e(7).contains("column \"exam\""), "{}", e(7));
    }

    #[test]
    fn patient_only_mapping_and_non_utf8() {
        let m = Mapping::parse("[patient]\nid = \"pid\"\nsex = \"sex\"\n").unwrap();
        let err = read_csv(b"pid;sex\n1;F\n", &m, |_| {}).unwrap_err();
        assert!(err.to_string().contains("patient.id"), "{err}");
        let mut data = b"pid,sex\n1,F\n2,\xff\n".to_vec();
        data.extend_from_slice(b"3,M\n");
        let out = read_csv(&data, &m, |_| {}).unwrap();
        assert_eq!(out.records.patients.len(), 2);
        assert_eq!(out.refused, 1);
        assert!(
            out.errors[0].to_string().contains("UTF-8"),
            "{:?}",
            out.errors
        );
        assert!(
            out.errors[0].to_string().starts_with("line 3"),
            "{:?}",
            out.errors
        );
    }
}
