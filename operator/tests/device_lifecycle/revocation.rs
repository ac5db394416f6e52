//! Revocation: disabling, deleting and rotating revoke, as openssl sees in
//! the CRL; a lost CRL is rebuilt from the Devices' status.

use fleetward_operator::controllers::device;
use fleetward_operator::crd::Device;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;

use crate::common::*;
use crate::{patch_spec, ready_device, status};

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
/// certificate) and what deleted Devices had (recorded with the CA),
/// numbered after the lost CRL, not empty: the revoked certificates still
/// fail `openssl verify -crl_check`.
#[tokio::test]
async fn a_lost_crl_is_rebuilt_from_the_devices_status() {
    operator();
    let ns = TestNs::new("fw-crl-lost").await;
    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    ns.apply_yaml(&device_yaml("d2", "gw", "")).await;
    ns.apply_yaml(&device_yaml("d3", "gw", "")).await;
    let d1 = ready_device(&ns, "d1").await;
    ready_device(&ns, "d2").await;
    let d3_first = status(&ready_device(&ns, "d3").await).serial.clone().unwrap();
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
    // d3 rotates, then is deleted: its status (which remembered the first
    // certificate) goes with it.
    let d3_cert = write(
        dir.path(),
        "d3.crt",
        &ns.secret_value("d3-credentials", "tls.crt").await,
    );
    patch_spec(&ns, "d3", json!({"rotation": 1, "hmacGracePeriodSeconds": 0})).await;
    let api = ns.api::<Device>();
    let d3 = wait_for(
        "d3's first certificate in its status",
        60,
        || get_opt(&api, "d3"),
        |d| {
            d.status
                .as_ref()
                .is_some_and(|s| s.revoked_certificates.iter().any(|r| r.serial == d3_first))
        },
    )
    .await;
    let d3_second = status(&d3).serial.clone().unwrap();
    assert_ne!(d3_second, d3_first);
    api.delete("d3", &DeleteParams::default()).await.unwrap();
    wait_for(
        "d3 gone",
        60,
        || async { Some(get_opt(&api, "d3").await.is_none()) },
        |gone| *gone,
    )
    .await;
    let cms = ns.api::<ConfigMap>();
    let before = wait_for(
        "both revocations in the CRL",
        60,
        || get_opt(&cms, "gw-crl"),
        |cm| {
            fleetward_operator::crl::parse(cm).is_ok_and(|c| {
                c.contains(&d1_first) && c.contains(&d2_serial) && c.contains(&d3_first) && c.contains(&d3_second)
            })
        },
    )
    .await;
    let number = fleetward_operator::crl::parse(&before).unwrap().number;
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
    // The Gateway is woken by the stores' own ConfigMap watch, after the
    // store has the deletion (before, a separate watch could wake it first:
    // it saw the CRL still there and slept until its resync).
    let rebuilt = wait_for(
        "the CRL rebuilt",
        60,
        || get_opt(&cms, "gw-crl"),
        |cm| cm.metadata.uid != before.metadata.uid,
    )
    .await;
    let state = fleetward_operator::crl::parse(&rebuilt).unwrap();
    assert!(state.contains(&d1_first) && state.contains(&d2_serial), "{state:?}");
    // The deleted Device's certificates do not come back.
    assert!(state.contains(&d3_first) && state.contains(&d3_second), "{state:?}");
    assert!(state.number > number, "CRL number {} after {number}", state.number);
    let crl = write(dir.path(), "crl.pem", &ns.crl_pem("gw").await);
    for cert in [&d2_cert, &d3_cert] {
        let (ok, out) = openssl(&["verify", "-crl_check", "-CAfile", &ca, "-CRLfile", &crl, cert]);
        assert!(!ok && out.contains("revoked"), "{out}");
    }
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
