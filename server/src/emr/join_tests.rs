//! The join checked against ground truth: sets written by the dicom-samples library (DICOM
//! files, the EMR's FHIR Bundle with its deliberate inconsistencies, and the true
//! study↔order pairs), parsed with [`parse_bundle`], studies read back from the files with
//! dicom-object, every study joined and compared with `true_pairs.json`. Plus unit tests of
//! identifier normalisation, name matching, per-entry Bundle errors, ambiguous accessions and
//! the join before and after an order arrives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_samples::emr::{EMR_BUNDLE_FILE, TRUE_PAIRS_FILE, TruePair};
use dicom_samples::generate::{GenerateOptions, generate};
use serde_json::{Value, json};

use super::fhir::{ParsedBundle, parse_bundle};
use super::join::{
    EmrIndex, JoinConfig, JoinOutcome, issuer_system, join_study, names_match, normalise_patient_id,
};
use super::{HumanName, MatchMethod, StudyFacts};

/// Seeds of the generated sets; 40 studies each (15 CT, 25 radiographs). (60 seeds were
/// tried once: 2,400 studies, precision and recall 1.0, demographics-only recall 0.93.)
const SEEDS: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// One generated set, read back.
struct SampleSet {
    seed: u64,
    bundle: ParsedBundle,
    studies: Vec<StudyFacts>,
    pairs: Vec<TruePair>,
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

/// The study in `dir` as the archive's index would describe it: attributes of its first
/// instance, modalities of all.
fn read_study(dir: &Path) -> StudyFacts {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("study directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let objects: Vec<InMemDicomObject> = files
        .iter()
        .map(|p| {
            OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .open_file(p)
                .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
                .into_inner()
        })
        .collect();
    let first = objects.first().expect("a study has an instance");
    let modalities: BTreeSet<String> = objects.iter().map(|o| text(o, tags::MODALITY)).collect();
    StudyFacts {
        study_instance_uid: text(first, tags::STUDY_INSTANCE_UID),
        accession_number: text(first, tags::ACCESSION_NUMBER),
        patient_id: text(first, tags::PATIENT_ID),
        issuer_of_patient_id: text(first, tags::ISSUER_OF_PATIENT_ID),
        patient_name: text(first, tags::PATIENT_NAME),
        patient_birth_date: text(first, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(first, tags::PATIENT_SEX),
        study_date: text(first, tags::STUDY_DATE),
        modalities: modalities.into_iter().collect(),
    }
}

fn generate_set(seed: u64) -> SampleSet {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = GenerateOptions {
        seed,
        ct_studies: 15,
        xray_studies: 25,
        ct_slices: 2,
        xray_size: 64,
        ..GenerateOptions::new(dir.path())
    };
    generate(&options, &|| {}).expect("dicom-samples generates the set");
    let body = std::fs::read(dir.path().join(EMR_BUNDLE_FILE)).expect("bundle written");
    let bundle = parse_bundle(&body).expect("the generated bundle parses");
    let truth: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(TRUE_PAIRS_FILE)).expect("true pairs written"),
    )
    .expect("true pairs are JSON");
    let pairs: Vec<TruePair> =
        serde_json::from_value(truth["pairs"].clone()).expect("pairs in the documented form");
    let mut study_dirs: Vec<_> = std::fs::read_dir(dir.path().join("studies"))
        .expect("studies directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    study_dirs.sort();
    let studies = study_dirs.iter().map(|d| read_study(d)).collect();
    SampleSet {
        seed,
        bundle,
        studies,
        pairs,
    }
}

/// The sets, generated once for all tests of this file.
fn sample_sets() -> &'static [SampleSet] {
    static SETS: OnceLock<Vec<SampleSet>> = OnceLock::new();
    SETS.get_or_init(|| SEEDS.iter().map(|&s| generate_set(s)).collect())
}

/// Tallies of one evaluation.
#[derive(Default, Debug)]
struct Tally {
    pairs: usize,
    links: usize,
    correct: usize,
    wrong: Vec<String>,
    /// (method, with order?) → correct links.
    by_method: BTreeMap<(&'static str, bool), usize>,
    ambiguous: usize,
    unmatched: usize,
}

impl Tally {
    fn precision(&self) -> f64 {
        if self.links == 0 {
            1.0
        } else {
            self.correct as f64 / self.links as f64
        }
    }
    fn recall(&self) -> f64 {
        self.correct as f64 / self.pairs.max(1) as f64
    }
}

/// Joins every study of every set (after `alter`), and scores it against the truth;
/// `order_counts` says whether a link must also name the right order to be correct.
fn evaluate(alter: impl Fn(&mut StudyFacts), order_counts: bool) -> Tally {
    // The generator's issuer, as a site would map it: the identifier step compares issuers.
    let config = JoinConfig {
        issuers: BTreeMap::from([(
            dicom_samples::patient::PATIENT_ID_ISSUER.to_string(),
            dicom_samples::patient::PATIENT_ID_SYSTEM.to_string(),
        )]),
        ..JoinConfig::default()
    };
    let mut tally = Tally::default();
    for set in sample_sets() {
        assert!(
            set.bundle.errors.is_empty(),
            "seed {}: {:?}",
            set.seed,
            set.bundle.errors
        );
        let index = EmrIndex::new(&set.bundle.patients, &set.bundle.orders);
        let truth: HashMap<&str, &TruePair> = set
            .pairs
            .iter()
            .map(|p| (p.study_instance_uid.as_str(), p))
            .collect();
        assert_eq!(set.studies.len(), set.pairs.len(), "seed {}", set.seed);
        for study in &set.studies {
            let pair = truth[study.study_instance_uid.as_str()];
            let mut study = study.clone();
            alter(&mut study);
            tally.pairs += 1;
            match join_study(&study, &index, &config) {
                JoinOutcome::Linked(link) => {
                    tally.links += 1;
                    let right = link.patient == pair.patient_resource_id
                        && (!order_counts || link.order == pair.service_request_id);
                    if right {
                        tally.correct += 1;
                        *tally
                            .by_method
                            .entry((link.method.as_str(), link.order.is_some()))
                            .or_default() += 1;
                    } else {
                        tally.wrong.push(format!(
                            "seed {} study {} ({:?}): linked {link:?}, truth {pair:?}",
                            set.seed, study.study_instance_uid, study.patient_name
                        ));
                    }
                }
                JoinOutcome::Ambiguous { reason, .. } => {
                    tally.ambiguous += 1;
                    println!("ambiguous (seed {}): {reason}", set.seed);
                }
                JoinOutcome::Unmatched { reason } => {
                    tally.unmatched += 1;
                    println!("unmatched (seed {}): {reason}", set.seed);
                }
            }
        }
    }
    println!(
        "pairs {} links {} correct {} precision {:.4} recall {:.4} ambiguous {} unmatched {}",
        tally.pairs,
        tally.links,
        tally.correct,
        tally.precision(),
        tally.recall(),
        tally.ambiguous,
        tally.unmatched
    );
    for ((method, with_order), count) in &tally.by_method {
        let what = if *with_order {
            "with order"
        } else {
            "patient only"
        };
        println!("  {method:<13} {what:<12} {count}");
    }
    tally
}

#[test]
fn generated_sets_join_with_full_precision() {
    let tally = evaluate(|_| {}, true);
    assert!(tally.wrong.is_empty(), "wrong links: {:#?}", tally.wrong);
    assert_eq!(tally.precision(), 1.0);
    assert!(tally.recall() >= 0.95, "recall {}", tally.recall());
    // Every method of steps 1 and 2 is exercised by the generated inconsistencies.
    assert!(tally.by_method.contains_key(&("accession", true)));
    assert!(tally.by_method.contains_key(&("patient_id", true)));
    assert!(tally.by_method.contains_key(&("patient_id", false)));
}

/// Without the identifier and with an accession number the EMR does not know, only the
/// demographics are left: never a wrong patient, and most found.
#[test]
fn demographics_alone_never_pick_the_wrong_patient() {
    let tally = evaluate(
        |s| {
            s.patient_id.clear();
            s.accession_number = format!("X{}", s.study_instance_uid);
        },
        false,
    );
    assert!(tally.wrong.is_empty(), "wrong links: {:#?}", tally.wrong);
    assert!(tally.by_method.keys().all(|(m, _)| *m == "demographics"));
    assert!(tally.recall() >= 0.8, "recall {}", tally.recall());
}

#[test]
fn generated_bundles_parse_without_errors() {
    for set in sample_sets() {
        let b = &set.bundle;
        assert!(b.errors.is_empty(), "{:?}", b.errors);
        assert!(b.ignored.is_empty(), "{:?}", b.ignored);
        assert!(!b.patients.is_empty() && !b.orders.is_empty() && !b.encounters.is_empty());
        // References by urn:uuid resolve to resource ids.
        let patients: BTreeSet<&str> = b.patients.iter().map(|p| p.id.as_str()).collect();
        let encounters: BTreeSet<&str> = b.encounters.iter().map(|e| e.id.as_str()).collect();
        for order in &b.orders {
            assert!(patients.contains(order.patient.as_deref().unwrap_or("")));
            assert!(encounters.contains(order.encounter.as_deref().unwrap_or("")));
        }
    }
}

#[test]
fn patient_ids_normalise_across_formats() {
    let c = JoinConfig::default();
    for id in [
        "00004127",
        "4127",
        "004127",
        "MRN4127",
        "mrn4127",
        " MRN 4127 ",
        "MRN-4127",
        "H-0004127",
        "h-0004127",
        "H0004127",
    ] {
        assert_eq!(normalise_patient_id(id, &c), "4127", "{id}");
    }
    // A prefix only counts before a digit or separator.
    assert_eq!(normalise_patient_id("HX77", &c), "HX77");
    assert_eq!(normalise_patient_id("hans1", &c), "HANS1");
    assert_eq!(normalise_patient_id("0000", &c), "0");
    assert_eq!(normalise_patient_id("", &c), "");
    assert_eq!(normalise_patient_id("   ", &c), "");
    // Without prefixes configured, they stay.
    let bare = JoinConfig {
        patient_id_prefixes: vec![],
        ..JoinConfig::default()
    };
    assert_eq!(normalise_patient_id("MRN4127", &bare), "MRN4127");
    assert_eq!(normalise_patient_id("004127", &bare), "4127");
}

#[test]
fn join_config_defaults_and_refuses_unknown_fields() {
    let c: JoinConfig = serde_json::from_str("{}").expect("all fields default");
    assert_eq!(c, JoinConfig::default());
    assert_eq!(c.patient_id_prefixes, ["MRN", "H-", "H"]);
    assert_eq!(c.date_window_days, 1);
    let c: JoinConfig = serde_json::from_str(r#"{"date_window_days": 3}"#).expect("one field");
    assert_eq!(c.date_window_days, 3);
    assert!(serde_json::from_str::<JoinConfig>(r#"{"window": 3}"#).is_err());
}

fn name(family: Option<&str>, given: &[&str], text: Option<&str>) -> HumanName {
    HumanName {
        family: family.map(str::to_string),
        given: given.iter().map(|g| g.to_string()).collect(),
        text: text.map(str::to_string),
    }
}

#[test]
fn names_match_across_scripts_orders_and_accents() {
    let latin = "Müller^Hans";
    // Given first, family first, uppercase without accents, swapped fields.
    assert!(names_match(
        latin,
        &[name(Some("Müller"), &["Hans"], Some("Hans Müller"))]
    ));
    assert!(names_match(latin, &[name(None, &[], Some("Müller Hans"))]));
    assert!(names_match(
        latin,
        &[name(Some("MULLER"), &["HANS"], Some("MULLER HANS"))]
    ));
    assert!(names_match(latin, &[name(Some("Hans"), &["Müller"], None)]));
    assert!(names_match(
        "O'Brien^Seán",
        &[name(None, &[], Some("SEAN OBRIEN"))]
    ));
    assert!(names_match(
        "Van der Berg^Åsa",
        &[name(Some("VAN DER BERG"), &["ASA"], None)]
    ));
    assert!(!names_match(
        latin,
        &[name(Some("Müller"), &["Anna"], None)]
    ));
    assert!(!names_match(latin, &[]));

    let chinese = "Wang^Xiaodong=王^小东";
    // Han only (fields, or text run together), pinyin family or given first, both.
    assert!(names_match(
        chinese,
        &[name(Some("王"), &["小东"], Some("王小东"))]
    ));
    assert!(names_match(chinese, &[name(None, &[], Some("王小东"))]));
    assert!(names_match(
        chinese,
        &[name(Some("Wang"), &["Xiaodong"], Some("Wang Xiaodong"))]
    ));
    assert!(names_match(
        chinese,
        &[name(None, &[], Some("Xiaodong Wang"))]
    ));
    assert!(names_match(
        chinese,
        &[name(None, &[], Some("WANG XIAODONG"))]
    ));
    // Pinyin and Han are compared only within their script: a study with only the pinyin
    // does not match a Han-only record (and the other way round).
    assert!(!names_match(
        "Wang^Xiaodong",
        &[name(Some("王"), &["小东"], Some("王小东"))]
    ));
    assert!(!names_match(
        "=王^小东",
        &[name(None, &[], Some("Wang Xiaodong"))]
    ));
    assert!(!names_match(
        chinese,
        &[name(Some("王"), &["伟"], Some("王伟"))]
    ));
}

fn bundle(entries: Vec<Value>) -> Vec<u8> {
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
        .to_string()
        .into_bytes()
}

fn patient_entry(id: &str, mrn: &str, family: &str, given: &str, birth: Option<&str>) -> Value {
    let mut resource = json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.3",
            "value": mrn,
        }],
        "name": [{"family": family, "given": [given]}],
        "gender": "male",
    });
    if let Some(birth) = birth {
        resource["birthDate"] = json!(birth);
    }
    json!({"fullUrl": format!("urn:uuid:{id}"), "resource": resource})
}

fn order_entry(id: &str, subject: &str, accession: Option<&str>, code: &str, at: &str) -> Value {
    let mut identifiers = vec![json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
        "value": format!("ORD-{id}"),
    })];
    if let Some(accession) = accession {
        identifiers.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": accession,
        }));
    }
    json!({"fullUrl": format!("urn:uuid:{id}"), "resource": {
        "resourceType": "ServiceRequest",
        "id": id,
        "identifier": identifiers,
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": code}]},
        "subject": {"reference": subject},
        "occurrenceDateTime": at,
    }})
}

