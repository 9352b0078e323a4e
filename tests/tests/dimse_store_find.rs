//! C-STORE and C-FIND against the real binary, with dcmtk's `storescu` and `findscu` and
//! a hand-built raw client for data sets no real tool would send.
//!
//! The sample set comes from dicom-samples (one 2-slice CT study, a CR and a DX study of
//! one patient, `Wang^Fang=王^芳`, in UTF-8 and GB18030) and its 11 transfer-syntax
//! variants made by `make-transfer-syntax-variants.sh` with dcmtk and GDCM.

use std::path::{Path, PathBuf};

use radserve_tests::{
    RadServe, RawScu, dcmtk, dicom_files, generate_sample_variants, split_part10,
};

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Variant directory name → (storescu proposal flag, transfer syntax UID).
fn variant(name: &str) -> (&'static str, &'static str) {
    match name {
        "implicit-le" => ("-xi", "1.2.840.10008.1.2"),
        "explicit-le" => ("-xe", "1.2.840.10008.1.2.1"),
        "explicit-be" => ("-xb", "1.2.840.10008.1.2.2"),
        "deflate" => ("-xd", "1.2.840.10008.1.2.1.99"),
        "rle" => ("-xr", "1.2.840.10008.1.2.5"),
        "jpeg-lossless" => ("-xs", "1.2.840.10008.1.2.4.70"),
        "jpeg-baseline" => ("-xy", "1.2.840.10008.1.2.4.50"),
        "jpeg-extended" => ("-xx", "1.2.840.10008.1.2.4.51"),
        "jpeg-ls" => ("-xt", "1.2.840.10008.1.2.4.80"),
        "j2k-lossless" => ("-xv", "1.2.840.10008.1.2.4.90"),
        "j2k-lossy" => ("-xw", "1.2.840.10008.1.2.4.91"),
        other => panic!("unknown variant {other}"),
    }
}

fn serve(data: &Path) -> RadServe {
    RadServe::serve(["--data".as_ref(), data.as_os_str()])
}

fn generate(dir: &Path) -> Vec<(String, PathBuf)> {
    generate_sample_variants(
        dir,
        &[
            "--ct",
            "1",
            "--slices",
            "2",
            "--xray",
            "2",
            "--xray-size",
            "256",
        ],
    )
}

/// One C-FIND response identifier, as `dcmdump` prints its values.
#[derive(Debug)]
struct Match {
    study_uid: String,
    patient_name: String,
    charset: String,
    instances: u32,
}

/// Runs `findscu -S` at STUDY level with `keys` (plus the return keys we read) and
/// returns the matches (from the response files `-X` writes) and findscu's output.
fn find_studies(port: u16, keys: &[&str]) -> (Vec<Match>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "-S",
        "-X",
        "-v",
        "-aet",
        "RADSERVE-TEST",
        "-aec",
        "RADSERVE",
    ]
    .map(String::from)
    .to_vec();
    args.push("-od".into());
    args.push(dir.path().to_string_lossy().into_owned());
    for key in [
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientName",
        "StudyDate",
        "NumberOfStudyRelatedInstances",
    ]
    .iter()
    .chain(keys)
    {
        args.push("-k".into());
        args.push((*key).into());
    }
    args.push("127.0.0.1".into());
    args.push(port.to_string());
    let output = dcmtk("findscu", &args);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "findscu failed:\n{log}");
    let mut matches = Vec::new();
    for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let dump = dcmtk(
            "dcmdump",
            [
                "-q",
                "+P",
                "StudyInstanceUID",
                "+P",
                "PatientName",
                "+P",
                "SpecificCharacterSet",
                "+P",
                "NumberOfStudyRelatedInstances",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([file.path().to_string_lossy().into_owned()]),
        );
        let text = String::from_utf8_lossy(&dump.stdout).into_owned();
        let value = |keyword: &str| {
            text.lines()
                .find(|l| l.contains(keyword))
                .and_then(|l| Some(l[l.find('[')? + 1..l.find(']')?].to_owned()))
                .unwrap_or_default()
        };
        matches.push(Match {
            study_uid: value("StudyInstanceUID"),
            patient_name: value("PatientName"),
            charset: value("SpecificCharacterSet"),
            instances: value("NumberOfStudyRelatedInstances").parse().unwrap_or(0),
        });
    }
    matches.sort_by(|a, b| a.study_uid.cmp(&b.study_uid));
    (matches, log)
}

