//! The embedded queue: one redb file holding jobs, their indexes, events
//! and the sync state. Every operation is one transaction, durable (fsync)
//! before it returns; events are published on the live channel only after
//! their transaction committed.
//!
//! A redb file is open in one process at a time, so when [`RedbQueue::open`]
//! finds running jobs, their workers belonged to a process that is gone:
//! their leases are expired at once and the jobs run again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::{Notify, broadcast};

use super::{
    Completion, Enqueued, Heartbeat, JobFilter, JobQueue, Outcome, QueueConfig, SyncState,
};
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, EventKind};
use crate::job::{
    JobId, JobRecord, JobSpec, JobState, MAX_ITEM_ERRORS, Progress, Transition, now_ns,
};
use crate::source::{Cursor, SourceSpec};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// id -> JobRecord (JSON)
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// tenant \0 id(be) -> source key; jobs that may be leased now
const READY: TableDefinition<&[u8], &str> = TableDefinition::new("ready");
/// run_after(be) id(be) -> tenant; retrying jobs waiting for their backoff
const DELAYED: TableDefinition<&[u8], &str> = TableDefinition::new("delayed");
/// tenant -> turn it was last served (only tenants with ready jobs)
const TURNS: TableDefinition<&str, u64> = TableDefinition::new("turns");
/// expires(be) id(be) -> ()
const LEASES: TableDefinition<&[u8], ()> = TableDefinition::new("leases");
/// "t\0tenant" or "s\0tenant\0user\0source" -> running jobs
const RUNNING: TableDefinition<&str, u64> = TableDefinition::new("running");
/// tenant \0 user \0 source \0 kind -> the active job's id
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
/// state(u8) id(be) -> ()
const BY_STATE: TableDefinition<&[u8], ()> = TableDefinition::new("by_state");
/// tenant \0 user \0 id(be) -> ()
const BY_USER: TableDefinition<&[u8], ()> = TableDefinition::new("by_user");
/// seq -> Event (JSON)
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// tenant \0 user \0 name -> SourceSpec (JSON)
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
/// tenant \0 user \0 name -> Cursor (postcard)
const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors");
/// tenant \0 user \0 name -> last scheduled (ns)
const SCHEDULED: TableDefinition<&str, i64> = TableDefinition::new("scheduled");

const ALL_STATES: [JobState; 7] = [
    JobState::Queued,
    JobState::Running,
    JobState::Retrying,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
    JobState::Dead,
];

fn state_byte(s: JobState) -> u8 {
    ALL_STATES.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn be_time(t: i64) -> [u8; 8] {
    (t.max(0) as u64).to_be_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn source_key(tenant: &str, user: &str, source: &str) -> String {
    format!("{tenant}\0{user}\0{source}")
}

fn active_key(s: &JobSpec) -> String {
    format!("{}\0{}\0{}\0{}", s.tenant, s.user, s.source, s.kind)
}

fn id_from_tail(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() >= 8 {
        b.copy_from_slice(&k[k.len() - 8..]);
    }
    u64::from_be_bytes(b)
}

fn enc_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::db("queue record does not encode", e))
}

fn dec_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::db("queue record does not decode", e))
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::db("the queue database failed", e)
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::from(redb::Error::from(e))
            }
        }
    )*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A cheap, non-cryptographic random number in [0, 1) for backoff jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_i64(now_ns());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// All tables of one write transaction, plus the events it emits.
struct Tx<'t> {
    meta: Table<'t, &'static str, u64>,
    jobs: Table<'t, u64, &'static [u8]>,
    ready: Table<'t, &'static [u8], &'static str>,
    delayed: Table<'t, &'static [u8], &'static str>,
    turns: Table<'t, &'static str, u64>,
    leases: Table<'t, &'static [u8], ()>,
    running: Table<'t, &'static str, u64>,
    active: Table<'t, &'static str, u64>,
    by_state: Table<'t, &'static [u8], ()>,
    by_user: Table<'t, &'static [u8], ()>,
    events_t: Table<'t, u64, &'static [u8]>,
    events: Vec<Event>,
    now: i64,
    cfg: &'t QueueConfig,
}

