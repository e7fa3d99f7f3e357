//! Events: every job state change and progress step, numbered.
//!
//! Sequence numbers are stored with the events, so they only grow, also
//! across restarts; a client that saw event `n` resumes with
//! [`EventStream::resume`]`(queue, n)` and gets everything after it (as long
//! as the queue still keeps it: see `QueueConfig::events_kept`).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::Result;
use crate::job::{JobId, JobState, Progress};
use crate::queue::JobQueue;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, increasing by one per event.
    pub seq: u64,
    /// When (ns since the Unix epoch).
    pub at_ns: i64,
    /// The job.
    pub job: JobId,
    /// Its tenant.
    pub tenant: String,
    /// Its user.
    pub user: String,
    /// Its source.
    pub source: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The job changed state.
    State {
        /// Before (`None` on enqueue).
        from: Option<JobState>,
        /// After.
        to: JobState,
        /// Why.
        reason: String,
    },
    /// A running job made progress.
    Progress {
        /// Counters so far.
        progress: Progress,
    },
    /// A cancel was asked for while the job runs.
    CancelRequested {
        /// Why.
        reason: String,
    },
}

/// A stream of events that first replays the stored ones after a sequence
/// number, then follows live ones, and falls back to the store when it lags
/// behind the live channel (so a slow reader misses nothing that is still
/// kept, and costs the queue no memory).
pub struct EventStream {
    queue: Arc<dyn JobQueue>,
    live: broadcast::Receiver<Event>,
    buffered: VecDeque<Event>,
    last: u64,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// Events after sequence number `after` (0: all that are kept).
    pub fn resume(queue: Arc<dyn JobQueue>, after: u64) -> Self {
        // Subscribe before reading the store so nothing falls in between;
        // duplicates are dropped by sequence number.
        let live = queue.subscribe();
        EventStream {
            queue,
            live,
            buffered: VecDeque::new(),
            last: after,
        }
    }

    /// The sequence number of the last event returned.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    async fn refill_from_store(&mut self) -> Result<()> {
        let batch = self.queue.events_after(self.last, 1024).await?;
        self.buffered.extend(batch);
        Ok(())
    }

    /// The next event; waits for one.
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            if self.buffered.is_empty() {
                self.refill_from_store().await?;
            }
            if let Some(e) = self.buffered.pop_front() {
                if e.seq > self.last {
                    self.last = e.seq;
                    return Ok(e);
                }
                continue;
            }
            // Caught up with the store: follow the live channel.
            match self.live.recv().await {
                Ok(e) if e.seq <= self.last => continue,
                Ok(e) if e.seq == self.last + 1 => {
                    self.last = e.seq;
                    return Ok(e);
                }
                // A gap (an event committed between the store read and the
                // subscription) or lag: read the store again.
                Ok(e) => self.buffered.push_back(e),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(crate::Error::new(
                        crate::ErrorKind::Other,
                        "the event channel closed",
                    ));
                }
            }
            // Anything pushed back is re-read in order from the store.
            self.buffered.clear();
            self.refill_from_store().await?;
        }
    }
}
