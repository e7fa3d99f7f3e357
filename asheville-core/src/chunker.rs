//! Content-defined chunking (FastCDC 2020).
//!
//! Chunk boundaries depend on the content, not on offsets, so inserting a
//! byte into a file changes only the chunks around the insertion and the
//! rest deduplicate. Two entry points give identical boundaries:
//! [`chunk_slice`] over a buffer and [`StreamChunker`] over any
//! [`std::io::Read`] with memory bounded by the maximum chunk size.
//!
//! [`Cutter`] is our own scan. It finds exactly the boundaries of the
//! `fastcdc` crate's `v2020` chunker (normalization level 1, the crate's
//! gear table and masks), about 2.4 times as fast on one core: the gear
//! hash at a position depends only on the 64 bytes that end there, so four
//! distant stretches of a chunk are hashed at once (four independent
//! dependency chains where a serial scan has one), and a stretch with a
//! candidate is rescanned serially so the first cut is the one found.
//! `StreamChunker` still uses the crate (it is not on the hot path).

use std::io::Read;
use std::ops::Range;

use crate::error::{Error, ErrorKind, Result};

/// Chunk size bounds in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    /// No chunk is smaller than this, except the last one of a stream.
    pub min_size: u32,
    /// The average chunk size the cut-point condition aims for.
    pub avg_size: u32,
    /// No chunk is larger than this.
    pub max_size: u32,
}

