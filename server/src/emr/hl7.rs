//! HL7 v2 in: ADT patient registrations / updates and imaging orders (ORM^O01, OMI^O23),
//! parsed by a small bounded parser of our own and mapped to the same EMR records a FHIR
//! Bundle gives ([`ParsedBundle`]), so that [`super::Emr::ingest`] stores and joins them.
//!
//! - [`parse`]: bytes → [`Message`] (segments on `\r` or `\n`, delimiters from MSH-1/MSH-2,
//!   the charset from MSH-18, escape sequences decoded on access), bounded by a size and
//!   [`MAX_SEGMENTS`];
//! - [`map_message`]: a [`Message`] → records, or an [`Hl7Error`] naming the segment, its
//!   sequence and the field (`PID^1^7`) with an HL7 table 0357 code;
//! - [`ack`]: the reply (`ACK` with `MSA` and, on error, `ERR`);
//! - [`parse_file`]: a file of several messages (blank lines or MLLP frames between them).
//!
//! Nothing here panics on input: every problem is an [`Hl7Error`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::fhir::{ParsedBundle, checked_date, checked_date_time, is_fhir_id};
use super::{EmrEncounter, EmrOrder, EmrPatient, HumanName, Identifier};

/// Largest message accepted unless configured (`[emr] max_message_bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most segments one message may hold.
pub const MAX_SEGMENTS: usize = 10_000;
/// Longest FHIR id.
const MAX_ID_LEN: usize = 64;

/// MLLP framing bytes.
pub const VT: u8 = 0x0B;
pub const FS: u8 = 0x1C;
pub const CR: u8 = 0x0D;

/// The acknowledgment code (MSA-1, original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Accepted.
    AA,
    /// Error: the content is wrong; the sender should correct it.
    AE,
    /// Rejected: not a message we process (type, version, size, framing).
    AR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
        }
    }
}

/// HL7 table 0357 (message error condition codes) that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequence,
    RequiredFieldMissing,
    DataType,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedEventCode,
    UnsupportedProcessingId,
    UnsupportedVersion,
    ApplicationError,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataType => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersion => 203,
            ErrorCode::ApplicationError => 207,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataType => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersion => "Unsupported version id",
            ErrorCode::ApplicationError => "Application internal error",
        }
    }
}

/// Where in a message an error is: segment id, its 1-based occurrence, and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub segment: String,
    pub sequence: usize,
    pub field: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}^{}", self.segment, self.sequence)?;
        if let Some(field) = self.field {
            write!(f, "^{field}")?;
        }
        Ok(())
    }
}

/// Why a message could not be taken in: what the ACK's `MSA-1` and `ERR` say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct Hl7Error {
    pub ack: AckCode,
    pub code: ErrorCode,
    pub location: Option<Location>,
    pub message: String,
}

impl Hl7Error {
    fn new(ack: AckCode, code: ErrorCode, message: impl Into<String>) -> Hl7Error {
        Hl7Error {
            ack,
            code,
            location: None,
            message: message.into(),
        }
    }

    fn at(mut self, segment: &str, sequence: usize, field: Option<usize>) -> Hl7Error {
        self.location = Some(Location {
            segment: segment.to_string(),
            sequence,
            field,
        });
        self
    }

    /// A content error in one field (`AE`).
    fn field(
        segment: &Segment,
        field: usize,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Hl7Error {
        Hl7Error::new(AckCode::AE, code, message).at(&segment.id, segment.sequence, Some(field))
    }

    /// A rejection (`AR`) without a location.
    pub fn rejected(code: ErrorCode, message: impl Into<String>) -> Hl7Error {
        Hl7Error::new(AckCode::AR, code, message)
    }
}

/// The character set of a message (MSH-18).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Charset {
    /// ASCII (the default) or `UNICODE UTF-8`: decoded as UTF-8.
    #[default]
    Utf8,
    /// `8859/1`: ISO Latin-1.
    Latin1,
}

impl Charset {
    fn from_msh18(value: &str) -> Option<Charset> {
        match value.trim().to_ascii_uppercase().as_str() {
            "" | "ASCII" | "UNICODE" | "UNICODE UTF-8" | "UTF-8" | "UTF8" => Some(Charset::Utf8),
            "8859/1" | "ISO-8859-1" | "ISO IR100" | "ISO_IR 100" => Some(Charset::Latin1),
            _ => None,
        }
    }

    fn decode(self, bytes: &[u8]) -> Option<String> {
        match self {
            Charset::Utf8 => String::from_utf8(bytes.to_vec()).ok(),
            Charset::Latin1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        }
    }

    /// Encodes `text` for the wire; Latin-1 cannot hold every character (`?` then).
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Charset::Utf8 => text.as_bytes().to_vec(),
            Charset::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
        }
    }
}

/// The delimiters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: '&',
        }
    }
}

/// One segment: its id, its occurrence in the message (1-based) and its raw fields, indexed
/// as HL7 numbers them (`fields[0]` is the segment id; for MSH, `fields[1]` is the field
/// separator and `fields[2]` the encoding characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    pub sequence: usize,
    fields: Vec<String>,
}

impl Segment {
    /// The raw (still escaped) text of field `n`, empty when absent.
    pub fn raw(&self, n: usize) -> &str {
        self.fields.get(n).map(String::as_str).unwrap_or("")
    }

    pub fn field_count(&self) -> usize {
        self.fields.len().saturating_sub(1)
    }
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub delimiters: Delimiters,
    pub charset: Charset,
    pub segments: Vec<Segment>,
}

/// What the ACK needs of the original message's MSH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-3..MSH-6, raw (escaped with the message's delimiters, which the ACK reuses).
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-9.1 and MSH-9.2.
    pub message_type: String,
    pub trigger: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11.1 and MSH-12.1.
    pub processing_id: String,
    pub version: String,
    /// The original's delimiters (the raw fields above use them) and charset.
    pub delimiters: Delimiters,
    pub charset: Charset,
}

impl Message {
    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// Splits raw text on a delimiter.
    fn split(raw: &str, delimiter: char) -> Vec<&str> {
        raw.split(delimiter).collect()
    }

