//! Verifying a downloaded whitelist (DRIM-M §5.2–5.3): pure — the bytes, the trust
//! configuration, the CRLs and the time come in; every check and its result go out.
//!
//! The profile is the agency's enveloped XAdES-BASELINE-B: exactly one `ds:Signature`, a child
//! of the root; RSA with SHA-256 or stronger; a `URI=""` reference whose transforms remove the
//! signature (XPath Filter 2.0 `subtract /descendant::ds:Signature`, or the plain
//! enveloped-signature transform) then canonicalise; a reference to this signature's XAdES
//! `SignedProperties`; and nothing else signed. The signer is the leaf of `X509Data`, chained
//! to a configured root through intermediates from `X509Data` or the local store (a root in
//! `X509Data` is never trusted for being there); every certificate of the path valid at the
//! verification time; the leaf's key usage, subject CN and OU, `SigningCertificateV2` digest
//! and `SigningTime`; leaf and intermediates not revoked according to CRLs whose signature
//! and freshness hold. A check that cannot run because an earlier one failed is not listed.

use serde::Serialize;

use super::list::{self, ListContent};
use crate::pki::{Certificate, Crl};
use crate::xml::c14n::C14nMethod;
use crate::xml::document::{Document, NodeId};
use crate::xml::dsig::{self, DigestMethod, SignatureMethod, Transform, DSIG_NS};

/// Largest list accepted (the 2026 list is about 20 kB).
pub const MAX_LIST_BYTES: usize = 1024 * 1024;
pub const XADES_NS: &str = "http://uri.etsi.org/01903/v1.3.2#";
pub const SIGNED_PROPERTIES_TYPE: &str = "http://uri.etsi.org/01903#SignedProperties";
const OID_CN: &str = "2.5.4.3";
const OID_OU: &str = "2.5.4.11";

/// Whom to trust, and who must have signed.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Root certificates a path must end at.
    pub anchors: Vec<Certificate>,
    /// Intermediates the box holds, used when `X509Data` lacks them.
    pub intermediates: Vec<Certificate>,
    pub signer_cn: String,
    pub signer_ou: String,
}

/// What revocation data there is. `offline`: revocation is not checked (and said so).
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    pub crls: Vec<Crl>,
    pub offline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    NotChecked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateUsed {
    pub subject: String,
    pub sha256: String,
    pub not_before: String,
    pub not_after: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrlUsed {
    pub issuer: String,
    pub sha256: String,
    pub this_update: String,
    pub next_update: Option<String>,
}

/// The whole verdict on one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// True only if no check failed.
    pub valid: bool,
    /// False when revocation was not checked (offline).
    pub revocation_checked: bool,
    pub verified_at: String,
    pub size: usize,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub checks: Vec<Check>,
    /// The signer's subject, when a signature was read.
    pub signer: Option<String>,
    /// The certification path, leaf first, anchor last.
    pub chain: Vec<CertificateUsed>,
    pub crls: Vec<CrlUsed>,
    #[serde(skip)]
    pub content: Option<ListContent>,
    pub generated: Option<String>,
    pub domains: Option<usize>,
}

impl Verification {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail)
    }

    /// The first failed check, `name: reason`.
    pub fn first_failure(&self) -> Option<String> {
        self.failures()
            .next()
            .map(|c| format!("{}: {}", c.name, c.reason))
    }
}

struct Checks(Vec<Check>);

impl Checks {
    fn pass(&mut self, name: &'static str, reason: impl Into<String>) {
        self.0.push(Check {
            name,
            outcome: Outcome::Pass,
            reason: reason.into(),
        });
    }
    fn fail(&mut self, name: &'static str, reason: impl Into<String>) {
        self.0.push(Check {
            name,
            outcome: Outcome::Fail,
            reason: reason.into(),
        });
    }
    fn not_checked(&mut self, name: &'static str, reason: impl Into<String>) {
        self.0.push(Check {
            name,
            outcome: Outcome::NotChecked,
            reason: reason.into(),
        });
    }
    fn record(&mut self, name: &'static str, r: Result<String, String>) -> bool {
        match r {
            Ok(m) => {
                self.pass(name, m);
                true
            }
            Err(m) => {
                self.fail(name, m);
                false
            }
        }
    }
}

