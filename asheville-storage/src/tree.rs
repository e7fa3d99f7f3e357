//! Whole directory trees in and out of a tenant: what the `asheville` CLI's
//! `put` and `get` run, and what the benchmarks measure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use asheville_core::ChunkId;
use futures::{FutureExt, StreamExt};

use crate::catalog::FileMeta;
use crate::catalog::FileVersion;
use crate::error::{Error, ErrorKind, Result};
use crate::path::RepoPath;
use crate::repository::{Namespace, READ_WHOLE_LIMIT, Repository, Tenant, WHOLE_FILE_LIMIT};
use crate::sink::{Sink, WriteMode};

/// Files opened (and, when small, read and prepared) per group of
/// [`put_tree`]'s read-ahead.
const OPEN_GROUP_FILES: usize = 64;
/// Bytes of small files read per group of [`put_tree`]'s read-ahead.
const OPEN_GROUP_BYTES: u64 = 512 << 10;
/// Groups of files read (and prepared) ahead of the one being stored, up
/// to [`OPEN_AHEAD_BYTES`] of small files: ~1,400 files of ~10 KB, where
/// 12 groups of 1 MiB held ~770 and 3 of 4 MiB ~190 before.
///
/// The thread that prepares small files (reads, compresses, seals) runs
/// ahead while large files are written, and is what the put waits for
/// where large files need little work: a large file whose chunks are all
/// stored already is only read, cut and hashed. In the peers set, the
/// copies of large files came in a run (0.52-0.76 s of a 1.48 s put):
/// there the small files' thread ran 56-86% of the time, the main thread
/// 32-44%, the blocking pool (reader, writes) 46-64%, and 11-27% of the
/// two cores were idle (`perf sched timehist`). With twice the files
/// ahead, CLI puts of the peers set (`rs(2,1)`, alternating rounds,
/// medians) took 1.355 s against 1.430 (8 rounds, these groups), and
/// with 24 groups of 1 MiB 1.345 against 1.510 (6 rounds), 1.335 against
/// 1.440 and 1.315 against 1.365 (8 rounds each; 6 of 8 rounds faster in
/// each), for 3-5 MiB more peak RSS (115-116 against 111-112 MiB). The
/// same ~770 files ahead in 24 groups of 32 files gained nothing (1.440
/// s), nor did 32 groups (1.315 s, beside 24's 1.315) or 48 (1.385,
/// beside 24's 1.335), which peaked at 123 and 127 MiB; a second thread
/// preparing every other group did no better (1.420 and 1.445 s).
const OPEN_GROUPS_AHEAD: usize = 24;
/// Bytes of small files (as listed) read and prepared ahead at most, as
/// before: groups hold up to [`OPEN_GROUP_BYTES`], but a file of up to 1
/// MiB makes a group of its own, and 24 of those would be 24 MiB.
const OPEN_AHEAD_BYTES: u32 = 12 << 20;

/// Progress of a long operation; every method has a no-op default.
pub trait Progress: Send + Sync {
    /// The work ahead, once known.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// One more file done, of `bytes` bytes.
    fn file_done(&self, _path: &str, _bytes: u64) {}
    /// A file was skipped (not a regular file, or unreadable).
    fn skipped(&self, _path: &str, _why: &str) {}
}

/// No progress reporting.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a tree operation did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TreeReport {
    /// Files stored or restored.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Paths skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Files left alone by [`put_tree`] because their latest version has
    /// the same size, modification time and mode.
    pub unchanged: u64,
    /// Their bytes.
    pub unchanged_bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// How [`put_tree`] batches commits.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions {
    /// Commit after this many files...
    pub batch_files: usize,
    /// ...or this many bytes, whichever comes first. A crash loses at most
    /// the two batches not yet committed (one commits while the next
    /// fills); everything committed before stays, and the chunks of
    /// committed batches are not stored again when the put is run again.
    /// (A batch's packs are recorded when it commits, after all of its
    /// shards are synced at once.)
    pub batch_bytes: u64,
    /// Leave a file alone (no new version, not read) when its latest
    /// version has the same size, modification time and mode, as restic
    /// and borg do. `false` reads and stores every file again.
    pub skip_unchanged: bool,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            batch_files: 10_000,
            batch_bytes: 1 << 30,
            skip_unchanged: true,
        }
    }
}

fn walk(
    root: &Path,
    rel: &Path,
    out: &mut Vec<(PathBuf, u64, FileMeta)>,
    skipped: &mut Vec<(String, String)>,
) -> Result<()> {
    let dir = root.join(rel);
    // Each name is fetched once (`DirEntry::file_name` allocates).
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io("cannot read directory", e).with_context("dir", dir.display()))?
        .map(|e| e.map(|e| (e.file_name(), e)))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("cannot read directory", e).with_context("dir", dir.display()))?;
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, e) in entries {
        let rel_child = rel.join(name);
        let ft = e.file_type().map_err(|err| {
            Error::io("cannot stat", err).with_context("path", e.path().display())
        })?;
        if ft.is_dir() {
            walk(root, &rel_child, out, skipped)?;
        } else if ft.is_file() {
            let m = e.metadata().map_err(|err| {
                Error::io("cannot stat", err).with_context("path", e.path().display())
            })?;
            out.push((rel_child, m.len(), crate::repository::local_meta(&m)));
        } else {
            skipped.push((
                rel_child.display().to_string(),
                "not a regular file (symlink, socket, device)".into(),
            ));
        }
    }
    Ok(())
}

fn remote_for(remote_root: &RepoPath, rel: &Path) -> Result<String> {
    let rel = rel.to_str().ok_or_else(|| {
        Error::new(ErrorKind::InvalidInput, "file name is not valid UTF-8")
            .with_context("path", rel.display())
    })?;
    Ok(if remote_root.is_root() {
        rel.to_owned()
    } else {
        format!("{}/{rel}", remote_root.as_str())
    })
}

/// A local file or directory tree, walked and stat'ed, ready for
/// [`put_listed`].
///
/// Listing touches only the local filesystem, so a caller can run it while
/// it opens the repository, whose key derivation (Argon2id) takes about as
/// long as walking a large tree; the `asheville` CLI does.
#[derive(Debug)]
pub struct LocalListing {
    /// Directory the files' relative paths start from.
    root: PathBuf,
    files: Vec<(PathBuf, u64, FileMeta)>,
    skipped: Vec<(String, String)>,
    /// `local` was a single file (stored under the remote path itself).
    single: bool,
    /// When the listing began: a put's reported time counts from here.
    started: Instant,
    /// Set by [`LocalListing::leave_out_unchanged`].
    unchanged: Option<LeftOut>,
}

