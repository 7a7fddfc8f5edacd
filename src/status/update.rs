//! `/update`: the status page's install form, for the administrator only.
//!
//! GET shows the update state and the form; POST takes a bundle (the form's
//! `multipart/form-data`, or the bare bundle as `application/octet-stream` for scripts) and
//! spools it for the root installer ([`crate::ota::spool`]). This service never installs and
//! never trusts a bundle: it only checks who is asking and that the upload is whole; the
//! installer verifies signature, chain, compatible, version and epoch before writing a byte.
//!
//! Who may ask, in order: the page must be on HTTPS (`status.tls`) or on a loopback address
//! (reached through an SSH tunnel), since a Basic credential on plain HTTP crosses the LAN in
//! clear; an administrator credential must have been set at install time (`drimbox admin
//! password`); the request must carry it (`Authorization: Basic`, user `admin`); after
//! [`admin::LOCKOUT_AFTER`] wrong ones in a row every check is refused for a minute; a POST
//! from a page of another origin (a browser holding the credential, led there by a hostile
//! page) is refused by its `Origin`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

use super::admin::{self, Credential, Lockout};
use super::form;
use super::{page, plain, Answer};
use crate::config::Config;
use crate::ota::spool;

/// The realm browsers show when asking for the credential.
const REALM: &str = "DRIMbox administration";
/// Larger than any bundle of ours (the slots are 1 GiB); refused before a byte is read.
pub const MAX_BUNDLE_BYTES: u64 = 2 << 30;

/// The request's head, as far as this page needs it.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub expect_continue: bool,
    pub origin: Option<String>,
    pub host: Option<String>,
}

impl Head {
    pub fn parse(text: &str) -> Head {
        let mut lines = text.lines();
        let mut parts = lines.next().unwrap_or("").split_whitespace();
        let mut h = Head {
            method: parts.next().unwrap_or("").to_string(),
            target: parts.next().unwrap_or("").to_string(),
            ..Head::default()
        };
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => h.authorization = Some(v),
                "content-type" => h.content_type = Some(v),
                // Unparseable: as if absent, which is refused (411) like a missing one.
                "content-length" => h.content_length = v.parse().ok(),
                "transfer-encoding" => h.chunked = !v.eq_ignore_ascii_case("identity"),
                "expect" => h.expect_continue = v.eq_ignore_ascii_case("100-continue"),
                "origin" => h.origin = Some(v),
                "host" => h.host = Some(v),
                _ => {}
            }
        }
        h
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query_flag(&self, name: &str) -> bool {
        self.target
            .split_once('?')
            .map(|(_, q)| {
                q.split('&')
                    .any(|kv| kv == name || kv == format!("{name}=1") || kv == format!("{name}=on"))
            })
            .unwrap_or(false)
    }
}

/// The administrator side's state in the status service.
#[derive(Default)]
pub struct Admin {
    lockout: Mutex<Lockout>,
    /// One upload at a time (the spool has one temporary file).
    uploading: std::sync::atomic::AtomicBool,
}

/// An answer with its extra header lines (each ending in CRLF).
pub type Reply = (Answer, String);

fn refuse(code: u16, reason: &'static str, text: &str) -> Reply {
    (plain(code, reason, text), String::new())
}

