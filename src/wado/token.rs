//! The consumer's Bearer token (a Pro Santé Connect access token in production), checked by
//! OAuth 2.0 token introspection (RFC 7662) against `[wado.introspection] url`, with the
//! box's client credentials (HTTP Basic), over TLS to `trust_anchors`. Answers are cached for
//! a short time (`cache_seconds`, never past the token's `exp`), keyed by the token's SHA-256:
//! the token itself is never kept or logged.
//!
//! Pure: [`bearer`] (the header), [`Cache`] (what is known, given the clock), [`form`] and
//! [`judge`] (the request body and the reading of the answer). Effect: [`Introspector::check`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::IntrospectionConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Active,
    /// 401: the token is missing, malformed, inactive or expired (the reason says which).
    Refused(String),
    /// 503: the introspection endpoint could not answer.
    Unavailable(String),
}

/// The token of an `Authorization: Bearer …` header (RFC 6750 §2.1).
pub fn bearer(header: Option<&str>) -> Result<&str, String> {
    let h = header.ok_or("an Authorization: Bearer token is required")?;
    let (scheme, token) = h
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header is not `Bearer <token>`")?;
    let token = token.trim();
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || !token.chars().all(b64token) {
        return Err("the Authorization header is not `Bearer <token>`".into());
    }
    Ok(token)
}

