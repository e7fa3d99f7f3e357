//! Backends: where shards live. One small async trait; implementations
//! in submodules; wrappers (fault injection) are backends too.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::Result;

#[cfg(target_os = "linux")]
pub(crate) mod direct;
mod faulty;
mod objstore;
mod remote;

pub use faulty::{Fault, FaultyBackend};
pub use objstore::{BackendKind, ObjectStoreBackend, S3Config};
pub use remote::RemoteBackend;

/// Opens the backend a [`BackendKind`] describes.
pub fn open(name: &str, kind: &BackendKind) -> Result<DynBackend> {
    Ok(match kind {
        BackendKind::Remote { url, token } => Arc::new(RemoteBackend::new(name, url, token)?),
        other => Arc::new(ObjectStoreBackend::open(name, other)?),
    })
}

/// Size and name of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects in key order.
    pub objects: Vec<ObjectInfo>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next: Option<String>,
}

/// An object made as it is written ([`Backend::put_unsynced_made`]): a
/// head of a few bytes that depend on the rest, then a body made in order.
/// The write path streams parity shards this way (their checksum is in
/// their header).
pub trait MadeObject: Send {
    /// Bytes of the head.
    fn head_len(&self) -> usize;
    /// Bytes of the body.
    fn body_len(&self) -> usize;
    /// Makes the next `out.len()` bytes of the body.
    fn make(&mut self, out: &mut [u8]) -> Result<()>;
    /// The head ([`MadeObject::head_len`] bytes), once the body is made.
    fn head(&mut self) -> Result<Vec<u8>>;
}

/// `made` as parts in memory, head then body, made on the blocking pool:
/// what a backend that does not make objects while writing them puts.
pub(crate) async fn made_whole(mut made: Box<dyn MadeObject>) -> Result<Vec<Bytes>> {
    tokio::task::spawn_blocking(move || {
        let mut body = vec![0u8; made.body_len()];
        made.make(&mut body)?;
        let head = made.head()?;
        Ok(vec![Bytes::from(head), Bytes::from(body)])
    })
    .await
    .map_err(|e| {
        crate::error::Error::new(crate::error::ErrorKind::Other, "making an object failed")
            .set_source(e)
    })?
}

/// An object store holding shards. Keys are `/`-separated, ASCII, without
/// leading `/`. Every implementation passes [`crate::conformance`].
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// The configured name (unique in a repository).
    fn name(&self) -> &str;

    /// Stores `parts` (concatenated) at `key`, replacing any object there.
    /// Returns only once the object is durable.
    async fn put(&self, key: &str, parts: Vec<Bytes>) -> Result<()>;

    /// Stores `parts` at `key` like [`Backend::put`], except that the
    /// object need only be durable once [`Backend::sync`] has returned for
    /// its key: a backend may then make many objects durable at once
    /// (a local disk syncs them in one burst instead of waiting on the
    /// device after each). For new keys only: a crash before the sync may
    /// leave an object written this way partly written, so nothing may
    /// depend on it before the sync. Backends whose writes are durable on
    /// return (the default) just put.
    async fn put_unsynced(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        self.put(key, parts).await
    }

    /// Whether [`Backend::put_unsynced_made`] makes an object as it writes
    /// it, holding only small buffers (a local directory written around
    /// the page cache). The default, `false`, makes it whole in memory
    /// first, so a caller that has the bytes in reusable buffers does
    /// better with [`Backend::put_unsynced`].
    fn makes_while_writing(&self) -> bool {
        false
    }

    /// Stores the object `made` makes at `key`, like
    /// [`Backend::put_unsynced`]: its body first, in order, then its head
    /// (bytes that depend on the body, such as a checksum). The default
    /// makes it whole in memory, on the blocking pool, and puts it.
    async fn put_unsynced_made(&self, key: &str, made: Box<dyn MadeObject>) -> Result<()> {
        self.put_unsynced(key, made_whole(made).await?).await
    }

    /// Makes the objects at `keys`, stored with [`Backend::put_unsynced`],
    /// durable. The default does nothing: its puts are durable already.
    async fn sync(&self, keys: &[String]) -> Result<()> {
        let _ = keys;
        Ok(())
    }

    /// Told once, when a repository is created on this backend, the key
    /// prefixes most of its objects will go under (`packs/00` to
    /// `packs/ff`). A local directory makes them now, so that the first
    /// write under each need not make and sync a directory of its own;
    /// the default does nothing (object stores have no directories).
    async fn prepare(&self, prefixes: &[String]) -> Result<()> {
        let _ = prefixes;
        Ok(())
    }

    /// The whole object. `NotFound` if absent.
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// Bytes `range` of the object. `InvalidInput` if the range is empty
    /// or reaches past the end.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Size of the object. `NotFound` if absent.
    async fn head(&self, key: &str) -> Result<ObjectInfo>;

    /// Deletes the object. Deleting an absent object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Objects whose key starts with `prefix`, in key order, strictly after
    /// `after`, at most `limit` of them.
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage>;
}

/// A shared backend.
pub type DynBackend = Arc<dyn Backend>;
