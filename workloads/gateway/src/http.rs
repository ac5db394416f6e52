//! `/metrics` and `/health` (plain HTTP, for Prometheus and probes), served
//! by the shared server; the gateway's own part is its health check.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use fleetward_service::http::MetricsServer;
use serde_json::json;

use crate::metrics::Metrics;
use crate::registry::Registry;

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, registry: Arc<Registry>) -> std::io::Result<()> {
    MetricsServer::new(metrics.registry.clone(), "fleetward-gateway", env!("CARGO_PKG_VERSION"))
        .health(get(move || {
            let (metrics, registry) = (metrics.clone(), registry.clone());
            async move { health(&metrics, &registry) }
        }))
        .serve(addr)
        .await
}

/// Healthy once the device registry is loaded and the broker connected.
fn health(metrics: &Metrics, registry: &Registry) -> impl IntoResponse + use<> {
    let connected = metrics.mqtt_connected.get() == 1;
    let synced = registry.synced();
    let status = if connected && synced {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"mqtt_connected": connected, "registry_synced": synced, "devices": registry.len()})),
    )
}
