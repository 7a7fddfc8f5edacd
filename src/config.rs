//! The box's one configuration file (TOML), read and validated in one pass.
//!
//! Validation collects *every* problem instead of stopping at the first, because the person reading
//! the output is a distributor on site with one chance to fix the file: each problem names the key
//! (`dicom.port`) and says what is wrong with it. Unknown keys are errors, not warnings: a typo in a
//! key would otherwise silently leave the default in force.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the box looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drimbox/drimbox.toml";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub dicom: DicomConfig,
    pub archive: ArchiveConfig,
    pub supervisor: SupervisorConfig,
    pub status: StatusConfig,
    pub hl7: Hl7Config,
    pub publication: PublicationConfig,
    /// Where and how lots are sent; None: lots are built and kept, not sent.
    pub dmp: Option<DmpConfig>,
    pub whitelist: WhitelistConfig,
    /// WADO-RS for consumer DRIMboxes; None: not served.
    pub wado: Option<WadoConfig>,
    /// The box's own settings (`site = ...`), layered over this file by [`Config::read`]; and
    /// whether that file was there and merged.
    pub site: Option<PathBuf>,
    pub site_merged: bool,
}

/// The WADO-RS server (DRIM-M §4.3): HTTPS with a client certificate required.
#[derive(Debug, Clone, PartialEq)]
pub struct WadoConfig {
    pub listen: IpAddr,
    pub port: u16,
    /// PEM chain of the box's server certificate (its whitelist `db` name), and its key.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// CA certificates (PEM) a consumer's client certificate must chain to (IGC-Santé).
    pub client_ca: PathBuf,
    /// The path our KOS Retrieve URLs use before `/studies/…` (from `publication.wado_base_url`
    /// unless set), e.g. `/wado`.
    pub base_path: String,
    pub timeout: Duration,
    pub max_connections: usize,
    /// Where Bearer tokens are checked; None: they are not (the status page says so).
    pub introspection: Option<IntrospectionConfig>,
}

/// RFC 7662 token introspection (Pro Santé Connect in production).
#[derive(Debug, Clone, PartialEq)]
pub struct IntrospectionConfig {
    pub url: String,
    /// CA certificates (PEM) of the introspection endpoint.
    pub trust_anchors: PathBuf,
    pub client_id: String,
    /// First line: the client secret (kept out of this file).
    pub client_secret_file: PathBuf,
    /// How long an answer is reused (never past the token's `exp`).
    pub cache: Duration,
}

/// Whom the whitelist must be signed by (DRIM-M §5.3). Absent keys: the IGC-Santé TEST root
/// and intermediate built into the binary, and the agency's signer name.
#[derive(Debug, Clone, PartialEq)]
pub struct WhitelistConfig {
    /// PEM files of the roots a signer's path must end at.
    pub trust_anchors: Vec<PathBuf>,
    /// PEM files of intermediates the box holds (used when the list's X509Data lacks them).
    pub intermediates: Vec<PathBuf>,
    pub signer_cn: String,
    pub signer_ou: String,
    /// Where the updater fetches the list; None: no download (the status page says so).
    pub download: Option<WhitelistDownload>,
    /// The editor's identity that signs each proof of verification; None: proofs are kept
    /// unsigned and the status page says so.
    pub proof_signing: Option<SigningConfig>,
}

/// The daily download of the list (DRIM-M §5.1).
#[derive(Debug, Clone, PartialEq)]
pub struct WhitelistDownload {
    /// `https://…` (the list), fetched with rustls against `tls_trust_anchors`.
    pub url: String,
    /// CA certificates (PEM) the list server's certificate must chain to.
    pub tls_trust_anchors: PathBuf,
    /// Minutes after 00:00 UTC of the daily attempt.
    pub daily_at_minutes: u32,
    /// Each day's attempt is drawn uniformly in [daily_at, daily_at + jitter): thousands of
    /// boxes must not hit the agency's server in the same second.
    pub jitter: Duration,
    /// Whole-download deadline (connection, TLS, headers and body).
    pub timeout: Duration,
    /// Largest list accepted (the body is never read past it).
    pub max_bytes: usize,
}

impl Default for WhitelistConfig {
    fn default() -> Self {
        WhitelistConfig {
            trust_anchors: Vec::new(),
            intermediates: Vec::new(),
            signer_cn: DEFAULT_WHITELIST_SIGNER_CN.into(),
            signer_ou: DEFAULT_WHITELIST_SIGNER_OU.into(),
            download: None,
            proof_signing: None,
        }
    }
}

/// The agency's whitelist signer (DRIM-M §5.2).
pub const DEFAULT_WHITELIST_SIGNER_CN: &str = "Liste Blanche DRIM-M";
pub const DEFAULT_WHITELIST_SIGNER_OU: &str = "318751275100020";

/// The DMP endpoints and the credentials of the exchanges.
#[derive(Debug, Clone, PartialEq)]
pub struct DmpConfig {
    /// Base of the services (`…/si-dmp-server/v2/services`); `/repository` and `/registry` are
    /// appended.
    pub url: String,
    /// CA certificates (PEM) the DMP's server certificate must chain to (IGC-Santé).
    pub trust_anchors: PathBuf,
    /// The practice's authentication certificate (PKCS#12) and its password file.
    pub pkcs12: PathBuf,
    pub password_file: PathBuf,
    pub timeout: Duration,
    /// How often the publisher checks, without sending anything, that the DMP can be reached
    /// (TLS handshake with the practice's certificate) for the status page.
    pub probe_interval: Duration,
    /// LPS identification in the VIHF (the software's DMP registration).
    pub lps_id: String,
    pub lps_version: String,
    pub lps_homologation: String,
    /// VIHF roles (profession, savoir-faire) as `code^codeSystem^display`.
    pub roles: Vec<String>,
}

/// How exams become lots for the DMP: where images are fetched from, whose UIDs, which codes,
/// the practice's document templates, and the signing certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicationConfig {
    /// Public WADO-RS base of this box, put in every series' Retrieve URL. Without it no lot is
    /// built (exams stay "ready to publish").
    pub wado_base_url: Option<String>,
    /// OID under which the box makes its UIDs (KOS, series, submission sets, signatures). When
    /// absent, UUID-derived `2.25.` UIDs.
    pub uid_root: Option<String>,
    /// XDS sourceId of the submission sets (the practice's registered OID); default: uid_root.
    pub source_id: Option<String>,
    /// InstitutionName of the KOS.
    pub institution_name: String,
    /// XDS contentTypeCode of the submission sets (code, coding scheme, display name).
    pub content_type: Option<(String, String, String)>,
    /// The practice's document templates (first match wins; the message's flags override).
    pub templates: Vec<crate::exam::TemplateRule>,
    pub signing: Option<SigningConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SigningConfig {
    /// PKCS#12 file holding the practice's signing key and certificate.
    pub pkcs12: PathBuf,
    /// File whose first line is the PKCS#12 password (kept out of this file).
    pub password_file: PathBuf,
    /// `rsa-sha256` (default) or `rsa-sha1` (what the DMP sample uses).
    pub algorithm: String,
}

