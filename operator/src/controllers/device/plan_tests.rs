//! Every credential transition of `plan`, without an API server: real
//! certificates from a real CA (signing is pure computation), HMAC secrets
//! from a counter so each new one is recognisable.

use super::*;
use crate::crd::Device;
use serde_json::json;

struct TestMint {
    next: u32,
}

impl Mint for TestMint {
    fn certificate(&mut self, ca: &CaBundle, device: &str, validity_days: i64) -> Result<Issued> {
        RealMint.certificate(ca, device, validity_days)
    }

    fn hmac_secret(&mut self) -> String {
        self.next += 1;
        format!("hmac-{}", self.next)
    }
}

fn mint() -> TestMint {
    TestMint { next: 0 }
}

fn device(spec: serde_json::Value) -> Device {
    let mut s = json!({"gatewayRef": "gw", "category": "weatherStation"});
    s.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Device",
        "metadata": {"name": "d1", "namespace": "ns", "generation": 3},
        "spec": s,
    }))
    .unwrap()
}

fn ca() -> CaBundle {
    pki::generate_ca("test CA", 365).unwrap()
}

fn crl(serials: &[&str]) -> CrlState {
    CrlState::new(
        serials
            .iter()
            .map(|s| Revocation {
                serial: s.to_string(),
                revoked_at: "2026-01-01T00:00:00Z".into(),
                subject: "d1".into(),
                reason: "test".into(),
            })
            .collect(),
        1,
        Timestamp::now() + SignedDuration::from_hours(24 * 30),
    )
}

fn observed<'a>(ca: &'a CaBundle, crl: &'a CrlState, current: Option<Credentials>) -> Observed<'a> {
    Observed {
        gateway: GatewayView::Ready { ca, crl },
        current,
        unreadable_version: None,
    }
}

fn serial(c: &Credentials) -> String {
    pki::inspect(&c.cert_pem).unwrap().serial
}

/// The credentials of a first issuance, as a later reconcile observes them.
fn issued(dev: &Device, ca: &CaBundle) -> Credentials {
    let empty = crl(&[]);
    // Its own counter range, so later secrets are told apart from it.
    plan(
        dev,
        observed(ca, &empty, None),
        Timestamp::now(),
        &mut TestMint { next: 1000 },
    )
    .unwrap()
    .store
    .expect("a first issuance stores credentials")
}

fn ready_reason(s: &DeviceStatus) -> Option<&str> {
    s.conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str())
}

fn reasons(p: &Plan) -> Vec<&'static str> {
    p.events.iter().map(|e| e.reason).collect()
}

#[test]
fn a_missing_gateway_is_reported_once_and_retried() {
    let dev = device(json!({}));
    let obs = Observed {
        gateway: GatewayView::Missing,
        current: None,
        unreadable_version: None,
    };
    let p = plan(&dev, obs, Timestamp::now(), &mut mint()).unwrap();
    assert!(!p.ready && p.store.is_none() && p.revoke.is_empty());
    assert_eq!(ready_reason(&p.status), Some("GatewayNotFound"));
    assert_eq!(reasons(&p), ["GatewayNotFound"]);
    assert_eq!(p.requeue, Duration::from_secs(30));
    // Seen again: still not Ready, but no second event.
    let mut again = dev.clone();
    again.status = Some(p.status);
    let obs = Observed {
        gateway: GatewayView::Missing,
        current: None,
        unreadable_version: None,
    };
    let p = plan(&again, obs, Timestamp::now(), &mut mint()).unwrap();
    assert!(p.events.is_empty());
}

#[test]
fn a_gateway_without_ca_is_retried_soon() {
    let obs = Observed {
        gateway: GatewayView::NotReady,
        current: None,
        unreadable_version: None,
    };
    let p = plan(&device(json!({})), obs, Timestamp::now(), &mut mint()).unwrap();
    assert_eq!(ready_reason(&p.status), Some("GatewayNotReady"));
    assert_eq!(p.requeue, Duration::from_secs(5));
}

