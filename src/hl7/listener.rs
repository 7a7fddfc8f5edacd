//! The HL7 listener (its own process): MLLP over TCP, one thread per connection (bounded),
//! idle timeouts, a message size limit. For each message: parse (AE on a syntax error), read it
//! as a report of the profile (AR when refused, the CDA included), write it to the HL7 staging
//! directory and fsync it, ask the archive to record it — and only then answer AA. The same
//! message again (same sender and MSH-10) gets the same ACK and no second record.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::ack::{self, AckCode};
use super::message::{ErrorCode, Hl7Error, Message};
use super::report::{self, Action};
use crate::archive::recovery::hex;
use crate::archive::store::Layout;
use crate::config::Config;
use crate::ipc::{self, NewReport, ReportFacts, Request, Response, Role};

/// MLLP frame delimiters.
const START: u8 = 0x0B;
const END: [u8; 2] = [0x1C, 0x0D];

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("hl7.tls: {0}")]
    Tls(String),
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
}

struct Shared {
    run_dir: PathBuf,
    staging: PathBuf,
    max_message: usize,
    seq: AtomicU64,
    active: AtomicUsize,
    counters: Counters,
}

pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), ListenerError> {
    let h = &config.hl7;
    let addr = SocketAddr::new(h.listen, h.port);
    let listener = crate::supervisor::sandbox::tcp_listener(addr, "mllp")
        .map_err(|source| ListenerError::Bind { addr, source })?;
    let tls = h
        .tls
        .as_ref()
        .map(|t| {
            crate::tls::server_config(&t.certificate, &t.private_key, t.client_ca.as_deref())
                .map_err(ListenerError::Tls)
        })
        .transpose()?;
    let shared = Arc::new(Shared {
        run_dir: config.storage.run_dir.clone(),
        staging: Layout::new(&config.storage.data_dir).hl7_staging(),
        max_message: h.max_message_bytes,
        seq: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        counters: Counters::default(),
    });
    log::info!(
        "HL7 listener ready: MLLP{} on {addr}",
        match h.tls.as_ref().map(|t| t.client_ca.is_some()) {
            None => "",
            Some(false) => " over TLS",
            Some(true) => " over TLS, client certificate required",
        }
    );
    let counters = || {
        let c = &shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("connections".to_string(), l(&c.connections)),
            ("messages_accepted".to_string(), l(&c.accepted)),
            ("messages_duplicate".to_string(), l(&c.duplicates)),
            ("messages_error".to_string(), l(&c.errors)),
            ("messages_rejected".to_string(), l(&c.rejected)),
        ]
        .into()
    };
    crate::control::accept_loop(
        &listener,
        &stop,
        h.idle_timeout,
        counters,
        |stream, peer| {
            if shared.active.fetch_add(1, Ordering::SeqCst) >= h.max_connections {
                shared.active.fetch_sub(1, Ordering::SeqCst);
                log::warn!(
                    "HL7 connection from {peer} refused: {} connections already",
                    h.max_connections
                );
                return;
            }
            shared.counters.connections.fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            let tls = tls.clone();
            let spawned = std::thread::Builder::new()
                .name("mllp".into())
                .spawn(move || {
                    let served = match tls {
                        Some(cfg) => rustls::ServerConnection::new(cfg)
                            .map_err(io::Error::other)
                            .and_then(|conn| {
                                serve(&shared, rustls::StreamOwned::new(conn, stream))
                            }),
                        None => serve(&shared, stream),
                    };
                    if let Err(e) = served {
                        log::info!("HL7 connection from {peer} closed: {e}");
                    }
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                log::error!("cannot start an HL7 connection thread");
            }
        },
    );
    log::info!("HL7 listener stopped");
    Ok(())
}

/// What the next frame on a connection is.
enum Frame {
    Message(Vec<u8>),
    /// Larger than the limit: read to its end and discarded.
    TooLarge(usize),
    Closed,
}

/// Reads one MLLP frame: VT, the message, FS CR. Bytes before VT other than white space are a
/// protocol error; a frame over the limit is consumed to its end (so it can be answered) but
/// not kept.
fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Frame> {
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return Ok(Frame::Closed);
        }
        match byte[0] {
            START => break,
            b'\r' | b'\n' | b' ' | b'\t' => continue,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("byte {other:#04x} outside an MLLP frame"),
                ))
            }
        }
    }
    let mut msg = Vec::new();
    let mut len = 0usize;
    let mut prev = 0u8;
    loop {
        if r.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a frame",
            ));
        }
        let b = byte[0];
        if prev == END[0] && b == END[1] {
            msg.pop();
            len -= 1;
            return Ok(if len > max {
                Frame::TooLarge(len)
            } else {
                Frame::Message(msg)
            });
        }
        len += 1;
        if len <= max + 1 {
            msg.push(b);
        } else if len > 4 * max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame far over the size limit",
            ));
        }
        prev = b;
    }
}

