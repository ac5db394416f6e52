//! Kafka → encrypt → PostgreSQL, in batches.
//!
//! Delivery guarantee: a batch's offsets are committed only after its rows
//! are committed in PostgreSQL and its dead letters are acknowledged by
//! Kafka. A crash anywhere replays at most the uncommitted batches, and
//! replayed rows are dropped by the natural key (`ON CONFLICT DO NOTHING`):
//! every record ends up stored exactly once. Because of that, stopping
//! the pipeline is simply dropping its future, at any point.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fleetward_keyring::Keyring;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::db::{self, TableName};
use crate::metrics::Metrics;
use crate::record::{Invalid, Sensitive, Station};

/// Header names on dead-letter records.
pub const DLQ_REASON: &str = "fleetward-dlq-reason";
pub const DLQ_TOPIC: &str = "fleetward-dlq-topic";
pub const DLQ_PARTITION: &str = "fleetward-dlq-partition";
pub const DLQ_OFFSET: &str = "fleetward-dlq-offset";

#[derive(Clone, Debug)]
pub struct Settings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub session_timeout_ms: u32,
    pub dead_letter_topic: String,
    pub table: TableName,
    pub sensitive: Sensitive,
    pub batch_size: usize,
    pub batch_timeout: Duration,
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The keyring in use; replaced when its file changes (rotation).
#[derive(Clone)]
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    pub fn new(k: Keyring) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(k))))
    }
    pub fn current(&self) -> Arc<Keyring> {
        self.0.read().expect("keyring lock").clone()
    }
    pub fn replace(&self, k: Keyring) {
        *self.0.write().expect("keyring lock") = Arc::new(k);
    }
}

/// Re-reads the keyring file every `every`. A Kubernetes Secret volume is
/// updated in place by the kubelet, so a rotation reaches a running
/// encryptor without a restart. An unreadable or invalid file keeps the
/// keyring in use (and is counted): better stale than stopped.
pub async fn watch_keyring_file(
    path: std::path::PathBuf,
    keyring: SharedKeyring,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    let mut last = std::fs::read_to_string(&path).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read keyring; keeping the loaded one");
                metrics.errors.with_label_values(&["keyring"]).inc();
                continue;
            }
        };
        if last.as_ref() == Some(&text) {
            continue;
        }
        match Keyring::from_json(&text) {
            Ok(k) => {
                let old = keyring.current();
                // A keyring that dropped the key in use would strand rows
                // being written; still take it (the operator never does this,
                // a person may have), but say so.
                if k.fernet_key(old.primary_id()).is_none() {
                    tracing::warn!(
                        old = old.primary_id(),
                        "new keyring no longer contains the previous primary key"
                    );
                }
                tracing::info!(primary = k.primary_id(), keys = k.key_ids().len(), "keyring reloaded");
                metrics.set_primary(k.primary_id());
                metrics.keyring_reloads.inc();
                keyring.replace(k);
                last = Some(text);
            }
            Err(e) => {
                tracing::warn!(error = %e, "changed keyring is invalid; keeping the loaded one");
                metrics.errors.with_label_values(&["keyring"]).inc();
            }
        }
    }
}

struct Ctx {
    metrics: Arc<Metrics>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let lag: i64 = s
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .map(|p| p.consumer_lag.max(0))
            .sum();
        self.metrics.consumer_lag.set(lag);
    }
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => tracing::info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => tracing::info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            // The next batch's commit covers these offsets again.
            tracing::warn!(error = %e, "offset commit failed");
            self.metrics.errors.with_label_values(&["commit"]).inc();
        }
    }
}

