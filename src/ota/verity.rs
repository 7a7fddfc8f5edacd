//! dm-verity hash trees (format 1, SHA-256, 4 KiB blocks), as `veritysetup format
//! --no-superblock` lays them out and the kernel's dm-verity target reads them.
//!
//! An update bundle carries its payload followed by this tree, and the signed manifest carries
//! the root hash and the salt. The installer first checks that the tree it was given chains up to
//! the signed root ([`HashTree::from_parts`]), then checks every block it writes to the inactive
//! slot against the tree's bottom level ([`HashTree::check_block`]): no byte reaches the slot
//! that the signature does not vouch for.
//!
//! The layout (cryptsetup's `lib/verity/verity_hash.c`, the kernel's `dm-verity-target.c`): each
//! data block is hashed as SHA-256(salt ‖ block); 128 digests fill a hash block, zero-padded;
//! levels are hashed the same way until one block remains; the root hash is SHA-256(salt ‖ that
//! block) — or of the single data block when there is only one. On disk the top level comes
//! first, the bottom level last.
//!
//! Pure: bytes in, bytes out. Tests check both directions against `veritysetup`.

use sha2::{Digest, Sha256};
use std::io::Read;

/// Data and hash block size: the page size, erofs's block size, and veritysetup's default.
pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
/// log2 of the digests per hash block (4096 / 32 = 128).
const PER_BLOCK_BITS: u32 = 7;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerityError {
    #[error("the data is {0} bytes, not a whole number of {BLOCK}-byte blocks")]
    NotWholeBlocks(u64),
    #[error("there is no data to protect")]
    Empty,
    #[error(
        "the hash tree is {got} bytes where {want} bytes were expected for {blocks} data blocks"
    )]
    TreeSize {
        got: usize,
        want: usize,
        blocks: u64,
    },
    #[error("hash block {block} of level {level} does not match the level above it")]
    TreeBlock { level: usize, block: u64 },
    #[error("the hash tree does not match the root hash")]
    Root,
    #[error("the salt is {0} bytes; dm-verity takes at most 256")]
    Salt(usize),
    #[error("reading the data: {0}")]
    Read(String),
}

/// A hash tree over `data_blocks` blocks: its on-disk bytes and its root.
#[derive(Debug, Clone)]
pub struct HashTree {
    pub root_hash: [u8; DIGEST],
    pub salt: Vec<u8>,
    pub data_blocks: u64,
    /// The hash area exactly as the device holds it (top level first), no superblock.
    pub bytes: Vec<u8>,
    /// Offset in `bytes` of each level's first block, level 0 (the data digests) first.
    level_offsets: Vec<usize>,
}

fn hash(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Number of hash levels and each level's size in blocks (level 0 first): cryptsetup's
/// `hash_levels`.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut levels = 0u32;
    while PER_BLOCK_BITS * levels < 64 && (data_blocks - 1) >> (PER_BLOCK_BITS * levels) != 0 {
        levels += 1;
    }
    (0..levels)
        .map(|i| {
            let shift = (i + 1) * PER_BLOCK_BITS;
            (data_blocks + (1u64 << shift) - 1) >> shift
        })
        .collect()
}

/// Offsets of each level (level 0 first) when the top level is stored first; the total size.
fn layout(sizes: &[u64]) -> (Vec<usize>, usize) {
    let mut offsets = vec![0usize; sizes.len()];
    let mut position = 0usize;
    for i in (0..sizes.len()).rev() {
        offsets[i] = position;
        position += sizes[i] as usize * BLOCK;
    }
    (offsets, position)
}

fn check_salt(salt: &[u8]) -> Result<(), VerityError> {
    if salt.len() > 256 {
        return Err(VerityError::Salt(salt.len()));
    }
    Ok(())
}

impl HashTree {
    /// Builds the tree of `data_len` bytes read from `data` (a whole number of blocks).
    pub fn build(mut data: impl Read, data_len: u64, salt: &[u8]) -> Result<HashTree, VerityError> {
        check_salt(salt)?;
        if data_len == 0 {
            return Err(VerityError::Empty);
        }
        if !data_len.is_multiple_of(BLOCK as u64) {
            return Err(VerityError::NotWholeBlocks(data_len));
        }
        let data_blocks = data_len / BLOCK as u64;
        let sizes = level_sizes(data_blocks);
        let (level_offsets, total) = layout(&sizes);
        let mut bytes = vec![0u8; total];
        let mut block = vec![0u8; BLOCK];
        let mut first_digest = [0u8; DIGEST];
        for index in 0..data_blocks {
            data.read_exact(&mut block)
                .map_err(|e| VerityError::Read(e.to_string()))?;
            let digest = hash(salt, &block);
            if index == 0 {
                first_digest = digest;
            }
            if let Some(&offset) = level_offsets.first() {
                let at = offset + index as usize * DIGEST;
                bytes[at..at + DIGEST].copy_from_slice(&digest);
            }
        }
        for level in 1..sizes.len() {
            let below = level_offsets[level - 1];
            for index in 0..sizes[level - 1] as usize {
                let start = below + index * BLOCK;
                let digest = hash(salt, &bytes[start..start + BLOCK]);
                let at = level_offsets[level] + index * DIGEST;
                bytes[at..at + DIGEST].copy_from_slice(&digest);
            }
        }
        let root_hash = match level_offsets.last() {
            Some(&top) => hash(salt, &bytes[top..top + BLOCK]),
            None => first_digest,
        };
        Ok(HashTree {
            root_hash,
            salt: salt.to_vec(),
            data_blocks,
            bytes,
            level_offsets,
        })
    }

