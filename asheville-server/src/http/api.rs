//! Handlers: each turns a request into one library call and its result
//! into a response. Nothing here stores or computes anything the library
//! does not.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use asheville_core::auth::{Permission, allowed};
use asheville_storage::auth::Grant;
use asheville_storage::backend::{Backend, BackendKind, ObjectStoreBackend};
use asheville_storage::catalog::{FileMeta, FileVersion};
use asheville_storage::metering::UsageQuery;
use asheville_sync::{JobId, SourceKind, SourceSpec};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::routes::{Params, Route};
use super::{ApiError, ApiResult, App, Body, now_ns};

/// A JSON error response.
pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = Response::builder()
        .status(e.status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(e.body()))
        .unwrap_or_else(|_| Response::new(full("{}")));
    if let Some(s) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(a) = &e.allow
        && let Ok(v) = HeaderValue::from_str(a)
    {
        r.headers_mut().insert(header::ALLOW, v);
    }
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn respond(status: StatusCode, v: &Value) -> ApiResult<Response<Body>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(v.to_string()))
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> ApiResult<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

/// Percent-decodes a path or query component.
pub(crate) fn decode(s: &str, plus_is_space: bool) -> ApiResult<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad_request("a bad percent-escape in the URL"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the URL is not UTF-8"))
}

pub(crate) fn query(req: &Request<Incoming>) -> ApiResult<HashMap<String, String>> {
    let mut q = HashMap::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        q.insert(decode(k, true)?, decode(v, true)?);
    }
    Ok(q)
}

fn param(params: &Params, name: &str) -> ApiResult<String> {
    let raw = params
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ApiError::internal(format!("route parameter {name} missing")))?;
    decode(raw, false)
}

fn num<T: std::str::FromStr>(q: &HashMap<String, String>, k: &str, default: T) -> ApiResult<T> {
    match q.get(k) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("query parameter `{k}` is not a number"))),
    }
}

/// Who is calling, in which tenant.
pub(crate) struct Ctx {
    pub tenant: String,
    pub user: String,
    grants: Vec<Grant>,
}

impl Ctx {
    fn may(&self, permission: &str, any_tenant_only: bool) -> bool {
        let Ok(wanted) = Permission::parse(permission) else {
            return false;
        };
        let perms: Vec<Permission> = self
            .grants
            .iter()
            .filter(|g| g.tenant == "*" || (!any_tenant_only && g.tenant == self.tenant))
            .map(|g| g.permission.clone())
            .collect();
        allowed(&perms, &wanted)
    }

    fn require(&self, permission: &str, any_tenant_only: bool) -> ApiResult<()> {
        if self.may(permission, any_tenant_only) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "the token lacks `{permission}` in {}",
                    if any_tenant_only {
                        "every tenant (`*`)".to_owned()
                    } else {
                        format!("tenant `{}`", self.tenant)
                    }
                ),
            ))
        }
    }
}

fn bearer(req: &Request<Incoming>, q: &HashMap<String, String>, route: &Route) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION)
        && let Ok(s) = v.to_str()
        && let Some(t) = s.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    // Browsers cannot set headers on a websocket; the event stream alone
    // takes the token from the query.
    if route.name == "events" {
        return q.get("access_token").cloned();
    }
    None
}

fn authenticate(
    app: &App,
    req: &Request<Incoming>,
    q: &HashMap<String, String>,
    route: &Route,
) -> ApiResult<Ctx> {
    let token = bearer(req, q, route).ok_or_else(|| {
        ApiError::unauthenticated("send `Authorization: Bearer <token>` with an Asheville token")
    })?;
    let (who, grants) = app.auth.authenticate(&token, now_ns())?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .map_or(h, |(n, _)| n)
                .to_ascii_lowercase()
        });
    let tenant = if let Some(t) = host.and_then(|h| app.cfg.hosts.get(&h)) {
        t.clone()
    } else if let Some(t) = req.headers().get("x-asheville-tenant") {
        t.to_str()
            .map_err(|_| ApiError::bad_request("x-asheville-tenant is not text"))?
            .to_owned()
    } else {
        who.tenant.clone()
    };
    // A tenant named by the request (Host or header) must exist: its name
    // also names directories (the node's objects), so it is never taken
    // unchecked.
    if tenant != who.tenant && !app.auth.has_tenant(&tenant)? {
        return Err(ApiError::not_found("no such tenant"));
    }
    let ctx = Ctx {
        tenant,
        user: who.user,
        grants,
    };
    if let Some(p) = route.permission {
        ctx.require(p, p == "admin.tenants")?;
    }
    Ok(ctx)
}

