//! The commit journal: every batch commit and every delete also leaves an
//! encrypted record on every backend, so that the catalog can be rebuilt
//! from the backends alone (pack trailers say which blobs exist; the
//! journal says which files are made of them).
//!
//! # Journal object (version 2; version 1 is still read)
//!
//! Key: `journal/<tenant>/<commit time, ns, 20 digits>-<16 random hex>`,
//! so a listing returns records in commit order.
//!
//! | part | size | |
//! |---|---|---|
//! | version | 1 | 2 (1: the plaintext is not compressed) |
//! | nonce | 12 | random |
//! | ciphertext | n | zstd of postcard [`JournalRecord`], AES-256-GCM |
//! | tag | 16 | |
//!
//! Compression matters here: a record lists every path of its batch and
//! is stored on every backend, so an uncompressed one cost about 2% of
//! the repository for a tree of many small files.
//!
//! Key: `BLAKE3-keyed(tenant seal key, "journal v1")`; associated data: the
//! version byte and the object key, so a record cannot be moved to another
//! key or tenant.
//!
//! ## Invariants
//! - A record is written to every backend *before* the catalog commits
//!   what it describes; a crash in between leaves a record for a complete
//!   (all packs uploaded) but unacknowledged change, never the reverse.
//! - Replaying records in key order over the packs reproduces the files.

use asheville_core::{SealKey, aead, keys::fill_random};
use serde::{Deserialize, Serialize};

use crate::catalog::{ChunkRef, FileMeta};
use crate::error::{Error, ErrorKind, Result};

const VERSION: u8 = 2;
/// Records written before compression.
const VERSION_PLAIN: u8 = 1;
/// zstd level of a record (they are small and written once per commit).
const ZSTD_LEVEL: i32 = 3;
/// The most bytes a record may decompress to.
const MAX_RECORD: u64 = 1 << 30;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalOp {
    /// A new version of a file.
    Put {
        /// Path.
        path: String,
        /// Size.
        size: u64,
        /// Metadata.
        meta: FileMeta,
        /// Chunks in order.
        chunks: Vec<ChunkRef>,
    },
    /// A file was deleted.
    Delete {
        /// Path.
        path: String,
    },
    /// A version was forgotten (retention).
    Forget {
        /// Path.
        path: String,
        /// Version number.
        version: u64,
    },
}

/// One commit: the changes that became visible together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Commit time, ns since the epoch.
    pub created_ns: i64,
    /// The changes.
    pub ops: Vec<JournalOp>,
}

fn key_for(seal: &SealKey) -> [u8; 32] {
    *blake3::keyed_hash(seal.as_bytes(), b"journal v1").as_bytes()
}

fn aad(version: u8, object_key: &str) -> Vec<u8> {
    let mut a = vec![version];
    a.extend_from_slice(object_key.as_bytes());
    a
}

/// A fresh object key for a record of `tenant` committed at `created_ns`.
pub fn object_key(tenant: &str, created_ns: i64) -> Result<String> {
    let mut r = [0u8; 8];
    fill_random(&mut r)?;
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("journal/{tenant}/{:020}-{hex}", created_ns.max(0)))
}

/// Encrypts a record for `object_key`.
pub fn seal(seal: &SealKey, object_key: &str, record: &JournalRecord) -> Result<Vec<u8>> {
    seal_version(VERSION, seal, object_key, record)
}

