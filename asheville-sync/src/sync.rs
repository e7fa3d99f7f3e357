//! Running a sync: list a source's changes since its cursor, store what
//! changed, delete what is gone, checkpoint the cursor as batches commit.
//!
//! Every step is idempotent, because delivery is at least once: chunks
//! dedup; a file whose stored version already has the item's size and
//! mtime is skipped; a delete of a file that is already gone is a no-op;
//! file versions commit atomically per batch; the cursor only moves past
//! items whose batch committed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use asheville_core::metering::{Dimensions, SYNC_BYTES, SYNC_ITEMS, UsageEvent};
use asheville_storage::metering::MeterStore;
use asheville_storage::{FileMeta, Tenant};
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::job::{ItemError, JobRecord, KIND_SYNC, MAX_ITEM_ERRORS, Progress};
use crate::queue::SyncState;
use crate::source::{Change, Cursor, Fetched, Source, SourceKind, SourceSpec, Stamp, open_source};
use crate::worker::{JobContext, JobRunner, RunReport};

/// The body of a version-1 sync payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPayloadV1 {
    /// Ignore the cursor and compare every item (files whose stored
    /// version matches are still skipped).
    #[serde(default)]
    pub full: bool,
}

/// How syncs run.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Commit (and checkpoint the cursor) after this many files...
    pub batch_files: usize,
    /// ...or this many bytes, whichever comes first.
    pub batch_bytes: u64,
    /// Items fetched ahead, concurrently.
    pub read_ahead: usize,
    /// Tries per item before it is reported as failed.
    pub item_attempts: u32,
    /// Wait before the second try of an item; grows linearly.
    pub item_backoff: Duration,
    /// Permission bits recorded for synced files.
    pub mode: u32,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            batch_files: 1000,
            batch_bytes: 64 << 20,
            read_ahead: 32,
            item_attempts: 3,
            item_backoff: Duration::from_millis(200),
            mode: 0o644,
        }
    }
}

/// Runs sync jobs: the [`JobRunner`] for [`KIND_SYNC`].
pub struct SyncRunner {
    state: Arc<dyn SyncState>,
    tenants: RwLock<HashMap<String, Tenant>>,
    registered: RwLock<HashMap<String, Arc<dyn Source>>>,
    opts: SyncOptions,
    meter: Option<Arc<dyn MeterStore>>,
}

impl std::fmt::Debug for SyncRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncRunner")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// An `AsyncRead` that remembers whether the inner reader failed, so that a
/// failing source item is told apart from a failing repository.
struct Watched<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(_)) = &r {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

enum Prepared {
    /// Nothing to do (already stored, or the item vanished).
    Skip {
        apply: bool,
    },
    Delete,
    Data(Fetched),
    Failed(Error),
}

impl SyncRunner {
    /// A runner reading source definitions and cursors from `state`.
    pub fn new(state: Arc<dyn SyncState>, opts: SyncOptions) -> Self {
        SyncRunner {
            state,
            tenants: RwLock::new(HashMap::new()),
            registered: RwLock::new(HashMap::new()),
            opts,
            meter: None,
        }
    }

    /// Records `sync.items` and `sync.bytes` (with the user and source as
    /// dimensions) into `store` as batches commit. Attach the same store to
    /// the tenants ([`Tenant::with_meter`]) to meter and limit their
    /// storage too.
    pub fn with_meter(mut self, store: Arc<dyn MeterStore>) -> Self {
        self.meter = Some(store);
        self
    }

    /// Commits `batch`; then its items advance the cursor, which is stored
    /// (so a rerun starts after them), and the progress is reported and
    /// metered.
    #[allow(clippy::too_many_arguments)]
    async fn checkpoint(
        &self,
        spec: &SourceSpec,
        ctx: &JobContext,
        batch: asheville_storage::Batch<'_>,
        in_batch: &mut Vec<Change>,
        cursor: &mut Cursor,
        progress: &mut Progress,
        metered: &mut (u64, u64),
    ) -> Result<()> {
        batch.commit().await?;
        progress.items_stored += in_batch.len() as u64;
        for c in in_batch.drain(..) {
            cursor.apply(&c);
        }
        self.state
            .set_cursor(&spec.tenant, &spec.user, &spec.name, cursor)
            .await?;
        ctx.set_progress(*progress);
        self.meter_progress(
            spec,
            progress.items_stored - metered.0,
            progress.bytes - metered.1,
        );
        *metered = (progress.items_stored, progress.bytes);
        Ok(())
    }

