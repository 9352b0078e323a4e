//! Archive tests against dicom-samples' committed studies (CT with a GB18030 name, DX with
//! UTF-8 and GB18030 names, CR with a Latin-1 name).

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;

use super::*;

fn samples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dicom-samples/studies/studies");
    let mut files = Vec::new();
    for study in std::fs::read_dir(&root).unwrap() {
        for f in std::fs::read_dir(study.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "dcm") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert_eq!(files.len(), 13, "dicom-samples' committed set changed");
    files
}

fn sample(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dicom-samples/studies/studies")
            .join(rel),
    )
    .unwrap()
}

async fn open(dir: &Path, policy: DuplicatePolicy) -> Archive {
    Archive::open(ArchiveConfig {
        data_dir: dir.to_owned(),
        duplicate_policy: policy,
    })
    .await
    .unwrap()
}

fn stow() -> Source {
    Source::Stow {
        user: "test".into(),
        peer: None,
    }
}

async fn put_bytes(archive: &Archive, bytes: &[u8]) -> Result<PutOutcome, PutError> {
    let mut up = archive.begin_file_upload().await.unwrap();
    for chunk in bytes.chunks(7919) {
        up.write(chunk).await.unwrap();
    }
    assert_eq!(up.len(), bytes.len() as u64);
    archive.put(up, &stow()).await
}

async fn put_all(archive: &Archive) {
    for f in samples() {
        let outcome = put_bytes(archive, &std::fs::read(&f).unwrap())
            .await
            .unwrap();
        assert!(
            matches!(outcome, PutOutcome::Stored(_)),
            "{f:?}: {outcome:?}"
        );
    }
}

/// Nothing under `tmp/` but the spare files kept ready for uploads.
async fn tmp_is_empty(archive: &Archive) -> bool {
    archive.leftover_upload_files().await.is_empty()
}

fn study_query(keys: &[(Tag, &str)]) -> Query {
    Query {
        level: QueryLevel::Study,
        keys: keys
            .iter()
            .map(|&(tag, v)| MatchKey {
                tag,
                condition: parse_condition(tag, v).unwrap(),
            })
            .collect(),
        include: Include::Default,
        fuzzy_matching: false,
        combined_datetime: false,
        limit: None,
        offset: 0,
    }
}

use dicom_core::Tag;

fn values(set: &AttributeSet, tag: Tag) -> Vec<String> {
    set.get(&tag).map(|a| a.values.clone()).unwrap_or_default()
}

async fn count(archive: &Archive, keys: &[(Tag, &str)]) -> usize {
    archive.query(&study_query(keys)).await.unwrap().len()
}