fn serve(shared: &Shared, stream: impl Read + Write) -> io::Result<()> {
    let mut input = BufReader::new(stream);
    let mut archive: Option<ipc::Client> = None;
    loop {
        let answer = match read_frame(&mut input, shared.max_message)? {
            Frame::Closed => return Ok(()),
            Frame::TooLarge(n) => {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                let e = Hl7Error::new(
                    ErrorCode::ApplicationInternalError,
                    None,
                    format!(
                        "message of {n} bytes is over the limit of {}",
                        shared.max_message
                    ),
                );
                ack::build(None, AckCode::Error, Some(&e), &control_id(shared), &now())
            }
            Frame::Message(bytes) => handle(shared, &mut archive, &bytes),
        };
        let mut framed = Vec::with_capacity(answer.len() + 3);
        framed.push(START);
        framed.extend_from_slice(&answer);
        framed.extend_from_slice(&END);
        let out = input.get_mut();
        out.write_all(&framed)?;
        out.flush()?;
    }
}

fn control_id(shared: &Shared) -> String {
    // 19 characters: within MSH-10's 20 (ST), unique per millisecond and sequence.
    format!(
        "DB{}{:04}",
        crate::archive::now_ms(),
        shared.seq.fetch_add(1, Ordering::Relaxed) % 10_000
    )
}

/// `YYYYMMDDHHMMSS` (UTC) for MSH-7.
fn now() -> String {
    crate::status::rfc3339(crate::archive::now_ms())
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// One message in, its ACK out (see the module comment for the order of the checks).
fn handle(shared: &Shared, archive: &mut Option<ipc::Client>, bytes: &[u8]) -> Vec<u8> {
    let c = &shared.counters;
    let id = control_id(shared);
    let m = match Message::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("HL7 message refused (AE): {e}");
            return ack::build(None, AckCode::Error, Some(&e), &id, &now());
        }
    };
    let refuse = |code: AckCode, e: &Hl7Error| {
        let counter = if code == AckCode::Error {
            &c.errors
        } else {
            &c.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        log::warn!(control_id = m.get("MSH-10").as_str(); "HL7 message {} refused ({}): {e}", m.get("MSH-10"), code.as_str());
        ack::build(Some(&m), code, Some(e), &id, &now())
    };
    let r = match report::read(&m) {
        Ok(r) => r,
        // A message without its control id cannot even be acknowledged properly: a syntax error.
        Err(e)
            if e.code == ErrorCode::RequiredFieldMissing
                && e.location.as_ref().is_some_and(|l| l.segment == "MSH") =>
        {
            return refuse(AckCode::Error, &e)
        }
        Err(e) => return refuse(AckCode::Reject, &e),
    };
    let cda = match crate::cda::parse_header(&r.cda) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                AckCode::Reject,
                &Hl7Error::new(
                    ErrorCode::DataType,
                    Some(("OBX", 1, 5)),
                    format!("the CDA cannot be read: {e}"),
                ),
            )
        }
    };
    let accept = ack::build(Some(&m), AckCode::Accept, None, &id, &now());
    // MSH-10 is unique per sender (the agency's samples reuse "id" across message types, so
    // the type is part of the key too).
    let key = format!(
        "{}|{}|{}|{}",
        m.get("MSH-3"),
        m.get("MSH-4"),
        r.message_type,
        r.control_id
    );
    let report = NewReport {
        staging_name: String::new(),
        key,
        facts: ReportFacts {
            message_type: r.message_type.clone(),
            action: match r.action {
                Action::Publish => "publish",
                Action::Replace => "replace",
                Action::Delete => "delete",
            }
            .into(),
            ins: r.ins.id.clone(),
            ins_oid: r.ins.oid.clone(),
            study_uids: cda
                .service_events
                .iter()
                .map(|s| s.id.root.clone())
                .filter(|u| !u.is_empty())
                .collect(),
            accession: Some(cda.accession.extension.clone()).filter(|a| !a.is_empty()),
            size: bytes.len() as u64,
            sha256: hex(&Sha256::digest(bytes)),
            ack_base64: crate::base64::encode(&accept),
            // PID-3's PI when the RIS sends it, else the CDA's own IPP (recordTarget's id that
            // is not an INS): the agency's ORU sample carries it only in the CDA.
            ipp: r.ipp.as_ref().map(|i| i.id.clone()).or_else(|| {
                cda.patient_ids
                    .iter()
                    .find(|i| !crate::hl7::report::INS_OIDS.contains(&i.root.as_str()))
                    .map(|i| i.extension.clone())
                    .filter(|e| !e.is_empty())
            }),
            flags: crate::ipc::ReportFlags {
                dest_dmp: r.flags.dest_dmp,
                masque_ps: r.flags.masque_ps,
                invisible_patient: r.flags.invisible_patient,
                invisible_rep_legaux: r.flags.invisible_rep_legaux,
            },
            exam_codes: cda
                .service_events
                .iter()
                .flat_map(|s| std::iter::once(&s.code).chain(s.translations.iter()))
                .map(|c| c.code.clone())
                .filter(|c| !c.is_empty())
                .collect(),
        },
    };
    match record(shared, archive, bytes, report) {
        Ok(outcome) => {
            let counter = if outcome.duplicate {
                &c.duplicates
            } else {
                &c.accepted
            };
            counter.fetch_add(1, Ordering::Relaxed);
            log::info!(
                control_id = r.control_id.as_str();
                "HL7 {} {} ({:?}) {}",
                r.message_type,
                r.control_id,
                r.action,
                if outcome.duplicate { "already recorded: same ACK again" } else { "recorded" }
            );
            crate::base64::decode(outcome.ack_base64.as_bytes()).unwrap_or(accept)
        }
        Err(Unrecorded::Refused(why)) => refuse(
            AckCode::Reject,
            &Hl7Error::new(
                ErrorCode::ApplicationInternalError,
                Some(("MSH", 1, 10)),
                why,
            ),
        ),
        Err(Unrecorded::Failed(why)) => {
            let e = Hl7Error::new(
                ErrorCode::ApplicationInternalError,
                None,
                format!("the message could not be recorded ({why}); send it again"),
            );
            refuse(AckCode::Error, &e)
        }
    }
}