/// Files a listing left out as unchanged, and where they were looked up.
#[derive(Debug)]
struct LeftOut {
    tenant: String,
    remote: RepoPath,
    files: u64,
    bytes: u64,
}

impl LeftOut {
    /// `InvalidInput` unless the files were looked up for a put by
    /// `tenant` under `remote`.
    fn check(&self, tenant: &str, remote: &RepoPath) -> Result<()> {
        if self.tenant == tenant && self.remote == *remote {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            "the listing's unchanged files were looked up for another tenant or remote path",
        )
        .with_context("checked", format!("{}:/{}", self.tenant, self.remote))
        .with_context("put", format!("{tenant}:/{remote}")))
    }
}

impl LocalListing {
    /// Lists `local`: the file itself, or every regular file below the
    /// directory (symlinks, sockets and devices are skipped and reported).
    pub fn new(local: &Path) -> Result<LocalListing> {
        let started = Instant::now();
        let meta = std::fs::metadata(local)
            .map_err(|e| Error::io("cannot stat", e).with_context("path", local.display()))?;
        let mut skipped = Vec::new();
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(local, Path::new(""), &mut files, &mut skipped)?;
            return Ok(LocalListing {
                root: local.to_path_buf(),
                files,
                skipped,
                single: false,
                started,
                unchanged: None,
            });
        }
        let parent = local.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = PathBuf::from(local.file_name().unwrap_or_default());
        Ok(LocalListing {
            root: parent,
            files: vec![(name, meta.len(), crate::repository::local_meta(&meta))],
            skipped,
            single: true,
            started,
            unchanged: None,
        })
    }

    /// Regular files listed.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file was listed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Leaves out the files a put to `remote` would find unchanged (same
    /// size, mtime and mode as their latest version in `tenant`'s
    /// namespace of `repo`), as [`put_listed`] with
    /// [`PutOptions::skip_unchanged`] does first. The catalog's answer
    /// needs no key, so a caller can ask while the tenant unlocks; the
    /// `asheville` CLI does. A put of this listing then counts these files
    /// as unchanged, whatever its options, and does not look again; it
    /// must be a put by the same tenant of the same repository under the
    /// same `remote` (`InvalidInput` where the tenant or the remote path
    /// differ).
    pub async fn leave_out_unchanged(
        &mut self,
        repo: &Repository,
        tenant: &str,
        remote: &str,
    ) -> Result<()> {
        let remote_root = put_root(remote, self.single)?;
        if let Some(done) = &self.unchanged {
            done.check(tenant, &remote_root)?;
        }
        // Looked up first: the listing stays whole if that fails.
        let same = unchanged_files(
            &repo.namespace(tenant),
            &self.files,
            self.single,
            &remote_root,
        )
        .await?;
        let (kept, count, bytes) = left_out(std::mem::take(&mut self.files), &same);
        self.files = kept;
        let (before, before_bytes) = self
            .unchanged
            .as_ref()
            .map_or((0, 0), |u| (u.files, u.bytes));
        self.unchanged = Some(LeftOut {
            tenant: tenant.to_owned(),
            remote: remote_root,
            files: before + count,
            bytes: before_bytes + bytes,
        });
        Ok(())
    }
}

/// The remote path a put stores under: a single file needs one of its own.
fn put_root(remote: &str, single: bool) -> Result<RepoPath> {
    let remote_root = RepoPath::parse(remote)?;
    if single && remote_root.is_root() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "give a remote path for a single file",
        ));
    }
    Ok(remote_root)
}

/// Where a put under `remote_root` stores the listed file `rel`.
fn remote_of(remote_root: &RepoPath, single: bool, rel: &Path) -> Result<String> {
    if single {
        Ok(remote_root.as_str().to_owned())
    } else {
        remote_for(remote_root, rel)
    }
}

/// Files whose latest versions are looked up at once when a put leaves
/// out unchanged files: the paths and versions of a whole tree at once
/// raised a put's peak RSS.
const UNCHANGED_AT_ONCE: usize = 2048;

/// Which of `files` are unchanged: the same size, mtime and mode as their
/// latest versions, looked up [`UNCHANGED_AT_ONCE`] at a time.
async fn unchanged_files(
    ns: &Namespace,
    files: &[(PathBuf, u64, FileMeta)],
    single: bool,
    remote_root: &RepoPath,
) -> Result<Vec<bool>> {
    let mut same = Vec::with_capacity(files.len());
    for part in files.chunks(UNCHANGED_AT_ONCE) {
        let paths = part
            .iter()
            .map(|f| RepoPath::parse(&remote_of(remote_root, single, &f.0)?))
            .collect::<Result<Vec<_>>>()?;
        let latest = ns.stat_many(paths).await?;
        same.extend(
            part.iter()
                .zip(latest)
                .map(|(f, fv)| fv.is_some_and(|fv| fv.size == f.1 && fv.meta == f.2)),
        );
    }
    Ok(same)
}

/// `files` without those marked in `same`, and how many files and bytes
/// were left out.
fn left_out(
    files: Vec<(PathBuf, u64, FileMeta)>,
    same: &[bool],
) -> (Vec<(PathBuf, u64, FileMeta)>, u64, u64) {
    let (mut count, mut bytes) = (0, 0);
    let mut kept = Vec::with_capacity(files.len());
    for (f, &same) in files.into_iter().zip(same) {
        if same {
            count += 1;
            bytes += f.1;
        } else {
            kept.push(f);
        }
    }
    (kept, count, bytes)
}

/// Stores `local` (a file or a directory, recursively) under `remote`.
/// A file goes to `remote` itself; a directory's files go below it.
pub async fn put_tree(
    t: &Tenant,
    local: &Path,
    remote: &str,
    opts: PutOptions,
    progress: &dyn Progress,
) -> Result<TreeReport> {
    put_listed(t, LocalListing::new(local)?, remote, opts, progress).await
}

