//! The status service: one read-only page, `/status.json` and `/metrics`, served over plain
//! HTTP on `status.listen:status.port`, and the same snapshot for `drimbox status`.
//!
//! A snapshot is assembled from three sources, each read-only: the supervisor's health record
//! (`<run_dir>/health.json`), the archive's counters (reader socket) and the data directory's
//! file system (statvfs). [`judge`] turns it into a verdict, purely. The HTTP side is a small
//! server: bounded request size, timeouts, a limit of concurrent connections; read-only but for
//! `/update`, the administrator's install form ([`update`]).

pub mod admin;
pub mod form;
pub mod metrics;
pub mod model;
pub mod page;
pub mod update;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ipc::{self, Request, Response, Role};
use crate::supervisor::{self, HealthRecord};
use model::{
    ArchiveCounters, DicomEndpoint, Disk, Firmware, Section, ServiceState, Snapshot, Verdict,
    SCHEMA_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("status page TLS: {0}")]
    Tls(String),
}

pub fn firmware() -> Firmware {
    Firmware {
        version: env!("CARGO_PKG_VERSION").to_string(),
        build: option_env!("DRIMBOX_BUILD")
            .unwrap_or("unknown")
            .to_string(),
    }
}

/// Assembles a snapshot now. Never fails: what cannot be read is shown as missing.
pub fn collect(config: &Config) -> Snapshot {
    let now = crate::archive::now_ms();
    let health = supervisor::read_health(&config.storage.run_dir);
    let archive = ipc::Client::connect(
        &config.storage.run_dir,
        Role::Reader,
        Duration::from_secs(3),
    )
    .and_then(|mut c| c.call(&Request::Summary))
    .ok()
    .and_then(|r| match r {
        Response::Summary(s) => Some(s),
        _ => None,
    });
    let disk = disk_usage(
        &config.storage.data_dir,
        f64::from(config.status.disk_warn_percent),
    );
    let exams = ipc::Client::connect(
        &config.storage.run_dir,
        Role::Reader,
        Duration::from_secs(3),
    )
    .and_then(|mut c| c.call(&Request::Exams))
    .ok()
    .and_then(|r| match r {
        Response::Exams(v) => Some(exams_section(&v)),
        _ => None,
    });
    let mut snapshot = build(config, now, health, archive, disk);
    if let Some(e) = &exams {
        let n = |label: &str| e.by_state.get(label).copied().unwrap_or(0);
        snapshot.dmp = Section {
            details: Vec::new(),
            configured: config.dmp.is_some(),
            summary: if config.dmp.is_some() {
                format!(
                    "{} published, {} sending, {} waiting to be sent, {} withdrawn",
                    n("published"),
                    n("sending to the DMP"),
                    n("lot built"),
                    n("withdrawn")
                )
            } else {
                format!("not configured ({} lot(s) built and kept)", n("lot built"))
            },
        };
    }
    if let Some(e) = &exams {
        // A lot in flight with an error: the DMP is unreachable or refuses us (TLS, certificate).
        if let Some(stuck) = e
            .listed
            .iter()
            .find(|l| l.state == "sending to the DMP" && l.reason.is_some())
        {
            if snapshot.verdict == Verdict::Ok {
                snapshot.verdict = Verdict::Degraded;
            }
            snapshot.reasons.push(format!(
                "the DMP cannot be reached: {}",
                stuck.reason.as_deref().unwrap_or_default()
            ));
        }
        let held = e.by_state.get("on hold").copied().unwrap_or(0);
        if held > 0 {
            if snapshot.verdict == Verdict::Ok {
                snapshot.verdict = Verdict::Degraded;
            }
            snapshot
                .reasons
                .push(format!("{held} exam(s) on hold: see the exams list"));
        }
    }
    snapshot.exams = exams;
    let attempts = ipc::Client::connect(
        &config.storage.run_dir,
        Role::Reader,
        Duration::from_secs(3),
    )
    .and_then(|mut c| c.call(&Request::WhitelistAttempts { limit: 20 }))
    .ok()
    .and_then(|r| match r {
        Response::WhitelistAttempts(v) => Some(v),
        _ => None,
    })
    .unwrap_or_default();
    let (section, reasons) = whitelist_section(
        config.whitelist.download.is_some(),
        &snapshot.services,
        &attempts,
        now / 1000,
    );
    snapshot.whitelist = section;
    snapshot.wado = wado_section(config.wado.as_ref(), &snapshot.services);
    let (section, mut ota_reasons) =
        ota_section(crate::ota::report::read(&config.status.update_state));
    snapshot.ota = section;
    let spool = &config.status.update_spool;
    snapshot.ota.details.extend(upload_lines(
        crate::ota::spool::pending(spool),
        crate::ota::spool::progress(spool).as_deref(),
        &crate::ota::spool::last(spool),
    ));
    let mut reasons = reasons;
    reasons.append(&mut ota_reasons);
    if !reasons.is_empty() && snapshot.verdict == Verdict::Ok {
        snapshot.verdict = Verdict::Degraded;
    }
    snapshot.reasons.extend(reasons);
    if config.dmp.is_some() {
        let reach = dmp_reachability(&snapshot.services);
        if let Some(r) = &reach {
            snapshot.dmp.details.push(r.line());
            let already = snapshot
                .reasons
                .iter()
                .any(|x| x.starts_with("the DMP cannot be reached"));
            if !r.reachable && !already {
                if snapshot.verdict == Verdict::Ok {
                    snapshot.verdict = Verdict::Degraded;
                }
                snapshot
                    .reasons
                    .push(format!("the DMP cannot be reached: {}", r.reason));
            }
        }
        snapshot.dmp_exchanges = ipc::Client::connect(
            &config.storage.run_dir,
            Role::Reader,
            Duration::from_secs(3),
        )
        .and_then(|mut c| c.call(&Request::Exchanges { limit: 20 }))
        .ok()
        .and_then(|r| match r {
            Response::Exchanges(v) => Some(v.iter().map(exchange_line).collect()),
            _ => None,
        })
        .unwrap_or_default();
    }
    snapshot
}

