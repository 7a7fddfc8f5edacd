//! The body of a WADO-RS retrieve: `multipart/related; type="application/dicom"` (RFC 2387,
//! PS3.18 §8.7.3), sent with HTTP/1.1 chunked transfer coding so that a series of any size
//! streams from disk through one fixed buffer. Pure writers over any `Write`.

use std::io::{self, Write};

/// Chunk size: one TLS record's worth of plaintext is 16 KiB; four per chunk.
pub const CHUNK: usize = 64 * 1024;

/// HTTP/1.1 chunked transfer coding over `inner`: bytes are gathered into chunks of at most
/// [`CHUNK`]; [`Chunked::finish`] writes the last chunk.
pub struct Chunked<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Chunked<W> {
    pub fn new(inner: W) -> Chunked<W> {
        Chunked {
            inner,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        write!(self.inner, "{:x}\r\n", self.buf.len())?;
        self.inner.write_all(&self.buf)?;
        self.inner.write_all(b"\r\n")?;
        self.buf.clear();
        Ok(())
    }

    /// The last chunk (and no trailers); gives the inner writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit()?;
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

/// A boundary that cannot occur in the parts by chance (random, RFC 2046 characters only).
pub fn new_boundary(random: u128) -> String {
    format!("drimbox-{random:032x}")
}

/// The response's Content-Type: `start` names the first part, `transfer-syntax` is given when
/// every part has the same one (the agency's validator reads it there).
pub fn content_type(boundary: &str, first_part_id: &str, transfer_syntax: Option<&str>) -> String {
    let ts = transfer_syntax.map_or(String::new(), |t| format!(";transfer-syntax={t}"));
    format!(
        "multipart/related;start=\"<{first_part_id}>\"{ts};type=\"application/dicom\"; boundary={boundary}"
    )
}

/// Writes one part's head (the DICOM bytes follow, then [`part_end`]).
pub fn part_head(
    w: &mut impl Write,
    boundary: &str,
    content_id: &str,
    transfer_syntax: &str,
    length: u64,
) -> io::Result<()> {
    write!(
        w,
        "--{boundary}\r\nContent-Type: application/dicom;transfer-syntax={transfer_syntax}\r\n\
         Content-ID: <{content_id}>\r\nContent-Length: {length}\r\n\r\n"
    )
}

pub fn part_end(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"\r\n")
}

pub fn close(w: &mut impl Write, boundary: &str) -> io::Result<()> {
    write!(w, "--{boundary}--\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stream_through_chunks_and_decode_back() {
        let boundary = new_boundary(7);
        let big = vec![0x5au8; CHUNK * 2 + 10];
        let mut head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut body = Chunked::new(Vec::new());
        for (i, data) in [&b"DICM-one"[..], &big[..]].iter().enumerate() {
            part_head(
                &mut body,
                &boundary,
                &format!("{i}@drimbox"),
                "1.2.840.10008.1.2.1",
                data.len() as u64,
            )
            .unwrap();
            body.write_all(data).unwrap();
            part_end(&mut body).unwrap();
        }
        close(&mut body, &boundary).unwrap();
        head.extend(body.finish().unwrap());
        let m = crate::dmp::http::read_message(&mut &head[..]).unwrap();
        let text = m.body;
        let sep = format!("--{boundary}");
        let starts: Vec<usize> = (0..text.len().saturating_sub(sep.len()))
            .filter(|&i| text[i..].starts_with(sep.as_bytes()))
            .collect();
        let parts: Vec<&[u8]> = starts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        assert_eq!(parts.len(), 2);
        let second = parts[1];
        let at = second.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&second[at..second.len() - 2], &big[..]);
        assert!(text.ends_with(format!("--{boundary}--\r\n").as_bytes()));
        assert!(content_type(&boundary, "0@drimbox", Some("1.2.840.10008.1.2.1"))
            .starts_with("multipart/related;start=\"<0@drimbox>\";transfer-syntax=1.2.840.10008.1.2.1;type=\"application/dicom\"; boundary=drimbox-"));
    }
}
