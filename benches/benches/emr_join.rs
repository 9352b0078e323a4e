//! The EMR join at hospital scale: 100,000 patients and 100,000 orders indexed, then 100,000
//! studies joined — a third by accession number, a third by patient identifier (the study
//! has no accession number), a third by name and birth date (neither identifier). The
//! project's target: the whole join in under 10 s on this machine.
//!
//! `cargo bench --profile dev -p radserve-benches --bench emr_join`
//! (`RADSERVE_BENCH_JOIN_N` changes the size.)

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use radserve::emr::join::{EmrIndex, JoinConfig, JoinOutcome, join_study};
use radserve::emr::{EmrOrder, EmrPatient, HumanName, Identifier, StudyFacts};

fn records(n: usize) -> (Vec<EmrPatient>, Vec<EmrOrder>, Vec<StudyFacts>) {
    let patients = (0..n)
        .map(|i| EmrPatient {
            id: format!("p{i}"),
            identifiers: vec![Identifier {
                system: None,
                value: format!("MRN{}", 1000 + i),
                type_code: Some("MR".into()),
            }],
            names: vec![HumanName {
                family: Some(format!("Family{}", i % 5000)),
                given: vec![format!("Given{}", i / 5000)],
                text: None,
            }],
            birth_date: Some(format!("19{:02}-01-{:02}", i % 100, 1 + i % 28)),
            gender: Some("female".into()),
        })
        .collect();
    let orders = (0..n)
        .map(|i| EmrOrder {
            id: format!("o{i}"),
            identifiers: (i % 3 != 0)
                .then(|| Identifier {
                    system: None,
                    value: format!("A{i}"),
                    type_code: Some("ACSN".into()),
                })
                .into_iter()
                .collect(),
            patient: Some(format!("p{i}")),
            encounter: None,
            status: "active".into(),
            code_system: None,
            code: None,
            code_display: Some("CT Chest".into()),
            occurrence: Some("2026-03-01T09:00:00+01:00".into()),
            authored_on: None,
            requester: None,
            reason: None,
        })
        .collect();
    let studies = (0..n)
        .map(|i| StudyFacts {
            study_instance_uid: format!("1.2.{i}"),
            accession_number: if i % 3 == 1 {
                format!("A{i}")
            } else {
                String::new()
            },
            patient_id: if i % 3 == 0 {
                String::new()
            } else {
                format!("{:08}", 1000 + i)
            },
            issuer_of_patient_id: String::new(),
            patient_name: format!("Family{}^Given{}", i % 5000, i / 5000),
            patient_birth_date: format!("19{:02}01{:02}", i % 100, 1 + i % 28),
            patient_sex: "F".into(),
            study_date: "20260301".into(),
            modalities: vec!["CT".into()],
        })
        .collect();
    (patients, orders, studies)
}

fn join_all(patients: &[EmrPatient], orders: &[EmrOrder], studies: &[StudyFacts]) -> usize {
    let config = JoinConfig::default();
    let index = EmrIndex::with_config(patients, orders, &config);
    studies
        .iter()
        .filter(|s| matches!(join_study(s, &index, &config), JoinOutcome::Linked(_)))
        .count()
}

fn bench(c: &mut Criterion) {
    let n = radserve_benches::env_number("RADSERVE_BENCH_JOIN_N", 100_000);
    let (patients, orders, studies) = records(n);
    // Every study must link, or the figure would time a join that gave up early.
    assert_eq!(
        join_all(&patients, &orders, &studies),
        n,
        "every study links"
    );
    let mut group = c.benchmark_group("emr_join");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.bench_function(
        format!("index {n} patients + {n} orders, join {n} studies"),
        |b| b.iter(|| black_box(join_all(&patients, &orders, &studies))),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
