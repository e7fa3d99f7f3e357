//! The catalog: what is stored where. A trait, so a PostgreSQL catalog can
//! replace the embedded redb one for many nodes.
//!
//! Commit order (DESIGN.md's write path), which the Repository follows and
//! the catalog's transactions make atomic:
//! 1. every shard of a pack is durably on its backend;
//! 2. [`Catalog::commit_pack`] records the pack and its blobs in one
//!    transaction;
//! 3. [`Catalog::commit_versions`] checks that every chunk of the files is
//!    a committed blob, then records the versions and their references in
//!    one transaction.
//!
//! A put's batch does 2 and 3 in one transaction
//! ([`Catalog::commit_batch`], after its journal record): one commit (and
//! sync) fewer per batch, on the path each next batch waits for.
//!
//! A crash between steps leaves unreferenced blobs or unlisted shards
//! (garbage for `gc`), never a version that points at missing data.

use asheville_core::{ChunkId, PackId};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::path::RepoPath;

mod redb_catalog;
pub use redb_catalog::RedbCatalog;

/// Where a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLoc {
    /// The pack.
    pub pack: PackId,
    /// Offset of the blob in the pack.
    pub offset: u64,
    /// Length of the blob.
    pub len: u32,
}

/// A committed pack: where each of its shards is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRecord {
    /// Pack id.
    pub id: PackId,
    /// Owning tenant.
    pub tenant: String,
    /// Length of the pack (blobs + trailer) before sharding.
    pub data_len: u64,
    /// Redundancy policy, as text (`rs(4,2)`).
    pub redundancy: String,
    /// Backend name holding shard `i`.
    pub shards: Vec<String>,
}

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Chunk id.
    pub id: ChunkId,
    /// Plaintext length.
    pub len: u32,
}

/// File metadata kept with each version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileMeta {
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Unix permission bits (0 if unknown).
    pub mode: u32,
}

/// A version to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    /// Path.
    pub path: RepoPath,
    /// Size in bytes.
    pub size: u64,
    /// Metadata.
    pub meta: FileMeta,
    /// Chunks in order.
    pub chunks: Vec<ChunkRef>,
    /// Commit time, ns since the epoch (the journal records the same).
    pub created_ns: i64,
    /// The version number to use; 0 = the next one. A rebuild replays
    /// numbers from the journal, skipping versions that were forgotten.
    pub version: u64,
}

/// Now, in ns since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A reference-count disagreement found by [`Catalog::audit_refs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefProblem {
    /// Tenant.
    pub tenant: String,
    /// Chunk.
    pub chunk: ChunkId,
    /// Count stored in the catalog.
    pub stored: u64,
    /// Count computed from the version records.
    pub computed: u64,
    /// Whether the blob itself is recorded (a version pointing at a missing
    /// blob is a dangling reference).
    pub blob_exists: bool,
}

/// One version of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// Path.
    pub path: String,
    /// Version number, from 1, increasing per path.
    pub version: u64,
    /// Size in bytes.
    pub size: u64,
    /// Metadata.
    pub meta: FileMeta,
    /// When the version was committed (ns since the epoch).
    pub created_ns: i64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// An entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    /// A file (its latest version).
    File {
        /// Path.
        path: String,
        /// Size.
        size: u64,
        /// Latest version number.
        version: u64,
        /// Metadata.
        meta: FileMeta,
    },
    /// A directory (implied by the files below it).
    Dir {
        /// Path.
        path: String,
    },
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ListPage {
    /// Entries in path order.
    pub entries: Vec<Entry>,
    /// Opaque cursor for the next page; `None` at the end.
    pub cursor: Option<String>,
}

