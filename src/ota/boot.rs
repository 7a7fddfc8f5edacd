//! The A/B boot state: which root slot the firmware boots, what an install and a commit change,
//! and in which order, so that a power loss after any single write leaves a box that boots a
//! good slot by itself.
//!
//! The state lives where systemd-boot reads it: the file names of the ESP's boot entries,
//! following the Boot Loader Specification's boot counting. `drimbox-a.conf` is a good entry;
//! `drimbox-b+3.conf` is an entry on trial with three tries left; systemd-boot renames it to
//! `drimbox-b+2-1.conf` before booting it, and `systemd-bless-boot` renames it to
//! `drimbox-b.conf` once `boot-complete.target` is reached (which the supervisor's health
//! verdict gates). An entry at `+0` has used up its tries: systemd-boot sorts it last, so the
//! box falls back to the other slot without anyone's help.
//!
//! This module is the pure part (DESIGN.md: decisions apart from effects): [`BootState`] is read
//! from the entries' names and bodies, and its methods return [`Step`]s, each of which is one
//! atomic write; [`apply`] performs one ESP step. The installer performs the slot write and the
//! floor write itself. Tests inject a power loss after every step.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

/// The directory of the ESP holding the entries, as systemd-boot expects it.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Tries an update gets before the firmware falls back.
pub const TRIES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }
    pub fn from_letter(c: &str) -> Option<Slot> {
        match c {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// A release version: dot-separated numbers, compared number by number ("1.10" > "1.9").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(Vec<u64>);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let parts: Option<Vec<u64>> = s
            .split('.')
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    p.parse().ok()
                }
            })
            .collect();
        parts.map(Version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        write!(f, "{}", parts.join("."))
    }
}

/// What the box will not go below: raised only once a slot has proved healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    pub version: Version,
    pub epoch: u64,
}

/// One boot entry of a slot, as read from the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub slot: Slot,
    /// `None`: a good (blessed) entry. `Some((left, done))`: on trial.
    pub tries: Option<(u32, u32)>,
    pub version: Version,
    pub epoch: u64,
    /// The dm-verity root hash the entry's kernel command line mounts the slot with.
    pub root_hash: String,
}

impl Entry {
    pub fn file_name(&self) -> String {
        match self.tries {
            None => format!("drimbox-{}.conf", self.slot),
            Some((left, 0)) => format!("drimbox-{}+{left}.conf", self.slot),
            Some((left, done)) => format!("drimbox-{}+{left}-{done}.conf", self.slot),
        }
    }

    /// Whether the firmware still boots it before a good entry: not out of tries.
    fn bootable_first(&self) -> bool {
        !matches!(self.tries, Some((0, _)))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    #[error("boot entry {file}: {why}")]
    Entry { file: String, why: String },
    #[error("two boot entries for slot {0}")]
    TwoEntries(Slot),
    #[error("the running slot {0} is on trial: an update may start only from a blessed slot")]
    NotBlessed(Slot),
    #[error("the running slot {0} has no boot entry")]
    NoEntry(Slot),
    #[error("version {new} is not newer than the installed {installed}")]
    NotNewer { new: Version, installed: Version },
    #[error("security epoch {new} is below the floor {floor}")]
    EpochBelowFloor { new: u64, floor: u64 },
}

/// One atomic write of the install or commit sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Unlink an entry (then fsync the directory).
    RemoveEntry(String),
    /// Write the slot's root image, check it and flush it: the installer's job.
    WriteImage(Slot),
    /// Write an entry: temporary file, fsync, rename, fsync the directory.
    WriteEntry { name: String, body: String },
    /// Rename an entry (bless: drop the counter), then fsync the directory.
    RenameEntry { from: String, to: String },
    /// Write the floor on the data partition: the installer's job.
    RaiseFloor(Floor),
}

/// What an update to install says of itself (from its signed manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub version: Version,
    pub epoch: u64,
    pub root_hash: String,
    /// The rest of the kernel command line (verity table, console...), slot-specific.
    pub options: String,
    /// Whether the slot boots with an initramfs (`initrd-<slot>.img` beside its kernel): the
    /// test image's Debian kernel does, the production kernel does not.
    pub initrd: bool,
}

/// The entries of both slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootState {
    pub a: Option<Entry>,
    pub b: Option<Entry>,
}

