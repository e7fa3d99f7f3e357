//! The HTTP server against the library it wraps, on one machine.
//!
//! `cargo bench -p asheville-benches --bench http` prints a table:
//! - a 1 GiB streamed PUT and GET over HTTP on loopback vs the library's
//!   own `put` / `get` of the same bytes (same repository layout: three
//!   local backends, rs(2,1)), alternating sides, medians of the rounds;
//! - 4 KiB PUTs and GETs from 64 concurrent keep-alive connections:
//!   requests/s, p50 and p99 latency.
//!
//! The server runs in a second process (this binary, re-executed), the
//! load generator in this one. `ASHEVILLE_BENCH_MB` (default 1024) and
//! `ASHEVILLE_BENCH_ROUNDS` (default 3) scale it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asheville_benches::random_data;
use asheville_server::http::{Server, ServerConfig};
use asheville_storage::{RepoConfig, Repository, TenantKey};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

type Sender = hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>,
>;

fn child(dir: &str) {
    let rt = asheville_storage::runtime().unwrap();
    rt.block_on(async {
        let mut cfg = ServerConfig::new(dir);
        cfg.workers = 0;
        cfg.passphrase = Some("bench".into());
        cfg.insecure_fast_kdf = true;
        cfg.limits.tenant_rate = 1e9;
        cfg.limits.tenant_burst = 1e9;
        let server = Server::open(cfg).await.unwrap();
        let token = server.first_admin_token().unwrap().to_owned();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{} {}", l.local_addr().unwrap(), token);
        std::io::stdout().flush().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink); // parent gone or done
            let _ = tx.send(());
        });
        server
            .serve(l, async move {
                let _ = rx.await;
            })
            .await;
    });
}

async fn connect(addr: &str) -> Sender {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn req(
    method: &str,
    path: &str,
    token: &str,
    body: http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>,
) -> Request<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .unwrap()
}

fn empty() -> http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible> {
    Full::new(Bytes::new()).boxed_unsync()
}

