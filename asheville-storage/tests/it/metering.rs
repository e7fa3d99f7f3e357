//! Metering and auth: idempotency, exact gauge integration, a hand-checked
//! invoice, dimension queries, tokens and permissions.

use asheville_core::metering::*;
use asheville_storage::ErrorKind;
use asheville_storage::auth::{AuthStore, Grant};
use asheville_storage::metering::{MeterStore, RedbMeterStore, UsageQuery};

const H: i64 = HOUR_NS;

fn ev(key: &str, meter: &str, value: u64, at_ns: i64) -> UsageEvent {
    UsageEvent {
        idempotency_key: key.into(),
        tenant: "acme".into(),
        meter: meter.into(),
        value,
        at_ns,
        dims: Dimensions::default(),
    }
}

fn store() -> (tempfile::TempDir, RedbMeterStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbMeterStore::open(&dir.path().join("meters.redb")).unwrap();
    (dir, s)
}

fn nov(day: u32, hour: i64) -> i64 {
    days_from_civil(2026, 11, day) * DAY_NS + hour * H
}

#[test]
fn the_same_event_delivered_twice_counts_once() {
    let (_d, s) = store();
    let t = nov(3, 10);
    let batch: Vec<_> = (0..100)
        .map(|i| ev(&format!("req-{i}"), API_REQUESTS, 1, t + i))
        .collect();
    let r = s.record(&batch).unwrap();
    assert_eq!((r.accepted, r.duplicates), (100, 0));
    // The whole batch again (a retry), plus duplicates inside one batch.
    let r = s.record(&batch).unwrap();
    assert_eq!((r.accepted, r.duplicates), (0, 100));
    let r = s
        .record(&[ev("x", API_REQUESTS, 5, t), ev("x", API_REQUESTS, 5, t)])
        .unwrap();
    assert_eq!((r.accepted, r.duplicates), (1, 1));
    assert_eq!(
        s.quantity("acme", API_REQUESTS, nov(1, 0), nov(30, 24), t)
            .unwrap(),
        105
    );
    // Another tenant may use the same key.
    let mut other = ev("x", API_REQUESTS, 7, t);
    other.tenant = "globex".into();
    assert_eq!(s.record(&[other]).unwrap().accepted, 1);
    // Invalid events are rejected, the rest of the batch counts.
    let r = s
        .record(&[ev("bad", "NoDots", 1, t), ev("good", API_REQUESTS, 1, t)])
        .unwrap();
    assert_eq!(r.accepted, 1);
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].0, 0);
}

#[test]
fn a_gauge_changing_mid_hour_integrates_exactly() {
    let (_d, s) = store();
    let t10 = nov(5, 10);
    s.record(&[ev("g1", BYTES_STORED, 1000, t10)]).unwrap();
    s.record(&[ev("g2", BYTES_STORED, 3000, t10 + H / 2)])
        .unwrap();
    // Crosses the hour: 3000 B until 11:15, then 500 B.
    s.record(&[ev("g3", BYTES_STORED, 500, t10 + H + H / 4)])
        .unwrap();
    s.record(&[ev("g4", BYTES_STORED, 0, t10 + 2 * H)]).unwrap();
    let rows = s
        .query(&UsageQuery {
            tenant: "acme".into(),
            meter: BYTES_STORED.into(),
            granularity: Granularity::Hour,
            from_ns: t10,
            to_ns: t10 + 3 * H,
            dims: String::new(),
            after_ns: None,
            limit: 10,
        })
        .unwrap();
    let byte_hours = |r: &AggregateRow| r.value as f64 / H as f64;
    assert_eq!(rows.len(), 2);
    // 10:00-11:00: 1000 B × 0.5 h + 3000 B × 0.5 h = 2000 byte-hours.
    assert_eq!(rows[0].value, 2000 * H as u128);
    // 11:00-12:00: 3000 B × 0.25 h + 500 B × 0.75 h = 1125 byte-hours.
    assert_eq!(rows[1].value, 1125 * H as u128);
    assert_eq!(byte_hours(&rows[1]), 1125.0);
    assert_eq!(s.gauge("acme", BYTES_STORED).unwrap(), 0);
    // An event older than the series' latest is refused.
    let r = s.record(&[ev("late", BYTES_STORED, 9, t10)]).unwrap();
    assert_eq!(r.rejected.len(), 1);
}

fn plan() -> PricePlan {
    serde_json::from_str(
        r#"{
        "name": "standard", "currency": "USD",
        "meters": {
            "storage.bytes_stored": {"unit": "GB-month", "free": 1,
                "tiers": [{"up_to": 10, "price": "0.020"}, {"price": "0.010"}]},
            "storage.bytes_served": {"unit": "GB", "tiers": [{"price": "0.09"}]},
            "api.requests": {"unit": "1k requests", "free": 10, "tiers": [{"price": "0.004"}]}
        }}"#,
    )
    .unwrap()
}

