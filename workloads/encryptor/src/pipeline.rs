//! Kafka → encrypt → PostgreSQL, in batches: station records (a
//! StationFeed's) or device telemetry (a Gateway's), one kind per topic.
//!
//! Delivery guarantee: a batch's offsets are committed only after its rows
//! are committed in PostgreSQL and its dead letters are acknowledged by
//! Kafka. A crash anywhere replays at most the uncommitted batches, and
//! replayed rows are dropped by the natural key (`ON CONFLICT DO NOTHING`):
//! every record ends up stored exactly once. Because of that, stopping
//! the pipeline is simply dropping its future, at any point.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_protocol::kafka::Security;
use fleetward_protocol::record::{RecordKey, is_signed};
use fleetward_service::backoff::Backoff;
use rayon::prelude::*;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;

use fleetward_partitions::Partitioned;

use crate::db::{self, RecordKind, TableName};
use crate::dead_letter::{self, DeadLetter};
use crate::keys::SharedKeyring;
use crate::metrics::Metrics;
use crate::record::{CheckedStation, Invalid, Row, Sensitive};
use crate::telemetry::{self, TelemetryRow};

pub use crate::error::Error;

#[derive(Clone, Debug)]
pub struct Settings {
    pub brokers: String,
    /// How the pipeline's clients connect (`fleetward_protocol::kafka`).
    pub kafka: Security,
    pub topic: String,
    pub group_id: String,
    pub session_timeout_ms: u32,
    pub dead_letter_topic: String,
    pub kind: RecordKind,
    pub table: TableName,
    /// Station fields to encrypt (telemetry always encrypts its payload).
    pub sensitive: Sensitive,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    /// The producer's record key (the Gateway's for telemetry, the
    /// StationFeed's for stations): a record without its valid MAC is
    /// dead-lettered (`unsigned`), never stored.
    pub record_key: Option<RecordKey>,
    /// How long rows are kept (`fleetward_partitions`): a record older
    /// than this is not stored, and a week of rows goes once all are.
    pub retention: Duration,
}