/// [`put_tree`] of a tree already listed with [`LocalListing::new`].
pub async fn put_listed(
    t: &Tenant,
    listing: LocalListing,
    remote: &str,
    opts: PutOptions,
    progress: &dyn Progress,
) -> Result<TreeReport> {
    let LocalListing {
        root,
        files,
        skipped,
        single,
        started,
        unchanged,
    } = listing;
    let remote_root = put_root(remote, single)?;
    let mut report = TreeReport {
        skipped,
        ..TreeReport::default()
    };
    for (p, why) in &report.skipped {
        progress.skipped(p, why);
    }
    let remote_of = |rel: &Path| remote_of(&remote_root, single, rel);
    // Unchanged files (same size, mtime and mode as their latest version)
    // are neither read nor stored again: left out of the listing already
    // (`LocalListing::leave_out_unchanged`), or now.
    let mut files = files;
    match unchanged {
        Some(done) => {
            done.check(t.name(), &remote_root)?;
            report.unchanged = done.files;
            report.unchanged_bytes = done.bytes;
        }
        None if opts.skip_unchanged => {
            let same = unchanged_files(&t.namespace(), &files, single, &remote_root).await?;
            let (kept, count, bytes) = left_out(files, &same);
            files = kept;
            report.unchanged = count;
            report.unchanged_bytes = bytes;
        }
        None => {}
    }
    let files = interleave(files);
    progress.start(files.len() as u64, files.iter().map(|f| f.1).sum());
    // Open the files ahead of the one being stored, in order, on a thread
    // of their own, in groups of up to OPEN_GROUP_FILES files or
    // OPEN_GROUP_BYTES bytes, so that many small files do not each wait
    // on (and wake) a thread. Small files are read, and their chunks hashed
    // and sealed there (Tenant::open_group): compressing them runs while
    // the batch waits for its packs to be written, not after.
    let mut groups: Vec<(Vec<PathBuf>, u64)> = Vec::new();
    for (rel, size, _) in &files {
        let size = if *size <= READ_WHOLE_LIMIT { *size } else { 0 };
        match groups.last_mut() {
            Some((g, group_bytes))
                if g.len() < OPEN_GROUP_FILES && *group_bytes + size <= OPEN_GROUP_BYTES =>
            {
                g.push(root.join(rel));
                *group_bytes += size;
            }
            _ => groups.push((vec![root.join(rel)], size)),
        }
    }
    let mut ahead = t.open_ahead(groups, OPEN_GROUPS_AHEAD, OPEN_AHEAD_BYTES)?;
    // A group's share of the bytes ahead goes back as it is taken.
    let mut opened = futures::stream::poll_fn(move |cx| ahead.poll_recv(cx))
        .map(|(group, _share)| futures::stream::iter(group))
        .flatten();
    // Each batch commits while the next one fills, so the pipeline does
    // not drain at every commit; at most one commit is in flight. An error
    // while filling waits for the commit before it, so every batch that
    // was whole is committed as before. A batch leaves out the chunks of
    // the one committing, and refers to them: it commits only after that
    // one did. A tenant with a quota commits first: its quota check counts
    // committed bytes (a quota set by another process while this put runs
    // may let the batch being filled then through). Put of the peers set (20,027
    // files, 3 commits), 10 alternating rounds: median 2.33 -> 2.20 s.
    let quota = t.has_quota()?;
    let mut queue = files.iter();
    let mut committing: Option<(Committing<'_>, Vec<(String, u64)>)> = None;
    // One batch fills while the one before commits: they share the
    // permits of `packs_in_flight` packs, so memory stays that of one write.
    let permits = t.pack_permits();
    // The chunks of the batch committing, which the next one leaves out
    // (those of the batches before it are in the catalog).
    let mut handed_on = std::sync::Arc::default();
    loop {
        let mut batch = t.batch_after(permits.clone(), handed_on);
        let mut done = Vec::new();
        let cap = batch_cap(queue.len(), opts.batch_files);
        let fill = async {
            for (rel, _, _) in queue.by_ref() {
                let remote_path = remote_of(rel)?;
                let file = opened
                    .next()
                    .await
                    .ok_or_else(|| Error::new(ErrorKind::Other, "read-ahead ended early"))??;
                let before = batch.bytes();
                batch.add_local(&remote_path, file).await?;
                done.push((remote_path, batch.bytes() - before));
                if batch.len() >= cap || batch.bytes() >= opts.batch_bytes {
                    break;
                }
            }
            Ok(())
        };
        let mut earlier = committing.take();
        if quota {
            alongside(earlier.take(), async { Ok(()) }, &mut report, progress).await?;
        }
        alongside(earlier, fill, &mut report, progress).await?;
        if batch.is_empty() {
            break;
        }
        let (ids, commit) = batch.commit_handing_on();
        handed_on = ids;
        committing = Some((Box::pin(commit), done));
    }
    // The last batch commits alone.
    alongside(committing, async { Ok(()) }, &mut report, progress).await?;
    t.repository().compact_catalog().await.map_err(|e| {
        e.with_context(
            "note",
            "every file was stored and committed; only compacting the catalog failed",
        )
    })?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Files a put's batch may hold with `left` files still to store: at most
/// `batch_files`, and the last batches halve, down to about
/// [`TAIL_BATCH_FILES`]. The last batch's commit runs alone, with nothing
/// to overlap: with the last 10,000 files in one batch, a put of the repo
/// bench set ended with ~0.1 s more on one core (CPU use every 50 ms: the
/// tail at ~45% ran 0.30 s before, 0.20 s after). Halving, each commit
/// overlaps the fill of a batch half its size, and the last one is small.
fn batch_cap(left: usize, batch_files: usize) -> usize {
    let batch_files = batch_files.max(1);
    if left <= 2 * TAIL_BATCH_FILES {
        return batch_files.min(left.max(1));
    }
    batch_files.min(left.div_ceil(2))
}

/// About the fewest files of the shrinking last batches of a put (see
/// [`batch_cap`]): every batch costs a commit (a journal object and two
/// catalog transactions, synced).
const TAIL_BATCH_FILES: usize = 500;

/// The order a put stores files in: the small files (up to
/// [`READ_WHOLE_LIMIT`]) spread among the large ones by bytes, so that
/// compressing small files (CPU) overlaps writing the large ones' packs
/// (disk) instead of following it. Put of the peers set (CLI, 5
/// alternating rounds): median 3.18 s against 3.56 in listing order; repo
/// bench (`rs(4,2)`) put 415 and 396 MB/s against 378 and 397, the same
/// bytes stored. (It was done within each commit batch's worth of files,
/// while a batch could store again a chunk of the batch committing: the
/// peers set's second batch was then small files only, 0.5 s of zstd at
/// the end of the put with no writes to overlap.)
fn interleave<T>(files: Vec<(PathBuf, u64, T)>) -> Vec<(PathBuf, u64, T)> {
    let mut out = Vec::with_capacity(files.len());
    let (small, large): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| f.1 <= READ_WHOLE_LIMIT);
    let small_total = u128::from(small.iter().map(|f| f.1).sum::<u64>());
    let large_total = u128::from(large.iter().map(|f| f.1).sum::<u64>()).max(1);
    let mut small = small.into_iter();
    let (mut small_out, mut large_out) = (0u128, 0u128);
    for f in large {
        large_out += u128::from(f.1);
        out.push(f);
        while small_out * large_total < large_out * small_total {
            let Some(g) = small.next() else { break };
            small_out += u128::from(g.1);
            out.push(g);
        }
    }
    out.extend(small);
    out
}

/// A batch's commit, in flight.
type Committing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<FileVersion>>> + Send + 'a>>;

/// Runs `fill` while `earlier` (a commit and its files) finishes, then
/// counts the committed files. A failed commit stops `fill` at once; a
/// failed `fill` first lets the commit finish.
async fn alongside(
    earlier: Option<(Committing<'_>, Vec<(String, u64)>)>,
    fill: impl std::future::Future<Output = Result<()>>,
    report: &mut TreeReport,
    progress: &dyn Progress,
) -> Result<()> {
    let Some((commit, mut done)) = earlier else {
        return fill.await;
    };
    let fill = std::pin::pin!(fill);
    let filled = match futures::future::select(commit, fill).await {
        futures::future::Either::Left((committed, fill)) => {
            committed?;
            finish(report, &mut done, progress);
            return fill.await;
        }
        futures::future::Either::Right((filled, commit)) => {
            commit.await?;
            filled
        }
    };
    finish(report, &mut done, progress);
    filled
}

/// Counts the files of a batch once it has committed.
fn finish(report: &mut TreeReport, done: &mut Vec<(String, u64)>, progress: &dyn Progress) {
    for (p, b) in done.drain(..) {
        report.files += 1;
        report.bytes += b;
        progress.file_done(&p, b);
    }
}

/// Restores `remote` (a file or a directory tree) to `local`, with each
/// file's mtime and permissions. A file over 1 MiB, or one replacing a
/// file already there, is written under a temporary name and gets its
/// real name once whole; a smaller new one is created under its real name
/// only once all of its bytes are in memory and authenticated, and
/// removed if its write fails. So a failed restore never leaves a
/// half-written file under a real name (one killed mid-way may leave the
/// small file it was writing).
pub async fn get_tree(
    t: &Tenant,
    remote: &str,
    local: &Path,
    progress: &dyn Progress,
) -> Result<TreeReport> {
    let plan = RestorePlan::of(t.namespace(), remote).await?;
    get_planned(t, plan, local, progress).await
}

/// What a restore of a remote path will write, looked up in the catalog
/// ahead of it: the file or the tree's files, their versions, and where
/// the small files' data lies. Reading the catalog needs no key, so a
/// caller can make the plan while it unlocks the tenant (Argon2id); the
/// `asheville` CLI does. Only [`get_planned`], with the tenant unlocked,
/// reads what it holds; its `Debug` shows counts, not paths.
pub struct RestorePlan {
    tenant: String,
    root: RepoPath,
    /// The remote path is a file, restored to the local path itself.
    single: Option<FileVersion>,
    /// Small files (with where their first chunk lies) and large ones,
    /// grouped by content: a group's chunks are read once and written to
    /// each of its files.
    small: Vec<(Option<(asheville_core::PackId, u64)>, FileVersion)>,
    large: Vec<Vec<FileVersion>>,
    /// When the plan began: a restore's reported time counts from here.
    started: Instant,
    /// Files over `BATCH_FILE_LIMIT` are written back and dropped from the
    /// page cache as they are written.
    drop_behind: bool,
}

impl std::fmt::Debug for RestorePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestorePlan")
            .field("tenant", &self.tenant)
            .field("single", &self.single.is_some())
            .field("small", &self.small.len())
            .field("large", &self.large.iter().map(Vec::len).sum::<usize>())
            .field("drop_behind", &self.drop_behind)
            .finish_non_exhaustive()
    }
}

