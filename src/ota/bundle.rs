//! Update bundles in RAUC's "verity" layout:
//!
//! ```text
//! payload (whole 4 KiB blocks) | dm-verity hash tree of the payload | CMS signature | u64 BE CMS size
//! ```
//!
//! The CMS encapsulates the manifest (a key file, RAUC's `manifest.raucm` format), which names
//! the compatible string, the version, the security epoch (`[meta.drimbox]`), the image's size
//! and SHA-256, and the tree's root hash, salt and size. So a bundle is checked from its end:
//! the signature first, then the manifest's own checks, then the tree against the signed root;
//! after that every payload block is checked as it is read ([`Opened::check_block`]), before it
//! reaches a slot. `rauc info`, `openssl cms -verify` and `veritysetup verify` read the same
//! bytes (tests/ota.rs).
//!
//! The payload is the image itself (the erofs root, padded to whole blocks): the installer
//! copies it block by block into the inactive slot. RAUC's payload would be a squashfs around
//! the image; ours is not, which `rauc info` does not look at (it reads the signature and the
//! manifest) but `rauc install` would.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::boot::Version;
use super::cms::{self, CmsError};
use super::verity::{self, HashTree, VerityError, BLOCK};
use crate::pki::Certificate;

/// The image's slot class in the manifest (`[image.rootfs]`).
pub const IMAGE_SECTION: &str = "image.rootfs";
/// Largest signature accepted: a CMS with a few certificates is a few KiB.
const MAX_CMS: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the bundle is {0} bytes: too short to hold a signature")]
    TooShort(u64),
    #[error("the signature size {size} does not fit a {len}-byte bundle")]
    SignatureSize { size: u64, len: u64 },
    #[error("signature: {0}")]
    Signature(#[from] CmsError),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("the bundle is for {got:?}, this box is {want:?}")]
    Compatible { got: String, want: String },
    #[error("the payload is {payload} bytes and the tree {tree}; the manifest says {want_tree} for the tree over {image} image bytes")]
    Layout {
        payload: u64,
        tree: u64,
        want_tree: u64,
        image: u64,
    },
    #[error("hash tree: {0}")]
    Verity(#[from] VerityError),
    #[error("the image's SHA-256 is not the manifest's")]
    ImageDigest,
}

/// What the manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub compatible: String,
    pub version: Version,
    pub epoch: u64,
    pub image_file: String,
    pub image_size: u64,
    pub image_sha256: [u8; 32],
    pub verity_hash: [u8; 32],
    pub verity_salt: Vec<u8>,
    pub verity_size: u64,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Manifest {
    /// The manifest as RAUC writes it.
    pub fn to_text(&self) -> String {
        format!(
            "[update]\ncompatible={}\nversion={}\n\n\
             [bundle]\nformat=verity\nverity-hash={}\nverity-salt={}\nverity-size={}\n\n\
             [{IMAGE_SECTION}]\nfilename={}\nsize={}\nsha256={}\n\n\
             [meta.drimbox]\nsecurity-epoch={}\n",
            self.compatible,
            self.version,
            verity::hex(&self.verity_hash),
            verity::hex(&self.verity_salt),
            self.verity_size,
            self.image_file,
            self.image_size,
            verity::hex(&self.image_sha256),
            self.epoch,
        )
    }

    /// Reads a manifest; every key this box needs must be there once and well-formed. Keys and
    /// sections it does not use are ignored, as RAUC ignores them; a bundle with hooks or a
    /// custom handler is refused: this box never runs code from a bundle.
    pub fn parse(text: &str) -> Result<Manifest, BundleError> {
        let bad = |why: String| BundleError::Manifest(why);
        let mut keys: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut section = String::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                if name == "hooks" || name == "handler" {
                    return Err(bad(format!(
                        "[{name}]: this box runs no code from a bundle"
                    )));
                }
                section = name.to_string();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {}: not key=value", n + 1)))?;
            if keys
                .insert(
                    (section.clone(), key.trim().to_string()),
                    value.trim().to_string(),
                )
                .is_some()
            {
                return Err(bad(format!("[{section}] {}: given twice", key.trim())));
            }
        }
        let get = |s: &str, k: &str| {
            keys.get(&(s.to_string(), k.to_string()))
                .cloned()
                .ok_or_else(|| bad(format!("[{s}] {k} missing")))
        };
        let number = |s: &str, k: &str| -> Result<u64, BundleError> {
            get(s, k)?
                .parse()
                .map_err(|_| bad(format!("[{s}] {k} is not a number")))
        };
        let digest = |s: &str, k: &str| -> Result<[u8; 32], BundleError> {
            unhex(&get(s, k)?)
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| bad(format!("[{s}] {k} is not 64 hexadecimal digits")))
        };
        let format = get("bundle", "format")?;
        if format != "verity" {
            return Err(bad(format!(
                "[bundle] format is {format:?}, not \"verity\""
            )));
        }
        let version = get("update", "version")?;
        Ok(Manifest {
            compatible: get("update", "compatible")?,
            version: Version::parse(&version).ok_or_else(|| {
                bad(format!(
                    "[update] version {version:?} is not dot-separated numbers"
                ))
            })?,
            epoch: number("meta.drimbox", "security-epoch")?,
            image_file: get(IMAGE_SECTION, "filename")?,
            image_size: number(IMAGE_SECTION, "size")?,
            image_sha256: digest(IMAGE_SECTION, "sha256")?,
            verity_hash: digest("bundle", "verity-hash")?,
            verity_salt: unhex(&get("bundle", "verity-salt")?)
                .ok_or_else(|| bad("[bundle] verity-salt is not hexadecimal".into()))?,
            verity_size: number("bundle", "verity-size")?,
        })
    }
}

