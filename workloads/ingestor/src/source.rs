//! Fetching a station source over HTTP, with retries.
//!
//! The JCDecaux API key travels in the query string, so nothing here ever
//! formats a URL or a `reqwest::Error` that still carries one: errors are
//! stripped with `without_url()` and name the source by a fixed label.

use std::time::Duration;

use fleetward_service::backoff::Backoff;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::station::{self, Malformed, Station};

/// The API key: `Debug`/`Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

#[derive(Clone, Debug)]
pub enum Source {
    JcDecaux {
        base_url: url::Url,
        contract: String,
        api_key: ApiKey,
    },
    Gbfs {
        station_information: url::Url,
        station_status: url::Url,
        system_name: String,
    },
}

/// Why a fetch failed. No variant holds a URL.
#[derive(thiserror::Error, Debug)]
pub enum FetchError {
    #[error("{what}: timed out")]
    Timeout { what: &'static str },
    #[error("{what}: cannot connect: {source}")]
    Connect {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: HTTP {status}")]
    Status {
        what: &'static str,
        status: reqwest::StatusCode,
    },
    #[error("{what}: request failed: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: response is not the expected JSON: {reason}")]
    Body { what: &'static str, reason: String },
}

impl FetchError {
    /// Label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::Status { .. } => "http_status",
            Self::Request { .. } => "request",
            Self::Body { .. } => "body",
        }
    }

    /// Worth another try: the source may recover (overload, restart,
    /// network). A 4xx other than 429 (e.g. a wrong API key) will not.
    fn retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Connect { .. } | Self::Request { .. } => true,
            Self::Status { status, .. } => status.is_server_error() || status.as_u16() == 429,
            // A truncated or half-written body is usually transient too.
            Self::Body { .. } => true,
        }
    }

    fn from_reqwest(what: &'static str, e: reqwest::Error) -> Self {
        let e = e.without_url();
        if e.is_timeout() {
            Self::Timeout { what }
        } else if e.is_connect() {
            Self::Connect { what, source: e }
        } else {
            Self::Request { what, source: e }
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, including the first.
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The shared backoff from `base` to `max`, jittered: spreads retries
    /// of many ingestors hitting the same recovering API.
    pub fn delay(&self, retry: u32) -> Duration {
        Backoff::new(self.base, self.max).delay(retry)
    }
}

pub struct Fetcher {
    pub client: reqwest::Client,
    pub source: Source,
    pub retry: RetryPolicy,
}

/// One poll's result: the stations, and for each one skipped, why.
pub struct Poll {
    pub stations: Vec<Station>,
    pub skipped: Vec<Malformed>,
}

impl Fetcher {
    pub fn new(source: Source, timeout: Duration, retry: RetryPolicy) -> Result<Self, reqwest::Error> {
        // The workspace builds rustls with ring only; make it the process
        // default (a no-op if something already chose one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("fleetward-ingestor/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, source, retry })
    }

    pub async fn poll(&self, metrics: &Metrics) -> Result<Poll, FetchError> {
        match &self.source {
            Source::JcDecaux {
                base_url,
                contract,
                api_key,
            } => {
                let mut url = base_url.clone();
                url.path_segments_mut()
                    .map_err(|_| FetchError::Body {
                        what: "jcdecaux",
                        reason: "base URL cannot have a path".into(),
                    })?
                    .pop_if_empty()
                    .extend(["vls", "v1", "stations"]);
                url.query_pairs_mut()
                    .append_pair("apiKey", &api_key.0)
                    .append_pair("contract", contract);
                let doc = self.get_json("jcdecaux stations", url, metrics).await?;
                let Value::Array(items) = doc else {
                    return Err(FetchError::Body {
                        what: "jcdecaux stations",
                        reason: "not a JSON array".into(),
                    });
                };
                let mut poll = Poll {
                    stations: Vec::with_capacity(items.len()),
                    skipped: Vec::new(),
                };
                for item in items {
                    match station::from_jcdecaux(item, contract) {
                        Ok(s) => poll.stations.push(s),
                        Err(e) => poll.skipped.push(e),
                    }
                }
                Ok(poll)
            }
            Source::Gbfs {
                station_information,
                station_status,
                system_name,
            } => {
                let info = self
                    .get_json("gbfs station_information", station_information.clone(), metrics)
                    .await?;
                let status = self
                    .get_json("gbfs station_status", station_status.clone(), metrics)
                    .await?;
                for (what, doc) in [("gbfs station_information", &info), ("gbfs station_status", &status)] {
                    if doc.pointer("/data/stations").and_then(Value::as_array).is_none() {
                        return Err(FetchError::Body {
                            what,
                            reason: "no data.stations array".into(),
                        });
                    }
                }
                let (stations, skipped) = station::from_gbfs(&info, &status, system_name);
                Ok(Poll { stations, skipped })
            }
        }
    }

    /// GET with retries. `url` is never logged (it may hold the API key).
    async fn get_json(&self, what: &'static str, url: url::Url, metrics: &Metrics) -> Result<Value, FetchError> {
        let mut retry = 0;
        loop {
            let res = self.get_once(what, url.clone()).await;
            match res {
                Ok(v) => return Ok(v),
                Err(e) if e.retryable() && retry + 1 < self.retry.attempts => {
                    let delay = self.retry.delay(retry);
                    tracing::warn!(error = %e, retry = retry + 1, delay_ms = delay.as_millis() as u64, "fetch failed; retrying");
                    metrics.errors.with_label_values(&[e.kind()]).inc();
                    metrics.retries.inc();
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_once(&self, what: &'static str, url: url::Url) -> Result<Value, FetchError> {
        let resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::from_reqwest(what, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status { what, status });
        }
        let body = resp.bytes().await.map_err(|e| FetchError::from_reqwest(what, e))?;
        serde_json::from_slice(&body).map_err(|e| FetchError::Body {
            what,
            reason: format!("line {} column {}: {:?}", e.line(), e.column(), e.classify()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d0 = p.delay(0);
            assert!((50..=100).contains(&(d0.as_millis() as u64)), "{d0:?}");
            let d3 = p.delay(3);
            assert!((400..=800).contains(&(d3.as_millis() as u64)), "{d3:?}");
            let d20 = p.delay(20);
            assert!((500..=1000).contains(&(d20.as_millis() as u64)), "{d20:?}");
        }
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let src = Source::JcDecaux {
            base_url: "http://x".parse().unwrap(),
            contract: "Dublin".into(),
            api_key: ApiKey::new("very-secret-key-123".into()),
        };
        let dbg = format!("{src:?}");
        assert!(!dbg.contains("very-secret-key-123"), "{dbg}");
    }

    #[test]
    fn client_errors_other_than_429_are_not_retried() {
        let s = |c: u16| FetchError::Status {
            what: "x",
            status: reqwest::StatusCode::from_u16(c).unwrap(),
        };
        assert!(s(500).retryable());
        assert!(s(503).retryable());
        assert!(s(429).retryable());
        assert!(!s(403).retryable());
        assert!(!s(404).retryable());
    }
}
