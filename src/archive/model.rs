//! What the archive records, as stored values (JSON in redb) and as the views it hands out.
//!
//! Views never carry patient names, IDs or birth dates: they feed the status page and the CLI.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One stored instance, keyed by SOP Instance UID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub modality: Option<String>,
    /// Path of the file relative to the store root (`studies/<study>/<file>`).
    pub file: String,
    pub file_size: u64,
    pub dataset_offset: u64,
    pub dataset_sha256: String,
    pub received_at_ms: i64,
    pub calling_ae: String,
    /// 1 for the first version; +1 each time different bytes arrive under the same UID.
    pub version: u32,
    pub rejected: Option<Rejection>,
    /// This instance is itself an IOCM rejection note (never published, never counted as an image).
    pub is_rejection_note: bool,
    /// Indexed, but its file was gone at the last recovery.
    pub missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: String,
    pub note_sop_uid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesInfo {
    pub modality: Option<String>,
    pub instances: u32,
}

/// One study, keyed by Study Instance UID.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyRow {
    /// As received, from the first instance (kept for the identity checks of later issues).
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
    pub modalities: BTreeSet<String>,
    pub series: BTreeMap<String, SeriesInfo>,
    pub first_received_ms: i64,
    pub last_received_ms: i64,
    /// Image (non-note) instances stored, rejected ones included.
    pub instances: u32,
    pub rejected: u32,
    pub bytes: u64,
    pub rejection_notes: Vec<RejectionNoteRef>,
    pub stable: bool,
    /// Different identity seen in later instances of the same study (never silently merged).
    pub identity_conflicts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionNoteRef {
    pub sop_uid: String,
    pub code: String,
    pub received_ms: i64,
    pub references: u32,
}

/// Counters over the whole archive, for the status page and `drimbox status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub studies: u64,
    /// Studies whose first instance arrived since 00:00 UTC today.
    pub studies_today: u64,
    /// Not yet stable (instances still arriving within the quiet period).
    pub studies_waiting: u64,
    pub studies_stable: u64,
    pub instances: u64,
    pub rejected_instances: u64,
    pub rejection_notes: u64,
    /// Indexed instances whose file was missing at the last recovery.
    pub missing_files: u64,
    pub bytes: u64,
    /// Report messages recorded (HL7).
    #[serde(default)]
    pub reports: u64,
}

/// One recorded report message, keyed by its idempotence key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// Store-relative path of the message bytes (`reports/<name>.hl7`).
    pub file: String,
    pub received_ms: i64,
    #[serde(flatten)]
    pub facts: crate::ipc::ReportFacts,
}

/// A study as shown to readers: UIDs and counts, no patient data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyView {
    pub study_uid: String,
    pub has_patient_id: bool,
    pub has_accession: bool,
    pub modalities: Vec<String>,
    pub series: BTreeMap<String, SeriesInfo>,
    pub instances: Vec<InstanceView>,
    pub rejected: u32,
    pub rejection_notes: Vec<RejectionNoteRef>,
    pub first_received_ms: i64,
    pub last_received_ms: i64,
    pub stable: bool,
    pub identity_conflicts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub sop_instance_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub file: String,
    pub file_size: u64,
    pub dataset_offset: u64,
    pub dataset_sha256: String,
    pub version: u32,
    pub rejected: Option<Rejection>,
    pub is_rejection_note: bool,
    pub missing: bool,
}

impl InstanceView {
    pub fn from_row(sop: &str, r: &InstanceRow) -> InstanceView {
        InstanceView {
            sop_instance_uid: sop.to_string(),
            series_uid: r.series_uid.clone(),
            sop_class_uid: r.sop_class_uid.clone(),
            transfer_syntax: r.transfer_syntax.clone(),
            file: r.file.clone(),
            file_size: r.file_size,
            dataset_offset: r.dataset_offset,
            dataset_sha256: r.dataset_sha256.clone(),
            version: r.version,
            rejected: r.rejected.clone(),
            is_rejection_note: r.is_rejection_note,
            missing: r.missing,
        }
    }
}

/// A lot built for an exam, keyed by `<study>/<seq>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LotRow {
    #[serde(flatten)]
    pub facts: crate::exam::LotFacts,
    /// Store-relative directory of its files (`lots/<study>/SS000001`), an XDM subset.
    pub dir: String,
    pub files: Vec<String>,
    pub kos_sop_uid: String,
    pub kos_instance_number: u32,
    pub submission_set_uid: String,
    pub built_ms: i64,
    /// The sending, as the publisher reported it (DMP exchanges).
    #[serde(default)]
    pub delivery: Delivery,
}

