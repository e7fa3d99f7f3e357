//! The Repository: what applications embed. Follow `Tenant::put` down
//! through the chunker, the sealer, the pack, the codec, placement and
//! the backends; `Tenant::get` comes back up the same way.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use asheville_core::{
    ChunkId, Codec, KeyFile, MasterKey, PackId, Placement, Sealer, Slot, TenantKeys, aead,
    redundancy::SHARD_HEADER_LEN,
};
use bytes::{Buf, Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::backend::DynBackend;
use crate::cache::{CacheKey, CacheStats, ReadCache};
use crate::catalog::{
    BlobLoc, Catalog, ChunkRef, FileMeta, FileVersion, ListPage, NewVersion, PackRecord,
    RedbCatalog,
};
use crate::chunking::AsyncChunker;
use crate::config::RepoConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::pack::{self, TrailerEntry};
use crate::path::RepoPath;

/// How a tenant's master key is given.
pub enum TenantKey {
    /// A passphrase unwrapping the key file stored in the repository.
    Passphrase(String),
    /// The master key itself (the application keeps it).
    Raw(MasterKey),
}

#[derive(Serialize, Deserialize)]
enum TenantRecord {
    Wrapped(Vec<u8>),
    Raw { check: [u8; 32] },
}

fn key_check(keys: &TenantKeys) -> [u8; 32] {
    *blake3::keyed_hash(keys.id_key().as_bytes(), b"asheville key check v1").as_bytes()
}

fn validate_tenant(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            "tenant names are 1-64 characters of [A-Za-z0-9._-], not starting with '.'",
        )
        .with_context("tenant", name.escape_debug()))
    }
}

/// Local files up to this size are read (and restored) whole in one
/// blocking call; larger ones stream with bounded memory.
pub const WHOLE_FILE_LIMIT: u64 = 4 << 20;

/// Local files up to this size are read whole, in one blocking call, by
/// [`LocalFile::open`]; larger ones stream.
pub const READ_WHOLE_LIMIT: u64 = 1 << 20;

/// A group's share of the bytes [`Tenant::open_ahead`] may read ahead,
/// given back when dropped.
#[derive(Debug)]
pub(crate) struct OpenedBytes {
    _share: tokio::sync::OwnedSemaphorePermit,
}

