//! Our XML security code against the field's own tools, byte for byte (DESIGN.md §6, §7):
//!
//! * Canonical XML: every document of `tests/xml_c14n/` (and the agency's signatures) in the
//!   four forms, compared with `xmllint --c14n` / `--exc-c14n` (with comments; libxml2) and
//!   python3-lxml (without comments); document subsets by `Id` compared with the pre-digest
//!   buffers of `xmlsec1 --sign --store-references` (libxml2's node-set canonicaliser, the
//!   one the DMP's xmlsec-style verifiers run).
//! * Lot signatures (DRIM-M §2.6): a test CA and a signing certificate minted with `openssl`, a
//!   PKCS#12 from `openssl pkcs12 -export` (OpenSSL 3 defaults) loaded by `SigningIdentity`,
//!   documents signed with rsa-sha1 and rsa-sha256 that `xmlsec1 --verify` and our verifier
//!   accept, tampered copies both reject; the agency's rebuilt reference signature verified by
//!   xmlsec1 with the IGC-Santé test PKI.
//!
//! A missing tool is a failure naming the Debian package, never a silent skip (as in
//! `tests/units.rs`); `scripts/test` installs them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drimbox::xml::{C14nMethod, Canonicalizer, Document};

const ALL_METHODS: [C14nMethod; 4] = [
    C14nMethod::Inclusive,
    C14nMethod::InclusiveWithComments,
    C14nMethod::Exclusive,
    C14nMethod::ExclusiveWithComments,
];

/// Finds `tool` with `which`; a missing tool fails the test with the package to install.
fn tool(name: &str, package: &str) -> PathBuf {
    let o = Command::new("which")
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("running `which {name}`: {e}"));
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        o.status.success() && !path.is_empty(),
        "{name} is missing: this test compares our output with it. Install the Debian package \
         `{package}` (apt-get install -y {package}; scripts/test installs the test peers)."
    );
    PathBuf::from(path)
}

