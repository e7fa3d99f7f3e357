//! Syncs into a real repository: local directories, object_store buckets,
//! failing items, unknown payload versions, the scheduler.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use asheville_sync::*;
use async_trait::async_trait;
use object_store::{ObjectStoreExt, PutPayload, path::Path as OsPath};

use crate::{assert_mirrors, fast_queue, repo};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    tenant: asheville_storage::Tenant,
    queue: Arc<RedbQueue>,
    meters: Arc<asheville_storage::metering::RedbMeterStore>,
    runner: Arc<SyncRunner>,
    conductor: Conductor,
    pool: Option<WorkerPool>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (_repo, tenant) = repo(&root).await;
    let meters =
        Arc::new(asheville_storage::metering::RedbMeterStore::open(&root.join("m.redb")).unwrap());
    let tenant = tenant.with_meter(meters.clone());
    let queue = fast_queue(&root, |_| {});
    let runner = Arc::new(
        SyncRunner::new(
            queue.clone(),
            SyncOptions {
                batch_files: 16,
                item_backoff: Duration::from_millis(5),
                ..SyncOptions::default()
            },
        )
        .with_meter(meters.clone()),
    );
    runner.add_tenant(tenant.clone());
    let pool = WorkerPool::start(
        queue.clone(),
        runner.clone(),
        WorkerConfig {
            workers: 2,
            poll_every: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
    );
    let conductor = Conductor::new(queue.clone(), queue.clone());
    Fixture {
        _dir: dir,
        root,
        tenant,
        queue,
        meters,
        runner,
        conductor,
        pool: Some(pool),
    }
}

