//! The DICOM receiver: C-ECHO and C-STORE SCP.
//!
//! One thread per association (bounded by `dicom.max_associations`), on dicom-ul's synchronous
//! association: each association is a strict request/response loop, so a thread with socket
//! timeouts is the simplest correct shape, and it keeps file writes off any async runtime.
//! dicom-ul negotiates the association and sends; the data phase is read by `pdu_reader`, which
//! hands each PDV's data out of one reusable buffer instead of copying it twice.
//!
//! An instance's data set is streamed, PDV by PDV, into a staging file behind the Part 10 header;
//! memory per association is one PDU. When the last fragment is in: parse up to Pixel Data, check
//! the UIDs against the command, fsync, ask the archive to register (rename, directory fsync,
//! commit), and only then answer 0000.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::server::{AccessControl, DefaultNegotiation};
use dicom_ul::association::{Association as _, CloseSocket};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType,
    PresentationContextResultReason, UserIdentity,
};
use dicom_ul::{Pdu, ServerAssociation, ServerAssociationOptions};
use sha2::{Digest, Sha256};

use super::dimse::{self, status, Command};
use super::inspect::inspect_file;
use super::part10::file_meta;
use super::pdu_reader::{Event, PduError, PduReader};
use super::sop_classes;
use crate::archive::recovery::hex;
use crate::archive::store::Layout;
use crate::config::{Config, DicomConfig};
use crate::ipc::{
    self, FailureKind, IpcError, NewInstance, RegisterOutcome, Request, Response, Role,
};

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("DICOM TLS: {0}")]
    Tls(String),
}

/// Called/calling AE checks, with the standard rejection reasons (PS3.8 9.3.4).
#[derive(Debug, Clone)]
struct AeCheck {
    calling_allowed: Vec<String>,
}

impl AccessControl for AeCheck {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let calling = calling_ae_title.trim();
        if !self.calling_allowed.is_empty() && !self.calling_allowed.iter().any(|a| a == calling) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

type Options = ServerAssociationOptions<'static, AeCheck, DefaultNegotiation>;

struct Shared {
    options: Options,
    tls: bool,
    run_dir: PathBuf,
    staging: PathBuf,
    active: AtomicUsize,
    max_associations: usize,
    /// The maximum PDU length announced to peers.
    max_pdu: u32,
    seq: AtomicU64,
    /// Counters for the supervisor's health channel (and so the status page).
    associations: AtomicU64,
    associations_rejected: AtomicU64,
    instances_stored: AtomicU64,
    instances_refused: AtomicU64,
}

pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), ReceiverError> {
    let d = &config.dicom;
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(AeCheck {
            calling_allowed: d.calling_ae_titles.clone(),
        })
        .ae_title(d.ae_title.clone())
        .max_pdu_length(d.max_pdu)
        .strict(false)
        .read_timeout(d.timeout)
        .write_timeout(d.timeout);
    for a in sop_classes::accepted_abstract_syntaxes() {
        options = options.with_abstract_syntax(a);
    }
    for t in sop_classes::accepted_transfer_syntaxes() {
        options = options.with_transfer_syntax(t);
    }
    if let Some(tls) = &d.tls {
        options = options.tls_config(tls_server_config(tls)?);
    }
    let addr = SocketAddr::new(d.listen, d.port);
    let listener = crate::supervisor::sandbox::tcp_listener(addr, "dicom")
        .map_err(|source| ReceiverError::Bind { addr, source })?;
    let shared = Arc::new(Shared {
        options,
        tls: d.tls.is_some(),
        run_dir: config.storage.run_dir.clone(),
        staging: Layout::new(&config.storage.data_dir).staging(),
        active: AtomicUsize::new(0),
        max_associations: d.max_associations,
        max_pdu: d.max_pdu,
        seq: AtomicU64::new(0),
        associations: AtomicU64::new(0),
        associations_rejected: AtomicU64::new(0),
        instances_stored: AtomicU64::new(0),
        instances_refused: AtomicU64::new(0),
    });
    log::info!(
        "receiver ready: AE {} on {addr}{}",
        d.ae_title,
        if d.tls.is_some() { " (TLS)" } else { "" }
    );
    accept_loop(&listener, &shared, d, &stop);
    log::info!("receiver stopped");
    Ok(())
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, d: &DicomConfig, stop: &AtomicBool) {
    let counters = || {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("associations".to_string(), c(&shared.associations)),
            (
                "associations_rejected".to_string(),
                c(&shared.associations_rejected),
            ),
            (
                "associations_active".to_string(),
                shared.active.load(Ordering::Relaxed) as u64,
            ),
            ("instances_stored".to_string(), c(&shared.instances_stored)),
            (
                "instances_refused".to_string(),
                c(&shared.instances_refused),
            ),
        ]
        .into()
    };
    crate::control::accept_loop(listener, stop, d.timeout, counters, |stream, peer| {
        // Count the association before its thread starts, so a burst cannot overshoot the limit.
        let active = shared.active.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let over_limit = active >= shared.max_associations;
        let spawned = std::thread::Builder::new()
            .name("association".into())
            .spawn(move || {
                if over_limit {
                    shared.associations_rejected.fetch_add(1, Ordering::Relaxed);
                    reject_busy(stream, peer);
                } else {
                    shared.associations.fetch_add(1, Ordering::Relaxed);
                    handle(stream, peer, &shared);
                }
                shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::error!("cannot start association thread: {e}");
        }
    });
}

