//! The lossless conversions WADO-RS offers when the stored transfer syntax is not acceptable to
//! a consumer, between the native little-endian syntaxes only: Implicit VR, Explicit VR and
//! Deflated Explicit VR Little Endian are each sent as Explicit VR or Implicit VR Little Endian
//! — the same data set, re-encoded (VRs from the dictionary for implicit data, `UN` for what it
//! does not know), never a pixel codec. Anything else is served as stored or refused with 406:
//! a conversion we cannot do exactly is not offered. (dicomweb-client, for one, asks for
//! Implicit VR by default.)
//!
//! A converted instance is built in memory (its size must be known for the part's
//! Content-Length), so conversion is limited to instances of at most [`MAX_CONVERTED`] bytes.

use std::io::Read;

use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};

use super::accept::EXPLICIT_VR_LE;

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";

/// Largest stored instance converted (bounded memory: twice this, per connection).
pub const MAX_CONVERTED: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("reading the stored instance: {0}")]
    Io(#[from] std::io::Error),
    #[error("the stored instance does not parse: {0}")]
    Read(String),
    #[error("writing the converted instance: {0}")]
    Write(String),
    #[error("no conversion to {0}")]
    Unsupported(String),
    #[error("the instance is over {MAX_CONVERTED} bytes: not converted")]
    TooLarge,
}

/// The transfer syntaxes an instance stored in `stored` can be sent in, the stored one first.
pub fn producible(stored: &str, size: u64) -> Vec<&str> {
    let mut out = vec![stored];
    let native = matches!(
        stored,
        IMPLICIT_VR_LE | EXPLICIT_VR_LE | DEFLATED_EXPLICIT_VR_LE
    );
    if native && size <= MAX_CONVERTED {
        out.extend(
            [EXPLICIT_VR_LE, IMPLICIT_VR_LE]
                .into_iter()
                .filter(|t| *t != stored),
        );
    }
    out
}

/// The stored Part 10 file (`source`, `size` bytes) as a Part 10 file in `target` (Explicit or
/// Implicit VR Little Endian): preamble, meta group with the new transfer syntax, the data set
/// re-encoded.
pub fn convert(source: impl Read, size: u64, target: &str) -> Result<Vec<u8>, TranscodeError> {
    let ts = match target {
        EXPLICIT_VR_LE => &EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LE => &IMPLICIT_VR_LITTLE_ENDIAN,
        other => return Err(TranscodeError::Unsupported(other.into())),
    };
    if size > MAX_CONVERTED {
        return Err(TranscodeError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    source.take(size).read_to_end(&mut bytes)?;
    let mut obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes.as_slice())
        .map_err(|e| TranscodeError::Read(e.to_string()))?;
    drop(bytes);
    let meta = obj.meta_mut();
    meta.set_transfer_syntax(ts);
    // UI values are padded to even length with NUL (PS3.5 §6.2); the setter does not pad.
    if meta.transfer_syntax.len() % 2 == 1 {
        meta.transfer_syntax.push('\0');
    }
    meta.update_information_group_length();
    let mut out = Vec::with_capacity(size as usize + 1024);
    obj.write_all(&mut out)
        .map_err(|e| TranscodeError::Write(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    fn implicit_file() -> Vec<u8> {
        let mut ds = InMemDicomObject::new_empty();
        ds.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7\0"),
        ));
        ds.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.4\0"),
        ));
        ds.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("DOE^JOHN"),
        ));
        ds.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(2u16),
        ));
        ds.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(vec![1, 2, 3, 4, 5, 6, 7, 8].into()),
        ));
        let obj = ds
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(IMPLICIT_VR_LE)
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                    .media_storage_sop_instance_uid("1.2.3.4"),
            )
            .unwrap();
        let mut out = Vec::new();
        obj.write_all(&mut out).unwrap();
        out
    }

    fn read_back(bytes: &[u8]) -> dicom_object::DefaultDicomObject {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes)
            .unwrap()
    }

    #[test]
    fn implicit_becomes_explicit_with_the_same_elements() {
        let stored = implicit_file();
        let converted = convert(stored.as_slice(), stored.len() as u64, EXPLICIT_VR_LE).unwrap();
        let back = read_back(&converted);
        assert_eq!(back.meta().transfer_syntax(), EXPLICIT_VR_LE);
        assert_eq!(
            back.element(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "DOE^JOHN"
        );
        assert_eq!(
            back.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(),
            2
        );
        assert_eq!(
            back.element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        // Explicit VR on the wire: the PN element carries its VR after the tag.
        let at = converted
            .windows(4)
            .position(|w| w == [0x10, 0x00, 0x10, 0x00])
            .unwrap();
        assert_eq!(&converted[at + 4..at + 6], b"PN");
        // The meta group's UID is padded to even length.
        assert!(converted.windows(20).any(|w| w == b"1.2.840.10008.1.2.1\0"));
        // And back to Implicit VR: the same bytes as the original data set.
        let again = convert(converted.as_slice(), converted.len() as u64, IMPLICIT_VR_LE).unwrap();
        let tail = |b: &[u8]| {
            let at = b
                .windows(4)
                .position(|w| w == [0x08, 0x00, 0x16, 0x00])
                .unwrap();
            b[at..].to_vec()
        };
        assert_eq!(tail(&again), tail(&stored));
    }

    #[test]
    fn deflated_becomes_explicit() {
        let implicit = implicit_file();
        let mut obj = read_back(&implicit);
        let meta = obj.meta_mut();
        meta.transfer_syntax = format!("{DEFLATED_EXPLICIT_VR_LE}\0");
        meta.update_information_group_length();
        let mut deflated = Vec::new();
        obj.write_all(&mut deflated).unwrap();
        // Deflated: the data set is not readable as is (no PN value in clear).
        assert!(!deflated.windows(8).any(|w| w == b"DOE^JOHN"));
        let converted =
            convert(deflated.as_slice(), deflated.len() as u64, EXPLICIT_VR_LE).unwrap();
        let back = read_back(&converted);
        assert_eq!(back.meta().transfer_syntax(), EXPLICIT_VR_LE);
        assert_eq!(
            back.element(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "DOE^JOHN"
        );
        assert_eq!(
            back.element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn only_exact_conversions_are_offered() {
        assert_eq!(
            producible(IMPLICIT_VR_LE, 10),
            [IMPLICIT_VR_LE, EXPLICIT_VR_LE]
        );
        assert_eq!(
            producible(DEFLATED_EXPLICIT_VR_LE, 10),
            [DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE, IMPLICIT_VR_LE]
        );
        assert_eq!(
            producible("1.2.840.10008.1.2.4.50", 10),
            ["1.2.840.10008.1.2.4.50"]
        );
        assert_eq!(
            producible(EXPLICIT_VR_LE, 10),
            [EXPLICIT_VR_LE, IMPLICIT_VR_LE]
        );
        assert_eq!(
            producible(IMPLICIT_VR_LE, MAX_CONVERTED + 1),
            [IMPLICIT_VR_LE]
        );
        let stored = implicit_file();
        assert!(matches!(
            convert(stored.as_slice(), MAX_CONVERTED + 1, EXPLICIT_VR_LE),
            Err(TranscodeError::TooLarge)
        ));
    }
}
