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

    let mut rng: u64 = 42;
    let (mut killed, mut verified, mut partial, mut runs) = (0, 0, 0, 0);
    // Run until `kills` runs were really interrupted (a run that finished
    // before its kill still gets verified); give up after 4× as many runs.
    for i in 0..kills * 4 {
        if killed >= kills {
            break;
        }
        runs += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Each run is its own tenant: no dedup, so every run uploads packs.
        let tenant = format!("t{i}");
        let mut child = put(&data, &src, &tenant);
        // Kill within the first 80% of a normal run's time.
        std::thread::sleep(Duration::from_millis(rng % (full_ms * 4 / 5).max(5)));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
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
