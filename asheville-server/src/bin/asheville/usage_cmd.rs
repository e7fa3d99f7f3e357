//! `asheville usage|invoice|quota`: metering from the command line. Usage is
//! recorded into `<data-dir>/meters.redb` by every command that reads or
//! writes files.

use std::path::Path;
use std::sync::Arc;

use asheville_core::metering::{Granularity, PricePlan, Quota};
use asheville_storage::Error;
use asheville_storage::metering::{BufferedMeterStore, MeterStore, RedbMeterStore, UsageQuery};

use super::{Cli, print_json, read_json};

/// The meter store of the data directory.
pub fn meters(cli: &Cli) -> Result<Arc<dyn MeterStore>, Error> {
    std::fs::create_dir_all(&cli.data_dir)
        .map_err(|e| Error::io("cannot create the data directory", e))?;
    // Per-file counters (served, ingested) add up in memory and are
    // written once a second and at exit, not once per file.
    let store = Arc::new(BufferedMeterStore::new(
        Arc::new(RedbMeterStore::open(&cli.data_dir.join("meters.redb"))?),
        std::time::Duration::from_secs(1),
    ));
    if tokio::runtime::Handle::try_current().is_ok() {
        store.spawn_flusher(std::time::Duration::from_secs(1));
    }
    Ok(store)
}

fn now() -> i64 {
    asheville_storage::catalog::now_ns()
}

/// `asheville usage`
pub fn usage(cli: &Cli, meter: &str, granularity: &str, dims: &str) -> Result<(), Error> {
    let g = match granularity {
        "hour" => Granularity::Hour,
        "month" => Granularity::Month,
        _ => Granularity::Day,
    };
    let m = meters(cli)?;
    let mut after = None;
    let mut rows = Vec::new();
    loop {
        let page = m.query(&UsageQuery {
            tenant: cli.tenant.clone(),
            meter: meter.to_owned(),
            granularity: g,
            from_ns: 0,
            to_ns: i64::MAX,
            dims: dims.to_owned(),
            after_ns: after,
            limit: 1000,
        })?;
        let Some(last) = page.last() else { break };
        after = Some(last.start_ns);
        rows.extend(page);
    }
    if cli.json {
        print_json(&serde_json::to_value(&rows).unwrap_or_default());
        return Ok(());
    }
    let gauge =
        asheville_core::metering::meter_kind(meter) == asheville_core::metering::MeterKind::Gauge;
    for r in rows {
        let day = r.start_ns.div_euclid(asheville_core::metering::DAY_NS);
        let (y, mo, d) = asheville_core::metering::civil_from_days(day);
        let hour = r.start_ns.rem_euclid(asheville_core::metering::DAY_NS)
            / asheville_core::metering::HOUR_NS;
        let value = if gauge {
            format!(
                "{:.3} byte-hours",
                r.value as f64 / asheville_core::metering::HOUR_NS as f64
            )
        } else {
            r.value.to_string()
        };
        println!("{y:04}-{mo:02}-{d:02} {hour:02}:00  {value}");
    }
    if gauge {
        println!("now: {}", m.gauge(&cli.tenant, meter)?);
    }
    Ok(())
}

/// `asheville invoice`
pub fn invoice(cli: &Cli, period: &str, plan: &Path, csv: bool) -> Result<(), Error> {
    let plan: PricePlan = read_json(plan)?;
    let inv = meters(cli)?.invoice(&cli.tenant, period, &plan, now())?;
    if cli.json {
        print_json(&serde_json::to_value(&inv).unwrap_or_default());
    } else if csv {
        print!("{}", inv.to_csv());
    } else {
        println!(
            "invoice {} for {} ({} plan)",
            inv.period, inv.tenant, inv.plan
        );
        for l in &inv.lines {
            println!(
                "  {:<32} {:<7} {:>16} {:<12} x {:>10} = {:>12} {}",
                l.meter, l.tier, l.quantity, l.unit, l.unit_price, l.amount, inv.currency
            );
        }
        println!("  total {} {}", inv.total, inv.currency);
    }
    Ok(())
}

/// `asheville quota`
pub fn quota(
    cli: &Cli,
    max_stored: Option<u64>,
    max_ingest: Option<u64>,
    clear: bool,
) -> Result<(), Error> {
    let m = meters(cli)?;
    if clear {
        m.set_quota(&cli.tenant, Quota::default())?;
    } else if max_stored.is_some() || max_ingest.is_some() {
        let mut q = m.quota(&cli.tenant)?;
        if max_stored.is_some() {
            q.max_stored_bytes = max_stored;
        }
        if max_ingest.is_some() {
            q.max_ingest_per_day = max_ingest;
        }
        m.set_quota(&cli.tenant, q)?;
    }
    let q = m.quota(&cli.tenant)?;
    if cli.json {
        print_json(&serde_json::to_value(q).unwrap_or_default());
    } else {
        let show = |v: Option<u64>| v.map_or("none".to_owned(), |v| v.to_string());
        println!(
            "tenant {}: max stored bytes {}, max ingest per day {}",
            cli.tenant,
            show(q.max_stored_bytes),
            show(q.max_ingest_per_day)
        );
    }
    Ok(())
}
