//! The DMP simulator's judgement of an ITI-41 ProvideAndRegister request: what the real DMP
//! would refuse, answered as a RegistryErrorList, and what it would record. Pure: the registry
//! state and the entryUUIDs to assign come in, the decision goes out; the HTTP server around it
//! is the simulator program's.
//!
//! Checked: the SOAP action and MessageID; a VIHF assertion in the WS-Security header; for every
//! document entry, the part its `xop:Include` names exists and has the metadata's SHA-1 `hash`
//! and `size`; mandatory metadata (class, type, format, confidentiality, facility, practice,
//! creation time, language, source patient, unique id) present **and** in the DMP's value
//! sets for a KOS or a lot signature (codes with their coding schemes, MIME type, language,
//! DTM times, SHA-1 hash; the submission set's content type, submission time, source and
//! unique OIDs); the patient id is an INS with a known
//! INS OID, the same on the submission set and every entry; the lot signature verifies (our
//! XMLDSig verifier, key of the embedded certificate) and its Manifest's digest of each
//! document matches the part; an RPLC names an Approved entry of the registry.
//! With `verify_vihf`, the VIHF's enveloped signature too (the agency's sample redacted its
//! certificate, so its own VIHF cannot be checked: the sample test turns this off).
//! Not checked: the certificate chains and validity dates (an X.509 path validation the box
//! does not need; `xmlsec1` does it in the tests).

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};

use super::mtom;
use super::response::{RegistryError, SEVERITY_ERROR};
use crate::xml::document::{Document, NodeId};

pub const ACTION_PNR: &str = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b";
const NS_XDSB: &str = "urn:ihe:iti:xds-b:2007";
const NS_LCM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0";
const NS_RIM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0";
const NS_XOP: &str = "http://www.w3.org/2004/08/xop/include";
const NS_WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const NS_SAML: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const NS_WSA: &str = "http://www.w3.org/2005/08/addressing";
const NS_DS: &str = "http://www.w3.org/2000/09/xmldsig#";
const SCHEME_DE_PATIENT: &str = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427";
const SCHEME_DE_UNIQUE: &str = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab";
const SCHEME_SS_PATIENT: &str = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446";
const SCHEME_DE_FORMAT: &str = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d";
const REQUIRED_CLASSIFICATIONS: [(&str, &str); 6] = [
    ("urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a", "classCode"),
    ("urn:uuid:f0306f51-975f-434e-a61c-c59651d33983", "typeCode"),
    (SCHEME_DE_FORMAT, "formatCode"),
    (
        "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
        "confidentialityCode",
    ),
    (
        "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",
        "healthcareFacilityTypeCode",
    ),
    (
        "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",
        "practiceSettingCode",
    ),
];
const REQUIRED_SLOTS: [&str; 4] = ["creationTime", "languageCode", "sourcePatientId", "hash"];
const SIGNATURE_FORMAT: &str = "http://www.w3.org/2000/09/xmldsig#";

/// The simulator's registry: what it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registry {
    /// entryUUID → entry.
    pub entries: BTreeMap<String, Entry>,
    /// MessageIDs already processed, with the answer's errors (an exact re-send is answered
    /// the same way and recorded once).
    pub seen: BTreeMap<String, Vec<RegistryError>>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub unique_id: String,
    pub patient_id: String,
    pub status: Status,
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    Approved,
    Deprecated,
    Deleted,
}

impl Registry {
    pub fn by_unique_id(&self, unique_id: &str) -> Option<(&String, &Entry)> {
        self.entries.iter().find(|(_, e)| e.unique_id == unique_id)
    }
}

/// What the request carried, as far as the registry is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: String,
    /// (unique id, patient id, hash) of each document entry.
    pub documents: Vec<(String, String, String)>,
    /// entryUUID the RPLC association names, if any.
    pub replaces: Option<String>,
}

fn error(code: &str, context: impl Into<String>, location: &str) -> RegistryError {
    RegistryError {
        code: code.into(),
        context: context.into(),
        location: location.into(),
        severity: SEVERITY_ERROR.into(),
    }
}

fn descendants(doc: &Document, id: NodeId, ns: &str, local: &str) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut stack: Vec<NodeId> = doc.child_elements(id).collect();
    stack.reverse();
    while let Some(n) = stack.pop() {
        if doc.element(n).is_some_and(|e| e.is(ns, local)) {
            out.push(n);
        }
        let mut kids: Vec<NodeId> = doc.child_elements(n).collect();
        kids.reverse();
        stack.extend(kids);
    }
    out
}

