//! Forwarding result objects (the SR and SEG the pipeline writes) to a PACS by DIMSE
//! C-STORE, radserve acting as a storage SCU (PS3.4 annex B, PS3.7 §9.1.1).
//!
//! [`forward`] sends a batch of Part 10 files in one association on dicom-ul's async client:
//!
//! 1. each file's meta group gives its SOP class, SOP instance and transfer syntax; the data
//!    set after the meta group is sent as stored, byte for byte, when the PACS accepts that
//!    transfer syntax;
//! 2. one presentation context is proposed per SOP class. Files in an uncompressed little
//!    endian syntax (Explicit or Implicit VR) share it, proposing their own syntax first and
//!    the other as a fallback; we re-encode between those two when the PACS picks the other.
//!    A file in any other syntax (deflated, big endian, compressed pixel data) gets a context
//!    of its own proposing only its syntax: a fallback we cannot transcode to would only let
//!    the PACS pick something we cannot send;
//! 3. every C-STORE-RSP is checked: success and warnings (0001, Bxxx) count as sent,
//!    anything else stops the batch with [`ForwardError::Status`];
//! 4. the association is released (aborted after a protocol error), and the whole operation
//!    is bounded by [`ForwardNode::timeout_s`].
//!
//! P-DATA is fragmented here ([`send_fragments`]) to the PACS's maximum PDU length rather than
//! through dicom-ul's `AsyncPDataWriter`: that writer's `Drop` calls
//! `tokio::task::block_in_place`, which panics on a current-thread runtime.

use std::borrow::Cow;
use std::io::Cursor;
use std::time::Duration;

use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTable;
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use dicom_ul::Pdu;
use dicom_ul::association::{AsyncClientAssociation, ClientAssociationOptions, Error as UlError};
use dicom_ul::pdu::{
    AbortRQSource, AssociationRJResult, PDV_HEADER_SIZE, PDataValue, PDataValueType,
    PresentationContextResultReason,
};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::dimse::command::{self, StoreResponse, encode_store_request};

/// `[pipeline.forward]`: where results go.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardNode {
    /// The PACS's AE title (the called AE title).
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Our AE title towards the PACS.
    #[serde(default = "default_calling")]
    pub calling_ae_title: String,
    /// Bound on one whole [`forward`] call: connection, negotiation, every C-STORE, release.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
}

/// Default [`ForwardNode::calling_ae_title`].
pub const DEFAULT_CALLING_AE_TITLE: &str = "RADSERVE";
/// Default [`ForwardNode::timeout_s`].
pub const DEFAULT_TIMEOUT_S: f64 = 30.0;
/// The maximum PDU length we propose (what the PACS may send us: only C-STORE-RSPs).
pub const MAX_PDU_LENGTH: u32 = 65_536;
/// Our P-DATA fragments never exceed this, whatever larger maximum the PACS admits (a peer
/// saying "unlimited" would otherwise get a whole SEG copied into one PDU).
const MAX_FRAGMENT: usize = 1 << 20;
/// A C-STORE-RSP command set larger than this is a protocol error (real ones are ~100 bytes).
const MAX_RESPONSE_LEN: usize = 64 * 1024;
/// Presentation context IDs are the odd numbers 1..=255.
const MAX_CONTEXTS: usize = 128;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

fn default_calling() -> String {
    DEFAULT_CALLING_AE_TITLE.to_owned()
}

fn default_timeout() -> f64 {
    DEFAULT_TIMEOUT_S
}

impl ForwardNode {
    /// Refuses a node no association could be made with: AE titles of 1 to 16 characters
    /// (not all spaces) without backslashes or control characters, an empty host, port 0,
    /// a timeout that is not a finite number of seconds in 1..=600.
    pub fn check(&self) -> Result<(), ForwardError> {
        check_ae_title("ae_title", &self.ae_title)?;
        check_ae_title("calling_ae_title", &self.calling_ae_title)?;
        if self.host.trim().is_empty() {
            return Err(ForwardError::Config("host is empty".to_owned()));
        }
        if self.port == 0 {
            return Err(ForwardError::Config("port must not be 0".to_owned()));
        }
        if !(self.timeout_s.is_finite() && (1.0..=600.0).contains(&self.timeout_s)) {
            return Err(ForwardError::Config(format!(
                "timeout_s must be between 1 and 600 seconds, got {}",
                self.timeout_s
            )));
        }
        Ok(())
    }
}

fn check_ae_title(what: &str, title: &str) -> Result<(), ForwardError> {
    let length = title.chars().count();
    if !(1..=16).contains(&length) || title.trim().is_empty() {
        return Err(ForwardError::Config(format!(
            "{what} must have 1 to 16 characters (not all spaces), got {title:?}"
        )));
    }
    if title
        .chars()
        .any(|c| c == '\\' || c.is_control() || !c.is_ascii())
    {
        return Err(ForwardError::Config(format!(
            "{what} {title:?} holds a backslash, a control or a non-ASCII character"
        )));
    }
    Ok(())
}

/// Why a [`forward`] failed. Nothing is retried here: the caller decides.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("invalid forward node: {0}")]
    Config(String),
    #[error("cannot connect to the PACS: {0}")]
    Connect(String),
    /// The PACS rejected the association, or aborted it.
    #[error("association rejected or aborted by the PACS: {0}")]
    Rejected(String),
    #[error(
        "the PACS accepted no presentation context for SOP class {sop_class} in transfer syntax {transfer_syntax}"
    )]
    NoContext {
        sop_class: String,
        transfer_syntax: String,
    },
    /// A C-STORE-RSP with a failure status; the objects before it were stored.
    #[error("the PACS refused SOP instance {sop_instance_uid}: status {status:#06X}")]
    Status {
        sop_instance_uid: String,
        status: u16,
    },
    #[error("DICOM protocol error: {0}")]
    Protocol(String),
    #[error("forwarding did not finish in time")]
    Timeout,
    /// One of our own files cannot be sent (not Part 10, unreadable, cannot be re-encoded).
    #[error("result object cannot be sent: {0}")]
    Object(String),
}