#[test]
fn a_new_device_gets_a_certificate_from_its_gateways_ca_and_an_hmac_secret() {
    let (ca, empty) = (ca(), crl(&[]));
    let dev = device(json!({}));
    let now = Timestamp::now();
    let p = plan(&dev, observed(&ca, &empty, None), now, &mut mint()).unwrap();
    let c = p.store.as_ref().expect("credentials to store");
    assert_eq!(c.version, 1);
    assert_eq!(c.hmac, "hmac-1");
    assert_eq!(c.ca_pem, ca.cert_pem);
    assert!(c.enabled && c.previous_hmac.is_none());
    assert_eq!((c.gateway.as_str(), c.category.as_str()), ("gw", "weatherStation"));
    // Signed by the gateway's CA, for this device's name, not due.
    assert_eq!(
        pki::reissue_reason(Some(&c.cert_pem), &ca.cert_pem, "d1", &[], 30, now),
        None
    );
    assert!(p.ready && p.revoke.is_empty());
    assert_eq!(reasons(&p), ["Issued"]);
    assert_eq!(p.status.secret_version, Some(1));
    assert_eq!(p.status.serial.as_deref(), Some(serial(c).as_str()));
    assert_eq!(p.status.observed_generation, Some(3));
    // Next look: at the renewal time (60 of 90 days), capped at the resync.
    assert_eq!(p.requeue, Duration::from_secs(6 * 3600));
}

