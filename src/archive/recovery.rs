//! Start-up reconciliation of the index and the file store, after a crash or a power loss.
//!
//! Why each case can happen, given the write order (staging write + fsync → rename → directory
//! fsync → commit → acknowledge):
//! - a file in `staging/`: a receive or a registration was cut short; it was never acknowledged,
//!   so it is deleted (the sender retries).
//! - a store file with no index row: the crash fell between the rename and the commit. The file
//!   is complete (it was fsync'd before the rename), but was never acknowledged. It is *adopted*
//!   (indexed from its own content), since its bytes are as good as any resend's.
//! - a store file whose SOP Instance UID is indexed under another file: an older version whose
//!   removal after a replacement did not happen; deleted.
//! - a store file that cannot be parsed: something we did not write; moved to `quarantine/`.
//! - an index row whose file is gone: only possible if someone removed files. The row is kept and
//!   flagged `missing`, so the loss is visible on the status page instead of silently forgotten.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::db::{self, Db};
use super::store::{fsync_dir, is_safe_uid, Layout};
use super::{now_ms, ArchiveError};
use crate::dicom::inspect::inspect_file;
use crate::ipc::NewInstance;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub staging_removed: u64,
    pub adopted: u64,
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
                "recovery: {} staging file(s) removed, {} unindexed file(s) adopted, {} stale \
                 version(s) removed, {} unreadable file(s) quarantined, {} indexed instance(s) \
                 missing their file",
                self.staging_removed,
                self.adopted,
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

    let staging = layout.staging();
    for entry in fs::read_dir(&staging).map_err(io_err("reading", &staging))? {
        let entry = entry.map_err(io_err("reading", &staging))?;
        fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
        report.staging_removed += 1;
    }
    if report.staging_removed > 0 {
        fsync_dir(&staging).map_err(io_err("fsync", &staging))?;
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
            adopt_or_discard(layout, db, &file.path(), &mut report)?;
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
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let dest = layout.quarantine().join(format!("{}-{name}", now_ms()));
    fs::rename(path, &dest).map_err(io_err("quarantining", path))?;
    report.quarantined += 1;
    Ok(())
}

/// An unindexed store file: index it from its own content, or drop a stale version.
fn adopt_or_discard(
    layout: &Layout,
    db: &Db,
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<(), ArchiveError> {
    let inspected = match inspect_file(path) {
        Ok(i) => i,
        Err(_) => return quarantine(layout, path, report),
    };
    let (Some(sop), Some(class), Some(study), Some(series)) = (
        inspected.sop_instance_uid.clone(),
        inspected.sop_class_uid.clone(),
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
    let bytes = fs::read(path).map_err(io_err("reading", path))?;
    let (offset, ts) = match meta_end_and_ts(&bytes) {
        Some(v) => v,
        None => return quarantine(layout, path, report),
    };
    let rel = path
        .strip_prefix(&layout.data_dir)
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_default();
    let version = version_of(&rel);
    let new = NewInstance {
        staging_name: String::new(),
        sop_class_uid: class,
        sop_instance_uid: sop,
        study_uid: study,
        series_uid: series,
        transfer_syntax: ts,
        modality: inspected.modality,
        patient_id: inspected.patient_id,
        patient_name: inspected.patient_name,
        accession_number: inspected.accession_number,
        file_size: bytes.len() as u64,
        dataset_offset: offset as u64,
        dataset_sha256: hex(&Sha256::digest(&bytes[offset..])),
        calling_ae: String::new(),
        rejection: inspected.rejection,
    };
    let txn = db.begin_write()?;
    db::record_instance(&txn, &new, rel, version, None, now_ms())?;
    txn.commit().map_err(|e| ArchiveError::Db(e.into()))?;
    report.adopted += 1;
    Ok(())
}

/// `…/<sop>.v3.dcm` → 3; `…/<sop>.dcm` → 1.
fn version_of(rel: &str) -> u32 {
    rel.strip_suffix(".dcm")
        .and_then(|s| s.rsplit_once(".v"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
}

/// End of the file meta group and its transfer syntax, from a Part 10 file's bytes.
fn meta_end_and_ts(bytes: &[u8]) -> Option<(usize, String)> {
    if bytes.get(128..132)? != b"DICM" {
        return None;
    }
    let group_len = u32::from_le_bytes(bytes.get(140..144)?.try_into().ok()?) as usize;
    let end = 144usize.checked_add(group_len)?;
    let mut at = 132;
    let mut ts = None;
    while at + 8 <= end {
        let elem = u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]);
        let vr = &bytes[at + 4..at + 6];
        let (len, head) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"UC" | b"UR") {
            (
                u32::from_le_bytes(bytes.get(at + 8..at + 12)?.try_into().ok()?) as usize,
                12,
            )
        } else {
            (
                u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]) as usize,
                8,
            )
        };
        let value = bytes.get(at + head..at + head + len)?;
        if elem == 0x0010 {
            ts = Some(
                String::from_utf8_lossy(value)
                    .trim_end_matches(['\0', ' '])
                    .to_string(),
            );
        }
        at += head + len;
    }
    Some((end, ts?))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::part10::file_meta;

    #[test]
    fn meta_parsing_finds_our_own_header() {
        let mut f = file_meta("1.2.3", "4.5.6", "1.2.840.10008.1.2.1", "AE");
        let end = f.len();
        f.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            meta_end_and_ts(&f),
            Some((end, "1.2.840.10008.1.2.1".to_string()))
        );
        assert_eq!(meta_end_and_ts(&f[..100]), None);
    }

    #[test]
    fn versions_from_names() {
        assert_eq!(version_of("studies/1/2.dcm"), 1);
        assert_eq!(version_of("studies/1/2.v4.dcm"), 4);
    }
}
