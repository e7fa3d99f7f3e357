//! Content-defined chunking over an `AsyncRead`, a local file or bytes in
//! memory, with the same boundaries as `asheville_core::chunk_slice` and
//! memory bounded by twice the maximum chunk size per input.
//!
//! A FastCDC cut point is the first candidate position after `min_size`
//! (or `max_size`), and whether a position is one depends only on the bytes
//! before it; so a chunk is final as soon as its cut point has been read,
//! or `max_size` bytes, or the end of the stream. A chunk still open at the
//! end of the window is scanned on from where it stopped once more bytes
//! are read ([`Cutter::cut_resuming`]).
//!
//! A local file is read one window ahead: the next window is read and
//! cut on tokio's blocking pool while the caller takes (hashes, looks up,
//! stores) the chunks of the one before.
//!
//! Chunks are [`Bytes`] slices of the read window, not copies: a window
//! lives until its last chunk is sealed, and only the uncut tail of a
//! window (less than one chunk) is copied into the next. A `WindowPool`
//! hands windows whose chunks are all gone to the next read, so the write
//! path does not map and fault in fresh memory for every window.

use std::sync::{Arc, Mutex};

use asheville_core::{ChunkerConfig, Cutter};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// Smallest spare room offered to a read.
const READ_STEP: usize = 64 << 10;

/// Windows a [`WindowPool`] keeps track of at most. Two: a put of the
/// peers set (rs(2,1), ext4) peaked at 127 MiB with 2, 125 with 1 and 132
/// with 3, at the same speed (medians of 5); with none, every window is
/// faulted in afresh and the put took +0.8 s of system time.
const POOL_WINDOWS: usize = 2;

/// Read windows given up by chunkers, reused once no chunk refers to them.
///
/// It holds handles to at most a few windows; a window whose chunks are
/// still waiting to be sealed is skipped, and its memory is freed as usual
/// if the pool lets go of it first.
#[derive(Debug, Default)]
pub(crate) struct WindowPool {
    retired: Mutex<Vec<Bytes>>,
}

impl WindowPool {
    /// An empty buffer with room for `cap` bytes: a retired window that no
    /// chunk refers to any more, else a new one.
    fn take(&self, cap: usize) -> Vec<u8> {
        if let Ok(mut retired) = self.retired.lock() {
            while let Some(i) = retired.iter().position(Bytes::is_unique) {
                if let Some(v) = crate::bufpool::reclaim(retired.swap_remove(i))
                    && v.capacity() >= cap
                {
                    return v;
                }
            }
        }
        Vec::with_capacity(cap)
    }

    /// Hands a window over for reuse once its chunks are gone.
    fn retire(&self, window: Bytes) {
        if let Ok(mut retired) = self.retired.lock()
            && retired.len() < POOL_WINDOWS
        {
            retired.push(window);
        }
    }
}

/// Where an [`AsyncChunker`] reads from.
enum Source<R> {
    Async(R),
    /// A local file, read with blocking reads on tokio's blocking pool
    /// straight into the window (no copies through tokio's file buffer or
    /// a `BufReader`).
    File(Arc<std::fs::File>),
    /// Everything is already in the window.
    Done,
}

/// Yields the chunks of an async stream, a local file or a buffer.
pub struct AsyncChunker<R> {
    source: Source<R>,
    config: ChunkerConfig,
    cutter: Cutter,
    /// Bytes read and not yet cut are `window[pos..]`.
    window: Bytes,
    pos: usize,
    /// Bytes of `window[pos..]` already scanned without finding a cut.
    checked: usize,
    eof: bool,
    ready: std::collections::VecDeque<Bytes>,
    /// Where full-size windows go when this chunker is done with them.
    pool: Option<Arc<WindowPool>>,
    /// A local file's next window, being read and cut on tokio's blocking
    /// pool while the chunks of this one are taken.
    ahead: Option<tokio::task::JoinHandle<std::io::Result<CutWindow>>>,
}

/// A window read from a local file and cut as far as its cuts are final.
struct CutWindow {
    window: Bytes,
    chunks: std::collections::VecDeque<Bytes>,
    pos: usize,
    checked: usize,
    eof: bool,
}

