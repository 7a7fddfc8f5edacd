//! The content of the whitelist (DRIM-M §5.1), read leniently: either known namespace,
//! unknown elements ignored, Identifiant not assumed unique. Only what the root holds
//! directly is read (never a lookalike under `ds:Signature`, which the signature does not
//! cover), so signature wrapping cannot slip domains in.

use serde::Serialize;

use crate::xml::document::{Document, NodeId};

/// The namespaces the agency has used (2026 homologation list, 2024 informative list).
pub const NAMESPACES: [&str; 2] = [
    "https://github.com/ansforge/DRIM-M_DATA",
    "https://listeblanche.mesimagesmedicales.fr/schema",
];
pub const ROOT: &str = "ListeBlancheDRIM-M";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Domain {
    pub identifiant: String,
    /// The DRIMbox access point (WADO-RS) host.
    pub db: String,
    /// The viewer access point host.
    pub vi: String,
    pub denomination: String,
    /// The operator's TLS certificate DN.
    pub dn: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListContent {
    /// `DateDeGeneration` as written, and in seconds since the epoch.
    pub generated: String,
    pub generated_unix: i64,
    pub domains: Vec<Domain>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the root element is {0}, not {ROOT} in a known namespace")]
    Root(String),
    #[error("DateDeGeneration is missing or not a date-time: `{0}`")]
    Date(String),
    #[error("ListeDomaines is missing")]
    NoDomains,
    #[error("Domaine {0} has no db host")]
    NoDb(usize),
}

fn in_list_ns(doc: &Document, n: NodeId, local: &str) -> bool {
    doc.element(n)
        .is_some_and(|e| e.local == local && NAMESPACES.contains(&e.namespace.as_str()))
}

fn child<'a>(doc: &'a Document, n: NodeId, local: &'a str) -> impl Iterator<Item = NodeId> + 'a {
    doc.child_elements(n)
        .filter(move |c| in_list_ns(doc, *c, local))
}

fn text(doc: &Document, n: NodeId, local: &str) -> String {
    child(doc, n, local)
        .next()
        .map(|c| doc.text(c).trim().to_string())
        .unwrap_or_default()
}

/// Whether the root element is the list's.
pub fn check_root(doc: &Document) -> Result<(), ListError> {
    let root = doc.root();
    if in_list_ns(doc, root, ROOT) {
        return Ok(());
    }
    let name = doc
        .element(root)
        .map(|e| format!("{{{}}}{}", e.namespace, e.local))
        .unwrap_or_default();
    Err(ListError::Root(name))
}

/// Reads the list's date and domains.
pub fn read(doc: &Document) -> Result<ListContent, ListError> {
    check_root(doc)?;
    let root = doc.root();
    let generated = text(doc, root, "DateDeGeneration");
    let generated_unix = crate::status::parse_rfc3339(&generated)
        .ok_or_else(|| ListError::Date(generated.clone()))?;
    let list = child(doc, root, "ListeDomaines")
        .next()
        .ok_or(ListError::NoDomains)?;
    let mut domains = Vec::new();
    for (i, d) in child(doc, list, "Domaine").enumerate() {
        let domain = Domain {
            identifiant: text(doc, d, "Identifiant"),
            db: text(doc, d, "db"),
            vi: text(doc, d, "vi"),
            denomination: text(doc, d, "Denomination"),
            dn: text(doc, d, "DNCertificatOperateur"),
        };
        if domain.db.is_empty() {
            return Err(ListError::NoDb(i + 1));
        }
        domains.push(domain);
    }
    Ok(ListContent {
        generated,
        generated_unix,
        domains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_are_read_and_unknown_elements_ignored() {
        for ns in NAMESPACES {
            let xml = format!(
                "<ListeBlancheDRIM-M xmlns=\"{ns}\" versionFormat=\"1.0.0\">\
                 <DateDeGeneration>2026-06-19T18:06:52Z</DateDeGeneration><Nouveau/>\
                 <ListeDomaines><Domaine><Identifiant>3</Identifiant><db>db3.example</db>\
                 <vi>vi3.example</vi><ResponsableContact>x</ResponsableContact>\
                 <DNCertificatOperateur>CN=db3.example,O=ANS</DNCertificatOperateur></Domaine>\
                 <Domaine><Identifiant>3</Identifiant><db>db3b.example</db></Domaine>\
                 </ListeDomaines></ListeBlancheDRIM-M>"
            );
            let doc = Document::parse(xml.as_bytes()).unwrap();
            let l = read(&doc).unwrap();
            assert_eq!(l.domains.len(), 2);
            assert_eq!(l.domains[0].dn, "CN=db3.example,O=ANS");
            assert_eq!(l.generated_unix, 1_781_892_412);
        }
    }

    #[test]
    fn refusals_are_specific() {
        let doc = Document::parse(b"<ListeBlancheDRIM-M xmlns=\"urn:other\"/>").unwrap();
        assert!(matches!(read(&doc), Err(ListError::Root(_))));
        let doc = Document::parse(
            b"<ListeBlancheDRIM-M xmlns=\"https://github.com/ansforge/DRIM-M_DATA\">\
              <DateDeGeneration>yesterday</DateDeGeneration></ListeBlancheDRIM-M>",
        )
        .unwrap();
        assert_eq!(read(&doc), Err(ListError::Date("yesterday".into())));
    }
}