/// What the vendor's bundle command is given.
pub struct BundleInput<'a> {
    pub image: &'a [u8],
    pub image_file: &'a str,
    pub compatible: &'a str,
    pub version: Version,
    pub epoch: u64,
    /// 32 random bytes in production (the command draws them); fixed in tests.
    pub salt: &'a [u8],
    pub signer: &'a Certificate,
    pub intermediates: &'a [Certificate],
    pub pkcs8_key: &'a [u8],
    pub signing_time: u64,
}

/// Builds a bundle.
pub fn build(input: &BundleInput) -> Result<Vec<u8>, BundleError> {
    let mut payload = input.image.to_vec();
    payload.resize(input.image.len().div_ceil(BLOCK) * BLOCK, 0);
    let tree = HashTree::build(&payload[..], payload.len() as u64, input.salt)?;
    let manifest = Manifest {
        compatible: input.compatible.to_string(),
        version: input.version.clone(),
        epoch: input.epoch,
        image_file: input.image_file.to_string(),
        image_size: input.image.len() as u64,
        image_sha256: Sha256::digest(input.image).into(),
        verity_hash: tree.root_hash,
        verity_salt: input.salt.to_vec(),
        verity_size: tree.bytes.len() as u64,
    };
    let signature = cms::sign(
        manifest.to_text().as_bytes(),
        input.signer,
        input.intermediates,
        input.pkcs8_key,
        input.signing_time,
    )?;
    let mut out = payload;
    out.extend_from_slice(&tree.bytes);
    out.extend_from_slice(&signature);
    out.extend_from_slice(&(signature.len() as u64).to_be_bytes());
    Ok(out)
}

/// A bundle whose signature, manifest and hash tree have been checked: the payload is still to
/// be read, block by block, each checked against the tree.
#[derive(Debug)]
pub struct Opened {
    pub manifest: Manifest,
    pub signer: String,
    pub tree: HashTree,
    /// Bytes of payload (a whole number of blocks) at the start of the bundle.
    pub payload_len: u64,
}

impl Opened {
    pub fn check_block(&self, index: u64, block: &[u8]) -> bool {
        self.tree.check_block(index, block)
    }
}