/// A local file opened for a [`Batch`]: small ones already read.
#[derive(Debug)]
pub enum LocalFile {
    /// Read whole.
    Whole {
        /// Its metadata.
        meta: FileMeta,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Open, to be streamed.
    Stream {
        /// Its metadata.
        meta: FileMeta,
        /// The open file.
        file: std::fs::File,
    },
    /// Read whole, cut and hashed, its chunks sealed unless they seemed
    /// stored already: by [`Tenant::open_group`], ahead of the batch.
    Prepared {
        /// Its metadata.
        meta: FileMeta,
        /// Its chunks.
        file: PreparedFile,
    },
}

/// A file read whole, its chunks cut, hashed and, unless the catalog had
/// them, sealed ahead of its batch by [`Tenant::open_group`]. Only the
/// tenant that prepared it can add it to a batch.
pub struct PreparedFile {
    /// [`key_check`] of the tenant that prepared it.
    keys: [u8; 32],
    /// `Inner::blob_commits` before its chunks were looked up.
    looked_up: u64,
    size: u64,
    chunks: Vec<PreparedChunk>,
}

/// What [`Tenant::open_group`] keeps for a group while it prepares it.
struct GroupPrep {
    /// [`key_check`] of the tenant.
    keys: [u8; 32],
    /// `Inner::blob_commits` before the group's first lookup.
    looked_up: u64,
    /// Chunks sealed for the group so far (not sealed twice).
    sealed: HashSet<ChunkId>,
    /// The group's blobs, one after the other.
    blobs: Vec<u8>,
}

/// A prepared chunk's body until its group's blobs are all sealed.
enum Staged {
    Plain(Bytes),
    /// Where its blob lies in the group's blobs.
    Sealed(std::ops::Range<usize>),
}

impl Staged {
    /// The body, once the group's blobs are `blobs`.
    fn into_item(self, blobs: &Bytes) -> PackItem {
        match self {
            Staged::Plain(plain) => PackItem::Plain(plain),
            Staged::Sealed(at) => PackItem::Sealed(blobs.slice(at)),
        }
    }
}

/// A prepared chunk: its body staged (`Staged`) while its group is
/// prepared, then ready for a pack.
struct PreparedChunk<B = PackItem> {
    id: ChunkId,
    len: u32,
    body: B,
}

impl std::fmt::Debug for PreparedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedFile")
            .field("size", &self.size)
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl LocalFile {
    /// Opens `path` (and reads it if it is at most [`READ_WHOLE_LIMIT`])
    /// in one blocking call.
    pub async fn open(path: std::path::PathBuf) -> Result<LocalFile> {
        let mut opened = Self::open_group(vec![path]).await?;
        opened
            .pop()
            .ok_or_else(|| Error::new(ErrorKind::Other, "no file was opened"))?
    }

    /// Opens (and reads, when small) every file of `paths` in one blocking
    /// call, in order: many small files cost one hop to tokio's blocking
    /// pool and back, not one each. Each file has its own result.
    pub async fn open_group(paths: Vec<std::path::PathBuf>) -> Result<Vec<Result<LocalFile>>> {
        tokio::task::spawn_blocking(move || paths.into_iter().map(Self::open_blocking).collect())
            .await
            .map_err(join_err)
    }

    fn open_blocking(path: std::path::PathBuf) -> Result<LocalFile> {
        let mut data = Vec::new();
        Ok(match Self::open_into(&path, &mut data)? {
            Err(file) => file,
            Ok(meta) => LocalFile::Whole { meta, data },
        })
    }

    /// Opens `path` and, if it is small, reads it into `data` (emptied
    /// first) and returns its metadata; else returns it open.
    fn open_into(
        path: &std::path::Path,
        data: &mut Vec<u8>,
    ) -> Result<std::result::Result<FileMeta, LocalFile>> {
        let mut open = || -> std::io::Result<_> {
            let mut f = std::fs::File::open(path)?;
            let m = f.metadata()?;
            let meta = local_meta(&m);
            if m.len() <= READ_WHOLE_LIMIT {
                data.clear();
                data.reserve(m.len() as usize);
                read_whole(&mut f, data)?;
                Ok(Ok(meta))
            } else {
                Ok(Err(LocalFile::Stream { meta, file: f }))
            }
        };
        open().map_err(|e| {
            Error::io("cannot read local file", e).with_context("file", path.display())
        })
    }
}

/// Reads `f` to its end into `data`: first into the room `data` has
/// (reserved for the file's size just taken), then once more to see the
/// end, and on to the end should the file have grown since. Two reads for
/// a small file, where `File::read_to_end` first asks the kernel for the
/// size and the position again: a put of the repo bench set's 20,000 small
/// files made 60,764 `statx` and 20,006 `lseek` calls that way, and 40,788
/// and none this way (`strace -f -c`).
fn read_whole(f: &mut std::fs::File, data: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    while data.len() < data.capacity() {
        match rustix::io::read(&*f, rustix::buffer::spare_capacity(data)) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut probe = [0u8; 64];
    loop {
        match f.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                data.extend_from_slice(&probe[..n]);
                f.read_to_end(data)?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// [`Tenant::read_chunks`] reads blobs closer than this in one data shard
/// together (the bytes between them are read and dropped).
const READ_GAP: usize = 256 << 10;
/// The most bytes one ranged read of [`Tenant::read_chunks`] covers.
const READ_SPAN: usize = 8 << 20;

/// Object key of shard `i` of a pack: under [`shard_prefix`] of the
/// pack id's first byte.
pub fn shard_key(pack: &PackId, i: usize) -> String {
    format!("{}/{}.{i}", shard_prefix(pack.as_bytes()[0]), pack.to_hex())
}

/// The key prefix (a directory, on a local backend) of the shards of the
/// packs whose id starts with the byte `first`: `packs/00` to `packs/ff`.
pub fn shard_prefix(first: u8) -> String {
    format!("packs/{first:02x}")
}

struct Inner {
    config: RepoConfig,
    backends: Vec<DynBackend>,
    by_name: HashMap<String, usize>,
    placement: Placement,
    codec: Arc<Codec>,
    catalog: Arc<dyn Catalog>,
    cache: ReadCache,
    /// Pack records are immutable once committed: cached without bound on
    /// staleness (a few hundred bytes each; cleared when it grows large).
    packs: std::sync::Mutex<HashMap<PackId, Arc<PackRecord>>>,
    /// Pack buffers of finished uploads, for the next packs.
    pack_bufs: crate::bufpool::BufPool,
    /// Parity buffers of finished uploads (`rs` only, unless parity is
    /// streamed).
    parity_bufs: crate::bufpool::BufPool,
    /// Parity shards are made as they are written (`rs` over backends
    /// that all make objects while writing them: local directories
    /// written around the page cache), so no pack holds parity buffers.
    stream_parity: bool,
    /// Read windows of local files put, for the next ones.
    windows: Arc<crate::chunking::WindowPool>,
    /// Commits that recorded blobs, counted: a chunk sealed ahead
    /// ([`Tenant::open_group`]) is looked up in the catalog again only if
    /// one came between its lookup and its batch.
    blob_commits: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// Counts a commit that recorded blobs (see `blob_commits`), once it
    /// is in the catalog.
    fn count_blob_commit(&self) {
        self.blob_commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// See `blob_commits`.
    fn blob_commits(&self) -> u64 {
        self.blob_commits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A repository: backends, a catalog, and tenants inside.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("backends", &self.inner.backends)
            .field("redundancy", &self.inner.config.redundancy)
            .finish()
    }
}

const CONFIG_KEY: &str = "config";

impl Repository {
    /// Creates a repository: a new catalog file at `catalog` and the
    /// configured backends. Fails if the catalog already holds a repository.
    pub async fn create(catalog: &Path, config: RepoConfig) -> Result<Repository> {
        config.validate()?;
        if let Some(parent) = catalog.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::io("cannot create the catalog's directory", e)
                    .with_context("dir", parent.display())
            })?;
        }
        let cat = RedbCatalog::open(catalog)?;
        if cat.meta(CONFIG_KEY)?.is_some() {
            return Err(
                Error::new(ErrorKind::AlreadyExists, "a repository already exists here")
                    .with_context("catalog", catalog.display()),
            );
        }
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::new(ErrorKind::Other, "cannot encode config").set_source(e))?;
        let backends = open_backends(&config)?;
        for b in &backends {
            b.put("config.json", vec![Bytes::from(json.clone())])
                .await?;
        }
        // Local backends make the 256 directories shards go into now, as
        // restic makes `data/00`..`data/ff` at init: else the first shard
        // into each makes its directory and syncs it and its parent, in
        // the write path. CLI put of the repo bench set into new
        // repositories (`rs(4,2)`, 8 alternating rounds): median 2.54 ->
        // 2.45 s, system CPU 1.1 -> 0.87 s.
        let prefixes: Vec<String> = (0..=255u8).map(shard_prefix).collect();
        futures::future::try_join_all(backends.iter().map(|b| b.prepare(&prefixes))).await?;
        cat.set_meta(CONFIG_KEY, &json)?;
        Self::with_parts(config, backends, Arc::new(cat))
    }

    /// Opens the repository whose catalog is at `catalog`.
    pub async fn open(catalog: &Path) -> Result<Repository> {
        if !catalog.exists() {
            return Err(Error::new(
                ErrorKind::NotFound,
                "no repository here (catalog file missing)",
            )
            .with_context("catalog", catalog.display()));
        }
        let cat = RedbCatalog::open(catalog)?;
        let json = cat.meta(CONFIG_KEY)?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "catalog holds no repository")
                .with_context("catalog", catalog.display())
        })?;
        let config: RepoConfig = serde_json::from_slice(&json).map_err(|e| {
            Error::new(ErrorKind::Integrity, "stored config does not parse").set_source(e)
        })?;
        let backends = open_backends(&config)?;
        Self::with_parts(config, backends, Arc::new(cat))
    }

    /// Assembles a repository from parts: for tests that wrap backends
    /// (fault injection) and for applications with their own catalog.
    /// `backends[i]` must be named `config.backends[i].name`.
    pub fn with_parts(
        config: RepoConfig,
        backends: Vec<DynBackend>,
        catalog: Arc<dyn Catalog>,
    ) -> Result<Repository> {
        config.validate()?;
        if backends.len() != config.backends.len()
            || backends
                .iter()
                .zip(&config.backends)
                .any(|(b, c)| b.name() != c.name)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "backends do not match the configuration",
            ));
        }
        let slots = config
            .backends
            .iter()
            .map(|b| Slot {
                name: b.name.clone(),
                weight: b.weight,
                domain: b.domain.clone().unwrap_or_else(|| b.name.clone()),
            })
            .collect();
        let placement = Placement::new(slots)?;
        let codec = Arc::new(Codec::new(config.redundancy)?);
        let by_name = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.clone(), i))
            .collect();
        let cache = ReadCache::new(config.cache_bytes);
        // Idle buffers for every pack one writer has in flight. A buffer
        // is only made when none is idle, so keeping them costs a single
        // put no memory beyond its `packs_in_flight` sets (writers at
        // once each have their own permits; the pools keep one writer's
        // worth idle). A pool smaller than that drops buffers that the
        // next packs must map and fault in afresh (parity buffers are
        // taken when a pack is sealed, after the packs before it gave
        // theirs back). Put of the peers set, CLI: rs(4,2)
        // 77k page faults against 105k keeping all but one pack's, peak
        // RSS 112-117 MiB against 107-109; rs(2,1) 3 alternating rounds,
        // 3.41-3.71 s of CPU against 3.55-3.87, 111-114 MiB against
        // 107-116. Every pack buffer has room for the largest
        // pack (`pack_size`, or a single chunk larger than that) with a
        // trailer of a few hundred blobs; only the bytes a pack fills are
        // ever touched (and count in RSS).
        let (k, m) = (
            config.redundancy.data_shards(),
            config.redundancy.total_shards() - config.redundancy.data_shards(),
        );
        // With room for the lead and padding that line shard payloads up
        // (`payload_lead`, `SHARD_BLOCK`).
        let pack_floor = config.pack_size
            + config.chunker.max_size as usize
            + asheville_core::seal::OVERHEAD
            + (64 << 10)
            + asheville_core::redundancy::PAYLOAD_PHASE
            + k * SHARD_BLOCK;
        let is_rs = matches!(
            config.redundancy,
            asheville_core::Redundancy::ReedSolomon { .. }
        );
        let stream_parity = is_rs && backends.iter().all(|b| b.makes_while_writing());
        let idle = config.packs_in_flight.max(1);
        let pack_bufs = crate::bufpool::BufPool::new(pack_floor, idle);
        let parity_bufs = crate::bufpool::BufPool::keeping_contents(
            pack_floor.div_ceil(k) + asheville_core::redundancy::PAYLOAD_PHASE,
            if is_rs && !stream_parity { m * idle } else { 0 },
        );
        Ok(Repository {
            inner: Arc::new(Inner {
                pack_bufs,
                parity_bufs,
                stream_parity,
                windows: Default::default(),
                blob_commits: Default::default(),
                config,
                backends,
                by_name,
                placement,
                codec,
                catalog,
                cache,
                packs: Default::default(),
            }),
        })
    }

    /// A repository with a new list of backends (added, re-weighted,
    /// drained with weight 0, or removed), sharing this one's catalog. The
    /// new configuration is stored in the catalog and on every backend.
    /// Existing shards stay where they are until [`Repository::rebalance`].
    pub async fn update_backends(
        &self,
        backends: Vec<crate::config::BackendConfig>,
    ) -> Result<Repository> {
        let mut config = self.inner.config.clone();
        config.backends = backends;
        config.validate()?;
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::new(ErrorKind::Other, "cannot encode config").set_source(e))?;
        let opened: Vec<DynBackend> = config
            .backends
            .iter()
            .map(|b| {
                match self
                    .inner
                    .backends
                    .iter()
                    .zip(&self.inner.config.backends)
                    .find(|(_, c)| c.name == b.name && c.kind == b.kind)
                {
                    Some((existing, _)) => Ok(existing.clone()),
                    None => crate::backend::open(&b.name, &b.kind),
                }
            })
            .collect::<Result<_>>()?;
        for b in &opened {
            b.put("config.json", vec![Bytes::from(json.clone())])
                .await?;
        }
        self.inner.catalog.set_meta(CONFIG_KEY, &json)?;
        Repository::with_parts(config, opened, self.inner.catalog.clone())
    }

    /// A committed pack's record (cached: records never change).
    pub(crate) fn pack_record(&self, id: &PackId) -> Result<Arc<PackRecord>> {
        let lock = || self.inner.packs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = lock().get(id) {
            return Ok(p.clone());
        }
        let rec = self.inner.catalog.pack(id)?.ok_or_else(|| {
            Error::new(ErrorKind::Integrity, "pack missing from the catalog")
                .with_context("pack", id)
        })?;
        let rec = Arc::new(rec);
        let mut map = lock();
        if map.len() >= 100_000 {
            map.clear();
        }
        map.insert(*id, rec.clone());
        Ok(rec)
    }

    /// Forgets a cached pack record (after it changed).
    pub(crate) fn uncache_pack(&self, id: &PackId) {
        self.inner
            .packs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The backend names placement chooses for the shards of `pack`.
    pub(crate) fn placement_of(&self, pack: &PackId, shards: usize) -> Result<Vec<String>> {
        Ok(self
            .inner
            .placement
            .place(pack.as_bytes(), shards)?
            .into_iter()
            .map(|b| self.inner.config.backends[b].name.clone())
            .collect())
    }

    /// `tenant`'s namespace in the catalog, read without its keys (the
    /// tenant need not exist: its namespace is then empty).
    pub(crate) fn namespace(&self, tenant: &str) -> Namespace {
        Namespace {
            catalog: self.inner.catalog.clone(),
            tenant: tenant.to_owned(),
        }
    }

    /// Gives the catalog's free space back to the filesystem when much of
    /// it is free (a large write leaves pages of its transactions behind);
    /// returns whether it did. [`crate::tree::put_tree`] and
    /// [`Tenant::gc`] call it when they finish.
    pub async fn compact_catalog(&self) -> Result<bool> {
        let catalog = self.inner.catalog.clone();
        tokio::task::spawn_blocking(move || catalog.compact())
            .await
            .map_err(join_err)?
    }

    /// The configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// The backends, in configuration order.
    pub fn backends(&self) -> &[DynBackend] {
        &self.inner.backends
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.inner.catalog
    }

    /// Read cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// Creates a tenant with its own keys and namespace. With a passphrase,
    /// a new random master key is made and stored wrapped (Argon2id) in the
    /// catalog and, as `keys/<tenant>/<hash>`, on every backend.
    pub async fn create_tenant(&self, name: &str, key: TenantKey) -> Result<Tenant> {
        validate_tenant(name)?;
        if self.inner.catalog.tenant(name)?.is_some() {
            return Err(
                Error::new(ErrorKind::AlreadyExists, "tenant exists").with_context("tenant", name)
            );
        }
        let (master, record) = match key {
            TenantKey::Passphrase(p) => {
                let master = MasterKey::generate()?;
                let kdf = self.inner.config.kdf;
                let pw = p.clone();
                let m2 = master.clone();
                let kf =
                    tokio::task::spawn_blocking(move || KeyFile::wrap(&m2, pw.as_bytes(), kdf))
                        .await
                        .map_err(join_err)??;
                let bytes = kf.to_bytes().to_vec();
                // Named by content: two racing creators never overwrite each
                // other's key file; the catalog insert below decides which
                // one the tenant uses, and a catalog rebuild tries each.
                let key = format!("keys/{name}/{}", &blake3::hash(&bytes).to_hex()[..16]);
                for b in &self.inner.backends {
                    b.put(&key, vec![Bytes::from(bytes.clone())]).await?;
                }
                (master, TenantRecord::Wrapped(bytes))
            }
            TenantKey::Raw(m) => {
                let check = key_check(&TenantKeys::new(&m));
                (m, TenantRecord::Raw { check })
            }
        };
        let rec = postcard::to_stdvec(&record)
            .map_err(|e| Error::new(ErrorKind::Other, "encode").set_source(e))?;
        self.inner.catalog.create_tenant(name, &rec)?;
        self.make_tenant(name, &master)
    }

    /// Registers in the catalog a tenant whose key file is already on the
    /// backends (a catalog rebuild): with a passphrase, the `keys/<tenant>/`
    /// file it unwraps is adopted; a raw key is recorded as for
    /// [`Repository::create_tenant`].
    pub async fn adopt_tenant(&self, name: &str, key: TenantKey) -> Result<Tenant> {
        validate_tenant(name)?;
        let pw = match key {
            TenantKey::Raw(_) => return self.create_tenant(name, key).await,
            TenantKey::Passphrase(p) => p,
        };
        let mut last_err = Error::new(
            ErrorKind::NotFound,
            "no key file for this tenant on any backend",
        )
        .with_context("tenant", name);
        for b in &self.inner.backends {
            let Ok(page) = b.list(&format!("keys/{name}/"), None, 100).await else {
                continue;
            };
            for o in page.objects {
                let Ok(bytes) = b.get(&o.key).await else {
                    continue;
                };
                let Ok(kf) = KeyFile::parse(&bytes) else {
                    continue;
                };
                let pw2 = pw.clone();
                match tokio::task::spawn_blocking(move || kf.unwrap_key(pw2.as_bytes()))
                    .await
                    .map_err(join_err)?
                {
                    Ok(master) => {
                        let rec = postcard::to_stdvec(&TenantRecord::Wrapped(bytes.to_vec()))
                            .map_err(|e| Error::new(ErrorKind::Other, "encode").set_source(e))?;
                        self.inner.catalog.create_tenant(name, &rec)?;
                        return self.make_tenant(name, &master);
                    }
                    Err(e) => last_err = Error::from(e).with_context("tenant", name),
                }
            }
        }
        Err(last_err)
    }

    /// The keys of an opened tenant (for maintenance that reads trailers
    /// and journals).
    pub(crate) fn tenant_seal_key(t: &Tenant) -> &asheville_core::SealKey {
        t.keys.seal_key()
    }

    /// Opens an existing tenant. `WrongKey` if the key does not match.
    pub async fn tenant(&self, name: &str, key: TenantKey) -> Result<Tenant> {
        validate_tenant(name)?;
        let rec = self.inner.catalog.tenant(name)?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "no such tenant").with_context("tenant", name)
        })?;
        let rec: TenantRecord = postcard::from_bytes(&rec)
            .map_err(|e| Error::new(ErrorKind::Integrity, "tenant record").set_source(e))?;
        let master = match (rec, key) {
            (TenantRecord::Wrapped(bytes), TenantKey::Passphrase(p)) => {
                let kf = KeyFile::parse(&bytes)?;
                tokio::task::spawn_blocking(move || kf.unwrap_key(p.as_bytes()))
                    .await
                    .map_err(join_err)??
            }
            (TenantRecord::Raw { check }, TenantKey::Raw(m)) => {
                if key_check(&TenantKeys::new(&m)) != check {
                    return Err(Error::new(
                        ErrorKind::WrongKey,
                        "wrong master key for this tenant",
                    )
                    .with_context("tenant", name));
                }
                m
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::WrongKey,
                    "this tenant uses the other kind of key (passphrase vs raw)",
                )
                .with_context("tenant", name));
            }
        };
        self.make_tenant(name, &master)
    }

    fn make_tenant(&self, name: &str, master: &MasterKey) -> Result<Tenant> {
        let keys = TenantKeys::new(master);
        let sealer = Sealer::new(
            keys.seal_key().clone(),
            self.inner.config.compression,
            aead::fastest(),
        )?;
        Ok(Tenant {
            repo: self.clone(),
            name: name.to_owned(),
            key_check: key_check(&keys),
            keys,
            sealer,
            meter: None,
        })
    }
}

fn open_backends(config: &RepoConfig) -> Result<Vec<DynBackend>> {
    config
        .backends
        .iter()
        .map(|b| crate::backend::open(&b.name, &b.kind))
        .collect()
}

pub(crate) fn join_err(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Other, "a background task failed").set_source(e)
}

/// Opens `blob` (authenticated, decrypted, decompressed): in place when
/// this is the only handle to its buffer (a local backend's read), so the
/// plaintext of a chunk stored uncompressed is a slice of what was read;
/// otherwise into a new buffer.
fn open_bytes(sealer: &Sealer, id: &ChunkId, blob: Bytes) -> asheville_core::Result<Bytes> {
    match blob.try_into_mut() {
        Ok(buf) => open_mut(sealer, id, buf),
        Err(shared) => sealer.open(id, &shared).map(Bytes::from),
    }
}

