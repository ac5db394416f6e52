//! One month of bills from 1,000,000 readings of 10,000 meters, beside the
//! naive design in the same run (one query for a meter's readings and one
//! insert for its bill, meter after meter).
//!
//!   ./deploy.sh dev-up     # PostgreSQL
//!   cargo bench -p fleetward-billing --bench bills [-- METERS READINGS_PER_METER]
//!
//! Prints: load time; the run (one usage query, charges, one transaction
//! of bills) with its peak memory; a re-run (nothing changes); the naive
//! run; the ratio. Each design bills into its own namespace of the same
//! readings, so neither finds the other's bills.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use fleetward_billing::bill::{self, Period, Rates, Share};
use fleetward_billing::db;
use fleetward_billing::fleet::Meter;
use fleetward_billing::metrics::Metrics;
use fleetward_billing::run::{self, Job};
use fleetward_billing::store::{self, NewBill};
use fleetward_testkit::rss_mib;
use sqlx::PgPool;

/// Loads the readings with COPY (CSV): the same rows under each namespace.
async fn load(pool: &PgPool, namespaces: &[&str], meters: usize, per_meter: usize, period: Period) {
    let start = period.start().timestamp();
    let span = (period.end().timestamp() - start) as usize;
    let mut csv = String::with_capacity(namespaces.len() * meters * per_meter * 80);
    for ns in namespaces {
        for m in 0..meters {
            let mut kwh = 1000.0 + m as f64;
            for r in 0..per_meter {
                let t = start + (span * r / per_meter + m % 600) as i64;
                kwh += 0.5 + ((m * 7 + r * 13) % 50) as f64 / 10.0;
                let ts = Utc.timestamp_opt(t, 0).unwrap().to_rfc3339();
                csv.push_str(&format!("{ns},m{m:05},r{r},{ts},{ts},{kwh:.3}\n"));
            }
        }
    }
    // The namespaces' weeks of the period (the service makes them on demand).
    let times: Vec<i64> = (0..=span as i64 / 86_400).map(|d| start + d * 86_400).collect();
    for ns in namespaces {
        db::readings_partitioned(pool, ns)
            .await
            .unwrap()
            .ensure(pool, &times)
            .await
            .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw(
            "COPY fleetward_billing.readings (namespace, device_id, message_id, device_time, received_at, kwh) \
             FROM STDIN (FORMAT csv)",
        )
        .await
        .unwrap();
    copy.send(csv.into_bytes()).await.unwrap();
    copy.finish().await.unwrap();
    sqlx::query("ANALYZE fleetward_billing.readings")
        .execute(pool)
        .await
        .unwrap();
}

/// The naive design: per meter, its readings, then its bill, one by one.
async fn naive(pool: &PgPool, ns: &str, meters: &[Meter], rates: &Rates, period: Period) -> usize {
    let due = period.next_first_day();
    let run = store::start_run(pool, ns, "naive", period, "bench").await.unwrap();
    let mut n = 0;
    for m in meters {
        let points = db::points(pool, ns, std::slice::from_ref(&m.device_id), period)
            .await
            .unwrap();
        if points.is_empty() {
            continue;
        }
        let (units, resets) = bill::consumption(points.iter().map(|p| p.kwh));
        let (lines, total) = bill::charge(rates, units, Share::whole(period));
        let b = NewBill {
            device_id: m.device_id.clone(),
            property: m.property.clone(),
            account_id: m.owner.clone(),
            part_from: period.first_day(),
            part_to: period.next_first_day(),
            units,
            lines,
            total,
            estimated: true,
            resets: i64::from(resets),
            start_kwh: points.first().map(|p| p.kwh),
            end_kwh: points.last().map(|p| p.kwh),
        };
        store::save_bills(pool, ns, "naive", period, &rates.currency, due, run, &[b])
            .await
            .unwrap();
        n += 1;
    }
    n
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let meters_n = args.first().copied().unwrap_or(10_000);
    let per_meter = args.get(1).copied().unwrap_or(100);
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (. .dev/env after ./deploy.sh dev-up)");
    let pool = db::connect(&url, 4).await.unwrap();
    db::migrate(&pool).await.unwrap();
    let tag = std::process::id();
    let (fast_ns, naive_ns) = (format!("bench-fast-{tag}"), format!("bench-naive-{tag}"));
    let period = Period::parse("2026-10").unwrap();
    let rates = bill::examples::residential();
    let meters: Vec<Meter> = (0..meters_n)
        .map(|m| Meter {
            device_id: format!("m{m:05}"),
            property: format!("p{m:05}"),
            owner: format!("a{m:05}"),
        })
        .collect();

    let t = Instant::now();
    load(&pool, &[&fast_ns, &naive_ns], meters_n, per_meter, period).await;
    println!(
        "loaded 2 × {} readings ({meters_n} meters × {per_meter}) in {:.1} s",
        meters_n * per_meter,
        t.elapsed().as_secs_f64()
    );

    let metrics = Metrics::default();
    // Resets the peak (VmHWM) to the current RSS, so the peak printed is
    // the run's, not the load's (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (before, _) = rss_mib(std::process::id());
    let job = |trigger| Job {
        pool: &pool,
        namespace: &fast_ns,
        tariff: "bench",
        rates: &rates,
        meters: &meters,
        period,
        trigger,
        gateway: None,
        read_timeout: Duration::from_secs(1),
        read_concurrency: 1,
        metrics: &metrics,
    };
    let t = Instant::now();
    let out = run::run(job("bench")).await.unwrap();
    let fast = t.elapsed();
    let (_, peak) = rss_mib(std::process::id());
    println!(
        "fleetward run:  {} bills in {:.2} s  (peak RSS {:.0} MiB, {:.0} MiB before the run; total {})",
        out.row.bills,
        fast.as_secs_f64(),
        peak,
        before,
        out.row.total.unwrap_or_default()
    );
    let t = Instant::now();
    let again = run::run(job("bench-rerun")).await.unwrap();
    println!(
        "re-run:         {} written, {} unchanged in {:.2} s",
        again.row.bills,
        again.row.unchanged,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let n = naive(&pool, &naive_ns, &meters, &rates, period).await;
    let slow = t.elapsed();
    println!(
        "naive baseline: {n} bills in {:.2} s (one query and one insert per meter)",
        slow.as_secs_f64()
    );
    println!("speed-up: {:.1}×", slow.as_secs_f64() / fast.as_secs_f64());

    // Both designs bill the same amounts.
    let totals: HashMap<String, String> = store::bills(&pool, &naive_ns, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.device_id, b.total))
        .collect();
    let mismatched = store::bills(&pool, &fast_ns, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|b| totals.get(&b.device_id) != Some(&b.total))
        .count();
    println!("bills differing between the two designs: {mismatched}");

    for ns in [&fast_ns, &naive_ns] {
        for table in ["bills", "runs", "readings", "period_end_readings"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM fleetward_billing.{table} WHERE namespace = $1"
            )))
            .bind(ns)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
}
