//! Delivering one archived lot to the DMP, exactly once (TD2.1a).
//!
//! Every step is committed in the archive before the next network step: the lot goes to
//! `Sending` (with the MessageID and the request kept) **before** the ITI-41 leaves; the answer
//! then settles it — Success → `Accepted`, Failure → `Refused` (a person must look: no blind
//! retry) — or leaves it `Sending` with a retry time (timeout, reset, HTTP 5xx, SOAP fault).
//! A lot found `Sending` (crash, timeout, dropped answer) is never sent again blindly: an ITI-18
//! GetDocuments for its KOS uniqueId says whether the DMP recorded it; only if not is it resent.

use std::sync::Arc;
use std::time::Duration;

use super::{http, mtom, response, soap, vihf};
use crate::archive::model::{Delivery, SendWork};
use crate::exam::LotStatus;
use crate::signing::{SignatureAlgorithm, SigningIdentity};

/// The DMP's availabilityStatus of a withdrawn document (TD3.3c).
const DELETED: &str = "urn:asip:ci-sis:2010:StatusType:Deleted";

/// The registry's answer to a uniqueId it already holds (IHE ITI TF-3 4.2.4.1).
pub const DUPLICATE_UNIQUE_ID: &str = "XDSDuplicateUniqueIdInRegistry";

/// How the box reaches the DMP.
pub struct Dmp {
    pub repository_url: String,
    pub registry_url: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
    pub vihf: vihf::VihfSettings,
    /// Signs the VIHF (the practice's signature certificate).
    pub signer: Arc<SigningIdentity>,
    pub algorithm: SignatureAlgorithm,
}

/// One committed step: the lot's new state and the exchange files to keep with it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub status: LotStatus,
    pub delivery: Delivery,
    pub exchange: Vec<(String, Vec<u8>)>,
}

/// What the environment gives a delivery: ids, the time, and the durable commit.
pub trait Effects {
    fn now_ms(&self) -> i64;
    /// `urn:uuid:…`
    fn new_uuid(&self) -> String;
    /// Commits the step in the archive; an error stops the delivery (nothing more is sent).
    fn commit(&mut self, progress: Progress) -> Result<(), String>;
}

