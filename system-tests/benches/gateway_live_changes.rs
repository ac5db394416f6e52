//! What a Gateway change costs the connected devices, with N of them
//! (default 1,000) on a Gateway of their own, on the node of
//! `./deploy.sh local-up` (its operator deploys the Gateway's pod):
//!
//!   ./deploy.sh local-up && . .dev/env
//!   cargo bench -p fleetward-system-tests --bench gateway_live_changes -- [N]
//!
//! Four phases, disconnects counted by every device's MQTT client:
//! 1. idle, 20 s (the baseline: none expected);
//! 2. the rate limit and burst changed: the gateway follows them live (pod
//!    uid and broker unchanged);
//! 3. the gateway process killed (SIGKILL through containerd): the kubelet
//!    restarts that container only; Mosquitto, and the devices, stay;
//! 4. the comparison: `maxMessageBytes` changed, which is the broker's own
//!    configuration and rolls the pod: every device is disconnected and
//!    reconnects (this is what a rate limit change cost before).
//!
//! Everything it makes (a namespace, the Gateway, N Devices) is deleted at
//! the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleetward_simulator::{ConnectOptions, Credentials, Device, DeviceEvent};
use fleetward_system_tests::*;
use fleetward_testkit::wait_until_blocking;
use futures::StreamExt;
use kube::api::{DynamicObject, PostParams};

const GATEWAY: &str = "live";

#[derive(Default)]
struct Counts {
    connected: AtomicUsize,
    disconnects: AtomicUsize,
}

fn patch_gateway(ns: &str, security: &str) {
    kubectl(&[
        "-n",
        ns,
        "patch",
        "gateway",
        GATEWAY,
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"security":{security}}}}}"#),
    ]);
}

fn pod_uid(ns: &str) -> String {
    jsonpath(ns, &["pod", "live-gateway-0"], "{.metadata.uid}")
}

fn gateway_restarts(ns: &str) -> String {
    jsonpath(
        ns,
        &["pod", "live-gateway-0"],
        r#"{.status.containerStatuses[?(@.name=="gateway")].restartCount}"#,
    )
}

