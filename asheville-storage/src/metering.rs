//! The durable side of metering: a [`MeterStore`] that records usage events
//! once (idempotency keys), keeps aggregates per tenant per hour, day and
//! month (in total and per dimension), integrates gauges into
//! byte-nanoseconds, answers queries with keyset pagination, builds
//! invoices, and holds quotas. [`RedbMeterStore`] is the embedded one.
//!
//! Aggregation happens when events are recorded, so queries and invoices
//! read at most a few hundred rows whatever the number of events.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use asheville_core::metering::{
    AggregateRow, BYTES_INGESTED, BYTES_STORED_LOGICAL, DAY_NS, Dimensions, Granularity, Invoice,
    MeterKind, PricePlan, Quota, UsageEvent, integrate, invoice, meter_kind, month_range,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// tenant \0 idempotency key -> ()
const SEEN: TableDefinition<&[u8], ()> = TableDefinition::new("seen");
/// tenant \0 meter \0 gran start(be) dims -> value
const AGG: TableDefinition<&[u8], u128> = TableDefinition::new("agg");
/// tenant \0 meter \0 canonical dims -> GaugeState (JSON)
const GAUGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("gauges");
/// tenant -> Quota (JSON)
const QUOTAS: TableDefinition<&str, &[u8]> = TableDefinition::new("quotas");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GaugeState {
    value: u64,
    since_ns: i64,
    dims: Dimensions,
}

/// What [`MeterStore::record`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordReport {
    /// Events counted.
    pub accepted: usize,
    /// Events seen before (same tenant and idempotency key): not counted.
    pub duplicates: usize,
    /// Events refused, by index in the batch, with the reason.
    pub rejected: Vec<(usize, String)>,
}

/// A query of aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Tenant.
    pub tenant: String,
    /// Meter.
    pub meter: String,
    /// Row granularity.
    pub granularity: Granularity,
    /// First bucket start included (ns).
    pub from_ns: i64,
    /// Buckets starting before this (ns).
    pub to_ns: i64,
    /// `""`: the tenant's totals; `"user=alice"` (one dimension): that
    /// slice.
    pub dims: String,
    /// Keyset cursor: rows after this bucket start.
    pub after_ns: Option<i64>,
    /// Rows at most.
    pub limit: usize,
}

/// The durable metering store.
pub trait MeterStore: Send + Sync {
    /// Records a batch of events in one transaction. Duplicates are counted
    /// once; invalid events (and gauge events older than the series'
    /// latest) are rejected without failing the batch.
    fn record(&self, events: &[UsageEvent]) -> Result<RecordReport>;

    /// Moves a gauge series by `delta` (atomically: read and write in one
    /// transaction) at `at_ns` (or the series' latest time, if later), with
    /// an idempotency key. Returns the new level.
    fn adjust_gauge(
        &self,
        tenant: &str,
        meter: &str,
        dims: &Dimensions,
        delta: i64,
        at_ns: i64,
        key: &str,
    ) -> Result<u64>;

    /// Stored aggregate rows, by bucket start.
    fn query(&self, q: &UsageQuery) -> Result<Vec<AggregateRow>>;

