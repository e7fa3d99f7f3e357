//! Integration tests of asheville-sync: the queue, workers, scheduler and
//! real syncs into a real repository.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod queue;
// The storage crate's loopback S3 server, shared rather than copied.
#[path = "../../../asheville-storage/tests/it/s3server.rs"]
mod s3server;
mod sync;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use asheville_storage::{RepoConfig, Repository, Tenant, TenantKey};
use asheville_sync::{QueueConfig, RedbQueue, RetryPolicy};

/// A queue with short leases and fast retries.
pub fn fast_queue(dir: &Path, tweak: impl FnOnce(&mut QueueConfig)) -> Arc<RedbQueue> {
    let mut cfg = QueueConfig {
        lease_for: Duration::from_millis(500),
        default_retry: RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
        },
        ..QueueConfig::default()
    };
    tweak(&mut cfg);
    Arc::new(RedbQueue::open(&dir.join("queue.redb"), cfg).unwrap())
}

/// A repository with 3 local backends, rs(2,1), and tenant `acme` with a raw key.
pub async fn repo(dir: &Path) -> (Repository, Tenant) {
    let mut c = RepoConfig::local(dir.join("repo"), 3, "rs(2,1)".parse().unwrap());
    c.chunker = asheville_core::ChunkerConfig::new(16 << 10, 64 << 10, 256 << 10).unwrap();
    c.pack_size = 1 << 20;
    std::fs::create_dir_all(dir.join("repo")).unwrap();
    let repo = Repository::create(&dir.join("repo/catalog.redb"), c)
        .await
        .unwrap();
    let key = asheville_core::keys::MasterKey::generate().unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Raw(key))
        .await
        .unwrap();
    (repo, t)
}

/// Asserts that every file under `local` is stored under `remote` with the
/// same bytes, and that `remote` holds nothing else.
pub async fn assert_mirrors(t: &Tenant, local: &Path, remote: &str) {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                walk(root, &key, out);
            } else {
                out.push(key);
            }
        }
    }
    let mut files = Vec::new();
    walk(local, "", &mut files);
    files.sort();
    for f in &files {
        let mut got = Vec::new();
        t.get(&format!("{remote}/{f}"), &mut got).await.unwrap();
        assert_eq!(got, std::fs::read(local.join(f)).unwrap(), "{f}");
    }
    let prefix = remote.trim_start_matches('/').to_owned() + "/";
    let stored: Vec<String> = t
        .all_paths(None, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|p| t.stat(p).is_ok())
        .filter_map(|p| p.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    assert_eq!(
        stored, files,
        "the repository holds exactly the source's files"
    );
}
