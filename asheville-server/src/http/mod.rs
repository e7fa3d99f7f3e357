//! The reference HTTP server: a thin shell that turns HTTP requests into
//! library calls (DESIGN.md, "The HTTP shell").
//!
//! [`Server::open`] opens (or creates) everything under a data directory:
//! the repository (`catalog.redb` and three local backends), tokens
//! (`auth.redb`), meters (`meters.redb`) and the sync queue (`sync.redb`).
//! [`Server::serve`] runs the HTTP/1.1 loop with its limits until a
//! shutdown signal, then lets in-flight requests finish and releases job
//! leases.
//!
//! ```no_run
//! # async fn f() -> Result<(), asheville_server::http::ApiError> {
//! use asheville_server::http::{Server, ServerConfig};
//! let cfg = ServerConfig::new("asheville-data");
//! let server = Server::open(cfg).await?;
//! if let Some(token) = server.first_admin_token() {
//!     println!("admin token: {token}");
//! }
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.map_err(|e| {
//!     asheville_server::http::ApiError::internal(e.to_string())
//! })?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod api;
mod error;
mod metrics;
mod openapi;
mod ratelimit;
mod routes;
mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asheville_core::metering::PricePlan;
use asheville_storage::auth::{AuthStore, Grant};
use asheville_storage::metering::{BufferedMeterStore, MeterStore, RedbMeterStore};
use asheville_storage::{ErrorKind, RepoConfig, Repository, Tenant, TenantKey};
use asheville_sync::{
    Conductor, QueueConfig, RedbQueue, Scheduler, SyncOptions, SyncRunner, WorkerConfig, WorkerPool,
};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiResult};

pub use openapi::document as openapi_document;
pub use routes::{ROUTES, Route};

/// The body of every response.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Limits that keep one client from taking the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON request body (bytes).
    pub json_body: u64,
    /// Largest `POST /v1/chunks` body (bytes).
    pub chunk_body: u64,
    /// Largest object under `/v1/objects/` (bytes).
    pub object_body: u64,
    /// Largest request head (request line and headers, bytes).
    pub header_bytes: usize,
    /// Time a client has to send a request's head.
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    /// Connections served at once (more wait to be accepted).
    pub connections: usize,
    /// Requests per second allowed per tenant (refilled continuously).
    pub tenant_rate: f64,
    /// Requests a tenant may burst above its rate.
    pub tenant_burst: f64,
    /// Websocket events queued for one client before it is dropped.
    pub ws_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            json_body: 1 << 20,
            chunk_body: 16 << 20,
            object_body: 256 << 20,
            header_bytes: 64 << 10,
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(60),
            connections: 1024,
            tenant_rate: 2000.0,
            tenant_burst: 4000.0,
            ws_queue: 1024,
        }
    }
}

/// How to run a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Limits.
    pub limits: Limits,
    /// `Host` names that pick a tenant (`files.example.com` → `acme`).
    pub hosts: HashMap<String, String>,
    /// Sync workers in this process (0: none).
    pub workers: usize,
    /// The secret that wraps tenants' key files (else
    /// `$ASHEVILLE_PASSPHRASE`, else `<data-dir>/server.secret`).
    pub passphrase: Option<String>,
    /// Use cheap Argon2id parameters for new tenants' key files (tests only).
    pub insecure_fast_kdf: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field("limits", &self.limits)
            .field("hosts", &self.hosts)
            .field("workers", &self.workers)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ServerConfig {
    /// Defaults over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            hosts: HashMap::new(),
            workers: 2,
            passphrase: None,
            insecure_fast_kdf: false,
        }
    }
}

/// Everything a handler may use.
pub(crate) struct App {
    pub cfg: ServerConfig,
    pub repo: Repository,
    secret: String,
    tenants: Mutex<HashMap<String, Tenant>>,
    pub auth: AuthStore,
    pub meters: Arc<dyn MeterStore>,
    pub queue: Arc<RedbQueue>,
    pub conductor: Conductor,
    pub runner: Arc<SyncRunner>,
    pub metrics: metrics::Metrics,
    pub rate: ratelimit::RateLimiter,
    pub objects: PathBuf,
    pub plan: Option<PricePlan>,
    pub shutdown: CancellationToken,
    pub openapi: String,
    /// The meter store's buffer of per-request counters.
    buffered: Arc<BufferedMeterStore>,
}

