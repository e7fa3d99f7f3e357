//! The embedded catalog: one redb file. Every method is one transaction;
//! redb commits are durable (fsync) before they return.

use std::path::Path;

use asheville_core::{ChunkId, PackId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    BlobLoc, Catalog, ChunkRef, Entry, FileMeta, FileVersion, ListPage, NewVersion, PackRecord,
    RefProblem,
};
use crate::error::{Error, ErrorKind, Result};
use crate::path::RepoPath;

// Every table is also listed in `RedbCatalog::copied` (compaction).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
/// tenant \0 chunk id -> [`StoredBlob`] (format 2; format 1 kept the
/// location alone, and the references in `refs`)
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// Format 1 only: tenant \0 chunk id -> references. Folded into `blobs`
/// when a format 1 catalog is opened.
const OLD_REFS: TableDefinition<&[u8], u64> = TableDefinition::new("refs");
const PACKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("packs");
/// pack id -> time condemned (ns)
const CONDEMNED: TableDefinition<&[u8], i64> = TableDefinition::new("condemned");
/// tenant \0 path -> FileHead
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// tenant \0 path \0 version(be) -> [`enc_version`] (format 2; format 1
/// kept the whole [`FileVersion`], path and number included)
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");

/// The `META` key of the catalog's format.
const FORMAT_KEY: &str = "catalog.format";
/// The format this code writes. Format 2 (2026-12) keeps each blob's
/// references in its `blobs` row and leaves the path and number out of a
/// version's record (its key has them): 27% fewer stored bytes for the
/// peers dataset, and one B-tree fewer to insert into per chunk.
const FORMAT: u32 = 2;

/// A blob's row: where it is, and how many file versions reference it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct StoredBlob {
    loc: BlobLoc,
    refs: u64,
}

/// A version's record: what its key does not already say.
fn enc_version(
    size: u64,
    meta: &FileMeta,
    created_ns: i64,
    chunks: &[ChunkRef],
) -> Result<Vec<u8>> {
    enc(&(size, meta, created_ns, chunks))
}

/// The version whose key is `tenant \0 path \0 version(be)`; `path` is
/// that path.
fn dec_version(path: &str, key: &[u8], record: &[u8]) -> Result<FileVersion> {
    let (size, meta, created_ns, chunks): (u64, FileMeta, i64, Vec<ChunkRef>) = dec(record)?;
    let version = key
        .len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::new(ErrorKind::Integrity, "a version key is too short"))?;
    Ok(FileVersion {
        path: path.to_owned(),
        version,
        size,
        meta,
        created_ns,
        chunks,
    })
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct FileHead {
    latest: u64,
    deleted: bool,
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v)
        .map_err(|e| Error::new(ErrorKind::Other, "catalog encode failed").set_source(e))
}

fn dec<'a, T: serde::Deserialize<'a>>(b: &'a [u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(|e| {
        Error::new(ErrorKind::Integrity, "catalog record does not decode").set_source(e)
    })
}

fn blob_key(tenant: &str, id: &ChunkId) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 33);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn file_key(tenant: &str, path: &RepoPath) -> String {
    format!("{tenant}\0{}", path.as_str())
}

fn version_prefix(tenant: &str, path: &RepoPath) -> Vec<u8> {
    let mut k = file_key(tenant, path).into_bytes();
    k.push(0);
    k
}

fn version_key(tenant: &str, path: &RepoPath, v: u64) -> Vec<u8> {
    let mut k = version_prefix(tenant, path);
    k.extend_from_slice(&v.to_be_bytes());
    k
}

/// The redb catalog.
#[derive(Debug)]
pub struct RedbCatalog {
    /// Shared by every transaction; taken alone only to compact.
    db: std::sync::RwLock<Database>,
    path: std::path::PathBuf,
    /// Bytes on disk when opened or last compacted.
    compacted_at: std::sync::atomic::AtomicU64,
}

/// [`RedbCatalog::compact`] compacts the file when at least this share of
/// it holds no row (free pages, and the empty part of pages), or when the
/// file has doubled since it was opened or last compacted; and copies it
/// when this share still holds no row after that...
const COMPACT_FREE_SHARE: f64 = 0.25;
/// ...and in both cases at least this many bytes hold no row.
const COMPACT_FREE_MIN: u64 = 1 << 20;

impl RedbCatalog {
    /// Opens (or creates) the catalog file.
    pub fn open(path: &Path) -> Result<Self> {
        read_ahead(path);
        let mut db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::new(
                ErrorKind::Other,
                "the catalog is in use by another process or handle",
            )
            .with_context("catalog", path.display()),
            e => Error::from(e).with_context("catalog", path.display()),
        })?;
        let w = db.begin_write()?;
        let upgraded = upgrade(&w).map_err(|e| e.with_context("catalog", path.display()))?;
        for t in [META, TENANTS, FILES] {
            w.open_table(t)?;
        }
        for t in [BLOBS, PACKS, VERSIONS] {
            w.open_table(t)?;
        }
        w.open_table(CONDEMNED)?;
        w.commit()?;
        if upgraded {
            // Every row was rewritten: the old pages are free (the peers
            // set's catalog: 6.7 MB of rows in a 13.5 MB file).
            db.compact()
                .map_err(|e| Error::from(e).with_context("catalog", path.display()))?;
        }
        let catalog = RedbCatalog {
            db: std::sync::RwLock::new(db),
            path: path.to_path_buf(),
            compacted_at: std::sync::atomic::AtomicU64::new(on_disk(path)?),
        };
        // A copy left by a compaction that crashed before it took the
        // catalog's name (the catalog is ours now: no one else is writing it).
        let _ = std::fs::remove_file(catalog.compacting());
        Ok(catalog)
    }

    /// Where [`Catalog::compact`] writes its copy.
    fn compacting(&self) -> std::path::PathBuf {
        self.path.with_extension("redb.compacting")
    }

    /// A copy of every table of `db`, inserted in key order into a fresh
    /// file (so its pages are full, where random chunk ids leave a third
    /// of each page empty), committed and trimmed.
    fn copied(&self, db: &Database) -> Result<Database> {
        // No transaction can begin while the caller holds the lock; this
        // waits for a write begun before it.
        let from = db.begin_write()?;
        let tmp = self.compacting();
        let _ = std::fs::remove_file(&tmp);
        let copy = || -> Result<Database> {
            let mut fresh = Database::create(&tmp)?;
            let to = fresh.begin_write()?;
            copy_table(&from, &to, META)?;
            copy_table(&from, &to, TENANTS)?;
            copy_table(&from, &to, BLOBS)?;
            copy_table(&from, &to, PACKS)?;
            copy_table(&from, &to, CONDEMNED)?;
            copy_table(&from, &to, FILES)?;
            copy_table(&from, &to, VERSIONS)?;
            // A table this list forgot would be lost: refuse instead.
            if from.list_tables()?.count() != 7 {
                return Err(Error::new(
                    ErrorKind::Other,
                    "the catalog has a table compaction does not know",
                ));
            }
            to.commit()?;
            // Gives back the room the file grew by while being written
            // (0.76 MB of 8.9 for the 1 GiB bench set, in ~7 ms).
            fresh.compact()?;
            Ok(fresh)
        };
        let fresh = copy();
        from.abort()?;
        if fresh.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        fresh.map_err(|e| e.with_context("catalog", self.path.display()))
    }

    /// The database, for one transaction to begin.
    fn db(&self) -> Result<std::sync::RwLockReadGuard<'_, Database>> {
        self.db
            .read()
            .map_err(|_| Error::new(ErrorKind::Other, "the catalog lock is poisoned"))
    }
}

