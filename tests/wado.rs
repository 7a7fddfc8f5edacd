//! WADO-RS end to end with real clients: an exam published to the DMP simulator, then `curl`
//! with client certificates minted by openssl retrieves it as a consumer DRIMbox would; every
//! part is parsed by pydicom and compared with what the modality sent. Then the refusals: no
//! certificate, another CA, a subject not (or no longer) on the whitelist, a missing or unknown
//! KOS-SOPInstanceUID, a replaced and a withdrawn manifest, unacceptable and malformed Accept.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::dmp::*;
use common::*;

/// The agency validator's Accept header (shared/ref/wado-rs/request_series.txt).
fn agency_accept() -> String {
    let req = fs::read_to_string(shared().join("ref/wado-rs/request_series.txt")).unwrap();
    req.lines()
        .find_map(|l| l.strip_prefix("Accept:"))
        .unwrap()
        .trim()
        .to_string()
}

/// (path, KOS-SOPInstanceUID, Accept, status, words of the reason).
type Refused<'a> = (&'a str, Option<&'a str>, Option<&'a str>, u16, &'a str);

const ANY: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

/// A whitelist as the updater installs it (the WADO-RS server reads the list in service; the
/// updater alone verifies and writes it), listing `subjects`.
fn install_whitelist(b: &DrimBox, subjects: &[&str], generated: &str) {
    let mut domains = String::new();
    for (i, dn) in subjects.iter().enumerate() {
        domains.push_str(&format!(
            "<Domaine><Identifiant>{}</Identifiant><db>db{i}.test.example</db><vi>vi{i}.test.example</vi>\
             <Denomination>TEST</Denomination><DNCertificatOperateur>{dn}</DNCertificatOperateur></Domaine>",
            900 + i
        ));
    }
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListeBlancheDRIM-M xmlns=\"https://github.com/ansforge/DRIM-M_DATA\" \
         versionFormat=\"1.0.0\"><DateDeGeneration>{generated}</DateDeGeneration><ListeDomaines>{domains}\
         </ListeDomaines></ListeBlancheDRIM-M>"
    );
    let dir = b.data_dir.join("whitelist");
    fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(".liste-blanche.xml.tmp");
    fs::write(&tmp, xml).unwrap();
    fs::rename(tmp, dir.join("liste-blanche.xml")).unwrap();
}

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    curl_exit: i32,
}

/// GET `path` with curl, as the client `cert` (None: no certificate).
fn get(
    port: u16,
    tls: &Path,
    cert: Option<&str>,
    path: &str,
    kos: Option<&str>,
    accept: Option<&str>,
) -> Answer {
    get_with(port, tls, cert, path, kos, accept, "good")
}

/// [`get`] with another Bearer token.
fn get_with(
    port: u16,
    tls: &Path,
    cert: Option<&str>,
    path: &str,
    kos: Option<&str>,
    accept: Option<&str>,
    token: &str,
) -> Answer {
    let out = tempfile::tempdir().unwrap();
    let (h, body) = (out.path().join("h"), out.path().join("b"));
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "30", "--cacert"])
        .arg(tls.join("wado-ca.pem"))
        .arg("-D")
        .arg(&h)
        .arg("-o")
        .arg(&body);
    if let Some(name) = cert {
        c.arg("--cert")
            .arg(tls.join(format!("{name}-client.pem")))
            .arg("--key")
            .arg(tls.join(format!("{name}-client.key")));
    }
    if let Some(k) = kos {
        c.args(["-H", &format!("KOS-SOPInstanceUID: {k}")]);
    }
    // Without one, curl would send `Accept: */*`; `Accept:` removes it.
    c.args([
        "-H",
        &format!(
            "Accept:{}",
            accept.map_or(String::new(), |a| format!(" {a}"))
        ),
    ]);
    c.args(["-H", &format!("Authorization: Bearer {token}")]);
    c.arg(format!("https://127.0.0.1:{port}{path}"));
    let o = c.output().unwrap();
    let head = fs::read_to_string(&h).unwrap_or_default();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: fs::read(&body).unwrap_or_default(),
        curl_exit: o.status.code().unwrap_or(-1),
    }
}