    /// Day rows of a meter's tenant total over `[from, to)`, with each
    /// gauge's current level integrated up to `now` (so that their sum is
    /// the meter's quantity for the period as of `now`).
    fn daily(
        &self,
        tenant: &str,
        meter: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<Vec<AggregateRow>>;

    /// A gauge's current level (the sum over its series).
    fn gauge(&self, tenant: &str, meter: &str) -> Result<u64>;

    /// Sets (or clears, with the default) a tenant's quota.
    fn set_quota(&self, tenant: &str, quota: Quota) -> Result<()>;

    /// A tenant's quota (default: none).
    fn quota(&self, tenant: &str) -> Result<Quota>;

    /// The meter's quantity for a period: the sum of [`MeterStore::daily`].
    fn quantity(&self, tenant: &str, meter: &str, from: i64, to: i64, now: i64) -> Result<u128> {
        Ok(self
            .daily(tenant, meter, from, to, now)?
            .iter()
            .map(|r| r.value)
            .sum())
    }

    /// The invoice of `period` (`YYYY-MM`) under `plan`, as of `now`.
    fn invoice(&self, tenant: &str, period: &str, plan: &PricePlan, now: i64) -> Result<Invoice> {
        let (from, to) = month_range(period)?;
        let mut usage = BTreeMap::new();
        for meter in plan.meters.keys() {
            let rows = self.daily(tenant, meter, from, to, now)?;
            let q = rows.iter().map(|r| r.value).sum();
            usage.insert(meter.clone(), (q, rows));
        }
        Ok(invoice(tenant, period, plan, &usage)?)
    }

    /// Checks that writing `incoming` bytes keeps `tenant` within its quota
    /// (logical bytes stored, from the `storage.bytes_stored.logical`
    /// gauge; bytes ingested today, from the day aggregate).
    fn check_quota(&self, tenant: &str, incoming: u64, now: i64) -> Result<()> {
        let quota = self.quota(tenant)?;
        if quota == Quota::default() {
            return Ok(());
        }
        let stored = self.gauge(tenant, BYTES_STORED_LOGICAL)?;
        let today = Granularity::Day.start(now);
        let ingested = self.quantity(tenant, BYTES_INGESTED, today, today + DAY_NS, now)?;
        Ok(quota.check(
            stored,
            u64::try_from(ingested).unwrap_or(u64::MAX),
            incoming,
        )?)
    }
}

fn gran_byte(g: Granularity) -> u8 {
    match g {
        Granularity::Hour => 0,
        Granularity::Day => 1,
        Granularity::Month => 2,
    }
}

fn series_prefix(tenant: &str, meter: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + meter.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(meter.as_bytes());
    k.push(0);
    k
}

fn agg_key(tenant: &str, meter: &str, g: Granularity, start: i64, dims: &str) -> Vec<u8> {
    let mut k = series_prefix(tenant, meter);
    k.push(gran_byte(g));
    k.extend_from_slice(&(start.max(0) as u64).to_be_bytes());
    k.extend_from_slice(dims.as_bytes());
    k
}

/// The rows an event's value goes to: the total and each set dimension.
fn dim_rows(d: &Dimensions) -> Vec<String> {
    let mut v = vec![String::new()];
    v.extend(d.pairs().iter().map(|(k, x)| format!("{k}={x}")));
    v
}

/// The embedded meter store: one redb file.
#[derive(Debug)]
pub struct RedbMeterStore {
    db: Database,
}

impl RedbMeterStore {
    /// Opens (or creates) the store.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| {
            Error::new(ErrorKind::Other, "cannot open the meter store")
                .with_context("file", path.display())
                .set_source(e)
        })?;
        let w = db.begin_write()?;
        w.open_table(SEEN)?;
        w.open_table(AGG)?;
        w.open_table(GAUGES)?;
        w.open_table(QUOTAS)?;
        w.commit()?;
        Ok(RedbMeterStore { db })
    }
}

fn decode_gauge(b: &[u8]) -> Result<GaugeState> {
    serde_json::from_slice(b).map_err(|e| {
        Error::new(ErrorKind::Integrity, "a gauge record does not decode").set_source(e)
    })
}

