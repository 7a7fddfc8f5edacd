//! XML security for the lot signature (IHE DSG, DRIM-M §2.6) and, later, the whitelist
//! (DRIM-M §5.2): a safe parsed-document model, Canonical XML, and XMLDSig core verification.
//! Pure code: no I/O, no clock.

pub mod c14n;
pub mod document;
pub mod dsig;

pub use c14n::{C14nMethod, Canonicalizer};
pub use document::{Document, NodeId, XmlError};

/// The agency's reference lot signature, rebuilt as DRIM-M §2.6 says, for the unit tests.
#[cfg(test)]
pub(crate) mod reference {
    use std::path::PathBuf;

    pub fn shared(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared")
            .join(rel)
    }

    pub fn read(rel: &str) -> Vec<u8> {
        let p = shared(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Part `<0.3>` of `publication.xml` without the pretty-printing whitespace between tags,
    /// with the XML declaration and the final LF: the 6102 bytes the DMP received.
    pub fn lot_signature() -> Vec<u8> {
        let publication = String::from_utf8(read("ref/ans/XDS/publication.xml")).unwrap();
        let part = &publication[publication.find("Content-ID: <0.3>").unwrap()..];
        let start = part.find("<Signature").unwrap();
        let end = part.find("</Signature>").unwrap() + "</Signature>".len();
        let mut out = String::from("<?xml version=\"1.0\"?>\n");
        let mut rest = &part[start..end];
        // `>` whitespace `<` becomes `><`.
        while let Some(i) = rest.find('>') {
            out.push_str(&rest[..=i]);
            rest = &rest[i + 1..];
            let trimmed = rest.trim_start();
            if trimmed.starts_with('<') {
                rest = trimmed;
            }
        }
        out.push_str(rest);
        out.push('\n');
        out.into_bytes()
    }
}
