//! Every decision of the Gateway `plan`, without an API server: real
//! certificates from a real CA (signing is pure computation), counted so a
//! test can say "nothing new was minted".

use super::plan::*;
use crate::controllers::desired::{applied, created_once};
use crate::crd::Gateway;
use crate::crl::CrlState;
use crate::pki::{self, CaBundle, Issued, LeafRequest, Revocation};
use fleetward_credentials::keys_secret_names;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

#[derive(Default)]
struct Counting {
    cas: u32,
    leaves: u32,
    keys: u32,
}

impl Mint for Counting {
    fn ca(&mut self, cn: &str, days: i64) -> crate::Result<CaBundle> {
        self.cas += 1;
        RealMint.ca(cn, days)
    }
    fn leaf(&mut self, ca: &CaBundle, req: &LeafRequest<'_>) -> crate::Result<Issued> {
        self.leaves += 1;
        RealMint.leaf(ca, req)
    }
    fn api_key(&mut self) -> String {
        self.keys += 1;
        format!("key-{}", self.keys)
    }
}

fn gateway(spec: serde_json::Value) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "ns", "generation": 2, "uid": "gw-uid"},
        "spec": spec,
    }))
    .unwrap()
}

fn day(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

/// The observed state right after `first` was applied: its CA, its
/// certificates, its CRL, the command key.
fn settled(first: &Plan, crl: CrlState) -> Observed {
    let cert = |suffix: &str| {
        first
            .leaves
            .iter()
            .find(|l| l.secret.ends_with(suffix))
            .map(|l| l.issued.cert_pem.clone())
    };
    Observed {
        ca: CaView::Valid(first.ca.clone().unwrap()),
        broker_cert: cert("-broker-tls"),
        client_cert: cert("-gateway-client"),
        command_key: true,
        meter_key: true,
        record_key: true,
        shards_to_write: Vec::new(),
        crl: Some(crl),
        revoked_by_devices: None,
        last_crl_number: None,
        broker_available: true,
        refused: None,
    }
}

fn new_gateway() -> Observed {
    Observed {
        ca: CaView::Missing,
        broker_cert: None,
        client_cert: None,
        command_key: false,
        meter_key: false,
        record_key: false,
        shards_to_write: keys_secret_names("gw"),
        crl: None,
        revoked_by_devices: None,
        last_crl_number: None,
        broker_available: false,
        refused: None,
    }
}

fn ready(p: &Plan) -> Option<(String, String)> {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[test]
fn a_new_gateway_gets_a_ca_two_certificates_a_key_and_a_crl() {
    let gw = gateway(json!({}));
    let now = Timestamp::now();
    let mut mint = Counting::default();
    let p = plan(&gw, new_gateway(), now, &mut mint).unwrap();
    assert!(p.create_ca);
    assert_eq!((mint.cas, mint.leaves, mint.keys), (1, 2, 3));
    let secrets: Vec<&str> = p.leaves.iter().map(|l| l.secret.as_str()).collect();
    assert_eq!(secrets, ["gw-broker-tls", "gw-gateway-client"]);
    let broker = pki::inspect(&p.leaves[0].issued.cert_pem).unwrap();
    assert!(broker.dns_names.contains(&"gw.ns.svc".to_string()));
    assert!(
        broker.dns_names.contains(&"gw-api.ns.svc".to_string()),
        "the command API serves it"
    );
    assert!(broker.dns_names.contains(&"127.0.0.1".to_string()));
    assert!(pki::is_issued_by(
        &p.leaves[0].issued.cert_pem,
        &p.ca.as_ref().unwrap().cert_pem
    ));
    let keys: Vec<(String, String)> = created_once::<Secret>(&p.secrets)
        .into_iter()
        .flat_map(|s| {
            let name = s.metadata.name.clone().unwrap();
            s.string_data
                .iter()
                .flatten()
                .map(move |(_, v)| (name.clone(), v.clone()))
        })
        .collect();
    let keys: Vec<(&str, &str)> = keys.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("gw-command-api", "key-1"),
            ("gw-command-meter", "key-2"),
            ("gw-record-key", "key-3")
        ],
        "the command key, billing's scoped key, the Kafka records' key: each created once"
    );
    let applied: Vec<String> = applied::<Secret>(&p.secrets)
        .into_iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        applied[..2],
        ["gw-broker-tls", "gw-gateway-client"],
        "the certificates first"
    );
    assert_eq!(applied[2..], keys_secret_names("gw"), "then every keys shard, labelled");
    assert_eq!(p.crl, CrlStep::Create);
    assert_eq!(p.status.crl_number, Some(1));
    assert_eq!(p.status.revoked_certificates, Some(0));
    assert_eq!(
        p.status.server_certificate_serial.as_deref(),
        Some(broker.serial.as_str())
    );
    assert_eq!(ready(&p), Some(("True".into(), "Configured".into())));
    let reasons: Vec<&str> = p.events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["CACreated", "CertificateIssued", "CertificateIssued"]);
    // The plan's key material never reaches its events.
    for e in &p.events {
        assert!(!e.note.contains("PRIVATE KEY"));
    }
}

