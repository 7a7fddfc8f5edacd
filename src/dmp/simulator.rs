//! `drimbox dmp-sim`: our stand-in for the national DMP, for tests and the demo.
//!
//! HTTPS with client-certificate authentication; `POST …/repository` takes ITI-41 (judged by
//! [`super::sim`]), `POST …/registry` takes ITI-18 GetDocuments and ITI-57 UpdateDocumentSet.
//! The registry lives in a JSON file written atomically (fsync'd, renamed) **before** the answer
//! leaves, so a test can read what was recorded and a killed simulator forgets nothing it said.
//! Fault modes reproduce what the publisher must survive: delays, resets, HTTP 500 with a SOAP
//! fault, a Failure, and "commit then drop the answer" (the hard case for exactly-once).

use std::fs;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http;
use super::response::{self, RegistryError, SEVERITY_ERROR};
use super::sim::{self, Registry, Status};
use crate::xml::document::{Document, NodeId};

/// What the simulator does to the next requests (each fault applies to `count` requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer after this many milliseconds.
    Delay(u64),
    /// Close the connection without answering (nothing recorded).
    Reset,
    /// HTTP 500 with a SOAP fault (nothing recorded).
    ServerError,
    /// A RegistryResponse Failure (nothing recorded).
    Failure,
    /// Record the request, then close the connection without answering.
    CommitThenDrop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub count: u32,
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `delay=MS[:N]`, `reset[:N]`, `http500[:N]`, `failure[:N]`, `commit-then-drop[:N]`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let (spec, count) = match s.rsplit_once(':') {
            Some((a, n)) => (a, n.parse().map_err(|_| format!("bad count in {s}"))?),
            None => (s, 1),
        };
        let kind = match spec.split_once('=') {
            Some(("delay", ms)) => {
                FaultKind::Delay(ms.parse().map_err(|_| format!("bad delay in {s}"))?)
            }
            None if spec == "reset" => FaultKind::Reset,
            None if spec == "http500" => FaultKind::ServerError,
            None if spec == "failure" => FaultKind::Failure,
            None if spec == "commit-then-drop" => FaultKind::CommitThenDrop,
            _ => return Err(format!("unknown fault {s}")),
        };
        Ok(Fault { kind, count })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("state file {0}: {1}")]
    State(PathBuf, String),
}

pub struct Options {
    pub listen: SocketAddr,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub client_ca: PathBuf,
    pub state: PathBuf,
    pub faults: Vec<Fault>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    registry: Registry,
    /// Requests received, by kind (`iti41`, `iti18`, `iti57`).
    requests: std::collections::BTreeMap<String, u64>,
    next_entry: u64,
}

fn load(path: &Path) -> Result<State, SimulatorError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| SimulatorError::State(path.to_path_buf(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(SimulatorError::State(path.to_path_buf(), e.to_string())),
    }
}

fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the registry a simulator recorded (for tests and `drimbox dmp-sim --show`).
pub fn read_registry(state: &Path) -> Result<Registry, SimulatorError> {
    Ok(load(state)?.registry)
}

struct Shared {
    state_path: PathBuf,
    state: Mutex<State>,
    faults: Mutex<Vec<Fault>>,
}

/// What to do with one request.
enum Reply {
    Send(Vec<u8>),
    Drop,
}

fn take_fault(shared: &Shared) -> Option<FaultKind> {
    let mut faults = shared.faults.lock().unwrap_or_else(|p| p.into_inner());
    let f = faults.iter_mut().find(|f| f.count > 0)?;
    f.count -= 1;
    Some(f.kind.clone())
}

fn soap(status: u16, xml: &str) -> Reply {
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    Reply::Send(http::response_bytes(
        status,
        reason,
        "application/soap+xml; charset=UTF-8",
        xml.as_bytes(),
    ))
}

fn descendants(doc: &Document, id: NodeId, ns: &str, local: &str) -> Vec<NodeId> {
    let mut out = Vec::new();
    for c in doc.child_elements(id) {
        if doc.element(c).is_some_and(|e| e.is(ns, local)) {
            out.push(c);
        }
        out.extend(descendants(doc, c, ns, local));
    }
    out
}

const NS_WSA: &str = "http://www.w3.org/2005/08/addressing";
const NS_RIM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0";

fn wsa(doc: &Document, local: &str) -> String {
    descendants(doc, doc.root(), NS_WSA, local)
        .first()
        .map(|n| doc.text(*n).trim().to_string())
        .unwrap_or_default()
}

