//! Key material: never in status, events or the operator's log; the
//! gateway's ServiceAccount reads its own devices' keys and no other Secret.

use fleetward_operator::crd::{Device, Gateway};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;

use crate::common::*;
use crate::{patch_spec, ready_device};

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
    secrets.push(ns.secret_value("gw-command-meter", "api-key").await);
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
        "gw-command-meter".into(),
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
