//! The IHE DSG lot signature document, in exactly the shape the reference implementation
//! sends and the DMP accepted (DRIM-M §2.6): a detached XMLDSig `Signature` root with two
//! signed references, `#IHEManifest` (the Manifest of the submission set and its KOS) and
//! `#S0-SignedProperties` (XAdES 1.1.1 signed properties), RSA over the canonical (inclusive,
//! with comments) SignedInfo.
//!
//! Built in two steps so the unsigned part is testable without the reference's private key:
//! [`prepare_lot_signature`] writes the document and gives the canonical SignedInfo to sign;
//! [`UnsignedLotSignature::finish`] inserts the SignatureValue. With the reference inputs and
//! certificate, `finish` with the reference SignatureValue rebuilds the DMP's 6102 bytes.
//!
//! The digests are computed by parsing our own document and running the verifier's own
//! reference dereferencing on it, so what we digest is what a verifier digests. Before
//! returning, [`build_lot_signature`] verifies the finished bytes with our verifier.
//!
//! Kept from the reference on purpose (byte-identity with what the DMP accepted, §2.6):
//! * the Manifest's SubmissionSet reference carries the placeholder DigestValue `AA==` (one
//!   zero byte). A submission set is registry metadata, not a byte stream: there is nothing we
//!   could digest that the DMP would recompute the same way. A verifier must not check it.
//! * the `xsi:schemaLocation` values (pointing at the SAML schema) and `CertDigest/DigestMethod`
//!   in the XAdES namespace, both as the reference writes them;
//! * empty elements written `<X />`.

use super::identity::{IdentityError, SigningIdentity};
use super::SignatureAlgorithm;
use crate::pki::Certificate;
use crate::xml::dsig::{self, DsigError, VerifyOptions};
use crate::xml::{Document, XmlError};

/// IHE DSG purposeOfSignature for the Source's signature (eventCodeList of the entry).
pub const PURPOSE_OF_SIGNATURE: &str = "1.2.840.10065.1.12.1.14";
pub const XADES_111_NS: &str = "http://uri.etsi.org/01903/v1.1.1#";
const MANIFEST_ID: &str = "IHEManifest";
const SIGNED_PROPERTIES_ID: &str = "S0-SignedProperties";
/// The placeholder digest of the SubmissionSet reference (see the module documentation).
pub const SUBMISSION_SET_PLACEHOLDER_DIGEST: &str = "AA==";

#[derive(Debug, thiserror::Error)]
pub enum LotSignatureError {
    #[error("the {field} `{value}` is not an OID (digits and dots, at most 64 characters)")]
    NotAnOid { field: &'static str, value: String },
    #[error("the signing time `{0}` is not an xsd:dateTime with a time zone (YYYY-MM-DDThh:mm:ss[.s+](Z|±hh:mm))")]
    SigningTime(String),
    #[error("the KOS digest is {got} bytes; {algorithm} needs {expected}")]
    DigestLength {
        algorithm: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("our own lot signature document does not parse (a bug): {0}")]
    Xml(#[from] XmlError),
    #[error("computing a reference digest of our own document (a bug): {0}")]
    Reference(DsigError),
    #[error(transparent)]
    Sign(#[from] IdentityError),
    #[error(
        "the signed document fails our own verification (a bug, or a key/certificate problem): {0}"
    )]
    SelfCheck(DsigError),
}

/// The KOS as the Manifest needs it: its bytes, or their digest with the algorithm's digest
/// method (when the caller already has it).
#[derive(Debug, Clone, Copy)]
pub enum KosContent<'a> {
    Bytes(&'a [u8]),
    Digest(&'a [u8]),
}

/// What varies between lot signatures.
#[derive(Debug, Clone, Copy)]
pub struct LotSignatureInput<'a> {
    /// The signature's `Id`, also the Signature DocumentEntry uniqueId (`2.25.…`).
    pub signature_id: &'a str,
    pub submission_set_unique_id: &'a str,
    pub kos_unique_id: &'a str,
    pub kos: KosContent<'a>,
    /// XAdES SigningTime, an xsd:dateTime with its offset, e.g. `2023-11-14T14:44:58.150+01:00`.
    pub signing_time: &'a str,
    pub algorithm: SignatureAlgorithm,
}

/// A lot signature document without its SignatureValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedLotSignature {
    /// The document up to `<SignatureValue>` included.
    head: String,
    /// The document from `</SignatureValue>` on.
    tail: String,
    signed_info: Vec<u8>,
    algorithm: SignatureAlgorithm,
}