/// [`open_bytes`] of a buffer this caller owns: always in place.
fn open_mut(sealer: &Sealer, id: &ChunkId, mut blob: BytesMut) -> asheville_core::Result<Bytes> {
    Ok(match sealer.open_in_place(id, &mut blob)? {
        asheville_core::Opened::InPlace(r) => blob.freeze().slice(r),
        asheville_core::Opened::Decompressed(plain) => Bytes::from(plain),
    })
}

/// A tenant's namespace in the catalog, read without its keys: paths,
/// versions and where their chunks lie, not a byte of their contents. What
/// a restore looks up before it reads anything (the CLI does it while
/// Argon2id unlocks the key).
pub(crate) struct Namespace {
    catalog: Arc<dyn Catalog>,
    tenant: String,
}

impl Namespace {
    /// The tenant's name.
    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The live version of `path`, if any.
    pub(crate) fn latest(&self, path: &RepoPath) -> Result<Option<FileVersion>> {
        self.catalog.latest(&self.tenant, path)
    }

    /// See [`Tenant::list`].
    pub(crate) fn list(
        &self,
        dir: &RepoPath,
        depth: usize,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        self.catalog
            .list(&self.tenant, dir, depth, cursor, limit.clamp(1, 10_000))
    }

    /// The live versions of many paths at once, on tokio's blocking pool
    /// (two catalog transactions, for the two halves of `paths`, at once):
    /// `None` where there is no live file.
    pub(crate) async fn stat_many(&self, paths: Vec<RepoPath>) -> Result<Vec<Option<FileVersion>>> {
        // Two halves at once: the callers run this before any other work.
        let mut paths = paths;
        let second = paths.split_off(paths.len() / 2);
        let half = |paths: Vec<RepoPath>| {
            let (catalog, tenant) = (self.catalog.clone(), self.tenant.clone());
            async move {
                if paths.is_empty() {
                    return Ok(Vec::new());
                }
                tokio::task::spawn_blocking(move || catalog.latest_many(&tenant, &paths))
                    .await
                    .map_err(join_err)?
            }
        };
        let (mut a, b) = futures::future::try_join(half(paths), half(second)).await?;
        a.extend(b);
        Ok(a)
    }

    /// The latest version of every live file below `dir` (see
    /// [`Catalog::latest_under`]), on tokio's blocking pool.
    pub(crate) async fn latest_under(&self, dir: &RepoPath) -> Result<Vec<FileVersion>> {
        let (catalog, tenant, dir) = (self.catalog.clone(), self.tenant.clone(), dir.clone());
        tokio::task::spawn_blocking(move || catalog.latest_under(&tenant, &dir))
            .await
            .map_err(join_err)?
    }

    /// Where the blobs of `ids` lie (pack, offset), to order reads by; on
    /// tokio's blocking pool, in one catalog transaction.
    pub(crate) async fn blob_positions(
        &self,
        ids: Vec<ChunkId>,
    ) -> Result<Vec<Option<(PackId, u64)>>> {
        let (catalog, tenant) = (self.catalog.clone(), self.tenant.clone());
        let locs = tokio::task::spawn_blocking(move || catalog.blobs(&tenant, &ids))
            .await
            .map_err(join_err)??;
        Ok(locs
            .into_iter()
            .map(|l| l.map(|l| (l.pack, l.offset)))
            .collect())
    }
}

/// One tenant's view of a repository: its keys and its namespace.
#[derive(Clone)]
pub struct Tenant {
    repo: Repository,
    name: String,
    /// [`key_check`] of `keys`, which files prepared ahead carry.
    key_check: [u8; 32],
    keys: TenantKeys,
    sealer: Sealer,
    meter: Option<Arc<dyn crate::metering::MeterStore>>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Handfuls of chunks waiting to be sealed into an open pack at most; they
/// are sealed as they come, so the read windows they point into are freed
/// early.
const SEAL_QUEUE: usize = 4;

/// Chunks go to the sealing thread in handfuls of about this many bytes, so
/// that a run of small files does not wake it once per chunk.
const SEAL_HANDFUL: usize = 1 << 20;

/// A chunk on its way into a pack: its plaintext, sealed by the pack's
/// thread, or its blob, sealed already.
enum PackItem {
    Plain(Bytes),
    Sealed(Bytes),
}

/// A pack being filled: a thread of its own seals each chunk into the pack
/// buffer as it arrives, so that chunking + hashing (the writer's task) and
/// sealing (another core) overlap, and no chunk waits for its pack to fill.
/// (Not a task of tokio's blocking pool: waiting for chunks there would
/// hold one of its few threads, which the reads that produce the chunks
/// may need.)
struct OpenPack {
    id: PackId,
    tx: tokio::sync::mpsc::Sender<Vec<(ChunkId, PackItem)>>,
    /// Chunks not yet sent to the sealing thread, their bytes, and how
    /// many are plain and shorter than the chunker's `min_size`.
    handful: Vec<(ChunkId, PackItem)>,
    handful_bytes: usize,
    handful_small: usize,
    sealing: tokio::sync::oneshot::Receiver<Result<SealedPack>>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl OpenPack {
    /// Sends the chunks gathered so far to the sealing thread; an error
    /// means that thread stopped early (see [`OpenPack::failure`]).
    async fn send_handful(&mut self) -> std::result::Result<(), ()> {
        if self.handful.is_empty() {
            return Ok(());
        }
        self.handful_bytes = 0;
        self.handful_small = 0;
        let handful = std::mem::take(&mut self.handful);
        self.tx.send(handful).await.map_err(|_| ())
    }

    /// Why the sealing thread stopped before its pack was closed.
    async fn failure(self) -> Error {
        match sealed(self.sealing).await {
            Err(e) => e,
            Ok(_) => Error::new(ErrorKind::Other, "the pack sealing thread stopped"),
        }
    }
}

/// The sealed pack from its sealing thread.
async fn sealed(sealing: tokio::sync::oneshot::Receiver<Result<SealedPack>>) -> Result<SealedPack> {
    sealing
        .await
        .map_err(|_| Error::new(ErrorKind::Other, "the pack sealing thread panicked"))?
}

/// A pack sealed, with its trailer, and erasure-coded.
struct SealedPack {
    /// Every shard, or only the data shards if parity is streamed.
    enc: asheville_core::redundancy::EncodedPack,
    /// The parity shards to make as they are written (streamed parity).
    parity: Vec<asheville_core::ParityShard>,
    entries: Vec<TrailerEntry>,
    data_len: u64,
}

/// A parity shard made as it is written ([`Backend::put_unsynced_made`]),
/// from the data shards of its pack's buffer.
///
/// [`Backend::put_unsynced_made`]: crate::backend::Backend::put_unsynced_made
struct ParityObject {
    shard: asheville_core::ParityShard,
    /// The pack buffer, and where each data shard's payload lies in it.
    data: Bytes,
    ranges: Vec<std::ops::Range<usize>>,
}

impl crate::backend::MadeObject for ParityObject {
    fn head_len(&self) -> usize {
        SHARD_HEADER_LEN
    }

    fn body_len(&self) -> usize {
        self.shard.payload_len()
    }

    fn make(&mut self, out: &mut [u8]) -> Result<()> {
        let shards: Vec<&[u8]> = self.ranges.iter().map(|r| &self.data[r.clone()]).collect();
        Ok(self.shard.make(&shards, out)?)
    }

    fn head(&mut self) -> Result<Vec<u8>> {
        Ok(self.shard.header()?.to_vec())
    }
}

/// A handful with at least this many plain chunks shorter than the
/// chunker's `min_size` (whole small files, still to be compressed) makes
/// the next handful go to the other open pack: compressing small text is
/// what bounds a run of small files, and two packs seal on two threads.
/// The chunks of large files stay in one pack, together for their
/// restore. Put of the peers set's 20,000 small files (CLI, 8 alternating
/// rounds): median 1.33 -> 1.15 s.
///
/// Chunks sealed ahead ([`Tenant::open_group`], as a put prepares small
/// files) do not count: they are only copied into the pack, and two packs
/// filling at once hold two of the `packs_in_flight` permits, leaving one
/// pack to upload while the disk is the bottleneck. Counting them, a put of
/// the peers set kept both packs open through its small files: with them
/// not counted, medians of 8 alternating rounds went 1.790 -> 1.675 s
/// (`rs(2,1)`), and of 5, 1.94 -> 1.79 s (`rs(4,2)` over 6 backends),
/// the same bytes stored (issue 9's note).
const SPLIT_HANDFUL_CHUNKS: usize = 8;

/// One of the two packs a write fills at once.
#[derive(Default)]
struct Lane {
    open: Option<OpenPack>,
    /// Plaintext bytes (plus blob overhead) sent to the open pack.
    bytes: usize,
}

/// The open packs of a write and the uploads in flight.
///
/// A write fills one pack at a time, except during runs of small chunks
/// still to be compressed, which alternate handfuls between two packs (see
/// [`SPLIT_HANDFUL_CHUNKS`]).
struct PackWriter<'a> {
    t: &'a Tenant,
    lanes: [Lane; 2],
    /// The lane the next chunk goes to.
    turn: usize,
    pending: HashSet<ChunkId>,
    uploads: JoinSet<Result<StoredPack>>,
    /// Packs whose shards are written, to be synced and recorded by
    /// [`PackWriter::finish`].
    stored: Vec<StoredPack>,
    /// One per pack open or uploading.
    permits: Arc<Semaphore>,
    /// Repacking: blob entries move to the new packs.
    moving: bool,
}

impl<'a> PackWriter<'a> {
    fn new(t: &'a Tenant, permits: Arc<Semaphore>) -> Self {
        PackWriter {
            t,
            lanes: Default::default(),
            turn: 0,
            pending: HashSet::new(),
            uploads: JoinSet::new(),
            stored: Vec::new(),
            permits,
            moving: false,
        }
    }

    /// Queues `chunk` for the open pack, to be sealed there; a chunk
    /// queued before is left out.
    async fn add(&mut self, id: ChunkId, chunk: Bytes) -> Result<()> {
        self.add_item(id, PackItem::Plain(chunk)).await
    }

    /// [`PackWriter::add`] for a chunk that may be sealed already.
    async fn add_item(&mut self, id: ChunkId, item: PackItem) -> Result<()> {
        if !self.pending.insert(id) {
            return Ok(());
        }
        let (len, small) = match &item {
            PackItem::Plain(chunk) => (
                chunk.len(),
                chunk.len() < self.t.repo.inner.config.chunker.min_size as usize,
            ),
            // Sealed already: nothing is left to compress, so it never
            // sends handfuls to the other pack (see SPLIT_HANDFUL_CHUNKS).
            PackItem::Sealed(blob) => (
                blob.len().saturating_sub(asheville_core::seal::OVERHEAD),
                false,
            ),
        };
        // A pack is closed before a chunk would take it past the pack
        // size (a chunk larger than that has a pack of its own), so a pack
        // buffer holds at most `pack_size` bytes and a trailer, not up to
        // a whole chunk more.
        let lane = &self.lanes[self.turn];
        if lane.bytes > 0
            && lane.bytes + len + asheville_core::seal::OVERHEAD
                > self.t.repo.inner.config.pack_size
        {
            self.flush(self.turn).await?;
        }
        // A writer waits for a permit only while it holds no open pack:
        // the other lane's pack opens only if one is free now (waiting
        // while holding one could wait forever with `packs_in_flight` 1,
        // or with another batch holding the rest).
        let mut open = match self.lanes[self.turn].open.take() {
            Some(open) => open,
            None if self.lanes[self.turn ^ 1].open.is_none() => {
                let permit = self.permit().await?;
                self.open_pack(permit)?
            }
            None => match self.permits.clone().try_acquire_owned() {
                Ok(permit) => self.open_pack(permit)?,
                // The other lane's pack, open (checked above).
                Err(_) => {
                    self.turn ^= 1;
                    self.lanes[self.turn]
                        .open
                        .take()
                        .ok_or_else(|| Error::new(ErrorKind::Other, "no open pack"))?
                }
            },
        };
        let lane = self.turn;
        open.handful.push((id, item));
        open.handful_bytes += len;
        if small {
            open.handful_small += 1;
        }
        if open.handful_bytes >= SEAL_HANDFUL {
            if open.handful_small >= SPLIT_HANDFUL_CHUNKS {
                self.turn ^= 1;
            }
            if open.send_handful().await.is_err() {
                return Err(open.failure().await);
            }
        }
        let l = &mut self.lanes[lane];
        l.open = Some(open);
        l.bytes += len + asheville_core::seal::OVERHEAD;
        if l.bytes >= self.t.repo.inner.config.pack_size {
            self.flush(lane).await?;
        }
        Ok(())
    }

