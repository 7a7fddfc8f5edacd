//! Start-up reconciliation of the index and the file store, after a crash or a power loss.
//!
//! Why each case can happen, given the write order (staging write + fsync → rename → directory
//! fsync → commit → acknowledge):
//! - a file in `staging/`: a receive or a registration was cut short; it was never acknowledged,
//!   so it is deleted (the sender retries).
//! - a row marked *in doubt*: a first version whose file, directory and index were flushed in one
//!   round, cut short. Never acknowledged. If the file is there and its data set has the recorded
//!   SHA-256, the bytes made it: the row is kept (and flushed). Otherwise the file is set aside in
//!   `quarantine/` and the row flagged `missing`; the sender's retry stores it again.
//! - a store file with no index row: the crash fell between a rename and the commit, so it was
//!   never acknowledged, and nothing vouches for its bytes (a first version is not fsync'd before
//!   its rename). It is set aside in `quarantine/`, never adopted.
//! - a report message in `reports/` without its row: renamed, not committed, never acknowledged;
//!   set aside (the RIS sends it again).
//! - a store file whose SOP Instance UID is indexed under another file: an older version whose
//!   removal after a replacement did not happen; deleted.
//! - a store file that cannot be parsed: something we did not write; moved to `quarantine/`.
//! - an index row whose file is gone: only possible if someone removed files. The row is kept and
//!   flagged `missing`, so the loss is visible on the status page instead of silently forgotten.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::db::Db;
use super::store::{fsync_dir, is_safe_uid, Layout};
use super::{now_ms, ArchiveError};
use crate::dicom::inspect::inspect_file;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub staging_removed: u64,
    pub in_doubt_kept: u64,
    pub in_doubt_discarded: u64,
    pub unindexed: u64,
    pub stale_removed: u64,
    pub quarantined: u64,
    pub missing: u64,
}

