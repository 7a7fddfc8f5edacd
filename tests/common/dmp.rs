//! The DMP side of the harness: the practice's test PKI, the `drimbox dmp-sim` simulator, a
//! box configured to publish to it, and the agency's exam (its ORU and six images) sent in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub const STUDY: &str = "1.2.250.1.213.4.5.2.1.112";
pub const INS: &str = "279035121518989";

/// A CA; the simulator's server certificate (127.0.0.1); the practice's authentication and
/// signing certificates, each in a PKCS#12.
pub fn mint(dir: &Path) {
    mint_pki(dir, "dmp");
    for who in ["auth", "sign"] {
        let p = |n: &str| dir.join(n).display().to_string();
        run_ok(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p(&format!("{who}.key")),
            "-out",
            &p(&format!("{who}.csr")),
            "-subj",
            "/C=FR/O=CABINET TEST/OU=499700367909006/CN=DRIMbox",
        ]));
        fs::write(
            dir.join(format!("{who}.ext")),
            "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        run_ok(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &p(&format!("{who}.csr")),
            "-CA",
            &p("dmp-ca.pem"),
            "-CAkey",
            &p("dmp-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &p(&format!("{who}.pem")),
            "-extfile",
            &p(&format!("{who}.ext")),
        ]));
        run_ok(Command::new("openssl").args([
            "pkcs12",
            "-export",
            "-inkey",
            &p(&format!("{who}.key")),
            "-in",
            &p(&format!("{who}.pem")),
            "-out",
            &p(&format!("{who}.p12")),
            "-passout",
            "pass:pw",
        ]));
        fs::write(dir.join(format!("{who}.pass")), "pw\n").unwrap();
    }
}

pub struct Simulator {
    pub child: Child,
    pub port: u16,
    pub state: PathBuf,
}

impl Simulator {
    pub fn start(pki: &Path, faults: &[&str]) -> Simulator {
        Simulator::start_on(pki, free_port(), faults)
    }

