//! The whole stack on the local node, installed the way a user installs it
//! and driven from outside the cluster:
//!
//! 1. `helm install` of the chart with the local values (images built on
//!    this machine), two operator replicas; every pod Ready, one leader.
//! 2. `examples/` applied as they are (namespace moved): Gateways, Devices
//!    and the StationFeed become Ready, their workloads run as pods. Left
//!    idle (ten minutes, `FLEETWARD_E2E_QUIET_SECONDS`), the healthy stack
//!    raises no alert: none pending or firing, none at the receiver.
//! 3. The example Gateway exposed as a NodePort: simulated devices on the
//!    host publish signed telemetry through the broker pod and the gateway
//!    pod to Kafka and into PostgreSQL; latency publish → row stored.
//! 4. A forged and a replayed message are refused and audited.
//! 5. The example residential Tariff: its billing pod bills meter-001 for
//!    the month on request, reading it through the gateway pod (`billing.rs`).
//!    Every workload is connected to PostgreSQL as its own role over TLS;
//!    a plain connection is refused, and billing's role cannot empty the
//!    gateway's replay window or run a program on the server.
//! 6. The StationFeed's rows are in PostgreSQL, encrypted; the export CLI
//!    in the encryptor's image decrypts them.
//! 7. Prometheus scrapes every workload with non-zero counters, and every
//!    Grafana panel's query returns data.
//!    A pod that writes a 999,999 kWh reading straight to the gateway's
//!    Kafka topic is refused by the broker without a client certificate
//!    and with billing's (the ACLs), and with the ingestor's (which may
//!    write) gets it dead-lettered for its missing gateway MAC, not
//!    stored or billed.
//! 8. The gateway pod is deleted while devices publish at QoS 1: it comes
//!    back and no message is lost. `kubectl get devices` shows a device
//!    that published online with its `lastSeen` (`liveness.rs`); once it
//!    is silent, offline.
//! 9. The leader operator pod is deleted: the standby takes over.
//!    Alerts: the chart's rules are loaded and none fires for the
//!    healthy stack; once the devices stop, the silent thermometer's alert
//!    reaches the webhook receiver the test runs (through the chart's
//!    Alertmanager), and so does the alert of a StationFeed pointed at a
//!    source that answers 404 (`alerts.rs`).
//!    The example Gateway's rate limit lowered to 1/s: its pod stays (the
//!    same uid, the broker not restarted), and a device's next burst is
//!    refused as rate limited.
//! 10. The examples are deleted and `helm uninstall` leaves no pod behind.
//!
//! It prints its timings (install → Ready, latency percentiles, wall time).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetward_simulator::attack::{self, Attack, AttackOptions};
use fleetward_system_tests::webhook::AlertReceiver;
use fleetward_system_tests::*;
use fleetward_testkit::{percentile, wait_until_blocking};