impl PublicationConfig {
    pub fn policy(&self) -> crate::exam::Policy {
        crate::exam::Policy {
            rules: self.templates.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hl7Config {
    /// Where the RIS sends report messages (MLLP over TCP).
    pub listen: IpAddr,
    pub port: u16,
    /// Largest message accepted (the CDA travels base64 inside).
    pub max_message_bytes: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent connections; beyond, new ones are closed at once.
    pub max_connections: usize,
    /// MLLP over TLS instead of plain TCP.
    pub tls: Option<Hl7Tls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hl7Tls {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// When set, the RIS must present a client certificate chaining to one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// Where `drimbox ota` writes the update state for the status page (beside the floor).
pub const DEFAULT_UPDATE_STATE: &str = "/data/ota/state.json";
/// The hash of the administrator's password (`drimbox admin password`), beside the update state.
pub const DEFAULT_ADMIN_CREDENTIAL: &str = "/data/ota/admin.credential";
/// Where the status page's install form leaves a bundle for the root installer.
pub const DEFAULT_UPDATE_SPOOL: &str = "/data/ota/spool";

#[derive(Debug, Clone, PartialEq)]
pub struct StatusConfig {
    /// Where the status page, `/status.json` and `/metrics` are served (plain HTTP, read-only).
    pub listen: IpAddr,
    pub port: u16,
    /// Archive disk usage at or above this percentage turns the verdict to degraded.
    pub disk_warn_percent: u8,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<StatusTls>,
    /// The update state the OTA commands write (`drimbox ota`), shown in the page's OTA section.
    pub update_state: PathBuf,
    /// The administrator's credential, which unlocks the install form (`/update`).
    pub admin_credential: PathBuf,
    /// Where the install form spools a bundle for `drimbox ota install-spooled`.
    pub update_spool: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusTls {
    /// PEM certificate chain (the box's certificate first).
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// This many exits of one service within `crash_loop_window` mark it failed.
    pub crash_loop_count: usize,
    pub crash_loop_window: Duration,
    /// Ceiling of the exponential restart backoff.
    pub restart_backoff_max: Duration,
    /// A service silent this long is wedged: killed and restarted, watchdog pings withheld.
    pub heartbeat_timeout: Duration,
    /// After a crash loop, how long the supervisor keeps the box up (status page showing the
    /// failure) before it exits non-zero.
    pub failed_exit_delay: Duration,
    /// When started as root: run each service as its own system user `drimbox-<service>`.
    /// Ignored when not root (the services then run as the current user).
    pub run_as_service_users: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Holds the redb database and the file store. Must be one filesystem (atomic renames).
    pub data_dir: PathBuf,
    /// Unix sockets and other runtime files.
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: log::LevelFilter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DicomConfig {
    pub listen: IpAddr,
    pub port: u16,
    pub ae_title: String,
    /// Empty: any calling AE title is accepted.
    pub calling_ae_titles: Vec<String>,
    pub max_associations: usize,
    pub max_pdu: u32,
    /// Read/write timeout of an association's socket.
    pub timeout: Duration,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Client certificates must chain to one of these CA certificates.
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveConfig {
    /// A study is "stable" once no instance arrived for this long.
    pub stable_after: Duration,
}

/// One problem in a configuration file, attached to the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {}", list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("\n  - {p}")).collect();
    format!("{} problem(s){}", problems.len(), lines.concat())
}

/// One TOML file's table; its syntax errors as the problem list of that file.
fn read_table(path: &Path) -> Result<Option<toml::Table>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    parse_table(&text)
        .map(Some)
        .map_err(|problem| ConfigError::Invalid {
            path: path.to_owned(),
            problems: vec![problem],
        })
}

fn parse_table(text: &str) -> Result<toml::Table, Problem> {
    text.parse().map_err(|e: toml::de::Error| Problem {
        key: String::new(),
        message: format!("not valid TOML: {}", e.message().trim()),
    })
}

/// `over` laid on `base`: tables merged key by key, at every depth; any other value (a string,
/// a list) replaced whole, so a list in the site file is the list, not an addition.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Whether the problem's key (`dicom.calling_ae_titles[1]`, `publication.dmp.url`, a section)
/// is one the table sets, or lies under a value it sets.
fn sets(table: &toml::Table, key: &str) -> bool {
    let mut at = table;
    for part in key.split('.') {
        let name = part.split('[').next().unwrap_or(part);
        match at.get(name) {
            Some(toml::Value::Table(t)) => at = t,
            Some(_) => return true,
            None => return false,
        }
    }
    !key.is_empty()
}

impl Config {
    /// Reads and validates a configuration file, including the checks that touch the machine
    /// (directories writable, TLS files readable).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        let problems = config.check_environment();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Reads a configuration file and the site file it names (`site = "/data/config/..."`),
    /// merged ([`merge`]: the site's keys replace the file's), and validates the result without
    /// touching the machine. On the box the file is the image's, read-only and replaced by every
    /// update; the site file on /data is the box's own (its DMP, certificates, AE titles), kept
    /// across updates and checked again by each new image's binary before the update commits.
    /// No site file is no error (a box not yet configured runs on the image's defaults); a
    /// problem with a key the site file sets names that file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let mut root = read_table(path)?.ok_or_else(|| ConfigError::Read {
            path: path.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let site = match root.get("site") {
            Some(toml::Value::String(s)) if Path::new(s).is_absolute() => Some(PathBuf::from(s)),
            _ => None, // the parse below names what is wrong with it
        };
        let mut from_site = None;
        if let Some(site) = &site {
            if let Some(over) = read_table(site)? {
                if over.contains_key("site") {
                    return Err(ConfigError::Invalid {
                        path: site.clone(),
                        problems: vec![Problem {
                            key: "site".into(),
                            message: format!(
                                "is set only in {} (a site file does not name another)",
                                path.display()
                            ),
                        }],
                    });
                }
                merge(&mut root, over.clone());
                from_site = Some(over);
            }
        }
        let mut config = Config::from_table(root).map_err(|mut problems| {
            if let (Some(over), Some(site)) = (&from_site, &site) {
                for p in problems.iter_mut().filter(|p| sets(over, &p.key)) {
                    p.message = format!("{} (set in {})", p.message, site.display());
                }
            }
            ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }
        })?;
        config.site_merged = from_site.is_some();
        Ok(config)
    }

    /// Which files this configuration came from, for `config check` and the supervisor's log:
    /// "FILE + SITE", "FILE (no site file SITE)" or "FILE".
    pub fn sources(&self, path: &Path) -> String {
        match (&self.site, self.site_merged) {
            (Some(site), true) => format!("{} + {}", path.display(), site.display()),
            (Some(site), false) => format!("{} (no site file {})", path.display(), site.display()),
            (None, _) => path.display().to_string(),
        }
    }

    /// Pure part of validation: syntax, types, ranges, unknown keys, port clashes, of one
    /// file's text (a `site` key is recorded, not followed: [`Config::read`] does that).
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::from_table(parse_table(text).map_err(|p| vec![p])?)
    }

    fn from_table(root: toml::Table) -> Result<Config, Vec<Problem>> {
        let mut r = Reader::default();
        let mut root = r.root(root);
        let site = r.opt_path(&mut root, "", "site");

        let mut storage = r.section(&mut root, "storage");
        let data_dir = r.req_path(&mut storage, "storage", "data_dir");
        let run_dir = r.opt_path(&mut storage, "storage", "run_dir");
        r.finish(storage, "storage");

        let mut logt = r.section(&mut root, "log");
        let level = r
            .opt_str(&mut logt, "log", "level")
            .map(|s| match s?.parse::<log::LevelFilter>() {
                Ok(l) => Some(l),
                Err(_) => {
                    r.problem(
                        "log.level",
                        "must be one of off, error, warn, info, debug, trace",
                    );
                    None
                }
            })
            .unwrap_or(Some(log::LevelFilter::Info));
        r.finish(logt, "log");

        let mut d = r.section(&mut root, "dicom");
        let listen = r
            .opt_ip(&mut d, "dicom", "listen")
            .unwrap_or(Some(IpAddr::from([0, 0, 0, 0])));
        let port = r.opt_port(&mut d, "dicom", "port").unwrap_or(Some(11112));
        let ae_title = r
            .opt_str(&mut d, "dicom", "ae_title")
            .map(|s| r.ae_title("dicom.ae_title", s?))
            .unwrap_or(Some("DRIMBOX".into()));
        let calling = r
            .opt_str_list(&mut d, "dicom", "calling_ae_titles")
            .map(|v| {
                v.into_iter()
                    .enumerate()
                    .filter_map(|(i, s)| r.ae_title(&format!("dicom.calling_ae_titles[{i}]"), s))
                    .collect::<Vec<_>>()
            });
        let max_associations = r
            .opt_int(&mut d, "dicom", "max_associations", 1, 1024)
            .unwrap_or(Some(16));
        // 4 KiB..16 MiB: the bounds dicom-ul accepts; memory per association is about this much.
        let max_pdu = r
            .opt_int(&mut d, "dicom", "max_pdu", 4096, 16 * 1024 * 1024)
            .unwrap_or(Some(262_144));
        let timeout = r
            .opt_int(&mut d, "dicom", "timeout_seconds", 1, 3600)
            .unwrap_or(Some(60));
        let tls = match d.remove("tls") {
            None => Some(None),
            Some(v) => {
                let mut t = r.expect_table(v, "dicom.tls");
                let certificate = r.req_path(&mut t, "dicom.tls", "certificate");
                let private_key = r.req_path(&mut t, "dicom.tls", "private_key");
                let client_ca = r.req_path(&mut t, "dicom.tls", "client_ca");
                r.finish(t, "dicom.tls");
                match (certificate, private_key, client_ca) {
                    (Some(certificate), Some(private_key), Some(client_ca)) => {
                        Some(Some(TlsConfig {
                            certificate,
                            private_key,
                            client_ca,
                        }))
                    }
                    _ => None,
                }
            }
        };
        r.finish(d, "dicom");

        let mut a = r.section(&mut root, "archive");
        let stable_after = r
            .opt_int(&mut a, "archive", "stable_after_seconds", 1, 7 * 24 * 3600)
            .unwrap_or(Some(60));
        r.finish(a, "archive");

        let mut sv = r.section(&mut root, "supervisor");
        let crash_loop_count = r
            .opt_int(&mut sv, "supervisor", "crash_loop_count", 2, 1000)
            .unwrap_or(Some(5));
        let crash_loop_window = r
            .opt_int(
                &mut sv,
                "supervisor",
                "crash_loop_window_seconds",
                1,
                86_400,
            )
            .unwrap_or(Some(60));
        let backoff_max = r
            .opt_int(
                &mut sv,
                "supervisor",
                "restart_backoff_max_seconds",
                1,
                3600,
            )
            .unwrap_or(Some(30));
        let heartbeat_timeout = r
            .opt_int(&mut sv, "supervisor", "heartbeat_timeout_seconds", 3, 3600)
            .unwrap_or(Some(10));
        let failed_exit_delay = r
            .opt_int(&mut sv, "supervisor", "failed_exit_delay_seconds", 0, 3600)
            .unwrap_or(Some(30));
        let run_as_service_users = r
            .opt_bool(&mut sv, "supervisor", "run_as_service_users")
            .unwrap_or(Some(true));
        r.finish(sv, "supervisor");

        let mut h7 = r.section(&mut root, "hl7");
        let hl7_listen = r
            .opt_ip(&mut h7, "hl7", "listen")
            .unwrap_or(Some(IpAddr::from([0, 0, 0, 0])));
        let hl7_port = r.opt_port(&mut h7, "hl7", "port").unwrap_or(Some(2575));
        let hl7_max = r
            .opt_int(
                &mut h7,
                "hl7",
                "max_message_bytes",
                4096,
                crate::hl7::message::MAX_MESSAGE as i64,
            )
            .unwrap_or(Some(crate::hl7::message::MAX_MESSAGE as i64));
        let hl7_idle = r
            .opt_int(&mut h7, "hl7", "idle_timeout_seconds", 1, 3600)
            .unwrap_or(Some(60));
        let hl7_conns = r
            .opt_int(&mut h7, "hl7", "max_connections", 1, 256)
            .unwrap_or(Some(16));
        let hl7_tls = match h7.remove("tls") {
            None => Some(None),
            Some(v) => {
                let mut t = r.expect_table(v, "hl7.tls");
                let certificate = r.req_path(&mut t, "hl7.tls", "certificate");
                let private_key = r.req_path(&mut t, "hl7.tls", "private_key");
                let client_ca = r.opt_path(&mut t, "hl7.tls", "client_ca");
                r.finish(t, "hl7.tls");
                match (certificate, private_key) {
                    (Some(certificate), Some(private_key)) => Some(Some(Hl7Tls {
                        certificate,
                        private_key,
                        client_ca,
                    })),
                    _ => None,
                }
            }
        };
        r.finish(h7, "hl7");

        let mut st = r.section(&mut root, "status");
        let status_listen = r
            .opt_ip(&mut st, "status", "listen")
            .unwrap_or(Some(IpAddr::from([0, 0, 0, 0])));
        let status_port = r.opt_port(&mut st, "status", "port").unwrap_or(Some(8080));
        let disk_warn = r
            .opt_int(&mut st, "status", "disk_warn_percent", 1, 100)
            .unwrap_or(Some(85));
        let update_state = r
            .opt_path(&mut st, "status", "update_state")
            .unwrap_or_else(|| PathBuf::from(DEFAULT_UPDATE_STATE));
        let admin_credential = r
            .opt_path(&mut st, "status", "admin_credential")
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_CREDENTIAL));
        let update_spool = r
            .opt_path(&mut st, "status", "update_spool")
            .unwrap_or_else(|| PathBuf::from(DEFAULT_UPDATE_SPOOL));
        let status_tls = match st.remove("tls") {
            None => Some(None),
            Some(v) => {
                let mut t = r.expect_table(v, "status.tls");
                let certificate = r.req_path(&mut t, "status.tls", "certificate");
                let private_key = r.req_path(&mut t, "status.tls", "private_key");
                r.finish(t, "status.tls");
                match (certificate, private_key) {
                    (Some(certificate), Some(private_key)) => Some(Some(StatusTls {
                        certificate,
                        private_key,
                    })),
                    _ => None,
                }
            }
        };
        r.finish(st, "status");

        let publication = r.publication(&mut root);
        let dmp = r.dmp(&mut root);
        let whitelist = r.whitelist(&mut root);
        let wado = r.wado(&mut root, &publication);

        r.finish(root, "");

        // Every listening port of the box; later services add theirs here.
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        for (key, p) in [
            ("dicom.port", port),
            ("hl7.port", hl7_port),
            ("status.port", status_port),
            ("wado.port", wado.as_ref().map(|w| w.port)),
        ] {
            if let Some(p) = p {
                if let Some(other) = ports.insert(p, key) {
                    r.problem(key, format!("port {p} is already used by {other}"));
                }
            }
        }

        if !r.problems.is_empty() {
            return Err(r.problems);
        }
        let data_dir = data_dir.expect("checked");
        Ok(Config {
            storage: StorageConfig {
                run_dir: run_dir.unwrap_or_else(|| data_dir.join("run")),
                data_dir,
            },
            log: LogConfig {
                level: level.expect("checked"),
            },
            dicom: DicomConfig {
                listen: listen.expect("checked"),
                port: port.expect("checked"),
                ae_title: ae_title.expect("checked"),
                calling_ae_titles: calling.unwrap_or_default(),
                max_associations: max_associations.expect("checked") as usize,
                max_pdu: max_pdu.expect("checked") as u32,
                timeout: Duration::from_secs(timeout.expect("checked") as u64),
                tls: tls.expect("checked"),
            },
            archive: ArchiveConfig {
                stable_after: Duration::from_secs(stable_after.expect("checked") as u64),
            },
            supervisor: SupervisorConfig {
                crash_loop_count: crash_loop_count.expect("checked") as usize,
                crash_loop_window: Duration::from_secs(crash_loop_window.expect("checked") as u64),
                restart_backoff_max: Duration::from_secs(backoff_max.expect("checked") as u64),
                heartbeat_timeout: Duration::from_secs(heartbeat_timeout.expect("checked") as u64),
                failed_exit_delay: Duration::from_secs(failed_exit_delay.expect("checked") as u64),
                run_as_service_users: run_as_service_users.expect("checked"),
            },
            hl7: Hl7Config {
                listen: hl7_listen.expect("checked"),
                port: hl7_port.expect("checked"),
                max_message_bytes: hl7_max.expect("checked") as usize,
                idle_timeout: Duration::from_secs(hl7_idle.expect("checked") as u64),
                max_connections: hl7_conns.expect("checked") as usize,
                tls: hl7_tls.expect("checked"),
            },
            status: StatusConfig {
                listen: status_listen.expect("checked"),
                port: status_port.expect("checked"),
                disk_warn_percent: disk_warn.expect("checked") as u8,
                tls: status_tls.expect("checked"),
                update_state,
                admin_credential,
                update_spool,
            },
            publication,
            dmp,
            whitelist,
            wado,
            site,
            site_merged: false,
        })
    }

    /// Checks against the machine: directories exist (or can be made) and are writable, TLS files
    /// can be read.
    pub fn check_environment(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (key, dir) in [
            ("storage.data_dir", &self.storage.data_dir),
            ("storage.run_dir", &self.storage.run_dir),
        ] {
            if let Err(e) = check_writable_dir(dir) {
                problems.push(Problem {
                    key: key.into(),
                    message: format!("{} is not a writable directory: {e}", dir.display()),
                });
            }
        }
        if let Some(tls) = &self.status.tls {
            for (key, file) in [
                ("status.tls.certificate", &tls.certificate),
                ("status.tls.private_key", &tls.private_key),
            ] {
                if let Err(e) = std::fs::File::open(file) {
                    problems.push(Problem {
                        key: key.into(),
                        message: format!("cannot read {}: {e}", file.display()),
                    });
                }
            }
        }
        if let Some(tls) = &self.hl7.tls {
            let mut files = vec![
                ("hl7.tls.certificate", &tls.certificate),
                ("hl7.tls.private_key", &tls.private_key),
            ];
            if let Some(ca) = &tls.client_ca {
                files.push(("hl7.tls.client_ca", ca));
            }
            for (key, file) in files {
                if let Err(e) = std::fs::File::open(file) {
                    problems.push(Problem {
                        key: key.into(),
                        message: format!("cannot read {}: {e}", file.display()),
                    });
                }
            }
        }
        if let Some(s) = &self.publication.signing {
            for (key, file) in [
                ("publication.signing.pkcs12", &s.pkcs12),
                ("publication.signing.password_file", &s.password_file),
            ] {
                if let Err(e) = std::fs::File::open(file) {
                    problems.push(Problem {
                        key: key.into(),
                        message: format!("cannot read {}: {e}", file.display()),
                    });
                }
            }
        }
        if let Some(wado) = &self.wado {
            for (key, file) in [
                ("wado.certificate", &wado.certificate),
                ("wado.private_key", &wado.private_key),
                ("wado.client_ca", &wado.client_ca),
            ]
            .into_iter()
            .chain(wado.introspection.iter().flat_map(|i| {
                [
                    ("wado.introspection.trust_anchors", &i.trust_anchors),
                    (
                        "wado.introspection.client_secret_file",
                        &i.client_secret_file,
                    ),
                ]
            })) {
                if let Err(e) = std::fs::File::open(file) {
                    problems.push(Problem {
                        key: key.into(),
                        message: format!("cannot read {}: {e}", file.display()),
                    });
                }
            }
        }
        let w = &self.whitelist;
        let whitelist_files = w
            .trust_anchors
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("whitelist.trust_anchors[{i}]"), f))
            .chain(
                w.intermediates
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("whitelist.intermediates[{i}]"), f)),
            )
            .chain(w.download.iter().map(|d| {
                (
                    "whitelist.tls_trust_anchors".to_string(),
                    &d.tls_trust_anchors,
                )
            }))
            .chain(w.proof_signing.iter().flat_map(|p| {
                [
                    ("whitelist.proof_pkcs12".to_string(), &p.pkcs12),
                    (
                        "whitelist.proof_password_file".to_string(),
                        &p.password_file,
                    ),
                ]
            }));
        for (key, file) in whitelist_files {
            if let Err(e) = std::fs::File::open(file) {
                problems.push(Problem {
                    key,
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
        if let Some(tls) = &self.dicom.tls {
            for (key, file) in [
                ("dicom.tls.certificate", &tls.certificate),
                ("dicom.tls.private_key", &tls.private_key),
                ("dicom.tls.client_ca", &tls.client_ca),
            ] {
                if let Err(e) = std::fs::File::open(file) {
                    problems.push(Problem {
                        key: key.into(),
                        message: format!("cannot read {}: {e}", file.display()),
                    });
                }
            }
        }
        problems
    }

    /// The annotated default configuration a `demo` writes, for a given directory and ports.
    pub fn demo_text(
        dir: &Path,
        dicom_port: u16,
        ae_title: &str,
        status_port: u16,
        hl7_port: u16,
    ) -> String {
        format!(
            "# Generated by `drimbox demo`; see overlay/etc/drimbox/drimbox.toml for every key.\n\
             [storage]\n\
             data_dir = {dir:?}\n\n\
             [dicom]\n\
             listen = \"127.0.0.1\"\n\
             port = {dicom_port}\n\
             ae_title = {ae_title:?}\n\n\
             [archive]\n\
             stable_after_seconds = 10\n\n\
             [hl7]\n\
             listen = \"127.0.0.1\"\n\
             port = {hl7_port}\n\n\
             [status]\n\
             listen = \"127.0.0.1\"\n\
             port = {status_port}\n\n\
             # A developer's box: every service runs as whoever started the demo.\n\
             [supervisor]\n\
             run_as_service_users = false\n",
            dir = dir.join("data").display().to_string(),
        )
    }
}

fn check_writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".drimbox-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Takes keys out of TOML tables, recording a problem for each missing, mistyped or leftover key.
#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
}

fn is_oid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.split('.').all(|arc| {
            !arc.is_empty()
                && arc.bytes().all(|b| b.is_ascii_digit())
                && (arc == "0" || !arc.starts_with('0'))
        })
}

