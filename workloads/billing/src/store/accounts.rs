//! Accounts and tenancies in PostgreSQL: who holds a property when. Both
//! belong to one Tariff (its billing key sees and changes only its own). A
//! tenancy that would overlap another of the same property is refused
//! (changes to a property's tenancies are serialised by an advisory lock).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::bill::{Period, Tenancy};

/// Tariff `tariff`'s tenancies of `properties` that overlap `period`.
pub async fn tenancies(
    pool: &PgPool,
    ns: &str,
    tariff: &str,
    properties: &[String],
    period: Period,
) -> Result<HashMap<String, Vec<Tenancy>>, sqlx::Error> {
    let rows: Vec<(String, String, NaiveDate, Option<NaiveDate>)> = sqlx::query_as(
        "SELECT property, account_id, starts_on, ends_on FROM fleetward_billing.tenancies \
         WHERE namespace = $1 AND tariff = $5 AND property = ANY($2) AND starts_on < $4 \
           AND (ends_on IS NULL OR ends_on > $3)",
    )
    .bind(ns)
    .bind(properties)
    .bind(period.first_day())
    .bind(period.next_first_day())
    .bind(tariff)
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
    tariff: &str,
    id: &str,
    name: &str,
    email: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO fleetward_billing.accounts (namespace, tariff, id, name, email) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(ns)
    .bind(tariff)
    .bind(id)
    .bind(name)
    .bind(email)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn accounts(pool: &PgPool, ns: &str, tariff: &str) -> Result<Vec<Account>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, email, created_at FROM fleetward_billing.accounts \
         WHERE namespace = $1 AND tariff = $2 ORDER BY id",
    )
    .bind(ns)
    .bind(tariff)
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
    tariff: &str,
    property: &str,
    account: &str,
    starts_on: NaiveDate,
    ends_on: Option<NaiveDate>,
) -> Result<Result<TenancyRow, TenancyRefused>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_property(&mut tx, ns, tariff, property).await?;
    let known: Option<String> = sqlx::query_scalar(
        "SELECT id FROM fleetward_billing.accounts WHERE namespace = $1 AND tariff = $2 AND id = $3",
    )
    .bind(ns)
    .bind(tariff)
    .bind(account)
    .fetch_optional(&mut *tx)
    .await?;
    if known.is_none() {
        return Ok(Err(TenancyRefused::UnknownAccount));
    }
    if let Some(other) = overlapping(&mut tx, ns, tariff, property, starts_on, ends_on, None).await? {
        return Ok(Err(TenancyRefused::Overlaps(other)));
    }
    let row: TenancyRow = sqlx::query_as(
        "INSERT INTO fleetward_billing.tenancies (namespace, tariff, property, account_id, starts_on, ends_on) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, property, account_id, starts_on, ends_on",
    )
    .bind(ns)
    .bind(tariff)
    .bind(property)
    .bind(account)
    .bind(starts_on)
    .bind(ends_on)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(row))
}

/// Ends a tenancy of Tariff `tariff` on `ends_on` (the tenant leaves, or
/// is delisted); another Tariff's tenancy is not found.
pub async fn end_tenancy(
    pool: &PgPool,
    ns: &str,
    tariff: &str,
    id: i64,
    ends_on: NaiveDate,
) -> Result<Result<TenancyRow, TenancyRefused>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<TenancyRow> = sqlx::query_as(
        "SELECT id, property, account_id, starts_on, ends_on FROM fleetward_billing.tenancies \
         WHERE namespace = $1 AND tariff = $3 AND id = $2",
    )
    .bind(ns)
    .bind(id)
    .bind(tariff)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(t) = found else {
        return Ok(Err(TenancyRefused::NotFound));
    };
    lock_property(&mut tx, ns, tariff, &t.property).await?;
    if let Some(other) = overlapping(&mut tx, ns, tariff, &t.property, t.starts_on, Some(ends_on), Some(id)).await? {
        return Ok(Err(TenancyRefused::Overlaps(other)));
    }
    let row: TenancyRow = sqlx::query_as(
        "UPDATE fleetward_billing.tenancies SET ends_on = $3 WHERE namespace = $1 AND tariff = $4 AND id = $2 \
         RETURNING id, property, account_id, starts_on, ends_on",
    )
    .bind(ns)
    .bind(id)
    .bind(ends_on)
    .bind(tariff)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(row))
}

async fn lock_property(
    tx: &mut Transaction<'_, Postgres>,
    ns: &str,
    tariff: &str,
    property: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))")
        .bind(format!("fleetward-billing/{ns}/{tariff}/{property}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn overlapping(
    tx: &mut Transaction<'_, Postgres>,
    ns: &str,
    tariff: &str,
    property: &str,
    from: NaiveDate,
    to: Option<NaiveDate>,
    except: Option<i64>,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM fleetward_billing.tenancies WHERE namespace = $1 AND tariff = $6 AND property = $2 \
         AND ($5::bigint IS NULL OR id <> $5) \
         AND ($4::date IS NULL OR starts_on < $4) AND (ends_on IS NULL OR ends_on > $3) LIMIT 1",
    )
    .bind(ns)
    .bind(property)
    .bind(from)
    .bind(to)
    .bind(except)
    .bind(tariff)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn tenancy_list(
    pool: &PgPool,
    ns: &str,
    tariff: &str,
    property: Option<&str>,
) -> Result<Vec<TenancyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, property, account_id, starts_on, ends_on FROM fleetward_billing.tenancies \
         WHERE namespace = $1 AND tariff = $3 AND ($2::text IS NULL OR property = $2) ORDER BY property, starts_on",
    )
    .bind(ns)
    .bind(property)
    .bind(tariff)
    .fetch_all(pool)
    .await
}

/// Gives Tariff `tariff` its copy of the namespace's accounts and
/// tenancies written before they belonged to a Tariff (see the migration
/// `tariff_scope`), once: later calls do nothing. Returns how many
/// accounts and tenancies were adopted.
pub async fn adopt_namespace_records(pool: &PgPool, ns: &str, tariff: &str) -> Result<(u64, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let first =
        sqlx::query("INSERT INTO fleetward_billing.adopted (namespace, tariff) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(ns)
            .bind(tariff)
            .execute(&mut *tx)
            .await?;
    if first.rows_affected() == 0 {
        return Ok((0, 0));
    }
    let accounts = sqlx::query(
        "INSERT INTO fleetward_billing.accounts (namespace, tariff, id, name, email, created_at) \
         SELECT namespace, $2, id, name, email, created_at FROM fleetward_billing.accounts \
         WHERE namespace = $1 AND tariff IS NULL ON CONFLICT DO NOTHING",
    )
    .bind(ns)
    .bind(tariff)
    .execute(&mut *tx)
    .await?;
    let tenancies = sqlx::query(
        "INSERT INTO fleetward_billing.tenancies (namespace, tariff, property, account_id, starts_on, ends_on) \
         SELECT namespace, $2, property, account_id, starts_on, ends_on FROM fleetward_billing.tenancies \
         WHERE namespace = $1 AND tariff IS NULL ORDER BY id",
    )
    .bind(ns)
    .bind(tariff)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((accounts.rows_affected(), tenancies.rows_affected()))
}
