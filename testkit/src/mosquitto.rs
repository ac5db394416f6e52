//! Real Mosquitto running a Gateway's generated configuration, and clients
//! publishing to it with mosquitto_pub.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;

use crate::cluster::{TestNs, get_opt, is_ready};
use crate::fixtures::write;
use crate::net::{free_port, wait_port};
use crate::wait::wait_for;

/// Makes a path readable by the `mosquitto` user, which Mosquitto drops to
/// when started as root.
fn open_up(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Real Mosquitto running a Gateway's operator-generated configuration,
/// certificates and CRL. Killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Broker {
    /// Writes the Gateway's ConfigMaps and broker Secret to `dir` exactly as
    /// the pod mounts them, only moving `/mosquitto/` to `dir` and the
    /// listener to a free loopback port, and starts Mosquitto.
    pub async fn start(ns: &TestNs, gw: &str, dir: &Path) -> Broker {
        // Devices can be Ready before their Gateway has written the broker
        // configuration; the Gateway's own Ready says it is all there.
        let gws = ns.dynamic("fleetward.io/v1alpha1", "Gateway");
        wait_for(&format!("Gateway {gw} Ready"), 60, || get_opt(&gws, gw), is_ready).await;
        std::fs::create_dir_all(dir).unwrap();
        open_up(dir, 0o755);
        for sub in ["config", "certs", "crl", "data", "receipt"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            open_up(&dir.join(sub), 0o777);
        }
        let cm = ns.api::<ConfigMap>().get(&format!("{gw}-mosquitto")).await.unwrap();
        let data = cm.data.unwrap();
        let port = free_port();
        let prefix = format!("{}/", dir.display());
        let listener = data["mosquitto.conf"]
            .lines()
            .find(|l| l.starts_with("listener "))
            .expect("listener line")
            .to_string();
        // The plugin is where dev-up built it, not where the image has it.
        let conf = data["mosquitto.conf"]
            .replace("/mosquitto/", &prefix)
            .replace(&listener, &format!("listener {port} 127.0.0.1"))
            .replace(
                "/usr/lib/fleetward/fleetward_broker.so",
                &crate::cluster::env("FLEETWARD_MOSQUITTO_PLUGIN"),
            );
        write(&dir.join("config"), "mosquitto.conf", &conf);
        write(&dir.join("config"), "acl", &data["acl"]);
        let secret = format!("{gw}-broker-tls");
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            let p = write(&dir.join("certs"), key, &ns.secret_value(&secret, key).await);
            open_up(Path::new(&p), 0o644);
        }
        let mut broker = Broker {
            child: None,
            dir: dir.to_path_buf(),
            port,
        };
        broker.write_crl(&ns.crl_pem(gw).await);
        broker.start_process();
        broker
    }

    fn start_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        self.child = Some(
            Command::new("mosquitto")
                .arg("-c")
                .arg(self.dir.join("config/mosquitto.conf"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("mosquitto runs"),
        );
        wait_port(self.port, 10);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn write_crl(&self, pem: &str) {
        let p = write(&self.dir.join("crl"), "crl.pem", pem);
        open_up(Path::new(&p), 0o644);
    }

    /// Graceful stop (SIGTERM): Mosquitto writes its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_process();
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    pub fn tls_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            self.port.to_string(),
            "--cafile".into(),
            self.ca_file().display().to_string(),
            "-V".into(),
            "mqttv5".into(),
        ]
    }
}

/// A client identity (certificate + key files) taken from a Secret.
pub struct Identity {
    pub cert: String,
    pub key: String,
}

pub async fn identity(ns: &TestNs, secret: &str, dir: &Path) -> Identity {
    Identity {
        cert: write(dir, &format!("{secret}.crt"), &ns.secret_value(secret, "tls.crt").await),
        key: write(dir, &format!("{secret}.key"), &ns.secret_value(secret, "tls.key").await),
    }
}

/// Publishes one QoS 1 message with mosquitto_pub; returns whether the broker
/// accepted it (connected and not refused by the ACL) and its output.
pub fn mosquitto_pub(b: &Broker, id: &Identity, topic: &str, msg: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(b.tls_args())
        .args(["--cert", &id.cert, "--key", &id.key, "-t", topic, "-m", msg, "-q", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("Not authorized"), text)
}
