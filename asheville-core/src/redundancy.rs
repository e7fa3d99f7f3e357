//! Redundancy: a pack is stored as shards — Reed-Solomon `rs(k,m)`,
//! `replicas(n)` or `none` — each with its own checksum.
//!
//! # Shard format (version 2)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `ASHS` |
//! | 4 | 1 | format version = 2 (1 is still read) |
//! | 5 | 1 | scheme: 0 = none, 1 = replicas, 2 = Reed-Solomon |
//! | 6 | 1 | data shards `k` (1 for none and replicas) |
//! | 7 | 1 | total shards `n` |
//! | 8 | 1 | this shard's index, `0..n` |
//! | 9 | 3 | reserved, zero |
//! | 12 | 4 | payload length `S`, little endian |
//! | 16 | 8 | length of the protected data (the pack), LE |
//! | 24 | 32 | checksum of bytes 0..24 followed by the payload (below) |
//! | 56 | `S` | payload |
//!
//! The checksum is CRC-64/NVME (little endian, in the field's first 8
//! bytes; the other 24 are zero) in version 2, and BLAKE3 (all 32 bytes)
//! in version 1. Both are found again by [`verify_shard`]; new shards are
//! written as version 2.
//!
//! ## Why a CRC is enough here
//! The shard checksum finds bitrot, so that Reed-Solomon rebuilds from the
//! good shards: it is not what keeps data authentic. Every blob in a pack
//! carries an AES-GCM tag and the pack trailer is sealed too, so a shard
//! altered on purpose (which could carry a matching checksum of any
//! unkeyed kind, BLAKE3 included) yields an error on read, never wrong
//! bytes. Against random damage a 64-bit CRC misses one corrupted shard in
//! 2^64, and it detects every burst of up to 64 bits. It costs a quarter
//! of BLAKE3 on this machine's CPU (CRC-64/NVME ~21 GB/s against BLAKE3's
//! ~5.3 GB/s on 8 MiB, one core), and a put checksums every shard it
//! writes: 1.5 times the stored bytes under `rs(2,1)`.
//!
//! For `rs(k,m)` the code is systematic: data shard `i` holds pack bytes
//! `i*S .. (i+1)*S` (the last one zero-padded), and shards `k..k+m` hold
//! parity. Pack byte `p` is therefore at payload offset `p % S` of data shard
//! `p / S`, and a byte range can be read straight out of the data shards
//! ([`Codec::locate`]) or rebuilt from the same range of any `k` other
//! shards ([`Codec::reconstruct_range`]): Reed-Solomon works byte position
//! by byte position. For `replicas(n)` every shard's payload is the whole
//! pack.
//!
//! ## Invariants
//! - The checksum covers the header fields and the payload, so a flipped bit
//!   anywhere in a shard is detected by [`verify_shard`].
//! - All shards of one pack agree on scheme, `k`, `n`, `S` and the pack
//!   length; a shard whose header disagrees is treated as corrupt.
//! - A range rebuilt from partial shard ranges cannot be checked against the
//!   whole-shard checksum; callers verify it by what it holds (blobs carry
//!   an AES-GCM tag).

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::error::{Error, ErrorKind, Result};

/// Largest `k` for Reed-Solomon.
pub const MAX_DATA_SHARDS: u8 = 64;
/// Largest `m` for Reed-Solomon and largest `n` for replicas.
pub const MAX_PARITY_SHARDS: u8 = 32;
/// Shard header length.
pub const SHARD_HEADER_LEN: usize = 56;
const SHARD_MAGIC: &[u8; 4] = b"ASHS";
/// Shard format version written by this build.
const SHARD_VERSION: u8 = 2;
/// The first shard format version, with BLAKE3 checksums; still read.
const SHARD_VERSION_BLAKE3: u8 = 1;
/// The address granule [`Codec::encode_pack_in_phase`] lines parity
/// payloads up in: a page, which covers what `O_DIRECT` asks of memory on
/// every Linux device.
pub const PAYLOAD_PHASE: usize = 4096;
/// Bytes of each shard that [`Codec::encode_pack`] encodes and hashes at a
/// time (measured: 16, 32, 64 and 256 KiB stripes; 64 KiB was fastest).
const STRIPE: usize = 64 << 10;

/// How a pack is protected. Parses from and prints as `none`,
/// `replicas(3)`, `rs(4,2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Redundancy {
    /// One copy.
    None,
    /// `n` identical copies; survives `n - 1` losses.
    Replicas(u8),
    /// Reed-Solomon with `data` data shards and `parity` parity shards;
    /// survives the loss of any `parity` shards.
    ReedSolomon {
        /// `k`.
        data: u8,
        /// `m`.
        parity: u8,
    },
}

impl Redundancy {
    /// Total number of shards per pack.
    pub fn total_shards(&self) -> usize {
        match *self {
            Redundancy::None => 1,
            Redundancy::Replicas(n) => n as usize,
            Redundancy::ReedSolomon { data, parity } => data as usize + parity as usize,
        }
    }

    /// Number of good shards needed to read a pack (`k`).
    pub fn data_shards(&self) -> usize {
        match *self {
            Redundancy::ReedSolomon { data, .. } => data as usize,
            _ => 1,
        }
    }

    /// How many shards may be lost with the pack still readable.
    pub fn tolerated_losses(&self) -> usize {
        self.total_shards() - self.data_shards()
    }

    /// Stored bytes per protected byte (1.5 for `rs(4,2)`).
    pub fn overhead(&self) -> f64 {
        self.total_shards() as f64 / self.data_shards() as f64
    }

    fn scheme(&self) -> u8 {
        match self {
            Redundancy::None => 0,
            Redundancy::Replicas(_) => 1,
            Redundancy::ReedSolomon { .. } => 2,
        }
    }

    /// Checks the bounds: `replicas(1..=32)`, `rs(1..=64, 1..=32)`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Redundancy::None => Ok(()),
            Redundancy::Replicas(n) if (1..=MAX_PARITY_SHARDS).contains(&n) => Ok(()),
            Redundancy::ReedSolomon { data, parity }
                if (1..=MAX_DATA_SHARDS).contains(&data)
                    && (1..=MAX_PARITY_SHARDS).contains(&parity) =>
            {
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "redundancy out of range: replicas(n) needs 1 <= n <= {MAX_PARITY_SHARDS}; \
                     rs(k,m) needs 1 <= k <= {MAX_DATA_SHARDS} and 1 <= m <= {MAX_PARITY_SHARDS}"
                ),
            )
            .with_context("policy", self)),
        }
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redundancy::None => f.write_str("none"),
            Redundancy::Replicas(n) => write!(f, "replicas({n})"),
            Redundancy::ReedSolomon { data, parity } => write!(f, "rs({data},{parity})"),
        }
    }
}

