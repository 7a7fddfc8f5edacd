//! XMLDSig core (W3C XML Signature 1.1 §3): reading a `Signature`, recomputing each
//! `Reference` digest, checking `SignatureValue` over the canonical `SignedInfo`, and the
//! primitives the signer shares (digest and signature method URIs, digesting a reference
//! target).
//!
//! What the core verifier does and does not do, on purpose:
//! * Same-document references only: `#id` (the element whose `Id` attribute, configurable,
//!   equals `id`, unique in the document), `#xpointer(id('id'))`, `""` (the whole document)
//!   and `#xpointer(/)`. `#id` and `""` select their node-set without comments (§4.4.3.3).
//! * Transforms: the four canonicalisations, `enveloped-signature`, and XPath Filter 2.0
//!   reduced to the one expression the whitelist uses (`subtract /descendant::ds:Signature`,
//!   DRIM-M §5.2); anything else is a typed error for that reference, never ignored.
//! * `Manifest` references (`urn:oid:…` in the lot signature) are not dereferenced, as with
//!   `xmlsec1 --ignore-manifests`: the verifier exposes them ([`Report::manifests`]) so the
//!   caller checks them against the bytes it holds ([`ManifestReference::check`]).
//! * Trust (chains, validity, revocation, who the signer is) is not decided here: the report
//!   says which certificate verified the signature; the caller decides whether to trust it.

use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use super::c14n::{C14nMethod, Canonicalizer};
use super::document::{Document, NodeId, XmlError};
use crate::pki::{Certificate, CertificateError};

pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
pub const MANIFEST_TYPE: &str = "http://www.w3.org/2000/09/xmldsig#Manifest";
pub const ENVELOPED_SIGNATURE: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
pub const XPATH_FILTER2: &str = "http://www.w3.org/2002/06/xmldsig-filter2";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsigError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("the document holds no ds:Signature")]
    NoSignature,
    #[error("the document holds {0} ds:Signature elements; which one is meant is ambiguous")]
    SeveralSignatures(usize),
    #[error("the signature lacks {0}")]
    Missing(&'static str),
    #[error("unsupported canonicalisation method `{0}`")]
    UnsupportedCanonicalization(String),
    #[error("unsupported signature method `{0}`")]
    UnsupportedSignatureMethod(String),
    #[error("unsupported digest method `{0}`")]
    UnsupportedDigestMethod(String),
    #[error("unsupported transform `{0}`")]
    UnsupportedTransform(String),
    #[error("the reference URI `{0}` is not a same-document reference; the core verifier does not fetch it")]
    UnsupportedReferenceUri(String),
    #[error("the reference `{uri}` does not resolve: {error}")]
    Unresolved { uri: String, error: XmlError },
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    #[error("the digest of `{uri}` does not match its DigestValue")]
    DigestMismatch { uri: String },
    #[error("the signature holds no X509Certificate and none was given")]
    NoCertificate,
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("the SignatureValue does not verify with the certificate's key")]
    BadSignatureValue,
}

/// Digest algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestMethod {
    Sha1,
    Sha256,
    Sha512,
}

impl DigestMethod {
    pub fn from_uri(uri: &str) -> Option<DigestMethod> {
        Some(match uri {
            "http://www.w3.org/2000/09/xmldsig#sha1" => DigestMethod::Sha1,
            "http://www.w3.org/2001/04/xmlenc#sha256" => DigestMethod::Sha256,
            "http://www.w3.org/2001/04/xmlenc#sha512" => DigestMethod::Sha512,
            _ => return None,
        })
    }

    pub fn uri(self) -> &'static str {
        match self {
            DigestMethod::Sha1 => "http://www.w3.org/2000/09/xmldsig#sha1",
            DigestMethod::Sha256 => "http://www.w3.org/2001/04/xmlenc#sha256",
            DigestMethod::Sha512 => "http://www.w3.org/2001/04/xmlenc#sha512",
        }
    }

    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            DigestMethod::Sha1 => Sha1::digest(bytes).to_vec(),
            DigestMethod::Sha256 => Sha256::digest(bytes).to_vec(),
            DigestMethod::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }

    /// The PKCS#1 v1.5 padding scheme (DigestInfo prefix) for this digest.
    pub fn pkcs1v15(self) -> Pkcs1v15Sign {
        match self {
            DigestMethod::Sha1 => Pkcs1v15Sign::new::<Sha1>(),
            DigestMethod::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            DigestMethod::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }
}

