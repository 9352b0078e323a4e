//! Re-decoding text values that dicom-rs got wrong: multi-valued SpecificCharacterSet and
//! ISO 2022 code extensions (PS3.5 §6.1.2.5).
//!
//! dicom-rs decodes text with the first value of SpecificCharacterSet only and does no
//! escape-sequence switching, so `\ISO 2022 IR 87` (Japanese) or `\ISO 2022 IR 58`
//! (Chinese) names come out as mojibake. It also keeps only the decoded strings, so the
//! original bytes cannot be recovered from a parsed object (re-encoding the wrong string
//! is lossy). What we do instead: a second pass over the same encoded data set with
//! dicom-parser's token reader in raw mode (`ValueReadStrategy::Raw`), taking the raw bytes
//! of the text elements (PN, LO, SH, ST, LT, UT, UC) of the root and of every sequence item,
//! decoding them with [`crate::store::charset`] and replacing the values in the parsed
//! object. An item that declares its own SpecificCharacterSet is decoded with it (PS3.5
//! §7.5.3 lets an item replace the data set's). Everything downstream (C-FIND key
//! parsing, DICOM JSON) then sees correct UTF-8.
//!
//! Limits: deflated data sets are not re-read (the token reader is not given an inflater
//! here). The pass is skipped entirely when the root's character set needs no code
//! extensions, since then dicom-rs is already right (an item with ISO 2022 inside a data
//! set without it keeps dicom-rs's decoding).

use dicom_core::ops::{AttributeSelector, AttributeSelectorStep};
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntax};
use dicom_object::InMemDicomObject;
use dicom_parser::dataset::read::{DataSetReaderOptions, ValueReadStrategy};
use dicom_parser::dataset::{DataSetReader, DataToken};

use crate::store::charset::CharacterSet;

/// The VRs whose values are re-decoded.
pub const TEXT_VRS: [VR; 7] = [VR::PN, VR::LO, VR::SH, VR::ST, VR::LT, VR::UT, VR::UC];

/// Stop the raw pass after this many tokens (a bound on hostile input).
const MAX_RAW_TOKENS: usize = 100_000;

/// Whether dicom-rs's decoding is wrong for this SpecificCharacterSet (the raw value,
/// `\`-separated): more than one value, or an ISO 2022 term.
pub fn needs_redecoding(specific_character_set: &str) -> bool {
    let value = specific_character_set.trim_matches([' ', '\0']);
    value.contains('\\') || value.starts_with("ISO 2022")
}

/// One text element's raw value, and where it is.
#[derive(Debug, PartialEq)]
pub struct RawText {
    /// The sequences and items it is nested in (empty at the root).
    pub items: Vec<(Tag, u32)>,
    pub tag: Tag,
    pub vr: VR,
    pub bytes: Vec<u8>,
    /// The SpecificCharacterSet of the innermost item that declares one (raw value).
    pub item_charset: Option<String>,
}

/// A sequence being read: its tag, the index of its current item, and that item's own
/// SpecificCharacterSet if it declared one.
struct OpenSequence {
    tag: Tag,
    item: Option<u32>,
    charset: Option<String>,
}

