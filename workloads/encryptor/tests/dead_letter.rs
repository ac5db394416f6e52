//! The dead-letter topic against real Kafka and PostgreSQL: what the
//! encryptor (the real binary) cannot parse goes there sealed with the
//! keyring, readable nowhere (value, key, headers, log), and the stream
//! goes on.

mod common;

use common::*;
use fleetward_encryptor::dead_letter::{self, DETAIL, OFFSET, PARTITION, REASON, TOPIC};
use fleetward_encryptor::record::Invalid;
use fleetward_keyring::Keyring;
use fleetward_protocol::record::{RecordKey, mac_header};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use serde_json::{Value, json};

fn station(number: u64, last_update: i64, address: &str) -> Value {
    json!({"number": number, "contract_name": "testville", "name": format!("STATION {number}"), "address": address,
        "position": {"lat": 53.3, "lng": -6.2}, "banking": true, "bonus": false, "bike_stands": 20,
        "available_bike_stands": 5, "available_bikes": 15, "status": "OPEN", "last_update": last_update})
}

/// Every place of a dead letter where `marker` is readable: its value, key,
/// header names and header values.
fn leaks(m: &OwnedMessage, marker: &str) -> Vec<String> {
    let has = |b: &[u8]| String::from_utf8_lossy(b).contains(marker);
    let mut out = Vec::new();
    if m.payload().is_some_and(has) {
        out.push(format!("value of offset {}", m.offset()));
    }
    if m.key().is_some_and(has) {
        out.push(format!("key of offset {}", m.offset()));
    }
    for h in m.headers().map(|h| h.iter().collect::<Vec<_>>()).unwrap_or_default() {
        if has(h.key.as_bytes()) || h.value.is_some_and(has) {
            out.push(format!("header {} of offset {}", h.key, m.offset()));
        }
    }
    out
}

