//! The redb queue: durability, leases, retries, dead letters, cancel,
//! restart, limits, fairness, events, and workers under random failures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asheville_sync::*;
use async_trait::async_trait;

use crate::fast_queue;

fn spec(tenant: &str, source: &str) -> JobSpec {
    JobSpec::sync(tenant, "u", source)
}

fn done(job: &JobRecord, outcome: Outcome) -> Completion {
    Completion {
        id: job.id,
        lease: job.lease,
        outcome,
        progress: Progress::default(),
        item_errors: Vec::new(),
    }
}

#[tokio::test]
async fn enqueue_is_durable_and_every_transition_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let q = fast_queue(dir.path(), |_| {});
        q.enqueue(vec![spec("t", "a")]).await.unwrap()[0].id
    };
    // A new handle on the same file (as after a restart) sees the job.
    let q = fast_queue(dir.path(), |_| {});
    assert_eq!(q.get(id).await.unwrap().state, JobState::Queued);
    let leased = q.lease("w", 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].attempts, 1);
    let r = q
        .complete(vec![done(&leased[0], Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap(), &JobState::Succeeded);
    let job = q.get(id).await.unwrap();
    let states: Vec<_> = job.history.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        states,
        vec![
            (None, JobState::Queued),
            (Some(JobState::Queued), JobState::Running),
            (Some(JobState::Running), JobState::Succeeded)
        ]
    );
    assert!(job.history.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    // Completing twice is refused: the lease is gone.
    let again = q
        .complete(vec![done(&leased[0], Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap_err().kind(), ErrorKind::LeaseLost);
}

#[tokio::test]
async fn reopening_requeues_jobs_of_a_dead_process_and_expired_leases_return() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let q = fast_queue(dir.path(), |_| {});
        q.enqueue(vec![spec("t", "a")]).await.unwrap();
        q.lease("w", 1).await.unwrap()[0].id
    };
    let q = fast_queue(dir.path(), |_| {});
    let job = q.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(job.history.last().unwrap().reason.contains("lease"));
    // In one process: a lease that is not renewed expires.
    let leased = q.lease("w1", 1).await.unwrap();
    assert_eq!(leased[0].attempts, 2);
    assert!(q.lease("w2", 1).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = q.lease("w2", 1).await.unwrap();
    assert_eq!(again.len(), 1, "the expired lease went back to the queue");
    assert_eq!(again[0].attempts, 3);
    // The first worker's lease is gone.
    let hb = q.heartbeat(id, leased[0].lease, None).await;
    assert_eq!(hb.unwrap_err().kind(), ErrorKind::LeaseLost);
    // That was the last attempt: when it expires too, the job is dead.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(q.lease("w3", 1).await.unwrap().is_empty());
    assert_eq!(q.get(id).await.unwrap().state, JobState::Dead);
}

#[tokio::test]
async fn retries_back_off_then_dead_letters_can_be_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |c| {
        c.default_retry.backoff = Duration::from_millis(200);
        c.default_retry.backoff_max = Duration::from_millis(200);
        c.default_retry.max_attempts = 2;
    });
    let id = q.enqueue(vec![spec("t", "a")]).await.unwrap()[0].id;
    let fail = || Outcome::Failed {
        error: "boom".into(),
        retryable: true,
    };
    let j = q.lease("w", 1).await.unwrap().remove(0);
    assert_eq!(
        q.complete(vec![done(&j, fail())]).await.unwrap()[0]
            .as_ref()
            .unwrap(),
        &JobState::Retrying
    );
    // Backoff: not leasable at once (jitter keeps it at >= 100 ms).
    assert!(q.lease("w", 1).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let j = q.lease("w", 1).await.unwrap().remove(0);
    assert_eq!(j.attempts, 2);
    q.complete(vec![done(&j, fail())]).await.unwrap();
    let dead = q
        .list(
            JobFilter {
                state: Some(JobState::Dead),
                ..JobFilter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom"));
    // Re-queue the dead letter; it runs again with fresh attempts.
    let r = q.restart(id).await.unwrap();
    assert_eq!((r.state, r.attempts), (JobState::Queued, 0));
    let j = q.lease("w", 1).await.unwrap().remove(0);
    q.complete(vec![done(&j, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(q.get(id).await.unwrap().state, JobState::Succeeded);
    // A permanent failure is not retried.
    let id2 = q.enqueue(vec![spec("t", "b")]).await.unwrap()[0].id;
    let j = q.lease("w", 1).await.unwrap().remove(0);
    let perm = Outcome::Failed {
        error: "bad config".into(),
        retryable: false,
    };
    q.complete(vec![done(&j, perm)]).await.unwrap();
    assert_eq!(q.get(id2).await.unwrap().state, JobState::Failed);
}

#[tokio::test]
async fn an_active_source_is_not_queued_twice_and_restart_needs_an_ended_job() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |_| {});
    let a = q.enqueue(vec![spec("t", "a")]).await.unwrap()[0];
    let b = q.enqueue(vec![spec("t", "a")]).await.unwrap()[0];
    assert!(!a.existing && b.existing && a.id == b.id);
    let err = q.restart(a.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // Cancelling a queued job is immediate; then it can be restarted.
    assert_eq!(
        q.cancel(a.id, "test").await.unwrap().state,
        JobState::Cancelled
    );
    assert!(q.lease("w", 1).await.unwrap().is_empty());
    assert_eq!(q.restart(a.id).await.unwrap().state, JobState::Queued);
    assert_eq!(q.lease("w", 1).await.unwrap()[0].id, a.id);
}

#[tokio::test]
async fn running_limits_per_tenant_and_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |c| {
        c.max_running_per_tenant = 2;
        c.max_running_per_source = 1;
    });
    let mut specs: Vec<_> = (0..5).map(|i| spec("t", &format!("s{i}"))).collect();
    // Same source, another kind: limited by the per-source limit.
    let mut other = spec("u", "s0");
    other.kind = "scan".into();
    specs.push(spec("u", "s0"));
    specs.push(other);
    q.enqueue(specs).await.unwrap();
    let leased = q.lease("w", 100).await.unwrap();
    let per_tenant = |t: &str| leased.iter().filter(|j| j.spec.tenant == t).count();
    assert_eq!(per_tenant("t"), 2, "tenant limit");
    assert_eq!(per_tenant("u"), 1, "source limit");
    // Finishing one frees a slot for that tenant only.
    let t_job = leased.iter().find(|j| j.spec.tenant == "t").unwrap();
    q.complete(vec![done(t_job, Outcome::Succeeded)])
        .await
        .unwrap();
    let more = q.lease("w", 100).await.unwrap();
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].spec.tenant, "t");
}

#[tokio::test]
async fn tenants_are_served_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |c| c.max_running_per_tenant = 1000);
    let heavy: Vec<_> = (0..200).map(|i| spec("heavy", &format!("s{i}"))).collect();
    q.enqueue(heavy).await.unwrap();
    let light: Vec<_> = (0..5).map(|i| spec("light", &format!("s{i}"))).collect();
    q.enqueue(light).await.unwrap();
    let mut order = Vec::new();
    while let Some(j) = q.lease("w", 1).await.unwrap().pop() {
        order.push(j.spec.tenant.clone());
        q.complete(vec![done(&j, Outcome::Succeeded)])
            .await
            .unwrap();
        if order.len() == 10 {
            break;
        }
    }
    let light_served = order.iter().filter(|t| *t == "light").count();
    assert_eq!(
        light_served, 5,
        "the light tenant's 5 jobs were among the first 10 leased despite 200 queued before them: {order:?}"
    );
}

