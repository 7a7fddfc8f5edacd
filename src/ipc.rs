//! The typed, versioned request/response protocol between the archive and the other services.
//!
//! Transport: a Unix stream socket per caller role (`<run_dir>/archive-<role>.sock`), so that the
//! filesystem permissions of the socket decide who may ask what (Postfix's model: the socket is
//! the capability). Each message is a frame: a 4-byte big-endian length, then a JSON document.
//! JSON keeps the protocol readable with `socat` while debugging a box on site, and costs little
//! next to an fsync. The first frame on a connection is a [`Hello`] carrying [`PROTOCOL_VERSION`];
//! an archive that does not speak that version says so and closes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;

/// Frames larger than this are refused: nothing in the protocol needs more.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Who is calling. Each role has its own socket and its own set of allowed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Receiver,
    /// The HL7 listener: records report messages.
    Hl7,
    /// Read-only views for `drimbox status`, the status page and tests.
    Reader,
    /// The publisher: takes exams that are ready and records the lots it built for them.
    Publisher,
    /// The whitelist updater: records its attempts (the list's history).
    Whitelist,
    /// The WADO-RS server: gets a retrieve's files as descriptors, records every access.
    Wado,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Receiver,
        Role::Hl7,
        Role::Reader,
        Role::Publisher,
        Role::Whitelist,
        Role::Wado,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Receiver => "receiver",
            Role::Hl7 => "hl7",
            Role::Reader => "reader",
            Role::Publisher => "publisher",
            Role::Whitelist => "whitelist",
            Role::Wado => "wado",
        }
    }

    pub fn socket_path(self, run_dir: &Path) -> PathBuf {
        run_dir.join(format!("archive-{}.sock", self.name()))
    }

    pub fn allows(self, request: &Request) -> bool {
        match request {
            Request::RegisterInstance(_) => self == Role::Receiver,
            Request::RecordReport(_) => self == Role::Hl7,
            // The publisher's work carries the report (patient data): its role only.
            Request::NextWork { .. } | Request::RecordLot(_) | Request::LotProgress(_) => {
                self == Role::Publisher
            }
            Request::RecordWhitelistAttempt(_) => self == Role::Whitelist,
            Request::Retrieve(_) | Request::RecordAccess(_) => self == Role::Wado,
            Request::Ping
            | Request::WhitelistAttempts { .. }
            | Request::Accesses { .. }
            | Request::Summary
            | Request::Study { .. }
            | Request::Exams
            | Request::Exchanges { .. }
            | Request::Exam { .. } => true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// A fully received, fsync'd instance waits in the staging directory: move it into the store
    /// and index it, durably, then answer.
    RegisterInstance(Box<NewInstance>),
    /// A report message, fsync'd in the HL7 staging directory: record it durably (or say it
    /// was recorded already, with the ACK it got then), then answer.
    RecordReport(Box<NewReport>),
    Summary,
    Study {
        study_uid: String,
    },
    /// Every exam with its state (UIDs, states and reasons only).
    Exams,
    /// One exam's history: reports, lots, deliveries (no patient data).
    Exam {
        study_uid: String,
    },
    /// The last delivery steps, newest first (UIDs and codes only).
    Exchanges {
        limit: u32,
    },
    /// The next exam whose lot must be built, with everything needed to build it; exams in
    /// `skip` (the publisher failed on them recently) are passed over.
    NextWork {
        #[serde(default)]
        skip: Vec<String>,
        /// The publisher can reach the DMP: built lots are handed out to be sent.
        #[serde(default)]
        can_send: bool,
    },
    /// A lot the publisher built and fsync'd in the lot staging directory: archive it.
    RecordLot(Box<NewLot>),
    /// Where a lot's delivery stands now, committed before the publisher's next network step.
    LotProgress(Box<LotProgress>),
    /// One whitelist attempt, committed (after the list, if installed, is durable).
    RecordWhitelistAttempt(Box<crate::archive::model::WhitelistAttempt>),
    /// The last whitelist attempts, newest first.
    WhitelistAttempts {
        limit: u32,
    },
    /// A WADO-RS retrieve: the decision and one page of instances, their files passed as
    /// descriptors after the answer (the WADO-RS user cannot open the store itself).
    Retrieve(Box<crate::archive::model::RetrieveRequest>),
    /// One WADO-RS request, for the audit trail.
    RecordAccess(Box<crate::archive::model::AccessRecord>),
    /// The last WADO-RS accesses, newest first.
    Accesses {
        limit: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Response {
    Pong,
    Registered(RegisterOutcome),
    ReportRecorded(ReportOutcome),
    Summary(crate::archive::model::Summary),
    Study(Option<crate::archive::model::StudyView>),
    Exams(Vec<crate::archive::model::ExamView>),
    Exam(Option<Box<crate::archive::model::ExamHistory>>),
    Exchanges(Vec<crate::archive::model::ExchangeRecord>),
    Work(Option<crate::archive::model::Work>),
    LotRecorded { seq: u32 },
    ProgressRecorded,
    WhitelistAttemptRecorded { seq: u64 },
    WhitelistAttempts(Vec<crate::archive::model::WhitelistAttempt>),
    Retrieval(crate::archive::model::Retrieval),
    AccessRecorded,
    Accesses(Vec<crate::archive::model::AccessRecord>),
    Error(ArchiveFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterOutcome {
    /// New instance, now durable.
    Stored,
    /// The same bytes were already stored: nothing rewritten.
    Duplicate,
    /// Same SOP Instance UID, different bytes: the new version replaced the old one.
    Replaced,
}

/// A report message in flight from the HL7 listener: where it waits, its idempotence key, and
/// what the listener learned of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewReport {
    /// File name inside the HL7 staging directory.
    pub staging_name: String,
    /// Idempotence key: sending application, sending facility, message type and MSH-10.
    pub key: String,
    #[serde(flatten)]
    pub facts: ReportFacts,
}

/// A lot waiting in the lot staging directory: one subdirectory holding its files, each
/// fsync'd, and the directory itself fsync'd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewLot {
    pub staging_name: String,
    pub study_uid: String,
    /// The `seq` the archive gave with the work.
    pub seq: u32,
    pub action: crate::exam::LotAction,
    pub report_key: String,
    pub images_digest: String,
    pub kos_sop_uid: String,
    pub kos_instance_number: u32,
    pub submission_set_uid: String,
    /// Names of the files in the staging subdirectory.
    pub files: Vec<String>,
}

/// A lot's new delivery state, and the exchange that led to it (kept with the lot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LotProgress {
    pub study_uid: String,
    pub seq: u32,
    pub status: crate::exam::LotStatus,
    pub delivery: crate::archive::model::Delivery,
    /// (file name, bytes base64) of a request or answer to keep in the lot's directory.
    pub exchange: Vec<(String, String)>,
}

/// What the listener learned of a report message; the archive keeps it as the message's row.
/// Patient fields are stored, never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFacts {
    /// `ORU^R01`, `MDM^T02`, …
    pub message_type: String,
    /// `publish`, `replace` or `delete`.
    pub action: String,
    pub ins: String,
    pub ins_oid: String,
    /// Study Instance UIDs of the CDA's serviceEvents.
    pub study_uids: Vec<String>,
    pub accession: Option<String>,
    pub size: u64,
    pub sha256: String,
    /// The AA this message gets, base64 (kept so a re-sent message gets the very same ACK).
    pub ack_base64: String,
    /// The practice's own patient number (PID-3 `PI`), checked against the images' Patient ID.
    #[serde(default)]
    pub ipp: Option<String>,
    /// The MetaDMPMSS flags of the message (absent: the policy decides).
    #[serde(default)]
    pub flags: ReportFlags,
    /// The exam codes of the CDA's serviceEvents (code and translations), for the policy rules.
    #[serde(default)]
    pub exam_codes: Vec<String>,
}

/// The DMP flags a report message carries; `None` when the message does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFlags {
    pub dest_dmp: Option<bool>,
    pub masque_ps: Option<bool>,
    pub invisible_patient: Option<bool>,
    pub invisible_rep_legaux: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportOutcome {
    /// The key was recorded before: nothing new was written.
    pub duplicate: bool,
    /// The ACK to send (the stored one for a duplicate), base64.
    pub ack_base64: String,
}

/// Why the archive could not do what was asked. `kind` drives the DICOM status the receiver
/// answers; `message` is for the log (no patient data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ArchiveFailure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Disk full, quota, I/O error: out of resources (DICOM A700).
    Resources,
    /// The request itself is wrong (bad staging name, bad UID): cannot understand (C000).
    Invalid,
    /// This role may not make this request.
    Forbidden,
    /// The caller speaks another protocol version.
    Version,
}

