//! Renewal: rotation replaces the certificate, key and HMAC secret, keeping
//! the previous HMAC secret for its grace period; a certificate inside its
//! renewal window is replaced.

use fleetward_operator::crd::Device;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::json;

use crate::common::*;
use crate::{patch_spec, ready_device, status};

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
