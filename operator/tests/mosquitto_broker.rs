//! Real Mosquitto running the configuration, certificates and CRL the
//! operator generated: what a device may and may not do on the wire.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fleetward_operator::crd::Device;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use serde_json::json;

struct Broker {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a file readable by the `mosquitto` user Mosquitto drops to when
/// started as root.
fn open_up(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Broker {
    /// Writes the Gateway's ConfigMaps and broker Secret to `dir` exactly as
    /// the pod mounts them, only moving `/mosquitto/` to `dir` and the
    /// listener to a free loopback port, and starts Mosquitto.
    async fn start(ns: &TestNs, gw: &str, dir: &Path) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        open_up(dir, 0o755);
        for sub in ["config", "certs", "crl", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            open_up(&dir.join(sub), 0o777);
        }
        let cm = ns.api::<ConfigMap>().get(&format!("{gw}-mosquitto")).await.unwrap();
        let data = cm.data.unwrap();
        let port = free_port();
        let prefix = format!("{}/", dir.display());
        let conf = data["mosquitto.conf"]
            .replace("/mosquitto/", &prefix)
            .replace("listener 8883", &format!("listener {port} 127.0.0.1"));
        assert!(
            conf.contains(&format!("listener {port} 127.0.0.1")),
            "listener line rewritten"
        );
        write(&dir.join("config"), "mosquitto.conf", &conf);
        write(&dir.join("config"), "acl", &data["acl"]);
        let secret = format!("{gw}-broker-tls");
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            let p = write(&dir.join("certs"), key, &ns.secret_value(&secret, key).await);
            open_up(Path::new(&p), 0o644);
        }
        let broker = Broker {
            child: Command::new("mosquitto")
                .arg("-c")
                .arg(dir.join("config/mosquitto.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto runs"),
            dir: dir.to_path_buf(),
            port,
        };
        broker.write_crl(&ns.crl_pem(gw).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn write_crl(&self, pem: &str) {
        let p = write(&self.dir.join("crl"), "crl.pem", pem);
        open_up(Path::new(&p), 0o644);
    }

    /// What the gateway sidecar does when the CRL ConfigMap changes.
    fn reload(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        std::thread::sleep(Duration::from_millis(500));
    }

    fn tls_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            self.port.to_string(),
            "--cafile".into(),
            self.dir.join("certs/ca.crt").display().to_string(),
            "-V".into(),
            "mqttv5".into(),
        ]
    }
}

/// A client identity (certificate + key files) taken from a Secret.
struct Identity {
    cert: String,
    key: String,
}

async fn identity(ns: &TestNs, secret: &str, dir: &Path) -> Identity {
    Identity {
        cert: write(dir, &format!("{secret}.crt"), &ns.secret_value(secret, "tls.crt").await),
        key: write(dir, &format!("{secret}.key"), &ns.secret_value(secret, "tls.key").await),
    }
}

/// Publishes one QoS 1 message; returns mosquitto_pub's combined output
/// and whether the broker accepted it (connected and not refused by ACL).
fn publish(b: &Broker, id: &Identity, topic: &str, msg: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(b.tls_args())
        .args(["--cert", &id.cert, "--key", &id.key, "-t", topic, "-m", msg, "-q", "1"])
        .output()
        .expect("mosquitto_pub runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("Not authorized"), text)
}

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

    let (ok, out) = publish(&broker, &a, "device/dev-a/data", "a-own");
    assert!(ok, "device publishes to its own topic: {out}");
    let (ok, out) = publish(&broker, &a, "device/dev-b/data", "a-as-b");
    assert!(
        !ok && out.contains("Not authorized"),
        "device must not publish as another device: {out}"
    );
    let (ok, out) = publish(&broker, &a, "device/dev-a/command", "a-forged-command");
    assert!(
        !ok && out.contains("Not authorized"),
        "device must not write its command topic: {out}"
    );
    let (ok, out) = publish(&broker, &x, "device/dev-x/data", "other-ca");
    assert!(
        !ok && !out.contains("Not authorized"),
        "certificate from another CA must not connect: {out}"
    );
    let (ok, out) = publish(&broker, &gateway, "device/dev-a/data", "gateway-forged-data");
    assert!(!ok, "the gateway identity may not inject device data: {out}");

    // Revocation: disable dev-b; once Mosquitto reloads the CRL it refuses it.
    let (ok, out) = publish(&broker, &b, "device/dev-b/data", "b-before");
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
        |cm| cm.data.as_ref().unwrap()["revoked.json"].contains(&serial),
    )
    .await;
    broker.write_crl(&ns.crl_pem("gw").await);
    broker.reload();
    let (ok, out) = publish(&broker, &b, "device/dev-b/data", "b-revoked");
    assert!(!ok, "revoked certificate must be refused after the CRL reload: {out}");
    let (ok, out) = publish(&broker, &a, "device/dev-a/data", "a-after");
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
