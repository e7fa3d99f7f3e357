//! Packs: sealed blobs appended one after another, closed by an encrypted
//! trailer that lists them, so the catalog can always be rebuilt from the
//! backends alone.
//!
//! # Pack format (version 1)
//!
//! | part | size | |
//! |---|---|---|
//! | blobs | Σ blob lengths | sealed blobs (see `asheville_core::seal`) back to back |
//! | trailer | `c` + 16 | postcard list of `(chunk id, offset, length)`, AES-256-GCM, tag appended (ids as 32 bytes; packs written before 2026-12 hold 64 hex digits, which are still read) |
//! | nonce | 12 | random, for the trailer |
//! | tenant | `t` | tenant name, UTF-8 |
//! | footer | 11 | `t` as u16 LE, `c` as u32 LE, magic `ASHP`, version 1 |
//!
//! The trailer key is `BLAKE3-keyed(tenant seal key, "pack trailer v1" || pack id)`
//! and its associated data is the pack id followed by the tenant name, so a
//! trailer cannot be moved to another pack or tenant. The nonce is random:
//! a trailer is sealed once per pack.
//!
//! ## Invariants
//! - Every blob listed lies wholly before the trailer.
//! - A pack holds blobs of one tenant only (dedup never crosses tenants).

use asheville_core::{ChunkId, PackId, SealKey, aead, keys::fill_random};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

const MAGIC: &[u8; 4] = b"ASHP";
const VERSION: u8 = 1;
const FOOTER: usize = 11;

/// One blob listed in a trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailerEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Offset of the blob in the pack.
    pub offset: u64,
    /// Blob length.
    pub len: u32,
}

impl TrailerEntry {
    /// Where this blob is, as the catalog records it.
    pub fn loc(&self, pack: PackId) -> crate::catalog::BlobLoc {
        crate::catalog::BlobLoc {
            pack,
            offset: self.offset,
            len: self.len,
        }
    }
}

fn trailer_key(seal: &SealKey, pack: &PackId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(seal.as_bytes());
    h.update(b"pack trailer v1");
    h.update(pack.as_bytes());
    *h.finalize().as_bytes()
}

fn aad(pack: &PackId, tenant: &str) -> Vec<u8> {
    let mut a = pack.as_bytes().to_vec();
    a.extend_from_slice(tenant.as_bytes());
    a
}

/// Appends the trailer for `entries` to `pack` (which holds the blobs).
pub fn finish(
    pack: &mut Vec<u8>,
    id: &PackId,
    tenant: &str,
    seal: &SealKey,
    entries: &[TrailerEntry],
) -> Result<()> {
    finish_padded(pack, 0, id, tenant, seal, entries, 1)
}

/// [`finish`] for a pack that starts at `pack[start..]` (the offsets in
/// `entries` count from there), with zeros between the blobs and the
/// trailer so that the pack's length is a multiple of `multiple` (the
/// padding is at most `multiple - 1` bytes; readers skip it, as every
/// blob lies before the trailer). Fails if `multiple` is zero.
pub fn finish_padded(
    pack: &mut Vec<u8>,
    start: usize,
    id: &PackId,
    tenant: &str,
    seal: &SealKey,
    entries: &[TrailerEntry],
    multiple: usize,
) -> Result<()> {
    if multiple == 0 || start > pack.len() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a pack is padded to a multiple of at least 1, after its start",
        ));
    }
    let mut body = postcard::to_stdvec(entries)
        .map_err(|e| Error::new(ErrorKind::Other, "cannot encode pack trailer").set_source(e))?;
    let mut nonce = [0u8; 12];
    fill_random(&mut nonce)?;
    let tag = aead::fastest().seal_in_place(
        &trailer_key(seal, id),
        &nonce,
        &aad(id, tenant),
        &mut body,
    )?;
    let c = body.len() as u32;
    let t = u16::try_from(tenant.len())
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "tenant name too long"))?;
    let tail = body.len() + tag.len() + nonce.len() + tenant.len() + FOOTER;
    let len = pack.len() - start + tail;
    pack.resize(pack.len() + len.next_multiple_of(multiple) - len, 0);
    pack.extend_from_slice(&body);
    pack.extend_from_slice(&tag);
    pack.extend_from_slice(&nonce);
    pack.extend_from_slice(tenant.as_bytes());
    pack.extend_from_slice(&t.to_le_bytes());
    pack.extend_from_slice(&c.to_le_bytes());
    pack.extend_from_slice(MAGIC);
    pack.push(VERSION);
    Ok(())
}

