//! The API server itself refuses nonsense, from the schema and CEL rules
//! generated out of the Rust types.

mod common;

use common::*;
use fleetward_operator::crd::{Device, StationFeed, Tariff};
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// Applies `doc` and returns the API server's refusal message (422).
async fn refused(ns: &TestNs, doc: serde_json::Value) -> String {
    let kind = doc["kind"].as_str().unwrap().to_string();
    let name = doc["metadata"]["name"].as_str().unwrap().to_string();
    let pp = PatchParams::apply("fleetward-tests");
    let res = match kind.as_str() {
        "Device" => ns
            .api::<Device>()
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map(|_| ()),
        "Tariff" => ns
            .api::<Tariff>()
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map(|_| ()),
        "StationFeed" => ns
            .api::<StationFeed>()
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map(|_| ()),
        _ => unreachable!(),
    };
    match res {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        other => panic!("{kind}/{name} was accepted: {other:?}"),
    }
}

/// Creates the Tariff `doc` and returns the API server's refusal (422).
/// For a wrongly typed field: a server-side apply of it already fails
/// while the server builds the typed patch (500, not a validation error),
/// so the validation is shown on a create.
async fn refused_create(ns: &TestNs, doc: serde_json::Value) -> String {
    let dynamic = ns.dynamic("fleetward.io/v1alpha1", "Tariff");
    let obj: kube::api::DynamicObject = serde_json::from_value(doc).unwrap();
    match dynamic.create(&Default::default(), &obj).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        other => panic!("accepted: {other:?}"),
    }
}

fn device(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Device", "metadata": {"name": name}, "spec": spec})
}

fn tariff(name: &str, patch: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "propertyType": "residential",
        "currency": "EUR",
        "gateway": "edge",
        "slabs": [{"upToUnits": 100, "pricePerUnit": "0.1"}, {"upToUnits": 300, "pricePerUnit": "0.2"}, {"pricePerUnit": "0.3"}],
        "database": {"connectionSecretRef": {"name": "db", "key": "url"}},
    });
    for (k, v) in patch.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Tariff", "metadata": {"name": name}, "spec": spec})
}

fn feed(name: &str, patch: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "source": {"jcdecaux": {"contract": "Dublin", "apiKeySecretRef": {"name": "k", "key": "apiKey"}}},
        "kafka": {"topic": "stations"},
        "postgres": {"connectionSecretRef": {"name": "db", "key": "url"}},
    });
    for (k, v) in patch.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "StationFeed", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn invalid_devices_are_refused() {
    install_crds();
    let ns = TestNs::new("fw-val-dev").await;
    let msg = refused(&ns, device("d1", json!({"gatewayRef": "gw", "category": "toaster"}))).await;
    assert!(
        msg.contains("spec.category") && msg.contains("supported values"),
        "{msg}"
    );
    let msg = refused(
        &ns,
        device(
            "d2",
            json!({"gatewayRef": "gw", "category": "smartLock",
        "certificate": {"validityDays": 10, "renewBeforeDays": 10}}),
        ),
    )
    .await;
    assert!(
        msg.contains("renewBeforeDays must be smaller than validityDays"),
        "{msg}"
    );
    let msg = refused(
        &ns,
        device(
            "d3",
            json!({"gatewayRef": "gw", "category": "smartLock", "rotation": -1}),
        ),
    )
    .await;
    assert!(msg.contains("spec.rotation"), "{msg}");
    let msg = refused(&ns, device("d4", json!({"category": "smartLock"}))).await;
    assert!(msg.contains("gatewayRef") && msg.contains("Required"), "{msg}");
    let msg = refused(
        &ns,
        device("d5", json!({"gatewayRef": "Not_A_Name", "category": "smartLock"})),
    )
    .await;
    assert!(msg.contains("spec.gatewayRef"), "{msg}");

    // Valid, then an attempt to move it to another gateway.
    let ok = device("d6", json!({"gatewayRef": "gw", "category": "ipCamera"}));
    ns.api::<Device>()
        .patch("d6", &PatchParams::apply("fleetward-tests"), &Patch::Apply(&ok))
        .await
        .expect("a valid Device is accepted");
    let d = ns.api::<Device>().get("d6").await.unwrap();
    assert!(d.spec.enabled, "enabled defaults to true");
    assert_eq!(d.spec.certificate.validity_days, 90);
    assert_eq!(d.spec.certificate.renew_before_days, 30);
    let msg = refused(
        &ns,
        device("d6", json!({"gatewayRef": "other", "category": "ipCamera"})),
    )
    .await;
    assert!(msg.contains("gatewayRef is immutable"), "{msg}");
    ns.cleanup().await;
}

