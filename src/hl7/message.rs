//! HL7 v2 messages as the RIS sends them (ORU^R01 v2.5, MDM^T02/T04/T10 v2.6, the ANS profile
//! `2.1^CISIS_CDA_HL7_V2`): a pure parser from the bytes of one MLLP frame to segments, fields,
//! repetitions, components and sub-components, with the delimiters of MSH-1/MSH-2, the
//! character set of MSH-18 and the escape sequences of HL7 v2.5 §2.7.
//!
//! Nothing here touches a socket or a disk. Errors carry what an ERR segment needs: the HL7
//! table 0357 code and the location, so that the listener can answer `AE` precisely.

use std::fmt;

/// Largest message accepted (the CDA travels base64 in OBX-5: the agency's samples are ~830 KB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// HL7 table 0357 (message error condition codes) used in ERR-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequence = 100,
    RequiredFieldMissing = 101,
    DataType = 102,
    TableValueNotFound = 103,
    UnsupportedMessageType = 200,
    UnsupportedEventCode = 201,
    UnsupportedProcessingId = 202,
    UnsupportedVersionId = 203,
    ApplicationInternalError = 207,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The table's own wording, for ERR-3.2.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataType => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// Where in the message a problem is (ERR-2: segment ID, sequence, field position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub segment: String,
    /// 1 for the first segment of that name.
    pub sequence: usize,
    /// Field position (0 when the problem concerns the whole segment).
    pub field: usize,
}

/// Why a message cannot be taken, with what its ERR segment must say. No patient data: the
/// message names positions, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}){}: {message}", code.text(), code.code(), location.as_ref().map(|l| format!(" at {}-{}", l.segment, l.field)).unwrap_or_default())]
pub struct Hl7Error {
    pub code: ErrorCode,
    pub location: Option<Location>,
    pub message: String,
}

impl Hl7Error {
    pub fn new(
        code: ErrorCode,
        at: Option<(&str, usize, usize)>,
        message: impl Into<String>,
    ) -> Self {
        Hl7Error {
            code,
            location: at.map(|(s, q, f)| Location {
                segment: s.into(),
                sequence: q,
                field: f,
            }),
            message: message.into(),
        }
    }
}

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
        }
    }
}

/// The character sets MSH-18 may name in this profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Latin9,
    Latin1,
    Ascii,
}

impl Charset {
    /// MSH-18 value → character set. Empty means the default of the profile (ASCII; we read
    /// it as UTF-8, a superset).
    pub fn from_msh18(v: &str) -> Option<Charset> {
        match v.trim() {
            "UNICODE UTF-8" | "UTF-8" => Some(Charset::Utf8),
            "8859/15" => Some(Charset::Latin9),
            "8859/1" => Some(Charset::Latin1),
            "" | "ASCII" => Some(Charset::Ascii),
            _ => None,
        }
    }

    /// Decodes bytes of this character set.
    pub fn decode(self, bytes: &[u8]) -> Result<String, usize> {
        match self {
            Charset::Utf8 | Charset::Ascii => {
                String::from_utf8(bytes.to_vec()).map_err(|e| e.utf8_error().valid_up_to())
            }
            Charset::Latin1 => Ok(bytes.iter().map(|&b| b as char).collect()),
            Charset::Latin9 => Ok(bytes.iter().map(|&b| latin9(b)).collect()),
        }
    }

    /// Encodes text for an answer in this character set (unrepresentable characters → `?`).
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Charset::Utf8 | Charset::Ascii => text.as_bytes().to_vec(),
            Charset::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
            Charset::Latin9 => text
                .chars()
                .map(|c| (0u8..=255).find(|&b| latin9(b) == c).unwrap_or(b'?'))
                .collect(),
        }
    }
}

/// ISO 8859-15: Latin-1 with eight code points replaced (€, Š, š, Ž, ž, Œ, œ, Ÿ).
fn latin9(b: u8) -> char {
    match b {
        0xA4 => '€',
        0xA6 => 'Š',
        0xA8 => 'š',
        0xB4 => 'Ž',
        0xB8 => 'ž',
        0xBC => 'Œ',
        0xBD => 'œ',
        0xBE => 'Ÿ',
        _ => b as char,
    }
}

