//! Reads what the archive needs from a stored instance: identifiers, patient and order
//! attributes, and, for an IOCM rejection note, its title and references.
//!
//! Parsing stops at Pixel Data, so a 300 MiB image costs the same as a small one.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::mem::InMemDicomObject;
use dicom_object::OpenFileOptions;

use crate::ipc::{InstanceRef, RejectionNote};

pub const KEY_OBJECT_SELECTION: &str = "1.2.840.10008.5.1.4.1.1.88.59";

/// Document titles (DCM) of IOCM rejection notes.
pub const REJECTION_TITLES: [&str; 4] = ["113001", "113037", "113038", "113039"];

#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub modality: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
    pub rejection: Option<RejectionNote>,
}

#[derive(Debug, thiserror::Error)]
#[error("data set cannot be parsed: {0}")]
pub struct InspectError(String);

pub fn inspect_file(path: &Path) -> Result<Inspected, InspectError> {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| InspectError(e.to_string()))?;
    Ok(inspect_object(&obj))
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

/// The study- and series-level text the KOS repeats (StudyDate, descriptions, …), decoded in
/// the file's character set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Descriptive {
    pub study_date: String,
    pub study_time: String,
    pub referring_physician: String,
    pub study_description: String,
    pub study_id: String,
    pub series_description: String,
}

pub fn descriptive_file(path: &Path) -> Result<Descriptive, InspectError> {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| InspectError(e.to_string()))?;
    let t = |tag| text(&obj, tag).unwrap_or_default();
    Ok(Descriptive {
        study_date: t(tags::STUDY_DATE),
        study_time: t(tags::STUDY_TIME),
        referring_physician: t(tags::REFERRING_PHYSICIAN_NAME),
        study_description: t(tags::STUDY_DESCRIPTION),
        study_id: t(tags::STUDY_ID),
        series_description: t(tags::SERIES_DESCRIPTION),
    })
}

pub fn inspect_object(obj: &InMemDicomObject) -> Inspected {
    let sop_class_uid = text(obj, tags::SOP_CLASS_UID);
    let rejection = if sop_class_uid.as_deref() == Some(KEY_OBJECT_SELECTION) {
        rejection_note(obj)
    } else {
        None
    };
    Inspected {
        sop_class_uid,
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID),
        study_uid: text(obj, tags::STUDY_INSTANCE_UID),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID),
        modality: text(obj, tags::MODALITY),
        patient_id: text(obj, tags::PATIENT_ID),
        patient_name: text(obj, tags::PATIENT_NAME),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        rejection,
    }
}

/// A KOS is a rejection note when its Concept Name is one of the DCM rejection titles
/// (PS3.3 C.17.6, IHE IOCM). The references come from Current Requested Procedure Evidence.
fn rejection_note(obj: &InMemDicomObject) -> Option<RejectionNote> {
    let title = items(obj, tags::CONCEPT_NAME_CODE_SEQUENCE).first()?;
    let code = text(title, tags::CODE_VALUE)?;
    let scheme = text(title, tags::CODING_SCHEME_DESIGNATOR)?;
    if scheme != "DCM" || !REJECTION_TITLES.contains(&code.as_str()) {
        return None;
    }
    let mut references = Vec::new();
    for study in items(obj, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE) {
        let Some(study_uid) = text(study, tags::STUDY_INSTANCE_UID) else {
            continue;
        };
        for series in items(study, tags::REFERENCED_SERIES_SEQUENCE) {
            let Some(series_uid) = text(series, tags::SERIES_INSTANCE_UID) else {
                continue;
            };
            for sop in items(series, tags::REFERENCED_SOP_SEQUENCE) {
                if let Some(sop_instance_uid) = text(sop, tags::REFERENCED_SOP_INSTANCE_UID) {
                    references.push(InstanceRef {
                        study_uid: study_uid.clone(),
                        series_uid: series_uid.clone(),
                        sop_instance_uid,
                    });
                }
            }
        }
    }
    Some(RejectionNote { code, references })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF_KOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/ref/ans/KOS/ko.dcm");

    #[test]
    fn agency_kos_is_a_manifest_not_a_rejection_note() {
        let path = Path::new(REF_KOS);
        if !path.exists() {
            panic!("reference data missing: {REF_KOS}");
        }
        let i = inspect_file(path).unwrap();
        assert_eq!(i.sop_class_uid.as_deref(), Some(KEY_OBJECT_SELECTION));
        assert!(i.study_uid.is_some() && i.series_uid.is_some());
        // Its title is 113030 "Manifest": not a rejection.
        assert!(i.rejection.is_none());
    }
}
