//! A real S3 protocol server (s3s + s3s-fs) on loopback, started by the
//! test itself: no Docker, no network.

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub const KEY: &str = "asheville-test-key";
pub const SECRET: &str = "asheville-test-secret";

/// A running server; its files live in `dir`.
pub struct S3Server {
    pub addr: SocketAddr,
    pub _dir: tempfile::TempDir,
}

pub async fn start() -> S3Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs");
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(KEY, SECRET));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    S3Server { addr, _dir: dir }
}
