//! Backend loss and bitrot: reads survive, `check` finds every problem,
//! `repair` restores full redundancy.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use asheville_core::MasterKey;
use asheville_storage::maintenance::ProblemKind;
use asheville_storage::tree::NoProgress;
use asheville_storage::{FileMeta, Repository, Tenant, TenantKey};

use crate::repo::{get, random, small_config, temp_repo};

async fn filled(dir: &Path) -> (Repository, Tenant, Vec<(String, Vec<u8>)>) {
    let repo = Repository::create(&dir.join("c.redb"), small_config(dir, 6, "rs(4,2)"))
        .await
        .unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Raw(MasterKey::generate().unwrap()))
        .await
        .unwrap();
    let mut files = Vec::new();
    let mut batch = t.batch();
    for i in 0..12 {
        let data = random(150_000 + i * 97_000, 100 + i as u64);
        let path = format!("f{i:02}");
        batch
            .add(&path, &data[..], FileMeta::default())
            .await
            .unwrap();
        files.push((path, data));
    }
    batch.commit().await.unwrap();
    (repo, t, files)
}

async fn all_read_back(t: &Tenant, files: &[(String, Vec<u8>)]) {
    for (p, d) in files {
        assert_eq!(&get(t, p).await, d, "{p}");
    }
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    for i in 0..6 {
        walk(&dir.join(format!("backend-{i}/packs")), &mut out);
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_two_whole_backends_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, t, files) = filled(dir.path()).await;
    let clean = repo.check(true, &NoProgress).await.unwrap();
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    assert!(clean.packs >= 4, "several packs ({})", clean.packs);

    let lost: Vec<PathBuf> = shard_files(dir.path())
        .into_iter()
        .filter(|p| {
            p.starts_with(dir.path().join("backend-1"))
                || p.starts_with(dir.path().join("backend-4"))
        })
        .collect();
    assert!(!lost.is_empty());
    std::fs::remove_dir_all(dir.path().join("backend-1")).unwrap();
    std::fs::remove_dir_all(dir.path().join("backend-4")).unwrap();

    all_read_back(&t, &files).await;
    let report = repo.check(false, &NoProgress).await.unwrap();
    let missing: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::MissingShard)
        .collect();
    assert_eq!(missing.len(), lost.len(), "every lost shard is reported");
    assert!(
        missing
            .iter()
            .all(|p| matches!(p.backend.as_deref(), Some("backend-1" | "backend-4")))
    );
    assert!(!report.is_healthy());

    let repaired = repo.repair(&NoProgress).await.unwrap();
    assert!(repaired.failed.is_empty(), "{:?}", repaired.failed);
    assert_eq!(repaired.shards_rewritten as usize, lost.len());
    let after = repo.check(true, &NoProgress).await.unwrap();
    assert!(after.problems.is_empty(), "{:?}", after.problems);
    // Repair is idempotent.
    assert_eq!(repo.repair(&NoProgress).await.unwrap().shards_rewritten, 0);
    all_read_back(&t, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrot_is_found_by_check_and_fixed_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, t, files) = filled(dir.path()).await;
    // Flip one random byte in random shard files, at most two per pack
    // (rs(4,2) tolerates two).
    let mut rng: u64 = 7;
    let mut per_pack: HashMap<String, usize> = HashMap::new();
    let mut flipped: HashSet<String> = HashSet::new();
    let shards = shard_files(dir.path());
    for _ in 0..40 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let f = &shards[(rng % shards.len() as u64) as usize];
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let pack = name.split('.').next().unwrap().to_owned();
        let key = format!("packs/{}/{name}", &pack[..2]);
        if flipped.contains(&key) || per_pack.get(&pack).copied().unwrap_or(0) >= 2 {
            continue;
        }
        let mut bytes = std::fs::read(f).unwrap();
        let pos = ((rng >> 8) % bytes.len() as u64) as usize;
        bytes[pos] ^= 1 << (rng % 8);
        std::fs::write(f, &bytes).unwrap();
        *per_pack.entry(pack).or_default() += 1;
        flipped.insert(key);
    }
    assert!(flipped.len() >= 10, "{} flips", flipped.len());

    all_read_back(&t, &files).await;
    let report = repo.check(true, &NoProgress).await.unwrap();
    let found: HashSet<String> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::CorruptShard)
        .map(|p| p.key.clone().unwrap())
        .collect();
    assert_eq!(
        found, flipped,
        "check --read-data finds exactly the flipped shards"
    );
    eprintln!(
        "bitrot: {} shards corrupted, {} found by check",
        flipped.len(),
        found.len()
    );

    let repaired = repo.repair(&NoProgress).await.unwrap();
    assert_eq!(repaired.shards_rewritten as usize, flipped.len());
    assert!(
        repo.check(true, &NoProgress)
            .await
            .unwrap()
            .problems
            .is_empty()
    );
    all_read_back(&t, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_and_unreadable_packs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _t, _files) = filled(dir.path()).await;
    // An object left by an interrupted upload.
    asheville_storage::Backend::put(
        repo.backends()[0].as_ref(),
        "packs/00/orphan.0",
        vec![bytes::Bytes::from_static(b"x")],
    )
    .await
    .unwrap();
    let r = repo.check(false, &NoProgress).await.unwrap();
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].kind, ProblemKind::OrphanObject);
    assert!(r.is_healthy(), "an orphan is not data loss");
    // Three backends gone: some pack loses three shards and is unreadable.
    for i in [0, 2, 5] {
        std::fs::remove_dir_all(dir.path().join(format!("backend-{i}"))).unwrap();
    }
    let r = repo.check(false, &NoProgress).await.unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::UnreadablePack)
    );
    let repaired = repo.repair(&NoProgress).await.unwrap();
    assert!(
        !repaired.failed.is_empty(),
        "repair says what it could not fix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_catalog_is_rebuilt_from_the_backends() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("c.redb");
    let config = small_config(dir.path(), 6, "rs(4,2)");
    let raw = MasterKey::generate().unwrap();
    let (expected_a, expected_b, versions_before);
    {
        let repo = Repository::create(&cat, config.clone()).await.unwrap();
        let a = repo
            .create_tenant("alice", TenantKey::Passphrase("pa".into()))
            .await
            .unwrap();
        let b = repo
            .create_tenant("bob", TenantKey::Raw(raw.clone()))
            .await
            .unwrap();
        let mut batch = a.batch();
        for i in 0..20 {
            batch
                .add(
                    &format!("docs/{i:02}"),
                    &random(50_000 + i * 31_000, i as u64)[..],
                    FileMeta {
                        mtime_ns: i as i64,
                        mode: 0o640,
                    },
                )
                .await
                .unwrap();
        }
        batch.commit().await.unwrap();
        a.put("docs/05", &b"second version"[..], FileMeta::default())
            .await
            .unwrap();
        a.delete("docs/07").await.unwrap();
        b.put("bob/file", &random(700_000, 99)[..], FileMeta::default())
            .await
            .unwrap();
        expected_a = snapshot(&a).await;
        expected_b = snapshot(&b).await;
        versions_before = a.versions("docs/05").unwrap();
    }
    std::fs::remove_file(&cat).unwrap();

    // Only bob's key: alice's packs are skipped, not lost.
    let (_, partial) = asheville_storage::rebuild::rebuild_catalog(
        &dir.path().join("partial.redb"),
        config.clone(),
        vec![("bob".into(), TenantKey::Raw(raw.clone()))],
    )
    .await
    .unwrap();
    assert!(
        partial
            .skipped
            .iter()
            .all(|(_, why)| why.contains("tenant not given")),
        "{:?}",
        partial.skipped
    );
    assert!(!partial.skipped.is_empty());

    let (repo, report) = asheville_storage::rebuild::rebuild_catalog(
        &cat,
        config,
        vec![
            ("alice".into(), TenantKey::Passphrase("pa".into())),
            ("bob".into(), TenantKey::Raw(raw.clone())),
        ],
    )
    .await
    .unwrap();
    eprintln!("rebuild: {report:?}");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.packs_recorded, report.packs_found);
    let a = repo
        .tenant("alice", TenantKey::Passphrase("pa".into()))
        .await
        .unwrap();
    let b = repo.tenant("bob", TenantKey::Raw(raw)).await.unwrap();
    assert_eq!(
        snapshot(&a).await,
        expected_a,
        "every file of alice reads back identically"
    );
    assert_eq!(snapshot(&b).await, expected_b);
    assert_eq!(
        a.versions("docs/05").unwrap(),
        versions_before,
        "version numbers and commit times survive"
    );
    assert_eq!(
        a.stat("docs/07").unwrap_err().kind(),
        asheville_storage::ErrorKind::NotFound,
        "deletes replayed"
    );
    assert!(
        repo.check(true, &NoProgress)
            .await
            .unwrap()
            .problems
            .is_empty()
    );
    // Rebuilding over an existing catalog is refused: it deletes nothing.
    let e = asheville_storage::rebuild::rebuild_catalog(
        &cat,
        small_config(dir.path(), 6, "rs(4,2)"),
        vec![],
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), asheville_storage::ErrorKind::AlreadyExists);
}