/// One segment: its name and its raw fields (still escaped), field 0 being the name.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub name: String,
    fields: Vec<String>,
}

/// A parsed message. Values are read through [`Message::get`] with an HL7 path.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub delimiters: Delimiters,
    pub charset: Charset,
    pub segments: Vec<Segment>,
}

impl Message {
    /// Parses one message (the content of one MLLP frame).
    pub fn parse(bytes: &[u8]) -> Result<Message, Hl7Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Hl7Error::new(
                ErrorCode::ApplicationInternalError,
                None,
                format!(
                    "message of {} bytes is over the limit of {MAX_MESSAGE}",
                    bytes.len()
                ),
            ));
        }
        if !bytes.starts_with(b"MSH") || bytes.len() < 8 {
            return Err(Hl7Error::new(
                ErrorCode::SegmentSequence,
                Some(("MSH", 1, 0)),
                "the message does not start with an MSH segment",
            ));
        }
        // MSH-1 and MSH-2 are ASCII by definition: read the delimiters before decoding.
        let field = bytes[3] as char;
        let enc: Vec<char> = bytes[4..]
            .iter()
            .take_while(|&&b| b as char != field)
            .map(|&b| b as char)
            .collect();
        if enc.len() < 4 || enc.len() > 5 {
            return Err(Hl7Error::new(
                ErrorCode::DataType,
                Some(("MSH", 1, 2)),
                "MSH-2 must hold the four encoding characters",
            ));
        }
        let delimiters = Delimiters {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc[2],
            subcomponent: enc[3],
        };
        // MSH-18 is also ASCII: find it in the raw first segment.
        let first_end = bytes
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(bytes.len());
        let msh_raw = String::from_utf8_lossy(&bytes[..first_end]);
        let msh18 = msh_raw.split(field).nth(17).unwrap_or("");
        let msh18 = msh18.split(delimiters.repetition).next().unwrap_or("");
        let charset = Charset::from_msh18(msh18).ok_or_else(|| {
            Hl7Error::new(
                ErrorCode::TableValueNotFound,
                Some(("MSH", 1, 18)),
                format!(
                    "character set `{msh18}` is not supported (UNICODE UTF-8, 8859/15, 8859/1)"
                ),
            )
        })?;
        let text = charset.decode(bytes).map_err(|at| {
            Hl7Error::new(
                ErrorCode::DataType,
                None,
                format!("bytes at offset {at} are not valid {charset:?}"),
            )
        })?;
        let mut segments = Vec::new();
        for raw in text.split(['\r', '\n']).filter(|s| !s.trim().is_empty()) {
            let mut fields: Vec<String> = raw.split(field).map(str::to_string).collect();
            let name = fields[0].clone();
            if name.len() != 3
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                return Err(Hl7Error::new(
                    ErrorCode::SegmentSequence,
                    None,
                    format!(
                        "`{}` is not a segment name",
                        name.chars().take(8).collect::<String>()
                    ),
                ));
            }
            if name == "MSH" {
                // MSH-1 is the field separator itself: number the fields as the standard does.
                fields.insert(1, field.to_string());
            }
            segments.push(Segment { name, fields });
        }
        Ok(Message {
            delimiters,
            charset,
            segments,
        })
    }

    /// The `n`-th (1-based) segment named `name`.
    pub fn segment(&self, name: &str, n: usize) -> Option<&Segment> {
        self.segments
            .iter()
            .filter(|s| s.name == name)
            .nth(n.saturating_sub(1))
    }

    pub fn segments_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.name == name)
    }

    /// A value by position in a segment: field, repetition (1-based), component, sub-component
    /// (1-based; 0 means "the whole"). Unescaped. Empty when absent.
    pub fn value(
        &self,
        seg: &Segment,
        field: usize,
        rep: usize,
        comp: usize,
        sub: usize,
    ) -> String {
        let d = &self.delimiters;
        let Some(raw) = seg.fields.get(field) else {
            return String::new();
        };
        if seg.name == "MSH" && (field == 1 || field == 2) {
            return raw.clone();
        }
        let r = raw.split(d.repetition).nth(rep.max(1) - 1).unwrap_or("");
        let c = if comp == 0 {
            r
        } else {
            r.split(d.component).nth(comp - 1).unwrap_or("")
        };
        let s = if sub == 0 || comp == 0 {
            c
        } else {
            c.split(d.subcomponent).nth(sub - 1).unwrap_or("")
        };
        unescape(s, d)
    }

    /// Number of repetitions of a field.
    pub fn repetitions(&self, seg: &Segment, field: usize) -> usize {
        seg.fields.get(field).map_or(0, |f| {
            if f.is_empty() {
                0
            } else {
                f.split(self.delimiters.repetition).count()
            }
        })
    }

    /// `SEG-f.c.s` of the first such segment, e.g. `get("MSH-9.2")`, `get("PID-3.4.2")`.
    pub fn get(&self, path: &str) -> String {
        let Some((seg, rest)) = path.split_once('-') else {
            return String::new();
        };
        let mut parts = rest.split('.').map(|p| p.parse::<usize>().unwrap_or(0));
        let field = parts.next().unwrap_or(0);
        let comp = parts.next().unwrap_or(0);
        let sub = parts.next().unwrap_or(0);
        match self.segment(seg, 1) {
            Some(s) => self.value(s, field, 1, comp, sub),
            None => String::new(),
        }
    }
}