/// What a successful [`forward`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardReport {
    /// Objects the PACS answered with success or a warning.
    pub sent: usize,
    /// (SOP Instance UID, status) of the objects answered with a warning.
    pub warnings: Vec<(String, u16)>,
}

/// Sends `objects` (Part 10 files, as stored) to `node` in one association; see the module
/// documentation. An empty batch succeeds without connecting.
pub async fn forward(
    node: &ForwardNode,
    objects: &[Vec<u8>],
) -> Result<ForwardReport, ForwardError> {
    node.check()?;
    let files = objects
        .iter()
        .enumerate()
        .map(|(index, bytes)| Part10::parse(index, bytes))
        .collect::<Result<Vec<_>, _>>()?;
    if files.is_empty() {
        return Ok(ForwardReport {
            sent: 0,
            warnings: Vec::new(),
        });
    }
    let contexts = propose(&files)?;
    let limit = Duration::from_secs_f64(node.timeout_s);
    match tokio::time::timeout(limit, associate_and_send(node, &files, &contexts, limit)).await {
        Ok(result) => result,
        Err(_) => {
            warn!(
                called_ae = %node.ae_title,
                timeout_s = node.timeout_s,
                "forwarding timed out; connection dropped"
            );
            Err(ForwardError::Timeout)
        }
    }
}

// --- the objects ------------------------------------------------------------------------------

/// One file to send: the identifiers from its meta group and its data set bytes.
#[derive(Debug)]
struct Part10<'a> {
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    /// The data set after the meta group, as stored.
    dataset: &'a [u8],
}

impl<'a> Part10<'a> {
    fn parse(index: usize, bytes: &'a [u8]) -> Result<Part10<'a>, ForwardError> {
        let bad = |reason: String| ForwardError::Object(format!("object {index}: {reason}"));
        // With the 128-byte preamble (files) or without (meta group first).
        let start = if bytes.get(128..132) == Some(b"DICM".as_slice()) {
            128
        } else if bytes.get(..4) == Some(b"DICM".as_slice()) {
            0
        } else {
            return Err(bad("not a DICOM Part 10 file (no DICM prefix)".to_owned()));
        };
        let mut cursor = Cursor::new(&bytes[start..]);
        let meta = FileMetaTable::from_reader(&mut cursor)
            .map_err(|e| bad(format!("unreadable file meta group: {e}")))?;
        let offset = usize::try_from(cursor.position())
            .ok()
            .and_then(|position| start.checked_add(position))
            .filter(|&offset| offset <= bytes.len())
            .ok_or_else(|| bad("file meta group overruns the file".to_owned()))?;
        let uid = |what: &str, value: &str| -> Result<String, ForwardError> {
            let valid = (1..=64).contains(&value.len())
                && value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if valid {
                Ok(value.to_owned())
            } else {
                Err(bad(format!("{what} {value:?} is not a UID")))
            }
        };
        let file = Part10 {
            sop_class: uid(
                "MediaStorageSOPClassUID",
                meta.media_storage_sop_class_uid(),
            )?,
            sop_instance: uid(
                "MediaStorageSOPInstanceUID",
                meta.media_storage_sop_instance_uid(),
            )?,
            transfer_syntax: uid("TransferSyntaxUID", meta.transfer_syntax())?,
            dataset: &bytes[offset..],
        };
        if file.dataset.is_empty() {
            return Err(bad("no data set after the file meta group".to_owned()));
        }
        Ok(file)
    }

    /// Whether we can re-encode this file into the other uncompressed little endian syntax.
    fn transcodable(&self) -> bool {
        is_uncompressed_le(&self.transfer_syntax)
    }
}

fn is_uncompressed_le(transfer_syntax: &str) -> bool {
    transfer_syntax == EXPLICIT_VR_LE || transfer_syntax == IMPLICIT_VR_LE
}

/// A presentation context we propose.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proposed {
    sop_class: String,
    /// In order of preference.
    transfer_syntaxes: Vec<String>,
}

/// One context per SOP class for the uncompressed little endian files (the first file's
/// syntax first), one per (SOP class, syntax) for the others.
fn propose(files: &[Part10<'_>]) -> Result<Vec<Proposed>, ForwardError> {
    let mut contexts: Vec<Proposed> = Vec::new();
    for file in files {
        let found = contexts.iter().any(|c| {
            c.sop_class == file.sop_class
                && if file.transcodable() {
                    c.transfer_syntaxes.iter().any(|ts| is_uncompressed_le(ts))
                } else {
                    c.transfer_syntaxes == [file.transfer_syntax.clone()]
                }
        });
        if found {
            continue;
        }
        let transfer_syntaxes = if file.transcodable() {
            let other = if file.transfer_syntax == EXPLICIT_VR_LE {
                IMPLICIT_VR_LE
            } else {
                EXPLICIT_VR_LE
            };
            vec![file.transfer_syntax.clone(), other.to_owned()]
        } else {
            vec![file.transfer_syntax.clone()]
        };
        contexts.push(Proposed {
            sop_class: file.sop_class.clone(),
            transfer_syntaxes,
        });
    }
    if contexts.len() > MAX_CONTEXTS {
        return Err(ForwardError::Object(format!(
            "{} distinct SOP class / transfer syntax combinations: one association holds at most {MAX_CONTEXTS}",
            contexts.len()
        )));
    }
    Ok(contexts)
}

/// An accepted presentation context, as the PACS answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    id: u8,
    sop_class: String,
    transfer_syntax: String,
}

