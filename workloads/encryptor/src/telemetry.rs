//! Device telemetry: the record the gateway produces for every accepted
//! message (`fleetward_protocol::telemetry`), and the row stored for it.
//! The payload (the readings) is stored as a Fernet token made with the
//! keyring's primary key; who sent it and when stay readable, so rows are
//! found by device and time without decrypting anything.

use chrono::{DateTime, Utc};
use fleetward_keyring::Keyring;
use fleetward_protocol::telemetry::TelemetryRecord;

use crate::record::Invalid;

/// Longest device id, gateway, namespace, category or message id accepted:
/// Kubernetes names are at most 253 characters, message ids far shorter.
const MAX_NAME: usize = 253;
/// The gateway refuses device messages above its limit (16 MiB at most).
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Field names of a telemetry record: the only names a reason may give.
const SCHEMA: [&str; 8] = [
    "device_id",
    "category",
    "timestamp",
    "message_id",
    "payload",
    "received_at",
    "gateway",
    "namespace",
];

/// One stored telemetry row.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryRow {
    pub namespace: String,
    pub gateway: String,
    pub device_id: String,
    pub category: String,
    pub message_id: String,
    /// The device's own timestamp.
    pub device_time: DateTime<Utc>,
    /// When the gateway accepted the message.
    pub received_at: DateTime<Utc>,
    /// Fernet token of the payload JSON, exactly as the device sent it.
    pub payload: String,
}

/// Parses a record and seals its payload with the keyring's primary key.
pub fn seal(payload: Option<&[u8]>, keyring: &Keyring) -> Result<TelemetryRow, Invalid> {
    let bytes = payload.filter(|p| !p.is_empty()).ok_or(Invalid::Empty)?;
    let rec = TelemetryRecord::parse(bytes).map_err(|e| Invalid::from_json(&e, &SCHEMA))?;
    for (field, value) in [
        ("device_id", &rec.device_id),
        ("gateway", &rec.gateway),
        ("category", &rec.category),
        ("message_id", &rec.message_id),
    ] {
        if value.is_empty() || value.len() > MAX_NAME {
            return Err(Invalid::Field(field));
        }
    }
    if rec.namespace.len() > MAX_NAME {
        return Err(Invalid::Field("namespace"));
    }
    if rec.payload.get().len() > MAX_PAYLOAD {
        return Err(Invalid::TooLong);
    }
    const Y2000: i64 = 946_684_800;
    const Y2200: i64 = 7_258_118_400;
    if !(Y2000..Y2200).contains(&rec.timestamp) {
        return Err(Invalid::Time("timestamp"));
    }
    let device_time = DateTime::from_timestamp(rec.timestamp, 0).ok_or(Invalid::Time("timestamp"))?;
    let received_at = DateTime::parse_from_rfc3339(&rec.received_at)
        .map_err(|_| Invalid::Field("received_at"))?
        .with_timezone(&Utc);
    Ok(TelemetryRow {
        namespace: rec.namespace.into_owned(),
        gateway: rec.gateway.into_owned(),
        device_id: rec.device_id.into_owned(),
        category: rec.category.into_owned(),
        message_id: rec.message_id.into_owned(),
        device_time,
        received_at,
        payload: keyring.encrypt(rec.payload.get().as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> serde_json::Value {
        json!({"device_id": "meter-001", "category": "electricityMeter", "timestamp": 1_770_418_469,
            "message_id": "5d0c…", "payload": {"kwh_total": 1234.5, "voltage": 231},
            "received_at": "2026-02-06T22:54:30.120+00:00", "gateway": "edge", "namespace": "fleet-demo"})
    }

    #[test]
    fn seals_the_payload_and_keeps_the_rest_readable() {
        let ring = Keyring::generate();
        let row = seal(Some(record().to_string().as_bytes()), &ring).unwrap();
        assert_eq!(row.device_id, "meter-001");
        assert_eq!(row.namespace, "fleet-demo");
        assert_eq!(row.device_time.timestamp(), 1_770_418_469);
        assert_eq!(row.received_at.timestamp_millis(), 1_770_418_470_120);
        assert!(!row.payload.contains("kwh"), "payload is not readable");
        let plain = ring.decrypt(ring.primary_id(), &row.payload).unwrap();
        assert_eq!(plain, br#"{"kwh_total":1234.5,"voltage":231}"#);
    }

    #[test]
    fn bad_records_are_refused_without_quoting_values() {
        let ring = Keyring::generate();
        let seal_v = |v: serde_json::Value| seal(Some(v.to_string().as_bytes()), &ring);
        assert_eq!(seal(None, &ring), Err(Invalid::Empty));
        assert!(matches!(
            seal(Some(b"{\"device_id\": \"x"), &ring),
            Err(Invalid::NotJson { .. })
        ));
        let mut r = record();
        r.as_object_mut().unwrap().remove("payload");
        assert_eq!(seal_v(r), Err(Invalid::MissingField(Some("payload"))));
        let mut r = record();
        r["device_id"] = json!("");
        assert_eq!(seal_v(r), Err(Invalid::Field("device_id")));
        let mut r = record();
        r["timestamp"] = json!(1_770_418_469_000_i64);
        assert_eq!(seal_v(r), Err(Invalid::Time("timestamp")));
        let mut r = record();
        r["received_at"] = json!("yesterday, secret-value");
        let err = seal_v(r).unwrap_err();
        assert_eq!(err, Invalid::Field("received_at"));
        assert!(!err.to_string().contains("secret-value"));
        // serde quotes a wrongly typed value, escaping its quotes: nothing
        // of it remains in the reason.
        let mut r = record();
        r["timestamp"] = json!("x\" secret-value \"y");
        let err = seal_v(r).unwrap_err();
        assert_eq!(err, Invalid::WrongType);
        assert!(!format!("{err} {err:?}").contains("secret-value"));
    }
}
