//! Every decision about a Gateway's PKI and status, as one pure function of
//! what was observed, the spec and `now`. The reconciler (`super`) observes,
//! calls `plan`, and applies the result.
//!
//! Decisions:
//! - CA: kept while its Secret holds a valid CA (every device certificate
//!   hangs off it); created when there is none; an unusable one stops the
//!   reconcile with `InvalidCA` (replacing it would orphan every device);
//! - broker server and gateway client certificates: issued when missing,
//!   from another CA (rollover), for other names (`extraDnsNames`,
//!   `extraIpAddresses`), or inside `renewBeforeDays`;
//! - command API key: generated unless the user brings one;
//! - CRL: created with the gateway, re-signed when half its validity is
//!   spent or when the CA is new;
//! - status, events, and when to look again (the earliest renewal).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::objects;
use crate::Result;
use crate::conditions::{self, READY};
use crate::controllers::desired::Write;
use crate::controllers::events::{PlannedEvent, not_ready};
use crate::controllers::until;
use crate::crd::{Gateway, GatewayStatus, SecretKeyRef};
use crate::crl::CrlState;
use crate::mosquitto;
use crate::pki::{self, CaBundle, CertInfo, Issued, LeafRequest, Revocation, Usage};
use fleetward_protocol::record::RECORD_KEY_SECRET_KEY;

/// The gateway's CA as observed in its Secret.
pub enum CaView {
    Missing,
    Invalid(String),
    Valid(CaBundle),
}

/// What `plan` needs besides the Gateway.
pub struct Observed {
    pub ca: CaView,
    /// The certificate in the broker's and in the gateway client's Secret,
    /// when the Secret holds a certificate, its key and this CA.
    pub broker_cert: Option<String>,
    pub client_cert: Option<String>,
    /// The generated command API key Secret exists.
    pub command_key: bool,
    /// The meter key Secret exists.
    pub meter_key: bool,
    /// The record key Secret exists.
    pub record_key: bool,
    /// The devices' keys shards that are missing or not yet ours.
    pub shards_to_write: Vec<String>,
    pub crl: Option<CrlState>,
    /// When the CRL is missing although the Gateway had one (its status
    /// has a CRL number): the revocations its Devices' status remember.
    pub revoked_by_devices: Option<Vec<Revocation>>,
    /// The highest number this operator has seen the CRL carry (the
    /// Gateway's status may lag behind it).
    pub last_crl_number: Option<u64>,
    pub broker_available: bool,
    /// Why a Secret the spec names may not be used (the operator made it),
    /// when so: nothing is issued or deployed until the spec is corrected.
    pub refused: Option<String>,
}

/// The Secrets the spec names for the gateway pod and its telemetry
/// writer, by field.
pub fn secret_refs(gw: &Gateway) -> Vec<(&'static str, &SecretKeyRef)> {
    let spec = &gw.spec;
    let mut refs = Vec::new();
    if let Some(a) = &spec.audit {
        refs.push(("spec.audit.connectionSecretRef", &a.connection_secret_ref));
    }
    if let Some(r) = &spec.command_api.api_key_secret_ref {
        refs.push(("spec.commandApi.apiKeySecretRef", r));
    }
    if let Some(s) = &spec.storage {
        refs.push((
            "spec.storage.postgres.connectionSecretRef",
            &s.postgres.connection_secret_ref,
        ));
    }
    refs
}

