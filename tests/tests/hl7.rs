//! HL7 v2 over MLLP end to end: the real binary with `[emr] mllp_port`, a real TCP client
//! sending an ADT^A04 and an ORM^O01 built from a dicom-samples study's ground truth, then
//! a malformed message, an oversize one and bytes outside a frame on the same connection
//! (each answered with a NAK, the connection kept), a good message after them, and the
//! study stored by `storescu`: its EMR link must be by accession to the HL7 order and
//! patient.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use radserve_tests::{
    RadServe, generate_samples, get_json_authorized, radserve_command, storescu_dir,
};
use serde_json::Value;

const TOKEN: &str = "hl7-e2e-token-5b2e8d17c3";
const MAX_MESSAGE_BYTES: usize = 65_536;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Sends raw bytes and reads one MLLP-framed reply; returns its segments.
fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Vec<String> {
    stream.write_all(bytes).unwrap();
    read_reply(stream)
}

fn read_reply(stream: &mut TcpStream) -> Vec<String> {
    let mut reply = Vec::new();
    while !reply.ends_with(b"\x1c\r") {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("reading the ACK");
        assert_ne!(n, 0, "the server closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    assert_eq!(reply[0], 0x0b, "reply starts with <VT>");
    let text = String::from_utf8(reply[1..reply.len() - 2].to_vec()).unwrap();
    text.split('\r')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn framed(message: &str) -> Vec<u8> {
    let mut out = vec![0x0b];
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(b"\x1c\r");
    out
}

fn segment<'a>(segments: &'a [String], id: &str) -> &'a str {
    segments
        .iter()
        .find(|s| s.starts_with(&format!("{id}|")))
        .unwrap_or_else(|| panic!("no {id} in {segments:?}"))
}

fn field(segment: &str, n: usize) -> &str {
    segment.split('|').nth(n).unwrap_or("")
}

/// MSA-1 and MSA-2 of a reply, after checking its MSH swaps the applications (when the
/// original's MSH could be read: MSA-2 is its control id).
fn msa(segments: &[String]) -> (String, String) {
    let msh = segment(segments, "MSH");
    assert!(field(msh, 8).starts_with("ACK"), "{msh}");
    let msa = segment(segments, "MSA");
    if !field(msa, 2).is_empty() {
        assert_eq!(field(msh, 2), "RADSERVE", "{msh}");
        assert_eq!(field(msh, 4), "EPIC", "{msh}");
    }
    (field(msa, 1).to_owned(), field(msa, 2).to_owned())
}

#[test]
fn hl7_orders_over_mllp_join_the_study() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_samples(
        &generated,
        &[
            "--seed",
            "41",
            "--ct",
            "0",
            "--xray",
            "1",
            "--xray-size",
            "64",
        ],
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(generated.join("manifest.json")).unwrap())
            .unwrap();
    let study = &manifest["studies"][0];
    let patient = &manifest["patients"][study["patient_index"].as_u64().unwrap() as usize];
    let study_uid = study["study_instance_uid"].as_str().unwrap();
    let accession = study["accession_number"].as_str().unwrap();
    let study_date = study["study_date"].as_str().unwrap();
    let patient_id = patient["patient_id"].as_str().unwrap();
    let issuer = patient["issuer"].as_str().unwrap();
    let family = patient["name"]["family"].as_str().unwrap();
    let given = patient["name"]["given"].as_str().unwrap();
    let birth = patient["birth_date"].as_str().unwrap().replace('-', "");
    let sex = patient["sex"].as_str().unwrap();

    let mllp_port = free_port();
    let config = dir.path().join("radserve.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nstable_after_s = 0.5\npoll_interval_ms = 100\ndemo_models = false\n\
             [emr]\nmllp_port = {mllp_port}\nmax_message_bytes = {MAX_MESSAGE_BYTES}\n"
        ),
    )
    .unwrap();
    let mut cmd = radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", TOKEN)
        .arg("serve")
        .args(["--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config);
    let server = RadServe::start(cmd);
    server.wait_ready();

    let mut stream = TcpStream::connect(("127.0.0.1", mllp_port)).expect("MLLP port open");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    // UTF-8 name (the manifest has names such as Novák).
    let msh = |kind: &str, control: &str| {
        format!(
            "MSH|^~\\&|EPIC|HOSP|RADSERVE|RAD|{study_date}080000||{kind}|{control}|P|2.5.1||||||UNICODE UTF-8\r"
        )
    };
    let pid = format!("PID|1||{patient_id}^^^{issuer}^MR||{family}^{given}||{birth}|{sex}\r");
    let adt = format!(
        "{}EVN|A04|{study_date}080000\r{pid}PV1|1|O|||||||||||||||||V-881^^^HOSP\r",
        msh("ADT^A04^ADT_A01", "CTRL-ADT-1")
    );
    let reply = exchange(&mut stream, &framed(&adt));
    assert_eq!(
        msa(&reply),
        ("AA".to_owned(), "CTRL-ADT-1".to_owned()),
        "{reply:?}"
    );
    assert_eq!(field(segment(&reply, "MSH"), 8), "ACK^A04^ACK");

    let orm = format!(
        "{}{pid}PV1|1|O|||||||||||||||||V-881^^^HOSP\r\
         ORC|NW|PO-4711^EPIC|FO-99^RIS||SC||||{study_date}080000+0000\r\
         OBR|1|PO-4711^EPIC|FO-99^RIS|36643-5^XR Chest 2 views^LN|||{study_date}|||||||||||{accession}|||||||||||||Cough\r",
        msh("ORM^O01", "CTRL-ORM-1")
    );
    let reply = exchange(&mut stream, &framed(&orm));
    assert_eq!(
        msa(&reply),
        ("AA".to_owned(), "CTRL-ORM-1".to_owned()),
        "{reply:?}"
    );

    // Malformed: an impossible birth date. AE with ERR naming PID^1^7.
    let bad = adt
        .replace(&format!("|{birth}|"), "|19621345|")
        .replace("CTRL-ADT-1", "CTRL-BAD-1");
    let reply = exchange(&mut stream, &framed(&bad));
    assert_eq!(msa(&reply), ("AE".to_owned(), "CTRL-BAD-1".to_owned()));
    let err = segment(&reply, "ERR");
    assert_eq!(field(err, 2), "PID^1^7", "{err}");
    assert!(field(err, 3).starts_with("102^"), "{err}");

    // An unsupported type: AR.
    let oru = format!("{}{pid}", msh("ORU^R01", "CTRL-ORU-1"));
    let reply = exchange(&mut stream, &framed(&oru));
    assert_eq!(msa(&reply), ("AR".to_owned(), "CTRL-ORU-1".to_owned()));
    assert_eq!(field(segment(&reply, "ERR"), 2), "MSH^1^9");

    // No MSH at all: AR naming MSH.
    let reply = exchange(&mut stream, &framed(&pid));
    assert_eq!(msa(&reply), ("AR".to_owned(), String::new()));
    assert!(
        field(segment(&reply, "ERR"), 2).starts_with("MSH^1"),
        "{reply:?}"
    );

    // Oversize: AR (with the control id read from its MSH), the rest discarded.
    let big = format!(
        "{}{pid}NTE|1||{}\r",
        msh("ADT^A08", "CTRL-BIG-1"),
        "x".repeat(MAX_MESSAGE_BYTES * 2)
    );
    let reply = exchange(&mut stream, &framed(&big));
    assert_eq!(msa(&reply), ("AR".to_owned(), "CTRL-BIG-1".to_owned()));

    // Bytes outside a frame, then a good message in the same write: a NAK, then AA.
    let a08 = adt
        .replace("ADT^A04^ADT_A01", "ADT^A08^ADT_A01")
        .replace("CTRL-ADT-1", "CTRL-ADT-2");
    let mut bytes = b"garbage before the frame".to_vec();
    bytes.extend(framed(&a08));
    let reply = exchange(&mut stream, &bytes);
    assert_eq!(msa(&reply).0, "AR", "{reply:?}");
    let reply = read_reply(&mut stream);
    assert_eq!(
        msa(&reply),
        ("AA".to_owned(), "CTRL-ADT-2".to_owned()),
        "{reply:?}"
    );
    drop(stream);

    // The study arrives: joined by accession to the HL7 order and patient.
    storescu_dir(&server, &generated.join("studies"));
    let patient_resource = format!("hl7-{issuer}-{patient_id}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let (status, body) =
            get_json_authorized(&server, &format!("/api/v1/studies/{study_uid}"), TOKEN);
        if status == 200 && !body["emr"]["link"].is_null() {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "{study_uid} never joined: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let link = &body["emr"]["link"];
    assert_eq!(link["state"], "linked", "{body}");
    assert_eq!(link["method"], "accession", "{body}");
    assert_eq!(link["patient"], patient_resource.as_str(), "{body}");
    assert_eq!(link["order"], "hl7-order-EPIC-PO-4711", "{body}");
    let order = &body["emr"]["order"]["record"];
    assert_eq!(order["status"], "active", "{body}");
    assert_eq!(order["code"], "36643-5", "{body}");
    assert_eq!(order["encounter"], "hl7-enc-HOSP-V-881", "{body}");
    assert_eq!(body["emr"]["order"]["reason_for_exam"], "Cough", "{body}");
    assert_eq!(
        body["emr"]["patient"]["record"]["id"],
        patient_resource.as_str()
    );
    assert_eq!(
        body["emr"]["encounter"]["record"]["class_code"], "AMB",
        "{body}"
    );
    // No patient names in the log at info level.
    let stderr = server.stderr();
    assert!(stderr.contains("HL7 message stored"), "{stderr}");
    for line in stderr
        .lines()
        .filter(|l| l.contains("HL7") || l.contains("mllp"))
    {
        assert!(
            !line.contains(family) && !line.contains(patient_id),
            "the log names the patient: {line}"
        );
    }
}