    /// Waits for a permit to open a pack.
    async fn permit(&mut self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        // Surface a failed upload early instead of after the whole input.
        while let Some(r) = self.uploads.try_join_next() {
            self.stored.push(r.map_err(join_err)??);
        }
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Other, "semaphore closed"))
    }

    /// Starts a pack under `permit`: its buffer and its sealer.
    fn open_pack(&mut self, permit: tokio::sync::OwnedSemaphorePermit) -> Result<OpenPack> {
        let t = self.t;
        let id = PackId::random()?;
        let (tx, rx) = tokio::sync::mpsc::channel(SEAL_QUEUE);
        let (repo, sealer, seal_key, tenant) = (
            t.repo.clone(),
            t.sealer.clone(),
            t.keys.seal_key().clone(),
            t.name.clone(),
        );
        let (done, sealing) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("asheville-seal".into())
            .spawn(move || {
                let _ = done.send(seal_pack(&repo, &sealer, &seal_key, &tenant, id, rx));
            })
            .map_err(|e| Error::io("cannot start a pack sealing thread", e))?;
        Ok(OpenPack {
            id,
            tx,
            handful: Vec::new(),
            handful_bytes: 0,
            handful_small: 0,
            sealing,
            permit,
        })
    }

    /// Closes the open pack of `lane` and starts its upload.
    async fn flush(&mut self, lane: usize) -> Result<()> {
        let Some(mut open) = self.lanes[lane].open.take() else {
            return Ok(());
        };
        if open.send_handful().await.is_err() {
            return Err(open.failure().await);
        }
        let OpenPack {
            id,
            tx,
            sealing,
            permit,
            ..
        } = open;
        drop(tx);
        self.lanes[lane].bytes = 0;
        let t = self.t.clone();
        self.uploads.spawn(async move {
            let r = match sealed(sealing).await {
                Ok(pack) => upload_pack(&t, id, pack).await,
                Err(e) => Err(e),
            };
            // The pack's buffers are back in their pools: the next pack
            // may open while this one waits for its sync and record.
            drop(permit);
            r
        });
        Ok(())
    }

    /// Waits for every upload, makes every shard durable ([`Backend::sync`],
    /// all of a backend's shards at once), then records the packs and
    /// their blobs in the catalog, in one transaction; returns the shard
    /// bytes written. Nothing is recorded if any upload or sync failed
    /// (the shards written are orphans for `check` and `gc`).
    ///
    /// [`Backend::sync`]: crate::backend::Backend::sync
    async fn finish(self) -> Result<u64> {
        let (moving, t) = (self.moving, self.t);
        let (bytes, packs) = self.finish_unrecorded().await?;
        record_packs(t, packs, moving).await?;
        Ok(bytes)
    }

    /// [`PackWriter::finish`] up to recording the packs: returns the
    /// shard bytes written and the packs with their blobs, for the caller
    /// to record (with what refers to them).
    async fn finish_unrecorded(mut self) -> Result<(u64, Vec<RecordedPack>)> {
        let r = match self.flush(0).await {
            Ok(()) => self.flush(1).await,
            Err(e) => Err(e),
        };
        let mut first_err = r.err();
        while let Some(r) = self.uploads.join_next().await {
            match r.map_err(join_err).and_then(|r| r) {
                Ok(p) => self.stored.push(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let inner = &self.t.repo.inner;
        let mut keys: Vec<Vec<String>> = vec![Vec::new(); inner.backends.len()];
        for p in &mut self.stored {
            for (b, key) in p.keys.drain(..) {
                keys[b].push(key);
            }
        }
        futures::future::try_join_all(
            keys.iter()
                .enumerate()
                .filter(|(_, k)| !k.is_empty())
                .map(|(b, k)| inner.backends[b].sync(k)),
        )
        .await?;
        let bytes = self.stored.iter().map(|p| p.bytes).sum();
        let packs = self
            .stored
            .into_iter()
            .map(|p| (p.record, p.blobs))
            .collect();
        Ok((bytes, packs))
    }
}

/// How [`Tenant::gc`] works.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcOptions {
    /// A condemned pack is deleted only after this long (ns), so that
    /// readers that looked a chunk up before it died can finish. Default:
    /// one hour.
    pub grace_ns: i64,
    /// Packs whose live share is below this are repacked (default 0.5).
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace_ns: 3_600 * 1_000_000_000,
            repack_below: 0.5,
        }
    }
}

/// What [`Tenant::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Packs deleted (condemned at least the grace period ago and still dead).
    pub packs_deleted: u64,
    /// Shard objects deleted.
    pub objects_deleted: u64,
    /// Packs condemned by this run (deleted by a run after the grace period).
    pub packs_condemned: u64,
    /// Condemned packs found referenced again and kept.
    pub packs_revived: u64,
    /// Packs repacked (their live blobs moved; they are then condemned).
    pub packs_repacked: u64,
    /// Live blobs moved by repacking.
    pub blobs_moved: u64,
}

/// Which versions [`Tenant::apply_retention`] keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest `n` versions of each path.
    pub keep_last: Option<usize>,
    /// Keep versions committed within this many nanoseconds of now.
    pub keep_within_ns: Option<i64>,
}

/// What [`Tenant::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// Paths examined.
    pub paths: u64,
    /// Versions kept.
    pub kept: u64,
    /// Versions forgotten.
    pub forgotten: u64,
}

/// Where a file's chunks come from: cut from its bytes, or sealed ahead.
enum FileChunks<R> {
    Chunker(Box<AsyncChunker<R>>),
    Prepared(PreparedFile),
}

/// Several writes that share packs and commit in one catalog transaction.
///
/// Nothing added to a batch is visible, or acknowledged, until
/// [`Batch::commit`] returns; a crash or an error before that leaves the
/// repository as it was (shards already uploaded are garbage for `gc`).
pub struct Batch<'a> {
    t: &'a Tenant,
    writer: PackWriter<'a>,
    files: Vec<NewVersion>,
    bytes: u64,
    failed: bool,
    /// The tenant's quota with its use when the batch started (loaded at
    /// the first write when a meter store is attached).
    quota: Option<(asheville_core::metering::Quota, u64, u64)>,
    /// The chunks of the batch that commits while this one fills (see
    /// [`Batch::commit_handing_on`]): not stored again.
    earlier: Arc<HashSet<ChunkId>>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("files", &self.files.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<'a> Batch<'a> {
    /// Chunks, seals and queues `reader`'s bytes as the next version of
    /// `path`. After an error the batch refuses further work.
    pub async fn add<R: AsyncRead + Unpin>(
        &mut self,
        path: &str,
        reader: R,
        meta: FileMeta,
    ) -> Result<()> {
        let chunker = AsyncChunker::new(self.t.repo.inner.config.chunker, reader);
        let chunker = chunker.map(|c| FileChunks::Chunker(Box::new(c)));
        self.add_chunked(path, chunker, meta).await
    }

    /// [`Batch::add`] once the input has a chunker (or was prepared):
    /// refuses work after an earlier error and marks the batch failed on a
    /// new one.
    async fn add_chunked<R: AsyncRead + Unpin>(
        &mut self,
        path: &str,
        chunker: Result<FileChunks<R>>,
        meta: FileMeta,
    ) -> Result<()> {
        if self.failed {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "this batch failed earlier; start a new one",
            ));
        }
        let r = match chunker {
            Ok(chunker) => self.add_inner(path, chunker, meta).await,
            Err(e) => Err(e),
        };
        self.failed = r.is_err();
        r
    }

    async fn add_inner<R: AsyncRead + Unpin>(
        &mut self,
        path: &str,
        source: FileChunks<R>,
        meta: FileMeta,
    ) -> Result<()> {
        let path = RepoPath::parse(path)?;
        if path.is_root() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a file needs a name (the path is the root)",
            ));
        }
        let (size, chunks) = match source {
            FileChunks::Chunker(chunker) => self.add_chunks(*chunker).await?,
            FileChunks::Prepared(f) => self.add_prepared(f).await?,
        };
        self.bytes += size;
        // The commit time is set when the batch commits.
        self.files.push(NewVersion {
            path,
            size,
            meta,
            chunks,
            created_ns: 0,
            version: 0,
        });
        Ok(())
    }

    /// Stores the chunks `chunker` cuts that are not stored yet; returns
    /// the file's size and chunks.
    async fn add_chunks<R: AsyncRead + Unpin>(
        &mut self,
        mut chunker: AsyncChunker<R>,
    ) -> Result<(u64, Vec<ChunkRef>)> {
        let mut chunks = Vec::new();
        let mut size = 0u64;
        while let Some(chunk) = chunker.next_chunk().await? {
            let id = self.t.keys.chunk_id(&chunk);
            chunks.push(ChunkRef {
                id,
                len: chunk.len() as u32,
            });
            size += chunk.len() as u64;
            // Before the chunk can reach a backend.
            self.check_quota(size)?;
            if !self.queued(&id) && self.not_in_catalog(&id)? {
                self.writer.add(id, chunk).await?;
            }
        }
        Ok((size, chunks))
    }

    /// Stores the chunks of a file [`Tenant::open_group`] prepared that
    /// are not stored yet: [`Batch::add_chunks`] with the work done.
    async fn add_prepared(&mut self, f: PreparedFile) -> Result<(u64, Vec<ChunkRef>)> {
        // Its chunk ids and blobs are of the keys that prepared it.
        if f.keys != self.t.key_check {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a file prepared by another tenant or repository",
            )
            .with_context("tenant", &self.t.name));
        }
        self.check_quota(f.size)?;
        // A sealed chunk was not in the catalog when it was sealed. Unless
        // nothing was committed since, it is looked up again (a batch
        // before the one committing may have stored it: a put's read-ahead
        // runs ahead of its batches). A chunk left unsealed is looked up
        // again too: its pack may have gone since.
        let unchanged = f.looked_up == self.t.repo.inner.blob_commits();
        let mut chunks = Vec::with_capacity(f.chunks.len());
        for c in f.chunks {
            let new = !self.queued(&c.id)
                && match c.body {
                    PackItem::Sealed(_) if unchanged => true,
                    _ => self.not_in_catalog(&c.id)?,
                };
            if new {
                self.writer.add_item(c.id, c.body).await?;
            }
            chunks.push(ChunkRef {
                id: c.id,
                len: c.len,
            });
        }
        Ok((f.size, chunks))
    }

    /// Whether `id` is in this batch or the one committing before it.
    fn queued(&self, id: &ChunkId) -> bool {
        self.writer.pending.contains(id) || self.earlier.contains(id)
    }

    /// Whether the catalog lacks a live blob of `id`.
    fn not_in_catalog(&self, id: &ChunkId) -> Result<bool> {
        Ok(!self.t.has_blob(id)?)
    }

    /// Adds the local file at `local` with its mtime and permissions.
    pub async fn add_path(&mut self, path: &str, local: &Path) -> Result<()> {
        let opened = LocalFile::open(local.to_path_buf()).await?;
        self.add_local(path, opened).await
    }

    /// Adds a file opened with [`LocalFile::open`] or, prepared as well,
    /// with [`Tenant::open_group`] (which callers may run ahead,
    /// concurrently, to hide the latency of opening many files and the
    /// work of sealing small ones).
    pub async fn add_local(&mut self, path: &str, file: LocalFile) -> Result<()> {
        // The size is known: refuse before reading or writing anything.
        let size = match &file {
            LocalFile::Whole { data, .. } => data.len() as u64,
            LocalFile::Stream { file, .. } => file.metadata().map(|m| m.len()).unwrap_or(0),
            LocalFile::Prepared { file, .. } => file.size,
        };
        self.check_quota(size)?;
        match file {
            LocalFile::Whole { meta, data, .. } => {
                let chunker =
                    AsyncChunker::from_bytes(self.t.repo.inner.config.chunker, Bytes::from(data))
                        .map(|c| FileChunks::Chunker(Box::new(c)));
                self.add_chunked(path, chunker, meta).await
            }
            LocalFile::Stream { meta, file, .. } => {
                let inner = &self.t.repo.inner;
                let chunker = AsyncChunker::from_file(inner.config.chunker, file)
                    .map(|c| FileChunks::Chunker(Box::new(c.pooled(inner.windows.clone()))));
                self.add_chunked(path, chunker, meta).await
            }
            LocalFile::Prepared { meta, file } => {
                self.add_chunked::<tokio::io::Empty>(path, Ok(FileChunks::Prepared(file)), meta)
                    .await
            }
        }
    }

    /// Refuses a write that would take the batch past the tenant's quota
    /// (`incoming`: bytes of the file being added so far).
    fn check_quota(&mut self, incoming: u64) -> Result<()> {
        let Some(meter) = &self.t.meter else {
            return Ok(());
        };
        if self.quota.is_none() {
            use asheville_core::metering::{
                BYTES_INGESTED, BYTES_STORED_LOGICAL, DAY_NS, Granularity,
            };
            let quota = meter.quota(&self.t.name)?;
            let now = crate::catalog::now_ns();
            let today = Granularity::Day.start(now);
            let stored = meter.gauge(&self.t.name, BYTES_STORED_LOGICAL)?;
            let ingested =
                meter.quantity(&self.t.name, BYTES_INGESTED, today, today + DAY_NS, now)?;
            self.quota = Some((quota, stored, u64::try_from(ingested).unwrap_or(u64::MAX)));
        }
        if let Some((quota, stored, ingested)) = &self.quota {
            quota
                .check(*stored, *ingested, self.bytes.saturating_add(incoming))
                .map_err(|e| Error::from(e).with_context("tenant", &self.t.name))?;
        }
        Ok(())
    }

    /// Files added so far.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Bytes added so far (before dedup).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// [`Batch::commit`], and the chunks this batch stores, for the batch
    /// that fills while it commits ([`Tenant::batch_after`]) to leave out.
    /// That batch refers to them, so it must commit only once this one has
    /// (a put commits its batches in order and stops at the first error).
    pub(crate) fn commit_handing_on(
        mut self,
    ) -> (
        Arc<HashSet<ChunkId>>,
        impl std::future::Future<Output = Result<Vec<FileVersion>>> + Send + 'a,
    ) {
        let ids = Arc::new(std::mem::take(&mut self.writer.pending));
        (ids, self.commit())
    }

    /// Flushes the open pack, waits for every upload and makes the shards
    /// durable, writes the journal record, then commits the batch's packs
    /// and all its versions at once (one catalog transaction: a crash
    /// leaves all of the batch or none of it in the catalog).
    pub async fn commit(self) -> Result<Vec<FileVersion>> {
        let finished = self.writer.finish_unrecorded().await;
        if self.failed {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "this batch failed earlier; nothing was committed",
            ));
        }
        let (stored, packs) = finished?;
        if self.files.is_empty() {
            record_packs(self.t, packs, false).await?;
            return Ok(Vec::new());
        }
        let ops = self
            .files
            .iter()
            .map(|f| crate::journal::JournalOp::Put {
                path: f.path.as_str().to_owned(),
                size: f.size,
                meta: f.meta,
                chunks: f.chunks.clone(),
            })
            .collect();
        let created_ns = crate::catalog::now_ns();
        self.t.write_journal(created_ns, ops).await?;
        let mut files = self.files;
        for f in &mut files {
            f.created_ns = created_ns;
        }
        let catalog = self.t.repo.inner.catalog.clone();
        let tenant = self.t.name.clone();
        let metered = self.t.meter.is_some();
        let added: u64 = files.iter().map(|f| f.size).sum();
        let bytes = self.bytes;
        let (out, replaced) = tokio::task::spawn_blocking(move || {
            // Sizes of the versions these replace (for the logical-bytes gauge).
            let mut replaced = 0;
            if metered {
                let paths: Vec<RepoPath> = files.iter().map(|f| f.path.clone()).collect();
                for v in catalog.latest_many(&tenant, &paths)?.into_iter().flatten() {
                    replaced += v.size;
                }
            }
            Ok::<_, Error>((catalog.commit_batch(&tenant, &packs, files)?, replaced))
        })
        .await
        .map_err(join_err)??;
        self.t.repo.inner.count_blob_commit();
        self.t.meter_write(
            bytes,
            added as i64 - replaced as i64,
            stored as i64,
            created_ns,
        );
        Ok(out)
    }
}

