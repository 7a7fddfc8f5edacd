//! `drimbox admin password`: sets the administrator's credential of the status page's install
//! form, at install time (the distributor, as root, on the box's console). Exit codes: 0 set,
//! 2 refused (a short password, two different entries) or a file that cannot be written.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use drimbox::status::admin::{Credential, ITERATIONS, MIN_PASSWORD_CHARS, USER};

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Set the administrator's password (asked twice on a terminal, else the first line of
    /// standard input). Only its salted PBKDF2 hash is stored, readable by root and the
    /// status service.
    Password {
        #[arg(long, default_value = drimbox::config::DEFAULT_ADMIN_CREDENTIAL)]
        credential: PathBuf,
    },
}

pub fn run(cmd: AdminCmd) -> ExitCode {
    match cmd {
        AdminCmd::Password { credential } => match set_password(&credential) {
            Ok(()) => {
                println!(
                    "administrator credential written to {}: the status page's /update asks \
                     for user `{USER}` and this password",
                    credential.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("drimbox admin password: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn set_password(path: &Path) -> Result<(), String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = ask(&format!(
            "New administrator password (at least {MIN_PASSWORD_CHARS} characters): "
        ))?;
        if ask("Again: ")? != first {
            return Err("the two entries differ: nothing changed".into());
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("standard input: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    let credential = Credential::new(&password, ITERATIONS).map_err(|e| e.to_string())?;
    write(path, &credential.line()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a line from the terminal with echo off.
fn ask(prompt: &str) -> Result<String, String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    // SAFETY: termios is plain data filled by tcgetattr on fd 0, a terminal (checked).
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if have {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above; restored below.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have {
        // SAFETY: the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    eprintln!();
    read.map_err(|e| format!("terminal: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Replaced atomically (the store's `write_atomically_as`), 0640 from its creation, in the status
/// service's group when it exists (on the box) and we are root: no other service reads the hash.
fn write(path: &Path, line: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    // SAFETY: geteuid has no preconditions. Only root may give the file to that group.
    let root = unsafe { libc::geteuid() } == 0;
    let group = drimbox::supervisor::sandbox::lookup_group(
        &drimbox::supervisor::sandbox::service_user("status"),
    )
    .filter(|_| root);
    drimbox::archive::store::write_atomically_as(path, line.as_bytes(), Some(0o640), group)
}