impl Fixture {
    async fn sync(&self, user: &str, source: &str) -> JobRecord {
        let q = self
            .conductor
            .create_sync("acme", user, &[source])
            .await
            .unwrap();
        let job = tokio::time::timeout(
            Duration::from_secs(60),
            self.conductor.wait("acme", q[0].1.id),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        job
    }

    async fn stop(mut self) {
        if let Some(p) = self.pool.take() {
            p.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_sync_moves_only_what_changed() {
    let f = fixture().await;
    let src = f.root.join("src");
    for i in 0..40 {
        write(
            &src,
            &format!("d{}/f{i}.bin", i % 4),
            &data(i, 1000 + i as usize * 97),
        );
    }
    // One item large enough to be streamed.
    write(&src, "big.bin", &data(99, 3 << 20));
    f.conductor
        .add_source(SourceSpec::new(
            "acme",
            "alice",
            "docs",
            SourceKind::LocalDir { path: src.clone() },
        ))
        .await
        .unwrap();
    let first = f.sync("alice", "docs").await;
    assert_eq!(first.progress.items_seen, 41);
    assert_eq!(first.progress.items_stored, 41);
    assert_mirrors(&f.tenant, &src, "/sync/alice/docs").await;

    // Nothing changed: nothing moves.
    let idle = f.sync("alice", "docs").await;
    assert_eq!(idle.progress.items_seen, 0);
    assert_eq!(idle.progress.items_stored, 0);

    // Change two, add one, delete one.
    std::thread::sleep(Duration::from_millis(20));
    write(&src, "d1/f1.bin", b"changed");
    write(&src, "d2/f2.bin", &data(1234, 5000));
    write(&src, "new/deep/n.txt", b"new file");
    std::fs::remove_file(src.join("d3/f3.bin")).unwrap();
    let next = f.sync("alice", "docs").await;
    assert_eq!(next.progress.items_seen, 4);
    assert_eq!(next.progress.items_stored, 3);
    assert_eq!(next.progress.items_deleted, 1);
    assert_mirrors(&f.tenant, &src, "/sync/alice/docs").await;
    assert_eq!(
        f.tenant
            .versions("/sync/alice/docs/d0/f0.bin")
            .unwrap()
            .len(),
        1,
        "unchanged files got no new version"
    );
    // Usage: items and bytes per user and source, and the bytes ingested.
    use asheville_core::metering::{BYTES_INGESTED, DAY_NS, Granularity, SYNC_BYTES, SYNC_ITEMS};
    use asheville_storage::metering::{MeterStore, UsageQuery};
    let now = asheville_sync::job::now_ns();
    let day = Granularity::Day.start(now);
    let q = |meter: &str, dims: &str| UsageQuery {
        tenant: "acme".into(),
        meter: meter.into(),
        granularity: Granularity::Day,
        from_ns: day,
        to_ns: day + DAY_NS,
        dims: dims.into(),
        after_ns: None,
        limit: 10,
    };
    let items = f.meters.query(&q(SYNC_ITEMS, "user=alice")).unwrap();
    assert_eq!(items[0].value, 44, "41 + 3 items stored");
    let bytes = f.meters.query(&q(SYNC_BYTES, "source=docs")).unwrap()[0].value;
    let ingested = f.meters.query(&q(BYTES_INGESTED, "")).unwrap()[0].value;
    assert_eq!(bytes, ingested, "everything ingested came through the sync");
    // Status per source names the newest job.
    let st = f.conductor.status("acme", "alice").await.unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].last_job.as_ref().unwrap().id, next.id);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_buckets_in_memory_and_on_disk() {
    let f = fixture().await;
    // In memory, registered at run time.
    let mem = Arc::new(object_store::memory::InMemory::new());
    for i in 0..10u64 {
        mem.put(
            &OsPath::from(format!("inbox/m{i}.eml")),
            PutPayload::from(data(i, 3000)),
        )
        .await
        .unwrap();
    }
    mem.put(
        &OsPath::from("other/x"),
        PutPayload::from_static(b"not synced"),
    )
    .await
    .unwrap();
    f.runner.register_source(
        "mail",
        Arc::new(ObjectStoreSource::new(mem.clone(), Some("inbox"))),
    );
    f.conductor
        .add_source(SourceSpec::new(
            "acme",
            "bob",
            "mail",
            SourceKind::Registered { id: "mail".into() },
        ))
        .await
        .unwrap();
    let j = f.sync("bob", "mail").await;
    assert_eq!(j.progress.items_stored, 10);
    let mut got = Vec::new();
    f.tenant
        .get("/sync/bob/mail/m3.eml", &mut got)
        .await
        .unwrap();
    assert_eq!(got, data(3, 3000));
    assert!(f.tenant.stat("/sync/bob/mail/x").is_err());
    mem.delete(&OsPath::from("inbox/m3.eml")).await.unwrap();
    let j = f.sync("bob", "mail").await;
    assert_eq!((j.progress.items_seen, j.progress.items_deleted), (1, 1));
    assert!(f.tenant.stat("/sync/bob/mail/m3.eml").is_err());

    // A local directory served as a bucket, described by config only.
    let bucket = f.root.join("bucket");
    write(&bucket, "a/1.txt", b"one");
    write(&bucket, "a/2.txt", b"two");
    let mut spec = SourceSpec::new(
        "acme",
        "bob",
        "files",
        SourceKind::Bucket {
            store: asheville_storage::BackendKind::Local {
                path: bucket.clone(),
                fsync: false,
            },
            prefix: None,
        },
    );
    spec.target = Some("/mirror".into());
    f.conductor.add_source(spec).await.unwrap();
    f.sync("bob", "files").await;
    assert_mirrors(&f.tenant, &bucket, "/mirror").await;
    f.stop().await;
}

/// A source that fails to read one item while `broken` is set.
struct Flaky {
    inner: LocalDirSource,
    broken: AtomicBool,
}

#[async_trait]
impl Source for Flaky {
    async fn changes(&self, since: &Cursor) -> Result<Vec<Change>> {
        self.inner.changes(since).await
    }
    async fn fetch(&self, key: &str, stamp: &Stamp) -> Result<Fetched> {
        if key == "bad.txt" && self.broken.load(Ordering::Relaxed) {
            return Err(Error::new(
                ErrorKind::Source,
                "the source is down for this item",
            ));
        }
        self.inner.fetch(key, stamp).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_item_is_reported_and_taken_again_next_time() {
    let f = fixture().await;
    let src = f.root.join("src");
    write(&src, "good.txt", b"good");
    write(&src, "bad.txt", b"bad");
    let flaky = Arc::new(Flaky {
        inner: LocalDirSource::new(src.clone()),
        broken: AtomicBool::new(true),
    });
    f.runner.register_source("flaky", flaky.clone());
    f.conductor
        .add_source(SourceSpec::new(
            "acme",
            "c",
            "s",
            SourceKind::Registered { id: "flaky".into() },
        ))
        .await
        .unwrap();
    let j = f.sync("c", "s").await;
    assert_eq!(j.progress.items_stored, 1);
    assert_eq!(j.progress.errors, 1);
    assert_eq!(j.item_errors.len(), 1);
    assert_eq!(j.item_errors[0].key, "bad.txt");
    assert!(f.tenant.stat("/sync/c/s/bad.txt").is_err());
    flaky.broken.store(false, Ordering::Relaxed);
    let j = f.sync("c", "s").await;
    assert_eq!((j.progress.items_seen, j.progress.items_stored), (1, 1));
    assert_mirrors(&f.tenant, &src, "/sync/c/s").await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_version_the_worker_does_not_know_fails_clearly() {
    let f = fixture().await;
    f.conductor
        .add_source(SourceSpec::new(
            "acme",
            "d",
            "s",
            SourceKind::LocalDir {
                path: f.root.clone(),
            },
        ))
        .await
        .unwrap();
    let mut spec = JobSpec::sync("acme", "d", "s");
    spec.payload = Payload {
        v: 2,
        body: serde_json::json!({"new": true}),
    };
    let id = f.queue.enqueue(vec![spec]).await.unwrap()[0].id;
    let j = f.conductor.wait("acme", id).await.unwrap();
    assert_eq!(j.state, JobState::Failed, "not retried: {j:?}");
    assert_eq!(j.attempts, 1);
    let err = j.last_error.unwrap();
    assert!(
        err.contains("version 2") && err.contains("version 1"),
        "{err}"
    );
    f.stop().await;
}

#[tokio::test]
async fn the_scheduler_queues_due_syncs_and_never_doubles_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let q = fast_queue(dir.path(), |_| {});
    let mut spec = SourceSpec::new(
        "acme",
        "e",
        "s",
        SourceKind::LocalDir {
            path: dir.path().to_path_buf(),
        },
    );
    spec.every = Some(Duration::from_secs(60));
    q.put_source(spec).await.unwrap();
    let mut manual = SourceSpec::new(
        "acme",
        "e",
        "manual",
        SourceKind::LocalDir {
            path: dir.path().to_path_buf(),
        },
    );
    manual.every = None;
    q.put_source(manual).await.unwrap();
    let s = Scheduler::new(q.clone(), q.clone());
    let min = 60_000_000_000i64;
    let t0 = 1_000 * min;
    assert_eq!(
        s.tick(t0).await.unwrap().queued,
        1,
        "only the scheduled source"
    );
    assert_eq!(s.tick(t0 + min / 2).await.unwrap().queued, 0, "not due yet");
    // The sync runs longer than its period: the next one is not doubled.
    let running = q.lease("w", 10).await.unwrap();
    assert_eq!(running.len(), 1);
    let r = s.tick(t0 + 2 * min).await.unwrap();
    assert_eq!((r.queued, r.coalesced), (0, 1));
    assert!(q.lease("w", 10).await.unwrap().is_empty());
    q.complete(vec![Completion {
        id: running[0].id,
        lease: running[0].lease,
        outcome: Outcome::Succeeded,
        progress: Progress::default(),
        item_errors: vec![],
    }])
    .await
    .unwrap();
    // As soon as it ended, the overdue sync is queued.
    assert_eq!(s.tick(t0 + 2 * min + 1).await.unwrap().queued, 1);
    assert_eq!(s.tick(t0 + 2 * min + 2).await.unwrap().queued, 0);
}

#[test]
fn periods_parse() {
    use asheville_sync::source::parse_period;
    assert_eq!(parse_period("15m").unwrap(), Duration::from_secs(900));
    assert_eq!(parse_period("2h").unwrap(), Duration::from_secs(7200));
    assert_eq!(parse_period("45").unwrap(), Duration::from_secs(45));
    assert!(parse_period("5 parsecs").is_err());
    assert!(parse_period("").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_bucket_on_a_real_s3_server() {
    let server = crate::s3server::start().await;
    let kind = asheville_storage::BackendKind::S3(asheville_storage::S3Config {
        bucket: "user-bucket".into(),
        endpoint: Some(format!("http://{}", server.addr)),
        region: "us-east-1".into(),
        access_key_id: crate::s3server::KEY.into(),
        secret_access_key: crate::s3server::SECRET.into(),
        allow_http: true,
        prefix: None,
        max_retries: 0,
    });
    let store = asheville_storage::ObjectStoreBackend::open("s3", &kind)
        .unwrap()
        .object_store();
    for i in 0..6u64 {
        let len = if i == 0 { 3 << 20 } else { 2000 + i as usize };
        store
            .put(
                &OsPath::from(format!("photos/2026/p{i}.jpg")),
                PutPayload::from(data(i, len)),
            )
            .await
            .unwrap();
    }
    let f = fixture().await;
    f.conductor
        .add_source(SourceSpec::new(
            "acme",
            "s3user",
            "photos",
            SourceKind::Bucket {
                store: kind,
                prefix: Some("photos".into()),
            },
        ))
        .await
        .unwrap();
    let j = f.sync("s3user", "photos").await;
    assert_eq!(j.progress.items_stored, 6);
    for i in 0..6u64 {
        let len = if i == 0 { 3 << 20 } else { 2000 + i as usize };
        let mut got = Vec::new();
        f.tenant
            .get(&format!("/sync/s3user/photos/2026/p{i}.jpg"), &mut got)
            .await
            .unwrap();
        assert_eq!(got, data(i, len), "p{i}");
    }
    // Replace one object: its new ETag makes it move again, alone.
    store
        .put(
            &OsPath::from("photos/2026/p2.jpg"),
            PutPayload::from_static(b"v2"),
        )
        .await
        .unwrap();
    let j = f.sync("s3user", "photos").await;
    assert_eq!((j.progress.items_seen, j.progress.items_stored), (1, 1));
    f.stop().await;
}
