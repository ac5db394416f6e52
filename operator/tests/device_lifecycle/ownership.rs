//! Ownership: objects someone else made under the names fleetward would use
//! are never taken over, and say so in an event.

use fleetward_operator::crd::{Device, Gateway};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};

use crate::common::*;

/// Objects someone else made under the names fleetward would use are never
/// taken over: a Gateway named `postgres` leaves the `postgres` Service
/// alone (and its deletion does not garbage-collect it), a Device whose
/// credentials Secret name is taken is refused, not written into. Both say
/// why in an event.
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
