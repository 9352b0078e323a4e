//! One association, from A-ASSOCIATE-RQ to A-RELEASE or A-ABORT.
//!
//! [`run`] negotiates (called AE title must be ours; calling AE must be allowed; only
//! the abstract syntaxes we serve — Verification, every storage SOP class, Study Root
//! C-FIND — and the transfer syntaxes we can decode are accepted), then loops: P-DATA
//! fragments go into an [`Assembler`] that yields commands and data-set fragments; a
//! C-STORE data set is streamed into the archive as it arrives ([`super::store_scp`]), a
//! C-FIND identifier is collected (bounded) and answered ([`super::find_scp`]); release,
//! abort, idle timeout, protocol errors and server shutdown end the loop. Nothing read
//! from the network is trusted: a bad data set gets a failure status and the association
//! goes on; a broken protocol exchange ends in an A-ABORT and a log line, never a panic.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use dicom_dictionary_std::uids;
use dicom_ul::Pdu;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::{
    Association as _, AsyncServerAssociation, Error as UlError, ServerAssociationOptions,
};
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, AssociationRJSource, PDV_HEADER_SIZE, PDataValue,
    PDataValueType, PresentationContextResultReason, UserIdentity,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::command::{Command, CommandError, Response, field, status};
use super::find_scp::{self, MAX_IDENTIFIER_BYTES, MAX_MATCHES, STUDY_ROOT_FIND};
use super::storage_classes::STORAGE_SOP_CLASSES;
use super::store_scp::{StoreContext, StoreJob};
use super::{ACSE_TIMEOUT, IDLE_TIMEOUT, WRITE_TIMEOUT};
use crate::auth::audit;
use crate::config::{AllowedCaller, DicomSettings};
use crate::metrics;
use crate::shutdown::Shutdown;
use crate::store::{Archive, Source};

/// Abstract syntaxes we accept besides the storage SOP classes
/// ([`STORAGE_SOP_CLASSES`]). Anything else is answered "abstract syntax not supported"
/// in the A-ASSOCIATE-AC.
pub const SERVICE_SOP_CLASSES: &[&str] = &[uids::VERIFICATION, STUDY_ROOT_FIND];

/// Transfer syntaxes we accept: those whose data sets the archive can read and whose
/// pixel data our codecs decode. A presentation context proposing none of them is
/// rejected (transfer syntaxes not supported); the association goes on with the others.
/// dicom-ul picks the first of the SCU's proposals that is in this list.
pub const TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",    // Explicit VR Big Endian (retired, still met)
    "1.2.840.10008.1.2.4.50", // JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51", // JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57", // JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70", // JPEG Lossless, first-order prediction (Process 14 SV1)
    "1.2.840.10008.1.2.5",    // RLE Lossless
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 (lossless only)
    "1.2.840.10008.1.2.4.91", // JPEG 2000
];

/// A command set larger than this is a protocol error (real ones are ~100–300 bytes).
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

type Association = AsyncServerAssociation<TcpStream>;

/// Whether `uid` is a storage SOP class we accept.
pub fn is_storage_class(uid: &str) -> bool {
    STORAGE_SOP_CLASSES.contains(&uid)
}

