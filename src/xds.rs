//! The XDS.b metadata of a submission lot: the submission set, the KOS document entry, the
//! IHE DSG signature document entry and their associations, in the shape of the agency's
//! accepted sample (`shared/ref/ans/XDS/publication.xml`, DRIM-M §2.5).
//!
//! Pure: every value comes in [`LotMetadata`] (times already in UTC, hashes of the exact bytes
//! sent); the output is the `lcm:SubmitObjectsRequest` element, compact (no indentation), used
//! as is for the XDM `METADATA.XML` and inside the ITI-41 request. Differences from the sample
//! are deliberate and listed in the test: UTC times and unique ids under our root are inputs;
//! the content type comes from configuration; association ids are `urn:uuid:`; the Study
//! Instance UID reference id has no made-up assigning authority; `signs` carries no
//! SubmissionSetStatus slot.

use std::fmt::Write;

pub const NS_RIM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0";
pub const NS_LCM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0";

const SCHEME_SS_AUTHOR: &str = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d";
const SCHEME_SS_CONTENT_TYPE: &str = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500";
const NODE_SUBMISSION_SET: &str = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd";
const SCHEME_SS_PATIENT: &str = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446";
const SCHEME_SS_SOURCE: &str = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832";
const SCHEME_SS_UNIQUE: &str = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8";
const DOCUMENT_ENTRY: &str = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1";
const SCHEME_DE_AUTHOR: &str = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d";
const SCHEME_DE_CLASS: &str = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a";
const SCHEME_DE_TYPE: &str = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983";
const SCHEME_DE_CONFIDENTIALITY: &str = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f";
const SCHEME_DE_FORMAT: &str = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d";
const SCHEME_DE_FACILITY: &str = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1";
const SCHEME_DE_PRACTICE: &str = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead";
const SCHEME_DE_EVENT: &str = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4";
const SCHEME_DE_PATIENT: &str = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427";
const SCHEME_DE_UNIQUE: &str = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab";

/// A coded value with its coding scheme and display name (XDS Classification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub code: String,
    pub scheme: String,
    pub display: String,
}

impl Code {
    pub fn new(code: &str, scheme: &str, display: &str) -> Code {
        Code {
            code: code.into(),
            scheme: scheme.into(),
            display: display.into(),
        }
    }
}

/// XDS author: an XCN person and an XON institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub person: String,
    pub institution: String,
}

/// What differs between the KOS entry and the signature entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentEntry {
    pub creation_time: String,
    pub language: String,
    pub service_start: String,
    pub service_stop: String,
    pub source_patient_id: String,
    /// SHA-1 hex of the exact bytes, and their length.
    pub hash: String,
    pub size: u64,
    /// `PID-5|…`, `PID-7|…`, `PID-8|…` (KOS entry only).
    pub source_patient_info: Vec<String>,
    pub title: String,
    pub comments: String,
    pub class: Code,
    pub type_code: Code,
    pub confidentiality: Vec<Code>,
    pub format: Code,
    pub events: Vec<Code>,
    pub unique_id: String,
    /// Path of the document inside an XDM subset (`URI` slot), when written to media.
    pub uri: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotMetadata {
    pub submission_time: String,
    pub submission_title: String,
    pub submission_comments: String,
    pub author: Author,
    pub content_type: Code,
    /// `<INS>^^^&<oid>&ISO^NH`
    pub patient_id: String,
    pub source_id: String,
    pub submission_set_unique_id: String,
    pub legal_authenticator: String,
    pub facility_type: Code,
    pub practice_setting: Code,
    pub reference_ids: Vec<String>,
    pub kos: DocumentEntry,
    pub signature: DocumentEntry,
    /// Ids of the HasMember(KOS), HasMember(signature), signs (and RPLC) associations.
    pub association_ids: [String; 4],
    /// entryUUID of the KOS this lot replaces (TD2.1b), if any.
    pub replaces_entry_uuid: Option<String>,
}

/// Escapes text for an attribute value or element content.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // Attribute values are always double-quoted: `'` stays as is, as in the sample.
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

struct Writer {
    out: String,
    classification: u32,
    identifier: u32,
}

impl Writer {
    fn slot(&mut self, name: &str, values: &[&str]) {
        let _ = write!(self.out, "<Slot name=\"{}\"><ValueList>", escape(name));
        for v in values {
            let _ = write!(self.out, "<Value>{}</Value>", escape(v));
        }
        self.out.push_str("</ValueList></Slot>");
    }