#[test]
fn an_invoice_for_a_month_matches_hand_computed_figures() {
    let (_d, s) = store();
    // 5 GB stored for the first 15 days of November, 20 GB for the rest:
    // 5e9 × 360 h + 20e9 × 360 h = 9e12 byte-hours = 12.328767 GB-month
    // (730-hour months).
    s.record(&[ev("s1", BYTES_STORED, 5_000_000_000, nov(1, 0))])
        .unwrap();
    s.record(&[ev("s2", BYTES_STORED, 20_000_000_000, nov(16, 0))])
        .unwrap();
    // 4 GB served over three days.
    s.record(&[
        ev("b1", BYTES_SERVED, 1_500_000_000, nov(2, 3)),
        ev("b2", BYTES_SERVED, 2_000_000_000, nov(9, 12)),
        ev("b3", BYTES_SERVED, 500_000_000, nov(30, 23)),
    ])
    .unwrap();
    // 25,000 requests; October's and December's do not count.
    let reqs: Vec<_> = (0..25)
        .map(|i| ev(&format!("r{i}"), API_REQUESTS, 1000, nov(1 + i as u32, 5)))
        .chain([
            ev("oct", API_REQUESTS, 1_000_000, nov(1, 0) - 1),
            ev("dec", API_REQUESTS, 1_000_000, nov(30, 24)),
        ])
        .collect();
    s.record(&reqs).unwrap();
    let now = days_from_civil(2026, 12, 15) * DAY_NS;
    let inv = s.invoice("acme", "2026-11", &plan(), now).unwrap();
    let lines: Vec<(&str, &str, &str, String)> = inv
        .lines
        .iter()
        .map(|l| {
            (
                l.meter.as_str(),
                l.tier.as_str(),
                l.quantity.as_str(),
                l.amount.to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            // 15 × 1000 requests beyond the 10k free, at 0.004 per 1k.
            ("api.requests", "free", "10.000000", "0.000000".to_string()),
            (
                "api.requests",
                "tier 1",
                "15.000000",
                "0.060000".to_string()
            ),
            // 4 GB at 0.09.
            (
                "storage.bytes_served",
                "tier 1",
                "4.000000",
                "0.360000".to_string()
            ),
            // 1 GB-month free, 10 at 0.02, 1.328767 at 0.01 = 0.013288.
            (
                "storage.bytes_stored",
                "free",
                "1.000000",
                "0.000000".to_string()
            ),
            (
                "storage.bytes_stored",
                "tier 1",
                "10.000000",
                "0.200000".to_string()
            ),
            (
                "storage.bytes_stored",
                "tier 2",
                "1.328767",
                "0.013288".to_string()
            ),
        ]
    );
    assert_eq!(inv.total.to_string(), "0.633288");
    // Every line shows the aggregates it came from, and they add up.
    for l in &inv.lines {
        let sum: u128 = l.from_aggregates.iter().map(|a| a.value).sum();
        let meter_total: u128 = inv
            .lines
            .iter()
            .filter(|x| x.meter == l.meter)
            .map(|x| x.base_quantity)
            .sum();
        assert_eq!(sum, meter_total, "{}", l.meter);
    }
    let stored = inv.lines.iter().find(|l| l.meter == BYTES_STORED).unwrap();
    assert_eq!(stored.from_aggregates.len(), 30, "one row per day");
    let csv = inv.to_csv();
    assert!(csv.starts_with("tenant,period,meter,tier,quantity"));
    assert!(csv.contains(
        "acme,2026-11,storage.bytes_stored,tier 2,1.328767,GB-month,0.010000,0.013288,USD,"
    ));
    assert!(
        csv.trim_end()
            .ends_with("acme,2026-11,total,,,,,0.633288,USD,")
    );
    let json = serde_json::to_value(&inv).unwrap();
    assert_eq!(json["total"], "0.633288");
}

#[test]
fn usage_by_dimension_pages_by_keyset() {
    let (_d, s) = store();
    let mut events = Vec::new();
    for h in 0..10 {
        for (user, n) in [("alice", 2), ("bob", 3)] {
            let mut e = ev(&format!("{user}-{h}"), SYNC_ITEMS, n, nov(7, h));
            e.dims.user = Some(user.into());
            e.dims.source = Some("mail".into());
            events.push(e);
        }
    }
    s.record(&events).unwrap();
    let q = |dims: &str, after: Option<i64>| UsageQuery {
        tenant: "acme".into(),
        meter: SYNC_ITEMS.into(),
        granularity: Granularity::Hour,
        from_ns: nov(7, 0),
        to_ns: nov(8, 0),
        dims: dims.into(),
        after_ns: after,
        limit: 4,
    };
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = s.query(&q("user=bob", after)).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.start_ns);
        rows.extend(page);
    }
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r.value == 3));
    let total: u128 = s.query(&q("", None)).unwrap().iter().map(|r| r.value).sum();
    assert_eq!(total, 4 * 5, "first page of totals: 4 hours × (2 + 3)");
    let day = s.query(&UsageQuery {
        granularity: Granularity::Day,
        ..q("source=mail", None)
    });
    assert_eq!(day.unwrap()[0].value, 50);
}

