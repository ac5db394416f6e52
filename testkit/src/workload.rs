//! A binary of this workspace started by a test: the operator, the gateway,
//! the ingestor or the encryptor. One type for all of them, so starting,
//! waiting for readiness, reading the log and the metrics, and killing work
//! the same way everywhere.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::http_get;

/// A running binary whose stdout and stderr go to one log file and which
/// serves HTTP (metrics, health) under `base_url`. Killed when dropped.
///
/// Its stdin is a pipe this handle keeps open, so a binary started with
/// `--exit-on-stdin-eof` ends when the test process does, even when the
/// handle lives in a `static` and is never dropped.
pub struct Workload {
    child: Child,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base_url: String,
    pub log: PathBuf,
}

impl Workload {
    /// Spawns `cmd` with its output in `log`, then waits up to `secs` for
    /// `{base_url}{ready_path}` to answer; panics with the log if it exits
    /// first or does not answer in time.
    pub fn spawn(mut cmd: Command, base_url: String, log: PathBuf, ready_path: &str, secs: u64) -> Self {
        let out = std::fs::File::create(&log).expect("create the log file");
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("clone the log file handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        let mut w = Workload { child, base_url, log };
        let ready = format!("{}{ready_path}", w.base_url);
        let deadline = Instant::now() + Duration::from_secs(secs);
        while http_get(&ready).is_none() {
            if let Some(status) = w.child.try_wait().expect("try_wait") {
                panic!(
                    "{:?} exited ({status}) before answering {ready}; log:\n{}",
                    cmd.get_program(),
                    w.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not answer {ready} within {secs}s; log:\n{}",
                cmd.get_program(),
                w.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        w
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One scrape of `/metrics` (empty if it does not answer), to read
    /// several series consistently.
    pub fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.base_url)).unwrap_or_default()
    }

    /// Sum of the series whose line starts with `series`, e.g.
    /// `fleetward_reconciles_total{kind="device"}` or a bare metric name
    /// (then all its label sets are summed).
    pub fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics(), series)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`-STOP`, `-CONT`, `-HUP`, …).
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .expect("run kill")
                .success(),
            "kill {sig} {pid}"
        );
    }

    /// SIGKILL: no chance to flush, commit or clean up.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// How it ended, once it has (without waiting).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of the series in Prometheus text `text` whose line starts with
/// `series`.
/// A binary of this workspace, built next to the test executables by
/// `cargo test --workspace` (the README's test command): cargo builds a
/// crate's binaries when it has an integration test, so the gateway and
/// the simulator keep standalone tests of their own. For tests that run
/// another crate's program (`CARGO_BIN_EXE_*` covers only a crate's own
/// binaries).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test --workspace`, or `cargo build --bin {name}` first",
        path.display()
    );
    path
}

pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_in;

    #[test]
    fn metric_in_sums_label_sets_and_skips_comments() {
        let text = "# HELP x_total help\n# TYPE x_total counter\n\
                    x_total{r=\"a\"} 2\nx_total{r=\"b\"} 3\ny 7\n";
        assert_eq!(metric_in(text, "x_total"), 5.0);
        assert_eq!(metric_in(text, "x_total{r=\"b\"}"), 3.0);
        assert_eq!(metric_in(text, "z"), 0.0);
    }
}
