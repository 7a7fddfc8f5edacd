//! Reading the data phase of an association off its stream: P-DATA-TF PDUs taken apart here,
//! PDV by PDV, straight into one reusable buffer.
//!
//! dicom-ul's `receive` reads the socket 8 KiB at a time into a growing buffer, re-parses it
//! after every read, and copies each PDV's data out once more: two user-space copies and about
//! sixteen reads per 128 KiB PDU, a fifth of the receiver's CPU on large instances. Here a PDV's
//! data is read with one `read_exact` into a buffer that lives as long as the association, and
//! handed out as a slice. Any other PDU (release, abort, or one out of place) is read whole and
//! parsed by dicom-ul, so its meaning is decided in one place.
//!
//! Memory is bounded whatever the peer sends: a PDV longer than the buffer is handed out in
//! pieces, and a PDU other than P-DATA-TF longer than the negotiated maximum is refused.
//! Pure over `Read`: tested below on bytes written by dicom-ul's own PDU writer.

use std::io::{self, Read};

use dicom_ul::pdu::{self, Pdu};

/// P-DATA-TF (PS3.8 9.3.5).
const P_DATA_TF: u8 = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("reading from the peer: {0}")]
    Io(#[from] io::Error),
    #[error("{what} PDU of {length} bytes exceeds the maximum of {max}")]
    TooLarge {
        what: &'static str,
        length: u32,
        max: u32,
    },
    #[error("malformed PDU: {0}")]
    Malformed(String),
}

/// What the next read produced.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A piece of a PDV's data, now in `PduReader::data`. `last` is set on the final piece of
    /// a PDV whose message control header says "last fragment" of its command or data set.
    Pdv { pc: u8, command: bool, last: bool },
    /// Any PDU other than P-DATA-TF.
    Other(Pdu),
}

pub struct PduReader {
    max_pdu: u32,
    buf: Vec<u8>,
    len: usize,
    /// Bytes of the current P-DATA-TF not read yet.
    pdu_left: u64,
    /// The PDV being read: its context, kind, "last" bit and data bytes not read yet.
    pdv: Option<(u8, bool, bool, u64)>,
}

impl PduReader {
    /// `max_pdu`: the maximum PDU length this side announced; it also sizes the buffer.
    pub fn new(max_pdu: u32) -> PduReader {
        PduReader {
            max_pdu,
            buf: Vec::new(),
            len: 0,
            pdu_left: 0,
            pdv: None,
        }
    }

    /// The data of the last `Event::Pdv`.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn next<R: Read>(&mut self, r: &mut R) -> Result<Event, PduError> {
        self.len = 0;
        if self.pdv.is_none() && self.pdu_left == 0 {
            let mut header = [0u8; 6];
            read_header(r, &mut header)?;
            let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
            if header[0] != P_DATA_TF {
                return self.other(r, header, length);
            }
            if length == 0 {
                return Err(PduError::Malformed("P-DATA-TF without a PDV".into()));
            }
            self.pdu_left = u64::from(length);
        }
        if self.pdv.is_none() {
            if self.pdu_left < 6 {
                return Err(PduError::Malformed("PDV item header cut short".into()));
            }
            let mut item = [0u8; 6];
            r.read_exact(&mut item).map_err(eof_is_malformed)?;
            let item_len = u64::from(u32::from_be_bytes([item[0], item[1], item[2], item[3]]));
            if item_len < 2 || item_len + 4 > self.pdu_left {
                return Err(PduError::Malformed(format!(
                    "PDV item of {item_len} bytes in {} left of its PDU",
                    self.pdu_left - 4
                )));
            }
            self.pdu_left -= item_len + 4;
            let control = item[5];
            self.pdv = Some((
                item[4],
                control & 0x01 != 0,
                control & 0x02 != 0,
                item_len - 2,
            ));
        }
        let (pc, command, last, left) = self.pdv.expect("set above");
        let piece = left.min(self.capacity() as u64) as usize;
        if self.buf.len() < piece {
            self.buf.resize(piece, 0);
        }
        r.read_exact(&mut self.buf[..piece])
            .map_err(eof_is_malformed)?;
        self.len = piece;
        let left = left - piece as u64;
        if left == 0 {
            self.pdv = None;
            Ok(Event::Pdv { pc, command, last })
        } else {
            self.pdv = Some((pc, command, last, left));
            Ok(Event::Pdv {
                pc,
                command,
                last: false,
            })
        }
    }

    /// The largest piece of PDV data handed out at once.
    fn capacity(&self) -> usize {
        self.max_pdu.max(64 * 1024) as usize
    }

    fn other<R: Read>(
        &mut self,
        r: &mut R,
        header: [u8; 6],
        length: u32,
    ) -> Result<Event, PduError> {
        if length > self.max_pdu {
            return Err(PduError::TooLarge {
                what: pdu_name(header[0]),
                length,
                max: self.max_pdu,
            });
        }
        let mut whole = Vec::with_capacity(6 + length as usize);
        whole.extend_from_slice(&header);
        whole.resize(6 + length as usize, 0);
        r.read_exact(&mut whole[6..]).map_err(eof_is_malformed)?;
        let max = self
            .max_pdu
            .clamp(pdu::MINIMUM_PDU_SIZE, pdu::MAXIMUM_PDU_SIZE);
        match pdu::read_pdu(&whole[..], max, false) {
            Ok(Some(p)) => Ok(Event::Other(p)),
            Ok(None) => Err(PduError::Malformed(format!(
                "{} PDU cut short",
                pdu_name(header[0])
            ))),
            Err(e) => Err(PduError::Malformed(e.to_string())),
        }
    }
}

