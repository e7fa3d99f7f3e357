//! The `object_store` backend: local directory, memory, S3.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as OsPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{Backend, ListPage, ObjectInfo};
use crate::error::{Error, ErrorKind, Result};

/// S3 or S3-compatible endpoint (path-style requests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`; `None` for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (`us-east-1` if unsure).
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key. Never logged (see `Debug` of the backend).
    pub secret_access_key: String,
    /// Allow plain `http://` endpoints.
    #[serde(default)]
    pub allow_http: bool,
    /// Key prefix inside the bucket.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Retries of transient failures (object_store's retry layer).
    #[serde(default = "default_retries")]
    pub max_retries: usize,
}

fn yes() -> bool {
    true
}

fn default_retries() -> usize {
    5
}

/// What kind of store a backend is.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendKind {
    /// A local directory.
    Local {
        /// Directory (created if missing).
        path: PathBuf,
        /// `fsync` every object and its directory before a write returns
        /// (default `true`): without it an acknowledged write can be lost
        /// to a power cut. Turn off only for scratch data.
        #[serde(default = "yes")]
        fsync: bool,
    },
    /// Process memory (lost on exit; for tests and caches).
    Memory,
    /// S3 or compatible.
    S3(S3Config),
    /// Another Asheville server acting as an array node
    /// ([`super::RemoteBackend`]).
    Remote {
        /// `http://host:port` of the node.
        url: String,
        /// A node token (permission `node.objects`). Never logged.
        token: String,
    },
}

impl std::fmt::Debug for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendKind::Local { path, fsync } => {
                write!(f, "Local({}, fsync={fsync})", path.display())
            }
            BackendKind::Memory => f.write_str("Memory"),
            BackendKind::Remote { url, .. } => write!(f, "Remote({url}, token=<redacted>)"),
            BackendKind::S3(c) => write!(
                f,
                "S3(bucket={}, endpoint={:?}, region={}, key_id={}, secret=<redacted>)",
                c.bucket, c.endpoint, c.region, c.access_key_id
            ),
        }
    }
}

/// A [`Backend`] over any `object_store` store.
pub struct ObjectStoreBackend {
    name: String,
    store: Arc<dyn ObjectStore>,
    prefix: Option<OsPath>,
    /// A local directory's store, for ranged reads of our own.
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    /// Local directories with `fsync` on write around the page cache.
    #[cfg(target_os = "linux")]
    direct: Option<Arc<super::direct::DirectIo>>,
    /// A local directory whose writes are synced.
    fsync: bool,
}

impl std::fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStoreBackend({}: {})", self.name, self.store)
    }
}

impl ObjectStoreBackend {
    /// Wraps an existing store.
    pub fn new(name: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreBackend {
            name: name.into(),
            store,
            prefix: None,
            local: None,
            #[cfg(target_os = "linux")]
            direct: None,
            fsync: false,
        }
    }

    /// The `object_store` store underneath (for readers such as sync
    /// sources that list and stream objects themselves).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The key prefix inside the store (S3 `prefix`), if any.
    pub fn key_prefix(&self) -> Option<&OsPath> {
        self.prefix.as_ref()
    }