impl Default for ChunkerConfig {
    /// min 256 KiB, avg 1 MiB, max 4 MiB.
    fn default() -> Self {
        ChunkerConfig {
            min_size: 256 * 1024,
            avg_size: 1024 * 1024,
            max_size: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerConfig {
    /// Bounds of `fastcdc::v2020` (it asserts on values outside them; we
    /// return an error instead).
    const MIN_RANGE: (u32, u32) = (
        fastcdc::v2020::MINIMUM_MIN as u32,
        fastcdc::v2020::MINIMUM_MAX as u32,
    );
    const AVG_RANGE: (u32, u32) = (
        fastcdc::v2020::AVERAGE_MIN as u32,
        fastcdc::v2020::AVERAGE_MAX as u32,
    );
    const MAX_RANGE: (u32, u32) = (
        fastcdc::v2020::MAXIMUM_MIN as u32,
        fastcdc::v2020::MAXIMUM_MAX as u32,
    );

    /// A validated configuration.
    pub fn new(min_size: u32, avg_size: u32, max_size: u32) -> Result<Self> {
        let c = ChunkerConfig {
            min_size,
            avg_size,
            max_size,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks `min <= avg <= max` and each within FastCDC's bounds.
    pub fn validate(&self) -> Result<()> {
        let err = |msg: String| {
            Error::new(ErrorKind::InvalidConfig, msg)
                .with_context("min_size", self.min_size)
                .with_context("avg_size", self.avg_size)
                .with_context("max_size", self.max_size)
        };
        let check = |name: &str, v: u32, (lo, hi): (u32, u32)| {
            if v < lo || v > hi {
                Err(err(format!(
                    "chunker {name} must be between {lo} and {hi} bytes"
                )))
            } else {
                Ok(())
            }
        };
        check("min_size", self.min_size, Self::MIN_RANGE)?;
        check("avg_size", self.avg_size, Self::AVG_RANGE)?;
        check("max_size", self.max_size, Self::MAX_RANGE)?;
        if [self.min_size, self.avg_size, self.max_size]
            .iter()
            .any(|v| !v.is_multiple_of(2))
        {
            return Err(err("chunker sizes must be even".into()));
        }
        if !(self.min_size < self.avg_size && self.avg_size < self.max_size) {
            return Err(err(
                "chunker sizes must satisfy min_size < avg_size < max_size".into(),
            ));
        }
        Ok(())
    }
}

/// The chunks of `data`, as byte ranges that cover it in order.
///
/// `config` must be valid ([`ChunkerConfig::validate`]); an invalid one is
/// an error rather than a panic.
pub fn chunk_slice(config: &ChunkerConfig, data: &[u8]) -> Result<Vec<Range<usize>>> {
    let cutter = Cutter::new(config)?;
    let mut out = Vec::with_capacity(data.len() / config.avg_size as usize + 1);
    let mut pos = 0;
    while pos < data.len() {
        let n = cutter.cut(&data[pos..]);
        out.push(pos..pos + n);
        pos += n;
    }
    Ok(out)
}

/// Bytes per lane of [`Cutter`]'s parallel scan; four lanes make a block.
const LANE: usize = 4096;
/// Lanes scanned at once.
const LANES: usize = 4;
/// The gear hash at a position depends on this many bytes ending there.
const WINDOW: usize = 64;

/// Finds FastCDC 2020 cut points: the first chunk of a buffer at a time.
///
/// ```
/// use asheville_core::{ChunkerConfig, Cutter};
/// let cutter = Cutter::new(&ChunkerConfig::default())?;
/// let data = vec![7u8; 10 << 20];
/// // Uniform data has no cut point: the first chunk is max_size long.
/// assert_eq!(cutter.cut(&data), 4 << 20);
/// // Whatever is no longer than min_size is one chunk.
/// assert_eq!(cutter.cut(&data[..1000]), 1000);
/// # Ok::<(), asheville_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Cutter {
    gear: [u64; 256],
    /// `gear` shifted left by one.
    gear_ls: [u64; 256],
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Cutter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cutter")
            .field("min", &self.min)
            .field("avg", &self.avg)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Cutter {
    /// A cutter for a valid `config`.
    pub fn new(config: &ChunkerConfig) -> Result<Self> {
        config.validate()?;
        let (table, _) = fastcdc::v2020::get_gear_with_seed(0);
        let mut gear = [0u64; 256];
        let mut gear_ls = [0u64; 256];
        for ((g, ls), t) in gear.iter_mut().zip(gear_ls.iter_mut()).zip(table.iter()) {
            *g = *t;
            *ls = *t << 1;
        }
        let (mask_s, mask_l) = fastcdc::v2020::select_masks(
            config.avg_size as usize,
            fastcdc::v2020::Normalization::Level1,
        );
        Ok(Cutter {
            gear,
            gear_ls,
            min: config.min_size as usize,
            avg: config.avg_size as usize,
            max: config.max_size as usize,
            mask_s,
            mask_l,
        })
    }

    /// The length of the first chunk of `data` (all of `data` if it has no
    /// cut point before its end or is at most `min_size` long).
    ///
    /// The crate tests bytes in pairs; its rule comes down to: the first
    /// position `p >= min_size` whose gear hash `H_p` (the hash of the bytes
    /// from `min_size` to `p`) has no bit of the mask set ends the chunk
    /// before byte `p`. The strict mask holds below the even part of
    /// `min(avg, len)`, the loose one up to the even part of `min(max, len)`.
    pub fn cut(&self, data: &[u8]) -> usize {
        self.cut_resuming(data, 0)
    }

    /// [`Cutter::cut`] of `data`, knowing that the cut of its first
    /// `checked` bytes found no cut point (returned `checked`): the scan
    /// starts where that one ended instead of at `min_size`.
    ///
    /// A cut point found in a prefix is the cut point of any longer input
    /// (positions are tested in order, each under the mask of its place,
    /// with a hash of the bytes before it); so a stream may cut as soon as
    /// a point is found, and resume an unfinished chunk's scan when more
    /// bytes arrive. The result is always that of [`Cutter::cut`].
    pub fn cut_resuming(&self, data: &[u8], checked: usize) -> usize {
        let len = data.len();
        if len <= self.min {
            return len;
        }
        let end = len.min(self.max);
        let center = if end < self.avg { end } else { self.avg };
        let strict_end = center & !1;
        let loose_end = end & !1;
        // The shorter scan tested every position below the even part of
        // its length, each under the mask it has here too.
        let from = (checked.min(end) & !1).max(self.min);
        if from < strict_end
            && let Some(p) = self.scan(data, from, strict_end, self.mask_s)
        {
            return p;
        }
        let from = from.max(strict_end);
        if from < loose_end
            && let Some(p) = self.scan(data, from, loose_end, self.mask_l)
        {
            return p;
        }
        end
    }

    /// The first position in `from..to` whose hash has no bit of `mask`.
    /// Hashing starts at `min` (with a zero hash), as the crate's does.
    fn scan(&self, data: &[u8], from: usize, to: usize, mask: u64) -> Option<usize> {
        let mut pos = from;
        while pos + LANES * LANE <= to {
            if self.block_has_candidate(data, pos, mask) {
                return self.serial(data, pos, pos + LANES * LANE, mask);
            }
            pos += LANES * LANE;
        }
        self.serial(data, pos, to, mask)
    }

    /// The hash just before `pos` (of at most the [`WINDOW`] bytes before
    /// it, none before `min`).
    #[inline]
    fn warm_up(&self, data: &[u8], pos: usize) -> u64 {
        let start = pos.saturating_sub(WINDOW).max(self.min);
        data[start..pos]
            .iter()
            .fold(0u64, |h, &b| (h << 1).wrapping_add(self.gear[b as usize]))
    }

    /// Serial scan of `from..to`.
    fn serial(&self, data: &[u8], from: usize, to: usize, mask: u64) -> Option<usize> {
        let mut h = self.warm_up(data, from);
        for (i, &b) in data[from..to].iter().enumerate() {
            h = (h << 1).wrapping_add(self.gear[b as usize]);
            if h & mask == 0 {
                return Some(from + i);
            }
        }
        None
    }

    /// Whether any position of the block `pos..pos + LANES * LANE` is a
    /// candidate: four lanes hashed together, two bytes a step.
    ///
    /// Two steps of the hash are `H_{p+1} = (H_{p-1} << 2) + (G[b_p] << 1)
    /// + G[b_{p+1}]`; the intermediate `(H_{p-1} << 2) + (G[b_p] << 1)` is
    /// `H_p << 1`, tested against `mask << 1` (no mask has bit 63, so that
    /// test is `H_p & mask == 0`).
    #[inline]
    fn block_has_candidate(&self, data: &[u8], pos: usize, mask: u64) -> bool {
        let Some(block) = data.get(pos..pos + LANES * LANE) else {
            return true; // not reached: callers pass whole blocks
        };
        let lane = |i: usize| -> Option<&[u8; LANE]> {
            block.get(i * LANE..(i + 1) * LANE)?.try_into().ok()
        };
        // Fixed-size lanes let the compiler drop the bounds checks; a
        // block that cannot be split (not reached) is rescanned serially.
        let (Some(l0), Some(l1), Some(l2), Some(l3)) = (lane(0), lane(1), lane(2), lane(3)) else {
            return true;
        };
        let mut h0 = self.warm_up(data, pos);
        let mut h1 = self.warm_up(data, pos + LANE);
        let mut h2 = self.warm_up(data, pos + 2 * LANE);
        let mut h3 = self.warm_up(data, pos + 3 * LANE);
        let (g, gls) = (&self.gear, &self.gear_ls);
        let mask_ls = mask << 1;
        // Candidates are rare (one in 2^15 positions or fewer), so the
        // branches are predicted; a hit returns at once and the caller
        // rescans the block in order.
        macro_rules! step {
            ($h:ident, $l:ident, $i:expr) => {
                let x = ($h << 2).wrapping_add(gls[$l[$i] as usize]);
                if x & mask_ls == 0 {
                    return true;
                }
                $h = x.wrapping_add(g[$l[$i + 1] as usize]);
                if $h & mask == 0 {
                    return true;
                }
            };
        }
        for i in (0..LANE).step_by(4) {
            step!(h0, l0, i);
            step!(h1, l1, i);
            step!(h2, l2, i);
            step!(h3, l3, i);
            step!(h0, l0, i + 2);
            step!(h1, l1, i + 2);
            step!(h2, l2, i + 2);
            step!(h3, l3, i + 2);
        }
        false
    }
}

/// Chunks any `Read` stream with memory bounded by `max_size`. Yields each
/// chunk's bytes in order; the boundaries are those [`chunk_slice`] finds.
pub struct StreamChunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
    offset: u64,
    failed: bool,
}

impl<R: Read> StreamChunker<R> {
    /// Wraps `reader`.
    pub fn new(config: &ChunkerConfig, reader: R) -> Result<Self> {
        config.validate()?;
        Ok(StreamChunker {
            inner: fastcdc::v2020::StreamCDC::new(
                reader,
                config.min_size as usize,
                config.avg_size as usize,
                config.max_size as usize,
            ),
            offset: 0,
            failed: false,
        })
    }
}

/// One chunk from a [`StreamChunker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChunk {
    /// Offset of the chunk in the stream.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

impl<R: Read> Iterator for StreamChunker<R> {
    type Item = Result<StreamChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        // `StreamCDC` yields the same error again on every call after a
        // failed read; an iterator that never ends would make `collect`
        // grow without bound. We stop after the first error.
        if self.failed {
            return None;
        }
        let next = self.inner.next()?;
        Some(match next {
            Ok(c) => {
                debug_assert_eq!(c.offset, self.offset);
                self.offset += c.length as u64;
                Ok(StreamChunk {
                    offset: c.offset,
                    data: c.data,
                })
            }
            Err(e) => {
                self.failed = true;
                Err(Error::new(ErrorKind::Io, "reading the input stream failed")
                    .with_context("offset", self.offset)
                    .set_source(std::io::Error::other(e.to_string())))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerConfig {
        ChunkerConfig::new(256, 1024, 4096).unwrap()
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(n);
        out
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        for (min, avg, max) in [
            (0, 1024, 4096),
            (256, 1023, 4096),
            (4096, 1024, 8192),
            (256, 1024, 1024),
            (256, 1024, u32::MAX),
        ] {
            let e = ChunkerConfig::new(min, avg, max).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains("chunker"), "{e}");
        }
        ChunkerConfig::default().validate().unwrap();
        let bad = ChunkerConfig {
            min_size: 10,
            avg_size: 5,
            max_size: 1,
        };
        assert!(chunk_slice(&bad, b"abc").is_err());
        assert!(StreamChunker::new(&bad, &b"abc"[..]).is_err());
    }

    #[test]
    fn defaults_give_chunks_near_one_mebibyte() {
        let data = pseudo_random(32 << 20, 1);
        let cfg = ChunkerConfig::default();
        let chunks = chunk_slice(&cfg, &data).unwrap();
        let avg = data.len() / chunks.len();
        assert!((512 << 10..2 << 20).contains(&avg), "avg chunk {avg}");
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= cfg.min_size as usize && c.len() <= cfg.max_size as usize);
        }
    }

    #[test]
    fn an_insert_moves_few_chunks() {
        let data = pseudo_random(1 << 20, 2);
        let cfg = small();
        let before: std::collections::HashSet<&[u8]> = chunk_slice(&cfg, &data)
            .unwrap()
            .into_iter()
            .map(|r| &data[r])
            .collect();
        let mut edited = data.clone();
        edited.insert(500_000, 42);
        let after = chunk_slice(&cfg, &edited).unwrap();
        let changed = after
            .iter()
            .filter(|r| !before.contains(&edited[(*r).clone()]))
            .count();
        assert!(changed <= 3, "{changed} of {} chunks changed", after.len());
    }

    proptest! {
        #[test]
        fn slice_and_stream_agree_and_cover_input(
            len in 0usize..40_000,
            seed in any::<u64>(),
            read_size in 1usize..5000,
        ) {
            let data = pseudo_random(len, seed);
            let cfg = small();
            let ranges = chunk_slice(&cfg, &data).unwrap();
            // Ranges cover the input exactly, in order.
            let mut pos = 0;
            for r in &ranges {
                prop_assert_eq!(r.start, pos);
                prop_assert!(r.len() <= cfg.max_size as usize);
                pos = r.end;
            }
            prop_assert_eq!(pos, data.len());
            // The stream chunker finds the same boundaries whatever the read sizes.
            let reader = ShortReads { data: &data, pos: 0, step: read_size };
            let streamed: Vec<StreamChunk> =
                StreamChunker::new(&cfg, reader).unwrap().collect::<Result<_>>().unwrap();
            prop_assert_eq!(streamed.len(), ranges.len());
            for (s, r) in streamed.iter().zip(&ranges) {
                prop_assert_eq!(s.offset as usize, r.start);
                prop_assert_eq!(&s.data[..], &data[r.clone()]);
            }
        }
    }

    struct ShortReads<'a> {
        data: &'a [u8],
        pos: usize,
        step: usize,
    }

    impl Read for ShortReads<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// The crate's boundaries, the reference ours must match.
    fn crate_chunks(cfg: &ChunkerConfig, data: &[u8]) -> Vec<Range<usize>> {
        fastcdc::v2020::FastCDC::new(
            data,
            cfg.min_size as usize,
            cfg.avg_size as usize,
            cfg.max_size as usize,
        )
        .map(|c| c.offset..c.offset + c.length)
        .collect()
    }

    /// Data with long runs and short periods as well as random stretches:
    /// cut points in odd and even places, chunks cut at max_size, and
    /// regions where no candidate appears for a long time.
    fn mixed(len: usize, seed: u64, kind: u8) -> Vec<u8> {
        let r = pseudo_random(len, seed);
        match kind % 3 {
            0 => r,
            1 => r.iter().map(|b| b & 0x03).collect(),
            _ => (0..len).map(|i| r[i % 97] ^ (i / 50_000) as u8).collect(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn cutter_matches_the_fastcdc_crate(
            len in 0usize..1_500_000,
            seed in any::<u64>(),
            kind in any::<u8>(),
            cfg in prop::sample::select(vec![
                (256u32, 1024u32, 4096u32),
                (2048, 8192, 65536),
                (4096, 16384, 32768),
                (64, 256, 1024),
                (16384, 65536, 262144),
            ]),
        ) {
            let cfg = ChunkerConfig::new(cfg.0, cfg.1, cfg.2).unwrap();
            let data = mixed(len, seed, kind);
            prop_assert_eq!(chunk_slice(&cfg, &data).unwrap(), crate_chunks(&cfg, &data));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_cut_in_a_prefix_is_final_and_an_unfinished_scan_resumes(
            len in 0usize..300_000,
            seed in any::<u64>(),
            kind in any::<u8>(),
            splits in prop::collection::vec(0usize..300_000, 1..6),
        ) {
            let cfg = ChunkerConfig::new(2048, 8192, 65536).unwrap();
            let cutter = Cutter::new(&cfg).unwrap();
            let data = mixed(len, seed, kind);
            let mut pos = 0;
            while pos < data.len() {
                let rest = &data[pos..];
                let whole = cutter.cut(rest);
                for &l in &splits {
                    let l = l % (rest.len() + 1);
                    let n = cutter.cut(&rest[..l]);
                    if n < l {
                        // Found before the prefix's end: the same cut.
                        prop_assert_eq!(n, whole, "prefix {} at {}", l, pos);
                    } else {
                        // Not found: resuming from there gives the whole cut.
                        prop_assert_eq!(cutter.cut_resuming(rest, l), whole, "resume {} at {}", l, pos);
                    }
                }
                pos += whole;
            }
        }
    }

    #[test]
    fn cutter_matches_the_crate_on_the_defaults() {
        let cfg = ChunkerConfig::default();
        for (seed, kind) in [(3, 0), (4, 1), (5, 2)] {
            let data = mixed(24 << 20, seed, kind);
            let ours = chunk_slice(&cfg, &data).unwrap();
            assert!(ours.len() > 4, "{} chunks", ours.len());
            assert_eq!(ours, crate_chunks(&cfg, &data), "kind {kind}");
        }
    }

    #[test]
    fn no_mask_uses_bit_63() {
        // The two-bytes-a-step scan tests `H << 1` against `mask << 1`,
        // which is `H & mask` only if bit 63 of the mask is clear.
        for m in fastcdc::v2020::MASKS {
            assert_eq!(m >> 63, 0, "{m:#x}");
        }
    }

    #[test]
    fn stream_errors_carry_the_offset() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("device gone"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let results: Vec<_> = StreamChunker::new(&small(), Failing(10_000))
            .unwrap()
            .collect();
        // The chunks before the failure, then exactly one error, then the end.
        let errors = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(errors, 1);
        let err = results.last().unwrap().as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }
}
