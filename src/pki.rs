//! X.509 certificates as the signatures need them: the DER bytes (digested into XAdES
//! `CertDigest`, embedded in `KeyInfo`), the issuer name and serial number as the reference
//! implementation prints them in `IssuerSerial`, and the RSA public key that verifies a
//! `SignatureValue`. Chains, validity and revocation are the caller's business (the whitelist
//! updater, DRIM-M §5.3); this module only reads one certificate.

use rsa::pkcs8::DecodePublicKey;
use rsa::RsaPublicKey;
use x509_cert::der::{Decode, Encode, Tag, Tagged};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("the certificate is not valid DER X.509: {0}")]
    Der(String),
    #[error("the certificate's key is not an RSA key: {0}")]
    NotRsa(String),
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

    pub fn rsa_public_key(&self) -> Result<RsaPublicKey, CertificateError> {
        let spki = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| CertificateError::Der(e.to_string()))?;
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
