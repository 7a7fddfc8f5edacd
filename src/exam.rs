//! What an exam is and what should happen to it next: a pure decision over what the archive
//! holds about one study (its images, the report messages naming it, the lots built for it).
//!
//! An exam is one Study Instance UID. It is published to the DMP as a KOS when it has a
//! publishable report and a stable study with at least one image that is not rejected, and
//! only if the identities agree: the images' Patient ID must be the report's IPP (or INS) and
//! the accession numbers must not differ. Anything else holds the exam with a reason the status
//! page shows; nothing is ever built for a patient the images do not belong to.
//!
//! Nothing here touches a disk or a clock: the archive gathers [`ExamInputs`], `now` is passed
//! in, and [`assess`] says where the exam stands. The publisher acts on [`ExamState::Ready`].

use serde::{Deserialize, Serialize};

use crate::ipc::{ReportFacts, ReportFlags};

/// What the images of a study say, as the archive indexed them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyFacts {
    pub patient_id: Option<String>,
    pub accession: Option<String>,
    /// Image instances that are not rejected (rejection notes excluded).
    pub images: u32,
    pub stable: bool,
    /// Later instances of the study carried another patient identity.
    pub identity_conflicts: u32,
    pub modalities: Vec<String>,
    /// SHA-256 over the sorted (SOP Instance UID, version) of the publishable images: when it
    /// changes after publication, the KOS must be replaced.
    pub images_digest: String,
}

/// One report message naming the study, in the order received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportInput {
    pub key: String,
    pub received_ms: i64,
    pub facts: ReportFacts,
}

/// What a lot built for this exam was for, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotFacts {
    pub seq: u32,
    pub action: LotAction,
    pub report_key: String,
    pub images_digest: String,
    pub status: LotStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LotAction {
    Publish,
    Replace,
    Unpublish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LotStatus {
    /// Built and archived, waiting for the publisher to send it.
    Built,
    /// Handed to the network: the outcome is unknown until the DMP answers, or, after a
    /// timeout or a crash, until a query for its uniqueId says whether the DMP has it.
    Sending,
    /// The DMP said Success.
    Accepted,
    /// The DMP refused it (the exam waits for an operator or a new message).
    Refused,
    /// The inputs changed before it was sent: never to be sent.
    Superseded,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExamInputs {
    pub study: Option<StudyFacts>,
    pub reports: Vec<ReportInput>,
    pub lots: Vec<LotFacts>,
}

/// The confidentiality a published KOS carries on top of the CDA's own (XDS confidentialityCode,
/// scheme 1.2.250.1.213.1.1.4.13).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visibility {
    /// MASQUE_PS: hidden from health professionals.
    pub hidden_from_professionals: bool,
    /// INVISIBLE_PATIENT: hidden from the patient (until the practitioner has told them).
    pub hidden_from_patient: bool,
    /// INVISIBLE_REPRESENTANTS_LEGAUX: hidden from the patient's legal representatives.
    pub hidden_from_legal_representatives: bool,
}

impl Visibility {
    /// The DMP confidentiality codes these flags add.
    pub fn codes(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.hidden_from_professionals {
            v.push("MASQUE_PS");
        }
        if self.hidden_from_patient {
            v.push("INVISIBLE_PATIENT");
        }
        if self.hidden_from_legal_representatives {
            v.push("INVISIBLE_REPRESENTANTS_LEGAUX");
        }
        v
    }
}

/// A practice's "document template" rule: for exams with this code (any serviceEvent code or
/// translation) or this modality, a default the message can still override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateRule {
    pub exam_code: Option<String>,
    pub modality: Option<String>,
    /// `Some(false)`: not published unless the message says DESTDMP=Y.
    pub publish: Option<bool>,
    pub hidden_from_patient: Option<bool>,
    pub hidden_from_professionals: Option<bool>,
    pub hidden_from_legal_representatives: Option<bool>,
}

