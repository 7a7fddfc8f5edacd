//! The submission lot of one exam version: the KOS, the lot signature and the XDS metadata,
//! built purely from the archive's [`ExamWork`], the report it names, the box's settings, the
//! identifiers and the time it is given. The signature is made by a [`LotSigner`] (the
//! practice's certificate, held by the publisher process only).
//!
//! Files of a lot (an IHE XDM subset, DRIM-M §3): `KOS_1_1.DCM`, `SIGN_1.XML`, `METADATA.XML`
//! (the `lcm:SubmitObjectsRequest`, with `URI` slots), and `SUBMISSION.XML`, the same metadata
//! without the media paths, exactly as the publisher will send it in the ITI-41 request. Every
//! hash and size in the metadata is computed over the very bytes written.

use sha1::{Digest, Sha1};

use crate::archive::model::ExamWork;
use crate::cda::CdaHeader;
use crate::exam::{NextAction, Visibility};
use crate::hl7::report::Report;
use crate::kos::{self, KosInput, LocalTime};
use crate::xds::{self, Author, Code, DocumentEntry, LotMetadata};

pub const KOS_FILE: &str = "KOS_1_1.DCM";
pub const SIGNATURE_FILE: &str = "SIGN_1.XML";
pub const METADATA_FILE: &str = "METADATA.XML";
pub const SUBMISSION_FILE: &str = "SUBMISSION.XML";
/// The ITI-57 body of a withdrawal (TD3.3c): submission set + UpdateAvailabilityStatus.
pub const WITHDRAWAL_FILE: &str = "WITHDRAWAL.XML";

/// What the box's configuration says about the lots it builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotSettings {
    pub wado_base_url: String,
    pub source_id: String,
    pub institution_name: String,
    pub content_type: Code,
}

/// The identifiers of one lot, made by the caller (from the UID root and the reserved lot
/// number, or UUIDs) so that building stays pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotIds {
    pub kos_sop_uid: String,
    pub kos_series_uid: String,
    pub submission_set_uid: String,
    pub signature_id: String,
    pub association_ids: [String; 4],
}

impl LotIds {
    /// Under a root OID: `<root>.<kind>.<lot number>`; kind 1 KOS, 2 KOS series, 3 submission
    /// set, 4 signature. Unique as long as the root is this box's and lot numbers never repeat.
    pub fn under_root(root: &str, lot_number: u64, association_uuids: [String; 4]) -> LotIds {
        LotIds {
            kos_sop_uid: format!("{root}.1.{lot_number}"),
            kos_series_uid: format!("{root}.2.{lot_number}"),
            submission_set_uid: format!("{root}.3.{lot_number}"),
            signature_id: format!("{root}.4.{lot_number}"),
            association_ids: association_uuids,
        }
    }
}

/// The time the lot is built: UTC for XDS, local for the KOS and the signing time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildTime {
    /// `YYYYMMDDHHMMSS`, UTC.
    pub utc: String,
    pub local: LocalTime,
}

impl BuildTime {
    /// ISO 8601 local time with offset (XAdES SigningTime), e.g. `2023-11-14T14:44:58+01:00`.
    pub fn signing_time(&self) -> String {
        let d = &self.local.date;
        let t = &self.local.time;
        let o = self.local.offset();
        format!(
            "{}-{}-{}T{}:{}:{}{}:{}",
            &d[0..4],
            &d[4..6],
            &d[6..8],
            &t[0..2],
            &t[2..4],
            &t[4..6],
            &o[0..3],
            &o[3..5]
        )
    }
}

/// What the signer is asked to sign: the lot's signature document (IHE DSG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRequest<'a> {
    pub signature_id: &'a str,
    pub submission_set_uid: &'a str,
    pub kos_uid: &'a str,
    pub kos_bytes: &'a [u8],
    pub signing_time: String,
}

