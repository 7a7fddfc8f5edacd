//! Loading what the verifier trusts and the CRLs it checks against (files and HTTP): the
//! effects around [`super::verify`].

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;

use super::verify::Trust;
use crate::config::WhitelistConfig;
use crate::pki::{Certificate, Crl};

/// The IGC-Santé TEST root and intermediate (public certificates, `shared/ref/pki/`): the
/// trust of a box whose configuration names none (homologation, the demo).
pub const TEST_ROOT_PEM: &[u8] = include_bytes!("anchors/igc-sante-test-root-ACR-EL.pem");
pub const TEST_INTERMEDIATE_PEM: &[u8] = include_bytes!("anchors/igc-sante-test-ACI-EL-ORG.pem");

/// Largest CRL fetched (the IGC-Santé ones are a few kB to a few hundred kB).
pub const MAX_CRL_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}: {1}")]
    File(PathBuf, String),
    #[error("{0}: no certificate in it")]
    Empty(PathBuf),
    #[error("CRL {0}: {1}")]
    Fetch(String, String),
}

fn certificates_in(pem: &[u8], what: &Path) -> Result<Vec<Certificate>, TrustError> {
    let out =
        crate::pki::certificates_from_pem(pem).map_err(|e| TrustError::File(what.into(), e))?;
    if out.is_empty() {
        return Err(TrustError::Empty(what.into()));
    }
    Ok(out)
}

fn load_all(paths: &[PathBuf], default: &[u8], name: &str) -> Result<Vec<Certificate>, TrustError> {
    if paths.is_empty() {
        return certificates_in(default, Path::new(name));
    }
    let mut out = Vec::new();
    for p in paths {
        let pem = std::fs::read(p).map_err(|e| TrustError::File(p.clone(), e.to_string()))?;
        out.extend(certificates_in(&pem, p)?);
    }
    Ok(out)
}

/// The trust the configuration describes (built-in IGC-Santé TEST certificates by default).
pub fn load(config: &WhitelistConfig) -> Result<Trust, TrustError> {
    Ok(Trust {
        anchors: load_all(
            &config.trust_anchors,
            TEST_ROOT_PEM,
            "built-in IGC-Santé TEST root",
        )?,
        intermediates: load_all(
            &config.intermediates,
            TEST_INTERMEDIATE_PEM,
            "built-in IGC-Santé TEST intermediate",
        )?,
        signer_cn: config.signer_cn.clone(),
        signer_ou: config.signer_ou.clone(),
    })
}

/// A CRL from DER or PEM bytes.
pub fn parse_crl(bytes: &[u8], what: &str) -> Result<Crl, TrustError> {
    let der = if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(bytes)
            .map_err(|e| TrustError::Fetch(what.into(), e.to_string()))?
            .as_ref()
            .to_vec()
    } else {
        bytes.to_vec()
    };
    Crl::from_der(&der).map_err(|e| TrustError::Fetch(what.into(), e.to_string()))
}

pub fn read_crl(path: &Path) -> Result<Crl, TrustError> {
    let bytes = std::fs::read(path).map_err(|e| TrustError::File(path.into(), e.to_string()))?;
    parse_crl(&bytes, &path.display().to_string())
}

/// GETs a CRL over plain HTTP (the FAQ exempts CRL downloads from the encrypted-flows rule;
/// the CRL's own signature is what makes it trustworthy), within `timeout` per step and
/// `MAX_CRL_BYTES`.
pub fn fetch_crl(url: &str, timeout: Duration) -> Result<Crl, TrustError> {
    let err = |m: String| TrustError::Fetch(url.to_string(), m);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| err("only http:// CRL URLs are fetched".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| err(format!("bad port {p}")))?,
        ),
        None => (authority, 80),
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| err(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| err(e.to_string()))?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| err(e.to_string()))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/pkix-crl\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| err(e.to_string()))?;
    let m = crate::dmp::http::read_message_limited(&mut BufReader::new(tcp), MAX_CRL_BYTES)
        .map_err(|e| err(e.to_string()))?;
    if m.status() != 200 {
        return Err(err(format!("HTTP {}", m.status())));
    }
    parse_crl(&m.body, url)
}

/// The certificates whose CRLs are worth fetching: the configured anchors and intermediates,
/// and those of `embedded` issued (signature checked) by one of them or by one already taken.
/// A list's certificates are attacker-supplied until verified: a forged one must not make the
/// box fetch URLs of its choosing.
fn issued_within(trust: &Trust, embedded: Vec<Certificate>) -> Vec<Certificate> {
    let mut taken: Vec<Certificate> = trust
        .anchors
        .iter()
        .chain(&trust.intermediates)
        .cloned()
        .collect();
    let mut rest = embedded;
    loop {
        let before = rest.len();
        let (inside, outside): (Vec<Certificate>, Vec<Certificate>) =
            rest.into_iter().partition(|c| {
                taken
                    .iter()
                    .any(|i| c.issued_by_name(i) && c.verify_signed_by(i).is_ok())
            });
        rest = outside;
        let progressed = rest.len() < before;
        taken.extend(inside);
        if !progressed || rest.is_empty() {
            return taken;
        }
    }
}

/// The CRLs the local intermediates and the list's certificates issued within the trust name
/// (see [`issued_within`]), fetched now. With a
/// `cache` directory, each one fetched is kept there (atomically), and one that cannot be
/// fetched is taken from there instead: the verification then judges its nextUpdate, so a
/// cached CRL helps through an outage of the CRL server and never past its validity.
/// Returns the CRLs and a note per URL that could not be fetched.
pub fn gather_crls(
    list: &[u8],
    trust: &Trust,
    cache: Option<&Path>,
    timeout: Duration,
) -> (Vec<Crl>, Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    let urls: Vec<String> = issued_within(trust, super::verify::embedded_certificates(list))
        .iter()
        .filter(|c| !trust.anchors.iter().any(|a| a.der() == c.der()))
        .flat_map(|c| c.crl_urls())
        .filter(|u| seen.insert(u.clone()))
        .collect();
    let cached = |url: &str| -> Option<PathBuf> {
        use sha2::{Digest, Sha256};
        let h: String = Sha256::digest(url.as_bytes())
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        cache.map(|d| d.join(format!("{h}.crl")))
    };
    let (mut crls, mut notes) = (Vec::new(), Vec::new());
    for url in urls {
        match fetch_crl(&url, timeout) {
            Ok(c) => {
                if let Some(p) = cached(&url) {
                    if let Err(e) = crate::archive::store::write_atomically(&p, c.der()) {
                        notes.push(format!("CRL {url}: not cached: {e}"));
                    }
                }
                crls.push(c);
            }
            Err(e) => match cached(&url).filter(|p| p.is_file()).map(|p| read_crl(&p)) {
                Some(Ok(c)) => {
                    notes.push(format!("{e}; the cached copy is used"));
                    crls.push(c);
                }
                _ => notes.push(e.to_string()),
            },
        }
    }
    (crls, notes)
}