/// Retry delay after `attempts` failed tries: 1 s, 2 s, 4 s … up to 5 min, plus up to 25 %
/// jitter (`jitter` in 0..1) so that boxes do not retry in step.
pub fn backoff_ms(attempts: u32, jitter: f64) -> i64 {
    let base = 1000i64.saturating_mul(1i64 << attempts.min(9)).min(300_000);
    base + (base as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as i64
}

fn jitter(effects: &dyn Effects) -> f64 {
    // The MessageID's random bits are as good a jitter source as any.
    let u = effects.new_uuid();
    let h = u
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    f64::from(h % 1000) / 1000.0
}

/// The XML of an answer: the root part of an MTOM answer, or the body itself.
fn answer_xml(m: &http::Message) -> Vec<u8> {
    let ct = m.header("content-type").unwrap_or("");
    if ct.to_ascii_lowercase().starts_with("multipart/") {
        if let Ok(parsed) = mtom::parse(ct, &m.body) {
            if let Ok(root) = parsed.root() {
                return root.body.clone();
            }
        }
    }
    m.body.clone()
}

fn vihf_for(dmp: &Dmp, work: &SendWork, effects: &dyn Effects) -> Result<String, String> {
    let message =
        crate::base64::decode(work.report_base64.as_bytes()).map_err(|e| e.to_string())?;
    let parsed = crate::hl7::message::Message::parse(&message).map_err(|e| e.to_string())?;
    let report = crate::hl7::report::read(&parsed).map_err(|e| e.to_string())?;
    let cda = crate::cda::parse_header(&report.cda).map_err(|e| e.to_string())?;
    let id = format!("_{}", effects.new_uuid().trim_start_matches("urn:uuid:"));
    let instant = crate::status::rfc3339(effects.now_ms());
    let input = vihf::from_report(&report, &cda, &dmp.vihf, &id, &instant);
    vihf::build_vihf(&input, &dmp.signer, dmp.algorithm).map_err(|e| e.to_string())
}

/// What an ITI-18 found: the entryUUIDs, and the request and answer bytes (kept).
struct Found {
    refs: Vec<String>,
    request: Vec<u8>,
    answer: Vec<u8>,
}

/// Asks the registry for the entries of a KOS uniqueId (ITI-18 GetDocuments).
fn query(dmp: &Dmp, vihf: &str, unique_id: &str, message_id: &str) -> Result<Found, String> {
    let request = soap::get_documents(message_id, &dmp.registry_url, vihf, unique_id);
    ask(dmp, request, message_id)
}

/// Sends one ITI-18 stored query and reads the ObjectRefs of its answer.
fn ask(dmp: &Dmp, request: String, message_id: &str) -> Result<Found, String> {
    let m = http::post(
        &dmp.registry_url,
        "application/soap+xml; charset=UTF-8; action=\"urn:ihe:iti:2007:RegistryStoredQuery\"",
        request.as_bytes(),
        dmp.tls.clone(),
        dmp.timeout,
    )
    .map_err(|e| e.to_string())?;
    let xml = answer_xml(&m);
    match response::read_query(&xml, message_id) {
        Ok(Ok(refs)) => Ok(Found {
            refs,
            request: request.into_bytes(),
            answer: m.body,
        }),
        Ok(Err(outcome)) => Err(format!("ITI-18 answered {outcome:?}")),
        Err(e) => Err(format!("ITI-18 (HTTP {}): {e}", m.status())),
    }
}

/// The entry a withdrawal lot deletes: its Association's targetObject.
fn withdrawal_target(body: &str) -> Result<String, String> {
    let doc = crate::xml::document::Document::parse(body.as_bytes()).map_err(|e| e.to_string())?;
    let mut stack = vec![doc.root()];
    while let Some(n) = stack.pop() {
        if let Some(e) = doc.element(n) {
            if e.is("urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0", "Association") {
                if let Some(t) = e.attribute("targetObject") {
                    return Ok(t.to_string());
                }
            }
        }
        stack.extend(doc.child_elements(n));
    }
    Err("WITHDRAWAL.XML names no entry".into())
}

/// The patient's INS as the registry indexes it (`<INS>^^^&<oid>&ISO^NH`), from the report.
fn patient_id(work: &SendWork) -> Result<String, String> {
    let message =
        crate::base64::decode(work.report_base64.as_bytes()).map_err(|e| e.to_string())?;
    let parsed = crate::hl7::message::Message::parse(&message).map_err(|e| e.to_string())?;
    let report = crate::hl7::report::read(&parsed).map_err(|e| e.to_string())?;
    Ok(format!("{}^^^&{}&ISO^NH", report.ins.id, report.ins.oid))
}

/// A settling query got no answer: the lot stays in doubt (`Sending`), retried later; nothing
/// is resent meanwhile.
fn settling_failed(
    mut d: Delivery,
    error: &str,
    effects: &mut dyn Effects,
) -> Result<LotStatus, String> {
    schedule_retry(&mut d, format!("settling query: {error}"), effects);
    effects.commit(Progress {
        status: LotStatus::Sending,
        delivery: d,
        exchange: Vec::new(),
    })?;
    Ok(LotStatus::Sending)
}

/// Keeps an ITI-18's request and answer with the exchange of attempt `n`.
fn keep_query(exchange: &mut Vec<(String, Vec<u8>)>, n: u32, found: Found) {
    exchange.push((format!("ITI18-{n}-request.xml"), found.request));
    exchange.push((format!("ITI18-{n}-response.xml"), found.answer));
}

fn file(work: &SendWork, name: &str) -> Result<Vec<u8>, String> {
    let (_, b64) = work
        .files
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| format!("{name} missing from the lot"))?;
    crate::base64::decode(b64.as_bytes()).map_err(|e| e.to_string())
}

