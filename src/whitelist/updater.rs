//! The whitelist updater service: daily (and on demand) it downloads the list over HTTPS,
//! fetches the CRLs its certificates name, verifies everything ([`super::verify`]), writes the
//! signed proof of verification ([`super::proof`]), installs a valid list atomically (the
//! previous one kept beside it) and records the attempt in the archive. A list that fails
//! anything is never installed: the box goes on with its last good list.
//!
//! Its files, under `data_dir/whitelist/` (the updater's own directory, readable by the box
//! group for the WADO-RS server):
//! `liste-blanche.xml` (in service), `liste-blanche.previous.xml`, `liste-blanche.proof.xml`
//! (the proof of the one in service), `proofs/` (every verification's proof), `versions/`
//! (every list ever installed, named by its DateDeGeneration and digest), `crl/` (cache).
//!
//! Order of the durable steps: proof, version copy, previous, list, its proof (each temp + fsync + rename +
//! directory fsync), then the attempt committed in the archive. A crash after the list and
//! before the commit leaves a list whose attempt is missing: the next start records it.
//!
//! `drimbox whitelist update` asks for an attempt on `<run_dir>/whitelist.sock` (handed down by
//! the supervisor, mode 0660 in the updater's group) and gets its outcome back as one JSON line.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::Serialize;

use super::schedule::{self, Schedule, Standing};
use super::verify::{self, Check, Revocation, Trust, Verification};
use super::{list, proof, trust};
use crate::archive::model::{WhitelistAttempt, WhitelistOutcome};
use crate::archive::store::write_atomically;
use crate::config::{Config, WhitelistDownload};
use crate::ipc::{self, Request, Response, Role};
use crate::signing::SigningIdentity;

/// The socket name the supervisor hands down, and its file in the run directory.
pub const CONTROL_SOCKET: &str = "whitelist-control";
pub fn control_path(run_dir: &Path) -> PathBuf {
    run_dir.join("whitelist.sock")
}

/// Proofs kept in `proofs/` (a year of daily attempts and their retries).
const KEEP_PROOFS: usize = 500;
const CRL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the updater keeps its files.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn new(data_dir: &Path) -> Files {
        Files {
            dir: data_dir.join("whitelist"),
        }
    }
    pub fn current(&self) -> PathBuf {
        self.dir.join("liste-blanche.xml")
    }
    pub fn previous(&self) -> PathBuf {
        self.dir.join("liste-blanche.previous.xml")
    }
    pub fn current_proof(&self) -> PathBuf {
        self.dir.join("liste-blanche.proof.xml")
    }
    pub fn proofs(&self) -> PathBuf {
        self.dir.join("proofs")
    }
    pub fn crl_cache(&self) -> PathBuf {
        self.dir.join("crl")
    }
    pub fn versions(&self) -> PathBuf {
        self.dir.join("versions")
    }
}

/// What an attempt gives back to whoever asked for it (one JSON line on the control socket).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub attempt: WhitelistAttempt,
    /// Every check of the verification (empty when nothing was downloaded).
    pub checks: Vec<Check>,
    /// CRLs that could not be fetched, proofs that could not be signed…
    pub notes: Vec<String>,
}

/// What an attempt needs, loaded once at start.
pub struct Updater {
    download: WhitelistDownload,
    tls: Arc<rustls::ClientConfig>,
    trust: Trust,
    editor: Option<SigningIdentity>,
    files: Files,
}

