//! PEM loading shared by every TLS server of the box (DICOM TLS, MLLP over TLS, the status page's
//! HTTPS, and later WADO-RS): the certificate chain and its private key, with errors naming the
//! file; and the rustls server configuration they share.

use std::sync::Arc;

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain (leaf first) and its key, read from PEM files.
pub fn load_identity(
    certificate: &Path,
    private_key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let err = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("{what} {}: {e}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| err("reading certificate", certificate, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("parsing certificate", certificate, &e))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", certificate.display()));
    }
    let key = PrivateKeyDer::from_pem_file(private_key)
        .map_err(|e| err("reading private key", private_key, &e))?;
    Ok((certs, key))
}

/// The CA certificates of a PEM file, as a root store (client-certificate verification).
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("reading CA {}: {e}", path.display()))?
    {
        let ca = ca.map_err(|e| format!("parsing CA {}: {e}", path.display()))?;
        roots
            .add(ca)
            .map_err(|e| format!("adding CA {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A TLS client configuration without a client certificate (ring provider, safe protocol
/// versions) trusting the CAs of the PEM file `roots`.
pub fn client_config(roots: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = load_roots(roots)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS server configuration (ring provider, safe protocol versions): the box's certificate,
/// and, with `client_ca`, client certificates required and verified against those CAs.
pub fn server_config(
    certificate: &Path,
    private_key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let (certs, key) = load_identity(certificate, private_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate/key: {e}"))?;
    Ok(Arc::new(config))
}
