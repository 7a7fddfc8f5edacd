//! Shared harness of the integration tests: a real `drimbox run` in a temporary directory, and
//! the real peers (DCMTK, pynetdicom via tests/peers/pyscu.py, the agency's samples).
#![allow(dead_code)]

pub mod dmp;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const AET: &str = "DRIMBOX";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_drimbox")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the clone (CI puts it there).
pub fn shared() -> PathBuf {
    let p = repo().join("../shared");
    assert!(
        p.is_dir(),
        "shared/ must sit beside the repository: {}",
        p.display()
    );
    p
}

/// A port nothing listens on, below Linux's ephemeral range (32768-60999). A port the kernel
/// handed out (bind to 0) is an ephemeral one: the next outgoing connection of any test may take
/// it before the box binds it, and a test that polls `connect` to it while nothing listens can
/// even connect to itself (TCP simultaneous open), holding the port the box then fails to bind
/// ("Address already in use"). Below the range only another test's `free_port` could take it:
/// each test process walks the range from its own starting point, and checks the port is free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    // One starting point per test process; its successive ports never repeat within SPAN
    // calls (7919 is prime to SPAN), so two tests of one process never share one.
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        ((u64::from(std::process::id()) * 2_654_435_761) ^ u64::from(nanos)) % SPAN
    });
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + step * 7_919) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {LOW}-{}", LOW + SPAN - 1)
}

/// Settings a test may change; everything else is the box's default.
#[derive(Clone)]
pub struct Settings {
    pub max_associations: u32,
    pub timeout_seconds: u32,
    pub calling_ae_titles: Vec<String>,
    pub stable_after_seconds: u32,
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    pub max_pdu: u32,
    pub crash_loop_count: u32,
    pub failed_exit_delay_seconds: u32,
    pub heartbeat_timeout_seconds: u32,
    /// Only the isolation test runs the services as their own users (it creates them first).
    pub run_as_service_users: bool,
    /// Environment of `drimbox run` (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// HTTPS for the status page: (certificate, private key).
    pub status_tls: Option<(PathBuf, PathBuf)>,
    /// Do not wait for C-ECHO after the start (the test watches the start itself).
    pub no_wait: bool,
    /// Extra echoscu arguments for the readiness probe (TLS client certificate).
    pub probe_args: Vec<String>,
    /// Appended to the generated configuration (e.g. a `[publication]` section).
    pub extra_config: String,
    /// A command `drimbox run` is started under (e.g. `setpriv` with the unit's capabilities).
    pub wrapper: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_associations: 16,
            timeout_seconds: 30,
            calling_ae_titles: Vec::new(),
            stable_after_seconds: 60,
            tls: None,
            max_pdu: 262_144,
            crash_loop_count: 5,
            failed_exit_delay_seconds: 30,
            heartbeat_timeout_seconds: 10,
            run_as_service_users: false,
            env: Vec::new(),
            no_wait: false,
            status_tls: None,
            probe_args: Vec::new(),
            extra_config: String::new(),
            wrapper: Vec::new(),
        }
    }
}

pub struct DrimBox {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub port: u16,
    /// Port of the status page (`/`, `/status.json`, `/metrics`) on 127.0.0.1.
    pub status_port: u16,
    /// MLLP port of the HL7 listener on 127.0.0.1.
    pub hl7_port: u16,
    child: Option<Child>,
    log_path: PathBuf,
    /// Calling AE title the readiness probe uses (one the box accepts).
    probe_ae: String,
    probe_args: Vec<String>,
    env: Vec<(String, String)>,
    no_wait: bool,
    wrapper: Vec<String>,
}

impl DrimBox {
    pub fn start(s: Settings) -> DrimBox {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        DrimBox::start_in(dir, data, s)
    }

