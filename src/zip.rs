//! A minimal ZIP writer (stored entries, no compression) for the XDM export.
//!
//! XDM media are read by every operating system's unzip; stored entries are the simplest form
//! they all read, the files (a KOS, XML) are small, and nothing here needs a dependency. The
//! format is PKWARE APPNOTE 4.3 local headers, central directory and end record; entries get
//! a fixed DOS timestamp so the same lots give the same archive.

/// CRC-32 (IEEE 802.3, reflected, as ZIP uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    #[error("entry {0} is larger than a ZIP without ZIP64 holds")]
    TooLarge(String),
}

/// Builds a ZIP archive of `(path inside the archive, bytes)`, in the given order.
pub fn write(
    entries: &[(String, Vec<u8>)],
    dos_date: u16,
    dos_time: u16,
) -> Result<Vec<u8>, ZipError> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = u32::try_from(out.len()).map_err(|_| ZipError::TooLarge(name.clone()))?;
        let size = u32::try_from(data.len()).map_err(|_| ZipError::TooLarge(name.clone()))?;
        let crc = crc32(data);
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // made by: 2.0
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // needed: 2.0
            h.extend_from_slice(&0x0800u16.to_le_bytes()); // names are UTF-8
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&dos_time.to_le_bytes());
            h.extend_from_slice(&dos_date.to_le_bytes());
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            if central {
                h.extend_from_slice(&0u16.to_le_bytes()); // comment
                h.extend_from_slice(&0u16.to_le_bytes()); // disk
                h.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
                h.extend_from_slice(&(0o100644u32 << 16).to_le_bytes()); // external: rw-r--r--
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend_from_slice(&header(0x0403_4B50, false));
        out.extend_from_slice(data);
        central.extend_from_slice(&header(0x0201_4B50, true));
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4B50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // disk numbers
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

/// DOS date and time fields of a `YYYYMMDDHHMMSS` string.
pub fn dos_datetime(ts: &str) -> (u16, u16) {
    let n = |a: usize, b: usize| {
        ts.get(a..b)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0)
    };
    let year = n(0, 4).max(1980);
    let date = ((year - 1980) << 9) | (n(4, 6).max(1) << 5) | n(6, 8).max(1);
    let time = (n(8, 10) << 11) | (n(10, 12) << 5) | (n(12, 14) / 2);
    (date, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_the_standard_check_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn layout_of_one_entry() {
        let z = write(&[("A.TXT".into(), b"hi".to_vec())], 0x5821, 0).unwrap();
        assert_eq!(&z[0..4], b"PK\x03\x04");
        // local header 30 + name 5 + data 2, central 46 + 5, end 22
        assert_eq!(z.len(), 37 + 51 + 22);
        assert_eq!(&z[z.len() - 22..z.len() - 18], b"PK\x05\x06");
    }
}