#[test]
fn a_settled_gateway_needs_no_new_key_material_and_no_events() {
    let gw = gateway(json!({}));
    let now = Timestamp::now();
    let first = plan(&gw, new_gateway(), now, &mut RealMint).unwrap();
    let mut mint = Counting::default();
    let p = plan(&gw, settled(&first, CrlState::empty(now)), now + day(1), &mut mint).unwrap();
    assert_eq!((mint.cas, mint.leaves, mint.keys), (0, 0, 0));
    assert!(!p.create_ca && p.leaves.is_empty() && p.secrets.is_empty());
    assert_eq!(p.crl, CrlStep::Keep);
    assert!(p.events.is_empty());
    assert_eq!(p.rollout_hash, first.rollout_hash, "nothing restarts the broker");
}

#[test]
fn the_broker_certificate_is_renewed_inside_renew_before_and_the_broker_restarts() {
    let gw = gateway(json!({"serverCertificate": {"validityDays": 40, "renewBeforeDays": 10}}));
    let now = Timestamp::now();
    let first = plan(&gw, new_gateway(), now, &mut RealMint).unwrap();
    // Day 29: nothing due. Day 31: both leaves are inside renewBefore.
    let early = plan(&gw, settled(&first, CrlState::empty(now)), now + day(29), &mut RealMint).unwrap();
    assert!(early.leaves.is_empty());
    // Requeued for the renewal moment (capped by the resync).
    assert!(early.requeue.as_secs() > 0 && early.requeue.as_secs() <= 6 * 3600);
    let due = plan(&gw, settled(&first, CrlState::empty(now)), now + day(31), &mut RealMint).unwrap();
    let renewed: Vec<(&str, &str)> = due.leaves.iter().map(|l| (l.secret.as_str(), l.reason)).collect();
    assert_eq!(
        renewed,
        [("gw-broker-tls", "renewal due"), ("gw-gateway-client", "renewal due")]
    );
    assert_ne!(due.rollout_hash, first.rollout_hash);
    assert!(!due.create_ca);
}

#[test]
fn requeue_is_the_earliest_renewal() {
    let gw = gateway(json!({"serverCertificate": {"validityDays": 40, "renewBeforeDays": 10}}));
    let now = Timestamp::now();
    let first = plan(&gw, new_gateway(), now, &mut RealMint).unwrap();
    let broker = pki::inspect(&first.leaves[0].issued.cert_pem).unwrap();
    let renewal = pki::renewal_time(&broker, 10);
    let p = plan(
        &gw,
        settled(&first, CrlState::empty(now)),
        renewal - SignedDuration::from_mins(90),
        &mut RealMint,
    )
    .unwrap();
    assert!(p.leaves.is_empty());
    let secs = p.requeue.as_secs();
    assert!((5300..=5400).contains(&secs), "requeue {secs}s, expected ~90 min");
}

#[test]
fn new_names_reissue_the_broker_certificate_only() {
    let now = Timestamp::now();
    let first = plan(&gateway(json!({})), new_gateway(), now, &mut RealMint).unwrap();
    let gw = gateway(json!({"extraDnsNames": ["mqtt.example.com"], "extraIpAddresses": ["192.0.2.7"]}));
    let p = plan(&gw, settled(&first, CrlState::empty(now)), now, &mut RealMint).unwrap();
    assert_eq!(p.leaves.len(), 1);
    assert_eq!(
        (p.leaves[0].secret.as_str(), p.leaves[0].reason),
        ("gw-broker-tls", "subject or names changed")
    );
    let names = pki::inspect(&p.leaves[0].issued.cert_pem).unwrap().dns_names;
    assert!(names.contains(&"mqtt.example.com".to_string()) && names.contains(&"192.0.2.7".to_string()));
}

#[test]
fn ca_rollover_reissues_both_certificates_from_the_new_ca() {
    // The CA Secret was replaced by another valid CA: the certificates in
    // the leaf Secrets are from the old one.
    let now = Timestamp::now();
    let gw = gateway(json!({}));
    let first = plan(&gw, new_gateway(), now, &mut RealMint).unwrap();
    let mut obs = settled(&first, CrlState::empty(now));
    let new_ca = pki::generate_ca("replacement CA", 365).unwrap();
    obs.ca = CaView::Valid(new_ca.clone());
    let p = plan(&gw, obs, now, &mut RealMint).unwrap();
    assert!(!p.create_ca, "a valid CA the user put there is kept");
    assert_eq!(p.leaves.len(), 2);
    for l in &p.leaves {
        assert_eq!(l.reason, "not signed by the current CA");
        assert!(pki::is_issued_by(&l.issued.cert_pem, &new_ca.cert_pem));
    }
}

