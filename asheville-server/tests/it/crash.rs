//! Crash during ingest: an `asheville put` child is killed with SIGKILL at
//! random moments. After each kill the repository opens, every visible file
//! is identical to its source, and every chunk of every visible version is a
//! committed blob whose pack's shards all exist (no dangling references).
//!
//! `ASHEVILLE_CRASH_KILLS` (default 50) sets the number of kills.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use asheville_storage::{Entry, Repository, TenantKey};

fn source(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut x: u64 = 0x9e37_79b9;
    for i in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = if i % 4 == 0 {
            200_000 + (x % 1_800_000) as usize
        } else {
            (x % 20_000) as usize
        };
        let mut data = vec![0u8; len];
        let mut y = x | 1;
        for b in data.iter_mut() {
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            *b = y as u8;
        }
        let rel = format!("d{}/f{i:02}", i % 5);
        std::fs::create_dir_all(root.join(format!("d{}", i % 5))).unwrap();
        std::fs::write(root.join(&rel), &data).unwrap();
        files.push((rel, data));
    }
    files
}

async fn verify(data: &Path, tenant: &str, files: &[(String, Vec<u8>)]) -> usize {
    let repo = Repository::open(&data.join("catalog.redb"))
        .await
        .expect("repository opens after a crash");
    let t = match repo
        .tenant(tenant, TenantKey::Passphrase("pw".into()))
        .await
    {
        Ok(t) => t,
        // Killed before the tenant was committed: nothing may be visible.
        Err(e) if e.kind() == asheville_storage::ErrorKind::NotFound => return 0,
        Err(e) => panic!("{e}"),
    };
    let page = t.list("/", usize::MAX, None, 100_000).unwrap();
    let mut verified = 0;
    for e in page.entries {
        let Entry::File { path, .. } = e else {
            continue;
        };
        let rel = path.split_once('/').map(|(_, r)| r).unwrap();
        let want = &files
            .iter()
            .find(|(p, _)| p == rel)
            .expect("a known file")
            .1;
        let mut got = Vec::new();
        t.get(&path, &mut got)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(&got, want, "{path} differs from its source");
        // No dangling references: every chunk's pack is committed and all
        // its shards are on their backends.
        for c in t.stat(&path).unwrap().chunks {
            let loc = repo
                .catalog()
                .blob(tenant, &c.id)
                .unwrap()
                .expect("blob committed");
            let pack = repo
                .catalog()
                .pack(&loc.pack)
                .unwrap()
                .expect("pack committed");
            for (i, name) in pack.shards.iter().enumerate() {
                let b = repo.backends().iter().find(|b| b.name() == name).unwrap();
                let key = asheville_storage::repository::shard_key(&pack.id, i);
                b.head(&key)
                    .await
                    .unwrap_or_else(|e| panic!("shard {key} missing: {e}"));
            }
        }
        verified += 1;
    }
    verified
}