/// Every live file: path, metadata and content.
async fn snapshot(t: &Tenant) -> Vec<(String, u64, FileMeta, Vec<u8>)> {
    let mut out = Vec::new();
    for e in t.list("/", usize::MAX, None, 10_000).unwrap().entries {
        if let asheville_storage::Entry::File {
            path, size, meta, ..
        } = e
        {
            let data = get(t, &path).await;
            out.push((path, size, meta, data));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_forgets_old_versions_and_a_rebuild_agrees() {
    use asheville_storage::Retention;
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("c.redb");
    let config = small_config(dir.path(), 3, "rs(2,1)");
    let repo = Repository::create(&cat, config.clone()).await.unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    let bodies: Vec<Vec<u8>> = (0..5).map(|i| random(100_000, 500 + i)).collect();
    for b in &bodies {
        t.put("keep/file", &b[..], FileMeta::default())
            .await
            .unwrap();
    }
    for b in &bodies[..3] {
        t.put("gone/file", &b[..], FileMeta::default())
            .await
            .unwrap();
    }
    t.delete("gone/file").await.unwrap();
    t.put("other/x", &b"x"[..], FileMeta::default())
        .await
        .unwrap();
    let first_chunk = t.versions("keep/file").unwrap()[0].chunks[0].id;
    assert_eq!(
        repo.catalog().refcount("acme", &first_chunk).unwrap(),
        2,
        "v1 of both files"
    );

    let e = t
        .apply_retention("/", Retention::default())
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        asheville_storage::ErrorKind::InvalidInput,
        "an empty rule is refused"
    );
    // Keep-within of an hour keeps everything.
    let r = t
        .apply_retention(
            "/",
            Retention {
                keep_last: None,
                keep_within_ns: Some(3_600_000_000_000),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.forgotten, 0);

    let r = t
        .apply_retention(
            "keep",
            Retention {
                keep_last: Some(2),
                keep_within_ns: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((r.paths, r.forgotten), (1, 3));
    let left: Vec<u64> = t
        .versions("keep/file")
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(left, [4, 5]);
    assert_eq!(
        repo.catalog().refcount("acme", &first_chunk).unwrap(),
        1,
        "only gone/file v1 still refers to it"
    );
    let mut out = Vec::new();
    t.get_version("keep/file", 4, &mut out).await.unwrap();
    assert_eq!(out, bodies[3]);
    assert_eq!(
        t.get_version("keep/file", 1, &mut Vec::new())
            .await
            .unwrap_err()
            .kind(),
        asheville_storage::ErrorKind::NotFound
    );

    // A deleted file may lose every version; then it is gone entirely.
    let r = t
        .apply_retention(
            "gone",
            Retention {
                keep_last: Some(0),
                keep_within_ns: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.forgotten, 3);
    assert!(t.versions("gone/file").unwrap().is_empty());
    assert_eq!(
        repo.catalog().refcount("acme", &first_chunk).unwrap(),
        0,
        "nothing refers to it: gc may reclaim it"
    );
    // The latest version of a live file always stays.
    t.apply_retention(
        "/",
        Retention {
            keep_last: Some(0),
            keep_within_ns: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(t.versions("keep/file").unwrap().len(), 1);
    assert_eq!(get(&t, "keep/file").await, bodies[4]);
    let expected = (
        t.versions("keep/file").unwrap(),
        t.versions("other/x").unwrap(),
        t.versions("gone/file").unwrap(),
    );
    drop((t, repo));

    std::fs::remove_file(&cat).unwrap();
    let (repo, report) = asheville_storage::rebuild::rebuild_catalog(
        &cat,
        config,
        vec![("acme".into(), TenantKey::Passphrase("pw".into()))],
    )
    .await
    .unwrap();
    assert_eq!(report.forgotten, 7);
    let t = repo
        .tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    assert_eq!(
        (
            t.versions("keep/file").unwrap(),
            t.versions("other/x").unwrap(),
            t.versions("gone/file").unwrap()
        ),
        expected
    );
    assert_eq!(repo.catalog().refcount("acme", &first_chunk).unwrap(), 0);
}

fn pack_objects(dir: &Path) -> usize {
    shard_files(dir).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reclaims_dead_packs_after_the_grace_period_only() {
    use asheville_storage::{GcOptions, Retention};
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 6, "rs(4,2)", |_| {}).await;
    let keep = random(900_000, 1);
    let old = random(2_500_000, 2);
    t.put("keep", &keep[..], FileMeta::default()).await.unwrap();
    t.put("tmp", &old[..], FileMeta::default()).await.unwrap();
    let objects_before = pack_objects(dir.path());
    // A reader resolves `tmp` before it dies.
    let stale = t.stat("tmp").unwrap();
    t.delete("tmp").await.unwrap();
    t.apply_retention(
        "tmp",
        Retention {
            keep_last: Some(0),
            keep_within_ns: None,
        },
    )
    .await
    .unwrap();

    let long = GcOptions {
        grace_ns: 3_600_000_000_000,
        ..GcOptions::default()
    };
    let r = t.gc(long).await.unwrap();
    assert!(r.packs_condemned >= 2, "{r:?}");
    assert_eq!(r.packs_deleted, 0);
    // Within the grace period nothing is deleted: the stale reader still reads.
    assert_eq!(t.gc(long).await.unwrap().packs_deleted, 0);
    assert_eq!(pack_objects(dir.path()), objects_before);
    let mut out = Vec::new();
    t.get_version("tmp", stale.version, &mut out)
        .await
        .unwrap_err(); // the version itself was forgotten...
    let ids: Vec<_> = stale.chunks.iter().map(|c| c.id).collect();
    for id in &ids {
        assert!(
            repo.catalog().blob("acme", id).unwrap().is_some(),
            "...but its chunks are still readable"
        );
    }
    // The same data written again during the condemned window is stored
    // anew (dedup ignores condemned packs), so the sweep cannot take it.
    t.put("again", &old[..], FileMeta::default()).await.unwrap();

    let r = t
        .gc(GcOptions {
            grace_ns: 0,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert!(r.packs_deleted >= 2 && r.objects_deleted >= 12, "{r:?}");
    assert_eq!(get(&t, "keep").await, keep);
    assert_eq!(get(&t, "again").await, old);
    let c = repo.check(true, &NoProgress).await.unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    eprintln!(
        "gc: {r:?}, shard objects {} -> {}",
        objects_before,
        pack_objects(dir.path())
    );

    // A catalog rebuilt after gc does not try to recreate versions whose
    // chunks gc reclaimed (they were forgotten first).
    let config = repo.config().clone();
    drop((t, repo));
    std::fs::remove_file(dir.path().join("c.redb")).unwrap();
    let (repo, report) = asheville_storage::rebuild::rebuild_catalog(
        &dir.path().join("c.redb"),
        config,
        vec![("acme".into(), TenantKey::Passphrase("pw".into()))],
    )
    .await
    .unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");
    let t = repo
        .tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    assert_eq!(get(&t, "keep").await, keep);
    assert_eq!(get(&t, "again").await, old);
    assert!(t.versions("tmp").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_repacks_mostly_dead_packs_and_revives_packs_referenced_again() {
    use asheville_storage::{GcOptions, Retention};
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |c| c.pack_size = 4 << 20).await;
    // Ten files in one pack; nine die.
    let mut batch = t.batch();
    let bodies: Vec<Vec<u8>> = (0..10).map(|i| random(200_000, 40 + i)).collect();
    for (i, b) in bodies.iter().enumerate() {
        batch
            .add(&format!("f{i}"), &b[..], FileMeta::default())
            .await
            .unwrap();
    }
    batch.commit().await.unwrap();
    for i in 1..10 {
        t.delete(&format!("f{i}")).await.unwrap();
    }
    t.apply_retention(
        "/",
        Retention {
            keep_last: Some(0),
            keep_within_ns: None,
        },
    )
    .await
    .unwrap();
    let r = t
        .gc(GcOptions {
            grace_ns: 0,
            repack_below: 0.5,
        })
        .await
        .unwrap();
    assert_eq!(r.packs_repacked, 1, "{r:?}");
    assert!(r.blobs_moved >= 1);
    assert_eq!(
        get(&t, "f0").await,
        bodies[0],
        "moved blobs read from the new pack"
    );
    let r = t
        .gc(GcOptions {
            grace_ns: 0,
            repack_below: 0.5,
        })
        .await
        .unwrap();
    assert_eq!(r.packs_deleted, 1, "{r:?}");
    assert_eq!(get(&t, "f0").await, bodies[0]);
    assert!(
        repo.check(true, &NoProgress)
            .await
            .unwrap()
            .problems
            .is_empty()
    );

    // A pack condemned, then referenced again before the sweep, is kept.
    t.put("g", &random(300_000, 77)[..], FileMeta::default())
        .await
        .unwrap();
    t.delete("g").await.unwrap();
    t.apply_retention(
        "g",
        Retention {
            keep_last: Some(0),
            keep_within_ns: None,
        },
    )
    .await
    .unwrap();
    let blob = {
        let r = t
            .gc(GcOptions {
                grace_ns: 3_600_000_000_000,
                repack_below: 0.0,
            })
            .await
            .unwrap();
        assert_eq!(r.packs_condemned, 1);
        repo.catalog()
            .tenant_blobs("acme")
            .unwrap()
            .into_iter()
            .find(|(_, _, n)| *n == 0)
            .unwrap()
    };
    // A writer that checked the blob before it was condemned commits a
    // version referencing it (simulated at the catalog level).
    let path = asheville_storage::RepoPath::parse("late").unwrap();
    repo.catalog()
        .commit_versions(
            "acme",
            vec![asheville_storage::NewVersion {
                path,
                size: 0,
                meta: FileMeta::default(),
                chunks: vec![asheville_storage::ChunkRef { id: blob.0, len: 0 }],
                created_ns: 0,
                version: 0,
            }],
        )
        .unwrap();
    let r = t
        .gc(GcOptions {
            grace_ns: 0,
            repack_below: 0.0,
        })
        .await
        .unwrap();
    assert_eq!((r.packs_revived, r.packs_deleted), (1, 0), "{r:?}");
    assert!(repo.catalog().blob("acme", &blob.0).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_remove_and_add_backends_with_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    // Many small packs: pack ids are random, so the share of shards that
    // moves is a sample; ~65 packs keep it far from the bounds.
    let (repo, t) = temp_repo(dir.path(), 5, "rs(2,1)", |c| c.pack_size = 128 << 10).await;
    let config = repo.config().clone();
    let mut files = Vec::new();
    let mut batch = t.batch();
    for i in 0..30 {
        let data = random(100_000 + i * 13_000, 900 + i as u64);
        batch
            .add(&format!("f{i:02}"), &data[..], FileMeta::default())
            .await
            .unwrap();
        files.push((format!("f{i:02}"), data));
    }
    batch.commit().await.unwrap();
    let before = repo.check(false, &NoProgress).await.unwrap();
    assert!(before.problems.is_empty());
    let total_shards = before.shards;

    // Nothing changed: nothing moves.
    assert_eq!(repo.rebalance(&NoProgress).await.unwrap().shards_moved, 0);

    // Drain backend-2 (weight 0): its shards move, and only shards that must.
    let mut drained = config.backends.clone();
    drained[2].weight = 0.0;
    let repo = repo.update_backends(drained.clone()).await.unwrap();
    let r = repo.rebalance(&NoProgress).await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    let on_2 = shard_files(dir.path())
        .iter()
        .filter(|p| p.starts_with(dir.path().join("backend-2")))
        .count();
    assert_eq!(on_2, 0, "the drained backend holds nothing");
    assert!(
        r.shards_moved > 0 && (r.shards_moved as f64) < 0.5 * total_shards as f64,
        "moved {} of {total_shards}",
        r.shards_moved
    );
    eprintln!("drain: moved {} of {} shards", r.shards_moved, total_shards);

    // Remove it from the configuration and delete its directory: nothing is lost.
    let mut removed = drained.clone();
    removed.remove(2);
    let repo = repo.update_backends(removed.clone()).await.unwrap();
    std::fs::remove_dir_all(dir.path().join("backend-2")).unwrap();
    assert!(
        repo.check(true, &NoProgress)
            .await
            .unwrap()
            .problems
            .is_empty()
    );
    let t = repo
        .tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    all_read_back(&t, &files).await;

    // Add a backend: it receives about its share, no more.
    let mut added = removed.clone();
    let mut extra = added[0].clone();
    extra.name = "backend-new".into();
    extra.kind = asheville_storage::BackendKind::Local {
        path: dir.path().join("backend-new"),
        fsync: true,
    };
    added.push(extra);
    let repo = repo.update_backends(added).await.unwrap();
    let r = repo.rebalance(&NoProgress).await.unwrap();
    eprintln!("add: moved {} of {} shards", r.shards_moved, total_shards);
    assert!(r.shards_moved > 0 && (r.shards_moved as f64) < 0.5 * total_shards as f64);
    assert_eq!(
        repo.rebalance(&NoProgress).await.unwrap().shards_moved,
        0,
        "idempotent"
    );
    assert!(
        repo.check(true, &NoProgress)
            .await
            .unwrap()
            .problems
            .is_empty()
    );
    let t = repo
        .tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    all_read_back(&t, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_another_repository() {
    use asheville_storage::archive;
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(
        &dir.path().join("a/c.redb"),
        small_config(&dir.path().join("a"), 3, "rs(2,1)"),
    )
    .await
    .unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    for v in 0..3u64 {
        t.put(
            "docs/report",
            &random(300_000 + v as usize, v)[..],
            FileMeta {
                mtime_ns: v as i64,
                mode: 0o600,
            },
        )
        .await
        .unwrap();
    }
    t.put("docs/empty", &b""[..], FileMeta::default())
        .await
        .unwrap();
    t.put("old/gone", &random(1000, 9)[..], FileMeta::default())
        .await
        .unwrap();
    t.delete("old/gone").await.unwrap();
    let mut bytes = Vec::new();
    let ex = archive::export(&t, &mut bytes).await.unwrap();
    assert_eq!((ex.paths, ex.versions), (3, 5));

    let repo2 = Repository::create(
        &dir.path().join("b/c.redb"),
        small_config(&dir.path().join("b"), 3, "rs(2,1)"),
    )
    .await
    .unwrap();
    let u = repo2
        .create_tenant("other", TenantKey::Raw(MasterKey::generate().unwrap()))
        .await
        .unwrap();
    // Damaged archives import nothing.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    assert!(archive::import(&u, &flipped[..]).await.is_err());
    assert!(
        archive::import(&u, &bytes[..bytes.len() - 5])
            .await
            .is_err()
    );
    assert!(archive::import(&u, &b"garbage"[..]).await.is_err());
    assert!(
        u.all_paths(None, 10).unwrap().is_empty(),
        "nothing imported from a damaged archive"
    );

    let im = archive::import(&u, &bytes[..]).await.unwrap();
    assert_eq!(
        (im.paths, im.versions, im.bytes),
        (ex.paths, ex.versions, ex.bytes)
    );
    for p in ["docs/report", "docs/empty", "old/gone"] {
        let (a, b) = (t.versions(p).unwrap(), u.versions(p).unwrap());
        assert_eq!(a.len(), b.len(), "{p}");
        for (va, vb) in a.iter().zip(&b) {
            assert_eq!(
                (va.version, va.size, va.meta),
                (vb.version, vb.size, vb.meta)
            );
            let (mut x, mut y) = (Vec::new(), Vec::new());
            t.get_version(p, va.version, &mut x).await.unwrap();
            u.get_version(p, vb.version, &mut y).await.unwrap();
            assert_eq!(x, y, "{p} v{}", va.version);
        }
    }
    assert!(u.stat("old/gone").is_err(), "deleted stays deleted");
    assert!(u.stat("docs/report").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_refcount_errors_and_dangling_references() {
    use redb::{ReadableTable, TableDefinition};
    const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("c.redb");
    {
        let (repo, _t, _files) = filled(dir.path()).await;
        assert!(
            repo.check(false, &NoProgress)
                .await
                .unwrap()
                .problems
                .is_empty()
        );
    }
    // Tamper with the catalog file itself: one count too high, one blob gone.
    {
        let db = redb::Database::open(&cat).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut blobs = w.open_table(BLOBS).unwrap();
            // A blob's row ends with its reference count, one byte (a
            // postcard varint) while it is below 128.
            let (k, mut v) = {
                let first = blobs.iter().unwrap().next().unwrap().unwrap();
                (first.0.value().to_vec(), first.1.value().to_vec())
            };
            let refs = v.last_mut().unwrap();
            assert!((1..100).contains(refs), "a count of {refs}");
            *refs += 5;
            blobs.insert(k.as_slice(), v.as_slice()).unwrap();
            let last = blobs
                .iter()
                .unwrap()
                .next_back()
                .unwrap()
                .unwrap()
                .0
                .value()
                .to_vec();
            assert_ne!(last, k);
            blobs.remove(last.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let repo = Repository::open(&cat).await.unwrap();
    let r = repo.check(false, &NoProgress).await.unwrap();
    let kinds: Vec<_> = r.problems.iter().map(|p| p.kind).collect();
    assert!(
        kinds.contains(&ProblemKind::RefcountMismatch),
        "{:?}",
        r.problems
    );
    assert!(
        kinds.contains(&ProblemKind::DanglingReference),
        "{:?}",
        r.problems
    );
    assert!(!r.is_healthy());
}