fn attr(doc: &Document, n: NodeId, name: &str) -> String {
    doc.element(n)
        .and_then(|e| e.attribute(name))
        .unwrap_or_default()
        .to_string()
}

fn slot_values(doc: &Document, object: NodeId, name: &str) -> Vec<String> {
    doc.children_named(object, NS_RIM, "Slot")
        .filter(|s| attr(doc, *s, "name") == name)
        .flat_map(|s| descendants(doc, s, NS_RIM, "Value"))
        .map(|v| doc.text(v).trim().to_string())
        .collect()
}

fn external_id(doc: &Document, object: NodeId, scheme: &str) -> Option<String> {
    doc.children_named(object, NS_RIM, "ExternalIdentifier")
        .find(|e| attr(doc, *e, "identificationScheme") == scheme)
        .map(|e| attr(doc, e, "value"))
}

fn classification(doc: &Document, object: NodeId, scheme: &str) -> Option<String> {
    doc.children_named(object, NS_RIM, "Classification")
        .find(|c| attr(doc, *c, "classificationScheme") == scheme)
        .map(|c| attr(doc, c, "nodeRepresentation"))
}

/// The codes the DMP accepts for each kind of document entry (DRIM-M §2.5.2, §2.5.3), keyed
/// by the entry's formatCode.
struct EntryProfile {
    format_scheme: &'static str,
    mime_type: &'static str,
    class: (&'static str, &'static str),
    type_code: (&'static str, &'static str),
    language: &'static str,
}

const KOS_FORMAT: &str = "1.2.840.10008.5.1.4.1.1.88.59";

fn entry_profile(format: &str) -> Option<EntryProfile> {
    match format {
        KOS_FORMAT => Some(EntryProfile {
            format_scheme: "1.2.840.10008.2.6.1",
            mime_type: "application/dicom",
            class: ("31", "1.2.250.1.213.1.1.4.1"),
            type_code: ("IMG-KOS", "1.2.250.1.213.1.1.4.12"),
            language: "fr-FR",
        }),
        SIGNATURE_FORMAT => Some(EntryProfile {
            format_scheme: "URN",
            mime_type: "text/xml",
            class: ("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN"),
            type_code: ("E1762", "ASTM"),
            language: "art",
        }),
        _ => None,
    }
}

/// Confidentiality codes and their coding schemes (HL7 Confidentiality, and the DMP's own
/// visibility codes).
const CONFIDENTIALITY: [(&str, &str); 4] = [
    ("N", "2.16.840.1.113883.5.25"),
    ("MASQUE_PS", "1.2.250.1.213.1.1.4.13"),
    ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13"),
    ("INVISIBLE_REPRESENTANTS_LEGAUX", "1.2.250.1.213.1.1.4.13"),
];
const FACILITY_SCHEME: &str = "1.2.250.1.71.4.2.4";
const PRACTICE_SCHEME: &str = "1.2.250.1.213.1.1.4.9";
const SCHEME_CLASS: &str = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a";
const SCHEME_TYPE: &str = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983";
const SCHEME_CONFIDENTIALITY: &str = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f";
const SCHEME_FACILITY: &str = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1";
const SCHEME_PRACTICE: &str = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead";
const SCHEME_SS_CONTENT_TYPE: &str = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500";
const SCHEME_SS_SOURCE: &str = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832";
const SCHEME_SS_UNIQUE: &str = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8";

/// (nodeRepresentation, codingScheme) of each classification of `object` in `scheme`.
fn coded(doc: &Document, object: NodeId, scheme: &str) -> Vec<(String, String)> {
    doc.children_named(object, NS_RIM, "Classification")
        .filter(|c| attr(doc, *c, "classificationScheme") == scheme)
        .map(|c| {
            let system = slot_values(doc, c, "codingScheme")
                .into_iter()
                .next()
                .unwrap_or_default();
            (attr(doc, c, "nodeRepresentation"), system)
        })
        .collect()
}

