//! DIMSE: the DICOM upper-layer listener (PS3.7, PS3.8) on dicom-ul's async API.
//!
//! - [`serve`] (here): the accept loop; one tokio task per association, TCP_NODELAY on
//!   every socket, a bounded grace period at shutdown.
//! - [`association`]: one association: negotiation policy (our AE title, allowed
//!   callers, the SOP classes and transfer syntaxes we serve), P-DATA reassembly,
//!   dispatch, responses, release/abort.
//! - [`command`]: command sets, always implicit VR little endian.
//! - [`store_scp`]: C-STORE, streamed into the [`Archive`].
//! - [`find_scp`]: C-FIND, Study Root, STUDY/SERIES/IMAGE levels.
//! - [`storage_classes`]: the storage SOP classes we accept.
//! - [`raw_text`]: re-decoding text under ISO 2022 / multi-valued SpecificCharacterSet.
//!
//! Services: Verification (C-ECHO), Storage (C-STORE, every storage SOP class), Study
//! Root Query/Retrieve – FIND (C-FIND, with C-CANCEL).

pub mod association;
pub mod command;
pub mod find_scp;
pub mod raw_text;
pub mod storage_classes;
pub mod store_scp;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::DicomSettings;
use crate::shutdown::Shutdown;
use crate::store::Archive;

/// How long a new connection has to send its A-ASSOCIATE-RQ (dcmtk's ACSE timeout).
pub const ACSE_TIMEOUT: Duration = Duration::from_secs(30);
/// An established association that sends nothing for this long is aborted.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A PDU that cannot be written within this long aborts the association.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// At shutdown, associations get this long to finish before their tasks are cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Accepts associations on `listener` until `shutdown`, then waits for the running ones
/// (idle ones are aborted at once; a message being handled is finished first).
pub async fn serve(
    listener: TcpListener,
    settings: Arc<DicomSettings>,
    archive: Archive,
    mut shutdown: Shutdown,
) {
    let mut associations = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = info_span!("association", %peer);
                    associations.spawn(
                        association::run(
                            stream,
                            peer,
                            settings.clone(),
                            archive.clone(),
                            shutdown.clone(),
                        )
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "cannot accept DICOM connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(joined) = associations.join_next(), if !associations.is_empty() => {
                report_panic(joined);
            }
        }
    }
    drop(listener);

    let drain = async {
        while let Some(joined) = associations.join_next().await {
            report_panic(joined);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!(
            remaining = associations.len(),
            "associations still running after {}s; cancelling them",
            SHUTDOWN_GRACE.as_secs()
        );
        associations.shutdown().await;
    }
    info!("DICOM listener stopped");
}

fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    match joined {
        Err(e) if e.is_panic() => error!("association task panicked: {e}"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::association::{
        AcceptedContext, Assembler, Event, Message, ProtocolError, response_without_data_set,
    };
    use super::command::{self, field, status};
    use super::*;
    use crate::config::{AeTitle, AllowedCaller};
    use crate::shutdown;
    use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::InMemDicomObject;
    use dicom_transfer_syntax_registry::entries::{
        EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
    };
    use dicom_ul::Pdu;
    use dicom_ul::association::{ClientAssociationOptions, Error as UlError};
    use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
    use std::net::SocketAddr;

    const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    fn settings(allowed: &[&str]) -> Arc<DicomSettings> {
        Arc::new(DicomSettings {
            port: 0,
            ae_title: AeTitle::new("RADSERVE").unwrap(),
            allowed_callers: allowed
                .iter()
                .map(|s| s.parse::<AllowedCaller>().unwrap())
                .collect(),
            max_pdu: 16384,
        })
    }

    struct Running {
        addr: SocketAddr,
        trigger: shutdown::Trigger,
        task: tokio::task::JoinHandle<()>,
        archive: Archive,
        _data: tempfile::TempDir,
    }

    /// Starts the listener on a free port over an archive in a temporary directory.
    async fn start(settings: Arc<DicomSettings>) -> Running {
        let (data, archive) = crate::store::temp_archive().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, handle) = shutdown::channel();
        let task = tokio::spawn(serve(listener, settings, archive.clone(), handle));
        Running {
            addr,
            trigger,
            task,
            archive,
            _data: data,
        }
    }

    fn command_pdu(context_id: u8, elements: Vec<DataElement<InMemDicomObject>>) -> Pdu {
        let mut data = Vec::new();
        InMemDicomObject::command_from_element_iter(elements)
            .write_dataset_with_ts(&mut data, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        }
    }

    fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::US, PrimitiveValue::from(value))
    }

    fn ui(tag: Tag, value: &str) -> DataElement<InMemDicomObject> {
        let mut value = value.to_owned();
        if value.len() % 2 == 1 {
            value.push('\0');
        }
        DataElement::new(tag, VR::UI, PrimitiveValue::from(value))
    }

    fn echo_rq(context_id: u8, message_id: u16) -> Pdu {
        command_pdu(
            context_id,
            vec![
                ui(tags::AFFECTED_SOP_CLASS_UID, uids::VERIFICATION),
                us(tags::COMMAND_FIELD, 0x0030),
                us(tags::MESSAGE_ID, message_id),
                us(tags::COMMAND_DATA_SET_TYPE, 0x0101),
            ],
        )
    }

    fn store_rq(context_id: u8, message_id: u16, sop_instance: &str) -> Pdu {
        command_pdu(
            context_id,
            vec![
                ui(tags::AFFECTED_SOP_CLASS_UID, CT_IMAGE_STORAGE),
                us(tags::COMMAND_FIELD, field::C_STORE_RQ),
                us(tags::MESSAGE_ID, message_id),
                us(tags::PRIORITY, 0),
                us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
                ui(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance),
            ],
        )
    }

    fn find_rq(context_id: u8, message_id: u16) -> Pdu {
        command_pdu(
            context_id,
            vec![
                ui(tags::AFFECTED_SOP_CLASS_UID, find_scp::STUDY_ROOT_FIND),
                us(tags::COMMAND_FIELD, field::C_FIND_RQ),
                us(tags::MESSAGE_ID, message_id),
                us(tags::PRIORITY, 0),
                us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
            ],
        )
    }

    fn cancel_rq(context_id: u8, message_id: u16) -> Pdu {
        command_pdu(
            context_id,
            vec![
                us(tags::COMMAND_FIELD, field::C_CANCEL_RQ),
                us(tags::MESSAGE_ID_BEING_RESPONDED_TO, message_id),
                us(tags::COMMAND_DATA_SET_TYPE, 0x0101),
            ],
        )
    }

    /// Data set fragments of at most `fragment` bytes.
    fn data_pdus(context_id: u8, bytes: &[u8], fragment: usize) -> Vec<Pdu> {
        let count = bytes.len().div_ceil(fragment);
        bytes
            .chunks(fragment)
            .enumerate()
            .map(|(i, chunk)| Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: context_id,
                    value_type: PDataValueType::Data,
                    is_last: i + 1 == count,
                    data: chunk.to_vec(),
                }],
            })
            .collect()
    }

    /// A small CT instance in explicit VR little endian, UTF-8 text.
    fn ct_instance(study: &str, sop_instance: &str, patient: &str, date: &str) -> Vec<u8> {
        let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        let obj = InMemDicomObject::from_element_iter([
            text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
            ui(tags::SOP_CLASS_UID, CT_IMAGE_STORAGE),
            ui(tags::SOP_INSTANCE_UID, sop_instance),
            text(tags::STUDY_DATE, VR::DA, date),
            text(tags::MODALITY, VR::CS, "CT"),
            text(tags::PATIENT_NAME, VR::PN, patient),
            // one patient per study in these tests
            text(tags::PATIENT_ID, VR::LO, &format!("P-{study}")),
            ui(tags::STUDY_INSTANCE_UID, study),
            ui(tags::SERIES_INSTANCE_UID, &format!("{study}.1")),
            text(tags::SERIES_NUMBER, VR::IS, "1"),
            text(tags::INSTANCE_NUMBER, VR::IS, "1"),
            us(tags::ROWS, 2),
            us(tags::COLUMNS, 2),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16([1u16, 2, 3, 4].into_iter().collect()),
            ),
        ]);
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        bytes
    }

    fn find_identifier(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
        let mut bytes = Vec::new();
        InMemDicomObject::from_element_iter(elements)
            .write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        bytes
    }

    fn command_of(pdu: &Pdu) -> InMemDicomObject {
        let Pdu::PData { data } = pdu else {
            panic!("expected P-DATA, got {pdu:?}")
        };
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].value_type, PDataValueType::Command);
        assert!(data[0].is_last);
        InMemDicomObject::read_dataset_with_ts(
            &data[0].data[..],
            &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap()
    }

    fn status_of(pdu: &Pdu) -> u16 {
        let obj = command_of(pdu);
        obj.element(tags::STATUS).unwrap().to_int::<u16>().unwrap()
    }

    fn comment_of(pdu: &Pdu) -> Option<String> {
        command_of(pdu)
            .element(tags::ERROR_COMMENT)
            .ok()
            .map(|e| e.to_str().unwrap().trim_end().to_owned())
    }

    fn response_of(pdu: Pdu) -> command::Command {
        let Pdu::PData { data } = pdu else {
            panic!("expected P-DATA, got {pdu:?}")
        };
        command::Command::parse(&data[0].data).unwrap()
    }

    #[tokio::test]
    async fn answers_c_echo_and_releases() {
        let server = start(settings(&[])).await;
        let mut scu = ClientAssociationOptions::new()
            .calling_ae_title("TESTSCU")
            .called_ae_title("RADSERVE")
            .with_presentation_context(uids::VERIFICATION, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])
            .establish_async(server.addr)
            .await
            .unwrap();
        for message_id in [1, 2] {
            scu.send(&echo_rq(1, message_id)).await.unwrap();
            let pdu = scu.receive().await.unwrap();
            assert_eq!(status_of(&pdu), status::SUCCESS);
            let rsp = response_of(pdu);
            assert_eq!(rsp.field, field::C_ECHO_RSP);
            assert_eq!(
                rsp.affected_sop_class_uid.as_deref(),
                Some(uids::VERIFICATION)
            );
            assert!(!rsp.has_data_set);
        }
        scu.release().await.unwrap();
        drop(server.trigger);
        server.task.await.unwrap();
    }

    /// The value of one series in the Prometheus exposition (0 when absent). The recorder
    /// is shared by every test in the process, so tests compare before and after.
    fn metric(series: &str) -> f64 {
        crate::metrics::handle()
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Sends one C-STORE and returns its status.
    async fn store(
        scu: &mut dicom_ul::association::client::AsyncClientAssociation<tokio::net::TcpStream>,
        context_id: u8,
        message_id: u16,
        uid: &str,
        bytes: &[u8],
    ) -> u16 {
        scu.send(&store_rq(context_id, message_id, uid))
            .await
            .unwrap();
        for pdu in data_pdus(context_id, bytes, 16000) {
            scu.send(&pdu).await.unwrap();
        }
        status_of(&scu.receive().await.unwrap())
    }

    #[tokio::test]
    async fn counts_associations_instances_and_rejections_and_audits_finds() {
        const REJECTED_CALLED: &str =
            r#"radserve_rejections_total{route="dimse",reason="called_ae_wrong"}"#;
        const REJECTED_CONTEXT: &str =
            r#"radserve_rejections_total{route="dimse",reason="no_acceptable_context"}"#;
        const REJECTED_INSTANCE: &str =
            r#"radserve_rejections_total{route="dimse",reason="invalid_instance"}"#;
        const RECEIVED: &str = r#"radserve_instances_received_total{route="dimse",transfer_syntax="1.2.840.10008.1.2.1"}"#;
        const BYTES: &str =
            r#"radserve_received_bytes_total{route="dimse",transfer_syntax="1.2.840.10008.1.2.1"}"#;
        const STORED: &str = r#"radserve_store_duration_seconds_count{outcome="stored"}"#;
        const INVALID: &str = r#"radserve_store_duration_seconds_count{outcome="invalid"}"#;
        const ACTIVE: &str = "radserve_active_associations";
        let server = start(settings(&[])).await;
        let before = |series: &[&str]| series.iter().map(|s| metric(s)).collect::<Vec<_>>();
        let watched = [
            REJECTED_CALLED,
            REJECTED_CONTEXT,
            REJECTED_INSTANCE,
            RECEIVED,
            BYTES,
            STORED,
            INVALID,
        ];
        let start_values = before(&watched);

        // Rejected: a wrong called AE title; nothing acceptable offered.
        let err = ClientAssociationOptions::new()
            .called_ae_title("SOMEONE-ELSE")
            .with_abstract_syntax(uids::VERIFICATION)
            .establish_async(server.addr)
            .await
            .unwrap_err();
        assert!(matches!(err, UlError::Rejected { .. }), "{err:?}");
        let useless = ClientAssociationOptions::new()
            .called_ae_title("RADSERVE")
            .with_presentation_context(CT_IMAGE_STORAGE, vec!["1.2.840.10008.1.2.4.100"])
            .establish_async(server.addr)
            .await;
        if let Ok(mut assoc) = useless {
            // the server aborts it: the next read ends
            assert!(assoc.receive().await.is_err());
        }

        let mut scu = ClientAssociationOptions::new()
            .calling_ae_title("METRICSCU")
            .called_ae_title("RADSERVE")
            .with_presentation_context(CT_IMAGE_STORAGE, vec![EXPLICIT_LE])
            .with_presentation_context(find_scp::STUDY_ROOT_FIND, vec![EXPLICIT_LE])
            .establish_async(server.addr)
            .await
            .unwrap();
        // Our association is open while this is read (others may be too).
        assert!(metric(ACTIVE) >= 1.0);
        let good = ct_instance("1.2.826.0.7.1", "1.2.826.0.7.1.1.1", "Li^Lei", "20260101");
        assert_eq!(
            store(&mut scu, 1, 1, "1.2.826.0.7.1.1.1", &good).await,
            status::SUCCESS
        );
        let garbage = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];
        assert_eq!(
            store(&mut scu, 1, 2, "1.2.826.0.7.9", &garbage).await,
            status::CANNOT_UNDERSTAND
        );

        // One C-FIND (no match) writes one audit row.
        let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        let identifier = find_identifier(vec![
            text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
            text(tags::PATIENT_ID, VR::LO, "NOBODY"),
        ]);
        scu.send(&find_rq(3, 5)).await.unwrap();
        for pdu in data_pdus(3, &identifier, 16000) {
            scu.send(&pdu).await.unwrap();
        }
        assert_eq!(status_of(&scu.receive().await.unwrap()), status::SUCCESS);
        scu.release().await.unwrap();

        let after = before(&watched);
        let delta: Vec<f64> = after
            .iter()
            .zip(&start_values)
            .map(|(a, b)| a - b)
            .collect();
        assert!(delta[0] >= 1.0, "called AE rejection: {delta:?}");
        assert!(delta[1] >= 1.0, "no acceptable context: {delta:?}");
        assert!(delta[2] >= 1.0, "refused instance: {delta:?}");
        assert!(delta[3] >= 1.0, "instances received: {delta:?}");
        assert!(delta[4] >= good.len() as f64, "bytes received: {delta:?}");
        assert!(delta[5] >= 1.0, "store latency (stored): {delta:?}");
        assert!(delta[6] >= 1.0, "store latency (invalid): {delta:?}");

        let audit = server.archive.audit_records(100, 0).await.unwrap();
        let finds: Vec<_> = audit
            .iter()
            .filter(|r| r.action.starts_with("cfind"))
            .collect();
        assert_eq!(finds.len(), 1, "{audit:?}");
        assert_eq!(finds[0].action, "cfind.study");
        assert_eq!(finds[0].user, "ae:METRICSCU");
        assert_eq!(finds[0].role, "dimse");
        assert_eq!(finds[0].outcome, "success");
        assert!(!finds[0].resource.contains("NOBODY"));
    }

    /// PS3.5 H.3.1 / K.2 names: stored over C-STORE, found by an ISO 2022 C-FIND
    /// identifier, and read back as metadata JSON, all in correct UTF-8.
    #[tokio::test]
    async fn iso_2022_names_through_store_find_and_metadata() {
        use super::raw_text::tests::{explicit_le, yamada_iso2022, zhang_iso2022};
        let server = start(settings(&[])).await;
        let mut scu = ClientAssociationOptions::new()
            .called_ae_title("RADSERVE")
            .with_presentation_context(CT_IMAGE_STORAGE, vec![EXPLICIT_LE])
            .with_presentation_context(find_scp::STUDY_ROOT_FIND, vec![EXPLICIT_LE])
            .establish_async(server.addr)
            .await
            .unwrap();
        let cases = [
            (
                &b"\\ISO 2022 IR 87"[..],
                yamada_iso2022(),
                "1.2.826.0.8.1",
                ["Yamada^Tarou", "山田^太郎", "やまだ^たろう"],
            ),
            (
                &b"\\ISO 2022 IR 58"[..],
                zhang_iso2022(),
                "1.2.826.0.8.2",
                ["Zhang^XiaoDong", "章^小东", ""],
            ),
        ];
        for (i, (scs, name, study, groups)) in cases.iter().enumerate() {
            let sop = format!("{study}.1.1");
            let series = format!("{study}.1");
            let instance = explicit_le(&[
                (tags::SPECIFIC_CHARACTER_SET, VR::CS, scs),
                (tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE.as_bytes()),
                (tags::SOP_INSTANCE_UID, VR::UI, sop.as_bytes()),
                (tags::STUDY_DATE, VR::DA, b"20260401"),
                (tags::MODALITY, VR::CS, b"CT"),
                (tags::PATIENT_NAME, VR::PN, name),
                (tags::PATIENT_ID, VR::LO, format!("P{i}").as_bytes()),
                (tags::STUDY_INSTANCE_UID, VR::UI, study.as_bytes()),
                (tags::SERIES_INSTANCE_UID, VR::UI, series.as_bytes()),
            ]);
            assert_eq!(
                store(&mut scu, 1, 40 + i as u16, &sop, &instance).await,
                status::SUCCESS
            );

            // C-FIND with the same ISO 2022 bytes as an exact PatientName key.
            let identifier = explicit_le(&[
                (tags::SPECIFIC_CHARACTER_SET, VR::CS, scs),
                (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
                (tags::PATIENT_NAME, VR::PN, name),
                (tags::STUDY_INSTANCE_UID, VR::UI, b""),
            ]);
            scu.send(&find_rq(3, 50 + i as u16)).await.unwrap();
            for pdu in data_pdus(3, &identifier, 16000) {
                scu.send(&pdu).await.unwrap();
            }
            let mut found = Vec::new();
            loop {
                let rsp = scu.receive().await.unwrap();
                if status_of(&rsp) != status::PENDING {
                    assert_eq!(status_of(&rsp), status::SUCCESS, "{:?}", comment_of(&rsp));
                    break;
                }
                let Pdu::PData { data } = scu.receive().await.unwrap() else {
                    panic!("expected the identifier")
                };
                let bytes: Vec<u8> = data.into_iter().flat_map(|pdv| pdv.data).collect();
                let obj = InMemDicomObject::read_dataset_with_ts(
                    &bytes[..],
                    &EXPLICIT_VR_LITTLE_ENDIAN.erased(),
                )
                .unwrap();
                let get = |tag| {
                    obj.element(tag)
                        .map(|e| e.to_str().unwrap().trim_end_matches([' ', '\0']).to_owned())
                        .unwrap_or_default()
                };
                found.push((get(tags::STUDY_INSTANCE_UID), get(tags::PATIENT_NAME)));
            }
            let expected_name = groups.join("=");
            let expected_name = expected_name.trim_end_matches('=');
            assert_eq!(found.len(), 1, "case {i}: {found:?}");
            assert_eq!(found[0].0, *study);
            assert_eq!(found[0].1.trim_end_matches('='), expected_name, "case {i}");

            // Metadata JSON from the stored blob, as WADO-RS builds it.
            let stored = server
                .archive
                .locate(&crate::store::Scope::Study {
                    study: study.to_string(),
                })
                .await
                .unwrap();
            assert_eq!(stored.len(), 1);
            let blob = server.archive.read_blob(&stored[0]).await.unwrap();
            let mut obj = crate::dicomweb::wado::parse_part10(&blob, false).unwrap();
            assert!(crate::dicomweb::json::redecode_part10_text(&mut obj, &blob) >= 1);
            let json = crate::dicomweb::json::dataset_to_json(&obj, "http://x/i");
            let pn = &json["00100010"]["Value"][0];
            for (key, value) in ["Alphabetic", "Ideographic", "Phonetic"].iter().zip(groups) {
                if value.is_empty() {
                    assert!(pn.get(*key).is_none_or(|v| v == ""), "case {i}: {pn}");
                } else {
                    assert_eq!(pn[*key], *value, "case {i}: {pn}");
                }
            }
        }
        scu.release().await.unwrap();
    }

    #[tokio::test]
    async fn rejects_a_wrong_called_ae_title() {
        let server = start(settings(&[])).await;
        let err = ClientAssociationOptions::new()
            .called_ae_title("SOMEONE-ELSE")
            .with_abstract_syntax(uids::VERIFICATION)
            .establish_async(server.addr)
            .await
            .unwrap_err();
        assert!(matches!(err, UlError::Rejected { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn enforces_allowed_callers() {
        let server = start(settings(&["PACS", "CT1@10.9.9.9"])).await;
        let addr = server.addr;
        let connect = |calling: &'static str| {
            ClientAssociationOptions::new()
                .calling_ae_title(calling)
                .called_ae_title("RADSERVE")
                .with_abstract_syntax(uids::VERIFICATION)
                .establish_async(addr)
        };
        connect("PACS").await.unwrap().release().await.unwrap();
        let err = connect("INTRUDER").await.unwrap_err();
        assert!(matches!(err, UlError::Rejected { .. }), "{err:?}");
        // listed, but only from another host
        let err = connect("CT1").await.unwrap_err();
        assert!(matches!(err, UlError::Rejected { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn negotiates_sop_classes_and_transfer_syntaxes() {
        let server = start(settings(&[])).await;
        const MPEG2: &str = "1.2.840.10008.1.2.4.100";
        const HTJ2K: &str = "1.2.840.10008.1.2.4.201";
        let scu = ClientAssociationOptions::new()
            .called_ae_title("RADSERVE")
            .with_abstract_syntax(uids::VERIFICATION)
            // only syntaxes we cannot decode: rejected
            .with_presentation_context(CT_IMAGE_STORAGE, vec![MPEG2, HTJ2K])
            // one we can among others: accepted with it
            .with_presentation_context(
                "1.2.840.10008.5.1.4.1.1.1.1",
                vec![HTJ2K, "1.2.840.10008.1.2.4.70"],
            )
            .with_presentation_context(find_scp::STUDY_ROOT_FIND, vec![EXPLICIT_LE])
            // not a storage class, not a service we offer
            .with_abstract_syntax("1.2.840.10008.5.1.4.1.2.2.2")
            .establish_async(server.addr)
            .await
            .unwrap();
        // The client lists only the accepted contexts: the CT context (no syntax we
        // decode) and the MOVE context (a service we do not offer) are missing.
        let accepted: Vec<_> = scu
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| (pc.abstract_syntax.as_str(), pc.transfer_syntax.as_str()))
            .collect();
        assert_eq!(
            accepted,
            [
                (uids::VERIFICATION, EXPLICIT_LE),
                ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.4.70"),
                (find_scp::STUDY_ROOT_FIND, EXPLICIT_LE),
            ]
        );
        scu.release().await.unwrap();
    }

    #[tokio::test]
    async fn aborts_on_garbage_and_keeps_serving() {
        let server = start(settings(&[])).await;
        let addr = server.addr;
        let connect = || {
            ClientAssociationOptions::new()
                .called_ae_title("RADSERVE")
                .with_abstract_syntax(uids::VERIFICATION)
                .establish_async(addr)
        };
        for bad in [
            // not a command set
            Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: 1,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: vec![0xff; 40],
                }],
            },
            // a context that was never negotiated
            echo_rq(99, 1),
        ] {
            let mut scu = connect().await.unwrap();
            scu.send(&bad).await.unwrap();
            let answer = scu.receive().await;
            assert!(
                matches!(answer, Ok(Pdu::AbortRQ { .. }) | Err(_)),
                "expected an abort, got {answer:?}"
            );
        }
        // the listener is still fine
        let mut scu = connect().await.unwrap();
        scu.send(&echo_rq(1, 5)).await.unwrap();
        assert_eq!(status_of(&scu.receive().await.unwrap()), status::SUCCESS);
        scu.release().await.unwrap();
    }

    #[tokio::test]
    async fn stores_finds_and_survives_bad_data_sets() {
        let server = start(settings(&[])).await;
        let mut scu = ClientAssociationOptions::new()
            .called_ae_title("RADSERVE")
            .with_presentation_context(CT_IMAGE_STORAGE, vec![EXPLICIT_LE])
            .with_presentation_context(find_scp::STUDY_ROOT_FIND, vec![EXPLICIT_LE])
            .establish_async(server.addr)
            .await
            .unwrap();
        let (store_ctx, find_ctx) = (1, 3);

        // A good instance, in many small fragments.
        let good = ct_instance(
            "1.2.826.0.1.1",
            "1.2.826.0.1.1.1.1",
            "Wang^Fang=王^芳",
            "20260325",
        );
        scu.send(&store_rq(store_ctx, 1, "1.2.826.0.1.1.1.1"))
            .await
            .unwrap();
        for pdu in data_pdus(store_ctx, &good, 64) {
            scu.send(&pdu).await.unwrap();
        }
        let rsp = scu.receive().await.unwrap();
        assert_eq!(status_of(&rsp), status::SUCCESS, "{:?}", comment_of(&rsp));

        // Garbage, a truncated data set, and one declaring an element longer than sent.
        let truncated = &good[..good.len() / 2];
        let mut overlong = ct_instance("1.2.826.0.1.2", "1.2.826.0.1.2.1.1", "A^B", "20260101");
        let at = overlong
            .windows(4)
            .position(|w| w == [0x10, 0x00, 0x10, 0x00])
            .unwrap();
        // PatientName (0010,0010) PN: its 2-byte length follows tag and VR
        overlong[at + 6] = 0xF0;
        overlong[at + 7] = 0x7F;
        let bad: [(&str, &[u8]); 3] = [
            (
                "1.2.826.0.9.1",
                &[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04],
            ),
            ("1.2.826.0.9.2", truncated),
            ("1.2.826.0.9.3", &overlong),
        ];
        for (i, (uid, bytes)) in bad.iter().enumerate() {
            scu.send(&store_rq(store_ctx, 10 + i as u16, uid))
                .await
                .unwrap();
            for pdu in data_pdus(store_ctx, bytes, 1000) {
                scu.send(&pdu).await.unwrap();
            }
            let rsp = scu.receive().await.unwrap();
            let status = status_of(&rsp);
            assert!(
                (0xA900..=0xA9FF).contains(&status) || (0xC000..=0xCFFF).contains(&status),
                "case {i}: status {status:#06x}"
            );
            assert!(comment_of(&rsp).is_some_and(|c| !c.is_empty()), "case {i}");
        }

        // The association is still usable, and the same bytes again are a success.
        let second = ct_instance("1.2.826.0.1.3", "1.2.826.0.1.3.1.1", "Li^Lei", "20250101");
        for (message_id, uid, bytes) in [
            (20, "1.2.826.0.1.3.1.1", &second),
            (21, "1.2.826.0.1.1.1.1", &good),
        ] {
            scu.send(&store_rq(store_ctx, message_id, uid))
                .await
                .unwrap();
            for pdu in data_pdus(store_ctx, bytes, 16000) {
                scu.send(&pdu).await.unwrap();
            }
            let rsp = scu.receive().await.unwrap();
            assert_eq!(status_of(&rsp), status::SUCCESS, "{:?}", comment_of(&rsp));
            let uid_back = command_of(&rsp)
                .element(tags::AFFECTED_SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_owned();
            assert_eq!(uid_back, uid);
        }

        // C-FIND: a Chinese name with a wildcard, at STUDY level.
        let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        let identifier = find_identifier(vec![
            text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
            text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
            text(tags::PATIENT_NAME, VR::PN, "*王*"),
            text(tags::STUDY_DATE, VR::DA, "20260101-"),
            text(tags::STUDY_INSTANCE_UID, VR::UI, ""),
            text(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, ""),
        ]);
        scu.send(&find_rq(find_ctx, 30)).await.unwrap();
        for pdu in data_pdus(find_ctx, &identifier, 16000) {
            scu.send(&pdu).await.unwrap();
        }
        let mut found = Vec::new();
        loop {
            let rsp = scu.receive().await.unwrap();
            let status = status_of(&rsp);
            if status != status::PENDING {
                assert_eq!(status, status::SUCCESS, "{:?}", comment_of(&rsp));
                break;
            }
            let Pdu::PData { data } = scu.receive().await.unwrap() else {
                panic!("expected the identifier")
            };
            let bytes: Vec<u8> = data.into_iter().flat_map(|pdv| pdv.data).collect();
            let obj = InMemDicomObject::read_dataset_with_ts(
                &bytes[..],
                &EXPLICIT_VR_LITTLE_ENDIAN.erased(),
            )
            .unwrap();
            let get = |tag| {
                obj.element(tag)
                    .map(|e| e.to_str().unwrap().trim_end_matches([' ', '\0']).to_owned())
                    .unwrap_or_default()
            };
            found.push((
                get(tags::STUDY_INSTANCE_UID),
                get(tags::PATIENT_NAME),
                get(tags::SPECIFIC_CHARACTER_SET),
                get(tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
            ));
        }
        assert_eq!(
            found,
            [(
                "1.2.826.0.1.1".to_owned(),
                "Wang^Fang=王^芳".to_owned(),
                "ISO_IR 192".to_owned(),
                "1".to_owned()
            )]
        );

        // A bad identifier: a failure status with a comment, and the association goes on.
        let bad_identifier = find_identifier(vec![
            text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
            text(tags::STUDY_DATE, VR::DA, "yesterday"),
        ]);
        scu.send(&find_rq(find_ctx, 31)).await.unwrap();
        for pdu in data_pdus(find_ctx, &bad_identifier, 16000) {
            scu.send(&pdu).await.unwrap();
        }
        let rsp = scu.receive().await.unwrap();
        assert_eq!(status_of(&rsp), status::DATA_SET_DOES_NOT_MATCH);
        assert!(comment_of(&rsp).unwrap().contains("StudyDate"));

        // C-CANCEL sent right behind the request: matching stops with 0xFE00.
        let all = find_identifier(vec![
            text(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
            text(tags::STUDY_INSTANCE_UID, VR::UI, ""),
        ]);
        scu.send(&find_rq(find_ctx, 32)).await.unwrap();
        for pdu in data_pdus(find_ctx, &all, 16000) {
            scu.send(&pdu).await.unwrap();
        }
        scu.send(&cancel_rq(find_ctx, 32)).await.unwrap();
        let mut pending = 0;
        let final_status = loop {
            let rsp = scu.receive().await.unwrap();
            let status = status_of(&rsp);
            if status != status::PENDING {
                break status;
            }
            pending += 1;
            scu.receive().await.unwrap();
        };
        assert_eq!(final_status, status::CANCEL);
        assert!(pending < 2, "{pending} matches sent after the cancel");

        // and an echo still works afterwards on the same association (no context for it:
        // answered as an unrecognized operation, not an abort)
        scu.send(&echo_rq(store_ctx, 40)).await.unwrap();
        assert_eq!(
            status_of(&scu.receive().await.unwrap()),
            status::UNRECOGNIZED_OPERATION
        );
        scu.release().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_aborts_idle_associations_and_stops() {
        let server = start(settings(&[])).await;
        let mut scu = ClientAssociationOptions::new()
            .called_ae_title("RADSERVE")
            .with_abstract_syntax(uids::VERIFICATION)
            .establish_async(server.addr)
            .await
            .unwrap();
        server.trigger.fire();
        let answer = tokio::time::timeout(Duration::from_secs(5), scu.receive())
            .await
            .expect("the server should abort at once");
        assert!(
            matches!(answer, Ok(Pdu::AbortRQ { .. }) | Err(_)),
            "{answer:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("the listener should stop")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    }

    // --- message assembly, without a network ---

    fn verification() -> Vec<AcceptedContext> {
        vec![AcceptedContext {
            id: 1,
            abstract_syntax: uids::VERIFICATION.to_owned(),
            transfer_syntax: uids::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
        }]
    }

    fn ct_context() -> Vec<AcceptedContext> {
        vec![AcceptedContext {
            id: 1,
            abstract_syntax: CT_IMAGE_STORAGE.to_owned(),
            transfer_syntax: EXPLICIT_LE.to_owned(),
        }]
    }

    fn pdvs(pdu: Pdu) -> Vec<PDataValue> {
        match pdu {
            Pdu::PData { data } => data,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn assembles_fragmented_commands() {
        let whole = pdvs(echo_rq(1, 9)).remove(0);
        let (a, b) = whole.data.split_at(10);
        let mut assembler = Assembler::default();
        let first = PDataValue {
            is_last: false,
            data: a.to_vec(),
            ..whole.clone()
        };
        let second = PDataValue {
            data: b.to_vec(),
            ..whole.clone()
        };
        assert_eq!(assembler.push(first, &verification()).unwrap(), None);
        let Some(Event::Message(message)) = assembler.push(second, &verification()).unwrap() else {
            panic!("expected a whole message")
        };
        assert_eq!(message.command.field, field::C_ECHO_RQ);
        assert_eq!(message.command.message_id, Some(9));
        assert_eq!(
            response_without_data_set(&message, &verification())
                .unwrap()
                .map(|r| r.status),
            Some(status::SUCCESS)
        );
    }

    #[test]
    fn passes_data_set_fragments_through() {
        let store = pdvs(store_rq(1, 3, "1.2.3")).remove(0);
        let data = |is_last, len| PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Data,
            is_last,
            data: vec![7; len],
        };
        let mut assembler = Assembler::default();
        let Some(Event::DataSetBegins(message)) = assembler.push(store, &ct_context()).unwrap()
        else {
            panic!("expected the start of a data set")
        };
        assert_eq!(message.command.field, field::C_STORE_RQ);
        assert_eq!(
            message.command.affected_sop_instance_uid.as_deref(),
            Some("1.2.3")
        );
        assert_eq!(
            assembler.push(data(false, 100), &ct_context()).unwrap(),
            Some(Event::DataSetFragment {
                data: vec![7; 100],
                is_last: false
            })
        );
        assert_eq!(
            assembler.push(data(true, 20), &ct_context()).unwrap(),
            Some(Event::DataSetFragment {
                data: vec![7; 20],
                is_last: true
            })
        );
        // the data set is over: more data is a protocol error
        assert!(matches!(
            assembler.push(data(true, 2), &ct_context()),
            Err(ProtocolError::UnexpectedDataSet)
        ));
    }

    #[test]
    fn answers_requests_without_data_sets() {
        let message = |field| Message {
            context_id: 1,
            command: command::Command {
                field,
                message_id: Some(1),
                affected_sop_class_uid: None,
                has_data_set: false,
                affected_sop_instance_uid: None,
                message_id_being_responded_to: None,
            },
        };
        let status = |field, contexts: &[AcceptedContext]| {
            response_without_data_set(&message(field), contexts)
                .unwrap()
                .map(|r| r.status)
        };
        assert_eq!(status(field::C_CANCEL_RQ, &verification()), None);
        assert_eq!(status(field::C_STORE_RQ, &ct_context()), Some(0xC000));
        assert_eq!(
            status(field::C_STORE_RQ, &verification()),
            Some(status::UNRECOGNIZED_OPERATION)
        );
        assert_eq!(
            status(0x0021, &verification()),
            Some(status::UNRECOGNIZED_OPERATION)
        );
    }

    #[test]
    fn rejects_out_of_order_fragments() {
        let data = PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Data,
            is_last: true,
            data: vec![1, 2],
        };
        let mut assembler = Assembler::default();
        assert!(matches!(
            assembler.push(data, &verification()),
            Err(ProtocolError::UnexpectedDataSet)
        ));

        let too_long = PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: false,
            data: vec![0; association::MAX_COMMAND_LEN + 1],
        };
        assert!(matches!(
            Assembler::default().push(too_long, &verification()),
            Err(ProtocolError::CommandTooLong)
        ));

        let echo = pdvs(echo_rq(1, 1)).remove(0);
        let mut assembler = Assembler::default();
        let first = PDataValue {
            is_last: false,
            ..echo.clone()
        };
        assembler.push(first, &verification()).unwrap();
        let contexts = [
            verification(),
            vec![AcceptedContext {
                id: 3,
                abstract_syntax: uids::VERIFICATION.to_owned(),
                transfer_syntax: uids::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
            }],
        ]
        .concat();
        let other_context = PDataValue {
            presentation_context_id: 3,
            ..echo
        };
        assert!(matches!(
            assembler.push(other_context, &contexts),
            Err(ProtocolError::ContextSwitch {
                expected: 1,
                got: 3
            })
        ));
    }

    #[test]
    fn responses_from_the_peer_are_protocol_errors() {
        let message = Message {
            context_id: 1,
            command: command::Command {
                field: field::C_ECHO_RSP,
                message_id: None,
                affected_sop_class_uid: None,
                has_data_set: false,
                affected_sop_instance_uid: None,
                message_id_being_responded_to: None,
            },
        };
        assert!(matches!(
            response_without_data_set(&message, &verification()),
            Err(ProtocolError::UnexpectedResponse(0x8030))
        ));
    }

    #[test]
    fn storage_classes_are_known_storage_sop_classes() {
        let list = storage_classes::STORAGE_SOP_CLASSES;
        assert!(list.len() > 150);
        let unique: std::collections::BTreeSet<_> = list.iter().collect();
        assert_eq!(unique.len(), list.len());
        for uid in list {
            assert!(uid.starts_with("1.2.840.10008.5.1."), "{uid}");
            assert!(store_scp::is_valid_uid(uid), "{uid}");
        }
        for uid in [
            CT_IMAGE_STORAGE,
            "1.2.840.10008.5.1.4.1.1.1",     // CR
            "1.2.840.10008.5.1.4.1.1.1.1",   // DX for presentation
            "1.2.840.10008.5.1.4.1.1.4",     // MR
            "1.2.840.10008.5.1.4.1.1.88.33", // Comprehensive SR
        ] {
            assert!(association::is_storage_class(uid), "{uid}");
        }
        assert!(!association::is_storage_class(uids::VERIFICATION));
        assert!(!association::is_storage_class("1.2.840.10008.1.20.1"));
    }
}
