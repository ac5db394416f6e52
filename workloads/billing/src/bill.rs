//! The pure part of billing: a Tariff's rates, the period, who held a
//! property when, how much a meter's register moved, and the charges.
//! Nothing here does I/O; time and data come in as arguments.
//!
//! Rules (also in the README):
//! - **Period**: a calendar month in UTC, `[first day 00:00, first day of
//!   the next month 00:00)`.
//! - **Consumption** is the sum of the register's increases between
//!   successive readings, starting from the last reading at or before the
//!   period's start. A reading lower than the one before it (a meter reset
//!   or replacement) is *flagged* and contributes nothing: a bill is never
//!   negative, and what the meter counts after the reset is billed.
//! - **Who pays**: the property's owner (the Device's `fleetward.io/account`
//!   label), except for the days a tenancy covers, which go to the tenant.
//!   Each holder gets a bill for their part: the increases whose later
//!   reading falls in their days. Fixed charges are prorated by the days
//!   held (`amount · days / days in month`, then rounded); the slabs are
//!   not (each part's kWh go through the slabs from zero).
//! - **Charges**: slab by slab, each line `kWh in slab · price`; then each
//!   fixed charge; then each tax as `percent · (energy + fixed charges)`.
//!   Every line is rounded half-up to the currency's minor unit (`money`)
//!   and the total is the sum of the lines.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use fleetward_tariff::{BillingSpec, PropertyType, decimal};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money;

/// A billing month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub year: i32,
    pub month: u32,
}

impl Period {
    /// `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Period, String> {
        let bad = || format!("{s:?} is not a month written YYYY-MM");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(2000..=2199).contains(&year) || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Period { year, month })
    }

    /// The month before the one `now` falls in: what a run at the start of
    /// a month bills.
    pub fn previous(now: DateTime<Utc>) -> Period {
        let p = Period::containing(now);
        if p.month == 1 {
            Period {
                year: p.year - 1,
                month: 12,
            }
        } else {
            Period {
                year: p.year,
                month: p.month - 1,
            }
        }
    }

    pub fn containing(t: DateTime<Utc>) -> Period {
        Period {
            year: t.year(),
            month: t.month(),
        }
    }

    pub fn first_day(&self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("a valid month")
    }

    pub fn next_first_day(&self) -> NaiveDate {
        let (y, m) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        NaiveDate::from_ymd_opt(y, m, 1).expect("a valid month")
    }

    pub fn start(&self) -> DateTime<Utc> {
        midnight(self.first_day())
    }

    /// Exclusive.
    pub fn end(&self) -> DateTime<Utc> {
        midnight(self.next_first_day())
    }

    pub fn days(&self) -> i64 {
        (self.next_first_day() - self.first_day()).num_days()
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

pub fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// A Tariff's rates, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    pub property_type: PropertyType,
    pub currency: String,
    pub exponent: u32,
    /// (inclusive upper bound in kWh or none for the last, price per kWh)
    pub slabs: Vec<(Option<Decimal>, Decimal)>,
    pub taxes: Vec<(String, Decimal)>,
    pub charges: Vec<(String, Decimal)>,
    pub due_days: i64,
}

