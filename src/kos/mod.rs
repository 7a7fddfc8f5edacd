//! The exam's KOS: a DICOM Key Object Selection Document (XDS-I.b manifest, TID 2010) that lists
//! every publishable image of the study, series by series, each series with the Retrieve URL of
//! this box's WADO-RS service. Built purely from what the archive holds ([`KosInput`]); the
//! same inputs and creation time give the same bytes (they are hashed into the lot).
//!
//! The agency's sample (`shared/ref/ans/KOS/ko.dcm`) is the model, with the reference
//! implementation's defects fixed (DRIM-M §1.4): the study's accession at top level, the INS
//! issuer OID taken from the report, the timezone offset computed, ContentTemplateSequence
//! TID 2010, Retrieve URLs that point at this box, our own UIDs.

pub mod encode;

use encode::{DataSet, Vr};

pub const KOS_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.59";
/// This implementation's class UID (PS3.7 D.3.3.2), a UUID-derived UID fixed once for drimbox.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.291094654117576056269603755829767050674";
pub const IMPLEMENTATION_VERSION: &str = concat!("DRIMBOX_", env!("CARGO_PKG_VERSION"));

/// When the KOS is created, in the box's local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTime {
    /// `YYYYMMDD`
    pub date: String,
    /// `HHMMSS`
    pub time: String,
    /// Offset from UTC in minutes (Paris: 60 in winter, 120 in summer).
    pub offset_minutes: i32,
}

impl LocalTime {
    /// `+HHMM` / `-HHMM` (TimezoneOffsetFromUTC).
    pub fn offset(&self) -> String {
        let sign = if self.offset_minutes < 0 { '-' } else { '+' };
        let m = self.offset_minutes.unsigned_abs();
        format!("{sign}{:02}{:02}", m / 60, m % 60)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patient {
    pub family: String,
    pub given: String,
    /// The INS (PatientID of the manifest: the XDS affinity domain's identifier).
    pub ins: String,
    /// Its assigning authority (NIR, NIA, test or demo NIR OID), from the report.
    pub ins_oid: String,
    /// `YYYYMMDD` (may be empty: type 2).
    pub birth_date: String,
    /// `M`, `F`, `O` or empty.
    pub sex: String,
}

/// Study-level attributes, from the images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Study {
    pub study_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub referring_physician: String,
    pub description: String,
    pub study_id: String,
}

/// The order the exam fulfils, from the report (`inFulfillmentOf/order`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub accession: String,
    pub accession_issuer_oid: String,
    pub placer_order: String,
    pub placer_issuer_oid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRef {
    pub series_uid: String,
    pub modality: String,
    pub description: String,
    /// (SOP Class UID, SOP Instance UID), in the order they should be listed.
    pub instances: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KosInput {
    pub sop_instance_uid: String,
    pub series_uid: String,
    /// 1 for the first KOS of an exam, +1 for each replacement.
    pub instance_number: u32,
    pub created: LocalTime,
    pub manufacturer: String,
    pub institution_name: String,
    pub patient: Patient,
    pub study: Study,
    pub request: Request,
    /// The exam's act as the report names it (serviceEvent code displayName), for the text.
    pub act: String,
    pub series: Vec<SeriesRef>,
    /// Public WADO-RS base of this box, without a trailing slash (`https://db.example/wado`).
    pub retrieve_base: String,
}

/// Series number of the manifest series (the agency's samples use 59, for `.88.59`).
const SERIES_NUMBER: &str = "59";

/// Text encoding of the data set: Latin-1 when every character fits (as the samples), else UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Latin1,
    Utf8,
}

impl Charset {
    fn term(self) -> &'static str {
        match self {
            Charset::Latin1 => "ISO_IR 100",
            Charset::Utf8 => "ISO_IR 192",
        }
    }

    fn encode(self, s: &str) -> Vec<u8> {
        match self {
            Charset::Latin1 => s.chars().map(|c| c as u32 as u8).collect(),
            Charset::Utf8 => s.as_bytes().to_vec(),
        }
    }
}

/// DICOM PN from family and given names (`family^given`, or `family` alone).
fn person_name(family: &str, given: &str) -> String {
    if given.is_empty() {
        family.to_string()
    } else {
        format!("{family}^{given}")
    }
}

