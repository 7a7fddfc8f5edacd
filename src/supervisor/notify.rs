//! sd_notify(3) without libsystemd: one datagram per state change to `$NOTIFY_SOCKET`.
//!
//! `READY=1` once every service has reported ready, `WATCHDOG=1` every half `$WATCHDOG_USEC`
//! while the supervisor's loop runs *and* no service is wedged, `STATUS=` a one-line summary,
//! `STOPPING=1` when the stop begins. Outside systemd (no `NOTIFY_SOCKET`) it does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    /// Half the watchdog interval systemd asked for, if it asked.
    pub watchdog_every: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let s = UnixDatagram::unbound().ok()?;
            Some((s, path))
        });
        // WATCHDOG_PID, when set, names the process the watchdog is for: us, or nobody.
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0 && for_us)
            .map(|us| Duration::from_micros(us / 2));
        Notifier {
            socket,
            watchdog_every,
        }
    }

    pub fn send(&self, message: &str) {
        let Some((s, path)) = &self.socket else {
            return;
        };
        let r = if let Some(name) = path.strip_prefix('@') {
            // Abstract namespace socket (systemd uses these in containers).
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| s.send_to_addr(message.as_bytes(), &a))
        } else {
            s.send_to(message.as_bytes(), path)
        };
        if let Err(e) = r {
            log::warn!("sd_notify: {e}");
        }
    }
}

/// The `STATUS=` line: what systemctl status shows next to the unit.
pub fn status_line(ready: usize, total: usize, restarts: u32, failed: &[&str]) -> String {
    if failed.is_empty() {
        format!("STATUS={ready}/{total} services ready, {restarts} restart(s)")
    } else {
        format!(
            "STATUS=failing: {} crash-looped; {ready}/{total} services ready",
            failed.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line(2, 2, 0, &[]),
            "STATUS=2/2 services ready, 0 restart(s)"
        );
        assert_eq!(
            status_line(1, 2, 5, &["receiver"]),
            "STATUS=failing: receiver crash-looped; 1/2 services ready"
        );
    }
}
