//! Results out to the EMR: each finished job pushed to a FHIR server as a transaction
//! Bundle (`[emr.fhir_push]`) and/or sent as an HL7 v2 ORU^R01 over MLLP (`[emr.hl7_out]`).
//!
//! The queue is the outbox table ([`crate::store::outbox`]): a job that finishes while a
//! destination is configured gets a row in its own completion transaction, and a study
//! whose EMR link changes after its results went out is queued again (the new patient and
//! order go out: the same resources updated by `PUT`, an ORU marked as a correction). One
//! task per destination sends the due rows, one at a time and oldest first, building the
//! content at send time from the current rows (so what goes out is what the FHIR API
//! serves). Outcomes:
//! - accepted (HTTP 2xx; ACK `AA`/`CA`): delivered, with the answer kept;
//! - may pass (connection refused or cut, timeout, HTTP 408/429/5xx, ACK `AR`/`CR`, an
//!   ACK for another message): due again after a backoff (doubling from
//!   `backoff_initial_s` to `backoff_max_s`, or the server's `Retry-After`), failed after
//!   `max_attempts`;
//! - refused (HTTP 4xx, ACK `AE`/`CE`): failed at once with the destination's reason; an
//!   operator may queue it again (`POST /api/v1/emr/outbox/{id}/retry`).
//!
//! Logs name the outbox row, job and outcome, never the patient.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::fhir_out::{self, FindingSites, JobResult, StudyContext};
use super::hl7::{self, CR, FS, VT};
use super::ingest::{ORDER, PATIENT};
use super::oru::{self, OruInput, Parties};
use super::report_source;
use super::{EmrOrder, EmrPatient};
use crate::infer::Models;
use crate::shutdown::Shutdown;
use crate::store::jobs::timestamp;
use crate::store::outbox::{OutboxEntry, Outcome};
use crate::store::{Archive, StoreError};

/// Outbox destination names.
pub const FHIR: &str = "fhir";
pub const HL7: &str = "hl7";

/// The largest answer read from a destination (an ACK, a transaction-response).
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Rows taken per look at the queue.
const BATCH: u32 = 16;
/// How much of an answer is kept in the outbox row.
const KEPT_ANSWER_CHARS: usize = 2000;

/// `[emr.fhir_push]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirPush {
    /// The FHIR server's base URL; the transaction Bundle is POSTed to it.
    pub url: String,
    /// Sent as `Authorization: Bearer …`; read at start-up from `bearer_token_file`.
    pub bearer_token: Option<String>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// `[emr.hl7_out]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Out {
    pub host: String,
    pub port: u16,
    pub parties: Parties,
    /// Connect, send and wait for the ACK, at most this long.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// When to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: i64,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The wait after `attempts` failed sends (1, 2, ...), or `None` when they are used up.
    pub fn after(&self, attempts: i64, asked: Option<Duration>) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let doubled = self
            .initial
            .saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32);
        Some(asked.unwrap_or(doubled).min(self.max))
    }
}

/// The `[emr]` sub-tables of the senders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub fhir: Option<FhirPush>,
    pub hl7: Option<Hl7Out>,
}

impl DeliveryConfig {
    /// The configured destinations' names.
    pub fn destinations(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.fhir.is_some() {
            names.push(FHIR);
        }
        if self.hl7.is_some() {
            names.push(HL7);
        }
        names
    }
}

