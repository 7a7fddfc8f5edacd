//! The WADO-RS service: HTTPS (rustls) with a client certificate required and chained to
//! `[wado] client_ca`, the certificate's subject on the verified whitelist in service (read
//! again whenever the updater replaces it: access ends without a restart), then the retrieve:
//! the archive decides on the consumer's manifest and hands over the files of each page as
//! descriptors, which are streamed as `multipart/related` in chunks through a fixed buffer.
//!
//! Every request is recorded in the archive (client subject, UIDs, status, outcome); the beat
//! carries counts of served and refused requests by reason for the status page.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::accept::{self, AcceptError};
use super::{dn, multipart};
use crate::archive::model::{AccessRecord, RetrieveDecision, RetrieveRequest};
use crate::config::{Config, WadoConfig};
use crate::ipc::{self, Request, Role};

#[derive(Debug, thiserror::Error)]
pub enum WadoError {
    #[error("wado TLS: {0}")]
    Tls(String),
    #[error("wado: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

/// The subjects of the whitelist in service, re-read when the file changes.
struct Whitelist {
    files: crate::whitelist::updater::Files,
    seen: Option<(SystemTime, u64)>,
    subjects: Vec<Vec<(String, String)>>,
}

impl Whitelist {
    /// Whether `subject` is listed; Err when no verified list is in service.
    fn admits(&mut self, subject: &str) -> Result<bool, &'static str> {
        let meta = std::fs::metadata(self.files.current()).ok();
        let stamp = meta
            .as_ref()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_none() {
            self.seen = None;
            self.subjects.clear();
            return Err("no verified whitelist is installed on this DRIMbox");
        }
        if stamp != self.seen {
            // Installed by the updater after verification (temp + rename): read as is.
            self.subjects = crate::whitelist::updater::installed(&self.files)
                .map(|(_, c)| {
                    c.domains
                        .iter()
                        .filter_map(|d| dn::normalize(&d.dn))
                        .collect()
                })
                .unwrap_or_default();
            self.seen = stamp;
        }
        let want = dn::normalize(subject).ok_or("the client certificate has no subject")?;
        Ok(self.subjects.contains(&want))
    }
}

struct Shared {
    config: WadoConfig,
    introspector: Option<super::token::Introspector>,
    run_dir: PathBuf,
    whitelist: Mutex<Whitelist>,
    counters: Mutex<BTreeMap<String, u64>>,
    active: AtomicUsize,
}

impl Shared {
    fn count(&self, name: &str) {
        *self
            .counters
            .lock()
            .expect("counters")
            .entry(format!("wado_{name}"))
            .or_default() += 1;
    }
}

/// An answer that is not a stream of instances.
struct Refusal {
    status: u16,
    /// Counter and audit key (`not_whitelisted`, `manifest_replaced`…).
    key: &'static str,
    reason: String,
}

fn refusal(status: u16, key: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        key,
        reason: reason.into(),
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        410 => "Gone",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn write_refusal(w: &mut impl Write, r: &Refusal, close: bool) -> io::Result<()> {
    let body = format!("{}\n", r.reason);
    // The reason also as a Warning (PS3.18 §8.5.2 returns them so): clients log headers.
    let warning = r.reason.replace(['"', '\r', '\n'], " ");
    write!(
        w,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Warning: 299 drimbox \"{warning}\"\r\n{}{}\r\n{body}",
        r.status,
        status_text(r.status),
        body.len(),
        match r.status {
            405 => "Allow: GET\r\n",
            401 => "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n",
            _ => "",
        },
        if close { "Connection: close\r\n" } else { "" },
    )?;
    w.flush()
}

/// `/studies/{st}[/series/{se}[/instances/{sop}]]` under the base path (the request target may
/// be in absolute form, as the agency's validator sends it).
pub fn route(base: &str, target: &str) -> Option<(String, Option<String>, Option<String>)> {
    let path = match target.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rest = path.strip_prefix(base)?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["", "studies", st] => Some((st.to_string(), None, None)),
        ["", "studies", st, "series", se] => Some((st.to_string(), Some(se.to_string()), None)),
        ["", "studies", st, "series", se, "instances", sop] => {
            Some((st.to_string(), Some(se.to_string()), Some(sop.to_string())))
        }
        _ => None,
    }
}

fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into `b`.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u128::from_le_bytes(b)
}

/// What a request came to, for the audit trail.
struct Served {
    status: u16,
    outcome: String,
    instances: u32,
    bytes: u64,
}

