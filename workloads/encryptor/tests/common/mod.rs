//! Harness for the encryptor's tests against the real local Kafka,
//! PostgreSQL and kube-apiserver (`./deploy.sh dev-up`). A missing service
//! fails the test with instructions; nothing is skipped.
#![allow(dead_code)]

#[allow(unused_imports)] // each test binary uses a different part
pub use fleetward_testkit::{Workload, dublin, env, free_port, http_get, kafka_reader, unique, wait_until};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fleetward_keyring::Keyring;
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

pub fn rand_hex() -> String {
    format!("{:08x}", fleetward_testkit::rand_u32())
}

pub async fn pg() -> PgPool {
    let url = env("DATABASE_URL");
    PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL is not reachable ({e}); run `./deploy.sh dev-up`"))
}

pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{table}\"")))
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Drops a test's table once it passed (the dev database is long-lived).
pub async fn drop_table(pool: &PgPool, table: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS \"{table}\"")))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM fleetward_station_tables WHERE name = $1")
        .bind(table)
        .execute(pool)
        .await
        .unwrap();
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("Kafka producer")
}

/// Produces `records` (key, payload) and waits for every acknowledgement.
pub async fn produce(topic: &str, records: impl IntoIterator<Item = (String, Vec<u8>)>) {
    produce_with_headers(topic, records.into_iter().map(|(k, v)| (k, v, None))).await
}

/// `produce`, each record with its headers if it has some.
pub async fn produce_with_headers(
    topic: &str,
    records: impl IntoIterator<Item = (String, Vec<u8>, Option<OwnedHeaders>)>,
) {
    let p = producer();
    let sends: Vec<_> = records
        .into_iter()
        .map(|(k, v, headers)| {
            let p = p.clone();
            let topic = topic.to_string();
            async move {
                let mut record = FutureRecord::to(&topic).key(&k).payload(&v);
                if let Some(h) = headers {
                    record = record.headers(h);
                }
                p.send(record, Duration::from_secs(60)).await.map_err(|(e, _)| e)
            }
        })
        .collect();
    for r in futures::future::join_all(sends).await {
        r.unwrap_or_else(|e| panic!("Kafka at KAFKA_BROKERS refused a record ({e}); run `./deploy.sh dev-up`"));
    }
}

/// Waits until `table` holds at least `n` rows, or `secs` passed.
pub async fn wait_for_rows(pool: &PgPool, table: &str, n: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while count(pool, table).await < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of `topic` from the beginning, until `n` were read or
/// `secs` passed.
pub fn consume(topic: &str, n: usize, secs: u64) -> Vec<OwnedMessage> {
    let c: BaseConsumer = kafka_reader(topic);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// Writes the keyring file the way a Secret volume update lands: whole,
/// never half-written.
pub fn write_keyring(path: &Path, keyring: &Keyring) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, keyring.to_json()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub struct EncryptorConfig {
    pub topic: String,
    pub group: String,
    pub table: String,
    pub keyring_file: PathBuf,
    pub sensitive: String,
    pub dead_letter_topic: Option<String>,
    pub batch_size: u32,
    /// `telemetry` for a Gateway's writer; stations when unset.
    pub kind: Option<&'static str>,
    /// The Gateway's record key (hex), for telemetry.
    pub record_key: Option<String>,
    /// `RETENTION_DAYS`: ten years unless a test sets it, so records with
    /// fixed dates stay unexpired whenever the tests run.
    pub retention_days: u32,
}

impl EncryptorConfig {
    pub fn new(topic: &str, table: &str, keyring_file: &Path) -> Self {
        Self {
            topic: topic.into(),
            group: unique("test-encryptor"),
            table: table.into(),
            keyring_file: keyring_file.into(),
            sensitive: "address,contract_name".into(),
            dead_letter_topic: None,
            batch_size: 500,
            kind: None,
            record_key: None,
            retention_days: 3650,
        }
    }
}

/// Starts the encryptor binary configured by `cfg`, its log named after
/// `log_name`.
pub fn start_encryptor(cfg: &EncryptorConfig, log_name: &str) -> Workload {
    let port = free_port();
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{log_name}-{}.log", rand_hex()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward-encryptor"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BROKERS", env("KAFKA_BROKERS"))
        .env("KAFKA_TOPIC", &cfg.topic)
        .env("KAFKA_GROUP_ID", &cfg.group)
        // The broker's minimum: a killed encryptor's partitions move on quickly.
        .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("DATABASE_URL", env("DATABASE_URL"))
        .env("TABLE", &cfg.table)
        .env("SENSITIVE_FIELDS", &cfg.sensitive)
        .env("KEYRING_FILE", &cfg.keyring_file)
        .env("KEYRING_RELOAD_SECONDS", "1")
        .env("BATCH_SIZE", cfg.batch_size.to_string())
        .env("RETENTION_DAYS", cfg.retention_days.to_string())
        .env("BATCH_TIMEOUT_MS", "100")
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info");
    if let Some(d) = &cfg.dead_letter_topic {
        cmd.env("DEAD_LETTER_TOPIC", d);
    }
    if let Some(k) = cfg.kind {
        cmd.env("RECORD_KIND", k);
    }
    if let Some(k) = &cfg.record_key {
        cmd.env("RECORD_KEY", k);
    }
    Workload::spawn(cmd, format!("http://127.0.0.1:{port}"), log, "/metrics", 30)
}

/// The arguments of `fleetward-stations export` for one contract of
/// `table`, decrypting with `keyring_file`, followed by `extra`.
pub fn export_args<'a>(table: &'a str, contract: &'a str, keyring_file: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "export",
        "--table",
        table,
        "--contract",
        contract,
        "--keyring-file",
        keyring_file,
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs `fleetward-stations` with `args`.
pub fn stations_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetward-stations"))
        .args(args)
        .env("DATABASE_URL", env("DATABASE_URL"))
        .env("KUBECONFIG", env("KUBECONFIG"))
        .output()
        .expect("fleetward-stations runs")
}

/// A JCDecaux v1 API on loopback serving testdata/ (the one allowed fake:
/// the real API needs a key and the internet). Checks the API key.
pub async fn jcdecaux_server(api_key: &'static str) -> String {
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::routing::get;
    let body = fleetward_testkit::dublin_text();
    let app = axum::Router::new().route(
        "/vls/v1/stations",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let body = body.clone();
            async move {
                if q.get("apiKey").map(String::as_str) != Some(api_key) {
                    return (StatusCode::FORBIDDEN, String::new());
                }
                (StatusCode::OK, body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
