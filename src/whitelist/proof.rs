//! The proof of verification (DRIM-M §5.4): after each verification, a report of what was
//! checked, each check's result, the list's digest, the certificates and CRLs used and the
//! time, signed XAdES-BASELINE-B enveloped with the editor's own certificate, so an auditor can
//! check with `xmlsec1 --verify` that this box verified this list this way at that time.
//!
//! Pure: [`report`] writes the document; [`prepare`] computes the reference digests with the
//! verifier's own dereferencing (what we digest is what a verifier digests) and gives the
//! canonical SignedInfo to sign; [`Unsigned::finish`] inserts the value. [`sign`] does the
//! three with an identity and verifies the result with our own verifier before returning it.
//!
//! The signature: exclusive C14N, rsa-sha256, a `URI=""` reference with the enveloped-signature
//! transform, a reference to the XAdES SignedProperties (SigningTime, SigningCertificateV2 with
//! the SHA-512 of the certificate), the certificate in X509Data.

use super::verify::{Outcome, Verification};
use crate::pki::Certificate;
use crate::signing::{SignatureAlgorithm, SigningIdentity};
use crate::xml::c14n::C14nMethod;
use crate::xml::dsig::{self, DigestMethod, DsigError, Transform, VerifyOptions, DSIG_NS};
use crate::xml::{Document, XmlError};

pub const REPORT_NS: &str = "urn:drimbox:whitelist-verification:1";
const XADES_NS: &str = "http://uri.etsi.org/01903/v1.3.2#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const SIGNED_PROPERTIES_TYPE: &str = "http://uri.etsi.org/01903#SignedProperties";
const SIGNATURE_ID: &str = "proof-signature";
const REFERENCE_ID: &str = "proof-reference";
const PROPERTIES_ID: &str = "proof-signed-properties";

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("our own proof document does not parse (a bug): {0}")]
    Xml(#[from] XmlError),
    #[error("computing a digest of our own proof (a bug): {0}")]
    Reference(DsigError),
    #[error("signing the proof: {0}")]
    Sign(#[from] crate::signing::IdentityError),
    #[error("the signed proof fails our own verification (a key/certificate problem): {0}")]
    SelfCheck(DsigError),
}

/// Escapes for element content and double-quoted attributes (the XDS writer's escaping);
/// control characters, which attribute normalisation would rewrite, become spaces first.
fn esc(s: &str) -> String {
    let plain: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::xds::escape(&plain)
}

/// Where the list came from and who verified it.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The URL it was fetched from, or the file verified.
    pub source: &'a str,
    /// Why this verification ran (`schedule`, `operator`, …).
    pub trigger: &'a str,
    /// `drimbox <version>`.
    pub verifier: &'a str,
}

/// The unsigned report (no XML declaration; the signature goes before the root's end tag).
pub fn report(v: &Verification, cx: Context) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "<VerificationReport xmlns=\"{REPORT_NS}\" Version=\"1\">\n\
         <VerifiedAt>{}</VerifiedAt>\n<Verifier>{}</Verifier>\n<Trigger>{}</Trigger>\n",
        esc(&v.verified_at),
        esc(cx.verifier),
        esc(cx.trigger)
    ));
    s.push_str(&format!(
        "<List source=\"{}\" size=\"{}\">\n<Digest Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\">{}</Digest>\n",
        esc(cx.source),
        v.size,
        esc(&v.sha256)
    ));
    if let Some(g) = &v.generated {
        s.push_str(&format!(
            "<DateDeGeneration>{}</DateDeGeneration>\n",
            esc(g)
        ));
    }
    if let Some(d) = v.domains {
        s.push_str(&format!("<Domains>{d}</Domains>\n"));
    }
    s.push_str("</List>\n");
    s.push_str(&format!(
        "<Verdict valid=\"{}\" revocationChecked=\"{}\">{}</Verdict>\n<Checks>\n",
        v.valid,
        v.revocation_checked,
        esc(&v
            .first_failure()
            .unwrap_or_else(|| "every check passed".into()))
    ));
    for c in &v.checks {
        let result = match c.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::NotChecked => "not-checked",
        };
        s.push_str(&format!(
            "<Check name=\"{}\" result=\"{result}\">{}</Check>\n",
            esc(c.name),
            esc(&c.reason)
        ));
    }
    s.push_str("</Checks>\n<Certificates>\n");
    if let Some(signer) = &v.signer {
        s.push_str(&format!("<Signer>{}</Signer>\n", esc(signer)));
    }
    for c in &v.chain {
        s.push_str(&format!(
            "<Certificate subject=\"{}\" sha256=\"{}\" notBefore=\"{}\" notAfter=\"{}\"/>\n",
            esc(&c.subject),
            esc(&c.sha256),
            esc(&c.not_before),
            esc(&c.not_after)
        ));
    }
    s.push_str("</Certificates>\n<Crls>\n");
    for c in &v.crls {
        s.push_str(&format!(
            "<Crl issuer=\"{}\" sha256=\"{}\" thisUpdate=\"{}\" nextUpdate=\"{}\"/>\n",
            esc(&c.issuer),
            esc(&c.sha256),
            esc(&c.this_update),
            esc(c.next_update.as_deref().unwrap_or(""))
        ));
    }
    s.push_str("</Crls>\n</VerificationReport>\n");
    s
}

