//! As root: every service runs as its own system user, with no capabilities and no_new_privs,
//! and the separation holds for real — a file only the publisher's user may read is out of the
//! receiver's reach, the receiver cannot read the index, the status page cannot register
//! instances — while the box still receives, stores and shows a study.
//!
//! The service users are the image's own (overlay/usr/lib/sysusers.d/drimbox.conf), created on
//! this machine with systemd-sysusers, as the image does at boot.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// A field of /proc/<pid>/status, e.g. "Uid" → "998\t998\t998\t998".
fn proc_status(pid: i32, field: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn id_of(user: &str) -> (u32, u32) {
    drimbox::supervisor::sandbox::lookup_user(user).unwrap_or_else(|| panic!("no user {user}"))
}

/// Runs `argv` with exactly the credentials of process `pid` (uid, gid, supplementary groups).
fn as_process(pid: i32, argv: &[&str]) -> std::process::Output {
    let uid = proc_status(pid, "Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let gid = proc_status(pid, "Gid")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let groups = proc_status(pid, "Groups")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(",");
    Command::new("setpriv")
        .args(["--reuid", &uid, "--regid", &gid, "--groups", &groups, "--"])
        .args(argv)
        .output()
        .unwrap()
}

fn as_user(user: &str, argv: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .args(argv)
        .output()
        .unwrap()
}

/// The services a test box runs (no `[wado]` in its configuration, so no wado).
const SERVICES: [&str; 6] = [
    "archive",
    "receiver",
    "hl7",
    "publisher",
    "whitelist",
    "status",
];

/// The box's users and groups, as the image has them (overlay/usr/lib/sysusers.d).
fn create_service_users() {
    assert!(
        is_root(),
        "this test creates system users and must run as root (scripts/test does)"
    );
    let sysusers = repo().join("overlay/usr/lib/sysusers.d/drimbox.conf");
    let o = Command::new("systemd-sysusers")
        .arg(&sysusers)
        .output()
        .unwrap();
    assert!(o.status.success(), "systemd-sysusers: {}", text(&o));
}

#[test]
fn services_run_as_their_own_users_and_the_separation_is_real() {
    create_service_users();

    let dir = tempfile::tempdir().unwrap();
    // The service users must reach the configuration and the data below the test directory.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let b = DrimBox::start_in(
        dir,
        data.clone(),
        Settings {
            run_as_service_users: true,
            ..Settings::default()
        },
    );

    let box_gid = drimbox::supervisor::sandbox::lookup_group("drimbox").unwrap();
    for name in SERVICES {
        let pid = b
            .service_pid(name)
            .unwrap_or_else(|| panic!("{name} not running"));
        let (uid, gid) = id_of(&format!("drimbox-{name}"));
        assert_eq!(
            proc_status(pid, "Uid"),
            format!("{uid}\t{uid}\t{uid}\t{uid}"),
            "{name}"
        );
        assert_eq!(
            proc_status(pid, "Gid"),
            format!("{gid}\t{gid}\t{gid}\t{gid}"),
            "{name}"
        );
        let groups: Vec<u32> = proc_status(pid, "Groups")
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        assert!(
            groups.contains(&box_gid) && groups.len() <= 2,
            "{name} groups {groups:?}"
        );
        for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(proc_status(pid, caps), "0000000000000000", "{name} {caps}");
        }
        assert_eq!(proc_status(pid, "NoNewPrivs"), "1", "{name}");
        let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        assert!(
            core.split_whitespace().nth(4) == Some("0"),
            "{name} may dump core: {core}"
        );
    }

    // The box works under the separation: a study goes in and is shown.
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(tmp.path(), 4, "explicit", "iso-1", 32);
    let o = storescu_files(b.port, &[], &files);
    assert!(o.status.success(), "{}\n{}", text(&o), b.log());
    assert_stored_identical(&b, &files);
    let (code, body) = b.http_get("/status.json");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["archive"]["instances"], 4, "{v}");

    // A file readable only by the publisher's user: the publisher can read it, the receiver
    // (with its exact credentials) cannot.
    let secret = tmp.path().join("dmp-signing.key");
    fs::write(&secret, "not really a key\n").unwrap();
    let (pub_uid, pub_gid) = id_of("drimbox-publisher");
    std::os::unix::fs::chown(&secret, Some(pub_uid), Some(pub_gid)).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let secret_s = secret.to_str().unwrap();
    let o = as_user("drimbox-publisher", &["cat", secret_s]);
    assert!(
        o.status.success(),
        "the publisher cannot read its own key: {}",
        text(&o)
    );
    let receiver = b.service_pid("receiver").unwrap();
    let o = as_process(receiver, &["cat", secret_s]);
    assert!(!o.status.success(), "the receiver read the publisher's key");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        text(&o)
    );

    // The receiver cannot read the index nor write into the store; the status page cannot ask
    // the archive to register (the receiver role's socket is not its to connect to).
    let redb = data.join("archive.redb");
    let o = as_process(receiver, &["cat", redb.to_str().unwrap()]);
    assert!(!o.status.success(), "the receiver read the database");
    let studies = data.join("studies");
    let o = as_process(receiver, &["touch", studies.join("x").to_str().unwrap()]);
    assert!(!o.status.success(), "the receiver wrote into the store");
    let status = b.service_pid("status").unwrap();
    let sock = b.dir.path().join("run/archive-receiver.sock");
    assert!(Path::new(&sock).exists());
    let connect = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
        sock.to_str().unwrap()
    );
    // Debian's interpreter: a root-only one (pyenv under /root) is out of these users' reach.
    let o = as_process(status, &["/usr/bin/python3", "-c", &connect]);
    assert!(
        !o.status.success(),
        "the status service connected to the receiver's socket"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PermissionError"),
        "{}",
        text(&o)
    );
    let o = as_process(receiver, &["/usr/bin/python3", "-c", &connect]);
    assert!(
        o.status.success(),
        "the receiver cannot reach its own socket: {}",
        text(&o)
    );

    // The WADO-RS server serves only the files the archive opens for it (passed descriptors):
    // it can neither open the store nor the index itself, nor ask the receiver's questions.
    let wado = b.service_pid("wado").unwrap();
    let o = as_process(wado, &["ls", studies.to_str().unwrap()]);
    assert!(!o.status.success(), "the WADO-RS server listed the store");
    let o = as_process(wado, &["cat", redb.to_str().unwrap()]);
    assert!(!o.status.success(), "the WADO-RS server read the database");
    let wado_sock = b.dir.path().join("run/archive-wado.sock");
    let connect_wado = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
        wado_sock.to_str().unwrap()
    );
    let o = as_process(wado, &["/usr/bin/python3", "-c", &connect_wado]);
    assert!(
        o.status.success(),
        "the WADO-RS server cannot reach its socket: {}",
        text(&o)
    );
    let o = as_process(receiver, &["/usr/bin/python3", "-c", &connect_wado]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PermissionError"),
        "the receiver connected to the WADO-RS socket: {}",
        text(&o)
    );

    // The publisher gets one exam's material from the archive and nothing else: it can read
    // neither the index nor the store. Its socket (where report messages travel) is its own.
    let publisher = b.service_pid("publisher").unwrap();
    let o = as_process(publisher, &["cat", redb.to_str().unwrap()]);
    assert!(!o.status.success(), "the publisher read the database");
    let o = as_process(publisher, &["ls", studies.to_str().unwrap()]);
    assert!(!o.status.success(), "the publisher listed the store");
    let publisher_sock = b.dir.path().join("run/archive-publisher.sock");
    let connect = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
        publisher_sock.to_str().unwrap()
    );
    let o = as_process(status, &["/usr/bin/python3", "-c", &connect]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PermissionError"),
        "the status service connected to the publisher's socket: {}",
        text(&o)
    );
    let o = as_process(publisher, &["/usr/bin/python3", "-c", &connect]);
    assert!(
        o.status.success(),
        "the publisher cannot reach its socket: {}",
        text(&o)
    );
}

