//! The durable job queue: enqueue, lease, heartbeat, complete, retry,
//! dead letters, cancel and restart; and the per-source sync state (source
//! definitions, cursors, schedules) that lives next to it.
//!
//! [`JobQueue`] and [`SyncState`] are traits so that a shared database can
//! replace the embedded [`RedbQueue`] when several nodes run workers.

mod redb_queue;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use redb_queue::RedbQueue;

use crate::error::Result;
use crate::events::Event;
use crate::job::{ItemError, JobId, JobRecord, JobSpec, JobState, Progress, RetryPolicy};
use crate::source::{Cursor, SourceSpec};

/// Limits and policies of a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// How long a lease lasts unless renewed by a heartbeat.
    #[serde(with = "crate::job::duration_ms")]
    pub lease_for: Duration,
    /// Running jobs allowed per tenant at once.
    pub max_running_per_tenant: u32,
    /// Running jobs allowed per (tenant, user, source) at once.
    pub max_running_per_source: u32,
    /// Retry policy per job kind.
    pub retry: HashMap<String, RetryPolicy>,
    /// Retry policy of kinds not listed in `retry`.
    pub default_retry: RetryPolicy,
    /// Events kept for clients that resume (older ones are trimmed).
    pub events_kept: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease_for: Duration::from_secs(30),
            max_running_per_tenant: 4,
            max_running_per_source: 1,
            retry: HashMap::new(),
            default_retry: RetryPolicy::default(),
            events_kept: 100_000,
        }
    }
}

impl QueueConfig {
    /// The retry policy of `kind`.
    pub fn policy(&self, kind: &str) -> RetryPolicy {
        self.retry.get(kind).copied().unwrap_or(self.default_retry)
    }
}

/// The answer to an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The job's id.
    pub id: JobId,
    /// `true` when an active job for the same (tenant, user, source, kind)
    /// existed and was returned instead of queueing a second one.
    pub existing: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// The job did its work.
    Succeeded,
    /// The attempt failed. A retryable failure is retried while attempts
    /// remain (then the job is dead); a permanent one fails the job.
    Failed {
        /// The error, in words.
        error: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// The job stopped because a cancel was asked for.
    Cancelled,
}

/// A worker's report at the end of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The job.
    pub id: JobId,
    /// The lease token the worker got.
    pub lease: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Final progress.
    pub progress: Progress,
    /// Items that failed.
    pub item_errors: Vec<ItemError>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// A cancel was asked for: stop soon and complete as cancelled.
    pub cancel_requested: bool,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this user's (needs `tenant`).
    pub user: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
}

/// The durable job queue.
///
/// Delivery is at least once: a job whose worker stops renewing its lease
/// runs again, so every job must be idempotent.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Queues jobs; durable when this returns. A spec whose (tenant, user,
    /// source, kind) already has an active (queued, running or retrying)
    /// job returns that job instead, so a source never syncs twice at once.
    async fn enqueue(&self, specs: Vec<JobSpec>) -> Result<Vec<Enqueued>>;

    /// Leases up to `max` ready jobs for `worker`, honouring the running
    /// limits and taking tenants in turn (the least recently served first),
    /// each tenant's jobs oldest first. Reclaims expired leases first.
    async fn lease(&self, worker: &str, max: usize) -> Result<Vec<JobRecord>>;

    /// Renews a lease and stores progress. Fails with
    /// [`crate::ErrorKind::LeaseLost`] when the lease is no longer the
    /// worker's.
    async fn heartbeat(
        &self,
        id: JobId,
        lease: u64,
        progress: Option<Progress>,
    ) -> Result<Heartbeat>;

    /// Ends attempts (one transaction for all). Each result is the job's
    /// new state, or `LeaseLost` for a lease that is no longer held.
    async fn complete(&self, done: Vec<Completion>) -> Result<Vec<Result<JobState>>>;

    /// Cancels a job: at once when it waits, cooperatively (the worker
    /// learns it from an event and from its next heartbeat) when it runs.
    async fn cancel(&self, id: JobId, reason: &str) -> Result<JobRecord>;

    /// Queues a finished job again (dead letters included) with its
    /// attempts reset.
    async fn restart(&self, id: JobId) -> Result<JobRecord>;

    /// One job.
    async fn get(&self, id: JobId) -> Result<JobRecord>;

    /// Jobs matching `filter`, by id, after `after` (keyset pagination).
    async fn list(
        &self,
        filter: JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>>;

    /// Jobs per state.
    async fn counts(&self) -> Result<BTreeMap<JobState, u64>>;

    /// Stored events with a sequence number above `after`, oldest first.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>>;

    /// Live events (see [`crate::events::EventStream`] for a stream that
    /// also replays and survives lag).
    fn subscribe(&self) -> broadcast::Receiver<Event>;

    /// Resolves when jobs may have become ready (an enqueue, a restart) or
    /// after `max_wait`, whichever is first. Workers use it to wait.
    async fn wait_for_work(&self, max_wait: Duration);
}

/// Sync state: source definitions, cursors and schedules.
#[async_trait]
pub trait SyncState: Send + Sync + 'static {
    /// Adds or replaces a source definition.
    async fn put_source(&self, spec: SourceSpec) -> Result<()>;
    /// Removes a source (its cursor and schedule too).
    async fn remove_source(&self, tenant: &str, user: &str, name: &str) -> Result<()>;
    /// One source.
    async fn source(&self, tenant: &str, user: &str, name: &str) -> Result<SourceSpec>;
    /// A tenant's sources (one user's, when given), by user then name.
    async fn sources(&self, tenant: &str, user: Option<&str>) -> Result<Vec<SourceSpec>>;
    /// Every source of every tenant (for the scheduler).
    async fn all_sources(&self) -> Result<Vec<SourceSpec>>;
    /// The cursor a source's next sync starts from (empty at first).
    async fn cursor(&self, tenant: &str, user: &str, name: &str) -> Result<Cursor>;
    /// Stores a source's cursor.
    async fn set_cursor(&self, tenant: &str, user: &str, name: &str, cursor: &Cursor)
    -> Result<()>;
    /// When the scheduler last queued a sync of the source (ns).
    async fn last_scheduled(&self, tenant: &str, user: &str, name: &str) -> Result<Option<i64>>;
    /// Records a scheduler run.
    async fn set_last_scheduled(
        &self,
        tenant: &str,
        user: &str,
        name: &str,
        at_ns: i64,
    ) -> Result<()>;
}