impl RestorePlan {
    /// Plans the restore of `remote` from `tenant`'s namespace in `repo`.
    /// Fails with `NotFound` when nothing lives at `remote`.
    pub async fn new(repo: &Repository, tenant: &str, remote: &str) -> Result<RestorePlan> {
        Self::of(repo.namespace(tenant), remote).await
    }

    /// Restore files over 1 MiB (and the file of a single-file restore)
    /// without filling the page cache (off by default): each is written
    /// back to the disk as it is written, and its pages are dropped from
    /// the cache once on the disk, 32 MiB (over all files) behind the
    /// writer; the last 32 MiB are left to the kernel when the restore
    /// ends. Files up to 1 MiB in a tree are written as usual. What the
    /// machine was caching stays cached, and dirty memory stays bounded.
    /// Restores that way are slower where free memory is quick to take
    /// (they wait for the disk: a cold restore of the peers set in the
    /// peers sequence, 1.53 s without, 2.25 s with), and quicker where the
    /// cache has to take memory the host reclaimed: the repo bench's get
    /// (rs(4,2)) ran at 244-345 MB/s without, 416-488 MB/s with.
    pub fn drop_behind(mut self, on: bool) -> RestorePlan {
        self.drop_behind = on;
        self
    }

    async fn of(ns: Namespace, remote: &str) -> Result<RestorePlan> {
        let started = Instant::now();
        let root = RepoPath::parse(remote)?;
        let mut plan = RestorePlan {
            tenant: ns.tenant().to_owned(),
            root,
            single: None,
            small: Vec::new(),
            large: Vec::new(),
            started,
            drop_behind: false,
        };
        // A single file?
        if !plan.root.is_root()
            && let Ok(Some(fv)) = ns.latest(&plan.root)
        {
            plan.single = Some(fv);
            return Ok(plan);
        }
        // The versions, split into small files (restored in batches, in
        // the order their data lies in the packs) and large ones
        // (streamed). Read in one pass over the catalog: listing the paths
        // and then looking up each one's version took twice as long.
        let versions = ns.latest_under(&plan.root).await?;
        if versions.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "nothing at this path")
                .with_context("path", &plan.root));
        }
        // Large files with the same content (the same chunks) form one
        // group, found by size and first chunk.
        let mut groups: HashMap<(u64, ChunkId), Vec<usize>> = HashMap::new();
        for fv in versions {
            let first = match fv.chunks.first() {
                Some(c) if fv.size > BATCH_FILE_LIMIT => c.id,
                _ => {
                    plan.small.push((None, fv));
                    continue;
                }
            };
            let same = groups.entry((fv.size, first)).or_default();
            match same.iter().find(|&&g| plan.large[g][0].chunks == fv.chunks) {
                Some(&g) => plan.large[g].push(fv),
                None => {
                    same.push(plan.large.len());
                    plan.large.push(vec![fv]);
                }
            }
        }
        let firsts = plan
            .small
            .iter()
            .filter_map(|(_, fv)| fv.chunks.first().map(|c| c.id))
            .collect();
        let mut positions = ns.blob_positions(firsts).await?.into_iter();
        for (at, fv) in &mut plan.small {
            if !fv.chunks.is_empty() {
                *at = positions.next().flatten();
            }
        }
        Ok(plan)
    }
}