/// Debian's python3, which python3-lxml extends (a python3 earlier in PATH may lack lxml).
fn debian_python() -> PathBuf {
    let p = PathBuf::from("/usr/bin/python3");
    let ok = Command::new(&p)
        .args(["-c", "import lxml.etree"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "/usr/bin/python3 cannot import lxml: install the Debian package `python3-lxml` \
         (apt-get install -y python3-lxml; scripts/test installs the test peers)."
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn corpus_dir() -> PathBuf {
    common::repo().join("tests/xml_c14n")
}

/// The corpus: our tricky documents plus the agency's two lot signatures.
fn corpus(tmp: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = common::files_in(&corpus_dir())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    assert!(files.len() >= 9, "tests/xml_c14n/ lost documents");
    files.push(common::shared().join("ref/ans/XDM/KA202401/IHE_XDM/SS000001/SIGN_1.XML"));
    let rebuilt = tmp.join("reference_lot_signature.xml");
    fs::write(&rebuilt, reference_lot_signature()).unwrap();
    files.push(rebuilt);
    files
}

/// DRIM-M §2.6: part `<0.3>` of publication.xml without the whitespace between tags, with the
/// XML declaration and a final LF.
fn reference_lot_signature() -> Vec<u8> {
    let publication =
        String::from_utf8(fs::read(common::shared().join("ref/ans/XDS/publication.xml")).unwrap())
            .unwrap();
    let part = &publication[publication.find("Content-ID: <0.3>").unwrap()..];
    let start = part.find("<Signature").unwrap();
    let end = part.find("</Signature>").unwrap() + "</Signature>".len();
    let mut out = String::from("<?xml version=\"1.0\"?>\n");
    let mut rest = &part[start..end];
    while let Some(i) = rest.find('>') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with('<') {
            rest = trimmed;
        }
    }
    out.push_str(rest);
    out.push('\n');
    assert_eq!(out.len(), 6102, "the rebuilt reference signature");
    out.into_bytes()
}

fn ours_document(path: &Path, method: C14nMethod) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    let doc = Document::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Canonicalizer::new(method).document(&doc)
}

fn xmllint_c14n(path: &Path, exclusive: bool) -> Vec<u8> {
    let o = run(Command::new(tool("xmllint", "libxml2-utils"))
        .arg(if exclusive { "--exc-c14n" } else { "--c14n" })
        .arg(path));
    assert!(o.status.success(), "xmllint: {}", common::text(&o));
    o.stdout
}

const LXML_C14N: &str = r#"
import sys
from lxml import etree
tree = etree.parse(sys.argv[1])
sys.stdout.buffer.write(etree.tostring(tree, method="c14n", exclusive=sys.argv[2] == "1", with_comments=False))
"#;

fn lxml_c14n(path: &Path, exclusive: bool) -> Vec<u8> {
    let o = run(Command::new(debian_python())
        .args(["-c", LXML_C14N])
        .arg(path)
        .arg(if exclusive { "1" } else { "0" }));
    assert!(o.status.success(), "lxml: {}", common::text(&o));
    o.stdout
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn whole_documents_match_xmllint_and_lxml() {
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for path in corpus(tmp.path()) {
        for method in ALL_METHODS {
            let ours = ours_document(&path, method);
            let (peer, theirs) = if method.with_comments() {
                ("xmllint", xmllint_c14n(&path, method.is_exclusive()))
            } else {
                ("lxml", lxml_c14n(&path, method.is_exclusive()))
            };
            assert!(
                ours == theirs,
                "{} {method:?}: we differ from {peer}\nours:\n{}\n{peer}:\n{}",
                path.display(),
                show(&ours),
                show(&theirs)
            );
            checked += 1;
        }
    }
    assert!(checked >= 44);
}

/// A throw-away RSA key for `xmlsec1 --sign`, which we use only for its pre-digest buffers.
fn scratch_key(dir: &Path) -> PathBuf {
    let key = dir.join("scratch-key.pem");
    let o = run(Command::new(tool("openssl", "openssl"))
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    assert!(o.status.success(), "openssl genrsa: {}", common::text(&o));
    key
}

/// One document subset to cross-check: the element with this `Id`, a method, and an
/// InclusiveNamespaces PrefixList (exclusive only).
struct Subset {
    id: &'static str,
    method: C14nMethod,
    prefixes: &'static [&'static str],
}

/// Asks xmlsec1 for the canonical form of each subset: it signs a template whose References
/// point at them (`#id` without comments, `#xpointer(id('id'))` with, as XMLDSig says) and
/// prints each Reference's pre-digest buffer.
fn xmlsec_subsets(dir: &Path, document: &[u8], subsets: &[Subset]) -> Vec<Vec<u8>> {
    let doc = Document::parse(document).unwrap();
    let mut refs = String::new();
    let mut id_attrs: Vec<String> = Vec::new();
    for s in subsets {
        let e = doc.element(doc.element_by_id("Id", s.id).unwrap()).unwrap();
        let node = if e.namespace.is_empty() {
            e.local.clone()
        } else {
            format!("{}:{}", e.namespace, e.local)
        };
        if !id_attrs.contains(&node) {
            id_attrs.push(node);
        }
        let uri = if s.method.with_comments() {
            format!("#xpointer(id('{}'))", s.id)
        } else {
            format!("#{}", s.id)
        };
        let inclusive = if s.prefixes.is_empty() {
            String::new()
        } else {
            format!(
                "<ec:InclusiveNamespaces xmlns:ec=\"http://www.w3.org/2001/10/xml-exc-c14n#\" PrefixList=\"{}\"/>",
                s.prefixes.join(" ")
            )
        };
        refs += &format!(
            "<Reference URI=\"{uri}\"><Transforms><Transform Algorithm=\"{}\">{inclusive}</Transform></Transforms>\
             <DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/><DigestValue/></Reference>",
            s.method.uri()
        );
    }
    let template = format!(
        "<Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\"><SignedInfo>\
         <CanonicalizationMethod Algorithm=\"http://www.w3.org/TR/2001/REC-xml-c14n-20010315\"/>\
         <SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\"/>{refs}\
         </SignedInfo><SignatureValue/></Signature>"
    );
    let text = show(document);
    let at = text.rfind("</").expect("the root element's end tag");
    let signed = dir.join("template.xml");
    fs::write(&signed, format!("{}{template}{}", &text[..at], &text[at..])).unwrap();
    let mut cmd = Command::new(tool("xmlsec1", "xmlsec1"));
    cmd.args(["--sign", "--store-references", "--privkey-pem"])
        .arg(scratch_key(dir));
    for n in &id_attrs {
        cmd.args(["--id-attr:Id", n]);
    }
    cmd.args(["--output", "/dev/null"]).arg(&signed);
    let o = run(&mut cmd);
    assert!(o.status.success(), "xmlsec1 --sign: {}", common::text(&o));
    let mut all = o.stdout.clone();
    all.extend_from_slice(&o.stderr);
    let (start, end) = (
        &b"== PreDigest data - start buffer:\n"[..],
        &b"\n== PreDigest data - end buffer"[..],
    );
    let mut buffers = Vec::new();
    let mut rest = &all[..];
    while let Some(i) = find(rest, start) {
        rest = &rest[i + start.len()..];
        let j = find(rest, end).expect("end of a pre-digest buffer");
        buffers.push(rest[..j].to_vec());
        rest = &rest[j..];
    }
    // xmlsec1 also prints the SignedInfo's canonical form last? Only the References' buffers
    // are asked for; keep exactly one per Reference.
    assert_eq!(
        buffers.len(),
        subsets.len(),
        "xmlsec1 output:\n{}",
        show(&all)
    );
    buffers
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn document_subsets_match_xmlsec1() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = fs::read(corpus_dir().join("subsets.xml")).unwrap();
    let mut subsets = Vec::new();
    for id in ["L1", "L2", "L3", "L4", "L5", "L6", "N1", "N2", "N3"] {
        for method in ALL_METHODS {
            subsets.push(Subset {
                id,
                method,
                prefixes: &[],
            });
        }
    }
    for (id, prefixes) in [("L3", &["q", "#default"][..]), ("L5", &["p", "r"][..])] {
        for method in [C14nMethod::Exclusive, C14nMethod::ExclusiveWithComments] {
            subsets.push(Subset {
                id,
                method,
                prefixes,
            });
        }
    }
    let theirs = xmlsec_subsets(tmp.path(), &bytes, &subsets);
    let doc = Document::parse(&bytes).unwrap();
    for (s, theirs) in subsets.iter().zip(theirs) {
        let apex = doc.element_by_id("Id", s.id).unwrap();
        let mut c = Canonicalizer::new(s.method).inclusive_prefixes(s.prefixes);
        if !s.method.with_comments() {
            c = c.without_comments();
        }
        let ours = c.subtree(&doc, apex);
        assert!(
            ours == theirs,
            "#{} {:?} {:?}: we differ from xmlsec1\nours:\n{}\nxmlsec1:\n{}",
            s.id,
            s.method,
            s.prefixes,
            show(&ours),
            show(&theirs)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Lot signatures.

use drimbox::signing::{
    build_lot_signature, IdentityError, KosContent, LotSignatureInput, SignatureAlgorithm,
    SigningIdentity,
};
use drimbox::xml::dsig::{self, DsigError, VerifyOptions};

const P12_PASSWORD: &str = common::SIGNER_P12_PASSWORD;

fn openssl(dir: &Path, args: &[&str]) {
    let o = run(Command::new(tool("openssl", "openssl"))
        .args(args)
        .current_dir(dir));
    assert!(o.status.success(), "openssl {args:?}: {}", common::text(&o));
}

/// The shared test PKI (common::mint_signing_pki) with this test's signer subject.
fn mint_pki() -> tempfile::TempDir {
    common::mint_signing_pki(
        "/C=FR/ST=Paris (75)/O=CABINET TEST, RADIOLOGIE/OU=499700367909006/CN=DRIMbox",
        Some("0x9D5DE25E3DC14BDE670D26E191261710"),
    )
}

/// What `openssl pkcs12 -info` says of a file's algorithms.
fn pkcs12_info(d: &Path, file: &str, extra: &[&str]) -> String {
    let o = run(Command::new(tool("openssl", "openssl"))
        .args(["pkcs12", "-info", "-noout", "-in", file, "-passin"])
        .arg(format!("pass:{P12_PASSWORD}"))
        .args(extra)
        .current_dir(d));
    assert!(
        o.status.success(),
        "openssl pkcs12 -info: {}",
        common::text(&o)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn xmlsec_verify(args: &[&str], doc: &Path) -> Output {
    run(Command::new(tool("xmlsec1", "xmlsec1"))
        .args([
            "--verify",
            "--ignore-manifests",
            "--id-attr:Id",
            "Manifest",
            "--id-attr:Id",
        ])
        .arg("http://uri.etsi.org/01903/v1.1.1#:SignedProperties")
        .args(args)
        .arg(doc))
}

fn kos() -> Vec<u8> {
    fs::read(common::shared().join("ref/ans/KOS/ko.dcm")).unwrap()
}

fn input<'a>(kos: &'a [u8], algorithm: SignatureAlgorithm) -> LotSignatureInput<'a> {
    LotSignatureInput {
        signature_id: "2.25.99887766554433221100998877665544332211",
        submission_set_unique_id: "1.2.250.1.999.1.1.8121.5.9000",
        kos_unique_id: "1.2.250.1.999.1.1.8121.4.9000.1",
        kos: KosContent::Bytes(kos),
        signing_time: "2026-12-02T05:10:00.000+01:00",
        algorithm,
    }
}

/// Changes one byte of `doc` right after `marker`.
fn tamper(doc: &[u8], marker: &str) -> Vec<u8> {
    let i = find(doc, marker.as_bytes()).unwrap_or_else(|| panic!("{marker} not in the document"))
        + marker.len();
    let mut out = doc.to_vec();
    out[i] = if out[i] == b'A' { b'B' } else { b'A' };
    out
}

#[test]
fn the_openssl_default_pkcs12_loads_and_its_lot_signatures_pass_xmlsec1() {
    let pki = mint_pki();
    let d = pki.path();
    let info = pkcs12_info(d, "signer.p12", &[]);
    assert!(
        info.contains("PBES2, PBKDF2, AES-256-CBC") && info.contains("MAC: sha256"),
        "not OpenSSL 3's default PKCS#12 profile:\n{info}"
    );
    let identity = SigningIdentity::from_pkcs12_file(&d.join("signer.p12"), P12_PASSWORD)
        .unwrap_or_else(|e| panic!("loading the PKCS#12: {e}"));
    assert_eq!(
        identity.certificate().subject(),
        "CN=DRIMbox, OU=499700367909006, O=CABINET TEST\\, RADIOLOGIE, ST=Paris (75), C=FR"
    );
    assert_eq!(
        identity.certificate().issuer(),
        "CN=TEST AC DRIMBOX, OU=IGC TEST, O=DRIMbox test, C=FR"
    );
    // int("9D5DE25E3DC14BDE670D26E191261710", 16); the high bit makes DER add a 00 byte.
    assert_eq!(
        identity.certificate().serial_decimal(),
        "209176270237205499196091296815243466512"
    );
    assert_eq!(identity.chain().len(), 1, "the CA from -certfile");

    let ca = d.join("ca.pem").display().to_string();
    let kos = kos();
    for algorithm in [SignatureAlgorithm::RsaSha1, SignatureAlgorithm::RsaSha256] {
        let doc = build_lot_signature(&input(&kos, algorithm), &identity).unwrap();
        // Deterministic: PKCS#1 v1.5 and a fixed input give the same bytes.
        assert_eq!(
            doc,
            build_lot_signature(&input(&kos, algorithm), &identity).unwrap()
        );
        let text = show(&doc);
        assert!(text.starts_with("<?xml version=\"1.0\"?>\n<Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\" Id=\"2.25.99887766554433221100998877665544332211\">"));
        assert!(text.ends_with("</Signature>\n"));
        assert!(text.contains(algorithm.signature_method().uri()));

        let path = d.join(format!("lot-{}.xml", algorithm.name()));
        fs::write(&path, &doc).unwrap();
        let o = xmlsec_verify(&["--trusted-pem", &ca], &path);
        assert!(
            o.status.success(),
            "xmlsec1 rejects our {algorithm:?} lot signature: {}\n{text}",
            common::text(&o)
        );
        assert!(show(&o.stderr).contains("SignedInfo References (ok/all): 2/2"));

        let report = dsig::verify(&doc, &VerifyOptions::default()).unwrap();
        assert!(report.is_valid(), "{:?}", report.error());
        assert_eq!(
            report.certificate.as_deref(),
            Some(identity.certificate().der())
        );
        let manifest = &report.manifests[0];
        assert_eq!(
            manifest.references[1].uri,
            "urn:oid:1.2.250.1.999.1.1.8121.4.9000.1"
        );
        assert_eq!(manifest.references[1].check(&kos), Ok(()));

        // One byte changed in the Manifest (the KOS digest), in SignedProperties (the
        // signing time), in the SignatureValue: xmlsec1 and we reject each.
        for marker in [
            "<Reference URI=\"urn:oid:1.2.250.1.999.1.1.8121.4.9000.1\"><DigestMethod Algorithm=\"",
            "<SigningTime>2026-12-02T05:1",
            "<SignatureValue>",
        ] {
            let bad = tamper(&doc, marker);
            let bad_path = d.join("tampered.xml");
            fs::write(&bad_path, &bad).unwrap();
            let o = xmlsec_verify(&["--trusted-pem", &ca], &bad_path);
            assert!(
                !o.status.success(),
                "xmlsec1 accepts a copy tampered after {marker:?}: {}",
                common::text(&o)
            );
            let report = dsig::verify(&bad, &VerifyOptions::default()).unwrap();
            assert!(
                !report.is_valid(),
                "we accept a copy tampered after {marker:?}"
            );
        }

        // Signed by a CA xmlsec1 does not trust: refused (the check above is not vacuous).
        let o = xmlsec_verify(
            &[
                "--trusted-pem",
                &common::shared()
                    .join("ref/pki/igc-sante-test-root-ACR-EL.pem")
                    .display()
                    .to_string(),
            ],
            &path,
        );
        assert!(
            !o.status.success(),
            "xmlsec1 trusts a chain it was not given"
        );
    }
}

#[test]
fn legacy_pkcs12_loads_too() {
    let pki = mint_pki();
    let d = pki.path();
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-legacy",
            "-inkey",
            "signer.key",
            "-in",
            "signer.pem",
            "-out",
            "legacy.p12",
            "-passout",
            &format!("pass:{P12_PASSWORD}"),
        ],
    );
    let info = pkcs12_info(d, "legacy.p12", &["-legacy"]);
    assert!(info.contains("pbeWithSHA1And40BitRC2-CBC"), "{info}");
    let identity = SigningIdentity::from_pkcs12_file(&d.join("legacy.p12"), P12_PASSWORD).unwrap();
    let modern = SigningIdentity::from_pkcs12_file(&d.join("signer.p12"), P12_PASSWORD).unwrap();
    assert_eq!(identity.certificate(), modern.certificate());
}

#[test]
fn pkcs12_problems_are_typed_errors() {
    let pki = mint_pki();
    let d = pki.path();
    assert!(matches!(
        SigningIdentity::from_pkcs12_file(&d.join("signer.p12"), "not the password"),
        Err(IdentityError::WrongPassword)
    ));
    assert!(matches!(
        SigningIdentity::from_pkcs12_file(&d.join("missing.p12"), P12_PASSWORD),
        Err(IdentityError::Read { .. })
    ));
    assert!(matches!(
        SigningIdentity::from_pkcs12(b"not DER at all", P12_PASSWORD),
        Err(IdentityError::Pkcs12(_))
    ));
    // Certificates only.
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-nokeys",
            "-in",
            "signer.pem",
            "-out",
            "certs.p12",
            "-passout",
            &format!("pass:{P12_PASSWORD}"),
        ],
    );
    assert!(matches!(
        SigningIdentity::from_pkcs12_file(&d.join("certs.p12"), P12_PASSWORD),
        Err(IdentityError::NoKey)
    ));
    // An EC key and certificate.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ec.key",
            "-out",
            "ec.pem",
            "-days",
            "2",
            "-subj",
            "/CN=EC",
        ],
    );
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "ec.key",
            "-in",
            "ec.pem",
            "-out",
            "ec.p12",
            "-passout",
            &format!("pass:{P12_PASSWORD}"),
        ],
    );
    assert!(matches!(
        SigningIdentity::from_pkcs12_file(&d.join("ec.p12"), P12_PASSWORD),
        Err(IdentityError::NotRsa(_))
    ));
    // A key with somebody else's certificate.
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "signer.key",
            "-outform",
            "DER",
            "-out",
            "signer.p8",
        ],
    );
    openssl(
        d,
        &["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"],
    );
    assert!(matches!(
        SigningIdentity::from_parts(
            &fs::read(d.join("signer.p8")).unwrap(),
            &fs::read(d.join("ca.der")).unwrap(),
            Vec::new()
        ),
        Err(IdentityError::KeyMismatch)
    ));
}