/// Parses `drimbox-<slot>[+<left>[-<done>]].conf`; `None` for any other file.
fn parse_name(name: &str) -> Option<(Slot, Option<(u32, u32)>)> {
    let stem = name.strip_prefix("drimbox-")?.strip_suffix(".conf")?;
    let (slot, counter) = match stem.split_once('+') {
        Some((s, c)) => (s, Some(c)),
        None => (stem, None),
    };
    let slot = Slot::from_letter(slot)?;
    let tries = match counter {
        None => None,
        Some(c) => {
            let (left, done) = match c.split_once('-') {
                Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                None => (c.parse().ok()?, 0),
            };
            Some((left, done))
        }
    };
    Some((slot, tries))
}

/// The body of a slot's entry (Boot Loader Specification type 1).
pub fn entry_body(slot: Slot, update: &Update) -> String {
    format!(
        "title DRIMbox {version} (slot {slot})\n\
         version {version}\n\
         sort-key drimbox\n\
         linux /EFI/drimbox/linux-{slot}.efi\n\
         {initrd}\
         options {options} drimbox.roothash={root} drimbox.slot={slot} drimbox.epoch={epoch}\n",
        initrd = if update.initrd {
            format!("initrd /EFI/drimbox/initrd-{slot}.img\n")
        } else {
            String::new()
        },
        version = update.version,
        options = update.options,
        root = update.root_hash,
        epoch = update.epoch,
    )
}

/// Whether an entry's body boots with an initramfs.
pub fn entry_has_initrd(body: &str) -> bool {
    body.lines().any(|l| l.trim().starts_with("initrd "))
}

/// The `options` line of an entry's body.
pub fn entry_options(body: &str) -> Option<&str> {
    body.lines()
        .find_map(|l| l.trim().strip_prefix("options"))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .map(str::trim)
}

/// The slot-specific kernel options an entry carries (besides what [`entry_body`] appends).
/// The root hash is `drimbox.roothash=`, not systemd's `roothash=`: that one would make the
/// test image's initramfs set up a verity device of its own.
const SLOT_OPTIONS: [&str; 5] = [
    "drimbox.roothash=",
    "drimbox.slot=",
    "drimbox.epoch=",
    "dm-mod.waitfor=",
    "dm-mod.create=",
];

/// Splits a kernel command line as the kernel does: at blanks outside double quotes.
fn cmdline_words(options: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in options.char_indices() {
        match (c, start) {
            ('"', _) => {
                quoted = !quoted;
                start.get_or_insert(i);
            }
            (c, Some(s)) if c.is_whitespace() && !quoted => {
                words.push(&options[s..i]);
                start = None;
            }
            (c, None) if !c.is_whitespace() => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push(&options[s..]);
    }
    words
}

/// The kernel options of a slot written by the installer: the running entry's options
/// (console, watchdog, what the image was built with) with the slot-specific ones replaced by a
/// dm-verity table over the target partition. The installer writes the tree right after the
/// data (no superblock), so the hash tree starts at block `data_blocks`; any block that does not
/// match it resets the box (`restart_on_corruption`, as post-image.sh writes for slot A), which
/// on a slot on trial spends a try.
pub fn slot_options(
    running_options: &str,
    partuuid: &str,
    data_blocks: u64,
    root_hash: &str,
    salt_hex: &str,
) -> String {
    let dev = format!("PARTUUID={partuuid}");
    let sectors = data_blocks * 8;
    let mut words = vec![
        format!("dm-mod.waitfor={dev}"),
        format!(
            "dm-mod.create=\"drimbox-root,,,ro,0 {sectors} verity 1 {dev} {dev} 4096 4096 \
             {data_blocks} {data_blocks} sha256 {root_hash} {salt_hex} 1 restart_on_corruption\""
        ),
    ];
    words.extend(
        cmdline_words(running_options)
            .into_iter()
            .filter(|w| !SLOT_OPTIONS.iter().any(|p| w.starts_with(p)))
            .map(str::to_string),
    );
    words.join(" ")
}

fn parse_body(
    file: &str,
    slot: Slot,
    tries: Option<(u32, u32)>,
    body: &str,
) -> Result<Entry, BootError> {
    let bad = |why: &str| BootError::Entry {
        file: file.to_string(),
        why: why.to_string(),
    };
    let mut version = None;
    let mut options = None;
    for line in body.lines() {
        let (key, value) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match key {
            "version" => version = Some(value.trim()),
            "options" => options = Some(value.trim()),
            _ => {}
        }
    }
    let version = Version::parse(version.ok_or_else(|| bad("no version line"))?)
        .ok_or_else(|| bad("the version is not dot-separated numbers"))?;
    let options = options.ok_or_else(|| bad("no options line"))?;
    let option = |key: &str| {
        options
            .split_whitespace()
            .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    if option("drimbox.slot") != Some(&slot.letter().to_string()) {
        return Err(bad("its drimbox.slot= is not the slot its name says"));
    }
    let epoch = option("drimbox.epoch")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| bad("no drimbox.epoch= number"))?;
    let root_hash = option("drimbox.roothash")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad("no drimbox.roothash= of 64 hexadecimal digits"))?
        .to_string();
    Ok(Entry {
        slot,
        tries,
        version,
        epoch,
        root_hash,
    })
}

