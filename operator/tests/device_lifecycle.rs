//! Device and Gateway reconcilers against the real kube-apiserver, checked
//! with real openssl.

mod common;

use std::sync::Arc;

use common::*;
use fleetward_operator::context::{Config, Context};
use fleetward_operator::controllers::{device, gateway};
use fleetward_operator::crd::{Device, Gateway};
use fleetward_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

async fn ready_device(ns: &TestNs, name: &str) -> Device {
    let api = ns.api::<Device>();
    wait_for(
        &format!("Device {name} Ready"),
        60,
        || get_opt(&api, name),
        device_ready,
    )
    .await
}

async fn ready_gateway(ns: &TestNs, name: &str) -> Gateway {
    let api = ns.api::<Gateway>();
    wait_for(
        &format!("Gateway {name} Ready"),
        60,
        || get_opt(&api, name),
        gateway_ready,
    )
    .await
}

async fn patch_spec(ns: &TestNs, name: &str, spec: serde_json::Value) {
    ns.api::<Device>()
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
        .await
        .expect("patch device");
}

fn status(d: &Device) -> &fleetward_operator::crd::DeviceStatus {
    d.status.as_ref().expect("status")
}

fn rv<K: kube::Resource>(k: &K) -> String {
    k.meta().resource_version.clone().unwrap()
}

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