    /// The repetitions of a raw field.
    pub fn repetitions<'a>(&self, raw: &'a str) -> Vec<&'a str> {
        if raw.is_empty() {
            return Vec::new();
        }
        Message::split(raw, self.delimiters.repetition)
    }

    /// Component `n` (1-based) of a raw field repetition, raw.
    pub fn component<'a>(&self, raw: &'a str, n: usize) -> &'a str {
        raw.split(self.delimiters.component)
            .nth(n.saturating_sub(1))
            .unwrap_or("")
    }

    /// Subcomponent `n` (1-based) of a raw component, raw.
    pub fn subcomponent<'a>(&self, raw: &'a str, n: usize) -> &'a str {
        raw.split(self.delimiters.subcomponent)
            .nth(n.saturating_sub(1))
            .unwrap_or("")
    }

    /// Decodes the escape sequences of a raw value (`\F\ \S\ \T\ \R\ \E\ \Xhh..\`);
    /// formatting escapes (`\H\ \N\ \.br\ ...`) are dropped, unknown ones kept verbatim.
    /// The HL7 null `""` becomes empty.
    pub fn text(&self, raw: &str) -> String {
        if raw == "\"\"" {
            return String::new();
        }
        let Some(escape) = self.delimiters.escape else {
            return raw.to_string();
        };
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find(escape) {
            out.push_str(&rest[..start]);
            let after = &rest[start + escape.len_utf8()..];
            let Some(end) = after.find(escape) else {
                // A lone escape character: keep it.
                out.push_str(&rest[start..]);
                return out;
            };
            let sequence = &after[..end];
            match sequence {
                "F" => out.push(self.delimiters.field),
                "S" => out.push(self.delimiters.component),
                "T" => out.push(self.delimiters.subcomponent),
                "R" => out.push(self.delimiters.repetition),
                "E" => out.push(escape),
                "H" | "N" => {}
                s if s.starts_with('.') => {
                    if s == ".br" {
                        out.push('\n');
                    }
                }
                s if s.starts_with('X') => match hex_bytes(&s[1..]) {
                    Some(bytes) => match self.charset.decode(&bytes) {
                        Some(text) => out.push_str(&text),
                        None => out.push_str(&String::from_utf8_lossy(&bytes)),
                    },
                    None => {
                        out.push(escape);
                        out.push_str(s);
                        out.push(escape);
                    }
                },
                s => {
                    out.push(escape);
                    out.push_str(s);
                    out.push(escape);
                }
            }
            rest = &after[end + escape.len_utf8()..];
        }
        out.push_str(rest);
        out
    }

    /// Decoded text of component `c` (1-based) of the first repetition of field `f`.
    pub fn value(&self, segment: &Segment, f: usize, c: usize) -> String {
        let first = self.repetitions(segment.raw(f)).into_iter().next();
        first.map_or_else(String::new, |r| self.text(self.component(r, c)))
    }

    /// Like [`Message::value`], `None` when empty (after trimming).
    pub fn opt(&self, segment: &Segment, f: usize, c: usize) -> Option<String> {
        let v = self.value(segment, f, c);
        let t = v.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    /// The header fields the ACK needs.
    pub fn header(&self) -> Header {
        let Some(msh) = self.segments.first() else {
            return Header::default();
        };
        Header {
            sending_application: msh.raw(3).to_string(),
            sending_facility: msh.raw(4).to_string(),
            receiving_application: msh.raw(5).to_string(),
            receiving_facility: msh.raw(6).to_string(),
            message_type: self.value(msh, 9, 1).trim().to_string(),
            trigger: self.value(msh, 9, 2).trim().to_string(),
            control_id: self.value(msh, 10, 1),
            processing_id: self.value(msh, 11, 1).trim().to_string(),
            version: self.value(msh, 12, 1).trim().to_string(),
            delimiters: self.delimiters,
            charset: self.charset,
        }
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Splits a message's bytes into segments: `\r`, `\n` or `\r\n` end a segment; empty
/// segments are skipped.
fn segment_slices(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .filter(|s| !s.iter().all(|b| b.is_ascii_whitespace()))
}

/// The header of a message, read from as much of it as there is (a truncated or
/// oversized message still has its MSH first): for the ACK of a message we cannot parse.
pub fn peek_header(bytes: &[u8]) -> Option<Header> {
    let first = segment_slices(bytes).next()?;
    let end = first.len().min(4096);
    let msh = parse(&first[..end], usize::MAX).ok()?;
    Some(msh.header())
}

/// Parses one message. `max_bytes` bounds its size (`AR` beyond).
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Message, Hl7Error> {
    if bytes.len() > max_bytes {
        return Err(Hl7Error::rejected(
            ErrorCode::ApplicationError,
            format!(
                "message of {} bytes is larger than the {max_bytes} accepted",
                bytes.len()
            ),
        ));
    }
    let mut slices = segment_slices(bytes);
    let first = slices.next().ok_or_else(|| {
        Hl7Error::rejected(ErrorCode::SegmentSequence, "empty message").at("MSH", 1, None)
    })?;
    // Leading whitespace (a stray blank before MSH) is tolerated.
    let first = match first.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(at) => &first[at..],
        None => first,
    };
    if !first.starts_with(b"MSH") {
        return Err(Hl7Error::rejected(
            ErrorCode::SegmentSequence,
            "the message does not start with an MSH segment",
        )
        .at("MSH", 1, None));
    }
    // MSH-1 and MSH-2 are ASCII, whatever the charset.
    let field = first.get(3).copied().map(char::from).ok_or_else(|| {
        Hl7Error::rejected(
            ErrorCode::RequiredFieldMissing,
            "MSH-1 field separator is missing",
        )
        .at("MSH", 1, Some(1))
    })?;
    if field.is_ascii_alphanumeric() || field.is_ascii_whitespace() || !field.is_ascii() {
        return Err(Hl7Error::rejected(
            ErrorCode::DataType,
            format!("MSH-1 field separator {field:?} is not a usable delimiter"),
        )
        .at("MSH", 1, Some(1)));
    }
    let encoding: Vec<char> = first[4..]
        .iter()
        .take_while(|&&b| char::from(b) != field)
        .map(|&b| char::from(b))
        .collect();
    if encoding.len() < 2
        || encoding.len() > 5
        || encoding
            .iter()
            .any(|c| c.is_ascii_alphanumeric() || c.is_ascii_whitespace() || *c == field)
    {
        return Err(Hl7Error::rejected(
            ErrorCode::DataType,
            "MSH-2 encoding characters are not 2 to 5 distinct delimiters",
        )
        .at("MSH", 1, Some(2)));
    }
    let delimiters = Delimiters {
        field,
        component: encoding[0],
        repetition: encoding[1],
        escape: encoding.get(2).copied(),
        subcomponent: encoding.get(3).copied().unwrap_or('&'),
    };
    let mut distinct = vec![field];
    for c in &encoding[..encoding.len().min(4)] {
        if distinct.contains(c) {
            return Err(Hl7Error::rejected(
                ErrorCode::DataType,
                "MSH-2 encoding characters repeat a delimiter",
            )
            .at("MSH", 1, Some(2)));
        }
        distinct.push(*c);
    }
    // MSH-18, read from the raw bytes, to decode the rest.
    let msh18 = first
        .split(|&b| char::from(b) == field)
        .nth(17)
        .map(|raw| {
            let raw = String::from_utf8_lossy(raw);
            raw.split(delimiters.repetition)
                .next()
                .unwrap_or("")
                .split(delimiters.component)
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let charset = Charset::from_msh18(&msh18).ok_or_else(|| {
        Hl7Error::rejected(
            ErrorCode::TableValueNotFound,
            format!(
                "MSH-18 character set {msh18:?} is not supported (ASCII, UNICODE UTF-8, 8859/1)"
            ),
        )
        .at("MSH", 1, Some(18))
    })?;

    let mut segments: Vec<Segment> = Vec::new();
    for (i, slice) in std::iter::once(first).chain(slices).enumerate() {
        if i >= MAX_SEGMENTS {
            return Err(Hl7Error::rejected(
                ErrorCode::SegmentSequence,
                format!("more than {MAX_SEGMENTS} segments"),
            ));
        }
        let text = charset.decode(slice).ok_or_else(|| {
            let id = String::from_utf8_lossy(slice.get(..3).unwrap_or(slice)).into_owned();
            let sequence = segments.iter().filter(|s| s.id == id).count() + 1;
            Hl7Error::new(
                AckCode::AE,
                ErrorCode::DataType,
                format!("segment is not valid {charset:?} (MSH-18 {msh18:?})"),
            )
            .at(&id, sequence, None)
        })?;
        let mut fields: Vec<String> = text.split(field).map(str::to_string).collect();
        let id = fields.first().cloned().unwrap_or_default();
        let sequence = segments.iter().filter(|s| s.id == id).count() + 1;
        let well_formed = (id.len() == 3)
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !well_formed {
            let shown: String = id.chars().take(8).collect();
            return Err(Hl7Error::new(
                AckCode::AE,
                ErrorCode::SegmentSequence,
                format!("segment {} has no valid segment id ({shown:?})", i + 1),
            ));
        }
        if i == 0 {
            fields.insert(1, field.to_string());
        } else if id == "MSH" {
            return Err(Hl7Error::new(
                AckCode::AE,
                ErrorCode::SegmentSequence,
                "a second MSH segment (two messages without a separator?)",
            )
            .at("MSH", sequence, None));
        }
        segments.push(Segment {
            id,
            sequence,
            fields,
        });
    }
    Ok(Message {
        delimiters,
        charset,
        segments,
    })
}

/// Message types we take in, as (MSH-9.1, MSH-9.2).
pub const SUPPORTED: &[(&str, &str)] = &[
    ("ADT", "A01"),
    ("ADT", "A04"),
    ("ADT", "A05"),
    ("ADT", "A08"),
    ("ADT", "A28"),
    ("ADT", "A31"),
    ("ORM", "O01"),
    ("OMI", "O23"),
];

/// One message taken in: its header and the records it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage {
    pub header: Header,
    pub records: ParsedBundle,
}

/// A message not taken in: the error, and its header (as much as could be read) for the
/// ACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub header: Box<Header>,
    pub error: Hl7Error,
}

/// Parses and maps one message.
pub fn read_message(bytes: &[u8], max_bytes: usize) -> Result<ParsedMessage, Refused> {
    let message = parse(bytes, max_bytes).map_err(|error| Refused {
        header: Box::new(peek_header(bytes).unwrap_or_default()),
        error,
    })?;
    let header = message.header();
    match map_message(&message) {
        Ok(records) => Ok(ParsedMessage { header, records }),
        Err(error) => Err(Refused {
            header: Box::new(header),
            error,
        }),
    }
}

/// Maps a message to EMR records (all or nothing: a message with an error stores nothing).
pub fn map_message(message: &Message) -> Result<ParsedBundle, Hl7Error> {
    let msh = message
        .segments
        .first()
        .ok_or_else(|| Hl7Error::rejected(ErrorCode::SegmentSequence, "no MSH segment"))?;
    let header = message.header();
    if header.message_type.is_empty() {
        return Err(Hl7Error::rejected(
            ErrorCode::RequiredFieldMissing,
            "MSH-9 message type is missing",
        )
        .at("MSH", 1, Some(9)));
    }
    if header.control_id.is_empty() {
        return Err(Hl7Error::new(
            AckCode::AE,
            ErrorCode::RequiredFieldMissing,
            "MSH-10 message control id is missing",
        )
        .at("MSH", 1, Some(10)));
    }
    if !header.version.is_empty() && !header.version.starts_with("2.") {
        return Err(Hl7Error::rejected(
            ErrorCode::UnsupportedVersion,
            format!("MSH-12 version {:?} is not HL7 v2", header.version),
        )
        .at("MSH", 1, Some(12)));
    }
    let (kind, trigger) = (header.message_type.as_str(), header.trigger.as_str());
    if !SUPPORTED.iter().any(|(k, _)| *k == kind) {
        return Err(Hl7Error::rejected(
            ErrorCode::UnsupportedMessageType,
            format!("message type {kind}^{trigger} is not supported (ADT, ORM^O01, OMI^O23)"),
        )
        .at("MSH", 1, Some(9)));
    }
    if !SUPPORTED.contains(&(kind, trigger)) {
        return Err(Hl7Error::rejected(
            ErrorCode::UnsupportedEventCode,
            format!("event {kind}^{trigger} is not supported"),
        )
        .at("MSH", 1, Some(9)));
    }
    let _ = msh;
    let pid = message.segment("PID").ok_or_else(|| {
        Hl7Error::new(
            AckCode::AE,
            ErrorCode::SegmentSequence,
            format!("{kind}^{trigger} needs a PID segment"),
        )
        .at("PID", 1, None)
    })?;
    let patient = map_patient(message, pid)?;
    let mut records = ParsedBundle::default();
    let encounter = match message.segment("PV1") {
        Some(pv1) => map_encounter(message, pv1, &patient.id)?,
        None => None,
    };
    if kind == "ORM" || kind == "OMI" {
        records.orders = map_orders(
            message,
            &patient.id,
            encounter.as_ref().map(|e| e.id.as_str()),
        )?;
    }
    records.patients.push(patient);
    records.encounters.extend(encounter);
    Ok(records)
}

/// A FHIR id from parts: `[A-Za-z0-9.-]`, other characters become `-`; longer than 64, the
/// end is replaced by a hash of the whole so that ids stay distinct.
pub fn fhir_id(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("-");
    let mut id: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.len() > MAX_ID_LEN {
        // FNV-1a, stable across runs and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in joined.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        id.truncate(MAX_ID_LEN - 17);
        id.push_str(&format!("-{hash:016x}"));
    }
    debug_assert!(is_fhir_id(&id));
    id
}

/// The assigning authority of a CX.4 / EI.2-3 (HD): the namespace, else the universal id.
fn authority(message: &Message, hd: &str) -> Option<String> {
    let namespace = message.text(message.subcomponent(hd, 1));
    let universal = message.text(message.subcomponent(hd, 2));
    let universal_type = message.text(message.subcomponent(hd, 3));
    if !namespace.trim().is_empty() {
        Some(namespace.trim().to_string())
    } else if !universal.trim().is_empty() {
        let u = universal.trim();
        if universal_type.eq_ignore_ascii_case("ISO")
            || u.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            Some(format!("urn:oid:{u}"))
        } else {
            Some(u.to_string())
        }
    } else {
        None
    }
}