/// The retry keys both sender tables have.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryKeys {
    max_attempts: Option<i64>,
    backoff_initial_s: Option<f64>,
    backoff_max_s: Option<f64>,
    timeout_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FhirPushKeys {
    url: String,
    bearer_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hl7OutKeys {
    host: String,
    port: u16,
    sending_application: Option<String>,
    sending_facility: Option<String>,
    receiving_application: Option<String>,
    receiving_facility: Option<String>,
}

fn seconds(value: Option<f64>, default: f64, key: &str) -> Result<Duration, String> {
    let s = value.unwrap_or(default);
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{key} = {s}: expected a positive number of seconds"))
}

/// Splits a sender table into its own keys (`T`) and the retry keys, each checked for
/// unknown names.
fn sender_table<T: serde::de::DeserializeOwned>(
    value: &toml::Value,
    table: &str,
) -> Result<(T, RetryPolicy, Duration), String> {
    let mut own = value
        .as_table()
        .cloned()
        .ok_or_else(|| format!("[{table}] must be a table"))?;
    let mut retry = toml::Table::new();
    for key in [
        "max_attempts",
        "backoff_initial_s",
        "backoff_max_s",
        "timeout_s",
    ] {
        if let Some(v) = own.remove(key) {
            retry.insert(key.to_owned(), v);
        }
    }
    let error = |e: toml::de::Error| format!("[{table}]: {}", e.message());
    let keys: T = own.try_into().map_err(error)?;
    let retry: RetryKeys = retry.try_into().map_err(error)?;
    let (policy, timeout) = retry.policy(table)?;
    Ok((keys, policy, timeout))
}

impl RetryKeys {
    fn policy(&self, table: &str) -> Result<(RetryPolicy, Duration), String> {
        let max_attempts = self.max_attempts.unwrap_or(10);
        if max_attempts < 1 {
            return Err(format!("[{table}] max_attempts must be at least 1"));
        }
        let initial = seconds(self.backoff_initial_s, 2.0, "backoff_initial_s")?;
        let max = seconds(self.backoff_max_s, 900.0, "backoff_max_s")?.max(initial);
        let timeout = seconds(self.timeout_s, 30.0, "timeout_s")?;
        Ok((
            RetryPolicy {
                max_attempts,
                initial,
                max,
            },
            timeout,
        ))
    }
}

impl DeliveryConfig {
    /// Reads `fhir_push` and `hl7_out` of the `[emr]` table (either may be absent).
    pub fn from_tables(
        fhir: Option<&toml::Value>,
        hl7: Option<&toml::Value>,
    ) -> Result<DeliveryConfig, String> {
        let fhir = fhir
            .map(|v| -> Result<FhirPush, String> {
                let (keys, retry, timeout) = sender_table::<FhirPushKeys>(v, "emr.fhir_push")?;
                url_scheme(&keys.url)
                    .filter(|s| *s == "http" || *s == "https")
                    .ok_or_else(|| {
                        format!(
                            "[emr.fhir_push] url {:?}: expected an http(s) URL",
                            keys.url
                        )
                    })?;
                let bearer_token = keys
                    .bearer_token_file
                    .as_deref()
                    .map(read_token)
                    .transpose()?;
                Ok(FhirPush {
                    url: keys.url.trim_end_matches('/').to_owned(),
                    bearer_token,
                    timeout,
                    retry,
                })
            })
            .transpose()?;
        let hl7 = hl7
            .map(|v| -> Result<Hl7Out, String> {
                let (keys, retry, timeout) = sender_table::<Hl7OutKeys>(v, "emr.hl7_out")?;
                if keys.host.trim().is_empty() || keys.port == 0 {
                    return Err("[emr.hl7_out] needs host and a non-zero port".into());
                }
                Ok(Hl7Out {
                    host: keys.host,
                    port: keys.port,
                    parties: Parties {
                        sending_application: keys
                            .sending_application
                            .unwrap_or_else(|| "RADSERVE".into()),
                        sending_facility: keys.sending_facility.unwrap_or_default(),
                        receiving_application: keys.receiving_application.unwrap_or_default(),
                        receiving_facility: keys.receiving_facility.unwrap_or_default(),
                    },
                    timeout,
                    retry,
                })
            })
            .transpose()?;
        Ok(DeliveryConfig { fhir, hl7 })
    }
}

fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    (!rest.is_empty()).then_some(scheme)
}

fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("[emr.fhir_push] bearer_token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(['\r', '\n']) {
        return Err(format!(
            "[emr.fhir_push] bearer_token_file {}: expected one line holding the token",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// What one send is made of, read at send time.
struct Content {
    study: StudyContext,
    result: JobResult,
}

/// Why there is nothing to send.
enum Unsendable {
    /// For good: the study or the current result is gone.
    Gone(String),
    /// The database could not be read: try again later.
    Store(StoreError),
}

impl From<StoreError> for Unsendable {
    fn from(e: StoreError) -> Self {
        Unsendable::Store(e)
    }
}

/// How a send went, before the retry policy decides.
enum Sent {
    Accepted(String),
    /// May pass; the answer when there was one, the wait the destination asked for.
    Transient {
        error: String,
        answer: Option<String>,
        asked: Option<Duration>,
    },
    Refused {
        error: String,
        answer: Option<String>,
    },
}

/// The senders, one task per configured destination.
#[derive(Clone)]
pub struct Deliverer {
    archive: Archive,
    models: Models,
    config: DeliveryConfig,
    poll: Duration,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("destinations", &self.config.destinations())
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Records the configured destinations (jobs finishing from now on are queued for
    /// them) and returns the senders, to [`Deliverer::start`].
    pub async fn open(
        archive: Archive,
        models: Models,
        config: DeliveryConfig,
    ) -> Result<Deliverer, StoreError> {
        archive
            .outbox()
            .set_destinations(&config.destinations())
            .await?;
        Ok(Deliverer {
            archive,
            models,
            config,
            poll: Duration::from_millis(500),
        })
    }

    /// Spawns one sender per destination; they stop when `shutdown` fires.
    pub fn start(&self, shutdown: Shutdown) {
        for destination in self.config.destinations() {
            let me = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { me.run(destination, shutdown).await });
        }
    }

    async fn run(self, destination: &'static str, mut shutdown: Shutdown) {
        info!(destination, "EMR sender started");
        loop {
            let due = match self.archive.outbox().due(destination, BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    warn!(destination, error = %e, "reading the EMR outbox failed");
                    Vec::new()
                }
            };
            let idle = due.is_empty();
            for entry in due {
                if shutdown.is_requested() {
                    return;
                }
                self.deliver(destination, &entry).await;
            }
            if idle {
                tokio::select! {
                    () = tokio::time::sleep(self.poll) => {}
                    () = shutdown.requested() => return,
                }
            }
        }
    }

    /// Sends one row and records the outcome.
    async fn deliver(&self, destination: &'static str, entry: &OutboxEntry) {
        let sent = match self.content(entry).await {
            Err(Unsendable::Gone(why)) => Sent::Refused {
                error: why,
                answer: None,
            },
            Err(Unsendable::Store(e)) => Sent::Transient {
                error: format!("reading the result: {e}"),
                answer: None,
                asked: None,
            },
            Ok(content) => match destination {
                FHIR => match &self.config.fhir {
                    Some(push) => self.push_fhir(push, &content).await,
                    None => return,
                },
                _ => match &self.config.hl7 {
                    Some(out) => self.send_oru(out, entry, &content).await,
                    None => return,
                },
            },
        };
        let policy = match destination {
            FHIR => self.config.fhir.as_ref().map(|c| c.retry),
            _ => self.config.hl7.as_ref().map(|c| c.retry),
        };
        let Some(policy) = policy else { return };
        let attempts = entry.attempts + 1;
        let (outcome, label) = match sent {
            Sent::Accepted(answer) => (Outcome::Delivered { response: answer }, "delivered"),
            Sent::Refused { error, answer } => (
                Outcome::Failed {
                    error,
                    response: answer,
                },
                "failed",
            ),
            Sent::Transient {
                error,
                answer,
                asked,
            } => match policy.after(attempts, asked) {
                Some(wait) => {
                    let at = chrono::Utc::now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
                    (
                        Outcome::Retry {
                            error,
                            response: answer,
                            retry_at: timestamp(at),
                        },
                        "retry",
                    )
                }
                None => (
                    Outcome::Failed {
                        error: format!("{error} (gave up after {attempts} attempts)"),
                        response: answer,
                    },
                    "failed",
                ),
            },
        };
        crate::metrics::record_emr_delivery(destination, label);
        match self
            .archive
            .outbox()
            .record(entry.id, entry.revision, &outcome)
            .await
        {
            Ok(true) => {
                info!(
                    destination,
                    outbox = entry.id,
                    job = entry.job_id,
                    attempt = attempts,
                    outcome = label,
                    "result sent to the EMR"
                );
            }
            Ok(false) => info!(
                destination,
                outbox = entry.id,
                "the study's EMR link changed during the send: sending again"
            ),
            Err(e) => warn!(destination, outbox = entry.id, error = %e, "recording a send failed"),
        }
    }

    async fn content(&self, entry: &OutboxEntry) -> Result<Content, Unsendable> {
        let study = report_source::study_context(&self.archive, &entry.study_instance_uid)
            .await?
            .ok_or_else(|| Unsendable::Gone("the study is no longer in the archive".into()))?;
        let result = report_source::job_results(&self.archive, &entry.study_instance_uid)
            .await?
            .into_iter()
            .find(|r| r.job.id == entry.job_id)
            .ok_or_else(|| {
                Unsendable::Gone(format!(
                    "job {} has no current result (a newer result replaced it)",
                    entry.job_id
                ))
            })?;
        Ok(Content { study, result })
    }

    fn sites(&self) -> FindingSites {
        report_source::finding_sites(&self.models)
    }

    async fn push_fhir(&self, push: &FhirPush, content: &Content) -> Sent {
        let bundle = match fhir_out::transaction(
            &push.url,
            &content.study,
            &content.result,
            &self.sites(),
        ) {
            Ok(bundle) => bundle,
            Err(e) => {
                return Sent::Refused {
                    error: e.to_string(),
                    answer: None,
                };
            }
        };
        let push = push.clone();
        let sent = tokio::task::spawn_blocking(move || post_bundle(&push, &bundle)).await;
        sent.unwrap_or_else(|e| Sent::Transient {
            error: format!("the HTTP client task ended: {e}"),
            answer: None,
            asked: None,
        })
    }

    async fn send_oru(&self, out: &Hl7Out, entry: &OutboxEntry, content: &Content) -> Sent {
        let emr = self.archive.emr();
        let link = content.study.link.as_ref();
        let patient = match link {
            Some(l) => match emr.get::<EmrPatient>(PATIENT, &l.patient).await {
                Ok(found) => found.map(|(p, _)| p),
                Err(e) => return store_transient(e),
            },
            None => None,
        };
        let order = match link.and_then(|l| l.order.as_deref()) {
            Some(id) => match emr.get::<EmrOrder>(ORDER, id).await {
                Ok(found) => found.map(|(o, _)| o),
                Err(e) => return store_transient(e),
            },
            None => None,
        };
        let control_id = format!("RS{}R{}", entry.id, entry.revision);
        let sent_at = chrono::Utc::now().format("%Y%m%d%H%M%S+0000").to_string();
        let message = oru::oru_r01(
            &OruInput {
                study: &content.study,
                result: &content.result,
                patient: patient.as_ref(),
                order: order.as_ref(),
                control_id: &control_id,
                revision: entry.revision,
                sent_at: &sent_at,
            },
            &out.parties,
        );
        match tokio::time::timeout(out.timeout, mllp_exchange(out, message.as_bytes())).await {
            Err(_) => Sent::Transient {
                error: format!("no ACK within {:?}", out.timeout),
                answer: None,
                asked: None,
            },
            Ok(Err(e)) => Sent::Transient {
                error: format!("MLLP to {}:{}: {e}", out.host, out.port),
                answer: None,
                asked: None,
            },
            Ok(Ok(ack)) => judge_ack(&ack, &control_id),
        }
    }
}

fn store_transient(e: StoreError) -> Sent {
    Sent::Transient {
        error: format!("reading the EMR records: {e}"),
        answer: None,
        asked: None,
    }
}

fn kept(text: &str) -> String {
    text.chars().take(KEPT_ANSWER_CHARS).collect()
}

/// POSTs the Bundle (blocking; run off the async threads).
fn post_bundle(push: &FhirPush, bundle: &Value) -> Sent {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(push.timeout))
        .build()
        .into();
    let mut request = agent
        .post(&push.url)
        .header("Content-Type", "application/fhir+json")
        .header("Accept", "application/fhir+json");
    if let Some(token) = &push.bearer_token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = match request.send(bundle.to_string()) {
        Ok(response) => response,
        Err(e) => {
            return Sent::Transient {
                error: format!("POST {}: {e}", push.url),
                answer: None,
                asked: None,
            };
        }
    };
    let status = response.status().as_u16();
    let asked = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES as u64)
        .read_to_string()
        .unwrap_or_default();
    let answer = format!("HTTP {status}: {}", summarise_fhir_answer(&body));
    match status {
        200..=299 => Sent::Accepted(kept(&answer)),
        408 | 429 | 500..=599 => Sent::Transient {
            error: kept(&answer),
            answer: Some(kept(&answer)),
            asked,
        },
        _ => Sent::Refused {
            error: kept(&answer),
            answer: Some(kept(&answer)),
        },
    }
}