    /// Best effort: the data is already committed.
    fn meter_progress(&self, spec: &SourceSpec, items: u64, bytes: u64) {
        let Some(m) = &self.meter else { return };
        if items == 0 && bytes == 0 {
            return;
        }
        let at_ns = crate::job::now_ns();
        let dims = Dimensions {
            user: Some(spec.user.clone()),
            source: Some(spec.name.clone()),
            backend: None,
            feature: Some("sync".into()),
        };
        let nonce = asheville_core::PackId::random()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let ev = |meter: &str, value| UsageEvent {
            idempotency_key: format!("{meter}-{at_ns}-{nonce}"),
            tenant: spec.tenant.clone(),
            meter: meter.into(),
            value,
            at_ns,
            dims: dims.clone(),
        };
        let _ = m.record(&[ev(SYNC_ITEMS, items), ev(SYNC_BYTES, bytes)]);
    }

    /// Makes a tenant (opened with its key) available to jobs.
    pub fn add_tenant(&self, tenant: Tenant) {
        if let Ok(mut m) = self.tenants.write() {
            m.insert(tenant.name().to_owned(), tenant);
        }
    }

    /// Registers a source object for [`SourceKind::Registered`] specs.
    pub fn register_source(&self, id: &str, source: Arc<dyn Source>) {
        if let Ok(mut m) = self.registered.write() {
            m.insert(id.to_owned(), source);
        }
    }