pub trait LotSigner {
    /// The complete signature document, as it is archived and sent.
    fn sign(&self, request: &SignatureRequest<'_>) -> Result<Vec<u8>, LotError>;
}

#[derive(Debug, thiserror::Error)]
pub enum LotError {
    #[error("the report names no INS")]
    NoIns,
    #[error("the report's CDA has no serviceEvent for study {0}")]
    NoServiceEvent(String),
    #[error("the exam has no image to reference")]
    NoImages,
    #[error("the entryUUID of the KOS this lot replaces is not known yet")]
    NoReplacedEntry,
    #[error("signing the lot: {0}")]
    Signing(String),
}

/// A built lot: its files (name, bytes) and what the archive records of it.
#[derive(Debug, Clone)]
pub struct BuiltLot {
    pub files: Vec<(String, Vec<u8>)>,
    pub ids: LotIds,
    pub kos_instance_number: u32,
    /// The XDS metadata (None for a withdrawal, which has only a submission set).
    pub metadata: Option<LotMetadata>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDHHMMSS` in UTC from an HL7/CDA TS (`YYYYMMDD[HHMM[SS]][+/-ZZZZ]`): with an offset the
/// time is converted; without one it is taken as given.
pub fn ts_to_utc(ts: &str) -> String {
    let (digits, offset) = match ts.find(['+', '-']) {
        Some(i) => (&ts[..i], Some(&ts[i..])),
        None => (ts, None),
    };
    let digits: String = digits.chars().take_while(char::is_ascii_digit).collect();
    let mut full = digits.clone();
    while full.len() < 14 {
        full.push('0');
    }
    let full = &full[..14];
    let Some(off) = offset.filter(|o| o.len() == 5) else {
        return full.to_string();
    };
    let n = |s: &str| s.parse::<i64>().ok();
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se), Some(oh), Some(om)) = (
        n(&full[0..4]),
        n(&full[4..6]),
        n(&full[6..8]),
        n(&full[8..10]),
        n(&full[10..12]),
        n(&full[12..14]),
        n(&off[1..3]),
        n(&off[3..5]),
    ) else {
        return full.to_string();
    };
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let days = crate::status::days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - sign * (oh * 3600 + om * 60);
    crate::status::rfc3339(secs * 1000)
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// The confidentiality codes of the KOS entry: the CDA's, then the message's visibility flags.
fn confidentiality(cda: &CdaHeader, visibility: &Visibility) -> Vec<Code> {
    let c = &cda.confidentiality;
    let display = match c.code.as_str() {
        "R" => "Restreint",
        "V" => "Très restreint",
        _ => "Normal",
    };
    let mut v = vec![Code::new(
        if c.code.is_empty() { "N" } else { &c.code },
        "2.16.840.1.113883.5.25",
        if c.display_name.is_empty() {
            display
        } else {
            &c.display_name
        },
    )];
    for code in visibility.codes() {
        v.push(Code::new(
            code,
            "1.2.250.1.213.1.1.4.13",
            visibility_display(code),
        ));
    }
    v
}

fn visibility_display(code: &str) -> &'static str {
    match code {
        "MASQUE_PS" => "Masqué aux professionnels de santé",
        "INVISIBLE_PATIENT" => "Non visible par le patient",
        _ => "Non visible par les représentants légaux du patient",
    }
}

/// DICOM modality codes (CID 29) for the event codes, when the CDA does not translate them.
fn modality_display(m: &str) -> &str {
    match m {
        "CT" => "Computed Tomography",
        "MR" => "Magnetic Resonance",
        "US" => "Ultrasound",
        "CR" => "Computed Radiography",
        "DX" => "Digital Radiography",
        "MG" => "Mammography",
        "NM" => "Nuclear Medicine",
        "PT" => "Positron emission tomography",
        "XA" => "X-Ray Angiography",
        "RF" => "Radio Fluoroscopy",
        "OT" => "Other",
        other => other,
    }
}

const DCM_SCHEME: &str = "1.2.840.10008.2.16.4";

fn xcn(id: &crate::cda::Ii, name: &crate::cda::Name) -> String {
    format!(
        "{}^{}^{}^^^^^^&{}&ISO^D^^^IDNPS",
        id.extension, name.family, name.given, id.root
    )
}

/// Builds a withdrawal (TD3.3c) of the KOS the accepted lot `work.previous` published: a
/// submission set and the UpdateAvailabilityStatus association to its entryUUID.
pub fn build_withdrawal(
    work: &ExamWork,
    report: &Report,
    cda: &CdaHeader,
    settings: &LotSettings,
    ids: &LotIds,
    at: &BuildTime,
) -> Result<BuiltLot, LotError> {
    let entry = work
        .previous
        .as_ref()
        .and_then(|p| p.delivery.entry_uuid.clone())
        .ok_or(LotError::NoReplacedEntry)?;
    let set = xds::SubmissionSet {
        submission_time: at.utc.clone(),
        title: "Examen d'imagerie".into(),
        comments: format!("Retrait du manifeste de l'examen {}", work.study_uid),
        author: Author {
            person: xcn(&cda.author_id, &cda.author_name),
            institution: format!(
                "{}^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^{}",
                cda.organization_name, cda.organization_id.extension
            ),
        },
        content_type: settings.content_type.clone(),
        patient_id: format!("{}^^^&{}&ISO^NH", report.ins.id, report.ins.oid),
        source_id: settings.source_id.clone(),
        unique_id: ids.submission_set_uid.clone(),
    };
    let body = crate::dmp::soap::withdraw_body(
        &xds::submission_set_package(&set),
        &entry,
        &ids.association_ids[0],
    );
    let previous = work.previous.as_ref().expect("checked above");
    Ok(BuiltLot {
        files: vec![(WITHDRAWAL_FILE.into(), body.into_bytes())],
        ids: LotIds {
            kos_sop_uid: previous.kos_sop_uid.clone(),
            ..ids.clone()
        },
        kos_instance_number: previous.kos_instance_number,
        metadata: None,
    })
}

/// Builds the lot. Pure: the same inputs give the same bytes (the signature too: RSA PKCS#1
/// v1.5 is deterministic).
pub fn build(
    work: &ExamWork,
    report: &Report,
    cda: &CdaHeader,
    settings: &LotSettings,
    ids: &LotIds,
    at: &BuildTime,
    signer: &dyn LotSigner,
) -> Result<BuiltLot, LotError> {
    if report.ins.id.is_empty() {
        return Err(LotError::NoIns);
    }
    if work.series.iter().all(|s| s.instances.is_empty()) {
        return Err(LotError::NoImages);
    }
    let event = cda
        .service_events
        .iter()
        .find(|e| e.id.root == work.study_uid)
        .ok_or_else(|| LotError::NoServiceEvent(work.study_uid.clone()))?;
    let visibility = match &work.action {
        NextAction::Publish { visibility, .. } | NextAction::Replace { visibility, .. } => {
            *visibility
        }
        NextAction::Unpublish { .. } => Visibility::default(),
    };
    let instance_number = work
        .previous
        .as_ref()
        .map(|p| p.kos_instance_number + 1)
        .unwrap_or(1);

    let kos_input = KosInput {
        sop_instance_uid: ids.kos_sop_uid.clone(),
        series_uid: ids.kos_series_uid.clone(),
        instance_number,
        created: at.local.clone(),
        manufacturer: "drimbox".into(),
        institution_name: settings.institution_name.clone(),
        patient: kos::Patient {
            family: cda.patient_name.family.clone(),
            given: cda.patient_name.given.clone(),
            ins: report.ins.id.clone(),
            ins_oid: report.ins.oid.clone(),
            birth_date: cda.birth_time.chars().take(8).collect(),
            sex: cda.gender.clone(),
        },
        study: kos::Study {
            study_uid: work.study_uid.clone(),
            study_date: work.study.study_date.clone(),
            study_time: work.study.study_time.clone(),
            referring_physician: work.study.referring_physician.clone(),
            description: work.study.study_description.clone(),
            study_id: work.study.study_id.clone(),
        },
        request: kos::Request {
            accession: cda.accession.extension.clone(),
            accession_issuer_oid: cda.accession.root.clone(),
            placer_order: cda.order.extension.clone(),
            placer_issuer_oid: cda.order.root.clone(),
        },
        act: event.code.display_name.clone(),
        series: work
            .series
            .iter()
            .map(|s| kos::SeriesRef {
                series_uid: s.series_uid.clone(),
                modality: s.modality.clone(),
                description: s.description.clone(),
                instances: s.instances.clone(),
            })
            .collect(),
        retrieve_base: settings.wado_base_url.clone(),
    };
    let kos_bytes = kos::build(&kos_input);

    let signature = signer.sign(&SignatureRequest {
        signature_id: &ids.signature_id,
        submission_set_uid: &ids.submission_set_uid,
        kos_uid: &ids.kos_sop_uid,
        kos_bytes: &kos_bytes,
        signing_time: at.signing_time(),
    })?;

    let ins_cx = format!("{}^^^&{}&ISO^NH", report.ins.id, report.ins.oid);
    // [IG-HL7]: the IPP when there is one (PID-3 PI, else the CDA's non-INS patient id).
    let cda_ipp = cda.patient_ids.iter().find(|i| {
        !crate::hl7::report::INS_OIDS.contains(&i.root.as_str()) && !i.extension.is_empty()
    });
    let source_patient_id = match (&report.ipp, cda_ipp) {
        (Some(ipp), _) => format!("{}^^^&{}&ISO^PI", ipp.id, ipp.oid),
        (None, Some(ipp)) => format!("{}^^^&{}&ISO^PI", ipp.extension, ipp.root),
        (None, None) => format!("{}^^^&{}&ISO^PI", report.ins.id, report.ins.oid),
    };
    let author = Author {
        person: xcn(&cda.author_id, &cda.author_name),
        institution: format!(
            "{}^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^{}",
            cda.organization_name, cda.organization_id.extension
        ),
    };
    let legal = if cda.legal_authenticator_id.extension.is_empty() {
        author.person.clone()
    } else {
        xcn(&cda.legal_authenticator_id, &cda.legal_authenticator_name)
    };
    let mut events: Vec<Code> = std::iter::once(&event.code)
        .chain(event.translations.iter())
        .filter(|c| !c.code.is_empty())
        .map(|c| Code::new(&c.code, &c.code_system, &c.display_name))
        .collect();
    let mut modalities: Vec<&str> = work.series.iter().map(|s| s.modality.as_str()).collect();
    modalities.sort_unstable();
    modalities.dedup();
    for m in modalities.into_iter().filter(|m| !m.is_empty()) {
        if !events.iter().any(|e| e.code == m && e.scheme == DCM_SCHEME) {
            events.push(Code::new(m, DCM_SCHEME, modality_display(m)));
        }
    }
    let mut reference_ids = Vec::new();
    if !cda.accession.extension.is_empty() {
        reference_ids.push(format!(
            "{}^^^&{}&ISO^urn:ihe:iti:xds:2013:accession",
            cda.accession.extension, cda.accession.root
        ));
    }
    reference_ids.push(format!(
        "{}^^^^urn:ihe:iti:xds:2016:studyInstanceUID",
        work.study_uid
    ));
    if !cda.order.extension.is_empty() {
        reference_ids.push(format!(
            "{}^^^&{}&ISO^urn:ihe:iti:xds:2013:order",
            cda.order.extension, cda.order.root
        ));
    }
    let facility = &cda.facility_type;
    let practice = event.practice_setting.clone().unwrap_or_default();
    let mut metadata = LotMetadata {
        submission_time: at.utc.clone(),
        submission_title: "Examen d'imagerie".into(),
        submission_comments: format!("Manifeste de l'examen {}", work.study_uid),
        author,
        content_type: settings.content_type.clone(),
        patient_id: ins_cx.clone(),
        source_id: settings.source_id.clone(),
        submission_set_unique_id: ids.submission_set_uid.clone(),
        legal_authenticator: legal,
        facility_type: Code::new(
            &facility.code,
            &facility.code_system,
            &facility.display_name,
        ),
        practice_setting: Code::new(
            &practice.code,
            &practice.code_system,
            &practice.display_name,
        ),
        reference_ids,
        kos: DocumentEntry {
            creation_time: at.utc.clone(),
            language: "fr-FR".into(),
            service_start: ts_to_utc(&event.low),
            service_stop: ts_to_utc(if event.high.is_empty() {
                &event.low
            } else {
                &event.high
            }),
            source_patient_id,
            hash: hex(&Sha1::digest(&kos_bytes)),
            size: kos_bytes.len() as u64,
            source_patient_info: vec![
                format!(
                    "PID-5|{}^{}^^^^^L",
                    cda.patient_name.family, cda.patient_name.given
                ),
                format!(
                    "PID-7|{}",
                    cda.birth_time.chars().take(8).collect::<String>()
                ),
                format!("PID-8|{}", cda.gender),
            ],
            title: "Reference d'Objets d'un Examen d'Imagerie".into(),
            comments: "KOS".into(),
            class: Code::new("31", "1.2.250.1.213.1.1.4.1", "Imagerie médicale"),
            type_code: Code::new(
                "IMG-KOS",
                "1.2.250.1.213.1.1.4.12",
                "Reference d'objets d'un examen d'imagerie",
            ),
            confidentiality: confidentiality(cda, &visibility),
            format: Code::new(
                kos::KOS_SOP_CLASS,
                "1.2.840.10008.2.6.1",
                "Document de Références d'objets d'imagerie selon profil IHE RAD XDS-I",
            ),
            events,
            unique_id: ids.kos_sop_uid.clone(),
            uri: None,
        },
        signature: DocumentEntry {
            creation_time: at.utc.clone(),
            language: "art".into(),
            service_start: at.utc.clone(),
            service_stop: at.utc.clone(),
            source_patient_id: ins_cx,
            hash: hex(&Sha1::digest(&signature)),
            size: signature.len() as u64,
            source_patient_info: vec![],
            title: "Source".into(),
            comments: String::new(),
            class: Code::new(
                "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1",
                "URN",
                "Digital Signature",
            ),
            type_code: Code::new("E1762", "ASTM", "Full Document"),
            // The signature is for the registry, not for readers (DRIM-M §2.5.3).
            confidentiality: vec![
                Code::new("N", "2.16.840.1.113883.5.25", "Normal"),
                Code::new(
                    "MASQUE_PS",
                    "1.2.250.1.213.1.1.4.13",
                    visibility_display("MASQUE_PS"),
                ),
                Code::new(
                    "INVISIBLE_PATIENT",
                    "1.2.250.1.213.1.1.4.13",
                    visibility_display("INVISIBLE_PATIENT"),
                ),
            ],
            format: Code::new(
                "http://www.w3.org/2000/09/xmldsig#",
                "URN",
                "Default Signature Style",
            ),
            events: vec![Code::new(
                "1.2.840.10065.1.12.1.14",
                "1.2.840.10065.1.12",
                "Source",
            )],
            unique_id: ids.signature_id.clone(),
            uri: None,
        },
        association_ids: ids.association_ids.clone(),
        // TD2.1b: an RPLC association to the entry the DMP gave the KOS this lot replaces.
        replaces_entry_uuid: match &work.action {
            NextAction::Replace { .. } => Some(
                work.previous
                    .as_ref()
                    .and_then(|p| p.delivery.entry_uuid.clone())
                    .ok_or(LotError::NoReplacedEntry)?,
            ),
            _ => None,
        },
    };
    let submission = xds::submit_objects_request(&metadata);
    metadata.kos.uri = Some(KOS_FILE.into());
    metadata.signature.uri = Some(SIGNATURE_FILE.into());
    let media = xds::submit_objects_request(&metadata);
    Ok(BuiltLot {
        files: vec![
            (KOS_FILE.into(), kos_bytes),
            (SIGNATURE_FILE.into(), signature),
            (METADATA_FILE.into(), media.into_bytes()),
            (SUBMISSION_FILE.into(), submission.into_bytes()),
        ],
        ids: ids.clone(),
        kos_instance_number: instance_number,
        metadata: Some(metadata),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_to_utc() {
        assert_eq!(ts_to_utc("20210104092200+0100"), "20210104082200");
        assert_eq!(ts_to_utc("20210101003000+0200"), "20201231223000");
        assert_eq!(ts_to_utc("20210104092200"), "20210104092200");
        assert_eq!(ts_to_utc("202101040922"), "20210104092200");
        assert_eq!(ts_to_utc("20210104"), "20210104000000");
        assert_eq!(ts_to_utc("20210104092200-0500"), "20210104142200");
    }

    #[test]
    fn ids_under_a_root() {
        let ids = LotIds::under_root("1.2.250.1.999", 42, Default::default());
        assert_eq!(ids.kos_sop_uid, "1.2.250.1.999.1.42");
        assert_eq!(ids.signature_id, "1.2.250.1.999.4.42");
        let t = BuildTime {
            utc: "20231114134458".into(),
            local: LocalTime {
                date: "20231114".into(),
                time: "144458".into(),
                offset_minutes: 60,
            },
        };
        assert_eq!(t.signing_time(), "2023-11-14T14:44:58+01:00");
    }
}
