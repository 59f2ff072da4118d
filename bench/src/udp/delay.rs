//! Summaries of the UDP suite's samples: round trips and one-way delays as p50 / p99, and the
//! interarrival jitter of RFC 3550 (§6.4.1 and appendix A.8).

use crate::cc::report::quantile;

/// The median and 99th percentile of a set of samples in milliseconds (`None` when empty).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spread {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Spread {
    pub fn of(samples_ms: &[f64]) -> Spread {
        Spread {
            p50: quantile(samples_ms, 0.5),
            p99: quantile(samples_ms, 0.99),
        }
    }

    /// `p50 1.234 ms, p99 5.678 ms`.
    pub fn text(&self) -> String {
        format!("p50 {} ms, p99 {} ms", ms(self.p50), ms(self.p99))
    }

    /// `"p50_ms":…,"p99_ms":…`.
    pub fn json_fields(&self) -> String {
        format!(
            "\"p50_ms\":{},\"p99_ms\":{}",
            json_ms(self.p50),
            json_ms(self.p99)
        )
    }
}

/// RFC 3550's interarrival jitter after the last of `transits` (each datagram's receive time
/// minus its send time, in arrival order; any unit, the result is in the same): the running
/// mean deviation J += (|D| − J) / 16, where D is the change in transit time between two
/// consecutive arrivals. The sender's and the receiver's clocks are one here, so the transit
/// is the one-way delay itself; RFC 3550 needs only the differences.
pub fn jitter(transits: &[f64]) -> f64 {
    transits
        .windows(2)
        .fold(0.0, |j, pair| j + ((pair[1] - pair[0]).abs() - j) / 16.0)
}

/// Milliseconds with three decimals, or `-`.
pub fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.3}"))
}

/// Milliseconds for JSON, or `null`.
pub fn json_ms(value: Option<f64>) -> String {
    value.map_or("null".into(), |v| format!("{v:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_delay_has_no_jitter_whatever_its_size() {
        assert_eq!(jitter(&[10.0; 100]), 0.0);
        assert_eq!(jitter(&[]), 0.0);
        assert_eq!(jitter(&[3.0]), 0.0);
    }

    #[test]
    fn jitter_follows_rfc3550s_running_estimate() {
        // One step of 16: J = 16 / 16 = 1, then it decays by 15/16 per steady arrival.
        assert!((jitter(&[0.0, 16.0]) - 1.0).abs() < 1e-12);
        assert!((jitter(&[0.0, 16.0, 16.0]) - 15.0 / 16.0).abs() < 1e-12);
        // Alternating by 2 converges to 2, from below.
        let alternating: Vec<f64> = (0..400).map(|i| f64::from(i % 2) * 2.0).collect();
        let j = jitter(&alternating);
        assert!(j < 2.0 && j > 1.999, "{j}");
        // Only changes count: a steady rise of 1 per datagram is a jitter of 1.
        let rising: Vec<f64> = (0..400).map(f64::from).collect();
        assert!((jitter(&rising) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn spreads_of_samples_and_of_nothing() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let spread = Spread::of(&samples);
        assert_eq!(spread.p50, Some(51.0));
        assert_eq!(spread.p99, Some(99.0));
        assert_eq!(spread.text(), "p50 51.000 ms, p99 99.000 ms");
        let none = Spread::of(&[]);
        assert_eq!(none.text(), "p50 - ms, p99 - ms");
        assert_eq!(none.json_fields(), "\"p50_ms\":null,\"p99_ms\":null");
    }
}