fn map_patient(message: &Message, pid: &Segment) -> Result<EmrPatient, Hl7Error> {
    let mut identifiers = Vec::new();
    for cx in message.repetitions(pid.raw(3)) {
        let value = message.text(message.component(cx, 1)).trim().to_string();
        if value.is_empty() {
            continue;
        }
        let type_code = message.text(message.component(cx, 5)).trim().to_string();
        identifiers.push(Identifier {
            system: authority(message, message.component(cx, 4)),
            value,
            type_code: (!type_code.is_empty()).then_some(type_code),
        });
    }
    // PID-2 (external id, deprecated) when PID-3 is empty: older senders.
    if identifiers.is_empty()
        && let Some(value) = message.opt(pid, 2, 1)
    {
        identifiers.push(Identifier {
            system: message
                .repetitions(pid.raw(2))
                .first()
                .and_then(|cx| authority(message, message.component(cx, 4))),
            value,
            type_code: None,
        });
    }
    let key = identifiers
        .iter()
        .find(|i| i.type_code.as_deref() == Some("MR"))
        .or_else(|| identifiers.first())
        .ok_or_else(|| {
            Hl7Error::field(
                pid,
                3,
                ErrorCode::RequiredFieldMissing,
                "PID-3 patient identifier list is empty",
            )
        })?;
    let system = key
        .system
        .as_deref()
        .map(|s| s.strip_prefix("urn:oid:").unwrap_or(s));
    let id = fhir_id(&["hl7", system.unwrap_or(""), &key.value]);

    let mut names = Vec::new();
    for xpn in message.repetitions(pid.raw(5)) {
        let family = message
            .text(message.subcomponent(message.component(xpn, 1), 1))
            .trim()
            .to_string();
        let given: Vec<String> = [2, 3]
            .iter()
            .map(|&c| message.text(message.component(xpn, c)).trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        if family.is_empty() && given.is_empty() {
            continue;
        }
        names.push(HumanName {
            family: (!family.is_empty()).then_some(family),
            given,
            text: None,
        });
    }

    let birth_date = match message.opt(pid, 7, 1) {
        None => None,
        Some(ts) => Some(hl7_date(&ts).map_err(|why| {
            Hl7Error::field(
                pid,
                7,
                ErrorCode::DataType,
                format!("PID-7 birth date {ts:?}: {why}"),
            )
        })?),
    };
    let gender = match message.opt(pid, 8, 1).map(|s| s.to_ascii_uppercase()) {
        None => None,
        Some(sex) => Some(
            match sex.as_str() {
                "M" => "male",
                "F" => "female",
                "O" | "A" => "other",
                "U" | "N" => "unknown",
                _ => {
                    return Err(Hl7Error::field(
                        pid,
                        8,
                        ErrorCode::TableValueNotFound,
                        format!("PID-8 sex {sex:?} is not in table 0001 (M, F, O, U, A, N)"),
                    ));
                }
            }
            .to_string(),
        ),
    };
    Ok(EmrPatient {
        id,
        identifiers,
        names,
        birth_date,
        gender,
    })
}

fn map_encounter(
    message: &Message,
    pv1: &Segment,
    patient: &str,
) -> Result<Option<EmrEncounter>, Hl7Error> {
    let Some(visit) = message.repetitions(pv1.raw(19)).first().copied() else {
        return Ok(None);
    };
    let number = message.text(message.component(visit, 1)).trim().to_string();
    if number.is_empty() {
        return Ok(None);
    }
    let system = authority(message, message.component(visit, 4));
    let system = system
        .as_deref()
        .map(|s| s.strip_prefix("urn:oid:").unwrap_or(s));
    let id = fhir_id(&["hl7-enc", system.unwrap_or(""), &number]);
    let class_code = message.opt(pv1, 2, 1).map(|c| {
        match c.to_ascii_uppercase().as_str() {
            "I" => "IMP",
            "O" => "AMB",
            "E" => "EMER",
            "P" => "PRENC",
            "R" => "AMB",
            "B" => "OBSENC",
            other => return other.to_string(),
        }
        .to_string()
    });
    let admit = message.opt(pv1, 44, 1);
    let discharge = message.opt(pv1, 45, 1);
    let period_start = match &admit {
        None => None,
        Some(ts) => Some(hl7_date_time(ts).map_err(|why| {
            Hl7Error::field(
                pv1,
                44,
                ErrorCode::DataType,
                format!("PV1-44 admit date/time {ts:?}: {why}"),
            )
        })?),
    };
    let status = if discharge.is_some() {
        "finished"
    } else if admit.is_some() {
        "in-progress"
    } else {
        "unknown"
    };
    Ok(Some(EmrEncounter {
        id,
        patient: Some(patient.to_string()),
        status: status.to_string(),
        class_code,
        period_start,
    }))
}

/// An order group: ORC and the OBR, TQ1, IPC that follow it.
#[derive(Default)]
struct OrderGroup<'a> {
    orc: Option<&'a Segment>,
    obr: Option<&'a Segment>,
    tq1: Option<&'a Segment>,
    ipc: Option<&'a Segment>,
}

