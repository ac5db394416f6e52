//! A billing run: read the meters on demand (when a gateway is given),
//! measure every meter's month in one query, split the months whose
//! property changed hands, charge, and save the bills (`store`). The
//! decisions are in `compute`, which is pure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::bill::{self, Part, Period, Rates, Share, Tenancy};
use crate::db::{self, Point, Usage};
use crate::fleet::Meter;
use crate::metrics::Metrics;
use crate::read::{self, Gateway};
use crate::store::{self, NewBill, RunRow};

/// Everything a run needs.
pub struct Job<'a> {
    pub pool: &'a PgPool,
    pub namespace: &'a str,
    pub tariff: &'a str,
    pub rates: &'a Rates,
    pub meters: &'a [Meter],
    pub period: Period,
    pub trigger: &'a str,
    /// Ask the meters first; without it the run bills from telemetry.
    pub gateway: Option<&'a Gateway>,
    pub read_timeout: Duration,
    pub read_concurrency: usize,
    pub metrics: &'a Metrics,
}

/// What a run did, and what went wrong with the gateway if anything.
#[derive(Debug)]
pub struct Outcome {
    pub row: RunRow,
    pub gateway_error: Option<String>,
    pub read_took: Option<Duration>,
}

pub async fn run(job: Job<'_>) -> Result<Outcome, sqlx::Error> {
    let started = Instant::now();
    let ns = job.namespace;
    let id = store::start_run(job.pool, ns, job.tariff, job.period, job.trigger).await?;
    let result = bill_period(&job, id).await;
    let mut row = match &result {
        Ok((row, ..)) => row.clone(),
        Err(e) => RunRow {
            error: Some(e.to_string()),
            ..Default::default()
        },
    };
    row.id = id;
    // The run's row records even a failed run (if the database lets us).
    let _ = store::finish_run(job.pool, &row).await;
    let ok = if result.is_ok() { "ok" } else { "failed" };
    job.metrics.runs.with_label_values(&[job.tariff, ok]).inc();
    job.metrics.run_duration.observe(started.elapsed().as_secs_f64());
    let (row, gateway_error, read_took, billed_change) = result?;
    job.metrics
        .bills
        .with_label_values(&[job.tariff])
        .inc_by(row.bills as u64);
    job.metrics
        .unchanged
        .with_label_values(&[job.tariff])
        .inc_by(row.unchanged as u64);
    // Corrections downwards are not subtracted (a counter only grows).
    let billed: f64 = billed_change.try_into().unwrap_or(0.0);
    job.metrics
        .billed
        .with_label_values(&[&job.rates.currency])
        .inc_by(billed.max(0.0));
    Ok(Outcome {
        row,
        gateway_error,
        read_took,
    })
}

/// The run's row, the gateway's error, how long the reads took, and what
/// the run added to the amounts billed.
type Billed = (RunRow, Option<String>, Option<Duration>, Decimal);

async fn bill_period(job: &Job<'_>, id: uuid::Uuid) -> Result<Billed, sqlx::Error> {
    let ns = job.namespace;
    let all: Vec<String> = job.meters.iter().map(|m| m.device_id.clone()).collect();
    let mut answered = 0;
    let mut gateway_error = None;
    let mut read_took = None;
    if let Some(gw) = job.gateway {
        // A meter whose end of month is fixed is not asked again: re-runs
        // bill the same reading.
        let fixed: std::collections::HashSet<String> =
            db::fixed_meters(job.pool, ns, job.period).await?.into_iter().collect();
        let ask: Vec<String> = all.iter().filter(|m| !fixed.contains(*m)).cloned().collect();
        let reads = read::read_meters(
            gw,
            job.pool,
            ns,
            read::Ask {
                meters: &ask,
                period: job.period,
                timeout: job.read_timeout,
                concurrency: job.read_concurrency,
            },
            job.metrics,
        )
        .await?;
        tracing::info!(
            asked = reads.asked,
            answered = reads.answers.len(),
            refused = reads.refused,
            took_ms = reads.took.as_millis() as u64,
            "meters read"
        );
        db::fix_period_end(job.pool, ns, job.period, id, &reads.answers).await?;
        answered = reads.answers.len();
        gateway_error = reads.gateway_error;
        read_took = Some(reads.took);
    }
    let usage: HashMap<String, Usage> = db::usage(job.pool, ns, &all, job.period)
        .await?
        .into_iter()
        .map(|u| (u.device_id.clone(), u))
        .collect();
    let mut properties: Vec<String> = job.meters.iter().map(|m| m.property.clone()).collect();
    properties.sort();
    properties.dedup();
    let tenancies = store::tenancies(job.pool, ns, job.tariff, &properties, job.period).await?;
    let split: Vec<String> = job
        .meters
        .iter()
        .filter(|m| {
            bill::parts(
                job.period,
                &m.owner,
                tenancies.get(&m.property).map_or(&[], Vec::as_slice),
            )
            .len()
                > 1
        })
        .map(|m| m.device_id.clone())
        .collect();
    let mut points: HashMap<String, Vec<Point>> = HashMap::new();
    if !split.is_empty() {
        for p in db::points(job.pool, ns, &split, job.period).await? {
            points.entry(p.device_id.clone()).or_default().push(p);
        }
    }
    let bills = compute(job.rates, job.period, job.meters, &usage, &points, &tenancies);
    let due = job.period.next_first_day() + Days::new(job.rates.due_days.max(0) as u64);
    let saved = store::save_bills(
        job.pool,
        ns,
        job.tariff,
        job.period,
        &job.rates.currency,
        due,
        id,
        &bills,
    )
    .await?;
    let row = RunRow {
        id,
        tariff: job.tariff.to_string(),
        period: job.period.to_string(),
        trigger: job.trigger.to_string(),
        meters: all.len() as i32,
        answered: answered as i32,
        estimated: saved.estimated as i32,
        bills: saved.written as i32,
        unchanged: saved.unchanged as i32,
        total: Some(saved.total),
        ..Default::default()
    };
    Ok((row, gateway_error, read_took, saved.billed_change))
}

