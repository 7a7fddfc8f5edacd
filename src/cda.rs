//! The header of the CDA R2 level-1 imaging report (IMG-CR) the RIS sends in OBX-5: what the
//! KOS, the XDS metadata and the identity checks need, read with quick-xml as a stream of
//! events — never a DOM, never a DTD.
//!
//! Safe by construction: a DOCTYPE is refused (no DTD, so no entity declarations and no external
//! entities); only the five predefined entities and character references are resolved, any other
//! entity reference is an error; the input size and the element depth are bounded. The body of
//! the report is skipped.

use quick_xml::events::{BytesStart, Event};
use quick_xml::XmlVersion;

/// Largest CDA accepted (the agency's example is 110 KB).
pub const MAX_CDA: usize = 8 * 1024 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdaError {
    #[error("the CDA is {0} bytes, over the limit of {MAX_CDA}")]
    TooLarge(usize),
    #[error("the CDA declares a DOCTYPE; DTDs are not accepted")]
    Doctype,
    #[error("the CDA uses the entity `&{0};`, which is not one of XML's predefined entities")]
    Entity(String),
    #[error("the CDA nests elements deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("the CDA is not well-formed XML: {0}")]
    Xml(String),
    #[error("the document is not a ClinicalDocument (root element `{0}`)")]
    NotCda(String),
    #[error("the CDA header lacks {0}")]
    Missing(&'static str),
}

/// An instance identifier (`II`): root OID and optional extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ii {
    pub root: String,
    pub extension: String,
}

/// A coded value (`CD`/`CE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Code {
    pub code: String,
    pub code_system: String,
    pub display_name: String,
}

/// A person's name as the header gives it (first family, first given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Name {
    pub family: String,
    pub given: String,
}

/// One `documentationOf/serviceEvent`: an imaging act, with the DICOM Study Instance UID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEvent {
    /// `id/@root`: the Study Instance UID.
    pub id: Ii,
    /// The act (LOINC), with its translations: CCAM, modality (DCM), anatomic region (SNOMED CT).
    pub code: Code,
    pub translations: Vec<Code>,
    pub low: String,
    pub high: String,
    /// `performer/…/standardIndustryClassCode` (XDS practiceSettingCode).
    pub practice_setting: Option<Code>,
}

/// The header fields the box uses. Patient fields are stored, never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdaHeader {
    pub document_id: Ii,
    pub confidentiality: Code,
    /// `recordTarget/patientRole/id`: the INS (root = an INS OID) and the IPP.
    pub patient_ids: Vec<Ii>,
    pub patient_name: Name,
    pub gender: String,
    pub birth_time: String,
    pub author_id: Ii,
    pub author_name: Name,
    pub organization_id: Ii,
    pub organization_name: String,
    pub legal_authenticator_id: Ii,
    pub legal_authenticator_name: Name,
    /// `inFulfillmentOf/order/id`: the placer order number.
    pub order: Ii,
    /// `inFulfillmentOf/order/ps3-20:accessionNumber`.
    pub accession: Ii,
    pub service_events: Vec<ServiceEvent>,
    /// `componentOf/…/healthCareFacility/code` (XDS healthcareFacilityTypeCode).
    pub facility_type: Code,
    /// `relatedDocument`: its type (`RPLC` for a replacement) and the parent document's id.
    pub related_document: Option<(String, Ii)>,
}

impl CdaHeader {
    /// The patient identifier issued by an INS authority, if any.
    pub fn ins(&self) -> Option<&Ii> {
        self.patient_ids
            .iter()
            .find(|i| crate::hl7::report::INS_OIDS.contains(&i.root.as_str()))
    }
}

fn attr(e: &BytesStart, name: &str) -> Result<String, CdaError> {
    for a in e.attributes() {
        let a = a.map_err(|x| CdaError::Xml(x.to_string()))?;
        if a.key.local_name().as_ref() == name {
            return a
                .normalized_value(XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .map_err(|x| match x {
                    quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::UnrecognizedEntity(_, n),
                    ) => CdaError::Entity(n),
                    other => CdaError::Xml(other.to_string()),
                });
        }
    }
    Ok(String::new())
}

fn ii(e: &BytesStart) -> Result<Ii, CdaError> {
    Ok(Ii {
        root: attr(e, "root")?,
        extension: attr(e, "extension")?,
    })
}

