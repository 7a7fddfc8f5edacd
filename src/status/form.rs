//! A streaming reader of `multipart/form-data` bodies (RFC 7578), for the update form: the
//! file part goes straight to a sink as it arrives (a bundle is hundreds of MiB; memory stays
//! at one read buffer), the other fields are kept if small.
//!
//! Pure over `Read`/`Write`: no socket, no file.

use std::io::{self, Read, Write};

/// Longest part header block we read.
const MAX_PART_HEAD: usize = 8 * 1024;
/// Longest value of a field other than the file.
const MAX_FIELD: usize = 1024;
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("the form ends before its closing boundary")]
    Truncated,
    #[error("malformed form: {0}")]
    Malformed(&'static str),
    #[error("form field `{0}` is too long")]
    FieldTooLong(String),
    #[error("the form carries the file twice")]
    TwoFiles,
    #[error("reading the form: {0}")]
    Read(io::Error),
    #[error("storing the file: {0}")]
    Sink(io::Error),
}

/// What a form held besides the file.
#[derive(Debug, Default, PartialEq)]
pub struct Form {
    pub fields: Vec<(String, String)>,
    /// Bytes of the file part; None: the form had none.
    pub file_bytes: Option<u64>,
}

impl Form {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The boundary of a `multipart/form-data` content type; None for any other type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/form-data")
    {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let v = v.trim().trim_matches('"');
        (k.trim().eq_ignore_ascii_case("boundary") && !v.is_empty() && v.len() <= 70)
            .then(|| v.to_string())
    })
}

/// Reads a whole form from `body`, writing the part named `file_field` to `sink`.
pub fn read<R: Read, W: Write>(
    mut body: R,
    boundary: &str,
    file_field: &str,
    sink: &mut W,
) -> Result<Form, FormError> {
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    // The first delimiter has no CRLF before it: pretend one, so one pattern finds them all.
    let mut buf: Vec<u8> = b"\r\n".to_vec();
    let mut form = Form::default();
    // The preamble, ignored.
    until(&mut body, &mut buf, &delimiter, &mut |_| Ok(()))?;
    loop {
        while buf.len() < 2 {
            if !fill(&mut body, &mut buf)? {
                return Err(FormError::Truncated);
            }
        }
        if buf.starts_with(b"--") {
            // The closing delimiter; the epilogue is ignored.
            return Ok(form);
        }
        if !buf.starts_with(b"\r\n") {
            return Err(FormError::Malformed("no line break after a boundary"));
        }
        let mut head = Vec::new();
        until(&mut body, &mut buf, b"\r\n\r\n", &mut |b| {
            head.extend_from_slice(b);
            if head.len() > MAX_PART_HEAD {
                return Err(FormError::Malformed("part headers too long"));
            }
            Ok(())
        })?;
        let name = part_name(&String::from_utf8_lossy(&head))
            .ok_or(FormError::Malformed("a part without a form-data name"))?;
        if name == file_field {
            if form.file_bytes.is_some() {
                return Err(FormError::TwoFiles);
            }
            let mut n = 0u64;
            until(&mut body, &mut buf, &delimiter, &mut |b| {
                n += b.len() as u64;
                sink.write_all(b).map_err(FormError::Sink)
            })?;
            form.file_bytes = Some(n);
        } else {
            let mut value = Vec::new();
            until(&mut body, &mut buf, &delimiter, &mut |b| {
                value.extend_from_slice(b);
                if value.len() > MAX_FIELD {
                    return Err(FormError::FieldTooLong(name.clone()));
                }
                Ok(())
            })?;
            form.fields
                .push((name, String::from_utf8_lossy(&value).into_owned()));
        }
    }
}

/// Reads more of the body into `buf` (up to one chunk); false at its end.
fn fill<R: Read>(body: &mut R, buf: &mut Vec<u8>) -> Result<bool, FormError> {
    let n = body
        .by_ref()
        .take(CHUNK as u64)
        .read_to_end(buf)
        .map_err(FormError::Read)?;
    Ok(n > 0)
}