#[test]
fn a_lost_ca_is_recreated_and_the_crl_re_signed_by_it() {
    let now = Timestamp::now();
    let gw = gateway(json!({}));
    let first = plan(&gw, new_gateway(), now, &mut RealMint).unwrap();
    let mut obs = settled(&first, CrlState::empty(now).resigned(now));
    obs.ca = CaView::Missing;
    let p = plan(&gw, obs, now, &mut RealMint).unwrap();
    assert!(p.create_ca);
    assert_eq!(p.leaves.len(), 2, "certificates of the lost CA are replaced");
    assert_eq!(p.crl, CrlStep::Resign);
    assert_eq!(p.status.crl_number, Some(3));
}

#[test]
fn an_invalid_ca_stops_everything_and_warns_once() {
    let gw = gateway(json!({}));
    let now = Timestamp::now();
    let mut obs = new_gateway();
    obs.ca = CaView::Invalid("missing tls.key".into());
    let mut mint = Counting::default();
    let p = plan(&gw, obs, now, &mut mint).unwrap();
    assert!(p.ca.is_none() && p.leaves.is_empty() && p.secrets.is_empty());
    assert_eq!(
        (mint.cas, mint.leaves, mint.keys),
        (0, 0, 0),
        "never replaces a CA on its own"
    );
    assert_eq!(ready(&p), Some(("False".into(), "InvalidCA".into())));
    assert_eq!(p.events.len(), 1);
    assert!(p.events[0].warning);
    assert!(p.events[0].note.contains("gw-ca") && p.events[0].note.contains("missing tls.key"));
    assert_eq!(p.requeue.as_secs(), 300);
    // Next time, with that status recorded: no second event.
    let mut gw2 = gw.clone();
    gw2.status = Some(p.status.clone());
    let mut obs = new_gateway();
    obs.ca = CaView::Invalid("missing tls.key".into());
    assert!(plan(&gw2, obs, now, &mut RealMint).unwrap().events.is_empty());
}

#[test]
fn a_spec_naming_an_operator_secret_gets_nothing_issued_or_deployed() {
    let gw = gateway(json!({
        "audit": {"connectionSecretRef": {"name": "gw-ca", "key": "tls.key"}},
        "commandApi": {"apiKeySecretRef": {"name": "mine", "key": "k"}},
    }));
    let fields: Vec<&str> = secret_refs(&gw).into_iter().map(|(what, _)| what).collect();
    assert_eq!(
        fields,
        ["spec.audit.connectionSecretRef", "spec.commandApi.apiKeySecretRef"]
    );
    let mut obs = new_gateway();
    obs.refused = Some("refused: spec.audit.connectionSecretRef (Secret \"gw-ca\", key \"tls.key\")".into());
    let mut mint = Counting::default();
    let p = plan(&gw, obs, Timestamp::now(), &mut mint).unwrap();
    assert!(p.ca.is_none(), "apply stops before the StatefulSet");
    assert_eq!((mint.cas, mint.leaves, mint.keys), (0, 0, 0));
    assert_eq!(ready(&p), Some(("False".into(), "SecretNotAllowed".into())));
    assert!(p.events[0].warning && p.events[0].note.contains("gw-ca"));
}

#[test]
fn a_user_supplied_command_key_is_not_generated() {
    let gw = gateway(json!({"commandApi": {"apiKeySecretRef": {"name": "mine", "key": "k"}}}));
    let mut mint = Counting::default();
    let p = plan(&gw, new_gateway(), Timestamp::now(), &mut mint).unwrap();
    let created: Vec<String> = created_once::<Secret>(&p.secrets)
        .into_iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        created,
        ["gw-command-meter", "gw-record-key"],
        "no command key; billing's meter key is the operator's in any case"
    );
    assert_eq!(mint.keys, 2);
}

#[test]
fn a_half_spent_crl_is_re_signed_with_the_next_number() {
    let gw = gateway(json!({}));
    let now = Timestamp::now();
    let first = plan(&gw, new_gateway(), now, &mut RealMint).unwrap();
    let crl = CrlState::empty(now);
    let keep = plan(&gw, settled(&first, crl.clone()), now + day(14), &mut RealMint).unwrap();
    assert_eq!(keep.crl, CrlStep::Keep);
    let p = plan(&gw, settled(&first, crl), now + day(16), &mut RealMint).unwrap();
    assert_eq!(p.crl, CrlStep::Resign);
    assert_eq!(p.status.crl_number, Some(2));
}