/// Serves one association on `stream` until it ends. Logs; never fails.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<DicomSettings>,
    archive: Archive,
    mut shutdown: Shutdown,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let policy = CallerPolicy {
        allowed: &settings.allowed_callers,
        peer: peer.ip(),
    };
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(policy)
        .ae_title(settings.ae_title.as_str())
        .max_pdu_length(settings.max_pdu)
        .read_timeout(IDLE_TIMEOUT)
        .write_timeout(WRITE_TIMEOUT);
    for uid in SERVICE_SOP_CLASSES.iter().chain(STORAGE_SOP_CLASSES) {
        options = options.with_abstract_syntax(*uid);
    }
    for uid in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*uid);
    }

    let assoc = match tokio::time::timeout(ACSE_TIMEOUT, options.establish_async(stream)).await {
        Err(_) => {
            info!(
                timeout_s = ACSE_TIMEOUT.as_secs(),
                "no association request in time; closing"
            );
            return;
        }
        Ok(Err(UlError::Rejected { association_rj, .. })) => {
            info!(reason = %association_rj.source, "association rejected");
            metrics::record_rejection("dimse", rejection_reason(&association_rj.source));
            return;
        }
        Ok(Err(e)) => {
            warn!("association not established: {}", error_chain(&e));
            return;
        }
        Ok(Ok(assoc)) => assoc,
    };

    let contexts: Vec<AcceptedContext> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| AcceptedContext {
            id: pc.id,
            abstract_syntax: pc.abstract_syntax.clone(),
            transfer_syntax: pc.transfer_syntax.clone(),
        })
        .collect();
    let calling_ae_title = assoc.peer_ae_title().trim().to_owned();
    // dicom-ul establishes an association even when it refused every presentation
    // context; nothing could be done on it, so it counts as a rejection and is aborted.
    if contexts.is_empty() {
        info!(
            calling_ae = %calling_ae_title,
            offered = assoc.presentation_contexts().len(),
            "no acceptable presentation context; aborting association"
        );
        metrics::record_rejection("dimse", "no_acceptable_context");
        abort(assoc).await;
        return;
    }
    // Counts the association as open until `run` returns, however it ends.
    let _open = metrics::AssociationGuard::open();
    info!(
        calling_ae = %calling_ae_title,
        accepted = contexts.len(),
        offered = assoc.presentation_contexts().len(),
        peer_max_pdu = assoc.requestor_max_pdu_length(),
        "association established"
    );

    let mut session = Session {
        assoc,
        contexts,
        archive,
        source: Source::Dimse {
            calling_ae_title: calling_ae_title.clone(),
            peer,
        },
        calling_ae_title,
        our_ae_title: settings.ae_title.as_str().to_owned(),
        peer,
        deferred: VecDeque::new(),
        assembler: Assembler::default(),
        incoming: None,
        messages: 0,
    };
    loop {
        let pdu = match session.deferred.pop_front() {
            Some(pdu) => pdu,
            None => {
                let received = tokio::select! {
                    biased;
                    _ = shutdown.requested() => None,
                    pdu = session.assoc.receive() => Some(pdu),
                };
                match received {
                    None => {
                        info!("server shutting down: aborting association");
                        abort(session.assoc).await;
                        return;
                    }
                    Some(Ok(pdu)) => pdu,
                    Some(Err(e @ UlError::Timeout { .. })) => {
                        info!(
                            timeout_s = IDLE_TIMEOUT.as_secs(),
                            "association idle: {e}; aborting"
                        );
                        abort(session.assoc).await;
                        return;
                    }
                    Some(Err(e)) => {
                        info!("association ended without release: {}", error_chain(&e));
                        return;
                    }
                }
            }
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    if let Err(e) = session.on_fragment(pdv).await {
                        warn!("protocol error: {e}; aborting association");
                        abort(session.assoc).await;
                        return;
                    }
                }
            }
            Pdu::ReleaseRQ => {
                if let Err(e) = session.assoc.send(&Pdu::ReleaseRP).await {
                    info!("cannot send A-RELEASE-RP: {}", error_chain(&e));
                }
                let _ = session.assoc.inner_stream().shutdown().await;
                info!(messages = session.messages, "association released");
                return;
            }
            Pdu::AbortRQ { source } => {
                info!(?source, "association aborted by peer");
                return;
            }
            other => {
                warn!(pdu = %other.short_description(), "unexpected PDU; aborting association");
                abort(session.assoc).await;
                return;
            }
        }
    }
}

/// The state of an established association.
struct Session {
    assoc: Association,
    contexts: Vec<AcceptedContext>,
    archive: Archive,
    source: Source,
    calling_ae_title: String,
    our_ae_title: String,
    peer: SocketAddr,
    /// PDUs read while a C-FIND was answered (looking for a C-CANCEL), handled next.
    deferred: VecDeque<Pdu>,
    assembler: Assembler,
    /// The request whose data set is being received.
    incoming: Option<Incoming>,
    messages: u64,
}

/// What happens to the data set being received.
enum Incoming {
    Store(StoreJob),
    Find {
        message: Message,
        bytes: Vec<u8>,
        too_large: bool,
    },
    /// Read and thrown away; then `response` is sent.
    Discard {
        message: Message,
        response: Response,
    },
}

impl Session {
    fn context(&self, id: u8) -> Option<&AcceptedContext> {
        self.contexts.iter().find(|pc| pc.id == id)
    }

