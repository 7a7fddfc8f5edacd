//! The per-service egress filter: DESIGN's "a service can reach only the network peers of its
//! row", enforced by the kernel (nftables, matching the socket owner's uid) rather than by the
//! code's good behaviour. A compromised receiver cannot open a connection anywhere.
//!
//! New outgoing connections are allowed, per service user:
//! - publisher: the DMP's endpoint (`[dmp] url`);
//! - whitelist: the list's URL, and HTTP(S) on ports 80 and 443 for the CRLs the list's
//!   certificates name (not known in advance);
//! - wado: the token introspection endpoint (`[wado.introspection] url`);
//! - every other service (archive, receiver, hl7, status): nothing.
//!
//! An endpoint given as an IP address is allowed as that address and port only; one given by
//! name as its port to any address, with DNS (port 53), since the name's addresses are only
//! known when it is resolved. Replies on connections others opened to us (DICOM, MLLP, HTTP)
//! are established traffic and always pass; root (the supervisor, the OTA units) is not
//! filtered. A refused connection fails at once (rejected with ICMP "administratively
//! prohibited": `connect` says EHOSTUNREACH, where a drop would leave it retrying SYNs until
//! its timeout), and the kernel logs it, rate-limited, with the service's name.
//!
//! Pure: [`allowed`] (from the configuration) and [`ruleset`] (the nft text). `drimbox egress
//! apply` loads it with `nft -f -` (one transaction: the table is replaced whole).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::Config;

/// The nftables table this module owns.
pub const TABLE: &str = "drimbox_egress";

/// One kind of new outgoing connection a service may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// TCP to this address and port.
    To(IpAddr, u16),
    /// TCP to this port, any address (an endpoint known by name).
    Port(u16),
    /// DNS (UDP and TCP port 53), to resolve the names above.
    Dns,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("`{key}`: cannot tell the host and port of `{url}`")]
    Url { key: &'static str, url: String },
    #[error(
        "no uid for the service {0}: its system user does not exist (sysusers.d/drimbox.conf)"
    )]
    NoUser(String),
}

/// (host, port) of an `http://` or `https://` URL; IPv6 literals in brackets.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), default),
        }
    };
    (!host.is_empty()).then_some((host, port))
}

fn endpoint(key: &'static str, url: &str, out: &mut Vec<Allow>) -> Result<(), EgressError> {
    let (host, port) = host_port(url).ok_or_else(|| EgressError::Url {
        key,
        url: url.into(),
    })?;
    match host.parse::<IpAddr>() {
        Ok(ip) => out.push(Allow::To(ip, port)),
        Err(_) => {
            out.push(Allow::Port(port));
            out.push(Allow::Dns);
        }
    }
    Ok(())
}

/// What each service may open, from the configuration: every service of the supervisor, in
/// its order, with an empty list for those that may open nothing.
pub fn allowed(config: &Config) -> Result<Vec<(&'static str, Vec<Allow>)>, EgressError> {
    let mut out = Vec::new();
    for service in crate::supervisor::SERVICES {
        let mut allow = Vec::new();
        match service {
            "publisher" => {
                if let Some(dmp) = &config.dmp {
                    endpoint("dmp.url", &dmp.url, &mut allow)?;
                }
            }
            "whitelist" => {
                if let Some(d) = &config.whitelist.download {
                    endpoint("whitelist.url", &d.url, &mut allow)?;
                    allow.extend([Allow::Port(80), Allow::Port(443), Allow::Dns]);
                }
            }
            "wado" => {
                if let Some(i) = config.wado.as_ref().and_then(|w| w.introspection.as_ref()) {
                    endpoint("wado.introspection.url", &i.url, &mut allow)?;
                }
            }
            _ => {}
        }
        let mut unique = Vec::new();
        for a in allow {
            if !unique.contains(&a) {
                unique.push(a);
            }
        }
        out.push((service, unique));
    }
    Ok(out)
}