/// Signature algorithms (RSA PKCS#1 v1.5 only: what IHE DSG and the whitelist use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureMethod {
    RsaSha1,
    RsaSha256,
    RsaSha512,
}

impl SignatureMethod {
    pub fn from_uri(uri: &str) -> Option<SignatureMethod> {
        Some(match uri {
            "http://www.w3.org/2000/09/xmldsig#rsa-sha1" => SignatureMethod::RsaSha1,
            "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256" => SignatureMethod::RsaSha256,
            "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512" => SignatureMethod::RsaSha512,
            _ => return None,
        })
    }

    pub fn uri(self) -> &'static str {
        match self {
            SignatureMethod::RsaSha1 => "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
            SignatureMethod::RsaSha256 => "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            SignatureMethod::RsaSha512 => "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
        }
    }

    pub fn digest_method(self) -> DigestMethod {
        match self {
            SignatureMethod::RsaSha1 => DigestMethod::Sha1,
            SignatureMethod::RsaSha256 => DigestMethod::Sha256,
            SignatureMethod::RsaSha512 => DigestMethod::Sha512,
        }
    }

    /// Checks an RSA PKCS#1 v1.5 signature over `signed` (the canonical SignedInfo).
    pub fn verify(self, key: &RsaPublicKey, signed: &[u8], signature: &[u8]) -> bool {
        let d = self.digest_method();
        key.verify(d.pkcs1v15(), &d.digest(signed), signature)
            .is_ok()
    }
}

/// A transform of a reference's data, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transform {
    Canonicalize {
        method: C14nMethod,
        /// Exclusive C14N's InclusiveNamespaces PrefixList.
        inclusive_prefixes: Vec<String>,
    },
    /// Removes the enclosing Signature from the node-set.
    EnvelopedSignature,
    /// XPath Filter 2.0 `subtract /descendant::ds:Signature` (the whitelist's profile, DRIM-M
    /// §5.2): removes every ds:Signature of the document from the node-set. Only this one
    /// expression is implemented; any other Filter 2.0 is [`Transform::Unsupported`].
    SubtractSignatures,
    /// A transform we do not implement; verifying a reference that uses it fails.
    Unsupported(String),
}

/// A `Reference` as written (in SignedInfo or in a Manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub id: Option<String>,
    pub uri: String,
    pub reference_type: Option<String>,
    pub transforms: Vec<Transform>,
    /// `None` when the DigestMethod is not one we implement (its URI in `digest_uri`).
    pub digest_method: Option<DigestMethod>,
    pub digest_uri: String,
    pub digest_value: Vec<u8>,
    pub node: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInfo {
    pub node: NodeId,
    pub canonicalization: C14nMethod,
    pub inclusive_prefixes: Vec<String>,
    pub signature_method: SignatureMethod,
    pub references: Vec<Reference>,
}

/// A parsed `ds:Signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub node: NodeId,
    pub id: Option<String>,
    pub signed_info: SignedInfo,
    pub signature_value: Vec<u8>,
    /// `KeyInfo/X509Data/X509Certificate`, DER, in document order.
    pub certificates: Vec<Vec<u8>>,
}

fn dsig_child(doc: &Document, id: NodeId, local: &'static str) -> Result<NodeId, DsigError> {
    doc.child(id, DSIG_NS, local)
        .ok_or(DsigError::Missing(local))
}

fn algorithm(doc: &Document, id: NodeId, what: &'static str) -> Result<String, DsigError> {
    doc.element(id)
        .and_then(|e| e.attribute("Algorithm"))
        .map(str::to_string)
        .ok_or(DsigError::Missing(what))
}

fn base64(text: &str, what: &'static str) -> Result<Vec<u8>, DsigError> {
    crate::base64::decode(text.as_bytes()).map_err(|_| DsigError::Base64(what))
}

