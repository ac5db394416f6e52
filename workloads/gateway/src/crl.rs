//! Keeps Mosquitto's CRL current: when the CRL file (a ConfigMap volume the
//! operator updates on every revocation) changes, Mosquitto is sent SIGHUP,
//! which makes it re-read the CRL, so a revoked certificate can no longer
//! connect. Connections made before the revocation stay open; their
//! messages are refused by the registry check (the device is disabled or
//! gone), so nothing from a revoked device is forwarded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Audit, AuditEvent};
use crate::metrics::Metrics;

pub async fn watch(path: PathBuf, pid: Option<i32>, audit: Audit, metrics: Arc<Metrics>) {
    let mut last = tokio::fs::read(&path).await.ok();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = tokio::fs::read(&path).await.ok();
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        match pid.or_else(find_mosquitto) {
            Some(pid) => {
                // SAFETY: kill(2) with a valid signal number has no memory effects.
                let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
                if rc == 0 {
                    metrics.crl_reloads.inc();
                    audit.record(AuditEvent::new("crl_reload").detail(format!("SIGHUP to mosquitto pid {pid}")));
                } else {
                    tracing::error!(pid, error = %std::io::Error::last_os_error(), "could not signal mosquitto");
                }
            }
            None => tracing::error!("CRL changed but no mosquitto process found to reload it"),
        }
    }
}

/// Finds Mosquitto in the pod's shared process namespace.
fn find_mosquitto() -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "mosquitto").then_some(pid)
    })
}
