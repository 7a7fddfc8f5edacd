//! What the status page, `/status.json`, `/metrics` and `drimbox status` show: one value,
//! assembled from the supervisor's health record, the archive's counters and the disk, and
//! judged by a pure function. Schema documented in ARCHITECTURE.md ("Status schema").
//!
//! Nothing here may carry patient data: names, IDs and birth dates never reach this module; the
//! archive's summary is counts only.

use serde::{Deserialize, Serialize};

/// Version of the JSON schema of [`Snapshot`] (`/status.json`). Bump on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema: u32,
    /// When this snapshot was assembled: RFC 3339, UTC (`2026-12-02T10:00:00Z`), and ms since the epoch.
    pub generated_at: String,
    pub generated_at_ms: i64,
    pub verdict: Verdict,
    /// Why the verdict is not `ok`, one short sentence each (empty when ok).
    pub reasons: Vec<String>,
    pub firmware: Firmware,
    /// The box's DICOM AE title and port (configuration, not patient data).
    pub dicom: DicomEndpoint,
    pub services: Vec<ServiceStatus>,
    /// None when the data directory could not be examined.
    pub disk: Option<Disk>,
    /// None when the archive did not answer.
    pub archive: Option<ArchiveCounters>,
    /// Where the exams stand (None when the archive did not answer).
    #[serde(default)]
    pub exams: Option<Exams>,
    /// Sections later steps fill; each says "not configured" until then, never a made-up value.
    pub dmp: Section,
    /// The last steps of deliveries to the DMP, newest first.
    #[serde(default)]
    pub dmp_exchanges: Vec<ExchangeLine>,
    pub whitelist: Section,
    /// Image access by consumer DRIMboxes: served and refused requests by reason.
    #[serde(default = "Section::not_configured")]
    pub wado: Section,
    pub ota: Section,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Degraded,
    Failing,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Degraded => "degraded",
            Verdict::Failing => "failing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firmware {
    /// Crate version (`0.1.0`).
    pub version: String,
    /// Build identifier: the git commit the binary was built from, or `unknown`.
    pub build: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DicomEndpoint {
    pub ae_title: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Started, not yet reported ready.
    Starting,
    /// Reported ready and heartbeating.
    Ready,
    /// Exited or was killed; waiting for its backoff before the next start.
    Restarting,
    /// No heartbeat within the limit: considered hung (it is killed and restarted).
    Wedged,
    /// Crash loop: no more restarts; the supervisor exits non-zero after a grace period.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `archive`, `receiver`, ...
    pub name: String,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// Seconds since the current process started (0 when not running).
    pub uptime_seconds: u64,
    /// Restarts since the supervisor started.
    pub restarts: u32,
    /// Last error the service reported, or how its last process ended. No patient data.
    pub last_error: Option<String>,
    /// Counters the service reports (e.g. `associations`, `instances_stored`).
    pub counters: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// The archive's data directory.
    pub path: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
    /// `used_percent` at or above this is a warning (configuration `status.disk_warn_percent`).
    pub warn_percent: f64,
}

impl Disk {
    pub fn warning(&self) -> bool {
        self.used_percent >= self.warn_percent
    }
}

/// The archive's counters (`Request::Summary`): counts only, no patient data.
pub use crate::archive::model::Summary as ArchiveCounters;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exams {
    /// Exams per state label ("ready to publish", "on hold", …).
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// The exams that need a person (on hold) or were deliberately not published, and the
    /// most recent others: Study Instance UID, state and reason only.
    pub listed: Vec<ExamLine>,
    /// Exams not listed (the list is bounded).
    pub more: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamLine {
    pub study_uid: String,
    pub state: String,
    pub reason: Option<String>,
    pub images: u32,
    pub lots: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub configured: bool,
    /// Human-readable one-liner, e.g. "not configured".
    pub summary: String,
    /// Further facts, one short line each (reachability, dates).
    #[serde(default)]
    pub details: Vec<String>,
}

/// One step of a delivery to the DMP, as the page lists it: UIDs, codes and outcomes only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeLine {
    /// RFC 3339, UTC.
    pub at: String,
    pub study_uid: String,
    pub lot: u32,
    /// `publish`, `replace`, `unpublish`.
    pub action: String,
    /// `ITI-41`, `ITI-18 + ITI-41`, … (empty: committed before the request left).
    pub transactions: String,
    pub attempts: u32,
    pub outcome: String,
}

impl Section {
    pub fn not_configured() -> Section {
        Section {
            configured: false,
            summary: "not configured".into(),
            details: Vec::new(),
        }
    }
}
