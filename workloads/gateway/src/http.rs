//! `/metrics` and `/health` (plain HTTP, for Prometheus and probes).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;
use crate::registry::Registry;

#[derive(Clone)]
struct HealthState {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, registry: Arc<Registry>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HealthState>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.metrics.gather(),
                )
            }),
        )
        .route("/health", get(health))
        .with_state(HealthState { metrics, registry });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /health");
    axum::serve(listener, app).await
}

/// Healthy once the device registry is loaded and the broker connected.
async fn health(State(s): State<HealthState>) -> impl IntoResponse {
    let connected = s.metrics.mqtt_connected.get() == 1;
    let synced = s.registry.synced();
    let status = if connected && synced {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"mqtt_connected": connected, "registry_synced": synced, "devices": s.registry.len()})),
    )
}
