//! Publication to the DMP simulator, end to end: images with `storescu`, the agency's ORU with
//! `mllp_send`, the lot sent over HTTPS with client certificates (certificates minted with
//! `openssl`), the VIHF of the request checked by `xmlsec1`, and the simulator's registry read
//! back. Then the faults: a dropped answer after the commit (settled by ITI-18, never sent
//! twice), an HTTP 500 (retried), a Failure (held, with the DMP's reason).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dmp::*;
use common::*;

/// Checks with xmlsec1, against the practice's CA, the VIHF of every request the box kept
/// (ITI-41, ITI-18, ITI-57) and the lot signature every ITI-41 carries, so the simulator and
/// the publisher cannot share a canonicalisation bug unnoticed. Returns how many requests.
fn every_request_verifies(b: &DrimBox, pki: &Path) -> usize {
    let ca = pki.join("dmp-ca.pem");
    let xmlsec = |args: &[&str], file: &Path| {
        let o = Command::new("xmlsec1")
            .arg("--verify")
            .args(args)
            .arg("--trusted-pem")
            .arg(&ca)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "xmlsec1 on {}: {}",
            file.display(),
            text(&o)
        );
    };
    let vihf = [
        "--id-attr:ID",
        "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
    ];
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for study in fs::read_dir(b.data_dir.join("lots")).unwrap() {
        for lot in fs::read_dir(study.unwrap().path()).unwrap() {
            for f in fs::read_dir(lot.unwrap().path()).unwrap() {
                let path = f.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if !name.contains("-request.") {
                    continue;
                }
                let bytes = fs::read(&path).unwrap();
                let envelope = scratch.path().join(format!("{checked}-envelope.xml"));
                if name.ends_with(".mtom") {
                    let first_line = bytes.split(|&c| c == b'\r').next().unwrap();
                    let boundary = String::from_utf8_lossy(&first_line[2..]).to_string();
                    let m = drimbox::dmp::mtom::parse(
                        &format!("multipart/related; boundary=\"{boundary}\""),
                        &bytes,
                    )
                    .unwrap();
                    fs::write(&envelope, &m.parts[0].body).unwrap();
                    let sign = scratch.path().join(format!("{checked}-sign.xml"));
                    fs::write(&sign, &m.by_cid("sign@drimbox").unwrap().body).unwrap();
                    xmlsec(
                        &[
                            "--ignore-manifests",
                            "--id-attr:Id",
                            "Manifest",
                            "--id-attr:Id",
                            "http://uri.etsi.org/01903/v1.1.1#:SignedProperties",
                        ],
                        &sign,
                    );
                } else {
                    fs::write(&envelope, &bytes).unwrap();
                }
                run_ok(Command::new("xmllint").arg("--noout").arg(&envelope));
                xmlsec(&vihf, &envelope);
                checked += 1;
            }
        }
    }
    checked
}

fn lot_dir(b: &DrimBox) -> PathBuf {
    b.data_dir.join("lots").join(STUDY).join("SS000001")
}

fn entries(sim: &Simulator) -> Vec<serde_json::Value> {
    sim.registry()["registry"]["entries"]
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect()
}

