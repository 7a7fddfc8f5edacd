//! The VIHF ("Vecteur d'Identification et d'Habilitation Formelle", DRIM-M §2.3): the SAML 2.0
//! assertion the box puts in the WS-Security header of every DMP request (§2.2), signed with the
//! practice's signature certificate.
//!
//! Pure: the assertion id and the issue instant are inputs (no clock, no randomness here), so
//! the same inputs and key give the same bytes (PKCS#1 v1.5 is deterministic).
//!
//! Shape: that of the VIHF in `publication.xml`, which the DMP test platform accepted (same
//! attributes in the same order), with these deliberate differences:
//! * `urn:oasis:names:tc:xspa:1.0:subject:subject-id` is the *user or system* name; the
//!   reference implementation puts the patient's name there (DRIM-M §6.1 item 5);
//! * roles come from the caller (configuration), never from constants here;
//! * the `ID` is an xsd:ID (`_` + UUID), where the reference writes a bare UUID, which is not
//!   one when it starts with a digit (SAML declares `ID` as xsd:ID, and xmlsec-style verifiers
//!   look it up as such);
//! * no pretty-printing whitespace, namespaces declared once on the Assertion (the sample
//!   re-declares `saml2` on each child and `xsi` on each CE value: same canonical form), and
//!   an empty `codeSystemName` is left out rather than written `codeSystemName=""`.
//!
//! The signature is enveloped and uses exclusive C14N both for SignedInfo and for the reference,
//! so it stays valid once the assertion is embedded in the SOAP envelope: the envelope's
//! namespaces do not enter the canonical forms. [`build_vihf`] checks exactly that with our own
//! verifier, standalone and embedded, before returning.
//!
//! Built in two steps like the lot signature (`signing::lot`): [`prepare_vihf`] writes the
//! assertion and the canonical SignedInfo to sign; [`UnsignedVihf::finish`] inserts the value.

use crate::cda::CdaHeader;
use crate::hl7::report::Report;
use crate::pki::Certificate;
use crate::signing::{IdentityError, SignatureAlgorithm, SigningIdentity};
use crate::xml::dsig::{self, DsigError, Transform, VerifyOptions};
use crate::xml::{C14nMethod, Document, NodeId, XmlError};

pub const SAML2_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub const HL7_V3_NS: &str = "urn:hl7-org:v3";
/// The attribute that carries the assertion's identifier (SAML `ID`, not XMLDSig's `Id`).
pub const ID_ATTRIBUTE: &str = "ID";
pub const ISSUER_FORMAT: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName";
pub const AUTHN_CONTEXT_CLASS: &str = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient";
/// The VIHF version of the current DMP guide and of the accepted sample (DRIM-M §2.3, §9.3).
pub const VIHF_VERSION: &str = "3.0";
pub const RESSOURCE_URN: &str = "urn:dmp";
/// Publish, replace and unpublish by the box (the consumer side uses `INDIRECTE_RENFORCEE`).
pub const AUTHENTICATION_INDIRECT: &str = "INDIRECTE";
/// The NameID allowed when no person is known (IG-HL7 mapping).
pub const AUTOMATE: &str = "AUTOMATE";
/// TRE_R02 (JDV_J61, secteur d'activité): the scheme of Secteur_Activite.
pub const SECTOR_SCHEME: &str = "1.2.250.1.71.4.2.4";

/// Attribute names, in the order of the accepted sample.
pub const ATTR_VIHF_VERSION: &str = "VIHF_Version";
pub const ATTR_SECTOR: &str = "Secteur_Activite";
pub const ATTR_RESSOURCE_URN: &str = "Ressource_URN";
pub const ATTR_SUBJECT_ID: &str = "urn:oasis:names:tc:xspa:1.0:subject:subject-id";
pub const ATTR_STRUCTURE: &str = "Identifiant_Structure";
pub const ATTR_LPS_ID: &str = "LPS_ID";
pub const ATTR_LPS_NAME: &str = "LPS_Nom";
pub const ATTR_LPS_HOMOLOGATION: &str = "LPS_ID_HOMOLOGATION_DMP";
pub const ATTR_LPS_VERSION: &str = "LPS_Version";
pub const ATTR_RESOURCE_ID: &str = "urn:oasis:names:tc:xacml:2.0:resource:resource-id";
pub const ATTR_AUTHENTICATION_MODE: &str = "Authentification_Mode";
pub const ATTR_PURPOSE_OF_USE: &str = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse";
pub const ATTR_ROLE: &str = "urn:oasis:names:tc:xacml:2.0:subject:role";
pub const ATTR_CONFIDENTIALITY: &str =
    "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code";