/// [`get_tree`] of a restore planned with [`RestorePlan::new`] (from the
/// same tenant of the same repository).
pub async fn get_planned(
    t: &Tenant,
    plan: RestorePlan,
    local: &Path,
    progress: &dyn Progress,
) -> Result<TreeReport> {
    if plan.tenant != t.name() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the restore was planned for another tenant",
        )
        .with_context("tenant", t.name()));
    }
    let (started, drop_behind) = (plan.started, plan.drop_behind);
    let r = restore_planned(t, plan, local, progress).await;
    if drop_behind {
        // Every range still queued, this restore's and any other's at
        // once: none is waited for, so another restore only keeps more
        // of its pages cached.
        let _ = blocking(|| {
            crate::dropbehind::release();
            Ok(())
        })
        .await;
    }
    let mut report = r?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The work of [`get_planned`], once the plan's tenant is checked.
async fn restore_planned(
    t: &Tenant,
    plan: RestorePlan,
    local: &Path,
    progress: &dyn Progress,
) -> Result<TreeReport> {
    let RestorePlan {
        root,
        single,
        small,
        large,
        drop_behind,
        ..
    } = plan;
    let mut report = TreeReport::default();
    if let Some(fv) = single {
        progress.start(1, fv.size);
        let dir = local.parent().filter(|p| !p.as_os_str().is_empty());
        let mode = WriteMode::new(dir.unwrap_or(Path::new(".")), drop_behind);
        for fv in restore_file(t, vec![(fv, local.to_path_buf())], &mode).await? {
            progress.file_done(&fv.path, fv.size);
            report.files += 1;
            report.bytes += fv.size;
        }
        return Ok(report);
    }
    progress.start(
        (small.len() + large.iter().map(Vec::len).sum::<usize>()) as u64,
        small
            .iter()
            .map(|f| f.1.size)
            .chain(large.iter().flatten().map(|f| f.size))
            .sum(),
    );
    let prefix_len = if root.is_root() {
        0
    } else {
        root.as_str().len() + 1
    };
    let dest = |fv: &FileVersion| local.join(&fv.path[prefix_len..]);
    let mut small: Vec<_> = small
        .into_iter()
        .map(|(at, fv)| {
            let d = dest(&fv);
            (at, fv, d)
        })
        .collect();
    let large: Vec<Vec<_>> = large
        .into_iter()
        .map(|group| {
            group
                .into_iter()
                .map(|fv| {
                    let d = dest(&fv);
                    (fv, d)
                })
                .collect()
        })
        .collect();
    // Every directory once, up front, found by name (a set of `Path`s,
    // compared component by component, took 5-8 ms for 20,000 files).
    let dirs: Vec<PathBuf> = small
        .iter()
        .map(|(_, fv, _)| fv)
        .chain(large.iter().flatten().map(|(fv, _)| fv))
        .map(|fv| {
            fv.path[prefix_len..]
                .rsplit_once('/')
                .map_or("", |(dir, _)| dir)
        })
        .collect::<std::collections::BTreeSet<&str>>()
        .into_iter()
        .map(|dir| local.join(dir))
        .collect();
    // The umask, read now: files created with their modes get them less
    // the umask's bits.
    let umask = blocking(move || {
        dirs.iter().try_for_each(|d| {
            std::fs::create_dir_all(d)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", d.display())))
        })?;
        Ok(umask())
    })
    .await
    .map_err(|e| Error::io("cannot create directory", e))?;
    let mode = WriteMode::new(local, drop_behind);
    small.sort_by_key(|s| s.0);
    let mut batches: Vec<Vec<(FileVersion, PathBuf)>> = Vec::new();
    let mut batch_bytes = 0;
    for (_, fv, dest) in small {
        match batches.last_mut() {
            Some(b) if b.len() < BATCH_FILES && batch_bytes + fv.size <= BATCH_BYTES => {
                batch_bytes += fv.size;
                b.push((fv, dest));
            }
            _ => {
                batch_bytes = fv.size;
                batches.push(vec![(fv, dest)]);
            }
        }
    }
    // Small files, SMALL_AT_ONCE batches at once (one is read while the
    // other is written), alongside up to LARGE_AT_ONCE large files
    // streaming: the creation of many small files (filesystem CPU)
    // overlaps the large files' reads and writes. Once either kind has
    // nothing left to start, the other takes its places (`start_next`).
    let mut small = batches.into_iter();
    let mut large = large.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    let (mut small_on, mut large_on) = (0, 0);
    loop {
        while let Some(next) = start_next((small.len(), large.len()), (small_on, large_on)) {
            match next {
                Next::Small => {
                    let Some(b) = small.next() else { break };
                    small_on += 1;
                    let batch = restore_batch(t, b, umask).map(|r| (Next::Small, r));
                    running.push(futures::future::Either::Left(batch));
                }
                Next::Large => {
                    let Some(group) = large.next() else { break };
                    large_on += 1;
                    let file = restore_file(t, group, &mode).map(|r| (Next::Large, r));
                    running.push(futures::future::Either::Right(file));
                }
            }
        }
        let Some((done, r)) = running.next().await else {
            break;
        };
        match done {
            Next::Small => small_on -= 1,
            Next::Large => large_on -= 1,
        }
        for fv in r? {
            report.files += 1;
            report.bytes += fv.size;
            progress.file_done(&fv.path, fv.size);
        }
    }
    Ok(report)
}

/// Small-file batches a restore runs at once while large files are left.
const SMALL_AT_ONCE: usize = 2;
/// Large files a restore streams at once while small-file batches are
/// left.
const LARGE_AT_ONCE: usize = 4;

/// What a restore starts next, given how many small-file batches and
/// large files are still to start (`left`) and running (`on`); `None`
/// while every place it may use is taken. [`SMALL_AT_ONCE`] batches and
/// [`LARGE_AT_ONCE`] files run at once, and once either kind has nothing
/// left to start, the other takes the places it frees.
///
/// With fixed places, cold restores of the peers set (CLI, after
/// `drop_caches`, 3 alternating rounds) finished their last large file
/// 0.55-0.58 s after their directories were made, then created small
/// files alone, two batches at once, until 0.70-0.72 s, one core mostly
/// idle; with places taken over, both kinds ended together at 0.64-0.68 s
/// (whole restores 0.81-0.84 s against 0.84-0.86 s). In `benches/peers`
/// (two runs of 3 rounds, each beside the build before), restores took
/// 0.81-0.95 s (median 0.84) against 0.88-0.96 s (median 0.90); in
/// alternating rounds outside it the gain came and went (0.86 against
/// 0.94 s over 5 rounds, 0.93 against 0.88 s over 5 others). Six places
/// at most: a small batch holds at most [`BATCH_BYTES`] and a large file
/// a few chunks, so memory stays about what the places held before (six
/// large files at once may hold a few chunks more than four and two
/// batches; peak RSS 90-93 MiB either way).
fn start_next(left: (usize, usize), on: (usize, usize)) -> Option<Next> {
    if on.0 + on.1 >= SMALL_AT_ONCE + LARGE_AT_ONCE {
        None
    } else if left.0 > 0 && (left.1 == 0 || on.0 < SMALL_AT_ONCE) {
        Some(Next::Small)
    } else if left.1 > 0 && (left.0 == 0 || on.1 < LARGE_AT_ONCE) {
        Some(Next::Large)
    } else {
        None
    }
}

