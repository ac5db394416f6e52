//! What billing reads from and writes to the Kubernetes API: its Tariff
//! (re-read before every run, so an edit applies to the next run), the
//! meters it selects, and its report in the Tariff's `status.billing`.

use fleetward_tariff::{BillingReport, BillingSpec, LABEL_ACCOUNT, LABEL_PROPERTY, STATUS_MANAGER};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// A meter to bill.
#[derive(Clone, Debug, PartialEq)]
pub struct Meter {
    pub device_id: String,
    pub property: String,
    /// The account owning the property.
    pub owner: String,
}

/// A Tariff as billing reads it.
#[derive(Clone, Debug)]
pub struct TariffView {
    pub spec: BillingSpec,
    /// `fleetward.io/bill-period`, when set.
    pub run_request: Option<String>,
    pub report: BillingReport,
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("fleetward.io", "v1alpha1", kind))
}

pub async fn tariff(client: &Client, ns: &str, name: &str) -> Result<TariffView, String> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource("Tariff"));
    let obj = api
        .get(name)
        .await
        .map_err(|e| format!("reading Tariff {ns}/{name}: {e}"))?;
    let spec: BillingSpec = serde_json::from_value(obj.data["spec"].clone())
        .map_err(|e| format!("Tariff {ns}/{name} has an unreadable spec: {e}"))?;
    let report = serde_json::from_value(obj.data["status"]["billing"].clone()).unwrap_or_default();
    Ok(TariffView {
        run_request: obj.annotations().get(fleetward_tariff::ANN_RUN).cloned(),
        spec,
        report,
    })
}

/// `matchLabels` and `matchExpressions` as a label-selector string.
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The electricity meters `spec.meterSelector` selects; Devices missing
/// the property or account label are returned apart, by name.
pub async fn meters(client: &Client, ns: &str, spec: &BillingSpec) -> Result<(Vec<Meter>, Vec<String>), String> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource("Device"));
    let lp = ListParams::default().labels(&selector_string(&spec.meter_selector));
    let list = api
        .list(&lp)
        .await
        .map_err(|e| format!("listing Devices in {ns}: {e}"))?;
    let mut meters = Vec::new();
    let mut unlabelled = Vec::new();
    for d in list {
        if d.data["spec"]["category"].as_str() != Some("electricityMeter") {
            continue;
        }
        let labels = d.labels();
        match (labels.get(LABEL_PROPERTY), labels.get(LABEL_ACCOUNT)) {
            (Some(property), Some(owner)) => meters.push(Meter {
                device_id: d.name_any(),
                property: property.clone(),
                owner: owner.clone(),
            }),
            _ => unlabelled.push(d.name_any()),
        }
    }
    meters.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    Ok((meters, unlabelled))
}

/// Applies `report` as `status.billing` with billing's own field manager
/// (the operator owns the conditions).
pub async fn report(client: &Client, ns: &str, name: &str, report: &BillingReport) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource("Tariff"));
    let patch = json!({
        "apiVersion": "fleetward.io/v1alpha1",
        "kind": "Tariff",
        "status": {"billing": report},
    });
    api.patch_status(name, &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_render_as_the_api_reads_them() {
        let s = LabelSelector {
            match_labels: Some([("fleetward.io/property-type".to_string(), "residential".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "retired".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&s),
            "fleetward.io/property-type=residential,zone in (a,b),!retired"
        );
        assert_eq!(selector_string(&LabelSelector::default()), "");
    }
}