/// The PrefixList of an `ec:InclusiveNamespaces` child, if any.
fn inclusive_prefixes(doc: &Document, id: NodeId) -> Vec<String> {
    doc.child(id, C14nMethod::EXCLUSIVE, "InclusiveNamespaces")
        .and_then(|n| doc.element(n))
        .and_then(|e| e.attribute("PrefixList"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn parse_transforms(doc: &Document, reference: NodeId) -> Vec<Transform> {
    let Some(ts) = doc.child(reference, DSIG_NS, "Transforms") else {
        return Vec::new();
    };
    doc.children_named(ts, DSIG_NS, "Transform")
        .map(|t| {
            let uri = doc
                .element(t)
                .and_then(|e| e.attribute("Algorithm"))
                .unwrap_or("")
                .to_string();
            if let Some(method) = C14nMethod::from_uri(&uri) {
                Transform::Canonicalize {
                    method,
                    inclusive_prefixes: if method.is_exclusive() {
                        inclusive_prefixes(doc, t)
                    } else {
                        Vec::new()
                    },
                }
            } else if uri == ENVELOPED_SIGNATURE {
                Transform::EnvelopedSignature
            } else if uri == XPATH_FILTER2 {
                if subtracts_signatures(doc, t) {
                    Transform::SubtractSignatures
                } else {
                    Transform::Unsupported(format!(
                        "{uri} other than subtract /descendant::ds:Signature"
                    ))
                }
            } else {
                Transform::Unsupported(uri)
            }
        })
        .collect()
}

/// Whether a Filter 2.0 transform is exactly one `subtract` of `/descendant::P:Signature`,
/// `P` bound to the XMLDSig namespace where the expression is written.
fn subtracts_signatures(doc: &Document, transform: NodeId) -> bool {
    let xpaths: Vec<NodeId> = doc
        .children_named(transform, XPATH_FILTER2, "XPath")
        .collect();
    let [xpath] = xpaths.as_slice() else {
        return false;
    };
    if doc.element(*xpath).and_then(|e| e.attribute("Filter")) != Some("subtract") {
        return false;
    }
    let text = doc.text(*xpath);
    let Some(prefix) = text
        .trim()
        .strip_prefix("/descendant::")
        .and_then(|r| r.strip_suffix(":Signature"))
    else {
        return false;
    };
    doc.in_scope_namespaces(*xpath)
        .iter()
        .any(|(p, uri)| p == prefix && uri == DSIG_NS)
}

/// Every ds:Signature element of the document, in document order.
pub fn all_signatures(doc: &Document) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut stack = vec![doc.root()];
    while let Some(n) = stack.pop() {
        if doc.element(n).is_some_and(|e| e.is(DSIG_NS, "Signature")) {
            out.push(n);
        }
        let mut kids: Vec<NodeId> = doc.child_elements(n).collect();
        kids.reverse();
        stack.extend(kids);
    }
    out
}

/// Reads one `Reference` element.
pub fn parse_reference(doc: &Document, node: NodeId) -> Result<Reference, DsigError> {
    let e = doc.element(node).ok_or(DsigError::Missing("Reference"))?;
    let dm = dsig_child(doc, node, "DigestMethod")?;
    let digest_uri = algorithm(doc, dm, "DigestMethod/@Algorithm")?;
    let dv = dsig_child(doc, node, "DigestValue")?;
    Ok(Reference {
        id: e.attribute("Id").map(str::to_string),
        // An absent URI means the application knows the data (XMLDSig §4.4.3.1); we treat it
        // as unresolvable rather than guess.
        uri: e.attribute("URI").unwrap_or("").to_string(),
        reference_type: e.attribute("Type").map(str::to_string),
        transforms: parse_transforms(doc, node),
        digest_method: DigestMethod::from_uri(&digest_uri),
        digest_uri,
        digest_value: base64(&doc.text(dv), "DigestValue")?,
        node,
    })
}

/// Reads the `Signature` element `node`.
pub fn parse_signature(doc: &Document, node: NodeId) -> Result<Signature, DsigError> {
    let e = doc.element(node).ok_or(DsigError::NoSignature)?;
    if !e.is(DSIG_NS, "Signature") {
        return Err(DsigError::NoSignature);
    }
    let si = dsig_child(doc, node, "SignedInfo")?;
    let cm = dsig_child(doc, si, "CanonicalizationMethod")?;
    let cm_uri = algorithm(doc, cm, "CanonicalizationMethod/@Algorithm")?;
    let canonicalization =
        C14nMethod::from_uri(&cm_uri).ok_or(DsigError::UnsupportedCanonicalization(cm_uri))?;
    let sm = dsig_child(doc, si, "SignatureMethod")?;
    let sm_uri = algorithm(doc, sm, "SignatureMethod/@Algorithm")?;
    let signature_method =
        SignatureMethod::from_uri(&sm_uri).ok_or(DsigError::UnsupportedSignatureMethod(sm_uri))?;
    let references = doc
        .children_named(si, DSIG_NS, "Reference")
        .map(|r| parse_reference(doc, r))
        .collect::<Result<Vec<_>, _>>()?;
    if references.is_empty() {
        return Err(DsigError::Missing("SignedInfo/Reference"));
    }
    let sv = dsig_child(doc, node, "SignatureValue")?;
    let mut certificates = Vec::new();
    if let Some(ki) = doc.child(node, DSIG_NS, "KeyInfo") {
        for xd in doc.children_named(ki, DSIG_NS, "X509Data") {
            for c in doc.children_named(xd, DSIG_NS, "X509Certificate") {
                certificates.push(base64(&doc.text(c), "X509Certificate")?);
            }
        }
    }
    Ok(Signature {
        node,
        id: e.attribute("Id").map(str::to_string),
        signed_info: SignedInfo {
            node: si,
            inclusive_prefixes: if canonicalization.is_exclusive() {
                inclusive_prefixes(doc, cm)
            } else {
                Vec::new()
            },
            canonicalization,
            signature_method,
            references,
        },
        signature_value: base64(&doc.text(sv), "SignatureValue")?,
        certificates,
    })
}

/// The one `ds:Signature` of the document: the root itself (a detached lot signature) or
/// anywhere below it (enveloped). More than one is refused rather than picked from.
pub fn find_signature(doc: &Document) -> Result<NodeId, DsigError> {
    let mut found = Vec::new();
    let mut stack = vec![doc.root()];
    while let Some(n) = stack.pop() {
        if doc.element(n).is_some_and(|e| e.is(DSIG_NS, "Signature")) {
            found.push(n);
        }
        stack.extend(doc.child_elements(n));
    }
    match found.len() {
        0 => Err(DsigError::NoSignature),
        1 => Ok(found[0]),
        n => Err(DsigError::SeveralSignatures(n)),
    }
}

/// What a same-document URI selects.
enum Target {
    Document { comments: bool },
    Element { node: NodeId, comments: bool },
}

fn resolve(doc: &Document, uri: &str, id_attribute: &str) -> Result<Target, DsigError> {
    let unresolved = |error| DsigError::Unresolved {
        uri: uri.to_string(),
        error,
    };
    if uri.is_empty() {
        return Ok(Target::Document { comments: false });
    }
    let Some(fragment) = uri.strip_prefix('#') else {
        return Err(DsigError::UnsupportedReferenceUri(uri.to_string()));
    };
    if fragment == "xpointer(/)" {
        return Ok(Target::Document { comments: true });
    }
    if let Some(inner) = fragment
        .strip_prefix("xpointer(id(")
        .and_then(|r| r.strip_suffix("))"))
    {
        let id = inner
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| inner.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
            .ok_or_else(|| DsigError::UnsupportedReferenceUri(uri.to_string()))?;
        let node = doc.element_by_id(id_attribute, id).map_err(unresolved)?;
        return Ok(Target::Element {
            node,
            comments: true,
        });
    }
    if fragment.starts_with("xpointer(") {
        return Err(DsigError::UnsupportedReferenceUri(uri.to_string()));
    }
    let node = doc
        .element_by_id(id_attribute, fragment)
        .map_err(unresolved)?;
    Ok(Target::Element {
        node,
        comments: false,
    })
}

/// The octets a same-document reference digests: the URI's node-set through the transforms,
/// ending in inclusive C14N (without comments) when the transforms leave a node-set
/// (XMLDSig §4.4.3.2). `signature` is the enclosing Signature (for `enveloped-signature`).
/// Returns the data and the element the URI selected.
pub fn reference_data(
    doc: &Document,
    signature: NodeId,
    uri: &str,
    transforms: &[Transform],
    id_attribute: &str,
) -> Result<(Vec<u8>, Option<NodeId>), DsigError> {
    let target = resolve(doc, uri, id_attribute)?;
    let (apex, comments) = match target {
        Target::Document { comments } => (None, comments),
        Target::Element { node, comments } => (Some(node), comments),
    };
    let mut exclude = Vec::new();
    let mut octets: Option<Vec<u8>> = None;
    for t in transforms {
        match t {
            Transform::EnvelopedSignature => {
                if octets.is_some() {
                    return Err(DsigError::UnsupportedTransform(
                        "enveloped-signature after canonicalisation".into(),
                    ));
                }
                exclude.push(signature);
            }
            Transform::SubtractSignatures => {
                if octets.is_some() {
                    return Err(DsigError::UnsupportedTransform(
                        "XPath Filter 2.0 after canonicalisation".into(),
                    ));
                }
                exclude.extend(all_signatures(doc));
            }
            Transform::Canonicalize {
                method,
                inclusive_prefixes,
            } => {
                let out = match &octets {
                    // Octets in, node-set needed: parse them (§4.4.3.2), whole document.
                    Some(bytes) => {
                        let d = Document::parse(bytes)?;
                        Canonicalizer::new(*method)
                            .inclusive_prefixes(inclusive_prefixes)
                            .document(&d)
                    }
                    None => {
                        let mut c =
                            Canonicalizer::new(*method).inclusive_prefixes(inclusive_prefixes);
                        if !comments {
                            c = c.without_comments();
                        }
                        for x in &exclude {
                            c = c.excluding(*x);
                        }
                        match apex {
                            Some(a) => c.subtree(doc, a),
                            None => c.document(doc),
                        }
                    }
                };
                octets = Some(out);
            }
            Transform::Unsupported(u) => return Err(DsigError::UnsupportedTransform(u.clone())),
        }
    }
    let data = match octets {
        Some(o) => o,
        None => {
            let mut c = Canonicalizer::new(C14nMethod::Inclusive);
            for x in &exclude {
                c = c.excluding(*x);
            }
            match apex {
                Some(a) => c.subtree(doc, a),
                None => c.document(doc),
            }
        }
    };
    Ok((data, apex))
}

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The attribute that carries element identifiers (`Id` in XMLDSig and XAdES).
    pub id_attribute: String,
    /// Verify with this certificate (DER) instead of the first embedded X509Certificate.
    pub certificate: Option<Vec<u8>>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            id_attribute: "Id".into(),
            certificate: None,
        }
    }
}