#[test]
fn quotas_name_the_limit() {
    let (_d, s) = store();
    let now = nov(10, 12);
    s.set_quota(
        "acme",
        Quota {
            max_stored_bytes: Some(1000),
            max_ingest_per_day: Some(600),
        },
    )
    .unwrap();
    s.record(&[ev("l", BYTES_STORED_LOGICAL, 700, now - H)])
        .unwrap();
    s.check_quota("acme", 300, now).unwrap();
    let e = s.check_quota("acme", 301, now).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QuotaExceeded);
    assert!(e.to_string().contains("stored-bytes"), "{e}");
    s.record(&[ev("i", BYTES_INGESTED, 500, now - H)]).unwrap();
    let e = s.check_quota("acme", 200, now).unwrap_err();
    assert!(e.to_string().contains("daily ingest"), "{e}");
    // Yesterday's ingest does not count today.
    s.check_quota("acme", 200, now + DAY_NS).unwrap();
}

#[test]
fn tokens_permissions_wildcards_tenants_expiry_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let a = AuthStore::open(&dir.path().join("auth.redb")).unwrap();
    let now = 1_000_000;
    a.create_tenant("acme", now).unwrap();
    a.create_tenant("globex", now).unwrap();
    assert_eq!(
        a.create_tenant("acme", now).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    a.create_user("acme", "alice", now).unwrap();
    let (tok, rec) = a
        .create_token(
            "acme",
            "alice",
            "laptop",
            vec![
                Grant::new("acme", "storage.*").unwrap(),
                Grant::new("acme", "usage.read").unwrap(),
            ],
            Some(now + 100),
            now,
        )
        .unwrap();
    let secret = tok.reveal();
    assert!(
        !format!("{tok:?} {rec:?}").contains(&secret[21..]),
        "secrets stay out of Debug"
    );
    let ok = |p: &str, t: &str| a.authorize(&secret, t, p, now + 1);
    assert_eq!(ok("storage.write", "acme").unwrap().user, "alice");
    ok("storage.read", "acme").unwrap();
    ok("usage.read", "acme").unwrap();
    assert_eq!(
        ok("sync.manage", "acme").unwrap_err().kind(),
        ErrorKind::Forbidden
    );
    assert_eq!(
        ok("storage.write", "globex").unwrap_err().kind(),
        ErrorKind::Forbidden
    );
    // A grant of a wildcard is not a request for one.
    assert_eq!(
        ok("storage.*", "acme").unwrap_err().kind(),
        ErrorKind::Forbidden
    );
    // A wrong secret with the right id, an expired and a revoked token.
    let mut forged = secret.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for (t, at) in [(&forged, now + 1), (&secret, now + 100)] {
        assert_eq!(
            a.authorize(t, "acme", "storage.read", at)
                .unwrap_err()
                .kind(),
            ErrorKind::Unauthenticated
        );
    }
    a.revoke("acme", rec.id, now + 2).unwrap();
    assert_eq!(
        ok("storage.read", "acme").unwrap_err().kind(),
        ErrorKind::Unauthenticated
    );
    // An operator token for every tenant, and admin.*.
    a.create_user("acme", "root", now).unwrap();
    let (admin, _) = a
        .create_token(
            "acme",
            "root",
            "ops",
            vec![Grant::new("*", "admin.*").unwrap()],
            None,
            now,
        )
        .unwrap();
    a.authorize(&admin.reveal(), "globex", "admin.tokens", now)
        .unwrap();
    assert_eq!(
        a.authorize(&admin.reveal(), "globex", "storage.read", now)
            .unwrap_err()
            .kind(),
        ErrorKind::Forbidden
    );
    assert_eq!(a.tokens("acme").unwrap().len(), 2);
    assert!(a.tokens("globex").unwrap().is_empty());
    assert!(a.authorize("garbage", "acme", "storage.read", now).is_err());
}

