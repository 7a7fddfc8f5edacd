//! What an ORU^R01 / MDM^T02/T04/T10 of the ANS CDA-over-HL7 profile asks of the box, read purely
//! from a parsed message: publish, replace or delete the exam's report, for which patient (INS),
//! sent by whom, with which DMP flags — or why the message is refused (`AR`, with the table 0357
//! code and location of the ERR segment).

use super::message::{ErrorCode, Hl7Error, Message};

/// What the RIS asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// ORU ORC-1 `NW` + OBX-11 `F`, MDM^T02.
    Publish,
    /// ORU ORC-1 `RO` + OBX-11 `C`, MDM^T10.
    Replace,
    /// ORU ORC-1 `CA` + OBX-11 `D`, MDM^T04.
    Delete,
}

/// A patient identifier with its assigning authority's OID (PID-3, CX.1 and CX.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    pub id: String,
    pub oid: String,
}

/// The `PRT|…|SB^Send by^participation|` segment: who sends (for the VIHF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// PRT-5.1: RPPS/ADELI of the person (VIHF NameID).
    pub id: String,
    pub family: String,
    pub given: String,
    /// PRT-8.10: the structure's identifier (VIHF Identifiant_Structure).
    pub structure_id: String,
}

/// The MetaDMPMSS OBX flags the profile defines (`Y`/`N` in OBX-5); None when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub masque_ps: Option<bool>,
    pub invisible_patient: Option<bool>,
    pub invisible_rep_legaux: Option<bool>,
    pub dest_dmp: Option<bool>,
}

/// Everything the box takes from a report message.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub action: Action,
    /// `ORU^R01`, `MDM^T02`, …
    pub message_type: String,
    /// MSH-10, the key of idempotence (a re-sent message gets the same ACK, no second record).
    pub control_id: String,
    pub ins: Identifier,
    /// PID-3 repetition of type `PI` (the practice's own patient number), if any.
    pub ipp: Option<Identifier>,
    pub sender: Option<Sender>,
    pub flags: Flags,
    /// The CDA document, decoded from OBX-5.5.
    pub cda: Vec<u8>,
}

/// OIDs of the INS assigning authorities (NIR, NIA, test NIR, demo NIR).
pub const INS_OIDS: [&str; 4] = [
    "1.2.250.1.213.1.4.8",
    "1.2.250.1.213.1.4.9",
    "1.2.250.1.213.1.4.10",
    "1.2.250.1.213.1.4.11",
];

fn refuse(code: ErrorCode, at: (&str, usize, usize), message: impl Into<String>) -> Hl7Error {
    Hl7Error::new(code, Some(at), message)
}