/// Answers one request on `stream`. Err: the connection must close (I/O failed mid-stream).
fn answer<S: Read + Write>(
    shared: &Shared,
    archive: &mut Option<ipc::Client>,
    subject: &str,
    m: &crate::dmp::http::Message,
    stream: &mut S,
    close: bool,
) -> io::Result<(Served, Option<(String, String)>)> {
    let refuse = |stream: &mut S, r: Refusal| -> io::Result<Served> {
        shared.count(&format!("refused_{}", r.key));
        write_refusal(stream, &r, close)?;
        Ok(Served {
            status: r.status,
            outcome: r.key.to_string(),
            instances: 0,
            bytes: 0,
        })
    };
    let mut words = m.start.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        let r = refusal(
            405,
            "bad_request",
            format!("{method} is not served; GET only"),
        );
        return Ok((refuse(stream, r)?, None));
    }
    let admitted = shared.whitelist.lock().expect("whitelist").admits(subject);
    match admitted {
        Ok(true) => {}
        Ok(false) => {
            let r = refusal(
                403,
                "not_whitelisted",
                "the client certificate's subject is not on the DRIM-M whitelist",
            );
            return Ok((refuse(stream, r)?, None));
        }
        Err(why) => return Ok((refuse(stream, refusal(403, "no_whitelist", why))?, None)),
    }
    if let Some(i) = &shared.introspector {
        use super::token::{bearer, Verdict};
        let verdict = match bearer(m.header("authorization")) {
            Err(why) => Verdict::Refused(why),
            Ok(token) => i.check(token),
        };
        match verdict {
            Verdict::Active => {}
            Verdict::Refused(why) => {
                return Ok((refuse(stream, refusal(401, "token", why))?, None));
            }
            Verdict::Unavailable(why) => {
                log::warn!("token introspection: {why}");
                let r = refusal(
                    503,
                    "unavailable",
                    "the Bearer token cannot be checked now; try again",
                );
                return Ok((refuse(stream, r)?, None));
            }
        }
    }
    let Some((study, series, sop)) = route(&shared.config.base_path, target) else {
        let r = refusal(
            404,
            "no_such_resource",
            format!(
                "not a WADO-RS retrieve: {}/studies/{{study}}[/series/{{series}}[/instances/{{instance}}]]",
                shared.config.base_path
            ),
        );
        return Ok((refuse(stream, r)?, None));
    };
    let Some(kos) = m.header("kos-sopinstanceuid").map(str::trim) else {
        let r = refusal(
            400,
            "bad_request",
            "the KOS-SOPInstanceUID header is required: the SOP Instance UID of the KOS the retrieve comes from",
        );
        return Ok((refuse(stream, r)?, Some((study, String::new()))));
    };
    let uids = Some((study.clone(), kos.to_string()));
    let accepted = match m.header("accept").map(accept::parse) {
        None => {
            let r = refusal(
                400,
                "bad_request",
                "the Accept header is required: multipart/related; type=\"application/dicom\"[; transfer-syntax=UID]",
            );
            return Ok((refuse(stream, r)?, uids));
        }
        Some(Err(e @ AcceptError::Malformed(_))) => {
            return Ok((
                refuse(stream, refusal(400, "bad_request", e.to_string()))?,
                uids,
            ))
        }
        Some(Err(e @ AcceptError::NotDicom)) => {
            return Ok((
                refuse(stream, refusal(406, "not_acceptable", e.to_string()))?,
                uids,
            ))
        }
        Some(Ok(a)) => a,
    };
    let mut request = RetrieveRequest {
        study_uid: study.clone(),
        series_uid: series,
        sop_uid: sop,
        kos_uid: kos.to_string(),
        offset: 0,
        limit: crate::archive::retrieve::MAX_PAGE,
    };
    let page = |archive: &mut Option<ipc::Client>, request: &RetrieveRequest| {
        if archive.is_none() {
            *archive =
                ipc::Client::connect(&shared.run_dir, Role::Wado, Duration::from_secs(30)).ok();
        }
        let got = archive
            .as_mut()
            .ok_or_else(|| "the archive is not answering".to_string())?
            .retrieve(request)
            .map_err(|e| e.to_string());
        if got.is_err() {
            *archive = None;
        }
        got
    };
    let (first, files) = match page(archive, &request) {
        Ok(p) => p,
        Err(e) if e.contains("is not a UID") => {
            return Ok((refuse(stream, refusal(400, "bad_request", e))?, uids))
        }
        Err(e) => {
            log::warn!("retrieve: {e}");
            let r = refusal(
                503,
                "unavailable",
                "the archive cannot answer now; try again",
            );
            return Ok((refuse(stream, r)?, uids));
        }
    };
    let decided = match first.decision {
        RetrieveDecision::Serve => None,
        RetrieveDecision::Replaced => Some(refusal(
            404,
            "manifest_replaced",
            super::decide::Decision::Replaced.reason(),
        )),
        RetrieveDecision::Withdrawn => Some(refusal(
            410,
            "withdrawn",
            super::decide::Decision::Withdrawn.reason(),
        )),
        RetrieveDecision::UnknownManifest => Some(refusal(
            404,
            "manifest_unknown",
            super::decide::Decision::Unknown.reason(),
        )),
        RetrieveDecision::NotFound => Some(refusal(
            404,
            "no_such_resource",
            "no such series or instance in this exam (or it was rejected)",
        )),
    };
    if let Some(r) = decided {
        return Ok((refuse(stream, r)?, uids));
    }
    // Every instance must go in an acceptable syntax, or none goes (decided before any byte;
    // an instance too large to convert ends the stream unfinished).
    let mut chosen: Vec<(String, String)> = Vec::new();
    for ts in &first.transfer_syntaxes {
        let offer = super::transcode::producible(ts, 0);
        match accept::choose(&accepted, &offer) {
            Some(t) => chosen.push((ts.clone(), t.to_string())),
            None => {
                let offers: Vec<&str> = first
                    .transfer_syntaxes
                    .iter()
                    .flat_map(|t| super::transcode::producible(t, 0))
                    .collect();
                let r = refusal(
                    406,
                    "not_acceptable",
                    format!(
                        "instances are stored as {}; acceptable would be: {}",
                        first.transfer_syntaxes.join(", "),
                        offers.join(", ")
                    ),
                );
                return Ok((refuse(stream, r)?, uids));
            }
        }
    }
    let single = (chosen.len() == 1).then(|| chosen[0].1.clone());
    let boundary = multipart::new_boundary(random_u128());
    let content_type = multipart::content_type(&boundary, "1@drimbox", single.as_deref());
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )?;
    let mut body = multipart::Chunked::new(&mut *stream);
    let (mut sent, mut bytes) = (0u32, 0u64);
    let (mut instances, mut files) = (first.instances, files);
    loop {
        for (i, mut f) in instances.iter().zip(files.drain(..)) {
            let ts = chosen
                .iter()
                .find(|(s, _)| *s == i.transfer_syntax)
                .map_or(i.transfer_syntax.as_str(), |(_, t)| t.as_str());
            let id = format!("{}@drimbox", sent + 1);
            let n = if ts == i.transfer_syntax {
                multipart::part_head(&mut body, &boundary, &id, ts, i.size)?;
                let n = io::copy(&mut (&mut f).take(i.size), &mut body)?;
                if n != i.size {
                    // The file shrank under us: end the stream unfinished, the client sees it.
                    return Err(io::Error::other(
                        "an instance file is shorter than recorded",
                    ));
                }
                n
            } else {
                let converted = super::transcode::convert(&mut f, i.size, ts)
                    .map_err(|e| io::Error::other(format!("instance {}: {e}", i.sop_uid)))?;
                let n = converted.len() as u64;
                multipart::part_head(&mut body, &boundary, &id, ts, n)?;
                body.write_all(&converted)?;
                shared.count("converted");
                n
            };
            multipart::part_end(&mut body)?;
            sent += 1;
            bytes += n;
        }
        if sent >= first.total {
            break;
        }
        request.offset = sent;
        match page(archive, &request) {
            Ok((p, f)) if p.decision == RetrieveDecision::Serve && !p.instances.is_empty() => {
                instances = p.instances;
                files = f;
            }
            // Replaced or withdrawn meanwhile, or the archive gone: stop unfinished.
            _ => return Err(io::Error::other("the retrieve cannot go on")),
        }
    }
    multipart::close(&mut body, &boundary)?;
    body.finish()?;
    shared.count("served");
    Ok((
        Served {
            status: 200,
            outcome: "served".into(),
            instances: sent,
            bytes,
        },
        uids,
    ))
}

