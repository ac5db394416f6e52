//! What a Tariff's billing objects, status and events should be, as a pure
//! function of the Tariff, what was observed (its Gateway, the Secrets the
//! workload reads, whether its API key Secret and an available pod exist)
//! and the operator's configuration.
//!
//! Ready, first reason that applies wins:
//! 1. `GatewayNotFound`, 2. `GatewayHasNoKafka` — nothing to read meters
//!    from: no Deployment (one left from before is removed);
//! 3. `SecretMissing` — a Secret (or key) the pod needs is absent;
//! 4. `DatabaseUnreachable`, 5. `GatewayUnreachable` — the workload's own
//!    report in `status.billing`. These come before `Deploying`: a workload
//!    that cannot reach its database may well not be available, and its
//!    report says why where "no available pod" would not;
//! 6. `Deploying` — no available pod yet; else `Ready`.
//!
//! The plan's status never carries `status.billing`: the workload owns it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use super::workload::{self, CA_CERT_KEY, gateway_url, meter_key_ref, record_key_ref};
use crate::Result;
use crate::conditions::{self, READY};
use crate::config::Config;
use crate::controllers::desired::{Desired, Write};
use crate::controllers::events::not_ready;
use crate::controllers::kafka_client;
use crate::crd::tariff::TariffStatus;
use crate::crd::{Gateway, SecretKeyRef, Tariff};

pub struct Observed {
    /// The Gateway `spec.gateway` names, when it exists.
    pub gateway: Option<Gateway>,
    /// Secrets (or keys) the workload reads that do not exist, described
    /// by name and key (never by value).
    pub missing: Vec<String>,
    /// Why the Secret the spec names may not be used (the operator made
    /// it), when so: nothing is deployed.
    pub refused: Option<String>,
    /// The billing API key Secret exists.
    pub api_key: bool,
    /// The billing Deployment has an available pod.
    pub available: bool,
}

/// Referenced Secrets are not watched: look again soon while one is missing.
const MISSING_SECRET_RETRY: Duration = Duration::from_secs(10);
/// The Deployment is watched; this is only a safety net.
const DEPLOYING_RETRY: Duration = Duration::from_secs(30);
/// Gateways, the Deployment and the Tariff (with its billing report) are
/// watched, so a settled Tariff needs only an occasional look.
const RESYNC: Duration = Duration::from_secs(3600);
/// The longest workload-reported error copied into a condition message.
const MAX_REPORTED: usize = 1024;

/// The Secret keys the billing pod reads that the operator chose (the
/// gateway's meter key and CA certificate), with what each is for;
/// the one the spec names is `spec.database.connectionSecretRef`.
pub fn gateway_secret_refs(gw: &Gateway) -> Vec<(&'static str, SecretKeyRef)> {
    vec![
        ("the gateway's meter key", meter_key_ref(gw)),
        ("the gateway's record key", record_key_ref(gw)),
        (
            "the gateway's CA certificate",
            SecretKeyRef {
                name: Gateway::ca_secret_name(&gw.name_any()),
                key: CA_CERT_KEY.into(),
            },
        ),
    ]
}

/// `new_key` makes the billing API key when its Secret does not exist.
pub fn plan(
    tariff: &Tariff,
    obs: Observed,
    config: &Config,
    new_key: impl FnOnce() -> String,
) -> Result<Desired<TariffStatus>> {
    let generation = tariff.metadata.generation;
    let name = tariff.name_any();
    let gw_name = &tariff.spec.gateway;
    let current = tariff.status.as_ref().map(TariffStatus::operator_owned);
    let mut status = current.unwrap_or_default();
    status.observed_generation = generation;
    let mut events = Vec::new();

    let deployment = match &obs.gateway {
        _ if obs.refused.is_some() => None,
        Some(gw) => match &gw.spec.kafka {
            Some(kafka) => Some(workload::deployment(tariff, gw, kafka, config)?),
            None => None,
        },
        None => None,
    };
    let report = tariff.status.as_ref().and_then(|s| s.billing.as_ref());
    let workload_name = fleetward_tariff::workload_name(&name);
    let not_ready_because = match (&obs.gateway, report) {
        _ if obs.refused.is_some() => Some((
            ("SecretNotAllowed", "Validate"),
            obs.refused.clone().unwrap_or_default(),
            RESYNC,
        )),
        (None, _) => Some((
            ("GatewayNotFound", "Validate"),
            format!(
                "Gateway {gw_name} does not exist in this namespace: the billing workload reads the meters through \
                 it; create it or correct spec.gateway"
            ),
            RESYNC,
        )),
        (Some(gw), _) if gw.spec.kafka.is_none() => Some((
            ("GatewayHasNoKafka", "Validate"),
            format!(
                "Gateway {gw_name} has no spec.kafka: the billing workload reads the meters' telemetry from the \
                 gateway's Kafka topic; set spec.kafka.topic on the Gateway"
            ),
            RESYNC,
        )),
        _ if !obs.missing.is_empty() => Some((
            ("SecretMissing", "Validate"),
            format!("missing: {}", obs.missing.join("; ")),
            MISSING_SECRET_RETRY,
        )),
        (_, Some(r)) if r.database_error.is_some() => Some((
            ("DatabaseUnreachable", "Observe"),
            format!(
                "the billing workload cannot reach its database: {}",
                reported(r.database_error.as_deref().unwrap_or_default())
            ),
            RESYNC,
        )),
        (Some(gw), Some(r)) if r.gateway_error.is_some() => Some((
            ("GatewayUnreachable", "Observe"),
            format!(
                "the billing workload cannot reach Gateway {gw_name}'s command API at {}: {}",
                gateway_url(gw),
                reported(r.gateway_error.as_deref().unwrap_or_default())
            ),
            RESYNC,
        )),
        _ if !obs.available => Some((
            ("Deploying", "Deploy"),
            format!("Deployment {workload_name} has no available pod yet"),
            DEPLOYING_RETRY,
        )),
        _ => None,
    };
    let requeue = match not_ready_because {
        Some((reason, message, requeue)) => {
            not_ready(&mut status.conditions, &mut events, reason, message, generation);
            requeue
        }
        None => {
            conditions::set(
                &mut status.conditions,
                READY,
                true,
                "Ready",
                format!(
                    "Deployment {workload_name} is available; it bills on schedule {:?} and reads the meters \
                     through Gateway {gw_name}",
                    tariff.spec.schedule
                ),
                generation,
            );
            RESYNC
        }
    };
    // The API key Secret is made once (clients hold the key); then the
    // account, the Service, and the Deployment or the removal of one left
    // from before (its Gateway is gone or has no Kafka).
    let mut writes = Vec::new();
    if !obs.api_key {
        writes.push(Write::create_once(workload::api_secret(tariff, new_key())?));
    }
    let (sa, role, binding) = workload::rbac(tariff)?;
    writes.extend([Write::apply(sa), Write::apply(role), Write::apply(binding)]);
    writes.push(Write::apply(workload::service(tariff)?));
    writes.push(match deployment {
        Some(d) => Write::kafka_client(d, kafka_client::Role::Billing),
        None => Write::delete_owned::<Deployment>(workload_name),
    });
    Ok(Desired {
        writes,
        status: Some(status),
        events,
        requeue,
    })
}

/// An error the workload reported, fit for a condition: a connection URL's
/// credentials masked (in case one slipped into the text), and bounded.
pub(super) fn reported(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    if out.chars().count() > MAX_REPORTED {
        out = out.chars().take(MAX_REPORTED).collect::<String>() + "…";
    }
    out
}