/// Where a lot's delivery to the DMP stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Requests sent so far (ITI-41).
    pub attempts: u32,
    /// MessageID of the last ITI-41 sent.
    pub message_id: Option<String>,
    /// Not before this time (ms) is the next step tried (retry backoff).
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    /// The DMP's RegistryErrorList, when it refused the lot: (code, context).
    pub errors: Vec<(String, String)>,
    pub accepted_ms: Option<i64>,
    /// entryUUID the DMP gave the KOS, when known (learned by ITI-18).
    pub entry_uuid: Option<String>,
    /// Files of the exchanges kept in the lot's directory, in order.
    pub exchanges: Vec<String>,
}

/// An exam as the status page and the CLI see it: UIDs, state and reason, no patient data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamView {
    pub study_uid: String,
    pub state: crate::exam::ExamState,
    pub label: String,
    pub reason: Option<String>,
    pub images: u32,
    pub reports: u32,
    pub lots: u32,
    /// Last time anything arrived for it (image or report).
    pub updated_ms: i64,
}

/// One exam's whole history, for `drimbox exam`: UIDs, states, times, codes; no patient data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamHistory {
    pub exam: ExamView,
    pub reports: Vec<ReportLine>,
    pub lots: Vec<LotLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportLine {
    pub received_ms: i64,
    pub message_type: String,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LotLine {
    pub seq: u32,
    pub action: crate::exam::LotAction,
    pub status: crate::exam::LotStatus,
    pub kos_sop_uid: String,
    pub built_ms: i64,
    pub dir: String,
    pub delivery: Delivery,
}

/// Study- and series-level attributes the KOS repeats, read from the stored images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyAttributes {
    pub study_date: String,
    pub study_time: String,
    pub referring_physician: String,
    pub study_description: String,
    pub study_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesMaterial {
    pub series_uid: String,
    pub modality: String,
    pub description: String,
    /// (SOP Class UID, SOP Instance UID) of its publishable images, by instance UID.
    pub instances: Vec<(String, String)>,
}

/// Everything the publisher needs to send a built lot (or to settle one in flight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendWork {
    pub study_uid: String,
    pub lot: LotRow,
    /// The report message the lot was built from (for the VIHF), base64.
    pub report_base64: String,
    /// `KOS_1_1.DCM`, `SIGN_1.XML`, `SUBMISSION.XML` (or `WITHDRAWAL.XML`), base64.
    pub files: Vec<(String, String)>,
}

/// What the publisher is to do next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    Build(Box<ExamWork>),
    Send(Box<SendWork>),
}

/// Everything the publisher needs to build an exam's next lot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamWork {
    pub study_uid: String,
    /// The seq the new lot takes.
    pub seq: u32,
    /// A number no other lot of this box has had (durably reserved): the UIDs are made from it.
    pub lot_number: u64,
    pub action: crate::exam::NextAction,
    pub report_key: String,
    /// The report message as received (the CDA travels inside), base64.
    pub report_base64: String,
    pub study: StudyAttributes,
    pub series: Vec<SeriesMaterial>,
    pub images_digest: String,
    /// The accepted lot this one replaces, if any.
    pub previous: Option<LotRow>,
}

/// One committed step of a lot's delivery, as the status page lists the last ones: when, which
/// lot, which transactions the step carried, and where it left the lot. UIDs and codes only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    pub at_ms: i64,
    pub study_uid: String,
    pub lot_seq: u32,
    pub action: crate::exam::LotAction,
    /// `ITI-41`, `ITI-18`, `ITI-57` (none: a commit before the request leaves).
    pub transactions: Vec<String>,
    pub status: crate::exam::LotStatus,
    pub attempts: u32,
    pub error: Option<String>,
    /// The DMP's error codes when it refused the lot.
    pub dmp_errors: Vec<String>,
}

impl ExchangeRecord {
    /// The transaction a kept exchange file belongs to: `ITI41-2-request.mtom` → `ITI-41`.
    pub fn transaction_of(file: &str) -> Option<String> {
        let kind = file.split('-').next()?;
        let digits = kind.strip_prefix("ITI")?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| format!("ITI-{digits}"))
    }

    /// What the step came to, in an operator's words.
    pub fn outcome(&self) -> String {
        use crate::exam::LotStatus::*;
        match (self.status, &self.error) {
            (Accepted, _) => "accepted".into(),
            (Refused, _) if !self.dmp_errors.is_empty() => {
                format!("refused: {}", self.dmp_errors.join(", "))
            }
            (Refused, e) => format!("refused: {}", e.as_deref().unwrap_or("no reason given")),
            (Sending, Some(e)) => format!("retry scheduled: {e}"),
            (Sending, None) if self.transactions.is_empty() => "about to be sent".into(),
            (Sending, None) => "sent, awaiting the answer".into(),
            (Built, _) => "not sent".into(),
            (Superseded, _) => "superseded".into(),
        }
    }
}