impl UnsignedLotSignature {
    /// The canonical SignedInfo: the bytes the SignatureValue signs.
    pub fn signed_info(&self) -> &[u8] {
        &self.signed_info
    }

    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The document with `signature_value` (raw RSA signature bytes) in place.
    pub fn finish(&self, signature_value: &[u8]) -> Vec<u8> {
        let mut out = String::with_capacity(self.head.len() + self.tail.len() + 512);
        out.push_str(&self.head);
        out.push_str(&crate::base64::encode(signature_value));
        out.push_str(&self.tail);
        out.into_bytes()
    }
}

fn check_oid(field: &'static str, value: &str) -> Result<(), LotSignatureError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(LotSignatureError::NotAnOid {
            field,
            value: value.to_string(),
        })
    }
}

/// `YYYY-MM-DDThh:mm:ss[.fraction](Z|+hh:mm|-hh:mm)`: XAdES wants the offset, and a verifier
/// compares SigningTime with the certificate's validity.
fn check_signing_time(t: &str) -> Result<(), LotSignatureError> {
    let bad = || LotSignatureError::SigningTime(t.to_string());
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return Err(bad());
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = &frac[n..];
    }
    let zone_ok = rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[1..3].iter().all(u8::is_ascii_digit)
            && rest.as_bytes()[3] == b':'
            && rest.as_bytes()[4..6].iter().all(u8::is_ascii_digit));
    if zone_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Escapes text content.
fn text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Parts<'a> {
    id: &'a str,
    signature_method: &'static str,
    digest_method: &'static str,
    manifest_digest: &'a str,
    properties_digest: &'a str,
    certificate_b64: &'a str,
    submission_set: &'a str,
    kos_unique_id: &'a str,
    kos_digest: &'a str,
    signing_time: &'a str,
    cert_digest: &'a str,
    issuer: &'a str,
    serial: &'a str,
}

/// The document around its SignatureValue, as (head, tail). Ids and uniqueIds were checked to
/// be OIDs, so they need no escaping in attributes.
fn write(p: &Parts) -> (String, String) {
    let dm = p.digest_method;
    let head = format!(
        "<?xml version=\"1.0\"?>\n\
         <Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\" Id=\"{id}\">\
         <SignedInfo>\
         <CanonicalizationMethod Algorithm=\"http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments\" />\
         <SignatureMethod Algorithm=\"{sm}\" />\
         <Reference Type=\"http://www.w3.org/2000/09/xmldsig#Manifest\" URI=\"#{MANIFEST_ID}\">\
         <DigestMethod Algorithm=\"{dm}\" /><DigestValue>{md}</DigestValue></Reference>\
         <Reference Type=\"http://uri.etsi.org/01903/v1.1.1#SignedProperties\" URI=\"#{SIGNED_PROPERTIES_ID}\">\
         <DigestMethod Algorithm=\"{dm}\" /><DigestValue>{pd}</DigestValue></Reference>\
         </SignedInfo>\
         <SignatureValue>",
        id = p.id,
        sm = p.signature_method,
        md = p.manifest_digest,
        pd = p.properties_digest,
    );
    let tail = format!(
        "</SignatureValue>\
         <KeyInfo><X509Data><X509Certificate>{cert}</X509Certificate></X509Data></KeyInfo>\
         <Object><SignatureProperties>\
         <SignatureProperty Id=\"purposeOfSignature\" Target=\"#{id}\">{PURPOSE_OF_SIGNATURE}</SignatureProperty>\
         </SignatureProperties></Object>\
         <Object><Manifest xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" Id=\"{MANIFEST_ID}\" \
         xsi:schemaLocation=\"http://www.w3.org/2000/09/xmldsig# http://docs.oasis-open.org/security/saml/v2.0/saml-schema-assertion-2.0.xsd\">\
         <Reference URI=\"urn:oid:{ss}\"><DigestMethod Algorithm=\"{dm}\" /><DigestValue>{SUBMISSION_SET_PLACEHOLDER_DIGEST}</DigestValue></Reference>\
         <Reference URI=\"urn:oid:{kos}\"><DigestMethod Algorithm=\"{dm}\" /><DigestValue>{kd}</DigestValue></Reference>\
         </Manifest></Object>\
         <Object><QualifyingProperties xmlns=\"{XADES_111_NS}\" Target=\"#{id}\">\
         <SignedProperties xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" Id=\"{SIGNED_PROPERTIES_ID}\" \
         xsi:schemaLocation=\"http://uri.etsi.org/01903/v1.1.1# http://docs.oasis-open.org/security/saml/v2.0/saml-schema-assertion-2.0.xsd\">\
         <SignedSignatureProperties><SigningTime>{time}</SigningTime>\
         <SigningCertificate><Cert><CertDigest><DigestMethod Algorithm=\"{dm}\" /><DigestValue>{cd}</DigestValue></CertDigest>\
         <IssuerSerial><X509IssuerName xmlns=\"http://www.w3.org/2000/09/xmldsig#\">{issuer}</X509IssuerName>\
         <X509SerialNumber xmlns=\"http://www.w3.org/2000/09/xmldsig#\">{serial}</X509SerialNumber></IssuerSerial>\
         </Cert></SigningCertificate>\
         <SignaturePolicyIdentifier><SignaturePolicyImplied /></SignaturePolicyIdentifier>\
         </SignedSignatureProperties><SignedDataObjectProperties /></SignedProperties></QualifyingProperties></Object>\
         </Signature>\n",
        id = p.id,
        cert = p.certificate_b64,
        ss = p.submission_set,
        kos = p.kos_unique_id,
        kd = p.kos_digest,
        time = text(p.signing_time),
        cd = p.cert_digest,
        issuer = text(p.issuer),
        serial = p.serial,
    );
    (head, tail)
}

