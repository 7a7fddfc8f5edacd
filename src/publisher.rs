//! The publisher: its own process, the only one that can read the practice's signing key.
//!
//! It asks the archive for the next exam whose lot must be built, builds the KOS, the signature
//! and the XDS metadata ([`crate::lot`]), writes the files into the lot staging directory
//! (each fsync'd, then the directory), and asks the archive to archive the lot. Sending it to
//! the DMP is the next step of the roadmap; until then a built lot waits, shown on the status
//! page as "lot built".
//!
//! Without a complete `[publication]` section (WADO-RS base, content type, signing) it builds
//! nothing and says why on the status page; exams stay "ready to publish".

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::archive::model::ExamWork;
use crate::archive::store::Layout;
use crate::config::{Config, SigningConfig};
use crate::ipc::{self, NewLot, Request, Response, Role};
use crate::kos::LocalTime;
use crate::lot::{self, BuildTime, LotIds, LotSettings, LotSigner};
use crate::xds::Code;

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the signing certificate {path}: {message}")]
    Signing { path: PathBuf, message: String },
}

/// How often the archive is asked for work when there was none.
const POLL: Duration = Duration::from_secs(1);
/// How long an exam whose lot failed to build is left alone before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The box's local time now (the KOS carries it with its offset).
pub fn local_now(ms: i64) -> LocalTime {
    let secs = ms.div_euclid(1000) as libc::time_t;
    // SAFETY: localtime_r only writes into `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    let offset_secs = if ok { tm.tm_gmtoff } else { 0 };
    let digits: String = crate::status::rfc3339(ms + offset_secs * 1000)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    LocalTime {
        date: digits[0..8].to_string(),
        time: digits[8..14].to_string(),
        offset_minutes: (offset_secs / 60) as i32,
    }
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b))?;
    Ok(b)
}

/// `urn:uuid:` + a random (v4) UUID.
pub fn urn_uuid() -> io::Result<String> {
    let mut b: [u8; 16] = random_bytes()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A UUID-derived UID (`2.25.<uuid as an integer>`, PS3.5 B.2).
pub fn uuid_uid() -> io::Result<String> {
    let mut b: [u8; 16] = random_bytes()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format!("2.25.{}", u128::from_be_bytes(b)))
}

fn lot_ids(config: &Config, lot_number: u64) -> io::Result<LotIds> {
    let associations = [urn_uuid()?, urn_uuid()?, urn_uuid()?, urn_uuid()?];
    Ok(match &config.publication.uid_root {
        Some(root) => LotIds::under_root(root, lot_number, associations),
        None => LotIds {
            kos_sop_uid: uuid_uid()?,
            kos_series_uid: uuid_uid()?,
            submission_set_uid: uuid_uid()?,
            signature_id: uuid_uid()?,
            association_ids: associations,
        },
    })
}

/// What keeps the publisher from building lots, if anything (shown on the status page).
pub fn missing_settings(config: &Config) -> Option<&'static str> {
    let p = &config.publication;
    if p.wado_base_url.is_none() {
        Some("publication.wado_base_url is not set")
    } else if p.content_type.is_none() {
        Some("publication.content_type is not set")
    } else if p.signing.is_none() {
        Some("publication.signing is not set")
    } else if p.source_id.is_none() && p.uid_root.is_none() {
        Some("publication.source_id (or uid_root) is not set")
    } else {
        None
    }
}

pub fn settings(config: &Config) -> Option<LotSettings> {
    let p = &config.publication;
    let (code, scheme, display) = p.content_type.clone()?;
    Some(LotSettings {
        wado_base_url: p.wado_base_url.clone()?,
        source_id: p.source_id.clone().or_else(|| p.uid_root.clone())?,
        institution_name: p.institution_name.clone(),
        content_type: Code {
            code,
            scheme,
            display,
        },
    })
}