/// Runs the route's handler.
pub async fn dispatch(
    app: &Arc<App>,
    route: &'static Route,
    params: Params,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let q = query(&req)?;
    match route.name {
        "status_page" => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header("content-security-policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
                .body(full(include_str!("status.html")))
                .map_err(|e| ApiError::internal(e.to_string()));
        }
        "healthz" => return respond(StatusCode::OK, &json!({"status": "ok"})),
        "readyz" => {
            // Ready when the catalog and the stores answer.
            app.auth.tenants()?;
            app.repo.catalog().meta("config")?;
            return respond(StatusCode::OK, &json!({"status": "ready"}));
        }
        "metrics" => {
            let jobs = app.job_counts().await;
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(full(app.metrics.render(&jobs)))
                .map_err(|e| ApiError::internal(e.to_string()));
        }
        "openapi" => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(app.openapi.clone()))
                .map_err(|e| ApiError::internal(e.to_string()));
        }
        _ => {}
    }
    let ctx = authenticate(app, &req, &q, route)?;
    app.count_request(&ctx.tenant);
    if let Err(wait) = app.rate.take(&ctx.tenant) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("tenant `{}` is over its request rate", ctx.tenant),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    match route.name {
        "put_file" => put_file(app, &ctx, &params, req).await,
        "get_file" | "head_file" => get_file(app, &ctx, &params, &q, req).await,
        "delete_file" => {
            let t = app.tenant(&ctx.tenant).await?;
            t.delete(&param(&params, "path")?).await?;
            no_content()
        }
        "tree" => {
            let t = app.tenant(&ctx.tenant).await?;
            let page = t.list(
                q.get("path").map_or("/", |s| s.as_str()),
                num(&q, "depth", 1usize)?.clamp(1, 64),
                q.get("cursor").map(|s| s.as_str()),
                num(&q, "limit", 1000usize)?,
            )?;
            respond(
                StatusCode::OK,
                &json!({"entries": to_json(&page.entries)?, "cursor": page.cursor}),
            )
        }
        "put_chunk" => put_chunk(app, &ctx, req).await,
        "get_chunk" => get_chunk(app, &ctx, &params).await,
        "add_source" => add_source(app, &ctx, req).await,
        "list_sources" => {
            let user = user_of(&ctx, &q)?;
            let s = app.conductor.sources(&ctx.tenant, &user).await?;
            respond(StatusCode::OK, &json!({ "sources": to_json(&s)? }))
        }
        "delete_source" => {
            let user = user_of(&ctx, &q)?;
            app.conductor
                .remove_source(&ctx.tenant, &user, &param(&params, "name")?)
                .await?;
            no_content()
        }
        "create_sync" => create_sync(app, &ctx, req).await,
        "list_syncs" => {
            let user = user_of(&ctx, &q)?;
            let s = app.conductor.status(&ctx.tenant, &user).await?;
            respond(StatusCode::OK, &json!({ "sources": to_json(&s)? }))
        }
        "get_sync" => {
            let j = app.conductor.job(&ctx.tenant, job_id(&params)?).await?;
            respond(StatusCode::OK, &to_json(&j)?)
        }
        "cancel_sync" => {
            let j = app
                .conductor
                .cancel(&ctx.tenant, job_id(&params)?, "cancelled over HTTP")
                .await?;
            respond(StatusCode::OK, &to_json(&j)?)
        }
        "restart_sync" => {
            let j = app.conductor.restart(&ctx.tenant, job_id(&params)?).await?;
            respond(StatusCode::OK, &to_json(&j)?)
        }
        "events" => super::ws::events(app.clone(), ctx, &q, req),
        "usage" => usage(app, &ctx, &q),
        "invoice" => invoice(app, &ctx, &params, &req),
        "create_tenant" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct B {
                name: String,
            }
            let b: B = json_body(app, req).await?;
            if app.auth.has_tenant(&b.name)? {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_exists",
                    "the tenant exists",
                ));
            }
            app.create_tenant(&b.name).await?;
            app.tenant(&b.name).await?;
            respond(StatusCode::CREATED, &json!({"name": b.name}))
        }
        "list_tenants" => respond(StatusCode::OK, &json!({"tenants": app.auth.tenants()?})),
        "create_token" => create_token(app, &ctx, req).await,
        "list_tokens" => {
            let t = app.auth.tokens(&ctx.tenant)?;
            let list = t.iter().map(token_json).collect::<ApiResult<Vec<_>>>()?;
            respond(StatusCode::OK, &json!({ "tokens": list }))
        }
        "revoke_token" => {
            let id = param(&params, "id")?
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("a token id is a number"))?;
            app.auth
                .revoke(&ctx.tenant, asheville_core::auth::TokenId(id), now_ns())?;
            no_content()
        }
        "put_object" | "get_object" | "head_object" | "delete_object" | "list_objects" => {
            objects(app, &ctx, route.name, &params, &q, req).await
        }
        other => Err(ApiError::internal(format!("no handler for {other}"))),
    }
}

