//! Whole-repository benchmark: put and get of a mixed directory.
//!
//! `cargo bench -p asheville-benches --bench repo`
//!
//! The dataset (fixed seed, cached in `target/bench-data/`): large random
//! files of 1–64 MiB, many small files of 1–16 KiB (half text, half
//! random), and duplicated copies of some large files. About 1 GiB at
//! `ASHEVILLE_BENCH_SCALE=1` (the default). Runs `rs(4,2)` over 6 local
//! backends in a temp dir, and `none` over 1 for comparison. Each run is a
//! process of its own (this bench, started again); peak RSS is its VmHWM,
//! reset before each phase. After the get, the
//! same tree is restored again with drop-behind (large files written back
//! and dropped from the page cache as they are written, `asheville get
//! --drop-behind`), into a second directory.
//!
//! Each policy runs `ASHEVILLE_BENCH_ROUNDS` times (default 3), in turn
//! with the others; a row per run, then each figure's median per policy.
//! Every round starts with a probe of the disk under the temp dir (1 GiB
//! written and read back with `O_DIRECT`, 4 MiB at a time), printed below
//! the table: on a shared VM the disk's speed drifts between rounds, and
//! put and get of local backends follow it.
//!
//! Knobs: `ASHEVILLE_BENCH_POLICIES="rs(4,2) none"` (space-separated; `rs(k,m)`
//! gets k+m backends, `replicas(n)` n, `none` one) and `ASHEVILLE_BENCH_ZSTD`
//! (`0` turns compression off, `N` uses level N; the default is the
//! repository default, zstd level 3). The temp dir is `TMPDIR`'s: set
//! `TMPDIR=/dev/shm` to take the disk out of the figures. On a disk the
//! local backends write shards with `O_DIRECT`, so get reads them from the
//! disk, not from the page cache.
//!
//! The temp dirs are removed only at the end, after every policy ran: on ext4
//! without a journal the inode allocator skips each inode freed in the last
//! 1–6 minutes (`recently_deleted` in fs/ext4/ialloc.c), so a restore of
//! 20,000 files right after 20,000 were deleted spends seconds in the kernel.
//! For the same reason, on such a filesystem leave 6 minutes between runs,
//! or set `ASHEVILLE_BENCH_KEEP=1` to keep every run's temp dir (it prints
//! their paths) and remove them all later. Each run's temp dir holds its
//! repository and two restores: about 4 GiB for `rs(4,2)` and 3 GiB for
//! `none` at scale 1, so the defaults need ~21 GiB free.

use std::path::{Path, PathBuf};
use std::time::Instant;

use asheville_benches::{random_data, text_data};
use asheville_core::KdfParams;
use asheville_storage::tree::{self, NoProgress, PutOptions};
use asheville_storage::{RepoConfig, Repository, TenantKey};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_f(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Makes (or reuses) the dataset; returns its root, file count and bytes.
fn dataset(scale: f64) -> std::io::Result<(PathBuf, u64, u64)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/bench-data/mixed-{scale}"));
    // Not `with_extension`: it would take the ".1" of "mixed-0.1" for an
    // extension, and every fractional scale would share one marker.
    let done = root.with_file_name(format!("mixed-{scale}.complete"));
    let (mut files, mut bytes) = (0u64, 0u64);
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        let mut rng = Rng(0x5eed);
        let large_budget = (600.0 * scale * (1 << 20) as f64) as u64;
        let mut large = Vec::new();
        let mut used = 0;
        let mut i = 0;
        while used < large_budget {
            let len = rng
                .range(1 << 20, 64 << 20)
                .min(large_budget - used + (1 << 20));
            let p = root.join(format!("large/{:02}/file-{i:04}.bin", i % 7));
            std::fs::create_dir_all(p.parent().unwrap_or(&root))?;
            std::fs::write(&p, random_data(len as usize, rng.next()))?;
            large.push(p);
            used += len;
            i += 1;
        }
        let small = (20_000.0 * scale) as u64;
        for j in 0..small {
            let len = rng.range(1 << 10, 16 << 10) as usize;
            let data = if j % 2 == 0 {
                text_data(len, rng.next())
            } else {
                random_data(len, rng.next())
            };
            let p = root.join(format!(
                "small/{:03}/f{j:05}.{}",
                j / 200,
                if j % 2 == 0 { "txt" } else { "bin" }
            ));
            std::fs::create_dir_all(p.parent().unwrap_or(&root))?;
            std::fs::write(&p, data)?;
        }
        let dup_budget = (200.0 * scale * (1 << 20) as f64) as u64;
        let mut dup = 0;
        let mut k = 0;
        while dup < dup_budget && !large.is_empty() {
            let src = &large[k % large.len()];
            let p = root.join(format!("dups/copy-{k:03}.bin"));
            std::fs::create_dir_all(p.parent().unwrap_or(&root))?;
            dup += std::fs::copy(src, &p)?;
            k += 1;
        }
        std::fs::write(&done, b"")?;
    }
    count(&root, &mut files, &mut bytes)?;
    Ok((root, files, bytes))
}

