//! The IHE XDM (ITI-32) media layout of an exam's lots: what `drimbox export XDM` zips.
//!
//! ```text
//! README.TXT   who made the medium and with what, how it is laid out
//! INDEX.HTM    XHTML 1.0 Strict: the same, with a link to every document
//! IHE_XDM/SS000001/METADATA.XML   lcm:SubmitObjectsRequest, URI slots relative to the subset
//! IHE_XDM/SS000001/KOS_1_1.DCM    the KOS, the bytes the metadata hashes
//! IHE_XDM/SS000001/SIGN_1.XML     the lot signature
//! IHE_XDM/SS000002/…              one subset per lot, in order
//! ```
//! Pure: lots in, entries out. The ITI-41 copy of the metadata (`SUBMISSION.XML`) stays in the
//! archive; it is not part of the medium.

use crate::lot::{KOS_FILE, METADATA_FILE, SIGNATURE_FILE};
use crate::xds::escape;

/// One archived lot: its subset number (its seq) and files.
#[derive(Debug, Clone)]
pub struct ArchivedLot {
    pub seq: u32,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Who made the medium.
#[derive(Debug, Clone)]
pub struct Sender {
    pub institution: String,
}

/// The files of the medium, `(path, bytes)`, in a fixed order.
pub fn layout(study_uid: &str, lots: &[ArchivedLot], sender: &Sender) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut tree = String::new();
    let mut links = String::new();
    for lot in lots {
        let subset = format!("SS{:06}", lot.seq);
        for name in [METADATA_FILE, KOS_FILE, SIGNATURE_FILE] {
            if let Some((_, bytes)) = lot.files.iter().find(|(n, _)| n == name) {
                let path = format!("IHE_XDM/{subset}/{name}");
                tree.push_str(&format!("    {path}\r\n"));
                links.push_str(&format!(
                    "<li><a href=\"{p}\">{p}</a></li>\n",
                    p = escape(&path)
                ));
                entries.push((path, bytes.clone()));
            }
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    // CRLF and ASCII-safe text: README.TXT is read on any system the medium lands on.
    let readme = format!(
        "Emetteur\r\n  Organisme : {inst}\r\n\r\n\
         Application de l'emetteur\r\n  Nom : DRIMbox\r\n  Version : {version}\r\n\r\n\
         Instructions\r\n  Ce support suit le profil IHE XDM (ITI-32). Chaque sous-dossier de\r\n  \
         IHE_XDM contient un lot publie pour l'examen {study_uid} : METADATA.XML\r\n  \
         (metadonnees XDS), KOS_1_1.DCM (manifeste DICOM) et SIGN_1.XML (signature).\r\n\r\n\
         Arborescence\r\n    README.TXT\r\n    INDEX.HTM\r\n{tree}",
        inst = sender.institution,
    );
    let index = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"fr\" lang=\"fr\">\n\
         <head><title>DRIMbox - examen {study}</title></head>\n<body>\n\
         <p>Emetteur : {inst}</p>\n<p><a href=\"README.TXT\">README.TXT</a></p>\n<ul>\n{links}</ul>\n</body>\n</html>\n",
        study = escape(study_uid),
        inst = escape(&sender.institution),
    );
    let mut out = vec![
        ("README.TXT".to_string(), readme.into_bytes()),
        ("INDEX.HTM".to_string(), index.into_bytes()),
    ];
    out.extend(entries);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_layout_one_subset_per_lot() {
        let lot = |seq| ArchivedLot {
            seq,
            files: vec![
                (KOS_FILE.into(), b"kos".to_vec()),
                (SIGNATURE_FILE.into(), b"sig".to_vec()),
                (METADATA_FILE.into(), b"<m/>".to_vec()),
                ("SUBMISSION.XML".into(), b"<s/>".to_vec()),
            ],
        };
        let files = layout(
            "1.2.3",
            &[lot(1), lot(2)],
            &Sender {
                institution: "Cabinet <R>".into(),
            },
        );
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "README.TXT",
                "INDEX.HTM",
                "IHE_XDM/SS000001/METADATA.XML",
                "IHE_XDM/SS000001/KOS_1_1.DCM",
                "IHE_XDM/SS000001/SIGN_1.XML",
                "IHE_XDM/SS000002/METADATA.XML",
                "IHE_XDM/SS000002/KOS_1_1.DCM",
                "IHE_XDM/SS000002/SIGN_1.XML",
            ]
        );
        let index = String::from_utf8(files[1].1.clone()).unwrap();
        assert!(index.contains("Cabinet &lt;R&gt;"));
    }
}
