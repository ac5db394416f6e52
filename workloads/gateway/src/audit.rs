//! The audit trail of security events: a structured log line for each, and
//! a row in PostgreSQL (`fleetward_gateway.gateway_audit`) when a database is
//! configured. Rows are written in batches by a background task so the
//! message path never waits on the database. Secrets and payloads are never
//! recorded.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Postgres schema of the gateway's tables (and its own migration history,
/// so it never mixes with another workload's migrations).
pub const SCHEMA: &str = "fleetward_gateway";
const BATCH: usize = 500;
const QUEUE: usize = 100_000;

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
        self.detail = Some(d.into());
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

    /// Connects, migrates and starts the writer task.
    pub async fn connect(
        url: &str,
        namespace: &str,
        gateway: &str,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Self, AuditError> {
        let pool = connect_pool(url).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(pool, rx, namespace.to_string(), gateway.to_string()));
        Ok(Self { tx: Some(tx), metrics })
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
        let mut delay = Duration::from_millis(200);
        loop {
            match insert(&pool, &batch, &namespace, &gateway).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, rows = batch.len(), "audit insert failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        batch.clear();
    }
}

async fn insert(pool: &PgPool, batch: &[AuditEvent], namespace: &str, gateway: &str) -> Result<(), sqlx::Error> {
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
