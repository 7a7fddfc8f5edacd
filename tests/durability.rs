//! Nothing acknowledged is ever lost: kill -9 of the receiver and of the archive during sends,
//! a full disk, and bounded memory for a very large instance.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Every SOP Instance UID acknowledged with 0000 (the sender fsyncs its log before going on)
/// must be indexed, on disk and byte-identical to what was sent; staging must be empty; every
/// file of the store must be indexed.
fn assert_everything_acknowledged_is_intact(
    b: &DrimBox,
    acked: &HashSet<String>,
    sources: &[PathBuf],
) {
    let by_sop: std::collections::HashMap<String, &PathBuf> =
        sources.iter().map(|p| (uids(p).sop, p)).collect();
    let study = uids(&sources[0]).study;
    let view = b.study(&study).expect("study indexed");
    for sop in acked {
        let inst = instance(&view, sop).unwrap_or_else(|| panic!("acknowledged {sop} not indexed"));
        assert_eq!(inst["missing"], false, "{sop} flagged missing");
        let stored = b.stored_path(inst["file"].as_str().unwrap());
        assert_eq!(
            dataset_bytes(&stored),
            dataset_bytes(by_sop[sop]),
            "acknowledged {sop} damaged"
        );
    }
    assert!(
        b.staging_files().is_empty(),
        "staging not empty: {:?}",
        b.staging_files()
    );
    let on_disk: usize = fs::read_dir(b.data_dir.join("studies"))
        .unwrap()
        .flatten()
        .map(|d| fs::read_dir(d.path()).unwrap().count())
        .sum();
    let indexed = view["instances"].as_array().unwrap().len();
    assert_eq!(on_disk, indexed, "store and index disagree");
}