/// The supervisor as systemd starts it: root holding only the unit's CapabilityBoundingSet=.
/// With that, it must still kill a wedged service and stop them all, though they run as other
/// users (root needs CAP_KILL for that: without it a stop waited for systemd's SIGKILL).
#[test]
fn with_only_the_units_capabilities_the_supervisor_restarts_and_stops_its_services() {
    create_service_users();
    let unit = fs::read_to_string(repo().join("systemd/drimbox.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("drimbox.service has a CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty());

    // Without CAP_CHOWN the supervisor cannot lay out its directories: systemd does, on the box
    // (RuntimeDirectory= for the run directory, the tmpfiles.d entries for the data).
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let tmpfiles = fs::read_to_string(repo().join("overlay/usr/lib/tmpfiles.d/drimbox.conf"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/data/drimbox"))
        .map(|l| l.replace("/data/drimbox", data.to_str().unwrap()) + "\n")
        .collect::<String>();
    let tmpfiles_conf = dir.path().join("tmpfiles.conf");
    fs::write(&tmpfiles_conf, tmpfiles).unwrap();
    let o = Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(&tmpfiles_conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "systemd-tmpfiles: {}", text(&o));
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    let box_gid = drimbox::supervisor::sandbox::lookup_group("drimbox").unwrap();
    std::os::unix::fs::chown(&run, Some(0), Some(box_gid)).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o750)).unwrap();
    let mut b = DrimBox::start_in(
        dir,
        data,
        Settings {
            run_as_service_users: true,
            heartbeat_timeout_seconds: 3,
            wrapper: vec![
                "setpriv".into(),
                format!("--bounding-set=-all,{}", caps.join(",")),
                "--inh-caps=-all".into(),
                "--".into(),
            ],
            ..Settings::default()
        },
    );
    let supervisor = b.supervisor_pid().unwrap() as i32;
    let bounding = u64::from_str_radix(&proc_status(supervisor, "CapBnd"), 16).unwrap();
    assert_eq!(
        bounding.count_ones() as usize,
        caps.len(),
        "the supervisor runs with more than the unit's capabilities ({bounding:x})"
    );
    assert_eq!(
        proc_status(supervisor, "CapEff"),
        proc_status(supervisor, "CapBnd")
    );

    // A wedged receiver (stopped: alive, silent) is killed and restarted.
    let receiver = b.service_pid("receiver").unwrap();
    unsafe {
        libc::kill(receiver, libc::SIGSTOP);
    }
    let restarted = b.wait_service_restarted("receiver", receiver);
    assert_ne!(restarted, receiver);
    assert!(
        !Path::new(&format!("/proc/{receiver}")).exists(),
        "the wedged receiver is still there:\n{}",
        b.log()
    );
    b.wait_ready();

    // SIGTERM: every service stops (by the supervisor's own signals, not a later SIGKILL).
    let services: Vec<i32> = SERVICES
        .iter()
        .map(|n| {
            b.service_pid(n)
                .unwrap_or_else(|| panic!("{n} not running"))
        })
        .collect();
    b.stop();
    for pid in services {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "service {pid} survived the stop:\n{}",
            b.log()
        );
    }
    let log = b.log();
    assert!(!log.contains("cannot send"), "{log}");
    for name in ["archive", "receiver", "status"] {
        assert!(
            log.contains(&format!("supervisor: {name} stopped")),
            "{log}"
        );
    }
}
