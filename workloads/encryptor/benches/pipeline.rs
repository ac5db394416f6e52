//! Kafka → PostgreSQL throughput, four ways, on the same records in one
//! run (real Kafka and PostgreSQL from `./deploy.sh dev-up`):
//!
//! 1. the encryptor pipeline: batches, Fernet-encrypted fields, one
//!    binary COPY (an idempotent multi-row INSERT when a row is already
//!    stored) and one commit per batch, offsets after; as the chart's
//!    workloads connect: mutual TLS to Kafka (the dev broker's TLS
//!    listener, the encryptor's identity and ACLs) and TLS to PostgreSQL
//!    (`sslmode=require`);
//! 2. the same pipeline with Kafka in plaintext, and with neither TLS
//!    (`sslmode=disable` too): what each TLS costs;
//! 3. (a) seed 000's design: one INSERT and one commit per record (same
//!    encryption, same table);
//! 4. (b) a plain binary COPY of the same rows, no encryption, one COPY for
//!    all of them: the ceiling of what PostgreSQL takes in.
//!
//! Each variant reads the topic from the beginning with its own consumer
//! group and is timed from its start (connect, group join) until every
//! row is committed in PostgreSQL.
//!
//!     cargo bench -p fleetward-encryptor --bench pipeline
//!     BENCH_RECORDS=200000 cargo bench -p fleetward-encryptor --bench pipeline

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_encryptor::db::{self, TableName};
use fleetward_encryptor::keys::SharedKeyring;
use fleetward_encryptor::metrics::Metrics;
use fleetward_encryptor::pipeline::{self, Settings};
use fleetward_encryptor::record::{CheckedStation, Sensitive};
use fleetward_keyring::Keyring;
use fleetward_protocol::kafka::{SECURITY_PROTOCOL_ENV, Security, TLS_DIR_ENV};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{AssertSqlSafe, PgPool};

fn env(key: &str) -> String {
    if let Ok(v) = std::env::var(key) {
        return v;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.dev/env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} not found: run `./deploy.sh dev-up`", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("{key} not set and not in .dev/env"))
}

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The Dublin stations, round after round (each round one minute later),
/// so every record has its own natural key, like a feed polled for hours.
async fn produce(topic: &str, n: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/stations/jcdecaux-v1-dublin.json");
    let stations: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut sends = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = stations[i % stations.len()].clone();
        let round = (i / stations.len()) as i64;
        s["last_update"] = (s["last_update"].as_i64().unwrap() + round * 60_000).into();
        let key = s["number"].to_string();
        let payload = s.to_string();
        let p = p.clone();
        let topic = topic.to_string();
        sends.push(async move {
            p.send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        });
    }
    futures::future::join_all(sends).await;
}

