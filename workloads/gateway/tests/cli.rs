//! The gateway binary on bad configuration, with no services: it refuses
//! to start, says what is wrong, and never echoes a secret it was given.
//! (Having an integration test also makes `cargo test --workspace` build
//! the binary that the system tests run.)

use std::process::Command;

const KEY: &str = "k3y-that-must-not-leak-0123456789";

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward-gateway"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn complete(cmd: &mut Command) -> &mut Command {
    cmd.env("FLEETWARD_GATEWAY", "gw")
        .env("FLEETWARD_NAMESPACE", "ns")
        .env("MQTT_CA_FILE", "/nonexistent/ca.crt")
        .env("MQTT_CERT_FILE", "/nonexistent/tls.crt")
        .env("MQTT_KEY_FILE", "/nonexistent/tls.key")
        .env("COMMAND_TLS_CERT_FILE", "/nonexistent/cmd.crt")
        .env("COMMAND_TLS_KEY_FILE", "/nonexistent/cmd.key")
        .env("COMMAND_API_KEY", KEY)
        .env("DATABASE_URL", format!("postgres://audit:{KEY}@127.0.0.1:1/db"))
}

/// Runs the gateway, which must refuse to start; returns all it printed.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().expect("gateway runs");
    assert!(!out.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_missing_setting_is_named() {
    let out = gateway().output().expect("gateway runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gateway"), "{err}");
    assert!(err.contains("--command-api-key"), "{err}");
}

#[test]
fn kafka_settings_go_together_and_secrets_stay_out_of_the_error() {
    let text = refused(complete(&mut gateway()).env("KAFKA_BROKERS", "127.0.0.1:1"));
    assert!(text.contains("KAFKA_BROKERS and KAFKA_TOPIC go together"), "{text}");
    assert!(!text.contains(KEY), "a secret reached the output: {text}");
}

#[test]
fn a_short_command_key_is_refused_without_echoing_it() {
    let short = "tooshort-but-secret";
    let text = refused(complete(&mut gateway()).env("COMMAND_API_KEY", short));
    assert!(text.contains("COMMAND_API_KEY is shorter than 32 characters"), "{text}");
    assert!(!text.contains(short), "the key reached the output: {text}");
}
