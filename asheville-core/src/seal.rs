//! Sealing a chunk into a blob: optional zstd, then AES-256-GCM.
//!
//! # Blob format (version 1)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format version = 1 |
//! | 1 | 1 | compression: 0 = none, 1 = zstd |
//! | 2 | 1 | zstd level as `i8` (0 when not compressed) |
//! | 3 | 1 | reserved, zero |
//! | 4 | 4 | plaintext length, little endian |
//! | 8 | 4 | stored length (after compression), LE |
//! | 12 | 12 | nonce |
//! | 24 | stored length | ciphertext |
//! | 24 + stored | 16 | GCM tag |
//!
//! Associated data: bytes 0..24 followed by the 32-byte chunk id. So the
//! header (version, compression, lengths, nonce) and the chunk id are both
//! authenticated: a blob opened for another id, or with any byte changed,
//! or truncated, fails to open.
//!
//! ## Keys and nonces: why deterministic sealing is safe here
//!
//! AES-GCM breaks badly if one (key, nonce) pair ever encrypts two different
//! byte strings. We seal deterministically (the same chunk gives the same
//! blob), so the argument must be explicit:
//!
//! 1. The key is per chunk: `chunk_key = BLAKE3-keyed(seal key, chunk id)`.
//!    Two different chunk ids get independent keys.
//! 2. Under one chunk key, the bytes encrypted (the *stored* bytes) are a
//!    function of the plaintext (fixed by the chunk id, a collision-resistant
//!    keyed hash) and of the transform: format version, compression and
//!    level — and, for zstd, the zstd library version, which we do not
//!    control and which can change the output for the same level.
//! 3. So the nonce is `BLAKE3-keyed(chunk key, header[0..12] || commitment)`
//!    truncated to 12 bytes, where `commitment` binds the exact stored bytes:
//!    the chunk id itself when stored uncompressed (the stored bytes *are*
//!    the plaintext), and `BLAKE3(stored bytes)` when compressed.
//!
//! Hence two seals that use the same (key, nonce) have, except with
//! probability ~2⁻⁹⁶ per pair, the same header and the same stored bytes:
//! the same message. Different messages under one key get unrelated nonces,
//! and there are only a handful of messages per key (one per transform), far
//! from any birthday bound. `seal::tests::nonce_binds_stored_bytes` checks it.
//!
//! ## Skipping data that does not compress
//!
//! For chunks of 64 KiB and more, four 4 KiB stretches spread over the
//! chunk are compressed first; if together they shrink by less than 2%,
//! the chunk is stored uncompressed without a full zstd pass (random data
//! then costs about 1% of a pass instead of all of it). The decision
//! depends only on the chunk's bytes and the level, so sealing stays
//! deterministic, and it does not touch the nonce argument above: the
//! stored bytes are committed to either way.
//!
//! ## Invariants
//! - `stored length <= plaintext length`: compression is kept only if it
//!   makes the chunk smaller; otherwise the chunk is stored as is.
//! - blob length is exactly `24 + stored length + 16`.
//! - opening never returns bytes unless the tag verified.

use zeroize::Zeroizing;

