//! The HL7 v2 listener: MLLP (`<VT>` message `<FS><CR>`) over TCP, one ACK per message.
//!
//! Each message is parsed and mapped ([`super::hl7`]) and stored through
//! [`super::Emr::ingest`] before its ACK is sent (`AA`; `AE` for a content error or a
//! storage failure; `AR` for what we do not process: unsupported types, oversize, framing).
//! A framing error — bytes before `<VT>`, a new `<VT>` before `<FS>`, a frame larger than
//! the limit — is answered with a NAK and the reader resynchronises at the next `<VT>`; the
//! connection stays open. Connections are bounded ([`MllpConfig::max_connections`]) and an
//! idle one is closed after [`MllpConfig::idle_timeout`].
//!
//! Logs name the message type, control id and outcome, never patient names or identifiers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Emr;
use super::hl7::{self, AckCode, CR, ErrorCode, FS, Header, Hl7Error, VT};
use crate::shutdown::Shutdown;

/// The listener's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MllpConfig {
    /// Largest message (between `<VT>` and `<FS>`).
    pub max_message_bytes: usize,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// A connection with nothing to read for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for MllpConfig {
    fn default() -> Self {
        MllpConfig {
            max_message_bytes: hl7::DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: 64,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// What the framer found in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message (between `<VT>` and `<FS>`).
    Message(Vec<u8>),
    /// Bytes outside a frame (not whitespace), discarded up to the next `<VT>`.
    Junk { bytes: usize },
    /// A frame longer than the limit, discarded up to the next `<VT>`; the header when its
    /// MSH could be read.
    Oversize { header: Option<Header> },
    /// A `<VT>` inside a frame: the previous frame never got its `<FS>`.
    Unterminated { header: Option<Header> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames.
    Idle,
    /// After junk that was already reported, until the next `<VT>`.
    SkipJunk,
    InFrame,
    /// After `<FS>`: a `<CR>` is expected.
    AfterEnd,
    /// Dropping the rest of an oversize frame, until the next `<VT>`.
    Discard,
}

/// The MLLP framer: bytes in, [`Frame`]s out; never holds more than the limit.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    state: State,
    buffer: Vec<u8>,
    /// Junk bytes of the current run not yet reported.
    pending_junk: usize,
    junk_reported: bool,
}

impl Framer {
    pub fn new(max_message_bytes: usize) -> Framer {
        Framer {
            max: max_message_bytes,
            state: State::Idle,
            buffer: Vec::new(),
            pending_junk: 0,
            junk_reported: false,
        }
    }

    /// Whether a frame is open (bytes received, no `<FS>` yet).
    pub fn in_frame(&self) -> bool {
        self.state == State::InFrame
    }

    pub fn push(&mut self, data: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &b in data {
            if self.state == State::AfterEnd {
                self.state = State::Idle;
                if b == CR {
                    continue;
                }
            }
            match self.state {
                State::Idle | State::SkipJunk | State::Discard if b == VT => {
                    if self.pending_junk > 0 {
                        frames.push(Frame::Junk {
                            bytes: self.pending_junk,
                        });
                    }
                    self.pending_junk = 0;
                    self.junk_reported = false;
                    self.state = State::InFrame;
                    self.buffer.clear();
                }
                State::Idle => {
                    if !b.is_ascii_whitespace() {
                        self.pending_junk = 1;
                        self.state = State::SkipJunk;
                    }
                }
                State::SkipJunk => {
                    if !self.junk_reported {
                        self.pending_junk += 1;
                    }
                }
                State::InFrame => match b {
                    FS => {
                        frames.push(Frame::Message(std::mem::take(&mut self.buffer)));
                        self.state = State::AfterEnd;
                    }
                    VT => {
                        frames.push(Frame::Unterminated {
                            header: hl7::peek_header(&self.buffer),
                        });
                        self.buffer.clear();
                    }
                    _ if self.buffer.len() >= self.max => {
                        frames.push(Frame::Oversize {
                            header: hl7::peek_header(&self.buffer),
                        });
                        self.buffer = Vec::new();
                        self.state = State::Discard;
                    }
                    _ => self.buffer.push(b),
                },
                // The end of the oversize frame: what follows is judged afresh.
                State::Discard if b == FS => self.state = State::AfterEnd,
                State::Discard | State::AfterEnd => {}
            }
        }
        if self.pending_junk > 0 {
            // Report the junk now (the sender may be waiting for a reply); the rest of the
            // same run is dropped silently.
            frames.push(Frame::Junk {
                bytes: self.pending_junk,
            });
            self.pending_junk = 0;
            self.junk_reported = true;
        }
        frames
    }
}

/// Wraps a reply in MLLP framing.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(VT);
    out.extend_from_slice(payload);
    out.extend_from_slice(&[FS, CR]);
    out
}

