//! What a distributor touches: `drimbox config check`, DICOM TLS with certificates minted by
//! openssl, recovery after files were tampered with, and the demo command.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn config_check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("drimbox.toml");
    fs::write(&f, text).unwrap();
    let o = Command::new(bin())
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn config_check_names_every_problem() {
    let data = tempfile::tempdir().unwrap();
    let (ok, out) = config_check(&format!(
        "[storage]\ndata_dir = {:?}\n[dicom]\nport = 11112\n",
        data.path().display().to_string()
    ));
    assert!(ok, "{out}");
    assert!(out.contains("OK"));

    let (ok, out) = config_check(
        "[storage]\ndata_dir = \"/proc/not-here\"\n\
         [dicom]\nport = \"eleven\"\nae_title = \"WAY TOO LONG AE TITLE\"\nmax_associatons = 3\n",
    );
    assert!(!ok, "{out}");
    for needle in [
        "dicom.port: must be an integer, not a string",
        "dicom.ae_title:",
        "dicom.max_associatons: unknown key",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    // Syntax and type errors are reported before the machine is looked at; the directory is
    // checked on a file that parses.
    let (ok, out) = config_check("[storage]\ndata_dir = \"/proc/not-here\"\n");
    assert!(!ok);
    assert!(
        out.contains("storage.data_dir: /proc/not-here is not a writable directory"),
        "{out}"
    );

    let (ok, out) = config_check("[storage\n");
    assert!(!ok);
    assert!(out.contains("not valid TOML"), "{out}");

    let o = Command::new(bin())
        .args(["config", "check", "/nonexistent/drimbox.toml"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/drimbox.toml"));
}

#[test]
fn config_check_reads_the_site_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let (image, site) = (
        dir.path().join("drimbox.toml"),
        dir.path().join("site.toml"),
    );
    fs::write(
        &image,
        format!(
            "site = {:?}\n[storage]\ndata_dir = {:?}\n",
            site.display().to_string(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let check = || {
        let o = Command::new(bin())
            .args(["config", "check"])
            .arg(&image)
            .output()
            .unwrap();
        let out =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        (o.status.success(), out)
    };
    let (ok, out) = check();
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        format!("{} (no site file {}): OK", image.display(), site.display())
    );
    fs::write(&site, "[dicom]\nae_title = \"CABINET_X\"\n").unwrap();
    let (ok, out) = check();
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        format!("{} + {}: OK", image.display(), site.display())
    );
    fs::write(&site, "[dicom]\nport = \"104\"\n").unwrap();
    let (ok, out) = check();
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "dicom.port: must be an integer, not a string (set in {})",
            site.display()
        )),
        "{out}"
    );
    fs::write(&site, "[dicom\n").unwrap();
    let (ok, out) = check();
    assert!(
        !ok && out.starts_with(&format!("{}: ", site.display())),
        "{out}"
    );
}

#[test]
fn the_annotated_example_configuration_is_valid() {
    let example = repo().join("overlay/etc/drimbox/drimbox.toml");
    let text = fs::read_to_string(&example).unwrap();
    let c = drimbox::config::Config::parse(&text).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(c.dicom.port, 104);
    assert_eq!(
        c.site.as_deref(),
        Some(std::path::Path::new("/data/config/drimbox.toml"))
    );
}

