//! The DMP's answers (ITI-41 / ITI-57 RegistryResponse, SOAP faults), read, and written by the
//! simulator. DRIM-M §2.7: an answer counts only when its `status` is Success **and** its
//! RelatesTo is our MessageID (the reference implementation checked neither).

use crate::xds::escape;
use crate::xml::document::{Document, NodeId};

pub const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_WSA: &str = "http://www.w3.org/2005/08/addressing";
pub const NS_RS: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0";
pub const SUCCESS: &str = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success";
pub const FAILURE: &str = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure";
pub const PARTIAL: &str = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:PartialSuccess";
pub const SEVERITY_ERROR: &str = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryError {
    pub code: String,
    pub context: String,
    pub location: String,
    pub severity: String,
}

/// What an answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Failure or PartialSuccess, with the registry's errors: needs a person, no blind retry.
    Refused {
        status: String,
        errors: Vec<RegistryError>,
    },
    /// A SOAP fault: the server could not process the request (retried with backoff).
    Fault {
        code: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub action: String,
    pub message_id: String,
    pub relates_to: String,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is not XML: {0}")]
    Xml(#[from] crate::xml::document::XmlError),
    #[error("the answer is not a SOAP 1.2 envelope")]
    NotSoap,
    #[error("the answer has neither a RegistryResponse nor a Fault")]
    NoResponse,
    #[error("the answer relates to {found}, not to our request {expected}")]
    NotOurs { expected: String, found: String },
}

fn descendants(doc: &Document, id: NodeId, ns: &str, local: &str, out: &mut Vec<NodeId>) {
    for c in doc.child_elements(id) {
        if doc.element(c).is_some_and(|e| e.is(ns, local)) {
            out.push(c);
        }
        descendants(doc, c, ns, local, out);
    }
}

fn first(doc: &Document, id: NodeId, ns: &str, local: &str) -> Option<NodeId> {
    let mut v = Vec::new();
    descendants(doc, id, ns, local, &mut v);
    v.first().copied()
}

/// Reads an answer; `expected` is our request's MessageID (checked against RelatesTo).
pub fn read(xml: &[u8], expected: &str) -> Result<Answer, AnswerError> {
    let doc = Document::parse(xml)?;
    let root = doc.root();
    if !doc.element(root).is_some_and(|e| e.is(NS_SOAP, "Envelope")) {
        return Err(AnswerError::NotSoap);
    }
    let text = |local: &str| {
        first(&doc, root, NS_WSA, local)
            .map(|n| doc.text(n).trim().to_string())
            .unwrap_or_default()
    };
    let answer = |outcome| Answer {
        action: text("Action"),
        message_id: text("MessageID"),
        relates_to: text("RelatesTo"),
        outcome,
    };
    let outcome = if let Some(r) = first(&doc, root, NS_RS, "RegistryResponse") {
        let status = doc
            .element(r)
            .and_then(|e| e.attribute("status"))
            .unwrap_or_default()
            .to_string();
        if status == SUCCESS {
            Outcome::Success
        } else {
            let mut nodes = Vec::new();
            descendants(&doc, r, NS_RS, "RegistryError", &mut nodes);
            let errors = nodes
                .iter()
                .filter_map(|n| doc.element(*n))
                .map(|e| RegistryError {
                    code: e.attribute("errorCode").unwrap_or_default().to_string(),
                    context: e.attribute("codeContext").unwrap_or_default().to_string(),
                    location: e.attribute("location").unwrap_or_default().to_string(),
                    severity: e.attribute("severity").unwrap_or_default().to_string(),
                })
                .collect();
            Outcome::Refused { status, errors }
        }
    } else if let Some(f) = first(&doc, root, NS_SOAP, "Fault") {
        let code = first(&doc, f, NS_SOAP, "Value")
            .map(|n| doc.text(n).trim().to_string())
            .unwrap_or_default();
        let reason = first(&doc, f, NS_SOAP, "Text")
            .map(|n| doc.text(n).trim().to_string())
            .unwrap_or_default();
        Outcome::Fault { code, reason }
    } else {
        return Err(AnswerError::NoResponse);
    };
    let a = answer(outcome);
    if a.relates_to != expected {
        return Err(AnswerError::NotOurs {
            expected: expected.to_string(),
            found: a.relates_to,
        });
    }
    Ok(a)
}

pub const NS_QUERY: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0";
const NS_RIM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0";

/// Reads an ITI-18 answer: the entryUUIDs (ObjectRef ids) it lists, once it is known to be
/// ours and a Success.
pub fn read_query(xml: &[u8], expected: &str) -> Result<Result<Vec<String>, Outcome>, AnswerError> {
    let doc = Document::parse(xml)?;
    let root = doc.root();
    if !doc.element(root).is_some_and(|e| e.is(NS_SOAP, "Envelope")) {
        return Err(AnswerError::NotSoap);
    }
    let relates = first(&doc, root, NS_WSA, "RelatesTo")
        .map(|n| doc.text(n).trim().to_string())
        .unwrap_or_default();
    if relates != expected {
        return Err(AnswerError::NotOurs {
            expected: expected.to_string(),
            found: relates,
        });
    }
    let Some(r) = first(&doc, root, NS_QUERY, "AdhocQueryResponse") else {
        return read(xml, expected).map(|a| Err(a.outcome));
    };
    let status = doc
        .element(r)
        .and_then(|e| e.attribute("status"))
        .unwrap_or_default();
    if status != SUCCESS {
        return Ok(Err(Outcome::Refused {
            status: status.to_string(),
            errors: Vec::new(),
        }));
    }
    let mut refs = Vec::new();
    descendants(&doc, r, NS_RIM, "ObjectRef", &mut refs);
    Ok(Ok(refs
        .iter()
        .filter_map(|n| doc.element(*n).and_then(|e| e.attribute("id")))
        .map(str::to_string)
        .collect()))
}

/// A RegistryResponse envelope as the DMP (Apache CXF) writes it: Success, or Failure with its
/// RegistryErrorList.
pub fn registry_response(
    action: &str,
    message_id: &str,
    relates_to: &str,
    errors: &[RegistryError],
) -> String {
    let status = if errors.is_empty() { SUCCESS } else { FAILURE };
    let mut body = format!("<ns2:RegistryResponse xmlns:ns2=\"{NS_RS}\" status=\"{status}\"");
    if errors.is_empty() {
        body.push_str("/>");
    } else {
        body.push_str(&format!(
            "><ns2:RegistryErrorList highestSeverity=\"{SEVERITY_ERROR}\">"
        ));
        for e in errors {
            body.push_str(&format!(
                "<ns2:RegistryError errorCode=\"{}\" codeContext=\"{}\" location=\"{}\" severity=\"{}\"/>",
                escape(&e.code),
                escape(&e.context),
                escape(&e.location),
                escape(&e.severity)
            ));
        }
        body.push_str("</ns2:RegistryErrorList></ns2:RegistryResponse>");
    }
    format!(
        "<soap:Envelope xmlns:soap=\"{NS_SOAP}\"><soap:Header>\
         <Action xmlns=\"{NS_WSA}\">{}</Action><MessageID xmlns=\"{NS_WSA}\">{}</MessageID>\
         <RelatesTo xmlns=\"{NS_WSA}\">{}</RelatesTo></soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>",
        escape(action),
        escape(message_id),
        escape(relates_to)
    )
}

/// A SOAP 1.2 fault (what the DMP answers with HTTP 500).
pub fn fault(relates_to: &str, reason: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{NS_SOAP}\"><soap:Header><RelatesTo xmlns=\"{NS_WSA}\">{}</RelatesTo></soap:Header>\
         <soap:Body><soap:Fault><soap:Code><soap:Value>soap:Receiver</soap:Value></soap:Code>\
         <soap:Reason><soap:Text xml:lang=\"en\">{}</soap:Text></soap:Reason></soap:Fault></soap:Body></soap:Envelope>",
        escape(relates_to),
        escape(reason)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST_ID: &str = "urn:uuid:a6ba8f7f-b214-4a2d-96f1-54293d537ce3";

    fn sample_answer() -> Vec<u8> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/ref/ans/XDS/response.xml"
        ))
        .unwrap();
        let start = text.find("<soap:Envelope").unwrap();
        let end = text.find("</soap:Envelope>").unwrap() + "</soap:Envelope>".len();
        text.as_bytes()[start..end].to_vec()
    }

    #[test]
    fn the_dmps_success_relates_to_the_agencys_request() {
        let a = read(&sample_answer(), REQUEST_ID).unwrap();
        assert_eq!(a.outcome, Outcome::Success);
        assert_eq!(
            a.action,
            "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
        );
        // Someone else's answer is not ours, whatever it says.
        assert!(matches!(
            read(
                &sample_answer(),
                "urn:uuid:00000000-0000-4000-8000-000000000000"
            ),
            Err(AnswerError::NotOurs { .. })
        ));
    }

    #[test]
    fn failures_and_faults_round_trip() {
        let errors = vec![RegistryError {
            code: "XDSRepositoryMetadataError".into(),
            context: "hash of DocumentKOS does not match its part".into(),
            location: "DocumentKOS".into(),
            severity: SEVERITY_ERROR.into(),
        }];
        let xml = registry_response("urn:x-Response", "urn:uuid:1", "urn:uuid:req", &errors);
        let a = read(xml.as_bytes(), "urn:uuid:req").unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Refused {
                status: FAILURE.into(),
                errors
            }
        );
        let f = fault("urn:uuid:req", "database <down>");
        match read(f.as_bytes(), "urn:uuid:req").unwrap().outcome {
            Outcome::Fault { code, reason } => {
                assert_eq!(code, "soap:Receiver");
                assert_eq!(reason, "database <down>");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read(b"<html/>", "x"), Err(AnswerError::NotSoap)));
    }
}
