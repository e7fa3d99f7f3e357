//! Runs the Python tests (`tests/test_asheville.py`) against the module
//! `cargo test` just built: the package directory is assembled in a temp
//! dir from `python/asheville/` and `lib_asheville.so`. With pytest
//! installed (`.ci/run` installs it) they run under pytest; without it, as
//! a script that runs the same test functions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

use std::path::PathBuf;
use std::process::Command;

#[test]
fn python_tests_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let so = deps.join("lib_asheville.so");
    assert!(so.exists(), "the module was not built: {}", so.display());
    let site = tempfile::tempdir().unwrap();
    let pkg = site.path().join("asheville");
    std::fs::create_dir_all(&pkg).unwrap();
    for e in std::fs::read_dir(root.join("python/asheville")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), pkg.join(e.file_name())).unwrap();
    }
    std::fs::copy(&so, pkg.join("_asheville.so")).unwrap();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pytest = Command::new(&python)
        .args(["-c", "import pytest"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = Command::new(&python);
    if has_pytest {
        cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]);
    }
    let out = cmd
        .arg(root.join("tests/test_asheville.py"))
        .env("PYTHONPATH", site.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(site.path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python tests failed (pytest: {has_pytest})\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("7 passed"), "{stdout}");
}
