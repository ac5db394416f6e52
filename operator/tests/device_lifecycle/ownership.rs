//! Ownership: objects someone else made under the names fleetward would use
//! are never taken over nor deleted, and say so in an event.

use fleetward_operator::crd::{Device, Gateway};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};

use crate::common::*;
use crate::ready_gateway;

/// Objects someone else made under the names fleetward would use are never
/// taken over: a Gateway named `postgres` leaves the `postgres` Service
/// alone (and its deletion does not garbage-collect it), a Device whose
/// credentials Secret name is taken is refused, not written into, and its
/// deletion leaves that Secret; a Gateway without `spec.storage` leaves a
/// Deployment named like its telemetry writer. The refusals say why in an
/// event.
#[tokio::test]
async fn objects_fleetward_did_not_create_are_never_taken_over() {
    operator();
    let ns = TestNs::new("fw-names").await;
    ns.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: postgres}\nspec:\n  selector: {app: postgres}\n  \
         ports: [{name: pg, port: 5432}]\n",
    )
    .await;
    ns.apply_yaml("apiVersion: v1\nkind: Secret\nmetadata: {name: d1-credentials}\nstringData: {password: hunter2}\n")
        .await;
    // Named like Gateway gw's telemetry writer, which gw (no spec.storage)
    // deletes when it is its own.
    ns.apply_yaml(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: gw-telemetry}\nspec:\n  replicas: 0\n  \
         selector: {matchLabels: {app: theirs}}\n  template:\n    metadata: {labels: {app: theirs}}\n    \
         spec: {containers: [{name: c, image: theirs:1}]}\n",
    )
    .await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&GATEWAY_YAML.replace("name: gw", "name: postgres")).await;
    ns.apply_yaml(&device_yaml("d1", "postgres", "")).await;

    let events: Api<Event> = ns.api();
    let said = |what: &'static str| {
        let events = events.clone();
        async move {
            let evs = events.list(&ListParams::default()).await.ok()?;
            Some(
                evs.items
                    .iter()
                    .any(|e| e.message.as_deref().unwrap_or_default().contains(what)),
            )
        }
    };
    wait_for(
        "Service conflict event",
        60,
        || said("Service postgres already exists and was not created by fleetward"),
        |yes| *yes,
    )
    .await;
    wait_for(
        "Secret conflict event",
        60,
        || said("Secret d1-credentials already exists and was not created by fleetward"),
        |yes| *yes,
    )
    .await;

    let untouched = |svc: &Service| {
        let spec = svc.spec.clone().unwrap_or_default();
        svc.owner_references().is_empty()
            && spec
                .ports
                .unwrap_or_default()
                .iter()
                .map(|p| p.port)
                .collect::<Vec<_>>()
                == [5432]
            && spec.selector.unwrap_or_default().get("app").map(String::as_str) == Some("postgres")
    };
    let services = ns.api::<Service>();
    assert!(untouched(&services.get("postgres").await.unwrap()));
    let secret = ns.api::<Secret>().get("d1-credentials").await.unwrap();
    assert!(secret.owner_references().is_empty());
    assert_eq!(
        secret.data.unwrap_or_default().keys().collect::<Vec<_>>(),
        ["password"],
        "nothing written into it"
    );
    let d1 = ns.api::<Device>().get("d1").await.unwrap();
    assert!(
        !device_ready(&d1),
        "a Device whose Secret is someone else's is not Ready"
    );

    // A Ready gw has run its storage step: the Deployment is still there.
    ready_gateway(&ns, "gw").await;
    let deployments = ns.api::<Deployment>();
    assert!(
        get_opt(&deployments, "gw-telemetry").await.is_some(),
        "a Deployment fleetward did not create is not deleted"
    );

    // Deleting the Device removes only what it made: the Secret under its
    // credentials' name is someone else's and stays.
    let devices = ns.api::<Device>();
    devices.delete("d1", &DeleteParams::default()).await.unwrap();
    wait_for(
        "Device d1 gone",
        60,
        || async { Some(get_opt(&devices, "d1").await.is_none()) },
        |gone| *gone,
    )
    .await;
    let secret = ns.api::<Secret>().get("d1-credentials").await;
    assert!(secret.is_ok(), "someone else's Secret survives the Device's deletion");

    // Deleting the Gateway removes what it made, never the Service it
    // shares a name with.
    ns.api::<Gateway>()
        .delete("postgres", &DeleteParams::default())
        .await
        .unwrap();
    let cms = ns.api::<ConfigMap>();
    wait_for(
        "the Gateway's own ConfigMap garbage-collected",
        60,
        || async { Some(get_opt(&cms, "postgres-mosquitto").await.is_none()) },
        |gone| *gone,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(untouched(&services.get("postgres").await.unwrap()));
    ns.cleanup().await;
}