#[derive(Debug, thiserror::Error)]
pub enum VihfError {
    #[error("the assertion ID `{0}` is not an xsd:ID (a letter or `_`, then letters, digits, `.`, `-`, `_`)")]
    NotAnId(String),
    #[error("the issue instant `{0}` is not a UTC xsd:dateTime (YYYY-MM-DDThh:mm:ss[.s+]Z)")]
    IssueInstant(String),
    #[error("the VIHF field {0} is empty")]
    Empty(&'static str),
    #[error("the VIHF field {field} holds the character U+{code:04X}, which XML 1.0 cannot carry")]
    Character { field: &'static str, code: u32 },
    #[error("no role: the VIHF needs at least the profession (configuration)")]
    NoRole,
    #[error("our own assertion does not parse (a bug): {0}")]
    Xml(#[from] XmlError),
    #[error("computing the reference digest of our own assertion (a bug): {0}")]
    Reference(DsigError),
    #[error(transparent)]
    Sign(#[from] IdentityError),
    #[error("the signed assertion fails our own verification {context} (a bug, or a key/certificate problem): {source}")]
    SelfCheck {
        context: &'static str,
        source: DsigError,
    },
}

/// An HL7 v3 CE value (`code`, `codeSystem`, `codeSystemName`, `displayName`), written as
/// `<Role|PurposeOfUse|ConfidentialityCode xmlns="urn:hl7-org:v3" xsi:type="CE" …/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedValue {
    pub code: String,
    pub code_system: String,
    /// Left out when empty.
    pub code_system_name: String,
    pub display_name: String,
}

impl CodedValue {
    pub fn new(code: &str, code_system: &str, display_name: &str) -> CodedValue {
        CodedValue {
            code: code.to_string(),
            code_system: code_system.to_string(),
            code_system_name: String::new(),
            display_name: display_name.to_string(),
        }
    }

    /// PurposeOfUse "normal access", the one the box uses (DRIM-M §2.3, as in the sample).
    pub fn normal_access() -> CodedValue {
        CodedValue {
            code: "normal".into(),
            code_system: "1.2.250.1.213.1.1.4.248".into(),
            code_system_name: "mode acces VIHF 1.0".into(),
            display_name: "Acces normal".into(),
        }
    }
}

/// The software that issues the VIHF (LPS_* attributes): from the box's build and its DMP
/// homologation, i.e. configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lps {
    /// LPS_ID: the installation's identifier (serial number).
    pub id: String,
    /// LPS_Nom: `DRIMbox`.
    pub name: String,
    /// LPS_Version: the firmware version.
    pub version: String,
    /// LPS_ID_HOMOLOGATION_DMP: the DMP homologation number.
    pub homologation: String,
}

/// Everything a VIHF says. Sources per DRIM-M §2.3 "Where each field comes from"; see
/// [`from_report`] for the mapping from a report message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VihfInput {
    /// Assertion `ID` (and the signature's Reference URI): an xsd:ID, `_` + a fresh UUID.
    pub assertion_id: String,
    /// `IssueInstant` and `AuthnInstant`: UTC xsd:dateTime, e.g. `2026-12-02T10:00:00Z`.
    pub issue_instant: String,
    /// Subject/NameID: the author's RPPS/ADELI id (PRT-5.1, else CDA
    /// `author/assignedAuthor/id/@extension`), or [`AUTOMATE`].
    pub name_id: String,
    /// subject-id: the user's (or system's) name, "Given Family" (PRT-5.3 + 5.2, else the CDA
    /// author's name). Never the patient's.
    pub subject_id: String,
    /// Identifiant_Structure: PRT-8.10, else CDA `representedOrganization/id/@extension`.
    pub structure_id: String,
    /// Secteur_Activite as (code, scheme), written `code^scheme`: the CDA healthCareFacility
    /// code (JDV_J61), e.g. (`SA25`, [`SECTOR_SCHEME`]).
    pub sector: (String, String),
    /// Role values: occurrence 1 the profession (TRE_G15 via JDV_J65), occurrence 2 the
    /// savoir-faire (TRE_R01) for doctors. From configuration: messages do not carry them.
    pub roles: Vec<CodedValue>,
    /// resource-id: the patient's INS from PID-3, `<INS>^^^&<oid>&ISO^NH`.
    pub resource_id: String,
    /// Authentification_Mode: [`AUTHENTICATION_INDIRECT`] for the box's own requests.
    pub authentication_mode: String,
    /// PurposeOfUse: [`CodedValue::normal_access`].
    pub purpose_of_use: CodedValue,
    pub lps: Lps,
    /// VIHF_Version: [`VIHF_VERSION`].
    pub vihf_version: String,
    /// confidentiality-code values: only for a "connexion secrète" request (DMP guide); empty
    /// leaves the attribute out.
    pub confidentiality_codes: Vec<CodedValue>,
}

/// What the VIHF takes from configuration rather than from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VihfSettings {
    pub lps: Lps,
    /// Profession, then savoir-faire (see [`VihfInput::roles`]).
    pub roles: Vec<CodedValue>,
}

/// The first non-empty (after trimming) of `candidates`.
fn first_non_empty<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(str::trim)
        .find(|s| !s.is_empty())
}

