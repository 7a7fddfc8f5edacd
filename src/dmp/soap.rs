//! The SOAP 1.2 requests the publisher sends (DRIM-M §2.2, §2.5, §2.8, §2.9): ITI-41
//! ProvideAndRegister (MTOM, with the archived lot), ITI-18 GetDocuments (to learn an entryUUID,
//! and to settle a publication whose outcome is unknown), ITI-57 UpdateDocumentSet (withdraw).
//! Pure: the VIHF, ids and endpoints come in.

use super::mtom;
use crate::xds::escape;

pub const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_WSA: &str = "http://www.w3.org/2005/08/addressing";
pub const NS_WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
pub const ACTION_PNR: &str = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b";
pub const ACTION_QUERY: &str = "urn:ihe:iti:2007:RegistryStoredQuery";
pub const ACTION_UPDATE: &str = "urn:ihe:iti:2010:UpdateDocumentSet";
/// ITI-18 GetDocuments stored query.
pub const GET_DOCUMENTS: &str = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4";
/// ITI-18 FindDocuments stored query.
pub const FIND_DOCUMENTS: &str = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d";
const NS_QUERY: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0";
const NS_RIM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0";
const NS_LCM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0";
const NS_XDSB: &str = "urn:ihe:iti:xds-b:2007";

/// The envelope around a body: WS-Addressing (MessageID, To, Action with
/// `soap:mustUnderstand`) and the VIHF in WS-Security.
pub fn envelope(message_id: &str, to: &str, action: &str, vihf: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <soap:Envelope xmlns:soap=\"{NS_SOAP}\"><soap:Header>\
         <MessageID xmlns=\"{NS_WSA}\">{}</MessageID>\
         <To xmlns=\"{NS_WSA}\">{}</To>\
         <Action xmlns=\"{NS_WSA}\" soap:mustUnderstand=\"true\">{}</Action>\
         <wsse:Security xmlns:wsse=\"{NS_WSSE}\">{vihf}</wsse:Security>\
         </soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>",
        escape(message_id),
        escape(to),
        escape(action),
    )
}

/// The `lcm:SubmitObjectsRequest` element of an archived `SUBMISSION.XML` (its declaration
/// dropped: it is embedded).
fn submit_objects(submission: &str) -> &str {
    let s = submission.trim();
    match s.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map(|(_, r)| r.trim()).unwrap_or(s),
        None => s,
    }
}

/// An ITI-41 request: (HTTP Content-Type, body). `documents` are (entry id, Content-ID, bytes)
/// — the KOS and the signature document exactly as archived.
pub fn provide_and_register(
    message_id: &str,
    to: &str,
    vihf: &str,
    submission: &str,
    documents: &[(&str, &str, &[u8])],
    boundary: &str,
) -> (String, Vec<u8>) {
    let mut body = format!(
        "<ns4:ProvideAndRegisterDocumentSetRequest xmlns:ns4=\"{NS_XDSB}\">{}",
        submit_objects(submission)
    );
    for (entry, cid, _) in documents {
        body.push_str(&format!(
            "<ns4:Document id=\"{}\"><xop:Include xmlns:xop=\"http://www.w3.org/2004/08/xop/include\" href=\"cid:{}\"/></ns4:Document>",
            escape(entry),
            escape(cid)
        ));
    }
    body.push_str("</ns4:ProvideAndRegisterDocumentSetRequest>");
    let root_id = format!("root.{}", message_id.trim_start_matches("urn:uuid:"));
    let root = mtom::Part {
        content_id: root_id.clone(),
        content_type: "application/xop+xml".into(),
        body: envelope(message_id, to, ACTION_PNR, vihf, &body).into_bytes(),
    };
    let attachments: Vec<mtom::Part> = documents
        .iter()
        .map(|(_, cid, bytes)| mtom::Part {
            content_id: cid.to_string(),
            content_type: "application/octet-stream".into(),
            body: bytes.to_vec(),
        })
        .collect();
    (
        mtom::content_type(boundary, &root_id, ACTION_PNR),
        mtom::build(boundary, &root, ACTION_PNR, &attachments),
    )
}

/// An ITI-18 GetDocuments by uniqueId (plain SOAP, `application/soap+xml`).
pub fn get_documents(message_id: &str, to: &str, vihf: &str, unique_id: &str) -> String {
    let body = format!(
        "<query:AdhocQueryRequest xmlns:query=\"{NS_QUERY}\" xmlns:rim=\"{NS_RIM}\">\
         <query:ResponseOption returnComposedObjects=\"true\" returnType=\"ObjectRef\"/>\
         <rim:AdhocQuery id=\"{GET_DOCUMENTS}\">\
         <rim:Slot name=\"$XDSDocumentEntryUniqueId\"><rim:ValueList><rim:Value>('{}')</rim:Value></rim:ValueList></rim:Slot>\
         </rim:AdhocQuery></query:AdhocQueryRequest>",
        escape(unique_id)
    );
    envelope(message_id, to, ACTION_QUERY, vihf, &body)
}