#[test]
fn a_ready_exam_is_published_once_with_a_verifiable_vihf() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &[]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(40));

    let e = entries(&sim);
    assert_eq!(e.len(), 2, "KOS + signature: {e:?}");
    assert!(e.iter().all(|x| x["status"] == "Approved"));
    assert!(e
        .iter()
        .all(|x| x["patient_id"] == format!("{INS}^^^&1.2.250.1.213.1.4.10&ISO^NH")));
    assert_eq!(sim.registry()["requests"]["iti41"], 1);

    // The request and the answer are kept with the lot.
    let dir = lot_dir(&b);
    assert!(dir.join("ITI41-1-request.mtom").is_file());
    assert!(dir.join("ITI41-1-response.http").is_file());
    // Its VIHF and lot signature verify with xmlsec1 against the practice's CA.
    assert_eq!(
        every_request_verifies(&b, pki.path()),
        2,
        "ITI-41, then ITI-18"
    );

    // The status page counts it.
    let snap = b.snapshot();
    assert!(
        snap["dmp"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("1 published"),
        "{snap}"
    );
    // It lists the exchange, and says the DMP is reachable.
    let last = &snap["dmp_exchanges"][0];
    assert_eq!(last["study_uid"], STUDY, "{snap}");
    assert_eq!(last["transactions"], "ITI-41 + ITI-18");
    assert_eq!(last["outcome"], "accepted");
    assert_eq!(
        snap["dmp_exchanges"][1]["outcome"], "sent, awaiting the answer",
        "{snap}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.snapshot()["dmp"]["details"][0]
        .as_str()
        .unwrap_or("")
        .starts_with("DMP reachable (checked ")
    {
        assert!(Instant::now() < deadline, "{}", b.snapshot());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_answer_lost_after_the_commit_is_settled_by_a_query_not_a_second_send() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &["commit-then-drop:1"]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(60));
    assert_eq!(entries(&sim).len(), 2, "{:?}", sim.registry());
    assert_eq!(sim.registry()["requests"]["iti41"], 1, "sent twice");
    let files: Vec<String> = fs::read_dir(lot_dir(&b))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(files.iter().any(|f| f.starts_with("ITI18-")), "{files:?}");
}

#[test]
fn a_server_error_is_retried_and_a_failure_is_held_with_its_reason() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &["http500:1"]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(60));
    assert_eq!(entries(&sim).len(), 2);
    assert_eq!(sim.registry()["requests"]["iti41"], 2);
    drop(b);

    let sim = Simulator::start(pki.path(), &["failure:1"]);
    let b = publish_one(pki.path(), &sim);
    let e = wait_state(&b, "on hold", Duration::from_secs(40));
    assert_eq!(e["reason"], "the DMP refused the last submission");
    assert!(entries(&sim).is_empty());
    let snap = b.snapshot();
    assert_eq!(snap["verdict"], "degraded", "{snap}");
}

#[test]
fn a_replacement_report_replaces_the_published_kos_with_rplc() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &[]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(40));
    let first = entries(&sim);
    assert_eq!(first.len(), 2);

    let ack = mllp_send(b.hl7_port, &oru_version("RO", "C", "id-replacement"));
    assert_eq!(
        hl7_field(&ack, "MSA", 1),
        "AA",
        "{}",
        String::from_utf8_lossy(&ack)
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let e = exams(&b)
            .into_iter()
            .find(|e| e["study_uid"] == STUDY)
            .unwrap();
        if e["label"] == "published" && e["lots"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not replaced: {e}\n{}", b.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let registry = sim.registry();
    let all = registry["registry"]["entries"].as_object().unwrap();
    assert_eq!(all.len(), 4, "{registry}");
    let deprecated: Vec<&String> = all
        .iter()
        .filter(|(_, e)| e["status"] == "Deprecated")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        deprecated.len(),
        1,
        "the first KOS is deprecated: {registry}"
    );
    // The second lot's metadata names it in an RPLC association, and its KOS is instance 2.
    let second = b.data_dir.join("lots").join(STUDY).join("SS000002");
    let submission = fs::read_to_string(second.join("SUBMISSION.XML")).unwrap();
    assert!(
        submission.contains("associationType=\"urn:ihe:iti:2007:AssociationType:RPLC\"")
            && submission.contains(&format!("targetObject=\"{}\"", deprecated[0])),
        "{submission}"
    );
    let dump = run_ok(Command::new("dcmdump").arg(second.join("KOS_1_1.DCM")));
    assert!(dump.contains("(0020,0013) IS [2]"), "{dump}");
    // Every request of every transaction: VIHF (and lot signature) checked by xmlsec1.
    let checked = every_request_verifies(&b, pki.path());
    assert!(checked >= 3, "only {checked} request(s) kept");
}