/// The OTA section, from the state the update commands wrote: the running slot and version,
/// both slots, the floor; an update that failed and was rolled back is a degraded reason.
pub fn ota_section(
    state: Result<Option<crate::ota::report::UpdateState>, String>,
) -> (Section, Vec<String>) {
    match state {
        Ok(None) => (
            Section {
                configured: false,
                summary: "no update state yet (written by drimbox ota at boot and on each update)"
                    .into(),
                details: Vec::new(),
            },
            Vec::new(),
        ),
        Ok(Some(s)) => {
            let problems = s.problems();
            let mut details = problems.clone();
            details.extend(s.details());
            details.push(format!("as of {}", rfc3339(s.written_at_ms)));
            (
                Section {
                    configured: true,
                    summary: s.summary(),
                    details,
                },
                problems,
            )
        }
        Err(e) => (
            Section {
                configured: true,
                summary: "update state unreadable".into(),
                details: vec![e.clone()],
            },
            vec![format!("the update state cannot be read: {e}")],
        ),
    }
}

/// The pending upload with how far its installer is, and what the last one became (the OTA
/// section's last lines).
pub fn upload_lines(
    pending: bool,
    progress: Option<&str>,
    last: &Result<Option<crate::ota::spool::Outcome>, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    match (pending, progress) {
        (true, Some(p)) => out.push(format!(
            "an uploaded update is being verified and installed: {p}"
        )),
        (true, None) => out.push("an uploaded update is being verified and installed".into()),
        (false, _) => {}
    }
    match last {
        Ok(Some(o)) => out.push(format!(
            "last upload ({}, {}): {}",
            rfc3339(o.request.received_at_ms),
            page::human_bytes(o.request.size),
            o.message
        )),
        Ok(None) => {}
        Err(e) => out.push(format!("last upload: unreadable ({e})")),
    }
    out
}

/// A list last verified longer ago than this is worth an operator's look (daily attempts, a
/// day of retries).
const WHITELIST_STALE_SECONDS: i64 = 2 * 86_400;