/// The context `file` goes on: one in its own syntax if accepted, else (uncompressed little
/// endian files only) one in the other uncompressed syntax.
fn choose<'c>(file: &Part10<'_>, accepted: &'c [Accepted]) -> Option<&'c Accepted> {
    let of_class = || accepted.iter().filter(|c| c.sop_class == file.sop_class);
    of_class()
        .find(|c| c.transfer_syntax == file.transfer_syntax)
        .or_else(|| {
            of_class().find(|c| file.transcodable() && is_uncompressed_le(&c.transfer_syntax))
        })
}

/// The data set of `file` in `transfer_syntax` (its stored bytes when that is its own).
fn dataset_in<'a>(file: &Part10<'a>, transfer_syntax: &str) -> Result<Cow<'a, [u8]>, ForwardError> {
    if transfer_syntax == file.transfer_syntax {
        return Ok(Cow::Borrowed(file.dataset));
    }
    let syntax = |uid: &str| match uid {
        EXPLICIT_VR_LE => Some(EXPLICIT_VR_LITTLE_ENDIAN.erased()),
        IMPLICIT_VR_LE => Some(IMPLICIT_VR_LITTLE_ENDIAN.erased()),
        _ => None,
    };
    let (Some(from), Some(to)) = (syntax(&file.transfer_syntax), syntax(transfer_syntax)) else {
        return Err(ForwardError::Object(format!(
            "{}: cannot re-encode from {} to {transfer_syntax}",
            file.sop_instance, file.transfer_syntax
        )));
    };
    let obj = InMemDicomObject::read_dataset_with_ts(file.dataset, &from).map_err(|e| {
        ForwardError::Object(format!("{}: unreadable data set: {e}", file.sop_instance))
    })?;
    let mut bytes = Vec::with_capacity(file.dataset.len() + file.dataset.len() / 8);
    obj.write_dataset_with_ts(&mut bytes, &to).map_err(|e| {
        ForwardError::Object(format!(
            "{}: cannot re-encode in {transfer_syntax}: {e}",
            file.sop_instance
        ))
    })?;
    debug!(
        sop_instance_uid = %file.sop_instance,
        from = %file.transfer_syntax,
        to = %transfer_syntax,
        "data set re-encoded for the accepted transfer syntax"
    );
    Ok(Cow::Owned(bytes))
}

// --- the association --------------------------------------------------------------------------

type Client = AsyncClientAssociation<TcpStream>;

async fn associate_and_send(
    node: &ForwardNode,
    files: &[Part10<'_>],
    contexts: &[Proposed],
    limit: Duration,
) -> Result<ForwardReport, ForwardError> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(node.calling_ae_title.as_str())
        .called_ae_title(node.ae_title.as_str())
        .max_pdu_length(MAX_PDU_LENGTH)
        .connection_timeout(limit)
        .read_timeout(limit)
        .write_timeout(limit);
    for context in contexts {
        options = options.with_presentation_context(
            context.sop_class.as_str(),
            context
                .transfer_syntaxes
                .iter()
                .map(String::as_str)
                .collect(),
        );
    }
    let mut assoc = options
        .establish_async((node.host.as_str(), node.port))
        .await
        .map_err(|e| establish_error(e, contexts))?;
    if let Err(e) = assoc.inner_stream().set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let accepted: Vec<Accepted> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| Accepted {
            id: pc.id,
            sop_class: trim_uid(&pc.abstract_syntax),
            transfer_syntax: trim_uid(&pc.transfer_syntax),
        })
        .collect();
    info!(
        called_ae = %node.ae_title,
        host = %node.host,
        port = node.port,
        proposed = contexts.len(),
        accepted = accepted.len(),
        peer_max_pdu = assoc.acceptor_max_pdu_length(),
        objects = files.len(),
        "forward association established"
    );

    // Every object needs a usable context before anything is sent.
    let mut plan = Vec::with_capacity(files.len());
    for file in files {
        match choose(file, &accepted) {
            Some(context) => plan.push(context),
            None => {
                info!(
                    sop_class = %file.sop_class,
                    transfer_syntax = %file.transfer_syntax,
                    "no accepted presentation context for a result object; releasing"
                );
                release(assoc).await;
                return Err(ForwardError::NoContext {
                    sop_class: file.sop_class.clone(),
                    transfer_syntax: file.transfer_syntax.clone(),
                });
            }
        }
    }

    let mut report = ForwardReport {
        sent: 0,
        warnings: Vec::new(),
    };
    for (n, (file, context)) in files.iter().zip(plan).enumerate() {
        // Message IDs 1..=65535, wrapping for (unlikely) larger batches.
        let message_id = (n % usize::from(u16::MAX)) as u16 + 1;
        match store(&mut assoc, file, context, message_id).await {
            Ok(status) => {
                report.sent += 1;
                if status != command::status::SUCCESS {
                    report.warnings.push((file.sop_instance.clone(), status));
                }
            }
            Err(e @ ForwardError::Status { .. }) => {
                release(assoc).await;
                return Err(e);
            }
            // The PACS aborted: nothing left to release.
            Err(e @ (ForwardError::Rejected(_) | ForwardError::Timeout)) => return Err(e),
            Err(e) => {
                warn!("aborting the forward association: {e}");
                if let Err(abort_error) = assoc.abort().await {
                    debug!("cannot send A-ABORT: {}", error_chain(&abort_error));
                }
                return Err(e);
            }
        }
    }
    release(assoc).await;
    info!(
        called_ae = %node.ae_title,
        sent = report.sent,
        warnings = report.warnings.len(),
        "result objects forwarded"
    );
    Ok(report)
}