#[test]
fn bad_entries_are_reported_one_by_one_and_the_rest_parses() {
    let mut no_status = order_entry("o-2", "Patient/p-1", Some("A2"), "CT Chest", "2026-03-01");
    no_status["resource"]
        .as_object_mut()
        .expect("object")
        .remove("status");
    let mut bad_intent = order_entry("o-3", "Patient/p-1", None, "CT Chest", "2026-03-01");
    bad_intent["resource"]["intent"] = json!("wish");
    let mut no_subject = order_entry("o-4", "Patient/p-1", None, "CT Chest", "2026-03-01");
    no_subject["resource"]
        .as_object_mut()
        .expect("object")
        .remove("subject");
    let mut bad_gender = patient_entry("p-3", "3", "Rossi", "Luca", None);
    bad_gender["resource"]["gender"] = json!("M");
    let body = bundle(vec![
        /* 0 */ patient_entry("p-1", "MRN4127", "Müller", "Hans", Some("1960-05-12")),
        /* 1 */ patient_entry("p-2", "99", "Smith", "Anna", Some("1980-02-30")),
        /* 2 */
        json!({"fullUrl": "urn:uuid:x-1", "resource": {"resourceType": "Practitioner", "id": "x-1"}}),
        /* 3 */
        order_entry(
            "o-1",
            "Patient/not-in-bundle",
            Some("A1"),
            "CT Chest",
            "2026-03-01T09:15:00+01:00",
        ),
        /* 4 */ no_status,
        /* 5 */
        order_entry(
            "o-5",
            "Patient/p-1",
            None,
            "CT Chest",
            "2026-03-01T09:15:00",
        ),
        /* 6 */
        json!({"fullUrl": "urn:uuid:e-1", "resource": {"resourceType": "Encounter", "id": "e-1", "subject": {"reference": "Patient/p-1"}}}),
        /* 7 */ json!({"resource": {"resourceType": "Patient", "id": "bad_id"}}),
        /* 8 */ json!({"fullUrl": "urn:uuid:p-9", "resource": {"resourceType": "Patient"}}),
        /* 9 */ json!({"resource": {"id": "no-type"}}),
        /* 10 */ bad_intent,
        /* 11 */ no_subject,
        /* 12 */ bad_gender,
        /* 13 */ patient_entry("p-1", "1", "Dup", "Licate", None),
        /* 14 */
        json!({"fullUrl": "urn:uuid:e-2", "resource": {"resourceType": "Encounter", "status": "finished", "subject": {"reference": "urn:uuid:p-1"}}}),
        /* 15 */ json!("not an entry"),
    ]);
    let parsed = parse_bundle(&body).expect("the body as a whole is fine");
    let errors: BTreeMap<usize, &str> = parsed
        .errors
        .iter()
        .map(|e| (e.index, e.message.as_str()))
        .collect();
    let expect = |index: usize, needle: &str| {
        let message = errors
            .get(&index)
            .unwrap_or_else(|| panic!("entry {index} has no error: {errors:?}"));
        assert!(message.contains(needle), "entry {index}: {message}");
    };
    expect(1, "Patient.birthDate \"1980-02-30\"");
    expect(4, "ServiceRequest.status is missing");
    expect(5, "ServiceRequest.occurrenceDateTime");
    expect(6, "Encounter.status is missing");
    expect(7, "Patient.id \"bad_id\" is not a FHIR id");
    expect(9, "resourceType is missing");
    expect(10, "ServiceRequest.intent \"wish\" is not in its value set");
    expect(11, "ServiceRequest.subject is missing");
    expect(12, "Patient.gender \"M\" is not in its value set");
    expect(13, "Patient.id \"p-1\" repeats entry 0");
    expect(15, "not a JSON object");
    assert_eq!(errors.len(), 11, "{errors:#?}");
    assert_eq!(
        parsed.errors[0].full_url.as_deref(),
        Some("urn:uuid:p-2"),
        "the error names the entry"
    );

    // The good ones: the patient, the order to a patient of another bundle, the patient
    // named by its urn:uuid only, the encounter without id.
    let patient_ids: Vec<&str> = parsed.patients.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(patient_ids, ["p-1", "p-9"]);
    assert_eq!(parsed.orders.len(), 1);
    assert_eq!(parsed.orders[0].patient.as_deref(), Some("not-in-bundle"));
    assert_eq!(
        parsed.orders[0].occurrence.as_deref(),
        Some("2026-03-01T09:15:00+01:00")
    );
    assert_eq!(parsed.encounters.len(), 1);
    assert_eq!(parsed.encounters[0].id, "e-2");
    assert_eq!(parsed.encounters[0].patient.as_deref(), Some("p-1"));
    assert_eq!(parsed.ignored, BTreeMap::from([("Practitioner".into(), 1)]));
    let p1 = &parsed.patients[0];
    assert_eq!(p1.identifiers[0].value, "MRN4127");
    assert_eq!(p1.identifiers[0].type_code.as_deref(), Some("MR"));
    assert_eq!(p1.birth_date.as_deref(), Some("1960-05-12"));
}

