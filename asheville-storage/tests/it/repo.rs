use std::sync::Arc;

use asheville_core::{KdfParams, MasterKey};
use asheville_storage::{
    BackendConfig, DynBackend, Entry, ErrorKind, Fault, FaultyBackend, FileMeta,
    ObjectStoreBackend, RedbCatalog, RepoConfig, Repository, Tenant, TenantKey,
};

pub fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

pub fn small_config(dir: &std::path::Path, n: usize, redundancy: &str) -> RepoConfig {
    let mut c = RepoConfig::local(dir, n, redundancy.parse().unwrap());
    c.kdf = KdfParams::INSECURE_FAST_FOR_TESTS;
    c.chunker = asheville_core::ChunkerConfig::new(16 << 10, 64 << 10, 256 << 10).unwrap();
    c.pack_size = 1 << 20;
    c.cache_bytes = 0;
    c
}

/// The shared temp-repository builder: `n` local backends under `dir`
/// with `redundancy` and the small test config (adjusted by `tweak`), and
/// tenant `acme` with passphrase `pw`.
pub async fn temp_repo(
    dir: &std::path::Path,
    n: usize,
    redundancy: &str,
    tweak: impl FnOnce(&mut RepoConfig),
) -> (Repository, Tenant) {
    let mut config = small_config(dir, n, redundancy);
    tweak(&mut config);
    let repo = Repository::create(&dir.join("c.redb"), config)
        .await
        .unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    (repo, t)
}

pub async fn get(t: &Tenant, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    t.get(path, &mut out).await.unwrap();
    out
}