/// A kind of restore work ([`start_next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A batch of small files ([`restore_batch`]).
    Small,
    /// A large file and those of the same content ([`restore_file`]).
    Large,
}

/// Files up to this size are restored in batches.
const BATCH_FILE_LIMIT: u64 = 1 << 20;
/// At most this many files in a restore batch...
const BATCH_FILES: usize = 512;
/// ...and at most this many bytes.
const BATCH_BYTES: u64 = 8 << 20;

/// Restores small files together: their chunks in one
/// [`Tenant::read_chunks`] call (few ranged reads), then every file written
/// in one blocking task ([`Landing`]), its mtime (and, where the umask took
/// bits of it, its mode) set through the open handle. Nothing is created
/// under a real name before all of the batch's bytes authenticated; the
/// process's `umask` decides whether a mode given at creation stuck.
async fn restore_batch(
    t: &Tenant,
    batch: Vec<(FileVersion, PathBuf)>,
    umask: Option<u32>,
) -> Result<Vec<FileVersion>> {
    let refs: Vec<_> = batch
        .iter()
        .flat_map(|(fv, _)| fv.chunks.iter().copied())
        .collect();
    let mut chunks = t.read_chunks(&refs).await?.into_iter();
    let mut files = Vec::with_capacity(batch.len());
    for (fv, dest) in batch {
        let data: Vec<_> = chunks.by_ref().take(fv.chunks.len()).collect();
        files.push((fv, dest, data));
    }
    blocking(move || {
        let mut written = Vec::with_capacity(files.len());
        for (fv, dest, data) in files {
            let r = Landing::create(&dest, fv.meta.mode, umask).and_then(|mut landing| {
                let r = (|| {
                    use std::io::Write;
                    for c in &data {
                        landing.file.write_all(c)?;
                    }
                    landing.stamp(mtime_of(&fv), fv.meta.mode)
                })();
                match r {
                    Ok(()) => landing.land(&dest),
                    Err(e) => {
                        landing.abandon(&dest);
                        Err(e)
                    }
                }
            });
            if let Err(e) = r {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", dest.display()),
                ));
            }
            written.push(fv);
        }
        Ok(written)
    })
    .await
    .map_err(|e| Error::io("cannot write restored file", e))
}

/// Writes the chunks of `fv` to every one of `sinks` as they arrive (read
/// ahead by the stream), each chunk's buffer handed to a blocking write as
/// it is: one write in flight, no copy into an intermediate buffer.
async fn write_pieces(
    t: &Tenant,
    fv: &FileVersion,
    sinks: Vec<Sink>,
    mode: &std::sync::Arc<WriteMode>,
) -> Result<Vec<std::sync::Arc<std::fs::File>>> {
    use futures::TryStreamExt;
    let wait = |h: tokio::task::JoinHandle<std::io::Result<Vec<Sink>>>| async move {
        h.await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| Error::io("cannot write restored file", e))
    };
    let mut pieces = t.restore_stream(fv)?;
    let mut writing = tokio::task::spawn_blocking(move || Ok(sinks));
    while let Some(piece) = pieces.try_next().await? {
        let mut sinks = wait(writing).await?;
        let mode = mode.clone();
        writing = tokio::task::spawn_blocking(move || {
            for sink in &mut sinks {
                sink.write_all(&piece, &mode)?;
            }
            Ok(sinks)
        });
    }
    let sinks = wait(writing).await?;
    blocking(move || sinks.into_iter().map(Sink::finish).collect())
        .await
        .map_err(|e| Error::io("cannot write restored file", e))
}

/// A small restored file while it is written, its bytes all in memory
/// and authenticated before it is created: created under its real name,
/// with its mode (one directory update, three syscalls besides its
/// writes: open, `futimens`, close), or, where a file is there already (a
/// restore over an earlier one), under a temp name ([`partial_name`])
/// renamed over it once whole. A file whose writing fails is removed.
///
/// Restoring 20,000 files of 1-16 KiB this way took 0.83-1.09 s of CPU
/// (median 1.06 s over 4 alternating rounds of a C loop on ext4) against
/// 1.21-1.23 s created unnamed (`O_TMPFILE`), given their mode and linked
/// into place once whole, which this did before.
struct Landing {
    file: std::fs::File,
    /// The temp name, if the file has one.
    tmp: Option<PathBuf>,
    /// Whether the file got its mode when it was created.
    has_mode: bool,
}