/// Waits `secs` and returns the disconnects counted meanwhile.
async fn disconnects_during(counts: &Counts, secs: u64) -> usize {
    let before = counts.disconnects.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    counts.disconnects.load(Ordering::SeqCst) - before
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(1000, |a| a.parse().expect("N is a number"));
    let client = fleetward_testkit::client().await;
    let ns = format!("fw-live-{:08x}", fleetward_testkit::rand_u32());
    kubectl(&["create", "namespace", &ns]);
    let node = node_ip();

    // A Gateway of its own, reachable on the node's address.
    kubectl_apply(&format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Gateway\nmetadata: {{name: {GATEWAY}, namespace: {ns}}}\n\
         spec: {{serviceType: NodePort, extraIpAddresses: [\"{node}\"], security: {{ratePerSecond: 10, burst: 20}}}}\n"
    ));
    let t = Instant::now();
    let devices_api = kube::Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("fleetward.io", "v1alpha1", "Device")),
    );
    let ids: Vec<String> = (0..n).map(|i| format!("lock-{i:04}")).collect();
    let created = futures::stream::iter(&ids)
        .map(|id| {
            let api = devices_api.clone();
            let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "fleetward.io/v1alpha1", "kind": "Device",
                "metadata": {"name": id},
                "spec": {"gatewayRef": GATEWAY, "category": "smartLock"},
            }))
            .expect("a Device");
            async move { api.create(&PostParams::default(), &obj).await.map(drop) }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(created.iter().all(Result::is_ok), "creating the Devices");
    let (ok, out) = kubectl_try(&[
        "-n",
        &ns,
        "wait",
        "--for=condition=Ready",
        "devices",
        "--all",
        "--timeout=900s",
    ]);
    assert!(ok, "Devices not Ready: {out}");
    wait_until_blocking("the Gateway's pod", 300, || all_pods_ready(&ns), || pods(&ns));
    println!(
        "{n} Devices Ready and the Gateway's pod running in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let port: u16 = jsonpath(
        &ns,
        &["service", GATEWAY],
        r#"{.spec.ports[?(@.name=="mqtts")].nodePort}"#,
    )
    .parse()
    .expect("a NodePort");

    // N devices connected, each counting its disconnects.
    let t = Instant::now();
    let counts = Arc::new(Counts::default());
    let opts = ConnectOptions::new(&node, port);
    let connected: Vec<Arc<Device>> = futures::stream::iter(&ids)
        .map(|id| {
            let (client, ns, opts, counts) = (client.clone(), ns.clone(), opts.clone(), counts.clone());
            async move {
                let creds = Credentials::from_secret(client, &ns, id).await.expect("credentials");
                let (dev, mut events) = Device::connect(creds, &opts).await.expect("connect");
                tokio::spawn(async move {
                    while let Some(event) = events.recv().await {
                        match event {
                            DeviceEvent::Connected => counts.connected.fetch_add(1, Ordering::SeqCst),
                            DeviceEvent::Disconnected(_) => counts.disconnects.fetch_add(1, Ordering::SeqCst),
                            _ => 0,
                        };
                    }
                });
                dev
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    wait_until_blocking(
        "every device connected",
        300,
        || counts.connected.load(Ordering::SeqCst) >= n,
        || format!("{} of {n} connected", counts.connected.load(Ordering::SeqCst)),
    );
    println!("{n} devices connected in {:.1} s", t.elapsed().as_secs_f64());

    // 1. Idle.
    let idle = disconnects_during(&counts, 20).await;
    println!("idle 20 s: {idle} disconnects");

    // 2. The rate limit and burst, live.
    let uid = pod_uid(&ns);
    patch_gateway(&ns, r#"{"ratePerSecond":5,"burst":8}"#);
    let limits = disconnects_during(&counts, 20).await;
    let same_pod = pod_uid(&ns) == uid;
    println!("rate limit and burst changed: {limits} disconnects in 20 s; same gateway pod: {same_pod}");

    // 3. The gateway process dies.
    let restarts = gateway_restarts(&ns);
    let before = counts.disconnects.load(Ordering::SeqCst);
    let t = Instant::now();
    sigkill_container(&ns, "live-gateway-0", "gateway");
    wait_until_blocking(
        "the gateway container restarted and ready",
        300,
        || gateway_restarts(&ns) != restarts && all_pods_ready(&ns),
        || pods(&ns),
    );
    let back = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let crashed = counts.disconnects.load(Ordering::SeqCst) - before;
    let same_pod_after_kill = pod_uid(&ns) == uid;
    println!(
        "gateway process killed: its container ready again after {back:.1} s; {crashed} device disconnects; \
         same pod (broker kept): {same_pod_after_kill}"
    );

    // 4. The comparison: a change that rolls the pod.
    let before = counts.disconnects.load(Ordering::SeqCst);
    let reconnected_before = counts.connected.load(Ordering::SeqCst);
    let t = Instant::now();
    patch_gateway(&ns, r#"{"maxMessageBytes":32768}"#);
    wait_until_blocking(
        "the pod replaced",
        300,
        || {
            kubectl_try(&[
                "-n",
                &ns,
                "get",
                "pod",
                "live-gateway-0",
                "-o",
                "jsonpath={.metadata.uid}",
            ])
            .1 != uid
        },
        || pods(&ns),
    );
    wait_until_blocking(
        "every device reconnected",
        600,
        || counts.connected.load(Ordering::SeqCst) - reconnected_before >= n,
        || {
            format!(
                "{} of {n} reconnected",
                counts.connected.load(Ordering::SeqCst) - reconnected_before
            )
        },
    );
    let rolled = counts.disconnects.load(Ordering::SeqCst) - before;
    println!(
        "baseline, maxMessageBytes changed (rolls the pod): {rolled} disconnects; every device back after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    for dev in &connected {
        dev.stop().await;
    }
    // The operator revokes the Devices' certificates and releases their
    // finalizers; the namespace goes once they are gone.
    let _ = kubectl_try(&["-n", &ns, "delete", "devices,gateways", "--all", "--wait=false"]);
    let _ = kubectl_try(&["delete", "namespace", &ns, "--wait=false"]);
    assert_eq!(
        (idle, limits, crashed),
        (0, 0, 0),
        "no disconnect while idle, on a limits change or a gateway crash"
    );
    assert!(same_pod && same_pod_after_kill, "the gateway pod stayed");
}