#[tokio::test]
async fn put_query_locate_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    put_all(&archive).await;
    assert!(tmp_is_empty(&archive).await);
    archive.check_ready().await.unwrap();

    let studies = archive.query(&study_query(&[])).await.unwrap();
    assert_eq!(studies.len(), 4);
    let ct = studies
        .iter()
        .find(|s| values(s, tags::MODALITIES_IN_STUDY) == ["CT"])
        .expect("the CT study");
    assert_eq!(values(ct, tags::PATIENT_NAME), ["Wu^Xiaodong=吴^小东"]);
    assert_eq!(values(ct, tags::NUMBER_OF_STUDY_RELATED_INSTANCES), ["10"]);
    assert_eq!(values(ct, tags::NUMBER_OF_STUDY_RELATED_SERIES), ["1"]);
    assert_eq!(values(ct, tags::STUDY_DATE), ["20260915"]);
    let study_uid = values(ct, tags::STUDY_INSTANCE_UID).remove(0);

    let located = archive
        .locate(&Scope::Study {
            study: study_uid.clone(),
        })
        .await
        .unwrap();
    assert_eq!(located.len(), 10);
    // Ordered by InstanceNumber, and the bytes come back unchanged.
    let originals: Vec<Vec<u8>> = samples()
        .iter()
        .filter(|p| p.to_string_lossy().contains("0001_CT"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for (n, inst) in located.iter().enumerate() {
        let bytes = archive.read_blob(inst).await.unwrap();
        assert_eq!(bytes.len() as u64, inst.size_bytes);
        assert!(originals.contains(&bytes));
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .from_reader(&bytes[128..])
            .unwrap();
        let number = obj
            .element(tags::INSTANCE_NUMBER)
            .unwrap()
            .to_int::<i64>()
            .unwrap();
        assert_eq!(number, n as i64 + 1);
    }
    let one = &located[3];
    let scoped = archive
        .locate(&Scope::Instance {
            study: study_uid.clone(),
            series: one.series_instance_uid.clone(),
            instance: one.sop_instance_uid.clone(),
        })
        .await
        .unwrap();
    assert_eq!(scoped, vec![one.clone()]);
    let series = archive
        .locate(&Scope::Series {
            study: study_uid.clone(),
            series: one.series_instance_uid.clone(),
        })
        .await
        .unwrap();
    assert_eq!(series.len(), 10);
    assert!(
        archive
            .locate(&Scope::Study {
                study: "1.2.3".into()
            })
            .await
            .unwrap()
            .is_empty()
    );

    // Series and instance levels, with the computed count.
    let series_q = Query {
        level: QueryLevel::Series,
        keys: vec![MatchKey {
            tag: tags::STUDY_INSTANCE_UID,
            condition: Condition::Exact(study_uid.clone()),
        }],
        include: Include::All,
        fuzzy_matching: false,
        combined_datetime: false,
        limit: None,
        offset: 0,
    };
    let s = archive.query(&series_q).await.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(
        values(&s[0], tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
        ["10"]
    );
    assert_eq!(values(&s[0], tags::MODALITY), ["CT"]);
    let inst_q = Query {
        level: QueryLevel::Instance,
        keys: vec![MatchKey {
            tag: tags::INSTANCE_NUMBER,
            condition: parse_condition(tags::INSTANCE_NUMBER, "4").unwrap(),
        }],
        ..series_q.clone()
    };
    let i = archive.query(&inst_q).await.unwrap();
    assert_eq!(i.len(), 1);
    assert_eq!(
        values(&i[0], tags::SOP_INSTANCE_UID),
        std::slice::from_ref(&one.sop_instance_uid)
    );
    assert!(values(&i[0], tags::ROWS)[0].parse::<u32>().unwrap() > 0);
}

#[tokio::test]
async fn matching_names_dates_modalities_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    put_all(&archive).await;
    let name = tags::PATIENT_NAME;
    // Ideographic group, pinyin, case-insensitive, exact, Latin-1.
    assert_eq!(count(&archive, &[(name, "吴*")]).await, 2);
    assert_eq!(count(&archive, &[(name, "wu*")]).await, 2);
    assert_eq!(count(&archive, &[(name, "WU^XIAODONG")]).await, 2);
    assert_eq!(count(&archive, &[(name, "吴^小东")]).await, 2);
    assert_eq!(count(&archive, &[(name, "杨^?")]).await, 1);
    assert_eq!(count(&archive, &[(name, "novák*")]).await, 1);
    assert_eq!(count(&archive, &[(name, "Xiaodong*")]).await, 0);
    let mut fuzzy = study_query(&[(name, "xiaodong")]);
    fuzzy.fuzzy_matching = true;
    assert_eq!(archive.query(&fuzzy).await.unwrap().len(), 2);
    // PatientID is case-sensitive exact matching; wildcards work.
    assert_eq!(count(&archive, &[(tags::PATIENT_ID, "00001012")]).await, 2);
    assert_eq!(count(&archive, &[(tags::PATIENT_ID, "0000101?")]).await, 2);
    // Dates.
    let date = tags::STUDY_DATE;
    assert_eq!(count(&archive, &[(date, "20260601-20260731")]).await, 2);
    assert_eq!(count(&archive, &[(date, "-20260915")]).await, 3);
    assert_eq!(count(&archive, &[(date, "20260915-")]).await, 2);
    assert_eq!(count(&archive, &[(date, "20261014")]).await, 1);
    // A date range and a time range: each on its own (C-FIND), or as one date-time range
    // (QIDO-RS). Studies: DX 20260608 13:29:17, CR 20260715 09:18:46, CT 20260915 17:17:03,
    // DX 20261014 11:06:10.
    let time = tags::STUDY_TIME;
    let both = |dates: &str, times: &str, combined: bool| {
        let mut q = study_query(&[(date, dates), (time, times)]);
        q.combined_datetime = combined;
        let archive = archive.clone();
        async move {
            let mut found: Vec<String> = archive
                .query(&q)
                .await
                .unwrap()
                .iter()
                .map(|s| values(s, date).remove(0))
                .collect();
            found.sort();
            found
        }
    };
    assert!(
        both("20260608-20260915", "1000-1200", false)
            .await
            .is_empty()
    );
    assert_eq!(
        both("20260608-20260915", "1000-1200", true).await,
        ["20260608", "20260715"]
    );
    assert_eq!(
        both("20260608-20260915", "1400-1800", false).await,
        ["20260915"]
    );
    assert_eq!(
        both("20260608-20260915", "1400-1800", true).await,
        ["20260715", "20260915"]
    );
    // Open bounds, and an upper bound that is a prefix (17 includes 17:17:03).
    assert!(both("20260915-", "1800-", false).await.is_empty());
    assert_eq!(both("20260915-", "1800-", true).await, ["20261014"]);
    assert_eq!(both("-20260715", "-0900", true).await, ["20260608"]);
    assert_eq!(
        both("20260608-20260915", "-17", true).await,
        ["20260608", "20260715", "20260915"]
    );
    // A date range with an exact time is not a combined range: each matches on its own.
    let mut exact_time = study_query(&[(date, "20260601-20261231"), (time, "171703")]);
    exact_time.combined_datetime = true;
    assert_eq!(archive.query(&exact_time).await.unwrap().len(), 1);
    // Modalities in study: any series.
    assert_eq!(
        count(&archive, &[(tags::MODALITIES_IN_STUDY, "DX")]).await,
        2
    );
    assert_eq!(
        count(&archive, &[(tags::MODALITIES_IN_STUDY, "CT\\CR")]).await,
        2
    );
    assert_eq!(
        count(&archive, &[(tags::MODALITIES_IN_STUDY, "MR")]).await,
        0
    );
    // Combined keys are ANDed.
    assert_eq!(
        count(
            &archive,
            &[(name, "wu*"), (tags::MODALITIES_IN_STUDY, "DX")]
        )
        .await,
        1
    );
    // UID lists.
    let all = archive.query(&study_query(&[])).await.unwrap();
    let uids: Vec<String> = all
        .iter()
        .take(2)
        .map(|s| values(s, tags::STUDY_INSTANCE_UID).remove(0))
        .collect();
    assert_eq!(
        count(&archive, &[(tags::STUDY_INSTANCE_UID, &uids.join("\\"))]).await,
        2
    );
    // Paging: stable order, disjoint pages.
    let mut q = study_query(&[]);
    q.limit = Some(3);
    let first = archive.query(&q).await.unwrap();
    q.offset = 3;
    let second = archive.query(&q).await.unwrap();
    assert_eq!((first.len(), second.len()), (3, 1));
    assert_eq!(first[..], all[..3]);
    assert_eq!(second[0], all[3]);
    // A key not matchable at the level is refused.
    let mut bad = study_query(&[]);
    bad.keys.push(MatchKey {
        tag: tags::SOP_INSTANCE_UID,
        condition: Condition::Universal,
    });
    assert!(archive.query(&bad).await.is_err());
}

/// The same SOP Instance UID with one pixel changed.
fn altered(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    b
}

async fn conflicts(dir: &Path) -> Vec<(String, String)> {
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("index.sqlite").display()))
            .await
            .unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT policy, action FROM duplicate_conflicts ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn duplicates_under_each_policy() {
    let original = sample("0004_CR/CR0001.dcm");
    let changed = altered(&original);
    for policy in [
        DuplicatePolicy::KeepFirst,
        DuplicatePolicy::Replace,
        DuplicatePolicy::Reject,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let archive = open(dir.path(), policy).await;
        let PutOutcome::Stored(first) = put_bytes(&archive, &original).await.unwrap() else {
            panic!("first put not Stored")
        };
        // Identical bytes: success, one copy, no conflict.
        let again = put_bytes(&archive, &original).await.unwrap();
        assert_eq!(again, PutOutcome::Duplicate(first.clone()), "{policy:?}");
        let outcome = put_bytes(&archive, &changed).await;
        let located = archive
            .locate(&Scope::Study {
                study: first.study_instance_uid.clone(),
            })
            .await
            .unwrap();
        assert_eq!(located.len(), 1);
        let stored = archive.read_blob(&located[0]).await.unwrap();
        let blob_count = super::blob::FsBlobStore::new(dir.path().join("blobs")).unwrap();
        let blob_count = super::blob::BlobStore::keys(&blob_count)
            .await
            .unwrap()
            .len();
        match policy {
            DuplicatePolicy::KeepFirst => {
                assert_eq!(
                    outcome.unwrap(),
                    PutOutcome::ConflictKeptFirst(first.clone())
                );
                assert_eq!(stored, original);
                assert_eq!(
                    conflicts(dir.path()).await,
                    [("keep_first".to_owned(), "kept_first".to_owned())]
                );
            }
            DuplicatePolicy::Replace => {
                let PutOutcome::Replaced(new) = outcome.unwrap() else {
                    panic!("not Replaced")
                };
                assert_ne!(new.sha256, first.sha256);
                assert_eq!(located[0], new);
                assert_eq!(stored, changed);
                assert_eq!(
                    conflicts(dir.path()).await,
                    [("replace".to_owned(), "replaced".to_owned())]
                );
            }
            DuplicatePolicy::Reject => {
                assert!(
                    matches!(outcome, Err(PutError::DuplicateRejected(ref uid)) if *uid == first.sop_instance_uid)
                );
                assert_eq!(stored, original);
                assert_eq!(
                    conflicts(dir.path()).await,
                    [("reject".to_owned(), "rejected".to_owned())]
                );
            }
        }
        assert_eq!(blob_count, 1, "{policy:?}: exactly one blob kept");
        assert!(tmp_is_empty(&archive).await);
    }
}

