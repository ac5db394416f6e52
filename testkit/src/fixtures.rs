//! Test data and manifests: the Dublin stations, a Gateway, Devices; and
//! small file and openssl helpers.

use crate::cluster::{rand_u32, repo_root};
use std::path::Path;
use std::process::Command;

/// A name no other test (or earlier run) uses: topics, tables, groups.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand_u32())
}

/// The 114 Dublin stations of testdata/, as the JCDecaux API sent them.
pub fn dublin_text() -> String {
    std::fs::read_to_string(repo_root().join("testdata/stations/jcdecaux-v1-dublin.json")).unwrap()
}

pub fn dublin() -> Vec<serde_json::Value> {
    serde_json::from_str(&dublin_text()).unwrap()
}

/// Runs openssl with `args`; returns (success, stdout+stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_string_lossy().into_owned()
}

pub const GATEWAY_YAML: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Gateway
metadata: {name: gw}
spec:
  extraDnsNames: [mqtt.test.example]
"#;

pub fn device_yaml(name: &str, gateway: &str, extra_spec: &str) -> String {
    device_yaml_with_category(name, gateway, "weatherStation", extra_spec)
}

pub fn device_yaml_with_category(name: &str, gateway: &str, category: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Device\nmetadata: {{name: {name}}}\nspec:\n  gatewayRef: {gateway}\n  category: {category}\n{extra_spec}\n"
    )
}