impl TemplateRule {
    fn matches(&self, exam_codes: &[String], modalities: &[String]) -> bool {
        let code_ok = self
            .exam_code
            .as_ref()
            .is_none_or(|c| exam_codes.iter().any(|e| e == c));
        let modality_ok = self
            .modality
            .as_ref()
            .is_none_or(|m| modalities.iter().any(|e| e.eq_ignore_ascii_case(m)));
        (self.exam_code.is_some() || self.modality.is_some()) && code_ok && modality_ok
    }
}

/// Publication policy: by default publish, visible to everyone; template rules (first match
/// wins) change the default; the message's flags always have the last word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<TemplateRule>,
}

/// What the policy decided for one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub publish: bool,
    pub visibility: Visibility,
    /// Why not published, when not.
    pub why_not: Option<NotPublishedReason>,
}

impl Policy {
    pub fn decide(
        &self,
        flags: &ReportFlags,
        exam_codes: &[String],
        modalities: &[String],
    ) -> PolicyDecision {
        let rule = self
            .rules
            .iter()
            .find(|r| r.matches(exam_codes, modalities));
        let default = TemplateRule::default();
        let rule = rule.unwrap_or(&default);
        let publish = flags.dest_dmp.or(rule.publish).unwrap_or(true);
        let why_not = (!publish).then_some(match flags.dest_dmp {
            Some(false) => NotPublishedReason::MessageSaysNotForDmp,
            _ => NotPublishedReason::TemplateSaysNotForDmp,
        });
        PolicyDecision {
            publish,
            why_not,
            visibility: Visibility {
                hidden_from_professionals: flags
                    .masque_ps
                    .or(rule.hidden_from_professionals)
                    .unwrap_or(false),
                hidden_from_patient: flags
                    .invisible_patient
                    .or(rule.hidden_from_patient)
                    .unwrap_or(false),
                hidden_from_legal_representatives: flags
                    .invisible_rep_legaux
                    .or(rule.hidden_from_legal_representatives)
                    .unwrap_or(false),
            },
        }
    }
}

/// Why an exam waits for a person: shown on the status page as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// The images' Patient ID is neither the report's IPP nor its INS.
    PatientMismatch,
    /// The images carry no Patient ID to check against the report.
    ImagesWithoutPatientId,
    /// The images' accession number differs from the report's.
    AccessionMismatch,
    /// Instances of the study came with different patient identities.
    ConflictingImageIdentities,
    /// The DMP refused the last lot; a new message or an operator must act.
    RefusedByDmp,
}

impl HoldReason {
    pub fn describe(&self) -> &'static str {
        match self {
            HoldReason::PatientMismatch => {
                "the images' Patient ID is neither the report's IPP nor its INS"
            }
            HoldReason::ImagesWithoutPatientId => "the images carry no Patient ID",
            HoldReason::AccessionMismatch => {
                "the images' accession number differs from the report's"
            }
            HoldReason::ConflictingImageIdentities => {
                "instances of this study carry different patient identities"
            }
            HoldReason::RefusedByDmp => "the DMP refused the last submission",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotPublishedReason {
    /// DESTDMP=N in the message.
    MessageSaysNotForDmp,
    /// A template rule says this exam type is not published (and the message did not say Y).
    TemplateSaysNotForDmp,
    /// The report was withdrawn before anything was published.
    WithdrawnBeforePublication,
}

/// Why the publisher must replace or withdraw what the DMP holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    FirstPublication,
    /// A replacement report arrived (ORC-1 RO / OBX-11 C / MDM^T10) or a new report.
    ReportReplaced,
    /// Images were added or rejected since the published KOS.
    ImagesChanged,
    /// A deletion arrived (ORC-1 CA / OBX-11 D / MDM^T04).
    ReportDeleted,
    /// Every image was rejected (IOCM).
    NoImagesLeft,
    /// A later message says DESTDMP=N, or a rule now excludes it.
    NoLongerForDmp,
    /// Published again after a withdrawal.
    Republication,
}

/// The next thing the publisher must do for the exam.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum NextAction {
    Publish {
        report_key: String,
        why: Why,
        visibility: Visibility,
    },
    Replace {
        report_key: String,
        why: Why,
        visibility: Visibility,
        /// The accepted lot whose KOS this replaces.
        replaces_seq: u32,
    },
    Unpublish {
        why: Why,
        /// The accepted lot whose KOS is withdrawn.
        withdraws_seq: u32,
    },
}