/// The nft script: creates or replaces the table in one transaction.
pub fn ruleset(
    allowed: &[(&'static str, Vec<Allow>)],
    uid_of: impl Fn(&str) -> Option<u32>,
) -> Result<String, EgressError> {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# DRIMbox per-service egress filter, generated by `drimbox egress` from the configuration.\n\
         # Replaced whole in one transaction: declare (if absent), delete, define.\n\
         table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tct state established,related accept"
    );
    for (service, _) in allowed {
        let uid = uid_of(service).ok_or_else(|| EgressError::NoUser(service.to_string()))?;
        let _ = writeln!(t, "\t\tmeta skuid {uid} jump {service}");
    }
    t.push_str("\t}\n");
    for (service, allow) in allowed {
        let _ = writeln!(t, "\tchain {service} {{");
        for a in allow {
            match a {
                Allow::To(IpAddr::V4(ip), port) => {
                    let _ = writeln!(t, "\t\tip daddr {ip} tcp dport {port} accept");
                }
                Allow::To(IpAddr::V6(ip), port) => {
                    let _ = writeln!(t, "\t\tip6 daddr {ip} tcp dport {port} accept");
                }
                Allow::Port(port) => {
                    let _ = writeln!(t, "\t\ttcp dport {port} accept");
                }
                Allow::Dns => {
                    let _ = writeln!(t, "\t\tmeta l4proto {{ tcp, udp }} th dport 53 accept");
                }
            }
        }
        let _ = writeln!(
            t,
            "\t\tlimit rate 6/minute log prefix \"drimbox egress refused ({service}): \" level warn\n\
             \t\treject with icmpx admin-prohibited\n\t}}"
        );
    }
    t.push_str("}\n");
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_host_and_port() {
        let hp = |u: &str| host_port(u);
        assert_eq!(
            hp("https://10.0.2.2:8443/si-dmp"),
            Some(("10.0.2.2".into(), 8443))
        );
        assert_eq!(
            hp("https://dmp.example/x"),
            Some(("dmp.example".into(), 443))
        );
        assert_eq!(hp("http://crl.example"), Some(("crl.example".into(), 80)));
        assert_eq!(
            hp("https://[2001:db8::1]:9443/t"),
            Some(("2001:db8::1".into(), 9443))
        );
        assert_eq!(
            hp("https://[2001:db8::1]/t"),
            Some(("2001:db8::1".into(), 443))
        );
        assert_eq!(
            hp("https://u:p@h.example:1/x"),
            Some(("h.example".into(), 1))
        );
        assert_eq!(hp("ftp://h/x"), None);
        assert_eq!(hp("https://:443/"), None);
        assert_eq!(hp("https://h:port/"), None);
    }

    fn config(extra: &str) -> Config {
        Config::parse(&format!("[storage]\ndata_dir = \"/d\"\n{extra}")).unwrap()
    }

    #[test]
    fn each_service_may_open_what_its_row_says_and_no_more() {
        let none = allowed(&config("")).unwrap();
        assert_eq!(none.len(), crate::supervisor::SERVICES.len());
        assert!(none.iter().all(|(_, a)| a.is_empty()), "{none:?}");

        let c = config(
            "[whitelist]\nurl = \"https://lb.example/lb.xml\"\ntls_trust_anchors = \"/k/ca.pem\"\n",
        );
        let a = allowed(&c).unwrap();
        let of = |s: &str| a.iter().find(|(n, _)| *n == s).unwrap().1.clone();
        assert_eq!(
            of("whitelist"),
            [Allow::Port(443), Allow::Dns, Allow::Port(80)]
        );
        for s in ["archive", "receiver", "hl7", "status", "publisher", "wado"] {
            assert!(of(s).is_empty(), "{s}");
        }
    }

    #[test]
    fn the_ruleset_jumps_by_uid_and_ends_each_chain_with_a_reject() {
        let allowed = vec![
            ("receiver", vec![]),
            (
                "publisher",
                vec![Allow::To("10.0.2.2".parse().unwrap(), 8443), Allow::Dns],
            ),
            (
                "wado",
                vec![
                    Allow::To("2001:db8::7".parse().unwrap(), 9443),
                    Allow::Port(443),
                ],
            ),
        ];
        let uids = |s: &str| match s {
            "receiver" => Some(991),
            "publisher" => Some(992),
            "wado" => Some(993),
            _ => None,
        };
        let t = ruleset(&allowed, uids).unwrap();
        assert!(t.contains("ct state established,related accept"), "{t}");
        assert!(t.contains("meta skuid 991 jump receiver\n"), "{t}");
        assert!(t.contains("ip daddr 10.0.2.2 tcp dport 8443 accept"), "{t}");
        assert!(
            t.contains("ip6 daddr 2001:db8::7 tcp dport 9443 accept"),
            "{t}"
        );
        assert!(t.contains("th dport 53 accept"), "{t}");
        assert_eq!(
            t.matches("\t\treject with icmpx admin-prohibited\n")
                .count(),
            3,
            "{t}"
        );
        assert!(matches!(
            ruleset(&[("hl7", vec![])], uids),
            Err(EgressError::NoUser(s)) if s == "hl7"
        ));
    }
}
