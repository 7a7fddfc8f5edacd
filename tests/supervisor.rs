//! The supervisor with real processes: restarts after `kill -9`, a crash loop shown and then
//! acted on, wedged services, and the sd_notify sequence seen from a fake NOTIFY_SOCKET.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn kill(pid: i32, sig: i32) {
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

/// A service's entry in a snapshot (`null` before the supervisor's first health record).
fn service<'a>(snapshot: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    snapshot["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or(&NULL)
}

/// Polls `/status.json` until `pred` holds (or panics after `within`).
fn wait_status(
    b: &DrimBox,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) =
            try_http_get(b.status_port, "/status.json").unwrap_or((0, String::new()));
        if code == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("status never matched; last: {v}\n{}", b.log());
            }
        } else if Instant::now() > deadline {
            panic!("status page answered {code}\n{}", b.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_of_each_child_restarts_it_and_the_others_keep_serving() {
    let b = DrimBox::start(Settings::default());
    wait_status(&b, Duration::from_secs(20), |v| v["verdict"] == "ok");
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(tmp.path(), 60, "explicit", "sup-1", 256);

    // The status process dies while an association is in progress on the receiver: the
    // association is unaffected.
    let status_pid = b.service_pid("status").unwrap();
    let port = b.port;
    let sender = {
        let files = files.clone();
        std::thread::spawn(move || storescu_files(port, &[], &files))
    };
    std::thread::sleep(Duration::from_millis(150));
    kill(status_pid, libc::SIGKILL);
    let o = sender.join().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    b.wait_service_restarted("status", status_pid);
    let v = wait_status(&b, Duration::from_secs(20), |v| {
        service(v, "status")["state"] == "ready" && service(v, "status")["restarts"] == 1
    });
    assert_ne!(service(&v, "status")["pid"], status_pid);
    assert_stored_identical(&b, &files);

    // The receiver and the archive: each restarted, the box serves again.
    for name in ["receiver", "archive"] {
        let pid = b.service_pid(name).unwrap();
        kill(pid, libc::SIGKILL);
        b.wait_service_restarted(name, pid);
        b.wait_ready();
        let v = wait_status(&b, Duration::from_secs(20), |v| {
            service(v, name)["restarts"] == 1 && v["verdict"] == "ok"
        });
        assert_eq!(service(&v, name)["state"], "ready", "{v}");
        assert!(
            service(&v, name)["last_error"]
                .as_str()
                .unwrap()
                .contains("signal: 9"),
            "{v}"
        );
    }
    let more = gen_study(&tmp.path().join("b"), 3, "explicit", "sup-2", 32);
    assert!(storescu_files(b.port, &[], &more).status.success());
    assert_eq!(b.summary()["instances"], 63);
}

#[test]
fn a_crash_loop_is_shown_as_failed_then_the_supervisor_exits_non_zero() {
    // The receiver's TLS certificate is not a certificate: it exits at every start (the
    // configuration check only sees that the files are readable).
    let junk = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::write(junk.path().join(f), "not a PEM file\n").unwrap();
    }
    let p = |f: &str| junk.path().join(f);
    let mut b = DrimBox::start(Settings {
        crash_loop_count: 4,
        failed_exit_delay_seconds: 4,
        no_wait: true,
        tls: Some((p("cert.pem"), p("key.pem"), p("ca.pem"))),
        ..Settings::default()
    });
    let v = wait_status(&b, Duration::from_secs(30), |v| {
        service(v, "receiver")["state"] == "failed"
    });
    assert_eq!(v["verdict"], "failing");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("receiver failed (crash loop)"),
        "{v}"
    );
    assert!(
        service(&v, "receiver")["last_error"]
            .as_str()
            .unwrap()
            .contains("exited"),
        "{v}"
    );
    // The others still run while the failure is on show.
    assert_eq!(service(&v, "archive")["state"], "ready");
    let out = std::process::Command::new(bin())
        .args(["status", "--config"])
        .arg(&b.config_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "drimbox status exit code for failing"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILING"));
    let st = b.wait_exit(Duration::from_secs(20));
    assert!(!st.success(), "supervisor exit status {st:?}");
    assert!(b.log().contains("receiver is crash-looping"), "{}", b.log());
}

/// Collects every datagram sent to a fake NOTIFY_SOCKET, with its arrival time.
fn notify_socket(path: &std::path::Path) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let sock = UnixDatagram::bind(path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            s2.lock().unwrap().push((Instant::now(), msg));
        }
    });
    seen
}

