//! The fleetward operator binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetward_operator::config::{Config, KafkaBroker, KafkaTls};
use fleetward_operator::context::Context;
use fleetward_operator::controllers;
use fleetward_operator::crd::{Device, Gateway};
use fleetward_operator::leader::{LeaderConfig, run_as_leader};
use fleetward_operator::metrics::Metrics;
use fleetward_service::{logging, shutdown};
use kube::Api;
use kube::api::ListParams;

#[derive(Parser, Debug)]
#[command(version, about = "Kubernetes operator for a secure IoT fleet")]
struct Args {
    /// Address for /metrics and /health.
    #[arg(long, env = "FLEETWARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "FLEETWARD_LOG_JSON")]
    log_json: bool,
    #[arg(long, env = "FLEETWARD_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
    #[arg(long, env = "FLEETWARD_MOSQUITTO_IMAGE")]
    mosquitto_image: Option<String>,
    #[arg(long, env = "FLEETWARD_INGESTOR_IMAGE")]
    ingestor_image: Option<String>,
    #[arg(long, env = "FLEETWARD_ENCRYPTOR_IMAGE")]
    encryptor_image: Option<String>,
    #[arg(long, env = "FLEETWARD_BILLING_IMAGE")]
    billing_image: Option<String>,
    /// Kafka bootstrap servers for resources that do not name their own.
    #[arg(long, env = "FLEETWARD_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Mutual TLS with that Kafka: the Secret (in POD_NAMESPACE) of the
    /// operator's Kafka CA, made on first start. Each workload using the
    /// default Kafka gets a client certificate of its role from it.
    #[arg(long, env = "FLEETWARD_KAFKA_TLS_CA_SECRET")]
    kafka_tls_ca_secret: Option<String>,
    /// The Secret (in POD_NAMESPACE) the operator keeps the chart's broker
    /// keystore in; needs the two below.
    #[arg(long, env = "FLEETWARD_KAFKA_TLS_SERVER_SECRET", requires_all = ["kafka_tls_ca_secret", "kafka_tls_admin_secret", "kafka_tls_server_names"])]
    kafka_tls_server_secret: Option<String>,
    /// The Secret for the identity that writes the broker's ACLs.
    #[arg(long, env = "FLEETWARD_KAFKA_TLS_ADMIN_SECRET", requires = "kafka_tls_server_secret")]
    kafka_tls_admin_secret: Option<String>,
    /// The broker's DNS names (comma-separated), as clients reach it.
    #[arg(
        long,
        env = "FLEETWARD_KAFKA_TLS_SERVER_NAMES",
        value_delimiter = ',',
        requires = "kafka_tls_server_secret"
    )]
    kafka_tls_server_names: Vec<String>,
    /// Run the controllers only while holding the Lease `fleetward-operator`
    /// in POD_NAMESPACE, so several replicas are safe.
    #[arg(long, env = "FLEETWARD_LEADER_ELECTION")]
    leader_election: bool,
    /// How long a leader's lease lasts without renewal; a standby takes over
    /// at most this long after the leader dies.
    #[arg(long, env = "FLEETWARD_LEASE_DURATION_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=600))]
    lease_duration_seconds: u64,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// This replica's pod, part of its identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Exit when stdin closes: lets a test harness tie the operator's
    /// lifetime to its own, even when the harness is killed.
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(operate(args))
}

/// glibc's malloc gives each thread that allocates its own arena (up to
/// eight per core) and returns little of an arena's freed memory to the
/// system; the operator's allocations move between tokio's worker and
/// blocking threads. Limited to two arenas, `./deploy.sh bench-devices
/// 10000` peaked at 164–168 MiB until all were Ready, against 193–213 MiB
/// with the default (docs/src/benchmarks.md, runs L–P). A
/// `MALLOC_ARENA_MAX` in the environment is left to decide. Called before
/// any other thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no other thread
        // exists yet to allocate concurrently.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn operate(args: Args) -> anyhow::Result<()> {
    logging::init(logging::Format::json_if(args.log_json), "info,kube_runtime=warn");

    let mut config = Config::default();
    let set = |slot: &mut String, v: Option<String>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut config.gateway_image, args.gateway_image);
    set(&mut config.mosquitto_image, args.mosquitto_image);
    set(&mut config.ingestor_image, args.ingestor_image);
    set(&mut config.encryptor_image, args.encryptor_image);
    set(&mut config.billing_image, args.billing_image);
    set(&mut config.kafka_bootstrap, args.kafka_bootstrap);
    config.kafka_tls = args.kafka_tls_ca_secret.map(|ca_secret| KafkaTls {
        namespace: args.pod_namespace.clone(),
        ca_secret,
        broker: args.kafka_tls_server_secret.map(|server_secret| KafkaBroker {
            server_secret,
            admin_secret: args.kafka_tls_admin_secret.unwrap_or_default(),
            dns_names: args.kafka_tls_server_names.clone(),
        }),
    });

    if args.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
    }

    let metrics = Arc::new(Metrics::default());
    let client = fleetward_operator::context::counted_client(kube::Config::infer().await?, &metrics)?;
    // Fail fast with a useful message when the CRDs are not installed.
    for (kind, res) in [
        (
            "Device",
            Api::<Device>::all(client.clone())
                .list(&ListParams::default().limit(1))
                .await
                .map(|_| ()),
        ),
        (
            "Gateway",
            Api::<Gateway>::all(client.clone())
                .list(&ListParams::default().limit(1))
                .await
                .map(|_| ()),
        ),
    ] {
        if let Err(e) = res {
            anyhow::bail!("cannot list {kind} resources ({e}); are the CRDs installed? `kubectl apply -f crds/`");
        }
    }

    let ctx = Context::start(client.clone(), config, metrics.clone()).await?;
    tracing::info!("fleetward operator starting");
    let http = tokio::spawn(fleetward_operator::http::serve(args.http_addr, metrics.clone()));
    let controllers = async {
        if args.leader_election {
            let leader = LeaderConfig {
                namespace: args.pod_namespace.clone(),
                identity: identity(args.pod_name.as_deref()),
                lease_duration: Duration::from_secs(args.lease_duration_seconds),
            };
            run_as_leader(client, &leader, &metrics, shutdown::signal(), controllers::run(ctx)).await
        } else {
            metrics.leader.set(1);
            controllers::run(ctx).await;
            Ok(())
        }
    };
    tokio::select! {
        res = controllers => {
            res?;
            tracing::info!("controllers stopped");
        }
        res = http => {
            anyhow::bail!("metrics server stopped: {res:?}");
        }
    }
    Ok(())
}

/// This process's identity in the Lease: the pod name (so `kubectl get
/// lease` says which pod leads) plus a random part, as controller-runtime
/// does, so a leader that crashed and was restarted in the same pod is a
/// new candidate, not the holder of a lease it never renewed.
fn identity(pod_name: Option<&str>) -> String {
    format!(
        "{}_{:08x}",
        pod_name.unwrap_or("fleetward-operator"),
        rand::random::<u32>()
    )
}