mod alerts;
mod billing;
mod liveness;
mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_a_fleet_that_works_end_to_end() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let wall = Instant::now();
    let mut figures = Figures::default();
    fleetward_testkit::install_crds();
    let ns = format!("fw-e2e-{:08x}", fleetward_testkit::rand_u32());
    let _teardown = Teardown { namespace: ns.clone() };
    let chart = repo_root().join("helm/fleetward");
    let values = repo_root().join("devenv/values-local.yaml");
    let receiver = AlertReceiver::start(&host_ip());

    // 1. Install.
    let t = Instant::now();
    helm(&[
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        &ns,
        "--create-namespace",
        "-f",
        values.to_str().unwrap(),
        "--set",
        "operator.replicas=2",
        "--set",
        &format!("alertmanager.webhookUrl={}", receiver.url),
        "--set",
        "alertmanager.groupWait=5s",
        // The CRDs are the chart's templates; the earlier tests applied
        // them with kubectl.
        "--take-ownership",
        "--wait",
        "--timeout",
        "10m",
    ]);
    wait_until_blocking(
        "every pod of the release Ready",
        300,
        || all_pods_ready(&ns),
        || pods(&ns),
    );
    let install_secs = t.elapsed().as_secs_f64();
    figures.add(format!("helm install -> all pods Ready: {install_secs:.1} s"));
    wait_until_blocking("an operator leader", 60, || !leader(&ns).is_empty(), || pods(&ns));

    // 2. The examples, as they are.
    let t = Instant::now();
    kubectl_apply(&examples_in(&ns));
    for kind in ["gateways", "devices", "stationfeeds"] {
        ready(&ns, kind, 180);
    }
    wait_until_blocking("the examples' pods", 300, || all_pods_ready(&ns), || pods(&ns));
    figures.add(format!(
        "examples applied -> Ready with pods running: {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    // 2b. Left idle, the healthy stack raises no alert (ten minutes
    //     unless FLEETWARD_E2E_QUIET_SECONDS says otherwise).
    let prom = format!(
        "http://{}:9090",
        jsonpath(&ns, &["service", &format!("{RELEASE}-prometheus")], "{.spec.clusterIP}")
    );
    alerts::quiet_while_idle(&prom, &receiver, alerts::quiet_seconds(), &mut figures);

    // 3. The broker from outside: a NodePort on the node's address, which
    //    the broker certificate must name.
    let node = node_ip();
    let serial_before = jsonpath(&ns, &["gateway", "edge"], "{.status.serverCertificateSerial}");
    kubectl(&[
        "-n",
        &ns,
        "patch",
        "gateway",
        "edge",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"serviceType":"NodePort","extraIpAddresses":["{node}"]}}}}"#),
    ]);
    wait_until_blocking(
        "a broker certificate naming the node's address",
        60,
        || jsonpath(&ns, &["gateway", "edge"], "{.status.serverCertificateSerial}") != serial_before,
        || kubectl_try(&["-n", &ns, "get", "gateway", "edge", "-o", "yaml"]).1,
    );
    // The new certificate reaches the broker through a new pod.
    kubectl(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "statefulset/edge-gateway",
        "--timeout=180s",
    ]);
    wait_until_blocking("the gateway pod rolled out", 180, || all_pods_ready(&ns), || pods(&ns));
    let node_port: u16 = jsonpath(
        &ns,
        &["service", "edge"],
        r#"{.spec.ports[?(@.name=="mqtts")].nodePort}"#,
    )
    .parse()
    .expect("a NodePort");
    let devices = connect_devices(&ns, &node, node_port).await;

    // 3b. The broker as an attacker who took it over sees it: no API
    //     token, no gateway process (so no /proc/<gateway>/environ with the
    //     command keys and database URL, no memory with the devices' HMAC
    //     keys), another user, and a CRL it cannot rewrite.
    broker_cannot_reach_the_gateway(&ns);

    // Latency over 1,002 messages: publish → row stored in PostgreSQL.
    let per_device = 334;
    let sent = publish(&devices, per_device, Duration::from_millis(125)).await;
    let rows = wait_stored(&ns, &sent, 120);
    let mut latencies: Vec<f64> = sent.iter().map(|(id, at)| rows[id] - at).collect();
    let (p50, p99, max) = (
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 99.0),
        percentile(&mut latencies, 100.0),
    );
    figures.add(format!(
        "publish -> row stored over {} messages: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        latencies.len(),
    ));
    // The payload is stored encrypted: every one is a Fernet token (base64url
    // of version byte 0x80), and none holds a character JSON needs.
    let plaintext = psql(
        &ns,
        RELEASE,
        r#"SELECT count(*) FROM telemetry WHERE payload NOT LIKE 'gAAAAA%' OR payload ~ '[{}":,]'"#,
    );
    assert_eq!(plaintext.trim(), "0", "telemetry payloads are stored encrypted");

    // 4. A forged and a replayed message: refused, audited, not stored.
    let opts = AttackOptions {
        victim: None,
        max_message_bytes: 65536,
        flood_count: 0,
    };
    let forged = attack::perform(&devices[0], Attack::Tamper, &opts)
        .await
        .expect("tamper");
    let replayed = attack::perform(&devices[0], Attack::Replay, &opts)
        .await
        .expect("replay");
    let audited = |reason: &str, id: &str| {
        psql(
            &ns,
            RELEASE,
            &format!(
                "SELECT count(*) FROM fleetward_gateway.gateway_audit WHERE device_id = 'weather-001' \
                 AND reason = '{reason}' AND message_id = '{id}'"
            ),
        )
        .trim()
            == "1"
    };
    wait_until_blocking(
        "the forged and the replayed message audited",
        60,
        || audited("bad_signature", &forged.malicious[0]) && audited("replay", &replayed.malicious[0]),
        || {
            psql(
                &ns,
                RELEASE,
                "SELECT event, reason, device_id, message_id FROM fleetward_gateway.gateway_audit ORDER BY at DESC LIMIT 10",
            )
        },
    );
    let forged_rows = psql(
        &ns,
        RELEASE,
        &format!(
            "SELECT count(*) FROM telemetry WHERE message_id = '{}'",
            forged.malicious[0]
        ),
    );
    assert_eq!(forged_rows.trim(), "0", "a forged message is never stored");
    let replay_rows = psql(
        &ns,
        RELEASE,
        &format!(
            "SELECT count(*) FROM telemetry WHERE message_id = '{}'",
            replayed.legitimate[0]
        ),
    );
    assert_eq!(replay_rows.trim(), "1", "the original of a replay is stored once");

    // 5. Billing: meter-001 (DEVICES) has published `per_device` readings.
    billing::bill_the_month(&ns, per_device, &mut figures);

    // 5b. The database: every workload as its own role, over TLS.
    database_roles_hold(&ns);

    // 6. Stations: encrypted rows, decrypted by the export CLI shipped in the
    //    encryptor image, with the keyring the pod mounts.
    wait_until_blocking(
        "114 Dublin stations stored",
        180,
        || psql(&ns, RELEASE, "SELECT count(DISTINCT number) FROM stations").trim() == "114",
        || pods(&ns),
    );
    let sealed = psql(&ns, RELEASE, "SELECT address FROM stations WHERE number = '42' LIMIT 1");
    assert!(
        sealed.trim().starts_with("gAAAAA"),
        "address is a Fernet token: {sealed}"
    );
    let exported = kubectl(&[
        "-n",
        &ns,
        "exec",
        "deployment/dublin-bikes-encryptor",
        "--",
        "fleetward-stations",
        "export",
        "--table",
        "stations",
        "--contract",
        "Dublin",
        "--station",
        "42",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--keyring-file",
        "/var/run/fleetward/keyring/keyring.json",
    ]);
    let dublin = fleetward_testkit::dublin();
    let station_42 = dublin
        .iter()
        .find(|s| s["number"] == 42)
        .expect("station 42 in testdata");
    assert!(
        exported.contains(station_42["address"].as_str().unwrap()),
        "the export decrypts station 42's address: {exported}"
    );

    // 7. Prometheus: every workload is a target that is up, with counters.
    let apps = [
        "fleetward-operator",
        "fleetward-gateway",
        "fleetward-ingestor",
        "fleetward-encryptor",
        "fleetward-billing",
    ];
    wait_until_blocking(
        "every fleetward workload scraped and up",
        120,
        || {
            apps.iter().all(|app| {
                prom_sum(&prom, &format!(r#"min(up{{namespace="{ns}", app="{app}"}})"#)) == 1.0
                    && prom_sum(&prom, &format!(r#"count(up{{namespace="{ns}", app="{app}"}})"#)) >= 1.0
            })
        },
        || prometheus(&prom, "/api/v1/targets", None).to_string(),
    );
    assert_eq!(
        prom_sum(
            &prom,
            &format!(r#"count(up{{namespace="{ns}", app="fleetward-operator"}})"#)
        ),
        2.0,
        "both operator replicas are scraped"
    );
    assert_eq!(
        prom_sum(&prom, &format!(r#"sum(fleetward_operator_leader{{namespace="{ns}"}})"#)),
        1.0,
        "exactly one operator replica leads"
    );
    for (metric, labels, what) in [
        (
            "fleetward_gateway_messages_total",
            r#",result="accepted""#,
            "messages accepted",
        ),
        (
            "fleetward_gateway_messages_total",
            r#",result="rejected""#,
            "messages refused",
        ),
        ("fleetward_gateway_mqtt_messages_total", "", "MQTT messages received"),
        ("fleetward_encryptor_db_inserts_total", "", "rows inserted"),
        ("fleetward_ingestor_stations_produced_total", "", "stations produced"),
        ("fleetward_billing_bills_generated_total", "", "bills generated"),
        ("fleetward_reconciles_total", "", "reconciles"),
        ("fleetward_devices_ready", "", "devices ready"),
    ] {
        let q = format!(r#"sum({metric}{{namespace="{ns}"{labels}}})"#);
        wait_until_blocking(
            &format!("{what} > 0 in Prometheus"),
            60,
            || prom_sum(&prom, &q) > 0.0,
            || q.clone(),
        );
    }

    // Every Grafana panel's query returns data from this Prometheus.
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("helm/fleetward/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                wait_until_blocking(
                    &format!("panel {:?} to have data", panel["title"]),
                    60,
                    || !prom_query(&prom, expr).is_empty(),
                    || expr.to_string(),
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "the dashboards have their queries ({checked})");
    figures.add(format!("{checked} dashboard queries return data"));
    alerts::rules_loaded_and_quiet(&ns, &prom, &mut figures);

    // 7b. A pod of the cluster writes a reading straight to the gateway's
    //     topic: refused by the broker, or neither stored nor billed.
    a_reading_forged_in_the_cluster_is_refused(&ns, &prom);

    // 8. The gateway pod is deleted while devices publish at QoS 1. (Its
    //    replacement keeps the name: it is a StatefulSet's pod.)
    let lost = nothing_lost_across(&ns, &devices, || {
        kubectl(&["-n", &ns, "delete", "pod", "edge-gateway-0", "--wait=false"]);
    })
    .await;
    figures.add(format!(
        "gateway pod deleted during {lost} QoS 1 messages: all stored once"
    ));

    // 8b. The gateway's Kafka credential rotates (its Secret goes; the
    //     operator issues a new certificate and rolls the pod onto it)
    //     while devices publish: nothing lost.
    let serial = || {
        jsonpath(
            &ns,
            &["pod", "edge-gateway-0"],
            r"{.metadata.annotations.fleetward\.io/kafka-client-serial}",
        )
    };
    let old_serial = serial();
    assert!(!old_serial.is_empty(), "the gateway pod names its Kafka certificate");
    let rotated = nothing_lost_across(&ns, &devices, || {
        kubectl(&["-n", &ns, "delete", "secret", "edge-gateway-kafka"]);
    })
    .await;
    assert_ne!(serial(), old_serial, "the gateway runs on a new Kafka certificate");
    figures.add(format!(
        "gateway Kafka certificate rotated during {rotated} QoS 1 messages: all stored once"
    ));
    // 8c. The devices just published: `kubectl get devices` shows them online.
    liveness::online_after_publishing(&ns, "thermo-001", &mut figures);

    // The devices publish no more from here: thermo-001 goes silent. The
    // StationFeed is pointed at a path its source answers 404.
    let silent = Instant::now();
    alerts::break_the_feed(&ns);

    // 9. Leader failover: the leader's process is killed outright (SIGKILL
    //    through the node's containerd: no chance to release its lease), and
    //    the standby takes over once the lease runs out.
    let old_leader = leader(&ns);
    let t = Instant::now();
    sigkill_container(&ns, leader_pod(&old_leader), "operator");
    wait_until_blocking(
        "the standby operator to take the lease",
        60,
        || {
            let now = leader(&ns);
            !now.is_empty() && now != old_leader
        },
        || kubectl_try(&["-n", &ns, "get", "lease", "fleetward-operator", "-o", "yaml"]).1,
    );
    let takeover = t.elapsed().as_secs_f64();
    figures.add(format!(
        "leader process killed (SIGKILL) -> standby leads after {takeover:.1} s"
    ));
    assert!(takeover < 20.0, "takeover within 20 s (took {takeover:.1} s)");
    // The new leader reconciles: a new Device becomes Ready.
    kubectl_apply(&format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Device\nmetadata: {{name: after-failover, namespace: {ns}}}\n\
         spec: {{gatewayRef: edge, category: indoorThermometer}}\n"
    ));
    ready(&ns, "devices", 180);

    // 9b. Both alerts reach the receiver.
    alerts::reach_the_receiver(&ns, &receiver, silent, &mut figures);
    // 9c. … and the silent thermometer is offline in its status, as is the
    //     Device made after the failover, which never published.
    liveness::offline_when_silent(&ns, "thermo-001", silent, "after-failover", &mut figures);

    // 9d. The Gateway's rate limit is lowered while the devices are
    //     connected: the gateway follows it live; the pod (and its broker)
    //     stays, and the devices' connections with it.
    limits_change_live(&ns, &devices, &mut figures).await;

    // 10. Down: the examples go (the operator cleans up after them), then the
    //    release; no pod stays behind.
    drop(devices);
    kubectl(&[
        "-n",
        &ns,
        "delete",
        "tariffs,stationfeeds,devices,gateways",
        "--all",
        "--timeout=120s",
    ]);
    helm(&["uninstall", RELEASE, "-n", &ns, "--wait", "--timeout", "5m"]);
    wait_until_blocking(
        "no pod left after helm uninstall",
        180,
        || kubectl(&["-n", &ns, "get", "pods", "-o", "name"]).trim().is_empty(),
        || pods(&ns),
    );
    figures.add(format!("end-to-end wall time: {:.1} s", wall.elapsed().as_secs_f64()));
    figures.save();
}

/// Lowers the example Gateway's rate limit to 1/s, burst 1, and sends
/// bursts of five from thermo-001 until one is refused as rate limited;
/// the gateway pod is the same one throughout.
async fn limits_change_live(ns: &str, devices: &[std::sync::Arc<fleetward_simulator::Device>], figures: &mut Figures) {
    let pod_uid = || jsonpath(ns, &["pod", "edge-gateway-0"], "{.metadata.uid}");
    let before = pod_uid();
    let since = psql(ns, RELEASE, "SELECT now()").trim().to_string();
    let t = Instant::now();
    kubectl(&[
        "-n",
        ns,
        "patch",
        "gateway",
        "edge",
        "--type=merge",
        "-p",
        r#"{"spec":{"security":{"ratePerSecond":1,"burst":1}}}"#,
    ]);
    let thermo = devices
        .iter()
        .find(|d| d.id == "thermo-001")
        .expect("thermo-001")
        .clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        publish(std::slice::from_ref(&thermo), 5, Duration::from_millis(20)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if rate_limited_since(ns, &since, Some("thermo-001")) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no burst refused at 1/s after 60 s");
    }
    let applied = t.elapsed().as_secs_f64();
    assert_eq!(
        pod_uid(),
        before,
        "the gateway pod was replaced for a rate limit change"
    );
    let restarts = jsonpath(
        ns,
        &["pod", "edge-gateway-0"],
        "{.status.containerStatuses[*].restartCount}",
    );
    assert!(
        restarts.split_whitespace().all(|n| n == "0"),
        "a container restarted: {restarts}"
    );
    figures.add(format!(
        "rate limit lowered to 1/s: a burst refused {applied:.1} s after the patch, the same gateway pod, no restart"
    ));
}

/// Devices publish one QoS 1 message a second for 30 s while `disrupt`
/// replaces the gateway pod (5 s in); the pod comes back, every message is
/// stored exactly once and the rate limit refused none. Returns how many
/// were sent.
async fn nothing_lost_across(
    ns: &str,
    devices: &[std::sync::Arc<fleetward_simulator::Device>],
    disrupt: impl FnOnce(),
) -> usize {
    let gateway_uid = || {
        kubectl_try(&[
            "-n",
            ns,
            "get",
            "pod",
            "edge-gateway-0",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .1
    };
    let old_uid = gateway_uid();
    let phase_start = psql(ns, RELEASE, "SELECT now()").trim().to_string();
    // One message a second per device (real devices report every 10 s or
    // more): the backlog a device resends after the outage stays within
    // the example Gateway's rate limit (10/s, burst 20), so every refusal
    // would be a loss, not policy.
    let publishing = {
        let devices = devices.to_vec();
        tokio::spawn(async move { publish(&devices, 30, Duration::from_secs(1)).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    disrupt();
    let during = publishing.await.expect("publisher");
    wait_until_blocking(
        "a new gateway pod",
        180,
        || gateway_uid() != old_uid && all_pods_ready(ns),
        || pods(ns),
    );
    let kept = wait_stored(ns, &during, 180);
    assert_eq!(
        rate_limited_since(ns, &phase_start, None),
        0,
        "nothing was refused by the rate limit meanwhile"
    );
    assert_eq!(
        kept.len(),
        during.len(),
        "no QoS 1 message lost across the gateway pod's replacement"
    );
    let unique: HashSet<_> = kept.keys().collect();
    assert_eq!(unique.len(), during.len());
    during.len()
}

fn broker_cannot_reach_the_gateway(ns: &str) {
    let run = |container: &str, script: &str| {
        kubectl_try(&[
            "-n",
            ns,
            "exec",
            "edge-gateway-0",
            "-c",
            container,
            "--",
            "sh",
            "-c",
            script,
        ])
    };
    let (read, out) = run("mosquitto", "cat /var/run/secrets/kubernetes.io/serviceaccount/token");
    assert!(!read, "the broker container reads an API token: {out:.40}");
    let (_, processes) = run("mosquitto", "cat /proc/[0-9]*/comm");
    assert!(processes.contains("mosquitto"), "{processes}");
    assert!(
        !processes.contains("fleetward-gatew"),
        "the broker sees the gateway's process: {processes}"
    );
    let (wrote, out) = run("mosquitto", "echo >> /mosquitto/crl/crl.pem");
    assert!(!wrote, "the broker container rewrites its CRL: {out}");
    let (_, broker_user) = run("mosquitto", "id -u");
    let (_, gateway_user) = run("gateway", "id -u");
    assert_eq!((broker_user.trim(), gateway_user.trim()), ("65532", "65533"));
    // What the gateway must still read: the broker's receipt token, and its token.
    let (_, token) = run("gateway", "wc -c < /mosquitto/receipt/token");
    assert_eq!(token.trim(), "64", "the gateway reads the broker's receipt token");
    let (has_token, out) = run("gateway", "test -s /var/run/secrets/kubernetes.io/serviceaccount/token");
    assert!(has_token, "the gateway has its API token: {out}");
}
