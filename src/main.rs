//! `drimbox`: the one binary of the box. Each subcommand is a thin shell over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use drimbox::config::{self, Config};
use drimbox::ipc::{self, Request, Response, Role};

mod admin_cli;
mod egress_cli;
mod ota_cli;

#[derive(Parser)]
#[command(name = "drimbox", version, about = "DRIMbox appliance firmware")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the supervisor and every service (the systemd service).
    Run {
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Run the whole box in a local directory with a generated configuration, in the foreground.
    Demo {
        #[arg(long, default_value = "drimbox-demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 11112)]
        dicom_port: u16,
        #[arg(long, default_value = "DRIMBOX")]
        ae_title: String,
        #[arg(long, default_value_t = 8080)]
        status_port: u16,
        #[arg(long, default_value_t = 2575)]
        hl7_port: u16,
        /// Port of the DMP simulator the demo starts and publishes to.
        #[arg(long, default_value_t = 8443)]
        dmp_port: u16,
        /// Do not start the DMP simulator (lots are then built and kept, not sent; nothing is
        /// then retrievable over WADO-RS either).
        #[arg(long)]
        no_dmp: bool,
        /// Port of the WADO-RS server (HTTPS, the demo's client certificate on its whitelist).
        #[arg(long, default_value_t = 8444)]
        wado_port: u16,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// The box's health: verdict, services, archive counters, disk (exit status 0 ok,
    /// 1 degraded, 2 failing). The same data as the status page.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// The health verdict that gates boot-complete.target (and so an update's commit): every
    /// service ready by the supervisor's account, and a self-test (archive socket, C-ECHO, the
    /// other listeners). Exit 0 healthy, 1 not healthy within --within seconds.
    Health {
        #[command(flatten)]
        target: Target,
        /// Keep looking this long for the box to become healthy (0: one look).
        #[arg(long, default_value_t = 0)]
        within: u64,
    },
    /// One study as the archive knows it (UIDs and counts, no patient data), as JSON.
    Study {
        study_uid: String,
        #[command(flatten)]
        target: Target,
    },
    /// Every exam and where it stands (awaiting images, on hold and why, published, …).
    Exams {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// One exam's history: its reports, its lots and their deliveries to the DMP.
    Exam {
        study_uid: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Export an exam's archived lots as an IHE XDM medium (a zip).
    Export {
        /// The medium's format (only XDM).
        format: ExportFormat,
        /// The exam's Study Instance UID.
        study_uid: String,
        /// Where to write the zip (default: `<study uid>.zip` here).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// The DMP simulator: HTTPS with client certificates, ITI-41 / ITI-18 / ITI-57, for tests and
    /// the demo (the real DMP cannot be reached from here).
    DmpSim {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        certificate: PathBuf,
        #[arg(long)]
        private_key: PathBuf,
        /// CA of the client certificates it accepts (the practices' authentication certificates).
        #[arg(long)]
        client_ca: PathBuf,
        /// JSON file holding its registry (created if missing).
        #[arg(long)]
        state: PathBuf,
        /// Fault modes for the next requests: delay=MS[:N], reset[:N], http500[:N], failure[:N],
        /// commit-then-drop[:N].
        #[arg(long)]
        fault: Vec<String>,
    },
    /// The national whitelist of DRIMboxes.
    Whitelist {
        #[command(subcommand)]
        command: WhitelistCmd,
    },
    /// Signed A/B updates: make, check, install and commit bundles.
    Ota {
        #[command(subcommand)]
        command: ota_cli::OtaCmd,
    },
    /// The per-service egress filter (nftables): which peers each service may connect to.
    Egress {
        #[command(subcommand)]
        command: egress_cli::EgressCmd,
    },
    /// The status page's administrator (the install form's credential).
    Admin {
        #[command(subcommand)]
        command: admin_cli::AdminCmd,
    },
    /// Image access by consumer DRIMboxes (WADO-RS).
    Wado {
        #[command(subcommand)]
        command: WadoCmd,
    },
    /// Time building the KOS and the signed lot of a synthetic exam (`scripts/bench-lot`).
    #[command(hide = true)]
    BenchLot {
        /// A report message naming the exam (ORU^R01 / MDM^T02).
        #[arg(long)]
        report: PathBuf,
        #[arg(long)]
        pkcs12: PathBuf,
        #[arg(long)]
        password_file: PathBuf,
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        #[arg(long, default_value_t = 2000)]
        instances: usize,
        #[arg(long, default_value_t = 10)]
        series: usize,
        #[arg(long, default_value_t = 21)]
        reps: usize,
    },
    /// Run one service (started by the supervisor, not by hand).
    #[command(hide = true)]
    Service {
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    #[value(name = "XDM", alias = "xdm")]
    Xdm,
}

#[derive(Subcommand)]
enum WhitelistCmd {
    /// Verify a whitelist file: print every check and its result; exit 0 only if it is valid
    /// (1 invalid, 2 the file or an option cannot be used).
    Verify {
        file: PathBuf,
        /// Verify at this time (RFC 3339, e.g. 2026-09-20T08:00:00Z) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// CRL files (DER or PEM) to check revocation with, instead of fetching the CRLs the
        /// certificates name.
        #[arg(long)]
        crl: Vec<PathBuf>,
        /// Do not check revocation (said plainly in the result).
        #[arg(long, conflicts_with = "crl")]
        offline: bool,
        /// One JSON object: every check's name, outcome and reason.
        #[arg(long)]
        json: bool,
        /// Trust anchors and expected signer from this configuration's [whitelist] (default:
        /// the IGC-Santé TEST root and intermediate, CN=Liste Blanche DRIM-M,
        /// OU=318751275100020).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Ask the running box's updater to download and verify the list now; print every check
    /// and the outcome (exit 0 installed or unchanged, 1 refused or not downloaded).
    Update {
        #[command(flatten)]
        target: Target,
        /// The outcome as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The list's history: the last attempts, newest first, from the archive.
    History {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum WadoCmd {
    /// The audit trail: the last WADO-RS requests, newest first (client certificate subject,
    /// UIDs, status, outcome, instances and bytes served).
    Accesses {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a configuration file and print every problem in it.
    Check { file: PathBuf },
}

#[derive(clap::Args)]
struct Target {
    /// The box's configuration file.
    #[arg(long, conflicts_with = "dir")]
    config: Option<PathBuf>,
    /// A demo's directory (uses DIR/drimbox.toml).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Target {
    fn config_path(&self) -> PathBuf {
        match (&self.config, &self.dir) {
            (Some(c), _) => c.clone(),
            (None, Some(d)) => d.join("drimbox.toml"),
            (None, None) => PathBuf::from(config::DEFAULT_CONFIG_PATH),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drimbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    Ok(stop)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Config {
            command: ConfigCmd::Check { file },
        } => match Config::load(&file) {
            Ok(c) => {
                println!("{}: OK", c.sources(&file));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Run { config } => supervise(&config),
        Cmd::Demo {
            dir,
            dicom_port,
            ae_title,
            status_port,
            hl7_port,
            dmp_port,
            no_dmp,
            wado_port,
        } => demo(
            &dir,
            dicom_port,
            &ae_title,
            status_port,
            hl7_port,
            (!no_dmp).then_some((dmp_port, wado_port)),
        ),
        Cmd::Service { name, config } => service(&name, &config),
        Cmd::Ota { command } => Ok(ota_cli::run(command)),
        Cmd::Admin { command } => Ok(admin_cli::run(command)),
        Cmd::Egress { command } => Ok(egress_cli::run(command)),
        Cmd::Status { target, json } => status(&target, json),
        Cmd::Health { target, within } => health(&target, within),
        Cmd::Study { study_uid, target } => study(&target, &study_uid),
        Cmd::Exams { target, json } => exams(&target, json),
        Cmd::Whitelist {
            command:
                WhitelistCmd::Verify {
                    file,
                    at,
                    crl,
                    offline,
                    json,
                    config,
                },
        } => whitelist_verify(&file, at.as_deref(), &crl, offline, json, config.as_deref()),
        Cmd::Whitelist {
            command: WhitelistCmd::Update { target, json },
        } => whitelist_update(&target, json),
        Cmd::Wado {
            command:
                WadoCmd::Accesses {
                    target,
                    limit,
                    json,
                },
        } => wado_accesses(&target, limit, json),
        Cmd::Whitelist {
            command:
                WhitelistCmd::History {
                    target,
                    limit,
                    json,
                },
        } => whitelist_history(&target, limit, json),
        Cmd::Exam {
            study_uid,
            target,
            json,
        } => exam(&target, &study_uid, json),
        Cmd::DmpSim {
            listen,
            certificate,
            private_key,
            client_ca,
            state,
            fault,
        } => {
            let faults = fault
                .iter()
                .map(|f| f.parse())
                .collect::<Result<Vec<drimbox::dmp::simulator::Fault>, String>>()
                .map_err(|e| anyhow::anyhow!("--fault: {e}"))?;
            let stop = stop_flag()?;
            drimbox::dmp::simulator::run(
                &drimbox::dmp::simulator::Options {
                    listen,
                    certificate,
                    private_key,
                    client_ca,
                    state,
                    faults,
                },
                stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchLot {
            report,
            pkcs12,
            password_file,
            algorithm,
            instances,
            series,
            reps,
        } => {
            let signer = drimbox::publisher::load_signer(&config::SigningConfig {
                pkcs12,
                password_file,
                algorithm,
            })?;
            let message =
                std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?;
            let (mut times, size) =
                drimbox::publisher::bench_lots(&message, &signer, instances, series, reps)
                    .map_err(|e| anyhow::anyhow!(e))?;
            times.sort_by(f64::total_cmp);
            println!(
                "{{\"instances\": {instances}, \"reps\": {reps}, \"lot_bytes\": {size}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"max_ms\": {:.3}}}",
                times[times.len() / 2],
                times[0],
                times[times.len() - 1]
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export {
            format: ExportFormat::Xdm,
            study_uid,
            out,
            target,
        } => export_xdm(&target, &study_uid, out),
    }
}

fn supervise(config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    drimbox::logging::init("supervisor", config.log.level);
    let stop = stop_flag()?;
    drimbox::supervisor::Supervisor::new(config_path, config).run(stop)?;
    Ok(ExitCode::SUCCESS)
}

/// The client certificate of the demo's consumer DRIMbox (openssl `-subj` form) and the same
/// DN as the whitelist writes it.
const DEMO_CONSUMER_SUBJECT: &str =
    "/C=FR/O=CABINET VOISIN DEMO/OU=499700367909007/CN=drimbox-demo-consumer";
const DEMO_CONSUMER_DN: &str =
    "CN=drimbox-demo-consumer,OU=499700367909007,O=CABINET VOISIN DEMO,C=FR";

/// The demo's whitelist, listing its consumer: written where the updater installs the list in
/// service. Not signed (the demo has no agency signer) and never downloaded (no [whitelist] url).
fn demo_whitelist(data_dir: &Path) -> Result<()> {
    let dir = data_dir.join("whitelist");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListeBlancheDRIM-M xmlns=\"https://github.com/ansforge/DRIM-M_DATA\" versionFormat=\"1.0.0\">\n\
         <!-- The drimbox demo's whitelist: not signed, not from the agency. -->\n\
         <DateDeGeneration>{}</DateDeGeneration>\n<ListeDomaines><Domaine><Identifiant>9999</Identifiant>\
         <db>127.0.0.1</db><vi>127.0.0.1</vi><Denomination>DEMO</Denomination>\
         <DNCertificatOperateur>{DEMO_CONSUMER_DN}</DNCertificatOperateur></Domaine></ListeDomaines>\n</ListeBlancheDRIM-M>\n",
        drimbox::status::rfc3339(drimbox::archive::now_ms())
    );
    drimbox::archive::store::write_atomically(&dir.join("liste-blanche.xml"), xml.as_bytes())
        .with_context(|| format!("writing the demo whitelist in {}", dir.display()))
}

/// The demo's test PKI, minted once with openssl: a CA, the simulator's server certificate and
/// the practice's certificate (signing and authentication) in a PKCS#12.
fn demo_pki(pki: &Path) -> Result<()> {
    if pki.join("practice.p12").is_file() && pki.join("wado-client.pem").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(pki).with_context(|| format!("creating {}", pki.display()))?;
    let openssl = |args: &[&str]| -> Result<()> {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .output()
            .context("running openssl (apt-get install openssl, or use --no-dmp)")?;
        if !o.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "365",
        "-subj",
        "/CN=DRIMbox demo CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    for (who, subject, ext) in [
        ("dmp-sim", "/CN=DMP simulator", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        (
            "practice",
            "/C=FR/O=CABINET DEMO/OU=499700367909006/CN=DRIMbox",
            "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        ),
        ("wado-server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("wado-client", DEMO_CONSUMER_SUBJECT, "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(pki.join(format!("{who}.ext")), ext)?;
        openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout",
            &format!("{who}.key"), "-out", &format!("{who}.csr"),
        ])?;
        openssl(&[
            "x509", "-req", "-in", &format!("{who}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "365", "-out", &format!("{who}.pem"), "-extfile",
            &format!("{who}.ext"),
        ])?;
    }
    openssl(&[
        "pkcs12",
        "-export",
        "-inkey",
        "practice.key",
        "-in",
        "practice.pem",
        "-out",
        "practice.p12",
        "-passout",
        "pass:demo",
    ])?;
    std::fs::write(pki.join("practice.pass"), "demo\n")?;
    Ok(())
}

fn demo(
    dir: &Path,
    dicom_port: u16,
    ae_title: &str,
    status_port: u16,
    hl7_port: u16,
    dmp_and_wado: Option<(u16, u16)>,
) -> Result<ExitCode> {
    let dmp_port = dmp_and_wado.map(|(d, _)| d);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let config_path = dir.join("drimbox.toml");
    let mut text = Config::demo_text(&dir, dicom_port, ae_title, status_port, hl7_port);
    let pki = dir.join("pki");
    let mut simulator = None;
    if let Some((port, wado_port)) = dmp_and_wado {
        demo_pki(&pki)?;
        demo_whitelist(&dir.join("data"))?;
        let p = |n: &str| format!("{:?}", pki.join(n).display().to_string());
        text += &format!(
            "\n# The demo's WADO-RS: HTTPS with the demo CA's certificates (pki/); its whitelist\n\
             # (data/whitelist/liste-blanche.xml, written by the demo) lists pki/wado-client.pem.\n\
             # Bearer tokens are not checked (no [wado.introspection] in the demo).\n\
             [wado]\nlisten = \"127.0.0.1\"\nport = {wado_port}\ncertificate = {}\nprivate_key = {}\nclient_ca = {}\n",
            p("wado-server.pem"),
            p("wado-server.key"),
            p("ca.pem"),
        );
        text += &format!(
            "\n# The demo's DMP: `drimbox dmp-sim` on 127.0.0.1:{port}, with the test PKI in pki/.\n\
             [publication]\nwado_base_url = \"https://127.0.0.1:{wado_port}/wado\"\nuid_root = \"1.2.250.1.999.1\"\n\
             institution_name = \"Cabinet de radiologie (demo)\"\n\
             content_type = {{ code = \"07\", scheme = \"1.2.250.1.213.2.2\", display = \"Consultation externe\" }}\n\
             [publication.signing]\npkcs12 = {}\npassword_file = {}\n\
             [dmp]\nurl = \"https://127.0.0.1:{port}/si-dmp-server/v2/services\"\ntrust_anchors = {}\n\
             pkcs12 = {}\npassword_file = {}\nlps_id = \"DEMO\"\nlps_homologation = \"DEMO-HOMOLOGATION\"\n\
             roles = [\"10^1.2.250.1.71.1.2.7^Medecin\", \"SM44^1.2.250.1.71.4.2.5^Radio-diagnostic (SM)\"]\n",
            p("practice.p12"),
            p("practice.pass"),
            p("ca.pem"),
            p("practice.p12"),
            p("practice.pass"),
        );
        let exe = std::env::current_exe().context("locating the drimbox binary")?;
        let child = std::process::Command::new(exe)
            .args(["dmp-sim", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--certificate")
            .arg(pki.join("dmp-sim.pem"))
            .arg("--private-key")
            .arg(pki.join("dmp-sim.key"))
            .arg("--client-ca")
            .arg(pki.join("ca.pem"))
            .arg("--state")
            .arg(dir.join("dmp-registry.json"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the DMP simulator")?;
        simulator = Some(child);
    }
    if let Err(problems) = Config::parse(&text) {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        bail!("invalid demo settings: {}", list.join("; "));
    }
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    println!("DRIMbox demo");
    println!("  configuration : {}", config_path.display());
    println!(
        "  DICOM         : AE title {} at 127.0.0.1:{}  (e.g. storescu -aec {} 127.0.0.1 {} FILES)",
        config.dicom.ae_title, config.dicom.port, config.dicom.ae_title, config.dicom.port
    );
    println!(
        "  data lands in : {}/studies/<StudyInstanceUID>/<SOPInstanceUID>.dcm",
        config.storage.data_dir.display()
    );
    println!(
        "  HL7 reports   : MLLP at 127.0.0.1:{}  (ORU^R01 / MDM^T02, T04, T10 carrying the CDA)",
        config.hl7.port
    );
    println!(
        "  status page   : http://127.0.0.1:{}/  (also /status.json, /metrics; `drimbox status --dir {}`)",
        config.status.port,
        dir.display()
    );
    if let Some(port) = dmp_port {
        println!(
            "  DMP simulator : https://127.0.0.1:{port}/ (client certificates, test PKI in {}); registry in {}",
            pki.display(),
            dir.join("dmp-registry.json").display()
        );
    }
    if let Some((_, wado_port)) = dmp_and_wado {
        let p = |n: &str| pki.join(n).display().to_string();
        println!(
            "  WADO-RS       : https://127.0.0.1:{wado_port}/wado/studies/<StudyInstanceUID>  as a consumer:\n\
             \x20                 curl --cacert {} --cert {} --key {} \\\n\
             \x20                   -H 'KOS-SOPInstanceUID: <the KOS UID, drimbox exam <study> --dir {}>' \\\n\
             \x20                   -H 'Accept: multipart/related; type=\"application/dicom\"; transfer-syntax=*' URL\n\
             \x20                 (demo whitelist: {}; Bearer tokens not checked)",
            p("ca.pem"),
            p("wado-client.pem"),
            p("wado-client.key"),
            dir.display(),
            DEMO_CONSUMER_DN
        );
    }
    println!("  stop with Ctrl-C");
    let result = supervise(&config_path);
    if let Some(mut child) = simulator {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Parses a configuration file without the machine checks (`drimbox config check` does those):
/// what the services and the administration commands read.
fn parse_config(path: &Path) -> Result<Config> {
    Config::read(path).map_err(|e| match e {
        config::ConfigError::Invalid { path, problems } => anyhow::anyhow!(
            "{}: {} problem(s), run `drimbox config check`",
            path.display(),
            problems.len()
        ),
        e => e.into(),
    })
}

fn service(name: &str, config_path: &Path) -> Result<ExitCode> {
    // The supervisor validated the file and the machine; a service (maybe a user that may not
    // write where the supervisor probed) only parses it.
    let config = parse_config(config_path)?;
    let stop = stop_flag()?;
    match name {
        "archive" => {
            drimbox::logging::init("archive", config.log.level);
            drimbox::archive::run(&config, stop)?;
        }
        "receiver" => {
            drimbox::logging::init("receiver", config.log.level);
            drimbox::dicom::scp::run(&config, stop)?;
        }
        "hl7" => {
            drimbox::logging::init("hl7", config.log.level);
            drimbox::hl7::listener::run(&config, stop)?;
        }
        "publisher" => {
            drimbox::logging::init("publisher", config.log.level);
            drimbox::publisher::run(&config, stop)?;
        }
        "whitelist" => {
            drimbox::logging::init("whitelist", config.log.level);
            drimbox::whitelist::updater::run(&config, stop)?;
        }
        "wado" => {
            drimbox::logging::init("wado", config.log.level);
            drimbox::wado::server::run(&config, stop)?;
        }
        "status" => {
            drimbox::logging::init("status", config.log.level);
            drimbox::status::run(&config, stop)?;
        }
        other => bail!("unknown service `{other}`"),
    }
    Ok(ExitCode::SUCCESS)
}

fn whitelist_verify(
    file: &Path,
    at: Option<&str>,
    crl_files: &[PathBuf],
    offline: bool,
    json: bool,
    config_path: Option<&Path>,
) -> Result<ExitCode> {
    use drimbox::whitelist::{trust, verify};
    let usage = |m: String| {
        eprintln!("drimbox whitelist verify: {m}");
        Ok(ExitCode::from(2))
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return usage(format!("{}: {e}", file.display())),
    };
    let at_unix = match at {
        None => drimbox::archive::now_ms() / 1000,
        Some(t) => match drimbox::status::parse_rfc3339(t) {
            Some(u) => u,
            None => return usage(format!("--at `{t}` is not an RFC 3339 time")),
        },
    };
    let wl = match config_path {
        Some(p) => parse_config(p)?.whitelist,
        None => config::WhitelistConfig::default(),
    };
    let trust = match trust::load(&wl) {
        Ok(t) => t,
        Err(e) => return usage(e.to_string()),
    };
    let mut crls = Vec::new();
    let mut notes = Vec::new();
    for f in crl_files {
        match trust::read_crl(f) {
            Ok(c) => crls.push(c),
            Err(e) => return usage(e.to_string()),
        }
    }
    if crl_files.is_empty() && !offline {
        // The CRLs the certificates name, fetched now.
        (crls, notes) = trust::gather_crls(&bytes, &trust, None, Duration::from_secs(20));
    }
    let revocation = verify::Revocation { crls, offline };
    let v = verify::verify(&bytes, &trust, &revocation, at_unix, None);
    if json {
        let mut value = serde_json::to_value(&v)?;
        value["file"] = serde_json::Value::String(file.display().to_string());
        value["notes"] = serde_json::json!(notes);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{} ({} bytes, sha256 {}) verified at {}",
            file.display(),
            v.size,
            v.sha256,
            v.verified_at
        );
        for c in &v.checks {
            let tag = match c.outcome {
                verify::Outcome::Pass => "PASS",
                verify::Outcome::Fail => "FAIL",
                verify::Outcome::NotChecked => "N/A ",
            };
            println!("  {tag} {}: {}", c.name, c.reason);
        }
        for n in &notes {
            println!("  note: {n}");
        }
        match (v.valid, v.revocation_checked) {
            (true, true) => println!("VALID"),
            (true, false) => println!("VALID (revocation NOT checked: --offline)"),
            (false, _) => println!(
                "INVALID: {}",
                v.first_failure().unwrap_or_else(|| "no check ran".into())
            ),
        }
    }
    Ok(if v.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn whitelist_update(target: &Target, json: bool) -> Result<ExitCode> {
    use std::io::{BufRead, Write};
    let config = parse_config(&target.config_path())?;
    let path = drimbox::whitelist::updater::control_path(&config.storage.run_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("{}: is the box running?", path.display()))?;
    // The download has its deadline, the CRLs theirs: the answer comes well within this.
    let wait = config
        .whitelist
        .download
        .as_ref()
        .map_or(Duration::from_secs(60), |d| d.timeout)
        + Duration::from_secs(120);
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(b"update\n")?;
    let mut line = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut line)
        .with_context(|| format!("waiting for the updater's answer on {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("the updater's answer is not JSON")?;
    if let Some(e) = v["error"].as_str() {
        eprintln!("drimbox whitelist update: {e}");
        return Ok(ExitCode::from(2));
    }
    let a = &v["attempt"];
    let ok = matches!(a["outcome"].as_str(), Some("installed" | "unchanged"));
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} ({} bytes, sha256 {})",
            a["url"].as_str().unwrap_or(""),
            a["size"],
            a["sha256"].as_str().unwrap_or("-")
        );
        for c in v["checks"].as_array().into_iter().flatten() {
            let tag = match c["outcome"].as_str() {
                Some("pass") => "PASS",
                Some("fail") => "FAIL",
                _ => "N/A ",
            };
            println!(
                "  {tag} {}: {}",
                c["name"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            );
        }
        for n in v["notes"].as_array().into_iter().flatten() {
            println!("  note: {}", n.as_str().unwrap_or(""));
        }
        if let Some(p) = a["proof"].as_str() {
            println!(
                "  proof: {} ({})",
                drimbox::whitelist::updater::Files::new(&config.storage.data_dir)
                    .proofs()
                    .join(p)
                    .display(),
                if a["proof_signed"] == true {
                    "signed"
                } else {
                    "UNSIGNED: no [whitelist] proof_pkcs12"
                }
            );
        }
        let outcome = a["outcome"].as_str().unwrap_or("?").replace('_', " ");
        match a["reason"].as_str() {
            Some(r) if !ok => println!(
                "{}: {r} (the list in service is unchanged)",
                outcome.to_uppercase()
            ),
            _ => println!("{}", outcome.to_uppercase()),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn whitelist_history(target: &Target, limit: u32, json: bool) -> Result<ExitCode> {
    let attempts = match reader(target)?.call(&Request::WhitelistAttempts { limit })? {
        Response::WhitelistAttempts(v) => v,
        other => bail!("unexpected answer: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&attempts)?);
        return Ok(ExitCode::SUCCESS);
    }
    for a in &attempts {
        println!(
            "{}  {:<9} {:<20} {}{}",
            drimbox::status::rfc3339(a.at_unix * 1000),
            a.trigger,
            a.outcome.label(),
            a.generated
                .as_deref()
                .map_or(String::new(), |g| format!("list of {g}, ")),
            a.reason.as_deref().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn wado_accesses(target: &Target, limit: u32, json: bool) -> Result<ExitCode> {
    let accesses = match reader(target)?.call(&Request::Accesses { limit })? {
        Response::Accesses(v) => v,
        other => bail!("unexpected answer: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&accesses)?);
        return Ok(ExitCode::SUCCESS);
    }
    for a in &accesses {
        println!(
            "{}  {} {:<18} {:>4} inst {:>10} B  {}  {}",
            drimbox::status::rfc3339(a.at_ms),
            a.status,
            a.outcome,
            a.instances,
            a.bytes,
            a.path,
            a.client
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn reader(target: &Target) -> Result<ipc::Client> {
    let config = parse_config(&target.config_path())?;
    Ok(ipc::Client::connect(
        &config.storage.run_dir,
        Role::Reader,
        Duration::from_secs(10),
    )?)
}

fn status(target: &Target, json: bool) -> Result<ExitCode> {
    let config = parse_config(&target.config_path())?;
    let s = drimbox::status::collect(&config);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", drimbox::status::summary_text(&s));
    }
    Ok(ExitCode::from(match s.verdict {
        drimbox::status::model::Verdict::Ok => 0,
        drimbox::status::model::Verdict::Degraded => 1,
        drimbox::status::model::Verdict::Failing => 2,
    }))
}

fn health(target: &Target, within: u64) -> Result<ExitCode> {
    let config = parse_config(&target.config_path())?;
    let verdict =
        drimbox::health::wait_healthy(&config, Duration::from_secs(within), Duration::from_secs(2));
    let (observation, problems) = match verdict {
        Ok(o) => (o, Vec::new()),
        Err((o, p)) => (o, p),
    };
    for p in &observation.probes {
        if p.outcome.is_ok() {
            println!("ok: {}", p.what);
        }
    }
    if problems.is_empty() {
        println!("healthy");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        println!("not healthy: {p}");
    }
    Ok(ExitCode::from(1))
}

fn study(target: &Target, study_uid: &str) -> Result<ExitCode> {
    let mut client = reader(target)?;
    let Response::Study(s) = client.call(&Request::Study {
        study_uid: study_uid.to_string(),
    })?
    else {
        bail!("unexpected answer from the archive");
    };
    match s {
        Some(s) => {
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no study {study_uid} in the archive");
            Ok(ExitCode::from(3))
        }
    }
}

fn exams(target: &Target, json: bool) -> Result<ExitCode> {
    let mut client = reader(target)?;
    let Response::Exams(v) = client.call(&Request::Exams)? else {
        bail!("unexpected answer from the archive");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.is_empty() {
        println!("no exam yet");
    } else {
        println!(
            "{:<64}  {:<20}  {:>6}  {:>4}  why",
            "study", "state", "images", "lots"
        );
        for e in &v {
            println!(
                "{:<64}  {:<20}  {:>6}  {:>4}  {}",
                e.study_uid,
                e.label,
                e.images,
                e.lots,
                e.reason.as_deref().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exam(target: &Target, study_uid: &str, json: bool) -> Result<ExitCode> {
    let mut client = reader(target)?;
    let Response::Exam(h) = client.call(&Request::Exam {
        study_uid: study_uid.to_string(),
    })?
    else {
        bail!("unexpected answer from the archive");
    };
    let Some(h) = h else {
        eprintln!("no exam {study_uid} in the archive");
        return Ok(ExitCode::from(3));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(ExitCode::SUCCESS);
    }
    let t = drimbox::status::rfc3339;
    println!("exam {study_uid}: {}", h.exam.label);
    if let Some(r) = &h.exam.reason {
        println!("  why: {r}");
    }
    println!("  images: {}", h.exam.images);
    for r in &h.reports {
        println!(
            "  report  {}  {}  {}",
            t(r.received_ms),
            r.message_type,
            r.action
        );
    }
    for l in &h.lots {
        println!(
            "  lot {}  {:?}  {:?}  built {}  KOS {}",
            l.seq,
            l.action,
            l.status,
            t(l.built_ms),
            l.kos_sop_uid
        );
        let d = &l.delivery;
        if d.attempts > 0 {
            println!(
                "          sent {} time(s){}{}{}",
                d.attempts,
                d.accepted_ms
                    .map(|a| format!(", accepted {}", t(a)))
                    .unwrap_or_default(),
                d.entry_uuid
                    .as_ref()
                    .map(|u| format!(", entry {u}"))
                    .unwrap_or_default(),
                d.last_error
                    .as_ref()
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default()
            );
        }
        for (code, context) in &d.errors {
            println!("          DMP error {code}: {context}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the exam's archived lots straight from the store (they never change once archived)
/// and writes the XDM zip atomically.
fn export_xdm(target: &Target, study_uid: &str, out: Option<PathBuf>) -> Result<ExitCode> {
    let config = parse_config(&target.config_path())?;
    if !drimbox::archive::store::is_safe_uid(study_uid) {
        bail!("`{study_uid}` is not a Study Instance UID");
    }
    let layout = drimbox::archive::store::Layout::new(&config.storage.data_dir);
    let dir = layout.lots().join(study_uid);
    let mut lots = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no lot archived for exam {study_uid} (see `drimbox exams`)");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(seq) = name.strip_prefix("SS").and_then(|n| n.parse::<u32>().ok()) else {
            continue; // an unfinished copy (`.SS….tmp`)
        };
        let mut files = Vec::new();
        for f in std::fs::read_dir(entry.path())? {
            let f = f?;
            let bytes = std::fs::read(f.path())
                .with_context(|| format!("reading {}", f.path().display()))?;
            files.push((f.file_name().to_string_lossy().to_string(), bytes));
        }
        lots.push(drimbox::xdm::ArchivedLot { seq, files });
    }
    lots.sort_by_key(|l| l.seq);
    if lots.is_empty() {
        eprintln!("no lot archived for exam {study_uid} (see `drimbox exams`)");
        return Ok(ExitCode::from(3));
    }
    let files = drimbox::xdm::layout(
        study_uid,
        &lots,
        &drimbox::xdm::Sender {
            institution: config.publication.institution_name.clone(),
        },
    );
    let stamp: String = drimbox::status::rfc3339(drimbox::archive::now_ms())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let (date, time) = drimbox::zip::dos_datetime(&stamp);
    let zip = drimbox::zip::write(&files, date, time)?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{study_uid}.zip")));
    let tmp = out.with_extension("zip.tmp");
    std::fs::write(&tmp, &zip).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{}: {} lot(s), {} bytes",
        out.display(),
        lots.len(),
        zip.len()
    );
    Ok(ExitCode::SUCCESS)
}
