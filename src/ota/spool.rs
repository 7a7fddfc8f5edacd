//! The hand-off of an update uploaded on the status page to the root installer.
//!
//! The status service runs unprivileged and cannot write a slot or the ESP; it only puts the
//! uploaded bundle in the spool directory (root:drimbox-status 0770, tmpfiles.d) and, once
//! that is durable, a request beside it. `drimbox-ota-spool.path` sees the request and starts
//! `drimbox ota install-spooled` as root, which verifies and installs exactly as `drimbox ota
//! install` does (nothing is trusted for having come through the page), records the outcome
//! for the page and empties the spool.
//!
//! Files, in order of writing: `bundle` (temporary name, fsync, rename), `request.json` (the
//! same; its presence is the request), then the installer's `last.json` and the removal of the
//! other two. A power cut leaves either no request (the upload is answered with an error or
//! never answered; a leftover temporary file is removed by the next upload) or a complete one.
//! While it works the installer keeps `progress` up to date for the page ("writing 37%").

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::install::{Percent, Phase, Watch};

pub const BUNDLE: &str = "bundle";
pub const REQUEST: &str = "request.json";
pub const LAST: &str = "last.json";
pub const PROGRESS: &str = "progress";
const INCOMING: &str = ".incoming.tmp";
const PROGRESS_TMP: &str = ".progress.tmp";

/// What the status service hands over with a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub received_at_ms: i64,
    pub size: u64,
    /// Of the spooled file, so the installer knows it reads what was received.
    pub sha256: String,
    /// Reboot into the new slot once installed (the form's checkbox).
    pub reboot: bool,
    /// The uploader's address, for the record.
    pub from: String,
}

/// What came of a request: written by the installer, shown on the status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub request: Request,
    pub finished_at_ms: i64,
    pub installed: bool,
    /// `installed 1.2 (epoch 3) into slot b: ...` or why it was refused.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("an update is already waiting to be installed")]
    Busy,
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |e| SpoolError::Io(path.to_owned(), e)
}

/// The request waiting for the installer, if any (unreadable counts as waiting: the
/// installer will say what is wrong with it).
pub fn pending(dir: &Path) -> bool {
    dir.join(REQUEST).exists()
}

/// Tells the page how far the installer is with the pending request. Advisory, so written and
/// renamed but not flushed: a power cut may leave an older line, which the next installer
/// replaces as it starts. The spool's setgid group makes it the status service's to read.
pub fn set_progress(dir: &Path, line: &str) -> Result<(), SpoolError> {
    let tmp = dir.join(PROGRESS_TMP);
    fs::write(&tmp, format!("{line}\n")).map_err(io_at(&tmp))?;
    let path = dir.join(PROGRESS);
    fs::rename(&tmp, &path).map_err(io_at(&path))
}

/// The installer's last progress line while a request is pending (none otherwise, nor when
/// unreadable or not one short line of text).
pub fn progress(dir: &Path) -> Option<String> {
    if !pending(dir) {
        return None;
    }
    let text = fs::read_to_string(dir.join(PROGRESS)).ok()?;
    let line = text.strip_suffix('\n')?;
    (line.len() <= 80 && !line.contains('\n') && line.chars().all(|c| !c.is_control()))
        .then(|| line.to_string())
}

/// An upload being written to the spool: a temporary file and its running hash. Dropped
/// without [`Incoming::commit`], it is removed.
pub struct Incoming {
    dir: PathBuf,
    file: Option<fs::File>,
    hasher: Sha256,
    size: u64,
}

