//! What the box tells about its updates beyond the root-only commands: a summary of the A/B
//! state (read from the ESP, which only root may read) written to the data partition after
//! every change — an install, a commit, a failed health verdict — for the status page.
//!
//! [`describe`] makes the summary from the boot state (pure); [`write`] replaces the file
//! atomically; [`read`] is the status service's side.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::boot::{BootState, Entry, Floor, Slot};

/// Where the summary lives: beside the floor, on the data partition.
pub fn state_path(floor: &Path) -> PathBuf {
    floor.with_file_name("state.json")
}

/// One slot as the summary shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotLine {
    pub slot: String,
    /// None: no entry boots this slot.
    pub version: Option<String>,
    pub epoch: Option<u64>,
    /// `good`, `on trial, N tries left`, `failed: out of tries`, `no entry`.
    pub state: String,
}

/// The summary of the box's update state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateState {
    pub written_at_ms: i64,
    /// The slot the box runs from (None: not booted from a slot).
    pub running: Option<String>,
    pub slots: Vec<SlotLine>,
    pub next_boot: Option<String>,
    /// An update that used up its tries without becoming healthy: (version, slot).
    pub failed_update: Option<(String, String)>,
    /// `<version> epoch <n>`: the box refuses anything older.
    pub floor: String,
}

/// `good`, `on trial, N tries left`, `failed: out of tries` or `no entry`.
pub fn entry_state(e: Option<&Entry>) -> String {
    match e.map(|e| e.tries) {
        None => "no entry".into(),
        Some(None) => "good".into(),
        Some(Some((0, _))) => "failed: out of tries".into(),
        Some(Some((left, _))) => format!("on trial, {left} tries left"),
    }
}

pub fn describe(
    state: &BootState,
    floor: &Floor,
    running: Option<Slot>,
    now_ms: i64,
) -> UpdateState {
    UpdateState {
        written_at_ms: now_ms,
        running: running.map(|s| s.to_string()),
        slots: [Slot::A, Slot::B]
            .into_iter()
            .map(|slot| {
                let e = state.entry(slot);
                SlotLine {
                    slot: slot.to_string(),
                    version: e.map(|e| e.version.to_string()),
                    epoch: e.map(|e| e.epoch),
                    state: entry_state(e),
                }
            })
            .collect(),
        next_boot: state.chosen().map(|e| e.slot.to_string()),
        failed_update: state
            .failed_update()
            .map(|e| (e.version.to_string(), e.slot.to_string())),
        floor: format!("{} epoch {}", floor.version, floor.epoch),
    }
}

impl UpdateState {
    fn slot(&self, slot: &str) -> Option<&SlotLine> {
        self.slots.iter().find(|s| s.slot == slot)
    }

    /// The status page's one-liner.
    pub fn summary(&self) -> String {
        let Some(running) = &self.running else {
            return "not booted from an update slot".into();
        };
        match self.slot(running) {
            Some(SlotLine {
                version: Some(v),
                state,
                ..
            }) if state == "good" => format!("running {v} from slot {running}, committed"),
            Some(SlotLine {
                version: Some(v),
                state,
                ..
            }) => format!(
                "running {v} from slot {running}, {state}: committed once the box is healthy"
            ),
            _ => format!("running from slot {running}, which has no boot entry"),
        }
    }

    /// What an operator must look at: an update that failed and was rolled back.
    pub fn problems(&self) -> Vec<String> {
        match (&self.failed_update, &self.running) {
            (Some((version, slot)), Some(running)) if slot != running => vec![format!(
                "the update to {version} failed (never healthy in slot {slot}): \
                 the box went back to slot {running}"
            )],
            (Some((version, slot)), _) => {
                vec![format!("the update to {version} in slot {slot} failed")]
            }
            _ => Vec::new(),
        }
    }

