//! Gateway throughput and added latency, against a raw MQTT subscriber on
//! the same broker, in one run on one machine.
//!
//!   ./deploy.sh dev-up   # services
//!   cargo build --release -p fleetward-gateway
//!   cargo bench -p fleetward-system-tests --bench gateway_throughput [-- MESSAGES RATE SECONDS]
//!
//! 1. Throughput (drain): MESSAGES signed messages from 20 devices are
//!    queued at Mosquitto for an offline persistent session; then
//!    (a) a plain subscriber with no checks drains them (acking each), and
//!    (b) the gateway drains them, checking each one and producing it to
//!    Kafka; (b) is measured at a Kafka consumer; and (c) `mosquitto_sub`
//!    drains them (the reference the issue quotes). Reported: (b)/(a),
//!    (b)/(c), and for (a) and (b) the CPU time per message of each
//!    process on the path (Mosquitto, gateway, Kafka, PostgreSQL, the
//!    local control plane, this bench), read from /proc: on this machine
//!    they all share two cores, so their sum per message bounds the rate.
//!    (b') is (b) again with the gateway producing over mutual TLS (the
//!    dev broker's TLS listener, the gateway's identity), run last.
//! 2. Latency: devices offer RATE msg/s for SECONDS; the send time rides in
//!    each message id. p50/p99 of publish→raw-subscriber and of
//!    publish→Kafka-record-through-the-gateway; the difference is what the
//!    gateway adds; and from the gateway's own histograms, receipt →
//!    hand-off to the sinks and receipt → Kafka acknowledgement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetward_protocol::{Envelope, data_topic, raw};
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

mod cpu;

use cpu::CpuParts;

const DEVICES: usize = 20;

/// A device connection that counts broker acknowledgements, so "published"
/// means "held by the broker".
struct Publisher {
    id: String,
    key: Vec<u8>,
    client: AsyncClient,
    acked: Arc<AtomicU64>,
}