/// The outcome of one SignedInfo reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceOutcome {
    pub uri: String,
    pub reference_type: Option<String>,
    /// The element the URI selected (`None` for the whole document or when unresolved): the
    /// caller reads signed content from there, not from a lookalike elsewhere.
    pub target: Option<NodeId>,
    pub result: Result<(), DsigError>,
}

/// A reference inside a Manifest, as written: the core verifier does not dereference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestReference {
    pub uri: String,
    pub transforms: Vec<Transform>,
    pub digest_method: Option<DigestMethod>,
    pub digest_uri: String,
    pub digest_value: Vec<u8>,
}

impl ManifestReference {
    /// Checks the reference against `bytes`, the document the caller holds for its URI. A
    /// canonicalisation transform (the IHE DSG reference to a CDA) canonicalises `bytes` as a
    /// whole XML document first; other transforms are not supported here.
    pub fn check(&self, bytes: &[u8]) -> Result<(), DsigError> {
        let dm = self
            .digest_method
            .ok_or_else(|| DsigError::UnsupportedDigestMethod(self.digest_uri.clone()))?;
        let mut data = bytes.to_vec();
        for t in &self.transforms {
            match t {
                Transform::Canonicalize {
                    method,
                    inclusive_prefixes,
                } => {
                    let d = Document::parse(&data)?;
                    data = Canonicalizer::new(*method)
                        .inclusive_prefixes(inclusive_prefixes)
                        .document(&d);
                }
                Transform::SubtractSignatures => {
                    return Err(DsigError::UnsupportedTransform(XPATH_FILTER2.into()))
                }
                Transform::EnvelopedSignature => {
                    return Err(DsigError::UnsupportedTransform(ENVELOPED_SIGNATURE.into()))
                }
                Transform::Unsupported(u) => {
                    return Err(DsigError::UnsupportedTransform(u.clone()))
                }
            }
        }
        if dm.digest(&data) == self.digest_value {
            Ok(())
        } else {
            Err(DsigError::DigestMismatch {
                uri: self.uri.clone(),
            })
        }
    }
}