/// The whitelist section, purely: from the updater's beat (the list in service, the next
/// attempt) and the archive's last attempts (newest first). Also what it adds to the verdict
/// (degraded reasons).
pub fn whitelist_section(
    configured: bool,
    services: &[model::ServiceStatus],
    attempts: &[crate::archive::model::WhitelistAttempt],
    now_unix: i64,
) -> (Section, Vec<String>) {
    let at = |u: i64| rfc3339(u * 1000);
    let mut reasons = Vec::new();
    if !configured {
        return (
            Section {
                configured: false,
                summary: "not configured: no [whitelist] url, the list is not downloaded".into(),
                details: Vec::new(),
            },
            reasons,
        );
    }
    let counters = services
        .iter()
        .find(|s| s.name == "whitelist")
        .map(|s| s.counters.clone())
        .unwrap_or_default();
    let installed = counters.get("whitelist_installed") == Some(&1);
    let last_ok = attempts.iter().find(|a| a.outcome.succeeded());
    let summary = if installed {
        format!(
            "list of {}, {} domain(s){}",
            counters
                .get("whitelist_generated_unix")
                .map_or("?".into(), |g| at(*g as i64)),
            counters.get("whitelist_domains").copied().unwrap_or(0),
            last_ok.map_or(String::new(), |a| format!(", verified {}", at(a.at_unix)))
        )
    } else {
        reasons.push("no verified whitelist is installed".to_string());
        "no verified list installed".to_string()
    };
    let mut details = Vec::new();
    if let Some(a) = attempts.first() {
        details.push(format!(
            "last attempt {} ({}): {}{}",
            at(a.at_unix),
            a.trigger,
            a.outcome.label(),
            a.reason
                .as_deref()
                .map_or(String::new(), |r| format!(": {r}"))
        ));
        if !a.outcome.succeeded() {
            reasons.push(format!(
                "the last whitelist attempt failed ({}){}",
                a.outcome.label(),
                if installed {
                    "; the previous list stays in service"
                } else {
                    ""
                }
            ));
        }
    } else {
        details.push("no attempt yet".into());
    }
    if let Some(n) = counters.get("whitelist_next_attempt_unix") {
        details.push(format!("next attempt {}", at(*n as i64)));
    }
    if let Some(a) = last_ok {
        if let Some(c) = a.certificates_expire_unix {
            details.push(format!("signer's certificates valid until {}", at(c)));
            if c - now_unix <= CERTIFICATE_WARN_DAYS as i64 * 86_400 {
                reasons.push(format!(
                    "the whitelist signer's certificates expire {}",
                    at(c)
                ));
            }
        }
        if let Some(c) = a.crls_next_update_unix {
            details.push(format!("CRLs valid until {}", at(c)));
        }
        details.push(format!(
            "proof of verification {}",
            if a.proof_signed {
                "signed"
            } else {
                "not signed (no [whitelist] proof_pkcs12)"
            }
        ));
        if now_unix - a.at_unix > WHITELIST_STALE_SECONDS {
            reasons.push(format!(
                "the whitelist was last verified {} day(s) ago",
                (now_unix - a.at_unix) / 86_400
            ));
        }
    }
    (
        Section {
            configured: true,
            summary,
            details,
        },
        reasons,
    )
}

/// The image access section, purely, from the WADO-RS service's beat (`wado_served`,
/// `wado_refused_<reason>`, `wado_interrupted`).
pub fn wado_section(
    config: Option<&crate::config::WadoConfig>,
    services: &[model::ServiceStatus],
) -> Section {
    let Some(config) = config else {
        return Section {
            configured: false,
            summary: "not configured: no [wado] section, images are not served".into(),
            details: Vec::new(),
        };
    };
    let counters = services
        .iter()
        .find(|s| s.name == "wado")
        .map(|s| s.counters.clone())
        .unwrap_or_default();
    let served = counters.get("wado_served").copied().unwrap_or(0);
    let refused: Vec<(String, u64)> = counters
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("wado_refused_")?.replace('_', " "), *v)))
        .collect();
    let total: u64 = refused.iter().map(|(_, n)| n).sum();
    let mut details: Vec<String> = refused
        .iter()
        .map(|(why, n)| format!("refused, {why}: {n}"))
        .collect();
    if let Some(n) = counters.get("wado_interrupted") {
        details.push(format!("streams interrupted: {n}"));
    }
    details.push(match &config.introspection {
        Some(i) => format!("Bearer tokens checked by introspection at {}", i.url),
        None => "Bearer tokens are NOT checked: no [wado.introspection]".into(),
    });
    Section {
        configured: true,
        summary: format!("{served} request(s) served, {total} refused since the service started"),
        details,
    }
}

/// What the publisher's last probe of the DMP said (a TLS handshake with the practice's
/// certificate, or a real exchange).
#[derive(Debug, Clone, PartialEq)]
pub struct Reachability {
    pub reachable: bool,
    pub checked_unix: u64,
    pub reason: String,
}

impl Reachability {
    pub fn line(&self) -> String {
        let at = rfc3339(self.checked_unix as i64 * 1000);
        if self.reachable {
            format!("DMP reachable (checked {at})")
        } else {
            format!("DMP not reachable (checked {at}): {}", self.reason)
        }
    }
}

/// The publisher reports `dmp_reachable` (0/1) and `dmp_checked_unix`, and the probe's error
/// as its last error. None before its first probe.
pub fn dmp_reachability(services: &[model::ServiceStatus]) -> Option<Reachability> {
    let p = services.iter().find(|s| s.name == "publisher")?;
    let reachable = *p.counters.get("dmp_reachable")? == 1;
    Some(Reachability {
        reachable,
        checked_unix: p.counters.get("dmp_checked_unix").copied().unwrap_or(0),
        reason: if reachable {
            String::new()
        } else {
            let e = p.last_error.as_deref().unwrap_or("no reason given");
            e.strip_prefix("the DMP cannot be reached: ")
                .unwrap_or(e)
                .to_string()
        },
    })
}

