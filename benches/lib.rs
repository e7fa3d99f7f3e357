//! Shared pieces of the benchmarks: deterministic data and the write
//! pipeline (chunk → id → seal → pack → protect) as the benches run it.

use std::ops::Range;

use asheville_core::{ChunkerConfig, Codec, Cutter, Result, Sealer, TenantKeys};

/// `len` bytes of incompressible pseudo-random data from `seed` (BLAKE3 XOF).
pub fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// `len` bytes of text-like data (compresses about 3–5× with zstd).
pub fn text_data(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "chunk", "backend", "erasure", "parity", "shard", "tenant", "storage", "of", "and",
        "restic", "pack", "sealed", "blob", "key", "write", "read", "path", "a", "to", "is",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// Megabytes per second for `bytes` processed in `secs`.
pub fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// What one pipeline run produced.
#[derive(Debug, Default, Clone, Copy)]
pub struct PipelineStats {
    /// Chunks.
    pub chunks: usize,
    /// Packs.
    pub packs: usize,
    /// Bytes of shards produced (header + payload).
    pub shard_bytes: usize,
}

/// Runs the whole write pipeline over `data` in memory: content-defined
/// chunks, keyed ids, sealed blobs appended to packs of `pack_target`
/// bytes, each pack encoded into shards with checksums. Nothing is written
/// anywhere: this is the CPU cost of ingest.
pub fn pipeline(
    data: &[u8],
    chunker: &ChunkerConfig,
    keys: &TenantKeys,
    sealer: &Sealer,
    codec: &Codec,
    pack_target: usize,
) -> Result<PipelineStats> {
    let mut stats = PipelineStats::default();
    let mut pack = Vec::with_capacity(pack_target + (5 << 20));
    let flush = |pack: &mut Vec<u8>, stats: &mut PipelineStats| -> Result<()> {
        if !pack.is_empty() {
            let enc = codec.encode_pack(std::mem::take(pack))?;
            stats.packs += 1;
            stats.shard_bytes += enc.shard_count() * enc.shard_object_len();
            // The storage layer gets the buffer back once the shards are
            // uploaded; here they are "uploaded" at once.
            let (mut buf, _parity) = enc.into_buffers();
            buf.clear();
            *pack = buf;
        }
        Ok(())
    };
    // Cut, id and seal each chunk in turn, as the storage write path does:
    // the chunk is still in cache when it is hashed and sealed.
    let cutter = Cutter::new(chunker)?;
    let mut pos = 0;
    while pos < data.len() {
        let n = cutter.cut(&data[pos..]);
        let chunk = &data[pos..pos + n];
        pos += n;
        let id = keys.chunk_id(chunk);
        sealer.seal_into(&id, chunk, &mut pack)?;
        stats.chunks += 1;
        if pack.len() >= pack_target {
            flush(&mut pack, &mut stats)?;
        }
    }
    flush(&mut pack, &mut stats)?;
    Ok(stats)
}

/// Splits `len` bytes into `parts` contiguous ranges (the last takes the rest).
pub fn split(len: usize, parts: usize) -> Vec<Range<usize>> {
    let step = len / parts;
    (0..parts)
        .map(|i| i * step..if i + 1 == parts { len } else { (i + 1) * step })
        .collect()
}