#[test]
fn kill_9_of_the_publisher_while_sending_publishes_once() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    // Slow answers widen the window between the send and the commit of its outcome.
    let sim = Simulator::start(pki.path(), &["delay=2500:1000"]);
    let b = publish_one(pki.path(), &sim);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut kills = 0;
    loop {
        let e = exams(&b)
            .into_iter()
            .find(|e| e["study_uid"] == STUDY)
            .unwrap();
        if e["label"] == "published" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never published: {e}\n{}",
            b.log()
        );
        if kills < 4 && e["label"] == "sending to the DMP" {
            if let Some(pid) = b.service_pid("publisher") {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                b.wait_service_restarted("publisher", pid);
                kills += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(150 + 90 * kills as u64));
    }
    assert!(kills > 0, "the publisher was never caught sending");
    let e = entries(&sim);
    assert_eq!(e.len(), 2, "exactly one KOS and one signature: {e:?}");
}

fn statuses(sim: &Simulator) -> Vec<String> {
    let mut v: Vec<String> = entries(sim)
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_deletion_report_withdraws_the_kos_and_the_history_stays() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &[]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(40));
    let ack = mllp_send(b.hl7_port, &oru_version("CA", "D", "id-deletion"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    wait_lots(&b, "withdrawn", 2);
    // The KOS entry is Deleted (ITI-57); the signature entry is untouched.
    assert_eq!(
        statuses(&sim),
        ["Approved", "Deleted"],
        "{}",
        sim.registry()
    );
    assert!(sim.registry()["requests"]["registry"].as_u64().unwrap() >= 2);
    // The whole history is still there: the published lot and the withdrawal with its exchange.
    let lots = b.data_dir.join("lots").join(STUDY);
    assert!(lots.join("SS000001/KOS_1_1.DCM").is_file());
    assert!(lots.join("SS000002/WITHDRAWAL.XML").is_file());
    assert!(lots.join("SS000002/ITI57-1-request.xml").is_file());
    // `drimbox exam` tells that story, without patient data.
    let out = run_ok(
        Command::new(bin())
            .args(["exam", STUDY, "--config"])
            .arg(b.dir.path().join("drimbox.toml")),
    );
    assert!(
        out.contains("exam 1.2.250.1.213.4.5.2.1.112: withdrawn"),
        "{out}"
    );
    assert!(out.contains("lot 1  Publish  Accepted"), "{out}");
    assert!(out.contains("lot 2  Unpublish  Accepted"), "{out}");
    assert!(out.contains("ORU^R01  delete"), "{out}");
    assert!(!out.contains("PAT-TROIS") && !out.contains(INS), "{out}");

    // ITI-18 FindDocuments on the simulator, with curl as the client: the patient's entries
    // by availability status.
    let find = |statuses: &[&str]| -> usize {
        let request = drimbox::dmp::soap::find_documents(
            "urn:uuid:f1d0c000-0000-4000-8000-000000000001",
            "https://127.0.0.1/registry",
            "",
            &format!("{INS}^^^&1.2.250.1.213.1.4.10&ISO^NH"),
            statuses,
        );
        let f = pki.path().join("find.xml");
        fs::write(&f, request).unwrap();
        let answer = run_ok(
            Command::new("curl")
                .args(["-sS", "--fail", "--cacert"])
                .arg(pki.path().join("dmp-ca.pem"))
                .arg("--cert")
                .arg(pki.path().join("auth.pem"))
                .arg("--key")
                .arg(pki.path().join("auth.key"))
                .args(["-H", "Content-Type: application/soap+xml", "--data-binary"])
                .arg(format!("@{}", f.display()))
                .arg(format!(
                    "https://127.0.0.1:{}/si-dmp-server/v2/services/registry",
                    sim.port
                )),
        );
        assert!(answer.contains("ResponseStatusType:Success"), "{answer}");
        answer.matches("<rim:ObjectRef ").count()
    };
    assert_eq!(
        find(&["urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"]),
        1
    );
    assert_eq!(find(&["urn:asip:ci-sis:2010:StatusType:Deleted"]), 1);
    assert_eq!(
        find(&[
            "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved",
            "urn:asip:ci-sis:2010:StatusType:Deleted"
        ]),
        2
    );
    // Every request of every transaction: VIHF (and lot signature) checked by xmlsec1.
    let checked = every_request_verifies(&b, pki.path());
    assert!(checked >= 2, "only {checked} request(s) kept");
}

#[test]
fn iocm_rejections_replace_then_withdraw_the_kos() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &[]);
    let (b, images, files) = publish_one_with_images(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(40));

    // Two images rejected: the KOS is replaced by one listing the four others.
    let note = images.path().join("note1.dcm");
    let mut args = vec![
        "rejection".to_string(),
        note.display().to_string(),
        "113001".into(),
    ];
    args.extend(files[..2].iter().map(|f| f.display().to_string()));
    let o = pyscu(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(storescu_files(b.port, &[], std::slice::from_ref(&note))
        .status
        .success());
    wait_lots(&b, "published", 2);
    let kos = b
        .data_dir
        .join("lots")
        .join(STUDY)
        .join("SS000002/KOS_1_1.DCM");
    let dump = run_ok(Command::new("dcmdump").arg(&kos));
    assert_eq!(dump.matches("(0040,a040) CS [IMAGE]").count(), 4, "{dump}");
    assert_eq!(
        statuses(&sim),
        ["Approved", "Approved", "Approved", "Deprecated"]
    );

    // The rest rejected too: nothing left to show, the KOS is withdrawn.
    let note = images.path().join("note2.dcm");
    let mut args = vec![
        "rejection".to_string(),
        note.display().to_string(),
        "113001".into(),
    ];
    args.extend(files[2..].iter().map(|f| f.display().to_string()));
    let o = pyscu(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(storescu_files(b.port, &[], std::slice::from_ref(&note))
        .status
        .success());
    wait_lots(&b, "withdrawn", 3);
    assert_eq!(
        statuses(&sim),
        ["Approved", "Approved", "Deleted", "Deprecated"]
    );
    // Every request of every transaction: VIHF (and lot signature) checked by xmlsec1.
    let checked = every_request_verifies(&b, pki.path());
    assert!(checked >= 3, "only {checked} request(s) kept");
}

#[test]
fn the_demo_publishes_to_its_own_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let (dicom, status, hl7, dmp) = (free_port(), free_port(), free_port(), free_port());
    let wado = free_port();
    let mut child = Command::new(bin())
        .args(["demo", "--dir"])
        .arg(dir.path())
        .args(["--dicom-port", &dicom.to_string()])
        .args(["--status-port", &status.to_string()])
        .args(["--hl7-port", &hl7.to_string()])
        .args(["--dmp-port", &dmp.to_string()])
        .args(["--wado-port", &wado.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !echoscu(dicom, "DRIMBOX", &[]).status.success() {
        assert!(Instant::now() < deadline, "demo never answered C-ECHO");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_images, files) = exam_images(STUDY, "demo", 3, 16, 1, "explicit");
    assert!(storescu_files(dicom, &[], &files).status.success());
    let ack = mllp_send(
        hl7,
        &fs::read(shared().join("ref/hl7/ORU_R01_K.hl7")).unwrap(),
    );
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    // The demo's studies are stable after 10 s of quiet; then built, sent, published.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = Command::new(bin())
            .args(["exams", "--json", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["study_uid"] == STUDY && e["label"] == "published")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "the demo never published: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let registry: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("dmp-registry.json")).unwrap()).unwrap();
    assert_eq!(
        registry["registry"]["entries"].as_object().unwrap().len(),
        2
    );
    let (code, page) = http_get(status, "/");
    assert_eq!(code, 200);
    assert!(page.contains("1 published"), "{page}");
    // A consumer with the demo's client certificate (on the demo's whitelist) retrieves it.
    let out = run_ok(
        Command::new(bin())
            .args(["exam", STUDY, "--json", "--dir"])
            .arg(dir.path()),
    );
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kos = h["lots"][0]["kos_sop_uid"].as_str().unwrap().to_string();
    let pki = dir.path().join("pki");
    let o = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{content_type}",
            "--cacert",
        ])
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("wado-client.pem"))
        .arg("--key")
        .arg(pki.join("wado-client.key"))
        .args(["-H", &format!("KOS-SOPInstanceUID: {kos}")])
        .args([
            "-H",
            "Accept: multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        ])
        .arg(format!("https://127.0.0.1:{wado}/wado/studies/{STUDY}"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(
        answer.starts_with("200 multipart/related"),
        "{answer} {}",
        text(&o)
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let mut banner = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut banner).unwrap();
    assert!(banner.contains("DMP simulator"), "{banner}");
    assert!(banner.contains("WADO-RS"), "{banner}");
    // The simulator went with it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::net::TcpStream::connect(("127.0.0.1", dmp)).is_err());
}

/// One lot's delivery, as `drimbox exam --json` reports it.
fn delivery(b: &DrimBox) -> serde_json::Value {
    let out = run_ok(
        Command::new(bin())
            .args(["exam", STUDY, "--json", "--config"])
            .arg(b.dir.path().join("drimbox.toml")),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["lots"][0]["delivery"].clone()
}

#[test]
fn resets_and_timeouts_end_in_exactly_one_publication() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    // A reset: nothing recorded, so the settling query finds nothing and the lot is sent again.
    let sim = Simulator::start(pki.path(), &["reset:1"]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(60));
    assert_eq!(entries(&sim).len(), 2);
    assert_eq!(sim.registry()["requests"]["iti41"], 2);
    drop(b);

    // A timeout (the answer comes after the publisher's 5 s): the DMP recorded it, the query
    // finds it, and it is not sent again.
    let sim = Simulator::start(pki.path(), &["delay=7000:1"]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(60));
    assert_eq!(entries(&sim).len(), 2);
    assert_eq!(sim.registry()["requests"]["iti41"], 1, "sent twice");
    assert!(
        delivery(&b)["last_error"].is_null(),
        "settled cleanly: {}",
        delivery(&b)
    );
}

#[test]
fn a_dmp_that_refuses_our_certificate_is_reported_and_nothing_is_lost() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    // The simulator trusts another CA than the one that issued our authentication certificate.
    let other = tempfile::tempdir().unwrap();
    mint_pki(other.path(), "other");
    fs::copy(
        other.path().join("other-ca.pem"),
        pki.path().join("other-ca.pem"),
    )
    .unwrap();
    let port = free_port();
    let state = pki.path().join("refusing.json");
    let mut child = Command::new(bin())
        .args(["dmp-sim", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--certificate")
        .arg(pki.path().join("dmp-server.pem"))
        .arg("--private-key")
        .arg(pki.path().join("dmp-server.key"))
        .arg("--client-ca")
        .arg(pki.path().join("other-ca.pem"))
        .arg("--state")
        .arg(&state)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let sim = Simulator {
        child: Command::new("true").spawn().unwrap(),
        port,
        state,
    };
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "sending to the DMP", Duration::from_secs(40));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = delivery(&b);
        if d["last_error"].as_str().is_some_and(|e| e.contains("TLS")) {
            break;
        }
        assert!(Instant::now() < deadline, "no TLS error reported: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The status page says so.
    let snap = b.snapshot();
    assert_eq!(snap["verdict"], "degraded", "{snap}");
    assert!(
        snap["reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("the DMP cannot be reached: ")
            && r.as_str().unwrap().contains("TLS")),
        "{snap}"
    );
    // The probe says so too, on its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snap = b.snapshot();
        let d = snap["dmp"]["details"][0].as_str().unwrap_or("").to_string();
        if d.starts_with("DMP not reachable (checked ") {
            break;
        }
        assert!(Instant::now() < deadline, "no failed probe shown: {snap}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        snap["dmp_exchanges"][0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("retry scheduled: "),
        "{snap}"
    );
    let _ = child.kill();
    let _ = child.wait();
    // Once the DMP accepts us again, the lot goes through: it was never lost.
    let good = Simulator::start_on(pki.path(), port, &[]);
    wait_state(&b, "published", Duration::from_secs(60));
    assert_eq!(entries(&good).len(), 2);
}

#[test]
fn kill_9_of_the_archive_while_sending_publishes_once() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &["delay=2500:1000"]);
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "sending to the DMP", Duration::from_secs(40));
    // The request is out and its outcome not committed yet: the archive goes.
    std::thread::sleep(Duration::from_millis(500));
    let pid = b.service_pid("archive").unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    b.wait_service_restarted("archive", pid);
    wait_state(&b, "published", Duration::from_secs(60));
    assert_eq!(entries(&sim).len(), 2, "{}", sim.registry());
    assert_eq!(sim.registry()["requests"]["iti41"], 1, "sent twice");
}

/// The entryUUID the simulator gave the KOS of `lot` (a lot directory of the box).
fn kos_entry(sim: &Simulator, lot: &Path) -> String {
    let dump = run_ok(
        Command::new("dcmdump")
            .args(["+P", "0008,0018"])
            .arg(lot.join("KOS_1_1.DCM")),
    );
    let uid = dump.split('[').nth(1).unwrap().split(']').next().unwrap();
    let registry = sim.registry();
    registry["registry"]["entries"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, e)| e["unique_id"] == uid)
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| panic!("KOS {uid} not in the registry: {registry}"))
}