fn no_content() -> ApiResult<Response<Body>> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn job_id(params: &Params) -> ApiResult<JobId> {
    param(params, "id")?
        .parse::<u64>()
        .map(JobId)
        .map_err(|_| ApiError::bad_request("a job id is a number"))
}

/// `?user=` when the token may manage other users' syncs, else the token's
/// own user.
fn user_of(ctx: &Ctx, q: &HashMap<String, String>) -> ApiResult<String> {
    match q.get("user") {
        Some(u) if *u != ctx.user => {
            ctx.require("admin.users", false)?;
            Ok(u.clone())
        }
        _ => Ok(ctx.user.clone()),
    }
}

/// The request body as a stream of byte pieces, each within `idle` of the
/// last; counts into the metrics and stops with an error past `limit`.
fn body_stream(
    app: &App,
    body: Incoming,
    limit: Option<u64>,
) -> futures::stream::BoxStream<'static, std::io::Result<Bytes>> {
    let idle = app.cfg.limits.body_idle_timeout;
    let counter = Arc::clone(&app.metrics.bytes_in);
    let state = (body, 0u64);
    futures::stream::unfold(Some(state), move |st| {
        let counter = counter.clone();
        async move {
            let (mut body, mut seen) = st?;
            loop {
                let frame = match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client stopped sending the body",
                        );
                        return Some((Err(e), None));
                    }
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e)), None)),
                    Ok(Some(Ok(f))) => f,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                seen += data.len() as u64;
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(l) = limit
                    && seen > l
                {
                    let e =
                        std::io::Error::new(std::io::ErrorKind::FileTooLarge, "body over limit");
                    return Some((Err(e), None));
                }
                return Some((Ok(data), Some((body, seen))));
            }
        }
    })
    .boxed()
}

/// Reads a whole body of at most `limit` bytes.
async fn read_body(app: &App, req: Request<Incoming>, limit: u64) -> ApiResult<Bytes> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::too_large(limit));
    }
    let mut s = std::pin::pin!(body_stream(app, req.into_body(), Some(limit)));
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        match piece {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(ApiError::too_large(limit));
            }
            Err(e) => return Err(ApiError::bad_request(format!("reading the body: {e}"))),
        }
    }
    Ok(out.into())
}

async fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    req: Request<Incoming>,
) -> ApiResult<T> {
    let b = read_body(app, req, app.cfg.limits.json_body).await?;
    serde_json::from_slice(&b).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not the JSON this route takes: {e}"),
        )
    })
}

