//! Accounts and tenancies in PostgreSQL: who holds a property when. A
//! tenancy that would overlap another of the same property is refused
//! (changes to a property's tenancies are serialised by an advisory lock).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::bill::{Period, Tenancy};

/// Tenancies of `properties` that overlap `period`.
pub async fn tenancies(
    pool: &PgPool,
    ns: &str,
    properties: &[String],
    period: Period,
) -> Result<HashMap<String, Vec<Tenancy>>, sqlx::Error> {
    let rows: Vec<(String, String, NaiveDate, Option<NaiveDate>)> = sqlx::query_as(
        "SELECT property, account_id, starts_on, ends_on FROM fleetward_billing.tenancies \
         WHERE namespace = $1 AND property = ANY($2) AND starts_on < $4 AND (ends_on IS NULL OR ends_on > $3)",
    )
    .bind(ns)
    .bind(properties)
    .bind(period.first_day())
    .bind(period.next_first_day())
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<String, Vec<Tenancy>> = HashMap::new();
    for (property, account, starts_on, ends_on) in rows {
        out.entry(property).or_default().push(Tenancy {
            account,
            starts_on,
            ends_on,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Creates an account; `Ok(false)` when the id is taken.
pub async fn create_account(
    pool: &PgPool,
    ns: &str,
    id: &str,
    name: &str,
    email: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO fleetward_billing.accounts (namespace, id, name, email) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(ns)
    .bind(id)
    .bind(name)
    .bind(email)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn accounts(pool: &PgPool, ns: &str) -> Result<Vec<Account>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, email, created_at FROM fleetward_billing.accounts WHERE namespace = $1 ORDER BY id",
    )
    .bind(ns)
    .fetch_all(pool)
    .await
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TenancyRow {
    pub id: i64,
    pub property: String,
    pub account_id: String,
    pub starts_on: NaiveDate,
    pub ends_on: Option<NaiveDate>,
}

/// Why a tenancy was not recorded.
#[derive(Debug, PartialEq)]
pub enum TenancyRefused {
    UnknownAccount,
    Overlaps(i64),
    NotFound,
}

/// Adds a tenancy, refusing one that overlaps another of the property.
pub async fn add_tenancy(
    pool: &PgPool,
    ns: &str,
    property: &str,
    account: &str,
    starts_on: NaiveDate,
    ends_on: Option<NaiveDate>,
) -> Result<Result<TenancyRow, TenancyRefused>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_property(&mut tx, ns, property).await?;
    let known: Option<String> =
        sqlx::query_scalar("SELECT id FROM fleetward_billing.accounts WHERE namespace = $1 AND id = $2")
            .bind(ns)
            .bind(account)
            .fetch_optional(&mut *tx)
            .await?;
    if known.is_none() {
        return Ok(Err(TenancyRefused::UnknownAccount));
    }
    if let Some(other) = overlapping(&mut tx, ns, property, starts_on, ends_on, None).await? {
        return Ok(Err(TenancyRefused::Overlaps(other)));
    }
    let row: TenancyRow = sqlx::query_as(
        "INSERT INTO fleetward_billing.tenancies (namespace, property, account_id, starts_on, ends_on) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id, property, account_id, starts_on, ends_on",
    )
    .bind(ns)
    .bind(property)
    .bind(account)
    .bind(starts_on)
    .bind(ends_on)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(row))
}

/// Ends a tenancy on `ends_on` (the tenant leaves, or is delisted).
pub async fn end_tenancy(
    pool: &PgPool,
    ns: &str,
    id: i64,
    ends_on: NaiveDate,
) -> Result<Result<TenancyRow, TenancyRefused>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<TenancyRow> = sqlx::query_as(
        "SELECT id, property, account_id, starts_on, ends_on FROM fleetward_billing.tenancies \
         WHERE namespace = $1 AND id = $2",
    )
    .bind(ns)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(t) = found else {
        return Ok(Err(TenancyRefused::NotFound));
    };
    lock_property(&mut tx, ns, &t.property).await?;
    if let Some(other) = overlapping(&mut tx, ns, &t.property, t.starts_on, Some(ends_on), Some(id)).await? {
        return Ok(Err(TenancyRefused::Overlaps(other)));
    }
    let row: TenancyRow = sqlx::query_as(
        "UPDATE fleetward_billing.tenancies SET ends_on = $3 WHERE namespace = $1 AND id = $2 \
         RETURNING id, property, account_id, starts_on, ends_on",
    )
    .bind(ns)
    .bind(id)
    .bind(ends_on)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(row))
}

async fn lock_property(tx: &mut Transaction<'_, Postgres>, ns: &str, property: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))")
        .bind(format!("fleetward-billing/{ns}/{property}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn overlapping(
    tx: &mut Transaction<'_, Postgres>,
    ns: &str,
    property: &str,
    from: NaiveDate,
    to: Option<NaiveDate>,
    except: Option<i64>,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM fleetward_billing.tenancies WHERE namespace = $1 AND property = $2 \
         AND ($5::bigint IS NULL OR id <> $5) \
         AND ($4::date IS NULL OR starts_on < $4) AND (ends_on IS NULL OR ends_on > $3) LIMIT 1",
    )
    .bind(ns)
    .bind(property)
    .bind(from)
    .bind(to)
    .bind(except)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn tenancy_list(pool: &PgPool, ns: &str, property: Option<&str>) -> Result<Vec<TenancyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, property, account_id, starts_on, ends_on FROM fleetward_billing.tenancies \
         WHERE namespace = $1 AND ($2::text IS NULL OR property = $2) ORDER BY property, starts_on",
    )
    .bind(ns)
    .bind(property)
    .fetch_all(pool)
    .await
}
