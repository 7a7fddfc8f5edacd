//! What a service process is allowed to be, decided before it starts, applied in order in the
//! child between fork and exec. firecracker's jailer in small: the plan is a value built (and
//! unit-tested) in the supervisor; the steps are a short, fixed, auditable list.
//!
//! Steps, in this order (each only async-signal-safe calls, no allocation):
//! 1. descriptors: the health pipe to fd 3, the sockets the supervisor opened for it to 4, 5, …
//! 2. `umask 027`: files it creates are not world-readable.
//! 3. resource limits: no core dumps (a core would hold patient data), a file-descriptor ceiling.
//! 4. identity, when the supervisor runs as root: supplementary groups, then gid, then uid (in
//!    that order: once the uid is dropped the others can no longer be changed). A non-root uid
//!    clears every capability set; the unit's bounding set already excludes all but three.
//! 5. `PR_SET_PDEATHSIG`: the child dies with the supervisor (no orphan after a `kill -9`).
//!    After the identity change, which clears it (prctl(2)); and if the supervisor is already
//!    gone by then, the start is abandoned.
//! 6. `PR_SET_NO_NEW_PRIVS`: nothing it executes can gain privileges again.

use std::ffi::CString;
use std::os::fd::RawFd;

/// First descriptor number a service finds its sockets at (3 is the health pipe).
pub const FIRST_SOCKET_FD: RawFd = 4;

/// The system user and groups a service runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the box's group (`drimbox`), to traverse the shared directories.
    pub groups: Vec<u32>,
}

/// Everything the child does to itself before exec.
#[derive(Debug, Clone)]
pub struct Plan {
    pub health_fd: RawFd,
    /// Descriptors to install at 4, 5, … in this order.
    pub sockets: Vec<RawFd>,
    pub identity: Option<Identity>,
    pub max_open_files: u64,
    /// The supervisor's pid: the parent the child must still have once the death signal is set.
    pub parent: libc::pid_t,
}

/// The user a service runs as on the box: `drimbox-<service>` (overlay/usr/lib/sysusers.d).
pub fn service_user(service: &str) -> String {
    format!("drimbox-{service}")
}

/// The box's shared group.
pub const BOX_GROUP: &str = "drimbox";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "system user {0} does not exist: create the service users first \
         (systemd-sysusers overlay/usr/lib/sysusers.d/drimbox.conf), or set \
         supervisor.run_as_service_users = false"
    )]
    NoUser(String),
    #[error("system group {0} does not exist (systemd-sysusers overlay/usr/lib/sysusers.d/drimbox.conf)")]
    NoGroup(String),
}

