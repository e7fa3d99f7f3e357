//! # asheville-sync
//!
//! The sync half of Asheville: pulling a user's data from outside sources
//! into a repository, as jobs that survive crashes.
//!
//! - [`job`]: the job model — `(tenant, user, source, kind)` with a
//!   versioned payload, states, progress, history.
//! - [`queue`]: the durable [`JobQueue`] (embedded: [`RedbQueue`]) with
//!   leases, heartbeats, retries with backoff and jitter, dead letters,
//!   cancel and restart, running limits per tenant and per source, and
//!   tenants served in turn.
//! - [`worker`]: a [`WorkerPool`] leasing and running jobs.
//! - [`source`]: the [`Source`] trait, a local directory and an
//!   object_store bucket.
//! - [`sync`]: the [`SyncRunner`] that runs sync jobs.
//! - [`scheduler`]: periodic syncs without double runs.
//! - [`events`]: numbered events and a resumable [`EventStream`].
//! - [`conductor`]: the API an application calls.
//!
//! ```no_run
//! # async fn demo(tenant: asheville_storage::Tenant) -> asheville_sync::Result<()> {
//! use std::sync::Arc;
//! use asheville_sync::*;
//!
//! let queue = Arc::new(RedbQueue::open("sync.redb".as_ref(), QueueConfig::default())?);
//! let runner = Arc::new(SyncRunner::new(queue.clone(), SyncOptions::default()));
//! runner.add_tenant(tenant.clone());
//! let pool = WorkerPool::start(queue.clone(), runner, WorkerConfig::default());
//!
//! let conductor = Conductor::new(queue.clone(), queue.clone());
//! conductor
//!     .add_source(SourceSpec::new(
//!         tenant.name(),
//!         "alice",
//!         "photos",
//!         SourceKind::LocalDir { path: "/home/alice/photos".into() },
//!     ))
//!     .await?;
//! for (_, job) in conductor.create_sync(tenant.name(), "alice", &[]).await? {
//!     let done = conductor.wait(tenant.name(), job.id).await?;
//!     println!("{}: {:?}", done.state, done.progress);
//! }
//! pool.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod conductor;
pub mod error;
pub mod events;
pub mod job;
pub mod queue;
pub mod scheduler;
pub mod source;
pub mod sync;
pub mod worker;

pub use conductor::{Conductor, SourceStatus};
pub use error::{Error, ErrorKind, Result};
pub use events::{Event, EventKind, EventStream};
pub use job::{
    ItemError, JobId, JobRecord, JobSpec, JobState, KIND_SYNC, Payload, Progress, RetryPolicy,
};
pub use queue::{
    Completion, Enqueued, Heartbeat, JobFilter, JobQueue, Outcome, QueueConfig, RedbQueue,
    SyncState,
};
pub use scheduler::Scheduler;
pub use source::{
    Change, Cursor, Fetched, LocalDirSource, ObjectStoreSource, Source, SourceKind, SourceSpec,
    Stamp,
};
pub use sync::{SyncOptions, SyncPayloadV1, SyncRunner};
pub use worker::{JobContext, JobRunner, RunReport, WorkerConfig, WorkerPool};
