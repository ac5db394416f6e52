//! `fleetward-sim`: run simulated devices against a gateway's broker.
//!
//!   fleetward-sim --namespace fleet-demo run --gateway edge            # every device of a gateway
//!   fleetward-sim --namespace fleet-demo run --device weather-001 --interval 2
//!   fleetward-sim --namespace fleet-demo attack --device weather-001 --attack replay
//!   fleetward-sim --namespace fleet-demo load --gateway edge --rate 1000 --duration 30
//!
//! Credentials come from the operator's Secrets (KUBECONFIG), or from
//! `--credentials-dir DIR/<device>/{tls.crt,tls.key,ca.crt,hmac.key,category}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use fleetward_simulator::attack::{self, Attack, AttackOptions};
use fleetward_simulator::{ConnectOptions, Credentials, Device, DeviceEvent};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client};

#[derive(Parser)]
#[command(version, about = "fleetward device simulator")]
struct Args {
    #[arg(long, env = "FLEETWARD_NAMESPACE", default_value = "default")]
    namespace: String,
    #[arg(long, env = "MQTT_HOST", default_value = "localhost")]
    host: String,
    #[arg(long, env = "MQTT_PORT", default_value_t = 8883)]
    port: u16,
    /// Read credentials from files instead of Kubernetes Secrets.
    #[arg(long)]
    credentials_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish readings at each category's cadence (or --interval) and
    /// answer commands.
    Run {
        #[arg(long)]
        device: Vec<String>,
        /// Every device of this gateway.
        #[arg(long)]
        gateway: Option<String>,
        /// Seconds between readings (default: the category's cadence).
        #[arg(long)]
        interval: Option<f64>,
        /// Stop after this many readings per device.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Misbehave once, on purpose.
    Attack {
        #[arg(long)]
        device: String,
        #[arg(long, value_parser = |s: &str| s.parse::<Attack>())]
        attack: Attack,
        #[arg(long)]
        victim: Option<String>,
        #[arg(long, default_value_t = 65536)]
        max_message_bytes: usize,
        #[arg(long, default_value_t = 100)]
        flood_count: usize,
    },
    /// Offer a steady load: `--rate` messages per second over all devices.
    Load {
        #[arg(long)]
        device: Vec<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    fleetward_service::logging::init(fleetward_service::logging::Format::Text, "info");
    let args = Args::parse();
    let opts = ConnectOptions::new(&args.host, args.port);
    match &args.cmd {
        Cmd::Run {
            device,
            gateway,
            interval,
            count,
        } => {
            let devices = connect_all(&args, device, gateway.as_deref(), &opts).await?;
            let mut tasks = Vec::new();
            for (dev, mut events) in devices {
                let every = interval
                    .map(Duration::from_secs_f64)
                    .unwrap_or_else(|| dev.category.default_cadence());
                let count = *count;
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    let mut sent = 0u64;
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                match dev.send_reading().await {
                                    Ok(id) => println!("{} sent {id}", dev.id),
                                    Err(e) => eprintln!("{} send failed: {e}", dev.id),
                                }
                                sent += 1;
                                if count.is_some_and(|c| sent >= c) {
                                    // Give QoS 1 acknowledgements a moment.
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                    return;
                                }
                            }
                            Some(ev) = events.recv() => print_event(&dev.id, &ev),
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
        }
        Cmd::Attack {
            device,
            attack: kind,
            victim,
            max_message_bytes,
            flood_count,
        } => {
            let creds = load_credentials(&args, device).await?;
            let (dev, mut events) = Device::connect(creds, &opts).await?;
            wait_connected(&mut events).await?;
            let sent = attack::perform(
                &dev,
                *kind,
                &AttackOptions {
                    victim: victim.clone(),
                    max_message_bytes: *max_message_bytes,
                    flood_count: *flood_count,
                },
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!(
                "{kind:?} sent: {} malicious message(s) {:?}",
                sent.malicious.len(),
                sent.malicious
            );
        }
        Cmd::Load {
            device,
            gateway,
            rate,
            duration,
        } => {
            let devices = connect_all(&args, device, gateway.as_deref(), &opts).await?;
            let sent = Arc::new(AtomicU64::new(0));
            let per_device = rate / devices.len() as f64;
            let start = Instant::now();
            let stop = start + Duration::from_secs_f64(*duration);
            let mut tasks = Vec::new();
            for (dev, _events) in devices {
                let sent = sent.clone();
                tasks.push(tokio::spawn(async move {
                    let _keep = _events;
                    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_device));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    while Instant::now() < stop {
                        tick.tick().await;
                        if dev.send_reading().await.is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
            let n = sent.load(Ordering::Relaxed);
            println!(
                "sent {n} messages in {:.1}s ({:.0} msg/s offered)",
                start.elapsed().as_secs_f64(),
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

fn print_event(device: &str, ev: &DeviceEvent) {
    match ev {
        DeviceEvent::Command {
            message_id,
            payload,
            verdict: Ok(()),
        } => println!("{device} command {message_id} verified: {payload}"),
        DeviceEvent::Command {
            message_id, verdict, ..
        } => println!("{device} command {message_id} REFUSED: {verdict:?}"),
        DeviceEvent::Response(body) => println!("{device} backend response: {body}"),
        DeviceEvent::BadCommand(e) => println!("{device} unreadable command: {e}"),
        DeviceEvent::Connected => println!("{device} connected"),
        DeviceEvent::Disconnected(e) => println!("{device} disconnected: {e}"),
    }
}

async fn wait_connected(events: &mut tokio::sync::mpsc::Receiver<DeviceEvent>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(DeviceEvent::Connected)) => return Ok(()),
            Ok(Some(DeviceEvent::Disconnected(e))) => eprintln!("connecting: {e}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => anyhow::bail!("could not connect within 30s"),
        }
    }
}

async fn load_credentials(args: &Args, device: &str) -> anyhow::Result<Credentials> {
    Ok(match &args.credentials_dir {
        Some(dir) => Credentials::from_dir(&dir.join(device), device)?,
        None => Credentials::from_secret(Client::try_default().await?, &args.namespace, device).await?,
    })
}

type Connected = (Arc<Device>, tokio::sync::mpsc::Receiver<DeviceEvent>);

async fn connect_all(
    args: &Args,
    devices: &[String],
    gateway: Option<&str>,
    opts: &ConnectOptions,
) -> anyhow::Result<Vec<Connected>> {
    let mut names = devices.to_vec();
    if let Some(gw) = gateway {
        let api: Api<Secret> = Api::namespaced(Client::try_default().await?, &args.namespace);
        let list = api
            .list(&ListParams::default().labels(&format!("fleetward.io/gateway={gw},fleetward.io/device")))
            .await?;
        names.extend(
            list.items
                .iter()
                .filter_map(|s| s.metadata.labels.as_ref()?.get("fleetward.io/device").cloned()),
        );
    }
    anyhow::ensure!(!names.is_empty(), "no devices: name them with --device or --gateway");
    let mut out = Vec::new();
    for name in names {
        let creds = load_credentials(args, &name).await?;
        let (dev, mut events) = Device::connect(creds, opts).await?;
        wait_connected(&mut events).await?;
        out.push((dev, events));
    }
    Ok(out)
}
