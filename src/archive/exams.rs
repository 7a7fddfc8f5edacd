//! The archive's side of publication: handing the publisher the next exam to build a lot for,
//! with everything it needs, and archiving the lot it built.
//!
//! The decision itself is [`crate::exam::assess`]; this module gathers its inputs from the
//! index and the store, and keeps the order that makes a lot durable before it counts: the
//! publisher fsyncs the files, the archive renames the directory into `lots/`, fsyncs, then
//! commits the row.

use std::collections::BTreeMap;
use std::fs;

use super::db::{self, Db, ExamRecord};
use super::model::{ExamWork, LotRow, SeriesMaterial, StudyAttributes};
use super::store::{fsync_dir, is_safe_staging_name, is_safe_uid, Layout};
use super::{db_failure, failure, now_ms};
use crate::exam::{assess, ExamState, LotFacts, LotStatus, NextAction, Policy};
use crate::ipc::{ArchiveFailure, FailureKind, NewLot};

/// The first exam whose next action needs a lot built (publish or replace), or None.
pub fn next_work(
    db: &Db,
    layout: &Layout,
    policy: &Policy,
    skip: &[String],
) -> Result<Option<ExamWork>, ArchiveFailure> {
    for uid in db.exam_uids().map_err(db_failure)? {
        if skip.contains(&uid) {
            continue;
        }
        let Some(rec) = db.exam(&uid).map_err(db_failure)? else {
            continue;
        };
        let ExamState::Ready(action) = assess(&rec.inputs, policy) else {
            continue;
        };
        // Withdrawals need no lot (no document, no signature): the publisher's next issue.
        if matches!(action, NextAction::Unpublish { .. }) {
            continue;
        }
        return material(db, layout, &uid, rec, action).map(Some);
    }
    Ok(None)
}

fn material(
    db: &Db,
    layout: &Layout,
    uid: &str,
    rec: ExamRecord,
    action: NextAction,
) -> Result<ExamWork, ArchiveFailure> {
    let report_key = action.report_key().unwrap_or_default().to_string();
    let report = rec
        .inputs
        .reports
        .iter()
        .zip(&rec.reports)
        .find(|(i, _)| i.key == report_key)
        .map(|(_, r)| r)
        .ok_or_else(|| failure(FailureKind::Invalid, "the report of the action is gone"))?;
    let message = fs::read(layout.abs(&report.file)).map_err(|e| {
        failure(
            FailureKind::Resources,
            format!("reading {}: {e}", report.file),
        )
    })?;

    // Series in UID order, instances in UID order: the same inputs give the same KOS.
    let mut series: BTreeMap<String, SeriesMaterial> = BTreeMap::new();
    let mut study = None;
    for (sop, row) in &rec.images {
        let entry = series.entry(row.series_uid.clone()).or_insert_with(|| {
            let d =
                crate::dicom::inspect::descriptive_file(&layout.abs(&row.file)).unwrap_or_default();
            if study.is_none() {
                study = Some(StudyAttributes {
                    study_date: d.study_date.clone(),
                    study_time: d.study_time.clone(),
                    referring_physician: d.referring_physician.clone(),
                    study_description: d.study_description.clone(),
                    study_id: d.study_id.clone(),
                });
            }
            SeriesMaterial {
                series_uid: row.series_uid.clone(),
                modality: row.modality.clone().unwrap_or_default(),
                description: d.series_description,
                instances: Vec::new(),
            }
        });
        entry
            .instances
            .push((row.sop_class_uid.clone(), sop.clone()));
    }
    let previous = match &action {
        NextAction::Replace { replaces_seq, .. } => rec
            .lots
            .iter()
            .find(|l| l.facts.seq == *replaces_seq)
            .cloned(),
        _ => None,
    };
    let txn = db.begin_write().map_err(db_failure)?;
    let lot_number = db::reserve_lot_number(&txn).map_err(db_failure)?;
    txn.commit().map_err(db_failure)?;
    Ok(ExamWork {
        study_uid: uid.to_string(),
        seq: rec.lots.iter().map(|l| l.facts.seq).max().unwrap_or(0) + 1,
        lot_number,
        report_key,
        report_base64: crate::base64::encode(&message),
        study: study.unwrap_or_default(),
        series: series.into_values().collect(),
        images_digest: rec
            .inputs
            .study
            .as_ref()
            .map(|s| s.images_digest.clone())
            .unwrap_or_default(),
        previous,
        action,
    })
}

