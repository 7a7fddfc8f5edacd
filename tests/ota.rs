//! The OTA building blocks against real peers and real files: our dm-verity trees against
//! `veritysetup` (cryptsetup), and the A/B boot state with a power loss injected after every
//! write of an install and of a commit, on file-backed slots and a directory standing for the
//! ESP, booted each time by a model of systemd-boot's boot counting.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use drimbox::ota::boot::{self, BootState, Floor, Slot, Step, Update, Version};
use drimbox::ota::verity::{hex, HashTree, BLOCK};

/// Deterministic bytes that differ from block to block.
fn payload(blocks: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ seed as u32;
    (0..blocks * BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn veritysetup(args: &[&str]) -> std::process::Output {
    Command::new("veritysetup")
        .args(args)
        .output()
        .expect("veritysetup (cryptsetup-bin) is installed by scripts/test")
}

#[test]
fn our_hash_trees_are_veritysetups() {
    let dir = tempfile::tempdir().unwrap();
    let salt = b"drimbox-test-salt-0123456789abcd";
    // One block (no tree), one level, two levels, three levels.
    for blocks in [1usize, 100, 129, 128 * 128 + 3] {
        let data = payload(blocks, blocks as u8);
        let data_path = dir.path().join(format!("data-{blocks}"));
        fs::write(&data_path, &data).unwrap();
        let ours = HashTree::build(&data[..], data.len() as u64, salt).unwrap();
        assert_eq!(ours.bytes.len(), HashTree::size_for(blocks as u64));

        // veritysetup builds the same tree and root from the same data and salt.
        let theirs_path = dir.path().join(format!("theirs-{blocks}"));
        let o = veritysetup(&[
            "format",
            "--no-superblock",
            "--salt",
            &hex(salt),
            data_path.to_str().unwrap(),
            theirs_path.to_str().unwrap(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let root = out
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap()
            .trim();
        assert_eq!(root, hex(&ours.root_hash), "{blocks} blocks");
        let theirs = fs::read(&theirs_path).unwrap();
        assert_eq!(
            &theirs[..ours.bytes.len()],
            &ours.bytes[..],
            "{blocks} blocks"
        );

        // veritysetup accepts our tree, and refuses it once one data byte is changed.
        let ours_path = dir.path().join(format!("ours-{blocks}"));
        fs::write(&ours_path, &ours.bytes).unwrap();
        let verify = |data: &Path| {
            veritysetup(&[
                "verify",
                "--no-superblock",
                "--salt",
                &hex(salt),
                &format!("--data-blocks={blocks}"),
                data.to_str().unwrap(),
                ours_path.to_str().unwrap(),
                &hex(&ours.root_hash),
            ])
        };
        let o = verify(&data_path);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut changed = data.clone();
        changed[data.len() / 2] ^= 1;
        let changed_path = dir.path().join(format!("changed-{blocks}"));
        fs::write(&changed_path, &changed).unwrap();
        assert!(!verify(&changed_path).status.success(), "{blocks} blocks");
        // And so do we, at the block veritysetup would trip on.
        let index = (data.len() / 2 / BLOCK) as u64;
        let at = index as usize * BLOCK;
        assert!(!ours.check_block(index, &changed[at..at + BLOCK]));
    }
}

/// A box on files: the ESP's entries directory, two slot "partitions", the floor.
struct TestBox {
    esp: tempfile::TempDir,
    floor: Floor,
}

const SLOT_BLOCKS: usize = 64;

impl TestBox {
    fn slot_path(&self, slot: Slot) -> std::path::PathBuf {
        self.esp.path().join(format!("root-{slot}.img"))
    }

    /// A factory-fresh box: version 1.0 in slot A, blessed; slot B holds zeros.
    fn factory() -> TestBox {
        let esp = tempfile::tempdir().unwrap();
        fs::create_dir_all(esp.path().join(boot::ENTRIES_DIR)).unwrap();
        let b = TestBox {
            esp,
            floor: Floor {
                version: Version::parse("1.0").unwrap(),
                epoch: 1,
            },
        };
        let image = payload(SLOT_BLOCKS, 1);
        fs::write(b.slot_path(Slot::A), &image).unwrap();
        fs::write(b.slot_path(Slot::B), vec![0u8; SLOT_BLOCKS * BLOCK]).unwrap();
        let update = update_of(&image, "1.0", 1);
        boot::apply(
            b.esp.path(),
            &Step::WriteEntry {
                name: "drimbox-a.conf".into(),
                body: boot::entry_body(Slot::A, &update),
            },
        )
        .unwrap();
        b
    }

    fn state(&self) -> BootState {
        boot::read(self.esp.path()).unwrap()
    }

    /// Performs one step; `cut` stops a slot write after that many blocks (a power loss).
    fn perform(&mut self, step: &Step, image: &[u8], tree: &HashTree, cut: Option<usize>) {
        match step {
            Step::WriteImage(slot) => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(self.slot_path(*slot))
                    .unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                for (i, block) in image.chunks(BLOCK).enumerate() {
                    if Some(i) == cut {
                        return;
                    }
                    assert!(tree.check_block(i as u64, block), "block {i}");
                    f.write_all(block).unwrap();
                }
                f.sync_all().unwrap();
            }
            Step::RaiseFloor(floor) => self.floor = floor.clone(),
            other => assert!(boot::apply(self.esp.path(), other).unwrap()),
        }
    }

    /// Power-on: the firmware picks an entry and spends a try. The slot it boots must hold
    /// exactly the image its entry's root hash names: the box never boots a half-written slot.
    fn power_on(&mut self) -> Slot {
        let state = self.state();
        let (slot, spend) = state.firmware_boot().expect("a bootable entry");
        let entry = state.entry(slot).unwrap().clone();
        let bytes = fs::read(self.slot_path(slot)).unwrap();
        let tree = HashTree::build(&bytes[..], bytes.len() as u64, b"salt").unwrap();
        assert_eq!(
            hex(&tree.root_hash),
            entry.root_hash,
            "slot {slot} boots but does not hold the image its entry names"
        );
        if let Some(step) = spend {
            assert!(boot::apply(self.esp.path(), &step).unwrap());
        }
        slot
    }

    /// Boot-complete on `running`: bless and raise the floor, stopping after `upto` steps.
    fn commit(&mut self, running: Slot, upto: usize) {
        let steps = self.state().plan_commit(running, &self.floor).unwrap();
        for step in steps.iter().take(upto) {
            self.perform(step, &[], &dummy_tree(), None);
        }
    }
}

fn dummy_tree() -> HashTree {
    HashTree::build(&[0u8; BLOCK][..], BLOCK as u64, b"salt").unwrap()
}

fn update_of(image: &[u8], version: &str, epoch: u64) -> Update {
    let tree = HashTree::build(image, image.len() as u64, b"salt").unwrap();
    Update {
        version: Version::parse(version).unwrap(),
        epoch,
        root_hash: hex(&tree.root_hash),
        options: "console=ttyS0 ro".into(),
    }
}

#[test]
fn a_power_loss_after_any_write_of_an_install_or_a_commit_boots_a_good_slot() {
    let image = payload(SLOT_BLOCKS, 2);
    let tree = HashTree::build(&image[..], image.len() as u64, b"salt").unwrap();
    let update = update_of(&image, "1.1", 2);
    let plan = TestBox::factory()
        .state()
        .plan_install(Slot::A, &TestBox::factory().floor, &update)
        .unwrap();
    assert_eq!(plan.len(), 2, "{plan:?}");

    // Every cut: after k whole steps, and in the middle of the slot write.
    let mut cuts: Vec<(usize, Option<usize>)> = (0..=plan.len()).map(|k| (k, None)).collect();
    cuts.push((0, Some(SLOT_BLOCKS / 2)));
    for (done, partial) in cuts {
        let mut b = TestBox::factory();
        for step in &plan[..done] {
            b.perform(step, &image, &tree, None);
        }
        if let Some(blocks) = partial {
            b.perform(&plan[done], &image, &tree, Some(blocks));
        }
        let installed = done == plan.len();
        let first = b.power_on();
        assert_eq!(
            first,
            if installed { Slot::B } else { Slot::A },
            "cut {done}/{partial:?}"
        );
        if !installed {
            continue;
        }
        // A power loss at each point of the commit; the next healthy boot finishes it.
        for upto in 0..=2 {
            let mut c = TestBox::factory();
            for step in &plan {
                c.perform(step, &image, &tree, None);
            }
            assert_eq!(c.power_on(), Slot::B);
            c.commit(Slot::B, upto);
            let again = c.power_on();
            if upto == 0 {
                // Not blessed: still on trial, one more try spent.
                assert_eq!(again, Slot::B);
                continue;
            }
            assert_eq!(again, Slot::B, "commit cut after {upto}");
            assert_eq!(c.state().entry(Slot::B).unwrap().tries, None);
            c.commit(Slot::B, usize::MAX);
            assert_eq!(c.floor.version, Version::parse("1.1").unwrap());
            assert_eq!(c.floor.epoch, 2);
            // Blessed and floored: every later boot is B, nothing left to do.
            for _ in 0..4 {
                assert_eq!(c.power_on(), Slot::B);
            }
            assert!(c.state().plan_commit(Slot::B, &c.floor).unwrap().is_empty());
        }
    }
}

#[test]
fn an_update_that_never_becomes_healthy_falls_back_to_the_old_slot_by_itself() {
    let image = payload(SLOT_BLOCKS, 3);
    let tree = HashTree::build(&image[..], image.len() as u64, b"salt").unwrap();
    let update = update_of(&image, "2.0", 1);
    let mut b = TestBox::factory();
    let plan = b.state().plan_install(Slot::A, &b.floor, &update).unwrap();
    for step in &plan {
        b.perform(step, &image, &tree, None);
    }
    for n in 0..boot::TRIES {
        assert_eq!(b.power_on(), Slot::B, "try {n}");
    }
    // Tries used up: A from now on, and the failed version is known for the status page.
    for _ in 0..3 {
        assert_eq!(b.power_on(), Slot::A);
    }
    let failed = b.state().failed_update().cloned().unwrap();
    assert_eq!(
        (failed.slot, failed.version.to_string()),
        (Slot::B, "2.0".into())
    );
    // A commit on A leaves the floor where it was: 2.0 never proved healthy.
    b.commit(Slot::A, usize::MAX);
    assert_eq!(b.floor.version, Version::parse("1.0").unwrap());
    // The next install into B removes the failed entry before writing the slot.
    let next = update_of(&payload(SLOT_BLOCKS, 4), "2.1", 1);
    let plan = b.state().plan_install(Slot::A, &b.floor, &next).unwrap();
    assert_eq!(plan[0], Step::RemoveEntry("drimbox-b+0-3.conf".into()));
}

#[test]
fn a_corrupted_block_is_caught_before_it_reaches_the_slot() {
    let image = payload(SLOT_BLOCKS, 5);
    let tree = HashTree::build(&image[..], image.len() as u64, b"salt").unwrap();
    let mut corrupted = image.clone();
    corrupted[10 * BLOCK + 7] ^= 0x01;
    let bad: Vec<usize> = corrupted
        .chunks(BLOCK)
        .enumerate()
        .filter(|(i, b)| !tree.check_block(*i as u64, b))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(bad, vec![10]);
}