/// Seals the chunks of pack `id` into a pooled pack buffer as they
/// arrive, then adds the trailer and erasure-codes it (on the pack's own
/// thread, for the pack's whole life).
fn seal_pack(
    repo: &Repository,
    sealer: &Sealer,
    seal_key: &asheville_core::keys::SealKey,
    tenant: &str,
    id: PackId,
    mut rx: tokio::sync::mpsc::Receiver<Vec<(ChunkId, PackItem)>>,
) -> Result<SealedPack> {
    let inner = &repo.inner;
    // Room for the largest pack; a trailer of very many blobs may grow it.
    let mut data = inner.pack_bufs.take(0);
    // The pack starts `lead` bytes in, where its shard payloads line up
    // with their files' blocks behind the shard header.
    let lead = payload_lead(data.as_ptr());
    data.resize(lead, 0);
    let mut entries = Vec::new();
    while let Some(handful) = rx.blocking_recv() {
        for (cid, item) in handful {
            let at = data.len();
            match item {
                PackItem::Plain(chunk) => sealer.seal_into(&cid, &chunk, &mut data)?,
                PackItem::Sealed(blob) => data.extend_from_slice(&blob),
            }
            entries.push(TrailerEntry {
                id: cid,
                offset: (at - lead) as u64,
                len: (data.len() - at) as u32,
            });
        }
    }
    let k = inner.config.redundancy.data_shards();
    let multiple = if k > 1 { k * SHARD_BLOCK } else { 1 };
    pack::finish_padded(&mut data, lead, &id, tenant, seal_key, &entries, multiple)?;
    let data_len = (data.len() - lead) as u64;
    // Parity buffers the encoder needs (none for `none` and replicas).
    let parity_count = match inner.config.redundancy {
        asheville_core::Redundancy::ReedSolomon { parity, .. } => usize::from(parity),
        _ => 0,
    };
    if inner.stream_parity {
        return Ok(SealedPack {
            enc: inner.codec.encode_data_in_phase(data, lead)?,
            parity: inner.codec.parity_shards(data_len),
            entries,
            data_len,
        });
    }
    let spare = (0..parity_count)
        .map(|_| inner.parity_bufs.take(0))
        .collect();
    Ok(SealedPack {
        enc: inner.codec.encode_pack_in_phase(data, lead, spare)?,
        parity: Vec::new(),
        entries,
        data_len,
    })
}

/// The block `O_DIRECT` writes come in on the devices this was measured
/// on (`statx` gives 512 for memory and offsets on ext4 over virtio): a
/// pack of `rs(k, m)` is padded to a multiple of `k` blocks (at most
/// `k × 512 - 1` bytes), so every data shard's payload starts on a block
/// boundary of the pack buffer, not only the first.
const SHARD_BLOCK: usize = 512;

/// How far into a buffer at `ptr` a pack must start for the payloads of
/// its shards, written behind their [`SHARD_HEADER_LEN`]-byte headers, to
/// line up in memory with their blocks in the shard files, so that
/// `O_DIRECT` writes them straight from the buffer instead of copying them
/// through a bounce buffer (~4% of a put's CPU). Reed-Solomon places the
/// parity payloads in the same phase
/// ([`asheville_core::redundancy::Codec::encode_pack_in_phase`]).
fn payload_lead(ptr: *const u8) -> usize {
    use asheville_core::redundancy::PAYLOAD_PHASE;
    // Arithmetic on the address; no pointer is dereferenced.
    let at = ptr as usize % PAYLOAD_PHASE;
    (PAYLOAD_PHASE + SHARD_HEADER_LEN % PAYLOAD_PHASE - at) % PAYLOAD_PHASE
}

/// A pack and its blobs, as the catalog records them.
type RecordedPack = (PackRecord, Vec<(ChunkId, BlobLoc)>);

/// Records `packs` in `t`'s catalog ([`Catalog::commit_packs`]).
async fn record_packs(t: &Tenant, packs: Vec<RecordedPack>, moving: bool) -> Result<()> {
    if packs.is_empty() {
        return Ok(());
    }
    let catalog = t.repo.inner.catalog.clone();
    tokio::task::spawn_blocking(move || catalog.commit_packs(&packs, moving))
        .await
        .map_err(join_err)??;
    t.repo.inner.count_blob_commit();
    Ok(())
}

/// A pack whose shards are written but not yet synced nor recorded.
struct StoredPack {
    record: PackRecord,
    blobs: Vec<(ChunkId, BlobLoc)>,
    /// (backend index, key) of each shard, to sync.
    keys: Vec<(usize, String)>,
    /// Shard bytes written.
    bytes: u64,
}

/// Writes every shard of a sealed pack to its backend
/// ([`Backend::put_unsynced`]); [`PackWriter::finish`] syncs them and
/// records the pack.
///
/// [`Backend::put_unsynced`]: crate::backend::Backend::put_unsynced
async fn upload_pack(t: &Tenant, id: PackId, pack: SealedPack) -> Result<StoredPack> {
    let inner = &t.repo.inner;
    let SealedPack {
        enc,
        parity: to_make,
        entries,
        data_len,
    } = pack;
    let tenant = t.name.as_str();
    let n = inner.config.redundancy.total_shards();
    // Shards in `enc`: all of them, or the data shards when parity is
    // made as it is written (the rest, `to_make`).
    let made = enc.shard_count();
    let targets = inner.placement.place(id.as_bytes(), n)?;
    let headers: Vec<Bytes> = (0..made)
        .map(|i| Bytes::copy_from_slice(enc.header(i)))
        .collect();
    let enc_object_len = enc.shard_object_len();
    let shard_len = enc_object_len - SHARD_HEADER_LEN;
    let k = inner.config.redundancy.data_shards();
    let ranges: Vec<_> = (0..made).map(|i| enc.payload_range(i)).collect();
    let (data, parity) = enc.into_buffers();
    let data = Bytes::from(data);
    let parity: Vec<Bytes> = parity.into_iter().map(Bytes::from).collect();
    let data_ranges: Vec<_> = ranges.iter().take(k).cloned().collect();
    let mut payloads = ranges.into_iter().enumerate().map(|(i, r)| {
        debug_assert_eq!(r.len(), shard_len);
        if i < k || parity.is_empty() {
            data.slice(r)
        } else {
            parity[i - k].slice(r)
        }
    });
    let mut to_make = to_make.into_iter();
    let mut puts: Vec<futures::future::BoxFuture<'_, Result<()>>> = Vec::with_capacity(n);
    for (i, &b) in targets.iter().enumerate() {
        let key = shard_key(&id, i);
        let backend = inner.backends[b].clone();
        if i < made {
            let (h, p) = (headers[i].clone(), payloads.next());
            let p = p.ok_or_else(|| Error::new(ErrorKind::Other, "a shard has no payload"))?;
            puts.push(Box::pin(async move {
                backend.put_unsynced(&key, vec![h, p]).await
            }));
        } else {
            let shard = to_make
                .next()
                .ok_or_else(|| Error::new(ErrorKind::Other, "a parity shard is missing"))?;
            let obj = ParityObject {
                shard,
                data: data.clone(),
                ranges: data_ranges.clone(),
            };
            puts.push(Box::pin(async move {
                backend.put_unsynced_made(&key, Box::new(obj)).await
            }));
        }
    }
    drop(payloads);
    futures::future::try_join_all(puts).await?;
    // Unique again once every upload has let go of its slice.
    inner.pack_bufs.give_bytes(data);
    for b in parity {
        inner.parity_bufs.give_bytes(b);
    }
    let record = PackRecord {
        id,
        tenant: tenant.to_owned(),
        data_len,
        redundancy: inner.config.redundancy.to_string(),
        shards: targets
            .iter()
            .map(|&b| inner.config.backends[b].name.clone())
            .collect(),
    };
    let blobs: Vec<_> = entries.iter().map(|e| (e.id, e.loc(id))).collect();
    Ok(StoredPack {
        record,
        blobs,
        keys: targets
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, shard_key(&id, i)))
            .collect(),
        bytes: (n * enc_object_len) as u64,
    })
}

/// Metadata of a local file.
pub fn local_meta(m: &std::fs::Metadata) -> FileMeta {
    let mtime_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    #[cfg(unix)]
    let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777;
    #[cfg(not(unix))]
    let mode = 0;
    FileMeta { mtime_ns, mode }
}