fn header_i64(req: &Request<Incoming>, name: &str) -> ApiResult<Option<i64>> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| ApiError::bad_request(format!("header {name} is not an integer")))
        })
        .transpose()
}

async fn put_file(
    app: &App,
    ctx: &Ctx,
    params: &Params,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let path = param(params, "path")?;
    asheville_storage::RepoPath::parse(&path)?;
    let meta = FileMeta {
        mtime_ns: header_i64(&req, "x-asheville-mtime-ns")?.unwrap_or_else(now_ns),
        mode: header_i64(&req, "x-asheville-mode")?.map_or(0o644, |m| (m & 0o7777) as u32),
    };
    let t = app.tenant(&ctx.tenant).await?;
    let reader = tokio_util::io::StreamReader::new(body_stream(app, req.into_body(), None));
    let fv = t.put(&path, reader, meta).await?;
    let mut r = respond(StatusCode::CREATED, &version_json(&fv))?;
    r.headers_mut().insert(header::ETAG, etag_header(&fv));
    Ok(r)
}

fn etag(fv: &FileVersion) -> String {
    let mut h = blake3::Hasher::new();
    for c in &fv.chunks {
        h.update(c.id.as_bytes());
    }
    h.update(&fv.size.to_le_bytes());
    format!("\"{}\"", &h.finalize().to_hex()[..32])
}

fn etag_header(fv: &FileVersion) -> HeaderValue {
    HeaderValue::from_str(&etag(fv)).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn version_json(fv: &FileVersion) -> Value {
    json!({
        "path": fv.path,
        "version": fv.version,
        "size": fv.size,
        "mtime_ns": fv.meta.mtime_ns,
        "mode": fv.meta.mode,
        "created_ns": fv.created_ns,
        "etag": etag(fv),
    })
}

/// `If-None-Match` holds the version's tag (or `*`).
fn none_match(req: &Request<Incoming>, tag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/") == tag)
}

/// The one range of a `Range: bytes=...` header. `Ok(None)`: serve the
/// whole file (no header, or one this server ignores as RFC 9110 allows:
/// another unit, or several ranges). `Err`: unsatisfiable.
fn parse_range(v: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 {
            return Err(());
        }
        size.saturating_sub(n)..size
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.saturating_add(1).min(size),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(());
        }
        start..end
    };
    Ok(Some(range))
}

