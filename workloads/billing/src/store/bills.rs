//! Bills and their revisions in PostgreSQL, and how the API and the pages
//! show them.
//!
//! A bill is identified by (tariff, meter, holder, first day of the part)
//! and has revisions: saving a bill identical to the current revision does
//! nothing (re-running a period never duplicates), a different one becomes
//! the next revision and the old one is kept, marked superseded.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::bill::{Line, Period};
use crate::money;

/// A bill as a run computes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewBill {
    pub device_id: String,
    pub property: String,
    pub account_id: String,
    pub part_from: NaiveDate,
    pub part_to: NaiveDate,
    pub units: Decimal,
    pub lines: Vec<Line>,
    pub total: Decimal,
    pub estimated: bool,
    pub resets: i64,
    pub start_kwh: Option<Decimal>,
    pub end_kwh: Option<Decimal>,
}

/// What saving a run's bills did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Saved {
    /// New bills and new revisions.
    pub written: i64,
    pub unchanged: i64,
    pub estimated: i64,
    /// The sum of the run's current bills (written or unchanged).
    pub total: Decimal,
    /// What the written bills add to what was billed before: a new bill's
    /// total, a revision's difference from the one it supersedes.
    pub billed_change: Decimal,
}

#[derive(sqlx::FromRow)]
struct Current {
    id: Uuid,
    device_id: String,
    account_id: String,
    part_from: NaiveDate,
    part_to: NaiveDate,
    revision: i32,
    units: Decimal,
    lines: sqlx::types::Json<Vec<Line>>,
    total: Decimal,
    estimated: bool,
}

/// Saves a run's bills in one transaction, serialised with any other run
/// of the same tariff (an advisory lock).
#[allow(clippy::too_many_arguments)]
pub async fn save_bills(
    pool: &PgPool,
    ns: &str,
    tariff: &str,
    period: Period,
    currency: &str,
    due_date: NaiveDate,
    run: Uuid,
    bills: &[NewBill],
) -> Result<Saved, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_tariff(&mut tx, ns, tariff).await?;
    let current: Vec<Current> = sqlx::query_as(
        "SELECT id, device_id, account_id, part_from, part_to, revision, units, lines, total, estimated \
         FROM fleetward_billing.bills WHERE namespace = $1 AND tariff = $2 AND period = $3 AND NOT superseded",
    )
    .bind(ns)
    .bind(tariff)
    .bind(period.to_string())
    .fetch_all(&mut *tx)
    .await?;
    let current: HashMap<(&str, &str, NaiveDate), &Current> = current
        .iter()
        .map(|c| ((c.device_id.as_str(), c.account_id.as_str(), c.part_from), c))
        .collect();
    let mut saved = Saved::default();
    let mut rows: Vec<(&NewBill, i32)> = Vec::new();
    let mut superseded = Vec::new();
    for b in bills {
        saved.total += b.total;
        saved.estimated += i64::from(b.estimated);
        match current.get(&(b.device_id.as_str(), b.account_id.as_str(), b.part_from)) {
            Some(c)
                if c.units == b.units
                    && c.total == b.total
                    && c.estimated == b.estimated
                    && c.part_to == b.part_to
                    && c.lines.0 == b.lines =>
            {
                saved.unchanged += 1;
            }
            Some(c) => {
                superseded.push(c.id);
                saved.billed_change += b.total - c.total;
                rows.push((b, c.revision + 1));
            }
            None => {
                saved.billed_change += b.total;
                rows.push((b, 1));
            }
        }
    }
    sqlx::query("UPDATE fleetward_billing.bills SET superseded = true WHERE id = ANY($1)")
        .bind(&superseded)
        .execute(&mut *tx)
        .await?;
    saved.written = rows.len() as i64;
    for chunk in rows.chunks(2000) {
        let col = |f: fn(&NewBill) -> String| chunk.iter().map(|(b, _)| f(b)).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO fleetward_billing.bills (id, namespace, tariff, period, currency, due_date, run_id, \
               device_id, property, account_id, part_from, part_to, revision, units, lines, total, estimated, \
               resets, start_kwh, end_kwh) \
             SELECT gen_random_uuid(), $1, $2, $3, $4, $5, $6, d, p, a, f, t, r, u, l, tot, e, rs, sk, ek \
             FROM UNNEST($7::text[], $8::text[], $9::text[], $10::date[], $11::date[], $12::int[], \
                         $13::numeric[], $14::jsonb[], $15::numeric[], $16::bool[], $17::bigint[], \
                         $18::numeric[], $19::numeric[]) AS x(d, p, a, f, t, r, u, l, tot, e, rs, sk, ek)",
        )
        .bind(ns)
        .bind(tariff)
        .bind(period.to_string())
        .bind(currency)
        .bind(due_date)
        .bind(run)
        .bind(col(|b| b.device_id.clone()))
        .bind(col(|b| b.property.clone()))
        .bind(col(|b| b.account_id.clone()))
        .bind(chunk.iter().map(|(b, _)| b.part_from).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(b, _)| b.part_to).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(_, r)| *r).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(b, _)| b.units).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|(b, _)| sqlx::types::Json(b.lines.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|(b, _)| b.total).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(b, _)| b.estimated).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(b, _)| b.resets).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(b, _)| b.start_kwh).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(b, _)| b.end_kwh).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(saved)
}