/// Loads a PKCS#12 identity and its password file (signing or authentication certificate).
pub fn load_identity(
    pkcs12: &Path,
    password_file: &Path,
) -> Result<crate::signing::identity::SigningIdentity, PublisherError> {
    let password = fs::read_to_string(password_file).map_err(|source| PublisherError::Io {
        what: "reading the password file",
        path: password_file.to_path_buf(),
        source,
    })?;
    let password = password.lines().next().unwrap_or_default().to_string();
    let der = fs::read(pkcs12).map_err(|source| PublisherError::Io {
        what: "reading",
        path: pkcs12.to_path_buf(),
        source,
    })?;
    crate::signing::identity::SigningIdentity::from_pkcs12(&der, &password).map_err(|e| {
        PublisherError::Signing {
            path: pkcs12.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Loads the practice's signing certificate (PKCS#12 + password file) as the lot signer.
pub fn load_signer(s: &SigningConfig) -> Result<PracticeSigner, PublisherError> {
    Ok(PracticeSigner {
        identity: Arc::new(load_identity(&s.pkcs12, &s.password_file)?),
        algorithm: crate::signing::SignatureAlgorithm::from_name(&s.algorithm)
            .unwrap_or(crate::signing::SignatureAlgorithm::RsaSha256),
    })
}

/// Signs lots with the practice's certificate (IHE DSG, [`crate::signing::lot`]).
pub struct PracticeSigner {
    pub identity: Arc<crate::signing::identity::SigningIdentity>,
    pub algorithm: crate::signing::SignatureAlgorithm,
}

impl LotSigner for PracticeSigner {
    fn sign(&self, r: &lot::SignatureRequest<'_>) -> Result<Vec<u8>, lot::LotError> {
        use crate::signing::lot::{build_lot_signature, KosContent, LotSignatureInput};
        build_lot_signature(
            &LotSignatureInput {
                signature_id: r.signature_id,
                submission_set_unique_id: r.submission_set_uid,
                kos_unique_id: r.kos_uid,
                kos: KosContent::Bytes(r.kos_bytes),
                signing_time: &r.signing_time,
                algorithm: self.algorithm,
            },
            &self.identity,
        )
        .map_err(|e| lot::LotError::Signing(e.to_string()))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Why a lot did not make it into the archive.
#[derive(Debug)]
pub enum LotFailure {
    /// Building it failed, or the archive refused it: retried later, others go first.
    Lot(String),
    /// The archive went away mid-way (restarting): try again as soon as it is back.
    Archive(String),
}

impl std::fmt::Display for LotFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LotFailure::Lot(m) => f.write_str(m),
            LotFailure::Archive(m) => write!(f, "archive unavailable: {m}"),
        }
    }
}

/// Builds one exam's lot and hands it to the archive. Returns the archived seq.
pub fn build_and_record(
    config: &Config,
    archive: &mut ipc::Client,
    work: &ExamWork,
    settings: &LotSettings,
    signer: &dyn LotSigner,
) -> Result<u32, LotFailure> {
    let lot_err = |e: String| LotFailure::Lot(e);
    let message =
        crate::base64::decode(work.report_base64.as_bytes()).map_err(|e| lot_err(e.to_string()))?;
    let parsed =
        crate::hl7::message::Message::parse(&message).map_err(|e| lot_err(e.to_string()))?;
    let report = crate::hl7::report::read(&parsed).map_err(|e| lot_err(e.to_string()))?;
    let cda = crate::cda::parse_header(&report.cda).map_err(|e| lot_err(e.to_string()))?;
    let now = crate::archive::now_ms();
    let at = BuildTime {
        utc: crate::status::rfc3339(now)
            .chars()
            .filter(char::is_ascii_digit)
            .collect(),
        local: local_now(now),
    };
    let ids = lot_ids(config, work.lot_number).map_err(|e| lot_err(e.to_string()))?;
    let built = match work.action {
        crate::exam::NextAction::Unpublish { .. } => {
            lot::build_withdrawal(work, &report, &cda, settings, &ids, &at)
        }
        _ => lot::build(work, &report, &cda, settings, &ids, &at, signer),
    }
    .map_err(|e| lot_err(e.to_string()))?;

    let staging = Layout::new(&config.storage.data_dir).lot_staging();
    let name = format!("lot-{}", work.lot_number);
    let dir = staging.join(&name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).map_err(|e| lot_err(format!("creating {}: {e}", dir.display())))?;
    for (file, bytes) in &built.files {
        write_synced(&dir.join(file), bytes)
            .map_err(|e| lot_err(format!("writing {file}: {e}")))?;
    }
    crate::archive::store::fsync_dir(&dir).map_err(|e| lot_err(e.to_string()))?;
    let request = Request::RecordLot(Box::new(NewLot {
        staging_name: name,
        study_uid: work.study_uid.clone(),
        seq: work.seq,
        action: work.action.lot_action(),
        report_key: work.report_key.clone(),
        images_digest: work.images_digest.clone(),
        kos_sop_uid: built.ids.kos_sop_uid.clone(),
        kos_instance_number: built.kos_instance_number,
        submission_set_uid: built.ids.submission_set_uid.clone(),
        files: built.files.iter().map(|(n, _)| n.clone()).collect(),
    }));
    let outcome = archive.call(&request);
    // Whatever the answer, the staging copy has served (the archive copied it or refused it).
    let _ = fs::remove_dir_all(&dir);
    match outcome {
        Ok(Response::LotRecorded { seq }) => Ok(seq),
        Ok(Response::Error(f)) => Err(LotFailure::Lot(f.message)),
        Ok(other) => Err(LotFailure::Lot(format!("unexpected answer {other:?}"))),
        Err(e) => Err(LotFailure::Archive(e.to_string())),
    }
}

/// The DMP connection from `[dmp]`: the authentication certificate for TLS, the trust anchors,
/// the VIHF settings; the VIHF is signed with the signing certificate.
pub fn dmp_connection(
    config: &Config,
    signer: &PracticeSigner,
) -> Result<Option<crate::dmp::deliver::Dmp>, PublisherError> {
    let Some(d) = &config.dmp else {
        return Ok(None);
    };
    let auth = load_identity(&d.pkcs12, &d.password_file)?;
    let roots =
        crate::tls::load_roots(&d.trust_anchors).map_err(|message| PublisherError::Signing {
            path: d.trust_anchors.clone(),
            message,
        })?;
    let tls = auth
        .tls_client_config(roots)
        .map_err(|e| PublisherError::Signing {
            path: d.pkcs12.clone(),
            message: e.to_string(),
        })?;
    let roles = d
        .roles
        .iter()
        .filter_map(|r| {
            let mut p = r.splitn(3, '^');
            Some(crate::dmp::vihf::CodedValue::new(
                p.next()?,
                p.next()?,
                p.next()?,
            ))
        })
        .collect();
    Ok(Some(crate::dmp::deliver::Dmp {
        repository_url: format!("{}/repository", d.url),
        registry_url: format!("{}/registry", d.url),
        tls,
        timeout: d.timeout,
        vihf: crate::dmp::vihf::VihfSettings {
            lps: crate::dmp::vihf::Lps {
                id: d.lps_id.clone(),
                name: "DRIMbox".into(),
                version: d.lps_version.clone(),
                homologation: d.lps_homologation.clone(),
            },
            roles,
        },
        signer: signer.identity.clone(),
        algorithm: signer.algorithm,
    }))
}

/// The publisher's effects for a delivery: the archive commit, the clock, UUIDs.
struct ArchiveEffects<'a> {
    client: &'a mut ipc::Client,
    study_uid: String,
    seq: u32,
    lost: bool,
}

impl crate::dmp::deliver::Effects for ArchiveEffects<'_> {
    fn now_ms(&self) -> i64 {
        crate::archive::now_ms()
    }

    fn new_uuid(&self) -> String {
        urn_uuid().unwrap_or_else(|_| format!("urn:uuid:{}", crate::archive::now_ms()))
    }

    fn commit(&mut self, p: crate::dmp::deliver::Progress) -> Result<(), String> {
        let request = Request::LotProgress(Box::new(ipc::LotProgress {
            study_uid: self.study_uid.clone(),
            seq: self.seq,
            status: p.status,
            delivery: p.delivery,
            exchange: p
                .exchange
                .iter()
                .map(|(n, b)| (n.clone(), crate::base64::encode(b)))
                .collect(),
        }));
        match self.client.call(&request) {
            Ok(Response::ProgressRecorded) => Ok(()),
            Ok(Response::Error(f)) => Err(f.message),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => {
                self.lost = true;
                Err(format!("archive unavailable: {e}"))
            }
        }
    }
}

/// Runs the publisher until `stop` is set.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), PublisherError> {
    let mut reporter = crate::control::Reporter::from_env();
    let staging = Layout::new(&config.storage.data_dir).lot_staging();
    // Leftovers of a crash: never handed over, so never counted.
    if let Ok(entries) = fs::read_dir(&staging) {
        for e in entries.flatten() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let ready = match (missing_settings(config), settings(config)) {
        (None, Some(s)) => {
            let signing = config.publication.signing.as_ref().expect("checked");
            let signer = load_signer(signing)?;
            let dmp = dmp_connection(config, &signer)?;
            if dmp.is_none() {
                reporter.error("lots are built and kept; [dmp] is not configured, none is sent");
            }
            Some((s, signer, dmp))
        }
        (why, _) => {
            let why = why.unwrap_or("publication settings incomplete");
            log::warn!("publisher idle: {why}");
            reporter.error(format!("not building lots: {why}"));
            None
        }
    };
    log::info!("publisher ready");
    // Days left on the certificates the publisher holds, for the status page (0: expired).
    let days_left = |c: &crate::pki::Certificate| -> u64 {
        let left = c.not_after_unix() - crate::archive::now_ms() / 1000;
        if left <= 0 {
            0
        } else {
            (left as u64).div_ceil(86_400)
        }
    };
    let signing_days = ready
        .as_ref()
        .map(|(_, signer, _)| days_left(signer.identity.certificate()));
    let dmp_days = match (&config.dmp, &ready) {
        (Some(d), Some(_)) => load_identity(&d.pkcs12, &d.password_file)
            .ok()
            .map(|i| days_left(i.certificate())),
        _ => None,
    };
    let mut built = 0u64;
    let mut failed = 0u64;
    let mut published = 0u64;
    let mut refused = 0u64;
    let mut retries = 0u64;
    let mut archive: Option<ipc::Client> = None;
    let mut next_poll = Instant::now();
    // Whether the DMP could be reached at the last probe or exchange, and when (unix seconds).
    let mut reach: Option<(bool, u64)> = None;
    let mut next_probe = Instant::now();
    let probe_interval = config
        .dmp
        .as_ref()
        .map_or(Duration::from_secs(60), |d| d.probe_interval);
    // Exams whose lot could not be built, and when to try again (so one bad exam never holds
    // the others back).
    let mut retry: std::collections::HashMap<String, Instant> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        reporter.beat(true, || {
            [
                ("lots_built".to_string(), built),
                ("lots_failed".to_string(), failed),
                ("lots_published".to_string(), published),
                ("lots_refused".to_string(), refused),
                ("delivery_retries".to_string(), retries),
            ]
            .into_iter()
            .chain(signing_days.map(|d| ("signing_certificate_days_left".to_string(), d)))
            .chain(dmp_days.map(|d| ("dmp_authentication_certificate_days_left".to_string(), d)))
            .chain(reach.iter().flat_map(|(ok, at)| {
                [
                    ("dmp_reachable".to_string(), u64::from(*ok)),
                    ("dmp_checked_unix".to_string(), *at),
                ]
            }))
            .collect()
        });
        let Some((settings, signer, dmp)) = &ready else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let Some(d) = dmp.as_ref().filter(|_| Instant::now() >= next_probe) {
            let ok = probe_dmp(d, &mut reporter);
            reach = Some((ok, unix_now()));
            // Unreachable: look again soon, so the page shows the recovery quickly.
            next_probe = Instant::now() + if ok { probe_interval } else { PROBE_WHEN_DOWN };
            continue;
        }
        if Instant::now() < next_poll {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next_poll = Instant::now() + POLL;
        if archive.is_none() {
            archive = ipc::Client::connect(
                &config.storage.run_dir,
                Role::Publisher,
                Duration::from_secs(5),
            )
            .ok();
        }
        let Some(client) = archive.as_mut() else {
            continue;
        };
        retry.retain(|_, at| *at > Instant::now());
        let skip = retry.keys().cloned().collect();
        let request = Request::NextWork {
            skip,
            can_send: dmp.is_some(),
        };
        let (work, lost) = match client.call(&request) {
            Ok(Response::Work(w)) => (w, false),
            Ok(Response::Error(f)) => {
                log::warn!("archive: {}", f.message);
                (None, false)
            }
            Ok(_) | Err(_) => (None, true),
        };
        if lost {
            archive = None;
            continue;
        }
        match work {
            None => {}
            Some(crate::archive::model::Work::Build(work)) => {
                match build_and_record(config, client, &work, settings, signer) {
                    Ok(seq) => {
                        built += 1;
                        log::info!(
                            study_uid = work.study_uid.as_str();
                            "lot {seq} built for the exam ({:?})",
                            work.action.lot_action()
                        );
                        // More may be waiting: ask again at once.
                        next_poll = Instant::now();
                    }
                    Err(LotFailure::Archive(e)) => {
                        log::info!("archive unavailable while archiving a lot ({e}); retrying");
                        archive = None;
                    }
                    Err(LotFailure::Lot(e)) => {
                        failed += 1;
                        retry.insert(work.study_uid.clone(), Instant::now() + RETRY_AFTER);
                        log::warn!(study_uid = work.study_uid.as_str(); "lot not built: {e}");
                        reporter.error(format!("lot not built: {e}"));
                    }
                }
            }
            Some(crate::archive::model::Work::Send(work)) => {
                let Some(dmp) = dmp else { continue };
                let mut effects = ArchiveEffects {
                    client,
                    study_uid: work.study_uid.clone(),
                    seq: work.lot.facts.seq,
                    lost: false,
                };
                let uid = work.study_uid.as_str();
                let outcome = crate::dmp::deliver::deliver(dmp, &work, &mut effects);
                if let Ok(crate::exam::LotStatus::Accepted | crate::exam::LotStatus::Refused) =
                    &outcome
                {
                    // The DMP answered: it is reachable.
                    reach = Some((true, unix_now()));
                    next_probe = Instant::now() + probe_interval;
                }
                match &outcome {
                    Ok(crate::exam::LotStatus::Accepted) => {
                        published += 1;
                        log::info!(study_uid = uid; "lot {} published", work.lot.facts.seq);
                        next_poll = Instant::now();
                    }
                    Ok(crate::exam::LotStatus::Refused) => {
                        refused += 1;
                        log::warn!(study_uid = uid; "lot {} refused by the DMP", work.lot.facts.seq);
                        reporter.error("the DMP refused a lot: see the exams list");
                        next_poll = Instant::now();
                    }
                    Ok(_) => {
                        retries += 1;
                        log::info!(study_uid = uid; "lot {} not delivered yet; retry later", work.lot.facts.seq);
                        next_poll = Instant::now();
                        // Say on the status page whether the DMP can be reached at all.
                        next_probe = Instant::now();
                    }
                    Err(e) => {
                        if effects.lost {
                            archive = None;
                        } else {
                            failed += 1;
                            retry.insert(work.study_uid.clone(), Instant::now() + RETRY_AFTER);
                            reporter.error(format!("delivery: {e}"));
                        }
                        log::warn!(study_uid = uid; "delivery of lot {} stopped: {e}", work.lot.facts.seq);
                    }
                }
            }
        }
    }
    log::info!("publisher stopped");
    Ok(())
}

/// How soon to probe again a DMP that could not be reached.
const PROBE_WHEN_DOWN: Duration = Duration::from_secs(10);

fn unix_now() -> u64 {
    (crate::archive::now_ms() / 1000).max(0) as u64
}

/// One reachability probe (TLS handshake, nothing sent); its failure becomes the service's
/// last error, which the status page shows with it.
fn probe_dmp(dmp: &crate::dmp::deliver::Dmp, reporter: &mut crate::control::Reporter) -> bool {
    let timeout = dmp.timeout.min(Duration::from_secs(5));
    match crate::dmp::http::probe(&dmp.repository_url, dmp.tls.clone(), timeout) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("the DMP cannot be reached: {e}");
            reporter.error(format!("the DMP cannot be reached: {e}"));
            false
        }
    }
}

