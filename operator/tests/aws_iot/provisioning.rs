//! IoT Core provisioning against moto: the CA, one thing, certificate and
//! policy per Device, scoped to its own topics; reads only on a second
//! reconcile; disabling and deleting undo it.

use fleetward_operator::crd::{Device, Gateway};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::common::*;
use crate::{
    Leave, Moto, REGION, aws_operator, aws_requests, aws_status, certificate, gateway_yaml, mutating, policy_of,
    resources, status_of,
};

/// A Gateway with `provider: awsIot` and five Devices: the CA registered,
/// five things with one active certificate each (the one in the Device's
/// Secret), each with its own policy naming only its own client id and
/// topics. A second reconcile of every device sends only reads. Disabling
/// one revokes its certificate and detaches its policy; deleting all
/// leaves nothing in IoT Core.
#[tokio::test]
async fn devices_become_things_with_certificates_and_policies_scoped_to_their_topics() {
    let moto = Moto::start();
    let iot = moto.client();
    let op = aws_operator();
    let ns = TestNs::new("fw-aws").await;
    let _leave = Leave(ns.name.clone());
    let (gateways, devs) = (ns.api::<Gateway>(), ns.api::<Device>());
    let devices: Vec<String> = (1..=5).map(|i| format!("meter-{i}")).collect();
    let manifests: Vec<String> = devices
        .iter()
        .map(|d| device_yaml_with_category(d, "cloud", "electricityMeter", ""))
        .collect();
    ns.gateway_with_devices(&gateway_yaml("cloud", &moto.url), &manifests)
        .await;

    let gw = wait_for(
        "Gateway cloud registered in IoT Core",
        60,
        || get_opt(&gateways, "cloud"),
        |g: &Gateway| gateway_ready(g) && g.status.as_ref().and_then(|s| s.aws_iot.as_ref()).is_some(),
    )
    .await;
    let reg = gw.status.as_ref().unwrap().aws_iot.clone().unwrap();
    let ca = iot
        .describe_ca_certificate()
        .certificate_id(&reg.ca_certificate_id)
        .send()
        .await
        .expect("the CA is registered");
    let ca = ca.certificate_description().unwrap();
    assert_eq!(ca.status().map(|s| s.as_str()), Some("ACTIVE"));
    assert_eq!(
        ca.certificate_pem().unwrap(),
        ns.secret_value("cloud-ca", "tls.crt").await
    );
    let endpoint = reg.data_endpoint.clone().expect("data endpoint");
    // The gateway workload's own certificate, with a policy for its client
    // id and the devices' topics, and its pod pointed at the endpoint.
    let client_cert = certificate(&iot, reg.client_certificate_id.as_deref().expect("client certificate")).await;
    assert_eq!(status_of(&client_cert), Some("ACTIVE"));
    assert_eq!(
        client_cert.certificate_pem().unwrap(),
        ns.secret_value("cloud-gateway-client", "tls.crt").await
    );
    let gw_policy = policy_of(&iot, reg.client_policy.as_deref().unwrap()).await;
    let arn = |r: &str| format!("arn:aws:iot:{REGION}:123456789012:{r}");
    assert_eq!(
        resources(&gw_policy, "iot:Connect"),
        vec![arn(&format!("client/fleetward-gateway-{}-cloud", ns.name))]
    );
    assert_eq!(
        resources(&gw_policy, "iot:Subscribe"),
        vec![arn("topicfilter/device/+/data")]
    );
    let set = ns
        .api::<k8s_openapi::api::apps::v1::StatefulSet>()
        .get("cloud-gateway")
        .await
        .unwrap();
    let pod = set.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers.len(), 1, "no Mosquitto beside IoT Core");
    let host = pod.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "MQTT_HOST")
        .and_then(|e| e.value.clone());
    assert_eq!(host.as_deref(), Some(endpoint.as_str()));
    // No broker of ours: no Mosquitto configuration or MQTT Service.
    assert!(
        get_opt(&ns.api::<k8s_openapi::api::core::v1::ConfigMap>(), "cloud-mosquitto")
            .await
            .is_none()
    );
    assert!(
        get_opt(&ns.api::<k8s_openapi::api::core::v1::Service>(), "cloud")
            .await
            .is_none()
    );
    // And the provider cannot be switched under the Devices.
    let switched = gateways
        .patch(
            "cloud",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"provider": "mosquitto"}})),
        )
        .await;
    assert!(
        switched
            .as_ref()
            .is_err_and(|e| e.to_string().contains("provider is immutable")),
        "{switched:?}"
    );
    assert_eq!(
        gw.status.as_ref().unwrap().endpoint.as_deref(),
        Some(format!("mqtts://{endpoint}:8883").as_str())
    );

    for name in &devices {
        let d = wait_for(
            &format!("Device {name} Ready in IoT Core"),
            60,
            || get_opt(&devs, name),
            |d: &Device| device_ready(d) && aws_status(d).is_some_and(|a| a.certificate_status == "ACTIVE"),
        )
        .await;
        let thing = format!("{}_{name}", ns.name);
        let st = aws_status(&d).unwrap();
        assert_eq!(st.thing_name, thing);
        let described = iot.describe_thing().thing_name(&thing).send().await.expect("thing");
        assert_eq!(described.thing_arn(), Some(st.thing_arn.as_str()));
        let attrs = described.attributes().unwrap();
        assert_eq!(attrs.get("namespace"), Some(&ns.name));
        assert_eq!(attrs.get("category").map(String::as_str), Some("electricityMeter"));

        let principals = iot.list_thing_principals().thing_name(&thing).send().await.unwrap();
        let mut described = Vec::new();
        for p in principals.principals() {
            let id = p.rsplit('/').next().unwrap();
            let c = certificate(&iot, id).await;
            described.push((p.clone(), status_of(&c).map(str::to_string)));
        }
        assert_eq!(
            principals.principals().len(),
            1,
            "{thing}: one certificate: {described:?}"
        );
        let cert_arn = &principals.principals()[0];
        let cert = certificate(&iot, &st.certificate_id).await;
        assert_eq!(cert.certificate_arn(), Some(cert_arn.as_str()));
        assert_eq!(status_of(&cert), Some("ACTIVE"));
        assert_eq!(
            cert.certificate_pem().unwrap(),
            ns.secret_value(&format!("{name}-credentials"), "tls.crt").await,
            "IoT Core holds the certificate the operator issued"
        );
        let attached = iot.list_attached_policies().target(cert_arn).send().await.unwrap();
        let names: Vec<_> = attached.policies().iter().filter_map(|p| p.policy_name()).collect();
        assert_eq!(names, vec![thing.as_str()]);

        // The policy, read back: this device's client id and topics only.
        let doc = policy_of(&iot, &thing).await;
        assert_eq!(resources(&doc, "iot:Connect"), vec![arn(&format!("client/{thing}"))]);
        assert_eq!(
            resources(&doc, "iot:Publish"),
            vec![arn(&format!("topic/device/{name}/data"))]
        );
        assert_eq!(
            resources(&doc, "iot:Subscribe"),
            vec![
                arn(&format!("topicfilter/device/{name}/command")),
                arn(&format!("topicfilter/device/{name}/response"))
            ]
        );
        assert_eq!(
            resources(&doc, "iot:Receive"),
            vec![
                arn(&format!("topic/device/{name}/command")),
                arn(&format!("topic/device/{name}/response"))
            ]
        );
    }
    let things = iot.list_things().send().await.unwrap();
    assert_eq!(things.things().len(), 5);

    // A second reconcile of every device (a spec change that leaves the
    // credentials alone) reads IoT Core and changes nothing there.
    let before = aws_requests(op);
    for name in &devices {
        ns.api::<Device>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"hmacGracePeriodSeconds": 3601}})),
            )
            .await
            .unwrap();
    }
    for name in &devices {
        wait_for(
            &format!("Device {name} reconciled again"),
            60,
            || get_opt(&devs, name),
            |d: &Device| {
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation && device_ready(d)
            },
        )
        .await;
    }
    let after = aws_requests(op);
    let reads = |c: &std::collections::BTreeMap<String, u64>| c.get("DescribeThing").copied().unwrap_or(0);
    assert!(
        reads(&after) >= reads(&before) + 5,
        "each device looked at IoT Core again: {before:?} -> {after:?}"
    );
    assert_eq!(
        mutating(&after),
        mutating(&before),
        "a reconcile of devices in order changes nothing: {before:?} -> {after:?}"
    );

    // Disable one: its certificate is revoked and its policy detached.
    ns.api::<Device>()
        .patch(
            "meter-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"enabled": false}})),
        )
        .await
        .unwrap();
    let d = wait_for(
        "meter-1 revoked in IoT Core",
        60,
        || get_opt(&devs, "meter-1"),
        |d: &Device| aws_status(d).is_some_and(|a| a.certificate_status == "REVOKED"),
    )
    .await;
    let st = aws_status(&d).unwrap();
    let cert = certificate(&iot, &st.certificate_id).await;
    assert_eq!(status_of(&cert), Some("REVOKED"));
    let attached = iot
        .list_attached_policies()
        .target(cert.certificate_arn().unwrap())
        .send()
        .await
        .unwrap();
    assert!(attached.policies().is_empty(), "a revoked certificate keeps no policy");
    // The others are untouched.
    let other = get_opt(&devs, "meter-2").await.unwrap();
    let other = certificate(&iot, &aws_status(&other).unwrap().certificate_id).await;
    assert_eq!(status_of(&other), Some("ACTIVE"));

    // Delete everything: the Devices' finalizers remove things,
    // certificates and policies; the Gateway's, after them, the CA.
    ns.api::<Device>()
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    ns.api::<Gateway>()
        .delete("cloud", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the Gateway and its Devices gone", 60, || async {
        let gws = ns.api::<Gateway>().list(&ListParams::default()).await.unwrap();
        let devs = ns.api::<Device>().list(&ListParams::default()).await.unwrap();
        gws.items.is_empty() && devs.items.is_empty()
    })
    .await;
    let things = iot.list_things().send().await.unwrap();
    let certs = iot.list_certificates().send().await.unwrap();
    let policies = iot.list_policies().send().await.unwrap();
    // (moto has no ListCACertificates: ask for the one that was registered.)
    let ca_left = iot
        .describe_ca_certificate()
        .certificate_id(&reg.ca_certificate_id)
        .send()
        .await;
    let names = |v: Vec<Option<&str>>| v.into_iter().flatten().map(str::to_string).collect::<Vec<_>>();
    assert!(
        things.things().is_empty(),
        "things left: {:?}",
        names(things.things().iter().map(|t| t.thing_name()).collect())
    );
    assert!(certs.certificates().is_empty(), "certificates left");
    assert!(
        policies.policies().is_empty(),
        "policies left: {:?}",
        names(policies.policies().iter().map(|p| p.policy_name()).collect())
    );
    let gone = ca_left
        .as_ref()
        .err()
        .and_then(|e| e.as_service_error())
        .is_some_and(|e| e.is_resource_not_found_exception());
    assert!(gone, "the CA is deregistered: {ca_left:?}");
    ns.cleanup().await;
}
