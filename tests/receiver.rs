//! The DICOM receiver against real peers: DCMTK echoscu/storescu/dcmsend and pynetdicom.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn echo_answers_with_the_request_message_id() {
    let b = DrimBox::start(Settings::default());
    assert!(echoscu(b.port, AET, &[]).status.success());
    // pynetdicom checks that the response's Message ID Being Responded To matches.
    let o = pyscu(&["echo", &b.port.to_string(), "--msg-id", "4242"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        b.log().contains("presentation context"),
        "association not logged"
    );
}

#[test]
fn storescu_study_is_stored_byte_for_byte_and_indexed() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(tmp.path(), 12, "explicit", "plain-1", 64);
    let o = storescu_files(b.port, &[], &files);
    assert!(o.status.success(), "{}", text(&o));
    assert_stored_identical(&b, &files);
    let u = uids(&files[0]);
    let view = b.study(&u.study).unwrap();
    assert_eq!(view["instances"].as_array().unwrap().len(), 12);
    assert_eq!(view["modalities"], serde_json::json!(["CT"]));
    assert_eq!(view["has_patient_id"], true);
    assert_eq!(view["stable"], false);
    assert!(b.staging_files().is_empty());
    // The stored file is a valid Part 10 file for DCMTK, with our meta header.
    let stored = b.stored_path(instance(&view, &u.sop).unwrap()["file"].as_str().unwrap());
    let d = Command::new("/usr/bin/dcmdump")
        .arg(&stored)
        .output()
        .unwrap();
    assert!(d.status.success(), "{}", text(&d));
    let dump = String::from_utf8_lossy(&d.stdout);
    assert!(dump.contains(&u.sop));
    assert!(
        dump.contains("DRIMBOX_"),
        "implementation version name missing"
    );
    // No patient name in the log.
    assert!(!b.log().contains("Patient"), "patient data in the log");
}

#[test]
fn compressed_and_deflated_studies_are_stored_bit_identical() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    // RLE and JPEG-LS: storescu sends the encapsulated data as is.
    let rle = gen_study(&tmp.path().join("rle"), 4, "rle", "rle-1", 64);
    let o = storescu_files(b.port, &["-xr"], &rle);
    assert!(o.status.success(), "{}", text(&o));
    assert_stored_identical(&b, &rle);

    let jls = gen_study(&tmp.path().join("jls"), 4, "jpegls", "jpegls-1", 64);
    let o = storescu_files(b.port, &["-xt"], &jls);
    assert!(o.status.success(), "{}", text(&o));
    assert_stored_identical(&b, &jls);
    for f in &jls {
        let view = b.study(&uids(f).study).unwrap();
        let i = instance(&view, &uids(f).sop).unwrap();
        assert_eq!(i["transfer_syntax"], "1.2.840.10008.1.2.4.80");
    }

    // Deflate: pynetdicom sends a file's bytes without re-encoding, so what was sent is the
    // file's deflated data set, and that is what must be stored.
    let defl = gen_study(&tmp.path().join("defl"), 4, "deflate", "deflate-1", 64);
    let mut args = vec!["send".to_string(), b.port.to_string()];
    args.extend(defl.iter().map(|p| p.display().to_string()));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = pyscu(&a);
    assert!(o.status.success(), "{}", text(&o));
    assert_stored_identical(&b, &defl);
    let view = b.study(&uids(&defl[0]).study).unwrap();
    assert_eq!(
        instance(&view, &uids(&defl[0]).sop).unwrap()["transfer_syntax"],
        "1.2.840.10008.1.2.1.99"
    );
}

#[test]
fn dcmsend_and_four_concurrent_associations() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(&tmp.path().join("a"), 40, "explicit", "conc-1", 64);
    let o = dcmsend(b.port, &files[..8]);
    assert!(o.status.success(), "{}", text(&o));
    let rest = files[8..].to_vec();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let part: Vec<_> = rest.iter().skip(i).step_by(4).cloned().collect();
            let port = b.port;
            std::thread::spawn(move || storescu_files(port, &[], &part))
        })
        .collect();
    for h in handles {
        let o = h.join().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_stored_identical(&b, &files);
    let view = b.study(&uids(&files[0]).study).unwrap();
    assert_eq!(view["instances"].as_array().unwrap().len(), 40);
}

