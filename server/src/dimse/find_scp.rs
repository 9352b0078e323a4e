//! C-FIND SCP, Study Root Query/Retrieve Information Model – FIND (PS3.4 annex C).
//!
//! [`parse_identifier`] turns the request identifier into an archive [`Query`]: the
//! QueryRetrieveLevel (STUDY, SERIES or IMAGE) picks the level; every other element is a
//! key, its value parsed by [`parse_condition`] (empty value: a return key). Keys the index
//! cannot match at that level are kept as return keys only (PS3.4 C.2.2.1: unsupported
//! matching is ignored). Text in the identifier is decoded with its SpecificCharacterSet,
//! including multi-valued ones and ISO 2022 code extensions ([`super::raw_text`]).
//!
//! [`encode_match`] writes one match as a response identifier in the presentation
//! context's transfer syntax, always in UTF-8 (`ISO_IR 192`); every requested key is
//! present, empty when the archive has no value.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::command::{Response, status};
use crate::store::query::{Include, matchable_keys, parse_condition};
use crate::store::{Attribute, AttributeSet, Condition, MatchKey, Query, QueryError, QueryLevel};

/// Study Root Query/Retrieve Information Model – FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

/// At most this many matches are sent; past it the C-FIND ends with 0xA700 and a comment
/// asking for a narrower query.
pub const MAX_MATCHES: usize = 1000;

/// A request identifier larger than this is refused (real ones are well under 4 KiB).
pub const MAX_IDENTIFIER_BYTES: usize = 1 << 20;

/// A parsed C-FIND request.
#[derive(Debug)]
pub struct FindRequest {
    pub query: Query,
    /// QueryRetrieveLevel as sent ("STUDY", "SERIES", "IMAGE"), echoed in responses.
    pub level_name: &'static str,
    /// Every key of the identifier, in order, with the VR to answer it with.
    pub return_keys: Vec<(Tag, VR)>,
}

/// A failure response for an identifier that cannot be used.
fn refuse(status: u16, comment: &str) -> Response {
    Response::with_comment(status, comment)
}

/// Keys answered by the SCP itself, not the archive.
const RETRIEVE_AE_TITLE: Tag = tags::RETRIEVE_AE_TITLE;
const INSTANCE_AVAILABILITY: Tag = tags::INSTANCE_AVAILABILITY;