/// Brings the catalog `w` writes to [`FORMAT`], in that transaction: a
/// fresh catalog is marked, a format 1 catalog is rewritten (its `refs`
/// folded into `blobs`, its version records shortened). A catalog of a
/// later format is refused rather than misread. Returns whether rows were
/// rewritten.
fn upgrade(w: &redb::WriteTransaction) -> Result<bool> {
    let format = match w.open_table(META)?.get(FORMAT_KEY)? {
        None => None,
        Some(v) => Some(
            <[u8; 4]>::try_from(v.value())
                .map(u32::from_le_bytes)
                .map_err(|_| {
                    Error::new(ErrorKind::Integrity, "the catalog's format is unreadable")
                })?,
        ),
    };
    match format {
        Some(FORMAT) => return Ok(false),
        Some(f) if f > FORMAT => {
            return Err(Error::new(
                ErrorKind::Other,
                "the catalog was written by a later version of asheville",
            )
            .with_context("format", f)
            .with_context("understood", FORMAT));
        }
        _ => {}
    }
    // Format 1 had no mark; a catalog with any table but `meta` is one.
    let old = w
        .list_tables()?
        .any(|t| redb::TableHandle::name(&t) != redb::TableHandle::name(&META));
    if old {
        let mut blobs = w.open_table(BLOBS)?;
        {
            let refs = w.open_table(OLD_REFS)?;
            rewrite_rows(&mut blobs, |k, v| {
                let loc: BlobLoc = dec(v)?;
                let refs = refs.get(k)?.map(|n| n.value()).unwrap_or(0);
                enc(&StoredBlob { loc, refs })
            })?;
        }
        w.delete_table(OLD_REFS)?;
        let mut versions = w.open_table(VERSIONS)?;
        rewrite_rows(&mut versions, |_, v| {
            let fv: FileVersion = dec(v)?;
            enc_version(fv.size, &fv.meta, fv.created_ns, &fv.chunks)
        })?;
    }
    w.open_table(META)?
        .insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice())?;
    Ok(old)
}

/// Bytes the rows of `db` and their index take.
fn live(db: &Database) -> Result<u64> {
    let w = db.begin_write()?;
    let stats = w.stats()?;
    w.abort()?;
    Ok(stats.stored_bytes() + stats.metadata_bytes())
}

/// Whether `slack` bytes of a `file` of that many are at least
/// [`COMPACT_FREE_SHARE`] of it.
fn sparse(slack: u64, file: u64) -> bool {
    slack as f64 >= file as f64 * COMPACT_FREE_SHARE
}

/// Replaces the value of every row of `table` with `f(key, value)`, a few
/// thousand rows at a time (memory stays bounded for any catalog).
fn rewrite_rows(
    table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<Vec<u8>>,
) -> Result<()> {
    const AT_ONCE: usize = 4096;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let range = match &after {
            Some(a) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(a.as_slice()),
                std::ops::Bound::Unbounded,
            ))?,
            None => table.range::<&[u8]>(..)?,
        };
        let mut rows = Vec::with_capacity(AT_ONCE);
        for row in range.take(AT_ONCE) {
            let (k, v) = row?;
            rows.push((k.value().to_vec(), f(k.value(), v.value())?));
        }
        for (k, v) in &rows {
            table.insert(k.as_slice(), v.as_slice())?;
        }
        match rows.pop() {
            Some((k, _)) if rows.len() + 1 == AT_ONCE => after = Some(k),
            _ => return Ok(()),
        }
    }
}

/// Catalogs up to this size are read ahead whole when opened.
const READ_AHEAD_MAX: u64 = 64 << 20;

/// Asks the kernel to read a catalog of up to [`READ_AHEAD_MAX`] bytes
/// into the page cache in large requests, so that the lookups of a command
/// started cold (after a reboot, or a restore on a fresh machine) do not
/// each wait for a 4 KiB read. A missing file or refused advice changes
/// nothing. Cold restore of the peers set (20,027 files, 9.7 MB catalog),
/// 5 alternating rounds: the plan is ready after 78-108 ms instead of
/// 112-144, and the restore takes 1.13 s instead of 1.26 (medians).
fn read_ahead(path: &Path) {
    if let Ok(f) = std::fs::File::open(path)
        && let Ok(m) = f.metadata()
        && m.len() <= READ_AHEAD_MAX
    {
        crate::dropbehind::will_need(&f, 0, m.len());
    }
}

/// Bytes of the file on disk, not its length: redb doubles its file when a
/// commit needs room (the first commit after a compaction takes 8.2 MB to
/// 16.4), and that tail is sparse until written. Counting it would copy
/// the whole catalog again after every small put.
fn on_disk(path: &Path) -> Result<u64> {
    let file = std::fs::metadata(path).map_err(|e| Error::io("cannot stat the catalog", e))?;
    #[cfg(unix)]
    return Ok(std::os::unix::fs::MetadataExt::blocks(&file) * 512);
    #[cfg(not(unix))]
    return Ok(file.len());
}