impl FromStr for Redundancy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidConfig,
                "redundancy must be `none`, `replicas(N)` or `rs(K,M)`",
            )
            .with_context("got", s)
        };
        let t: String = s
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let args = |prefix: &str| -> Option<Vec<u8>> {
            let inner = t
                .strip_prefix(prefix)?
                .strip_prefix('(')?
                .strip_suffix(')')?;
            inner.split(',').map(|p| p.parse::<u8>().ok()).collect()
        };
        let r = if t == "none" {
            Redundancy::None
        } else if let Some(a) = args("replicas") {
            match a[..] {
                [n] => Redundancy::Replicas(n),
                _ => return Err(bad()),
            }
        } else if let Some(a) = args("rs") {
            match a[..] {
                [data, parity] => Redundancy::ReedSolomon { data, parity },
                _ => return Err(bad()),
            }
        } else {
            return Err(bad());
        };
        r.validate()?;
        Ok(r)
    }
}

impl serde::Serialize for Redundancy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Redundancy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The header of a verified shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardInfo {
    /// Policy the shard belongs to.
    pub policy: Redundancy,
    /// This shard's index.
    pub index: usize,
    /// Payload length `S`.
    pub shard_len: usize,
    /// Length of the protected data.
    pub data_len: u64,
    /// The shard's format version (see the module docs).
    pub version: u8,
    /// The shard's checksum.
    pub checksum: [u8; 32],
}

fn header_prefix(policy: Redundancy, index: usize, shard_len: usize, data_len: u64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(SHARD_MAGIC);
    h[4] = SHARD_VERSION;
    h[5] = policy.scheme();
    h[6] = policy.data_shards() as u8;
    h[7] = policy.total_shards() as u8;
    h[8] = index as u8;
    h[12..16].copy_from_slice(&(shard_len as u32).to_le_bytes());
    h[16..24].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// A shard checksum being computed, of the kind shard format `version`
/// uses.
enum ShardHasher {
    Crc64(Box<crc_fast::Digest>),
    Blake3(Box<blake3::Hasher>),
}

impl ShardHasher {
    /// Starts the checksum of a shard whose header begins with `prefix`.
    fn new(prefix: &[u8; 24]) -> ShardHasher {
        let mut h = if prefix[4] == SHARD_VERSION_BLAKE3 {
            ShardHasher::Blake3(Box::default())
        } else {
            ShardHasher::Crc64(Box::new(crc_fast::Digest::new(
                crc_fast::CrcAlgorithm::Crc64Nvme,
            )))
        };
        h.update(prefix);
        h
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            ShardHasher::Crc64(d) => d.update(bytes),
            ShardHasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The 32-byte checksum field.
    fn finalize(&self) -> [u8; 32] {
        match self {
            ShardHasher::Crc64(d) => {
                let mut field = [0u8; 32];
                field[..8].copy_from_slice(&d.finalize().to_le_bytes());
                field
            }
            ShardHasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// The checksum field of a shard: its header's first 24 bytes (`prefix`,
/// which names the format version) followed by its payload.
fn checksum(prefix: &[u8; 24], payload: &[u8]) -> [u8; 32] {
    let mut h = ShardHasher::new(prefix);
    h.update(payload);
    h.finalize()
}

/// Parses only a shard's header (its first [`SHARD_HEADER_LEN`] bytes),
/// without the checksum: for tools that must learn a pack's shape without
/// downloading whole shards (a catalog rebuild). What it returns is a hint;
/// [`verify_shard`] is the check.
pub fn parse_shard_header(header: &[u8]) -> Result<ShardInfo> {
    let corrupt = |msg: &'static str| Error::new(ErrorKind::Integrity, msg);
    if header.len() < SHARD_HEADER_LEN || &header[0..4] != SHARD_MAGIC {
        return Err(corrupt("not a shard header"));
    }
    let version = header[4];
    if version != SHARD_VERSION && version != SHARD_VERSION_BLAKE3 {
        return Err(
            Error::new(ErrorKind::Unsupported, "unknown shard format version")
                .with_context("version", header[4]),
        );
    }
    let (k, n, index) = (header[6], header[7], header[8] as usize);
    let policy = match header[5] {
        0 if k == 1 && n == 1 => Redundancy::None,
        1 if k == 1 => Redundancy::Replicas(n),
        2 if n > k => Redundancy::ReedSolomon {
            data: k,
            parity: n - k,
        },
        _ => return Err(corrupt("bad scheme in shard header")),
    };
    policy
        .validate()
        .map_err(|_| corrupt("shard header names an invalid policy"))?;
    if index >= n as usize || header[9..12] != [0, 0, 0] {
        return Err(corrupt("bad index or reserved bytes in shard header"));
    }
    let shard_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    let mut dl = [0u8; 8];
    dl.copy_from_slice(&header[16..24]);
    let data_len = u64::from_le_bytes(dl);
    if data_len.div_ceil(policy.data_shards() as u64) != shard_len as u64 {
        return Err(corrupt("shard header lengths disagree"));
    }
    let mut checksum = [0u8; 32];
    checksum.copy_from_slice(&header[24..56]);
    Ok(ShardInfo {
        policy,
        index,
        shard_len,
        data_len,
        version,
        checksum,
    })
}

/// Parses a shard and verifies its checksum.
pub fn verify_shard(shard: &[u8]) -> Result<ShardInfo> {
    let info = parse_shard_header(shard)?;
    if shard.len() != SHARD_HEADER_LEN + info.shard_len {
        return Err(Error::new(
            ErrorKind::Integrity,
            "shard length does not match its header",
        )
        .with_context("len", shard.len())
        .with_context("shard_len", info.shard_len)
        .with_context("data_len", info.data_len));
    }
    let mut prefix = [0u8; 24];
    prefix.copy_from_slice(&shard[..24]);
    if checksum(&prefix, &shard[SHARD_HEADER_LEN..]) != info.checksum {
        return Err(Error::new(
            ErrorKind::Integrity,
            "shard checksum mismatch (bitrot or tampering)",
        )
        .with_context("index", info.index));
    }
    Ok(info)
}

/// Where a byte range of the protected data lives: `range` of the payload
/// of data shard `shard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRange {
    /// Data shard index (`0..k`).
    pub shard: usize,
    /// Byte range inside that shard's payload (add [`SHARD_HEADER_LEN`]
    /// for the offset in the shard object).
    pub range: Range<usize>,
}

/// The result of [`Codec::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The protected data.
    pub data: Vec<u8>,
    /// Indices of shards that were given but failed verification.
    pub corrupt: Vec<usize>,
    /// Indices of shards that were not given.
    pub missing: Vec<usize>,
}

/// The shards of one pack, as [`Codec::encode_pack`] made them: headers,
/// the (padded) data, and parity.
pub struct EncodedPack {
    data_len: u64,
    shard_len: usize,
    k: usize,
    n: usize,
    data: Vec<u8>,
    /// Where the protected data starts in `data`.
    lead: usize,
    parity: Vec<Vec<u8>>,
    /// Where each parity payload starts in its buffer.
    parity_leads: Vec<usize>,
    headers: Vec<[u8; SHARD_HEADER_LEN]>,
}

impl fmt::Debug for EncodedPack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedPack")
            .field("data_len", &self.data_len)
            .field("shards", &self.headers.len())
            .field("shard_len", &self.shard_len)
            .finish()
    }
}

impl EncodedPack {
    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.headers.len()
    }

    /// Length of the protected data.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Header of shard `i` (panics if `i >= shard_count()`).
    pub fn header(&self, i: usize) -> &[u8; SHARD_HEADER_LEN] {
        &self.headers[i]
    }

    /// Payload of shard `i` (panics if `i >= shard_count()`).
    pub fn payload(&self, i: usize) -> &[u8] {
        let range = self.payload_range(i);
        if i < self.k || self.parity.is_empty() {
            &self.data[range]
        } else {
            &self.parity[i - self.k][range]
        }
    }

    /// Where the payload of shard `i` lies: in the data buffer for the
    /// data shards (and every replica), in parity buffer `i - k` for the
    /// parity shards (see [`EncodedPack::into_buffers`]). Panics if
    /// `i >= shard_count()`.
    pub fn payload_range(&self, i: usize) -> Range<usize> {
        assert!(i < self.n, "no shard {i}");
        if self.parity.is_empty() && self.k == 1 {
            // none / replicas: every shard carries the whole data.
            self.lead..self.data.len()
        } else if i < self.k {
            let at = self.lead + i * self.shard_len;
            at..at + self.shard_len
        } else {
            let at = self.parity_leads[i - self.k];
            at..at + self.shard_len
        }
    }

    /// Shard `i` as one buffer (header + payload): a copy.
    pub fn shard_bytes(&self, i: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(SHARD_HEADER_LEN + self.shard_len);
        v.extend_from_slice(self.header(i));
        v.extend_from_slice(self.payload(i));
        v
    }

    /// Object length of every shard (header + payload).
    pub fn shard_object_len(&self) -> usize {
        SHARD_HEADER_LEN + self.shard_len
    }

    /// Gives the buffers back, to reuse their memory: the data buffer
    /// (padded) and the parity buffers. Payloads lie in them where
    /// [`EncodedPack::payload_range`] says.
    pub fn into_buffers(self) -> (Vec<u8>, Vec<Vec<u8>>) {
        (self.data, self.parity)
    }
}

