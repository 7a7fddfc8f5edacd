//! The helpers that fsync a flush round's files and directories while the writer commits the
//! index (see "Crash consistency" in ARCHITECTURE.md).
//!
//! Two long-lived threads, one for the files and one for the directories, so that the three
//! flushes of a round are in the kernel at once and the filesystem can fold them into one
//! journal commit. They used to be spawned per round; on a 2-vCPU box the two thread creations
//! and joins cost about a tenth of a small instance's whole time in the archive.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::store::fsync_dir;

/// What a helper flushes: regular files (data and metadata) or directories (their entries).
#[derive(Clone, Copy)]
enum Kind {
    Files,
    Dirs,
}

struct Task {
    paths: Vec<PathBuf>,
    done: mpsc::SyncSender<io::Result<()>>,
}

/// One helper thread; it lives as long as its `Helper`.
struct Helper {
    kind: Kind,
    tasks: mpsc::Sender<Task>,
}

impl Helper {
    fn spawn(kind: Kind) -> Helper {
        let (tasks, rx) = mpsc::channel::<Task>();
        let name = match kind {
            Kind::Files => "fsync-files",
            Kind::Dirs => "fsync-dirs",
        };
        // If the thread cannot be made, `tasks` has no receiver: `start` tries again, and
        // the round fails with "flush helper is gone" (A700) rather than skipping the flush.
        let _ = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for task in rx {
                    let result = task.paths.iter().try_for_each(|p| flush(kind, p));
                    let _ = task.done.send(result);
                }
            });
        Helper { kind, tasks }
    }

    /// Starts flushing `paths`; the returned `Pending` says how it went. A helper found gone
    /// is replaced once, so one lost thread does not fail every round after it.
    fn start(&mut self, paths: Vec<PathBuf>) -> Pending {
        let (done, rx) = mpsc::sync_channel(1);
        if paths.is_empty() {
            let _ = done.send(Ok(()));
            return Pending(Some(rx));
        }
        let task = match self.tasks.send(Task { paths, done }) {
            Ok(()) => return Pending(Some(rx)),
            Err(mpsc::SendError(task)) => task,
        };
        *self = Helper::spawn(self.kind);
        match self.tasks.send(task) {
            Ok(()) => Pending(Some(rx)),
            Err(_) => Pending(None),
        }
    }
}

fn flush(kind: Kind, path: &Path) -> io::Result<()> {
    match kind {
        Kind::Files => File::open(path)?.sync_all(),
        Kind::Dirs => fsync_dir(path),
    }
}

/// A flush under way on a helper.
pub struct Pending(Option<mpsc::Receiver<io::Result<()>>>);

impl Pending {
    /// Waits for the flush. A helper that died (it cannot, short of a bug) is a failed flush.
    pub fn wait(self) -> io::Result<()> {
        let gone = || io::Error::other("flush helper is gone");
        self.0.ok_or_else(gone)?.recv().map_err(|_| gone())?
    }
}

/// The writer's two helpers.
pub struct Flushers {
    files: Helper,
    dirs: Helper,
}

impl Flushers {
    pub fn spawn() -> Flushers {
        Flushers {
            files: Helper::spawn(Kind::Files),
            dirs: Helper::spawn(Kind::Dirs),
        }
    }

    /// Starts the fsync of every file and of every directory, each list on its helper.
    pub fn start(&mut self, files: Vec<PathBuf>, dirs: Vec<PathBuf>) -> (Pending, Pending) {
        (self.files.start(files), self.dirs.start(dirs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_files_and_dirs_and_names_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a");
        std::fs::write(&f, b"x").unwrap();
        let mut flushers = Flushers::spawn();
        let (files, dirs) = flushers.start(vec![f.clone()], vec![tmp.path().to_path_buf()]);
        files.wait().unwrap();
        dirs.wait().unwrap();
        // Nothing to flush is a success at once.
        let (files, dirs) = flushers.start(Vec::new(), Vec::new());
        files.wait().unwrap();
        dirs.wait().unwrap();
        // A file that is not there is the round's failure, not a silent skip.
        let (files, _dirs) = flushers.start(vec![tmp.path().join("gone"), f], Vec::new());
        let e = files.wait().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_helper_found_gone_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        // A helper whose thread is gone: its queue has no receiver.
        let mut helper = Helper {
            kind: Kind::Dirs,
            tasks: mpsc::channel().0,
        };
        helper.start(vec![tmp.path().to_path_buf()]).wait().unwrap();
        helper.start(vec![tmp.path().to_path_buf()]).wait().unwrap();
    }
}