    async fn on_fragment(&mut self, pdv: PDataValue) -> Result<(), ProtocolError> {
        match self.assembler.push(pdv, &self.contexts)? {
            None => Ok(()),
            Some(Event::Message(message)) => {
                self.messages += 1;
                match response_without_data_set(&message, &self.contexts)? {
                    Some(response) => {
                        log_simple(&message, &response);
                        self.respond(&message, &response).await
                    }
                    None => {
                        debug!(field = message.command.field, "no response due");
                        Ok(())
                    }
                }
            }
            Some(Event::DataSetBegins(message)) => {
                self.messages += 1;
                self.incoming = Some(self.begin_data_set(message).await?);
                Ok(())
            }
            Some(Event::DataSetFragment { data, is_last }) => {
                match self.incoming.as_mut() {
                    Some(Incoming::Store(job)) => job.write(&data).await,
                    Some(Incoming::Find {
                        bytes, too_large, ..
                    }) => {
                        if bytes.len().saturating_add(data.len()) > MAX_IDENTIFIER_BYTES {
                            *too_large = true;
                            bytes.clear();
                        } else if !*too_large {
                            bytes.extend_from_slice(&data);
                        }
                    }
                    Some(Incoming::Discard { .. }) => {}
                    // The assembler only yields fragments after DataSetBegins.
                    None => return Err(ProtocolError::UnexpectedDataSet),
                }
                if is_last {
                    self.finish_data_set().await?;
                }
                Ok(())
            }
        }
    }

    async fn begin_data_set(&mut self, message: Message) -> Result<Incoming, ProtocolError> {
        let command = &message.command;
        if !command.is_request() {
            return Err(ProtocolError::UnexpectedResponse(command.field));
        }
        let Some(context) = self.context(message.context_id) else {
            return Err(ProtocolError::UnknownContext(message.context_id));
        };
        Ok(match command.field {
            field::C_STORE_RQ if is_storage_class(&context.abstract_syntax) => {
                let ctx = StoreContext {
                    archive: &self.archive,
                    abstract_syntax: &context.abstract_syntax,
                    transfer_syntax: &context.transfer_syntax,
                    calling_ae_title: &self.calling_ae_title,
                    peer: self.peer,
                };
                Incoming::Store(StoreJob::begin(message.context_id, message.command, &ctx).await)
            }
            field::C_FIND_RQ if context.abstract_syntax == STUDY_ROOT_FIND => Incoming::Find {
                message,
                bytes: Vec::new(),
                too_large: false,
            },
            _ => {
                warn!(
                    field = format_args!("{:#06x}", command.field),
                    sop_class = command.affected_sop_class_uid.as_deref(),
                    "unsupported operation; answering 0x0211 (unrecognized operation)"
                );
                Incoming::Discard {
                    message,
                    response: Response::new(status::UNRECOGNIZED_OPERATION),
                }
            }
        })
    }

    async fn finish_data_set(&mut self) -> Result<(), ProtocolError> {
        match self.incoming.take() {
            Some(Incoming::Store(job)) => {
                let context_id = job.context_id;
                let (command, response) = job.finish(&self.archive, &self.source).await;
                let message = Message {
                    context_id,
                    command,
                };
                self.respond(&message, &response).await
            }
            Some(Incoming::Find {
                message,
                bytes,
                too_large,
            }) => {
                if too_large {
                    let response =
                        Response::with_comment(status::OUT_OF_RESOURCES, "identifier too large");
                    return self.respond(&message, &response).await;
                }
                self.find(&message, &bytes).await
            }
            Some(Incoming::Discard { message, response }) => {
                self.respond(&message, &response).await
            }
            None => Err(ProtocolError::UnexpectedDataSet),
        }
    }

    /// Answers a C-FIND and audits it (once, whatever the outcome).
    async fn find(&mut self, message: &Message, identifier: &[u8]) -> Result<(), ProtocolError> {
        let mut level = "UNKNOWN";
        let result = self.answer_find(message, identifier, &mut level).await;
        let outcome = match &result {
            Ok(status) => find_outcome(*status),
            Err(_) => "error: protocol".to_owned(),
        };
        if let Err(e) = audit::record_dimse_find(
            &self.archive,
            &self.calling_ae_title,
            self.peer,
            level,
            &outcome,
        )
        .await
        {
            warn!(error = %e, "C-FIND: cannot write the audit record");
        }
        result.map(|_| ())
    }