fn reference_transforms() -> [Transform; 2] {
    [
        Transform::EnvelopedSignature,
        Transform::Canonicalize {
            method: C14nMethod::Exclusive,
            inclusive_prefixes: Vec::new(),
        },
    ]
}

fn properties_transforms() -> [Transform; 1] {
    [Transform::Canonicalize {
        method: C14nMethod::Exclusive,
        inclusive_prefixes: Vec::new(),
    }]
}

/// The Signature element with the given digests, up to and after the SignatureValue's text.
fn signature(
    certificate: &Certificate,
    signing_time: &str,
    list_digest: &str,
    properties_digest: &str,
) -> (String, String) {
    let sm = SignatureAlgorithm::RsaSha256.signature_method().uri();
    let dm = DigestMethod::Sha256.uri();
    let cert_digest = crate::base64::encode(&DigestMethod::Sha512.digest(certificate.der()));
    let head = format!(
        "<ds:Signature xmlns:ds=\"{DSIG_NS}\" Id=\"{SIGNATURE_ID}\"><ds:SignedInfo>\
         <ds:CanonicalizationMethod Algorithm=\"{EXC_C14N}\"/><ds:SignatureMethod Algorithm=\"{sm}\"/>\
         <ds:Reference Id=\"{REFERENCE_ID}\" URI=\"\"><ds:Transforms>\
         <ds:Transform Algorithm=\"{}\"/><ds:Transform Algorithm=\"{EXC_C14N}\"/></ds:Transforms>\
         <ds:DigestMethod Algorithm=\"{dm}\"/><ds:DigestValue>{list_digest}</ds:DigestValue></ds:Reference>\
         <ds:Reference Type=\"{SIGNED_PROPERTIES_TYPE}\" URI=\"#{PROPERTIES_ID}\"><ds:Transforms>\
         <ds:Transform Algorithm=\"{EXC_C14N}\"/></ds:Transforms><ds:DigestMethod Algorithm=\"{dm}\"/>\
         <ds:DigestValue>{properties_digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>\
         <ds:SignatureValue>",
        dsig::ENVELOPED_SIGNATURE
    );
    let tail = format!(
        "</ds:SignatureValue><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate>\
         </ds:X509Data></ds:KeyInfo><ds:Object><xades:QualifyingProperties xmlns:xades=\"{XADES_NS}\" \
         Target=\"#{SIGNATURE_ID}\"><xades:SignedProperties Id=\"{PROPERTIES_ID}\">\
         <xades:SignedSignatureProperties><xades:SigningTime>{}</xades:SigningTime>\
         <xades:SigningCertificateV2><xades:Cert><xades:CertDigest>\
         <ds:DigestMethod Algorithm=\"{}\"/><ds:DigestValue>{cert_digest}</ds:DigestValue>\
         </xades:CertDigest></xades:Cert></xades:SigningCertificateV2></xades:SignedSignatureProperties>\
         <xades:SignedDataObjectProperties><xades:DataObjectFormat ObjectReference=\"#{REFERENCE_ID}\">\
         <xades:MimeType>text/xml</xades:MimeType></xades:DataObjectFormat>\
         </xades:SignedDataObjectProperties></xades:SignedProperties></xades:QualifyingProperties>\
         </ds:Object></ds:Signature>",
        crate::base64::encode(certificate.der()),
        esc(signing_time),
        DigestMethod::Sha512.uri()
    );
    (head, tail)
}

/// A proof without its SignatureValue.
#[derive(Debug, Clone)]
pub struct Unsigned {
    head: String,
    tail: String,
    signed_info: Vec<u8>,
}

impl Unsigned {
    /// The canonical SignedInfo (exclusive C14N): the bytes to sign with rsa-sha256.
    pub fn signed_info(&self) -> &[u8] {
        &self.signed_info
    }

    pub fn finish(&self, signature_value: &[u8]) -> String {
        format!(
            "{}{}{}",
            self.head,
            crate::base64::encode(signature_value),
            self.tail
        )
    }
}

const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
const ROOT_END: &str = "</VerificationReport>\n";

/// `report` with its Signature (digests computed, value empty) as the root's last child.
fn assemble(report: &str, signature: (&str, &str), value: &str) -> (String, String) {
    let body = report.strip_suffix(ROOT_END).unwrap_or(report);
    (
        format!("{DECLARATION}{body}{}{value}", signature.0),
        format!("{}{ROOT_END}", signature.1),
    )
}

