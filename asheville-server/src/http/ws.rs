//! `GET /v1/events`: a websocket of the caller's tenant's job events
//! (state changes, progress, cancel requests) as JSON text messages,
//! resumable with `?after=<seq>` (every event carries its `seq`).
//!
//! Events are read from the queue's store as the client takes them, so a
//! slow client costs no server memory beyond a small bounded buffer; a
//! client that lets that buffer fill (or stalls a send for 10 s) is
//! dropped with close code 1008, and can reconnect with its last `seq`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use asheville_sync::{EventStream, JobQueue};
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::api::{Ctx, full};
use super::{ApiError, ApiResult, App, Body};

fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has = |h: header::HeaderName, v: &str| {
        req.headers()
            .get_all(h)
            .iter()
            .filter_map(|x| x.to_str().ok())
            .flat_map(|x| x.split(','))
            .any(|x| x.trim().eq_ignore_ascii_case(v))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

pub(crate) fn events(
    app: Arc<App>,
    ctx: Ctx,
    q: &HashMap<String, String>,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade(&req), key) else {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "this route is a websocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    };
    let after = match q.get("after") {
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("`after` is an event sequence number"))?,
        None => 0,
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(up) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        pump(app, ctx.tenant, after, ws).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).map_err(|e| ApiError::internal(e.to_string()))?,
        )
        .body(full(""))
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn pump(
    app: Arc<App>,
    tenant: String,
    after: u64,
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(app.cfg.limits.ws_queue.max(1));
    let queue: Arc<dyn JobQueue> = app.queue.clone();
    let stop = app.shutdown.clone();
    // Reader of the store: stops when the writer goes away.
    let reader = tokio::spawn(async move {
        let mut events = EventStream::resume(queue, after);
        loop {
            let e = tokio::select! {
                () = stop.cancelled() => return,
                e = events.next() => e,
            };
            let Ok(e) = e else { return };
            if e.tenant != tenant {
                continue;
            }
            let Ok(text) = serde_json::to_string(&e) else {
                continue;
            };
            match tx.try_send(text) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => return, // too slow
                Err(_) => return,
            }
        }
    });
    let slow = |app: &App| {
        app.metrics.ws_dropped.fetch_add(1, Ordering::Relaxed);
        Message::Close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "the client reads too slowly; reconnect with ?after=<last seq>".into(),
        }))
    };
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(text) = msg else {
                    // The reader stopped: full buffer, shutdown or a store error.
                    let close = if app.shutdown.is_cancelled() {
                        Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() }))
                    } else {
                        slow(&app)
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(close)).await;
                    break;
                };
                match tokio::time::timeout(Duration::from_secs(10), sink.send(Message::text(text))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(slow(&app))).await;
                        break;
                    }
                }
            }
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(Message::Ping(p))) => { let _ = sink.send(Message::Pong(p)).await; }
                Some(Ok(_)) => {}
            },
        }
    }
    reader.abort();
}