/// Whether the request may go on; else the answer that says why not.
pub fn gate(config: &Config, admin: &Admin, head: &Head, now_ms: i64) -> Result<(), Reply> {
    if config.status.tls.is_none() && !config.status.listen.is_loopback() {
        return Err(refuse(
            403,
            "Forbidden",
            "the update form is served only over HTTPS (status.tls) or on a loopback \
             status.listen: the administrator's password would cross the network in clear\n",
        ));
    }
    let path = &config.status.admin_credential;
    let credential = match std::fs::read_to_string(path) {
        Ok(text) => Credential::parse(&text).map_err(|e| {
            log::error!("administrator credential {}: {e}", path.display());
            refuse(
                503,
                "Service Unavailable",
                &format!(
                    "the administrator credential {} cannot be used: {e}; set it again with \
                     `drimbox admin password`\n",
                    path.display()
                ),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(refuse(
                403,
                "Forbidden",
                "no administrator credential is set on this box: the distributor sets one at \
                 install time (`drimbox admin password`)\n",
            ))
        }
        Err(e) => {
            log::error!("administrator credential {}: {e}", path.display());
            return Err(refuse(
                503,
                "Service Unavailable",
                &format!("the administrator credential {}: {e}\n", path.display()),
            ));
        }
    };
    let closed = admin
        .lockout
        .lock()
        .expect("not poisoned")
        .closed_for(now_ms);
    if closed > 0 {
        let seconds = (closed + 999) / 1000;
        return Err((
            plain(
                429,
                "Too Many Requests",
                &format!("too many wrong passwords: try again in {seconds} s\n"),
            ),
            format!("Retry-After: {seconds}\r\n"),
        ));
    }
    let challenge = || {
        (
            plain(
                401,
                "Unauthorized",
                "the administrator's password is needed\n",
            ),
            format!("WWW-Authenticate: Basic realm=\"{REALM}\", charset=\"UTF-8\"\r\n"),
        )
    };
    let Some(password) = head
        .authorization
        .as_deref()
        .and_then(admin::basic_password)
    else {
        return Err(challenge());
    };
    let ok = credential.check(&password);
    admin
        .lockout
        .lock()
        .expect("not poisoned")
        .record(now_ms, ok);
    if !ok {
        log::warn!("status page: a wrong administrator password");
        return Err(challenge());
    }
    if head.method == "POST" {
        if let (Some(origin), Some(host)) = (&head.origin, &head.host) {
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
            if !origin_host.eq_ignore_ascii_case(host) {
                return Err(refuse(
                    403,
                    "Forbidden",
                    "the upload comes from a page of another origin\n",
                ));
            }
        }
    }
    Ok(())
}

/// The form page, with the update state and the last upload's outcome.
pub fn form_page(config: &Config, notice: Option<&str>) -> Reply {
    let ota = super::collect(config).ota;
    let dir = &config.status.update_spool;
    (
        (
            200,
            "OK",
            "text/html; charset=utf-8",
            page::render_update(&ota, spool::pending(dir), notice).into_bytes(),
        ),
        String::new(),
    )
}

/// Free space the upload must leave: the archive's disk never goes past its warning level.
fn room_for(config: &Config, len: u64) -> Result<(), Reply> {
    let dir = &config.status.update_spool;
    let Some(d) = super::disk_usage(dir, f64::from(config.status.disk_warn_percent)) else {
        return Err(refuse(
            500,
            "Internal Server Error",
            &format!("the update spool {} cannot be examined\n", dir.display()),
        ));
    };
    let used = d.total_bytes.saturating_sub(d.available_bytes) + len;
    if d.total_bytes == 0
        || d.available_bytes < len
        || used as f64 * 100.0 / d.total_bytes as f64 >= d.warn_percent
    {
        return Err(refuse(
            507,
            "Insufficient Storage",
            &format!(
                "a {len}-byte bundle would take the data disk past its {}% warning level: \
                 free space first\n",
                config.status.disk_warn_percent
            ),
        ));
    }
    Ok(())
}

/// Takes the upload whose head is `head`: `leftover` is what was read past the head, `stream`
/// the rest of the connection.
pub fn upload<S: Read + Write>(
    config: &Config,
    admin: &Admin,
    head: &Head,
    leftover: &[u8],
    stream: &mut S,
    peer: Option<SocketAddr>,
    now_ms: i64,
) -> Reply {
    use std::sync::atomic::Ordering;
    let Some(len) = head.content_length.filter(|_| !head.chunked) else {
        return refuse(
            411,
            "Length Required",
            "send the bundle with a Content-Length (no chunked encoding)\n",
        );
    };
    if len > MAX_BUNDLE_BYTES {
        return refuse(
            413,
            "Content Too Large",
            &format!("{len} bytes: a bundle is at most {MAX_BUNDLE_BYTES}\n"),
        );
    }
    let ctype = head.content_type.as_deref().unwrap_or("");
    let boundary = form::boundary(ctype);
    let bare = ctype
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/octet-stream"));
    if boundary.is_none() && !bare {
        return refuse(
            415,
            "Unsupported Media Type",
            "send the form (multipart/form-data) or the bundle (application/octet-stream)\n",
        );
    }
    // On the box tmpfiles.d made it (root:drimbox-status 2770); elsewhere, the first upload does.
    if let Err(e) = std::fs::create_dir_all(&config.status.update_spool) {
        return refuse(
            500,
            "Internal Server Error",
            &format!(
                "the update spool {}: {e}\n",
                config.status.update_spool.display()
            ),
        );
    }
    if let Err(r) = room_for(config, len) {
        return r;
    }
    if admin.uploading.swap(true, Ordering::SeqCst) {
        return refuse(409, "Conflict", "another upload is in progress\n");
    }
    let reply = take_upload(
        config,
        head,
        boundary.as_deref(),
        leftover,
        stream,
        len,
        peer,
        now_ms,
    );
    admin.uploading.store(false, Ordering::SeqCst);
    reply
}

#[allow(clippy::too_many_arguments)]
fn take_upload<S: Read + Write>(
    config: &Config,
    head: &Head,
    boundary: Option<&str>,
    leftover: &[u8],
    stream: &mut S,
    len: u64,
    peer: Option<SocketAddr>,
    now_ms: i64,
) -> Reply {
    let dir: &Path = &config.status.update_spool;
    let mut incoming = match spool::Incoming::begin(dir) {
        Ok(i) => i,
        Err(spool::SpoolError::Busy) => {
            return refuse(
                409,
                "Conflict",
                "an update is already waiting to be installed: see the status page\n",
            )
        }
        Err(e) => {
            log::error!("update spool: {e}");
            return refuse(
                500,
                "Internal Server Error",
                &format!("the update spool: {e}\n"),
            );
        }
    };
    if head.expect_continue
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| stream.flush())
            .is_err()
    {
        return refuse(400, "Bad Request", "the connection closed\n");
    }
    let mut body = io::Cursor::new(leftover).chain(&mut *stream).take(len);
    let disk_full = |e: &io::Error| e.raw_os_error() == Some(libc::ENOSPC);
    let (reboot, received) = match boundary {
        Some(b) => match form::read(&mut body, b, "bundle", &mut incoming) {
            Ok(f) if f.file_bytes.unwrap_or(0) == 0 => {
                return refuse(
                    400,
                    "Bad Request",
                    "the form carries no bundle (field `bundle`)\n",
                )
            }
            Ok(f) => (f.field("reboot").is_some(), f.file_bytes.unwrap_or(0)),
            Err(form::FormError::Sink(e)) if disk_full(&e) => {
                return refuse(507, "Insufficient Storage", "the data disk is full\n")
            }
            Err(form::FormError::Sink(e)) => {
                log::error!("update spool: {e}");
                return refuse(
                    500,
                    "Internal Server Error",
                    &format!("the update spool: {e}\n"),
                );
            }
            Err(e) => return refuse(400, "Bad Request", &format!("{e}\n")),
        },
        None => match io::copy(&mut body, &mut incoming) {
            Ok(n) if n < len => {
                return refuse(
                    400,
                    "Bad Request",
                    &format!("the upload stopped after {n} of {len} bytes\n"),
                )
            }
            Ok(0) => return refuse(400, "Bad Request", "an empty upload\n"),
            Ok(n) => (head.query_flag("reboot"), n),
            Err(e) if disk_full(&e) => {
                return refuse(507, "Insufficient Storage", "the data disk is full\n")
            }
            Err(e)
                if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
            {
                return refuse(408, "Request Timeout", "the upload went silent\n")
            }
            Err(e) => return refuse(400, "Bad Request", &format!("reading the upload: {e}\n")),
        },
    };
    debug_assert_eq!(received, incoming.size());
    let from = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    match incoming.commit(reboot, from, now_ms) {
        Ok(r) => {
            log::info!(
                "status page: a {}-byte update bundle spooled for the installer (sha256 {})",
                r.size,
                r.sha256
            );
            let notice = format!(
                "Received {} ({} bytes, sha256 {}). The box checks its signature before writing \
                 a byte; {}",
                page::human_bytes(r.size),
                r.size,
                r.sha256,
                if r.reboot {
                    "it reboots into it once installed."
                } else {
                    "it boots it at the next reboot once installed."
                }
            );
            if boundary.is_some() {
                let ((_, _, ctype, body), _) = form_page(config, Some(&notice));
                ((202, "Accepted", ctype, body), String::new())
            } else {
                refuse(202, "Accepted", &format!("{notice}\n"))
            }
        }
        Err(e) => {
            log::error!("update spool: {e}");
            refuse(
                500,
                "Internal Server Error",
                &format!("the update spool: {e}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, credential: &Path) -> Config {
        Config::parse(&format!(
            "[storage]\ndata_dir = \"/d\"\n[status]\nlisten = \"{listen}\"\n\
             admin_credential = {:?}\n",
            credential.display().to_string()
        ))
        .unwrap()
    }

    fn get(auth: Option<&str>) -> Head {
        let mut h = Head::parse("GET /update HTTP/1.1\r\n\r\n");
        h.authorization = auth.map(|a| format!("Basic {}", crate::base64::encode(a.as_bytes())));
        h
    }

    #[test]
    fn the_gate_wants_https_or_loopback_a_credential_and_the_password() {
        let d = tempfile::tempdir().unwrap();
        let cred = d.path().join("admin.credential");
        let admin = Admin::default();
        let code = |r: Result<(), Reply>| r.err().map(|((c, ..), _)| c);
        // Plain HTTP on the LAN: closed, whatever the credential.
        assert_eq!(
            code(gate(
                &config("0.0.0.0", &cred),
                &admin,
                &get(Some("admin:x")),
                0
            )),
            Some(403)
        );
        let local = config("127.0.0.1", &cred);
        assert_eq!(
            code(gate(&local, &admin, &get(None), 0)),
            Some(403),
            "no credential set"
        );
        std::fs::write(&cred, "garbage\n").unwrap();
        assert_eq!(
            code(gate(&local, &admin, &get(None), 0)),
            Some(503),
            "unusable credential"
        );
        let pw = "twelve chars or more";
        std::fs::write(
            &cred,
            Credential::new(pw, admin::MIN_ITERATIONS).unwrap().line(),
        )
        .unwrap();
        assert_eq!(code(gate(&local, &admin, &get(None), 0)), Some(401));
        assert_eq!(
            code(gate(&local, &admin, &get(Some("admin:nope")), 0)),
            Some(401)
        );
        assert_eq!(
            code(gate(&local, &admin, &get(Some(&format!("admin:{pw}"))), 0)),
            None
        );
        // HTTPS on the LAN: open.
        let mut lan = config("0.0.0.0", &cred);
        lan.status.tls = Some(crate::config::StatusTls {
            certificate: "/c".into(),
            private_key: "/k".into(),
        });
        assert_eq!(
            code(gate(&lan, &admin, &get(Some(&format!("admin:{pw}"))), 0)),
            None
        );
        // A POST from another origin, even with the password.
        let mut post = get(Some(&format!("admin:{pw}")));
        post.method = "POST".into();
        post.host = Some("box:8443".into());
        post.origin = Some("https://box:8443".into());
        assert_eq!(code(gate(&lan, &admin, &post, 0)), None);
        post.origin = Some("https://elsewhere.example".into());
        assert_eq!(code(gate(&lan, &admin, &post, 0)), Some(403));
    }

    #[test]
    fn heads_are_read_for_what_the_page_needs() {
        let h = Head::parse(
            "POST /update?reboot=1 HTTP/1.1\r\nHost: box:8443\r\nContent-Length: 12\r\n\
             content-type: application/octet-stream\r\nExpect: 100-continue\r\n\
             Origin: https://box:8443\r\nAuthorization: Basic YWRtaW46eA==\r\n\r\n",
        );
        assert_eq!((h.method.as_str(), h.path()), ("POST", "/update"));
        assert_eq!(h.content_length, Some(12));
        assert!(h.expect_continue && !h.chunked && h.query_flag("reboot"));
        assert!(!h.query_flag("rebo"));
        assert_eq!(h.host.as_deref(), Some("box:8443"));
        assert_eq!(h.authorization.as_deref(), Some("Basic YWRtaW46eA=="));
        let h = Head::parse(
            "POST /update HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(h.content_length, None);
        assert!(h.chunked);
    }
}
