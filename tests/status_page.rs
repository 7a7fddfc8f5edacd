//! The status page as a browser shows it: a real `drimbox run` receives a small study, then
//! headless Chromium (Debian's `chromium`) loads `/`, and the DOM it built is checked against
//! `/status.json` and `/metrics` from the same box. Screenshots at phone and desktop width are
//! kept in `target/test-artifacts/` for a human to look at.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// What gen_study.py writes into every instance (its defaults): none of it may reach the page,
/// the JSON or the metrics.
const PATIENT_DATA: &[&str] = &[
    "PatientName",
    "PatientID",
    "SYNTHETIC^BENCHMARK",
    "SYNTHETIC BENCHMARK",
    "SYNTH0001",
    "19700101",
    "ACC0001",
];

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// A minimal HTTP/1.0 GET on 127.0.0.1: the server answers and closes.
fn fetch(port: u16, path: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the status port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = String::from_utf8(raw).unwrap_or_else(|e| panic!("GET {path}: not UTF-8: {e}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers in {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn status_json(port: u16) -> serde_json::Value {
    let r = fetch(port, "/status.json");
    assert_eq!(r.status, 200, "/status.json: {}", r.body);
    assert!(
        r.content_type.starts_with("application/json"),
        "/status.json content type {:?}",
        r.content_type
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/status.json: {e}\n{}", r.body))
}

fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: this test drives headless Chromium. Install it with \
         `apt-get install -y chromium` (scripts/test installs the test peers)."
    );
}

/// Runs headless Chromium on `url` with `extra` arguments, its own throw-away profile and a
/// time limit; returns its standard output.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out_path = profile.path().join("stdout");
    let err_path = profile.path().join("stderr");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {extra:?} {url} did not finish within 90 s:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium {extra:?} {url}: {status}\n{}",
        fs::read_to_string(&err_path).unwrap_or_default()
    );
    stdout
}

/// The opening tag of the first element whose tag contains `marker` (e.g. `id="verdict"`).
fn tag<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of `attr` in an opening tag as Chromium serialises it (`attr="value"`).
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let key = format!(" {attr}=\"");
    let at = tag.find(&key)? + key.len();
    let end = at + tag[at..].find('"')?;
    Some(&tag[at..end])
}

/// The text right after the opening tag containing `marker`, up to the next tag.
fn text_after<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let start = at + dom[at..].find('>')? + 1;
    let end = start + dom[start..].find('<')?;
    Some(&dom[start..end])
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "not a PNG"
    );
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

fn artifacts() -> PathBuf {
    let d = repo().join("target/test-artifacts");
    fs::create_dir_all(&d).unwrap();
    d
}

/// Verdict and service states: what could change between two reads.
fn volatile(j: &serde_json::Value) -> String {
    let states: Vec<String> = j["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| format!("{}={}", s["name"], s["state"]))
                .collect()
        })
        .unwrap_or_default();
    format!("{} {}", j["verdict"], states.join(","))
}

