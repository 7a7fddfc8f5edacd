//! MTOM/XOP packaging (multipart/related, RFC 2387 + XOP) of the ITI-41 request, and its reading
//! on the simulator's side and for the DMP's answers.
//!
//! What we send: CRLF line ends everywhere, the SOAP envelope as the root part
//! (`application/xop+xml`), every document as a raw binary part, lengths in bytes (DRIM-M §2.4
//! lists the reference implementation's quirks we avoid). What we read: the same, and — because
//! the DMP's published answer lost its header line breaks and other peers use bare LF — bare LF
//! line ends too.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Without the angle brackets.
    pub content_id: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MtomError {
    #[error("Content-Type has no boundary parameter")]
    NoBoundary,
    #[error("the body has no part delimited by the boundary")]
    NoParts,
    #[error("part {0} has no header/body separator")]
    NoSeparator(usize),
    #[error("part {part}: content transfer encoding {encoding} is not supported")]
    Encoding { part: usize, encoding: String },
    #[error("part {0}: base64 body cannot be decoded")]
    Base64(usize),
    #[error("the root part (start={0}) is missing")]
    NoRoot(String),
}

/// A parsed multipart/related message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multipart {
    pub parts: Vec<Part>,
    /// The `start` parameter (the root part's Content-ID), if given.
    pub start: Option<String>,
}

impl Multipart {
    /// The root part: the one `start` names, else the first.
    pub fn root(&self) -> Result<&Part, MtomError> {
        match &self.start {
            Some(id) => self
                .parts
                .iter()
                .find(|p| &p.content_id == id)
                .ok_or_else(|| MtomError::NoRoot(id.clone())),
            None => self.parts.first().ok_or(MtomError::NoParts),
        }
    }

    /// The part an `xop:Include href="cid:…"` names.
    pub fn by_cid(&self, href: &str) -> Option<&Part> {
        let id = href.strip_prefix("cid:").unwrap_or(href);
        self.parts.iter().find(|p| p.content_id == id)
    }
}

/// The HTTP Content-Type of an MTOM request whose root is a SOAP 1.2 envelope.
pub fn content_type(boundary: &str, root_id: &str, action: &str) -> String {
    format!(
        "multipart/related; boundary=\"{boundary}\"; type=\"application/xop+xml\"; \
         start=\"<{root_id}>\"; start-info=\"application/soap+xml\"; action=\"{action}\""
    )
}