fn full_name(given: &str, family: &str) -> String {
    [given.trim(), family.trim()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The VIHF of a request made for `report` (and its CDA `cda`), per the IG-HL7 mapping: the
/// PRT `SB` segment first, the CDA header when the message lacks a field. Nothing is invented:
/// a field found in neither stays empty and [`build_vihf`] refuses it, except the NameID
/// ([`AUTOMATE`], allowed when no person is known) and then the subject-id (the software's
/// name: the system acts).
pub fn from_report(
    report: &Report,
    cda: &CdaHeader,
    settings: &VihfSettings,
    assertion_id: &str,
    issue_instant: &str,
) -> VihfInput {
    let sender = report.sender.as_ref();
    let sender_id = sender.map_or("", |s| s.id.as_str());
    let name_id = first_non_empty([sender_id, cda.author_id.extension.as_str()]);
    let sender_name = sender.map_or(String::new(), |s| full_name(&s.given, &s.family));
    let author_name = full_name(&cda.author_name.given, &cda.author_name.family);
    let subject_id = match first_non_empty([sender_name.as_str(), author_name.as_str()]) {
        Some(n) => n.to_string(),
        // An AUTOMATE request: the system is the user.
        None if name_id.is_none() => settings.lps.name.clone(),
        None => String::new(),
    };
    let structure_id = first_non_empty([
        sender.map_or("", |s| s.structure_id.as_str()),
        cda.organization_id.extension.as_str(),
    ])
    .unwrap_or("");
    let sector_scheme =
        first_non_empty([cda.facility_type.code_system.as_str()]).unwrap_or(SECTOR_SCHEME);
    VihfInput {
        assertion_id: assertion_id.to_string(),
        issue_instant: issue_instant.to_string(),
        name_id: name_id.unwrap_or(AUTOMATE).to_string(),
        subject_id,
        structure_id: structure_id.to_string(),
        sector: (
            cda.facility_type.code.trim().to_string(),
            sector_scheme.to_string(),
        ),
        roles: settings.roles.clone(),
        resource_id: format!("{}^^^&{}&ISO^NH", report.ins.id, report.ins.oid),
        authentication_mode: AUTHENTICATION_INDIRECT.to_string(),
        purpose_of_use: CodedValue::normal_access(),
        lps: settings.lps.clone(),
        vihf_version: VIHF_VERSION.to_string(),
        confidentiality_codes: Vec::new(),
    }
}

/// An xsd:ID (NCName), restricted to ASCII: it also lands in a URI fragment.
fn check_id(id: &str) -> Result<(), VihfError> {
    let mut bytes = id.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && id.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(VihfError::NotAnId(id.to_string()))
    }
}

/// `YYYY-MM-DDThh:mm:ss[.fraction]Z`: SAML requires UTC without offset (SAML core §1.3.3).
fn check_instant(t: &str) -> Result<(), VihfError> {
    let bad = || VihfError::IssueInstant(t.to_string());
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return Err(bad());
    }
    let rest = &t[19..];
    let ok = match rest.strip_prefix('.') {
        Some(frac) => {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            n > 0 && &frac[n..] == "Z"
        }
        None => rest == "Z",
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Refuses what XML 1.0 cannot carry (C0 controls other than tab, LF, CR; U+FFFE, U+FFFF):
/// escaping cannot help there, the document would not parse.
fn check_chars(field: &'static str, value: &str) -> Result<(), VihfError> {
    match value.chars().find(|&c| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    }) {
        Some(c) => Err(VihfError::Character {
            field,
            code: c as u32,
        }),
        None => Ok(()),
    }
}

fn check_required(field: &'static str, value: &str) -> Result<(), VihfError> {
    if value.trim().is_empty() {
        return Err(VihfError::Empty(field));
    }
    check_chars(field, value)
}

fn check_coded(field: &'static str, c: &CodedValue) -> Result<(), VihfError> {
    check_required(field, &c.code)?;
    check_required(field, &c.code_system)?;
    check_chars(field, &c.code_system_name)?;
    check_chars(field, &c.display_name)
}

fn check_input(input: &VihfInput) -> Result<(), VihfError> {
    check_id(&input.assertion_id)?;
    check_instant(&input.issue_instant)?;
    check_required("NameID", &input.name_id)?;
    check_required(ATTR_SUBJECT_ID, &input.subject_id)?;
    check_required(ATTR_STRUCTURE, &input.structure_id)?;
    check_required("Secteur_Activite code", &input.sector.0)?;
    check_required("Secteur_Activite scheme", &input.sector.1)?;
    check_required(ATTR_RESOURCE_ID, &input.resource_id)?;
    check_required(ATTR_AUTHENTICATION_MODE, &input.authentication_mode)?;
    check_required(ATTR_VIHF_VERSION, &input.vihf_version)?;
    check_required(ATTR_LPS_NAME, &input.lps.name)?;
    check_required(ATTR_LPS_HOMOLOGATION, &input.lps.homologation)?;
    // LPS_ID and LPS_Version are optional in the DMP guide, but the sample carries them and
    // an empty value says nothing: the attributes are always written, so require them.
    check_required(ATTR_LPS_ID, &input.lps.id)?;
    check_required(ATTR_LPS_VERSION, &input.lps.version)?;
    check_coded(ATTR_PURPOSE_OF_USE, &input.purpose_of_use)?;
    if input.roles.is_empty() {
        return Err(VihfError::NoRole);
    }
    for r in &input.roles {
        check_coded(ATTR_ROLE, r)?;
    }
    for c in &input.confidentiality_codes {
        check_coded(ATTR_CONFIDENTIALITY, c)?;
    }
    Ok(())
}

/// Escapes text content. `\r` as a reference: a literal one would become `\n` when parsed.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an attribute value (between double quotes). Tab, LF and CR as references: literal
/// ones would be normalised to spaces when parsed.
fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

fn coded(element: &str, c: &CodedValue) -> String {
    let mut out = format!(
        "<saml2:AttributeValue><{element} xmlns=\"{HL7_V3_NS}\" code=\"{}\" codeSystem=\"{}\"",
        attr(&c.code),
        attr(&c.code_system)
    );
    if !c.code_system_name.is_empty() {
        out.push_str(&format!(
            " codeSystemName=\"{}\"",
            attr(&c.code_system_name)
        ));
    }
    out.push_str(&format!(
        " displayName=\"{}\" xsi:type=\"CE\"/></saml2:AttributeValue>",
        attr(&c.display_name)
    ));
    out
}

fn attribute(name: &str, values: &[String]) -> String {
    format!(
        "<saml2:Attribute Name=\"{}\">{}</saml2:Attribute>",
        attr(name),
        values.concat()
    )
}

fn string_value(v: &str) -> String {
    format!("<saml2:AttributeValue>{}</saml2:AttributeValue>", text(v))
}

/// The AttributeStatement, attributes in the sample's order.
fn attribute_statement(input: &VihfInput) -> String {
    let s = |v: &str| vec![string_value(v)];
    let mut out = String::from("<saml2:AttributeStatement>");
    for (name, values) in [
        (ATTR_VIHF_VERSION, s(&input.vihf_version)),
        (
            ATTR_SECTOR,
            s(&format!("{}^{}", input.sector.0, input.sector.1)),
        ),
        (ATTR_RESSOURCE_URN, s(RESSOURCE_URN)),
        (ATTR_SUBJECT_ID, s(&input.subject_id)),
        (ATTR_STRUCTURE, s(&input.structure_id)),
        (ATTR_LPS_ID, s(&input.lps.id)),
        (ATTR_LPS_NAME, s(&input.lps.name)),
        (ATTR_LPS_HOMOLOGATION, s(&input.lps.homologation)),
        (ATTR_LPS_VERSION, s(&input.lps.version)),
        (ATTR_RESOURCE_ID, s(&input.resource_id)),
        (ATTR_AUTHENTICATION_MODE, s(&input.authentication_mode)),
        (
            ATTR_PURPOSE_OF_USE,
            vec![coded("PurposeOfUse", &input.purpose_of_use)],
        ),
        (
            ATTR_ROLE,
            input.roles.iter().map(|r| coded("Role", r)).collect(),
        ),
    ] {
        out.push_str(&attribute(name, &values));
    }
    if !input.confidentiality_codes.is_empty() {
        let values: Vec<String> = input
            .confidentiality_codes
            .iter()
            .map(|c| coded("ConfidentialityCode", c))
            .collect();
        out.push_str(&attribute(ATTR_CONFIDENTIALITY, &values));
    }
    out.push_str("</saml2:AttributeStatement>");
    out
}

/// The assertion around its SignatureValue, as (head, tail). The id was checked to be an
/// xsd:ID and the instant an xsd:dateTime, so they need no escaping.
fn write(
    input: &VihfInput,
    issuer: &str,
    certificate_b64: &str,
    algorithm: SignatureAlgorithm,
    digest_value: &str,
) -> (String, String) {
    let id = &input.assertion_id;
    let t = &input.issue_instant;
    let head = format!(
        "<saml2:Assertion xmlns:saml2=\"{SAML2_NS}\" xmlns:xsi=\"{XSI_NS}\" ID=\"{id}\" IssueInstant=\"{t}\" Version=\"2.0\">\
         <saml2:Issuer Format=\"{ISSUER_FORMAT}\">{issuer}</saml2:Issuer>\
         <ds:Signature xmlns:ds=\"{ds}\"><ds:SignedInfo>\
         <ds:CanonicalizationMethod Algorithm=\"{exc}\"/>\
         <ds:SignatureMethod Algorithm=\"{sm}\"/>\
         <ds:Reference URI=\"#{id}\"><ds:Transforms>\
         <ds:Transform Algorithm=\"{env}\"/><ds:Transform Algorithm=\"{exc}\"/>\
         </ds:Transforms><ds:DigestMethod Algorithm=\"{dm}\"/><ds:DigestValue>{digest_value}</ds:DigestValue>\
         </ds:Reference></ds:SignedInfo><ds:SignatureValue>",
        issuer = text(issuer),
        ds = dsig::DSIG_NS,
        exc = C14nMethod::EXCLUSIVE,
        env = dsig::ENVELOPED_SIGNATURE,
        sm = algorithm.signature_method().uri(),
        dm = algorithm.digest_method().uri(),
    );
    let tail = format!(
        "</ds:SignatureValue><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{certificate_b64}</ds:X509Certificate>\
         </ds:X509Data></ds:KeyInfo></ds:Signature>\
         <saml2:Subject><saml2:NameID>{name_id}</saml2:NameID></saml2:Subject>\
         <saml2:AuthnStatement AuthnInstant=\"{t}\"><saml2:AuthnContext>\
         <saml2:AuthnContextClassRef>{AUTHN_CONTEXT_CLASS}</saml2:AuthnContextClassRef>\
         </saml2:AuthnContext></saml2:AuthnStatement>\
         {statement}</saml2:Assertion>",
        name_id = text(&input.name_id),
        statement = attribute_statement(input),
    );
    (head, tail)
}

/// The transforms the reference declares, as the verifier reads them.
fn reference_transforms() -> [Transform; 2] {
    [
        Transform::EnvelopedSignature,
        Transform::Canonicalize {
            method: C14nMethod::Exclusive,
            inclusive_prefixes: Vec::new(),
        },
    ]
}

/// A VIHF without its SignatureValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedVihf {
    /// The assertion up to `<ds:SignatureValue>` included.
    head: String,
    /// The assertion from `</ds:SignatureValue>` on.
    tail: String,
    signed_info: Vec<u8>,
    algorithm: SignatureAlgorithm,
}