impl Tenant {
    /// Opens (and reads, when small) `paths` in one blocking call, as
    /// [`LocalFile::open_group`] does, and prepares each file read whole
    /// for [`Batch::add_local`]: cuts it, hashes its chunks and seals each
    /// chunk the catalog lacks. A caller that runs this ahead (as
    /// [`crate::tree::put_tree`] does) moves that work, compression above
    /// all, off the batch's path: it runs while the batch waits for its
    /// packs to be written. A chunk sealed here and stored meanwhile by
    /// another writer is stored twice; nothing is lost.
    pub async fn open_group(
        &self,
        paths: Vec<std::path::PathBuf>,
    ) -> Result<Vec<Result<LocalFile>>> {
        let t = self.clone();
        tokio::task::spawn_blocking(move || t.open_group_blocking(paths))
            .await
            .map_err(join_err)
    }

    /// See [`Tenant::open_group`]. The group's small files are read, one
    /// after the other, into one buffer, and their blobs sealed into
    /// another that they share: a few allocations a group, not a few a
    /// file.
    fn open_group_blocking(&self, paths: Vec<std::path::PathBuf>) -> Vec<Result<LocalFile>> {
        let mut group = GroupPrep {
            keys: self.key_check,
            looked_up: self.repo.inner.blob_commits(),
            sealed: HashSet::new(),
            blobs: Vec::new(),
        };
        let mut data = Vec::new();
        let staged: Vec<_> = paths
            .iter()
            .map(|p| match LocalFile::open_into(p, &mut data)? {
                Err(file) => Ok(Err(file)),
                Ok(meta) => self.prepare(&data, &mut group).map(|f| Ok((meta, f))),
            })
            .collect();
        let GroupPrep {
            keys,
            looked_up,
            blobs,
            ..
        } = group;
        let blobs = Bytes::from(blobs);
        let ready = |c: PreparedChunk<Staged>| PreparedChunk {
            id: c.id,
            len: c.len,
            body: c.body.into_item(&blobs),
        };
        staged
            .into_iter()
            .map(|f| {
                Ok(match f? {
                    Err(file) => file,
                    Ok((meta, (size, chunks))) => LocalFile::Prepared {
                        meta,
                        file: PreparedFile {
                            keys,
                            looked_up,
                            size,
                            chunks: chunks.into_iter().map(ready).collect(),
                        },
                    },
                })
            })
            .collect()
    }

    /// [`Tenant::open_group`] for each of `groups` (its paths, and the
    /// bytes its files up to [`READ_WHOLE_LIMIT`] were listed with), in
    /// order, on a thread of its own that runs ahead of the receiver by up
    /// to `ahead` groups and `ahead_bytes` bytes of such files (a group
    /// with more than that runs alone). Each group comes with its share of
    /// those bytes, given back when it is dropped. In order, so that the
    /// group the caller waits for is never behind the ones after it (as it
    /// was with groups opened concurrently on the blocking pool); on a
    /// thread of its own, as a pack's sealing thread is, so that it holds
    /// none of the blocking pool's threads. It stops when the receiver is
    /// dropped.
    pub(crate) fn open_ahead(
        &self,
        groups: Vec<(Vec<std::path::PathBuf>, u64)>,
        ahead: usize,
        ahead_bytes: u32,
    ) -> Result<tokio::sync::mpsc::Receiver<(Vec<Result<LocalFile>>, OpenedBytes)>> {
        let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
        let ahead_bytes = ahead_bytes.max(1);
        let budget = Arc::new(tokio::sync::Semaphore::new(ahead_bytes as usize));
        let t = self.clone();
        std::thread::Builder::new()
            .name("asheville-open".into())
            .spawn(move || {
                for (g, bytes) in groups {
                    let share = u32::try_from(bytes)
                        .unwrap_or(u32::MAX)
                        .clamp(1, ahead_bytes);
                    // Not on a runtime thread: blocking here is what it is for.
                    let Ok(permit) =
                        futures::executor::block_on(budget.clone().acquire_many_owned(share))
                    else {
                        return;
                    };
                    let opened = t.open_group_blocking(g);
                    if tx
                        .blocking_send((opened, OpenedBytes { _share: permit }))
                        .is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the thread that reads files ahead", e))?;
        Ok(rx)
    }

    /// Whether the catalog has a live blob (in no condemned pack) of `id`
    /// for this tenant: what dedup stores no chunk again for.
    fn has_blob(&self, id: &ChunkId) -> Result<bool> {
        let catalog = &self.repo.inner.catalog;
        Ok(catalog.blob_for_dedup(&self.name, id)?.is_some())
    }

    /// Cuts `data` (a small file), hashes its chunks and seals those
    /// that are neither in the catalog nor sealed for the group already
    /// into `group.blobs`; returns the file's size and chunks.
    fn prepare(
        &self,
        data: &[u8],
        group: &mut GroupPrep,
    ) -> Result<(u64, Vec<PreparedChunk<Staged>>)> {
        let config = &self.repo.inner.config.chunker;
        let ranges = if data.len() <= config.min_size as usize {
            // One chunk, or none for an empty file.
            std::iter::once(0..data.len()).collect()
        } else {
            asheville_core::chunker::chunk_slice(config, data)?
        };
        let mut chunks = Vec::with_capacity(ranges.len());
        for r in ranges.into_iter().filter(|r| !r.is_empty()) {
            let plain = &data[r];
            let id = self.keys.chunk_id(plain);
            let stored = group.sealed.contains(&id) || self.has_blob(&id)?;
            let body = if stored {
                // Rare: kept to be stored should it be needed after all.
                Staged::Plain(Bytes::copy_from_slice(plain))
            } else {
                let at = group.blobs.len();
                self.sealer.seal_into(&id, plain, &mut group.blobs)?;
                group.sealed.insert(id);
                Staged::Sealed(at..group.blobs.len())
            };
            chunks.push(PreparedChunk {
                id,
                len: plain.len() as u32,
                body,
            });
        }
        Ok((data.len() as u64, chunks))
    }

    /// Writes a journal record of `ops` to every backend (see [`crate::journal`]).
    async fn write_journal(
        &self,
        created_ns: i64,
        ops: Vec<crate::journal::JournalOp>,
    ) -> Result<()> {
        let key = crate::journal::object_key(&self.name, created_ns)?;
        let bytes = Bytes::from(crate::journal::seal(
            self.keys.seal_key(),
            &key,
            &crate::journal::JournalRecord { created_ns, ops },
        )?);
        futures::future::try_join_all(
            self.repo
                .inner
                .backends
                .iter()
                .map(|b| b.put(&key, vec![bytes.clone()])),
        )
        .await?;
        Ok(())
    }

    /// Whether a meter store is attached and holds a quota for this
    /// tenant (one with at least one limit).
    pub(crate) fn has_quota(&self) -> Result<bool> {
        let Some(meter) = &self.meter else {
            return Ok(false);
        };
        let q = meter.quota(&self.name)?;
        Ok(q.max_stored_bytes.is_some() || q.max_ingest_per_day.is_some())
    }

    /// This tenant with usage metering and quotas: writes are checked
    /// against the tenant's quota in `store` before any byte is written
    /// (see [`Batch`]), and committed writes, deletes and reads record
    /// `storage.bytes_ingested`, `storage.bytes_stored` (physical, shard
    /// bytes), `storage.bytes_stored.logical` and `storage.bytes_served`.
    ///
    /// Recording happens after the data is durable and is best effort: a
    /// meter store that fails does not fail a write that succeeded.
    pub fn with_meter(&self, store: Arc<dyn crate::metering::MeterStore>) -> Tenant {
        let mut t = self.clone();
        t.meter = Some(store);
        t
    }

    /// The attached meter store, if any.
    pub fn meter(&self) -> Option<&Arc<dyn crate::metering::MeterStore>> {
        self.meter.as_ref()
    }

    fn usage_key(kind: &str, at_ns: i64) -> String {
        let r = PackId::random().map(|p| p.to_string()).unwrap_or_default();
        format!("{kind}-{at_ns}-{r}")
    }

    fn meter_write(&self, ingested: u64, logical_delta: i64, physical_delta: i64, at_ns: i64) {
        use asheville_core::metering::{
            BYTES_INGESTED, BYTES_STORED, BYTES_STORED_LOGICAL, Dimensions, UsageEvent,
        };
        let Some(m) = &self.meter else { return };
        let dims = Dimensions::default();
        if ingested > 0 {
            let _ = m.record(&[UsageEvent {
                idempotency_key: Self::usage_key("ingest", at_ns),
                tenant: self.name.clone(),
                meter: BYTES_INGESTED.into(),
                value: ingested,
                at_ns,
                dims: dims.clone(),
            }]);
        }
        for (meter, delta) in [
            (BYTES_STORED_LOGICAL, logical_delta),
            (BYTES_STORED, physical_delta),
        ] {
            if delta != 0 {
                let key = Self::usage_key("gauge", at_ns);
                let _ = m.adjust_gauge(&self.name, meter, &dims, delta, at_ns, &key);
            }
        }
    }

    fn meter_served(&self, bytes: u64) {
        let Some(m) = &self.meter else { return };
        let at_ns = crate::catalog::now_ns();
        let _ = m.record(&[asheville_core::metering::UsageEvent {
            idempotency_key: Self::usage_key("served", at_ns),
            tenant: self.name.clone(),
            meter: asheville_core::metering::BYTES_SERVED.into(),
            value: bytes,
            at_ns,
            dims: Default::default(),
        }]);
    }

    /// The tenant's id of `data`: the keyed BLAKE3 hash under the
    /// tenant's id key (the id its chunk would have; ids of one content
    /// differ between tenants).
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        self.keys.chunk_id(data)
    }

    /// The repository this tenant lives in.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stores `reader`'s bytes as a new version of `path`. Returns once
    /// the version is durable and visible: every chunk stored on its
    /// backends and committed. Chunks already stored (by any earlier write
    /// of this tenant) are not stored again. For many files, a [`Batch`]
    /// shares packs between them and commits them together.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        reader: R,
        meta: FileMeta,
    ) -> Result<FileVersion> {
        let mut batch = self.batch();
        batch.add(path, reader, meta).await?;
        let mut v = batch.commit().await?;
        v.pop()
            .ok_or_else(|| Error::new(ErrorKind::Other, "commit returned no version"))
    }

    /// Stores the local file at `local` (content, mtime, permissions).
    pub async fn put_path(&self, path: &str, local: &Path) -> Result<FileVersion> {
        let mut batch = self.batch();
        batch.add_path(path, local).await?;
        let mut v = batch.commit().await?;
        v.pop()
            .ok_or_else(|| Error::new(ErrorKind::Other, "commit returned no version"))
    }

    /// A batch of writes that share packs and become visible together.
    pub fn batch(&self) -> Batch<'_> {
        self.batch_sharing(self.pack_permits())
    }