/// The bills of a month: one per meter and holder (`bill::parts`). A meter
/// with no reading at all before the month's end gets none (there is
/// nothing to bill from).
pub fn compute(
    rates: &Rates,
    period: Period,
    meters: &[Meter],
    usage: &HashMap<String, Usage>,
    points: &HashMap<String, Vec<Point>>,
    tenancies: &HashMap<String, Vec<Tenancy>>,
) -> Vec<NewBill> {
    let mut out = Vec::with_capacity(meters.len());
    for m in meters {
        let Some(u) = usage.get(&m.device_id) else {
            continue;
        };
        let parts = bill::parts(period, &m.owner, tenancies.get(&m.property).map_or(&[], Vec::as_slice));
        let per_part: Vec<(Decimal, u32)> = if parts.len() == 1 {
            vec![(u.units, u.resets as u32)]
        } else {
            split(period, &parts, points.get(&m.device_id).map_or(&[], Vec::as_slice))
        };
        for (part, (units, resets)) in parts.iter().zip(per_part) {
            let share = Share {
                days: part.days(),
                of: period.days(),
            };
            let (lines, total) = bill::charge(rates, units, share);
            out.push(NewBill {
                device_id: m.device_id.clone(),
                property: m.property.clone(),
                account_id: part.account.clone(),
                part_from: part.from,
                part_to: part.to,
                units,
                lines,
                total,
                estimated: !u.answered,
                resets: i64::from(resets),
                start_kwh: u.start_kwh,
                end_kwh: u.end_kwh,
            });
        }
    }
    out
}

/// Consumption per part: each increase belongs to the part in which its
/// later reading was taken (one taken after the month — the answer to the
/// run's read — to the last part).
pub fn split(period: Period, parts: &[Part], points: &[Point]) -> Vec<(Decimal, u32)> {
    let mut out = vec![(Decimal::ZERO, 0u32); parts.len()];
    let last_instant = period.end() - chrono::Duration::nanoseconds(1);
    let part_of = |t: DateTime<Utc>| {
        let t = t.min(last_instant).max(period.start());
        let day = t.date_naive();
        parts.iter().position(|p| p.from <= day && day < p.to).unwrap_or(0)
    };
    for w in points.windows(2) {
        let i = part_of(w[1].t);
        let (units, resets) = bill::consumption([w[0].kwh, w[1].kwh]);
        out[i].0 += units;
        out[i].1 += resets;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_split_month_gives_each_holder_the_increases_in_their_days() {
        let nov = Period::parse("2026-11").unwrap();
        let day = |n| NaiveDate::from_ymd_opt(2026, 11, n).unwrap();
        let parts = bill::parts(
            nov,
            "owner",
            &[Tenancy {
                account: "tenant".into(),
                starts_on: day(16),
                ends_on: None,
            }],
        );
        let at = |dd: u32, h: u32, kwh: &str| Point {
            device_id: "m".into(),
            t: Utc.with_ymd_and_hms(2026, 11, dd, h, 0, 0).unwrap(),
            kwh: d(kwh),
        };
        let dec1 = Point {
            device_id: "m".into(),
            t: Utc.with_ymd_and_hms(2026, 12, 1, 0, 5, 0).unwrap(),
            kwh: d("160"),
        };
        // 100 at the start; 130 on the 15th (owner +30); 150 on the 16th
        // (tenant +20); the answer just after the month, 160 (tenant +10).
        let pts = [at(1, 0, "100"), at(15, 23, "130"), at(16, 0, "150"), dec1];
        assert_eq!(split(nov, &parts, &pts), vec![(d("30"), 0), (d("30"), 0)]);
    }
}
