//! The audit trail of security events: a structured log line for each, and
//! a row in PostgreSQL (`fleetward_gateway.gateway_audit`) when a database is
//! configured. Rows are written in batches by a background task so the
//! message path never waits on the database. Secrets and payloads are never
//! recorded.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetward_partitions::{Key, Partitioned, WEEK};
use fleetward_service::backoff::Backoff;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::mpsc;

use crate::bucket::Bucket;
use crate::metrics::Metrics;
use crate::refusal::Refused;

/// Postgres schema of the gateway's tables (and its own migration history,
/// so it never mixes with another workload's migrations).
pub const SCHEMA: &str = "fleetward_gateway";
const BATCH: usize = 500;
/// Events waiting for the database. Each is small (details are capped at
/// `MAX_DETAIL` characters), and refusals reach it through `RefusalAudit`'s
/// budget: a few MB at most.
const QUEUE: usize = 10_000;
const MAX_DETAIL: usize = 256;

#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub event: &'static str,
    pub device_id: Option<String>,
    pub reason: Option<String>,
    pub message_id: Option<String>,
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn new(event: &'static str) -> Self {
        Self {
            at: Utc::now(),
            event,
            device_id: None,
            reason: None,
            message_id: None,
            detail: None,
        }
    }
    pub fn device(mut self, id: &str) -> Self {
        self.device_id = Some(id.to_string());
        self
    }
    pub fn maybe_device(mut self, id: Option<&str>) -> Self {
        self.device_id = id.map(str::to_string);
        self
    }
    pub fn reason(mut self, r: &str) -> Self {
        self.reason = Some(r.to_string());
        self
    }
    pub fn message_id(mut self, id: Option<&str>) -> Self {
        self.message_id = id.map(str::to_string);
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        let mut d: String = d.into();
        if d.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d.truncate(end);
        }
        self.detail = Some(d);
        self
    }
}

#[derive(thiserror::Error, Debug)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("audit migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Where security events go. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<AuditEvent>>,
    metrics: std::sync::Arc<Metrics>,
}

impl Audit {
    /// Log-only audit (no database configured).
    pub fn log_only(metrics: std::sync::Arc<Metrics>) -> Self {
        Self { tx: None, metrics }
    }

    /// Starts the writer task on a pool from `connect_pool`.
    pub fn with_pool(pool: PgPool, namespace: &str, gateway: &str, metrics: std::sync::Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(pool, rx, namespace.to_string(), gateway.to_string()));
        Self { tx: Some(tx), metrics }
    }

    pub fn record(&self, ev: AuditEvent) {
        tracing::info!(
            target: "audit",
            event = ev.event,
            device = ev.device_id.as_deref().unwrap_or(""),
            reason = ev.reason.as_deref().unwrap_or(""),
            message_id = ev.message_id.as_deref().unwrap_or(""),
            detail = ev.detail.as_deref().unwrap_or(""),
            "security event"
        );
        if let Some(tx) = &self.tx
            && tx.try_send(ev).is_err()
        {
            // Only under a flood bigger than the queue: the log line above
            // still holds the event.
            self.metrics.audit_dropped.inc();
        }
    }
}

/// The audit of refused messages, on a budget: each device's refusals get a
/// row (and a log line) each up to `DEVICE_BURST`, then `DEVICE_RATE` a
/// second, and all devices together `GLOBAL_BURST`, then `GLOBAL_RATE` a
/// second. Refusals over the budget are counted per device and reason and
/// written as one `rejected_summary` row each per `SUMMARY_EVERY`. So a
/// flood from one device for T seconds writes at most
/// DEVICE_BURST + DEVICE_RATE·T rows plus a summary per reason per 10 s,
/// whatever its rate; the metrics still count every refusal.
pub struct RefusalAudit {
    audit: Audit,
    metrics: std::sync::Arc<Metrics>,
    devices: HashMap<String, Bucket>,
    global: Bucket,
    /// Refusals over budget since the last summary, by device and reason.
    suppressed: BTreeMap<String, BTreeMap<&'static str, u64>>,
    since: Instant,
}

pub const DEVICE_BURST: f64 = 20.0;
pub const DEVICE_RATE: f64 = 2.0;
pub const GLOBAL_BURST: f64 = 200.0;
pub const GLOBAL_RATE: f64 = 50.0;
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Devices whose budgets are kept; past that the table starts over.
const MAX_TRACKED: usize = 100_000;

impl RefusalAudit {
    pub fn new(audit: Audit, metrics: std::sync::Arc<Metrics>) -> Self {
        let now = Instant::now();
        Self {
            audit,
            metrics,
            devices: HashMap::new(),
            global: Bucket::full(GLOBAL_BURST, now),
            suppressed: BTreeMap::new(),
            since: now,
        }
    }

