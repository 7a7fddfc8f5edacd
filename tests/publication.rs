//! From images and a report to a signed lot, end to end with the field's tools: images sent with
//! DCMTK `storescu`, the agency's ORU with `mllp_send`; the KOS checked by `dciodvfy`, `dsrdump`
//! and `dcentvfy` against the images; the lot signature by `xmlsec1 --verify` against a CA
//! minted with `openssl`; the XDM zip listed and unpacked by Python's `zipfile`. Then the exam
//! states the issue names: report without images, images without report, identity mismatch,
//! DESTDMP=N.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const ORU_STUDY: &str = "1.2.250.1.213.4.5.2.1.112";
const ORU_IPP: &str = "1234567890121";
const ORU_INS: &str = "279035121518989";
const MDM_STUDY: &str = "1.2.250.1.213.4.5.2.1.113";

fn sample(name: &str) -> Vec<u8> {
    fs::read(shared().join("ref/hl7").join(name)).unwrap()
}

/// A test CA and the practice's signing certificate in a PKCS#12 (OpenSSL 3 defaults).
fn mint_signing(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n).display().to_string();
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-subj",
        "/CN=Test IGC-Sante CA",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    run_ok(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("sign.key"),
        "-out",
        &p("sign.csr"),
        "-subj",
        "/C=FR/O=CABINET TEST/OU=499700367909006/CN=DRIMbox",
    ]));
    fs::write(
        dir.join("ext.cnf"),
        "keyUsage=critical,digitalSignature,nonRepudiation\n",
    )
    .unwrap();
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("sign.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("sign.pem"),
        "-days",
        "30",
        "-extfile",
        &p("ext.cnf"),
    ]));
    run_ok(Command::new("openssl").args([
        "pkcs12",
        "-export",
        "-inkey",
        &p("sign.key"),
        "-in",
        &p("sign.pem"),
        "-certfile",
        &p("ca.pem"),
        "-out",
        &p("sign.p12"),
        "-passout",
        "pass:s3cret",
    ]));
    fs::write(dir.join("sign.pass"), "s3cret\n").unwrap();
    (
        dir.join("sign.p12"),
        dir.join("sign.pass"),
        dir.join("ca.pem"),
    )
}

fn publication_config(p12: &Path, pass: &Path, algorithm: &str) -> String {
    format!(
        "\n[publication]\nwado_base_url = \"https://db.cabinet-test.fr/wado\"\n\
         uid_root = \"1.2.250.1.999.42\"\ninstitution_name = \"Cabinet de radiologie test\"\n\
         content_type = {{ code = \"07\", scheme = \"1.2.250.1.213.2.2\", display = \"Consultation externe\" }}\n\
         [publication.signing]\npkcs12 = {:?}\npassword_file = {:?}\nalgorithm = \"{algorithm}\"\n",
        p12.display().to_string(),
        pass.display().to_string()
    )
}

/// A small study under `study_uid` for `patient_id`, with the given accession.
fn study(
    dir: &Path,
    study_uid: &str,
    patient_id: &str,
    accession: &str,
    series: u32,
) -> Vec<PathBuf> {
    let o = Command::new("python3")
        .arg(shared().join("bench/gen_study.py"))
        .args(["--out"])
        .arg(dir)
        .args(["--count", "6", "--rows", "32", "--cols", "32", "--series"])
        .arg(series.to_string())
        .args([
            "--seed",
            study_uid,
            "--patient-id",
            patient_id,
            "--accession",
            accession,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "gen_study: {}", text(&o));
    let files = files_in(dir);
    let mut cmd = Command::new("dcmodify");
    cmd.args(["-nb", "-m"])
        .arg(format!("(0020,000d)={study_uid}"));
    cmd.args(&files);
    run_ok(&mut cmd);
    files
}

fn exam(b: &DrimBox, uid: &str) -> Option<serde_json::Value> {
    exams(b).into_iter().find(|e| e["study_uid"] == uid)
}

fn wait_state(b: &DrimBox, uid: &str, label: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = exam(b, uid);
        if let Some(e) = e.as_ref().filter(|e| e["label"] == label) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "exam {uid} never reached `{label}`: {e:?}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn send_images(b: &DrimBox, files: &[PathBuf]) {
    let o = storescu_files(b.port, &[], files);
    assert!(o.status.success(), "storescu: {}", text(&o));
}

fn sha1_hex(path: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha1", "-r"])
            .arg(path),
    );
    out.split_whitespace().next().unwrap().to_string()
}