/// One C-STORE: command, data set, response. Returns the success or warning status.
async fn store(
    assoc: &mut Client,
    file: &Part10<'_>,
    context: &Accepted,
    message_id: u16,
) -> Result<u16, ForwardError> {
    let request = encode_store_request(message_id, &file.sop_class, &file.sop_instance)
        .map_err(|e| ForwardError::Protocol(e.to_string()))?;
    let dataset = dataset_in(file, &context.transfer_syntax)?;
    send_fragments(assoc, context.id, PDataValueType::Command, &request).await?;
    send_fragments(assoc, context.id, PDataValueType::Data, &dataset).await?;
    let response = receive_response(assoc, context.id).await?;
    if response.message_id_being_responded_to != message_id {
        return Err(ForwardError::Protocol(format!(
            "C-STORE-RSP answers message {} while {message_id} was sent",
            response.message_id_being_responded_to
        )));
    }
    if let Some(uid) = &response.affected_sop_instance_uid
        && *uid != file.sop_instance
    {
        return Err(ForwardError::Protocol(format!(
            "C-STORE-RSP for SOP instance {uid} while {} was sent",
            file.sop_instance
        )));
    }
    let status = response.status;
    if status == command::status::SUCCESS {
        debug!(sop_instance_uid = %file.sop_instance, "stored by the PACS");
        Ok(status)
    } else if command::status::is_warning(status) {
        warn!(
            sop_instance_uid = %file.sop_instance,
            status = format_args!("{status:#06X}"),
            comment = response.error_comment.as_deref().unwrap_or(""),
            "stored by the PACS with a warning"
        );
        Ok(status)
    } else {
        warn!(
            sop_instance_uid = %file.sop_instance,
            status = format_args!("{status:#06X}"),
            comment = response.error_comment.as_deref().unwrap_or(""),
            "refused by the PACS"
        );
        Err(ForwardError::Status {
            sop_instance_uid: file.sop_instance.clone(),
            status,
        })
    }
}

/// Sends a command or data set as P-DATA-TF PDUs no longer than the PACS admits.
async fn send_fragments(
    assoc: &mut Client,
    context_id: u8,
    value_type: PDataValueType,
    bytes: &[u8],
) -> Result<(), ForwardError> {
    // Even fragment sizes keep 16-bit values whole (not required, but kind to peers).
    let max_fragment = (assoc
        .acceptor_max_pdu_length()
        .saturating_sub(PDV_HEADER_SIZE)
        .max(2) as usize)
        .min(MAX_FRAGMENT)
        & !1;
    let count = bytes.len().div_ceil(max_fragment).max(1);
    let mut chunks = bytes.chunks(max_fragment);
    for i in 0..count {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: value_type.clone(),
                is_last: i + 1 == count,
                data: chunks.next().unwrap_or_default().to_vec(),
            }],
        };
        assoc.send(&pdu).await.map_err(|e| ul_error(&e, "send"))?;
    }
    Ok(())
}

/// Reads PDUs until a whole C-STORE-RSP command set arrived on `context_id`.
async fn receive_response(
    assoc: &mut Client,
    context_id: u8,
) -> Result<StoreResponse, ForwardError> {
    let mut bytes = Vec::new();
    loop {
        let pdu = assoc.receive().await.map_err(|e| ul_error(&e, "receive"))?;
        match pdu {
            Pdu::PData { data } => {
                let mut values = data.into_iter().peekable();
                while let Some(pdv) = values.next() {
                    if pdv.presentation_context_id != context_id {
                        return Err(ForwardError::Protocol(format!(
                            "response on presentation context {} while the request went on {context_id}",
                            pdv.presentation_context_id
                        )));
                    }
                    if pdv.value_type != PDataValueType::Command {
                        return Err(ForwardError::Protocol(
                            "data set fragment where a C-STORE-RSP was expected".to_owned(),
                        ));
                    }
                    if bytes.len() + pdv.data.len() > MAX_RESPONSE_LEN {
                        return Err(ForwardError::Protocol(format!(
                            "C-STORE-RSP longer than {MAX_RESPONSE_LEN} bytes"
                        )));
                    }
                    bytes.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        if values.peek().is_some() {
                            return Err(ForwardError::Protocol(
                                "more fragments after the last one of a C-STORE-RSP".to_owned(),
                            ));
                        }
                        return StoreResponse::parse(&bytes)
                            .map_err(|e| ForwardError::Protocol(e.to_string()));
                    }
                }
            }
            Pdu::AbortRQ { source } => {
                return Err(ForwardError::Rejected(format!(
                    "aborted by the PACS ({})",
                    abort_source(&source)
                )));
            }
            Pdu::ReleaseRQ => {
                return Err(ForwardError::Protocol(
                    "the PACS asked to release before answering the C-STORE".to_owned(),
                ));
            }
            other => {
                return Err(ForwardError::Protocol(format!(
                    "unexpected PDU while waiting for a C-STORE-RSP: {}",
                    other.short_description()
                )));
            }
        }
    }
}

async fn release(assoc: Client) {
    // Every answered object is stored whatever happens to the release: log only.
    if let Err(e) = assoc.release().await {
        warn!(
            "forward association not released cleanly: {}",
            error_chain(&e)
        );
    }
}

// --- errors -----------------------------------------------------------------------------------