pub fn exchange_line(r: &crate::archive::model::ExchangeRecord) -> model::ExchangeLine {
    model::ExchangeLine {
        at: rfc3339(r.at_ms),
        study_uid: r.study_uid.clone(),
        lot: r.lot_seq,
        action: serde_json::to_value(r.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        transactions: r.transactions.join(" + "),
        attempts: r.attempts,
        outcome: r.outcome(),
    }
}

/// Most exam lines the page lists.
const MAX_EXAM_LINES: usize = 50;

/// The status page's view of the exams: counts by state, then the held and excluded exams
/// first, then the most recent.
pub fn exams_section(views: &[crate::archive::model::ExamView]) -> model::Exams {
    let mut by_state = std::collections::BTreeMap::new();
    for v in views {
        *by_state.entry(v.label.clone()).or_insert(0) += 1;
    }
    let needs_person = |v: &&crate::archive::model::ExamView| v.reason.is_some();
    let mut ordered: Vec<&crate::archive::model::ExamView> =
        views.iter().filter(needs_person).collect();
    ordered.extend(views.iter().filter(|v| v.reason.is_none()));
    let listed = ordered
        .iter()
        .take(MAX_EXAM_LINES)
        .map(|v| model::ExamLine {
            study_uid: v.study_uid.clone(),
            state: v.label.clone(),
            reason: v.reason.clone(),
            images: v.images,
            lots: v.lots,
        })
        .collect();
    model::Exams {
        by_state,
        listed,
        more: views.len().saturating_sub(MAX_EXAM_LINES) as u64,
    }
}

/// The pure part of [`collect`]: given what was read, the snapshot and its verdict.
pub fn build(
    config: &Config,
    now_ms: i64,
    health: Option<HealthRecord>,
    archive: Option<ArchiveCounters>,
    disk: Option<Disk>,
) -> Snapshot {
    let (verdict, reasons) = judge(now_ms, health.as_ref(), archive.as_ref(), disk.as_ref());
    Snapshot {
        schema: SCHEMA_VERSION,
        generated_at: rfc3339(now_ms),
        generated_at_ms: now_ms,
        verdict,
        reasons,
        firmware: firmware(),
        dicom: DicomEndpoint {
            ae_title: config.dicom.ae_title.clone(),
            port: config.dicom.port,
        },
        services: health.map(|h| h.services).unwrap_or_default(),
        disk,
        archive,
        exams: None,
        dmp: Section::not_configured(),
        dmp_exchanges: Vec::new(),
        whitelist: Section::not_configured(),
        wado: Section::not_configured(),
        ota: Section::not_configured(),
    }
}

/// The verdict: failing when the box cannot do its job (supervisor gone or stuck, a service
/// failed, the archive not answering), degraded when it does it with a problem an operator
/// should look at (a service restarting, starting or wedged, the disk nearly full, files
/// missing), ok otherwise.
pub fn judge(
    now_ms: i64,
    health: Option<&HealthRecord>,
    archive: Option<&ArchiveCounters>,
    disk: Option<&Disk>,
) -> (Verdict, Vec<String>) {
    let mut failing = Vec::new();
    let mut degraded = Vec::new();
    match health {
        None => failing.push("the supervisor is not running".to_string()),
        Some(h) if now_ms - h.updated_at_ms > supervisor::HEALTH_STALE_MS => failing.push(format!(
            "the supervisor has not reported for {} s",
            (now_ms - h.updated_at_ms) / 1000
        )),
        Some(h) => {
            for s in &h.services {
                match s.state {
                    ServiceState::Ready => {}
                    ServiceState::Failed => failing.push(format!("{} failed (crash loop)", s.name)),
                    ServiceState::Wedged => {
                        degraded.push(format!("{} is hung and being restarted", s.name))
                    }
                    ServiceState::Restarting => degraded.push(format!("{} is restarting", s.name)),
                    ServiceState::Starting => degraded.push(format!("{} is starting", s.name)),
                }
                // Services report their certificates' remaining days as `<what>_certificate_days_left`.
                for (name, days) in &s.counters {
                    if let Some(what) = name.strip_suffix("_certificate_days_left") {
                        let what = what.replace('_', " ");
                        if *days == 0 {
                            failing.push(format!("the {what} certificate has expired"));
                        } else if *days <= CERTIFICATE_WARN_DAYS {
                            degraded
                                .push(format!("the {what} certificate expires in {days} day(s)"));
                        }
                    }
                }
            }
        }
    }
    match archive {
        None => failing.push("the archive is not answering".to_string()),
        Some(a) if a.missing_files > 0 => degraded.push(format!(
            "{} archived instance(s) missing their file",
            a.missing_files
        )),
        Some(_) => {}
    }
    match disk {
        None => degraded.push("archive disk usage unknown".to_string()),
        Some(d) if d.warning() => degraded.push(format!(
            "archive disk {:.0}% full (warning at {:.0}%)",
            d.used_percent, d.warn_percent
        )),
        Some(_) => {}
    }
    if !failing.is_empty() {
        failing.extend(degraded);
        (Verdict::Failing, failing)
    } else if !degraded.is_empty() {
        (Verdict::Degraded, degraded)
    } else {
        (Verdict::Ok, Vec::new())
    }
}

/// What `drimbox status` prints: the page's content, for a terminal.
pub fn summary_text(s: &Snapshot) -> String {
    let mut out = format!(
        "DRIMbox {} (build {}), {}: {}\n",
        s.firmware.version,
        s.firmware.build,
        s.generated_at,
        s.verdict.as_str().to_uppercase()
    );
    for r in &s.reasons {
        out += &format!("  - {r}\n");
    }
    out += &format!("DICOM: AE {} port {}\n", s.dicom.ae_title, s.dicom.port);
    for v in &s.services {
        out += &format!(
            "  {:<10} {:<10} pid {:<8} up {:>6}s  restarts {}{}\n",
            v.name,
            format!("{:?}", v.state).to_lowercase(),
            v.pid.map_or("-".to_string(), |p| p.to_string()),
            v.uptime_seconds,
            v.restarts,
            v.last_error
                .as_deref()
                .map(|e| format!("  last: {e}"))
                .unwrap_or_default()
        );
    }
    match &s.archive {
        Some(a) => {
            out += &format!(
            "archive: {} studies ({} today, {} waiting, {} stable), {} instances ({} rejected), \
                 {} rejection notes, {} bytes, {} missing files\n",
            a.studies,
            a.studies_today,
            a.studies_waiting,
            a.studies_stable,
            a.instances,
            a.rejected_instances,
            a.rejection_notes,
            a.bytes,
            a.missing_files
        )
        }
        None => out += "archive: not answering\n",
    }
    match &s.disk {
        Some(d) => {
            out += &format!(
                "disk: {:.1}% used of {} bytes ({} available){}\n",
                d.used_percent,
                d.total_bytes,
                d.available_bytes,
                if d.warning() { "  WARNING" } else { "" }
            )
        }
        None => out += "disk: unknown\n",
    }
    for (name, sec) in [
        ("DMP", &s.dmp),
        ("whitelist", &s.whitelist),
        ("OTA", &s.ota),
    ] {
        out += &format!("{name}: {}\n", sec.summary);
    }
    out
}

/// Disk usage of the file system holding `path`.
pub fn disk_usage(path: &Path, warn_percent: f64) -> Option<Disk> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    let total = st.f_blocks as u64 * block;
    let available = st.f_bavail as u64 * block;
    let free = st.f_bfree as u64 * block;
    // As df computes it: used / (used + available), which counts root's reserve as unavailable.
    let used = total.saturating_sub(free);
    let used_percent = if used + available == 0 {
        0.0
    } else {
        100.0 * used as f64 / (used + available) as f64
    };
    Some(Disk {
        path: path.display().to_string(),
        total_bytes: total,
        available_bytes: available,
        used_percent,
        warn_percent,
    })
}