impl UnsignedVihf {
    /// The canonical (exclusive) SignedInfo: the bytes the SignatureValue signs.
    pub fn signed_info(&self) -> &[u8] {
        &self.signed_info
    }

    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The assertion with `signature_value` (raw RSA signature bytes) in place.
    pub fn finish(&self, signature_value: &[u8]) -> String {
        let mut out = String::with_capacity(self.head.len() + self.tail.len() + 512);
        out.push_str(&self.head);
        out.push_str(&crate::base64::encode(signature_value));
        out.push_str(&self.tail);
        out
    }
}

/// Writes the VIHF for `input`, signed by the holder of `certificate` (its Issuer and
/// KeyInfo), without its SignatureValue.
pub fn prepare_vihf(
    input: &VihfInput,
    certificate: &Certificate,
    algorithm: SignatureAlgorithm,
) -> Result<UnsignedVihf, VihfError> {
    check_input(input)?;
    let issuer = certificate.subject();
    let certificate_b64 = crate::base64::encode(certificate.der());
    let dm = algorithm.digest_method();

    // 1. The enveloped-signature transform takes the Signature out of what is digested, so
    //    the digest does not depend on the DigestValue: compute it on a draft with none, with
    //    the verifier's own dereferencing (what we digest is what a verifier digests).
    let (head, tail) = write(input, &issuer, &certificate_b64, algorithm, "");
    let draft = Document::parse(format!("{head}{tail}").as_bytes())?;
    let signature = dsig::find_signature(&draft).map_err(VihfError::Reference)?;
    let (data, _) = dsig::reference_data(
        &draft,
        signature,
        &format!("#{}", input.assertion_id),
        &reference_transforms(),
        ID_ATTRIBUTE,
    )
    .map_err(VihfError::Reference)?;
    let digest = crate::base64::encode(&dm.digest(&data));

    // 2. The final assertion without its value, and the canonical SignedInfo to sign.
    let (head, tail) = write(input, &issuer, &certificate_b64, algorithm, &digest);
    let doc = Document::parse(format!("{head}{tail}").as_bytes())?;
    let signed_info = dsig::signed_info_to_sign(&doc).map_err(VihfError::Reference)?;
    Ok(UnsignedVihf {
        head,
        tail,
        signed_info,
        algorithm,
    })
}