/// Reads a report message, or says why it is refused.
pub fn read(m: &Message) -> Result<Report, Hl7Error> {
    let kind = (m.get("MSH-9.1"), m.get("MSH-9.2"));
    let version = m.get("MSH-12");
    let (expected_version, event_action) = match (kind.0.as_str(), kind.1.as_str()) {
        ("ORU", "R01") => ("2.5", None),
        ("MDM", "T02") => ("2.6", Some(Action::Publish)),
        ("MDM", "T10") => ("2.6", Some(Action::Replace)),
        ("MDM", "T04") => ("2.6", Some(Action::Delete)),
        ("ORU", _) | ("MDM", _) => {
            return Err(refuse(
                ErrorCode::UnsupportedEventCode,
                ("MSH", 1, 9),
                format!("event {}^{} is not one the box takes", kind.0, kind.1),
            ))
        }
        _ => {
            return Err(refuse(
                ErrorCode::UnsupportedMessageType,
                ("MSH", 1, 9),
                format!("message type {} is not ORU or MDM", kind.0),
            ))
        }
    };
    if !version.starts_with(expected_version) {
        return Err(refuse(
            ErrorCode::UnsupportedVersionId,
            ("MSH", 1, 12),
            format!(
                "{}^{} must be version {expected_version}, not {version}",
                kind.0, kind.1
            ),
        ));
    }
    let control_id = m.get("MSH-10");
    if control_id.is_empty() {
        return Err(refuse(
            ErrorCode::RequiredFieldMissing,
            ("MSH", 1, 10),
            "MSH-10 (message control id) is empty",
        ));
    }
    let msh = m.segment("MSH", 1).expect("parsed messages start with MSH");
    let profiled = (1..=m.repetitions(msh, 21).max(1))
        .any(|r| m.value(msh, 21, r, 2, 0) == "CISIS_CDA_HL7_V2");
    if !profiled {
        return Err(refuse(
            ErrorCode::TableValueNotFound,
            ("MSH", 1, 21),
            "MSH-21 does not name the profile 2.1^CISIS_CDA_HL7_V2",
        ));
    }

    let pid = m
        .segment("PID", 1)
        .ok_or_else(|| refuse(ErrorCode::SegmentSequence, ("PID", 1, 0), "no PID segment"))?;
    let ident = |kind: &str| {
        (1..=m.repetitions(pid, 3))
            .find(|&r| m.value(pid, 3, r, 5, 0) == kind)
            .map(|r| Identifier {
                id: m.value(pid, 3, r, 1, 0),
                oid: m.value(pid, 3, r, 4, 2),
            })
    };
    let ins = ident("INS").filter(|i| !i.id.is_empty()).ok_or_else(|| {
        refuse(
            ErrorCode::RequiredFieldMissing,
            ("PID", 1, 3),
            "PID-3 has no INS (identifier type INS)",
        )
    })?;
    if !INS_OIDS.contains(&ins.oid.as_str()) {
        return Err(refuse(
            ErrorCode::TableValueNotFound,
            ("PID", 1, 3),
            format!("the INS assigning authority {} is not an INS OID", ins.oid),
        ));
    }
    let ipp = ident("PI");

    // The CDA: the OBX of value type ED; its OBX-11 says what this version of the document is.
    let (seq, cda_obx) = m
        .segments_named("OBX")
        .enumerate()
        .find(|(_, s)| m.value(s, 2, 1, 0, 0) == "ED")
        .map(|(i, s)| (i + 1, s))
        .ok_or_else(|| {
            refuse(
                ErrorCode::RequiredFieldMissing,
                ("OBX", 1, 5),
                "no OBX of type ED carrying the CDA",
            )
        })?;
    let encoding = m.value(cda_obx, 5, 1, 4, 0);
    if !encoding.eq_ignore_ascii_case("Base64") {
        return Err(refuse(
            ErrorCode::DataType,
            ("OBX", seq, 5),
            format!("the CDA is encoded as `{encoding}`, not Base64"),
        ));
    }
    let cda = crate::base64::decode(m.value(cda_obx, 5, 1, 5, 0).as_bytes()).map_err(|e| {
        refuse(
            ErrorCode::DataType,
            ("OBX", seq, 5),
            format!("the CDA in OBX-5 cannot be decoded: {e}"),
        )
    })?;
    if cda.is_empty() {
        return Err(refuse(
            ErrorCode::RequiredFieldMissing,
            ("OBX", seq, 5),
            "the CDA in OBX-5 is empty",
        ));
    }
    let status = m.value(cda_obx, 11, 1, 0, 0);
    let order = m.get("ORC-1");
    let action = consistent_action(event_action, &order, &status)
        .map_err(|why| refuse(ErrorCode::TableValueNotFound, ("ORC", 1, 1), why))?;

    let sender = m
        .segments_named("PRT")
        .find(|s| m.value(s, 4, 1, 1, 0) == "SB")
        .map(|s| Sender {
            id: m.value(s, 5, 1, 1, 0),
            family: m.value(s, 5, 1, 2, 0),
            given: m.value(s, 5, 1, 3, 0),
            structure_id: m.value(s, 8, 1, 10, 0),
        });
    Ok(Report {
        action,
        message_type: format!("{}^{}", kind.0, kind.1),
        control_id,
        ins,
        ipp,
        sender,
        flags: flags(m),
        cda,
    })
}

/// ORC-1, OBX-11 and (for MDM) the event must tell the same story.
fn consistent_action(event: Option<Action>, order: &str, status: &str) -> Result<Action, String> {
    let from_pair = match (order, status) {
        ("NW", "F") | ("", "F") => Some(Action::Publish),
        ("RO", "C") | ("", "C") => Some(Action::Replace),
        ("CA", "D") | ("", "D") => Some(Action::Delete),
        _ => None,
    };
    match (event, from_pair) {
        (_, None) => Err(format!(
            "ORC-1 `{order}` and OBX-11 `{status}` are inconsistent (NW/F, RO/C or CA/D)"
        )),
        (None, Some(a)) => Ok(a),
        (Some(e), Some(a)) if e == a => Ok(a),
        (Some(e), Some(a)) => Err(format!("the event says {e:?} but ORC-1/OBX-11 say {a:?}")),
    }
}