/// `2026-12-02T10:00:00Z` from ms since the epoch (civil-from-days, proleptic Gregorian, UTC).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of an XML Schema dateTime / RFC 3339 time
/// (`2026-06-19T18:06:52Z`, fractions and `±hh:mm` offsets allowed; a space may stand for the
/// `T`, as `xmlsec1 --verification-time` writes it; no zone means UTC).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "" | "Z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// A certificate this close to its end turns the verdict to degraded (time to renew it).
pub const CERTIFICATE_WARN_DAYS: u64 = 30;

/// Most concurrent HTTP connections; beyond, new ones get 503 at once.
const MAX_CONNECTIONS: usize = 16;
/// Longest request head we read.
const MAX_REQUEST: u64 = 8 * 1024;

struct Server {
    config: Config,
    admin: update::Admin,
    active: AtomicUsize,
    requests: AtomicU64,
    refused: AtomicU64,
}

/// Runs the status service until `stop` is set.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), StatusError> {
    let addr = SocketAddr::new(config.status.listen, config.status.port);
    let listener = crate::supervisor::sandbox::tcp_listener(addr, "http")
        .map_err(|source| StatusError::Bind { addr, source })?;
    let server = Arc::new(Server {
        config: config.clone(),
        admin: update::Admin::default(),
        active: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let tls = config.status.tls.as_ref().map(tls_config).transpose()?;
    log::info!(
        "status page ready on {}://{addr}/",
        if tls.is_some() { "https" } else { "http" }
    );
    let counters = || {
        [
            (
                "requests".to_string(),
                server.requests.load(Ordering::Relaxed),
            ),
            (
                "refused".to_string(),
                server.refused.load(Ordering::Relaxed),
            ),
        ]
        .into()
    };
    crate::control::accept_loop(
        &listener,
        &stop,
        Duration::from_secs(5),
        counters,
        |stream, peer| {
            if server.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                server.active.fetch_sub(1, Ordering::SeqCst);
                server.refused.fetch_add(1, Ordering::Relaxed);
                let _ = respond(
                    &mut &stream,
                    (plain(503, "Service Unavailable", "busy\n"), String::new()),
                );
                return;
            }
            let server = server.clone();
            let tls = tls.clone();
            let spawned = std::thread::Builder::new()
                .name("http".into())
                .spawn(move || {
                    let _ = match &tls {
                        Some(cfg) => rustls::ServerConnection::new(cfg.clone())
                            .map_err(io::Error::other)
                            .and_then(|conn| {
                                serve(&server, rustls::StreamOwned::new(conn, stream), peer)
                            }),
                        None => serve(&server, stream, peer),
                    };
                    server.active.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                log::warn!("cannot start an HTTP thread");
            }
        },
    );
    Ok(())
}

/// One request on one connection (plain or TLS): read the head (bounded), answer, close.
fn serve<S: Read + Write>(server: &Server, mut stream: S, peer: SocketAddr) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() as u64 >= MAX_REQUEST {
            break false;
        }
        match stream.read(&mut buf)? {
            0 => break false,
            n => head.extend_from_slice(&buf[..n]),
        }
    };
    server.requests.fetch_add(1, Ordering::Relaxed);
    let reply = if complete {
        let end = head_end(&head);
        let parsed = update::Head::parse(&String::from_utf8_lossy(&head[..end]));
        if parsed.path() == "/update" {
            let now = crate::archive::now_ms();
            match update::gate(&server.config, &server.admin, &parsed, now) {
                Err(refused) => refused,
                Ok(()) if parsed.method == "POST" => update::upload(
                    &server.config,
                    &server.admin,
                    &parsed,
                    &head[end..],
                    &mut stream,
                    Some(peer),
                    now,
                ),
                Ok(()) if parsed.method == "GET" => update::form_page(&server.config, None),
                Ok(()) => (
                    plain(405, "Method Not Allowed", "GET or POST\n"),
                    "Allow: GET, POST\r\n".into(),
                ),
            }
        } else {
            (route(server, &parsed), String::new())
        }
    } else {
        (
            plain(400, "Bad Request", "malformed or oversized request\n"),
            String::new(),
        )
    };
    respond(&mut stream, reply)
}