impl Rates {
    pub fn from_spec(spec: &BillingSpec) -> Result<Rates, String> {
        let exponent = money::exponent(&spec.currency)?;
        let mut slabs = Vec::new();
        let mut last = Decimal::ZERO;
        for (i, s) in spec.slabs.iter().enumerate() {
            let price = decimal(&s.price_per_unit, &format!("slabs[{i}].pricePerUnit"))?;
            let bound = s.up_to_units.map(Decimal::from);
            match bound {
                Some(b) if b <= last => return Err(format!("slabs[{i}].upToUnits must be above the slab before")),
                None if i + 1 != spec.slabs.len() => {
                    return Err(format!("slabs[{i}] leaves upToUnits unset but is not the last slab"));
                }
                _ => {}
            }
            last = bound.unwrap_or(last);
            slabs.push((bound, price));
        }
        if slabs.is_empty() {
            return Err("a tariff needs at least one slab".into());
        }
        let taxes = spec
            .taxes
            .iter()
            .enumerate()
            .map(|(i, t)| Ok((t.name.clone(), decimal(&t.percent, &format!("taxes[{i}].percent"))?)))
            .collect::<Result<_, String>>()?;
        let charges = spec
            .misc_charges
            .iter()
            .enumerate()
            .map(|(i, c)| Ok((c.name.clone(), decimal(&c.amount, &format!("miscCharges[{i}].amount"))?)))
            .collect::<Result<_, String>>()?;
        Ok(Rates {
            property_type: spec.property_type,
            currency: spec.currency.clone(),
            exponent,
            slabs,
            taxes,
            charges,
            due_days: spec.payment_due_days,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Energy,
    Charge,
    Tax,
}

/// One line of a bill.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Line {
    pub kind: LineKind,
    pub description: String,
    /// kWh in this slab (energy lines).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub quantity: Option<Decimal>,
    /// Price per kWh, or the tax's percent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub rate: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// Days of the month a bill covers, for prorating fixed charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub days: i64,
    pub of: i64,
}

impl Share {
    pub fn whole(p: Period) -> Share {
        Share {
            days: p.days(),
            of: p.days(),
        }
    }
}

/// The lines and total of a bill for `units` kWh.
pub fn charge(rates: &Rates, units: Decimal, share: Share) -> (Vec<Line>, Decimal) {
    let exp = rates.exponent;
    let units = units.max(Decimal::ZERO);
    let mut lines = Vec::new();
    let mut lower = Decimal::ZERO;
    for (bound, price) in &rates.slabs {
        let upper = bound.unwrap_or(Decimal::MAX);
        let in_slab = units.min(upper) - lower;
        if in_slab > Decimal::ZERO {
            let description = match bound {
                Some(b) => format!("Energy {lower}–{b} kWh"),
                None => format!("Energy above {lower} kWh"),
            };
            lines.push(Line {
                kind: LineKind::Energy,
                description,
                quantity: Some(in_slab),
                rate: Some(*price),
                amount: money::round(in_slab * price, exp),
            });
        }
        if units <= upper {
            break;
        }
        lower = upper;
    }
    for (name, amount) in &rates.charges {
        let prorated = if share.days == share.of {
            *amount
        } else {
            *amount * Decimal::from(share.days) / Decimal::from(share.of)
        };
        let description = if share.days == share.of {
            name.clone()
        } else {
            format!("{name} ({} of {} days)", share.days, share.of)
        };
        lines.push(Line {
            kind: LineKind::Charge,
            description,
            quantity: None,
            rate: None,
            amount: money::round(prorated, exp),
        });
    }
    let base: Decimal = lines.iter().map(|l| l.amount).sum();
    for (name, percent) in &rates.taxes {
        lines.push(Line {
            kind: LineKind::Tax,
            description: format!("{name} {percent}%"),
            quantity: None,
            rate: Some(*percent),
            amount: money::round(base * percent / Decimal::ONE_HUNDRED, exp),
        });
    }
    let total = lines.iter().map(|l| l.amount).sum();
    (lines, total)
}

/// How much a register moved over successive readings (in time order,
/// starting with the baseline), and how many times it went backwards.
pub fn consumption(readings: impl IntoIterator<Item = Decimal>) -> (Decimal, u32) {
    let mut units = Decimal::ZERO;
    let mut resets = 0;
    let mut previous: Option<Decimal> = None;
    for kwh in readings {
        if let Some(p) = previous {
            if kwh >= p {
                units += kwh - p;
            } else {
                resets += 1;
            }
        }
        previous = Some(kwh);
    }
    (units, resets)
}

/// A tenancy: `account` holds `property` from `starts_on` (inclusive) to
/// `ends_on` (exclusive; none = ongoing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenancy {
    pub account: String,
    pub starts_on: NaiveDate,
    pub ends_on: Option<NaiveDate>,
}

/// One holder's part of a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub account: String,
    pub from: NaiveDate,
    /// Exclusive.
    pub to: NaiveDate,
}