    fn tenant(&self, name: &str) -> Result<Tenant> {
        self.tenants
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "the tenant is not open in this worker (SyncRunner::add_tenant)",
                )
                .with_context("tenant", name)
            })
    }

    fn source_of(&self, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        if let SourceKind::Registered { id } = &spec.kind
            && let Some(s) = self.registered.read().ok().and_then(|m| m.get(id).cloned())
        {
            return Ok(s);
        }
        open_source(&spec.kind)
    }

    async fn fetch(&self, source: &dyn Source, key: &str, stamp: &Stamp) -> Result<Fetched> {
        let mut attempt = 1;
        loop {
            match source.fetch(key, stamp).await {
                Ok(f) => return Ok(f),
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(e),
                Err(e) if attempt >= self.opts.item_attempts => return Err(e),
                Err(_) => {
                    tokio::time::sleep(self.opts.item_backoff * attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Syncs one source now (what a sync job does).
    pub async fn sync(&self, spec: &SourceSpec, full: bool, ctx: &JobContext) -> Result<RunReport> {
        let tenant = self.tenant(&spec.tenant)?;
        let source = self.source_of(spec)?;
        let target = asheville_storage::RepoPath::parse(&spec.target())?;
        let mut cursor = self
            .state
            .cursor(&spec.tenant, &spec.user, &spec.name)
            .await?;
        let since = if full {
            Cursor::default()
        } else {
            cursor.clone()
        };
        let changes = source
            .changes(&since)
            .await
            .map_err(|e| e.with_context("source", &spec.name))?;
        let mut progress = Progress {
            items_seen: changes.len() as u64,
            ..Progress::default()
        };
        ctx.set_progress(progress);
        let mut item_errors = Vec::new();
        let path_of = |key: &str| format!("{}/{key}", target.as_str());

        let prepared = futures::stream::iter(changes.into_iter().map(|c| {
            let tenant = &tenant;
            let source = &source;
            let path_of = &path_of;
            async move {
                let p = match &c {
                    Change::Delete { .. } => Prepared::Delete,
                    Change::Upsert { key, stamp } => {
                        let stored = tenant.stat(&path_of(key)).ok();
                        if stored.is_some_and(|v| {
                            v.size == stamp.size && v.meta.mtime_ns == stamp.mtime_ns
                        }) {
                            Prepared::Skip { apply: true }
                        } else {
                            match self.fetch(source.as_ref(), key, stamp).await {
                                Ok(f) => Prepared::Data(f),
                                Err(e) if e.kind() == ErrorKind::NotFound => {
                                    Prepared::Skip { apply: false }
                                }
                                Err(e) => Prepared::Failed(e),
                            }
                        }
                    }
                };
                (c, p)
            }
        }))
        .buffered(self.opts.read_ahead.max(1));
        futures::pin_mut!(prepared);

        let mut batch = tenant.batch();
        let mut in_batch: Vec<Change> = Vec::new();
        // What was already reported to the meter store.
        let mut metered = (0u64, 0u64);
        let mut fail = |progress: &mut Progress, key: &str, e: &Error| {
            progress.errors += 1;
            if item_errors.len() < MAX_ITEM_ERRORS {
                item_errors.push(ItemError {
                    key: key.to_owned(),
                    error: e.to_string(),
                });
            }
        };
        while let Some((change, prep)) = prepared.next().await {
            if ctx.is_cancelled() {
                // Whatever is in the open batch is dropped: nothing of it
                // was acknowledged and the cursor does not cover it.
                return Err(ctx.cancelled_error());
            }
            let key = change.key().to_owned();
            let path = path_of(&key);
            match prep {
                Prepared::Skip { apply } => {
                    progress.items_skipped += 1;
                    if apply {
                        cursor.apply(&change);
                    }
                }
                Prepared::Failed(e) => fail(&mut progress, &key, &e),
                Prepared::Delete => match tenant.delete(&path).await {
                    Ok(()) => {
                        progress.items_deleted += 1;
                        cursor.apply(&change);
                    }
                    Err(e) if e.kind() == asheville_storage::ErrorKind::NotFound => {
                        progress.items_skipped += 1;
                        cursor.apply(&change);
                    }
                    Err(e) => return Err(e.into()),
                },
                Prepared::Data(data) => {
                    let Change::Upsert { stamp, .. } = &change else {
                        continue;
                    };
                    let meta = FileMeta {
                        mtime_ns: stamp.mtime_ns,
                        mode: self.opts.mode,
                    };
                    match data {
                        Fetched::Bytes(b) => {
                            batch.add(&path, &b[..], meta).await?;
                            progress.bytes += b.len() as u64;
                            in_batch.push(change);
                        }
                        Fetched::Stream(r) => {
                            // Large items go alone, so that a source failing
                            // mid-stream cannot spoil a whole batch.
                            match self
                                .put_stream(&tenant, &path, r, meta, &*source, &key, stamp)
                                .await
                            {
                                Ok(n) => {
                                    progress.bytes += n;
                                    progress.items_stored += 1;
                                    cursor.apply(&change);
                                }
                                Err(e) if e.kind() == ErrorKind::Source => {
                                    fail(&mut progress, &key, &e)
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                }
            }
            if batch.len() >= self.opts.batch_files || batch.bytes() >= self.opts.batch_bytes {
                let full_batch = std::mem::replace(&mut batch, tenant.batch());
                self.checkpoint(
                    spec,
                    ctx,
                    full_batch,
                    &mut in_batch,
                    &mut cursor,
                    &mut progress,
                    &mut metered,
                )
                .await?;
            }
        }
        self.checkpoint(
            spec,
            ctx,
            batch,
            &mut in_batch,
            &mut cursor,
            &mut progress,
            &mut metered,
        )
        .await?;
        Ok(RunReport {
            progress,
            item_errors,
        })
    }

    /// Stores one streamed item, fetching it again when the source fails
    /// mid-stream. A source failure comes back as [`ErrorKind::Source`].
    #[allow(clippy::too_many_arguments)]
    async fn put_stream(
        &self,
        tenant: &Tenant,
        path: &str,
        first: Box<dyn AsyncRead + Send + Unpin>,
        meta: FileMeta,
        source: &dyn Source,
        key: &str,
        stamp: &Stamp,
    ) -> Result<u64> {
        let mut reader = Some(first);
        let mut attempt = 1;
        loop {
            let r = match reader.take() {
                Some(r) => r,
                None => match self.fetch(source, key, stamp).await {
                    Ok(Fetched::Stream(r)) => r,
                    Ok(Fetched::Bytes(b)) => Box::new(std::io::Cursor::new(b)),
                    Err(e) => return Err(Error::new(ErrorKind::Source, e.to_string())),
                },
            };
            let failed = Arc::new(AtomicBool::new(false));
            let watched = Watched {
                inner: r,
                failed: failed.clone(),
            };
            match tenant.put(path, watched, meta).await {
                Ok(v) => return Ok(v.size),
                Err(e) if failed.load(Ordering::Relaxed) => {
                    if attempt >= self.opts.item_attempts {
                        return Err(Error::new(ErrorKind::Source, "reading the item failed")
                            .with_context("key", key)
                            .set_source(e));
                    }
                    tokio::time::sleep(self.opts.item_backoff * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[async_trait]
impl JobRunner for SyncRunner {
    async fn run(&self, job: &JobRecord, ctx: &JobContext) -> Result<RunReport> {
        if job.spec.kind != KIND_SYNC {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "this worker runs `{KIND_SYNC}` jobs, not `{}`",
                    job.spec.kind
                ),
            ));
        }
        let payload: SyncPayloadV1 = job.spec.payload.decode()?;
        let s = &job.spec;
        let spec = self.state.source(&s.tenant, &s.user, &s.source).await?;
        self.sync(&spec, payload.full, ctx).await
    }
}
