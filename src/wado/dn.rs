//! Distinguished names as the whitelist writes them (`DNCertificatOperateur`, e.g.
//! `CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,O=AGENCE DU NUMERIQUE EN SANTE,ST=Paris (75),C=FR`)
//! against a client certificate's subject. The list and our certificate printer may differ in
//! RDN order (RFC 4514 prints the last RDN first, OpenSSL the first), attribute-type spelling
//! (`ST`/`S`, `emailAddress`/`E`), spaces around separators, escaping and letter case (the
//! directory string attributes compare case-insensitively). The normal form: each attribute as
//! (upper-case type with aliases folded, value unescaped, inner whitespace collapsed, lower
//! case), sorted. Pure.

/// The normal form of `dn`; None if it does not parse (an empty DN, a component without `=`).
pub fn normalize(dn: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for rdn in split_unescaped(dn, &[',', ';']) {
        for ava in split_unescaped(&rdn, &['+']) {
            let (t, v) = ava.split_once('=')?;
            let t = match t.trim().to_ascii_uppercase().as_str() {
                "S" | "STATEORPROVINCENAME" | "2.5.4.8" => "ST".to_string(),
                "E" | "EMAILADDRESS" | "1.2.840.113549.1.9.1" => "EMAIL".to_string(),
                "COMMONNAME" | "2.5.4.3" => "CN".to_string(),
                "ORGANIZATIONALUNITNAME" | "2.5.4.11" => "OU".to_string(),
                "ORGANIZATIONNAME" | "2.5.4.10" => "O".to_string(),
                "COUNTRYNAME" | "2.5.4.6" => "C".to_string(),
                "LOCALITYNAME" | "2.5.4.7" => "L".to_string(),
                other => other.to_string(),
            };
            if t.is_empty() {
                return None;
            }
            let v = unescape(v.trim());
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            out.push((t, v.to_lowercase()));
        }
    }
    if out.is_empty() {
        return None;
    }
    out.sort();
    Some(out)
}

/// Whether two DNs name the same subject (both must parse).
pub fn same(a: &str, b: &str) -> bool {
    matches!((normalize(a), normalize(b)), (Some(x), Some(y)) if x == y)
}

fn split_unescaped(s: &str, seps: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if seps.contains(&c) && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// RFC 4514 value unescaping: `\,` and friends, `\XX` hex pairs, and a quoted value.
fn unescape(v: &str) -> String {
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v);
    let mut bytes = Vec::with_capacity(v.len());
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..(i + 3).min(b.len())])
                .ok()
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(x) => {
                    bytes.push(x);
                    i += 3;
                }
                None => {
                    bytes.push(b[i + 1]);
                    i += 2;
                }
            }
        } else {
            bytes.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTED: &str = "CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,O=AGENCE DU NUMERIQUE EN SANTE,ST=Paris (75),C=FR";

    #[test]
    fn order_spelling_spaces_and_case_do_not_matter() {
        assert!(same(
            LISTED,
            "C=FR, S=Paris (75), O=Agence du Numerique en Sante, OU=318751275100020, CN=DB3.test.mesimagesmedicales.fr"
        ));
        assert!(same("CN=a\\,b,O=x", "O=x,CN=\"a,b\""));
        assert!(same("CN=caf\\C3\\A9", "CN=café"));
    }

    #[test]
    fn a_different_value_or_a_missing_attribute_is_another_subject() {
        assert!(!same(
            LISTED,
            "CN=db3.test.mesimagesmedicales.fr,OU=318751275100021,O=AGENCE DU NUMERIQUE EN SANTE,ST=Paris (75),C=FR"
        ));
        assert!(!same(
            LISTED,
            "CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,O=AGENCE DU NUMERIQUE EN SANTE,C=FR"
        ));
        // An escaped comma is part of the value, not a separator.
        assert!(!same("CN=a\\,O=x", "CN=a,O=x"));
        assert!(!same("", ""));
        assert!(normalize("garbage").is_none());
    }
}