fn code(e: &BytesStart) -> Result<Code, CdaError> {
    Ok(Code {
        code: attr(e, "code")?,
        code_system: attr(e, "codeSystem")?,
        display_name: attr(e, "displayName")?,
    })
}

/// Which text field the characters being read belong to.
#[derive(Clone, Copy, PartialEq)]
enum TextTarget {
    PatientFamily,
    PatientGiven,
    AuthorFamily,
    AuthorGiven,
    OrganizationName,
    LegalFamily,
    LegalGiven,
}

/// Parses the header of a CDA document.
pub fn parse_header(xml: &[u8]) -> Result<CdaHeader, CdaError> {
    if xml.len() > MAX_CDA {
        return Err(CdaError::TooLarge(xml.len()));
    }
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut h = CdaHeader::default();
    let mut path: Vec<String> = Vec::new();
    let mut target: Option<TextTarget> = None;
    let mut text = String::new();
    let mut buf = Vec::new();
    let mut saw_root = false;
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| CdaError::Xml(e.to_string()))?;
        match ev {
            Event::DocType(_) => return Err(CdaError::Doctype),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let name = e.local_name().as_ref().to_string();
                if path.is_empty() && name != "ClinicalDocument" {
                    return Err(CdaError::NotCda(name));
                }
                path.push(name);
                saw_root = true;
                if path.len() > MAX_DEPTH {
                    return Err(CdaError::TooDeep);
                }
                target = on_element(&mut h, &path, e)?;
                text.clear();
                if empty {
                    path.pop();
                    target = None;
                }
            }
            Event::Text(t) if target.is_some() => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                if target.is_some() {
                    let c = if r.is_char_ref() {
                        r.resolve_char_ref()
                            .map_err(|e| CdaError::Xml(e.to_string()))?
                    } else {
                        match &*r {
                            "amp" => Some('&'),
                            "lt" => Some('<'),
                            "gt" => Some('>'),
                            "quot" => Some('"'),
                            "apos" => Some('\''),
                            other => return Err(CdaError::Entity(other.to_string())),
                        }
                    };
                    text.extend(c);
                } else if !r.is_char_ref() && !matches!(&*r, "amp" | "lt" | "gt" | "quot" | "apos")
                {
                    return Err(CdaError::Entity(r.to_string()));
                }
            }
            Event::End(_) => {
                if let Some(t) = target.take() {
                    store_text(&mut h, t, text.trim());
                }
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_root {
        return Err(CdaError::Xml("no root element".into()));
    }
    if h.patient_ids.is_empty() {
        return Err(CdaError::Missing("recordTarget/patientRole/id"));
    }
    if h.service_events.iter().all(|s| s.id.root.is_empty()) {
        return Err(CdaError::Missing(
            "documentationOf/serviceEvent/id (the Study Instance UID)",
        ));
    }
    Ok(h)
}