/// Where new key material comes from; the real one is pure computation.
pub trait Mint {
    fn ca(&mut self, common_name: &str, validity_days: i64) -> Result<CaBundle>;
    fn leaf(&mut self, ca: &CaBundle, req: &LeafRequest<'_>) -> Result<Issued>;
    fn api_key(&mut self) -> String;
}

pub struct RealMint;

impl Mint for RealMint {
    fn ca(&mut self, common_name: &str, validity_days: i64) -> Result<CaBundle> {
        Ok(pki::generate_ca(common_name, validity_days)?)
    }
    fn leaf(&mut self, ca: &CaBundle, req: &LeafRequest<'_>) -> Result<Issued> {
        Ok(ca.issue(req)?)
    }
    fn api_key(&mut self) -> String {
        pki::random_secret_hex()
    }
}

/// A certificate to store in `secret` (a `kubernetes.io/tls` Secret).
#[derive(Debug)]
pub struct LeafWrite {
    pub secret: String,
    pub issued: Issued,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlStep {
    Keep,
    Create,
    /// The CRL was lost: create it with `Plan::rebuilt` and the next number.
    Rebuild,
    /// Re-sign the same entries (half-spent validity, or a new CA).
    Resign,
}

/// What the reconciler must do.
#[derive(Debug)]
pub struct Plan {
    /// The CA in effect; `None` when the CA Secret is unusable, and then
    /// nothing but the status is written.
    pub ca: Option<CaBundle>,
    /// The CA is new: create its Secret (create, not apply: if another
    /// reconcile won the race, its CA is kept and this plan is dropped).
    pub create_ca: bool,
    pub leaves: Vec<LeafWrite>,
    /// The Secrets of the PKI but the CA, in order: the leaves, the keys
    /// generated (the command API key unless the user brings one; the meter
    /// key, `read_meter` to meters only; the record key, the HMAC of its
    /// Kafka records) and the keys shards to label (see
    /// `objects::pki_writes`).
    pub secrets: Vec<Write>,
    pub crl: CrlStep,
    /// The entries of a rebuilt CRL.
    pub rebuilt: Vec<Revocation>,
    /// The workload's objects but the StatefulSet (which waits for the
    /// AWS IoT endpoint and its Kafka certificate), in order: see
    /// `objects::workload_writes`.
    pub workload: Vec<Write>,
    /// Changes when the broker must restart (config or certificate).
    pub rollout_hash: String,
    pub status: GatewayStatus,
    pub events: Vec<PlannedEvent>,
    /// notAfter of the CA and the broker certificate (for the metric).
    pub expiries: Vec<(&'static str, Timestamp)>,
    pub requeue: Duration,
}

const INVALID_CA_RETRY: Duration = Duration::from_secs(300);

/// The broker's names: its Service's DNS names, those of the command API's
/// Service (the API serves the same certificate) and localhost (the
/// gateway container reaches the broker in-pod over verified TLS), plus
/// the spec's.
pub fn broker_names(gw: &Gateway) -> (Vec<String>, Vec<IpAddr>) {
    let (name, ns) = (gw.name_any(), gw.namespace().unwrap_or_default());
    let mut dns = Vec::new();
    for service in [name.clone(), Gateway::api_service_name(&name)] {
        dns.extend([
            format!("{service}.{ns}"),
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.cluster.local"),
        ]);
        dns.push(service);
    }
    dns.push("localhost".to_string());
    dns.extend(gw.spec.extra_dns_names.iter().cloned());
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    // The API server has checked that these are addresses (CEL isIP).
    ips.extend(
        gw.spec
            .extra_ip_addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok()),
    );
    (dns, ips)
}

impl Plan {
    /// Only status and events: nothing is issued, written or deployed.
    fn nothing(status: GatewayStatus, events: Vec<PlannedEvent>, requeue: Duration) -> Plan {
        Plan {
            ca: None,
            create_ca: false,
            leaves: Vec::new(),
            secrets: Vec::new(),
            crl: CrlStep::Keep,
            rebuilt: Vec::new(),
            workload: Vec::new(),
            rollout_hash: String::new(),
            status,
            events,
            expiries: Vec::new(),
            requeue,
        }
    }
}

pub fn plan(gw: &Gateway, obs: Observed, now: Timestamp, mint: &mut impl Mint) -> Result<Plan> {
    let (name, ns) = (gw.name_any(), gw.namespace().unwrap_or_default());
    let generation = gw.metadata.generation;
    let mut status = gw.status.clone().unwrap_or_default();
    let mut events = Vec::new();

    if let Some(message) = obs.refused {
        not_ready(
            &mut status.conditions,
            &mut events,
            ("SecretNotAllowed", "Validate"),
            message,
            generation,
        );
        return Ok(Plan::nothing(status, events, Duration::from_secs(3600)));
    }
    let (ca, create_ca) = match obs.ca {
        CaView::Valid(ca) => (ca, false),
        CaView::Missing => {
            let ca = mint.ca(&format!("fleetward gateway {ns}/{name} CA"), gw.spec.ca_validity_days)?;
            events.push(PlannedEvent::normal(
                "CACreated",
                "Issue",
                format!("created CA, fingerprint {}", ca.validate()?.fingerprint),
            ));
            (ca, true)
        }
        CaView::Invalid(reason) => {
            let message = format!("CA Secret {} is not usable: {reason}", Gateway::ca_secret_name(&name));
            not_ready(
                &mut status.conditions,
                &mut events,
                ("InvalidCA", "Validate"),
                message,
                generation,
            );
            return Ok(Plan::nothing(status, events, INVALID_CA_RETRY));
        }
    };
    let ca_info = ca.validate()?;
    let renew_before = gw.spec.server_certificate.renew_before_days;
    let validity = gw.spec.server_certificate.validity_days;

    let mut leaves = Vec::new();
    let (dns, ips) = broker_names(gw);
    let broker = leaf(
        &ca,
        obs.broker_cert.as_deref().filter(|_| !create_ca),
        Gateway::broker_secret_name(&name),
        LeafRequest {
            common_name: &name,
            dns_names: &dns,
            ip_addresses: &ips,
            usage: Usage::Server,
            validity_days: validity,
        },
        renew_before,
        now,
        mint,
        &mut leaves,
    )?;
    let client = leaf(
        &ca,
        obs.client_cert.as_deref().filter(|_| !create_ca),
        Gateway::client_secret_name(&name),
        LeafRequest {
            common_name: mosquitto::GATEWAY_IDENTITY,
            dns_names: &[],
            ip_addresses: &[],
            usage: Usage::Client,
            validity_days: validity,
        },
        renew_before,
        now,
        mint,
        &mut leaves,
    )?;
    for l in &leaves {
        events.push(PlannedEvent::normal(
            "CertificateIssued",
            "Issue",
            format!("issued {} ({}), serial {}", l.secret, l.reason, l.issued.info.serial),
        ));
    }

    let mut keys = Vec::new();
    let mut generate = |wanted: bool, secret: String, data_key: &'static str| {
        if wanted {
            keys.push(objects::NewKey {
                secret,
                data_key,
                value: mint.api_key(),
            });
        }
    };
    let command = gw.spec.command_api.api_key_secret_ref.is_none() && !obs.command_key;
    generate(command, Gateway::command_secret_name(&name), "api-key");
    // Made whoever brings the command key: billing never holds that one.
    generate(!obs.meter_key, Gateway::meter_key_secret_name(&name), "api-key");
    // Always made: a Gateway given a Kafka topic later signs from its first
    // record on.
    generate(
        !obs.record_key,
        Gateway::record_key_secret_name(&name),
        RECORD_KEY_SECRET_KEY,
    );
    let issued: Vec<(&str, &Issued)> = leaves.iter().map(|l| (l.secret.as_str(), &l.issued)).collect();
    let secrets = objects::pki_writes(gw, &ca.cert_pem, &issued, keys, &obs.shards_to_write)?;

