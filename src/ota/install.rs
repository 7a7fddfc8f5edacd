//! The effects of an update on the box: reading a bundle, writing the inactive slot, the ESP's
//! entries and the floor. Every decision is the pure modules' ([`super::bundle`] says whether a
//! bundle may be installed and whether a block is the signed one, [`super::boot`] which writes
//! an install or a commit makes and in which order); this module performs them, one durable
//! write at a time, and refuses before its first write whatever they refuse.
//!
//! Where things are: [`Disk`]. On the box, the GPT partitions by label, the ESP at `/efi` and
//! the floor on `/data`; the tests give files.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::boot::{self, BootError, BootState, Floor, ReadError, Slot, Step, Update, Version};
use super::bundle::{self, BundleError, Opened};
use super::verity::{hex, BLOCK};
use crate::pki::Certificate;

/// Where an install reads and writes.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The mounted ESP (systemd-boot's entries, the slots' kernels).
    pub esp: PathBuf,
    /// The root slots' block devices (or files).
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    /// The slots' partition UUIDs, which their kernel command lines name.
    pub partuuid_a: String,
    pub partuuid_b: String,
    /// The version/epoch floor, on the data partition.
    pub floor: PathBuf,
}

impl Disk {
    /// The disk of the image genimage.cfg describes (the one place the partition UUIDs are
    /// written down, compiled in here).
    pub fn on_the_box() -> Disk {
        const GENIMAGE: &str = include_str!("../../buildroot/board/drimbox/genimage.cfg");
        Disk {
            esp: PathBuf::from("/efi"),
            slot_a: PathBuf::from("/dev/disk/by-partlabel/root-a"),
            slot_b: PathBuf::from("/dev/disk/by-partlabel/root-b"),
            partuuid_a: genimage_partuuid(GENIMAGE, "root-a").unwrap_or_default(),
            partuuid_b: genimage_partuuid(GENIMAGE, "root-b").unwrap_or_default(),
            floor: PathBuf::from("/data/ota/floor"),
        }
    }

    fn slot(&self, slot: Slot) -> (&Path, &str) {
        match slot {
            Slot::A => (&self.slot_a, &self.partuuid_a),
            Slot::B => (&self.slot_b, &self.partuuid_b),
        }
    }
}

/// The `partition-uuid` of `partition NAME { ... }` in a genimage configuration.
pub fn genimage_partuuid(cfg: &str, name: &str) -> Option<String> {
    let mut inside = false;
    for line in cfg.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["partition", n, ..] if *n == name => inside = true,
            ["}", ..] if inside => return None,
            ["partition-uuid", "=", uuid, ..] if inside => {
                return Some(uuid.trim_matches(|c| c == '"' || c == ';').to_string())
            }
            _ => {}
        }
    }
    None
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Boot(#[from] BootError),
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("the floor {0}: {1}")]
    Floor(String, String),
    #[error("slot {slot} ({path}) holds {have} bytes; the update needs {need}")]
    SlotTooSmall {
        slot: Slot,
        path: String,
        need: u64,
        have: u64,
    },
    #[error(
        "slot {slot} reads back wrong at block {block} after the write: the entry is not written"
    )]
    ReadBack { slot: Slot, block: u64 },
    #[error("the running slot's entry {0} has no options line")]
    NoOptions(String),
    #[error("no partition UUID for slot {0}")]
    NoPartuuid(Slot),
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |e| InstallError::Io(what.display().to_string(), e)
}

/// Reads the floor; a box that never committed an update has none (version 0, epoch 0).
pub fn read_floor(path: &Path) -> Result<Floor, InstallError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Floor {
                version: Version::parse("0").expect("a version"),
                epoch: 0,
            })
        }
        Err(e) => return Err(io(path)(e)),
    };
    let bad = |why: &str| InstallError::Floor(path.display().to_string(), why.to_string());
    let mut version = None;
    let mut epoch = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("version", v)) => version = Version::parse(v.trim()),
            Some(("epoch", e)) => epoch = e.trim().parse().ok(),
            _ => {}
        }
    }
    Ok(Floor {
        version: version.ok_or_else(|| bad("no version=<dot-separated numbers> line"))?,
        epoch: epoch.ok_or_else(|| bad("no epoch=<number> line"))?,
    })
}

/// Writes the floor durably: temporary file, fsync, rename, directory fsync.
pub fn write_floor(path: &Path, floor: &Floor) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(".floor.tmp");
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(format!("version={}\nepoch={}\n", floor.version, floor.epoch).as_bytes())
        .map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The running slot, from the kernel command line the entry gave it.
pub fn running_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("drimbox.slot="))
        .and_then(Slot::from_letter)
}

