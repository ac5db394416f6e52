//! PostgreSQL: migrations, readings in and out, and the one query that
//! turns a month of readings into each meter's consumption.
//!
//! How a month's readings are bounded (so consecutive months neither
//! overlap nor leave a gap):
//! - its **start point** is the previous month's fixed end reading (a
//!   meter's answer to the run's read, `period_end_readings`) when there is
//!   one, else the last reading at or before the month's start;
//! - its **end point** is this month's fixed answer when there is one
//!   (taken at the run, just after the month), else the last reading at or
//!   before the month's end: the bill is then *estimated*;
//! - consumption is the sum of the increases between successive points
//!   from start to end (`bill::consumption`, done here in SQL).

use chrono::{DateTime, Utc};
use fleetward_partitions::{DAY, Key, Partitioned, WEEK};
use rust_decimal::Decimal;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::bill::Period;

/// Billing's migrations, tracked in a table of their own in billing's own
/// schema (the database is shared with the other fleetward workloads and
/// their migrators; billing's role may create nothing in `public`).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

const MIGRATIONS_TABLE: &str = "fleetward_billing._fleetward_billing_migrations";

/// Runs billing's migrations. Their record lives in `fleetward_billing`,
/// made first if need be; a record an older release kept in `public` is
/// moved there (billing's role owns both), so nothing runs twice.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    // One billing replica at a time (several start together): the lock
    // lasts until this statement's transaction ends.
    sqlx::query(
        "DO $$ BEGIN \
           PERFORM pg_advisory_xact_lock(hashtext('fleetward_billing.migrate')); \
           CREATE SCHEMA IF NOT EXISTS fleetward_billing; \
           IF to_regclass('public._fleetward_billing_migrations') IS NOT NULL \
              AND to_regclass('fleetward_billing._fleetward_billing_migrations') IS NULL THEN \
             ALTER TABLE public._fleetward_billing_migrations SET SCHEMA fleetward_billing; \
           END IF; \
         END $$",
    )
    .execute(pool)
    .await?;
    migrator().run(pool).await
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
}

/// One meter reading as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub namespace: String,
    pub device_id: String,
    pub message_id: String,
    pub device_time: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub kwh: Decimal,
    pub reply_to: Option<String>,
}

/// One namespace's readings (made if missing), cut into weeks of
/// `received_at` (see the migration `partitioned_readings`).
pub async fn readings_partitioned(pool: &PgPool, ns: &str) -> Result<Partitioned, sqlx::Error> {
    let name: String = sqlx::query_scalar("SELECT fleetward_billing.readings_partition($1)")
        .bind(ns)
        .fetch_one(pool)
        .await?;
    Ok(Partitioned::new(
        Some("fleetward_billing"),
        &name,
        Key::Timestamptz,
        WEEK,
    ))
}

/// Stores readings; ones already stored (same namespace, device and
/// message id) are left as they are. Returns how many were new. The first
/// reading of a week (or of a namespace) makes its partition.
pub async fn insert_readings(pool: &PgPool, rows: &[Reading]) -> Result<u64, sqlx::Error> {
    fleetward_partitions::write_making_partitions(
        move || insert_rows(pool, rows),
        move || async move {
            let mut by_ns: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
            for r in rows {
                by_ns.entry(&r.namespace).or_default().push(r.received_at.timestamp());
            }
            for (ns, times) in by_ns {
                readings_partitioned(pool, ns).await?.ensure(pool, &times).await?;
            }
            Ok(())
        },
    )
    .await
}