impl<'t> Tx<'t> {
    fn open(w: &'t WriteTransaction, cfg: &'t QueueConfig) -> Result<Self> {
        Ok(Tx {
            meta: w.open_table(META)?,
            jobs: w.open_table(JOBS)?,
            ready: w.open_table(READY)?,
            delayed: w.open_table(DELAYED)?,
            turns: w.open_table(TURNS)?,
            leases: w.open_table(LEASES)?,
            running: w.open_table(RUNNING)?,
            active: w.open_table(ACTIVE)?,
            by_state: w.open_table(BY_STATE)?,
            by_user: w.open_table(BY_USER)?,
            events_t: w.open_table(EVENTS)?,
            events: Vec::new(),
            now: now_ns(),
            cfg,
        })
    }

    fn next(&mut self, counter: &'static str) -> Result<u64> {
        let n = self.meta.get(counter)?.map(|v| v.value()).unwrap_or(0) + 1;
        self.meta.insert(counter, n)?;
        Ok(n)
    }

    fn load(&self, id: JobId) -> Result<JobRecord> {
        match self.jobs.get(id.0)? {
            Some(v) => dec_json(v.value()),
            None => Err(Error::new(ErrorKind::NotFound, "no such job").with_context("job", id)),
        }
    }

    fn save(&mut self, job: &JobRecord) -> Result<()> {
        self.jobs.insert(job.id.0, enc_json(job)?.as_slice())?;
        Ok(())
    }

    fn emit(&mut self, job: &JobRecord, kind: EventKind) -> Result<()> {
        let seq = self.next("event_seq")?;
        let e = Event {
            seq,
            at_ns: self.now,
            job: job.id,
            tenant: job.spec.tenant.clone(),
            user: job.spec.user.clone(),
            source: job.spec.source.clone(),
            kind,
        };
        self.events_t.insert(seq, enc_json(&e)?.as_slice())?;
        if seq > self.cfg.events_kept && seq % 1024 == 0 {
            let cut = seq - self.cfg.events_kept;
            self.events_t.retain_in(..cut, |_, _| false)?;
        }
        self.events.push(e);
        Ok(())
    }

    /// Moves `job` to `to`, recording history, indexes and an event.
    fn transition(&mut self, job: &mut JobRecord, to: JobState, reason: String) -> Result<()> {
        let from = job.state;
        let id_be = job.id.0.to_be_bytes();
        self.by_state
            .remove(cat(&[&[state_byte(from)], &id_be]).as_slice())?;
        self.by_state
            .insert(cat(&[&[state_byte(to)], &id_be]).as_slice(), ())?;
        job.state = to;
        job.updated_ns = self.now;
        job.history.push(Transition {
            at_ns: self.now,
            from: Some(from),
            to,
            reason: reason.clone(),
        });
        if to.is_final() {
            let key = active_key(&job.spec);
            if self.active.get(key.as_str())?.map(|v| v.value()) == Some(job.id.0) {
                self.active.remove(key.as_str())?;
            }
        }
        self.emit(
            job,
            EventKind::State {
                from: Some(from),
                to,
                reason,
            },
        )
    }

    fn add_running(&mut self, job: &JobRecord, delta: i64) -> Result<()> {
        let s = &job.spec;
        for key in [
            format!("t\0{}", s.tenant),
            format!("s\0{}", source_key(&s.tenant, &s.user, &s.source)),
        ] {
            let n = self
                .running
                .get(key.as_str())?
                .map(|v| v.value())
                .unwrap_or(0);
            let n = (n as i64 + delta).max(0) as u64;
            if n == 0 {
                self.running.remove(key.as_str())?;
            } else {
                self.running.insert(key.as_str(), n)?;
            }
        }
        Ok(())
    }

    fn running_of(&self, key: &str) -> Result<u64> {
        Ok(self.running.get(key)?.map(|v| v.value()).unwrap_or(0))
    }