/// Passes everything before the next `pattern` to `emit` and consumes the pattern. Bytes that
/// could be the start of the pattern are held back until the next read decides.
fn until<R: Read>(
    body: &mut R,
    buf: &mut Vec<u8>,
    pattern: &[u8],
    emit: &mut dyn FnMut(&[u8]) -> Result<(), FormError>,
) -> Result<(), FormError> {
    loop {
        if let Some(i) = find(buf, pattern) {
            emit(&buf[..i])?;
            buf.drain(..i + pattern.len());
            return Ok(());
        }
        let keep = pattern.len() - 1;
        if buf.len() > keep {
            let n = buf.len() - keep;
            emit(&buf[..n])?;
            buf.drain(..n);
        }
        if !fill(body, buf)? {
            return Err(FormError::Truncated);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from + hay[from..].iter().position(|&b| b == first)?;
        if hay.len() - i < needle.len() {
            return None;
        }
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// The `name` parameter of a part's `Content-Disposition: form-data` header.
fn part_name(head: &str) -> Option<String> {
    let line = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(v)
    })?;
    let mut params = line.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("name")).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `n` bytes per read: every split of the delimiters gets exercised.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A body as Chromium and curl send one.
    fn body(file: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"reboot\"\r\n\r\non");
        b.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"u.raucb\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        b.extend_from_slice(file);
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    }

    #[test]
    fn the_file_streams_out_byte_for_byte_whatever_the_read_sizes() {
        // A file full of near-delimiters: CRLFs, dashes, most of the boundary (a sender picks a
        // boundary that is not in the file, RFC 2046).
        let mut file = Vec::new();
        for i in 0..3000u32 {
            file.extend_from_slice(b"\r\n--XyY");
            file.extend_from_slice(&i.to_le_bytes());
            file.extend_from_slice(b"\r\n-\r\r\n--Xy");
        }
        file.extend_from_slice(b"\r\n");
        let b = body(&file);
        for n in [1, 2, 7, 64, 4096, 1 << 20] {
            let mut out = Vec::new();
            let form = read(Trickle(&b, n), "XyZ", "bundle", &mut out).unwrap();
            assert_eq!(out, file, "read size {n}");
            assert_eq!(form.file_bytes, Some(file.len() as u64));
            assert_eq!(form.field("reboot"), Some("on"));
        }
        // An empty file, and a form with no file.
        let mut out = Vec::new();
        assert_eq!(
            read(&body(b"")[..], "XyZ", "bundle", &mut out)
                .unwrap()
                .file_bytes,
            Some(0)
        );
        let f = read(
            &b"--XyZ\r\nContent-Disposition: form-data; name=\"reboot\"\r\n\r\non\r\n--XyZ--"[..],
            "XyZ",
            "bundle",
            &mut out,
        )
        .unwrap();
        assert_eq!(f.file_bytes, None);
    }

    #[test]
    fn broken_forms_are_named() {
        let b = body(b"payload");
        let mut out = Vec::new();
        // Cut anywhere before the closing delimiter.
        for cut in [0, 5, 40, b.len() - 12] {
            assert!(
                matches!(
                    read(&b[..cut], "XyZ", "bundle", &mut out),
                    Err(FormError::Truncated)
                ),
                "cut at {cut}"
            );
        }
        let long = format!(
            "--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{}\r\n--B--",
            "x".repeat(2000)
        );
        assert!(matches!(
            read(long.as_bytes(), "B", "bundle", &mut out),
            Err(FormError::FieldTooLong(n)) if n == "note"
        ));
        let twice = b"--B\r\nContent-Disposition: form-data; name=\"bundle\"\r\n\r\na\r\n--B\r\nContent-Disposition: form-data; name=\"bundle\"\r\n\r\nb\r\n--B--";
        assert!(matches!(
            read(&twice[..], "B", "bundle", &mut out),
            Err(FormError::TwoFiles)
        ));
        let nameless = b"--B\r\nContent-Type: text/plain\r\n\r\na\r\n--B--";
        assert!(matches!(
            read(&nameless[..], "B", "bundle", &mut out),
            Err(FormError::Malformed(_))
        ));
        // A sink that fails (disk full) is named as such.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            read(&b[..], "XyZ", "bundle", &mut Full),
            Err(FormError::Sink(_))
        ));
    }

    #[test]
    fn boundaries_come_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=----WebKitFormBoundaryAbC").as_deref(),
            Some("----WebKitFormBoundaryAbC")
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("application/octet-stream; boundary=x"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
    }
}
