//! Findings out as HL7 v2.5.1 ORU^R01, for sites whose EMR takes results by HL7 v2 rather
//! than FHIR.
//!
//! One message per result (one job): PID (the EMR patient's identifiers when the study is
//! linked, else the DICOM Patient ID), ORC and OBR with the order's placer and filler
//! numbers and the accession number in OBR-18 (as IHE RAD-28 places it), then per finding
//! an OBX with the probability (NM, its code in OBX-3, `A`/`N` in OBX-8, the model in
//! OBX-17) followed by its measurements sharing the finding's OBX-4 sub-id, and last a TX
//! conclusion and RP pointers to the SR and SEG. Results are preliminary (`P`): the model's,
//! not a radiologist's. A result sent again because the study's EMR link changed is a
//! correction (`C`).

use super::fhir_out::{JobResult, StudyContext};
use super::hl7::escape;
use super::join::is_oid;
use super::{EmrOrder, EmrPatient};
use crate::results::Measurement;

/// Who sends and who receives (MSH-3..6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parties {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
}

/// What one ORU^R01 is made of.
#[derive(Debug, Clone)]
pub struct OruInput<'a> {
    pub study: &'a StudyContext,
    pub result: &'a JobResult,
    /// The EMR Patient and ServiceRequest of the link, when linked and stored.
    pub patient: Option<&'a EmrPatient>,
    pub order: Option<&'a EmrOrder>,
    /// MSH-10: stable across retries of the same content, so a receiver can drop repeats.
    pub control_id: &'a str,
    /// 1 for the first version of the result; above, a correction.
    pub revision: i64,
    /// MSH-7 and OBR-22, `YYYYMMDDHHMMSS+ZZZZ`.
    pub sent_at: &'a str,
}

/// A DICOM coding scheme designator as an HL7 coding system (table 0396 names where they
/// exist).
fn coding_system(scheme: &str) -> String {
    match scheme.trim().to_ascii_uppercase().as_str() {
        "SCT" | "SNM3" | "SRT" => "SCT".into(),
        "LN" => "LN".into(),
        "UCUM" => "UCUM".into(),
        "DCM" => "DCM".into(),
        other => escape(other),
    }
}

/// A CWE `code^text^system`.
fn cwe(scheme: &str, value: &str, meaning: &str) -> String {
    format!(
        "{}^{}^{}",
        cwe_identifier(value),
        escape(meaning),
        coding_system(scheme)
    )
}

/// A number as HL7 NM: no exponent, no trailing noise.
fn nm(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.into()
    }
}

/// FHIR gender to HL7 table 0001.
fn sex(gender: Option<&str>, dicom_sex: &str) -> &'static str {
    match gender.map(str::to_ascii_lowercase).as_deref() {
        Some("male") => "M",
        Some("female") => "F",
        Some("other") => "O",
        Some("unknown") => "U",
        _ => match dicom_sex.trim() {
            "M" => "M",
            "F" => "F",
            "O" => "O",
            _ => "",
        },
    }
}

/// An identifier's system as HL7's (namespace, universal id, universal id type): an OID
/// as `ISO`, another URI as `URI` (HD and EI carry it that way).
fn assigner(system: Option<&str>) -> (String, String, &'static str) {
    match system.map(str::trim).filter(|s| !s.is_empty()) {
        None => (String::new(), String::new(), ""),
        Some(s) => match s.strip_prefix("urn:oid:") {
            Some(oid) => (String::new(), oid.to_owned(), "ISO"),
            None => (String::new(), s.to_owned(), "URI"),
        },
    }
}

/// An order identifier of the given v2-0203 type (`PLAC`, `FILL`), as EI
/// `id^namespace^universal id^type`.
fn order_number(order: Option<&EmrOrder>, type_code: &str) -> String {
    let Some(order) = order else {
        return String::new();
    };
    order
        .identifiers
        .iter()
        .find(|i| i.type_code.as_deref() == Some(type_code))
        .map(|i| {
            let (namespace, universal, kind) = assigner(i.system.as_deref());
            if universal.is_empty() {
                escape(&i.value)
            } else {
                format!(
                    "{}^{}^{}^{kind}",
                    escape(&i.value),
                    escape(&namespace),
                    escape(&universal)
                )
            }
        })
        .unwrap_or_default()
}