    fn make_ready(&mut self, job: &JobRecord) -> Result<()> {
        let s = &job.spec;
        let k = cat(&[s.tenant.as_bytes(), &[0], &job.id.0.to_be_bytes()]);
        self.ready.insert(
            k.as_slice(),
            source_key(&s.tenant, &s.user, &s.source).as_str(),
        )?;
        if self.turns.get(s.tenant.as_str())?.is_none() {
            // A tenant that had nothing ready takes the next turn.
            self.turns.insert(s.tenant.as_str(), 0)?;
        }
        Ok(())
    }

    fn unready(&mut self, job: &JobRecord) -> Result<()> {
        let t = &job.spec.tenant;
        let k = cat(&[t.as_bytes(), &[0], &job.id.0.to_be_bytes()]);
        self.ready.remove(k.as_slice())?;
        let dk = cat(&[&be_time(job.run_after_ns), &job.id.0.to_be_bytes()]);
        self.delayed.remove(dk.as_slice())?;
        self.drop_turn_if_idle(t)
    }

    fn drop_turn_if_idle(&mut self, tenant: &str) -> Result<()> {
        let lo = cat(&[tenant.as_bytes(), &[0]]);
        let hi = cat(&[tenant.as_bytes(), &[1]]);
        if self
            .ready
            .range(lo.as_slice()..hi.as_slice())?
            .next()
            .is_none()
        {
            self.turns.remove(tenant)?;
        }
        Ok(())
    }

    fn end_lease(&mut self, job: &mut JobRecord) -> Result<()> {
        let k = cat(&[&be_time(job.lease_expires_ns), &job.id.0.to_be_bytes()]);
        self.leases.remove(k.as_slice())?;
        self.add_running(job, -1)?;
        job.worker = None;
        job.lease = 0;
        job.lease_expires_ns = 0;
        Ok(())
    }

    /// Jobs whose lease ran out go back to the queue (or die when that was
    /// their last attempt).
    fn reclaim_expired(&mut self, all: bool) -> Result<usize> {
        let hi = if all {
            u64::MAX
        } else {
            self.now.max(0) as u64
        };
        let mut expired = Vec::new();
        for item in self.leases.range(..hi.to_be_bytes().as_slice())? {
            let (k, _) = item?;
            expired.push(id_from_tail(k.value()));
        }
        for id in &expired {
            let mut job = self.load(JobId(*id))?;
            if job.state != JobState::Running {
                continue;
            }
            let worker = job.worker.clone().unwrap_or_default();
            self.end_lease(&mut job)?;
            let why = format!("the lease of worker {worker} expired (the worker stopped)");
            if job.cancel_requested {
                self.transition(&mut job, JobState::Cancelled, why)?;
            } else if job.attempts >= job.max_attempts {
                job.last_error = Some(why.clone());
                self.transition(
                    &mut job,
                    JobState::Dead,
                    format!("{why} on the last attempt"),
                )?;
            } else {
                self.transition(&mut job, JobState::Queued, why)?;
                self.make_ready(&job)?;
            }
            self.save(&job)?;
        }
        Ok(expired.len())
    }

    fn promote_delayed(&mut self) -> Result<()> {
        let hi = be_time(self.now.saturating_add(1));
        let mut due = Vec::new();
        for item in self.delayed.range(..hi.as_slice())? {
            let (k, _) = item?;
            due.push((k.value().to_vec(), id_from_tail(k.value())));
        }
        for (k, id) in due {
            self.delayed.remove(k.as_slice())?;
            let job = self.load(JobId(id))?;
            if job.state == JobState::Retrying {
                self.make_ready(&job)?;
            }
        }
        Ok(())
    }

