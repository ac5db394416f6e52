//! Prometheus metrics served on `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Records consumed, by outcome: `stored`, `duplicate` (natural key
    /// already stored: a replay or an unchanged station), `dead_letter`.
    pub records: IntCounterVec,
    /// Rows inserted into PostgreSQL.
    pub db_inserts: IntCounter,
    pub dlq: IntCounter,
    pub batches: IntCounter,
    /// From the first record of a batch arriving to its offsets being committed.
    pub batch_latency: Histogram,
    /// Errors by kind (`db`, `dlq`, `kafka`, `commit`, `keyring`); all retried.
    pub errors: IntCounterVec,
    pub keyring_reloads: IntCounter,
    /// 1 for the key id new rows are encrypted with.
    pub primary_key: IntGaugeVec,
    /// Messages behind the partitions' end, from librdkafka's statistics.
    pub consumer_lag: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let records = IntCounterVec::new(
            Opts::new("fleetward_encryptor_records_total", "Records consumed, by outcome"),
            &["result"],
        )
        .expect("valid metric");
        let db_inserts = IntCounter::new("fleetward_encryptor_db_inserts_total", "Rows inserted into PostgreSQL")
            .expect("valid metric");
        let dlq = IntCounter::new("fleetward_encryptor_dlq_total", "Records sent to the dead-letter topic")
            .expect("valid metric");
        let batches = IntCounter::new("fleetward_encryptor_batches_total", "Batches committed").expect("valid metric");
        let batch_latency = Histogram::with_opts(
            HistogramOpts::new(
                "fleetward_encryptor_batch_latency_seconds",
                "First record of a batch received → rows durable and offsets committed",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("fleetward_encryptor_errors_total", "Errors (all retried), by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let keyring_reloads = IntCounter::new(
            "fleetward_encryptor_keyring_reloads_total",
            "Times a changed keyring was loaded",
        )
        .expect("valid metric");
        let primary_key = IntGaugeVec::new(
            Opts::new(
                "fleetward_encryptor_keyring_primary",
                "1 for the key id new rows are encrypted with",
            ),
            &["key_id"],
        )
        .expect("valid metric");
        let consumer_lag = IntGauge::new(
            "fleetward_encryptor_consumer_lag",
            "Records not yet consumed, summed over assigned partitions",
        )
        .expect("valid metric");
        for c in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(db_inserts.clone()),
            Box::new(dlq.clone()),
            Box::new(batches.clone()),
            Box::new(batch_latency.clone()),
            Box::new(errors.clone()),
            Box::new(keyring_reloads.clone()),
            Box::new(primary_key.clone()),
            Box::new(consumer_lag.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            records,
            db_inserts,
            dlq,
            batches,
            batch_latency,
            errors,
            keyring_reloads,
            primary_key,
            consumer_lag,
        }
    }
}

impl Metrics {
    pub fn set_primary(&self, key_id: &str) {
        self.primary_key.reset();
        self.primary_key.with_label_values(&[key_id]).set(1);
    }
}
