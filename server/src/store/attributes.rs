//! The indexed attributes of an instance, read from its dataset, text decoded to UTF-8.
//!
//! [`extract`] opens an upload with dicom-object (stopping before Pixel Data), checks that
//! it is a Part 10 file with the identifying UIDs, and reads what the index stores;
//! [`extract_from_head`] does the same from the upload's first bytes in memory when they
//! hold the whole header. Text
//! in PN/LO/SH is re-read as raw bytes (a second, raw token pass over the same file) and
//! decoded with [`super::charset`], because dicom-rs decodes with the first value of
//! SpecificCharacterSet only. For deflated transfer syntaxes the raw pass is skipped and
//! dicom-rs's decoding is used.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_parser::dataset::read::{DataSetReaderOptions, ValueReadStrategy};
use dicom_parser::dataset::{DataSetReader, DataToken};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::charset::CharacterSet;

/// One attribute value as the query layer sees it: UTF-8 text, PN as
/// `Fam^Given=Ideo^Graphic=Phonetic`, numbers as their DICOM text form.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub vr: VR,
    pub values: Vec<String>,
}

/// Attributes by tag, in tag order.
pub type AttributeSet = BTreeMap<Tag, Attribute>;

/// What the index stores about one instance (strings are trimmed, multi-valued text is
/// joined with `\`; missing type 2/3 attributes are empty strings / `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceAttributes {
    pub specific_character_set: String,
    pub patient_name: String,
    pub patient_id: String,
    pub issuer_of_patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_instance_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub study_id: String,
    pub study_description: String,
    pub referring_physician_name: String,
    pub modality: String,
    pub series_instance_uid: String,
    pub series_number: Option<i64>,
    pub series_description: String,
    pub body_part_examined: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub instance_number: Option<i64>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub number_of_frames: Option<i64>,
    pub transfer_syntax_uid: String,
}

/// The text attributes whose raw bytes are decoded with the full SpecificCharacterSet.
const RAW_TEXT_TAGS: [Tag; 8] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::SERIES_DESCRIPTION,
];

/// Stop the raw pass after this many tokens (a bound on hostile input; indexed attributes
/// all come early in the root data set).
const MAX_RAW_TOKENS: usize = 100_000;

/// Whether `uid` is a syntactically valid UID (PS3.5 9.1): 1 to 64 characters, digits and
/// dots, no empty component. Leading zeros are tolerated (common in the wild).
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

fn trim_value(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\0')
}

fn join_trimmed(s: &str) -> String {
    s.split('\\').map(trim_value).collect::<Vec<_>>().join("\\")
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| join_trimmed(&s)))
        .unwrap_or_default()
}

fn int(obj: &DefaultDicomObject, tag: Tag) -> Option<i64> {
    obj.element(tag).ok().and_then(|e| e.to_int::<i64>().ok())
}

/// Reads the indexed attributes of the Part 10 file at `path`. `Err` carries a reason that
/// is safe to send back (no patient data).
pub fn extract(path: &Path) -> Result<InstanceAttributes, String> {
    check_declared_lengths(path)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| format!("not a readable DICOM Part 10 file: {e}"))?;
    let raw_text = |ts_uid: &str| {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let file_len = file.metadata().map_err(|e| e.to_string())?.len();
        raw_text_values(BufReader::new(file), file_len, ts_uid)
    };
    attributes_of(&obj, raw_text)
}

/// [`extract`] from the first bytes of a Part 10 file of `file_len` bytes, held in memory
/// while the rest is still being written: `None` unless `head` is the whole file or holds
/// every element up to a native (not encapsulated) Pixel Data, whose declared length is
/// then checked against `file_len`. The caller reads the file with [`extract`] on `None`.
pub fn extract_from_head(head: &[u8], file_len: u64) -> Option<Result<InstanceAttributes, String>> {
    let whole = head.len() as u64 >= file_len;
    let walked = walk_declared_lengths(BufReader::new(std::io::Cursor::new(head)), file_len, true);
    match walked {
        Ok(WalkEnd::PixelData {
            encapsulated: false,
        }) => {}
        Ok(_) | Err(_) if !whole => return None,
        Ok(_) => {}
        Err(e) => return Some(Err(e)),
    }
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .read_preamble(ReadPreamble::Always)
        .from_reader(head);
    let obj = match obj {
        Ok(obj) => obj,
        // The file path gives the same error with the whole file in view.
        Err(_) if !whole => return None,
        Err(e) => return Some(Err(format!("not a readable DICOM Part 10 file: {e}"))),
    };
    let raw_text = |ts_uid: &str| raw_text_values(std::io::Cursor::new(head), file_len, ts_uid);
    Some(attributes_of(&obj, raw_text))
}