/// An XDS DTM: `YYYY[MM[DD[hh[mm[ss]]]]]` (UTC), a real calendar date and time.
pub fn is_dtm(s: &str) -> bool {
    if !(s.len() >= 4
        && s.len() <= 14
        && s.len().is_multiple_of(2)
        && s.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let n = |a: usize| s.get(a..a + 2).map(|v| v.parse::<u32>().unwrap_or(99));
    let ok = |v: Option<u32>, lo: u32, hi: u32| v.is_none_or(|v| (lo..=hi).contains(&v));
    ok(n(4), 1, 12) && ok(n(6), 1, 31) && ok(n(8), 0, 23) && ok(n(10), 0, 59) && ok(n(12), 0, 59)
}

/// What is wrong with the values of a document entry's metadata (presence is checked by the
/// caller): codes outside the DMP's value sets, a MIME type that is not the format's, dates
/// that are not DTMs, a hash that is not a SHA-1.
fn entry_value_errors(doc: &Document, e: NodeId) -> Vec<RegistryError> {
    let id = attr(doc, e, "id");
    let mut errors = Vec::new();
    let mut wrong = |what: String| {
        errors.push(error(
            "XDSRegistryMetadataError",
            format!("{id}: {what}"),
            &id,
        ));
    };
    let format = coded(doc, e, SCHEME_DE_FORMAT);
    let Some((format_code, format_scheme)) = format.first() else {
        return errors;
    };
    let Some(profile) = entry_profile(format_code) else {
        wrong(format!(
            "formatCode {format_code} is neither a KOS nor a lot signature"
        ));
        return errors;
    };
    if format_scheme != profile.format_scheme {
        wrong(format!(
            "formatCode {format_code} with codingScheme {format_scheme}, not {}",
            profile.format_scheme
        ));
    }
    let mime = attr(doc, e, "mimeType");
    if mime != profile.mime_type {
        wrong(format!("mimeType {mime}, not {}", profile.mime_type));
    }
    for (scheme, name, want) in [
        (SCHEME_CLASS, "classCode", profile.class),
        (SCHEME_TYPE, "typeCode", profile.type_code),
    ] {
        for (code, system) in coded(doc, e, scheme) {
            if (code.as_str(), system.as_str()) != want {
                wrong(format!(
                    "{name} {code} ({system}), not {} ({})",
                    want.0, want.1
                ));
            }
        }
    }
    for (code, system) in coded(doc, e, SCHEME_CONFIDENTIALITY) {
        if !CONFIDENTIALITY.contains(&(code.as_str(), system.as_str())) {
            wrong(format!(
                "confidentialityCode {code} ({system}) is not a DMP code"
            ));
        }
    }
    for (scheme, name, want) in [
        (
            SCHEME_FACILITY,
            "healthcareFacilityTypeCode",
            FACILITY_SCHEME,
        ),
        (SCHEME_PRACTICE, "practiceSettingCode", PRACTICE_SCHEME),
    ] {
        for (code, system) in coded(doc, e, scheme) {
            if system != want || code.is_empty() {
                wrong(format!(
                    "{name} {code} with codingScheme {system}, not {want}"
                ));
            }
        }
    }
    for language in slot_values(doc, e, "languageCode") {
        if language != profile.language {
            wrong(format!("languageCode {language}, not {}", profile.language));
        }
    }
    for slot in ["creationTime", "serviceStartTime", "serviceStopTime"] {
        for t in slot_values(doc, e, slot) {
            if !is_dtm(&t) {
                wrong(format!("{slot} {t} is not a DTM (YYYYMMDDhhmmss)"));
            }
        }
    }
    for h in slot_values(doc, e, "hash") {
        if h.len() != 40 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            wrong(format!("hash {h} is not a SHA-1 in hex"));
        }
    }
    for s in slot_values(doc, e, "size") {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            wrong(format!("size {s} is not a byte count"));
        }
    }
    for p in slot_values(doc, e, "sourcePatientId") {
        if !p.contains("^^^&") {
            wrong(format!(
                "sourcePatientId {p} is not a CX with an assigning authority"
            ));
        }
    }
    errors
}

/// What the submission set lacks or gets wrong: its content type, submission time, source and
/// unique ids.
fn submission_set_errors(doc: &Document, package: NodeId) -> Vec<RegistryError> {
    let id = attr(doc, package, "id");
    let mut errors = Vec::new();
    let mut wrong = |what: String| {
        errors.push(error(
            "XDSRegistryMetadataError",
            format!("{id}: {what}"),
            &id,
        ));
    };
    if coded(doc, package, SCHEME_SS_CONTENT_TYPE)
        .iter()
        .all(|(c, s)| c.is_empty() || s.is_empty())
    {
        wrong("contentTypeCode missing".into());
    }
    match slot_values(doc, package, "submissionTime").first() {
        Some(t) if is_dtm(t) => {}
        Some(t) => wrong(format!("submissionTime {t} is not a DTM")),
        None => wrong("submissionTime missing".into()),
    }
    for (scheme, name) in [
        (SCHEME_SS_SOURCE, "sourceId"),
        (SCHEME_SS_UNIQUE, "uniqueId"),
    ] {
        let value = external_id(doc, package, scheme).unwrap_or_default();
        if value.is_empty()
            || !value
                .split('.')
                .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
        {
            wrong(format!("{name} {value:?} is not an OID"));
        }
    }
    errors
}

