//! Tariff reconciler: the billing workload of a Tariff — its API key
//! Secret, ServiceAccount/Role/RoleBinding, Service and Deployment — and
//! the Tariff's Ready condition.
//!
//! **observe** reads the referenced Gateway (its Kafka topic, command API
//! and Secrets), whether the Secrets the pod reads exist (never their
//! values), whether the API key Secret exists, and the Deployment's
//! availability; **plan** (`plan.rs`, pure) decides the objects, status,
//! events and next look; **apply** writes them with server-side apply, each
//! owned by the Tariff.
//!
//! The workload reports its runs in `status.billing` with its own field
//! manager; the operator never writes that field and compares only the
//! fields it owns, so a new report does not make it rewrite status. A
//! Tariff change needs no rollout: the workload reads its Tariff from the
//! API before every run.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::applier::{apply, create_once, delete_if_owned};
use super::{kafka_client, policy, secret_refs};
use crate::context::Context;
use crate::crd::{Gateway, Tariff};
use crate::ownership::{MANAGED_BY, owner_ref};
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

/// One consumer group per Tariff: two Tariffs on one gateway's topic each
/// see every reading.
pub fn consumer_group(ns: &str, tariff: &str) -> String {
    format!("fleetward.{ns}.{tariff}.billing")
}

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
    let plan = plan::plan(tariff, observed, &ctx.config, crate::pki::random_secret_hex)?;
    apply_plan(tariff, ctx, &ns, plan).await
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

async fn apply_plan(tariff: &Tariff, ctx: &Context, ns: &str, plan: plan::Plan) -> Result<Action> {
    let name = fleetward_tariff::workload_name(&tariff.name_any());
    if let Some(secret) = &plan.api_secret {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let secret_name = fleetward_tariff::api_secret_name(&tariff.name_any());
        // Made once and never replaced (clients hold the key); but a
        // Secret someone else made under the name is not used as one.
        if let Some(created) = create_once(&secrets, &secret_name, secret).await? {
            ctx.stores.wrote_secret(created);
        }
    }
    let (sa, role, binding) = &plan.rbac;
    apply(
        &Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns),
        &name,
        sa,
        None,
    )
    .await?;
    apply(&Api::<Role>::namespaced(ctx.client.clone(), ns), &name, role, None).await?;
    apply(
        &Api::<RoleBinding>::namespaced(ctx.client.clone(), ns),
        &name,
        binding,
        None,
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(ctx.client.clone(), ns),
        &name,
        &plan.service,
        None,
    )
    .await?;
    let deploys: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    match &plan.deployment {
        Some(d) => {
            let mut d = d.clone();
            if let Some(spec) = d.spec.as_mut() {
                let who = kafka_client::Workload {
                    namespace: ns,
                    name: &name,
                    owner: owner_ref(tariff)?,
                    role: kafka_client::Role::Billing,
                };
                kafka_client::certify(ctx, &who, &mut spec.template).await?;
            }
            apply(&deploys, &name, &d, None).await?;
        }
        None => delete_own_deployment(tariff, &deploys, &name).await?,
    }
    let current = tariff.status.as_ref().map(|s| s.operator_owned());
    policy::write_status(ctx, tariff, current.as_ref(), &plan.status).await?;
    for ev in plan.events {
        ctx.event(tariff, ev.warning, ev.reason, ev.action, ev.note).await;
    }
    Ok(Action::requeue(plan.requeue))
}

/// Removes the billing Deployment when the Gateway it read from is gone or
/// lost its Kafka topic: only this Tariff's own, and only that very object
/// (uid precondition), so one someone else made under the name stays.
async fn delete_own_deployment(tariff: &Tariff, deploys: &Api<Deployment>, name: &str) -> Result<()> {
    if delete_if_owned(deploys, name, &owner_ref(tariff)?, None).await? {
        tracing::info!(deployment = %name, "deleted the billing Deployment: its Gateway is gone or has no Kafka");
    }
    Ok(())
}
