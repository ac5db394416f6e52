//! What the end-to-end test's steps share: the release's teardown, the
//! figures it prints, kubectl waits and reads, and simulated devices that
//! connect, publish and find their rows in PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetward_simulator::{ConnectOptions, Credentials, Device};
use fleetward_system_tests::*;

pub(crate) const RELEASE: &str = "fleetward";
pub(crate) const DEVICES: [&str; 3] = ["weather-001", "thermo-001", "meter-001"];

/// Removes the release and its namespace even when the test fails half way,
/// so a failed run leaves no stack behind.
pub(crate) struct Teardown {
    pub(crate) namespace: String,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let ns = self.namespace.as_str();
        let _ = kubectl_try(&[
            "-n",
            ns,
            "delete",
            "tariffs,gateways,devices,stationfeeds",
            "--all",
            "--wait=false",
        ]);
        let _ = std::process::Command::new(helm_bin())
            .args(["uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m"])
            .env("KUBECONFIG", env("KUBECONFIG"))
            .output();
        let _ = kubectl_try(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// The run's figures: printed, and written to `.dev/e2e-figures.txt` (a
/// passing test's output is hidden; `./deploy.sh test` prints the file).
#[derive(Default)]
pub(crate) struct Figures(pub(crate) Vec<String>);

impl Figures {
    pub(crate) fn add(&mut self, line: String) {
        println!("{line}");
        self.0.push(line);
    }

    pub(crate) fn save(&self) {
        let path = repo_root().join(".dev/e2e-figures.txt");
        let _ = std::fs::write(path, self.0.join("\n") + "\n");
    }
}

pub(crate) fn millis_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

pub(crate) async fn connect_devices(ns: &str, host: &str, port: u16) -> Vec<Arc<Device>> {
    let client = fleetward_testkit::client().await;
    let opts = ConnectOptions::new(host, port);
    let mut devices = Vec::new();
    for name in DEVICES {
        let creds = Credentials::from_secret(client.clone(), ns, name)
            .await
            .expect("credentials");
        let (dev, mut events) = Device::connect(creds, &opts).await.expect("connect");
        // Wait for the broker to accept the connection.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Some(fleetward_simulator::DeviceEvent::Connected)) => break,
                Ok(Some(other)) => eprintln!("{name}: {other:?}"),
                Ok(None) => panic!("{name}: event channel closed"),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "{name} could not connect to {host}:{port}");
        }
        // Keep draining events so the device's loop never blocks.
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        devices.push(dev);
    }
    devices
}

/// Publishes `per_device` readings from each device, spaced to stay under
/// the example Gateway's rate limit (10/s per device). Returns the message
/// ids with the time (ms since the epoch) each was handed to the client.
pub(crate) async fn publish(devices: &[Arc<Device>], per_device: usize, every: Duration) -> BTreeMap<String, f64> {
    let mut tasks = Vec::new();
    for dev in devices {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(every);
            for _ in 0..per_device {
                tick.tick().await;
                let at = millis_now();
                let id = dev.send_reading().await.expect("publish");
                sent.push((id, at));
            }
            sent
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.expect("publisher"));
    }
    all
}

/// Refusals for the rate limit audited since `since` (a PostgreSQL
/// timestamp), of `device` or of every device.
pub(crate) fn rate_limited_since(ns: &str, since: &str, device: Option<&str>) -> u64 {
    let of_device = device.map_or(String::new(), |d| format!(" AND device_id = '{d}'"));
    psql(
        ns,
        RELEASE,
        &format!(
            "SELECT count(*) FROM fleetward_gateway.gateway_audit WHERE reason = 'rate_limited' \
             AND at >= '{since}'{of_device}"
        ),
    )
    .trim()
    .parse()
    .expect("a count")
}

/// message_id → stored_at (ms) of the telemetry rows of these ids.
pub(crate) fn stored(ns: &str, ids: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let list: Vec<String> = ids.keys().map(|id| format!("'{id}'")).collect();
    let mut rows = BTreeMap::new();
    for chunk in list.chunks(500) {
        let out = psql(
            ns,
            RELEASE,
            &format!(
                "SELECT message_id, extract(epoch FROM stored_at) * 1000 FROM telemetry WHERE message_id IN ({})",
                chunk.join(",")
            ),
        );
        for line in out.lines().filter(|l| !l.is_empty()) {
            let (id, at) = line.split_once('|').expect("id|stored_at");
            rows.insert(id.to_string(), at.parse::<f64>().expect("epoch ms"));
        }
    }
    rows
}

