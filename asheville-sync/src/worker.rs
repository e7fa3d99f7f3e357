//! Workers: lease jobs, run them, keep their leases alive, report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::events::EventKind;
use crate::job::{ItemError, JobId, JobRecord, Progress};
use crate::queue::{Completion, JobQueue, Outcome};

/// What a finished attempt reports besides its outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Final counters.
    pub progress: Progress,
    /// Items that failed (the job still succeeds; they are retried by the
    /// next sync).
    pub item_errors: Vec<ItemError>,
}

/// Runs one kind of job.
#[async_trait]
pub trait JobRunner: Send + Sync + 'static {
    /// Runs an attempt of `job`. Return `Err` with kind
    /// [`ErrorKind::Cancelled`] when stopping because of
    /// [`JobContext::is_cancelled`]; other errors fail the attempt
    /// (retried when [`Error::is_retryable`]).
    async fn run(&self, job: &JobRecord, ctx: &JobContext) -> Result<RunReport>;
}

/// A running job's link to its worker: cancellation and progress.
#[derive(Debug, Clone)]
pub struct JobContext {
    cancel: CancellationToken,
    progress: Arc<Mutex<Progress>>,
}

impl JobContext {
    /// A context not attached to any queue (to run a job by hand).
    pub fn detached() -> Self {
        JobContext {
            cancel: CancellationToken::new(),
            progress: Arc::new(Mutex::new(Progress::default())),
        }
    }

    /// Whether the job should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the job should stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The error to return when stopping for a cancel.
    pub fn cancelled_error(&self) -> Error {
        Error::new(ErrorKind::Cancelled, "the job was cancelled")
    }

    /// Publishes progress (stored with the next heartbeat).
    pub fn set_progress(&self, p: Progress) {
        if let Ok(mut g) = self.progress.lock() {
            *g = p;
        }
    }

    /// The progress published so far.
    pub fn progress(&self) -> Progress {
        self.progress.lock().map(|g| *g).unwrap_or_default()
    }
}

/// How a [`WorkerPool`] works.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrent jobs (one lease each).
    pub workers: usize,
    /// Worker names are `<name>-<n>`.
    pub name: String,
    /// Renew leases and store progress this often (well under the
    /// queue's lease time).
    pub heartbeat_every: Duration,
    /// Look for work at least this often when idle.
    pub poll_every: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: 2,
            name: format!("worker-{}", std::process::id()),
            heartbeat_every: Duration::from_secs(1),
            poll_every: Duration::from_millis(500),
        }
    }
}