#[test]
fn broker_availability_is_its_own_condition() {
    let gw = gateway(json!({}));
    let p = plan(&gw, new_gateway(), Timestamp::now(), &mut RealMint).unwrap();
    let c = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "BrokerAvailable")
        .unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NotAvailable"));
    assert_eq!(p.status.observed_generation, Some(2));
}

#[test]
fn a_lost_crl_is_rebuilt_from_the_devices_with_the_next_number() {
    let gw = gateway(json!({}));
    let now = Timestamp::now();
    let first = plan(&gw, new_gateway(), now, &mut RealMint).unwrap();
    let mut gw = gw;
    gw.status = Some(first.status.clone());
    let entry = |serial: &str| Revocation {
        serial: serial.into(),
        revoked_at: now.to_string(),
        subject: "d1".into(),
        reason: "superseded".into(),
    };
    let mut obs = settled(&first, CrlState::empty(now));
    obs.crl = None;
    obs.revoked_by_devices = Some(vec![entry("0A"), entry("0B")]);
    let p = plan(&gw, obs, now + day(2), &mut RealMint).unwrap();
    assert_eq!(p.crl, CrlStep::Rebuild);
    assert_eq!(p.rebuilt, vec![entry("0A"), entry("0B")]);
    assert_eq!(p.status.crl_number, Some(2), "numbered after the lost one");
    assert_eq!(p.status.revoked_certificates, Some(2));
    assert!(p.events.iter().any(|e| e.reason == "CrlRebuilt"));

    // Revocations wrote CRLs up to number 5 before the status caught up:
    // the rebuilt one comes after the last one seen, not the status's.
    let mut obs = settled(&first, CrlState::empty(now));
    obs.crl = None;
    obs.revoked_by_devices = Some(vec![entry("0A")]);
    obs.last_crl_number = Some(5);
    let p = plan(&gw, obs, now + day(2), &mut RealMint).unwrap();
    assert_eq!(p.crl, CrlStep::Rebuild);
    assert_eq!(p.status.crl_number, Some(6), "numbered after the last one seen");

    // A gateway that never had a CRL gets an empty one.
    let mut obs = new_gateway();
    obs.revoked_by_devices = Some(vec![entry("0C")]);
    let p = plan(&gateway(json!({})), obs, now, &mut RealMint).unwrap();
    assert_eq!(p.crl, CrlStep::Create);
    assert!(p.rebuilt.is_empty());
}

/// What the workload's objects (but the StatefulSet) are, by kind and name,
/// in the order they are written.
fn workload(p: &Plan) -> Vec<String> {
    use crate::controllers::desired::{Object, Write};
    use kube::ResourceExt;
    p.workload
        .iter()
        .map(|w| match w {
            Write::Apply(o) => match o {
                Object::ConfigMap(x) => format!("ConfigMap {}", x.name_any()),
                Object::ServiceAccount(x) => format!("ServiceAccount {}", x.name_any()),
                Object::Role(x) => format!("Role {}", x.name_any()),
                Object::RoleBinding(x) => format!("RoleBinding {}", x.name_any()),
                Object::PersistentVolumeClaim(x) => format!("PersistentVolumeClaim {}", x.name_any()),
                Object::Service(x) => format!("Service {}", x.name_any()),
                other => panic!("a Gateway's workload never applies {other:?}"),
            },
            Write::DeleteOwned(kind, name) => format!("delete {kind:?} {name}"),
            _ => panic!("a Gateway's workload is applied or deleted only"),
        })
        .collect()
}

#[test]
fn the_workload_objects_follow_the_provider_and_persistence() {
    let mut mint = Counting::default();
    let now = Timestamp::now();
    let p = plan(&gateway(json!({})), new_gateway(), now, &mut mint).unwrap();
    assert_eq!(
        workload(&p),
        [
            "ConfigMap gw-mosquitto",
            "ServiceAccount gw-gateway",
            "Role gw-gateway",
            "RoleBinding gw-gateway",
            "delete PersistentVolumeClaim gw-broker-data",
            "Service gw",
            "Service gw-api",
        ],
        "without spec.persistence a claim left from before goes"
    );
    let kept = plan(
        &gateway(json!({"persistence": {"size": "1Gi"}})),
        new_gateway(),
        now,
        &mut mint,
    )
    .unwrap();
    assert!(workload(&kept).contains(&"PersistentVolumeClaim gw-broker-data".to_string()));
    let aws = plan(
        &gateway(json!({"provider": "awsIot", "awsIot": {"region": "eu-west-1"}})),
        new_gateway(),
        now,
        &mut mint,
    )
    .unwrap();
    assert_eq!(
        workload(&aws),
        [
            "ServiceAccount gw-gateway",
            "Role gw-gateway",
            "RoleBinding gw-gateway",
            "Service gw-api"
        ],
        "no broker of its own: no configuration, volume or MQTT Service"
    );
}
