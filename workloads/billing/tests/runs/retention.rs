//! Readings retention by time partitions: a namespace's readings are kept
//! for the longest retention of its Tariffs, expired weeks go by dropping
//! partitions, new readings still land; and the readings an older release
//! stored survive the move to partitions.

use chrono::{Duration, Utc};
use fleetward_billing::db::{self, Reading};
use fleetward_partitions::{DAY, WEEK};
use fleetward_testkit::{env, unique};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{d, pool};

fn reading_aged(ns: &str, device: &str, days: i64) -> Reading {
    let t = Utc::now() - Duration::days(days);
    Reading {
        namespace: ns.into(),
        device_id: device.into(),
        message_id: format!("{device}-{days}"),
        device_time: t,
        received_at: t,
        kwh: d("1.5"),
        reply_to: None,
    }
}

async fn ages(pool: &sqlx::PgPool, ns: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT message_id FROM fleetward_billing.readings WHERE namespace = $1 ORDER BY received_at")
        .bind(ns)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_namespace_keeps_readings_for_its_longest_tariff_retention_and_drops_whole_weeks() {
    let pool = pool().await;
    let ns = unique("ret");
    let rows: Vec<Reading> = [90, 60, 2].iter().map(|&days| reading_aged(&ns, "m", days)).collect();
    assert_eq!(
        db::insert_readings(&pool, &rows).await.unwrap(),
        3,
        "weeks made on demand"
    );
    assert_eq!(
        db::insert_readings(&pool, &rows).await.unwrap(),
        0,
        "a re-delivery is harmless"
    );

    // Two Tariffs bill this namespace: 30 and 75 days. The namespace
    // keeps 75: the 90-day-old week goes, the 60-day-old one stays.
    assert_eq!(db::readings_retention(&pool, &ns, "short", 30).await.unwrap(), 30);
    assert_eq!(db::readings_retention(&pool, &ns, "long", 75).await.unwrap(), 75);
    let table = db::readings_partitioned(&pool, &ns).await.unwrap();
    let now = Utc::now().timestamp();
    let done = table.maintain(&pool, now, 75 * DAY, WEEK).await.unwrap();
    assert_eq!(done.dropped.len(), 1, "{done:?}");
    assert_eq!(ages(&pool, &ns).await, ["m-60", "m-2"]);

    // The long Tariff shortens to 30 days: now the 60-day-old week goes.
    assert_eq!(db::readings_retention(&pool, &ns, "long", 30).await.unwrap(), 30);
    table.maintain(&pool, now, 30 * DAY, WEEK).await.unwrap();
    assert_eq!(ages(&pool, &ns).await, ["m-2"]);

    // Another namespace's readings are untouched by this one's retention.
    let other = unique("ret_other");
    db::insert_readings(&pool, &[reading_aged(&other, "m", 60)])
        .await
        .unwrap();
    // (30 days would drop a 60-day-old week of this namespace's; one day
    // could drop the 2-day-old row's week too, early in a week.)
    table.maintain(&pool, now, 30 * DAY, WEEK).await.unwrap();
    assert_eq!(ages(&pool, &other).await, ["m-60"]);
    assert_eq!(ages(&pool, &ns).await, ["m-2"]);

    // New readings land after the drops.
    db::insert_readings(&pool, &[reading_aged(&ns, "m", 0)]).await.unwrap();
    assert_eq!(ages(&pool, &ns).await.len(), 2);
}

#[tokio::test]
async fn readings_an_older_release_stored_survive_partitioning() {
    let admin_opts: PgConnectOptions = env("DATABASE_URL").parse().unwrap();
    let mut admin = admin_opts.connect().await.unwrap();
    let name = unique("fw_billing_up");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = admin_opts.database(&name).to_url_lossy().to_string();
    let pool = db::connect(&url, 2).await.unwrap();
    sqlx::query("CREATE SCHEMA fleetward_billing")
        .execute(&pool)
        .await
        .unwrap();
    // The migrations of the release before partitioning.
    let mut old = db::migrator();
    let before: Vec<_> = old
        .migrations
        .iter()
        .filter(|m| m.version < 20261207000000)
        .cloned()
        .collect();
    old.migrations = before.into();
    old.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO fleetward_billing.readings (namespace, device_id, message_id, device_time, received_at, kwh) VALUES \
         ('a', 'm1', 'x', now() - interval '400 days', now() - interval '400 days', 1), \
         ('a', 'm1', 'y', now() - interval '3 days', now() - interval '3 days', 2), \
         ('b', 'm2', 'z', now() - interval '400 days', now() - interval '400 days', 3)",
    )
    .execute(&pool)
    .await
    .unwrap();

    db::migrate(&pool).await.unwrap();
    let all: Vec<(String, String)> =
        sqlx::query_as("SELECT namespace, message_id FROM fleetward_billing.readings ORDER BY message_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        all,
        [
            ("a".into(), "x".into()),
            ("a".into(), "y".into()),
            ("b".into(), "z".into())
        ]
    );

    // A year's retention: namespace b's old readings all expired, so its
    // old partition goes; a's holds a 3-day-old reading, so it stays whole.
    let now = Utc::now().timestamp();
    for ns in ["a", "b"] {
        let t = db::readings_partitioned(&pool, ns).await.unwrap();
        t.maintain(&pool, now, 365 * DAY, WEEK).await.unwrap();
    }
    let left: Vec<String> = sqlx::query_scalar("SELECT message_id FROM fleetward_billing.readings ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["x", "y"]);
    pool.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
}