/// A Manifest that a SignedInfo reference points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Index in [`Report::references`] of the reference that signs this Manifest: trust the
    /// Manifest only if that reference passed.
    pub signed_by: usize,
    pub id: Option<String>,
    pub references: Vec<ManifestReference>,
}

/// What verification found. [`Report::is_valid`] is the verdict; the parts say why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub signature: Signature,
    pub references: Vec<ReferenceOutcome>,
    /// The SignatureValue check.
    pub signature_value: Result<(), DsigError>,
    /// The certificate whose key was used (DER), when one was found.
    pub certificate: Option<Vec<u8>>,
    pub manifests: Vec<Manifest>,
}

impl Report {
    /// Every reference digest matches and the SignatureValue verifies.
    pub fn is_valid(&self) -> bool {
        self.signature_value.is_ok() && self.references.iter().all(|r| r.result.is_ok())
    }

    /// The first failure, if any.
    pub fn error(&self) -> Option<&DsigError> {
        self.references
            .iter()
            .find_map(|r| r.result.as_ref().err())
            .or(self.signature_value.as_ref().err())
    }

    /// `Ok(self)` if valid, else the first failure.
    pub fn into_result(self) -> Result<Report, DsigError> {
        match self.error() {
            Some(e) => Err(e.clone()),
            None => Ok(self),
        }
    }
}