fn time(unix: i64) -> String {
    crate::status::rfc3339(unix * 1000)
}

fn used(c: &Certificate) -> CertificateUsed {
    CertificateUsed {
        subject: c.subject(),
        sha256: c.sha256_hex(),
        not_before: time(c.not_before_unix()),
        not_after: time(c.not_after_unix()),
    }
}

/// Verifies `bytes` as a whitelist at `at_unix`. `installed_generated`: the DateDeGeneration of
/// the list in service, which a new one must not predate.
pub fn verify(
    bytes: &[u8],
    trust: &Trust,
    revocation: &Revocation,
    at_unix: i64,
    installed_generated: Option<i64>,
) -> Verification {
    use sha2::{Digest, Sha256};
    let mut v = Verification {
        valid: false,
        revocation_checked: !revocation.offline,
        verified_at: time(at_unix),
        size: bytes.len(),
        sha256: Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        checks: Vec::new(),
        signer: None,
        chain: Vec::new(),
        crls: Vec::new(),
        content: None,
        generated: None,
        domains: None,
    };
    let mut c = Checks(Vec::new());
    run(
        bytes,
        trust,
        revocation,
        at_unix,
        installed_generated,
        &mut c,
        &mut v,
    );
    v.checks = c.0;
    v.valid = !v.checks.is_empty() && v.failures().next().is_none();
    v
}

