//! Real Mosquitto running the configuration, certificates and CRL the
//! operator generated: what a device may and may not do on the wire.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fleetward_operator::crd::Device;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn broker_enforces_identity_acl_and_revocation() {
    operator();
    let ns = TestNs::new("fw-mqtt").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&GATEWAY_YAML.replace("name: gw", "name: other")).await;
    for (d, gw) in [("dev-a", "gw"), ("dev-b", "gw"), ("dev-x", "other")] {
        ns.apply_yaml(&device_yaml(d, gw, "")).await;
    }
    let api = ns.api::<Device>();
    for d in ["dev-a", "dev-b", "dev-x"] {
        wait_for(d, 60, || get_opt(&api, d), device_ready).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("ids");
    std::fs::create_dir_all(&ids).unwrap();
    let broker = Broker::start(&ns, "gw", &tmp.path().join("broker")).await;
    let a = identity(&ns, "dev-a-credentials", &ids).await;
    let b = identity(&ns, "dev-b-credentials", &ids).await;
    let x = identity(&ns, "dev-x-credentials", &ids).await;
    let gateway = identity(&ns, "gw-gateway-client", &ids).await;

    // Before the subscriber below: one identity is one MQTT session (the
    // client id is the identity), so this connection would end its session.
    let (ok, out) = mosquitto_pub(&broker, &gateway, "device/dev-a/data", "gateway-forged-data");
    assert!(!ok, "the gateway identity may not inject device data: {out}");

    // The gateway identity subscribes to all device data, as the gateway does.
    let sub_out = tmp.path().join("sub.out");
    let mut sub = Command::new("mosquitto_sub")
        .args(broker.tls_args())
        .args([
            "--cert",
            &gateway.cert,
            "--key",
            &gateway.key,
            "-t",
            "device/+/data",
            "-v",
            "-q",
            "1",
        ])
        .stdout(std::fs::File::create(&sub_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));

    let (ok, out) = mosquitto_pub(&broker, &a, "device/dev-a/data", "a-own");
    assert!(ok, "device publishes to its own topic: {out}");
    let (ok, out) = mosquitto_pub(&broker, &a, "device/dev-b/data", "a-as-b");
    assert!(
        !ok && out.contains("Not authorized"),
        "device must not publish as another device: {out}"
    );
    let (ok, out) = mosquitto_pub(&broker, &a, "device/dev-a/command", "a-forged-command");
    assert!(
        !ok && out.contains("Not authorized"),
        "device must not write its command topic: {out}"
    );
    let (ok, out) = mosquitto_pub(&broker, &x, "device/dev-x/data", "other-ca");
    assert!(
        !ok && !out.contains("Not authorized"),
        "certificate from another CA must not connect: {out}"
    );

    // Revocation: disable dev-b; once the CRL file changes it is refused.
    let (ok, out) = mosquitto_pub(&broker, &b, "device/dev-b/data", "b-before");
    assert!(ok, "{out}");
    api.patch(
        "dev-b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"enabled": false}})),
    )
    .await
    .unwrap();
    let serial = api.get("dev-b").await.unwrap().status.unwrap().serial.unwrap();
    let cms = ns.api::<ConfigMap>();
    wait_for(
        "serial in CRL",
        60,
        || get_opt(&cms, "gw-crl"),
        |cm| fleetward_operator::crl::parse(cm).is_ok_and(|c| c.contains(&serial)),
    )
    .await;
    // As the gateway does: a new CRL file, which the broker's plugin notices
    // within a second and has Mosquitto reload (no signal from outside).
    broker.write_crl(&ns.crl_pem("gw").await);
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = mosquitto_pub(&broker, &b, "device/dev-b/data", "b-revoked");
    assert!(!ok, "revoked certificate must be refused after the CRL reload: {out}");
    let (ok, out) = mosquitto_pub(&broker, &a, "device/dev-a/data", "a-after");
    assert!(ok, "other devices are unaffected: {out}");

    std::thread::sleep(Duration::from_millis(700));
    let _ = sub.kill();
    let _ = sub.wait();
    let got = std::fs::read_to_string(&sub_out).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        lines,
        [
            "device/dev-a/data a-own",
            "device/dev-b/data b-before",
            "device/dev-a/data a-after"
        ],
        "only authorised messages reach the gateway"
    );
    ns.cleanup().await;
}