impl RecoveryReport {
    pub fn log(&self) {
        if *self == RecoveryReport::default() {
            log::info!("recovery: index and store agree");
        } else {
            log::warn!(
                "recovery: {} staging file(s) removed, {} in-doubt instance(s) kept, {} in-doubt \
                 instance(s) discarded, {} unindexed file(s) set aside, {} stale version(s) \
                 removed, {} unreadable file(s) quarantined, {} indexed instance(s) missing \
                 their file",
                self.staging_removed,
                self.in_doubt_kept,
                self.in_doubt_discarded,
                self.unindexed,
                self.stale_removed,
                self.quarantined,
                self.missing
            );
        }
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

pub fn recover(layout: &Layout, db: &Db) -> Result<RecoveryReport, ArchiveError> {
    let mut report = RecoveryReport::default();
    resolve_in_doubt(layout, db, &mut report)?;

    // Both staging directories: what is there was never acknowledged (instances, reports).
    for staging in [layout.staging(), layout.hl7_staging()] {
        let before = report.staging_removed;
        for entry in fs::read_dir(&staging).map_err(io_err("reading", &staging))? {
            let entry = entry.map_err(io_err("reading", &staging))?;
            fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
            report.staging_removed += 1;
        }
        if report.staging_removed > before {
            fsync_dir(&staging).map_err(io_err("fsync", &staging))?;
        }
    }

    // A report file without its row: the crash fell between the rename and the commit; never
    // acknowledged (the RIS sends it again), so it is set aside like an unindexed instance.
    let recorded = db.report_files()?;
    let reports = layout.reports();
    for entry in fs::read_dir(&reports).map_err(io_err("reading", &reports))? {
        let entry = entry.map_err(io_err("reading", &reports))?;
        let rel = format!("reports/{}", entry.file_name().to_string_lossy());
        if !recorded.contains(&rel) {
            set_aside(layout, &entry.path())?;
            report.unindexed += 1;
        }
    }

    let indexed: HashMap<String, String> = db.instance_files()?;
    let mut seen: HashSet<String> = HashSet::new();
    let studies = layout.studies();
    for study in fs::read_dir(&studies).map_err(io_err("reading", &studies))? {
        let study = study.map_err(io_err("reading", &studies))?;
        let study_name = study.file_name().to_string_lossy().to_string();
        if !study.path().is_dir() {
            quarantine(layout, &study.path(), &mut report)?;
            continue;
        }
        for file in fs::read_dir(study.path()).map_err(io_err("reading", &study.path()))? {
            let file = file.map_err(io_err("reading", &study.path()))?;
            let rel = format!(
                "studies/{study_name}/{}",
                file.file_name().to_string_lossy()
            );
            if indexed.contains_key(&rel) {
                seen.insert(rel);
                continue;
            }
            stale_or_unindexed(layout, db, &file.path(), &mut report)?;
        }
    }

    let missing: HashSet<String> = indexed
        .iter()
        .filter(|(file, _)| !seen.contains(*file))
        .map(|(_, sop)| sop.clone())
        .collect();
    report.missing = missing.len() as u64;
    db.mark_missing(&missing)?;
    Ok(report)
}

fn quarantine(
    layout: &Layout,
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<(), ArchiveError> {
    set_aside(layout, path)?;
    report.quarantined += 1;
    Ok(())
}

/// An unindexed store file: an older version left by a replacement (removed), a file nobody
/// vouches for (set aside), or something we did not write (quarantined).
fn stale_or_unindexed(
    layout: &Layout,
    db: &Db,
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<(), ArchiveError> {
    let inspected = match inspect_file(path) {
        Ok(i) => i,
        Err(_) => return quarantine(layout, path, report),
    };
    let (Some(sop), Some(study), Some(series)) = (
        inspected.sop_instance_uid.clone(),
        inspected.study_uid.clone(),
        inspected.series_uid.clone(),
    ) else {
        return quarantine(layout, path, report);
    };
    if ![&sop, &study, &series].iter().all(|u| is_safe_uid(u)) {
        return quarantine(layout, path, report);
    }
    if db.instance(&sop)?.is_some() {
        fs::remove_file(path).map_err(io_err("removing", path))?;
        report.stale_removed += 1;
        return Ok(());
    }
    set_aside(layout, path)?;
    report.unindexed += 1;
    Ok(())
}

/// Checks every row marked in doubt against its file (see the module comment), then clears the
/// marks. Used at start and by the writer when a flush round fails after its commit.
pub fn resolve_in_doubt(
    layout: &Layout,
    db: &Db,
    report: &mut RecoveryReport,
) -> Result<(), ArchiveError> {
    let sops = db.in_doubt()?;
    let mut lost = HashSet::new();
    for sop in &sops {
        let Some(row) = db.instance(sop)? else {
            continue;
        };
        let path = layout.abs(&row.file);
        match data_set_digest(&path, row.dataset_offset, row.file_size) {
            Some(d) if d == row.dataset_sha256 => {
                fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err("fsync", &path))?;
                report.in_doubt_kept += 1;
            }
            _ => {
                if path.exists() {
                    set_aside(layout, &path)?;
                }
                lost.insert(sop.clone());
                report.in_doubt_discarded += 1;
            }
        }
    }
    db.mark_missing(&lost)?;
    db.clear_in_doubt(&sops)?;
    Ok(())
}

/// SHA-256 (hex) of a stored file's data set, if the file has the expected size.
fn data_set_digest(path: &Path, offset: u64, size: u64) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() as u64 != size || offset > size {
        return None;
    }
    Some(hex(&Sha256::digest(&bytes[offset as usize..])))
}

/// Moves a file we cannot vouch for to `quarantine/` (kept for inspection, never deleted).
fn set_aside(layout: &Layout, path: &Path) -> Result<(), ArchiveError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let dest = layout.quarantine().join(format!("{}-{name}", now_ms()));
    fs::rename(path, &dest).map_err(io_err("setting aside", path))?;
    let q = layout.quarantine();
    fsync_dir(&q).map_err(io_err("fsync", &q))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::db;
    use crate::ipc::NewInstance;

    /// An archive with two first versions committed in one round that a crash cut short: the
    /// bytes of one made it, those of the other did not.
    #[test]
    fn in_doubt_rows_are_kept_only_when_their_bytes_match() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        let db = Db::open(&layout.db()).unwrap();
        let txn = db.begin_write().unwrap();
        let mut sops = Vec::new();
        for (i, body) in [b"complete data set".as_slice(), b"torn data set".as_slice()]
            .iter()
            .enumerate()
        {
            let sop = format!("1.2.3.{i}");
            let rel = Layout::instance_rel("1.2", &sop, 1);
            fs::create_dir_all(layout.abs(&rel).parent().unwrap()).unwrap();
            let mut bytes = b"META".to_vec();
            bytes.extend_from_slice(body);
            // The second file lost its tail in the crash.
            let on_disk = if i == 0 {
                &bytes[..]
            } else {
                &bytes[..bytes.len() - 3]
            };
            fs::write(layout.abs(&rel), on_disk).unwrap();
            let new = NewInstance {
                staging_name: String::new(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: sop.clone(),
                study_uid: "1.2".into(),
                series_uid: "1.2.1".into(),
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                modality: Some("CT".into()),
                patient_id: None,
                patient_name: None,
                accession_number: None,
                file_size: bytes.len() as u64,
                dataset_offset: 4,
                dataset_sha256: hex(&Sha256::digest(body)),
                calling_ae: "T".into(),
                rejection: None,
            };
            db::record_instance(&txn, &new, rel, 1, None, 0).unwrap();
            sops.push(sop);
        }
        db::set_in_doubt(&txn, &sops, &[]).unwrap();
        txn.commit().unwrap();

        let report = recover(&layout, &db).unwrap();
        assert_eq!(report.in_doubt_kept, 1);
        assert_eq!(report.in_doubt_discarded, 1);
        assert!(db.in_doubt().unwrap().is_empty());
        assert!(!db.instance(&sops[0]).unwrap().unwrap().missing);
        assert!(db.instance(&sops[1]).unwrap().unwrap().missing);
        // The torn file is set aside, not deleted; the good one stays in place.
        assert!(layout
            .abs(&Layout::instance_rel("1.2", &sops[0], 1))
            .exists());
        assert_eq!(fs::read_dir(layout.quarantine()).unwrap().count(), 1);
        // A second recovery finds nothing left in doubt.
        let again = recover(&layout, &db).unwrap();
        assert_eq!((again.in_doubt_kept, again.in_doubt_discarded), (0, 0));
    }
}
