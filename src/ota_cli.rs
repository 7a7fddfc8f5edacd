//! `drimbox ota ...`: the command line over [`drimbox::ota`]. Exit codes: 0 done, 1 refused
//! (the bundle or the box's state says no), 2 a file or an option cannot be used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use drimbox::ota::boot::{self, Slot, Version};
use drimbox::ota::install::{self, Disk, InstallError};
use drimbox::ota::{bundle, report, spool, verity};
use drimbox::pki::Certificate;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;

/// Where the pinned update CA lives in the read-only root.
const KEYRING: &str = "/etc/drimbox/ota-ca.pem";

#[derive(clap::Args)]
pub struct Where {
    /// The mounted ESP.
    #[arg(long)]
    esp: Option<PathBuf>,
    /// Slot A's device (default: the root-a partition).
    #[arg(long)]
    slot_a: Option<PathBuf>,
    /// Slot B's device (default: the root-b partition).
    #[arg(long)]
    slot_b: Option<PathBuf>,
    /// The version/epoch floor file (default /data/ota/floor).
    #[arg(long)]
    floor: Option<PathBuf>,
    /// The running slot (default: drimbox.slot= on /proc/cmdline).
    #[arg(long)]
    running: Option<String>,
}

impl Where {
    fn disk(&self) -> Disk {
        let mut d = Disk::on_the_box();
        let set = |v: &Option<PathBuf>, d: &mut PathBuf| {
            if let Some(p) = v {
                *d = p.clone();
            }
        };
        set(&self.esp, &mut d.esp);
        set(&self.slot_a, &mut d.slot_a);
        set(&self.slot_b, &mut d.slot_b);
        set(&self.floor, &mut d.floor);
        d
    }

    fn running(&self) -> Result<Slot, String> {
        match &self.running {
            Some(s) => Slot::from_letter(s).ok_or(format!("--running `{s}`: a or b")),
            None => {
                let cmdline = std::fs::read_to_string("/proc/cmdline")
                    .map_err(|e| format!("/proc/cmdline: {e}"))?;
                install::running_slot(&cmdline).ok_or(
                    "/proc/cmdline has no drimbox.slot=: not booted from a slot (give --running)"
                        .into(),
                )
            }
        }
    }
}

/// What a bundle is checked against: the pinned CAs and this box's compatible string.
#[derive(clap::Args)]
pub struct Trust {
    /// Pinned CA certificates (PEM).
    #[arg(long, default_value = KEYRING)]
    keyring: PathBuf,
    #[arg(long, default_value = drimbox::ota::COMPATIBLE)]
    compatible: String,
}

#[derive(Subcommand)]
pub enum OtaCmd {
    /// Make a signed update bundle (vendor side): RAUC verity layout, ECDSA P-256 CMS signature.
    Bundle {
        /// The root filesystem image (erofs).
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = drimbox::ota::COMPATIBLE)]
        compatible: String,
        /// Dot-separated numbers, e.g. 1.4.2.
        #[arg(long)]
        version: String,
        /// The security epoch: boxes refuse any later bundle with a lower one.
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        /// The signer's certificate (PEM), with the codeSigning extended key usage.
        #[arg(long)]
        cert: PathBuf,
        /// The signer's private key (PEM PKCS#8, P-256). Never kept in the repository.
        #[arg(long)]
        key: PathBuf,
        /// Intermediate CA certificates (PEM) carried in the signature.
        #[arg(long)]
        intermediate: Vec<PathBuf>,
    },
    /// Check a bundle completely (signature, chain, compatible, tree, every payload block)
    /// without touching the box; print what it holds.
    Verify {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// Verify at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Install a bundle into the inactive slot; it boots on trial at the next boot.
    Install {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        #[command(flatten)]
        at: Where,
        /// Reboot into the new slot once it is installed.
        #[arg(long)]
        reboot: bool,
        /// Print how far each phase is on stderr, one line per percent
        /// ("progress: writing 37%").
        #[arg(long)]
        progress: bool,
    },
    /// Install what the status page's form spooled (drimbox-ota-spool.service): verified and
    /// installed like `install`; the outcome is recorded for the page, the spool emptied.
    InstallSpooled {
        #[arg(long, default_value = drimbox::config::DEFAULT_UPDATE_SPOOL)]
        spool: PathBuf,
        #[command(flatten)]
        trust: Trust,
        #[command(flatten)]
        at: Where,
    },
    /// Bless the running slot and raise the floor (run once the box is healthy).
    Commit {
        #[command(flatten)]
        at: Where,
    },
    /// Called when the health verdict fails (drimbox-unhealthy.service): on a slot on trial,
    /// reboot, which spends a try (systemd-boot then tries again or falls back to the other
    /// slot); on a committed slot, nothing (there is nothing to fall back to).
    Unhealthy {
        #[command(flatten)]
        at: Where,
        /// Reboot when on trial (without it, only say what would be done).
        #[arg(long)]
        reboot: bool,
    },
    /// The slots' entries, which one boots next, a failed update, the floor.
    Status {
        #[command(flatten)]
        at: Where,
    },
}