#[test]
fn xmlsec1_verifies_the_rebuilt_reference_signature_with_the_igc_sante_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = reference_lot_signature();
    let path = tmp.path().join("reference.xml");
    fs::write(&path, &doc).unwrap();
    let pki = common::shared().join("ref/pki");
    let root = pki
        .join("igc-sante-test-root-ACR-EL.pem")
        .display()
        .to_string();
    let intermediate = pki
        .join("igc-sante-test-ACI-EL-ORG.pem")
        .display()
        .to_string();
    let args = [
        "--verification-time",
        "2023-11-14 14:00:00",
        "--trusted-pem",
        &root,
        "--untrusted-pem",
        &intermediate,
    ];
    let o = xmlsec_verify(&args, &path);
    assert!(o.status.success(), "xmlsec1: {}", common::text(&o));
    // And our verifier agrees, with the Manifest checked against the KOS the DMP received.
    let report = dsig::verify(&doc, &VerifyOptions::default()).unwrap();
    assert!(report.is_valid());
    assert_eq!(report.manifests[0].references[1].check(&kos()), Ok(()));
    // A one-byte change in the Manifest: xmlsec1 rejects it too.
    let bad = tamper(&doc, "<DigestValue>WECMEWtRSXwP");
    fs::write(&path, &bad).unwrap();
    assert!(!xmlsec_verify(&args, &path).status.success());
    assert!(matches!(
        dsig::verify(&bad, &VerifyOptions::default())
            .unwrap()
            .references[0]
            .result,
        Err(DsigError::DigestMismatch { .. })
    ));
}