/// Copies every row of `table` from one transaction to another.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::WriteTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<()> {
    let src = from.open_table(table)?;
    let mut dst = to.open_table(table)?;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

impl Catalog for RedbCatalog {
    fn compact(&self) -> Result<bool> {
        use std::sync::atomic::Ordering;
        let file = on_disk(&self.path)?;
        let slack = file.saturating_sub(live(&*self.db()?)?);
        // Doubling: a catalog filled mostly by recent commits (a first put,
        // a large import) has dead pages and two-thirds-full index pages
        // throughout, yet its slack can sit either side of the share from
        // one run to the next (22-26% after a put of the peers dataset).
        let doubled = file >= 2 * self.compacted_at.load(Ordering::Relaxed);
        if slack < COMPACT_FREE_MIN || (!sparse(slack, file) && !doubled) {
            return Ok(false);
        }
        let mut db = self
            .db
            .write()
            .map_err(|_| Error::new(ErrorKind::Other, "the catalog lock is poisoned"))?;
        // redb's own compaction moves pages down and gives the freed tail
        // back. For the peers dataset's first put it takes 33-46 ms and
        // leaves 5.9 MB, where a copy takes 100-120 ms and leaves 5.1.
        db.compact()
            .map_err(|e| Error::from(e).with_context("catalog", self.path.display()))?;
        let file = on_disk(&self.path)?;
        let slack = file.saturating_sub(live(&db)?);
        // Pages left mostly empty (by deletions, or random inserts into a
        // small tree) need a copy, which fills them: every table inserted
        // in key order into a fresh file. Copying whenever that is so
        // costs, summed over the catalog's life, about as much as the
        // inserts that grew it.
        if slack >= COMPACT_FREE_MIN && sparse(slack, file) {
            let fresh = self.copied(&db)?;
            // The copy is complete and durable: it takes the catalog's
            // name (atomically; a crash leaves either file, both whole),
            // and this handle carries on with it.
            let renamed = std::fs::rename(self.compacting(), &self.path)
                .map_err(|e| Error::io("cannot replace the catalog with its compacted copy", e));
            if let Err(e) = renamed {
                drop(fresh);
                let _ = std::fs::remove_file(self.compacting());
                return Err(e.with_context("catalog", self.path.display()));
            }
            *db = fresh;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::io("cannot sync the catalog's directory", e))?;
            }
        }
        self.compacted_at
            .store(on_disk(&self.path)?, Ordering::Relaxed);
        Ok(true)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db()?.begin_read()?;
        Ok(r.open_table(META)?.get(key)?.map(|v| v.value().to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let w = self.db()?.begin_write()?;
        w.open_table(META)?.insert(key, value)?;
        w.commit()?;
        Ok(())
    }

    fn tenant(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db()?.begin_read()?;
        Ok(r.open_table(TENANTS)?
            .get(name)?
            .map(|v| v.value().to_vec()))
    }

    fn create_tenant(&self, name: &str, record: &[u8]) -> Result<()> {
        let w = self.db()?.begin_write()?;
        {
            let mut t = w.open_table(TENANTS)?;
            if t.get(name)?.is_some() {
                return Err(Error::new(ErrorKind::AlreadyExists, "tenant exists")
                    .with_context("tenant", name));
            }
            t.insert(name, record)?;
        }
        w.commit()?;
        Ok(())
    }

    fn blob(&self, tenant: &str, id: &ChunkId) -> Result<Option<BlobLoc>> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(BLOBS)?;
        let v = t.get(blob_key(tenant, id).as_slice())?;
        v.map(|v| dec::<StoredBlob>(v.value()).map(|b| b.loc))
            .transpose()
    }

    fn commit_pack(&self, pack: &PackRecord, blobs: &[(ChunkId, BlobLoc)]) -> Result<()> {
        let w = self.db()?.begin_write()?;
        record_pack(&w, pack, blobs, false)?;
        w.commit()?;
        Ok(())
    }

    fn commit_packs(
        &self,
        packs: &[(PackRecord, Vec<(ChunkId, BlobLoc)>)],
        moving: bool,
    ) -> Result<()> {
        let w = self.db()?.begin_write()?;
        for (pack, blobs) in packs {
            record_pack(&w, pack, blobs, moving)?;
        }
        w.commit()?;
        Ok(())
    }

    fn pack(&self, id: &PackId) -> Result<Option<PackRecord>> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(PACKS)?;
        let v = t.get(id.as_bytes().as_slice())?;
        v.map(|v| dec(v.value())).transpose()
    }

    fn packs(&self, after: Option<&PackId>, limit: usize) -> Result<Vec<PackRecord>> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(PACKS)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => t.range::<&[u8]>((
                std::ops::Bound::Excluded(a.as_bytes().as_slice()),
                std::ops::Bound::Unbounded,
            ))?,
            None => t.range::<&[u8]>(..)?,
        };
        for item in range.take(limit) {
            let (_, v) = item?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    fn commit_versions(&self, tenant: &str, files: Vec<NewVersion>) -> Result<Vec<FileVersion>> {
        let w = self.db()?.begin_write()?;
        let out = record(&w, tenant, &[], false, files)?;
        w.commit()?;
        Ok(out)
    }

    fn commit_batch(
        &self,
        tenant: &str,
        packs: &[(PackRecord, Vec<(ChunkId, BlobLoc)>)],
        files: Vec<NewVersion>,
    ) -> Result<Vec<FileVersion>> {
        let w = self.db()?.begin_write()?;
        // Packs of another tenant (not a put's) are recorded on their own.
        let (own, other): (Vec<_>, Vec<_>) = packs
            .iter()
            .map(|(p, b)| (p, b.as_slice()))
            .partition(|(p, _)| p.tenant == tenant);
        for (pack, blobs) in other {
            record_pack(&w, pack, blobs, false)?;
        }
        let out = record(&w, tenant, &own, false, files)?;
        w.commit()?;
        Ok(out)
    }

    fn latest(&self, tenant: &str, path: &RepoPath) -> Result<Option<FileVersion>> {
        let r = self.db()?.begin_read()?;
        let files = r.open_table(FILES)?;
        let Some(head) = files.get(file_key(tenant, path).as_str())? else {
            return Ok(None);
        };
        let head: FileHead = dec(head.value())?;
        if head.deleted {
            return Ok(None);
        }
        let versions = r.open_table(VERSIONS)?;
        let k = version_key(tenant, path, head.latest);
        let v = versions.get(k.as_slice())?;
        v.map(|v| dec_version(path.as_str(), &k, v.value()))
            .transpose()
    }

    fn latest_many(&self, tenant: &str, paths: &[RepoPath]) -> Result<Vec<Option<FileVersion>>> {
        let r = self.db()?.begin_read()?;
        let files = r.open_table(FILES)?;
        let versions = r.open_table(VERSIONS)?;
        paths
            .iter()
            .map(|path| {
                let Some(head) = files.get(file_key(tenant, path).as_str())? else {
                    return Ok(None);
                };
                let head: FileHead = dec(head.value())?;
                if head.deleted {
                    return Ok(None);
                }
                let k = version_key(tenant, path, head.latest);
                let v = versions.get(k.as_slice())?;
                v.map(|v| dec_version(path.as_str(), &k, v.value()))
                    .transpose()
            })
            .collect()
    }

    /// One pass over the file heads below `dir` and, alongside, over the
    /// version records (both tables hold a path's keys in the same order):
    /// each latest version is found by stepping the second scan forward,
    /// or, past a few older versions, by seeking to it.
    fn latest_under(&self, tenant: &str, dir: &RepoPath) -> Result<Vec<FileVersion>> {
        /// Older versions stepped over before seeking instead.
        const STEPS: usize = 8;
        let key_prefix = match dir.is_root() {
            true => format!("{tenant}\0"),
            false => format!("{tenant}\0{}/", dir.as_str()),
        };
        let r = self.db()?.begin_read()?;
        let files = r.open_table(FILES)?;
        let versions = r.open_table(VERSIONS)?;
        let mut scan = versions.range(key_prefix.as_bytes()..)?;
        let mut at = scan.next().transpose()?;
        let mut want = Vec::new();
        let mut out = Vec::new();
        for item in files.range(key_prefix.as_str()..)? {
            let (k, v) = item?;
            let key = k.value();
            if !key.starts_with(key_prefix.as_str()) {
                break;
            }
            let head: FileHead = dec(v.value())?;
            if head.deleted {
                continue;
            }
            want.clear();
            want.extend_from_slice(key.as_bytes());
            want.push(0);
            want.extend_from_slice(&head.latest.to_be_bytes());
            let mut steps = 0;
            while at
                .as_ref()
                .is_some_and(|(vk, _)| vk.value() < want.as_slice())
            {
                if steps == STEPS {
                    scan = versions.range(want.as_slice()..)?;
                    at = scan.next().transpose()?;
                    break;
                }
                at = scan.next().transpose()?;
                steps += 1;
            }
            let path = &key[tenant.len() + 1..];
            let fv = match &at {
                Some((vk, record)) if vk.value() == want.as_slice() => {
                    dec_version(path, &want, record.value())?
                }
                // Not where the order puts it: looked up (and missing, as
                // `list` reports it).
                _ => match versions.get(want.as_slice())? {
                    Some(record) => dec_version(path, &want, record.value())?,
                    None => {
                        return Err(Error::new(
                            ErrorKind::Integrity,
                            "file head points at a missing version",
                        )
                        .with_context("path", path));
                    }
                },
            };
            out.push(fv);
        }
        Ok(out)
    }

    fn blobs(&self, tenant: &str, ids: &[ChunkId]) -> Result<Vec<Option<BlobLoc>>> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(BLOBS)?;
        ids.iter()
            .map(|id| {
                let v = t.get(blob_key(tenant, id).as_slice())?;
                v.map(|v| dec::<StoredBlob>(v.value()).map(|b| b.loc))
                    .transpose()
            })
            .collect()
    }

    fn version(&self, tenant: &str, path: &RepoPath, version: u64) -> Result<Option<FileVersion>> {
        let r = self.db()?.begin_read()?;
        let versions = r.open_table(VERSIONS)?;
        let k = version_key(tenant, path, version);
        let v = versions.get(k.as_slice())?;
        v.map(|v| dec_version(path.as_str(), &k, v.value()))
            .transpose()
    }

    fn versions(&self, tenant: &str, path: &RepoPath) -> Result<Vec<FileVersion>> {
        let r = self.db()?.begin_read()?;
        let versions = r.open_table(VERSIONS)?;
        let lo = version_key(tenant, path, 0);
        let hi = version_key(tenant, path, u64::MAX);
        let mut out = Vec::new();
        for item in versions.range(lo.as_slice()..=hi.as_slice())? {
            let (k, v) = item?;
            out.push(dec_version(path.as_str(), k.value(), v.value())?);
        }
        Ok(out)
    }

    fn delete(&self, tenant: &str, path: &RepoPath) -> Result<()> {
        let w = self.db()?.begin_write()?;
        {
            let mut files = w.open_table(FILES)?;
            let fk = file_key(tenant, path);
            let head: Option<FileHead> = files
                .get(fk.as_str())?
                .map(|v| dec(v.value()))
                .transpose()?;
            match head {
                Some(h) if !h.deleted => {
                    files.insert(
                        fk.as_str(),
                        enc(&FileHead {
                            latest: h.latest,
                            deleted: true,
                        })?
                        .as_slice(),
                    )?;
                }
                _ => {
                    return Err(
                        Error::new(ErrorKind::NotFound, "no such file").with_context("path", path)
                    );
                }
            }
        }
        w.commit()?;
        Ok(())
    }

    fn list(
        &self,
        tenant: &str,
        dir: &RepoPath,
        depth: usize,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        let depth = depth.max(1);
        let base = if dir.is_root() {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        let key_prefix = format!("{tenant}\0{base}");
        let mut start = match cursor {
            Some(c) => {
                let rel = decode_cursor(c)?;
                format!("{key_prefix}{rel}")
            }
            None => key_prefix.clone(),
        };
        let r = self.db()?.begin_read()?;
        let files = r.open_table(FILES)?;
        let versions = r.open_table(VERSIONS)?;
        let mut page = ListPage::default();
        'scan: loop {
            let mut jumped = false;
            for item in files.range(start.as_str()..)? {
                let (k, v) = item?;
                let key = k.value();
                let Some(rel) = key.strip_prefix(key_prefix.as_str()) else {
                    break 'scan;
                };
                let head: FileHead = dec(v.value())?;
                if head.deleted {
                    continue;
                }
                if page.entries.len() == limit {
                    page.cursor = Some(encode_cursor(rel));
                    break 'scan;
                }
                let segs: Vec<&str> = rel.split('/').collect();
                if segs.len() > depth {
                    let d = segs[..depth].join("/");
                    page.entries.push(Entry::Dir {
                        path: format!("{base}{d}"),
                    });
                    // Skip everything under that directory: '0' follows '/'.
                    start = format!("{key_prefix}{d}0");
                    jumped = true;
                    break;
                }
                let path = RepoPath::parse(&format!("{base}{rel}"))?;
                let k = version_key(tenant, &path, head.latest);
                let fv = dec_version(
                    path.as_str(),
                    &k,
                    versions
                        .get(k.as_slice())?
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::Integrity,
                                "file head points at a missing version",
                            )
                        })?
                        .value(),
                )?;
                page.entries.push(Entry::File {
                    path: fv.path,
                    size: fv.size,
                    version: fv.version,
                    meta: fv.meta,
                });
            }
            if !jumped {
                break;
            }
        }
        Ok(page)
    }

    fn forget_version(&self, tenant: &str, path: &RepoPath, version: u64) -> Result<()> {
        let w = self.db()?.begin_write()?;
        {
            let mut heads = w.open_table(FILES)?;
            let fk = file_key(tenant, path);
            let head: FileHead = heads
                .get(fk.as_str())?
                .map(|v| dec(v.value()))
                .transpose()?
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, "no such file").with_context("path", path)
                })?;
            if !head.deleted && head.latest == version {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "the latest version of a live file cannot be forgotten",
                )
                .with_context("path", path)
                .with_context("version", version));
            }
            let mut versions = w.open_table(VERSIONS)?;
            let vk = version_key(tenant, path, version);
            let fv = versions
                .remove(vk.as_slice())?
                .map(|v| dec_version(path.as_str(), &vk, v.value()))
                .transpose()?
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, "no such version")
                        .with_context("path", path)
                        .with_context("version", version)
                })?;
            let mut blobs = w.open_table(BLOBS)?;
            for c in &fv.chunks {
                let k = blob_key(tenant, &c.id);
                let blob = blobs
                    .get(k.as_slice())?
                    .map(|v| dec::<StoredBlob>(v.value()))
                    .transpose()?;
                if let Some(mut blob) = blob {
                    blob.refs = blob.refs.saturating_sub(1);
                    blobs.insert(k.as_slice(), enc(&blob)?.as_slice())?;
                }
            }
            let lo = version_key(tenant, path, 0);
            let hi = version_key(tenant, path, u64::MAX);
            if head.deleted
                && versions
                    .range(lo.as_slice()..=hi.as_slice())?
                    .next()
                    .is_none()
            {
                heads.remove(fk.as_str())?;
            }
        }
        w.commit()?;
        Ok(())
    }

    fn paths(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let r = self.db()?.begin_read()?;
        let files = r.open_table(FILES)?;
        let prefix = format!("{tenant}\0");
        let start = match after {
            Some(a) => format!("{prefix}{a}\0"),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in files.range(start.as_str()..)? {
            let (k, _) = item?;
            let Some(p) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            out.push(p.to_owned());
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn blob_for_dedup(&self, tenant: &str, id: &ChunkId) -> Result<Option<BlobLoc>> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(BLOBS)?;
        let Some(v) = t.get(blob_key(tenant, id).as_slice())? else {
            return Ok(None);
        };
        let loc = dec::<StoredBlob>(v.value())?.loc;
        let condemned = r
            .open_table(CONDEMNED)?
            .get(loc.pack.as_bytes().as_slice())?
            .is_some();
        Ok((!condemned).then_some(loc))
    }

    fn commit_repacked(&self, pack: &PackRecord, blobs: &[(ChunkId, BlobLoc)]) -> Result<()> {
        let w = self.db()?.begin_write()?;
        record_pack(&w, pack, blobs, true)?;
        w.commit()?;
        Ok(())
    }

    fn tenant_blobs(&self, tenant: &str) -> Result<Vec<(ChunkId, BlobLoc, u64)>> {
        let r = self.db()?.begin_read()?;
        let blobs = r.open_table(BLOBS)?;
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in blobs.range(prefix.as_slice()..)? {
            let (k, v) = item?;
            let key = k.value();
            if !key.starts_with(&prefix) {
                break;
            }
            let id = ChunkId::try_from_slice(&key[prefix.len()..])?;
            let blob: StoredBlob = dec(v.value())?;
            out.push((id, blob.loc, blob.refs));
        }
        Ok(out)
    }

    fn condemn(&self, pack: &PackId, at_ns: i64) -> Result<()> {
        let w = self.db()?.begin_write()?;
        {
            let mut c = w.open_table(CONDEMNED)?;
            if c.get(pack.as_bytes().as_slice())?.is_none() {
                c.insert(pack.as_bytes().as_slice(), at_ns)?;
            }
        }
        w.commit()?;
        Ok(())
    }

    fn condemned(&self, tenant: &str) -> Result<Vec<(PackId, i64)>> {
        let r = self.db()?.begin_read()?;
        let c = r.open_table(CONDEMNED)?;
        let packs = r.open_table(PACKS)?;
        let mut out = Vec::new();
        for item in c.iter()? {
            let (k, v) = item?;
            let id = PackId::try_from_slice(k.value())?;
            if let Some(p) = packs.get(k.value())? {
                let rec: PackRecord = dec(p.value())?;
                if rec.tenant == tenant {
                    out.push((id, v.value()));
                }
            }
        }
        Ok(out)
    }

    fn sweep(&self, pack: &PackId) -> Result<bool> {
        let w = self.db()?.begin_write()?;
        let swept;
        {
            let mut packs = w.open_table(PACKS)?;
            let Some(rec) = packs
                .get(pack.as_bytes().as_slice())?
                .map(|v| dec::<PackRecord>(v.value()))
                .transpose()?
            else {
                return Ok(false);
            };
            let mut blobs = w.open_table(BLOBS)?;
            let mut prefix = rec.tenant.as_bytes().to_vec();
            prefix.push(0);
            let mut here = Vec::new();
            let mut live = false;
            for item in blobs.range(prefix.as_slice()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let blob: StoredBlob = dec(v.value())?;
                if blob.loc.pack == *pack {
                    live |= blob.refs > 0;
                    here.push(k.value().to_vec());
                }
            }
            let mut condemned = w.open_table(CONDEMNED)?;
            condemned.remove(pack.as_bytes().as_slice())?;
            if live {
                swept = false;
            } else {
                for k in here {
                    blobs.remove(k.as_slice())?;
                }
                packs.remove(pack.as_bytes().as_slice())?;
                swept = true;
            }
        }
        w.commit()?;
        Ok(swept)
    }

    fn audit_refs(&self) -> Result<Vec<RefProblem>> {
        let r = self.db()?.begin_read()?;
        let versions = r.open_table(VERSIONS)?;
        let blobs = r.open_table(BLOBS)?;
        let mut computed: std::collections::BTreeMap<Vec<u8>, u64> =
            std::collections::BTreeMap::new();
        for item in versions.iter()? {
            let (k, v) = item?;
            let key = k.value();
            let tenant_end = key.iter().position(|&b| b == 0).unwrap_or(0);
            let tenant = std::str::from_utf8(&key[..tenant_end])
                .map_err(|_| Error::new(ErrorKind::Integrity, "bad tenant key"))?;
            let fv = dec_version("", key, v.value())?;
            for c in &fv.chunks {
                *computed.entry(blob_key(tenant, &c.id)).or_default() += 1;
            }
        }
        let mut stored: std::collections::BTreeMap<Vec<u8>, u64> =
            std::collections::BTreeMap::new();
        for item in blobs.iter()? {
            let (k, v) = item?;
            let blob: StoredBlob = dec(v.value())?;
            if blob.refs > 0 {
                stored.insert(k.value().to_vec(), blob.refs);
            }
        }
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<&Vec<u8>> =
            computed.keys().chain(stored.keys()).collect();
        for k in keys {
            let (s, c) = (
                stored.get(k).copied().unwrap_or(0),
                computed.get(k).copied().unwrap_or(0),
            );
            let exists = blobs.get(k.as_slice())?.is_some();
            if s != c || (c > 0 && !exists) {
                let split = k.iter().position(|&b| b == 0).unwrap_or(0);
                out.push(RefProblem {
                    tenant: String::from_utf8_lossy(&k[..split]).into_owned(),
                    chunk: ChunkId::try_from_slice(&k[split + 1..])?,
                    stored: s,
                    computed: c,
                    blob_exists: exists,
                });
            }
        }
        Ok(out)
    }

    fn refcount(&self, tenant: &str, id: &ChunkId) -> Result<u64> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(BLOBS)?;
        t.get(blob_key(tenant, id).as_slice())?
            .map(|v| dec::<StoredBlob>(v.value()).map(|b| b.refs))
            .unwrap_or(Ok(0))
    }
}