#[allow(clippy::too_many_arguments)]
fn run(
    bytes: &[u8],
    trust: &Trust,
    revocation: &Revocation,
    at: i64,
    installed_generated: Option<i64>,
    c: &mut Checks,
    v: &mut Verification,
) {
    if !c.record(
        "size",
        if bytes.len() <= MAX_LIST_BYTES {
            Ok(format!("{} bytes", bytes.len()))
        } else {
            Err(format!(
                "{} bytes, over the limit of {MAX_LIST_BYTES}",
                bytes.len()
            ))
        },
    ) {
        return;
    }
    // No DTD, no entity other than XML's five, bounded depth: refused by the parser itself.
    let doc = match Document::parse_with_limits(bytes, MAX_LIST_BYTES, 64) {
        Ok(d) => {
            c.pass("well-formed", "XML without DTD or external entities");
            d
        }
        Err(e) => return c.fail("well-formed", e.to_string()),
    };
    if !c.record(
        "root",
        list::check_root(&doc)
            .map(|()| format!("{} in a known namespace", list::ROOT))
            .map_err(|e| e.to_string()),
    ) {
        return;
    }
    let signatures = dsig::all_signatures(&doc);
    let root = doc.root();
    let sig = match signatures.as_slice() {
        [] => return c.fail("one-signature", "the list is not signed (no ds:Signature)"),
        [s] if doc.parent(*s) == Some(root) => {
            c.pass("one-signature", "one ds:Signature, a child of the root");
            *s
        }
        [_] => {
            return c.fail(
                "one-signature",
                "the ds:Signature is not a child of the root element",
            )
        }
        many => {
            return c.fail(
                "one-signature",
                format!(
                    "{} ds:Signature elements; exactly one is allowed",
                    many.len()
                ),
            )
        }
    };
    if !c.record("signature-shape", shape(&doc, sig)) {
        return;
    }
    let parsed = match dsig::parse_signature(&doc, sig) {
        Ok(p) => p,
        Err(e) => return c.fail("algorithms", e.to_string()),
    };
    if !c.record("algorithms", algorithms(&parsed)) {
        return;
    }
    let Some(signed_properties) = signed_properties(&doc, sig) else {
        return c.fail(
            "references",
            "no xades:QualifyingProperties/SignedProperties in the signature's Object",
        );
    };
    if !c.record("references", references(&doc, &parsed, signed_properties)) {
        return;
    }

    // The leaf: the X509Data certificate that issued none of the others.
    let embedded: Vec<Certificate> = match parsed
        .certificates
        .iter()
        .map(|d| Certificate::from_der(d))
        .collect::<Result<_, _>>()
    {
        Ok(v) => v,
        Err(e) => return c.fail("signature-value", format!("X509Data: {e}")),
    };
    let Some(leaf) = embedded
        .iter()
        .find(|l| !embedded.iter().any(|o| o != *l && o.issued_by_name(l)))
        .or(embedded.first())
        .cloned()
    else {
        return c.fail("signature-value", "no X509Certificate in KeyInfo/X509Data");
    };
    v.signer = Some(leaf.subject());
    let options = dsig::VerifyOptions {
        id_attribute: "Id".into(),
        certificate: Some(leaf.der().to_vec()),
    };
    let report = match dsig::verify_signature(&doc, sig, &options) {
        Ok(r) => r,
        Err(e) => return c.fail("digests", e.to_string()),
    };
    let bad: Vec<String> = report
        .references
        .iter()
        .filter_map(|r| r.result.as_ref().err().map(|e| e.to_string()))
        .collect();
    if !c.record(
        "digests",
        if bad.is_empty() {
            Ok(format!(
                "{} reference digests match",
                report.references.len()
            ))
        } else {
            Err(bad.join("; "))
        },
    ) {
        return;
    }
    if !c.record(
        "signature-value",
        report
            .signature_value
            .as_ref()
            .map(|()| format!("verifies with the key of {}", leaf.subject()))
            .map_err(|e| e.to_string()),
    ) {
        return;
    }

    // The certification path.
    let chain = match path(&leaf, &embedded, trust) {
        Ok(p) => {
            c.pass(
                "chain",
                format!(
                    "{} certificate(s) up to the trusted root {}",
                    p.len(),
                    p.last().map(Certificate::subject).unwrap_or_default()
                ),
            );
            p
        }
        Err(e) => return c.fail("chain", e),
    };
    v.chain = chain.iter().map(used).collect();
    let expired: Vec<String> = chain
        .iter()
        .filter(|x| at < x.not_before_unix() || at > x.not_after_unix())
        .map(|x| {
            let what = if at < x.not_before_unix() {
                "not yet valid"
            } else {
                "expired"
            };
            format!(
                "{} is {what} (valid {} to {})",
                x.subject(),
                time(x.not_before_unix()),
                time(x.not_after_unix())
            )
        })
        .collect();
    c.record(
        "validity",
        if expired.is_empty() {
            Ok(format!(
                "every certificate of the path is valid at {}",
                time(at)
            ))
        } else {
            Err(expired.join("; "))
        },
    );
    c.record(
        "key-usage",
        match leaf.key_usage() {
            Some((ds, nr, _)) if ds || nr => Ok(format!(
                "{}{}",
                if ds { "digitalSignature " } else { "" },
                if nr { "nonRepudiation" } else { "" }
            )
            .trim()
            .to_string()),
            Some(_) => Err(
                "the signer's key usage allows neither digitalSignature nor nonRepudiation".into(),
            ),
            None => Err("the signer's certificate has no key usage".into()),
        },
    );
    let (cn, ou) = (leaf.subject_values(OID_CN), leaf.subject_values(OID_OU));
    c.record(
        "signer-name",
        if cn == [trust.signer_cn.as_str()] && ou == [trust.signer_ou.as_str()] {
            Ok(format!("CN={} OU={}", trust.signer_cn, trust.signer_ou))
        } else {
            Err(format!(
                "the signer is CN={} OU={}, not CN={} OU={}",
                cn.join("+"),
                ou.join("+"),
                trust.signer_cn,
                trust.signer_ou
            ))
        },
    );
    c.record(
        "signing-certificate",
        signing_certificate(&doc, signed_properties, &leaf),
    );
    c.record(
        "signing-time",
        signing_time(&doc, signed_properties, &leaf, at),
    );

    // Revocation of every certificate of the path below the root.
    if revocation.offline {
        c.not_checked(
            "revocation",
            "offline: revocation was NOT checked (no CRL fetched)",
        );
    } else {
        let mut problems = Vec::new();
        for pair in chain.windows(2) {
            let (cert, issuer) = (&pair[0], &pair[1]);
            let Some(crl) = revocation
                .crls
                .iter()
                .find(|crl| crl.verify_issued_by(issuer).is_ok())
            else {
                problems.push(format!(
                    "no CRL signed by {} to check {}",
                    issuer.subject(),
                    cert.subject()
                ));
                continue;
            };
            v.crls.push(CrlUsed {
                issuer: crl.issuer(),
                sha256: crl.sha256_hex(),
                this_update: time(crl.this_update_unix()),
                next_update: crl.next_update_unix().map(time),
            });
            match crl.next_update_unix() {
                _ if at < crl.this_update_unix() => problems.push(format!(
                    "the CRL of {} is not valid before {}",
                    issuer.subject(),
                    time(crl.this_update_unix())
                )),
                None => problems.push(format!("the CRL of {} has no nextUpdate", issuer.subject())),
                Some(next) if at > next => problems.push(format!(
                    "the CRL of {} is stale (nextUpdate {})",
                    issuer.subject(),
                    time(next)
                )),
                Some(_) => {}
            }
            if crl.revokes(cert) {
                problems.push(format!("{} is revoked", cert.subject()));
            }
        }
        c.record(
            "revocation",
            if problems.is_empty() {
                Ok(format!(
                    "{} certificate(s) not revoked by fresh CRLs",
                    chain.len() - 1
                ))
            } else {
                Err(problems.join("; "))
            },
        );
    }

    // What the signature covers: the list itself.
    match list::read(&doc) {
        Ok(content) => {
            c.pass(
                "content",
                format!(
                    "generated {}, {} domain(s)",
                    content.generated,
                    content.domains.len()
                ),
            );
            match installed_generated {
                Some(old) if content.generated_unix < old => c.fail(
                    "not-older",
                    format!(
                        "generated {}, before the installed list ({})",
                        content.generated,
                        time(old)
                    ),
                ),
                Some(old) => c.pass(
                    "not-older",
                    format!("not older than the installed list ({})", time(old)),
                ),
                None => c.not_checked("not-older", "no list installed to compare with"),
            }
            v.generated = Some(content.generated.clone());
            v.domains = Some(content.domains.len());
            v.content = Some(content);
        }
        Err(e) => c.fail("content", e.to_string()),
    }
}