    /// Builds the store a [`BackendKind`] describes.
    pub fn open(name: &str, kind: &BackendKind) -> Result<Self> {
        let err = |e: object_store::Error| {
            Error::new(ErrorKind::InvalidInput, "cannot open backend")
                .with_context("backend", name)
                .set_source(e)
        };
        match kind {
            BackendKind::Local { path, fsync } => {
                std::fs::create_dir_all(path).map_err(|e| {
                    Error::io("cannot create backend directory", e)
                        .with_context("backend", name)
                        .with_context("path", path.display())
                })?;
                let store = Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(path)
                        .map_err(err)?
                        .with_fsync(*fsync),
                );
                let mut me = Self::new(name, store.clone());
                me.local = Some(store);
                me.fsync = *fsync;
                #[cfg(target_os = "linux")]
                if *fsync {
                    me.direct = super::direct::DirectIo::for_dir(path).map(Arc::new);
                }
                Ok(me)
            }
            BackendKind::Memory => Ok(Self::new(
                name,
                Arc::new(object_store::memory::InMemory::new()),
            )),
            #[cfg(feature = "s3")]
            BackendKind::S3(c) => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&c.bucket)
                    .with_region(&c.region)
                    .with_access_key_id(&c.access_key_id)
                    .with_secret_access_key(&c.secret_access_key)
                    .with_allow_http(c.allow_http)
                    .with_virtual_hosted_style_request(false)
                    .with_retry(object_store::RetryConfig {
                        max_retries: c.max_retries,
                        ..Default::default()
                    });
                if let Some(ep) = &c.endpoint {
                    b = b.with_endpoint(ep);
                }
                let store = b.build().map_err(err)?;
                let mut me = Self::new(name, Arc::new(store));
                me.prefix = c.prefix.as_deref().map(OsPath::from);
                Ok(me)
            }
            BackendKind::Remote { .. } => Err(Error::new(
                ErrorKind::Unsupported,
                "a remote node is not an object_store store; open it with backend::open",
            )
            .with_context("backend", name)),
            #[cfg(not(feature = "s3"))]
            BackendKind::S3(_) => Err(Error::new(
                ErrorKind::Unsupported,
                "built without the `s3` feature",
            )
            .with_context("backend", name)),
        }
    }

    fn path(&self, key: &str) -> Result<OsPath> {
        let p = OsPath::parse(key).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "invalid object key")
                .with_context("backend", &self.name)
                .with_context("key", key)
                .set_source(e)
        })?;
        Ok(match &self.prefix {
            Some(pre) => pre.parts().chain(p.parts()).collect(),
            None => p,
        })
    }

    /// [`Backend::put`] (`sync`) or [`Backend::put_unsynced`]: only a local
    /// directory written around the page cache defers its syncs; every
    /// other store is durable on return either way.
    async fn write(&self, key: &str, parts: Vec<Bytes>, sync: bool) -> Result<()> {
        let p = self.path(key)?;
        #[cfg(target_os = "linux")]
        if let (Some(fs), Some(writer)) = (&self.local, &self.direct) {
            let dest = fs
                .path_to_filesystem(&p)
                .map_err(|e| self.map_err(key, e))?;
            return writer.clone().put(dest, parts, sync).await.map_err(|e| {
                Error::io("cannot write object", e)
                    .with_context("backend", &self.name)
                    .with_context("key", key)
            });
        }
        let _ = sync;
        let payload: PutPayload = parts.into_iter().collect();
        self.store
            .put(&p, payload)
            .await
            .map_err(|e| self.map_err(key, e))?;
        Ok(())
    }

    /// Where `keys` lie in the local directory `fs`.
    fn local_paths(
        &self,
        fs: &object_store::local::LocalFileSystem,
        keys: &[String],
    ) -> Result<Vec<PathBuf>> {
        keys.iter()
            .map(|key| {
                fs.path_to_filesystem(&self.path(key)?)
                    .map_err(|e| self.map_err(key, e))
            })
            .collect()
    }

    fn strip(&self, p: &OsPath) -> String {
        match &self.prefix {
            Some(pre) => p
                .prefix_match(pre)
                .map(|parts| parts.collect::<OsPath>().to_string())
                .unwrap_or_default(),
            None => p.to_string(),
        }
    }

    fn map_err(&self, key: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let (kind, msg) = match &e {
            E::NotFound { .. } => (ErrorKind::NotFound, "object not found"),
            E::AlreadyExists { .. } => (ErrorKind::AlreadyExists, "object already exists"),
            E::Precondition { .. } | E::NotModified { .. } => {
                (ErrorKind::Precondition, "precondition failed")
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                (ErrorKind::Permission, "permission denied")
            }
            E::NotSupported { .. } | E::NotImplemented { .. } => {
                (ErrorKind::Unsupported, "not supported by this backend")
            }
            E::InvalidPath { .. } => (ErrorKind::InvalidInput, "invalid object key"),
            // object_store has already retried what it considers transient
            // (timeouts, 5xx, connection errors) before giving us `Generic`.
            E::Generic { .. } => (ErrorKind::Transient, "backend request failed"),
            _ => (ErrorKind::Other, "backend error"),
        };
        Error::new(kind, msg)
            .with_context("backend", &self.name)
            .with_context("key", key)
            .set_source(e)
    }
}