    fn localized(&mut self, element: &str, value: &str) {
        let _ = write!(
            self.out,
            "<{element}><LocalizedString charset=\"UTF8\" value=\"{}\" xml:lang=\"FR\"/></{element}>",
            escape(value)
        );
    }

    fn next_classification(&mut self) -> String {
        self.classification += 1;
        format!("cla{}", self.classification)
    }

    fn author(&mut self, scheme: &str, object: &str, author: &Author) {
        let id = self.next_classification();
        let _ = write!(
            self.out,
            "<Classification classificationScheme=\"{scheme}\" classifiedObject=\"{object}\" id=\"{id}\">"
        );
        self.slot("authorPerson", &[&author.person]);
        self.slot("authorInstitution", &[&author.institution]);
        self.out.push_str("</Classification>");
    }

    fn code(&mut self, scheme: &str, object: &str, code: &Code) {
        let id = self.next_classification();
        let _ = write!(
            self.out,
            "<Classification classificationScheme=\"{scheme}\" classifiedObject=\"{object}\" id=\"{id}\" nodeRepresentation=\"{}\">",
            escape(&code.code)
        );
        self.slot("codingScheme", &[&code.scheme]);
        self.localized("Name", &code.display);
        self.out.push_str("</Classification>");
    }

    fn identifier(&mut self, scheme: &str, object: &str, value: &str, name: &str) {
        self.identifier += 1;
        let _ = write!(
            self.out,
            "<ExternalIdentifier id=\"ei{}\" identificationScheme=\"{scheme}\" registryObject=\"{object}\" value=\"{}\">",
            self.identifier,
            escape(value)
        );
        self.localized("Name", name);
        self.out.push_str("</ExternalIdentifier>");
    }

    fn entry(&mut self, id: &str, mime: &str, lot: &LotMetadata, e: &DocumentEntry) {
        let _ = write!(
            self.out,
            "<ExtrinsicObject id=\"{id}\" mimeType=\"{mime}\" objectType=\"{DOCUMENT_ENTRY}\">"
        );
        self.slot("creationTime", &[&e.creation_time]);
        self.slot("submissionTime", &[&lot.submission_time]);
        self.slot("languageCode", &[&e.language]);
        self.slot("legalAuthenticator", &[&lot.legal_authenticator]);
        self.slot("serviceStartTime", &[&e.service_start]);
        self.slot("serviceStopTime", &[&e.service_stop]);
        self.slot("sourcePatientId", &[&e.source_patient_id]);
        self.slot("hash", &[&e.hash]);
        self.slot("size", &[&e.size.to_string()]);
        if !e.source_patient_info.is_empty() {
            let info: Vec<&str> = e.source_patient_info.iter().map(String::as_str).collect();
            self.slot("sourcePatientInfo", &info);
        }
        if let Some(uri) = &e.uri {
            self.slot("URI", &[uri]);
        }
        self.localized("Name", &e.title);
        self.localized("Description", &e.comments);
        self.author(SCHEME_DE_AUTHOR, id, &lot.author);
        self.code(SCHEME_DE_CLASS, id, &e.class);
        self.code(SCHEME_DE_TYPE, id, &e.type_code);
        for c in &e.confidentiality {
            self.code(SCHEME_DE_CONFIDENTIALITY, id, c);
        }
        self.code(SCHEME_DE_FORMAT, id, &e.format);
        self.code(SCHEME_DE_FACILITY, id, &lot.facility_type);
        self.code(SCHEME_DE_PRACTICE, id, &lot.practice_setting);
        for c in &e.events {
            self.code(SCHEME_DE_EVENT, id, c);
        }
        let refs: Vec<&str> = lot.reference_ids.iter().map(String::as_str).collect();
        if !refs.is_empty() {
            self.slot("urn:ihe:iti:xds:2013:referenceIdList", &refs);
        }
        self.identifier(
            SCHEME_DE_PATIENT,
            id,
            &lot.patient_id,
            "XDSDocumentEntry.patientId",
        );
        self.identifier(
            SCHEME_DE_UNIQUE,
            id,
            &e.unique_id,
            "XDSDocumentEntry.uniqueId",
        );
        self.out.push_str("</ExtrinsicObject>");
    }