/// A transaction-response as its entries' statuses, an OperationOutcome as its issues'
/// diagnostics, anything else as the start of its text.
pub fn summarise_fhir_answer(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<Value>(body) else {
        return kept(body.trim());
    };
    match json["resourceType"].as_str() {
        Some("Bundle") => {
            let statuses: Vec<String> = json["entry"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| {
                            format!(
                                "{} {}",
                                e["response"]["status"].as_str().unwrap_or("?"),
                                e["response"]["location"].as_str().unwrap_or("")
                            )
                            .trim()
                            .to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{} ({})",
                json["type"].as_str().unwrap_or("Bundle"),
                statuses.join(", ")
            )
        }
        Some("OperationOutcome") => {
            let issues: Vec<String> = json["issue"]
                .as_array()
                .map(|issues| {
                    issues
                        .iter()
                        .map(|i| {
                            i["diagnostics"]
                                .as_str()
                                .or(i["details"]["text"].as_str())
                                .or(i["code"].as_str())
                                .unwrap_or("?")
                                .to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("OperationOutcome: {}", issues.join("; "))
        }
        _ => kept(body.trim()),
    }
}

/// Sends one framed message and reads one framed answer.
async fn mllp_exchange(out: &Hl7Out, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect((out.host.as_str(), out.port)).await?;
    let mut framed = Vec::with_capacity(message.len() + 3);
    framed.push(VT);
    framed.extend_from_slice(message);
    framed.extend_from_slice(&[FS, CR]);
    stream.write_all(&framed).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the receiver closed the connection before a complete ACK",
            ));
        }
        answer.extend_from_slice(&buffer[..n]);
        if let Some(end) = answer.iter().position(|&b| b == FS) {
            let start = answer.iter().position(|&b| b == VT).map_or(0, |p| p + 1);
            if start > end {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the ACK frame ends before it starts",
                ));
            }
            return Ok(answer[start..end].to_vec());
        }
        if answer.len() > MAX_ANSWER_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the ACK is larger than 4 MiB",
            ));
        }
    }
}