    fn lease(&mut self, worker: &str, max: usize) -> Result<Vec<JobRecord>> {
        self.reclaim_expired(false)?;
        self.promote_delayed()?;
        let mut out = Vec::new();
        let lease_ns = self.cfg.lease_for.as_nanos() as i64;
        while out.len() < max {
            // Tenants in turn: the one served longest ago first.
            let mut turns = Vec::new();
            for item in self.turns.iter()? {
                let (k, v) = item?;
                turns.push((v.value(), k.value().to_owned()));
            }
            turns.sort();
            let mut picked_any = false;
            for (_, tenant) in turns {
                if out.len() >= max {
                    break;
                }
                if self.running_of(&format!("t\0{tenant}"))?
                    >= u64::from(self.cfg.max_running_per_tenant)
                {
                    continue;
                }
                let lo = cat(&[tenant.as_bytes(), &[0]]);
                let hi = cat(&[tenant.as_bytes(), &[1]]);
                let mut pick = None;
                for item in self.ready.range(lo.as_slice()..hi.as_slice())?.take(1024) {
                    let (k, v) = item?;
                    if self.running_of(&format!("s\0{}", v.value()))?
                        < u64::from(self.cfg.max_running_per_source)
                    {
                        pick = Some(id_from_tail(k.value()));
                        break;
                    }
                }
                let Some(id) = pick else { continue };
                let mut job = self.load(JobId(id))?;
                self.unready(&job)?;
                let turn = self.next("turn")?;
                if self.turns.get(tenant.as_str())?.is_some() {
                    self.turns.insert(tenant.as_str(), turn)?;
                }
                job.attempts += 1;
                job.worker = Some(worker.to_owned());
                job.lease = self.next("lease")?;
                job.lease_expires_ns = self.now.saturating_add(lease_ns);
                let lk = cat(&[&be_time(job.lease_expires_ns), &job.id.0.to_be_bytes()]);
                self.leases.insert(lk.as_slice(), ())?;
                self.add_running(&job, 1)?;
                let reason = format!(
                    "attempt {} of {} leased by worker {worker}",
                    job.attempts, job.max_attempts
                );
                self.transition(&mut job, JobState::Running, reason)?;
                self.save(&job)?;
                out.push(job);
                picked_any = true;
            }
            if !picked_any {
                break;
            }
        }
        Ok(out)
    }

    fn running_job(&self, id: JobId, lease: u64) -> Result<JobRecord> {
        let job = self.load(id)?;
        if job.state != JobState::Running || job.lease != lease {
            return Err(Error::new(
                ErrorKind::LeaseLost,
                "this worker no longer holds the job's lease",
            )
            .with_context("job", id)
            .with_context("state", job.state));
        }
        Ok(job)
    }

    fn complete(&mut self, c: Completion) -> Result<JobState> {
        let mut job = self.running_job(c.id, c.lease)?;
        self.end_lease(&mut job)?;
        job.progress = c.progress;
        job.item_errors = c.item_errors;
        job.item_errors.truncate(MAX_ITEM_ERRORS);
        match c.outcome {
            Outcome::Succeeded => {
                job.last_error = None;
                self.transition(&mut job, JobState::Succeeded, "the job finished".into())?;
            }
            Outcome::Cancelled => {
                self.transition(&mut job, JobState::Cancelled, "stopped by a cancel".into())?;
            }
            Outcome::Failed { error, .. } if job.cancel_requested => {
                job.last_error = Some(error.clone());
                self.transition(
                    &mut job,
                    JobState::Cancelled,
                    format!("cancelled; the attempt failed: {error}"),
                )?;
            }
            Outcome::Failed {
                error,
                retryable: false,
            } => {
                job.last_error = Some(error.clone());
                self.transition(&mut job, JobState::Failed, error)?;
            }
            Outcome::Failed {
                error,
                retryable: true,
            } if job.attempts >= job.max_attempts => {
                job.last_error = Some(error.clone());
                let why = format!(
                    "attempt {} of {} failed: {error}",
                    job.attempts, job.max_attempts
                );
                self.transition(&mut job, JobState::Dead, why)?;
            }
            Outcome::Failed { error, .. } => {
                let delay = self
                    .cfg
                    .policy(&job.spec.kind)
                    .delay(job.attempts, jitter());
                job.run_after_ns = self.now.saturating_add(delay.as_nanos() as i64);
                job.last_error = Some(error.clone());
                let why = format!(
                    "attempt {} of {} failed, retrying in {} ms: {error}",
                    job.attempts,
                    job.max_attempts,
                    delay.as_millis()
                );
                self.transition(&mut job, JobState::Retrying, why)?;
                let dk = cat(&[&be_time(job.run_after_ns), &job.id.0.to_be_bytes()]);
                self.delayed
                    .insert(dk.as_slice(), job.spec.tenant.as_str())?;
            }
        }
        self.save(&job)?;
        Ok(job.state)
    }
}