use crate::aead::{AesGcm, NONCE_LEN, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::id::ChunkId;
use crate::keys::SealKey;

thread_local! {
    /// One zstd compression context per thread (and level): building one
    /// costs more than compressing a small file.
    static COMPRESSOR: std::cell::RefCell<Option<(i8, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// One zstd decompression context per thread.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's compressor at `level`.
fn with_compressor<T>(
    level: i8,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<T>,
) -> Result<T> {
    COMPRESSOR
        .with(|c| {
            let mut c = c.borrow_mut();
            let z = match &mut *c {
                Some((l, z)) if *l == level => z,
                slot => {
                    &mut slot
                        .insert((level, zstd::bulk::Compressor::new(i32::from(level))?))
                        .1
                }
            };
            f(z)
        })
        .map_err(|e| Error::new(ErrorKind::InvalidInput, "zstd compression failed").set_source(e))
}

/// Chunks from this size on are sampled before a full compression pass.
const SAMPLE_FROM: usize = 64 << 10;
/// Bytes of each of the four samples.
const SAMPLE_LEN: usize = 4 << 10;

/// Chunks from this size up to [`SAMPLE_FROM`] are looked at byte by byte
/// first; smaller ones are always compressed.
const BYTE_SAMPLE_FROM: usize = 1 << 10;
/// Bytes of each of the four byte samples of a chunk below
/// [`SAMPLE_FROM`].
const BYTE_SAMPLE_LEN: usize = 64;
/// A chunk below [`SAMPLE_FROM`] whose four byte samples (256 bytes) take
/// this many distinct values or more is stored as it is. Random bytes take
/// 162 ± 5 (the repo bench's 10,000 random small files: 144 at the least),
/// text ~20-60. Over the 113,877 files of 1-64 KiB under `/usr`, the cargo
/// registry and the repo bench set (977 MB, which zstd level 3 shrinks by
/// 59%), 140 leaves 26,606 files (133 MB, mostly compressed formats and the
/// bench's random files) uncompressed and loses 0.02% of zstd's savings
/// (116 KB). zstd level 3 spends ~1.4 ns per random byte finding nothing:
/// the samples cost ~0.6 µs a chunk.
const DISTINCT_BYTES_MIN: usize = 140;

/// Distinct values among the bytes of four [`BYTE_SAMPLE_LEN`] samples
/// spread over `p` (at least [`BYTE_SAMPLE_FROM`] bytes long).
fn distinct_sampled(p: &[u8]) -> usize {
    let step = (p.len() - BYTE_SAMPLE_LEN) / 3;
    let mut seen = [0u64; 4];
    for i in 0..4 {
        for &b in &p[i * step..i * step + BYTE_SAMPLE_LEN] {
            seen[usize::from(b >> 6)] |= 1 << (b & 63);
        }
    }
    seen.iter().map(|w| w.count_ones() as usize).sum()
}

/// Whether `plaintext` is worth a full zstd pass: chunks under 1 KiB always
/// are; chunks under 64 KiB unless four 64-byte samples look random (see
/// [`DISTINCT_BYTES_MIN`]); larger ones if four 4 KiB samples spread over
/// them shrink by 2% or more.
fn worth_compressing(plaintext: &[u8], level: i8) -> Result<bool> {
    if plaintext.len() < SAMPLE_FROM {
        return Ok(
            plaintext.len() < BYTE_SAMPLE_FROM || distinct_sampled(plaintext) < DISTINCT_BYTES_MIN
        );
    }
    let step = (plaintext.len() - SAMPLE_LEN) / 3;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLE_LEN));
    let mut stored = 0;
    for i in 0..4 {
        let sample = &plaintext[i * step..i * step + SAMPLE_LEN];
        out.clear();
        stored += with_compressor(level, |z| z.compress_to_buffer(sample, &mut out))?;
    }
    Ok(stored * 50 < 4 * SAMPLE_LEN * 49)
}

/// Blob format version written by this build.
pub const BLOB_VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 24;
/// Bytes a blob adds to its stored payload (header + tag).
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest chunk a blob can hold.
pub const MAX_PLAINTEXT: usize = u32::MAX as usize;

/// Compression applied before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Compression {
    /// Store bytes as they are.
    #[default]
    None,
    /// zstd at `level` (1..=22; negative levels are the fast modes).
    Zstd {
        /// zstd level.
        level: i8,
    },
}

impl Compression {
    fn validate(self) -> Result<()> {
        if let Compression::Zstd { level } = self
            && (!(-7..=22).contains(&level) || level == 0)
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "zstd level must be in -7..=22 and not 0",
            )
            .with_context("level", level));
        }
        Ok(())
    }
}

