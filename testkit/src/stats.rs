//! Summaries of measured samples for the benches and timing tests.

/// The `p`th percentile (0 < `p` ≤ 100) of `samples` by nearest rank: the
/// smallest sample with at least `p` % of all samples at or below it. It is
/// always one of the samples, never an interpolation. Sorts `samples`;
/// panics on none (a bench that measured nothing has nothing to report).
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    assert!(!samples.is_empty(), "no samples");
    assert!(p > 0.0 && p <= 100.0, "percentile {p} outside (0, 100]");
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    samples[rank.min(samples.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_of_one_to_a_hundred() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut v, 0.5), 1.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
    }

    #[test]
    fn always_a_sample_rounding_up() {
        // Four samples: p50 is the 2nd, p51 the 3rd, p99 the 4th.
        let mut v = [40.0, 10.0, 30.0, 20.0];
        assert_eq!(percentile(&mut v, 50.0), 20.0);
        assert_eq!(percentile(&mut v, 51.0), 30.0);
        assert_eq!(percentile(&mut v, 99.0), 40.0);
        assert_eq!(percentile(&mut v, 25.0), 10.0);
    }

    #[test]
    #[should_panic(expected = "no samples")]
    fn no_samples_is_an_error() {
        percentile(&mut [], 50.0);
    }
}