fn read_acks(path: &Path) -> HashSet<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn kill9(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

fn ack_count(path: &Path) -> usize {
    fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn kill_during_sends(service: &str, seed: &str) {
    // Forced kills are not a crash loop: let the supervisor restart as often as the test kills.
    let mut b = DrimBox::start(Settings {
        crash_loop_count: 1000,
        ..Settings::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(&tmp.path().join("s"), 120, "explicit", seed, 256);
    let ack_log = tmp.path().join("acks.log");
    // Kill points spread over the sends: after 1, 3, 7... more acknowledgements in the round,
    // plus a sub-millisecond offset, so over the run the kill lands in every phase (receiving,
    // fsync, rename, commit, answer).
    let after_acks = [1usize, 3, 7, 12, 20, 33, 50, 75, 2, 41];
    for (round, after) in after_acks.iter().enumerate() {
        let pid = b.service_pid(service).expect("service running");
        let mut args = vec![
            repo().join("tests/peers/pyscu.py").display().to_string(),
            "send".into(),
            b.port.to_string(),
        ];
        args.extend(files.iter().map(|p| p.display().to_string()));
        args.extend(["--ack-log".into(), ack_log.display().to_string()]);
        let sender = Command::new("python3")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = ack_count(&ack_log);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ack_count(&ack_log) < base + after && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(137 * round as u64));
        kill9(pid);
        let _ = sender.wait_with_output();
        b.wait_service_restarted(service, pid);
        b.wait_ready();
        eprintln!(
            "round {round}: {} acknowledged so far",
            read_acks(&ack_log).len()
        );
    }
    // One clean pass so that every instance ends up stored, then a restart (recovery).
    let o = storescu_files(b.port, &[], &files);
    assert!(o.status.success(), "{}", text(&o));
    b.stop();
    b.launch();
    let acked = read_acks(&ack_log);
    assert!(
        acked.len() >= 60,
        "too few acknowledgements to mean anything: {}",
        acked.len()
    );
    assert_everything_acknowledged_is_intact(&b, &acked, &files);
    let view = b.study(&uids(&files[0]).study).unwrap();
    assert_eq!(view["instances"].as_array().unwrap().len(), 120);
    assert!(
        b.log().contains("recovery:"),
        "no recovery report in the log"
    );
}

#[test]
fn kill_9_of_the_receiver_loses_nothing_acknowledged() {
    kill_during_sends("receiver", "kill-recv");
}

#[test]
fn kill_9_of_the_archive_loses_nothing_acknowledged() {
    kill_during_sends("archive", "kill-arch");
}

#[test]
fn disk_full_answers_a700_leaves_nothing_partial_and_recovers() {
    if !is_root() {
        panic!("this test mounts a small tmpfs and must run as root (CI does)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    // Room is taken by a filler we can give back later.
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0u8; 20 << 20]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut b = DrimBox::start_in(dir, mnt.join("data"), Settings::default());
    let src = tempfile::tempdir().unwrap();
    let files = gen_study(&src.path().join("s"), 60, "explicit", "diskfull-1", 512);
    let mut args = vec!["send".to_string(), b.port.to_string()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = pyscu(&a);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.lines().any(|l| l.starts_with("A700 ")),
        "no A700:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("0000 ")),
        "nothing stored:\n{out}"
    );
    let acked: HashSet<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("0000 "))
        .map(str::to_string)
        .collect();
    assert_everything_acknowledged_is_intact(&b, &acked, &files);
    assert!(b.log().contains("disk full"), "A700 reason not logged");

    // Space is back: the same box (no restart) stores the rest.
    fs::remove_file(&filler).unwrap();
    let o = pyscu(&a);
    assert!(o.status.success(), "{}", text(&o));
    let all: HashSet<String> = files.iter().map(|f| uids(f).sop).collect();
    assert_everything_acknowledged_is_intact(&b, &all, &files);
    b.stop();
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_300_mib_instance_keeps_the_receiver_under_32_mib() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.dcm");
    let o = pyscu(&["big", big.to_str().unwrap(), "300"]);
    assert!(o.status.success(), "{}", text(&o));
    let pid = b.service_pid("receiver").unwrap();
    let t0 = Instant::now();
    let o = storescu_files(b.port, &[], std::slice::from_ref(&big));
    assert!(o.status.success(), "{}", text(&o));
    let hwm = vm_hwm_kib(pid);
    eprintln!(
        "300 MiB instance stored in {:?}; receiver peak RSS {} KiB",
        t0.elapsed(),
        hwm
    );
    assert!(hwm < 32 * 1024, "receiver peak RSS {hwm} KiB");
    assert_stored_identical(&b, std::slice::from_ref(&big));
}

/// HL7: `kill -9` of the listener and of the archive while a RIS sends reports. Every message
/// that got AA is recorded, byte for byte, exactly once; nothing is left in staging.
#[test]
fn kill_9_during_hl7_intake_loses_no_acknowledged_report() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("acks.log");
    let sample = shared().join("ref/hl7/ORU_R01_K.hl7");
    let count = 40;
    let mut sender = std::process::Command::new("python3")
        .arg(repo().join("tests/peers/mllp.py"))
        .arg(b.hl7_port.to_string())
        .arg(&sample)
        .args([&count.to_string(), "K", log.to_str().unwrap(), "240"])
        .spawn()
        .unwrap();
    // Kill the listener, then the archive, then the listener again, as messages flow.
    for (i, service) in ["hl7", "archive", "hl7", "archive"].iter().enumerate() {
        let target = 5 + i * 8;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while ack_count(&log) < target && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let pid = b.service_pid(service).unwrap();
        kill9(pid);
        b.wait_service_restarted(service, pid);
    }
    let status = sender.wait().unwrap();
    assert!(
        status.success(),
        "the sender did not get every AA:\n{}",
        b.log()
    );
    let acked = read_acks(&log);
    assert_eq!(acked.len(), count);
    // Every acknowledged message is recorded exactly once, byte for byte.
    let template = std::fs::read(&sample).unwrap();
    let mut recorded = std::collections::HashMap::new();
    for e in std::fs::read_dir(b.data_dir.join("reports"))
        .unwrap()
        .flatten()
    {
        let bytes = std::fs::read(e.path()).unwrap();
        let first = bytes.split(|&c| c == b'\r').next().unwrap();
        let cid = String::from_utf8_lossy(first.split(|&c| c == b'|').nth(9).unwrap()).to_string();
        let mut expected = template.clone();
        let head_len = expected.iter().position(|&c| c == b'\r').unwrap();
        let head = String::from_utf8_lossy(&expected[..head_len]).to_string();
        let mut fields: Vec<&str> = head.split('|').collect();
        fields[9] = &cid;
        let new_head = fields.join("|");
        expected.splice(..head_len, new_head.bytes());
        assert_eq!(bytes, expected, "{cid} not stored byte for byte");
        *recorded.entry(cid).or_insert(0) += 1;
    }
    for cid in &acked {
        assert_eq!(
            recorded.get(cid),
            Some(&1),
            "{cid} acknowledged but recorded {:?} times",
            recorded.get(cid)
        );
    }
    assert_eq!(
        b.summary()["reports"].as_u64().unwrap() as usize,
        recorded.len()
    );
    assert!(std::fs::read_dir(b.data_dir.join("hl7-staging"))
        .unwrap()
        .next()
        .is_none());
}
