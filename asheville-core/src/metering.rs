//! Metering models: usage events, meters, calendar periods, gauge
//! integration into byte-hours, price plans, invoices that explain every
//! line, and quotas. Pure: the durable store is in `asheville-storage`.
//!
//! Money is integer micro-units of the plan's currency (1 USD =
//! 1,000,000), quantities are integers in a meter's base unit (bytes,
//! requests, items; byte-nanoseconds for gauges), so an invoice is exact
//! and can be checked by hand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Bytes written by users (before dedup). Counter.
pub const BYTES_INGESTED: &str = "storage.bytes_ingested";
/// Physical bytes stored (after dedup and redundancy). Gauge.
pub const BYTES_STORED: &str = "storage.bytes_stored";
/// Logical bytes stored (the sizes of live files). Gauge.
pub const BYTES_STORED_LOGICAL: &str = "storage.bytes_stored.logical";
/// Bytes read by users. Counter.
pub const BYTES_SERVED: &str = "storage.bytes_served";
/// API requests. Counter.
pub const API_REQUESTS: &str = "api.requests";
/// Items a sync stored. Counter.
pub const SYNC_ITEMS: &str = "sync.items";
/// Bytes a sync read from its source. Counter.
pub const SYNC_BYTES: &str = "sync.bytes";

/// Whether a meter adds up (counter) or is a level over time (gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterKind {
    /// Values add up.
    Counter,
    /// The value is a level until the next event; it is integrated over
    /// time (value × nanoseconds).
    Gauge,
}

/// The kind of a meter: names starting with `storage.bytes_stored` are
/// gauges, everything else counts.
pub fn meter_kind(meter: &str) -> MeterKind {
    if meter.starts_with(BYTES_STORED) {
        MeterKind::Gauge
    } else {
        MeterKind::Counter
    }
}

/// Checks a meter name: `service.name`, lowercase ASCII, digits, `_`, `.`.
pub fn validate_meter(meter: &str) -> Result<()> {
    let ok = !meter.is_empty()
        && meter.len() <= 64
        && meter.contains('.')
        && meter
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            "a meter name is `service.name` in lowercase ASCII, digits, `_` and `.`",
        )
        .with_context("meter", meter.escape_debug()))
    }
}

/// The dimensions of a usage event. Every one is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dimensions {
    /// The user within the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The sync source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The storage backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The product feature (`api`, `sync`, `cli`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
}

impl Dimensions {
    /// `(name, value)` of every dimension that is set, in a fixed order.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut v = Vec::new();
        for (k, x) in [
            ("user", &self.user),
            ("source", &self.source),
            ("backend", &self.backend),
            ("feature", &self.feature),
        ] {
            if let Some(x) = x {
                v.push((k, x.as_str()));
            }
        }
        v
    }

    /// One string naming all of them (`user=a,source=b`), `""` for none.
    pub fn canonical(&self) -> String {
        self.pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn validate(&self) -> Result<()> {
        for (k, v) in self.pairs() {
            if v.is_empty() || v.len() > 128 || v.contains([',', '=', '\0']) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "a dimension value is 1-128 bytes without ',', '=' or NUL",
                )
                .with_context("dimension", k));
            }
        }
        Ok(())
    }
}

/// One usage event. Sent twice (same tenant and idempotency key), it
/// counts once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique per tenant: a retry of the same event carries the same key.
    pub idempotency_key: String,
    /// Tenant.
    pub tenant: String,
    /// Meter name.
    pub meter: String,
    /// Amount for a counter, level for a gauge.
    pub value: u64,
    /// When (ns since the Unix epoch).
    pub at_ns: i64,
    /// Dimensions.
    #[serde(default)]
    pub dims: Dimensions,
}

impl UsageEvent {
    /// Checks names and sizes.
    pub fn validate(&self) -> Result<()> {
        if self.idempotency_key.is_empty() || self.idempotency_key.len() > 200 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "an idempotency key is 1-200 bytes",
            ));
        }
        if self.tenant.is_empty() || self.tenant.contains('\0') || self.tenant.len() > 64 {
            return Err(Error::new(ErrorKind::InvalidInput, "bad tenant name"));
        }
        if self.at_ns < 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "an event time is after 1970",
            ));
        }
        validate_meter(&self.meter)?;
        self.dims.validate()
    }
}

