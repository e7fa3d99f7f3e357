//! Content-defined chunking over an `AsyncRead` or a local file, with the
//! same boundaries as `asheville_core::chunk_slice` and memory bounded by
//! twice the maximum chunk size.
//!
//! A FastCDC cut point depends only on the bytes from the chunk's start up
//! to `max_size` after it; so once the buffer holds `max_size` bytes past a
//! chunk's start (or the stream has ended), that chunk is final.

use asheville_core::{ChunkerConfig, Cutter};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// Smallest spare room offered to a read.
const READ_STEP: usize = 64 << 10;

/// Where an [`AsyncChunker`] reads from.
enum Source<R> {
    Async(R),
    /// A local file, read with blocking reads straight into the buffer
    /// (no copies through tokio's file buffer or a `BufReader`).
    File(std::sync::Arc<std::fs::File>),
}

/// Yields chunks of an async stream.
pub struct AsyncChunker<R> {
    source: Source<R>,
    config: ChunkerConfig,
    cutter: Cutter,
    buf: Vec<u8>,
    eof: bool,
    ready: std::collections::VecDeque<Vec<u8>>,
}

impl AsyncChunker<tokio::io::Empty> {
    /// Chunks a local file, read with blocking reads on tokio's blocking
    /// pool straight into the chunker's buffer.
    pub fn from_file(config: ChunkerConfig, file: std::fs::File) -> Result<Self> {
        Self::with_source(config, Source::File(std::sync::Arc::new(file)))
    }
}

impl<R: AsyncRead + Unpin> AsyncChunker<R> {
    /// Wraps `reader`.
    pub fn new(config: ChunkerConfig, reader: R) -> Result<Self> {
        Self::with_source(config, Source::Async(reader))
    }

    fn with_source(config: ChunkerConfig, source: Source<R>) -> Result<Self> {
        let cutter = Cutter::new(&config)?;
        Ok(AsyncChunker {
            source,
            config,
            cutter,
            buf: Vec::new(),
            eof: false,
            ready: Default::default(),
        })
    }

    /// The next chunk, or `None` at the end of the stream.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let max = self.config.max_size as usize;
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Ok(Some(c));
            }
            if self.eof && self.buf.is_empty() {
                return Ok(None);
            }
            // Fill to 2 × max so that each round yields several chunks.
            // The buffer grows with what is read (no zero-filling), so a
            // small file costs memory of its own size, not 2 × max. (A
            // 4 × max window moves the uncut tail less often, saving ~10%
            // of a put's user CPU, but raised peak RSS by ~30 MiB.)
            let window = 2 * max;
            match &mut self.source {
                Source::Async(reader) => {
                    while !self.eof && self.buf.len() < window {
                        if self.buf.capacity() - self.buf.len() < READ_STEP {
                            let want = (self.buf.len().max(READ_STEP))
                                .min(window - self.buf.len())
                                .max(READ_STEP);
                            self.buf.reserve(want);
                        }
                        let n = reader
                            .read_buf(&mut self.buf)
                            .await
                            .map_err(|e| Error::io("reading the input failed", e))?;
                        if n == 0 {
                            self.eof = true;
                        }
                    }
                }
                Source::File(file) if !self.eof && self.buf.len() < window => {
                    let want = window - self.buf.len();
                    let mut buf = std::mem::take(&mut self.buf);
                    let file = file.clone();
                    let (buf, read) = tokio::task::spawn_blocking(move || {
                        use std::io::Read;
                        let r = (&*file).take(want as u64).read_to_end(&mut buf);
                        (buf, r)
                    })
                    .await
                    .map_err(crate::repository::join_err)?;
                    self.buf = buf;
                    let n = read.map_err(|e| Error::io("reading the input failed", e))?;
                    if n < want {
                        self.eof = true;
                    }
                }
                Source::File(_) => {}
            }
            // Cut each chunk once, and only where the cut is final: with
            // `max` bytes after its start (or at the end of the stream).
            let mut consumed = 0;
            while consumed < self.buf.len() && (self.eof || self.buf.len() - consumed >= max) {
                let n = self.cutter.cut(&self.buf[consumed..]);
                self.ready
                    .push_back(self.buf[consumed..consumed + n].to_vec());
                consumed += n;
            }
            self.buf.drain(..consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Serves `data` at most `step` bytes a read.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn async_chunks_are_the_slice_chunks() {
        let cfg = ChunkerConfig::new(4096, 16384, 65536).unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let data: Vec<u8> = (0..700_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // A stretch of zeros forces chunks cut at max_size.
                if (200_000..400_000).contains(&i) {
                    0
                } else {
                    x as u8
                }
            })
            .collect();
        for (len, step) in [
            (0, 7),
            (100, 1),
            (70_000, 999),
            (300_000, 65_536),
            (700_000, 1 << 20),
        ] {
            let want: Vec<&[u8]> = asheville_core::chunk_slice(&cfg, &data[..len])
                .unwrap()
                .into_iter()
                .map(|r| &data[r])
                .collect();
            let reader = Trickle {
                data: data[..len].to_vec(),
                pos: 0,
                step,
            };
            let mut chunker = AsyncChunker::new(cfg, reader).unwrap();
            let mut got = Vec::new();
            while let Some(c) = chunker.next_chunk().await.unwrap() {
                got.push(c);
            }
            assert_eq!(got.len(), want.len(), "len {len} step {step}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(&g[..], *w, "len {len} step {step}");
            }
            // The same chunks from a local file.
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            std::fs::write(&p, &data[..len]).unwrap();
            let file = std::fs::File::open(&p).unwrap();
            let mut chunker = AsyncChunker::from_file(cfg, file).unwrap();
            let mut from_file = Vec::new();
            while let Some(c) = chunker.next_chunk().await.unwrap() {
                from_file.push(c);
            }
            assert_eq!(from_file, got, "file of {len} bytes");
        }
    }
}
