//! Retention by time partitions, through the encryptor binary against the
//! real Kafka and PostgreSQL: a station table an older release made (a
//! plain table) is converted to weekly partitions with nothing lost, its
//! rows go when all are older than the feed's retention (a partition
//! dropped, not a DELETE), new records still land, each in its week, and a
//! record already expired when it arrives is not stored.

mod common;

use chrono::{Duration, Utc};
use common::*;
use fleetward_keyring::Keyring;
use serde_json::json;

fn station(number: i64, age: Duration) -> (String, Vec<u8>) {
    let v = json!({"number": number, "contract_name": "keeptown", "name": "S", "address": format!("A{number}"),
        "bike_stands": 1, "available_bike_stands": 0, "available_bikes": 1, "status": "OPEN",
        "last_update": (Utc::now() - age).timestamp_millis()});
    (number.to_string(), v.to_string().into_bytes())
}

async fn numbers(pool: &sqlx::PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT number FROM {table} ORDER BY number"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn relkind(pool: &sqlx::PgPool, table: &str) -> String {
    sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_weeks_go_unexpired_rows_stay_and_new_records_land_in_their_week() {
    let pool = pg().await;
    let topic = unique("stations-retention");
    let expired_table = unique("st_ret_old");
    let kept_table = unique("st_ret_kept");
    // Two tables as an older release made them (the columns of migration
    // 20260101's function, no partitions), with rows 60 and 45 days old;
    // the second also holds one 3 days old.
    for (table, ages) in [(&expired_table, vec![60, 45]), (&kept_table, vec![60, 45, 3])] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (contract_index text NOT NULL, number text NOT NULL, \
             last_update timestamptz NOT NULL, key_id text NOT NULL, encrypted_fields text[] NOT NULL DEFAULT '{{}}', \
             contract_name text NOT NULL, name text NOT NULL, address text NOT NULL, position text, \
             banking boolean NOT NULL, bonus boolean NOT NULL, bike_stands integer NOT NULL, \
             available_bike_stands integer NOT NULL, available_bikes integer NOT NULL, status text NOT NULL, \
             ingested_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (contract_index, number, last_update)); \
             CREATE INDEX {table}_by_time ON {table} (contract_index, last_update)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        for (i, days) in ages.iter().enumerate() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} VALUES ('ci', $1, now() - make_interval(days => $2), 'k', '{{}}', 'c', 'n', 'a', \
                 NULL, false, false, 1, 1, 0, 'OPEN')"
            )))
            .bind(format!("old-{i}"))
            .bind(*days)
            .execute(&pool)
            .await
            .unwrap();
        }
    }

    // New records: now, a day ago, and one 40 days old (expired at 30).
    produce(
        &topic,
        [
            station(1, Duration::zero()),
            station(2, Duration::days(1)),
            station(3, Duration::days(40)),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keyring_file = dir.path().join("keyring.json");
    write_keyring(&keyring_file, &Keyring::generate());

    // The table whose old rows all expired: converted, its old partition
    // dropped at start, the two live records stored in their weeks.
    let mut cfg = EncryptorConfig::new(&topic, &expired_table, &keyring_file);
    cfg.retention_days = 30;
    let mut encryptor = start_encryptor(&cfg, "retention-expired");
    // The 60- and 45-day-old rows went, the 40-day-old record was not stored.
    wait_until("only the two live records", 60, || async {
        numbers(&pool, &expired_table).await == ["1", "2"]
    })
    .await;
    assert_eq!(relkind(&pool, &expired_table).await, "p", "partitioned");
    wait_until("the expired record counted", 30, || async {
        encryptor.metric("fleetward_encryptor_records_total{result=\"expired\"}") == 1.0
    })
    .await;
    let before: Option<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = to_regclass($1) AND c.relname::text LIKE '%\\_before\\_%'",
    )
    .bind(&expired_table)
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(before, None, "the old rows' partition was dropped");
    encryptor.kill9();

    // The table that still holds a 3-day-old row: its old partition is
    // kept whole (all three rows), and the live records join them.
    let mut cfg = EncryptorConfig::new(&topic, &kept_table, &keyring_file);
    cfg.retention_days = 30;
    let mut encryptor = start_encryptor(&cfg, "retention-kept");
    wait_until("the old rows and the two live records", 60, || async {
        numbers(&pool, &kept_table).await == ["1", "2", "old-0", "old-1", "old-2"]
    })
    .await;
    assert_eq!(relkind(&pool, &kept_table).await, "p");
    encryptor.kill9();

    drop_table(&pool, &expired_table).await;
    drop_table(&pool, &kept_table).await;
}