/// The parsed header of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    /// Format version.
    pub version: u8,
    /// How the stored bytes were compressed (`None` if compression did not help).
    pub compression: Compression,
    /// Length of the chunk's plaintext.
    pub plain_len: u32,
    /// Length of the encrypted payload (without the tag).
    pub stored_len: u32,
    /// Nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl BlobHeader {
    /// Parses and checks the header of `blob`, including that the blob's
    /// length matches the header exactly.
    pub fn parse(blob: &[u8]) -> Result<BlobHeader> {
        if blob.len() < OVERHEAD {
            return Err(Error::new(
                ErrorKind::Integrity,
                "blob is shorter than its header and tag",
            )
            .with_context("len", blob.len()));
        }
        if blob[0] != BLOB_VERSION {
            return Err(
                Error::new(ErrorKind::Unsupported, "unknown blob format version")
                    .with_context("version", blob[0]),
            );
        }
        let compression = match (blob[1], blob[2] as i8) {
            (0, 0) => Compression::None,
            (1, level) => Compression::Zstd { level },
            _ => {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "bad compression field in blob header",
                )
                .with_context("compression", blob[1]));
            }
        };
        compression
            .validate()
            .map_err(|e| Error::new(ErrorKind::Integrity, e.message().to_owned()))?;
        if blob[3] != 0 {
            return Err(Error::new(
                ErrorKind::Integrity,
                "reserved byte of blob header is not zero",
            ));
        }
        let plain_len = u32::from_le_bytes([blob[4], blob[5], blob[6], blob[7]]);
        let stored_len = u32::from_le_bytes([blob[8], blob[9], blob[10], blob[11]]);
        if stored_len > plain_len
            || (compression == Compression::None && stored_len != plain_len)
            || blob.len() != OVERHEAD + stored_len as usize
        {
            return Err(Error::new(
                ErrorKind::Integrity,
                "blob length does not match its header",
            )
            .with_context("len", blob.len())
            .with_context("plain_len", plain_len)
            .with_context("stored_len", stored_len));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[12..24]);
        Ok(BlobHeader {
            version: blob[0],
            compression,
            plain_len,
            stored_len,
            nonce,
        })
    }

    fn prefix(&self) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = self.version;
        if let Compression::Zstd { level } = self.compression {
            h[1] = 1;
            h[2] = level as u8;
        }
        h[4..8].copy_from_slice(&self.plain_len.to_le_bytes());
        h[8..12].copy_from_slice(&self.stored_len.to_le_bytes());
        h
    }

    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..12].copy_from_slice(&self.prefix());
        h[12..].copy_from_slice(&self.nonce);
        h
    }
}

fn aad(header: &[u8; HEADER_LEN], id: &ChunkId) -> [u8; HEADER_LEN + 32] {
    let mut a = [0u8; HEADER_LEN + 32];
    a[..HEADER_LEN].copy_from_slice(header);
    a[HEADER_LEN..].copy_from_slice(id.as_bytes());
    a
}

fn nonce_for(chunk_key: &[u8; 32], prefix: &[u8; 12], commitment: &[u8; 32]) -> [u8; NONCE_LEN] {
    let mut h = blake3::Hasher::new_keyed(chunk_key);
    h.update(prefix);
    h.update(commitment);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&h.finalize().as_bytes()[..NONCE_LEN]);
    n
}

/// Seals and opens blobs with one tenant's seal key.
#[derive(Clone)]
pub struct Sealer {
    key: SealKey,
    aead: &'static dyn AesGcm,
    compression: Compression,
}