/// The list in service: its bytes' digest and content, read back from disk (it was verified
/// before it was installed; only the updater writes it).
pub fn installed(files: &Files) -> Option<(String, list::ListContent)> {
    let bytes = fs::read(files.current()).ok()?;
    let doc = crate::xml::Document::parse(&bytes).ok()?;
    let content = list::read(&doc).ok()?;
    Some((sha256_hex(&bytes), content))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `HTTP 404 Not Found`, `timed out after 60 s`, `TLS: invalid peer certificate: UnknownIssuer`…
fn download_reason(e: &crate::dmp::http::HttpError, timeout: Duration) -> String {
    use crate::dmp::http::HttpError;
    let timed_out = |k: std::io::ErrorKind| {
        matches!(
            k,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        )
    };
    match e {
        HttpError::Io(io) if timed_out(io.kind()) => {
            format!("timed out after {} s", timeout.as_secs())
        }
        HttpError::Connect(_, io) if timed_out(io.kind()) => {
            format!("connection timed out after {} s", timeout.as_secs())
        }
        HttpError::TooLarge(max) => format!("the list is over the {max}-byte limit"),
        other => other.to_string(),
    }
}

impl Updater {
    pub fn load(config: &Config) -> Result<Option<Updater>, String> {
        let w = &config.whitelist;
        let Some(download) = w.download.clone() else {
            return Ok(None);
        };
        let tls = crate::tls::client_config(&download.tls_trust_anchors)
            .map_err(|e| format!("whitelist.tls_trust_anchors: {e}"))?;
        let trust = trust::load(w).map_err(|e| e.to_string())?;
        let editor = match &w.proof_signing {
            Some(p) => Some(
                crate::publisher::load_identity(&p.pkcs12, &p.password_file)
                    .map_err(|e| format!("whitelist.proof_pkcs12: {e}"))?,
            ),
            None => None,
        };
        Ok(Some(Updater {
            download,
            tls,
            trust,
            editor,
            files: Files::new(&config.storage.data_dir),
        }))
    }

    /// One attempt: download, verify, prove, install. Never fails: a failure is an outcome.
    pub fn attempt(&self, trigger: &str, now_unix: i64) -> Report {
        let d = &self.download;
        let mut attempt =
            WhitelistAttempt::new(now_unix, trigger, &d.url, WhitelistOutcome::FetchFailed);
        let answer = crate::dmp::http::get(
            &d.url,
            "application/xml, text/xml",
            self.tls.clone(),
            d.timeout,
            d.max_bytes,
        );
        let not_fetched = match answer {
            Ok(m) if m.status() == 200 => Ok(m.body),
            Ok(m) => Err(format!(
                "HTTP {}",
                m.start.split_once(' ').map_or(m.start.as_str(), |(_, r)| r)
            )),
            Err(e) => Err(download_reason(&e, d.timeout)),
        };
        let bytes = match not_fetched {
            Ok(b) => b,
            Err(why) => {
                attempt.reason = Some(why);
                return Report {
                    attempt,
                    checks: Vec::new(),
                    notes: Vec::new(),
                };
            }
        };
        attempt.sha256 = Some(sha256_hex(&bytes));
        attempt.size = Some(bytes.len() as u64);
        let (crls, mut notes) = trust::gather_crls(
            &bytes,
            &self.trust,
            Some(&self.files.crl_cache()),
            CRL_TIMEOUT,
        );
        let in_service = installed(&self.files);
        let revocation = Revocation {
            crls,
            offline: false,
        };
        let v = verify::verify(
            &bytes,
            &self.trust,
            &revocation,
            now_unix,
            in_service.as_ref().map(|(_, c)| c.generated_unix),
        );
        self.describe(&mut attempt, &v, &revocation);
        let proof = self.prove(&v, trigger, now_unix, &mut attempt, &mut notes);
        if !v.valid {
            attempt.outcome = WhitelistOutcome::Refused;
            attempt.reason = v.first_failure();
        } else if in_service.as_ref().map(|(h, _)| h) == attempt.sha256.as_ref() {
            attempt.outcome = WhitelistOutcome::Unchanged;
            if let Some(p) = &proof {
                if let Err(e) = write_atomically(&self.files.current_proof(), p.as_bytes()) {
                    notes.push(format!("the proof beside the list was not updated: {e}"));
                }
            }
        } else {
            let version = format!(
                "{}-{}.xml",
                v.generated
                    .as_deref()
                    .unwrap_or("undated")
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect::<String>(),
                &v.sha256[..12]
            );
            match self.install(&bytes, proof.as_deref(), &version) {
                Ok(()) => {
                    attempt.outcome = WhitelistOutcome::Installed;
                    attempt.version = Some(version);
                }
                Err(e) => {
                    attempt.outcome = WhitelistOutcome::InstallFailed;
                    attempt.reason = Some(e.to_string());
                }
            }
        }
        Report {
            attempt,
            checks: v.checks,
            notes,
        }
    }

    fn describe(&self, a: &mut WhitelistAttempt, v: &Verification, r: &Revocation) {
        a.generated = v.generated.clone();
        a.domains = v.domains.map(|d| d as u64);
        a.signer = v.signer.clone();
        a.certificates_expire_unix = v
            .chain
            .iter()
            .filter_map(|c| crate::status::parse_rfc3339(&c.not_after))
            .min();
        a.crls_next_update_unix = r.crls.iter().filter_map(|c| c.next_update_unix()).min();
    }

    /// Writes the proof of `v` in `proofs/`; the proof's text, for the list's side.
    fn prove(
        &self,
        v: &Verification,
        trigger: &str,
        now_unix: i64,
        a: &mut WhitelistAttempt,
        notes: &mut Vec<String>,
    ) -> Option<String> {
        let verifier = format!("drimbox {}", env!("CARGO_PKG_VERSION"));
        let report = proof::report(
            v,
            proof::Context {
                source: &self.download.url,
                trigger,
                verifier: &verifier,
            },
        );
        let signing_time = crate::status::rfc3339(now_unix * 1000);
        let text = match &self.editor {
            Some(id) => match proof::sign(&report, id, &signing_time) {
                Ok(t) => {
                    a.proof_signed = true;
                    t
                }
                Err(e) => {
                    notes.push(format!("proof kept unsigned: {e}"));
                    proof::unsigned(&report)
                }
            },
            None => proof::unsigned(&report),
        };
        let stamp: String = signing_time
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let name = format!(
            "{stamp}-{}-{}.xml",
            if v.valid { "valid" } else { "invalid" },
            &v.sha256[..12]
        );
        let dir = self.files.proofs();
        match fs::create_dir_all(&dir)
            .and_then(|()| write_atomically(&dir.join(&name), text.as_bytes()))
        {
            Ok(()) => {
                a.proof = Some(name);
                prune_proofs(&dir);
                Some(text)
            }
            Err(e) => {
                notes.push(format!("proof not written: {e}"));
                None
            }
        }
    }

    /// The previous list aside, then the new one and its proof in place (see the module doc).
    fn install(&self, bytes: &[u8], proof: Option<&str>, version: &str) -> std::io::Result<()> {
        let f = &self.files;
        fs::create_dir_all(f.versions())?;
        write_atomically(&f.versions().join(version), bytes)?;
        if let Ok(old) = fs::read(f.current()) {
            write_atomically(&f.previous(), &old)?;
        }
        write_atomically(&f.current(), bytes)?;
        match proof {
            Some(p) => write_atomically(&f.current_proof(), p.as_bytes()),
            None => match fs::remove_file(f.current_proof()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }
}

fn prune_proofs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".xml") && !n.starts_with('.'))
        .collect();
    if names.len() <= KEEP_PROOFS {
        return;
    }
    // Names start with the time: the oldest sort first.
    names.sort();
    for n in &names[..names.len() - KEEP_PROOFS] {
        let _ = fs::remove_file(dir.join(n));
    }
}