/// Cuts `window[pos..]` where the cut is final: at a cut point found in
/// what is there, at `max` bytes, or at the end of the input (`eof`).
/// Returns where the uncut rest starts and how much of it was scanned.
/// An unfinished chunk's scan resumes after the next read, and only it is
/// carried over to the next window. (Waiting for `max` bytes after a
/// chunk's start carried ~3.5 of every 8 MiB window over, copied, instead
/// of the ~1 MiB of one chunk.)
fn cut_window(
    cutter: &Cutter,
    window: &Bytes,
    mut pos: usize,
    mut checked: usize,
    eof: bool,
    max: usize,
    ready: &mut std::collections::VecDeque<Bytes>,
) -> (usize, usize) {
    let len = window.len();
    while pos < len {
        let here = len - pos;
        let n = cutter.cut_resuming(&window[pos..], checked);
        if !(eof || n < here || n >= max) {
            return (pos, here);
        }
        checked = 0;
        ready.push_back(window.slice(pos..pos + n));
        pos += n;
    }
    (pos, 0)
}

impl AsyncChunker<tokio::io::Empty> {
    /// Chunks a local file, read with blocking reads on tokio's blocking
    /// pool straight into the chunker's window.
    pub fn from_file(config: ChunkerConfig, file: std::fs::File) -> Result<Self> {
        Self::with_source(config, Source::File(Arc::new(file)))
    }