/// `assertion` inside a SOAP 1.2 envelope whose ancestors declare other namespaces (a default
/// one, `xsi`, `ds` and `saml2` with the same URIs, the DMP header's ones): where exclusive
/// C14N must keep the signature valid.
fn embedded_for_check(assertion: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:urn=\"{HL7_V3_NS}\" \
         xmlns=\"urn:drimbox:self-check\" xmlns:xsi=\"{XSI_NS}\" xmlns:ds=\"{}\" xmlns:saml2=\"{SAML2_NS}\">\
         <soap:Header><Action xmlns=\"http://www.w3.org/2005/08/addressing\">urn:drimbox:self-check</Action>\
         <wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\">\
         {assertion}</wsse:Security></soap:Header><soap:Body/></soap:Envelope>",
        dsig::DSIG_NS
    )
}

/// Verifies the one signature of `document` with `certificate`, and that its reference
/// selects the element `expected` says (the assertion): a valid signature over something else
/// is no check of ours.
fn self_check(
    document: &str,
    certificate: &Certificate,
    context: &'static str,
    expected: impl Fn(&Document) -> Option<NodeId>,
) -> Result<(), VihfError> {
    let fail = |source| VihfError::SelfCheck { context, source };
    let doc = Document::parse(document.as_bytes()).map_err(|e| fail(DsigError::Xml(e)))?;
    let node = dsig::find_signature(&doc).map_err(fail)?;
    let options = VerifyOptions {
        id_attribute: ID_ATTRIBUTE.into(),
        certificate: Some(certificate.der().to_vec()),
    };
    let report = dsig::verify_signature(&doc, node, &options)
        .and_then(dsig::Report::into_result)
        .map_err(fail)?;
    let target = report.references.first().and_then(|r| r.target);
    if report.references.len() != 1 || target.is_none() || target != expected(&doc) {
        return Err(fail(DsigError::Missing("a reference to the Assertion")));
    }
    Ok(())
}

