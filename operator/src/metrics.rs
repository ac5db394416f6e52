//! Prometheus metrics for `/metrics`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    /// What asked for a reconcile (before the controller merges requests
    /// for one object that arrive while it is queued or running).
    pub wakeups: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub devices_ready: IntGauge,
    pub cert_expiry: GaugeVec,
    pub leader: IntGauge,
    pub api_requests: IntCounterVec,
    /// Requests sent to AWS (each attempt, retries included), by operation.
    pub aws_requests: IntCounterVec,
    ready: Mutex<HashSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("fleetward_reconciles_total", "Reconciliations started, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let wakeups = IntCounterVec::new(
            Opts::new(
                "fleetward_reconcile_wakeups_total",
                "Requests for a reconcile, by kind and cause (spec: the object itself changed; gateway, secret, \
                 keys-shard: a related object changed); retries and scheduled requeues are not counted",
            ),
            &["kind", "cause"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "fleetward_reconcile_errors_total",
                "Reconciliations that failed, by kind and error",
            ),
            &["kind", "error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "fleetward_reconcile_duration_seconds",
                "Time spent in one reconciliation",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["kind"],
        )
        .expect("valid metric");
        let devices_ready =
            IntGauge::new("fleetward_devices_ready", "Devices whose Ready condition is True").expect("valid metric");
        let leader = IntGauge::new(
            "fleetward_operator_leader",
            "1 while this replica holds the leader lease and runs the controllers",
        )
        .expect("valid metric");
        let cert_expiry = GaugeVec::new(
            Opts::new(
                "fleetward_certificate_expiry_timestamp_seconds",
                "notAfter of certificates the operator issued, as a Unix timestamp",
            ),
            &["namespace", "name", "certificate"],
        )
        .expect("valid metric");
        let api_requests = IntCounterVec::new(
            Opts::new(
                "fleetward_kube_api_requests_total",
                "Requests this operator sent to the Kubernetes API server, by verb (get, list, watch, create, update, \
                 apply, patch, delete, deletecollection) and resource (with its subresource: devices/status); watches \
                 count once, when opened",
            ),
            &["verb", "resource"],
        )
        .expect("valid metric");
        let aws_requests = IntCounterVec::new(
            Opts::new(
                "fleetward_aws_requests_total",
                "Requests this operator sent to AWS, every attempt (retries included), by operation",
            ),
            &["operation"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(wakeups.clone()),
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(devices_ready.clone()),
            Box::new(cert_expiry.clone()),
            Box::new(leader.clone()),
            Box::new(api_requests.clone()),
            Box::new(aws_requests.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            reconciles,
            wakeups,
            failures,
            duration,
            devices_ready,
            cert_expiry,
            leader,
            api_requests,
            aws_requests,
            ready: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration.
    pub fn start(&self, kind: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.with_label_values(&[kind]).inc();
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    /// Counts `n` reconcile requests of `kind` for `cause`.
    pub fn woken(&self, kind: &str, cause: &str, n: usize) {
        if n > 0 {
            self.wakeups.with_label_values(&[kind, cause]).inc_by(n as u64);
        }
    }

    pub fn failure(&self, kind: &str, error: &crate::Error) {
        self.failures.with_label_values(&[kind, error.metric_label()]).inc();
    }

    /// Records whether a device is ready; the gauge is the size of the set.
    pub fn device_ready(&self, namespace: &str, name: &str, ready: bool) {
        let mut set = self.ready.lock().expect("metrics lock");
        let key = (namespace.to_string(), name.to_string());
        if ready {
            set.insert(key);
        } else {
            set.remove(&key);
        }
        self.devices_ready.set(set.len() as i64);
    }

    pub fn forget_device(&self, namespace: &str, name: &str) {
        self.device_ready(namespace, name, false);
        let _ = self.cert_expiry.remove_label_values(&[namespace, name, "device"]);
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .with_label_values(&[self.kind])
            .observe(self.start.elapsed().as_secs_f64());
    }
}