impl Reader {
    fn oid(&mut self, t: &mut toml::Table, key: &str) -> Option<String> {
        let s = self.opt_str(t, "publication", key)??;
        if !is_oid(&s) {
            self.problem(
                &dotted("publication", key),
                format!("`{s}` is not an OID of at most 40 characters (digits and dots)"),
            );
            return None;
        }
        Some(s)
    }

    fn whitelist(&mut self, root: &mut toml::Table) -> WhitelistConfig {
        let Some(v) = root.remove("whitelist") else {
            return WhitelistConfig::default();
        };
        let k = "whitelist";
        let mut t = self.expect_table(v, k);
        let paths = |r: &mut Reader, t: &mut toml::Table, key: &str| -> Vec<PathBuf> {
            let list = r.opt_str_list(t, k, key).unwrap_or_default();
            list.into_iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    if Path::new(&p).is_absolute() {
                        Some(PathBuf::from(p))
                    } else {
                        r.problem(
                            &format!("{k}.{key}[{i}]"),
                            format!("`{p}` must be an absolute path"),
                        );
                        None
                    }
                })
                .collect()
        };
        let trust_anchors = paths(self, &mut t, "trust_anchors");
        let intermediates = paths(self, &mut t, "intermediates");
        let signer_cn = self
            .opt_str(&mut t, k, "signer_cn")
            .flatten()
            .unwrap_or_else(|| DEFAULT_WHITELIST_SIGNER_CN.into());
        let signer_ou = self
            .opt_str(&mut t, k, "signer_ou")
            .flatten()
            .unwrap_or_else(|| DEFAULT_WHITELIST_SIGNER_OU.into());
        let url = match self.opt_str(&mut t, k, "url").flatten() {
            Some(u) if u.starts_with("https://") && u.len() > "https://".len() => Some(u),
            Some(u) => {
                self.problem(
                    "whitelist.url",
                    format!("`{u}` must be an https URL (the list travels over TLS only)"),
                );
                None
            }
            None => None,
        };
        let tls_trust_anchors = self.opt_path(&mut t, k, "tls_trust_anchors");
        let daily_at = match self.opt_str(&mut t, k, "daily_at").flatten() {
            None => Some(3 * 60 + 30),
            Some(v) => {
                let parsed = v.split_once(':').and_then(|(h, m)| {
                    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
                    (h < 24 && m < 60 && v.len() == 5).then_some(h * 60 + m)
                });
                if parsed.is_none() {
                    self.problem(
                        "whitelist.daily_at",
                        format!("`{v}` must be HH:MM (UTC), e.g. \"03:30\""),
                    );
                }
                parsed
            }
        };
        let jitter = self
            .opt_int(&mut t, k, "jitter_minutes", 0, 720)
            .unwrap_or(Some(60));
        let timeout = self
            .opt_int(&mut t, k, "timeout_seconds", 1, 600)
            .unwrap_or(Some(60));
        let max_bytes = self
            .opt_int(&mut t, k, "max_bytes", 4096, 64 * 1024 * 1024)
            .unwrap_or(Some(16 * 1024 * 1024));
        let proof_pkcs12 = self.opt_path(&mut t, k, "proof_pkcs12");
        let proof_password = self.opt_path(&mut t, k, "proof_password_file");
        self.finish(t, k);
        let download = match (url, tls_trust_anchors) {
            (Some(url), Some(anchors)) => Some(WhitelistDownload {
                url,
                tls_trust_anchors: anchors,
                daily_at_minutes: daily_at.unwrap_or(0),
                jitter: Duration::from_secs(jitter.unwrap_or(0) as u64 * 60),
                timeout: Duration::from_secs(timeout.unwrap_or(60) as u64),
                max_bytes: max_bytes.unwrap_or(0) as usize,
            }),
            (Some(_), None) => {
                self.problem(
                    "whitelist.tls_trust_anchors",
                    "is required with whitelist.url (the CA of the list server)",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "whitelist.url",
                    "is required with whitelist.tls_trust_anchors",
                );
                None
            }
            (None, None) => None,
        };
        let proof_signing = match (proof_pkcs12, proof_password) {
            (Some(pkcs12), Some(password_file)) => Some(SigningConfig {
                pkcs12,
                password_file,
                algorithm: "rsa-sha256".into(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                self.problem(
                    "whitelist.proof_password_file",
                    "is required with whitelist.proof_pkcs12",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "whitelist.proof_pkcs12",
                    "is required with whitelist.proof_password_file",
                );
                None
            }
        };
        WhitelistConfig {
            trust_anchors,
            intermediates,
            signer_cn,
            signer_ou,
            download,
            proof_signing,
        }
    }

    fn wado(&mut self, root: &mut toml::Table, p: &PublicationConfig) -> Option<WadoConfig> {
        let v = root.remove("wado")?;
        let k = "wado";
        let mut t = self.expect_table(v, k);
        let listen = self
            .opt_ip(&mut t, k, "listen")
            .unwrap_or(Some(IpAddr::from([0, 0, 0, 0])));
        let port = self.opt_port(&mut t, k, "port").unwrap_or(Some(8443));
        let certificate = self.req_path(&mut t, k, "certificate");
        let private_key = self.req_path(&mut t, k, "private_key");
        let client_ca = self.req_path(&mut t, k, "client_ca");
        // The KOS tells consumers where to retrieve: by default the same path.
        let from_kos = p.wado_base_url.as_deref().map(|u| {
            let rest = u.split_once("://").map_or(u, |(_, r)| r);
            rest.find('/')
                .map_or(String::new(), |i| rest[i..].to_string())
        });
        let base_path = match self.opt_str(&mut t, k, "base_path").flatten() {
            Some(b) if b.is_empty() || (b.starts_with('/') && !b.ends_with('/')) => Some(b),
            Some(b) => {
                self.problem(
                    "wado.base_path",
                    format!("`{b}` must start with / and not end with one (or be empty)"),
                );
                None
            }
            None => Some(from_kos.unwrap_or_else(|| "/wado".into())),
        };
        let timeout = self
            .opt_int(&mut t, k, "timeout_seconds", 1, 3600)
            .unwrap_or(Some(60));
        let max_connections = self
            .opt_int(&mut t, k, "max_connections", 1, 1024)
            .unwrap_or(Some(32));
        let introspection = match t.remove("introspection") {
            None => Some(None),
            Some(v) => {
                let k = "wado.introspection";
                let mut i = self.expect_table(v, k);
                let url = match self.opt_str(&mut i, k, "url").flatten() {
                    Some(u) if u.starts_with("https://") => Some(u),
                    Some(u) => {
                        self.problem(
                            "wado.introspection.url",
                            format!("`{u}` must be an https URL"),
                        );
                        None
                    }
                    None => {
                        self.problem("wado.introspection.url", "is required");
                        None
                    }
                };
                let trust_anchors = self.req_path(&mut i, k, "trust_anchors");
                let client_id = match self.opt_str(&mut i, k, "client_id").flatten() {
                    Some(c) if !c.is_empty() && !c.contains(':') => Some(c),
                    Some(c) => {
                        self.problem(
                            "wado.introspection.client_id",
                            format!("`{c}` must be non-empty and without `:`"),
                        );
                        None
                    }
                    None => {
                        self.problem("wado.introspection.client_id", "is required");
                        None
                    }
                };
                let secret = self.req_path(&mut i, k, "client_secret_file");
                let cache = self
                    .opt_int(&mut i, k, "cache_seconds", 0, 3600)
                    .unwrap_or(Some(60));
                self.finish(i, k);
                match (url, trust_anchors, client_id, secret, cache) {
                    (
                        Some(url),
                        Some(trust_anchors),
                        Some(client_id),
                        Some(client_secret_file),
                        Some(c),
                    ) => Some(Some(IntrospectionConfig {
                        url,
                        trust_anchors,
                        client_id,
                        client_secret_file,
                        cache: Duration::from_secs(c as u64),
                    })),
                    _ => None,
                }
            }
        };
        self.finish(t, k);
        Some(WadoConfig {
            listen: listen?,
            port: port?,
            certificate: certificate?,
            private_key: private_key?,
            client_ca: client_ca?,
            base_path: base_path?,
            timeout: Duration::from_secs(timeout? as u64),
            max_connections: max_connections? as usize,
            introspection: introspection?,
        })
    }

    fn dmp(&mut self, root: &mut toml::Table) -> Option<DmpConfig> {
        let v = root.remove("dmp")?;
        let k = "dmp";
        let mut t = self.expect_table(v, k);
        let url = self.opt_str(&mut t, k, "url").flatten();
        let url = match url {
            Some(u) if u.starts_with("https://") && !u.ends_with('/') => Some(u),
            Some(u) => {
                self.problem(
                    "dmp.url",
                    format!("`{u}` must be an https URL without a trailing slash"),
                );
                None
            }
            None => {
                self.problem("dmp.url", "is required");
                None
            }
        };
        let trust_anchors = self.req_path(&mut t, k, "trust_anchors");
        let pkcs12 = self.req_path(&mut t, k, "pkcs12");
        let password_file = self.req_path(&mut t, k, "password_file");
        let timeout = self
            .opt_int(&mut t, k, "timeout_seconds", 1, 600)
            .unwrap_or(Some(30));
        let probe_interval = self
            .opt_int(&mut t, k, "probe_interval_seconds", 5, 86_400)
            .unwrap_or(Some(60));
        let text = |r: &mut Reader, t: &mut toml::Table, key: &str, default: &str| {
            r.opt_str(t, k, key)
                .flatten()
                .unwrap_or_else(|| default.into())
        };
        let lps_id = text(self, &mut t, "lps_id", "");
        let lps_version = text(self, &mut t, "lps_version", env!("CARGO_PKG_VERSION"));
        let lps_homologation = text(self, &mut t, "lps_homologation", "");
        // The VIHF carries both; the DMP refuses a request without them.
        for (key, v) in [
            ("dmp.lps_id", &lps_id),
            ("dmp.lps_homologation", &lps_homologation),
        ] {
            if v.trim().is_empty() {
                self.problem(key, "is required (the VIHF's LPS identification)");
            }
        }
        let roles = self.opt_str_list(&mut t, k, "roles").unwrap_or_default();
        for (i, r) in roles.iter().enumerate() {
            if r.split('^').count() != 3 {
                self.problem(
                    &format!("dmp.roles[{i}]"),
                    format!("`{r}` must be code^codeSystem^display"),
                );
            }
        }
        if roles.is_empty() {
            self.problem(
                "dmp.roles",
                "needs the VIHF roles (profession, savoir-faire)",
            );
        }
        self.finish(t, k);
        Some(DmpConfig {
            url: url?,
            trust_anchors: trust_anchors?,
            pkcs12: pkcs12?,
            password_file: password_file?,
            timeout: Duration::from_secs(timeout? as u64),
            probe_interval: Duration::from_secs(probe_interval? as u64),
            lps_id,
            lps_version,
            lps_homologation,
            roles,
        })
    }

    fn publication(&mut self, root: &mut toml::Table) -> PublicationConfig {
        let mut p = self.section(root, "publication");
        let wado_base_url = self
            .opt_str(&mut p, "publication", "wado_base_url")
            .flatten()
            .and_then(|u| {
                let ok = (u.starts_with("https://") || u.starts_with("http://"))
                    && !u.ends_with('/')
                    && !u.contains(char::is_whitespace);
                if !ok {
                    self.problem(
                        "publication.wado_base_url",
                        format!("`{u}` must be an http(s) URL without a trailing slash"),
                    );
                }
                ok.then_some(u)
            });
        let uid_root = self.oid(&mut p, "uid_root");
        let source_id = self.oid(&mut p, "source_id");
        let institution_name = self
            .opt_str(&mut p, "publication", "institution_name")
            .flatten()
            .unwrap_or_else(|| "DRIMbox".into());
        let content_type = match p.remove("content_type") {
            None => None,
            Some(v) => {
                let mut t = self.expect_table(v, "publication.content_type");
                let k = "publication.content_type";
                let code = self.opt_str(&mut t, k, "code").flatten();
                let scheme = self.opt_str(&mut t, k, "scheme").flatten();
                let display = self.opt_str(&mut t, k, "display").flatten();
                self.finish(t, k);
                match (code, scheme, display) {
                    (Some(c), Some(s), Some(d)) => Some((c, s, d)),
                    _ => {
                        self.problem(k, "needs code, scheme and display");
                        None
                    }
                }
            }
        };
        let mut templates = Vec::new();
        match p.remove("templates") {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let k = format!("publication.templates[{i}]");
                    let mut t = self.expect_table(item, &k);
                    let rule = crate::exam::TemplateRule {
                        exam_code: self.opt_str(&mut t, &k, "exam_code").flatten(),
                        modality: self.opt_str(&mut t, &k, "modality").flatten(),
                        publish: self.opt_bool(&mut t, &k, "publish").flatten(),
                        hidden_from_patient: self
                            .opt_bool(&mut t, &k, "hidden_from_patient")
                            .flatten(),
                        hidden_from_professionals: self
                            .opt_bool(&mut t, &k, "hidden_from_professionals")
                            .flatten(),
                        hidden_from_legal_representatives: self
                            .opt_bool(&mut t, &k, "hidden_from_legal_representatives")
                            .flatten(),
                    };
                    self.finish(t, &k);
                    if rule.exam_code.is_none() && rule.modality.is_none() {
                        self.problem(&k, "needs exam_code or modality to match exams");
                    }
                    templates.push(rule);
                }
            }
            Some(other) => self.problem(
                "publication.templates",
                format!(
                    "must be an array of tables ([[publication.templates]]), not a {}",
                    type_name(&other)
                ),
            ),
        }
        let signing = match p.remove("signing") {
            None => None,
            Some(v) => {
                let k = "publication.signing";
                let mut t = self.expect_table(v, k);
                let pkcs12 = self.req_path(&mut t, k, "pkcs12");
                let password_file = self.req_path(&mut t, k, "password_file");
                let algorithm = self
                    .opt_str(&mut t, k, "algorithm")
                    .flatten()
                    .unwrap_or_else(|| "rsa-sha256".into());
                if algorithm != "rsa-sha256" && algorithm != "rsa-sha1" {
                    self.problem(
                        "publication.signing.algorithm",
                        format!("`{algorithm}` must be rsa-sha256 or rsa-sha1"),
                    );
                }
                self.finish(t, k);
                match (pkcs12, password_file) {
                    (Some(pkcs12), Some(password_file)) => Some(SigningConfig {
                        pkcs12,
                        password_file,
                        algorithm,
                    }),
                    _ => None,
                }
            }
        };
        self.finish(p, "publication");
        PublicationConfig {
            wado_base_url,
            uid_root,
            source_id,
            institution_name,
            content_type,
            templates,
            signing,
        }
    }
}