/// Moves one lot on by one network exchange (or two: a settling query, then the send).
pub fn deliver(dmp: &Dmp, work: &SendWork, effects: &mut dyn Effects) -> Result<LotStatus, String> {
    if work.lot.facts.action == crate::exam::LotAction::Unpublish {
        return withdraw(dmp, work, effects);
    }
    let mut d = work.lot.delivery.clone();
    let kos_uid = work.lot.kos_sop_uid.clone();
    let vihf = vihf_for(dmp, work, effects)?;

    if work.lot.facts.status == LotStatus::Sending {
        // Sent before, outcome unknown: does the DMP have it?
        let qid = effects.new_uuid();
        match query(dmp, &vihf, &kos_uid, &qid) {
            Ok(found) if !found.refs.is_empty() => {
                d.entry_uuid = found.refs.first().cloned();
                d.accepted_ms = Some(effects.now_ms());
                d.last_error = None;
                effects.commit(Progress {
                    status: LotStatus::Accepted,
                    delivery: d,
                    exchange: vec![
                        (
                            format!("ITI18-{}-request.xml", d_attempts(work)),
                            found.request,
                        ),
                        (
                            format!("ITI18-{}-response.xml", d_attempts(work)),
                            found.answer,
                        ),
                    ],
                })?;
                return Ok(LotStatus::Accepted);
            }
            Ok(_) => {} // not recorded: send it (again)
            Err(e) => return settling_failed(d, &e, effects),
        }
    }

    let kos = file(work, crate::lot::KOS_FILE)?;
    let sign = file(work, crate::lot::SIGNATURE_FILE)?;
    let submission = String::from_utf8(file(work, crate::lot::SUBMISSION_FILE)?)
        .map_err(|_| "SUBMISSION.XML is not UTF-8".to_string())?;
    let message_id = effects.new_uuid();
    let boundary = format!(
        "MIMEBoundary_{}",
        message_id.trim_start_matches("urn:uuid:")
    );
    let (content_type, body) = soap::provide_and_register(
        &message_id,
        &dmp.repository_url,
        &vihf,
        &submission,
        &[
            (crate::xds::KOS_ENTRY_ID, "kos@drimbox", &kos),
            (crate::xds::SIGNATURE_ENTRY_ID, "sign@drimbox", &sign),
        ],
        &boundary,
    );
    d.attempts += 1;
    d.message_id = Some(message_id.clone());
    d.last_error = None;
    let n = d.attempts;
    // Durable before it leaves: a crash from here on is settled by the query above.
    effects.commit(Progress {
        status: LotStatus::Sending,
        delivery: d.clone(),
        exchange: vec![(format!("ITI41-{n}-request.mtom"), body.clone())],
    })?;
    let (reply, mut exchange) = send(
        dmp,
        &dmp.repository_url,
        &content_type,
        &body,
        &message_id,
        "ITI41",
        n,
    );
    let status = match reply {
        Reply::Retry(e) => {
            schedule_retry(&mut d, e, effects);
            LotStatus::Sending
        }
        Reply::Success => {
            d.accepted_ms = Some(effects.now_ms());
            // Learn the entryUUID now: a replacement or a withdrawal needs it.
            let qid = effects.new_uuid();
            if let Ok(found) = query(dmp, &vihf, &kos_uid, &qid) {
                d.entry_uuid = found.refs.first().cloned();
                keep_query(&mut exchange, n, found);
            }
            LotStatus::Accepted
        }
        // Our own uniqueId already there: an earlier send of this very lot went through after
        // all (its answer was lost). Settled like an in-doubt lot.
        Reply::Refused { errors, .. } if errors.iter().any(|e| e.code == DUPLICATE_UNIQUE_ID) => {
            let qid = effects.new_uuid();
            match query(dmp, &vihf, &kos_uid, &qid) {
                Ok(found) if !found.refs.is_empty() => {
                    d.entry_uuid = found.refs.first().cloned();
                    d.accepted_ms = Some(effects.now_ms());
                    keep_query(&mut exchange, n, found);
                    LotStatus::Accepted
                }
                _ => {
                    schedule_retry(
                        &mut d,
                        "duplicate uniqueId, not found by ITI-18".into(),
                        effects,
                    );
                    LotStatus::Sending
                }
            }
        }
        Reply::Refused { status, errors } => {
            d.errors = errors.into_iter().map(|e| (e.code, e.context)).collect();
            d.last_error = Some(format!("the DMP refused the lot ({status})"));
            LotStatus::Refused
        }
    };
    effects.commit(Progress {
        status,
        delivery: d,
        exchange,
    })?;
    Ok(status)
}
/// Sends a withdrawal (TD3.3c, ITI-57). A withdrawal in doubt is simply sent again: the
/// registry refuses to withdraw an entry that is no longer Approved, and while our withdrawal
/// is in flight nothing else of ours can change that entry, so that refusal means it was done.
fn withdraw(dmp: &Dmp, work: &SendWork, effects: &mut dyn Effects) -> Result<LotStatus, String> {
    let mut d = work.lot.delivery.clone();
    let in_doubt = work.lot.facts.status == LotStatus::Sending;
    let vihf = vihf_for(dmp, work, effects)?;
    let body = String::from_utf8(file(work, crate::lot::WITHDRAWAL_FILE)?)
        .map_err(|_| "WITHDRAWAL.XML is not UTF-8".to_string())?;
    if in_doubt {
        // Sent before, outcome unknown (crash, timeout, lost answer): is the entry Deleted
        // already? ITI-18 FindDocuments for the patient's Deleted entries says so; only if it
        // is not is the ITI-57 sent again.
        let target = withdrawal_target(&body)?;
        let qid = effects.new_uuid();
        let request = soap::find_documents(
            &qid,
            &dmp.registry_url,
            &vihf,
            &patient_id(work)?,
            &[DELETED],
        );
        match ask(dmp, request, &qid) {
            Ok(found) if found.refs.contains(&target) => {
                d.accepted_ms = Some(effects.now_ms());
                d.last_error = None;
                let mut exchange = Vec::new();
                keep_query(&mut exchange, d.attempts, found);
                effects.commit(Progress {
                    status: LotStatus::Accepted,
                    delivery: d,
                    exchange,
                })?;
                return Ok(LotStatus::Accepted);
            }
            Ok(_) => {} // not deleted yet: send it (again)
            Err(e) => return settling_failed(d, &e, effects),
        }
    }
    let message_id = effects.new_uuid();
    let request = soap::envelope(
        &message_id,
        &dmp.registry_url,
        soap::ACTION_UPDATE,
        &vihf,
        &body,
    );
    d.attempts += 1;
    d.message_id = Some(message_id.clone());
    d.last_error = None;
    let n = d.attempts;
    effects.commit(Progress {
        status: LotStatus::Sending,
        delivery: d.clone(),
        exchange: vec![(
            format!("ITI57-{n}-request.xml"),
            request.clone().into_bytes(),
        )],
    })?;
    let (reply, exchange) = send(
        dmp,
        &dmp.registry_url,
        "application/soap+xml; charset=UTF-8; action=\"urn:ihe:iti:2010:UpdateDocumentSet\"",
        request.as_bytes(),
        &message_id,
        "ITI57",
        n,
    );
    let status = match reply {
        Reply::Retry(e) => {
            schedule_retry(&mut d, e, effects);
            LotStatus::Sending
        }
        Reply::Success => {
            d.accepted_ms = Some(effects.now_ms());
            LotStatus::Accepted
        }
        Reply::Refused { status, errors } => {
            d.errors = errors.into_iter().map(|e| (e.code, e.context)).collect();
            d.last_error = Some(format!("the DMP refused the withdrawal ({status})"));
            LotStatus::Refused
        }
    };
    effects.commit(Progress {
        status,
        delivery: d,
        exchange,
    })?;
    Ok(status)
}