/// The parts of a multipart/related body: (part headers, bytes).
fn parts(a: &Answer) -> Vec<(String, Vec<u8>)> {
    let ct = &a.headers["content-type"];
    let boundary = ct.split("boundary=").nth(1).unwrap().trim_matches('"');
    let sep = format!("--{boundary}");
    let b = &a.body;
    let starts: Vec<usize> = (0..b.len().saturating_sub(sep.len()))
        .filter(|&i| b[i..].starts_with(sep.as_bytes()))
        .collect();
    assert!(b.ends_with(format!("{sep}--\r\n").as_bytes()), "not closed");
    starts
        .windows(2)
        .map(|w| {
            let part = &b[w[0] + sep.len() + 2..w[1] - 2];
            let at = part.windows(4).position(|x| x == b"\r\n\r\n").unwrap();
            (
                String::from_utf8_lossy(&part[..at]).to_string(),
                part[at + 4..].to_vec(),
            )
        })
        .collect()
}

fn kos_uids(b: &DrimBox) -> Vec<String> {
    let out = run_ok(
        Command::new(bin())
            .args(["exam", STUDY, "--json", "--config"])
            .arg(&b.config_path),
    );
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    h["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kos_sop_uid"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn consumers_on_the_whitelist_retrieve_the_published_exam_and_everyone_else_is_told_why() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let tls = tempfile::tempdir().unwrap();
    mint_pki(tls.path(), "wado");
    mint_pki(tls.path(), "other");
    let t = tls.path();
    let sim = Simulator::start(pki.path(), &[]);
    let port = free_port();
    let p = |n: &str| format!("{:?}", t.join(n).display().to_string());
    // The token introspection endpoint (standing in for Pro Santé Connect).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    fs::write(
        t.join("tokens.json"),
        format!(
            "{{\"good\": {{\"active\": true, \"exp\": {}}}, \"revoked\": {{\"active\": false}}, \"old\": {{\"active\": true, \"exp\": {}}}}}",
            now + 3600,
            now - 10
        ),
    )
    .unwrap();
    fs::write(t.join("client-secret"), "s3cret\n").unwrap();
    let introspect_port = free_port();
    let _introspection = Server(
        Command::new("/usr/bin/python3")
            .arg(repo().join("tests/peers/introspect.py"))
            .args(["--port", &introspect_port.to_string()])
            .arg("--cert")
            .arg(t.join("wado-server.pem"))
            .arg("--key")
            .arg(t.join("wado-server.key"))
            .args(["--client", "drimbox-test:s3cret", "--tokens"])
            .arg(t.join("tokens.json"))
            .arg("--log")
            .arg(t.join("introspection.log"))
            .spawn()
            .unwrap(),
    );
    wait_port(introspect_port, "the introspection endpoint");
    let b = DrimBox::start(Settings {
        stable_after_seconds: 1,
        extra_config: config(pki.path(), sim.port)
            + &format!(
                "\n[wado]\nlisten = \"127.0.0.1\"\nport = {port}\ncertificate = {}\nprivate_key = {}\nclient_ca = {}\n\
                 [wado.introspection]\nurl = \"https://127.0.0.1:{introspect_port}/introspect\"\n\
                 trust_anchors = {}\nclient_id = \"drimbox-test\"\nclient_secret_file = {}\ncache_seconds = 300\n",
                p("wado-server.pem"),
                p("wado-server.key"),
                p("wado-ca.pem"),
                p("wado-ca.pem"),
                p("client-secret"),
            ),
        ..Settings::default()
    });
    // The agency's exam: six images stored as Explicit VR LE, two more as Implicit VR LE (a
    // series of their own), then its report.
    let (_images, mut sent) = send_study(&b, STUDY, "dmp");
    let (_implicit, implicit_files) = exam_images(STUDY, "wado-implicit", 2, 32, 1, "implicit");
    // -xi: propose Implicit VR only, so the box stores them so (DCMTK converts otherwise).
    let o = storescu_files(b.port, &["-xi"], &implicit_files);
    assert!(o.status.success(), "{}", text(&o));
    sent.extend(implicit_files.iter().cloned());
    let ack = mllp_send(
        b.hl7_port,
        &fs::read(shared().join("ref/hl7/ORU_R01_K.hl7")).unwrap(),
    );
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    wait_state(&b, "published", Duration::from_secs(60));
    let implicit_sops: Vec<String> = implicit_files.iter().map(|f| uids(f).sop).collect();
    let kos = kos_uids(&b)[0].clone();
    let base = format!("/wado/studies/{STUDY}");

    // No list in service yet: nobody is admitted.
    let a = get(port, t, Some("wado"), &base, Some(&kos), Some(ANY));
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
    assert!(String::from_utf8_lossy(&a.body).contains("no verified whitelist"));
    // A list without us: refused; one with us (another spelling of the DN): served, without
    // a restart.
    install_whitelist(&b, &["CN=someone else,O=X,C=FR"], "2026-12-01T00:00:00Z");
    let a = get(port, t, Some("wado"), &base, Some(&kos), Some(ANY));
    assert_eq!(a.status, 403);
    assert!(String::from_utf8_lossy(&a.body).contains("not on the DRIM-M whitelist"));
    install_whitelist(&b, &["cn = WADO Client"], "2026-12-02T00:00:00Z");

    // The whole study, then as the agency's validator asks for a series.
    let a = get(port, t, Some("wado"), &base, Some(&kos), Some(ANY));
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.headers["transfer-encoding"], "chunked");
    let got = parts(&a);
    assert_eq!(got.len(), sent.len());
    let dir = tempfile::tempdir().unwrap();
    let mut by_sop = BTreeMap::new();
    for f in &sent {
        by_sop.insert(uids(f).sop, f.clone());
    }
    let mut written: Vec<PathBuf> = Vec::new();
    // Two syntaxes among the parts: none named at the top.
    assert!(!a.headers["content-type"].contains("transfer-syntax"));
    for (i, (head, bytes)) in got.iter().enumerate() {
        let f = dir.path().join(format!("part{i}.dcm"));
        fs::write(&f, bytes).unwrap();
        let sop = uids(&f).sop;
        let stored_as = if implicit_sops.contains(&sop) {
            "1.2.840.10008.1.2\r\n"
        } else {
            "1.2.840.10008.1.2.1\r\n"
        };
        assert!(
            head.contains(&format!(
                "Content-Type: application/dicom;transfer-syntax={stored_as}"
            )),
            "{head}"
        );
        let original = &by_sop[&sop];
        assert_eq!(
            dataset_bytes(&f),
            dataset_bytes(original),
            "part {i} differs from what was sent"
        );
        written.push(f);
    }
    // pydicom reads every part.
    let o = Command::new("python3")
        .arg("-c")
        .arg("import sys, pydicom\nfor f in sys.argv[1:]: pydicom.dcmread(f).SOPInstanceUID")
        .args(&written)
        .output()
        .unwrap();
    assert!(o.status.success(), "pydicom: {}", text(&o));

    let series = uids(&sent[0]).series;
    let series_path = format!("{base}/series/{series}");
    let a = get(
        port,
        t,
        Some("wado"),
        &series_path,
        Some(&kos),
        Some(&agency_accept()),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let ct = &a.headers["content-type"];
    assert!(
        ct.starts_with("multipart/related;start=\"<")
            && ct.contains(";transfer-syntax=1.2.840.10008.1.2.1;")
            && ct.contains("type=\"application/dicom\""),
        "{ct}"
    );
    let in_series = sent.iter().filter(|f| uids(f).series == series).count();
    assert_eq!(parts(&a).len(), in_series);
    let sop = uids(&sent[0]).sop;
    let a = get(
        port,
        t,
        Some("wado"),
        &format!("{series_path}/instances/{sop}"),
        Some(&kos),
        Some(&agency_accept()),
    );
    assert_eq!(a.status, 200);
    assert_eq!(parts(&a).len(), 1);

    // The Implicit VR series, asked for as the validator does (no Implicit VR among its
    // syntaxes): converted to Explicit VR LE, the same data set by pydicom's comparison.
    let implicit_series = uids(&implicit_files[0]).series;
    let a = get(
        port,
        t,
        Some("wado"),
        &format!("{base}/series/{implicit_series}"),
        Some(&kos),
        Some(&agency_accept()),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.headers["content-type"].contains(";transfer-syntax=1.2.840.10008.1.2.1;"));
    let converted = parts(&a);
    assert_eq!(converted.len(), 2);
    let mut pairs = Vec::new();
    for (i, (head, bytes)) in converted.iter().enumerate() {
        assert!(
            head.contains("transfer-syntax=1.2.840.10008.1.2.1\r\n"),
            "{head}"
        );
        let f = dir.path().join(format!("converted{i}.dcm"));
        fs::write(&f, bytes).unwrap();
        pairs.push(by_sop[&uids(&f).sop].clone());
        pairs.push(f);
    }
    let o = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, pydicom\n\
             a = sys.argv[1:]\n\
             for orig, part in zip(a[::2], a[1::2]):\n\
             \x20   o, p = pydicom.dcmread(orig), pydicom.dcmread(part)\n\
             \x20   assert o.file_meta.TransferSyntaxUID == '1.2.840.10008.1.2', orig\n\
             \x20   assert p.file_meta.TransferSyntaxUID == '1.2.840.10008.1.2.1', part\n\
             \x20   assert not p.is_implicit_VR if hasattr(p, 'is_implicit_VR') else True\n\
             \x20   assert o == p, (orig, part)\n\
             \x20   assert o.PixelData == p.PixelData\n",
        )
        .args(&pairs)
        .output()
        .unwrap();
    assert!(o.status.success(), "pydicom: {}", text(&o));
    let dump = run_ok(Command::new("dcmdump").arg(&pairs[1]));
    assert!(dump.contains("LittleEndianExplicit"), "{dump}");

    // The agency validator's own requests, replayed byte for byte but for its host, UIDs and
    // token (absolute-form request line, its Accept, Java's User-Agent, keep-alive): the
    // answer has the Content-Type parameters and the chunking of the reference response.
    let reference = fs::read_to_string(shared().join("ref/wado-rs/response_headers.txt")).unwrap();
    assert!(reference
        .contains("transfer-syntax=1.2.840.10008.1.2.1;type=\"application/dicom\"; boundary="));
    let sample_study = "1.2.840.113745.101000.108000.38425.5599.7073835";
    let sample_series = "1.3.12.2.1107.5.1.4.54023.30000005041115305593700013463";
    for (file, expect) in [
        ("request_series.txt", in_series),
        ("request_instance.txt", 1),
    ] {
        let body = dir.path().join(format!("{file}.body"));
        let o = Command::new("python3")
            .arg(repo().join("tests/peers/replay.py"))
            .args(["--port", &port.to_string()])
            .arg("--ca")
            .arg(t.join("wado-ca.pem"))
            .arg("--cert")
            .arg(t.join("wado-client.pem"))
            .arg("--key")
            .arg(t.join("wado-client.key"))
            .arg("--request")
            .arg(shared().join("ref/wado-rs").join(file))
            .arg("--out")
            .arg(&body)
            .args([
                "--sub",
                &format!("KOS-SOPInstanceUID: {sample_series}=KOS-SOPInstanceUID: {kos}"),
                "--sub",
                &format!("https://interop.referencement.esante.gouv.fr/dicom-web-rs=https://127.0.0.1:{port}/wado"),
                "--sub",
                &format!("{sample_study}={STUDY}"),
                "--sub",
                &format!("{sample_series}={series}"),
                "--sub",
                "Bearer eyJhbGciOiJSUzI1NiIsInR5cCIgO=Bearer good",
            ])
            .args(if file == "request_instance.txt" {
                vec!["--sub".to_string(), format!("1.2.3.4.5.6.7={sop}")]
            } else {
                vec![]
            })
            .output()
            .unwrap();
        assert!(o.status.success(), "{file}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["status"], 200, "{file}: {v}");
        let header = |name: &str| {
            v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
                .map(|h| h[1].as_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let ct = header("content-type");
        assert!(
            ct.starts_with("multipart/related;start=\"<")
                && ct.contains(
                    ">\";transfer-syntax=1.2.840.10008.1.2.1;type=\"application/dicom\"; boundary="
                ),
            "{file}: {ct}"
        );
        assert_eq!(header("transfer-encoding"), "chunked");
        let replayed = Answer {
            status: 200,
            headers: [("content-type".to_string(), ct)].into_iter().collect(),
            body: fs::read(&body).unwrap(),
            curl_exit: 0,
        };
        assert_eq!(parts(&replayed).len(), expect, "{file}");
    }

    // Implicit VR only: the Explicit VR series converted the other way.
    let a = get(
        port,
        t,
        Some("wado"),
        &series_path,
        Some(&kos),
        Some("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2"),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    for (i, (head, bytes)) in parts(&a).iter().enumerate() {
        assert!(
            head.contains("transfer-syntax=1.2.840.10008.1.2\r\n"),
            "{head}"
        );
        let f = dir.path().join(format!("implicit{i}.dcm"));
        fs::write(&f, bytes).unwrap();
        let dump = run_ok(Command::new("dcmdump").arg(&f));
        assert!(dump.contains("LittleEndianImplicit"), "{dump}");
    }

    // dicomweb-client, the field's Python client: its default media type (no transfer-syntax
    // named: PS3.18's default, Explicit VR LE) and any syntax (each instance as stored).
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("python3")
        .arg(repo().join("tests/peers/dicomweb.py"))
        .args(["--url", &format!("https://127.0.0.1:{port}/wado")])
        .arg("--ca")
        .arg(t.join("wado-ca.pem"))
        .arg("--cert")
        .arg(t.join("wado-client.pem"))
        .arg("--key")
        .arg(t.join("wado-client.key"))
        .args([
            "--kos", &kos, "--token", "good", "--study", STUDY, "--series", &series,
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "dicomweb-client: {}", text(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let series_got = got["series"].as_array().unwrap();
    assert_eq!(series_got.len(), in_series, "{got}");
    assert!(
        series_got.iter().all(|x| x[1] == "1.2.840.10008.1.2.1"),
        "{got}"
    );
    let study_got = got["study"].as_array().unwrap();
    assert_eq!(study_got.len(), sent.len(), "{got}");
    for x in study_got {
        let sop = x[0].as_str().unwrap();
        let stored = if implicit_sops.iter().any(|s| s == sop) {
            "1.2.840.10008.1.2"
        } else {
            "1.2.840.10008.1.2.1"
        };
        assert_eq!(x[1], stored, "{got}");
    }

    // Refusals, each with its reason.
    let a = get(port, t, None, &base, Some(&kos), Some(ANY));
    assert_eq!(a.status, 0, "served without a client certificate");
    assert_ne!(a.curl_exit, 0);
    let a = get(port, t, Some("other"), &base, Some(&kos), Some(ANY));
    assert_eq!(a.status, 0, "served a certificate of another CA");
    let cases: &[Refused] = &[
        (&base, None, Some(ANY), 400, "KOS-SOPInstanceUID header is required"),
        (&base, Some("1.2.3.4.5"), Some(ANY), 404, "no manifest with this KOS-SOPInstanceUID"),
        (&base, Some(&kos), None, 400, "Accept header is required"),
        (&base, Some(&kos), Some("multipart/related; type=\"application/dicom"), 400, "unclosed quote"),
        (
            &base,
            Some(&kos),
            Some("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50"),
            406,
            "stored as 1.2.840.10008.1.2.1",
        ),
        (&base, Some(&kos), Some("application/json"), 406, "no DICOM multipart"),
        ("/wado/studies/1.2.3/series/4.5", Some(&kos), Some(ANY), 404, "no manifest"),
        (&format!("{base}/series/9.9.9"), Some(&kos), Some(ANY), 404, "no such series"),
        ("/elsewhere", Some(&kos), Some(ANY), 404, "not a WADO-RS retrieve"),
    ];
    for (path, k, accept, status, why) in cases {
        let a = get(port, t, Some("wado"), path, *k, *accept);
        let body = String::from_utf8_lossy(&a.body[..a.body.len().min(300)]);
        assert_eq!(a.status, *status, "{path} {k:?} {accept:?}: {body}");
        assert!(body.contains(why), "{path}: `{body}` lacks `{why}`");
    }

    // Tokens: missing, inactive or expired → 401; the good one was asked about once (cached).
    for (token, why) in [
        ("", "not `Bearer <token>`"),
        ("revoked", "not active"),
        ("old", "expired"),
    ] {
        let a = get_with(port, t, Some("wado"), &base, Some(&kos), Some(ANY), token);
        let body = String::from_utf8_lossy(&a.body);
        assert_eq!(a.status, 401, "{token}: {body}");
        assert!(body.contains(why), "{token}: {body}");
        assert!(a.headers["www-authenticate"].starts_with("Bearer"));
    }
    let asked = fs::read_to_string(t.join("introspection.log")).unwrap();
    assert_eq!(asked.lines().filter(|l| *l == "good").count(), 1, "{asked}");

    // A replacement: the new manifest is served, the old one is told a newer one exists.
    let ack = mllp_send(b.hl7_port, &oru_version("RO", "C", "id-replacement"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    wait_lots(&b, "published", 2);
    let kos2 = kos_uids(&b)[1].clone();
    assert_ne!(kos, kos2);
    assert_eq!(
        get(port, t, Some("wado"), &base, Some(&kos2), Some(ANY)).status,
        200
    );
    let a = get(port, t, Some("wado"), &base, Some(&kos), Some(ANY));
    assert_eq!(a.status, 404);
    assert!(String::from_utf8_lossy(&a.body).contains("newer KOS"));
    // An image rejected (IOCM, "rejected for quality reasons"): the KOS is replaced by one
    // without it, and it is never served again, whatever is asked.
    let note_dir = tempfile::tempdir().unwrap();
    let note = note_dir.path().join("note.dcm");
    let rejected = &sent[0];
    let o = pyscu(&[
        "rejection",
        note.to_str().unwrap(),
        "113001",
        rejected.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(storescu_files(b.port, &[], std::slice::from_ref(&note))
        .status
        .success());
    wait_lots(&b, "published", 3);
    let kos3 = kos_uids(&b)[2].clone();
    let a = get(port, t, Some("wado"), &base, Some(&kos3), Some(ANY));
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let now_served: Vec<String> = parts(&a)
        .iter()
        .enumerate()
        .map(|(i, (_, bytes))| {
            let f = dir.path().join(format!("after-rejection{i}.dcm"));
            fs::write(&f, bytes).unwrap();
            uids(&f).sop
        })
        .collect();
    assert_eq!(now_served.len(), sent.len() - 1);
    assert!(!now_served.contains(&uids(rejected).sop));
    let a = get(
        port,
        t,
        Some("wado"),
        &format!(
            "{base}/series/{}/instances/{}",
            uids(rejected).series,
            uids(rejected).sop
        ),
        Some(&kos3),
        Some(ANY),
    );
    assert_eq!(a.status, 404, "{}", String::from_utf8_lossy(&a.body));
    assert!(String::from_utf8_lossy(&a.body).contains("rejected"));

    // Withdrawn: gone, whichever manifest the consumer holds.
    let ack = mllp_send(b.hl7_port, &oru_version("CA", "D", "id-deletion"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    wait_lots(&b, "withdrawn", 4);
    for k in [&kos, &kos2, &kos3] {
        let a = get(port, t, Some("wado"), &base, Some(k), Some(ANY));
        assert_eq!(a.status, 410, "{}", String::from_utf8_lossy(&a.body));
    }

    // A newer list without us: access ends, without a restart.
    install_whitelist(&b, &["CN=someone else,O=X,C=FR"], "2026-12-03T00:00:00Z");
    assert_eq!(
        get(port, t, Some("wado"), &base, Some(&kos2), Some(ANY)).status,
        403
    );

    // Every request that reached HTTP is in the audit trail, with who and what.
    // (Recorded just after each answer: the last one may take a moment.) Six retrieves and
    // refusals before the cases, the cases, four after the replacement, the last refusal;
    // the two TLS refusals never reached HTTP.
    let expected = 7 + 2 + 2 + cases.len() + 3 + 2 + 2 + 3 + 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let out = run_ok(
            Command::new(bin())
                .args(["wado", "accesses", "--json", "--limit", "100", "--config"])
                .arg(&b.config_path),
        );
        let log: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if log.len() >= expected || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(log.len(), expected, "{log:#?}");
    let served = log.iter().find(|a| a["outcome"] == "served").unwrap();
    assert_eq!(served["client"], "CN=wado client");
    assert_eq!(served["study_uid"], STUDY);
    assert!(served["bytes"].as_u64().unwrap() > 0);
    assert!(log
        .iter()
        .any(|a| a["status"] == 410 && a["outcome"] == "withdrawn"));

    // The beat counts them by outcome (within a beat or two).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = b.http_get("/status.json");
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        let wado = s["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "wado")
            .unwrap()
            .clone();
        let n = |k: &str| wado["counters"][k].as_u64().unwrap_or(0);
        if n("wado_served") >= 4
            && n("wado_refused_not_whitelisted") >= 2
            && n("wado_refused_tls") >= 2
        {
            assert!(n("wado_refused_manifest_replaced") >= 1, "{wado:#}");
            assert!(n("wado_refused_withdrawn") >= 3, "{wado:#}");
            let summary = s["wado"]["summary"].as_str().unwrap();
            assert!(summary.contains(" served, "), "{s:#}");
            assert!(
                s["wado"]["details"]
                    .to_string()
                    .contains("refused, withdrawn: 3"),
                "{s:#}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{wado:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A 1 GiB series (128 instances of 8 MiB) streams through the server's fixed buffers: its
/// peak resident memory stays under 64 MiB, and every byte arrives.
#[test]
fn a_1_gib_series_streams_in_bounded_memory() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let tls = tempfile::tempdir().unwrap();
    mint_pki(tls.path(), "wado");
    let t = tls.path();
    let sim = Simulator::start(pki.path(), &[]);
    let port = free_port();
    let p = |n: &str| format!("{:?}", t.join(n).display().to_string());
    let b = DrimBox::start(Settings {
        stable_after_seconds: 1,
        extra_config: config(pki.path(), sim.port)
            + &format!(
                "\n[wado]\nlisten = \"127.0.0.1\"\nport = {port}\ncertificate = {}\nprivate_key = {}\nclient_ca = {}\n",
                p("wado-server.pem"),
                p("wado-server.key"),
                p("wado-ca.pem"),
            ),
        ..Settings::default()
    });
    let (_images, files) = exam_images(STUDY, "wado-1gib", 128, 2048, 1, "explicit");
    let total: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert!(total >= 1 << 30, "only {total} bytes generated");
    let o = storescu_files(b.port, &[], &files);
    assert!(o.status.success(), "{}", text(&o));
    let ack = mllp_send(
        b.hl7_port,
        &fs::read(shared().join("ref/hl7/ORU_R01_K.hl7")).unwrap(),
    );
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    wait_state(&b, "published", Duration::from_secs(120));
    install_whitelist(&b, &["CN=wado client"], "2026-12-02T00:00:00Z");
    let kos = kos_uids(&b)[0].clone();
    let series = uids(&files[0]).series;
    let wado = b.service_pid("wado").unwrap();
    let before = peak_rss_kib(wado);
    let o = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "600",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg("--cacert")
        .arg(t.join("wado-ca.pem"))
        .arg("--cert")
        .arg(t.join("wado-client.pem"))
        .arg("--key")
        .arg(t.join("wado-client.key"))
        .args(["-H", &format!("KOS-SOPInstanceUID: {kos}")])
        .args(["-H", &format!("Accept: {ANY}")])
        .arg(format!(
            "https://127.0.0.1:{port}/wado/studies/{STUDY}/series/{series}"
        ))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&o.stdout).to_string();
    let (code, size) = answer.split_once(' ').unwrap();
    assert_eq!(code, "200", "{answer} {}", text(&o));
    let size: u64 = size.parse().unwrap();
    assert!(size > total, "{size} bytes received for {total} stored");
    let peak = peak_rss_kib(wado);
    println!("wado peak RSS: {before} KiB before, {peak} KiB after streaming {size} bytes");
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB while streaming 1 GiB"
    );
}