/// Archives a lot the publisher built. Refused when the exam changed meanwhile (a new image, a
/// new report): that lot is for inputs that no longer hold, and the next work will say so.
pub fn record_lot(
    db: &Db,
    layout: &Layout,
    policy: &Policy,
    new: &NewLot,
) -> Result<u32, ArchiveFailure> {
    let invalid = |m: &str| failure(FailureKind::Invalid, m);
    if !is_safe_staging_name(&new.staging_name)
        || !is_safe_uid(&new.study_uid)
        || !new.files.iter().all(|f| is_safe_staging_name(f))
    {
        return Err(invalid("bad lot staging, study or file name"));
    }
    let staged = layout.lot_staging().join(&new.staging_name);
    let discard = || {
        let _ = fs::remove_dir_all(&staged);
    };
    let rec = db
        .exam(&new.study_uid)
        .map_err(db_failure)?
        .ok_or_else(|| invalid("no such exam"))?;
    let expected_seq = rec.lots.iter().map(|l| l.facts.seq).max().unwrap_or(0) + 1;
    let still = match assess(&rec.inputs, policy) {
        ExamState::Ready(a) => {
            a.lot_action() == new.action
                && a.report_key() == Some(new.report_key.as_str())
                && rec
                    .inputs
                    .study
                    .as_ref()
                    .is_some_and(|s| s.images_digest == new.images_digest)
        }
        _ => false,
    };
    if !still || new.seq != expected_seq {
        discard();
        return Err(invalid(
            "the exam changed while its lot was built; the lot is discarded",
        ));
    }
    for f in &new.files {
        if !staged.join(f).is_file() {
            discard();
            return Err(invalid("a file of the lot is missing"));
        }
    }
    let resources =
        |what: &str, e: std::io::Error| failure(FailureKind::Resources, format!("{what}: {e}"));
    let parent = layout.lots().join(&new.study_uid);
    if !parent.is_dir() {
        fs::create_dir_all(&parent).map_err(|e| resources("creating the lot directory", e))?;
        fsync_dir(&layout.lots()).map_err(|e| resources("fsync of lots", e))?;
    }
    let name = format!("SS{:06}", new.seq);
    let dest = parent.join(&name);
    // The archive copies the files rather than renaming the publisher's directory: the lot then
    // belongs to the archive alone (the publisher cannot alter it later), and the copy is
    // written, fsync'd and renamed into place by one owner. A crash leaves at most a `.tmp`
    // directory or an uncommitted `SS…` one, both never acknowledged: removed here on retry.
    let tmp = parent.join(format!(".{name}.tmp"));
    for leftover in [&tmp, &dest] {
        if leftover.exists() {
            let _ = fs::remove_dir_all(leftover);
        }
    }
    let undo = |f: ArchiveFailure| {
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_dir_all(&dest);
        f
    };
    fs::create_dir(&tmp).map_err(|e| resources("creating the lot directory", e))?;
    for f in &new.files {
        let bytes = fs::read(staged.join(f)).map_err(|e| undo(resources("reading the lot", e)))?;
        write_synced(&tmp.join(f), &bytes).map_err(|e| undo(resources("writing the lot", e)))?;
    }
    fsync_dir(&tmp).map_err(|e| undo(resources("fsync of the lot", e)))?;
    fs::rename(&tmp, &dest).map_err(|e| undo(resources("moving the lot into place", e)))?;
    fsync_dir(&parent).map_err(|e| undo(resources("fsync of the lot directory", e)))?;
    let row = LotRow {
        facts: LotFacts {
            seq: new.seq,
            action: new.action,
            report_key: new.report_key.clone(),
            images_digest: new.images_digest.clone(),
            status: LotStatus::Built,
        },
        dir: format!("lots/{}/{name}", new.study_uid),
        files: new.files.clone(),
        kos_sop_uid: new.kos_sop_uid.clone(),
        kos_instance_number: new.kos_instance_number,
        submission_set_uid: new.submission_set_uid.clone(),
        built_ms: now_ms(),
    };
    let txn = db.begin_write().map_err(|e| undo(db_failure(e)))?;
    db::insert_lot(&txn, &new.study_uid, &row).map_err(|e| undo(db_failure(e)))?;
    txn.commit().map_err(|e| undo(db_failure(e)))?;
    discard();
    log::info!(
        target: "archive",
        study_uid = new.study_uid.as_str();
        "lot {} archived ({:?})",
        new.seq,
        new.action
    );
    Ok(new.seq)
}

fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