    /// Permits for `packs_in_flight` packs open or uploading.
    pub(crate) fn pack_permits(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.repo.inner.config.packs_in_flight))
    }

    /// A batch whose packs take `permits` (from [`Tenant::pack_permits`]):
    /// batches that share them, one filling while another commits, stay
    /// within the memory of `packs_in_flight` packs together.
    pub(crate) fn batch_sharing(&self, permits: Arc<Semaphore>) -> Batch<'_> {
        self.batch_after(permits, Arc::default())
    }

    /// [`Tenant::batch_sharing`] for the batch that fills while another
    /// commits: the chunks of that one (`earlier`, from
    /// [`Batch::commit_handing_on`]) are not stored again.
    pub(crate) fn batch_after(
        &self,
        permits: Arc<Semaphore>,
        earlier: Arc<HashSet<ChunkId>>,
    ) -> Batch<'_> {
        Batch {
            t: self,
            writer: PackWriter::new(self, permits),
            files: Vec::new(),
            bytes: 0,
            failed: false,
            quota: None,
            earlier,
        }
    }

    /// The latest version's metadata. `NotFound` if there is no live file.
    pub fn stat(&self, path: &str) -> Result<FileVersion> {
        let p = RepoPath::parse(path)?;
        self.repo
            .inner
            .catalog
            .latest(&self.name, &p)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such file").with_context("path", &p))
    }

    /// Every path with versions (live or deleted), in order, after `after`.
    pub fn all_paths(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.repo.inner.catalog.paths(&self.name, after, limit)
    }

    /// All versions of `path`, oldest first (also of a deleted file).
    pub fn versions(&self, path: &str) -> Result<Vec<FileVersion>> {
        let p = RepoPath::parse(path)?;
        self.repo.inner.catalog.versions(&self.name, &p)
    }

    /// Lists `dir` down to `depth` levels, `limit` entries per page, from
    /// `cursor` (from the previous page).
    pub fn list(
        &self,
        dir: &str,
        depth: usize,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        self.namespace()
            .list(&RepoPath::parse(dir)?, depth, cursor, limit)
    }

    /// Deletes `path`: it disappears from listings and `stat`; its versions
    /// stay readable through [`Tenant::versions`] until retention removes them.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let p = RepoPath::parse(path)?;
        let Some(latest) = self.repo.inner.catalog.latest(&self.name, &p)? else {
            return Err(Error::new(ErrorKind::NotFound, "no such file").with_context("path", &p));
        };
        self.write_journal(
            crate::catalog::now_ns(),
            vec![crate::journal::JournalOp::Delete {
                path: p.as_str().to_owned(),
            }],
        )
        .await?;
        self.repo.inner.catalog.delete(&self.name, &p)?;
        self.meter_write(0, -(latest.size as i64), 0, crate::catalog::now_ns());
        Ok(())
    }

    /// Applies a retention rule to every file under `prefix` (live or
    /// deleted): a version is kept if it is among the newest `keep_last`,
    /// or committed within `keep_within_ns`; the latest version of a live
    /// file is always kept. Forgetting drops the version's references
    /// (what `gc` later reclaims) and is journaled first, so a rebuilt
    /// catalog forgets the same versions.
    pub async fn apply_retention(&self, prefix: &str, rule: Retention) -> Result<RetentionReport> {
        if rule.keep_last.is_none() && rule.keep_within_ns.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a retention rule needs keep_last and/or keep_within",
            ));
        }
        let root = RepoPath::parse(prefix)?;
        let inner = &self.repo.inner;
        let now = crate::catalog::now_ns();
        let mut report = RetentionReport::default();
        let mut doomed: Vec<(RepoPath, u64)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = inner.catalog.paths(&self.name, after.as_deref(), 1000)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for p in page {
                let under = root.is_root()
                    || p == root.as_str()
                    || p.starts_with(&format!("{}/", root.as_str()));
                if !under {
                    continue;
                }
                report.paths += 1;
                let path = RepoPath::parse(&p)?;
                let live = inner.catalog.latest(&self.name, &path)?.map(|v| v.version);
                let mut versions = inner.catalog.versions(&self.name, &path)?;
                versions.reverse(); // newest first
                for (rank, v) in versions.iter().enumerate() {
                    let keep = Some(v.version) == live
                        || rule.keep_last.is_some_and(|n| rank < n)
                        || rule.keep_within_ns.is_some_and(|d| now - v.created_ns <= d);
                    if keep {
                        report.kept += 1;
                    } else {
                        doomed.push((path.clone(), v.version));
                    }
                }
            }
            after = Some(last);
        }
        if doomed.is_empty() {
            return Ok(report);
        }
        let ops = doomed
            .iter()
            .map(|(p, v)| crate::journal::JournalOp::Forget {
                path: p.as_str().to_owned(),
                version: *v,
            })
            .collect();
        self.write_journal(now, ops).await?;
        for (p, v) in doomed {
            inner.catalog.forget_version(&self.name, &p, v)?;
            report.forgotten += 1;
        }
        Ok(report)
    }

    /// Garbage collection for this tenant, in two phases so that neither a
    /// concurrent reader nor a concurrent writer loses a chunk:
    ///
    /// 1. *Sweep*: packs condemned at least `grace_ns` ago are re-checked
    ///    in one catalog transaction; if still dead, their blobs and record
    ///    go, then their shard objects. If a writer referenced one of their
    ///    blobs meanwhile, the pack is kept.
    /// 2. *Mark*: packs with no referenced blob are condemned; packs whose
    ///    live share is under `repack_below` have their live blobs copied
    ///    into new packs (entries move) and are condemned. Deduplication
    ///    ignores condemned packs, so new writes store such chunks again;
    ///    readers still find them until the sweep.
    pub async fn gc(&self, opts: GcOptions) -> Result<GcReport> {
        self.gc_with_progress(opts, &crate::tree::NoProgress).await
    }

    /// [`Tenant::gc`], reporting each pack it examines.
    pub async fn gc_with_progress(
        &self,
        opts: GcOptions,
        progress: &dyn crate::maintenance::PackProgress,
    ) -> Result<GcReport> {
        let inner = &self.repo.inner;
        let now = crate::catalog::now_ns();
        let mut report = GcReport::default();
        for (pack, at) in inner.catalog.condemned(&self.name)? {
            if now - at < opts.grace_ns {
                continue;
            }
            let rec = self.repo.pack_record(&pack)?;
            if inner.catalog.sweep(&pack)? {
                report.packs_deleted += 1;
                for (i, name) in rec.shards.iter().enumerate() {
                    if let Some(b) = inner.backends.iter().find(|b| b.name() == name) {
                        b.delete(&shard_key(&pack, i)).await?;
                        report.objects_deleted += 1;
                    }
                }
                inner
                    .packs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&pack);
            } else {
                report.packs_revived += 1;
            }
        }
        let condemned: HashSet<PackId> = inner
            .catalog
            .condemned(&self.name)?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let mut live: HashMap<PackId, (u64, Vec<ChunkId>)> = HashMap::new();
        let mut seen: HashSet<PackId> = HashSet::new();
        for (id, loc, refs) in inner.catalog.tenant_blobs(&self.name)? {
            seen.insert(loc.pack);
            if refs > 0 {
                let e = live.entry(loc.pack).or_default();
                e.0 += u64::from(loc.len);
                e.1.push(id);
            }
        }
        let mut writer = PackWriter::new(self, self.pack_permits());
        writer.moving = true;
        let mut repacked = Vec::new();
        for pack in seen {
            progress.pack_done();
            if condemned.contains(&pack) {
                continue;
            }
            match live.get(&pack) {
                None => {
                    inner.catalog.condemn(&pack, now)?;
                    report.packs_condemned += 1;
                }
                Some((bytes, ids)) => {
                    let rec = self.repo.pack_record(&pack)?;
                    if (*bytes as f64) < opts.repack_below * rec.data_len as f64 {
                        for id in ids {
                            let plain = self.read_plain(id, false).await?;
                            writer.add(*id, plain).await?;
                            report.blobs_moved += 1;
                        }
                        repacked.push(pack);
                    }
                }
            }
        }
        writer.finish().await?;
        for pack in repacked {
            inner.catalog.condemn(&pack, now)?;
            report.packs_repacked += 1;
            report.packs_condemned += 1;
        }
        self.repo.compact_catalog().await.map_err(|e| {
            e.with_context(
                "note",
                "the gc is done and committed; only compacting the catalog failed",
            )
        })?;
        Ok(report)
    }

    /// Writes the latest version of `path` to `out`.
    pub async fn get<W: AsyncWrite + Unpin>(&self, path: &str, out: &mut W) -> Result<FileVersion> {
        let fv = self.stat(path)?;
        self.write_version(&fv, out).await?;
        Ok(fv)
    }

    /// Writes version `version` of `path` to `out`.
    pub async fn get_version<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        version: u64,
        out: &mut W,
    ) -> Result<FileVersion> {
        let p = RepoPath::parse(path)?;
        let fv = self
            .repo
            .inner
            .catalog
            .version(&self.name, &p, version)?
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound, "no such version")
                    .with_context("path", &p)
                    .with_context("version", version)
            })?;
        self.write_version(&fv, out).await?;
        Ok(fv)
    }

    /// Bytes `range` of the latest version of `path`.
    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let fv = self.stat(path)?;
        let mut out = Vec::with_capacity(range.end.saturating_sub(range.start) as usize);
        let mut stream = self.read_stream(&fv, range)?;
        while let Some(b) = stream.try_next().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// Streams bytes `range` of the version `fv`, one piece per chunk,
    /// reading up to four chunks ahead. The stream owns what it needs
    /// (`'static + Send`), so it can be handed to an HTTP body or another
    /// task. Served bytes are metered when the last piece is handed out.
    /// A range outside the file is an `InvalidInput` error.
    ///
    /// ```no_run
    /// # async fn f(t: asheville_storage::Tenant) -> asheville_storage::Result<()> {
    /// use futures::TryStreamExt;
    /// let fv = t.stat("/big.iso")?;
    /// let mut s = t.read_stream(&fv, 0..fv.size.min(4096))?;
    /// while let Some(piece) = s.try_next().await? {
    ///     println!("{} bytes", piece.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_stream(
        &self,
        fv: &FileVersion,
        range: Range<u64>,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        self.stream_pieces(fv, range, true)
    }

    /// [`Tenant::read_stream`], with the read cache used (`admit`) or not.
    fn stream_pieces(
        &self,
        fv: &FileVersion,
        range: Range<u64>,
        admit: bool,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        if range.start > range.end || range.end > fv.size {
            return Err(
                Error::new(ErrorKind::InvalidInput, "range outside the file")
                    .with_context("range", format!("{range:?}"))
                    .with_context("size", fv.size),
            );
        }
        let mut parts = Vec::new();
        let mut pos = 0u64;
        for c in &fv.chunks {
            let (lo, hi) = (pos, pos + u64::from(c.len));
            pos = hi;
            if hi <= range.start || lo >= range.end {
                continue;
            }
            let a = (range.start.max(lo) - lo) as usize;
            let b = (range.end.min(hi) - lo) as usize;
            parts.push((*c, a, b));
        }
        let parts_len = parts.len();
        let t = self.clone();
        let pieces = futures::stream::iter(parts)
            .map(move |(c, a, b)| {
                let t = t.clone();
                async move {
                    let data = t.read_chunk(&c, admit).await?;
                    // No copy: the piece shares the chunk's buffer (also
                    // held by the read cache).
                    Ok::<_, Error>(data.slice(a..b))
                }
            })
            .buffered(4);
        // Metered when the last piece is handed out (a consumer such as an
        // HTTP body with a known length may never poll past it).
        let t = self.clone();
        let served = range.end - range.start;
        let last = parts_len.saturating_sub(1);
        if parts_len == 0 {
            t.meter_served(0);
        }
        Ok(pieces
            .enumerate()
            .map(move |(i, piece)| {
                if i == last && piece.is_ok() {
                    t.meter_served(served);
                }
                piece
            })
            .boxed())
    }

    /// Writes the version `fv` to `out` without putting its chunks into the
    /// read cache: for restores, which read each chunk once.
    pub async fn restore_version<W: AsyncWrite + Unpin>(
        &self,
        fv: &FileVersion,
        out: &mut W,
    ) -> Result<()> {
        self.write_pieces(fv, out, false).await
    }

    /// The pieces of the whole version `fv`, read ahead without the read
    /// cache: for restores that write them out themselves.
    pub(crate) fn restore_stream(
        &self,
        fv: &FileVersion,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        self.stream_pieces(fv, 0..fv.size, false)
    }

    async fn write_version<W: AsyncWrite + Unpin>(
        &self,
        fv: &FileVersion,
        out: &mut W,
    ) -> Result<()> {
        self.write_pieces(fv, out, true).await
    }

    async fn write_pieces<W: AsyncWrite + Unpin>(
        &self,
        fv: &FileVersion,
        out: &mut W,
        admit: bool,
    ) -> Result<()> {
        let mut stream = self.stream_pieces(fv, 0..fv.size, admit)?;
        while let Some(data) = stream.try_next().await? {
            out.write_all(&data)
                .await
                .map_err(|e| Error::io("writing the output failed", e))?;
        }
        out.flush()
            .await
            .map_err(|e| Error::io("writing the output failed", e))?;
        Ok(())
    }

    /// Reads one chunk: straight from the data shards when all is well,
    /// otherwise from any `k` good shards of its pack. Never returns bytes
    /// that did not authenticate.
    ///
    /// `admit` puts the chunk into the read cache; whole-tree restores and
    /// repacks read each chunk once and pass `false`, so they neither fill
    /// the cache (memory) nor push out what other readers use.
    async fn read_chunk(&self, c: &ChunkRef, admit: bool) -> Result<Bytes> {
        let v = self.read_plain(&c.id, admit).await?;
        if v.len() != c.len as usize {
            return Err(Error::new(
                ErrorKind::Integrity,
                "chunk length differs from the catalog",
            )
            .with_context("chunk", c.id));
        }
        Ok(v)
    }

    /// This tenant's namespace in the catalog.
    pub(crate) fn namespace(&self) -> Namespace {
        self.repo.namespace(&self.name)
    }

    /// Many chunks at once, in the order given, for restores: blobs that
    /// lie within [`READ_GAP`] of each other in one data shard are fetched
    /// with one ranged read of at most [`READ_SPAN`] bytes. Whatever that
    /// path cannot serve (a shard offline or corrupt, a blob across two
    /// shards, a pack in the cache) goes through the single-chunk path,
    /// which decodes from any `k` good shards. Bypasses the read cache.
    /// Never returns bytes that did not authenticate.
    pub(crate) async fn read_chunks(&self, chunks: &[ChunkRef]) -> Result<Vec<Bytes>> {
        struct Want {
            pack: Arc<PackRecord>,
            shard: usize,
            range: Range<usize>,
            index: usize,
        }
        let inner = &self.repo.inner;
        let mut wants = Vec::with_capacity(chunks.len());
        let mut slow = Vec::new();
        for (index, c) in chunks.iter().enumerate() {
            let loc = inner.catalog.blob(&self.name, &c.id)?.ok_or_else(|| {
                Error::new(ErrorKind::Integrity, "chunk missing from the catalog")
                    .with_context("chunk", c.id)
            })?;
            let pack = self.repo.pack_record(&loc.pack)?;
            let mut parts = inner
                .codec
                .locate(pack.data_len, loc.offset..loc.offset + u64::from(loc.len))?;
            match parts.pop() {
                Some(part)
                    if parts.is_empty() && inner.cache.peek(&CacheKey::Pack(pack.id)).is_none() =>
                {
                    wants.push(Want {
                        pack,
                        shard: part.shard,
                        range: part.range,
                        index,
                    })
                }
                _ => slow.push(index),
            }
        }
        wants.sort_by(|a, b| {
            (a.pack.id, a.shard, a.range.start).cmp(&(b.pack.id, b.shard, b.range.start))
        });
        // Runs of nearby blobs: (first want, one past the last, byte range).
        let mut runs: Vec<(usize, usize, Range<usize>)> = Vec::new();
        for (i, w) in wants.iter().enumerate() {
            match runs.last_mut() {
                Some((first, end, r))
                    if wants[*first].pack.id == w.pack.id
                        && wants[*first].shard == w.shard
                        && w.range.start <= r.end + READ_GAP
                        && w.range.end.max(r.end) - r.start <= READ_SPAN =>
                {
                    *end = i + 1;
                    r.end = r.end.max(w.range.end);
                }
                _ => runs.push((i, i + 1, w.range.clone())),
            }
        }
        let wants = &wants;
        let mut out: Vec<Option<Bytes>> = vec![None; chunks.len()];
        let mut fetched =
            futures::stream::iter(runs.into_iter().map(|(first, end, r)| async move {
                let w = &wants[first];
                let lo = (SHARD_HEADER_LEN + r.start) as u64;
                let hi = (SHARD_HEADER_LEN + r.end) as u64;
                let bytes = match self.backend_of(&w.pack, w.shard) {
                    Ok(b) => b
                        .get_range(&shard_key(&w.pack.id, w.shard), lo..hi)
                        .await
                        .ok(),
                    Err(_) => None,
                };
                (first..end, r.start, bytes)
            }))
            .buffer_unordered(8);
        while let Some((members, base, bytes)) = fetched.next().await {
            // The run's blobs, each a slice of the run's buffer, opened in
            // place (members are in offset order; a chunk wanted twice has
            // the same range twice).
            let mut rest = match bytes.map(Bytes::try_into_mut) {
                Some(Ok(owned)) => owned,
                // Shared with someone else (not a local backend's read):
                // one copy, as opening each blob would make anyway.
                Some(Err(shared)) => BytesMut::from(&shared[..]),
                None => BytesMut::new(),
            };
            let mut at = base;
            let mut last: Option<(Range<usize>, Option<Bytes>)> = None;
            for w in &wants[members] {
                let c = &chunks[w.index];
                let plain = match &last {
                    Some((r, plain)) if *r == w.range => plain.clone(),
                    _ if w.range.start < at || w.range.end - at > rest.len() => None,
                    _ => {
                        rest.advance(w.range.start - at);
                        let blob = rest.split_to(w.range.len());
                        at = w.range.end;
                        let plain = open_mut(&self.sealer, &c.id, blob).ok();
                        last = Some((w.range.clone(), plain.clone()));
                        plain
                    }
                };
                match plain {
                    Some(p) if p.len() == c.len as usize => out[w.index] = Some(p),
                    _ => slow.push(w.index),
                }
            }
        }
        for index in slow {
            out[index] = Some(self.read_chunk(&chunks[index], false).await?);
        }
        out.into_iter()
            .map(|c| c.ok_or_else(|| Error::new(ErrorKind::Integrity, "chunk not read")))
            .collect()
    }

    /// A chunk's plaintext (authenticated), from the cache or the backends.
    async fn read_plain(&self, id: &ChunkId, admit: bool) -> Result<Bytes> {
        let id = *id;
        let inner = &self.repo.inner;
        let ck = CacheKey::Chunk(self.name.clone(), id);
        if let Some(v) = inner.cache.get(&ck) {
            return Ok(v);
        }
        let loc = inner.catalog.blob(&self.name, &id)?.ok_or_else(|| {
            Error::new(ErrorKind::Integrity, "chunk missing from the catalog")
                .with_context("chunk", id)
        })?;
        let pack = self.repo.pack_record(&loc.pack)?;
        let fast = match self.read_blob_direct(&pack, &loc).await {
            Ok(blob) => open_bytes(&self.sealer, &id, blob).map_err(Error::from),
            Err(e) => Err(e),
        };
        let plain = match fast {
            Ok(p) => p,
            Err(_) => {
                let data = self.read_pack(&pack).await?;
                let blob = data
                    .get(loc.offset as usize..(loc.offset + u64::from(loc.len)) as usize)
                    .ok_or_else(|| {
                        Error::new(ErrorKind::Integrity, "blob lies outside its pack")
                            .with_context("pack", pack.id)
                    })?;
                self.sealer
                    .open(&id, blob)
                    .map(Bytes::from)
                    .map_err(|e| Error::from(e).with_context("pack", pack.id))?
            }
        };
        if admit {
            inner.cache.put(ck, plain.clone());
        }
        Ok(plain)
    }

    /// The blob's bytes read straight from the data shard(s) holding them
    /// (as read, without a copy, when one shard holds all of it).
    async fn read_blob_direct(&self, pack: &PackRecord, loc: &BlobLoc) -> Result<Bytes> {
        let inner = &self.repo.inner;
        if let Some(data) = inner.cache.peek(&CacheKey::Pack(pack.id)) {
            let r = loc.offset as usize..(loc.offset + u64::from(loc.len)) as usize;
            if r.end > data.len() {
                return Err(Error::new(ErrorKind::Integrity, "blob outside pack"));
            }
            return Ok(data.slice(r));
        }
        let parts = inner
            .codec
            .locate(pack.data_len, loc.offset..loc.offset + u64::from(loc.len))?;
        // A blob across two data shards is read from both at once.
        let mut read = futures::future::try_join_all(parts.into_iter().map(|part| async move {
            let b = self.backend_of(pack, part.shard)?;
            let lo = (SHARD_HEADER_LEN + part.range.start) as u64;
            let hi = (SHARD_HEADER_LEN + part.range.end) as u64;
            b.get_range(&shard_key(&pack.id, part.shard), lo..hi).await
        }))
        .await?;
        Ok(match read.len() {
            1 => read.swap_remove(0),
            _ => read.concat().into(),
        })
    }

    fn backend_of(&self, pack: &PackRecord, shard: usize) -> Result<&DynBackend> {
        let inner = &self.repo.inner;
        let name = pack
            .shards
            .get(shard)
            .ok_or_else(|| Error::new(ErrorKind::Integrity, "pack record lacks a shard"))?;
        let i = inner.by_name.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::Insufficient,
                "shard is on a backend that is not configured",
            )
            .with_context("backend", name)
        })?;
        Ok(&inner.backends[*i])
    }

    /// The whole pack, decoded from whichever shards verify (cached).
    async fn read_pack(&self, pack: &PackRecord) -> Result<Bytes> {
        let inner = &self.repo.inner;
        let key = CacheKey::Pack(pack.id);
        if let Some(v) = inner.cache.peek(&key) {
            return Ok(v);
        }
        let shards: Vec<Option<Bytes>> =
            futures::future::join_all((0..pack.shards.len()).map(|i| async move {
                let b = self.backend_of(pack, i).ok()?;
                b.get(&shard_key(&pack.id, i)).await.ok()
            }))
            .await;
        let slots: Vec<Option<&[u8]>> = shards.iter().map(|s| s.as_deref()).collect();
        let decoded = inner
            .codec
            .decode(&slots)
            .map_err(|e| Error::from(e).with_context("pack", pack.id))?;
        let v = Bytes::from(decoded.data);
        inner.cache.put(key, v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_shard_key_is_under_the_prefix_of_its_packs_first_byte() {
        for _ in 0..64 {
            let id = PackId::random().unwrap();
            let hex = id.to_hex();
            let prefix = shard_prefix(id.as_bytes()[0]);
            assert_eq!(prefix, format!("packs/{}", &hex[..2]));
            assert_eq!(shard_key(&id, 3), format!("{prefix}/{hex}.3"));
        }
    }

    /// The thread that opens files ahead stops at its byte budget, and
    /// goes on as groups are taken; a group over the whole budget runs
    /// alone. With a count of groups as the only bound (100 here), all
    /// nine would be read at once.
    #[tokio::test]
    async fn files_are_opened_ahead_within_their_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RepoConfig::local(dir.path(), 1, asheville_core::Redundancy::None);
        config.kdf = asheville_core::KdfParams::INSECURE_FAST_FOR_TESTS;
        let repo = Repository::create(&dir.path().join("c.redb"), config)
            .await
            .unwrap();
        let t = repo
            .create_tenant("acme", TenantKey::Passphrase("pw".into()))
            .await
            .unwrap();
        let file = |name: &str, len: usize| {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![name.len() as u8; len]).unwrap();
            p
        };
        // Eight groups of 300 KB and, last, one of 2 MB: three of 300 KB
        // fit in 1 MB, four do not.
        let mut groups: Vec<_> = (0..8)
            .map(|i| (vec![file(&format!("f{i}"), 300_000)], 300_000))
            .collect();
        groups.push((vec![file("big", 2_000_000)], 2_000_000));
        let mut rx = t.open_ahead(groups, 100, 1_000_000).unwrap();
        // How many groups are ready once the thread stops (it must get to
        // three), and a moment more, in which it would read on were it
        // not held back.
        async fn ahead_when_settled<T>(rx: &tokio::sync::mpsc::Receiver<T>) -> usize {
            let waited = std::time::Instant::now();
            while rx.len() < 3 && waited.elapsed() < std::time::Duration::from_secs(20) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            rx.len()
        }
        assert_eq!(ahead_when_settled(&rx).await, 3);
        // Taking one lets one more in.
        let (first, share) = rx.recv().await.unwrap();
        assert!(matches!(first[..], [Ok(LocalFile::Prepared { .. })]));
        drop(share);
        assert_eq!(ahead_when_settled(&rx).await, 3);
        // The rest, in order, the large file last.
        let mut kinds = Vec::new();
        while let Some((group, _share)) = rx.recv().await {
            for f in group {
                kinds.push(matches!(f.unwrap(), LocalFile::Stream { .. }));
            }
        }
        assert_eq!(
            kinds,
            [false, false, false, false, false, false, false, true]
        );
    }

    #[test]
    fn a_small_file_is_read_whole_whatever_room_was_reserved_for_it() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 63, 64, 65, 4099, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &bytes).unwrap();
            // The size as taken; less, as if the file grew after it was
            // taken (by a few bytes, by more than the probe, from empty);
            // and more, as if it shrank.
            for room in [len, len.saturating_sub(3), len / 2, 0, len + 100] {
                let mut f = std::fs::File::open(&path).unwrap();
                let mut data = Vec::with_capacity(room);
                read_whole(&mut f, &mut data).unwrap();
                assert_eq!(data, bytes, "{len} bytes into room for {room}");
            }
        }
    }
}
