//! The redb index: schema, reads for views, and the row updates of one registration.
//!
//! Values are JSON: the rows evolve with the issues to come and JSON with `serde(default)` lets a
//! newer archive read an older database without a migration step. Keys are UIDs.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use redb::{
    Database, MultimapTableDefinition, ReadTransaction, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use super::model::{
    ExamView, InstanceRow, InstanceView, LotRow, Rejection, RejectionNoteRef, ReportRow, StudyRow,
    StudyView, Summary,
};
use crate::exam::{ExamInputs, ReportInput, StudyFacts};
use crate::ipc::NewInstance;

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const STUDIES: TableDefinition<&str, &[u8]> = TableDefinition::new("studies");
const STUDY_INSTANCES: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("study_instances");
/// Rejections that name an instance not received yet: applied when it arrives.
const PENDING_REJECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_rejections");
/// Studies not yet stable, with the time of their last instance (ms since the epoch).
const UNSTABLE: TableDefinition<&str, i64> = TableDefinition::new("unstable");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// First versions committed in the same flush round as their file's fsync: until that round is
/// known to have completed, the row may be durable while the bytes are not. Cleared by the next
/// commit; whatever a crash leaves here, recovery checks against the file's hash.
const IN_DOUBT: TableDefinition<&str, ()> = TableDefinition::new("in_doubt");
/// Recorded report messages by idempotence key (JSON `ReportRow`).
const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports");
/// Instances flagged `missing`, so that counting them does not scan every row.
const MISSING: TableDefinition<&str, ()> = TableDefinition::new("missing");
/// Report keys by the Study Instance UIDs their CDA names: how reports meet studies.
const STUDY_REPORTS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("study_reports");
/// Lots built for exams, keyed `<study>/<seq, 6 digits>` (JSON `LotRow`): the exam's history,
/// never deleted.
const LOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("lots");
/// Delivery steps in commit order (key: a counter), for the status page's last exchanges.
const EXCHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("exchanges");
/// WADO-RS requests in commit order (key: a counter): the audit trail of image access.
const ACCESSES: TableDefinition<u64, &[u8]> = TableDefinition::new("wado_accesses");
/// The whitelist updater's attempts in commit order (key: a counter): the list's history.
const WHITELIST_ATTEMPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("whitelist_attempts");