/// An ITI-18 FindDocuments: a patient's entries (`<INS>^^^&<oid>&ISO^NH`) with one of `statuses`.
pub fn find_documents(
    message_id: &str,
    to: &str,
    vihf: &str,
    patient_id: &str,
    statuses: &[&str],
) -> String {
    let list: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", escape(s)))
        .collect();
    let body = format!(
        "<query:AdhocQueryRequest xmlns:query=\"{NS_QUERY}\" xmlns:rim=\"{NS_RIM}\">\
         <query:ResponseOption returnComposedObjects=\"true\" returnType=\"ObjectRef\"/>\
         <rim:AdhocQuery id=\"{FIND_DOCUMENTS}\">\
         <rim:Slot name=\"$XDSDocumentEntryPatientId\"><rim:ValueList><rim:Value>'{}'</rim:Value></rim:ValueList></rim:Slot>\
         <rim:Slot name=\"$XDSDocumentEntryStatus\"><rim:ValueList><rim:Value>({})</rim:Value></rim:ValueList></rim:Slot>\
         </rim:AdhocQuery></query:AdhocQueryRequest>",
        escape(patient_id),
        list.join(",")
    );
    envelope(message_id, to, ACTION_QUERY, vihf, &body)
}

/// An ITI-57 UpdateDocumentSet that sets an entry's availabilityStatus to Deleted (TD3.3c),
/// with a submission set (`submission_set`: its `RegistryPackage` element) as the metadata.
pub fn withdraw(
    message_id: &str,
    to: &str,
    vihf: &str,
    submission_set: &str,
    entry_uuid: &str,
    association_id: &str,
) -> String {
    let body = withdraw_body(submission_set, entry_uuid, association_id);
    envelope(message_id, to, ACTION_UPDATE, vihf, &body)
}

/// The body of an ITI-57 withdrawal (archived as the withdrawal's lot; the envelope and its
/// VIHF are made when it is sent).
pub fn withdraw_body(submission_set: &str, entry_uuid: &str, association_id: &str) -> String {
    format!(
        "<lcm:SubmitObjectsRequest xmlns:lcm=\"{NS_LCM}\" xmlns=\"{NS_RIM}\"><RegistryObjectList>{submission_set}\
         <Association associationType=\"urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus\" \
         id=\"{}\" sourceObject=\"SubmissionSet01\" targetObject=\"{}\">\
         <Slot name=\"OriginalStatus\"><ValueList><Value>urn:oasis:names:tc:ebxml-regrep:StatusType:Approved</Value></ValueList></Slot>\
         <Slot name=\"NewStatus\"><ValueList><Value>urn:asip:ci-sis:2010:StatusType:Deleted</Value></ValueList></Slot>\
         </Association></RegistryObjectList></lcm:SubmitObjectsRequest>",
        escape(association_id),
        escape(entry_uuid)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_from_an_archived_lot_is_what_the_simulator_reads() {
        // The agency's lot, restored to wire bytes, re-sent with our envelope and packaging.
        let (ct, body) = crate::dmp::sim::tests::agency_request();
        let m = mtom::parse(&ct, &body).unwrap();
        let envelope_text = String::from_utf8(m.root().unwrap().body.clone()).unwrap();
        let start = envelope_text.find("<ns3:SubmitObjectsRequest>").unwrap();
        let end = envelope_text.find("</ns3:SubmitObjectsRequest>").unwrap();
        let list = &envelope_text[start + "<ns3:SubmitObjectsRequest>".len()..end];
        let submission = format!(
            "<?xml version=\"1.0\"?>\n<lcm:SubmitObjectsRequest xmlns:lcm=\"{NS_LCM}\" xmlns=\"{NS_RIM}\">{list}</lcm:SubmitObjectsRequest>"
        );
        let vstart = envelope_text.find("<saml2:Assertion").unwrap();
        let vend = envelope_text.find("</saml2:Assertion>").unwrap() + "</saml2:Assertion>".len();
        let vihf = &envelope_text[vstart..vend];
        let kos = m.by_cid("0.2").unwrap().body.clone();
        let sig = m.by_cid("0.3").unwrap().body.clone();
        let (ct2, body2) = provide_and_register(
            "urn:uuid:7d2c0a47-0000-4000-8000-000000000001",
            "https://dmp.example/repository",
            vihf,
            &submission,
            &[
                ("DocumentKOS", "kos@drimbox", &kos),
                ("Signature01", "sign@drimbox", &sig),
            ],
            "MIMEBoundary_drimbox",
        );
        let accepted = crate::dmp::sim::check_provide_and_register(
            &ct2,
            &body2,
            &crate::dmp::sim::Registry::default(),
            false, // the agency's VIHF, redacted: its signature cannot be checked
        )
        .unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(
            accepted.message_id,
            "urn:uuid:7d2c0a47-0000-4000-8000-000000000001"
        );
        let q = get_documents("urn:uuid:q", "https://dmp.example/registry", vihf, "1.2.3");
        assert!(q.contains("('1.2.3')") && q.contains(GET_DOCUMENTS));
        crate::xml::document::Document::parse(q.as_bytes()).unwrap();
        let w = withdraw(
            "urn:uuid:w",
            "https://dmp.example/registry",
            vihf,
            "<RegistryPackage id=\"SubmissionSet01\"/>",
            "urn:uuid:entry",
            "urn:uuid:assoc",
        );
        crate::xml::document::Document::parse(w.as_bytes()).unwrap();
    }
}