fn check_reference(
    doc: &Document,
    signature: NodeId,
    r: &Reference,
    id_attribute: &str,
) -> (Option<NodeId>, Result<(), DsigError>) {
    let Some(dm) = r.digest_method else {
        return (
            None,
            Err(DsigError::UnsupportedDigestMethod(r.digest_uri.clone())),
        );
    };
    match reference_data(doc, signature, &r.uri, &r.transforms, id_attribute) {
        Err(e) => (None, Err(e)),
        Ok((data, target)) => {
            let result = if dm.digest(&data) == r.digest_value {
                Ok(())
            } else {
                Err(DsigError::DigestMismatch { uri: r.uri.clone() })
            };
            (target, result)
        }
    }
}

/// Verifies the signature `node` of `doc`. Structural problems (not a signature, unknown
/// SignedInfo algorithms) are an `Err`; digest and signature-value failures are in the report.
pub fn verify_signature(
    doc: &Document,
    node: NodeId,
    options: &VerifyOptions,
) -> Result<Report, DsigError> {
    let signature = parse_signature(doc, node)?;
    let mut references = Vec::new();
    let mut manifests = Vec::new();
    for (i, r) in signature.signed_info.references.iter().enumerate() {
        let (target, result) = check_reference(doc, node, r, &options.id_attribute);
        if let Some(t) = target {
            if doc.element(t).is_some_and(|e| e.is(DSIG_NS, "Manifest")) {
                let refs = doc
                    .children_named(t, DSIG_NS, "Reference")
                    .map(|m| parse_reference(doc, m))
                    .collect::<Result<Vec<_>, _>>()?;
                manifests.push(Manifest {
                    signed_by: i,
                    id: doc
                        .element(t)
                        .and_then(|e| e.attribute("Id"))
                        .map(str::to_string),
                    references: refs
                        .into_iter()
                        .map(|m| ManifestReference {
                            uri: m.uri,
                            transforms: m.transforms,
                            digest_method: m.digest_method,
                            digest_uri: m.digest_uri,
                            digest_value: m.digest_value,
                        })
                        .collect(),
                });
            }
        }
        references.push(ReferenceOutcome {
            uri: r.uri.clone(),
            reference_type: r.reference_type.clone(),
            target,
            result,
        });
    }
    let certificate = options
        .certificate
        .clone()
        .or_else(|| signature.certificates.first().cloned());
    let signature_value = match &certificate {
        None => Err(DsigError::NoCertificate),
        Some(der) => check_signature_value(doc, &signature, der),
    };
    Ok(Report {
        signature,
        references,
        signature_value,
        certificate,
        manifests,
    })
}