fn usage(command: &str, m: impl std::fmt::Display) -> ExitCode {
    eprintln!("drimbox ota {command}: {m}");
    ExitCode::from(2)
}

fn refused(command: &str, m: impl std::fmt::Display) -> ExitCode {
    eprintln!("drimbox ota {command}: refused: {m}");
    ExitCode::from(1)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<Certificate>, String> {
    let out = drimbox::pki::certificates_from_pem(&read(path)?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if out.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(out)
}

fn now() -> i64 {
    drimbox::archive::now_ms() / 1000
}

/// An install failure that is the bundle's or the state's verdict (exit 1), not an I/O error.
fn is_refusal(e: &InstallError) -> bool {
    !matches!(e, InstallError::Io(..))
}

pub fn run(cmd: OtaCmd) -> ExitCode {
    match cmd {
        OtaCmd::Bundle {
            image,
            out,
            compatible,
            version,
            epoch,
            cert,
            key,
            intermediate,
        } => make_bundle(
            &image,
            &out,
            &compatible,
            &version,
            epoch,
            &cert,
            &key,
            &intermediate,
        ),
        OtaCmd::Verify { bundle, trust, at } => {
            verify(&bundle, &trust.keyring, &trust.compatible, at.as_deref())
        }
        OtaCmd::Install {
            bundle,
            trust,
            at,
            reboot,
            progress,
        } => install_bundle(
            &bundle,
            &trust.keyring,
            &trust.compatible,
            &at,
            reboot,
            progress,
        ),
        OtaCmd::InstallSpooled { spool, trust, at } => {
            install_spooled(&spool, &trust.keyring, &trust.compatible, &at)
        }
        OtaCmd::Commit { at } => commit(&at),
        OtaCmd::Unhealthy { at, reboot } => unhealthy(&at, reboot),
        OtaCmd::Status { at } => status(&at),
    }
}

#[allow(clippy::too_many_arguments)]
fn make_bundle(
    image: &Path,
    out: &Path,
    compatible: &str,
    version: &str,
    epoch: u64,
    cert: &Path,
    key: &Path,
    intermediates: &[PathBuf],
) -> ExitCode {
    let c = "bundle";
    let Some(version) = Version::parse(version) else {
        return usage(
            c,
            format!("--version `{version}`: dot-separated numbers, e.g. 1.4.2"),
        );
    };
    let inputs = (|| -> Result<_, String> {
        let image_bytes = read(image)?;
        let signer = certificates(cert)?.remove(0);
        let key_pem = read(key)?;
        let key_der = PrivatePkcs8KeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{}: not a PEM PKCS#8 private key: {e}", key.display()))?;
        let mut chain = Vec::new();
        for p in intermediates {
            chain.extend(certificates(p)?);
        }
        let mut salt = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        Ok((image_bytes, signer, key_der, chain, salt))
    })();
    let (image_bytes, signer, key_der, chain, salt) = match inputs {
        Ok(i) => i,
        Err(e) => return usage(c, e),
    };
    let file_name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root.img".into());
    let built = bundle::build(&bundle::BundleInput {
        image: &image_bytes,
        image_file: &file_name,
        compatible,
        version: version.clone(),
        epoch,
        salt: &salt,
        signer: &signer,
        intermediates: &chain,
        pkcs8_key: key_der.secret_pkcs8_der(),
        signing_time: now() as u64,
    });
    let bytes = match built {
        Ok(b) => b,
        Err(e) => return usage(c, e),
    };
    // Whole or nothing: a bundle that is half there must not look like one.
    let tmp = out.with_extension("partial");
    let written = std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, out));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return usage(c, format!("{}: {e}", out.display()));
    }
    println!(
        "{}: {compatible} {version} epoch {epoch}, {} image bytes, signed by {}",
        out.display(),
        image_bytes.len(),
        signer.subject()
    );
    ExitCode::SUCCESS
}