/// The profile's signature carries SignedInfo, SignatureValue, KeyInfo and one Object holding
/// the XAdES QualifyingProperties, nothing else: content hidden in the signature (which the
/// signed node-set leaves out) is refused rather than ignored.
fn shape(doc: &Document, sig: NodeId) -> Result<String, String> {
    let mut objects = 0;
    for child in doc.child_elements(sig) {
        let e = doc.element(child).expect("an element");
        match (e.namespace.as_str(), e.local.as_str()) {
            (DSIG_NS, "SignedInfo" | "SignatureValue" | "KeyInfo") => {}
            (DSIG_NS, "Object") => {
                objects += 1;
                let only_properties = doc.child_elements(child).all(|q| {
                    doc.element(q)
                        .is_some_and(|q| q.is(XADES_NS, "QualifyingProperties"))
                });
                if !only_properties {
                    return Err("a ds:Object holds something other than the XAdES \
                                QualifyingProperties"
                        .into());
                }
            }
            _ => {
                return Err(format!(
                    "the signature holds an unexpected {} element",
                    e.qname()
                ))
            }
        }
    }
    if objects != 1 {
        return Err(format!(
            "{objects} ds:Object elements; the profile has exactly one (XAdES properties)"
        ));
    }
    Ok("SignedInfo, SignatureValue, KeyInfo and the XAdES properties only".into())
}