/// The attributes of a parsed object; `raw_text` re-reads the text values as raw bytes
/// (see the module documentation) for the object's transfer syntax.
fn attributes_of(
    obj: &DefaultDicomObject,
    raw_text: impl FnOnce(&str) -> Result<RawPass, String>,
) -> Result<InstanceAttributes, String> {
    let meta = obj.meta();
    let ts_uid = trim_value(meta.transfer_syntax()).to_owned();
    let meta_sop_instance = trim_value(meta.media_storage_sop_instance_uid()).to_owned();
    let meta_sop_class = trim_value(meta.media_storage_sop_class_uid()).to_owned();

    let mut a = InstanceAttributes {
        specific_character_set: text(obj, tags::SPECIFIC_CHARACTER_SET),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        study_instance_uid: text(obj, tags::STUDY_INSTANCE_UID),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        modality: text(obj, tags::MODALITY),
        series_instance_uid: text(obj, tags::SERIES_INSTANCE_UID),
        series_number: int(obj, tags::SERIES_NUMBER),
        body_part_examined: text(obj, tags::BODY_PART_EXAMINED),
        sop_class_uid: text(obj, tags::SOP_CLASS_UID),
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        rows: int(obj, tags::ROWS),
        columns: int(obj, tags::COLUMNS),
        number_of_frames: int(obj, tags::NUMBER_OF_FRAMES),
        transfer_syntax_uid: ts_uid.clone(),
        ..InstanceAttributes::default()
    };

    for (name, uid) in [
        ("SOPClassUID", &a.sop_class_uid),
        ("SOPInstanceUID", &a.sop_instance_uid),
        ("StudyInstanceUID", &a.study_instance_uid),
        ("SeriesInstanceUID", &a.series_instance_uid),
        ("TransferSyntaxUID", &a.transfer_syntax_uid),
    ] {
        if uid.is_empty() {
            return Err(format!("{name} is missing"));
        }
        if !valid_uid(uid) {
            return Err(format!("{name} {uid:?} is not a valid UID"));
        }
    }
    if meta_sop_instance != a.sop_instance_uid {
        return Err(format!(
            "SOP Instance UID {} does not match the file meta / command ({meta_sop_instance})",
            a.sop_instance_uid
        ));
    }
    if meta_sop_class != a.sop_class_uid {
        return Err(format!(
            "SOP Class UID {} does not match the file meta / command ({meta_sop_class})",
            a.sop_class_uid
        ));
    }

    let charset = CharacterSet::from_raw(&a.specific_character_set).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unsupported SpecificCharacterSet; decoding as default repertoire");
        CharacterSet::default_repertoire()
    });
    let raw = match raw_text(&ts_uid) {
        Ok(RawPass::Complete(raw)) => raw,
        Ok(RawPass::Truncated(reason)) => return Err(reason),
        Err(e) => {
            tracing::debug!(error = %e, "raw text pass skipped; using dicom-rs decoding");
            HashMap::new()
        }
    };
    let decoded = |tag: Tag| -> String {
        match raw.get(&tag) {
            Some(bytes) => join_trimmed(&charset.decode(bytes, tag_is_pn(tag), true)),
            None => text(obj, tag),
        }
    };
    a.patient_name = decoded(tags::PATIENT_NAME);
    a.patient_id = decoded(tags::PATIENT_ID);
    a.issuer_of_patient_id = decoded(tags::ISSUER_OF_PATIENT_ID);
    a.accession_number = decoded(tags::ACCESSION_NUMBER);
    a.study_id = decoded(tags::STUDY_ID);
    a.study_description = decoded(tags::STUDY_DESCRIPTION);
    a.referring_physician_name = decoded(tags::REFERRING_PHYSICIAN_NAME);
    a.series_description = decoded(tags::SERIES_DESCRIPTION);
    Ok(a)
}

