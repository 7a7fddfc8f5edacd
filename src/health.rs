//! The box's health verdict: what `drimbox health` answers, and what gates
//! `boot-complete.target` (systemd/drimbox-health.service), so that an update is blessed and
//! its floor raised only on a box that does its job.
//!
//! Healthy means: the supervisor reports, recently, that every service is ready, and a
//! self-test from the box's own side of the wire passes: the archive answers on its socket, the
//! receiver answers a C-ECHO, and the other listeners (HL7, status page, WADO-RS when
//! configured) accept a connection. [`judge`] decides from an [`Observation`] (pure, tested
//! without sockets); [`observe`] makes one; [`wait_healthy`] repeats both until a deadline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::dicom::dimse;
use crate::ipc::{self, Request, Response, Role};
use crate::status::model::ServiceState;
use crate::supervisor::{self, HealthRecord};

/// The calling AE title of the self-test's C-ECHO.
pub const PROBE_AE: &str = "DRIMBOX-HEALTH";

/// One self-test probe and what came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// What was probed, e.g. `receiver C-ECHO on 127.0.0.1:104`.
    pub what: String,
    pub outcome: Result<(), String>,
}

/// What the box looked like at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub now_ms: i64,
    pub supervisor: Option<HealthRecord>,
    pub probes: Vec<Probe>,
}

/// The problems that make the box unhealthy, one sentence each; none: healthy.
pub fn judge(o: &Observation) -> Vec<String> {
    let mut problems = Vec::new();
    match &o.supervisor {
        None => problems.push("the supervisor is not running (no health record)".to_string()),
        Some(h) if o.now_ms - h.updated_at_ms > supervisor::HEALTH_STALE_MS => {
            problems.push(format!(
                "the supervisor has not reported for {} s",
                (o.now_ms - h.updated_at_ms) / 1000
            ))
        }
        Some(h) => {
            if h.services.is_empty() {
                problems.push("the supervisor reports no services".to_string());
            }
            if !h.ready {
                problems.push("not every service has been ready yet".to_string());
            }
            for s in &h.services {
                if s.state != ServiceState::Ready {
                    problems.push(format!("{} is {:?}", s.name, s.state).to_lowercase());
                }
            }
        }
    }
    for p in &o.probes {
        if let Err(e) = &p.outcome {
            problems.push(format!("{}: {e}", p.what));
        }
    }
    problems
}

/// Where to reach a listener bound to `listen` from the box itself.
fn local(listen: IpAddr, port: u16) -> SocketAddr {
    let ip = match listen {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, port)
}

/// One observation of the box described by `config`.
pub fn observe(config: &Config, timeout: Duration) -> Observation {
    let mut probes = Vec::new();
    let run_dir = &config.storage.run_dir;
    let archive = ipc::Client::connect(run_dir, Role::Reader, timeout)
        .map_err(|e| e.to_string())
        .and_then(|mut c| c.call(&Request::Summary).map_err(|e| e.to_string()))
        .and_then(|r| match r {
            Response::Summary(_) => Ok(()),
            other => Err(format!("unexpected answer {other:?}")),
        });
    probes.push(Probe {
        what: "archive (reader socket)".into(),
        outcome: archive,
    });
    let dicom = local(config.dicom.listen, config.dicom.port);
    probes.push(if config.dicom.tls.is_some() {
        // DICOM TLS asks for a client certificate the box does not hold for itself.
        Probe {
            what: format!("receiver (TLS) on {dicom}"),
            outcome: connect(dicom, timeout),
        }
    } else {
        Probe {
            what: format!("receiver C-ECHO on {dicom}"),
            outcome: echo(dicom, &config.dicom.ae_title, timeout),
        }
    });
    let mut listeners = vec![
        ("HL7 listener", local(config.hl7.listen, config.hl7.port)),
        (
            "status page",
            local(config.status.listen, config.status.port),
        ),
    ];
    if let Some(w) = &config.wado {
        listeners.push(("WADO-RS server", local(w.listen, w.port)));
    }
    for (what, addr) in listeners {
        probes.push(Probe {
            what: format!("{what} on {addr}"),
            outcome: connect(addr, timeout),
        });
    }
    Observation {
        now_ms: crate::archive::now_ms(),
        supervisor: supervisor::read_health(run_dir),
        probes,
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|e| format!("no connection: {e}"))
}