/// The documented format of a dead letter's value: a JSON envelope naming
/// the key and holding the Fernet token of the original value.
fn open_by_hand(ring: &Keyring, m: &OwnedMessage) -> Result<Vec<u8>, String> {
    let envelope: Value = serde_json::from_slice(m.payload().unwrap_or_default())
        .map_err(|_| format!("value of offset {} is not a JSON envelope", m.offset()))?;
    let (Some(key_id), Some(token)) = (envelope["key_id"].as_str(), envelope["token"].as_str()) else {
        return Err(format!("envelope of offset {} lacks key_id or token", m.offset()));
    };
    ring.decrypt(key_id, token).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_sealed_and_never_carry_plaintext() {
    let marker = format!("CANARY-{}-SECRET", rand_hex());
    let topic = unique("stations-dlq-sealed");
    let dlq = unique("stations-dlq-sealed-dead");
    let table = unique("st_dlq_sealed");
    let dir = tempfile::tempdir().unwrap();
    let keyring_file = dir.path().join("keyring.json");
    let ring = Keyring::generate();
    write_keyring(&keyring_file, &ring);
    let mut cfg = EncryptorConfig::new(&topic, &table, &keyring_file);
    cfg.dead_letter_topic = Some(dlq.clone());
    let enc = start_encryptor(&cfg, "dlq-sealed-encryptor");
    let pool = pg().await;

    let t = 1_770_000_000_000_i64;
    // The marker in the sensitive fields of a record missing its number.
    let mut missing_number = station(2, t, &format!("{marker} Lane"));
    missing_number["contract_name"] = json!(format!("{marker}-city"));
    missing_number.as_object_mut().unwrap().remove("number");
    // A wrongly typed value: serde's message quotes it (`invalid type:
    // string "…"`), and the quotes inside it are escaped in that message.
    let mut wrong_type = station(3, t, &format!("{marker} Road"));
    wrong_type["bike_stands"] = json!(format!("x\" {marker} \"y"));
    let mut bad_time = station(6, 17_700, &format!("{marker} Quay"));
    bad_time["name"] = json!(marker);
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (missing_number.to_string().into_bytes(), "missing_field"),
        (wrong_type.to_string().into_bytes(), "wrong_type"),
        (
            format!("{{\"number\": 4, \"address\": \"{marker} Street\"").into_bytes(),
            "not_json",
        ),
        (
            format!("{{\"number\": 5, \"address\": \"{marker}\", oops}}").into_bytes(),
            "not_json",
        ),
        (bad_time.to_string().into_bytes(), "invalid_time"),
    ];
    // One key: one partition, so Kafka keeps this order.
    let mut sequence = vec![station(1, t, "1 Main St").to_string().into_bytes()];
    sequence.extend(bad.iter().map(|(b, _)| b.clone()));
    sequence.push(station(7, t, "7 Main St").to_string().into_bytes());
    for payload in &sequence {
        produce(&topic, [("dlq-key".to_string(), payload.clone())]).await;
    }
    wait_until("the two good records", 60, || async { count(&pool, &table).await == 2 }).await;
    let numbers: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT number FROM \"{table}\" ORDER BY number"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(numbers, ["1", "7"], "the stream went on past the bad records");
    wait_until("five dead letters counted", 60, || async {
        enc.metric("fleetward_encryptor_dlq_total") == 5.0
    })
    .await;

    let dead = consume(&dlq, bad.len(), 30);
    assert_eq!(dead.len(), bad.len(), "every bad record in the dead-letter topic");
    let mut found: Vec<String> = dead.iter().flat_map(|m| leaks(m, &marker)).collect();
    if enc.log_text().contains(&marker) {
        found.push("the encryptor's log".into());
    }
    assert!(found.is_empty(), "the marker is readable in: {found:?}");

    for (i, (m, (original, code))) in dead.iter().zip(&bad).enumerate() {
        let offset = (i + 1).to_string();
        let reason = header(m, REASON).unwrap();
        assert!(Invalid::CODES.contains(&reason.as_str()), "{reason}");
        assert_eq!(reason, *code, "reason of offset {offset}");
        assert!(header(m, DETAIL).is_some());
        assert_eq!(header(m, TOPIC).as_deref(), Some(topic.as_str()));
        assert_eq!(header(m, OFFSET), Some(offset));
        assert!(header(m, PARTITION).unwrap().parse::<i32>().is_ok());
        assert_eq!(m.key(), Some(&b"dlq-key"[..]), "the key is kept for reprocessing");
        // Whoever holds the keyring gets the original bytes back exactly,
        // by the documented format or by the encryptor's own `open`.
        assert_eq!(&open_by_hand(&ring, m).unwrap(), original);
        assert_eq!(&dead_letter::open(&ring, m.payload()).unwrap(), original);
    }
    assert_eq!(
        header(&dead[0], DETAIL).as_deref(),
        Some("required field number is missing")
    );
    assert_eq!(
        header(&dead[2], DETAIL).as_deref(),
        Some(format!("not JSON: syntax error at line 1 column {}", bad[2].0.len()).as_str()),
        "the input ended early"
    );
    assert_eq!(enc.metric("fleetward_encryptor_db_inserts_total"), 2.0);
    drop(enc);
    drop_table(&pool, &table).await;
}

/// A Gateway's telemetry record for `message_id` of meter-1.
fn telemetry(message_id: &str, kwh: &str) -> Vec<u8> {
    format!(
        r#"{{"device_id":"meter-1","category":"electricityMeter","timestamp":1770000000,"message_id":"{message_id}",
           "payload":{{"kwh_total":{kwh}}},"received_at":"2026-02-02T02:40:00Z","gateway":"edge","namespace":"ns"}}"#
    )
    .into_bytes()
}

/// A random record key, as the operator makes one: its hex text (the
/// workload's `RECORD_KEY`) and the key.
fn record_key() -> (String, RecordKey) {
    let hex: String = (0..8).map(|_| rand_hex()).collect();
    assert_eq!(hex.len(), 64);
    let key = hex.parse().unwrap();
    (hex, key)
}