fn dotted(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

impl Reader {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn root(&mut self, t: toml::Table) -> toml::Table {
        t
    }

    fn expect_table(&mut self, v: toml::Value, key: &str) -> toml::Table {
        match v {
            toml::Value::Table(t) => t,
            other => {
                self.problem(key, format!("must be a table, not a {}", type_name(&other)));
                toml::Table::new()
            }
        }
    }

    fn section(&mut self, root: &mut toml::Table, name: &str) -> toml::Table {
        match root.remove(name) {
            None => toml::Table::new(),
            Some(v) => self.expect_table(v, name),
        }
    }

    /// Reports every key left in a table as unknown.
    fn finish(&mut self, t: toml::Table, section: &str) {
        for key in t.keys() {
            let what = if section.is_empty() {
                "unknown section or key"
            } else {
                "unknown key"
            };
            self.problem(&dotted(section, key), what);
        }
    }

    /// `None`: absent. `Some(None)`: present but not a string (already reported), so the caller
    /// must not fall back to a default.
    fn opt_str(&mut self, t: &mut toml::Table, section: &str, key: &str) -> Option<Option<String>> {
        match t.remove(key)? {
            toml::Value::String(s) => Some(Some(s)),
            other => {
                self.problem(
                    &dotted(section, key),
                    format!("must be a string, not a {}", type_name(&other)),
                );
                Some(None)
            }
        }
    }

    fn opt_ip(&mut self, t: &mut toml::Table, section: &str, key: &str) -> Option<Option<IpAddr>> {
        let s = self.opt_str(t, section, key)?;
        Some(s.and_then(|s| {
            let parsed = s.parse::<IpAddr>().ok();
            if parsed.is_none() {
                self.problem(&dotted(section, key), format!("`{s}` is not an IP address"));
            }
            parsed
        }))
    }

    fn opt_bool(&mut self, t: &mut toml::Table, section: &str, key: &str) -> Option<Option<bool>> {
        match t.remove(key)? {
            toml::Value::Boolean(b) => Some(Some(b)),
            other => {
                self.problem(
                    &dotted(section, key),
                    format!("must be true or false, not a {}", type_name(&other)),
                );
                Some(None)
            }
        }
    }

    fn opt_path(&mut self, t: &mut toml::Table, section: &str, key: &str) -> Option<PathBuf> {
        let s = self.opt_str(t, section, key)??;
        if !Path::new(&s).is_absolute() {
            self.problem(
                &dotted(section, key),
                format!("`{s}` must be an absolute path"),
            );
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn req_path(&mut self, t: &mut toml::Table, section: &str, key: &str) -> Option<PathBuf> {
        if !t.contains_key(key) {
            self.problem(&dotted(section, key), "is required");
            return None;
        }
        self.opt_path(t, section, key)
    }

    /// `None`: absent. `Some(None)`: present but invalid (already reported).
    fn opt_int(
        &mut self,
        t: &mut toml::Table,
        section: &str,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<Option<i64>> {
        let key_name = dotted(section, key);
        match t.remove(key)? {
            toml::Value::Integer(i) if (min..=max).contains(&i) => Some(Some(i)),
            toml::Value::Integer(i) => {
                self.problem(&key_name, format!("{i} is out of range {min}..={max}"));
                Some(None)
            }
            other => {
                self.problem(
                    &key_name,
                    format!("must be an integer, not a {}", type_name(&other)),
                );
                Some(None)
            }
        }
    }

    fn opt_port(&mut self, t: &mut toml::Table, section: &str, key: &str) -> Option<Option<u16>> {
        self.opt_int(t, section, key, 1, 65535)
            .map(|v| v.map(|p| p as u16))
    }

    fn opt_str_list(
        &mut self,
        t: &mut toml::Table,
        section: &str,
        key: &str,
    ) -> Option<Vec<String>> {
        let key_name = dotted(section, key);
        match t.remove(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::new();
                for (i, v) in items.into_iter().enumerate() {
                    match v {
                        toml::Value::String(s) => out.push(s),
                        other => self.problem(
                            &format!("{key_name}[{i}]"),
                            format!("must be a string, not a {}", type_name(&other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.problem(
                    &key_name,
                    format!("must be a list of strings, not a {}", type_name(&other)),
                );
                Some(Vec::new())
            }
        }
    }

    /// An AE title: 1 to 16 characters of the default repertoire, no backslash, no control
    /// characters, not only spaces (PS3.5 6.2, VR AE).
    fn ae_title(&mut self, key: &str, s: String) -> Option<String> {
        let trimmed = s.trim().to_string();
        let ok = !trimmed.is_empty()
            && s.len() <= 16
            && s.chars()
                .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\');
        if ok {
            Some(trimmed)
        } else {
            self.problem(
                key,
                format!(
                    "`{s}` is not a valid AE title (1-16 ASCII characters, no backslash, not blank)"
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::parse("[storage]\ndata_dir = \"/var/lib/drimbox\"\n").unwrap();
        assert_eq!(c.dicom.port, 11112);
        assert_eq!(c.dicom.ae_title, "DRIMBOX");
        assert_eq!(c.storage.run_dir, PathBuf::from("/var/lib/drimbox/run"));
        assert_eq!(c.archive.stable_after, Duration::from_secs(60));
        assert!(c.dicom.tls.is_none());
    }

    #[test]
    fn whitelist_download_keys() {
        let text = "[storage]\ndata_dir = \"/d\"\n[whitelist]\n\
                    url = \"https://lb.example/lb.xml\"\ntls_trust_anchors = \"/k/ca.pem\"\n\
                    daily_at = \"04:05\"\njitter_minutes = 10\n";
        let c = Config::parse(text).unwrap();
        let d = c.whitelist.download.unwrap();
        assert_eq!(d.daily_at_minutes, 4 * 60 + 5);
        assert_eq!(d.jitter, Duration::from_secs(600));
        assert_eq!(d.timeout, Duration::from_secs(60));
        assert_eq!(d.max_bytes, 16 * 1024 * 1024);
        assert!(c.whitelist.proof_signing.is_none());
        let bad = "[storage]\ndata_dir = \"/d\"\n[whitelist]\nurl = \"http://lb.example/\"\n\
                   daily_at = \"25:00\"\njitter_minutes = -1\nmax_bytes = 1\n\
                   proof_pkcs12 = \"/k/p.p12\"\nfrequency = 2\n";
        let problems = Config::parse(bad).unwrap_err();
        let k = keys(&problems);
        for expected in [
            "whitelist.url",
            "whitelist.daily_at",
            "whitelist.jitter_minutes",
            "whitelist.max_bytes",
            "whitelist.proof_password_file",
            "whitelist.frequency",
        ] {
            assert!(k.contains(&expected), "{expected} not in {k:?}");
        }
        // A URL without the CA of its server is refused, naming the missing key.
        let half = "[storage]\ndata_dir = \"/d\"\n[whitelist]\nurl = \"https://lb.example/\"\n";
        assert_eq!(
            keys(&Config::parse(half).unwrap_err()),
            ["whitelist.tls_trust_anchors"]
        );
    }

    #[test]
    fn publication_keys() {
        let text = "[storage]\ndata_dir = \"/d\"\n[publication]\n\
                    wado_base_url = \"https://db.example.fr/wado\"\nuid_root = \"1.2.250.1.999\"\n\
                    content_type = { code = \"04\", scheme = \"1.2.250.1.213.2.2\", display = \"x\" }\n\
                    [[publication.templates]]\nmodality = \"MG\"\nhidden_from_patient = true\n\
                    [publication.signing]\npkcs12 = \"/etc/drimbox/s.p12\"\npassword_file = \"/etc/drimbox/s.pass\"\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.publication.uid_root.as_deref(), Some("1.2.250.1.999"));
        assert_eq!(c.publication.templates[0].hidden_from_patient, Some(true));
        assert_eq!(c.publication.signing.unwrap().algorithm, "rsa-sha256");
        let bad = "[storage]\ndata_dir = \"/d\"\n[publication]\n\
                   wado_base_url = \"ftp://x/\"\nuid_root = \"1.02.x\"\ncolour = 1\n\
                   [[publication.templates]]\npublish = false\n\
                   [publication.signing]\npkcs12 = \"/s.p12\"\nalgorithm = \"dsa\"\n";
        let problems = Config::parse(bad).unwrap_err();
        let k = keys(&problems);
        for expected in [
            "publication.wado_base_url",
            "publication.uid_root",
            "publication.colour",
            "publication.templates[0]",
            "publication.signing.password_file",
            "publication.signing.algorithm",
        ] {
            assert!(k.contains(&expected), "{expected} not in {k:?}");
        }
    }

    #[test]
    fn status_and_supervisor_keys() {
        let c = Config::parse("[storage]\ndata_dir = \"/d\"\n").unwrap();
        assert_eq!((c.status.port, c.status.disk_warn_percent), (8080, 85));
        assert!(c.supervisor.run_as_service_users);
        assert_eq!(c.supervisor.heartbeat_timeout, Duration::from_secs(10));
        let text = "[storage]\ndata_dir = \"/d\"\n[dicom]\nport = 8080\n\
                    [status]\nlisten = \"lan\"\ndisk_warn_percent = 0\n\
                    [supervisor]\nrun_as_service_users = \"yes\"\nheartbeat_timeout_seconds = 1\n";
        let problems = Config::parse(text).unwrap_err();
        let k = keys(&problems);
        for expected in [
            "status.listen",
            "status.disk_warn_percent",
            "status.port",
            "supervisor.run_as_service_users",
            "supervisor.heartbeat_timeout_seconds",
        ] {
            assert!(
                k.contains(&expected),
                "{expected} not reported: {problems:?}"
            );
        }
        let clash = problems.iter().find(|p| p.key == "status.port").unwrap();
        assert_eq!(clash.message, "port 8080 is already used by dicom.port");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            colour = "blue"
            [storage]
            data_dir = "relative/dir"
            [dicom]
            port = "104"
            ae_title = "THIS AE TITLE IS FAR TOO LONG"
            calling_ae_titles = ["OK", "BAD\\AE", 3]
            max_pdu = 10
            typo_key = 1
            [log]
            level = "loud"
        "#;
        let problems = Config::parse(text).unwrap_err();
        let k = keys(&problems);
        for expected in [
            "colour",
            "storage.data_dir",
            "dicom.port",
            "dicom.ae_title",
            "dicom.calling_ae_titles[1]",
            "dicom.calling_ae_titles[2]",
            "dicom.max_pdu",
            "dicom.typo_key",
            "log.level",
        ] {
            assert!(k.contains(&expected), "missing {expected} in {k:?}");
        }
        let port = problems.iter().find(|p| p.key == "dicom.port").unwrap();
        assert!(port.message.contains("integer"), "{port}");
    }

    #[test]
    fn missing_data_dir_is_named() {
        let problems = Config::parse("[dicom]\nport = 104\n").unwrap_err();
        assert_eq!(keys(&problems), ["storage.data_dir"]);
    }

    #[test]
    fn tls_needs_all_three_files() {
        let problems =
            Config::parse("[storage]\ndata_dir=\"/d\"\n[dicom.tls]\ncertificate=\"/c.pem\"\n")
                .unwrap_err();
        assert_eq!(
            keys(&problems),
            ["dicom.tls.private_key", "dicom.tls.client_ca"]
        );
    }

    #[test]
    fn broken_toml_is_one_problem() {
        let problems = Config::parse("[storage\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("TOML"));
    }

    #[test]
    fn demo_text_parses() {
        let text = Config::demo_text(Path::new("/tmp/x"), 11112, "DRIMBOX", 8080, 2575);
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("/tmp/x/data"));
    }

    #[test]
    fn unwritable_directory_is_reported() {
        let mut c = Config::parse("[storage]\ndata_dir = \"/proc/drimbox\"\n").unwrap();
        c.storage.run_dir = PathBuf::from("/proc/drimbox-run");
        let problems = c.check_environment();
        assert_eq!(keys(&problems), ["storage.data_dir", "storage.run_dir"]);
    }

    /// The image's file (naming a site file in the same directory) and, if given, the site file.
    fn image_and_site(site: Option<&str>) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("drimbox.toml");
        let site_path = dir.path().join("site.toml");
        std::fs::write(
            &image,
            format!(
                "site = \"{}\"\n[storage]\ndata_dir = \"/d\"\n[dicom]\nport = 104\n\
                 calling_ae_titles = [\"CT1\", \"MR1\"]\n",
                site_path.display()
            ),
        )
        .unwrap();
        if let Some(text) = site {
            std::fs::write(&site_path, text).unwrap();
        }
        (dir, image, site_path)
    }

    #[test]
    fn without_its_site_file_the_image_file_is_the_configuration() {
        let (_dir, image, site) = image_and_site(None);
        let c = Config::read(&image).unwrap();
        assert_eq!(
            (c.site.as_deref(), c.site_merged),
            (Some(site.as_path()), false)
        );
        assert_eq!((c.dicom.port, c.dicom.ae_title.as_str()), (104, "DRIMBOX"));
        let plain = Config::parse("[storage]\ndata_dir = \"/d\"\n").unwrap();
        assert_eq!((plain.site, plain.site_merged), (None, false));
    }

    #[test]
    fn the_site_file_replaces_keys_and_lists_and_adds_sections() {
        let (_dir, image, _site) = image_and_site(Some(
            "[dicom]\nae_title = \"CABINET_X\"\ncalling_ae_titles = [\"US1\"]\n\
             [archive]\nstable_after_seconds = 30\n",
        ));
        let c = Config::read(&image).unwrap();
        assert!(c.site_merged);
        assert_eq!(c.dicom.ae_title, "CABINET_X");
        assert_eq!(
            c.dicom.port, 104,
            "a key the site file does not set stays the image's"
        );
        assert_eq!(
            c.dicom.calling_ae_titles,
            ["US1"],
            "a list is replaced, not extended"
        );
        assert_eq!(c.archive.stable_after, Duration::from_secs(30));
        assert_eq!(c.storage.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn a_problem_the_site_file_brings_names_that_file() {
        let (_dir, image, site) = image_and_site(Some(
            "[dicom]\nae_title = \"MUCH TOO LONG AE TITLE\"\ncolour = 1\n[storage]\nrun_dir = \"rel\"\n",
        ));
        let ConfigError::Invalid { path, problems } = Config::read(&image).unwrap_err() else {
            panic!("not an Invalid");
        };
        assert_eq!(path, image);
        let mut named: Vec<(&str, bool)> = problems
            .iter()
            .map(|p| {
                (
                    p.key.as_str(),
                    p.message.ends_with(&format!("(set in {})", site.display())),
                )
            })
            .collect();
        named.sort();
        assert_eq!(
            named,
            [
                ("dicom.ae_title", true),
                ("dicom.colour", true),
                ("storage.run_dir", true)
            ]
        );
        // A problem of the image's own keys does not blame the site file.
        let (_dir, image, _site) = image_and_site(Some("[dicom]\nmax_pdu = 1\n"));
        let text = std::fs::read_to_string(&image).unwrap() + "[hl7]\nport = 104\n";
        std::fs::write(&image, text).unwrap();
        let ConfigError::Invalid { problems, .. } = Config::read(&image).unwrap_err() else {
            panic!("not an Invalid");
        };
        let blamed: Vec<bool> = problems
            .iter()
            .map(|p| p.message.contains("(set in"))
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(blamed.iter().filter(|b| **b).count(), 1, "{problems:?}");
    }

    #[test]
    fn a_site_file_that_cannot_be_used_is_refused_by_name() {
        let (_dir, image, site) = image_and_site(Some("[dicom\n"));
        let e = Config::read(&image).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { path, problems } if *path == site
                && problems[0].message.starts_with("not valid TOML")),
            "{e}"
        );
        let (_dir, image, site) = image_and_site(Some("site = \"/elsewhere.toml\"\n"));
        let e = Config::read(&image).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { path, problems } if *path == site
                && problems[0].key == "site"),
            "{e}"
        );
        let problems =
            Config::parse("site = \"relative.toml\"\n[storage]\ndata_dir = \"/d\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["site"]);
        // Unreadable (a directory where the file should be): a read error naming it.
        let (_dir, image, site) = image_and_site(None);
        std::fs::create_dir(&site).unwrap();
        let e = Config::read(&image).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { path, .. } if *path == site),
            "{e}"
        );
    }
}