#[tokio::test]
async fn invalid_uploads_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    let good = sample("0002_DX/DX0001.dcm");
    let group_len = u32::from_le_bytes([good[140], good[141], good[142], good[143]]) as usize;
    let dataset_only = good[144 + group_len..].to_vec();
    let mut no_dicm = good.clone();
    no_dicm[128..132].copy_from_slice(b"XXXX");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"this is not DICOM".repeat(100)),
        ("truncated header", good[..300].to_vec()),
        ("truncated pixel data", good[..good.len() - 1000].to_vec()),
        ("meta-less dataset", dataset_only),
        ("bad magic", no_dicm),
    ];
    for (what, bytes) in cases {
        let outcome = put_bytes(&archive, &bytes).await;
        assert!(
            matches!(outcome, Err(PutError::Invalid(_))),
            "{what}: {outcome:?}"
        );
        assert!(tmp_is_empty(&archive).await, "{what}: tmp/ not empty");
    }
    assert!(archive.query(&study_query(&[])).await.unwrap().is_empty());
    let blobs = super::blob::FsBlobStore::new(dir.path().join("blobs")).unwrap();
    assert!(
        super::blob::BlobStore::keys(&blobs)
            .await
            .unwrap()
            .is_empty()
    );
    // A dropped upload is removed too.
    let mut up = archive.begin_file_upload().await.unwrap();
    up.write(b"partial").await.unwrap();
    drop(up);
    assert!(tmp_is_empty(&archive).await);
}