    /// Audits one refusal, or counts it for the next summary. Under a flood
    /// this runs for every message: the device id is copied only when the
    /// device or its reason is new to the tables.
    pub fn record(&mut self, refused: &Refused, now: Instant) {
        let device = refused.device_id.as_deref().unwrap_or_default();
        let reason = refused.rejection.reason();
        if !self.devices.contains_key(device) {
            if self.devices.len() >= MAX_TRACKED {
                self.devices.clear();
            }
            self.devices.insert(device.to_string(), Bucket::full(DEVICE_BURST, now));
        }
        let budget = self.devices.get_mut(device).expect("inserted above");
        budget.refill(now, DEVICE_RATE, DEVICE_BURST);
        self.global.refill(now, GLOBAL_RATE, GLOBAL_BURST);
        if budget.has_token() && self.global.has_token() {
            budget.spend();
            self.global.spend();
            self.audit.record(
                AuditEvent::new("rejected")
                    .maybe_device(refused.device_id.as_deref())
                    .reason(reason)
                    .message_id(refused.message_id.as_deref())
                    .detail(refused.rejection.to_string()),
            );
        } else {
            self.metrics.audit_suppressed.inc();
            match self.suppressed.get_mut(device) {
                Some(counts) => *counts.entry(reason).or_default() += 1,
                None => {
                    self.suppressed
                        .insert(device.to_string(), BTreeMap::from([(reason, 1)]));
                }
            }
        }
        self.tick(now);
    }

    /// Writes the summaries once `SUMMARY_EVERY` has passed (call it often,
    /// e.g. for every message).
    pub fn tick(&mut self, now: Instant) {
        if self.suppressed.is_empty() {
            self.since = now;
            return;
        }
        let window = now.saturating_duration_since(self.since);
        if window < SUMMARY_EVERY {
            return;
        }
        for (device, reasons) in std::mem::take(&mut self.suppressed) {
            for (reason, n) in reasons {
                self.audit.record(
                    AuditEvent::new("rejected_summary")
                        .maybe_device((!device.is_empty()).then_some(device.as_str()))
                        .reason(reason)
                        .detail(format!(
                            "{n} more refusals in the last {} s, over the audit budget",
                            window.as_secs()
                        )),
                );
            }
        }
        self.since = now;
    }
}

/// A pool whose connections use the gateway's own schema.
pub async fn connect_pool(url: &str) -> Result<PgPool, AuditError> {
    let opts: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts.options([("search_path", SCHEMA)]))
        .await?;
    // The migrator creates the schema under its advisory lock: a plain
    // CREATE SCHEMA IF NOT EXISTS from two gateways starting at once races
    // in PostgreSQL (duplicate key in pg_namespace) and one of them failed.
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.create_schema(SCHEMA);
    migrator.run(&pool).await?;
    Ok(pool)
}

async fn writer(pool: PgPool, mut rx: mpsc::Receiver<AuditEvent>, namespace: String, gateway: String) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let mut backoff = Backoff::standard();
        loop {
            match insert(&pool, &batch, &namespace, &gateway).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, rows = batch.len(), "audit insert failed; retrying");
                    backoff.wait().await;
                }
            }
        }
        batch.clear();
    }
}

/// This gateway's partition of the audit trail (made if missing), cut into
/// weeks on `at` (see migration 0004): the weeks older than the Gateway's
/// `spec.retention.auditDays` go whole.
pub async fn partitioned(pool: &PgPool, namespace: &str, gateway: &str) -> Result<Partitioned, sqlx::Error> {
    let name: String = sqlx::query_scalar("SELECT fleetward_audit_partition($1, $2)")
        .bind(namespace)
        .bind(gateway)
        .fetch_one(pool)
        .await?;
    Ok(Partitioned::new(None, &name, Key::Timestamptz, WEEK))
}

/// Writes a batch; the first of a week (or a late one) makes its week.
async fn insert(pool: &PgPool, batch: &[AuditEvent], namespace: &str, gateway: &str) -> Result<(), sqlx::Error> {
    fleetward_partitions::write_making_partitions(
        move || insert_rows(pool, batch, namespace, gateway),
        move || async move {
            let times: Vec<i64> = batch.iter().map(|ev| ev.at.timestamp()).collect();
            partitioned(pool, namespace, gateway)
                .await?
                .ensure(pool, &times)
                .await?;
            Ok(())
        },
    )
    .await
}

async fn insert_rows(pool: &PgPool, batch: &[AuditEvent], namespace: &str, gateway: &str) -> Result<(), sqlx::Error> {
    let mut qb = sqlx::QueryBuilder::new(
        "INSERT INTO gateway_audit (at, namespace, gateway, device_id, event, reason, message_id, detail) ",
    );
    qb.push_values(batch, |mut row, ev| {
        row.push_bind(ev.at)
            .push_bind(namespace)
            .push_bind(gateway)
            .push_bind(&ev.device_id)
            .push_bind(ev.event)
            .push_bind(&ev.reason)
            .push_bind(&ev.message_id)
            .push_bind(&ev.detail);
    });
    qb.build().execute(pool).await?;
    Ok(())
}