/// The signed VIHF: a `saml2:Assertion` element without XML declaration, to embed in the
/// `wsse:Security` header. Verified with our verifier, standalone and embedded, before return.
pub fn build_vihf(
    input: &VihfInput,
    identity: &SigningIdentity,
    algorithm: SignatureAlgorithm,
) -> Result<String, VihfError> {
    let certificate = identity.certificate();
    let unsigned = prepare_vihf(input, certificate, algorithm)?;
    let value = identity.sign(algorithm, unsigned.signed_info())?;
    let assertion = unsigned.finish(&value);
    // Never hand out an assertion our own verifier rejects, alone or where it will travel.
    self_check(&assertion, certificate, "standalone", |d| Some(d.root()))?;
    self_check(
        &embedded_for_check(&assertion),
        certificate,
        "inside a SOAP envelope",
        |d| d.element_by_id(ID_ATTRIBUTE, &input.assertion_id).ok(),
    )?;
    Ok(assertion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reference;

    fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
        let i = s.find(a).unwrap() + a.len();
        &s[i..i + s[i..].find(b).unwrap()]
    }

    /// The signature certificate of the agency's lot signature: the same practice as the
    /// sample's VIHF Issuer.
    fn reference_certificate() -> Certificate {
        let doc = String::from_utf8(reference::lot_signature()).unwrap();
        let der = crate::base64::decode(
            between(&doc, "<X509Certificate>", "</X509Certificate>").as_bytes(),
        )
        .unwrap();
        Certificate::from_der(&der).unwrap()
    }

    /// The sample VIHF (`publication.xml` part `<0.1>`).
    fn sample_assertion() -> String {
        let p = String::from_utf8(reference::read("ref/ans/XDS/publication.xml")).unwrap();
        let start = p.find("<saml2:Assertion").unwrap();
        let end = p.find("</saml2:Assertion>").unwrap() + "</saml2:Assertion>".len();
        p[start..end].to_string()
    }

    fn lps() -> Lps {
        Lps {
            id: "DRB-0001".into(),
            name: "DRIMbox".into(),
            version: "0.9.0".into(),
            homologation: "BCO-465897-tmp2".into(),
        }
    }

    fn roles() -> Vec<CodedValue> {
        vec![
            CodedValue::new("10", "1.2.250.1.71.1.2.7", "Medecin"),
            CodedValue::new(
                "SM26",
                "1.2.250.1.71.4.2.5",
                "Qualifie en Medecine Generale (SM)",
            ),
        ]
    }

    fn input() -> VihfInput {
        VihfInput {
            assertion_id: "_f6056f97-a487-4d36-9244-11db8c7d6372".into(),
            issue_instant: "2023-11-14T13:44:58.116Z".into(),
            name_id: "899700367909".into(),
            subject_id: "Jean-Noël D'Aubigné & <Fils>".into(),
            structure_id: "499700367909006".into(),
            sector: ("SA25".into(), SECTOR_SCHEME.into()),
            roles: roles(),
            resource_id: "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH".into(),
            authentication_mode: AUTHENTICATION_INDIRECT.into(),
            purpose_of_use: CodedValue::normal_access(),
            lps: lps(),
            vihf_version: VIHF_VERSION.into(),
            confidentiality_codes: Vec::new(),
        }
    }

    fn assertion_of(xml: &str) -> (Document, NodeId) {
        let doc = Document::parse(xml.as_bytes()).unwrap();
        let mut stack = vec![doc.root()];
        while let Some(n) = stack.pop() {
            if doc.element(n).is_some_and(|e| e.is(SAML2_NS, "Assertion")) {
                return (doc, n);
            }
            stack.extend(doc.child_elements(n));
        }
        panic!("no Assertion");
    }

    /// (local name of each child of the assertion, attribute Names in order).
    fn outline(xml: &str) -> (Vec<String>, Vec<String>) {
        let (doc, a) = assertion_of(xml);
        let children = doc
            .child_elements(a)
            .map(|c| doc.element(c).unwrap().local.clone())
            .collect();
        let statement = doc.child(a, SAML2_NS, "AttributeStatement").unwrap();
        let names = doc
            .children_named(statement, SAML2_NS, "Attribute")
            .map(|c| {
                doc.element(c)
                    .unwrap()
                    .attribute("Name")
                    .unwrap()
                    .to_string()
            })
            .collect();
        (children, names)
    }

    fn attribute_values(xml: &str, name: &str) -> Vec<NodeId> {
        let (doc, a) = assertion_of(xml);
        let statement = doc.child(a, SAML2_NS, "AttributeStatement").unwrap();
        let attr = doc
            .children_named(statement, SAML2_NS, "Attribute")
            .find(|c| doc.element(*c).unwrap().attribute("Name") == Some(name))
            .unwrap();
        doc.children_named(attr, SAML2_NS, "AttributeValue")
            .collect()
    }

    fn unsigned(input: &VihfInput, algorithm: SignatureAlgorithm) -> UnsignedVihf {
        prepare_vihf(input, &reference_certificate(), algorithm).unwrap()
    }

    #[test]
    fn same_outline_as_the_accepted_sample() {
        let ours = unsigned(&input(), SignatureAlgorithm::RsaSha1).finish(&[1, 2, 3]);
        let sample = sample_assertion();
        assert_eq!(outline(&ours), outline(&sample));
        let (children, names) = outline(&ours);
        assert_eq!(
            children,
            [
                "Issuer",
                "Signature",
                "Subject",
                "AuthnStatement",
                "AttributeStatement"
            ]
        );
        assert_eq!(names.len(), 13);
        assert!(!ours.starts_with("<?xml"));

        let (doc, a) = assertion_of(&ours);
        let e = doc.element(a).unwrap();
        assert_eq!(e.attribute("Version"), Some("2.0"));
        assert_eq!(
            e.attribute("IssueInstant"),
            Some("2023-11-14T13:44:58.116Z")
        );
        let issuer = doc.child(a, SAML2_NS, "Issuer").unwrap();
        assert_eq!(
            doc.element(issuer).unwrap().attribute("Format"),
            Some(ISSUER_FORMAT)
        );
        // The sample's Issuer is this certificate's subject: same practice, same printing.
        let (sdoc, sa) = assertion_of(&sample);
        let sample_issuer = sdoc.text(sdoc.child(sa, SAML2_NS, "Issuer").unwrap());
        assert_eq!(doc.text(issuer), sample_issuer);

        // Values the sample does not redact are the same; subject-id is the user (the
        // documented fix), not the sample's patient "Alain PAT-SIX".
        for name in [
            ATTR_VIHF_VERSION,
            ATTR_SECTOR,
            ATTR_RESSOURCE_URN,
            ATTR_RESOURCE_ID,
            ATTR_AUTHENTICATION_MODE,
        ] {
            let ours_v: Vec<String> = attribute_values(&ours, name)
                .into_iter()
                .map(|n| doc.text(n))
                .collect();
            let sample_v: Vec<String> = attribute_values(&sample, name)
                .into_iter()
                .map(|n| sdoc.text(n).trim().to_string())
                .collect();
            assert_eq!(ours_v, sample_v, "{name}");
        }
        let subject = attribute_values(&ours, ATTR_SUBJECT_ID);
        assert_eq!(doc.text(subject[0]), "Jean-Noël D'Aubigné & <Fils>");

        // The CE values: same element, namespace and attributes as the sample (bar the empty
        // codeSystemName we leave out).
        for (name, local) in [(ATTR_PURPOSE_OF_USE, "PurposeOfUse"), (ATTR_ROLE, "Role")] {
            let ce = |d: &Document, v: NodeId| {
                let c = d.child(v, HL7_V3_NS, local).unwrap();
                let e = d.element(c).unwrap();
                let mut attrs: Vec<(String, String, String)> = e
                    .attributes
                    .iter()
                    .filter(|a| !a.value.is_empty())
                    .map(|a| (a.namespace.clone(), a.local.clone(), a.value.clone()))
                    .collect();
                attrs.sort();
                attrs
            };
            let o: Vec<_> = attribute_values(&ours, name)
                .into_iter()
                .map(|v| ce(&doc, v))
                .collect();
            let s: Vec<_> = attribute_values(&sample, name)
                .into_iter()
                .map(|v| ce(&sdoc, v))
                .collect();
            assert_eq!(o, s, "{name}");
        }
        let nameid = doc
            .child(
                doc.child(a, SAML2_NS, "Subject").unwrap(),
                SAML2_NS,
                "NameID",
            )
            .unwrap();
        assert_eq!(doc.text(nameid), "899700367909");
        assert!(ours.contains(&format!(
            "<saml2:AuthnStatement AuthnInstant=\"2023-11-14T13:44:58.116Z\"><saml2:AuthnContext><saml2:AuthnContextClassRef>{AUTHN_CONTEXT_CLASS}</saml2:AuthnContextClassRef>"
        )));
    }

    #[test]
    fn signature_structure_and_digest_algorithms() {
        for (algorithm, sm, dm) in [
            (
                SignatureAlgorithm::RsaSha1,
                "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
                "http://www.w3.org/2000/09/xmldsig#sha1",
            ),
            (
                SignatureAlgorithm::RsaSha256,
                "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                "http://www.w3.org/2001/04/xmlenc#sha256",
            ),
        ] {
            let xml = unsigned(&input(), algorithm).finish(&[0; 8]);
            let (doc, a) = assertion_of(&xml);
            let sig = dsig::parse_signature(&doc, dsig::find_signature(&doc).unwrap()).unwrap();
            assert_eq!(doc.parent(sig.node), Some(a), "enveloped");
            assert_eq!(sig.signed_info.canonicalization, C14nMethod::Exclusive);
            assert_eq!(sig.signed_info.signature_method.uri(), sm);
            let r = &sig.signed_info.references[0];
            assert_eq!(r.uri, "#_f6056f97-a487-4d36-9244-11db8c7d6372");
            assert_eq!(r.transforms, reference_transforms());
            assert_eq!(r.digest_uri, dm);
            assert_eq!(sig.certificates, [reference_certificate().der().to_vec()]);
        }
    }

    #[test]
    fn deterministic_bytes() {
        let a = unsigned(&input(), SignatureAlgorithm::RsaSha256);
        let b = unsigned(&input(), SignatureAlgorithm::RsaSha256);
        assert_eq!(a, b);
        assert_eq!(a.finish(&[7; 256]), b.finish(&[7; 256]));
        let other = VihfInput {
            assertion_id: "_other".into(),
            ..input()
        };
        assert_ne!(unsigned(&other, SignatureAlgorithm::RsaSha256), a);
    }

    /// Reference digest check with our verifier (the SignatureValue is made up here, so only
    /// the digest can pass; the integration test signs for real).
    fn digest_ok(xml: &str) -> Result<(), DsigError> {
        let report = dsig::verify(
            xml.as_bytes(),
            &VerifyOptions {
                id_attribute: ID_ATTRIBUTE.into(),
                certificate: Some(reference_certificate().der().to_vec()),
            },
        )?;
        report.references[0].result.clone()
    }

    #[test]
    fn digest_survives_embedding_and_detects_tampering() {
        let xml = unsigned(&input(), SignatureAlgorithm::RsaSha1).finish(&[0; 256]);
        assert_eq!(digest_ok(&xml), Ok(()));
        assert_eq!(digest_ok(&embedded_for_check(&xml)), Ok(()));
        for (from, to) in [
            ("499700367909006<", "499700367909007<"),
            ("code=\"SM26\"", "code=\"SM27\""),
            ("<saml2:NameID>899700367909", "<saml2:NameID>899700367908"),
            ("Version=\"2.0\"", "Version=\"2.1\""),
        ] {
            assert!(xml.contains(from), "{from}");
            let bad = xml.replacen(from, to, 1);
            assert!(
                matches!(digest_ok(&bad), Err(DsigError::DigestMismatch { .. })),
                "{from} -> {to} not detected"
            );
        }
        // The signature value is checked too: the made-up one fails.
        let report = dsig::verify(
            xml.as_bytes(),
            &VerifyOptions {
                id_attribute: ID_ATTRIBUTE.into(),
                certificate: None,
            },
        )
        .unwrap();
        assert_eq!(report.signature_value, Err(DsigError::BadSignatureValue));
    }

    #[test]
    fn values_are_escaped() {
        let mut i = input();
        i.roles[0].display_name = "A \"quoted\" & <b>\tx\ny\rz".into();
        i.subject_id = "line\r\nend".into();
        let xml = unsigned(&i, SignatureAlgorithm::RsaSha1).finish(&[0; 256]);
        let (doc, _) = assertion_of(&xml);
        let role = attribute_values(&xml, ATTR_ROLE)[0];
        let role = doc.child(role, HL7_V3_NS, "Role").unwrap();
        assert_eq!(
            doc.element(role).unwrap().attribute("displayName"),
            Some("A \"quoted\" & <b>\tx\ny\rz")
        );
        let subject = attribute_values(&xml, ATTR_SUBJECT_ID)[0];
        assert_eq!(doc.text(subject), "line\r\nend");
        assert_eq!(digest_ok(&xml), Ok(()));
    }

    #[test]
    fn inputs_are_checked() {
        let cert = reference_certificate();
        let try_ = |i: VihfInput| prepare_vihf(&i, &cert, SignatureAlgorithm::RsaSha1);
        for id in ["6056f97-a487", "1abc", "_a b", "_a\"b", ""] {
            let i = VihfInput {
                assertion_id: id.into(),
                ..input()
            };
            assert!(matches!(try_(i), Err(VihfError::NotAnId(_))), "{id}");
        }
        for t in [
            "2023-11-14T13:44:58",
            "2023-11-14T13:44:58+01:00",
            "2023-11-14 13:44:58Z",
            "2023-11-14T13:44:58.Z",
        ] {
            let i = VihfInput {
                issue_instant: t.into(),
                ..input()
            };
            assert!(matches!(try_(i), Err(VihfError::IssueInstant(_))), "{t}");
        }
        assert!(check_instant("2026-12-02T10:00:00Z").is_ok());
        let i = VihfInput {
            structure_id: " ".into(),
            ..input()
        };
        assert!(matches!(try_(i), Err(VihfError::Empty(ATTR_STRUCTURE))));
        let i = VihfInput {
            roles: Vec::new(),
            ..input()
        };
        assert!(matches!(try_(i), Err(VihfError::NoRole)));
        let i = VihfInput {
            subject_id: "a\u{1}b".into(),
            ..input()
        };
        assert!(matches!(try_(i), Err(VihfError::Character { code: 1, .. })));
    }

    #[test]
    fn confidentiality_codes_come_last_when_given() {
        let i = VihfInput {
            confidentiality_codes: vec![CodedValue::new("INVISIBLE_PATIENT", "1.2.3", "x")],
            ..input()
        };
        let xml = unsigned(&i, SignatureAlgorithm::RsaSha1).finish(&[0; 256]);
        let (_, names) = outline(&xml);
        assert_eq!(names.last().map(String::as_str), Some(ATTR_CONFIDENTIALITY));
        assert_eq!(names.len(), 14);
    }

    fn report(sender: Option<crate::hl7::report::Sender>) -> Report {
        Report {
            action: crate::hl7::report::Action::Publish,
            message_type: "ORU^R01".into(),
            control_id: "1".into(),
            ins: crate::hl7::report::Identifier {
                id: "162018885045327".into(),
                oid: "1.2.250.1.213.1.4.10".into(),
            },
            ipp: None,
            sender,
            flags: Default::default(),
            cda: Vec::new(),
        }
    }

    fn cda() -> CdaHeader {
        let mut c = CdaHeader::default();
        c.author_id.extension = "801234567890".into();
        c.author_name.given = "Marie".into();
        c.author_name.family = "CURIE".into();
        c.organization_id.extension = "499700000000001".into();
        c.facility_type.code = "SA08".into();
        c.facility_type.code_system = SECTOR_SCHEME.into();
        c.patient_name.given = "Alain".into();
        c.patient_name.family = "PAT-SIX".into();
        c
    }

    #[test]
    fn from_report_prefers_the_prt_segment_then_the_cda() {
        let settings = VihfSettings {
            lps: lps(),
            roles: roles(),
        };
        let sender = crate::hl7::report::Sender {
            id: "899700367909".into(),
            family: "DOC0036790".into(),
            given: "Jean".into(),
            structure_id: "499700367909006".into(),
        };
        let v = from_report(
            &report(Some(sender)),
            &cda(),
            &settings,
            "_x",
            "2026-12-02T10:00:00Z",
        );
        assert_eq!(v.name_id, "899700367909");
        assert_eq!(v.subject_id, "Jean DOC0036790");
        assert_eq!(v.structure_id, "499700367909006");
        assert_eq!(v.sector, ("SA08".to_string(), SECTOR_SCHEME.to_string()));
        assert_eq!(
            v.resource_id,
            "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"
        );
        assert_eq!(v.roles, roles());
        assert_eq!(v.lps, lps());
        assert_eq!(v.authentication_mode, "INDIRECTE");
        assert_eq!(v.vihf_version, "3.0");
        assert!(prepare_vihf(&v, &reference_certificate(), SignatureAlgorithm::RsaSha1).is_ok());

        // No PRT: the CDA author and organisation; never the patient.
        let v = from_report(
            &report(None),
            &cda(),
            &settings,
            "_x",
            "2026-12-02T10:00:00Z",
        );
        assert_eq!(v.name_id, "801234567890");
        assert_eq!(v.subject_id, "Marie CURIE");
        assert_eq!(v.structure_id, "499700000000001");

        // Nobody known: AUTOMATE, and the system's name as the user.
        let mut anonymous = cda();
        anonymous.author_id.extension.clear();
        anonymous.author_name = Default::default();
        let v = from_report(
            &report(None),
            &anonymous,
            &settings,
            "_x",
            "2026-12-02T10:00:00Z",
        );
        assert_eq!(v.name_id, AUTOMATE);
        assert_eq!(v.subject_id, "DRIMbox");
    }
}
