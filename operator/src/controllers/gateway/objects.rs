//! The Gateway's objects around its StatefulSet, built from the spec
//! (pure): the account the gateway reads its devices' keys with, the
//! broker's and the command API's Services, Mosquitto's configuration and
//! the broker's volume claim; `workload_writes` lists them as the plan's
//! writes, which `carry_out` makes.

use std::collections::BTreeMap;

use fleetward_credentials::{LABEL_DEVICE_KEYS, keys_secret_names};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, Service, ServiceAccount, ServiceSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::controllers::METRICS_PORT;
use crate::controllers::desired::Write;
use crate::controllers::objects::{self, service_port};
use crate::controllers::tls_secret;
use crate::crd::Gateway;
use crate::crd::gateway::Provider;
use crate::ownership::{labels, owner_ref};
use crate::pki::Issued;
use crate::{Result, crl};

/// The gateway workload's identity: it may read its devices' keys, its CRL
/// and its own Gateway (the limits), and write its devices' liveness, and
/// nothing else.
/// Kubernetes RBAC cannot narrow this to a label selector, so the gateway
/// filters by `fleetward.io/gateway=<name>` itself.
pub fn rbac(gw: &Gateway) -> Result<(ServiceAccount, Role, RoleBinding)> {
    let meta = child_meta(gw, Gateway::workload_name(&gw.name_any()))?;
    let read = ["get", "list", "watch"];
    Ok(objects::account(
        meta,
        gw.namespace(),
        vec![
            // Its devices' keys (fleetward_credentials::keys) and no other
            // Secret: not the devices' private keys, not its CA's, not the
            // command key or any other gateway's or workload's Secrets.
            objects::rule("", "secrets", Some(keys_secret_names(&gw.name_any())), &read),
            // Its own CRL, read from the API as soon as it changes (the
            // mounted copy follows only when the kubelet syncs it).
            objects::rule("", "configmaps", Some(vec![crl::name(&gw.name_any())]), &read),
            // Its own Gateway, for the limits it follows live.
            objects::rule("fleetward.io", "gateways", Some(vec![gw.name_any()]), &read),
            // Its devices' `lastSeen` and `online` (the status only: no
            // spec, no other object), and the Devices' statuses as it
            // starts (one list; Devices hold no secret). RBAC cannot name
            // an unbounded set, so this covers every Device in the
            // namespace; the operator never takes those two fields from it.
            objects::rule("fleetward.io", "devices/status", None, &["patch"]),
            objects::rule("fleetward.io", "devices", None, &["list"]),
        ],
    ))
}

