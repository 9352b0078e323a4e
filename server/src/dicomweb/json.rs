//! The DICOM JSON model (PS3.18 F.2): query results, instance metadata, STOW responses.
//!
//! - [`attributes_to_json`]: a store [`AttributeSet`] (UTF-8 text) to a DICOM JSON object.
//! - [`dataset_to_json`]: a parsed dataset to DICOM JSON with `dicom-json` for each element,
//!   except that pixel data and every other top-level binary value (OB, OD, OF, OL, OV, OW,
//!   UN) become a `BulkDataURI` — `dicom-json` 0.10 only writes `InlineBinary` and drops
//!   encapsulated pixel data silently. An element `dicom-json` cannot serialise (a DS that
//!   is not a number, say) is written with its VR and no value rather than failing the
//!   whole answer.
//! - [`redecode_part10_text`]: fixes text dicom-rs decoded with only the first value of a
//!   multi-valued / ISO 2022 SpecificCharacterSet, before [`dataset_to_json`].

use dicom_core::header::Header;
use dicom_core::value::Value as DicomValue;
use dicom_core::{Tag, VR};
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use serde_json::{Map, Value, json};

use crate::dimse::raw_text;
use crate::store::{Attribute, AttributeSet};

/// `GGGGEEEE`, upper-case hex: the key of an attribute in DICOM JSON and the `{tag}` of a
/// bulkdata URL.
pub fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// Parses `GGGGEEEE` (8 hex digits).
pub fn parse_tag_key(s: &str) -> Option<Tag> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let group = u16::from_str_radix(&s[..4], 16).ok()?;
    let element = u16::from_str_radix(&s[4..], 16).ok()?;
    Some(Tag(group, element))
}

/// One attribute in DICOM JSON: `{"vr": .., "Value": [..]}` (no `Value` when empty).
pub fn attribute_to_json(attr: &Attribute) -> Value {
    let mut out = Map::new();
    out.insert("vr".into(), Value::String(attr.vr.to_string().to_owned()));
    let values: Vec<Value> = attr
        .values
        .iter()
        .map(|v| value_to_json(attr.vr, v))
        .collect();
    if !values.is_empty() && !values.iter().all(Value::is_null) {
        out.insert("Value".into(), Value::Array(values));
    }
    Value::Object(out)
}

/// One value by VR: numbers for numeric VRs, `{"Alphabetic", "Ideographic", "Phonetic"}`
/// for PN, strings otherwise; an empty or unparseable value is `null`.
fn value_to_json(vr: VR, value: &str) -> Value {
    let text = value.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Value::Null;
    }
    match vr {
        VR::PN => {
            let mut groups = Map::new();
            for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"]
                .into_iter()
                .zip(text.split('='))
            {
                if !group.is_empty() {
                    groups.insert(name.into(), Value::String(group.to_owned()));
                }
            }
            Value::Object(groups)
        }
        VR::IS | VR::SS | VR::US | VR::SL | VR::UL | VR::SV | VR::UV => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<f64>().map(Value::from))
            .unwrap_or(Value::Null),
        VR::DS | VR::FL | VR::FD => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| {
                // Integral values as integers: "1" reads better than "1.0".
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    Value::from(f as i64)
                } else {
                    Value::from(f)
                }
            })
            .unwrap_or(Value::Null),
        _ => Value::String(text.to_owned()),
    }
}

/// A store attribute set as one DICOM JSON object (keys in tag order), plus any `extra`
/// attributes (RetrieveURL, ...).
pub fn attributes_to_json(set: &AttributeSet, extra: &[(Tag, Value)]) -> Value {
    let mut entries: Vec<(Tag, Value)> = set
        .iter()
        .map(|(tag, attr)| (*tag, attribute_to_json(attr)))
        .collect();
    for (tag, value) in extra {
        entries.retain(|(t, _)| t != tag);
        entries.push((*tag, value.clone()));
    }
    entries.sort_by_key(|(tag, _)| *tag);
    Value::Object(entries.into_iter().map(|(t, v)| (tag_key(t), v)).collect())
}

/// A UR (RetrieveURL) attribute value.
pub fn url_attribute(url: &str) -> Value {
    json!({ "vr": "UR", "Value": [url] })
}