/// The standing the schedule needs, from the attempts (newest first).
pub fn standing(attempts: &[WhitelistAttempt], installed: bool) -> Standing {
    Standing {
        last_attempt_unix: attempts.first().map(|a| a.at_unix),
        last_success_unix: attempts
            .iter()
            .find(|a| a.outcome.succeeded())
            .map(|a| a.at_unix),
        failures_in_a_row: attempts
            .iter()
            .take_while(|a| !a.outcome.succeeded())
            .count() as u32,
        installed,
    }
}

/// A random draw in [0, 1) for the jitter.
fn draw() -> f64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn now_unix() -> i64 {
    crate::archive::now_ms() / 1000
}

/// Records `attempt` in the archive (reconnecting once); false if it could not be.
fn record(client: &mut Option<ipc::Client>, run_dir: &Path, attempt: &WhitelistAttempt) -> bool {
    for _ in 0..2 {
        if client.is_none() {
            *client = ipc::Client::connect(run_dir, Role::Whitelist, Duration::from_secs(10)).ok();
        }
        if let Some(c) = client.as_mut() {
            match c.call(&Request::RecordWhitelistAttempt(Box::new(attempt.clone()))) {
                Ok(Response::WhitelistAttemptRecorded { .. }) => return true,
                Ok(other) => log::warn!("archive refused the whitelist attempt: {other:?}"),
                Err(e) => log::warn!("recording the whitelist attempt: {e}"),
            }
        }
        *client = None;
    }
    false
}