/// Undefined length (sequences, items, encapsulated Pixel Data).
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

/// Refuses a file in which any element (file meta or data set, up to Pixel Data) declares a
/// value longer than the bytes left in the file. dicom-rs allocates a value's declared
/// length before reading it, so without this a 9-byte data set declaring 2 GiB costs 2 GB
/// of memory. Walks headers only (values are skipped with seeks), so it is cheap.
///
/// Deflated data sets are not walked (their lengths refer to inflated bytes); neither is
/// the content of a UN element of undefined length (implicit VR inside explicit VR). An
/// unknown transfer syntax is left for dicom-object to refuse.
pub fn check_declared_lengths(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open upload: {e}"))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("cannot stat upload: {e}"))?
        .len();
    walk_declared_lengths(BufReader::new(file), file_len, true).map(|_| ())
}

/// [`check_declared_lengths`] for the first bytes of an upload that callers parse with
/// dicom-object themselves (e.g. to read UIDs from a STOW-RS part's prefix): every element
/// before Pixel Data must fit in `prefix`; Pixel Data's own length is not checked (its
/// value is usually beyond the prefix, and `read_until(PixelData)` does not read it).
pub fn check_prefix_lengths(prefix: &[u8]) -> Result<(), String> {
    walk_declared_lengths(
        BufReader::new(std::io::Cursor::new(prefix)),
        prefix.len() as u64,
        false,
    )
    .map(|_| ())
}

/// Where [`walk_declared_lengths`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkEnd {
    /// At Pixel Data's header, having checked every element before it.
    PixelData { encapsulated: bool },
    /// At the end of the bytes, having checked every element up to there.
    EndOfData,
    /// Not walked to the end: not Part 10, deflated, an unknown transfer syntax, or a UN
    /// element of undefined length (see [`check_declared_lengths`]).
    Unchecked,
}

/// How the data set's element headers are encoded.
#[derive(Clone, Copy)]
struct HeaderForm {
    explicit_vr: bool,
    big_endian: bool,
}