/// The tenant a pack belongs to (readable without keys).
pub fn tenant_of(pack: &[u8]) -> Result<String> {
    let (t, _, _) = footer(pack)?;
    let end = pack.len() - FOOTER;
    String::from_utf8(pack[end - t..end].to_vec())
        .map_err(|_| Error::new(ErrorKind::Integrity, "pack tenant name is not UTF-8"))
}

/// `(tenant name length, trailer length, end of the blobs)` of a pack (or
/// of a pack's tail, the end then counted from the slice's start).
fn footer(pack: &[u8]) -> Result<(usize, usize, usize)> {
    let bad = || {
        Error::new(
            ErrorKind::Integrity,
            "not a pack or truncated pack (bad footer)",
        )
    };
    if pack.len() < FOOTER {
        return Err(bad());
    }
    let (t, c) = footer_fields(&pack[pack.len() - FOOTER..])?;
    let tail = FOOTER + t + 12 + 16 + c;
    if pack.len() < tail {
        return Err(bad());
    }
    Ok((t, c, pack.len() - tail))
}

/// Length of the footer, the last bytes of every pack.
pub const FOOTER_LEN: usize = FOOTER;

/// From a pack's last [`FOOTER_LEN`] bytes: how many bytes at the end of
/// the pack hold the trailer, nonce, tenant name and footer (its "tail").
pub fn tail_len(footer_bytes: &[u8]) -> Result<usize> {
    if footer_bytes.len() != FOOTER {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a pack footer is 11 bytes",
        ));
    }
    let (t, c) = footer_fields(footer_bytes)?;
    Ok(FOOTER + t + 12 + 16 + c)
}

/// `(tenant name length, trailer length)` from the 11 footer bytes.
fn footer_fields(f: &[u8]) -> Result<(usize, usize)> {
    if &f[6..10] != MAGIC {
        return Err(Error::new(
            ErrorKind::Integrity,
            "not a pack or truncated pack (bad footer)",
        ));
    }
    if f[10] != VERSION {
        return Err(Error::new(ErrorKind::Unsupported, "unknown pack version")
            .with_context("version", f[10]));
    }
    Ok((
        u16::from_le_bytes([f[0], f[1]]) as usize,
        u32::from_le_bytes([f[2], f[3], f[4], f[5]]) as usize,
    ))
}

/// Reads and authenticates the trailer of `pack`.
pub fn read_trailer(
    pack: &[u8],
    id: &PackId,
    tenant: &str,
    seal: &SealKey,
) -> Result<Vec<TrailerEntry>> {
    read_trailer_from_tail(pack, pack.len() as u64, id, tenant, seal)
}

/// Like [`read_trailer`], from only the pack's last bytes (at least its
/// [`tail_len`]); `pack_len` is the whole pack's length.
pub fn read_trailer_from_tail(
    tail: &[u8],
    pack_len: u64,
    id: &PackId,
    tenant: &str,
    seal: &SealKey,
) -> Result<Vec<TrailerEntry>> {
    let pack = tail;
    let (t, c, blobs_end) = footer(pack)?;
    let skipped = pack_len
        .checked_sub(pack.len() as u64)
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "tail longer than the pack"))?;
    let nonce_at = pack.len() - FOOTER - t - 12;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&pack[nonce_at..nonce_at + 12]);
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&pack[blobs_end + c..blobs_end + c + 16]);
    let mut body = pack[blobs_end..blobs_end + c].to_vec();
    aead::fastest()
        .open_in_place(
            &trailer_key(seal, id),
            &nonce,
            &aad(id, tenant),
            &mut body,
            &tag,
        )
        .map_err(|e| Error::from(e).with_context("pack", id))?;
    let entries: Vec<TrailerEntry> = postcard::from_bytes(&body).map_err(|e| {
        Error::new(ErrorKind::Integrity, "pack trailer does not parse").set_source(e)
    })?;
    let blobs_end_abs = skipped + blobs_end as u64;
    if entries
        .iter()
        .any(|e| e.offset + u64::from(e.len) > blobs_end_abs)
    {
        return Err(Error::new(
            ErrorKind::Integrity,
            "pack trailer lists a blob past the blobs",
        ));
    }
    Ok(entries)
}
