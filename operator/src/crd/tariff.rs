use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PostgresTarget;

/// An electricity tariff (seed 001): per property type, consumption is
/// billed in ordered unit slabs, then taxes (percent) and miscellaneous
/// fixed charges are added. The billing workload turns meter readings of
/// the selected electricity-meter Devices into monthly bills.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Tariff",
    namespaced,
    status = "TariffStatus",
    shortname = "tf",
    category = "fleetward",
    printcolumn(name = "Property", type_ = "string", json_path = ".spec.propertyType"),
    printcolumn(name = "Currency", type_ = "string", json_path = ".spec.currency"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Last-Run", type_ = "string", json_path = ".status.lastRunTime"),
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
    /// each slab are charged at its `pricePerUnit`; the last slab may leave
    /// `upToUnits` unset to cover everything above.
    #[schemars(length(min = 1, max = 20))]
    pub slabs: Vec<Slab>,

    /// Taxes applied to the energy charge plus miscellaneous charges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub taxes: Vec<Tax>,

    /// Fixed charges added to every bill (meter rent, service fee…).
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

    /// Database holding meter readings and bills.
    pub database: PostgresTarget,
}

fn default_schedule() -> String {
    "@monthly".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PropertyType {
    Residential,
    Commercial,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Slab {
    /// Upper bound (inclusive, in units such as kWh) of this slab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub up_to_units: Option<i64>,
    /// Price of one unit in this slab.
    #[schemars(range(min = 0))]
    pub price_per_unit: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tax {
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    #[schemars(range(min = 0, max = 100))]
    pub percent: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MiscCharge {
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    #[schemars(range(min = 0))]
    pub amount: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TariffStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// Bills produced by the last run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_bills: Option<i64>,
}