fn encode_cursor(rel: &str) -> String {
    rel.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(c: &str) -> Result<String> {
    let bad = || Error::new(ErrorKind::InvalidInput, "invalid list cursor");
    if !c.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())
}

/// Records, in `w`, `packs` of `tenant` and their blobs (see
/// [`Catalog::commit_pack`], or with `moving` [`Catalog::commit_repacked`]),
/// then new versions of `files` (see [`Catalog::commit_versions`]). A blob
/// row is read and written once: a new blob takes its references as it is
/// recorded.
fn record(
    w: &redb::WriteTransaction,
    tenant: &str,
    packs: &[(&PackRecord, &[(ChunkId, BlobLoc)])],
    moving: bool,
    files: Vec<NewVersion>,
) -> Result<Vec<FileVersion>> {
    if let Some(f) = files.iter().find(|f| f.path.is_root()) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a file needs a name (the path is the root)",
        )
        .with_context("path", &f.path));
    }
    let mut out = Vec::with_capacity(files.len());
    {
        let mut blobs = w.open_table(BLOBS)?;
        let mut heads = w.open_table(FILES)?;
        let mut versions = w.open_table(VERSIONS)?;
        // The packs' blobs and the chunks' references, gathered first and
        // then recorded in key order: chunk ids are random, so recording
        // them pack by pack or file by file would touch a different page
        // of the table every time.
        let mut rows: std::collections::BTreeMap<&[u8; 32], BlobChange<'_>> =
            std::collections::BTreeMap::new();
        if !packs.is_empty() {
            let mut table = w.open_table(PACKS)?;
            for (pack, placed) in packs {
                table.insert(pack.id.as_bytes().as_slice(), enc(pack)?.as_slice())?;
                for (id, loc) in placed.iter() {
                    rows.entry(id.as_bytes()).or_default().placed = Some(loc);
                }
            }
        }
        for f in &files {
            for c in &f.chunks {
                let row = rows.entry(c.id.as_bytes()).or_default();
                row.refs += 1;
                row.path.get_or_insert(&f.path);
            }
        }
        let condemned = w.open_table(CONDEMNED)?;
        let mut k = blob_key(tenant, &ChunkId::from_bytes([0; 32]));
        let id_at = k.len() - 32;
        for (id, change) in rows {
            k[id_at..].copy_from_slice(id);
            let old = blobs
                .get(k.as_slice())?
                .map(|v| dec::<StoredBlob>(v.value()))
                .transpose()?;
            let mut blob = match (old, change.placed) {
                (Some(old), None) => old,
                (None, Some(loc)) => StoredBlob { loc: *loc, refs: 0 },
                // A blob already known keeps its place, unless it moves
                // (repacking) or its pack is condemned by gc: then the
                // fresh copy is the one to keep. The references stay with
                // the chunk wherever it is.
                (Some(old), Some(loc)) => {
                    if moving || condemned.get(old.loc.pack.as_bytes().as_slice())?.is_some() {
                        StoredBlob {
                            loc: *loc,
                            refs: old.refs,
                        }
                    } else {
                        old
                    }
                }
                (None, None) => {
                    let mut e =
                        Error::new(ErrorKind::Integrity, "a chunk of the file is not committed")
                            .with_context("chunk", ChunkId::from_bytes(*id));
                    if let Some(path) = change.path {
                        e = e.with_context("path", path);
                    }
                    return Err(e);
                }
            };
            blob.refs += change.refs;
            blobs.insert(k.as_slice(), enc(&blob)?.as_slice())?;
        }
        for f in files {
            let fk = file_key(tenant, &f.path);
            let prev: Option<FileHead> = heads
                .get(fk.as_str())?
                .map(|v| dec(v.value()))
                .transpose()?;
            let next = prev.map(|h| h.latest + 1).unwrap_or(1);
            let version = match f.version {
                0 => next,
                v if v >= next => v,
                v => {
                    return Err(
                        Error::new(ErrorKind::InvalidInput, "version numbers only grow")
                            .with_context("path", &f.path)
                            .with_context("version", v)
                            .with_context("next", next),
                    );
                }
            };
            let fv = FileVersion {
                path: f.path.as_str().to_owned(),
                version,
                size: f.size,
                meta: f.meta,
                created_ns: f.created_ns,
                chunks: f.chunks,
            };
            heads.insert(
                fk.as_str(),
                enc(&FileHead {
                    latest: version,
                    deleted: false,
                })?
                .as_slice(),
            )?;
            versions.insert(
                version_key(tenant, &f.path, version).as_slice(),
                enc_version(fv.size, &fv.meta, fv.created_ns, &fv.chunks)?.as_slice(),
            )?;
            out.push(fv);
        }
    }
    Ok(out)
}

