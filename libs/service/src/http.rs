//! The plain-HTTP port every binary serves for Prometheus and probes:
//! `/metrics` (the binary's own registry, plus `process_*` from the
//! process collector and `fleetward_build_info{binary,version}`) and
//! `/health` (`ok`, or the binary's own check).

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::routing::{MethodRouter, get};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

pub const METRICS_PATH: &str = "/metrics";
pub const HEALTH_PATH: &str = "/health";

/// The `/metrics` and `/health` routes of one binary.
pub struct MetricsServer {
    registry: Registry,
    health: MethodRouter,
}

impl MetricsServer {
    /// Serves `registry`, to which it adds the process collector (on Linux)
    /// and `fleetward_build_info{binary,version} 1`. `/health` answers `ok`
    /// until [`health`](Self::health) replaces it.
    pub fn new(registry: Registry, binary: &str, version: &str) -> Self {
        register_build_info(&registry, binary, version);
        #[cfg(target_os = "linux")]
        register(&registry, prometheus::process_collector::ProcessCollector::for_self());
        Self {
            registry,
            health: get(|| async { "ok" }),
        }
    }

    /// A binary's own health check, e.g. `get(handler)`.
    pub fn health(mut self, route: MethodRouter) -> Self {
        self.health = route;
        self
    }

    pub fn router(self) -> Router {
        let registry = self.registry;
        Router::new()
            .route(
                METRICS_PATH,
                get(move || {
                    let page = render(&registry);
                    async move {
                        (
                            [(header::CONTENT_TYPE, TextEncoder::new().format_type().to_string())],
                            page,
                        )
                    }
                }),
            )
            .route(HEALTH_PATH, self.health)
    }

    /// Binds `addr` and serves until the process stops (or the socket
    /// fails).
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving {METRICS_PATH} and {HEALTH_PATH}");
        axum::serve(listener, self.router()).await
    }
}

/// The text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding only fails on a metric family the registry itself refused.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn register_build_info(registry: &Registry, binary: &str, version: &str) {
    let info = IntGaugeVec::new(
        Opts::new(
            "fleetward_build_info",
            "Always 1; the labels say which binary and version this process runs",
        ),
        &["binary", "version"],
    )
    .expect("a valid metric");
    info.with_label_values(&[binary, version]).set(1);
    register(registry, info);
}

/// A second server on the same registry (tests build several) finds the
/// collectors already there: that is fine.
fn register(registry: &Registry, collector: impl prometheus::core::Collector + 'static) {
    match registry.register(Box::new(collector)) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
        Err(e) => tracing::warn!(error = %e, "could not register a collector"),
    }
}
