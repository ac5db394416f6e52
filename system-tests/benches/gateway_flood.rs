//! The gateway under a flood of refused messages from one device, against
//! the same traffic without the flood, in one run on one machine.
//!
//!   ./deploy.sh dev-up --no-stack   # services
//!   cargo build --release -p fleetward-gateway
//!   cargo bench -p fleetward-system-tests --bench gateway_flood [-- FLOOD_SECONDS RATE]
//!
//! Five devices send RATE valid messages a second in all (default 100);
//! the send time rides in each message id and a Kafka consumer measures
//! publish → record. Phase 1 (baseline): that traffic alone for 15 s.
//! Phase 2: the same while a sixth device publishes, as fast as its
//! connection takes them, 60 KB bodies that are not JSON (QoS 0)
//! alternating with well-formed messages under a wrong key (QoS 1), for
//! FLOOD_SECONDS (default 60). Reported: valid-traffic latency per phase,
//! the gateway's peak RSS, the flooder's audit rows and the gateway's log
//! lines during the flood, and what was refused how.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use fleetward_protocol::{Envelope, data_topic, raw};
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rumqttc::QoS;

const STEADY: usize = 5;
const BASELINE_SECS: u64 = 15;

/// Valid traffic at `rate` msg/s over the steady devices for `secs`.
async fn steady(keys: &[(String, Vec<u8>)], clients: &[rumqttc::AsyncClient], rate: f64, secs: u64) -> u64 {
    let per = rate / keys.len() as f64;
    let stop = Instant::now() + Duration::from_secs(secs);
    let sent = futures::future::join_all(keys.iter().zip(clients).map(|((id, key), client)| async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per));
        let mut seq = 0u64;
        while Instant::now() < stop {
            tick.tick().await;
            let mid = format!("{id}-{seq}-{}", now_nanos());
            let payload = serde_json::json!({"temperature": 21.5, "humidity": 40, "pressure": 1000, "wind_speed": 2});
            let env = Envelope::sign(key, id, chrono::Utc::now().timestamp(), &mid, raw(&payload));
            client
                .publish(data_topic(id), QoS::AtLeastOnce, false, env.to_json())
                .await
                .unwrap();
            seq += 1;
        }
        seq
    }))
    .await;
    sent.iter().sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let flood_secs: u64 = args.first().map(|a| a.parse().unwrap()).unwrap_or(60);
    let rate: f64 = args.get(1).map(|a| a.parse().unwrap()).unwrap_or(100.0);

    let names: Vec<String> = (0..STEADY).map(|i| format!("s{i}")).collect();
    let mut devices: Vec<(&str, &str, &str)> = names.iter().map(|n| (n.as_str(), "weatherStation", "")).collect();
    devices.push(("flooder", "weatherStation", ""));
    let h = Harness::start(Setup {
        prefix: "bench-flood",
        devices: &devices,
        security: "    ratePerSecond: 100\n    burst: 200",
        backend: false,
    })
    .await;
    let mut keys = Vec::new();
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for n in &names {
        let creds = fleetward_simulator::Credentials::from_secret(h.ns.client.clone(), &h.ns.name, n)
            .await
            .unwrap();
        keys.push((n.clone(), creds.hmac.clone()));
        let (client, seen, task) = raw_client(&h, n, n, None).await;
        settled(&seen).await;
        clients.push(client);
        tasks.push(task);
    }

    // Latency of every valid record, by phase (0 baseline, 1 flood).
    let phase = Arc::new(AtomicU8::new(0));
    let latencies: Arc<StdMutex<[Vec<f64>; 2]>> = Arc::default();
    let consumer: StreamConsumer = kafka_reader(&h.topic);
    {
        let (phase, latencies) = (phase.clone(), latencies.clone());
        tokio::spawn(async move {
            loop {
                let Ok(m) = consumer.recv().await else { continue };
                let Some(v) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                else {
                    continue;
                };
                let Some(sent) = v["message_id"]
                    .as_str()
                    .and_then(|id| id.rsplit('-').next()?.parse::<u128>().ok())
                else {
                    continue;
                };
                let ms = (now_nanos().saturating_sub(sent)) as f64 / 1e6;
                latencies.lock().unwrap()[phase.load(Ordering::Relaxed) as usize].push(ms);
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("gateway flood benchmark: {rate} valid msg/s from {STEADY} devices");
    let sent_base = steady(&keys, &clients, rate, BASELINE_SECS).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, base_peak) = rss_mib(h.gateway.pid());

    phase.store(1, Ordering::Relaxed);
    let log_before = h.gateway.log_text().lines().count();
    let rows_before = audit_rows(&h, "flooder").await;
    let refused = |h: &Harness| -> f64 {
        fleetward_protocol::Rejection::ALL_REASONS
            .iter()
            .map(|r| h.gateway.rejected(r))
            .sum()
    };
    let refused_before = refused(&h);
    let rss_watch = async {
        let mut peak: f64 = 0.0;
        let end = Instant::now() + Duration::from_secs(flood_secs);
        while Instant::now() < end {
            peak = peak.max(rss_mib(h.gateway.pid()).0);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    };
    let (flooded, sent_flood, flood_peak) = tokio::join!(
        flood(&h, "flooder", flood_secs),
        steady(&keys, &clients, rate, flood_secs),
        rss_watch
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = audit_rows(&h, "flooder").await - rows_before;
    let log_lines = h.gateway.log_text().lines().count() - log_before;
    let refusals = refused(&h) - refused_before;
    let qos0_dropped = h.gateway.metric("fleetward_gateway_qos0_dropped_total");
    let unread = h.gateway.rejected("rate_limited");
    let suppressed = h.gateway.metric("fleetward_gateway_audit_suppressed_total");

    let mut l = latencies.lock().unwrap().clone();
    let [base, during] = &mut l;
    println!();
    println!("valid traffic, publish -> Kafka record (ms):");
    println!("  phase                   sent  received      p50      p99      max");
    for (name, sent, v) in [("baseline", sent_base, base), ("during the flood", sent_flood, during)] {
        let max = v.iter().cloned().fold(0.0, f64::max);
        // A phase that received nothing has no percentiles.
        let (p50, p99) = if v.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (percentile(v, 50.0), percentile(v, 99.0))
        };
        println!("  {name:<18} {sent:>9} {:>9} {p50:>8.1} {p99:>8.1} {max:>8.1}", v.len());
    }
    println!();
    println!("the flood ({flood_secs} s, one device): {flooded} messages published");
    println!(
        "  refused by the gateway    {refusals:.0} (of which unread once the device's budget was spent: {unread:.0})"
    );
    println!("  QoS 0 dropped unread      {qos0_dropped:.0} (hand-off queue full)");
    println!(
        "  audit rows written        {rows} (bound 20 + 2/s + 3 summaries per 10 s = {:.0}); {suppressed:.0} counted into summaries",
        20.0 + 2.0 * flood_secs as f64 + 3.0 * (flood_secs as f64 / 10.0 + 1.0)
    );
    println!("  gateway log lines         {log_lines}");
    println!("  gateway RSS peak          {flood_peak:.0} MiB (baseline phase peak {base_peak:.0} MiB)");
    for t in tasks {
        t.abort();
    }
    h.ns.cleanup().await;
}