/// PID-3: the EMR patient's identifiers (CX `id^^^assigning authority^type`, repeated),
/// else the DICOM Patient ID with its issuer.
fn patient_identifiers(input: &OruInput<'_>) -> String {
    if let Some(patient) = input.patient {
        let ids: Vec<String> = patient
            .identifiers
            .iter()
            .filter(|i| !i.value.trim().is_empty())
            .map(|i| {
                let (namespace, universal, kind) = assigner(i.system.as_deref());
                let authority = if universal.is_empty() {
                    String::new()
                } else {
                    format!("{}&{}&{kind}", escape(&namespace), escape(&universal))
                };
                format!(
                    "{}^^^{authority}^{}",
                    escape(i.value.trim()),
                    escape(i.type_code.as_deref().unwrap_or("MR"))
                )
            })
            .collect();
        if !ids.is_empty() {
            return ids.join("~");
        }
    }
    // The DICOM issuer as the assigning authority's universal id (HD-2, long enough where
    // the namespace id HD-1 stops at 20 characters): an OID as ISO, a URI as URI, a local
    // name as L.
    let facts = &input.study.facts;
    let issuer = facts.issuer_of_patient_id.trim();
    let authority = if issuer.is_empty() {
        String::new()
    } else {
        let kind = if is_oid(issuer) {
            "ISO"
        } else if issuer.contains(':') {
            "URI"
        } else {
            "L"
        };
        format!("&{}&{kind}", escape(issuer))
    };
    format!("{}^^^{authority}^MR", escape(facts.patient_id.trim()))
}

/// A CWE identifier (CWE-1): HL7 v2.5.1 allows 20 characters; the full text goes in CWE-2.
fn cwe_identifier(text: &str) -> String {
    escape(&text.chars().take(20).collect::<String>())
}

/// PID-5: the EMR name, else the DICOM name's alphabetic group.
fn patient_name(input: &OruInput<'_>) -> String {
    if let Some(name) = input.patient.and_then(|p| p.names.first()) {
        return format!(
            "{}^{}",
            escape(name.family.as_deref().unwrap_or("")),
            escape(&name.given.join(" "))
        );
    }
    let alphabetic = input
        .study
        .facts
        .patient_name
        .split('=')
        .next()
        .unwrap_or("");
    alphabetic
        .split('^')
        .take(5)
        .map(escape)
        .collect::<Vec<_>>()
        .join("^")
}