/// Makes the directories `dirs` (and their parents); if `sync`, then
/// syncs each directory that got a new entry (once, after all are made),
/// so that the new names are durable. A new directory's own inode is
/// synced later, with the first objects written into it (their directory
/// is synced with them: [`super::direct::sync_blocking`], or
/// `object_store`'s put).
pub(super) fn make_dirs(dirs: &[std::path::PathBuf], sync: bool) -> std::io::Result<()> {
    let mut grown = std::collections::BTreeSet::new();
    for d in dirs {
        // The directories to be made, from `d` up to the first that is.
        let mut new = Vec::new();
        let mut at = d.as_path();
        while !at.is_dir() {
            new.push(at);
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        std::fs::create_dir_all(d)?;
        grown.extend(
            new.iter()
                .filter_map(|n| n.parent())
                .map(std::path::Path::to_path_buf),
        );
    }
    if sync {
        for p in &grown {
            std::fs::File::open(p)?.sync_all()?;
        }
    }
    Ok(())
}

/// Bytes `range` of the file at `path` (fewer if the file is shorter),
/// read into memory that is not zeroed first: object_store's local store
/// zero-fills each buffer before reading into it, which was ~3.5% of a
/// restore's CPU.
///
/// With `drop_behind`, the pages just read are dropped from the page cache
/// (`POSIX_FADV_DONTNEED`; pages read ahead past the range stay for the
/// next read): how a backend that writes around the page cache reads where
/// the filesystem refuses `O_DIRECT` reads ([`super::direct::read_range`],
/// what it reads with otherwise). A shard is read once per restore and
/// checked by its own checksum, so keeping it cached only pushes out what
/// the machine was caching, and each new page the cache takes has to be
/// found, and on this project's test VM (which hands idle memory back to
/// the host) faulted in again. Reused pages are not: a cold restore of the
/// peers set in the peers sequence (dataset read, caches dropped), 3
/// alternating rounds, took 2.34-3.02 s keeping the pages, 1.52-1.90 s
/// dropping them (sys CPU 3.2-4.7 s against 1.7-2.0 s).
fn read_range(
    path: &std::path::Path,
    range: Range<u64>,
    drop_behind: bool,
) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    let len = file
        .metadata()?
        .len()
        .saturating_sub(range.start)
        .min(range.end - range.start);
    file.seek(std::io::SeekFrom::Start(range.start))?;
    let mut buf = Vec::with_capacity(usize::try_from(len).map_err(std::io::Error::other)?);
    (&mut file).take(len).read_to_end(&mut buf)?;
    if drop_behind {
        crate::dropbehind::dont_need(&file, range.start, len);
    }
    Ok(buf.into())
}