/// Writes the lot signature document for `input` and `certificate` (the signer's), without
/// its SignatureValue.
pub fn prepare_lot_signature(
    input: &LotSignatureInput,
    certificate: &Certificate,
) -> Result<UnsignedLotSignature, LotSignatureError> {
    check_oid("signature Id", input.signature_id)?;
    check_oid("submission set uniqueId", input.submission_set_unique_id)?;
    check_oid("KOS uniqueId", input.kos_unique_id)?;
    check_signing_time(input.signing_time)?;
    let dm = input.algorithm.digest_method();
    let kos_digest = match input.kos {
        KosContent::Bytes(b) => dm.digest(b),
        KosContent::Digest(d) => {
            let expected = dm.digest(b"").len();
            if d.len() != expected {
                return Err(LotSignatureError::DigestLength {
                    algorithm: input.algorithm.name(),
                    got: d.len(),
                    expected,
                });
            }
            d.to_vec()
        }
    };
    let certificate_b64 = crate::base64::encode(certificate.der());
    let kos_digest = crate::base64::encode(&kos_digest);
    let cert_digest = crate::base64::encode(&dm.digest(certificate.der()));
    let issuer = certificate.issuer();
    let serial = certificate.serial_decimal();
    let mut parts = Parts {
        id: input.signature_id,
        signature_method: input.algorithm.signature_method().uri(),
        digest_method: dm.uri(),
        manifest_digest: "",
        properties_digest: "",
        certificate_b64: &certificate_b64,
        submission_set: input.submission_set_unique_id,
        kos_unique_id: input.kos_unique_id,
        kos_digest: &kos_digest,
        signing_time: input.signing_time,
        cert_digest: &cert_digest,
        issuer: &issuer,
        serial: &serial,
    };

    // 1. The two signed objects do not depend on SignedInfo: digest them in a draft.
    let (head, tail) = write(&parts);
    let draft = Document::parse(format!("{head}{tail}").as_bytes())?;
    let digest = |uri: &str| -> Result<String, LotSignatureError> {
        let (data, _) = dsig::reference_data(&draft, draft.root(), uri, &[], "Id")
            .map_err(LotSignatureError::Reference)?;
        Ok(crate::base64::encode(&dm.digest(&data)))
    };
    let manifest_digest = digest(&format!("#{MANIFEST_ID}"))?;
    let properties_digest = digest(&format!("#{SIGNED_PROPERTIES_ID}"))?;
    parts.manifest_digest = &manifest_digest;
    parts.properties_digest = &properties_digest;

    // 2. The final document without its value, and the canonical SignedInfo to sign.
    let (head, tail) = write(&parts);
    let doc = Document::parse(format!("{head}{tail}").as_bytes())?;
    let signature =
        dsig::parse_signature(&doc, doc.root()).map_err(LotSignatureError::Reference)?;
    let signed_info = dsig::canonical_signed_info(&doc, &signature.signed_info);
    Ok(UnsignedLotSignature {
        head,
        tail,
        signed_info,
        algorithm: input.algorithm,
    })
}