fn xpath(file: &Path, expr: &str) -> String {
    run_ok(Command::new("xmllint").args(["--xpath", expr]).arg(file))
}

#[test]
fn images_and_report_become_a_signed_lot_and_an_xdm_medium() {
    let keys = tempfile::tempdir().unwrap();
    let (p12, pass, ca) = mint_signing(keys.path());
    let b = DrimBox::start(Settings {
        stable_after_seconds: 1,
        extra_config: publication_config(&p12, &pass, "rsa-sha256"),
        ..Settings::default()
    });
    let images = tempfile::tempdir().unwrap();
    // The modality filled in the INS and the patient as the report has them (DRIM-M: the KOS's
    // PatientID is the INS), so that dcentvfy can hold KOS and images to one identity.
    let files = study(images.path(), ORU_STUDY, ORU_INS, "ACN112", 2);
    let mut demographics = Command::new("dcmodify");
    demographics.args([
        "-nb",
        "-m",
        "(0010,0010)=PAT-TROIS^DOMINIQUE",
        "-m",
        "(0010,0030)=19790328",
        "-m",
        "(0010,0040)=F",
    ]);
    demographics.args(&files);
    run_ok(&mut demographics);

    // Images first: the exam waits for its report.
    send_images(&b, &files);
    let e = wait_state(&b, ORU_STUDY, "awaiting report");
    assert_eq!(e["images"], 6);

    // The agency's ORU names this study: AA, then a lot is built.
    let ack = mllp_send(b.hl7_port, &sample("ORU_R01_K.hl7"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    let e = wait_state(&b, ORU_STUDY, "lot built");
    assert_eq!(e["lots"], 1);

    let lot = b.data_dir.join("lots").join(ORU_STUDY).join("SS000001");
    let kos = lot.join("KOS_1_1.DCM");
    let sign = lot.join("SIGN_1.XML");
    let metadata = lot.join("METADATA.XML");
    assert!(fs::read_dir(b.data_dir.join("lot-staging"))
        .unwrap()
        .next()
        .is_none());

    // The KOS: no dciodvfy error, and no warning but the documented ones.
    let o = Command::new("dciodvfy").arg(&kos).output().unwrap();
    let report = text(&o);
    for line in report.lines() {
        assert!(!line.starts_with("Error"), "dciodvfy: {report}");
        if line.starts_with("Warning") {
            assert!(
                line.contains("Retrieve URL") || line.contains("Standard Extended SOP Class"),
                "unexpected dciodvfy warning: {line}\n{report}"
            );
        }
    }
    let dump = run_ok(Command::new("dsrdump").arg(&kos));
    assert!(!dump.contains("Template Identifier 2010"), "{dump}");
    assert!(dump.contains("Key Object Selection Document"), "{dump}");
    // Consistent with the images it references (patient, study, … across the files).
    let mut entity = Command::new("dcentvfy");
    entity.arg(&kos).args(&files);
    let o = entity.output().unwrap();
    assert!(!text(&o).contains("Error"), "dcentvfy: {}", text(&o));
    let dump = run_ok(Command::new("dcmdump").arg("+L").arg(&kos));
    for expected in [
        "[ISO_IR 100]",
        "[279035121518989]",
        "[1.2.250.1.213.1.4.10]",
        "[ACN112]",
        "[2010]",
        "https://db.cabinet-test.fr/wado/studies/1.2.250.1.213.4.5.2.1.112/series/",
        "[1.2.250.1.999.42.1.",
    ] {
        assert!(
            dump.contains(expected),
            "{expected} not in the KOS:\n{dump}"
        );
    }

    // The lot signature verifies with xmlsec1 against the practice's CA.
    let o = Command::new("xmlsec1")
        .args([
            "--verify",
            "--ignore-manifests",
            "--id-attr:Id",
            "Manifest",
            "--id-attr:Id",
            "http://uri.etsi.org/01903/v1.1.1#:SignedProperties",
            "--trusted-pem",
        ])
        .arg(&ca)
        .arg(&sign)
        .output()
        .unwrap();
    assert!(o.status.success(), "xmlsec1: {}", text(&o));
    // The Manifest's KOS digest is over the very KOS bytes.
    let kos_bytes = fs::read(&kos).unwrap();
    let b64 = run_ok(Command::new("sh").arg("-c").arg(format!(
        "openssl dgst -sha256 -binary {} | openssl base64 -A",
        kos.display()
    )));
    let sign_text = fs::read_to_string(&sign).unwrap();
    assert!(
        sign_text.contains(b64.trim()),
        "KOS digest not in the Manifest"
    );

    // The metadata hashes exactly the archived bytes.
    let kos_hash = xpath(
        &metadata,
        "string(//*[local-name()='ExtrinsicObject'][@id='DocumentKOS']/*[local-name()='Slot'][@name='hash']//*[local-name()='Value'])",
    );
    assert_eq!(kos_hash.trim(), sha1_hex(&kos));
    let kos_size = xpath(
        &metadata,
        "string(//*[local-name()='ExtrinsicObject'][@id='DocumentKOS']/*[local-name()='Slot'][@name='size']//*[local-name()='Value'])",
    );
    assert_eq!(kos_size.trim(), kos_bytes.len().to_string());
    let sig_hash = xpath(
        &metadata,
        "string(//*[local-name()='ExtrinsicObject'][@id='Signature01']/*[local-name()='Slot'][@name='hash']//*[local-name()='Value'])",
    );
    assert_eq!(sig_hash.trim(), sha1_hex(&sign));
    // INVISIBLE_PATIENT=Y and INVISIBLE_REP_LEGAUX=Y in the message: on the KOS entry.
    let confidentiality = xpath(
        &metadata,
        "//*[local-name()='ExtrinsicObject'][@id='DocumentKOS']/*[local-name()='Classification'][@classificationScheme='urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f']/@nodeRepresentation",
    );
    assert!(
        confidentiality.contains("INVISIBLE_PATIENT"),
        "{confidentiality}"
    );
    assert!(confidentiality.contains("INVISIBLE_REPRESENTANTS_LEGAUX"));
    assert!(!confidentiality.contains("MASQUE_PS"));
    run_ok(Command::new("xmllint").arg("--noout").arg(&metadata));

    // drimbox export XDM: the standard layout, the archived bytes.
    let out = b.dir.path().join("exam.zip");
    run_ok(
        Command::new(bin())
            .args(["export", "XDM", ORU_STUDY, "--config"])
            .arg(b.dir.path().join("drimbox.toml"))
            .arg("--out")
            .arg(&out),
    );
    let unpacked = b.dir.path().join("xdm");
    run_ok(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&out)
            .arg(&unpacked),
    );
    for f in [
        "README.TXT",
        "INDEX.HTM",
        "IHE_XDM/SS000001/METADATA.XML",
        "IHE_XDM/SS000001/KOS_1_1.DCM",
        "IHE_XDM/SS000001/SIGN_1.XML",
    ] {
        assert!(unpacked.join(f).is_file(), "{f} missing from the XDM zip");
    }
    assert_eq!(
        fs::read(unpacked.join("IHE_XDM/SS000001/KOS_1_1.DCM")).unwrap(),
        kos_bytes
    );
    run_ok(
        Command::new("xmllint")
            .arg("--noout")
            .arg(unpacked.join("INDEX.HTM")),
    );
    let o = Command::new(bin())
        .args(["export", "XDM", "1.2.3.4", "--config"])
        .arg(b.dir.path().join("drimbox.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // A later DESTDMP=N for the same exam (new control id): not for the DMP any more.
    let oru = String::from_utf8(sample("ORU_R01_K.hl7")).unwrap();
    let no_dmp = oru
        .replacen("|ORU^R01^ORU_R01|id|", "|ORU^R01^ORU_R01|id-no-dmp|", 1)
        .replace(
            "DESTDMP^Destinataire DMP^MetaDMPMSS||Y^",
            "DESTDMP^Destinataire DMP^MetaDMPMSS||N^",
        );
    assert_ne!(no_dmp, oru);
    let ack = mllp_send(b.hl7_port, no_dmp.as_bytes());
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    let e = wait_state(&b, ORU_STUDY, "not for the DMP");
    assert_eq!(e["reason"], "the report message says DESTDMP=N");

    assert!(!b.log().contains("PAT-TROIS"), "patient name in the log");
}

#[test]
fn reports_without_images_and_mismatched_identities_are_held_visibly() {
    let keys = tempfile::tempdir().unwrap();
    let (p12, pass, _) = mint_signing(keys.path());
    let b = DrimBox::start(Settings {
        stable_after_seconds: 1,
        extra_config: publication_config(&p12, &pass, "rsa-sha1"),
        ..Settings::default()
    });
    // The MDM names study …113: no image yet.
    let ack = mllp_send(b.hl7_port, &sample("MDM_T02_L.hl7"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    wait_state(&b, MDM_STUDY, "awaiting images");

    // Images of that study, but for another patient: held, with the reason, never built.
    let images = tempfile::tempdir().unwrap();
    let files = study(images.path(), MDM_STUDY, "OTHER-PATIENT-9", "ACN113", 1);
    send_images(&b, &files);
    let e = wait_state(&b, MDM_STUDY, "on hold");
    assert_eq!(
        e["reason"],
        "the images' Patient ID is neither the report's IPP nor its INS"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(exam(&b, MDM_STUDY).unwrap()["lots"], 0);
    assert!(!b.data_dir.join("lots").join(MDM_STUDY).exists());

    // The status page says so (the UID and the reason, no patient data), and degrades.
    let snapshot = b.snapshot();
    assert_eq!(snapshot["verdict"], "degraded", "{snapshot}");
    let listed = &snapshot["exams"]["listed"];
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["study_uid"] == MDM_STUDY && l["state"] == "on hold"),
        "{snapshot}"
    );
    let (code, page) = b.http_get("/");
    assert_eq!(code, 200);
    assert!(page.contains("data-exam-state=\"on hold\""), "{page}");
    assert!(
        page.contains("neither the report&#39;s IPP") || page.contains("neither the report's IPP")
    );
    assert!(!page.contains("PAT-TROIS") && !page.contains("OTHER-PATIENT-9"));

    // Images with the right identity but another accession: held too.
    let images2 = tempfile::tempdir().unwrap();
    let files = study(
        images2.path(),
        "1.2.250.1.213.4.5.2.1.112",
        ORU_IPP,
        "ACN-WRONG",
        1,
    );
    send_images(&b, &files);
    let ack = mllp_send(b.hl7_port, &sample("ORU_R01_K.hl7"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    let e = wait_state(&b, ORU_STUDY, "on hold");
    assert_eq!(
        e["reason"],
        "the images' accession number differs from the report's"
    );
}

#[test]
fn kill_9_of_publisher_and_archive_while_lots_are_built_leaves_one_lot_per_exam() {
    let keys = tempfile::tempdir().unwrap();
    let (p12, pass, _) = mint_signing(keys.path());
    let b = DrimBox::start(Settings {
        stable_after_seconds: 1,
        // Killed on purpose, over and over: not a crash loop.
        crash_loop_count: 1000,
        extra_config: publication_config(&p12, &pass, "rsa-sha256"),
        ..Settings::default()
    });
    let studies: Vec<String> = (0..6)
        .map(|i| format!("1.2.250.1.213.4.5.2.1.9{i}"))
        .collect();
    let images = tempfile::tempdir().unwrap();
    for (i, uid) in studies.iter().enumerate() {
        let dir = images.path().join(i.to_string());
        let files = study(&dir, uid, ORU_INS, "ACN112", 1);
        send_images(&b, &files);
    }
    // Reports arrive while the services are killed, one after the other, at varying moments.
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0u64;
    loop {
        if sent < studies.len() {
            let ack = mllp_send(b.hl7_port, &oru_for(&studies[sent], &format!("k9-{sent}")));
            assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
            sent += 1;
        }
        let victim = if round.is_multiple_of(2) {
            "publisher"
        } else {
            "archive"
        };
        std::thread::sleep(Duration::from_millis(40 + (round * 37) % 160));
        // Twelve kills while reports arrive and lots are built; then the box is left to finish.
        if round < 12 {
            if let Some(pid) = b.service_pid(victim) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                b.wait_service_restarted(victim, pid);
            }
        }
        round += 1;
        let built = exams(&b)
            .iter()
            .filter(|e| e["label"] == "lot built")
            .count();
        if sent == studies.len() && built == studies.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lots not all built: {:?}\n{}",
            exams(&b),
            b.log()
        );
    }
    for uid in &studies {
        let e = exam(&b, uid).unwrap();
        assert_eq!(e["lots"], 1, "{uid}: {e}");
        let dir = b.data_dir.join("lots").join(uid);
        let entries: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(entries, ["SS000001"], "{uid}");
        for f in [
            "KOS_1_1.DCM",
            "SIGN_1.XML",
            "METADATA.XML",
            "SUBMISSION.XML",
        ] {
            assert!(dir.join("SS000001").join(f).is_file(), "{uid}/{f}");
        }
    }
    // The staging copies are gone once their lots are archived.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_dir(b.data_dir.join("lot-staging"))
        .unwrap()
        .next()
        .is_some()
    {
        assert!(Instant::now() < deadline, "lot-staging not emptied");
        std::thread::sleep(Duration::from_millis(100));
    }
}