/// Bytes stored across all local backends (shard objects only).
fn stored_bytes(dir: &std::path::Path) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let m = e.metadata().unwrap();
                        if m.is_dir() { walk(&e.path()) } else { m.len() }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("backend-"))
        .map(|e| walk(&e.path().join("packs")))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_versions_ranges_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog.redb");
    let repo = Repository::create(&cat, small_config(dir.path(), 3, "rs(2,1)"))
        .await
        .unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    let v1 = random(3_000_000, 1);
    let v2 = random(1_000_000, 2);
    let meta = FileMeta {
        mtime_ns: 1_700_000_000_123_456_789,
        mode: 0o640,
    };
    assert_eq!(
        t.put("a/b/file.bin", &v1[..], meta).await.unwrap().version,
        1
    );
    assert_eq!(
        t.put("a/b/file.bin", &v2[..], meta).await.unwrap().version,
        2
    );
    t.put("empty", &b""[..], FileMeta::default()).await.unwrap();
    assert_eq!(get(&t, "a/b/file.bin").await, v2);
    assert_eq!(get(&t, "/empty").await, b"");
    let mut old = Vec::new();
    t.get_version("a/b/file.bin", 1, &mut old).await.unwrap();
    assert_eq!(old, v1);
    let st = t.stat("a/b/file.bin").unwrap();
    assert_eq!((st.size, st.meta), (v2.len() as u64, meta));
    assert_eq!(t.versions("a/b/file.bin").unwrap().len(), 2);
    assert_eq!(
        t.get_range("a/b/file.bin", 70_000..500_001).await.unwrap(),
        &v2[70_000..500_001]
    );
    assert_eq!(t.get_range("a/b/file.bin", 5..5).await.unwrap(), b"");
    assert_eq!(
        t.get_range("a/b/file.bin", 0..2_000_000)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    drop((t, repo));

    // Reopen from the catalog: same data, keys checked.
    let repo = Repository::open(&cat).await.unwrap();
    let e = repo
        .tenant("acme", TenantKey::Passphrase("wrong".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongKey);
    let t = repo
        .tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    assert_eq!(get(&t, "a/b/file.bin").await, v2);
    // While open, a second handle on the catalog is refused clearly.
    let e = Repository::open(&cat).await.unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop((t, repo));
    assert_eq!(
        Repository::create(&cat, small_config(dir.path(), 3, "rs(2,1)"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
}

/// Packs stay within the pack size (a pack is closed before a chunk would
/// take it past), are full to within a chunk, and Reed-Solomon packs are
/// padded to `k` × 512 bytes (so every data shard's payload lines up for
/// `O_DIRECT`); the data reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_stay_within_the_pack_size_and_rs_packs_are_padded_to_whole_blocks() {
    for policy in ["rs(3,2)", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let (repo, t) = temp_repo(dir.path(), 5, policy, |_| {}).await;
        let config = repo.config().clone();
        let data = random(6 << 20, 41);
        t.put("big", &data[..], FileMeta::default()).await.unwrap();
        assert_eq!(get(&t, "big").await, data, "{policy}");
        let packs = repo.catalog().packs(None, 1000).unwrap();
        assert!(packs.len() >= 6, "{policy}: {} packs", packs.len());
        let max_chunk = config.chunker.max_size as u64;
        // Blob overhead of a pack's chunks, and its trailer, are small.
        let slack = 32 << 10;
        let mut short = 0;
        for p in &packs {
            assert!(
                p.data_len <= config.pack_size as u64 + slack,
                "{policy}: a pack of {} bytes, pack size {}",
                p.data_len,
                config.pack_size
            );
            if p.data_len + max_chunk + slack < config.pack_size as u64 {
                short += 1;
            }
            if policy == "rs(3,2)" {
                assert_eq!(p.data_len % (3 * 512), 0, "{policy}: {}", p.data_len);
            }
        }
        // Only the last pack of the put may be short.
        assert!(short <= 1, "{policy}: {short} short packs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_data_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let data = random(4_000_000, 3);
    t.put("one", &data[..], FileMeta::default()).await.unwrap();
    let after_one = stored_bytes(dir.path());
    // ~4 MB × 1.5 (rs(2,1)) plus headers and trailers.
    assert!(
        after_one > 6_000_000 && after_one < 6_200_000,
        "{after_one}"
    );
    t.put("two", &data[..], FileMeta::default()).await.unwrap();
    t.put("dir/three", &data[..], FileMeta::default())
        .await
        .unwrap();
    assert_eq!(
        stored_bytes(dir.path()),
        after_one,
        "identical data added no shard bytes"
    );
    let id = t.stat("one").unwrap().chunks[0].id;
    assert_eq!(repo.catalog().refcount("acme", &id).unwrap(), 3);
    // A file that shares most of its content stores little more.
    let mut edited = data.clone();
    edited.splice(2_000_000..2_000_000, b"inserted".iter().copied());
    t.put("edited", &edited[..], FileMeta::default())
        .await
        .unwrap();
    let grown = stored_bytes(dir.path()) - after_one;
    assert!(grown < 1_000_000, "an insert re-stored {grown} bytes");
    assert_eq!(get(&t, "edited").await, edited);
    // The edit shares its first chunk with the other three files.
    assert_eq!(t.stat("edited").unwrap().chunks[0].id, id);
    assert_eq!(repo.catalog().refcount("acme", &id).unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(
        &dir.path().join("c.redb"),
        small_config(dir.path(), 3, "rs(2,1)"),
    )
    .await
    .unwrap();
    let a = repo
        .create_tenant("a", TenantKey::Passphrase("pa".into()))
        .await
        .unwrap();
    let key = MasterKey::generate().unwrap();
    let b = repo
        .create_tenant("b", TenantKey::Raw(key.clone()))
        .await
        .unwrap();
    let data = random(500_000, 4);
    a.put("f", &data[..], FileMeta::default()).await.unwrap();
    let before = stored_bytes(dir.path());
    b.put("f", &data[..], FileMeta::default()).await.unwrap();
    assert!(stored_bytes(dir.path()) > before, "no dedup across tenants");
    a.put("only-a", &b"x"[..], FileMeta::default())
        .await
        .unwrap();
    assert_eq!(b.stat("only-a").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(get(&b, "f").await, data);
    assert_eq!(
        repo.create_tenant("a", TenantKey::Passphrase("x".into()))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    let e = repo
        .tenant("b", TenantKey::Raw(MasterKey::generate().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongKey);
    repo.tenant("b", TenantKey::Raw(key)).await.unwrap();
    // A passphrase tenant's wrapped key is on every backend (so the catalog
    // can be rebuilt from backends alone); a raw-key tenant stores no key.
    for backend in repo.backends() {
        let keys = asheville_storage::Backend::list(backend.as_ref(), "keys/a/", None, 10)
            .await
            .unwrap();
        assert_eq!(keys.objects.len(), 1);
        let bytes = asheville_storage::Backend::get(backend.as_ref(), &keys.objects[0].key)
            .await
            .unwrap();
        asheville_core::KeyFile::parse(&bytes)
            .unwrap()
            .unwrap_key(b"pa")
            .unwrap();
        let none = asheville_storage::Backend::list(backend.as_ref(), "keys/b/", None, 10)
            .await
            .unwrap();
        assert!(none.objects.is_empty());
    }
    for bad in ["", "../x", "a/b", ".hidden"] {
        assert_eq!(
            repo.create_tenant(bad, TenantKey::Passphrase("x".into()))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
    }
    assert_eq!(
        a.put("../escape", &b"x"[..], FileMeta::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_depth_pagination_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    for p in ["r1", "r2", "d1/x", "d1/y", "d1/sub/z", "d2/w", "dz"] {
        t.put(p, p.as_bytes(), FileMeta::default()).await.unwrap();
    }
    let names = |entries: &[Entry]| -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                Entry::File { path, .. } => path.clone(),
                Entry::Dir { path } => format!("{path}/"),
            })
            .collect()
    };
    let top = t.list("/", 1, None, 100).unwrap();
    assert_eq!(names(&top.entries), ["d1/", "d2/", "dz", "r1", "r2"]);
    assert!(top.cursor.is_none());
    let all = t.list("", usize::MAX, None, 100).unwrap();
    assert_eq!(
        names(&all.entries),
        ["d1/sub/z", "d1/x", "d1/y", "d2/w", "dz", "r1", "r2"]
    );
    assert_eq!(
        names(&t.list("d1", 1, None, 100).unwrap().entries),
        ["d1/sub/", "d1/x", "d1/y"]
    );
    // Keyset pagination: pages of 2 give the same sequence, no repeats.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = t.list("/", 1, cursor.as_deref(), 2).unwrap();
        assert!(page.entries.len() <= 2);
        seen.extend(names(&page.entries));
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, names(&top.entries));
    assert_eq!(
        t.list("/", 1, Some("zz-not-hex"), 2).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    t.delete("d2/w").await.unwrap();
    assert_eq!(
        names(&t.list("/", 1, None, 100).unwrap().entries),
        ["d1/", "dz", "r1", "r2"]
    );
    assert_eq!(t.stat("d2/w").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        t.delete("d2/w").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let mut old = Vec::new();
    t.get_version("d2/w", 1, &mut old).await.unwrap();
    assert_eq!(old, b"d2/w", "versions of a deleted file stay readable");
}

/// Read calls (get, get_range, head) seen by all of `faulty`.
fn total_reads(faulty: &[Arc<FaultyBackend>]) -> u64 {
    faulty.iter().map(|b| b.reads()).sum()
}

/// rs(4,2) over six local backends behind [`FaultyBackend`]s, and tenant
/// `acme` with a raw key.
async fn faulty_repo(dir: &std::path::Path) -> (Repository, Vec<Arc<FaultyBackend>>, Tenant) {
    let config = small_config(dir, 6, "rs(4,2)");
    let faulty: Vec<Arc<FaultyBackend>> = config
        .backends
        .iter()
        .map(|b: &BackendConfig| {
            Arc::new(FaultyBackend::new(Arc::new(
                ObjectStoreBackend::open(&b.name, &b.kind).unwrap(),
            )))
        })
        .collect();
    let backends: Vec<DynBackend> = faulty.iter().map(|f| f.clone() as DynBackend).collect();
    let catalog = Arc::new(RedbCatalog::open(&dir.join("c.redb")).unwrap());
    let repo = Repository::with_parts(config, backends, catalog).unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Raw(MasterKey::generate().unwrap()))
        .await
        .unwrap();
    (repo, faulty, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_any_two_backends_missing_or_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, faulty, t) = faulty_repo(dir.path()).await;
    let data = random(5_000_000, 5);
    t.put("big", &data[..], FileMeta::default()).await.unwrap();
    // Every pair of backends, each either offline or flipping bytes.
    for i in 0..6 {
        for j in i + 1..6 {
            for (fi, fj) in [
                (Fault::Offline, Fault::Offline),
                (Fault::FlipReads, Fault::Offline),
                (Fault::FlipReads, Fault::FlipReads),
            ] {
                faulty[i].set(fi);
                faulty[j].set(fj);
                assert_eq!(get(&t, "big").await, data, "backends {i},{j} {fi:?}/{fj:?}");
                assert_eq!(
                    t.get_range("big", 1_234_567..1_300_000).await.unwrap(),
                    &data[1_234_567..1_300_000]
                );
                faulty[i].set(Fault::None);
                faulty[j].set(Fault::None);
            }
        }
    }
    // Three lost: a clear error, never wrong bytes.
    for f in &faulty[..3] {
        f.set(Fault::FlipReads);
    }
    let mut out = Vec::new();
    let e = t.get("big", &mut out).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Insufficient | ErrorKind::Integrity),
        "{e}"
    );
    assert!(out.len() < data.len());
    assert_eq!(
        &out[..],
        &data[..out.len()],
        "whatever was written before the error is correct"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upload_leaves_no_visible_version() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, faulty, t) = faulty_repo(dir.path()).await;
    t.put("f", &b"first"[..], FileMeta::default())
        .await
        .unwrap();
    faulty[2].set(Fault::FailWritesAfter(1));
    let data = random(3_000_000, 6);
    assert!(t.put("f", &data[..], FileMeta::default()).await.is_err());
    assert!(t.put("g", &data[..], FileMeta::default()).await.is_err());
    faulty[2].set(Fault::None);
    assert_eq!(get(&t, "f").await, b"first", "previous version intact");
    assert_eq!(t.stat("g").unwrap_err().kind(), ErrorKind::NotFound);
    t.put("g", &data[..], FileMeta::default()).await.unwrap();
    assert_eq!(get(&t, "g").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_is_synced_before_its_pack_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, faulty, t) = faulty_repo(dir.path()).await;
    let first = random(3_000_000, 8);
    t.put("f", &first[..], FileMeta::default()).await.unwrap();
    let written: u64 = faulty.iter().map(|f| f.unsynced_puts()).sum();
    assert!(written >= 6, "shards go through put_unsynced ({written})");
    for f in &faulty {
        assert_eq!(
            f.synced_keys(),
            f.unsynced_puts(),
            "{}: every shard synced",
            asheville_storage::backend::Backend::name(f.as_ref())
        );
    }
    let packs = repo.catalog().packs(None, 10_000).unwrap().len();
    // A sync that fails: the shards are written, yet no pack is recorded
    // and no version appears.
    faulty[3].set(Fault::FailSyncs);
    let data = random(3_000_000, 9);
    let err = t
        .put("g", &data[..], FileMeta::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sync failed"), "{err}");
    assert!(faulty[3].unsynced_puts() > faulty[3].synced_keys());
    assert_eq!(t.stat("g").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        repo.catalog().packs(None, 10_000).unwrap().len(),
        packs,
        "no pack recorded"
    );
    assert_eq!(get(&t, "f").await, first, "the earlier version is intact");
    faulty[3].set(Fault::None);
    t.put("g", &data[..], FileMeta::default()).await.unwrap();
    assert_eq!(get(&t, "g").await, data);
}

/// With every backend healthy, a chunk costs one ranged read per data
/// shard it lies in (two where it crosses a shard boundary, read at once),
/// never a decode of its whole pack: the read count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_across_two_data_shards_are_read_straight_from_both() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, faulty, t) = faulty_repo(dir.path()).await;
    let data = random(3_000_000, 12);
    t.put("big", &data[..], FileMeta::default()).await.unwrap();
    let codec = asheville_core::Codec::new("rs(4,2)".parse().unwrap()).unwrap();
    let fv = t.stat("big").unwrap();
    let mut parts = 0;
    let mut across = 0;
    for c in &fv.chunks {
        let loc = repo.catalog().blob("acme", &c.id).unwrap().unwrap();
        let pack = repo.catalog().pack(&loc.pack).unwrap().unwrap();
        let n = codec
            .locate(pack.data_len, loc.offset..loc.offset + u64::from(loc.len))
            .unwrap()
            .len();
        parts += n as u64;
        across += u64::from(n == 2);
    }
    assert!(
        across > 0,
        "no chunk crosses a shard boundary: the test proves nothing"
    );
    let before = total_reads(&faulty);
    assert_eq!(get(&t, "big").await, data);
    assert_eq!(total_reads(&faulty) - before, parts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_serves_repeated_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |c| c.cache_bytes = 16 << 20).await;
    let data = random(2_000_000, 7);
    t.put("f", &data[..], FileMeta::default()).await.unwrap();
    assert_eq!(get(&t, "f").await, data);
    let first = repo.cache_stats();
    assert_eq!(first.hits, 0);
    assert!(first.misses > 0);
    assert_eq!(get(&t, "f").await, data);
    let second = repo.cache_stats();
    assert_eq!(second.hits, first.misses, "every chunk came from the cache");
    assert_eq!(second.misses, first.misses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_on_s3() {
    let server = crate::s3server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path(), 3, "rs(2,1)");
    for (i, b) in config.backends.iter_mut().enumerate() {
        b.kind = crate::conformance::s3_kind(server.addr, &format!("bucket{i}"));
    }
    let repo = Repository::create(&dir.path().join("c.redb"), config)
        .await
        .unwrap();
    let t = repo
        .create_tenant("acme", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    let data = random(2_500_000, 8);
    t.put("s3/file", &data[..], FileMeta::default())
        .await
        .unwrap();
    assert_eq!(get(&t, "s3/file").await, data);
    let list = asheville_storage::Backend::list(repo.backends()[0].as_ref(), "packs/", None, 1000)
        .await
        .unwrap();
    assert!(!list.objects.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_shares_packs_and_commits_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let mut batch = t.batch();
    for i in 0..200 {
        let body = random(2_000 + i, i as u64);
        batch
            .add(&format!("small/{i:03}"), &body[..], FileMeta::default())
            .await
            .unwrap();
    }
    assert_eq!(batch.len(), 200);
    assert_eq!(
        t.stat("small/000").unwrap_err().kind(),
        ErrorKind::NotFound,
        "invisible before commit"
    );
    let versions = batch.commit().await.unwrap();
    assert_eq!(versions.len(), 200);
    for i in [0usize, 57, 199] {
        assert_eq!(
            get(&t, &format!("small/{i:03}")).await,
            random(2_000 + i, i as u64)
        );
    }
    // ~440 KB of small files fit in one 1 MiB pack: 3 shard objects, not 600.
    let shards =
        asheville_storage::Backend::list(repo.backends()[0].as_ref(), "packs/", None, 10_000)
            .await
            .unwrap();
    assert_eq!(shards.objects.len(), 1, "{:?}", shards.objects.len());
    // A failed add poisons the batch: nothing of it is committed.
    let mut batch = t.batch();
    batch
        .add("ok", &b"fine"[..], FileMeta::default())
        .await
        .unwrap();
    assert!(
        batch
            .add("../bad", &b"x"[..], FileMeta::default())
            .await
            .is_err()
    );
    assert!(
        batch
            .add("ok2", &b"x"[..], FileMeta::default())
            .await
            .is_err()
    );
    assert!(batch.commit().await.is_err());
    assert_eq!(t.stat("ok").unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_chunks_inside_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let v = t
        .put("periodic", &data[..], FileMeta::default())
        .await
        .unwrap();
    let distinct: std::collections::HashSet<_> = v.chunks.iter().map(|c| c.id).collect();
    assert!(
        distinct.len() < v.chunks.len(),
        "the data repeats chunks ({} of {})",
        distinct.len(),
        v.chunks.len()
    );
    assert_eq!(get(&t, "periodic").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_tree_leaves_unchanged_files_alone_and_stores_changed_ones() {
    use asheville_storage::tree::{NoProgress, PutOptions, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..10 {
        std::fs::write(src.join(format!("f{i}")), random(1000 + i, i as u64)).unwrap();
    }
    let r = put_tree(&t, &src, "/b", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((r.files, r.unchanged), (10, 0));
    let r = put_tree(&t, &src, "/b", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (r.files, r.unchanged, r.unchanged_bytes),
        (0, 10, (1000..1010).sum::<u64>())
    );
    // New content, a new mtime alone, a new mode alone: each is stored.
    std::fs::write(src.join("f1"), b"changed").unwrap();
    let f2 = std::fs::File::options()
        .write(true)
        .open(src.join("f2"))
        .unwrap();
    f2.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("f3"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = put_tree(&t, &src, "/b", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((r.files, r.unchanged), (3, 7));
    assert_eq!(get(&t, "/b/f1").await, b"changed");
    assert_eq!(t.versions("/b/f2").unwrap().len(), 2);
    assert_eq!(t.stat("/b/f3").unwrap().meta.mode, 0o600);
    assert_eq!(
        t.versions("/b/f4").unwrap().len(),
        1,
        "unchanged: no new version"
    );
    // Asking to store everything does.
    let opts = PutOptions {
        skip_unchanged: false,
        ..PutOptions::default()
    };
    let r = put_tree(&t, &src, "/b", opts, &NoProgress).await.unwrap();
    assert_eq!((r.files, r.unchanged), (10, 0));
}

/// Unchanged files left out of a listing before the put (as the CLI does
/// while the tenant unlocks): over more files than are looked up at once,
/// counted as unchanged by the put whatever its options, and only for the
/// tenant and remote path they were looked up for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_files_left_out_of_a_listing_ahead_of_the_put() {
    use asheville_storage::tree::{LocalListing, NoProgress, PutOptions, put_listed, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let src = dir.path().join("src");
    let n = 2_100u64;
    for i in 0..n {
        let sub = src.join(format!("d{}", i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), i.to_le_bytes()).unwrap();
    }
    let r = put_tree(&t, &src, "/b", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((r.files, r.unchanged), (n, 0));
    // New content in one file, a new mtime on another.
    std::fs::write(src.join("d0/f0"), b"changed").unwrap();
    std::fs::File::options()
        .write(true)
        .open(src.join("d2/f2099"))
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    // A fresh listing of `src`, its unchanged files looked up for a put
    // by `tenant` under `remote`.
    let checked = |tenant: &'static str, remote: &'static str| {
        let (src, repo) = (&src, &repo);
        async move {
            let mut listing = LocalListing::new(src).unwrap();
            listing
                .leave_out_unchanged(repo, tenant, remote)
                .await
                .unwrap();
            listing
        }
    };
    let listing = checked("acme", "/b").await;
    assert_eq!(listing.len(), 2);
    let everything = PutOptions {
        skip_unchanged: false,
        ..PutOptions::default()
    };
    let r = put_listed(&t, listing, "/b", everything, &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (r.files, r.unchanged, r.unchanged_bytes),
        (2, n - 2, 8 * (n - 2))
    );
    assert_eq!(get(&t, "/b/d0/f0").await, b"changed");
    assert_eq!(t.versions("/b/d2/f2099").unwrap().len(), 2);
    assert_eq!(t.versions("/b/d1/f1").unwrap().len(), 1);
    // Looked up under one path, stored under another: refused, nothing
    // stored.
    let mut listing = checked("acme", "/b").await;
    assert!(listing.is_empty());
    // Asked again: under the same path, nothing more; under another, no.
    listing
        .leave_out_unchanged(&repo, "acme", "/b")
        .await
        .unwrap();
    let e = listing
        .leave_out_unchanged(&repo, "acme", "/c")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = put_listed(&t, listing, "/c", everything, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(t.stat("/c/d1/f1").is_err());
    // The count of a listing checked twice: every file once.
    let mut listing = checked("acme", "/b").await;
    listing
        .leave_out_unchanged(&repo, "acme", "/b")
        .await
        .unwrap();
    let r = put_listed(&t, listing, "/b", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((r.files, r.unchanged), (0, n));
    // Looked up for another tenant: refused too.
    let listing = checked("other", "/b").await;
    assert_eq!(listing.len() as u64, n);
    let e = put_listed(&t, listing, "/b", PutOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // Under another path, nothing is unchanged; a single file needs a name.
    let listing = checked("acme", "/c").await;
    assert_eq!(listing.len() as u64, n);
    let mut one = LocalListing::new(&src.join("d1/f1")).unwrap();
    let e = one
        .leave_out_unchanged(&repo, "acme", "/")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    one.leave_out_unchanged(&repo, "acme", "/b/d1/f1")
        .await
        .unwrap();
    assert!(one.is_empty());
}

/// A tree of `n` small files (random, 1–6 KB, distinct mtime and mode) and
/// one large file, in `dir/src`.
fn small_file_tree(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join("src");
    for i in 0..n {
        let sub = src.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let p = sub.join(format!("f{i}"));
        std::fs::write(&p, random(1000 + (i * 37) % 5000, i as u64)).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(
            std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_600_000_000 + i as u64),
        )
        .unwrap();
        std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode(0o600 + (i % 2) as u32 * 0o44),
        )
        .unwrap();
    }
    std::fs::write(src.join("large"), random(5_000_001, 99)).unwrap();
    src
}

/// Bytes, mtime and mode of every file under `a` equal those under `b`.
fn assert_same_tree(a: &std::path::Path, b: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut count = 0;
    let mut stack = vec![a.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let q = b.join(p.strip_prefix(a).unwrap());
            let (ma, mb) = (p.metadata().unwrap(), q.metadata().unwrap());
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(&q).unwrap(),
                "{}",
                q.display()
            );
            assert_eq!(
                ma.modified().unwrap(),
                mb.modified().unwrap(),
                "{}",
                q.display()
            );
            assert_eq!(
                ma.permissions().mode(),
                mb.permissions().mode(),
                "{}",
                q.display()
            );
            count += 1;
        }
    }
    assert!(count > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_many_small_files_reads_in_batches_and_survives_two_lost_backends() {
    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, faulty, t) = faulty_repo(dir.path()).await;
    let src = small_file_tree(dir.path(), 300);
    put_tree(&t, &src, "/tree", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    // All backends well: 301 files with far fewer reads than files (one
    // ranged read per run of nearby blobs, not one per file): 98 when the
    // put stored the large file after the small ones, 101 now that it
    // stores it among them (its chunks split one run of small blobs).
    let before = total_reads(&faulty);
    let out = dir.path().join("out-ok");
    let r = get_tree(&t, "/tree", &out, &NoProgress).await.unwrap();
    assert_eq!(r.files, 301);
    let used = total_reads(&faulty) - before;
    assert!(used < 120, "{used} backend reads for 301 files");
    assert_same_tree(&src, &out);
    // Any two backends offline or flipping bytes: the same tree.
    for (i, j, fi, fj) in [
        (0, 1, Fault::Offline, Fault::Offline),
        (2, 5, Fault::FlipReads, Fault::Offline),
        (3, 4, Fault::FlipReads, Fault::FlipReads),
        (1, 5, Fault::Offline, Fault::FlipReads),
    ] {
        faulty[i].set(fi);
        faulty[j].set(fj);
        let out = dir.path().join(format!("out-{i}-{j}"));
        get_tree(&t, "/tree", &out, &NoProgress)
            .await
            .unwrap_or_else(|e| panic!("backends {i},{j} {fi:?}/{fj:?}: {e}"));
        assert_same_tree(&src, &out);
        faulty[i].set(Fault::None);
        faulty[j].set(Fault::None);
    }
    // Three bad backends: an error, and no file under a real name holds
    // wrong bytes.
    for f in &faulty[..3] {
        f.set(Fault::FlipReads);
    }
    let out = dir.path().join("out-bad");
    assert!(get_tree(&t, "/tree", &out, &NoProgress).await.is_err());
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".asheville-partial") {
                let q = src.join(p.strip_prefix(&out).unwrap());
                assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_tree_commits_each_batch_while_the_next_fills_and_keeps_whole_batches_on_an_error() {
    use std::os::unix::ffi::OsStrExt;

    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    // 34 small files and `large`: five batches of 7.
    let src = small_file_tree(dir.path(), 34);
    let opts = PutOptions {
        batch_files: 7,
        ..PutOptions::default()
    };
    let r = put_tree(&t, &src, "/tree", opts, &NoProgress)
        .await
        .unwrap();
    assert_eq!(r.files, 35);
    let out = dir.path().join("out");
    get_tree(&t, "/tree", &out, &NoProgress).await.unwrap();
    assert_same_tree(&src, &out);
    // A name that is not UTF-8 sorts after the 35 files: it fails the 6th
    // batch at its first file, typically while the 5th is committing, and
    // the 5th must still commit. (Storing every file again, the name is first
    // looked at when its turn comes.)
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"z\xff")), b"x").unwrap();
    let opts = PutOptions {
        skip_unchanged: false,
        ..opts
    };
    let e = put_tree(&t, &src, "/again", opts, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let kept = t.all_paths(None, 100).unwrap();
    let again: Vec<_> = kept.iter().filter(|p| p.starts_with("again/")).collect();
    assert_eq!(again.len(), 35, "{again:?}");
    for p in &again {
        let fv = t.stat(p).unwrap();
        assert_eq!(fv.version, 1, "{p}");
        let mut bytes = Vec::new();
        t.get(p, &mut bytes).await.unwrap();
        let local = src.join(p.trim_start_matches("again/"));
        assert_eq!(bytes, std::fs::read(local).unwrap(), "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_tree_stores_a_chunk_once_when_its_copies_fill_a_batch_while_another_commits() {
    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    // 12 files, three copies of each of 4 bodies, in batches of 4: each
    // batch holds the same 4 bodies, and the second fills while the first
    // commits.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let body = |i: usize| random(300_000, 700 + (i % 4) as u64);
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i:02}")), body(i)).unwrap();
    }
    let opts = PutOptions {
        batch_files: 4,
        ..PutOptions::default()
    };
    let r = put_tree(&t, &src, "/tree", opts, &NoProgress)
        .await
        .unwrap();
    assert_eq!(r.files, 12);
    // 4 bodies × 300 KB × 1.5 (rs(2,1)), headers, trailers and padding:
    // not the 2 or 3 copies of each that batches storing again the chunks
    // of the batch committing would leave.
    let stored = stored_bytes(dir.path());
    let once = 4 * 300_000 * 3 / 2;
    assert!(
        stored >= once && stored < once * 11 / 10,
        "{stored} bytes for {once}"
    );
    for i in 0..4 {
        let id = t.stat(&format!("tree/f{i:02}")).unwrap().chunks[0].id;
        assert_eq!(repo.catalog().refcount("acme", &id).unwrap(), 3, "body {i}");
    }
    let out = dir.path().join("out");
    get_tree(&t, "/tree", &out, &NoProgress).await.unwrap();
    for i in 0..12 {
        assert_eq!(
            std::fs::read(out.join(format!("f{i:02}"))).unwrap(),
            body(i)
        );
    }
    let report = repo.check(true, &NoProgress).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_batch_gives_every_file_its_bytes_when_files_share_a_chunk() {
    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // One chunk wanted six times in one batch (its blob read once, opened
    // in place), compressed chunks (opened into new buffers) and distinct
    // ones between them.
    let same = random(3_000, 1);
    let text = b"a chunk that compresses well. ".repeat(300);
    for i in 0..6 {
        std::fs::write(src.join(format!("same{i}")), &same).unwrap();
        std::fs::write(src.join(format!("text{i}")), &text).unwrap();
        std::fs::write(
            src.join(format!("other{i}")),
            random(2_000 + i, 10 + i as u64),
        )
        .unwrap();
    }
    put_tree(&t, &src, "/tree", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    let out = dir.path().join("out");
    let r = get_tree(&t, "/tree", &out, &NoProgress).await.unwrap();
    assert_eq!(r.files, 18);
    assert_same_tree(&src, &out);
}

/// A restore hands the places of whichever kind runs out first (small-file
/// batches of 512 or large files) to the other: every file of both kinds
/// lands whole, whichever outlasts the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_lands_every_file_whichever_kind_runs_out_first() {
    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    // Many small files and two large ones (the large run out first), then
    // a few small ones and ten large ones (the small run out first).
    for (name, small, large) in [("many-small", 1_800, 2), ("many-large", 40, 10)] {
        let src = dir.path().join(name);
        for i in 0..small {
            let sub = src.join(format!("d{}", i % 7));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("s{i}")), random(200 + i % 900, i as u64)).unwrap();
        }
        for i in 0..large {
            std::fs::write(
                src.join(format!("large{i}")),
                random((1 << 20) + 4_096 * (i + 1), 10_000 + i as u64),
            )
            .unwrap();
        }
        let remote = format!("/{name}");
        put_tree(&t, &src, &remote, PutOptions::default(), &NoProgress)
            .await
            .unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let r = get_tree(&t, &remote, &out, &NoProgress).await.unwrap();
        assert_eq!(r.files, (small + large) as u64, "{name}");
        assert_same_tree(&src, &out);
    }
}

/// A repository (`rs(2,1)`, a read cache of `cache_bytes`) holding
/// [`small_file_tree`] of `n` files under `/tree`, restored once to `out`
/// and checked: (repository, tenant, source, out).
async fn stored_and_restored(
    dir: &std::path::Path,
    n: usize,
    cache_bytes: usize,
) -> (Repository, Tenant, std::path::PathBuf, std::path::PathBuf) {
    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let (repo, t) = temp_repo(dir, 3, "rs(2,1)", |c| c.cache_bytes = cache_bytes).await;
    let src = small_file_tree(dir, n);
    put_tree(&t, &src, "/tree", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    let out = dir.join("out");
    get_tree(&t, "/tree", &out, &NoProgress).await.unwrap();
    assert_same_tree(&src, &out);
    (repo, t, src, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_over_an_earlier_one_replaces_every_file_and_leaves_no_temp_names() {
    use std::os::unix::fs::PermissionsExt;

    use asheville_storage::tree::{NoProgress, get_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t, src, out) = stored_and_restored(dir.path(), 40, 0).await;
    // Damage the restored tree: changed bytes, a changed mode, and the
    // temp name a crashed restore could have left next to a file.
    std::fs::write(out.join("d0/f0"), b"changed").unwrap();
    std::fs::write(out.join("large"), b"short").unwrap();
    std::fs::set_permissions(out.join("d1/f1"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(out.join("d2/.f2.asheville-partial"), b"stale").unwrap();
    let r = get_tree(&t, "/tree", &out, &NoProgress).await.unwrap();
    assert_eq!(r.files, 41);
    assert_same_tree(&src, &out);
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert!(
                    !p.to_string_lossy().ends_with(".asheville-partial"),
                    "{} left behind",
                    p.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_restore_leaves_the_read_cache_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, t, _src, _out) = stored_and_restored(dir.path(), 50, 64 << 20).await;
    assert_eq!(repo.cache_stats().bytes, 0, "{:?}", repo.cache_stats());
    // A plain get still caches.
    let _ = get(&t, "/tree/large").await;
    assert!(
        repo.cache_stats().bytes >= 3_000_000,
        "{:?}",
        repo.cache_stats()
    );
}

#[test]
fn the_catalog_gives_free_space_back_and_keeps_its_records() {
    use asheville_core::{ChunkId, PackId};
    use asheville_storage::catalog::{BlobLoc, Catalog, ChunkRef, NewVersion, PackRecord};
    use asheville_storage::path::RepoPath;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.redb");
    let path = |i: usize| {
        RepoPath::parse(&format!(
            "/dir/{:03}/a-rather-long-file-name-{i:06}.txt",
            i / 100
        ))
        .unwrap()
    };
    let c = RedbCatalog::open(&p).unwrap();
    // Nothing to give back in a fresh catalog.
    assert!(!c.compact().unwrap());
    // Many commits, as a large put makes (a pack of blobs with random ids,
    // then the versions that use them): each leaves pages behind.
    for batch in 0..40 {
        let blobs: Vec<_> = (0..250u32)
            .map(|j| {
                let id = blake3::hash(&(batch * 250 + j as usize).to_le_bytes());
                let loc = BlobLoc {
                    pack: PackId::from_bytes([batch as u8; 32]),
                    offset: u64::from(j) * 1000,
                    len: 1000,
                };
                (ChunkId::from_bytes(*id.as_bytes()), loc)
            })
            .collect();
        let pack = PackRecord {
            id: PackId::from_bytes([batch as u8; 32]),
            tenant: "t".into(),
            data_len: 250_000,
            redundancy: "none".into(),
            shards: vec!["b".into()],
        };
        c.commit_pack(&pack, &blobs).unwrap();
        c.commit_versions(
            "t",
            (0..250)
                .map(|j| NewVersion {
                    path: path(batch * 250 + j),
                    size: j as u64,
                    meta: FileMeta::default(),
                    chunks: vec![ChunkRef {
                        id: blobs[j].0,
                        len: 1000,
                    }],
                    created_ns: 1,
                    version: 0,
                })
                .collect(),
        )
        .unwrap();
    }
    let before = std::fs::metadata(&p).unwrap().len();
    assert!(c.compact().unwrap(), "a catalog of {before} bytes");
    let after = std::fs::metadata(&p).unwrap().len();
    assert!(after * 4 <= before * 3, "{before} -> {after} bytes");
    // Compacted once: nothing more to give back, and no copy left behind.
    assert!(!c.compact().unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["c.redb"]);
    // The compacted handle still takes writes.
    c.commit_versions(
        "t",
        vec![NewVersion {
            path: path(0),
            size: 7,
            meta: FileMeta::default(),
            chunks: vec![],
            created_ns: 2,
            version: 0,
        }],
    )
    .unwrap();
    // That commit grew the file's length (redb doubles it, sparsely), but
    // not its bytes on disk: no second copy.
    assert!(!c.compact().unwrap());
    // Every record is still there, in this handle and after reopening.
    let check = |c: &RedbCatalog| {
        for i in (97..10_000).step_by(97) {
            let fv = c.latest("t", &path(i)).unwrap().unwrap();
            assert_eq!((fv.size, fv.version), ((i % 250) as u64, 1));
        }
        let fv = c.latest("t", &path(0)).unwrap().unwrap();
        assert_eq!((fv.size, fv.version), (7, 2));
        // Blobs and their references came across too.
        let chunk0 = ChunkId::from_bytes(*blake3::hash(&0usize.to_le_bytes()).as_bytes());
        assert_eq!(c.refcount("t", &chunk0).unwrap(), 1);
        assert_eq!(c.blob("t", &chunk0).unwrap().unwrap().len, 1000);
        assert_eq!(c.packs(None, 100).unwrap().len(), 40);
        assert_eq!(c.paths("t", None, usize::MAX).unwrap().len(), 10_000);
    };
    check(&c);
    drop(c);
    check(&RedbCatalog::open(&p).unwrap());
}

#[test]
fn a_commit_counts_every_reference_and_is_refused_whole_for_a_missing_chunk() {
    use asheville_core::{ChunkId, PackId};
    use asheville_storage::catalog::{BlobLoc, Catalog, ChunkRef, NewVersion, PackRecord};
    use asheville_storage::path::RepoPath;
    let dir = tempfile::tempdir().unwrap();
    let c = RedbCatalog::open(&dir.path().join("c.redb")).unwrap();
    let id = |i: u8| ChunkId::from_bytes(*blake3::hash(&[i]).as_bytes());
    let pack = PackRecord {
        id: PackId::from_bytes([1; 32]),
        tenant: "t".into(),
        data_len: 3000,
        redundancy: "none".into(),
        shards: vec!["b".into()],
    };
    let loc = |j: u64| BlobLoc {
        pack: pack.id,
        offset: j * 1000,
        len: 1000,
    };
    c.commit_pack(&pack, &[(id(0), loc(0)), (id(1), loc(1)), (id(2), loc(2))])
        .unwrap();
    let version = |name: &str, chunks: &[u8]| NewVersion {
        path: RepoPath::parse(name).unwrap(),
        size: 1000 * chunks.len() as u64,
        meta: FileMeta::default(),
        chunks: chunks
            .iter()
            .map(|&i| ChunkRef {
                id: id(i),
                len: 1000,
            })
            .collect(),
        created_ns: 1,
        version: 0,
    };
    // A chunk used twice in one file, by two files, and in two commits.
    c.commit_versions("t", vec![version("/a", &[0, 1, 0]), version("/b", &[2, 0])])
        .unwrap();
    c.commit_versions("t", vec![version("/c", &[1])]).unwrap();
    let counts = |c: &RedbCatalog| [0, 1, 2].map(|i| c.refcount("t", &id(i)).unwrap());
    assert_eq!(counts(&c), [3, 2, 1]);
    // One file of a batch names a chunk no pack holds: nothing of the
    // batch is committed, and the error names that file.
    let e = c
        .commit_versions(
            "t",
            vec![
                version("/d", &[2]),
                version("/e", &[1, 9]),
                version("/f", &[0]),
            ],
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity);
    assert!(e.to_string().contains("/e"), "{e}");
    assert_eq!(counts(&c), [3, 2, 1]);
    for p in ["/d", "/e", "/f"] {
        assert!(
            c.latest("t", &RepoPath::parse(p).unwrap())
                .unwrap()
                .is_none()
        );
    }
}

/// Shard objects of every pack on backend 0 (with rs(2,1) over three
/// backends, one per pack).
async fn packs_on_backend_0(repo: &Repository) -> usize {
    asheville_storage::Backend::list(repo.backends()[0].as_ref(), "packs/", None, 10_000)
        .await
        .unwrap()
        .objects
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_small_files_fill_two_packs_at_once_unless_no_permit_is_free() {
    // 700 files of 5 KB: about 3.5 handfuls of small chunks, in packs big
    // enough (8 MiB) that none fills.
    let bodies: Vec<Vec<u8>> = (0..700).map(|i| random(5_000, i)).collect();
    for (in_flight, want_packs) in [(3, 2), (2, 2), (1, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |c| {
            c.pack_size = 8 << 20;
            c.packs_in_flight = in_flight;
        })
        .await;
        let mut batch = t.batch();
        let fill = async {
            for (i, body) in bodies.iter().enumerate() {
                batch
                    .add(&format!("s/{i:03}"), &body[..], FileMeta::default())
                    .await
                    .unwrap();
            }
            batch.commit().await.unwrap()
        };
        // With one permit the second pack must not wait for it forever.
        let committed = tokio::time::timeout(std::time::Duration::from_secs(60), fill)
            .await
            .unwrap_or_else(|_| panic!("packs_in_flight {in_flight}: the batch hung"));
        assert_eq!(committed.len(), 700);
        assert_eq!(
            packs_on_backend_0(&repo).await,
            want_packs,
            "packs_in_flight {in_flight}"
        );
        for i in [0usize, 1, 349, 350, 698, 699] {
            assert_eq!(get(&t, &format!("s/{i:03}")).await, bodies[i], "file {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_tree_with_one_pack_in_flight_overlaps_batches_without_hanging_and_meters_them() {
    use asheville_core::metering::BYTES_STORED_LOGICAL;
    use asheville_storage::metering::{MeterStore, RedbMeterStore};
    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |c| c.packs_in_flight = 1).await;
    // Metered, without a quota: batches commit while the next one fills.
    let meters = Arc::new(RedbMeterStore::open(&dir.path().join("meters.redb")).unwrap());
    let t = t.with_meter(meters.clone());
    let src = small_file_tree(dir.path(), 400);
    let opts = PutOptions {
        batch_files: 60,
        ..PutOptions::default()
    };
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        put_tree(&t, &src, "/tree", opts, &NoProgress),
    )
    .await
    .expect("the put hung")
    .unwrap();
    assert_eq!(r.files, 401);
    let total: u64 = (0..400).map(|i| 1000 + (i * 37) % 5000).sum::<usize>() as u64 + 5_000_001;
    assert_eq!(r.bytes, total);
    assert_eq!(meters.gauge("acme", BYTES_STORED_LOGICAL).unwrap(), total);
    let out = dir.path().join("out");
    get_tree(&t, "/tree", &out, &NoProgress).await.unwrap();
    assert_same_tree(&src, &out);
}

/// Every live file below a directory, in one pass: what a listing and a
/// lookup of each listed path give, with old versions, deleted files and
/// neighbouring names (`d.e`, `d0` sort on either side of `d/`) around.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_under_answers_like_a_listing_and_lookups() {
    use asheville_storage::RepoPath;
    use asheville_storage::catalog::Entry;
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let mut batch = t.batch();
    let names = (0..30)
        .map(|i| format!("d/{i:02}"))
        .chain(["d/sub/x", "d/sub/y/z", "d.e/a", "d0/b", "top", "e/f"].map(String::from));
    for (i, name) in names.enumerate() {
        batch
            .add(&name, &random(200 + i, i as u64)[..], FileMeta::default())
            .await
            .unwrap();
    }
    batch.commit().await.unwrap();
    // More versions than the scan steps over before it seeks, a deleted
    // file with versions of its own, and one rewritten after its deletion.
    for v in 0..12u64 {
        t.put("d/07", &random(90, 100 + v)[..], FileMeta::default())
            .await
            .unwrap();
        t.put("d/08", &random(90, 200 + v)[..], FileMeta::default())
            .await
            .unwrap();
    }
    t.delete("d/08").await.unwrap();
    t.delete("d/20").await.unwrap();
    t.put("d/20", &random(50, 7)[..], FileMeta::default())
        .await
        .unwrap();
    let c = repo.catalog();
    let listed_then_looked_up = |d: &str| {
        let d = RepoPath::parse(d).unwrap();
        let page = c.list("acme", &d, usize::MAX, None, 10_000).unwrap();
        assert!(page.cursor.is_none());
        let paths: Vec<RepoPath> = page
            .entries
            .iter()
            .map(|e| match e {
                Entry::File { path, .. } => RepoPath::parse(path).unwrap(),
                Entry::Dir { path } => panic!("a directory at any depth: {path}"),
            })
            .collect();
        let many = c.latest_many("acme", &paths).unwrap();
        many.into_iter().map(Option::unwrap).collect::<Vec<_>>()
    };
    for d in ["d", "/", "d/sub", "d.e"] {
        let got = c
            .latest_under("acme", &RepoPath::parse(d).unwrap())
            .unwrap();
        assert_eq!(got, listed_then_looked_up(d), "below {d}");
    }
    let under_d = c
        .latest_under("acme", &RepoPath::parse("d").unwrap())
        .unwrap();
    let paths: Vec<&str> = under_d.iter().map(|fv| fv.path.as_str()).collect();
    assert_eq!(paths.len(), 31, "{paths:?}");
    assert!(!paths.contains(&"d/08") && paths.contains(&"d/sub/y/z"));
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("d.e") || p.starts_with("d0"))
    );
    let v = |p: &str| under_d.iter().find(|fv| fv.path == p).unwrap().version;
    assert_eq!((v("d/07"), v("d/20"), v("d/00")), (13, 2, 1));
    assert!(
        c.latest_under("acme", &RepoPath::parse("nothing").unwrap())
            .unwrap()
            .is_empty()
    );
    assert!(
        c.latest_under("other", &RepoPath::parse("/").unwrap())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_catalog_lookups_answer_like_one_by_one() {
    use asheville_storage::RepoPath;
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let mut batch = t.batch();
    for i in 0..40 {
        let body = random(3_000 + i, 500 + i as u64);
        batch
            .add(&format!("d/{i:02}"), &body[..], FileMeta::default())
            .await
            .unwrap();
    }
    batch.commit().await.unwrap();
    // A second version of one file, a deleted one, and a path never written.
    t.put("d/07", &random(100, 1)[..], FileMeta::default())
        .await
        .unwrap();
    t.delete("d/11").await.unwrap();
    let mut names: Vec<String> = (0..40).map(|i| format!("d/{i:02}")).collect();
    names.push("d/never".into());
    names.reverse();
    let paths: Vec<RepoPath> = names.iter().map(|n| RepoPath::parse(n).unwrap()).collect();
    let c = repo.catalog();
    let many = c.latest_many("acme", &paths).unwrap();
    assert_eq!(many.len(), paths.len());
    for (p, got) in paths.iter().zip(&many) {
        assert_eq!(got, &c.latest("acme", p).unwrap(), "{p}");
    }
    assert!(many[0].is_none(), "never written");
    assert!(many[40 - 11].is_none(), "deleted");
    assert_eq!(many[40 - 7].as_ref().unwrap().version, 2);
    // Blob lookups: every chunk of every live file, and an unknown id.
    let mut ids: Vec<_> = many
        .iter()
        .flatten()
        .flat_map(|fv| fv.chunks.iter().map(|c| c.id))
        .collect();
    ids.push(asheville_core::ChunkId::from_bytes([9; 32]));
    let locs = c.blobs("acme", &ids).unwrap();
    for (id, got) in ids.iter().zip(&locs) {
        assert_eq!(got, &c.blob("acme", id).unwrap());
    }
    assert!(locs.last().unwrap().is_none());
    assert!(locs[..locs.len() - 1].iter().all(Option::is_some));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_made_before_the_put_stores_a_single_file_under_its_remote_name() {
    use asheville_storage::tree::{LocalListing, NoProgress, PutOptions, put_listed};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let file = dir.path().join("one.bin");
    let body = random(70_000, 3);
    std::fs::write(&file, &body).unwrap();
    let listing = LocalListing::new(&file).unwrap();
    assert_eq!(listing.len(), 1);
    // A single file needs a name: the root is refused, and nothing is stored.
    let e = put_listed(&t, listing, "/", PutOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(t.all_paths(None, 10).unwrap().is_empty());
    let listing = LocalListing::new(&file).unwrap();
    let r = put_listed(
        &t,
        listing,
        "/kept/as.bin",
        PutOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!((r.files, r.bytes), (1, 70_000));
    assert_eq!(get(&t, "kept/as.bin").await, body);
    // A path that does not exist is an error before any put.
    assert!(LocalListing::new(&dir.path().join("missing")).is_err());
}

#[tokio::test]
async fn a_restore_planned_before_the_key_is_unlocked_restores_the_tree_and_only_for_its_tenant() {
    use asheville_storage::tree::{NoProgress, PutOptions, RestorePlan, get_planned, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let (small, large) = (random(5_000, 1), random(3 << 20, 2));
    std::fs::write(src.join("d/small.txt"), &small).unwrap();
    std::fs::write(src.join("large.bin"), &large).unwrap();
    put_tree(&t, &src, "/tree", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    // Planned from the repository and the tenant's name alone.
    let plan = RestorePlan::new(&repo, "acme", "/tree").await.unwrap();
    let out = dir.path().join("out");
    let r = get_planned(&t, plan, &out, &NoProgress).await.unwrap();
    assert_eq!((r.files, r.bytes), (2, 5_000 + (3 << 20)));
    assert_eq!(std::fs::read(out.join("d/small.txt")).unwrap(), small);
    assert_eq!(std::fs::read(out.join("large.bin")).unwrap(), large);
    // A single file is restored to the local path itself.
    let plan = RestorePlan::new(&repo, "acme", "/tree/large.bin")
        .await
        .unwrap();
    let one = dir.path().join("one.bin");
    get_planned(&t, plan, &one, &NoProgress).await.unwrap();
    assert_eq!(std::fs::read(&one).unwrap(), large);
    // Nothing there: NotFound, before any key is needed.
    let e = RestorePlan::new(&repo, "acme", "/nowhere")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // Another tenant's plan (its namespace is empty here) is refused, and
    // a plan made for another tenant is not restored by this one.
    assert_eq!(
        RestorePlan::new(&repo, "other", "/tree")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let other = repo
        .create_tenant("other", TenantKey::Passphrase("po".into()))
        .await
        .unwrap();
    let plan = RestorePlan::new(&repo, "acme", "/tree").await.unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let e = get_planned(&other, plan, &elsewhere, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(!elsewhere.exists(), "nothing was written");
}

#[tokio::test]
async fn a_restore_with_drop_behind_gives_back_the_same_bytes_and_times() {
    use asheville_storage::tree::{NoProgress, PutOptions, RestorePlan, get_planned, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    // Two files of several 8 MiB windows (40 MiB in all, past the 32 MiB
    // that may wait to be written back), one restored whole (2 MiB), and a
    // small one (batched, written as usual).
    let files = [
        ("a.bin", random(20 << 20, 11)),
        ("d/b.bin", random((20 << 20) + 12_345, 12)),
        ("d/c.bin", random(2 << 20, 13)),
        ("d/small.txt", random(7_000, 14)),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    put_tree(&t, &src, "/tree", PutOptions::default(), &NoProgress)
        .await
        .unwrap();
    let plan = RestorePlan::new(&repo, "acme", "/tree")
        .await
        .unwrap()
        .drop_behind(true);
    assert!(format!("{plan:?}").contains("drop_behind: true"));
    let out = dir.path().join("out");
    let r = get_planned(&t, plan, &out, &NoProgress).await.unwrap();
    assert_eq!(r.files, 4);
    for (name, data) in &files {
        let got = std::fs::read(out.join(name)).unwrap();
        assert!(got == *data, "{name} differs");
        assert_eq!(
            std::fs::metadata(out.join(name))
                .unwrap()
                .modified()
                .unwrap(),
            std::fs::metadata(src.join(name))
                .unwrap()
                .modified()
                .unwrap(),
            "{name}'s mtime"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_large_file_are_read_once_and_each_restored_with_its_own_times_and_mode() {
    use std::os::unix::fs::PermissionsExt;

    use asheville_storage::tree::{NoProgress, PutOptions, get_tree, put_tree};
    let dir = tempfile::tempdir().unwrap();
    let (_repo, faulty, t) = faulty_repo(dir.path()).await;
    let big = random(3_000_000, 5);
    let write = |root: &std::path::Path, name: &str, data: &[u8], mode: u32, secs: u64| {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    };
    // One tree with the file once, one with it three times (other names,
    // modes and times), both with another large file.
    let once = dir.path().join("once");
    let thrice = dir.path().join("thrice");
    for root in [&once, &thrice] {
        write(root, "a/big", &big, 0o644, 1_600_000_000);
        write(root, "other", &random(2_500_000, 6), 0o644, 1_600_000_001);
    }
    write(&thrice, "b/copy", &big, 0o600, 1_500_000_000);
    write(&thrice, "c/d/copy", &big, 0o755, 1_700_000_000);
    for (root, remote) in [(&once, "/once"), (&thrice, "/thrice")] {
        put_tree(&t, root, remote, PutOptions::default(), &NoProgress)
            .await
            .unwrap();
    }
    let mut used = Vec::new();
    for (root, remote) in [(&once, "/once"), (&thrice, "/thrice")] {
        let before = total_reads(&faulty);
        let out = dir.path().join(format!("out{}", remote.replace('/', "-")));
        let r = get_tree(&t, remote, &out, &NoProgress).await.unwrap();
        used.push(total_reads(&faulty) - before);
        assert_eq!(
            r.bytes,
            std::fs::metadata(root.join("a/big")).unwrap().len() * (r.files - 1) + 2_500_000
        );
        assert_same_tree(root, &out);
    }
    // The copies cost no reads: their bytes come from the one read.
    assert_eq!(
        used[0], used[1],
        "backend reads: once {}, thrice {}",
        used[0], used[1]
    );
    assert!(used[0] > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_repository_makes_the_shard_directories_of_its_local_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    for i in 0..3 {
        let packs = dir.path().join(format!("backend-{i}/packs"));
        let mut names: Vec<String> = std::fs::read_dir(&packs)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert!(e.file_type().unwrap().is_dir());
                e.file_name().into_string().unwrap()
            })
            .collect();
        names.sort();
        let want: Vec<String> = (0..=255u8).map(|b| format!("{b:02x}")).collect();
        assert_eq!(names, want, "{}", packs.display());
    }
    // Empty directories are no objects, and shards go into them.
    let listed = asheville_storage::Backend::list(repo.backends()[0].as_ref(), "packs/", None, 10)
        .await
        .unwrap();
    assert!(listed.objects.is_empty(), "{:?}", listed.objects);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    t.put("f", &data[..], FileMeta::default()).await.unwrap();
    assert_eq!(get(&t, "f").await, data);
    let listed = asheville_storage::Backend::list(repo.backends()[0].as_ref(), "packs/", None, 10)
        .await
        .unwrap();
    assert!(!listed.objects.is_empty());
    // A repository on memory backends has no directories to make.
    let mut config = small_config(dir.path(), 3, "rs(2,1)");
    for b in &mut config.backends {
        b.kind = asheville_storage::BackendKind::Memory;
    }
    Repository::create(&dir.path().join("m.redb"), config)
        .await
        .unwrap();
}

/// Small files sealed ahead are only copied into their pack: they fill one
/// pack at a time, where small files still to be compressed alternate
/// handfuls between two packs sealing on two threads.
#[tokio::test]
async fn small_files_sealed_ahead_fill_one_pack_at_a_time() {
    use asheville_storage::repository::LocalFile;
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |c| c.pack_size = 8 << 20).await;
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 3 MB of files under the chunker's min (16 KiB), random so that they
    // are stored as they are: three handfuls' worth, in a pack's room.
    let paths: Vec<_> = (0..300u64)
        .map(|i| {
            let p = src.join(format!("f{i:03}"));
            std::fs::write(&p, random(10_000, 100 + i)).unwrap();
            p
        })
        .collect();
    let packs = || {
        let blobs = repo.catalog().tenant_blobs("acme").unwrap();
        let packs: std::collections::HashSet<_> = blobs.iter().map(|b| b.1.pack).collect();
        (blobs.len(), packs.len())
    };
    // Prepared (sealed ahead): one pack.
    let mut batch = t.batch();
    for group in paths.chunks(64) {
        for (p, f) in group
            .iter()
            .zip(t.open_group(group.to_vec()).await.unwrap())
        {
            let f = f.unwrap();
            assert!(matches!(f, LocalFile::Prepared { .. }), "{f:?}");
            let name = p.file_name().unwrap().to_string_lossy();
            batch.add_local(&format!("sealed/{name}"), f).await.unwrap();
        }
    }
    batch.commit().await.unwrap();
    assert_eq!(packs(), (300, 1));
    // The same sizes read and sealed by the batch (new bodies, so that
    // they are stored again): two packs, sealed side by side.
    let mut batch = t.batch();
    for (i, p) in paths.iter().enumerate() {
        std::fs::write(p, random(10_000, 1_000 + i as u64)).unwrap();
        let f = LocalFile::open(p.clone()).await.unwrap();
        assert!(!matches!(f, LocalFile::Prepared { .. }));
        batch.add_local(&format!("plain/f{i:03}"), f).await.unwrap();
    }
    batch.commit().await.unwrap();
    assert_eq!(packs(), (600, 3));
    for (i, p) in paths.iter().enumerate().step_by(37) {
        let body = std::fs::read(p).unwrap();
        assert_eq!(get(&t, &format!("plain/f{i:03}")).await, body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_prepared_ahead_are_stored_once_read_back_and_kept_to_their_tenant() {
    use asheville_storage::repository::LocalFile;
    let dir = tempfile::tempdir().unwrap();
    let (repo, t) = temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // One chunk twice (sealed once), several chunks (cut ahead: the test
    // chunker's min is 16 KiB), and an empty file.
    let small = random(10_000, 1);
    let mid = random(700_000, 2);
    let files: [(&str, &[u8]); 4] = [("a", &small), ("b", &small), ("c", &mid), ("d", &[])];
    for (name, body) in files {
        std::fs::write(src.join(name), body).unwrap();
    }
    let paths: Vec<_> = files.iter().map(|(n, _)| src.join(n)).collect();
    let mid_chunks = asheville_core::chunk_slice(&repo.config().chunker, &mid)
        .unwrap()
        .len();
    assert!(mid_chunks > 1);
    let blobs = || repo.catalog().tenant_blobs("acme").unwrap().len();
    for round in 0..2 {
        let opened = t.open_group(paths.clone()).await.unwrap();
        let mut batch = t.batch();
        for ((name, _), f) in files.iter().zip(opened) {
            let f = f.unwrap();
            assert!(matches!(f, LocalFile::Prepared { .. }), "{name}: {f:?}");
            batch.add_local(&format!("p/{name}"), f).await.unwrap();
        }
        batch.commit().await.unwrap();
        // The second round finds every chunk stored and stores none again.
        assert_eq!(blobs(), 1 + mid_chunks, "round {round}");
        for (name, body) in files {
            assert_eq!(get(&t, &format!("p/{name}")).await, body, "round {round}");
        }
    }
    // Another tenant's batch refuses what this tenant prepared: its chunk
    // ids and blobs are of this tenant's keys.
    let other = repo
        .create_tenant("other", TenantKey::Passphrase("po".into()))
        .await
        .unwrap();
    let mut f = t.open_group(vec![paths[0].clone()]).await.unwrap();
    let e = other
        .batch()
        .add_local("p/a", f.pop().unwrap().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}