/// What an answer to a request that changes the registry means for the lot.
enum Reply {
    Success,
    /// Failure or PartialSuccess with the registry's errors.
    Refused {
        status: String,
        errors: Vec<response::RegistryError>,
    },
    /// Transport error, timeout, HTTP error, SOAP fault, unreadable or not our answer: try again.
    Retry(String),
}

/// POSTs one request (`kind`, attempt `n`) and reads its answer; the answer's bytes are kept.
fn send(
    dmp: &Dmp,
    url: &str,
    content_type: &str,
    body: &[u8],
    message_id: &str,
    kind: &str,
    n: u32,
) -> (Reply, Vec<(String, Vec<u8>)>) {
    let m = match http::post(url, content_type, body, dmp.tls.clone(), dmp.timeout) {
        Ok(m) => m,
        Err(e) => return (Reply::Retry(e.to_string()), Vec::new()),
    };
    let kept = vec![(format!("{kind}-{n}-response.http"), m.body.clone())];
    let reply = match response::read(&answer_xml(&m), message_id) {
        Ok(a) => match a.outcome {
            response::Outcome::Success => Reply::Success,
            response::Outcome::Refused { status, errors } => Reply::Refused { status, errors },
            response::Outcome::Fault { code, reason } => {
                Reply::Retry(format!("SOAP fault {code}: {reason}"))
            }
        },
        Err(e) => Reply::Retry(format!("HTTP {}: {e}", m.status())),
    };
    (reply, kept)
}

/// Leaves the lot in flight with its error, to be tried again after the backoff.
fn schedule_retry(d: &mut Delivery, error: String, effects: &dyn Effects) {
    d.last_error = Some(error);
    d.next_attempt_ms = effects.now_ms() + backoff_ms(d.attempts, jitter(effects));
}

fn d_attempts(work: &SendWork) -> u32 {
    work.lot.delivery.attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff_ms(0, 0.0), 1000);
        assert_eq!(backoff_ms(3, 0.0), 8000);
        assert_eq!(backoff_ms(30, 0.0), 300_000);
        assert_eq!(backoff_ms(30, 1.0), 375_000);
    }
}