pub struct Pipeline {
    settings: Settings,
    consumer: StreamConsumer<Ctx>,
    dlq: FutureProducer,
    pool: PgPool,
    keyring: SharedKeyring,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    pub fn new(settings: Settings, pool: PgPool, keyring: SharedKeyring, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let consumer: StreamConsumer<Ctx> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("client.id", "fleetward-encryptor")
            // Offsets move only when rows are durable (see module docs).
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", settings.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout_ms / 3).max(1000).to_string(),
            )
            .set("statistics.interval.ms", "15000")
            .create_with_context(Ctx {
                metrics: metrics.clone(),
            })?;
        consumer.subscribe(&[&settings.topic])?;
        let dlq: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("client.id", "fleetward-encryptor-dlq")
            .create()?;
        metrics.set_primary(keyring.current().primary_id());
        Ok(Self {
            settings,
            consumer,
            dlq,
            pool,
            keyring,
            metrics,
        })
    }

    /// Consumes forever. Dropping the future stops it safely.
    pub async fn run(&self) {
        loop {
            let (batch, started) = self.next_batch().await;
            self.process(&batch).await;
            self.metrics.batch_latency.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Up to `batch_size` records, or what arrived within `batch_timeout`
    /// of the first one.
    async fn next_batch(&self) -> (Vec<OwnedMessage>, Instant) {
        let mut batch = Vec::with_capacity(self.settings.batch_size);
        loop {
            match self.consumer.recv().await {
                Ok(m) => {
                    batch.push(m.detach());
                    break;
                }
                Err(e) => self.kafka_error(e).await,
            }
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.batch_timeout;
        while batch.len() < self.settings.batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => self.kafka_error(e).await,
                Err(_) => break,
            }
        }
        (batch, started)
    }

    async fn kafka_error(&self, e: rdkafka::error::KafkaError) {
        // E.g. the topic does not exist yet: keep waiting for it.
        tracing::warn!(error = %e, "Kafka consumer error");
        self.metrics.errors.with_label_values(&["kafka"]).inc();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    async fn process(&self, batch: &[OwnedMessage]) {
        let keyring = self.keyring.current();
        let mut rows = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for m in batch {
            match Station::parse(m.payload()) {
                Ok(s) => rows.push(s.seal(&keyring, &self.settings.sensitive)),
                Err(why) => dead.push((m, why)),
            }
        }
        for (m, why) in &dead {
            let mut attempt = 0;
            while let Err(e) = self.dead_letter(m, why).await {
                tracing::warn!(error = %e, "dead-letter topic refused a record; retrying");
                self.metrics.errors.with_label_values(&["dlq"]).inc();
                backoff(&mut attempt).await;
            }
            tracing::warn!(
                partition = m.partition(),
                offset = m.offset(),
                reason = %why,
                "record sent to the dead-letter topic"
            );
        }
        let fields = self.settings.sensitive.names();
        let mut attempt = 0;
        let inserted = loop {
            match self.insert(keyring.primary_id(), &fields, &rows).await {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "storing batch failed; retrying");
                    self.metrics.errors.with_label_values(&["db"]).inc();
                    backoff(&mut attempt).await;
                }
            }
        };
        // Rows are durable: now the offsets may move.
        let mut next: HashMap<i32, i64> = HashMap::new();
        for m in batch {
            let o = next.entry(m.partition()).or_insert(0);
            *o = (*o).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&self.settings.topic, p, Offset::Offset(o))
                .expect("valid offset");
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed");
            self.metrics.errors.with_label_values(&["commit"]).inc();
        }
        let m = &self.metrics;
        m.batches.inc();
        m.db_inserts.inc_by(inserted);
        m.records.with_label_values(&["stored"]).inc_by(inserted);
        m.records
            .with_label_values(&["duplicate"])
            .inc_by(rows.len() as u64 - inserted);
        m.records.with_label_values(&["dead_letter"]).inc_by(dead.len() as u64);
        m.dlq.inc_by(dead.len() as u64);
        tracing::debug!(records = batch.len(), inserted, dead = dead.len(), "batch committed");
    }

    async fn insert(&self, key_id: &str, fields: &[String], rows: &[crate::record::Row]) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let n = db::insert_batch(&mut tx, &self.settings.table, key_id, fields, rows).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn dead_letter(&self, m: &OwnedMessage, why: &Invalid) -> Result<(), rdkafka::error::KafkaError> {
        let reason = why.to_string();
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: DLQ_REASON,
                value: Some(&reason),
            })
            .insert(Header {
                key: DLQ_TOPIC,
                value: Some(m.topic()),
            })
            .insert(Header {
                key: DLQ_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: DLQ_OFFSET,
                value: Some(&offset),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.settings.dead_letter_topic).headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        self.dlq
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

async fn backoff(attempt: &mut u32) {
    let ms = (200u64 << (*attempt).min(6)).min(10_000);
    *attempt += 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Connects, migrates, prepares the table and builds the pipeline.
pub async fn start(
    settings: Settings,
    database_url: &str,
    keyring: SharedKeyring,
    metrics: Arc<Metrics>,
) -> Result<Pipeline, Error> {
    let pool = db::connect(database_url, 4).await?;
    db::prepare(&pool, &settings.table).await?;
    Pipeline::new(settings, pool, keyring, metrics)
}
