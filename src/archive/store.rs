//! Layout of the data directory and the durable file operations on it.
//!
//! ```text
//! <data_dir>/archive.redb              the index (owned by the archive process)
//! <data_dir>/staging/                  receivers write incoming instances here, fsync, then ask
//! <data_dir>/studies/<study>/<sop>.dcm the store: files are only ever renamed in from staging
//! <data_dir>/quarantine/               files recovery could not account for (kept, never deleted)
//! ```
//! Staging and store share one filesystem, so the rename that publishes a file is atomic.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub data_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            data_dir: data_dir.to_owned(),
        }
    }
    pub fn db(&self) -> PathBuf {
        self.data_dir.join("archive.redb")
    }
    pub fn staging(&self) -> PathBuf {
        self.data_dir.join("staging")
    }
    pub fn studies(&self) -> PathBuf {
        self.data_dir.join("studies")
    }
    pub fn quarantine(&self) -> PathBuf {
        self.data_dir.join("quarantine")
    }
    /// The HL7 listener writes report messages here, fsyncs them, then asks the archive.
    pub fn hl7_staging(&self) -> PathBuf {
        self.data_dir.join("hl7-staging")
    }
    /// Recorded report messages, byte for byte as received.
    pub fn reports(&self) -> PathBuf {
        self.data_dir.join("reports")
    }

    /// Where the publisher leaves a built lot (one subdirectory per lot) for the archive.
    pub fn lot_staging(&self) -> PathBuf {
        self.data_dir.join("lot-staging")
    }

    /// Archived lots: `lots/<study>/SS<seq>/`, each an IHE XDM subset.
    pub fn lots(&self) -> PathBuf {
        self.data_dir.join("lots")
    }
    /// Store-relative path of an instance file.
    pub fn instance_rel(study_uid: &str, sop_uid: &str, version: u32) -> String {
        if version <= 1 {
            format!("studies/{study_uid}/{sop_uid}.dcm")
        } else {
            format!("studies/{study_uid}/{sop_uid}.v{version}.dcm")
        }
    }
    pub fn abs(&self, rel: &str) -> PathBuf {
        self.data_dir.join(rel)
    }

    /// Creates the directories (durably) if they are missing.
    pub fn create(&self) -> io::Result<()> {
        for dir in [
            self.staging(),
            self.studies(),
            self.quarantine(),
            self.hl7_staging(),
            self.reports(),
            self.lot_staging(),
            self.lots(),
        ] {
            if !dir.is_dir() {
                fs::create_dir_all(&dir)?;
                fsync_dir(&self.data_dir)?;
            }
        }
        Ok(())
    }
}

/// fsync a directory, so that renames and creations inside it survive a power loss.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one,
/// whole: a temporary file beside it, fsync, rename over, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_as(path, bytes, None, None)
}

/// [`write_atomically`], the file given `mode` before a byte is written (a secret is never
/// readable by more than it should, even as a temporary file) and handed to `group` when it is
/// not born in it (chown(2) only where needed: the OTA units' seccomp filter forbids it).
pub fn write_atomically_as(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    group: Option<u32>,
) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        if let Some(m) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        if let Some(g) = group {
            if f.metadata()?.gid() != g {
                std::os::unix::fs::fchown(&f, None, Some(g))?;
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A UID usable as a file name: PS3.5 9.1 (digits and dots, at most 64, no empty component).
/// Anything else is refused rather than escaped: the store's paths stay readable and safe.
pub fn is_safe_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && uid.split('.').all(|c| !c.is_empty())
}

/// A staging file name chosen by a receiver: one plain component, no dot-files.
pub fn is_safe_staging_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_rules() {
        assert!(is_safe_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(!is_safe_uid(""));
        assert!(!is_safe_uid("1..2"));
        assert!(!is_safe_uid("1.2."));
        assert!(!is_safe_uid("../etc"));
        assert!(!is_safe_uid("1.2/3"));
        assert!(!is_safe_uid(&"1".repeat(65)));
    }

    #[test]
    fn staging_name_rules() {
        assert!(is_safe_staging_name("123-4-5.part"));
        assert!(!is_safe_staging_name("../x"));
        assert!(!is_safe_staging_name(".hidden"));
        assert!(!is_safe_staging_name("a/b"));
    }

    #[test]
    fn versioned_paths() {
        assert_eq!(Layout::instance_rel("1.2", "3.4", 1), "studies/1.2/3.4.dcm");
        assert_eq!(
            Layout::instance_rel("1.2", "3.4", 3),
            "studies/1.2/3.4.v3.dcm"
        );
    }
}