#[test]
fn sd_notify_ready_watchdog_wedge_and_stopping() {
    let sockdir = tempfile::tempdir().unwrap();
    let path = sockdir.path().join("notify.sock");
    let seen = notify_socket(&path);
    let mut b = DrimBox::start(Settings {
        heartbeat_timeout_seconds: 3,
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ],
        ..Settings::default()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.lock().unwrap().iter().any(|(_, m)| m == "READY=1") {
        assert!(
            Instant::now() < deadline,
            "no READY=1: {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    {
        let msgs = seen.lock().unwrap();
        let names: Vec<&str> = msgs.iter().map(|(_, m)| m.as_str()).collect();
        let ready = names.iter().position(|m| *m == "READY=1").unwrap();
        // READY only once every service is ready, and said once.
        assert_eq!(names.iter().filter(|m| **m == "READY=1").count(), 1);
        let before: Vec<&&str> = names[..ready]
            .iter()
            .filter(|m| m.starts_with("STATUS="))
            .collect();
        assert!(
            before.iter().all(|m| !m.contains("7/7")),
            "READY=1 came after a STATUS saying all were ready: {names:?}"
        );
        assert!(
            names.contains(&"STATUS=7/7 services ready, 0 restart(s)"),
            "{names:?}"
        );
        // Pings every half interval (0.5 s) once running.
        let pings = names[ready..]
            .iter()
            .filter(|m| **m == "WATCHDOG=1")
            .count();
        assert!(pings >= 3, "{names:?}");
    }

    // A wedged receiver (stopped, alive, silent): the pings stop; after one more timeout the
    // supervisor kills it, restarts it, and the pings resume.
    let pid = b.service_pid("receiver").unwrap();
    let stopped_at = Instant::now();
    kill(pid, libc::SIGSTOP);
    let new_pid = b.wait_service_restarted("receiver", pid);
    b.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let pings: Vec<Instant> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, m)| m == "WATCHDOG=1" && *t > stopped_at)
        .map(|(t, _)| *t)
        .collect();
    let longest_gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap >= Duration::from_millis(2500),
        "watchdog pings were not withheld while the receiver was wedged (longest gap {longest_gap:?})"
    );
    assert!(
        pings.last().unwrap().elapsed() < Duration::from_secs(2),
        "pings did not resume"
    );
    assert_ne!(new_pid, pid);
    assert!(
        b.log()
            .contains("receiver sent no heartbeat for 3s: wedged"),
        "{}",
        b.log()
    );

    b.stop();
    let msgs = seen.lock().unwrap();
    assert_eq!(
        msgs.last().map(|(_, m)| m.as_str()),
        Some("STOPPING=1"),
        "{msgs:?}"
    );
}

/// `drimbox health`, the verdict that gates boot-complete.target (and so an update's commit):
/// every service ready by the supervisor's account, and the self-test against the real box.
#[test]
fn the_health_verdict_follows_the_box() {
    // An allow-list without the self-test's AE title: the receiver's rejection still answers.
    let mut b = DrimBox::start(Settings {
        calling_ae_titles: vec!["MODALITY1".into()],
        ..Settings::default()
    });
    let config = b.config_path.clone();
    let health = |within: &str| {
        std::process::Command::new(bin())
            .args(["health", "--within", within, "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let o = health("0");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for probe in [
        "ok: archive (reader socket)",
        &format!("ok: receiver C-ECHO on 127.0.0.1:{}", b.port),
        &format!("ok: HL7 listener on 127.0.0.1:{}", b.hl7_port),
        &format!("ok: status page on 127.0.0.1:{}", b.status_port),
    ] {
        assert!(out.contains(probe), "{probe}: {out}");
    }
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("\nhealthy\n"),
        "{out}"
    );

    // Stopped: every shortfall named, exit 1.
    b.stop();
    let o = health("0");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("not healthy: the supervisor is not running (no health record)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "not healthy: receiver C-ECHO on 127.0.0.1:{}: association",
            b.port
        )),
        "{out}"
    );

    // A verdict asked while the box starts waits for it (--within), as the unit does at boot.
    let waiting = std::process::Command::new(bin())
        .args(["health", "--within", "60", "--config"])
        .arg(&b.config_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    b.launch();
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}
