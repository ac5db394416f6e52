//! The gateway binary on this machine, started with exactly the
//! environment the operator put into its StatefulSet (paths and ports moved
//! here), and the pieces other workloads' tests reuse for the same purpose.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleetward_testkit::{Broker, TestNs, Workload, env, free_port, workspace_binary, write};
use k8s_openapi::api::apps::v1::StatefulSet;

/// The gateway binary, with the environment it was started with.
pub struct GatewayProc {
    process: Workload,
    pub env: HashMap<String, String>,
    pub api_url: String,
}

/// Log, metrics and signals are those of any workload.
impl std::ops::Deref for GatewayProc {
    type Target = Workload;
    fn deref(&self) -> &Workload {
        &self.process
    }
}

impl std::ops::DerefMut for GatewayProc {
    fn deref_mut(&mut self) -> &mut Workload {
        &mut self.process
    }
}

impl GatewayProc {
    pub fn rejected(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "fleetward_gateway_messages_total{{reason=\"{reason}\",result=\"rejected\"}}"
        ))
    }

    pub fn accepted(&self) -> f64 {
        self.metric("fleetward_gateway_messages_total{reason=\"ok\",result=\"accepted\"}")
    }
}

/// Starts the gateway binary with the env of the operator's StatefulSet.
pub async fn start_gateway(ns: &TestNs, gw: &str, broker: &Broker, tmp: &Path) -> GatewayProc {
    start_gateway_with(ns, gw, broker, tmp, &[]).await
}

/// `start_gateway` with some variables set otherwise (e.g. another Kafka
/// listener).
pub async fn start_gateway_with(
    ns: &TestNs,
    gw: &str,
    broker: &Broker,
    tmp: &Path,
    overrides: &[(&str, String)],
) -> GatewayProc {
    let deploy = ns.api::<StatefulSet>().get(&format!("{gw}-gateway")).await.unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let container = pod.containers.into_iter().find(|c| c.name == "gateway").unwrap();
    let client_dir = tmp.join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        write(
            &client_dir,
            k,
            &ns.secret_value(&format!("{gw}-gateway-client"), k).await,
        );
    }
    let broker_dir = broker.dir.display().to_string();
    let mut env_map = container_env(ns, container.env.unwrap_or_default(), |v| {
        v.replace("/etc/fleetward/client", &client_dir.display().to_string())
            .replace("/mosquitto/", &format!("{broker_dir}/"))
    })
    .await;
    // What differs on this machine: the broker's port, free ports for the
    // gateway's own listeners, and API access.
    let metrics_port = free_port();
    let api_port = free_port();
    env_map.insert("MQTT_PORT".into(), broker.port.to_string());
    env_map.insert("METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}"));
    env_map.insert("COMMAND_API_PORT".into(), api_port.to_string());
    env_map.insert("COMMAND_API_BIND".into(), "127.0.0.1".into());
    env_map.insert("KUBECONFIG".into(), env("KUBECONFIG"));
    env_map.insert("RUST_LOG".into(), "info,rdkafka=warn".into());
    for (k, v) in overrides {
        env_map.insert(k.to_string(), v.clone());
    }
    let process = spawn_with_env("fleetward-gateway", &env_map, metrics_port, tmp.join("gateway.log"));
    GatewayProc {
        process,
        env: env_map,
        api_url: format!("https://localhost:{api_port}"),
    }
}

/// A container's environment as the kubelet would give it: literal values
/// through `literal` (which moves paths to this machine), `secretKeyRef`
/// values read from their Secrets.
pub async fn container_env(
    ns: &TestNs,
    vars: Vec<k8s_openapi::api::core::v1::EnvVar>,
    literal: impl Fn(String) -> String,
) -> HashMap<String, String> {
    let mut env_map = HashMap::new();
    for e in vars {
        let value = match (e.value, e.value_from) {
            (Some(v), _) => literal(v),
            (None, Some(from)) => {
                let r = from.secret_key_ref.expect("only secretKeyRef is used");
                ns.secret_value(&r.name, &r.key).await
            }
            _ => panic!("env {} has no value", e.name),
        };
        env_map.insert(e.name, value);
    }
    env_map
}

/// Starts a workspace binary with exactly `env` (and PATH), its output in
/// `log`, and waits for `/health` on its metrics port.
pub fn spawn_with_env(binary: &str, env: &HashMap<String, String>, metrics_port: u16, log: PathBuf) -> Workload {
    let mut cmd = Command::new(workspace_binary(binary));
    cmd.env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    Workload::spawn(cmd, format!("http://127.0.0.1:{metrics_port}"), log, "/health", 60)
}
