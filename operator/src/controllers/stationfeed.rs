//! StationFeed reconciler: the feed's encryption keyring Secret, the
//! ingestor and encryptor Deployments, and status.
//!
//! The keyring Secret `<feed>-keyring` is created once and never
//! regenerated while it exists (seed 000: "generated once, reloaded on
//! later runs"): every stored row depends on it. It has no owner
//! reference, so deleting a StationFeed does not make its rows unreadable;
//! re-creating the feed picks the same keyring up again. Rotation (a new
//! `spec.keyRotation`) adds a primary key and keeps the old ones; the
//! Secret's `fleetward.io/key-rotation` annotation records the rotation
//! the keyring reflects.
//!
//! The keyring reaches the encryptor as a Secret volume, not an env var:
//! the kubelet updates the file in place and the encryptor re-reads it, so
//! a rotation takes effect without a restart.
//!
//! Key material never appears in logs, events, status or errors: only key
//! ids do.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::carry_out::carry_out;
use super::{policy, secret_refs};
use crate::context::Context;
use crate::crd::StationFeed;
use crate::ownership::MANAGED_BY;
use crate::{Error, Result, pki};

pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod workload;

const KIND: &str = "stationfeed";
/// Label on every object of a feed (value: the feed's name).
pub const LABEL_FEED: &str = "fleetward.io/station-feed";
/// Where the encryptor finds `keyring.json`.
pub use super::KEYRING_DIR;
/// On the keyring Secret: the `spec.keyRotation` the keyring reflects.
pub use super::keyring::ANN_ROTATION;

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().labels(&format!("{}={},{LABEL_FEED}", MANAGED_BY.0, MANAGED_BY.1));
    Controller::new(Api::<StationFeed>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), wc.clone())
        // The keyring has no owner reference (see module docs), so map it
        // back to its feed by label: deleting or editing it wakes the feed.
        .watches(Api::<Secret>::all(client), wc, |s| {
            let feed = s.labels().get(LABEL_FEED)?.clone();
            Some(ObjectRef::<StationFeed>::new(&feed).within(&s.namespace()?))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "stationfeed reconcile loop");
            }
        })
        .await;
}

fn error_policy(feed: Arc<StationFeed>, error: &Error, ctx: Arc<Context>) -> Action {
    policy::on_error(feed, error, ctx, KIND)
}

/// One reconciliation of a StationFeed (public so tests can run it directly).
#[tracing::instrument(skip_all, fields(stationfeed = %feed.name_any(), namespace = feed.namespace().as_deref().unwrap_or("")))]
pub async fn reconcile(feed: Arc<StationFeed>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let result = reconcile_feed(&feed, &ctx).await;
    policy::finished(&ctx, feed.as_ref(), result)
}

/// Observe (reads only), plan (pure: the keyring's creation or rotation,
/// the record key, the Deployments, status, events), carry out.
async fn reconcile_feed(feed: &StationFeed, ctx: &Context) -> Result<Action> {
    let observed = observe(feed, ctx).await?;
    let desired = plan::plan(feed, observed, &ctx.config, pki::random_secret_hex)?;
    carry_out(ctx, feed, feed.status.as_ref(), desired).await
}

async fn observe(feed: &StationFeed, ctx: &Context) -> Result<plan::Observed> {
    let ns = feed.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = feed.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // Read, not taken from a store: a keyring decision must start from
    // the Secret as it is (a replace carries the resourceVersion read).
    let keyring = secrets.get_opt(&fleetward_keyring::secret_name(&name)).await?;
    let record_key = secrets
        .get_opt(&StationFeed::record_key_secret_name(&name))
        .await?
        .is_some();
    // The Secrets the workloads read must exist and not be the
    // operator's (their values are not read).
    let checked = secret_refs::check(&secrets, &plan::secret_refs(feed), true).await?;
    let deploys: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut available = true;
    for d in [StationFeed::ingestor_name(&name), StationFeed::encryptor_name(&name)] {
        let up = deploys
            .get_opt(&d)
            .await?
            .and_then(|d| d.status?.available_replicas)
            .unwrap_or(0)
            > 0;
        available &= up;
    }
    Ok(plan::Observed {
        keyring,
        record_key,
        refused: checked.refusal(),
        missing: checked.missing,
        available,
    })
}