async fn get_file(
    app: &App,
    ctx: &Ctx,
    params: &Params,
    q: &HashMap<String, String>,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let path = param(params, "path")?;
    let t = app.tenant(&ctx.tenant).await?;
    if q.contains_key("versions") {
        let vs: Vec<Value> = t.versions(&path)?.iter().map(version_json).collect();
        if vs.is_empty() {
            return Err(ApiError::not_found("no such file"));
        }
        return respond(StatusCode::OK, &json!({ "versions": vs }));
    }
    let fv = match q.get("version") {
        Some(v) => {
            let n: u64 = v
                .parse()
                .map_err(|_| ApiError::bad_request("`version` is a number"))?;
            t.versions(&path)?
                .into_iter()
                .find(|f| f.version == n)
                .ok_or_else(|| ApiError::not_found("no such version"))?
        }
        None => t.stat(&path)?,
    };
    let tag = etag(&fv);
    let mut b = Response::builder()
        .header(header::ETAG, etag_header(&fv))
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-asheville-version", fv.version)
        .header("x-asheville-mtime-ns", fv.meta.mtime_ns);
    if none_match(&req, &tag) {
        return b
            .status(StatusCode::NOT_MODIFIED)
            .body(empty())
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let range = match req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => None,
        Some(v) => match parse_range(v, fv.size) {
            Ok(r) => r,
            Err(()) => {
                let mut e = error_response(&ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("the range `{v}` is outside the file ({} bytes)", fv.size),
                ));
                e.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", fv.size))
                        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0")),
                );
                return Ok(e);
            }
        },
    };
    let (status, r) = match range {
        Some(r) => {
            b = b.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end.saturating_sub(1), fv.size),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        None => (StatusCode::OK, 0..fv.size),
    };
    b = b
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, r.end - r.start);
    if req.method() == hyper::Method::HEAD {
        return b
            .body(empty())
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let out = app.metrics.bytes_out.clone();
    let stream = t.read_stream(&fv, r)?.map(move |piece| match piece {
        Ok(b) => {
            out.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(Frame::data(b))
        }
        Err(e) => Err(std::io::Error::other(e)),
    });
    b.body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Content-addressed chunks are files under `/.chunks/<id>` in the
/// tenant's namespace: deduplicated with everything else, kept until
/// deleted, listed like any directory.
fn chunk_path(id: &asheville_core::ChunkId) -> String {
    format!(".chunks/{}", id.to_hex())
}

async fn put_chunk(app: &App, ctx: &Ctx, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let data = read_body(app, req, app.cfg.limits.chunk_body).await?;
    let t = app.tenant(&ctx.tenant).await?;
    let id = t.chunk_id(&data);
    let path = chunk_path(&id);
    let existing = matches!(t.stat(&path), Ok(fv) if fv.size == data.len() as u64);
    if !existing {
        let meta = FileMeta {
            mtime_ns: now_ns(),
            mode: 0o600,
        };
        t.put(&path, &data[..], meta).await?;
    }
    let status = if existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    respond(
        status,
        &json!({"id": id.to_hex(), "size": data.len(), "existing": existing}),
    )
}

async fn get_chunk(app: &App, ctx: &Ctx, params: &Params) -> ApiResult<Response<Body>> {
    let id = asheville_core::ChunkId::from_hex(&param(params, "id")?)?;
    let t = app.tenant(&ctx.tenant).await?;
    let path = chunk_path(&id);
    let fv = t.stat(&path)?;
    let data = t.get_range(&path, 0..fv.size).await?;
    if t.chunk_id(&data) != id {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "integrity",
            "the stored chunk does not match its id",
        ));
    }
    app.metrics
        .bytes_out
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(full(data))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Source kinds that read the server's own files need `admin.sources`.
async fn add_source(app: &App, ctx: &Ctx, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B {
        name: String,
        #[serde(default)]
        user: Option<String>,
        kind: SourceKind,
        #[serde(default)]
        target: Option<String>,
        #[serde(default)]
        every_secs: Option<u64>,
    }
    let b: B = json_body(app, req).await?;
    let user = match b.user {
        Some(u) if u != ctx.user => {
            ctx.require("admin.users", false)?;
            u
        }
        _ => ctx.user.clone(),
    };
    let local = match &b.kind {
        SourceKind::LocalDir { .. } => true,
        SourceKind::Bucket { store, .. } => {
            !matches!(store, BackendKind::S3(_) | BackendKind::Memory)
        }
        SourceKind::Registered { .. } => false,
    };
    if local {
        ctx.require("admin.sources", false)?;
    }
    let mut spec = SourceSpec::new(&ctx.tenant, &user, &b.name, b.kind);
    spec.target = b.target;
    spec.every = b.every_secs.map(std::time::Duration::from_secs);
    app.conductor.add_source(spec.clone()).await?;
    respond(StatusCode::CREATED, &to_json(&spec)?)
}

