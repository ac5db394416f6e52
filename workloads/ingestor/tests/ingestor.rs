//! The ingestor binary against a loopback station API and real Kafka.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn dublin_stations_reach_kafka_keyed_by_station_number() {
    let base = serve(axum::Router::new().route(
        "/vls/v1/stations",
        get(|Query(q): Query<HashMap<String, String>>| async move {
            // The API's contract: key and contract in the query string.
            if q.get("apiKey").map(String::as_str) != Some("k-dublin")
                || q.get("contract").map(String::as_str) != Some("Dublin")
            {
                return (StatusCode::FORBIDDEN, String::new());
            }
            (StatusCode::OK, dublin_text())
        }),
    ))
    .await;
    let topic = unique("ingest-dublin");
    let ing = start_ingestor(
        &topic,
        &[
            ("STATION_SOURCE", "jcdecaux"),
            ("JCDECAUX_BASE_URL", &base),
            ("JCDECAUX_CONTRACT", "Dublin"),
            ("JCDECAUX_API_KEY", "k-dublin"),
            ("POLL_INTERVAL_SECONDS", "60"),
        ],
        "info",
    );
    let got = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || consume_by_key(&topic, 114, 60)
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 114, "one record per station");
    for s in dublin() {
        assert_eq!(got[&s["number"].to_string()], s, "record = the station's JSON");
    }
    wait_until("metrics", 10, || async {
        ing.metric("fleetward_ingestor_stations_produced_total") == 114.0
    })
    .await;
    assert_eq!(ing.metric("fleetward_ingestor_polls_total{result=\"ok\"}"), 1.0);
    assert!(ing.metric("fleetward_ingestor_last_success_timestamp_seconds") > 1.7e9);
    assert_eq!(ing.metric("fleetward_ingestor_stations_skipped_total"), 0.0);
}