/// How [`Codec`]'s encoders place parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parity {
    /// In buffers, from their start.
    Plain,
    /// In buffers, in the data's address phase.
    InPhase,
    /// Not now: [`Codec::parity_shards`] makes it as it is written.
    Later,
}

/// One parity shard of a pack, made stripe by stripe from the pack's data
/// shards as it is written, with its checksum, by a writer that does not
/// hold the whole parity payload in memory
/// ([`Codec::parity_shards`]).
pub struct ParityShard {
    prefix: [u8; 24],
    hasher: ShardHasher,
    /// Coefficients over the data shards.
    row: Vec<u8>,
    shard_len: usize,
    /// Payload bytes made so far.
    made: usize,
}

impl fmt::Debug for ParityShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParityShard")
            .field("index", &self.prefix[8])
            .field("shard_len", &self.shard_len)
            .field("made", &self.made)
            .finish()
    }
}

impl ParityShard {
    /// Payload length (the shard object is [`SHARD_HEADER_LEN`] longer).
    pub fn payload_len(&self) -> usize {
        self.shard_len
    }

    /// Makes the next `out.len()` payload bytes from `data_shards`, the
    /// `k` data shard payloads (each [`ParityShard::payload_len`] long).
    /// Fails on shards of the wrong number or length, or past the end.
    pub fn make(&mut self, data_shards: &[&[u8]], out: &mut [u8]) -> Result<()> {
        let (a, b) = (self.made, self.made + out.len());
        if data_shards.len() != self.row.len()
            || data_shards.iter().any(|d| d.len() != self.shard_len)
            || b > self.shard_len
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "parity made from the wrong data shards, or past the shard's end",
            )
            .with_context("made", a)
            .with_context("asked", out.len())
            .with_context("shard_len", self.shard_len));
        }
        if out.is_empty() {
            return Ok(()); // (the SIMD multiply reads its first byte)
        }
        // A stripe at a time, so that the output stays in cache through
        // its `k` passes and the checksum reads it from there.
        for (at, piece) in (a..b).step_by(STRIPE).zip(out.chunks_mut(STRIPE)) {
            let end = at + piece.len();
            for (i, (&c, d)) in self.row.iter().zip(data_shards).enumerate() {
                if i == 0 {
                    reed_solomon_erasure::galois_8::mul_slice(c, &d[at..end], piece);
                } else {
                    reed_solomon_erasure::galois_8::mul_slice_xor(c, &d[at..end], piece);
                }
            }
            self.hasher.update(piece);
        }
        self.made = b;
        Ok(())
    }

    /// The shard's header, once its whole payload is made.
    pub fn header(&self) -> Result<[u8; SHARD_HEADER_LEN]> {
        if self.made != self.shard_len {
            return Err(
                Error::new(ErrorKind::InvalidInput, "parity shard not wholly made")
                    .with_context("made", self.made)
                    .with_context("shard_len", self.shard_len),
            );
        }
        let mut h = [0u8; SHARD_HEADER_LEN];
        h[..24].copy_from_slice(&self.prefix);
        h[24..].copy_from_slice(&self.hasher.finalize());
        Ok(h)
    }
}