#[test]
fn settled_credentials_plan_no_write_and_no_event() {
    let (ca, empty) = (ca(), crl(&[]));
    let dev = device(json!({}));
    let current = issued(&dev, &ca);
    let p = plan(
        &dev,
        observed(&ca, &empty, Some(current)),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    assert!(p.store.is_none(), "nothing to write");
    assert!(p.events.is_empty() && p.revoke.is_empty());
    assert!(p.ready);
}

#[test]
fn a_certificate_inside_renew_before_is_renewed_keeping_the_hmac_secret() {
    let (ca, empty) = (ca(), crl(&[]));
    let dev = device(json!({"certificate": {"validityDays": 90, "renewBeforeDays": 30}}));
    let current = issued(&dev, &ca);
    // 61 days later the certificate has 29 days left: inside the window.
    let later = Timestamp::now() + SignedDuration::from_hours(24 * 61);
    let p = plan(&dev, observed(&ca, &empty, Some(current.clone())), later, &mut mint()).unwrap();
    let c = p.store.clone().expect("renewed");
    assert_ne!(serial(&c), serial(&current));
    assert_eq!(c.hmac, current.hmac, "renewal keeps the HMAC secret");
    assert_eq!(c.version, current.version + 1);
    assert!(p.revoke.is_empty(), "the old certificate simply expires");
    assert_eq!(reasons(&p).first(), Some(&"Renewed"));
}

#[test]
fn rotation_keeps_the_previous_hmac_secret_for_the_grace_period() {
    let (ca, empty) = (ca(), crl(&[]));
    let dev = device(json!({"hmacGracePeriodSeconds": 600}));
    let current = issued(&dev, &ca);
    let rotated = device(json!({"hmacGracePeriodSeconds": 600, "rotation": 1}));
    let now = Timestamp::now();
    let p = plan(&rotated, observed(&ca, &empty, Some(current.clone())), now, &mut mint()).unwrap();
    let c = p.store.clone().expect("rotated credentials");
    assert_ne!(serial(&c), serial(&current));
    assert_ne!(c.key_pem, current.key_pem);
    assert_eq!(c.hmac, "hmac-1");
    assert_eq!(c.previous_hmac.as_deref(), Some(current.hmac.as_str()));
    assert_eq!(c.previous_serial.as_deref(), Some(serial(&current).as_str()));
    assert_eq!(
        c.previous_expires.map(jiff),
        Some(Timestamp::from_second(now.as_second() + 600).unwrap())
    );
    assert_eq!(c.rotation, 1);
    assert!(
        p.revoke.is_empty(),
        "the previous certificate stays valid during the grace period"
    );
    assert_eq!(reasons(&p), ["Rotated"]);
    assert!(p.requeue <= Duration::from_secs(600), "wakes up when the grace ends");
    assert!(p.status.previous_key_expires_at.is_some());
}

#[test]
fn a_second_rotation_in_the_grace_period_revokes_the_oldest_certificate() {
    let (ca, empty) = (ca(), crl(&[]));
    let dev = device(json!({"rotation": 1}));
    let mut current = issued(&dev, &ca);
    current.previous_serial = Some("0AB1".into());
    current.previous_hmac = Some("older".into());
    current.previous_expires = Some(chrono(Timestamp::now() + SignedDuration::from_secs(300)));
    let p = plan(
        &device(json!({"rotation": 2})),
        observed(&ca, &empty, Some(current.clone())),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    let revoked: Vec<_> = p
        .revoke
        .iter()
        .map(|r| (r.serial.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(revoked, [("0AB1", "superseded")]);
    assert_eq!(p.store.unwrap().previous_serial, Some(serial(&current)));
}

#[test]
fn when_the_grace_period_ends_the_previous_secret_goes_and_its_certificate_is_revoked() {
    let (ca, empty) = (ca(), crl(&[]));
    let dev = device(json!({}));
    let mut current = issued(&dev, &ca);
    current.previous_hmac = Some("old".into());
    current.previous_serial = Some("0AB1".into());
    current.previous_expires = Some(chrono(Timestamp::now() - SignedDuration::from_secs(1)));
    let p = plan(
        &dev,
        observed(&ca, &empty, Some(current.clone())),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    let c = p.store.clone().expect("retired previous key");
    assert_eq!(
        (c.previous_hmac, c.previous_serial, c.previous_expires),
        (None, None, None)
    );
    assert_eq!(c.hmac, current.hmac);
    assert_eq!(p.revoke.len(), 1);
    assert_eq!(p.revoke[0].serial, "0AB1");
    assert_eq!(reasons(&p), ["GraceEnded"]);
}

#[test]
fn disabling_revokes_and_marks_the_secret_disabled_once() {
    let (ca, empty) = (ca(), crl(&[]));
    let current = issued(&device(json!({})), &ca);
    let dev = device(json!({"enabled": false}));
    let p = plan(
        &dev,
        observed(&ca, &empty, Some(current.clone())),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    assert!(!p.ready);
    assert_eq!(ready_reason(&p.status), Some("Disabled"));
    let c = p.store.clone().expect("the Secret says disabled");
    assert!(!c.enabled);
    assert_eq!(c.hmac, current.hmac);
    assert_eq!(c.version, current.version, "disabling is not a new credential");
    assert_eq!(p.revoke.len(), 1);
    assert_eq!(p.revoke[0].serial, serial(&current));
    assert_eq!(p.revoke[0].reason, "cessationOfOperation");
    assert_eq!(reasons(&p), ["Revoked"]);
    // Once revoked and marked: nothing more to do.
    let listed = crl(&[&serial(&current)]);
    let p = plan(&dev, observed(&ca, &listed, Some(c)), Timestamp::now(), &mut mint()).unwrap();
    assert!(p.store.is_none() && p.revoke.is_empty() && p.events.is_empty());
}

#[test]
fn a_disabled_device_without_credentials_gets_none() {
    let (ca, empty) = (ca(), crl(&[]));
    let p = plan(
        &device(json!({"enabled": false})),
        observed(&ca, &empty, None),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    assert!(p.store.is_none() && p.revoke.is_empty() && !p.ready);
}

#[test]
fn re_enabling_issues_a_new_certificate_and_a_new_hmac_secret() {
    let (ca, _) = (ca(), crl(&[]));
    let mut current = issued(&device(json!({})), &ca);
    current.enabled = false;
    let listed = crl(&[&serial(&current)]);
    let p = plan(
        &device(json!({})),
        observed(&ca, &listed, Some(current.clone())),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    let c = p.store.clone().expect("new credentials");
    assert!(c.enabled);
    assert_ne!(serial(&c), serial(&current));
    assert_ne!(
        c.hmac, current.hmac,
        "the disabled device's HMAC secret is not trusted again"
    );
    assert_eq!(c.previous_hmac, None, "no grace period for it either");
    assert_eq!(c.version, current.version + 1);
    assert_eq!(reasons(&p), ["Reissued"]);
    assert!(p.ready);
}

#[test]
fn a_revoked_certificate_is_replaced() {
    let ca = ca();
    let current = issued(&device(json!({})), &ca);
    let listed = crl(&[&serial(&current)]);
    let p = plan(
        &device(json!({})),
        observed(&ca, &listed, Some(current.clone())),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    let c = p.store.clone().expect("replaced");
    assert_ne!(serial(&c), serial(&current));
    assert_eq!(c.hmac, current.hmac);
    assert!(p.events[0].note.contains("certificate was revoked"), "{:?}", p.events);
}

#[test]
fn a_new_gateway_ca_gets_the_device_a_certificate_from_it() {
    let (old_ca, new_ca, empty) = (ca(), ca(), crl(&[]));
    let current = issued(&device(json!({})), &old_ca);
    let now = Timestamp::now();
    let p = plan(
        &device(json!({})),
        observed(&new_ca, &empty, Some(current.clone())),
        now,
        &mut mint(),
    )
    .unwrap();
    let c = p.store.clone().expect("reissued under the new CA");
    assert_eq!(c.ca_pem, new_ca.cert_pem);
    assert_eq!(
        pki::reissue_reason(Some(&c.cert_pem), &new_ca.cert_pem, "d1", &[], 30, now),
        None
    );
    assert_eq!(c.hmac, current.hmac);
}

#[test]
fn an_unreadable_secret_is_replaced_past_its_version() {
    let (ca, empty) = (ca(), crl(&[]));
    let obs = Observed {
        gateway: GatewayView::Ready { ca: &ca, crl: &empty },
        current: None,
        unreadable_version: Some(7),
    };
    let p = plan(&device(json!({})), obs, Timestamp::now(), &mut mint()).unwrap();
    assert_eq!(p.store.unwrap().version, 8);
}

#[test]
fn a_name_too_long_for_a_label_is_a_condition_not_a_new_key_each_retry() {
    let mut dev = device(json!({}));
    dev.metadata.name = Some("d".repeat(MAX_LABEL_VALUE + 1));
    let (ca, crl) = (ca(), crl(&[]));
    let mut m = mint();
    let p = plan(&dev, observed(&ca, &crl, None), Timestamp::now(), &mut m).unwrap();
    assert!(!p.ready && p.store.is_none(), "nothing issued");
    assert_eq!(m.next, 0, "no secret drawn");
    assert_eq!(ready_reason(&p.status), Some("NameTooLong"));
    assert_eq!(reasons(&p), ["NameTooLong"]);
    // At the limit it is issued as usual.
    dev.metadata.name = Some("d".repeat(MAX_LABEL_VALUE));
    let p = plan(&dev, observed(&ca, &crl, None), Timestamp::now(), &mut m).unwrap();
    assert!(p.ready && p.store.is_some());
}

#[test]
fn revoked_certificates_are_remembered_and_revoked_again_when_the_crl_lost_them() {
    let (ca, empty) = (ca(), crl(&[]));
    let mut dev = device(json!({}));
    let mut current = issued(&dev, &ca);
    current.previous_hmac = Some("old".into());
    current.previous_serial = Some("0AB1".into());
    current.previous_expires = Some(chrono(Timestamp::now() - SignedDuration::from_secs(1)));
    let now = Timestamp::now();
    let p = plan(&dev, observed(&ca, &empty, Some(current)), now, &mut mint()).unwrap();
    assert_eq!(p.revoke.len(), 1);
    let kept = &p.status.revoked_certificates;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].serial.as_str(), kept[0].reason.as_str()),
        ("0AB1", "superseded")
    );

    // Applied: the CRL lists it, the status remembers it; nothing to do.
    let settled = p.store.clone().unwrap();
    dev.status = Some(p.status.clone());
    let listed = crl(&["0AB1"]);
    let p = plan(&dev, observed(&ca, &listed, Some(settled.clone())), now, &mut mint()).unwrap();
    assert!(p.revoke.is_empty() && p.events.is_empty());

    // The CRL lost it (its ConfigMap recreated empty): revoked again, with
    // its first revocation time.
    let p = plan(&dev, observed(&ca, &empty, Some(settled.clone())), now, &mut mint()).unwrap();
    assert_eq!(p.revoke.len(), 1);
    assert_eq!(p.revoke[0].serial, "0AB1");
    assert_eq!(
        p.revoke[0].revoked_at.parse::<Timestamp>().unwrap(),
        kept[0].revoked_at.0
    );
    assert_eq!(reasons(&p), ["RevocationRestored"]);

    // Once no certificate issued before it can be valid, it is forgotten.
    let status = dev.status.as_mut().unwrap();
    status.revoked_certificates[0].revoked_at.0 = now - SignedDuration::from_hours(24 * 3651);
    let p = plan(&dev, observed(&ca, &empty, Some(settled)), now, &mut mint()).unwrap();
    assert!(p.status.revoked_certificates.is_empty());
    assert!(p.revoke.is_empty());
}

/// Why revocations may be written before the new credentials are stored:
/// for an enabled device no plan ever revokes a certificate the
/// credentials keep as current, so a crash between the two writes leaves
/// the device with a valid certificate. Walked through every transition
/// that revokes: rotation, a second rotation inside the grace period, the
/// grace period's end, a certificate the CRL lists, and a CRL that lost a
/// revocation.
#[test]
fn an_enabled_device_never_has_its_current_certificate_revoked() {
    let (ca, empty) = (ca(), crl(&[]));
    let check = |p: &Plan, kept: &Credentials| {
        let current = serial(p.store.as_ref().unwrap_or(kept));
        assert!(
            p.revoke.iter().all(|r| r.serial != current),
            "plan revokes the current certificate {current}: {:?}",
            p.revoke
        );
    };
    let now = Timestamp::now();
    let mut current = issued(&device(json!({})), &ca);
    let mut revoked = 0;
    // Two rotations inside the grace period, then its end.
    for (rotation, at) in [(1, now), (2, now), (2, now + SignedDuration::from_hours(24 * 8))] {
        let dev = device(json!({ "rotation": rotation, "hmacGracePeriodSeconds": 3600 }));
        let p = plan(&dev, observed(&ca, &empty, Some(current.clone())), at, &mut mint()).unwrap();
        check(&p, &current);
        revoked += p.revoke.len();
        current = p.store.unwrap_or(current);
    }
    assert_eq!(
        revoked, 2,
        "the second rotation and the grace period's end each revoke one"
    );
    // The CRL lists the current certificate (revoked by hand): replaced.
    let dev = device(json!({ "rotation": 2 }));
    let listed = crl(&[&serial(&current)]);
    let p = plan(&dev, observed(&ca, &listed, Some(current.clone())), now, &mut mint()).unwrap();
    check(&p, &current);
    assert!(p.store.is_some(), "a listed certificate is replaced");
    // A CRL that lost an earlier revocation gets it back.
    let mut dev = device(json!({ "rotation": 2 }));
    let mut status = DeviceStatus::default();
    status.revoked_certificates.push(RevokedCertificate {
        serial: "0AB1".into(),
        revoked_at: Time(now),
        reason: "superseded".into(),
    });
    dev.status = Some(status);
    let current = p.store.unwrap();
    let p = plan(&dev, observed(&ca, &empty, Some(current.clone())), now, &mut mint()).unwrap();
    assert_eq!(p.revoke.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), ["0AB1"]);
    check(&p, &current);
}

/// The gateway writes `lastSeen` and `online`: the operator plans without
/// them, so its status write neither sets an older `lastSeen` back nor
/// happens because a device published.
#[test]
fn the_operator_never_writes_the_devices_liveness() {
    let ca = ca();
    let empty = crl(&[]);
    let mut dev = device(json!({}));
    let first = plan(&dev, observed(&ca, &empty, None), Timestamp::now(), &mut mint()).unwrap();
    let settled = first.store.clone().unwrap();
    let mut stored = serde_json::to_value(&first.status).unwrap();
    stored["lastSeen"] = json!("2026-12-07T10:00:00Z");
    stored["online"] = json!(true);
    dev.status = Some(serde_json::from_value(stored).unwrap());

    let again = plan(
        &dev,
        observed(&ca, &empty, Some(settled)),
        Timestamp::now(),
        &mut mint(),
    )
    .unwrap();
    assert!(again.store.is_none(), "nothing to issue");
    assert_eq!((again.status.last_seen.as_ref(), again.status.online), (None, None));
    let written = serde_json::to_value(&again.status).unwrap();
    assert!(
        written.get("lastSeen").is_none() && written.get("online").is_none(),
        "{written}"
    );
    // What the reconciler compares with: the same, so nothing is written.
    assert_eq!(
        dev.status.as_ref().map(DeviceStatus::operator_owned),
        Some(again.status)
    );
}