impl NextAction {
    pub fn lot_action(&self) -> LotAction {
        match self {
            NextAction::Publish { .. } => LotAction::Publish,
            NextAction::Replace { .. } => LotAction::Replace,
            NextAction::Unpublish { .. } => LotAction::Unpublish,
        }
    }

    pub fn report_key(&self) -> Option<&str> {
        match self {
            NextAction::Publish { report_key, .. } | NextAction::Replace { report_key, .. } => {
                Some(report_key)
            }
            NextAction::Unpublish { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ExamState {
    /// Images, no report naming them yet.
    AwaitingReport,
    /// A report, no publishable image of its study yet (none received, or all rejected).
    AwaitingImages,
    /// Images still arriving (the study is not stable yet).
    AwaitingStability,
    OnHold(HoldReason),
    NotPublished(NotPublishedReason),
    /// The publisher must build a lot for this.
    Ready(NextAction),
    /// The lot for the next action is built and archived; the publisher sends it.
    LotBuilt {
        seq: u32,
        action: LotAction,
    },
    /// A lot is with the DMP and its outcome not known yet: nothing else happens to the exam
    /// until it is (never two versions in flight).
    Sending {
        seq: u32,
    },
    /// What the DMP holds is what the archive holds.
    UpToDate {
        published: bool,
    },
}

impl ExamState {
    /// One short phrase for the status page and the CLI.
    pub fn label(&self) -> &'static str {
        match self {
            ExamState::AwaitingReport => "awaiting report",
            ExamState::AwaitingImages => "awaiting images",
            ExamState::AwaitingStability => "images still arriving",
            ExamState::OnHold(_) => "on hold",
            ExamState::NotPublished(_) => "not for the DMP",
            ExamState::Ready(NextAction::Publish { .. }) => "ready to publish",
            ExamState::Ready(NextAction::Replace { .. }) => "ready to replace",
            ExamState::Ready(NextAction::Unpublish { .. }) => "ready to withdraw",
            ExamState::LotBuilt { .. } => "lot built",
            ExamState::Sending { .. } => "sending to the DMP",
            ExamState::UpToDate { published: true } => "published",
            ExamState::UpToDate { published: false } => "withdrawn",
        }
    }

    /// The reason behind a hold or a non-publication, for a person.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            ExamState::OnHold(r) => Some(r.describe()),
            ExamState::NotPublished(NotPublishedReason::MessageSaysNotForDmp) => {
                Some("the report message says DESTDMP=N")
            }
            ExamState::NotPublished(NotPublishedReason::TemplateSaysNotForDmp) => {
                Some("a document template rule excludes this exam type")
            }
            ExamState::NotPublished(NotPublishedReason::WithdrawnBeforePublication) => {
                Some("the report was withdrawn before publication")
            }
            _ => None,
        }
    }
}

/// Where the exam stands, from what the archive holds.
pub fn assess(inputs: &ExamInputs, policy: &Policy) -> ExamState {
    if let Some(l) = inputs.lots.iter().find(|l| l.status == LotStatus::Sending) {
        return ExamState::Sending { seq: l.seq };
    }
    let Some(report) = inputs.reports.iter().max_by_key(|r| r.received_ms) else {
        return ExamState::AwaitingReport;
    };
    let accepted = inputs
        .lots
        .iter()
        .filter(|l| l.status == LotStatus::Accepted)
        .max_by_key(|l| l.seq);
    // What the DMP shows now: the last accepted lot, unless it was a withdrawal.
    let live = accepted.filter(|l| l.action != LotAction::Unpublish);
    let deleting = report.facts.action == "delete";

    let study = inputs.study.as_ref();
    // A withdrawal needs no images and no identity check: it sends no patient data.
    if let (true, Some(live)) = (deleting, live) {
        return pending(
            inputs,
            NextAction::Unpublish {
                why: Why::ReportDeleted,
                withdraws_seq: live.seq,
            },
            "",
        );
    }
    if deleting {
        return match accepted {
            Some(_) => ExamState::UpToDate { published: false },
            None => ExamState::NotPublished(NotPublishedReason::WithdrawnBeforePublication),
        };
    }
    let Some(study) = study.filter(|s| s.images > 0) else {
        return match live {
            Some(live) if study.is_some() => pending(
                inputs,
                NextAction::Unpublish {
                    why: Why::NoImagesLeft,
                    withdraws_seq: live.seq,
                },
                "",
            ),
            // Withdrawn because every image was rejected: it stays withdrawn until new ones come.
            None if accepted.is_some() => ExamState::UpToDate { published: false },
            _ => ExamState::AwaitingImages,
        };
    };
    if let Some(reason) = identity_problem(study, &report.facts) {
        return ExamState::OnHold(reason);
    }
    let decision = policy.decide(
        &report.facts.flags,
        &report.facts.exam_codes,
        &study.modalities,
    );
    if !decision.publish {
        return match live {
            Some(live) => pending(
                inputs,
                NextAction::Unpublish {
                    why: Why::NoLongerForDmp,
                    withdraws_seq: live.seq,
                },
                "",
            ),
            None => ExamState::NotPublished(decision.why_not.expect("set when not publishing")),
        };
    }
    if !study.stable {
        return ExamState::AwaitingStability;
    }
    let refused_last = inputs
        .lots
        .iter()
        .max_by_key(|l| l.seq)
        .filter(|l| l.status == LotStatus::Refused);
    if let Some(refused) = refused_last {
        // Refused for exactly these inputs: sending them again would be refused again.
        if refused.report_key == report.key && refused.images_digest == study.images_digest {
            return ExamState::OnHold(HoldReason::RefusedByDmp);
        }
    }
    let action = match live {
        None => NextAction::Publish {
            report_key: report.key.clone(),
            why: if accepted.is_some() {
                Why::Republication
            } else {
                Why::FirstPublication
            },
            visibility: decision.visibility,
        },
        Some(live) if live.report_key != report.key => NextAction::Replace {
            report_key: report.key.clone(),
            why: Why::ReportReplaced,
            visibility: decision.visibility,
            replaces_seq: live.seq,
        },
        Some(live) if live.images_digest != study.images_digest => NextAction::Replace {
            report_key: report.key.clone(),
            why: Why::ImagesChanged,
            visibility: decision.visibility,
            replaces_seq: live.seq,
        },
        Some(_) => return ExamState::UpToDate { published: true },
    };
    pending(inputs, action, &study.images_digest)
}

/// `Ready(action)`, or `LotBuilt` when a lot for exactly this action and these inputs waits.
fn pending(inputs: &ExamInputs, action: NextAction, images_digest: &str) -> ExamState {
    let built = inputs.lots.iter().find(|l| {
        l.status == LotStatus::Built
            && l.action == action.lot_action()
            && action.report_key().is_none_or(|k| k == l.report_key)
            && (action.lot_action() == LotAction::Unpublish || l.images_digest == images_digest)
    });
    match built {
        Some(l) => ExamState::LotBuilt {
            seq: l.seq,
            action: l.action,
        },
        None => ExamState::Ready(action),
    }
}

/// Built lots that no longer match what the exam needs: never to be sent.
pub fn superseded_lots(inputs: &ExamInputs, state: &ExamState) -> Vec<u32> {
    let keep = match state {
        ExamState::LotBuilt { seq, .. } => Some(*seq),
        _ => None,
    };
    inputs
        .lots
        .iter()
        .filter(|l| l.status == LotStatus::Built && Some(l.seq) != keep)
        .map(|l| l.seq)
        .collect()
}

fn identity_problem(study: &StudyFacts, report: &ReportFacts) -> Option<HoldReason> {
    if study.identity_conflicts > 0 {
        return Some(HoldReason::ConflictingImageIdentities);
    }
    let Some(pid) = study.patient_id.as_deref() else {
        return Some(HoldReason::ImagesWithoutPatientId);
    };
    let matches_ipp = report.ipp.as_deref() == Some(pid);
    let matches_ins = report.ins == pid;
    if !matches_ipp && !matches_ins {
        return Some(HoldReason::PatientMismatch);
    }
    // Accession: a study without one is accepted (the report's is used); two that differ are not.
    if let (Some(a), Some(b)) = (study.accession.as_deref(), report.accession.as_deref()) {
        if a != b {
            return Some(HoldReason::AccessionMismatch);
        }
    }
    None
}

/// Who an exam is about and since when its pending work waits, for [`send_turns`]: the
/// patient's INS (else the images' Patient ID), and the arrival of the report the pending lot
/// was built from (else of the latest report).
pub fn send_claim(inputs: &ExamInputs, state: &ExamState) -> Option<(String, i64)> {
    let pending_lot = match state {
        ExamState::LotBuilt { seq, .. } | ExamState::Sending { seq } => Some(*seq),
        ExamState::Ready(_) => None,
        _ => return None,
    };
    let latest = inputs.reports.last();
    let patient = latest
        .map(|r| format!("{}@{}", r.facts.ins, r.facts.ins_oid))
        .or_else(|| inputs.study.as_ref().and_then(|s| s.patient_id.clone()))?;
    let since = pending_lot
        .and_then(|seq| inputs.lots.iter().find(|l| l.seq == seq))
        .and_then(|l| inputs.reports.iter().find(|r| r.key == l.report_key))
        .or(latest)
        .map_or(0, |r| r.received_ms);
    Some((patient, since))
}

/// Per-patient order: a patient's exams reach the DMP in the order their work arose, so that
/// the DMP never sees a later exam of a patient before an earlier one still pending (its
/// retries included). For each claim (patient, since), whether that exam may send now: only
/// the oldest claim of each patient may (ties: the first listed).
pub fn send_turns(claims: &[(String, i64)]) -> Vec<bool> {
    let mut first: std::collections::HashMap<&str, (i64, usize)> = Default::default();
    for (i, (patient, since)) in claims.iter().enumerate() {
        let e = first.entry(patient.as_str()).or_insert((*since, i));
        if *since < e.0 {
            *e = (*since, i);
        }
    }
    (0..claims.len())
        .map(|i| first[claims[i].0.as_str()].1 == i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(action: &str) -> ReportFacts {
        ReportFacts {
            message_type: "ORU^R01".into(),
            action: action.into(),
            ins: "162018885045327".into(),
            ins_oid: "1.2.250.1.213.1.4.10".into(),
            study_uids: vec!["1.2.3".into()],
            accession: Some("ACC1".into()),
            size: 10,
            sha256: "00".into(),
            ack_base64: String::new(),
            ipp: Some("IPP1".into()),
            flags: ReportFlags::default(),
            exam_codes: vec!["63337009".into()],
        }
    }

    fn report(key: &str, at: i64, action: &str) -> ReportInput {
        ReportInput {
            key: key.into(),
            received_ms: at,
            facts: facts(action),
        }
    }

    fn study() -> StudyFacts {
        StudyFacts {
            patient_id: Some("IPP1".into()),
            accession: Some("ACC1".into()),
            images: 20,
            stable: true,
            identity_conflicts: 0,
            modalities: vec!["MR".into()],
            images_digest: "d1".into(),
        }
    }

    fn lot(seq: u32, action: LotAction, key: &str, digest: &str, status: LotStatus) -> LotFacts {
        LotFacts {
            seq,
            action,
            report_key: key.into(),
            images_digest: digest.into(),
            status,
        }
    }

    fn ready_publish(state: &ExamState) -> bool {
        matches!(state, ExamState::Ready(NextAction::Publish { .. }))
    }

    #[test]
    fn images_and_report_that_agree_are_ready() {
        let inputs = ExamInputs {
            study: Some(study()),
            reports: vec![report("k1", 1, "publish")],
            lots: vec![],
        };
        let s = assess(&inputs, &Policy::default());
        assert_eq!(
            s,
            ExamState::Ready(NextAction::Publish {
                report_key: "k1".into(),
                why: Why::FirstPublication,
                visibility: Visibility::default()
            })
        );
        assert_eq!(s.label(), "ready to publish");
    }

    #[test]
    fn one_side_missing_waits() {
        let only_images = ExamInputs {
            study: Some(study()),
            ..Default::default()
        };
        assert_eq!(
            assess(&only_images, &Policy::default()),
            ExamState::AwaitingReport
        );
        let only_report = ExamInputs {
            reports: vec![report("k1", 1, "publish")],
            ..Default::default()
        };
        assert_eq!(
            assess(&only_report, &Policy::default()),
            ExamState::AwaitingImages
        );
        let all_rejected = ExamInputs {
            study: Some(StudyFacts {
                images: 0,
                ..study()
            }),
            reports: vec![report("k1", 1, "publish")],
            lots: vec![],
        };
        assert_eq!(
            assess(&all_rejected, &Policy::default()),
            ExamState::AwaitingImages
        );
        let arriving = ExamInputs {
            study: Some(StudyFacts {
                stable: false,
                ..study()
            }),
            reports: vec![report("k1", 1, "publish")],
            lots: vec![],
        };
        assert_eq!(
            assess(&arriving, &Policy::default()),
            ExamState::AwaitingStability
        );
    }

    #[test]
    fn identity_mismatches_hold_the_exam() {
        let hold = |s: StudyFacts| {
            assess(
                &ExamInputs {
                    study: Some(s),
                    reports: vec![report("k1", 1, "publish")],
                    lots: vec![],
                },
                &Policy::default(),
            )
        };
        assert_eq!(
            hold(StudyFacts {
                patient_id: Some("OTHER".into()),
                ..study()
            }),
            ExamState::OnHold(HoldReason::PatientMismatch)
        );
        assert_eq!(
            hold(StudyFacts {
                patient_id: None,
                ..study()
            }),
            ExamState::OnHold(HoldReason::ImagesWithoutPatientId)
        );
        assert_eq!(
            hold(StudyFacts {
                accession: Some("ACC2".into()),
                ..study()
            }),
            ExamState::OnHold(HoldReason::AccessionMismatch)
        );
        assert_eq!(
            hold(StudyFacts {
                identity_conflicts: 1,
                ..study()
            }),
            ExamState::OnHold(HoldReason::ConflictingImageIdentities)
        );
        // The INS is as good as the IPP; a study without accession takes the report's.
        assert!(ready_publish(&hold(StudyFacts {
            patient_id: Some("162018885045327".into()),
            accession: None,
            ..study()
        })));
        // Held even while images are still arriving: the reason shows at once.
        assert_eq!(
            hold(StudyFacts {
                patient_id: Some("OTHER".into()),
                stable: false,
                ..study()
            }),
            ExamState::OnHold(HoldReason::PatientMismatch)
        );
    }

    #[test]
    fn flags_and_templates_decide_publication_and_visibility() {
        let mut r = report("k1", 1, "publish");
        r.facts.flags.dest_dmp = Some(false);
        let inputs = ExamInputs {
            study: Some(study()),
            reports: vec![r.clone()],
            lots: vec![],
        };
        assert_eq!(
            assess(&inputs, &Policy::default()),
            ExamState::NotPublished(NotPublishedReason::MessageSaysNotForDmp)
        );

        let never_mr = Policy {
            rules: vec![TemplateRule {
                modality: Some("mr".into()),
                publish: Some(false),
                ..Default::default()
            }],
        };
        let plain = ExamInputs {
            study: Some(study()),
            reports: vec![report("k1", 1, "publish")],
            lots: vec![],
        };
        assert_eq!(
            assess(&plain, &never_mr),
            ExamState::NotPublished(NotPublishedReason::TemplateSaysNotForDmp)
        );
        // The message overrides the template.
        let mut yes = report("k1", 1, "publish");
        yes.facts.flags.dest_dmp = Some(true);
        yes.facts.flags.invisible_patient = Some(true);
        let forced = ExamInputs {
            study: Some(study()),
            reports: vec![yes],
            lots: vec![],
        };
        match assess(&forced, &never_mr) {
            ExamState::Ready(NextAction::Publish { visibility, .. }) => {
                assert_eq!(visibility.codes(), vec!["INVISIBLE_PATIENT"])
            }
            other => panic!("{other:?}"),
        }

        let hide_code = Policy {
            rules: vec![TemplateRule {
                exam_code: Some("63337009".into()),
                hidden_from_patient: Some(true),
                ..Default::default()
            }],
        };
        match assess(&plain, &hide_code) {
            ExamState::Ready(NextAction::Publish { visibility, .. }) => {
                assert!(visibility.hidden_from_patient && !visibility.hidden_from_professionals)
            }
            other => panic!("{other:?}"),
        }
        let mut shown = report("k1", 1, "publish");
        shown.facts.flags.invisible_patient = Some(false);
        shown.facts.flags.masque_ps = Some(true);
        let d = hide_code.decide(&shown.facts.flags, &shown.facts.exam_codes, &[]);
        assert_eq!(d.visibility.codes(), vec!["MASQUE_PS"]);
    }

    #[test]
    fn after_publication_changes_become_the_next_action() {
        let accepted = lot(1, LotAction::Publish, "k1", "d1", LotStatus::Accepted);
        let base = ExamInputs {
            study: Some(study()),
            reports: vec![report("k1", 1, "publish")],
            lots: vec![accepted.clone()],
        };
        assert_eq!(
            assess(&base, &Policy::default()),
            ExamState::UpToDate { published: true }
        );

        let mut replaced = base.clone();
        replaced.reports.push(report("k2", 2, "replace"));
        match assess(&replaced, &Policy::default()) {
            ExamState::Ready(NextAction::Replace {
                why, replaces_seq, ..
            }) => {
                assert_eq!((why, replaces_seq), (Why::ReportReplaced, 1))
            }
            other => panic!("{other:?}"),
        }

        let mut more_images = base.clone();
        more_images.study.as_mut().unwrap().images_digest = "d2".into();
        match assess(&more_images, &Policy::default()) {
            ExamState::Ready(NextAction::Replace { why, .. }) => {
                assert_eq!(why, Why::ImagesChanged)
            }
            other => panic!("{other:?}"),
        }

        let mut deleted = base.clone();
        deleted.reports.push(report("k3", 3, "delete"));
        deleted.study = None;
        assert_eq!(
            assess(&deleted, &Policy::default()),
            ExamState::Ready(NextAction::Unpublish {
                why: Why::ReportDeleted,
                withdraws_seq: 1
            })
        );

        let mut all_rejected = base.clone();
        all_rejected.study.as_mut().unwrap().images = 0;
        assert_eq!(
            assess(&all_rejected, &Policy::default()),
            ExamState::Ready(NextAction::Unpublish {
                why: Why::NoImagesLeft,
                withdraws_seq: 1
            })
        );

        let mut now_excluded = base.clone();
        let mut no = report("k4", 4, "replace");
        no.facts.flags.dest_dmp = Some(false);
        now_excluded.reports.push(no);
        assert_eq!(
            assess(&now_excluded, &Policy::default()),
            ExamState::Ready(NextAction::Unpublish {
                why: Why::NoLongerForDmp,
                withdraws_seq: 1
            })
        );

        // A replacement for another patient is held, not sent.
        let mut wrong = base.clone();
        let mut other = report("k5", 5, "replace");
        other.facts.ipp = Some("IPP9".into());
        other.facts.ins = "999".into();
        wrong.reports.push(other);
        assert_eq!(
            assess(&wrong, &Policy::default()),
            ExamState::OnHold(HoldReason::PatientMismatch)
        );
    }

    #[test]
    fn withdrawn_exams_and_built_lots() {
        let never = ExamInputs {
            study: Some(study()),
            reports: vec![report("k1", 1, "publish"), report("k2", 2, "delete")],
            lots: vec![],
        };
        assert_eq!(
            assess(&never, &Policy::default()),
            ExamState::NotPublished(NotPublishedReason::WithdrawnBeforePublication)
        );

        let mut withdrawn = never.clone();
        withdrawn.lots = vec![
            lot(1, LotAction::Publish, "k1", "d1", LotStatus::Accepted),
            lot(2, LotAction::Unpublish, "", "", LotStatus::Accepted),
        ];
        assert_eq!(
            assess(&withdrawn, &Policy::default()),
            ExamState::UpToDate { published: false }
        );
        // A new report after the withdrawal publishes again.
        withdrawn.reports.push(report("k3", 3, "publish"));
        match assess(&withdrawn, &Policy::default()) {
            ExamState::Ready(NextAction::Publish { why, .. }) => {
                assert_eq!(why, Why::Republication)
            }
            other => panic!("{other:?}"),
        }

        let mut built = ExamInputs {
            study: Some(study()),
            reports: vec![report("k1", 1, "publish")],
            lots: vec![lot(1, LotAction::Publish, "k1", "d1", LotStatus::Built)],
        };
        let state = assess(&built, &Policy::default());
        assert_eq!(
            state,
            ExamState::LotBuilt {
                seq: 1,
                action: LotAction::Publish
            }
        );
        assert!(superseded_lots(&built, &state).is_empty());
        // A new image before the lot went out: that lot is superseded, a new one is needed.
        built.study.as_mut().unwrap().images_digest = "d2".into();
        let state = assess(&built, &Policy::default());
        assert!(ready_publish(&state));
        assert_eq!(superseded_lots(&built, &state), vec![1]);
    }

    #[test]
    fn a_lot_in_flight_freezes_the_exam() {
        let mut inputs = ExamInputs {
            study: Some(study()),
            reports: vec![report("k1", 1, "publish"), report("k2", 2, "delete")],
            lots: vec![lot(1, LotAction::Publish, "k1", "d1", LotStatus::Sending)],
        };
        assert_eq!(
            assess(&inputs, &Policy::default()),
            ExamState::Sending { seq: 1 }
        );
        inputs.lots[0].status = LotStatus::Accepted;
        assert!(matches!(
            assess(&inputs, &Policy::default()),
            ExamState::Ready(NextAction::Unpublish { .. })
        ));
    }

    #[test]
    fn refused_lot_holds_until_something_changes() {
        let mut inputs = ExamInputs {
            study: Some(study()),
            reports: vec![report("k1", 1, "publish")],
            lots: vec![lot(1, LotAction::Publish, "k1", "d1", LotStatus::Refused)],
        };
        assert_eq!(
            assess(&inputs, &Policy::default()),
            ExamState::OnHold(HoldReason::RefusedByDmp)
        );
        inputs.reports.push(report("k2", 2, "replace"));
        assert!(ready_publish(&assess(&inputs, &Policy::default())));
    }
    #[test]
    fn a_patients_exams_take_turns_in_arrival_order() {
        let c = |p: &str, t: i64| (p.to_string(), t);
        assert_eq!(
            send_turns(&[c("A", 30), c("B", 10), c("A", 20), c("A", 20), c("C", 5)]),
            vec![false, true, true, false, true]
        );
        assert!(send_turns(&[]).is_empty());
    }
}