    fn association(&mut self, kind: &str, id: &str, source: &str, target: &str, status: bool) {
        let _ = write!(
            self.out,
            "<Association associationType=\"{kind}\" id=\"{}\" sourceObject=\"{source}\" targetObject=\"{}\"",
            escape(id),
            escape(target)
        );
        if status {
            self.out.push('>');
            self.slot("SubmissionSetStatus", &["Original"]);
            self.out.push_str("</Association>");
        } else {
            self.out.push_str("/>");
        }
    }
}

pub const SUBMISSION_SET_ID: &str = "SubmissionSet01";

/// The submission set of any submission: a lot, or a withdrawal (ITI-57).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionSet {
    pub submission_time: String,
    pub title: String,
    pub comments: String,
    pub author: Author,
    pub content_type: Code,
    pub patient_id: String,
    pub source_id: String,
    pub unique_id: String,
}

impl Writer {
    fn submission_set(&mut self, s: &SubmissionSet) {
        let ss = SUBMISSION_SET_ID;
        let _ = write!(self.out, "<RegistryPackage id=\"{ss}\">");
        self.slot("submissionTime", &[&s.submission_time]);
        self.localized("Name", &s.title);
        self.localized("Description", &s.comments);
        self.author(SCHEME_SS_AUTHOR, ss, &s.author);
        self.code(SCHEME_SS_CONTENT_TYPE, ss, &s.content_type);
        let id = self.next_classification();
        let _ = write!(
            self.out,
            "<Classification classificationNode=\"{NODE_SUBMISSION_SET}\" classifiedObject=\"{ss}\" id=\"{id}\"/>"
        );
        self.identifier(
            SCHEME_SS_PATIENT,
            ss,
            &s.patient_id,
            "XDSSubmissionSet.patientId",
        );
        self.identifier(
            SCHEME_SS_SOURCE,
            ss,
            &s.source_id,
            "XDSSubmissionSet.sourceId",
        );
        self.identifier(
            SCHEME_SS_UNIQUE,
            ss,
            &s.unique_id,
            "XDSSubmissionSet.uniqueId",
        );
        self.out.push_str("</RegistryPackage>");
    }
}

/// The `RegistryPackage` of a submission set alone (the metadata of an ITI-57 withdrawal).
pub fn submission_set_package(s: &SubmissionSet) -> String {
    let mut w = Writer {
        out: String::new(),
        classification: 0,
        identifier: 0,
    };
    w.submission_set(s);
    w.out
}
pub const KOS_ENTRY_ID: &str = "DocumentKOS";
pub const SIGNATURE_ENTRY_ID: &str = "Signature01";

/// The `RegistryObjectList` element (default namespace: rim).
pub fn registry_object_list(lot: &LotMetadata) -> String {
    let mut w = Writer {
        out: String::with_capacity(16 * 1024),
        classification: 0,
        identifier: 0,
    };
    let ss = SUBMISSION_SET_ID;
    w.out.push_str("<RegistryObjectList>");
    w.submission_set(&SubmissionSet {
        submission_time: lot.submission_time.clone(),
        title: lot.submission_title.clone(),
        comments: lot.submission_comments.clone(),
        author: lot.author.clone(),
        content_type: lot.content_type.clone(),
        patient_id: lot.patient_id.clone(),
        source_id: lot.source_id.clone(),
        unique_id: lot.submission_set_unique_id.clone(),
    });
    w.entry(KOS_ENTRY_ID, "application/dicom", lot, &lot.kos);
    w.entry(SIGNATURE_ENTRY_ID, "text/xml", lot, &lot.signature);
    let [a1, a2, a3, a4] = &lot.association_ids;
    let has_member = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember";
    w.association(has_member, a1, ss, KOS_ENTRY_ID, true);
    w.association(has_member, a2, ss, SIGNATURE_ENTRY_ID, true);
    w.association(
        "urn:ihe:iti:2007:AssociationType:signs",
        a3,
        SIGNATURE_ENTRY_ID,
        ss,
        false,
    );
    if let Some(previous) = &lot.replaces_entry_uuid {
        w.association(
            "urn:ihe:iti:2007:AssociationType:RPLC",
            a4,
            KOS_ENTRY_ID,
            previous,
            false,
        );
    }
    w.out.push_str("</RegistryObjectList>");
    w.out
}