/// Skips use `seek_relative`, which keeps the reader's buffer: a plain `seek` empties it,
/// and every skipped value would then cost a fresh read of the file.
fn walk_declared_lengths<R: Read + Seek>(
    mut r: BufReader<R>,
    file_len: u64,
    check_pixel_data: bool,
) -> Result<WalkEnd, String> {
    let mut head = [0u8; 132];
    if r.read_exact(&mut head).is_err() || &head[128..132] != b"DICM" {
        // Not Part 10: dicom-object refuses it without large allocations.
        return Ok(WalkEnd::Unchecked);
    }
    let mut pos = 132u64;
    let meta = HeaderForm {
        explicit_vr: true,
        big_endian: false,
    };
    let mut ts_uid = None;
    // File meta: explicit VR little endian, group 0002 only.
    loop {
        // Peek at the group: the first data set element may not be explicit VR.
        let mut group = [0u8; 2];
        if read_fully(&mut r, &mut group)? < 2 {
            return Ok(WalkEnd::EndOfData);
        }
        r.seek_relative(-2).map_err(|e| e.to_string())?;
        if u16::from_le_bytes(group) != 0x0002 {
            break;
        }
        let Some(h) = read_header(&mut r, &mut pos, meta)? else {
            return Ok(WalkEnd::EndOfData);
        };
        check_len(h.group, h.element, h.len, pos, file_len)?;
        if h.len == UNDEFINED_LENGTH {
            // Not valid in the meta group; dicom-object refuses it.
            return Ok(WalkEnd::Unchecked);
        }
        if h.element == 0x0010 && h.len <= 64 {
            let mut v = vec![0u8; h.len as usize];
            r.read_exact(&mut v).map_err(|e| e.to_string())?;
            ts_uid = Some(
                String::from_utf8_lossy(&v)
                    .trim_end_matches(['\0', ' '])
                    .to_owned(),
            );
        } else {
            r.seek_relative(i64::from(h.len))
                .map_err(|e| e.to_string())?;
        }
        pos += u64::from(h.len);
    }
    let form = match ts_uid.as_deref() {
        Some("1.2.840.10008.1.2") => HeaderForm {
            explicit_vr: false,
            big_endian: false,
        },
        Some("1.2.840.10008.1.2.2") => HeaderForm {
            explicit_vr: true,
            big_endian: true,
        },
        Some(uid) => match TransferSyntaxRegistry.get(uid) {
            Some(ts) if !matches!(ts.codec(), Codec::Dataset(_)) => HeaderForm {
                explicit_vr: true,
                big_endian: false,
            },
            // Deflated or unknown: see the doc comment.
            _ => return Ok(WalkEnd::Unchecked),
        },
        None => return Ok(WalkEnd::Unchecked),
    };
    loop {
        let Some(h) = read_header(&mut r, &mut pos, form)? else {
            return Ok(WalkEnd::EndOfData);
        };
        let pixel_data = (h.group, h.element) == (0x7FE0, 0x0010);
        let reached = WalkEnd::PixelData {
            encapsulated: h.len == UNDEFINED_LENGTH,
        };
        if pixel_data && !check_pixel_data {
            return Ok(reached);
        }
        check_len(h.group, h.element, h.len, pos, file_len)?;
        if pixel_data {
            return Ok(reached);
        }
        if h.len == UNDEFINED_LENGTH {
            if h.vr == Some(*b"UN") {
                return Ok(WalkEnd::Unchecked);
            }
            // A sequence or item of undefined length: its content follows.
            continue;
        }
        let is_container = h.group == 0xFFFE
            || h.vr == Some(*b"SQ")
            || (!form.explicit_vr && h.is_sequence_in_implicit());
        if is_container {
            // Walk into defined-length items and sequences: their elements follow.
            continue;
        }
        r.seek_relative(i64::from(h.len))
            .map_err(|e| e.to_string())?;
        pos += u64::from(h.len);
    }
}

/// One element header.
struct Header {
    group: u16,
    element: u16,
    vr: Option<[u8; 2]>,
    len: u32,
}

impl Header {
    /// Without VRs on the wire, a sequence is known from the dictionary (as dicom-rs does).
    fn is_sequence_in_implicit(&self) -> bool {
        use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
        dicom_dictionary_std::StandardDataDictionary
            .by_tag(Tag(self.group, self.element))
            .is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(VR::SQ)))
    }
}

fn check_len(group: u16, element: u16, len: u32, pos: u64, file_len: u64) -> Result<(), String> {
    if len != UNDEFINED_LENGTH && u64::from(len) > file_len.saturating_sub(pos) {
        return Err(format!(
            "element ({group:04X},{element:04X}) declares {len} bytes but only {} remain in the file",
            file_len.saturating_sub(pos)
        ));
    }
    Ok(())
}

/// Reads one element header at `pos` (advanced past it); `None` at the end of the file, an
/// error if the file ends inside a header (dicom-rs may take that for a clean end).
fn read_header<R: Read>(
    r: &mut R,
    pos: &mut u64,
    form: HeaderForm,
) -> Result<Option<Header>, String> {
    let mut b = [0u8; 8];
    match read_fully(r, &mut b)? {
        0 => return Ok(None),
        8 => {}
        n => {
            return Err(format!(
                "truncated element header at byte {pos}: {n} of 8 bytes"
            ));
        }
    }
    let u16_at = |i: usize| {
        if form.big_endian {
            u16::from_be_bytes([b[i], b[i + 1]])
        } else {
            u16::from_le_bytes([b[i], b[i + 1]])
        }
    };
    let u32_of = |x: [u8; 4]| {
        if form.big_endian {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        }
    };
    let group = u16_at(0);
    let element = u16_at(2);
    // Items and delimiters have no VR in any transfer syntax.
    if group == 0xFFFE || !form.explicit_vr {
        *pos += 8;
        return Ok(Some(Header {
            group,
            element,
            vr: None,
            len: u32_of([b[4], b[5], b[6], b[7]]),
        }));
    }
    let vr = [b[4], b[5]];
    // As dicom-rs does, an unknown VR is read like UN (4-byte length).
    let short = matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    );
    if short {
        *pos += 8;
        return Ok(Some(Header {
            group,
            element,
            vr: Some(vr),
            len: u32::from(u16_at(6)),
        }));
    }
    let mut l = [0u8; 4];
    if read_fully(r, &mut l)? < 4 {
        return Err(format!("truncated element header at byte {pos}"));
    }
    *pos += 12;
    Ok(Some(Header {
        group,
        element,
        vr: Some(vr),
        len: u32_of(l),
    }))
}

