//! Content-defined chunking (FastCDC 2020, from the `fastcdc` crate).
//!
//! Chunk boundaries depend on the content, not on offsets, so inserting a
//! byte into a file changes only the chunks around the insertion and the
//! rest deduplicate. Two entry points give identical boundaries:
//! [`chunk_slice`] over a buffer and [`StreamChunker`] over any
//! [`std::io::Read`] with memory bounded by the maximum chunk size.

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
    config.validate()?;
    Ok(fastcdc::v2020::FastCDC::new(
        data,
        config.min_size as usize,
        config.avg_size as usize,
        config.max_size as usize,
    )
    .map(|c| c.offset..c.offset + c.length)
    .collect())
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
