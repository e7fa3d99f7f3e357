//! A bounded in-memory read cache of decoded packs and chunk plaintexts,
//! so repeated reads do not go back to the backends. Counts hits and misses.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use asheville_core::{ChunkId, PackId};
use bytes::Bytes;
use lru::LruCache;

/// What is cached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// A chunk's plaintext.
    Chunk(String, ChunkId),
    /// A whole decoded pack (filled by degraded reads).
    Pack(PackId),
}

type Lru = LruCache<CacheKey, Bytes>;

/// Hit and miss counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the backends.
    pub misses: u64,
    /// Bytes held now.
    pub bytes: usize,
}

/// The cache. Least recently used entries go first once `capacity` bytes
/// are exceeded; an entry larger than the capacity is not kept.
#[derive(Debug)]
pub struct ReadCache {
    capacity: usize,
    /// Entries, and the bytes they hold.
    inner: Mutex<(Lru, usize)>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ReadCache {
    /// A cache of at most `capacity` bytes (0 disables it).
    pub fn new(capacity: usize) -> Self {
        ReadCache {
            capacity,
            inner: Mutex::new((LruCache::unbounded(), 0)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Looks `key` up, counting a hit or a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Bytes> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let v = g.0.get(key).cloned();
        let counter = if v.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        v
    }

    /// Looks `key` up without counting.
    pub fn peek(&self, key: &CacheKey) -> Option<Bytes> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(key).cloned()
    }

    /// Inserts, evicting as needed.
    pub fn put(&self, key: CacheKey, value: Bytes) {
        if value.len() > self.capacity {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (lru, bytes) = &mut *g;
        *bytes += value.len();
        if let Some(old) = lru.put(key, value) {
            *bytes -= old.len();
        }
        while *bytes > self.capacity {
            match lru.pop_lru() {
                Some((_, v)) => *bytes -= v.len(),
                None => break,
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: g.1,
        }
    }
}
