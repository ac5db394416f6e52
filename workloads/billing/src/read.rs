//! On-demand meter reads (seed 001's "bill generation request forwarded to
//! every device asynchronously"): a signed `read_meter` command to each
//! meter through the gateway's command API, at most `concurrency` requests
//! in flight, then a wait of at most `timeout` for the answers, which come
//! back as readings (`reply_to` = the command's id) through Kafka like any
//! other telemetry and are matched in the readings table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;

use crate::bill::Period;
use crate::db::{self, Answer};
use crate::metrics::Metrics;

/// A client of the gateway's command API.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Why a meter was not asked.
#[derive(Debug, Clone, PartialEq)]
pub enum AskError {
    /// The API could not be reached (connection, TLS, timeout).
    Unreachable(String),
    /// The API answered with a refusal (unknown or disabled device…).
    Refused(u16),
}

impl Gateway {
    /// `base` is the API's `https://host:port`; `ca_pem` the Gateway's CA,
    /// the only root its certificate is checked against.
    pub fn new(base: &str, key: &str, ca_pem: &[u8]) -> Result<Gateway, String> {
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| format!("gateway CA: {e}"))?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Gateway {
            http,
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        })
    }

    /// Sends `read_meter` to `device`; the command's message id.
    pub async fn ask(&self, device: &str, period: Period) -> Result<String, AskError> {
        let res = self
            .http
            .post(format!("{}/command/{device}", self.base))
            .bearer_auth(&self.key)
            .json(&json!({"action": fleetward_protocol::category::READ_METER, "period": period.to_string()}))
            .send()
            .await
            // Without the URL: it is ours, but a reason reads better short.
            .map_err(|e| AskError::Unreachable(e.without_url().to_string()))?;
        if !res.status().is_success() {
            return Err(AskError::Refused(res.status().as_u16()));
        }
        let body: serde_json::Value = res
            .json()
            .await
            .map_err(|e| AskError::Unreachable(e.without_url().to_string()))?;
        body["message_id"]
            .as_str()
            .map(str::to_string)
            .ok_or(AskError::Unreachable("the gateway's answer has no message_id".into()))
    }

    pub fn base(&self) -> &str {
        &self.base
    }
}

/// What the reads gave.
#[derive(Debug, Default)]
pub struct Reads {
    pub asked: usize,
    pub answers: Vec<Answer>,
    pub refused: usize,
    /// Set when no meter could be asked because the API is unreachable.
    pub gateway_error: Option<String>,
    pub took: Duration,
}

/// Which meters to ask, for which month, and how.
pub struct Ask<'a> {
    pub meters: &'a [String],
    pub period: Period,
    /// How long to wait for the answers, from the first request.
    pub timeout: Duration,
    /// Requests in flight at most.
    pub concurrency: usize,
}

/// Asks the meters, then waits for their answers until all came or the
/// timeout passed.
pub async fn read_meters(
    gateway: &Gateway,
    pool: &PgPool,
    ns: &str,
    ask: Ask<'_>,
    metrics: &Metrics,
) -> Result<Reads, sqlx::Error> {
    let Ask {
        meters,
        period,
        timeout,
        concurrency,
    } = ask;
    let started = Instant::now();
    let results: Vec<(String, Result<String, AskError>)> = futures::stream::iter(meters.iter().cloned())
        .map(|m| async move {
            let r = gateway.ask(&m, period).await;
            (m, r)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    // command id → the meter asked: an answer counts only from that meter
    // (another meter quoting the id is not an answer; the gateway has
    // already authenticated who sent each reading).
    let mut asked: HashMap<String, String> = HashMap::new();
    let mut reads = Reads::default();
    let mut unreachable = None;
    for (meter, r) in results {
        match r {
            Ok(id) => {
                asked.insert(id, meter);
            }
            Err(AskError::Refused(code)) => {
                tracing::warn!(meter, code, "the gateway refused the read_meter command");
                metrics.meter_reads.with_label_values(&["refused"]).inc();
                reads.refused += 1;
            }
            Err(AskError::Unreachable(e)) => {
                metrics.meter_reads.with_label_values(&["refused"]).inc();
                reads.refused += 1;
                unreachable.get_or_insert(e);
            }
        }
    }
    reads.asked = asked.len();
    if asked.is_empty() && !meters.is_empty() {
        reads.gateway_error =
            unreachable.map(|e| format!("cannot reach the gateway's command API at {}: {e}", gateway.base));
    }
    let deadline = started + timeout;
    let mut found: Vec<Answer> = Vec::new();
    while !asked.is_empty() {
        let ids: Vec<String> = asked.keys().cloned().collect();
        for a in db::answers(pool, ns, &ids).await? {
            if asked.get(&a.reply_to) == Some(&a.device_id) {
                asked.remove(&a.reply_to);
                found.push(a);
            } else if asked.contains_key(&a.reply_to) {
                tracing::warn!(meter = %a.device_id, "a meter answered a read addressed to another; ignored");
            }
        }
        if asked.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    metrics
        .meter_reads
        .with_label_values(&["answered"])
        .inc_by(found.len() as u64);
    metrics
        .meter_reads
        .with_label_values(&["timeout"])
        .inc_by(asked.len() as u64);
    reads.answers = found;
    reads.took = started.elapsed();
    Ok(reads)
}