    /// Answers a C-FIND: pending responses, one per match, then the final status, which
    /// is returned. `level` is set once the identifier is understood.
    async fn answer_find(
        &mut self,
        message: &Message,
        identifier: &[u8],
        level: &mut &'static str,
    ) -> Result<u16, ProtocolError> {
        let started = Instant::now();
        let transfer_syntax = self
            .context(message.context_id)
            .map(|pc| pc.transfer_syntax.clone())
            .ok_or(ProtocolError::UnknownContext(message.context_id))?;
        let request = match find_scp::parse_identifier(identifier, &transfer_syntax) {
            Ok(request) => request,
            Err(response) => {
                info!(
                    status = format_args!("{:#06x}", response.status),
                    comment = response.error_comment.as_deref(),
                    "C-FIND refused"
                );
                return self
                    .respond(message, &response)
                    .await
                    .map(|()| response.status);
            }
        };
        *level = request.level_name;
        let matches = match self.archive.query(&request.query).await {
            Ok(matches) => matches,
            Err(e) => {
                warn!(error = %e, "C-FIND: archive query failed");
                let response =
                    Response::with_comment(status::OUT_OF_RESOURCES, "archive query failure");
                return self
                    .respond(message, &response)
                    .await
                    .map(|()| response.status);
            }
        };
        let mut sent = 0usize;
        let mut final_response = if matches.len() > MAX_MATCHES {
            Response::with_comment(
                status::OUT_OF_RESOURCES,
                &format!("more than {MAX_MATCHES} matches; narrow the query"),
            )
        } else {
            Response::new(status::SUCCESS)
        };
        for attributes in matches.iter().take(MAX_MATCHES) {
            if self.cancel_requested(message.command.message_id).await? {
                final_response = Response::new(status::CANCEL);
                break;
            }
            let data = match find_scp::encode_match(
                &request,
                attributes,
                &transfer_syntax,
                &self.our_ae_title,
            ) {
                Ok(data) => data,
                Err(e) => {
                    warn!("C-FIND: {e}");
                    final_response =
                        Response::with_comment(status::CANNOT_UNDERSTAND, "cannot encode a match");
                    break;
                }
            };
            let pending = Response {
                has_data_set: true,
                ..Response::new(status::PENDING)
            };
            self.respond(message, &pending).await?;
            send_fragments(
                &mut self.assoc,
                message.context_id,
                PDataValueType::Data,
                &data,
            )
            .await?;
            sent += 1;
        }
        info!(
            level = request.level_name,
            keys = request.query.keys.len(),
            matches = sent,
            ms = started.elapsed().as_millis() as u64,
            status = format_args!("{:#06x}", final_response.status),
            "C-FIND"
        );
        self.respond(message, &final_response)
            .await
            .map(|()| final_response.status)
    }

    /// Looks, without waiting, for a PDU from the peer: a C-CANCEL for `message_id` ends
    /// the C-FIND; anything else is kept for the main loop.
    async fn cancel_requested(&mut self, message_id: Option<u16>) -> Result<bool, ProtocolError> {
        let polled = tokio::select! {
            biased;
            pdu = self.assoc.receive() => Some(pdu),
            () = std::future::ready(()) => None,
        };
        match polled {
            None => Ok(false),
            Some(Err(e)) => Err(ProtocolError::Receive(error_chain(&e))),
            Some(Ok(pdu)) => {
                if is_cancel(&pdu, message_id) {
                    info!("C-CANCEL received");
                    Ok(true)
                } else {
                    self.deferred.push_back(pdu);
                    Ok(false)
                }
            }
        }
    }

    async fn respond(
        &mut self,
        message: &Message,
        response: &Response,
    ) -> Result<(), ProtocolError> {
        let bytes = response.encode(&message.command)?;
        send_fragments(
            &mut self.assoc,
            message.context_id,
            PDataValueType::Command,
            &bytes,
        )
        .await
    }
}

/// Whether `pdu` is exactly a C-CANCEL-RQ for `message_id`.
fn is_cancel(pdu: &Pdu, message_id: Option<u16>) -> bool {
    let Pdu::PData { data } = pdu else {
        return false;
    };
    let [pdv] = data.as_slice() else {
        return false;
    };
    if pdv.value_type != PDataValueType::Command || !pdv.is_last {
        return false;
    }
    Command::parse(&pdv.data).is_ok_and(|command| {
        command.field == field::C_CANCEL_RQ
            && (message_id.is_none() || command.message_id_being_responded_to == message_id)
    })
}