/// RSA with SHA-256 or stronger for the signature and every digest; a W3C canonicalisation
/// without comments for SignedInfo.
fn algorithms(s: &dsig::Signature) -> Result<String, String> {
    if s.signed_info.signature_method == SignatureMethod::RsaSha1 {
        return Err("rsa-sha1 is not allowed (RSA with SHA-256 or stronger only)".into());
    }
    if !matches!(
        s.signed_info.canonicalization,
        C14nMethod::Exclusive | C14nMethod::Inclusive
    ) {
        return Err(format!(
            "SignedInfo canonicalisation {:?} is not allowed",
            s.signed_info.canonicalization
        ));
    }
    for r in &s.signed_info.references {
        match r.digest_method {
            Some(DigestMethod::Sha256 | DigestMethod::Sha512) => {}
            Some(DigestMethod::Sha1) => {
                return Err(format!(
                    "reference `{}` is digested with SHA-1 (SHA-256 or stronger only)",
                    r.uri
                ))
            }
            None => return Err(format!("unsupported digest method `{}`", r.digest_uri)),
        }
    }
    Ok(format!(
        "{} over {:?} canonical SignedInfo",
        s.signed_info.signature_method.uri(),
        s.signed_info.canonicalization
    ))
}

/// This signature's `Object/QualifyingProperties/SignedProperties`.
fn signed_properties(doc: &Document, sig: NodeId) -> Option<NodeId> {
    doc.children_named(sig, DSIG_NS, "Object")
        .flat_map(|o| {
            doc.children_named(o, XADES_NS, "QualifyingProperties")
                .collect::<Vec<_>>()
        })
        .flat_map(|q| {
            doc.children_named(q, XADES_NS, "SignedProperties")
                .collect::<Vec<_>>()
        })
        .next()
}

/// Exactly the two references of the profile: the whole document minus the signature, then
/// this signature's SignedProperties.
fn references(
    doc: &Document,
    s: &dsig::Signature,
    signed_properties: NodeId,
) -> Result<String, String> {
    let refs = &s.signed_info.references;
    let whole: Vec<_> = refs.iter().filter(|r| r.uri.is_empty()).collect();
    let props: Vec<_> = refs
        .iter()
        .filter(|r| r.reference_type.as_deref() == Some(SIGNED_PROPERTIES_TYPE))
        .collect();
    if whole.len() != 1 || props.len() != 1 || refs.len() != 2 {
        return Err(format!(
            "{} reference(s): the profile signs exactly the document (URI=\"\") and the \
             SignedProperties",
            refs.len()
        ));
    }
    let removes_signature = matches!(
        whole[0].transforms.first(),
        Some(Transform::SubtractSignatures | Transform::EnvelopedSignature)
    );
    let canonical_rest = whole[0].transforms[1..].iter().all(|t| {
        matches!(
            t,
            Transform::Canonicalize {
                method: C14nMethod::Exclusive | C14nMethod::Inclusive,
                ..
            }
        )
    });
    if !removes_signature || !canonical_rest {
        return Err(format!(
            "the URI=\"\" reference's transforms are {:?}, not the signature's removal \
             (XPath Filter 2.0 subtract or enveloped-signature) then a canonicalisation",
            whole[0].transforms
        ));
    }
    let target = props[0]
        .uri
        .strip_prefix('#')
        .and_then(|id| doc.element_by_id("Id", id).ok());
    if target != Some(signed_properties) {
        return Err(format!(
            "the SignedProperties reference `{}` does not name this signature's SignedProperties",
            props[0].uri
        ));
    }
    Ok("the document without its signature, and the XAdES SignedProperties".into())
}

/// The path from the leaf to a configured root: issuers from X509Data or the local store,
/// each a CA whose key verifies the certificate below.
fn path(
    leaf: &Certificate,
    embedded: &[Certificate],
    trust: &Trust,
) -> Result<Vec<Certificate>, String> {
    let mut chain = vec![leaf.clone()];
    for _ in 0..6 {
        let current = chain.last().expect("never empty").clone();
        if let Some(root) = trust
            .anchors
            .iter()
            .find(|a| current.issued_by_name(a) && current.verify_signed_by(a).is_ok())
        {
            if &current != root {
                chain.push(root.clone());
            }
            return Ok(chain);
        }
        if current.issued_by_name(&current) {
            return Err(if chain.len() == 1 {
                format!("the signer {} is self-signed", current.subject())
            } else {
                format!("{} is a root that is not trusted", current.subject())
            });
        }
        let issuer = embedded
            .iter()
            .chain(&trust.intermediates)
            .find(|i| current.issued_by_name(i) && i.is_ca() && current.verify_signed_by(i).is_ok())
            .cloned();
        match issuer {
            Some(i) => chain.push(i),
            None => {
                return Err(format!(
                    "no issuer of {} (issued by {}) among the X509Data certificates, the \
                     local intermediates and the trusted roots",
                    current.subject(),
                    current.issuer()
                ))
            }
        }
    }
    Err("the certification path is longer than 6".into())
}