/// Rotation issues a new certificate, key and HMAC secret, keeps the
/// previous HMAC secret for the grace period, and then retires it and
/// revokes the previous certificate.
#[tokio::test]
async fn rotation_replaces_credentials_and_keeps_previous_hmac_for_grace() {
    operator();
    let ns = TestNs::new("fw-rotate").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "  hmacGracePeriodSeconds: 8"))
        .await;
    let d0 = ready_device(&ns, "d1").await;
    let s0 = status(&d0).clone();
    let key0 = ns.secret_value("d1-credentials", "tls.key").await;
    let hmac0 = ns.secret_value("d1-credentials", "hmac.key").await;

    patch_spec(&ns, "d1", json!({"rotation": 1})).await;
    let api = ns.api::<Device>();
    let d1 = wait_for(
        "rotation observed",
        60,
        || get_opt(&api, "d1"),
        |d| device_ready(d) && d.status.as_ref().and_then(|s| s.observed_rotation) == Some(1),
    )
    .await;
    let s1 = status(&d1).clone();
    assert_ne!(s1.serial, s0.serial, "new certificate serial");
    assert_ne!(s1.fingerprint, s0.fingerprint);
    assert_eq!(s1.secret_version, s0.secret_version.map(|v| v + 1));
    assert!(s1.previous_key_expires_at.is_some());
    assert_ne!(
        ns.secret_value("d1-credentials", "tls.key").await,
        key0,
        "new private key"
    );
    let hmac1 = ns.secret_value("d1-credentials", "hmac.key").await;
    assert_ne!(hmac1, hmac0, "new HMAC secret");
    assert_eq!(
        ns.secret_value("d1-credentials", "hmac.previous.key").await,
        hmac0,
        "previous HMAC kept"
    );

    // After the grace period: previous key gone, previous cert revoked.
    let secrets = ns.api::<Secret>();
    wait_for(
        "previous HMAC key retired",
        60,
        || get_opt(&secrets, "d1-credentials"),
        |s| !s.data.as_ref().unwrap().contains_key("hmac.previous.key"),
    )
    .await;
    assert_eq!(
        ns.secret_value("d1-credentials", "hmac.key").await,
        hmac1,
        "current key survives grace end"
    );
    // The previous certificate is revoked right after the key is retired.
    let old_serial = s0.serial.clone().unwrap();
    let cms = ns.api::<ConfigMap>();
    wait_for(
        "previous serial in the CRL",
        30,
        || get_opt(&cms, "gw-crl"),
        |cm| fleetward_operator::crl::parse(cm).is_ok_and(|c| c.contains(&old_serial)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let crl = write(dir.path(), "crl.pem", &ns.crl_pem("gw").await);
    let (_, text) = openssl(&["crl", "-in", &crl, "-noout", "-text"]);
    assert!(text.contains(&old_serial), "old serial in CRL: {text}");
    assert!(
        !text.contains(s1.serial.as_deref().unwrap()),
        "current serial must not be revoked"
    );
    ns.cleanup().await;
}

/// A certificate inside its renewal window is replaced automatically; the
/// HMAC secret stays.
#[tokio::test]
async fn certificate_inside_renewal_window_is_renewed() {
    operator();
    let ns = TestNs::new("fw-renew").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    let d0 = ready_device(&ns, "d1").await;
    let s0 = status(&d0).clone();
    let hmac0 = ns.secret_value("d1-credentials", "hmac.key").await;
    // The current 90-day certificate is now inside a 95-day renewal window.
    patch_spec(
        &ns,
        "d1",
        json!({"certificate": {"validityDays": 100, "renewBeforeDays": 95}}),
    )
    .await;
    let api = ns.api::<Device>();
    let d1 = wait_for(
        "renewed certificate",
        60,
        || get_opt(&api, "d1"),
        |d| device_ready(d) && d.status.as_ref().unwrap().serial != s0.serial,
    )
    .await;
    let s1 = status(&d1);
    let days = s1
        .not_after
        .as_ref()
        .unwrap()
        .0
        .duration_since(s1.not_before.as_ref().unwrap().0)
        .as_hours()
        / 24;
    assert_eq!(days, 100);
    assert!(
        s1.renewal_time.as_ref().unwrap().0 > jiff::Timestamp::now(),
        "next renewal is in the future"
    );
    assert_eq!(
        ns.secret_value("d1-credentials", "hmac.key").await,
        hmac0,
        "renewal keeps the HMAC secret"
    );
    ns.cleanup().await;
}

/// `enabled: false` revokes: the serial shows in `openssl crl -text` and
/// `openssl verify -crl_check` refuses the certificate. Re-enabling issues
/// a new certificate that verifies.
#[tokio::test]
async fn disabling_revokes_and_reenabling_reissues() {
    operator();
    let ns = TestNs::new("fw-disable").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    let d0 = ready_device(&ns, "d1").await;
    let serial = status(&d0).serial.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.crt", &ns.secret_value("gw-ca", "tls.crt").await);
    let old_cert = write(
        dir.path(),
        "old.crt",
        &ns.secret_value("d1-credentials", "tls.crt").await,
    );

    patch_spec(&ns, "d1", json!({"enabled": false})).await;
    let api = ns.api::<Device>();
    let d = wait_for(
        "Disabled condition",
        60,
        || get_opt(&api, "d1"),
        |d| d.status.as_ref().and_then(|s| ready_reason(&s.conditions)) == Some(("False".into(), "Disabled".into())),
    )
    .await;
    let cond = ready_condition(&status(&d).conditions).unwrap();
    assert!(cond.message.contains(&serial), "{}", cond.message);
    let crl = write(dir.path(), "crl.pem", &ns.crl_pem("gw").await);
    let (_, text) = openssl(&["crl", "-in", &crl, "-noout", "-text"]);
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");
    let (ok, out) = openssl(&["verify", "-crl_check", "-CAfile", &ca, "-CRLfile", &crl, &old_cert]);
    assert!(
        !ok && out.contains("revoked"),
        "revoked cert must fail verification: {out}"
    );
    let secret = ns.secret("d1-credentials").await.unwrap();
    assert_eq!(
        secret.annotations().get("fleetward.io/enabled").map(String::as_str),
        Some("false")
    );

    patch_spec(&ns, "d1", json!({"enabled": true})).await;
    let d = wait_for(
        "re-enabled",
        60,
        || get_opt(&api, "d1"),
        |d| device_ready(d) && d.status.as_ref().unwrap().serial.as_deref() != Some(&serial),
    )
    .await;
    let new_cert = write(
        dir.path(),
        "new.crt",
        &ns.secret_value("d1-credentials", "tls.crt").await,
    );
    let crl = write(dir.path(), "crl2.pem", &ns.crl_pem("gw").await);
    let (ok, out) = openssl(&["verify", "-crl_check", "-CAfile", &ca, "-CRLfile", &crl, &new_cert]);
    assert!(ok, "new certificate {:?} must verify: {out}", status(&d).serial);
    ns.cleanup().await;
}

/// A deleted CRL ConfigMap comes back with what the Devices had revoked
/// (a rotated device's superseded certificate, a disabled device's
/// certificate), numbered after the lost CRL, not empty: the revoked
/// certificates still fail `openssl verify -crl_check`.
#[tokio::test]
async fn a_lost_crl_is_rebuilt_from_the_devices_status() {
    operator();
    let ns = TestNs::new("fw-crl-lost").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    ns.apply_yaml(&device_yaml("d2", "gw", "")).await;
    let d1 = ready_device(&ns, "d1").await;
    ready_device(&ns, "d2").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.crt", &ns.secret_value("gw-ca", "tls.crt").await);
    let d2_cert = write(
        dir.path(),
        "d2.crt",
        &ns.secret_value("d2-credentials", "tls.crt").await,
    );
    let d2_serial = status(&ready_device(&ns, "d2").await).serial.clone().unwrap();
    // d1 rotates with no grace period: its first certificate is revoked.
    let d1_first = status(&d1).serial.clone().unwrap();
    patch_spec(&ns, "d1", json!({"rotation": 1, "hmacGracePeriodSeconds": 0})).await;
    patch_spec(&ns, "d2", json!({"enabled": false})).await;
    let cms = ns.api::<ConfigMap>();
    let before = wait_for(
        "both revocations in the CRL",
        60,
        || get_opt(&cms, "gw-crl"),
        |cm| fleetward_operator::crl::parse(cm).is_ok_and(|c| c.contains(&d1_first) && c.contains(&d2_serial)),
    )
    .await;
    let number = fleetward_operator::crl::parse(&before).unwrap().number;
    let api = ns.api::<Device>();
    for (name, serial) in [("d1", &d1_first), ("d2", &d2_serial)] {
        let d = wait_for(
            "the revocation in the Device's status",
            30,
            || get_opt(&api, name),
            |d| {
                d.status
                    .as_ref()
                    .is_some_and(|s| s.revoked_certificates.iter().any(|r| &r.serial == serial))
            },
        )
        .await;
        assert!(status(&d).revoked_certificates.iter().all(|r| !r.reason.is_empty()));
    }

    cms.delete("gw-crl", &DeleteParams::default()).await.unwrap();
    let rebuilt = wait_for(
        "the CRL rebuilt",
        60,
        || get_opt(&cms, "gw-crl"),
        |cm| cm.metadata.uid != before.metadata.uid,
    )
    .await;
    let state = fleetward_operator::crl::parse(&rebuilt).unwrap();
    assert!(state.contains(&d1_first) && state.contains(&d2_serial), "{state:?}");
    assert!(state.number > number, "CRL number {} after {number}", state.number);
    let crl = write(dir.path(), "crl.pem", &ns.crl_pem("gw").await);
    let (ok, out) = openssl(&["verify", "-crl_check", "-CAfile", &ca, "-CRLfile", &crl, &d2_cert]);
    assert!(!ok && out.contains("revoked"), "{out}");
    // The event follows the rest of the reconcile (workload, status), a
    // moment after the ConfigMap.
    let events = ns.api::<Event>();
    wait_until("a CrlRebuilt event on the Gateway", 30, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CrlRebuilt") && e.involved_object.name.as_deref() == Some("gw"))
    })
    .await;
    ns.cleanup().await;
}

