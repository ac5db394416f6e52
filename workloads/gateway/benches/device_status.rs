//! How many Device status writes (`lastSeen`, `online`) a gateway makes for
//! a fleet of N devices, against the real API server of `./deploy.sh dev-up`:
//!
//!   cargo bench -p fleetward-gateway --bench device_status -- [N] [MINUTES] [WRITES_PER_SECOND]
//!
//! (defaults 10,000 devices, 20 minutes, the budget the operator deploys). The fleet is split evenly over the
//! six categories, each device reporting at its category's cadence (10 s to
//! 15 min) from a phase of its own; a tenth of the devices go silent halfway.
//! Time is simulated, sweep by sweep, so twenty minutes take about one; every
//! write the gateway's `StatusBook` plans is made for real by its
//! `StatusWriter`.
//!
//! Baseline, same run: the writes one status write per message would make
//! (the messages of the same simulated traffic), and what this API server
//! sustains when the writer sends as fast as it can.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use fleetward_gateway::device_status::{StatusBook, StatusUpdate, StatusWriter};
use fleetward_gateway::liveness::{ONLINE_WITHIN_REPORTS, SWEEP};
use fleetward_gateway::metrics::Metrics;
use fleetward_protocol::Category;
use fleetward_testkit::{TestNs, install_crds, percentile};
use futures::StreamExt;
use kube::api::PostParams;

/// The budget the operator deploys (`DEVICE_STATUS_WRITES_PER_SECOND`).
const WRITES_PER_SECOND: f64 = 50.0;

struct Device {
    id: String,
    category: Category,
    cadence: f64,
    phase: f64,
    /// Silent from this simulated second on.
    silent_from: Option<f64>,
}

impl Device {
    /// Its last message at or before `t`, if any.
    fn last_message(&self, t: f64) -> Option<f64> {
        let t = self.silent_from.map_or(t, |s| t.min(s - 0.001));
        (t >= self.phase).then(|| self.phase + ((t - self.phase) / self.cadence).floor() * self.cadence)
    }

    fn messages_until(&self, t: f64) -> f64 {
        self.last_message(t)
            .map_or(0.0, |last| ((last - self.phase) / self.cadence).floor() + 1.0)
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let n: usize = args.first().map_or(10_000, |a| a.parse().expect("N is a number"));
    let minutes: f64 = args.get(1).map_or(20.0, |a| a.parse().expect("MINUTES is a number"));
    let budget: f64 = args
        .get(2)
        .map_or(WRITES_PER_SECOND, |a| a.parse().expect("WRITES_PER_SECOND is a number"));
    install_crds();
    let ns = TestNs::new("bench-status").await;
    let api = ns.dynamic("fleetward.io/v1alpha1", "Device");

    // The fleet, as Device objects (no operator runs: only their status is written).
    let t = Instant::now();
    let fleet: Vec<Device> = (0..n)
        .map(|i| {
            let category = Category::ALL[i % Category::ALL.len()];
            let cadence = category.default_cadence().as_secs_f64();
            Device {
                id: format!("dev-{i:05}"),
                category,
                cadence,
                phase: ((i * 7919) % 1000) as f64 / 1000.0 * cadence,
                silent_from: None,
            }
        })
        .collect();
    let created = futures::stream::iter(&fleet)
        .map(|d| {
            let api = api.clone();
            let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "fleetward.io/v1alpha1", "kind": "Device",
                "metadata": {"name": d.id},
                "spec": {"gatewayRef": "gw", "category": d.category.as_str()},
            }))
            .expect("a Device");
            async move { api.create(&PostParams::default(), &obj).await.map(drop) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let failed = created.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        failed,
        0,
        "creating the Devices: {:?}",
        created.into_iter().find_map(Result::err)
    );
    println!("{n} Devices created in {:.1} s", t.elapsed().as_secs_f64());

