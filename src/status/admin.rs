//! The status page's administrator: one credential, set at install time by the distributor
//! (`drimbox admin password`, as root), that unlocks the page's update form.
//!
//! The credential file holds only a PBKDF2-HMAC-SHA256 hash of the password, with its salt and
//! iteration count, in one line (`pbkdf2-sha256$<iterations>$<salt>$<hash>`, base64): a copy of
//! the file is no password. It is readable by root and the status service's own group, no
//! other service. Guessing is slowed twice: each check costs the iterations, and [`Lockout`]
//! refuses every check for a while after a few wrong ones in a row.
//!
//! Pure: parsing, hashing and checking, the Basic authorization header, the lockout's
//! arithmetic. The effects (reading the file, the clock) are the callers'.

use std::num::NonZeroU32;

use ring::pbkdf2;

/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256: about a third of a second per check here.
pub const ITERATIONS: u32 = 600_000;
/// Fewer is refused when reading a credential: a file someone weakened by hand is no lock.
pub const MIN_ITERATIONS: u32 = 100_000;
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The only user name of the Basic scheme the page accepts.
pub const USER: &str = "admin";

const SCHEME: &str = "pbkdf2-sha256";
const HASH_LEN: usize = 32;
const SALT_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CredentialError {
    #[error("not a credential line (`{SCHEME}$<iterations>$<salt>$<hash>`)")]
    Format,
    #[error("{0} iterations: fewer than {MIN_ITERATIONS}, refused")]
    TooFewIterations(u32),
    #[error("the password is shorter than {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error("the system's random source failed")]
    Random,
}

/// A password's hash, as the credential file keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Credential {
    /// Hashes a new password with a fresh random salt.
    pub fn new(password: &str, iterations: u32) -> Result<Credential, CredentialError> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(CredentialError::ShortPassword);
        }
        let mut salt = vec![0u8; SALT_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| CredentialError::Random)?;
        let iterations = NonZeroU32::new(iterations.max(MIN_ITERATIONS)).expect("not zero");
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        Ok(Credential {
            iterations,
            salt,
            hash,
        })
    }

    pub fn parse(line: &str) -> Result<Credential, CredentialError> {
        let mut parts = line.trim().split('$');
        let (Some(SCHEME), Some(n), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CredentialError::Format);
        };
        let n: u32 = n.parse().map_err(|_| CredentialError::Format)?;
        if n < MIN_ITERATIONS {
            return Err(CredentialError::TooFewIterations(n));
        }
        let decode =
            |s: &str| crate::base64::decode(s.as_bytes()).map_err(|_| CredentialError::Format);
        let (salt, hash) = (decode(salt)?, decode(hash)?);
        if salt.len() < 8 || hash.len() != HASH_LEN {
            return Err(CredentialError::Format);
        }
        Ok(Credential {
            iterations: NonZeroU32::new(n).expect("checked"),
            salt,
            hash,
        })
    }

    /// The file's one line.
    pub fn line(&self) -> String {
        format!(
            "{SCHEME}${}${}${}\n",
            self.iterations,
            crate::base64::encode(&self.salt),
            crate::base64::encode(&self.hash)
        )
    }

    /// In constant time with respect to the hash (ring's verify).
    pub fn check(&self, password: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// The password of an `Authorization: Basic` header value for [`USER`]; None for any other
/// scheme, user or a malformed value.
pub fn basic_password(header_value: &str) -> Option<String> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = crate::base64::decode(token.trim().as_bytes()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (user == USER).then(|| password.to_string())
}

/// Wrong passwords in a row before the lock closes.
pub const LOCKOUT_AFTER: u32 = 5;
/// How long it stays closed (every check refused, right or wrong).
pub const LOCKOUT_MS: i64 = 60_000;

/// Consecutive failures and the time until which every check is refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lockout {
    failures: u32,
    until_ms: i64,
}

impl Lockout {
    /// Milliseconds the lock stays closed from `now_ms`; 0: open.
    pub fn closed_for(&self, now_ms: i64) -> i64 {
        (self.until_ms - now_ms).max(0)
    }