#[test]
fn status_page_in_headless_chromium() {
    require_chromium();
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(tmp.path(), 3, "explicit", "status-1", 32);
    assert_eq!(files.len(), 3);
    let o = storescu_files(b.port, &[], &files);
    assert!(o.status.success(), "storescu: {}", text(&o));

    // The archive's counters follow the commits; wait until the snapshot shows all three.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = status_json(b.status_port);
        if j["archive"]["instances"].as_u64() == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/status.json never showed 3 instances: {j:#}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let page = fetch(b.status_port, "/");
    assert_eq!(page.status, 200, "GET /: {}", page.body);
    assert!(
        page.content_type.starts_with("text/html"),
        "GET / content type {:?}",
        page.content_type
    );

    // The DOM Chromium built from `/`, bracketed by two JSON reads that agree (the verdict or a
    // service state could change in between on a loaded machine; then read again).
    let url = format!("http://127.0.0.1:{}/", b.status_port);
    let (json, dom) = (0..3)
        .find_map(|_| {
            let before = status_json(b.status_port);
            let dom = chromium(&url, &["--dump-dom"]);
            let after = status_json(b.status_port);
            (volatile(&before) == volatile(&after)).then_some((after, dom))
        })
        .expect("the verdict or a service state kept changing between reads");
    assert!(
        dom.contains("</html>") && dom.contains("id=\"verdict\""),
        "chromium did not dump the status page:\n{dom}"
    );

    let verdict = json["verdict"].as_str().expect("verdict in /status.json");
    assert!(
        ["ok", "degraded", "failing"].contains(&verdict),
        "verdict {verdict}"
    );
    let v = tag(&dom, "id=\"verdict\"").expect("element with id=verdict");
    assert_eq!(attr(v, "data-verdict"), Some(verdict), "{v}");

    for name in ["archive", "receiver"] {
        let row = tag(&dom, &format!("data-service=\"{name}\""))
            .unwrap_or_else(|| panic!("no row for service {name}:\n{dom}"));
        let st = json["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("service {name} not in /status.json: {json:#}"));
        assert_eq!(attr(row, "data-state"), st["state"].as_str(), "{row}");
        let at = dom.find(row).unwrap();
        let end = at + dom[at..].find("</tr>").expect("row ends");
        assert!(
            dom[at..end].contains("data-field=\"state\""),
            "row {name} has no state field: {}",
            &dom[at..end]
        );
    }

    let instances = json["archive"]["instances"].as_u64().unwrap();
    assert_eq!(instances, 3);
    assert_eq!(
        text_after(&dom, "data-counter=\"instances\"").map(str::trim),
        Some("3"),
        "instances counter"
    );
    for field in ["studies", "studies_today", "bytes"] {
        let want = json["archive"][field].as_u64().unwrap().to_string();
        assert_eq!(
            text_after(&dom, &format!("data-counter=\"{field}\"")).map(str::trim),
            Some(want.as_str()),
            "{field} counter"
        );
    }
    for sec in ["dmp", "whitelist", "ota"] {
        assert!(
            dom.contains(&format!("data-section=\"{sec}\"")),
            "no {sec} section"
        );
    }

    // Screenshots at phone and desktop size, kept for a human.
    let dir = artifacts();
    for (file, w, h) in [
        ("status-phone.png", 390u32, 844u32),
        ("status-desktop.png", 1280, 900),
    ] {
        let path = dir.join(file);
        let _ = fs::remove_file(&path);
        chromium(
            &url,
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={w},{h}"),
                "--virtual-time-budget=2000",
            ],
        );
        let png = fs::read(&path)
            .unwrap_or_else(|e| panic!("screenshot {} not written: {e}", path.display()));
        assert!(
            png.len() > 5 * 1024,
            "{} is only {} bytes: blank page?",
            path.display(),
            png.len()
        );
        assert_eq!(png_size(&png), (w, h), "{}", path.display());
    }

    let m = fetch(b.status_port, "/metrics");
    assert_eq!(m.status, 200, "/metrics: {}", m.body);
    assert!(
        m.content_type.starts_with("text/plain"),
        "/metrics content type {:?}",
        m.content_type
    );
    let sample = |body: &str, line_start: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(
        sample(&m.body, "drimbox_archive_instances "),
        Some(instances as f64),
        "{}",
        m.body
    );
    // The verdict of /metrics, against a JSON verdict read just before and after it.
    let (verdict_now, metrics) = (0..3)
        .find_map(|_| {
            let before = status_json(b.status_port)["verdict"].clone();
            let m = fetch(b.status_port, "/metrics").body;
            let after = status_json(b.status_port)["verdict"].clone();
            (before == after).then(|| (after.as_str().unwrap().to_string(), m))
        })
        .expect("the verdict kept changing between reads");
    assert_eq!(
        sample(
            &metrics,
            &format!("drimbox_verdict{{verdict=\"{verdict_now}\"}} ")
        ),
        Some(1.0),
        "{metrics}"
    );

    let json_text = fetch(b.status_port, "/status.json").body;
    for (what, body) in [
        ("page", &dom),
        ("/status.json", &json_text),
        ("/metrics", &m.body),
    ] {
        for p in PATIENT_DATA {
            assert!(!body.contains(p), "{what} shows patient data {p:?}");
        }
    }
}

/// The install form as Chromium builds it, with the administrator's password (set by `drimbox
/// admin password`) in the URL: the fields the README describes; without the password, no form.
#[test]
fn the_install_form_in_headless_chromium() {
    require_chromium();
    let b = DrimBox::start(Settings::default());
    let credential = b.dir.path().join("ota/admin.credential");
    let mut c = Command::new(bin())
        .args(["admin", "password", "--credential"])
        .arg(&credential)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"chromium's administrator\n")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?} {}", o.status, text(&o));

    let dom = chromium(
        &format!(
            "http://admin:chromium's%20administrator@127.0.0.1:{}/update",
            b.status_port
        ),
        &["--dump-dom"],
    );
    let form = tag(&dom, "id=\"install\"").unwrap_or_else(|| panic!("no form:\n{dom}"));
    assert_eq!(attr(form, "method"), Some("post"), "{form}");
    assert_eq!(attr(form, "enctype"), Some("multipart/form-data"), "{form}");
    let file = tag(&dom, "type=\"file\"").unwrap_or_else(|| panic!("no file field:\n{dom}"));
    assert_eq!(attr(file, "name"), Some("bundle"), "{file}");
    let reboot = tag(&dom, "type=\"checkbox\"").unwrap_or_else(|| panic!("no box:\n{dom}"));
    assert_eq!(attr(reboot, "name"), Some("reboot"), "{reboot}");
    assert!(dom.contains("data-section=\"ota\""), "{dom}");

    let refused = chromium(
        &format!("http://127.0.0.1:{}/update", b.status_port),
        &["--dump-dom"],
    );
    // Headless, nobody answers the challenge: Chromium shows nothing, certainly not the form.
    assert!(!refused.contains("id=\"install\""), "{refused}");
}