/// Parses a request identifier encoded in `transfer_syntax`.
pub fn parse_identifier(bytes: &[u8], transfer_syntax: &str) -> Result<FindRequest, Response> {
    if bytes.len() > MAX_IDENTIFIER_BYTES {
        return Err(refuse(status::OUT_OF_RESOURCES, "identifier too large"));
    }
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| refuse(status::CANNOT_UNDERSTAND, "unknown transfer syntax"))?;
    // dicom-rs allocates what an element header declares before reading it: check every
    // declared length against the bytes we have first. A deflated identifier cannot be
    // checked without inflating it, so it is refused (no SCU we know deflates queries).
    if transfer_syntax == DEFLATED_EXPLICIT_LE {
        return Err(refuse(
            status::CANNOT_UNDERSTAND,
            "deflated identifiers are not supported",
        ));
    }
    check_lengths(
        bytes,
        transfer_syntax != IMPLICIT_LE_UID,
        transfer_syntax == EXPLICIT_BE_UID,
    )
    .map_err(|e| refuse(status::CANNOT_UNDERSTAND, &format!("bad identifier: {e}")))?;
    // The reader switches character set when it meets SpecificCharacterSet (0008,0005),
    // but with its first value only and without ISO 2022 escapes: text is then re-decoded
    // from the raw bytes (see `raw_text`).
    let mut identifier = InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| refuse(status::CANNOT_UNDERSTAND, &format!("bad identifier: {e}")))?;
    super::raw_text::redecode_text(&mut identifier, bytes, ts);

    let level_text = identifier
        .element(tags::QUERY_RETRIEVE_LEVEL)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches([' ', '\0']).to_ascii_uppercase());
    let (level, level_name) = match level_text.as_deref() {
        Some("STUDY") => (QueryLevel::Study, "STUDY"),
        Some("SERIES") => (QueryLevel::Series, "SERIES"),
        Some("IMAGE") => (QueryLevel::Instance, "IMAGE"),
        Some(other) => {
            return Err(refuse(
                status::DATA_SET_DOES_NOT_MATCH,
                &format!("QueryRetrieveLevel {other} not supported"),
            ));
        }
        None => {
            return Err(refuse(
                status::DATA_SET_DOES_NOT_MATCH,
                "QueryRetrieveLevel missing",
            ));
        }
    };
    let matchable = matchable_keys(level_of(level_name));

    let mut keys = Vec::new();
    let mut return_keys = Vec::new();
    for element in identifier.iter() {
        let tag = element.header().tag;
        let vr = element.vr();
        if tag.group() <= 0x0002
            || tag == tags::SPECIFIC_CHARACTER_SET
            || tag == tags::QUERY_RETRIEVE_LEVEL
            || tag.element() == 0x0000
        {
            continue;
        }
        return_keys.push((tag, vr));
        // Sequence matching is not supported: return keys only. Keys answered by us too.
        if vr == VR::SQ || tag == RETRIEVE_AE_TITLE || tag == INSTANCE_AVAILABILITY {
            continue;
        }
        let value = element
            .to_str()
            .map(|v| v.trim_end_matches([' ', '\0']).to_owned())
            .unwrap_or_default();
        let condition = if value.is_empty() || !matchable.contains(&tag) {
            Condition::Universal
        } else {
            match parse_condition(tag, &value) {
                Ok(condition) => condition,
                Err(QueryError::InvalidValue {
                    keyword, reason, ..
                }) => {
                    // The value itself may be a patient name: not in the comment.
                    return Err(refuse(
                        status::DATA_SET_DOES_NOT_MATCH,
                        &format!("invalid {keyword}: {reason}"),
                    ));
                }
                Err(QueryError::UnknownAttribute(_) | QueryError::UnsupportedKey { .. }) => {
                    Condition::Universal
                }
            }
        };
        if matchable.contains(&tag) {
            keys.push(MatchKey { tag, condition });
        }
    }
    let include = Include::Tags(return_keys.iter().map(|(tag, _)| *tag).collect());
    Ok(FindRequest {
        query: Query {
            level,
            keys,
            include,
            fuzzy_matching: false,
            combined_datetime: false,
            // One more than we send, to know when there were more.
            limit: Some(MAX_MATCHES as u32 + 1),
            offset: 0,
        },
        level_name,
        return_keys,
    })
}

const IMPLICIT_LE_UID: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE_UID: &str = "1.2.840.10008.1.2.2";
const DEFLATED_EXPLICIT_LE: &str = "1.2.840.10008.1.2.1.99";