#[tokio::test]
async fn dataset_uploads_from_dimse() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    let file = sample("0004_CR/CR0001.dcm");
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(&file[128..])
        .unwrap();
    let (class, inst, ts) = (
        obj.meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_owned(),
        obj.meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_owned(),
        obj.meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_owned(),
    );
    let group_len = u32::from_le_bytes([file[140], file[141], file[142], file[143]]) as usize;
    let dataset = &file[144 + group_len..];
    let source = Source::Dimse {
        calling_ae_title: "MODALITY".into(),
        peer: "127.0.0.1:4000".parse().unwrap(),
    };

    // The command's SOP Instance UID must match the data set's.
    let mut wrong = archive
        .begin_dataset_upload(&class, "1.2.3.4", &ts, "MODALITY")
        .await
        .unwrap();
    wrong.write(dataset).await.unwrap();
    assert!(matches!(
        archive.put(wrong, &source).await,
        Err(PutError::Invalid(_))
    ));
    // Unusable command attributes are refused at put, not at begin.
    let mut empty = archive.begin_dataset_upload("", "", "", "").await.unwrap();
    empty.write(dataset).await.unwrap();
    assert!(matches!(
        archive.put(empty, &source).await,
        Err(PutError::Invalid(_))
    ));

    let mut up = archive
        .begin_dataset_upload(&class, &inst, &ts, "MODALITY")
        .await
        .unwrap();
    for chunk in dataset.chunks(16384) {
        up.write(chunk).await.unwrap();
    }
    assert_eq!(up.len(), dataset.len() as u64);
    let PutOutcome::Stored(stored) = archive.put(up, &source).await.unwrap() else {
        panic!("not stored")
    };
    let bytes = archive.read_blob(&stored).await.unwrap();
    let back = dicom_object::OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .unwrap();
    assert_eq!(
        back.meta().source_application_entity_title().map(str::trim),
        Some("MODALITY")
    );
    assert_eq!(
        back.meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0'),
        inst
    );
    assert!(bytes.ends_with(dataset));
    assert!(tmp_is_empty(&archive).await);
}

