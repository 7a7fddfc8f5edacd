//! The whitelist verifier against lists minted at test time by real tools: openssl for the
//! PKI and CRLs, xmlsec1 for the XAdES signatures (`tests/peers/whitelist.py`), xmllint for
//! the canonical form. No private key is committed: every one is made here.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn peer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/whitelist.py")
}

fn py(args: &[&str]) -> String {
    let o = Command::new("/usr/bin/python3")
        .arg(peer())
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "whitelist.py {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A configuration trusting the minted root, with its intermediate in the local store.
fn config(dir: &Path, pki: &Path) -> PathBuf {
    let path = dir.join("drimbox.toml");
    fs::write(
        &path,
        format!(
            "[storage]\ndata_dir = \"{}\"\n\n[whitelist]\ntrust_anchors = [\"{}\"]\n\
             intermediates = [\"{}\"]\n",
            dir.join("data").display(),
            pki.join("root.pem").display(),
            pki.join("intermediate.pem").display()
        ),
    )
    .unwrap();
    path
}

fn verify(config: &Path, file: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let o = Command::new(bin())
        .args(["whitelist", "verify", "--json", "--config"])
        .arg(config)
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (o, v)
}

/// A list in the 2026 layout signed in the agency's profile by the good signer of `pki`.
fn signed_list(dir: &Path, pki: &Path) -> PathBuf {
    let list = dir.join("list.xml");
    py(&["list", list.to_str().unwrap()]);
    let signed = dir.join("signed.xml");
    sign_list(pki, &list, &signed);
    signed
}

/// (case, CRLs, None = valid, Some((failing check, words of its reason))).
type Expectation<'a> = (&'a str, &'a [String], Option<(&'a str, &'a str)>);

/// Every valid and every tampered list: our verdict, the check that refuses it and why; and,
/// wherever xmlsec1 can judge, the same verdict as xmlsec1.
#[test]
fn minted_lists_get_the_verdicts_they_deserve_and_xmlsec1_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("wl");
    // Mints the PKI, the lists, every variant, and checks each against xmlsec1's verdict.
    let table = py(&["selftest", work.to_str().unwrap()]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("xmllint --exc-c14n lists/list-2026.xml")
                && l.contains("Reference 1 DigestValue")
                && l.ends_with(": match")),
        "xmllint's exclusive C14N of the list is what the signature digests: {table}"
    );
    let pki = work.join("pki");
    let cases = work.join("cases");
    let cfg = config(dir.path(), &pki);
    let crl = |name: &str| pki.join(name).display().to_string();
    let fresh = [crl("intermediate.crl"), crl("root.crl")];
    let stale = [crl("intermediate-stale.crl"), crl("root.crl")];
    let revoked_intermediate = [crl("revoked-intermediate.crl"), crl("root.crl")];
    let root_only = [crl("root.crl")];
    // (case, CRLs, None = valid, Some((failing check, words of its reason)))
    let expectations: Vec<Expectation> = vec![
        ("good", &fresh, None),
        ("good-2024", &fresh, None),
        ("enveloped-transform", &fresh, None),
        ("c14n-inclusive", &fresh, None),
        (
            "rsa-sha1",
            &fresh,
            Some(("algorithms", "rsa-sha1 is not allowed")),
        ),
        ("rsa-md5", &fresh, Some(("algorithms", "rsa-md5"))),
        ("digest-sha1", &fresh, Some(("algorithms", "SHA-1"))),
        (
            "sigcert-mismatch",
            &fresh,
            Some(("signing-certificate", "another certificate")),
        ),
        (
            "signing-time-outside",
            &fresh,
            Some(("signing-time", "outside the signer's validity")),
        ),
        (
            "key-mismatch",
            &fresh,
            Some(("signature-value", "does not verify")),
        ),
        ("expired", &fresh, Some(("validity", "is expired"))),
        ("notyet", &fresh, Some(("validity", "is not yet valid"))),
        ("selfsigned", &fresh, Some(("chain", "self-signed"))),
        ("otherca", &fresh, Some(("chain", "not trusted"))),
        (
            "wrongcn",
            &fresh,
            Some(("signer-name", "CN=Liste Blanche DRIM-M2")),
        ),
        (
            "wrongou",
            &fresh,
            Some(("signer-name", "OU=318751275100021")),
        ),
        (
            "nokeyusage",
            &fresh,
            Some(("key-usage", "neither digitalSignature")),
        ),
        (
            "proof-signer",
            &fresh,
            Some(("signer-name", "DRIMbox editor proof")),
        ),
        (
            "revoked-no-crl",
            &root_only,
            Some(("revocation", "no CRL signed by")),
        ),
        ("revoked+crl", &fresh, Some(("revocation", "is revoked"))),
        (
            "revoked-intermediate+crl",
            &revoked_intermediate,
            Some((
                "revocation",
                "REVOQUEE, OU=IGC-SANTE TEST, O=DRIMBOX TEST, C=FR is revoked",
            )),
        ),
        ("good+stale-crl", &stale, Some(("revocation", "is stale"))),
        (
            "revoked+stale-crl",
            &stale,
            Some(("revocation", "is stale")),
        ),
        (
            "tamper-content-char",
            &fresh,
            Some(("digests", "does not match")),
        ),
        (
            "tamper-attribute",
            &fresh,
            Some(("digests", "does not match")),
        ),
        (
            "tamper-second-signature",
            &fresh,
            Some(("one-signature", "2 ds:Signature")),
        ),
        (
            "tamper-wrapping",
            &fresh,
            Some(("signature-shape", "something other than")),
        ),
        (
            "tamper-wrapping-move",
            &fresh,
            Some(("signature-shape", "something other than")),
        ),
        (
            "tamper-unsigned",
            &fresh,
            Some(("one-signature", "not signed")),
        ),
        (
            "tamper-truncate",
            &fresh,
            Some(("well-formed", "not well-formed")),
        ),
        (
            "tamper-billion-laughs",
            &fresh,
            Some(("well-formed", "DOCTYPE")),
        ),
        (
            "tamper-external-entity",
            &fresh,
            Some(("well-formed", "DOCTYPE")),
        ),
        ("tamper-huge", &fresh, Some(("size", "over the limit"))),
    ];
    let mut ours = std::collections::BTreeMap::new();
    for (case, crls, expected) in &expectations {
        let mut args = Vec::new();
        for c in crls.iter() {
            args.extend(["--crl", c.as_str()]);
        }
        let (o, v) = verify(&cfg, &cases.join(format!("{case}.xml")), &args);
        match expected {
            None => {
                assert_eq!(v["valid"], true, "{case}: {v:#}");
                assert_eq!(o.status.code(), Some(0), "{case}");
                assert_eq!(v["revocation_checked"], true);
                assert_eq!(v["chain"].as_array().unwrap().len(), 3, "{case}: {v:#}");
            }
            Some((check, reason)) => {
                assert_eq!(v["valid"], false, "{case}: {v:#}");
                assert_eq!(o.status.code(), Some(1), "{case}");
                let failed: Vec<&serde_json::Value> = v["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["outcome"] == "fail")
                    .collect();
                assert_eq!(failed[0]["name"], *check, "{case}: {v:#}");
                let why = failed[0]["reason"].as_str().unwrap();
                assert!(why.contains(reason), "{case}: `{why}` lacks `{reason}`");
            }
        }
        ours.insert(case.to_string(), v["valid"] == true);
    }
    // Wherever xmlsec1 could judge (the selftest's "agree" rows), its verdict is ours.
    let mut compared = 0;
    for line in table.lines().filter(|l| l.trim_end().ends_with("agree")) {
        let case = line.split_whitespace().next().unwrap();
        let Some(valid) = ours.get(case) else {
            continue;
        };
        let xmlsec_ok = line.split_whitespace().nth(2) == Some("OK");
        assert_eq!(*valid, xmlsec_ok, "xmlsec1 disagrees on {case}: {line}");
        compared += 1;
    }
    assert!(
        compared >= 18,
        "only {compared} cases compared with xmlsec1:\n{table}"
    );
}