struct Inner {
    db: Database,
    cfg: QueueConfig,
    tx: broadcast::Sender<Event>,
    work: Notify,
}

impl Inner {
    /// Runs `f` in one write transaction, commits, then publishes its events.
    fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let w = self.db.begin_write()?;
        let (out, events) = {
            let mut tx = Tx::open(&w, &self.cfg)?;
            let out = f(&mut tx)?;
            (out, std::mem::take(&mut tx.events))
        };
        w.commit()?;
        for e in events {
            // No receivers is fine.
            let _ = self.tx.send(e);
        }
        Ok(out)
    }

    fn get(&self, id: JobId) -> Result<JobRecord> {
        let r = self.db.begin_read()?;
        let t = r.open_table(JOBS)?;
        match t.get(id.0)? {
            Some(v) => dec_json(v.value()),
            None => Err(Error::new(ErrorKind::NotFound, "no such job").with_context("job", id)),
        }
    }
}

/// The embedded [`JobQueue`] and [`SyncState`] on one redb file.
#[derive(Clone)]
pub struct RedbQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbQueue")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl RedbQueue {
    /// Opens (or creates) the queue file. Jobs left running by a previous
    /// process go back to the queue.
    pub fn open(path: &Path, cfg: QueueConfig) -> Result<Self> {
        if cfg.max_running_per_tenant == 0 || cfg.max_running_per_source == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "running limits must be at least 1",
            ));
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::new(
                ErrorKind::Conflict,
                "the queue is in use by another process or handle",
            )
            .with_context("queue", path.display()),
            e => Error::db("cannot open the queue", e).with_context("queue", path.display()),
        })?;
        let (tx, _) = broadcast::channel(4096);
        let inner = Inner {
            db,
            cfg,
            tx,
            work: Notify::new(),
        };
        inner.write(|tx| {
            // Jobs left running by a previous process: their workers are gone.
            tx.reclaim_expired(true)?;
            Ok(())
        })?;
        {
            let w = inner.db.begin_write()?;
            w.open_table(SOURCES)?;
            w.open_table(CURSORS)?;
            w.open_table(SCHEDULED)?;
            w.commit()?;
        }
        Ok(RedbQueue {
            inner: Arc::new(inner),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.cfg
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::new(ErrorKind::Other, "a queue task failed").set_source(e))?
    }
}

#[async_trait]
impl JobQueue for RedbQueue {
    async fn enqueue(&self, specs: Vec<JobSpec>) -> Result<Vec<Enqueued>> {
        for s in &specs {
            s.validate()?;
        }
        let out = self
            .blocking(move |inner| {
                inner.write(|tx| {
                    let mut out = Vec::with_capacity(specs.len());
                    for spec in specs {
                        let key = active_key(&spec);
                        if let Some(id) = tx.active.get(key.as_str())?.map(|v| v.value()) {
                            out.push(Enqueued {
                                id: JobId(id),
                                existing: true,
                            });
                            continue;
                        }
                        let id = JobId(tx.next("job_id")?);
                        let policy = tx.cfg.policy(&spec.kind);
                        let now = tx.now;
                        let job = JobRecord {
                            id,
                            spec,
                            state: JobState::Queued,
                            attempts: 0,
                            max_attempts: policy.max_attempts.max(1),
                            run_after_ns: 0,
                            worker: None,
                            lease: 0,
                            lease_expires_ns: 0,
                            cancel_requested: false,
                            progress: Progress::default(),
                            item_errors: Vec::new(),
                            last_error: None,
                            history: vec![Transition {
                                at_ns: now,
                                from: None,
                                to: JobState::Queued,
                                reason: "enqueued".into(),
                            }],
                            created_ns: now,
                            updated_ns: now,
                        };
                        tx.active.insert(key.as_str(), id.0)?;
                        let ik = cat(&[&[state_byte(JobState::Queued)], &id.0.to_be_bytes()]);
                        tx.by_state.insert(ik.as_slice(), ())?;
                        let uk = cat(&[
                            job.spec.tenant.as_bytes(),
                            &[0],
                            job.spec.user.as_bytes(),
                            &[0],
                            &id.0.to_be_bytes(),
                        ]);
                        tx.by_user.insert(uk.as_slice(), ())?;
                        tx.make_ready(&job)?;
                        tx.save(&job)?;
                        tx.emit(
                            &job,
                            EventKind::State {
                                from: None,
                                to: JobState::Queued,
                                reason: "enqueued".into(),
                            },
                        )?;
                        out.push(Enqueued {
                            id,
                            existing: false,
                        });
                    }
                    Ok(out)
                })
            })
            .await?;
        self.inner.work.notify_waiters();
        Ok(out)
    }

