//! The billing service of one Tariff: runs on the Tariff's schedule and on
//! request (the `fleetward.io/bill-period` annotation, or the API), one at
//! a time, and keeps `status.billing` up to date (last and next run, what
//! it produced, and whether the database and the gateway can be reached).
//!
//! Which month a run bills: the one in progress just before the schedule
//! fired (`@monthly` at 00:00 on the 1st bills the month that just ended).
//! Only occurrences after the Tariff was created fire, so a new Tariff
//! does not bill the past.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use fleetward_tariff::BillingReport;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::bill::{Period, Rates};
use crate::fleet;
use crate::metrics::Metrics;
use crate::read::Gateway;
use crate::run::{self, Job, Outcome};

pub struct Service {
    pub pool: PgPool,
    pub client: kube::Client,
    pub namespace: String,
    pub tariff: String,
    pub gateway: Option<Gateway>,
    pub metrics: Arc<Metrics>,
    pub read_concurrency: usize,
    /// Held by the run in progress.
    running: Mutex<()>,
    /// What was last reported (and is reported again only when changed).
    report: Mutex<BillingReport>,
}

/// A failure of a run as the status and the API show it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// The Tariff or its meters could not be read, or the rates are bad.
    Tariff(String),
    Database(String),
    /// Another run of this Tariff is in progress.
    Busy,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Tariff(e) => write!(f, "{e}"),
            RunError::Database(e) => write!(f, "cannot use the billing database: {e}"),
            RunError::Busy => write!(f, "a billing run of this tariff is already in progress"),
        }
    }
}

/// The text of a database error, never with the connection URL's password
/// (sqlx does not put it in its errors; this keeps it so).
pub fn db_error(e: &sqlx::Error) -> String {
    let text = e.to_string();
    match std::env::var("DATABASE_URL").ok().and_then(|u| url_password(&u)) {
        Some(p) if !p.is_empty() => text.replace(&p, "***"),
        _ => text,
    }
}

fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let creds = rest.split_once('@')?.0;
    Some(creds.split_once(':')?.1.to_string())
}

impl Service {
    pub fn new(
        pool: PgPool,
        client: kube::Client,
        namespace: String,
        tariff: String,
        gateway: Option<Gateway>,
        metrics: Arc<Metrics>,
        read_concurrency: usize,
    ) -> Arc<Service> {
        Arc::new(Service {
            pool,
            client,
            namespace,
            tariff,
            gateway,
            metrics,
            read_concurrency,
            running: Mutex::new(()),
            report: Mutex::new(BillingReport::default()),
        })
    }

    /// Bills `period` now (refused while another run is in progress).
    pub async fn run_period(&self, period: Period, trigger: &str) -> Result<Outcome, RunError> {
        let _running = self.running.try_lock().map_err(|_| RunError::Busy)?;
        let view = fleet::tariff(&self.client, &self.namespace, &self.tariff)
            .await
            .map_err(RunError::Tariff)?;
        let rates = Rates::from_spec(&view.spec).map_err(RunError::Tariff)?;
        let (meters, unlabelled) = fleet::meters(&self.client, &self.namespace, &view.spec)
            .await
            .map_err(RunError::Tariff)?;
        if !unlabelled.is_empty() {
            tracing::warn!(devices = ?unlabelled, "meters without the fleetward.io/property and fleetward.io/account labels are not billed");
        }
        tracing::info!(%period, trigger, meters = meters.len(), "billing run starting");
        let outcome = run::run(Job {
            pool: &self.pool,
            namespace: &self.namespace,
            tariff: &self.tariff,
            rates: &rates,
            meters: &meters,
            period,
            trigger,
            gateway: self.gateway.as_ref(),
            read_timeout: Duration::from_secs(view.spec.meter_read_timeout_seconds.clamp(1, 3600) as u64),
            read_concurrency: self.read_concurrency,
            metrics: &self.metrics,
        })
        .await
        .map_err(|e| RunError::Database(db_error(&e)))?;
        let r = &outcome.row;
        tracing::info!(%period, bills = r.bills, unchanged = r.unchanged, estimated = r.estimated,
            answered = r.answered, total = %r.total.unwrap_or_default(), "billing run finished");
        let mut report = self.report.lock().await;
        report.last_run_time = Some(Time(jiff::Timestamp::now()));
        report.last_run_period = Some(period.to_string());
        report.last_run_bills = Some(i64::from(r.bills));
        report.last_run_estimated = Some(i64::from(r.estimated));
        report.last_run_total = r.total.map(|t| crate::money::format(t, rates.exponent));
        report.last_error = None;
        report.gateway_error = outcome.gateway_error.clone();
        Ok(outcome)
    }

    async fn set_report(&self, change: impl FnOnce(&mut BillingReport)) {
        let mut report = self.report.lock().await;
        change(&mut report);
    }