/// Two exams of one patient while the DMP is failing: the first backs off longer and longer,
/// the second, ready meanwhile, would be due first when the DMP comes back; it waits its turn,
/// and the DMP records them in the order they arose.
#[test]
fn a_patients_exams_reach_the_dmp_in_the_order_they_arose() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let failing = Simulator::start(pki.path(), &["http500:1000"]);
    let port = failing.port;
    let b = publish_one(pki.path(), &failing);
    wait_state(&b, "sending to the DMP", Duration::from_secs(40));
    // Sorts before the first: without the patient's order it would be picked first.
    const SECOND: &str = "1.2.250.1.213.4.5.2.1.1000";
    let _images = send_study(&b, SECOND, "dmp-second");
    let ack = mllp_send(b.hl7_port, &oru_for(SECOND, "second-exam"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    let label = |uid: &str| {
        exams(&b)
            .iter()
            .find(|x| x["study_uid"] == uid)
            .map(|x| x["label"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while label(SECOND) != "lot built" && label(SECOND) != "sending to the DMP" {
        assert!(
            Instant::now() < deadline,
            "second lot never built\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    drop(failing);
    let sim = Simulator::start_on(pki.path(), port, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (first, second) = (label(STUDY), label(SECOND));
        if first == "published" && second == "published" {
            break;
        }
        assert!(
            !(second == "published" && first != "published"),
            "the second exam overtook the first"
        );
        assert!(Instant::now() < deadline, "not both published\n{}", b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = kos_entry(&sim, &lot_dir(&b));
    let second = kos_entry(&sim, &b.data_dir.join("lots").join(SECOND).join("SS000001"));
    assert!(
        first < second,
        "recorded out of order: {first} then {second}"
    );
    assert_eq!(entries(&sim).len(), 4, "one KOS and one signature each");
}

/// The lot `seq` of the exam, as `drimbox exam --json` shows it.
fn lot_line(b: &DrimBox, seq: u64) -> serde_json::Value {
    let out = run_ok(
        Command::new(bin())
            .args(["exam", STUDY, "--json", "--config"])
            .arg(b.dir.path().join("drimbox.toml")),
    );
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    h["lots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["seq"] == seq)
        .cloned()
        .unwrap_or_else(|| panic!("no lot {seq}: {h}"))
}

/// An ITI-57 the DMP recorded but whose answer was lost: settled by ITI-18 FindDocuments
/// (the entry is Deleted already), not sent again (a second one would be refused).
#[test]
fn a_withdrawal_whose_answer_was_lost_is_settled_by_a_query() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &[]);
    let port = sim.port;
    let b = publish_one(pki.path(), &sim);
    wait_state(&b, "published", Duration::from_secs(40));
    drop(sim);
    let sim = Simulator::start_on(pki.path(), port, &["commit-then-drop"]);
    let ack = mllp_send(b.hl7_port, &oru_version("CA", "D", "id-deletion"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    wait_lots(&b, "withdrawn", 2);
    assert_eq!(statuses(&sim), ["Approved", "Deleted"]);
    let lot = lot_line(&b, 2);
    assert_eq!(lot["status"], "accepted", "{lot}");
    let dir = b.data_dir.join("lots").join(STUDY).join("SS000002");
    assert!(dir.join("ITI57-1-request.xml").is_file());
    assert!(!dir.join("ITI57-2-request.xml").exists(), "sent twice");
    let query = fs::read_to_string(dir.join("ITI18-1-request.xml")).unwrap();
    assert!(
        query.contains("urn:asip:ci-sis:2010:StatusType:Deleted"),
        "{query}"
    );
    every_request_verifies(&b, pki.path());
}

/// Kills `services` in turn with SIGKILL, at varied moments, while the exam is on its way
/// to `label` with `lots` lots; returns how many kills caught a lot with the DMP.
fn kill_until(b: &DrimBox, services: &[&str], label: &str, lots: u64) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    // Kills while the lot waits for the publisher and kills while it is with the DMP are
    // budgeted apart: under load a restarted publisher may sit on "lot built" (backoff) long
    // enough to spend a shared budget before the lot ever leaves.
    let (mut kills, mut while_built, mut while_sending) = (0u32, 0u32, 0u32);
    loop {
        let e = exams(b)
            .into_iter()
            .find(|e| e["study_uid"] == STUDY)
            .unwrap();
        if e["label"] == label && e["lots"] == lots {
            return while_sending;
        }
        assert!(Instant::now() < deadline, "never {label}: {e}\n{}", b.log());
        let sending = e["label"] == "sending to the DMP";
        let built = e["label"] == "lot built";
        if (sending && while_sending < 4) || (built && while_built < 2) {
            let service = services[kills as usize % services.len()];
            if let Some(pid) = b.service_pid(service) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                b.wait_service_restarted(service, pid);
                kills += 1;
                while_sending += u32::from(sending);
                while_built += u32::from(built);
            }
        }
        // Varied offsets: before the request leaves, while it waits, around the answer.
        std::thread::sleep(Duration::from_millis(120 + 170 * u64::from(kills % 4)));
    }
}

/// kill -9 of the publisher and of the archive at every step of a replacement (ITI-41 with
/// RPLC, then ITI-18) and of a withdrawal (ITI-57, its settling ITI-18): in the end exactly
/// one document per exam version, the first deprecated, the second deleted, nothing refused.
#[test]
fn kill_9_at_each_step_of_a_replacement_and_a_withdrawal_changes_the_dmp_once() {
    let pki = tempfile::tempdir().unwrap();
    mint(pki.path());
    let sim = Simulator::start(pki.path(), &[]);
    let port = sim.port;
    // Killed a dozen times: the supervisor must not give up on them.
    let settings = Settings {
        crash_loop_count: 1000,
        ..Settings::default()
    };
    let (b, _images, _) = publish_one_in(pki.path(), &sim, settings);
    wait_state(&b, "published", Duration::from_secs(40));
    // Slow answers from now on: every step has a window to be killed in.
    drop(sim);
    let sim = Simulator::start_on(pki.path(), port, &["delay=1200:1000"]);

    let ack = mllp_send(b.hl7_port, &oru_version("RO", "C", "id-replacement"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    let caught = kill_until(&b, &["publisher", "archive"], "published", 2);
    assert!(caught > 0, "no kill caught the replacement with the DMP");
    assert_eq!(
        statuses(&sim),
        ["Approved", "Approved", "Approved", "Deprecated"],
        "{}",
        sim.registry()
    );

    let ack = mllp_send(b.hl7_port, &oru_version("CA", "D", "id-deletion"));
    assert_eq!(hl7_field(&ack, "MSA", 1), "AA");
    let caught = kill_until(&b, &["publisher", "archive"], "withdrawn", 3);
    assert!(caught > 0, "no kill caught the withdrawal with the DMP");
    assert_eq!(
        statuses(&sim),
        ["Approved", "Approved", "Deleted", "Deprecated"],
        "{}",
        sim.registry()
    );
    for seq in 1..=3 {
        assert_eq!(lot_line(&b, seq)["status"], "accepted");
    }
    every_request_verifies(&b, pki.path());
}
