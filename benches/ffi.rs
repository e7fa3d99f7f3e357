//! put / get of a 256 MiB buffer through the C ABI and the Python module
//! against the Rust API,
//! side by side, 5 rounds each (alternating which goes first, `sync` before
//! each), medians.
//!
//! `cargo bench -p asheville-benches --bench ffi` (`ASHEVILLE_BENCH_MB`,
//! default 256). Compiles `bindings/c/bench/bench.c` with the system `cc`
//! against the `libasheville_c.so` built for this bench. Both sides use the
//! same defaults: three local backends, `rs(2,1)`, in a temp dir, and
//! each runs in a fresh process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use asheville_storage::{FileMeta, RepoConfig, Repository, TenantKey};

fn times(stdout: &[u8]) -> Vec<f64> {
    String::from_utf8_lossy(stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The Rust side, in a fresh process like the C side (so both pay the
/// same page faults for new memory): prints "put <s> get <s>".
fn rust_child(dir: &str, mb: usize) {
    let rt = asheville_storage::runtime().expect("runtime");
    let data = asheville_benches::random_data(mb << 20, 7);
    let dir = PathBuf::from(dir);
    rt.block_on(async {
        std::fs::create_dir_all(&dir).expect("dir");
        let repo = Repository::create(
            &dir.join("catalog.redb"),
            RepoConfig::local(&dir, 3, "rs(2,1)".parse().expect("rs")),
        )
        .await
        .expect("repo");
        let t = repo
            .create_tenant("bench", TenantKey::Passphrase("pw".into()))
            .await
            .expect("tenant");
        let t0 = Instant::now();
        t.put("/big", &data[..], FileMeta::default())
            .await
            .expect("put");
        let put = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let mut back = Vec::new();
        t.get("/big", &mut back).await.expect("get");
        let get = t0.elapsed().as_secs_f64();
        assert!(back == data);
        println!("put {put:.4} get {get:.4}");
    });
}

fn main() {
    if let Ok(dir) = std::env::var("ASHEVILLE_FFI_CHILD") {
        let mb = std::env::var("ASHEVILLE_BENCH_MB")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(256);
        rust_child(&dir, mb);
        return;
    }
    let mb: usize = std::env::var("ASHEVILLE_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let deps = std::env::current_exe()
        .expect("exe")
        .parent()
        .expect("deps dir")
        .to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bindings/c");
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = tmp.path().join("bench");
    let ok = Command::new("cc")
        .args(["-O2", "-std=c11", "-I"])
        .arg(root.join("include"))
        .arg(root.join("bench/bench.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", deps.display()))
        .arg("-lasheville_c")
        .arg(format!("-Wl,-rpath,{}", deps.display()))
        .status()
        .expect("cc runs")
        .success();
    assert!(ok, "cc failed");
    let (mut c_put, mut c_get, mut r_put, mut r_get) = (vec![], vec![], vec![], vec![]);
    let (mut p_put, mut p_get) = (vec![], vec![]);
    // The Python side runs when `$ASHEVILLE_PYTHON` (default python3) can
    // import asheville (pip install target/wheels/asheville-*.whl).
    let python = std::env::var("ASHEVILLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let py_bench = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bindings/python/bench.py");
    let has_py = Command::new(&python)
        .args(["-c", "import asheville"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let settle = || {
        // Flush the previous run's dirty pages so it does not slow this one.
        let _ = Command::new("sync").status();
    };
    for round in 0..5 {
        let c_first = round % 2 == 0;
        let mut run_c = || {
            settle();
            let out = Command::new(&exe)
                .arg(tmp.path().join(format!("c{round}")))
                .arg(mb.to_string())
                .output()
                .expect("bench runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let f = times(&out.stdout);
            c_put.push(f[0]);
            c_get.push(f[1]);
        };
        if c_first {
            run_c();
        }
        settle();
        let out = Command::new(std::env::current_exe().expect("exe"))
            .env("ASHEVILLE_FFI_CHILD", tmp.path().join(format!("r{round}")))
            .env("ASHEVILLE_BENCH_MB", mb.to_string())
            .output()
            .expect("rust child runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = times(&out.stdout);
        r_put.push(f[0]);
        r_get.push(f[1]);
        if !c_first {
            run_c();
        }
        if has_py {
            settle();
            let out = Command::new(&python)
                .arg(&py_bench)
                .arg(tmp.path().join(format!("p{round}")))
                .arg(mb.to_string())
                .output()
                .expect("python runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let f = times(&out.stdout);
            p_put.push(f[0]);
            p_get.push(f[1]);
        }
    }
    let rounds = format!(
        "rounds (s): C put {c_put:.3?}, Rust put {r_put:.3?}, Python put {p_put:.3?}, C get {c_get:.3?}, Rust get {r_get:.3?}, Python get {p_get:.3?}"
    );
    let mbs = |s: f64| (mb as f64 * 1.048576) / s;
    let (cp, cg, rp, rg) = (median(c_put), median(c_get), median(r_put), median(r_get));
    let (pp, pg) = if has_py {
        (median(p_put.clone()), median(p_get.clone()))
    } else {
        (f64::NAN, f64::NAN)
    };
    println!(
        "| {mb} MiB, median of 5 | Rust API MB/s | C ABI MB/s | C / Rust | Python MB/s | Python / Rust |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| put | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
        mbs(rp),
        mbs(cp),
        rp / cp,
        mbs(pp),
        rp / pp
    );
    println!(
        "| get | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
        mbs(rg),
        mbs(cg),
        rg / cg,
        mbs(pg),
        rg / pg
    );
    if !has_py {
        println!("\n(Python skipped: {python} cannot import asheville)");
    }
    println!("\n{rounds}");
}
