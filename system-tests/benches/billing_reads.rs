//! On-demand meter reads at fleet scale: METERS simulated meters (1,000 by
//! default) connected through real Mosquitto and the real gateway; a
//! billing read asks every one for its register through the gateway's
//! command API and waits until all answers are back in PostgreSQL (through
//! Kafka and billing's own consumer, as in production).
//!
//!   ./deploy.sh dev-up   # services
//!   cargo build --release -p fleetward-gateway
//!   cargo bench -p fleetward-system-tests --bench billing_reads [-- METERS]
//!
//! Prints the time until all answered with 64 requests in flight, beside
//! the same read one request at a time, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_billing::bill::Period;
use fleetward_billing::metrics::Metrics;
use fleetward_billing::read::{self, Ask, Gateway};
use fleetward_billing::{db, ingest};
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;

#[tokio::main]
async fn main() {
    let meters: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    let names: Vec<String> = (0..meters).map(|i| format!("m{i:04}")).collect();
    let specs: Vec<(&str, &str, &str)> = names.iter().map(|n| (n.as_str(), "electricityMeter", "")).collect();
    let t = Instant::now();
    let h = Harness::start(Setup {
        prefix: "bench-reads",
        devices: &specs,
        security: "",
        backend: false,
    })
    .await;
    println!(
        "{meters} meters made by the operator, gateway up: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mut devices = Vec::new();
    for n in &names {
        let (dev, events) = h.device(n).await;
        // Events are not read here; keep the receiver so the device's loop
        // does not block on a full channel (it drops them when full).
        devices.push((dev, events));
    }
    println!("{meters} meters connected over TLS: {:.1} s", t.elapsed().as_secs_f64());

    let pool = db::connect(&env("DATABASE_URL"), 8).await.unwrap();
    db::migrate(&pool).await.unwrap();
    let metrics = Arc::new(Metrics::default());
    let consumer = ingest::consumer(&env("KAFKA_BROKERS"), &h.topic, &format!("bench-{}", h.ns.name)).unwrap();
    tokio::spawn(ingest::run(
        consumer,
        pool.clone(),
        h.ns.name.clone(),
        None,
        metrics.clone(),
    ));
    let (client, key) = h.command_client().await;
    drop(client);
    let ca = h.ns.secret_value("gw-ca", "tls.crt").await;
    let gateway = Gateway::new(&h.gateway.api_url, &key, ca.as_bytes()).unwrap();

    for (period, concurrency) in [("2026-10", 64), ("2026-09", 1)] {
        let reads = read::read_meters(
            &gateway,
            &pool,
            &h.ns.name,
            Ask {
                meters: &names,
                period: Period::parse(period).unwrap(),
                timeout: Duration::from_secs(300),
                concurrency,
            },
            &metrics,
        )
        .await
        .unwrap();
        println!(
            "read of {meters} meters, {concurrency:>2} in flight: {} answered, {} refused, all answered in {:.2} s",
            reads.answers.len(),
            reads.refused,
            reads.took.as_secs_f64()
        );
    }
    drop(devices);
    h.ns.cleanup().await;
}