async fn insert_rows(pool: &PgPool, rows: &[Reading]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&Reading) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let done = sqlx::query(
        "INSERT INTO fleetward_billing.readings \
         (namespace, device_id, message_id, device_time, received_at, kwh, reply_to) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], \
                              $6::numeric[], $7::text[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(col(|r| r.namespace.clone()))
    .bind(col(|r| r.device_id.clone()))
    .bind(col(|r| r.message_id.clone()))
    .bind(rows.iter().map(|r| r.device_time).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.received_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kwh).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reply_to.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// This Tariff's retention of readings, recorded for the namespace's
/// other Tariffs to see; returns the namespace's: the longest any of its
/// Tariffs asks for.
pub async fn readings_retention(pool: &PgPool, ns: &str, tariff: &str, days: u32) -> Result<u32, sqlx::Error> {
    sqlx::query(
        "INSERT INTO fleetward_billing.retention (namespace, tariff, readings_days) VALUES ($1, $2, $3) \
         ON CONFLICT (namespace, tariff) DO UPDATE SET readings_days = EXCLUDED.readings_days, updated_at = now()",
    )
    .bind(ns)
    .bind(tariff)
    .bind(days as i32)
    .execute(pool)
    .await?;
    let longest: i32 =
        sqlx::query_scalar("SELECT max(readings_days) FROM fleetward_billing.retention WHERE namespace = $1")
            .bind(ns)
            .fetch_one(pool)
            .await?;
    Ok(longest as u32)
}

/// Keeps the namespace's readings for as long as the task runs: hourly,
/// records this Tariff's retention, makes next week's partition and drops
/// the weeks older than the namespace's retention (`readings_retention`).
/// Migrates before its first pass (idempotent, under the migrations' lock),
/// so it may start before the scheduler does.
pub async fn keep_readings(pool: PgPool, ns: String, tariff: String, days: u32) {
    let mut migrated = false;
    loop {
        let pass = async {
            if !migrated {
                migrate(&pool).await.map_err(sqlx::Error::from)?;
                migrated = true;
            }
            let keep = readings_retention(&pool, &ns, &tariff, days).await?;
            let table = readings_partitioned(&pool, &ns).await?;
            let now = Utc::now().timestamp();
            let done = table.maintain(&pool, now, i64::from(keep) * DAY, WEEK).await?;
            if !done.dropped.is_empty() {
                tracing::info!(dropped = ?done.dropped, retention_days = keep, "expired weeks of readings dropped");
            }
            Ok::<_, sqlx::Error>(())
        };
        let wait = match pass.await {
            Ok(()) => fleetward_partitions::EVERY,
            Err(e) => {
                tracing::warn!(error = %e, "readings retention pass failed; retrying in a minute");
                std::time::Duration::from_secs(60)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// An answer to a read_meter command.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Answer {
    pub device_id: String,
    pub reply_to: String,
    pub message_id: String,
    pub device_time: DateTime<Utc>,
    pub kwh: Decimal,
}

/// The stored answers to the commands `ids`.
pub async fn answers(pool: &PgPool, ns: &str, ids: &[String]) -> Result<Vec<Answer>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, reply_to, message_id, device_time, kwh FROM fleetward_billing.readings \
         WHERE namespace = $1 AND reply_to = ANY($2)",
    )
    .bind(ns)
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Fixes answered readings as their meters' end of `period` (a reading
/// fixed earlier stays).
pub async fn fix_period_end(
    pool: &PgPool,
    ns: &str,
    period: Period,
    run: uuid::Uuid,
    answers: &[Answer],
) -> Result<(), sqlx::Error> {
    if answers.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO fleetward_billing.period_end_readings \
         (namespace, device_id, period, kwh, device_time, message_id, run_id) \
         SELECT $1, d, $2, k, t, m, $3 FROM UNNEST($4::text[], $5::numeric[], $6::timestamptz[], $7::text[]) \
           AS a(d, k, t, m) \
         ON CONFLICT DO NOTHING",
    )
    .bind(ns)
    .bind(period.to_string())
    .bind(run)
    .bind(answers.iter().map(|a| a.device_id.clone()).collect::<Vec<_>>())
    .bind(answers.iter().map(|a| a.kwh).collect::<Vec<_>>())
    .bind(answers.iter().map(|a| a.device_time).collect::<Vec<_>>())
    .bind(answers.iter().map(|a| a.message_id.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// Meters whose end of `period` is already fixed.
pub async fn fixed_meters(pool: &PgPool, ns: &str, period: Period) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device_id FROM fleetward_billing.period_end_readings WHERE namespace = $1 AND period = $2",
    )
    .bind(ns)
    .bind(period.to_string())
    .fetch_all(pool)
    .await
}

/// The points of a month (see the module doc), as a SQL fragment over
/// `$1` namespace, `$2` meters, `$3` previous period, `$4` period,
/// `$5` start, `$6` end.
const POINTS: &str = "
WITH sel AS (SELECT DISTINCT unnest($2::text[]) AS device_id),
prev_end AS (
    SELECT device_id, device_time AS t, kwh FROM fleetward_billing.period_end_readings
    WHERE namespace = $1 AND period = $3 AND device_id = ANY($2)),
base_reading AS (
    SELECT DISTINCT ON (r.device_id) r.device_id, r.device_time AS t, r.kwh
    FROM fleetward_billing.readings r
    WHERE r.namespace = $1 AND r.device_id = ANY($2) AND r.device_time <= $5
    ORDER BY r.device_id, r.device_time DESC),
fin AS (
    SELECT device_id, device_time AS t, kwh FROM fleetward_billing.period_end_readings
    WHERE namespace = $1 AND period = $4 AND device_id = ANY($2)),
bounds AS (
    SELECT s.device_id, coalesce(p.t, b.t) AS start_t, coalesce(p.kwh, b.kwh) AS start_kwh,
           coalesce(f.t, $6) AS end_t, f.t IS NOT NULL AS answered
    FROM sel s LEFT JOIN prev_end p USING (device_id) LEFT JOIN base_reading b USING (device_id)
    LEFT JOIN fin f USING (device_id)),
pts AS (
    SELECT device_id, start_t AS t, start_kwh AS kwh FROM bounds WHERE start_t IS NOT NULL
    UNION ALL
    SELECT r.device_id, r.device_time, r.kwh
    FROM fleetward_billing.readings r JOIN bounds b USING (device_id)
    WHERE r.namespace = $1 AND r.device_id = ANY($2)
      AND r.device_time > coalesce(b.start_t, '-infinity'::timestamptz) AND r.device_time <= b.end_t)
";

/// A meter's month.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Usage {
    pub device_id: String,
    pub units: Decimal,
    pub resets: i64,
    pub start_kwh: Option<Decimal>,
    pub end_kwh: Option<Decimal>,
    pub points: i64,
    pub answered: bool,
}

fn period_args<'q>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, Usage, sqlx::postgres::PgArguments>,
    ns: &'q str,
    meters: &'q [String],
    period: Period,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Usage, sqlx::postgres::PgArguments> {
    let prev = Period::previous(period.start());
    q.bind(ns)
        .bind(meters)
        .bind(prev.to_string())
        .bind(period.to_string())
        .bind(period.start())
        .bind(period.end())
}

/// Every meter's consumption over `period`, in one query (meters without
/// any reading are absent).
pub async fn usage(pool: &PgPool, ns: &str, meters: &[String], period: Period) -> Result<Vec<Usage>, sqlx::Error> {
    let sql = format!(
        "{POINTS},
d AS (SELECT device_id, t, kwh, kwh - lag(kwh) OVER (PARTITION BY device_id ORDER BY t, kwh) AS delta FROM pts)
SELECT d.device_id,
       coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS units,
       count(*) FILTER (WHERE delta < 0) AS resets,
       (array_agg(kwh ORDER BY t, kwh))[1] AS start_kwh,
       (array_agg(kwh ORDER BY t DESC, kwh DESC))[1] AS end_kwh,
       count(*) AS points,
       bool_or(b.answered) AS answered
FROM d JOIN bounds b USING (device_id) GROUP BY d.device_id"
    );
    period_args(sqlx::query_as(sqlx::AssertSqlSafe(sql)), ns, meters, period)
        .fetch_all(pool)
        .await
}

/// A point of a meter's month.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Point {
    pub device_id: String,
    pub t: DateTime<Utc>,
    pub kwh: Decimal,
}

/// The points of `meters` over `period`, in time order per meter: for
/// meters whose month is split between holders, and for the one-query-
/// per-meter baseline of the benchmark.
pub async fn points(pool: &PgPool, ns: &str, meters: &[String], period: Period) -> Result<Vec<Point>, sqlx::Error> {
    let prev = Period::previous(period.start());
    let sql = format!("{POINTS} SELECT device_id, t, kwh FROM pts ORDER BY device_id, t, kwh");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ns)
        .bind(meters)
        .bind(prev.to_string())
        .bind(period.to_string())
        .bind(period.start())
        .bind(period.end())
        .fetch_all(pool)
        .await
}
