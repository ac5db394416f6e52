//! The command API (seed 003): `POST /command/{device_id}` over HTTPS with
//! `Authorization: Bearer <key>`. The body (a JSON object) becomes the
//! payload of a command signed with the device's HMAC secret and published
//! to `device/{id}/command`.
//!
//! Two keys: the command key, for any command to any device, and the meter
//! key (`COMMAND_METER_KEY`), which the billing workloads hold: admitted
//! only for `{"action": "read_meter", "period": …}` sent to an electricity
//! meter, so a billing pod cannot unlock a lock. Anything else with it is
//! 403 `out_of_scope`, audited.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use fleetward_protocol::category::READ_METER;
use fleetward_protocol::{Category, Command, RawValue, command_topic, new_message_id};
use fleetward_service::bearer::{self, BearerKey};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

use crate::audit::{Audit, AuditEvent};
use crate::bucket::Bucket;
use crate::metrics::Metrics;
use crate::registry::Registry;

const MAX_BODY: usize = 64 * 1024;

/// Shortest bearer key the gateway starts with (the operator generates 64
/// hex characters; a key given through `apiKeySecretRef` must be as long
/// to be out of a guesser's reach).
pub const MIN_KEY_LEN: usize = 32;

/// Failed authentications allowed per client address: a burst, then one a
/// second. Beyond that the address gets 429 before its key is looked at,
/// with no audit row each (the metric still counts them): guessing is
/// slowed and a flood of bad keys costs bounded audit writes and log.
const FAILURE_BURST: f64 = 10.0;
const FAILURE_REFILL_PER_SEC: f64 = 1.0;
/// Addresses tracked at once; past that the table starts over (memory is
/// bounded whatever the number of addresses a caller uses).
const MAX_TRACKED: usize = 10_000;
/// Most of a path's device id that an audit row of a refused call keeps.
const AUDIT_ID_CHARS: usize = 64;

/// Per-address budgets of failed authentications.
#[derive(Default)]
struct Failures(Mutex<HashMap<IpAddr, Bucket>>);

impl Failures {
    /// True when `ip` has used up its failures for now.
    fn throttled(&self, ip: IpAddr) -> bool {
        let mut map = self.0.lock().expect("failures lock");
        map.get_mut(&ip).is_some_and(|b| {
            b.refill(Instant::now(), FAILURE_REFILL_PER_SEC, FAILURE_BURST);
            !b.has_token()
        })
    }

    fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.0.lock().expect("failures lock");
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.clear();
        }
        let b = map.entry(ip).or_insert_with(|| Bucket::full(FAILURE_BURST, now));
        b.refill(now, FAILURE_REFILL_PER_SEC, FAILURE_BURST);
        b.spend();
    }
}

/// What a caller's key allows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scope {
    /// The command key: any command to any device.
    Any,
    /// The meter key: `read_meter` to electricity meters only.
    ReadMeter,
}

/// The one command the meter key may send: exactly these fields, each
/// once (a body with `action` twice, or any other field, is refused, so
/// what the device reads is what was checked).
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ReadMeter {
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    period: Option<String>,
}

/// The payload a meter-key caller may send to a device of `category`: the
/// read_meter command re-written from what was checked, or why not.
fn meter_command(category: Category, body: &str) -> Result<Box<RawValue>, &'static str> {
    if category != Category::ElectricityMeter {
        return Err("this key may only send read_meter to electricity meters");
    }
    if !body.trim_start().starts_with('{') {
        return Err("the body must be a JSON object");
    }
    let cmd: ReadMeter =
        serde_json::from_str(body).map_err(|_| "this key may only send {\"action\": \"read_meter\", \"period\": …}")?;
    if cmd.action != READ_METER {
        return Err("this key may only send read_meter");
    }
    let text = serde_json::to_string(&cmd).expect("a struct of strings serializes");
    Ok(RawValue::from_string(text).expect("serialized JSON"))
}

#[derive(Clone)]
pub struct ApiState {
    key: BearerKey,
    meter_key: Option<BearerKey>,
    registry: Arc<Registry>,
    mqtt: AsyncClient,
    audit: Audit,
    metrics: Arc<Metrics>,
    failures: Arc<Failures>,
}