/// Accepts MLLP connections until shutdown.
pub async fn serve(listener: TcpListener, emr: Emr, config: MllpConfig, mut shutdown: Shutdown) {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        warn!(%peer, max = config.max_connections, "too many MLLP connections; closing this one");
                        drop(stream);
                        continue;
                    };
                    let span = info_span!("mllp", %peer);
                    let (emr, config, shutdown) = (emr.clone(), config.clone(), shutdown.clone());
                    connections.spawn(
                        async move {
                            connection(stream, peer, emr, &config, shutdown).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    warn!(error = %e, "cannot accept MLLP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    warn!(error = %e, "MLLP connection task failed");
                }
            }
        }
    }
    drop(listener);
    // Connections stop at their next read once shutdown is requested.
    while let Some(joined) = connections.join_next().await {
        if let Err(e) = joined {
            warn!(error = %e, "MLLP connection task failed");
        }
    }
    info!("MLLP listener stopped");
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    emr: Emr,
    config: &MllpConfig,
    mut shutdown: Shutdown,
) {
    let _ = stream.set_nodelay(true);
    debug!(%peer, "MLLP connection opened");
    let mut framer = Framer::new(config.max_message_bytes);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            _ = shutdown.requested() => break,
            read = tokio::time::timeout(config.idle_timeout, stream.read(&mut chunk)) => read,
        };
        let n = match read {
            Err(_) => {
                info!(
                    idle_s = config.idle_timeout.as_secs(),
                    "MLLP connection idle; closing"
                );
                break;
            }
            Ok(Err(e)) => {
                debug!(error = %e, "MLLP read failed");
                break;
            }
            Ok(Ok(0)) => {
                if framer.in_frame() {
                    info!("MLLP connection closed inside a frame");
                }
                break;
            }
            Ok(Ok(n)) => n,
        };
        for event in framer.push(&chunk[..n]) {
            let reply = handle(&emr, config, event).await;
            if let Err(e) = stream.write_all(&frame(&reply)).await {
                debug!(error = %e, "MLLP write failed");
                return;
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// The reply to one framer event (encoded in the original's charset).
pub async fn handle(emr: &Emr, config: &MllpConfig, event: Frame) -> Vec<u8> {
    let (header, error) = match event {
        Frame::Message(bytes) => return handle_message(emr, config, &bytes).await,
        Frame::Junk { bytes } => (
            None,
            Hl7Error::rejected(
                ErrorCode::SegmentSequence,
                format!("{bytes} bytes outside an MLLP frame (expected <VT>) were discarded"),
            ),
        ),
        Frame::Oversize { header } => (
            header,
            Hl7Error::rejected(
                ErrorCode::ApplicationError,
                format!(
                    "message larger than the {} bytes accepted; discarded",
                    config.max_message_bytes
                ),
            ),
        ),
        Frame::Unterminated { header } => (
            header,
            Hl7Error::rejected(
                ErrorCode::SegmentSequence,
                "frame not terminated by <FS><CR> before the next <VT>; discarded",
            ),
        ),
    };
    let header = header.unwrap_or_default();
    warn!(
        control_id = %header.control_id,
        ack = error.ack.as_str(),
        reason = %error.message,
        "MLLP framing error"
    );
    header.charset.encode(&hl7::ack(&header, Some(&error)))
}

async fn handle_message(emr: &Emr, config: &MllpConfig, bytes: &[u8]) -> Vec<u8> {
    let (header, error) = match hl7::read_message(bytes, config.max_message_bytes) {
        Err(refused) => (*refused.header, Some(refused.error)),
        Ok(parsed) => {
            let counts = (
                parsed.records.patients.len(),
                parsed.records.orders.len(),
                parsed.records.encounters.len(),
            );
            match emr.ingest(parsed.records).await {
                Ok(report) => {
                    info!(
                        message_type = %parsed.header.message_type,
                        trigger = %parsed.header.trigger,
                        control_id = %parsed.header.control_id,
                        patients = counts.0,
                        orders = counts.1,
                        encounters = counts.2,
                        linked = report.join.linked,
                        "HL7 message stored"
                    );
                    (parsed.header, None)
                }
                Err(e) => {
                    warn!(error = %e, control_id = %parsed.header.control_id, "HL7 message not stored");
                    (
                        parsed.header,
                        Some(Hl7Error {
                            ack: AckCode::AE,
                            code: ErrorCode::ApplicationError,
                            location: None,
                            message: "the records could not be stored; send again".into(),
                        }),
                    )
                }
            }
        }
    };
    if let Some(error) = &error {
        // The error names a segment and field, never a value from the message.
        info!(
            message_type = %header.message_type,
            trigger = %header.trigger,
            control_id = %header.control_id,
            ack = error.ack.as_str(),
            code = error.code.code(),
            location = %error.location.as_ref().map(ToString::to_string).unwrap_or_default(),
            "HL7 message refused"
        );
    }
    header.charset.encode(&hl7::ack(&header, error.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"MSH|^~\\&|A|B|C|D|1||ADT^A08|CTL1|P|2.5\rPID|1||7^^^H^MR\r";

    fn framed(m: &[u8]) -> Vec<u8> {
        frame(m)
    }

    #[test]
    fn frames_across_reads_and_back_to_back() {
        let mut framer = Framer::new(1 << 20);
        let mut bytes = framed(MSG);
        bytes.extend(framed(MSG));
        let (a, b) = bytes.split_at(7);
        assert!(framer.push(a).is_empty());
        let frames = framer.push(b);
        assert_eq!(
            frames,
            vec![Frame::Message(MSG.to_vec()), Frame::Message(MSG.to_vec())]
        );
        // Byte by byte.
        let mut frames = Vec::new();
        for b in &bytes {
            frames.extend(framer.push(std::slice::from_ref(b)));
        }
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn junk_is_reported_once_and_skipped() {
        let mut framer = Framer::new(1 << 20);
        let mut bytes = b"hello there".to_vec();
        bytes.extend(framed(MSG));
        let frames = framer.push(&bytes);
        assert_eq!(
            frames,
            vec![Frame::Junk { bytes: 11 }, Frame::Message(MSG.to_vec())]
        );
        // Whitespace between frames is not junk.
        assert_eq!(framer.push(b"\r\n \n"), vec![]);
        // A run of junk across reads: one report.
        assert_eq!(framer.push(b"xx"), vec![Frame::Junk { bytes: 2 }]);
        assert_eq!(framer.push(b"yy"), vec![]);
        assert_eq!(
            framer.push(&framed(MSG)),
            vec![Frame::Message(MSG.to_vec())]
        );
    }

    #[test]
    fn oversize_and_unterminated_frames_resynchronise() {
        let mut framer = Framer::new(100);
        let mut big = b"MSH|^~\\&|A|B|C|D|1||ADT^A08|BIG1|P|2.5\r".to_vec();
        big.extend(std::iter::repeat_n(b'x', 500));
        let mut bytes = framed(&big);
        bytes.extend(framed(MSG));
        let frames = framer.push(&bytes);
        assert_eq!(frames.len(), 2, "{frames:?}");
        match &frames[0] {
            Frame::Oversize { header: Some(h) } => assert_eq!(h.control_id, "BIG1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(frames[1], Frame::Message(MSG.to_vec()));
        // Junk after an oversize frame's <FS><CR> is reported.
        let mut bytes = framed(&big);
        bytes.extend_from_slice(b"junk");
        let frames = framer.push(&bytes);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[1], Frame::Junk { bytes: 4 });

        let mut framer = Framer::new(1 << 20);
        let mut bytes = vec![VT];
        bytes.extend_from_slice(MSG);
        bytes.extend(framed(MSG));
        let frames = framer.push(&bytes);
        assert!(
            matches!(&frames[0], Frame::Unterminated { header: Some(h) } if h.control_id == "CTL1")
        );
        assert_eq!(frames[1], Frame::Message(MSG.to_vec()));
        // <FS> without <CR>: taken.
        let mut framer = Framer::new(1 << 20);
        let mut bytes = vec![VT];
        bytes.extend_from_slice(MSG);
        bytes.push(FS);
        bytes.extend(framed(MSG));
        assert_eq!(framer.push(&bytes).len(), 2);
    }
}
