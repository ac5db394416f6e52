//! Prometheus metrics served on `/metrics`.

use prometheus::{CounterVec, Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Bills written by runs (new bills and new revisions), by tariff.
    pub bills: IntCounterVec,
    /// Bills a re-run found unchanged, by tariff.
    pub unchanged: IntCounterVec,
    /// Runs by tariff and result (`ok`, `failed`).
    pub runs: IntCounterVec,
    pub run_duration: Histogram,
    /// On-demand reads by result: `answered`, `timeout` (the bill is
    /// estimated), `refused` (the gateway would not send the command).
    pub meter_reads: IntCounterVec,
    /// Amounts billed by runs, by currency (in its major unit).
    pub billed: CounterVec,
    /// Readings from Kafka by outcome: `stored`, `duplicate`, `other_category`,
    /// `invalid`.
    pub readings: IntCounterVec,
    /// API requests by route and status code.
    pub api: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let bills = counter(
            "fleetward_billing_bills_generated_total",
            "Bills written by runs (new bills and revisions)",
            &["tariff"],
        );
        let unchanged = counter(
            "fleetward_billing_bills_unchanged_total",
            "Bills a re-run found unchanged",
            &["tariff"],
        );
        let runs = counter(
            "fleetward_billing_runs_total",
            "Billing runs, by result",
            &["tariff", "result"],
        );
        let meter_reads = counter(
            "fleetward_billing_meter_reads_total",
            "On-demand meter reads, by result",
            &["result"],
        );
        let readings = counter(
            "fleetward_billing_readings_total",
            "Telemetry records consumed, by outcome",
            &["result"],
        );
        let api = counter(
            "fleetward_billing_api_requests_total",
            "HTTP API requests, by route and status",
            &["route", "code"],
        );
        let run_duration = Histogram::with_opts(
            HistogramOpts::new(
                "fleetward_billing_run_duration_seconds",
                "A billing run, from start to bills saved",
            )
            .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(run_duration.clone()))
            .expect("unique metric");
        let billed = CounterVec::new(
            Opts::new(
                "fleetward_billing_billed_amount_total",
                "Amounts billed by runs, by currency",
            ),
            &["currency"],
        )
        .expect("valid metric");
        registry.register(Box::new(billed.clone())).expect("unique metric");
        Metrics {
            registry,
            bills,
            unchanged,
            runs,
            run_duration,
            meter_reads,
            billed,
            readings,
            api,
        }
    }
}