/// Batches being stored at once: PostgreSQL runs each transaction on one
/// core, so two keep it busy while one commits (fsync).
const STORES_IN_FLIGHT: usize = 2;

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
        let consumer: StreamConsumer<Ctx> = settings
            .kafka
            .client_config(&settings.brokers)
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
            // A topic created after we subscribed (the first message a
            // gateway or ingestor produces creates it) is picked up within
            // seconds, not at librdkafka's default five-minute refresh.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .create_with_context(Ctx {
                metrics: metrics.clone(),
            })?;
        consumer.subscribe(&[&settings.topic])?;
        let dlq: FutureProducer = settings
            .kafka
            .client_config(&settings.brokers)
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
    ///
    /// Up to `STORES_IN_FLIGHT` batches are stored (each in its own
    /// transaction, on its own connection) while the next is read and
    /// encrypted. Batches still complete in order: a batch's offsets are
    /// committed after its rows are durable and after every earlier batch's
    /// offsets, so a crash replays a suffix of batches, whose stored rows the
    /// natural key drops.
    pub async fn run(&self) {
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        loop {
            // Wait for the next batch's first record; meanwhile finish the
            // oldest batch in flight as soon as its rows are stored.
            let first = loop {
                let Some(f) = inflight.front_mut() else {
                    break self.consumer.recv().await.map(|m| m.detach());
                };
                let stored = tokio::select! {
                    m = self.consumer.recv() => Err(m.map(|m| m.detach())),
                    n = &mut f.store.0 => Ok(n),
                };
                match stored {
                    Err(m) => break m,
                    Ok(n) => self.complete(inflight.pop_front().expect("in flight"), n),
                }
            };
            let first = match first {
                Ok(m) => m,
                Err(e) => {
                    self.kafka_error(e).await;
                    continue;
                }
            };
            let (batch, started) = self.fill_batch(first).await;
            let batch = Arc::new(batch);
            let staged = self.stage(batch.clone()).await;
            while inflight.len() >= STORES_IN_FLIGHT {
                let mut f = inflight.pop_front().expect("in flight");
                let n = (&mut f.store.0).await;
                self.complete(f, n);
            }
            inflight.push_back(self.store(staged, &batch, started));
        }
    }

    /// The first record plus what arrives within `batch_timeout`, up to
    /// `batch_size`.
    async fn fill_batch(&self, first: OwnedMessage) -> (Vec<OwnedMessage>, Instant) {
        let started = Instant::now();
        let mut batch = Vec::with_capacity(self.settings.batch_size);
        batch.push(first);
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

    /// Parses and encrypts a batch on every core (records are
    /// independent, and sealing is most of the pipeline's own work); sends
    /// what cannot be parsed to the dead-letter topic, sealed (see
    /// `dead_letter`), and waits until Kafka has it.
    async fn stage(&self, batch: Arc<Vec<OwnedMessage>>) -> Staged {
        let keyring = self.keyring.current();
        let (kind, sensitive, ring, msgs, record_key) = (
            self.settings.kind,
            self.settings.sensitive.clone(),
            keyring.clone(),
            batch.clone(),
            self.settings.record_key.clone(),
        );
        let (rows, refused) = tokio::task::spawn_blocking(move || match kind {
            RecordKind::Stations => {
                let (rows, refused) = seal_all(&msgs, |m| {
                    verify(record_key.as_ref(), m)?;
                    CheckedStation::parse(m.payload()).map(|s| s.seal(&ring, &sensitive))
                });
                (Rows::Stations(rows), refused)
            }
            RecordKind::Telemetry => {
                let (rows, refused) = seal_all(&msgs, |m| {
                    verify(record_key.as_ref(), m)?;
                    telemetry::seal(m.payload(), &ring)
                });
                (Rows::Telemetry(rows), refused)
            }
        })
        .await
        .expect("sealing never panics");
        for (i, why) in &refused {
            let m = &batch[*i];
            // Sealed once, so a retry sends the same token.
            let letter = dead_letter::seal(&keyring, m, why);
            let mut backoff = Backoff::standard();
            while let Err(e) = self.dead_letter(&letter).await {
                tracing::warn!(error = %e, "dead-letter topic refused a record; retrying");
                self.metrics.errors.with_label_values(&["dlq"]).inc();
                backoff.wait().await;
            }
            // `Invalid` holds no text of the record: safe to log.
            tracing::warn!(
                partition = m.partition(),
                offset = m.offset(),
                reason = why.code(),
                detail = %why,
                "record sent to the dead-letter topic, sealed"
            );
        }
        Staged {
            rows,
            key_id: keyring.primary_id().to_string(),
            dead: refused.len() as u64,
        }
    }

    /// Starts storing a staged batch (retried until it succeeds).
    fn store(&self, mut staged: Staged, batch: &[OwnedMessage], started: Instant) -> InFlight {
        let cutoff = chrono::Utc::now() - self.settings.retention;
        let expired = staged.rows.drop_older_than(cutoff);
        if expired > 0 {
            tracing::info!(expired, "records older than the retention not stored");
            self.metrics.records.with_label_values(&["expired"]).inc_by(expired);
        }
        let mut next: HashMap<i32, i64> = HashMap::new();
        for m in batch {
            let o = next.entry(m.partition()).or_insert(0);
            *o = (*o).max(m.offset() + 1);
        }
        let rows = staged.rows.len() as u64;
        let pool = self.pool.clone();
        let partitioned = db::partitioned(&self.settings.table);
        let table = self.settings.table.clone();
        let fields = self.settings.sensitive.names();
        let metrics = self.metrics.clone();
        let handle = tokio::spawn(async move {
            let mut backoff = Backoff::standard();
            loop {
                match insert(&pool, &table, &partitioned, &staged.key_id, &fields, &staged.rows).await {
                    Ok(n) => return n,
                    Err(e) => {
                        tracing::warn!(error = %e, rows = staged.rows.len(), "storing batch failed; retrying");
                        metrics.errors.with_label_values(&["db"]).inc();
                        backoff.wait().await;
                    }
                }
            }
        });
        InFlight {
            store: AbortOnDrop(handle),
            offsets: next,
            rows,
            dead: staged.dead,
            started,
        }
    }

    /// The batch's rows are durable: now its offsets may move.
    fn complete(&self, f: InFlight, stored: Result<u64, tokio::task::JoinError>) {
        let inserted = stored.expect("the store task retries until it succeeds");
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &f.offsets {
            tpl.add_partition_offset(&self.settings.topic, *p, Offset::Offset(*o))
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
        m.records.with_label_values(&["duplicate"]).inc_by(f.rows - inserted);
        m.records.with_label_values(&["dead_letter"]).inc_by(f.dead);
        m.dlq.inc_by(f.dead);
        m.batch_latency.observe(f.started.elapsed().as_secs_f64());
        tracing::debug!(rows = f.rows, inserted, dead = f.dead, "batch committed");
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), rdkafka::error::KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.settings.dead_letter_topic)
            .payload(letter.value.as_slice())
            .headers(letter.kafka_headers());
        if let Some(k) = &letter.key {
            record = record.key(k);
        }
        self.dlq
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// With a record key, whether a record carries its producer's MAC
/// (`fleetward_protocol::record`).
fn verify(record_key: Option<&RecordKey>, m: &OwnedMessage) -> Result<(), Invalid> {
    match record_key {
        Some(key) if !is_signed(key, m) => Err(Invalid::Unsigned),
        _ => Ok(()),
    }
}

/// `seal` applied to every message, in parallel: the rows, and the batch
/// positions of the records that were refused, with why.
fn seal_all<T: Send>(
    msgs: &[OwnedMessage],
    seal: impl Fn(&OwnedMessage) -> Result<T, Invalid> + Sync,
) -> (Vec<T>, Vec<(usize, Invalid)>) {
    let sealed: Vec<Result<T, Invalid>> = msgs.par_iter().map(&seal).collect();
    let mut rows = Vec::with_capacity(sealed.len());
    let mut refused = Vec::new();
    for (i, r) in sealed.into_iter().enumerate() {
        match r {
            Ok(row) => rows.push(row),
            Err(why) => refused.push((i, why)),
        }
    }
    (rows, refused)
}

/// A batch's rows, of the pipeline's kind.
enum Rows {
    Stations(Vec<Row>),
    Telemetry(Vec<TelemetryRow>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Stations(v) => v.len(),
            Rows::Telemetry(v) => v.len(),
        }
    }

    /// The partition key of each row, in Unix seconds.
    fn times(&self) -> Vec<i64> {
        match self {
            Rows::Stations(v) => v.iter().map(|r| r.last_update.timestamp()).collect(),
            Rows::Telemetry(v) => v.iter().map(|r| r.received_at.timestamp()).collect(),
        }
    }

    /// Leaves out the rows whose partition key is before `cutoff` (their
    /// week may be gone already); returns how many.
    fn drop_older_than(&mut self, cutoff: chrono::DateTime<chrono::Utc>) -> u64 {
        let before = self.len();
        match self {
            Rows::Stations(v) => v.retain(|r| r.last_update >= cutoff),
            Rows::Telemetry(v) => v.retain(|r| r.received_at >= cutoff),
        }
        (before - self.len()) as u64
    }
}