fn read_at(file: &fs::File) -> impl FnMut(u64, usize) -> std::io::Result<Vec<u8>> + '_ {
    move |offset, len| {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// Opens a bundle file and checks everything that can be checked without the box: signature,
/// chain, compatible, layout, tree, and (if `whole`) every payload block and the image digest.
pub fn check_bundle(
    path: &Path,
    anchors: &[Certificate],
    at: i64,
    compatible: &str,
    whole: bool,
) -> Result<Opened, InstallError> {
    let (file, opened) = open_bundle(path, anchors, at, compatible)?;
    if whole {
        bundle::check_payload(&opened, read_at(&file), |_, _| {})?;
    }
    Ok(opened)
}

/// The bundle file, its signature, manifest and tree checked ([`bundle::open`]).
fn open_bundle(
    path: &Path,
    anchors: &[Certificate],
    at: i64,
    compatible: &str,
) -> Result<(fs::File, Opened), InstallError> {
    let file = fs::File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let opened = bundle::open(len, read_at(&file), anchors, at, compatible)?;
    Ok((file, opened))
}

/// The long phases of an install, in order: for an uploaded bundle, its re-hash against the
/// request ([`super::spool::take`]); the checking pass over the payload, the write of the slot
/// (each block checked again), the read-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Hashing,
    Checking,
    Writing,
    ReadingBack,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Hashing => "hashing",
            Phase::Checking => "checking",
            Phase::Writing => "writing",
            Phase::ReadingBack => "reading-back",
        }
    }
}

/// Whoever watches an install (a terminal, the status page): told each time a phase passes a
/// whole percent, 0 to 100.
pub type Watch<'a> = &'a mut dyn FnMut(Phase, u8);

/// Turns a count of units done (blocks, bytes) into the percents a [`Watch`] is told, once each.
pub(crate) struct Percent<'w, 'a> {
    watch: &'w mut Watch<'a>,
    phase: Phase,
    blocks: u64,
    told: Option<u8>,
}

impl<'w, 'a> Percent<'w, 'a> {
    pub(crate) fn new(watch: &'w mut Watch<'a>, phase: Phase, blocks: u64) -> Self {
        let mut p = Percent {
            watch,
            phase,
            blocks,
            told: None,
        };
        p.done(0);
        p
    }

    /// `done` units of the phase are behind it.
    pub(crate) fn done(&mut self, done: u64) {
        let pct = (done * 100)
            .checked_div(self.blocks)
            .unwrap_or(100)
            .min(100) as u8;
        if self.told != Some(pct) {
            self.told = Some(pct);
            (self.watch)(self.phase, pct);
        }
    }
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    pub slot: Slot,
    pub version: Version,
    pub epoch: u64,
    pub root_hash: String,
    pub entry: String,
}

/// Installs the bundle at `path` into the slot other than `running`: everything refused before
/// the first write (signature, chain, compatible, layout, version, epoch, every payload block
/// and the image digest, slot size); then the
/// target's old entry removed, the slot written block by block, each block checked against the
/// signed tree before it is written, the tree after it, flushed, read back and checked again;
/// the slot's kernel; and last the new entry, on trial, which is the commit point. `watch` is
/// told how far each long phase is.
#[allow(clippy::too_many_arguments)]
pub fn install(
    disk: &Disk,
    path: &Path,
    anchors: &[Certificate],
    at: i64,
    compatible: &str,
    running: Slot,
    mut watch: Watch,
) -> Result<Installed, InstallError> {
    let (file, opened) = open_bundle(path, anchors, at, compatible)?;
    let state = boot::read(&disk.esp)?;
    let floor = read_floor(&disk.floor)?;
    let target = running.other();
    let (slot_path, partuuid) = disk.slot(target);
    if partuuid.is_empty() {
        return Err(InstallError::NoPartuuid(target));
    }
    let running_entry = state
        .entry(running)
        .ok_or(BootError::NoEntry(running))?
        .file_name();
    let entry_path = disk.esp.join(boot::ENTRIES_DIR).join(&running_entry);
    let body = fs::read_to_string(&entry_path).map_err(io(&entry_path))?;
    let options = boot::entry_options(&body).ok_or(InstallError::NoOptions(running_entry))?;
    let m = &opened.manifest;
    let root_hash = hex(&m.verity_hash);
    let update = Update {
        version: m.version.clone(),
        epoch: m.epoch,
        root_hash: root_hash.clone(),
        options: boot::slot_options(
            options,
            partuuid,
            opened.payload_len / BLOCK as u64,
            &root_hash,
            &hex(&m.verity_salt),
        ),
        initrd: boot::entry_has_initrd(&body),
    };
    let steps = state.plan_install(running, &floor, &update)?;
    // A whole pass over the payload first, so that a tampered block is refused before the
    // first write; the writing pass checks every block again (the file could change between).
    let blocks = opened.payload_len / BLOCK as u64;
    let mut checking = Percent::new(&mut watch, Phase::Checking, blocks);
    bundle::check_payload(&opened, read_at(&file), |index, _| checking.done(index + 1))?;

    let mut slot = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(slot_path)
        .map_err(io(slot_path))?;
    let have = slot.seek(SeekFrom::End(0)).map_err(io(slot_path))?;
    let need = opened.payload_len + opened.tree.bytes.len() as u64;
    if have < need {
        return Err(InstallError::SlotTooSmall {
            slot: target,
            path: slot_path.display().to_string(),
            need,
            have,
        });
    }

    let mut entry = String::new();
    for step in &steps {
        match step {
            Step::WriteImage(s) => {
                write_slot(&opened, &file, &mut slot, slot_path, *s, &mut watch)?;
                copy_kernel(&disk.esp, running, *s)?;
            }
            Step::WriteEntry { name, .. } => {
                boot::apply(&disk.esp, step).map_err(io(&disk.esp))?;
                entry = name.clone();
            }
            Step::RaiseFloor(_) => unreachable!("an install never raises the floor"),
            _ => {
                boot::apply(&disk.esp, step).map_err(io(&disk.esp))?;
            }
        }
    }
    Ok(Installed {
        slot: target,
        version: update.version,
        epoch: update.epoch,
        root_hash,
        entry,
    })
}

