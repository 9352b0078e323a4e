//! C-STORE SCP (PS3.4 annex B): one instance's data set is streamed, fragment by fragment,
//! into an archive [`Upload`] as it arrives, then handed to [`Archive::put`]; the outcome
//! becomes the C-STORE-RSP status.
//!
//! A failed instance never ends the association: once something goes wrong (bad command,
//! size bound, disk error) the rest of that data set is drained and discarded and the
//! failure status is answered, so the SCU can go on with its next instance.
//!
//! Status choices (PS3.4 B.2.3, PS3.7 C):
//! - stored, identical duplicate, replaced → 0x0000;
//! - same SOP Instance UID with different bytes, first copy kept → 0xB000 (warning:
//!   what the archive holds is not what was sent) with an ErrorComment;
//! - different bytes refused by the duplicate policy → 0x0111 (duplicate SOP instance);
//! - a data set that cannot be parsed or lacks required UIDs → 0xC000 (cannot understand);
//! - the instance is larger than [`MAX_INSTANCE_BYTES`], or the archive fails → 0xA700.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::command::{Command, Response, status};
use crate::metrics::{self, Route};
use crate::store::{Archive, PutError, PutOutcome, Source, Upload};

/// The largest instance we accept over DIMSE (a multi-frame breast tomosynthesis or a
/// whole-slide image can reach a few GiB; more than this is refused, not buffered).
pub const MAX_INSTANCE_BYTES: u64 = 4 << 30;

/// The C-STORE response for an archive outcome.
pub fn put_response(result: &Result<PutOutcome, PutError>) -> Response {
    match result {
        Ok(PutOutcome::Stored(_) | PutOutcome::Duplicate(_) | PutOutcome::Replaced(_)) => {
            Response::new(status::SUCCESS)
        }
        Ok(PutOutcome::ConflictKeptFirst(_)) => Response::with_comment(
            status::WARNING_COERCION,
            "already stored with other content; first copy kept",
        ),
        Err(PutError::Invalid(reason)) => {
            Response::with_comment(status::CANNOT_UNDERSTAND, &format!("invalid: {reason}"))
        }
        Err(PutError::DuplicateRejected(_)) => Response::with_comment(
            status::DUPLICATE_SOP_INSTANCE,
            "SOP Instance UID already stored with other content",
        ),
        Err(PutError::Store(_)) => {
            Response::with_comment(status::OUT_OF_RESOURCES, "archive storage failure")
        }
    }
}

/// One C-STORE whose data set is being received.
pub struct StoreJob {
    pub context_id: u8,
    pub command: Command,
    sink: Sink,
    started: Instant,
    received: u64,
    transfer_syntax: String,
}

enum Sink {
    Upload(Upload),
    /// The outcome is decided; the rest of the data set is read and thrown away.
    Drain(Response),
}

/// Who sent the instance and over which presentation context.
pub struct StoreContext<'a> {
    pub archive: &'a Archive,
    pub abstract_syntax: &'a str,
    pub transfer_syntax: &'a str,
    pub calling_ae_title: &'a str,
    pub peer: SocketAddr,
}

impl StoreJob {
    /// Starts receiving the data set of `command` (a C-STORE-RQ announcing one).
    pub async fn begin(context_id: u8, command: Command, ctx: &StoreContext<'_>) -> StoreJob {
        let sink = match Self::open(&command, ctx).await {
            Ok(upload) => Sink::Upload(upload),
            Err(response) => Sink::Drain(response),
        };
        StoreJob {
            context_id,
            command,
            sink,
            started: Instant::now(),
            received: 0,
            transfer_syntax: ctx.transfer_syntax.to_owned(),
        }
    }

    async fn open(command: &Command, ctx: &StoreContext<'_>) -> Result<Upload, Response> {
        let sop_class = command.affected_sop_class_uid.as_deref().unwrap_or("");
        if sop_class != ctx.abstract_syntax {
            return Err(Response::with_comment(
                status::SOP_CLASS_NOT_SUPPORTED,
                "Affected SOP Class UID differs from the presentation context",
            ));
        }
        let sop_instance = match command.affected_sop_instance_uid.as_deref() {
            Some(uid) if is_valid_uid(uid) => uid,
            _ => {
                return Err(Response::with_comment(
                    status::INVALID_SOP_INSTANCE,
                    "missing or invalid Affected SOP Instance UID",
                ));
            }
        };
        ctx.archive
            .begin_dataset_upload(
                sop_class,
                sop_instance,
                ctx.transfer_syntax,
                ctx.calling_ae_title,
            )
            .await
            .map_err(|e| {
                warn!(error = %e, "cannot start an upload");
                Response::with_comment(status::OUT_OF_RESOURCES, "archive storage failure")
            })
    }

    /// Takes the next fragment of the data set.
    pub async fn write(&mut self, data: &[u8]) {
        self.received = self.received.saturating_add(data.len() as u64);
        let Sink::Upload(upload) = &mut self.sink else {
            return;
        };
        if self.received > MAX_INSTANCE_BYTES {
            warn!(
                limit = MAX_INSTANCE_BYTES,
                "instance larger than the limit; refusing it"
            );
            // Dropping the upload discards its temporary file.
            self.sink = Sink::Drain(Response::with_comment(
                status::OUT_OF_RESOURCES,
                &format!("instance larger than {MAX_INSTANCE_BYTES} bytes"),
            ));
            return;
        }
        if let Err(e) = upload.write(data).await {
            warn!(error = %e, "cannot write an upload");
            self.sink = Sink::Drain(Response::with_comment(
                status::OUT_OF_RESOURCES,
                "archive storage failure",
            ));
        }
    }

