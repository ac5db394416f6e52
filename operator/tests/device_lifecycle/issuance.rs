//! Issuing: the examples come up Ready with certificates openssl accepts,
//! a second reconcile writes nothing, a Device waits for its Gateway, and
//! /metrics shows readiness and expiry.

use std::sync::Arc;

use fleetward_operator::context::{Config, Context};
use fleetward_operator::controllers::{device, gateway};
use fleetward_operator::crd::{Device, Gateway};
use fleetward_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::common::*;
use crate::{ready_device, ready_gateway, rv, status};

/// The example manifests a user applies come up Ready, and every device
/// certificate verifies against its gateway's CA with CN = device id.
#[tokio::test]
async fn examples_become_ready_with_certificates_openssl_accepts() {
    operator();
    let ns = TestNs::new("fw-examples").await;
    let examples = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in &files {
        ns.apply_yaml(&std::fs::read_to_string(f).unwrap()).await;
    }
    let gw = ready_gateway(&ns, "edge").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.crt", &ns.secret_value("edge-ca", "tls.crt").await);

    let devices = ns.api::<Device>().list(&ListParams::default()).await.unwrap();
    assert_eq!(devices.items.len(), 3, "examples/ holds three devices");
    for d in devices {
        let name = d.name_any();
        let d = ready_device(&ns, &name).await;
        let secret = format!("{name}-credentials");
        let cert = write(
            dir.path(),
            &format!("{name}.crt"),
            &ns.secret_value(&secret, "tls.crt").await,
        );
        let key = write(
            dir.path(),
            &format!("{name}.key"),
            &ns.secret_value(&secret, "tls.key").await,
        );
        let (ok, out) = openssl(&["verify", "-CAfile", &ca, &cert]);
        assert!(ok && out.contains(": OK"), "openssl verify {name}: {out}");
        let (_, subject) = openssl(&["x509", "-in", &cert, "-noout", "-subject", "-serial"]);
        assert!(subject.contains(&format!("CN = {name}")), "{subject}");
        assert!(
            subject.contains(&format!("serial={}", status(&d).serial.as_deref().unwrap())),
            "{subject}"
        );
        // The key in the Secret belongs to the certificate.
        let (_, cert_pub) = openssl(&["x509", "-in", &cert, "-noout", "-pubkey"]);
        let (_, key_pub) = openssl(&["pkey", "-in", &key, "-pubout"]);
        assert_eq!(cert_pub, key_pub, "{name}: tls.key does not match tls.crt");
        let hmac = ns.secret_value(&secret, "hmac.key").await;
        assert!(
            hmac.len() == 64 && hmac.chars().all(|c| c.is_ascii_hexdigit()),
            "hmac.key is 32 random bytes in hex"
        );
        assert_eq!(
            ns.secret_value(&secret, "ca.crt").await,
            std::fs::read_to_string(&ca).unwrap()
        );
    }

    // The broker certificate names the Service and the extra DNS name.
    let broker = write(
        dir.path(),
        "broker.crt",
        &ns.secret_value("edge-broker-tls", "tls.crt").await,
    );
    let (ok, out) = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslserver", &broker]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", &broker, "-noout", "-ext", "subjectAltName"]);
    for san in [
        format!("edge.{}.svc", ns.name),
        "mqtt.fleet-demo.example".into(),
        "localhost".into(),
    ] {
        assert!(text.contains(&san), "broker SANs lack {san}: {text}");
    }
    let gs = gw.status.unwrap();
    assert_eq!(
        gs.endpoint.as_deref(),
        Some(format!("mqtts://edge.{}.svc:8883", ns.name).as_str())
    );
    let (_, fp) = openssl(&["x509", "-in", &ca, "-noout", "-fingerprint", "-sha256"]);
    let fp = fp.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(gs.ca_fingerprint.as_deref(), Some(fp.as_str()));

    // Workload objects exist: Mosquitto + gateway containers, Service ports.
    let set = ns.api::<StatefulSet>().get("edge-gateway").await.unwrap();
    let pod = set.spec.unwrap().template.spec.unwrap();
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["mosquitto", "gateway"]);
    // Devices' Service: MQTT only; the command API and metrics on a
    // ClusterIP Service of their own.
    let ports = |svc: Service| {
        let spec = svc.spec.unwrap();
        let ports: Vec<_> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        (spec.type_.unwrap(), ports)
    };
    let services = ns.api::<Service>();
    assert_eq!(ports(services.get("edge").await.unwrap()).1, [8883]);
    assert_eq!(
        ports(services.get("edge-api").await.unwrap()),
        ("ClusterIP".to_string(), vec![8443, 9090])
    );
    ns.cleanup().await;
}

