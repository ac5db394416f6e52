//! The metrics-and-health server and the bearer middleware over real HTTP.

use std::net::SocketAddr;

use axum::Router;
use fleetward_service::bearer::{self, BearerKey};
use fleetward_service::http::MetricsServer;
use prometheus::{IntCounter, Registry};

/// Plain HTTP only; reqwest still wants the process's TLS provider chosen.
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(url: String) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn metrics_carry_the_binarys_own_process_and_build_info() {
    let registry = Registry::new();
    let mine = IntCounter::new("fleetward_test_things_total", "Things").unwrap();
    registry.register(Box::new(mine.clone())).unwrap();
    mine.inc_by(3);
    let addr = serve(MetricsServer::new(registry.clone(), "fleetward-test", "1.2.3").router()).await;
    // A second server on the same registry is fine (tests build several).
    let _ = MetricsServer::new(registry, "fleetward-test", "1.2.3");

    let page = get(format!("http://{addr}/metrics")).await;
    assert!(page.status().is_success());
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        page.headers()
    );
    let text = page.text().await.unwrap();
    assert!(text.contains("fleetward_test_things_total 3"), "{text}");
    assert!(
        text.contains(r#"fleetward_build_info{binary="fleetward-test",version="1.2.3"} 1"#),
        "{text}"
    );
    for series in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(text.lines().any(|l| l.starts_with(series)), "no {series} in {text}");
    }

    let health = get(format!("http://{addr}/health")).await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    let old = get(format!("http://{addr}/healthz")).await;
    assert_eq!(old.status(), 404);
}

#[tokio::test]
async fn a_binarys_own_health_check_replaces_ok() {
    let server = MetricsServer::new(Registry::new(), "fleetward-test", "0").health(axum::routing::get(|| async {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not yet")
    }));
    let addr = serve(server.router()).await;
    let health = get(format!("http://{addr}/health")).await;
    assert_eq!(health.status(), 503);
    assert_eq!(health.text().await.unwrap(), "not yet");
}

#[tokio::test]
async fn the_bearer_middleware_lets_only_the_key_through() {
    let key = BearerKey::new("a-long-enough-test-key-0123456789");
    let app = Router::new()
        .route("/thing", axum::routing::get(|| async { "the thing" }))
        .layer(axum::middleware::from_fn_with_state(key, bearer::require));
    let addr = serve(app).await;
    let http = http();
    let url = format!("http://{addr}/thing");

    let ok = http
        .get(&url)
        .bearer_auth("a-long-enough-test-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "the thing");

    for presented in [Some("wrong"), Some(""), None] {
        let mut req = http.get(&url);
        if let Some(k) = presented {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{presented:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "missing or wrong bearer key");
    }
}