/// Whether an element's value goes out as a BulkDataURI.
fn is_bulk(vr: VR, value: &DicomValue<InMemDicomObject, dicom_object::mem::InMemFragment>) -> bool {
    matches!(value, DicomValue::PixelSequence(_))
        || matches!(
            vr,
            VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
        )
}

/// A dataset (without its file meta group) as DICOM JSON, binary values replaced by
/// `{"vr": .., "BulkDataURI": "<instance_url>/bulkdata/<tag>"}`.
pub fn dataset_to_json(obj: &InMemDicomObject, instance_url: &str) -> Value {
    let mut out = Map::new();
    // InMemDicomObject iterates in tag order.
    for elem in obj.iter() {
        let tag = elem.tag();
        let vr = elem.vr();
        let value = if is_bulk(vr, elem.value()) {
            json!({ "vr": vr.to_string(), "BulkDataURI": format!("{instance_url}/bulkdata/{}", tag_key(tag)) })
        } else {
            dicom_json::to_value(elem).unwrap_or_else(|_| json!({ "vr": vr.to_string() }))
        };
        out.insert(tag_key(tag), value);
    }
    Value::Object(out)
}

/// Re-decodes the text (root and sequence items) of a parsed Part 10 file (`file`: its
/// bytes) when its SpecificCharacterSet is multi-valued or uses ISO 2022 code extensions,
/// which dicom-rs decodes wrongly: the raw bytes are read again and decoded with
/// [`crate::store::charset`] (see [`crate::dimse::raw_text`] for how and the limits).
/// Returns how many elements were replaced.
pub fn redecode_part10_text(obj: &mut DefaultDicomObject, file: &[u8]) -> usize {
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_owned();
    let Some(ts) = TransferSyntaxRegistry.get(&ts_uid) else {
        return 0;
    };
    let Some(start) = raw_text::part10_dataset_offset(file) else {
        return 0;
    };
    raw_text::redecode_text(obj, &file[start..], ts)
}

/// Tags of the STOW-RS response (PS3.18 Table 10.5.3-3).
pub mod stow_tags {
    use dicom_core::Tag;
    pub const RETRIEVE_URL: Tag = Tag(0x0008, 0x1190);
    pub const FAILED_SOP_SEQUENCE: Tag = Tag(0x0008, 0x1198);
    pub const REFERENCED_SOP_SEQUENCE: Tag = Tag(0x0008, 0x1199);
    pub const REFERENCED_SOP_CLASS_UID: Tag = Tag(0x0008, 0x1150);
    pub const REFERENCED_SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x1155);
    pub const FAILURE_REASON: Tag = Tag(0x0008, 0x1197);
    pub const WARNING_REASON: Tag = Tag(0x0008, 0x1196);
}

/// One item of ReferencedSOPSequence or FailedSOPSequence.
#[derive(Debug, Clone, PartialEq)]
pub struct StowItem {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub retrieve_url: Option<String>,
    /// FailureReason (failed items) — 0xA700, 0xA900, 0xC000, 0x0111.
    pub failure_reason: Option<u16>,
    /// WarningReason (stored items with a warning) — 0xB000 family.
    pub warning_reason: Option<u16>,
}

impl StowItem {
    fn to_json(&self) -> Value {
        use stow_tags::*;
        let mut m = Map::new();
        let uid = |v: &Option<String>| match v {
            Some(v) => json!({ "vr": "UI", "Value": [v] }),
            None => json!({ "vr": "UI" }),
        };
        m.insert(tag_key(REFERENCED_SOP_CLASS_UID), uid(&self.sop_class_uid));
        m.insert(
            tag_key(REFERENCED_SOP_INSTANCE_UID),
            uid(&self.sop_instance_uid),
        );
        if let Some(w) = self.warning_reason {
            m.insert(tag_key(WARNING_REASON), json!({ "vr": "US", "Value": [w] }));
        }
        if let Some(f) = self.failure_reason {
            m.insert(tag_key(FAILURE_REASON), json!({ "vr": "US", "Value": [f] }));
        }
        if let Some(url) = &self.retrieve_url {
            m.insert(tag_key(RETRIEVE_URL), url_attribute(url));
        }
        Value::Object(m)
    }
}

