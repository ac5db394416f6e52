//! Billing runs against the real PostgreSQL of the dev services: readings
//! in, bills out, re-runs, corrections, resets, a tenant change mid-month,
//! payments and defaulters. (The on-demand reads through a real gateway and
//! simulated meters are in system-tests/tests/billing.rs.)

mod bills;
mod retention;
mod scoping;

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use fleetward_billing::bill::Period;
use fleetward_billing::db::{self, Reading};
use fleetward_billing::fleet::Meter;
use fleetward_billing::metrics::Metrics;
use fleetward_billing::run::{self, Job};
use fleetward_billing::store::{self, BillFilter};
use fleetward_testkit::env;
use rust_decimal::Decimal;
use sqlx::PgPool;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

async fn pool() -> PgPool {
    let pool = db::connect(&env("DATABASE_URL"), 4).await.expect("the dev PostgreSQL");
    db::migrate(&pool).await.unwrap();
    pool
}

const NOV: &str = "2026-11";

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn reading(ns: &str, device: &str, t: DateTime<Utc>, kwh: &str) -> Reading {
    Reading {
        namespace: ns.into(),
        device_id: device.into(),
        message_id: format!("{device}-{}", t.timestamp()),
        device_time: t,
        received_at: t + Duration::seconds(1),
        kwh: d(kwh),
        reply_to: None,
    }
}

fn meter(id: &str, property: &str, owner: &str) -> Meter {
    Meter {
        device_id: id.into(),
        property: property.into(),
        owner: owner.into(),
    }
}

async fn bill_nov(pool: &PgPool, ns: &str, meters: &[Meter], metrics: &Metrics) -> store::RunRow {
    bill_nov_for(pool, ns, "residential", meters, metrics).await
}

async fn bill_nov_for(pool: &PgPool, ns: &str, tariff: &str, meters: &[Meter], metrics: &Metrics) -> store::RunRow {
    let rates = fleetward_billing::bill::examples::residential();
    run::run(Job {
        pool,
        namespace: ns,
        tariff,
        rates: &rates,
        meters,
        period: Period::parse(NOV).unwrap(),
        trigger: "test",
        gateway: None,
        read_timeout: std::time::Duration::from_secs(1),
        read_concurrency: 4,
        metrics,
    })
    .await
    .unwrap()
    .row
}

async fn bills(pool: &PgPool, ns: &str, all_revisions: bool) -> HashMap<(String, String), Vec<store::BillView>> {
    let f = BillFilter {
        all_revisions,
        ..Default::default()
    };
    let mut out: HashMap<_, Vec<_>> = HashMap::new();
    for b in store::bills(pool, ns, &f).await.unwrap() {
        out.entry((b.device_id.clone(), b.account_id.clone()))
            .or_default()
            .push(b);
    }
    out
}