/// `--offline`: everything but revocation, and it says so; without a configuration the
/// IGC-Santé TEST anchors are trusted (so a list signed by our test PKI is not).
#[test]
fn offline_says_revocation_was_not_checked_and_the_default_trust_is_igc_sante() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    py(&["pki", pki.to_str().unwrap()]);
    let signed = signed_list(dir.path(), &pki);
    let cfg = config(dir.path(), &pki);
    let (o, v) = verify(&cfg, &signed, &["--offline"]);
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["revocation_checked"], false);
    let rev = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "revocation")
        .unwrap();
    assert_eq!(rev["outcome"], "not_checked");
    let human = run_ok(
        Command::new(bin())
            .args(["whitelist", "verify", "--offline", "--config"])
            .arg(&cfg)
            .arg(&signed),
    );
    assert!(
        human.contains("VALID (revocation NOT checked: --offline)"),
        "{human}"
    );

    let o = Command::new(bin())
        .args(["whitelist", "verify", "--offline"])
        .arg(&signed)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("TEST AC RACINE DRIMBOX ELEMENTAIRE") && text(&o).contains("chain"),
        "{}",
        text(&o)
    );
    // A time that is not one, a file that is not there: exit 2, naming them.
    let o = Command::new(bin())
        .args(["whitelist", "verify", "--at", "yesterday"])
        .arg(&signed)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--at `yesterday`"), "{}", text(&o));
    let o = Command::new(bin())
        .args(["whitelist", "verify", "/nonexistent/list.xml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/nonexistent/list.xml"), "{}", text(&o));
}

