//! The simulator binary's command line, with no services: its commands are
//! listed, and a bad attack name is refused naming it. (Having an
//! integration test also makes `cargo test --workspace` build the binary
//! that the system tests run.)

use std::process::Command;

fn sim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetward-sim"))
        .args(args)
        .output()
        .expect("fleetward-sim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_lists_the_commands() {
    let (ok, text) = sim(&["--help"]);
    assert!(ok, "{text}");
    for command in ["run", "attack", "load"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn an_unknown_attack_is_refused_by_name() {
    let (ok, text) = sim(&["attack", "--device", "d1", "--attack", "teleport"]);
    assert!(!ok);
    assert!(text.contains("unknown attack \"teleport\""), "{text}");
}