    /// Chunks bytes already in memory; every chunk is a slice of `data`.
    pub fn from_bytes(config: ChunkerConfig, data: Bytes) -> Result<Self> {
        let mut c = Self::with_source(config, Source::Done)?;
        c.window = data;
        c.eof = true;
        Ok(c)
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
            window: Bytes::new(),
            pos: 0,
            checked: 0,
            eof: false,
            ready: Default::default(),
            pool: None,
            ahead: None,
        })
    }

    /// Takes windows from, and gives them back to, `pool`.
    pub(crate) fn pooled(mut self, pool: Arc<WindowPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The next chunk, or `None` at the end of the input.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let max = self.config.max_size as usize;
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Ok(Some(c));
            }
            if self.eof && self.pos == self.window.len() {
                self.retire();
                return Ok(None);
            }
            if let Source::File(file) = &self.source {
                let file = file.clone();
                self.next_file_window(file).await?;
                continue;
            }
            if !self.eof {
                self.fill(2 * max).await?;
            }
            (self.pos, self.checked) = cut_window(
                &self.cutter,
                &self.window,
                self.pos,
                self.checked,
                self.eof,
                max,
                &mut self.ready,
            );
        }
    }

    /// Takes the local file's next window, read and cut on the blocking
    /// pool (started by the call before, or now), and starts reading the
    /// one after it, so that reading and cutting a window overlap with
    /// hashing and storing the chunks of the one before.
    async fn next_file_window(&mut self, file: Arc<std::fs::File>) -> Result<()> {
        let job = match self.ahead.take() {
            Some(job) => job,
            None => self.read_ahead(file.clone()),
        };
        let cut = job
            .await
            .map_err(crate::repository::join_err)?
            .map_err(|e| Error::io("reading the input failed", e))?;
        self.retire();
        self.window = cut.window;
        self.pos = cut.pos;
        self.checked = cut.checked;
        self.eof = cut.eof;
        self.ready = cut.chunks;
        if !self.eof {
            self.ahead = Some(self.read_ahead(file));
        }
        Ok(())
    }

    /// Starts reading the window of `file` after this one (which begins
    /// with this one's uncut tail) on the blocking pool, and cutting it.
    fn read_ahead(
        &self,
        file: Arc<std::fs::File>,
    ) -> tokio::task::JoinHandle<std::io::Result<CutWindow>> {
        let max = self.config.max_size as usize;
        let size = 2 * max;
        // Taken here, not on the blocking thread: a window allocated on
        // whichever blocking thread runs the read lands in that thread's
        // malloc arena (the repo bench's put peaked at 249 MiB that way,
        // against 167-183 before reads ran ahead).
        let mut buf = match &self.pool {
            Some(pool) => pool.take(size),
            None => Vec::with_capacity(size),
        };
        let cutter = self.cutter.clone();
        let tail = self.window.slice(self.pos..);
        let checked = self.checked;
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            buf.extend_from_slice(&tail);
            drop(tail);
            let want = size - buf.len();
            let n = (&*file).take(want as u64).read_to_end(&mut buf)?;
            let eof = n < want;
            let window = Bytes::from(buf);
            let mut chunks = std::collections::VecDeque::new();
            let (pos, checked) = cut_window(&cutter, &window, 0, checked, eof, max, &mut chunks);
            Ok(CutWindow {
                window,
                chunks,
                pos,
                checked,
                eof,
            })
        })
    }

    /// Reads until the window holds `window` bytes or the input ends: a
    /// new window that starts with the uncut tail of the old one.
    ///
    /// An async reader's window grows with what is read (no zero-filling),
    /// so a small input costs memory of its own size, not 2 × max. (A 4 ×
    /// max window moves the uncut tail less often, saving ~10% of a put's
    /// user CPU, but raised peak RSS by ~30 MiB.)
    async fn fill(&mut self, window: usize) -> Result<()> {
        let tail = &self.window[self.pos..];
        let mut buf = Vec::with_capacity(tail.len().max(READ_STEP));
        buf.extend_from_slice(tail);
        match &mut self.source {
            Source::Async(reader) => {
                while !self.eof && buf.len() < window {
                    if buf.capacity() - buf.len() < READ_STEP {
                        let want = (buf.len().max(READ_STEP))
                            .min(window - buf.len())
                            .max(READ_STEP);
                        buf.reserve(want);
                    }
                    let n = reader
                        .read_buf(&mut buf)
                        .await
                        .map_err(|e| Error::io("reading the input failed", e))?;
                    if n == 0 {
                        self.eof = true;
                    }
                }
            }
            // Files are read by `read_ahead`.
            Source::File(_) | Source::Done => self.eof = true,
        }
        self.retire();
        self.window = Bytes::from(buf);
        self.pos = 0;
        Ok(())
    }

    /// Gives the current window to the pool (only file windows, which all
    /// have the same size).
    fn retire(&mut self) {
        let window = std::mem::take(&mut self.window);
        self.pos = 0;
        if let (Source::File(_), Some(pool), false) = (&self.source, &self.pool, window.is_empty())
        {
            pool.retire(window);
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

    /// `len` xorshift bytes from `seed`, zeros over `zeros`.
    fn pseudo_random(len: usize, seed: u64, zeros: std::ops::Range<usize>) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if zeros.contains(&i) { 0 } else { x as u8 }
            })
            .collect()
    }

    #[tokio::test]
    async fn async_chunks_are_the_slice_chunks() {
        let cfg = ChunkerConfig::new(4096, 16384, 65536).unwrap();
        // A stretch of zeros forces chunks cut at max_size.
        let data = pseudo_random(700_000, 0x2545_F491_4F6C_DD1D, 200_000..400_000);
        for (len, step) in [
            (0, 7),
            (100, 1),
            (70_000, 999),
            (300_000, 65_536),
            // The file ends on a window edge (2 × max).
            (4 * 65_536, 4096),
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
            // And from bytes in memory, as slices of them.
            let bytes = Bytes::copy_from_slice(&data[..len]);
            let mut chunker = AsyncChunker::from_bytes(cfg, bytes.clone()).unwrap();
            let mut from_bytes = Vec::new();
            while let Some(c) = chunker.next_chunk().await.unwrap() {
                assert!(
                    bytes.as_ptr_range().contains(&c.as_ptr()),
                    "a slice, not a copy"
                );
                from_bytes.push(c);
            }
            assert_eq!(from_bytes, got, "{len} bytes in memory");
        }
    }

    async fn pooled_chunks(
        cfg: ChunkerConfig,
        p: &std::path::Path,
        pool: &Arc<WindowPool>,
    ) -> Vec<Bytes> {
        let file = std::fs::File::open(p).unwrap();
        let mut chunker = AsyncChunker::from_file(cfg, file)
            .unwrap()
            .pooled(pool.clone());
        let mut out = Vec::new();
        while let Some(c) = chunker.next_chunk().await.unwrap() {
            out.push(c);
        }
        out
    }

    #[tokio::test]
    async fn a_window_is_reused_only_once_no_chunk_points_into_it() {
        let cfg = ChunkerConfig::new(4096, 16384, 65536).unwrap();
        let data = pseudo_random(600_000, 0x9E37_79B9_7F4A_7C15, 0..0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &data).unwrap();
        let pool = Arc::new(WindowPool::default());
        // Every chunk held: no window may be handed out again, so a second
        // pass through the same pool must not overwrite the first's chunks.
        let first = pooled_chunks(cfg, &p, &pool).await;
        let second = pooled_chunks(cfg, &p, &pool).await;
        assert_eq!(first.concat(), data);
        assert_eq!(second, first);
        let retired: Vec<*const u8> = pool
            .retired
            .lock()
            .unwrap()
            .iter()
            .map(|w| w.as_ptr())
            .collect();
        assert!(!retired.is_empty() && retired.len() <= POOL_WINDOWS);
        // Once the chunks are gone, the next read reuses a retired window.
        drop((first, second));
        let third = pooled_chunks(cfg, &p, &pool).await;
        assert_eq!(third.concat(), data);
        assert!(
            retired.contains(&third[0].as_ptr()),
            "the first window of the third pass is a retired one"
        );
    }
}