/// The shape the whitelist will need (DRIM-M §5.2), signed by xmlsec1: an enveloped signature
/// over the whole document (`URI=""`, enveloped-signature + exclusive C14N, rsa-sha256). Our
/// verifier must accept xmlsec1's signature and reject a one-byte change.
#[test]
fn our_verifier_accepts_an_enveloped_signature_made_by_xmlsec1() {
    let pki = mint_pki();
    let d = pki.path();
    let template = "<?xml version=\"1.0\"?>\n<list xmlns=\"urn:example:list\" xmlns:unused=\"urn:unused\">\n  \
        <item host=\"db3.example\">a &amp; b</item>\n  <!-- a comment the node-set drops -->\n  \
        <ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"><ds:SignedInfo>\
        <ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>\
        <ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\"/>\
        <ds:Reference URI=\"\"><ds:Transforms>\
        <ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>\
        <ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/></ds:Transforms>\
        <ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/><ds:DigestValue/></ds:Reference>\
        </ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><ds:X509Data/></ds:KeyInfo></ds:Signature>\n</list>\n";
    fs::write(d.join("template.xml"), template).unwrap();
    let o = run(Command::new(tool("xmlsec1", "xmlsec1"))
        .args([
            "--sign",
            "--privkey-pem",
            "signer.key,signer.pem",
            "--output",
            "signed.xml",
            "template.xml",
        ])
        .current_dir(d));
    assert!(o.status.success(), "xmlsec1 --sign: {}", common::text(&o));
    let signed = fs::read(d.join("signed.xml")).unwrap();
    let report = dsig::verify(&signed, &VerifyOptions::default()).unwrap();
    assert!(report.is_valid(), "{:?}\n{}", report.error(), show(&signed));
    assert_eq!(report.references[0].uri, "");
    assert!(report.manifests.is_empty());

    let bad = tamper(&signed, "host=\"db");
    let report = dsig::verify(&bad, &VerifyOptions::default()).unwrap();
    assert!(matches!(
        report.references[0].result,
        Err(DsigError::DigestMismatch { .. })
    ));
    assert_eq!(report.signature_value, Ok(()));
}