/// The body: the root envelope, then each attachment, CRLF-delimited, binary as is.
pub fn build(boundary: &str, root: &Part, action: &str, attachments: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut part = |headers: String, body: &[u8]| {
        out.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n").as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    };
    part(
        format!(
            "Content-Type: application/xop+xml; charset=UTF-8; type=\"application/soap+xml\"; action=\"{action}\"\r\n\
             Content-Transfer-Encoding: binary\r\nContent-ID: <{}>\r\n",
            root.content_id
        ),
        &root.body,
    );
    for a in attachments {
        part(
            format!(
                "Content-Type: {}\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{}>\r\n",
                a.content_type, a.content_id
            ),
            &a.body,
        );
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// A parameter of a header value (`boundary="…"`, `start=<…>`), unquoted.
pub fn parameter(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(name) {
            return None;
        }
        Some(v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parses a multipart/related body given its Content-Type.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Multipart, MtomError> {
    let boundary = parameter(content_type, "boundary").ok_or(MtomError::NoBoundary)?;
    let start = parameter(content_type, "start")
        .map(|s| s.trim_start_matches('<').trim_end_matches('>').to_string());
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let mut positions = Vec::new();
    let mut at = 0;
    while let Some(i) = find(body, d, at) {
        positions.push(i);
        at = i + d.len();
    }
    if positions.len() < 2 {
        return Err(MtomError::NoParts);
    }
    let mut parts = Vec::new();
    for (n, w) in positions.windows(2).enumerate() {
        let mut s = w[0] + d.len();
        // The rest of the delimiter line.
        while s < w[1] && (body[s] == b' ' || body[s] == b'\t') {
            s += 1;
        }
        if body.get(s) == Some(&b'\r') {
            s += 1;
        }
        if body.get(s) == Some(&b'\n') {
            s += 1;
        }
        let mut e = w[1];
        // The line break before the next delimiter belongs to the delimiter.
        if e > s && body[e - 1] == b'\n' {
            e -= 1;
            if e > s && body[e - 1] == b'\r' {
                e -= 1;
            }
        }
        let chunk = &body[s..e];
        let (head_end, body_start) = match find(chunk, b"\r\n\r\n", 0) {
            Some(i) => (i, i + 4),
            None => match find(chunk, b"\n\n", 0) {
                Some(i) => (i, i + 2),
                None => return Err(MtomError::NoSeparator(n)),
            },
        };
        let head = String::from_utf8_lossy(&chunk[..head_end]);
        let mut content_id = String::new();
        let mut ctype = String::new();
        let mut encoding = String::from("binary");
        for line in head.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-id" => {
                    content_id = v.trim_start_matches('<').trim_end_matches('>').to_string()
                }
                "content-type" => ctype = v.to_string(),
                "content-transfer-encoding" => encoding = v.to_ascii_lowercase(),
                _ => {}
            }
        }
        let raw = &chunk[body_start..];
        let body = match encoding.as_str() {
            "binary" | "8bit" | "7bit" => raw.to_vec(),
            "base64" => {
                let text: Vec<u8> = raw
                    .iter()
                    .copied()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                crate::base64::decode(&text).map_err(|_| MtomError::Base64(n))?
            }
            other => {
                return Err(MtomError::Encoding {
                    part: n,
                    encoding: other.to_string(),
                })
            }
        };
        parts.push(Part {
            content_id,
            content_type: ctype,
            body,
        });
    }
    Ok(Multipart { parts, start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_messages_parse_back_byte_for_byte() {
        let root = Part {
            content_id: "root@drimbox".into(),
            content_type: "application/xop+xml".into(),
            body: b"<soap:Envelope/>".to_vec(),
        };
        // Binary content with CRLFs and something that looks like a delimiter line start.
        let kos: Vec<u8> = (0..=255u8)
            .chain(b"\r\n--not-the-boundary\r\n".iter().copied())
            .collect();
        let attachments = [Part {
            content_id: "kos@drimbox".into(),
            content_type: "application/dicom".into(),
            body: kos.clone(),
        }];
        let action = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b";
        let body = build("MIMEBoundary_drimbox", &root, action, &attachments);
        let ct = content_type("MIMEBoundary_drimbox", "root@drimbox", action);
        let m = parse(&ct, &body).unwrap();
        assert_eq!(m.root().unwrap().body, root.body);
        assert_eq!(m.by_cid("cid:kos@drimbox").unwrap().body, kos);
        assert_eq!(m.parts.len(), 2);
        // Every line break of the framing is CRLF.
        let text = String::from_utf8_lossy(&body);
        let framing = text.split("--MIMEBoundary_drimbox").skip(1);
        for f in framing {
            if let Some(head) = f.split("\r\n\r\n").next() {
                assert!(
                    !head.replace("\r\n", "").contains('\n'),
                    "bare LF in {head:?}"
                );
            }
        }
    }

    #[test]
    fn the_dmp_answer_with_lost_line_breaks_is_still_read() {
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/ref/ans/XDS/response.xml"
        ))
        .unwrap();
        // The published answer runs its headers together; re-separated the way CXF sends them.
        let s = String::from_utf8_lossy(&text)
            .replace("Content-Type:", "\r\nContent-Type:")
            .replace(
                "Content-Transfer-Encoding:",
                "\r\nContent-Transfer-Encoding:",
            )
            .replace("Content-ID:", "\r\nContent-ID:")
            .replace(
                "<root.message@cxf.apache.org>",
                "<root.message@cxf.apache.org>\r\n",
            );
        let ct = "multipart/related; type=\"application/xop+xml\"; boundary=\"uuid:ac95cc6e-f93f-413d-950c-4bf9dc273d8a\"; start=\"<root.message@cxf.apache.org>\"";
        let m = parse(ct, s.as_bytes()).unwrap();
        let root = m.root().unwrap();
        assert!(String::from_utf8_lossy(&root.body).contains("ResponseStatusType:Success"));
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(parse("multipart/related", b""), Err(MtomError::NoBoundary));
        assert_eq!(
            parse("multipart/related; boundary=b", b"nothing here"),
            Err(MtomError::NoParts)
        );
        assert_eq!(
            parameter("a; start=\"<x>\"; b=1", "start").as_deref(),
            Some("<x>")
        );
    }
}
