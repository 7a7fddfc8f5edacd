//! The archive's half of a WADO-RS retrieve: the decision on the consumer's manifest
//! (`wado::decide`, over the exam's lots) and the files of one page of instances, opened here
//! and handed to the WADO-RS server as descriptors. The server's user cannot read the store:
//! what it may serve is exactly what the archive opens for it.

use std::fs::File;

use super::db::Db;
use super::model::{Retrieval, RetrieveDecision, RetrieveRequest, RetrievedInstance};
use super::store::{is_safe_uid, Layout};
use super::{db_failure, failure};
use crate::ipc::{ArchiveFailure, FailureKind};
use crate::wado::decide::{self, Decision, Manifest};

/// Largest page (descriptors held by the server at once).
pub const MAX_PAGE: u32 = 128;

pub fn retrieve(
    db: &Db,
    layout: &Layout,
    r: &RetrieveRequest,
) -> Result<(Retrieval, Vec<File>), ArchiveFailure> {
    let uids = std::iter::once(Some(&r.study_uid))
        .chain([r.series_uid.as_ref(), r.sop_uid.as_ref()])
        .flatten();
    for u in uids {
        if !is_safe_uid(u) {
            return Err(failure(FailureKind::Invalid, format!("`{u}` is not a UID")));
        }
    }
    let nothing = |decision| {
        Ok((
            Retrieval {
                decision,
                total: 0,
                transfer_syntaxes: Vec::new(),
                instances: Vec::new(),
            },
            Vec::new(),
        ))
    };
    let Some(exam) = db.exam(&r.study_uid).map_err(db_failure)? else {
        return nothing(RetrieveDecision::UnknownManifest);
    };
    let manifests: Vec<Manifest> = exam
        .lots
        .iter()
        .map(|l| Manifest {
            seq: l.facts.seq,
            action: l.facts.action,
            status: l.facts.status,
            kos_uid: l.kos_sop_uid.clone(),
        })
        .collect();
    match decide::decide(&manifests, &r.kos_uid) {
        Decision::Serve => {}
        Decision::Replaced => return nothing(RetrieveDecision::Replaced),
        Decision::Withdrawn => return nothing(RetrieveDecision::Withdrawn),
        Decision::Unknown => return nothing(RetrieveDecision::UnknownManifest),
    }
    // Publishable images only: rejected instances, rejection notes and missing files never.
    let mut matching: Vec<_> = exam
        .images
        .iter()
        .filter(|(sop, row)| {
            r.series_uid.as_ref().is_none_or(|s| *s == row.series_uid)
                && r.sop_uid.as_ref().is_none_or(|s| s == sop)
        })
        .collect();
    if matching.is_empty() {
        return nothing(RetrieveDecision::NotFound);
    }
    matching.sort_by(|a, b| (&a.1.series_uid, &a.0).cmp(&(&b.1.series_uid, &b.0)));
    let mut transfer_syntaxes: Vec<String> = Vec::new();
    for (_, row) in &matching {
        if !transfer_syntaxes.contains(&row.transfer_syntax) {
            transfer_syntaxes.push(row.transfer_syntax.clone());
        }
    }
    let total = matching.len() as u32;
    let mut instances = Vec::new();
    let mut files = Vec::new();
    for (sop, row) in matching
        .into_iter()
        .skip(r.offset as usize)
        .take(r.limit.clamp(1, MAX_PAGE) as usize)
    {
        let f = File::open(layout.abs(&row.file)).map_err(|e| {
            failure(
                FailureKind::Resources,
                format!("instance {sop}: its file cannot be opened: {e}"),
            )
        })?;
        // The size of what is streamed: the file as stored (Part 10 header and data set).
        let size = f
            .metadata()
            .map_err(|e| failure(FailureKind::Resources, format!("instance {sop}: {e}")))?
            .len();
        files.push(f);
        instances.push(RetrievedInstance {
            sop_uid: sop.clone(),
            series_uid: row.series_uid.clone(),
            transfer_syntax: row.transfer_syntax.clone(),
            size,
        });
    }
    Ok((
        Retrieval {
            decision: RetrieveDecision::Serve,
            total,
            transfer_syntaxes,
            instances,
        },
        files,
    ))
}
