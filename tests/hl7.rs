//! The HL7 listener with a real MLLP client (Debian python3-hl7's `mllp_send`) and the agency's
//! samples: AA only once recorded, the same ACK for a re-sent message and no second record, AE
//! for what cannot be read, AR (with ERR) for what the profile refuses.

mod common;

use std::fs;

use common::*;

fn sample(name: &str) -> Vec<u8> {
    fs::read(shared().join("ref/hl7").join(name)).unwrap()
}

fn send(b: &DrimBox, message: &[u8]) -> Vec<u8> {
    mllp_send(b.hl7_port, message)
}

fn field(ack: &[u8], seg: &str, n: usize) -> String {
    hl7_field(ack, seg, n)
}

fn reports(b: &DrimBox) -> u64 {
    b.summary()["reports"].as_u64().unwrap()
}

#[test]
fn the_agencys_messages_are_recorded_once_and_acknowledged() {
    let b = DrimBox::start(Settings::default());
    let oru = sample("ORU_R01_K.hl7");
    let ack = send(&b, &oru);
    assert_eq!(
        field(&ack, "MSA", 1),
        "AA",
        "{}",
        String::from_utf8_lossy(&ack)
    );
    assert_eq!(
        field(&ack, "MSA", 2),
        "id",
        "MSA-2 echoes the message's MSH-10"
    );
    assert_eq!(field(&ack, "MSH", 8), "ACK^R01^ACK"); // MSH-9
                                                      // (MSH-1 is the separator, so MSH-n is the n-1th piece.) MSH-10: within ST(20).
    let id = field(&ack, "MSH", 9);
    assert!(id.len() <= 20, "{id}");
    assert_eq!(reports(&b), 1);
    // Recorded byte for byte.
    let stored: Vec<_> = fs::read_dir(b.data_dir.join("reports"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(fs::read(stored[0].path()).unwrap(), oru);
    assert!(fs::read_dir(b.data_dir.join("hl7-staging"))
        .unwrap()
        .next()
        .is_none());

    // The same message again: the same ACK, byte for byte, and no second record.
    assert_eq!(send(&b, &oru), ack);
    assert_eq!(reports(&b), 1);

    // The MDM^T02 (v2.6): its own record.
    let ack = send(&b, &sample("MDM_T02_L.hl7"));
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(field(&ack, "MSH", 8), "ACK^T02^ACK");
    assert_eq!(reports(&b), 2);

    // A restarted listener keeps answering, and remembers what it recorded.
    let pid = b.service_pid("hl7").unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    b.wait_service_restarted("hl7", pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while try_tcp(b.hl7_port).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(field(&send(&b, &oru), "MSA", 1), "AA");
    assert_eq!(reports(&b), 2);
    let (_, metrics) = b.http_get("/metrics");
    assert!(
        metrics.lines().any(|l| l == "drimbox_archive_reports 2"),
        "{metrics}"
    );
    assert!(!b.log().contains("PAT-TROIS"), "patient name in the log");
}

fn try_tcp(port: u16) -> std::io::Result<std::net::TcpStream> {
    std::net::TcpStream::connect(("127.0.0.1", port))
}

#[test]
fn malformed_messages_get_ae_and_refused_ones_ar_with_err() {
    let b = DrimBox::start(Settings::default());
    let oru = String::from_utf8(sample("ORU_R01_K.hl7")).unwrap();
    let case = |from: &str, to: &str| send(&b, oru.replacen(from, to, 1).as_bytes());

    let ack = send(&b, b"this is not HL7");
    assert_eq!(field(&ack, "MSA", 1), "AE");
    assert_eq!(field(&ack, "ERR", 3), "100^Segment sequence error^HL70357");

    let ack = case("|UNICODE UTF-8|", "|KLINGON|");
    assert_eq!(field(&ack, "MSA", 1), "AE");
    assert_eq!(field(&ack, "ERR", 2), "MSH^1^18");

    let ack = case("^INS^^", "^XX^^");
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "ERR", 2), "PID^1^3");
    assert!(field(&ack, "ERR", 3).starts_with("101^"));

    let ack = case("ORC|NW|", "ORC|CA|");
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert!(field(&ack, "ERR", 8).contains("inconsistent"));

    let ack = case("^Base64^PD94", "^Base64^P!94");
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "ERR", 2), "OBX^1^5");

    // Valid base64, but not a CDA.
    let start = oru.find("^Base64^").unwrap() + "^Base64^".len();
    let end = start + oru[start..].find('|').unwrap();
    let not_cda = format!("{}{}{}", &oru[..start], "PGh0bWwvPg==", &oru[end..]);
    let ack = send(&b, not_cda.as_bytes());
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert!(
        field(&ack, "ERR", 8).contains("not a ClinicalDocument"),
        "{}",
        String::from_utf8_lossy(&ack)
    );

    let ack = case("ORU^R01^ORU_R01", "ADT^A01^ADT_A01");
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert!(field(&ack, "ERR", 3).starts_with("200^"));

    // Nothing refused was recorded, and the listener counted each answer.
    assert_eq!(reports(&b), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let snap = b.snapshot();
        let hl7 = snap["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "hl7")
            .cloned()
            .unwrap();
        let c = &hl7["counters"];
        if c["messages_error"] == 2 && c["messages_rejected"] == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counters: {c}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // A control id reused by the same sender for a different message: refused, not taken for a
    // re-send (neither message is silently lost).
    assert_eq!(field(&send(&b, oru.as_bytes()), "MSA", 1), "AA");
    let other = oru.replacen("PAT-TROIS^DOMINIQUE", "PAT-TROIS^DOMINIQUE-MARIE", 1);
    let ack = send(&b, other.as_bytes());
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "ERR", 2), "MSH^1^10");
    assert_eq!(reports(&b), 1);
}

