//! Prometheus text metrics: requests by route and status, latency
//! histograms by route, bytes in and out, jobs by state, backend errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets (seconds).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_s: f64,
}

/// Counters shared by every connection.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<&'static str, RouteStats>>,
    in_flight: AtomicU64,
    /// Request body bytes read.
    pub bytes_in: std::sync::Arc<AtomicU64>,
    /// Response body bytes sent by file and chunk reads.
    pub bytes_out: std::sync::Arc<AtomicU64>,
    /// Errors from the storage layer that were not the client's fault.
    pub backend_errors: AtomicU64,
    /// Websocket clients dropped for being slow.
    pub ws_dropped: AtomicU64,
}

impl Metrics {
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_done(&self, route: &'static str, status: u16, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if status >= 500 {
            self.backend_errors.fetch_add(1, Ordering::Relaxed);
        }
        let s = took.as_secs_f64();
        let mut m = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let r = m.entry(route).or_default();
        *r.by_status.entry(status).or_default() += 1;
        r.count += 1;
        r.sum_s += s;
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            r.buckets[i] += 1;
        }
    }

    /// The exposition text; `jobs` is (state, count).
    pub fn render(&self, jobs: &[(String, u64)]) -> String {
        let mut out = String::new();
        let m = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP asheville_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE asheville_http_requests_total counter\n");
        for (route, r) in m.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(
                    out,
                    "asheville_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP asheville_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE asheville_http_request_duration_seconds histogram\n");
        for (route, r) in m.iter() {
            let mut cum = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cum += r.buckets[i];
                let _ = writeln!(
                    out,
                    "asheville_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {cum}"
                );
            }
            let _ = writeln!(
                out,
                "asheville_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 asheville_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 asheville_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                r.count, r.sum_s, r.count
            );
        }
        drop(m);
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "asheville_http_requests_in_flight",
            "Requests being served.",
            "gauge",
            self.in_flight.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "asheville_http_bytes_received_total",
            "Request body bytes read.",
            "counter",
            self.bytes_in.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "asheville_http_bytes_sent_total",
            "File, chunk and object bytes sent.",
            "counter",
            self.bytes_out.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "asheville_backend_errors_total",
            "Requests that failed with a server-side (5xx) error.",
            "counter",
            self.backend_errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "asheville_ws_clients_dropped_total",
            "Websocket clients dropped for reading too slowly.",
            "counter",
            self.ws_dropped.load(Ordering::Relaxed),
        );
        out.push_str("# HELP asheville_jobs Sync jobs by state.\n# TYPE asheville_jobs gauge\n");
        for (state, n) in jobs {
            let _ = writeln!(out, "asheville_jobs{{state=\"{state}\"}} {n}");
        }
        out
    }
}