/// A calendar granularity (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// Hours.
    Hour,
    /// Days.
    Day,
    /// Calendar months.
    Month,
}

impl Granularity {
    /// All three.
    pub const ALL: [Granularity; 3] = [Granularity::Hour, Granularity::Day, Granularity::Month];

    /// Start of the bucket holding `t` (ns).
    pub fn start(self, t: i64) -> i64 {
        match self {
            Granularity::Hour => t - t.rem_euclid(HOUR_NS),
            Granularity::Day => t - t.rem_euclid(DAY_NS),
            Granularity::Month => {
                let (y, m, _) = civil_from_days(t.div_euclid(DAY_NS));
                days_from_civil(y, m, 1) * DAY_NS
            }
        }
    }

    /// Start of the bucket after the one starting at `start`.
    pub fn next(self, start: i64) -> i64 {
        match self {
            Granularity::Hour => start + HOUR_NS,
            Granularity::Day => start + DAY_NS,
            Granularity::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(DAY_NS));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY_NS
            }
        }
    }
}

/// Nanoseconds per hour.
pub const HOUR_NS: i64 = 3_600_000_000_000;
/// Nanoseconds per day.
pub const DAY_NS: i64 = 24 * HOUR_NS;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The month `"2026-11"` as `[start, end)` in ns.
pub fn month_range(period: &str) -> Result<(i64, i64)> {
    let bad = || {
        Error::new(ErrorKind::InvalidInput, "a billing period is YYYY-MM")
            .with_context("period", period.escape_debug())
    };
    let (y, m) = period.split_once('-').ok_or_else(bad)?;
    let y: i64 = y.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || period.len() != 7 {
        return Err(bad());
    }
    let start = days_from_civil(y, m, 1) * DAY_NS;
    Ok((start, Granularity::Month.next(start)))
}

/// Splits a gauge level `value` held over `[from, to)` into the buckets
/// of `g`: `(bucket start, value × overlapping ns)`.
pub fn integrate(value: u64, from: i64, to: i64, g: Granularity) -> Vec<(i64, u128)> {
    let mut out = Vec::new();
    if to <= from || value == 0 {
        return out;
    }
    let mut start = g.start(from);
    let mut t = from;
    while t < to {
        let next = g.next(start);
        let end = next.min(to);
        out.push((start, u128::from(value) * (end - t) as u128));
        t = end;
        start = next;
    }
    out
}

/// A unit a price is quoted in, and its size in the meter's base unit.
pub fn unit_size(unit: &str) -> Result<u128> {
    const GB: u128 = 1_000_000_000;
    const H: u128 = HOUR_NS as u128;
    Ok(match unit {
        "byte" | "request" | "item" => 1,
        "1k requests" | "1k items" => 1_000,
        "1M requests" => 1_000_000,
        "GB" => GB,
        "GiB" => 1 << 30,
        "TB" => 1_000 * GB,
        // Gauges: byte-nanoseconds.
        "GB-hour" => GB * H,
        // 730 hours, the month cloud storage bills by.
        "GB-month" => GB * H * 730,
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "unknown unit (byte, request, item, 1k requests, 1k items, 1M requests, GB, GiB, TB, GB-hour, GB-month)",
            )
            .with_context("unit", unit.escape_debug()));
        }
    })
}

/// A price in micro-units written as a decimal string (`"0.023"`), exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micros(pub u64);

impl Micros {
    /// Parses `"12"`, `"0.023"`, `"1.5"` (at most 6 decimals).
    pub fn parse(s: &str) -> Result<Micros> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidConfig,
                "a price is a decimal with at most 6 decimals",
            )
            .with_context("price", s.escape_debug())
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty()
            || frac.len() > 6
            || !(int.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let i: u64 = int.parse().map_err(|_| bad())?;
        let f: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| bad())?
        };
        i.checked_mul(1_000_000)
            .and_then(|v| v.checked_add(f))
            .map(Micros)
            .ok_or_else(bad)
    }
}

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl Serialize for Micros {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Micros::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One price tier: the units up to `up_to` (cumulative over the period,
/// after the free allowance; `None`: no limit) cost `price` each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Cumulative units where the tier ends.
    #[serde(default)]
    pub up_to: Option<u64>,
    /// Price per unit.
    pub price: Micros,
}

/// How one meter is priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterPrice {
    /// Unit of quantities and prices (see [`unit_size`]).
    pub unit: String,
    /// Units free each period.
    #[serde(default)]
    pub free: u64,
    /// Tiers in order; the last should have no `up_to`.
    pub tiers: Vec<Tier>,
}

