//! Array nodes: an Asheville server holding another repository's shards
//! through `/v1/objects/`, and the `remote` backend that talks to it.

use asheville_storage::{
    Backend, BackendKind, ErrorKind, RemoteBackend, RepoConfig, Repository, TenantKey,
};
use serde_json::json;

use super::http::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_backend_passes_the_backend_conformance_suite() {
    let s = start(|_| {}).await;
    let tok = s.token("default", "node", &["node.objects"]).await;
    let url = format!("http://{}", s.addr);
    let b = RemoteBackend::new("node", &url, &tok).unwrap();
    asheville_storage::conformance::run_all(&b).await;

    // Keys cannot climb out of the tenant's directory.
    for bad in ["../x", "a/../../x", "/abs"] {
        let e = b
            .put(bad, vec![bytes::Bytes::from_static(b"x")])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}: {e}");
    }
    // A `*` admin naming a tenant that does not exist (or a path) is refused.
    let admin_node = RemoteBackend::new("n", &url, &s.admin).unwrap();
    admin_node
        .put("k", vec![bytes::Bytes::from_static(b"x")])
        .await
        .unwrap();
    for bad in ["../../etc", "nobody"] {
        let r = s
            .req(
                "PUT",
                "/v1/objects/k",
                Some(&s.admin),
                &[("x-asheville-tenant", bad)],
                "x",
            )
            .await;
        assert_eq!(r.status.as_u16(), 404, "{bad}");
    }
    assert!(!s.dir.path().join("etc").exists());
    // Tokens: none of the right permission, a bad one, another tenant's.
    let reader = s.token("default", "r", &["storage.read"]).await;
    let e = RemoteBackend::new("n", &url, &reader)
        .unwrap()
        .get("conf/x")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden);
    let e = RemoteBackend::new("n", &url, "ash_0000000000000001_00")
        .unwrap()
        .get("x")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    b.put("mine/obj", vec![bytes::Bytes::from_static(b"default's")])
        .await
        .unwrap();
    s.post("/v1/tenants", &s.admin, &json!({"name": "acme"}))
        .await;
    let acme = s.token("acme", "node", &["node.objects"]).await;
    let other = RemoteBackend::new("n", &url, &acme).unwrap();
    assert_eq!(
        other.get("mine/obj").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(other.list("", None, 100).await.unwrap().objects.is_empty());
    assert!(format!("{b:?}").contains("<redacted>") && !format!("{b:?}").contains(&tok));
    s.assert_documented().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_spread_over_two_nodes_and_a_disk_survives_losing_a_node() {
    let n1 = start(|_| {}).await;
    let n2 = start(|_| {}).await;
    let t1 = n1.token("default", "array", &["node.objects"]).await;
    let t2 = n2.token("default", "array", &["node.objects"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RepoConfig::local(dir.path(), 3, "rs(2,1)".parse().unwrap());
    cfg.kdf = asheville_core::KdfParams::INSECURE_FAST_FOR_TESTS;
    cfg.backends[1].kind = BackendKind::Remote {
        url: format!("http://{}", n1.addr),
        token: t1,
    };
    cfg.backends[2].kind = BackendKind::Remote {
        url: format!("http://{}", n2.addr),
        token: t2,
    };
    let repo = Repository::create(&dir.path().join("catalog.redb"), cfg)
        .await
        .unwrap();
    let t = repo
        .create_tenant("me", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    t.put("/photos/big.raw", &data[..], Default::default())
        .await
        .unwrap();
    // The nodes really hold shards.
    let node_files = walk(&n1.dir.path().join("data/objects"));
    assert!(node_files > 0, "node 1 holds shards");
    // Lose node 2 entirely: rs(2,1) still reads everything (from a freshly
    // opened repository, so nothing comes from the read cache).
    n2.stop().await;
    drop((t, repo));
    let repo = Repository::open(&dir.path().join("catalog.redb"))
        .await
        .unwrap();
    let t = repo
        .tenant("me", TenantKey::Passphrase("pw".into()))
        .await
        .unwrap();
    let mut out = Vec::new();
    t.get("/photos/big.raw", &mut out).await.unwrap();
    assert!(out == data, "restored bytes differ");
    n1.stop().await;
}

fn walk(p: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.map(|e| {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            walk(&e.path())
        } else {
            1
        }
    })
    .sum()
}
