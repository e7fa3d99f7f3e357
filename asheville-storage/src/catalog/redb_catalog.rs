//! The embedded catalog: one redb file. Every method is one transaction;
//! redb commits are durable (fsync) before they return.

use std::path::Path;

use asheville_core::{ChunkId, PackId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{BlobLoc, Catalog, Entry, FileVersion, ListPage, NewVersion, PackRecord, RefProblem};
use crate::error::{Error, ErrorKind, Result};
use crate::path::RepoPath;

// Every table is also listed in `RedbCatalog::copied` (compaction).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
/// tenant \0 chunk id -> BlobLoc
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// tenant \0 chunk id -> references
const REFS: TableDefinition<&[u8], u64> = TableDefinition::new("refs");
const PACKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("packs");
/// pack id -> time condemned (ns)
const CONDEMNED: TableDefinition<&[u8], i64> = TableDefinition::new("condemned");
/// tenant \0 path -> FileHead
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// tenant \0 path \0 version(be) -> FileVersion
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");

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

/// [`RedbCatalog::compact`] rewrites the file when at least this share
/// of it holds no row (free pages, and the empty part of pages), or when
/// the file has doubled since it was opened or last compacted...
const COMPACT_FREE_SHARE: f64 = 0.25;
/// ...and in both cases at least this many bytes hold no row.
const COMPACT_FREE_MIN: u64 = 1 << 20;

impl RedbCatalog {
    /// Opens (or creates) the catalog file.
    pub fn open(path: &Path) -> Result<Self> {
        read_ahead(path);
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::new(
                ErrorKind::Other,
                "the catalog is in use by another process or handle",
            )
            .with_context("catalog", path.display()),
            e => Error::from(e).with_context("catalog", path.display()),
        })?;
        let w = db.begin_write()?;
        for t in [META, TENANTS, FILES] {
            w.open_table(t)?;
        }
        for t in [BLOBS, PACKS, VERSIONS] {
            w.open_table(t)?;
        }
        w.open_table(REFS)?;
        w.open_table(CONDEMNED)?;
        w.commit()?;
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
            copy_table(&from, &to, REFS)?;
            copy_table(&from, &to, PACKS)?;
            copy_table(&from, &to, CONDEMNED)?;
            copy_table(&from, &to, FILES)?;
            copy_table(&from, &to, VERSIONS)?;
            // A table this list forgot would be lost: refuse instead.
            if from.list_tables()?.count() != 8 {
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
        let live = {
            let w = self.db()?.begin_write()?;
            let stats = w.stats()?;
            w.abort()?;
            stats.stored_bytes() + stats.metadata_bytes()
        };
        // Free pages, and the unused part of half-full ones.
        let slack = file.saturating_sub(live);
        // Doubling: a catalog filled mostly by recent commits (a first put,
        // a large import) has dead pages and two-thirds-full index pages
        // throughout, yet its slack can sit either side of the share from
        // one run to the next (22-26% after a put of the peers dataset).
        // Copying whenever the file doubled costs, summed over its life,
        // about as much as the inserts that grew it.
        let doubled = file >= 2 * self.compacted_at.load(Ordering::Relaxed);
        if slack < COMPACT_FREE_MIN
            || ((slack as f64) < file as f64 * COMPACT_FREE_SHARE && !doubled)
        {
            return Ok(false);
        }
        let mut db = self
            .db
            .write()
            .map_err(|_| Error::new(ErrorKind::Other, "the catalog lock is poisoned"))?;
        let fresh = self.copied(&db)?;
        // The copy is complete and durable: it takes the catalog's name
        // (atomically; a crash leaves either file, both whole), and this
        // handle carries on with it.
        let renamed = std::fs::rename(self.compacting(), &self.path)
            .map_err(|e| Error::io("cannot replace the catalog with its compacted copy", e));
        if let Err(e) = renamed {
            drop(fresh);
            let _ = std::fs::remove_file(self.compacting());
            return Err(e.with_context("catalog", self.path.display()));
        }
        *db = fresh;
        self.compacted_at
            .store(on_disk(&self.path)?, Ordering::Relaxed);
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("cannot sync the catalog's directory", e))?;
        }
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
        v.map(|v| dec(v.value())).transpose()
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
        if let Some(f) = files.iter().find(|f| f.path.is_root()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a file needs a name (the path is the root)",
            )
            .with_context("path", &f.path));
        }
        let w = self.db()?.begin_write()?;
        let mut out = Vec::with_capacity(files.len());
        {
            let blobs = w.open_table(BLOBS)?;
            let mut refs = w.open_table(REFS)?;
            let mut heads = w.open_table(FILES)?;
            let mut versions = w.open_table(VERSIONS)?;
            // The chunks' references, counted first and then checked and
            // added in key order: chunk ids are random, so adding them file
            // by file would touch a different page of each table every time.
            let mut added: std::collections::BTreeMap<&[u8; 32], (u64, &RepoPath)> =
                std::collections::BTreeMap::new();
            for f in &files {
                for c in &f.chunks {
                    added.entry(c.id.as_bytes()).or_insert((0, &f.path)).0 += 1;
                }
            }
            let mut k = blob_key(tenant, &ChunkId::from_bytes([0; 32]));
            let id_at = k.len() - 32;
            for (id, (count, path)) in added {
                k[id_at..].copy_from_slice(id);
                if blobs.get(k.as_slice())?.is_none() {
                    return Err(Error::new(
                        ErrorKind::Integrity,
                        "a chunk of the file is not committed",
                    )
                    .with_context("path", path)
                    .with_context("chunk", ChunkId::from_bytes(*id)));
                }
                let n = refs.get(k.as_slice())?.map(|v| v.value()).unwrap_or(0);
                refs.insert(k.as_slice(), n + count)?;
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
                        return Err(Error::new(
                            ErrorKind::InvalidInput,
                            "version numbers only grow",
                        )
                        .with_context("path", &f.path)
                        .with_context("version", v)
                        .with_context("next", next));
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
                    enc(&fv)?.as_slice(),
                )?;
                out.push(fv);
            }
        }
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
        let v = versions.get(version_key(tenant, path, head.latest).as_slice())?;
        v.map(|v| dec(v.value())).transpose()
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
                let v = versions.get(version_key(tenant, path, head.latest).as_slice())?;
                v.map(|v| dec(v.value())).transpose()
            })
            .collect()
    }

    fn blobs(&self, tenant: &str, ids: &[ChunkId]) -> Result<Vec<Option<BlobLoc>>> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(BLOBS)?;
        ids.iter()
            .map(|id| {
                let v = t.get(blob_key(tenant, id).as_slice())?;
                v.map(|v| dec(v.value())).transpose()
            })
            .collect()
    }

    fn version(&self, tenant: &str, path: &RepoPath, version: u64) -> Result<Option<FileVersion>> {
        let r = self.db()?.begin_read()?;
        let versions = r.open_table(VERSIONS)?;
        let v = versions.get(version_key(tenant, path, version).as_slice())?;
        v.map(|v| dec(v.value())).transpose()
    }

    fn versions(&self, tenant: &str, path: &RepoPath) -> Result<Vec<FileVersion>> {
        let r = self.db()?.begin_read()?;
        let versions = r.open_table(VERSIONS)?;
        let lo = version_key(tenant, path, 0);
        let hi = version_key(tenant, path, u64::MAX);
        let mut out = Vec::new();
        for item in versions.range(lo.as_slice()..=hi.as_slice())? {
            let (_, v) = item?;
            out.push(dec(v.value())?);
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
                let fv: FileVersion = dec(versions
                    .get(version_key(tenant, &path, head.latest).as_slice())?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Integrity,
                            "file head points at a missing version",
                        )
                    })?
                    .value())?;
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
            let fv: FileVersion = versions
                .remove(vk.as_slice())?
                .map(|v| dec(v.value()))
                .transpose()?
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, "no such version")
                        .with_context("path", path)
                        .with_context("version", version)
                })?;
            let mut refs = w.open_table(REFS)?;
            for c in &fv.chunks {
                let k = blob_key(tenant, &c.id);
                let n = refs.get(k.as_slice())?.map(|v| v.value()).unwrap_or(0);
                if n <= 1 {
                    refs.remove(k.as_slice())?;
                } else {
                    refs.insert(k.as_slice(), n - 1)?;
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
        let loc: BlobLoc = dec(v.value())?;
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
        let refs = r.open_table(REFS)?;
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
            let n = refs.get(key)?.map(|v| v.value()).unwrap_or(0);
            out.push((id, dec(v.value())?, n));
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
            let refs = w.open_table(REFS)?;
            let mut prefix = rec.tenant.as_bytes().to_vec();
            prefix.push(0);
            let mut here = Vec::new();
            let mut live = false;
            for item in blobs.range(prefix.as_slice()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let loc: BlobLoc = dec(v.value())?;
                if loc.pack == *pack {
                    live |= refs.get(k.value())?.is_some_and(|n| n.value() > 0);
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
        let refs = r.open_table(REFS)?;
        let blobs = r.open_table(BLOBS)?;
        let mut computed: std::collections::BTreeMap<Vec<u8>, u64> =
            std::collections::BTreeMap::new();
        for item in versions.iter()? {
            let (k, v) = item?;
            let key = k.value();
            let tenant_end = key.iter().position(|&b| b == 0).unwrap_or(0);
            let tenant = std::str::from_utf8(&key[..tenant_end])
                .map_err(|_| Error::new(ErrorKind::Integrity, "bad tenant key"))?;
            let fv: FileVersion = dec(v.value())?;
            for c in &fv.chunks {
                *computed.entry(blob_key(tenant, &c.id)).or_default() += 1;
            }
        }
        let mut stored: std::collections::BTreeMap<Vec<u8>, u64> =
            std::collections::BTreeMap::new();
        for item in refs.iter()? {
            let (k, v) = item?;
            stored.insert(k.value().to_vec(), v.value());
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
        let t = r.open_table(REFS)?;
        Ok(t.get(blob_key(tenant, id).as_slice())?
            .map(|v| v.value())
            .unwrap_or(0))
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

/// Records `pack` and its blobs in `w`. With `moving` (a repack) each blob
/// moves to `pack`; otherwise a blob already known keeps its place, unless
/// its pack is condemned by gc: then the fresh copy is the one to keep.
fn record_pack(
    w: &redb::WriteTransaction,
    pack: &PackRecord,
    blobs: &[(ChunkId, BlobLoc)],
    moving: bool,
) -> Result<()> {
    w.open_table(PACKS)?
        .insert(pack.id.as_bytes().as_slice(), enc(pack)?.as_slice())?;
    let mut b = w.open_table(BLOBS)?;
    let condemned = w.open_table(CONDEMNED)?;
    for (id, loc) in blobs {
        let k = blob_key(&pack.tenant, id);
        let keep_old = !moving
            && match b.get(k.as_slice())? {
                None => false,
                Some(old) => {
                    let old: BlobLoc = dec(old.value())?;
                    condemned.get(old.pack.as_bytes().as_slice())?.is_none()
                }
            };
        if !keep_old {
            b.insert(k.as_slice(), enc(loc)?.as_slice())?;
        }
    }
    Ok(())
}
