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
    py(&[
        "sign",
        list.to_str().unwrap(),
        signed.to_str().unwrap(),
        "--key",
        pki.join("signer.key").to_str().unwrap(),
        "--cert",
        pki.join("signer.pem").to_str().unwrap(),
        "--chain",
        pki.join("intermediate.pem").to_str().unwrap(),
    ]);
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (o, v) = verify(&cfg, &signed, &[]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["crls"].as_array().unwrap().len(), 2, "{v:#}");
}
