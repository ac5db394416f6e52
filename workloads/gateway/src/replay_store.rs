//! The replay window, kept across restarts: the id of every forwarded
//! message is written to PostgreSQL (`gateway_replay_batches`) before the
//! message is acknowledged to the broker, and a starting gateway loads the
//! ids whose timestamps are still in the window. So a message redelivered
//! after a crash, or replayed by someone who recorded it, is refused as a
//! replay after a restart as before it.
//!
//! Writes are batched by one task (group commit: ids that arrive while a
//! batch is being written go in the next), and a message waits for its
//! batch, not for a write of its own. A batch is one row of parallel
//! arrays: PostgreSQL's work per id is then an array element, not a tuple
//! with two index entries. An id may be stored twice (a redelivered
//! message accepted again after a restart); loading puts both into one
//! set. While the database is down, writes are retried and
//! acknowledgements wait: the broker holds the messages (an outage delays
//! them, as a sink outage does) rather than the gateway acknowledging
//! messages it could not remember.

use std::time::Duration;

use fleetward_partitions::{HOUR, Key, Partitioned};
use fleetward_service::backoff::Backoff;
use prometheus::Histogram;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

const BATCH: usize = 2000;
/// How often rows past their expiry are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

struct Entry {
    seq: u64,
    device_id: String,
    message_id: String,
    expires: i64,
}

/// Where the pipeline records forwarded ids. Without a database, the window
/// lives in memory only.
pub struct ReplayStore {
    inner: Option<Writer>,
}

struct Writer {
    tx: mpsc::UnboundedSender<Entry>,
    durable: watch::Receiver<u64>,
    next: u64,
}

/// An id of the window as it was before a restart.
pub struct Remembered {
    pub device_id: String,
    pub message_id: String,
    pub expires: i64,
}

impl ReplayStore {
    pub fn memory_only() -> Self {
        Self { inner: None }
    }

    /// Loads the ids still inside the window (`expires_at >= now`) and starts
    /// the writer, which times each group commit into `write_seconds`.
    pub async fn open(
        pool: PgPool,
        namespace: &str,
        gateway: &str,
        now: i64,
        write_seconds: Histogram,
    ) -> Result<(Self, Vec<Remembered>), sqlx::Error> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT t.d, t.m, t.e FROM gateway_replay_batches b, \
             UNNEST(b.device_ids, b.message_ids, b.expires_at) AS t(d, m, e) \
             WHERE b.namespace = $1 AND b.gateway = $2 AND b.last_expires >= $3 AND t.e >= $3",
        )
        .bind(namespace)
        .bind(gateway)
        .bind(now)
        .fetch_all(&pool)
        .await?;
        let remembered = rows
            .into_iter()
            .map(|(device_id, message_id, expires)| Remembered {
                device_id,
                message_id,
                expires,
            })
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(0);
        tokio::spawn(writer(
            pool,
            rx,
            durable_tx,
            namespace.to_string(),
            gateway.to_string(),
            write_seconds,
        ));
        Ok((
            Self {
                inner: Some(Writer { tx, durable, next: 0 }),
            },
            remembered,
        ))
    }

    /// Records an accepted message's id; the returned future completes once
    /// it is durable. The queue needs no bound of its own: the pipeline
    /// holds at most its in-flight limit of messages waiting on it.
    pub fn record(&mut self, device_id: &str, message_id: &str, expires: i64) -> impl Future<Output = ()> + use<> {
        let wait = self.inner.as_mut().map(|w| {
            w.next += 1;
            // A failed send means the writer is gone; the wait below then
            // never completes, as for any id the writer did not store.
            let _ = w.tx.send(Entry {
                seq: w.next,
                device_id: device_id.to_string(),
                message_id: message_id.to_string(),
                expires,
            });
            (w.next, w.durable.clone())
        });
        async move {
            if let Some((seq, mut durable)) = wait {
                // Err only when the writer is gone (the process is ending):
                // then the message stays unacknowledged.
                if durable.wait_for(|d| *d >= seq).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

async fn writer(
    pool: PgPool,
    mut rx: mpsc::UnboundedReceiver<Entry>,
    durable: watch::Sender<u64>,
    namespace: String,
    gateway: String,
    write_seconds: Histogram,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_purge = tokio::time::Instant::now();
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let mut backoff = Backoff::standard();
        let timer = write_seconds.start_timer();
        while let Err(e) = insert(&pool, &batch, &namespace, &gateway).await {
            let delay = backoff.next_delay();
            tracing::warn!(error = %e, ids = batch.len(), retry_in_ms = delay.as_millis() as u64,
                "could not record forwarded message ids; their acknowledgements wait");
            tokio::time::sleep(delay).await;
        }
        timer.observe_duration();
        // Entries arrive in sequence order, so the last is the highest.
        let seq = batch.last().map(|e| e.seq).unwrap_or_default();
        durable.send_replace(seq);
        batch.clear();
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            if let Err(e) = purge(&pool, chrono::Utc::now().timestamp()).await {
                tracing::warn!(error = %e, "could not purge expired message ids");
            }
        }
    }
}

/// The replay window's table: hour-wide partitions on `last_expires`,
/// shared by every gateway (migration 0004).
pub fn partitioned() -> Partitioned {
    Partitioned::new(None, "gateway_replay_batches", Key::EpochSeconds, HOUR)
}

async fn insert(pool: &PgPool, batch: &[Entry], namespace: &str, gateway: &str) -> Result<(), sqlx::Error> {
    fleetward_partitions::write_making_partitions(
        move || insert_row(pool, batch, namespace, gateway),
        move || async move {
            let last = batch.iter().map(|e| e.expires).max().unwrap_or_default();
            partitioned().ensure(pool, &[last]).await?;
            Ok(())
        },
    )
    .await
}

async fn insert_row(pool: &PgPool, batch: &[Entry], namespace: &str, gateway: &str) -> Result<(), sqlx::Error> {
    let devices: Vec<&str> = batch.iter().map(|e| e.device_id.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|e| e.message_id.as_str()).collect();
    let expires: Vec<i64> = batch.iter().map(|e| e.expires).collect();
    let last = expires.iter().copied().max().unwrap_or_default();
    sqlx::query(
        "INSERT INTO gateway_replay_batches (namespace, gateway, device_ids, message_ids, expires_at, last_expires) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(namespace)
    .bind(gateway)
    .bind(&devices)
    .bind(&ids)
    .bind(&expires)
    .bind(last)
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops the hours of batches whose every id left the window by `now`
/// (any gateway's: an expired id is nobody's), and makes the next hour
/// ahead; returns the partitions dropped. Never a `DELETE`.
pub async fn purge(pool: &PgPool, now: i64) -> Result<usize, sqlx::Error> {
    Ok(partitioned().maintain(pool, now, 0, HOUR).await?.dropped.len())
}