#[tokio::test]
async fn events_are_numbered_and_a_stream_resumes_after_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |_| {});
    q.enqueue(vec![spec("t", "a"), spec("t", "b")])
        .await
        .unwrap();
    let all = q.events_after(0, 100).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].seq, all[1].seq), (1, 2));
    let queue: Arc<dyn JobQueue> = q.clone();
    let mut s = EventStream::resume(queue, 1);
    assert_eq!(s.next().await.unwrap().seq, 2, "replayed from the store");
    let j = q.lease("w", 1).await.unwrap().remove(0);
    let e = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.seq, 3, "then live");
    assert_eq!(e.job, j.id);
    assert!(matches!(
        e.kind,
        EventKind::State {
            to: JobState::Running,
            ..
        }
    ));
}

/// A runner whose behaviour is chosen per (job, attempt) by a seeded hash.
struct Chaos {
    runs: Mutex<HashMap<JobId, Vec<&'static str>>>,
}

fn pick(id: JobId, attempt: u32) -> u64 {
    let h = blake3::hash(format!("{id}/{attempt}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()) % 100
}

#[async_trait]
impl JobRunner for Chaos {
    async fn run(&self, job: &JobRecord, _ctx: &JobContext) -> Result<RunReport> {
        let roll = pick(job.id, job.attempts);
        let what = match roll {
            0..60 => "ok",
            60..80 => "retryable",
            80..88 => "permanent",
            _ => "panic",
        };
        self.runs
            .lock()
            .unwrap()
            .entry(job.id)
            .or_default()
            .push(what);
        tokio::time::sleep(Duration::from_millis(roll % 3)).await;
        match what {
            "ok" => Ok(RunReport::default()),
            "retryable" => Err(Error::new(ErrorKind::Transient, "flaky")),
            "permanent" => Err(Error::new(ErrorKind::InvalidInput, "bad")),
            _ => panic!("chaos"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_jobs_over_four_workers_with_random_failures_each_end_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |c| {
        c.lease_for = Duration::from_millis(300);
        c.max_running_per_tenant = 4;
    });
    let specs: Vec<_> = (0..1000)
        .map(|i| spec(&format!("t{}", i % 7), &format!("s{i}")))
        .collect();
    for chunk in specs.chunks(250) {
        q.enqueue(chunk.to_vec()).await.unwrap();
    }
    let chaos = Arc::new(Chaos {
        runs: Mutex::new(HashMap::new()),
    });
    let queue: Arc<dyn JobQueue> = q.clone();
    let pool = WorkerPool::start(
        queue.clone(),
        chaos.clone(),
        WorkerConfig {
            workers: 4,
            name: "w".into(),
            heartbeat_every: Duration::from_millis(100),
            poll_every: Duration::from_millis(20),
        },
    );
    // A worker that dies: it leases jobs and never reports or renews.
    let abandoned = AtomicU64::new(0);
    for _ in 0..5 {
        abandoned.fetch_add(
            q.lease("doomed", 3).await.unwrap().len() as u64,
            Ordering::Relaxed,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    loop {
        let c = q.counts().await.unwrap();
        let open = c[&JobState::Queued] + c[&JobState::Running] + c[&JobState::Retrying];
        if open == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "jobs stuck: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.shutdown().await;
    assert!(abandoned.load(Ordering::Relaxed) > 0);

    // Exactly one final transition per job, matching what the runner did.
    let mut finals: HashMap<JobId, Vec<JobState>> = HashMap::new();
    let mut after = 0;
    loop {
        let page = q.events_after(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page {
            if let EventKind::State { to, .. } = e.kind
                && to.is_final()
            {
                finals.entry(e.job).or_default().push(to);
            }
        }
    }
    assert_eq!(finals.len(), 1000, "every job ended");
    let runs = chaos.runs.lock().unwrap().clone();
    let mut by_state: HashMap<JobState, usize> = HashMap::new();
    for (id, ends) in &finals {
        assert_eq!(ends.len(), 1, "job {id} ended {} times", ends.len());
        let job = q.get(*id).await.unwrap();
        assert_eq!(job.state, ends[0]);
        *by_state.entry(job.state).or_default() += 1;
        let last_run = runs.get(id).and_then(|r| r.last()).copied();
        let expected = match last_run {
            Some("ok") => JobState::Succeeded,
            Some("permanent") => JobState::Failed,
            // Retryable failures and panics on the last attempt; or a job
            // whose only attempts were abandoned leases.
            _ => JobState::Dead,
        };
        assert_eq!(job.state, expected, "job {id}: runs {:?}", runs.get(id));
        assert!(job.attempts <= job.max_attempts);
    }
    assert!(
        by_state.len() >= 3,
        "the mix covers several ends: {by_state:?}"
    );
}

/// A runner that works until it is cancelled.
struct Forever;

#[async_trait]
impl JobRunner for Forever {
    async fn run(&self, _job: &JobRecord, ctx: &JobContext) -> Result<RunReport> {
        let mut p = Progress::default();
        loop {
            tokio::select! {
                _ = ctx.cancelled() => return Err(ctx.cancelled_error()),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {
                    p.items_seen += 1;
                    ctx.set_progress(p);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_takes_effect_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |_| {});
    let queue: Arc<dyn JobQueue> = q.clone();
    let pool = WorkerPool::start(
        queue.clone(),
        Arc::new(Forever),
        WorkerConfig {
            // Heartbeats far apart: the cancel must come through the event.
            heartbeat_every: Duration::from_secs(30),
            ..WorkerConfig::default()
        },
    );
    let id = q.enqueue(vec![spec("t", "a")]).await.unwrap()[0].id;
    let conductor = Conductor::new(queue.clone(), q.clone());
    while q.get(id).await.unwrap().state != JobState::Running {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    let r = conductor.cancel("t", id, "user asked").await.unwrap();
    assert!(r.cancel_requested);
    let end = tokio::time::timeout(Duration::from_secs(5), conductor.wait("t", id))
        .await
        .unwrap()
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(end.state, JobState::Cancelled);
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    assert!(end.progress.items_seen > 0, "progress was kept");
    // Another tenant cannot see or cancel it.
    assert_eq!(
        conductor.cancel("other", id, "x").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    pool.shutdown().await;
}