/// Reads a PDU header; the peer closing before its first byte is `Closed`, not an error.
fn read_header<R: Read>(r: &mut R, header: &mut [u8; 6]) -> Result<(), PduError> {
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(PduError::Closed),
            Ok(0) => return Err(PduError::Malformed("PDU header cut short".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PduError::Io(e)),
        }
    }
    Ok(())
}

fn eof_is_malformed(e: io::Error) -> PduError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        PduError::Malformed("connection closed inside a PDU".into())
    } else {
        PduError::Io(e)
    }
}

fn pdu_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "A-ASSOCIATE-RQ",
        0x02 => "A-ASSOCIATE-AC",
        0x03 => "A-ASSOCIATE-RJ",
        0x05 => "A-RELEASE-RQ",
        0x06 => "A-RELEASE-RP",
        0x07 => "A-ABORT",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{PDataValue, PDataValueType};

    fn wire(pdus: &[Pdu]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pdus {
            pdu::write_pdu(&mut out, p).unwrap();
        }
        out
    }

    fn pdv(pc: u8, value_type: PDataValueType, is_last: bool, data: Vec<u8>) -> PDataValue {
        PDataValue {
            presentation_context_id: pc,
            value_type,
            is_last,
            data,
        }
    }

    #[test]
    fn pdvs_come_out_in_order_with_their_bits_and_other_pdus_parsed() {
        let bytes = wire(&[
            Pdu::PData {
                data: vec![
                    pdv(1, PDataValueType::Command, true, vec![7; 90]),
                    pdv(1, PDataValueType::Data, false, vec![8; 1000]),
                ],
            },
            Pdu::PData {
                data: vec![pdv(3, PDataValueType::Data, true, vec![9; 5])],
            },
            Pdu::ReleaseRQ,
        ]);
        let mut r = PduReader::new(16 * 1024);
        let mut s = &bytes[..];
        let e = r.next(&mut s).unwrap();
        assert_eq!(
            e,
            Event::Pdv {
                pc: 1,
                command: true,
                last: true
            }
        );
        assert_eq!(r.data(), &[7; 90][..]);
        let e = r.next(&mut s).unwrap();
        assert_eq!(
            e,
            Event::Pdv {
                pc: 1,
                command: false,
                last: false
            }
        );
        assert_eq!(r.data(), &[8; 1000][..]);
        let e = r.next(&mut s).unwrap();
        assert_eq!(
            e,
            Event::Pdv {
                pc: 3,
                command: false,
                last: true
            }
        );
        assert_eq!(r.data(), &[9; 5][..]);
        assert_eq!(r.next(&mut s).unwrap(), Event::Other(Pdu::ReleaseRQ));
        assert!(matches!(r.next(&mut s), Err(PduError::Closed)));
    }

    #[test]
    fn a_pdv_longer_than_the_buffer_comes_in_pieces_and_only_the_end_is_last() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let bytes = wire(&[Pdu::PData {
            data: vec![pdv(5, PDataValueType::Data, true, data.clone())],
        }]);
        // 4 KiB announced: pieces of the 64 KiB floor.
        let mut r = PduReader::new(4096);
        let mut s = &bytes[..];
        let mut got = Vec::new();
        loop {
            let e = r.next(&mut s).unwrap();
            assert!(r.data().len() <= 64 * 1024);
            got.extend_from_slice(r.data());
            match e {
                Event::Pdv { last: true, .. } => break,
                Event::Pdv { pc: 5, .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn bad_framing_is_named_not_guessed() {
        let mut r = PduReader::new(16 * 1024);
        // A PDV item claiming more than its PDU holds.
        let bad = [4u8, 0, 0, 0, 0, 8, 0, 0, 0, 50, 1, 3, 0, 0];
        let e = r.next(&mut &bad[..]).unwrap_err();
        assert!(e.to_string().contains("PDV item of 50 bytes"), "{e}");
        // An empty P-DATA-TF.
        let mut r = PduReader::new(16 * 1024);
        let e = r.next(&mut &[4u8, 0, 0, 0, 0, 0][..]).unwrap_err();
        assert!(matches!(e, PduError::Malformed(_)), "{e}");
        // A release request claiming 1 MiB: refused before anything is read or allocated.
        let mut r = PduReader::new(16 * 1024);
        let e = r.next(&mut &[5u8, 0, 0, 0x10, 0, 0][..]).unwrap_err();
        assert!(
            e.to_string()
                .contains("A-RELEASE-RQ PDU of 1048576 bytes exceeds the maximum of 16384"),
            "{e}"
        );
        // The peer gone in the middle of a PDV.
        let mut bytes = wire(&[Pdu::PData {
            data: vec![pdv(1, PDataValueType::Data, true, vec![1; 100])],
        }]);
        bytes.truncate(40);
        let mut r = PduReader::new(16 * 1024);
        let e = r.next(&mut &bytes[..]).unwrap_err();
        assert!(e.to_string().contains("closed inside a PDU"), "{e}");
    }
}
