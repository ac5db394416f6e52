//! Billing runs in PostgreSQL: when each started and finished, what it
//! billed, and the error that stopped it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bill::Period;

pub async fn start_run(
    pool: &PgPool,
    ns: &str,
    tariff: &str,
    period: Period,
    trigger: &str,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO fleetward_billing.runs (id, namespace, tariff, period, trigger, started_at) \
         VALUES ($1, $2, $3, $4, $5, now())",
    )
    .bind(id)
    .bind(ns)
    .bind(tariff)
    .bind(period.to_string())
    .bind(trigger)
    .execute(pool)
    .await?;
    Ok(id)
}

/// What a run did, as the API shows it.
#[derive(Clone, Debug, Default, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub tariff: String,
    pub period: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub meters: i32,
    pub answered: i32,
    pub estimated: i32,
    pub bills: i32,
    pub unchanged: i32,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub total: Option<Decimal>,
    pub error: Option<String>,
}

pub async fn finish_run(pool: &PgPool, r: &RunRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fleetward_billing.runs SET finished_at = now(), meters = $2, answered = $3, estimated = $4, \
         bills = $5, unchanged = $6, total = $7, error = $8 WHERE id = $1",
    )
    .bind(r.id)
    .bind(r.meters)
    .bind(r.answered)
    .bind(r.estimated)
    .bind(r.bills)
    .bind(r.unchanged)
    .bind(r.total)
    .bind(&r.error)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn run(pool: &PgPool, ns: &str, id: Uuid) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tariff, period, trigger, started_at, finished_at, meters, answered, estimated, bills, \
         unchanged, total, error FROM fleetward_billing.runs WHERE namespace = $1 AND id = $2",
    )
    .bind(ns)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// When the last scheduled run of a tariff started.
pub async fn last_scheduled(pool: &PgPool, ns: &str, tariff: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(started_at) FROM fleetward_billing.runs WHERE namespace = $1 AND tariff = $2 AND trigger = 'schedule'",
    )
    .bind(ns)
    .bind(tariff)
    .fetch_one(pool)
    .await
}

/// Runs of a tariff, the latest first.
pub async fn runs(pool: &PgPool, ns: &str, tariff: &str, period: Option<Period>) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tariff, period, trigger, started_at, finished_at, meters, answered, estimated, bills, \
         unchanged, total, error FROM fleetward_billing.runs \
         WHERE namespace = $1 AND tariff = $2 AND ($3::text IS NULL OR period = $3) ORDER BY started_at DESC LIMIT 100",
    )
    .bind(ns)
    .bind(tariff)
    .bind(period.map(|p| p.to_string()))
    .fetch_all(pool)
    .await
}
