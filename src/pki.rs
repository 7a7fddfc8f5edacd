//! X.509 certificates as the signatures need them: the DER bytes (digested into XAdES
//! `CertDigest`, embedded in `KeyInfo`), the issuer name and serial number as the reference
//! implementation prints them in `IssuerSerial`, and the RSA public key that verifies a
//! `SignatureValue`; and the pieces of path validation the whitelist verifier assembles
//! (DRIM-M §5.3): validity dates, names, key usage, basic constraints, CRL distribution points,
//! an issuer's signature over a certificate or a CRL, and CRL contents. The policy (which
//! chain, which time, what is fresh) is the caller's.

use rsa::pkcs8::DecodePublicKey;
use rsa::RsaPublicKey;
use x509_cert::der::{Decode, Encode, Tag, Tagged};

/// Every certificate of a PEM text, in order; the reason for the first one that is not
/// usable (bad PEM, bad DER). An empty list is the caller's to judge.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Certificate>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|der| {
            let der = der.map_err(|e| e.to_string())?;
            Certificate::from_der(&der).map_err(|e| e.to_string())
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("the certificate is not valid DER X.509: {0}")]
    Der(String),
    #[error("the certificate's key is not an RSA key: {0}")]
    NotRsa(String),
    #[error("unsupported signature algorithm {0} (RSA with SHA-256, -384 or -512 only)")]
    UnsupportedAlgorithm(String),
    #[error("the signature does not verify with the issuer's key")]
    BadSignature,
    #[error("the certificate's key is not an ECDSA P-256 key: {0}")]
    NotP256(String),
}

/// One parsed X.509 certificate, with the exact DER bytes it was read from.
#[derive(Debug, Clone)]
pub struct Certificate {
    der: Vec<u8>,
    cert: x509_cert::Certificate,
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

/// Short names of the attribute types, as Java's `X500Principal.toString()` prints them (the
/// reference implementation's `X509IssuerName` text); other types print as dotted OIDs.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "T"),
    ("2.5.4.5", "SERIALNUMBER"),
    ("2.5.4.4", "SURNAME"),
    ("2.5.4.42", "GIVENNAME"),
    ("2.5.4.43", "INITIALS"),
    ("2.5.4.44", "GENERATION"),
    ("2.5.4.46", "DNQUALIFIER"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
];

/// The text of a DirectoryString-like value, or `None` for a type we do not decode.
fn attribute_text(value: &x509_cert::der::Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            String::from_utf8(bytes.to_vec()).ok()
        }
        // T.61 in theory; Latin-1 in every certificate that uses it.
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape_dn_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A distinguished name, most specific RDN first, RDNs separated by ", " and multi-valued RDNs
/// by " + ", as Java's `X500Principal.toString()` prints it (the reference implementation's
/// `X509IssuerName`: `CN=…, OU=…, O=…, C=FR`). Values are escaped as RFC 4514 says; a value
/// of a string type we do not decode is written `#` + hex of its DER, as RFC 4514 says.
pub fn format_name(name: &x509_cert::name::Name) -> String {
    let mut rdns = Vec::new();
    for rdn in name.0.iter().rev() {
        let mut parts = Vec::new();
        for atv in rdn.0.iter() {
            let oid = atv.oid.to_string();
            let key = SHORT_NAMES
                .iter()
                .find(|(o, _)| *o == oid)
                .map(|(_, n)| n.to_string())
                .unwrap_or(oid);
            let value = match attribute_text(&atv.value) {
                Some(t) => escape_dn_value(&t),
                None => format!("#{}", hex(&atv.value.to_der().unwrap_or_default())),
            };
            parts.push(format!("{key}={value}"));
        }
        rdns.push(parts.join(" + "));
    }
    rdns.join(", ")
}

/// The decimal digits of a non-negative big-endian integer.
pub fn decimal(be: &[u8]) -> String {
    let mut n: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    if n.is_empty() {
        return "0".into();
    }
    let mut digits = Vec::new();
    while !n.is_empty() {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = rem << 8 | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
        while n.first() == Some(&0) {
            n.remove(0);
        }
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

impl Certificate {
    pub fn from_der(der: &[u8]) -> Result<Certificate, CertificateError> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| CertificateError::Der(e.to_string()))?;
        Ok(Certificate {
            der: der.to_vec(),
            cert,
        })
    }

    /// The DER bytes, exactly as read.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn issuer(&self) -> String {
        format_name(&self.cert.tbs_certificate.issuer)
    }

    pub fn subject(&self) -> String {
        format_name(&self.cert.tbs_certificate.subject)
    }

    /// The serial number in decimal (XMLDSig `X509SerialNumber` is an integer). RFC 5280
    /// serials are positive; the bytes of a non-conformant negative one would be read as
    /// unsigned (no conformant CA issues one).
    pub fn serial_decimal(&self) -> String {
        decimal(self.cert.tbs_certificate.serial_number.as_bytes())
    }

    pub fn serial_bytes(&self) -> &[u8] {
        self.cert.tbs_certificate.serial_number.as_bytes()
    }