#[test]
fn storescu_stores_every_transfer_syntax_variant_and_findscu_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let variants = generate(dir.path());
    let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 11, "{names:?}");

    for (name, files_dir) in &variants {
        let (flag, ts) = variant(name);
        let files = dicom_files(files_dir);
        assert!(!files.is_empty(), "{name}: no files");
        let mut server = serve(&dir.path().join(format!("data-{name}")));

        let mut args: Vec<String> = [
            "-aet",
            "RADSERVE-TEST",
            "-aec",
            "RADSERVE",
            "-R",
            flag,
            "-v",
        ]
        .map(String::from)
        .to_vec();
        args.push("127.0.0.1".into());
        args.push(server.dicom_port.to_string());
        args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
        let output = dcmtk("storescu", &args);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{name}: storescu failed:\n{log}\nserver:\n{}",
            server.stderr()
        );
        let successes = log.matches("Received Store Response (Success)").count();
        assert_eq!(
            successes,
            files.len(),
            "{name}: not every instance succeeded:\n{log}\nserver:\n{}",
            server.stderr()
        );

        // The server received each one in the variant's own transfer syntax.
        let server_log = server.stderr();
        let stored = server_log
            .lines()
            .filter(|l| {
                l.contains("C-STORE stored") && l.contains(&format!("transfer_syntax={ts}"))
            })
            .count();
        assert_eq!(stored, files.len(), "{name}: server log:\n{server_log}");

        // Every study is found (the lossy JPEG variants have only the radiographs), with
        // every instance counted.
        let studies: std::collections::BTreeSet<_> =
            files.iter().filter_map(|f| f.parent()).collect();
        let (matches, find_log) = find_studies(server.dicom_port, &["PatientName=Wang*"]);
        assert_eq!(
            matches.len(),
            studies.len(),
            "{name}: {matches:?}\n{find_log}"
        );
        assert_eq!(
            matches.iter().map(|m| m.instances).sum::<u32>(),
            files.len() as u32,
            "{name}: {matches:?}"
        );
        for m in &matches {
            assert_eq!(m.charset, "ISO_IR 192", "{name}: {m:?}");
            assert_eq!(m.patient_name, "Wang^Fang=王^芳", "{name}: {m:?}");
        }
        // No patient name in the server's log at info level.
        assert!(!server_log.contains("Wang"), "{name}: {server_log}");
        let status = server.terminate();
        assert!(status.success(), "{name}: {status}");
    }
}

#[test]
fn findscu_matches_chinese_names_and_date_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let variants = generate(dir.path());
    let (_, explicit) = variants
        .iter()
        .find(|(name, _)| name == "explicit-le")
        .expect("explicit-le variant");
    let files = dicom_files(explicit);
    let server = serve(&dir.path().join("data"));
    let mut args: Vec<String> = ["-aet", "RADSERVE-TEST", "-aec", "RADSERVE", "127.0.0.1"]
        .map(String::from)
        .to_vec();
    args.push(server.dicom_port.to_string());
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let output = dcmtk("storescu", &args);
    assert!(output.status.success(), "{}", server.stderr());

    // The ideographic name, in a UTF-8 query.
    let (matches, log) = find_studies(
        server.dicom_port,
        &["SpecificCharacterSet=ISO_IR 192", "PatientName=*王*"],
    );
    assert_eq!(matches.len(), 3, "{matches:?}\n{log}");

    // Nobody called Li.
    let (matches, log) = find_studies(server.dicom_port, &["PatientName=Li*"]);
    assert!(matches.is_empty(), "{matches:?}\n{log}");

    // The studies are dated 2026-01-19 (CR), 2026-03-25 (CT) and 2026-10-06 (DX).
    let (matches, log) = find_studies(server.dicom_port, &["StudyDate=20260101-20260630"]);
    assert_eq!(matches.len(), 2, "{matches:?}\n{log}");
    let (matches, log) = find_studies(server.dicom_port, &["StudyDate=20260701-"]);
    assert_eq!(matches.len(), 1, "{matches:?}\n{log}");
    assert_eq!(matches[0].instances, 1);

    // A malformed date: a failure status, not a crash, and no matches.
    let (matches, log) = find_studies(server.dicom_port, &["StudyDate=2026-13-45"]);
    assert!(matches.is_empty(), "{matches:?}");
    assert!(
        log.contains("Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)"),
        "{log}"
    );
}

