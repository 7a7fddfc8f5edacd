//! `drimbox run`: starts each service as its own process, watches its health, restarts the ones
//! that die or hang, tells systemd how the box is, and stops them all on SIGTERM/SIGINT.
//! Postfix's `master`, in small.
//!
//! Order matters at start: the archive first, and the others only once it answers, so that a
//! receiver never acknowledges what it cannot register. After that, each service is restarted on
//! its own; the others reconnect to a restarted archive by themselves.
//!
//! Health: every child beats on a pipe (`crate::control`). A child that has not beaten for
//! `supervisor.heartbeat_timeout_seconds` is *wedged*: the watchdog pings to systemd stop, and
//! the child is killed and restarted like a crashed one. A service that crash-loops is *failed*:
//! it is not restarted, the status page says so, and after `supervisor.failed_exit_delay_seconds`
//! the supervisor exits non-zero so that systemd's policy applies. The supervisor writes what it
//! knows to `<run_dir>/health.json` every second for the status page and `drimbox status`.

pub mod layout;
pub mod notify;
pub mod policy;
pub mod sandbox;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::control::{self, Beat, BeatReader};
use crate::status::model::{ServiceState, ServiceStatus};
use notify::Notifier;
use policy::{Decision, History, RestartPolicy};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start service {service}: {source}")]
    Spawn {
        service: &'static str,
        source: std::io::Error,
    },
    #[error("the archive did not become ready within {0:?}")]
    ArchiveNotReady(Duration),
    #[error("the archive exited while starting ({0}); its log says why")]
    ArchiveExited(String),
    #[error("service {0} is crash-looping; giving up")]
    CrashLoop(&'static str),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("cannot open {what}: {source}")]
    Listen {
        what: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
}

/// The services `drimbox run` starts, in start order.
pub const SERVICES: [&str; 7] = [
    "archive",
    "receiver",
    "hl7",
    "publisher",
    "whitelist",
    "wado",
    "status",
];

/// The supervisor's view of the box, written to `<run_dir>/health.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub supervisor_pid: u32,
    /// When the supervisor wrote this (ms since the epoch): a stale record means a hung supervisor.
    pub updated_at_ms: i64,
    /// Every service has reported ready at least once since the supervisor started.
    pub ready: bool,
    pub services: Vec<ServiceStatus>,
}

/// A record older than this means a hung supervisor (it rewrites it every second): the status
/// page's verdict and the health verdict both judge freshness by it.
pub const HEALTH_STALE_MS: i64 = 5_000;

pub fn health_path(run_dir: &Path) -> PathBuf {
    run_dir.join("health.json")
}

