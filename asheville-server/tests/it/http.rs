//! The HTTP server over real HTTP on loopback: every route, good and bad.

use std::collections::HashSet;
use std::time::Duration;

use asheville_server::http::{Server, ServerConfig};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub struct Srv {
    pub addr: std::net::SocketAddr,
    pub admin: String,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The stable error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {:?}", self.json()))
            .to_owned()
    }

    pub fn header(&self, h: &str) -> &str {
        self.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("data"));
    cfg.insecure_fast_kdf = true;
    cfg.passphrase = Some("test secret".into());
    tweak(&mut cfg);
    let server = Server::open(cfg).await.unwrap();
    let admin = server.first_admin_token().unwrap().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    Srv {
        addr,
        admin,
        dir,
        stop: Some(tx),
        task: Some(task),
    }
}

impl Srv {
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut b = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| *k == "host") {
            b = b.header("host", "localhost");
        }
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = send
            .send_request(b.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.req("GET", path, Some(token), &[], Bytes::new()).await
    }

    pub async fn post(&self, path: &str, token: &str, v: &Value) -> Resp {
        self.req("POST", path, Some(token), &[], v.to_string())
            .await
    }

    /// A token for `user` in the admin's tenant (`default`) with `perms`.
    pub async fn token(&self, tenant: &str, user: &str, perms: &[&str]) -> String {
        let r = self
            .req(
                "POST",
                "/v1/tokens",
                Some(&self.admin),
                &[("x-asheville-tenant", tenant)],
                json!({"user": user, "name": "t", "permissions": perms}).to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// Every (route, status) the server answered, from `/metrics`, is
    /// documented in `/v1/openapi.json` for that route.
    pub async fn assert_documented(&self) {
        let doc = self
            .req("GET", "/v1/openapi.json", None, &[], "")
            .await
            .json();
        let mut ops = std::collections::HashMap::new();
        for (_, item) in doc["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                let codes: HashSet<String> = op["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect();
                ops.insert(op["operationId"].as_str().unwrap().to_owned(), codes);
            }
        }
        let metrics = self.req("GET", "/metrics", None, &[], "").await;
        let text = String::from_utf8(metrics.body.to_vec()).unwrap();
        let mut checked = 0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("asheville_http_requests_total{route=\"") else {
                continue;
            };
            let (route, rest) = rest.split_once('"').unwrap();
            let status = rest.split('"').nth(1).unwrap();
            if route == "unmatched" {
                continue;
            }
            let codes = ops
                .get(route)
                .unwrap_or_else(|| panic!("{route} is not documented"));
            assert!(
                codes.contains(status),
                "{route} answered {status}, which the OpenAPI document does not list"
            );
            checked += 1;
        }
        assert!(checked > 0);
    }

    /// The sum of a meter's rows for the token's tenant (values are
    /// decimal strings: u128 in JSON).
    pub async fn usage_total(&self, meter: &str, token: &str) -> u128 {
        let r = self.get(&format!("/v1/usage?meter={meter}"), token).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        r.json()["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| match &row["value"] {
                Value::String(v) => v.parse::<u128>().unwrap(),
                v => u128::from(v.as_u64().unwrap()),
            })
            .sum()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(40), t)
                .await
                .expect("the server stops")
                .unwrap();
        }
    }
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stream_up_and_down_with_ranges_etags_and_versions() {
    let s = start(|_| {}).await;
    let a = &s.admin;
    let body = data(3 << 20, 7);
    let r = s
        .req(
            "PUT",
            "/v1/files/docs/big%20file.bin",
            Some(a),
            &[("x-asheville-mode", "416")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let v = r.json();
    assert_eq!(
        (
            v["path"].as_str(),
            v["size"].as_u64(),
            v["version"].as_u64(),
            v["mode"].as_u64()
        ),
        (
            Some("docs/big file.bin"),
            Some(3 << 20),
            Some(1),
            Some(0o640)
        )
    );
    let etag = r.header("etag").to_owned();

    let r = s.get("/v1/files/docs/big%20file.bin", a).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), body.as_slice());
    assert_eq!(
        (r.header("etag"), r.header("accept-ranges")),
        (etag.as_str(), "bytes")
    );

    let r = s
        .req("HEAD", "/v1/files/docs/big%20file.bin", Some(a), &[], "")
        .await;
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (StatusCode::OK, "3145728", 0)
    );

    let r = s
        .req(
            "GET",
            "/v1/files/docs/big%20file.bin",
            Some(a),
            &[("if-none-match", &etag)],
            "",
        )
        .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::NOT_MODIFIED, 0));
    let r = s
        .req(
            "GET",
            "/v1/files/docs/big%20file.bin",
            Some(a),
            &[("if-none-match", "\"other\"")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Ranges across chunk boundaries, suffixes, and the bad ones.
    let r = s
        .req(
            "GET",
            "/v1/files/docs/big%20file.bin",
            Some(a),
            &[("range", "bytes=1000000-2100000")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), "bytes 1000000-2100000/3145728");
    assert_eq!(r.body.as_ref(), &body[1_000_000..=2_100_000]);
    let r = s
        .req(
            "GET",
            "/v1/files/docs/big%20file.bin",
            Some(a),
            &[("range", "bytes=-10")],
            "",
        )
        .await;
    assert_eq!(r.body.as_ref(), &body[body.len() - 10..]);
    let r = s
        .req(
            "GET",
            "/v1/files/docs/big%20file.bin",
            Some(a),
            &[("range", "bytes=4000000-")],
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable".into()
        )
    );
    assert_eq!(r.header("content-range"), "bytes */3145728");
    for bad in ["bytes=9-1", "bytes=a-b", "pages=1-2", "bytes=0-1,4-5"] {
        let r = s
            .req(
                "GET",
                "/v1/files/docs/big%20file.bin",
                Some(a),
                &[("range", bad)],
                "",
            )
            .await;
        assert_eq!(
            (r.status, r.body.len()),
            (StatusCode::OK, body.len()),
            "{bad} is ignored"
        );
    }

    // A second version; the first stays readable.
    let r = s
        .req("PUT", "/v1/files/docs/big%20file.bin", Some(a), &[], "v2")
        .await;
    assert_eq!(r.json()["version"], 2);
    assert_ne!(r.header("etag"), etag);
    let r = s.get("/v1/files/docs/big%20file.bin?versions", a).await;
    let vs = r.json()["versions"].as_array().unwrap().clone();
    assert_eq!(
        vs.iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let r = s.get("/v1/files/docs/big%20file.bin?version=1", a).await;
    assert_eq!(r.body.len(), body.len());
    assert_eq!(
        s.get("/v1/files/docs/big%20file.bin", a)
            .await
            .body
            .as_ref(),
        b"v2"
    );
    let r = s.get("/v1/files/docs/big%20file.bin?version=9", a).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    // Tree with depth and keyset pages.
    for p in ["docs/a.txt", "docs/sub/b.txt", "top.txt"] {
        let r = s
            .req("PUT", &format!("/v1/files/{p}"), Some(a), &[], p.to_owned())
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = s.get("/v1/tree?path=/docs&depth=1", a).await;
    let names: Vec<String> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        ["file:docs/a.txt", "file:docs/big file.bin", "dir:docs/sub"]
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("&cursor={}", urlencode(c)),
            None => String::new(),
        };
        let r = s
            .get(&format!("/v1/tree?path=/&depth=5&limit=2{q}"), a)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        let j = r.json();
        seen.extend(
            j["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "file")
                .map(|e| e["path"].as_str().unwrap().to_owned()),
        );
        match j["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "docs/a.txt",
            "docs/big file.bin",
            "docs/sub/b.txt",
            "top.txt"
        ]
    );

    let r = s.req("DELETE", "/v1/files/top.txt", Some(a), &[], "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = s.get("/v1/files/top.txt", a).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = s.req("DELETE", "/v1/files/top.txt", Some(a), &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Served bytes were metered for the tenant.
    let served = s.usage_total("storage.bytes_served", a).await;
    assert!(served >= 2 * (3 << 20), "served {served}");
    // Every authenticated request is metered as `api.requests`.
    let requests = s.usage_total("api.requests", a).await;
    assert!(requests >= 25, "api.requests {requests}");
    s.assert_documented().await;
    s.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_permissions_and_tenants_are_enforced() {
    let s = start(|_| {}).await;
    let a = &s.admin;
    assert_eq!(
        s.post("/v1/tenants", a, &json!({"name": "acme"}))
            .await
            .status,
        StatusCode::CREATED
    );
    let r = s.post("/v1/tenants", a, &json!({"name": "acme"})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_exists".into())
    );
    let r = s.get("/v1/tenants", a).await;
    assert_eq!(r.json()["tenants"], json!(["acme", "default"]));

    let reader = s.token("default", "bob", &["storage.read"]).await;
    let acme = s.token("acme", "carol", &["storage.*", "admin.*"]).await;
    assert_eq!(
        s.req("PUT", "/v1/files/secret.txt", Some(a), &[], "default's")
            .await
            .status,
        StatusCode::CREATED
    );

    // No token, a malformed one, a made-up one.
    for t in [None, Some("nope"), Some("ash_0000000000000001_00")] {
        let r = s.req("GET", "/v1/files/secret.txt", t, &[], "").await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "unauthenticated".into())
        );
        assert_eq!(r.header("www-authenticate"), "Bearer");
    }
    // Read-only token: reads, cannot write.
    assert_eq!(
        s.get("/v1/files/secret.txt", &reader).await.body.as_ref(),
        b"default's"
    );
    let r = s.req("PUT", "/v1/files/x", Some(&reader), &[], "x").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let r = s.get("/v1/syncs", &reader).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Another tenant's token sees its own namespace, and cannot ask for ours.
    let r = s.get("/v1/files/secret.txt", &acme).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s
        .req(
            "GET",
            "/v1/files/secret.txt",
            Some(&acme),
            &[("x-asheville-tenant", "default")],
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let r = s
        .req("PUT", "/v1/files/mine.txt", Some(&acme), &[], "acme's")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        s.get("/v1/files/mine.txt", a).await.status,
        StatusCode::NOT_FOUND
    );
    let r = s
        .req(
            "GET",
            "/v1/files/mine.txt",
            Some(a),
            &[("x-asheville-tenant", "acme")],
            "",
        )
        .await;
    assert_eq!(
        r.body.as_ref(),
        b"acme's",
        "a `*` admin may act in any tenant"
    );

    // Chunks: content-addressed, per tenant.
    let r = s
        .req("POST", "/v1/chunks", Some(a), &[], vec![5u8; 70_000])
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);
    let r = s
        .req("POST", "/v1/chunks", Some(a), &[], vec![5u8; 70_000])
        .await;
    assert_eq!(
        (r.status, r.json()["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    assert_eq!(r.json()["existing"], true);
    let r = s.get(&format!("/v1/chunks/{id}"), a).await;
    assert_eq!(r.body.as_ref(), vec![5u8; 70_000].as_slice());
    let r = s.get(&format!("/v1/chunks/{id}"), &acme).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another tenant's chunk");
    let r = s
        .req("POST", "/v1/chunks", Some(&acme), &[], vec![5u8; 70_000])
        .await;
    assert_ne!(
        r.json()["id"].as_str(),
        Some(id.as_str()),
        "ids are keyed per tenant"
    );
    let r = s.get("/v1/chunks/zz", a).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_input".into())
    );
    let r = s.get(&format!("/v1/chunks/{}", "0".repeat(64)), a).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s.req("POST", "/v1/chunks", Some(&reader), &[], "x").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A tenant's admin manages its tokens but cannot make tenants, nor
    // see another tenant's tokens.
    let r = s.post("/v1/tenants", &acme, &json!({"name": "evil"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = s
        .post(
            "/v1/tokens",
            &acme,
            &json!({"user": "dave", "permissions": ["storage.read"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let dave = r.json()["token"].as_str().unwrap().to_owned();
    let dave_id = r.json()["id"].as_u64().unwrap();
    assert_eq!(r.json()["grants"][0]["tenant"], "acme");
    let r = s.get("/v1/tokens", &acme).await;
    let listed = r.json()["tokens"].as_array().unwrap().clone();
    assert!(listed.iter().all(|t| t["tenant"] == "acme") && listed.len() == 2);
    assert!(
        !r.body.windows(4).any(|w| w == b"hash"),
        "token hashes are never listed"
    );
    assert_eq!(
        s.get("/v1/files/mine.txt", &dave).await.status,
        StatusCode::OK
    );
    let r = s
        .req(
            "DELETE",
            &format!("/v1/tokens/{dave_id}"),
            Some(&reader),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = s
        .req("DELETE", &format!("/v1/tokens/{dave_id}"), Some(a), &[], "")
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "not a token of the default tenant"
    );
    let r = s
        .req(
            "DELETE",
            &format!("/v1/tokens/{dave_id}"),
            Some(&acme),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = s.get("/v1/files/mine.txt", &dave).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );
    let r = s
        .post(
            "/v1/tokens",
            &acme,
            &json!({"user": "eve", "permissions": ["root"]}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_input".into())
    );
    s.assert_documented().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let s = start(|c| {
        c.limits.json_body = 1024;
        c.limits.chunk_body = 4096;
    })
    .await;
    let a = &s.admin;
    for p in [
        "/v1/files/a/../b",
        "/v1/files/a/%2e%2e/b",
        "/v1/files/..",
        "/v1/files/a%00b",
    ] {
        let r = s.req("PUT", p, Some(a), &[], "x").await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_input".into()),
            "{p}"
        );
    }
    let r = s.req("PUT", "/v1/files/a%zz", Some(a), &[], "x").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let r = s.get("/v1/tree?path=/&depth=5", a).await;
    assert_eq!(r.json()["entries"], json!([]), "nothing was stored");

    let r = s
        .req("POST", "/v1/tenants", Some(a), &[], "{not json")
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_json".into())
    );
    let r = s
        .post("/v1/tenants", a, &json!({"name": "x", "extra": 1}))
        .await;
    assert_eq!(r.code(), "bad_json", "unknown fields are refused");
    let r = s
        .post("/v1/tenants", a, &json!({"name": "bad name!"}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_input".into())
    );
    let big = json!({"name": "x".repeat(2000)});
    let r = s.post("/v1/tenants", a, &big).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into())
    );
    assert_eq!(
        s.get("/v1/tenants", a).await.json()["tenants"],
        json!(["default"])
    );

    let r = s.req("PATCH", "/v1/tree", Some(a), &[], "").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
    let r = s.get("/v1/nothing", a).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = s.get("/v1/syncs/abc", a).await;
    assert_eq!(r.code(), "bad_request");
    let r = s.get("/v1/syncs/999", a).await;
    assert_eq!(r.code(), "not_found");
    let r = s.get("/v1/tree?depth=x", a).await;
    assert_eq!(r.code(), "bad_request");
    let r = s.get("/v1/usage?meter=NOT%20A%20METER", a).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = s.get("/v1/events", a).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UPGRADE_REQUIRED, "websocket_required".into())
    );
    let r = s.get("/v1/invoices/2026-11", a).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "no_price_plan".into())
    );
    // A local source reads the server's disk: only with admin.sources.
    let writer = s.token("default", "w", &["sync.manage", "sync.read"]).await;
    let r = s
        .post(
            "/v1/sources",
            &writer,
            &json!({"name": "etc", "kind": {"type": "local_dir", "path": "/etc"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let r = s.get("/v1/sources", &writer).await;
    assert_eq!(r.json()["sources"], json!([]));

    // Oversized headers are refused by the HTTP layer.
    let huge = "x".repeat(100 << 10);
    let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/healthz")
        .header("host", "x")
        .header("x-big", huge)
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Either a 431 or a closed connection; never a 200.
    if let Ok(resp) = send.send_request(req).await {
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    s.assert_documented().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_gets_429_with_retry_after() {
    let s = start(|c| {
        c.limits.tenant_rate = 0.5;
        c.limits.tenant_burst = 3.0;
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(s.get("/v1/tree", &s.admin).await);
    }
    assert!(codes[..3].iter().all(|r| r.status == StatusCode::OK));
    let last = &codes[4];
    assert_eq!(
        (last.status, last.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    assert!(last.header("retry-after").parse::<u64>().unwrap() >= 1);
    // Public routes are not limited.
    assert_eq!(
        s.req("GET", "/healthz", None, &[], "").await.status,
        StatusCode::OK
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_picks_the_tenant() {
    let s = start(|c| {
        c.hosts.insert("files.example.com".into(), "acme".into());
    })
    .await;
    let a = &s.admin;
    assert_eq!(
        s.post("/v1/tenants", a, &json!({"name": "acme"}))
            .await
            .status,
        StatusCode::CREATED
    );
    let host = [("host", "files.example.com:8080")];
    let r = s
        .req(
            "PUT",
            "/v1/files/index.html",
            Some(a),
            &host,
            "<h1>acme</h1>",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        s.req("GET", "/v1/files/index.html", Some(a), &host, "")
            .await
            .body
            .as_ref(),
        b"<h1>acme</h1>"
    );
    assert_eq!(
        s.get("/v1/files/index.html", a).await.status,
        StatusCode::NOT_FOUND
    );
    // A token of the default tenant alone cannot use acme's host.
    let other = s.token("default", "u", &["storage.*"]).await;
    let r = s
        .req("GET", "/v1/files/index.html", Some(&other), &host, "")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_answer_202_run_and_stream_their_events() {
    let s = start(|_| {}).await;
    let a = &s.admin;
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("d/f{i}.txt")), format!("file {i}")).unwrap();
    }
    let r = s
        .post(
            "/v1/sources",
            a,
            &json!({"name": "photos", "kind": {"type": "local_dir", "path": src}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());

    // Listen before the sync starts.
    let url = format!("ws://{}/v1/events?after=0&access_token={}", s.addr, a);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    let r = s
        .post("/v1/syncs", a, &json!({"sources": ["photos"]}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.json());
    let loc = r.header("location").to_owned();
    let id = r.json()["jobs"][0]["id"].as_u64().unwrap();
    assert_eq!(loc, format!("/v1/syncs/{id}"));
    // The job was durable before the 202: it is there to read.
    assert_eq!(s.get(&loc, a).await.json()["id"], id);

    let mut states = Vec::new();
    let mut last_seq = 0;
    while !states.contains(&"succeeded".to_owned()) {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        let e: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_eq!(e["tenant"], "default");
        assert!(e["seq"].as_u64().unwrap() > last_seq);
        last_seq = e["seq"].as_u64().unwrap();
        if e["type"] == "state" && e["job"] == id {
            states.push(e["to"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(states, ["queued", "running", "succeeded"]);
    let job = s.get(&loc, a).await.json();
    assert_eq!(
        (
            job["state"].as_str(),
            job["progress"]["items_stored"].as_u64()
        ),
        (Some("succeeded"), Some(20))
    );
    let r = s.get("/v1/files/sync/admin/photos/d/f7.txt", a).await;
    assert_eq!(r.body.as_ref(), b"file 7");
    let r = s.get("/v1/syncs", a).await;
    assert_eq!(r.json()["sources"][0]["last_job"]["id"], id);

    // Resume from a sequence number: only later events come.
    let url = format!(
        "ws://{}/v1/events?after={}&access_token={}",
        s.addr,
        last_seq - 1,
        a
    );
    let (mut ws2, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), ws2.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let e: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
    assert_eq!(e["seq"], last_seq);

    let r = s
        .post(&format!("/v1/syncs/{id}/restart"), a, &json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let r = s
        .post(&format!("/v1/syncs/{id}/cancel"), a, &json!({}))
        .await;
    assert!(
        r.status == StatusCode::OK || r.status == StatusCode::CONFLICT,
        "{:?}",
        r.json()
    );
    // Another tenant does not see the job, nor its events.
    s.post("/v1/tenants", a, &json!({"name": "acme"})).await;
    let acme = s.token("acme", "x", &["sync.*"]).await;
    assert_eq!(s.get(&loc, &acme).await.status, StatusCode::NOT_FOUND);
    let url = format!("ws://{}/v1/events?after=0&access_token={}", s.addr, acme);
    let (mut ws3, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ws3.next())
            .await
            .is_err(),
        "no events of default"
    );
    // A bad token cannot open the stream.
    let url = format!("ws://{}/v1/events?access_token=bad", s.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());

    // Usage and an invoice with a plan.
    let r = s
        .get("/v1/usage?meter=storage.bytes_ingested&granularity=day", a)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.json()["rows"].as_array().unwrap().is_empty());
    drop((ws, ws2, ws3));
    s.assert_documented().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_come_as_json_or_csv_from_the_configured_plan() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("plan.json"),
        r#"{"name":"standard","currency":"USD","meters":{
        "storage.bytes_ingested":{"unit":"byte","tiers":[{"price":"0.000001"}]}}}"#,
    )
    .unwrap();
    let s = start(|c| c.data_dir = data.clone()).await;
    let a = &s.admin;
    s.req("PUT", "/v1/files/x", Some(a), &[], vec![1u8; 1000])
        .await;
    let period = {
        let days = asheville_storage::catalog::now_ns() / asheville_core::metering::DAY_NS;
        let (y, m, _) = asheville_core::metering::civil_from_days(days);
        format!("{y:04}-{m:02}")
    };
    let r = s.get(&format!("/v1/invoices/{period}"), a).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(
        r.json()["total"].as_str().unwrap().parse::<f64>().unwrap(),
        0.001
    );
    let r = s
        .req(
            "GET",
            &format!("/v1/invoices/{period}"),
            Some(a),
            &[("accept", "text/csv")],
            "",
        )
        .await;
    assert!(r.header("content-type").starts_with("text/csv"));
    assert!(String::from_utf8_lossy(&r.body).contains("storage.bytes_ingested"));
    let r = s.get("/v1/invoices/2026-13", a).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_openapi_cover_every_route() {
    let s = start(|_| {}).await;
    assert_eq!(
        s.req("GET", "/healthz", None, &[], "").await.json()["status"],
        "ok"
    );
    assert_eq!(
        s.req("GET", "/readyz", None, &[], "").await.json()["status"],
        "ready"
    );
    let doc = s.req("GET", "/v1/openapi.json", None, &[], "").await.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented = HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let routes: HashSet<String> = asheville_server::http::ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method, r.pattern))
        .collect();
    assert_eq!(documented, routes);
    let page = s.req("GET", "/", None, &[], "").await;
    assert!(String::from_utf8_lossy(&page.body).contains("/v1/events"));
    let m = String::from_utf8(s.req("GET", "/metrics", None, &[], "").await.body.to_vec()).unwrap();
    assert!(
        m.contains("asheville_http_requests_total{route=\"healthz\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(m.contains(
        "asheville_http_request_duration_seconds_bucket{route=\"healthz\",le=\"+Inf\"} 1"
    ));
    assert!(m.contains("# TYPE asheville_jobs gauge"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(|_| {}).await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "PUT /v1/files/slow.bin HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 200000\r\n\r\n",
        s.admin
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&[7u8; 100_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (addr, admin) = (s.addr, s.admin.clone());
    let stopping = tokio::spawn(s.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "waits for the request in flight");
    // New connections are no longer accepted.
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the listener is closed");
    c.write_all(&[7u8; 100_000]).await.unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    let _ = admin;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_from_the_openapi_document() {
    // No sync workers: generated sources must never make the server read
    // its own disk.
    let s = start(|c| {
        c.workers = 0;
        c.limits.tenant_rate = 1e6;
        c.limits.tenant_burst = 1e6;
    })
    .await;
    let bin = ["schemathesis", "st"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("schemathesis is needed: pip install schemathesis (.ci/run does)");
    let work = tempfile::tempdir().unwrap();
    let (addr, admin) = (s.addr, s.admin.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .current_dir(work.path())
            .args(["run", &format!("http://{addr}/v1/openapi.json")])
            .args(["-H", &format!("Authorization: Bearer {admin}")])
            .args(["-c", "not_a_server_error", "-n", "25"])
            .args(["--generation-deterministic", "--request-timeout", "20"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found server errors:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    s.stop().await;
}