/// Why a message was not recorded: refused by the archive (AR), or a failure (AE: resend).
enum Unrecorded {
    Refused(String),
    Failed(String),
}

/// Writes the message to staging, fsyncs it, and has the archive record it.
fn record(
    shared: &Shared,
    archive: &mut Option<ipc::Client>,
    bytes: &[u8],
    mut report: NewReport,
) -> Result<ipc::ReportOutcome, Unrecorded> {
    let name = format!(
        "{}-{}.part",
        std::process::id(),
        shared.seq.fetch_add(1, Ordering::Relaxed)
    );
    let path = shared.staging.join(&name);
    let written = File::create_new(&path).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(Unrecorded::Failed(format!(
            "writing the message: {}",
            e.kind()
        )));
    }
    report.staging_name = name;
    if archive.is_none() {
        *archive = Some(
            ipc::Client::connect(&shared.run_dir, Role::Hl7, Duration::from_secs(60))
                .map_err(|e| Unrecorded::Failed(e.to_string()))?,
        );
    }
    let result = archive
        .as_mut()
        .expect("connected")
        .call(&Request::RecordReport(Box::new(report)));
    match result {
        Ok(Response::ReportRecorded(o)) => Ok(o),
        Ok(other) => Err(Unrecorded::Failed(format!("archive answered {other:?}"))),
        Err(ipc::IpcError::Refused(f)) if f.kind == ipc::FailureKind::Invalid => {
            Err(Unrecorded::Refused(f.message))
        }
        Err(e) => {
            *archive = None;
            let _ = std::fs::remove_file(&path);
            Err(Unrecorded::Failed(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mllp_frames() {
        let mut input: &[u8] = b"\r\n\x0bMSH|a\rPID|b\x1c\r\x0bsecond\x1c\r";
        match read_frame(&mut input, 100).unwrap() {
            Frame::Message(m) => assert_eq!(m, b"MSH|a\rPID|b"),
            _ => panic!(),
        }
        match read_frame(&mut input, 100).unwrap() {
            Frame::Message(m) => assert_eq!(m, b"second"),
            _ => panic!(),
        }
        assert!(matches!(
            read_frame(&mut input, 100).unwrap(),
            Frame::Closed
        ));
        let mut big: &[u8] = b"\x0b0123456789\x1c\r";
        assert!(matches!(
            read_frame(&mut big, 4).unwrap(),
            Frame::TooLarge(10)
        ));
        let mut junk: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read_frame(&mut junk, 100).is_err());
        let mut cut: &[u8] = b"\x0bMSH|";
        assert!(read_frame(&mut cut, 100).is_err());
        // A lone FS inside the message is data; only FS CR ends the frame.
        let mut fs: &[u8] = b"\x0ba\x1cb\x1c\r";
        match read_frame(&mut fs, 100).unwrap() {
            Frame::Message(m) => assert_eq!(m, b"a\x1cb"),
            _ => panic!(),
        }
    }
}