/// Walks the element headers of a data set (descending into sequences and items) and
/// fails when one declares more bytes than remain.
fn check_lengths(bytes: &[u8], explicit: bool, big_endian: bool) -> Result<(), String> {
    let u16_at = |at: usize| -> Option<u16> {
        let b = bytes.get(at..at + 2)?;
        Some(if big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at + 4)?;
        Some(if big_endian {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    };
    let truncated = || "truncated element header".to_owned();
    let mut at = 0usize;
    while at < bytes.len() {
        let group = u16_at(at).ok_or_else(truncated)?;
        let element = u16_at(at + 2).ok_or_else(truncated)?;
        // Items and delimiters have no VR, in every transfer syntax.
        let (len, header, is_sequence) = if group == 0xFFFE {
            (u32_at(at + 4).ok_or_else(truncated)?, 8, true)
        } else if explicit {
            let vr = bytes.get(at + 4..at + 6).ok_or_else(truncated)?;
            if matches!(
                vr,
                b"OB"
                    | b"OD"
                    | b"OF"
                    | b"OL"
                    | b"OV"
                    | b"OW"
                    | b"SQ"
                    | b"SV"
                    | b"UC"
                    | b"UN"
                    | b"UR"
                    | b"UT"
                    | b"UV"
            ) {
                (u32_at(at + 8).ok_or_else(truncated)?, 12, vr == b"SQ")
            } else {
                (u32::from(u16_at(at + 6).ok_or_else(truncated)?), 8, false)
            }
        } else {
            (u32_at(at + 4).ok_or_else(truncated)?, 8, false)
        };
        let content = at + header;
        if len == u32::MAX || (group == 0xFFFE && element == 0xE000) {
            // Undefined length, or an item: its elements follow; walk into them.
            at = content;
            continue;
        }
        let remaining = bytes.len().saturating_sub(content);
        if len as usize > remaining {
            return Err(format!(
                "element ({group:04X},{element:04X}) declares {len} bytes, {remaining} remain"
            ));
        }
        // A sequence (known from its VR, or in implicit VR from an item tag at its start)
        // is walked into; anything else is skipped.
        let starts_with_item = !explicit
            && len >= 8
            && u16_at(content) == Some(0xFFFE)
            && u16_at(content + 2) == Some(0xE000);
        at = if is_sequence || starts_with_item {
            content
        } else {
            content + len as usize
        };
    }
    Ok(())
}

fn level_of(name: &str) -> QueryLevel {
    match name {
        "STUDY" => QueryLevel::Study,
        "SERIES" => QueryLevel::Series,
        _ => QueryLevel::Instance,
    }
}

/// Encodes one match as a response identifier in `transfer_syntax`.
pub fn encode_match(
    request: &FindRequest,
    attributes: &AttributeSet,
    transfer_syntax: &str,
    our_ae_title: &str,
) -> Result<Vec<u8>, String> {
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        PrimitiveValue::from("ISO_IR 192"),
    ));
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(request.level_name),
    ));
    // What the archive returned (unique keys, computed attributes, requested keys)...
    for (tag, attribute) in attributes {
        if let Some(element) = to_element(*tag, attribute) {
            obj.put(element);
        }
    }
    // ...and every requested key, empty when there is no value.
    for (tag, vr) in &request.return_keys {
        if attributes.contains_key(tag) {
            continue;
        }
        let element = match *tag {
            RETRIEVE_AE_TITLE => DataElement::new(*tag, VR::AE, PrimitiveValue::from(our_ae_title)),
            INSTANCE_AVAILABILITY => DataElement::new(*tag, VR::CS, PrimitiveValue::from("ONLINE")),
            _ if *vr == VR::SQ => DataElement::new(
                *tag,
                VR::SQ,
                dicom_core::value::DataSetSequence::<InMemDicomObject>::empty(),
            ),
            _ => DataElement::new(*tag, *vr, PrimitiveValue::Empty),
        };
        obj.put(element);
    }
    let mut bytes = Vec::with_capacity(512);
    obj.write_dataset_with_ts(&mut bytes, ts)
        .map_err(|e| format!("cannot encode identifier: {e}"))?;
    Ok(bytes)
}

/// An archive attribute as a data element; binary numbers are parsed from their text.
fn to_element(tag: Tag, attribute: &Attribute) -> Option<DataElement<InMemDicomObject>> {
    let values = &attribute.values;
    let vr = attribute.vr;
    let value = match vr {
        VR::US => PrimitiveValue::U16(parse_all(values)?),
        VR::SS => PrimitiveValue::I16(parse_all(values)?),
        VR::UL => PrimitiveValue::U32(parse_all(values)?),
        VR::SL => PrimitiveValue::I32(parse_all(values)?),
        VR::UV => PrimitiveValue::U64(parse_all(values)?),
        VR::SV => PrimitiveValue::I64(parse_all(values)?),
        VR::FL => PrimitiveValue::F32(parse_all(values)?),
        VR::FD => PrimitiveValue::F64(parse_all(values)?),
        VR::SQ | VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN => return None,
        _ if values.is_empty() => PrimitiveValue::Empty,
        _ => PrimitiveValue::Strs(values.iter().cloned().collect()),
    };
    Some(DataElement::new(tag, vr, value))
}