/// Over the association limit: read the request and answer A-ASSOCIATE-RJ (transient,
/// service-provider presentation, local-limit-exceeded) instead of queueing it.
fn reject_busy(mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 6];
    if stream.read_exact(&mut head).is_err() {
        return;
    }
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as u64;
    // Drain the request (bounded) so the peer reads our answer rather than a reset.
    let _ = io::copy(&mut (&mut stream).take(len.min(1 << 20)), &mut io::sink());
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut buf = Vec::new();
    if dicom_ul::write_pdu(&mut buf, &rj).is_ok() {
        let _ = stream.write_all(&buf);
    }
    log::warn!("association from {peer} rejected: limit of concurrent associations reached");
}

fn handle(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    if shared.tls {
        match shared.options.establish_tls(stream) {
            Ok(assoc) => serve(assoc, peer, shared),
            Err(e) => log::warn!("association from {peer} not established (TLS): {e}"),
        }
    } else {
        // dicom-ul 0.10.1 (with its sync-tls feature) spins forever when the first read of a
        // plain association times out with nothing received: it then probes the empty buffer
        // for a TLS ClientHello in a loop that never ends. So the first byte is awaited here,
        // under the socket's read timeout, and must be an A-ASSOCIATE-RQ (PDU type 01).
        let mut first = [0u8; 1];
        match stream.peek(&mut first) {
            Ok(1) if first[0] == 0x01 => {}
            Ok(1) if first[0] == 0x16 => {
                log::warn!("connection from {peer} speaks TLS to the plain DICOM port; closed");
                return;
            }
            Ok(1) => {
                log::warn!("connection from {peer} is not a DICOM association request; closed");
                return;
            }
            Ok(_) => return,
            Err(e) => {
                log::warn!(
                    "connection from {peer} sent nothing ({}); closing",
                    e.kind()
                );
                return;
            }
        }
        match shared.options.establish(stream) {
            Ok(assoc) => serve(assoc, peer, shared),
            Err(e) => log::warn!("association from {peer} not established: {e}"),
        }
    }
}

/// An instance being received: its command, and the staging file its bytes go to.
struct Incoming {
    message_id: u16,
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    staging_name: String,
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    meta_len: u64,
    written: u64,
    /// Bytes of the file already handed to the kernel for writeback (see `start_writeback`).
    flushed_to: u64,
    /// Known once the data set was parsed (for the journal's STUDY_UID field).
    study_uid: Option<String>,
    /// First failure; the rest of the data set is read and discarded, then this is answered.
    failed: Option<(u16, String)>,
}

