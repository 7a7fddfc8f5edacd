//! The data and runtime directories with the owners and modes that make the privilege
//! separation real (the same table as overlay/usr/lib/tmpfiles.d/drimbox.conf), and the Unix
//! sockets the supervisor opens for the archive.
//!
//! On the box, systemd-tmpfiles made them at boot and the supervisor only checks them (its unit
//! grants no CAP_CHOWN). Where they are missing or owned wrongly (a first start, a test as full
//! root), the supervisor creates them in the right group and chowns them; where it may not, the
//! error names the entry and the tmpfiles file. Modes are set as the entry's owner (through
//! `setfsuid`, allowed by CAP_SETUID), so no CAP_FOWNER is needed either.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::{Identities, SupervisorError};
use crate::config::Config;

/// Switches the calling thread's file-system identity until dropped.
struct AsOwner {
    uid: u32,
    gid: u32,
}

impl AsOwner {
    fn new(uid: u32, gid: u32) -> AsOwner {
        // SAFETY: setfsgid/setfsuid change only this thread's file-system credentials; each
        // returns the previous value, restored on drop.
        unsafe {
            let gid_before = libc::setfsgid(gid) as u32;
            let uid_before = libc::setfsuid(uid) as u32;
            AsOwner {
                uid: uid_before,
                gid: gid_before,
            }
        }
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        // SAFETY: as above, restoring what `new` found.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Dir,
    File,
}

/// (path, owner uid, owner gid, mode, kind), parents first.
fn entries(config: &Config, ids: &Identities) -> Vec<(PathBuf, u32, u32, u32, Kind)> {
    let d = &config.storage.data_dir;
    let archive = ids.of("archive");
    let receiver = ids.of("receiver");
    let hl7 = ids.of("hl7");
    let publisher = ids.of("publisher");
    let whitelist = ids.of("whitelist");
    vec![
        // Sockets and health.json: traversable by every service user (group drimbox).
        (
            config.storage.run_dir.clone(),
            0,
            ids.box_gid,
            0o750,
            Kind::Dir,
        ),
        // The data directory: traversable by the services, writable by root only.
        (d.clone(), 0, ids.box_gid, 0o750, Kind::Dir),
        // The store and the index: the archive's alone.
        (
            d.join("studies"),
            archive.uid,
            archive.gid,
            0o750,
            Kind::Dir,
        ),
        (
            d.join("quarantine"),
            archive.uid,
            archive.gid,
            0o750,
            Kind::Dir,
        ),
        (
            d.join("archive.redb"),
            archive.uid,
            archive.gid,
            0o600,
            Kind::File,
        ),
        // Staging: the receiver writes, the archive (group, setgid so every file is its group's)
        // reads and renames out.
        (
            d.join("staging"),
            receiver.uid,
            archive.gid,
            0o2770,
            Kind::Dir,
        ),
        // The same hand-off for report messages, from the HL7 listener.
        (
            d.join("hl7-staging"),
            hl7.uid,
            archive.gid,
            0o2770,
            Kind::Dir,
        ),
        (
            d.join("reports"),
            archive.uid,
            archive.gid,
            0o750,
            Kind::Dir,
        ),
        // Built lots: the publisher writes and fsyncs, the archive copies them into lots/.
        (
            d.join("lot-staging"),
            publisher.uid,
            archive.gid,
            0o2770,
            Kind::Dir,
        ),
        (d.join("lots"), archive.uid, archive.gid, 0o750, Kind::Dir),
        // The whitelist in service, its proofs and the CRL cache: the updater's; readable by
        // the box group (the WADO-RS server checks clients against the list). Setgid, so
        // every file the updater writes (0640 under UMask=0027) is the box group's.
        (
            d.join("whitelist"),
            whitelist.uid,
            ids.box_gid,
            0o2750,
            Kind::Dir,
        ),
    ]
}

/// Creates or checks every entry (see the module comment).
pub(super) fn ensure(config: &Config, ids: &Identities) -> Result<(), SupervisorError> {
    for (path, uid, gid, mode, kind) in entries(config, ids) {
        let fail = |message: String| SupervisorError::Layout {
            path: path.clone(),
            message,
        };
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let made = {
                    // SAFETY: geteuid has no preconditions.
                    let _as = AsOwner::new(unsafe { libc::geteuid() }, gid);
                    match kind {
                        Kind::Dir => fs::create_dir(&path),
                        Kind::File => fs::File::create_new(&path).map(drop),
                    }
                };
                made.and_then(|()| std::os::unix::fs::chown(&path, Some(uid), Some(gid)))
                    .and_then(|()| set_mode(&path, mode, uid, gid))
                    .map_err(|e| {
                        fail(format!(
                            "cannot create it owned by {uid}:{gid} mode {mode:o} ({e}); \
                             systemd-tmpfiles --create tmpfiles.d/drimbox.conf makes it"
                        ))
                    })?;
                if let Some(parent) = path.parent() {
                    let _ = fs::File::open(parent).and_then(|f| f.sync_all());
                }
            }
            Err(e) => return Err(fail(e.to_string())),
            Ok(m) => {
                if (kind == Kind::Dir) != m.is_dir() {
                    return Err(fail(format!(
                        "is not a {}",
                        if kind == Kind::Dir {
                            "directory"
                        } else {
                            "file"
                        }
                    )));
                }
                if (m.uid(), m.gid()) != (uid, gid) {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
                        fail(format!(
                            "owned by {}:{}, must be {uid}:{gid} (tmpfiles.d/drimbox.conf), and cannot be changed: {e}",
                            m.uid(),
                            m.gid()
                        ))
                    })?;
                }
                if m.mode() & 0o7777 != mode {
                    let _as = AsOwner::new(uid, gid);
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| {
                        fail(format!(
                            "mode {:o}, must be {mode:o}: {e}",
                            m.mode() & 0o7777
                        ))
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// chmod: as root when it may (CAP_FOWNER), else as the entry's owner (the unit grants no
/// CAP_FOWNER, but CAP_SETUID lets it act as the owner; the path must then be reachable by it).
fn set_mode(path: &Path, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let _as = AsOwner::new(uid, gid);
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
        }
        other => other,
    }
}

/// Binds a Unix socket at `path` (replacing a stale one), mode 0660, in `group` when given.
pub(super) fn bind_unix(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    let _ = fs::remove_file(path);
    let listener = match group {
        Some(gid) => {
            // SAFETY: geteuid has no preconditions.
            let _as = AsOwner::new(unsafe { libc::geteuid() }, gid);
            UnixListener::bind(path)?
        }
        None => UnixListener::bind(path)?,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}