/// Reads the supervisor's last health record, if any.
pub fn read_health(run_dir: &Path) -> Option<HealthRecord> {
    let bytes = std::fs::read(health_path(run_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

struct Service {
    name: &'static str,
    child: Option<Child>,
    /// Read end of the child's health pipe.
    pipe: Option<File>,
    reader: BeatReader,
    beat: Option<Beat>,
    started: Instant,
    last_beat: Instant,
    state: ServiceState,
    history: History,
    restart_at: Option<Instant>,
    restarts: u32,
    last_exit: Option<String>,
    /// When the service was found wedged; it is killed one heartbeat timeout later.
    wedged_at: Option<Instant>,
}

impl Service {
    fn status(&self) -> ServiceStatus {
        let running = self.child.is_some();
        ServiceStatus {
            name: self.name.to_string(),
            state: self.state,
            pid: self.child.as_ref().map(|c| c.id()),
            uptime_seconds: if running {
                self.started.elapsed().as_secs()
            } else {
                0
            },
            restarts: self.restarts,
            last_error: self
                .beat
                .as_ref()
                .and_then(|b| b.last_error.clone())
                .or_else(|| self.last_exit.clone()),
            counters: self
                .beat
                .as_ref()
                .map(|b| b.counters.clone())
                .unwrap_or_default(),
        }
    }
}

pub struct Supervisor {
    exe: PathBuf,
    config_path: PathBuf,
    config: Config,
    policy: RestartPolicy,
    epoch: Instant,
    /// Set when running as root with `run_as_service_users`: who each service runs as.
    identities: Option<Identities>,
    sockets: Option<Sockets>,
}

/// The service users and the box group, resolved once at start.
struct Identities {
    by_service: Vec<(&'static str, sandbox::Identity)>,
    box_gid: u32,
}

impl Identities {
    fn of(&self, service: &str) -> &sandbox::Identity {
        &self
            .by_service
            .iter()
            .find(|(n, _)| *n == service)
            .expect("every service resolved")
            .1
    }
}

/// Listening sockets the supervisor opens and hands down (kept open across restarts).
struct Sockets {
    dicom: std::net::TcpListener,
    mllp: std::net::TcpListener,
    http: std::net::TcpListener,
    archive: Vec<(crate::ipc::Role, std::os::unix::net::UnixListener)>,
    /// `drimbox whitelist update` asks the updater here.
    whitelist_control: std::os::unix::net::UnixListener,
    /// WADO-RS, when `[wado]` is configured.
    wado: Option<std::net::TcpListener>,
}

impl Supervisor {
    pub fn new(config_path: &Path, config: Config) -> Supervisor {
        let policy = RestartPolicy {
            crash_loop_count: config.supervisor.crash_loop_count,
            crash_loop_window: config.supervisor.crash_loop_window,
            max: config.supervisor.restart_backoff_max,
            ..RestartPolicy::default()
        };
        Supervisor {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("drimbox")),
            config_path: config_path.to_owned(),
            config,
            policy,
            epoch: Instant::now(),
            identities: None,
            sockets: None,
        }
    }

    /// Before any service starts: who runs as whom, the directories with their owners, and
    /// the listening sockets.
    fn prepare(&mut self) -> Result<(), SupervisorError> {
        log::info!("configuration: {}", self.config.sources(&self.config_path));
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root && self.config.supervisor.run_as_service_users {
            let mut by_service = Vec::new();
            for name in SERVICES {
                by_service.push((name, sandbox::identity(name)?));
            }
            let box_gid = sandbox::lookup_group(sandbox::BOX_GROUP)
                .ok_or_else(|| sandbox::SandboxError::NoGroup(sandbox::BOX_GROUP.into()))?;
            let ids = Identities {
                by_service,
                box_gid,
            };
            layout::ensure(&self.config, &ids)?;
            log::info!(
                "services run as their own users ({})",
                SERVICES.map(sandbox::service_user).join(", ")
            );
            self.identities = Some(ids);
        } else if root {
            log::warn!("supervisor.run_as_service_users = false: every service runs as root");
        }
        self.sockets = Some(self.open_sockets()?);
        Ok(())
    }

    fn open_sockets(&self) -> Result<Sockets, SupervisorError> {
        use crate::ipc::Role;
        let tcp = |what: &str, addr: std::net::SocketAddr| {
            std::net::TcpListener::bind(addr).map_err(|source| SupervisorError::Listen {
                what: format!("{what} port {addr}"),
                source,
            })
        };
        let c = &self.config;
        let dicom = tcp(
            "the DICOM",
            std::net::SocketAddr::new(c.dicom.listen, c.dicom.port),
        )?;
        let http = tcp(
            "the status",
            std::net::SocketAddr::new(c.status.listen, c.status.port),
        )?;
        let mllp = tcp(
            "the HL7",
            std::net::SocketAddr::new(c.hl7.listen, c.hl7.port),
        )?;
        let mut archive = Vec::new();
        for role in Role::ALL {
            // A role's socket belongs to that role's group: connecting needs write permission
            // on it, so the file mode is the capability (the receiver's socket: its group only;
            // the reader's: the box group, for the status page and the administrators).
            let group = self.identities.as_ref().map(|ids| match role {
                Role::Receiver => ids.of("receiver").gid,
                Role::Hl7 => ids.of("hl7").gid,
                Role::Reader => ids.box_gid,
                Role::Publisher => ids.of("publisher").gid,
                Role::Whitelist => ids.of("whitelist").gid,
                Role::Wado => ids.of("wado").gid,
            });
            let path = role.socket_path(&c.storage.run_dir);
            let l = layout::bind_unix(&path, group).map_err(|source| SupervisorError::Listen {
                what: path.display().to_string(),
                source,
            })?;
            archive.push((role, l));
        }
        // The updater's control socket: its group only (and root, the administrator).
        let path = crate::whitelist::updater::control_path(&c.storage.run_dir);
        let group = self.identities.as_ref().map(|ids| ids.of("whitelist").gid);
        let whitelist_control =
            layout::bind_unix(&path, group).map_err(|source| SupervisorError::Listen {
                what: path.display().to_string(),
                source,
            })?;
        let wado = match &c.wado {
            Some(w) => Some(tcp(
                "the WADO-RS",
                std::net::SocketAddr::new(w.listen, w.port),
            )?),
            None => None,
        };
        Ok(Sockets {
            dicom,
            mllp,
            http,
            archive,
            whitelist_control,
            wado,
        })
    }

    /// The sockets a service inherits, and how it finds them (`name=fd` from fd 4 on).
    fn sockets_for(&self, name: &str) -> (Vec<i32>, String) {
        let Some(s) = &self.sockets else {
            return (Vec::new(), String::new());
        };
        let named: Vec<(&str, i32)> = match name {
            "archive" => s
                .archive
                .iter()
                .map(|(r, l)| (r.name(), l.as_raw_fd()))
                .collect(),
            "receiver" => vec![("dicom", s.dicom.as_raw_fd())],
            "hl7" => vec![("mllp", s.mllp.as_raw_fd())],
            "status" => vec![("http", s.http.as_raw_fd())],
            "wado" => s.wado.iter().map(|l| ("wado", l.as_raw_fd())).collect(),
            "whitelist" => vec![(
                crate::whitelist::updater::CONTROL_SOCKET,
                s.whitelist_control.as_raw_fd(),
            )],
            _ => Vec::new(),
        };
        let env = named
            .iter()
            .enumerate()
            .map(|(i, (n, _))| format!("{n}={}", sandbox::FIRST_SOCKET_FD + i as i32))
            .collect::<Vec<_>>()
            .join(",");
        (named.into_iter().map(|(_, fd)| fd).collect(), env)
    }

    /// Starts one service with the write end of a fresh health pipe as fd 3.
    fn spawn(&self, name: &'static str) -> Result<(Child, File), SupervisorError> {
        let err = |source| SupervisorError::Spawn {
            service: name,
            source,
        };
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (read_end, write_end) =
            unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (sockets, sockets_env) = self.sockets_for(name);
        let plan = sandbox::Plan {
            health_fd: write_end.as_raw_fd(),
            sockets,
            identity: self.identities.as_ref().map(|ids| ids.of(name).clone()),
            max_open_files: 4096,
            // SAFETY: getpid(2) cannot fail.
            parent: unsafe { libc::getpid() },
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("service")
            .arg(name)
            .arg("--config")
            .arg(&self.config_path)
            .env(control::ENV_FD, "3")
            .env(sandbox::ENV_SOCKETS, sockets_env)
            // Only the supervisor speaks to systemd for the box.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        // SAFETY: `Plan::apply` makes only async-signal-safe calls (see sandbox.rs).
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
        let child = cmd.spawn().map_err(err)?;
        drop(write_end);
        // SAFETY: fcntl on our own descriptor.
        unsafe {
            let flags = libc::fcntl(read_end.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(
                read_end.as_raw_fd(),
                libc::F_SETFL,
                flags | libc::O_NONBLOCK,
            );
        }
        log::info!("started {name} (pid {})", child.id());
        Ok((child, read_end))
    }

    fn start(&self, s: &mut Service) -> Result<(), SupervisorError> {
        let (child, pipe) = self.spawn(s.name)?;
        s.child = Some(child);
        s.pipe = Some(pipe);
        s.reader = BeatReader::default();
        s.beat = None;
        s.started = Instant::now();
        s.last_beat = Instant::now();
        s.state = ServiceState::Starting;
        Ok(())
    }

    /// Waits for the archive to answer; an archive that exits meanwhile is a start failure
    /// (named, with its exit status), not a minute of waiting.
    fn wait_archive(&self, archive: &mut Service) -> Result<(), SupervisorError> {
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if crate::archive::wait_ready(&self.config.storage.run_dir, Duration::from_millis(200))
            {
                return Ok(());
            }
            if let Some(status) = archive
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                archive.child = None;
                return Err(SupervisorError::ArchiveExited(status.to_string()));
            }
        }
        Err(SupervisorError::ArchiveNotReady(timeout))
    }

    /// Runs until `stop` is set (Ok) or a service crash-loops (Err, after the grace period).
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<(), SupervisorError> {
        self.prepare()?;
        let notifier = Notifier::from_env();
        let mut services: Vec<Service> = Vec::new();
        let result = self.run_inner(&mut services, &stop, &notifier);
        notifier.send("STOPPING=1");
        shutdown(&mut services);
        let run_dir = &self.config.storage.run_dir;
        let _ = std::fs::remove_file(health_path(run_dir));
        for role in crate::ipc::Role::ALL {
            let _ = std::fs::remove_file(role.socket_path(run_dir));
        }
        result
    }

    fn run_inner(
        &self,
        services: &mut Vec<Service>,
        stop: &AtomicBool,
        notifier: &Notifier,
    ) -> Result<(), SupervisorError> {
        for name in SERVICES {
            let mut s = Service {
                name,
                child: None,
                pipe: None,
                reader: BeatReader::default(),
                beat: None,
                started: Instant::now(),
                last_beat: Instant::now(),
                state: ServiceState::Starting,
                history: History::default(),
                restart_at: None,
                restarts: 0,
                last_exit: None,
                wedged_at: None,
            };
            self.start(&mut s)?;
            if name == "archive" {
                self.wait_archive(&mut s)?;
            }
            services.push(s);
        }
        log::info!("all services started");
        let heartbeat_timeout = self.config.supervisor.heartbeat_timeout;
        let mut announced_ready = false;
        let mut last_ping = Instant::now();
        let mut last_health = Instant::now() - Duration::from_secs(10);
        let mut last_status = String::new();
        let mut failed_since: Option<(Instant, &'static str)> = None;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            for s in services.iter_mut() {
                self.watch(s, heartbeat_timeout)?;
                if s.state == ServiceState::Failed && failed_since.is_none() {
                    failed_since = Some((Instant::now(), s.name));
                }
            }
            let ready = services
                .iter()
                .filter(|s| s.state == ServiceState::Ready)
                .count();
            let all_ready = ready == services.len();
            if all_ready && !announced_ready {
                announced_ready = true;
                log::info!("all services ready");
                notifier.send("READY=1");
            }
            let wedged = services.iter().any(|s| s.state == ServiceState::Wedged);
            if let Some(every) = notifier.watchdog_every {
                // No ping while a service is hung: systemd's watchdog then acts on the box.
                if !wedged && last_ping.elapsed() >= every {
                    notifier.send("WATCHDOG=1");
                    last_ping = Instant::now();
                }
            }
            let failed: Vec<&str> = services
                .iter()
                .filter(|s| s.state == ServiceState::Failed)
                .map(|s| s.name)
                .collect();
            let restarts = services.iter().map(|s| s.restarts).sum();
            let line = notify::status_line(ready, services.len(), restarts, &failed);
            if line != last_status {
                notifier.send(&line);
                last_status = line;
            }
            if last_health.elapsed() >= Duration::from_secs(1) {
                last_health = Instant::now();
                self.write_health(services, announced_ready);
            }
            if let Some((since, name)) = failed_since {
                if since.elapsed() >= self.config.supervisor.failed_exit_delay {
                    self.write_health(services, announced_ready);
                    return Err(SupervisorError::CrashLoop(name));
                }
            }
        }
        log::info!("stopping services");
        Ok(())
    }

    /// One look at one service: its beats, its exit, its silence, its restart.
    fn watch(&self, s: &mut Service, heartbeat_timeout: Duration) -> Result<(), SupervisorError> {
        if let Some(pipe) = s.pipe.as_mut() {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => {
                        s.pipe = None;
                        break;
                    }
                    Ok(n) => {
                        if let Some(b) = s.reader.feed(&buf[..n]) {
                            s.last_beat = Instant::now();
                            if matches!(s.state, ServiceState::Starting | ServiceState::Ready) {
                                s.state = if b.ready {
                                    ServiceState::Ready
                                } else {
                                    ServiceState::Starting
                                };
                            }
                            s.beat = Some(b);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        if let Some(child) = s.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                s.child = None;
                s.pipe = None;
                let ran_for = s.started.elapsed();
                let how = if s.state == ServiceState::Wedged {
                    format!(
                        "killed after {}s without a heartbeat",
                        2 * heartbeat_timeout.as_secs()
                    )
                } else {
                    format!("exited ({status}) after {}s", ran_for.as_secs())
                };
                log::warn!("{} {how}", s.name);
                s.last_exit = Some(how);
                match self.policy.on_exit(
                    &mut s.history,
                    self.epoch.elapsed(),
                    ran_for,
                    jitter_draw(),
                ) {
                    Decision::RestartAfter(d) => {
                        log::info!("restarting {} in {d:?}", s.name);
                        s.state = ServiceState::Restarting;
                        s.restart_at = Some(Instant::now() + d);
                    }
                    Decision::GiveUp => {
                        log::error!(
                            "{} is crash-looping; not restarted; the supervisor stops in {}s",
                            s.name,
                            self.config.supervisor.failed_exit_delay.as_secs()
                        );
                        s.state = ServiceState::Failed;
                        s.restart_at = None;
                    }
                }
            } else if matches!(s.state, ServiceState::Starting | ServiceState::Ready)
                && s.last_beat.elapsed() > heartbeat_timeout
            {
                // Wedged: withhold the watchdog pings (a child stuck for good — in the kernel,
                // say — then gets the whole box restarted by systemd), and give it one more
                // timeout before killing it ourselves.
                log::error!(
                    "{} sent no heartbeat for {}s: wedged; watchdog pings withheld",
                    s.name,
                    heartbeat_timeout.as_secs()
                );
                s.state = ServiceState::Wedged;
                s.wedged_at = Some(Instant::now());
            } else if s.state == ServiceState::Wedged {
                if s.last_beat.elapsed() <= heartbeat_timeout {
                    log::info!("{} is beating again", s.name);
                    s.state = ServiceState::Ready;
                    s.wedged_at = None;
                } else if s
                    .wedged_at
                    .is_some_and(|t| t.elapsed() >= heartbeat_timeout)
                {
                    log::error!("{} still wedged; killing it", s.name);
                    s.wedged_at = None;
                    if let Err(e) = child.kill() {
                        log_signal_failure(s.name, "SIGKILL", &e);
                    }
                }
            }
        }
        if s.child.is_none() && s.restart_at.is_some_and(|t| Instant::now() >= t) {
            s.restart_at = None;
            self.start(s)?;
            s.restarts += 1;
        }
        Ok(())
    }

    /// `<run_dir>/health.json`, replaced atomically (runtime state: no fsync needed).
    fn write_health(&self, services: &[Service], ready: bool) {
        let record = HealthRecord {
            supervisor_pid: std::process::id(),
            updated_at_ms: crate::archive::now_ms(),
            ready,
            services: services.iter().map(Service::status).collect(),
        };
        let path = health_path(&self.config.storage.run_dir);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&record).expect("health serializes");
        if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
            log::warn!("writing {}: {e}", path.display());
        }
    }
}

/// SIGTERM to every child, newest first (the archive last, so in-flight registrations finish),
/// then SIGKILL to any still there after 10 s.
fn shutdown(services: &mut [Service]) {
    for s in services.iter_mut().rev() {
        if let Some(child) = s.child.as_mut() {
            // SAFETY: plain kill(2) on our own child's pid.
            if unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
                log_signal_failure(s.name, "SIGTERM", &std::io::Error::last_os_error());
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        if let Err(e) = child.kill() {
                            log_signal_failure(s.name, "SIGKILL", &e);
                        }
                        let _ = child.wait();
                        break;
                    }
                }
            }
            log::info!("{} stopped", s.name);
        }
    }
}

/// A child that runs as its own user can be signalled by the root supervisor only with
/// CAP_KILL (kill(2): the sender's uid must otherwise match the target's): without it a wedged
/// service is never restarted and a stop waits for systemd's SIGKILL. Said loudly, once per try.
fn log_signal_failure(service: &str, signal: &str, e: &std::io::Error) {
    log::error!(
        "cannot send {signal} to {service}: {e}{}",
        if e.raw_os_error() == Some(libc::EPERM) {
            " (the supervisor needs CAP_KILL to signal services running as their own users)"
        } else {
            ""
        }
    );
}

/// A jitter draw in [0, 1) without a random-number dependency: the clock's nanoseconds.
fn jitter_draw() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1_000_000) / 1_000_000.0
}
