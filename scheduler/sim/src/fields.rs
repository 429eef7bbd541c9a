//! Field types shared by the scenario and workload files: Kubernetes quantities and
//! durations, accepted as YAML strings or numbers and parsed once, when the file is
//! read, so a bad value is reported with the file's line and column.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use drover_core::quantity;

/// Accepts a string or a number and hands its text to `parse`.
struct TextVisitor<F> {
    what: &'static str,
    parse: F,
}

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for TextVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

fn text<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_any(TextVisitor { what, parse })
}

/// CPU in millicores, written as a Kubernetes quantity (`500m`, `2`, `0.5`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu(pub i64);

/// A byte count, written as a Kubernetes quantity (`512Mi`, `64Gi`, `1e9`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub i64);

/// A whole count of devices (`8`), written as a Kubernetes quantity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count(pub i64);

/// A span of time in milliseconds, written as `1h30m`, `45m`, `90s`, `1.5h`, `250ms`,
/// `1d`, or a plain number of seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Millis(pub i64);

/// Parses a CPU quantity into millicores, refusing negative values.
pub fn parse_cpu(s: &str) -> Result<i64, String> {
    quantity::parse_resource("cpu", s).map_err(|e| e.to_string())
}

/// Parses a byte quantity, refusing negative values.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    quantity::parse_resource("memory", s).map_err(|e| e.to_string())
}

/// Parses a device count: a non-negative whole number.
pub fn parse_count(s: &str) -> Result<i64, String> {
    let v = quantity::parse_resource("nvidia.com/gpu", s).map_err(|e| e.to_string())?;
    // parse_units rounds fractions up; a device count must be whole.
    if s.trim().contains('.') || s.trim().ends_with('m') {
        return Err(format!(
            "{s:?} is not a whole number of devices: write 1, 2, 8, ..."
        ));
    }
    Ok(v)
}

/// Parses a duration (see [`Millis`]) into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "malformed duration {s:?}: write a number of seconds or a span such as 90s, 45m, 1h30m, 2.5h, 1d"
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("duration {s:?} must be zero or positive"));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(n_end);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let u_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(u_end);
        let ms = match unit {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        total += value * ms;
        rest = next;
    }
    if !total.is_finite() || total > 1e15 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(total.round() as i64)
}

/// Formats milliseconds as a duration the parser reads back (`1h30m`, `45s`, `250ms`).
pub fn format_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d, "a CPU quantity such as 500m or 2", parse_cpu).map(Cpu)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d, "a memory quantity such as 512Mi or 64Gi", parse_bytes).map(Bytes)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d, "a whole number of devices", parse_count).map(Count)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d, "a duration such as 90s, 45m or 1h30m", parse_duration).map(Millis)
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&quantity::format_cpu(self.0))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&quantity::format_bytes(self.0))
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_table() {
        let ok = [
            ("90", 90_000),
            ("1.5", 1_500),
            ("90s", 90_000),
            ("45m", 2_700_000),
            ("1h30m", 5_400_000),
            ("2.5h", 9_000_000),
            ("1d", 86_400_000),
            ("250ms", 250),
            ("1h0m5s", 3_605_000),
            (" 10m ", 600_000),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(want), "{s:?}");
        }
        for s in ["", "h", "1x", "1h-5m", "-5", "1.2.3h", "m5"] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        for ms in [0, 250, 90_000, 5_400_000, 3_605_250, 86_400_000] {
            assert_eq!(parse_duration(&format_duration(ms)), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn quantity_fields() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_bytes("4Gi"), Ok(4 << 30));
        assert_eq!(parse_count("8"), Ok(8));
        assert!(parse_count("0.5").is_err());
        assert!(parse_count("500m").is_err());
        assert!(parse_cpu("-1").is_err());
        assert!(parse_bytes("4GB").is_err());
    }
}
