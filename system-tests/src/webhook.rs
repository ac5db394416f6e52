//! A webhook receiver for Alertmanager, as a user points one at Slack or
//! PagerDuty: an HTTP server on the host's address on the node link (pods
//! reach it there), on its own thread and runtime so that the test's
//! blocking waits never starve it. It keeps every alert of every
//! notification (Alertmanager's webhook JSON, version 4).

use std::sync::{Arc, Mutex};

pub struct AlertReceiver {
    /// What to give Alertmanager (`alertmanager.webhookUrl`).
    pub url: String,
    alerts: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl AlertReceiver {
    /// Listens on `ip`, a port of the system's choosing.
    pub fn start(ip: &str) -> AlertReceiver {
        let alerts: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind the alert receiver");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let kept = alerts.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/alerts",
                    axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| async move {
                        let alerts = body["alerts"].as_array().cloned().unwrap_or_default();
                        kept.lock().unwrap().extend(alerts);
                        axum::http::StatusCode::OK
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        AlertReceiver {
            url: format!("http://{addr}/alerts"),
            alerts,
        }
    }

    /// The alerts received firing (not resolved) that started at `since` or
    /// later and whose labels include all of `labels`.
    pub fn firing_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        labels: &[(&str, &str)],
    ) -> Vec<serde_json::Value> {
        let started = |a: &serde_json::Value| {
            a["startsAt"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= since)
        };
        self.alerts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a["status"] == "firing" && started(a) && labels.iter().all(|(k, v)| a["labels"][*k] == *v))
            .cloned()
            .collect()
    }

    /// Every alert received, for a failure's message.
    pub fn all(&self) -> String {
        serde_json::to_string(&*self.alerts.lock().unwrap()).unwrap()
    }
}
