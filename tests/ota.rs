//! The OTA building blocks against real peers and real files: our dm-verity trees against
//! `veritysetup` (cryptsetup); the A/B boot state with a power loss injected after every
//! write of an install and of a commit, on file-backed slots and a directory standing for the
//! ESP, booted each time by a model of systemd-boot's boot counting; and signed bundles, made
//! and installed by `drimbox ota` with a test PKI minted by openssl, cross-checked by
//! `rauc info`, `openssl cms -verify` and `veritysetup verify`.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use drimbox::ota::boot::{self, BootState, Floor, Slot, Step, Update, Version};
use drimbox::ota::verity::{hex, HashTree, BLOCK};

/// Deterministic bytes that differ from block to block.
fn payload(blocks: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ seed as u32;
    (0..blocks * BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn veritysetup(args: &[&str]) -> std::process::Output {
    Command::new("veritysetup")
        .args(args)
        .output()
        .expect("veritysetup (cryptsetup-bin) is installed by scripts/test")
}

#[test]
fn our_hash_trees_are_veritysetups() {
    let dir = tempfile::tempdir().unwrap();
    let salt = b"drimbox-test-salt-0123456789abcd";
    // One block (no tree), one level, two levels, three levels.
    for blocks in [1usize, 100, 129, 128 * 128 + 3] {
        let data = payload(blocks, blocks as u8);
        let data_path = dir.path().join(format!("data-{blocks}"));
        fs::write(&data_path, &data).unwrap();
        let ours = HashTree::build(&data[..], data.len() as u64, salt).unwrap();
        assert_eq!(ours.bytes.len(), HashTree::size_for(blocks as u64));

        // veritysetup builds the same tree and root from the same data and salt.
        let theirs_path = dir.path().join(format!("theirs-{blocks}"));
        let o = veritysetup(&[
            "format",
            "--no-superblock",
            "--salt",
            &hex(salt),
            data_path.to_str().unwrap(),
            theirs_path.to_str().unwrap(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let root = out
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap()
            .trim();
        assert_eq!(root, hex(&ours.root_hash), "{blocks} blocks");
        let theirs = fs::read(&theirs_path).unwrap();
        assert_eq!(
            &theirs[..ours.bytes.len()],
            &ours.bytes[..],
            "{blocks} blocks"
        );

        // veritysetup accepts our tree, and refuses it once one data byte is changed.
        let ours_path = dir.path().join(format!("ours-{blocks}"));
        fs::write(&ours_path, &ours.bytes).unwrap();
        let verify = |data: &Path| {
            veritysetup(&[
                "verify",
                "--no-superblock",
                "--salt",
                &hex(salt),
                &format!("--data-blocks={blocks}"),
                data.to_str().unwrap(),
                ours_path.to_str().unwrap(),
                &hex(&ours.root_hash),
            ])
        };
        let o = verify(&data_path);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut changed = data.clone();
        changed[data.len() / 2] ^= 1;
        let changed_path = dir.path().join(format!("changed-{blocks}"));
        fs::write(&changed_path, &changed).unwrap();
        assert!(!verify(&changed_path).status.success(), "{blocks} blocks");
        // And so do we, at the block veritysetup would trip on.
        let index = (data.len() / 2 / BLOCK) as u64;
        let at = index as usize * BLOCK;
        assert!(!ours.check_block(index, &changed[at..at + BLOCK]));
    }
}

/// A box on files: the ESP's entries directory, two slot "partitions", the floor.
struct TestBox {
    esp: tempfile::TempDir,
    floor: Floor,
}

const SLOT_BLOCKS: usize = 64;

impl TestBox {
    fn slot_path(&self, slot: Slot) -> std::path::PathBuf {
        self.esp.path().join(format!("root-{slot}.img"))
    }

    /// A factory-fresh box: version 1.0 in slot A, blessed; slot B holds zeros.
    fn factory() -> TestBox {
        let esp = tempfile::tempdir().unwrap();
        fs::create_dir_all(esp.path().join(boot::ENTRIES_DIR)).unwrap();
        let b = TestBox {
            esp,
            floor: Floor {
                version: Version::parse("1.0").unwrap(),
                epoch: 1,
            },
        };
        let image = payload(SLOT_BLOCKS, 1);
        fs::write(b.slot_path(Slot::A), &image).unwrap();
        fs::write(b.slot_path(Slot::B), vec![0u8; SLOT_BLOCKS * BLOCK]).unwrap();
        let update = update_of(&image, "1.0", 1);
        boot::apply(
            b.esp.path(),
            &Step::WriteEntry {
                name: "drimbox-a.conf".into(),
                body: boot::entry_body(Slot::A, &update),
            },
        )
        .unwrap();
        b
    }

    fn state(&self) -> BootState {
        boot::read(self.esp.path()).unwrap()
    }

    /// Performs one step; `cut` stops a slot write after that many blocks (a power loss).
    fn perform(&mut self, step: &Step, image: &[u8], tree: &HashTree, cut: Option<usize>) {
        match step {
            Step::WriteImage(slot) => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(self.slot_path(*slot))
                    .unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                for (i, block) in image.chunks(BLOCK).enumerate() {
                    if Some(i) == cut {
                        return;
                    }
                    assert!(tree.check_block(i as u64, block), "block {i}");
                    f.write_all(block).unwrap();
                }
                f.sync_all().unwrap();
            }
            Step::RaiseFloor(floor) => self.floor = floor.clone(),
            other => assert!(boot::apply(self.esp.path(), other).unwrap()),
        }
    }

    /// Power-on: the firmware picks an entry and spends a try. The slot it boots must hold
    /// exactly the image its entry's root hash names: the box never boots a half-written slot.
    fn power_on(&mut self) -> Slot {
        let state = self.state();
        let (slot, spend) = state.firmware_boot().expect("a bootable entry");
        let entry = state.entry(slot).unwrap().clone();
        let bytes = fs::read(self.slot_path(slot)).unwrap();
        let tree = HashTree::build(&bytes[..], bytes.len() as u64, b"salt").unwrap();
        assert_eq!(
            hex(&tree.root_hash),
            entry.root_hash,
            "slot {slot} boots but does not hold the image its entry names"
        );
        if let Some(step) = spend {
            assert!(boot::apply(self.esp.path(), &step).unwrap());
        }
        slot
    }

    /// Boot-complete on `running`: bless and raise the floor, stopping after `upto` steps.
    fn commit(&mut self, running: Slot, upto: usize) {
        let steps = self.state().plan_commit(running, &self.floor).unwrap();
        for step in steps.iter().take(upto) {
            self.perform(step, &[], &dummy_tree(), None);
        }
    }
}

fn dummy_tree() -> HashTree {
    HashTree::build(&[0u8; BLOCK][..], BLOCK as u64, b"salt").unwrap()
}

fn update_of(image: &[u8], version: &str, epoch: u64) -> Update {
    let tree = HashTree::build(image, image.len() as u64, b"salt").unwrap();
    Update {
        version: Version::parse(version).unwrap(),
        epoch,
        root_hash: hex(&tree.root_hash),
        options: "console=ttyS0 ro".into(),
        initrd: false,
    }
}

#[test]
fn a_power_loss_after_any_write_of_an_install_or_a_commit_boots_a_good_slot() {
    let image = payload(SLOT_BLOCKS, 2);
    let tree = HashTree::build(&image[..], image.len() as u64, b"salt").unwrap();
    let update = update_of(&image, "1.1", 2);
    let plan = TestBox::factory()
        .state()
        .plan_install(Slot::A, &TestBox::factory().floor, &update)
        .unwrap();
    assert_eq!(plan.len(), 2, "{plan:?}");

    // Every cut: after k whole steps, and in the middle of the slot write.
    let mut cuts: Vec<(usize, Option<usize>)> = (0..=plan.len()).map(|k| (k, None)).collect();
    cuts.push((0, Some(SLOT_BLOCKS / 2)));
    for (done, partial) in cuts {
        let mut b = TestBox::factory();
        for step in &plan[..done] {
            b.perform(step, &image, &tree, None);
        }
        if let Some(blocks) = partial {
            b.perform(&plan[done], &image, &tree, Some(blocks));
        }
        let installed = done == plan.len();
        let first = b.power_on();
        assert_eq!(
            first,
            if installed { Slot::B } else { Slot::A },
            "cut {done}/{partial:?}"
        );
        if !installed {
            continue;
        }
        // A power loss at each point of the commit; the next healthy boot finishes it.
        for upto in 0..=2 {
            let mut c = TestBox::factory();
            for step in &plan {
                c.perform(step, &image, &tree, None);
            }
            assert_eq!(c.power_on(), Slot::B);
            c.commit(Slot::B, upto);
            let again = c.power_on();
            if upto == 0 {
                // Not blessed: still on trial, one more try spent.
                assert_eq!(again, Slot::B);
                continue;
            }
            assert_eq!(again, Slot::B, "commit cut after {upto}");
            assert_eq!(c.state().entry(Slot::B).unwrap().tries, None);
            c.commit(Slot::B, usize::MAX);
            assert_eq!(c.floor.version, Version::parse("1.1").unwrap());
            assert_eq!(c.floor.epoch, 2);
            // Blessed and floored: every later boot is B, nothing left to do.
            for _ in 0..4 {
                assert_eq!(c.power_on(), Slot::B);
            }
            assert!(c.state().plan_commit(Slot::B, &c.floor).unwrap().is_empty());
        }
    }
}

#[test]
fn an_update_that_never_becomes_healthy_falls_back_to_the_old_slot_by_itself() {
    let image = payload(SLOT_BLOCKS, 3);
    let tree = HashTree::build(&image[..], image.len() as u64, b"salt").unwrap();
    let update = update_of(&image, "2.0", 1);
    let mut b = TestBox::factory();
    let plan = b.state().plan_install(Slot::A, &b.floor, &update).unwrap();
    for step in &plan {
        b.perform(step, &image, &tree, None);
    }
    for n in 0..boot::TRIES {
        assert_eq!(b.power_on(), Slot::B, "try {n}");
    }
    // Tries used up: A from now on, and the failed version is known for the status page.
    for _ in 0..3 {
        assert_eq!(b.power_on(), Slot::A);
    }
    let failed = b.state().failed_update().cloned().unwrap();
    assert_eq!(
        (failed.slot, failed.version.to_string()),
        (Slot::B, "2.0".into())
    );
    // A commit on A leaves the floor where it was: 2.0 never proved healthy.
    b.commit(Slot::A, usize::MAX);
    assert_eq!(b.floor.version, Version::parse("1.0").unwrap());
    // The next install into B removes the failed entry before writing the slot.
    let next = update_of(&payload(SLOT_BLOCKS, 4), "2.1", 1);
    let plan = b.state().plan_install(Slot::A, &b.floor, &next).unwrap();
    assert_eq!(plan[0], Step::RemoveEntry("drimbox-b+0-3.conf".into()));
}

#[test]
fn a_corrupted_block_is_caught_before_it_reaches_the_slot() {
    let image = payload(SLOT_BLOCKS, 5);
    let tree = HashTree::build(&image[..], image.len() as u64, b"salt").unwrap();
    let mut corrupted = image.clone();
    corrupted[10 * BLOCK + 7] ^= 0x01;
    let bad: Vec<usize> = corrupted
        .chunks(BLOCK)
        .enumerate()
        .filter(|(i, b)| !tree.check_block(*i as u64, b))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(bad, vec![10]);
}

// ---- Signed bundles -------------------------------------------------------------------------

/// A P-256 key and certificate minted by openssl in `dir`: `<name>.key` (PKCS#8 PEM) and
/// `<name>.pem`, issued by `<issuer>` (self-signed when `None`) with the extensions `ext`.
fn mint_ec(dir: &Path, name: &str, issuer: Option<&str>, ext: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subj = format!("/O=DRIMbox test/CN={name}");
    fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    match issuer {
        None => {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &subj,
                "-extensions",
                "v3",
                "-config",
            ]);
            // req -x509 takes its extensions from a config section.
            let config = format!("[req]\ndistinguished_name=dn\n[dn]\n[v3]\n{ext}");
            fs::write(dir.join(&extfile), config).unwrap();
            args.push(&extfile);
            common::openssl(&args, dir);
        }
        Some(issuer) => {
            let mut args = vec!["req", "-new"];
            args.extend(ec);
            let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            common::openssl(&args, dir);
            common::openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{issuer}.pem"),
                    "-CAkey",
                    &format!("{issuer}.key"),
                    "-set_serial",
                    &format!("{}", 1000 + name.len()),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
                dir,
            );
        }
    }
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";
const SIGNER_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n";

/// The vendor's PKI: a root CA pinned in the box, an intermediate, a codeSigning signer under
/// it; a signer without codeSigning; and a whole other CA with its own codeSigning signer.
fn mint_update_pki(dir: &Path) {
    mint_ec(dir, "update-ca", None, CA_EXT);
    mint_ec(
        dir,
        "update-intermediate",
        Some("update-ca"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n",
    );
    mint_ec(dir, "signer", Some("update-intermediate"), SIGNER_EXT);
    mint_ec(
        dir,
        "tls-signer",
        Some("update-intermediate"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    mint_ec(dir, "other-ca", None, CA_EXT);
    mint_ec(dir, "other-signer", Some("other-ca"), SIGNER_EXT);
}

fn drimbox(args: &[&str]) -> std::process::Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

/// `drimbox ota bundle` of `image` signed by `signer` (intermediate carried).
fn make_bundle(
    dir: &Path,
    out: &str,
    image: &str,
    version: &str,
    epoch: u64,
    signer: &str,
) -> PathBuf {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let issuer = if signer.starts_with("other") {
        "other-ca"
    } else {
        "update-intermediate"
    };
    let o = drimbox(&[
        "ota",
        "bundle",
        "--image",
        &p(image),
        "--out",
        &p(out),
        "--version",
        version,
        "--epoch",
        &epoch.to_string(),
        "--cert",
        &p(&format!("{signer}.pem")),
        "--key",
        &p(&format!("{signer}.key")),
        "--intermediate",
        &p(&format!("{issuer}.pem")),
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    dir.join(out)
}

/// (payload length, signature offset, signature length) from a bundle's trailer.
fn spans(bundle: &[u8]) -> (usize, usize, usize) {
    let n = bundle.len();
    let cms = u64::from_be_bytes(bundle[n - 8..].try_into().unwrap()) as usize;
    let manifest =
        drimbox::ota::bundle::Manifest::parse(&signed_manifest(&bundle[n - 8 - cms..n - 8]))
            .unwrap();
    let sig = n - 8 - cms;
    (sig - manifest.verity_size as usize, sig, cms)
}

/// The manifest a CMS carries, read by openssl without verifying.
fn signed_manifest(cms: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("sig.der"), cms).unwrap();
    let o = Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-noverify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "sig.der",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn our_bundles_pass_rauc_openssl_and_veritysetup_and_we_verify_openssls_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_update_pki(d);
    // An image that does not end on a block boundary: the payload is padded, the manifest
    // keeps the true size and digest.
    let image = payload(300, 7);
    fs::write(d.join("root.erofs"), &image[..image.len() - 1000]).unwrap();
    let path = make_bundle(d, "update.raucb", "root.erofs", "1.4.2", 3, "signer");
    let bundle = fs::read(&path).unwrap();
    let (payload_len, sig, cms_len) = spans(&bundle);

    // RAUC reads our signature, chain and manifest (codeSigning purpose, as the box checks).
    fs::write(
        d.join("system.conf"),
        format!(
            "[system]\ncompatible=drimbox-x86_64\nbootloader=noop\n\n[keyring]\npath={}\ncheck-purpose=codesign\n",
            d.join("update-ca.pem").display()
        ),
    )
    .unwrap();
    let o = Command::new("rauc")
        .args([
            "info",
            "--conf",
            d.join("system.conf").to_str().unwrap(),
            path.to_str().unwrap(),
        ])
        .output()
        .expect("rauc is installed by scripts/test");
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("'drimbox-x86_64'") && out.contains("'1.4.2'"),
        "{out}"
    );
    assert!(out.contains("Bundle Format: \tverity"), "{out}");
    assert!(
        out.contains("Verified inline signature by 'O = DRIMbox test, CN = signer'"),
        "{out}"
    );
    // And refuses the bundle when another CA is pinned.
    let other = fs::read_to_string(d.join("system.conf"))
        .unwrap()
        .replace("update-ca.pem", "other-ca.pem");
    fs::write(d.join("other.conf"), other).unwrap();
    let o = Command::new("rauc")
        .args([
            "info",
            "--conf",
            d.join("other.conf").to_str().unwrap(),
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", common::text(&o));

    // openssl verifies the CMS through the carried intermediate to the pinned root, and the
    // content it yields is the manifest our verifier reads.
    fs::write(d.join("sig.der"), &bundle[sig..sig + cms_len]).unwrap();
    let o = Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-CAfile",
            "update-ca.pem",
            "-purpose",
            "any",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let manifest =
        drimbox::ota::bundle::Manifest::parse(&String::from_utf8(o.stdout).unwrap()).unwrap();
    assert_eq!(manifest.version, Version::parse("1.4.2").unwrap());
    assert_eq!(manifest.epoch, 3);
    assert_eq!(manifest.image_size as usize, image.len() - 1000);
    assert_eq!(payload_len, 300 * BLOCK);

    // veritysetup checks the payload against the tree in the bundle, under the signed root.
    let bundle_arg = path.to_str().unwrap();
    let verify = |file: &str| {
        veritysetup(&[
            "verify",
            "--no-superblock",
            &format!("--hash-offset={payload_len}"),
            &format!("--data-blocks={}", payload_len / BLOCK),
            "--salt",
            &hex(&manifest.verity_salt),
            file,
            file,
            &hex(&manifest.verity_hash),
        ])
    };
    let o = verify(bundle_arg);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut tampered = bundle.clone();
    tampered[payload_len / 3] ^= 0x40;
    fs::write(d.join("tampered.raucb"), &tampered).unwrap();
    assert!(!verify(d.join("tampered.raucb").to_str().unwrap())
        .status
        .success());

    // `drimbox ota verify` says the same, naming the signer and the version.
    let o = drimbox(&[
        "ota",
        "verify",
        bundle_arg,
        "--keyring",
        d.join("update-ca.pem").to_str().unwrap(),
    ]);
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("signed by O=DRIMbox test, CN=signer") || out.contains("CN=signer"),
        "{out}"
    );
    assert!(
        out.contains("version: 1.4.2") && out.contains("300 blocks checked"),
        "{out}"
    );

    // A signature openssl makes over a manifest, with the same signer, verifies with ours.
    fs::write(d.join("manifest.raucm"), manifest.to_text()).unwrap();
    common::openssl(
        &[
            "cms",
            "-sign",
            "-nodetach",
            "-binary",
            "-outform",
            "DER",
            "-md",
            "sha256",
            "-signer",
            "signer.pem",
            "-inkey",
            "signer.key",
            "-certfile",
            "update-intermediate.pem",
            "-in",
            "manifest.raucm",
            "-out",
            "openssl.der",
        ],
        d,
    );
    let der = fs::read(d.join("openssl.der")).unwrap();
    let anchors = [pem_certificate(&d.join("update-ca.pem"))];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let verified = drimbox::ota::cms::verify(&der, &anchors, now).unwrap();
    assert_eq!(verified.content, manifest.to_text().as_bytes());
    assert_eq!(verified.chain.len(), 3, "signer, intermediate, pinned CA");
    // Three days on, the certificates (two days) have expired.
    assert!(matches!(
        drimbox::ota::cms::verify(&der, &anchors, now + 3 * 86400),
        Err(drimbox::ota::cms::CmsError::Expired(_))
    ));
}

fn pem_certificate(path: &Path) -> drimbox::pki::Certificate {
    drimbox::pki::certificates_from_pem(&fs::read(path).unwrap())
        .unwrap()
        .remove(0)
}

/// A box on files for `drimbox ota install`: the ESP (entries, slot A's kernel), two slot
/// files, the floor.
struct FileBox {
    root: tempfile::TempDir,
}

const SLOT_BYTES: usize = 4 << 20;

impl FileBox {
    fn new(floor: Option<(&str, u64)>) -> FileBox {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("esp").join(boot::ENTRIES_DIR)).unwrap();
        fs::create_dir_all(r.join("esp/EFI/drimbox")).unwrap();
        fs::write(r.join("esp/EFI/drimbox/linux-a.efi"), b"the slot A kernel").unwrap();
        let image = payload(SLOT_BLOCKS, 1);
        fs::write(r.join("root-a"), &image).unwrap();
        fs::write(r.join("root-b"), payload(SLOT_BYTES / BLOCK, 2)).unwrap();
        let update = Update {
            options: "root=/dev/dm-0 ro rootfstype=erofs dm-mod.waitfor=PARTUUID=ddc28169-cfdc-482a-9883-c2d4255377c1 \
                      dm-mod.create=\"drimbox-root,,,ro,0 512 verity 1 PARTUUID=ddc28169-cfdc-482a-9883-c2d4255377c1 PARTUUID=ddc28169-cfdc-482a-9883-c2d4255377c1 4096 4096 64 65 sha256 00 11\" \
                      console=ttyS0,115200 systemd.gpt_auto=0"
                .into(),
            ..update_of(&image, "1.0", 1)
        };
        boot::apply(
            &r.join("esp"),
            &Step::WriteEntry {
                name: "drimbox-a.conf".into(),
                body: boot::entry_body(Slot::A, &update),
            },
        )
        .unwrap();
        if let Some((v, e)) = floor {
            fs::create_dir_all(r.join("data/ota")).unwrap();
            fs::write(
                r.join("data/ota/floor"),
                format!("version={v}\nepoch={e}\n"),
            )
            .unwrap();
        }
        FileBox { root }
    }

    fn path(&self, p: &str) -> String {
        self.root.path().join(p).to_str().unwrap().to_string()
    }

    fn args(&self, running: &str) -> Vec<String> {
        [
            "--esp",
            &self.path("esp"),
            "--slot-a",
            &self.path("root-a"),
            "--slot-b",
            &self.path("root-b"),
            "--floor",
            &self.path("data/ota/floor"),
            "--running",
            running,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn ota(
        &self,
        command: &str,
        bundle: Option<&Path>,
        keyring: &Path,
        running: &str,
    ) -> std::process::Output {
        let mut args = vec!["ota".to_string(), command.to_string()];
        if let Some(b) = bundle {
            args.push(b.to_str().unwrap().into());
            args.extend(["--keyring".into(), keyring.to_str().unwrap().into()]);
        }
        args.extend(self.args(running));
        Command::new(common::bin()).args(&args).output().unwrap()
    }

    /// Everything an install may write: the ESP's files and both slots.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push((p.clone(), fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }
}

#[test]
fn bad_bundles_are_refused_by_name_before_a_byte_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_update_pki(d);
    fs::write(d.join("root.erofs"), payload(200, 9)).unwrap();
    let good = make_bundle(d, "good.raucb", "root.erofs", "2.0", 2, "signer");
    let bytes = fs::read(&good).unwrap();
    let (payload_len, sig, cms_len) = spans(&bytes);
    let keyring = d.join("update-ca.pem");
    let write = |name: &str, b: &[u8]| {
        fs::write(d.join(name), b).unwrap();
        d.join(name)
    };

    let mut bad_signature = bytes.clone();
    // The ECDSA signature value ends the CMS (no unsigned attributes): its last byte.
    bad_signature[sig + cms_len - 1] ^= 1;
    let mut bad_manifest = bytes.clone();
    let text_at = sig
        + bytes[sig..sig + cms_len]
            .windows(7)
            .position(|w| w == b"version")
            .unwrap();
    bad_manifest[text_at + 8] ^= 1; // "version=2.0" -> "version=3.0": the digest no longer matches
    let mut tampered = bytes.clone();
    tampered[payload_len - 5000] ^= 0x80;
    let truncated = &bytes[..bytes.len() - 100];
    let big = payload(SLOT_BYTES / BLOCK + 1, 3);
    fs::write(d.join("big.erofs"), &big).unwrap();

    // (what, bundle, the box's floor, what the refusal says)
    type Case<'a> = (&'a str, PathBuf, Option<(&'a str, u64)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "bad signature",
            write("sig.raucb", &bad_signature),
            None,
            "signature value does not verify",
        ),
        (
            "manifest changed",
            write("manifest.raucb", &bad_manifest),
            None,
            "digest is not the signed one",
        ),
        (
            "untrusted signer",
            make_bundle(d, "other.raucb", "root.erofs", "2.0", 2, "other-signer"),
            None,
            "does not chain to a pinned CA",
        ),
        (
            "no codeSigning",
            make_bundle(d, "tls.raucb", "root.erofs", "2.0", 2, "tls-signer"),
            None,
            "lacks the codeSigning purpose",
        ),
        (
            "older version",
            make_bundle(d, "old.raucb", "root.erofs", "0.9", 2, "signer"),
            None,
            "version 0.9 is not newer than the installed 1.0",
        ),
        (
            "same as the floor",
            good.clone(),
            Some(("2.0", 1)),
            "version 2.0 is not newer than the installed 2.0",
        ),
        (
            "lower epoch",
            good.clone(),
            Some(("1.0", 5)),
            "security epoch 2 is below the floor 5",
        ),
        (
            "truncated",
            write("truncated.raucb", truncated),
            None,
            "signature size",
        ),
        (
            "tampered payload",
            write("tampered.raucb", &tampered),
            None,
            "hash tree",
        ),
        (
            "too big for the slot",
            make_bundle(d, "big.raucb", "big.erofs", "2.0", 2, "signer"),
            None,
            "the update needs",
        ),
    ];
    for (what, bundle, floor, says) in cases {
        let b = FileBox::new(floor);
        let before = b.snapshot();
        let o = b.ota("install", Some(&bundle), &keyring, "a");
        let out = common::text(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {out}");
        assert!(
            out.contains("refused") && out.contains(says),
            "{what}: {out}"
        );
        assert!(b.snapshot() == before, "{what}: the box changed");
    }

    // A wrong compatible string (a bundle for another product).
    let b = FileBox::new(None);
    let before = b.snapshot();
    let mut args = vec![
        "ota",
        "install",
        good.to_str().unwrap(),
        "--keyring",
        keyring.to_str().unwrap(),
        "--compatible",
        "drimbox-arm64",
    ];
    let rest = b.args("a");
    args.extend(rest.iter().map(String::as_str));
    let o = drimbox(&args);
    let out = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("the bundle is for \"drimbox-x86_64\", this box is \"drimbox-arm64\""),
        "{out}"
    );
    assert!(b.snapshot() == before);
    // An update started from a slot the ESP does not boot.
    let o = b.ota("install", Some(&good), &keyring, "b");
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    assert!(
        common::text(&o).contains("the running slot b has no boot entry"),
        "{}",
        common::text(&o)
    );
}

#[test]
fn an_installed_bundle_boots_on_trial_and_a_commit_blesses_it_and_raises_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_update_pki(d);
    let image = payload(200, 5);
    fs::write(d.join("root.erofs"), &image[..image.len() - 123]).unwrap();
    let bundle = make_bundle(d, "update.raucb", "root.erofs", "1.1", 2, "signer");
    let keyring = d.join("update-ca.pem");
    let b = FileBox::new(None);
    let slot_a_before = fs::read(b.path("root-a")).unwrap();

    let o = b.ota("install", Some(&bundle), &keyring, "a");
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("installed 1.1 (epoch 2) into slot b"), "{out}");
    assert_eq!(
        fs::read(b.path("root-a")).unwrap(),
        slot_a_before,
        "the running slot is untouched"
    );
    assert_eq!(
        fs::read(b.path("esp/EFI/drimbox/linux-b.efi")).unwrap(),
        b"the slot A kernel"
    );

    // The entry on trial, and the slot as its kernel command line will map it: veritysetup
    // checks the written slot with the table's parameters.
    let entries: Vec<String> = fs::read_dir(b.path("esp/loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.contains(&"drimbox-b+3.conf".to_string()),
        "{entries:?}"
    );
    let body = fs::read_to_string(b.path("esp/loader/entries/drimbox-b+3.conf")).unwrap();
    let options = boot::entry_options(&body).unwrap();
    let table = options.split('"').nth(1).unwrap();
    let t: Vec<&str> = table.split(' ').collect();
    // drimbox-root,,,ro,0 <sectors> verity 1 <dev> <dev> 4096 4096 <blocks> <hash start> sha256 <root> <salt>
    assert_eq!(
        t[4], "PARTUUID=dec92204-1190-4600-98e8-2e6e025a3fe4",
        "{table}"
    );
    assert_eq!(t[8], "200");
    assert!(
        options.contains("console=ttyS0,115200") && options.contains("drimbox.slot=b"),
        "{options}"
    );
    assert!(
        !options.contains("ddc28169"),
        "slot A's partition is not named: {options}"
    );
    let o = veritysetup(&[
        "verify",
        "--no-superblock",
        &format!("--data-blocks={}", t[8]),
        &format!("--hash-offset={}", t[9].parse::<usize>().unwrap() * BLOCK),
        "--salt",
        t[12],
        &b.path("root-b"),
        &b.path("root-b"),
        t[11],
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(options.contains(&format!("drimbox.roothash={}", t[11])));

    let o = b.ota("status", None, &keyring, "a");
    let out = common::text(&o);
    assert!(
        out.contains("slot b: 1.1 epoch 2, on trial, 3 tries left"),
        "{out}"
    );
    assert!(
        out.contains("next boot: slot b") && out.contains("floor: 0 epoch 0"),
        "{out}"
    );

    // The install recorded the update state for the status page.
    let state = |b: &FileBox| -> serde_json::Value {
        serde_json::from_slice(&fs::read(b.path("data/ota/state.json")).unwrap()).unwrap()
    };
    let s = state(&b);
    assert_eq!(s["running"], "a", "{s}");
    assert_eq!(s["slots"][1]["state"], "on trial, 3 tries left", "{s}");
    assert_eq!(s["next_boot"], "b", "{s}");

    // systemd-boot spends a try and boots B.
    fs::rename(
        b.path("esp/loader/entries/drimbox-b+3.conf"),
        b.path("esp/loader/entries/drimbox-b+2-1.conf"),
    )
    .unwrap();
    // Were it not healthy: on trial, a reboot spends the try (the unit passes --reboot).
    let o = b.ota("unhealthy", None, &keyring, "b");
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("slot b (1.1) is on trial and not healthy: a reboot would spend a try"),
        "{out}"
    );
    // It is healthy: commit.
    let o = b.ota("commit", None, &keyring, "b");
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("blessed: drimbox-b+2-1.conf -> drimbox-b.conf"),
        "{out}"
    );
    assert!(out.contains("floor raised to 1.1 epoch 2"), "{out}");
    assert_eq!(
        fs::read_to_string(b.path("data/ota/floor")).unwrap(),
        "version=1.1\nepoch=2\n"
    );
    let s = state(&b);
    assert_eq!(
        (&s["running"], &s["slots"][1]["state"], &s["floor"]),
        (&"b".into(), &"good".into(), &"1.1 epoch 2".into()),
        "{s}"
    );
    // A committed slot that is not healthy is not rebooted: nothing to fall back to.
    let o = b.ota("unhealthy", None, &keyring, "b");
    assert!(
        common::text(&o).contains("slot b is committed and not healthy: not rebooting"),
        "{}",
        common::text(&o)
    );
    // Committing again changes nothing; the same bundle is now refused.
    let o = b.ota("commit", None, &keyring, "b");
    assert!(
        common::text(&o).contains("already blessed"),
        "{}",
        common::text(&o)
    );
    let o = b.ota("install", Some(&bundle), &keyring, "b");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::text(&o).contains("version 1.1 is not newer than the installed 1.1"),
        "{}",
        common::text(&o)
    );
}

/// curl against the box's status page: (HTTP status, response headers, body).
fn curl(port: u16, path: &str, args: &[&str]) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl (apt-get install curl)");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        code,
        fs::read_to_string(headers).unwrap_or_default(),
        fs::read_to_string(body).unwrap_or_default(),
    )
}

/// A request written by hand on a socket, for what curl will not send: (status line, rest).
fn raw_http(port: u16, request: &[u8]) -> (String, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(request).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let (line, rest) = answer.split_once("\r\n").unwrap_or((&answer, ""));
    (line.to_string(), rest.to_string())
}

fn spool_files(spool: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(spool)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_install_form_takes_a_bundle_from_the_administrator_and_the_installer_verifies_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_update_pki(d);
    let image = payload(200, 5);
    fs::write(d.join("root.erofs"), &image).unwrap();
    let bundle = make_bundle(d, "update.raucb", "root.erofs", "1.1", 2, "signer");
    let keyring = d.join("update-ca.pem");
    let b = common::DrimBox::start(common::Settings::default());
    let port = b.status_port;
    let credential = b.dir.path().join("ota/admin.credential");
    let spool = b.dir.path().join("ota/spool");
    let password = "a long enough password";
    let auth = format!("admin:{password}");

    // Before the distributor sets a credential, the form is closed and says how to open it.
    let (code, _, body) = curl(port, "/update", &[]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("drimbox admin password"), "{body}");

    // `drimbox admin password`: refuses a short one, keeps only a hash of a good one.
    let set = |pw: &str| {
        let mut c = Command::new(common::bin())
            .args(["admin", "password", "--credential"])
            .arg(&credential)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{pw}\n").as_bytes())
            .unwrap();
        c.wait_with_output().unwrap()
    };
    let o = set("too short");
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(
        common::text(&o).contains("shorter than 12"),
        "{}",
        common::text(&o)
    );
    assert!(!credential.exists());
    let o = set(password);
    assert!(o.status.success(), "{}", common::text(&o));
    let stored = fs::read_to_string(&credential).unwrap();
    assert!(stored.starts_with("pbkdf2-sha256$600000$"), "{stored}");
    assert!(!stored.contains("password"), "{stored}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // No credential or a wrong one: a Basic challenge.
    let (code, headers, _) = curl(port, "/update", &[]);
    assert_eq!(code, 401);
    assert!(
        headers.contains("WWW-Authenticate: Basic realm=\"DRIMbox administration\""),
        "{headers}"
    );
    let (code, _, _) = curl(port, "/update", &["-u", "admin:wrong password 1"]);
    assert_eq!(code, 401);
    let (code, _, _) = curl(port, "/update", &["-u", &format!("root:{password}")]);
    assert_eq!(code, 401, "the user is admin");
    // The administrator gets the form; the status page links to it.
    let (code, headers, page) = curl(port, "/update", &["-u", &auth]);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("<form id=\"install\" method=\"post\" action=\"update\"")
            && page.contains("enctype=\"multipart/form-data\"")
            && page.contains("name=\"bundle\""),
        "{page}"
    );
    assert!(headers.contains("form-action 'self'"), "{headers}");
    assert!(b.http_get("/").1.contains("href=\"update\""));

    // Refused before a byte is spooled: another origin, no length, an unknown type, too large,
    // a form cut short.
    let (code, _, body) = curl(
        port,
        "/update",
        &[
            "-u",
            &auth,
            "-H",
            "Origin: http://evil.example",
            "-F",
            &format!("bundle=@{}", bundle.display()),
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("another origin"), "{body}");
    let basic = format!(
        "Authorization: Basic {}\r\n",
        drimbox::base64::encode(auth.as_bytes())
    );
    let (line, rest) = raw_http(
        port,
        format!("POST /update HTTP/1.1\r\nHost: x\r\n{basic}Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes(),
    );
    assert!(line.contains(" 411 "), "{line}\n{rest}");
    let (code, _, _) = curl(
        port,
        "/update",
        &[
            "-u",
            &auth,
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "x",
        ],
    );
    assert_eq!(code, 415);
    let (line, _) = raw_http(
        port,
        format!("POST /update HTTP/1.1\r\nHost: x\r\n{basic}Content-Type: application/octet-stream\r\nContent-Length: 99999999999\r\n\r\n").as_bytes(),
    );
    assert!(line.contains(" 413 "), "{line}");
    let mut cut = format!(
        "POST /update HTTP/1.1\r\nHost: x\r\n{basic}Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n\
         --B\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"u.raucb\"\r\n\r\n"
    )
    .into_bytes();
    cut.extend_from_slice(&fs::read(&bundle).unwrap()[..5000]);
    let (line, rest) = raw_http(port, &cut);
    assert!(line.contains(" 400 "), "{line}\n{rest}");
    assert!(rest.contains("ends before its closing boundary"), "{rest}");
    assert!(
        spool_files(&spool).is_empty(),
        "nothing left in the spool: {:?}",
        spool_files(&spool)
    );

    // The form, as a browser posts it (curl -F is the same multipart/form-data), without the
    // reboot box ticked: spooled whole, with its hash.
    let (code, _, page) = curl(
        port,
        "/update",
        &[
            "-u",
            &auth,
            "-H",
            &format!("Origin: http://127.0.0.1:{port}"),
            "-F",
            &format!("bundle=@{};filename=update.raucb", bundle.display()),
        ],
    );
    assert_eq!(code, 202, "{page}");
    assert!(
        page.contains("id=\"notice\"") && page.contains("checks its signature"),
        "{page}"
    );
    assert_eq!(
        page.matches("being verified and installed").count(),
        1,
        "said once on the page: {page}"
    );
    assert_eq!(
        fs::read(spool.join("bundle")).unwrap(),
        fs::read(&bundle).unwrap()
    );
    let request: serde_json::Value =
        serde_json::from_slice(&fs::read(spool.join("request.json")).unwrap()).unwrap();
    assert_eq!(request["reboot"], false, "{request}");
    assert_eq!(request["from"], "127.0.0.1", "{request}");
    let sha = common::run_ok(Command::new("sha256sum").arg(&bundle));
    assert_eq!(request["sha256"], sha.split_whitespace().next().unwrap());
    // One at a time.
    let (code, _, body) = curl(
        port,
        "/update",
        &["-u", &auth, "-F", &format!("bundle=@{}", bundle.display())],
    );
    assert_eq!(code, 409, "{body}");

    // The root installer (what drimbox-ota-spool.path starts) verifies and installs it, records
    // the outcome for the page and empties the spool.
    let fb = FileBox::new(None);
    let install = |fb: &FileBox| {
        let mut args: Vec<String> = vec![
            "ota".into(),
            "install-spooled".into(),
            "--spool".into(),
            spool.to_str().unwrap().into(),
            "--keyring".into(),
            keyring.to_str().unwrap().into(),
        ];
        args.extend(fb.args("a"));
        Command::new(common::bin()).args(&args).output().unwrap()
    };
    let o = install(&fb);
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(common::text(&o).contains("installed 1.1 (epoch 2) into slot b"));
    assert!(fb
        .root
        .path()
        .join("esp/loader/entries/drimbox-b+3.conf")
        .exists());
    assert_eq!(spool_files(&spool), ["last.json"]);
    let (_, _, page) = curl(port, "/update", &["-u", &auth]);
    assert!(
        page.contains("installed 1.1 (epoch 2) into slot b") && page.contains("id=\"install\""),
        "{page}"
    );
    let ota = &b.snapshot()["ota"]["details"];
    assert!(
        ota.to_string().contains("last upload") && ota.to_string().contains("installed 1.1"),
        "{ota}"
    );
    let o = install(&fb);
    assert!(o.status.success() && common::text(&o).contains("nothing spooled"));

    // A tampered bundle as a script sends it (the bare bundle, reboot asked): spooled, then
    // refused by the installer before a byte is written; no reboot is attempted.
    let mut tampered = fs::read(&bundle).unwrap();
    let payload_len = spans(&tampered).0;
    tampered[payload_len / 3] ^= 0x40;
    fs::write(d.join("tampered.raucb"), &tampered).unwrap();
    let (code, _, body) = curl(
        port,
        "/update?reboot=1",
        &[
            "-u",
            &auth,
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", d.join("tampered.raucb").display()),
        ],
    );
    assert_eq!(code, 202, "{body}");
    let before = fb.snapshot();
    let o = install(&fb);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    assert!(fb.snapshot() == before, "nothing written");
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(spool.join("last.json")).unwrap()).unwrap();
    assert_eq!(last["installed"], false, "{last}");
    assert_eq!(last["request"]["reboot"], true, "{last}");
    assert!(
        last["message"].as_str().unwrap().starts_with("refused: "),
        "{last}"
    );
    assert_eq!(spool_files(&spool), ["last.json"]);

    // Wrong passwords in a row close the lock: then even the right one waits.
    for i in 0..5 {
        let (code, _, _) = curl(port, "/update", &["-u", &format!("admin:wrong {i}")]);
        assert_eq!(code, 401);
    }
    let (code, headers, body) = curl(port, "/update", &["-u", &auth]);
    assert_eq!(code, 429, "{body}");
    assert!(headers.contains("Retry-After: "), "{headers}");
    assert!(!b.log().contains(password), "the password is never logged");
}