    // The simulation: one sweep per SWEEP of simulated time.
    let mut fleet = fleet;
    let duration = minutes * 60.0;
    let start = chrono::Utc::now().timestamp() as f64;
    for d in fleet.iter_mut().step_by(10) {
        d.silent_from = Some(duration / 2.0);
    }
    let registry: Vec<(String, Category)> = fleet.iter().map(|d| (d.id.clone(), d.category)).collect();
    let metrics = Arc::new(Metrics::default());
    let writer = StatusWriter::new(ns.client.clone(), &ns.name, metrics.clone());
    let mut book = StatusBook::new(start - 1.0, budget);
    let sweep = SWEEP.as_secs_f64();
    let mut written_offline: HashMap<String, f64> = HashMap::new();
    let mut written_seen: HashMap<String, f64> = HashMap::new();
    let mut writes_after_start = 0usize;
    let mut max_held = 0usize;
    let mut write_times = Vec::new();
    let real = Instant::now();
    let mut t = sweep;
    while t <= duration {
        let seen: HashMap<String, (Category, f64)> = fleet
            .iter()
            .filter_map(|d| Some((d.id.clone(), (d.category, start + d.last_message(t)?))))
            .collect();
        let (updates, held) = book.due(start + t, &registry, &seen);
        max_held = max_held.max(held);
        for u in &updates {
            if !u.online {
                written_offline.entry(u.device.clone()).or_insert(t);
            }
            if let Some(seen) = u.last_seen {
                written_seen.insert(u.device.clone(), seen - start);
            }
        }
        // Steady state: after the first ten minutes' catch-up.
        if t > 600.0 {
            writes_after_start += updates.len();
        }
        let w = Instant::now();
        let count = updates.len();
        writer.write(&mut book, updates).await;
        if count > 0 {
            write_times.push(w.elapsed().as_secs_f64() / count as f64);
        }
        t += sweep;
    }
    let real_secs = real.elapsed().as_secs_f64();
    // How far the lastSeen written lags the device's true last message, at
    // the end, for the devices still reporting.
    let mut behind: Vec<f64> = fleet
        .iter()
        .filter(|d| d.silent_from.is_none())
        .filter_map(|d| Some(d.last_message(duration)? - written_seen.get(&d.id)?))
        .collect();
    let written = metrics.device_status_writes.with_label_values(&["written"]).get();
    let errors = metrics.device_status_writes.with_label_values(&["failed"]).get();
    assert_eq!(errors, 0, "every write reached the API server");
    let messages: f64 = fleet.iter().map(|d| d.messages_until(duration)).sum();

    // How long after a silent device went offline (three missed reports)
    // its status said so, for those that went offline within the run.
    let mut delays: Vec<f64> = fleet
        .iter()
        .filter_map(|d| {
            let last = d.last_message(duration)?;
            let offline_at = last + d.cadence * f64::from(ONLINE_WITHIN_REPORTS);
            (offline_at + sweep <= duration).then(|| written_offline.get(&d.id).map(|w| w - offline_at))?
        })
        .collect();
    let went_offline = delays.len();
    let missed = fleet
        .iter()
        .filter(|d| d.silent_from.is_some())
        .filter_map(|d| d.last_message(duration).map(|l| (d, l)))
        .filter(|(d, l)| l + d.cadence * f64::from(ONLINE_WITHIN_REPORTS) + 2.0 * sweep <= duration)
        .filter(|(d, _)| !written_offline.contains_key(&d.id))
        .count();
    assert_eq!(missed, 0, "every silent device was written offline");
    let wrongly = written_offline
        .keys()
        .filter(|id| fleet.iter().any(|d| &d.id == *id && d.silent_from.is_none()))
        .count();
    assert_eq!(wrongly, 0, "no reporting device was written offline");

    // Baseline: the API server's own pace for the same patch, as fast as
    // the writer's concurrency allows (one status write per message would
    // need the message rate).
    let burst: Vec<StatusUpdate> = fleet
        .iter()
        .take(2000.min(n))
        .map(|d| StatusUpdate {
            device: d.id.clone(),
            last_seen: Some(start + duration),
            online: true,
        })
        .collect();
    let burst_len = burst.len();
    let mut unpaced = StatusBook::new(start, 0.0);
    let b = Instant::now();
    writer.write(&mut unpaced, burst).await;
    let capacity = burst_len as f64 / b.elapsed().as_secs_f64();

    let per_message = messages / duration;
    let steady = writes_after_start as f64 / (duration - 600.0).max(sweep);
    println!(
        "{n} devices, {minutes} simulated minutes in {real_secs:.1} s: {written} status writes \
         ({:.1}/s over the run, {steady:.1}/s after the first 10 min; budget {budget}/s, \
         most held back at once {max_held})",
        written as f64 / duration
    );
    println!(
        "baseline, one write per message: {messages:.0} writes ({per_message:.1}/s) — {:.1}x the paced writer's",
        per_message / (written as f64 / duration)
    );
    println!(
        "the API server sustains {capacity:.0} status patches/s here ({burst_len} as fast as 8 in flight go): \
         one write per message would take {:.0} % of it, the paced writer {:.0} %",
        100.0 * per_message / capacity,
        100.0 * steady / capacity
    );
    println!(
        "per write (batch time / writes): p50 {:.1} ms; lastSeen resolution with all {n} online {:.0} s",
        percentile(&mut write_times, 50.0) * 1000.0,
        book.resolution(n)
    );
    println!(
        "lastSeen in the status behind the last message (reporting devices, at the end): p50 {:.0} s, max {:.0} s",
        percentile(&mut behind, 50.0),
        percentile(&mut behind, 100.0)
    );
    if went_offline > 0 {
        println!(
            "{went_offline} devices went silent: written offline p50 {:.0} s, max {:.0} s after their third missed report",
            percentile(&mut delays, 50.0),
            percentile(&mut delays, 100.0)
        );
    }
    ns.cleanup().await;
}
