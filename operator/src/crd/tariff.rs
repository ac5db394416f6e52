//! The Tariff resource. Its money types (`Slab`, `Tax`, `MiscCharge`) and
//! the billing workload's report (`BillingReport`) come from the contract
//! crate `fleetward-tariff`, which the billing workload reads them with:
//! prices, rates and charges are decimal strings (`"0.12"`), never floats.
//!
//! Who writes what in `status`: the operator writes `conditions` and
//! `observedGeneration`; the billing workload writes `billing` with its own
//! server-side-apply field manager. The operator never sends `billing`.

use fleetward_tariff::{BillingReport, MiscCharge, PropertyType, Slab, Tax};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PostgresTarget;

/// An electricity tariff (seed 001): per property type, consumption is
/// billed in ordered unit slabs, then taxes (percent) and miscellaneous
/// fixed charges are added. The operator deploys a billing workload per
/// Tariff that turns the selected meters' readings into monthly bills.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Tariff",
    namespaced,
    status = "TariffStatus",
    shortname = "fwtariff",
    doc = "Prices for the meters a selector picks: a billing workload reads their readings from their Gateway's Kafka topic, bills each period and serves the bills, payments and accounts over its API.",
    category = "fleetward",
    printcolumn(name = "Property", type_ = "string", json_path = ".spec.propertyType"),
    printcolumn(name = "Currency", type_ = "string", json_path = ".spec.currency"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Last-Run", type_ = "string", json_path = ".status.billing.lastRunTime"),
    printcolumn(name = "Bills", type_ = "integer", json_path = ".status.billing.lastRunBills"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.slabs.filter(s, !has(s.upToUnits)).size() == 0 || (self.slabs.filter(s, !has(s.upToUnits)).size() == 1 && !has(self.slabs[size(self.slabs) - 1].upToUnits))").message("only the last slab may leave upToUnits unset"))]
#[x_kube(validation = Rule::new("self.slabs.filter(s, has(s.upToUnits)).map(s, s.upToUnits).isSorted() && self.slabs.filter(s, has(s.upToUnits)).all(a, self.slabs.filter(b, has(b.upToUnits) && b.upToUnits == a.upToUnits).size() == 1)").message("slabs must be ordered by strictly increasing upToUnits"))]
pub struct TariffSpec {
    /// Property type this tariff applies to.
    pub property_type: PropertyType,

    /// ISO 4217 currency code, e.g. `EUR`, `INR`.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,

    /// Consumption slabs in increasing order: units up to `upToUnits` of
    /// each slab are charged at its `pricePerUnit` (a decimal string such
    /// as `"0.12"`); the last slab may leave `upToUnits` unset to cover
    /// everything above.
    #[schemars(length(min = 1, max = 20))]
    pub slabs: Vec<Slab>,

    /// Taxes (`percent` a decimal string such as `"13.5"`) applied to the
    /// energy charge plus miscellaneous charges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub taxes: Vec<Tax>,

    /// Fixed charges added to every bill (meter rent, service fee…), each
    /// `amount` a decimal string such as `"2.50"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub misc_charges: Vec<MiscCharge>,

    /// When bills are generated: a 5-field cron expression or
    /// `@monthly`/`@weekly`/`@daily`.
    #[serde(default = "default_schedule")]
    #[schemars(regex(pattern = r"^(@(monthly|weekly|daily|hourly)|(\S+\s+){4}\S+)$"))]
    pub schedule: String,

    /// Which electricity-meter Devices (by label) this tariff bills.
    #[serde(default)]
    pub meter_selector: LabelSelector,

    /// Name of the Gateway, in the same namespace, the meters belong to:
    /// the billing run reads meters on demand through its command API and
    /// their telemetry from its Kafka topic (so it needs `spec.kafka`).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub gateway: String,

    /// How long a billing run waits for a meter to answer an on-demand
    /// read before estimating from its last telemetry reading.
    #[serde(default = "default_meter_read_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub meter_read_timeout_seconds: i64,

    /// Days from a bill's issue to its due date.
    #[serde(default = "default_payment_due_days")]
    #[schemars(range(min = 1, max = 90))]
    pub payment_due_days: i64,

    /// Database holding meter readings and bills.
    pub database: PostgresTarget,

    /// How long meter readings are kept (a year by default), by when the
    /// gateway accepted them; bills, runs and payments are kept. The
    /// namespace's readings, which all its Tariffs bill from, are kept for
    /// the longest retention among them, and go a week at a time.
    #[serde(default)]
    pub retention: TariffRetention,

    /// Container images; defaults come from the operator's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<TariffImages>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TariffRetention {
    /// Days a meter reading is kept.
    #[serde(default = "crate::crd::gateway::default_retention_days")]
    #[schemars(range(min = 1, max = 36_500))]
    pub readings_days: i64,
}

impl Default for TariffRetention {
    fn default() -> Self {
        Self {
            readings_days: crate::crd::gateway::default_retention_days(),
        }
    }
}

fn default_schedule() -> String {
    "@monthly".into()
}

fn default_meter_read_timeout() -> i64 {
    30
}

fn default_payment_due_days() -> i64 {
    15
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TariffImages {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TariffStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the billing workload reports about its runs (written by the
    /// workload, never by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingReport>,
}

impl TariffStatus {
    /// The part of this status the operator writes: everything but
    /// `billing`. What the operator compares its planned status with, so a
    /// new billing report alone does not make it write status again.
    pub fn operator_owned(&self) -> Self {
        Self {
            billing: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;
    use fleetward_tariff::BillingSpec;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn amount() -> impl Strategy<Value = String> {
        "(0|[1-9][0-9]{0,5})(\\.[0-9]{1,6})?"
    }

    fn slab() -> impl Strategy<Value = Slab> {
        (proptest::option::of(1..1_000_000i64), amount()).prop_map(|(up_to_units, price_per_unit)| Slab {
            up_to_units,
            price_per_unit,
        })
    }

    fn tax() -> impl Strategy<Value = Tax> {
        ("[A-Za-z ]{1,20}", "[1-9]?[0-9](\\.[0-9]{1,4})?").prop_map(|(name, percent)| Tax { name, percent })
    }

    fn charge() -> impl Strategy<Value = MiscCharge> {
        ("[A-Za-z ]{1,20}", amount()).prop_map(|(name, amount)| MiscCharge { name, amount })
    }

    fn selector() -> impl Strategy<Value = LabelSelector> {
        proptest::option::of(proptest::collection::btree_map("[a-z.]{1,8}", "[a-z]{0,8}", 0..3)).prop_map(
            |labels: Option<BTreeMap<String, String>>| LabelSelector {
                match_labels: labels,
                ..Default::default()
            },
        )
    }

    prop_compose! {
        fn spec()(
            commercial in any::<bool>(),
            currency in "[A-Z]{3}",
            slabs in proptest::collection::vec(slab(), 1..5),
            taxes in proptest::collection::vec(tax(), 0..3),
            misc_charges in proptest::collection::vec(charge(), 0..3),
            schedule in prop_oneof![Just("@monthly".to_string()), Just("0 6 1 * *".to_string())],
            meter_selector in selector(),
            gateway in "[a-z][a-z0-9-]{0,10}[a-z0-9]",
            meter_read_timeout_seconds in 1..=3600i64,
            payment_due_days in 1..=90i64,
            image in proptest::option::of("[a-z/:.0-9]{1,20}"),
        ) -> TariffSpec {
            TariffSpec {
                property_type: if commercial { PropertyType::Commercial } else { PropertyType::Residential },
                currency, slabs, taxes, misc_charges, schedule, meter_selector, gateway,
                meter_read_timeout_seconds, payment_due_days,
                database: PostgresTarget {
                    connection_secret_ref: SecretKeyRef { name: "db".into(), key: "url".into() },
                },
                retention: TariffRetention::default(),
                images: image.map(|billing| TariffImages { billing: Some(billing) }),
            }
        }
    }

    proptest! {
        /// The billing workload reads its Tariff as `BillingSpec`: whatever
        /// the operator's type holds (empty lists, defaults, optional
        /// bounds left out) must read back field for field.
        #[test]
        fn every_tariff_spec_reads_as_the_billing_contract(s in spec()) {
            let json = serde_json::to_value(&s).unwrap();
            let b: BillingSpec = serde_json::from_value(json).unwrap();
            prop_assert_eq!(b.property_type, s.property_type);
            prop_assert_eq!(&b.currency, &s.currency);
            prop_assert_eq!(&b.slabs, &s.slabs);
            prop_assert_eq!(&b.taxes, &s.taxes);
            prop_assert_eq!(&b.misc_charges, &s.misc_charges);
            prop_assert_eq!(&b.schedule, &s.schedule);
            prop_assert_eq!(&b.meter_selector, &s.meter_selector);
            prop_assert_eq!(&b.gateway, &s.gateway);
            prop_assert_eq!(b.meter_read_timeout_seconds, s.meter_read_timeout_seconds);
            prop_assert_eq!(b.payment_due_days, s.payment_due_days);
        }
    }

    #[test]
    fn a_minimal_manifest_gets_its_defaults_and_reads_as_the_contract() {
        let manifest = serde_json::json!({
            "propertyType": "residential", "currency": "EUR", "gateway": "edge",
            "slabs": [{"upToUnits": 100, "pricePerUnit": "0.12"}, {"pricePerUnit": "0.25"}],
            "database": {"connectionSecretRef": {"name": "db", "key": "url"}},
        });
        let s: TariffSpec = serde_json::from_value(manifest).unwrap();
        assert_eq!(
            (s.schedule.as_str(), s.meter_read_timeout_seconds, s.payment_due_days),
            ("@monthly", 30, 15)
        );
        let b: BillingSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(b.slabs[0].price_per_unit, "0.12");
        assert_eq!(b.payment_due_days, 15);
    }

    #[test]
    fn the_operator_owned_status_leaves_the_billing_report_out() {
        let status = TariffStatus {
            observed_generation: Some(3),
            billing: Some(BillingReport {
                last_run_bills: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mine = status.operator_owned();
        assert_eq!(mine.billing, None);
        assert_eq!(mine.observed_generation, Some(3));
        let json = serde_json::to_value(&mine).unwrap();
        assert!(json.get("billing").is_none(), "{json}");
    }

    #[test]
    fn the_schema_holds_money_as_patterned_strings() {
        let crd = serde_json::to_value(<Tariff as kube::CustomResourceExt>::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let price = &spec["properties"]["slabs"]["items"]["properties"]["pricePerUnit"];
        assert_eq!(price["type"], "string");
        assert_eq!(price["pattern"], fleetward_tariff::AMOUNT_PATTERN);
        let percent = &spec["properties"]["taxes"]["items"]["properties"]["percent"];
        assert_eq!(percent["pattern"], fleetward_tariff::PERCENT_PATTERN);
        let amount = &spec["properties"]["miscCharges"]["items"]["properties"]["amount"];
        assert_eq!(amount["pattern"], fleetward_tariff::AMOUNT_PATTERN);
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(required.contains(&"gateway"), "{required:?}");
    }
}