/// `lcm:SubmitObjectsRequest` as a standalone document (XDM `METADATA.XML`).
pub fn submit_objects_request(lot: &LotMetadata) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<lcm:SubmitObjectsRequest xmlns:lcm=\"{NS_LCM}\" xmlns=\"{NS_RIM}\">{}</lcm:SubmitObjectsRequest>\n",
        registry_object_list(lot)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const PUBLICATION: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/ref/ans/XDS/publication.xml"
    );

    fn code(c: &str, s: &str, d: &str) -> Code {
        Code::new(c, s, d)
    }

    /// The agency sample's values, as inputs.
    pub fn reference_lot() -> LotMetadata {
        let author = "899700367909^DOC0036790^KIT^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS";
        let patient = "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH";
        let study = "1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.116";
        LotMetadata {
            submission_time: "20231114144458".into(),
            submission_title: "submissionset title".into(),
            submission_comments: "submissionset comments".into(),
            author: Author {
                person: author.into(),
                institution: "BCOM^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^499700367909006".into(),
            },
            content_type: code("04", "1.2.250.1.213.2.2", "Hospitalisation de jour"),
            patient_id: patient.into(),
            source_id: "1.2.250.1.999.1.1.8121".into(),
            submission_set_unique_id: "1.2.250.1.999.1.1.8121.5.7122".into(),
            legal_authenticator: author.into(),
            facility_type: code(
                "SA01",
                "1.2.250.1.71.4.2.4",
                "Etablissement public de santé",
            ),
            practice_setting: code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire"),
            reference_ids: vec![
                "7252295367250016^^^&1.2.840.113619.6.196&ISO^urn:ihe:iti:xds:2013:accession"
                    .into(),
                format!("{study}^^^^urn:ihe:iti:xds:2016:studyInstanceUID"),
                "12989855966^^^&2.16.840.1.113883.6.96&ISO^urn:ihe:iti:xds:2013:order".into(),
            ],
            kos: DocumentEntry {
                creation_time: "20231114144457".into(),
                language: "fr-FR".into(),
                service_start: "20210104092200".into(),
                service_stop: "20210104160500".into(),
                source_patient_id: "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^PI".into(),
                hash: "58408c116b51497c0f2084c90da3c85c7098455a".into(),
                size: 8450,
                source_patient_info: vec![
                    "PID-5|PAT-SIX^Alain^^^^^L".into(),
                    "PID-7|19960124".into(),
                    "PID-8|M".into(),
                ],
                title: "Reference d'Objets d'un Examen d'Imagerie".into(),
                comments: "KOS".into(),
                class: code("31", "1.2.250.1.213.1.1.4.1", "Imagerie médicale"),
                type_code: code(
                    "IMG-KOS",
                    "1.2.250.1.213.1.1.4.12",
                    "Reference d'objets d'un examen d'imagerie",
                ),
                confidentiality: vec![code("N", "2.16.840.1.113883.5.25", "Normal")],
                format: code(
                    "1.2.840.10008.5.1.4.1.1.88.59",
                    "1.2.840.10008.2.6.1",
                    "Document de Références d'objets d'imagerie selon profil IHE RAD XDS-I",
                ),
                events: vec![
                    code("63337009", "1.2.250.1.213.2.5", "Abdomen + pelvis"),
                    code("MR", "1.2.250.1.213.1.1.5.618", "Magnetic Resonance"),
                ],
                unique_id: "1.3.2.751468943.3.1234.56838.231114144457.1.1.1".into(),
                uri: None,
            },
            signature: DocumentEntry {
                creation_time: "20231114144458".into(),
                language: "art".into(),
                service_start: "20231114144458".into(),
                service_stop: "20231114144458".into(),
                source_patient_id: patient.into(),
                hash: "bc9498379c2ef8da40b372fe38f2f14a3e058cf8".into(),
                size: 6102,
                source_patient_info: vec![],
                title: "Source".into(),
                comments: String::new(),
                class: code(
                    "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1",
                    "URN",
                    "Digital Signature",
                ),
                type_code: code("E1762", "ASTM", "Full Document"),
                confidentiality: vec![
                    code("N", "2.16.840.1.113883.5.25", "Normal"),
                    code(
                        "MASQUE_PS",
                        "1.2.250.1.213.1.1.4.13",
                        "Masqué aux professionnels de santé",
                    ),
                    code(
                        "INVISIBLE_PATIENT",
                        "1.2.250.1.213.1.1.4.13",
                        "Non visible par le patient",
                    ),
                ],
                format: code(
                    "http://www.w3.org/2000/09/xmldsig#",
                    "URN",
                    "Default Signature Style",
                ),
                events: vec![code(
                    "1.2.840.10065.1.12.1.14",
                    "1.2.840.10065.1.12",
                    "Source",
                )],
                unique_id: "2.25.253872960909518376796861585574417771331".into(),
                uri: None,
            },
            association_ids: [
                "2412ac2d-a841-40e6-b076-1d2195213d2a".into(),
                "aa1674cc-2f77-4342-b80d-e731689521c1".into(),
                "b4741eac-8e65-4aef-b5d0-64069c1a5ddd".into(),
                String::new(),
            ],
            replaces_entry_uuid: None,
        }
    }

    /// Drops the whitespace between tags and renumbers `claN` / `eiN` ids in order.
    fn normalise(xml: &str) -> String {
        let mut out = String::new();
        let mut pending_ws = String::new();
        let mut after_tag = false;
        for c in xml.chars() {
            if after_tag && c.is_whitespace() {
                pending_ws.push(c);
                continue;
            }
            if c == '<' {
                pending_ws.clear();
            } else {
                out.push_str(&pending_ws);
                pending_ws.clear();
            }
            after_tag = c == '>';
            out.push(c);
        }
        for prefix in ["cla", "ei"] {
            let mut n = 0;
            let mut result = String::new();
            let mut rest = out.as_str();
            let pat = format!("id=\"{prefix}");
            while let Some(i) = rest.find(&pat) {
                result.push_str(&rest[..i + pat.len()]);
                let digits = rest[i + pat.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .count();
                n += 1;
                result.push_str(&n.to_string());
                rest = &rest[i + pat.len() + digits..];
            }
            result.push_str(rest);
            out = result;
        }
        out
    }

    #[test]
    fn same_metadata_as_the_agency_sample_but_for_the_listed_fixes() {
        let text = std::fs::read_to_string(PUBLICATION).expect("reference data");
        let start = text.find("<RegistryObjectList>").unwrap();
        let end = text.find("</RegistryObjectList>").unwrap() + "</RegistryObjectList>".len();
        let mut reference = normalise(&text[start..end]);
        // The fixes, applied to the sample: no made-up assigning authority on the study UID, and
        // no SubmissionSetStatus slot on `signs`.
        reference = reference.replace(
            "^^^&amp;1.2.3.4.5.6&amp;ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
            "^^^^urn:ihe:iti:xds:2016:studyInstanceUID",
        );
        let signs = "sourceObject=\"Signature01\" targetObject=\"SubmissionSet01\">";
        let slot = "<Slot name=\"SubmissionSetStatus\"><ValueList><Value>Original</Value></ValueList></Slot></Association>";
        let i = reference.find(signs).unwrap();
        let tail = reference[i + signs.len()..].replacen(slot, "", 1);
        reference = format!(
            "{}sourceObject=\"Signature01\" targetObject=\"SubmissionSet01\"/>{tail}",
            &reference[..i]
        );
        let ours = normalise(&registry_object_list(&reference_lot()));
        if ours != reference {
            let at = ours
                .bytes()
                .zip(reference.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(reference.len()));
            panic!(
                "differs at {at}:\n ours: {}\n  ref: {}",
                &ours[at.saturating_sub(80)..(at + 120).min(ours.len())],
                &reference[at.saturating_sub(80)..(at + 120).min(reference.len())]
            );
        }
    }

    #[test]
    fn replacement_and_media_paths() {
        let mut lot = reference_lot();
        lot.replaces_entry_uuid = Some("urn:uuid:0b6b1c1a-0000-4000-8000-000000000001".into());
        lot.association_ids[3] = "urn:uuid:0b6b1c1a-0000-4000-8000-000000000002".into();
        lot.kos.uri = Some("KOS_1_1.DCM".into());
        let xml = submit_objects_request(&lot);
        assert!(xml.contains("associationType=\"urn:ihe:iti:2007:AssociationType:RPLC\" id=\"urn:uuid:0b6b1c1a-0000-4000-8000-000000000002\" sourceObject=\"DocumentKOS\" targetObject=\"urn:uuid:0b6b1c1a-0000-4000-8000-000000000001\"/>"));
        assert!(xml.contains("<Slot name=\"URI\"><ValueList><Value>KOS_1_1.DCM</Value>"));
        assert!(xml
            .starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<lcm:SubmitObjectsRequest"));
    }
}