impl Landing {
    /// Creates the file for `dest`, with `mode` (0: the default, 0o666
    /// less the umask), given the process's `umask` if known.
    fn create(dest: &Path, mode: u32, umask: Option<u32>) -> std::io::Result<Landing> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if mode == 0 { 0o666 } else { mode & 0o7777 });
        }
        match opts.open(dest) {
            Ok(file) => Ok(Landing {
                file,
                tmp: None,
                has_mode: mode == 0 || umask.is_some_and(|u| mode & (u | 0o7000) == 0),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let tmp = partial_name(dest);
                Ok(Landing {
                    file: std::fs::File::create(&tmp)?,
                    tmp: Some(tmp),
                    has_mode: mode == 0,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the file its mtime and, unless it has it, its mode.
    fn stamp(&self, mtime: std::time::SystemTime, mode: u32) -> std::io::Result<()> {
        match self.has_mode {
            true => self.file.set_modified(mtime),
            false => stamp(&self.file, mtime, mode),
        }
    }

    /// Gives the written file its name, replacing a file already there.
    fn land(self, dest: &Path) -> std::io::Result<()> {
        let Landing { file, tmp, .. } = self;
        drop(file);
        match tmp {
            None => Ok(()),
            Some(tmp) => std::fs::rename(&tmp, dest).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            }),
        }
    }

    /// Removes a file that will not be finished.
    fn abandon(self, dest: &Path) {
        let Landing { file, tmp, .. } = self;
        drop(file);
        let _ = std::fs::remove_file(tmp.as_deref().unwrap_or(dest));
    }
}

/// This process's umask, where the system tells it without changing it
/// (Linux's `/proc/self/status`).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// The temp name a file is restored under before it is renamed.
fn partial_name(dest: &Path) -> PathBuf {
    dest.with_file_name(format!(
        ".{}.asheville-partial",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

fn mtime_of(fv: &FileVersion) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_nanos(fv.meta.mtime_ns.max(0) as u64)
}

/// Restores files of the same content (`group`, each with where it goes;
/// one, mostly): the first one's chunks are read once and written to each
/// file through a temp name, as [`WriteMode`] says: with buffered writes,
/// as cp, tar and restic do (the restore returns once the bytes are in the
/// page cache, and the kernel writes them back behind it), until the
/// restore finds the page cache dearer than the disk, from then on around
/// it (`O_DIRECT`). Buffered is quicker where memory is at hand: a cold
/// restore of the peers set right after `drop_caches` (as `benches/peers`
/// runs it) took 1.11-1.14 s all `O_DIRECT` against 0.80-0.87 s buffered,
/// at the same CPU. Around the page cache is quicker where it has to take
/// memory this VM gave back to its host: restores of the repo bench set
/// (`rs(4,2)`, CLI) 10 s after the one before, 3 alternating rounds,
/// 1.76-2.44 s switching against 2.59-4.51 s buffered. With
/// `drop_behind`, its pages are written back and dropped as it is written
/// ([`RestorePlan::drop_behind`]). Returns the group's versions.
async fn restore_file(
    t: &Tenant,
    group: Vec<(FileVersion, PathBuf)>,
    mode: &std::sync::Arc<WriteMode>,
) -> Result<Vec<FileVersion>> {
    let tmps: Vec<PathBuf> = group.iter().map(|(_, dest)| partial_name(dest)).collect();
    let remove_tmps = |tmps: &[PathBuf]| {
        for tmp in tmps {
            let _ = std::fs::remove_file(tmp);
        }
    };
    let Some(first) = group.first().map(|(fv, _)| fv.clone()) else {
        return Ok(Vec::new());
    };
    let tmps_c = tmps.clone();
    let size = first.size;
    let mode_c = mode.clone();
    let sinks = blocking(move || {
        let mut sinks = Vec::with_capacity(tmps_c.len());
        for (i, tmp) in tmps_c.iter().enumerate() {
            let created = tmp
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(tmp))
                .and_then(|f| {
                    preallocate(&f, size);
                    Sink::new(f, tmp, &mode_c)
                });
            match created {
                Ok(sink) => sinks.push(sink),
                Err(e) => {
                    // This one's too: it may have been created.
                    drop(sinks);
                    remove_tmps(&tmps_c[..=i]);
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", tmp.display()),
                    ));
                }
            }
        }
        Ok(sinks)
    })
    .await
    .map_err(|e| Error::io("cannot create file", e))?;
    // Files up to WHOLE_FILE_LIMIT are read into memory and written in one
    // blocking call; larger ones stream, one write in flight.
    let written = if first.size <= WHOLE_FILE_LIMIT {
        let mut data = Vec::with_capacity(first.size as usize);
        let mode = mode.clone();
        match t.restore_version(&first, &mut data).await {
            Ok(()) => blocking(move || {
                sinks
                    .into_iter()
                    .map(|mut sink| {
                        sink.write_all(&data, &mode)?;
                        sink.finish()
                    })
                    .collect()
            })
            .await
            .map_err(|e| Error::io("cannot write file", e)),
            Err(e) => Err(e),
        }
    } else {
        write_pieces(t, &first, sinks, mode).await
    };
    let files = match written {
        Ok(files) => files,
        Err(e) => {
            remove_tmps(&tmps);
            return Err(e.with_context("file", group[0].1.display()));
        }
    };
    blocking(move || {
        let mut done = Vec::with_capacity(group.len());
        for (((fv, dest), file), tmp) in group.into_iter().zip(files).zip(&tmps) {
            let landed = stamp(&file, mtime_of(&fv), fv.meta.mode).and_then(|()| {
                drop(file);
                std::fs::rename(tmp, &dest)
            });
            if let Err(e) = landed {
                remove_tmps(&tmps[done.len()..]);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", dest.display()),
                ));
            }
            done.push(fv);
        }
        Ok(done)
    })
    .await
    .map_err(|e| Error::io("cannot finish restored file", e))
}

/// Reserves the blocks of a restored file of `len` bytes before it is
/// written (`fallocate` with `FALLOC_FL_KEEP_SIZE`: the size stays what is
/// written). On ext4 each buffered write into blocks not yet allocated
/// books delayed allocation per block; into reserved blocks it does not:
/// 1 GiB in 32 files, written by a C loop in 0.7–1.4 MiB writes after the
/// cache was dropped, took 0.27–0.29 s of system CPU as is and 0.20–0.21 s
/// reserved first (4 alternating rounds); a cold restore of the peers set
/// took a median 0.97 s of system CPU instead of 1.03 s (5 alternating
/// rounds). The file's blocks are also one run where the disk has room.
/// Restic preallocates its restored files the same way. Advice only: a
/// filesystem that refuses (or is full) gets the writes as before, which
/// report any real failure.
fn preallocate(file: &std::fs::File, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, len);
}