#[tokio::test]
async fn restart_keeps_everything_and_removes_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
        put_all(&archive).await;
    }
    // Simulate a crash: a blob written but never committed, and an unfinished upload.
    let orphan_sha = "ab".repeat(32);
    let orphan = dir
        .path()
        .join("blobs/ab")
        .join(format!("{orphan_sha}.dcm"));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"uncommitted").unwrap();
    std::fs::write(dir.path().join("tmp/up-crashed"), b"half an upload").unwrap();

    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    assert!(!orphan.exists(), "orphan blob removed on open");
    assert!(tmp_is_empty(&archive).await);
    let studies = archive.query(&study_query(&[])).await.unwrap();
    assert_eq!(studies.len(), 4);
    let mut total = 0;
    for s in &studies {
        let uid = values(s, tags::STUDY_INSTANCE_UID).remove(0);
        for inst in archive.locate(&Scope::Study { study: uid }).await.unwrap() {
            // Every index row points at an existing, intact blob.
            let bytes = archive.read_blob(&inst).await.unwrap();
            use sha2::Digest;
            let sha: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(sha, inst.sha256);
            total += 1;
        }
    }
    assert_eq!(total, 13);
}

#[tokio::test]
async fn concurrent_puts() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    let mut tasks = Vec::new();
    // Every file twice, at once: 13 Stored, 13 Duplicate.
    for f in samples().into_iter().chain(samples()) {
        let archive = archive.clone();
        tasks.push(tokio::spawn(async move {
            put_bytes(&archive, &std::fs::read(f).unwrap())
                .await
                .unwrap()
        }));
    }
    let mut stored = 0;
    let mut duplicate = 0;
    for t in tasks {
        match t.await.unwrap() {
            PutOutcome::Stored(_) => stored += 1,
            PutOutcome::Duplicate(_) => duplicate += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((stored, duplicate), (13, 13));
    assert_eq!(archive.query(&study_query(&[])).await.unwrap().len(), 4);
}

#[tokio::test]
async fn tokens_and_audit_persist() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    let id = archive
        .insert_token(&NewToken {
            token_hash: "h1".into(),
            role: "reader".into(),
            label: "ci".into(),
        })
        .await
        .unwrap();
    let t = archive.find_token("h1").await.unwrap().unwrap();
    assert_eq!(
        (t.id, t.role.as_str(), t.label.as_str(), t.revoked),
        (id, "reader", "ci", false)
    );
    assert!(archive.find_token("nope").await.unwrap().is_none());
    assert!(
        archive
            .insert_token(&NewToken {
                token_hash: "h1".into(),
                role: "x".into(),
                label: "y".into()
            })
            .await
            .is_err()
    );
    for n in 0..3 {
        archive
            .record_audit(&AuditRecord {
                at: format!("2026-01-0{}T00:00:00Z", n + 1),
                user: "ci".into(),
                role: "reader".into(),
                action: "qido.studies".into(),
                resource: format!("studies/1.2.{n}"),
                client: "127.0.0.1".into(),
                outcome: "success".into(),
            })
            .await
            .unwrap();
    }
    let page = archive.audit_records(2, 0).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].resource, "studies/1.2.2", "newest first");
    assert_eq!(
        archive.audit_records(2, 2).await.unwrap()[0].resource,
        "studies/1.2.0"
    );
}

