//! Golden bills, computed by hand (the arithmetic is in the comments).

use super::*;
use fleetward_tariff::Slab;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

use super::examples::{commercial, residential};

fn spec(property_type: PropertyType, slabs: &[(Option<i64>, &str)]) -> BillingSpec {
    let mut s = super::examples::residential_spec();
    s.property_type = property_type;
    s.slabs = slabs
        .iter()
        .map(|(b, p)| Slab {
            up_to_units: *b,
            price_per_unit: p.to_string(),
        })
        .collect();
    s
}

fn amounts(lines: &[Line]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| (l.description.clone(), l.amount.to_string()))
        .collect()
}

const NOV: Period = Period { year: 2026, month: 11 };

#[test]
fn residential_exactly_on_a_slab_boundary() {
    // 100 kWh: all in the first slab, 100 · 0.12 = 12.00; rent 2.50;
    // VAT 13.5% of 14.50 = 1.9575 → 1.96; total 16.46.
    let (lines, total) = charge(&residential(), d("100"), Share::whole(NOV));
    assert_eq!(
        amounts(&lines),
        [
            ("Energy 0–100 kWh".into(), "12.00".into()),
            ("meter rent".into(), "2.50".into()),
            ("VAT 13.5%".into(), "1.96".into()),
        ]
    );
    assert_eq!(total, d("16.46"));
}

#[test]
fn residential_zero_consumption_pays_the_fixed_charges() {
    // rent 2.50; VAT 0.3375 → 0.34; total 2.84.
    let (lines, total) = charge(&residential(), Decimal::ZERO, Share::whole(NOV));
    assert_eq!(lines.iter().filter(|l| l.kind == LineKind::Energy).count(), 0);
    assert_eq!(total, d("2.84"));
}

#[test]
fn residential_over_three_slabs() {
    // 437.5 kWh: 100 · 0.12 = 12.00; 200 · 0.18 = 36.00;
    // 137.5 · 0.25 = 34.375 → 34.38; rent 2.50; base 84.88;
    // VAT 84.88 · 0.135 = 11.4588 → 11.46; total 96.34.
    let (lines, total) = charge(&residential(), d("437.5"), Share::whole(NOV));
    assert_eq!(
        amounts(&lines),
        [
            ("Energy 0–100 kWh".into(), "12.00".into()),
            ("Energy 100–300 kWh".into(), "36.00".into()),
            ("Energy above 300 kWh".into(), "34.38".into()),
            ("meter rent".into(), "2.50".into()),
            ("VAT 13.5%".into(), "11.46".into()),
        ]
    );
    assert_eq!(lines[2].quantity, Some(d("137.5")));
    assert_eq!(total, d("96.34"));
}

#[test]
fn commercial_multi_slab_with_two_taxes() {
    // 1234.567 kWh: 500 · 0.15 = 75.00; 734.567 · 0.22 = 161.60474 → 161.60;
    // fixed 12.00; base 248.60; VAT 33.561 → 33.56; duty 12.43;
    // total 294.59.
    let (lines, total) = charge(&commercial(), d("1234.567"), Share::whole(NOV));
    assert_eq!(
        amounts(&lines),
        [
            ("Energy 0–500 kWh".into(), "75.00".into()),
            ("Energy above 500 kWh".into(), "161.60".into()),
            ("fixed charge".into(), "12.00".into()),
            ("VAT 13.5%".into(), "33.56".into()),
            ("electricity duty 5%".into(), "12.43".into()),
        ]
    );
    assert_eq!(total, d("294.59"));
}

#[test]
fn commercial_on_its_boundary() {
    // 500 kWh: 75.00 + 12.00 = 87.00; VAT 11.745 → 11.75; duty 4.35; 103.10.
    let (_, total) = charge(&commercial(), d("500"), Share::whole(NOV));
    assert_eq!(total, d("103.10"));
}

