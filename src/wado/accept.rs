//! The Accept header of a WADO-RS retrieve and the transfer syntax we answer in (PS3.18 §8.7):
//! pure parsing and negotiation, so every odd header a consumer sends is a unit test.
//!
//! A retrieve of DICOM instances asks for `multipart/related; type="application/dicom"`, each
//! range optionally naming a `transfer-syntax` (`*`: any) and a `q`. A range without a
//! transfer-syntax means the default, Explicit VR Little Endian (PS3.18 §8.7.3.5.2). `*/*` and
//! `multipart/related` without a type accept application/dicom too. The agency's validator ends
//! its header with a comma and puts `boundary=**` in each range: both are tolerated (the
//! boundary is ours to choose).

pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AcceptError {
    #[error("the Accept header is not a list of media ranges: {0}")]
    Malformed(String),
    #[error("the Accept header asks for no DICOM multipart media type (multipart/related; type=\"application/dicom\")")]
    NotDicom,
}

/// One acceptable DICOM transfer syntax (`None`: any) and its quality.
#[derive(Debug, Clone, PartialEq)]
pub struct Acceptable {
    pub transfer_syntax: Option<String>,
    pub q: f32,
}

/// Splits on `sep` outside double quotes; an unclosed quote is an error.
fn split_outside_quotes(s: &str, sep: char) -> Result<Vec<&str>, AcceptError> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return Err(AcceptError::Malformed("an unclosed quote".into()));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

fn is_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The DICOM ranges of `header`, best first (stable for equal q). Ranges for other media
/// types are skipped; q=0 ranges are dropped (they refuse).
pub fn parse(header: &str) -> Result<Vec<Acceptable>, AcceptError> {
    let mut out = Vec::new();
    let mut any = false;
    for range in split_outside_quotes(header, ',')? {
        if range.trim().is_empty() {
            continue;
        }
        any = true;
        let mut parts = split_outside_quotes(range, ';')?.into_iter();
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let (mut kind, mut ts, mut q) = (None, None, 1.0f32);
        for p in parts {
            if p.trim().is_empty() {
                continue;
            }
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| AcceptError::Malformed(format!("parameter `{}`", p.trim())))?;
            let v = unquote(v);
            match k.trim().to_ascii_lowercase().as_str() {
                "type" => kind = Some(v.to_ascii_lowercase()),
                "transfer-syntax" => {
                    if v != "*" && !is_uid(&v) {
                        return Err(AcceptError::Malformed(format!(
                            "transfer-syntax `{v}` is not a UID"
                        )));
                    }
                    ts = Some(v)
                }
                "q" => {
                    q = v
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .ok_or_else(|| AcceptError::Malformed(format!("q `{v}`")))?
                }
                _ => {}
            }
        }
        if !media.contains('/') {
            return Err(AcceptError::Malformed(format!("media type `{media}`")));
        }
        let dicom = match media.as_str() {
            "*/*" | "multipart/*" => true,
            "multipart/related" => kind.as_deref().is_none_or(|k| k == "application/dicom"),
            _ => false,
        };
        if !dicom || q == 0.0 {
            continue;
        }
        let transfer_syntax = match ts.as_deref() {
            None if media == "*/*" || media == "multipart/*" => None,
            None => Some(EXPLICIT_VR_LE.to_string()),
            Some("*") => None,
            Some(t) => Some(t.to_string()),
        };
        out.push(Acceptable { transfer_syntax, q });
    }
    if !any {
        return Err(AcceptError::Malformed("it is empty".into()));
    }
    if out.is_empty() {
        return Err(AcceptError::NotDicom);
    }
    // Stable: equal q keep the client's order.
    out.sort_by(|a, b| b.q.total_cmp(&a.q));
    Ok(out)
}