fn verify(path: &Path, keyring: &Path, compatible: &str, at: Option<&str>) -> ExitCode {
    let c = "verify";
    let anchors = match certificates(keyring) {
        Ok(a) => a,
        Err(e) => return usage(c, e),
    };
    let at = match at {
        None => now(),
        Some(t) => match drimbox::status::parse_rfc3339(t) {
            Some(u) => u,
            None => return usage(c, format!("--at `{t}` is not an RFC 3339 time")),
        },
    };
    match install::check_bundle(path, &anchors, at, compatible, true) {
        Ok(o) => {
            let m = &o.manifest;
            println!("signature: ok, signed by {}", o.signer);
            println!("compatible: {}", m.compatible);
            println!("version: {}", m.version);
            println!("security epoch: {}", m.epoch);
            println!("image: {} ({} bytes)", m.image_file, m.image_size);
            println!("verity root hash: {}", verity::hex(&m.verity_hash));
            println!(
                "payload: {} blocks checked against the tree, image SHA-256 ok",
                o.payload_len / verity::BLOCK as u64
            );
            ExitCode::SUCCESS
        }
        Err(InstallError::Io(what, e)) => usage(c, format!("{what}: {e}")),
        Err(e) => refused(c, e),
    }
}

fn install_bundle(
    path: &Path,
    keyring: &Path,
    compatible: &str,
    at: &Where,
    reboot: bool,
    progress: bool,
) -> ExitCode {
    let c = "install";
    let anchors = match certificates(keyring) {
        Ok(a) => a,
        Err(e) => return usage(c, e),
    };
    let running = match at.running() {
        Ok(r) => r,
        Err(e) => return usage(c, e),
    };
    let mut watch = |phase: install::Phase, pct: u8| {
        if progress {
            eprintln!("progress: {} {pct}%", phase.name());
        }
    };
    match install::install(
        &at.disk(),
        path,
        &anchors,
        now(),
        compatible,
        running,
        &mut watch,
    ) {
        Ok(i) => {
            println!("{}", installed_line(&i));
            record_state(&at.disk(), Some(running));
            if reboot && !systemctl_reboot() {
                return usage(c, "installed, but `systemctl reboot` failed");
            }
            ExitCode::SUCCESS
        }
        Err(e) if is_refusal(&e) => refused(c, e),
        Err(e) => usage(c, e),
    }
}

fn installed_line(i: &install::Installed) -> String {
    format!(
        "installed {} (epoch {}) into slot {}: entry {} boots on trial next",
        i.version, i.epoch, i.slot, i.entry
    )
}

/// The install form's request (drimbox-ota-spool.service): the same checks and writes as
/// `install`, then the outcome recorded for the status page and the spool emptied, whatever
/// happened, so the path unit does not start it again.
fn install_spooled(dir: &Path, keyring: &Path, compatible: &str, at: &Where) -> ExitCode {
    let c = "install-spooled";
    let group = drimbox::supervisor::sandbox::lookup_group(
        &drimbox::supervisor::sandbox::service_user("status"),
    );
    // First, so that the page never shows what a power cut left of the previous attempt.
    if spool::pending(dir) {
        let _ = spool::set_progress(dir, "verifying the upload");
    }
    // The page polls the file; a failed write only costs it the percent.
    let mut watch = |phase: install::Phase, pct: u8| {
        let _ = spool::set_progress(dir, &format!("{} {pct}%", phase.name()));
    };
    let (request, result) = match spool::take(dir, &mut watch) {
        Ok(None) => {
            println!("nothing spooled in {}", dir.display());
            return ExitCode::SUCCESS;
        }
        Err(spool::Unusable { request, why }) => (request, Err((true, why))),
        Ok(Some((request, bundle))) => {
            let result = (|| {
                let anchors = certificates(keyring).map_err(|e| (false, e))?;
                let running = at.running().map_err(|e| (false, e))?;
                let i = install::install(
                    &at.disk(),
                    &bundle,
                    &anchors,
                    now(),
                    compatible,
                    running,
                    &mut watch,
                )
                .map_err(|e| (is_refusal(&e), e.to_string()))?;
                record_state(&at.disk(), Some(running));
                Ok(installed_line(&i))
            })();
            (Some(request), result)
        }
    };
    let request = request.unwrap_or(spool::Request {
        received_at_ms: 0,
        size: 0,
        sha256: String::new(),
        reboot: false,
        from: String::new(),
    });
    let reboot = request.reboot;
    let outcome = spool::Outcome {
        request,
        finished_at_ms: drimbox::archive::now_ms(),
        installed: result.is_ok(),
        message: match &result {
            Ok(line) if reboot => format!("{line}; rebooting into it"),
            Ok(line) => line.clone(),
            Err((true, why)) => format!("refused: {why}"),
            Err((false, why)) => format!("not installed: {why}"),
        },
    };
    if let Err(e) = spool::finish(dir, &outcome, group) {
        return usage(c, e);
    }
    match result {
        Ok(line) => {
            println!("{line}");
            if reboot && !systemctl_reboot() {
                return usage(c, "installed, but `systemctl reboot` failed");
            }
            ExitCode::SUCCESS
        }
        Err((true, why)) => refused(c, why),
        Err((false, why)) => usage(c, why),
    }
}

