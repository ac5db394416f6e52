//! The loopback HTTP backend a Gateway forwards to: records what it
//! receives, answers as the seed-003 backend does, and can be switched to
//! an outage (503 to everything).

use std::sync::{Arc, Mutex};

/// One HTTP request the backend received.
#[derive(Clone, Debug)]
pub struct BackendCall {
    pub device: String,
    pub body: String,
}

/// The seed-003 backend: records calls, answers like the seed's example.
pub struct Backend {
    pub url: String,
    pub calls: Arc<Mutex<Vec<BackendCall>>>,
    /// While set, every call gets 503 and is not recorded (an outage).
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    pub async fn start() -> Backend {
        use axum::extract::{Path as UrlPath, State};
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicBool, Ordering};
        type Shared = (Arc<Mutex<Vec<BackendCall>>>, Arc<AtomicBool>);
        let calls: Arc<Mutex<Vec<BackendCall>>> = Arc::default();
        let down: Arc<AtomicBool> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/device/{id}/data",
                axum::routing::post(
                    |State((calls, down)): State<Shared>, UrlPath(id): UrlPath<String>, body: String| async move {
                        if down.load(Ordering::SeqCst) {
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        calls.lock().unwrap().push(BackendCall { device: id, body });
                        axum::Json(serde_json::json!({"status": "received", "alert": "temperature normal"}))
                            .into_response()
                    },
                ),
            )
            .with_state((calls.clone(), down.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend {
            url: format!("http://{addr}"),
            calls,
            down,
        }
    }

    pub fn calls(&self) -> Vec<BackendCall> {
        self.calls.lock().unwrap().clone()
    }
}