/// Records events inside a write transaction (see [`MeterStore::record`]).
fn record_tx(w: &redb::WriteTransaction, events: &[UsageEvent]) -> Result<RecordReport> {
    let mut report = RecordReport::default();
    {
        let mut seen = w.open_table(SEEN)?;
        let mut agg = w.open_table(AGG)?;
        let mut gauges = w.open_table(GAUGES)?;
        // Sums per aggregate key, applied once at the end.
        let mut sums: HashMap<Vec<u8>, u128> = HashMap::new();
        let mut states: HashMap<Vec<u8>, GaugeState> = HashMap::new();
        let add = |sums: &mut HashMap<Vec<u8>, u128>, e: &UsageEvent, g, start, v: u128| {
            for d in dim_rows(&e.dims) {
                *sums
                    .entry(agg_key(&e.tenant, &e.meter, g, start, &d))
                    .or_default() += v;
            }
        };
        for (i, e) in events.iter().enumerate() {
            if let Err(err) = e.validate() {
                report.rejected.push((i, err.to_string()));
                continue;
            }
            let mut sk = Vec::with_capacity(e.tenant.len() + e.idempotency_key.len() + 1);
            sk.extend_from_slice(e.tenant.as_bytes());
            sk.push(0);
            sk.extend_from_slice(e.idempotency_key.as_bytes());
            if seen.get(sk.as_slice())?.is_some() {
                report.duplicates += 1;
                continue;
            }
            match meter_kind(&e.meter) {
                MeterKind::Counter => {
                    for g in Granularity::ALL {
                        add(&mut sums, e, g, g.start(e.at_ns), u128::from(e.value));
                    }
                }
                MeterKind::Gauge => {
                    let mut gk = series_prefix(&e.tenant, &e.meter);
                    gk.extend_from_slice(e.dims.canonical().as_bytes());
                    let prev = match states.get(&gk) {
                        Some(s) => Some(s.clone()),
                        None => match gauges.get(gk.as_slice())? {
                            Some(v) => Some(
                                serde_json::from_slice::<GaugeState>(v.value()).map_err(|e| {
                                    Error::new(
                                        ErrorKind::Integrity,
                                        "a gauge record does not decode",
                                    )
                                    .set_source(e)
                                })?,
                            ),
                            None => None,
                        },
                    };
                    if let Some(p) = &prev {
                        if e.at_ns < p.since_ns {
                            report.rejected.push((
                                i,
                                "a gauge event older than the series' latest one".into(),
                            ));
                            continue;
                        }
                        for g in Granularity::ALL {
                            for (start, v) in integrate(p.value, p.since_ns, e.at_ns, g) {
                                add(&mut sums, e, g, start, v);
                            }
                        }
                    }
                    states.insert(
                        gk,
                        GaugeState {
                            value: e.value,
                            since_ns: e.at_ns,
                            dims: e.dims.clone(),
                        },
                    );
                }
            }
            seen.insert(sk.as_slice(), ())?;
            report.accepted += 1;
        }
        for (k, v) in sums {
            let old = agg.get(k.as_slice())?.map(|x| x.value()).unwrap_or(0);
            agg.insert(k.as_slice(), old + v)?;
        }
        for (k, s) in states {
            let b = serde_json::to_vec(&s).map_err(|e| {
                Error::new(ErrorKind::Other, "a gauge record does not encode").set_source(e)
            })?;
            gauges.insert(k.as_slice(), b.as_slice())?;
        }
    }
    Ok(report)
}

impl MeterStore for RedbMeterStore {
    fn record(&self, events: &[UsageEvent]) -> Result<RecordReport> {
        let w = self.db.begin_write()?;
        let report = record_tx(&w, events)?;
        w.commit()?;
        Ok(report)
    }

    fn adjust_gauge(
        &self,
        tenant: &str,
        meter: &str,
        dims: &Dimensions,
        delta: i64,
        at_ns: i64,
        key: &str,
    ) -> Result<u64> {
        let w = self.db.begin_write()?;
        let mut gk = series_prefix(tenant, meter);
        gk.extend_from_slice(dims.canonical().as_bytes());
        let prev = {
            let g = w.open_table(GAUGES)?;
            let v = g.get(gk.as_slice())?;
            match v {
                Some(v) => Some(decode_gauge(v.value())?),
                None => None,
            }
        };
        let (level, since) = prev.map_or((0, at_ns), |p| (p.value, p.since_ns));
        let value = if delta < 0 {
            level.saturating_sub(delta.unsigned_abs())
        } else {
            level.saturating_add(delta as u64)
        };
        let e = UsageEvent {
            idempotency_key: key.to_owned(),
            tenant: tenant.to_owned(),
            meter: meter.to_owned(),
            value,
            at_ns: at_ns.max(since),
            dims: dims.clone(),
        };
        let r = record_tx(&w, std::slice::from_ref(&e))?;
        if let Some((_, why)) = r.rejected.first() {
            return Err(Error::new(ErrorKind::InvalidInput, why.clone()));
        }
        w.commit()?;
        Ok(if r.accepted == 1 { value } else { level })
    }