#[tokio::test]
async fn invalid_tariffs_are_refused() {
    install_crds();
    let ns = TestNs::new("fw-val-tariff").await;
    // Money is a decimal string: a YAML number (which a float would carry
    // inexactly) and anything but digits are refused.
    let msg = refused_create(
        &ns,
        tariff("t0", json!({"slabs": [{"upToUnits": 100, "pricePerUnit": 0.12}]})),
    )
    .await;
    assert!(
        msg.contains("pricePerUnit") && msg.contains("must be of type string"),
        "{msg}"
    );
    for (i, bad) in ["abc", "-0.5", "1e3", ".5", "0.1234567", ""].iter().enumerate() {
        let msg = refused(
            &ns,
            tariff(
                &format!("t1-{i}"),
                json!({"slabs": [{"upToUnits": 100, "pricePerUnit": bad}]}),
            ),
        )
        .await;
        assert!(
            msg.contains("pricePerUnit") && msg.contains("should match"),
            "{bad:?}: {msg}"
        );
    }
    let msg = refused(
        &ns,
        tariff(
            "t2",
            json!({"slabs": [{"upToUnits": 300, "pricePerUnit": "0.1"}, {"upToUnits": 100, "pricePerUnit": "0.2"}]}),
        ),
    )
    .await;
    assert!(msg.contains("strictly increasing"), "{msg}");
    let msg = refused(
        &ns,
        tariff(
            "t3",
            json!({"slabs": [{"upToUnits": 100, "pricePerUnit": "0.1"}, {"upToUnits": 100, "pricePerUnit": "0.2"}]}),
        ),
    )
    .await;
    assert!(msg.contains("strictly increasing"), "{msg}");
    let msg = refused(
        &ns,
        tariff(
            "t4",
            json!({"slabs": [{"pricePerUnit": "0.1"}, {"upToUnits": 100, "pricePerUnit": "0.2"}]}),
        ),
    )
    .await;
    assert!(msg.contains("only the last slab"), "{msg}");
    let msg = refused(&ns, tariff("t5", json!({"propertyType": "industrial"}))).await;
    assert!(msg.contains("spec.propertyType"), "{msg}");
    let msg = refused(&ns, tariff("t6", json!({"currency": "euro"}))).await;
    assert!(msg.contains("spec.currency"), "{msg}");
    let msg = refused(&ns, tariff("t7", json!({"taxes": [{"name": "VAT", "percent": "120"}]}))).await;
    assert!(msg.contains("percent"), "{msg}");
    let msg = refused_create(&ns, tariff("t7b", json!({"taxes": [{"name": "VAT", "percent": 13.5}]}))).await;
    assert!(
        msg.contains("percent") && msg.contains("must be of type string"),
        "{msg}"
    );
    let msg = refused(&ns, tariff("t8", json!({"slabs": []}))).await;
    assert!(msg.contains("spec.slabs"), "{msg}");
    let msg = refused(
        &ns,
        tariff("t9", json!({"miscCharges": [{"name": "rent", "amount": "-2"}]})),
    )
    .await;
    assert!(msg.contains("amount"), "{msg}");
    let msg = refused(&ns, tariff("t10", json!({"schedule": "sometimes"}))).await;
    assert!(msg.contains("spec.schedule"), "{msg}");
    let mut no_gateway = tariff("t11", json!({}));
    no_gateway["spec"].as_object_mut().unwrap().remove("gateway");
    let msg = refused(&ns, no_gateway).await;
    assert!(msg.contains("spec.gateway") && msg.contains("Required"), "{msg}");
    let msg = refused(&ns, tariff("t12", json!({"gateway": "Edge_1"}))).await;
    assert!(msg.contains("spec.gateway"), "{msg}");
    let msg = refused(&ns, tariff("t13", json!({"meterReadTimeoutSeconds": 0}))).await;
    assert!(msg.contains("spec.meterReadTimeoutSeconds"), "{msg}");
    let msg = refused(&ns, tariff("t14", json!({"paymentDueDays": 91}))).await;
    assert!(msg.contains("spec.paymentDueDays"), "{msg}");

    let ok = tariff(
        "ok",
        json!({"slabs": [{"upToUnits": 100, "pricePerUnit": "0.12"}, {"pricePerUnit": "0"}],
               "taxes": [{"name": "VAT", "percent": "13.5"}, {"name": "all", "percent": "100"}],
               "miscCharges": [{"name": "meter rent", "amount": "2.50"}]}),
    );
    ns.api::<Tariff>()
        .patch("ok", &PatchParams::apply("fleetward-tests"), &Patch::Apply(ok))
        .await
        .expect("a valid Tariff is accepted");
    let t = ns.api::<Tariff>().get("ok").await.unwrap();
    assert_eq!(t.spec.slabs[0].price_per_unit, "0.12", "kept exactly as written");
    assert_eq!(t.spec.meter_read_timeout_seconds, 30);
    assert_eq!(t.spec.payment_due_days, 15);
    assert_eq!(t.spec.schedule, "@monthly");
    ns.cleanup().await;
}