/// The broker's Service, of `spec.serviceType` (devices reach it, perhaps
/// from outside the cluster as a LoadBalancer): MQTT over TLS only.
pub fn service(gw: &Gateway) -> Result<Service> {
    let name = gw.name_any();
    Ok(Service {
        metadata: child_meta(gw, name.clone())?,
        spec: Some(ServiceSpec {
            type_: Some(gw.spec.service_type.as_str().into()),
            selector: Some(selector(&name)),
            ports: Some(vec![service_port("mqtts", gw.spec.mqtt_port)]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The command API and metrics: always a ClusterIP Service of their own,
/// never on the one that may be exposed to the devices' network.
pub fn api_service(gw: &Gateway) -> Result<Service> {
    let name = gw.name_any();
    Ok(Service {
        metadata: child_meta(gw, Gateway::api_service_name(&name))?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(&name)),
            ports: Some(vec![
                service_port("command", gw.spec.command_api.port),
                service_port("metrics", METRICS_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Labels and the controller reference of every object a Gateway owns.
pub fn child_meta(gw: &Gateway, name: String) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        labels: Some(labels(&[("fleetward.io/gateway", &gw.name_any())])),
        owner_references: Some(vec![owner_ref(gw)?]),
        ..Default::default()
    })
}

/// A key the plan generated: the Secret it goes to, under which data key.
#[derive(Debug)]
pub struct NewKey {
    pub secret: String,
    pub data_key: &'static str,
    pub value: String,
}

/// The PKI's Secrets as writes, in order: the broker's and the gateway
/// client's certificates (applied, the CA's certificate beside each), the
/// generated keys (created once: a key is never replaced, and a Secret
/// someone else made under its name is never used as one), and the devices'
/// keys shards not yet ours, with their metadata only (each Device writes
/// its own entry; they exist before the Gateway is Ready, which is when its
/// Devices start writing).
pub fn pki_writes(
    gw: &Gateway,
    ca_pem: &str,
    leaves: &[(&str, &Issued)],
    keys: Vec<NewKey>,
    shards: &[String],
) -> Result<Vec<Write>> {
    let mut writes = Vec::new();
    for (name, issued) in leaves {
        let meta = child_meta(gw, name.to_string())?;
        let secret = tls_secret(meta, &issued.cert_pem, &issued.key_pem, Some(ca_pem), [])?;
        writes.push(Write::apply(secret));
    }
    for key in keys {
        writes.push(Write::create_once(Secret {
            metadata: child_meta(gw, key.secret)?,
            string_data: Some([(key.data_key.to_string(), key.value)].into()),
            ..Default::default()
        }));
    }
    for shard in shards {
        let mut metadata = child_meta(gw, shard.clone())?;
        metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_DEVICE_KEYS.into(), gw.name_any());
        writes.push(Write::apply(Secret {
            metadata,
            ..Default::default()
        }));
    }
    Ok(writes)
}

/// Mosquitto's configuration and ACL.
pub fn broker_config(gw: &Gateway, conf: &str, acl: &str) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: child_meta(gw, Gateway::mosquitto_configmap_name(&gw.name_any()))?,
        data: Some(
            [
                ("mosquitto.conf".to_string(), conf.to_string()),
                ("acl".to_string(), acl.to_string()),
            ]
            .into(),
        ),
        ..Default::default()
    })
}

/// The broker's volume claim when `spec.persistence` asks for one.
pub fn broker_volume(gw: &Gateway) -> Result<Option<PersistentVolumeClaim>> {
    let Some(p) = &gw.spec.persistence else {
        return Ok(None);
    };
    Ok(Some(PersistentVolumeClaim {
        metadata: child_meta(gw, Gateway::broker_volume_name(&gw.name_any()))?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: p.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(p.size.clone()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// The workload's objects other than the StatefulSet, in the order they
/// are written: with the operator's own broker (not with AWS IoT Core)
/// Mosquitto's configuration; the account (ServiceAccount, Role,
/// RoleBinding); with the own broker its volume claim, or the removal of
/// this Gateway's claim when `spec.persistence` went; the MQTT Service
/// (own broker) and the command API's Service.
pub fn workload_writes(gw: &Gateway, conf: &str, acl: &str) -> Result<Vec<Write>> {
    let own_broker = gw.spec.provider == Provider::Mosquitto;
    let mut writes = Vec::new();
    if own_broker {
        writes.push(Write::apply(broker_config(gw, conf, acl)?));
    }
    let (sa, role, binding) = rbac(gw)?;
    writes.extend([Write::apply(sa), Write::apply(role), Write::apply(binding)]);
    if own_broker {
        writes.push(match broker_volume(gw)? {
            Some(claim) => Write::apply(claim),
            None => Write::delete_owned::<PersistentVolumeClaim>(Gateway::broker_volume_name(&gw.name_any())),
        });
        writes.push(Write::apply(service(gw)?));
    }
    writes.push(Write::apply(api_service(gw)?));
    Ok(writes)
}

/// The labels of the gateway's pod, which its Services select.
pub fn selector(gateway: &str) -> BTreeMap<String, String> {
    objects::map(&[
        ("app.kubernetes.io/name", "fleetward-gateway"),
        ("fleetward.io/gateway", gateway),
    ])
}
