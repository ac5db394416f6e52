//! Payments in PostgreSQL, and what is owed: a payment counts towards every
//! revision of the bill it was made against (see `bills`).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::bills::BILL_SELECT;
use crate::money;

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Payment {
    pub id: Uuid,
    pub bill_id: Uuid,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub method: String,
    pub reference: String,
    pub received_at: DateTime<Utc>,
}

/// Records a payment towards a bill of Tariff `tariff` (the caller checked
/// the bill is the Tariff's). A payment whose reference is already recorded
/// in the Tariff is not recorded twice: `Ok(Err(existing))` gives the one
/// recorded. References are the Tariff's own: another Tariff's are unseen.
pub async fn pay(
    pool: &PgPool,
    ns: &str,
    tariff: &str,
    bill: Uuid,
    amount: Decimal,
    method: &str,
    reference: &str,
) -> Result<Result<Payment, Payment>, sqlx::Error> {
    let inserted: Option<Payment> = sqlx::query_as(
        "INSERT INTO fleetward_billing.payments (id, namespace, tariff, bill_id, amount, method, reference) \
         VALUES ($1, $2, $7, $3, $4, $5, $6) ON CONFLICT (namespace, tariff, reference) DO NOTHING \
         RETURNING id, bill_id, amount, method, reference, received_at",
    )
    .bind(Uuid::new_v4())
    .bind(ns)
    .bind(bill)
    .bind(amount)
    .bind(method)
    .bind(reference)
    .bind(tariff)
    .fetch_optional(pool)
    .await?;
    if let Some(p) = inserted {
        return Ok(Ok(p));
    }
    let existing: Payment = sqlx::query_as(
        "SELECT id, bill_id, amount, method, reference, received_at FROM fleetward_billing.payments \
         WHERE namespace = $1 AND tariff = $3 AND reference = $2",
    )
    .bind(ns)
    .bind(reference)
    .bind(tariff)
    .fetch_one(pool)
    .await?;
    Ok(Err(existing))
}

/// The payments towards bill `bill` of Tariff `tariff` (any revision).
pub async fn payments(pool: &PgPool, ns: &str, tariff: &str, bill: Uuid) -> Result<Vec<Payment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.bill_id, p.amount, p.method, p.reference, p.received_at \
         FROM fleetward_billing.payments p JOIN fleetward_billing.bills o ON o.id = p.bill_id \
         JOIN fleetward_billing.bills b ON b.namespace = o.namespace AND b.tariff = o.tariff \
           AND b.device_id = o.device_id AND b.account_id = o.account_id AND b.part_from = o.part_from \
         WHERE p.namespace = $1 AND b.tariff = $3 AND b.id = $2 ORDER BY p.received_at",
    )
    .bind(ns)
    .bind(bill)
    .bind(tariff)
    .fetch_all(pool)
    .await
}

/// An account with unpaid bills past their due date.
#[derive(Clone, Debug, Serialize)]
pub struct Defaulter {
    pub account_id: String,
    pub account_name: Option<String>,
    pub currency: String,
    pub amount_due: String,
    pub bills: i64,
    pub oldest_due_date: NaiveDate,
    pub days_overdue: i64,
}

/// Accounts owing money on Tariff `tariff`'s current bills due before
/// `today`, the longest overdue first.
pub async fn defaulters(
    pool: &PgPool,
    ns: &str,
    tariff: &str,
    today: NaiveDate,
) -> Result<Vec<Defaulter>, sqlx::Error> {
    let sql = format!(
        "WITH cur AS ({BILL_SELECT} WHERE b.namespace = $1 AND b.tariff = $3 AND NOT b.superseded AND b.due_date < $2) \
         SELECT account_id, max(account_name) AS account_name, currency, sum(total - paid) AS due, count(*) AS n, \
                min(due_date) AS oldest \
         FROM cur WHERE total > paid GROUP BY account_id, currency ORDER BY min(due_date), account_id"
    );
    let rows: Vec<(String, Option<String>, String, Decimal, i64, NaiveDate)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ns)
        .bind(today)
        .bind(tariff)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(account_id, account_name, currency, due, bills, oldest)| Defaulter {
            amount_due: money::format(due, money::exponent(&currency).unwrap_or(2)),
            account_id,
            account_name,
            currency,
            bills,
            oldest_due_date: oldest,
            days_overdue: (today - oldest).num_days(),
        })
        .collect())
}
