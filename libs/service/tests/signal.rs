//! A real SIGTERM to this test process triggers the shutdown token (its own
//! process: the signal handler stays installed for the process's life).

use std::time::Duration;

use fleetward_service::shutdown::Shutdown;

#[tokio::test]
async fn sigterm_triggers_the_token() {
    let shutdown = Shutdown::on_signal();
    assert!(!shutdown.is_triggered());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(10), shutdown.triggered())
        .await
        .expect("SIGTERM did not trigger the shutdown");
    assert!(shutdown.is_triggered());
}
