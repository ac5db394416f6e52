//! One reconciler per kind. Helpers they share live here.

pub mod device;
pub mod gateway;
pub mod stationfeed;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;

use crate::Result;
use crate::context::Context;

/// Runs every controller until shutdown. Add a new kind's `run` here.
pub async fn run(ctx: std::sync::Arc<Context>) {
    tokio::join!(
        gateway::run(ctx.clone()),
        device::run(ctx.clone()),
        stationfeed::run(ctx.clone())
    );
}

/// Longest the operator waits before looking at an object again even when
/// nothing changed, so drift (a deleted Secret, a missed event) heals.
const RESYNC: Duration = Duration::from_secs(6 * 3600);

/// Requeue at `when` (e.g. a renewal time), but at least a second from now
/// and at most `RESYNC` away.
pub fn requeue_at(when: Timestamp) -> Action {
    let secs = when
        .duration_since(Timestamp::now())
        .as_secs()
        .clamp(1, RESYNC.as_secs() as i64);
    Action::requeue(Duration::from_secs(secs as u64))
}

/// A Secret value as UTF-8 text, if present.
pub fn secret_str(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// A `kubernetes.io/tls` Secret with optional `ca.crt` and extra keys.
pub fn tls_secret(
    metadata: ObjectMeta,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: Option<&str>,
    extra: impl IntoIterator<Item = (String, String)>,
) -> Result<Secret> {
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    data.insert("tls.crt".into(), ByteString(cert_pem.as_bytes().to_vec()));
    data.insert("tls.key".into(), ByteString(key_pem.as_bytes().to_vec()));
    if let Some(ca) = ca_pem {
        data.insert("ca.crt".into(), ByteString(ca.as_bytes().to_vec()));
    }
    for (k, v) in extra {
        data.insert(k, ByteString(v.into_bytes()));
    }
    Ok(Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    })
}