#[test]
fn a_part_month_prorates_fixed_charges_only() {
    // 12 of 30 days: rent 2.50 · 12/30 = 1.00; 150 kWh = 12.00 + 9.00;
    // base 22.00; VAT 2.97; total 24.97.
    let (lines, total) = charge(&residential(), d("150"), Share { days: 12, of: 30 });
    assert_eq!(lines[2].description, "meter rent (12 of 30 days)");
    assert_eq!(lines[2].amount, d("1.00"));
    assert_eq!(total, d("24.97"));
}

#[test]
fn totals_are_the_sum_of_rounded_lines() {
    let r = residential();
    for tenths in (0..20_000).step_by(37) {
        let (lines, total) = charge(&r, Decimal::new(tenths, 1), Share::whole(NOV));
        assert_eq!(total, lines.iter().map(|l| l.amount).sum::<Decimal>());
        assert!(lines.iter().all(|l| l.amount.scale() <= 2));
    }
}

#[test]
fn bad_rates_are_refused_with_the_field_named() {
    let mut s = spec(PropertyType::Residential, &[(Some(100), "0.12")]);
    s.slabs[0].price_per_unit = "0,12".into();
    assert!(Rates::from_spec(&s).unwrap_err().contains("slabs[0].pricePerUnit"));
    let mut s = spec(PropertyType::Residential, &[(None, "0.1"), (Some(5), "0.2")]);
    assert!(Rates::from_spec(&s).unwrap_err().contains("not the last"));
    s.slabs.clear();
    assert!(Rates::from_spec(&s).is_err());
    let mut s = spec(PropertyType::Residential, &[(None, "0.1")]);
    s.currency = "EURO".into();
    assert!(Rates::from_spec(&s).unwrap_err().contains("ISO 4217"));
}

#[test]
fn consumption_skips_resets_and_flags_them() {
    let r = |xs: &[&str]| consumption(xs.iter().map(|x| d(x)));
    assert_eq!(r(&["10", "12.5", "20"]), (d("10"), 0));
    // A reset to 0 after 20: the drop is not billed, what follows is.
    assert_eq!(r(&["10", "20", "0", "3"]), (d("13"), 1));
    assert_eq!(r(&["7"]), (Decimal::ZERO, 0));
    assert_eq!(r(&[]), (Decimal::ZERO, 0));
}

#[test]
fn periods_parse_strictly() {
    assert_eq!(Period::parse("2026-02").unwrap().days(), 28);
    assert_eq!(Period::parse("2028-02").unwrap().days(), 29);
    for bad in ["2026-13", "2026-1", "26-01", "2026/01", "", "2026-00", "abcd-ef"] {
        assert!(Period::parse(bad).unwrap_err().contains("YYYY-MM"), "{bad}");
    }
    let jan = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(Period::previous(jan).to_string(), "2026-12");
    assert_eq!(NOV.end(), Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
}

#[test]
fn a_tenant_change_mid_month_splits_the_period() {
    let t = |a: &str, from: NaiveDate, to: Option<NaiveDate>| Tenancy {
        account: a.into(),
        starts_on: from,
        ends_on: to,
    };
    // Alice leaves on the 16th, Bob moves in on the 20th: the owner holds
    // the gap.
    let got = parts(
        NOV,
        "owner",
        &[
            t("alice", NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(), Some(day(16))),
            t("bob", day(20), None),
        ],
    );
    let want = [("alice", 1, 16), ("owner", 16, 20), ("bob", 20, 31)];
    assert_eq!(got.len(), 3);
    for (p, (a, f, to)) in got.iter().zip(want) {
        assert_eq!(p.account, a);
        assert_eq!(p.from, day(f));
        let to = if to == 31 { NOV.next_first_day() } else { day(to) };
        assert_eq!(p.to, to);
    }
    assert_eq!(got.iter().map(Part::days).sum::<i64>(), 30);
    // No tenancy: the owner's whole month.
    assert_eq!(parts(NOV, "owner", &[]).len(), 1);
    // A tenancy outside the month changes nothing.
    assert_eq!(
        parts(NOV, "o", &[t("x", day(1) - chrono::Days::new(40), Some(day(1)))])[0].account,
        "o"
    );
}
