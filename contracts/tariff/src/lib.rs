//! The Tariff contract between the operator (which owns the CRD and
//! deploys the billing workload) and the billing workload (which reads its
//! Tariff and reports its runs into the Tariff's status).
//!
//! Money is exact: prices, tax rates and charges are decimal *strings* in
//! the resource (`"0.12"`), checked by pattern at the API server and parsed
//! into `rust_decimal::Decimal` here, never through a float.
//!
//! Who writes what in `status`: the operator writes `conditions` and
//! `observedGeneration`; the billing workload writes `status.billing`
//! (`BillingReport`) with its own server-side-apply field manager, so
//! neither overwrites the other.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A non-negative decimal amount: up to 12 integer digits, up to 6 decimals.
pub const AMOUNT_PATTERN: &str = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$";
/// A percentage from 0 to 100 with up to 4 decimals.
pub const PERCENT_PATTERN: &str = r"^(100(\.0{1,4})?|[1-9]?[0-9](\.[0-9]{1,4})?)$";

/// The annotation that asks for a billing run now: its value is the period
/// `YYYY-MM`, optionally followed by `/<anything>` to ask again for a period
/// already run (each distinct value is handled once).
pub const ANN_RUN: &str = "fleetward.io/bill-period";
/// The label of a Device naming the property (premises) its meter measures.
pub const LABEL_PROPERTY: &str = "fleetward.io/property";
/// The label of a Device naming the account (customer) that owns its
/// property: billed for the days no tenancy covers.
pub const LABEL_ACCOUNT: &str = "fleetward.io/account";
/// The label of a Device giving its property's type (`residential`,
/// `commercial`): the examples select meters for a Tariff by it.
pub const LABEL_PROPERTY_TYPE: &str = "fleetward.io/property-type";

/// Key of the billing API's bearer key in its Secret.
pub const API_KEY: &str = "api-key";
/// Port of the billing HTTP API (bills, payments, accounts) in its pod.
pub const HTTP_PORT: u16 = 8080;
/// The field manager the billing workload applies `status.billing` with.
pub const STATUS_MANAGER: &str = "fleetward-billing";

/// Name of a Tariff's billing Deployment, Service and ServiceAccount.
pub fn workload_name(tariff: &str) -> String {
    format!("{tariff}-billing")
}

/// Name of the Secret holding a Tariff's billing API key.
pub fn api_secret_name(tariff: &str) -> String {
    format!("{tariff}-billing-api")
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum PropertyType {
    Residential,
    Commercial,
}

impl PropertyType {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Residential => "residential",
            Self::Commercial => "commercial",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Slab {
    /// Upper bound (inclusive, in kWh) of this slab; unset on the last slab
    /// means "everything above".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1)))]
    pub up_to_units: Option<i64>,
    /// Price of one kWh in this slab, a decimal string such as `"0.12"`.
    #[cfg_attr(
        feature = "schemars",
        schemars(regex(pattern = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))
    )]
    pub price_per_unit: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Tax {
    #[cfg_attr(feature = "schemars", schemars(length(min = 1, max = 64)))]
    pub name: String,
    /// Rate in percent, a decimal string such as `"13.5"`.
    #[cfg_attr(
        feature = "schemars",
        schemars(regex(pattern = r"^(100(\.0{1,4})?|[1-9]?[0-9](\.[0-9]{1,4})?)$"))
    )]
    pub percent: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct MiscCharge {
    #[cfg_attr(feature = "schemars", schemars(length(min = 1, max = 64)))]
    pub name: String,
    /// A fixed amount per monthly bill, a decimal string such as `"2.50"`.
    #[cfg_attr(
        feature = "schemars",
        schemars(regex(pattern = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))
    )]
    pub amount: String,
}

/// What the billing workload reads of its Tariff's spec (the operator's
/// `TariffSpec` has these fields and more; a test there checks that every
/// Tariff it accepts reads as this).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BillingSpec {
    pub property_type: PropertyType,
    pub currency: String,
    pub slabs: Vec<Slab>,
    #[serde(default)]
    pub taxes: Vec<Tax>,
    #[serde(default)]
    pub misc_charges: Vec<MiscCharge>,
    pub schedule: String,
    #[serde(default)]
    pub meter_selector: LabelSelector,
    pub gateway: String,
    pub meter_read_timeout_seconds: i64,
    pub payment_due_days: i64,
}

/// What the billing workload reports in `status.billing`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct BillingReport {
    /// When the last run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// The month the last run billed (`YYYY-MM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_period: Option<String>,
    /// Bills the last run produced or revised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_bills: Option<i64>,
    /// Of those, bills estimated from the last telemetry reading because the
    /// meter did not answer the on-demand read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_estimated: Option<i64>,
    /// Total billed by the last run, a decimal string in the currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_total: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// The last `fleetward.io/bill-period` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_request: Option<String>,
    /// Why the last run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the billing database is unreachable, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_error: Option<String>,
    /// Why the gateway's command API is unreachable, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_error: Option<String>,
}

/// A decimal string of the resource, as a `Decimal` (`what` names it in
/// the error).
pub fn decimal(s: &str, what: &str) -> Result<Decimal, String> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.matches('.').count() <= 1
        && !s.starts_with('.')
        && !s.ends_with('.');
    if !ok {
        return Err(format!("{what} must be a decimal number such as \"0.12\""));
    }
    s.parse::<Decimal>()
        .map_err(|_| format!("{what} must be a decimal number such as \"0.12\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly_and_refuse_floats_notation() {
        assert_eq!(decimal("0.12", "p").unwrap().to_string(), "0.12");
        assert_eq!(decimal("13.5", "p").unwrap() * Decimal::from(2), Decimal::from(27));
        for bad in ["", "1e3", "-1", ".5", "5.", "0x10", "1.2.3", "NaN", " 1"] {
            assert!(decimal(bad, "price").unwrap_err().contains("price"), "{bad:?}");
        }
    }
}