fn map_orders(
    message: &Message,
    patient: &str,
    encounter: Option<&str>,
) -> Result<Vec<EmrOrder>, Hl7Error> {
    let mut groups: Vec<OrderGroup<'_>> = Vec::new();
    for segment in &message.segments {
        match segment.id.as_str() {
            "ORC" => groups.push(OrderGroup {
                orc: Some(segment),
                ..OrderGroup::default()
            }),
            "OBR" => match groups.last_mut() {
                Some(g) if g.obr.is_none() => g.obr = Some(segment),
                _ => groups.push(OrderGroup {
                    obr: Some(segment),
                    ..OrderGroup::default()
                }),
            },
            "TQ1" => {
                if let Some(g) = groups.last_mut()
                    && g.tq1.is_none()
                {
                    g.tq1 = Some(segment);
                }
            }
            "IPC" => {
                if let Some(g) = groups.last_mut()
                    && g.ipc.is_none()
                {
                    g.ipc = Some(segment);
                }
            }
            _ => {}
        }
    }
    if groups.is_empty() {
        return Err(Hl7Error::new(
            AckCode::AE,
            ErrorCode::SegmentSequence,
            "an order message needs an ORC or OBR segment",
        )
        .at("ORC", 1, None));
    }
    groups
        .iter()
        .map(|g| map_order(message, g, patient, encounter))
        .collect()
}

/// An entity identifier (EI): value and assigning authority (namespace, else universal id).
fn entity_id(
    message: &Message,
    segment: &Segment,
    field: usize,
) -> Option<(String, Option<String>)> {
    let raw = message.repetitions(segment.raw(field)).first().copied()?;
    let value = message.text(message.component(raw, 1)).trim().to_string();
    if value.is_empty() {
        return None;
    }
    let namespace = message.text(message.component(raw, 2)).trim().to_string();
    let universal = message.text(message.component(raw, 3)).trim().to_string();
    let system = if !namespace.is_empty() {
        Some(namespace)
    } else if !universal.is_empty() {
        Some(
            if universal.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                format!("urn:oid:{universal}")
            } else {
                universal
            },
        )
    } else {
        None
    };
    Some((value, system))
}

/// HL7 coding system names → FHIR system URIs, for the common ones.
fn coding_system(name: &str) -> String {
    match name.to_ascii_uppercase().as_str() {
        "LN" => "http://loinc.org".into(),
        "SCT" | "SNM" => "http://snomed.info/sct".into(),
        "C4" | "CPT" | "CPT4" => "http://www.ama-assn.org/go/cpt".into(),
        "I10" | "ICD10" => "http://hl7.org/fhir/sid/icd-10".into(),
        "RADLEX" | "RID" => "http://radlex.org".into(),
        "DCM" => "http://dicom.nema.org/resources/ontology/DCM".into(),
        _ => name.to_string(),
    }
}