/// Encodes and decodes data under one [`Redundancy`] policy.
pub struct Codec {
    policy: Redundancy,
    rs: Option<ReedSolomon>,
    /// Row `j` holds the coefficients of parity shard `k + j` over the
    /// data shards (Reed-Solomon only).
    parity_rows: Vec<Vec<u8>>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Codec {
    /// A codec for `policy`.
    pub fn new(policy: Redundancy) -> Result<Codec> {
        policy.validate()?;
        let rs = match policy {
            Redundancy::ReedSolomon { data, parity } => Some(
                ReedSolomon::new(data as usize, parity as usize).map_err(|e| {
                    Error::new(ErrorKind::InvalidConfig, "Reed-Solomon rejected the policy")
                        .with_context("policy", policy)
                        .with_context("detail", format!("{e:?}"))
                })?,
            ),
            _ => None,
        };
        // Each parity row's coefficients: the parity of data that is one
        // in shard `i` and zero elsewhere.
        let mut parity_rows = Vec::new();
        if let Some(rs) = &rs {
            let (k, m) = (rs.data_shard_count(), rs.parity_shard_count());
            parity_rows = vec![vec![0u8; k]; m];
            for i in 0..k {
                let unit: Vec<[u8; 1]> = (0..k).map(|d| [u8::from(d == i)]).collect();
                let mut out = vec![[0u8; 1]; m];
                rs.encode_sep(&unit, &mut out).map_err(|e| {
                    Error::new(ErrorKind::InvalidConfig, "Reed-Solomon rejected the policy")
                        .with_context("detail", format!("{e:?}"))
                })?;
                for (row, o) in parity_rows.iter_mut().zip(&out) {
                    row[i] = o[0];
                }
            }
        }
        Ok(Codec {
            policy,
            rs,
            parity_rows,
        })
    }

    /// The policy.
    pub fn policy(&self) -> Redundancy {
        self.policy
    }

    /// Payload length of each shard for `data_len` bytes of data.
    pub fn shard_len(&self, data_len: u64) -> usize {
        data_len.div_ceil(self.policy.data_shards() as u64) as usize
    }

    /// Splits `data` into shard objects (header + payload), indexed `0..n`.
    /// Copies every shard into its own buffer; the write path uses
    /// [`Codec::encode_pack`], which does not.
    pub fn encode(&self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        let enc = self.encode_pack(data.to_vec())?;
        Ok((0..enc.shard_count()).map(|i| enc.shard_bytes(i)).collect())
    }

    /// Encodes `data` without copying it: the data shards of `rs(k,m)` are
    /// slices of `data` itself (zero-padded to `k * S`), every replica is
    /// `data`, and only the `m` parity payloads are new memory. Shards are
    /// read back as header + payload with [`EncodedPack::header`] and
    /// [`EncodedPack::payload`].
    pub fn encode_pack(&self, data: Vec<u8>) -> Result<EncodedPack> {
        self.encode_pack_reusing(data, Vec::new())
    }

    /// [`Codec::encode_pack`], writing parity into `spare` buffers (their
    /// memory reused, their contents and lengths ignored: every parity
    /// byte is written) before allocating new ones:
    /// callers that encode many packs hand back what
    /// [`EncodedPack::into_buffers`] returned.
    pub fn encode_pack_reusing(&self, data: Vec<u8>, spare: Vec<Vec<u8>>) -> Result<EncodedPack> {
        self.encode_laid_out(data, 0, spare, Parity::Plain)
    }

    /// [`Codec::encode_pack_reusing`] for the data `data[lead..]`, with
    /// every parity payload placed in its buffer at an address in the same
    /// phase (modulo [`PAYLOAD_PHASE`]) as the data's first byte, found
    /// with [`EncodedPack::payload_range`]. A writer that lays the data
    /// out so its payloads line up with the shard files' blocks (`O_DIRECT`
    /// writes straight from memory) gets parity that lines up too; when the
    /// data's length is a multiple of `k × 512`, so does every data shard.
    /// `InvalidInput` if `lead > data.len()`.
    pub fn encode_pack_in_phase(
        &self,
        data: Vec<u8>,
        lead: usize,
        spare: Vec<Vec<u8>>,
    ) -> Result<EncodedPack> {
        self.encode_laid_out(data, lead, spare, Parity::InPhase)
    }

    /// [`Codec::encode_pack_in_phase`] without the parity shards: the
    /// result holds the data shards (every replica, for `none` and
    /// replicas) and [`EncodedPack::shard_count`] counts only those; the
    /// parity shards of `rs(k,m)` are made stripe by stripe, as they are
    /// written, by [`Codec::parity_shards`] (no parity buffers).
    pub fn encode_data_in_phase(&self, data: Vec<u8>, lead: usize) -> Result<EncodedPack> {
        self.encode_laid_out(data, lead, Vec::new(), Parity::Later)
    }

    /// The parity shards of `data_len` bytes of data, to be made from its
    /// data shards ([`EncodedPack::payload`] of shards `0..k` of
    /// [`Codec::encode_data_in_phase`]'s result). None unless
    /// Reed-Solomon.
    pub fn parity_shards(&self, data_len: u64) -> Vec<ParityShard> {
        let s = self.shard_len(data_len);
        let k = self.policy.data_shards();
        self.parity_rows
            .iter()
            .enumerate()
            .map(|(j, row)| {
                let prefix = header_prefix(self.policy, k + j, s, data_len);
                ParityShard {
                    hasher: ShardHasher::new(&prefix),
                    prefix,
                    row: row.clone(),
                    shard_len: s,
                    made: 0,
                }
            })
            .collect()
    }

    fn encode_laid_out(
        &self,
        mut data: Vec<u8>,
        lead: usize,
        mut spare: Vec<Vec<u8>>,
        how: Parity,
    ) -> Result<EncodedPack> {
        let in_phase = how == Parity::InPhase;
        let n_all = self.policy.total_shards();
        // The shards made here: all of them, or the data shards only.
        let n = if how == Parity::Later && self.rs.is_some() {
            self.policy.data_shards()
        } else {
            n_all
        };
        let k = self.policy.data_shards();
        let Some(data_len) = data.len().checked_sub(lead) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the data starts past the buffer's end",
            )
            .with_context("lead", lead)
            .with_context("len", data.len()));
        };
        let data_len = data_len as u64;
        let s = self.shard_len(data_len);
        // Arithmetic on the address; no pointer is dereferenced.
        let phase = (data.as_ptr() as usize).wrapping_add(lead) % PAYLOAD_PHASE;
        if s > u32::MAX as usize {
            return Err(
                Error::new(ErrorKind::InvalidInput, "data too large for one shard set")
                    .with_context("len", data_len),
            );
        }
        let mut parity: Vec<Vec<u8>> = Vec::new();
        let mut parity_leads: Vec<usize> = Vec::new();
        let mut sums: Vec<[u8; 32]> = Vec::new();
        if let Some(rs) = &self.rs {
            data.resize(lead + k * s, 0);
            let room = if in_phase { s + PAYLOAD_PHASE } else { s };
            for _ in k..n {
                let mut p = spare.pop().unwrap_or_default();
                // Room first: the lead depends on where the buffer lies.
                p.reserve(room.saturating_sub(p.len()));
                let at = if in_phase {
                    (phase + PAYLOAD_PHASE - p.as_ptr() as usize % PAYLOAD_PHASE) % PAYLOAD_PHASE
                } else {
                    0
                };
                // Stale contents are fine: the encoder writes every parity
                // byte. (Zero-filling them was ~1% of a put.)
                if p.len() < at + s {
                    p.resize(at + s, 0);
                } else {
                    p.truncate(at + s);
                }
                parity.push(p);
                parity_leads.push(at);
            }
            // Encode and checksum stripe by stripe, so each hasher reads
            // what the encoder has just touched while it is still in cache.
            // The hash input is the same as one pass over each shard.
            let mut hashers: Vec<ShardHasher> = (0..n)
                .map(|i| ShardHasher::new(&header_prefix(self.policy, i, s, data_len)))
                .collect();
            let mut a = 0;
            while a < s {
                // The first stripe is shorter by the 24-byte prefix, so
                // later updates start on aligned boundaries.
                let b = if a == 0 { STRIPE - 24 } else { a + STRIPE }.min(s);
                let originals: Vec<&[u8]> =
                    data[lead..].chunks_exact(s).map(|d| &d[a..b]).collect();
                let mut out: Vec<&mut [u8]> = parity
                    .iter_mut()
                    .zip(&parity_leads)
                    .map(|(p, &at)| &mut p[at + a..at + b])
                    .collect();
                if !out.is_empty() {
                    rs.encode_sep(&originals, &mut out).map_err(|e| {
                        Error::new(ErrorKind::InvalidInput, "Reed-Solomon encode failed")
                            .with_context("detail", format!("{e:?}"))
                    })?;
                }
                for (h, shard) in hashers
                    .iter_mut()
                    .zip(originals.iter().copied().chain(out.iter().map(|p| &**p)))
                {
                    h.update(shard);
                }
                a = b;
            }
            sums = hashers.iter().map(ShardHasher::finalize).collect();
        }
        let mut enc = EncodedPack {
            data_len,
            shard_len: s,
            k,
            n,
            data,
            lead,
            parity,
            parity_leads,
            headers: Vec::with_capacity(n),
        };
        for i in 0..n {
            let prefix = header_prefix(self.policy, i, s, data_len);
            let sum = match sums.get(i) {
                Some(sum) => *sum,
                None => checksum(&prefix, enc.payload(i)),
            };
            let mut h = [0u8; SHARD_HEADER_LEN];
            h[..24].copy_from_slice(&prefix);
            h[24..].copy_from_slice(&sum);
            enc.headers.push(h);
        }
        Ok(enc)
    }

    /// Rebuilds the data from whatever shards are at hand (`shards[i]` is
    /// shard `i`, `None` if unavailable). Every given shard is verified;
    /// corrupt ones are ignored and reported. Needs `k` good shards.
    pub fn decode(&self, shards: &[Option<&[u8]>]) -> Result<Decoded> {
        let n = self.policy.total_shards();
        if shards.len() != n {
            return Err(
                Error::new(ErrorKind::InvalidInput, "wrong number of shard slots")
                    .with_context("expected", n)
                    .with_context("got", shards.len()),
            );
        }
        let mut good: Vec<Option<ShardInfo>> = vec![None; n];
        let mut corrupt = Vec::new();
        let mut missing = Vec::new();
        for (i, slot) in shards.iter().enumerate() {
            match slot {
                None => missing.push(i),
                Some(bytes) => match verify_shard(bytes) {
                    Ok(info) if info.index == i && info.policy == self.policy => {
                        good[i] = Some(info)
                    }
                    _ => corrupt.push(i),
                },
            }
        }
        // Good shards must agree on the data length; keep the majority view.
        let data_len = majority(good.iter().flatten().map(|g| g.data_len));
        for (i, g) in good.iter_mut().enumerate() {
            if g.is_some_and(|g| Some(g.data_len) != data_len) {
                *g = None;
                corrupt.push(i);
            }
        }
        corrupt.sort_unstable();
        let k = self.policy.data_shards();
        let have = good.iter().flatten().count();
        let Some(data_len) = data_len.filter(|_| have >= k) else {
            return Err(Error::new(
                ErrorKind::Insufficient,
                "not enough good shards to read the data",
            )
            .with_context("policy", self.policy)
            .with_context("needed", k)
            .with_context("good", have)
            .with_context("corrupt", format!("{corrupt:?}"))
            .with_context("missing", format!("{missing:?}")));
        };
        let payload =
            |i: usize| -> &[u8] { shards[i].map(|b| &b[SHARD_HEADER_LEN..]).unwrap_or(&[]) };
        let data = match &self.rs {
            None => {
                let i = good.iter().position(Option::is_some).unwrap_or(0);
                payload(i).to_vec()
            }
            Some(rs) => {
                let s = self.shard_len(data_len);
                let mut data = Vec::with_capacity(k * s);
                if s == 0 {
                    // Empty data: nothing to rebuild.
                } else if good[..k].iter().all(Option::is_some) {
                    for i in 0..k {
                        data.extend_from_slice(payload(i));
                    }
                } else {
                    let mut work: Vec<Option<Vec<u8>>> = (0..n)
                        .map(|i| good[i].map(|_| payload(i).to_vec()))
                        .collect();
                    rs.reconstruct_data(&mut work).map_err(|e| {
                        Error::new(
                            ErrorKind::Insufficient,
                            "Reed-Solomon reconstruction failed",
                        )
                        .with_context("detail", format!("{e:?}"))
                    })?;
                    for w in work.iter().take(k) {
                        data.extend_from_slice(w.as_deref().unwrap_or(&[]));
                    }
                }
                data.truncate(data_len as usize);
                data
            }
        };
        if data.len() as u64 != data_len {
            return Err(Error::new(
                ErrorKind::Integrity,
                "decoded length does not match the shard headers",
            ));
        }
        Ok(Decoded {
            data,
            corrupt,
            missing,
        })
    }

    /// Where the data bytes `range` live in the data shards, for a pack of
    /// `data_len` bytes. For replicas the answer names shard 0; any replica
    /// holds the same bytes at the same offsets.
    pub fn locate(&self, data_len: u64, range: Range<u64>) -> Result<Vec<ShardRange>> {
        if range.start > range.end || range.end > data_len {
            return Err(
                Error::new(ErrorKind::InvalidInput, "range outside the data")
                    .with_context("range", format!("{range:?}"))
                    .with_context("data_len", data_len),
            );
        }
        let s = self.shard_len(data_len) as u64;
        let mut out = Vec::new();
        let mut p = range.start;
        while p < range.end {
            let shard = p / s;
            let end = range.end.min((shard + 1) * s);
            out.push(ShardRange {
                shard: shard as usize,
                range: (p - shard * s) as usize..(end - shard * s) as usize,
            });
            p = end;
        }
        Ok(out)
    }

    /// Rebuilds `range` of shard `target`'s payload from the same payload
    /// range of other shards: `pieces` holds `(index, bytes)` for at least
    /// `k` of them, all of the same length. The result is not checked
    /// against any checksum (see the module docs).
    pub fn reconstruct_range(&self, target: usize, pieces: &[(usize, &[u8])]) -> Result<Vec<u8>> {
        let n = self.policy.total_shards();
        let k = self.policy.data_shards();
        let len = pieces.first().map(|p| p.1.len()).unwrap_or(0);
        if target >= n || pieces.iter().any(|(i, p)| *i >= n || p.len() != len) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "bad shard index or piece lengths differ",
            ));
        }
        if let Some((_, p)) = pieces.iter().find(|(i, _)| *i == target) {
            return Ok(p.to_vec());
        }
        match &self.rs {
            None => pieces.first().map(|(_, p)| p.to_vec()).ok_or_else(|| {
                Error::new(ErrorKind::Insufficient, "no copy of the range is available")
            }),
            Some(rs) => {
                let mut work: Vec<Option<Vec<u8>>> = vec![None; n];
                for (i, p) in pieces {
                    work[*i] = Some(p.to_vec());
                }
                let have = work.iter().flatten().count();
                if have < k {
                    return Err(Error::new(
                        ErrorKind::Insufficient,
                        "not enough shards to rebuild the range",
                    )
                    .with_context("needed", k)
                    .with_context("got", have));
                }
                if target < k {
                    rs.reconstruct_data(&mut work)
                } else {
                    rs.reconstruct(&mut work)
                }
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Insufficient,
                        "Reed-Solomon reconstruction failed",
                    )
                    .with_context("detail", format!("{e:?}"))
                })?;
                work.swap_remove(target).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Insufficient,
                        "reconstruction produced no data for the shard",
                    )
                })
            }
        }
    }
}