/// Every file under the backends' directories, with its size.
fn backend_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    fn walk(p: &std::path::Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push((e.path().display().to_string(), e.metadata().unwrap().len()));
            }
        }
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("backend-") {
            walk(&e.path(), &mut out);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_meters_usage_and_a_quota_rejection_changes_nothing() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (_repo, t) = crate::repo::temp_repo(dir.path(), 3, "rs(2,1)", |_| {}).await;
    let meters = Arc::new(RedbMeterStore::open(&dir.path().join("meters.redb")).unwrap());
    let t = t.with_meter(meters.clone());
    meters
        .set_quota(
            "acme",
            Quota {
                max_stored_bytes: Some(100_000),
                max_ingest_per_day: None,
            },
        )
        .unwrap();
    let data: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let meta = asheville_storage::FileMeta::default();
    t.put("/a", &data[..], meta).await.unwrap();
    let now = asheville_storage::catalog::now_ns();
    let day = Granularity::Day.start(now);
    assert_eq!(meters.gauge("acme", BYTES_STORED_LOGICAL).unwrap(), 60_000);
    assert_eq!(
        meters
            .quantity("acme", BYTES_INGESTED, day, day + DAY_NS, now)
            .unwrap(),
        60_000
    );
    // Physical bytes: rs(2,1) stores 1.5× the sealed pack, plus headers.
    let physical = meters.gauge("acme", BYTES_STORED).unwrap();
    let on_disk: u64 = backend_files(dir.path())
        .iter()
        .filter(|(p, _)| p.contains("/packs/"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(physical, on_disk, "the gauge is the shard bytes on disk");

    let before = backend_files(dir.path());
    // A file of known size is refused before anything is read or written.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![1u8; 50_000]).unwrap();
    let mut batch = t.batch();
    let e = batch.add_path("/big", &big).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QuotaExceeded, "{e}");
    drop(batch);
    // A stream is refused as its bytes arrive, before its chunks are stored.
    let e = t
        .put("/stream", &vec![2u8; 50_000][..], meta)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(
        backend_files(dir.path()),
        before,
        "no byte reached a backend"
    );
    assert_eq!(t.all_paths(None, 10).unwrap(), vec!["a".to_string()]);
    assert_eq!(meters.gauge("acme", BYTES_STORED_LOGICAL).unwrap(), 60_000);

    // Reading is metered; deleting frees quota.
    let mut out = Vec::new();
    t.get("/a", &mut out).await.unwrap();
    t.get_range("/a", 0..1000).await.unwrap();
    assert_eq!(
        meters
            .quantity("acme", BYTES_SERVED, day, day + DAY_NS, now + DAY_NS)
            .unwrap(),
        61_000
    );
    t.delete("/a").await.unwrap();
    assert_eq!(meters.gauge("acme", BYTES_STORED_LOGICAL).unwrap(), 0);
    t.put("/stream", &vec![2u8; 50_000][..], meta)
        .await
        .unwrap();
}

#[test]
fn the_buffered_store_adds_up_counters_and_writes_them_in_one_event() {
    use asheville_storage::metering::BufferedMeterStore;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<RedbMeterStore> =
        Arc::new(RedbMeterStore::open(&dir.path().join("meters.redb")).unwrap());
    let b = BufferedMeterStore::new(inner.clone(), std::time::Duration::from_secs(1));
    let q = |meter: &str| UsageQuery {
        tenant: "acme".into(),
        meter: meter.into(),
        granularity: Granularity::Day,
        from_ns: 0,
        to_ns: i64::MAX,
        dims: String::new(),
        after_ns: None,
        limit: 100,
    };
    let total = |s: &dyn MeterStore, meter: &str| -> u128 {
        s.query(&q(meter)).unwrap().iter().map(|r| r.value).sum()
    };
    for i in 0..1000 {
        // The same key many times: per-request events have one-off keys,
        // the buffer does not look at them.
        b.record(&[ev("k", BYTES_SERVED, 10, nov(3, 1) + i)])
            .unwrap();
    }
    b.record(&[ev("s1", SYNC_ITEMS, 5, nov(3, 1))]).unwrap();
    assert_eq!(total(&*inner, BYTES_SERVED), 0, "buffered, not written yet");
    assert_eq!(
        total(&*inner, SYNC_ITEMS),
        5,
        "other meters pass straight through"
    );
    b.record(&[ev("s1", SYNC_ITEMS, 5, nov(3, 1))]).unwrap();
    assert_eq!(total(&*inner, SYNC_ITEMS), 5, "and keep their idempotency");
    assert_eq!(total(&b, BYTES_SERVED), 10_000, "a read flushes first");
    assert_eq!(total(&*inner, BYTES_SERVED), 10_000);
    b.record(&[ev("k", API_REQUESTS, 3, nov(3, 2))]).unwrap();
    drop(b);
    assert_eq!(total(&*inner, API_REQUESTS), 3, "dropping flushes");
}
