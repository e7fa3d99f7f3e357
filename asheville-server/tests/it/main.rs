//! End-to-end tests of the `asheville` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod browser;
mod crash;
mod http;
mod node;
mod sync;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

fn asheville(data: &Path, pass: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asheville"))
        .args(args)
        .env("ASHEVILLE_DATA", data)
        .env("ASHEVILLE_PASSPHRASE", pass)
        .env("ASHEVILLE_INSECURE_FAST_KDF", "1")
        .env_remove("ASHEVILLE_TENANT")
        .output()
        .expect("run asheville")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(o: Output) -> serde_json::Value {
    serde_json::from_str(ok(o).trim()).unwrap()
}

fn make_tree(root: &Path) {
    let files: &[(&str, usize, u32)] = &[
        ("a.txt", 12, 0o644),
        ("empty", 0, 0o600),
        ("bin/tool", 70_000, 0o755),
        ("deep/er/still/big.bin", 5_000_000, 0o640),
        ("deep/dup.bin", 5_000_000, 0o644),
        ("名前 with spaces.txt", 1000, 0o644),
    ];
    for (i, (name, len, mode)) in files.iter().enumerate() {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // dup.bin has the same content as big.bin.
        let seed = if name.ends_with("dup.bin") {
            3
        } else {
            i as u64
        };
        let mut data = vec![0u8; *len];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(
            SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 1000, 123_456_789),
        )
        .unwrap();
    }
}

fn compare_trees(a: &Path, b: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(a).unwrap() {
        let e = e.unwrap();
        let pb = b.join(e.file_name());
        let ma = e.metadata().unwrap();
        if ma.is_dir() {
            n += compare_trees(&e.path(), &pb);
            continue;
        }
        let mb = std::fs::metadata(&pb).unwrap_or_else(|_| panic!("missing {}", pb.display()));
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            std::fs::read(&pb).unwrap(),
            "{}",
            pb.display()
        );
        assert_eq!(
            ma.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777,
            "mode of {}",
            pb.display()
        );
        assert_eq!(
            ma.modified().unwrap(),
            mb.modified().unwrap(),
            "mtime of {}",
            pb.display()
        );
        n += 1;
    }
    n
}