fn establish_error(e: UlError, contexts: &[Proposed]) -> ForwardError {
    match e {
        UlError::Connect { .. } | UlError::ToAddress { .. } => {
            ForwardError::Connect(error_chain(&e))
        }
        UlError::Rejected { association_rj, .. } => {
            let result = match association_rj.result {
                AssociationRJResult::Permanent => "permanent",
                AssociationRJResult::Transient => "transient",
            };
            ForwardError::Rejected(format!("{} ({result})", association_rj.source))
        }
        UlError::Aborted { .. } => ForwardError::Rejected("aborted during negotiation".to_owned()),
        UlError::UnexpectedPdu { pdu, .. } if matches!(*pdu, Pdu::AbortRQ { .. }) => {
            let source = match *pdu {
                Pdu::AbortRQ { source } => abort_source(&source),
                _ => "unknown source",
            };
            ForwardError::Rejected(format!("aborted during negotiation ({source})"))
        }
        UlError::ConnectionClosed { .. } => ForwardError::Rejected(
            "connection closed by the PACS before it answered the association request".to_owned(),
        ),
        UlError::NoAcceptedPresentationContexts { .. } => {
            let (sop_class, transfer_syntax) = contexts
                .first()
                .map(|c| (c.sop_class.clone(), c.transfer_syntaxes.join("\\")))
                .unwrap_or_default();
            ForwardError::NoContext {
                sop_class,
                transfer_syntax,
            }
        }
        UlError::Timeout { .. } => ForwardError::Timeout,
        other => ForwardError::Protocol(format!(
            "association not established: {}",
            error_chain(&other)
        )),
    }
}

/// An error of an established association.
fn ul_error(e: &UlError, doing: &str) -> ForwardError {
    match e {
        UlError::Timeout { .. } => ForwardError::Timeout,
        _ => ForwardError::Protocol(format!("cannot {doing} a PDU: {}", error_chain(e))),
    }
}

fn abort_source(source: &AbortRQSource) -> &'static str {
    match source {
        AbortRQSource::ServiceUser => "service user",
        AbortRQSource::ServiceProvider(_) => "service provider",
        AbortRQSource::Reserved => "reserved source",
    }
}

fn trim_uid(uid: &str) -> String {
    uid.trim_end_matches(['\0', ' ']).to_owned()
}

