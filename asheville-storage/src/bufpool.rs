//! Small bounded pools of large byte buffers for the write path.
//!
//! Every pack needs a pack-sized buffer and `m` parity buffers. Freshly
//! allocated, each is mapped anew and faulted in page by page (glibc maps
//! allocations this large); reused, it costs nothing. Packs differ in size
//! by up to a chunk, so a pool hands out buffers of one capacity (its
//! `floor`, raised for the rare larger request): any idle buffer then fits
//! the next pack. Data and parity buffers live in separate pools, so a
//! parity shard never takes (and shrinks the use of) a pack buffer. A pool
//! holds at most `max_idle` buffers, so memory stays bounded.

use std::sync::Mutex;

use bytes::Bytes;

/// The buffer under `b`, emptied, if no other handle refers to it.
///
/// Emptied as a `BytesMut` first: `Vec::from` moves a `BytesMut`'s bytes to
/// the buffer's start, and `Bytes::clear` would free the buffer instead.
pub(crate) fn reclaim(b: Bytes) -> Option<Vec<u8>> {
    let mut m = b.try_into_mut().ok()?;
    m.clear();
    Some(Vec::from(m))
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct BufPool {
    idle: Mutex<Vec<Vec<u8>>>,
    /// The capacity of every new buffer (at least).
    floor: usize,
    max_idle: usize,
    /// Buffers keep their length (and stale contents) while idle.
    keep: bool,
}

impl BufPool {
    /// A pool of buffers of at least `floor` bytes that keeps at most
    /// `max_idle` of them.
    pub(crate) fn new(floor: usize, max_idle: usize) -> Self {
        BufPool {
            idle: Mutex::new(Vec::new()),
            floor,
            max_idle,
            keep: false,
        }
    }

    /// A pool like [`BufPool::new`] whose buffers come back with the
    /// length and the stale contents they were given back with, for users
    /// that overwrite every byte they use (parity, which the encoder
    /// writes whole): they need not zero-fill a reused buffer again.
    pub(crate) fn keeping_contents(floor: usize, max_idle: usize) -> Self {
        BufPool {
            keep: true,
            ..BufPool::new(floor, max_idle)
        }
    }

    /// A buffer with room for at least `cap` bytes: an idle one that fits,
    /// else a new one of `max(cap, floor)`. Empty, unless the pool keeps
    /// contents ([`BufPool::keeping_contents`]).
    pub(crate) fn take(&self, cap: usize) -> Vec<u8> {
        let found = self.idle.lock().ok().and_then(|mut idle| {
            let i = idle.iter().position(|b| b.capacity() >= cap)?;
            Some(idle.swap_remove(i))
        });
        found.unwrap_or_else(|| Vec::with_capacity(cap.max(self.floor)))
    }

    /// Gives the buffer under `b` back once no other handle refers to it
    /// (see [`BufPool::give`]).
    pub(crate) fn give_bytes(&self, b: Bytes) {
        let buf = if self.keep {
            // A whole buffer (no offset): `Vec::from` moves nothing.
            b.try_into_mut().ok().map(Vec::from)
        } else {
            reclaim(b)
        };
        if let Some(buf) = buf {
            self.give(buf);
        }
    }

    /// Gives a buffer back (dropped if smaller than the floor or if the
    /// pool is full).
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < self.floor {
            return;
        }
        if !self.keep {
            buf.clear();
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_one_size_and_stays_bounded() {
        let pool = BufPool::new(1 << 20, 2);
        let a = pool.take(900 << 10);
        assert_eq!(a.capacity(), 1 << 20, "raised to the floor");
        let big = pool.take(3 << 20);
        assert!(big.capacity() >= 3 << 20, "a larger request is served");
        let (pa, pbig) = (a.as_ptr(), big.as_ptr());
        pool.give(a);
        pool.give(big);
        pool.give(Vec::with_capacity(1 << 20)); // over the bound: dropped
        pool.give(Vec::with_capacity(10)); // under the floor: dropped
        let got = pool.take(2 << 20);
        assert_eq!(got.as_ptr(), pbig, "only the large one fits");
        assert!(got.is_empty());
        let got = pool.take(1 << 20);
        assert_eq!(got.as_ptr(), pa);
        // Nothing idle: a new buffer.
        assert_eq!(pool.take(10).capacity(), 1 << 20);
    }

    #[test]
    fn a_keeping_pool_hands_buffers_back_as_they_were_given() {
        let pool = BufPool::keeping_contents(1 << 10, 2);
        let mut a = pool.take(1 << 10);
        a.resize(1000, 7);
        let pa = a.as_ptr();
        pool.give_bytes(Bytes::from(a));
        let again = pool.take(1 << 10);
        assert_eq!((again.as_ptr(), again.len()), (pa, 1000));
        assert!(again.iter().all(|&b| b == 7));
        // A plain pool empties what it is given.
        let plain = BufPool::new(1 << 10, 2);
        plain.give_bytes(Bytes::from(again));
        assert!(plain.take(1 << 10).is_empty());
    }
}