#[test]
fn directory_round_trip_keeps_bytes_mtime_and_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("repo");
    let src = tmp.path().join("src");
    make_tree(&src);
    let put = json(asheville(
        &data,
        "pw",
        &["--json", "put", src.to_str().unwrap(), "/backup"],
    ));
    assert_eq!(put["files"], 6);
    assert_eq!(put["bytes"], 10_071_012);

    let out = tmp.path().join("out");
    let got = json(asheville(
        &data,
        "pw",
        &["--json", "get", "/backup", out.to_str().unwrap()],
    ));
    assert_eq!(got["files"], 6);
    assert_eq!(compare_trees(&src, &out), 6);
    // And back the other way: nothing extra was restored.
    assert_eq!(compare_trees(&out, &src), 6);

    // A single file, to a chosen name.
    let one = tmp.path().join("one.bin");
    ok(asheville(
        &data,
        "pw",
        &["get", "/backup/deep/dup.bin", one.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(&one).unwrap(),
        std::fs::read(src.join("deep/dup.bin")).unwrap()
    );

    // ls, stat, versions, rm.
    let ls = json(asheville(&data, "pw", &["--json", "ls", "/backup"]));
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "backup/a.txt",
            "backup/bin",
            "backup/deep",
            "backup/empty",
            "backup/名前 with spaces.txt"
        ]
    );
    let all = json(asheville(
        &data,
        "pw",
        &["--json", "ls", "-R", "--limit", "2"],
    ));
    assert_eq!(
        all.as_array().unwrap().len(),
        6,
        "all pages of a recursive listing"
    );
    let st = json(asheville(
        &data,
        "pw",
        &["--json", "stat", "/backup/bin/tool"],
    ));
    assert_eq!(
        (st["size"].as_u64(), st["mode"].as_str()),
        (Some(70_000), Some("755"))
    );
    // Unchanged (same size, mtime, mode): left alone, no new version.
    let again = json(asheville(
        &data,
        "pw",
        &["--json", "put", src.to_str().unwrap(), "/backup"],
    ));
    assert_eq!(
        (again["files"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(6))
    );
    // --rehash stores it again anyway.
    ok(asheville(
        &data,
        "pw",
        &[
            "put",
            "--rehash",
            src.join("a.txt").to_str().unwrap(),
            "/backup/a.txt",
        ],
    ));
    let vs = json(asheville(
        &data,
        "pw",
        &["--json", "versions", "/backup/a.txt"],
    ));
    assert_eq!(vs.as_array().unwrap().len(), 2);
    let f = json(asheville(
        &data,
        "pw",
        &["--json", "forget", "/backup", "--keep-last", "1"],
    ));
    assert_eq!(f["forgotten"], 1, "a.txt v1");
    assert_eq!(
        json(asheville(
            &data,
            "pw",
            &["--json", "versions", "/backup/a.txt"]
        ))
        .as_array()
        .unwrap()
        .len(),
        1
    );
    let o = asheville(&data, "pw", &["forget", "--keep-within", "3 weeks"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unit"));
    ok(asheville(&data, "pw", &["rm", "/backup/a.txt"]));
    // A file in packs of its own, removed and forgotten: gc condemns those
    // packs, then (grace 0s) deletes them; the rest stays readable.
    let big = tmp.path().join("big.bin");
    std::fs::write(
        &big,
        (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    ok(asheville(
        &data,
        "pw",
        &["put", big.to_str().unwrap(), "/scratch/big.bin"],
    ));
    ok(asheville(&data, "pw", &["rm", "/scratch/big.bin"]));
    ok(asheville(
        &data,
        "pw",
        &["forget", "/scratch", "--keep-last", "0"],
    ));
    let g = json(asheville(&data, "pw", &["--json", "gc", "--grace", "0s"]));
    assert!(g["packs_condemned"].as_u64().unwrap() >= 1, "{g}");
    assert_eq!(g["packs_deleted"], 0, "the first run only condemns: {g}");
    let g = json(asheville(&data, "pw", &["--json", "gc", "--grace", "0s"]));
    assert!(g["packs_deleted"].as_u64().unwrap() >= 1, "{g}");
    let e = json_err(asheville(&data, "pw", &["--json", "stat", "/backup/a.txt"]));
    assert_eq!(e, "not_found");

    // Lose a whole backend: check fails (exit 1), repair fixes it, and
    // neither needs the passphrase.
    std::fs::remove_dir_all(data.join("backend-1")).unwrap();
    let o = asheville(&data, "", &["--json", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "missing_shard")
    );
    let r = json(asheville(&data, "", &["--json", "repair"]));
    assert!(r["shards_rewritten"].as_u64().unwrap() > 0);
    let c = json(asheville(&data, "", &["--json", "check", "--read-data"]));
    assert_eq!(c["problems"].as_array().unwrap().len(), 0);
    let out2 = tmp.path().join("out2");
    ok(asheville(
        &data,
        "pw",
        &["get", "/backup", out2.to_str().unwrap()],
    ));
    assert_eq!(
        compare_trees(&out2, &out),
        5,
        "a.txt was deleted; the rest is intact"
    );

    // Lose the catalog: rebuild it from the backends; files come back.
    std::fs::remove_file(data.join("catalog.redb")).unwrap();
    let r = json(asheville(&data, "pw", &["--json", "rebuild-catalog"]));
    assert_eq!(r["skipped"].as_array().unwrap().len(), 0);
    let out3 = tmp.path().join("out3");
    ok(asheville(
        &data,
        "pw",
        &["get", "/backup", out3.to_str().unwrap()],
    ));
    assert_eq!(compare_trees(&out3, &out), 5);
    assert_eq!(
        compare_trees(&out3, &src),
        5,
        "bytes, mtime and mode survive a catalog rebuild"
    );
    let e = json_err(asheville(&data, "pw", &["--json", "rebuild-catalog"]));
    assert_eq!(e, "already_exists");

    // Export to a file, import into a fresh repository as another tenant.
    let archive = tmp.path().join("backup.ashv");
    let ex = json(asheville(
        &data,
        "pw",
        &["--json", "export", archive.to_str().unwrap()],
    ));
    let data2 = tmp.path().join("repo2");
    let im = json(asheville(
        &data2,
        "pw2",
        &[
            "--json",
            "--tenant",
            "copy",
            "import",
            archive.to_str().unwrap(),
        ],
    ));
    assert_eq!(ex, im);
    let out4 = tmp.path().join("out4");
    let o = Command::new(env!("CARGO_BIN_EXE_asheville"))
        .args(["--tenant", "copy", "get", "/backup", out4.to_str().unwrap()])
        .env("ASHEVILLE_DATA", &data2)
        .env("ASHEVILLE_PASSPHRASE", "pw2")
        .output()
        .unwrap();
    ok(o);
    assert_eq!(
        compare_trees(&out4, &out),
        5,
        "bytes, mtime and mode survive export and import"
    );

    // Wrong passphrase: a clear error and exit status 1.
    assert_eq!(
        json_err(asheville(&data, "nope", &["--json", "ls"])),
        "wrong_key"
    );
    let o = asheville(&data, "nope", &["ls"]);
    assert_eq!(o.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains("passphrase is wrong") && msg.matches("wrong_key").count() == 1,
        "{msg}"
    );
}

fn json_err(o: Output) -> String {
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["error"]["kind"].as_str().unwrap().to_owned()
}

#[test]
fn the_default_repository_needs_nothing_but_a_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("asheville-data");
    let f = tmp.path().join("hello.txt");
    std::fs::write(&f, b"hello").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_asheville"))
        .args(["put", f.to_str().unwrap()])
        .current_dir(tmp.path())
        .env_remove("ASHEVILLE_DATA")
        .env("ASHEVILLE_PASSPHRASE", "pw")
        .env("ASHEVILLE_INSECURE_FAST_KDF", "1")
        .output()
        .unwrap();
    ok(o);
    assert!(data.join("catalog.redb").exists());
    for i in 0..3 {
        assert!(data.join(format!("backend-{i}")).is_dir());
    }
    // No passphrase: a clear error telling what to set.
    let o = Command::new(env!("CARGO_BIN_EXE_asheville"))
        .args(["ls"])
        .current_dir(tmp.path())
        .env_remove("ASHEVILLE_DATA")
        .env_remove("ASHEVILLE_PASSPHRASE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ASHEVILLE_PASSPHRASE"));
}

#[test]
fn usage_quota_and_invoice_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), vec![7u8; 100_000]).unwrap();
    ok(asheville(
        &data,
        "pw",
        &["put", src.to_str().unwrap(), "/s"],
    ));
    let rows = json(asheville(&data, "pw", &["--json", "usage"]));
    assert_eq!(rows[0]["value"], "100000", "{rows}");
    ok(asheville(&data, "pw", &["quota", "--max-stored", "150000"]));
    std::fs::write(src.join("b"), vec![8u8; 60_000]).unwrap();
    let err = json_err(asheville(
        &data,
        "pw",
        &["--json", "put", src.to_str().unwrap(), "/t"],
    ));
    assert_eq!(err, "quota_exceeded");
    let listed = ok(asheville(&data, "pw", &["ls", "/"]));
    assert!(
        !listed.contains('t'),
        "nothing of the refused put is visible: {listed}"
    );
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"name":"p","currency":"EUR","meters":{"storage.bytes_ingested":{"unit":"byte","tiers":[{"price":"0.000001"}]}}}"#,
    )
    .unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (y, m, _) = asheville_core::metering::civil_from_days(now / 86_400);
    let inv = json(asheville(
        &data,
        "pw",
        &[
            "--json",
            "invoice",
            &format!("{y:04}-{m:02}"),
            "--plan",
            plan.to_str().unwrap(),
        ],
    ));
    // 100,000 bytes at 0.000001 EUR each.
    assert_eq!(inv["total"], "0.100000", "{inv}");
}
