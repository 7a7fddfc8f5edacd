//! The abstract and transfer syntaxes the receiver accepts: every Storage SOP Class of the
//! standard dictionary that dicom-rs ships (retired ones included: old modalities still send
//! them), and every transfer syntax its registry knows. Bytes are stored as received, so no codec
//! is needed to accept a compressed syntax.

use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::dimse::VERIFICATION;
use super::storage_classes::STORAGE_SOP_CLASSES;

pub fn storage_sop_classes() -> Vec<&'static str> {
    STORAGE_SOP_CLASSES.iter().map(|(uid, _)| *uid).collect()
}

/// Every abstract syntax the receiver accepts.
pub fn accepted_abstract_syntaxes() -> Vec<&'static str> {
    let mut v = storage_sop_classes();
    v.push(VERIFICATION);
    v
}

pub fn accepted_transfer_syntaxes() -> Vec<&'static str> {
    TransferSyntaxRegistry
        .iter()
        .filter(|ts| !ts.is_unsupported())
        .map(|ts| ts.uid())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_images_sr_kos_pdf_and_no_commitment() {
        let s = storage_sop_classes();
        for uid in [
            "1.2.840.10008.5.1.4.1.1.2",     // CT
            "1.2.840.10008.5.1.4.1.1.4",     // MR
            "1.2.840.10008.5.1.4.1.1.88.59", // KOS
            "1.2.840.10008.5.1.4.1.1.88.22", // Enhanced SR
            "1.2.840.10008.5.1.4.1.1.104.1", // Encapsulated PDF
            "1.2.840.10008.5.1.4.1.1.7",     // Secondary Capture
        ] {
            assert!(s.contains(&uid), "{uid} missing");
        }
        assert!(!s.contains(&"1.2.840.10008.1.20.1"));
        assert!(!s.contains(&"1.2.840.10008.1.3.10"));
        assert!(s.len() > 100, "only {} storage classes", s.len());
    }

    #[test]
    fn every_entry_is_a_storage_class_of_the_dictionary() {
        use dicom_core::dictionary::UidDictionary;
        let dict = dicom_dictionary_std::StandardSopClassDictionary;
        for (uid, name) in STORAGE_SOP_CLASSES {
            let e = dict
                .by_uid(uid)
                .unwrap_or_else(|| panic!("{uid} not in dictionary"));
            assert_eq!(e.name, *name);
            assert!(name.contains("Storage"));
        }
    }

    #[test]
    fn covers_deflate_rle_jpegls_jpeg2000() {
        let t = accepted_transfer_syntaxes();
        for uid in [
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.50",
        ] {
            assert!(t.contains(&uid), "{uid} missing");
        }
    }
}