fn map_order(
    message: &Message,
    group: &OrderGroup<'_>,
    patient: &str,
    encounter: Option<&str>,
) -> Result<EmrOrder, Hl7Error> {
    let orc = group.orc;
    let obr = group.obr;
    let first = orc.or(obr).ok_or_else(|| {
        Hl7Error::new(AckCode::AE, ErrorCode::SegmentSequence, "empty order group")
    })?;
    let placer = orc
        .and_then(|s| entity_id(message, s, 2))
        .or_else(|| obr.and_then(|s| entity_id(message, s, 2)))
        .ok_or_else(|| {
            Hl7Error::field(
                first,
                2,
                ErrorCode::RequiredFieldMissing,
                format!("{}-2 placer order number is missing", first.id),
            )
        })?;
    let filler = orc
        .and_then(|s| entity_id(message, s, 3))
        .or_else(|| obr.and_then(|s| entity_id(message, s, 3)));
    let accession = group
        .ipc
        .and_then(|s| entity_id(message, s, 1))
        .or_else(|| obr.and_then(|s| message.opt(s, 18, 1)).map(|v| (v, None)));

    let mut identifiers = vec![Identifier {
        system: placer.1.clone(),
        value: placer.0.clone(),
        type_code: Some("PLAC".into()),
    }];
    if let Some((value, system)) = filler {
        identifiers.push(Identifier {
            system,
            value,
            type_code: Some("FILL".into()),
        });
    }
    if let Some((value, system)) = accession {
        identifiers.push(Identifier {
            system,
            value,
            type_code: Some("ACSN".into()),
        });
    }
    let id = fhir_id(&["hl7-order", placer.1.as_deref().unwrap_or(""), &placer.0]);

    // Status: ORC-5 order status when given, else ORC-1 order control.
    let status = match orc {
        None => "active".to_string(),
        Some(orc) => {
            let (field, code) = match message.opt(orc, 5, 1) {
                Some(s) => (5, s.to_ascii_uppercase()),
                None => (
                    1,
                    message
                        .opt(orc, 1, 1)
                        .unwrap_or_default()
                        .to_ascii_uppercase(),
                ),
            };
            match code.as_str() {
                "NW" | "SC" | "XO" | "RP" | "IP" | "A" | "OK" | "SN" | "NA" | "RO" | "XX" => {
                    "active"
                }
                "CA" | "OC" | "DC" | "OD" | "CR" | "DR" => "revoked",
                "CM" => "completed",
                "HD" | "OH" => "on-hold",
                "ER" => "entered-in-error",
                "" => {
                    return Err(Hl7Error::field(
                        orc,
                        1,
                        ErrorCode::RequiredFieldMissing,
                        "ORC-1 order control is missing",
                    ));
                }
                other => {
                    return Err(Hl7Error::field(
                        orc,
                        field,
                        ErrorCode::TableValueNotFound,
                        format!("ORC-{field} {other:?} is not an order control / status we know"),
                    ));
                }
            }
            .to_string()
        }
    };

    let (mut code_system, mut code, mut code_display) = (None, None, None);
    if let Some(obr) = obr
        && let Some(ce) = message.repetitions(obr.raw(4)).first().copied()
    {
        let part = |c: usize| {
            let t = message.text(message.component(ce, c)).trim().to_string();
            (!t.is_empty()).then_some(t)
        };
        let (c, d, s) = match part(1) {
            Some(c) => (Some(c), part(2), part(3)),
            None => (part(4), part(5).or(part(2)), part(6)),
        };
        code = c;
        code_display = d;
        code_system = s.map(|s| coding_system(&s));
    }

    // Occurrence: TQ1-7 start, else OBR-27.4 / ORC-7.4 (TQ), else OBR-7, else OBR-6.
    let mut candidates: Vec<(&Segment, usize, usize, &str)> = Vec::new();
    if let Some(tq1) = group.tq1 {
        candidates.push((tq1, 7, 1, "TQ1-7 start date/time"));
    }
    if let Some(obr) = obr {
        candidates.push((obr, 27, 4, "OBR-27.4 quantity/timing start"));
    }
    if let Some(orc) = orc {
        candidates.push((orc, 7, 4, "ORC-7.4 quantity/timing start"));
    }
    if let Some(obr) = obr {
        candidates.push((obr, 7, 1, "OBR-7 observation date/time"));
        candidates.push((obr, 6, 1, "OBR-6 requested date/time"));
    }
    let mut occurrence = None;
    for (segment, field, component, what) in candidates {
        if let Some(ts) = message.opt(segment, field, component) {
            occurrence = Some(hl7_date_time(&ts).map_err(|why| {
                Hl7Error::field(
                    segment,
                    field,
                    ErrorCode::DataType,
                    format!("{what} {ts:?}: {why}"),
                )
            })?);
            break;
        }
    }
    let authored_on = match orc.and_then(|orc| message.opt(orc, 9, 1).map(|ts| (orc, ts))) {
        None => None,
        Some((orc, ts)) => Some(hl7_date_time(&ts).map_err(|why| {
            Hl7Error::field(
                orc,
                9,
                ErrorCode::DataType,
                format!("ORC-9 date/time of transaction {ts:?}: {why}"),
            )
        })?),
    };

    let requester = orc
        .map(|s| (s, 12))
        .into_iter()
        .chain(obr.map(|s| (s, 16)))
        .find_map(|(s, f)| {
            let xcn = message.repetitions(s.raw(f)).first().copied()?;
            let family = message.text(message.subcomponent(message.component(xcn, 2), 1));
            let given = message.text(message.component(xcn, 3));
            let id = message.text(message.component(xcn, 1));
            let name = [given.trim(), family.trim()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            if !name.is_empty() {
                Some(name)
            } else {
                (!id.trim().is_empty()).then(|| id.trim().to_string())
            }
        });

    let mut reasons: Vec<String> = Vec::new();
    let reason_sources = obr.map(|s| (s, 31)).into_iter().chain(orc.map(|s| (s, 16)));
    for (segment, field) in reason_sources {
        for ce in message.repetitions(segment.raw(field)) {
            let text = message.text(message.component(ce, 2));
            let text = if text.trim().is_empty() {
                message.text(message.component(ce, 1))
            } else {
                text
            };
            if !text.trim().is_empty() {
                reasons.push(text.trim().to_string());
            }
        }
        if !reasons.is_empty() {
            break;
        }
    }

    Ok(EmrOrder {
        id,
        identifiers,
        patient: Some(patient.to_string()),
        encounter: encounter.map(str::to_string),
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

/// The parts of an HL7 TS / DTM: digits, fraction, offset (`+hhmm` / `-hhmm`).
fn ts_parts(ts: &str) -> Result<(&str, Option<&str>, Option<&str>), &'static str> {
    const SHAPE: &str = "not an HL7 date/time (YYYY[MM[DD[HHMM[SS[.S]]]]][+/-ZZZZ])";
    let ts = ts.trim();
    let (body, offset) = match ts.find(['+', '-']) {
        Some(at) => (&ts[..at], Some(&ts[at..])),
        None => (ts, None),
    };
    let (main, fraction) = match body.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (body, None),
    };
    if !main.bytes().all(|b| b.is_ascii_digit())
        || !matches!(main.len(), 4 | 6 | 8 | 10 | 12 | 14)
        || fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()))
        || (fraction.is_some() && main.len() != 14)
    {
        return Err(SHAPE);
    }
    if let Some(offset) = offset
        && (offset.len() != 5 || !offset[1..].bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("time-zone offset is not +/-ZZZZ");
    }
    Ok((main, fraction, offset))
}

/// HL7 DT / the date of a TS (`YYYY[MM[DD[...]]]`) → FHIR date (`YYYY[-MM[-DD]]`).
pub fn hl7_date(ts: &str) -> Result<String, &'static str> {
    let (digits, _, _) = ts_parts(ts)?;
    let date = match digits.len() {
        4 => digits.to_string(),
        6 => format!("{}-{}", &digits[..4], &digits[4..6]),
        _ => format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..8]),
    };
    checked_date(&date)?;
    Ok(date)
}

/// HL7 TS / DTM `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]` → FHIR dateTime: with an
/// offset and a time, `YYYY-MM-DDThh:mm:ss[.f]±hh:mm`; without an offset only the date
/// (FHIR needs an offset with a time, and a local time cannot be placed).
pub fn hl7_date_time(ts: &str) -> Result<String, &'static str> {
    let (main, fraction, offset) = ts_parts(ts)?;
    let date = hl7_date(ts)?;
    let Some(offset) = offset.filter(|_| main.len() >= 10) else {
        return Ok(date);
    };
    let hh = &main[8..10];
    let mm = main.get(10..12).unwrap_or("00");
    let ss = main.get(12..14).unwrap_or("00");
    let mut out = format!("{date}T{hh}:{mm}:{ss}");
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    out.push_str(&offset[..3]);
    out.push(':');
    out.push_str(&offset[3..5]);
    checked_date_time(&out)
}