#[async_trait::async_trait]
impl Backend for ObjectStoreBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        self.write(key, parts, true).await
    }

    async fn put_unsynced(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        self.write(key, parts, false).await
    }

    fn makes_while_writing(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.local.is_some() && self.direct.is_some();
        #[cfg(not(target_os = "linux"))]
        return false;
    }

    async fn put_unsynced_made(&self, key: &str, made: Box<dyn super::MadeObject>) -> Result<()> {
        #[cfg(target_os = "linux")]
        if let (Some(fs), Some(writer)) = (&self.local, &self.direct) {
            let dest = fs
                .path_to_filesystem(&self.path(key)?)
                .map_err(|e| self.map_err(key, e))?;
            return writer.clone().put_made(dest, made).await.map_err(|e| {
                Error::io("cannot write object", e)
                    .with_context("backend", &self.name)
                    .with_context("key", key)
            });
        }
        self.write(key, super::made_whole(made).await?, false).await
    }

    async fn sync(&self, keys: &[String]) -> Result<()> {
        #[cfg(target_os = "linux")]
        if let (Some(fs), Some(_)) = (&self.local, &self.direct) {
            let paths = self.local_paths(fs, keys)?;
            return tokio::task::spawn_blocking(move || super::direct::sync_blocking(&paths))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|e| {
                    Error::io("cannot sync objects", e).with_context("backend", &self.name)
                });
        }
        let _ = keys;
        Ok(())
    }

    async fn prepare(&self, prefixes: &[String]) -> Result<()> {
        let Some(fs) = &self.local else {
            return Ok(());
        };
        let dirs = self.local_paths(fs, prefixes)?;
        let sync = self.fsync;
        tokio::task::spawn_blocking(move || make_dirs(&dirs, sync))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| {
                Error::io("cannot make the backend's directories", e)
                    .with_context("backend", &self.name)
            })
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let p = self.path(key)?;
        let r = self.store.get(&p).await.map_err(|e| self.map_err(key, e))?;
        r.bytes().await.map_err(|e| self.map_err(key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.start >= range.end {
            return Err(
                Error::new(ErrorKind::InvalidInput, "empty or inverted range")
                    .with_context("backend", &self.name)
                    .with_context("range", format!("{range:?}")),
            );
        }
        let p = self.path(key)?;
        let b = match &self.local {
            Some(fs) => {
                let file = fs
                    .path_to_filesystem(&p)
                    .map_err(|e| self.map_err(key, e))?;
                let r = range.clone();
                #[cfg(target_os = "linux")]
                let direct = self.direct.clone();
                #[cfg(not(target_os = "linux"))]
                let direct: Option<Arc<()>> = None;
                tokio::task::spawn_blocking(move || {
                    #[cfg(target_os = "linux")]
                    if let Some(d) = &direct
                        && let Some(b) = d.read(&file, r.clone())?
                    {
                        return Ok(b);
                    }
                    read_range(&file, r, direct.is_some())
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|e| {
                    Error::io("cannot read object", e)
                        .with_context("backend", &self.name)
                        .with_context("key", key)
                })?
            }
            None => self
                .store
                .get_range(&p, range.clone())
                .await
                .map_err(|e| match e {
                    object_store::Error::NotFound { .. } => self.map_err(key, e),
                    e => {
                        let mut err = self.map_err(key, e);
                        if err.kind() != ErrorKind::Transient {
                            err = Error::new(ErrorKind::InvalidInput, "range outside the object")
                                .with_context("backend", &self.name)
                                .with_context("key", key)
                                .with_context("range", format!("{range:?}"))
                                .set_source(err);
                        }
                        err
                    }
                })?,
        };
        if b.len() as u64 != range.end - range.start {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "range reaches past the end of the object",
            )
            .with_context("backend", &self.name)
            .with_context("key", key)
            .with_context("range", format!("{range:?}"))
            .with_context("got", b.len()));
        }
        Ok(b)
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let p = self.path(key)?;
        let m = self
            .store
            .head(&p)
            .await
            .map_err(|e| self.map_err(key, e))?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: m.size,
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match self.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err(key, e)),
        }
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage> {
        // object_store lists by whole path segments; we list by string
        // prefix, so list the enclosing directory and filter.
        let dir = match prefix.rfind('/') {
            Some(i) => Some(self.path(&prefix[..i])?),
            None => self.prefix.clone(),
        };
        let stream = match (after, &dir) {
            (Some(a), _) => self.store.list_with_offset(dir.as_ref(), &self.path(a)?),
            (None, _) => self.store.list(dir.as_ref()),
        };
        let mut items: Vec<ObjectInfo> = stream
            .map_err(|e| self.map_err(prefix, e))
            .try_filter_map(|m| {
                let key = self.strip(&m.location);
                let keep = key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a);
                futures::future::ready(Ok(keep.then_some(ObjectInfo { key, size: m.size })))
            })
            .try_collect()
            .await?;
        // Not every store returns keys in order; the contract says sorted.
        items.sort_by(|a, b| a.key.cmp(&b.key));
        let next = (items.len() > limit).then(|| items[limit - 1].key.clone());
        items.truncate(limit);
        let next = next.filter(|_| limit > 0);
        Ok(ListPage {
            objects: items,
            next,
        })
    }
}