async fn publishers(h: &Harness) -> Vec<Publisher> {
    let mut out = Vec::new();
    for i in 0..DEVICES {
        let id = format!("b{i:02}");
        let creds = fleetward_simulator::Credentials::from_secret(h.ns.client.clone(), &h.ns.name, &id)
            .await
            .unwrap();
        let tls = fleetward_protocol::tls::client_config(
            creds.ca_pem.as_bytes(),
            creds.cert_pem.as_bytes(),
            creds.key_pem.as_bytes(),
        )
        .unwrap();
        let mut o = MqttOptions::new(id.clone(), "localhost", h.broker.port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        o.set_inflight(500);
        let (client, mut eventloop) = AsyncClient::new(o, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        out.push(Publisher {
            id,
            key: creds.hmac,
            client,
            acked,
        });
    }
    out
}

fn message(p: &Publisher, seq: u64) -> Vec<u8> {
    let payload = serde_json::json!({"temperature": 21.5, "humidity": 40});
    let id = format!("{}-{seq}-{}", p.id, now_nanos());
    Envelope::sign(&p.key, &p.id, chrono::Utc::now().timestamp(), &id, raw(&payload))
        .to_json()
        .into_bytes()
}

/// Publishes `per_device` messages from every publisher as fast as the
/// broker acknowledges them.
async fn burst(pubs: &[Publisher], per_device: u64) {
    let before: Vec<u64> = pubs.iter().map(|p| p.acked.load(Ordering::Relaxed)).collect();
    futures::future::join_all(pubs.iter().map(|p| async move {
        for seq in 0..per_device {
            p.client
                .publish(data_topic(&p.id), QoS::AtLeastOnce, false, message(p, seq))
                .await
                .unwrap();
        }
    }))
    .await;
    for (p, b) in pubs.iter().zip(before) {
        while p.acked.load(Ordering::Relaxed) < b + per_device {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Offers `rate` msg/s over all publishers for `secs`; returns messages sent.
async fn steady(pubs: &[Publisher], rate: f64, secs: f64) -> u64 {
    let per = rate / pubs.len() as f64;
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let sent: Vec<u64> = futures::future::join_all(pubs.iter().map(|p| async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut seq = 0;
        while Instant::now() < stop {
            tick.tick().await;
            p.client
                .publish(data_topic(&p.id), QoS::AtLeastOnce, false, message(p, seq))
                .await
                .unwrap();
            seq += 1;
        }
        seq
    }))
    .await;
    sent.iter().sum()
}

/// Send time (ns) from a message id `dev-seq-nanos`.
fn sent_at(message_id: &str) -> u128 {
    message_id.rsplit('-').next().unwrap().parse().unwrap()
}

/// The plain subscriber: the gateway's identity, no checks. `persistent`
/// sessions keep queued messages while disconnected, like the gateway's.
async fn raw_subscriber(h: &Harness, client_id: &str, persistent: bool) -> (AsyncClient, rumqttc::EventLoop) {
    let mut pem = Vec::new();
    for k in ["ca.crt", "tls.crt", "tls.key"] {
        pem.push(h.ns.secret_value("gw-gateway-client", k).await);
    }
    let tls = fleetward_protocol::tls::client_config(pem[0].as_bytes(), pem[1].as_bytes(), pem[2].as_bytes()).unwrap();
    let mut o = MqttOptions::new(client_id, "localhost", h.broker.port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o.set_clean_session(!persistent);
    o.set_manual_acks(true);
    o.set_inflight(1000);
    AsyncClient::new(o, 10_000)
}

/// Connects and subscribes; returns once the broker confirmed the subscription.
async fn subscribed(client: &AsyncClient, el: &mut rumqttc::EventLoop) {
    loop {
        match el.poll().await.expect("raw subscriber connects") {
            Event::Incoming(Packet::ConnAck(_)) => client.try_subscribe("device/+/data", QoS::AtLeastOnce).unwrap(),
            Event::Incoming(Packet::SubAck(_)) => return,
            _ => {}
        }
    }
}

/// Connects to the gateway's session (a clean start unless `persistent`),
/// subscribes, and leaves: a persistent session then queues what follows.
async fn subscribe_and_leave(h: &Harness, persistent: bool) {
    let (c, mut el) = raw_subscriber(h, "bench-raw", persistent).await;
    subscribed(&c, &mut el).await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
}

/// A clean start drops whatever the last drain left unacknowledged in the
/// shared session; then a fresh persistent session subscribes and leaves.
async fn fresh_session(h: &Harness) {
    subscribe_and_leave(h, false).await;
    subscribe_and_leave(h, true).await;
}

/// Drives a subscriber until `n` messages arrived, or `idle` passed with
/// none after the first; returns receive instants and send→receive
/// latencies (µs). Acks go out from their own task, as in the gateway (an
/// ack queued from inside the poll loop could wait on that same loop).
async fn raw_drain(
    client: AsyncClient,
    mut el: rumqttc::EventLoop,
    n: usize,
    idle: Duration,
) -> (Vec<Instant>, Vec<f64>) {
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    let acker = client.clone();
    let acks = tokio::spawn(async move {
        while let Some(p) = ack_rx.recv().await {
            acker.ack(&p).await.unwrap();
        }
    });
    let mut times = Vec::new();
    let mut lat = Vec::new();
    while times.len() < n {
        let wait = if times.is_empty() {
            Duration::from_secs(60)
        } else {
            idle
        };
        match tokio::time::timeout(wait, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client.try_subscribe("device/+/data", QoS::AtLeastOnce).unwrap();
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let now = now_nanos();
                times.push(Instant::now());
                if let Ok(env) = Envelope::parse(&p.payload) {
                    lat.push((now - sent_at(&env.message_id)) as f64 / 1000.0);
                }
                ack_tx.send(p).unwrap();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("raw subscriber: {e}"),
            Err(_) if !times.is_empty() => break,
            Err(_) => panic!("raw subscriber got nothing"),
        }
    }
    // Let the last acks reach the broker before the caller disconnects.
    drop(ack_tx);
    while !acks.is_finished() {
        let _ = tokio::time::timeout(Duration::from_millis(50), el.poll()).await;
    }
    (times, lat)
}

/// The reference drain: Mosquitto's own `mosquitto_sub`, with the
/// gateway's certificate, taking a persistent session's queued messages
/// (`-c`, QoS 1, acked by the client library) and printing them to a pipe
/// this bench reads. `subscribe_only` creates the session and leaves.
async fn mosquitto_sub(h: &Harness, client_id: &str, n: usize, subscribe_only: bool) -> Vec<Instant> {
    use tokio::io::AsyncBufReadExt;
    let dir = h.tmp.path().join("mosquitto_sub");
    std::fs::create_dir_all(&dir).unwrap();
    for k in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.join(k), h.ns.secret_value("gw-gateway-client", k).await).unwrap();
    }
    let mut cmd = tokio::process::Command::new("mosquitto_sub");
    cmd.args([
        "-h",
        "localhost",
        "-p",
        &h.broker.port.to_string(),
        "-i",
        client_id,
        "-c",
        "-q",
        "1",
    ])
    .args(["-t", "device/+/data"])
    .arg("--cafile")
    .arg(dir.join("ca.crt"))
    .arg("--cert")
    .arg(dir.join("tls.crt"))
    .arg("--key")
    .arg(dir.join("tls.key"))
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    if subscribe_only {
        cmd.arg("-E");
    } else {
        cmd.args(["-C", &n.to_string()]);
    }
    let mut child = cmd
        .spawn()
        .expect("mosquitto_sub (mosquitto-clients) is installed by dev-up");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut times = Vec::with_capacity(n);
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
        times.push(Instant::now());
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "mosquitto_sub exited with {status}");
    times
}

/// Reads telemetry records until `n` arrived, or `idle` passed with none
/// after the first; returns receive instants and send→receive latencies (µs).
async fn kafka_drain(c: &StreamConsumer, n: usize, idle: Duration, gw: &GatewayProc) -> (Vec<Instant>, Vec<f64>) {
    let mut times = Vec::new();
    let mut lat = Vec::new();
    while times.len() < n {
        let wait = if times.is_empty() {
            Duration::from_secs(60)
        } else {
            idle
        };
        let m = match tokio::time::timeout(wait, c.recv()).await {
            Err(_) if n == usize::MAX && !times.is_empty() => break,
            other => other,
        };
        let m = m
            .unwrap_or_else(|_| {
                let log = gw.log_text();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "Kafka stalled at {}/{n}; gateway metrics:\n{}\nlog tail:\n{}",
                    times.len(),
                    gw.metrics(),
                    tail.join("\n")
                )
            })
            .unwrap();
        let now = now_nanos();
        times.push(Instant::now());
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        lat.push((now - sent_at(v["message_id"].as_str().unwrap())) as f64 / 1000.0);
    }
    (times, lat)
}

/// A Prometheus histogram's cumulative buckets (upper bound, count) from
/// a metrics page; `series` is the name with any labels, e.g.
/// `x_seconds_bucket{sink="kafka",` (le comes last in the text encoder).
fn buckets(page: &str, series: &str) -> Vec<(f64, f64)> {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(series)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = le.strip_prefix("le=\"")?;
            Some((le.parse().unwrap_or(f64::INFINITY), count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which fraction `q` of the observations made
/// between two metrics pages fell (an upper bound on that quantile).
fn bucket_quantile(before: &str, after: &str, series: &str, q: f64) -> f64 {
    let b = buckets(before, series);
    let a = buckets(after, series);
    let diff: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| (*le, n - b.iter().find(|(l, _)| l == le).map(|(_, m)| *m).unwrap_or(0.0)))
        .collect();
    let total = diff.last().map(|(_, n)| *n).unwrap_or(0.0);
    diff.iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
        .unwrap_or(f64::NAN)
}

fn rate(times: &[Instant]) -> f64 {
    times.len() as f64 / times.last().unwrap().duration_since(times[0]).as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let messages: u64 = args.first().map(|a| a.parse().unwrap()).unwrap_or(40_000);
    let offered: f64 = args.get(1).map(|a| a.parse().unwrap()).unwrap_or(10_000.0);
    let seconds: f64 = args.get(2).map(|a| a.parse().unwrap()).unwrap_or(10.0);
    let per_device = messages / DEVICES as u64;
    let n = (per_device * DEVICES as u64) as usize;

    let names: Vec<String> = (0..DEVICES).map(|i| format!("b{i:02}")).collect();
    let devices: Vec<(&str, &str, &str)> = names.iter().map(|n| (n.as_str(), "indoorThermometer", "")).collect();
    let mut h = Harness::start(Setup {
        prefix: "bench-gw",
        devices: &devices,
        security: "    ratePerSecond: 100000\n    burst: 1000000",
        backend: false,
    })
    .await;
    let pubs = publishers(&h).await;
    eprintln!("setup done: {DEVICES} devices, {n} messages per drain");

    // 1a. Raw drain: create the persistent session, leave, queue, drain.
    // The raw subscriber holds the gateway's certificate and the broker
    // makes the client id the identity: it is the gateway's session, so
    // the gateway stops first (else the two would take it from each other).
    h.gateway.signal("-KILL");
    subscribe_and_leave(&h, true).await;
    burst(&pubs, per_device).await;
    let (c, el) = raw_subscriber(&h, "bench-raw", true).await;
    let raw_parts = CpuParts::new(h.broker.pid(), None);
    let before = raw_parts.snapshot();
    let (raw_times, _) = raw_drain(c.clone(), el, n, Duration::from_secs(30)).await;
    raw_parts.report("the raw drain", &before, n);
    assert_eq!(raw_times.len(), n, "raw subscriber got every message");
    let raw_rate = rate(&raw_times);
    c.disconnect().await.ok();
    eprintln!("raw subscriber drained {n} at {raw_rate:.0} msg/s");

    // 1a'. The same drain by mosquitto_sub, the reference the issue quotes.
    fresh_session(&h).await;
    mosquitto_sub(&h, "bench-raw", 0, true).await;
    burst(&pubs, per_device).await;
    let sub_times = mosquitto_sub(&h, "bench-raw", n, false).await;
    assert_eq!(sub_times.len(), n, "mosquitto_sub got every message");
    let sub_rate = rate(&sub_times);
    eprintln!("mosquitto_sub drained {n} at {sub_rate:.0} msg/s");

    // 1b. Gateway drain of a burst of the same size, from a fresh session.
    fresh_session(&h).await;
    let consumer = h.consumer();
    burst(&pubs, per_device).await;
    let queued = n;
    h.gateway = start_gateway(&h.ns, "gw", &h.broker, &h.tmp.path().join("restart")).await;
    let gw_parts = CpuParts::new(h.broker.pid(), Some(h.gateway.pid()));
    let before = gw_parts.snapshot();
    let (gw_times, _) = kafka_drain(&consumer, queued, Duration::from_secs(60), &h.gateway).await;
    gw_parts.report("the gateway drain", &before, queued);
    let gw_rate = rate(&gw_times);
    eprintln!("gateway drained {queued} at {gw_rate:.0} msg/s");
    let rejected: f64 = fleetward_protocol::Rejection::ALL_REASONS
        .iter()
        .map(|r| h.gateway.rejected(r))
        .sum();

    // 2. Latency at the offered rate: through the gateway to Kafka...
    // (records are read while the load runs, so receive times are real)
    let page_before = h.gateway.metrics();
    let (sent_gw, (gw_recv, mut gw_lat)) = tokio::join!(
        steady(&pubs, offered, seconds),
        kafka_drain(&consumer, usize::MAX, Duration::from_secs(5), &h.gateway)
    );
    assert_eq!(gw_recv.len() as u64, sent_gw, "every message of the load reached Kafka");
    let page_after = h.gateway.metrics();
    let inside = |series: &str| {
        (
            bucket_quantile(&page_before, &page_after, series, 0.50) * 1e6,
            bucket_quantile(&page_before, &page_after, series, 0.99) * 1e6,
        )
    };
    let handoff = inside("fleetward_gateway_handoff_seconds_bucket{");
    let to_kafka = inside("fleetward_gateway_forward_latency_seconds_bucket{sink=\"kafka\",");
    let replay_write = inside("fleetward_gateway_replay_write_seconds_bucket{");
    // ...and straight to a live subscriber, with the gateway out of the way.
    h.gateway.signal("-KILL");
    let (c, mut el) = raw_subscriber(&h, "bench-raw-live", false).await;
    subscribed(&c, &mut el).await;
    let counter = tokio::spawn(raw_drain(c, el, usize::MAX, Duration::from_secs(5)));
    let sent_raw = steady(&pubs, offered, seconds).await;
    let (raw_live, mut raw_lat) = counter.await.unwrap();
    assert_eq!(raw_live.len() as u64, sent_raw, "live raw subscriber got every message");

    // 1b'. The gateway drain again, producing over mutual TLS as the
    //      chart's gateway does (the dev broker's TLS listener, the
    //      gateway's identity): what TLS to Kafka costs, against (b).
    fresh_session(&h).await;
    burst(&pubs, per_device).await;
    let identity = std::path::Path::new(&env("FLEETWARD_KAFKA_TLS_IDENTITIES")).join("gateway");
    h.gateway = start_gateway_with(
        &h.ns,
        "gw",
        &h.broker,
        &h.tmp.path().join("restart-tls"),
        &[
            ("KAFKA_BROKERS", env("FLEETWARD_KAFKA_TLS_BROKERS")),
            ("KAFKA_SECURITY_PROTOCOL", "ssl".into()),
            ("KAFKA_TLS_DIR", identity.display().to_string()),
        ],
    )
    .await;
    let tls_parts = CpuParts::new(h.broker.pid(), Some(h.gateway.pid()));
    let before = tls_parts.snapshot();
    let (tls_times, _) = kafka_drain(&consumer, n, Duration::from_secs(60), &h.gateway).await;
    tls_parts.report("the gateway drain, mutual TLS to Kafka", &before, n);
    assert_eq!(tls_times.len(), n, "the gateway over TLS produced every message");
    let tls_rate = rate(&tls_times);
    eprintln!("gateway (Kafka over TLS) drained {n} at {tls_rate:.0} msg/s");
    h.gateway.signal("-KILL");

    let (g50, g99) = (percentile(&mut gw_lat, 50.0), percentile(&mut gw_lat, 99.0));
    let (r50, r99) = (percentile(&mut raw_lat, 50.0), percentile(&mut raw_lat, 99.0));
    println!();
    println!("gateway benchmark ({DEVICES} devices, same machine, same Mosquitto)");
    println!("(a) raw subscriber, no checks:            {raw_rate:>9.0} msg/s  ({n} messages)");
    println!(
        "(b) gateway, checked + produced to Kafka: {gw_rate:>9.0} msg/s  ({queued} messages, {rejected} rejected)"
    );
    println!("(c) mosquitto_sub, no checks:             {sub_rate:>9.0} msg/s  ({n} messages; the issue's reference)");
    println!("(b') the same, mutual TLS to Kafka:      {tls_rate:>9.0} msg/s  ({n} messages)");
    println!("(b)/(a):                                  {:>9.2}", gw_rate / raw_rate);
    println!("(b')/(b), what TLS to Kafka costs:        {:>9.2}", tls_rate / gw_rate);
    println!("(b)/(c):                                  {:>9.2}", gw_rate / sub_rate);
    println!(
        "latency, {:.0} msg/s offered for {seconds}s (achieved: gateway run {:.0}, raw run {:.0} msg/s), µs:",
        offered,
        sent_gw as f64 / seconds,
        sent_raw as f64 / seconds
    );
    println!("  raw subscriber        p50 {r50:>9.0}   p99 {r99:>9.0}");
    println!("  gateway -> Kafka      p50 {g50:>9.0}   p99 {g99:>9.0}");
    println!(
        "  added by the gateway  p50 {:>9.0}   p99 {:>9.0}",
        g50 - r50,
        g99 - r99
    );
    println!("gateway's own histograms during the gateway run (bucket upper bounds), µs:");
    println!(
        "  receipt -> handed to the sinks   p50 <= {:>7.0}   p99 <= {:>7.0}",
        handoff.0, handoff.1
    );
    println!(
        "  receipt -> Kafka acknowledged    p50 <= {:>7.0}   p99 <= {:>7.0}",
        to_kafka.0, to_kafka.1
    );
    println!(
        "  replay ids' group commit         p50 <= {:>7.0}   p99 <= {:>7.0}",
        replay_write.0, replay_write.1
    );
    h.ns.cleanup().await;
}