    /// Records the result of a check made while open.
    pub fn record(&mut self, now_ms: i64, ok: bool) {
        if ok {
            self.failures = 0;
            return;
        }
        self.failures += 1;
        if self.failures >= LOCKOUT_AFTER {
            self.failures = 0;
            self.until_ms = now_ms + LOCKOUT_MS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_checks_its_password_only_and_survives_its_file() {
        let c = Credential::new("correct horse battery", MIN_ITERATIONS).unwrap();
        assert!(c.check("correct horse battery"));
        assert!(!c.check("correct horse batterY"));
        assert!(!c.check(""));
        let line = c.line();
        assert!(line.starts_with("pbkdf2-sha256$100000$"), "{line}");
        assert!(!line.contains("horse"));
        let back = Credential::parse(&line).unwrap();
        assert_eq!(back, c);
        assert!(back.check("correct horse battery"));
        // A fresh salt each time: the same password never gives the same line.
        let again = Credential::new("correct horse battery", MIN_ITERATIONS).unwrap();
        assert_ne!(again.line(), line);
    }

    #[test]
    fn weak_or_malformed_credentials_are_refused() {
        assert_eq!(
            Credential::new("short", ITERATIONS),
            Err(CredentialError::ShortPassword)
        );
        let line = Credential::new("correct horse battery", MIN_ITERATIONS)
            .unwrap()
            .line();
        let weakened = line.replace("$100000$", "$1000$");
        assert_eq!(
            Credential::parse(&weakened),
            Err(CredentialError::TooFewIterations(1000))
        );
        for bad in [
            "",
            "password",
            "pbkdf2-sha1$600000$c2FsdHNhbHQ=$aGFzaA==",
            "pbkdf2-sha256$many$c2FsdHNhbHQ=$aGFzaA==",
            "pbkdf2-sha256$600000$c2FsdHNhbHQ=$aGFzaA==",
            "pbkdf2-sha256$600000$!!$aGFzaA==",
            &format!("{}$extra", line.trim()),
        ] {
            assert_eq!(
                Credential::parse(bad),
                Err(CredentialError::Format),
                "{bad}"
            );
        }
    }

    #[test]
    fn basic_headers_name_the_admin_or_nothing() {
        let h = |s: &str| format!("Basic {}", crate::base64::encode(s.as_bytes()));
        assert_eq!(basic_password(&h("admin:pa:ss")).as_deref(), Some("pa:ss"));
        assert_eq!(
            basic_password(&format!("  basic  {}", crate::base64::encode(b"admin:x"))).as_deref(),
            Some("x")
        );
        assert_eq!(basic_password(&h("root:pass")), None);
        assert_eq!(basic_password(&h("adminpass")), None);
        assert_eq!(basic_password("Bearer abc"), None);
        assert_eq!(basic_password("Basic !!!"), None);
        assert_eq!(basic_password("Basic"), None);
    }

    #[test]
    fn the_lock_closes_after_wrong_passwords_in_a_row_and_opens_again() {
        let mut l = Lockout::default();
        for i in 0..LOCKOUT_AFTER - 1 {
            l.record(1000 + i64::from(i), false);
            assert_eq!(l.closed_for(1000), 0);
        }
        // A right one resets the count.
        l.record(2000, true);
        for _ in 0..LOCKOUT_AFTER - 1 {
            l.record(3000, false);
        }
        assert_eq!(l.closed_for(3000), 0);
        l.record(3000, false);
        assert_eq!(l.closed_for(3000), LOCKOUT_MS);
        assert_eq!(l.closed_for(3000 + LOCKOUT_MS - 1), 1);
        assert_eq!(l.closed_for(3000 + LOCKOUT_MS), 0);
        // Open again, with a fresh count.
        l.record(3000 + LOCKOUT_MS, false);
        assert_eq!(l.closed_for(3000 + LOCKOUT_MS), 0);
    }
}
