//! Periodic syncs: every source with a period (`SourceSpec::every`) gets a
//! sync job when its period has passed since the last one was queued.
//!
//! No double runs: a job for a source that still has an active (queued,
//! running or retrying) sync is not queued twice (the queue returns the
//! active job instead), so a sync that takes longer than its period simply
//! delays the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::job::{JobSpec, now_ns};
use crate::queue::{JobQueue, SyncState};

/// Queues due periodic syncs.
#[derive(Clone)]
pub struct Scheduler {
    queue: Arc<dyn JobQueue>,
    state: Arc<dyn SyncState>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// What one scheduler pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Syncs queued.
    pub queued: usize,
    /// Syncs due whose source still had an active job.
    pub coalesced: usize,
}

impl Scheduler {
    /// A scheduler over a queue and its sync state.
    pub fn new(queue: Arc<dyn JobQueue>, state: Arc<dyn SyncState>) -> Self {
        Scheduler { queue, state }
    }

    /// One pass: queues every sync that is due at `now_ns`.
    pub async fn tick(&self, now_ns: i64) -> Result<TickReport> {
        let mut report = TickReport::default();
        for src in self.state.all_sources().await? {
            let Some(every) = src.every else { continue };
            let last = self
                .state
                .last_scheduled(&src.tenant, &src.user, &src.name)
                .await?;
            if last.is_some_and(|l| now_ns.saturating_sub(l) < every.as_nanos() as i64) {
                continue;
            }
            let e = self
                .queue
                .enqueue(vec![JobSpec::sync(&src.tenant, &src.user, &src.name)])
                .await?;
            if e.first().is_some_and(|e| e.existing) {
                // Still running: try again at the next tick, not a period later.
                report.coalesced += 1;
                continue;
            }
            report.queued += 1;
            self.state
                .set_last_scheduled(&src.tenant, &src.user, &src.name, now_ns)
                .await?;
        }
        Ok(report)
    }

    /// Runs passes every `every` until `stop` is cancelled. Errors of a pass
    /// are retried at the next one.
    pub async fn run(self, every: Duration, stop: CancellationToken) {
        loop {
            let _ = self.tick(now_ns()).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