fn seal_version(
    version: u8,
    seal: &SealKey,
    object_key: &str,
    record: &JournalRecord,
) -> Result<Vec<u8>> {
    let plain = postcard::to_stdvec(record)
        .map_err(|e| Error::new(ErrorKind::Other, "cannot encode journal record").set_source(e))?;
    let mut body = if version == VERSION_PLAIN {
        plain
    } else {
        zstd::bulk::compress(&plain, ZSTD_LEVEL)
            .map_err(|e| Error::io("cannot compress journal record", e))?
    };
    let mut nonce = [0u8; 12];
    fill_random(&mut nonce)?;
    let tag = aead::fastest().seal_in_place(
        &key_for(seal),
        &nonce,
        &aad(version, object_key),
        &mut body,
    )?;
    let mut out = Vec::with_capacity(1 + 12 + body.len() + 16);
    out.push(version);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts and parses a record stored at `object_key`.
pub fn open(seal: &SealKey, object_key: &str, bytes: &[u8]) -> Result<JournalRecord> {
    if bytes.len() < 1 + 12 + 16 {
        return Err(Error::new(ErrorKind::Integrity, "journal record too short")
            .with_context("key", object_key));
    }
    let version = bytes[0];
    if version != VERSION && version != VERSION_PLAIN {
        return Err(
            Error::new(ErrorKind::Unsupported, "unknown journal version")
                .with_context("key", object_key),
        );
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[1..13]);
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&bytes[bytes.len() - 16..]);
    let mut body = bytes[13..bytes.len() - 16].to_vec();
    aead::fastest()
        .open_in_place(
            &key_for(seal),
            &nonce,
            &aad(version, object_key),
            &mut body,
            &tag,
        )
        .map_err(|e| Error::from(e).with_context("key", object_key))?;
    if version == VERSION {
        use std::io::Read;
        let mut plain = Vec::new();
        zstd::stream::read::Decoder::new(&body[..])
            .and_then(|d| d.take(MAX_RECORD + 1).read_to_end(&mut plain))
            .map_err(|e| {
                Error::new(ErrorKind::Integrity, "journal record does not decompress")
                    .with_context("key", object_key)
                    .set_source(e)
            })?;
        if plain.len() as u64 > MAX_RECORD {
            return Err(Error::new(ErrorKind::Integrity, "journal record too large")
                .with_context("key", object_key));
        }
        body = plain;
    }
    postcard::from_bytes(&body).map_err(|e| {
        Error::new(ErrorKind::Integrity, "journal record does not parse")
            .with_context("key", object_key)
            .set_source(e)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::catalog::ChunkRef;
    use asheville_core::ChunkId;

    fn record(files: usize) -> JournalRecord {
        JournalRecord {
            created_ns: 1_700_000_000_000_000_000,
            ops: (0..files)
                .map(|i| JournalOp::Put {
                    path: format!("/data/small/{:03}/f{i:05}.txt", i / 200),
                    size: 1000 + i as u64,
                    meta: FileMeta {
                        mtime_ns: 1_600_000_000_000_000_000 + i as i64,
                        mode: 0o644,
                    },
                    chunks: vec![ChunkRef {
                        id: ChunkId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                        len: 1000 + i as u32,
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn records_are_compressed_and_old_plain_ones_still_open() {
        let key = SealKey::from_bytes([7; 32]);
        let r = record(2000);
        let k = object_key("t", r.created_ns).unwrap();
        let packed = seal(&key, &k, &r).unwrap();
        let plain = seal_version(VERSION_PLAIN, &key, &k, &r).unwrap();
        assert_eq!(packed[0], VERSION);
        assert_eq!(plain[0], VERSION_PLAIN);
        assert!(
            packed.len() * 10 < plain.len() * 8,
            "{} vs {} bytes",
            packed.len(),
            plain.len()
        );
        assert_eq!(open(&key, &k, &packed).unwrap(), r);
        assert_eq!(open(&key, &k, &plain).unwrap(), r);
        // The version byte is authenticated: a compressed record relabelled
        // as plain (or the reverse) does not open.
        let mut relabelled = packed.clone();
        relabelled[0] = VERSION_PLAIN;
        assert_eq!(
            open(&key, &k, &relabelled).unwrap_err().kind(),
            open(&key, &k, &{
                let mut b = packed.clone();
                let n = b.len();
                b[n - 1] ^= 1;
                b
            })
            .unwrap_err()
            .kind()
        );
        let mut unknown = packed;
        unknown[0] = 9;
        assert_eq!(
            open(&key, &k, &unknown).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
}