impl Incoming {
    /// Starts an upload; refused while a request waits.
    pub fn begin(dir: &Path) -> Result<Incoming, SpoolError> {
        if pending(dir) {
            return Err(SpoolError::Busy);
        }
        let tmp = dir.join(INCOMING);
        let file = fs::File::create(&tmp).map_err(io_at(&tmp))?;
        file.set_permissions(fs::Permissions::from_mode(0o640))
            .map_err(io_at(&tmp))?;
        Ok(Incoming {
            dir: dir.to_owned(),
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the bundle durable, then the request: from here the installer takes it.
    pub fn commit(
        mut self,
        reboot: bool,
        from: String,
        now_ms: i64,
    ) -> Result<Request, SpoolError> {
        let tmp = self.dir.join(INCOMING);
        let file = self.file.take().expect("open until commit");
        file.sync_all().map_err(io_at(&tmp))?;
        drop(file);
        let bundle = self.dir.join(BUNDLE);
        fs::rename(&tmp, &bundle).map_err(io_at(&bundle))?;
        let request = Request {
            received_at_ms: now_ms,
            size: self.size,
            sha256: hex(&self.hasher.clone().finalize()),
            reboot,
            from,
        };
        write_json(&self.dir, REQUEST, &request, None)?;
        Ok(request)
    }
}

impl Write for Incoming {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.as_mut().expect("open until commit").write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(self.dir.join(INCOMING));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaced atomically (the store's `write_atomically_as`), mode 0640, in `group` when given:
/// the installer's files must be the status service's group to be read by it.
fn write_json<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
    group: Option<u32>,
) -> Result<(), SpoolError> {
    let path = dir.join(name);
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io_at(&path)(io::Error::other(e)))?;
    crate::archive::store::write_atomically_as(&path, &bytes, Some(0o640), group)
        .map_err(io_at(&path))
}

/// A request the installer cannot act on: its record (when readable) and why.
#[derive(Debug, PartialEq)]
pub struct Unusable {
    pub request: Option<Request>,
    pub why: String,
}

/// A request and the path of its bundle.
pub type Taken = (Request, PathBuf);

/// The installer's side: the request and the path of its bundle, checked against the hash
/// the status service recorded (`watch` told how far, [`Phase::Hashing`]). Err: a request that
/// cannot be read, or a bundle that is not what was received (both end the request with that
/// message).
pub fn take(dir: &Path, mut watch: Watch) -> Result<Option<Taken>, Unusable> {
    let req_path = dir.join(REQUEST);
    let bytes = match fs::read(&req_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Unusable {
                request: None,
                why: format!("{}: {e}", req_path.display()),
            })
        }
    };
    let request: Request = serde_json::from_slice(&bytes).map_err(|e| Unusable {
        request: None,
        why: format!("{}: {e}", req_path.display()),
    })?;
    let bundle = dir.join(BUNDLE);
    let digest = (|| -> io::Result<(String, u64)> {
        let mut f = fs::File::open(&bundle)?;
        let mut h = Sha256::new();
        let mut hashing = Percent::new(&mut watch, Phase::Hashing, request.size);
        let mut buf = vec![0; 1 << 20];
        let mut n = 0u64;
        loop {
            let got = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..got]);
            n += got as u64;
            hashing.done(n.min(request.size));
        }
        Ok((hex(&h.finalize()), n))
    })();
    match digest {
        Ok((sha, n)) if sha == request.sha256 && n == request.size => Ok(Some((request, bundle))),
        Ok(_) => Err(Unusable {
            request: Some(request),
            why: "the spooled bundle is not the one received (hash or size differs)".into(),
        }),
        Err(e) => Err(Unusable {
            request: Some(request),
            why: format!("{}: {e}", bundle.display()),
        }),
    }
}

/// Records the outcome for the page, then ends the request (bundle, request and any
/// temporary file removed), so the path unit does not start the installer again.
pub fn finish(dir: &Path, outcome: &Outcome, group: Option<u32>) -> Result<(), SpoolError> {
    write_json(dir, LAST, outcome, group)?;
    for name in [BUNDLE, REQUEST, PROGRESS] {
        let p = dir.join(name);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(SpoolError::Io(p, e)),
            _ => {}
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// The last outcome, if any and readable.
pub fn last(dir: &Path) -> Result<Option<Outcome>, String> {
    let p = dir.join(LAST);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_becomes_a_request_only_when_committed() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut i = Incoming::begin(d.path()).unwrap();
            i.write_all(b"half a bundle").unwrap();
        }
        assert!(!pending(d.path()));
        assert!(
            fs::read_dir(d.path()).unwrap().next().is_none(),
            "nothing left"
        );

        let mut i = Incoming::begin(d.path()).unwrap();
        i.write_all(b"a whole ").unwrap();
        i.write_all(b"bundle").unwrap();
        let r = i.commit(true, "192.0.2.7".into(), 1000).unwrap();
        assert_eq!(r.size, 14);
        assert_eq!(
            r.sha256,
            hex(&Sha256::digest(b"a whole bundle")),
            "the hash of what was written"
        );
        assert!(pending(d.path()));
        assert!(matches!(Incoming::begin(d.path()), Err(SpoolError::Busy)));

        let mut told = Vec::new();
        let (req, bundle) = take(d.path(), &mut |p, pct| told.push((p, pct)))
            .unwrap()
            .unwrap();
        assert_eq!(told.first(), Some(&(Phase::Hashing, 0)));
        assert_eq!(told.last(), Some(&(Phase::Hashing, 100)));
        assert_eq!(req, r);
        assert_eq!(fs::read(&bundle).unwrap(), b"a whole bundle");
        assert_eq!(progress(d.path()), None);
        set_progress(d.path(), "writing 37%").unwrap();
        assert_eq!(progress(d.path()).as_deref(), Some("writing 37%"));
        fs::write(d.path().join(PROGRESS), "two\nlines\n").unwrap();
        assert_eq!(progress(d.path()), None, "not one line: not shown");
        set_progress(d.path(), "reading-back 2%").unwrap();
        let outcome = Outcome {
            request: req,
            finished_at_ms: 2000,
            installed: false,
            message: "refused".into(),
        };
        finish(d.path(), &outcome, None).unwrap();
        assert!(!pending(d.path()));
        assert!(!bundle.exists());
        assert!(
            !d.path().join(PROGRESS).exists(),
            "the progress ends with the request"
        );
        assert_eq!(progress(d.path()), None);
        assert_eq!(last(d.path()).unwrap(), Some(outcome));
        assert_eq!(take(d.path(), &mut |_, _| {}).unwrap(), None);
    }

    #[test]
    fn a_bundle_changed_in_the_spool_is_not_taken() {
        let d = tempfile::tempdir().unwrap();
        let mut i = Incoming::begin(d.path()).unwrap();
        i.write_all(b"received").unwrap();
        i.commit(false, "x".into(), 1).unwrap();
        fs::write(d.path().join(BUNDLE), b"replaced").unwrap();
        let Unusable { request, why } = take(d.path(), &mut |_, _| {}).unwrap_err();
        assert!(request.is_some());
        assert!(why.contains("not the one received"), "{why}");
    }
}