fn study(uid: &str, accession: &str, patient_id: &str, name: &str, birth: &str) -> StudyFacts {
    StudyFacts {
        study_instance_uid: uid.into(),
        accession_number: accession.into(),
        patient_id: patient_id.into(),
        issuer_of_patient_id: String::new(),
        patient_name: name.into(),
        patient_birth_date: birth.into(),
        patient_sex: "M".into(),
        study_date: "20260301".into(),
        modalities: vec!["CT".into()],
    }
}

#[test]
fn an_accession_on_two_patients_is_ambiguous() {
    let parsed = parse_bundle(&bundle(vec![
        patient_entry("p-1", "4127", "Müller", "Hans", Some("1960-05-12")),
        patient_entry("p-2", "5555", "Rossi", "Luca", Some("1970-01-01")),
        order_entry("o-1", "urn:uuid:p-1", Some("A1"), "CT Chest", "2026-03-01"),
        order_entry("o-2", "urn:uuid:p-2", Some("A1"), "CT Chest", "2026-03-01"),
    ]))
    .expect("bundle");
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let index = EmrIndex::new(&parsed.patients, &parsed.orders);
    let s = study("1.2.3", "A1", "00004127", "Müller^Hans", "19600512");
    match join_study(&s, &index, &JoinConfig::default()) {
        JoinOutcome::Ambiguous { candidates, reason } => {
            assert!(reason.contains("accession on two patients"), "{reason}");
            let orders: Vec<_> = candidates.iter().map(|c| c.order.as_deref()).collect();
            assert_eq!(orders, [Some("o-1"), Some("o-2")]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_same_patient_id_under_another_issuer_is_another_person() {
    let mut other = patient_entry("p-2", "4127", "Rossi", "Luca", Some("1970-01-01"));
    other["resource"]["identifier"][0]["system"] = json!("urn:oid:9.9.9");
    let parsed = parse_bundle(&bundle(vec![
        patient_entry("p-1", "4127", "Müller", "Hans", Some("1960-05-12")),
        other,
    ]))
    .expect("bundle");
    let index = EmrIndex::new(&parsed.patients, &parsed.orders);
    let mut s = study("1.2.3", "", "00004127", "Müller^Hans", "19600512");
    // No issuer known on the study: both patients hold the number, so review.
    let config = JoinConfig::default();
    assert!(matches!(
        join_study(&s, &index, &config),
        JoinOutcome::Ambiguous { candidates, .. } if candidates.len() == 2
    ));
    // The issuer, mapped to the system p-1's number is under, picks p-1 alone.
    s.issuer_of_patient_id = "HOSP-A".into();
    let mapped = JoinConfig {
        issuers: BTreeMap::from([("HOSP-A".to_string(), "urn:oid:1.2.3".to_string())]),
        ..JoinConfig::default()
    };
    assert!(matches!(
        join_study(&s, &index, &mapped),
        JoinOutcome::Linked(l) if l.patient == "p-1" && l.method == MatchMethod::PatientId
    ));
    // An issuer that is itself the OID of p-2's system picks p-2 by identifier, even
    // though the study's name is p-1's: identifiers decide before names, and the birth
    // date is p-2's.
    s.issuer_of_patient_id = "9.9.9".into();
    s.patient_name = "Rossi^Luca".into();
    s.patient_birth_date = "19700101".into();
    assert!(matches!(
        join_study(&s, &index, &config),
        JoinOutcome::Linked(l) if l.patient == "p-2" && l.method == MatchMethod::PatientId
    ));
    // An issuer neither patient's number is under: not by identifier; the demographics
    // step may still find the person (here p-2 by name and birth date).
    s.issuer_of_patient_id = "urn:oid:5.5.5".into();
    match join_study(&s, &index, &config) {
        JoinOutcome::Linked(l) => {
            assert_eq!(l.method, MatchMethod::Demographics);
            assert_eq!(l.patient, "p-2");
        }
        other => panic!("{other:?}"),
    }
    // An unmapped local name is not comparable: as if absent.
    s.issuer_of_patient_id = "SOMEWHERE".into();
    assert!(matches!(
        join_study(&s, &index, &config),
        JoinOutcome::Ambiguous { .. }
    ));
}

#[test]
fn issuers_map_to_fhir_systems() {
    let config = JoinConfig {
        issuers: BTreeMap::from([("HOSP".to_string(), " urn:oid:1.2.3 ".to_string())]),
        ..JoinConfig::default()
    };
    assert_eq!(
        issuer_system("HOSP", &config).as_deref(),
        Some("urn:oid:1.2.3")
    );
    assert_eq!(
        issuer_system(" 1.2.840.1 ", &config).as_deref(),
        Some("urn:oid:1.2.840.1")
    );
    assert_eq!(
        issuer_system("https://hosp.example/mrn", &config).as_deref(),
        Some("https://hosp.example/mrn")
    );
    assert_eq!(issuer_system("HOSP-B", &config), None);
    assert_eq!(issuer_system("1.", &config), None);
    assert_eq!(issuer_system("", &config), None);
}

#[test]
fn an_accession_whose_patient_contradicts_the_study_is_not_linked() {
    let parsed = parse_bundle(&bundle(vec![
        patient_entry("p-2", "5555", "Rossi", "Luca", Some("1970-01-01")),
        order_entry("o-1", "urn:uuid:p-2", Some("A1"), "CT Chest", "2026-03-01"),
    ]))
    .expect("bundle");
    let index = EmrIndex::new(&parsed.patients, &parsed.orders);
    let config = JoinConfig::default();
    let s = study("1.2.3", "A1", "00004127", "Müller^Hans", "19600512");
    assert!(matches!(
        join_study(&s, &index, &config),
        JoinOutcome::Ambiguous { .. }
    ));
    // Same birth date (another id) — or same id (another birth date) — is no contradiction.
    let s = study("1.2.3", "A1", "00004127", "Müller^Hans", "19700101");
    assert!(matches!(
        join_study(&s, &index, &config),
        JoinOutcome::Linked(l) if l.method == MatchMethod::Accession && l.confidence == 1.0
    ));
    let s = study("1.2.3", "A1", "5555", "Müller^Hans", "19600512");
    assert!(matches!(
        join_study(&s, &index, &config),
        JoinOutcome::Linked(_)
    ));
}

#[test]
fn a_study_joined_before_and_after_its_order_arrives() {
    let patients = [
        patient_entry("p-1", "H-0004127", "Müller", "Hans", Some("1960-05-12")),
        patient_entry("p-2", "5555", "Rossi", "Luca", Some("1970-01-01")),
    ];
    let orders = vec![
        // The study's order, without accession number; another patient's order; a same-day
        // radiograph order with its own accession number; a CT three days later.
        order_entry(
            "o-1",
            "urn:uuid:p-1",
            None,
            "CT Chest",
            "2026-03-01T09:15:00+01:00",
        ),
        order_entry(
            "o-2",
            "urn:uuid:p-2",
            None,
            "CT Chest",
            "2026-03-01T09:15:00+01:00",
        ),
        order_entry(
            "o-3",
            "Patient/p-1",
            Some("A9"),
            "XR Chest Single view",
            "2026-03-01T11:00:00+01:00",
        ),
        order_entry(
            "o-4",
            "Patient/p-1",
            None,
            "CT Chest",
            "2026-03-04T09:15:00+01:00",
        ),
    ];
    let config = JoinConfig::default();
    let s = study("1.2.3", "A1", "00004127", "Müller^Hans", "19600512");

    // Before: the patient, no order (o-3 is a radiograph, o-4 out of the window).
    let without: Vec<Value> = patients
        .iter()
        .cloned()
        .chain(orders[1..].iter().cloned())
        .collect();
    let parsed = parse_bundle(&bundle(without)).expect("bundle");
    let index = EmrIndex::new(&parsed.patients, &parsed.orders);
    match join_study(&s, &index, &config) {
        JoinOutcome::Linked(l) => {
            assert_eq!(l.patient, "p-1");
            assert_eq!(l.order, None);
            assert_eq!(l.method, MatchMethod::PatientId);
            assert_eq!(l.confidence, 0.85);
        }
        other => panic!("{other:?}"),
    }

    // After: the order, whatever order the entries come in.
    let all: Vec<Value> = patients.iter().chain(&orders).cloned().collect();
    let mut expected = None;
    for rotation in 0..all.len() {
        let mut entries = all.clone();
        entries.rotate_left(rotation);
        if rotation % 2 == 1 {
            entries.reverse();
        }
        let parsed = parse_bundle(&bundle(entries)).expect("bundle");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let index = EmrIndex::new(&parsed.patients, &parsed.orders);
        let outcome = join_study(&s, &index, &config);
        match &outcome {
            JoinOutcome::Linked(l) => {
                assert_eq!(l.patient, "p-1");
                assert_eq!(l.order.as_deref(), Some("o-1"));
                assert_eq!(l.method, MatchMethod::PatientId);
                assert_eq!(l.confidence, 0.9);
            }
            other => panic!("{other:?}"),
        }
        assert!(expected.as_ref().is_none_or(|e| *e == outcome));
        expected = Some(outcome);
    }

    // With its accession number the order is found by it, before or after the patient.
    let with_accession = order_entry("o-1", "urn:uuid:p-1", Some("A1"), "CT Chest", "2026-03-01");
    let parsed = parse_bundle(&bundle(vec![with_accession])).expect("bundle");
    let index = EmrIndex::new(&parsed.patients, &parsed.orders);
    assert!(matches!(
        join_study(&s, &index, &config),
        JoinOutcome::Linked(l) if l.order.as_deref() == Some("o-1") && l.method == MatchMethod::Accession
    ));
}

#[test]
fn two_fitting_orders_or_two_patients_go_to_review() {
    let parsed = parse_bundle(&bundle(vec![
        patient_entry("p-1", "4127", "Müller", "Hans", Some("1960-05-12")),
        order_entry("o-1", "urn:uuid:p-1", None, "CT Chest", "2026-03-01"),
        order_entry(
            "o-2",
            "urn:uuid:p-1",
            None,
            "CT Chest WO contrast",
            "2026-03-02",
        ),
    ]))
    .expect("bundle");
    let index = EmrIndex::new(&parsed.patients, &parsed.orders);
    let s = study("1.2.3", "", "4127", "Müller^Hans", "19600512");
    assert!(matches!(
        join_study(&s, &index, &JoinConfig::default()),
        JoinOutcome::Ambiguous { candidates, .. } if candidates.len() == 2
    ));
    // A narrower window leaves one.
    let narrow = JoinConfig {
        date_window_days: 0,
        ..JoinConfig::default()
    };
    assert!(matches!(
        join_study(&s, &index, &narrow),
        JoinOutcome::Linked(l) if l.order.as_deref() == Some("o-1")
    ));

    // Two patients with the same name and no birth date to tell them apart.
    let parsed = parse_bundle(&bundle(vec![
        patient_entry("p-1", "1", "王", "小东", None),
        patient_entry("p-2", "2", "Wang", "Xiaodong", None),
        patient_entry("p-3", "3", "Wang", "Xiaodong", Some("1950-01-01")),
    ]))
    .expect("bundle");
    let index = EmrIndex::new(&parsed.patients, &parsed.orders);
    let s = study("1.2.4", "", "", "Wang^Xiaodong=王^小东", "19600512");
    match join_study(&s, &index, &JoinConfig::default()) {
        JoinOutcome::Ambiguous { candidates, reason } => {
            let who: Vec<_> = candidates.iter().map(|c| c.patient.as_str()).collect();
            assert_eq!(
                who,
                ["p-1", "p-2"],
                "p-3 is excluded by its birth date: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Nobody of that name: unmatched, with the reasons of every step.
    let s = study("1.2.5", "A7", "777", "Nobody^Known", "19600512");
    match join_study(&s, &index, &JoinConfig::default()) {
        JoinOutcome::Unmatched { reason } => {
            assert!(reason.contains("no order has accession"), "{reason}");
            assert!(reason.contains("no EMR patient's"), "{reason}");
            assert!(reason.contains("no EMR patient has the name"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