    /// The SubjectPublicKeyInfo's DER, which the key types decode.
    fn spki_der(&self) -> Result<Vec<u8>, CertificateError> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| CertificateError::Der(e.to_string()))
    }

    pub fn rsa_public_key(&self) -> Result<RsaPublicKey, CertificateError> {
        let spki = self.spki_der()?;
        RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| CertificateError::NotRsa(e.to_string()))
    }

    /// End of validity (notAfter), seconds since the epoch.
    pub fn not_after_unix(&self) -> i64 {
        self.cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64
    }

    /// The parsed structure, for callers that check more (validity, extensions).
    pub fn x509(&self) -> &x509_cert::Certificate {
        &self.cert
    }

    /// Start of validity (notBefore), seconds since the epoch.
    pub fn not_before_unix(&self) -> i64 {
        self.cert
            .tbs_certificate
            .validity
            .not_before
            .to_unix_duration()
            .as_secs() as i64
    }

    /// The values of one attribute type of the subject (`2.5.4.3` CN, `2.5.4.11` OU), in order.
    pub fn subject_values(&self, oid: &str) -> Vec<String> {
        name_values(&self.cert.tbs_certificate.subject, oid)
    }

    /// Whether this certificate's issuer is `issuer`'s subject (DER equality of the names).
    pub fn issued_by_name(&self, issuer: &Certificate) -> bool {
        let a = self.cert.tbs_certificate.issuer.to_der();
        let b = issuer.cert.tbs_certificate.subject.to_der();
        matches!((a, b), (Ok(a), Ok(b)) if a == b)
    }

    /// Verifies this certificate's signature with `issuer`'s key (RSA PKCS#1 v1.5 with SHA-256,
    /// -384 or -512, or ECDSA P-256 with SHA-256; SHA-1 and MD5 are refused).
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<(), CertificateError> {
        let tbs = self
            .cert
            .tbs_certificate
            .to_der()
            .map_err(|e| CertificateError::Der(e.to_string()))?;
        let algorithm = self.cert.signature_algorithm.oid.to_string();
        let signature = self.cert.signature.raw_bytes();
        if algorithm == ECDSA_WITH_SHA256 {
            return verify_p256(&tbs, signature, &issuer.p256_public_key()?);
        }
        verify_rsa(&algorithm, &tbs, signature, &issuer.rsa_public_key()?)
    }

    /// The certificate's ECDSA P-256 public key (the OTA signer's and its CAs').
    pub fn p256_public_key(&self) -> Result<p256::ecdsa::VerifyingKey, CertificateError> {
        use p256::pkcs8::DecodePublicKey as _;
        let spki = self.spki_der()?;
        p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
            .map_err(|e| CertificateError::NotP256(e.to_string()))
    }

    /// The ExtendedKeyUsage purposes, as dotted OIDs (empty without the extension).
    pub fn extended_key_usages(&self) -> Vec<String> {
        use x509_cert::ext::pkix::ExtendedKeyUsage;
        self.extension("2.5.29.37")
            .and_then(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok())
            .map(|eku| eku.0.iter().map(|o| o.to_string()).collect())
            .unwrap_or_default()
    }

    fn extension(&self, oid: &str) -> Option<&x509_cert::ext::Extension> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
    }

    /// (digitalSignature, nonRepudiation, keyCertSign) of the KeyUsage extension; `None` when
    /// the certificate has none (or it cannot be read).
    pub fn key_usage(&self) -> Option<(bool, bool, bool)> {
        use x509_cert::ext::pkix::{KeyUsage, KeyUsages};
        let ext = self.extension("2.5.29.15")?;
        let ku = KeyUsage::from_der(ext.extn_value.as_bytes()).ok()?;
        Some((
            ku.0.contains(KeyUsages::DigitalSignature),
            ku.0.contains(KeyUsages::NonRepudiation),
            ku.0.contains(KeyUsages::KeyCertSign),
        ))
    }

    /// Whether BasicConstraints says this is a CA.
    pub fn is_ca(&self) -> bool {
        use x509_cert::ext::pkix::BasicConstraints;
        self.extension("2.5.29.19")
            .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
            .is_some_and(|b| b.ca)
    }

    /// The CRL distribution point URIs (`http://…`), in order.
    pub fn crl_urls(&self) -> Vec<String> {
        use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
        use x509_cert::ext::pkix::CrlDistributionPoints;
        let Some(points) = self
            .extension("2.5.29.31")
            .and_then(|e| CrlDistributionPoints::from_der(e.extn_value.as_bytes()).ok())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in points.0 {
            if let Some(DistributionPointName::FullName(names)) = p.distribution_point {
                for n in names {
                    if let GeneralName::UniformResourceIdentifier(u) = n {
                        out.push(u.to_string());
                    }
                }
            }
        }
        out
    }

    /// The SHA-256 of the DER, in hex (how reports name a certificate).
    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        hex(&Sha256::digest(&self.der))
    }
}