pub(crate) fn wait_stored(ns: &str, ids: &BTreeMap<String, f64>, secs: u64) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let rows = stored(ns, ids);
        if rows.len() == ids.len() {
            return rows;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = ids.keys().filter(|id| !rows.contains_key(*id)).take(10).collect();
            panic!(
                "{} of {} messages stored after {secs}s; missing e.g. {missing:?}\n{}",
                rows.len(),
                ids.len(),
                pods(ns)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The chart's database roles at work: every session from outside the
/// database pod is one of the three workload roles (none is the admin) and
/// encrypted; a plain connection is refused by the server; and with
/// billing's own credentials, over TLS, the gateway's replay window and the
/// server's programs are out of reach.
pub fn database_roles_hold(ns: &str) {
    let sessions = psql(
        ns,
        RELEASE,
        "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.client_addr IS NOT NULL AND a.usename IS NOT NULL ORDER BY 1",
    );
    let roles: std::collections::BTreeSet<&str> = sessions
        .lines()
        .map(|line| {
            let (user, ssl) = line.split_once('|').unwrap_or((line, ""));
            assert!(
                [
                    "fleetward_gateway_app",
                    "fleetward_encryptor_app",
                    "fleetward_billing_app"
                ]
                .contains(&user),
                "a workload connected as {user}, not as its role: {sessions}"
            );
            assert_eq!(ssl, "t", "{user} connected without TLS: {sessions}");
            user
        })
        .collect();
    for role in ["fleetward_gateway_app", "fleetward_encryptor_app"] {
        assert!(roles.contains(role), "no session of {role}: {sessions}");
    }

    let url = kubectl(&[
        "-n",
        ns,
        "get",
        "secret",
        &format!("{RELEASE}-database-billing"),
        "-o",
        "go-template={{.data.url | base64decode}}",
    ]);
    let verified = "sslmode=verify-full&sslrootcert=/var/run/fleetward/database/ca.crt";
    assert!(url.ends_with(verified), "billing's URL verifies the server");
    // In the database pod the CA file is not where the URL says: encrypt
    // without it (`require`), or not at all.
    let (ok, out, err) = psql_with_url(ns, RELEASE, &url.replace(verified, "sslmode=disable"), "SELECT 1");
    let said = out + &err;
    assert!(!ok && said.contains("no encryption"), "a plain connection: {said}");
    let tls = url.replace(verified, "sslmode=require");
    let (ok, out, err) = psql_with_url(ns, RELEASE, &tls, "SELECT current_user");
    assert!(
        ok && out.trim() == "fleetward_billing_app",
        "billing's role over TLS: {out}{err}"
    );
    for attack in [
        "DELETE FROM fleetward_gateway.gateway_replay_batches",
        "SELECT count(*) FROM fleetward_gateway.gateway_audit",
        "DELETE FROM public.fleetward_station_tables",
        "COPY (SELECT 1) TO PROGRAM 'id'",
    ] {
        let (ok, out, err) = psql_with_url(ns, RELEASE, &tls, attack);
        let out = out + &err;
        assert!(
            !ok && (out.contains("permission denied") || out.contains("must be superuser")),
            "billing's role: {attack}: {out}"
        );
        assert!(!out.contains(url.as_str()), "the URL in psql's output");
    }
}

/// Runs the Kafka image's console producer in a pod of the namespace,
/// writing `record` to the example gateway's topic over TLS with the
/// Kafka client Secret `secret` mounted: `identity` presents its
/// certificate, otherwise only its CA is trusted (a client with no
/// identity). Returns the pod's log, which ends `exit=<status>`.
fn forge_with(ns: &str, pod: &str, secret: &str, identity: bool, record: &str) -> String {
    let keystore = if identity {
        "cat /k/tls.key /k/tls.crt >/tmp/ks.pem; printf 'ssl.keystore.type=PEM\\nssl.keystore.location=/tmp/ks.pem\\n' >>/tmp/p;"
    } else {
        ""
    };
    let script = format!(
        "printf 'security.protocol=SSL\\nssl.truststore.type=PEM\\nssl.truststore.location=/k/ca.crt\\n' >/tmp/p; {keystore} \
         echo \"$RECORD\" | java -Xmx64m -XX:-UsePerfData -cp '/opt/kafka/libs/*' \
         org.apache.kafka.tools.ConsoleProducer --bootstrap-server {RELEASE}-kafka:9092 --producer.config /tmp/p \
         --producer-property max.block.ms=20000 --producer-property enable.idempotence=false --sync \
         --topic fleet-telemetry --property parse.key=true --property 'key.separator=|' 2>&1; echo exit=$?"
    );
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "forger",
                "image": "localhost/fleetward/kafka:4.1.1",
                "imagePullPolicy": "Never",
                "env": [{"name": "RECORD", "value": record}],
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "k", "mountPath": "/k", "readOnly": true}],
            }],
            "volumes": [{"name": "k", "secret": {"secretName": secret}}],
        },
    });
    kubectl_apply(&manifest.to_string());
    fleetward_testkit::wait_until_blocking(
        "the forging pod to finish",
        120,
        || jsonpath(ns, &["pod", pod], "{.status.phase}") == "Succeeded",
        || kubectl_try(&["-n", ns, "logs", pod]).1,
    );
    let log = kubectl_try(&["-n", ns, "logs", pod]).1;
    kubectl(&["-n", ns, "delete", "pod", pod, "--wait=false"]);
    log
}