fn log_simple(message: &Message, response: &Response) {
    let command = &message.command;
    if command.field == field::C_ECHO_RQ && response.status == status::SUCCESS {
        info!(message_id = command.message_id, "C-ECHO");
    } else {
        warn!(
            field = format_args!("{:#06x}", command.field),
            sop_class = command.affected_sop_class_uid.as_deref(),
            status = format_args!("{:#06x}", response.status),
            "request refused"
        );
    }
}

/// The `reason` label of a rejected association (a closed set).
fn rejection_reason(source: &AssociationRJSource) -> &'static str {
    match source {
        AssociationRJSource::ServiceUser(
            AssociationRJServiceUserReason::CallingAETitleNotRecognized,
        ) => "calling_ae_not_allowed",
        AssociationRJSource::ServiceUser(
            AssociationRJServiceUserReason::CalledAETitleNotRecognized,
        ) => "called_ae_wrong",
        AssociationRJSource::ServiceUser(
            AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
        ) => "application_context_not_supported",
        AssociationRJSource::ServiceProviderASCE(_) => "protocol_version_not_supported",
        _ => "association_rejected",
    }
}

/// The audit outcome of a C-FIND final status.
fn find_outcome(status: u16) -> String {
    match status {
        status::SUCCESS | status::CANCEL => "success".to_owned(),
        code => format!("error: {code:#06x}"),
    }
}

/// Access policy: the called AE title must be ours; when `dicom.allowed_callers` is not
/// empty, the calling AE title (and host, when the entry names one) must be listed.
struct CallerPolicy<'a> {
    allowed: &'a [AllowedCaller],
    peer: IpAddr,
}

impl AccessControl for CallerPolicy<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title != this_ae_title {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|caller| caller.matches(calling_ae_title, self.peer))
        {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// A presentation context accepted at negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// A DIMSE command as received, with the presentation context it came on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub context_id: u8,
    pub command: Command,
}

/// What the [`Assembler`] makes of the fragments so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole command that has no data set.
    Message(Message),
    /// A whole command announcing a data set; its fragments follow.
    DataSetBegins(Message),
    /// One fragment of the data set (in order); `is_last` ends it.
    DataSetFragment { data: Vec<u8>, is_last: bool },
}

/// Why an association is aborted.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("P-DATA on presentation context {0}, which was not accepted")]
    UnknownContext(u8),
    #[error(
        "message fragment on presentation context {got} while a message on {expected} is incomplete"
    )]
    ContextSwitch { expected: u8, got: u8 },
    #[error("data set fragment without a command announcing one")]
    UnexpectedDataSet,
    #[error("command fragment while a data set was expected")]
    UnexpectedCommand,
    #[error("command set longer than {MAX_COMMAND_LEN} bytes")]
    CommandTooLong,
    #[error("the peer sent a response (command field {0:#06x}) to a request we never made")]
    UnexpectedResponse(u16),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("cannot send response: {0}")]
    Send(String),
    #[error("cannot receive: {0}")]
    Receive(String),
}

/// Joins P-DATA fragments (PDVs) into commands and passes data-set fragments through,
/// so that a data set is never gathered here. Messages do not interleave: all of one
/// message's fragments come before the next message's.
#[derive(Debug, Default)]
pub struct Assembler {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    Command {
        context_id: u8,
        bytes: Vec<u8>,
    },
    DataSet {
        context_id: u8,
    },
}