fn write_slot(
    opened: &Opened,
    bundle: &fs::File,
    slot: &mut fs::File,
    slot_path: &Path,
    target: Slot,
    watch: &mut Watch,
) -> Result<(), InstallError> {
    let blocks = opened.payload_len / BLOCK as u64;
    let mut write_error = None;
    let mut writing = Percent::new(watch, Phase::Writing, blocks);
    bundle::check_payload(opened, read_at(bundle), |index, block| {
        if write_error.is_none() {
            write_error = slot.write_all_at(block, index * BLOCK as u64).err();
        }
        writing.done(index + 1);
    })?;
    if let Some(e) = write_error {
        return Err(io(slot_path)(e));
    }
    slot.write_all_at(&opened.tree.bytes, opened.payload_len)
        .map_err(io(slot_path))?;
    slot.sync_all().map_err(io(slot_path))?;
    // Read back what the device holds, not what was handed to it.
    let mut block = vec![0; BLOCK];
    let mut reading = Percent::new(watch, Phase::ReadingBack, blocks);
    for index in 0..blocks {
        slot.read_exact_at(&mut block, index * BLOCK as u64)
            .map_err(io(slot_path))?;
        reading.done(index + 1);
        if !opened.check_block(index, &block) {
            return Err(InstallError::ReadBack {
                slot: target,
                block: index,
            });
        }
    }
    let mut tree = vec![0; opened.tree.bytes.len()];
    slot.read_exact_at(&mut tree, opened.payload_len)
        .map_err(io(slot_path))?;
    if tree != opened.tree.bytes {
        return Err(InstallError::ReadBack {
            slot: target,
            block: opened.payload_len / BLOCK as u64,
        });
    }
    Ok(())
}

/// The bundle carries the root only: the new slot boots the kernel (and initramfs) the running
/// one booted, copied beside it under the slot's names.
fn copy_kernel(esp: &Path, from: Slot, to: Slot) -> Result<(), InstallError> {
    let dir = esp.join("EFI/drimbox");
    for (name, ext) in [("linux", "efi"), ("initrd", "img")] {
        let source = dir.join(format!("{name}-{from}.{ext}"));
        if !source.exists() {
            continue;
        }
        let dest = dir.join(format!("{name}-{to}.{ext}"));
        let tmp = dir.join(format!(".{name}-{to}.{ext}.tmp"));
        fs::copy(&source, &tmp).map_err(io(&tmp))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &dest).map_err(io(&dest))?;
    }
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))
}

/// Commits the running slot once it is healthy: blesses its entry if it is on trial, then
/// raises the floor. Returns the steps performed (none when there was nothing to do).
pub fn commit(disk: &Disk, running: Slot) -> Result<Vec<Step>, InstallError> {
    let state: BootState = boot::read(&disk.esp)?;
    let floor = read_floor(&disk.floor)?;
    let steps = state.plan_commit(running, &floor)?;
    for step in &steps {
        match step {
            Step::RaiseFloor(f) => write_floor(&disk.floor, f)?,
            _ => {
                boot::apply(&disk.esp, step).map_err(io(&disk.esp))?;
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_uuids_come_from_genimage_cfg() {
        let disk = Disk::on_the_box();
        assert_eq!(disk.partuuid_a, "ddc28169-cfdc-482a-9883-c2d4255377c1");
        assert_eq!(disk.partuuid_b, "dec92204-1190-4600-98e8-2e6e025a3fe4");
        assert_eq!(genimage_partuuid("partition x {\n}\n", "x"), None);
    }

    #[test]
    fn a_watch_is_told_every_percent_once_in_order() {
        let mut told = Vec::new();
        let mut record = |phase: Phase, pct: u8| told.push((phase, pct));
        let mut watch: Watch = &mut record;
        let mut p = Percent::new(&mut watch, Phase::Writing, 250);
        for done in 1..=250 {
            p.done(done);
        }
        let mut empty = Percent::new(&mut watch, Phase::ReadingBack, 0);
        empty.done(0);
        let want: Vec<(Phase, u8)> = (0..=100)
            .map(|pct| (Phase::Writing, pct))
            .chain([(Phase::ReadingBack, 100)])
            .collect();
        assert_eq!(told, want);
    }

    #[test]
    fn the_running_slot_is_the_kernel_command_lines() {
        assert_eq!(running_slot("ro drimbox.slot=b quiet"), Some(Slot::B));
        assert_eq!(running_slot("ro quiet"), None);
    }
}