#[test]
fn dicom_tls_with_client_certificates() {
    let pki = tempfile::tempdir().unwrap();
    mint_pki(pki.path(), "good");
    mint_pki(pki.path(), "other");
    let p = |f: &str| pki.path().join(f);
    let mut b = DrimBox::start(Settings {
        tls: Some((p("good-server.pem"), p("good-server.key"), p("good-ca.pem"))),
        probe_args: vec![
            "+tls".into(),
            p("good-client.key").display().to_string(),
            p("good-client.pem").display().to_string(),
            "+cf".into(),
            p("good-ca.pem").display().to_string(),
        ],
        ..Settings::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(tmp.path(), 3, "explicit", "tls-1", 32);
    let tls = |client: &str, ca: &str| -> Vec<String> {
        vec![
            "+tls".into(),
            p(&format!("{client}.key")).display().to_string(),
            p(&format!("{client}.pem")).display().to_string(),
            "+cf".into(),
            p(ca).display().to_string(),
        ]
    };
    let args = tls("good-client", "good-ca.pem");
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = storescu_files(b.port, &a, &files);
    assert!(o.status.success(), "{}", text(&o));
    assert_stored_identical(&b, &files);

    // A client certificate from another CA is refused at the handshake.
    let args = tls("other-client", "good-ca.pem");
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = storescu_files(b.port, &a, &files);
    assert!(!o.status.success(), "{}", text(&o));
    // No client certificate at all: refused too.
    let o = storescu_files(
        b.port,
        &[
            "+tls",
            "--anonymous-tls",
            "+cf",
            p("good-ca.pem").to_str().unwrap(),
        ],
        &files,
    );
    assert!(!o.status.success(), "{}", text(&o));
    // Plain DICOM to the TLS port: refused, and the box keeps serving.
    let o = storescu_files(b.port, &[], &files);
    assert!(!o.status.success(), "{}", text(&o));
    let args = tls("good-client", "good-ca.pem");
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    assert!(storescu_files(b.port, &a, &files).status.success());
    b.stop();
}

#[test]
fn status_page_over_https_with_a_configured_certificate() {
    let pki = tempfile::tempdir().unwrap();
    mint_pki(pki.path(), "good");
    let p = |f: &str| pki.path().join(f);
    let b = DrimBox::start(Settings {
        status_tls: Some((p("good-server.pem"), p("good-server.key"))),
        ..Settings::default()
    });
    let url = format!("https://127.0.0.1:{}/status.json", b.status_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let o = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(p("good-ca.pem"))
            .arg(&url)
            .output()
            .expect("curl (apt-get install curl)");
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no HTTPS status page: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["schema"], 1);
    // A client that does not trust the box's CA is refused by curl; plain HTTP gets no page.
    let o = Command::new("curl").args(["-sS", &url]).output().unwrap();
    assert!(
        !o.status.success(),
        "curl trusted an unknown CA: {}",
        text(&o)
    );
    let plain = try_http_get(b.status_port, "/status.json");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP answered on the TLS port"
    );
}

#[test]
fn recovery_reconciles_tampered_store_and_counts_it() {
    let mut b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(&tmp.path().join("a"), 4, "explicit", "recov-1", 32);
    assert!(storescu_files(b.port, &[], &files[..3]).status.success());
    let u0 = uids(&files[0]);
    let view = b.study(&u0.study).unwrap();
    let rel0 = instance(&view, &u0.sop).unwrap()["file"]
        .as_str()
        .unwrap()
        .to_string();
    b.stop();

    // While stopped: a leftover staging file, an indexed file removed, an unindexed file (as
    // after a crash between rename and commit: never acknowledged, so nothing vouches for its
    // bytes), and a stray unparseable file.
    fs::write(b.data_dir.join("staging/123-4-5.part"), b"half an instance").unwrap();
    fs::remove_file(b.stored_path(&rel0)).unwrap();
    let u3 = uids(&files[3]);
    let unindexed = b
        .data_dir
        .join(format!("studies/{}/{}.dcm", u3.study, u3.sop));
    fs::copy(&files[3], &unindexed).unwrap();
    fs::write(
        b.data_dir.join(format!("studies/{}/junk.dcm", u3.study)),
        b"junk",
    )
    .unwrap();

    b.launch();
    let log = b.log();
    assert!(
        log.contains("recovery: 1 staging file(s) removed, 0 in-doubt instance(s) kept, 0 in-doubt instance(s) discarded, 1 unindexed file(s) set aside, 0 stale version(s) removed, 1 unreadable file(s) quarantined, 1 indexed instance(s) missing their file"),
        "{log}"
    );
    assert!(b.staging_files().is_empty());
    let view = b.study(&u0.study).unwrap();
    assert_eq!(instance(&view, &u0.sop).unwrap()["missing"], true);
    assert!(
        instance(&view, &u3.sop).is_none(),
        "an unindexed file was adopted"
    );
    assert!(!unindexed.exists());
    assert_eq!(b.summary()["missing_files"], 1);
    // The unindexed file and the junk are kept in quarantine, never deleted.
    assert_eq!(
        fs::read_dir(b.data_dir.join("quarantine")).unwrap().count(),
        2
    );
    // Sending the lost and the set-aside instances again heals the archive.
    let resend = [files[0].clone(), files[3].clone()];
    assert!(storescu_files(b.port, &[], &resend).status.success());
    let view = b.study(&u0.study).unwrap();
    assert_eq!(instance(&view, &u0.sop).unwrap()["missing"], false);
    assert_eq!(instance(&view, &u3.sop).unwrap()["missing"], false);
    assert_stored_identical(&b, &files);
}

#[test]
fn demo_command_starts_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["demo", "--dir"])
        .arg(dir.path())
        .args(["--dicom-port", &port.to_string(), "--ae-title", "DEMOBOX"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !echoscu(port, "DEMOBOX", &[]).status.success() {
        assert!(Instant::now() < deadline, "demo never answered C-ECHO");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(tmp.path(), 2, "explicit", "demo-1", 32);
    let mut cmd = Command::new("/usr/bin/storescu");
    cmd.env("TCP_NODELAY", "1")
        .args(["-aec", "DEMOBOX", "127.0.0.1", &port.to_string()])
        .args(&files);
    assert!(cmd.status().unwrap().success());
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exit status {status:?}");
    let mut banner = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut banner).unwrap();
    assert!(
        banner.contains(&format!("AE title DEMOBOX at 127.0.0.1:{port}")),
        "{banner}"
    );
    let u = uids(&files[0]);
    let stored = dir
        .path()
        .canonicalize()
        .unwrap()
        .join(format!("data/studies/{}/{}.dcm", u.study, u.sop));
    assert!(banner.contains("data lands in"), "{banner}");
    assert_eq!(dataset_bytes(&stored), dataset_bytes(&files[0]));
    // Nothing of the services is left running.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!echoscu(port, "DEMOBOX", &[]).status.success());
}