fn record(archive: &mut Option<ipc::Client>, run_dir: &std::path::Path, a: AccessRecord) {
    for _ in 0..2 {
        if archive.is_none() {
            *archive = ipc::Client::connect(run_dir, Role::Wado, Duration::from_secs(10)).ok();
        }
        if let Some(c) = archive.as_mut() {
            if c.call(&Request::RecordAccess(Box::new(a.clone()))).is_ok() {
                return;
            }
        }
        *archive = None;
    }
    log::warn!("a WADO-RS access could not be recorded in the archive");
}

fn serve_connection(shared: &Shared, tcp: TcpStream, tls: Arc<rustls::ServerConfig>) {
    let peer = tcp
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let Ok(conn) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            shared.count("refused_tls");
            log::info!("WADO-RS TLS handshake from {peer} failed: {e}");
            return;
        }
    }
    let subject = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::pki::Certificate::from_der(c).ok())
        .map(|c| c.subject())
        .unwrap_or_default();
    let mut archive: Option<ipc::Client> = None;
    let mut reader = BufReader::new(stream);
    loop {
        // Wait for the next request of a kept-alive connection, or its end.
        match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(_) => {}
        }
        let m = match crate::dmp::http::read_message_limited(&mut reader, 0) {
            Ok(m) => m,
            Err(e) => {
                let r = refusal(400, "bad_request", format!("malformed request: {e}"));
                shared.count("refused_bad_request");
                let _ = write_refusal(reader.get_mut(), &r, true);
                return;
            }
        };
        let close = m
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || m.start.ends_with("HTTP/1.0");
        let target = m.start.split_whitespace().nth(1).unwrap_or("").to_string();
        let result = answer(shared, &mut archive, &subject, &m, reader.get_mut(), close);
        let (served, uids, failed) = match result {
            Ok((s, u)) => (s, u, false),
            Err(e) => {
                log::warn!("WADO-RS stream to {peer} ended: {e}");
                shared.count("interrupted");
                (
                    Served {
                        status: 200,
                        outcome: "interrupted".into(),
                        instances: 0,
                        bytes: 0,
                    },
                    None,
                    true,
                )
            }
        };
        let (study, kos) = match uids {
            Some((s, k)) => (Some(s), (!k.is_empty()).then_some(k)),
            None => (None, None),
        };
        // The path holds UIDs only; the query string (if any) is dropped.
        let path = target.split('?').next().unwrap_or("").to_string();
        record(
            &mut archive,
            &shared.run_dir,
            AccessRecord {
                at_ms: crate::archive::now_ms(),
                client: subject.clone(),
                peer: peer.clone(),
                path,
                study_uid: study,
                kos_uid: kos,
                status: served.status,
                outcome: served.outcome,
                instances: served.instances,
                bytes: served.bytes,
            },
        );
        if close || failed {
            let stream = reader.get_mut();
            stream.conn.send_close_notify();
            let _ = stream.conn.complete_io(&mut stream.sock);
            return;
        }
    }
}

pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), WadoError> {
    let Some(w) = config.wado.clone() else {
        // Not configured: stay up (the supervisor expects every service) and say why.
        let mut reporter = crate::control::Reporter::from_env();
        reporter.error("not configured: no [wado] section, images are not served");
        log::info!("wado idle: not configured");
        while !stop.load(Ordering::Relaxed) {
            reporter.beat(true, BTreeMap::new);
            std::thread::sleep(Duration::from_millis(200));
        }
        return Ok(());
    };
    let tls = crate::tls::server_config(&w.certificate, &w.private_key, Some(&w.client_ca))
        .map_err(WadoError::Tls)?;
    let addr = std::net::SocketAddr::new(w.listen, w.port);
    let listener = crate::supervisor::sandbox::tcp_listener(addr, "wado")
        .map_err(|source| WadoError::Bind { addr, source })?;
    let introspector = match &w.introspection {
        Some(i) => Some(super::token::Introspector::load(i).map_err(WadoError::Config)?),
        None => {
            log::warn!("wado: Bearer tokens are not checked (no [wado.introspection])");
            None
        }
    };
    let shared = Arc::new(Shared {
        config: w.clone(),
        introspector,
        run_dir: config.storage.run_dir.clone(),
        whitelist: Mutex::new(Whitelist {
            files: crate::whitelist::updater::Files::new(&config.storage.data_dir),
            seen: None,
            subjects: Vec::new(),
        }),
        counters: Mutex::new(BTreeMap::new()),
        active: AtomicUsize::new(0),
    });
    log::info!("wado ready on {addr}, base path {}", w.base_path);
    let counters = {
        let shared = shared.clone();
        move || shared.counters.lock().expect("counters").clone()
    };
    crate::control::accept_loop(&listener, &stop, w.timeout, counters, |tcp, _| {
        if shared.active.fetch_add(1, Ordering::SeqCst) >= w.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            shared.count("refused_busy");
            return;
        }
        let (shared, tls) = (shared.clone(), tls.clone());
        let spawned = std::thread::Builder::new()
            .name("wado".into())
            .spawn(move || {
                serve_connection(&shared, tcp, tls);
                shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            log::warn!("cannot start a WADO-RS thread");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_under_the_base_path_in_origin_or_absolute_form() {
        assert_eq!(
            route("/wado", "/wado/studies/1.2/series/1.3/instances/1.4"),
            Some(("1.2".into(), Some("1.3".into()), Some("1.4".into())))
        );
        assert_eq!(
            route(
                "/dicom-web-rs",
                "https://interop.example/dicom-web-rs/studies/1.2/series/1.3?x=1"
            ),
            Some(("1.2".into(), Some("1.3".into()), None))
        );
        assert_eq!(route("", "/studies/1.2/"), Some(("1.2".into(), None, None)));
        assert_eq!(route("/wado", "/studies/1.2"), None);
        assert_eq!(route("/wado", "/wado/studies/1.2/metadata"), None);
        assert_eq!(route("/wado", "/wado/studies"), None);
    }
}