    pub fn start_in(dir: tempfile::TempDir, data_dir: PathBuf, s: Settings) -> DrimBox {
        let port = free_port();
        let status_port = free_port();
        let hl7_port = free_port();
        let calling: Vec<String> = s
            .calling_ae_titles
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        let mut text = format!(
            "[storage]\ndata_dir = {:?}\nrun_dir = {:?}\n\n[log]\nlevel = \"debug\"\n\n\
             [dicom]\nlisten = \"127.0.0.1\"\nport = {port}\nae_title = \"{AET}\"\n\
             max_associations = {}\ntimeout_seconds = {}\ncalling_ae_titles = [{}]\nmax_pdu = {}\n",
            data_dir.display().to_string(),
            dir.path().join("run").display().to_string(),
            s.max_associations,
            s.timeout_seconds,
            calling.join(", "),
            s.max_pdu,
        );
        if let Some((cert, key, ca)) = &s.tls {
            text += &format!(
                "\n[dicom.tls]\ncertificate = {:?}\nprivate_key = {:?}\nclient_ca = {:?}\n",
                cert.display().to_string(),
                key.display().to_string(),
                ca.display().to_string()
            );
        }
        text += &format!(
            "\n[archive]\nstable_after_seconds = {}\n\n[supervisor]\ncrash_loop_count = {}\n\
             restart_backoff_max_seconds = 2\nfailed_exit_delay_seconds = {}\n\
             heartbeat_timeout_seconds = {}\nrun_as_service_users = {}\n\n\
             [status]\nlisten = \"127.0.0.1\"\nport = {status_port}\n\
             update_state = {:?}\nadmin_credential = {:?}\nupdate_spool = {:?}\n\n\
             [hl7]\nlisten = \"127.0.0.1\"\nport = {hl7_port}\n",
            s.stable_after_seconds,
            s.crash_loop_count,
            s.failed_exit_delay_seconds,
            s.heartbeat_timeout_seconds,
            s.run_as_service_users,
            dir.path().join("ota/state.json").display().to_string(),
            dir.path()
                .join("ota/admin.credential")
                .display()
                .to_string(),
            dir.path().join("ota/spool").display().to_string(),
        );
        if let Some((cert, key)) = &s.status_tls {
            text += &format!(
                "\n[status.tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            );
        }
        text += &s.extra_config;
        let config_path = dir.path().join("drimbox.toml");
        fs::write(&config_path, text).unwrap();
        let log_path = dir.path().join("drimbox.log");
        let mut b = DrimBox {
            probe_ae: s
                .calling_ae_titles
                .first()
                .cloned()
                .unwrap_or_else(|| "ECHOSCU".into()),
            probe_args: s.probe_args.clone(),
            env: s.env.clone(),
            no_wait: s.no_wait,
            wrapper: s.wrapper.clone(),
            data_dir,
            config_path,
            port,
            status_port,
            hl7_port,
            child: None,
            log_path,
            dir,
        };
        b.launch();
        b
    }

    /// Starts `drimbox run` and waits until it answers C-ECHO and the supervisor has seen every
    /// service ready (the moment it sends systemd READY=1): a test that looks for a service's
    /// process right after the start must not race the supervisor still spawning the last ones.
    pub fn launch(&mut self) {
        let log_before = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        if !self.no_wait {
            self.wait_ready();
            self.wait_all_services_ready(log_before);
        }
    }

    /// Waits for the supervisor's "all services ready" in the log written after `offset`.
    fn wait_all_services_ready(&self, offset: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let log = fs::read(&self.log_path).unwrap_or_default();
            let since = &log[(offset as usize).min(log.len())..];
            if String::from_utf8_lossy(since).contains("all services ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("not every service became ready:\n{}", self.log());
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let mut args = vec!["-aet", self.probe_ae.as_str()];
            args.extend(self.probe_args.iter().map(|s| s.as_str()));
            if echoscu(self.port, AET, &args).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("drimbox not ready on port {}:\n{}", self.port, self.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits for `drimbox run` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut().expect("running");
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "drimbox run did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn supervisor_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("drimbox did not stop within 30 s");
        }
    }

    /// PID of one service process (`archive`, `receiver`) of this box.
    pub fn service_pid(&self, name: &str) -> Option<i32> {
        let needle = format!(
            "service\0{name}\0--config\0{}\0",
            self.config_path.display()
        );
        for e in fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// Waits for a service to be running with a PID other than `old`.
    pub fn wait_service_restarted(&self, name: &str, old: i32) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(p) = self.service_pid(name) {
                if p != old {
                    return p;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} not restarted:\n{}", self.log());
    }

    /// `drimbox study UID`: the archive's view of a study, or None.
    pub fn study(&self, uid: &str) -> Option<serde_json::Value> {
        let out = Command::new(bin())
            .args(["study", uid, "--config"])
            .arg(&self.config_path)
            .output()
            .unwrap();
        if out.status.code() == Some(3) {
            return None;
        }
        assert!(
            out.status.success(),
            "drimbox study failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// `drimbox status --json`: the whole snapshot (exit status 0/1/2 = ok/degraded/failing).
    pub fn snapshot(&self) -> serde_json::Value {
        let out = Command::new(bin())
            .args(["status", "--json", "--config"])
            .arg(&self.config_path)
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The archive's counters from `drimbox status --json`.
    pub fn summary(&self) -> serde_json::Value {
        let s = self.snapshot();
        assert!(s["archive"].is_object(), "archive not answering: {s}");
        s["archive"].clone()
    }

    /// GET `path` from the status page: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.status_port, path)
    }

    pub fn staging_files(&self) -> Vec<PathBuf> {
        fs::read_dir(self.data_dir.join("staging"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    pub fn stored_path(&self, rel: &str) -> PathBuf {
        self.data_dir.join(rel)
    }
}

impl Drop for DrimBox {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1:port: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// [`http_get`] that reports a connection failure instead of panicking.
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

fn dcmtk(tool: &str) -> Command {
    // pip's pynetdicom installs look-alike `storescu`/`echoscu` earlier in PATH: use DCMTK's.
    let mut c = Command::new(format!("/usr/bin/{tool}"));
    c.env("TCP_NODELAY", "1");
    c
}

pub fn echoscu(port: u16, called: &str, extra: &[&str]) -> Output {
    dcmtk("echoscu")
        .args(extra)
        .args(["-aec", called, "-to", "5", "127.0.0.1", &port.to_string()])
        .output()
        .unwrap()
}

pub fn storescu(port: u16, args: &[&str]) -> Output {
    dcmtk("storescu")
        .args(["-aec", AET, "-to", "30", "-ta", "30", "-td", "60"])
        .args(args)
        .args(["127.0.0.1", &port.to_string()])
        .output()
        .unwrap()
}

pub fn storescu_files(port: u16, opts: &[&str], files: &[PathBuf]) -> Output {
    let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-aec".into(),
        AET.into(),
        "127.0.0.1".into(),
        port.to_string(),
    ]);
    args.extend(files.iter().map(|f| f.display().to_string()));
    dcmtk("storescu").args(&args).output().unwrap()
}

pub fn dcmsend(port: u16, files: &[PathBuf]) -> Output {
    dcmtk("dcmsend")
        .args(["-aec", AET, "127.0.0.1", &port.to_string()])
        .args(files)
        .output()
        .unwrap()
}

pub fn pyscu(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(repo().join("tests/peers/pyscu.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Generates a synthetic study with the company's generator (shared/bench/gen_study.py).
pub fn gen_study(out: &Path, count: u32, ts: &str, seed: &str, rows: u32) -> Vec<PathBuf> {
    let o = Command::new("python3")
        .arg(shared().join("bench/gen_study.py"))
        .args(["--out"])
        .arg(out)
        .args([
            "--count",
            &count.to_string(),
            "--ts",
            ts,
            "--seed",
            seed,
            "--rows",
            &rows.to_string(),
            "--cols",
            &rows.to_string(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "gen_study: {}", text(&o));
    files_in(out)
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// The data set bytes of a Part 10 file (everything after the file meta group).
pub fn dataset_bytes(path: &Path) -> Vec<u8> {
    let b = fs::read(path).unwrap();
    assert_eq!(&b[128..132], b"DICM", "{} is not Part 10", path.display());
    let gl = u32::from_le_bytes(b[140..144].try_into().unwrap()) as usize;
    b[144 + gl..].to_vec()
}

pub struct Uids {
    pub study: String,
    pub series: String,
    pub sop: String,
}

pub fn uids(path: &Path) -> Uids {
    let i = drimbox::dicom::inspect::inspect_file(path).unwrap();
    Uids {
        study: i.study_uid.unwrap(),
        series: i.series_uid.unwrap(),
        sop: i.sop_instance_uid.unwrap(),
    }
}

/// Instance entry of a study view by SOP Instance UID.
pub fn instance<'a>(view: &'a serde_json::Value, sop: &str) -> Option<&'a serde_json::Value> {
    view["instances"]
        .as_array()?
        .iter()
        .find(|i| i["sop_instance_uid"] == sop)
}

/// Checks that every file was stored with its data set byte for byte.
pub fn assert_stored_identical(b: &DrimBox, files: &[PathBuf]) {
    for f in files {
        let u = uids(f);
        let view = b
            .study(&u.study)
            .unwrap_or_else(|| panic!("study {} missing", u.study));
        let inst = instance(&view, &u.sop).unwrap_or_else(|| panic!("{} not indexed", u.sop));
        let stored = b.stored_path(inst["file"].as_str().unwrap());
        assert_eq!(
            dataset_bytes(&stored),
            dataset_bytes(f),
            "{} differs from what was sent",
            f.display()
        );
    }
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Sends one HL7 message with Debian python3-hl7's `mllp_send`; returns the ACK's bytes
/// (without the MLLP frame).
pub fn mllp_send(port: u16, message: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("msg.mllp");
    let mut framed = vec![0x0b];
    framed.extend_from_slice(message);
    framed.extend_from_slice(&[0x1c, 0x0d]);
    fs::write(&f, framed).unwrap();
    let o = Command::new("mllp_send")
        .args(["-p", &port.to_string(), "-f"])
        .arg(&f)
        .arg("127.0.0.1")
        .output()
        .expect("mllp_send (apt-get install python3-hl7)");
    assert!(o.status.success(), "{}", text(&o));
    let out = o.stdout;
    let start = out.iter().position(|&c| c == 0x0b).unwrap_or(0);
    let end = out.iter().position(|&c| c == 0x1c).unwrap_or(out.len());
    out[start + 1..end].to_vec()
}

/// A field of an HL7 message, e.g. `hl7_field(&ack, "MSA", 1)`.
pub fn hl7_field(message: &[u8], seg: &str, n: usize) -> String {
    let text = String::from_utf8_lossy(message);
    text.split('\r')
        .find(|s| s.starts_with(seg))
        .and_then(|s| s.split('|').nth(n))
        .unwrap_or("")
        .to_string()
}

/// Runs `openssl ARGS` in `dir`; it must succeed.
pub fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
}

/// A test CA (`<name>-ca.pem`), a server certificate for 127.0.0.1 and a client certificate, minted now.
pub fn mint_pki(dir: &Path, name: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} Test CA"),
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    );
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        fs::write(dir.join(format!("{name}-{who}.ext")), ext).unwrap();
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name} {who}"),
                "-keyout",
                &format!("{name}-{who}.key"),
                "-out",
                &format!("{name}-{who}.csr"),
            ],
            dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}-{who}.csr"),
                "-CA",
                &format!("{name}-ca.pem"),
                "-CAkey",
                &format!("{name}-ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}-{who}.pem"),
                "-extfile",
                &format!("{name}-{who}.ext"),
            ],
            dir,
        );
    }
}

/// Runs a tool that must succeed; its standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("tool");
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `drimbox exams --json` of a running box.
pub fn exams(b: &DrimBox) -> Vec<serde_json::Value> {
    let o = Command::new(bin())
        .args(["exams", "--json", "--config"])
        .arg(b.dir.path().join("drimbox.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "drimbox exams: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Password of the PKCS#12 [`mint_signing_pki`] writes.
pub const SIGNER_P12_PASSWORD: &str = "cabinet-secret";

/// A test PKI minted now: a CA, a signing certificate it issues (RSA 2048, a 128-bit serial
/// like IGC-Santé's, a subject like the practice's), and the PKCS#12 an installer would make
/// with OpenSSL 3's defaults (`signer.p12`, password [`SIGNER_P12_PASSWORD`]). `serial`: a fixed
/// serial (hex), else a random one. Returns the directory.
pub fn mint_signing_pki(subject: &str, serial: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/C=FR/O=DRIMbox test/OU=IGC TEST/CN=TEST AC DRIMBOX",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "signer.key",
            "-out",
            "signer.csr",
            "-subj",
            subject,
        ],
        d,
    );
    fs::write(
        d.join("signer.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\n",
    )
    .unwrap();
    let mut x509 = vec![
        "x509",
        "-req",
        "-in",
        "signer.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-days",
        "10",
        "-out",
        "signer.pem",
        "-extfile",
        "signer.ext",
    ];
    match serial {
        Some(s) => x509.extend(["-set_serial", s]),
        None => x509.push("-CAcreateserial"),
    }
    openssl(&x509, d);
    openssl(
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "signer.key",
            "-in",
            "signer.pem",
            "-certfile",
            "ca.pem",
            "-out",
            "signer.p12",
            "-passout",
            &format!("pass:{SIGNER_P12_PASSWORD}"),
        ],
        d,
    );
    dir
}

/// The Study Instance UID the agency's ORU sample names.
pub const ORU_SAMPLE_STUDY: &str = "1.2.250.1.213.4.5.2.1.112";

/// The agency's ORU re-addressed to another study: its own control id, and the CDA's
/// serviceEvent id replaced (the CDA decoded from OBX-5 and encoded again).
pub fn oru_for(study_uid: &str, control_id: &str) -> Vec<u8> {
    let text =
        String::from_utf8(fs::read(shared().join("ref/hl7/ORU_R01_K.hl7")).unwrap()).unwrap();
    let segments: Vec<String> = text
        .split("\r\n")
        .map(|seg| {
            let mut fields: Vec<String> = seg.split('|').map(str::to_string).collect();
            if seg.starts_with("MSH") {
                fields[9] = control_id.to_string();
            }
            if seg.starts_with("OBX") && fields.get(2).map(String::as_str) == Some("ED") {
                let mut parts: Vec<String> = fields[5].split('^').map(str::to_string).collect();
                let last = parts.len() - 1;
                let cda = drimbox::base64::decode(parts[last].as_bytes()).unwrap();
                let cda = String::from_utf8(cda)
                    .unwrap()
                    .replace(ORU_SAMPLE_STUDY, study_uid);
                parts[last] = drimbox::base64::encode(cda.as_bytes());
                fields[5] = parts.join("^");
            }
            fields.join("|")
        })
        .collect();
    segments.join("\r\n").into_bytes()
}

/// A process killed (and reaped) when the test ends, however it ends.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}