/// The signed lot signature document: the exact bytes to hash, archive and send.
pub fn build_lot_signature(
    input: &LotSignatureInput,
    identity: &SigningIdentity,
) -> Result<Vec<u8>, LotSignatureError> {
    let unsigned = prepare_lot_signature(input, identity.certificate())?;
    let value = identity.sign(input.algorithm, unsigned.signed_info())?;
    let document = unsigned.finish(&value);
    // Never hand out a signature our own verifier rejects.
    dsig::verify(
        &document,
        &VerifyOptions {
            certificate: Some(identity.certificate().der().to_vec()),
            ..VerifyOptions::default()
        },
    )
    .and_then(dsig::Report::into_result)
    .map_err(LotSignatureError::SelfCheck)?;
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reference;
    use sha1::{Digest, Sha1};

    const ID: &str = "2.25.253872960909518376796861585574417771331";
    const SUBMISSION_SET: &str = "1.2.250.1.999.1.1.8121.5.7122";
    const KOS: &str = "1.3.2.751468943.3.1234.56838.231114144457.1.1.1";
    const TIME: &str = "2023-11-14T14:44:58.150+01:00";

    fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
        let i = s.find(a).unwrap() + a.len();
        &s[i..i + s[i..].find(b).unwrap()]
    }

    /// The certificate and SignatureValue of the reference document.
    fn reference_parts() -> (Vec<u8>, Certificate, Vec<u8>) {
        let doc = reference::lot_signature();
        let text = String::from_utf8(doc.clone()).unwrap();
        let cert = crate::base64::decode(
            between(&text, "<X509Certificate>", "</X509Certificate>").as_bytes(),
        )
        .unwrap();
        let value = crate::base64::decode(
            between(&text, "<SignatureValue>", "</SignatureValue>").as_bytes(),
        )
        .unwrap();
        (doc, Certificate::from_der(&cert).unwrap(), value)
    }

    fn reference_input(kos: &[u8]) -> LotSignatureInput<'_> {
        LotSignatureInput {
            signature_id: ID,
            submission_set_unique_id: SUBMISSION_SET,
            kos_unique_id: KOS,
            kos: KosContent::Bytes(kos),
            signing_time: TIME,
            algorithm: SignatureAlgorithm::RsaSha1,
        }
    }

    #[test]
    fn the_reference_certificate_prints_as_the_reference_does() {
        let (_, cert, _) = reference_parts();
        assert_eq!(
            cert.issuer(),
            "CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS, OU=IGC-SANTE TEST, OU=0002 187512751, O=ASIP-SANTE, C=FR"
        );
        assert_eq!(
            cert.serial_decimal(),
            "39035086776736267464403993099359360784"
        );
        assert_eq!(
            cert.subject(),
            "CN=DRIMbox, OU=499700367909006, O=CABINET M DOC0036790, ST=Paris (75), C=FR"
        );
        assert_eq!(
            crate::base64::encode(&Sha1::digest(cert.der())),
            "AAkJDH6Kbq3gHuJRAPmc1dl9dPo="
        );
    }

    #[test]
    fn rebuilds_the_reference_document_byte_for_byte() {
        let (reference_doc, cert, value) = reference_parts();
        let kos = reference::read("ref/ans/KOS/ko.dcm");
        assert_eq!(
            crate::base64::encode(&Sha1::digest(&kos)),
            "WECMEWtRSXwPIITJDaPIXHCYRVo="
        );
        let unsigned = prepare_lot_signature(&reference_input(&kos), &cert).unwrap();
        let ours = unsigned.finish(&value);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&reference_doc)
        );
        assert_eq!(ours.len(), 6102);
        assert_eq!(
            format!("{:x}", Sha1::digest(&ours)),
            "bc9498379c2ef8da40b372fe38f2f14a3e058cf8"
        );
        // The reference's RSA-SHA1 value signs our canonical SignedInfo.
        assert!(crate::xml::dsig::SignatureMethod::RsaSha1.verify(
            &cert.rsa_public_key().unwrap(),
            unsigned.signed_info(),
            &value
        ));
        // Same with the KOS given as its digest.
        let digest = Sha1::digest(&kos);
        let input = LotSignatureInput {
            kos: KosContent::Digest(&digest),
            ..reference_input(&kos)
        };
        assert_eq!(prepare_lot_signature(&input, &cert).unwrap(), unsigned);
    }

    #[test]
    fn inputs_are_checked() {
        let (_, cert, _) = reference_parts();
        let kos = b"kos";
        let bad_id = LotSignatureInput {
            signature_id: "2.25.1\"><x",
            ..reference_input(kos)
        };
        assert!(matches!(
            prepare_lot_signature(&bad_id, &cert),
            Err(LotSignatureError::NotAnOid { .. })
        ));
        for t in [
            "2023-11-14T14:44:58",
            "2023-11-14 14:44:58Z",
            "2023-11-14T14:44:58.+01:00",
        ] {
            let bad_time = LotSignatureInput {
                signing_time: t,
                ..reference_input(kos)
            };
            assert!(
                matches!(
                    prepare_lot_signature(&bad_time, &cert),
                    Err(LotSignatureError::SigningTime(_))
                ),
                "{t}"
            );
        }
        let short = [0u8; 20];
        let bad_digest = LotSignatureInput {
            kos: KosContent::Digest(&short),
            algorithm: SignatureAlgorithm::RsaSha256,
            ..reference_input(kos)
        };
        assert!(matches!(
            prepare_lot_signature(&bad_digest, &cert),
            Err(LotSignatureError::DigestLength {
                got: 20,
                expected: 32,
                ..
            })
        ));
        assert!(check_signing_time("2026-12-02T04:53:00Z").is_ok());
    }
}
