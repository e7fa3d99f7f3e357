use asheville_storage::{BackendKind, ObjectStoreBackend, S3Config, conformance};

#[tokio::test]
async fn memory_backend_conforms() {
    let b = ObjectStoreBackend::open("mem", &BackendKind::Memory).unwrap();
    conformance::run_all(&b).await;
}

#[tokio::test]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let b = ObjectStoreBackend::open(
        "local",
        &BackendKind::Local {
            path: dir.path().join("store"),
            fsync: true,
        },
    )
    .unwrap();
    conformance::run_all(&b).await;
}

pub fn s3_kind(addr: std::net::SocketAddr, bucket: &str) -> BackendKind {
    BackendKind::S3(S3Config {
        bucket: bucket.into(),
        endpoint: Some(format!("http://{addr}")),
        region: "us-east-1".into(),
        access_key_id: crate::s3server::KEY.into(),
        secret_access_key: crate::s3server::SECRET.into(),
        allow_http: true,
        prefix: None,
        max_retries: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms() {
    let server = crate::s3server::start().await;
    let b = ObjectStoreBackend::open("s3", &s3_kind(server.addr, "conformance")).unwrap();
    conformance::run_all(&b).await;
    // Secrets never show in Debug output.
    let dbg = format!("{:?}", s3_kind(server.addr, "x"));
    assert!(!dbg.contains(crate::s3server::SECRET), "{dbg}");
}