/// The catalog.
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// A repository-wide setting.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Sets a repository-wide setting.
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// A tenant's key record.
    fn tenant(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Creates a tenant; `AlreadyExists` if it does.
    fn create_tenant(&self, name: &str, record: &[u8]) -> Result<()>;
    /// Where a blob is.
    fn blob(&self, tenant: &str, id: &ChunkId) -> Result<Option<BlobLoc>>;
    /// Records a pack and its blobs. Blobs already known keep their place,
    /// unless that place is a pack condemned by gc.
    fn commit_pack(&self, pack: &PackRecord, blobs: &[(ChunkId, BlobLoc)]) -> Result<()>;
    /// A pack.
    fn pack(&self, id: &PackId) -> Result<Option<PackRecord>>;
    /// Packs in id order, strictly after `after`, at most `limit`.
    fn packs(&self, after: Option<&PackId>, limit: usize) -> Result<Vec<PackRecord>>;
    /// Commits new versions of files in one transaction (all or none):
    /// version numbers are assigned here, every chunk must be a committed
    /// blob, and each reference adds one to the blob's count.
    fn commit_versions(&self, tenant: &str, files: Vec<NewVersion>) -> Result<Vec<FileVersion>>;
    /// The latest version of a live file.
    fn latest(&self, tenant: &str, path: &RepoPath) -> Result<Option<FileVersion>>;
    /// [`Catalog::latest`] of each of `paths`, in order (in one read
    /// transaction where the catalog has them).
    fn latest_many(&self, tenant: &str, paths: &[RepoPath]) -> Result<Vec<Option<FileVersion>>> {
        paths.iter().map(|p| self.latest(tenant, p)).collect()
    }
    /// The latest version of every live file below `dir`, at any depth
    /// (every file of the tenant when `dir` is the root), in path order:
    /// the files [`Catalog::list`] pages through, with their chunks, in one
    /// read transaction where the catalog has them.
    fn latest_under(&self, tenant: &str, dir: &RepoPath) -> Result<Vec<FileVersion>> {
        let mut paths = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.list(tenant, dir, usize::MAX, cursor.as_deref(), 10_000)?;
            for e in page.entries {
                if let Entry::File { path, .. } = e {
                    paths.push(RepoPath::parse(&path)?);
                }
            }
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        Ok(self
            .latest_many(tenant, &paths)?
            .into_iter()
            .flatten()
            .collect())
    }
    /// [`Catalog::blob`] of each of `ids`, in order (in one read
    /// transaction where the catalog has them).
    fn blobs(&self, tenant: &str, ids: &[ChunkId]) -> Result<Vec<Option<BlobLoc>>> {
        ids.iter().map(|id| self.blob(tenant, id)).collect()
    }
    /// A given version (live or deleted file).
    fn version(&self, tenant: &str, path: &RepoPath, version: u64) -> Result<Option<FileVersion>>;
    /// All versions, oldest first.
    fn versions(&self, tenant: &str, path: &RepoPath) -> Result<Vec<FileVersion>>;
    /// Hides the file from listings and `latest`; its versions stay.
    /// `NotFound` if there is no live file.
    fn delete(&self, tenant: &str, path: &RepoPath) -> Result<()>;
    /// Lists below `dir` down to `depth` levels (1 = direct children).
    fn list(
        &self,
        tenant: &str,
        dir: &RepoPath,
        depth: usize,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage>;
    /// Removes one version record and the references it held. Refuses
    /// (`InvalidInput`) the latest version of a live file; forgetting the
    /// last version of a deleted file removes the file entirely.
    fn forget_version(&self, tenant: &str, path: &RepoPath, version: u64) -> Result<()>;
    /// Every path that has versions (live or deleted), in order, strictly
    /// after `after`, at most `limit`.
    fn paths(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// Where a blob is, for deduplication: `None` also when its pack is
    /// condemned by gc (the chunk must be stored again).
    fn blob_for_dedup(&self, tenant: &str, id: &ChunkId) -> Result<Option<BlobLoc>>;
    /// Records a pack whose blobs *move* to it (repacking): existing blob
    /// entries are overwritten.
    fn commit_repacked(&self, pack: &PackRecord, blobs: &[(ChunkId, BlobLoc)]) -> Result<()>;
    /// Records many packs and their blobs: each as [`Catalog::commit_pack`]
    /// does, or, if `moving`, as [`Catalog::commit_repacked`] does. The
    /// default commits them one by one; a catalog may commit them at once.
    fn commit_packs(
        &self,
        packs: &[(PackRecord, Vec<(ChunkId, BlobLoc)>)],
        moving: bool,
    ) -> Result<()> {
        packs.iter().try_for_each(|(pack, blobs)| {
            if moving {
                self.commit_repacked(pack, blobs)
            } else {
                self.commit_pack(pack, blobs)
            }
        })
    }
    /// Records `packs` and their blobs as [`Catalog::commit_packs`] does
    /// (not moving) and then commits `files` as
    /// [`Catalog::commit_versions`] does, for `tenant`: in one transaction
    /// where the catalog can (all or none). The default commits the packs
    /// first, then the versions.
    fn commit_batch(
        &self,
        tenant: &str,
        packs: &[(PackRecord, Vec<(ChunkId, BlobLoc)>)],
        files: Vec<NewVersion>,
    ) -> Result<Vec<FileVersion>> {
        if !packs.is_empty() {
            self.commit_packs(packs, false)?;
        }
        self.commit_versions(tenant, files)
    }
    /// Every blob of a tenant with its location and reference count.
    fn tenant_blobs(&self, tenant: &str) -> Result<Vec<(ChunkId, BlobLoc, u64)>>;
    /// Marks a pack condemned at `at_ns` (gc's first phase).
    fn condemn(&self, pack: &PackId, at_ns: i64) -> Result<()>;
    /// Condemned packs of a tenant with the time they were condemned.
    fn condemned(&self, tenant: &str) -> Result<Vec<(PackId, i64)>>;
    /// gc's second phase for one pack, in one transaction: if any blob
    /// located in it is referenced again, un-condemns it and returns
    /// `false`; otherwise removes its blobs, its record and its mark and
    /// returns `true` (its shard objects may then be deleted).
    fn sweep(&self, pack: &PackId) -> Result<bool>;
    /// Recomputes every blob's reference count from the version records
    /// and returns each disagreement: `(tenant, chunk, stored, computed,
    /// blob exists)`.
    fn audit_refs(&self) -> Result<Vec<RefProblem>>;
    /// References held on a blob by file versions.
    fn refcount(&self, tenant: &str, id: &ChunkId) -> Result<u64>;
    /// Gives free space back to the filesystem when much of the store is
    /// free (as after a large write, whose transactions leave pages
    /// behind); returns whether it did. A store with nothing (or too
    /// little) to give back does nothing and returns `false`.
    fn compact(&self) -> Result<bool> {
        Ok(false)
    }
}