    async fn lease(&self, worker: &str, max: usize) -> Result<Vec<JobRecord>> {
        let worker = worker.to_owned();
        self.blocking(move |inner| inner.write(|tx| tx.lease(&worker, max)))
            .await
    }

    async fn heartbeat(
        &self,
        id: JobId,
        lease: u64,
        progress: Option<Progress>,
    ) -> Result<Heartbeat> {
        self.blocking(move |inner| {
            inner.write(|tx| {
                let mut job = tx.running_job(id, lease)?;
                let old = cat(&[&be_time(job.lease_expires_ns), &id.0.to_be_bytes()]);
                tx.leases.remove(old.as_slice())?;
                job.lease_expires_ns = tx.now.saturating_add(tx.cfg.lease_for.as_nanos() as i64);
                let new = cat(&[&be_time(job.lease_expires_ns), &id.0.to_be_bytes()]);
                tx.leases.insert(new.as_slice(), ())?;
                if let Some(p) = progress
                    && p != job.progress
                {
                    job.progress = p;
                    tx.emit(&job, EventKind::Progress { progress: p })?;
                }
                job.updated_ns = tx.now;
                tx.save(&job)?;
                Ok(Heartbeat {
                    cancel_requested: job.cancel_requested,
                })
            })
        })
        .await
    }

    async fn complete(&self, done: Vec<Completion>) -> Result<Vec<Result<JobState>>> {
        let out = self
            .blocking(move |inner| {
                inner.write(|tx| {
                    let mut out = Vec::with_capacity(done.len());
                    for c in done {
                        match tx.complete(c) {
                            Err(e) if e.kind() == ErrorKind::LeaseLost => out.push(Err(e)),
                            Err(e) if e.kind() == ErrorKind::NotFound => out.push(Err(e)),
                            Err(e) => return Err(e),
                            Ok(s) => out.push(Ok(s)),
                        }
                    }
                    Ok(out)
                })
            })
            .await?;
        // Finished jobs free running slots.
        self.inner.work.notify_waiters();
        Ok(out)
    }