    /// Sends the report when it changed since the last one sent.
    async fn publish(&self, sent: &mut Option<BillingReport>) {
        let now = self.report.lock().await.clone();
        if sent.as_ref() == Some(&now) {
            return;
        }
        match fleet::report(&self.client, &self.namespace, &self.tariff, &now).await {
            Ok(()) => *sent = Some(now),
            Err(e) => tracing::warn!(error = %e, "could not report into the Tariff's status"),
        }
    }

    /// Migrates the database, then gives this Tariff its copy of the
    /// namespace's accounts and tenancies from before they belonged to a
    /// Tariff (once; see `store::adopt_namespace_records`).
    async fn prepare_database(&self) -> Result<(), sqlx::Error> {
        crate::db::migrate(&self.pool).await?;
        let (accounts, tenancies) =
            crate::store::adopt_namespace_records(&self.pool, &self.namespace, &self.tariff).await?;
        if accounts + tenancies > 0 {
            tracing::info!(
                accounts,
                tenancies,
                "adopted the namespace's accounts and tenancies written before they belonged to a Tariff"
            );
        }
        Ok(())
    }

    /// The scheduler: every few seconds, reads the Tariff, checks the
    /// database, runs what is due, and reports.
    pub async fn schedule(self: Arc<Self>, created: DateTime<Utc>, tick: Duration) {
        let mut sent: Option<BillingReport> = None;
        // A fire already run before a restart is not run again.
        let mut last_fire = created;
        let mut migrated = false;
        loop {
            // The database first: nothing runs without it.
            let db = if migrated {
                sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
            } else {
                self.prepare_database().await
            };
            match db {
                Ok(()) => {
                    if !migrated
                        && let Ok(Some(t)) =
                            crate::store::last_scheduled(&self.pool, &self.namespace, &self.tariff).await
                    {
                        last_fire = last_fire.max(t);
                    }
                    migrated = true;
                    self.set_report(|r| r.database_error = None).await;
                }
                Err(e) => {
                    let why = db_error(&e);
                    tracing::warn!(error = %why, "billing database unreachable");
                    self.set_report(|r| r.database_error = Some(format!("cannot reach the billing database: {why}")))
                        .await;
                    self.publish(&mut sent).await;
                    tokio::time::sleep(tick).await;
                    continue;
                }
            }
            match fleet::tariff(&self.client, &self.namespace, &self.tariff).await {
                Ok(view) => {
                    let now = Utc::now();
                    // The request handled last, as this process knows it or,
                    // after a restart, as the status says.
                    let handled = {
                        let mut r = self.report.lock().await;
                        if r.handled_request.is_none() {
                            r.handled_request = view.report.handled_request.clone();
                        }
                        r.handled_request.clone()
                    };
                    if let Some(req) = view.run_request.filter(|r| handled.as_ref() != Some(r)) {
                        self.requested(&req).await;
                    }
                    match view.spec.schedule.parse::<Cron>() {
                        Ok(cron) => {
                            if let Ok(fire) = cron.find_previous_occurrence(&now, true)
                                && fire > last_fire
                            {
                                last_fire = fire;
                                let period = Period::containing(fire - chrono::Duration::seconds(1));
                                self.run_reporting(period, "schedule").await;
                            }
                            if let Ok(next) = cron.find_next_occurrence(&now, false) {
                                let next = jiff::Timestamp::from_second(next.timestamp()).ok().map(Time);
                                self.set_report(|r| r.next_run_time = next).await;
                            }
                        }
                        Err(e) => {
                            self.set_report(|r| r.last_error = Some(format!("schedule {:?}: {e}", view.spec.schedule)))
                                .await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the Tariff"),
            }
            self.publish(&mut sent).await;
            tokio::time::sleep(tick).await;
        }
    }

    async fn requested(&self, req: &str) {
        let period = req.split('/').next().unwrap_or_default();
        match Period::parse(period) {
            Ok(p) => self.run_reporting(p, "request").await,
            Err(e) => {
                tracing::warn!(request = req, "bad run request");
                self.set_report(|r| r.last_error = Some(format!("annotation {}: {e}", fleetward_tariff::ANN_RUN)))
                    .await;
            }
        }
        self.set_report(|r| r.handled_request = Some(req.to_string())).await;
    }

    async fn run_reporting(&self, period: Period, trigger: &str) {
        match self.run_period(period, trigger).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, %period, "billing run failed");
                let database = matches!(e, RunError::Database(_));
                self.set_report(|r| {
                    r.last_error = Some(e.to_string());
                    if database {
                        r.database_error = Some(e.to_string());
                    }
                })
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_password;

    #[test]
    fn the_password_is_found_to_be_masked() {
        assert_eq!(url_password("postgres://u:s3cret@h:5432/db").as_deref(), Some("s3cret"));
        assert_eq!(url_password("postgres://u@h/db"), None);
    }
}
