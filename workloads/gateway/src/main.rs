use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetward_gateway::audit::{Audit, connect_pool};
use fleetward_gateway::checks::{Limits, Validator};
use fleetward_gateway::command::{self, ApiState};
use fleetward_gateway::config::Config;
use fleetward_gateway::device_status::{self, StatusWriter};
use fleetward_gateway::forward::Sinks;
use fleetward_gateway::liveness::Liveness;
use fleetward_gateway::metrics::Metrics;
use fleetward_gateway::pipeline::Pipeline;
use fleetward_gateway::registry::Registry;
use fleetward_gateway::replay_store::ReplayStore;
use fleetward_gateway::{crl, http, mqtt};
use fleetward_service::logging;
use fleetward_service::shutdown::Shutdown;
use rumqttc::v5::AsyncClient;

/// Every message allocates its envelope, record and futures: glibc's
/// allocator took about a sixth of the gateway's CPU in a drain profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    logging::init(logging::Format::json_if(cfg.log_json), "info");
    // From the start: a SIGTERM during start-up still ends in a clean stop.
    let stop = Shutdown::on_signal();
    // Held until the process exits.
    let _run_lock = match &cfg.run_lock_file {
        Some(path) => Some(hold_run_lock(path).map_err(|e| anyhow::anyhow!("RUN_LOCK_FILE {}: {e}", path.display()))?),
        None => None,
    };
    anyhow::ensure!(
        cfg.command_api_key.trim().len() >= fleetward_gateway::command::MIN_KEY_LEN,
        "COMMAND_API_KEY is shorter than {} characters; use a long random key (the operator generates one \
         when the Gateway has no commandApi.apiKeySecretRef)",
        fleetward_gateway::command::MIN_KEY_LEN
    );
    anyhow::ensure!(
        cfg.command_meter_key
            .as_ref()
            .is_none_or(|k| k.trim().len() >= fleetward_gateway::command::MIN_KEY_LEN),
        "COMMAND_METER_KEY is shorter than {} characters",
        fleetward_gateway::command::MIN_KEY_LEN
    );
    anyhow::ensure!(
        cfg.kafka_brokers.is_some() == cfg.kafka_topic.is_some(),
        "KAFKA_BROKERS and KAFKA_TOPIC go together"
    );

    let metrics = Arc::new(Metrics::default());
    if cfg.message_limit() < cfg.max_message_bytes {
        tracing::warn!(
            max_message_bytes = cfg.max_message_bytes,
            limit = cfg.message_limit(),
            "maxMessageBytes is more than a Kafka record can hold; larger messages are refused as oversize"
        );
    }
    let limits = Limits {
        window_secs: cfg.timestamp_window_seconds,
        max_queue_secs: cfg.max_queue_seconds,
        max_message_bytes: cfg.message_limit(),
        rate_per_second: cfg.rate_per_second,
        burst: cfg.rate_burst,
    };
    let kube = kube::Client::try_default().await?;
    // The Gateway's limits, followed live (the pod stays when they change).
    // The first reading is in force before anything uses them: the replay
    // window's restore below starts each device's bucket full at the burst,
    // and a backlog at the broker is judged at its receipt, before the
    // gateway started, so a bucket made with the defaults would refuse it.
    let (limits_tx, mut limits_rx) = tokio::sync::watch::channel(limits);
    // How long this gateway's audit rows are kept: from the Gateway too.
    let (audit_retention_tx, audit_retention) =
        tokio::sync::watch::channel(Duration::from_secs(u64::from(cfg.audit_retention_days) * 86_400));
    if cfg.limits_from_gateway {
        tokio::spawn(fleetward_gateway::limits::follow(
            kube.clone(),
            cfg.namespace.clone(),
            cfg.gateway.clone(),
            limits,
            limits_tx,
            audit_retention_tx,
        ));
        tokio::time::timeout(Duration::from_secs(60), limits_rx.changed())
            .await
            .map_err(|_| anyhow::anyhow!("the Gateway's limits were not read within 60s"))??;
    }
    let mut validator = Validator::new(*limits_rx.borrow_and_update());
    let (audit, replay) = match &cfg.database_url {
        Some(url) => {
            let pool = connect_pool(url).await?;
            // This gateway's audit weeks: made ahead, dropped once expired.
            let audit_weeks = fleetward_gateway::audit::partitioned(&pool, &cfg.namespace, &cfg.gateway).await?;
            tokio::spawn(fleetward_partitions::keep(
                pool.clone(),
                vec![(audit_weeks, audit_retention)],
            ));
            let now = chrono::Utc::now().timestamp();
            let (replay, remembered) = ReplayStore::open(
                pool.clone(),
                &cfg.namespace,
                &cfg.gateway,
                now,
                metrics.replay_write.clone(),
            )
            .await?;
            let clock = std::time::Instant::now();
            for r in &remembered {
                validator.restore(&r.device_id, &r.message_id, r.expires, clock);
            }
            tracing::info!(ids = remembered.len(), "replay window restored");
            (
                Audit::with_pool(pool, &cfg.namespace, &cfg.gateway, metrics.clone()),
                replay,
            )
        }
        None => {
            tracing::warn!(
                "no DATABASE_URL: security events go to the log only, and the replay window is not kept across restarts"
            );
            (Audit::log_only(metrics.clone()), ReplayStore::memory_only())
        }
    };
    metrics.replay_cache.set(validator.replay_entries() as i64);

    // Load the device registry before taking messages, so no device is
    // refused as unknown just because the gateway is still starting.
    let registry = Arc::new(Registry::default());
    tokio::spawn(registry.clone().watch(
        kube.clone(),
        cfg.namespace.clone(),
        cfg.gateway.clone(),
        audit.clone(),
        metrics.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !registry.synced() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(registry.synced(), "device registry did not load within 60s");

    let tls =
        fleetward_protocol::tls::client_config_from_files(&cfg.mqtt_ca_file, &cfg.mqtt_cert_file, &cfg.mqtt_key_file)?;
    // Room for an ack of every in-flight message plus responses and commands.
    let (client, eventloop) = AsyncClient::new(mqtt::options(&cfg, tls), 10_000);
    let backend = cfg
        .backend_url
        .as_deref()
        .map(|u| (u, Duration::from_millis(cfg.backend_timeout_ms)));
    let kafka = cfg.kafka_brokers.as_deref().zip(cfg.kafka_topic.as_deref());
    let record_key = cfg.record_key.clone();
    if kafka.is_some() && record_key.is_none() {
        tracing::warn!("no RECORD_KEY: Kafka records go unsigned, and consumers that verify them will refuse them");
    }
    let sinks = Arc::new(Sinks::new(
        &cfg.gateway,
        &cfg.namespace,
        backend,
        kafka,
        record_key,
        client.clone(),
        metrics.clone(),
    )?);

    tokio::spawn(http::serve(cfg.metrics_addr, metrics.clone(), registry.clone()));
    let api_addr: SocketAddr = format!("{}:{}", cfg.command_api_bind, cfg.command_api_port).parse()?;
    let api = ApiState::new(
        &cfg.command_api_key,
        cfg.command_meter_key.as_deref(),
        registry.clone(),
        client.clone(),
        audit.clone(),
        metrics.clone(),
    );
    let (cert, key) = (cfg.command_tls_cert_file.clone(), cfg.command_tls_key_file.clone());
    tokio::spawn(async move {
        if let Err(e) = command::serve(api_addr, &cert, &key, api).await {
            tracing::error!(error = %e, "command API stopped");
        }
    });
    let (connections, connected) = tokio::sync::watch::channel(0u64);
    if let Some(name) = cfg.crl_configmap.clone() {
        let revocations = crl::Revocations {
            kube: kube.clone(),
            namespace: cfg.namespace.clone(),
            configmap: name,
            crl_file: cfg.crl_file.clone(),
            mqtt: client.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(revocations.run(connected));
    }

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let liveness = Arc::new(Liveness::new(metrics.clone()));
    tokio::spawn(liveness.clone().run(registry.clone()));
    if cfg.device_status_writes_per_second > 0.0 {
        let writer = StatusWriter::new(kube.clone(), &cfg.namespace, metrics.clone());
        tokio::spawn(device_status::run(
            writer,
            cfg.gateway.clone(),
            cfg.device_status_writes_per_second,
            liveness.clone(),
            registry.clone(),
        ));
    }
    let pipeline = Pipeline {
        validator,
        replay,
        registry,
        liveness,
        limits: limits_rx,
        sinks,
        audit,
        metrics: metrics.clone(),
        mqtt: client.clone(),
        receipt: mqtt::ReceiptToken::new(cfg.receipt_token_file.clone()),
    };
    let pipeline = tokio::spawn(pipeline.run(rx, waiting.clone()));
    tracing::info!(gateway = %cfg.gateway, namespace = %cfg.namespace, "gateway starting");
    let stop = mqtt::Stop {
        requested: stop,
        pipeline,
        drain: Duration::from_secs(cfg.shutdown_drain_seconds),
    };
    mqtt::run(
        eventloop,
        client,
        mqtt::Handoff { tx, waiting },
        metrics,
        connections,
        stop,
    )
    .await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Holds `path` locked (exclusively) for as long as the returned file is
/// open, i.e. while the gateway runs: Mosquitto's preStop waits for the
/// lock, so on a pod's deletion the broker stays up until the gateway has
/// drained, without sharing a process namespace to see it.
fn hold_run_lock(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path)?;
    file.lock()?;
    Ok(file)
}