/// Running the reconcilers again on settled objects writes nothing: no new
/// certificate, no Secret/ConfigMap/StatefulSet update, no status change.
#[tokio::test]
async fn reconciling_twice_changes_nothing() {
    operator();
    let ns = TestNs::new("fw-idem").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    ready_gateway(&ns, "gw").await;
    ready_device(&ns, "d1").await;
    // Let the running operator finish its own follow-up reconciles.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    let secrets = ns.api::<Secret>();
    let cms = ns.api::<ConfigMap>();
    let snapshot = || async {
        let mut v = Vec::new();
        for s in secrets.list(&ListParams::default()).await.unwrap() {
            v.push((s.name_any(), rv(&s)));
        }
        for c in cms.list(&ListParams::default()).await.unwrap() {
            v.push((c.name_any(), rv(&c)));
        }
        let d = ns.api::<StatefulSet>().get("gw-gateway").await.unwrap();
        v.push((d.name_any(), rv(&d)));
        let s = ns.api::<Service>().get("gw").await.unwrap();
        v.push((s.name_any(), rv(&s)));
        let dev = ns.api::<Device>().get("d1").await.unwrap();
        v.push(("device".into(), rv(&dev)));
        let g = ns.api::<Gateway>().get("gw").await.unwrap();
        v.push(("gatewayobj".into(), rv(&g)));
        v.sort();
        v
    };
    let before = snapshot().await;
    let ctx = Context::start(ns.client.clone(), Config::default(), Arc::new(Metrics::default()))
        .await
        .expect("context");
    for _ in 0..2 {
        let gw = ns.api::<Gateway>().get("gw").await.unwrap();
        gateway::reconcile(Arc::new(gw), ctx.clone())
            .await
            .expect("gateway reconcile");
        let dev = ns.api::<Device>().get("d1").await.unwrap();
        device::reconcile(Arc::new(dev), ctx.clone())
            .await
            .expect("device reconcile");
    }
    assert_eq!(
        before,
        snapshot().await,
        "a reconcile of settled objects wrote something"
    );
    ns.cleanup().await;
}

/// A Device naming a Gateway that does not exist is not Ready, says why,
/// and becomes Ready once the Gateway appears.
#[tokio::test]
async fn missing_gateway_is_reported_and_retried() {
    operator();
    let ns = TestNs::new("fw-nogw").await;
    ns.apply_yaml(&device_yaml("d1", "later", "")).await;
    let api = ns.api::<Device>();
    let d = wait_for(
        "GatewayNotFound",
        60,
        || get_opt(&api, "d1"),
        |d| {
            d.status.as_ref().and_then(|s| ready_reason(&s.conditions))
                == Some(("False".into(), "GatewayNotFound".into()))
        },
    )
    .await;
    assert!(d.status.unwrap().serial.is_none(), "nothing issued without a CA");
    let events: Api<Event> = ns.api();
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(
        evs.items.iter().any(|e| e.reason.as_deref() == Some("GatewayNotFound")),
        "warning event"
    );
    ns.apply_yaml(&GATEWAY_YAML.replace("name: gw", "name: later")).await;
    ready_device(&ns, "d1").await;
    ns.cleanup().await;
}

/// /metrics exposes readiness and certificate expiry; /health answers.
#[tokio::test]
async fn metrics_report_ready_devices_and_expiry() {
    let op = operator();
    let ns = TestNs::new("fw-metrics").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    let d = ready_device(&ns, "d1").await;
    let not_after = status(&d).not_after.as_ref().unwrap().0.as_second() as f64;
    let series = format!(
        "fleetward_certificate_expiry_timestamp_seconds{{certificate=\"device\",name=\"d1\",namespace=\"{}\"}}",
        ns.name
    );
    assert_eq!(op.metric(&series), not_after, "{}", op.metrics());
    assert!(op.metric("fleetward_devices_ready") >= 1.0);
    assert!(op.metric("fleetward_reconciles_total{kind=\"device\"}") >= 1.0);
    assert!(op.metrics().contains("fleetward_reconcile_duration_seconds_bucket"));
    assert_eq!(http_get(&format!("{}/health", op.base_url)).as_deref(), Some("ok"));
    ns.cleanup().await;
}

/// Events: a failure published again and again (`repeated_event`, what a
/// failing reconcile's retries publish) is one event whose series counts
/// the repeats; news (`event`, what the plans publish once per change) is
/// one event each, and the operator keeps none of them in memory.
#[tokio::test]
async fn repeated_failures_are_one_counted_event_and_news_one_event_each() {
    let ns = TestNs::new("fw-events").await;
    ns.apply_yaml(&device_yaml("d1", "no-such-gateway", "")).await;
    let dev = ns.api::<Device>().get("d1").await.unwrap();
    let ctx = Context::start(ns.client.clone(), Config::default(), Arc::new(Metrics::default()))
        .await
        .expect("context");
    for _ in 0..3 {
        ctx.repeated_event(&dev, "TestRepeated", "Test", "the same failure".into())
            .await;
    }
    for n in 0..2 {
        ctx.event(&dev, false, "TestNews", "Test", format!("news {n}")).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let all = events.list(&ListParams::default()).await.unwrap().items;
    let of = |reason: &str| -> Vec<_> { all.iter().filter(|e| e.reason.as_deref() == Some(reason)).collect() };
    let repeated = of("TestRepeated");
    assert_eq!(repeated.len(), 1, "{repeated:?}");
    assert_eq!(repeated[0].series.as_ref().map(|s| s.count), Some(3), "{repeated:?}");
    assert_eq!(repeated[0].type_.as_deref(), Some("Warning"));
    let news = of("TestNews");
    assert_eq!(news.len(), 2, "{news:?}");
    assert!(news.iter().all(|e| e.series.is_none()), "{news:?}");
    ns.cleanup().await;
}