/// Like `read_exact`, but returns how many bytes were read before the end.
fn read_fully<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read upload: {e}")),
        }
    }
    Ok(n)
}

fn tag_is_pn(tag: Tag) -> bool {
    tag == tags::PATIENT_NAME || tag == tags::REFERRING_PHYSICIAN_NAME
}

/// Counts the bytes the token reader consumes (to know where Pixel Data starts).
struct Counting<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

enum RawPass {
    /// The raw bytes of [`RAW_TEXT_TAGS`]; Pixel Data (if any) is complete.
    Complete(HashMap<Tag, Vec<u8>>),
    /// Pixel Data is cut short: the upload is truncated.
    Truncated(String),
}

/// The raw bytes of [`RAW_TEXT_TAGS`] in the root data set, and a check that Pixel Data
/// is complete (dicom-object stopped before it, so a truncated upload would pass there).
fn raw_text_values<R: Read + Seek>(
    mut reader: R,
    file_len: u64,
    ts_uid: &str,
) -> Result<RawPass, String> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    if matches!(ts.codec(), Codec::Dataset(_)) {
        return Err("deflated data set".to_owned());
    }
    // Preamble, "DICM", then (0002,0000) UL group length: 4 + 2 + 2 + 4 bytes.
    let mut head = [0u8; 144];
    reader.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[128..132] != b"DICM"
        || head[132..140] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00]
    {
        return Err("no preamble or no meta group length".to_owned());
    }
    let group_len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    reader
        .seek(SeekFrom::Start(144 + u64::from(group_len)))
        .map_err(|e| e.to_string())?;
    let mut options = DataSetReaderOptions::default();
    options.value_read = ValueReadStrategy::Raw;
    let data_start = 144 + u64::from(group_len);
    let consumed = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let counting = Counting {
        inner: reader,
        count: consumed.clone(),
    };
    let mut tokens =
        DataSetReader::new_with_ts_options(counting, ts, options).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    let mut depth = 0usize;
    let mut pending: Option<Tag> = None;
    let truncated =
        || RawPass::Truncated("the upload is truncated (Pixel Data is incomplete)".to_owned());
    let mut seen = 0usize;
    while let Some(token) = tokens.next() {
        seen += 1;
        if seen > MAX_RAW_TOKENS {
            break;
        }
        let token = token.map_err(|e| e.to_string())?;
        match token {
            DataToken::ElementHeader(h) if depth == 0 => {
                if h.tag == tags::PIXEL_DATA {
                    // Native pixel data: its declared length must be in the file.
                    let position = data_start + consumed.get();
                    if !h.len.is_undefined()
                        && u64::from(h.len.0) > file_len.saturating_sub(position)
                    {
                        return Ok(truncated());
                    }
                    break;
                }
                if h.tag > tags::PIXEL_DATA {
                    break;
                }
                pending = RAW_TEXT_TAGS.contains(&h.tag).then_some(h.tag);
            }
            DataToken::PrimitiveValue(v) if depth == 0 => {
                if let Some(tag) = pending.take() {
                    out.insert(tag, v.to_bytes().into_owned());
                }
            }
            DataToken::SequenceStart { tag, .. } => {
                if depth == 0 && tag >= tags::PIXEL_DATA {
                    break;
                }
                depth += 1;
            }
            DataToken::PixelSequenceStart => {
                // Encapsulated pixel data: every fragment must be readable up to the
                // sequence delimiter.
                for token in tokens.by_ref() {
                    match token {
                        Ok(DataToken::SequenceEnd) => return Ok(RawPass::Complete(out)),
                        Ok(_) => {}
                        Err(_) => return Ok(truncated()),
                    }
                }
                return Ok(truncated());
            }
            DataToken::SequenceEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(RawPass::Complete(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_syntax() {
        assert!(valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(valid_uid("2.25.275561383431422241173823254920674236074"));
        assert!(!valid_uid(""));
        assert!(!valid_uid("1..2"));
        assert!(!valid_uid("1.2."));
        assert!(!valid_uid("1.2.a"));
        assert!(!valid_uid(&"1.".repeat(40)));
    }

    fn sample(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dicom-samples/studies/studies")
            .join(rel)
    }

    #[test]
    fn gb18030_and_utf8_names_from_samples() {
        let ct = extract(&sample("0001_CT/CT0001.dcm")).unwrap();
        assert_eq!(ct.specific_character_set, "GB18030");
        assert_eq!(ct.patient_name, "Wu^Xiaodong=吴^小东");
        assert_eq!(ct.modality, "CT");
        assert_eq!(ct.patient_id, "00001012");
        let dx = extract(&sample("0002_DX/DX0001.dcm")).unwrap();
        assert_eq!(dx.patient_name, "Wu^Xiaodong=吴^小东");
        let cr = extract(&sample("0004_CR/CR0001.dcm")).unwrap();
        assert_eq!(cr.patient_name, "Novák^Hans");
        assert!(cr.rows.is_some_and(|r| r > 0));
    }

    /// Every sample file: parsed from the first bytes in memory, the attributes are those
    /// parsed from the file; a head that ends before Pixel Data defers to the file.
    #[test]
    fn head_parse_matches_file_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dicom-samples/studies/studies");
        let mut checked = 0;
        for series in std::fs::read_dir(dir).unwrap().flatten() {
            for file in std::fs::read_dir(series.path()).unwrap().flatten() {
                let path = file.path();
                if path.extension().is_none_or(|e| e != "dcm") {
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                let len = bytes.len() as u64;
                let from_file = extract(&path).unwrap();
                let head = &bytes[..bytes.len().min(64 * 1024)];
                assert_eq!(
                    extract_from_head(head, len),
                    Some(Ok(from_file.clone())),
                    "{path:?}"
                );
                assert_eq!(
                    extract_from_head(&bytes, len),
                    Some(Ok(from_file)),
                    "{path:?}"
                );
                assert_eq!(extract_from_head(&bytes[..400], len), None, "{path:?}");
                checked += 1;
            }
        }
        assert!(checked >= 4, "only {checked} sample files");
    }

    /// Pixel Data cut short (its declared length beyond the file's size) is not accepted
    /// from the head: the head defers, and the file is refused.
    #[test]
    fn head_parse_defers_truncated_pixel_data_to_the_file() {
        let bytes = std::fs::read(sample("0001_CT/CT0001.dcm")).unwrap();
        let cut = &bytes[..bytes.len() - 1000];
        assert_eq!(extract_from_head(&cut[..64 * 1024], cut.len() as u64), None);
        assert!(extract_from_head(&bytes[..64 * 1024], bytes.len() as u64).is_some());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.dcm");
        std::fs::write(&p, cut).unwrap();
        let err = extract(&p).unwrap_err();
        assert!(err.contains("(7FE0,0010) declares"), "{err}");
    }

    /// Encapsulated Pixel Data is only complete when its last fragment is there: a head
    /// that stops inside it defers to the file.
    #[test]
    fn head_parse_defers_encapsulated_pixel_data_to_the_file() {
        // (0008,0060) CS "OT", then Pixel Data OB of undefined length: an empty offset
        // table, one 8-byte fragment, the sequence delimiter.
        let mut ds = vec![0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'O', b'T'];
        ds.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0]);
        ds.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let file = part10("1.2.840.10008.1.2.4.50", &ds);
        assert_eq!(walk(&file), Ok(WalkEnd::PixelData { encapsulated: true }));
        let head = &file[..file.len() - 12];
        assert_eq!(extract_from_head(head, file.len() as u64), None);
    }

    #[test]
    fn garbage_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"not dicom at all").unwrap();
        assert!(extract(&p).is_err());
        std::fs::write(&p, []).unwrap();
        assert!(extract(&p).is_err());
    }

    /// A Part 10 file: explicit VR LE meta with `ts`, then `data_set`.
    fn part10(ts: &str, data_set: &[u8]) -> Vec<u8> {
        let mut ts_value = ts.as_bytes().to_vec();
        if ts_value.len() % 2 == 1 {
            ts_value.push(0);
        }
        let mut meta = Vec::new();
        meta.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        meta.extend_from_slice(&(ts_value.len() as u16).to_le_bytes());
        meta.extend_from_slice(&ts_value);
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        file.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        file.extend_from_slice(&meta);
        file.extend_from_slice(data_set);
        file
    }

    fn walk(bytes: &[u8]) -> Result<WalkEnd, String> {
        walk_declared_lengths(
            BufReader::new(std::io::Cursor::new(bytes)),
            bytes.len() as u64,
            true,
        )
    }

    #[test]
    fn huge_declared_lengths_are_refused_in_every_encoding() {
        // Explicit VR LE, OB with a 4-byte length.
        let mut ds = vec![0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0];
        ds.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        let err = walk(&part10("1.2.840.10008.1.2.1", &ds)).unwrap_err();
        assert!(
            err.contains("(0009,0010) declares 2147483632 bytes"),
            "{err}"
        );
        // Implicit VR LE.
        let mut ds = vec![0x08, 0x00, 0x20, 0x00];
        ds.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        assert!(walk(&part10("1.2.840.10008.1.2", &ds)).is_err());
        // Explicit VR BE.
        let mut ds = vec![0x00, 0x09, 0x00, 0x10, b'U', b'T', 0, 0];
        ds.extend_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
        assert!(walk(&part10("1.2.840.10008.1.2.2", &ds)).is_err());
        // Inside an item of an undefined-length sequence (implicit VR LE).
        let mut ds = vec![0x08, 0x00, 0x15, 0x11, 0xFF, 0xFF, 0xFF, 0xFF];
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        ds.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, 0xF0, 0xFF, 0xFF, 0x7F]);
        assert!(walk(&part10("1.2.840.10008.1.2", &ds)).is_err());
        // Inside a defined-length sequence (implicit VR LE: known from the dictionary).
        let mut ds = vec![0x08, 0x00, 0x15, 0x11, 16, 0, 0, 0];
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0]);
        ds.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, 0xF0, 0xFF, 0xFF, 0x7F]);
        assert!(walk(&part10("1.2.840.10008.1.2", &ds)).is_err());
        // In the file meta.
        let mut file = part10("1.2.840.10008.1.2.1", &[]);
        file.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0]);
        file.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        assert!(walk(&file).is_err());
        // Pixel Data may be the last element; lengths that fit are accepted.
        let mut ds = vec![
            0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 4, 0, 0, 0, 1, 2, 3, 4,
        ];
        assert!(walk(&part10("1.2.840.10008.1.2.1", &ds)).is_ok());
        ds.truncate(15);
        assert!(walk(&part10("1.2.840.10008.1.2.1", &ds)).is_err());
        // A file ending inside an element header.
        let ds = [0x08, 0x00, 0x60, 0x00, b'C'];
        let err = walk(&part10("1.2.840.10008.1.2.1", &ds)).unwrap_err();
        assert!(err.contains("truncated element header"), "{err}");
        // A prefix: Pixel Data may run past it, nothing before it may.
        let mut ds = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 0, 0, 1, 0, 1, 2];
        assert!(check_prefix_lengths(&part10("1.2.840.10008.1.2.1", &ds)).is_ok());
        ds[0..2].copy_from_slice(&[0x09, 0x00]);
        assert!(check_prefix_lengths(&part10("1.2.840.10008.1.2.1", &ds)).is_err());
    }

    #[test]
    fn every_committed_sample_passes_the_length_walk() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dicom-samples/studies");
        let mut stack = vec![root];
        let mut n = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "dcm") {
                    check_declared_lengths(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    n += 1;
                }
            }
        }
        assert!(n >= 13, "{n} samples");
    }
}