async fn create_sync(app: &App, ctx: &Ctx, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct B {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        sources: Vec<String>,
    }
    let b: B = json_body(app, req).await?;
    let user = match b.user {
        Some(u) if u != ctx.user => {
            ctx.require("admin.users", false)?;
            u
        }
        _ => ctx.user.clone(),
    };
    let names: Vec<&str> = b.sources.iter().map(|s| s.as_str()).collect();
    // Durable once this returns: only then is 202 sent.
    let jobs = app
        .conductor
        .create_sync(&ctx.tenant, &user, &names)
        .await?;
    let list: Vec<Value> = jobs
        .iter()
        .map(|(source, e)| {
            json!({"source": source, "id": e.id.0, "url": format!("/v1/syncs/{}", e.id.0),
                   "existing": e.existing})
        })
        .collect();
    let mut r = respond(StatusCode::ACCEPTED, &json!({ "jobs": list }))?;
    if let Some((_, e)) = jobs.first()
        && let Ok(v) = HeaderValue::from_str(&format!("/v1/syncs/{}", e.id.0))
    {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// A time in a query: nanoseconds, or a `YYYY-MM-DD` day (UTC).
fn time_param(q: &HashMap<String, String>, k: &str, default: i64) -> ApiResult<i64> {
    let Some(v) = q.get(k) else {
        return Ok(default);
    };
    if let Ok(n) = v.parse::<i64>() {
        return Ok(n);
    }
    let bad = || ApiError::bad_request(format!("`{k}` is nanoseconds or YYYY-MM-DD"));
    let mut it = v.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let (y, m, d) = (
        y.parse::<i64>().map_err(|_| bad())?,
        m.parse::<u32>().map_err(|_| bad())?,
        d.parse::<u32>().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(asheville_core::metering::days_from_civil(y, m, d)
        .saturating_mul(asheville_core::metering::DAY_NS))
}

fn usage(app: &App, ctx: &Ctx, q: &HashMap<String, String>) -> ApiResult<Response<Body>> {
    use asheville_core::metering::Granularity;
    let meter = q
        .get("meter")
        .cloned()
        .unwrap_or_else(|| asheville_core::metering::BYTES_INGESTED.to_owned());
    asheville_core::metering::validate_meter(&meter)?;
    let granularity = match q.get("granularity").map(|s| s.as_str()) {
        None | Some("day") => Granularity::Day,
        Some("hour") => Granularity::Hour,
        Some("month") => Granularity::Month,
        Some(_) => return Err(ApiError::bad_request("granularity is hour, day or month")),
    };
    let limit = num(q, "limit", 1000usize)?.clamp(1, 10_000);
    let rows = app.meters.query(&UsageQuery {
        tenant: ctx.tenant.clone(),
        meter: meter.clone(),
        granularity,
        from_ns: time_param(q, "from", 0)?,
        to_ns: time_param(q, "to", i64::MAX)?,
        dims: q.get("dims").cloned().unwrap_or_default(),
        after_ns: q
            .get("cursor")
            .map(|c| c.parse::<i64>())
            .transpose()
            .map_err(|_| ApiError::bad_request("bad cursor"))?,
        limit,
    })?;
    let cursor = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.start_ns.to_string()))
        .flatten();
    let gauge = (asheville_core::metering::meter_kind(&meter)
        == asheville_core::metering::MeterKind::Gauge)
        .then(|| app.meters.gauge(&ctx.tenant, &meter))
        .transpose()?;
    respond(
        StatusCode::OK,
        &json!({"tenant": ctx.tenant, "meter": meter, "rows": to_json(&rows)?,
                "cursor": cursor, "current": gauge}),
    )
}

fn invoice(
    app: &App,
    ctx: &Ctx,
    params: &Params,
    req: &Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let plan = app.plan.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_price_plan",
            "no price plan is configured: put plan.json in the data directory",
        )
    })?;
    let inv = app
        .meters
        .invoice(&ctx.tenant, &param(params, "period")?, plan, now_ns())?;
    let csv = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if csv {
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
            .body(full(inv.to_csv()))
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    respond(StatusCode::OK, &to_json(&inv)?)
}

/// A token record without its hash.
fn token_json(rec: &asheville_storage::auth::TokenRecord) -> ApiResult<Value> {
    let mut v = to_json(rec)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("hash");
    }
    Ok(v)
}