pub const SCHEMA_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Redb(#[from] redb::Error),
    #[error("database row {key} is unreadable: {source}")]
    Row {
        key: String,
        source: serde_json::Error,
    },
    #[error("database schema version {found} is not {SCHEMA_VERSION}")]
    Schema { found: String },
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self { DbError::Redb(e.into()) }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, DbError> {
    serde_json::from_slice(bytes).map_err(|source| DbError::Row {
        key: key.to_string(),
        source,
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("rows serialize")
}

pub struct Db {
    db: Database,
}

/// What a registration did to the index, for the caller to finish the file side.
#[derive(Debug, PartialEq)]
pub enum Recorded {
    Stored,
    Replaced { old_file: String },
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(INSTANCES)?;
            txn.open_table(STUDIES)?;
            txn.open_multimap_table(STUDY_INSTANCES)?;
            txn.open_table(PENDING_REJECTIONS)?;
            txn.open_table(UNSTABLE)?;
            txn.open_table(IN_DOUBT)?;
            txn.open_table(MISSING)?;
            txn.open_table(REPORTS)?;
            txn.open_table(LOTS)?;
            let mut by_study = txn.open_multimap_table(STUDY_REPORTS)?;
            let mut meta = txn.open_table(META)?;
            // Databases from before reports met studies: index their reports once.
            if meta.get("study_reports")?.is_none() {
                let reports = txn.open_table(REPORTS)?;
                for entry in reports.iter()? {
                    let (k, v) = entry?;
                    let row: ReportRow = decode(k.value(), v.value())?;
                    for study in &row.facts.study_uids {
                        by_study.insert(study.as_str(), k.value())?;
                    }
                }
                meta.insert("study_reports", "1")?;
            }
            let found = meta.get("schema")?.map(|v| v.value().to_string());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(found) => return Err(DbError::Schema { found }),
            }
        }
        txn.commit()?;
        Ok(Db { db })
    }

    pub fn begin_write(&self) -> Result<WriteTransaction, DbError> {
        Ok(self.db.begin_write()?)
    }

    fn read(&self) -> Result<ReadTransaction, DbError> {
        Ok(self.db.begin_read()?)
    }

    pub fn instance(&self, sop: &str) -> Result<Option<InstanceRow>, DbError> {
        let txn = self.read()?;
        let t = txn.open_table(INSTANCES)?;
        let v = t.get(sop)?;
        v.map(|v| decode(sop, v.value())).transpose()
    }

    /// Every indexed file (store-relative path → SOP Instance UID), for recovery.
    pub fn instance_files(&self) -> Result<HashMap<String, String>, DbError> {
        let txn = self.read()?;
        let t = txn.open_table(INSTANCES)?;
        let mut out = HashMap::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            let row: InstanceRow = decode(k.value(), v.value())?;
            out.insert(row.file, k.value().to_string());
        }
        Ok(out)
    }

    /// Counts for the status page. `today_start_ms`: 00:00 UTC today, for `studies_today`.
    pub fn summary(&self, today_start_ms: i64) -> Result<Summary, DbError> {
        let txn = self.read()?;
        let studies = txn.open_table(STUDIES)?;
        let mut s = Summary::default();
        for entry in studies.iter()? {
            let (k, v) = entry?;
            let row: StudyRow = decode(k.value(), v.value())?;
            s.studies += 1;
            if row.first_received_ms >= today_start_ms {
                s.studies_today += 1;
            }
            if row.stable {
                s.studies_stable += 1;
            } else {
                s.studies_waiting += 1;
            }
            s.instances += u64::from(row.instances);
            s.rejected_instances += u64::from(row.rejected);
            s.rejection_notes += row.rejection_notes.len() as u64;
            s.bytes += row.bytes;
        }
        s.missing_files = txn.open_table(MISSING)?.len()?;
        s.reports = txn.open_table(REPORTS)?.len()?;
        Ok(s)
    }

    pub fn study(&self, study_uid: &str) -> Result<Option<StudyView>, DbError> {
        let txn = self.read()?;
        let studies = txn.open_table(STUDIES)?;
        let Some(v) = studies.get(study_uid)? else {
            return Ok(None);
        };
        let row: StudyRow = decode(study_uid, v.value())?;
        let instances = txn.open_table(INSTANCES)?;
        let index = txn.open_multimap_table(STUDY_INSTANCES)?;
        let mut views = Vec::new();
        for sop in index.get(study_uid)? {
            let sop = sop?;
            let sop = sop.value();
            if let Some(v) = instances.get(sop)? {
                views.push(InstanceView::from_row(sop, &decode(sop, v.value())?));
            }
        }
        Ok(Some(StudyView {
            study_uid: study_uid.to_string(),
            has_patient_id: row.patient_id.is_some(),
            has_accession: row.accession_number.is_some(),
            modalities: row.modalities.into_iter().collect(),
            series: row.series,
            instances: views,
            rejected: row.rejected,
            rejection_notes: row.rejection_notes,
            first_received_ms: row.first_received_ms,
            last_received_ms: row.last_received_ms,
            stable: row.stable,
            identity_conflicts: row.identity_conflicts,
        }))
    }

    /// Everything about one exam (study UID), or None when neither images nor reports name it.
    pub fn exam(&self, study_uid: &str) -> Result<Option<ExamRecord>, DbError> {
        let txn = self.read()?;
        let studies = txn.open_table(STUDIES)?;
        let instances = txn.open_table(INSTANCES)?;
        let index = txn.open_multimap_table(STUDY_INSTANCES)?;
        let reports_t = txn.open_table(REPORTS)?;
        let by_study = txn.open_multimap_table(STUDY_REPORTS)?;
        let mut rec = ExamRecord::default();
        let row: Option<StudyRow> = match studies.get(study_uid)? {
            Some(v) => Some(decode(study_uid, v.value())?),
            None => None,
        };
        for key in by_study.get(study_uid)? {
            let key = key?;
            if let Some(v) = reports_t.get(key.value())? {
                let r: ReportRow = decode(key.value(), v.value())?;
                rec.updated_ms = rec.updated_ms.max(r.received_ms);
                rec.inputs.reports.push(ReportInput {
                    key: key.value().to_string(),
                    received_ms: r.received_ms,
                    facts: r.facts.clone(),
                });
                rec.reports.push(r);
            }
        }
        if row.is_none() && rec.reports.is_empty() {
            return Ok(None);
        }
        if let Some(row) = row {
            for sop in index.get(study_uid)? {
                let sop = sop?;
                let sop = sop.value();
                if let Some(v) = instances.get(sop)? {
                    let r: InstanceRow = decode(sop, v.value())?;
                    if r.rejected.is_none() && !r.is_rejection_note && !r.missing {
                        rec.images.push((sop.to_string(), r));
                    }
                }
            }
            rec.images.sort_by(|a, b| a.0.cmp(&b.0));
            let versions: Vec<(String, u32)> = rec
                .images
                .iter()
                .map(|(s, r)| (s.clone(), r.version))
                .collect();
            rec.updated_ms = rec.updated_ms.max(row.last_received_ms);
            rec.inputs.study = Some(StudyFacts {
                patient_id: row.patient_id.clone(),
                accession: row.accession_number.clone(),
                images: rec.images.len() as u32,
                stable: row.stable,
                identity_conflicts: row.identity_conflicts,
                modalities: row.modalities.iter().cloned().collect(),
                images_digest: images_digest(&versions),
            });
        }
        rec.lots = lots_of(&txn.open_table(LOTS)?, study_uid)?;
        rec.inputs.lots = rec.lots.iter().map(|l| l.facts.clone()).collect();
        Ok(Some(rec))
    }

    /// One exam's history (None when nothing names it).
    pub fn exam_history(
        &self,
        study_uid: &str,
        policy: &crate::exam::Policy,
    ) -> Result<Option<super::model::ExamHistory>, DbError> {
        use super::model::{ExamHistory, LotLine, ReportLine};
        let Some(rec) = self.exam(study_uid)? else {
            return Ok(None);
        };
        let state = crate::exam::assess(&rec.inputs, policy);
        let mut reports: Vec<ReportLine> = rec
            .reports
            .iter()
            .map(|r| ReportLine {
                received_ms: r.received_ms,
                message_type: r.facts.message_type.clone(),
                action: r.facts.action.clone(),
            })
            .collect();
        reports.sort_by_key(|r| r.received_ms);
        Ok(Some(ExamHistory {
            exam: ExamView {
                study_uid: study_uid.to_string(),
                label: state.label().to_string(),
                reason: reason(&state, &rec),
                state,
                images: rec.images.len() as u32,
                reports: rec.reports.len() as u32,
                lots: rec.lots.len() as u32,
                updated_ms: rec.updated_ms,
            },
            reports,
            lots: rec
                .lots
                .iter()
                .map(|l| LotLine {
                    seq: l.facts.seq,
                    action: l.facts.action,
                    status: l.facts.status,
                    kos_sop_uid: l.kos_sop_uid.clone(),
                    built_ms: l.built_ms,
                    dir: l.dir.clone(),
                    delivery: l.delivery.clone(),
                })
                .collect(),
        }))
    }

    /// Study UIDs of every exam: studies with images, and those only reports name.
    pub fn exam_uids(&self) -> Result<Vec<String>, DbError> {
        let txn = self.read()?;
        let mut uids = std::collections::BTreeSet::new();
        for entry in txn.open_table(STUDIES)?.iter()? {
            uids.insert(entry?.0.value().to_string());
        }
        for entry in txn.open_multimap_table(STUDY_REPORTS)?.iter()? {
            uids.insert(entry?.0.value().to_string());
        }
        Ok(uids.into_iter().collect())
    }

    /// Every exam with its state, most recently updated first.
    pub fn exams(&self, policy: &crate::exam::Policy) -> Result<Vec<ExamView>, DbError> {
        let mut out = Vec::new();
        for uid in self.exam_uids()? {
            if let Some(rec) = self.exam(&uid)? {
                let state = crate::exam::assess(&rec.inputs, policy);
                out.push(ExamView {
                    study_uid: uid,
                    label: state.label().to_string(),
                    reason: reason(&state, &rec),
                    state,
                    images: rec.images.len() as u32,
                    reports: rec.reports.len() as u32,
                    lots: rec.lots.len() as u32,
                    updated_ms: rec.updated_ms,
                });
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.updated_ms));
        Ok(out)
    }

    /// Marks as stable every study quiet since `quiet_ms`; returns their UIDs.
    pub fn settle(&self, now_ms: i64, quiet_ms: i64) -> Result<Vec<String>, DbError> {
        let due: Vec<String> = {
            let txn = self.read()?;
            let t = txn.open_table(UNSTABLE)?;
            let mut due = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                if now_ms - v.value() >= quiet_ms {
                    due.push(k.value().to_string());
                }
            }
            due
        };
        if due.is_empty() {
            return Ok(due);
        }
        let txn = self.begin_write()?;
        {
            let mut unstable = txn.open_table(UNSTABLE)?;
            let mut studies = txn.open_table(STUDIES)?;
            for uid in &due {
                unstable.remove(uid.as_str())?;
                let row = studies.get(uid.as_str())?.map(|v| v.value().to_vec());
                if let Some(bytes) = row {
                    let mut row: StudyRow = decode(uid, &bytes)?;
                    row.stable = true;
                    studies.insert(uid.as_str(), encode(&row).as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(due)
    }

    /// Store-relative paths of every recorded report message (recovery).
    pub fn report_files(&self) -> Result<HashSet<String>, DbError> {
        let txn = self.read()?;
        let t = txn.open_table(REPORTS)?;
        let mut out = HashSet::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            let row: ReportRow = decode(k.value(), v.value())?;
            out.insert(row.file);
        }
        Ok(out)
    }

    /// SOP Instance UIDs whose row may be durable without its bytes (see `IN_DOUBT`).
    pub fn in_doubt(&self) -> Result<Vec<String>, DbError> {
        let txn = self.read()?;
        let t = txn.open_table(IN_DOUBT)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(entry?.0.value().to_string());
        }
        Ok(out)
    }

    /// Durably forgets that these rows were in doubt (their round completed, or they were checked).
    pub fn clear_in_doubt(&self, sops: &[String]) -> Result<(), DbError> {
        if sops.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        set_in_doubt(&txn, &[], sops)?;
        txn.commit()?;
        Ok(())
    }

    /// Flags rows whose file is gone (recovery); they stay indexed, so nothing is forgotten.
    pub fn mark_missing(&self, sops: &HashSet<String>) -> Result<(), DbError> {
        if sops.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut t = txn.open_table(INSTANCES)?;
            let mut missing = txn.open_table(MISSING)?;
            for sop in sops {
                missing.insert(sop.as_str(), ())?;
                let bytes = t.get(sop.as_str())?.map(|v| v.value().to_vec());
                if let Some(bytes) = bytes {
                    let mut row: InstanceRow = decode(sop, &bytes)?;
                    row.missing = true;
                    t.insert(sop.as_str(), encode(&row).as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// Inside a registration's transaction: `add` are this round's first versions, `clear` the
/// previous round's, which completed before they were acknowledged.
pub fn set_in_doubt(
    txn: &WriteTransaction,
    add: &[String],
    clear: &[String],
) -> Result<(), DbError> {
    let mut t = txn.open_table(IN_DOUBT)?;
    for sop in clear {
        t.remove(sop.as_str())?;
    }
    for sop in add {
        t.insert(sop.as_str(), ())?;
    }
    Ok(())
}

/// A recorded report, inside a write transaction.
pub fn report_in(txn: &WriteTransaction, key: &str) -> Result<Option<ReportRow>, DbError> {
    let t = txn.open_table(REPORTS)?;
    let v = t.get(key)?;
    v.map(|v| decode(key, v.value())).transpose()
}

pub fn insert_report(txn: &WriteTransaction, key: &str, row: &ReportRow) -> Result<(), DbError> {
    txn.open_table(REPORTS)?
        .insert(key, encode(row).as_slice())?;
    let mut by_study = txn.open_multimap_table(STUDY_REPORTS)?;
    for study in &row.facts.study_uids {
        by_study.insert(study.as_str(), key)?;
    }
    Ok(())
}

fn lot_key(study_uid: &str, seq: u32) -> String {
    format!("{study_uid}/{seq:06}")
}

/// The lots of one study, in order (read or write transaction).
fn lots_of<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    study_uid: &str,
) -> Result<Vec<LotRow>, DbError> {
    let from = format!("{study_uid}/");
    let to = format!("{study_uid}0"); // '0' follows '/' in ASCII: the end of the prefix range
    let mut out = Vec::new();
    for entry in t.range(from.as_str()..to.as_str())? {
        let (k, v) = entry?;
        out.push(decode(k.value(), v.value())?);
    }
    Ok(out)
}

/// Records a built lot and marks the built lots it supersedes, inside a write transaction.
pub fn insert_lot(txn: &WriteTransaction, study_uid: &str, row: &LotRow) -> Result<(), DbError> {
    let mut t = txn.open_table(LOTS)?;
    let older = lots_of(&t, study_uid)?;
    for mut lot in older {
        if lot.facts.status == crate::exam::LotStatus::Built {
            lot.facts.status = crate::exam::LotStatus::Superseded;
            t.insert(
                lot_key(study_uid, lot.facts.seq).as_str(),
                encode(&lot).as_slice(),
            )?;
        }
    }
    t.insert(
        lot_key(study_uid, row.facts.seq).as_str(),
        encode(row).as_slice(),
    )?;
    Ok(())
}

/// Rewrites one lot's row (its delivery progressed), inside a write transaction.
pub fn update_lot(txn: &WriteTransaction, study_uid: &str, row: &LotRow) -> Result<(), DbError> {
    txn.open_table(LOTS)?.insert(
        lot_key(study_uid, row.facts.seq).as_str(),
        encode(row).as_slice(),
    )?;
    Ok(())
}

/// The append-only logs (exchanges, whitelist attempts, WADO-RS accesses): a counter key and
/// one JSON record per entry, in commit order.
type Log = TableDefinition<'static, u64, &'static [u8]>;

/// Appends `record` to `log` inside the caller's transaction; its number.
fn append_to_log<T: serde::Serialize>(
    txn: &WriteTransaction,
    log: Log,
    record: &T,
) -> Result<u64, DbError> {
    let mut t = txn.open_table(log)?;
    let next = t.last()?.map_or(0, |(k, _)| k.value() + 1);
    t.insert(next, encode(record).as_slice())?;
    Ok(next)
}

/// Appends `record` to `log` in a transaction of its own, committed before it returns.
fn append_committed<T: serde::Serialize>(db: &Db, log: Log, record: &T) -> Result<u64, DbError> {
    let txn = db.begin_write()?;
    let n = append_to_log(&txn, log, record)?;
    txn.commit()?;
    Ok(n)
}

/// The last `limit` entries of `log`, newest first (none when nothing was ever logged).
fn last_in_log<T: serde::de::DeserializeOwned>(
    db: &Db,
    log: Log,
    limit: usize,
) -> Result<Vec<T>, DbError> {
    let txn = db.read()?;
    let t = match txn.open_table(log) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in t.iter()?.rev().take(limit) {
        let (k, v) = entry?;
        out.push(decode(&k.value().to_string(), v.value())?);
    }
    Ok(out)
}

/// Appends a delivery step to the exchange log (in the caller's transaction, so the step and
/// its log line commit together).
pub fn append_exchange(
    txn: &WriteTransaction,
    record: &super::model::ExchangeRecord,
) -> Result<(), DbError> {
    append_to_log(txn, EXCHANGES, record).map(drop)
}

/// The last `limit` delivery steps, newest first.
pub fn last_exchanges(db: &Db, limit: usize) -> Result<Vec<super::model::ExchangeRecord>, DbError> {
    last_in_log(db, EXCHANGES, limit)
}

/// Appends (and commits) one WADO-RS access.
pub fn append_access(db: &Db, access: &super::model::AccessRecord) -> Result<(), DbError> {
    append_committed(db, ACCESSES, access).map(drop)
}

/// The last `limit` WADO-RS accesses, newest first.
pub fn accesses(db: &Db, limit: usize) -> Result<Vec<super::model::AccessRecord>, DbError> {
    last_in_log(db, ACCESSES, limit)
}

/// Appends (and commits) one whitelist attempt; its number.
pub fn append_whitelist_attempt(
    db: &Db,
    attempt: &super::model::WhitelistAttempt,
) -> Result<u64, DbError> {
    append_committed(db, WHITELIST_ATTEMPTS, attempt)
}

/// The last `limit` whitelist attempts, newest first.
pub fn whitelist_attempts(
    db: &Db,
    limit: usize,
) -> Result<Vec<super::model::WhitelistAttempt>, DbError> {
    last_in_log(db, WHITELIST_ATTEMPTS, limit)
}

/// The next lot number of the box, durably reserved (UIDs are made from it, so it is never
/// handed out twice, even across a crash).
pub fn reserve_lot_number(txn: &WriteTransaction) -> Result<u64, DbError> {
    let mut meta = txn.open_table(META)?;
    let current = meta
        .get("lot_number")?
        .and_then(|v| v.value().parse::<u64>().ok())
        .unwrap_or(0);
    let next = current + 1;
    meta.insert("lot_number", next.to_string().as_str())?;
    Ok(next)
}

/// SHA-256 over the sorted `(SOP Instance UID, version)` of the given images.
pub fn images_digest(images: &[(String, u32)]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&(String, u32)> = images.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (sop, version) in sorted {
        h.update(sop.as_bytes());
        h.update(format!(":{version}\n").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The reason shown with an exam: its state's, or, for a lot in flight, why it is not through.
fn reason(state: &crate::exam::ExamState, rec: &ExamRecord) -> Option<String> {
    match state {
        crate::exam::ExamState::Sending { seq } => rec
            .lots
            .iter()
            .find(|l| l.facts.seq == *seq)
            .and_then(|l| l.delivery.last_error.clone()),
        _ => state.reason().map(str::to_string),
    }
}

/// What the archive holds about one exam, gathered for [`crate::exam::assess`].
#[derive(Debug, Clone, Default)]
pub struct ExamRecord {
    pub inputs: ExamInputs,
    /// Publishable images: (SOP Instance UID, row).
    pub images: Vec<(String, InstanceRow)>,
    pub reports: Vec<ReportRow>,
    pub lots: Vec<LotRow>,
    pub updated_ms: i64,
}

/// Looks an instance up inside a write transaction (sees this batch's earlier writes).
pub fn instance_in(txn: &WriteTransaction, sop: &str) -> Result<Option<InstanceRow>, DbError> {
    let t = txn.open_table(INSTANCES)?;
    let v = t.get(sop)?;
    v.map(|v| decode(sop, v.value())).transpose()
}

/// Records a newly stored instance (whose file is already at `file`) and everything it implies:
/// the study row, the study→instance index, pending or carried rejections, stability.
pub fn record_instance(
    txn: &WriteTransaction,
    new: &NewInstance,
    file: String,
    version: u32,
    previous: Option<&InstanceRow>,
    now_ms: i64,
) -> Result<Recorded, DbError> {
    let mut instances = txn.open_table(INSTANCES)?;
    let mut studies = txn.open_table(STUDIES)?;
    let mut index = txn.open_multimap_table(STUDY_INSTANCES)?;
    let mut pending = txn.open_table(PENDING_REJECTIONS)?;
    let mut unstable = txn.open_table(UNSTABLE)?;
    let mut missing = txn.open_table(MISSING)?;

    let sop = new.sop_instance_uid.as_str();
    missing.remove(sop)?;
    // A new version keeps a rejection already applied to the UID; a first version picks up a
    // rejection note that arrived before it.
    let rejected = match previous {
        Some(p) => p.rejected.clone(),
        None => {
            let r = pending.remove(sop)?.map(|v| v.value().to_vec());
            r.map(|bytes| decode::<Rejection>(sop, &bytes))
                .transpose()?
        }
    };
    let row = InstanceRow {
        study_uid: new.study_uid.clone(),
        series_uid: new.series_uid.clone(),
        sop_class_uid: new.sop_class_uid.clone(),
        transfer_syntax: new.transfer_syntax.clone(),
        modality: new.modality.clone(),
        file,
        file_size: new.file_size,
        dataset_offset: new.dataset_offset,
        dataset_sha256: new.dataset_sha256.clone(),
        received_at_ms: now_ms,
        calling_ae: new.calling_ae.clone(),
        version,
        rejected,
        is_rejection_note: new.rejection.is_some(),
        missing: false,
    };

    // Undo the previous version's contribution to its study (it may even be another study).
    if let Some(p) = previous {
        let bytes = studies
            .get(p.study_uid.as_str())?
            .map(|v| v.value().to_vec());
        if let Some(bytes) = bytes {
            let mut st: StudyRow = decode(&p.study_uid, &bytes)?;
            if !p.is_rejection_note {
                st.instances = st.instances.saturating_sub(1);
                if p.rejected.is_some() {
                    st.rejected = st.rejected.saturating_sub(1);
                }
                if let Some(se) = st.series.get_mut(&p.series_uid) {
                    se.instances = se.instances.saturating_sub(1);
                }
            }
            st.bytes = st.bytes.saturating_sub(p.file_size);
            studies.insert(p.study_uid.as_str(), encode(&st).as_slice())?;
        }
        index.remove(p.study_uid.as_str(), sop)?;
    }

    let bytes = studies
        .get(new.study_uid.as_str())?
        .map(|v| v.value().to_vec());
    let mut st: StudyRow = match bytes {
        Some(b) => decode(&new.study_uid, &b)?,
        None => StudyRow {
            patient_id: new.patient_id.clone(),
            patient_name: new.patient_name.clone(),
            accession_number: new.accession_number.clone(),
            first_received_ms: now_ms,
            ..StudyRow::default()
        },
    };
    if st.instances > 0
        && (st.patient_id != new.patient_id || st.accession_number != new.accession_number)
        && !row.is_rejection_note
    {
        st.identity_conflicts += 1;
    }
    st.last_received_ms = now_ms;
    st.bytes += new.file_size;
    st.stable = false;
    if row.is_rejection_note {
        let note = new.rejection.as_ref().expect("note");
        st.rejection_notes.retain(|n| n.sop_uid != sop);
        st.rejection_notes.push(RejectionNoteRef {
            sop_uid: sop.to_string(),
            code: note.code.clone(),
            received_ms: now_ms,
            references: note.references.len() as u32,
        });
    } else {
        st.instances += 1;
        if row.rejected.is_some() {
            st.rejected += 1;
        }
        if let Some(m) = &new.modality {
            st.modalities.insert(m.clone());
        }
        let se = st.series.entry(new.series_uid.clone()).or_default();
        se.instances += 1;
        if se.modality.is_none() {
            se.modality = new.modality.clone();
        }
    }
    studies.insert(new.study_uid.as_str(), encode(&st).as_slice())?;
    index.insert(new.study_uid.as_str(), sop)?;
    instances.insert(sop, encode(&row).as_slice())?;
    unstable.insert(new.study_uid.as_str(), now_ms)?;

    if let Some(note) = &new.rejection {
        let rejection = Rejection {
            code: note.code.clone(),
            note_sop_uid: sop.to_string(),
        };
        for r in &note.references {
            let target = r.sop_instance_uid.as_str();
            let existing = instances.get(target)?.map(|v| v.value().to_vec());
            match existing {
                Some(bytes) => {
                    let mut ir: InstanceRow = decode(target, &bytes)?;
                    if ir.rejected.is_none() && !ir.is_rejection_note {
                        ir.rejected = Some(rejection.clone());
                        instances.insert(target, encode(&ir).as_slice())?;
                        let sb = studies
                            .get(ir.study_uid.as_str())?
                            .map(|v| v.value().to_vec());
                        if let Some(sb) = sb {
                            let mut s2: StudyRow = decode(&ir.study_uid, &sb)?;
                            s2.rejected += 1;
                            s2.stable = false;
                            studies.insert(ir.study_uid.as_str(), encode(&s2).as_slice())?;
                            unstable.insert(ir.study_uid.as_str(), now_ms)?;
                        }
                    }
                }
                None => {
                    pending.insert(target, encode(&rejection).as_slice())?;
                }
            }
        }
    }

    Ok(match previous {
        Some(p) => Recorded::Replaced {
            old_file: p.file.clone(),
        },
        None => Recorded::Stored,
    })
}

/// Number of rows in the instance table (tests and recovery logs).
pub fn count_instances(db: &Db) -> Result<u64, DbError> {
    let txn = db.read()?;
    Ok(txn.open_table(INSTANCES)?.len()?)
}