/// Telemetry produced to a Gateway's topic by anything but its gateway (no
/// MAC, another key's MAC, a MAC made for another topic, a record changed
/// after it was signed) is dead-lettered as `unsigned` and never stored;
/// the gateway's own record is stored.
#[tokio::test(flavor = "multi_thread")]
async fn telemetry_not_signed_by_its_gateway_is_dead_lettered_not_stored() {
    let topic = unique("telemetry-mac");
    let dlq = unique("telemetry-mac-dead");
    let table = unique("tm_mac");
    let dir = tempfile::tempdir().unwrap();
    let keyring_file = dir.path().join("keyring.json");
    write_keyring(&keyring_file, &Keyring::generate());
    let (hex, key) = record_key();
    let (_, other_key) = record_key();
    let mut cfg = EncryptorConfig::new(&topic, &table, &keyring_file);
    cfg.dead_letter_topic = Some(dlq.clone());
    cfg.kind = Some("telemetry");
    cfg.record_key = Some(hex);
    let enc = start_encryptor(&cfg, "telemetry-mac-encryptor");
    let pool = pg().await;

    let sign = |key: &RecordKey, topic: &str, value: &[u8]| Some(mac_header(key, topic, b"meter-1", value));
    let good = telemetry("m-good", "10.5");
    let other_key_value = telemetry("m-other-key", "99999");
    let other_topic_value = telemetry("m-other-topic", "99999");
    let records = [
        (good.clone(), sign(&key, &topic, &good)),
        (telemetry("m-unsigned", "99999"), None),
        (other_key_value.clone(), sign(&other_key, &topic, &other_key_value)),
        (
            other_topic_value.clone(),
            sign(&key, "another-gateways-topic", &other_topic_value),
        ),
        // Signed as 10.5 kWh, sent as 99999.
        (
            telemetry("m-changed", "99999"),
            sign(&key, &topic, &telemetry("m-changed", "10.5")),
        ),
    ];
    produce_with_headers(&topic, records.map(|(v, h)| ("meter-1".to_string(), v, h))).await;

    let letters = consume(&dlq, 4, 60);
    let reasons: Vec<Option<String>> = letters.iter().map(|m| header(m, REASON)).collect();
    assert_eq!(reasons, vec![Some("unsigned".to_string()); 4], "{}", enc.log_text());
    wait_for_rows(&pool, &table, 1, 30).await;
    let stored: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT message_id FROM {table}")))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, ["m-good"], "only the gateway's record is stored");
    drop_table(&pool, &table).await;
}

/// The same for a StationFeed: the ingestor's records carry the feed's MAC;
/// a station record without it is dead-lettered, never stored.
#[tokio::test(flavor = "multi_thread")]
async fn station_records_not_signed_by_their_ingestor_are_dead_lettered() {
    let topic = unique("stations-mac");
    let dlq = unique("stations-mac-dead");
    let table = unique("st_mac");
    let dir = tempfile::tempdir().unwrap();
    let keyring_file = dir.path().join("keyring.json");
    write_keyring(&keyring_file, &Keyring::generate());
    let (hex, key) = record_key();
    let mut cfg = EncryptorConfig::new(&topic, &table, &keyring_file);
    cfg.dead_letter_topic = Some(dlq.clone());
    cfg.record_key = Some(hex);
    let enc = start_encryptor(&cfg, "stations-mac-encryptor");
    let pool = pg().await;

    let t = 1_770_000_000_000_i64;
    let signed = station(1, t, "1 Signed Street").to_string().into_bytes();
    let forged = station(2, t, "2 Forged Street").to_string().into_bytes();
    let mac = mac_header(&key, &topic, b"1", &signed);
    produce_with_headers(
        &topic,
        [("1".to_string(), signed, Some(mac)), ("2".to_string(), forged, None)],
    )
    .await;
    let letters = consume(&dlq, 1, 60);
    assert_eq!(letters.len(), 1, "{}", enc.log_text());
    assert_eq!(header(&letters[0], REASON).as_deref(), Some("unsigned"));
    wait_for_rows(&pool, &table, 1, 30).await;
    let stored: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT number FROM {table}")))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, ["1"], "only the ingestor's record is stored");
    drop_table(&pool, &table).await;
}