/// Looks a user up in the system's databases: (uid, primary gid).
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pw` and `buf`, which outlive the call.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// Looks a group up: its gid.
pub fn lookup_group(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `gr` and `buf`, which outlive the call.
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some(gr.gr_gid)
}

/// The identity of a service, from the system's user database.
pub fn identity(service: &str) -> Result<Identity, SandboxError> {
    let user = service_user(service);
    let (uid, gid) = lookup_user(&user).ok_or_else(|| SandboxError::NoUser(user.clone()))?;
    let box_gid = lookup_group(BOX_GROUP).ok_or_else(|| SandboxError::NoGroup(BOX_GROUP.into()))?;
    Ok(Identity {
        user,
        uid,
        gid,
        groups: groups_for(gid, box_gid),
    })
}

/// Supplementary groups of a service: its own and the box's, once each.
pub fn groups_for(own: u32, box_gid: u32) -> Vec<u32> {
    let mut g = vec![own, box_gid];
    g.dedup();
    g
}

impl Plan {
    /// Runs in the child after fork: the steps of the module comment, in order.
    /// Only async-signal-safe calls; every failure aborts the start (the exec never happens).
    pub fn apply(&self) -> std::io::Result<()> {
        fn check(r: libc::c_int) -> std::io::Result<()> {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        // SAFETY (whole block): plain syscalls on our own process, with arguments that live for
        // the duration of each call.
        unsafe {
            // Descriptors: the targets may collide with the sources, so move every source out of
            // the way first (above any target), then into place.
            let top = FIRST_SOCKET_FD + self.sockets.len() as RawFd + 64;
            let health = libc::fcntl(self.health_fd, libc::F_DUPFD_CLOEXEC, top);
            check(health)?;
            let mut moved = [0 as RawFd; 16];
            for (i, fd) in self.sockets.iter().enumerate().take(moved.len()) {
                moved[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, top);
                check(moved[i])?;
            }
            check(libc::dup2(health, 3))?;
            for (i, _) in self.sockets.iter().enumerate().take(moved.len()) {
                check(libc::dup2(moved[i], FIRST_SOCKET_FD + i as RawFd))?;
            }
            libc::umask(0o027);
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
            let files = libc::rlimit {
                rlim_cur: self.max_open_files,
                rlim_max: self.max_open_files,
            };
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &files))?;
            if let Some(id) = &self.identity {
                check(libc::setgroups(id.groups.len(), id.groups.as_ptr()))?;
                check(libc::setresgid(id.gid, id.gid, id.gid))?;
                check(libc::setresuid(id.uid, id.uid, id.uid))?;
                // Belt and braces: the drop must have happened, and must not be undoable.
                if libc::getuid() != id.uid || libc::geteuid() != id.uid || libc::setuid(0) == 0 {
                    return Err(std::io::Error::other("privilege drop did not hold"));
                }
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM))?;
            if libc::getppid() != self.parent {
                return Err(std::io::Error::other("the supervisor is gone"));
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// Descriptors a service was given, from the variable the supervisor set (`name=fd,...`).
pub fn inherited_fds(var: &str) -> Vec<(String, RawFd)> {
    std::env::var(var)
        .ok()
        .map(|v| parse_fd_list(&v))
        .unwrap_or_default()
}

/// `receiver=4,reader=5` → [("receiver", 4), ("reader", 5)]; anything malformed is skipped.
pub fn parse_fd_list(v: &str) -> Vec<(String, RawFd)> {
    v.split(',')
        .filter_map(|item| {
            let (name, fd) = item.split_once('=')?;
            let fd: RawFd = fd.parse().ok()?;
            (fd >= FIRST_SOCKET_FD && !name.is_empty()).then(|| (name.to_string(), fd))
        })
        .collect()
}

/// A service's listening TCP socket: inherited from the supervisor (which opens it, so that a
/// port below 1024 needs no capability in the service, and connections queue while the service
/// restarts), or bound here when the service runs on its own.
pub fn tcp_listener(
    addr: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    match inherited_fds(ENV_SOCKETS).iter().find(|(n, _)| n == name) {
        // SAFETY: the supervisor gave us this listening socket for our sole use.
        Some((_, fd)) => Ok(unsafe { std::net::TcpListener::from_raw_fd(*fd) }),
        None => std::net::TcpListener::bind(addr),
    }
}

/// The variable naming the sockets a service inherits.
pub const ENV_SOCKETS: &str = "DRIMBOX_SOCKETS";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_lists() {
        assert_eq!(
            parse_fd_list("receiver=4,reader=5"),
            vec![("receiver".to_string(), 4), ("reader".to_string(), 5)]
        );
        assert_eq!(
            parse_fd_list("dicom=4,bad,=7,x=2,y=z"),
            vec![("dicom".to_string(), 4)]
        );
        assert!(parse_fd_list("").is_empty());
    }

    #[test]
    fn users_and_groups() {
        assert_eq!(service_user("receiver"), "drimbox-receiver");
        assert_eq!(groups_for(900, 901), vec![900, 901]);
        assert_eq!(groups_for(900, 900), vec![900]);
        assert_eq!(lookup_user("root"), Some((0, 0)));
        assert_eq!(lookup_group("root"), Some(0));
        assert!(lookup_user("no-such-user-drimbox-test").is_none());
        assert!(matches!(
            identity("no-such-service-xyz"),
            Err(SandboxError::NoUser(_))
        ));
    }
}
