//! The archive: sole owner of the redb index and the file store (see ARCHITECTURE.md).
//!
//! Threads, not async: one thread per client connection (a handful: one per DICOM association
//! plus readers), one **writer** thread that owns every write transaction, and nothing else. The
//! writer takes every registration waiting in its queue, moves their files into place, fsyncs the
//! touched directories once, and commits them in one transaction (group commit), then answers
//! each. Under one association that is one commit per instance; under four, fewer.

pub mod db;
pub mod exams;
mod flush;
pub mod model;
pub mod recovery;
pub mod retrieve;
pub mod store;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::ipc::{
    self, ArchiveFailure, FailureKind, Hello, NewInstance, RegisterOutcome, Request, Response, Role,
};
use db::{Db, DbError, Recorded};
use store::{fsync_dir, is_safe_staging_name, is_safe_uid, Layout};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// 00:00 UTC of the day `now_ms` falls in.
pub fn today_start_ms(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(86_400_000)
}

struct Job {
    instance: Box<NewInstance>,
    reply: mpsc::SyncSender<Result<RegisterOutcome, ArchiveFailure>>,
}

/// A writer iteration longer than this counts as stuck (see the accept loop).
const WRITER_STUCK_MS: i64 = 5_000;

/// Most registrations one commit takes; bounds the latency one batch adds to the next.
const MAX_BATCH: usize = 64;
/// Bound of the writer's queue: a caller past it waits (backpressure, not memory growth).
const QUEUE: usize = 256;

