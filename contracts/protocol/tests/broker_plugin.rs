//! The broker's `fleetward_broker` plugin (C) speaks this crate's protocol:
//! its header is exactly what `broker::c_header` generates, and its own C
//! test (AddressSanitizer and UBSan) passes. Needs gcc, make and the
//! headers of mosquitto-dev, libmosquitto-dev and libssl-dev, as the dev
//! environment does.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetward_protocol::broker::{C_HEADER_PATH, c_header};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_plugins_header_is_generated_from_this_crate() {
    let path = workspace_root().join(C_HEADER_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == c_header(),
        "{C_HEADER_PATH} differs from what the protocol crate generates; regenerate it from the workspace root: \
         cargo run -q -p fleetward-protocol --bin fleetward-c-header > {C_HEADER_PATH}"
    );
}

#[test]
fn the_plugin_builds_and_its_c_test_passes() {
    let plugin = workspace_root().join("workloads/mosquitto/plugin");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleetward_broker");
    let run = Command::new("make")
        .arg("-C")
        .arg(&plugin)
        .arg(format!("OUT={}", out.display()))
        .args(["all", "test"])
        .output()
        .unwrap_or_else(|e| panic!("make does not run ({e}); install make (see devenv/dev.sh)"));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "make all test failed:\n{log}");
    assert!(log.contains("fleetward_broker: all checks passed"), "{log}");
    assert!(out.join("fleetward_broker.so").is_file(), "{log}");
}
