//! Syncs from the command line, and a sync worker killed with SIGKILL
//! mid-job: the job resumes in a new worker process and the repository
//! ends up identical to the source.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{asheville, compare_trees, json, ok};

fn source_tree(root: &Path, small: usize, big: usize) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..small + big {
        let len = if i < big {
            (1 << 20) + (next() % (2 << 20)) as usize
        } else {
            1 + (next() % 8000) as usize
        };
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let p = root.join(format!("d{}/f{i:05}", i % 13));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    count_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

fn job(data: &Path, id: u64) -> serde_json::Value {
    let j = json(asheville(
        data,
        "pw",
        &["--json", "job", "show", &id.to_string()],
    ));
    j[0].clone()
}

#[test]
fn killed_sync_worker_resumes_in_a_new_one_and_the_repository_matches_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("src");
    source_tree(&src, 5000, 12);
    ok(asheville(
        &data,
        "pw",
        &[
            "source",
            "add",
            "docs",
            "--user",
            "u",
            "--dir",
            src.to_str().unwrap(),
        ],
    ));
    ok(asheville(&data, "pw", &["init"]));
    // Kill `asheville sync` as soon as it wrote new shards (its first batch
    // is on the backends, later ones are not); each new `sync` picks the
    // same job up again.
    let mut killed_mid_job = 0;
    for _ in 0..5 {
        let before = count_files(&data.join("backend-0"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_asheville"))
            .args(["sync", "--user", "u"])
            .env("ASHEVILLE_DATA", &data)
            .env("ASHEVILLE_PASSPHRASE", "pw")
            .env("ASHEVILLE_INSECURE_FAST_KDF", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut exited = None;
        while exited.is_none() && count_files(&data.join("backend-0")) <= before {
            exited = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().ok(); // SIGKILL
        let status = exited.unwrap_or_else(|| child.wait().unwrap());
        if status.success() {
            break;
        }
        // Opening the queue again (`job show`) finds the dead worker's
        // lease and puts the job back: proof that it was killed mid-run.
        let j = job(&data, 1);
        let last = &j["history"].as_array().unwrap().last().unwrap()["reason"];
        if j["state"] == "queued" && last.as_str().unwrap().contains("expired") {
            killed_mid_job += 1;
            if killed_mid_job >= 2 {
                break;
            }
        }
    }
    assert!(killed_mid_job >= 1, "no kill landed while the job ran");
    // A new worker process resumes the job.
    ok(asheville(&data, "pw", &["worker", "--until-idle"]));
    let j = job(&data, 1);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(j["attempts"].as_u64().unwrap() >= 2, "{j}");
    let history = j["history"].to_string();
    assert!(history.contains("expired"), "{history}");
    let out = dir.path().join("out");
    ok(asheville(
        &data,
        "pw",
        &["get", "/sync/u/docs", out.to_str().unwrap()],
    ));
    assert_eq!(compare_trees(&src, &out), 5012);
    assert_eq!(compare_trees(&out, &src), 5012, "nothing extra");

    // Change the source; the next sync moves only that.
    std::fs::write(src.join("d0/f00013"), b"changed").unwrap();
    std::fs::remove_file(src.join("d1/f00014")).unwrap();
    let r = json(asheville(&data, "pw", &["--json", "sync", "--user", "u"]));
    let p = &r[0]["progress"];
    assert_eq!(
        (
            p["items_seen"].as_u64(),
            p["items_stored"].as_u64(),
            p["items_deleted"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{r}"
    );
}