/// A crash after an index commit but before the blob's directory entry was durable leaves
/// a row without its blob (an instance that was never acknowledged): open removes the row,
/// and the series, study and patient it leaves empty, and keeps everything else.
#[tokio::test]
async fn open_removes_rows_whose_blob_was_lost_in_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let lost = {
        let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
        put_all(&archive).await;
        let studies = archive.query(&study_query(&[])).await.unwrap();
        // The study with the fewest instances, so that its removal empties it.
        let mut by_size = Vec::new();
        for s in &studies {
            let uid = values(s, tags::STUDY_INSTANCE_UID).remove(0);
            let instances = archive
                .locate(&Scope::Study { study: uid.clone() })
                .await
                .unwrap();
            by_size.push((instances.len(), uid, instances));
        }
        by_size.sort_by_key(|(n, _, _)| *n);
        let (_, study, instances) = by_size.remove(0);
        for inst in &instances {
            std::fs::remove_file(dir.path().join("blobs").join(&inst.blob_key)).unwrap();
        }
        (study, instances.len())
    };
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    let studies = archive.query(&study_query(&[])).await.unwrap();
    assert_eq!(studies.len(), 3);
    assert!(
        studies
            .iter()
            .all(|s| values(s, tags::STUDY_INSTANCE_UID)[0] != lost.0)
    );
    let mut total = 0;
    for s in &studies {
        let uid = values(s, tags::STUDY_INSTANCE_UID).remove(0);
        for inst in archive.locate(&Scope::Study { study: uid }).await.unwrap() {
            archive.read_blob(&inst).await.unwrap();
            total += 1;
        }
    }
    assert_eq!(total, 13 - lost.1);
}

/// The index writer remembers series rows to skip their upserts; a removal that deletes a
/// series (here: its only instance) must not leave it pointing at the deleted row, and a
/// replacement that moves an instance must not either.
#[tokio::test]
async fn a_series_emptied_by_a_removal_takes_new_instances() {
    let dir = tempfile::tempdir().unwrap();
    let archive = open(dir.path(), DuplicatePolicy::KeepFirst).await;
    let first = match put_bytes(&archive, &sample("0001_CT/CT0001.dcm")).await {
        Ok(PutOutcome::Stored(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        archive
            .index()
            .remove_instances_with_blob(&first.blob_key)
            .await
            .unwrap(),
        1
    );
    assert!(archive.query(&study_query(&[])).await.unwrap().is_empty());
    for (i, slice) in ["0001_CT/CT0002.dcm", "0001_CT/CT0003.dcm"]
        .iter()
        .enumerate()
    {
        let outcome = put_bytes(&archive, &sample(slice)).await;
        assert!(
            matches!(outcome, Ok(PutOutcome::Stored(_))),
            "{i}: {outcome:?}"
        );
    }
    let series = first.series_instance_uid.clone();
    let located = archive
        .locate(&Scope::Series {
            study: first.study_instance_uid.clone(),
            series,
        })
        .await
        .unwrap();
    assert_eq!(located.len(), 2);
}
