//! The systemd unit and the files the image puts around the binary (`systemd/`, `overlay/`),
//! checked with systemd's own tools: the unit's sandbox exposure, `systemd-analyze verify`, and
//! the users and directories sysusers/tmpfiles create from our files (in a temporary root).
//! A missing tool is a failure naming the Debian package, never a silent skip.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Every service the supervisor starts, today (archive, receiver) and with the next issues
/// (ARCHITECTURE.md "Bird's-eye view", DESIGN.md §2). Hard-coded rather than read from the
/// supervisor so that adding a service without its system user fails here.
const SERVICES: [&str; 7] = [
    "archive",
    "receiver",
    "hl7",
    "publisher",
    "whitelist",
    "wado",
    "status",
];

/// The bar: `systemd-analyze security` must not rate a unit above this exposure.
const MAX_EXPOSURE: f64 = 2.5;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a systemd tool (with `stdin` fed from a file if given); a missing tool is a failure.
fn systemd_tool(tool: &str, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new(tool);
    cmd.args(args).env("SYSTEMD_COLORS", "0").env("LC_ALL", "C");
    if let Some(file) = stdin {
        cmd.stdin(fs::File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    } else {
        cmd.stdin(Stdio::null());
    }
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "{tool} not found: install the Debian package `systemd` (apt-get install systemd)"
            )
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unit_files() -> Vec<PathBuf> {
    let mut units: Vec<PathBuf> = fs::read_dir(repo("systemd"))
        .expect("systemd/ directory")
        .map(|e| e.expect("systemd/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .collect();
    units.sort();
    assert!(!units.is_empty(), "no systemd/*.service file");
    units
}

/// "-> Overall exposure level for drimbox.service: 2.1 OK :-)" → 2.1 (LC_ALL=C: ASCII glyphs).
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn every_unit_has_an_exposure_of_at_most_2_5() {
    let threshold = format!("--threshold={}", (MAX_EXPOSURE * 10.0) as u32);
    let mut failures = Vec::new();
    for unit in unit_files() {
        let out = systemd_tool(
            "systemd-analyze",
            &[
                "security",
                "--offline=yes",
                &threshold,
                "--no-pager",
                unit.to_str().unwrap(),
            ],
            None,
        );
        let report = text(&out.stdout);
        let name = unit.file_name().unwrap().to_string_lossy();
        match overall_exposure(&report) {
            Some(score) => {
                println!("{name}: exposure {score}");
                if score > MAX_EXPOSURE || !out.status.success() {
                    let costs: Vec<&str> = report.lines().filter(|l| l.starts_with("- ")).collect();
                    failures.push(format!(
                        "{name}: exposure {score}, at most {MAX_EXPOSURE} allowed (exit {}); costs:\n{}",
                        out.status,
                        costs.join("\n")
                    ));
                }
            }
            None => failures.push(format!(
                "{name}: no overall exposure in the output of systemd-analyze security ({}):\n{report}{}",
                out.status,
                text(&out.stderr)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `systemd-analyze verify` checks that the unit's executable exists, and on a development
/// machine /usr/bin/drimbox does not: each unit is verified as a copy (same file name, so the
/// same unit name) whose ExecStart= runs the binary cargo just built, with the same arguments.
/// verify reports problems (unknown keys, bad values) as warnings with exit status 0, so any
/// output at all is a failure.
#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let built = env!("CARGO_BIN_EXE_drimbox");
    assert!(
        !built.contains(char::is_whitespace),
        "path of the built binary has whitespace: {built}"
    );
    let dir = tempfile::tempdir().unwrap();
    for unit in unit_files() {
        let original = fs::read_to_string(&unit).unwrap();
        let prefix = "ExecStart=/usr/bin/drimbox ";
        assert_eq!(
            original.lines().filter(|l| l.starts_with(prefix)).count(),
            1,
            "{}: expected exactly one `{prefix}...` line",
            unit.display()
        );
        let copy = dir.path().join(unit.file_name().unwrap());
        let rewritten: String = original
            .lines()
            .map(|l| match l.strip_prefix(prefix) {
                Some(args) => format!("ExecStart={built} {args}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        fs::write(&copy, rewritten).unwrap();
        verify(&copy, &unit);
    }
    // Path units, beside the copies of the services they start.
    let paths: Vec<PathBuf> = fs::read_dir(repo("systemd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "path"))
        .collect();
    assert!(!paths.is_empty(), "no systemd/*.path file");
    for unit in paths {
        let copy = dir.path().join(unit.file_name().unwrap());
        fs::copy(&unit, &copy).unwrap();
        verify(&copy, &unit);
    }
}

/// `systemd-analyze verify` of `copy` (of `unit`): any output at all is a failure.
fn verify(copy: &Path, unit: &Path) {
    let out = systemd_tool(
        "systemd-analyze",
        &["verify", "--man=no", copy.to_str().unwrap()],
        None,
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {} ({}):\n{said}",
        unit.display(),
        out.status
    );
}

/// The passwd entries sysusers writes from our file into an empty root: name → (uid, home, shell).
fn sysusers_into(root: &Path) -> BTreeMap<String, (u32, String, String)> {
    fs::create_dir_all(root.join("etc")).unwrap();
    let conf = repo("overlay/usr/lib/sysusers.d/drimbox.conf");
    let root_arg = format!("--root={}", root.display());
    let out = systemd_tool("systemd-sysusers", &[&root_arg, "-"], Some(&conf));
    // Its only output on success is one "Creating user/group ..." line per entry.
    let stderr = text(&out.stderr);
    assert!(
        out.status.success() && stderr.lines().all(|l| l.starts_with("Creating ")),
        "systemd-sysusers {} ({}):\n{stderr}",
        conf.display(),
        out.status
    );
    fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (
                f[0].to_string(),
                (f[2].parse().unwrap(), f[5].to_string(), f[6].to_string()),
            )
        })
        .collect()
}

fn group_members(root: &Path, group: &str) -> BTreeSet<String> {
    let groups = fs::read_to_string(root.join("etc/group")).unwrap();
    let line = groups
        .lines()
        .find(|l| l.starts_with(&format!("{group}:")))
        .unwrap_or_else(|| panic!("no group {group} in:\n{groups}"));
    let members = line.rsplit(':').next().unwrap();
    members
        .split(',')
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn sysusers_creates_a_distinct_user_for_every_service() {
    let root = tempfile::tempdir().unwrap();
    let users = sysusers_into(root.path());
    let members = group_members(root.path(), "drimbox");
    let mut uids = BTreeSet::new();
    for service in SERVICES {
        let name = format!("drimbox-{service}");
        let (uid, home, shell) = users
            .get(&name)
            .unwrap_or_else(|| panic!("sysusers.d/drimbox.conf creates no user {name}"));
        assert!(
            uids.insert(*uid),
            "{name} shares uid {uid} with another service"
        );
        assert!(
            *uid > 0 && *uid < 1000,
            "{name}: uid {uid} is not a system uid"
        );
        assert_eq!(home, "/", "{name}: home");
        assert!(shell.ends_with("/nologin"), "{name}: login shell {shell}");
        assert!(
            members.contains(&name),
            "{name} is not a member of group drimbox"
        );
    }
}

/// tmpfiles applied to a temporary root whose users come from our sysusers file: every line
/// parses and every owner exists. Needs root (it chowns); CI runs as root.
#[test]
fn tmpfiles_creates_the_data_directory_with_its_owners() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test chowns files into a temporary root and must run as root (CI does)");
    }
    let root = tempfile::tempdir().unwrap();
    let users = sysusers_into(root.path());
    let conf = repo("overlay/usr/lib/tmpfiles.d/drimbox.conf");
    let root_arg = format!("--root={}", root.path().display());
    let out = systemd_tool(
        "systemd-tmpfiles",
        &["--create", &root_arg, "-"],
        Some(&conf),
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-tmpfiles --create {} ({}):\n{said}",
        conf.display(),
        out.status
    );
    let uid = |name: &str| users[name].0;
    let data = root.path().join("data/drimbox");
    // (path, mode, owner): the archive owns its index and store, the receiver writes staging.
    for (rel, mode, owner) in [
        ("", 0o750, 0),
        ("archive.redb", 0o600, uid("drimbox-archive")),
        ("studies", 0o750, uid("drimbox-archive")),
        ("quarantine", 0o750, uid("drimbox-archive")),
        ("staging", 0o2770, uid("drimbox-receiver")),
        ("hl7-staging", 0o2770, uid("drimbox-hl7")),
        ("reports", 0o750, uid("drimbox-archive")),
        ("keys", 0o750, 0),
    ] {
        let meta =
            fs::metadata(data.join(rel)).unwrap_or_else(|e| panic!("/data/drimbox/{rel}: {e}"));
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.uid()),
            (mode, owner),
            "/data/drimbox/{rel}: (mode, uid)"
        );
    }
}

/// No sysctl is applied on this machine; the file is only parsed: `[-]key = value` lines, keys
/// as sysctl.d(5) spells them, each key once.
#[test]
fn sysctl_file_parses() {
    let path = repo("overlay/etc/sysctl.d/90-drimbox.conf");
    let conf = fs::read_to_string(&path).unwrap();
    let mut keys = BTreeSet::new();
    for (n, line) in conf.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not an assignment: {line}", path.display(), n + 1));
        let key = key.trim().trim_start_matches('-');
        assert!(
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._".contains(c))
                && !value.trim().is_empty(),
            "{}:{}: bad assignment: {line}",
            path.display(),
            n + 1
        );
        assert!(
            keys.insert(key.to_string()),
            "{}: {key} set twice",
            path.display()
        );
    }
}

/// The image scripts (Buildroot's post-build/post-image, the vendoring helper, the test image's
/// build and boot scripts and its dracut module) pass shellcheck: Buildroot cannot run here, so
/// this is what CI can check of the production scripts beyond the test image's use of them.
#[test]
fn image_scripts_pass_shellcheck() {
    let mut scripts: Vec<PathBuf> = [
        "buildroot/board/drimbox",
        "buildroot/package/drimbox",
        "scripts/image/dracut/90drimbox-dminit",
    ]
    .iter()
    .flat_map(|d| {
        std::fs::read_dir(repo(d))
            .unwrap()
            .flatten()
            .map(|e| e.path())
    })
    .filter(|p| p.extension().is_some_and(|e| e == "sh"))
    .collect();
    scripts.extend([repo("scripts/build-image"), repo("scripts/test-image")]);
    assert!(
        scripts.len() >= 7,
        "expected the image scripts, found {scripts:?}"
    );
    let o = Command::new("shellcheck")
        .args(&scripts)
        .output()
        .unwrap_or_else(|e| panic!("shellcheck not runnable ({e}): apt-get install shellcheck"));
    assert!(o.status.success(), "shellcheck:\n{}", text(&o.stdout));
}

/// The ESP is mounted on demand and unmounted after 30 s idle (post-build.sh's fstab: a vfat
/// left mounted is one a power cut can leave dirty). That expiry is a stop job on efi.mount, and
/// systemd carries a stop to every unit that Requires= the mount (RequiresMountsFor= is one):
/// an install that spends minutes on the slot without touching /efi would be killed mid-way.
/// So a unit that uses the ESP wants and orders efi.mount, and never requires it.
#[test]
fn no_unit_requires_the_esp_that_expires() {
    let post_build = fs::read_to_string(repo("buildroot/board/drimbox/post-build.sh")).unwrap();
    let fstab = post_build
        .lines()
        .find(|l| l.starts_with("PARTLABEL=esp"))
        .expect("post-build.sh writes the ESP's fstab line");
    assert!(
        fstab.contains("x-systemd.automount") && fstab.contains("x-systemd.idle-timeout="),
        "the ESP is no longer an expiring automount ({fstab}): revisit this test"
    );
    let mut users = 0;
    for unit in unit_files() {
        let body = fs::read_to_string(&unit).unwrap();
        let name = unit.file_name().unwrap().to_string_lossy().into_owned();
        let directives: Vec<&str> = body.lines().map(str::trim).collect();
        for line in &directives {
            let required = line
                .strip_prefix("RequiresMountsFor=")
                .is_some_and(|paths| paths.split_whitespace().any(|p| p.starts_with("/efi")))
                || (line.starts_with("Requires=") || line.starts_with("BindsTo="))
                    && line.contains("efi.mount");
            assert!(
                !required,
                "{name}: `{line}` would be stopped with the ESP's idle expiry"
            );
        }
        let uses_esp = directives
            .iter()
            .any(|l| !l.starts_with('#') && (l.contains("/efi") || l.contains("efi.mount")));
        if uses_esp {
            users += 1;
            for (key, want) in [("Wants=", "Wants=efi.mount"), ("After=", "After=efi.mount")] {
                let has = directives.iter().any(|l| {
                    l.strip_prefix(key)
                        .is_some_and(|v| v.split_whitespace().any(|u| u == "efi.mount"))
                });
                assert!(has, "{name} uses the ESP but has no `{want}`");
            }
        }
    }
    assert!(
        users >= 3,
        "the commit, the spooled install and the unhealthy verdict use the ESP"
    );
}
