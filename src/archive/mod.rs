//! The archive: sole owner of the redb index and the file store (see ARCHITECTURE.md).
//!
//! Threads, not async: one thread per client connection (a handful: one per DICOM association
//! plus readers), one **writer** thread that owns every write transaction, and nothing else. The
//! writer takes every registration waiting in its queue, moves their files into place, fsyncs the
//! touched directories once, and commits them in one transaction (group commit), then answers
//! each. Under one association that is one commit per instance; under four, fewer.

pub mod db;
pub mod model;
pub mod recovery;
pub mod store;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

struct Job {
    instance: Box<NewInstance>,
    reply: mpsc::SyncSender<Result<RegisterOutcome, ArchiveFailure>>,
}

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

    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(QUEUE);
    let quiet_ms = config.archive.stable_after.as_millis() as i64;
    let writer = {
        let db = db.clone();
        let layout = layout.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer_loop(&db, &layout, jobs_rx, quiet_ms, &stop))
            .expect("spawn writer")
    };

    let run_dir = &config.storage.run_dir;
    fs::create_dir_all(run_dir).map_err(|source| ArchiveError::Io {
        what: "creating",
        path: run_dir.clone(),
        source,
    })?;
    let mut listeners = Vec::new();
    for role in Role::ALL {
        let path = role.socket_path(run_dir);
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| ArchiveError::Io {
            what: "binding",
            path: path.clone(),
            source,
        })?;
        // Owner and group only: the supervisor gives each role's socket to that role's group.
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o660));
        listener.set_nonblocking(true).expect("nonblocking");
        listeners.push((role, listener));
    }
    log::info!(
        "archive ready: {} instances indexed, sockets in {}",
        db::count_instances(&db)?,
        run_dir.display()
    );

    // Accept loop: poll the few listeners; a connection gets its own thread.
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for (role, listener) in &listeners {
            match listener.accept() {
                Ok((stream, _)) => {
                    idle = false;
                    let _ = stream.set_nonblocking(false);
                    let db = db.clone();
                    let jobs = jobs_tx.clone();
                    let role = *role;
                    let _ = std::thread::Builder::new()
                        .name(format!("ipc-{}", role.name()))
                        .spawn(move || serve_connection(stream, role, &db, &jobs));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => log::warn!("accept on {} socket: {e}", role.name()),
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for role in Role::ALL {
        let _ = fs::remove_file(role.socket_path(run_dir));
    }
    drop(jobs_tx);
    let _ = writer.join();
    log::info!("archive stopped");
    Ok(())
}

fn serve_connection(mut stream: UnixStream, role: Role, db: &Db, jobs: &mpsc::SyncSender<Job>) {
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
        let response = if !role.allows(&request) {
            Response::Error(ArchiveFailure {
                kind: FailureKind::Forbidden,
                message: format!("role {} may not make this request", role.name()),
            })
        } else {
            answer(request, db, jobs)
        };
        if ipc::write_frame(&mut stream, &response).is_err() {
            return;
        }
    }
}

fn failure(kind: FailureKind, message: impl Into<String>) -> ArchiveFailure {
    ArchiveFailure {
        kind,
        message: message.into(),
    }
}

fn db_failure(e: impl std::fmt::Display) -> ArchiveFailure {
    failure(FailureKind::Resources, e.to_string())
}

fn answer(request: Request, db: &Db, jobs: &mpsc::SyncSender<Job>) -> Response {
    match request {
        Request::Ping => Response::Pong,
        Request::Summary => match db.summary() {
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
                return Response::Error(failure(FailureKind::Resources, "archive stopping"));
            }
            match answer.recv() {
                Ok(Ok(outcome)) => Response::Registered(outcome),
                Ok(Err(f)) => Response::Error(f),
                Err(_) => Response::Error(failure(FailureKind::Resources, "archive stopping")),
            }
        }
    }
}

fn writer_loop(
    db: &Db,
    layout: &Layout,
    jobs: mpsc::Receiver<Job>,
    quiet_ms: i64,
    stop: &AtomicBool,
) {
    let mut last_settle = 0i64;
    loop {
        match jobs.recv_timeout(Duration::from_millis(500)) {
            Ok(first) => {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                register_batch(db, layout, batch);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::Relaxed) {
                    // Senders live in connection threads; do not wait for them forever.
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = now_ms();
        if now - last_settle >= 1000 {
            last_settle = now;
            match db.settle(now, quiet_ms) {
                Ok(settled) => {
                    for uid in settled {
                        log::info!("study {uid} is stable");
                    }
                }
                Err(e) => log::error!("marking studies stable: {e}"),
            }
        }
    }
}

/// One group commit: move every job's file into place, fsync the directories, commit, answer.
fn register_batch(db: &Db, layout: &Layout, batch: Vec<Job>) {
    let now = now_ms();
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            let f = db_failure(e);
            for job in batch {
                let _ = job.reply.send(Err(f.clone()));
            }
            return;
        }
    };
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut placed: Vec<PathBuf> = Vec::new();
    let mut old_files: Vec<String> = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    let mut fatal: Option<ArchiveFailure> = None;
    for job in &batch {
        if fatal.is_some() {
            break;
        }
        let r = register_one(&txn, layout, &job.instance, now, &mut dirs, &mut placed);
        match r {
            Ok(Placed::Done(outcome, old)) => {
                old_files.extend(old);
                results.push(Ok(outcome));
            }
            Ok(Placed::Refused(f)) => results.push(Err(f)),
            Err(e) => fatal = Some(db_failure(e)),
        }
    }
    let committed = match fatal {
        Some(f) => Err(f),
        None => dirs
            .iter()
            .try_for_each(|d| fsync_dir(d))
            .map_err(|e| failure(FailureKind::Resources, format!("fsync of store: {e}")))
            .and_then(|()| txn.commit().map_err(db_failure)),
    };
    match committed {
        Ok(()) => {
            for old in old_files {
                let _ = fs::remove_file(layout.abs(&old));
            }
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(f) => {
            // Nothing was acknowledged: take back the files this batch put in place, so no
            // unindexed file lingers (recovery would adopt it, which is safe but surprising).
            for p in placed {
                let _ = fs::remove_file(p);
            }
            log::error!("archive commit failed: {}", f.message);
            for job in batch {
                let _ = job.reply.send(Err(f.clone()));
            }
        }
    }
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
    dirs: &mut BTreeSet<PathBuf>,
    placed: &mut Vec<PathBuf>,
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
    let version = previous.as_ref().map_or(1, |p| p.version + 1);
    let rel = Layout::instance_rel(&new.study_uid, &new.sop_instance_uid, version);
    let dest = layout.abs(&rel);
    let dir = dest.parent().expect("has parent").to_path_buf();
    if !dir.is_dir() {
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                let _ = fs::remove_file(&staged);
                return Ok(Placed::Refused(failure(
                    FailureKind::Resources,
                    format!("creating study directory: {e}"),
                )));
            }
        }
        dirs.insert(layout.studies());
    }
    if let Err(e) = fs::rename(&staged, &dest) {
        let _ = fs::remove_file(&staged);
        return Ok(Placed::Refused(failure(
            FailureKind::Resources,
            format!("moving into store: {e}"),
        )));
    }
    placed.push(dest);
    dirs.insert(dir);
    let recorded = db::record_instance(txn, new, rel, version, previous.as_ref(), now)?;
    Ok(match recorded {
        Recorded::Stored => Placed::Done(RegisterOutcome::Stored, None),
        Recorded::Replaced { old_file } => Placed::Done(RegisterOutcome::Replaced, Some(old_file)),
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