/// A running server's state (open files, workers).
pub struct Server {
    app: Arc<App>,
    pool: Option<WorkerPool>,
    admin_token: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("data_dir", &self.app.cfg.data_dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ns() -> i64 {
    asheville_storage::catalog::now_ns()
}

fn storage_err(what: &'static str, e: std::io::Error) -> ApiError {
    ApiError::from(asheville_storage::Error::io(what, e))
}

/// The secret that wraps every tenant's key file: the configured one,
/// `$ASHEVILLE_PASSPHRASE`, else `<data-dir>/server.secret` (made on first
/// start, mode 0600).
fn server_secret(dir: &Path, given: Option<&str>) -> ApiResult<String> {
    if let Some(p) = given.filter(|p| !p.is_empty()) {
        return Ok(p.to_owned());
    }
    if let Ok(p) = std::env::var("ASHEVILLE_PASSPHRASE")
        && !p.is_empty()
    {
        return Ok(p);
    }
    let f = dir.join("server.secret");
    match std::fs::read_to_string(&f) {
        Ok(s) => return Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(storage_err("cannot read server.secret", e)),
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(&f)
        .map_err(|e| storage_err("cannot create server.secret", e))?;
    std::io::Write::write_all(&mut file, hex.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| storage_err("cannot write server.secret", e))?;
    Ok(hex)
}

impl Server {
    /// Opens (or on first start creates) the server's state in
    /// `cfg.data_dir`. On first start it also creates the tenant
    /// `default` and an admin token, returned once by
    /// [`Server::first_admin_token`].
    pub async fn open(cfg: ServerConfig) -> ApiResult<Server> {
        let dir = cfg.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| storage_err("cannot create the data directory", e))?;
        let secret = server_secret(&dir, cfg.passphrase.as_deref())?;
        let cat = dir.join("catalog.redb");
        let repo = if cat.exists() {
            Repository::open(&cat).await?
        } else {
            let abs = std::path::absolute(&dir)
                .map_err(|e| storage_err("cannot resolve the data directory", e))?;
            let mut c = RepoConfig::local(abs, 3, "rs(2,1)".parse()?);
            if cfg.insecure_fast_kdf {
                c.kdf = asheville_core::KdfParams::INSECURE_FAST_FOR_TESTS;
            }
            Repository::create(&cat, c).await?
        };
        let auth = AuthStore::open(&dir.join("auth.redb"))?;
        // Per-request counters (served, ingested, api.requests) add up in
        // memory and are written once a second: no request waits on a
        // metering write.
        let buffered = Arc::new(BufferedMeterStore::new(
            Arc::new(RedbMeterStore::open(&dir.join("meters.redb"))?),
            Duration::from_secs(1),
        ));
        buffered.spawn_flusher(Duration::from_secs(1));
        let meters: Arc<dyn MeterStore> = buffered.clone();
        let queue = Arc::new(RedbQueue::open(
            &dir.join("sync.redb"),
            QueueConfig::default(),
        )?);
        let conductor = Conductor::new(queue.clone(), queue.clone());
        let runner = Arc::new(
            SyncRunner::new(queue.clone(), SyncOptions::default()).with_meter(meters.clone()),
        );
        let plan = match std::fs::read(dir.join("plan.json")) {
            Ok(b) => Some(
                serde_json::from_slice::<PricePlan>(&b)
                    .map_err(|e| ApiError::bad_request(format!("plan.json does not parse: {e}")))?,
            ),
            Err(_) => None,
        };
        let objects = dir.join("objects");
        let app = Arc::new(App {
            rate: ratelimit::RateLimiter::new(cfg.limits.tenant_rate, cfg.limits.tenant_burst),
            cfg,
            repo,
            secret,
            tenants: Mutex::new(HashMap::new()),
            auth,
            meters,
            queue: queue.clone(),
            conductor,
            runner: runner.clone(),
            metrics: metrics::Metrics::default(),
            objects,
            plan,
            shutdown: CancellationToken::new(),
            openapi: openapi::document().to_string(),
            buffered,
        });
        let mut admin_token = None;
        if app.auth.tenants()?.is_empty() {
            let now = now_ns();
            app.create_tenant("default").await?;
            app.auth.create_user("default", "admin", now)?;
            let (secret, _) = app.auth.create_token(
                "default",
                "admin",
                "first admin token",
                vec![Grant::new("*", "*")?],
                None,
                now,
            )?;
            admin_token = Some(secret.reveal());
        }
        // Every tenant's key is unwrapped once, so sync workers can write.
        for t in app.auth.tenants()? {
            app.tenant(&t).await?;
        }
        let pool = (app.cfg.workers > 0).then(|| {
            WorkerPool::start(
                queue.clone(),
                runner,
                WorkerConfig {
                    workers: app.cfg.workers,
                    ..WorkerConfig::default()
                },
            )
        });
        if app.cfg.workers > 0 {
            tokio::spawn(
                Scheduler::new(queue.clone(), queue)
                    .run(Duration::from_secs(10), app.shutdown.clone()),
            );
        }
        Ok(Server {
            app,
            pool,
            admin_token,
        })
    }

    /// The admin token made on first start (`None` on later starts).
    pub fn first_admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// Serves connections from `listener` until `shutdown` completes; then
    /// stops accepting, waits up to 30 s for in-flight requests, and stops
    /// the sync workers (their jobs run again, from their checkpoints, when
    /// the queue is next opened).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let app = self.app.clone();
        let closing = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(app.cfg.limits.connections));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                },
            };
            let _ = stream.set_nodelay(true);
            let app2 = app.clone();
            let svc = hyper::service::service_fn(move |req| {
                let app = app2.clone();
                async move { Ok::<_, Infallible>(handle(app, req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(app.cfg.limits.header_timeout)
                .max_buf_size(app.cfg.limits.header_bytes.max(8192))
                .max_header_size(app.cfg.limits.header_bytes)
                .max_headers(128)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let closing = closing.clone();
            tokio::spawn(async move {
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = closing.cancelled() => {
                        // Finish the request in flight, then close.
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                drop(permit);
            });
        }
        drop(listener);
        closing.cancel();
        let all = u32::try_from(app.cfg.limits.connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(30), permits.acquire_many(all)).await;
        // Requests are done: stop websockets and the scheduler, record the
        // last request counts.
        app.shutdown.cancel();
        let _ = app.buffered.flush();
        // Running sync jobs stop at once; their leases are reclaimed (the
        // jobs queued again) when the queue is next opened, and syncs are
        // checkpointed and idempotent, so they resume where they were.
        if let Some(pool) = self.pool {
            pool.abort().await;
        }
    }
}

impl App {
    /// The tenant `name`, its key unwrapped once and kept.
    pub async fn tenant(&self, name: &str) -> ApiResult<Tenant> {
        if let Some(t) = self.tenants_lock().get(name) {
            return Ok(t.clone());
        }
        let t = self
            .repo
            .tenant(name, TenantKey::Passphrase(self.secret.clone()))
            .await?
            .with_meter(self.meters.clone());
        self.runner.add_tenant(t.clone());
        self.tenants_lock().insert(name.to_owned(), t.clone());
        Ok(t)
    }

    fn tenants_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tenant>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one authenticated request of `tenant` (`api.requests`;
    /// buffered, written with the next flush).
    pub fn count_request(&self, tenant: &str) {
        let _ = self.meters.record(&[asheville_core::metering::UsageEvent {
            idempotency_key: String::new(),
            tenant: tenant.to_owned(),
            meter: asheville_core::metering::API_REQUESTS.into(),
            value: 1,
            at_ns: now_ns(),
            dims: Default::default(),
        }]);
    }

    /// Jobs per state, for `/metrics`.
    pub async fn job_counts(&self) -> Vec<(String, u64)> {
        use asheville_sync::JobQueue;
        let Ok(c) = self.queue.counts().await else {
            return Vec::new();
        };
        c.into_iter()
            .map(|(s, n)| {
                let name = serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{s:?}"));
                (name, n)
            })
            .collect()
    }

    /// Creates a tenant in the repository and the auth store.
    pub async fn create_tenant(&self, name: &str) -> ApiResult<()> {
        let r = self
            .repo
            .create_tenant(name, TenantKey::Passphrase(self.secret.clone()))
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        self.auth.create_tenant(name, now_ns())?;
        Ok(())
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let start = Instant::now();
    let route = routes::find(req.method(), req.uri().path());
    let name = route.as_ref().map_or("unmatched", |(r, _)| r.name);
    app.metrics.request_started();
    let resp = match route {
        Some((r, params)) => match api::dispatch(&app, r, params, req).await {
            Ok(resp) => resp,
            Err(e) => api::error_response(&e),
        },
        None => api::error_response(&routes::no_route(req.method(), req.uri().path())),
    };
    app.metrics
        .request_done(name, resp.status().as_u16(), start.elapsed());
    resp
}
