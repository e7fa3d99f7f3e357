//! The conductor: what an application (or the HTTP server) calls to manage
//! a user's syncs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::events::EventKind;
use crate::job::{JobId, JobRecord, JobSpec};
use crate::queue::{Enqueued, JobFilter, JobQueue, SyncState};
use crate::source::SourceSpec;

/// Status of one source of a user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceStatus {
    /// The source.
    pub source: SourceSpec,
    /// Its newest job, if it ever synced.
    pub last_job: Option<JobRecord>,
}

/// Creates, lists, cancels, restarts and waits for syncs. Every call names
/// the tenant, and a job of another tenant is "not found".
#[derive(Clone)]
pub struct Conductor {
    queue: Arc<dyn JobQueue>,
    state: Arc<dyn SyncState>,
}

impl std::fmt::Debug for Conductor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conductor").finish_non_exhaustive()
    }
}

impl Conductor {
    /// A conductor over a queue and its sync state.
    pub fn new(queue: Arc<dyn JobQueue>, state: Arc<dyn SyncState>) -> Self {
        Conductor { queue, state }
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.queue
    }

    /// Adds or replaces a source.
    pub async fn add_source(&self, spec: SourceSpec) -> Result<()> {
        self.state.put_source(spec).await
    }

    /// Removes a source.
    pub async fn remove_source(&self, tenant: &str, user: &str, name: &str) -> Result<()> {
        self.state.remove_source(tenant, user, name).await
    }

    /// A user's sources.
    pub async fn sources(&self, tenant: &str, user: &str) -> Result<Vec<SourceSpec>> {
        self.state.sources(tenant, Some(user)).await
    }

    /// Queues a sync of the named sources of `user` (all of them when
    /// `sources` is empty). Every name is checked before anything is
    /// queued. A source that is already syncing returns its active job
    /// (`existing: true`).
    pub async fn create_sync(
        &self,
        tenant: &str,
        user: &str,
        sources: &[&str],
    ) -> Result<Vec<(String, Enqueued)>> {
        let all = self.state.sources(tenant, Some(user)).await?;
        let names: Vec<String> = if sources.is_empty() {
            all.iter().map(|s| s.name.clone()).collect()
        } else {
            for n in sources {
                if !all.iter().any(|s| s.name == *n) {
                    return Err(Error::new(ErrorKind::NotFound, "no such source")
                        .with_context("user", user)
                        .with_context("source", n));
                }
            }
            sources.iter().map(|s| s.to_string()).collect()
        };
        if names.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "the user has no sources")
                .with_context("user", user));
        }
        let specs = names
            .iter()
            .map(|n| JobSpec::sync(tenant, user, n))
            .collect();
        let queued = self.queue.enqueue(specs).await?;
        Ok(names.into_iter().zip(queued).collect())
    }

    /// Each source of `user` with its newest job.
    pub async fn status(&self, tenant: &str, user: &str) -> Result<Vec<SourceStatus>> {
        let sources = self.state.sources(tenant, Some(user)).await?;
        let mut newest: BTreeMap<String, JobRecord> = BTreeMap::new();
        let filter = JobFilter {
            tenant: Some(tenant.to_owned()),
            user: Some(user.to_owned()),
            state: None,
        };
        let mut after = None;
        loop {
            let page = self.queue.list(filter.clone(), after, 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for j in page {
                newest.insert(j.spec.source.clone(), j);
            }
        }
        Ok(sources
            .into_iter()
            .map(|s| SourceStatus {
                last_job: newest.remove(&s.name),
                source: s,
            })
            .collect())
    }

    /// A user's jobs, oldest first, after `after`.
    pub async fn jobs(
        &self,
        tenant: &str,
        user: &str,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        let filter = JobFilter {
            tenant: Some(tenant.to_owned()),
            user: Some(user.to_owned()),
            state: None,
        };
        self.queue.list(filter, after, limit).await
    }

    /// One job of the tenant.
    pub async fn job(&self, tenant: &str, id: JobId) -> Result<JobRecord> {
        let j = self.queue.get(id).await?;
        if j.spec.tenant != tenant {
            return Err(Error::new(ErrorKind::NotFound, "no such job").with_context("job", id));
        }
        Ok(j)
    }

    /// Cancels a job of the tenant.
    pub async fn cancel(&self, tenant: &str, id: JobId, reason: &str) -> Result<JobRecord> {
        self.job(tenant, id).await?;
        self.queue.cancel(id, reason).await
    }

    /// Restarts an ended job of the tenant.
    pub async fn restart(&self, tenant: &str, id: JobId) -> Result<JobRecord> {
        self.job(tenant, id).await?;
        self.queue.restart(id).await
    }

    /// Waits until the job has ended and returns it.
    pub async fn wait(&self, tenant: &str, id: JobId) -> Result<JobRecord> {
        // Subscribed first, so an end between the check and the wait is seen.
        let mut live = self.queue.subscribe();
        loop {
            let j = self.job(tenant, id).await?;
            if j.state.is_final() {
                return Ok(j);
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
            // Until an end event of this job, a lag, or a second passes.
            while let Ok(Ok(e)) = tokio::time::timeout_at(deadline, live.recv()).await {
                if e.job == id && matches!(e.kind, EventKind::State { to, .. } if to.is_final()) {
                    break;
                }
            }
        }
    }
}