async fn lock_tariff(tx: &mut Transaction<'_, Postgres>, ns: &str, tariff: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
        .bind(format!("fleetward-billing/{ns}/{tariff}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A bill as the API and the pages show it: amounts as decimal strings
/// with the currency's minor unit.
#[derive(Clone, Debug, Serialize)]
pub struct BillView {
    pub id: Uuid,
    pub tariff: String,
    pub device_id: String,
    pub property: String,
    pub account_id: String,
    pub account_name: Option<String>,
    pub period: String,
    pub part_from: NaiveDate,
    pub part_to: NaiveDate,
    pub revision: i32,
    pub superseded: bool,
    pub currency: String,
    pub units: String,
    pub lines: Vec<LineView>,
    pub total: String,
    pub paid: String,
    pub balance: String,
    pub status: &'static str,
    pub due_date: NaiveDate,
    pub estimated: bool,
    pub meter_resets: i32,
    pub start_kwh: Option<String>,
    pub end_kwh: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LineView {
    pub kind: crate::bill::LineKind,
    pub description: String,
    pub quantity: Option<String>,
    pub rate: Option<String>,
    pub amount: String,
}

#[derive(sqlx::FromRow)]
struct BillRow {
    id: Uuid,
    tariff: String,
    device_id: String,
    property: String,
    account_id: String,
    account_name: Option<String>,
    period: String,
    part_from: NaiveDate,
    part_to: NaiveDate,
    revision: i32,
    superseded: bool,
    currency: String,
    units: Decimal,
    lines: sqlx::types::Json<Vec<Line>>,
    total: Decimal,
    paid: Decimal,
    due_date: NaiveDate,
    estimated: bool,
    resets: i32,
    start_kwh: Option<Decimal>,
    end_kwh: Option<Decimal>,
    created_at: DateTime<Utc>,
}

/// Paid in full, in part, not at all, or more than the total (the excess
/// is shown as a negative balance: a credit).
pub fn status(total: Decimal, paid: Decimal) -> &'static str {
    if paid <= Decimal::ZERO && total > Decimal::ZERO {
        "unpaid"
    } else if paid < total {
        "partially_paid"
    } else if paid == total {
        "paid"
    } else {
        "overpaid"
    }
}

impl From<BillRow> for BillView {
    fn from(b: BillRow) -> Self {
        let exp = money::exponent(&b.currency).unwrap_or(2);
        let f = |d: Decimal| money::format(d, exp);
        BillView {
            id: b.id,
            tariff: b.tariff,
            device_id: b.device_id,
            property: b.property,
            account_id: b.account_id,
            account_name: b.account_name,
            period: b.period,
            part_from: b.part_from,
            part_to: b.part_to,
            revision: b.revision,
            superseded: b.superseded,
            units: b.units.normalize().to_string(),
            lines: b
                .lines
                .0
                .into_iter()
                .map(|l| LineView {
                    kind: l.kind,
                    description: l.description,
                    quantity: l.quantity.map(|q| q.normalize().to_string()),
                    rate: l.rate.map(|r| r.normalize().to_string()),
                    amount: f(l.amount),
                })
                .collect(),
            total: f(b.total),
            paid: f(b.paid),
            balance: f(b.total - b.paid),
            status: status(b.total, b.paid),
            currency: b.currency,
            due_date: b.due_date,
            estimated: b.estimated,
            meter_resets: b.resets,
            start_kwh: b.start_kwh.map(|k| k.normalize().to_string()),
            end_kwh: b.end_kwh.map(|k| k.normalize().to_string()),
            created_at: b.created_at,
        }
    }
}

/// A bill as `BillView` shows it, with what was paid towards any of its
/// revisions.
pub(super) const BILL_SELECT: &str = "
SELECT b.id, b.tariff, b.device_id, b.property, b.account_id, a.name AS account_name, b.period,
       b.part_from, b.part_to, b.revision, b.superseded, b.currency, b.units, b.lines, b.total,
       coalesce((SELECT sum(p.amount) FROM fleetward_billing.payments p
                 JOIN fleetward_billing.bills o ON o.id = p.bill_id
                 WHERE o.namespace = b.namespace AND o.tariff = b.tariff AND o.device_id = b.device_id
                   AND o.account_id = b.account_id AND o.part_from = b.part_from), 0) AS paid,
       b.due_date, b.estimated, b.resets, b.start_kwh, b.end_kwh, b.created_at
FROM fleetward_billing.bills b
LEFT JOIN fleetward_billing.accounts a ON a.namespace = b.namespace AND a.tariff = b.tariff AND a.id = b.account_id";

/// Filters of the bill list.
#[derive(Clone, Debug, Default)]
pub struct BillFilter {
    pub tariff: Option<String>,
    pub period: Option<Period>,
    pub account: Option<String>,
    pub device: Option<String>,
    /// Superseded revisions too.
    pub all_revisions: bool,
}

pub async fn bills(pool: &PgPool, ns: &str, f: &BillFilter) -> Result<Vec<BillView>, sqlx::Error> {
    let sql = format!(
        "{BILL_SELECT} WHERE b.namespace = $1 AND ($2::text IS NULL OR b.tariff = $2) \
         AND ($3::text IS NULL OR b.period = $3) AND ($4::text IS NULL OR b.account_id = $4) \
         AND ($5::text IS NULL OR b.device_id = $5) AND ($6 OR NOT b.superseded) \
         ORDER BY b.period, b.account_id, b.device_id, b.part_from, b.revision"
    );
    let rows: Vec<BillRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ns)
        .bind(&f.tariff)
        .bind(f.period.map(|p| p.to_string()))
        .bind(&f.account)
        .bind(&f.device)
        .bind(f.all_revisions)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(BillView::from).collect())
}

/// One bill of Tariff `tariff`: a bill id of another Tariff, even in the
/// same namespace, is not found (each Tariff's billing key sees only its
/// own bills).
pub async fn bill(pool: &PgPool, ns: &str, tariff: &str, id: Uuid) -> Result<Option<BillView>, sqlx::Error> {
    let sql = format!("{BILL_SELECT} WHERE b.namespace = $1 AND b.id = $2 AND b.tariff = $3");
    let row: Option<BillRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ns)
        .bind(id)
        .bind(tariff)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(BillView::from))
}
