//! What CI can check of the Buildroot recipe without Buildroot (which cannot fetch its sources
//! here): the defconfig and the kernel fragment are well-formed (one value per key, the forms
//! Kconfig writes), the external tree defines what the defconfig selects of ours, every path
//! the defconfig names exists, the kernel options the box depends on are there, and the
//! package installs and enables every unit of `systemd/` (a unit added without the recipe would
//! be missing from every production image). The symbols we take from Buildroot itself were
//! checked against its Config.in files when they were added (ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// KEY → value of a Kconfig file (`KEY=value` or `# KEY is not set` → "n"), each key once.
fn kconfig(p: &str, prefix: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (n, line) in read(p).lines().enumerate() {
        let line = line.trim();
        let (key, value) = if let Some(rest) = line.strip_prefix("# ") {
            match rest.strip_suffix(" is not set") {
                Some(k) if k.starts_with(prefix) => (k.to_string(), "n".to_string()),
                _ => continue,
            }
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{p}:{}: not KEY=value: {line}", n + 1));
            (k.to_string(), v.to_string())
        };
        assert!(
            key.starts_with(prefix)
                && key[prefix.len()..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{p}:{}: not a {prefix} symbol: {key}",
            n + 1
        );
        let well_formed = value == "y"
            || value == "m"
            || value == "n"
            || value.parse::<i64>().is_ok()
            || (value.len() >= 2 && value.starts_with('"') && value.ends_with('"'));
        assert!(
            well_formed,
            "{p}:{}: {key}={value}: not y, m, a number or a string",
            n + 1
        );
        if let Some(before) = out.insert(key.clone(), value.clone()) {
            panic!("{p}:{}: {key} set twice ({before}, then {value})", n + 1);
        }
    }
    out
}

#[test]
fn the_defconfig_is_well_formed_and_names_what_exists() {
    let d = kconfig("buildroot/configs/drimbox_x86_64_defconfig", "BR2_");
    for (key, want) in [
        ("BR2_x86_64", "y"),
        ("BR2_INIT_SYSTEMD", "y"),
        ("BR2_PACKAGE_DRIMBOX", "y"),
        ("BR2_PACKAGE_SYSTEMD_BOOT", "y"),
        ("BR2_PACKAGE_SYSTEMD_REPART", "y"),
        ("BR2_PACKAGE_NFTABLES", "y"),
        ("BR2_TARGET_ROOTFS_EROFS", "y"),
    ] {
        assert_eq!(d.get(key).map(String::as_str), Some(want), "{key}");
    }
    // Every path under the external tree that a value names exists.
    let external = "$(BR2_EXTERNAL_DRIMBOX_PATH)/";
    for (key, value) in &d {
        for word in value.trim_matches('"').split_whitespace() {
            if let Some(rel) = word.strip_prefix(external) {
                let path = repo("buildroot").join(rel);
                assert!(path.exists(), "{key}: {} does not exist", path.display());
            }
        }
    }
    // The external tree: its name is the one the paths use, and it defines our package.
    assert!(read("buildroot/external.desc")
        .lines()
        .any(|l| l == "name: DRIMBOX"));
    assert!(read("buildroot/Config.in").contains("package/drimbox/Config.in"));
    assert!(read("buildroot/package/drimbox/Config.in").contains("config BR2_PACKAGE_DRIMBOX\n"));
    assert!(read("buildroot/external.mk").contains("$(BR2_EXTERNAL_DRIMBOX_PATH)/package/"));
}

#[test]
fn the_kernel_fragment_has_what_the_box_depends_on() {
    let k = kconfig("buildroot/board/drimbox/linux.fragment", "CONFIG_");
    for key in [
        // UEFI boot, no initramfs: the verity root is made by the kernel (dm-init).
        "CONFIG_EFI_STUB",
        "CONFIG_DM_INIT",
        "CONFIG_DM_VERITY",
        "CONFIG_EROFS_FS",
        "CONFIG_EXT4_FS",
        "CONFIG_VFAT_FS",
        // The watchdog systemd feeds.
        "CONFIG_WATCHDOG",
        "CONFIG_WATCHDOG_NOWAYOUT",
        // The services' sandbox and the egress filter.
        "CONFIG_SECCOMP_FILTER",
        "CONFIG_NF_TABLES",
        "CONFIG_NF_TABLES_INET",
        "CONFIG_NFT_CT",
        "CONFIG_NFT_REJECT",
    ] {
        assert_eq!(k.get(key).map(String::as_str), Some("y"), "{key}");
    }
}

#[test]
fn the_package_installs_and_enables_every_unit() {
    let mk = read("buildroot/package/drimbox/drimbox.mk");
    let start = mk
        .find("DRIMBOX_UNITS =")
        .expect("DRIMBOX_UNITS in drimbox.mk");
    let mut listed = Vec::new();
    for line in mk[start + "DRIMBOX_UNITS =".len()..].lines() {
        let continued = line.trim_end().ends_with('\\');
        listed.extend(
            line.trim_end_matches('\\')
                .split_whitespace()
                .map(String::from),
        );
        if !continued {
            break;
        }
    }
    listed.sort();
    let mut units: Vec<String> = fs::read_dir(repo("systemd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".service") || n.ends_with(".path"))
        .collect();
    units.sort();
    assert_eq!(listed, units, "DRIMBOX_UNITS and systemd/ differ");

    // Every unit with an [Install] section is enabled by the preset and by a link the package
    // makes, and post-build.sh fails a target without that link.
    let preset = read("buildroot/package/drimbox/80-drimbox.preset");
    let post_build = read("buildroot/board/drimbox/post-build.sh");
    for unit in &units {
        let body = read(&format!("systemd/{unit}"));
        let Some(install) = body.split("[Install]").nth(1) else {
            continue;
        };
        let target = install
            .lines()
            .find_map(|l| {
                l.strip_prefix("WantedBy=")
                    .or_else(|| l.strip_prefix("RequiredBy="))
            })
            .unwrap_or_else(|| panic!("{unit}: [Install] without WantedBy/RequiredBy"));
        let kind = if install.contains("RequiredBy=") {
            "requires"
        } else {
            "wants"
        };
        let link = format!("etc/systemd/system/{}.{kind}/{unit}", target.trim());
        assert!(
            preset.lines().any(|l| l == format!("enable {unit}")),
            "{unit}: not enabled in 80-drimbox.preset"
        );
        assert!(
            mk.contains(&format!("$(TARGET_DIR)/{link}")),
            "{unit}: drimbox.mk does not make {link}"
        );
        assert!(
            post_build.contains(&link),
            "{unit}: post-build.sh does not check {link}"
        );
    }
}