/// Where the head ends (past its blank line) in what was read.
fn head_end(read: &[u8]) -> usize {
    let crlf = read
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = read.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(read.len()),
    }
}

/// (code, reason, content type, body)
type Answer = (u16, &'static str, &'static str, Vec<u8>);

pub(crate) fn plain(code: u16, reason: &'static str, text: &str) -> Answer {
    (
        code,
        reason,
        "text/plain; charset=utf-8",
        text.as_bytes().to_vec(),
    )
}

/// What to answer to a request head.
fn route(server: &Server, head: &update::Head) -> Answer {
    let method = head.method.as_str();
    if method != "GET" && method != "HEAD" {
        return plain(405, "Method Not Allowed", "read-only: GET only\n");
    }
    let path = head.path();
    let (ctype, mut body) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            page::render_html(&collect(&server.config)).into_bytes(),
        ),
        "/status.json" => (
            "application/json",
            serde_json::to_vec_pretty(&collect(&server.config)).expect("snapshot serializes"),
        ),
        "/metrics" => (
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render_metrics(&collect(&server.config)).into_bytes(),
        ),
        _ => return plain(404, "Not Found", "not found\n"),
    };
    if method == "HEAD" {
        body.clear();
    }
    (200, "OK", ctype, body)
}

fn respond(
    stream: &mut impl Write,
    ((code, reason, ctype, body), extra): update::Reply,
) -> io::Result<()> {
    // form-action: the install form may post to this box only; frame-ancestors: no other page
    // may frame it (a click-jacked upload).
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
         form-action 'self'; frame-ancestors 'none'\r\n\
         {extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    stream.flush()
}

/// The status page's TLS configuration: the configured certificate chain and key, no client
/// authentication (a browser on the practice LAN).
fn tls_config(tls: &crate::config::StatusTls) -> Result<Arc<rustls::ServerConfig>, StatusError> {
    crate::tls::server_config(&tls.certificate, &tls.private_key, None).map_err(StatusError::Tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ota_section_says_where_the_updates_stand() {
        use crate::ota::report::{SlotLine, UpdateState};
        let (section, reasons) = ota_section(Ok(None));
        assert!(!section.configured && reasons.is_empty());
        let state = UpdateState {
            written_at_ms: 0,
            running: Some("b".into()),
            slots: vec![
                SlotLine {
                    slot: "a".into(),
                    version: Some("1.2".into()),
                    epoch: Some(1),
                    state: "failed: out of tries".into(),
                },
                SlotLine {
                    slot: "b".into(),
                    version: Some("1.1".into()),
                    epoch: Some(1),
                    state: "good".into(),
                },
            ],
            next_boot: Some("b".into()),
            failed_update: Some(("1.2".into(), "a".into())),
            floor: "1.1 epoch 1".into(),
        };
        let (section, reasons) = ota_section(Ok(Some(state)));
        assert_eq!(section.summary, "running 1.1 from slot b, committed");
        assert_eq!(
            reasons,
            ["the update to 1.2 failed (never healthy in slot a): the box went back to slot b"]
        );
        assert_eq!(section.details[0], reasons[0]);
        assert!(section.details.contains(&"floor: 1.1 epoch 1".to_string()));
        let (section, reasons) = ota_section(Err("/data/ota/state.json: denied".into()));
        assert_eq!(section.summary, "update state unreadable");
        assert_eq!(
            reasons,
            ["the update state cannot be read: /data/ota/state.json: denied"]
        );
    }
    use crate::status::model::ServiceStatus;

    fn svc(name: &str, state: ServiceState) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            pid: Some(1),
            uptime_seconds: 1,
            restarts: 0,
            last_error: None,
            counters: Default::default(),
        }
    }

    fn health(now: i64, states: &[(&str, ServiceState)]) -> HealthRecord {
        HealthRecord {
            supervisor_pid: 1,
            updated_at_ms: now,
            ready: true,
            services: states.iter().map(|(n, s)| svc(n, *s)).collect(),
        }
    }

    #[test]
    fn rfc3339_times_round_trip() {
        let t = parse_rfc3339("2026-06-19T18:06:52Z").unwrap();
        assert_eq!(rfc3339(t * 1000), "2026-06-19T18:06:52Z");
        assert_eq!(parse_rfc3339("2026-06-19 18:06:52"), Some(t));
        assert_eq!(parse_rfc3339("2026-06-19T20:06:52.123+02:00"), Some(t));
        assert_eq!(parse_rfc3339("2026-06-19T18:06"), None);
        assert_eq!(parse_rfc3339("2026-13-19T18:06:52Z"), None);
        assert_eq!(parse_rfc3339("2026-06-19T18:06:52Zjunk"), None);
    }

    #[test]
    fn reachability_comes_from_the_publishers_probe() {
        let mut h = health(0, &[("publisher", ServiceState::Ready)]);
        assert_eq!(dmp_reachability(&h.services), None, "no probe yet");
        let p = &mut h.services[0];
        p.counters.insert("dmp_reachable".into(), 0);
        p.counters.insert("dmp_checked_unix".into(), 1_796_212_800);
        p.last_error = Some("the DMP cannot be reached: TLS: alert received".into());
        let r = dmp_reachability(&h.services).unwrap();
        assert_eq!(
            r.line(),
            "DMP not reachable (checked 2026-12-02T12:00:00Z): TLS: alert received"
        );
        h.services[0].counters.insert("dmp_reachable".into(), 1);
        let r = dmp_reachability(&h.services).unwrap();
        assert_eq!(r.line(), "DMP reachable (checked 2026-12-02T12:00:00Z)");
    }

    #[test]
    fn exchange_lines_say_what_each_step_came_to() {
        use crate::archive::model::ExchangeRecord;
        use crate::exam::{LotAction, LotStatus};
        assert_eq!(
            ExchangeRecord::transaction_of("ITI41-2-request.mtom").as_deref(),
            Some("ITI-41")
        );
        assert_eq!(ExchangeRecord::transaction_of("SIGN_1.XML"), None);
        let mut r = ExchangeRecord {
            at_ms: 0,
            study_uid: "1.2.3".into(),
            lot_seq: 2,
            action: LotAction::Replace,
            transactions: vec!["ITI-18".into(), "ITI-41".into()],
            status: LotStatus::Refused,
            attempts: 1,
            error: None,
            dmp_errors: vec!["XDSPatientIdDoesNotMatch".into()],
        };
        let l = exchange_line(&r);
        assert_eq!(
            (
                l.action.as_str(),
                l.transactions.as_str(),
                l.outcome.as_str()
            ),
            (
                "replace",
                "ITI-18 + ITI-41",
                "refused: XDSPatientIdDoesNotMatch"
            )
        );
        r.status = LotStatus::Sending;
        r.error = Some("timed out".into());
        assert_eq!(r.outcome(), "retry scheduled: timed out");
    }

    fn disk(used: f64) -> Disk {
        Disk {
            path: "/data".into(),
            total_bytes: 100,
            available_bytes: 10,
            used_percent: used,
            warn_percent: 85.0,
        }
    }

    #[test]
    fn certificates_near_their_end_are_reported() {
        let now = 1_000_000;
        let mut h = health(now, &[("publisher", ServiceState::Ready)]);
        h.services[0]
            .counters
            .insert("signing_certificate_days_left".into(), 12);
        h.services[0]
            .counters
            .insert("dmp_authentication_certificate_days_left".into(), 400);
        let a = ArchiveCounters::default();
        let (v, r) = judge(now, Some(&h), Some(&a), Some(&disk(10.0)));
        assert_eq!(v, Verdict::Degraded);
        assert_eq!(
            r,
            vec!["the signing certificate expires in 12 day(s)".to_string()]
        );
        h.services[0]
            .counters
            .insert("signing_certificate_days_left".into(), 0);
        let (v, r) = judge(now, Some(&h), Some(&a), Some(&disk(10.0)));
        assert_eq!(v, Verdict::Failing);
        assert_eq!(r, vec!["the signing certificate has expired".to_string()]);
    }

    #[test]
    fn verdicts() {
        let now = 1_000_000;
        let ok = health(
            now,
            &[
                ("archive", ServiceState::Ready),
                ("receiver", ServiceState::Ready),
            ],
        );
        let a = ArchiveCounters::default();
        assert_eq!(
            judge(now, Some(&ok), Some(&a), Some(&disk(10.0))),
            (Verdict::Ok, vec![])
        );
        let (v, r) = judge(now, Some(&ok), Some(&a), Some(&disk(90.0)));
        assert_eq!(v, Verdict::Degraded);
        assert_eq!(
            r,
            vec!["archive disk 90% full (warning at 85%)".to_string()]
        );
        let restarting = health(now, &[("receiver", ServiceState::Restarting)]);
        assert_eq!(
            judge(now, Some(&restarting), Some(&a), Some(&disk(1.0))).0,
            Verdict::Degraded
        );
        let failed = health(now, &[("receiver", ServiceState::Failed)]);
        let (v, r) = judge(now, Some(&failed), Some(&a), Some(&disk(90.0)));
        assert_eq!(v, Verdict::Failing);
        assert_eq!(r[0], "receiver failed (crash loop)");
        assert_eq!(
            r.len(),
            2,
            "degraded reasons are kept under a failing verdict"
        );
        assert_eq!(
            judge(now, Some(&ok), None, Some(&disk(1.0))).0,
            Verdict::Failing
        );
        assert_eq!(
            judge(now, None, Some(&a), Some(&disk(1.0))).0,
            Verdict::Failing
        );
        let stale = health(now - 60_000, &[("archive", ServiceState::Ready)]);
        let (v, r) = judge(now, Some(&stale), Some(&a), Some(&disk(1.0)));
        assert_eq!(v, Verdict::Failing);
        assert_eq!(
            r,
            vec!["the supervisor has not reported for 60 s".to_string()]
        );
        let missing = ArchiveCounters {
            missing_files: 2,
            ..ArchiveCounters::default()
        };
        assert_eq!(
            judge(now, Some(&ok), Some(&missing), Some(&disk(1.0))).0,
            Verdict::Degraded
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_212_800_000), "2026-12-02T12:00:00Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn disk_usage_of_a_real_directory() {
        let d = disk_usage(Path::new("/"), 85.0).unwrap();
        assert!(d.total_bytes > 0 && d.available_bytes <= d.total_bytes);
        assert!((0.0..=100.0).contains(&d.used_percent));
        assert!(disk_usage(Path::new("/no/such/dir"), 85.0).is_none());
    }
}