fn parse_all<T: std::str::FromStr>(values: &[String]) -> Option<dicom_core::value::C<T>> {
    values.iter().map(|v| v.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_transfer_syntax_registry::entries::{
        EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
    };

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

    fn identifier(elements: Vec<DataElement<InMemDicomObject>>, explicit: bool) -> Vec<u8> {
        let obj = InMemDicomObject::from_element_iter(elements);
        let mut bytes = Vec::new();
        let ts = if explicit {
            EXPLICIT_VR_LITTLE_ENDIAN.erased()
        } else {
            IMPLICIT_VR_LITTLE_ENDIAN.erased()
        };
        obj.write_dataset_with_ts(&mut bytes, &ts).unwrap();
        bytes
    }

    fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, vr, PrimitiveValue::from(value))
    }

    fn key(request: &FindRequest, tag: Tag) -> Option<&Condition> {
        request
            .query
            .keys
            .iter()
            .find(|k| k.tag == tag)
            .map(|k| &k.condition)
    }

    #[test]
    fn parses_a_study_query_with_matching_and_return_keys() {
        let bytes = identifier(
            vec![
                text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
                text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY "),
                text(tags::PATIENT_NAME, VR::PN, "王*"),
                text(tags::STUDY_DATE, VR::DA, "20260101-20261231"),
                text(tags::STUDY_INSTANCE_UID, VR::UI, ""),
                text(tags::ACCESSION_NUMBER, VR::SH, ""),
                // not matchable at STUDY level: a return key only
                text(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3"),
                text(tags::RETRIEVE_AE_TITLE, VR::AE, ""),
            ],
            false,
        );
        let request = parse_identifier(&bytes, IMPLICIT_LE).unwrap();
        assert!(matches!(request.query.level, QueryLevel::Study));
        assert_eq!(request.level_name, "STUDY");
        assert!(
            matches!(key(&request, tags::PATIENT_NAME), Some(Condition::Wildcard(w)) if w == "王*"),
            "{:?}",
            request.query.keys
        );
        assert!(matches!(
            key(&request, tags::STUDY_DATE),
            Some(Condition::Range { from: Some(a), to: Some(b) }) if a == "20260101" && b == "20261231"
        ));
        assert!(matches!(
            key(&request, tags::STUDY_INSTANCE_UID),
            Some(Condition::Universal)
        ));
        assert!(key(&request, tags::SOP_INSTANCE_UID).is_none());
        assert!(key(&request, tags::RETRIEVE_AE_TITLE).is_none());
        let returned: Vec<Tag> = request.return_keys.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            returned,
            [
                tags::SOP_INSTANCE_UID,
                tags::STUDY_DATE,
                tags::ACCESSION_NUMBER,
                tags::RETRIEVE_AE_TITLE,
                tags::PATIENT_NAME,
                tags::STUDY_INSTANCE_UID,
            ]
        );
        assert_eq!(request.query.limit, Some(MAX_MATCHES as u32 + 1));
    }

    #[test]
    fn decodes_the_identifier_character_set() {
        // GB18030 bytes for 王 are CD F5.
        let mut obj = InMemDicomObject::new_empty();
        obj.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "GB18030"));
        obj.put(text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"));
        obj.put(text(tags::PATIENT_NAME, VR::PN, "Wang^Fang=王*"));
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        assert!(bytes.windows(2).any(|w| w == [0xCD, 0xF5]));
        let request = parse_identifier(&bytes, EXPLICIT_LE).unwrap();
        match key(&request, tags::PATIENT_NAME) {
            Some(Condition::Wildcard(w)) => assert_eq!(w, "Wang^Fang=王*"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_iso_2022_identifiers() {
        use super::super::raw_text::tests::{explicit_le, yamada_iso2022, zhang_iso2022};
        for (scs, name, expected) in [
            (
                &b"\\ISO 2022 IR 87"[..],
                yamada_iso2022(),
                "Yamada^Tarou=山田^太郎=やまだ^たろう",
            ),
            (
                &b"\\ISO 2022 IR 58"[..],
                zhang_iso2022(),
                "Zhang^XiaoDong=章^小东=",
            ),
        ] {
            let bytes = explicit_le(&[
                (tags::SPECIFIC_CHARACTER_SET, VR::CS, scs),
                (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
                (tags::PATIENT_NAME, VR::PN, &name),
            ]);
            let request = parse_identifier(&bytes, EXPLICIT_LE).unwrap();
            match key(&request, tags::PATIENT_NAME) {
                Some(Condition::Exact(v)) => assert_eq!(v, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn accepts_identifiers_with_sequences() {
        use dicom_core::value::DataSetSequence;
        let item = InMemDicomObject::from_element_iter([text(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.2\0",
        )]);
        for explicit in [false, true] {
            let bytes = identifier(
                vec![
                    text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
                    DataElement::new(
                        tags::REFERENCED_STUDY_SEQUENCE,
                        VR::SQ,
                        DataSetSequence::from(vec![item.clone()]),
                    ),
                    text(tags::PATIENT_ID, VR::LO, "12345678"),
                ],
                explicit,
            );
            let request =
                parse_identifier(&bytes, if explicit { EXPLICIT_LE } else { IMPLICIT_LE })
                    .unwrap_or_else(|e| panic!("explicit={explicit}: {e:?}"));
            assert!(key(&request, tags::PATIENT_ID).is_some());
            assert!(
                request
                    .return_keys
                    .contains(&(tags::REFERENCED_STUDY_SEQUENCE, VR::SQ))
            );
        }
    }

    #[test]
    fn refuses_bad_identifiers() {
        let no_level = identifier(vec![text(tags::PATIENT_NAME, VR::PN, "A*")], false);
        let err = parse_identifier(&no_level, IMPLICIT_LE).unwrap_err();
        assert_eq!(err.status, 0xA900);
        assert!(err.error_comment.unwrap().contains("QueryRetrieveLevel"));

        let patient = identifier(
            vec![text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "PATIENT")],
            false,
        );
        assert_eq!(
            parse_identifier(&patient, IMPLICIT_LE).unwrap_err().status,
            0xA900
        );

        let bad_date = identifier(
            vec![
                text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
                text(tags::STUDY_DATE, VR::DA, "2026-13-45"),
            ],
            true,
        );
        let err = parse_identifier(&bad_date, EXPLICIT_LE).unwrap_err();
        assert_eq!(err.status, 0xA900);
        assert!(err.error_comment.unwrap().contains("StudyDate"));

        // garbage and a truncated identifier
        assert_eq!(
            parse_identifier(
                &[0x08, 0x00, 0x52, 0x00, 0xff, 0xff, 0xff, 0x7f, 1],
                IMPLICIT_LE
            )
            .unwrap_err()
            .status,
            0xC000
        );
        let good = identifier(
            vec![
                text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
                text(tags::PATIENT_ID, VR::LO, "12345678"),
            ],
            false,
        );
        assert_eq!(
            parse_identifier(&good[..good.len() - 3], IMPLICIT_LE)
                .unwrap_err()
                .status,
            0xC000
        );
        assert_eq!(
            parse_identifier(&vec![0; MAX_IDENTIFIER_BYTES + 1], IMPLICIT_LE)
                .unwrap_err()
                .status,
            0xA700
        );
    }

    #[test]
    fn encodes_matches_in_utf8_with_every_requested_key() {
        let bytes = identifier(
            vec![
                text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES"),
                text(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
                text(tags::MODALITY, VR::CS, ""),
                text(tags::SERIES_DESCRIPTION, VR::LO, ""),
                text(tags::RETRIEVE_AE_TITLE, VR::AE, ""),
            ],
            false,
        );
        let request = parse_identifier(&bytes, IMPLICIT_LE).unwrap();
        let mut attributes = AttributeSet::new();
        let attr = |vr, v: &[&str]| Attribute {
            vr,
            values: v.iter().map(|s| s.to_string()).collect(),
        };
        attributes.insert(tags::STUDY_INSTANCE_UID, attr(VR::UI, &["1.2.3"]));
        attributes.insert(tags::SERIES_INSTANCE_UID, attr(VR::UI, &["1.2.3.4"]));
        attributes.insert(tags::MODALITY, attr(VR::CS, &["CT"]));
        attributes.insert(tags::PATIENT_NAME, attr(VR::PN, &["Wang^Fang=王^芳"]));
        attributes.insert(
            tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
            attr(VR::IS, &["2"]),
        );
        attributes.insert(tags::ROWS, attr(VR::US, &["512"]));

        let encoded = encode_match(&request, &attributes, IMPLICIT_LE, "RADSERVE").unwrap();
        let obj = InMemDicomObject::read_dataset_with_ts(
            &encoded[..],
            &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let text_of = |tag| {
            obj.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches([' ', '\0'])
                .to_owned()
        };
        assert_eq!(text_of(tags::SPECIFIC_CHARACTER_SET), "ISO_IR 192");
        assert_eq!(text_of(tags::QUERY_RETRIEVE_LEVEL), "SERIES");
        assert_eq!(text_of(tags::PATIENT_NAME), "Wang^Fang=王^芳");
        assert_eq!(text_of(tags::SERIES_INSTANCE_UID), "1.2.3.4");
        assert_eq!(text_of(tags::MODALITY), "CT");
        assert_eq!(text_of(tags::SERIES_DESCRIPTION), "");
        assert_eq!(text_of(tags::RETRIEVE_AE_TITLE), "RADSERVE");
        assert_eq!(
            obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(),
            512
        );
        // the UTF-8 bytes are on the wire
        assert!(encoded.windows(3).any(|w| w == "王".as_bytes()));
    }
}
