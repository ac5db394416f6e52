//! Tariff reconciler: the billing workload of a Tariff — its API key
//! Secret, ServiceAccount/Role/RoleBinding, Service and Deployment — and
//! the Tariff's Ready condition.
//!
//! **observe** reads the referenced Gateway (its Kafka topic, command API
//! and Secrets), whether the Secrets the pod reads exist (never their
//! values), whether the API key Secret exists, and the Deployment's
//! availability; **plan** (`plan.rs`, pure) returns the `Desired` objects,
//! status, events and next look; `carry_out` writes them, each owned by the
//! Tariff.
//!
//! The workload reports its runs in `status.billing` with its own field
//! manager; the operator never writes that field and compares only the
//! fields it owns, so a new report does not make it rewrite status. A
//! Tariff change needs no rollout: the workload reads its Tariff from the
//! API before every run.

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
use crate::crd::{Gateway, Tariff};
use crate::ownership::MANAGED_BY;
use crate::{Error, Result};

pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod workload;

const KIND: &str = "tariff";
/// Label on every object of a Tariff (value: the Tariff's name).
pub const LABEL_TARIFF: &str = "fleetward.io/tariff";
/// Where the billing pod finds the gateway's CA certificate (`ca.crt`).
pub const GATEWAY_CA_DIR: &str = "/etc/fleetward/gateway-ca";

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().labels(&format!("{}={},{LABEL_TARIFF}", MANAGED_BY.0, MANAGED_BY.1));
    let controller = Controller::new(Api::<Tariff>::all(client.clone()), watcher::Config::default());
    let tariffs = controller.store();
    controller
        .owns(Api::<Deployment>::all(client.clone()), wc.clone())
        .owns(Api::<Secret>::all(client.clone()), wc)
        // A Gateway appearing, going, or gaining or losing its Kafka topic:
        // the Tariffs of its namespace that name it.
        .watches(Api::<Gateway>::all(client), watcher::Config::default(), move |gw| {
            let (ns, name) = (gw.namespace(), gw.name_any());
            tariffs
                .state()
                .into_iter()
                .filter(move |t| t.namespace() == ns && t.spec.gateway == name)
                .map(|t| ObjectRef::from_obj(t.as_ref()))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "tariff reconcile loop");
            }
        })
        .await;
}

fn error_policy(tariff: Arc<Tariff>, error: &Error, ctx: Arc<Context>) -> Action {
    policy::on_error(tariff, error, ctx, KIND)
}

/// One reconciliation of a Tariff (public so tests can run it directly).
#[tracing::instrument(skip_all, fields(tariff = %tariff.name_any(), namespace = tariff.namespace().as_deref().unwrap_or("")))]
pub async fn reconcile(tariff: Arc<Tariff>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let result = reconcile_tariff(&tariff, &ctx).await;
    policy::finished(&ctx, tariff.as_ref(), result)
}

async fn reconcile_tariff(tariff: &Tariff, ctx: &Context) -> Result<Action> {
    let ns = tariff
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let observed = observe(tariff, ctx, &ns).await?;
    let desired = plan::plan(tariff, observed, &ctx.config, crate::pki::random_secret_hex)?;
    let current = tariff.status.as_ref().map(|s| s.operator_owned());
    carry_out(ctx, tariff, current.as_ref(), desired).await
}

async fn observe(tariff: &Tariff, ctx: &Context, ns: &str) -> Result<plan::Observed> {
    let name = tariff.name_any();
    // Read, not taken from the shared store: this reconcile may have been
    // woken by the Gateway's own change, which the store may not hold yet.
    let gateway = Api::<Gateway>::namespaced(ctx.client.clone(), ns)
        .get_opt(&tariff.spec.gateway)
        .await?;
    // Whether each key is there, and the spec's is not the operator's;
    // values are not looked at.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let db = &tariff.spec.database.connection_secret_ref;
    let named = secret_refs::check(&secrets, &[("spec.database.connectionSecretRef", db)], true).await?;
    let mut missing = named.missing.clone();
    if let Some(gw) = &gateway {
        let chosen = plan::gateway_secret_refs(gw);
        let refs: Vec<_> = chosen.iter().map(|(what, r)| (*what, r)).collect();
        missing.extend(secret_refs::check(&secrets, &refs, false).await?.missing);
    }
    let api_key = ctx
        .stores
        .secret(ns, &fleetward_tariff::api_secret_name(&name))
        .is_some();
    let available = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .get_opt(&fleetward_tariff::workload_name(&name))
        .await?
        .and_then(|d| d.status?.available_replicas)
        .unwrap_or(0)
        > 0;
    Ok(plan::Observed {
        gateway,
        missing,
        refused: named.refusal(),
        api_key,
        available,
    })
}