    /// The size in bytes of the tree over `data_blocks` blocks.
    pub fn size_for(data_blocks: u64) -> usize {
        if data_blocks == 0 {
            return 0;
        }
        layout(&level_sizes(data_blocks)).1
    }

    /// Takes a tree received from elsewhere (a bundle) and checks that every hash block of it
    /// chains up to `root_hash`, the signed one. With a single data block there is no tree: the
    /// root is that block's digest, checked by [`check_block`](Self::check_block).
    pub fn from_parts(
        bytes: Vec<u8>,
        data_blocks: u64,
        salt: &[u8],
        root_hash: [u8; DIGEST],
    ) -> Result<HashTree, VerityError> {
        check_salt(salt)?;
        if data_blocks == 0 {
            return Err(VerityError::Empty);
        }
        let sizes = level_sizes(data_blocks);
        let (level_offsets, total) = layout(&sizes);
        if bytes.len() != total {
            return Err(VerityError::TreeSize {
                got: bytes.len(),
                want: total,
                blocks: data_blocks,
            });
        }
        if let Some(&top) = level_offsets.last() {
            if hash(salt, &bytes[top..top + BLOCK]) != root_hash {
                return Err(VerityError::Root);
            }
        }
        for level in 1..sizes.len() {
            for index in 0..sizes[level - 1] as usize {
                let start = level_offsets[level - 1] + index * BLOCK;
                let at = level_offsets[level] + index * DIGEST;
                if hash(salt, &bytes[start..start + BLOCK]) != bytes[at..at + DIGEST] {
                    return Err(VerityError::TreeBlock {
                        level: level - 1,
                        block: index as u64,
                    });
                }
            }
            // Past the last digest the block must be zero, as the kernel hashes it so.
            let used = sizes[level - 1] as usize * DIGEST;
            let end = level_offsets[level] + sizes[level] as usize * BLOCK;
            if bytes[level_offsets[level] + used..end]
                .iter()
                .any(|&b| b != 0)
            {
                return Err(VerityError::TreeBlock {
                    level,
                    block: sizes[level] - 1,
                });
            }
        }
        Ok(HashTree {
            root_hash,
            salt: salt.to_vec(),
            data_blocks,
            bytes,
            level_offsets,
        })
    }

    /// Whether `block` is data block `index` as the tree says.
    pub fn check_block(&self, index: u64, block: &[u8]) -> bool {
        if index >= self.data_blocks || block.len() != BLOCK {
            return false;
        }
        let digest = hash(&self.salt, block);
        match self.level_offsets.first() {
            Some(&offset) => {
                let at = offset + index as usize * DIGEST;
                self.bytes[at..at + DIGEST] == digest
            }
            None => digest == self.root_hash,
        }
    }
}

/// Lower-case hexadecimal, as veritysetup prints root hashes and salts.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK)
            .map(|i| (i * 7 + i / BLOCK) as u8)
            .collect()
    }

    #[test]
    fn level_sizes_follow_cryptsetup() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(2), vec![1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128), vec![128, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), vec![129, 2, 1]);
        assert_eq!(HashTree::size_for(129), 3 * BLOCK);
    }

    #[test]
    fn a_tree_it_built_is_accepted_and_every_block_checks() {
        for blocks in [1, 2, 127, 128, 129, 300] {
            let d = data(blocks);
            let t = HashTree::build(&d[..], d.len() as u64, b"salt").unwrap();
            let back =
                HashTree::from_parts(t.bytes.clone(), blocks as u64, b"salt", t.root_hash).unwrap();
            for (i, b) in d.chunks(BLOCK).enumerate() {
                assert!(back.check_block(i as u64, b), "{blocks} blocks, block {i}");
            }
            let mut changed = d[..BLOCK].to_vec();
            changed[100] ^= 1;
            assert!(!back.check_block(0, &changed), "{blocks}");
            assert!(!back.check_block(blocks as u64, &d[..BLOCK]));
        }
    }

    #[test]
    fn a_changed_tree_byte_or_root_or_salt_is_refused() {
        let d = data(300);
        let t = HashTree::build(&d[..], d.len() as u64, b"salt").unwrap();
        for at in [0, 31, BLOCK, 2 * BLOCK + 5, t.bytes.len() - 1] {
            let mut bytes = t.bytes.clone();
            bytes[at] ^= 0x80;
            assert!(
                HashTree::from_parts(bytes, 300, b"salt", t.root_hash).is_err(),
                "byte {at}"
            );
        }
        let mut root = t.root_hash;
        root[0] ^= 1;
        assert_eq!(
            HashTree::from_parts(t.bytes.clone(), 300, b"salt", root).unwrap_err(),
            VerityError::Root
        );
        assert!(HashTree::from_parts(t.bytes.clone(), 300, b"pepper", t.root_hash).is_err());
        assert!(matches!(
            HashTree::from_parts(t.bytes.clone(), 200, b"salt", t.root_hash),
            Err(VerityError::TreeSize { .. }) | Err(VerityError::Root)
        ));
    }

    #[test]
    fn partial_blocks_and_empty_data_are_refused() {
        assert_eq!(
            HashTree::build(&[0u8; 100][..], 100, b"").unwrap_err(),
            VerityError::NotWholeBlocks(100)
        );
        assert_eq!(
            HashTree::build(&[][..], 0, b"").unwrap_err(),
            VerityError::Empty
        );
        assert!(matches!(
            HashTree::build(&[0u8; BLOCK][..], BLOCK as u64, &[0u8; 257]),
            Err(VerityError::Salt(257))
        ));
    }
}
