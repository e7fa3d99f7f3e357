//! Content-defined chunking over an `AsyncRead`, with the same boundaries
//! as `asheville_core::chunk_slice` and memory bounded by twice the
//! maximum chunk size.
//!
//! A FastCDC cut point depends only on the bytes from the chunk's start up
//! to `max_size` after it; so once the buffer holds `max_size` bytes past a
//! chunk's start (or the stream has ended), that chunk is final.

use asheville_core::{ChunkerConfig, chunk_slice};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// Smallest spare room offered to a read.
const READ_STEP: usize = 64 << 10;

/// Yields chunks of an async stream.
pub struct AsyncChunker<R> {
    reader: R,
    config: ChunkerConfig,
    buf: Vec<u8>,
    eof: bool,
    ready: std::collections::VecDeque<Vec<u8>>,
}

impl<R: AsyncRead + Unpin> AsyncChunker<R> {
    /// Wraps `reader`.
    pub fn new(config: ChunkerConfig, reader: R) -> Result<Self> {
        config.validate()?;
        Ok(AsyncChunker {
            reader,
            config,
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
            // small file costs memory of its own size, not 2 × max.
            while !self.eof && self.buf.len() < 2 * max {
                if self.buf.capacity() - self.buf.len() < READ_STEP {
                    let want = (self.buf.len().max(READ_STEP))
                        .min(2 * max - self.buf.len())
                        .max(READ_STEP);
                    self.buf.reserve(want);
                }
                let n = self
                    .reader
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|e| Error::io("reading the input failed", e))?;
                if n == 0 {
                    self.eof = true;
                }
            }
            let ranges = chunk_slice(&self.config, &self.buf)?;
            let mut consumed = 0;
            for r in ranges {
                if !self.eof && self.buf.len() - r.start < max {
                    break;
                }
                self.ready.push_back(self.buf[r.clone()].to_vec());
                consumed = r.end;
            }
            self.buf.drain(..consumed);
        }
    }
}