fn majority(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, c)) => *c += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.into_iter().max_by_key(|&(_, c)| c).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reused_parity_buffers_encode_like_fresh_ones() {
        let codec = Codec::new("rs(3,2)".parse().unwrap()).unwrap();
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let fresh = codec.encode_pack(data.clone()).unwrap();
        // Spare buffers of the wrong sizes, full of garbage.
        let spare = vec![vec![0xAA; 7], vec![0x55; 1 << 20]];
        let reused = codec.encode_pack_reusing(data, spare).unwrap();
        for i in 0..5 {
            assert_eq!(fresh.shard_bytes(i), reused.shard_bytes(i), "shard {i}");
        }
    }

    #[test]
    fn encoding_in_phase_makes_the_same_shards_with_payloads_lined_up() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        for policy in ["rs(3,2)", "rs(2,1)", "none", "replicas(2)"] {
            let codec = Codec::new(policy.parse().unwrap()).unwrap();
            let plain = codec.encode_pack(data.clone()).unwrap();
            for lead in [0, 1, 56, 4095, 5000] {
                let mut laid_out = vec![0xEE; lead];
                laid_out.extend_from_slice(&data);
                let phase = (laid_out.as_ptr() as usize + lead) % PAYLOAD_PHASE;
                // Spare buffers of the wrong sizes, full of garbage.
                let spare = vec![vec![0xAA; 7], vec![0x55; 1 << 20]];
                let enc = codec.encode_pack_in_phase(laid_out, lead, spare).unwrap();
                assert_eq!(enc.data_len(), data.len() as u64, "{policy} lead {lead}");
                for i in 0..plain.shard_count() {
                    assert_eq!(
                        plain.shard_bytes(i),
                        enc.shard_bytes(i),
                        "{policy} lead {lead} shard {i}"
                    );
                    assert_eq!(enc.payload(i).len(), plain.payload(i).len());
                }
                // Parity payloads start in the phase of the data's first
                // byte, and decode like any others.
                let k = codec.policy().data_shards();
                for i in k..enc.shard_count() {
                    if enc.parity.is_empty() {
                        break;
                    }
                    let at = enc.payload(i).as_ptr() as usize % PAYLOAD_PHASE;
                    assert_eq!(at, phase, "{policy} lead {lead} parity {i}");
                }
                let shards: Vec<Vec<u8>> =
                    (0..enc.shard_count()).map(|i| enc.shard_bytes(i)).collect();
                let mut given: Vec<Option<&[u8]>> = shards.iter().map(|s| Some(&s[..])).collect();
                if given.len() > 1 {
                    given[0] = None;
                }
                assert_eq!(
                    codec.decode(&given).unwrap().data,
                    data,
                    "{policy} lead {lead}"
                );
            }
        }
    }

    #[test]
    fn parity_made_piece_by_piece_is_the_parity_of_the_whole_encode() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 253) as u8).collect();
        for policy in ["rs(3,2)", "rs(2,1)", "rs(4,2)", "rs(1,2)"] {
            let codec = Codec::new(policy.parse().unwrap()).unwrap();
            let whole = codec.encode_pack(data.clone()).unwrap();
            let k = codec.policy().data_shards();
            let lead = 56;
            let mut laid_out = vec![0xEE; lead];
            laid_out.extend_from_slice(&data);
            let enc = codec.encode_data_in_phase(laid_out, lead).unwrap();
            assert_eq!(enc.shard_count(), k, "{policy}: data shards only");
            for i in 0..k {
                assert_eq!(
                    enc.shard_bytes(i),
                    whole.shard_bytes(i),
                    "{policy} shard {i}"
                );
            }
            let data_shards: Vec<&[u8]> = (0..k).map(|i| enc.payload(i)).collect();
            let parity = codec.parity_shards(enc.data_len());
            assert_eq!(parity.len(), whole.shard_count() - k);
            for (j, mut p) in parity.into_iter().enumerate() {
                let s = p.payload_len();
                // Not whole yet: no header.
                assert!(p.header().is_err());
                let mut payload = vec![0u8; s];
                // Pieces of awkward sizes, one of them empty.
                let mut at = 0;
                for step in [1, 0, 4095, 65_537, usize::MAX].into_iter().cycle() {
                    if at == s {
                        break;
                    }
                    let end = at.saturating_add(step).min(s);
                    p.make(&data_shards, &mut payload[at..end]).unwrap();
                    at = end;
                }
                // Past the end, or from the wrong shards: refused.
                assert!(p.make(&data_shards, &mut [0u8; 1]).is_err());
                assert!(p.make(&data_shards[1..], &mut []).is_err());
                let mut shard = p.header().unwrap().to_vec();
                shard.extend_from_slice(&payload);
                assert_eq!(shard, whole.shard_bytes(k + j), "{policy} parity {j}");
            }
        }
        // No parity to make without Reed-Solomon.
        let none = Codec::new("replicas(2)".parse().unwrap()).unwrap();
        assert!(none.parity_shards(1000).is_empty());
        // A lead past the buffer is an error, not a panic.
        let err = none.encode_data_in_phase(vec![0; 10], 11).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn striped_encoding_checksums_each_whole_shard() {
        // Lengths around the stripe size and its shortened first stripe.
        let codec = Codec::new("rs(4,2)".parse().unwrap()).unwrap();
        for len in [
            0,
            1,
            1000,
            4 * (STRIPE - 24),
            4 * (STRIPE - 24) + 4,
            4 * 3 * STRIPE + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let enc = codec.encode_pack(data.clone()).unwrap();
            let shards: Vec<Vec<u8>> = (0..6).map(|i| enc.shard_bytes(i)).collect();
            for (i, shard) in shards.iter().enumerate() {
                // CRC-64/NVME of the prefix and the payload in one pass.
                let mut whole = shard[..24].to_vec();
                whole.extend_from_slice(&shard[SHARD_HEADER_LEN..]);
                let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &whole);
                assert_eq!(shard[4], 2, "version");
                assert_eq!(&shard[24..32], &crc.to_le_bytes(), "len {len} shard {i}");
                assert_eq!(
                    &shard[32..SHARD_HEADER_LEN],
                    &[0u8; 24],
                    "len {len} shard {i}"
                );
            }
            // Parity computed by stripes decodes like parity of whole shards.
            let mut slots: Vec<Option<&[u8]>> = shards.iter().map(|s| Some(&s[..])).collect();
            slots[0] = None;
            slots[2] = None;
            assert_eq!(codec.decode(&slots).unwrap().data, data, "len {len}");
        }
    }

    /// `shard` rewritten as shard format version 1 (BLAKE3 checksum), as
    /// builds before version 2 wrote it.
    fn as_version_1(shard: &[u8]) -> Vec<u8> {
        let mut v1 = shard.to_vec();
        v1[4] = 1;
        let mut h = blake3::Hasher::new();
        h.update(&v1[..24]);
        h.update(&v1[SHARD_HEADER_LEN..]);
        v1[24..SHARD_HEADER_LEN].copy_from_slice(h.finalize().as_bytes());
        v1
    }

    #[test]
    fn version_1_shards_still_verify_and_decode_and_damage_is_found_in_both() {
        let codec = Codec::new("rs(3,2)".parse().unwrap()).unwrap();
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 31 % 253) as u8).collect();
        let v2: Vec<Vec<u8>> = codec.encode(&data).unwrap();
        let v1: Vec<Vec<u8>> = v2.iter().map(|s| as_version_1(s)).collect();
        for (i, s) in v1.iter().enumerate() {
            let info = verify_shard(s).unwrap();
            assert_eq!((info.version, info.index), (1, i));
            assert_eq!(verify_shard(&v2[i]).unwrap().version, 2);
        }
        // A pack whose shards are of both versions (one rebuilt by a newer
        // build), two of them missing, decodes.
        let slots: Vec<Option<&[u8]>> = vec![None, Some(&v1[1]), Some(&v2[2]), None, Some(&v1[4])];
        assert_eq!(codec.decode(&slots).unwrap().data, data);
        // A flipped payload bit or header byte fails either version's check.
        for shard in [&v1[1], &v2[1]] {
            for at in [
                5,
                13,
                SHARD_HEADER_LEN,
                SHARD_HEADER_LEN + 40_000,
                shard.len() - 1,
            ] {
                let mut bad = shard.clone();
                bad[at] ^= 0x04;
                assert!(
                    verify_shard(&bad).is_err(),
                    "version {} byte {at}",
                    shard[4]
                );
            }
        }
        // Version 2 keeps the checksum field's last 24 bytes zero.
        let mut bad = v2[0].clone();
        bad[40] = 1;
        assert_eq!(verify_shard(&bad).unwrap_err().kind(), ErrorKind::Integrity);
        // A version this build does not know is refused as such.
        let mut future = v2[0].clone();
        future[4] = 3;
        assert_eq!(
            verify_shard(&future).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        // Corrupt v1 shards are reported and rebuilt around.
        let mut rotten = v1[0].clone();
        rotten[SHARD_HEADER_LEN + 7] ^= 1;
        let slots: Vec<Option<&[u8]>> = vec![
            Some(&rotten),
            Some(&v1[1]),
            None,
            Some(&v1[3]),
            Some(&v1[4]),
        ];
        let d = codec.decode(&slots).unwrap();
        assert_eq!((d.data, d.corrupt, d.missing), (data, vec![0], vec![2]));
    }

    #[test]
    fn parse_and_print() {
        for (s, r) in [
            ("none", Redundancy::None),
            ("replicas(3)", Redundancy::Replicas(3)),
            ("rs(4,2)", Redundancy::ReedSolomon { data: 4, parity: 2 }),
            (
                " RS( 10 , 4 ) ",
                Redundancy::ReedSolomon {
                    data: 10,
                    parity: 4,
                },
            ),
        ] {
            let parsed: Redundancy = s.parse().unwrap();
            assert_eq!(parsed, r);
            assert_eq!(parsed.to_string().parse::<Redundancy>().unwrap(), r);
        }
        for bad in [
            "",
            "rs(4)",
            "rs(0,2)",
            "rs(4,0)",
            "rs(65,2)",
            "replicas(0)",
            "raid1(3)",
            "rs(4,2",
            "rs(4,-1)",
            "rs(300,1)",
        ] {
            let e = bad.parse::<Redundancy>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad}");
        }
        assert_eq!(
            Redundancy::ReedSolomon { data: 4, parity: 2 }.overhead(),
            1.5
        );
    }

    fn policies() -> impl Strategy<Value = Redundancy> {
        prop_oneof![
            Just(Redundancy::None),
            (1u8..5).prop_map(Redundancy::Replicas),
            (1u8..8, 1u8..5).prop_map(|(data, parity)| Redundancy::ReedSolomon { data, parity }),
        ]
    }

    proptest! {
        #[test]
        fn losing_any_m_shards_still_decodes(
            policy in policies(),
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            seed in any::<u64>(),
        ) {
            let codec = Codec::new(policy).unwrap();
            let shards = codec.encode(&data).unwrap();
            prop_assert_eq!(shards.len(), policy.total_shards());
            // Damage a random set of exactly m shards: even positions in the
            // shuffled order are corrupted (one byte flipped), odd ones lost.
            let n = shards.len();
            let m = policy.tolerated_losses();
            let mut order: Vec<usize> = (0..n).collect();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let lost = &order[..m];
            let mut damaged = shards.clone();
            let mut removed = vec![false; n];
            for (j, &i) in lost.iter().enumerate() {
                if j % 2 == 0 {
                    let pos = (x as usize) % damaged[i].len();
                    damaged[i][pos] ^= 0x40;
                } else {
                    removed[i] = true;
                }
            }
            let slots: Vec<Option<&[u8]>> = damaged
                .iter()
                .zip(&removed)
                .map(|(s, &r)| (!r).then_some(&s[..]))
                .collect();
            let decoded = codec.decode(&slots).unwrap();
            prop_assert_eq!(&decoded.data, &data);
            let mut bad: Vec<usize> = decoded.corrupt.iter().chain(&decoded.missing).copied().collect();
            bad.sort_unstable();
            let mut expect = lost.to_vec();
            expect.sort_unstable();
            prop_assert_eq!(bad, expect);
        }

        #[test]
        fn losing_m_plus_one_is_a_clear_error(
            data in proptest::collection::vec(any::<u8>(), 1..2000),
            k in 1u8..6, m in 1u8..4,
        ) {
            let policy = Redundancy::ReedSolomon { data: k, parity: m };
            let codec = Codec::new(policy).unwrap();
            let shards = codec.encode(&data).unwrap();
            let slots: Vec<Option<&[u8]>> = shards.iter().enumerate()
                .map(|(i, s)| (i > m as usize).then_some(&s[..])).collect();
            let e = codec.decode(&slots).unwrap_err();
            prop_assert_eq!(e.kind(), ErrorKind::Insufficient);
        }

        #[test]
        fn every_corrupted_byte_is_detected(
            policy in policies(),
            data in proptest::collection::vec(any::<u8>(), 0..600),
            pos in any::<prop::sample::Index>(),
            which in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let codec = Codec::new(policy).unwrap();
            let mut shards = codec.encode(&data).unwrap();
            let w = which.index(shards.len());
            let p = pos.index(shards[w].len());
            shards[w][p] ^= flip;
            prop_assert!(verify_shard(&shards[w]).is_err());
            for (i, s) in shards.iter().enumerate() {
                if i != w {
                    prop_assert_eq!(verify_shard(s).unwrap().index, i);
                }
            }
        }

        #[test]
        fn ranges_locate_and_reconstruct(
            k in 1u8..7, m in 1u8..4,
            data in proptest::collection::vec(any::<u8>(), 1..4000),
            a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(),
            skip in any::<prop::sample::Index>(),
        ) {
            let policy = Redundancy::ReedSolomon { data: k, parity: m };
            let codec = Codec::new(policy).unwrap();
            let shards = codec.encode(&data).unwrap();
            let (lo, hi) = { let x = a.index(data.len()); let y = b.index(data.len()); (x.min(y), x.max(y) + 1) };
            let parts = codec.locate(data.len() as u64, lo as u64..hi as u64).unwrap();
            let mut direct = Vec::new();
            let mut rebuilt = Vec::new();
            for part in &parts {
                let at = |i: usize| &shards[i][SHARD_HEADER_LEN + part.range.start..SHARD_HEADER_LEN + part.range.end];
                direct.extend_from_slice(at(part.shard));
                // Rebuild the same range without the shard that holds it,
                // and without up to m-1 other shards.
                let n = policy.total_shards();
                let mut others: Vec<usize> = (0..n).filter(|&i| i != part.shard).collect();
                let drop = skip.index(others.len());
                if m > 1 { others.remove(drop); }
                let pieces: Vec<(usize, &[u8])> = others.iter().map(|&i| (i, at(i))).collect();
                rebuilt.extend(codec.reconstruct_range(part.shard, &pieces).unwrap());
            }
            prop_assert_eq!(&direct[..], &data[lo..hi]);
            prop_assert_eq!(&rebuilt[..], &data[lo..hi]);
        }
    }

    #[test]
    fn header_parse_agrees_with_verify() {
        let codec = Codec::new("rs(4,2)".parse().unwrap()).unwrap();
        let shards = codec.encode(&[7u8; 1000]).unwrap();
        for s in &shards {
            assert_eq!(
                parse_shard_header(&s[..SHARD_HEADER_LEN]).unwrap(),
                verify_shard(s).unwrap()
            );
        }
        assert!(parse_shard_header(&shards[0][..10]).is_err());
    }

    #[test]
    fn replicas_reconstruct_from_any_copy() {
        let codec = Codec::new(Redundancy::Replicas(3)).unwrap();
        let data = b"hello replicas".to_vec();
        let shards = codec.encode(&data).unwrap();
        let parts = codec.locate(data.len() as u64, 2..9).unwrap();
        assert_eq!(
            parts,
            vec![ShardRange {
                shard: 0,
                range: 2..9
            }]
        );
        let piece = &shards[2][SHARD_HEADER_LEN + 2..SHARD_HEADER_LEN + 9];
        assert_eq!(
            codec.reconstruct_range(0, &[(2, piece)]).unwrap(),
            &data[2..9]
        );
        let d = codec.decode(&[None, None, Some(&shards[2])]).unwrap();
        assert_eq!(d.data, data);
        assert_eq!(d.missing, vec![0, 1]);
    }

    #[test]
    fn a_shard_from_another_position_counts_as_corrupt() {
        let codec = Codec::new("rs(2,1)".parse().unwrap()).unwrap();
        let shards = codec.encode(b"abcdefgh").unwrap();
        let d = codec
            .decode(&[Some(&shards[1]), Some(&shards[1]), Some(&shards[2])])
            .unwrap();
        assert_eq!(d.data, b"abcdefgh");
        assert_eq!(d.corrupt, vec![0]);
    }
}