/// The values of one attribute type in a name, most significant RDN first.
fn name_values(name: &x509_cert::name::Name, oid: &str) -> Vec<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid.to_string() == oid)
        .filter_map(|atv| attribute_text(&atv.value))
        .collect()
}

/// ecdsa-with-SHA256 (RFC 5758).
pub const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

/// An ECDSA P-256 signature (DER `Ecdsa-Sig-Value`) over SHA-256 of `signed`.
pub fn verify_p256(
    signed: &[u8],
    signature: &[u8],
    key: &p256::ecdsa::VerifyingKey,
) -> Result<(), CertificateError> {
    use p256::ecdsa::signature::Verifier;
    let sig =
        p256::ecdsa::Signature::from_der(signature).map_err(|_| CertificateError::BadSignature)?;
    key.verify(signed, &sig)
        .map_err(|_| CertificateError::BadSignature)
}

/// RSA PKCS#1 v1.5 over `signed` with the digest the algorithm OID names.
fn verify_rsa(
    algorithm: &str,
    signed: &[u8],
    signature: &[u8],
    key: &RsaPublicKey,
) -> Result<(), CertificateError> {
    use rsa::Pkcs1v15Sign;
    use sha2::{Digest, Sha256, Sha384, Sha512};
    let (scheme, hashed) = match algorithm {
        "1.2.840.113549.1.1.11" => (
            Pkcs1v15Sign::new::<Sha256>(),
            Sha256::digest(signed).to_vec(),
        ),
        "1.2.840.113549.1.1.12" => (
            Pkcs1v15Sign::new::<Sha384>(),
            Sha384::digest(signed).to_vec(),
        ),
        "1.2.840.113549.1.1.13" => (
            Pkcs1v15Sign::new::<Sha512>(),
            Sha512::digest(signed).to_vec(),
        ),
        other => return Err(CertificateError::UnsupportedAlgorithm(other.to_string())),
    };
    key.verify(scheme, &hashed, signature)
        .map_err(|_| CertificateError::BadSignature)
}

/// A certificate revocation list (RFC 5280 §5), with the exact DER it was read from.
#[derive(Debug, Clone)]
pub struct Crl {
    der: Vec<u8>,
    crl: x509_cert::crl::CertificateList,
}

impl Crl {
    pub fn from_der(der: &[u8]) -> Result<Crl, CertificateError> {
        let crl = x509_cert::crl::CertificateList::from_der(der)
            .map_err(|e| CertificateError::Der(e.to_string()))?;
        Ok(Crl {
            der: der.to_vec(),
            crl,
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn issuer(&self) -> String {
        format_name(&self.crl.tbs_cert_list.issuer)
    }

    /// Whether `ca` issued it (names equal and its signature verifies with `ca`'s key).
    pub fn verify_issued_by(&self, ca: &Certificate) -> Result<(), CertificateError> {
        let same = matches!(
            (self.crl.tbs_cert_list.issuer.to_der(), ca.cert.tbs_certificate.subject.to_der()),
            (Ok(a), Ok(b)) if a == b
        );
        if !same {
            return Err(CertificateError::BadSignature);
        }
        let tbs = self
            .crl
            .tbs_cert_list
            .to_der()
            .map_err(|e| CertificateError::Der(e.to_string()))?;
        verify_rsa(
            &self.crl.signature_algorithm.oid.to_string(),
            &tbs,
            self.crl.signature.raw_bytes(),
            &ca.rsa_public_key()?,
        )
    }

    pub fn this_update_unix(&self) -> i64 {
        self.crl
            .tbs_cert_list
            .this_update
            .to_unix_duration()
            .as_secs() as i64
    }

    /// None when the CRL gives no nextUpdate (then it cannot be judged fresh).
    pub fn next_update_unix(&self) -> Option<i64> {
        self.crl
            .tbs_cert_list
            .next_update
            .map(|t| t.to_unix_duration().as_secs() as i64)
    }

    /// Whether the serial of `cert` is listed.
    pub fn revokes(&self, cert: &Certificate) -> bool {
        self.crl
            .tbs_cert_list
            .revoked_certificates
            .as_ref()
            .is_some_and(|list| {
                list.iter()
                    .any(|r| r.serial_number.as_bytes() == cert.serial_bytes())
            })
    }

    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        hex(&Sha256::digest(&self.der))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_of_big_integers() {
        assert_eq!(decimal(&[]), "0");
        assert_eq!(decimal(&[0, 0]), "0");
        assert_eq!(decimal(&[0x01, 0x00]), "256");
        assert_eq!(decimal(&[0xff; 8]), u64::MAX.to_string());
        let serial: Vec<u8> = (0..16)
            .map(|i| {
                u8::from_str_radix(&"1D5DE25E3DC14BDE670D26E191261710"[2 * i..2 * i + 2], 16)
                    .unwrap()
            })
            .collect();
        assert_eq!(decimal(&serial), "39035086776736267464403993099359360784");
    }

    #[test]
    fn dn_escaping() {
        assert_eq!(escape_dn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_dn_value(" #x "), "\\ #x\\ ");
        assert_eq!(escape_dn_value("#x"), "\\#x");
    }
}