/// Where [`Sealer::open_in_place`] left a chunk's plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Stored uncompressed: the plaintext is this range of the blob,
    /// decrypted where it lay.
    InPlace(std::ops::Range<usize>),
    /// Stored compressed: the plaintext, decompressed into a new buffer.
    Decompressed(Vec<u8>),
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("aead", &self.aead.name())
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer using `aead` (see [`crate::aead::fastest`]).
    pub fn new(
        key: SealKey,
        compression: Compression,
        aead: &'static dyn AesGcm,
    ) -> Result<Sealer> {
        compression.validate()?;
        Ok(Sealer {
            key,
            aead,
            compression,
        })
    }

    /// The compression this sealer tries.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Seals `plaintext` whose id is `id`, appending the blob to `out`.
    ///
    /// `id` must be the chunk id of `plaintext` (callers compute it with
    /// [`crate::TenantKeys::chunk_id`] first: the nonce argument relies on it).
    pub fn seal_into(&self, id: &ChunkId, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(
                Error::new(ErrorKind::InvalidInput, "chunk too large for a blob")
                    .with_context("len", plaintext.len()),
            );
        }
        let chunk_key = self.key.chunk_key(id);
        let start = out.len();
        let body_at = start + HEADER_LEN;
        // Compressed straight into `out`, behind room for the header; kept
        // only if it is shorter than the plaintext.
        let compressed = match self.compression {
            Compression::None => None,
            Compression::Zstd { level } if worth_compressing(plaintext, level)? => {
                let bound = zstd::zstd_safe::compress_bound(plaintext.len());
                out.reserve(HEADER_LEN + bound + TAG_LEN);
                out.resize(body_at + bound, 0);
                let n = with_compressor(level, |z| {
                    z.compress_to_buffer(plaintext, &mut out[body_at..])
                });
                match n {
                    Ok(n) if n < plaintext.len() => {
                        out.truncate(body_at + n);
                        Some(level)
                    }
                    Ok(_) => {
                        out.truncate(start);
                        None
                    }
                    Err(e) => {
                        out.truncate(start);
                        return Err(e);
                    }
                }
            }
            Compression::Zstd { .. } => None,
        };
        let (compression, commitment) = match compressed {
            Some(level) => (
                Compression::Zstd { level },
                *blake3::hash(&out[body_at..]).as_bytes(),
            ),
            None => {
                out.reserve(OVERHEAD + plaintext.len());
                out.resize(body_at, 0);
                out.extend_from_slice(plaintext);
                (Compression::None, *id.as_bytes())
            }
        };
        let mut header = BlobHeader {
            version: BLOB_VERSION,
            compression,
            plain_len: plaintext.len() as u32,
            stored_len: (out.len() - body_at) as u32,
            nonce: [0; NONCE_LEN],
        };
        header.nonce = nonce_for(&chunk_key, &header.prefix(), &commitment);
        let hbytes = header.to_bytes();
        out[start..body_at].copy_from_slice(&hbytes);
        let body = &mut out[body_at..];
        let tag = self
            .aead
            .seal_in_place(&chunk_key, &header.nonce, &aad(&hbytes, id), body)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Seals `plaintext` into a new blob.
    pub fn seal(&self, id: &ChunkId, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.seal_into(id, plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens a blob sealed for `id`. Errors (never garbage) if the blob was
    /// modified, truncated, sealed for another id or under another key.
    pub fn open(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>> {
        let header = BlobHeader::parse(blob).map_err(|e| e.with_context("chunk", id))?;
        let body_end = blob.len() - TAG_LEN;
        let mut buf = blob[HEADER_LEN..body_end].to_vec();
        Ok(self
            .open_body(id, &header, &mut buf, &blob[body_end..])?
            .unwrap_or(buf))
    }

    /// [`Sealer::open`] without copying: decrypts `blob` where it lies.
    /// The plaintext is then `blob[range]` for a chunk stored uncompressed,
    /// or a new buffer for a compressed one. On an error `blob` holds
    /// garbage and must not be used.
    pub fn open_in_place(&self, id: &ChunkId, blob: &mut [u8]) -> Result<Opened> {
        let header = BlobHeader::parse(blob).map_err(|e| e.with_context("chunk", id))?;
        let body_end = blob.len() - TAG_LEN;
        let (body, tag) = blob[HEADER_LEN..].split_at_mut(body_end - HEADER_LEN);
        Ok(match self.open_body(id, &header, body, tag)? {
            None => Opened::InPlace(HEADER_LEN..body_end),
            Some(plain) => Opened::Decompressed(plain),
        })
    }

    /// Authenticates and decrypts `body` in place; then decompresses it
    /// into a new buffer (`Some`) or leaves it as the plaintext (`None`).
    fn open_body(
        &self,
        id: &ChunkId,
        header: &BlobHeader,
        body: &mut [u8],
        tag: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let chunk_key: Zeroizing<[u8; 32]> = self.key.chunk_key(id);
        let hbytes: [u8; HEADER_LEN] = header.to_bytes();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.aead
            .open_in_place(&chunk_key, &header.nonce, &aad(&hbytes, id), body, &t)
            .map_err(|e| e.with_context("chunk", id))?;
        let buf: &[u8] = body;
        match header.compression {
            Compression::None => Ok(None),
            Compression::Zstd { .. } => {
                let plain = DECOMPRESSOR
                    .with(|d| {
                        let mut d = d.borrow_mut();
                        let z = match &mut *d {
                            Some(z) => z,
                            slot => slot.insert(zstd::bulk::Decompressor::new()?),
                        };
                        z.decompress(buf, header.plain_len as usize)
                    })
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Integrity,
                            "authenticated blob failed to decompress",
                        )
                        .with_context("chunk", id)
                        .set_source(e)
                    })?;
                if plain.len() != header.plain_len as usize {
                    return Err(Error::new(
                        ErrorKind::Integrity,
                        "decompressed length does not match header",
                    )
                    .with_context("chunk", id));
                }
                Ok(Some(plain))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aead;
    use crate::keys::{MasterKey, TenantKeys};
    use proptest::prelude::*;

    fn keys(b: u8) -> TenantKeys {
        TenantKeys::new(&MasterKey::from_bytes([b; 32]))
    }

    fn sealer(k: &TenantKeys, c: Compression) -> Sealer {
        Sealer::new(k.seal_key().clone(), c, aead::fastest()).unwrap()
    }

    fn text(n: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect()
    }

    proptest! {
        #[test]
        fn round_trip_every_compression_and_implementation(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            repeat in 1usize..4,
            level in prop_oneof![Just(0i8), 1i8..=5],
        ) {
            let data: Vec<u8> = data.repeat(repeat);
            let k = keys(1);
            let id = k.chunk_id(&data);
            let c = if level == 0 { Compression::None } else { Compression::Zstd { level } };
            let mut blobs = Vec::new();
            for imp in aead::all() {
                let s = Sealer::new(k.seal_key().clone(), c, imp).unwrap();
                let blob = s.seal(&id, &data).unwrap();
                prop_assert_eq!(s.open(&id, &blob).unwrap(), data.clone());
                // In place: the same plaintext, where the blob lay if it
                // was stored uncompressed.
                let mut in_place = blob.clone();
                let plain = match s.open_in_place(&id, &mut in_place).unwrap() {
                    Opened::InPlace(r) => {
                        prop_assert_eq!(r.clone(), HEADER_LEN..blob.len() - TAG_LEN);
                        in_place[r].to_vec()
                    }
                    Opened::Decompressed(v) => {
                        prop_assert_eq!(blob[1], 1, "only compressed blobs decompress");
                        v
                    }
                };
                prop_assert_eq!(plain, data.clone());
                blobs.push(blob);
            }
            // All AES-GCM implementations produce byte-identical blobs.
            for w in blobs.windows(2) {
                prop_assert_eq!(&w[0], &w[1]);
            }
        }

        #[test]
        fn any_flipped_bit_is_detected(
            data in proptest::collection::vec(any::<u8>(), 1..500),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
            zstd in any::<bool>(),
        ) {
            let k = keys(2);
            let id = k.chunk_id(&data);
            let c = if zstd { Compression::Zstd { level: 3 } } else { Compression::None };
            let s = sealer(&k, c);
            let mut blob = s.seal(&id, &data).unwrap();
            let i = pos.index(blob.len());
            blob[i] ^= 1 << bit;
            prop_assert!(s.open(&id, &blob).is_err());
            prop_assert!(s.open_in_place(&id, &mut blob).is_err());
        }

        #[test]
        fn truncation_is_detected(data in proptest::collection::vec(any::<u8>(), 0..500), cut in any::<prop::sample::Index>()) {
            let k = keys(3);
            let id = k.chunk_id(&data);
            let s = sealer(&k, Compression::None);
            let blob = s.seal(&id, &data).unwrap();
            let n = cut.index(blob.len());
            prop_assert!(s.open(&id, &blob[..n]).is_err());
            prop_assert!(s.open_in_place(&id, &mut blob.clone()[..n]).is_err());
            let mut longer = blob.clone();
            longer.push(0);
            prop_assert!(s.open(&id, &longer).is_err());
            prop_assert!(s.open_in_place(&id, &mut longer).is_err());
        }
    }

    #[test]
    fn wrong_id_or_key_is_an_error() {
        let k = keys(4);
        let data = text(10_000);
        let id = k.chunk_id(&data);
        for c in [Compression::None, Compression::Zstd { level: 3 }] {
            let blob = sealer(&k, c).seal(&id, &data).unwrap();
            let other_id = k.chunk_id(b"other");
            let e = sealer(&k, c).open(&other_id, &blob).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity);
            let e = sealer(&k, c)
                .open_in_place(&other_id, &mut blob.clone())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity);
            let e = sealer(&keys(5), c).open(&id, &blob).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity);
        }
    }

    #[test]
    fn large_chunks_are_sampled_before_compressing() {
        let k = keys(8);
        let s = sealer(&k, Compression::Zstd { level: 1 });
        let random = |n: usize, seed: u32| -> Vec<u8> {
            (0..n as u32)
                .flat_map(|i| *blake3::hash(&(i ^ seed << 24).to_le_bytes()).as_bytes())
                .take(n)
                .collect()
        };
        let flag = |data: &[u8]| {
            let blob = s.seal(&k.chunk_id(data), data).unwrap();
            assert_eq!(s.open(&k.chunk_id(data), &blob).unwrap(), data);
            BlobHeader::parse(&blob).unwrap().compression
        };
        // 1 MiB of zeros with random bytes exactly where the four samples
        // fall: the samples decide, so it is stored uncompressed...
        let n = 1 << 20;
        let step = (n - SAMPLE_LEN) / 3;
        let mut decoy = vec![0u8; n];
        for i in 0..4 {
            decoy[i * step..i * step + SAMPLE_LEN].copy_from_slice(&random(SAMPLE_LEN, i as u32));
        }
        assert_eq!(flag(&decoy), Compression::None);
        // ...while below 64 KiB four 64-byte samples decide: random bytes
        // exactly there make a chunk of zeros stored as it is...
        let small_len = SAMPLE_FROM - 2;
        let byte_step = (small_len - BYTE_SAMPLE_LEN) / 3;
        let mut small = vec![0u8; small_len];
        for i in 0..4 {
            small[i * byte_step..i * byte_step + BYTE_SAMPLE_LEN]
                .copy_from_slice(&random(BYTE_SAMPLE_LEN, i as u32));
        }
        assert_eq!(flag(&small), Compression::None);
        // ...and half of it random, away from the samples, does not stop
        // the compression.
        let mut half_random = vec![0u8; small_len];
        for i in 0..3 {
            let at = i * byte_step + BYTE_SAMPLE_LEN;
            half_random[at..at + byte_step / 2]
                .copy_from_slice(&random(byte_step / 2, 20 + i as u32));
        }
        assert_eq!(flag(&half_random), Compression::Zstd { level: 1 });
        // Random small chunks (from 1 KiB) are stored as they are; text
        // is compressed, sampled or not.
        assert_eq!(flag(&random(8 << 10, 12)), Compression::None);
        assert_eq!(flag(&random(1 << 10, 13)), Compression::None);
        assert_eq!(flag(&text(8 << 10)), Compression::Zstd { level: 1 });
        assert_eq!(
            flag(&text(BYTE_SAMPLE_FROM - 1)),
            Compression::Zstd { level: 1 }
        );
        assert_eq!(flag(&text(n)), Compression::Zstd { level: 1 });
        assert_eq!(flag(&random(n, 9)), Compression::None);
        assert!(distinct_sampled(&random(BYTE_SAMPLE_FROM, 14)) >= DISTINCT_BYTES_MIN);
        assert!(distinct_sampled(&text(BYTE_SAMPLE_FROM)) < 40);
    }

    #[test]
    fn sealing_is_deterministic_and_compresses_text() {
        let k = keys(6);
        let data = text(100_000);
        let id = k.chunk_id(&data);
        let s = sealer(&k, Compression::Zstd { level: 3 });
        let a = s.seal(&id, &data).unwrap();
        assert_eq!(a, s.seal(&id, &data).unwrap());
        let h = BlobHeader::parse(&a).unwrap();
        assert_eq!(h.compression, Compression::Zstd { level: 3 });
        assert!(a.len() < data.len() / 10);
        // Incompressible data is stored as is, without the zstd flag.
        let random: Vec<u8> = (0..10_000u32)
            .map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[0])
            .collect();
        let rid = k.chunk_id(&random);
        let b = s.seal(&rid, &random).unwrap();
        assert_eq!(
            BlobHeader::parse(&b).unwrap().compression,
            Compression::None
        );
        assert_eq!(b.len(), random.len() + OVERHEAD);
    }

    /// The bytes `seal_into` appends are those earlier builds wrote: for
    /// a compressed chunk, an uncompressed one and a tiny one, appended
    /// behind other bytes. The expected hash was taken from the build
    /// before `seal_into` compressed straight into its output (it changes
    /// with the zstd library's output, which the module docs allow for).
    #[test]
    fn sealed_bytes_are_those_of_earlier_builds() {
        let k = keys(9);
        let s = sealer(&k, Compression::Zstd { level: 3 });
        let random: Vec<u8> = (0..10_000u32)
            .map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[0])
            .collect();
        let mut out = b"earlier bytes".to_vec();
        for chunk in [text(100_000), random, text(300), Vec::new()] {
            s.seal_into(&k.chunk_id(&chunk), &chunk, &mut out).unwrap();
        }
        assert_eq!(
            blake3::hash(&out).to_hex().as_str(),
            "6140745e6fc139207136b4ebd7ca521cef576e13110e8d429749b03fed0176ac"
        );
    }

    /// The nonce argument of the module docs: one chunk key, different stored
    /// bytes (another transform, or a different zstd output for the same
    /// level) must never share a nonce.
    #[test]
    fn nonce_binds_stored_bytes() {
        let k = keys(7);
        let data = text(50_000);
        let id = k.chunk_id(&data);
        let mut nonces = std::collections::HashSet::new();
        let mut blobs = std::collections::HashSet::new();
        for c in [
            Compression::None,
            Compression::Zstd { level: 1 },
            Compression::Zstd { level: 3 },
            Compression::Zstd { level: 19 },
        ] {
            let blob = sealer(&k, c).seal(&id, &data).unwrap();
            let h = BlobHeader::parse(&blob).unwrap();
            nonces.insert(h.nonce);
            blobs.insert(blob[HEADER_LEN..].to_vec());
        }
        // Levels 1, 3 and 19 may or may not produce distinct outputs; every
        // distinct stored payload must have its own nonce.
        assert_eq!(nonces.len(), blobs.len());
        assert!(nonces.len() >= 2);

        // Simulate "another zstd version": same header prefix, different
        // compressed bytes. The commitment differs, so the nonce differs.
        let ck = k.seal_key().chunk_key(&id);
        let prefix = [1u8, 1, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let n1 = nonce_for(&ck, &prefix, blake3::hash(b"zstd output A").as_bytes());
        let n2 = nonce_for(&ck, &prefix, blake3::hash(b"zstd output B").as_bytes());
        assert_ne!(n1, n2);
    }

    #[test]
    fn bad_compression_level_is_rejected() {
        let k = keys(8);
        let e = Sealer::new(
            k.seal_key().clone(),
            Compression::Zstd { level: 30 },
            aead::fastest(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    }
}