impl BootState {
    /// Reads the state from the entries directory's (file name, body) pairs; other files
    /// (another OS's entries, a temporary file left by a power loss) are ignored.
    pub fn from_entries<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<BootState, BootError> {
        let mut state = BootState::default();
        for (name, body) in files {
            let Some((slot, tries)) = parse_name(name) else {
                continue;
            };
            let entry = parse_body(name, slot, tries, body)?;
            let place = match slot {
                Slot::A => &mut state.a,
                Slot::B => &mut state.b,
            };
            if place.is_some() {
                return Err(BootError::TwoEntries(slot));
            }
            *place = Some(entry);
        }
        Ok(state)
    }

    pub fn entry(&self, slot: Slot) -> Option<&Entry> {
        match slot {
            Slot::A => self.a.as_ref(),
            Slot::B => self.b.as_ref(),
        }
    }

    fn entry_mut(&mut self, slot: Slot) -> &mut Option<Entry> {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// The entry systemd-boot boots by default: entries out of tries last, then the newest
    /// version first (every entry has the same sort-key).
    pub fn chosen(&self) -> Option<&Entry> {
        let mut entries: Vec<&Entry> = [self.a.as_ref(), self.b.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        entries.sort_by(|x, y| {
            y.bootable_first()
                .cmp(&x.bootable_first())
                .then(y.version.cmp(&x.version))
                .then(x.slot.letter().cmp(&y.slot.letter()))
        });
        entries.first().copied()
    }

    /// What the firmware does at power-on: the slot it boots and the counter rename it makes
    /// first (an entry on trial spends one try).
    pub fn firmware_boot(&self) -> Option<(Slot, Option<Step>)> {
        let e = self.chosen()?;
        let step = match e.tries {
            Some((left, done)) if left > 0 => {
                let spent = Entry {
                    tries: Some((left - 1, done + 1)),
                    ..e.clone()
                };
                Some(Step::RenameEntry {
                    from: e.file_name(),
                    to: spent.file_name(),
                })
            }
            _ => None,
        };
        Some((e.slot, step))
    }

    /// The steps that install `update` into the slot other than `running`: refused before any
    /// write unless the running slot is blessed, the version is newer than the running one and
    /// the epoch is not below the floor. The target's old entry goes first, so that a slot being
    /// written is never bootable; the new entry, on trial, is the last write and the commit point.
    pub fn plan_install(
        &self,
        running: Slot,
        floor: &Floor,
        update: &Update,
    ) -> Result<Vec<Step>, BootError> {
        let current = self.entry(running).ok_or(BootError::NoEntry(running))?;
        if current.tries.is_some() {
            return Err(BootError::NotBlessed(running));
        }
        let installed = current.version.clone().max(floor.version.clone());
        if update.version <= installed {
            return Err(BootError::NotNewer {
                new: update.version.clone(),
                installed,
            });
        }
        if update.epoch < floor.epoch {
            return Err(BootError::EpochBelowFloor {
                new: update.epoch,
                floor: floor.epoch,
            });
        }
        let target = running.other();
        let mut steps = Vec::new();
        if let Some(old) = self.entry(target) {
            steps.push(Step::RemoveEntry(old.file_name()));
        }
        steps.push(Step::WriteImage(target));
        let entry = Entry {
            slot: target,
            tries: Some((TRIES, 0)),
            version: update.version.clone(),
            epoch: update.epoch,
            root_hash: update.root_hash.clone(),
        };
        steps.push(Step::WriteEntry {
            name: entry.file_name(),
            body: entry_body(target, update),
        });
        Ok(steps)
    }

    /// The steps once the running slot is healthy (`boot-complete.target` reached): bless its
    /// entry if it is on trial, then raise the floor to it. Idempotent: after a power loss
    /// between the two, the next healthy boot raises the floor.
    pub fn plan_commit(&self, running: Slot, floor: &Floor) -> Result<Vec<Step>, BootError> {
        let e = self.entry(running).ok_or(BootError::NoEntry(running))?;
        let mut steps = Vec::new();
        if e.tries.is_some() {
            let blessed = Entry {
                tries: None,
                ..e.clone()
            };
            steps.push(Step::RenameEntry {
                from: e.file_name(),
                to: blessed.file_name(),
            });
        }
        let raised = Floor {
            version: e.version.clone().max(floor.version.clone()),
            epoch: e.epoch.max(floor.epoch),
        };
        if &raised != floor {
            steps.push(Step::RaiseFloor(raised));
        }
        Ok(steps)
    }

    /// An update that used up its tries: the slot and version the status page reports.
    pub fn failed_update(&self) -> Option<&Entry> {
        [self.a.as_ref(), self.b.as_ref()]
            .into_iter()
            .flatten()
            .find(|e| matches!(e.tries, Some((0, _))))
    }

    /// The state after `step` (ESP steps only; the others leave the entries as they are).
    pub fn after(&self, step: &Step) -> Result<BootState, BootError> {
        let mut next = self.clone();
        match step {
            Step::RemoveEntry(name) => {
                if let Some((slot, _)) = parse_name(name) {
                    *next.entry_mut(slot) = None;
                }
            }
            Step::WriteEntry { name, body } => {
                if let Some((slot, tries)) = parse_name(name) {
                    *next.entry_mut(slot) = Some(parse_body(name, slot, tries, body)?);
                }
            }
            Step::RenameEntry { to, .. } => {
                if let Some((slot, tries)) = parse_name(to) {
                    if let Some(e) = next.entry_mut(slot) {
                        e.tries = tries;
                    }
                }
            }
            Step::WriteImage(_) | Step::RaiseFloor(_) => {}
        }
        Ok(next)
    }
}

/// Reads the state from an ESP mounted at `esp`.
pub fn read(esp: &Path) -> Result<BootState, ReadError> {
    let dir = esp.join(ENTRIES_DIR);
    let mut files = Vec::new();
    for e in fs::read_dir(&dir).map_err(|e| ReadError::Io(dir.display().to_string(), e))? {
        let e = e.map_err(|e| ReadError::Io(dir.display().to_string(), e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if parse_name(&name).is_some() {
            let body = fs::read_to_string(e.path())
                .map_err(|err| ReadError::Io(e.path().display().to_string(), err))?;
            files.push((name, body));
        }
    }
    Ok(BootState::from_entries(
        files.iter().map(|(n, b)| (n.as_str(), b.as_str())),
    )?)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    State(#[from] BootError),
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Performs one ESP step on the ESP mounted at `esp`; `false` for a step that is not the ESP's
/// (the slot image, the floor), which the caller performs.
pub fn apply(esp: &Path, step: &Step) -> std::io::Result<bool> {
    let dir = esp.join(ENTRIES_DIR);
    match step {
        Step::RemoveEntry(name) => {
            match fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            fsync_dir(&dir)?;
        }
        Step::WriteEntry { name, body } => {
            // A temporary name systemd-boot does not read (it reads *.conf only).
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut f = fs::File::create(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, dir.join(name))?;
            fsync_dir(&dir)?;
        }
        Step::RenameEntry { from, to } => {
            fs::rename(dir.join(from), dir.join(to))?;
            fsync_dir(&dir)?;
        }
        Step::WriteImage(_) | Step::RaiseFloor(_) => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(version: &str, epoch: u64) -> Update {
        Update {
            version: Version::parse(version).unwrap(),
            epoch,
            root_hash: "ab".repeat(32),
            options: "ro".into(),
            initrd: false,
        }
    }

    fn state_with(a: &str, b: Option<(&str, &str)>) -> BootState {
        let a_body = entry_body(Slot::A, &update(a, 1));
        let b_file = b.map(|(name, v)| (name.to_string(), entry_body(Slot::B, &update(v, 1))));
        let mut files = vec![("drimbox-a.conf".to_string(), a_body)];
        files.extend(b_file);
        BootState::from_entries(files.iter().map(|(n, b)| (n.as_str(), b.as_str()))).unwrap()
    }

    fn floor(v: &str, epoch: u64) -> Floor {
        Floor {
            version: Version::parse(v).unwrap(),
            epoch,
        }
    }

    #[test]
    fn slot_options_keep_the_running_options_and_replace_the_verity_table() {
        let running = "root=/dev/dm-0 ro dm-mod.waitfor=PARTUUID=aaa \
                       dm-mod.create=\"drimbox-root,,,ro,0 8 verity 1 PARTUUID=aaa PARTUUID=aaa 4096 4096 1 2 sha256 00 11\" \
                       console=ttyS0,115200 drimbox.roothash=00 drimbox.slot=a drimbox.epoch=1";
        let new = slot_options(running, "bbb", 3, "cd", "ef");
        assert_eq!(
            cmdline_words(&new),
            vec![
                "dm-mod.waitfor=PARTUUID=bbb",
                "dm-mod.create=\"drimbox-root,,,ro,0 24 verity 1 PARTUUID=bbb PARTUUID=bbb 4096 4096 3 3 sha256 cd ef 1 restart_on_corruption\"",
                "root=/dev/dm-0",
                "ro",
                "console=ttyS0,115200",
            ]
        );
        // What entry_body then appends is read back from the entry.
        let u = Update {
            options: new,
            ..update("2.0", 4)
        };
        let state =
            BootState::from_entries([("drimbox-b+3.conf", entry_body(Slot::B, &u).as_str())])
                .unwrap();
        assert_eq!(state.b.unwrap().epoch, 4);
    }

    #[test]
    fn names_follow_boot_counting() {
        assert_eq!(parse_name("drimbox-a.conf"), Some((Slot::A, None)));
        assert_eq!(
            parse_name("drimbox-b+3.conf"),
            Some((Slot::B, Some((3, 0))))
        );
        assert_eq!(
            parse_name("drimbox-b+0-3.conf"),
            Some((Slot::B, Some((0, 3))))
        );
        for other in [
            "debian.conf",
            "drimbox-c.conf",
            "drimbox-a+x.conf",
            ".drimbox-a.conf.tmp",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn versions_compare_number_by_number() {
        assert!(Version::parse("1.10").unwrap() > Version::parse("1.9").unwrap());
        assert!(Version::parse("2").unwrap() > Version::parse("1.99.99").unwrap());
        assert_eq!(Version::parse("1..2"), None);
        assert_eq!(Version::parse("1.2-rc1"), None);
    }

    #[test]
    fn installs_are_refused_before_any_write_unless_newer_above_the_floor_and_from_a_blessed_slot()
    {
        let s = state_with("1.0", None);
        assert_eq!(
            s.plan_install(Slot::A, &floor("1.0", 2), &update("1.0", 2)),
            Err(BootError::NotNewer {
                new: Version::parse("1.0").unwrap(),
                installed: Version::parse("1.0").unwrap()
            })
        );
        // The floor counts even if the running slot is older (a fallback after a good update).
        assert!(matches!(
            s.plan_install(Slot::A, &floor("1.5", 2), &update("1.2", 2)),
            Err(BootError::NotNewer { .. })
        ));
        assert_eq!(
            s.plan_install(Slot::A, &floor("1.0", 2), &update("1.1", 1)),
            Err(BootError::EpochBelowFloor { new: 1, floor: 2 })
        );
        let on_trial = state_with("1.0", Some(("drimbox-b+2-1.conf", "1.1")));
        assert_eq!(
            on_trial.plan_install(Slot::B, &floor("1.0", 1), &update("1.2", 1)),
            Err(BootError::NotBlessed(Slot::B))
        );
        assert_eq!(
            s.plan_install(Slot::B, &floor("1.0", 1), &update("1.2", 1)),
            Err(BootError::NoEntry(Slot::B))
        );
        let plan = s
            .plan_install(Slot::A, &floor("1.0", 1), &update("1.1", 1))
            .unwrap();
        assert_eq!(plan[0], Step::WriteImage(Slot::B));
        assert!(matches!(&plan[1], Step::WriteEntry { name, .. } if name == "drimbox-b+3.conf"));
    }

    #[test]
    fn the_firmware_prefers_the_newest_entry_with_tries_left() {
        let s = state_with("1.0", Some(("drimbox-b+1-2.conf", "1.1")));
        let (slot, step) = s.firmware_boot().unwrap();
        assert_eq!(slot, Slot::B);
        assert_eq!(
            step,
            Some(Step::RenameEntry {
                from: "drimbox-b+1-2.conf".into(),
                to: "drimbox-b+0-3.conf".into()
            })
        );
        let spent = s.after(&step.unwrap()).unwrap();
        assert_eq!(spent.firmware_boot(), Some((Slot::A, None)));
        assert_eq!(spent.failed_update().unwrap().slot, Slot::B);
    }

    #[test]
    fn entries_that_disagree_with_their_names_are_refused() {
        let body = entry_body(Slot::A, &update("1.0", 1));
        assert!(matches!(
            BootState::from_entries([("drimbox-b.conf", body.as_str())]),
            Err(BootError::Entry { .. })
        ));
        assert_eq!(
            BootState::from_entries([
                ("drimbox-a.conf", body.as_str()),
                ("drimbox-a+3.conf", body.as_str())
            ]),
            Err(BootError::TwoEntries(Slot::A))
        );
        let no_hash = body.replace(&"ab".repeat(32), "zz");
        assert!(BootState::from_entries([("drimbox-a.conf", no_hash.as_str())]).is_err());
    }
}