/// The raw bytes of the text elements ([`TEXT_VRS`]) of an encoded data set (no file meta
/// group), at the root and in sequence items, up to Pixel Data.
pub fn raw_text_values(dataset: &[u8], ts: &TransferSyntax) -> Result<Vec<RawText>, String> {
    if matches!(ts.codec(), Codec::Dataset(_)) {
        return Err("deflated data set".to_owned());
    }
    let mut options = DataSetReaderOptions::default();
    options.value_read = ValueReadStrategy::Raw;
    let tokens =
        DataSetReader::new_with_ts_options(dataset, ts, options).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut open: Vec<OpenSequence> = Vec::new();
    // The element whose value comes next: its tag and VR, when it is text or a charset.
    let mut pending: Option<(Tag, VR)> = None;
    for token in tokens.take(MAX_RAW_TOKENS) {
        match token.map_err(|e| e.to_string())? {
            DataToken::ElementHeader(h) => {
                if open.is_empty() && h.tag >= tags::PIXEL_DATA {
                    break;
                }
                pending = (TEXT_VRS.contains(&h.vr) || h.tag == tags::SPECIFIC_CHARACTER_SET)
                    .then_some((h.tag, h.vr));
            }
            DataToken::PrimitiveValue(v) => {
                let Some((tag, vr)) = pending.take() else {
                    continue;
                };
                let bytes = v.to_bytes().into_owned();
                if tag == tags::SPECIFIC_CHARACTER_SET {
                    // An item's own character set; the root's is read from the object.
                    if let Some(sequence) = open.last_mut() {
                        sequence.charset = Some(String::from_utf8_lossy(&bytes).into_owned());
                    }
                    continue;
                }
                out.push(RawText {
                    items: open
                        .iter()
                        .filter_map(|s| s.item.map(|item| (s.tag, item)))
                        .collect(),
                    tag,
                    vr,
                    bytes,
                    item_charset: open.iter().rev().find_map(|s| s.charset.clone()),
                });
            }
            DataToken::SequenceStart { tag, .. } => {
                if open.is_empty() && tag >= tags::PIXEL_DATA {
                    break;
                }
                pending = None;
                open.push(OpenSequence {
                    tag,
                    item: None,
                    charset: None,
                });
            }
            DataToken::ItemStart { .. } => {
                if let Some(sequence) = open.last_mut() {
                    sequence.item = Some(sequence.item.map_or(0, |i| i + 1));
                    sequence.charset = None;
                }
            }
            DataToken::PixelSequenceStart => break,
            DataToken::SequenceEnd => {
                open.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Decodes one raw text value with `charset` into its values (split on `\` for the VRs
/// that have several), trailing padding removed.
pub fn decode_value(charset: &CharacterSet, vr: VR, bytes: &[u8]) -> Vec<String> {
    let multi = !matches!(vr, VR::ST | VR::LT | VR::UT);
    let text = charset.decode(bytes, vr == VR::PN, multi);
    let text = text.trim_end_matches([' ', '\0']);
    if multi {
        text.split('\\')
            .map(|v| v.trim_end_matches(' ').to_owned())
            .collect()
    } else {
        vec![text.to_owned()]
    }
}

/// When `obj`'s SpecificCharacterSet needs it, replaces its root-level text values with
/// the full-charset decoding of their raw bytes in `dataset` (the same data set, encoded
/// in `ts`). Returns how many elements were replaced; an unsupported character set or an
/// unreadable data set leaves `obj` as dicom-rs decoded it (logged).
pub fn redecode_text(obj: &mut InMemDicomObject, dataset: &[u8], ts: &TransferSyntax) -> usize {
    let Some(scs) = obj
        .element(tags::SPECIFIC_CHARACTER_SET)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.into_owned())
    else {
        return 0;
    };
    if !needs_redecoding(&scs) {
        return 0;
    }
    let charset = match CharacterSet::from_raw(scs.trim_matches([' ', '\0'])) {
        Ok(charset) => charset,
        Err(e) => {
            tracing::debug!(error = %e, "text kept as dicom-rs decoded it");
            return 0;
        }
    };
    let raw = match raw_text_values(dataset, ts) {
        Ok(raw) => raw,
        Err(e) => {
            tracing::debug!(error = %e, "raw text pass skipped; text kept as dicom-rs decoded it");
            return 0;
        }
    };
    let mut replaced = 0;
    for text in raw {
        let item_charset;
        let charset = match &text.item_charset {
            None => &charset,
            Some(raw) => match CharacterSet::from_raw(raw.trim_matches([' ', '\0'])) {
                Ok(own) => {
                    item_charset = own;
                    &item_charset
                }
                Err(e) => {
                    tracing::debug!(error = %e, "item text kept as dicom-rs decoded it");
                    continue;
                }
            },
        };
        let values = decode_value(charset, text.vr, &text.bytes);
        let value = if values.iter().all(String::is_empty) {
            PrimitiveValue::Empty
        } else {
            PrimitiveValue::Strs(values.into_iter().collect())
        };
        // The element is in `obj` (parsed from the same bytes): replace its value where it is.
        let steps = text
            .items
            .iter()
            .map(|&(tag, item)| AttributeSelectorStep::Nested { tag, item })
            .chain([AttributeSelectorStep::Tag(text.tag)]);
        let Some(selector) = AttributeSelector::new(steps) else {
            continue;
        };
        let mut value = Some(value);
        let updated = obj.update_value_at(selector, |v| {
            if let Some(value) = value.take() {
                *v = Value::Primitive(value);
            }
        });
        if updated.is_ok() {
            replaced += 1;
        }
    }
    replaced
}

/// Where the data set of a Part 10 file starts (after the preamble, if any, `DICM` and
/// the file meta group, whose length (0002,0000) must come first as the standard requires).
pub fn part10_dataset_offset(file: &[u8]) -> Option<usize> {
    let magic_at = if file.get(128..132) == Some(b"DICM") {
        128
    } else if file.get(..4) == Some(b"DICM") {
        0
    } else {
        return None;
    };
    let at = magic_at + 4;
    let header = file.get(at..at + 12)?;
    if header[..8] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00] {
        return None;
    }
    let group_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let start = (at + 12).checked_add(usize::try_from(group_len).ok()?)?;
    (start <= file.len()).then_some(start)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An explicit VR little endian data set written by hand from raw values (so that
    /// ISO 2022 bytes go in as they are), sorted by tag, values padded to even length.
    pub fn explicit_le(elements: &[(Tag, VR, &[u8])]) -> Vec<u8> {
        let mut sorted: Vec<&(Tag, VR, &[u8])> = elements.iter().collect();
        sorted.sort_by_key(|(tag, _, _)| *tag);
        let mut out = Vec::new();
        for (tag, vr, value) in sorted {
            let mut value = value.to_vec();
            if value.len() % 2 == 1 {
                value.push(if *vr == VR::UI || *vr == VR::OB {
                    0
                } else {
                    b' '
                });
            }
            out.extend_from_slice(&tag.group().to_le_bytes());
            out.extend_from_slice(&tag.element().to_le_bytes());
            out.extend_from_slice(vr.to_string().as_bytes());
            if matches!(
                vr,
                VR::OB | VR::OW | VR::SQ | VR::UN | VR::UT | VR::UC | VR::UR
            ) {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            } else {
                out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            }
            out.extend_from_slice(&value);
        }
        out
    }

    /// PS3.5 H.3.1: `Yamada^Tarou=山田^太郎=やまだ^たろう` in `\ISO 2022 IR 87`, each
    /// component switching to JIS X 0208 and back to ASCII.
    pub fn yamada_iso2022() -> Vec<u8> {
        let jis = |s: &str| encoding_rs::ISO_2022_JP.encode(s).0.into_owned();
        let mut v = b"Yamada^Tarou=".to_vec();
        v.extend(jis("山田"));
        v.push(b'^');
        v.extend(jis("太郎"));
        v.push(b'=');
        v.extend(jis("やまだ"));
        v.push(b'^');
        v.extend(jis("たろう"));
        v
    }

    /// PS3.5 K.2: `Zhang^XiaoDong=章^小东=` in `\ISO 2022 IR 58` (GB 2312 in G1).
    pub fn zhang_iso2022() -> Vec<u8> {
        let gb = |s: &str| encoding_rs::GBK.encode(s).0.into_owned();
        let mut v = b"Zhang^XiaoDong=\x1b$)A".to_vec();
        v.extend(gb("章"));
        v.extend_from_slice(b"^\x1b$)A");
        v.extend(gb("小东"));
        v.push(b'=');
        v
    }

    #[test]
    fn the_example_bytes_are_the_standard_ones() {
        // PS3.5 H.3.1, first ideographic component: ESC $ B 3 3 ED 4 ESC ( B
        let y = yamada_iso2022();
        assert!(
            y.windows(11).any(|w| w == b"\x1b$B;3ED\x1b(B^"),
            "{:?}",
            String::from_utf8_lossy(&y)
        );
        // PS3.5 K.2: 章 is D5 C2 in GB 2312
        assert!(zhang_iso2022().windows(6).any(|w| w == b"\x1b$)A\xd5\xc2"));
    }

    #[test]
    fn redecodes_iso_2022_names() {
        use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
        let ts = EXPLICIT_VR_LITTLE_ENDIAN.erased();
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
                (tags::PATIENT_NAME, VR::PN, &name),
                (tags::STUDY_DESCRIPTION, VR::LO, b"CT\\MR"),
                (tags::MODALITY, VR::CS, b"CT"),
            ]);
            let mut obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts).unwrap();
            assert_eq!(redecode_text(&mut obj, &bytes, &ts), 2);
            let name = obj.element(tags::PATIENT_NAME).unwrap().to_str().unwrap();
            assert_eq!(name, expected);
            let values = obj
                .element(tags::STUDY_DESCRIPTION)
                .unwrap()
                .to_multi_str()
                .unwrap()
                .into_owned();
            assert_eq!(values, ["CT", "MR"]);
        }
    }

    /// A sequence of undefined length whose items are the given encoded data sets.
    pub fn sequence(tag: Tag, items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.group().to_le_bytes());
        out.extend_from_slice(&tag.element().to_le_bytes());
        out.extend_from_slice(b"SQ\0\0\xff\xff\xff\xff");
        for item in items {
            out.extend_from_slice(b"\xfe\xff\x00\xe0\xff\xff\xff\xff");
            out.extend_from_slice(item);
            out.extend_from_slice(b"\xfe\xff\x0d\xe0\0\0\0\0");
        }
        out.extend_from_slice(b"\xfe\xff\xdd\xe0\0\0\0\0");
        out
    }

    #[test]
    fn redecodes_text_in_sequence_items_with_the_item_s_own_charset() {
        use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
        let ts = EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let gb = |s: &str| encoding_rs::GBK.encode(s).0.into_owned();
        // G1 switched to GB 2312, then ASCII (PS3.5 K.2's form).
        let mut chest = b"\x1b$)A".to_vec();
        chest.extend(gb("胸部"));
        chest.extend_from_slice(b" CT");
        let description = tags::REQUESTED_PROCEDURE_DESCRIPTION;
        let mut bytes = explicit_le(&[
            (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"\\ISO 2022 IR 58"),
            (tags::PATIENT_NAME, VR::PN, &zhang_iso2022()),
        ]);
        bytes.extend(sequence(
            tags::REQUEST_ATTRIBUTES_SEQUENCE,
            &[
                explicit_le(&[(description, VR::LO, &chest)]),
                // This item declares its own character set.
                explicit_le(&[
                    (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"ISO_IR 192"),
                    (description, VR::LO, "肺部 CT".as_bytes()),
                ]),
            ],
        ));
        let text = raw_text_values(&bytes, &ts).unwrap();
        assert_eq!(
            text.iter()
                .map(|t| (t.items.clone(), t.tag))
                .collect::<Vec<_>>(),
            [
                (vec![], tags::PATIENT_NAME),
                (vec![(tags::REQUEST_ATTRIBUTES_SEQUENCE, 0)], description),
                (vec![(tags::REQUEST_ATTRIBUTES_SEQUENCE, 1)], description),
            ]
        );
        assert_eq!(text[2].item_charset.as_deref(), Some("ISO_IR 192"));

        let mut obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts).unwrap();
        assert_eq!(redecode_text(&mut obj, &bytes, &ts), 3);
        let at = |item: u32| {
            obj.value_at((tags::REQUEST_ATTRIBUTES_SEQUENCE, item, description))
                .unwrap()
                .to_str()
                .unwrap()
                .into_owned()
        };
        assert_eq!(at(0), "胸部 CT");
        assert_eq!(at(1), "肺部 CT");
        let name = obj.element(tags::PATIENT_NAME).unwrap().to_str().unwrap();
        assert_eq!(name, "Zhang^XiaoDong=章^小东=");
    }

    #[test]
    fn leaves_single_charsets_to_dicom_rs() {
        assert!(!needs_redecoding("ISO_IR 192"));
        assert!(!needs_redecoding("ISO_IR 100 "));
        assert!(needs_redecoding("\\ISO 2022 IR 87"));
        assert!(needs_redecoding("ISO 2022 IR 6\\ISO 2022 IR 149"));
        assert!(needs_redecoding("ISO 2022 IR 13"));
    }

    #[test]
    fn finds_the_data_set_of_a_part10_file() {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00, 4, 0, 0, 0]);
        file.extend_from_slice(&[1, 2, 3, 4, 9]);
        assert_eq!(part10_dataset_offset(&file), Some(148));
        assert_eq!(part10_dataset_offset(&file[128..]), Some(20));
        // a group length past the end, and no magic
        file[140] = 0xFF;
        assert_eq!(part10_dataset_offset(&file), None);
        assert_eq!(part10_dataset_offset(b"garbage"), None);
    }
}