/// The canonical form of a SignedInfo with its own CanonicalizationMethod: the bytes the
/// SignatureValue signs.
pub fn canonical_signed_info(doc: &Document, signed_info: &SignedInfo) -> Vec<u8> {
    Canonicalizer::new(signed_info.canonicalization)
        .inclusive_prefixes(&signed_info.inclusive_prefixes)
        .subtree(doc, signed_info.node)
}

/// What a signer signs: the canonical SignedInfo of the one Signature of `doc` (found as
/// [`find_signature`] finds it).
pub fn signed_info_to_sign(doc: &Document) -> Result<Vec<u8>, DsigError> {
    let node = find_signature(doc)?;
    let parsed = parse_signature(doc, node)?;
    Ok(canonical_signed_info(doc, &parsed.signed_info))
}

fn check_signature_value(
    doc: &Document,
    signature: &Signature,
    certificate_der: &[u8],
) -> Result<(), DsigError> {
    let key = Certificate::from_der(certificate_der)?.rsa_public_key()?;
    let signed = canonical_signed_info(doc, &signature.signed_info);
    if signature
        .signed_info
        .signature_method
        .verify(&key, &signed, &signature.signature_value)
    {
        Ok(())
    } else {
        Err(DsigError::BadSignatureValue)
    }
}

