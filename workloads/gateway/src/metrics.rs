//! Prometheus metrics of the gateway.

use fleetward_protocol::Rejection;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Buckets from 50 µs to 5 s, for the gateway's own sub-millisecond times.
const FINE_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    pub registry: Registry,
    /// Every message by outcome (`accepted`, `rejected`, `forward_failed`)
    /// and reason (a rejection reason, or `ok`).
    pub messages: IntCounterVec,
    /// Every MQTT message received on `device/+/data` (seed 004's counter).
    pub mqtt_messages: IntCounter,
    pub forward_latency: HistogramVec,
    /// From receipt to the hand-off to the sinks: the gateway's own time
    /// (queueing for the checks included).
    pub handoff: Histogram,
    /// One group commit of the replay window's ids.
    pub replay_write: Histogram,
    pub replay_cache: IntGauge,
    pub backend_errors: IntCounter,
    pub kafka_errors: IntCounter,
    pub commands: IntCounterVec,
    pub devices: IntGauge,
    pub key_reloads: IntCounter,
    pub audit_dropped: IntCounter,
    pub audit_suppressed: IntCounter,
    pub qos0_dropped: IntCounter,
    pub mqtt_connected: IntGauge,
    pub crl_reloads: IntCounter,
    /// Per device: its last message that passed the checks (see `liveness`).
    pub device_last_seen: GaugeVec,
    /// Devices whose last message is at most three of their reports old.
    pub devices_online: IntGauge,
    /// Each category's reporting cadence, for the silent-device alert.
    pub category_cadence: GaugeVec,
    /// Device status writes (`lastSeen`, `online`) by result: `written`,
    /// `gone` (the Device was deleted), `failed` (tried again later).
    pub device_status_writes: IntCounterVec,
    /// Device status writes due but held back by the write budget.
    pub device_status_pending: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new(
                "fleetward_gateway_messages_total",
                "Device messages by result and reason",
            ),
            &["result", "reason"],
        )
        .expect("metric");
        // Zero series for every reason, so dashboards and alerts see them.
        for r in Rejection::ALL_REASONS {
            messages.with_label_values(&["rejected", r]);
        }
        messages.with_label_values(&["accepted", "ok"]);
        let m = Self {
            messages,
            mqtt_messages: IntCounter::new(
                "fleetward_gateway_mqtt_messages_total",
                "MQTT messages received from devices",
            )
            .expect("metric"),
            forward_latency: HistogramVec::new(
                HistogramOpts::new(
                    "fleetward_gateway_forward_latency_seconds",
                    "From receipt to delivery at the sink",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["sink"],
            )
            .expect("metric"),
            handoff: Histogram::with_opts(
                HistogramOpts::new(
                    "fleetward_gateway_handoff_seconds",
                    "From receipt to the hand-off to the sinks (the gateway's own time)",
                )
                .buckets(FINE_BUCKETS.to_vec()),
            )
            .expect("metric"),
            replay_write: Histogram::with_opts(
                HistogramOpts::new(
                    "fleetward_gateway_replay_write_seconds",
                    "One group commit of accepted message ids to the database",
                )
                .buckets(FINE_BUCKETS.to_vec()),
            )
            .expect("metric"),
            replay_cache: IntGauge::new(
                "fleetward_gateway_replay_cache_entries",
                "Message ids held by the replay cache",
            )
            .expect("metric"),
            backend_errors: IntCounter::new("fleetward_gateway_backend_errors_total", "Failed HTTP backend calls")
                .expect("metric"),
            kafka_errors: IntCounter::new("fleetward_gateway_kafka_errors_total", "Failed Kafka deliveries")
                .expect("metric"),
            commands: IntCounterVec::new(
                Opts::new("fleetward_gateway_commands_total", "Command API calls by result"),
                &["result"],
            )
            .expect("metric"),
            devices: IntGauge::new("fleetward_gateway_registry_devices", "Devices known to the gateway")
                .expect("metric"),
            key_reloads: IntCounter::new(
                "fleetward_gateway_key_reloads_total",
                "Device credential changes picked up",
            )
            .expect("metric"),
            audit_dropped: IntCounter::new(
                "fleetward_gateway_audit_dropped_total",
                "Audit rows not queued (queue full)",
            )
            .expect("metric"),
            audit_suppressed: IntCounter::new(
                "fleetward_gateway_audit_suppressed_total",
                "Refusals over the audit budget: counted in a summary row instead of a row each",
            )
            .expect("metric"),
            qos0_dropped: IntCounter::new(
                "fleetward_gateway_qos0_dropped_total",
                "QoS 0 messages dropped unread because the hand-off queue was full",
            )
            .expect("metric"),
            mqtt_connected: IntGauge::new("fleetward_gateway_mqtt_connected", "1 while connected to the broker")
                .expect("metric"),
            crl_reloads: IntCounter::new(
                "fleetward_gateway_crl_reloads_total",
                "CRL files written for Mosquitto (its plugin has it reload each)",
            )
            .expect("metric"),
            device_last_seen: GaugeVec::new(
                Opts::new(
                    "fleetward_gateway_device_last_seen_timestamp_seconds",
                    "When the device's last message that passed the checks arrived, as a Unix timestamp",
                ),
                &["device", "category"],
            )
            .expect("metric"),
            devices_online: IntGauge::new(
                "fleetward_gateway_devices_online",
                "Devices whose last message is at most three of their category's reports old",
            )
            .expect("metric"),
            category_cadence: GaugeVec::new(
                Opts::new(
                    "fleetward_gateway_category_cadence_seconds",
                    "Seconds between two reports of a device of the category",
                ),
                &["category"],
            )
            .expect("metric"),
            device_status_writes: IntCounterVec::new(
                Opts::new(
                    "fleetward_gateway_device_status_writes_total",
                    "Device status writes of lastSeen and online, by result",
                ),
                &["result"],
            )
            .expect("metric"),
            device_status_pending: IntGauge::new(
                "fleetward_gateway_device_status_pending",
                "Device status writes due but held back by the write budget",
            )
            .expect("metric"),
            registry,
        };
        for c in [
            Box::new(m.messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.mqtt_messages.clone()),
            Box::new(m.forward_latency.clone()),
            Box::new(m.handoff.clone()),
            Box::new(m.replay_write.clone()),
            Box::new(m.replay_cache.clone()),
            Box::new(m.backend_errors.clone()),
            Box::new(m.kafka_errors.clone()),
            Box::new(m.commands.clone()),
            Box::new(m.devices.clone()),
            Box::new(m.key_reloads.clone()),
            Box::new(m.audit_dropped.clone()),
            Box::new(m.audit_suppressed.clone()),
            Box::new(m.qos0_dropped.clone()),
            Box::new(m.mqtt_connected.clone()),
            Box::new(m.crl_reloads.clone()),
            Box::new(m.device_last_seen.clone()),
            Box::new(m.devices_online.clone()),
            Box::new(m.category_cadence.clone()),
            Box::new(m.device_status_writes.clone()),
            Box::new(m.device_status_pending.clone()),
        ] {
            m.registry.register(c).expect("registered once");
        }
        for result in ["written", "gone", "failed"] {
            m.device_status_writes.with_label_values(&[result]);
        }
        m
    }
}