impl Incoming {
    fn fail(&mut self, status: u16, why: impl Into<String>) {
        if self.failed.is_none() {
            self.failed = Some((status, why.into()));
        }
        self.file = None;
        let _ = fs::remove_file(&self.path);
    }
}

/// Dirty bytes after which the receiver asks the kernel to start writing them out.
const WRITEBACK_CHUNK: u64 = 128 * 1024;

impl Incoming {
    /// Starts (does not wait for) writeback of what was written since the last call, once a
    /// chunk has accumulated. The disk then works while the next PDUs arrive, and the fsync
    /// that must precede the acknowledgement finds little left to do: on a 512 KiB instance it
    /// is most of the difference between "fsync at the end" and the disk's streaming rate.
    /// Advisory only: durability still comes from the `sync_all` in `store`.
    fn start_writeback(&mut self) {
        let end = self.meta_len + self.written;
        if end - self.flushed_to < WRITEBACK_CHUNK {
            return;
        }
        if let Some(f) = &self.file {
            // SAFETY: sync_file_range on our own open descriptor, over a range we wrote.
            unsafe {
                libc::sync_file_range(
                    f.as_raw_fd(),
                    self.flushed_to as libc::off64_t,
                    (end - self.flushed_to) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.flushed_to = end;
    }
}

impl Drop for Incoming {
    /// An instance never finished (abort, timeout, crash of the peer) leaves no file behind.
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

struct Association<'a> {
    shared: &'a Shared,
    calling_ae: String,
    contexts: Vec<(u8, String, String)>,
    archive: Option<ipc::Client>,
    assoc_id: u64,
}

fn serve<S>(mut assoc: ServerAssociation<S>, peer: SocketAddr, shared: &Shared)
where
    S: Read + Write + CloseSocket,
{
    let mut a = Association {
        shared,
        calling_ae: assoc.peer_ae_title().trim().to_string(),
        contexts: assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    pc.abstract_syntax.clone(),
                    pc.transfer_syntax.clone(),
                )
            })
            .collect(),
        archive: None,
        assoc_id: shared.seq.fetch_add(1, Ordering::Relaxed),
    };
    log::info!(
        peer_ae = a.calling_ae.as_str();
        "association {} from {} ({peer}): {} presentation context(s) accepted",
        a.assoc_id,
        a.calling_ae,
        a.contexts.len()
    );
    let mut command = Vec::new();
    let mut incoming: Option<Incoming> = None;
    let mut stored = 0u64;
    // The data phase is read by our own PDU reader (see pdu_reader.rs); dicom-ul still
    // negotiates, sends and aborts. Its own read buffer is empty here: a peer may send
    // nothing after its A-ASSOCIATE-RQ before it has our A-ASSOCIATE-AC (PS3.8 9.2).
    let mut reader = PduReader::new(shared.max_pdu);
    loop {
        let event = match reader.next(assoc.inner_stream()) {
            Ok(e) => e,
            Err(PduError::Closed) => {
                log::warn!("association {}: connection closed by the peer", a.assoc_id);
                return;
            }
            Err(e) => {
                log::warn!("association {}: {e}; aborting", a.assoc_id);
                let _ = assoc.abort();
                return;
            }
        };
        match event {
            Event::Pdv {
                pc,
                command: is_command,
                last,
            } => {
                let piece = Fragment {
                    pc,
                    is_command,
                    last,
                    data: reader.data(),
                };
                match a.on_pdv(piece, &mut command, &mut incoming) {
                    Ok(Some(reply)) => {
                        if reply.1 == status::SUCCESS && reply.0 == dimse::C_STORE_RSP {
                            stored += 1;
                        }
                        if let Err(e) = send_command(&mut assoc, reply.2, &reply.3) {
                            log::warn!("association {}: sending response: {e}", a.assoc_id);
                            let _ = assoc.abort();
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(why) => {
                        log::warn!("association {}: {why}; aborting", a.assoc_id);
                        let _ = assoc.abort();
                        return;
                    }
                }
            }
            Event::Other(Pdu::ReleaseRQ) => {
                let _ = assoc.send(&Pdu::ReleaseRP);
                log::info!(
                    "association {} released: {stored} instance(s) stored",
                    a.assoc_id
                );
                return;
            }
            Event::Other(Pdu::AbortRQ { .. }) => {
                log::warn!("association {} aborted by peer", a.assoc_id);
                return;
            }
            Event::Other(other) => {
                log::warn!("association {}: unexpected PDU {other:?}", a.assoc_id);
                let _ = assoc.abort();
                return;
            }
        }
    }
}

/// One piece of a PDV, as the PDU reader handed it out.
struct Fragment<'a> {
    pc: u8,
    is_command: bool,
    /// The last piece of the last fragment of its command or data set.
    last: bool,
    data: &'a [u8],
}

/// (command field, status, presentation context id, command bytes)
type Reply = (u16, u16, u8, Vec<u8>);

fn send_command<S>(assoc: &mut ServerAssociation<S>, pc: u8, bytes: &[u8]) -> Result<(), String>
where
    S: Read + Write + CloseSocket,
{
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: bytes.to_vec(),
            }],
        })
        .map_err(|e| e.to_string())
}