/// Parses `document`, finds its one Signature and verifies it.
pub fn verify(document: &[u8], options: &VerifyOptions) -> Result<Report, DsigError> {
    let doc = Document::parse(document)?;
    let node = find_signature(&doc)?;
    verify_signature(&doc, node, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reference;

    fn flip(doc: &[u8], needle: &str) -> Vec<u8> {
        let text = String::from_utf8(doc.to_vec()).unwrap();
        let at = text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not found"));
        let mut out = doc.to_vec();
        // One byte changed inside the needle: its last character becomes another letter.
        let i = at + needle.len() - 1;
        out[i] = if out[i] == b'A' { b'B' } else { b'A' };
        out
    }

    #[test]
    fn the_reference_lot_signature_verifies() {
        let doc = reference::lot_signature();
        let report = verify(&doc, &VerifyOptions::default()).unwrap();
        assert!(report.is_valid(), "{:?}", report.error());
        assert_eq!(report.references.len(), 2);
        assert_eq!(report.references[0].uri, "#IHEManifest");
        assert_eq!(report.references[1].uri, "#S0-SignedProperties");
        assert_eq!(
            report.signature.signed_info.signature_method,
            SignatureMethod::RsaSha1
        );
        assert_eq!(report.manifests.len(), 1);
        let m = &report.manifests[0];
        assert_eq!(m.id.as_deref(), Some("IHEManifest"));
        assert_eq!(m.references.len(), 2);
        assert_eq!(m.references[0].uri, "urn:oid:1.2.250.1.999.1.1.8121.5.7122");
        assert_eq!(m.references[0].digest_value, vec![0]);
        assert_eq!(
            m.references[1].uri,
            "urn:oid:1.3.2.751468943.3.1234.56838.231114144457.1.1.1"
        );
        assert_eq!(
            crate::base64::encode(&m.references[1].digest_value),
            "WECMEWtRSXwPIITJDaPIXHCYRVo="
        );
        // The KOS the DMP received is the one the Manifest signs.
        let kos = reference::read("ref/ans/KOS/ko.dcm");
        assert_eq!(m.references[1].check(&kos), Ok(()));
        assert!(matches!(
            m.references[1].check(&kos[1..]),
            Err(DsigError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn one_byte_changes_are_caught() {
        let doc = reference::lot_signature();
        // In the Manifest (a DigestValue of a manifest reference).
        let r = verify(
            &flip(&doc, "WECMEWtRSXwPIITJDaPIXHCYRVo"),
            &VerifyOptions::default(),
        )
        .unwrap();
        assert!(!r.is_valid());
        assert!(matches!(
            r.references[0].result,
            Err(DsigError::DigestMismatch { .. })
        ));
        assert_eq!(r.references[1].result, Ok(()));
        // In SignedProperties (the signing time).
        let r = verify(
            &flip(&doc, "2023-11-14T14:44:58.15"),
            &VerifyOptions::default(),
        )
        .unwrap();
        assert_eq!(r.references[0].result, Ok(()));
        assert!(matches!(
            r.references[1].result,
            Err(DsigError::DigestMismatch { .. })
        ));
        assert_eq!(r.signature_value, Ok(()));
        // In SignatureValue.
        let r = verify(
            &flip(&doc, "<SignatureValue>fesnRRK86F"),
            &VerifyOptions::default(),
        )
        .unwrap();
        assert!(r.references.iter().all(|x| x.result.is_ok()));
        assert_eq!(r.signature_value, Err(DsigError::BadSignatureValue));
        assert_eq!(r.into_result().unwrap_err(), DsigError::BadSignatureValue);
        // In SignedInfo (a digest value there breaks the digest check and the signature).
        let r = verify(
            &flip(&doc, "Ld0oRmk8gJSRgNkiTaIFEWemrOo"),
            &VerifyOptions::default(),
        )
        .unwrap();
        assert!(r.references[0].result.is_err());
        assert_eq!(r.signature_value, Err(DsigError::BadSignatureValue));
    }

    #[test]
    fn a_given_certificate_overrides_the_embedded_one() {
        let doc = reference::lot_signature();
        let pem =
            String::from_utf8(reference::read("ref/pki/igc-sante-test-ACI-EL-ORG.pem")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let options = VerifyOptions {
            certificate: Some(crate::base64::decode(b64.as_bytes()).unwrap()),
            ..VerifyOptions::default()
        };
        let r = verify(&doc, &options).unwrap();
        assert_eq!(r.signature_value, Err(DsigError::BadSignatureValue));
    }

    #[test]
    fn xdm_sign_1_references_verify_without_its_redacted_certificate() {
        let doc = reference::read("ref/ans/XDM/KA202401/IHE_XDM/SS000001/SIGN_1.XML");
        // The certificate is redacted (`XXXXXXXXX`, which is not even base64).
        assert_eq!(
            verify(&doc, &VerifyOptions::default()),
            Err(DsigError::Base64("X509Certificate"))
        );
        let d = Document::parse(&doc).unwrap();
        let sig = find_signature(&d).unwrap();
        let si = dsig_child(&d, sig, "SignedInfo").unwrap();
        for r in d.children_named(si, DSIG_NS, "Reference") {
            let r = parse_reference(&d, r).unwrap();
            assert_eq!(check_reference(&d, sig, &r, "Id").1, Ok(()), "{}", r.uri);
        }
    }

    #[test]
    fn structural_errors_are_typed() {
        assert_eq!(
            verify(b"<a/>", &VerifyOptions::default()),
            Err(DsigError::NoSignature)
        );
        let two =
            format!("<a><Signature xmlns=\"{DSIG_NS}\"/><Signature xmlns=\"{DSIG_NS}\"/></a>");
        assert_eq!(
            verify(two.as_bytes(), &VerifyOptions::default()),
            Err(DsigError::SeveralSignatures(2))
        );
        let doc = String::from_utf8(reference::lot_signature())
            .unwrap()
            .replace("xmldsig#rsa-sha1", "xmldsig#dsa-sha1");
        assert!(matches!(
            verify(doc.as_bytes(), &VerifyOptions::default()),
            Err(DsigError::UnsupportedSignatureMethod(_))
        ));
        // A second element with the Manifest's Id: ambiguous, refused.
        let doc = String::from_utf8(reference::lot_signature())
            .unwrap()
            .replace(
                "<Object><SignatureProperties>",
                "<Object Id=\"IHEManifest\"><SignatureProperties>",
            );
        let r = verify(doc.as_bytes(), &VerifyOptions::default()).unwrap();
        assert!(matches!(
            r.references[0].result,
            Err(DsigError::Unresolved {
                error: XmlError::DuplicateId { .. },
                ..
            })
        ));
    }
}
