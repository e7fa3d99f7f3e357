//! A small bounded pool of large byte buffers for the write path.
//!
//! Every pack needs a pack-sized buffer and `m` parity buffers. Freshly
//! allocated, each is mapped anew and faulted in page by page (glibc maps
//! allocations this large); reused, it costs nothing. The pool holds at
//! most `max_bytes` of idle capacity, so memory stays bounded.

use std::sync::Mutex;

/// Buffers smaller than this are not worth keeping.
const MIN_KEEP: usize = 256 << 10;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct BufPool {
    idle: Mutex<Vec<Vec<u8>>>,
    max_bytes: usize,
}

impl BufPool {
    /// A pool that keeps at most `max_bytes` of idle capacity.
    pub(crate) fn new(max_bytes: usize) -> Self {
        BufPool {
            idle: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// An empty buffer with room for at least `cap` bytes: the smallest
    /// idle one that fits, else a new one.
    pub(crate) fn take(&self, cap: usize) -> Vec<u8> {
        let found = self.idle.lock().ok().and_then(|mut idle| {
            let i = idle
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= cap)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)?;
            Some(idle.swap_remove(i))
        });
        found.unwrap_or_else(|| Vec::with_capacity(cap))
    }

    /// Up to `n` idle buffers, whatever their size (parity for
    /// `Codec::encode_pack_reusing`, which resizes them).
    pub(crate) fn take_any(&self, n: usize) -> Vec<Vec<u8>> {
        match self.idle.lock() {
            Ok(mut idle) => {
                let keep = idle.len().saturating_sub(n);
                idle.split_off(keep)
            }
            Err(_) => Vec::new(),
        }
    }

    /// Gives a buffer back (dropped if small or if the pool is full).
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < MIN_KEEP {
            return;
        }
        buf.clear();
        if let Ok(mut idle) = self.idle.lock() {
            let held: usize = idle.iter().map(Vec::capacity).sum();
            if held + buf.capacity() <= self.max_bytes {
                idle.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_smallest_fit_and_stays_bounded() {
        let pool = BufPool::new(3 << 20);
        let a = Vec::with_capacity(1 << 20);
        let b = Vec::with_capacity(2 << 20);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        pool.give(a);
        pool.give(b);
        pool.give(Vec::with_capacity(1 << 20)); // over the bound: dropped
        let got = pool.take(900 << 10);
        assert_eq!(got.as_ptr(), pa, "the smallest buffer that fits");
        assert!(got.is_empty());
        let got = pool.take(1536 << 10);
        assert_eq!(got.as_ptr(), pb);
        // Nothing left that fits: a new buffer.
        assert!(pool.take(10).capacity() >= 10);
        assert!(pool.take_any(5).is_empty());
        pool.give(Vec::with_capacity(10)); // too small to keep
        assert!(pool.take_any(5).is_empty());
    }
}