/// A raw field of a message with delimiters `from`, in the default delimiters.
fn translate(raw: &str, from: Delimiters) -> String {
    if from == Delimiters::default() {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c == from.component {
            out.push('^');
        } else if c == from.subcomponent {
            out.push('&');
        } else if c == from.repetition {
            out.push('~');
        } else if Some(c) == from.escape {
            out.push('\\');
        } else {
            out.push_str(&escape(&c.to_string()));
        }
    }
    out
}

static ACK_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Escapes text for a field of a message with the default delimiters.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The ACK of a message: MSH (sending and receiving swapped), MSA (`MSA-2` = the original
/// MSH-10) and, on error, ERR (`ERR-1` in the v2.3 form `PID^1^7^102&Data type
/// error&HL70357`, `ERR-2` location, `ERR-3` code, `ERR-4` severity, `ERR-8` the message).
/// Segments end with `\r`; the ACK uses the default delimiters (the header's raw fields are
/// translated when the original used others). Encode it with [`Charset::encode`] in the
/// header's charset.
pub fn ack(header: &Header, error: Option<&Hl7Error>) -> String {
    let raw = |s: &str| translate(s, header.delimiters);
    let now = chrono::Utc::now().format("%Y%m%d%H%M%S+0000");
    let counter = ACK_COUNTER.fetch_add(1, Ordering::Relaxed);
    let control = format!("ACK{}{counter}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let version = if header.version.is_empty() {
        "2.5".to_string()
    } else {
        escape(&header.version)
    };
    let processing = if header.processing_id.is_empty() {
        "P".to_string()
    } else {
        escape(&header.processing_id)
    };
    let trigger = escape(&header.trigger);
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{now}||ACK^{trigger}^ACK|{control}|{processing}|{version}\r",
        raw(&header.receiving_application),
        raw(&header.receiving_facility),
        raw(&header.sending_application),
        raw(&header.sending_facility),
    );
    let code = error.map_or(AckCode::AA, |e| e.ack);
    let text = error.map(|e| escape(&e.message)).unwrap_or_default();
    out.push_str(&format!(
        "MSA|{}|{}|{}\r",
        code.as_str(),
        escape(&header.control_id),
        text
    ));
    if let Some(e) = error {
        let location = e
            .location
            .as_ref()
            .map(|l| {
                format!(
                    "{}^{}^{}",
                    escape(&l.segment),
                    l.sequence,
                    l.field.map(|f| f.to_string()).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let (n, t) = (e.code.code(), e.code.text());
        let eld = if location.is_empty() {
            format!("^^^{n}&{t}&HL70357")
        } else {
            format!("{location}^{n}&{t}&HL70357")
        };
        out.push_str(&format!(
            "ERR|{eld}|{location}|{n}^{t}^HL70357|E||||{text}\r"
        ));
    }
    out
}

/// A message of a file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Position of the message in the file (0-based).
    pub index: usize,
    /// Its MSH-10, when it could be read.
    pub control_id: Option<String>,
    pub error: Hl7Error,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message {}", self.index + 1)?;
        if let Some(id) = &self.control_id {
            write!(f, " ({id})")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Splits a file into messages: MLLP frames when it has `<VT>`, else blank lines, and a
/// new message wherever a line starts with `MSH`.
pub fn split_file(text: &str) -> Vec<String> {
    let mut messages = Vec::new();
    if text.as_bytes().contains(&VT) {
        for frame in text.split(char::from(VT)).skip(1) {
            let body = frame.split(char::from(FS)).next().unwrap_or("");
            if !body.trim().is_empty() {
                messages.push(body.trim().to_string());
            }
        }
        return messages;
    }
    let mut current: Vec<&str> = Vec::new();
    let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalised.split('\n') {
        if line.trim().is_empty() || (line.starts_with("MSH") && !current.is_empty()) {
            if !current.is_empty() {
                messages.push(current.join("\r"));
                current.clear();
            }
            if line.trim().is_empty() {
                continue;
            }
        }
        current.push(line);
    }
    if !current.is_empty() {
        messages.push(current.join("\r"));
    }
    messages
}

/// Reads a file of HL7 v2 messages: the messages taken in, and an error per message that
/// was not (the others proceed).
pub fn parse_file(text: &str) -> (Vec<ParsedMessage>, Vec<FileError>) {
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    for (index, message) in split_file(text).iter().enumerate() {
        match read_message(message.as_bytes(), DEFAULT_MAX_MESSAGE_BYTES) {
            Ok(parsed) => ok.push(parsed),
            Err(Refused { header, error }) => errors.push(FileError {
                index,
                control_id: (!header.control_id.is_empty()).then_some(header.control_id),
                error,
            }),
        }
    }
    (ok, errors)
}

/// The records of several messages as one bundle for [`super::Emr::ingest`] (later
/// messages replace earlier records with the same id).
pub fn merge(messages: Vec<ParsedMessage>) -> ParsedBundle {
    let mut bundle = ParsedBundle::default();
    for m in messages {
        bundle.patients.extend(m.records.patients);
        bundle.orders.extend(m.records.orders);
        bundle.encounters.extend(m.records.encounters);
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|EPIC|HOSP|RADSERVE|RAD|20260915101500||ADT^A04^ADT_A01|MSG0001|P|2.5.1||||||UNICODE UTF-8\r\
EVN|A04|20260915101500\r\
PID|1||00001012^^^RADSERVE-DEMO-HOSPITAL^MR~998877^^^NATIONAL&2.16.840.1.113883.4.1&ISO^SS||Wu^Xiaodong^M.~吴^小东||19620407|F\r\
PV1|1|O|RAD^^^HOSP||||||||||||||||V123^^^HOSP^VN|||||||||||||||||||||||||20260915101000+0200\r";

    const ORM: &str = "MSH|^~\\&|EPIC|HOSP|RADSERVE|RAD|20260915101600||ORM^O01|MSG0002|P|2.3\r\
PID|1||00001012^^^RADSERVE-DEMO-HOSPITAL^MR||Wu^Xiaodong||19620407|F\r\
PV1|1|I|||||||||||||||||V123^^^HOSP\r\
ORC|NW|PO-77^EPIC|FO-12^RIS||SC||^^^20260915171500+0200||20260915101600+0200|||1234^House^Gregory\r\
OBR|1|PO-77^EPIC|FO-12^RIS|36643-5^XR Chest 2V^LN|||20260915171500|||||||||||A10000018|||||||||||||Cough \\T\\ fever\r";

    fn parsed(text: &str) -> Message {
        parse(text.as_bytes(), DEFAULT_MAX_MESSAGE_BYTES).unwrap()
    }

    #[test]
    fn escapes_components_repetitions() {
        let m = parsed(
            "MSH|^~\\&|A|B\rNTE|1|x\\F\\y\\S\\z\\T\\w\\R\\v\\E\\u\\X41C3A9\\|a^b&c~d^e\\H\\!\\N\\",
        );
        let nte = &m.segments[1];
        assert_eq!(m.text(nte.raw(2)), "x|y^z&w~v\\uAé");
        let reps = m.repetitions(nte.raw(3));
        assert_eq!(reps.len(), 2);
        assert_eq!(m.component(reps[0], 2), "b&c");
        assert_eq!(m.subcomponent(m.component(reps[0], 2), 2), "c");
        assert_eq!(m.text(m.component(reps[1], 2)), "e!");
        assert_eq!(m.value(nte, 3, 1), "a");
        assert_eq!(m.value(nte, 99, 1), "");
        let msh = &m.segments[0];
        assert_eq!(msh.raw(1), "|");
        assert_eq!(msh.raw(2), "^~\\&");
        assert_eq!(msh.raw(3), "A");
    }

    #[test]
    fn other_delimiters_and_newlines() {
        let m = parsed("MSH#$*@!#A#B\nPID#1##123$$$AUTH$MR*456\r\n");
        assert_eq!(m.delimiters.field, '#');
        assert_eq!(m.delimiters.component, '$');
        assert_eq!(m.delimiters.repetition, '*');
        assert_eq!(m.delimiters.escape, Some('@'));
        assert_eq!(m.delimiters.subcomponent, '!');
        let pid = m.segment("PID").unwrap();
        assert_eq!(m.repetitions(pid.raw(3)).len(), 2);
        assert_eq!(m.value(pid, 3, 4), "AUTH");
    }

    #[test]
    fn charsets() {
        let mut latin1 =
            b"MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||8859/1\rPID|1||7^^^H^MR||Nov"
                .to_vec();
        latin1.push(0xE1);
        latin1.extend_from_slice(b"k^Hans\r");
        let m = parse(&latin1, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(m.charset, Charset::Latin1);
        let records = map_message(&m).unwrap();
        assert_eq!(
            records.patients[0].names[0].family.as_deref(),
            Some("Novák")
        );

        let utf8 = "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5\rPID|1||7^^^H^MR||Novák^Hans\r";
        let records = map_message(&parsed(utf8)).unwrap();
        assert_eq!(
            records.patients[0].names[0].family.as_deref(),
            Some("Novák")
        );

        // Invalid UTF-8 in a UTF-8 message: an error, not mojibake.
        let mut bad_utf8 =
            b"MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5\rPID|1||7^^^H^MR||Nov".to_vec();
        bad_utf8.push(0xE1);
        bad_utf8.extend_from_slice(b"k\r");
        let err = parse(&bad_utf8, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
        assert_eq!(err.location.unwrap().segment, "PID");
        let err = parse(
            b"MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||ISO IR87\r",
            DEFAULT_MAX_MESSAGE_BYTES,
        )
        .unwrap_err();
        assert_eq!(err.ack, AckCode::AR);
        assert_eq!(err.location.unwrap().to_string(), "MSH^1^18");
    }

    #[test]
    fn adt_maps_to_a_patient_and_encounter() {
        let records = map_message(&parsed(ADT)).unwrap();
        let p = &records.patients[0];
        assert_eq!(p.id, "hl7-RADSERVE-DEMO-HOSPITAL-00001012");
        assert!(is_fhir_id(&p.id));
        assert_eq!(p.identifiers.len(), 2);
        assert_eq!(p.identifiers[0].value, "00001012");
        assert_eq!(
            p.identifiers[0].system.as_deref(),
            Some("RADSERVE-DEMO-HOSPITAL")
        );
        assert_eq!(p.identifiers[0].type_code.as_deref(), Some("MR"));
        assert_eq!(p.identifiers[1].system.as_deref(), Some("NATIONAL"));
        assert_eq!(p.identifiers[1].type_code.as_deref(), Some("SS"));
        assert_eq!(p.names.len(), 2);
        assert_eq!(p.names[0].family.as_deref(), Some("Wu"));
        assert_eq!(p.names[0].given, vec!["Xiaodong", "M."]);
        assert_eq!(p.names[1].family.as_deref(), Some("吴"));
        assert_eq!(p.birth_date.as_deref(), Some("1962-04-07"));
        assert_eq!(p.gender.as_deref(), Some("female"));
        let e = &records.encounters[0];
        assert_eq!(e.id, "hl7-enc-HOSP-V123");
        assert_eq!(e.class_code.as_deref(), Some("AMB"));
        assert_eq!(e.status, "in-progress");
        assert_eq!(e.period_start.as_deref(), Some("2026-09-15T10:10:00+02:00"));
        assert!(records.orders.is_empty());
    }

    #[test]
    fn orm_maps_to_an_order() {
        let records = map_message(&parsed(ORM)).unwrap();
        assert_eq!(records.patients.len(), 1);
        let o = &records.orders[0];
        assert_eq!(o.id, "hl7-order-EPIC-PO-77");
        assert_eq!(
            o.patient.as_deref(),
            Some("hl7-RADSERVE-DEMO-HOSPITAL-00001012")
        );
        assert_eq!(o.encounter.as_deref(), Some("hl7-enc-HOSP-V123"));
        assert_eq!(o.status, "active");
        let ids: Vec<(&str, &str)> = o
            .identifiers
            .iter()
            .map(|i| (i.type_code.as_deref().unwrap(), i.value.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![("PLAC", "PO-77"), ("FILL", "FO-12"), ("ACSN", "A10000018")]
        );
        assert_eq!(o.code.as_deref(), Some("36643-5"));
        assert_eq!(o.code_display.as_deref(), Some("XR Chest 2V"));
        assert_eq!(o.code_system.as_deref(), Some("http://loinc.org"));
        // ORC-7.4 (with offset) wins over OBR-7 (no offset → date only).
        assert_eq!(o.occurrence.as_deref(), Some("2026-09-15T17:15:00+02:00"));
        assert_eq!(o.authored_on.as_deref(), Some("2026-09-15T10:16:00+02:00"));
        assert_eq!(o.requester.as_deref(), Some("Gregory House"));
        assert_eq!(o.reason.as_deref(), Some("Cough & fever"));
        assert_eq!(records.encounters[0].class_code.as_deref(), Some("IMP"));
    }

    #[test]
    fn omi_with_tq1_and_ipc_and_a_cancel() {
        let omi = "MSH|^~\\&|A|B|C|D|20260101||OMI^O23^OMI_O23|C9|P|2.5\r\
PID|1||55^^^H||Doe^Jane||1970|U\r\
ORC|CA|P1^X\r\
TQ1|1||||||20260102\r\
OBR|1|P1^X||RPID16^CT head^RADLEX|||||||||||||||||||||||||||^Headache\r\
IPC|ACC-9^RIS|SPS1|1.2.3|SPS1\r";
        let records = map_message(&parsed(omi)).unwrap();
        let o = &records.orders[0];
        assert_eq!(o.status, "revoked");
        assert_eq!(o.occurrence.as_deref(), Some("2026-01-02"));
        assert_eq!(o.code_system.as_deref(), Some("http://radlex.org"));
        assert_eq!(o.reason.as_deref(), Some("Headache"));
        let acsn = o
            .identifiers
            .iter()
            .find(|i| i.type_code.as_deref() == Some("ACSN"))
            .unwrap();
        assert_eq!(
            (acsn.value.as_str(), acsn.system.as_deref()),
            ("ACC-9", Some("RIS"))
        );
        let p = &records.patients[0];
        assert_eq!(p.id, "hl7-H-55");
        assert_eq!(p.birth_date.as_deref(), Some("1970"));
        assert_eq!(p.gender.as_deref(), Some("unknown"));
        // ORC-5 status wins over ORC-1.
        let done = omi.replace("ORC|CA|P1^X", "ORC|SC|P1^X|||CM");
        assert_eq!(
            map_message(&parsed(&done)).unwrap().orders[0].status,
            "completed"
        );
    }

    #[test]
    fn bad_messages_name_segment_and_field() {
        let err = parse(b"PID|1||123\r", DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
        assert_eq!(err.ack, AckCode::AR);
        assert_eq!(err.location.as_ref().unwrap().to_string(), "MSH^1");

        let bad_date = ADT.replace("||19620407|F", "||19621307|F");
        let err = map_message(&parsed(&bad_date)).unwrap_err();
        assert_eq!(err.ack, AckCode::AE);
        assert_eq!(err.code, ErrorCode::DataType);
        assert_eq!(err.location.as_ref().unwrap().to_string(), "PID^1^7");
        assert!(err.message.contains("19621307"), "{err}");
        let bad_date = ADT.replace("||19620407|F", "||1962-04-07|F");
        let err = map_message(&parsed(&bad_date)).unwrap_err();
        assert_eq!(err.location.as_ref().unwrap().to_string(), "PID^1^7");

        let unknown = ADT.replace("ADT^A04^ADT_A01", "ORU^R01");
        let err = map_message(&parsed(&unknown)).unwrap_err();
        assert_eq!(err.ack, AckCode::AR);
        assert_eq!(err.code, ErrorCode::UnsupportedMessageType);
        assert_eq!(err.location.as_ref().unwrap().to_string(), "MSH^1^9");
        let event = ADT.replace("ADT^A04^ADT_A01", "ADT^A03");
        assert_eq!(
            map_message(&parsed(&event)).unwrap_err().code,
            ErrorCode::UnsupportedEventCode
        );

        let no_id = ADT.replace(
            "00001012^^^RADSERVE-DEMO-HOSPITAL^MR~998877^^^NATIONAL&2.16.840.1.113883.4.1&ISO^SS",
            "",
        );
        let err = map_message(&parsed(&no_id)).unwrap_err();
        assert_eq!(err.location.as_ref().unwrap().to_string(), "PID^1^3");
        assert_eq!(err.code, ErrorCode::RequiredFieldMissing);

        let sex = ADT.replace("||19620407|F", "||19620407|X");
        let err = map_message(&parsed(&sex)).unwrap_err();
        assert_eq!(err.location.as_ref().unwrap().to_string(), "PID^1^8");

        let no_placer = ORM
            .replace("ORC|NW|PO-77^EPIC|", "ORC|NW||")
            .replace("OBR|1|PO-77^EPIC|", "OBR|1||");
        let err = map_message(&parsed(&no_placer)).unwrap_err();
        assert_eq!(err.location.as_ref().unwrap().to_string(), "ORC^1^2");

        let bad_ts = ORM.replace("^^^20260915171500+0200", "^^^2026091517xx");
        let err = map_message(&parsed(&bad_ts)).unwrap_err();
        assert_eq!(err.location.as_ref().unwrap().to_string(), "ORC^1^7");

        let no_pid = "MSH|^~\\&|A|B|C|D|1||ADT^A08|1|P|2.5\rEVN|A08\r";
        let err = map_message(&parsed(no_pid)).unwrap_err();
        assert_eq!(err.location.as_ref().unwrap().to_string(), "PID^1");

        assert!(parse(b"MSH|^~\\&|A\rP@D|1\r", 1 << 20).is_err());
        assert!(parse(b"MSHA^~\\&|A\r", 1 << 20).is_err());
        assert!(parse(b"MSH|", 1 << 20).is_err());
        assert!(parse(b"MSH", 1 << 20).is_err());
        assert!(parse(b"", 1 << 20).is_err());
        let err = parse(ADT.as_bytes(), 10).unwrap_err();
        assert_eq!(err.ack, AckCode::AR);
        let many = format!("MSH|^~\\&|A\r{}", "NTE|1\r".repeat(MAX_SEGMENTS + 1));
        assert!(parse(many.as_bytes(), usize::MAX).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 7;
        let alphabet = b"MSH|^~\\&PIDORCOBR\r\n0123456789XFST\xc3\xa9 ";
        for _ in 0..2000 {
            let len = (seed % 200) as usize;
            let mut bytes = b"MSH|^~\\&|".to_vec();
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            if let Ok(m) = parse(&bytes, 1 << 20) {
                let _ = map_message(&m);
                let _ = ack(&m.header(), None);
            }
            let _ = peek_header(&bytes);
        }
    }

    #[test]
    fn date_times() {
        assert_eq!(hl7_date("19620407").unwrap(), "1962-04-07");
        assert_eq!(hl7_date("196204").unwrap(), "1962-04");
        assert_eq!(hl7_date("196204071230").unwrap(), "1962-04-07");
        assert!(hl7_date("19620431").is_err());
        assert!(hl7_date("196").is_err());
        assert_eq!(
            hl7_date_time("20260915171503.25-0500").unwrap(),
            "2026-09-15T17:15:03.25-05:00"
        );
        assert_eq!(
            hl7_date_time("202609151715+0000").unwrap(),
            "2026-09-15T17:15:00+00:00"
        );
        assert_eq!(hl7_date_time("20260915171503").unwrap(), "2026-09-15");
        assert_eq!(hl7_date_time("20260915+0100").unwrap(), "2026-09-15");
        assert!(hl7_date_time("2026091525+0000").is_err());
        assert!(hl7_date_time("20260915+01").is_err());
    }

    #[test]
    fn fhir_ids_are_safe_and_distinct() {
        assert_eq!(fhir_id(&["hl7", "A B/C", "1"]), "hl7-A-B-C-1");
        let long_a = fhir_id(&["hl7", &"x".repeat(100), "1"]);
        let long_b = fhir_id(&["hl7", &"x".repeat(100), "2"]);
        assert!(is_fhir_id(&long_a) && is_fhir_id(&long_b));
        assert_ne!(long_a, long_b);
        assert!(is_fhir_id(&fhir_id(&["hl7", "", "ä"])));
    }

    #[test]
    fn ack_swaps_and_reports() {
        let m = parsed(ADT);
        let ok = ack(&m.header(), None);
        let lines: Vec<&str> = ok.split('\r').collect();
        assert!(
            lines[0].starts_with("MSH|^~\\&|RADSERVE|RAD|EPIC|HOSP|"),
            "{ok}"
        );
        assert!(lines[0].contains("|ACK^A04^ACK|"), "{ok}");
        assert_eq!(lines[1], "MSA|AA|MSG0001|");
        let bad = map_message(&parsed(&ADT.replace("19620407", "19621307"))).unwrap_err();
        let nak = ack(&m.header(), Some(&bad));
        assert!(nak.contains("\rMSA|AE|MSG0001|"), "{nak}");
        assert!(
            nak.contains("\rERR|PID^1^7^102&Data type error&HL70357|PID^1^7|102^Data type error^HL70357|E||||"),
            "{nak}"
        );
        // The ACK is itself a message we can parse.
        let back = parsed(&nak);
        assert_eq!(back.value(back.segment("MSA").unwrap(), 2, 1), "MSG0001");
    }

    #[test]
    fn files_of_several_messages() {
        let file = format!(
            "{}\n\n{}\n\nMSH|^~\\&|A|B|C|D|1||ORU^R01|X9|P|2.5\nPID|1||1\n",
            ADT.replace('\r', "\n"),
            ORM.replace('\r', "\r\n")
        );
        let (ok, errors) = parse_file(&file);
        assert_eq!(ok.len(), 2, "{errors:?}");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 2);
        assert_eq!(errors[0].control_id.as_deref(), Some("X9"));
        assert_eq!(ok[1].header.control_id, "MSG0002");
        let framed = format!("\x0b{ADT}\x1c\r\x0b{ORM}\x1c\r");
        let (ok, errors) = parse_file(&framed);
        assert_eq!((ok.len(), errors.len()), (2, 0));
        // Back to back, no blank line: split at MSH.
        let (ok, _) = parse_file(&format!("{ADT}{ORM}"));
        assert_eq!(ok.len(), 2);
        let bundle = merge(ok);
        assert_eq!(bundle.patients.len(), 2);
        assert_eq!(bundle.orders.len(), 1);
    }
}