#[test]
fn association_limit_rejects_with_local_limit_exceeded() {
    let b = DrimBox::start(Settings {
        max_associations: 1,
        ..Settings::default()
    });
    // The holder takes the only slot; wait for it to say so (a fixed sleep is flaky on a
    // loaded machine), then ask for a second association while it holds.
    let mut holder = Command::new("python3")
        .arg(repo().join("tests/peers/pyscu.py"))
        .args(["hold", &b.port.to_string(), "6"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first.trim(), "established");
    let o = echoscu(b.port, AET, &["-d"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("Rejected Transient"), "{t}");
    assert!(t.contains("Service Provider (Presentation Related)"), "{t}");
    assert!(t.contains("Local Limit Exceeded"), "{t}");
    assert!(holder.wait().unwrap().success());
    // Once the slot is free, associations are accepted again.
    assert!(echoscu(b.port, AET, &[]).status.success());
}

#[test]
fn wrong_called_and_calling_ae_titles_are_rejected() {
    let b = DrimBox::start(Settings {
        calling_ae_titles: vec!["MODALITY1".into()],
        ..Settings::default()
    });
    let o = echoscu(b.port, "NOTME", &["-aet", "MODALITY1", "-d"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("Called AE Title Not Recognized"), "{t}");
    let o = echoscu(b.port, AET, &["-aet", "STRANGER", "-d"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("Calling AE Title Not Recognized"), "{t}");
    assert!(echoscu(b.port, AET, &["-aet", "MODALITY1"])
        .status
        .success());
}

#[test]
fn silent_peer_is_dropped_after_the_timeout() {
    let b = DrimBox::start(Settings {
        timeout_seconds: 2,
        ..Settings::default()
    });
    // Opens TCP and never sends an A-ASSOCIATE-RQ.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the box to close the connection");
    assert!(t0.elapsed() < Duration::from_secs(8));
    // An established association that goes silent is closed too, and the box keeps serving.
    let port = b.port.to_string();
    let o = pyscu(&["hold", &port, "4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(b.log().contains("closing"), "{}", b.log());
    assert!(echoscu(b.port, AET, &[]).status.success());
}

#[test]
fn bad_data_sets_get_specific_statuses_and_leave_nothing() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let good = gen_study(&tmp.path().join("g"), 1, "explicit", "bad-1", 32);
    let nostudy = tmp.path().join("nostudy.dcm");
    let mismatch = tmp.path().join("mismatch.dcm");
    for (out, kind) in [(&nostudy, "nostudy"), (&mismatch, "mismatch")] {
        let o = pyscu(&[
            "bad",
            out.to_str().unwrap(),
            kind,
            good[0].to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = pyscu(&["send", &b.port.to_string(), nostudy.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("C000 "),
        "{}",
        text(&o)
    );
    let o = pyscu(&["send", &b.port.to_string(), mismatch.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("A900 "),
        "{}",
        text(&o)
    );
    // storescu reports the failure status it received, too.
    let o = storescu_files(b.port, &["-v"], std::slice::from_ref(&nostudy));
    assert!(text(&o).contains("Error: CannotUnderstand"), "{}", text(&o));
    assert!(b.staging_files().is_empty());
    let s = b.summary();
    assert_eq!(s["instances"], 0);
    assert!(fs::read_dir(b.data_dir.join("studies"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn duplicates_same_bytes_are_kept_and_new_bytes_replace() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(&tmp.path().join("a"), 3, "explicit", "dup-1", 32);
    assert!(storescu_files(b.port, &[], &files).status.success());
    let u = uids(&files[0]);
    let view = b.study(&u.study).unwrap();
    let rel = instance(&view, &u.sop).unwrap()["file"]
        .as_str()
        .unwrap()
        .to_string();
    let before = fs::metadata(b.stored_path(&rel)).unwrap();

    // Same bytes again: success, nothing rewritten.
    let o = storescu_files(b.port, &[], &files);
    assert!(o.status.success(), "{}", text(&o));
    let after = fs::metadata(b.stored_path(&rel)).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    assert!(b.log().contains("Duplicate"));

    // Same UIDs, other bytes (same study regenerated as RLE): the new version replaces the old.
    let rle = gen_study(&tmp.path().join("b"), 3, "rle", "dup-1", 32);
    assert_eq!(uids(&rle[0]).sop, u.sop);
    let o = storescu_files(b.port, &["-xr"], &rle);
    assert!(o.status.success(), "{}", text(&o));
    let view = b.study(&u.study).unwrap();
    let inst = instance(&view, &u.sop).unwrap();
    assert_eq!(inst["version"], 2);
    assert_ne!(inst["file"].as_str().unwrap(), rel);
    assert!(!b.stored_path(&rel).exists(), "old version still on disk");
    assert_eq!(view["instances"].as_array().unwrap().len(), 3);
    assert_stored_identical(&b, &rle);
}

#[test]
fn iocm_rejection_note_marks_instances_rejected() {
    let b = DrimBox::start(Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(&tmp.path().join("a"), 5, "explicit", "iocm-1", 32);
    // The note rejects files[0..2] (sent first) and files[4] (not sent yet: applied on arrival).
    let note = tmp.path().join("note.dcm");
    let o = pyscu(&[
        "rejection",
        note.to_str().unwrap(),
        "113001",
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
        files[4].to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let note_uid = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(storescu_files(b.port, &[], &files[..4]).status.success());
    let o = storescu_files(b.port, &[], std::slice::from_ref(&note));
    assert!(o.status.success(), "{}", text(&o));
    assert!(storescu_files(b.port, &[], &files[4..]).status.success());

    let study = uids(&files[0]).study;
    let view = b.study(&study).unwrap();
    assert_eq!(view["rejected"], 3, "{view:#}");
    let notes = view["rejection_notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["code"], "113001");
    assert_eq!(notes[0]["sop_uid"], note_uid.as_str());
    for (i, f) in files.iter().enumerate() {
        let inst = instance(&view, &uids(f).sop).unwrap();
        let rejected = !inst["rejected"].is_null();
        assert_eq!(rejected, i <= 1 || i == 4, "instance {i}: {inst}");
    }
    assert_eq!(
        instance(&view, &note_uid).unwrap()["is_rejection_note"],
        true
    );
    assert_eq!(b.summary()["rejected_instances"], 3);

    // A KOS that is not a rejection note (the agency's manifest) is just an instance.
    let ko = shared().join("ref/ans/KOS/ko.dcm");
    let o = storescu_files(b.port, &[], std::slice::from_ref(&ko));
    assert!(o.status.success(), "{}", text(&o));
    let kv = b.study(&uids(&ko).study).unwrap();
    assert_eq!(kv["rejected"], 0);
    assert!(kv["rejection_notes"].as_array().unwrap().is_empty());
}

#[test]
fn study_becomes_stable_after_the_quiet_period() {
    let b = DrimBox::start(Settings {
        stable_after_seconds: 2,
        ..Settings::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let files = gen_study(&tmp.path().join("a"), 2, "explicit", "stable-1", 32);
    assert!(storescu_files(b.port, &[], &files).status.success());
    let study = uids(&files[0]).study;
    assert_eq!(b.study(&study).unwrap()["stable"], false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.study(&study).unwrap()["stable"] != true {
        assert!(Instant::now() < deadline, "never became stable");
        std::thread::sleep(Duration::from_millis(250));
    }
    // A new instance makes it unstable again.
    let more = gen_study(&tmp.path().join("b"), 3, "explicit", "stable-1", 32);
    let o = storescu_files(b.port, &[], &more[2..]);
    assert!(o.status.success(), "{}", text(&o));
    // gen_study with the same seed gives the same study: the third file is new to it.
    assert_eq!(uids(&more[2]).study, study);
    assert_eq!(b.study(&study).unwrap()["stable"], false);
}