/// Deleting a Device revokes its certificate first, then its Secret goes.
#[tokio::test]
async fn deleting_revokes_then_removes_the_secret() {
    operator();
    let ns = TestNs::new("fw-delete").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    let d0 = ready_device(&ns, "d1").await;
    let serial = status(&d0).serial.clone().unwrap();
    assert!(d0.finalizers().iter().any(|f| f == device::FINALIZER));
    ns.api::<Device>().delete("d1", &DeleteParams::default()).await.unwrap();
    let api = ns.api::<Device>();
    let secrets = ns.api::<Secret>();
    wait_for(
        "Device gone",
        60,
        || async { Some(get_opt(&api, "d1").await.is_none()) },
        |gone| *gone,
    )
    .await;
    assert!(get_opt(&secrets, "d1-credentials").await.is_none(), "Secret removed");
    let dir = tempfile::tempdir().unwrap();
    let crl = write(dir.path(), "crl.pem", &ns.crl_pem("gw").await);
    let (_, text) = openssl(&["crl", "-in", &crl, "-noout", "-text"]);
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");
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

/// Key material never shows up in status, events or the operator's log.
#[tokio::test]
async fn secrets_stay_out_of_status_events_and_logs() {
    let op = operator();
    let ns = TestNs::new("fw-leak").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "  hmacGracePeriodSeconds: 600"))
        .await;
    ready_device(&ns, "d1").await;
    patch_spec(&ns, "d1", json!({"rotation": 7})).await;
    let api = ns.api::<Device>();
    wait_for(
        "rotated",
        60,
        || get_opt(&api, "d1"),
        |d| d.status.as_ref().and_then(|s| s.observed_rotation) == Some(7),
    )
    .await;

    let mut secrets = Vec::new();
    for key in ["hmac.key", "hmac.previous.key", "tls.key"] {
        secrets.push(ns.secret_value("d1-credentials", key).await);
    }
    secrets.push(ns.secret_value("gw-ca", "tls.key").await);
    secrets.push(ns.secret_value("gw-command-api", "api-key").await);
    let device = serde_json::to_string(&api.get("d1").await.unwrap()).unwrap();
    let gw = serde_json::to_string(&ns.api::<Gateway>().get("gw").await.unwrap()).unwrap();
    let events = serde_json::to_string(&ns.api::<Event>().list(&ListParams::default()).await.unwrap()).unwrap();
    let log = op.log_text();
    assert!(!log.is_empty(), "operator log captured");
    for (what, text) in [
        ("device", &device),
        ("gateway", &gw),
        ("events", &events),
        ("operator log", &log),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "{what} contains a private key");
        for s in &secrets {
            // Compare on a distinctive slice of each secret (PEM bodies wrap).
            let probe = s
                .lines()
                .find(|l| l.len() >= 40 && !l.starts_with("-----"))
                .unwrap_or(s);
            assert!(!text.contains(probe), "{what} leaks secret material");
        }
    }
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