fn commit(at: &Where) -> ExitCode {
    let c = "commit";
    let running = match at.running() {
        Ok(r) => r,
        Err(e) => return usage(c, e),
    };
    let committed = install::commit(&at.disk(), running);
    if committed.is_ok() {
        record_state(&at.disk(), Some(running));
    }
    match committed {
        Ok(steps) if steps.is_empty() => {
            println!("slot {running}: already blessed, floor already raised");
            ExitCode::SUCCESS
        }
        Ok(steps) => {
            for s in steps {
                match s {
                    boot::Step::RenameEntry { from, to } => println!("blessed: {from} -> {to}"),
                    boot::Step::RaiseFloor(f) => {
                        println!("floor raised to {} epoch {}", f.version, f.epoch)
                    }
                    other => println!("{other:?}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) if is_refusal(&e) => refused(c, e),
        Err(e) => usage(c, e),
    }
}

fn unhealthy(at: &Where, reboot: bool) -> ExitCode {
    let c = "unhealthy";
    let running = match at.running() {
        Ok(r) => r,
        Err(e) => return usage(c, e),
    };
    let disk = at.disk();
    let state = match boot::read(&disk.esp) {
        Ok(s) => s,
        Err(e) => return usage(c, e),
    };
    record_state(&disk, Some(running));
    match state.entry(running) {
        Some(e) if e.tries.is_some() => {
            println!(
                "slot {running} ({}) is on trial and not healthy: {}",
                e.version,
                if reboot {
                    "rebooting (a try spent)"
                } else {
                    "a reboot would spend a try (--reboot)"
                }
            );
            if reboot && !systemctl_reboot() {
                return usage(c, "`systemctl reboot` failed");
            }
        }
        _ => println!(
            "slot {running} is committed and not healthy: not rebooting (nothing to fall back to)"
        ),
    }
    ExitCode::SUCCESS
}

fn systemctl_reboot() -> bool {
    std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .is_ok_and(|s| s.success())
}

/// Rewrites the update state the status page shows. Never fails the command that changed the
/// state: a summary not written is said, and rewritten at the next boot's commit.
fn record_state(disk: &Disk, running: Option<Slot>) {
    let written = (|| -> Result<(), String> {
        let state = boot::read(&disk.esp).map_err(|e| e.to_string())?;
        let floor = install::read_floor(&disk.floor).map_err(|e| e.to_string())?;
        let summary = report::describe(&state, &floor, running, now() * 1000);
        let path = report::state_path(&disk.floor);
        let group =
            drimbox::supervisor::sandbox::lookup_group(drimbox::supervisor::sandbox::BOX_GROUP);
        report::write(&path, &summary, group).map_err(|e| format!("{}: {e}", path.display()))
    })();
    if let Err(e) = written {
        eprintln!("drimbox ota: the update state for the status page was not written: {e}");
    }
}

fn status(at: &Where) -> ExitCode {
    let c = "status";
    let disk = at.disk();
    let state = match boot::read(&disk.esp) {
        Ok(s) => s,
        Err(e) => return usage(c, e),
    };
    let floor = match install::read_floor(&disk.floor) {
        Ok(f) => f,
        Err(e) => return usage(c, e),
    };
    for slot in [Slot::A, Slot::B] {
        match state.entry(slot) {
            None => println!("slot {slot}: no entry"),
            Some(e) => println!(
                "slot {slot}: {} epoch {}, {} ({})",
                e.version,
                e.epoch,
                report::entry_state(Some(e)),
                e.file_name()
            ),
        }
    }
    match state.chosen() {
        Some(e) => println!("next boot: slot {}", e.slot),
        None => println!("next boot: no bootable entry"),
    }
    if let Some(e) = state.failed_update() {
        println!("failed update: {} in slot {}", e.version, e.slot);
    }
    println!("floor: {} epoch {}", floor.version, floor.epoch);
    ExitCode::SUCCESS
}
