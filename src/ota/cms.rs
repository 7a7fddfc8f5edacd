//! The bundle's signature: a CMS SignedData (RFC 5652) whose encapsulated content is the
//! manifest, signed with ECDSA P-256 / SHA-256 by a certificate with the codeSigning purpose
//! that chains to a CA pinned in the read-only root, intermediates carried in the signature so
//! that the vendor can rotate signing keys without an image change. RAUC's verity bundles are
//! signed the same way, and `openssl cms -verify` checks ours (tests/ota.rs).
//!
//! Pure: bytes, certificates, keys and a time in; bytes or a verdict out.

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use p256::ecdsa::signature::Signer;
use sha2::{Digest, Sha256};
use x509_cert::attr::Attribute;
use x509_cert::der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::spki::AlgorithmIdentifierOwned;

use crate::pki::{Certificate, ECDSA_WITH_SHA256};

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap(ECDSA_WITH_SHA256);
const ATTR_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ATTR_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ATTR_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
/// id-kp-codeSigning.
pub const CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";
/// Signer, intermediates, CA: no longer chain is accepted.
const MAX_CHAIN: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmsError {
    #[error("the signature is not DER CMS: {0}")]
    Der(String),
    #[error("the signature is not a SignedData")]
    NotSignedData,
    #[error("the signature must have exactly one signer, it has {0}")]
    Signers(usize),
    #[error("the signed content is not id-data with the manifest in it")]
    NoContent,
    #[error("algorithm {0} is not allowed (SHA-256 and ECDSA P-256 with SHA-256 only)")]
    Algorithm(String),
    #[error("signed attributes: {0}")]
    Attributes(String),
    #[error("the manifest's digest is not the signed one")]
    Digest,
    #[error("the signer's certificate is not in the signature")]
    NoSignerCertificate,
    #[error("the signature value does not verify with the signer's key")]
    Signature,
    #[error("the signer {0} lacks the codeSigning purpose")]
    NotCodeSigning(String),
    #[error("the signer {0} has a KeyUsage without digitalSignature")]
    KeyUsage(String),
    #[error("{0} is not valid at the verification time")]
    Expired(String),
    #[error("{0} does not chain to a pinned CA")]
    Untrusted(String),
    #[error("the signing key: {0}")]
    Key(String),
}

fn der_err(e: impl std::fmt::Display) -> CmsError {
    CmsError::Der(e.to_string())
}

fn algorithm(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    }
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, CmsError> {
    let mut values = SetOfVec::new();
    values.insert(value).map_err(der_err)?;
    Ok(Attribute { oid, values })
}

/// Signs `content` (the manifest): signer certificate, intermediates (DER), the signer's
/// PKCS#8 private key (DER), and the signing time (seconds since 1970, UTC).
pub fn sign(
    content: &[u8],
    signer: &Certificate,
    intermediates: &[Certificate],
    pkcs8_key: &[u8],
    signing_time: u64,
) -> Result<Vec<u8>, CmsError> {
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8_key)
        .map_err(|e| CmsError::Key(format!("not a PKCS#8 P-256 key: {e}")))?;
    let public = signer
        .p256_public_key()
        .map_err(|e| CmsError::Key(e.to_string()))?;
    if &public != key.verifying_key() {
        return Err(CmsError::Key(
            "the key is not the signer certificate's".into(),
        ));
    }
    let digest = Sha256::digest(content);
    let time = x509_cert::der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(
        signing_time,
    ))
    .map_err(der_err)?;
    let mut attrs = SetOfVec::new();
    for a in [
        attribute(
            ATTR_CONTENT_TYPE,
            Any::encode_from(&ID_DATA).map_err(der_err)?,
        )?,
        attribute(ATTR_SIGNING_TIME, Any::encode_from(&time).map_err(der_err)?)?,
        attribute(
            ATTR_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(digest.to_vec()).map_err(der_err)?)
                .map_err(der_err)?,
        )?,
    ] {
        attrs.insert(a).map_err(der_err)?;
    }
    // The signature covers the DER of the attributes as a SET OF (RFC 5652 §5.4).
    let signed = attrs.to_der().map_err(der_err)?;
    let signature: p256::ecdsa::Signature = key.sign(&signed);
    let tbs = &signer.x509().tbs_certificate;
    let info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        }),
        digest_alg: algorithm(ID_SHA256),
        signed_attrs: Some(attrs),
        signature_algorithm: algorithm(ID_ECDSA_SHA256),
        signature: OctetString::new(signature.to_der().as_bytes().to_vec()).map_err(der_err)?,
        unsigned_attrs: None,
    };
    let mut certificates = SetOfVec::new();
    for c in std::iter::once(signer).chain(intermediates) {
        certificates
            .insert(CertificateChoices::Certificate(c.x509().clone()))
            .map_err(der_err)?;
    }
    let mut digests = SetOfVec::new();
    digests.insert(algorithm(ID_SHA256)).map_err(der_err)?;
    let mut infos = SetOfVec::new();
    infos.insert(info).map_err(der_err)?;
    let data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: digests,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: Some(
                Any::encode_from(&OctetString::new(content.to_vec()).map_err(der_err)?)
                    .map_err(der_err)?,
            ),
        },
        certificates: Some(CertificateSet(certificates)),
        crls: None,
        signer_infos: SignerInfos(infos),
    };
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&data).map_err(der_err)?,
    }
    .to_der()
    .map_err(der_err)
}