    fn query(&self, q: &UsageQuery) -> Result<Vec<AggregateRow>> {
        let r = self.db.begin_read()?;
        let agg = r.open_table(AGG)?;
        let from = q
            .after_ns
            .map_or(q.from_ns, |a| a.saturating_add(1).max(q.from_ns));
        let lo = agg_key(&q.tenant, &q.meter, q.granularity, from, "");
        let hi = agg_key(&q.tenant, &q.meter, q.granularity, q.to_ns, "");
        let pre = series_prefix(&q.tenant, &q.meter).len() + 1;
        let mut out = Vec::new();
        for item in agg.range(lo.as_slice()..hi.as_slice())? {
            let (k, v) = item?;
            let k = k.value();
            let mut be = [0u8; 8];
            be.copy_from_slice(&k[pre..pre + 8]);
            let dims = &k[pre + 8..];
            if dims != q.dims.as_bytes() {
                continue;
            }
            out.push(AggregateRow {
                meter: q.meter.clone(),
                granularity: q.granularity,
                start_ns: u64::from_be_bytes(be) as i64,
                dims: q.dims.clone(),
                value: v.value(),
            });
            if out.len() >= q.limit {
                break;
            }
        }
        Ok(out)
    }

    fn daily(
        &self,
        tenant: &str,
        meter: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<Vec<AggregateRow>> {
        let mut rows: BTreeMap<i64, u128> = self
            .query(&UsageQuery {
                tenant: tenant.to_owned(),
                meter: meter.to_owned(),
                granularity: Granularity::Day,
                from_ns: from,
                to_ns: to,
                dims: String::new(),
                after_ns: None,
                limit: usize::MAX,
            })?
            .into_iter()
            .map(|r| (r.start_ns, r.value))
            .collect();
        if meter_kind(meter) == MeterKind::Gauge {
            let r = self.db.begin_read()?;
            let gauges = r.open_table(GAUGES)?;
            let pre = series_prefix(tenant, meter);
            for item in gauges.range(pre.as_slice()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(&pre) {
                    break;
                }
                let s: GaugeState = serde_json::from_slice(v.value()).map_err(|e| {
                    Error::new(ErrorKind::Integrity, "a gauge record does not decode").set_source(e)
                })?;
                for (start, v) in
                    integrate(s.value, s.since_ns.max(from), now.min(to), Granularity::Day)
                {
                    *rows.entry(start).or_default() += v;
                }
            }
        }
        Ok(rows
            .into_iter()
            .map(|(start_ns, value)| AggregateRow {
                meter: meter.to_owned(),
                granularity: Granularity::Day,
                start_ns,
                dims: String::new(),
                value,
            })
            .collect())
    }

    fn gauge(&self, tenant: &str, meter: &str) -> Result<u64> {
        let r = self.db.begin_read()?;
        let gauges = r.open_table(GAUGES)?;
        let pre = series_prefix(tenant, meter);
        let mut total = 0u64;
        for item in gauges.range(pre.as_slice()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(&pre) {
                break;
            }
            let s: GaugeState = serde_json::from_slice(v.value()).map_err(|e| {
                Error::new(ErrorKind::Integrity, "a gauge record does not decode").set_source(e)
            })?;
            total = total.saturating_add(s.value);
        }
        Ok(total)
    }

    fn set_quota(&self, tenant: &str, quota: Quota) -> Result<()> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(QUOTAS)?;
            let b = serde_json::to_vec(&quota)
                .map_err(|e| Error::new(ErrorKind::Other, "quota encode").set_source(e))?;
            t.insert(tenant, b.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    fn quota(&self, tenant: &str) -> Result<Quota> {
        let r = self.db.begin_read()?;
        let t = r.open_table(QUOTAS)?;
        match t.get(tenant)? {
            Some(v) => serde_json::from_slice(v.value())
                .map_err(|e| Error::new(ErrorKind::Integrity, "quota decode").set_source(e)),
            None => Ok(Quota::default()),
        }
    }
}

/// A [`MeterStore`] that adds up per-request counter events in memory and
/// writes them to the store underneath once per period (one event per
/// tenant, meter, dimensions and period), so that metering a read or a
/// small write costs no durable write of its own. What it buffers are the
/// meters named at construction (by default `storage.bytes_served`,
/// `storage.bytes_ingested` and `api.requests`, whose events carry
/// one-off idempotency keys); everything else passes straight through.
/// Every read (queries, gauges, quotas, invoices) flushes first, so a
/// caller reads its own usage. A crash loses at most one period of those
/// counters; metering is best effort either way (DESIGN.md, metering).
pub struct BufferedMeterStore {
    inner: std::sync::Arc<dyn MeterStore>,
    meters: Vec<String>,
    period_ns: i64,
    pending: std::sync::Mutex<BTreeMap<(String, String, Dimensions, i64), u64>>,
}

impl std::fmt::Debug for BufferedMeterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferedMeterStore")
            .field("meters", &self.meters)
            .field("period_ns", &self.period_ns)
            .finish_non_exhaustive()
    }
}