/// Where the trailer says the signature is: (offset, size).
pub fn signature_span(bundle_len: u64, trailer: [u8; 8]) -> Result<(u64, u64), BundleError> {
    if bundle_len < 8 {
        return Err(BundleError::TooShort(bundle_len));
    }
    let size = u64::from_be_bytes(trailer);
    if size == 0 || size > MAX_CMS || size > bundle_len - 8 {
        return Err(BundleError::SignatureSize {
            size,
            len: bundle_len,
        });
    }
    Ok((bundle_len - 8 - size, size))
}

/// Checks a bundle before anything is written: signature and chain (`anchors`, at `at`),
/// compatible string, the layout the manifest describes, and the tree against the signed root.
/// `read_at(offset, len)` reads the bundle (a file in practice). The version and epoch checks
/// against the installed slot are the boot state's ([`super::boot::BootState::plan_install`]).
pub fn open(
    bundle_len: u64,
    mut read_at: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    anchors: &[Certificate],
    at: i64,
    compatible: &str,
) -> Result<Opened, BundleError> {
    let io = |e: std::io::Error| BundleError::Manifest(format!("reading the bundle: {e}"));
    if bundle_len < 8 {
        return Err(BundleError::TooShort(bundle_len));
    }
    let trailer: [u8; 8] = read_at(bundle_len - 8, 8)
        .map_err(io)?
        .try_into()
        .map_err(|_| BundleError::TooShort(bundle_len))?;
    let (offset, size) = signature_span(bundle_len, trailer)?;
    let der = read_at(offset, size as usize).map_err(io)?;
    let verified = cms::verify(&der, anchors, at)?;
    let text = String::from_utf8(verified.content)
        .map_err(|_| BundleError::Manifest("not UTF-8".into()))?;
    let manifest = Manifest::parse(&text)?;
    if manifest.compatible != compatible {
        return Err(BundleError::Compatible {
            got: manifest.compatible,
            want: compatible.to_string(),
        });
    }
    let tree_len = manifest.verity_size;
    let payload_len = offset.checked_sub(tree_len).unwrap_or(u64::MAX);
    let blocks = manifest.image_size.div_ceil(BLOCK as u64);
    if payload_len != blocks * BLOCK as u64 || HashTree::size_for(blocks) as u64 != tree_len {
        return Err(BundleError::Layout {
            payload: payload_len.min(offset),
            tree: tree_len,
            want_tree: HashTree::size_for(blocks) as u64,
            image: manifest.image_size,
        });
    }
    let tree_bytes = read_at(payload_len, tree_len as usize).map_err(io)?;
    let tree = HashTree::from_parts(
        tree_bytes,
        blocks,
        &manifest.verity_salt,
        manifest.verity_hash,
    )?;
    let signer = verified.chain[0].subject();
    Ok(Opened {
        manifest,
        signer,
        tree,
        payload_len,
    })
}

/// Reads the whole payload through the tree and the image digest: what `drimbox ota verify`
/// does, and what the installer does while writing. Returns the image bytes' SHA-256 check.
pub fn check_payload(
    opened: &Opened,
    mut read_at: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<(), BundleError> {
    let mut digest = Sha256::new();
    let mut left = opened.manifest.image_size;
    for index in 0..opened.payload_len / BLOCK as u64 {
        let block = read_at(index * BLOCK as u64, BLOCK)
            .map_err(|e| BundleError::Manifest(format!("reading the payload: {e}")))?;
        if !opened.check_block(index, &block) {
            return Err(BundleError::Verity(VerityError::TreeBlock {
                level: 0,
                block: index,
            }));
        }
        let take = left.min(BLOCK as u64) as usize;
        digest.update(&block[..take]);
        left -= take as u64;
        each(index, &block);
    }
    if digest.finalize().as_slice() != opened.manifest.image_sha256 {
        return Err(BundleError::ImageDigest);
    }
    Ok(())
}