/// A client acting as the gateway workload's ServiceAccount.
async fn as_gateway_account(ns: &TestNs, gateway: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(env("KUBECONFIG")).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:{gateway}-gateway", ns.name));
    kube::Client::try_from(config).unwrap()
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(e)) if e.code == 403)
}

/// The gateway's ServiceAccount reads its devices' keys (hash-sharded
/// Secrets, by name) and no other Secret: not a device's private key, not
/// its CA's, not the command key, not another gateway's keys. A device's
/// entry follows its credentials and goes with it; a shard deleted by
/// someone comes back with every entry.
#[tokio::test]
async fn the_gateway_account_reads_its_devices_keys_and_no_other_secret() {
    use fleetward_credentials::{DeviceKeys, keys_secret_name, keys_shard};
    operator();
    let ns = TestNs::new("fw-keys").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&GATEWAY_YAML.replace("name: gw", "name: gw2")).await;
    for (d, gw) in [("d1", "gw"), ("d2", "gw"), ("other", "gw2")] {
        ns.apply_yaml(&device_yaml(d, gw, "")).await;
    }
    for d in ["d1", "d2", "other"] {
        ready_device(&ns, d).await;
    }
    let secrets = ns.api::<Secret>();
    let entry = |d: &'static str, gw: &'static str| {
        let secrets = secrets.clone();
        async move {
            let shard = secrets.get(&keys_secret_name(gw, keys_shard(d))).await.ok()?;
            let bytes = shard.data?.get(d)?.0.clone();
            Some(DeviceKeys::from_bytes(&bytes).unwrap())
        }
    };
    for d in ["d1", "d2"] {
        let keys = wait_for(&format!("{d}'s keys"), 30, || entry(d, "gw"), |_| true).await;
        assert_eq!(
            keys.hmac,
            ns.secret_value(&format!("{d}-credentials"), "hmac.key").await
        );
        assert!(keys.enabled);
    }

    let gw_account: Api<Secret> = Api::namespaced(as_gateway_account(&ns, "gw").await, &ns.name);
    // What it may read: its shards, by name, with a get and with a watch.
    let own = keys_secret_name("gw", keys_shard("d1"));
    let shard = gw_account.get(&own).await.expect("the gateway reads its own shard");
    assert!(shard.data.unwrap().contains_key("d1"));
    assert!(
        watch_lists(&gw_account, &own).await.is_ok(),
        "the gateway watches its own shard by name"
    );
    let foreign = keys_secret_name("gw2", keys_shard("other"));
    assert!(
        watch_lists(&gw_account, &foreign).await.is_err(),
        "another gateway's shard"
    );
    // What it may not.
    for name in [
        "d1-credentials".to_string(),
        "gw-ca".into(),
        "gw-command-api".into(),
        "gw2-ca".into(),
        keys_secret_name("gw2", keys_shard("other")),
    ] {
        assert!(forbidden(gw_account.get(&name).await), "{name} must be refused");
    }
    assert!(
        forbidden(gw_account.list(&ListParams::default()).await),
        "listing Secrets"
    );
    assert!(
        forbidden(
            gw_account
                .list(&ListParams::default().labels("fleetward.io/device"))
                .await
        ),
        "listing credentials by label"
    );

    // A deleted shard comes back, refilled by its devices.
    let d2_shard = keys_secret_name("gw", keys_shard("d2"));
    secrets.delete(&d2_shard, &DeleteParams::default()).await.unwrap();
    wait_for("d2's keys back", 60, || entry("d2", "gw"), |_| true).await;

    // Disabled, then deleted: the entry says so, then goes.
    patch_spec(&ns, "d1", json!({"enabled": false})).await;
    wait_for("d1 disabled in its shard", 30, || entry("d1", "gw"), |k| !k.enabled).await;
    ns.api::<Device>().delete("d1", &DeleteParams::default()).await.unwrap();
    wait_for(
        "d1's entry removed",
        30,
        || async { Some(entry("d1", "gw").await.is_none()) },
        |gone| *gone,
    )
    .await;
    assert!(entry("d2", "gw").await.is_some(), "the other device's entry stays");
    ns.cleanup().await;
}
