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
use super::model::{ExamWork, LotRow, SendWork, SeriesMaterial, StudyAttributes, Work};
use super::store::{fsync_dir, is_safe_staging_name, is_safe_uid, Layout};
use super::{db_failure, failure, now_ms};
use crate::exam::{assess, ExamState, LotFacts, LotStatus, NextAction, Policy};
use crate::ipc::{ArchiveFailure, FailureKind, LotProgress, NewLot};

/// The publisher's next work: a built lot to send (or one in flight whose retry is due), when
/// it can send; else the first exam whose next action needs a lot built. None when idle.
pub fn next_work(
    db: &Db,
    layout: &Layout,
    policy: &Policy,
    skip: &[String],
    can_send: bool,
    now_ms: i64,
) -> Result<Option<Work>, ArchiveFailure> {
    // Every exam with pending work, with its claim on the DMP (per-patient order).
    let mut pending = Vec::new();
    for uid in db.exam_uids().map_err(db_failure)? {
        let Some(rec) = db.exam(&uid).map_err(db_failure)? else {
            continue;
        };
        let state = assess(&rec.inputs, policy);
        // A skipped exam (its lot could not be built) does not hold the patient's others back.
        let claim = match skip.contains(&uid) {
            true => None,
            false => crate::exam::send_claim(&rec.inputs, &state),
        };
        if let Some(claim) = claim {
            pending.push((uid, rec, state, claim));
        }
    }
    let claims: Vec<(String, i64)> = pending.iter().map(|p| p.3.clone()).collect();
    let turns = crate::exam::send_turns(&claims);
    for ((uid, rec, state, _), my_turn) in pending.into_iter().zip(turns) {
        match state {
            ExamState::LotBuilt { seq, .. } | ExamState::Sending { seq } if can_send && my_turn => {
                let Some(lot) = rec.lots.iter().find(|l| l.facts.seq == seq) else {
                    continue;
                };
                if lot.delivery.next_attempt_ms > now_ms {
                    continue;
                }
                return send_material(layout, &uid, &rec, lot.clone())
                    .map(|w| Some(Work::Send(Box::new(w))));
            }
            // Building a lot is local: never held back by the patient's order.
            ExamState::Ready(action) => {
                return material(db, layout, &uid, rec, action)
                    .map(|w| Some(Work::Build(Box::new(w))));
            }
            _ => {}
        }
    }
    Ok(None)
}

fn send_material(
    layout: &Layout,
    uid: &str,
    rec: &ExamRecord,
    lot: LotRow,
) -> Result<SendWork, ArchiveFailure> {
    let read = |rel: String| {
        fs::read(layout.abs(&rel))
            .map_err(|e| failure(FailureKind::Resources, format!("reading {rel}: {e}")))
    };
    let report = rec
        .inputs
        .reports
        .iter()
        .zip(&rec.reports)
        .find(|(i, _)| i.key == lot.facts.report_key)
        .map(|(_, r)| r.file.clone())
        .ok_or_else(|| failure(FailureKind::Invalid, "the lot's report is gone"))?;
    let mut files = Vec::new();
    // The lot's own files (not the exchanges kept beside them).
    for name in &lot.files {
        if name == crate::lot::METADATA_FILE {
            continue;
        }
        let bytes = read(format!("{}/{name}", lot.dir))?;
        files.push((name.clone(), crate::base64::encode(&bytes)));
    }
    Ok(SendWork {
        study_uid: uid.to_string(),
        report_base64: crate::base64::encode(&read(report)?),
        files,
        lot,
    })
}

/// Records where a lot's delivery stands, with the exchange that led there: the exchange's
/// files are written and fsync'd into the lot's directory, then the row committed.
pub fn record_progress(db: &Db, layout: &Layout, p: &LotProgress) -> Result<(), ArchiveFailure> {
    let invalid = |m: &str| failure(FailureKind::Invalid, m);
    if !is_safe_uid(&p.study_uid) || !p.exchange.iter().all(|(n, _)| is_safe_staging_name(n)) {
        return Err(invalid("bad study UID or exchange file name"));
    }
    let rec = db
        .exam(&p.study_uid)
        .map_err(db_failure)?
        .ok_or_else(|| invalid("no such exam"))?;
    let mut lot = rec
        .lots
        .into_iter()
        .find(|l| l.facts.seq == p.seq)
        .ok_or_else(|| invalid("no such lot"))?;
    if !matches!(lot.facts.status, LotStatus::Built | LotStatus::Sending) {
        return Err(invalid("this lot's delivery is settled already"));
    }
    let dir = layout.abs(&lot.dir);
    let resources =
        |what: &str, e: std::io::Error| failure(FailureKind::Resources, format!("{what}: {e}"));
    let mut delivery = p.delivery.clone();
    delivery.exchanges = lot.delivery.exchanges.clone();
    for (name, b64) in &p.exchange {
        let bytes =
            crate::base64::decode(b64.as_bytes()).map_err(|_| invalid("exchange is not base64"))?;
        write_synced(&dir.join(name), &bytes).map_err(|e| resources("writing an exchange", e))?;
        delivery.exchanges.push(name.clone());
    }
    if !p.exchange.is_empty() {
        fsync_dir(&dir).map_err(|e| resources("fsync of the lot", e))?;
    }
    lot.facts.status = p.status;
    let record = crate::archive::model::ExchangeRecord {
        at_ms: now_ms(),
        study_uid: p.study_uid.clone(),
        lot_seq: p.seq,
        action: lot.facts.action,
        transactions: p
            .exchange
            .iter()
            .filter_map(|(n, _)| crate::archive::model::ExchangeRecord::transaction_of(n))
            .fold(Vec::new(), |mut v, t| {
                if !v.contains(&t) {
                    v.push(t);
                }
                v
            }),
        status: p.status,
        attempts: delivery.attempts,
        error: delivery.last_error.clone(),
        dmp_errors: delivery.errors.iter().map(|(c, _)| c.clone()).collect(),
    };
    lot.delivery = delivery;
    let txn = db.begin_write().map_err(db_failure)?;
    db::update_lot(&txn, &p.study_uid, &lot).map_err(db_failure)?;
    db::append_exchange(&txn, &record).map_err(db_failure)?;
    txn.commit().map_err(db_failure)?;
    Ok(())
}

fn material(
    db: &Db,
    layout: &Layout,
    uid: &str,
    rec: ExamRecord,
    action: NextAction,
) -> Result<ExamWork, ArchiveFailure> {
    // A withdrawal names no report: the latest one (a deletion message, usually) speaks for it.
    let report_key = match action.report_key() {
        Some(k) => k.to_string(),
        None => rec
            .inputs
            .reports
            .iter()
            .max_by_key(|r| r.received_ms)
            .map(|r| r.key.clone())
            .unwrap_or_default(),
    };
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
        NextAction::Unpublish { withdraws_seq, .. } => rec
            .lots
            .iter()
            .find(|l| l.facts.seq == *withdraws_seq)
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
                && a.report_key().is_none_or(|k| k == new.report_key)
                && (new.action == crate::exam::LotAction::Unpublish
                    || rec
                        .inputs
                        .study
                        .as_ref()
                        .is_some_and(|s| s.images_digest == new.images_digest))
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
        delivery: Default::default(),
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