/// Everything the receiver learned about a received instance. Patient fields travel here and are
/// stored, but are never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewInstance {
    /// File name inside the staging directory (no path separators).
    pub staging_name: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub transfer_syntax: String,
    pub modality: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
    /// Size of the stored file (meta header + data set).
    pub file_size: u64,
    /// Offset of the data set in the stored file (after preamble and meta header).
    pub dataset_offset: u64,
    /// SHA-256 of the data set bytes exactly as received, hex.
    pub dataset_sha256: String,
    pub calling_ae: String,
    /// Set when the instance is an IOCM rejection note.
    pub rejection: Option<RejectionNote>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectionNote {
    /// Document title code value (113001, 113037, 113038 or 113039).
    pub code: String,
    pub references: Vec<InstanceRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("archive socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("archive connection: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("archive refused: {0}")]
    Refused(ArchiveFailure),
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), IpcError> {
    let body = serde_json::to_vec(msg).map_err(|e| IpcError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(IpcError::Malformed(format!(
            "frame of {} bytes",
            body.len()
        )));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame. `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, IpcError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::Malformed(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| IpcError::Malformed(e.to_string()))
}

/// A blocking connection to the archive, one request at a time.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(run_dir: &Path, role: Role, timeout: Duration) -> Result<Client, IpcError> {
        let path = role.socket_path(run_dir);
        let stream = UnixStream::connect(&path).map_err(|source| IpcError::Connect {
            path: path.clone(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut client = Client { stream };
        write_frame(
            &mut client.stream,
            &Hello {
                version: PROTOCOL_VERSION,
            },
        )?;
        match client.call(&Request::Ping)? {
            Response::Pong => Ok(client),
            other => Err(IpcError::Malformed(format!("expected pong, got {other:?}"))),
        }
    }

    /// A retrieve: the answer, then one open file per instance of the page, in order.
    pub fn retrieve(
        &mut self,
        request: &crate::archive::model::RetrieveRequest,
    ) -> Result<(crate::archive::model::Retrieval, Vec<std::fs::File>), IpcError> {
        match self.call(&Request::Retrieve(Box::new(request.clone())))? {
            Response::Retrieval(r) => {
                let files = if r.instances.is_empty() {
                    Vec::new()
                } else {
                    recv_fds(&self.stream, r.instances.len())?
                };
                if files.len() != r.instances.len() {
                    return Err(IpcError::Malformed(format!(
                        "{} descriptors for {} instances",
                        files.len(),
                        r.instances.len()
                    )));
                }
                Ok((r, files))
            }
            other => Err(IpcError::Malformed(format!(
                "expected a retrieval, got {other:?}"
            ))),
        }
    }

    /// Sends a request and waits for its answer; an archive-side refusal is `IpcError::Refused`.
    pub fn call(&mut self, request: &Request) -> Result<Response, IpcError> {
        write_frame(&mut self.stream, request)?;
        match read_frame::<Response>(&mut self.stream)? {
            None => Err(IpcError::Io(io::ErrorKind::UnexpectedEof.into())),
            Some(Response::Error(f)) => Err(IpcError::Refused(f)),
            Some(r) => Ok(r),
        }
    }
}

/// Most descriptors one message carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 128;

/// Sends `files` as SCM_RIGHTS over `stream`, in messages of at most [`MAX_FDS`], each with
/// one data byte (ancillary data needs some).
pub fn send_fds(stream: &UnixStream, files: &[std::os::fd::RawFd]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    for batch in files.chunks(MAX_FDS) {
        let bytes = std::mem::size_of_val(batch);
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic on the length.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        let mut control = vec![0u8; space];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: a zeroed msghdr is a valid empty one; the pointers set below outlive the
        // sendmsg call, and the control buffer has room for one header with `bytes` of data.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                batch.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                bytes,
            );
            libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if sent != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives `n` descriptors sent by [`send_fds`] (close-on-exec), as files.
pub fn recv_fds(stream: &UnixStream, n: usize) -> io::Result<Vec<std::fs::File>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let want = (n - out.len()).min(MAX_FDS);
        let bytes = want * std::mem::size_of::<std::os::fd::RawFd>();
        // SAFETY: arithmetic on the length.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        let mut control = vec![0u8; space];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: as in send_fds; every descriptor the kernel installed is taken into a File
        // (so none leaks), and only within the received control length.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let got = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let before = out.len();
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / std::mem::size_of::<std::os::fd::RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<std::os::fd::RawFd>().add(i));
                        out.push(std::fs::File::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                return Err(io::Error::other("descriptors truncated"));
            }
            if out.len() == before {
                return Err(io::Error::other("a message without descriptors"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_pass_in_batches() {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<std::fs::File> = (0..300)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, format!("file {i}")).unwrap();
                std::fs::File::open(p).unwrap()
            })
            .collect();
        let (a, b) = UnixStream::pair().unwrap();
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let sender = std::thread::spawn(move || send_fds(&a, &fds).map(|()| a));
        let got = recv_fds(&b, 300).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got.len(), 300);
        for (i, mut f) in got.into_iter().enumerate() {
            let mut s = String::new();
            f.rewind().unwrap();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, format!("file {i}"));
        }
    }

    #[test]
    fn frame_roundtrip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Summary).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, Request::Summary);
        assert!(read_frame::<Request>(&mut [].as_slice()).unwrap().is_none());
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame::<Request>(&mut huge.as_slice()),
            Err(IpcError::Malformed(_))
        ));
    }

    #[test]
    fn reader_cannot_register() {
        let req = Request::RegisterInstance(Box::new(NewInstance {
            staging_name: "x".into(),
            sop_class_uid: "1.2".into(),
            sop_instance_uid: "1.2.3".into(),
            study_uid: "1".into(),
            series_uid: "2".into(),
            transfer_syntax: "1.2.840.10008.1.2".into(),
            modality: None,
            patient_id: None,
            patient_name: None,
            accession_number: None,
            file_size: 0,
            dataset_offset: 0,
            dataset_sha256: String::new(),
            calling_ae: "A".into(),
            rejection: None,
        }));
        assert!(!Role::Reader.allows(&req));
        assert!(Role::Receiver.allows(&req));
        assert!(Role::Reader.allows(&Request::Summary));
    }
}