/// Workers leasing jobs from a queue and running them.
pub struct WorkerPool {
    tasks: JoinSet<()>,
    stop: CancellationToken,
    stop_now: CancellationToken,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

type Running = Arc<Mutex<HashMap<JobId, CancellationToken>>>;

impl WorkerPool {
    /// Starts `cfg.workers` workers (and one task that relays cancels).
    pub fn start(
        queue: Arc<dyn JobQueue>,
        runner: Arc<dyn JobRunner>,
        cfg: WorkerConfig,
    ) -> WorkerPool {
        let stop = CancellationToken::new();
        let stop_now = CancellationToken::new();
        let running: Running = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = JoinSet::new();
        // Cancels reach a running job at once through the event channel;
        // heartbeats are the fallback (and the way for queues shared
        // between processes).
        {
            let mut rx = queue.subscribe();
            let running = running.clone();
            let stop_now = stop_now.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    let e = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = rx.recv() => e,
                    };
                    match e {
                        Ok(e) => {
                            if matches!(e.kind, EventKind::CancelRequested { .. })
                                && let Ok(m) = running.lock()
                                && let Some(t) = m.get(&e.job)
                            {
                                t.cancel();
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => {
                            stop_now.cancelled().await;
                            return;
                        }
                    }
                }
            });
        }
        for n in 0..cfg.workers.max(1) {
            let w = Worker {
                name: format!("{}-{n}", cfg.name),
                queue: queue.clone(),
                runner: runner.clone(),
                cfg: cfg.clone(),
                running: running.clone(),
                stop: stop.clone(),
                stop_now: stop_now.clone(),
            };
            tasks.spawn(w.run());
        }
        WorkerPool {
            tasks,
            stop,
            stop_now,
        }
    }

    /// Stops taking jobs and waits for the running ones to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Stops taking jobs, cancels the running ones and waits for them.
    pub async fn abort(mut self) {
        self.stop.cancel();
        self.stop_now.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Worker {
    name: String,
    queue: Arc<dyn JobQueue>,
    runner: Arc<dyn JobRunner>,
    cfg: WorkerConfig,
    running: Running,
    stop: CancellationToken,
    stop_now: CancellationToken,
}

impl Worker {
    async fn run(self) {
        while !self.stop.is_cancelled() {
            let jobs = match self.queue.lease(&self.name, 1).await {
                Ok(j) => j,
                Err(_) => {
                    // The queue failed (disk full, ...): back off and retry.
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(self.cfg.poll_every) => {}
                    }
                    continue;
                }
            };
            if jobs.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.queue.wait_for_work(self.cfg.poll_every) => {}
                }
                continue;
            }
            for job in jobs {
                self.run_one(job).await;
            }
        }
    }

    async fn run_one(&self, job: JobRecord) {
        let cancel = self.stop_now.child_token();
        if job.cancel_requested {
            cancel.cancel();
        }
        let ctx = JobContext {
            cancel: cancel.clone(),
            progress: Arc::new(Mutex::new(job.progress)),
        };
        if let Ok(mut m) = self.running.lock() {
            m.insert(job.id, cancel.clone());
        }
        let lost = CancellationToken::new();
        let beat = {
            let queue = self.queue.clone();
            let ctx = ctx.clone();
            let lost = lost.clone();
            let every = self.cfg.heartbeat_every;
            let (id, lease) = (job.id, job.lease);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match queue.heartbeat(id, lease, Some(ctx.progress())).await {
                        Ok(h) if h.cancel_requested => ctx.cancel.cancel(),
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::LeaseLost => {
                            lost.cancel();
                            ctx.cancel.cancel();
                            return;
                        }
                        // A failed heartbeat is retried at the next beat.
                        Err(_) => {}
                    }
                }
            })
        };
        let result = std::panic::AssertUnwindSafe(self.runner.run(&job, &ctx))
            .catch_unwind()
            .await;
        beat.abort();
        if let Ok(mut m) = self.running.lock() {
            m.remove(&job.id);
        }
        if lost.is_cancelled() {
            // Another worker may own the job now; reporting would be wrong.
            return;
        }
        if self.stop_now.is_cancelled() && !matches!(result, Ok(Ok(_))) {
            // The pool was aborted, not the job: leave it to lease expiry
            // (immediate when a redb queue is reopened) so it runs again.
            return;
        }
        let (outcome, report) = match result {
            Ok(Ok(report)) => (Outcome::Succeeded, report),
            Ok(Err(e)) if e.kind() == ErrorKind::Cancelled || cancel.is_cancelled() => (
                Outcome::Cancelled,
                RunReport {
                    progress: ctx.progress(),
                    item_errors: Vec::new(),
                },
            ),
            Ok(Err(e)) => (
                Outcome::Failed {
                    error: e.to_string(),
                    retryable: e.is_retryable(),
                },
                RunReport {
                    progress: ctx.progress(),
                    item_errors: Vec::new(),
                },
            ),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                (
                    Outcome::Failed {
                        error: format!("the job panicked: {msg}"),
                        retryable: true,
                    },
                    RunReport {
                        progress: ctx.progress(),
                        item_errors: Vec::new(),
                    },
                )
            }
        };
        let done = Completion {
            id: job.id,
            lease: job.lease,
            outcome,
            progress: report.progress,
            item_errors: report.item_errors,
        };
        // If the queue cannot record it, the lease expires and the job runs
        // again: at least once.
        let _ = self.queue.complete(vec![done]).await;
    }
}
