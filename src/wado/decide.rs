//! What a retrieve naming a KOS gets (DRIM-M §4.3): the consumer found that manifest in the
//! DMP; we answer according to what became of it. Pure, over the exam's lots.
//!
//! * the manifest in force (the newest lot the DMP holds or may hold) → serve;
//! * a manifest a newer one replaced → 404, saying a newer manifest exists;
//! * the exam was withdrawn after it → 410 Gone;
//! * a UID we never published for this study → 404.
//!
//! "May hold": a lot whose ITI-41 left and whose answer is not in yet (`Sending`) may already
//! be in the DMP, where a consumer can read it; refusing it would fail a legitimate consumer.
//! Built, refused and superseded lots never reached the DMP: their KOS is unknown to it.

use crate::exam::{LotAction, LotStatus};

/// One lot as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub seq: u32,
    pub action: LotAction,
    pub status: LotStatus,
    /// The KOS SOP Instance UID (empty for a withdrawal).
    pub kos_uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Serve,
    /// 404: a newer manifest replaced this one.
    Replaced,
    /// 410: the exam was withdrawn from the DMP.
    Withdrawn,
    /// 404: no manifest with this UID was published for this study.
    Unknown,
}

impl Decision {
    pub fn status(&self) -> u16 {
        match self {
            Decision::Serve => 200,
            Decision::Replaced | Decision::Unknown => 404,
            Decision::Withdrawn => 410,
        }
    }

    /// The reason given to the consumer (and kept in the audit trail).
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Serve => "served",
            Decision::Replaced => {
                "this manifest was replaced: a newer KOS of this exam is in the DMP; retrieve with it"
            }
            Decision::Withdrawn => "the exam was withdrawn from the DMP",
            Decision::Unknown => "no manifest with this KOS-SOPInstanceUID was published for this study",
        }
    }
}

fn reached_dmp(m: &Manifest) -> bool {
    matches!(m.status, LotStatus::Accepted | LotStatus::Sending)
}

pub fn decide(lots: &[Manifest], kos_uid: &str) -> Decision {
    let mut published: Vec<&Manifest> = lots.iter().filter(|m| reached_dmp(m)).collect();
    published.sort_by_key(|m| m.seq);
    let named = published
        .iter()
        .any(|m| m.action != LotAction::Unpublish && m.kos_uid == kos_uid);
    if !named {
        return Decision::Unknown;
    }
    match published.last() {
        Some(m) if m.action == LotAction::Unpublish => Decision::Withdrawn,
        Some(m) if m.kos_uid == kos_uid => Decision::Serve,
        _ => Decision::Replaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(seq: u32, action: LotAction, status: LotStatus, kos: &str) -> Manifest {
        Manifest {
            seq,
            action,
            status,
            kos_uid: kos.into(),
        }
    }

    #[test]
    fn the_manifest_in_force_is_served_and_older_ones_say_replaced() {
        let lots = [
            lot(1, LotAction::Publish, LotStatus::Accepted, "1.1"),
            lot(2, LotAction::Replace, LotStatus::Accepted, "1.2"),
        ];
        assert_eq!(decide(&lots, "1.2"), Decision::Serve);
        assert_eq!(decide(&lots, "1.1"), Decision::Replaced);
        assert_eq!(decide(&lots, "1.3"), Decision::Unknown);
        assert_eq!(decide(&lots, ""), Decision::Unknown);
    }

    #[test]
    fn a_withdrawn_exam_is_gone_for_every_manifest_it_had() {
        let lots = [
            lot(1, LotAction::Publish, LotStatus::Accepted, "1.1"),
            lot(2, LotAction::Replace, LotStatus::Accepted, "1.2"),
            lot(3, LotAction::Unpublish, LotStatus::Accepted, ""),
        ];
        assert_eq!(decide(&lots, "1.2"), Decision::Withdrawn);
        assert_eq!(decide(&lots, "1.1"), Decision::Withdrawn);
        assert_eq!(decide(&lots, "9.9").status(), 404);
    }

    #[test]
    fn only_what_reached_the_dmp_counts() {
        // A replacement in flight may be in the DMP already: it is the one in force.
        let lots = [
            lot(1, LotAction::Publish, LotStatus::Accepted, "1.1"),
            lot(2, LotAction::Replace, LotStatus::Sending, "1.2"),
        ];
        assert_eq!(decide(&lots, "1.2"), Decision::Serve);
        assert_eq!(decide(&lots, "1.1"), Decision::Replaced);
        // Built, refused or superseded lots never did.
        let lots = [
            lot(1, LotAction::Publish, LotStatus::Accepted, "1.1"),
            lot(2, LotAction::Replace, LotStatus::Refused, "1.2"),
            lot(3, LotAction::Replace, LotStatus::Built, "1.3"),
            lot(4, LotAction::Unpublish, LotStatus::Superseded, ""),
        ];
        assert_eq!(decide(&lots, "1.1"), Decision::Serve);
        assert_eq!(decide(&lots, "1.2"), Decision::Unknown);
        assert_eq!(decide(&lots, "1.3"), Decision::Unknown);
        // A withdrawal in flight: the exam is (being) withdrawn.
        let lots = [
            lot(1, LotAction::Publish, LotStatus::Accepted, "1.1"),
            lot(2, LotAction::Unpublish, LotStatus::Sending, ""),
        ];
        assert_eq!(decide(&lots, "1.1"), Decision::Withdrawn);
    }
}