/// MLLP over TLS with Python's `ssl` (OpenSSL) as the RIS: the message and its ACK travel
/// encrypted; with a client CA configured, a RIS without a certificate from it is refused.
fn send_tls(
    port: u16,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
    message: &[u8],
) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("msg.hl7");
    fs::write(&f, message).unwrap();
    let load = match client {
        Some((cert, key)) => format!(
            "c.load_cert_chain({:?}, {:?})",
            cert.display().to_string(),
            key.display().to_string()
        ),
        None => String::new(),
    };
    let script = format!(
        "import socket, ssl, sys\n\
         c = ssl.create_default_context(cafile={ca:?})\n\
         {load}\n\
         s = c.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname='127.0.0.1')\n\
         s.sendall(b'\\x0b' + open({f:?}, 'rb').read() + b'\\x1c\\x0d')\n\
         buf = b''\n\
         while not buf.endswith(b'\\x1c\\x0d'):\n\
         \x20   chunk = s.recv(65536)\n\
         \x20   if not chunk: break\n\
         \x20   buf += chunk\n\
         sys.stdout.buffer.write(buf)\n",
        ca = ca.display().to_string(),
        f = f.display().to_string(),
    );
    let o = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(text(&o));
    }
    let out = o.stdout;
    let start = out.iter().position(|&c| c == 0x0b).ok_or("no frame")? + 1;
    let end = out.iter().position(|&c| c == 0x1c).ok_or("no frame end")?;
    Ok(out[start..end].to_vec())
}

#[test]
fn mllp_over_tls_with_and_without_client_certificates() {
    let pki = tempfile::tempdir().unwrap();
    mint_pki(pki.path(), "ris");
    let p = |n: &str| pki.path().join(n);
    let b = DrimBox::start(Settings {
        extra_config: format!(
            "\n[hl7.tls]\ncertificate = {:?}\nprivate_key = {:?}\nclient_ca = {:?}\n",
            p("ris-server.pem").display().to_string(),
            p("ris-server.key").display().to_string(),
            p("ris-ca.pem").display().to_string()
        ),
        ..Settings::default()
    });
    let oru = sample("ORU_R01_K.hl7");
    let ack = send_tls(
        b.hl7_port,
        &p("ris-ca.pem"),
        Some((&p("ris-client.pem"), &p("ris-client.key"))),
        &oru,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(reports(&b), 1);
    // No client certificate: the handshake fails, nothing is recorded.
    let refused = send_tls(b.hl7_port, &p("ris-ca.pem"), None, &sample("MDM_T02_L.hl7"));
    assert!(refused.is_err(), "a RIS without certificate was served");
    // Plain MLLP on the TLS port: the bytes are not a TLS handshake, no ACK comes back.
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", b.hl7_port)).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut framed = vec![0x0b];
    framed.extend_from_slice(&sample("MDM_T02_L.hl7"));
    framed.extend_from_slice(&[0x1c, 0x0d]);
    let _ = plain.write_all(&framed);
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("MSA|"),
        "plain MLLP answered on the TLS port"
    );
    assert_eq!(reports(&b), 1);
}