fn consumer(topic: &str, group: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

async fn count(pool: &PgPool, table: &TableName) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A new station table with the weeks of the bench's records made ahead
/// (as the pipeline's hourly pass makes the next week), so the baselines,
/// which write directly, find them too.
async fn fresh_table(pool: &PgPool, name: &str) -> TableName {
    let t: TableName = name.parse().unwrap();
    db::prepare(pool, db::RecordKind::Stations, &t).await.unwrap();
    // The Dublin data's last_update is early February 2026, and a round
    // of records a minute later: a million records span under a week.
    let from = 1_769_904_000; // 2026-02-01
    let days: Vec<i64> = (0..21).map(|d| from + d * 86_400).collect();
    db::partitioned(&t).ensure(pool, &days).await.unwrap();
    t
}

/// The dev PostgreSQL's URL with `sslmode` set (the dev server speaks
/// TLS, as the chart's does; `disable` measures without it).
fn database_url(sslmode: &str) -> String {
    let url = env("DATABASE_URL");
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode={sslmode}")
}

/// The dev broker as the pipeline reaches it: its plaintext listener, or
/// its TLS one with the encryptor's identity (as in the chart).
fn kafka(tls: bool) -> (String, Security) {
    if !tls {
        return (env("KAFKA_BROKERS"), Security::from_lookup(|_| None).unwrap());
    }
    let dir = Path::new(&env("FLEETWARD_KAFKA_TLS_IDENTITIES")).join("encryptor");
    let security = Security::from_lookup(|k| match k {
        SECURITY_PROTOCOL_ENV => Some("ssl".into()),
        TLS_DIR_ENV => Some(dir.display().to_string()),
        _ => None,
    })
    .unwrap();
    (env("FLEETWARD_KAFKA_TLS_BROKERS"), security)
}

async fn bench_pipeline(
    topic: &str,
    n: usize,
    pool: &PgPool,
    ring: &Keyring,
    kafka_tls: bool,
    sslmode: &str,
) -> (Duration, TableName) {
    let table = fresh_table(pool, &format!("bench_pipeline_{}", suffix())).await;
    let metrics = Arc::new(Metrics::default());
    let (brokers, security) = kafka(kafka_tls);
    let settings = Settings {
        brokers,
        kafka: security,
        topic: topic.into(),
        group_id: format!("bench-pipeline-{}", suffix()),
        session_timeout_ms: 10_000,
        dead_letter_topic: format!("{topic}.dlq"),
        kind: db::RecordKind::Stations,
        table: table.clone(),
        sensitive: "address,contract_name".parse().unwrap(),
        batch_size: std::env::var("BENCH_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000),
        batch_timeout: Duration::from_millis(200),
        record_key: None,
        retention: Duration::from_secs(365 * 86_400),
    };
    let start = Instant::now();
    let p = pipeline::start(
        settings,
        &database_url(sslmode),
        SharedKeyring::new(ring.clone()),
        metrics.clone(),
    )
    .await
    .unwrap();
    let run = tokio::spawn(async move { p.run().await });
    while metrics.db_inserts.get() < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed();
    run.abort();
    (took, table)
}

/// Seed 000's consumer: per record, encrypt and insert, autocommit (each
/// statement its own transaction).
async fn bench_row_at_a_time(topic: &str, n: usize, pool: &PgPool, ring: &Keyring) -> (Duration, TableName) {
    let table = fresh_table(pool, &format!("bench_rows_{}", suffix())).await;
    let sensitive: Sensitive = "address,contract_name".parse().unwrap();
    let fields = sensitive.names();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT DO NOTHING",
        db::STATION_COLUMNS
    );
    let start = Instant::now();
    let c = consumer(topic, &format!("bench-rows-{}", suffix()));
    let db = db::connect(&database_url("require"), 1).await.unwrap();
    for _ in 0..n {
        let m = c.recv().await.unwrap();
        let r = CheckedStation::parse(m.payload()).unwrap().seal(ring, &sensitive);
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(r.contract_index)
            .bind(r.number)
            .bind(r.last_update)
            .bind(ring.primary_id())
            .bind(&fields)
            .bind(r.contract_name)
            .bind(r.name)
            .bind(r.address)
            .bind(r.position)
            .bind(r.banking)
            .bind(r.bonus)
            .bind(r.bike_stands)
            .bind(r.available_bike_stands)
            .bind(r.available_bikes)
            .bind(r.status)
            .execute(&db)
            .await
            .unwrap();
    }
    (start.elapsed(), table)
}

async fn bench_copy(topic: &str, n: usize, pool: &PgPool) -> (Duration, TableName) {
    let table = fresh_table(pool, &format!("bench_copy_{}", suffix())).await;
    // No encryption: the sealing step with an empty field set only
    // computes the row; the contract key is the plain name.
    let none: Sensitive = "".parse().unwrap();
    let ring = Keyring::generate();
    let start = Instant::now();
    let c = consumer(topic, &format!("bench-copy-{}", suffix()));
    let db = db::connect(&database_url("require"), 1).await.unwrap();
    let mut buf = db::CopyBuf::new();
    for _ in 0..n {
        let m = c.recv().await.unwrap();
        let mut r = CheckedStation::parse(m.payload()).unwrap().seal(&ring, &none);
        r.contract_index = r.contract_name.clone();
        buf.station("", &[], &r);
    }
    let mut conn = db.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            db::STATION_COLUMNS
        ))
        .await
        .unwrap();
    copy.send(buf.finish()).await.unwrap();
    copy.finish().await.unwrap();
    (start.elapsed(), table)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let topic = format!("bench-stations-{}", suffix());
    let pool = db::connect(&env("DATABASE_URL"), 2).await.unwrap();
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&pool).await.unwrap();
    let commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    let t = Instant::now();
    produce(&topic, n).await;
    println!("produced {n} Dublin station records to {topic} in {:.1?}", t.elapsed());
    println!(
        "PostgreSQL fsync={fsync} synchronous_commit={commit}; {} CPU(s)",
        num_cpus()
    );

    let ring = Keyring::generate();
    let mut results: HashMap<&str, f64> = HashMap::new();
    let mut tables = Vec::new();
    let only_pipeline = std::env::var("BENCH_ONLY_PIPELINE").is_ok();
    let mut runs = vec![
        (
            "pipeline",
            bench_pipeline(&topic, n, &pool, &ring, true, "require").await,
        ),
        (
            "pipeline, Kafka plaintext",
            bench_pipeline(&topic, n, &pool, &ring, false, "require").await,
        ),
        (
            "pipeline, no TLS",
            bench_pipeline(&topic, n, &pool, &ring, false, "disable").await,
        ),
    ];
    if !only_pipeline {
        runs.push(("row-at-a-time", bench_row_at_a_time(&topic, n, &pool, &ring).await));
        runs.push(("binary COPY", bench_copy(&topic, n, &pool).await));
    }
    for (name, (took, table)) in runs {
        let stored = count(&pool, &table).await;
        assert_eq!(stored, n as i64, "{name}: every record stored once");
        let rate = n as f64 / took.as_secs_f64();
        results.insert(name, rate);
        tables.push(table);
        println!(
            "{name:>25}: {n} records in {:>7.2} s = {rate:>9.0} records/s",
            took.as_secs_f64()
        );
    }
    println!(
        "mutual TLS to Kafka: pipeline with / without: {:.2}x",
        results["pipeline"] / results["pipeline, Kafka plaintext"]
    );
    println!(
        "TLS to PostgreSQL: pipeline (Kafka plaintext) with / without: {:.2}x",
        results["pipeline, Kafka plaintext"] / results["pipeline, no TLS"]
    );
    println!(
        "both: pipeline with / without: {:.2}x",
        results["pipeline"] / results["pipeline, no TLS"]
    );
    if !only_pipeline {
        println!(
            "ratio pipeline / row-at-a-time (a): {:.1}x",
            results["pipeline"] / results["row-at-a-time"]
        );
        println!(
            "ratio pipeline / binary COPY   (b): {:.2}x",
            results["pipeline"] / results["binary COPY"]
        );
    }
    for t in tables {
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {t}")))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM fleetward_station_tables WHERE name = $1")
            .bind(t.as_str())
            .execute(&pool)
            .await
            .unwrap();
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
