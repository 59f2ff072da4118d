//! Parsers for the link emulator's command-line values: durations (`20ms`), bit rates
//! (`100mbit`) and percentages (`1%`).
//!
//! Units are required (except for a bare `0`) so that a value can never be read in the wrong
//! unit: `20` could be seconds or milliseconds, `100m` could be bits or bytes.

use std::time::Duration;

/// Parses a duration such as `20ms`, `1.5s`, `250us` (or `250µs`), `800ns` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let (number, unit) = split_number(text)?;
    let nanos_per_unit = match unit.to_ascii_lowercase().as_str() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => {
            return Err(format!(
                "duration {text:?}: unit must be one of ns, us, ms, s (e.g. 20ms)"
            ));
        }
    };
    let nanos = number * nanos_per_unit;
    if nanos > u64::MAX as f64 {
        return Err(format!("duration {text:?} is too large"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// Parses a bit rate such as `100mbit`, `1.5gbit`, `64kbit`, `9600bit` (a `/s` suffix is
/// allowed). SI prefixes: `kbit` is 1000 bit/s. `0` and `unlimited` mean no rate limit (`None`).
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text == "0" || text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let (number, unit) = split_number(text)?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit.strip_suffix("/s").unwrap_or(&unit);
    let bits_per_unit = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => {
            return Err(format!(
                "rate {text:?}: unit must be one of bit, kbit, mbit, gbit (e.g. 100mbit)"
            ));
        }
    };
    let bits = (number * bits_per_unit).round();
    if bits < 1.0 || bits > u64::MAX as f64 {
        return Err(format!(
            "rate {text:?} is out of range (use 0 or unlimited for no limit)"
        ));
    }
    Ok(Some(bits as u64))
}

/// Parses a percentage such as `1%` or `0.5%` into a probability in `0.0..=1.0`; `0` is allowed.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0.0);
    }
    let Some(number) = text.strip_suffix('%') else {
        return Err(format!("percentage {text:?} must end with % (e.g. 1%)"));
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("percentage {text:?} is not a number"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("percentage {text:?} must be between 0% and 100%"));
    }
    Ok(value / 100.0)
}

/// Formats a bit rate the way `parse_rate` reads it back, for messages and reports.
pub fn format_rate(rate_bps: Option<u64>) -> String {
    match rate_bps {
        None => "unlimited".to_string(),
        Some(bps) if bps % 1_000_000_000 == 0 => format!("{}gbit", bps / 1_000_000_000),
        Some(bps) if bps % 1_000_000 == 0 => format!("{}mbit", bps / 1_000_000),
        Some(bps) if bps % 1_000 == 0 => format!("{}kbit", bps / 1_000),
        Some(bps) => format!("{bps}bit"),
    }
}

/// Splits `12.5ms` into `(12.5, "ms")`, refusing negative, missing or non-finite numbers.
fn split_number(text: &str) -> Result<(f64, &str), String> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} must start with a non-negative number"))?;
    if !value.is_finite() {
        return Err(format!("{text:?} is not a finite number"));
    }
    if unit.is_empty() {
        return Err(format!("{text:?} needs a unit"));
    }
    Ok((value, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("800ns"), Ok(Duration::from_nanos(800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 5 MS "), Ok(Duration::from_millis(5)));
    }

    #[test]
    fn durations_refuse_missing_or_unknown_units() {
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("20min").is_err());
        assert!(parse_duration("-5ms").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn rates_use_si_prefixes() {
        assert_eq!(parse_rate("100mbit"), Ok(Some(100_000_000)));
        assert_eq!(parse_rate("1.5gbit"), Ok(Some(1_500_000_000)));
        assert_eq!(parse_rate("64kbit/s"), Ok(Some(64_000)));
        assert_eq!(parse_rate("9600bit"), Ok(Some(9600)));
        assert_eq!(parse_rate("100Mbit"), Ok(Some(100_000_000)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("unlimited"), Ok(None));
    }

    #[test]
    fn rates_refuse_ambiguous_units() {
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("100mbps").is_err());
        assert!(parse_rate("100m").is_err());
        assert!(parse_rate("0.1bit").is_err());
    }

    #[test]
    fn rates_format_back_to_what_they_parse_from() {
        for text in ["100mbit", "1gbit", "64kbit", "9601bit", "unlimited"] {
            let rate = parse_rate(text).expect("valid rate");
            assert_eq!(format_rate(rate), text);
        }
    }

    #[test]
    fn percentages_become_probabilities() {
        assert_eq!(parse_percent("1%"), Ok(0.01));
        assert_eq!(parse_percent("0.5%"), Ok(0.005));
        assert_eq!(parse_percent("100%"), Ok(1.0));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert!(parse_percent("1").is_err());
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("abc%").is_err());
    }
}