/// An ACK's verdict on the message `control_id`.
fn judge_ack(ack: &[u8], control_id: &str) -> Sent {
    let parsed = match hl7::parse(ack, MAX_ANSWER_BYTES) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Sent::Transient {
                error: format!("unreadable ACK: {e}"),
                answer: Some(kept(&String::from_utf8_lossy(ack))),
                asked: None,
            };
        }
    };
    let Some(msa) = parsed.segment("MSA") else {
        return Sent::Transient {
            error: "the ACK has no MSA segment".into(),
            answer: Some(kept(&String::from_utf8_lossy(ack))),
            asked: None,
        };
    };
    let code = parsed.value(msa, 1, 1);
    let acked = parsed.value(msa, 2, 1);
    let text = parsed.value(msa, 3, 1);
    let err = parsed
        .segment("ERR")
        .map(|err| parsed.value(err, 8, 1))
        .unwrap_or_default();
    let why = [text.as_str(), err.as_str()]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let answer = kept(&format!("ACK {code} {acked}: {why}"));
    if acked != control_id {
        return Sent::Transient {
            error: format!("the ACK is for message {acked:?}, not {control_id:?}"),
            answer: Some(answer),
            asked: None,
        };
    }
    match code.as_str() {
        "AA" | "CA" => Sent::Accepted(answer),
        "AE" | "CE" => Sent::Refused {
            error: format!("the receiver refused the message ({code}): {why}"),
            answer: Some(answer),
        },
        _ => Sent::Transient {
            error: format!("the receiver rejected the message ({code}): {why}"),
            answer: Some(answer),
            asked: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_after_max_attempts() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(10),
        };
        assert_eq!(policy.after(1, None), Some(Duration::from_secs(2)));
        assert_eq!(policy.after(2, None), Some(Duration::from_secs(4)));
        assert_eq!(policy.after(3, None), Some(Duration::from_secs(8)));
        assert_eq!(policy.after(4, None), Some(Duration::from_secs(10)));
        assert_eq!(policy.after(5, None), None);
        // The destination's Retry-After wins, within the cap.
        assert_eq!(
            policy.after(1, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            policy.after(1, Some(Duration::from_secs(700))),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn acks_are_judged_by_code_and_control_id() {
        let ack = |code: &str, id: &str| {
            format!(
                "MSH|^~\\&|RIS||RADSERVE||20261123||ACK^R01^ACK|A1|P|2.5.1\rMSA|{code}|{id}|why\r"
            )
        };
        assert!(matches!(
            judge_ack(ack("AA", "RS1R1").as_bytes(), "RS1R1"),
            Sent::Accepted(_)
        ));
        assert!(matches!(
            judge_ack(ack("AE", "RS1R1").as_bytes(), "RS1R1"),
            Sent::Refused { .. }
        ));
        assert!(matches!(
            judge_ack(ack("AR", "RS1R1").as_bytes(), "RS1R1"),
            Sent::Transient { .. }
        ));
        // An ACK for another message proves nothing about ours.
        assert!(matches!(
            judge_ack(ack("AA", "RS9R1").as_bytes(), "RS1R1"),
            Sent::Transient { .. }
        ));
        assert!(matches!(
            judge_ack(b"garbage", "RS1R1"),
            Sent::Transient { .. }
        ));
    }

    #[test]
    fn fhir_answers_are_summarised() {
        let response = r#"{"resourceType":"Bundle","type":"transaction-response","entry":[{"response":{"status":"201 Created","location":"Observation/a/_history/1"}}]}"#;
        assert_eq!(
            summarise_fhir_answer(response),
            "transaction-response (201 Created Observation/a/_history/1)"
        );
        let outcome = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"Bundle.entry[0]: bad"}]}"#;
        assert_eq!(
            summarise_fhir_answer(outcome),
            "OperationOutcome: Bundle.entry[0]: bad"
        );
        assert_eq!(summarise_fhir_answer("  plain text "), "plain text");
    }

    #[test]
    fn sender_tables_are_checked() {
        let table = |text: &str| -> toml::Value { toml::from_str(text).unwrap() };
        let fhir = table("url = \"http://fhir.example/base/\"\nmax_attempts = 3\n");
        let hl7 = table("host = \"ris\"\nport = 2575\nreceiving_application = \"RIS\"\n");
        let config = DeliveryConfig::from_tables(Some(&fhir), Some(&hl7)).unwrap();
        let push = config.fhir.as_ref().unwrap();
        assert_eq!(push.url, "http://fhir.example/base");
        assert_eq!(push.retry.max_attempts, 3);
        assert_eq!(
            config.hl7.as_ref().unwrap().parties.receiving_application,
            "RIS"
        );
        assert_eq!(config.destinations(), vec![FHIR, HL7]);
        for bad in [
            "url = \"ftp://x\"",
            "url = \"http://x\"\nmax_attempts = 0",
            "url = \"http://x\"\ntimeout_s = -1",
            "url = \"http://x\"\nurll = 1",
            "url = \"http://x\"\nbearer_token_file = \"/nonexistent/token\"",
        ] {
            assert!(
                DeliveryConfig::from_tables(Some(&table(bad)), None).is_err(),
                "{bad} accepted"
            );
        }
        assert!(DeliveryConfig::from_tables(None, Some(&table("host = \"\"\nport = 1"))).is_err());
    }
}