/// Without `--crl`, the CRLs the certificates name are fetched over HTTP (a real HTTP server,
/// Python's); when they cannot be, revocation fails, it is not skipped.
#[test]
fn crls_named_by_the_certificates_are_fetched_and_a_missing_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pki = dir.path().join("pki");
    py(&[
        "pki",
        pki.to_str().unwrap(),
        "--crl-base",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let signed = signed_list(dir.path(), &pki);
    let cfg = config(dir.path(), &pki);

    let (o, v) = verify(&cfg, &signed, &[]);
    assert_eq!(o.status.code(), Some(1), "{v:#}");
    let rev = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "revocation")
        .unwrap()
        .clone();
    assert_eq!(rev["outcome"], "fail", "{v:#}");
    assert!(!v["notes"].as_array().unwrap().is_empty(), "{v:#}");

    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&pki)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, "http.server");
    let (o, v) = verify(&cfg, &signed, &[]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["crls"].as_array().unwrap().len(), 2, "{v:#}");
}

fn sign_list(pki: &Path, list: &Path, out: &Path) {
    py(&[
        "sign",
        list.to_str().unwrap(),
        out.to_str().unwrap(),
        "--key",
        pki.join("signer.key").to_str().unwrap(),
        "--cert",
        pki.join("signer.pem").to_str().unwrap(),
        "--chain",
        pki.join("intermediate.pem").to_str().unwrap(),
    ]);
}

fn update(b: &DrimBox) -> (Option<i32>, serde_json::Value) {
    let o = Command::new(bin())
        .args(["whitelist", "update", "--json", "--config"])
        .arg(&b.config_path)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o), b.log()));
    (o.status.code(), v)
}

