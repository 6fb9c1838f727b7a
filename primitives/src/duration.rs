//! Durations as Istio, the Gateway API and Kubernetes write them: Go's `time.ParseDuration` syntax without a
//! sign (`30s`, `1.5s`, `500ms`, `1h30m`). One grammar for every config file and every API object.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected a number followed by a unit (h, m, s, ms, us, ns), e.g. \"1.5s\"")]
    Syntax(String),
    #[error("invalid duration {0:?}: unknown unit {1:?} (use h, m, s, ms, us or ns)")]
    Unit(String, String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parse a duration as Istio and the Gateway API write them: Go `time.ParseDuration` syntax without a sign,
/// e.g. `30s`, `1.5s`, `500ms`, `1m`, `1h`, `1h30m`. A bare `0` is accepted, as in Go.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let syntax = || DurationError::Syntax(text.to_string());
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            "" => return Err(syntax()),
            other => return Err(DurationError::Unit(text.to_string(), other.to_string())),
        };
        // Split "1.5" into integer and fraction by hand so "0.1s" is exact (no float rounding).
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(syntax());
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| syntax())?
        };
        let mut frac_nanos: u128 = 0;
        let mut div = scale;
        for digit in frac_part.chars() {
            div /= 10;
            let d = digit.to_digit(10).ok_or_else(syntax)?;
            frac_nanos += u128::from(d) * div;
        }
        total_nanos = int
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total_nanos))
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(text.to_string()))?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000)
        .expect("remainder of a division by 1e9 fits in u32");
    Ok(Duration::new(secs, nanos))
}

/// The shortest exact form that [`parse`] reads back to the same value: `30s`, `250ms` or `1500us`/`ns`.
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_millis() * 1_000_000 == d.subsec_nanos() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// `#[serde(with = "mesh_primitives::duration")]` for a `Duration` field written as text.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s: String = serde::Deserialize::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_grammar() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("1.5us").unwrap(), Duration::from_nanos(1500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        for bad in ["5", "5d", "", "-1s", "1.2.3s", "s", ".s", "5 minutes"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse("5d"), Err(DurationError::Unit(..))));
        assert!(matches!(
            parse("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn format_reads_back() {
        for d in [
            Duration::from_secs(30),
            Duration::from_millis(1250),
            Duration::from_nanos(1500),
            Duration::ZERO,
        ] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
        assert_eq!(format(Duration::from_secs(5400)), "5400s");
    }
}
