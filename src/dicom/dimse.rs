//! DIMSE command sets (PS3.7 9.3, E): the small flat Implicit VR Little Endian group 0000 that
//! heads every message. Decoded and encoded here directly: it has no sequences, and the receiver
//! handles one per instance, so it should cost nothing.

use std::collections::BTreeMap;

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
pub const NO_DATA_SET: u16 = 0x0101;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// DIMSE status codes the receiver answers with (PS3.4 B.2.3, PS3.7 C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP Class not supported (command and presentation context disagree).
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Refused: out of resources (disk full, quota, I/O error, archive unavailable).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP Class (here: UIDs differ from the command).
    pub const DATASET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand (unparseable data set, missing UIDs).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// A decoded command set: element number (group 0000) → raw value.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Command {
    elements: BTreeMap<u16, Vec<u8>>,
}

impl Command {
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        let mut elements = BTreeMap::new();
        let mut at = 0;
        while at < bytes.len() {
            let head = bytes.get(at..at + 8).ok_or(CommandError::Truncated(at))?;
            let group = u16::from_le_bytes([head[0], head[1]]);
            let elem = u16::from_le_bytes([head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let start = at + 8;
            let value = bytes
                .get(start..start.checked_add(len).ok_or(CommandError::Truncated(at))?)
                .ok_or(CommandError::Truncated(at))?;
            if group == 0x0000 {
                elements.insert(elem, value.to_vec());
            }
            at = start + len;
        }
        Ok(Command { elements })
    }

    fn u16(&self, elem: u16) -> Option<u16> {
        let v = self.elements.get(&elem)?;
        Some(u16::from_le_bytes([*v.first()?, *v.get(1)?]))
    }

    fn uid(&self, elem: u16) -> Option<String> {
        let v = self.elements.get(&elem)?;
        let s = String::from_utf8_lossy(v);
        let s = s.trim_end_matches(['\0', ' ']);
        Some(s.to_string())
    }

    pub fn command_field(&self) -> Result<u16, CommandError> {
        self.u16(0x0100)
            .ok_or(CommandError::Missing("CommandField"))
    }
    pub fn message_id(&self) -> Result<u16, CommandError> {
        self.u16(0x0110).ok_or(CommandError::Missing("MessageID"))
    }
    pub fn affected_sop_class(&self) -> Option<String> {
        self.uid(0x0002)
    }
    pub fn affected_sop_instance(&self) -> Option<String> {
        self.uid(0x1000)
    }
    /// Status (0000,0900) of a response.
    pub fn status(&self) -> Option<u16> {
        self.u16(0x0900)
    }
    pub fn has_data_set(&self) -> bool {
        self.u16(0x0800).is_some_and(|v| v != NO_DATA_SET)
    }
}

/// Builds a response command set (no data set follows).
pub struct Response<'a> {
    pub command_field: u16,
    pub message_id_responded: u16,
    pub sop_class: &'a str,
    pub sop_instance: Option<&'a str>,
    pub status: u16,
    /// Error Comment (0000,0902), LO: at most 64 characters, shown by most SCUs.
    pub error_comment: Option<&'a str>,
}

impl Response<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(160);
        put(&mut body, 0x0002, &uid_bytes(self.sop_class));
        put(&mut body, 0x0100, &self.command_field.to_le_bytes());
        put(&mut body, 0x0120, &self.message_id_responded.to_le_bytes());
        put(&mut body, 0x0800, &NO_DATA_SET.to_le_bytes());
        put(&mut body, 0x0900, &self.status.to_le_bytes());
        if let Some(c) = self.error_comment {
            let mut c: String = c
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
                .take(64)
                .collect();
            if c.len() % 2 == 1 {
                c.push(' ');
            }
            put(&mut body, 0x0902, c.as_bytes());
        }
        if let Some(i) = self.sop_instance {
            put(&mut body, 0x1000, &uid_bytes(i));
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        put(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// A C-ECHO-RQ command set (the box's own self-test is its only user: the box is an SCP).
pub fn echo_request(message_id: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    put(&mut body, 0x0002, &uid_bytes(VERIFICATION));
    put(&mut body, 0x0100, &C_ECHO_RQ.to_le_bytes());
    put(&mut body, 0x0110, &message_id.to_le_bytes());
    put(&mut body, 0x0800, &NO_DATA_SET.to_le_bytes());
    let mut out = Vec::with_capacity(body.len() + 12);
    put(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn uid_bytes(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

fn put(out: &mut Vec<u8>, elem: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_decodes_back() {
        let c = Command::decode(&echo_request(42)).unwrap();
        assert_eq!(c.command_field(), Ok(C_ECHO_RQ));
        assert_eq!(c.message_id(), Ok(42));
        assert_eq!(c.affected_sop_class().as_deref(), Some(VERIFICATION));
        assert!(!c.has_data_set());
        assert_eq!(c.status(), None);
    }

    #[test]
    fn response_decodes_back() {
        let bytes = Response {
            command_field: C_ECHO_RSP,
            message_id_responded: 7,
            sop_class: VERIFICATION,
            sop_instance: None,
            status: status::SUCCESS,
            error_comment: Some("odd"),
        }
        .encode();
        let c = Command::decode(&bytes).unwrap();
        assert_eq!(c.command_field().unwrap(), C_ECHO_RSP);
        assert_eq!(c.u16(0x0120), Some(7));
        assert_eq!(c.affected_sop_class().unwrap(), VERIFICATION);
        assert!(!c.has_data_set());
        // group length counts every following byte
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(len + 12, bytes.len());
    }

    #[test]
    fn truncated_command_is_an_error() {
        let bytes = Response {
            command_field: C_STORE_RSP,
            message_id_responded: 1,
            sop_class: "1.2",
            sop_instance: Some("1.2.3"),
            status: 0,
            error_comment: None,
        }
        .encode();
        assert!(matches!(
            Command::decode(&bytes[..bytes.len() - 3]),
            Err(CommandError::Truncated(_))
        ));
        assert_eq!(
            Command::decode(&[]).unwrap().command_field(),
            Err(CommandError::Missing("CommandField"))
        );
    }
}