fn text_of(doc: &Document, n: NodeId, path: &[(&str, &str)]) -> Option<(NodeId, String)> {
    let mut cur = n;
    for (ns, local) in path {
        cur = doc
            .child_elements(cur)
            .find(|c| doc.element(*c).is_some_and(|e| e.is(ns, local)))?;
    }
    Some((cur, doc.text(cur).trim().to_string()))
}

/// XAdES SigningCertificateV2: the digest (SHA-256 or stronger) of the signer's certificate.
fn signing_certificate(doc: &Document, sp: NodeId, leaf: &Certificate) -> Result<String, String> {
    let cert_path = [
        (XADES_NS, "SignedSignatureProperties"),
        (XADES_NS, "SigningCertificateV2"),
        (XADES_NS, "Cert"),
        (XADES_NS, "CertDigest"),
    ];
    let (digest, _) = text_of(doc, sp, &cert_path)
        .ok_or("no SigningCertificateV2/Cert/CertDigest in the SignedProperties")?;
    let method = text_of(doc, digest, &[(DSIG_NS, "DigestMethod")])
        .and_then(|(n, _)| doc.element(n)?.attribute("Algorithm").map(str::to_string))
        .unwrap_or_default();
    let value = text_of(doc, digest, &[(DSIG_NS, "DigestValue")])
        .map(|(_, t)| t)
        .unwrap_or_default();
    let m = match DigestMethod::from_uri(&method) {
        Some(DigestMethod::Sha1) | None => {
            return Err(format!(
                "CertDigest method `{method}` is not SHA-256 or stronger"
            ))
        }
        Some(m) => m,
    };
    let given = crate::base64::decode(value.as_bytes())
        .map_err(|_| "CertDigest DigestValue is not base64".to_string())?;
    if given == m.digest(leaf.der()) {
        Ok(format!("{} of the signer's certificate matches", m.uri()))
    } else {
        Err("SigningCertificateV2 names another certificate than the signer's".into())
    }
}

/// XAdES SigningTime within the signer's validity, and not after the verification time.
fn signing_time(doc: &Document, sp: NodeId, leaf: &Certificate, at: i64) -> Result<String, String> {
    let (_, t) = text_of(
        doc,
        sp,
        &[
            (XADES_NS, "SignedSignatureProperties"),
            (XADES_NS, "SigningTime"),
        ],
    )
    .ok_or("no SigningTime in the SignedProperties")?;
    let when =
        crate::status::parse_rfc3339(&t).ok_or(format!("SigningTime `{t}` is not a date-time"))?;
    if when < leaf.not_before_unix() || when > leaf.not_after_unix() {
        return Err(format!(
            "SigningTime {t} is outside the signer's validity ({} to {})",
            time(leaf.not_before_unix()),
            time(leaf.not_after_unix())
        ));
    }
    if when > at {
        return Err(format!(
            "SigningTime {t} is after the verification time {}",
            time(at)
        ));
    }
    Ok(format!("signed {t}, within the signer's validity"))
}

/// The certificates of the list's `X509Data`, best effort (to find the CRLs to fetch before
/// the verification proper).
pub fn embedded_certificates(bytes: &[u8]) -> Vec<Certificate> {
    let Ok(doc) = Document::parse_with_limits(bytes, MAX_LIST_BYTES, 64) else {
        return Vec::new();
    };
    dsig::all_signatures(&doc)
        .into_iter()
        .filter_map(|s| dsig::parse_signature(&doc, s).ok())
        .flat_map(|s| s.certificates)
        .filter_map(|d| Certificate::from_der(&d).ok())
        .collect()
}