/// What a verified signature vouches for.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed content: the manifest's bytes.
    pub content: Vec<u8>,
    /// Signer first, then each issuer up to and including the pinned CA.
    pub chain: Vec<Certificate>,
}

fn valid_at(c: &Certificate, at: i64) -> Result<(), CmsError> {
    if at < c.not_before_unix() || at > c.not_after_unix() {
        return Err(CmsError::Expired(c.subject()));
    }
    Ok(())
}

/// Verifies `der` against the pinned `anchors` at `at` (seconds since 1970): the one signer's
/// signature over its signed attributes, their content type and message digest, the signer's
/// codeSigning purpose, and a chain through the signature's own certificates to an anchor,
/// every certificate valid at `at`.
pub fn verify(der: &[u8], anchors: &[Certificate], at: i64) -> Result<Verified, CmsError> {
    let info = ContentInfo::from_der(der).map_err(der_err)?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(CmsError::NotSignedData);
    }
    let data: SignedData = info.content.decode_as().map_err(der_err)?;
    let signers = data.signer_infos.0.as_slice();
    if signers.len() != 1 {
        return Err(CmsError::Signers(signers.len()));
    }
    let signer_info = &signers[0];
    if data.encap_content_info.econtent_type != ID_DATA {
        return Err(CmsError::NoContent);
    }
    let content = data
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or(CmsError::NoContent)?
        .decode_as::<OctetString>()
        .map_err(der_err)?
        .as_bytes()
        .to_vec();
    if signer_info.digest_alg.oid != ID_SHA256 {
        return Err(CmsError::Algorithm(signer_info.digest_alg.oid.to_string()));
    }
    if signer_info.signature_algorithm.oid != ID_ECDSA_SHA256 {
        return Err(CmsError::Algorithm(
            signer_info.signature_algorithm.oid.to_string(),
        ));
    }
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or_else(|| CmsError::Attributes("none: the content would be signed bare".into()))?;
    let single = |oid: ObjectIdentifier, name: &str| -> Result<&Any, CmsError> {
        let found: Vec<&Attribute> = attrs.iter().filter(|a| a.oid == oid).collect();
        match found.as_slice() {
            [a] if a.values.len() == 1 => Ok(a.values.iter().next().expect("one value")),
            _ => Err(CmsError::Attributes(format!("{name} must be there once"))),
        }
    };
    let content_type: ObjectIdentifier = single(ATTR_CONTENT_TYPE, "contentType")?
        .decode_as()
        .map_err(der_err)?;
    if content_type != ID_DATA {
        return Err(CmsError::Attributes("contentType is not id-data".into()));
    }
    let digest: OctetString = single(ATTR_MESSAGE_DIGEST, "messageDigest")?
        .decode_as()
        .map_err(der_err)?;
    if digest.as_bytes() != Sha256::digest(&content).as_slice() {
        return Err(CmsError::Digest);
    }

    let carried: Vec<Certificate> = data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => c.to_der().ok(),
            CertificateChoices::Other(_) => None,
        })
        .filter_map(|d| Certificate::from_der(&d).ok())
        .collect();
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer_info.sid else {
        return Err(CmsError::NoSignerCertificate);
    };
    let signer = carried
        .iter()
        .find(|c| {
            let tbs = &c.x509().tbs_certificate;
            tbs.issuer == sid.issuer && tbs.serial_number == sid.serial_number
        })
        .ok_or(CmsError::NoSignerCertificate)?
        .clone();
    let signed = attrs.to_der().map_err(der_err)?;
    let key = signer
        .p256_public_key()
        .map_err(|_| CmsError::Algorithm("the signer's key is not P-256".into()))?;
    crate::pki::verify_p256(&signed, signer_info.signature.as_bytes(), &key)
        .map_err(|_| CmsError::Signature)?;
    if !signer
        .extended_key_usages()
        .iter()
        .any(|p| p == CODE_SIGNING)
    {
        return Err(CmsError::NotCodeSigning(signer.subject()));
    }
    if signer
        .key_usage()
        .is_some_and(|(digital_signature, _, _)| !digital_signature)
    {
        return Err(CmsError::KeyUsage(signer.subject()));
    }

    let mut chain = vec![signer];
    loop {
        let current = chain.last().expect("the signer at least");
        valid_at(current, at)?;
        if let Some(anchor) = anchors
            .iter()
            .find(|a| current.issued_by_name(a) && current.verify_signed_by(a).is_ok())
        {
            valid_at(anchor, at)?;
            chain.push(anchor.clone());
            return Ok(Verified { content, chain });
        }
        if chain.len() >= MAX_CHAIN {
            return Err(CmsError::Untrusted(chain[0].subject()));
        }
        let Some(issuer) = carried.iter().find(|c| {
            c.is_ca()
                && !chain.contains(c)
                && current.issued_by_name(c)
                && current.verify_signed_by(c).is_ok()
        }) else {
            return Err(CmsError::Untrusted(chain[0].subject()));
        };
        chain.push(issuer.clone());
    }
}