    // The CRL as it will be once the step is applied.
    let previous_number = status.crl_number.map(|n| n as u64).max(obs.last_crl_number);
    let (crl_step, crl) = match (obs.crl, obs.revoked_by_devices, previous_number) {
        (None, Some(entries), Some(number)) => {
            events.push(PlannedEvent::warning(
                "CrlRebuilt",
                "Revoke",
                format!(
                    "the CRL ConfigMap {} was missing: rebuilt from the Devices' status and the CA's record with {} \
                     revoked certificate(s)",
                    crate::crl::name(&name),
                    entries.len()
                ),
            ));
            (CrlStep::Rebuild, CrlState::rebuilt(entries, number, now))
        }
        (None, _, _) => (CrlStep::Create, CrlState::empty(now)),
        (Some(c), _, _) if create_ca || now >= c.refresh_at() => (CrlStep::Resign, c.resigned(now)),
        (Some(c), _, _) => (CrlStep::Keep, c),
    };

    let conf = mosquitto::config(gw.spec.mqtt_port, gw.spec.security.max_message_bytes);
    let acl = mosquitto::acl();
    // Pods restart when the broker's config or certificate changes; CRL
    // updates restart nothing (the gateway reloads Mosquitto).
    let rollout_hash = hex::encode(&Sha256::digest(format!("{conf}{acl}{}", broker.serial))[..8]);

