//! `drimbox egress print|apply`: the per-service egress filter of [`drimbox::egress`], printed
//! for review or loaded with `nft -f -` (drimbox-egress.service, before drimbox.service).
//! Exit codes: 0 done, 2 a configuration, a user or nft that cannot be used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Subcommand;
use drimbox::config::{self, Config};
use drimbox::egress;
use drimbox::supervisor::sandbox;

#[derive(Subcommand)]
pub enum EgressCmd {
    /// Print the nftables script for this configuration.
    Print {
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// SERVICE=UID instead of the system user's uid (tests in a network namespace).
        #[arg(long = "uid", hide = true)]
        uids: Vec<String>,
    },
    /// Load it (replaces the table in one transaction).
    Apply {
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long = "uid", hide = true)]
        uids: Vec<String>,
        /// The nft program.
        #[arg(long, default_value = "nft")]
        nft: PathBuf,
    },
}

fn fail(m: impl std::fmt::Display) -> ExitCode {
    eprintln!("drimbox egress: {m}");
    ExitCode::from(2)
}

fn script(path: &Path, overrides: &[String]) -> Result<String, String> {
    // Parsed, not `load`ed: the filter needs the URLs only, and it is loaded early at boot, in a
    // unit that sees /data read-only (load's checks that directories are writable would fail).
    // With the site file on /data: the unit is ordered after its mount.
    let config = Config::read(path).map_err(|e| e.to_string())?;
    let mut given = Vec::new();
    for o in overrides {
        let (name, uid) = o
            .split_once('=')
            .and_then(|(n, u)| Some((n.to_string(), u.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("--uid {o}: SERVICE=UID"))?;
        given.push((name, uid));
    }
    let allowed = egress::allowed(&config).map_err(|e| e.to_string())?;
    egress::ruleset(&allowed, |service| {
        given
            .iter()
            .find(|(n, _)| n == service)
            .map(|(_, u)| *u)
            .or_else(|| sandbox::lookup_user(&sandbox::service_user(service)).map(|(u, _)| u))
    })
    .map_err(|e| e.to_string())
}

pub fn run(cmd: EgressCmd) -> ExitCode {
    match cmd {
        EgressCmd::Print { config, uids } => match script(&config, &uids) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        EgressCmd::Apply { config, uids, nft } => {
            let s = match script(&config, &uids) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let child = Command::new(&nft)
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => return fail(format!("{}: {e}", nft.display())),
            };
            let written = child.stdin.take().expect("piped").write_all(s.as_bytes());
            let out = match child.wait_with_output() {
                Ok(o) => o,
                Err(e) => return fail(format!("{}: {e}", nft.display())),
            };
            if let Err(e) = written {
                return fail(format!("writing to {}: {e}", nft.display()));
            }
            if !out.status.success() {
                return fail(format!(
                    "{} refused the rules ({}): {}",
                    nft.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            println!(
                "egress filter loaded: table inet {} ({} services)",
                egress::TABLE,
                drimbox::supervisor::SERVICES.len()
            );
            ExitCode::SUCCESS
        }
    }
}
