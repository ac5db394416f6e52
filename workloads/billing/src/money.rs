//! Exact money: amounts are `Decimal`s, never floats, and every line of a
//! bill is rounded once, half-up (away from zero at .5), to the currency's
//! minor unit (its ISO 4217 exponent: 2 for EUR, 0 for JPY, 3 for KWD).
//! A bill's total is the sum of its rounded lines, so what a person adds
//! up on the page is the total.

use iso_currency::Currency;
use rust_decimal::{Decimal, RoundingStrategy};

/// The minor-unit exponent of an ISO 4217 code, or why there is none.
pub fn exponent(code: &str) -> Result<u32, String> {
    let c = Currency::from_code(code).ok_or_else(|| format!("{code:?} is not an ISO 4217 currency code"))?;
    Ok(c.exponent().map(u32::from).unwrap_or(0))
}

/// `amount` rounded half-up to `exponent` decimals.
pub fn round(amount: Decimal, exponent: u32) -> Decimal {
    amount.round_dp_with_strategy(exponent, RoundingStrategy::MidpointAwayFromZero)
}

/// `amount` written with exactly `exponent` decimals (`12.5` → `"12.50"`).
pub fn format(amount: Decimal, exponent: u32) -> String {
    let mut r = round(amount, exponent);
    r.rescale(exponent);
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn rounding_is_half_up_to_the_minor_unit() {
        assert_eq!(round(d("2.345"), 2), d("2.35"));
        assert_eq!(round(d("2.344999"), 2), d("2.34"));
        assert_eq!(round(d("0.005"), 2), d("0.01"));
        assert_eq!(round(d("1234.5"), 0), d("1235"));
        assert_eq!(format(d("12.5"), 2), "12.50");
        assert_eq!(format(d("7"), 3), "7.000");
    }

    #[test]
    fn exponents_come_from_iso_4217() {
        assert_eq!(exponent("EUR"), Ok(2));
        assert_eq!(exponent("INR"), Ok(2));
        assert_eq!(exponent("JPY"), Ok(0));
        assert_eq!(exponent("KWD"), Ok(3));
        assert!(exponent("XYZ").unwrap_err().contains("ISO 4217"));
    }

    #[test]
    fn a_float_would_get_these_wrong() {
        // 0.1 + 0.2 and 1.005 · 100 are the classic float errors.
        assert_eq!(d("0.1") + d("0.2"), d("0.3"));
        assert_eq!(round(d("1.005"), 2), d("1.01"));
        assert_ne!((1.005_f64 * 100.0).round() / 100.0, 1.01);
    }
}