/// Timings of building lots (KOS, signature, metadata) for a synthetic exam of `instances`
/// images in `series` series, named by the report in `report_message` (an ORU or MDM). For
/// `drimbox bench-lot` and `scripts/bench-lot`: milliseconds of each repetition.
pub fn bench_lots(
    report_message: &[u8],
    signer: &dyn LotSigner,
    instances: usize,
    series: usize,
    reps: usize,
) -> Result<(Vec<f64>, usize), String> {
    use crate::archive::model::{SeriesMaterial, StudyAttributes};
    let parsed = crate::hl7::message::Message::parse(report_message).map_err(|e| e.to_string())?;
    let report = crate::hl7::report::read(&parsed).map_err(|e| e.to_string())?;
    let cda = crate::cda::parse_header(&report.cda).map_err(|e| e.to_string())?;
    let study_uid = cda
        .service_events
        .first()
        .map(|e| e.id.root.clone())
        .ok_or("the report names no study")?;
    let series_count = series.max(1);
    let work = ExamWork {
        study_uid: study_uid.clone(),
        seq: 1,
        lot_number: 1,
        action: crate::exam::NextAction::Publish {
            report_key: "bench".into(),
            why: crate::exam::Why::FirstPublication,
            visibility: Default::default(),
        },
        report_key: "bench".into(),
        report_base64: String::new(),
        study: StudyAttributes {
            study_date: "20240102".into(),
            study_time: "030405".into(),
            referring_physician: String::new(),
            study_description: "Benchmark".into(),
            study_id: "1".into(),
        },
        series: (0..series_count)
            .map(|s| SeriesMaterial {
                series_uid: format!("{study_uid}.{}", s + 1),
                modality: "CT".into(),
                description: format!("Series {}", s + 1),
                instances: (0..instances / series_count
                    + usize::from(s < instances % series_count))
                    .map(|i| {
                        (
                            "1.2.840.10008.5.1.4.1.1.2".to_string(),
                            format!("{study_uid}.{}.{}", s + 1, i + 1),
                        )
                    })
                    .collect(),
            })
            .collect(),
        images_digest: String::new(),
        previous: None,
    };
    let settings = LotSettings {
        wado_base_url: "https://db.example.fr/wado".into(),
        source_id: "1.2.250.1.999".into(),
        institution_name: "Benchmark".into(),
        content_type: Code {
            code: "07".into(),
            scheme: "1.2.250.1.213.2.2".into(),
            display: "Consultation externe".into(),
        },
    };
    let ids = LotIds::under_root("1.2.250.1.999", 1, Default::default());
    let at = BuildTime {
        utc: "20240102030405".into(),
        local: LocalTime {
            date: "20240102".into(),
            time: "040405".into(),
            offset_minutes: 60,
        },
    };
    let mut times = Vec::with_capacity(reps);
    let mut size = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let built = lot::build(&work, &report, &cda, &settings, &ids, &at, signer)
            .map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = built.files.iter().map(|(_, b)| b.len()).sum();
    }
    Ok((times, size))
}