fn key(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

/// Introspection answers, with the instant (seconds, any monotonic origin) they stop counting.
#[derive(Debug, Default)]
pub struct Cache {
    known: HashMap<[u8; 32], (bool, String, u64)>,
}

impl Cache {
    pub fn get(&self, token: &str, now: u64) -> Option<Verdict> {
        let (active, why, until) = self.known.get(&key(token))?;
        (now < *until).then(|| match active {
            true => Verdict::Active,
            false => Verdict::Refused(why.clone()),
        })
    }

    /// Remembers an answer for `ttl` seconds (an active one never past its `exp`, given as
    /// seconds from now).
    pub fn put(&mut self, token: &str, verdict: &Verdict, now: u64, ttl: u64, exp_in: Option<u64>) {
        let (active, why) = match verdict {
            Verdict::Active => (true, String::new()),
            Verdict::Refused(w) => (false, w.clone()),
            Verdict::Unavailable(_) => return,
        };
        let ttl = exp_in.map_or(ttl, |e| e.min(ttl));
        if self.known.len() > 10_000 {
            self.known.retain(|_, (_, _, until)| *until > now);
        }
        self.known.insert(key(token), (active, why, now + ttl));
    }
}

/// `application/x-www-form-urlencoded` body of the introspection request.
pub fn form(token: &str) -> String {
    let mut out = String::from("token=");
    for b in token.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push_str("&token_type_hint=access_token");
    out
}

/// Reads an introspection answer (`status`, JSON body) at `now_unix`: the verdict and, when
/// active with an `exp`, the seconds it has left.
pub fn judge(status: u16, body: &[u8], now_unix: i64) -> (Verdict, Option<u64>) {
    if status != 200 {
        return (
            Verdict::Unavailable(format!("the introspection endpoint answered HTTP {status}")),
            None,
        );
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (
            Verdict::Unavailable("the introspection answer is not JSON".into()),
            None,
        );
    };
    if v["active"] != serde_json::Value::Bool(true) {
        return (Verdict::Refused("the token is not active".into()), None);
    }
    match v["exp"].as_i64() {
        Some(exp) if exp <= now_unix => (Verdict::Refused("the token has expired".into()), None),
        Some(exp) => (Verdict::Active, Some((exp - now_unix) as u64)),
        None => (Verdict::Active, None),
    }
}

pub struct Introspector {
    config: IntrospectionConfig,
    tls: Arc<rustls::ClientConfig>,
    authorization: String,
    cache: Mutex<Cache>,
    epoch: std::time::Instant,
}

impl Introspector {
    pub fn load(config: &IntrospectionConfig) -> Result<Introspector, String> {
        let tls = crate::tls::client_config(&config.trust_anchors)
            .map_err(|e| format!("wado.introspection.trust_anchors: {e}"))?;
        let secret = std::fs::read_to_string(&config.client_secret_file)
            .map_err(|e| {
                format!(
                    "wado.introspection.client_secret_file {}: {e}",
                    config.client_secret_file.display()
                )
            })?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let authorization = format!(
            "Basic {}",
            crate::base64::encode(format!("{}:{secret}", config.client_id).as_bytes())
        );
        Ok(Introspector {
            config: config.clone(),
            tls,
            authorization,
            cache: Mutex::new(Cache::default()),
            epoch: std::time::Instant::now(),
        })
    }

    /// The verdict on `token`, from the cache or the endpoint.
    pub fn check(&self, token: &str) -> Verdict {
        let now = self.epoch.elapsed().as_secs();
        if let Some(v) = self.cache.lock().expect("cache").get(token, now) {
            return v;
        }
        let answer = crate::dmp::http::post_with_headers(
            &self.config.url,
            "application/x-www-form-urlencoded",
            form(token).as_bytes(),
            &[
                ("Authorization", &self.authorization),
                ("Accept", "application/json"),
            ],
            self.tls.clone(),
            Duration::from_secs(10),
        );
        let (verdict, exp_in) = match answer {
            Ok(m) => judge(m.status(), &m.body, crate::archive::now_ms() / 1000),
            Err(e) => (
                Verdict::Unavailable(format!("the introspection endpoint: {e}")),
                None,
            ),
        };
        self.cache.lock().expect("cache").put(
            token,
            &verdict,
            now,
            self.config.cache.as_secs(),
            exp_in,
        );
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(Some("Bearer abc.DEF-_~+/=")), Ok("abc.DEF-_~+/="));
        assert_eq!(bearer(Some("bearer  xyz ")), Ok("xyz"));
        assert!(bearer(None).unwrap_err().contains("required"));
        assert!(bearer(Some("Basic dXNlcjpwdw==")).is_err());
        assert!(bearer(Some("Bearer")).is_err());
        assert!(bearer(Some("Bearer a b")).is_err());
    }

    #[test]
    fn answers_are_read_strictly() {
        let now = 1_800_000_000;
        assert_eq!(
            judge(200, br#"{"active":true}"#, now),
            (Verdict::Active, None)
        );
        assert_eq!(
            judge(200, br#"{"active":true,"exp":1800000060}"#, now),
            (Verdict::Active, Some(60))
        );
        assert!(matches!(
            judge(200, br#"{"active":true,"exp":1799999999}"#, now).0,
            Verdict::Refused(w) if w.contains("expired")
        ));
        assert!(matches!(
            judge(200, br#"{"active":false}"#, now).0,
            Verdict::Refused(_)
        ));
        // "true" as a string is not true.
        assert!(matches!(
            judge(200, br#"{"active":"true"}"#, now).0,
            Verdict::Refused(_)
        ));
        assert!(matches!(judge(401, b"", now).0, Verdict::Unavailable(_)));
        assert!(matches!(
            judge(200, b"<html>", now).0,
            Verdict::Unavailable(_)
        ));
    }

    #[test]
    fn the_cache_forgets_in_time_and_never_outlives_exp() {
        let mut c = Cache::default();
        c.put("t", &Verdict::Active, 100, 60, None);
        assert_eq!(c.get("t", 159), Some(Verdict::Active));
        assert_eq!(c.get("t", 160), None);
        c.put("u", &Verdict::Active, 100, 60, Some(5));
        assert_eq!(c.get("u", 104), Some(Verdict::Active));
        assert_eq!(c.get("u", 105), None);
        c.put("v", &Verdict::Unavailable("down".into()), 100, 60, None);
        assert_eq!(c.get("v", 101), None, "an outage is not remembered");
        assert_eq!(
            form("a b/+"),
            "token=a%20b%2F%2B&token_type_hint=access_token"
        );
    }
}