/// A streamed PUT of `data` in 1 MiB frames; seconds until the answer.
async fn http_put(addr: &str, token: &str, path: &str, data: Bytes) -> f64 {
    let mut s = connect(addr).await;
    let len = data.len();
    let frames = (0..len.div_ceil(1 << 20)).map(move |i| {
        Ok::<_, std::convert::Infallible>(Frame::data(
            data.slice(i << 20..((i + 1) << 20).min(len)),
        ))
    });
    let body = BodyExt::boxed_unsync(StreamBody::new(futures::stream::iter(frames)));
    let mut r = req("PUT", path, token, body);
    r.headers_mut().insert("content-length", len.into());
    let t = Instant::now();
    let resp = s.send_request(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.into_body().collect().await.unwrap();
    t.elapsed().as_secs_f64()
}

/// A streamed GET; seconds to read all of it.
async fn http_get(addr: &str, token: &str, path: &str, want: usize) -> f64 {
    let mut s = connect(addr).await;
    let t = Instant::now();
    let resp = s
        .send_request(req("GET", path, token, empty()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
        }
    }
    assert_eq!(n, want);
    t.elapsed().as_secs_f64()
}

/// `conns` keep-alive connections doing `op` for `dur`; (req/s, p50 ms,
/// p99 ms, fewest requests one connection made).
async fn load(
    addr: &str,
    token: &str,
    conns: usize,
    dur: Duration,
    put: bool,
    files: usize,
) -> (f64, f64, f64, usize) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    let small = Bytes::from(random_data(4096, 99));
    for c in 0..conns {
        let (addr, token, small) = (addr.to_owned(), token.to_owned(), small.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&addr).await;
            let mut lat = Vec::new();
            let mut i = 0usize;
            while start.elapsed() < dur {
                let (m, path, body) = if put {
                    let mut b = small.to_vec();
                    b[..8].copy_from_slice(&((c * 1_000_000 + i) as u64).to_le_bytes());
                    (
                        "PUT",
                        format!("/v1/files/small/{c}/{i}"),
                        Full::new(Bytes::from(b)).boxed_unsync(),
                    )
                } else {
                    let k = (c * 7919 + i * 104_729) % files;
                    (
                        "GET",
                        format!("/v1/files/small/{}/{}", k % conns, k / conns),
                        empty(),
                    )
                };
                let t = Instant::now();
                let resp = s.send_request(req(m, &path, &token, body)).await.unwrap();
                let ok = resp.status().is_success();
                resp.into_body().collect().await.unwrap();
                assert!(ok, "{m} {path}");
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                i += 1;
            }
            (lat, i)
        }));
    }
    let mut all = Vec::new();
    let mut min_per_conn = usize::MAX;
    for t in tasks {
        let (lat, n) = t.await.unwrap();
        all.extend(lat);
        min_per_conn = min_per_conn.min(n);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.50), pct(0.99), min_per_conn)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Ok(dir) = std::env::var("ASHEVILLE_HTTP_CHILD") {
        child(&dir);
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes
    }
    let mb: usize = std::env::var("ASHEVILLE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let rounds: usize = std::env::var("ASHEVILLE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp =
        tempfile::tempdir_in(std::env::var("ASHEVILLE_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    let len = mb << 20;
    let rt = asheville_storage::runtime().unwrap();

    // The server process.
    let mut srv = Command::new(std::env::current_exe().unwrap())
        .env("ASHEVILLE_HTTP_CHILD", tmp.path().join("server"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(srv.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut it = line.split_whitespace();
    let (addr, token) = (it.next().unwrap().to_owned(), it.next().unwrap().to_owned());

    let (mut lib_put, mut lib_get, mut h_put, mut h_get) = (vec![], vec![], vec![], vec![]);
    rt.block_on(async {
        let cfg = {
            let mut c = RepoConfig::local(tmp.path().join("lib"), 3, "rs(2,1)".parse().unwrap());
            c.kdf = asheville_core::KdfParams::INSECURE_FAST_FOR_TESTS;
            c
        };
        let repo = Repository::create(&tmp.path().join("lib/catalog.redb"), cfg)
            .await
            .unwrap();
        let t = repo
            .create_tenant("bench", TenantKey::Passphrase("bench".into()))
            .await
            .unwrap();
        for round in 0..rounds {
            // Fresh bytes every round and side: nothing deduplicates.
            let a = Bytes::from(random_data(len, 1000 + round as u64));
            let b = Bytes::from(random_data(len, 2000 + round as u64));
            let _ = Command::new("sync").status();
            let lib = |data: Bytes| {
                let t = t.clone();
                async move {
                    let s = Instant::now();
                    t.put(&format!("/big{round}"), &data[..], Default::default())
                        .await
                        .unwrap();
                    let put = s.elapsed().as_secs_f64();
                    let mut sink = tokio::io::sink();
                    let s = Instant::now();
                    t.get(&format!("/big{round}"), &mut sink).await.unwrap();
                    (put, s.elapsed().as_secs_f64())
                }
            };
            let http = |data: Bytes| {
                let (addr, token) = (addr.clone(), token.clone());
                async move {
                    let put = http_put(&addr, &token, &format!("/v1/files/big{round}"), data).await;
                    let get = http_get(&addr, &token, &format!("/v1/files/big{round}"), len).await;
                    (put, get)
                }
            };
            let ((lp, lg), (hp, hg)) = if round % 2 == 0 {
                let l = lib(a).await;
                let _ = Command::new("sync").status();
                (l, http(b).await)
            } else {
                let h = http(b).await;
                let _ = Command::new("sync").status();
                (lib(a).await, h)
            };
            eprintln!(
                "round {round}: library put {lp:.3}s get {lg:.3}s; HTTP put {hp:.3}s get {hg:.3}s"
            );
            lib_put.push(lp);
            lib_get.push(lg);
            h_put.push(hp);
            h_get.push(hg);
        }
    });
    let (lp, lg, hp, hg) = (
        median(lib_put),
        median(lib_get),
        median(h_put),
        median(h_get),
    );
    let mbs = |s: f64| len as f64 / s / 1e6;

    let (put_small, get_small) = rt.block_on(async {
        let put = load(&addr, &token, 64, Duration::from_secs(5), true, 0).await;
        // small/{c}/{i} exists for every c below 64 and i below the fewest
        // one connection wrote.
        let get = load(
            &addr,
            &token,
            64,
            Duration::from_secs(10),
            false,
            put.3.max(1) * 64,
        )
        .await;
        (put, get)
    });
    drop(srv.stdin.take());
    let _ = srv.wait();

    println!(
        "\nHTTP server vs library ({mb} MiB, {rounds} rounds, medians; server in a second process on loopback)\n"
    );
    println!("| measurement | library | HTTP | HTTP / library |");
    println!("|---|---:|---:|---:|");
    println!(
        "| {mb} MiB put | {:.0} MB/s | {:.0} MB/s | {:.2} |",
        mbs(lp),
        mbs(hp),
        lp / hp
    );
    println!(
        "| {mb} MiB get | {:.0} MB/s | {:.0} MB/s | {:.2} |",
        mbs(lg),
        mbs(hg),
        lg / hg
    );
    println!("\n| 64 connections, 4 KiB | requests/s | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    println!(
        "| PUT (5 s) | {:.0} | {:.2} ms | {:.2} ms |",
        put_small.0, put_small.1, put_small.2
    );
    println!(
        "| GET (10 s) | {:.0} | {:.2} ms | {:.2} ms |",
        get_small.0, get_small.1, get_small.2
    );
}
