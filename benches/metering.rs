//! Metering benchmark: usage events recorded per second into the redb
//! meter store (batched), and the time of an invoice for a tenant with
//! that many events; token checks per second.
//!
//! `cargo bench -p asheville-benches --bench metering`
//! (`ASHEVILLE_BENCH_EVENTS`, default 1,000,000; batches of 10,000).

use std::time::Instant;

use asheville_core::metering::*;
use asheville_storage::auth::{AuthStore, Grant};
use asheville_storage::metering::{MeterStore, RedbMeterStore};

fn main() {
    let n: usize = std::env::var("ASHEVILLE_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let batch = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbMeterStore::open(&dir.path().join("m.redb")).expect("store");
    let start = days_from_civil(2026, 11, 1) * DAY_NS;
    let span = 30 * DAY_NS;
    let meters = [API_REQUESTS, BYTES_SERVED, BYTES_INGESTED, SYNC_ITEMS];
    let users = ["alice", "bob", "carol", "dave"];
    let t = Instant::now();
    let mut i = 0usize;
    while i < n {
        let events: Vec<UsageEvent> = (i..(i + batch).min(n))
            .map(|j| {
                let at = start + (j as i64 * (span / n as i64));
                // One gauge change in 1000 events, the rest counters.
                let (meter, value) = if j % 1000 == 0 {
                    (BYTES_STORED, 1_000_000_000 + (j as u64 % 7) * 100_000_000)
                } else {
                    (meters[j % meters.len()], 1 + (j as u64 % 4096))
                };
                UsageEvent {
                    idempotency_key: format!("ev-{j:012}"),
                    tenant: "acme".into(),
                    meter: meter.into(),
                    value,
                    at_ns: at,
                    dims: Dimensions {
                        user: Some(users[j % users.len()].into()),
                        feature: Some("api".into()),
                        ..Dimensions::default()
                    },
                }
            })
            .collect();
        let r = store.record(&events).expect("record");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected.first());
        i += batch;
    }
    let rec = t.elapsed().as_secs_f64();
    let plan: PricePlan = serde_json::from_str(
        r#"{"name":"bench","currency":"USD","meters":{
            "storage.bytes_stored":{"unit":"GB-month","free":1,"tiers":[{"up_to":100,"price":"0.02"},{"price":"0.01"}]},
            "storage.bytes_served":{"unit":"GB","tiers":[{"price":"0.09"}]},
            "api.requests":{"unit":"1k requests","free":10,"tiers":[{"price":"0.004"}]}}}"#,
    )
    .expect("plan");
    let now = start + span + DAY_NS;
    let t = Instant::now();
    let inv = store
        .invoice("acme", "2026-11", &plan, now)
        .expect("invoice");
    let invoice_s = t.elapsed().as_secs_f64();

    let auth = AuthStore::open(&dir.path().join("a.redb")).expect("auth");
    auth.create_tenant("acme", 0).expect("tenant");
    auth.create_user("acme", "alice", 0).expect("user");
    let (tok, _) = auth
        .create_token(
            "acme",
            "alice",
            "b",
            vec![Grant::new("acme", "storage.*").expect("grant")],
            None,
            0,
        )
        .expect("token");
    let secret = tok.reveal();
    let checks = 100_000;
    let t = Instant::now();
    for _ in 0..checks {
        auth.authorize(&secret, "acme", "storage.read", 1)
            .expect("authorized");
    }
    let auth_s = t.elapsed().as_secs_f64();

    println!("| measurement | count | seconds | per second |");
    println!("|---|---:|---:|---:|");
    println!(
        "| events recorded, batches of {batch} | {n} | {rec:.3} | {:.0} |",
        n as f64 / rec
    );
    println!(
        "| invoice of a month with those events ({} lines, total {} {}) | 1 | {invoice_s:.4} | |",
        inv.lines.len(),
        inv.total,
        inv.currency
    );
    println!(
        "| authorize(token, tenant, permission) | {checks} | {auth_s:.3} | {:.0} |",
        checks as f64 / auth_s
    );
}
