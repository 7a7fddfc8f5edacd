//! The health channel from a service to the supervisor.
//!
//! The supervisor gives each child the write end of a pipe (fd in `DRIMBOX_CONTROL_FD`). The
//! service writes one JSON [`Beat`] per line from its *main loop* — not from a helper thread, so
//! that a wedged loop stops beating and the supervisor notices (it then stops feeding systemd's
//! watchdog and kills the child). Writes are non-blocking: a beat that does not fit is dropped,
//! never waited for. Beats carry counters and the last error, never patient data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const ENV_FD: &str = "DRIMBOX_CONTROL_FD";

/// How often a service beats at most; the supervisor's heartbeat timeout is many times this.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Longest beat line the supervisor accepts.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// The service is serving (listening, accepting).
    pub ready: bool,
    pub counters: BTreeMap<String, u64>,
    /// Last error worth an operator's attention (no patient data).
    pub last_error: Option<String>,
}

/// The service side. Without `DRIMBOX_CONTROL_FD` (a service started by hand) it does nothing.
pub struct Reporter {
    out: Option<File>,
    last: Option<Instant>,
    last_error: Option<String>,
}

impl Reporter {
    pub fn from_env() -> Reporter {
        let fd = std::env::var(ENV_FD)
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        let out = fd.filter(|fd| *fd > 2).map(|fd| {
            // SAFETY: the supervisor handed us this descriptor for our sole use; we own it now.
            // Non-blocking and close-on-exec, so a slow reader never stalls the service.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
                File::from_raw_fd(fd)
            }
        });
        Reporter {
            out,
            last: None,
            last_error: None,
        }
    }

    /// Remembers an error for the next beats (shown on the status page).
    pub fn error(&mut self, message: impl Into<String>) {
        self.last_error = Some(message.into());
    }

    /// Beats if `BEAT_INTERVAL` has passed since the last beat; `counters` is only called then.
    pub fn beat(&mut self, ready: bool, counters: impl FnOnce() -> BTreeMap<String, u64>) {
        if self.last.is_some_and(|t| t.elapsed() < BEAT_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let beat = Beat {
            ready,
            counters: counters(),
            last_error: self.last_error.clone(),
        };
        let mut line = serde_json::to_vec(&beat).expect("beats serialize");
        line.push(b'\n');
        // One write(2) of less than PIPE_BUF is atomic: the reader never sees half a line.
        // A full pipe (EAGAIN) or a gone supervisor (EPIPE) just drops this beat.
        let _ = out.write(&line);
    }
}

/// The accept loop every TCP service shares: beat (from this loop, so a hung loop falls
/// silent), wait at most 200 ms for a connection, give it `TCP_NODELAY` and read/write
/// timeouts, hand it over. Returns once `stop` is set.
pub fn accept_loop(
    listener: &std::net::TcpListener,
    stop: &std::sync::atomic::AtomicBool,
    timeout: Duration,
    mut counters: impl FnMut() -> BTreeMap<String, u64>,
    mut on_connection: impl FnMut(std::net::TcpStream, std::net::SocketAddr),
) {
    use std::os::fd::AsRawFd;
    let mut reporter = Reporter::from_env();
    let fd = listener.as_raw_fd();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        reporter.beat(true, &mut counters);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(timeout));
                let _ = stream.set_write_timeout(Some(timeout));
                on_connection(stream, peer);
            }
            Err(e) => log::warn!("accept: {e}"),
        }
    }
}

/// The supervisor side: accumulates bytes read from a child's pipe and yields its last beat.
#[derive(Debug, Default)]
pub struct BeatReader {
    pending: Vec<u8>,
}

impl BeatReader {
    /// Feeds bytes read from the pipe; returns the newest complete, valid beat among them.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Beat> {
        self.pending.extend_from_slice(bytes);
        let mut newest = None;
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            if let Ok(b) = serde_json::from_slice::<Beat>(&line) {
                newest = Some(b);
            }
        }
        if self.pending.len() > MAX_LINE {
            // A line that long is not a beat: drop it rather than grow without bound.
            self.pending.clear();
        }
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_yields_the_newest_whole_beat() {
        let mut r = BeatReader::default();
        let a = serde_json::to_string(&Beat {
            ready: false,
            ..Beat::default()
        })
        .unwrap();
        let b = serde_json::to_string(&Beat {
            ready: true,
            ..Beat::default()
        })
        .unwrap();
        let input = format!("{a}\n{b}\n{{\"rea");
        let got = r.feed(input.as_bytes()).unwrap();
        assert!(got.ready);
        // The half line waits for its end.
        assert_eq!(
            r.feed(b"dy\":false,\"counters\":{},\"last_error\":\"x\"}\n")
                .unwrap()
                .last_error
                .as_deref(),
            Some("x")
        );
        assert!(r.feed(b"garbage\n").is_none());
        assert!(r.feed(&vec![b'x'; MAX_LINE + 1]).is_none());
        assert!(r.pending.is_empty());
    }
}
