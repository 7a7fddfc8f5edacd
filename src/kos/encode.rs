//! A small, deterministic DICOM Part 10 writer for the one object the box creates: the KOS.
//!
//! The KOS is encoded in Implicit VR Little Endian like every agency sample, and its bytes are
//! hashed into the XDS metadata and the lot signature, so they must be exactly reproducible for
//! given inputs. A generic writer would decide padding, lengths and text encoding for us; this
//! one is ~150 lines we can reason about: elements sorted by tag, even lengths (UI padded with
//! NUL, text with space), sequences and items with explicit lengths, text encoded in the
//! character set the builder chose.

/// The value representations the KOS uses (only the padding and the meta header depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vr {
    Ae,
    Cs,
    Da,
    Is,
    Lo,
    Lt,
    Ob,
    Pn,
    Sh,
    Sq,
    Tm,
    Ui,
    Ul,
    Ur,
    Us,
    Ut,
}

impl Vr {
    fn code(self) -> &'static [u8; 2] {
        match self {
            Vr::Ae => b"AE",
            Vr::Cs => b"CS",
            Vr::Da => b"DA",
            Vr::Is => b"IS",
            Vr::Lo => b"LO",
            Vr::Lt => b"LT",
            Vr::Ob => b"OB",
            Vr::Pn => b"PN",
            Vr::Sh => b"SH",
            Vr::Sq => b"SQ",
            Vr::Tm => b"TM",
            Vr::Ui => b"UI",
            Vr::Ul => b"UL",
            Vr::Ur => b"UR",
            Vr::Us => b"US",
            Vr::Ut => b"UT",
        }
    }

    /// VRs with a 4-byte length in Explicit VR (PS3.5 7.1.2).
    fn long_length(self) -> bool {
        matches!(self, Vr::Ob | Vr::Sq | Vr::Ur | Vr::Ut)
    }

    fn pad(self) -> u8 {
        match self {
            Vr::Ui | Vr::Ob => 0,
            _ => b' ',
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Already encoded bytes (text in the data set's character set, or binary).
    Bytes(Vec<u8>),
    Items(Vec<DataSet>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub tag: (u16, u16),
    pub vr: Vr,
    pub value: Value,
}

/// Elements of one data set or item; written in ascending tag order whatever the insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSet {
    elements: Vec<Element>,
}

impl DataSet {
    pub fn new() -> DataSet {
        DataSet::default()
    }

    pub fn put(&mut self, tag: (u16, u16), vr: Vr, value: impl Into<Vec<u8>>) -> &mut Self {
        self.elements.push(Element {
            tag,
            vr,
            value: Value::Bytes(value.into()),
        });
        self
    }

    pub fn seq(&mut self, tag: (u16, u16), items: Vec<DataSet>) -> &mut Self {
        self.elements.push(Element {
            tag,
            vr: Vr::Sq,
            value: Value::Items(items),
        });
        self
    }

    fn sorted(&self) -> Vec<&Element> {
        let mut v: Vec<&Element> = self.elements.iter().collect();
        v.sort_by_key(|e| e.tag);
        v
    }

    /// Encoded length in Implicit VR LE.
    fn implicit_len(&self) -> usize {
        self.elements.iter().map(element_len).sum()
    }

    /// Implicit VR Little Endian encoding.
    pub fn write_implicit(&self, out: &mut Vec<u8>) {
        for e in self.sorted() {
            out.extend_from_slice(&e.tag.0.to_le_bytes());
            out.extend_from_slice(&e.tag.1.to_le_bytes());
            match &e.value {
                Value::Bytes(b) => {
                    let len = b.len() + b.len() % 2;
                    out.extend_from_slice(&(len as u32).to_le_bytes());
                    out.extend_from_slice(b);
                    if b.len() % 2 == 1 {
                        out.push(e.vr.pad());
                    }
                }
                Value::Items(items) => {
                    out.extend_from_slice(&(items_len(items) as u32).to_le_bytes());
                    for item in items {
                        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
                        out.extend_from_slice(&(item.implicit_len() as u32).to_le_bytes());
                        item.write_implicit(out);
                    }
                }
            }
        }
    }

    /// Explicit VR Little Endian encoding, for the file meta group (no sequences there).
    fn write_explicit(&self, out: &mut Vec<u8>) {
        for e in self.sorted() {
            let Value::Bytes(b) = &e.value else {
                continue;
            };
            let len = b.len() + b.len() % 2;
            out.extend_from_slice(&e.tag.0.to_le_bytes());
            out.extend_from_slice(&e.tag.1.to_le_bytes());
            out.extend_from_slice(e.vr.code());
            if e.vr.long_length() {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&(len as u32).to_le_bytes());
            } else {
                out.extend_from_slice(&(len as u16).to_le_bytes());
            }
            out.extend_from_slice(b);
            if b.len() % 2 == 1 {
                out.push(e.vr.pad());
            }
        }
    }
}

fn element_len(e: &Element) -> usize {
    8 + match &e.value {
        Value::Bytes(b) => b.len() + b.len() % 2,
        Value::Items(items) => items_len(items),
    }
}

fn items_len(items: &[DataSet]) -> usize {
    items.iter().map(|i| 8 + i.implicit_len()).sum()
}

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// A Part 10 file: preamble, `DICM`, the file meta group (Explicit VR LE, with its group length)
/// and the data set in Implicit VR LE.
pub fn part10(
    dataset: &DataSet,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    implementation_class_uid: &str,
    implementation_version: &str,
) -> Vec<u8> {
    let mut meta = DataSet::new();
    meta.put((0x0002, 0x0001), Vr::Ob, vec![0u8, 1])
        .put((0x0002, 0x0002), Vr::Ui, sop_class_uid)
        .put((0x0002, 0x0003), Vr::Ui, sop_instance_uid)
        .put((0x0002, 0x0010), Vr::Ui, IMPLICIT_VR_LE)
        .put((0x0002, 0x0012), Vr::Ui, implementation_class_uid)
        .put((0x0002, 0x0013), Vr::Sh, implementation_version);
    let mut meta_bytes = Vec::new();
    meta.write_explicit(&mut meta_bytes);

    let mut out = Vec::with_capacity(256 + meta_bytes.len() + dataset.implicit_len());
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    let mut group_length = DataSet::new();
    group_length.put(
        (0x0002, 0x0000),
        Vr::Ul,
        (meta_bytes.len() as u32).to_le_bytes().to_vec(),
    );
    group_length.write_explicit(&mut out);
    out.extend_from_slice(&meta_bytes);
    dataset.write_implicit(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_padded_and_with_exact_lengths() {
        let mut item = DataSet::new();
        item.put((0x0008, 0x0100), Vr::Sh, "113030");
        let mut ds = DataSet::new();
        ds.seq((0x0040, 0xA043), vec![item])
            .put((0x0008, 0x0018), Vr::Ui, "1.2.3")
            .put((0x0008, 0x0060), Vr::Cs, "KO");
        let mut out = Vec::new();
        ds.write_implicit(&mut out);
        let expect: Vec<u8> = [
            &[0x08, 0x00, 0x18, 0x00, 6, 0, 0, 0][..],
            b"1.2.3\0",
            &[0x08, 0x00, 0x60, 0x00, 2, 0, 0, 0],
            b"KO",
            &[0x40, 0x00, 0x43, 0xA0, 22, 0, 0, 0],
            &[0xFE, 0xFF, 0x00, 0xE0, 14, 0, 0, 0],
            &[0x08, 0x00, 0x00, 0x01, 6, 0, 0, 0],
            b"113030",
        ]
        .concat();
        assert_eq!(out, expect);
    }
}
