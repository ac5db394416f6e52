//! kill -9 of the encryptor in the middle of 100,000 records, then a
//! restart: every record is in PostgreSQL exactly once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleetward_keyring::Keyring;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

const N: i64 = 100_000;

/// Sum of the offsets the group has committed on `topic`.
fn committed(group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("group.id", group)
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_stores_every_record_exactly_once() {
    let topic = unique("stations-crash");
    let table = unique("st_crash");
    let dir = tempfile::tempdir().unwrap();
    let keyring_file = dir.path().join("keyring.json");
    write_keyring(&keyring_file, &Keyring::generate());

    let t = Instant::now();
    produce(
        &topic,
        (0..N).map(|i| {
            let v = json!({"number": i, "contract_name": "crashtown", "name": "S", "address": format!("A{i}"),
                "bike_stands": 1, "available_bike_stands": 0, "available_bikes": 1, "status": "OPEN",
                "last_update": 1_770_000_000_000_i64});
            (i.to_string(), v.to_string().into_bytes())
        }),
    )
    .await;
    eprintln!("produced {N} records in {:?}", t.elapsed());

    let pool = pg().await;
    let mut cfg = EncryptorConfig::new(&topic, &table, &keyring_file);
    cfg.sensitive = "address".into();
    let mut first = start_encryptor(&cfg, "crash-first");
    wait_until("a third of the records stored", 120, || async {
        count(&pool, &table).await >= N / 3
    })
    .await;
    first.kill9();
    // Let PostgreSQL finish a COMMIT it had already received.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_kill = count(&pool, &table).await;
    let committed_at_kill = committed(&cfg.group, &topic);
    eprintln!("killed with {at_kill} rows stored and {committed_at_kill} offsets committed");
    assert!(at_kill < N, "the kill must land mid-stream ({at_kill} rows already)");
    // The guarantee's core: offsets never run ahead of durable rows.
    assert!(
        committed_at_kill <= at_kill,
        "{committed_at_kill} offsets committed but only {at_kill} rows stored: records would be lost"
    );

    let second = start_encryptor(&cfg, "crash-second");
    wait_until("every record stored", 120, || async { count(&pool, &table).await >= N }).await;
    wait_until("every offset committed", 60, || async {
        committed(&cfg.group, &topic) == N
    })
    .await;

    let (rows, distinct, lo, hi): (i64, i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), count(DISTINCT number), min(number::bigint), max(number::bigint) FROM \"{table}\""
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((rows, distinct, lo, hi), (N, N, 0, N - 1), "each record exactly once");
    // The restarted encryptor re-read what was stored but not committed,
    // and its natural key turned those into no-ops, not duplicates.
    let replayed = second.metric("fleetward_encryptor_records_total{result=\"duplicate\"}") as i64;
    let inserted = second.metric("fleetward_encryptor_db_inserts_total") as i64;
    eprintln!("after restart: {inserted} inserted, {replayed} replayed records dropped as duplicates");
    assert_eq!(inserted, N - at_kill);
    assert_eq!(replayed, at_kill - committed_at_kill);
    drop(second);
    drop_table(&pool, &table).await;
}