#[test]
fn a_bad_data_set_fails_and_the_association_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let variants = generate(dir.path());
    let (_, explicit) = variants
        .iter()
        .find(|(name, _)| name == "explicit-le")
        .expect("explicit-le variant");
    let ct = dicom_files(explicit)
        .into_iter()
        .find(|f| f.to_string_lossy().contains("CT"))
        .expect("a CT file");
    let file = std::fs::read(&ct).unwrap();
    let (meta, data_set) = split_part10(&file).expect("a Part 10 file");
    let uid = |element| {
        String::from_utf8_lossy(&meta[&(0x0002, element)])
            .trim_end_matches(['\0', ' '])
            .to_owned()
    };
    let (sop_class, sop_instance) = (uid(0x0002), uid(0x0003));
    assert_eq!(sop_class, CT_IMAGE_STORAGE);

    let server = serve(&dir.path().join("data"));
    let mut scu = RawScu::associate(
        server.dicom_port,
        "RADSERVE",
        "RAW-SCU",
        &[
            (1, CT_IMAGE_STORAGE, &[EXPLICIT_LE]),
            // MPEG-2: we cannot decode it, so this context is rejected (4)
            (3, CT_IMAGE_STORAGE, &["1.2.840.10008.1.2.4.100"]),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}; server:\n{}", server.stderr()));
    assert_eq!(
        scu.contexts,
        [
            (1, 0, EXPLICIT_LE.to_owned()),
            (3, 4, "1.2.840.10008.1.2".to_owned())
        ]
    );

    let truncated = &data_set[..data_set.len() / 2];
    let mut overlong = data_set.to_vec();
    let at = overlong
        .windows(6)
        .position(|w| w == [0x10, 0x00, 0x10, 0x00, b'P', b'N'])
        .expect("PatientName");
    overlong[at + 6..at + 8].copy_from_slice(&0x7FF0u16.to_le_bytes());
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let cases: [(&str, &str, &[u8]); 4] = [
        ("garbage", "1.2.826.0.1.3680043.10.9.1", &garbage),
        ("truncated", &sop_instance, truncated),
        ("overlong element", &sop_instance, &overlong),
        ("empty", "1.2.826.0.1.3680043.10.9.2", &[]),
    ];
    for (i, (what, uid, bytes)) in cases.iter().enumerate() {
        let (status, comment) = scu
            .c_store(1, 10 + i as u16, CT_IMAGE_STORAGE, uid, bytes, 4000)
            .unwrap_or_else(|e| panic!("{what}: {e}; server:\n{}", server.stderr()));
        assert!(
            (0xA900..=0xA9FF).contains(&status) || (0xC000..=0xCFFF).contains(&status),
            "{what}: status {status:#06x} {comment:?}"
        );
        assert!(
            comment.is_some_and(|c| !c.is_empty()),
            "{what}: no ErrorComment"
        );
    }

    // The same association then stores the real instance, twice (identical duplicate).
    for message_id in [20, 21] {
        let (status, comment) = scu
            .c_store(
                1,
                message_id,
                CT_IMAGE_STORAGE,
                &sop_instance,
                data_set,
                16000,
            )
            .unwrap();
        assert_eq!(status, 0x0000, "{comment:?}; server:\n{}", server.stderr());
    }
    scu.release().unwrap();

    // Only the good instance is in the index.
    let (matches, log) = find_studies(server.dicom_port, &[]);
    assert_eq!(matches.len(), 1, "{matches:?}\n{log}");
    assert_eq!(matches[0].instances, 1);
}