/// An error and its sources, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! Against real peers: dcmtk's `storescp` (and `dcmqrscp`, which — unlike storescp
    //! 3.6 — refuses an unknown called AE title), each started on a free port in a
    //! temporary directory and killed when the test ends.

    use std::net::{Ipv4Addr, TcpListener};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::file::ReadPreamble;
    use dicom_object::meta::FileMetaTableBuilder;
    use dicom_object::{DefaultDicomObject, OpenFileOptions};
    use tempfile::TempDir;

    use super::*;
    use crate::dimse::command::{Command as DimseCommand, Response, field, status};
    use crate::results::seg::{SegmentFrame, build_seg};
    use crate::results::sr::{SegReference, build_sr};
    use crate::results::validation_tests::{
        Samples, algorithm, ct_sources, disc, grid, instance, lesion_segment, nodule, samples, text,
    };

    /// A dcmtk SCP process, killed on drop, with the directory it writes into.
    struct Peer {
        child: Child,
        port: u16,
        dir: TempDir,
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
        listener.local_addr().expect("local address").port()
    }

    /// Starts `program` with `args` (the port is appended by `with_port`) and waits until
    /// its port accepts connections.
    fn start(program: &str, args: &[&str], dir: TempDir, port: u16, with_port: bool) -> Peer {
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(dir.path())
            .env("TCP_NODELAY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if with_port {
            command.arg(port.to_string());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (dcmtk installed?): {e}"));
        let mut peer = Peer { child, port, dir };
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return peer;
            }
            if let Ok(Some(exit)) = peer.child.try_wait() {
                panic!("{program} exited at start: {exit}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{program} does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `storescp -aet PACS -od <dir> <extra> <port>`.
    fn storescp(extra: &[&str]) -> Peer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = dir.path().to_string_lossy().into_owned();
        let mut args = vec!["-aet", "PACS", "-od", out.as_str()];
        args.extend_from_slice(extra);
        start("storescp", &args, dir, free_port(), true)
    }

    /// `dcmqrscp --single-process` knowing only the AE title PACS.
    fn dcmqrscp() -> Peer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).expect("database directory");
        let config = format!(
            "NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 4\n\
             HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n\
             AETable BEGIN\nPACS {} RW (10, 100mb) ANY\nAETable END\n",
            db.display()
        );
        let config_path = dir.path().join("dcmqrscp.cfg");
        std::fs::write(&config_path, config).expect("dcmqrscp configuration");
        let config_arg = config_path.to_string_lossy().into_owned();
        start(
            "dcmqrscp",
            &["--single-process", "-c", config_arg.as_str()],
            dir,
            port,
            false,
        )
    }

    fn node(port: u16) -> ForwardNode {
        ForwardNode {
            ae_title: "PACS".into(),
            host: "127.0.0.1".into(),
            port,
            calling_ae_title: DEFAULT_CALLING_AE_TITLE.into(),
            timeout_s: 20.0,
        }
    }

    /// An SR (two CT nodules, referencing the SEG) and a SEG (two frames), built by the
    /// crate's writers from dicom-samples sources (seed 3: a GB18030 patient name).
    fn results() -> (Samples, Vec<u8>, Vec<u8>) {
        let samples = samples();
        let sources = ct_sources(&samples);
        let findings = vec![
            nodule(&sources, 1, 1, 200.5, 180.25),
            nodule(&sources, 2, 2, 320.0, 260.0),
        ];
        let seg_instance = instance(5);
        let seg_ref = SegReference {
            series_instance_uid: seg_instance.series_instance_uid.clone(),
            sop_instance_uid: seg_instance.sop_instance_uid.clone(),
        };
        let sr = build_sr(
            &sources,
            &algorithm(),
            &findings,
            Some(&seg_ref),
            &instance(1),
        )
        .expect("SR builds");
        let (rows, columns) = grid(&sources[0]);
        let frames = vec![
            SegmentFrame {
                segment_number: 1,
                source_index: 1,
                mask: disc(rows, columns, 200.0, 180.0, 9.0),
            },
            SegmentFrame {
                segment_number: 1,
                source_index: 2,
                mask: disc(rows, columns, 320.0, 260.0, 6.5),
            },
        ];
        let seg = build_seg(
            &sources,
            &algorithm(),
            &[lesion_segment()],
            &frames,
            &seg_instance,
        )
        .expect("SEG builds");
        (samples, sr, seg)
    }

    fn parse(bytes: &[u8]) -> DefaultDicomObject {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes)
            .expect("our own object parses")
    }

    /// The files the peer wrote, read back, with their SOP Instance UIDs.
    fn received(dir: &Path) -> Vec<(String, DefaultDicomObject)> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("output directory")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let obj = OpenFileOptions::new()
                    .open_file(&path)
                    .unwrap_or_else(|e| panic!("storescp wrote {}: {e}", path.display()));
                (text(&obj, tags::SOP_INSTANCE_UID), obj)
            })
            .collect()
    }

    fn find<'a>(files: &'a [(String, DefaultDicomObject)], uid: &str) -> &'a DefaultDicomObject {
        &files
            .iter()
            .find(|(u, _)| u == uid)
            .unwrap_or_else(|| panic!("no received file has SOP Instance UID {uid}"))
            .1
    }

    /// An object's ContentSequence, encoded alone in Explicit VR Little Endian: parsed
    /// elements cannot be compared with `==` when they hold sequences (dicom-core's
    /// `Length::UNDEFINED != Length::UNDEFINED`), their canonical encodings can.
    fn content(obj: &InMemDicomObject) -> Vec<u8> {
        let sequence = element(obj, tags::CONTENT_SEQUENCE).clone();
        let mut bytes = Vec::new();
        InMemDicomObject::from_element_iter([sequence])
            .write_dataset_with_ts(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .expect("ContentSequence encodes");
        assert!(bytes.len() > 1000, "a real ContentSequence");
        bytes
    }

    fn element(obj: &InMemDicomObject, tag: Tag) -> &DataElement<InMemDicomObject> {
        obj.element(tag)
            .unwrap_or_else(|e| panic!("element {tag}: {e}"))
    }

    #[tokio::test]
    async fn forwards_an_sr_and_a_seg_to_storescp() {
        let (_samples, sr, seg) = results();
        // +B: storescp writes the data set exactly as received (no re-encoding of sequence
        // lengths), so its files can be compared byte for byte.
        let pacs = storescp(&["+xa", "+B"]);

        let report = forward(&node(pacs.port), &[sr.clone(), seg.clone()])
            .await
            .expect("forwarded");
        assert_eq!(
            report,
            ForwardReport {
                sent: 2,
                warnings: vec![]
            }
        );

        let files = received(pacs.dir.path());
        assert_eq!(files.len(), 2, "storescp wrote two files");
        for bytes in [&sr, &seg] {
            let sent = parse(bytes);
            let uid = text(&sent, tags::SOP_INSTANCE_UID);
            let got = find(&files, &uid);
            assert_eq!(
                got.meta().media_storage_sop_class_uid(),
                sent.meta().media_storage_sop_class_uid()
            );
            // Sent as stored, in Explicit VR Little Endian, and arrived unchanged.
            assert_eq!(got.meta().transfer_syntax(), EXPLICIT_VR_LE);
            let sent_dataset = Part10::parse(0, bytes).expect("ours").dataset;
            let path = pacs.dir.path().join(
                std::fs::read_dir(pacs.dir.path())
                    .expect("output directory")
                    .map(|e| e.expect("entry").file_name())
                    .find(|name| name.to_string_lossy().ends_with(uid.as_str()))
                    .expect("file named after the SOP instance"),
            );
            let written = std::fs::read(path).expect("received file");
            let got_dataset = Part10::parse(0, &written).expect("storescp's file").dataset;
            assert!(
                got_dataset == sent_dataset,
                "data set of {uid} differs: {} bytes received, {} sent",
                got_dataset.len(),
                sent_dataset.len()
            );
        }
        let sr_sent = parse(&sr);
        let sr_got = find(&files, &text(&sr_sent, tags::SOP_INSTANCE_UID));
        assert_eq!(
            content(sr_got),
            content(&sr_sent),
            "ContentSequence differs"
        );
        let seg_sent = parse(&seg);
        let seg_got = find(&files, &text(&seg_sent, tags::SOP_INSTANCE_UID));
        assert_eq!(text(seg_got, tags::NUMBER_OF_FRAMES), "2");
        assert_eq!(
            element(seg_got, tags::PIXEL_DATA)
                .to_bytes()
                .expect("bytes"),
            element(&seg_sent, tags::PIXEL_DATA)
                .to_bytes()
                .expect("bytes")
        );
    }

    #[tokio::test]
    async fn re_encodes_for_a_pacs_taking_only_implicit_vr() {
        let (_samples, sr, seg) = results();
        // +xi: implicit VR little endian only; storescp writes what it received.
        let pacs = storescp(&["+xi"]);

        let report = forward(&node(pacs.port), &[sr.clone(), seg.clone()])
            .await
            .expect("forwarded");
        assert_eq!(report.sent, 2);

        let files = received(pacs.dir.path());
        assert_eq!(files.len(), 2);
        for sent in [&sr, &seg] {
            let sent = parse(sent);
            let got = find(&files, &text(&sent, tags::SOP_INSTANCE_UID));
            assert_eq!(got.meta().transfer_syntax(), IMPLICIT_VR_LE);
            // The GB18030 patient name survives decoding and re-encoding.
            let name = text(&sent, tags::PATIENT_NAME);
            assert!(!name.is_ascii(), "seed 3 gives a non-ASCII name");
            assert_eq!(text(got, tags::PATIENT_NAME), name);
            assert_eq!(
                text(got, tags::SOP_CLASS_UID),
                text(&sent, tags::SOP_CLASS_UID)
            );
        }
        let sr_sent = parse(&sr);
        let sr_got = find(&files, &text(&sr_sent, tags::SOP_INSTANCE_UID));
        assert_eq!(
            content(sr_got),
            content(&sr_sent),
            "ContentSequence differs"
        );
        let seg_sent = parse(&seg);
        let seg_got = find(&files, &text(&seg_sent, tags::SOP_INSTANCE_UID));
        assert_eq!(text(seg_got, tags::NUMBER_OF_FRAMES), "2");
        assert_eq!(
            element(seg_got, tags::PIXEL_DATA)
                .to_bytes()
                .expect("bytes"),
            element(&seg_sent, tags::PIXEL_DATA)
                .to_bytes()
                .expect("bytes")
        );
    }

    #[tokio::test]
    async fn refused_associations_are_rejected_errors() {
        let (_samples, sr, _seg) = results();

        // dcmqrscp knows the AE title PACS only.
        let pacs = dcmqrscp();
        let wrong = ForwardNode {
            ae_title: "NOT-PACS".into(),
            ..node(pacs.port)
        };
        match forward(&wrong, std::slice::from_ref(&sr)).await {
            Err(ForwardError::Rejected(reason)) => {
                assert!(reason.to_lowercase().contains("called"), "{reason}")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }

        // storescp --refuse rejects every association.
        let refusing = storescp(&["--refuse"]);
        let outcome = forward(&node(refusing.port), std::slice::from_ref(&sr)).await;
        assert!(
            matches!(outcome, Err(ForwardError::Rejected(_))),
            "{outcome:?}"
        );

        // storescp --abort-after aborts after the C-STORE-RQ, before answering.
        let aborting = storescp(&["+xa", "--abort-after"]);
        let outcome = forward(&node(aborting.port), std::slice::from_ref(&sr)).await;
        assert!(
            matches!(&outcome, Err(ForwardError::Rejected(r)) if r.contains("aborted")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_at_once() {
        let object = tiny_object("1.2.840.10008.5.1.4.1.1.7", "2.25.7");
        let started = Instant::now();
        let outcome = forward(&node(free_port()), &[object]).await;
        assert!(
            matches!(outcome, Err(ForwardError::Connect(_))),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn an_unknown_sop_class_has_no_context() {
        // storescp without -pm accepts only the storage SOP classes it knows.
        let pacs = storescp(&["+xa"]);
        let object = tiny_object("2.25.123456789", "2.25.8");
        match forward(&node(pacs.port), &[object]).await {
            Err(ForwardError::NoContext {
                sop_class,
                transfer_syntax,
            }) => {
                assert_eq!(sop_class, "2.25.123456789");
                assert!(
                    transfer_syntax.contains(EXPLICIT_VR_LE),
                    "{transfer_syntax}"
                );
            }
            other => panic!("expected NoContext, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stalling_pacs_times_out() {
        let pacs = storescp(&["+xa", "--sleep-during", "10"]);
        let object = tiny_object("1.2.840.10008.5.1.4.1.1.7", "2.25.9");
        let stalling = ForwardNode {
            timeout_s: 1.0,
            ..node(pacs.port)
        };
        let started = Instant::now();
        let outcome = forward(&stalling, &[object]).await;
        assert!(matches!(outcome, Err(ForwardError::Timeout)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// A minimal Part 10 file (Secondary Capture-like header only) of `sop_class`.
    fn tiny_object(sop_class: &str, sop_instance: &str) -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ));
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance),
        ));
        obj.put(DataElement::new(
            tags::MODALITY,
            VR::CS,
            PrimitiveValue::from("OT"),
        ));
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                    .media_storage_sop_class_uid(sop_class)
                    .media_storage_sop_instance_uid(sop_instance),
            )
            .expect("meta group");
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).expect("Part 10 bytes");
        bytes
    }

    #[tokio::test]
    async fn bad_objects_and_empty_batches() {
        // Nothing is listening on this port: neither case may try to connect.
        let node = node(free_port());
        assert_eq!(
            forward(&node, &[]).await.expect("empty batch"),
            ForwardReport {
                sent: 0,
                warnings: vec![]
            }
        );
        let good = tiny_object("1.2.840.10008.5.1.4.1.1.7", "2.25.10");
        for bad in [
            vec![0u8; 300],
            b"DICM".to_vec(),
            good[..good.len().min(150)].to_vec(),
        ] {
            let outcome = forward(&node, &[good.clone(), bad]).await;
            assert!(
                matches!(&outcome, Err(ForwardError::Object(r)) if r.starts_with("object 1")),
                "{outcome:?}"
            );
        }
        // Without the preamble it is still a Part 10 stream.
        let parsed = Part10::parse(0, &good[128..]).expect("meta group first");
        assert_eq!(parsed.sop_instance, "2.25.10");
        assert_eq!(parsed.transfer_syntax, EXPLICIT_VR_LE);
    }

    #[test]
    fn contexts_group_uncompressed_files_per_sop_class() {
        let ct = "1.2.840.10008.5.1.4.1.1.2";
        let file = |class: &'static str, ts: &'static str| Part10 {
            sop_class: class.into(),
            sop_instance: "2.25.1".into(),
            transfer_syntax: ts.into(),
            dataset: &[0, 0],
        };
        let jpeg = "1.2.840.10008.1.2.4.70";
        let files = [
            file(ct, IMPLICIT_VR_LE),
            file(ct, EXPLICIT_VR_LE),
            file(ct, jpeg),
            file(uids::SEGMENTATION_STORAGE, EXPLICIT_VR_LE),
        ];
        let contexts = propose(&files).expect("contexts");
        let ts = |c: &Proposed| c.transfer_syntaxes.clone();
        assert_eq!(contexts.len(), 3);
        assert_eq!(ts(&contexts[0]), [IMPLICIT_VR_LE, EXPLICIT_VR_LE]);
        assert_eq!(ts(&contexts[1]), [jpeg]);
        assert_eq!(ts(&contexts[2]), [EXPLICIT_VR_LE, IMPLICIT_VR_LE]);

        let accepted = |id, class: &str, ts: &str| Accepted {
            id,
            sop_class: class.into(),
            transfer_syntax: ts.into(),
        };
        // The PACS took explicit VR for CT: the implicit file is re-encoded, the JPEG one
        // has no context.
        let answer = [accepted(1, ct, EXPLICIT_VR_LE)];
        assert_eq!(choose(&files[0], &answer).map(|c| c.id), Some(1));
        assert_eq!(choose(&files[1], &answer).map(|c| c.id), Some(1));
        assert_eq!(choose(&files[2], &answer), None);
        assert_eq!(choose(&files[3], &answer), None);
        // Its own syntax is preferred when both are there.
        let answer = [accepted(3, ct, jpeg), accepted(1, ct, IMPLICIT_VR_LE)];
        assert_eq!(choose(&files[2], &answer).map(|c| c.id), Some(3));
        assert_eq!(choose(&files[0], &answer).map(|c| c.id), Some(1));
    }

    #[test]
    fn store_commands_round_trip() {
        let request = encode_store_request(7, uids::SEGMENTATION_STORAGE, "2.25.123")
            .expect("C-STORE-RQ encodes");
        let parsed = DimseCommand::parse(&request).expect("our SCP parses it");
        assert_eq!(parsed.field, field::C_STORE_RQ);
        assert_eq!(parsed.message_id, Some(7));
        assert!(parsed.has_data_set);
        assert_eq!(
            parsed.affected_sop_class_uid.as_deref(),
            Some(uids::SEGMENTATION_STORAGE)
        );
        assert_eq!(
            parsed.affected_sop_instance_uid.as_deref(),
            Some("2.25.123")
        );

        let answer = Response::with_comment(status::WARNING_COERCION, "kept the first copy")
            .encode(&parsed)
            .expect("response encodes");
        let response = StoreResponse::parse(&answer).expect("C-STORE-RSP parses");
        assert_eq!(
            response,
            StoreResponse {
                message_id_being_responded_to: 7,
                status: status::WARNING_COERCION,
                affected_sop_instance_uid: Some("2.25.123".into()),
                error_comment: Some("kept the first copy".into()),
            }
        );
        // A request is not a response.
        assert!(StoreResponse::parse(&request).is_err());
        assert!(status::is_warning(0xB000) && status::is_warning(0xB007));
        assert!(status::is_warning(0x0001));
        assert!(!status::is_warning(status::SUCCESS));
        assert!(!status::is_warning(status::OUT_OF_RESOURCES));
        assert!(!status::is_warning(status::CANNOT_UNDERSTAND));
    }

    #[test]
    fn node_checks_and_defaults() {
        let parsed: ForwardNode =
            toml::from_str("ae_title = \"PACS\"\nhost = \"pacs.local\"\nport = 104\n")
                .expect("minimal node");
        assert_eq!(parsed.calling_ae_title, "RADSERVE");
        assert_eq!(parsed.timeout_s, 30.0);
        parsed.check().expect("valid");
        assert!(
            toml::from_str::<ForwardNode>(
                "ae_title = \"PACS\"\nhost = \"h\"\nport = 104\ncalled = \"X\"\n"
            )
            .is_err(),
            "unknown fields are refused"
        );

        let base = node(104);
        base.check().expect("valid");
        let refused = [
            ForwardNode {
                ae_title: String::new(),
                ..base.clone()
            },
            ForwardNode {
                ae_title: "    ".into(),
                ..base.clone()
            },
            ForwardNode {
                ae_title: "SEVENTEEN-CHARSXX".into(),
                ..base.clone()
            },
            ForwardNode {
                ae_title: "PA\\CS".into(),
                ..base.clone()
            },
            ForwardNode {
                calling_ae_title: "RAD\nSERVE".into(),
                ..base.clone()
            },
            ForwardNode {
                host: " ".into(),
                ..base.clone()
            },
            ForwardNode {
                port: 0,
                ..base.clone()
            },
            ForwardNode {
                timeout_s: 0.5,
                ..base.clone()
            },
            ForwardNode {
                timeout_s: 601.0,
                ..base.clone()
            },
            ForwardNode {
                timeout_s: f64::NAN,
                ..base.clone()
            },
            ForwardNode {
                timeout_s: f64::INFINITY,
                ..base.clone()
            },
        ];
        for node in refused {
            assert!(
                matches!(node.check(), Err(ForwardError::Config(_))),
                "{node:?} passed the check"
            );
        }
        let sixteen = ForwardNode {
            ae_title: "SIXTEEN-CHARS-XX".into(),
            ..base
        };
        sixteen.check().expect("16 characters are fine");
    }
}