/// The IssuerOfPatientID (0010,0021) the agency uses for an INS authority OID.
fn ins_issuer(oid: &str) -> &'static str {
    match oid {
        "1.2.250.1.213.1.4.9" => "ASIP-SANTE-INS-NIA",
        _ => "ASIP-SANTE-INS-NIR",
    }
}

fn code_item(value: &str, scheme: &str, meaning: &str, cs: Charset) -> DataSet {
    let mut d = DataSet::new();
    d.put((0x0008, 0x0100), Vr::Sh, value)
        .put((0x0008, 0x0102), Vr::Sh, scheme)
        .put((0x0008, 0x0104), Vr::Lo, cs.encode(meaning));
    d
}

fn issuer_item(oid: &str) -> DataSet {
    let mut d = DataSet::new();
    d.put((0x0040, 0x0032), Vr::Ut, oid)
        .put((0x0040, 0x0033), Vr::Cs, "ISO");
    d
}

fn sop_ref(class: &str, instance: &str) -> DataSet {
    let mut d = DataSet::new();
    d.put((0x0008, 0x1150), Vr::Ui, class)
        .put((0x0008, 0x1155), Vr::Ui, instance);
    d
}

/// The "Key Object Description" text, readable by a person (the structured data lives in the
/// archive: nothing parses this back).
fn description(input: &KosInput) -> String {
    let mut t = format!(
        "Examen : {}\nActe : {}\n",
        input.study.description, input.act
    );
    for s in &input.series {
        t.push_str(&format!(
            "Série {} : {} : {} ({} images)\n",
            s.series_uid,
            s.modality,
            s.description,
            s.instances.len()
        ));
    }
    t
}

/// Every text value of the data set, to choose the character set.
fn texts(input: &KosInput) -> impl Iterator<Item = &str> {
    [
        input.institution_name.as_str(),
        input.manufacturer.as_str(),
        &input.patient.family,
        &input.patient.given,
        &input.study.description,
        &input.study.referring_physician,
        &input.act,
    ]
    .into_iter()
    .chain(input.series.iter().map(|s| s.description.as_str()))
}