/// Computes both digests and the canonical SignedInfo of `report` signed by `certificate`.
pub fn prepare(
    report: &str,
    certificate: &Certificate,
    signing_time: &str,
) -> Result<Unsigned, ProofError> {
    // 1. A draft without digests: the enveloped transform leaves the Signature out of the
    //    list digest, and the SignedProperties digest does not depend on the other one.
    let (h, t) = signature(certificate, signing_time, "", "");
    let (head, tail) = assemble(report, (&h, &t), "");
    let draft = Document::parse(format!("{head}{tail}").as_bytes())?;
    let node = dsig::find_signature(&draft).map_err(ProofError::Reference)?;
    let (data, _) = dsig::reference_data(&draft, node, "", &reference_transforms(), "Id")
        .map_err(ProofError::Reference)?;
    let list_digest = crate::base64::encode(&DigestMethod::Sha256.digest(&data));
    let (props, _) = dsig::reference_data(
        &draft,
        node,
        &format!("#{PROPERTIES_ID}"),
        &properties_transforms(),
        "Id",
    )
    .map_err(ProofError::Reference)?;
    let properties_digest = crate::base64::encode(&DigestMethod::Sha256.digest(&props));
    // 2. The final document without its value, and the SignedInfo to sign.
    let (h, t) = signature(certificate, signing_time, &list_digest, &properties_digest);
    let (head, tail) = assemble(report, (&h, &t), "");
    let doc = Document::parse(format!("{head}{tail}").as_bytes())?;
    let signed_info = dsig::signed_info_to_sign(&doc).map_err(ProofError::Reference)?;
    Ok(Unsigned {
        head,
        tail,
        signed_info,
    })
}

/// The report signed by `identity`, checked with our verifier before it is returned.
pub fn sign(
    report: &str,
    identity: &SigningIdentity,
    signing_time: &str,
) -> Result<String, ProofError> {
    let certificate = identity.certificate();
    let unsigned = prepare(report, certificate, signing_time)?;
    let value = identity.sign(SignatureAlgorithm::RsaSha256, unsigned.signed_info())?;
    let signed = unsigned.finish(&value);
    let doc = Document::parse(signed.as_bytes()).map_err(|e| ProofError::SelfCheck(e.into()))?;
    let node = dsig::find_signature(&doc).map_err(ProofError::SelfCheck)?;
    let options = VerifyOptions {
        id_attribute: "Id".into(),
        certificate: Some(certificate.der().to_vec()),
    };
    dsig::verify_signature(&doc, node, &options)
        .and_then(dsig::Report::into_result)
        .map_err(ProofError::SelfCheck)?;
    Ok(signed)
}

/// The report as it is kept when no editor identity is configured: the same document, with
/// no signature (the attempt records it as unsigned).
pub fn unsigned(report: &str) -> String {
    format!("{DECLARATION}{report}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whitelist::verify::{CertificateUsed, Check};

    fn verification() -> Verification {
        Verification {
            valid: false,
            revocation_checked: true,
            verified_at: "2026-12-02T10:00:00Z".into(),
            size: 1234,
            sha256: "ab".repeat(32),
            checks: vec![
                Check {
                    name: "well-formed",
                    outcome: Outcome::Pass,
                    reason: "parsed <ok> & \"quoted\"".into(),
                },
                Check {
                    name: "digests",
                    outcome: Outcome::Fail,
                    reason: "reference 1: digest mismatch\nsecond line".into(),
                },
            ],
            signer: Some("CN=Liste Blanche DRIM-M".into()),
            chain: vec![CertificateUsed {
                subject: "CN=x".into(),
                sha256: "cd".repeat(32),
                not_before: "2026-01-01T00:00:00Z".into(),
                not_after: "2028-01-01T00:00:00Z".into(),
            }],
            crls: Vec::new(),
            content: None,
            generated: Some("2026-12-01T00:00:00+01:00".into()),
            domains: Some(3),
        }
    }

    #[test]
    fn the_report_says_every_check_and_parses() {
        let cx = Context {
            source: "https://liste.example/lb.xml?a=1&b=2",
            trigger: "operator",
            verifier: "drimbox 0.9",
        };
        let r = unsigned(&report(&verification(), cx));
        let doc = Document::parse(r.as_bytes()).unwrap();
        let text = doc.text(doc.root());
        assert!(text.contains("digests: reference 1: digest mismatch second line"));
        assert!(r.contains("<Check name=\"well-formed\" result=\"pass\">parsed &lt;ok&gt; &amp; &quot;quoted&quot;</Check>"));
        assert!(r.contains("valid=\"false\""));
        assert!(r.contains("source=\"https://liste.example/lb.xml?a=1&amp;b=2\""));
        assert!(r.contains("<Domains>3</Domains>"));
    }
}