    async fn cancel(&self, id: JobId, reason: &str) -> Result<JobRecord> {
        let reason = reason.to_owned();
        self.blocking(move |inner| {
            inner.write(|tx| {
                let mut job = tx.load(id)?;
                match job.state {
                    JobState::Queued | JobState::Retrying => {
                        tx.unready(&job)?;
                        tx.transition(
                            &mut job,
                            JobState::Cancelled,
                            format!("cancelled: {reason}"),
                        )?;
                    }
                    JobState::Running => {
                        if !job.cancel_requested {
                            job.cancel_requested = true;
                            tx.emit(&job, EventKind::CancelRequested { reason })?;
                        }
                    }
                    JobState::Cancelled => {}
                    s => {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!("the job already ended ({s}); nothing to cancel"),
                        )
                        .with_context("job", id));
                    }
                }
                tx.save(&job)?;
                Ok(job)
            })
        })
        .await
    }

    async fn restart(&self, id: JobId) -> Result<JobRecord> {
        let job = self
            .blocking(move |inner| {
                inner.write(|tx| {
                    let mut job = tx.load(id)?;
                    if !job.state.is_final() {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!("the job is {}; only an ended job can be restarted (cancel it first)", job.state),
                        )
                        .with_context("job", id));
                    }
                    let key = active_key(&job.spec);
                    if let Some(other) = tx.active.get(key.as_str())?.map(|v| v.value()) {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            "another job of the same source is active",
                        )
                        .with_context("job", id)
                        .with_context("active_job", other));
                    }
                    tx.active.insert(key.as_str(), id.0)?;
                    job.attempts = 0;
                    job.max_attempts = tx.cfg.policy(&job.spec.kind).max_attempts.max(1);
                    job.cancel_requested = false;
                    job.run_after_ns = 0;
                    job.progress = Progress::default();
                    job.item_errors.clear();
                    job.last_error = None;
                    tx.transition(&mut job, JobState::Queued, "restarted".into())?;
                    tx.make_ready(&job)?;
                    tx.save(&job)?;
                    Ok(job)
                })
            })
            .await?;
        self.inner.work.notify_waiters();
        Ok(job)
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.blocking(move |inner| inner.get(id)).await
    }

    async fn list(
        &self,
        filter: JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        if filter.user.is_some() && filter.tenant.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "filtering by user needs a tenant",
            ));
        }
        self.blocking(move |inner| {
            let r = inner.db.begin_read()?;
            let jobs = r.open_table(JOBS)?;
            let start = after.map_or(0, |a| a.0.saturating_add(1));
            let mut out = Vec::new();
            let mut keep = |job: JobRecord| {
                let ok = filter.tenant.as_ref().is_none_or(|t| *t == job.spec.tenant)
                    && filter.user.as_ref().is_none_or(|u| *u == job.spec.user)
                    && filter.state.is_none_or(|s| s == job.state);
                if ok {
                    out.push(job);
                }
                out.len() >= limit
            };
            if let (Some(t), Some(u)) = (&filter.tenant, &filter.user) {
                let by_user = r.open_table(BY_USER)?;
                let pre = cat(&[t.as_bytes(), &[0], u.as_bytes(), &[0]]);
                let lo = cat(&[&pre, &start.to_be_bytes()]);
                let hi = cat(&[&pre, &u64::MAX.to_be_bytes()]);
                for item in by_user.range(lo.as_slice()..=hi.as_slice())? {
                    let (k, _) = item?;
                    if let Some(v) = jobs.get(id_from_tail(k.value()))?
                        && keep(dec_json(v.value())?)
                    {
                        break;
                    }
                }
            } else if let Some(s) = filter.state {
                let by_state = r.open_table(BY_STATE)?;
                let lo = cat(&[&[state_byte(s)], &start.to_be_bytes()]);
                let hi = cat(&[&[state_byte(s)], &u64::MAX.to_be_bytes()]);
                for item in by_state.range(lo.as_slice()..=hi.as_slice())? {
                    let (k, _) = item?;
                    if let Some(v) = jobs.get(id_from_tail(k.value()))?
                        && keep(dec_json(v.value())?)
                    {
                        break;
                    }
                }
            } else {
                for item in jobs.range(start..)? {
                    let (_, v) = item?;
                    if keep(dec_json(v.value())?) {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn counts(&self) -> Result<BTreeMap<JobState, u64>> {
        self.blocking(|inner| {
            let r = inner.db.begin_read()?;
            let t = r.open_table(BY_STATE)?;
            let mut out = BTreeMap::new();
            for s in ALL_STATES {
                let b = state_byte(s);
                let n = t.range([b].as_slice()..[b + 1].as_slice())?.count() as u64;
                out.insert(s, n);
            }
            Ok(out)
        })
        .await
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.blocking(move |inner| {
            let r = inner.db.begin_read()?;
            let t = r.open_table(EVENTS)?;
            let mut out = Vec::new();
            for item in t.range(after.saturating_add(1)..)?.take(limit) {
                let (_, v) = item?;
                out.push(dec_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.tx.subscribe()
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.inner.work.notified()).await;
    }
}

impl Ord for JobState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        state_byte(*self).cmp(&state_byte(*other))
    }
}

impl PartialOrd for JobState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn sk(tenant: &str, user: &str, name: &str) -> String {
    source_key(tenant, user, name)
}

#[async_trait]
impl SyncState for RedbQueue {
    async fn put_source(&self, spec: SourceSpec) -> Result<()> {
        spec.validate()?;
        self.blocking(move |inner| {
            let w = inner.db.begin_write()?;
            {
                let mut t = w.open_table(SOURCES)?;
                let k = sk(&spec.tenant, &spec.user, &spec.name);
                t.insert(k.as_str(), enc_json(&spec)?.as_slice())?;
            }
            w.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_source(&self, tenant: &str, user: &str, name: &str) -> Result<()> {
        let k = sk(tenant, user, name);
        self.blocking(move |inner| {
            let w = inner.db.begin_write()?;
            let existed = {
                let mut t = w.open_table(SOURCES)?;
                let existed = t.remove(k.as_str())?.is_some();
                w.open_table(CURSORS)?.remove(k.as_str())?;
                w.open_table(SCHEDULED)?.remove(k.as_str())?;
                existed
            };
            w.commit()?;
            if existed {
                Ok(())
            } else {
                Err(Error::new(ErrorKind::NotFound, "no such source"))
            }
        })
        .await
    }

    async fn source(&self, tenant: &str, user: &str, name: &str) -> Result<SourceSpec> {
        let k = sk(tenant, user, name);
        let name = name.to_owned();
        self.blocking(move |inner| {
            let r = inner.db.begin_read()?;
            let t = r.open_table(SOURCES)?;
            match t.get(k.as_str())? {
                Some(v) => dec_json(v.value()),
                None => {
                    Err(Error::new(ErrorKind::NotFound, "no such source")
                        .with_context("source", name))
                }
            }
        })
        .await
    }

    async fn sources(&self, tenant: &str, user: Option<&str>) -> Result<Vec<SourceSpec>> {
        let pre = match user {
            Some(u) => format!("{tenant}\0{u}\0"),
            None => format!("{tenant}\0"),
        };
        self.blocking(move |inner| {
            let r = inner.db.begin_read()?;
            let t = r.open_table(SOURCES)?;
            let mut out = Vec::new();
            for item in t.range(pre.as_str()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(pre.as_str()) {
                    break;
                }
                out.push(dec_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn all_sources(&self) -> Result<Vec<SourceSpec>> {
        self.blocking(move |inner| {
            let r = inner.db.begin_read()?;
            let t = r.open_table(SOURCES)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (_, v) = item?;
                out.push(dec_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn cursor(&self, tenant: &str, user: &str, name: &str) -> Result<Cursor> {
        let k = sk(tenant, user, name);
        self.blocking(move |inner| {
            let r = inner.db.begin_read()?;
            let t = r.open_table(CURSORS)?;
            match t.get(k.as_str())? {
                Some(v) => Cursor::decode(v.value()),
                None => Ok(Cursor::default()),
            }
        })
        .await
    }

    async fn set_cursor(
        &self,
        tenant: &str,
        user: &str,
        name: &str,
        cursor: &Cursor,
    ) -> Result<()> {
        let k = sk(tenant, user, name);
        let bytes = cursor.encode()?;
        self.blocking(move |inner| {
            let w = inner.db.begin_write()?;
            w.open_table(CURSORS)?
                .insert(k.as_str(), bytes.as_slice())?;
            w.commit()?;
            Ok(())
        })
        .await
    }

    async fn last_scheduled(&self, tenant: &str, user: &str, name: &str) -> Result<Option<i64>> {
        let k = sk(tenant, user, name);
        self.blocking(move |inner| {
            let r = inner.db.begin_read()?;
            let t = r.open_table(SCHEDULED)?;
            Ok(t.get(k.as_str())?.map(|v| v.value()))
        })
        .await
    }

    async fn set_last_scheduled(
        &self,
        tenant: &str,
        user: &str,
        name: &str,
        at_ns: i64,
    ) -> Result<()> {
        let k = sk(tenant, user, name);
        self.blocking(move |inner| {
            let w = inner.db.begin_write()?;
            w.open_table(SCHEDULED)?.insert(k.as_str(), at_ns)?;
            w.commit()?;
            Ok(())
        })
        .await
    }
}