impl ApiState {
    pub fn new(
        api_key: &str,
        meter_key: Option<&str>,
        registry: Arc<Registry>,
        mqtt: AsyncClient,
        audit: Audit,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            key: BearerKey::new(api_key),
            meter_key: meter_key.map(BearerKey::new),
            registry,
            mqtt,
            audit,
            metrics,
            failures: Arc::default(),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/command/{device_id}", post(send_command))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn send_command(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if st.failures.throttled(peer.ip()) {
        st.metrics.commands.with_label_values(&["throttled"]).inc();
        let mut r = reply(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "too many failed authentications; retry later"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, "1".parse().expect("static header"));
        return r;
    }
    let scope = if st.key.admits(&headers) {
        Some(Scope::Any)
    } else if st.meter_key.as_ref().is_some_and(|k| k.admits(&headers)) {
        Some(Scope::ReadMeter)
    } else {
        None
    };
    let Some(scope) = scope else {
        st.failures.failed(peer.ip());
        st.metrics.commands.with_label_values(&["unauthorized"]).inc();
        let shown: String = device_id.chars().take(AUDIT_ID_CHARS).collect();
        st.audit.record(
            AuditEvent::new("command_unauthorized")
                .device(&shown)
                .detail(format!("from {}", peer.ip())),
        );
        return bearer::refusal();
    };
    let refuse = |status: StatusCode, reason: &str, msg: &str| {
        st.metrics.commands.with_label_values(&[reason]).inc();
        st.audit
            .record(AuditEvent::new("command_refused").device(&device_id).reason(reason));
        reply(status, json!({"error": msg}))
    };
    let Some(entry) = st.registry.get(&device_id) else {
        return refuse(StatusCode::NOT_FOUND, "unknown_device", "unknown device");
    };
    if !entry.enabled {
        return refuse(StatusCode::CONFLICT, "disabled_device", "device is disabled");
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "bad_body", "body must be a JSON object");
    };
    let payload = match scope {
        Scope::Any => match RawValue::from_string(text.trim().to_string()) {
            Ok(p) if p.get().starts_with('{') => p,
            _ => return refuse(StatusCode::BAD_REQUEST, "bad_body", "body must be a JSON object"),
        },
        Scope::ReadMeter => match meter_command(entry.category, text) {
            Ok(p) => p,
            Err(why) => return refuse(StatusCode::FORBIDDEN, "out_of_scope", why),
        },
    };
    let message_id = new_message_id();
    let cmd = Command::sign(
        &entry.key,
        &device_id,
        chrono::Utc::now().timestamp(),
        &message_id,
        payload,
    );
    if let Err(e) = st
        .mqtt
        .publish(command_topic(&device_id), QoS::AtLeastOnce, false, cmd.to_json())
        .await
    {
        tracing::error!(error = %e, "could not queue command");
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "publish_failed", "broker unavailable");
    }
    st.metrics.commands.with_label_values(&["sent"]).inc();
    st.audit.record(
        AuditEvent::new("command_sent")
            .device(&device_id)
            .message_id(Some(&message_id)),
    );
    reply(
        StatusCode::ACCEPTED,
        json!({"message_id": message_id, "topic": command_topic(&device_id)}),
    )
}

/// Serves the API over TLS with the broker's server certificate.
pub async fn serve(
    addr: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    state: ApiState,
) -> std::io::Result<()> {
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
    tracing::info!(%addr, "command API listening (HTTPS)");
    axum_server::bind_rustls(addr, tls)
        .serve(router(state).into_make_service_with_connect_info::<SocketAddr>())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_key_sends_read_meter_to_meters_and_nothing_else() {
        let ok = meter_command(
            Category::ElectricityMeter,
            r#"{"action": "read_meter", "period": "2026-11"}"#,
        )
        .unwrap();
        assert_eq!(ok.get(), r#"{"action":"read_meter","period":"2026-11"}"#);
        assert!(meter_command(Category::ElectricityMeter, r#"{"action":"read_meter"}"#).is_ok());
        for refused in [
            r#"{"action": "unlock"}"#,
            r#"{"action": "read_meter", "action": "unlock"}"#,
            r#"{"action": "read_meter", "then": "unlock"}"#,
            r#"["read_meter"]"#,
            "",
        ] {
            assert!(meter_command(Category::ElectricityMeter, refused).is_err(), "{refused}");
        }
        assert!(meter_command(Category::SmartLock, r#"{"action": "read_meter"}"#).is_err());
    }
}