/// The transfer syntax to send an instance stored in `stored` in, among those we can produce
/// (`producible`, the stored one first): the first acceptable range, best q first, that one of
/// them satisfies. None: nothing acceptable (406).
pub fn choose<'a>(accepted: &[Acceptable], producible: &[&'a str]) -> Option<&'a str> {
    for a in accepted {
        match &a.transfer_syntax {
            None => return producible.first().copied(),
            Some(t) => {
                if let Some(p) = producible.iter().find(|p| **p == t) {
                    return Some(p);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agency validator's header (shared/ref/wado-rs/request_series.txt).
    const AGENCY: &str = "multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.70;q=0.9;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.80;q=0.8;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.91;q=0.6;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.50;q=0.5;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.51;q=0.5;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.100;q=0.5;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.101;q=0.5;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.102;q=0.5;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.4.103;q=0.5;boundary=**,multipart/related; type=\"application/dicom\";transfer-syntax=1.2.840.10008.1.2.1;q=0.4;boundary=**,";

    #[test]
    fn the_agency_header_parses_best_first() {
        let a = parse(AGENCY).unwrap();
        assert_eq!(a.len(), 10);
        assert_eq!(
            a[0].transfer_syntax.as_deref(),
            Some("1.2.840.10008.1.2.4.70")
        );
        assert_eq!(a[9].transfer_syntax.as_deref(), Some(EXPLICIT_VR_LE));
        // Equal q keep the client's order.
        assert_eq!(
            a[3].transfer_syntax.as_deref(),
            Some("1.2.840.10008.1.2.4.50")
        );
        assert_eq!(
            a[4].transfer_syntax.as_deref(),
            Some("1.2.840.10008.1.2.4.51")
        );
    }

    #[test]
    fn choice_follows_q_among_what_we_can_produce() {
        let a = parse(AGENCY).unwrap();
        // A JPEG Lossless stored instance goes as stored (q 0.9).
        assert_eq!(
            choose(&a, &["1.2.840.10008.1.2.4.70", EXPLICIT_VR_LE]),
            Some("1.2.840.10008.1.2.4.70")
        );
        // An Implicit VR one: only its Explicit VR conversion is acceptable.
        assert_eq!(
            choose(&a, &["1.2.840.10008.1.2", EXPLICIT_VR_LE]),
            Some(EXPLICIT_VR_LE)
        );
        // Stored as Implicit and nothing else producible: 406.
        assert_eq!(choose(&a, &["1.2.840.10008.1.2"]), None);
    }

    #[test]
    fn defaults_wildcards_and_refusals() {
        let a = parse("multipart/related; type=\"application/dicom\"").unwrap();
        assert_eq!(a[0].transfer_syntax.as_deref(), Some(EXPLICIT_VR_LE));
        let a = parse("multipart/related; type=application/dicom; transfer-syntax=*").unwrap();
        assert_eq!(
            choose(&a, &["1.2.840.10008.1.2.4.90"]),
            Some("1.2.840.10008.1.2.4.90")
        );
        let a = parse("*/*").unwrap();
        assert_eq!(a[0].transfer_syntax, None);
        // q=0 refuses that range.
        let a = parse(
            "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.1; q=0, \
             multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50",
        )
        .unwrap();
        assert_eq!(a.len(), 1);
        assert!(matches!(
            parse("application/dicom+json"),
            Err(AcceptError::NotDicom)
        ));
        assert!(matches!(parse(""), Err(AcceptError::Malformed(_))));
        assert!(matches!(
            parse("multipart/related; type=\"application/dicom"),
            Err(AcceptError::Malformed(_))
        ));
        assert!(matches!(
            parse("multipart/related; type=\"application/dicom\"; q=2"),
            Err(AcceptError::Malformed(_))
        ));
        assert!(matches!(
            parse("multipart/related; type=\"application/dicom\"; transfer-syntax=jpeg"),
            Err(AcceptError::Malformed(_))
        ));
        assert!(matches!(parse("garbage"), Err(AcceptError::Malformed(_))));
    }
}
