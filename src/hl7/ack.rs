//! Acknowledgements: the ACK a message gets, built purely from the message, the outcome and the
//! clock value the caller passes (so answers are deterministic and testable).
//!
//! `AA` only once the message is durably recorded (the listener's job); `AE` with an ERR segment
//! (table 0357 code and location) for a message we cannot read; `AR` for one we read and refuse.

use super::message::{escape, Charset, Delimiters, Hl7Error, Message};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept: recorded.
    Accept,
    /// Application error: the message is malformed.
    Error,
    /// Application reject: well-formed, but refused.
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

/// The ACK for `original` (None when it could not even be parsed), in its own delimiters and
/// character set. `control_id`: our MSH-10; `now`: `YYYYMMDDHHMMSS` for MSH-7.
pub fn build(
    original: Option<&Message>,
    code: AckCode,
    error: Option<&Hl7Error>,
    control_id: &str,
    now: &str,
) -> Vec<u8> {
    let d = original.map_or_else(Delimiters::default, |m| m.delimiters);
    let charset = original.map_or(Charset::Utf8, |m| m.charset);
    let g = |path: &str| original.map(|m| m.get(path)).unwrap_or_default();
    let e = |s: &str| escape(s, &d);
    let f = d.field;
    let event = g("MSH-9.2");
    let version = if g("MSH-12").is_empty() {
        "2.5".to_string()
    } else {
        g("MSH-12")
    };
    let processing = if g("MSH-11").is_empty() {
        "P".to_string()
    } else {
        g("MSH-11")
    };
    let encoding: String = [d.component, d.repetition, d.escape, d.subcomponent]
        .iter()
        .collect();
    let mut out = format!(
        "MSH{f}{encoding}{f}{}{f}{}{f}{}{f}{}{f}{now}{f}{f}ACK{c}{}{c}ACK{f}{}{f}{}{f}{}{f}{f}{f}{f}{f}{}{f}{}\r",
        e(&g("MSH-5")),
        e(&g("MSH-6")),
        e(&g("MSH-3")),
        e(&g("MSH-4")),
        e(&event),
        e(control_id),
        e(&processing),
        e(&version),
        e(&g("MSH-17")),
        e(&g("MSH-18")),
        c = d.component,
    );
    out += &format!("MSA{f}{}{f}{}\r", code.as_str(), e(&g("MSH-10")));
    if let Some(err) = error {
        let c = d.component;
        let location = err
            .location
            .as_ref()
            .map(|l| format!("{}{c}{}{c}{}", e(&l.segment), l.sequence, l.field))
            .unwrap_or_default();
        out += &format!(
            "ERR{f}{f}{location}{f}{}{c}{}{c}HL70357{f}E{f}{f}{f}{f}{}\r",
            err.code.code(),
            e(err.code.text()),
            e(&err.message),
        );
    }
    charset.encode(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::message::ErrorCode;

    const ORU: &[u8] = b"MSH|^~\\&|RIS|CABINET|DRIMBOX|CABINET|20240101120000||ORU^R01^ORU_R01|MSG-42|P|2.5|||||FRA|8859/15|||2.1^CISIS_CDA_HL7_V2\rPID|||1\r";

    #[test]
    fn accept_echoes_the_control_id_and_swaps_the_parties() {
        let m = Message::parse(ORU).unwrap();
        let ack = build(Some(&m), AckCode::Accept, None, "ACK-1", "20240101120001");
        let text = String::from_utf8(ack.clone()).unwrap();
        assert_eq!(
            text,
            "MSH|^~\\&|DRIMBOX|CABINET|RIS|CABINET|20240101120001||ACK^R01^ACK|ACK-1|P|2.5|||||FRA|8859/15\rMSA|AA|MSG-42\r"
        );
        // The ACK parses as a message in its own right.
        let back = Message::parse(&ack).unwrap();
        assert_eq!(back.get("MSA-2"), "MSG-42");
        assert_eq!(back.get("MSH-9.1"), "ACK");
    }

    #[test]
    fn errors_carry_an_err_segment() {
        let m = Message::parse(ORU).unwrap();
        let err = Hl7Error::new(
            ErrorCode::RequiredFieldMissing,
            Some(("PID", 1, 3)),
            "no INS in PID-3 (a|b)",
        );
        let ack = build(
            Some(&m),
            AckCode::Reject,
            Some(&err),
            "ACK-2",
            "20240101120001",
        );
        let back = Message::parse(&ack).unwrap();
        assert_eq!(back.get("MSA-1"), "AR");
        assert_eq!(back.get("ERR-2.1"), "PID");
        assert_eq!(back.get("ERR-2.3"), "3");
        assert_eq!(back.get("ERR-3.1"), "101");
        assert_eq!(back.get("ERR-3.3"), "HL70357");
        assert_eq!(back.get("ERR-4"), "E");
        assert_eq!(back.get("ERR-8"), "no INS in PID-3 (a|b)");
        // Without a parsable original: defaults, empty MSA-2.
        let ack = build(None, AckCode::Error, Some(&err), "ACK-3", "20240101120001");
        let back = Message::parse(&ack).unwrap();
        assert_eq!(
            (back.get("MSA-1"), back.get("MSA-2")),
            ("AE".to_string(), String::new())
        );
    }
}