    pub fn start_on(pki: &Path, port: u16, faults: &[&str]) -> Simulator {
        let state = pki.join(format!("registry-{port}.json"));
        let mut cmd = Command::new(bin());
        cmd.args(["dmp-sim", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--certificate")
            .arg(pki.join("dmp-server.pem"))
            .arg("--private-key")
            .arg(pki.join("dmp-server.key"))
            .arg("--client-ca")
            .arg(pki.join("dmp-ca.pem"))
            .arg("--state")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for f in faults {
            cmd.args(["--fault", f]);
        }
        let child = cmd.spawn().unwrap();
        wait_port(port, "dmp-sim");
        Simulator { child, port, state }
    }

    pub fn registry(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(&self.state).unwrap()).unwrap()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config(pki: &Path, port: u16) -> String {
    let p = |n: &str| format!("{:?}", pki.join(n).display().to_string());
    format!(
        "\n[publication]\nwado_base_url = \"https://db.cabinet-test.fr/wado\"\n\
         uid_root = \"1.2.250.1.999.77\"\n\
         content_type = {{ code = \"07\", scheme = \"1.2.250.1.213.2.2\", display = \"Consultation externe\" }}\n\
         [publication.signing]\npkcs12 = {}\npassword_file = {}\nalgorithm = \"rsa-sha1\"\n\
         [dmp]\nurl = \"https://127.0.0.1:{port}/si-dmp-server/v2/services\"\n\
         trust_anchors = {}\npkcs12 = {}\npassword_file = {}\ntimeout_seconds = 5\n\
         lps_id = \"TEST-0001\"\nlps_homologation = \"TEST-HOMOLOGATION\"\n\
         roles = [\"10^1.2.250.1.71.1.2.7^Medecin\", \"SM44^1.2.250.1.71.4.2.5^Radio-diagnostic (SM)\"]\n",
        p("sign.p12"),
        p("sign.pass"),
        p("dmp-ca.pem"),
        p("auth.p12"),
        p("auth.pass"),
    )
}

pub fn wait_state(b: &DrimBox, label: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let e = exams(b).into_iter().find(|e| e["study_uid"] == STUDY);
        if let Some(e) = e.as_ref().filter(|e| e["label"] == label) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "exam never reached `{label}`: {e:?}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A box publishing to `sim`, with the ORU's study (6 images) and the ORU sent.
pub fn publish_one(pki: &Path, sim: &Simulator) -> DrimBox {
    publish_one_with_images(pki, sim).0
}

/// The same, keeping the images (for IOCM rejections later).
pub fn publish_one_with_images(
    pki: &Path,
    sim: &Simulator,
) -> (DrimBox, tempfile::TempDir, Vec<PathBuf>) {
    publish_one_in(pki, sim, Settings::default())
}

/// The same, in a box started with `settings` (its DMP configuration and stability added).
pub fn publish_one_in(
    pki: &Path,
    sim: &Simulator,
    settings: Settings,
) -> (DrimBox, tempfile::TempDir, Vec<PathBuf>) {
    let b = DrimBox::start(Settings {
        stable_after_seconds: 1,
        extra_config: config(pki, sim.port) + &settings.extra_config,
        ..settings
    });
    let (images, files) = send_study(&b, STUDY, "dmp");
    let ack = mllp_send(
        b.hl7_port,
        &fs::read(shared().join("ref/hl7/ORU_R01_K.hl7")).unwrap(),
    );
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    (b, images, files)
}

/// `count` images (`rows`², in `series` series, transfer syntax `ts` as gen_study.py names it)
/// of the agency's patient (`INS`, accession ACN112) in study `uid`, generated from `seed`:
/// their directory and files.
pub fn exam_images(
    uid: &str,
    seed: &str,
    count: u32,
    rows: u32,
    series: u32,
    ts: &str,
) -> (tempfile::TempDir, Vec<PathBuf>) {
    let images = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("python3")
            .arg(shared().join("bench/gen_study.py"))
            .arg("--out")
            .arg(images.path())
            .args(["--count", &count.to_string(), "--rows", &rows.to_string()])
            .args(["--cols", &rows.to_string(), "--series", &series.to_string()])
            .args([
                "--ts",
                ts,
                "--seed",
                seed,
                "--patient-id",
                INS,
                "--accession",
                "ACN112",
            ]),
    );
    let files = files_in(images.path());
    run_ok(
        Command::new("dcmodify")
            .args(["-nb", "-m"])
            .arg(format!("(0020,000d)={uid}"))
            .args(&files),
    );
    (images, files)
}

/// Six images of `INS` in study `uid` (generated from `seed`), stored into the box.
pub fn send_study(b: &DrimBox, uid: &str, seed: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
    let (images, files) = exam_images(uid, seed, 6, 32, 2, "explicit");
    let o = storescu_files(b.port, &[], &files);
    assert!(o.status.success(), "{}", text(&o));
    (images, files)
}

/// The agency's ORU as another version of the report: ORC-1 and the CDA's OBX-11 set to
/// `order`/`status` (RO/C: a replacement, CA/D: a deletion), with its own control id.
pub fn oru_version(order: &str, status: &str, control_id: &str) -> Vec<u8> {
    let text =
        String::from_utf8(fs::read(shared().join("ref/hl7/ORU_R01_K.hl7")).unwrap()).unwrap();
    text.split("\r\n")
        .map(|seg| {
            let mut f: Vec<String> = seg.split('|').map(str::to_string).collect();
            if seg.starts_with("MSH") {
                f[9] = control_id.into();
            }
            if seg.starts_with("ORC") {
                f[1] = order.into();
            }
            if seg.starts_with("OBX") && f.get(2).map(String::as_str) == Some("ED") {
                f[11] = status.into();
            }
            f.join("|")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes()
}

pub fn wait_lots(b: &DrimBox, label: &str, lots: u64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let e = exams(b)
            .into_iter()
            .find(|e| e["study_uid"] == STUDY)
            .unwrap();
        if e["label"] == label && e["lots"] == lots {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {label} with {lots} lots: {e}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
