//! The commit journal: every batch commit and every delete also leaves an
//! encrypted record on every backend, so that the catalog can be rebuilt
//! from the backends alone (pack trailers say which blobs exist; the
//! journal says which files are made of them).
//!
//! # Journal object (version 1)
//!
//! Key: `journal/<tenant>/<commit time, ns, 20 digits>-<16 random hex>`,
//! so a listing returns records in commit order.
//!
//! | part | size | |
//! |---|---|---|
//! | version | 1 | 1 |
//! | nonce | 12 | random |
//! | ciphertext | n | postcard [`JournalRecord`], AES-256-GCM |
//! | tag | 16 | |
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

const VERSION: u8 = 1;

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

fn aad(object_key: &str) -> Vec<u8> {
    let mut a = vec![VERSION];
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
    let mut body = postcard::to_stdvec(record)
        .map_err(|e| Error::new(ErrorKind::Other, "cannot encode journal record").set_source(e))?;
    let mut nonce = [0u8; 12];
    fill_random(&mut nonce)?;
    let tag = aead::fastest().seal_in_place(&key_for(seal), &nonce, &aad(object_key), &mut body)?;
    let mut out = Vec::with_capacity(1 + 12 + body.len() + 16);
    out.push(VERSION);
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
    if bytes[0] != VERSION {
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
        .open_in_place(&key_for(seal), &nonce, &aad(object_key), &mut body, &tag)
        .map_err(|e| Error::from(e).with_context("key", object_key))?;
    postcard::from_bytes(&body).map_err(|e| {
        Error::new(ErrorKind::Integrity, "journal record does not parse")
            .with_context("key", object_key)
            .set_source(e)
    })
}