/// A C-ECHO to the receiver. An association rejected for the calling AE title (an allow-list
/// without ours) still proves the receiver is up and answering: it counts as a pass.
pub fn echo(addr: SocketAddr, called: &str, timeout: Duration) -> Result<(), String> {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let options = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title(PROBE_AE)
        .called_ae_title(called)
        .with_abstract_syntax(dimse::VERIFICATION)
        .connection_timeout(timeout)
        .read_timeout(timeout)
        .write_timeout(timeout);
    let mut association = match options.establish(addr) {
        Ok(a) => a,
        Err(dicom_ul::association::Error::Rejected { association_rj, .. }) => {
            return match association_rj.source {
                dicom_ul::pdu::AssociationRJSource::ServiceUser(
                    dicom_ul::pdu::AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                ) => Ok(()),
                other => Err(format!("association rejected: {other:?}")),
            }
        }
        Err(e) => return Err(format!("association: {e}")),
    };
    let context = association
        .presentation_contexts()
        .first()
        .map(|c| c.id)
        .ok_or("no presentation context accepted")?;
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: PDataValueType::Command,
                is_last: true,
                data: dimse::echo_request(1),
            }],
        })
        .map_err(|e| format!("C-ECHO-RQ: {e}"))?;
    let answer = association
        .receive()
        .map_err(|e| format!("C-ECHO-RSP: {e}"))?;
    let _ = association.release();
    let Pdu::PData { data } = answer else {
        return Err(format!("C-ECHO-RSP: got {answer:?}"));
    };
    let command: Vec<u8> = data.into_iter().flat_map(|v| v.data).collect();
    let command = dimse::Command::decode(&command).map_err(|e| format!("C-ECHO-RSP: {e}"))?;
    match (command.command_field(), command.status()) {
        (Ok(dimse::C_ECHO_RSP), Some(dimse::status::SUCCESS)) => Ok(()),
        (field, status) => Err(format!(
            "C-ECHO-RSP: command {field:?}, status {status:04X?}"
        )),
    }
}

/// Observes the box until it is healthy (Ok, with the passing probes) or `within` has passed
/// (Err, with the last problems). A box that is still starting gets the whole time.
pub fn wait_healthy(
    config: &Config,
    within: Duration,
    every: Duration,
) -> Result<Observation, (Observation, Vec<String>)> {
    let deadline = Instant::now() + within;
    loop {
        let o = observe(config, Duration::from_secs(5));
        let problems = judge(&o);
        if problems.is_empty() {
            return Ok(o);
        }
        if Instant::now() + every >= deadline {
            return Err((o, problems));
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::model::ServiceStatus;

    fn service(name: &str, state: ServiceState) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            pid: Some(2),
            uptime_seconds: 9,
            restarts: 0,
            last_error: None,
            counters: Default::default(),
        }
    }

    fn healthy() -> Observation {
        Observation {
            now_ms: 10_000,
            supervisor: Some(HealthRecord {
                supervisor_pid: 1,
                updated_at_ms: 9_500,
                ready: true,
                services: vec![
                    service("archive", ServiceState::Ready),
                    service("receiver", ServiceState::Ready),
                ],
            }),
            probes: vec![Probe {
                what: "receiver C-ECHO on 127.0.0.1:104".into(),
                outcome: Ok(()),
            }],
        }
    }

    #[test]
    fn every_service_ready_and_every_probe_passing_is_healthy() {
        assert_eq!(judge(&healthy()), Vec::<String>::new());
    }

    #[test]
    fn each_shortfall_is_named() {
        let mut o = healthy();
        o.supervisor = None;
        assert_eq!(
            judge(&o),
            ["the supervisor is not running (no health record)"]
        );

        let mut o = healthy();
        o.now_ms = 20_000;
        assert_eq!(judge(&o), ["the supervisor has not reported for 10 s"]);

        let mut o = healthy();
        let h = o.supervisor.as_mut().unwrap();
        h.ready = false;
        h.services[1].state = ServiceState::Restarting;
        assert_eq!(
            judge(&o),
            [
                "not every service has been ready yet",
                "receiver is restarting"
            ]
        );

        let mut o = healthy();
        o.supervisor.as_mut().unwrap().services.clear();
        assert_eq!(judge(&o), ["the supervisor reports no services"]);

        let mut o = healthy();
        o.probes[0].outcome = Err("association: connection refused".into());
        assert_eq!(
            judge(&o),
            ["receiver C-ECHO on 127.0.0.1:104: association: connection refused"]
        );
    }

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback() {
        assert_eq!(
            local("0.0.0.0".parse().unwrap(), 104),
            "127.0.0.1:104".parse().unwrap()
        );
        assert_eq!(
            local("::".parse().unwrap(), 8080),
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            local("10.0.0.5".parse().unwrap(), 2575),
            "10.0.0.5:2575".parse().unwrap()
        );
    }
}