fn put(data: &Path, src: &Path, tenant: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_asheville"))
        .args([
            "put",
            "--batch-files",
            "7",
            "--tenant",
            tenant,
            src.to_str().unwrap(),
            "/run",
        ])
        .env("ASHEVILLE_DATA", data)
        .env("ASHEVILLE_PASSPHRASE", "pw")
        .env("ASHEVILLE_INSECURE_FAST_KDF", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ingest_never_shows_half_written_files() {
    let kills: usize = std::env::var("ASHEVILLE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = source(&src);
    let data = tmp.path().join("repo");
    // How long an uninterrupted run takes, to spread the kills over it.
    let started = std::time::Instant::now();
    let o = put(&data, &src, "warmup").wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full_ms = (started.elapsed().as_millis() as u64).max(10);
    assert_eq!(verify(&data, "warmup", &files).await, files.len());

    // Kill within the first 80% of a normal run's time.
    let mut clock = KillClock::new(full_ms * 4 / 5, 42);
    let (mut killed, mut verified, mut partial, mut runs) = (0, 0, 0, 0);
    // Run until `kills` runs were really interrupted (a run that finished
    // before its kill still gets verified); give up after 4× as many runs.
    for i in 0..kills * 4 {
        if killed >= kills {
            break;
        }
        runs += 1;
        // Each run is its own tenant: no dedup, so every run uploads packs.
        let tenant = format!("t{i}");
        let mut child = put(&data, &src, &tenant);
        std::thread::sleep(clock.next_delay());
        killed += usize::from(clock.record(child.try_wait().unwrap().is_none()));
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        let n = verify(&data, &tenant, &files).await;
        partial += usize::from(n > 0 && n < files.len());
        verified += n;
    }
    eprintln!(
        "crash test: {runs} runs over a {full_ms} ms ingest, {killed} killed mid-ingest, \
         {partial} left some committed batches, {verified} visible files verified identical"
    );
    assert!(
        killed >= kills,
        "only {killed} of {runs} runs were really interrupted"
    );
    // The repository is still fully usable: a complete run succeeds.
    let o = put(&data, &src, "final").wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(verify(&data, "final", &files).await, files.len());
}

/// A repository with many small packs, made in-process; returns the live
/// files. `garbage` files are written, deleted and forgotten (dead packs),
/// and most files of shared packs die too (packs to repack).
async fn many_packs(data: &Path, seed: u64, garbage: bool) -> Vec<(String, Vec<u8>)> {
    use asheville_storage::{FileMeta, RepoConfig, Retention};
    let cat = data.join("catalog.redb");
    let repo = if cat.exists() {
        Repository::open(&cat).await.unwrap()
    } else {
        let mut c = RepoConfig::local(data, 6, "rs(4,2)".parse().unwrap());
        c.kdf = asheville_core::KdfParams::INSECURE_FAST_FOR_TESTS;
        c.chunker = asheville_core::ChunkerConfig::new(16 << 10, 64 << 10, 256 << 10).unwrap();
        c.pack_size = 512 << 10;
        Repository::create(&cat, c).await.unwrap()
    };
    let t = match repo
        .tenant("default", TenantKey::Passphrase("pw".into()))
        .await
    {
        Ok(t) => t,
        Err(_) => repo
            .create_tenant("default", TenantKey::Passphrase("pw".into()))
            .await
            .unwrap(),
    };
    let mut live = Vec::new();
    let mut batch = t.batch();
    for i in 0..40u64 {
        let mut x = (seed * 1000 + i) | 1;
        let data: Vec<u8> = (0..60_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let path = format!("s{seed}/f{i:02}");
        batch
            .add(&path, &data[..], FileMeta::default())
            .await
            .unwrap();
        if !garbage || i % 4 == 0 {
            live.push((path, data));
        }
    }
    batch.commit().await.unwrap();
    if garbage {
        for i in 0..40u64 {
            if i % 4 != 0 {
                t.delete(&format!("s{seed}/f{i:02}")).await.unwrap();
            }
        }
        t.apply_retention(
            &format!("s{seed}"),
            Retention {
                keep_last: Some(0),
                keep_within_ns: None,
            },
        )
        .await
        .unwrap();
    }
    live
}

async fn verify_all(
    data: &Path,
    files: &[(String, Vec<u8>)],
) -> asheville_storage::maintenance::CheckReport {
    let repo = Repository::open(&data.join("catalog.redb"))
        .await
        .expect("opens after a crash");
    let t = repo
        .tenant("default", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    for (p, want) in files {
        let mut got = Vec::new();
        t.get(p, &mut got)
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(&got, want, "{p}");
    }
    repo.check(false, &asheville_storage::tree::NoProgress)
        .await
        .unwrap()
}

fn cli(data: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_asheville"))
        .args(args)
        .env("ASHEVILLE_DATA", data)
        .env("ASHEVILLE_PASSPHRASE", "pw")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// When to kill the next run: a random moment within the time a whole
/// run takes. It starts from one timed run and shrinks by a quarter each
/// time a run ends before its kill, so that a slow timed run (other tests
/// share the two cores) does not send most kills after the end (one CI
/// run timed a 17 ms gc at 223 ms, and only 42 of 300 kills landed).
struct KillClock {
    window_ms: u64,
    rng: u64,
}

impl KillClock {
    fn new(full_ms: u64, seed: u64) -> KillClock {
        KillClock {
            window_ms: full_ms.max(5),
            rng: seed,
        }
    }

    fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(self.rng % self.window_ms)
    }

    /// Notes whether the run was still going when it was killed; returns
    /// that.
    fn record(&mut self, interrupted: bool) -> bool {
        if !interrupted {
            self.window_ms = (self.window_ms * 3 / 4).max(5);
        }
        interrupted
    }
}

fn kills() -> usize {
    std::env::var("ASHEVILLE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

/// gc killed at random moments never loses a live file and never leaves a
/// record pointing at missing shards (orphans are allowed; a later gc or
/// check deals with them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gc_never_loses_live_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("repo");
    let mut files = many_packs(&data, 0, true).await;
    let started = std::time::Instant::now();
    assert!(
        cli(&data, &["gc", "--grace", "0s"])
            .wait()
            .unwrap()
            .success()
    );
    let full_ms = (started.elapsed().as_millis() as u64).max(10);
    let (mut killed, mut runs, mut clock) = (0, 0, KillClock::new(full_ms, 99));
    while killed < kills() && runs < kills() * 6 {
        runs += 1;
        files.extend(many_packs(&data, runs as u64, true).await);
        let mut child = cli(&data, &["gc", "--grace", "0s"]);
        std::thread::sleep(clock.next_delay());
        killed += usize::from(clock.record(child.try_wait().unwrap().is_none()));
        child.kill().ok();
        child.wait().unwrap();
        let report = verify_all(&data, &files).await;
        assert!(
            report.is_healthy(),
            "after kill {killed}: {:?}",
            report.problems
        );
    }
    eprintln!(
        "gc crash test: {runs} runs over a {full_ms} ms gc, {killed} killed mid-run, all live files (finally {}) verified after each",
        files.len()
    );
    assert!(
        killed >= kills(),
        "only {killed} of {runs} runs interrupted"
    );
    // Finishing runs leave no garbage but orphans from killed runs.
    assert!(
        cli(&data, &["gc", "--grace", "0s"])
            .wait()
            .unwrap()
            .success()
    );
    assert!(
        cli(&data, &["gc", "--grace", "0s"])
            .wait()
            .unwrap()
            .success()
    );
    assert!(verify_all(&data, &files).await.is_healthy());
}

/// repair killed at random moments: every file stays readable, nothing is
/// corrupt, and a final repair makes `check --read-data` clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_repair_is_safe_to_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("repo");
    let mut files = Vec::new();
    for s in 0..4 {
        files.extend(many_packs(&data, s, false).await);
    }
    std::fs::remove_dir_all(data.join("backend-1")).unwrap();
    std::fs::remove_dir_all(data.join("backend-4")).unwrap();
    // How long a whole repair of this damage takes, to spread the kills.
    let started = std::time::Instant::now();
    assert!(cli(&data, &["repair"]).wait().unwrap().success());
    let full_ms = (started.elapsed().as_millis() as u64).max(10);
    let (mut killed, mut runs, mut clock) = (0, 0, KillClock::new(full_ms, 7));
    while killed < kills() && runs < kills() * 6 {
        runs += 1;
        std::fs::remove_dir_all(data.join(format!("backend-{}", runs % 6))).ok();
        let mut child = cli(&data, &["repair"]);
        std::thread::sleep(clock.next_delay());
        killed += usize::from(clock.record(child.try_wait().unwrap().is_none()));
        child.kill().ok();
        child.wait().unwrap();
        let report = verify_all(&data, &files).await;
        assert!(
            report
                .problems
                .iter()
                .all(|p| p.kind != asheville_storage::maintenance::ProblemKind::CorruptShard),
            "a killed repair never leaves a corrupt shard: {:?}",
            report.problems
        );
        // Finish the repair before the next backend is lost (rs(4,2)
        // tolerates two losses, not one more every round).
        assert!(cli(&data, &["repair"]).wait().unwrap().success());
    }
    eprintln!(
        "repair crash test: {runs} runs over a {full_ms} ms repair, {killed} killed mid-run, {} files verified each time",
        files.len()
    );
    assert!(
        killed >= kills(),
        "only {killed} of {runs} runs interrupted"
    );
    let repo = Repository::open(&data.join("catalog.redb")).await.unwrap();
    assert!(
        repo.check(true, &asheville_storage::tree::NoProgress)
            .await
            .unwrap()
            .problems
            .is_empty()
    );
}