/// Records what an opening element carries; returns the text target it opens, if any.
fn on_element(
    h: &mut CdaHeader,
    path: &[String],
    e: &BytesStart,
) -> Result<Option<TextTarget>, CdaError> {
    let p: Vec<&str> = path.iter().skip(1).map(String::as_str).collect();
    use TextTarget::*;
    Ok(match p.as_slice() {
        ["id"] => {
            h.document_id = ii(e)?;
            None
        }
        ["confidentialityCode"] => {
            h.confidentiality = code(e)?;
            None
        }
        ["recordTarget", "patientRole", "id"] => {
            h.patient_ids.push(ii(e)?);
            None
        }
        ["recordTarget", "patientRole", "patient", "name", "family"]
            if h.patient_name.family.is_empty() =>
        {
            Some(PatientFamily)
        }
        ["recordTarget", "patientRole", "patient", "name", "given"]
            if h.patient_name.given.is_empty() =>
        {
            Some(PatientGiven)
        }
        ["recordTarget", "patientRole", "patient", "administrativeGenderCode"] => {
            h.gender = attr(e, "code")?;
            None
        }
        ["recordTarget", "patientRole", "patient", "birthTime"] => {
            h.birth_time = attr(e, "value")?;
            None
        }
        ["author", "assignedAuthor", "id"] if h.author_id.root.is_empty() => {
            h.author_id = ii(e)?;
            None
        }
        ["author", "assignedAuthor", "assignedPerson", "name", "family"]
            if h.author_name.family.is_empty() =>
        {
            Some(AuthorFamily)
        }
        ["author", "assignedAuthor", "assignedPerson", "name", "given"]
            if h.author_name.given.is_empty() =>
        {
            Some(AuthorGiven)
        }
        ["author", "assignedAuthor", "representedOrganization", "id"]
            if h.organization_id.root.is_empty() =>
        {
            h.organization_id = ii(e)?;
            None
        }
        ["author", "assignedAuthor", "representedOrganization", "name"]
            if h.organization_name.is_empty() =>
        {
            Some(OrganizationName)
        }
        ["legalAuthenticator", "assignedEntity", "id"] => {
            h.legal_authenticator_id = ii(e)?;
            None
        }
        ["legalAuthenticator", "assignedEntity", "assignedPerson", "name", "family"] => {
            Some(LegalFamily)
        }
        ["legalAuthenticator", "assignedEntity", "assignedPerson", "name", "given"]
            if h.legal_authenticator_name.given.is_empty() =>
        {
            Some(LegalGiven)
        }
        ["inFulfillmentOf", "order", "id"] => {
            h.order = ii(e)?;
            None
        }
        ["inFulfillmentOf", "order", "accessionNumber"] => {
            h.accession = ii(e)?;
            None
        }
        ["documentationOf", "serviceEvent"] => {
            h.service_events.push(ServiceEvent::default());
            None
        }
        ["documentationOf", "serviceEvent", rest @ ..] => {
            let se = h
                .service_events
                .last_mut()
                .expect("opened with its serviceEvent");
            match rest {
                ["id"] => se.id = ii(e)?,
                ["code"] => se.code = code(e)?,
                ["code", "translation"] => se.translations.push(code(e)?),
                ["effectiveTime", "low"] => se.low = attr(e, "value")?,
                ["effectiveTime", "high"] => se.high = attr(e, "value")?,
                [.., "standardIndustryClassCode"] if se.practice_setting.is_none() => {
                    se.practice_setting = Some(code(e)?)
                }
                _ => {}
            }
            None
        }
        ["relatedDocument"] => {
            h.related_document = Some((attr(e, "typeCode")?, Ii::default()));
            None
        }
        ["relatedDocument", "parentDocument", "id"] => {
            if let Some((_, id)) = h.related_document.as_mut() {
                *id = ii(e)?;
            }
            None
        }
        ["componentOf", "encompassingEncounter", "location", "healthCareFacility", "code"] => {
            h.facility_type = code(e)?;
            None
        }
        _ => None,
    })
}