/// What a batch does to one blob row: records it in a pack, adds
/// references from files (the first of which is `path`).
#[derive(Default)]
struct BlobChange<'a> {
    placed: Option<&'a BlobLoc>,
    refs: u64,
    path: Option<&'a RepoPath>,
}

/// Records `pack` and its blobs in `w` (see [`record`]).
fn record_pack(
    w: &redb::WriteTransaction,
    pack: &PackRecord,
    blobs: &[(ChunkId, BlobLoc)],
    moving: bool,
) -> Result<()> {
    record(w, &pack.tenant, &[(pack, blobs)], moving, Vec::new()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog as format 1 wrote it: two files sharing a chunk, one with
    /// two versions, and a chunk no version references.
    fn format_1(path: &Path, ids: &[ChunkId; 3]) -> Vec<FileVersion> {
        const BLOBS_1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
        let pack = PackRecord {
            id: PackId::from_bytes([7; 32]),
            tenant: "t".into(),
            data_len: 3000,
            redundancy: "none".into(),
            shards: vec!["b".into()],
        };
        let chunk = |i: usize| ChunkRef {
            id: ids[i],
            len: 1000,
        };
        let version = |path: &str, version, chunks: Vec<ChunkRef>| FileVersion {
            path: path.into(),
            version,
            size: 1000 * chunks.len() as u64,
            meta: FileMeta {
                mtime_ns: 5,
                mode: 0o640,
            },
            created_ns: 9,
            chunks,
        };
        let versions = vec![
            version("a/x", 1, vec![chunk(0)]),
            version("a/x", 2, vec![chunk(0), chunk(1)]),
            version("b", 1, vec![chunk(1)]),
        ];
        let db = Database::create(path).unwrap();
        let w = db.begin_write().unwrap();
        {
            w.open_table(META)
                .unwrap()
                .insert("config", b"{}".as_slice())
                .unwrap();
            w.open_table(PACKS)
                .unwrap()
                .insert(
                    pack.id.as_bytes().as_slice(),
                    enc(&pack).unwrap().as_slice(),
                )
                .unwrap();
            let mut blobs = w.open_table(BLOBS_1).unwrap();
            let mut refs = w.open_table(OLD_REFS).unwrap();
            for (i, id) in ids.iter().enumerate() {
                let loc = BlobLoc {
                    pack: pack.id,
                    offset: 1000 * i as u64,
                    len: 1000,
                };
                let k = blob_key("t", id);
                blobs
                    .insert(k.as_slice(), enc(&loc).unwrap().as_slice())
                    .unwrap();
                if i < 2 {
                    refs.insert(k.as_slice(), 2).unwrap();
                }
            }
            let mut heads = w.open_table(FILES).unwrap();
            let mut table = w.open_table(VERSIONS).unwrap();
            for v in &versions {
                let p = RepoPath::parse(&v.path).unwrap();
                let head = FileHead {
                    latest: v.version,
                    deleted: false,
                };
                heads
                    .insert(file_key("t", &p).as_str(), enc(&head).unwrap().as_slice())
                    .unwrap();
                table
                    .insert(
                        version_key("t", &p, v.version).as_slice(),
                        enc(v).unwrap().as_slice(),
                    )
                    .unwrap();
            }
        }
        w.open_table(CONDEMNED).unwrap();
        w.commit().unwrap();
        versions
    }

    #[test]
    fn a_format_1_catalog_is_upgraded_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let ids = [1u8, 2, 3].map(|i| ChunkId::from_bytes(*blake3::hash(&[i]).as_bytes()));
        let versions = format_1(&path, &ids);
        let x = RepoPath::parse("a/x").unwrap();
        let b = RepoPath::parse("b").unwrap();
        for reopened in [false, true] {
            let c = RedbCatalog::open(&path).unwrap();
            assert_eq!(c.meta("config").unwrap().as_deref(), Some(b"{}".as_slice()));
            assert_eq!(c.versions("t", &x).unwrap(), versions[..2], "{reopened}");
            assert_eq!(c.latest("t", &b).unwrap().as_ref(), Some(&versions[2]));
            assert_eq!(c.version("t", &x, 1).unwrap().as_ref(), Some(&versions[0]));
            let counts: Vec<u64> = ids.iter().map(|id| c.refcount("t", id).unwrap()).collect();
            assert_eq!(counts, [2, 2, 0]);
            let loc = c.blob("t", &ids[2]).unwrap().unwrap();
            assert_eq!((loc.offset, loc.len), (2000, 1000));
            assert!(c.audit_refs().unwrap().is_empty());
            let listed = c.list("t", &RepoPath::root(), 2, None, 10).unwrap();
            assert_eq!(listed.entries.len(), 2);
            drop(c);
            // The old table is gone and the format is marked.
            let db = Database::open(&path).unwrap();
            let r = db.begin_read().unwrap();
            let names: Vec<String> = r
                .list_tables()
                .unwrap()
                .map(|t| redb::TableHandle::name(&t).to_owned())
                .collect();
            assert!(!names.iter().any(|n| n == "refs"), "{names:?}");
            let format = r
                .open_table(META)
                .unwrap()
                .get(FORMAT_KEY)
                .unwrap()
                .unwrap();
            assert_eq!(format.value(), FORMAT.to_le_bytes());
        }
        // Forgetting a version takes its references back from the blob row.
        let c = RedbCatalog::open(&path).unwrap();
        c.forget_version("t", &x, 1).unwrap();
        assert_eq!(c.refcount("t", &ids[0]).unwrap(), 1);
        assert!(c.audit_refs().unwrap().is_empty());
    }

    #[test]
    fn a_catalog_of_a_later_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        drop(RedbCatalog::open(&path).unwrap());
        {
            let db = Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, (FORMAT + 1).to_le_bytes().as_slice())
                .unwrap();
            w.commit().unwrap();
        }
        let e = RedbCatalog::open(&path).unwrap_err();
        assert!(e.to_string().contains("later version"), "{e}");
    }

    /// Bytes on disk, and whether a quarter of them hold no row.
    fn sparse_file(path: &Path) -> (u64, bool) {
        let db = Database::open(path).unwrap();
        let file = on_disk(path).unwrap();
        (file, sparse(file - live(&db).unwrap(), file))
    }

    #[test]
    fn a_catalog_left_sparse_by_deletions_is_copied_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let c = RedbCatalog::open(&path).unwrap();
        // Blobs no version references, in 40 packs of 2000: random ids spread each
        // pack's rows over every page of the table.
        let pack = |n: u8| PackRecord {
            id: PackId::from_bytes([n; 32]),
            tenant: "t".into(),
            data_len: 1,
            redundancy: "none".into(),
            shards: vec!["b".into()],
        };
        let id = |n: u8, j: u32| {
            ChunkId::from_bytes(*blake3::hash(&[[n, 0, 0, 0], j.to_le_bytes()].concat()).as_bytes())
        };
        for n in 0..40u8 {
            let loc = BlobLoc {
                pack: pack(n).id,
                offset: 0,
                len: 1,
            };
            let blobs: Vec<_> = (0..2000).map(|j| (id(n, j), loc)).collect();
            c.commit_pack(&pack(n), &blobs).unwrap();
        }
        c.compact().unwrap();
        // gc takes three packs in four: every page keeps a quarter of its rows.
        for n in (0..40u8).filter(|n| n % 4 != 0) {
            c.condemn(&pack(n).id, 1).unwrap();
            assert!(c.sweep(&pack(n).id).unwrap());
        }
        drop(c);
        // redb's own compaction alone would leave the file sparse...
        let copy = dir.path().join("copy.redb");
        std::fs::copy(&path, &copy).unwrap();
        Database::open(&copy).unwrap().compact().unwrap();
        let (native, left_sparse) = sparse_file(&copy);
        assert!(left_sparse, "{native} bytes");
        // ...so the catalog copies itself, and keeps every row it had.
        let c = RedbCatalog::open(&path).unwrap();
        assert!(c.compact().unwrap());
        assert!(c.blob("t", &id(4, 17)).unwrap().is_some());
        assert!(c.blob("t", &id(5, 17)).unwrap().is_none());
        assert_eq!(c.tenant_blobs("t").unwrap().len(), 10 * 2000);
        drop(c);
        let (file, still_sparse) = sparse_file(&path);
        assert!(
            !still_sparse && file < native,
            "{file} bytes, {native} by redb alone"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!names.iter().any(|n| n == "c.redb.compacting"), "{names:?}");
    }

    #[test]
    fn a_batch_is_committed_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let c = RedbCatalog::open(&dir.path().join("c.redb")).unwrap();
        let pack = PackRecord {
            id: PackId::from_bytes([3; 32]),
            tenant: "t".into(),
            data_len: 10,
            redundancy: "none".into(),
            shards: vec!["b".into()],
        };
        let [stored, missing] = [1u8, 2].map(|i| ChunkId::from_bytes([i; 32]));
        let loc = BlobLoc {
            pack: pack.id,
            offset: 0,
            len: 10,
        };
        let file = |chunk| NewVersion {
            path: RepoPath::parse("f").unwrap(),
            size: 10,
            meta: FileMeta::default(),
            chunks: vec![ChunkRef { id: chunk, len: 10 }],
            created_ns: 1,
            version: 0,
        };
        let packs = [(pack.clone(), vec![(stored, loc)])];
        // A version whose chunk is in no pack fails the batch: its pack is
        // not recorded either.
        let e = c
            .commit_batch("t", &packs, vec![file(stored), file(missing)])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        assert_eq!(c.pack(&pack.id).unwrap(), None);
        assert_eq!(c.blob("t", &stored).unwrap(), None);
        assert_eq!(c.latest("t", &RepoPath::parse("f").unwrap()).unwrap(), None);
        // Whole, it records the pack, the blob and the version that uses it.
        let out = c.commit_batch("t", &packs, vec![file(stored)]).unwrap();
        assert_eq!(out[0].version, 1);
        assert_eq!(c.pack(&pack.id).unwrap(), Some(pack));
        assert_eq!(c.blob("t", &stored).unwrap(), Some(loc));
        assert_eq!(c.refcount("t", &stored).unwrap(), 1);
    }

    #[test]
    fn every_row_is_rewritten_once_across_the_steps_of_an_upgrade() {
        const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("c.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            // Two and a half steps' worth, and one row past the last whole step.
            for i in 0..10_241u32 {
                t.insert(i.to_be_bytes().as_slice(), [7u8].as_slice())
                    .unwrap();
            }
            let mut seen = 0;
            rewrite_rows(&mut t, |k, v| {
                seen += 1;
                Ok([v, k].concat())
            })
            .unwrap();
            assert_eq!(seen, 10_241);
            for row in t.iter().unwrap() {
                let (k, v) = row.unwrap();
                assert_eq!(v.value(), [[7u8].as_slice(), k.value()].concat());
            }
        }
        w.commit().unwrap();
    }
}