    status.observed_generation = generation;
    status.ca_fingerprint = Some(ca_info.fingerprint.clone());
    status.ca_not_after = Some(Time(ca_info.not_after));
    status.endpoint = Some(format!("mqtts://{name}.{ns}.svc:{}", gw.spec.mqtt_port));
    status.server_certificate_serial = Some(broker.serial.clone());
    status.server_certificate_not_after = Some(Time(broker.not_after));
    status.revoked_certificates = Some(crl.entries.len() as i64);
    status.crl_number = Some(crl.number as i64);
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "Configured",
        "CA, certificates, CRL and broker configuration are in place",
        generation,
    );
    let available = obs.broker_available;
    conditions::set(
        &mut status.conditions,
        "BrokerAvailable",
        available,
        if available { "Available" } else { "NotAvailable" },
        if available {
            "the broker pod is running"
        } else {
            "no broker pod is available yet"
        },
        generation,
    );

    let renew = SignedDuration::from_hours(24 * renew_before);
    let next = [broker.not_after - renew, client.not_after - renew, crl.refresh_at()]
        .into_iter()
        .min()
        .expect("non-empty");
    let requeue = until(next, now);

    Ok(Plan {
        ca: Some(ca),
        create_ca,
        leaves,
        secrets,
        rebuilt: if crl_step == CrlStep::Rebuild {
            crl.entries.clone()
        } else {
            Vec::new()
        },
        crl: crl_step,
        workload: objects::workload_writes(gw, &conf, &acl)?,
        rollout_hash,
        status,
        events,
        expiries: vec![("gateway-ca", ca_info.not_after), ("broker", broker.not_after)],
        requeue,
    })
}

/// Keeps the certificate `current` or issues a new one into `out`;
/// returns the certificate in effect.
#[allow(clippy::too_many_arguments)]
fn leaf(
    ca: &CaBundle,
    current: Option<&str>,
    secret: String,
    req: LeafRequest<'_>,
    renew_before_days: i64,
    now: Timestamp,
    mint: &mut impl Mint,
    out: &mut Vec<LeafWrite>,
) -> Result<CertInfo> {
    let mut wanted: Vec<String> = req.dns_names.to_vec();
    wanted.extend(req.ip_addresses.iter().map(|ip| ip.to_string()));
    wanted.sort();
    let reason = pki::reissue_reason(current, &ca.cert_pem, req.common_name, &wanted, renew_before_days, now);
    if let (Some(cert), None) = (current, reason) {
        return Ok(pki::inspect(cert)?);
    }
    let issued = mint.leaf(ca, &req)?;
    let info = issued.info.clone();
    out.push(LeafWrite {
        secret,
        issued,
        reason: reason.map(|r| r.as_str()).unwrap_or("new"),
    });
    Ok(info)
}