/// A batch after parsing and encryption.
struct Staged {
    rows: Rows,
    key_id: String,
    dead: u64,
}

/// A batch whose rows are being stored.
struct InFlight {
    store: AbortOnDrop<u64>,
    /// Next offset per partition, committed once the rows are stored.
    offsets: HashMap<i32, i64>,
    rows: u64,
    dead: u64,
    started: Instant,
}

/// Stopping the pipeline (dropping it) also stops a store in progress; its
/// offsets were not committed, so the batch is simply read again.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One transaction per batch, in a binary COPY: the fast way in. When a
/// row is already stored (a batch read again after a crash or a rebalance,
/// or a record produced twice) the COPY fails as a whole, and the batch is
/// inserted instead, skipping the rows that are there. A row of a week
/// with no partition yet (the first of a week, or a late one) fails it
/// too: the weeks are made and the batch is written again.
async fn insert(
    pool: &PgPool,
    table: &TableName,
    partitioned: &Partitioned,
    key_id: &str,
    fields: &[String],
    rows: &Rows,
) -> Result<u64, sqlx::Error> {
    fleetward_partitions::write_making_partitions(
        move || insert_rows(pool, table, key_id, fields, rows),
        move || async move {
            let made = partitioned.ensure(pool, &rows.times()).await?;
            tracing::info!(
                partitions = made,
                table = table.as_str(),
                "made the partitions a batch needs"
            );
            Ok(())
        },
    )
    .await
}

async fn insert_rows(
    pool: &PgPool,
    table: &TableName,
    key_id: &str,
    fields: &[String],
    rows: &Rows,
) -> Result<u64, sqlx::Error> {
    if rows.len() == 0 {
        return Ok(0);
    }
    let mut copy = db::CopyBuf::new();
    let columns = match rows {
        Rows::Stations(rows) => {
            rows.iter().for_each(|r| copy.station(key_id, fields, r));
            db::STATION_COLUMNS
        }
        Rows::Telemetry(rows) => {
            rows.iter().for_each(|r| copy.telemetry(key_id, r));
            db::TELEMETRY_COLUMNS
        }
    };
    let mut tx = pool.begin().await?;
    match db::copy_rows(&mut tx, table, columns, copy.finish()).await {
        Ok(n) => {
            tx.commit().await?;
            return Ok(n);
        }
        Err(e) if db::is_duplicate(&e) => tx.rollback().await?,
        Err(e) => return Err(e),
    }
    let mut tx = pool.begin().await?;
    let n = match rows {
        Rows::Stations(rows) => db::insert_batch(&mut tx, table, key_id, fields, rows).await?,
        Rows::Telemetry(rows) => db::insert_telemetry_batch(&mut tx, table, key_id, rows).await?,
    };
    tx.commit().await?;
    Ok(n)
}

/// Connects, migrates, prepares the table and builds the pipeline.
pub async fn start(
    settings: Settings,
    database_url: &str,
    keyring: SharedKeyring,
    metrics: Arc<Metrics>,
) -> Result<Pipeline, Error> {
    let pool = db::connect(database_url, 4).await?;
    db::prepare(&pool, settings.kind, &settings.table).await?;
    let pipeline = Pipeline::new(settings, pool, keyring, metrics)?;
    // Expired weeks go now and then hourly; the next week is made ahead.
    tokio::spawn(fleetward_partitions::keep(
        pipeline.pool.clone(),
        vec![(
            db::partitioned(&pipeline.settings.table),
            fleetward_partitions::fixed(pipeline.settings.retention),
        )],
    ));
    Ok(pipeline)
}
