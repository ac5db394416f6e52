//! Keeps the broker's view of revocations current, two ways:
//!
//! - `revocations`: the CRL ConfigMap, watched through the API, is parsed on
//!   every change and its serials are published to the broker's
//!   fleetward_broker plugin (`$CONTROL/fleetward/v1/revoke`), again on
//!   every reconnect. The plugin closes the sessions of those certificates
//!   at once and refuses them everything from then on: revocation takes
//!   effect in about a second, not when the kubelet next syncs the volume.
//! - `watch`: when the mounted CRL file changes, Mosquitto is sent SIGHUP so
//!   it re-reads it and refuses revoked certificates at the TLS handshake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::watch as signal;
use x509_parser::prelude::FromDer;

use crate::audit::{Audit, AuditEvent};
use crate::metrics::Metrics;

use fleetward_protocol::REVOKE_TOPIC;
/// Serials per control message: well under the broker's packet limit.
const CHUNK: usize = 2000;

/// The revoked serials of a CRL in PEM, as upper-case hex.
pub fn serials(pem: &str) -> Result<Vec<String>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("CRL PEM: {e}"))?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
        .map_err(|e| format!("CRL: {e}"))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| hex::encode_upper(r.raw_serial()))
        .collect())
}

/// Sends the serials of CRL ConfigMap `name` to the broker on every change
/// of the ConfigMap and after every (re)connection (`connections` counts
/// them): the plugin keeps its list in memory only.
pub async fn revocations(
    kube: kube::Client,
    namespace: String,
    name: String,
    mqtt: AsyncClient,
    mut connections: signal::Receiver<u64>,
    audit: Audit,
) {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(kube, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api, config).default_backoff().applied_objects().boxed();
    let mut current: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(cm)) => {
                    let pem = cm.data.as_ref().and_then(|d| d.get("crl.pem")).cloned().unwrap_or_default();
                    match serials(&pem) {
                        Ok(now) if now != current => {
                            current = now;
                            send(&mqtt, &current, &audit).await;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(configmap = %name, error = %e, "unreadable CRL"),
                    }
                }
                Some(Err(e)) => tracing::warn!(configmap = %name, error = %e, "CRL watch"),
                None => return,
            },
            changed = connections.changed() => {
                if changed.is_err() {
                    return;
                }
                send(&mqtt, &current, &audit).await;
            }
        }
    }
}

async fn send(mqtt: &AsyncClient, serials: &[String], audit: &Audit) {
    if serials.is_empty() {
        return;
    }
    for chunk in serials.chunks(CHUNK) {
        if let Err(e) = mqtt
            .publish(REVOKE_TOPIC, QoS::AtLeastOnce, false, chunk.join("\n"))
            .await
        {
            tracing::error!(error = %e, "could not queue revocations for the broker");
            return;
        }
    }
    audit
        .record(AuditEvent::new("revocations_sent").detail(format!("{} revoked serials to the broker", serials.len())));
}

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