impl Association<'_> {
    fn on_pdv(
        &mut self,
        pdv: Fragment<'_>,
        command: &mut Vec<u8>,
        incoming: &mut Option<Incoming>,
    ) -> Result<Option<Reply>, String> {
        if pdv.is_command {
            if incoming.is_some() {
                return Err("command fragment while a data set is still expected".into());
            }
            if command.len() + pdv.data.len() > 64 * 1024 {
                return Err("command set larger than 64 KiB".into());
            }
            command.extend_from_slice(pdv.data);
            if !pdv.last {
                return Ok(None);
            }
            let cmd = Command::decode(command).map_err(|e| e.to_string())?;
            command.clear();
            self.on_command(cmd, pdv.pc, incoming)
        } else {
            let Some(inc) = incoming.as_mut() else {
                return Err("data fragment without a command".into());
            };
            if inc.failed.is_none() {
                if let Some(f) = inc.file.as_mut() {
                    match f.write_all(pdv.data) {
                        Ok(()) => {
                            inc.hasher.update(pdv.data);
                            inc.written += pdv.data.len() as u64;
                            inc.start_writeback();
                        }
                        Err(e) => inc.fail(status::OUT_OF_RESOURCES, storage_error(&e)),
                    }
                }
            }
            if !pdv.last {
                return Ok(None);
            }
            let inc = incoming.take().expect("checked");
            let pc = pdv.pc;
            Ok(Some(self.finish(inc, pc)))
        }
    }

    fn on_command(
        &mut self,
        cmd: Command,
        pc: u8,
        incoming: &mut Option<Incoming>,
    ) -> Result<Option<Reply>, String> {
        let message_id = cmd.message_id().map_err(|e| e.to_string())?;
        let field = cmd.command_field().map_err(|e| e.to_string())?;
        let context = self
            .contexts
            .iter()
            .find(|(id, _, _)| *id == pc)
            .cloned()
            .ok_or_else(|| format!("presentation context {pc} was not accepted"))?;
        match field {
            dimse::C_ECHO_RQ => {
                let bytes = dimse::Response {
                    command_field: dimse::C_ECHO_RSP,
                    message_id_responded: message_id,
                    sop_class: dimse::VERIFICATION,
                    sop_instance: None,
                    status: status::SUCCESS,
                    error_comment: None,
                }
                .encode();
                Ok(Some((dimse::C_ECHO_RSP, status::SUCCESS, pc, bytes)))
            }
            dimse::C_STORE_RQ => {
                if !cmd.has_data_set() {
                    return Err("C-STORE-RQ without a data set".into());
                }
                let sop_class = cmd.affected_sop_class().unwrap_or_default();
                let sop_instance = cmd.affected_sop_instance().unwrap_or_default();
                let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
                let staging_name = format!("{}-{}-{seq}.part", std::process::id(), self.assoc_id);
                let path = self.shared.staging.join(&staging_name);
                let mut inc = Incoming {
                    message_id,
                    sop_class,
                    sop_instance,
                    transfer_syntax: context.2.clone(),
                    staging_name,
                    path,
                    file: None,
                    hasher: Sha256::new(),
                    meta_len: 0,
                    written: 0,
                    flushed_to: 0,
                    study_uid: None,
                    failed: None,
                };
                if inc.sop_class != context.1 {
                    inc.failed = Some((
                        status::SOP_CLASS_NOT_SUPPORTED,
                        "SOP Class differs from the presentation context".into(),
                    ));
                } else {
                    let meta = file_meta(
                        &inc.sop_class,
                        &inc.sop_instance,
                        &inc.transfer_syntax,
                        &self.calling_ae,
                    );
                    match File::create_new(&inc.path) {
                        Ok(mut f) => match f.write_all(&meta) {
                            Ok(()) => {
                                inc.meta_len = meta.len() as u64;
                                inc.file = Some(f);
                            }
                            Err(e) => {
                                inc.file = Some(f);
                                inc.fail(status::OUT_OF_RESOURCES, storage_error(&e));
                            }
                        },
                        Err(e) => inc.fail(status::OUT_OF_RESOURCES, storage_error(&e)),
                    }
                }
                *incoming = Some(inc);
                Ok(None)
            }
            other => Err(format!("unsupported DIMSE command 0x{other:04X}")),
        }
    }

    /// The whole data set is in: verify, make durable, register, and say how it went.
    fn finish(&mut self, mut inc: Incoming, pc: u8) -> Reply {
        let (status, comment) = match self.store(&mut inc) {
            Ok(outcome) => {
                self.shared.instances_stored.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    study_uid = inc.study_uid.as_deref().unwrap_or(""),
                    sop_uid = inc.sop_instance.as_str(),
                    peer_ae = self.calling_ae.as_str();
                    "stored {} ({:?}, {} bytes) from {}",
                    inc.sop_instance,
                    outcome,
                    inc.written,
                    self.calling_ae
                );
                (status::SUCCESS, None)
            }
            Err((status, why)) => {
                self.shared
                    .instances_refused
                    .fetch_add(1, Ordering::Relaxed);
                inc.fail(status, why.clone());
                log::warn!(
                    study_uid = inc.study_uid.as_deref().unwrap_or(""),
                    sop_uid = inc.sop_instance.as_str(),
                    peer_ae = self.calling_ae.as_str(),
                    dicom_status = format!("{status:04X}").as_str();
                    "C-STORE {} from {} refused with {status:04X}: {why}",
                    inc.sop_instance,
                    self.calling_ae
                );
                (status, Some(why))
            }
        };
        let bytes = dimse::Response {
            command_field: dimse::C_STORE_RSP,
            message_id_responded: inc.message_id,
            sop_class: &inc.sop_class,
            sop_instance: Some(&inc.sop_instance),
            status,
            error_comment: comment.as_deref(),
        }
        .encode();
        (dimse::C_STORE_RSP, status, pc, bytes)
    }

    fn store(&mut self, inc: &mut Incoming) -> Result<RegisterOutcome, (u16, String)> {
        if let Some(f) = inc.failed.clone() {
            return Err(f);
        }
        let file = inc.file.as_mut().expect("no failure, so a file");
        file.flush()
            .map_err(|e| (status::OUT_OF_RESOURCES, storage_error(&e)))?;
        let seen =
            inspect_file(&inc.path).map_err(|e| (status::CANNOT_UNDERSTAND, e.to_string()))?;
        let need = |v: Option<String>, what: &str| {
            v.ok_or_else(|| (status::CANNOT_UNDERSTAND, format!("data set lacks {what}")))
        };
        let study_uid = need(seen.study_uid, "Study Instance UID")?;
        inc.study_uid = Some(study_uid.clone());
        let series_uid = need(seen.series_uid, "Series Instance UID")?;
        let sop_uid = need(seen.sop_instance_uid, "SOP Instance UID")?;
        let sop_class = need(seen.sop_class_uid, "SOP Class UID")?;
        if sop_uid != inc.sop_instance {
            return Err((
                status::DATASET_MISMATCH,
                "SOP Instance UID differs from the command".into(),
            ));
        }
        if sop_class != inc.sop_class {
            return Err((
                status::DATASET_MISMATCH,
                "SOP Class UID differs from the command".into(),
            ));
        }
        for (what, uid) in [
            ("Study", &study_uid),
            ("Series", &series_uid),
            ("SOP", &sop_uid),
        ] {
            if !crate::archive::store::is_safe_uid(uid) {
                return Err((
                    status::CANNOT_UNDERSTAND,
                    format!("{what} Instance UID is not a valid UID"),
                ));
            }
        }
        // No fsync here: the archive flushes the file together with its directory and the index
        // (one round, see ARCHITECTURE.md), and answers only once all three are durable.
        let request = Request::RegisterInstance(Box::new(NewInstance {
            staging_name: inc.staging_name.clone(),
            sop_class_uid: sop_class,
            sop_instance_uid: sop_uid,
            study_uid,
            series_uid,
            transfer_syntax: inc.transfer_syntax.clone(),
            modality: seen.modality,
            patient_id: seen.patient_id,
            patient_name: seen.patient_name,
            accession_number: seen.accession_number,
            file_size: inc.meta_len + inc.written,
            dataset_offset: inc.meta_len,
            dataset_sha256: hex(&std::mem::take(&mut inc.hasher).finalize()),
            calling_ae: self.calling_ae.clone(),
            rejection: seen.rejection,
        }));
        match self.call_archive(&request) {
            Ok(Response::Registered(outcome)) => {
                // The archive moved (or, for a duplicate, removed) the staging file.
                inc.file = None;
                Ok(outcome)
            }
            Ok(other) => Err((
                status::OUT_OF_RESOURCES,
                format!("archive answered {other:?}"),
            )),
            Err(IpcError::Refused(f)) => {
                let status = match f.kind {
                    FailureKind::Invalid => status::CANNOT_UNDERSTAND,
                    _ => status::OUT_OF_RESOURCES,
                };
                Err((status, f.message))
            }
            Err(e) => Err((
                status::OUT_OF_RESOURCES,
                format!("archive unavailable: {e}"),
            )),
        }
    }

    /// One connection per association, opened on first use and reopened after a failure (the
    /// archive may have been restarted by the supervisor).
    fn call_archive(&mut self, request: &Request) -> Result<Response, IpcError> {
        if self.archive.is_none() {
            self.archive = Some(ipc::Client::connect(
                &self.shared.run_dir,
                Role::Receiver,
                Duration::from_secs(120),
            )?);
        }
        let result = self.archive.as_mut().expect("set").call(request);
        if matches!(result, Err(IpcError::Io(_) | IpcError::Malformed(_))) {
            self.archive = None;
        }
        result
    }
}

/// Names the storage problem without a path (paths carry UIDs only, but keep answers short).
fn storage_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => "disk full".into(),
        Some(libc::EDQUOT) => "storage quota exceeded".into(),
        _ => format!("storage error: {}", e.kind()),
    }
}

fn tls_server_config(
    tls: &crate::config::TlsConfig,
) -> Result<rustls::ServerConfig, ReceiverError> {
    let (certs, key) = crate::tls::load_identity(&tls.certificate, &tls.private_key)
        .map_err(ReceiverError::Tls)?;
    let roots = crate::tls::load_roots(&tls.client_ca).map_err(ReceiverError::Tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ReceiverError::Tls(format!("client verifier: {e}")))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ReceiverError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| ReceiverError::Tls(format!("server certificate/key: {e}")))
}