/// HTTP 500s, 503s and timeouts are retried with backoff; a poll whose
/// retries all fail is counted and the next poll succeeds; the process
/// never exits. Run at trace level with a distinctive API key: the key
/// (which travels in the URL) appears nowhere in the log.
#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_timeouts_are_retried_and_the_api_key_is_never_logged() {
    const KEY: &str = "SECRET-apikey-7d41c0ffee";
    let calls = Arc::new(AtomicUsize::new(0));
    // Per request, in order: poll 1 = 500, timeout, 503, ok (3 retries);
    // poll 2 = four 500s (gives up); poll 3 = ok.
    let script = ["500", "slow", "503", "ok", "500", "500", "500", "500", "ok"];
    let base = serve(axum::Router::new().route(
        "/vls/v1/stations",
        get({
            let calls = calls.clone();
            move |Query(q): Query<HashMap<String, String>>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert_eq!(q.get("apiKey").map(String::as_str), Some(KEY));
                    match script.get(n).copied().unwrap_or("ok") {
                        "500" => (StatusCode::INTERNAL_SERVER_ERROR, format!("boom, your key was {KEY}")),
                        "503" => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            (StatusCode::OK, dublin_text())
                        }
                        _ => (StatusCode::OK, dublin_text()),
                    }
                }
            }
        }),
    ))
    .await;
    let topic = unique("ingest-flaky");
    let mut ing = start_ingestor(
        &topic,
        &[
            ("STATION_SOURCE", "jcdecaux"),
            ("JCDECAUX_BASE_URL", &base),
            ("JCDECAUX_CONTRACT", "Dublin"),
            ("JCDECAUX_API_KEY", KEY),
            ("POLL_INTERVAL_SECONDS", "1"),
            ("HTTP_TIMEOUT_MS", "500"),
            ("HTTP_RETRY_ATTEMPTS", "4"),
            ("HTTP_RETRY_BASE_MS", "50"),
        ],
        "trace",
    );
    wait_until("three polls (two ok, one failed)", 60, || async {
        ing.metric("fleetward_ingestor_polls_total{result=\"ok\"}") >= 2.0
    })
    .await;
    assert!(ing.alive(), "the ingestor keeps running");
    let m = ing.metrics();
    assert_eq!(metric_in(&m, "fleetward_ingestor_polls_total{result=\"error\"}"), 1.0);
    assert!(calls.load(Ordering::SeqCst) >= 9);
    // 3 retries in poll 1, 3 in poll 2; later polls need none.
    assert_eq!(metric_in(&m, "fleetward_ingestor_http_retries_total"), 6.0);
    assert_eq!(metric_in(&m, "fleetward_ingestor_errors_total{kind=\"timeout\"}"), 1.0);
    // 500, 503 (retried) + 3 retried 500s + the final 500 of poll 2.
    assert_eq!(
        metric_in(&m, "fleetward_ingestor_errors_total{kind=\"http_status\"}"),
        6.0
    );
    let ok = metric_in(&m, "fleetward_ingestor_polls_total{result=\"ok\"}");
    assert_eq!(metric_in(&m, "fleetward_ingestor_stations_produced_total"), 114.0 * ok);
    let got = tokio::task::spawn_blocking(move || consume_by_key(&topic, 114, 60))
        .await
        .unwrap();
    assert_eq!(got.len(), 114);

    let log = ing.log_text();
    assert!(log.contains("timed out"), "the log says what happened:\n{log}");
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(log.len() > 10_000, "trace logging was on ({} bytes)", log.len());
    for needle in [KEY, "apikey-7d41", "apiKey="] {
        assert!(!log.contains(needle), "the log contains {needle:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_stations_are_skipped_and_counted() {
    let mut stations = dublin();
    let mut no_number = stations[0].clone();
    no_number.as_object_mut().unwrap().remove("number");
    let mut null_update = stations[1].clone();
    null_update["last_update"] = Value::Null;
    stations.insert(5, no_number);
    stations.insert(50, null_update);
    stations.insert(60, json!("not a station"));
    let body = serde_json::to_string(&stations).unwrap();
    let base = serve(axum::Router::new().route("/vls/v1/stations", get(move || async move { body }))).await;
    let topic = unique("ingest-malformed");
    let ing = start_ingestor(
        &topic,
        &[
            ("STATION_SOURCE", "jcdecaux"),
            ("JCDECAUX_BASE_URL", &base),
            ("JCDECAUX_CONTRACT", "Dublin"),
            ("JCDECAUX_API_KEY", "k"),
        ],
        "info",
    );
    wait_until("one poll", 30, || async {
        ing.metric("fleetward_ingestor_polls_total{result=\"ok\"}") == 1.0
    })
    .await;
    assert_eq!(ing.metric("fleetward_ingestor_stations_skipped_total"), 3.0);
    assert_eq!(ing.metric("fleetward_ingestor_stations_produced_total"), 114.0);
    let got = tokio::task::spawn_blocking(move || consume_by_key(&topic, 115, 15))
        .await
        .unwrap();
    assert_eq!(got.len(), 114, "every well-formed station, nothing else");
    assert!(ing.log_text().contains("skipping malformed station"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gbfs_information_and_status_are_joined_by_station_id() {
    let info = json!({"last_updated": 1770418469, "ttl": 60, "data": {"stations": [
        {"station_id": "101", "name": "Harbour", "address": "1 Harbour Rd", "lat": 60.1, "lon": 24.9, "capacity": 12},
        {"station_id": "102", "name": "Market", "lat": 60.2, "lon": 24.8, "capacity": 8},
        {"station_id": "103", "name": "Closed for works", "lat": 60.3, "lon": 24.7}
    ]}});
    let status = json!({"last_updated": 1770418469, "ttl": 60, "data": {"stations": [
        {"station_id": "101", "num_bikes_available": 4, "num_docks_available": 8, "is_installed": 1, "is_renting": 1,
         "is_returning": 1, "last_reported": 1770418400},
        {"station_id": "102", "num_bikes_available": 0, "num_docks_available": 8, "is_installed": 1, "is_renting": 0,
         "is_returning": 1, "last_reported": 1770418300}
    ]}});
    let base = serve(
        axum::Router::new()
            .route(
                "/gbfs/en/station_information.json",
                get(move || async move { axum::Json(info) }),
            )
            .route(
                "/gbfs/en/station_status.json",
                get(move || async move { axum::Json(status) }),
            ),
    )
    .await;
    let topic = unique("ingest-gbfs");
    let ing = start_ingestor(
        &topic,
        &[
            ("STATION_SOURCE", "gbfs"),
            (
                "GBFS_STATION_INFORMATION_URL",
                &format!("{base}/gbfs/en/station_information.json"),
            ),
            (
                "GBFS_STATION_STATUS_URL",
                &format!("{base}/gbfs/en/station_status.json"),
            ),
            ("GBFS_SYSTEM_NAME", "Helsinki"),
        ],
        "info",
    );
    let got = tokio::task::spawn_blocking(move || consume_by_key(&topic, 2, 30))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got["101"],
        json!({"number": 101, "contract_name": "Helsinki", "name": "Harbour", "address": "1 Harbour Rd",
            "position": {"lat": 60.1, "lng": 24.9}, "banking": false, "bonus": false, "bike_stands": 12,
            "available_bike_stands": 8, "available_bikes": 4, "status": "OPEN", "last_update": 1770418400000_i64})
    );
    assert_eq!(got["102"]["status"], "CLOSED");
    assert_eq!(got["102"]["address"], "");
    // 103 has no status entry: skipped and counted.
    wait_until("skip counted", 10, || async {
        ing.metric("fleetward_ingestor_stations_skipped_total") == 1.0
    })
    .await;
}

/// `--help` shows which variables are read, never the API key's value.
#[test]
fn help_does_not_print_the_api_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetward-ingestor"))
        .arg("--help")
        .env("JCDECAUX_API_KEY", "SECRET-from-env-1234")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("JCDECAUX_API_KEY"), "{text}");
    assert!(!text.contains("SECRET-from-env-1234"), "{text}");
}