/// Builds the KOS file (Part 10, Implicit VR Little Endian).
pub fn build(input: &KosInput) -> Vec<u8> {
    // "Série" is in the description text: Latin-1 unless a name needs more.
    let cs = if texts(input).all(|t| t.chars().all(|c| (c as u32) < 0x100)) {
        Charset::Latin1
    } else {
        Charset::Utf8
    };
    let p = &input.patient;
    let st = &input.study;
    let rq = &input.request;
    let created = &input.created;
    let name = cs.encode(&person_name(&p.family, &p.given));

    let mut ds = DataSet::new();
    ds.put((0x0008, 0x0005), Vr::Cs, cs.term())
        .put((0x0008, 0x0012), Vr::Da, created.date.as_str())
        .put((0x0008, 0x0013), Vr::Tm, created.time.as_str())
        .put((0x0008, 0x0016), Vr::Ui, KOS_SOP_CLASS)
        .put((0x0008, 0x0018), Vr::Ui, input.sop_instance_uid.as_str())
        .put((0x0008, 0x0020), Vr::Da, st.study_date.as_str())
        .put((0x0008, 0x0021), Vr::Da, created.date.as_str())
        .put((0x0008, 0x0023), Vr::Da, created.date.as_str())
        .put((0x0008, 0x0030), Vr::Tm, st.study_time.as_str())
        .put((0x0008, 0x0031), Vr::Tm, created.time.as_str())
        .put((0x0008, 0x0033), Vr::Tm, created.time.as_str())
        .put((0x0008, 0x0050), Vr::Sh, rq.accession.as_str())
        .put((0x0008, 0x0060), Vr::Cs, "KO")
        .put((0x0008, 0x0070), Vr::Lo, cs.encode(&input.manufacturer))
        .put((0x0008, 0x0080), Vr::Lo, cs.encode(&input.institution_name))
        .put((0x0008, 0x0090), Vr::Pn, cs.encode(&st.referring_physician))
        .put((0x0008, 0x0201), Vr::Sh, created.offset())
        .put((0x0008, 0x1030), Vr::Lo, cs.encode(&st.description))
        .seq((0x0008, 0x1111), vec![])
        .put((0x0010, 0x0010), Vr::Pn, name.clone())
        .put((0x0010, 0x0020), Vr::Lo, p.ins.as_str())
        .put((0x0010, 0x0021), Vr::Lo, ins_issuer(&p.ins_oid))
        .seq((0x0010, 0x0024), vec![issuer_item(&p.ins_oid)])
        .put((0x0010, 0x0030), Vr::Da, p.birth_date.as_str())
        .put((0x0010, 0x0040), Vr::Cs, p.sex.as_str())
        .put((0x0010, 0x1001), Vr::Pn, name);
    let mut other_id = DataSet::new();
    other_id
        .put((0x0010, 0x0020), Vr::Lo, p.ins.as_str())
        .put((0x0010, 0x0022), Vr::Cs, "TEXT")
        .seq((0x0010, 0x0024), vec![issuer_item(&p.ins_oid)]);
    ds.seq((0x0010, 0x1002), vec![other_id])
        .put((0x0020, 0x000D), Vr::Ui, st.study_uid.as_str())
        .put((0x0020, 0x000E), Vr::Ui, input.series_uid.as_str())
        .put((0x0020, 0x0010), Vr::Sh, st.study_id.as_str())
        .put((0x0020, 0x0011), Vr::Is, SERIES_NUMBER)
        .put((0x0020, 0x0013), Vr::Is, input.instance_number.to_string())
        .put((0x0040, 0xA040), Vr::Cs, "CONTAINER")
        .seq(
            (0x0040, 0xA043),
            vec![code_item("113030", "DCM", "Manifest", cs)],
        )
        .put((0x0040, 0xA050), Vr::Cs, "SEPARATE");

    // Referenced Request: the order this exam fulfils (type 2 attributes present, even empty).
    let mut request = DataSet::new();
    request
        .put((0x0008, 0x0050), Vr::Sh, rq.accession.as_str())
        .put((0x0020, 0x000D), Vr::Ui, st.study_uid.as_str())
        .seq((0x0008, 0x1110), vec![])
        .put((0x0032, 0x1060), Vr::Lo, "")
        .seq((0x0032, 0x1064), vec![])
        .put((0x0040, 0x1001), Vr::Sh, "")
        .put((0x0040, 0x2016), Vr::Lo, rq.placer_order.as_str())
        .put((0x0040, 0x2017), Vr::Lo, "");
    if !rq.accession_issuer_oid.is_empty() {
        request.seq(
            (0x0008, 0x0051),
            vec![issuer_item(&rq.accession_issuer_oid)],
        );
    }
    if !rq.placer_issuer_oid.is_empty() {
        request.seq((0x0040, 0x0026), vec![issuer_item(&rq.placer_issuer_oid)]);
    }
    ds.seq((0x0040, 0xA370), vec![request]);

    // Current Requested Procedure Evidence: every image, by series, with where to fetch it.
    let series_items = input
        .series
        .iter()
        .map(|s| {
            let mut item = DataSet::new();
            item.put(
                (0x0008, 0x1190),
                Vr::Ur,
                format!(
                    "{}/studies/{}/series/{}",
                    input.retrieve_base, st.study_uid, s.series_uid
                ),
            )
            .seq(
                (0x0008, 0x1199),
                s.instances.iter().map(|(c, i)| sop_ref(c, i)).collect(),
            )
            .put((0x0020, 0x000E), Vr::Ui, s.series_uid.as_str());
            item
        })
        .collect();
    let mut evidence = DataSet::new();
    evidence.seq((0x0008, 0x1115), series_items).put(
        (0x0020, 0x000D),
        Vr::Ui,
        st.study_uid.as_str(),
    );
    ds.seq((0x0040, 0xA375), vec![evidence]);

    // TID 2010: the description first (row 4), then one IMAGE item per instance (row 5).
    let mut content = Vec::with_capacity(
        1 + input
            .series
            .iter()
            .map(|s| s.instances.len())
            .sum::<usize>(),
    );
    let mut text = DataSet::new();
    text.put((0x0040, 0xA010), Vr::Cs, "CONTAINS")
        .put((0x0040, 0xA040), Vr::Cs, "TEXT")
        .seq(
            (0x0040, 0xA043),
            vec![code_item("113012", "DCM", "Key Object Description", cs)],
        )
        .put((0x0040, 0xA160), Vr::Ut, cs.encode(&description(input)));
    content.push(text);
    for s in &input.series {
        for (class, instance) in &s.instances {
            let mut item = DataSet::new();
            item.seq((0x0008, 0x1199), vec![sop_ref(class, instance)])
                .put((0x0040, 0xA010), Vr::Cs, "CONTAINS")
                .put((0x0040, 0xA040), Vr::Cs, "IMAGE");
            content.push(item);
        }
    }
    let mut template = DataSet::new();
    template
        .put((0x0008, 0x0105), Vr::Cs, "DCMR")
        .put((0x0040, 0xDB00), Vr::Cs, "2010");
    ds.seq((0x0040, 0xA504), vec![template])
        .seq((0x0040, 0xA730), content);

    encode::part10(
        &ds,
        KOS_SOP_CLASS,
        &input.sop_instance_uid,
        IMPLEMENTATION_CLASS_UID,
        IMPLEMENTATION_VERSION,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dicom_dictionary_std::tags;
    use dicom_object::OpenFileOptions;

    /// A KOS input shaped like the agency's sample exam (2 MR series × `per_series` images).
    pub fn sample_input(per_series: usize) -> KosInput {
        let study_uid = "1.2.826.0.1.3680043.10.511.3.1";
        KosInput {
            sop_instance_uid: "1.2.250.1.999.1.1.8121.1.1".into(),
            series_uid: "1.2.250.1.999.1.1.8121.2.1".into(),
            instance_number: 1,
            created: LocalTime {
                date: "20231114".into(),
                time: "144457".into(),
                offset_minutes: 60,
            },
            manufacturer: "drimbox".into(),
            institution_name: "Cabinet de radiologie".into(),
            patient: Patient {
                family: "PAT-SIX".into(),
                given: "Alain".into(),
                ins: "162018885045327".into(),
                ins_oid: "1.2.250.1.213.1.4.10".into(),
                birth_date: "19960124".into(),
                sex: "M".into(),
            },
            study: Study {
                study_uid: study_uid.into(),
                study_date: "20221215".into(),
                study_time: "194622".into(),
                referring_physician: String::new(),
                description: "Exam A".into(),
                study_id: String::new(),
            },
            request: Request {
                accession: "7252295367250016".into(),
                accession_issuer_oid: "1.2.840.113619.6.196".into(),
                placer_order: "12989855966".into(),
                placer_issuer_oid: "2.16.840.1.113883.6.96".into(),
            },
            act: "Abdomen + pelvis".into(),
            series: (1..=2)
                .map(|s| SeriesRef {
                    series_uid: format!("{study_uid}.{s}"),
                    modality: "MR".into(),
                    description: "T2 Ax".into(),
                    instances: (1..=per_series)
                        .map(|i| {
                            (
                                "1.2.840.10008.5.1.4.1.1.4".to_string(),
                                format!("{study_uid}.{s}.{i}"),
                            )
                        })
                        .collect(),
                })
                .collect(),
            retrieve_base: "https://db.example.fr/wado".into(),
        }
    }

    #[test]
    fn deterministic_and_readable_by_dicom_rs() {
        let input = sample_input(10);
        let a = build(&input);
        assert_eq!(a, build(&input));
        assert_eq!(&a[128..132], b"DICM");
        let obj = OpenFileOptions::new()
            .from_reader(&a[128..])
            .expect("dicom-rs reads our KOS");
        let text = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
        assert_eq!(text(tags::SPECIFIC_CHARACTER_SET), "ISO_IR 100");
        assert_eq!(text(tags::ACCESSION_NUMBER), "7252295367250016");
        assert_eq!(text(tags::TIMEZONE_OFFSET_FROM_UTC), "+0100");
        assert_eq!(text(tags::PATIENT_ID), "162018885045327");
        let evidence = obj
            .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let series = evidence[0]
            .element(tags::REFERENCED_SERIES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(series.len(), 2);
        let url = series[0]
            .element(tags::RETRIEVE_URL)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(
            url.trim(),
            format!(
                "https://db.example.fr/wado/studies/{}/series/{}",
                input.study.study_uid, input.series[0].series_uid
            )
        );
        let content = obj
            .element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(content.len(), 21);
    }

    #[test]
    fn charset_follows_the_names() {
        let mut input = sample_input(1);
        let latin = build(&input);
        assert!(latin.windows(10).any(|w| w == b"ISO_IR 100"));
        // "Série" in Latin-1: one byte 0xE9.
        assert!(latin.windows(5).any(|w| w == b"S\xe9rie"));
        input.patient.family = "Łukasz".into();
        let utf8 = build(&input);
        assert!(utf8.windows(10).any(|w| w == b"ISO_IR 192"));
        assert!(utf8.windows(6).any(|w| w == "Série".as_bytes()));
    }

    /// Our KOS for the agency sample's exam has every attribute of `ko.dcm`, at the top level
    /// and in the evidence, but for the hacks DRIM-M §1.4 removes; and what it adds is listed.
    #[test]
    fn same_attributes_as_the_agency_sample_but_for_the_fixes() {
        use std::collections::BTreeSet;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/ref/ans/KOS/ko.dcm");
        let reference = dicom_object::open_file(path).expect("reference data");
        let text = |o: &dicom_object::InMemDicomObject, t| {
            o.element(t)
                .ok()
                .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
                .unwrap_or_default()
        };
        let evidence = &reference
            .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let series = evidence
            .element(tags::REFERENCED_SERIES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .map(|s| SeriesRef {
                series_uid: text(s, tags::SERIES_INSTANCE_UID),
                modality: "MR".into(),
                description: String::new(),
                instances: s
                    .element(tags::REFERENCED_SOP_SEQUENCE)
                    .unwrap()
                    .items()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            text(r, tags::REFERENCED_SOP_CLASS_UID),
                            text(r, tags::REFERENCED_SOP_INSTANCE_UID),
                        )
                    })
                    .collect(),
            })
            .collect();
        let mut input = sample_input(1);
        input.study.study_uid = text(&reference, tags::STUDY_INSTANCE_UID);
        input.series = series;
        let ours = build(&input);
        let ours = OpenFileOptions::new().from_reader(&ours[128..]).unwrap();
        let top = |o: &dicom_object::InMemDicomObject| -> BTreeSet<dicom_core::Tag> {
            o.iter().map(|e| e.header().tag).collect()
        };
        let ref_tags = top(&reference);
        let our_tags = top(&ours);
        // The birthplace hack in PatientComments is not carried over (DRIM-M §1.2).
        let dropped: Vec<_> = ref_tags.difference(&our_tags).copied().collect();
        assert_eq!(dropped, vec![tags::PATIENT_COMMENTS], "attributes we lack");
        let added: Vec<_> = our_tags.difference(&ref_tags).copied().collect();
        assert_eq!(
            added,
            vec![tags::CONTENT_TEMPLATE_SEQUENCE],
            "attributes we add"
        );
        // The same references, series by series, with a Retrieve URL each.
        let count = |o: &dicom_object::InMemDicomObject| -> usize {
            o.element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0]
                .element(tags::REFERENCED_SERIES_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
                .iter()
                .map(|s| {
                    s.element(tags::REFERENCED_SOP_SEQUENCE)
                        .unwrap()
                        .items()
                        .unwrap()
                        .len()
                })
                .sum()
        };
        assert_eq!(count(&ours), count(&reference));
        assert_eq!(count(&ours), 20);
        // The request: the sample's attributes, plus the type 2 ones dciodvfy asks for.
        let request_tags = |o: &dicom_object::InMemDicomObject| -> BTreeSet<dicom_core::Tag> {
            top(&o
                .element(tags::REFERENCED_REQUEST_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0])
        };
        assert!(request_tags(&ours).is_superset(&request_tags(&reference)));
    }

    /// `KOS_SAMPLE_OUT=/path cargo test --lib kos::tests::write_sample` writes a sample KOS to
    /// look at with dcmdump / dciodvfy by hand.
    #[test]
    fn write_sample() {
        if let Ok(path) = std::env::var("KOS_SAMPLE_OUT") {
            std::fs::write(path, build(&sample_input(10))).unwrap();
        }
    }

    #[test]
    fn offsets() {
        let t = |m| LocalTime {
            date: String::new(),
            time: String::new(),
            offset_minutes: m,
        };
        assert_eq!(t(120).offset(), "+0200");
        assert_eq!(t(0).offset(), "+0000");
        assert_eq!(t(-210).offset(), "-0330");
    }
}
