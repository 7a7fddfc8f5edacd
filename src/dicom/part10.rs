//! DICOM Part 10 file framing: the preamble and File Meta Information we put in front of the data
//! set bytes exactly as received (PS3.10 7.1). Written by hand because it is a handful of fixed
//! elements and must be deterministic: same inputs, same bytes.

/// Our implementation class UID (a UUID-derived root, PS3.5 B.2) and version name.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.7670796673195112447343960543331193112";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("DRIMBOX_", env!("CARGO_PKG_VERSION"));

/// Preamble, `DICM` and the file meta group for an instance.
pub fn file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
    source_ae: &str,
) -> Vec<u8> {
    let mut group = Vec::with_capacity(256);
    element(&mut group, 0x0001, b"OB", &[0x00, 0x01]);
    element(&mut group, 0x0002, b"UI", &pad_uid(sop_class_uid));
    element(&mut group, 0x0003, b"UI", &pad_uid(sop_instance_uid));
    element(&mut group, 0x0010, b"UI", &pad_uid(transfer_syntax));
    element(
        &mut group,
        0x0012,
        b"UI",
        &pad_uid(IMPLEMENTATION_CLASS_UID),
    );
    element(
        &mut group,
        0x0013,
        b"SH",
        &pad_text(IMPLEMENTATION_VERSION_NAME),
    );
    let ae = source_ae.trim();
    if !ae.is_empty() {
        element(&mut group, 0x0016, b"AE", &pad_text(ae));
    }
    let mut out = Vec::with_capacity(132 + 12 + group.len());
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    element(&mut out, 0x0000, b"UL", &(group.len() as u32).to_le_bytes());
    out.extend_from_slice(&group);
    out
}

/// Explicit VR little endian element of group 0002.
fn element(out: &mut Vec<u8>, elem: u16, vr: &[u8; 2], value: &[u8]) {
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if vr == b"OB" {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
}

fn pad_uid(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

fn pad_text(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_even_and_deterministic() {
        let a = file_meta(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3",
            "1.2.840.10008.1.2",
            "SCU",
        );
        let b = file_meta(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3",
            "1.2.840.10008.1.2",
            "SCU",
        );
        assert_eq!(a, b);
        assert_eq!(&a[128..132], b"DICM");
        assert_eq!(a.len() % 2, 0);
        let group_len = u32::from_le_bytes(a[140..144].try_into().unwrap()) as usize;
        assert_eq!(144 + group_len, a.len());
    }
}
