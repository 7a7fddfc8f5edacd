//! The per-service egress filter, loaded by `drimbox egress apply` with the real `nft` into the
//! kernel, in a network namespace of its own (`unshare --net`, so the host's tables are never
//! touched): connections are then opened as each service's uid (`setpriv`) to listeners in that
//! namespace, and the kernel lets through exactly what the configuration's row allows.
//! Needs root (CI runs as root): nft and unshare need CAP_NET_ADMIN and CAP_SYS_ADMIN.

mod common;

use std::fs;
use std::process::Command;

/// Uids no account on the machine has: the filter matches numbers, not names.
const RECEIVER: u32 = 47_001;
const PUBLISHER: u32 = 47_002;
const WHITELIST: u32 = 47_003;

#[test]
fn each_service_reaches_only_the_peers_of_its_row() {
    assert!(
        common::is_root(),
        "this test loads nftables rules in a network namespace: run it as root (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The DMP at an address (its port only), the whitelist by name (its port, 80, DNS).
    // Files the configuration names; their contents are not this test's business.
    fs::create_dir_all(d.join("k")).unwrap();
    for f in ["ca.pem", "p.p12", "p.pass"] {
        fs::write(d.join("k").join(f), b"-").unwrap();
    }
    let config = d.join("drimbox.toml");
    fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n\
             [whitelist]\nurl = \"https://lb.example:9443/lb.xml\"\ntls_trust_anchors = {k:?}\n\
             [dmp]\nurl = \"https://127.0.0.1:8443/si-dmp-server/v2/services\"\n\
             trust_anchors = {k:?}\npkcs12 = {p12:?}\npassword_file = {pass:?}\n\
             lps_id = \"T\"\nlps_homologation = \"T\"\nroles = [\"10^1.2.250.1.71.1.2.7^Medecin\"]\n",
            d.join("data").display().to_string(),
            k = d.join("k/ca.pem").display().to_string(),
            p12 = d.join("k/p.p12").display().to_string(),
            pass = d.join("k/p.pass").display().to_string(),
        ),
    )
    .unwrap();
    let check = Command::new(common::bin())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", common::text(&check));

    let mut uids = Vec::new();
    for (service, uid) in [
        ("archive", 47_010),
        ("receiver", RECEIVER),
        ("hl7", 47_011),
        ("publisher", PUBLISHER),
        ("whitelist", WHITELIST),
        ("wado", 47_012),
        ("status", 47_013),
    ] {
        uids.push(format!("--uid={service}={uid}"));
    }
    let script = format!(
        r#"set -u
trap 'kill $(jobs -p) 2>/dev/null' EXIT
ip link set lo up
{bin} egress apply --config {config} {uids} || exit 3
# Listeners as root: the DMP's port, another port, port 80; one as the receiver (a server).
for p in 8443 8444 80 9443; do
    /usr/bin/python3 -c 'import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); time.sleep(60)' $p &
done
setpriv --reuid={RECEIVER} --regid={RECEIVER} --clear-groups /usr/bin/python3 -c 'import socket,time
s=socket.socket(); s.bind(("127.0.0.1", 11112)); s.listen(4); s.settimeout(20)
c,_=s.accept(); c.sendall(b"served"); time.sleep(1)' &
sleep 1
try() {{
    # try NAME UID PORT: one TCP connect as UID (the system python: the uid has no home);
    # prints "NAME ok" or "NAME refused ERRNO".
    setpriv --reuid="$2" --regid="$2" --clear-groups /usr/bin/python3 -c 'import socket,sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=3); print(sys.argv[1], "ok")
except OSError as e:
    print(sys.argv[1], "refused", e.errno)' "$1" "$3"
}}
try receiver-to-dmp {RECEIVER} 8443
try publisher-to-dmp {PUBLISHER} 8443
try publisher-elsewhere {PUBLISHER} 8444
try whitelist-list {WHITELIST} 9443
try whitelist-crl {WHITELIST} 80
try whitelist-elsewhere {WHITELIST} 8444
try root-elsewhere 0 8444
/usr/bin/python3 -c 'import socket
c=socket.create_connection(("127.0.0.1", 11112), timeout=3); print("served-by-receiver", c.recv(16).decode())'
nft list table inet drimbox_egress >/dev/null && echo table-loaded
"#,
        bin = common::bin(),
        config = config.display(),
        uids = uids.join(" "),
    );
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let said = common::text(&out);
    assert!(said.contains("egress filter loaded"), "{said}");
    let line = |name: &str| {
        said.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{said}"))
            .to_string()
    };
    // EHOSTUNREACH (113): rejected with ICMP admin-prohibited, at once (no SYN retries).
    assert_eq!(
        line("receiver-to-dmp"),
        "receiver-to-dmp refused 113",
        "{said}"
    );
    assert_eq!(line("publisher-to-dmp"), "publisher-to-dmp ok", "{said}");
    assert_eq!(
        line("publisher-elsewhere"),
        "publisher-elsewhere refused 113",
        "{said}"
    );
    assert_eq!(line("whitelist-list"), "whitelist-list ok", "{said}");
    assert_eq!(line("whitelist-crl"), "whitelist-crl ok", "{said}");
    assert_eq!(
        line("whitelist-elsewhere"),
        "whitelist-elsewhere refused 113",
        "{said}"
    );
    assert_eq!(
        line("root-elsewhere"),
        "root-elsewhere ok",
        "root is not filtered: {said}"
    );
    assert_eq!(
        line("served-by-receiver"),
        "served-by-receiver served",
        "answers on connections to a service pass: {said}"
    );
    assert!(said.contains("table-loaded"), "{said}");

    // A service whose system user does not exist is named, and nothing is loaded.
    let o = Command::new("unshare")
        .args(["--net"])
        .arg(common::bin())
        .args(["egress", "apply", "--config"])
        .arg(&config)
        .arg("--uid=archive=1")
        .output()
        .unwrap();
    let said = common::text(&o);
    if common::text(
        &Command::new("getent")
            .args(["passwd", "drimbox-receiver"])
            .output()
            .unwrap(),
    )
    .is_empty()
    {
        assert_eq!(o.status.code(), Some(2), "{said}");
        assert!(said.contains("service receiver"), "{said}");
    }
}