async fn create_token(app: &App, ctx: &Ctx, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B {
        user: String,
        #[serde(default)]
        name: String,
        permissions: Vec<String>,
        #[serde(default)]
        expires_in_secs: Option<u64>,
    }
    let b: B = json_body(app, req).await?;
    let now = now_ns();
    // Grants are always inside the caller's tenant: a tenant's admin can
    // never mint a token for another tenant.
    let grants = b
        .permissions
        .iter()
        .map(|p| Grant::new(&ctx.tenant, p))
        .collect::<Result<Vec<_>, _>>()?;
    if grants.is_empty() {
        return Err(ApiError::bad_request(
            "a token needs at least one permission",
        ));
    }
    app.auth.create_user(&ctx.tenant, &b.user, now)?;
    let expires = b
        .expires_in_secs
        .map(|s| now.saturating_add((s as i64).saturating_mul(1_000_000_000)));
    let (secret, rec) =
        app.auth
            .create_token(&ctx.tenant, &b.user, &b.name, grants, expires, now)?;
    let mut v = token_json(&rec)?;
    v["token"] = Value::String(secret.reveal());
    respond(StatusCode::CREATED, &v)
}

/// The raw object API of an array node: each tenant's objects in a
/// directory of their own, through the same `Backend` as local storage.
async fn objects(
    app: &App,
    ctx: &Ctx,
    name: &str,
    params: &Params,
    q: &HashMap<String, String>,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let dir = app.objects.join(&ctx.tenant);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::from(asheville_storage::Error::io("objects dir", e)))?;
    let b = ObjectStoreBackend::open(
        "node",
        &BackendKind::Local {
            path: dir,
            fsync: true,
        },
    )?;
    if name == "list_objects" {
        let limit = num(q, "limit", 1000usize)?.clamp(1, 10_000);
        let page = b
            .list(
                q.get("prefix").map_or("", |s| s.as_str()),
                q.get("after").map(|s| s.as_str()),
                limit,
            )
            .await?;
        let objs: Vec<Value> = page
            .objects
            .iter()
            .map(|o| json!({"key": o.key, "size": o.size}))
            .collect();
        return respond(StatusCode::OK, &json!({"objects": objs, "next": page.next}));
    }
    let key = param(params, "key")?;
    match name {
        "put_object" => {
            let data = read_body(app, req, app.cfg.limits.object_body).await?;
            b.put(&key, vec![data]).await?;
            no_content()
        }
        "delete_object" => {
            b.delete(&key).await?;
            no_content()
        }
        "head_object" => {
            let info = b.head(&key).await?;
            Response::builder()
                .header(header::CONTENT_LENGTH, info.size)
                .body(empty())
                .map_err(|e| ApiError::internal(e.to_string()))
        }
        _ => {
            // Strict ranges: this API serves backends, which want an error
            // (not a shorter answer) for a range past the end.
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            let (status, data) = match range {
                Some(v) => {
                    let r = v
                        .strip_prefix("bytes=")
                        .and_then(|s| s.split_once('-'))
                        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                        .filter(|(a, b)| a <= b)
                        .ok_or_else(|| {
                            ApiError::new(
                                StatusCode::RANGE_NOT_SATISFIABLE,
                                "range_not_satisfiable",
                                "objects take one `bytes=FIRST-LAST` range",
                            )
                        })?;
                    let data = b.get_range(&key, r.0..r.1.saturating_add(1)).await?;
                    (StatusCode::PARTIAL_CONTENT, data)
                }
                None => (StatusCode::OK, b.get(&key).await?),
            };
            app.metrics
                .bytes_out
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(full(data))
                .map_err(|e| ApiError::internal(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(parse_range("bytes=-500", 100), Ok(Some(0..100)));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some(50..100)));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=-0", 100), Err(()));
        assert_eq!(parse_range("bytes=5-1", 100), Ok(None), "invalid: ignored");
        assert_eq!(
            parse_range("bytes=0-1,5-6", 100),
            Ok(None),
            "several: ignored"
        );
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=x-1", 100), Ok(None));
    }

    #[test]
    fn percent_decoding_rejects_bad_escapes() {
        assert_eq!(decode("a%20b", false).ok().as_deref(), Some("a b"));
        assert_eq!(decode("a+b", true).ok().as_deref(), Some("a b"));
        assert!(decode("a%2", false).is_err());
        assert!(decode("%ff", false).is_err(), "not UTF-8");
    }
}
