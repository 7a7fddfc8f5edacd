//! The VIHF (DRIM-M §2.3) against the field's own tools: a test CA and an RSA 2048 signing
//! certificate minted with `openssl`, a PKCS#12 from `openssl pkcs12 -export` (OpenSSL 3
//! defaults) loaded by `SigningIdentity`; assertions signed with rsa-sha1 and rsa-sha256,
//! embedded in a SOAP 1.2 envelope inside `wsse:Security` as the DMP receives them (§2.2),
//! must pass `xmlsec1 --verify` (SAML `ID` declared as the id attribute, the CA trusted) and
//! `xmllint`; a copy with one attribute value changed must fail in xmlsec1 and in our verifier.
//!
//! A missing tool is a failure naming the Debian package, never a silent skip.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drimbox::dmp::vihf::{
    build_vihf, CodedValue, Lps, VihfInput, AUTHENTICATION_INDIRECT, ID_ATTRIBUTE, SECTOR_SCHEME,
    VIHF_VERSION,
};
use drimbox::signing::{SignatureAlgorithm, SigningIdentity};
use drimbox::xml::dsig::{self, VerifyOptions};

const P12_PASSWORD: &str = common::SIGNER_P12_PASSWORD;

fn tool(name: &str, package: &str) -> PathBuf {
    let o = Command::new("which")
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("running `which {name}`: {e}"));
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        o.status.success() && !path.is_empty(),
        "{name} is missing: this test checks our VIHF with it. Install the Debian package \
         `{package}` (apt-get install -y {package}; scripts/test installs the test peers)."
    );
    PathBuf::from(path)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// The shared test PKI (common::mint_signing_pki) with this test's signer subject.
fn mint_pki() -> tempfile::TempDir {
    common::mint_signing_pki(
        "/C=FR/ST=Paris (75)/O=CABINET M & FILS/OU=499700367909006/CN=DRIMbox",
        None,
    )
}

fn input(id: &str) -> VihfInput {
    VihfInput {
        assertion_id: id.into(),
        issue_instant: "2026-12-02T10:00:00Z".into(),
        name_id: "899700367909".into(),
        subject_id: "Hélène D'Aubigné & <Fils>".into(),
        structure_id: "499700367909006".into(),
        sector: ("SA25".into(), SECTOR_SCHEME.into()),
        roles: vec![
            CodedValue::new("10", "1.2.250.1.71.1.2.7", "Medecin"),
            CodedValue::new(
                "SM26",
                "1.2.250.1.71.4.2.5",
                "Qualifie en Medecine Generale (SM)",
            ),
        ],
        resource_id: "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH".into(),
        authentication_mode: AUTHENTICATION_INDIRECT.into(),
        purpose_of_use: CodedValue::normal_access(),
        lps: Lps {
            id: "DRB-TEST-0001".into(),
            name: "DRIMbox".into(),
            version: "0.9.0".into(),
            homologation: "BCO-465897-tmp2".into(),
        },
        vihf_version: VIHF_VERSION.into(),
        confidentiality_codes: Vec::new(),
    }
}

/// The SOAP 1.2 envelope of DRIM-M §2.2 with `assertion` in its WS-Security header.
fn envelope(assertion: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:urn=\"urn:hl7-org:v3\">\
         <soap:Header>\
         <MessageID xmlns=\"http://www.w3.org/2005/08/addressing\">urn:uuid:0b7e7c52-7c1e-4b8e-9d7a-3f4b1c2d5e6f</MessageID>\
         <To xmlns=\"http://www.w3.org/2005/08/addressing\">https://lps.dev9.dmp.gouv.fr/si-dmp-server/v2/services/repository</To>\
         <Action xmlns=\"http://www.w3.org/2005/08/addressing\" soap:mustUnderstand=\"true\">urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b</Action>\
         <wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\">{assertion}</wsse:Security>\
         </soap:Header><soap:Body/></soap:Envelope>\n"
    )
}

fn xmlsec_verify(ca: &Path, doc: &Path) -> Output {
    run(Command::new(tool("xmlsec1", "xmlsec1"))
        .args(["--verify", "--id-attr:ID"])
        .arg("urn:oasis:names:tc:SAML:2.0:assertion:Assertion")
        .arg("--trusted-pem")
        .arg(ca)
        .arg(doc))
}

fn ours_valid(doc: &[u8]) -> bool {
    dsig::verify(
        doc,
        &VerifyOptions {
            id_attribute: ID_ATTRIBUTE.into(),
            certificate: None,
        },
    )
    .is_ok_and(|r| r.is_valid())
}

#[test]
fn vihf_in_a_soap_envelope_passes_xmlsec1_and_tampering_fails() {
    let pki = mint_pki();
    let d = pki.path();
    let identity = SigningIdentity::from_pkcs12_file(&d.join("signer.p12"), P12_PASSWORD)
        .unwrap_or_else(|e| panic!("loading the PKCS#12: {e}"));
    let ca = d.join("ca.pem");
    for algorithm in [SignatureAlgorithm::RsaSha1, SignatureAlgorithm::RsaSha256] {
        let id = format!("_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0-{}", algorithm.name());
        let assertion = build_vihf(&input(&id), &identity, algorithm)
            .unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        assert_eq!(
            assertion,
            build_vihf(&input(&id), &identity, algorithm).unwrap(),
            "deterministic"
        );
        assert!(assertion.starts_with("<saml2:Assertion "));
        // The Issuer is the certificate's subject DN, escaped.
        assert!(assertion.contains(
            "X509SubjectName\">CN=DRIMbox, OU=499700367909006, O=CABINET M &amp; FILS, ST=Paris (75), C=FR</saml2:Issuer>"
        ), "{assertion}");

        let soap = envelope(&assertion);
        let path = d.join(format!("vihf-{}.xml", algorithm.name()));
        fs::write(&path, &soap).unwrap();

        let o = run(Command::new(tool("xmllint", "libxml2-utils"))
            .arg("--noout")
            .arg(&path));
        assert!(o.status.success(), "xmllint: {}", common::text(&o));

        let o = xmlsec_verify(&ca, &path);
        let said = common::text(&o);
        assert!(
            o.status.success() && said.contains("OK"),
            "xmlsec1 rejects our {algorithm:?} VIHF: {said}\n{soap}"
        );
        assert!(
            said.contains("SignedInfo References (ok/all): 1/1"),
            "{said}"
        );
        assert!(ours_valid(soap.as_bytes()), "our verifier rejects it");

        // One attribute value changed (the structure id), then one role code: both reject.
        for (from, to) in [
            (
                "<saml2:AttributeValue>499700367909006<",
                "<saml2:AttributeValue>499700367909007<",
            ),
            ("code=\"SM26\"", "code=\"SM27\""),
        ] {
            assert!(soap.contains(from), "{from}");
            let bad = soap.replacen(from, to, 1);
            let bad_path = d.join("tampered.xml");
            fs::write(&bad_path, &bad).unwrap();
            let o = xmlsec_verify(&ca, &bad_path);
            assert!(
                !o.status.success(),
                "xmlsec1 accepts a VIHF tampered at {from:?}: {}",
                common::text(&o)
            );
            assert!(
                !ours_valid(bad.as_bytes()),
                "we accept a VIHF tampered at {from:?}"
            );
        }

        // Not trusted without our CA: the OK above is not vacuous.
        let other = common::shared().join("ref/pki/igc-sante-test-root-ACR-EL.pem");
        let o = xmlsec_verify(&other, &path);
        assert!(
            !o.status.success(),
            "xmlsec1 trusts a chain it was not given: {}",
            common::text(&o)
        );
    }
}