    /// The data set is complete: store it and return the response to send.
    pub async fn finish(self, archive: &Archive, source: &Source) -> (Command, Response) {
        let StoreJob {
            command,
            sink,
            started,
            received,
            transfer_syntax,
            ..
        } = self;
        let response = match sink {
            Sink::Drain(response) => response,
            Sink::Upload(upload) => {
                let put_started = Instant::now();
                let result = archive.put(upload, source).await;
                metrics::record_store_latency(put_started.elapsed(), latency_outcome(&result));
                if let Ok(
                    PutOutcome::Stored(_) | PutOutcome::Duplicate(_) | PutOutcome::Replaced(_),
                ) = &result
                {
                    metrics::record_instance_received(Route::Dimse, &transfer_syntax, received);
                }
                match &result {
                    Err(PutError::Store(e)) => warn!(error = %e, "archive failure"),
                    Err(e) => debug!(error = %e, "instance refused"),
                    Ok(_) => {}
                }
                put_response(&result)
            }
        };
        let outcome = match response.status {
            0x0000 => "stored",
            0xB000..=0xBFFF => "warning",
            code => {
                metrics::record_rejection("dimse", refusal_reason(code));
                "failed"
            }
        };
        info!(
            sop_class = command.affected_sop_class_uid.as_deref(),
            sop_instance = command.affected_sop_instance_uid.as_deref(),
            transfer_syntax = %transfer_syntax,
            bytes = received,
            ms = started.elapsed().as_millis() as u64,
            status = format_args!("{:#06x}", response.status),
            comment = response.error_comment.as_deref(),
            "C-STORE {outcome}"
        );
        (command, response)
    }
}

/// The `outcome` label of one `Archive::put`.
fn latency_outcome(result: &Result<PutOutcome, PutError>) -> &'static str {
    match result {
        Ok(PutOutcome::Stored(_)) => "stored",
        Ok(PutOutcome::Duplicate(_)) => "duplicate",
        Ok(PutOutcome::Replaced(_)) => "replaced",
        Ok(PutOutcome::ConflictKeptFirst(_)) => "conflict_kept_first",
        Err(PutError::Invalid(_)) => "invalid",
        Err(PutError::DuplicateRejected(_)) => "duplicate_rejected",
        Err(PutError::Store(_)) => "error",
    }
}

/// The `reason` label of a refused instance, from its failure status (a closed set).
fn refusal_reason(status: u16) -> &'static str {
    match status {
        status::CANNOT_UNDERSTAND => "invalid_instance",
        status::DUPLICATE_SOP_INSTANCE => "duplicate_rejected",
        status::SOP_CLASS_NOT_SUPPORTED => "sop_class_mismatch",
        status::INVALID_SOP_INSTANCE => "invalid_sop_instance_uid",
        status::OUT_OF_RESOURCES => "out_of_resources",
        _ => "refused",
    }
}

/// PS3.5 §9.1: digits and dots, components without leading zeros, at most 64 characters.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|component| {
            !component.is_empty()
                && component.bytes().all(|b| b.is_ascii_digit())
                && (component == "0" || !component.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreError, StoredInstance};

    fn instance() -> StoredInstance {
        StoredInstance {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: "1.2.3.4".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blob_key: "ab/cd".into(),
            size_bytes: 10,
            sha256: "00".into(),
        }
    }

    #[test]
    fn maps_archive_outcomes_to_statuses() {
        for ok in [
            PutOutcome::Stored(instance()),
            PutOutcome::Duplicate(instance()),
            PutOutcome::Replaced(instance()),
        ] {
            let response = put_response(&Ok(ok));
            assert_eq!(response, Response::new(status::SUCCESS));
        }
        let warning = put_response(&Ok(PutOutcome::ConflictKeptFirst(instance())));
        assert_eq!(warning.status, 0xB000);
        assert!(warning.error_comment.unwrap().contains("first copy kept"));

        let invalid = put_response(&Err(PutError::Invalid(
            "truncated element (7FE0,0010)".into(),
        )));
        assert_eq!(invalid.status, 0xC000);
        assert_eq!(
            invalid.error_comment.as_deref(),
            Some("invalid: truncated element (7FE0,0010)")
        );

        let rejected = put_response(&Err(PutError::DuplicateRejected("1.2.3.4".into())));
        assert_eq!(rejected.status, 0x0111);

        let failed = put_response(&Err(PutError::Store(StoreError::Index(
            "disk I/O error".into(),
        ))));
        assert_eq!(failed.status, 0xA700);
        // internal details stay in the log
        assert!(!failed.error_comment.unwrap().contains("disk"));
    }

    #[test]
    fn long_reasons_are_cut_to_an_lo_value() {
        let response = put_response(&Err(PutError::Invalid("x".repeat(500))));
        assert_eq!(response.error_comment.unwrap().chars().count(), 64);
    }

    #[test]
    fn validates_uids() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_valid_uid("1.2.0.3"));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid("1..2"));
        assert!(!is_valid_uid("1.02"));
        assert!(!is_valid_uid("1.2."));
        assert!(!is_valid_uid("1.2.a"));
        assert!(!is_valid_uid(&"1.".repeat(40)));
    }
}