    /// The status page's further lines.
    pub fn details(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .slots
            .iter()
            .map(|s| match (&s.version, s.epoch) {
                (Some(v), Some(e)) => format!("slot {}: {v} epoch {e}, {}", s.slot, s.state),
                _ => format!("slot {}: {}", s.slot, s.state),
            })
            .collect();
        out.push(match &self.next_boot {
            Some(s) => format!("next boot: slot {s}"),
            None => "next boot: no bootable entry".into(),
        });
        out.push(format!("floor: {}", self.floor));
        out
    }
}

/// Replaces the summary: temporary file, fsync, rename, directory fsync. Mode 0640 in `group`
/// (the box's group, so the status service can read it), the directory 0750. Ownership is
/// changed only where it is not already right: on the box the units run with the group (files
/// are born in it) and the directory comes from tmpfiles.d, and their seccomp filter forbids
/// chown(2) altogether.
pub fn write(path: &Path, s: &UpdateState, group: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(".state.json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?)?;
    f.set_permissions(fs::Permissions::from_mode(0o640))?;
    if let Some(g) = group {
        if f.metadata()?.gid() != g {
            std::os::unix::fs::fchown(&f, None, Some(g))?;
        }
        let d = fs::metadata(dir)?;
        if d.gid() != g {
            std::os::unix::fs::chown(dir, None, Some(g))?;
        }
        if d.mode() & 0o777 != 0o750 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o750))?;
        }
    }
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The summary, if there is one and it can be read.
pub fn read(path: &Path) -> Result<Option<UpdateState>, String> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::boot::Version;

    fn entry(slot: Slot, version: &str, tries: Option<(u32, u32)>) -> Entry {
        Entry {
            slot,
            tries,
            version: Version::parse(version).unwrap(),
            epoch: 1,
            root_hash: "00".repeat(32),
        }
    }

    fn floor() -> Floor {
        Floor {
            version: Version::parse("1.1").unwrap(),
            epoch: 1,
        }
    }

    #[test]
    fn a_committed_box() {
        let state = BootState {
            a: Some(entry(Slot::A, "1.0", None)),
            b: Some(entry(Slot::B, "1.1", None)),
        };
        let s = describe(&state, &floor(), Some(Slot::B), 5);
        assert_eq!(s.summary(), "running 1.1 from slot b, committed");
        assert!(s.problems().is_empty());
        assert_eq!(
            s.details(),
            [
                "slot a: 1.0 epoch 1, good",
                "slot b: 1.1 epoch 1, good",
                "next boot: slot b",
                "floor: 1.1 epoch 1"
            ]
        );
    }

    #[test]
    fn an_update_on_trial_and_one_rolled_back() {
        let state = BootState {
            a: Some(entry(Slot::A, "1.0", None)),
            b: Some(entry(Slot::B, "1.1", Some((2, 1)))),
        };
        let s = describe(&state, &floor(), Some(Slot::B), 5);
        assert_eq!(
            s.summary(),
            "running 1.1 from slot b, on trial, 2 tries left: committed once the box is healthy"
        );

        let state = BootState {
            a: Some(entry(Slot::A, "1.2", Some((0, 3)))),
            b: Some(entry(Slot::B, "1.1", None)),
        };
        let s = describe(&state, &floor(), Some(Slot::B), 5);
        assert_eq!(s.summary(), "running 1.1 from slot b, committed");
        assert_eq!(
            s.problems(),
            ["the update to 1.2 failed (never healthy in slot a): the box went back to slot b"]
        );
        assert_eq!(s.details()[0], "slot a: 1.2 epoch 1, failed: out of tries");
        assert_eq!(s.next_boot.as_deref(), Some("b"));
    }

    #[test]
    fn written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("ota/floor"));
        assert_eq!(read(&path), Ok(None));
        let s = describe(&BootState::default(), &floor(), None, 7);
        write(&path, &s, None).unwrap();
        assert_eq!(read(&path), Ok(Some(s.clone())));
        assert_eq!(s.summary(), "not booted from an update slot");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        fs::write(&path, "{").unwrap();
        assert!(read(&path).unwrap_err().contains("state.json"));
    }
}