fn history(b: &DrimBox) -> Vec<serde_json::Value> {
    let out = run_ok(
        Command::new(bin())
            .args([
                "whitelist",
                "history",
                "--json",
                "--limit",
                "100",
                "--config",
            ])
            .arg(&b.config_path),
    );
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

/// `xmlsec1 --verify` of a proof with the editor's CA; its success.
fn xmlsec1_verifies_proof(proof: &Path, editor_ca: &Path) -> (bool, String) {
    let o = Command::new("xmlsec1")
        .args(["--verify", "--trusted-pem"])
        .arg(editor_ca)
        .args([
            "--id-attr:Id",
            "http://uri.etsi.org/01903/v1.3.2#:SignedProperties",
            "--enabled-reference-uris",
            "empty,same-doc",
        ])
        .arg(proof)
        .output()
        .unwrap();
    (o.status.success(), text(&o))
}

/// The updater end to end with real peers: an HTTPS list server (Python's ssl, certificates
/// minted by openssl), the CRLs over HTTP, lists signed by xmlsec1. The first list is fetched
/// at start and installed with a signed proof xmlsec1 verifies; then every bad download (a
/// tampered, unsigned, hostile, truncated, older or oversized list, HTTP 404, a server that
/// never answers, a certificate from an unknown CA) is refused with its reason and leaves the
/// list in service untouched; a newer list replaces it and the old one is kept as previous.
#[test]
fn the_updater_installs_only_verified_lists_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let crl_port = free_port();
    let pki = d.join("pki");
    py(&[
        "pki",
        pki.to_str().unwrap(),
        "--crl-base",
        &format!("http://127.0.0.1:{crl_port}"),
    ]);
    let _crls = Server(
        Command::new("python3")
            .args(["-m", "http.server", &crl_port.to_string()])
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(&pki)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The list server's TLS (trusted by the box) and another CA's (not trusted).
    let tls = d.join("tls");
    fs::create_dir(&tls).unwrap();
    mint_pki(&tls, "list");
    mint_pki(&tls, "other");
    // The editor's identity that signs the proofs.
    let editor = mint_signing_pki(
        "/C=FR/O=DRIMbox editor/CN=DRIMbox proof of verification",
        None,
    );
    let editor_password = d.join("editor-password");
    fs::write(&editor_password, format!("{SIGNER_P12_PASSWORD}\n")).unwrap();

    // The lists: a valid one, a newer valid one, an older valid one and the hostile variants.
    let served = d.join("served");
    fs::create_dir(&served).unwrap();
    let unsigned_list = |name: &str, generated: &str| {
        let p = d.join(name);
        py(&["list", p.to_str().unwrap(), "--generated", generated]);
        p
    };
    let first = unsigned_list("first.xml", "2026-12-01T00:00:00Z");
    sign_list(&pki, &first, &served.join("valid.xml"));
    let second = unsigned_list("second.xml", "2026-12-02T00:00:00Z");
    sign_list(&pki, &second, &served.join("newer.xml"));
    let old = unsigned_list("old.xml", "2026-11-20T00:00:00Z");
    sign_list(&pki, &old, &served.join("older.xml"));
    for how in [
        "content-char",
        "unsigned",
        "billion-laughs",
        "external-entity",
        "truncate",
        "wrapping",
    ] {
        py(&[
            "tamper",
            served.join("valid.xml").to_str().unwrap(),
            served.join(format!("{how}.xml")).to_str().unwrap(),
            "--how",
            how,
        ]);
    }
    let list_port = free_port();
    let set_mode = |m: &str| fs::write(served.join("mode"), m).unwrap();
    set_mode("file valid.xml");
    let _list_server = Server(
        Command::new("/usr/bin/python3")
            .arg(repo().join("tests/peers/list_server.py"))
            .args(["--port", &list_port.to_string(), "--dir"])
            .arg(&served)
            .arg("--cert")
            .arg(tls.join("list-server.pem"))
            .arg("--key")
            .arg(tls.join("list-server.key"))
            .arg("--other-cert")
            .arg(tls.join("other-server.pem"))
            .arg("--other-key")
            .arg(tls.join("other-server.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(crl_port, "the CRL server");
    wait_port(list_port, "the list server");

    let b = DrimBox::start(Settings {
        extra_config: format!(
            "\n[whitelist]\nurl = \"https://127.0.0.1:{list_port}/liste-blanche.xml\"\n\
             tls_trust_anchors = {:?}\ntrust_anchors = [{:?}]\nintermediates = [{:?}]\n\
             timeout_seconds = 3\nmax_bytes = 1048576\nproof_pkcs12 = {:?}\n\
             proof_password_file = {:?}\n",
            tls.join("list-ca.pem").display().to_string(),
            pki.join("root.pem").display().to_string(),
            pki.join("intermediate.pem").display().to_string(),
            editor.path().join("signer.p12").display().to_string(),
            editor_password.display().to_string(),
        ),
        ..Settings::default()
    });
    let wl = b.data_dir.join("whitelist");
    let current = wl.join("liste-blanche.xml");

    // Nothing installed: the updater tries at once, without being asked.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_attempt = loop {
        if let Some(a) = history(&b).into_iter().next() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt at start\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(first_attempt["trigger"], "start", "{first_attempt:#}");
    assert_eq!(first_attempt["outcome"], "installed", "{first_attempt:#}");
    assert_eq!(first_attempt["domains"], 17);
    assert!(first_attempt["proof_signed"] == true, "{first_attempt:#}");
    let valid = fs::read(served.join("valid.xml")).unwrap();
    assert_eq!(fs::read(&current).unwrap(), valid);

    // The proof beside the list: signed by the editor, verified by xmlsec1, and it says what
    // was checked on which bytes. A changed verdict breaks it.
    let proof = wl.join("liste-blanche.proof.xml");
    let (ok, out) = xmlsec1_verifies_proof(&proof, &editor.path().join("ca.pem"));
    assert!(ok, "xmlsec1 rejects our proof: {out}");
    let proof_text = fs::read_to_string(&proof).unwrap();
    assert!(proof_text.contains(first_attempt["sha256"].as_str().unwrap()));
    for check in [
        "digests",
        "signature-value",
        "chain",
        "revocation",
        "signer-name",
    ] {
        assert!(
            proof_text.contains(&format!("<Check name=\"{check}\" result=\"pass\">")),
            "{check} missing from the proof:\n{proof_text}"
        );
    }
    assert!(proof_text.contains("<Verdict valid=\"true\" revocationChecked=\"true\">"));
    let forged = d.join("forged-proof.xml");
    fs::write(
        &forged,
        proof_text.replacen("<Domains>17</Domains>", "<Domains>18</Domains>", 1),
    )
    .unwrap();
    let (ok, _) = xmlsec1_verifies_proof(&forged, &editor.path().join("ca.pem"));
    assert!(!ok, "xmlsec1 accepted a proof whose content was changed");

    // On demand, the same list: verified again, unchanged.
    let (code, v) = update(&b);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["attempt"]["outcome"], "unchanged", "{v:#}");
    assert_eq!(v["attempt"]["trigger"], "operator");

    // Every bad download: refused or not fetched, with its reason; the list stays.
    let cases: &[(&str, &str, &str)] = &[
        ("file content-char.xml", "refused", "digests"),
        (
            "file unsigned.xml",
            "refused",
            "one-signature: the list is not signed",
        ),
        ("file billion-laughs.xml", "refused", "DOCTYPE"),
        ("file external-entity.xml", "refused", "DOCTYPE"),
        ("file truncate.xml", "refused", "not well-formed"),
        ("file wrapping.xml", "refused", "signature-shape"),
        ("file older.xml", "refused", "not-older"),
        ("status 404", "fetch_failed", "HTTP 404"),
        ("hang", "fetch_failed", "timed out after 3 s"),
        ("huge 100", "fetch_failed", "1048576-byte limit"),
        ("untrusted", "fetch_failed", "TLS"),
    ];
    for (mode, outcome, why) in cases {
        set_mode(mode);
        let (code, v) = update(&b);
        let a = &v["attempt"];
        assert_eq!(code, Some(1), "{mode}: {v:#}");
        assert_eq!(a["outcome"], *outcome, "{mode}: {v:#}");
        let reason = a["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{mode}: `{reason}` lacks `{why}`");
        assert_eq!(
            fs::read(&current).unwrap(),
            valid,
            "{mode} changed the list"
        );
        // A verification that ran left its proof, saying invalid.
        if *outcome == "refused" {
            let p = wl.join("proofs").join(a["proof"].as_str().unwrap());
            let t = fs::read_to_string(&p).unwrap();
            assert!(t.contains("<Verdict valid=\"false\""), "{mode}: {t}");
        }
    }
    // The box says so while the last attempt failed, and still serves the list.
    let (_, status) = b.http_get("/status.json");
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["whitelist"]["configured"], true);
    assert!(
        s["reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("the last whitelist attempt failed")),
        "{s:#}"
    );
    assert!(
        s["whitelist"]["summary"]
            .as_str()
            .unwrap()
            .contains("17 domain(s)"),
        "{s:#}"
    );

    // A newer valid list replaces it; the one before is kept.
    set_mode("file newer.xml");
    let (code, v) = update(&b);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["attempt"]["outcome"], "installed", "{v:#}");
    assert_eq!(
        fs::read(&current).unwrap(),
        fs::read(served.join("newer.xml")).unwrap()
    );
    assert_eq!(
        fs::read(wl.join("liste-blanche.previous.xml")).unwrap(),
        valid
    );
    let (ok, out) = xmlsec1_verifies_proof(&proof, &editor.path().join("ca.pem"));
    assert!(ok, "{out}");

    // What an operator reads: every check, the proof, the outcome; and the history.
    let human = run_ok(
        Command::new(bin())
            .args(["whitelist", "update", "--config"])
            .arg(&b.config_path),
    );
    assert!(human.contains("  PASS digests: "), "{human}");
    assert!(human.contains("(signed)"), "{human}");
    assert!(human.trim_end().ends_with("UNCHANGED"), "{human}");
    let listed = run_ok(
        Command::new(bin())
            .args(["whitelist", "history", "--config"])
            .arg(&b.config_path),
    );
    assert!(
        listed.contains("download failed") && listed.contains("HTTP 404"),
        "{listed}"
    );

    // The history holds every attempt, newest first; the status page the list's facts.
    let h = history(&b);
    assert_eq!(h.len(), 2 + cases.len() + 2, "{h:#?}");
    assert_eq!(h[0]["outcome"], "unchanged");
    assert_eq!(h[1]["outcome"], "installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = b.http_get("/status.json");
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        let w = &s["whitelist"];
        let details = w["details"].to_string();
        if w["summary"]
            .as_str()
            .unwrap()
            .contains("2026-12-02T00:00:00Z")
            && details.contains("next attempt")
        {
            assert!(details.contains("CRLs valid until"), "{w:#}");
            assert!(
                details.contains("signer's certificates valid until"),
                "{w:#}"
            );
            assert!(details.contains("proof of verification signed"), "{w:#}");
            assert!(!s["reasons"].to_string().contains("whitelist"), "{s:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the new list: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A list installed just before a crash (its attempt never committed) is found at start and
/// its attempt recorded; the box then waits for its daily slot instead of downloading at once.
/// A box without `[whitelist] url` says it downloads nothing, and refuses `whitelist update`.
#[test]
fn a_list_installed_before_a_crash_is_recorded_at_start_and_an_unconfigured_box_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    py(&["pki", pki.to_str().unwrap()]);
    let signed = signed_list(dir.path(), &pki);
    let tls = dir.path().join("tls");
    fs::create_dir(&tls).unwrap();
    mint_pki(&tls, "list");

    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    fs::create_dir_all(data.join("whitelist")).unwrap();
    fs::copy(&signed, data.join("whitelist/liste-blanche.xml")).unwrap();
    // Nobody listens there: a download would fail and be recorded as such.
    let b = DrimBox::start_in(
        home,
        data,
        Settings {
            extra_config: format!(
                "\n[whitelist]\nurl = \"https://127.0.0.1:{}/lb.xml\"\ntls_trust_anchors = {:?}\n\
                 trust_anchors = [{:?}]\nintermediates = [{:?}]\n",
                free_port(),
                tls.join("list-ca.pem").display().to_string(),
                pki.join("root.pem").display().to_string(),
                pki.join("intermediate.pem").display().to_string(),
            ),
            ..Settings::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let h = loop {
        let h = history(&b);
        if !h.is_empty() {
            break h;
        }
        assert!(Instant::now() < deadline, "nothing recorded\n{}", b.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(h[0]["outcome"], "installed", "{h:#?}");
    assert_eq!(h[0]["trigger"], "start");
    assert!(h[0]["reason"].as_str().unwrap().contains("interruption"));
    assert_eq!(h[0]["domains"], 17);
    // Recorded once, and no download was attempted after it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(history(&b).len(), 1, "{:#?}", history(&b));
    drop(b);

    let b = DrimBox::start(Settings::default());
    let o = Command::new(bin())
        .args(["whitelist", "update", "--config"])
        .arg(&b.config_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("[whitelist] url"), "{}", text(&o));
    let (_, status) = b.http_get("/status.json");
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["whitelist"]["configured"], false, "{s:#}");
    assert!(
        s["whitelist"]["summary"]
            .as_str()
            .unwrap()
            .contains("not downloaded"),
        "{s:#}"
    );
    assert!(!s["reasons"].to_string().contains("whitelist"), "{s:#}");
}