/// Undoes HL7 escapes (§2.7): \F\ \S\ \T\ \R\ \E\, \.br\, and \Xhh..\ (hex bytes, as UTF-8).
/// Unknown sequences are kept as they are.
pub fn unescape(s: &str, d: &Delimiters) -> String {
    if !s.contains(d.escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(d.escape) {
        out.push_str(&rest[..i]);
        let after = &rest[i + d.escape.len_utf8()..];
        let Some(j) = after.find(d.escape) else {
            out.push_str(&rest[i..]);
            return out;
        };
        let seq = &after[..j];
        match seq {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "T" => out.push(d.subcomponent),
            "R" => out.push(d.repetition),
            "E" => out.push(d.escape),
            ".br" => out.push('\n'),
            x if x.starts_with('X') && x.len() > 1 && x.len() % 2 == 1 => {
                let bytes: Option<Vec<u8>> = (1..x.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(&x[k..k + 2], 16).ok())
                    .collect();
                match bytes.and_then(|b| String::from_utf8(b).ok()) {
                    Some(t) => out.push_str(&t),
                    None => {
                        out.push(d.escape);
                        out.push_str(seq);
                        out.push(d.escape);
                    }
                }
            }
            _ => {
                out.push(d.escape);
                out.push_str(seq);
                out.push(d.escape);
            }
        }
        rest = &after[j + d.escape.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for a field of an answer (the inverse of [`unescape`] for the delimiters).
pub fn escape(s: &str, d: &Delimiters) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let seq = if c == d.escape {
            Some("E")
        } else if c == d.field {
            Some("F")
        } else if c == d.component {
            Some("S")
        } else if c == d.subcomponent {
            Some("T")
        } else if c == d.repetition {
            Some("R")
        } else {
            None
        };
        match seq {
            Some(q) => {
                out.push(d.escape);
                out.push_str(q);
                out.push(d.escape);
            }
            None if c == '\r' || c == '\n' => out.push(' '),
            None => out.push(c),
        }
    }
    out
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}^{}^{}", self.segment, self.sequence, self.field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/ref/hl7")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn the_agencys_oru_parses() {
        let m = Message::parse(&sample("ORU_R01_K.hl7")).unwrap();
        assert_eq!(m.charset, Charset::Utf8);
        assert_eq!(m.get("MSH-9.1"), "ORU");
        assert_eq!(m.get("MSH-9.2"), "R01");
        assert_eq!(m.get("MSH-12"), "2.5");
        assert_eq!(m.get("MSH-21.2"), "CISIS_CDA_HL7_V2");
        assert_eq!(m.get("MSH-1"), "|");
        assert_eq!(m.get("MSH-2"), "^~\\&");
        // PID-3: the INS with its assigning authority's OID.
        assert_eq!(m.get("PID-3.4.2"), "1.2.250.1.213.1.4.10");
        assert_eq!(m.get("PID-3.5"), "INS");
        assert_eq!(m.get("ORC-1"), "NW");
        // The flags, and é decoded from UTF-8.
        let masque = m
            .segments_named("OBX")
            .find(|s| m.value(s, 3, 1, 1, 0) == "MASQUE_PS")
            .unwrap();
        assert_eq!(
            m.value(masque, 3, 1, 2, 0),
            "Masqué aux professionnels de Santé"
        );
        assert_eq!(m.value(masque, 5, 1, 1, 0), "N");
        // OBX-5 of the ED observation holds the base64 CDA.
        let ed = m
            .segments_named("OBX")
            .find(|s| m.value(s, 2, 1, 0, 0) == "ED")
            .unwrap();
        assert!(m.value(ed, 5, 1, 5, 0).len() > 100_000);
        let pid = m.segment("PID", 1).unwrap();
        assert_eq!(m.repetitions(pid, 5), 2);
    }

    #[test]
    fn the_agencys_mdm_and_omi_parse() {
        let m = Message::parse(&sample("MDM_T02_L.hl7")).unwrap();
        assert_eq!(
            (m.get("MSH-9.1"), m.get("MSH-9.2"), m.get("MSH-12")),
            ("MDM".into(), "T02".into(), "2.6".into())
        );
        assert_eq!(m.get("TXA-2"), "18748-4");
        assert_eq!(m.get("PRT-4.1"), "SB");
        assert_eq!(m.get("PRT-5.1"), "801234564895");
        let o = Message::parse(&sample("OMI_O23_ImagingOrder.hl7")).unwrap();
        assert_eq!(o.charset, Charset::Ascii);
        assert_eq!(o.get("MSH-9.2"), "O23");
        assert_eq!(o.get("IPC-5"), "CT");
    }

    #[test]
    fn escapes_and_charsets() {
        let d = Delimiters::default();
        assert_eq!(unescape(r"a\F\b\S\c\T\d\R\e\E\f", &d), "a|b^c&d~e\\f");
        assert_eq!(unescape(r"x\.br\y \XC3A9\ \Z\ \F", &d), "x\ny é \\Z\\ \\F");
        for s in ["plain", "a|b^c&d~e\\f", "é€"] {
            assert_eq!(unescape(&escape(s, &d), &d), s);
        }
        assert_eq!(Charset::Latin9.decode(&[0x41, 0xA4, 0xE9]).unwrap(), "A€é");
        assert_eq!(Charset::Latin1.decode(&[0xA4]).unwrap(), "¤");
        assert_eq!(Charset::Latin9.encode("A€é☃"), vec![0x41, 0xA4, 0xE9, b'?']);
        assert!(Charset::Utf8.decode(&[0x41, 0xE9]).is_err());
        assert_eq!(Charset::from_msh18("8859/15"), Some(Charset::Latin9));
        assert_eq!(Charset::from_msh18("EBCDIC"), None);
    }

    #[test]
    fn latin9_message_and_bad_input() {
        let mut m = b"MSH|^~\\&|RIS|F|DRIMBOX|F|20240101||ORU^R01^ORU_R01|42|P|2.5|||||FRA|8859/15\rPID|||1^^^X&1.2&ISO||CAF\xc9^L\xa4O\r".to_vec();
        let p = Message::parse(&m).unwrap();
        assert_eq!(p.get("PID-5.1"), "CAFÉ");
        assert_eq!(p.get("PID-5.2"), "L€O");
        // Latin-1 bytes in a message declared UTF-8: not valid UTF-8, a data type error.
        m = b"MSH|^~\\&|RIS|F|D|F|20240101||ORU^R01|42|P|2.5|||||FRA|UNICODE UTF-8\rPID|||CAF\xc9\r".to_vec();
        assert_eq!(Message::parse(&m).unwrap_err().code, ErrorCode::DataType);
        let e = Message::parse(b"PID|||1\r").unwrap_err();
        assert_eq!(
            (e.code, e.location.clone().unwrap().segment.as_str()),
            (ErrorCode::SegmentSequence, "MSH")
        );
        let e =
            Message::parse(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5|||||FRA|KLINGON\r").unwrap_err();
        assert_eq!(e.code, ErrorCode::TableValueNotFound);
        assert_eq!(e.location.clone().unwrap().field, 18);
        let e = Message::parse(b"MSH|^~\\&|A\rpid|x\r").unwrap_err();
        assert_eq!(e.code, ErrorCode::SegmentSequence);
        assert!(
            !e.message.contains('x') || e.message.contains("`pid"),
            "{e}"
        );
    }
}
