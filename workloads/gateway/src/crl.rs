//! Keeps the broker's view of revocations current. The CRL ConfigMap,
//! watched through the API, is on every change:
//!
//! - written to the CRL file Mosquitto reads (`CRL_FILE`, an emptyDir the
//!   two containers share), which the broker's fleetward_broker plugin
//!   notices within a second and has Mosquitto reload: a revoked
//!   certificate's TLS handshake is refused from then on, not when the
//!   kubelet next syncs a ConfigMap volume (up to a minute or more);
//! - parsed, and its serials published to the plugin
//!   (`$CONTROL/fleetward/v1/revoke`, again after every reconnect), which
//!   closes the sessions of those certificates that it knows and refuses
//!   them everything from then on;
//! - and the holders of newly revoked certificates (the ConfigMap's
//!   `holders`: `<serial> <device id>`) published on
//!   `$CONTROL/fleetward/v1/close`, so the plugin also closes sessions that
//!   have done nothing since they connected, which it cannot know by
//!   certificate.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::watch as signal;
use x509_parser::prelude::FromDer;

use crate::audit::{Audit, AuditEvent};
use crate::metrics::Metrics;

use fleetward_protocol::broker::CRL_HOLDERS_KEY;
use fleetward_protocol::{CLOSE_TOPIC, REVOKE_TOPIC};
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

/// The `holders` lines (`<serial> <device id>`) whose serial is one of
/// `new` (compared as the plugin does: leading zeros and case aside).
pub fn holders_of<'a>(holders: &'a str, new: &HashSet<&str>) -> Vec<&'a str> {
    let norm = |s: &str| s.trim_start_matches('0').to_ascii_uppercase();
    let new: HashSet<String> = new.iter().map(|s| norm(s)).collect();
    holders
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            matches!((words.next(), words.next(), words.next()), (Some(serial), Some(_), None) if new.contains(&norm(serial)))
        })
        .collect()
}

/// Where the CRL goes and what is told of it: Mosquitto's CRL file (none
/// on AWS IoT Core) and the plugin.
pub struct Revocations {
    pub kube: kube::Client,
    pub namespace: String,
    pub configmap: String,
    pub crl_file: Option<PathBuf>,
    pub mqtt: AsyncClient,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
}

impl Revocations {
    /// Follows the CRL ConfigMap until the watch ends (module docs);
    /// `connections` counts the gateway's (re)connections to the broker,
    /// after each of which the plugin is told everything again (it keeps
    /// its list in memory only).
    pub async fn run(self, mut connections: signal::Receiver<u64>) {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.kube.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.configmap));
        let mut changes = watcher(api, config).default_backoff().applied_objects().boxed();
        let mut written: Option<String> = None;
        let mut current: Vec<String> = Vec::new();
        let mut holders = String::new();
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(cm)) => {
                        let data = cm.data.unwrap_or_default();
                        let pem = data.get("crl.pem").cloned().unwrap_or_default();
                        holders = data.get(CRL_HOLDERS_KEY).cloned().unwrap_or_default();
                        let now = match serials(&pem) {
                            Ok(now) => now,
                            Err(e) => {
                                tracing::error!(configmap = %self.configmap, error = %e, "unreadable CRL");
                                continue;
                            }
                        };
                        if written.as_deref() != Some(pem.as_str()) {
                            self.write_file(&pem).await;
                            written = Some(pem);
                        }
                        if now != current {
                            let before: HashSet<&str> = current.iter().map(String::as_str).collect();
                            let new: HashSet<&str> = now.iter().map(String::as_str).filter(|s| !before.contains(s)).collect();
                            let close = holders_of(&holders, &new).join("\n");
                            send(&self.mqtt, &now, &self.audit).await;
                            self.close(close).await;
                            current = now;
                        }
                    }
                    Some(Err(e)) => tracing::warn!(configmap = %self.configmap, error = %e, "CRL watch"),
                    None => return,
                },
                changed = connections.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    send(&self.mqtt, &current, &self.audit).await;
                    let all: HashSet<&str> = current.iter().map(String::as_str).collect();
                    self.close(holders_of(&holders, &all).join("\n")).await;
                }
            }
        }
    }

    /// Replaces Mosquitto's CRL file (a new file renamed over it: the
    /// broker never reads half of one).
    async fn write_file(&self, pem: &str) {
        let Some(path) = &self.crl_file else { return };
        // At start the file usually holds this CRL already (the pod's init
        // container copied it): rewriting it would reload the broker.
        if tokio::fs::read(path).await.is_ok_and(|b| b == pem.as_bytes()) {
            return;
        }
        match replace_file(path, pem.as_bytes()).await {
            Ok(()) => {
                self.metrics.crl_reloads.inc();
                self.audit
                    .record(AuditEvent::new("crl_reload").detail(format!("CRL written to {}", path.display())));
            }
            Err(e) => tracing::error!(path = %path.display(), error = %e, "could not write the broker's CRL file"),
        }
    }

    async fn close(&self, lines: String) {
        if lines.is_empty() {
            return;
        }
        if let Err(e) = self.mqtt.publish(CLOSE_TOPIC, QoS::AtLeastOnce, false, lines).await {
            tracing::error!(error = %e, "could not queue revoked holders for the broker");
        }
    }
}

async fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("crl.pem");
    let tmp = dir.join(format!(".{name}.new"));
    tokio::fs::write(&tmp, bytes).await?;
    // Mosquitto (another user) reads it.
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).await?;
    tokio::fs::rename(&tmp, path).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_those_of_the_new_serials() {
        let holders = "0A door-2\n0B lock-7\nmalformed\n0C a b\n";
        let new: HashSet<&str> = ["0B", "0C", "0D"].into_iter().collect();
        assert_eq!(holders_of(holders, &new), vec!["0B lock-7"]);
        // The CRL's serial keeps DER's leading zero byte; the holder's does not.
        let new: HashSet<&str> = ["00A0", "0b"].into_iter().collect();
        assert_eq!(
            holders_of("A0 meter-3\n0B lock-7\n", &new),
            vec!["A0 meter-3", "0B lock-7"]
        );
        assert!(holders_of("", &new).is_empty());
    }
}
