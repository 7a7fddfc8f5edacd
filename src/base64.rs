//! Base64 (RFC 4648, standard alphabet, padding) for the payloads the box reads and writes: the
//! CDA in OBX-5, and later the XML signature values. Decoding skips the line breaks and spaces
//! that senders fold long values with; anything else that is not of the alphabet is an error.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base64Error {
    #[error("byte {0:#04x} at offset {1} is not base64")]
    Invalid(u8, usize),
    #[error("base64 text ends in the middle of a group")]
    Truncated,
}

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(ALPHABET[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn decode(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    let mut padding = 0;
    let mut seen = 0usize;
    for (at, &b) in text.iter().enumerate() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                seen += 1;
                continue;
            }
            b'\r' | b'\n' | b' ' | b'\t' => continue,
            other => return Err(Base64Error::Invalid(other, at)),
        };
        if padding > 0 {
            return Err(Base64Error::Invalid(b, at));
        }
        seen += 1;
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if !seen.is_multiple_of(4) || padding > 2 {
        return Err(Base64Error::Truncated);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_and_errors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(decode(b"Zm9v\r\nYmFy").unwrap(), b"foobar");
        assert_eq!(decode(b"Zm9"), Err(Base64Error::Truncated));
        assert_eq!(decode(b"Zm9v!"), Err(Base64Error::Invalid(b'!', 4)));
        assert!(decode(b"Zg==Zg==").is_err());
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(encode(&all).as_bytes()).unwrap(), all);
    }
}