/// The attacks on Kafka from a pod of the cluster, each writing a reading
/// of 999,999 kWh for meter-001 to the example gateway's topic:
/// - with no client certificate (only the CA, which is public): the broker
///   ends the TLS handshake;
/// - with billing's certificate (stolen from a billing pod): the broker's
///   ACLs refuse billing any write;
/// - with the ingestor's certificate (the ingestor may write): the record
///   lands but carries no gateway MAC, so the telemetry writer
///   dead-letters it and billing counts it `unsigned` (both seen in
///   Prometheus); no row holds it.
pub fn a_reading_forged_in_the_cluster_is_refused(ns: &str, prom: &str) {
    let refused_by_billing = format!(r#"sum(fleetward_billing_readings_total{{namespace="{ns}", result="unsigned"}})"#);
    let dead_letters = format!(r#"sum(fleetward_encryptor_records_total{{namespace="{ns}", result="dead_letter"}})"#);
    let before = (prom_sum(prom, &refused_by_billing), prom_sum(prom, &dead_letters));
    let id = format!("forged-{:08x}", fleetward_testkit::rand_u32());
    let record = format!(
        r#"meter-001|{{"device_id":"meter-001","category":"electricityMeter","timestamp":{},"message_id":"{id}","payload":{{"kwh_total":999999}},"received_at":"{}","gateway":"edge","namespace":"{ns}"}}"#,
        chrono::Utc::now().timestamp(),
        chrono::Utc::now().to_rfc3339(),
    );
    let billing = "residential-2026-billing-kafka";
    let log = forge_with(ns, "forger-anonymous", billing, false, &record);
    assert!(
        !log.contains("exit=0")
            && (log.contains("SslAuthenticationException") || log.contains("Failed authentication")),
        "a client with no certificate: {log}"
    );
    let log = forge_with(ns, "forger-billing", billing, true, &record);
    assert!(
        !log.contains("exit=0") && log.contains("TopicAuthorizationException"),
        "billing's certificate writing telemetry: {log}"
    );
    let log = forge_with(ns, "forger-ingestor", "dublin-bikes-ingestor-kafka", true, &record);
    assert!(log.contains("exit=0"), "the ingestor's certificate may write: {log}");
    fleetward_testkit::wait_until_blocking(
        "the forged reading refused by billing and dead-lettered by the telemetry writer",
        90,
        || prom_sum(prom, &refused_by_billing) > before.0 && prom_sum(prom, &dead_letters) > before.1,
        || format!("{refused_by_billing} / {dead_letters}, before {before:?}"),
    );
    for table in ["telemetry", "fleetward_billing.readings"] {
        let rows = psql(
            ns,
            RELEASE,
            &format!("SELECT count(*) FROM {table} WHERE message_id = '{id}'"),
        );
        assert_eq!(rows.trim(), "0", "the forged reading is in {table}");
    }
}
