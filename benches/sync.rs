//! Sync benchmark: the redb job queue and a small-file sync.
//!
//! `cargo bench -p asheville-benches --bench sync`
//!
//! Prints a markdown table:
//! - queue throughput: enqueue, lease and ack of `ASHEVILLE_BENCH_JOBS`
//!   (default 20,000) jobs in batches of 100 (one durable transaction per
//!   batch), and the same with one job per transaction;
//! - a sync of 10,000 files of 1–16 KiB (half text, half random) from a
//!   local directory into an `rs(2,1)` repository over 3 local backends,
//!   through the queue and a worker pool, and an unchanged re-sync.
//!
//! Everything is on the disk of `TMPDIR` with fsync on (the queue's commits
//! and the backends' writes), as a user would run it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use asheville_benches::{random_data, text_data};
use asheville_storage::{RepoConfig, Repository, TenantKey};
use asheville_sync::{
    Completion, Conductor, JobQueue, JobSpec, JobState, Outcome, Progress, QueueConfig, RedbQueue,
    SourceKind, SourceSpec, SyncOptions, SyncRunner, WorkerConfig, WorkerPool,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

async fn queue_round(n: usize, batch: usize) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = RedbQueue::open(
        &dir.path().join("q.redb"),
        QueueConfig {
            max_running_per_tenant: u32::MAX,
            ..QueueConfig::default()
        },
    )
    .expect("queue");
    let specs: Vec<_> = (0..n)
        .map(|i| JobSpec::sync(&format!("t{}", i % 8), "u", &format!("s{i}")))
        .collect();
    let t = Instant::now();
    for c in specs.chunks(batch) {
        q.enqueue(c.to_vec()).await.expect("enqueue");
    }
    let enq = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut leased = Vec::with_capacity(n);
    loop {
        let got = q.lease("w", batch).await.expect("lease");
        if got.is_empty() {
            break;
        }
        leased.extend(got);
    }
    let lease = t.elapsed().as_secs_f64();
    assert_eq!(leased.len(), n);
    let t = Instant::now();
    for c in leased.chunks(batch) {
        let done = c
            .iter()
            .map(|j| Completion {
                id: j.id,
                lease: j.lease,
                outcome: Outcome::Succeeded,
                progress: Progress::default(),
                item_errors: vec![],
            })
            .collect();
        for r in q.complete(done).await.expect("complete") {
            assert_eq!(r.expect("acked"), JobState::Succeeded);
        }
    }
    let ack = t.elapsed().as_secs_f64();
    (enq, lease, ack)
}

fn make_files(root: &std::path::Path, n: usize) -> u64 {
    let mut x: u64 = 0x853c_49e6_748f_ea9b;
    let mut bytes = 0;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1024 + (x % (15 * 1024)) as usize;
        let data = if i % 2 == 0 {
            text_data(len, x)
        } else {
            random_data(len, x)
        };
        let p = root.join(format!("d{:02}/f{i:05}", i % 50));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, &data).expect("write");
        bytes += len as u64;
    }
    bytes
}

async fn small_file_sync(n: usize) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let bytes = make_files(&src, n);
    let mut c = RepoConfig::local(dir.path().join("repo"), 3, "rs(2,1)".parse().expect("rs"));
    c.kdf = asheville_core::KdfParams::INSECURE_FAST_FOR_TESTS;
    std::fs::create_dir_all(dir.path().join("repo")).expect("mkdir");
    let repo = Repository::create(&dir.path().join("repo/catalog.redb"), c)
        .await
        .expect("repo");
    let t = repo
        .create_tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .expect("tenant");
    let q = Arc::new(
        RedbQueue::open(&dir.path().join("sync.redb"), QueueConfig::default()).expect("q"),
    );
    let runner = Arc::new(SyncRunner::new(q.clone(), SyncOptions::default()));
    runner.add_tenant(t);
    let pool = WorkerPool::start(q.clone(), runner, WorkerConfig::default());
    let conductor = Conductor::new(q.clone(), q.clone());
    conductor
        .add_source(SourceSpec::new(
            "acme",
            "u",
            "files",
            SourceKind::LocalDir { path: src.clone() },
        ))
        .await
        .expect("source");
    let mut secs = Vec::new();
    for round in 0..2 {
        let start = Instant::now();
        let job = conductor.create_sync("acme", "u", &[]).await.expect("sync")[0].1;
        let done = conductor.wait("acme", job.id).await.expect("wait");
        secs.push(start.elapsed().as_secs_f64());
        assert_eq!(done.state, JobState::Succeeded);
        let expected = if round == 0 { n as u64 } else { 0 };
        assert_eq!(done.progress.items_stored, expected);
    }
    pool.shutdown().await;
    let _ = q.counts().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    (secs[0], secs[1], bytes)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let n = env_usize("ASHEVILLE_BENCH_JOBS", 20_000);
    let files = env_usize("ASHEVILLE_BENCH_FILES", 10_000);
    rt.block_on(async {
        println!("| measurement | count | seconds | per second |");
        println!("|---|---:|---:|---:|");
        let (e, l, a) = queue_round(n, 100).await;
        let row = |what: &str, count: usize, s: f64| {
            println!("| {what} | {count} | {s:.3} | {:.0} |", count as f64 / s);
        };
        row("enqueue, batches of 100", n, e);
        row("lease, batches of 100", n, l);
        row("ack, batches of 100", n, a);
        row("enqueue + lease + ack, batches of 100", n, e + l + a);
        let single = (n / 20).max(100);
        let (e, l, a) = queue_round(single, 1).await;
        row(
            "enqueue + lease + ack, one job per commit",
            single,
            e + l + a,
        );
        let (first, again, bytes) = small_file_sync(files).await;
        row(
            &format!("sync of small files ({:.0} MB), first", bytes as f64 / 1e6),
            files,
            first,
        );
        row("sync of small files, unchanged", files, again);
    });
}