impl Assembler {
    /// Takes one fragment; returns what it completes, if anything.
    pub fn push(
        &mut self,
        pdv: PDataValue,
        accepted: &[AcceptedContext],
    ) -> Result<Option<Event>, ProtocolError> {
        let id = pdv.presentation_context_id;
        if !accepted.iter().any(|pc| pc.id == id) {
            return Err(ProtocolError::UnknownContext(id));
        }
        match (std::mem::take(&mut self.state), &pdv.value_type) {
            (State::Idle, PDataValueType::Command) => self.command_fragment(id, Vec::new(), pdv),
            (State::Command { context_id, bytes }, PDataValueType::Command) => {
                if context_id != id {
                    return Err(ProtocolError::ContextSwitch {
                        expected: context_id,
                        got: id,
                    });
                }
                self.command_fragment(id, bytes, pdv)
            }
            (State::DataSet { context_id }, PDataValueType::Data) => {
                if context_id != id {
                    return Err(ProtocolError::ContextSwitch {
                        expected: context_id,
                        got: id,
                    });
                }
                if !pdv.is_last {
                    self.state = State::DataSet { context_id };
                }
                Ok(Some(Event::DataSetFragment {
                    data: pdv.data,
                    is_last: pdv.is_last,
                }))
            }
            (State::Idle | State::Command { .. }, PDataValueType::Data) => {
                Err(ProtocolError::UnexpectedDataSet)
            }
            (State::DataSet { .. }, PDataValueType::Command) => {
                Err(ProtocolError::UnexpectedCommand)
            }
        }
    }

    fn command_fragment(
        &mut self,
        context_id: u8,
        mut bytes: Vec<u8>,
        pdv: PDataValue,
    ) -> Result<Option<Event>, ProtocolError> {
        if bytes.len().saturating_add(pdv.data.len()) > MAX_COMMAND_LEN {
            return Err(ProtocolError::CommandTooLong);
        }
        if bytes.is_empty() {
            bytes = pdv.data;
        } else {
            bytes.extend_from_slice(&pdv.data);
        }
        if !pdv.is_last {
            self.state = State::Command { context_id, bytes };
            return Ok(None);
        }
        let command = Command::parse(&bytes)?;
        let message = Message {
            context_id,
            command,
        };
        if message.command.has_data_set {
            self.state = State::DataSet { context_id };
            return Ok(Some(Event::DataSetBegins(message)));
        }
        Ok(Some(Event::Message(message)))
    }
}

/// What we answer to `message`, a command without a data set: `Some(response)`, or
/// `None` for no answer (a C-CANCEL with nothing to cancel).
pub fn response_without_data_set(
    message: &Message,
    contexts: &[AcceptedContext],
) -> Result<Option<Response>, ProtocolError> {
    let command = &message.command;
    if !command.is_request() {
        return Err(ProtocolError::UnexpectedResponse(command.field));
    }
    let abstract_syntax = contexts
        .iter()
        .find(|pc| pc.id == message.context_id)
        .map(|pc| pc.abstract_syntax.as_str())
        .unwrap_or("");
    Ok(match command.field {
        field::C_ECHO_RQ if abstract_syntax == uids::VERIFICATION => {
            Some(Response::new(status::SUCCESS))
        }
        // A C-CANCEL arriving after its C-FIND has ended.
        field::C_CANCEL_RQ => None,
        field::C_STORE_RQ if is_storage_class(abstract_syntax) => Some(Response::with_comment(
            status::CANNOT_UNDERSTAND,
            "C-STORE-RQ without a data set",
        )),
        field::C_FIND_RQ if abstract_syntax == STUDY_ROOT_FIND => Some(Response::with_comment(
            status::DATA_SET_DOES_NOT_MATCH,
            "C-FIND-RQ without an identifier",
        )),
        _ => Some(Response::new(status::UNRECOGNIZED_OPERATION)),
    })
}

/// Sends a command set or data set, split into as many PDUs as the peer's maximum
/// length requires.
async fn send_fragments(
    assoc: &mut Association,
    context_id: u8,
    value_type: PDataValueType,
    bytes: &[u8],
) -> Result<(), ProtocolError> {
    // Even fragment sizes keep 16-bit values whole (not required, but kind to peers).
    let max_fragment = (assoc
        .requestor_max_pdu_length()
        .saturating_sub(PDV_HEADER_SIZE)
        .max(2) as usize)
        & !1;
    let count = bytes.len().div_ceil(max_fragment).max(1);
    let mut chunks: Vec<&[u8]> = bytes.chunks(max_fragment).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for (i, chunk) in chunks.into_iter().enumerate() {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: value_type.clone(),
                is_last: i + 1 == count,
                data: chunk.to_vec(),
            }],
        };
        assoc
            .send(&pdu)
            .await
            .map_err(|e| ProtocolError::Send(error_chain(&e)))?;
    }
    Ok(())
}

async fn abort(assoc: Association) {
    if let Err(e) = assoc.abort().await {
        debug!("cannot send A-ABORT: {}", error_chain(&e));
    }
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
