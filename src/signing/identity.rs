//! The practice's signing identity: an RSA private key and its certificate (plus the chain the
//! file carries), loaded from the PKCS#12 file the installer puts on the box.
//!
//! OpenSSL 3's default `openssl pkcs12 -export` output (PBES2 with PBKDF2-HMAC-SHA256 and
//! AES-256-CBC, HMAC-SHA256 MAC) loads, and so does the legacy suite (3DES / RC2-40 keyed
//! through the PKCS#12 KDF, `-legacy`, older tools). The key never leaves this type: it signs.

use std::path::{Path, PathBuf};

use rsa::pkcs8::{DecodePrivateKey, PrivateKeyInfo};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;

use super::SignatureAlgorithm;
use crate::pki::{Certificate, CertificateError};

/// Largest PKCS#12 file read (a key, a leaf and a chain are a few KB).
pub const MAX_PKCS12: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading the PKCS#12 file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the PKCS#12 file is {0} bytes, over the limit of {MAX_PKCS12}")]
    TooLarge(u64),
    #[error("wrong PKCS#12 password (or a damaged file: its integrity check fails)")]
    WrongPassword,
    #[error("the PKCS#12 file cannot be read: {0}")]
    Pkcs12(String),
    #[error("the PKCS#12 file holds no private key with its certificate")]
    NoKey,
    #[error("the private key is not an RSA key (algorithm {0})")]
    NotRsa(String),
    #[error("the private key cannot be read: {0}")]
    Key(String),
    #[error("the certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("the certificate's public key is not the private key's")]
    KeyMismatch,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A private key and its certificate. `Debug` shows the certificate, never the key.
pub struct SigningIdentity {
    key: RsaPrivateKey,
    certificate: Certificate,
    chain: Vec<Certificate>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("subject", &self.certificate.subject())
            .field("issuer", &self.certificate.issuer())
            .field("serial", &self.certificate.serial_decimal())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn map_p12(e: p12_keystore::error::Error) -> IdentityError {
    use p12_keystore::error::Error as E;
    match e {
        // The MAC is keyed by the password: a mismatch is a wrong password (or tampering). A
        // store without MAC shows a wrong password as bad padding after decryption.
        E::MacError(_) | E::UnpadError => IdentityError::WrongPassword,
        other => IdentityError::Pkcs12(other.to_string()),
    }
}

impl SigningIdentity {
    /// Loads `path` (a PKCS#12 / PFX file) with `password`.
    pub fn from_pkcs12_file(path: &Path, password: &str) -> Result<SigningIdentity, IdentityError> {
        let read = |source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_PKCS12 {
            return Err(IdentityError::TooLarge(len));
        }
        let bytes = std::fs::read(path).map_err(read)?;
        SigningIdentity::from_pkcs12(&bytes, password)
    }

    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<SigningIdentity, IdentityError> {
        if der.len() as u64 > MAX_PKCS12 {
            return Err(IdentityError::TooLarge(der.len() as u64));
        }
        let store = p12_keystore::KeyStore::from_pkcs12(der, password).map_err(map_p12)?;
        // p12-keystore pairs each key with its certificate by localKeyId; a key without one
        // (or a store of certificates only) has no entry here.
        let (_, entry) = store.private_key_chain().ok_or(IdentityError::NoKey)?;
        let mut certs = entry.chain().iter();
        let leaf = certs.next().ok_or(IdentityError::NoKey)?;
        let chain = certs
            .map(|c| Certificate::from_der(c.as_der()))
            .collect::<Result<Vec<_>, _>>()?;
        SigningIdentity::from_parts(entry.key(), leaf.as_der(), chain)
    }

    /// From a PKCS#8 DER private key and a DER certificate; checks they belong together.
    pub fn from_parts(
        pkcs8_key: &[u8],
        certificate_der: &[u8],
        chain: Vec<Certificate>,
    ) -> Result<SigningIdentity, IdentityError> {
        let info =
            PrivateKeyInfo::try_from(pkcs8_key).map_err(|e| IdentityError::Key(e.to_string()))?;
        if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
            return Err(IdentityError::NotRsa(info.algorithm.oid.to_string()));
        }
        let key = RsaPrivateKey::from_pkcs8_der(pkcs8_key)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let certificate = Certificate::from_der(certificate_der)?;
        let public = certificate.rsa_public_key()?;
        if public.n() != key.n() || public.e() != key.e() {
            return Err(IdentityError::KeyMismatch);
        }
        Ok(SigningIdentity {
            key,
            certificate,
            chain,
        })
    }

    /// The signing certificate.
    /// A TLS client configuration authenticating with this identity (the DMP's client
    /// certificate authentication), trusting `roots`. The key never leaves this module but
    /// into rustls.
    pub fn tls_client_config(
        &self,
        roots: rustls::RootCertStore,
    ) -> Result<std::sync::Arc<rustls::ClientConfig>, IdentityError> {
        use rsa::pkcs8::EncodePrivateKey;
        let key = self
            .key
            .to_pkcs8_der()
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.as_bytes().to_vec()),
        );
        let mut chain = vec![rustls::pki_types::CertificateDer::from(
            self.certificate.der().to_vec(),
        )];
        chain.extend(
            self.chain
                .iter()
                .filter(|c| c.der() != self.certificate.der())
                .map(|c| rustls::pki_types::CertificateDer::from(c.der().to_vec())),
        );
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Key(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
        Ok(std::sync::Arc::new(config))
    }

    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The other certificates of the file, issuer first as the file's chain goes.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    /// RSA PKCS#1 v1.5 signature of `data` (deterministic: same inputs, same bytes).
    pub fn sign(
        &self,
        algorithm: SignatureAlgorithm,
        data: &[u8],
    ) -> Result<Vec<u8>, IdentityError> {
        let d = algorithm.digest_method();
        self.key
            .sign(d.pkcs1v15(), &d.digest(data))
            .map_err(|e| IdentityError::Sign(e.to_string()))
    }
}
