//! Jobs: what a worker runs, their states, progress and history.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// A job's id: unique within one queue, increasing in enqueue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        s.parse::<u64>().map(JobId).map_err(|_| {
            Error::new(ErrorKind::InvalidInput, "a job id is a decimal number")
                .with_context("id", s)
        })
    }
}

/// The kind of a sync job: sync one source into the repository.
pub const KIND_SYNC: &str = "sync";

/// The payload version this build writes and understands.
pub const PAYLOAD_VERSION: u32 = 1;

/// A job's payload: a version number and a JSON body whose shape the
/// version fixes. A worker refuses a version it does not know
/// ([`ErrorKind::Unsupported`]) rather than guess.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Format version of `body`.
    pub v: u32,
    /// The body.
    #[serde(default)]
    pub body: serde_json::Value,
}

impl Payload {
    /// A version-1 payload.
    pub fn v1(body: serde_json::Value) -> Self {
        Payload {
            v: PAYLOAD_VERSION,
            body,
        }
    }

    /// The body as `T`, if the version is one this build knows.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        if self.v != PAYLOAD_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "job payload version {} is not supported by this worker (it knows version {})",
                    self.v, PAYLOAD_VERSION
                ),
            ));
        }
        serde_json::from_value(self.body.clone()).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "the job payload does not parse").set_source(e)
        })
    }
}

/// What to run: `(tenant, user, source, kind)` and a payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Tenant the job works for.
    pub tenant: String,
    /// User within the tenant.
    pub user: String,
    /// Source name (unique per user).
    pub source: String,
    /// Job kind ([`KIND_SYNC`]); retry policies are per kind.
    pub kind: String,
    /// Versioned payload.
    pub payload: Payload,
}

impl JobSpec {
    /// A sync of `source` for `user`.
    pub fn sync(tenant: &str, user: &str, source: &str) -> Self {
        JobSpec {
            tenant: tenant.to_owned(),
            user: user.to_owned(),
            source: source.to_owned(),
            kind: KIND_SYNC.to_owned(),
            payload: Payload::v1(serde_json::json!({})),
        }
    }

    /// Checks names: non-empty, at most 128 bytes, no control characters
    /// and no `/` (they are parts of keys and repository paths).
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("tenant", &self.tenant),
            ("user", &self.user),
            ("source", &self.source),
            ("kind", &self.kind),
        ] {
            validate_name(what, v)?;
        }
        Ok(())
    }
}

/// Checks a tenant, user, source or kind name.
pub fn validate_name(what: &'static str, v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 128
        || v.contains('/')
        || v.contains('\0')
        || v.chars().any(char::is_control)
        || v == "."
        || v == ".."
    {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("a {what} name is 1-128 bytes with no '/', control characters, '.' or '..'"),
        )
        .with_context(what, v.escape_debug()));
    }
    Ok(())
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker holds its lease.
    Running,
    /// An attempt failed; waiting for its backoff to pass.
    Retrying,
    /// Finished.
    Succeeded,
    /// Failed with an error that retrying would not fix.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Failed on its last allowed attempt (the dead-letter list).
    Dead,
}

impl JobState {
    /// Whether the job will not run again unless restarted.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Dead
        )
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, kept in the job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When (ns since the Unix epoch).
    pub at_ns: i64,
    /// State before (`None` on enqueue).
    pub from: Option<JobState>,
    /// State after.
    pub to: JobState,
    /// Why, in words.
    pub reason: String,
}

/// Progress of a running or finished job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Changes the source reported.
    pub items_seen: u64,
    /// Items written into the repository.
    pub items_stored: u64,
    /// Items deleted from the repository because the source deleted them.
    pub items_deleted: u64,
    /// Items already up to date (nothing to do).
    pub items_skipped: u64,
    /// Bytes read from the source.
    pub bytes: u64,
    /// Items that failed (after their retries).
    pub errors: u64,
}

/// An item that failed during a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemError {
    /// The item's key in its source.
    pub key: String,
    /// The error, in words.
    pub error: String,
}

/// Everything known about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// What to run.
    pub spec: JobSpec,
    /// Current state.
    pub state: JobState,
    /// Attempts started so far (a lease starts one).
    pub attempts: u32,
    /// Attempts allowed before the job is dead.
    pub max_attempts: u32,
    /// Not to be leased before this time (ns; for retries).
    pub run_after_ns: i64,
    /// Worker holding the lease while running.
    pub worker: Option<String>,
    /// Lease token of the current attempt (0 when not running).
    pub lease: u64,
    /// When the lease expires (ns) unless renewed.
    pub lease_expires_ns: i64,
    /// A cancel was asked for while the job was running.
    pub cancel_requested: bool,
    /// Latest progress.
    pub progress: Progress,
    /// Items that failed (at most [`MAX_ITEM_ERRORS`] kept).
    pub item_errors: Vec<ItemError>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Every state change.
    pub history: Vec<Transition>,
    /// Enqueue time (ns).
    pub created_ns: i64,
    /// Time of the last change (ns).
    pub updated_ns: i64,
}

/// Item errors kept per job.
pub const MAX_ITEM_ERRORS: usize = 100;

/// How a job kind is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (the first run counts); at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles on each further one.
    #[serde(with = "duration_ms")]
    pub backoff: Duration,
    /// Upper bound of the delay.
    #[serde(with = "duration_ms")]
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts, 2 s doubling to at most 5 minutes.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based):
    /// exponential, capped, with "equal jitter" (between half and all of
    /// the exponential delay) so that jobs failing together spread out.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let d = exp.min(self.backoff_max);
        let j = jitter.clamp(0.0, 1.0);
        d.mul_f64(0.5 + 0.5 * j)
    }
}

/// Serde for a `Duration` as milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as ms.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    /// Deserialize from ms.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Nanoseconds since the Unix epoch now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