/// Gives a restored file its mtime and, unless it is 0, its mode.
fn stamp(file: &std::fs::File, mtime: std::time::SystemTime, mode: u32) -> std::io::Result<()> {
    file.set_modified(mtime)?;
    #[cfg(unix)]
    if mode != 0 {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The batch sizes a put of `files` files makes.
    fn batches(mut files: usize, batch_files: usize) -> Vec<usize> {
        let mut out = Vec::new();
        while files > 0 {
            let b = batch_cap(files, batch_files).min(files);
            out.push(b);
            files -= b;
        }
        out
    }

    /// Runs a restore's schedule ([`super::start_next`]) over `small`
    /// batches and `large` files, finishing the oldest running task
    /// first, and checks at every step that at most six run, each kind
    /// within its places while the other has some left, and that no place
    /// stays empty while either kind has work to start. Returns the most
    /// small batches that ran at once.
    fn schedule(small: usize, large: usize) -> usize {
        use super::{LARGE_AT_ONCE, Next, SMALL_AT_ONCE, start_next};
        let places = SMALL_AT_ONCE + LARGE_AT_ONCE;
        let (mut left, mut on) = ((small, large), (0, 0));
        let mut running = std::collections::VecDeque::new();
        let mut most_small = 0;
        loop {
            while let Some(next) = start_next(left, on) {
                match next {
                    Next::Small => (left.0, on.0) = (left.0 - 1, on.0 + 1),
                    Next::Large => (left.1, on.1) = (left.1 - 1, on.1 + 1),
                }
                running.push_back(next);
            }
            assert!(on.0 + on.1 <= places, "{on:?}");
            if left.0 > 0 && left.1 > 0 {
                assert_eq!(on, (SMALL_AT_ONCE, LARGE_AT_ONCE), "left {left:?}");
            } else if left.0 + left.1 > 0 {
                assert_eq!(on.0 + on.1, places, "left {left:?}, running {on:?}");
            }
            most_small = most_small.max(on.0);
            match running.pop_front() {
                Some(Next::Small) => on.0 -= 1,
                Some(Next::Large) => on.1 -= 1,
                None => break,
            }
        }
        assert_eq!((left, on), ((0, 0), (0, 0)));
        most_small
    }

    #[test]
    fn a_restore_gives_the_places_of_a_kind_that_ran_out_to_the_other() {
        // Small files left once the large ones are all started: they take
        // all six places.
        assert_eq!(schedule(40, 20), 6);
        assert_eq!(schedule(40, 0), 6);
        // Large files outlast the small ones, which keep their two places.
        assert_eq!(schedule(3, 50), 2);
        assert_eq!(schedule(0, 9), 0);
        assert_eq!(schedule(1, 1), 1);
        assert_eq!(schedule(0, 0), 0);
    }

    #[test]
    fn the_last_batches_of_a_put_halve_and_every_batch_keeps_its_bound() {
        assert_eq!(
            batches(20_023, 10_000),
            [10_000, 5_012, 2_506, 1_253, 626, 626]
        );
        assert_eq!(
            batches(45_000, 10_000),
            [10_000, 10_000, 10_000, 7_500, 3_750, 1_875, 938, 937]
        );
        // Small trees and small bounds are cut as before.
        assert_eq!(batches(35, 7), [7; 5]);
        assert_eq!(batches(1_000, 10_000), [1_000]);
        assert_eq!(batches(2_500, 600), [600, 600, 600, 600, 100]);
        assert_eq!(batches(3, 0), [1, 1, 1]);
        for (files, bound) in [(1, 1), (999, 10), (123_457, 10_000), (5_001, 10_000)] {
            let b = batches(files, bound);
            assert_eq!(b.iter().sum::<usize>(), files);
            assert!(b.iter().all(|&n| (1..=bound).contains(&n)), "{b:?}");
        }
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    /// A small file lands under its name with its bytes, mtime and mode,
    /// whether or not the umask would take bits of that mode, and with
    /// or without a file there before; one abandoned leaves nothing of it.
    #[test]
    fn small_files_land_with_their_bytes_times_and_modes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mtime = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        // A umask taking group and other write, as most do.
        let umask = Some(0o022);
        for (i, mode) in [0o644, 0o600, 0o777, 0o664, 0o4755].into_iter().enumerate() {
            for there_before in [false, true] {
                let dest = dir.path().join(format!("f{i}-{there_before}"));
                if there_before {
                    std::fs::write(&dest, b"an earlier restore's bytes").expect("write");
                }
                let mut l = Landing::create(&dest, mode, umask).expect("create");
                assert_eq!(l.tmp.is_some(), there_before, "{mode:o}");
                l.file.write_all(b"new").expect("write");
                l.stamp(mtime, mode).expect("stamp");
                l.land(&dest).expect("land");
                assert_eq!(std::fs::read(&dest).expect("read"), b"new");
                assert_eq!(
                    mode_of(&dest),
                    mode,
                    "{mode:o}, there before: {there_before}"
                );
                let got = std::fs::metadata(&dest)
                    .expect("stat")
                    .modified()
                    .expect("mtime");
                assert_eq!(got, mtime);
                assert!(!partial_name(&dest).exists());
            }
        }
        // Abandoned: a new file is gone; a file there before stays as it was.
        let fresh = dir.path().join("fresh");
        let l = Landing::create(&fresh, 0o644, umask).expect("create");
        l.abandon(&fresh);
        assert!(!fresh.exists());
        let kept = dir.path().join("kept");
        std::fs::write(&kept, b"kept").expect("write");
        let mut l = Landing::create(&kept, 0o644, umask).expect("create");
        l.file.write_all(b"half").expect("write");
        l.abandon(&kept);
        assert_eq!(std::fs::read(&kept).expect("read"), b"kept");
        assert!(!partial_name(&kept).exists());
    }

    /// Every file is kept once, and the small files are spread among the
    /// large ones by bytes (at every large file, the share of small bytes
    /// out is the share of large bytes out, to within one small file),
    /// each kind in its listing order.
    #[test]
    fn puts_spread_small_files_among_large_ones() {
        let big = 8 << 20;
        let sizes: Vec<u64> = [
            vec![big, 2 * big, big],
            vec![1000; 6],
            vec![500; 9],
            vec![big],
            vec![700; 7],
            vec![big],
        ]
        .concat();
        let files: Vec<(PathBuf, u64, ())> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (PathBuf::from(format!("f{i:02}")), s, ()))
            .collect();
        let out = super::interleave(files.clone());
        let names = |v: &[(PathBuf, u64, ())], small: bool| -> Vec<PathBuf> {
            v.iter()
                .filter(|f| (f.1 <= READ_WHOLE_LIMIT) == small)
                .map(|f| f.0.clone())
                .collect()
        };
        assert_eq!(out.len(), files.len());
        for small in [false, true] {
            assert_eq!(names(&out, small), names(&files, small), "in order, once");
        }
        let total = |small: bool| -> u64 {
            files
                .iter()
                .filter(|f| (f.1 <= READ_WHOLE_LIMIT) == small)
                .map(|f| f.1)
                .sum()
        };
        let (small_total, large_total) = (total(true), total(false));
        let (mut small, mut large) = (0u64, 0u64);
        for g in &out {
            if g.1 > READ_WHOLE_LIMIT {
                // Before each large file, the small files sent keep pace
                // with the large bytes sent.
                let lag = small as f64 / small_total as f64 - large as f64 / large_total as f64;
                assert!(lag.abs() <= 1000.0 / small_total as f64 + 1e-9, "{out:?}");
                large += g.1;
            } else {
                small += g.1;
            }
        }
        // Large, small, ..., not the three large files first.
        assert!(out[1].1 <= READ_WHOLE_LIMIT, "{:?}", &out[..9]);
        // The last large file comes before the small files that follow
        // it in bytes, not last.
        assert!(out.last().is_some_and(|f| f.1 <= READ_WHOLE_LIMIT));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_umask_is_read_without_changing_it() {
        let u = umask().expect("Linux tells the umask");
        assert_eq!(u & !0o777, 0);
        assert_eq!(umask(), Some(u));
    }
}
