//! A backend wrapper that injects faults: the test kit for degraded reads,
//! bitrot and crash tests. Wraps any backend.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Backend, DynBackend, ListPage, ObjectInfo};
use crate::error::{Error, ErrorKind, Result};

/// What the wrapper does to calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Pass everything through.
    #[default]
    None,
    /// Every call fails as if the backend were unreachable.
    Offline,
    /// Reads return the data with one byte flipped.
    FlipReads,
    /// Writes fail after this many more succeed.
    FailWritesAfter(u64),
    /// [`Backend::sync`] fails (the objects it was given stay written).
    FailSyncs,
}

/// Wraps a backend; counts calls and injects [`Fault`]s on demand.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: DynBackend,
    fault: Mutex<Fault>,
    reads: AtomicU64,
    writes: AtomicU64,
    unsynced: AtomicU64,
    synced: AtomicU64,
}

impl FaultyBackend {
    /// Wraps `inner` with no fault.
    pub fn new(inner: DynBackend) -> Self {
        FaultyBackend {
            inner,
            fault: Mutex::new(Fault::None),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        }
    }

    /// Sets the fault.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read calls seen (get, get_range, head).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Write calls seen (put, put_unsynced, delete).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Objects stored with [`Backend::put_unsynced`].
    pub fn unsynced_puts(&self) -> u64 {
        self.unsynced.load(Ordering::Relaxed)
    }

    /// Keys made durable by successful [`Backend::sync`] calls.
    pub fn synced_keys(&self) -> u64 {
        self.synced.load(Ordering::Relaxed)
    }

    /// Counts a write and applies [`Fault::Offline`] and
    /// [`Fault::FailWritesAfter`].
    fn write_fault(&self) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.check()?;
        let mut f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        if let Fault::FailWritesAfter(n) = *f {
            if n == 0 {
                return Err(
                    Error::new(ErrorKind::Transient, "write failed (injected fault)")
                        .with_context("backend", self.inner.name()),
                );
            }
            *f = Fault::FailWritesAfter(n - 1);
        }
        Ok(())
    }

    fn offline(&self) -> Error {
        Error::new(ErrorKind::Transient, "backend offline (injected fault)")
            .with_context("backend", self.name())
    }

    fn check(&self) -> Result<()> {
        if self.fault() == Fault::Offline {
            Err(self.offline())
        } else {
            Ok(())
        }
    }

    fn mangle(&self, b: Bytes) -> Bytes {
        if self.fault() == Fault::FlipReads && !b.is_empty() {
            let mut v = b.to_vec();
            let i = v.len() / 2;
            v[i] ^= 0x01;
            Bytes::from(v)
        } else {
            b
        }
    }
}

#[async_trait::async_trait]
impl Backend for FaultyBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn put(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        self.write_fault()?;
        self.inner.put(key, parts).await
    }

    async fn put_unsynced(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        self.write_fault()?;
        self.inner.put_unsynced(key, parts).await?;
        self.unsynced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn makes_while_writing(&self) -> bool {
        self.inner.makes_while_writing()
    }

    async fn put_unsynced_made(&self, key: &str, made: Box<dyn super::MadeObject>) -> Result<()> {
        self.write_fault()?;
        self.inner.put_unsynced_made(key, made).await?;
        self.unsynced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn prepare(&self, prefixes: &[String]) -> Result<()> {
        self.inner.prepare(prefixes).await
    }

    async fn sync(&self, keys: &[String]) -> Result<()> {
        self.check()?;
        if self.fault() == Fault::FailSyncs {
            return Err(
                Error::new(ErrorKind::Transient, "sync failed (injected fault)")
                    .with_context("backend", self.inner.name()),
            );
        }
        self.inner.sync(keys).await?;
        self.synced.fetch_add(keys.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.check()?;
        Ok(self.mangle(self.inner.get(key).await?))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.check()?;
        Ok(self.mangle(self.inner.get_range(key, range).await?))
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.check()?;
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.check()?;
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage> {
        self.check()?;
        self.inner.list(prefix, after, limit).await
    }
}