fn count(p: &Path, files: &mut u64, bytes: &mut u64) -> std::io::Result<()> {
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            count(&e.path(), files, bytes)?;
        } else {
            *files += 1;
            *bytes += m.len();
        }
    }
    Ok(())
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn dir_size(p: &Path) -> u64 {
    let (mut f, mut b) = (0, 0);
    let _ = count(p, &mut f, &mut b);
    b
}

/// Reads every file once, so that runs start from a warm page cache (as
/// the peers benchmark does).
fn warm_page_cache(p: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(p)? {
        let e = e?;
        if e.metadata()?.is_dir() {
            warm_page_cache(&e.path())?;
        } else {
            std::hint::black_box(std::fs::read(e.path())?.len());
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The same runtime shape as the `asheville` CLI.
    asheville_storage::runtime()?.block_on(run())
}

/// Set (to a policy) in the child process that makes one run.
const RUN_ENV: &str = "ASHEVILLE_BENCH_RUN";

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let scale = env_f("ASHEVILLE_BENCH_SCALE", 1.0);
    let t0 = Instant::now();
    let (src, files, bytes) = dataset(scale)?;
    if let Ok(policy) = std::env::var(RUN_ENV) {
        let (row, work) = run_policy(&policy, &src, files, bytes).await?;
        println!("{}\t{}", row.tsv(), work.display());
        return Ok(());
    }
    warm_page_cache(&src)?;
    eprintln!(
        "dataset: {files} files, {:.0} MiB ({:.1} s to prepare)",
        bytes as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| redundancy | backends | put MB/s | put files/s | put peak RSS MiB | get MB/s | get files/s | get peak RSS MiB | get --drop-behind MB/s | stored MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let policies =
        std::env::var("ASHEVILLE_BENCH_POLICIES").unwrap_or_else(|_| "rs(4,2) none".into());
    let rounds = env_f("ASHEVILLE_BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let mut done = Vec::new();
    let mut rows: Vec<(String, Row)> = Vec::new();
    let mut disk: Vec<(f64, f64)> = Vec::new();
    for round in 1..=rounds {
        // The disk of the moment (it drifts on a shared VM), next to the
        // runs it served.
        let probe_dir = tempfile_dir()?;
        if let Some(d) = disk_probe(&probe_dir) {
            disk.push(d);
        }
        let _ = std::fs::remove_dir_all(&probe_dir);
        for policy in policies.split_whitespace() {
            let (row, work) = match run_child(policy) {
                Ok(run) => run,
                Err(e) => {
                    // The runs before it hold gigabytes: not left behind.
                    release(done);
                    return Err(e);
                }
            };
            println!("{}", row.line(&format!("{policy} #{round}")));
            rows.push((policy.to_owned(), row));
            done.push(work);
        }
    }
    if rounds > 1 {
        for policy in policies.split_whitespace() {
            let of: Vec<&Row> = rows
                .iter()
                .filter(|(p, _)| p == policy)
                .map(|(_, r)| r)
                .collect();
            println!("{}", Row::median(&of).line(&format!("**{policy} median**")));
        }
    }
    if !disk.is_empty() {
        let (w, r): (Vec<f64>, Vec<f64>) = disk.iter().copied().unzip();
        println!();
        println!(
            "disk (O_DIRECT, 1 GiB in 4 MiB requests, once per round): write {} MB/s, read {} MB/s",
            list(&w, ", "),
            list(&r, ", ")
        );
    }
    println!();
    release(done);
    Ok(())
}

/// Removes the runs' temp dirs, or with `ASHEVILLE_BENCH_KEEP` prints
/// where they are. After a removal it touches [`DELETED_STAMP`] in the
/// temp dir, so that `benches/peers/run.sh` (whose work dir is under the
/// same temp dir by default) waits before timing restores next to the
/// tens of thousands of inodes just freed (see README, "Benchmarks").
fn release(done: Vec<PathBuf>) {
    let keep = std::env::var_os("ASHEVILLE_BENCH_KEEP").is_some();
    let mut removed = false;
    for work in done {
        if keep {
            eprintln!("kept {}", work.display());
        } else {
            removed |= std::fs::remove_dir_all(&work).is_ok();
        }
    }
    if removed {
        let stamp = std::env::temp_dir().join(DELETED_STAMP);
        if std::fs::write(&stamp, b"").is_ok() {
            eprintln!(
                "removed the runs' temp dirs; on ext4 without a journal, restores timed on this filesystem in the next 6 minutes run slower ({} marks when; benches/peers/run.sh waits)",
                stamp.display()
            );
        }
    }
}

/// The file whose mtime says when a bench last deleted many files under
/// the temp dir; `benches/peers/run.sh` reads it too.
const DELETED_STAMP: &str = "asheville-mass-delete.stamp";

/// One run's figures.
#[derive(Clone, Copy)]
struct Row {
    backends: usize,
    /// In the table's column order: put MB/s, put files/s, put peak RSS
    /// MiB, get MB/s, get files/s, get peak RSS MiB, get --drop-behind
    /// MB/s, stored MiB.
    figures: [f64; 8],
}

impl Row {
    /// The row as the child process prints it.
    fn tsv(&self) -> String {
        std::iter::once(self.backends.to_string())
            .chain(self.figures.iter().map(f64::to_string))
            .collect::<Vec<_>>()
            .join("\t")
    }

    /// A row from [`Row::tsv`], and what follows it.
    fn from_tsv(line: &str) -> Option<(Row, &str)> {
        let mut f = line.trim_end().splitn(10, '\t');
        let backends = f.next()?.parse().ok()?;
        let mut figures = [0.0; 8];
        for x in &mut figures {
            *x = f.next()?.parse().ok()?;
        }
        Some((Row { backends, figures }, f.next()?))
    }

    /// The row in the markdown table.
    fn line(&self, label: &str) -> String {
        format!(
            "| {label} | {} | {} |",
            self.backends,
            list(&self.figures, " | ")
        )
    }

    /// Each figure's median over `rows` (the upper one of an even count).
    fn median(rows: &[&Row]) -> Row {
        let mut figures = [f64::NAN; 8];
        for (i, m) in figures.iter_mut().enumerate() {
            let mut v: Vec<f64> = rows.iter().map(|r| r.figures[i]).collect();
            v.sort_by(f64::total_cmp);
            *m = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        }
        Row {
            backends: rows.first().map_or(0, |r| r.backends),
            figures,
        }
    }
}

/// The figures rounded, joined by `sep`.
fn list(v: &[f64], sep: &str) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// No disk probe off Linux (`O_DIRECT` is Linux's).
#[cfg(not(target_os = "linux"))]
fn disk_probe(_dir: &Path) -> Option<(f64, f64)> {
    None
}

/// Writes 1 GiB into `dir` around the page cache (`O_DIRECT`, 4 MiB at a
/// time, synced) and reads it back the same way: (write MB/s, read MB/s),
/// or `None` where the filesystem refuses `O_DIRECT` (tmpfs).
#[cfg(target_os = "linux")]
fn disk_probe(dir: &Path) -> Option<(f64, f64)> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4 << 20;
    const COUNT: usize = 256;
    let path = dir.join("disk-probe");
    let mut buf = vec![0x5au8; BLOCK + 4096];
    let at = buf.as_ptr().align_offset(4096);
    let block = &mut buf[at..at + BLOCK];
    let t = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .ok()?;
    for _ in 0..COUNT {
        f.write_all(block).ok()?;
    }
    f.sync_all().ok()?;
    let w = (BLOCK * COUNT) as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop(f);
    let t = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .ok()?;
    let mut got = 0;
    loop {
        match f.read(block).ok()? {
            0 => break,
            n => got += n,
        }
    }
    let r = got as f64 / t.elapsed().as_secs_f64() / 1e6;
    let _ = std::fs::remove_file(&path);
    Some((w, r))
}

/// One run of `policy` in a process of its own (this bench again, with
/// [`RUN_ENV`] set), as the CLI runs: its peak RSS is its own, not
/// raised by what the runs before left in this process's heap.
fn run_child(policy: &str) -> Result<(Row, PathBuf), Box<dyn std::error::Error>> {
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child.env(RUN_ENV, policy);
    // Huge pages for malloc, as the CLI asks for them for `get`.
    if let Some(t) = asheville_server::huge_page_env() {
        child.env("GLIBC_TUNABLES", t);
    }
    let out = child.stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("the run of {policy} failed: {}", out.status).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (row, work) = text
        .lines()
        .find_map(Row::from_tsv)
        .ok_or_else(|| format!("the run of {policy} printed no figures: {text}"))?;
    Ok((row, PathBuf::from(work)))
}

/// Puts `src` into a new repository of `policy` in a temp dir, gets it
/// back, and again with drop-behind; returns the figures and the temp dir.
async fn run_policy(
    policy: &str,
    src: &Path,
    files: u64,
    bytes: u64,
) -> Result<(Row, PathBuf), Box<dyn std::error::Error>> {
    let redundancy: asheville_core::Redundancy = policy.parse()?;
    let n = redundancy.total_shards();
    let work = tempfile_dir()?;
    let mut config = RepoConfig::local(work.join("repo"), n, redundancy);
    if let Ok(level) = std::env::var("ASHEVILLE_BENCH_ZSTD") {
        config.compression = match level.parse::<i8>()? {
            0 => asheville_core::Compression::None,
            level => asheville_core::Compression::Zstd { level },
        };
    }
    config.kdf = KdfParams::INSECURE_FAST_FOR_TESTS;
    config.cache_bytes = 0;
    let repo = Repository::create(&work.join("repo/catalog.redb"), config).await?;
    let t = repo
        .create_tenant("bench", TenantKey::Passphrase("bench".into()))
        .await?;
    reset_peak_rss();
    let put = tree::put_tree(&t, src, "data", PutOptions::default(), &NoProgress).await?;
    let put_rss = peak_rss_mib();
    let out = work.join("restored");
    reset_peak_rss();
    let get = tree::get_tree(&t, "data", &out, &NoProgress).await?;
    let get_rss = peak_rss_mib();
    assert_eq!(
        (get.files, get.bytes),
        (files, bytes),
        "restore is complete"
    );
    // Again, with large files written back and dropped from the page
    // cache as they are written (`asheville get --drop-behind`).
    let plan = tree::RestorePlan::new(&repo, "bench", "data")
        .await?
        .drop_behind(true);
    let behind = tree::get_planned(&t, plan, &work.join("restored-db"), &NoProgress).await?;
    assert_eq!((behind.files, behind.bytes), (files, bytes));
    let stored = dir_size(&work.join("repo"));
    drop((t, repo));
    let row = Row {
        backends: n,
        figures: [
            put.bytes as f64 / put.seconds / 1e6,
            put.files as f64 / put.seconds,
            put_rss,
            get.bytes as f64 / get.seconds / 1e6,
            get.files as f64 / get.seconds,
            get_rss,
            behind.bytes as f64 / behind.seconds / 1e6,
            stored as f64 / 1048576.0,
        ],
    };
    Ok((row, work))
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!(
        "asheville-bench-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