/// The ORU^R01 message, segments ending in `\r` (UTF-8, declared in MSH-18).
pub fn oru_r01(input: &OruInput<'_>, parties: &Parties) -> String {
    let facts = &input.study.facts;
    let job = &input.result.job;
    let status = if input.revision > 1 { "C" } else { "P" };
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||ORU^R01^ORU_R01|{}|P|2.5.1||||||UNICODE UTF-8\r",
        escape(&parties.sending_application),
        escape(&parties.sending_facility),
        escape(&parties.receiving_application),
        escape(&parties.receiving_facility),
        input.sent_at,
        escape(input.control_id),
    );
    let birth = input
        .patient
        .and_then(|p| p.birth_date.as_deref())
        .map(|d| d.replace('-', ""))
        .unwrap_or_else(|| facts.patient_birth_date.trim().to_owned());
    out.push_str(&format!(
        "PID|1||{}||{}||{}|{}\r",
        patient_identifiers(input),
        patient_name(input),
        escape(&birth),
        sex(
            input.patient.and_then(|p| p.gender.as_deref()),
            &facts.patient_sex
        ),
    ));
    let placer = order_number(input.order, "PLAC");
    let filler = order_number(input.order, "FILL");
    out.push_str(&format!("ORC|RE|{placer}|{filler}||CM\r"));
    let service = match input.order.and_then(|o| o.code.as_deref().map(|c| (o, c))) {
        Some((order, code)) => format!(
            "{}^{}^{}",
            cwe_identifier(code),
            escape(order.code_display.as_deref().unwrap_or("")),
            match order.code_system.as_deref() {
                Some("http://loinc.org") => "LN".to_string(),
                Some(s) if s.contains("radlex") => "RADLEX".to_string(),
                Some(s) => escape(s.rsplit([':', '/']).next().unwrap_or(s)),
                None => String::new(),
            }
        ),
        None => "18748-4^Diagnostic imaging study^LN".into(),
    };
    let observed = facts.study_date.trim();
    out.push_str(&format!(
        "OBR|1|{placer}|{filler}|{service}|||{}|||||||||||{}||||{}|||{status}\r",
        escape(observed),
        escape(facts.accession_number.trim()),
        input.sent_at,
    ));

    let mut set_id = 0usize;
    let mut obx = |value_type: &str, identifier: String, sub: &str, value: String, rest: &str| {
        set_id += 1;
        out.push_str(&format!(
            "OBX|{set_id}|{value_type}|{identifier}|{sub}|{value}{rest}\r"
        ));
    };
    let mut positives = Vec::new();
    let mut model = job.model.clone();
    let findings = input
        .result
        .findings
        .iter()
        .filter(|f| f.job_id == job.id && !f.superseded);
    for (n, finding) in findings.enumerate() {
        let f = &finding.finding;
        let sub = (n + 1).to_string();
        model = format!("{} {}", finding.model, finding.model_version);
        let method = format!(
            "{}^{}^99RADSERVE",
            cwe_identifier(&finding.model),
            escape(&format!(
                "AI model {} {}",
                finding.model, finding.model_version
            ))
        );
        let flag = if f.positive { "A" } else { "N" };
        if f.positive {
            positives.push(format!("{} ({:.2})", f.code_meaning, f.probability));
        }
        // OBX-6 units, OBX-8 flag, OBX-11 status, OBX-17 method.
        obx(
            "NM",
            cwe(&f.code_scheme, &f.code_value, &f.code_meaning),
            &sub,
            nm(f.probability),
            &format!("|1^probability^UCUM||{flag}|||{status}||||||{method}"),
        );
        // Entry by entry: one malformed measurement does not hide the others.
        let measurements: Vec<Measurement> = f
            .measurements
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|m| serde_json::from_value(m.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        for m in measurements.iter().filter(|m| m.value.is_finite()) {
            obx(
                "NM",
                cwe(&m.concept.scheme, &m.concept.value, &m.concept.meaning),
                &sub,
                nm(m.value),
                &format!(
                    "|{}|||||{status}||||||{method}",
                    cwe(&m.unit.scheme, &m.unit.value, &m.unit.meaning)
                ),
            );
        }
    }
    let conclusion = super::fhir_out::conclusion(&model, &positives);
    obx(
        "TX",
        "18782-3^Radiology Study observation (narrative)^LN".into(),
        "",
        escape(&conclusion),
        &format!("||||||{status}"),
    );
    for (instance, title) in [
        (&input.result.sr, "DICOM SR"),
        (&input.result.seg, "DICOM SEG"),
    ] {
        if let Some(instance) = instance {
            let url = super::fhir_out::wado_path(&facts.study_instance_uid, instance);
            obx(
                "RP",
                format!("{}^{}^99RADSERVE", escape(title), escape(title)),
                "",
                format!("{}^^application^dicom", escape(&url)),
                &format!("||||||{status}"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emr::Identifier;
    use crate::emr::fhir_out::tests::{classification, job, linked, nodule, unlinked};
    use crate::emr::fhir_out::{InstanceRef, JobResult};
    use crate::emr::hl7;

    fn parties() -> Parties {
        Parties {
            sending_application: "RADSERVE".into(),
            sending_facility: "IMG".into(),
            receiving_application: "RIS".into(),
            receiving_facility: "HOSP|1".into(),
        }
    }

    fn order() -> EmrOrder {
        EmrOrder {
            id: "sr-9".into(),
            identifiers: vec![
                Identifier {
                    system: Some("urn:oid:1.2.3.4".into()),
                    value: "ORD-1".into(),
                    type_code: Some("PLAC".into()),
                },
                Identifier {
                    system: Some("http://ris.example/filler".into()),
                    value: "F^9".into(),
                    type_code: Some("FILL".into()),
                },
            ],
            patient: Some("pat-1".into()),
            encounter: None,
            status: "active".into(),
            code_system: Some("http://loinc.org".into()),
            code: Some("36643-5".into()),
            code_display: Some("XR Chest 2V".into()),
            occurrence: None,
            authored_on: None,
            requester: None,
            reason: None,
        }
    }

    fn patient() -> EmrPatient {
        EmrPatient {
            id: "pat-1".into(),
            identifiers: vec![Identifier {
                system: Some("urn:oid:2.25.77".into()),
                value: "MRN-77".into(),
                type_code: Some("MR".into()),
            }],
            names: vec![crate::emr::HumanName {
                family: Some("Doe".into()),
                given: vec!["Jane".into()],
                text: None,
            }],
            birth_date: Some("1970-01-01".into()),
            gender: Some("female".into()),
        }
    }

    #[test]
    fn a_linked_result_carries_patient_order_accession_and_one_obx_group_per_finding() {
        let j = job(7, "1.2.3", "ct-lung-nodule", 1);
        let mut findings = vec![nodule(&j)];
        findings.extend(classification(&j));
        let result = JobResult {
            job: j,
            findings,
            sr: Some(InstanceRef {
                series_instance_uid: "2.25.8".into(),
                sop_instance_uid: "2.25.71".into(),
            }),
            seg: None,
        };
        let (study, order, patient) = (linked(), order(), patient());
        let text = oru_r01(
            &OruInput {
                study: &study,
                result: &result,
                patient: Some(&patient),
                order: Some(&order),
                control_id: "RS1R1",
                revision: 1,
                sent_at: "20261123120000+0000",
            },
            &parties(),
        );
        let message = hl7::parse(text.as_bytes(), 1 << 20).expect("our own parser reads it");
        let header = message.header();
        assert_eq!(
            (header.message_type.as_str(), header.trigger.as_str()),
            ("ORU", "R01")
        );
        assert_eq!(header.control_id, "RS1R1");
        assert_eq!(header.version, "2.5.1");
        let pid = message.segment("PID").unwrap();
        assert_eq!(message.value(pid, 3, 1), "MRN-77");
        assert_eq!(message.component(pid.raw(3), 4), "&2.25.77&ISO");
        assert_eq!(message.value(pid, 5, 1), "Doe");
        assert_eq!(message.value(pid, 7, 1), "19700101");
        assert_eq!(message.value(pid, 8, 1), "F");
        let orc = message.segment("ORC").unwrap();
        assert_eq!(message.value(orc, 2, 1), "ORD-1");
        assert_eq!(message.value(orc, 2, 3), "1.2.3.4");
        // An escaped delimiter in the data comes back as the character.
        assert_eq!(message.value(orc, 3, 1), "F^9");
        let obr = message.segment("OBR").unwrap();
        assert_eq!(message.value(obr, 2, 1), "ORD-1");
        assert_eq!(message.value(obr, 4, 1), "36643-5");
        assert_eq!(message.value(obr, 4, 3), "LN");
        assert_eq!(message.value(obr, 18, 1), "ACC123");
        assert_eq!(message.value(obr, 25, 1), "P");
        let obx: Vec<_> = message.segments.iter().filter(|s| s.id == "OBX").collect();
        // nodule + 3 valid measurements (the broken one is skipped), 2 classifications,
        // conclusion, SR pointer.
        assert_eq!(obx.len(), 1 + 3 + 2 + 1 + 1, "{text}");
        assert_eq!(message.value(obx[0], 3, 1), "786838002");
        assert_eq!(message.value(obx[0], 5, 1), "0.93");
        assert_eq!(message.value(obx[0], 8, 1), "A");
        assert_eq!(message.value(obx[0], 17, 1), "ct-lung-nodule");
        assert_eq!(message.value(obx[1], 17, 1), "ct-lung-nodule");
        assert_eq!(message.value(obx[1], 4, 1), message.value(obx[0], 4, 1));
        assert_eq!(message.value(obx[1], 5, 1), "7.5");
        assert_eq!(message.value(obx[1], 6, 1), "mm");
        assert_eq!(message.value(obx[3], 6, 1), "[hnsf'U]");
        assert_eq!(
            message.value(obx[5], 8, 1),
            "N",
            "the 0.12 effusion is negative"
        );
        let ids: Vec<String> = obx.iter().map(|s| message.value(s, 1, 1)).collect();
        let expected: Vec<String> = (1..=obx.len()).map(|n| n.to_string()).collect();
        assert_eq!(ids, expected, "OBX-1 counts up");
        assert_eq!(message.value(obx[6], 2, 1), "TX");
        assert!(
            message
                .value(obx[6], 5, 1)
                .contains("Pulmonary nodule (0.93)")
        );
        assert_eq!(message.value(obx[7], 2, 1), "RP");
        assert!(message.value(obx[7], 5, 1).ends_with("/instances/2.25.71"));
        assert!(obx.iter().all(|s| message.value(s, 11, 1) == "P"));
        let msh = message.segment("MSH").unwrap();
        assert_eq!(message.value(msh, 6, 1), "HOSP|1", "MSH-6 escaped");
    }

    #[test]
    fn an_unlinked_result_uses_the_dicom_patient_and_a_resend_is_a_correction() {
        let j = job(8, "1.2.3", "chest-xray-findings", 1);
        let result = JobResult {
            findings: classification(&j),
            job: j,
            sr: None,
            seg: None,
        };
        let study = unlinked();
        let text = oru_r01(
            &OruInput {
                study: &study,
                result: &result,
                patient: None,
                order: None,
                control_id: "RS2R2",
                revision: 2,
                sent_at: "20261123120000+0000",
            },
            &parties(),
        );
        let message = hl7::parse(text.as_bytes(), 1 << 20).unwrap();
        let pid = message.segment("PID").unwrap();
        assert_eq!(message.value(pid, 3, 1), "MRN-77");
        assert_eq!(message.component(pid.raw(3), 4), "&HOSP&L");
        assert_eq!(message.value(pid, 5, 2), "JANE");
        let obr = message.segment("OBR").unwrap();
        assert_eq!(message.value(obr, 2, 1), "");
        assert_eq!(message.value(obr, 4, 1), "18748-4");
        assert_eq!(message.value(obr, 25, 1), "C");
        assert!(
            message
                .segments
                .iter()
                .filter(|s| s.id == "OBX")
                .all(|s| message.value(s, 11, 1) == "C")
        );
    }
}
