//! The `remote` backend: shards kept by another Asheville server acting as
//! an array node (its `/v1/objects/` API, guarded by a token with the
//! `node.objects` permission). A user's own machine can hold shards the
//! way a cloud bucket does.
//!
//! Plain `http://` only for now (put a TLS proxy in front of a node reached
//! over an untrusted network); shards are sealed (AES-256-GCM) before they
//! leave the repository, so a node never sees plaintext.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Backend, ListPage, ObjectInfo};
use crate::error::{Error, ErrorKind, Result};

type ReqBody = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A remote node's objects over HTTP.
pub struct RemoteBackend {
    name: String,
    base: String,
    auth: String,
    client: Client<HttpConnector, ReqBody>,
    timeout: Duration,
    retries: u32,
}

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteBackend({}: {}, token=<redacted>)",
            self.name, self.base
        )
    }
}

/// Percent-encodes a key for a URL path (keeps `/` and unreserved bytes).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RemoteBackend {
    /// A backend over the node at `url` (`http://host:port`), with a node
    /// token.
    pub fn new(name: &str, url: &str, token: &str) -> Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "a remote node URL is http://host:port (use a TLS proxy for https)",
            )
            .with_context("backend", name)
            .with_context("url", url));
        }
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(10)));
        Ok(RemoteBackend {
            name: name.to_owned(),
            base,
            auth: format!("Bearer {token}"),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(conn),
            timeout: Duration::from_secs(120),
            retries: 3,
        })
    }

    fn err(&self, kind: ErrorKind, msg: &'static str, key: &str) -> Error {
        Error::new(kind, msg)
            .with_context("backend", &self.name)
            .with_context("key", key)
    }

    /// One request, retried on connection failures and 5xx answers.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<Bytes>>,
        range: Option<Range<u64>>,
        key: &str,
    ) -> Result<(StatusCode, Bytes)> {
        let mut attempt = 0;
        loop {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(format!("{}{}", self.base, path_and_query))
                .header(hyper::header::AUTHORIZATION, &self.auth);
            if let Some(r) = &range {
                b = b.header(
                    hyper::header::RANGE,
                    format!("bytes={}-{}", r.start, r.end - 1),
                );
            }
            let req_body: ReqBody = match &body {
                Some(parts) => {
                    let len: usize = parts.iter().map(|p| p.len()).sum();
                    b = b.header(hyper::header::CONTENT_LENGTH, len);
                    let frames = parts
                        .clone()
                        .into_iter()
                        .map(|p| Ok::<_, std::convert::Infallible>(Frame::data(p)));
                    BodyExt::boxed_unsync(StreamBody::new(futures::stream::iter(frames)))
                }
                None => Full::new(Bytes::new()).boxed_unsync(),
            };
            let req = b.body(req_body).map_err(|e| {
                self.err(ErrorKind::InvalidInput, "bad request", key)
                    .set_source(e)
            })?;
            let fut = async {
                let resp = self.client.request(req).await.map_err(|e| {
                    self.err(ErrorKind::Transient, "the node did not answer", key)
                        .set_source(e)
                })?;
                let status = resp.status();
                let body = resp.into_body().collect().await.map_err(|e| {
                    self.err(ErrorKind::Transient, "the node's answer broke off", key)
                        .set_source(e)
                })?;
                Ok::<_, Error>((status, body.to_bytes()))
            };
            let r = match tokio::time::timeout(self.timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(self.err(ErrorKind::Transient, "the node timed out", key)),
            };
            let retry = match &r {
                Err(e) => e.kind() == ErrorKind::Transient,
                Ok((s, _)) => s.is_server_error(),
            };
            if retry && attempt < self.retries {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                continue;
            }
            let (status, bytes) = r?;
            if status.is_success() {
                return Ok((status, bytes));
            }
            return Err(self.status_err(status, &bytes, key));
        }
    }

    fn status_err(&self, status: StatusCode, body: &[u8], key: &str) -> Error {
        let kind = match status {
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::BAD_REQUEST | StatusCode::RANGE_NOT_SATISFIABLE => ErrorKind::InvalidInput,
            StatusCode::UNAUTHORIZED => ErrorKind::Unauthenticated,
            StatusCode::FORBIDDEN => ErrorKind::Forbidden,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::InvalidInput,
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::Transient,
            s if s.is_server_error() => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Error::new(kind, "the node refused the request")
            .with_context("backend", &self.name)
            .with_context("key", key)
            .with_context("status", status.as_u16())
            .with_context("node says", message)
    }

    fn object(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.starts_with('/') {
            return Err(self.err(ErrorKind::InvalidInput, "invalid object key", key));
        }
        Ok(format!("/v1/objects/{}", encode(key, true)))
    }
}

#[async_trait::async_trait]
impl Backend for RemoteBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        let p = self.object(key)?;
        self.call(Method::PUT, &p, Some(parts), None, key).await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let p = self.object(key)?;
        Ok(self.call(Method::GET, &p, None, None, key).await?.1)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.start >= range.end {
            return Err(self
                .err(ErrorKind::InvalidInput, "empty or inverted range", key)
                .with_context("range", format!("{range:?}")));
        }
        let p = self.object(key)?;
        let want = range.end - range.start;
        let (status, b) = self
            .call(Method::GET, &p, None, Some(range.clone()), key)
            .await?;
        if status != StatusCode::PARTIAL_CONTENT || b.len() as u64 != want {
            return Err(self
                .err(ErrorKind::InvalidInput, "range outside the object", key)
                .with_context("range", format!("{range:?}")));
        }
        Ok(b)
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        // The size is the HEAD answer's Content-Length.
        let p = self.object(key)?;
        let req = Request::builder()
            .method(Method::HEAD)
            .uri(format!("{}{}", self.base, p))
            .header(hyper::header::AUTHORIZATION, &self.auth)
            .body(Full::new(Bytes::new()).boxed_unsync())
            .map_err(|e| {
                self.err(ErrorKind::InvalidInput, "bad request", key)
                    .set_source(e)
            })?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| self.err(ErrorKind::Transient, "the node timed out", key))?
            .map_err(|e| {
                self.err(ErrorKind::Transient, "the node did not answer", key)
                    .set_source(e)
            })?;
        if !resp.status().is_success() {
            return Err(self.status_err(resp.status(), &[], key));
        }
        let size = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| self.err(ErrorKind::Other, "the node sent no length", key))?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size,
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let p = self.object(key)?;
        self.call(Method::DELETE, &p, None, None, key).await?;
        Ok(())
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage> {
        if limit == 0 {
            return Ok(ListPage::default());
        }
        let mut q = format!(
            "/v1/objects?prefix={}&limit={}",
            encode(prefix, false),
            limit.min(10_000)
        );
        if let Some(a) = after {
            q.push_str("&after=");
            q.push_str(&encode(a, false));
        }
        let (_, body) = self.call(Method::GET, &q, None, None, prefix).await?;
        #[derive(serde::Deserialize)]
        struct Obj {
            key: String,
            size: u64,
        }
        #[derive(serde::Deserialize)]
        struct Page {
            objects: Vec<Obj>,
            next: Option<String>,
        }
        let page: Page = serde_json::from_slice(&body).map_err(|e| {
            self.err(
                ErrorKind::Other,
                "the node's listing does not parse",
                prefix,
            )
            .set_source(e)
        })?;
        Ok(ListPage {
            objects: page
                .objects
                .into_iter()
                .map(|o| ObjectInfo {
                    key: o.key,
                    size: o.size,
                })
                .collect(),
            next: page.next,
        })
    }
}
