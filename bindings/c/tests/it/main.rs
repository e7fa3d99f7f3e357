//! Tests of the C ABI: the checked-in header is what cbindgen generates
//! now, and a C program compiled with the system `cc` round-trips files
//! and checks the error paths.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generated_header() -> String {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen runs")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn the_checked_in_header_is_current() {
    let path = crate_dir().join("include/asheville.h");
    let now = generated_header();
    if std::env::var_os("ASHEVILLE_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == now,
        "include/asheville.h is stale: run ASHEVILLE_UPDATE_HEADER=1 cargo test -p asheville-c"
    );
}

/// target/<profile>/deps: where `cargo test` builds libasheville_c.so
/// (it is copied up to target/<profile> only by `cargo build`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

fn compile(src: &Path, out: &Path, extra: &[&str]) {
    let lib = lib_dir();
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra)
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg("-lasheville_c")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .status()
        .expect("the system C compiler runs");
    assert!(status.success(), "cc failed");
}

#[test]
fn a_c_program_round_trips_files_and_checks_the_error_paths() {
    assert!(
        lib_dir().join("libasheville_c.so").exists(),
        "libasheville_c.so not built in {}",
        lib_dir().display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("roundtrip");
    compile(&crate_dir().join("tests/roundtrip.c"), &exe, &[]);
    let out = Command::new(&exe)
        .arg(tmp.path().join("repo"))
        .arg(tmp.path().join("work"))
        .env("ASHEVILLE_INSECURE_FAST_KDF", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("all checks passed"), "{stdout}");
}

#[test]
fn the_readme_example_runs() {
    // The five-line example of bindings/c/README.md, extracted and run.
    let readme = std::fs::read_to_string(crate_dir().join("README.md")).unwrap();
    let code = readme
        .split("```c\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a ```c block in the README");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("example.c");
    std::fs::write(&src, code).unwrap();
    let exe = tmp.path().join("example");
    compile(&src, &exe, &[]);
    let out = Command::new(&exe).current_dir(tmp.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
}