fn history(client: &mut Option<ipc::Client>, run_dir: &Path) -> Option<Vec<WhitelistAttempt>> {
    if client.is_none() {
        *client = ipc::Client::connect(run_dir, Role::Whitelist, Duration::from_secs(10)).ok();
    }
    match client
        .as_mut()?
        .call(&Request::WhitelistAttempts { limit: 50 })
    {
        Ok(Response::WhitelistAttempts(v)) => Some(v),
        _ => {
            *client = None;
            None
        }
    }
}

fn control_listener(config: &Config) -> std::io::Result<UnixListener> {
    use std::os::fd::FromRawFd;
    let inherited =
        crate::supervisor::sandbox::inherited_fds(crate::supervisor::sandbox::ENV_SOCKETS);
    match inherited.iter().find(|(n, _)| n == CONTROL_SOCKET) {
        // SAFETY: the supervisor gave us this listening socket for our sole use.
        Some((_, fd)) => Ok(unsafe { UnixListener::from_raw_fd(*fd) }),
        None => {
            let path = control_path(&config.storage.run_dir);
            let _ = fs::remove_file(&path);
            UnixListener::bind(path)
        }
    }
}

/// Reads the one request line of a control connection (`update`).
fn read_request(stream: &UnixStream) -> Option<String> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim().to_string())
}

fn answer(mut stream: UnixStream, report: &Report) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = serde_json::to_vec(report).expect("reports serialize");
    line.push(b'\n');
    let _ = stream.write_all(&line);
}

fn refuse(mut stream: UnixStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = writeln!(stream, "{}", serde_json::json!({ "error": why }));
}

pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), UpdaterError> {
    let mut reporter = crate::control::Reporter::from_env();
    let files = Files::new(&config.storage.data_dir);
    for d in [
        files.dir.clone(),
        files.proofs(),
        files.crl_cache(),
        files.versions(),
    ] {
        fs::create_dir_all(&d).map_err(|source| UpdaterError::Io { path: d, source })?;
    }
    let listener = control_listener(config).map_err(|source| UpdaterError::Io {
        path: control_path(&config.storage.run_dir),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| UpdaterError::Io {
            path: control_path(&config.storage.run_dir),
            source,
        })?;
    let updater = match Updater::load(config) {
        Ok(Some(u)) => Some(Arc::new(u)),
        Ok(None) => {
            reporter.error("no [whitelist] url configured: the list is not downloaded");
            None
        }
        Err(e) => {
            log::error!("whitelist updater idle: {e}");
            reporter.error(format!("not downloading: {e}"));
            None
        }
    };
    let run_dir = config.storage.run_dir.clone();
    let mut client: Option<ipc::Client> = None;
    let mut attempts: Vec<WhitelistAttempt> = Vec::new();
    let mut restored = false;
    let sched = config.whitelist.download.as_ref().map(|d| Schedule {
        daily_at_minutes: d.daily_at_minutes,
        jitter_seconds: d.jitter.as_secs() as u32,
    });
    let mut next: Option<i64> = None;
    let mut draw_now = draw();
    // Attempts waiting to be recorded (the archive was away), oldest first.
    let mut unrecorded: Vec<WhitelistAttempt> = Vec::new();
    let mut waiting: Vec<UnixStream> = Vec::new();
    let mut operator_asked = false;
    let mut running: Option<mpsc::Receiver<Report>> = None;
    let (mut total, mut failed) = (0u64, 0u64);
    log::info!("whitelist updater ready");
    let mut in_service = installed(&files);
    while !stop.load(Ordering::Relaxed) {
        if !restored {
            if let Some(h) = history(&mut client, &run_dir) {
                attempts = h;
                restored = true;
                // A list installed just before a crash, its attempt never committed.
                if let Some((sha, content)) = &in_service {
                    let known = attempts
                        .iter()
                        .any(|a| a.outcome.succeeded() && a.sha256.as_ref() == Some(sha));
                    if !known {
                        let url = config.whitelist.download.as_ref().map_or("", |d| &d.url);
                        let mut a = WhitelistAttempt::new(
                            now_unix(),
                            "start",
                            url,
                            WhitelistOutcome::Installed,
                        );
                        a.reason =
                            Some("installed before an interruption; recorded at start".into());
                        a.sha256 = Some(sha.clone());
                        a.size = fs::metadata(files.current()).ok().map(|m| m.len());
                        a.generated = Some(content.generated.clone());
                        a.domains = Some(content.domains.len() as u64);
                        log::warn!("whitelist {sha}: installed but not recorded; recorded now");
                        unrecorded.push(a.clone());
                        attempts.insert(0, a);
                    }
                }
            }
        }
        unrecorded.retain(|a| !record(&mut client, &run_dir, a));
        let last = attempts.first();
        reporter.beat(true, || {
            let mut c = std::collections::BTreeMap::new();
            c.insert("whitelist_attempts".to_string(), total);
            c.insert("whitelist_failed_attempts".to_string(), failed);
            c.insert(
                "whitelist_installed".to_string(),
                u64::from(in_service.is_some()),
            );
            if let Some((_, content)) = &in_service {
                c.insert(
                    "whitelist_domains".to_string(),
                    content.domains.len() as u64,
                );
                c.insert(
                    "whitelist_generated_unix".to_string(),
                    content.generated_unix.max(0) as u64,
                );
            }
            if let Some(n) = next {
                c.insert(
                    "whitelist_next_attempt_unix".to_string(),
                    n.max(now_unix()).max(0) as u64,
                );
            }
            if let Some(a) = last {
                c.insert(
                    "whitelist_last_attempt_unix".to_string(),
                    a.at_unix.max(0) as u64,
                );
                c.insert(
                    "whitelist_last_attempt_ok".to_string(),
                    u64::from(a.outcome.succeeded()),
                );
            }
            c
        });
        // An attempt finished: record it, answer who asked, plan the next one.
        if let Some(rx) = &running {
            if let Ok(report) = rx.try_recv() {
                running = None;
                total += 1;
                let a = &report.attempt;
                if a.outcome.succeeded() {
                    reporter.error(String::new());
                    log::info!(
                        "whitelist {}: {} ({} domains)",
                        a.sha256.as_deref().unwrap_or("-"),
                        a.outcome.label(),
                        a.domains.unwrap_or(0)
                    );
                } else {
                    failed += 1;
                    let why = format!(
                        "whitelist {}: {}",
                        a.outcome.label(),
                        a.reason.as_deref().unwrap_or("")
                    );
                    log::warn!("{why}; the previous list stays in service");
                    reporter.error(why);
                }
                if !record(&mut client, &run_dir, a) {
                    unrecorded.push(a.clone());
                }
                attempts.insert(0, a.clone());
                attempts.truncate(50);
                in_service = installed(&files);
                draw_now = draw();
                for s in waiting.drain(..) {
                    answer(s, &report);
                }
            }
        }
        if let (Some(s), true) = (sched, restored) {
            let n = schedule::next_attempt(standing(&attempts, in_service.is_some()), s, draw_now);
            next = Some(n.max(attempts.first().map_or(i64::MIN, |a| a.at_unix)));
        }
        // Start one when due or asked (one at a time; the archive must have answered first,
        // so the schedule knows the history).
        let due = next.is_some_and(|n| now_unix() >= n);
        if running.is_none() && restored && (due || operator_asked) {
            if let Some(u) = &updater {
                let trigger = if operator_asked {
                    "operator"
                } else if attempts.is_empty() || in_service.is_none() {
                    "start"
                } else if attempts.first().is_some_and(|a| !a.outcome.succeeded()) {
                    "retry"
                } else {
                    "schedule"
                };
                operator_asked = false;
                let (tx, rx) = mpsc::channel();
                let u = u.clone();
                let trigger = trigger.to_string();
                std::thread::spawn(move || {
                    let _ = tx.send(u.attempt(&trigger, now_unix()));
                });
                running = Some(rx);
            }
        }
        // Wait at most 200 ms for an operator.
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 200) } > 0 {
            if let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                match read_request(&stream).as_deref() {
                    Some("update") if updater.is_some() => {
                        operator_asked = running.is_none();
                        waiting.push(stream);
                    }
                    Some("update") => refuse(
                        stream,
                        "no list to download: [whitelist] url and tls_trust_anchors are not configured",
                    ),
                    Some(other) => refuse(stream, &format!("unknown request `{other}`")),
                    None => {}
                }
            }
        }
    }
    log::info!("whitelist updater stopped");
    Ok(())
}