impl Part {
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days()
    }
}

/// Who held the property over `period`, in order: tenants for the days
/// their tenancies cover (tenancies of one property never overlap: the API
/// refuses that), the owner for the rest. Adjacent days of one holder make
/// one part.
pub fn parts(period: Period, owner: &str, tenancies: &[Tenancy]) -> Vec<Part> {
    let (start, end) = (period.first_day(), period.next_first_day());
    let mut covered: Vec<(NaiveDate, NaiveDate, &str)> = tenancies
        .iter()
        .filter_map(|t| {
            let from = t.starts_on.max(start);
            let to = t.ends_on.unwrap_or(end).min(end);
            (from < to).then_some((from, to, t.account.as_str()))
        })
        .collect();
    covered.sort();
    let mut out: Vec<Part> = Vec::new();
    let mut push = |account: &str, from: NaiveDate, to: NaiveDate| {
        if from >= to {
            return;
        }
        match out.last_mut() {
            Some(last) if last.account == account && last.to == from => last.to = to,
            _ => out.push(Part {
                account: account.to_string(),
                from,
                to,
            }),
        }
    };
    let mut at = start;
    for (from, to, account) in covered {
        let from = from.max(at);
        push(owner, at, from);
        push(account, from, to);
        at = at.max(to);
    }
    push(owner, at, end);
    out
}

/// The rates of the example Tariffs (`examples/billing/`), for tests and
/// benchmarks: residential (slabs 0.12 / 0.18 / 0.25 at 100 and 300 kWh,
/// VAT 13.5%, meter rent 2.50) and commercial (0.15 / 0.22 at 500 kWh,
/// VAT 13.5% and electricity duty 5%, fixed charge 12.00), both in EUR.
pub mod examples {
    use super::Rates;
    use fleetward_tariff::{BillingSpec, MiscCharge, PropertyType, Slab, Tax};

    fn spec(
        property_type: PropertyType,
        slabs: &[(Option<i64>, &str)],
        taxes: &[(&str, &str)],
        charges: &[(&str, &str)],
    ) -> BillingSpec {
        BillingSpec {
            property_type,
            currency: "EUR".into(),
            slabs: slabs
                .iter()
                .map(|(b, p)| Slab {
                    up_to_units: *b,
                    price_per_unit: p.to_string(),
                })
                .collect(),
            taxes: taxes
                .iter()
                .map(|(n, p)| Tax {
                    name: n.to_string(),
                    percent: p.to_string(),
                })
                .collect(),
            misc_charges: charges
                .iter()
                .map(|(n, a)| MiscCharge {
                    name: n.to_string(),
                    amount: a.to_string(),
                })
                .collect(),
            schedule: "@monthly".into(),
            meter_selector: Default::default(),
            gateway: "edge".into(),
            meter_read_timeout_seconds: 30,
            payment_due_days: 15,
        }
    }

    pub fn residential_spec() -> BillingSpec {
        spec(
            PropertyType::Residential,
            &[(Some(100), "0.12"), (Some(300), "0.18"), (None, "0.25")],
            &[("VAT", "13.5")],
            &[("meter rent", "2.50")],
        )
    }

    pub fn residential() -> Rates {
        Rates::from_spec(&residential_spec()).expect("valid example rates")
    }

    pub fn commercial() -> Rates {
        Rates::from_spec(&spec(
            PropertyType::Commercial,
            &[(Some(500), "0.15"), (None, "0.22")],
            &[("VAT", "13.5"), ("electricity duty", "5")],
            &[("fixed charge", "12.00")],
        ))
        .expect("valid example rates")
    }
}

#[cfg(test)]
mod tests;