fn flags(m: &Message) -> Flags {
    let mut f = Flags::default();
    for s in m
        .segments_named("OBX")
        .filter(|s| m.value(s, 3, 1, 3, 0) == "MetaDMPMSS")
    {
        let v = match m.value(s, 5, 1, 1, 0).as_str() {
            "Y" => Some(true),
            "N" => Some(false),
            _ => None,
        };
        match m.value(s, 3, 1, 1, 0).as_str() {
            "MASQUE_PS" => f.masque_ps = v,
            "INVISIBLE_PATIENT" => f.invisible_patient = v,
            "INVISIBLE_REP_LEGAUX" => f.invisible_rep_legaux = v,
            "DESTDMP" => f.dest_dmp = v,
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/ref/hl7")
            .join(name);
        String::from_utf8(std::fs::read(p).unwrap()).unwrap()
    }

    fn read_text(t: &str) -> Result<Report, Hl7Error> {
        read(&Message::parse(t.as_bytes()).unwrap())
    }

    #[test]
    fn the_agencys_oru_and_mdm_are_publications() {
        for (file, kind) in [("ORU_R01_K.hl7", "ORU^R01"), ("MDM_T02_L.hl7", "MDM^T02")] {
            let r = read_text(&sample(file)).unwrap();
            assert_eq!(r.action, Action::Publish, "{file}");
            assert_eq!(r.message_type, kind);
            assert_eq!(
                r.ins,
                Identifier {
                    id: "279035121518989".into(),
                    oid: "1.2.250.1.213.1.4.10".into()
                }
            );
            let s = r.sender.unwrap();
            assert_eq!(
                (
                    s.id.as_str(),
                    s.family.as_str(),
                    s.given.as_str(),
                    s.structure_id.as_str()
                ),
                ("801234564895", "Eric", "Thomas", "300017985")
            );
            assert_eq!(
                r.flags,
                Flags {
                    masque_ps: Some(false),
                    invisible_patient: Some(true),
                    invisible_rep_legaux: Some(true),
                    dest_dmp: Some(true)
                }
            );
            assert!(
                r.cda.starts_with(b"<?xml"),
                "{file}: the CDA decodes to XML"
            );
            assert!(String::from_utf8_lossy(&r.cda).contains("ClinicalDocument"));
        }
    }

    #[test]
    fn refusals_name_their_cause() {
        let oru = sample("ORU_R01_K.hl7");
        let case = |from: &str, to: &str| read_text(&oru.replacen(from, to, 1)).unwrap_err();
        let e = case("ORU^R01^ORU_R01", "ADT^A01^ADT_A01");
        assert_eq!(
            (e.code, e.location.clone().unwrap().field),
            (ErrorCode::UnsupportedMessageType, 9)
        );
        assert_eq!(
            case("ORU^R01^ORU_R01", "ORU^R30^ORU_R30").code,
            ErrorCode::UnsupportedEventCode
        );
        assert_eq!(
            case("|P|2.5|", "|P|2.3|").code,
            ErrorCode::UnsupportedVersionId
        );
        assert_eq!(case("|id|P|", "||P|").code, ErrorCode::RequiredFieldMissing);
        assert_eq!(case("2.1^CISIS_CDA_HL7_V2", "").location.unwrap().field, 21);
        let e = case("^INS^^", "^XX^^");
        assert_eq!(
            (e.code, e.location.clone().unwrap().segment.as_str()),
            (ErrorCode::RequiredFieldMissing, "PID")
        );
        assert_eq!(
            case("1.2.250.1.213.1.4.10&ISO^INS", "1.2.3&ISO^INS").code,
            ErrorCode::TableValueNotFound
        );
        assert_eq!(
            case("^Base64^PD94", "^Base64^P!94").code,
            ErrorCode::DataType
        );
        let e = case("ORC|NW|", "ORC|CA|");
        assert_eq!(
            (e.code, e.location.clone().unwrap().segment.as_str()),
            (ErrorCode::TableValueNotFound, "ORC")
        );
        assert!(e.message.contains("inconsistent"), "{e}");
        // MDM event against its segments: T04 (deletion) with NW/F.
        let mdm = sample("MDM_T02_L.hl7").replacen("MDM^T02^MDM_T02", "MDM^T04^MDM_T04", 1);
        assert!(read_text(&mdm)
            .unwrap_err()
            .message
            .contains("the event says Delete"));
    }

    #[test]
    fn replacement_and_deletion() {
        let oru = sample("ORU_R01_K.hl7");
        let ed_f = "||||||F|\r";
        assert!(oru.contains(ed_f));
        let r = read_text(
            &oru.replacen("ORC|NW|", "ORC|RO|", 1)
                .replacen(ed_f, "||||||C|\r", 1),
        )
        .unwrap();
        assert_eq!(r.action, Action::Replace);
        let r = read_text(
            &oru.replacen("ORC|NW|", "ORC|CA|", 1)
                .replacen(ed_f, "||||||D|\r", 1),
        )
        .unwrap();
        assert_eq!(r.action, Action::Delete);
        let mdm = sample("MDM_T02_L.hl7")
            .replacen("MDM^T02^MDM_T02", "MDM^T10^MDM_T10", 1)
            .replacen("ORC|NW|", "ORC|RO|", 1);
        let ed = mdm.find("|ED|").unwrap();
        let f_at = ed + mdm[ed..].find(ed_f).unwrap();
        let mdm = format!("{}||||||C|\r{}", &mdm[..f_at], &mdm[f_at + ed_f.len()..]);
        assert_eq!(read_text(&mdm).unwrap().action, Action::Replace);
    }
}