/// `<INS>^^^&<oid>&ISO^NH` with an INS authority OID.
fn is_ins_patient_id(cx: &str) -> bool {
    let Some((id, rest)) = cx.split_once("^^^&") else {
        return false;
    };
    let Some((oid, tail)) = rest.split_once('&') else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && crate::hl7::report::INS_OIDS.contains(&oid)
        && tail == "ISO^NH"
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The MessageID of an MTOM request (to relate the answer), if it can be read at all.
pub fn message_id_of(content_type: &str, body: &[u8]) -> Option<String> {
    let m = mtom::parse(content_type, body).ok()?;
    let doc = Document::parse(&m.root().ok()?.body).ok()?;
    descendants(&doc, doc.root(), NS_WSA, "MessageID")
        .first()
        .map(|n| doc.text(*n).trim().to_string())
}

/// Why the VIHF's signature does not hold, if it does not: it must verify (key of its
/// certificate) and sign the Assertion itself.
pub fn vihf_problem(doc: &Document, security: NodeId) -> Option<String> {
    let assertion = *descendants(doc, security, NS_SAML, "Assertion").first()?;
    let signature = *descendants(doc, assertion, NS_DS, "Signature").first()?;
    let options = crate::xml::dsig::VerifyOptions {
        id_attribute: "ID".into(),
        certificate: None,
    };
    match crate::xml::dsig::verify_signature(doc, signature, &options) {
        Ok(report) if report.is_valid() => {
            let id = doc.element(assertion).and_then(|e| e.attribute("ID"))?;
            let signs_assertion = report.references.iter().any(|r| r.uri == format!("#{id}"));
            (!signs_assertion).then(|| "the VIHF signature does not sign the assertion".into())
        }
        Ok(report) => Some(format!(
            "the VIHF signature does not verify: {}",
            report.error().map(|e| e.to_string()).unwrap_or_default()
        )),
        Err(e) => Some(format!("the VIHF signature cannot be read: {e}")),
    }
}

/// Judges an ITI-41 request. `Ok` when the DMP would record it; `Err` with the errors to
/// answer in a Failure otherwise.
pub fn check_provide_and_register(
    content_type: &str,
    body: &[u8],
    registry: &Registry,
    verify_vihf: bool,
) -> Result<Accepted, Vec<RegistryError>> {
    let refuse = |code: &str, context: String, location: &str| vec![error(code, context, location)];
    let multipart = mtom::parse(content_type, body)
        .map_err(|e| refuse("XDSRegistryError", format!("not an MTOM request: {e}"), ""))?;
    let root = multipart
        .root()
        .map_err(|e| refuse("XDSRegistryError", e.to_string(), ""))?;
    let doc = Document::parse(&root.body)
        .map_err(|e| refuse("XDSRegistryError", format!("envelope: {e}"), ""))?;
    let top = doc.root();
    let header_text = |local: &str| {
        descendants(&doc, top, NS_WSA, local)
            .first()
            .map(|n| doc.text(*n).trim().to_string())
            .unwrap_or_default()
    };
    let action = header_text("Action");
    let message_id = header_text("MessageID");
    if action != ACTION_PNR {
        return Err(refuse(
            "XDSRegistryError",
            format!("Action {action} is not {ACTION_PNR}"),
            "Action",
        ));
    }
    if message_id.is_empty() {
        return Err(refuse(
            "XDSRegistryError",
            "no MessageID".into(),
            "MessageID",
        ));
    }
    let mut errors = Vec::new();
    let security = descendants(&doc, top, NS_WSSE, "Security");
    let has_vihf = security
        .first()
        .is_some_and(|s| !descendants(&doc, *s, NS_SAML, "Assertion").is_empty());
    if !has_vihf {
        errors.push(error(
            "XDSRegistryError",
            "no VIHF assertion in the WS-Security header",
            "Security",
        ));
    } else if verify_vihf {
        if let Some(e) = vihf_problem(&doc, security[0]) {
            errors.push(error("XDSRegistryError", e, "Security"));
        }
    }
    let Some(request) = descendants(&doc, top, NS_XDSB, "ProvideAndRegisterDocumentSetRequest")
        .first()
        .copied()
    else {
        return Err(refuse(
            "XDSRegistryError",
            "no ProvideAndRegisterDocumentSetRequest".into(),
            "Body",
        ));
    };
    // The documents, by entry id, from the xop:Include of each ns4:Document.
    let mut parts: BTreeMap<String, &mtom::Part> = BTreeMap::new();
    for d in doc.children_named(request, NS_XDSB, "Document") {
        let id = attr(&doc, d, "id");
        let include = descendants(&doc, d, NS_XOP, "Include");
        let href = include.first().map(|i| attr(&doc, *i, "href"));
        match href.as_deref().and_then(|h| multipart.by_cid(h)) {
            Some(p) => {
                parts.insert(id, p);
            }
            None => errors.push(error(
                "XDSMissingDocument",
                format!("Document {id}: no part for {}", href.unwrap_or_default()),
                &id,
            )),
        }
    }
    let Some(submit) = doc.child(request, NS_LCM, "SubmitObjectsRequest") else {
        return Err(refuse(
            "XDSRegistryMetadataError",
            "no SubmitObjectsRequest".into(),
            "",
        ));
    };
    let objects = doc
        .child(submit, NS_RIM, "RegistryObjectList")
        .ok_or_else(|| {
            refuse(
                "XDSRegistryMetadataError",
                "no RegistryObjectList".into(),
                "",
            )
        })?;
    let package = doc
        .children_named(objects, NS_RIM, "RegistryPackage")
        .next();
    let ss_patient = package.and_then(|p| external_id(&doc, p, SCHEME_SS_PATIENT));
    match &ss_patient {
        Some(p) if is_ins_patient_id(p) => {}
        other => errors.push(error(
            "XDSPatientIdDoesNotMatch",
            format!(
                "submission set patient id {} is not an INS with a known OID",
                other.clone().unwrap_or_default()
            ),
            "SubmissionSet01",
        )),
    }
    match package {
        Some(p) => errors.extend(submission_set_errors(&doc, p)),
        None => errors.push(error(
            "XDSRegistryMetadataError",
            "no submission set (RegistryPackage)",
            "",
        )),
    }
    let mut documents = Vec::new();
    let mut by_unique: BTreeMap<String, &mtom::Part> = BTreeMap::new();
    let mut signature_parts = Vec::new();
    for e in doc.children_named(objects, NS_RIM, "ExtrinsicObject") {
        let id = attr(&doc, e, "id");
        for slot in REQUIRED_SLOTS {
            if slot_values(&doc, e, slot).is_empty() {
                errors.push(error(
                    "XDSRegistryMetadataError",
                    format!("{id}: slot {slot} missing"),
                    &id,
                ));
            }
        }
        for (scheme, name) in REQUIRED_CLASSIFICATIONS {
            if classification(&doc, e, scheme).is_none_or(|c| c.is_empty()) {
                errors.push(error(
                    "XDSRegistryMetadataError",
                    format!("{id}: {name} missing"),
                    &id,
                ));
            }
        }
        errors.extend(entry_value_errors(&doc, e));
        let patient = external_id(&doc, e, SCHEME_DE_PATIENT).unwrap_or_default();
        if !is_ins_patient_id(&patient) || Some(&patient) != ss_patient.as_ref() {
            errors.push(error(
                "XDSPatientIdDoesNotMatch",
                format!("{id}: patient id {patient} is not the submission set's INS"),
                &id,
            ));
        }
        let unique = external_id(&doc, e, SCHEME_DE_UNIQUE).unwrap_or_default();
        if unique.is_empty() {
            errors.push(error(
                "XDSRegistryMetadataError",
                format!("{id}: uniqueId missing"),
                &id,
            ));
        }
        if registry.by_unique_id(&unique).is_some() {
            errors.push(error(
                "XDSDuplicateUniqueIdInRegistry",
                format!("{id}: uniqueId {unique} already registered"),
                &id,
            ));
        }
        let hash = slot_values(&doc, e, "hash")
            .first()
            .cloned()
            .unwrap_or_default();
        let size = slot_values(&doc, e, "size")
            .first()
            .cloned()
            .unwrap_or_default();
        match parts.get(&id) {
            None => errors.push(error(
                "XDSMissingDocument",
                format!("{id}: no document sent"),
                &id,
            )),
            Some(p) => {
                if hex(&Sha1::digest(&p.body)) != hash.to_ascii_lowercase() {
                    errors.push(error(
                        "XDSRepositoryMetadataError",
                        format!("{id}: hash does not match the document sent"),
                        &id,
                    ));
                }
                if p.body.len().to_string() != size {
                    errors.push(error(
                        "XDSRepositoryMetadataError",
                        format!("{id}: size {size} is not the document's {}", p.body.len()),
                        &id,
                    ));
                }
                by_unique.insert(unique.clone(), p);
                if classification(&doc, e, SCHEME_DE_FORMAT).as_deref() == Some(SIGNATURE_FORMAT) {
                    signature_parts.push((id.clone(), *p));
                }
            }
        }
        documents.push((unique, patient, hash));
    }
    if signature_parts.is_empty() {
        errors.push(error(
            "XDSRegistryMetadataError",
            "no signature document (IHE DSG) in the lot",
            "",
        ));
    }
    for (id, part) in &signature_parts {
        match crate::xml::dsig::verify(&part.body, &Default::default()) {
            Ok(report) if report.is_valid() => {
                for m in &report.manifests {
                    for r in &m.references {
                        let target = r.uri.strip_prefix("urn:oid:").unwrap_or(&r.uri);
                        // The submission set reference carries a placeholder digest (DRIM-M
                        // §2.6): only the documents are checked.
                        if let Some(doc_part) = by_unique.get(target) {
                            if r.check(&doc_part.body).is_err() {
                                errors.push(error(
                                    "XDSRepositoryMetadataError",
                                    format!(
                                        "{id}: the signature's digest of {target} does not match"
                                    ),
                                    id,
                                ));
                            }
                        }
                    }
                }
            }
            Ok(report) => errors.push(error(
                "XDSRegistryError",
                format!(
                    "{id}: the lot signature does not verify: {}",
                    report
                        .error()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "invalid".into())
                ),
                id,
            )),
            Err(e) => errors.push(error(
                "XDSRegistryError",
                format!("{id}: the lot signature cannot be read: {e}"),
                id,
            )),
        }
    }
    let mut replaces = None;
    for a in doc.children_named(objects, NS_RIM, "Association") {
        if attr(&doc, a, "associationType") == "urn:ihe:iti:2007:AssociationType:RPLC" {
            let target = attr(&doc, a, "targetObject");
            match registry.entries.get(&target) {
                Some(e) if e.status == Status::Approved => replaces = Some(target),
                Some(_) => errors.push(error(
                    "XDSRegistryDeprecatedDocumentError",
                    format!("RPLC target {target} is not Approved"),
                    &target,
                )),
                None => errors.push(error(
                    "XDSUnknownDocument",
                    format!("RPLC target {target} is unknown"),
                    &target,
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(Accepted {
            message_id,
            documents,
            replaces,
        })
    } else {
        Err(errors)
    }
}

/// Records an accepted request: each document gets the next entryUUID from `new_uuid`, the
/// replaced entry is deprecated.
pub fn record(registry: &mut Registry, accepted: &Accepted, mut new_uuid: impl FnMut() -> String) {
    if let Some(old) = &accepted.replaces {
        if let Some(e) = registry.entries.get_mut(old) {
            e.status = Status::Deprecated;
        }
    }
    for (unique_id, patient_id, hash) in &accepted.documents {
        registry.entries.insert(
            new_uuid(),
            Entry {
                unique_id: unique_id.clone(),
                patient_id: patient_id.clone(),
                status: Status::Approved,
                hash: hash.clone(),
            },
        );
    }
    registry
        .seen
        .insert(accepted.message_id.clone(), Vec::new());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const PUBLICATION: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/ref/ans/XDS/publication.xml"
    );

    /// Removes the pretty-printing of a rendered XML part: indentation and the white space
    /// between tags (DRIM-M §2.6: the agency's sample is a rendering, not a capture).
    fn unindent(xml: &str) -> String {
        let joined: String = xml.lines().map(str::trim).collect::<Vec<_>>().join("\n");
        let mut out = String::with_capacity(joined.len());
        let mut chars = joined.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '>' {
                let mut ws = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() {
                        ws.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if chars.peek() != Some(&'<') {
                    out.push_str(&ws);
                }
            }
        }
        out
    }

    /// The agency's accepted request as wire bytes: its three parts restored (envelope and
    /// signature document without the rendering's indentation, the signature with the
    /// declaration line and final LF the hash covers; the KOS decoded from base64) and packed
    /// with our MTOM writer.
    pub fn agency_request() -> (String, Vec<u8>) {
        let text = std::fs::read_to_string(PUBLICATION).expect("reference data");
        let mut parts: Vec<(String, String)> = Vec::new();
        let mut current: Option<(String, Vec<String>, bool)> = None;
        for line in text.lines() {
            if line.trim().starts_with("--MIMEBoundary_Bound") {
                if let Some((id, body, _)) = current.take() {
                    parts.push((id, body.join("\n")));
                }
                current = Some((String::new(), Vec::new(), true));
                continue;
            }
            let Some((id, body, in_headers)) = current.as_mut() else {
                continue;
            };
            if *in_headers {
                let l = line.trim();
                if l.is_empty() {
                    *in_headers = false;
                } else if let Some(v) = l.strip_prefix("Content-ID:") {
                    *id = v.trim().trim_matches(['<', '>']).to_string();
                }
            } else {
                body.push(line.to_string());
            }
        }
        let get = |id: &str| parts.iter().find(|(i, _)| i == id).unwrap().1.clone();
        let envelope = unindent(&get("0.1"));
        let envelope = envelope.trim_start().to_string();
        let signature = unindent(&get("0.3"));
        let signature = signature.trim().replacen("<?xml version=\"1.0\"?>", "", 1);
        let signature = format!("<?xml version=\"1.0\"?>\n{}\n", signature.trim_start());
        let kos_text: Vec<u8> = get("0.2")
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let kos = crate::base64::decode(&kos_text).unwrap();
        let root = mtom::Part {
            content_id: "0.1".into(),
            content_type: "application/xop+xml".into(),
            body: envelope.into_bytes(),
        };
        let attachments = [
            mtom::Part {
                content_id: "0.3".into(),
                content_type: "application/octet-stream".into(),
                body: signature.into_bytes(),
            },
            mtom::Part {
                content_id: "0.2".into(),
                content_type: "application/octet-stream".into(),
                body: kos,
            },
        ];
        let body = mtom::build("MIMEBoundary_Bound", &root, ACTION_PNR, &attachments);
        (
            mtom::content_type("MIMEBoundary_Bound", "0.1", ACTION_PNR),
            body,
        )
    }

    #[test]
    fn the_agencys_accepted_request_is_accepted() {
        let (ct, body) = agency_request();
        let accepted = check_provide_and_register(&ct, &body, &Registry::default(), false)
            .unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(
            accepted.message_id,
            "urn:uuid:a6ba8f7f-b214-4a2d-96f1-54293d537ce3"
        );
        assert_eq!(accepted.documents.len(), 2);
        // Its KOS part is the agency's ko.dcm, byte for byte.
        let m = mtom::parse(&ct, &body).unwrap();
        let ko = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/ref/ans/KOS/ko.dcm"
        ))
        .unwrap();
        assert_eq!(m.by_cid("cid:0.2").unwrap().body, ko);
        // Recorded once; the same uniqueIds again are refused.
        let mut registry = Registry::default();
        let mut n = 0;
        record(&mut registry, &accepted, || {
            n += 1;
            format!("urn:uuid:00000000-0000-4000-8000-00000000000{n}")
        });
        assert_eq!(registry.entries.len(), 2);
        let again = check_provide_and_register(&ct, &body, &registry, false).unwrap_err();
        assert!(again
            .iter()
            .any(|e| e.context.contains("already registered")));
    }

    /// One byte changed anywhere in a signed or hashed part: refused, with the reason.
    #[test]
    fn any_changed_byte_of_a_signed_part_is_refused() {
        let (ct, body) = agency_request();
        let m = mtom::parse(&ct, &body).unwrap();
        let rebuild = |kos: Vec<u8>, sig: Vec<u8>| {
            let root = m.root().unwrap().clone();
            let attachments = [
                mtom::Part {
                    content_id: "0.3".into(),
                    content_type: "application/octet-stream".into(),
                    body: sig,
                },
                mtom::Part {
                    content_id: "0.2".into(),
                    content_type: "application/octet-stream".into(),
                    body: kos,
                },
            ];
            mtom::build("MIMEBoundary_Bound", &root, ACTION_PNR, &attachments)
        };
        let kos = m.by_cid("0.2").unwrap().body.clone();
        let sig = m.by_cid("0.3").unwrap().body.clone();

        let mut bad_kos = kos.clone();
        bad_kos[4000] ^= 1;
        let e = check_provide_and_register(
            &ct,
            &rebuild(bad_kos, sig.clone()),
            &Registry::default(),
            false,
        )
        .unwrap_err();
        assert!(
            e.iter().any(|e| e.context.contains("DocumentKOS: hash")),
            "{e:#?}"
        );

        // A byte of the signed Manifest (the KOS digest) changed.
        let text = String::from_utf8(sig.clone()).unwrap();
        let tampered = text.replacen(
            "WECMEWtRSXwPIITJDaPIXHCYRVo=",
            "WECMEWtRSXwPIITJDaPIXHCYRVp=",
            1,
        );
        assert_ne!(tampered, text);
        let e = check_provide_and_register(
            &ct,
            &rebuild(kos.clone(), tampered.into_bytes()),
            &Registry::default(),
            false,
        )
        .unwrap_err();
        assert!(
            e.iter().any(|e| e.context.contains("Signature01")),
            "{e:#?}"
        );

        // Metadata: a patient id that is not an INS.
        let envelope = String::from_utf8(m.root().unwrap().body.clone()).unwrap();
        let wrong = envelope.replace(
            "&amp;1.2.250.1.213.1.4.10&amp;ISO^NH",
            "&amp;1.2.3&amp;ISO^NH",
        );
        let root = mtom::Part {
            content_id: "0.1".into(),
            content_type: "application/xop+xml".into(),
            body: wrong.into_bytes(),
        };
        let body = mtom::build("MIMEBoundary_Bound", &root, ACTION_PNR, &m.parts[1..]);
        let e = check_provide_and_register(&ct, &body, &Registry::default(), false).unwrap_err();
        assert!(
            e.iter().all(|e| e.code == "XDSPatientIdDoesNotMatch"),
            "{e:#?}"
        );
        assert_eq!(e.len(), 3);
    }

    /// Metadata present but outside the DMP's value sets: refused, each with its reason.
    #[test]
    fn wrong_metadata_values_are_refused_with_their_reason() {
        let (ct, body) = agency_request();
        let m = mtom::parse(&ct, &body).unwrap();
        let envelope = String::from_utf8(m.root().unwrap().body.clone()).unwrap();
        let judge = |from: &str, to: &str| {
            assert_eq!(envelope.matches(from).count(), 1, "{from}");
            let root = mtom::Part {
                content_id: "0.1".into(),
                content_type: "application/xop+xml".into(),
                body: envelope.replace(from, to).into_bytes(),
            };
            let body = mtom::build("MIMEBoundary_Bound", &root, ACTION_PNR, &m.parts[1..]);
            check_provide_and_register(&ct, &body, &Registry::default(), false).unwrap_err()
        };
        for (from, to, reason) in [
            (
                "nodeRepresentation=\"IMG-KOS\"",
                "nodeRepresentation=\"IMG-CR\"",
                "DocumentKOS: typeCode IMG-CR",
            ),
            (
                "mimeType=\"application/dicom\"",
                "mimeType=\"application/pdf\"",
                "DocumentKOS: mimeType application/pdf",
            ),
            (
                "nodeRepresentation=\"1.2.840.10008.5.1.4.1.1.88.59\"",
                "nodeRepresentation=\"1.2.840.10008.5.1.4.1.1.88.22\"",
                "neither a KOS nor a lot signature",
            ),
            (
                "<Value>fr-FR</Value>",
                "<Value>en-US</Value>",
                "languageCode en-US",
            ),
        ] {
            let e = judge(from, to);
            assert!(
                e.iter().any(|e| e.context.contains(reason)),
                "{reason}: {e:#?}"
            );
            assert!(
                e.iter().all(|e| e.code == "XDSRegistryMetadataError"),
                "{e:#?}"
            );
        }
    }

    #[test]
    fn dtm() {
        assert!(is_dtm("20231114144457"));
        assert!(is_dtm("20231114"));
        assert!(!is_dtm("2023111414445"));
        assert!(!is_dtm("20231314144457"));
        assert!(!is_dtm("2023-11-14"));
        assert!(!is_dtm(""));
    }

    #[test]
    fn patient_ids() {
        assert!(is_ins_patient_id(
            "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"
        ));
        assert!(!is_ins_patient_id("162018885045327^^^&1.2.3&ISO^NH"));
        assert!(!is_ins_patient_id(
            "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^PI"
        ));
        assert!(!is_ins_patient_id(""));
    }
}