/// A price plan, typically loaded from a JSON file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricePlan {
    /// Name shown on invoices.
    pub name: String,
    /// Currency code.
    pub currency: String,
    /// Prices per meter. Meters not listed are not billed.
    pub meters: BTreeMap<String, MeterPrice>,
}

impl PricePlan {
    /// Checks units, tier order and meter names.
    pub fn validate(&self) -> Result<()> {
        for (meter, p) in &self.meters {
            validate_meter(meter)?;
            unit_size(&p.unit)?;
            if p.tiers.is_empty() {
                return Err(
                    Error::new(ErrorKind::InvalidConfig, "a meter price needs a tier")
                        .with_context("meter", meter),
                );
            }
            let mut last = 0;
            for (i, t) in p.tiers.iter().enumerate() {
                match t.up_to {
                    Some(u) if u <= last => {
                        return Err(Error::new(
                            ErrorKind::InvalidConfig,
                            "tier limits must increase",
                        )
                        .with_context("meter", meter));
                    }
                    Some(u) => last = u,
                    None if i + 1 != p.tiers.len() => {
                        return Err(Error::new(
                            ErrorKind::InvalidConfig,
                            "only the last tier may be unlimited",
                        )
                        .with_context("meter", meter));
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

/// An aggregate an invoice line came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregateRow {
    /// Meter.
    pub meter: String,
    /// Granularity of the row.
    pub granularity: Granularity,
    /// Start of the bucket (ns).
    pub start_ns: i64,
    /// `""` for the tenant's total, else one dimension (`user=alice`).
    pub dims: String,
    /// Sum (counters) or value × ns (gauges), in the base unit. A decimal
    /// string in JSON (it can pass 2^64).
    #[serde(with = "u128_string")]
    pub value: u128,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// Meter.
    pub meter: String,
    /// `"free"` or `"tier N"` (from 1).
    pub tier: String,
    /// Quantity in the base unit covered by this line (a decimal string
    /// in JSON).
    #[serde(with = "u128_string")]
    pub base_quantity: u128,
    /// The same in the plan's unit, as an exact decimal (6 places).
    pub quantity: String,
    /// Unit.
    pub unit: String,
    /// Price per unit.
    pub unit_price: Micros,
    /// `quantity × unit_price`, rounded half up to a micro-unit.
    pub amount: Micros,
    /// The meter's aggregates for the period (per day), whose sum is the
    /// meter's quantity that the tier lines split.
    pub from_aggregates: Vec<AggregateRow>,
}

/// An invoice for a tenant and a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Tenant.
    pub tenant: String,
    /// Period (`YYYY-MM`).
    pub period: String,
    /// Plan name.
    pub plan: String,
    /// Currency.
    pub currency: String,
    /// Lines.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the lines.
    pub total: Micros,
}

fn decimal(num: u128, den: u128) -> String {
    // Exact to 6 places, rounded half up.
    let scaled = (num * 1_000_000 * 2 + den) / (2 * den);
    format!("{}.{:06}", scaled / 1_000_000, scaled % 1_000_000)
}

/// Prices one meter's quantity: lines for the free allowance and each tier
/// it reaches.
pub fn price_meter(
    meter: &str,
    price: &MeterPrice,
    quantity: u128,
    aggregates: Vec<AggregateRow>,
) -> Result<Vec<InvoiceLine>> {
    let unit = unit_size(&price.unit)?;
    let mut lines = Vec::new();
    let mut left = quantity;
    let mut line = |tier: String, base: u128, unit_price: Micros| {
        let amount = (base * u128::from(unit_price.0) * 2 + unit) / (2 * unit);
        lines.push(InvoiceLine {
            meter: meter.to_owned(),
            tier,
            base_quantity: base,
            quantity: decimal(base, unit),
            unit: price.unit.clone(),
            unit_price,
            amount: Micros(amount.min(u128::from(u64::MAX)) as u64),
            from_aggregates: aggregates.clone(),
        });
    };
    let free = u128::from(price.free) * unit;
    if free > 0 {
        let f = left.min(free);
        line("free".into(), f, Micros(0));
        left -= f;
    }
    let mut lower = 0u128;
    for (i, t) in price.tiers.iter().enumerate() {
        if left == 0 {
            break;
        }
        let cap = t.up_to.map(|u| u128::from(u) * unit);
        let room = cap.map_or(left, |c| c.saturating_sub(lower));
        let take = left.min(room);
        if take > 0 {
            line(format!("tier {}", i + 1), take, t.price);
        }
        left -= take;
        if let Some(c) = cap {
            lower = c;
        }
    }
    if left > 0 {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "the quantity is beyond the last tier (make the last tier unlimited)",
        )
        .with_context("meter", meter));
    }
    Ok(lines)
}

/// Builds an invoice from each billed meter's quantity and aggregates.
pub fn invoice(
    tenant: &str,
    period: &str,
    plan: &PricePlan,
    usage: &BTreeMap<String, (u128, Vec<AggregateRow>)>,
) -> Result<Invoice> {
    plan.validate()?;
    let mut lines = Vec::new();
    for (meter, price) in &plan.meters {
        let (q, aggs) = usage.get(meter).cloned().unwrap_or_default();
        lines.extend(price_meter(meter, price, q, aggs)?);
    }
    let total = lines.iter().map(|l| l.amount.0).sum();
    Ok(Invoice {
        tenant: tenant.to_owned(),
        period: period.to_owned(),
        plan: plan.name.clone(),
        currency: plan.currency.clone(),
        lines,
        total: Micros(total),
    })
}

impl Invoice {
    /// CSV: one row per line (aggregates summarised as `start=value`
    /// pairs separated by `;`), then a total row.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "tenant,period,meter,tier,quantity,unit,unit_price,amount,currency,aggregates\n",
        );
        for l in &self.lines {
            let aggs = l
                .from_aggregates
                .iter()
                .map(|a| format!("{}={}", a.start_ns, a.value))
                .collect::<Vec<_>>()
                .join(";");
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(&self.tenant),
                self.period,
                l.meter,
                l.tier,
                l.quantity,
                csv_field(&l.unit),
                l.unit_price,
                l.amount,
                csv_field(&self.currency),
                aggs
            ));
        }
        out.push_str(&format!(
            "{},{},total,,,,,{},{},\n",
            csv_field(&self.tenant),
            self.period,
            self.total,
            csv_field(&self.currency)
        ));
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Per-tenant limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Logical bytes stored at most.
    #[serde(default)]
    pub max_stored_bytes: Option<u64>,
    /// Bytes ingested per UTC day at most.
    #[serde(default)]
    pub max_ingest_per_day: Option<u64>,
}

impl Quota {
    /// Whether writing `incoming` more bytes keeps the tenant within its
    /// limits, given what it stores and ingested today. The error names
    /// the limit, the current use and the request.
    pub fn check(&self, stored: u64, ingested_today: u64, incoming: u64) -> Result<()> {
        if let Some(max) = self.max_stored_bytes
            && stored.saturating_add(incoming) > max
        {
            return Err(Error::new(
                ErrorKind::QuotaExceeded,
                "the write would pass the tenant's stored-bytes quota",
            )
            .with_context("limit", max)
            .with_context("stored", stored)
            .with_context("incoming", incoming));
        }
        if let Some(max) = self.max_ingest_per_day
            && ingested_today.saturating_add(incoming) > max
        {
            return Err(Error::new(
                ErrorKind::QuotaExceeded,
                "the write would pass the tenant's daily ingest quota",
            )
            .with_context("limit", max)
            .with_context("ingested_today", ingested_today)
            .with_context("incoming", incoming));
        }
        Ok(())
    }
}

/// Serde for `u128` as a decimal string (JSON numbers stop at 2^64 in most
/// parsers).
pub mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// As a string.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// From a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