fn store_text(h: &mut CdaHeader, t: TextTarget, text: &str) {
    let s = text.to_string();
    match t {
        TextTarget::PatientFamily => h.patient_name.family = s,
        TextTarget::PatientGiven => h.patient_name.given = s,
        TextTarget::AuthorFamily => h.author_name.family = s,
        TextTarget::AuthorGiven => h.author_name.given = s,
        TextTarget::OrganizationName => h.organization_name = s,
        TextTarget::LegalFamily => h.legal_authenticator_name.family = s,
        TextTarget::LegalGiven => h.legal_authenticator_name.given = s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/ref/ans/CDA/IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml");
        std::fs::read(p).unwrap()
    }

    #[test]
    fn the_agencys_imaging_report_header() {
        let h = parse_header(&sample()).unwrap();
        assert_eq!(h.confidentiality.code, "N");
        assert_eq!(h.ins().unwrap().extension, "279035121518989");
        assert_eq!(h.ins().unwrap().root, "1.2.250.1.213.1.4.10");
        assert_eq!(
            h.patient_ids[1],
            Ii {
                root: "1.2.3.4.567.8.9.10".into(),
                extension: "1234567890121".into()
            }
        );
        assert_eq!(
            h.patient_name,
            Name {
                family: "PAT-TROIS".into(),
                given: "DOMINIQUE".into()
            }
        );
        assert_eq!(
            (h.gender.as_str(), h.birth_time.as_str()),
            ("F", "19790328")
        );
        assert_eq!(
            h.author_id,
            Ii {
                root: "1.2.250.1.71.4.2.1".into(),
                extension: "801234560801".into()
            }
        );
        assert_eq!(
            h.author_name,
            Name {
                family: "BIDEAULT".into(),
                given: "Jacques".into()
            }
        );
        assert_eq!(h.organization_id.extension, "101235555");
        assert_eq!(h.organization_name, "Centre de radiologie Ambroise");
        assert_eq!(h.legal_authenticator_id.extension, "801234560801");
        assert_eq!(
            h.order,
            Ii {
                root: "1.2.250.1.748.12345678.12".into(),
                extension: "984375862".into()
            }
        );
        assert_eq!(
            h.accession,
            Ii {
                root: "1.2.250.1.925.994044785528.27".into(),
                extension: "105234751".into()
            }
        );
        assert_eq!(h.facility_type.code, "SA08");
        // Three imaging acts (CT of head, neck, thorax), each with its own Study Instance UID and
        // codes, and a screening act (CIM-10) with no id.
        assert_eq!(h.service_events.len(), 4);
        assert_eq!(
            h.service_events[3].code.code_system,
            "2.16.840.1.113883.6.3"
        );
        assert!(h.service_events[3].id.root.is_empty());
        let first = &h.service_events[0];
        assert_eq!(first.id.root, "1.2.250.1.3.152.235.2.12.187636474");
        assert_eq!(first.code.code, "24727-0");
        let systems: Vec<&str> = first
            .translations
            .iter()
            .map(|t| t.code_system.as_str())
            .collect();
        assert!(systems.contains(&"1.2.250.1.213.2.5"), "CCAM: {systems:?}");
        assert!(first
            .translations
            .iter()
            .any(|t| t.code == "CT" && t.code_system == "1.2.840.10008.2.16.4"));
        let ids: std::collections::BTreeSet<&str> = h
            .service_events
            .iter()
            .map(|s| s.id.root.as_str())
            .filter(|r| !r.is_empty())
            .collect();
        assert_eq!(ids.len(), 3, "distinct study UIDs");
        let (kind, parent) = h.related_document.clone().unwrap();
        assert_eq!(
            (kind.as_str(), parent.root.as_str()),
            ("RPLC", "90E1C8EC-F951-4B26-A305-A34848818DD6")
        );
        assert!(!h.document_id.root.is_empty());
    }

    #[test]
    fn unsafe_or_foreign_documents_are_refused() {
        let lol = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><ClinicalDocument>&lol2;</ClinicalDocument>"#;
        assert_eq!(parse_header(lol), Err(CdaError::Doctype));
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><ClinicalDocument>&x;</ClinicalDocument>"#;
        assert_eq!(parse_header(xxe), Err(CdaError::Doctype));
        let undeclared = br#"<ClinicalDocument><recordTarget><patientRole><patient><name><family>&x;</family></name></patient></patientRole></recordTarget></ClinicalDocument>"#;
        assert_eq!(parse_header(undeclared), Err(CdaError::Entity("x".into())));
        assert_eq!(
            parse_header(b"<html/>"),
            Err(CdaError::NotCda("html".into()))
        );
        assert!(matches!(
            parse_header(b"<ClinicalDocument><id></ClinicalDocument>"),
            Err(CdaError::Xml(_))
        ));
        assert_eq!(
            parse_header(b"<ClinicalDocument/>"),
            Err(CdaError::Missing("recordTarget/patientRole/id"))
        );
        let deep = format!("<ClinicalDocument>{}", "<a>".repeat(MAX_DEPTH + 1));
        assert_eq!(parse_header(deep.as_bytes()), Err(CdaError::TooDeep));
        assert_eq!(
            parse_header(&vec![b' '; MAX_CDA + 1]),
            Err(CdaError::TooLarge(MAX_CDA + 1))
        );
        // Predefined entities and character references are fine.
        let ok = br#"<ClinicalDocument><recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="1"/><patient><name><family>A&amp;B&#233;</family></name></patient></patientRole></recordTarget><documentationOf><serviceEvent><id root="1.2.3"/></serviceEvent></documentationOf></ClinicalDocument>"#;
        assert_eq!(parse_header(ok).unwrap().patient_name.family, "A&Bé");
    }

    #[test]
    fn the_cda_inside_the_agencys_oru_is_the_same_document() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/ref/hl7/ORU_R01_K.hl7");
        let m = crate::hl7::message::Message::parse(&std::fs::read(p).unwrap()).unwrap();
        let r = crate::hl7::report::read(&m).unwrap();
        let h = parse_header(&r.cda).unwrap();
        assert_eq!(h.ins().unwrap().extension, r.ins.id);
        assert!(!h.service_events.is_empty());
    }
}
