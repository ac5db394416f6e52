//! The `fleetward-sim` binary against real Mosquitto running a Gateway's
//! generated configuration, with credentials from the real operator.

use std::process::{Command, Stdio};
use std::time::Duration;

use fleetward_protocol::{Category, Envelope};
use fleetward_testkit::*;

#[tokio::test]
async fn run_publishes_signed_category_readings_from_secrets_and_files() {
    operator_in_process();
    let ns = TestNs::new("sim-cli").await;
    ns.gateway_with_devices(
        GATEWAY_YAML,
        &[
            device_yaml_with_category("meter-1", "gw", "electricityMeter", ""),
            device_yaml_with_category("cam-1", "gw", "ipCamera", ""),
        ],
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&ns, "gw", &tmp.path().join("broker")).await;
    let ids = tmp.path().join("ids");
    std::fs::create_dir_all(&ids).unwrap();
    let gw = identity(&ns, "gw-gateway-client", &ids).await;

    // Watch everything devices publish, as the gateway would.
    let out = tmp.path().join("sub.out");
    let mut sub = Command::new("mosquitto_sub")
        .args(broker.tls_args())
        .args([
            "--cert",
            &gw.cert,
            "--key",
            &gw.key,
            "-t",
            "device/+/data",
            "-v",
            "-q",
            "1",
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));

    // meter-1 from its Secret (KUBECONFIG), cam-1 from files.
    let cam_dir = tmp.path().join("creds/cam-1");
    std::fs::create_dir_all(&cam_dir).unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt", "hmac.key"] {
        write(&cam_dir, k, &ns.secret_value("cam-1-credentials", k).await);
    }
    write(&cam_dir, "category", "ipCamera");
    let sim = workspace_binary("fleetward-sim");
    let common = ["--host", "localhost", "--port", &broker.port.to_string()];
    let from_secret = Command::new(&sim)
        .args(["--namespace", &ns.name])
        .args(common)
        .args(["run", "--device", "meter-1", "--interval", "0.2", "--count", "3"])
        .env("KUBECONFIG", env("KUBECONFIG"))
        .output()
        .unwrap();
    assert!(
        from_secret.status.success(),
        "{}",
        String::from_utf8_lossy(&from_secret.stderr)
    );
    let from_files = Command::new(&sim)
        .args(common)
        .args(["--credentials-dir", &tmp.path().join("creds").display().to_string()])
        .args(["run", "--device", "cam-1", "--interval", "0.2", "--count", "2"])
        .output()
        .unwrap();
    assert!(
        from_files.status.success(),
        "{}",
        String::from_utf8_lossy(&from_files.stderr)
    );

    std::thread::sleep(Duration::from_millis(700));
    let _ = sub.kill();
    let _ = sub.wait();
    let got = std::fs::read_to_string(&out).unwrap();
    let mut counts = std::collections::HashMap::new();
    let mut last_kwh = 0.0;
    for line in got.lines() {
        let (topic, body) = line.split_once(' ').unwrap();
        let env = Envelope::parse(body.as_bytes()).unwrap();
        let device = topic.trim_start_matches("device/").trim_end_matches("/data");
        assert_eq!(env.device_id, device);
        let key = ns.secret_value(&format!("{device}-credentials"), "hmac.key").await;
        assert!(
            env.verify(key.as_bytes()),
            "{device}'s signature verifies with its secret"
        );
        let category = if device == "meter-1" {
            Category::ElectricityMeter
        } else {
            Category::IpCamera
        };
        assert_eq!(category.validate(env.payload.get()), Ok(()), "{body}");
        if device == "meter-1" {
            let kwh: f64 = serde_json::from_str::<serde_json::Value>(env.payload.get()).unwrap()["kwh_total"]
                .as_f64()
                .unwrap();
            assert!(kwh > last_kwh, "meter readings are cumulative");
            last_kwh = kwh;
        }
        *counts.entry(device.to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("meter-1"), Some(&3), "{got}");
    assert_eq!(counts.get("cam-1"), Some(&2), "{got}");
    ns.cleanup().await;
}
