//! `drimbox run`: starts each service as its own process, restarts the ones that die, and stops
//! them all on SIGTERM/SIGINT. Postfix's `master`, in small.
//!
//! Order matters at start: the archive first, and the others only once it answers, so that a
//! receiver never acknowledges what it cannot register. After that, each service is restarted on
//! its own; the receiver reconnects to a restarted archive by itself.

pub mod policy;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy::{Decision, History, RestartPolicy};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start service {service}: {source}")]
    Spawn {
        service: &'static str,
        source: std::io::Error,
    },
    #[error("the archive did not become ready within {0:?}")]
    ArchiveNotReady(Duration),
    #[error("service {0} is crash-looping; giving up")]
    CrashLoop(&'static str),
}

/// The services `drimbox run` starts, in start order.
pub const SERVICES: [&str; 2] = ["archive", "receiver"];

struct Service {
    name: &'static str,
    child: Option<Child>,
    started: Instant,
    history: History,
    restart_at: Option<Instant>,
    restarts: u32,
}

pub struct Supervisor {
    exe: PathBuf,
    config_path: PathBuf,
    config: Config,
    policy: RestartPolicy,
    epoch: Instant,
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
        }
    }

    fn spawn(&self, name: &'static str) -> Result<Child, SupervisorError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("service")
            .arg(name)
            .arg("--config")
            .arg(&self.config_path);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the child when
        // the supervisor dies, so a `kill -9` of the supervisor leaves no orphan service.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
            service: name,
            source,
        })?;
        log::info!("started {name} (pid {})", child.id());
        Ok(child)
    }

    fn wait_archive(&self) -> Result<(), SupervisorError> {
        let timeout = Duration::from_secs(60);
        if crate::archive::wait_ready(&self.config.storage.run_dir, timeout) {
            Ok(())
        } else {
            Err(SupervisorError::ArchiveNotReady(timeout))
        }
    }

    /// Runs until `stop` is set (Ok) or a service crash-loops (Err).
    pub fn run(&self, stop: Arc<AtomicBool>) -> Result<(), SupervisorError> {
        let mut services: Vec<Service> = Vec::new();
        let result = self.run_inner(&mut services, &stop);
        shutdown(&mut services);
        result
    }

    fn run_inner(
        &self,
        services: &mut Vec<Service>,
        stop: &AtomicBool,
    ) -> Result<(), SupervisorError> {
        for name in SERVICES {
            services.push(Service {
                name,
                child: Some(self.spawn(name)?),
                started: Instant::now(),
                history: History::default(),
                restart_at: None,
                restarts: 0,
            });
            if name == "archive" {
                self.wait_archive()?;
            }
        }
        log::info!("all services started");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            for s in services.iter_mut() {
                if let Some(child) = s.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        s.child = None;
                        let ran_for = s.started.elapsed();
                        log::warn!("{} exited ({status}) after {ran_for:?}", s.name);
                        let jitter = jitter_draw();
                        match self.policy.on_exit(
                            &mut s.history,
                            self.epoch.elapsed(),
                            ran_for,
                            jitter,
                        ) {
                            Decision::RestartAfter(d) => {
                                log::info!("restarting {} in {d:?}", s.name);
                                s.restart_at = Some(Instant::now() + d);
                            }
                            Decision::GiveUp => {
                                log::error!("{} is crash-looping; giving up", s.name);
                                return Err(SupervisorError::CrashLoop(s.name));
                            }
                        }
                    }
                }
                if s.child.is_none() && s.restart_at.is_some_and(|t| Instant::now() >= t) {
                    s.restart_at = None;
                    s.child = Some(self.spawn(s.name)?);
                    s.started = Instant::now();
                    s.restarts += 1;
                }
            }
        }
        log::info!("stopping services");
        Ok(())
    }
}

/// SIGTERM to every child, newest first (the archive last, so in-flight registrations finish),
/// then SIGKILL to any still there after 10 s.
fn shutdown(services: &mut [Service]) {
    for s in services.iter_mut().rev() {
        if let Some(child) = s.child.as_mut() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            log::info!("{} stopped", s.name);
        }
    }
}

/// A jitter draw in [0, 1) without a random-number dependency: the clock's nanoseconds.
fn jitter_draw() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1_000_000) / 1_000_000.0
}