impl BufferedMeterStore {
    /// Buffers the default per-request meters over `inner` for `period`.
    /// Call [`BufferedMeterStore::flush`] periodically (see
    /// [`BufferedMeterStore::spawn_flusher`]) and before exit.
    pub fn new(inner: std::sync::Arc<dyn MeterStore>, period: std::time::Duration) -> Self {
        BufferedMeterStore {
            inner,
            meters: vec![
                asheville_core::metering::BYTES_SERVED.to_owned(),
                asheville_core::metering::BYTES_INGESTED.to_owned(),
                asheville_core::metering::API_REQUESTS.to_owned(),
            ],
            period_ns: i64::try_from(period.as_nanos()).unwrap_or(i64::MAX).max(1),
            pending: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Flushes every `period` on the current tokio runtime until `self`
    /// is dropped elsewhere (the task holds a weak reference).
    pub fn spawn_flusher(self: &std::sync::Arc<Self>, period: std::time::Duration) {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let _ = me.flush();
            }
        });
    }

    /// Writes the buffered counters to the store underneath.
    pub fn flush(&self) -> Result<RecordReport> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(RecordReport::default());
        }
        // Unique keys: this flush's time and a process-wide sequence.
        static FLUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nonce = crate::catalog::now_ns();
        let seq = FLUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let events: Vec<UsageEvent> = pending
            .into_iter()
            .enumerate()
            .map(|(i, ((tenant, meter, dims, bucket), value))| UsageEvent {
                idempotency_key: format!("buffered-{nonce}-{seq}-{i}"),
                tenant,
                meter,
                value,
                at_ns: bucket,
                dims,
            })
            .collect();
        self.inner.record(&events)
    }
}

impl Drop for BufferedMeterStore {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl MeterStore for BufferedMeterStore {
    fn record(&self, events: &[UsageEvent]) -> Result<RecordReport> {
        let mut through = Vec::new();
        let mut report = RecordReport::default();
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                if self.meters.contains(&e.meter) {
                    let bucket = e.at_ns.div_euclid(self.period_ns) * self.period_ns;
                    let k = (e.tenant.clone(), e.meter.clone(), e.dims.clone(), bucket);
                    let v = p.entry(k).or_insert(0);
                    *v = v.saturating_add(e.value);
                    report.accepted += 1;
                } else {
                    through.push(e.clone());
                }
            }
        }
        if !through.is_empty() {
            let r = self.inner.record(&through)?;
            report.accepted += r.accepted;
            report.duplicates += r.duplicates;
            report.rejected.extend(r.rejected);
        }
        Ok(report)
    }

    fn adjust_gauge(
        &self,
        tenant: &str,
        meter: &str,
        dims: &Dimensions,
        delta: i64,
        at_ns: i64,
        key: &str,
    ) -> Result<u64> {
        self.inner
            .adjust_gauge(tenant, meter, dims, delta, at_ns, key)
    }

    fn query(&self, q: &UsageQuery) -> Result<Vec<AggregateRow>> {
        self.flush()?;
        self.inner.query(q)
    }

    fn daily(
        &self,
        tenant: &str,
        meter: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<Vec<AggregateRow>> {
        self.flush()?;
        self.inner.daily(tenant, meter, from, to, now)
    }

    fn gauge(&self, tenant: &str, meter: &str) -> Result<u64> {
        self.inner.gauge(tenant, meter)
    }

    fn set_quota(&self, tenant: &str, quota: Quota) -> Result<()> {
        self.inner.set_quota(tenant, quota)
    }

    fn quota(&self, tenant: &str) -> Result<Quota> {
        self.inner.quota(tenant)
    }
}