/// The STOW-RS response body: RetrieveURL of the study (when one study was addressed),
/// FailedSOPSequence and ReferencedSOPSequence (each only when not empty).
pub fn stow_response(
    study_url: Option<&str>,
    referenced: &[StowItem],
    failed: &[StowItem],
) -> Value {
    use stow_tags::*;
    let mut m = Map::new();
    if let Some(url) = study_url {
        m.insert(tag_key(RETRIEVE_URL), url_attribute(url));
    }
    let seq = |items: &[StowItem]| json!({ "vr": "SQ", "Value": items.iter().map(StowItem::to_json).collect::<Vec<_>>() });
    if !failed.is_empty() {
        m.insert(tag_key(FAILED_SOP_SEQUENCE), seq(failed));
    }
    if !referenced.is_empty() {
        m.insert(tag_key(REFERENCED_SOP_SEQUENCE), seq(referenced));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, dicom_value};
    use dicom_dictionary_std::tags;

    fn attr(vr: VR, values: &[&str]) -> Attribute {
        Attribute {
            vr,
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tag_keys_round_trip() {
        assert_eq!(tag_key(tags::PIXEL_DATA), "7FE00010");
        assert_eq!(parse_tag_key("7fe00010"), Some(tags::PIXEL_DATA));
        assert_eq!(parse_tag_key("7FE0001"), None);
        assert_eq!(parse_tag_key("7FE0001G"), None);
    }

    #[test]
    fn attribute_sets_follow_the_json_model() {
        let mut set = AttributeSet::new();
        set.insert(tags::PATIENT_NAME, attr(VR::PN, &["Wang^Xiaodong=王^小东"]));
        set.insert(tags::STUDY_DATE, attr(VR::DA, &["20240131"]));
        set.insert(
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            attr(VR::IS, &["10"]),
        );
        set.insert(tags::MODALITIES_IN_STUDY, attr(VR::CS, &["CT", "SR"]));
        set.insert(tags::ACCESSION_NUMBER, attr(VR::SH, &[]));
        set.insert(tags::SLICE_THICKNESS, attr(VR::DS, &["2.5"]));
        let v = attributes_to_json(
            &set,
            &[(stow_tags::RETRIEVE_URL, url_attribute("http://x/studies/1"))],
        );
        assert_eq!(
            v["00100010"],
            json!({"vr": "PN", "Value": [{"Alphabetic": "Wang^Xiaodong", "Ideographic": "王^小东"}]})
        );
        assert_eq!(v["00080020"], json!({"vr": "DA", "Value": ["20240131"]}));
        assert_eq!(v["00201208"], json!({"vr": "IS", "Value": [10]}));
        assert_eq!(v["00080061"], json!({"vr": "CS", "Value": ["CT", "SR"]}));
        assert_eq!(v["00080050"], json!({"vr": "SH"}));
        assert_eq!(v["00180050"], json!({"vr": "DS", "Value": [2.5]}));
        assert_eq!(v["00081190"]["Value"][0], "http://x/studies/1");
        // Keys are in tag order.
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn datasets_get_bulk_data_uris_instead_of_inline_binary() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::PATIENT_ID,
            VR::LO,
            PrimitiveValue::from("P1"),
        ));
        obj.put(DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [2])));
        obj.put(DataElement::new(
            tags::SLICE_THICKNESS,
            VR::DS,
            PrimitiveValue::from("not a number"),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            dicom_value!(U16, [1, 2, 3, 4]),
        ));
        let v = dataset_to_json(&obj, "http://h/dicomweb/studies/1/series/2/instances/3");
        assert_eq!(v["00100020"], json!({"vr": "LO", "Value": ["P1"]}));
        assert_eq!(v["00280010"], json!({"vr": "US", "Value": [2]}));
        assert_eq!(v["00180050"]["vr"], "DS");
        assert_eq!(
            v["7FE00010"],
            json!({"vr": "OW", "BulkDataURI": "http://h/dicomweb/studies/1/series/2/instances/3/bulkdata/7FE00010"})
        );
        assert!(v["7FE00010"].get("InlineBinary").is_none());
    }

    #[test]
    fn stow_responses_list_both_sequences() {
        let ok = StowItem {
            sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            sop_instance_uid: Some("1.2.3".into()),
            retrieve_url: Some("http://h/dicomweb/studies/1/series/2/instances/1.2.3".into()),
            failure_reason: None,
            warning_reason: None,
        };
        let bad = StowItem {
            sop_class_uid: None,
            sop_instance_uid: None,
            retrieve_url: None,
            failure_reason: Some(0xC000),
            warning_reason: None,
        };
        let v = stow_response(None, &[ok], &[bad]);
        assert_eq!(v["00081199"]["Value"][0]["00081155"]["Value"][0], "1.2.3");
        assert_eq!(v["00081198"]["Value"][0]["00081197"]["Value"][0], 0xC000);
        assert!(v.get("00081190").is_none());
        let empty = stow_response(Some("u"), &[], &[]);
        assert!(empty.get("00081198").is_none());
        assert_eq!(empty["00081190"]["Value"][0], "u");
    }

    /// A Part 10 file (preamble, meta group, explicit VR LE data set written from raw bytes).
    fn part10(dataset: &[u8]) -> Vec<u8> {
        let meta = dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
            .media_storage_sop_instance_uid("1.2.826.0.5.1")
            .transfer_syntax("1.2.840.10008.1.2.1")
            .build()
            .unwrap();
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        meta.write(&mut file).unwrap();
        file.extend_from_slice(dataset);
        file
    }

    #[test]
    fn metadata_of_iso_2022_files_is_correct_utf8() {
        use crate::dimse::raw_text::tests::{explicit_le, sequence, yamada_iso2022, zhang_iso2022};
        let yamada = yamada_iso2022();
        let zhang = zhang_iso2022();
        let cases = [
            (
                &b"\\ISO 2022 IR 87"[..],
                &yamada,
                json!({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}),
            ),
            (
                &b"\\ISO 2022 IR 58"[..],
                &zhang,
                json!({"Alphabetic": "Zhang^XiaoDong", "Ideographic": "章^小东"}),
            ),
        ];
        for (scs, name, expected) in cases {
            let mut data_set = explicit_le(&[
                (tags::SPECIFIC_CHARACTER_SET, VR::CS, scs),
                (tags::SOP_CLASS_UID, VR::UI, b"1.2.840.10008.5.1.4.1.1.7"),
                (tags::SOP_INSTANCE_UID, VR::UI, b"1.2.826.0.5.1"),
                (tags::PATIENT_NAME, VR::PN, name),
                (tags::STUDY_DESCRIPTION, VR::LO, name),
            ]);
            // The same name inside a sequence item.
            data_set.extend(sequence(
                tags::OTHER_PATIENT_I_DS_SEQUENCE,
                &[explicit_le(&[(tags::PATIENT_NAME, VR::PN, name)])],
            ));
            let file = part10(&data_set);
            let mut obj = crate::dicomweb::wado::parse_part10(&file, false).unwrap();
            assert_eq!(redecode_part10_text(&mut obj, &file), 3);
            let out = dataset_to_json(&obj, "http://x/i");
            assert_eq!(out["00100010"]["Value"][0], expected, "{out}");
            assert_eq!(out["00100010"]["vr"], "PN");
            let item = &out["00101002"]["Value"][0];
            assert_eq!(item["00100010"]["Value"][0], expected, "{out}");
            // LO keeps the whole value, decoded
            let lo = out["00081030"]["Value"][0].as_str().unwrap();
            assert!(
                lo.contains(expected["Ideographic"].as_str().unwrap()),
                "{lo}"
            );
        }
    }

    #[test]
    fn single_charset_files_are_left_to_dicom_rs() {
        use crate::dimse::raw_text::tests::explicit_le;
        let file = part10(&explicit_le(&[
            (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"ISO_IR 192"),
            (tags::PATIENT_NAME, VR::PN, "Wang^Fang=王^芳".as_bytes()),
        ]));
        let mut obj = crate::dicomweb::wado::parse_part10(&file, false).unwrap();
        assert_eq!(redecode_part10_text(&mut obj, &file), 0);
        let out = dataset_to_json(&obj, "http://x/i");
        assert_eq!(out["00100010"]["Value"][0]["Ideographic"], "王^芳");
    }
}