fn handle(shared: &Shared, request: &http::Message) -> Reply {
    let path = request.start.split_whitespace().nth(1).unwrap_or("");
    let fault = take_fault(shared);
    if let Some(FaultKind::Delay(ms)) = fault {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let content_type = request.header("content-type").unwrap_or("");
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let answer_id = format!("urn:uuid:sim-{}", state.requests.values().sum::<u64>() + 1);
    let kind = if path.ends_with("/repository") {
        "iti41"
    } else {
        "registry"
    };
    *state.requests.entry(kind.to_string()).or_insert(0) += 1;
    let _ = save(&shared.state_path, &state);
    match fault {
        Some(FaultKind::Reset) => return Reply::Drop,
        Some(FaultKind::ServerError) => {
            return soap(500, &response::fault("", "simulated server error"))
        }
        _ => {}
    }
    if kind == "iti41" {
        let relates = sim::message_id_of(content_type, &request.body).unwrap_or_default();
        if fault == Some(FaultKind::Failure) {
            let e = RegistryError {
                code: "XDSRegistryBusy".into(),
                context: "simulated Failure".into(),
                location: String::new(),
                severity: SEVERITY_ERROR.into(),
            };
            return soap(
                200,
                &response::registry_response(
                    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
                    &answer_id,
                    &relates,
                    &[e],
                ),
            );
        }
        let verdict =
            sim::check_provide_and_register(content_type, &request.body, &state.registry, true);
        let errors = match verdict {
            Ok(accepted) => {
                let mut n = state.next_entry;
                let mut registry = std::mem::take(&mut state.registry);
                sim::record(&mut registry, &accepted, || {
                    n += 1;
                    format!("urn:uuid:5e1a0000-0000-4000-8000-{n:012}")
                });
                state.registry = registry;
                state.next_entry = n;
                // Durable before the answer, like the real registry's commit.
                if let Err(e) = save(&shared.state_path, &state) {
                    return soap(500, &response::fault(&relates, &format!("state: {e}")));
                }
                if fault == Some(FaultKind::CommitThenDrop) {
                    return Reply::Drop;
                }
                Vec::new()
            }
            Err(errors) => errors,
        };
        return soap(
            200,
            &response::registry_response(
                "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
                &answer_id,
                &relates,
                &errors,
            ),
        );
    }
    // The registry: ITI-18 and ITI-57, plain SOAP.
    let Ok(doc) = Document::parse(&request.body) else {
        return soap(500, &response::fault("", "not XML"));
    };
    let action = wsa(&doc, "Action");
    let relates = wsa(&doc, "MessageID");
    match action.as_str() {
        "urn:ihe:iti:2007:RegistryStoredQuery" => {
            let query = descendants(&doc, doc.root(), NS_RIM, "AdhocQuery")
                .first()
                .and_then(|q| doc.element(*q))
                .and_then(|q| q.attribute("id"))
                .unwrap_or_default()
                .to_string();
            // A slot's values, unquoted: `('a','b')` → [a, b].
            let slot = |name: &str| -> Vec<String> {
                descendants(&doc, doc.root(), NS_RIM, "Slot")
                    .iter()
                    .filter(|s| doc.element(**s).and_then(|e| e.attribute("name")) == Some(name))
                    .flat_map(|s| descendants(&doc, *s, NS_RIM, "Value"))
                    .flat_map(|v| {
                        doc.text(v)
                            .trim()
                            .trim_matches(['(', ')'])
                            .split(',')
                            .map(|x| x.trim().trim_matches('\'').to_string())
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            let refs: Vec<String> = if query == super::soap::FIND_DOCUMENTS {
                let patients = slot("$XDSDocumentEntryPatientId");
                let statuses = slot("$XDSDocumentEntryStatus");
                state
                    .registry
                    .entries
                    .iter()
                    .filter(|(_, e)| patients.contains(&e.patient_id))
                    .filter(|(_, e)| statuses.iter().any(|s| s == status_type(e.status)))
                    .map(|(id, _)| id.clone())
                    .collect()
            } else {
                let wanted = slot("$XDSDocumentEntryUniqueId");
                state
                    .registry
                    .entries
                    .iter()
                    .filter(|(_, e)| wanted.contains(&e.unique_id))
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            soap(200, &query_response(&answer_id, &relates, &refs))
        }
        "urn:ihe:iti:2010:UpdateDocumentSet" => {
            let target = descendants(&doc, doc.root(), NS_RIM, "Association")
                .iter()
                .filter_map(|a| doc.element(*a))
                .find(|a| {
                    a.attribute("associationType")
                        == Some("urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus")
                })
                .and_then(|a| a.attribute("targetObject"))
                .unwrap_or_default()
                .to_string();
            let errors = match state.registry.entries.get_mut(&target) {
                Some(e) if e.status == Status::Approved => {
                    e.status = Status::Deleted;
                    Vec::new()
                }
                found => vec![RegistryError {
                    code: if found.is_some() {
                        "XDSRegistryDeprecatedDocumentError".into()
                    } else {
                        "XDSUnknownDocument".into()
                    },
                    context: format!("entry {target} cannot be withdrawn"),
                    location: target.clone(),
                    severity: SEVERITY_ERROR.into(),
                }],
            };
            if errors.is_empty() {
                if let Err(e) = save(&shared.state_path, &state) {
                    return soap(500, &response::fault(&relates, &format!("state: {e}")));
                }
                if fault == Some(FaultKind::CommitThenDrop) {
                    return Reply::Drop;
                }
            }
            soap(
                200,
                &response::registry_response(
                    "urn:ihe:iti:2010:UpdateDocumentSetResponse",
                    &answer_id,
                    &relates,
                    &errors,
                ),
            )
        }
        other => soap(
            500,
            &response::fault(&relates, &format!("unknown action {other}")),
        ),
    }
}

/// The availabilityStatus URN of an entry (the DMP's own for a logical deletion).
fn status_type(s: Status) -> &'static str {
    match s {
        Status::Approved => "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved",
        Status::Deprecated => "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated",
        Status::Deleted => "urn:asip:ci-sis:2010:StatusType:Deleted",
    }
}

/// An ITI-18 AdhocQueryResponse listing ObjectRefs.
pub fn query_response(message_id: &str, relates_to: &str, refs: &[String]) -> String {
    let list: String = refs
        .iter()
        .map(|r| format!("<rim:ObjectRef id=\"{}\"/>", crate::xds::escape(r)))
        .collect();
    format!(
        "<soap:Envelope xmlns:soap=\"{}\"><soap:Header>\
         <Action xmlns=\"{NS_WSA}\">urn:ihe:iti:2007:RegistryStoredQueryResponse</Action>\
         <MessageID xmlns=\"{NS_WSA}\">{message_id}</MessageID><RelatesTo xmlns=\"{NS_WSA}\">{}</RelatesTo>\
         </soap:Header><soap:Body><query:AdhocQueryResponse xmlns:query=\"urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0\" \
         xmlns:rim=\"{NS_RIM}\" status=\"{}\" totalResultCount=\"{}\"><rim:RegistryObjectList>{list}</rim:RegistryObjectList>\
         </query:AdhocQueryResponse></soap:Body></soap:Envelope>",
        response::NS_SOAP,
        crate::xds::escape(relates_to),
        response::SUCCESS,
        refs.len()
    )
}

/// Runs the simulator until `stop` is set.
pub fn run(options: &Options, stop: Arc<AtomicBool>) -> Result<(), SimulatorError> {
    let tls = crate::tls::server_config(
        &options.certificate,
        &options.private_key,
        Some(&options.client_ca),
    )
    .map_err(SimulatorError::Tls)?;
    let state = load(&options.state)?;
    let listener =
        TcpListener::bind(options.listen).map_err(|e| SimulatorError::Bind(options.listen, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| SimulatorError::Bind(options.listen, e))?;
    let shared = Arc::new(Shared {
        state_path: options.state.clone(),
        state: Mutex::new(state),
        faults: Mutex::new(options.faults.clone()),
    });
    eprintln!(
        "dmp-sim ready on https://{}/ (client certificate required), state in {}",
        options.listen,
        options.state.display()
    );
    while !stop.load(Ordering::Relaxed) {
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(_) => continue,
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        let shared = shared.clone();
        let tls = tls.clone();
        std::thread::spawn(move || {
            let Ok(conn) = rustls::ServerConnection::new(tls) else {
                return;
            };
            let mut reader = BufReader::new(rustls::StreamOwned::new(conn, stream));
            let Ok(request) = http::read_message(&mut reader) else {
                return;
            };
            if let Reply::Send(bytes) = handle(&shared, &request) {
                let s = reader.get_mut();
                let _ = s.write_all(&bytes);
                let _ = s.flush();
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        });
    }
    Ok(())
}
