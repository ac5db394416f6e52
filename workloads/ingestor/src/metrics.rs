//! Prometheus metrics served on `/metrics`.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Polls by result (`ok`, `error`).
    pub polls: IntCounterVec,
    pub produced: IntCounter,
    /// Stations skipped because they were malformed.
    pub skipped: IntCounter,
    /// Errors by kind (`timeout`, `connect`, `http_status`, `request`, `body`, `kafka`).
    pub errors: IntCounterVec,
    pub retries: IntCounter,
    pub last_success: Gauge,
    /// The configured seconds between polls, for the stale-feed alert.
    pub poll_interval: Gauge,
    pub poll_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let polls = IntCounterVec::new(
            Opts::new(
                "fleetward_ingestor_polls_total",
                "Polls of the station source, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let produced = IntCounter::new(
            "fleetward_ingestor_stations_produced_total",
            "Station records acknowledged by Kafka",
        )
        .expect("valid metric");
        let skipped = IntCounter::new(
            "fleetward_ingestor_stations_skipped_total",
            "Malformed stations skipped",
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("fleetward_ingestor_errors_total", "Errors, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let retries =
            IntCounter::new("fleetward_ingestor_http_retries_total", "HTTP requests retried").expect("valid metric");
        let last_success = Gauge::new(
            "fleetward_ingestor_last_success_timestamp_seconds",
            "Unix time of the last poll whose stations all reached Kafka",
        )
        .expect("valid metric");
        let poll_interval = Gauge::new(
            "fleetward_ingestor_poll_interval_seconds",
            "Seconds between two polls of the station source (the StationFeed's pollIntervalSeconds)",
        )
        .expect("valid metric");
        let poll_duration = Histogram::with_opts(
            HistogramOpts::new(
                "fleetward_ingestor_poll_duration_seconds",
                "Fetch + produce time of one poll",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )
        .expect("valid metric");
        for c in [
            Box::new(polls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(produced.clone()),
            Box::new(skipped.clone()),
            Box::new(errors.clone()),
            Box::new(retries.clone()),
            Box::new(last_success.clone()),
            Box::new(poll_interval.clone()),
            Box::new(poll_duration.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            polls,
            produced,
            skipped,
            errors,
            retries,
            last_success,
            poll_interval,
            poll_duration,
        }
    }
}