/// The billing examples are valid Tariffs, their money kept as written.
#[tokio::test]
async fn billing_examples_are_accepted() {
    install_crds();
    let ns = TestNs::new("fw-val-tariff-ex").await;
    let dir = repo_root().join("examples/billing");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        ns.apply_yaml(&std::fs::read_to_string(&path).unwrap()).await;
        let doc: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        names.push(doc["metadata"]["name"].as_str().unwrap().to_string());
    }
    names.sort();
    assert_eq!(names, ["commercial-2026", "residential-2026"]);
    let t = ns.api::<Tariff>().get("commercial-2026").await.unwrap();
    assert_eq!(t.spec.gateway, "edge");
    assert_eq!(t.spec.slabs[1].price_per_unit, "0.22");
    assert_eq!(t.spec.misc_charges[0].amount, "12.00");
    ns.cleanup().await;
}

#[tokio::test]
async fn invalid_station_feeds_are_refused() {
    install_crds();
    let ns = TestNs::new("fw-val-feed").await;
    let both = json!({"jcdecaux": {"contract": "Dublin", "apiKeySecretRef": {"name": "k", "key": "apiKey"}},
        "gbfs": {"stationInformationUrl": "http://x/si", "stationStatusUrl": "http://x/ss", "systemName": "x"}});
    let msg = refused(&ns, feed("f1", json!({"source": both}))).await;
    assert!(msg.contains("exactly one of source.jcdecaux or source.gbfs"), "{msg}");
    let msg = refused(&ns, feed("f2", json!({"source": {}}))).await;
    assert!(msg.contains("exactly one"), "{msg}");
    let msg = refused(&ns, feed("f3", json!({"kafka": {"topic": "no spaces allowed"}}))).await;
    assert!(msg.contains("spec.kafka.topic"), "{msg}");
    let msg = refused(&ns, feed("f4", json!({"sensitiveFields": ["address", "address"]}))).await;
    assert!(msg.contains("must not repeat"), "{msg}");
    let msg = refused(&ns, feed("f5", json!({"sensitiveFields": ["available_bikes"]}))).await;
    assert!(msg.contains("sensitiveFields"), "{msg}");
    let msg = refused(&ns, feed("f6", json!({"pollIntervalSeconds": 0}))).await;
    assert!(msg.contains("pollIntervalSeconds"), "{msg}");
    ns.api::<StationFeed>()
        .patch(
            "ok",
            &PatchParams::apply("fleetward-tests"),
            &Patch::Apply(feed("ok", json!({}))),
        )
        .await
        .expect("a valid StationFeed is accepted");
    let f = ns.api::<StationFeed>().get("ok").await.unwrap();
    assert_eq!(f.spec.poll_interval_seconds, 60, "default interval");
    assert_eq!(
        serde_json::to_value(&f.spec.sensitive_fields).unwrap(),
        json!(["address", "contract_name"])
    );
    ns.cleanup().await;
}