/// One attempt of the whitelist updater, as the archive keeps it (the list's history): when,
/// why, what was fetched and what became of it. The list names DRIMbox operators, never
/// patients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhitelistAttempt {
    pub at_unix: i64,
    /// `schedule`, `start` (nothing installed or the last check too old), `retry`, `operator`.
    pub trigger: String,
    pub url: String,
    pub outcome: WhitelistOutcome,
    /// Why it failed (the download error, or the first failed check), for a person.
    pub reason: Option<String>,
    /// Of the bytes fetched.
    pub sha256: Option<String>,
    pub size: Option<u64>,
    /// DateDeGeneration and number of domains of the list fetched (when it parsed).
    pub generated: Option<String>,
    pub domains: Option<u64>,
    pub signer: Option<String>,
    /// The earliest notAfter of the signer's path, and the earliest nextUpdate of the CRLs used.
    pub certificates_expire_unix: Option<i64>,
    pub crls_next_update_unix: Option<i64>,
    /// The proof of verification, a file name under the whitelist directory's `proofs/`.
    pub proof: Option<String>,
    pub proof_signed: bool,
    /// The installed version's copy, a file name under the whitelist directory's `versions/`.
    #[serde(default)]
    pub version: Option<String>,
}

impl WhitelistAttempt {
    /// An attempt with its outcome and nothing yet known of a list.
    pub fn new(at_unix: i64, trigger: &str, url: &str, outcome: WhitelistOutcome) -> Self {
        WhitelistAttempt {
            at_unix,
            trigger: trigger.into(),
            url: url.into(),
            outcome,
            reason: None,
            sha256: None,
            size: None,
            generated: None,
            domains: None,
            signer: None,
            certificates_expire_unix: None,
            crls_next_update_unix: None,
            proof: None,
            proof_signed: false,
            version: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhitelistOutcome {
    /// Verified and installed as the list in service.
    Installed,
    /// Verified; the same bytes as the list in service.
    Unchanged,
    /// Fetched, and refused by the verification: the previous list stays.
    Refused,
    /// Not fetched (HTTP status, timeout, TLS, size): the previous list stays.
    FetchFailed,
    /// Verified, but could not be written: the previous list stays.
    InstallFailed,
}

impl WhitelistOutcome {
    pub fn succeeded(self) -> bool {
        matches!(
            self,
            WhitelistOutcome::Installed | WhitelistOutcome::Unchanged
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            WhitelistOutcome::Installed => "installed",
            WhitelistOutcome::Unchanged => "verified, unchanged",
            WhitelistOutcome::Refused => "refused",
            WhitelistOutcome::FetchFailed => "download failed",
            WhitelistOutcome::InstallFailed => "install failed",
        }
    }
}

/// What a WADO-RS retrieve asks the archive (one page of at most `limit` instances from
/// `offset`, in series then SOP Instance UID order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrieveRequest {
    pub study_uid: String,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
    /// The consumer's `KOS-SOPInstanceUID`.
    pub kos_uid: String,
    pub offset: u32,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrieveDecision {
    Serve,
    /// 404: a newer manifest replaced the one named.
    Replaced,
    /// 410: the exam was withdrawn.
    Withdrawn,
    /// 404: no manifest with that UID for this study.
    UnknownManifest,
    /// 404: the manifest is in force, but the series or instance asked for is not in the
    /// study (or was rejected).
    NotFound,
}

/// One instance to stream: its file follows the answer as a passed descriptor, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievedInstance {
    pub sop_uid: String,
    pub series_uid: String,
    pub transfer_syntax: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    pub decision: RetrieveDecision,
    /// Instances matching, over all pages.
    pub total: u32,
    /// The distinct transfer syntaxes over all pages (to negotiate before the first byte).
    pub transfer_syntaxes: Vec<String>,
    /// This page; as many descriptors follow the frame.
    pub instances: Vec<RetrievedInstance>,
}

/// One WADO-RS request, for the audit trail: who (the client certificate's subject, an
/// operator's organisation, not a person), what (UIDs), and the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub at_ms: i64,
    pub client: String,
    pub peer: String,
    pub path: String,
    pub study_uid: Option<String>,
    pub kos_uid: Option<String>,
    pub status: u16,
    /// `served`, or why not (a short, fixed phrase: counted by reason on the status page).
    pub outcome: String,
    pub instances: u32,
    pub bytes: u64,
}