/// Runs the archive service until `stop` is set. Blocks.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), ArchiveError> {
    let layout = Layout::new(&config.storage.data_dir);
    layout.create().map_err(|source| ArchiveError::Io {
        what: "creating the store in",
        path: layout.data_dir.clone(),
        source,
    })?;
    let db = Arc::new(Db::open(&layout.db())?);
    let report = recovery::recover(&layout, &db)?;
    report.log();

    let policy = Arc::new(config.publication.policy());
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(QUEUE);
    let quiet_ms = config.archive.stable_after.as_millis() as i64;
    let writer_alive = Arc::new(AtomicI64::new(now_ms()));
    let writer = {
        let db = db.clone();
        let layout = layout.clone();
        let stop = stop.clone();
        let alive = writer_alive.clone();
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer_loop(&db, &layout, jobs_rx, quiet_ms, &stop, &alive))
            .expect("spawn writer")
    };

    let run_dir = &config.storage.run_dir;
    fs::create_dir_all(run_dir).map_err(|source| ArchiveError::Io {
        what: "creating",
        path: run_dir.clone(),
        source,
    })?;
    // Under the supervisor the role sockets are opened by it (so that each belongs to its
    // role's group, and survives our restarts) and handed down; standalone, we bind them.
    let inherited =
        crate::supervisor::sandbox::inherited_fds(crate::supervisor::sandbox::ENV_SOCKETS);
    let mut listeners = Vec::new();
    let mut bound_here = Vec::new();
    for role in Role::ALL {
        let listener = match inherited.iter().find(|(n, _)| n == role.name()) {
            // SAFETY: the supervisor gave us this listening socket for our sole use.
            Some((_, fd)) => unsafe { UnixListener::from_raw_fd(*fd) },
            None => {
                let path = role.socket_path(run_dir);
                let _ = fs::remove_file(&path);
                let l = UnixListener::bind(&path).map_err(|source| ArchiveError::Io {
                    what: "binding",
                    path: path.clone(),
                    source,
                })?;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o660));
                bound_here.push(path);
                l
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        listeners.push((role, listener));
    }
    log::info!(
        "archive ready: {} instances indexed, sockets in {}",
        db::count_instances(&db)?,
        run_dir.display()
    );

    // Accept loop: poll the few listeners; a connection gets its own thread. It also beats on
    // the health channel, but only while the writer thread goes round its loop too: a writer
    // stuck in one iteration (a hung disk) silences the archive, and the supervisor restarts it.
    let mut reporter = crate::control::Reporter::from_env();
    while !stop.load(Ordering::Relaxed) {
        if now_ms() - writer_alive.load(Ordering::Relaxed) < WRITER_STUCK_MS {
            reporter.beat(true, || {
                [(
                    "instances_indexed".to_string(),
                    db::count_instances(&db).unwrap_or(0),
                )]
                .into()
            });
        }
        let mut idle = true;
        for (role, listener) in &listeners {
            match listener.accept() {
                Ok((stream, _)) => {
                    idle = false;
                    let _ = stream.set_nonblocking(false);
                    let db = db.clone();
                    let jobs = jobs_tx.clone();
                    let role = *role;
                    let layout = layout.clone();
                    let policy = policy.clone();
                    let _ = std::thread::Builder::new()
                        .name(format!("ipc-{}", role.name()))
                        .spawn(move || {
                            serve_connection(stream, role, &db, &layout, &jobs, &policy)
                        });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => log::warn!("accept on {} socket: {e}", role.name()),
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for path in bound_here {
        let _ = fs::remove_file(path);
    }
    drop(jobs_tx);
    let _ = writer.join();
    log::info!("archive stopped");
    Ok(())
}

fn serve_connection(
    mut stream: UnixStream,
    role: Role,
    db: &Db,
    layout: &Layout,
    jobs: &mpsc::SyncSender<Job>,
    policy: &crate::exam::Policy,
) {
    match ipc::read_frame::<Hello>(&mut stream) {
        Ok(Some(h)) if h.version == ipc::PROTOCOL_VERSION => {}
        Ok(Some(h)) => {
            let _ = ipc::write_frame(
                &mut stream,
                &Response::Error(ArchiveFailure {
                    kind: FailureKind::Version,
                    message: format!(
                        "protocol version {} not supported (archive speaks {})",
                        h.version,
                        ipc::PROTOCOL_VERSION
                    ),
                }),
            );
            return;
        }
        _ => return,
    }
    loop {
        let request = match ipc::read_frame::<Request>(&mut stream) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                log::warn!("{} connection: {e}", role.name());
                return;
            }
        };
        let (response, files) = if !role.allows(&request) {
            let refusal = Response::Error(ArchiveFailure {
                kind: FailureKind::Forbidden,
                message: format!("role {} may not make this request", role.name()),
            });
            (refusal, Vec::new())
        } else {
            answer(request, db, layout, jobs, policy)
        };
        if ipc::write_frame(&mut stream, &response).is_err() {
            return;
        }
        // Files handed over with the answer follow it, as descriptors.
        let fds: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        if !fds.is_empty() && ipc::send_fds(&stream, &fds).is_err() {
            return;
        }
    }
}

pub(crate) fn failure(kind: FailureKind, message: impl Into<String>) -> ArchiveFailure {
    ArchiveFailure {
        kind,
        message: message.into(),
    }
}

pub(crate) fn db_failure(e: impl std::fmt::Display) -> ArchiveFailure {
    failure(FailureKind::Resources, e.to_string())
}

/// The answer to `request`, and the files it hands over (only a retrieve has any).
fn answer(
    request: Request,
    db: &Db,
    layout: &Layout,
    jobs: &mpsc::SyncSender<Job>,
    policy: &crate::exam::Policy,
) -> (Response, Vec<std::fs::File>) {
    let response = match request {
        Request::Retrieve(r) => {
            return match retrieve::retrieve(db, layout, &r) {
                Ok((r, files)) => (Response::Retrieval(r), files),
                Err(f) => (Response::Error(f), Vec::new()),
            }
        }
        Request::Exam { study_uid } => match db.exam_history(&study_uid, policy) {
            Ok(h) => Response::Exam(h.map(Box::new)),
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::Exchanges { limit } => match db::last_exchanges(db, limit.min(500) as usize) {
            Ok(v) => Response::Exchanges(v),
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::RecordWhitelistAttempt(a) => match db::append_whitelist_attempt(db, &a) {
            Ok(seq) => Response::WhitelistAttemptRecorded { seq },
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::WhitelistAttempts { limit } => {
            match db::whitelist_attempts(db, limit.min(500) as usize) {
                Ok(v) => Response::WhitelistAttempts(v),
                Err(e) => Response::Error(db_failure(e)),
            }
        }
        Request::RecordAccess(a) => match db::append_access(db, &a) {
            Ok(()) => Response::AccessRecorded,
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::Accesses { limit } => match db::accesses(db, limit.min(1000) as usize) {
            Ok(v) => Response::Accesses(v),
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::Exams => match db.exams(policy) {
            Ok(v) => Response::Exams(v),
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::NextWork { skip, can_send } => {
            match exams::next_work(db, layout, policy, &skip, can_send, now_ms()) {
                Ok(w) => Response::Work(w),
                Err(f) => Response::Error(f),
            }
        }
        Request::LotProgress(p) => match exams::record_progress(db, layout, &p) {
            Ok(()) => Response::ProgressRecorded,
            Err(f) => Response::Error(f),
        },
        Request::RecordLot(lot) => match exams::record_lot(db, layout, policy, &lot) {
            Ok(seq) => Response::LotRecorded { seq },
            Err(f) => Response::Error(f),
        },
        Request::RecordReport(report) => match record_report(db, layout, &report) {
            Ok(outcome) => Response::ReportRecorded(outcome),
            Err(f) => Response::Error(f),
        },
        Request::Ping => Response::Pong,
        Request::Summary => match db.summary(today_start_ms(now_ms())) {
            Ok(s) => Response::Summary(s),
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::Study { study_uid } => match db.study(&study_uid) {
            Ok(s) => Response::Study(s),
            Err(e) => Response::Error(db_failure(e)),
        },
        Request::RegisterInstance(instance) => {
            let (reply, answer) = mpsc::sync_channel(1);
            if jobs.send(Job { instance, reply }).is_err() {
                Response::Error(failure(FailureKind::Resources, "archive stopping"))
            } else {
                match answer.recv() {
                    Ok(Ok(outcome)) => Response::Registered(outcome),
                    Ok(Err(f)) => Response::Error(f),
                    Err(_) => Response::Error(failure(FailureKind::Resources, "archive stopping")),
                }
            }
        }
    };
    (response, Vec::new())
}

fn writer_loop(
    db: &Db,
    layout: &Layout,
    jobs: mpsc::Receiver<Job>,
    quiet_ms: i64,
    stop: &AtomicBool,
    alive: &AtomicI64,
) {
    let mut last_settle = 0i64;
    let mut flushers = flush::Flushers::spawn();
    // First versions of the last round, durable and acknowledged: their in-doubt marks go with
    // the next commit, or with a commit of their own once the queue is idle.
    let mut settled: Vec<String> = Vec::new();
    loop {
        alive.store(now_ms(), Ordering::Relaxed);
        let wait = if settled.is_empty() { 500 } else { 50 };
        match jobs.recv_timeout(Duration::from_millis(wait)) {
            Ok(first) => {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                settled = register_batch(
                    db,
                    layout,
                    &mut flushers,
                    batch,
                    std::mem::take(&mut settled),
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !settled.is_empty() {
                    match db.clear_in_doubt(&settled) {
                        Ok(()) => settled.clear(),
                        Err(e) => log::error!("clearing in-doubt marks: {e}"),
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    // Senders live in connection threads; do not wait for them forever.
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = db.clear_in_doubt(&settled);
                return;
            }
        }
        let now = now_ms();
        if now - last_settle >= 1000 {
            last_settle = now;
            match db.settle(now, quiet_ms) {
                Ok(settled) => {
                    for uid in settled {
                        log::info!(study_uid = uid.as_str(); "study {uid} is stable");
                    }
                }
                Err(e) => log::error!("marking studies stable: {e}"),
            }
        }
    }
}

/// One group commit. First versions take one flush round: their files, the directories that
/// received them and the index are flushed side by side (see "Crash consistency" in
/// ARCHITECTURE.md), with the rows marked in doubt until the round is known complete.
/// Returns the first versions now durable, whose marks the next commit clears.
fn register_batch(
    db: &Db,
    layout: &Layout,
    flushers: &mut flush::Flushers,
    batch: Vec<Job>,
    clear: Vec<String>,
) -> Vec<String> {
    let now = now_ms();
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            let f = db_failure(e);
            for job in batch {
                let _ = job.reply.send(Err(f.clone()));
            }
            return clear;
        }
    };
    let mut round = Round::default();
    let mut old_files: Vec<String> = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    let mut fatal: Option<ArchiveFailure> = None;
    for job in &batch {
        if fatal.is_some() {
            break;
        }
        match register_one(&txn, layout, &job.instance, now, &mut round) {
            Ok(Placed::Done(outcome, old)) => {
                old_files.extend(old);
                results.push(Ok(outcome));
            }
            Ok(Placed::Refused(f)) => results.push(Err(f)),
            Err(e) => fatal = Some(db_failure(e)),
        }
    }
    if fatal.is_none() {
        if let Err(e) = db::set_in_doubt(&txn, &round.in_doubt, &clear) {
            fatal = Some(db_failure(e));
        }
    }
    let outcome = match fatal {
        Some(f) => Err((f, false)),
        None => flush_round(txn, &round, flushers),
    };
    match outcome {
        Ok(()) => {
            for old in old_files {
                let _ = fs::remove_file(layout.abs(&old));
            }
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
            round.in_doubt
        }
        Err((f, committed)) => {
            log::error!("archive flush failed: {}", f.message);
            for job in batch {
                let _ = job.reply.send(Err(f.clone()));
            }
            if committed {
                // The rows are in the index but their bytes may not be on disk: check them now,
                // as recovery would, rather than leave an index entry nobody vouches for.
                let mut report = recovery::RecoveryReport::default();
                if let Err(e) = recovery::resolve_in_doubt(layout, db, &mut report) {
                    log::error!("checking in-doubt instances: {e}");
                }
                Vec::new()
            } else {
                // Nothing was committed: take back the files this batch put in place.
                for p in round.placed {
                    let _ = fs::remove_file(p);
                }
                clear
            }
        }
    }
}

/// What one batch leaves to flush.
#[derive(Default)]
struct Round {
    /// Every file this batch renamed into the store (taken back if the commit fails).
    placed: Vec<PathBuf>,
    /// Store files of first versions, renamed in but not yet fsync'd.
    files: Vec<PathBuf>,
    /// Directories that received a rename.
    dirs: BTreeSet<PathBuf>,
    /// SOP Instance UIDs of those first versions.
    in_doubt: Vec<String>,
}

/// Flushes a round: every file, every touched directory and the index commit at once, the
/// first two on the flush helpers, so the filesystem can fold them into one journal commit.
/// Nothing is answered before all have succeeded. `Err((_, true))`: the index committed but a
/// flush failed.
fn flush_round(
    txn: redb::WriteTransaction,
    round: &Round,
    flushers: &mut flush::Flushers,
) -> Result<(), (ArchiveFailure, bool)> {
    let flush_failure =
        |e: io::Error| failure(FailureKind::Resources, format!("fsync of store: {e}"));
    let (files, dirs) = flushers.start(round.files.clone(), round.dirs.iter().cloned().collect());
    let committed = txn.commit().map_err(db_failure);
    // Both helpers are waited for whatever the commit did: the next round must not start
    // while this one's flushes are still running.
    let (files, dirs) = (files.wait(), dirs.wait());
    committed.map_err(|f| (f, false))?;
    files.map_err(|e| (flush_failure(e), true))?;
    dirs.map_err(|e| (flush_failure(e), true))
}

enum Placed {
    Done(RegisterOutcome, Option<String>),
    Refused(ArchiveFailure),
}

fn register_one(
    txn: &redb::WriteTransaction,
    layout: &Layout,
    new: &NewInstance,
    now: i64,
    round: &mut Round,
) -> Result<Placed, DbError> {
    if !is_safe_staging_name(&new.staging_name) {
        return Ok(Placed::Refused(failure(
            FailureKind::Invalid,
            "bad staging file name",
        )));
    }
    for (what, uid) in [
        ("SOP Instance UID", &new.sop_instance_uid),
        ("Study Instance UID", &new.study_uid),
        ("Series Instance UID", &new.series_uid),
    ] {
        if !is_safe_uid(uid) {
            let _ = fs::remove_file(layout.staging().join(&new.staging_name));
            return Ok(Placed::Refused(failure(
                FailureKind::Invalid,
                format!("{what} is not a valid UID"),
            )));
        }
    }
    let staged = layout.staging().join(&new.staging_name);
    let previous = db::instance_in(txn, &new.sop_instance_uid)?;
    if let Some(p) = &previous {
        if p.dataset_sha256 == new.dataset_sha256 && !p.missing {
            let _ = fs::remove_file(&staged);
            return Ok(Placed::Done(RegisterOutcome::Duplicate, None));
        }
    }
    let refuse = |what: &str, e: io::Error| {
        let _ = fs::remove_file(&staged);
        Ok(Placed::Refused(failure(
            FailureKind::Resources,
            format!("{what}: {e}"),
        )))
    };
    let version = previous.as_ref().map_or(1, |p| p.version + 1);
    let rel = Layout::instance_rel(&new.study_uid, &new.sop_instance_uid, version);
    let dest = layout.abs(&rel);
    let dir = dest.parent().expect("has parent").to_path_buf();
    if !dir.is_dir() {
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return refuse("creating study directory", e);
            }
        }
        round.dirs.insert(layout.studies());
    }
    // A replacement supersedes an acknowledged version, which recovery would discard as stale
    // once the new row is durable: so its bytes and its name are made durable, in order, before
    // the commit. Replacements are rare; first versions take the one-round path below.
    let replacing = previous.is_some();
    if replacing {
        if let Err(e) = fs::File::open(&staged).and_then(|f| f.sync_all()) {
            return refuse("fsync of staging file", e);
        }
    }
    if let Err(e) = fs::rename(&staged, &dest) {
        return refuse("moving into store", e);
    }
    round.placed.push(dest.clone());
    if replacing {
        if let Err(e) = fsync_dir(&dir) {
            let _ = fs::remove_file(&dest);
            round.placed.pop();
            return refuse("fsync of study directory", e);
        }
    } else {
        round.files.push(dest);
        round.in_doubt.push(new.sop_instance_uid.clone());
        round.dirs.insert(dir);
    }
    let recorded = db::record_instance(txn, new, rel, version, previous.as_ref(), now)?;
    Ok(match recorded {
        Recorded::Stored => Placed::Done(RegisterOutcome::Stored, None),
        Recorded::Replaced { old_file } => Placed::Done(RegisterOutcome::Replaced, Some(old_file)),
    })
}

/// Records a report message durably, in order: the listener fsync'd the staging file; it is
/// renamed into `reports/`, the directory fsync'd, then the row committed — and only then does
/// the listener send AA. Reports are rare next to instances, so they take this strict path
/// rather than the writer's flush rounds. The same key again: nothing written, the stored ACK.
fn record_report(
    db: &Db,
    layout: &Layout,
    new: &crate::ipc::NewReport,
) -> Result<crate::ipc::ReportOutcome, ArchiveFailure> {
    let staged = layout.hl7_staging().join(&new.staging_name);
    if !is_safe_staging_name(&new.staging_name) {
        return Err(failure(FailureKind::Invalid, "bad staging file name"));
    }
    let txn = db.begin_write().map_err(db_failure)?;
    if let Some(row) = db::report_in(&txn, &new.key).map_err(db_failure)? {
        let _ = fs::remove_file(&staged);
        if row.facts.sha256 != new.facts.sha256 {
            // Not a re-send: another message under a control id already used. Refused, so that
            // neither is silently lost.
            return Err(failure(
                FailureKind::Invalid,
                "this MSH-10 was already used by this sender for a different message",
            ));
        }
        return Ok(crate::ipc::ReportOutcome {
            duplicate: true,
            ack_base64: row.facts.ack_base64,
        });
    }
    let name = format!(
        "{}-{}.hl7",
        now_ms(),
        new.facts.sha256.get(..16).unwrap_or("report")
    );
    let dest = layout.reports().join(&name);
    let resources =
        |what: &str, e: io::Error| failure(FailureKind::Resources, format!("{what}: {e}"));
    fs::rename(&staged, &dest).map_err(|e| {
        let _ = fs::remove_file(&staged);
        resources("moving the report into the store", e)
    })?;
    let undo = |f: ArchiveFailure| {
        let _ = fs::remove_file(&dest);
        f
    };
    fsync_dir(&layout.reports()).map_err(|e| undo(resources("fsync of reports", e)))?;
    let row = crate::archive::model::ReportRow {
        file: format!("reports/{name}"),
        received_ms: now_ms(),
        facts: new.facts.clone(),
    };
    db::insert_report(&txn, &new.key, &row).map_err(|e| undo(db_failure(e)))?;
    txn.commit().map_err(|e| undo(db_failure(e)))?;
    Ok(crate::ipc::ReportOutcome {
        duplicate: false,
        ack_base64: new.facts.ack_base64.clone(),
    })
}

/// Waits until the archive answers on the reader socket (used by the supervisor).
pub fn wait_ready(run_dir: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ipc::Client::connect(run_dir, Role::Reader, Duration::from_secs(2)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}
