//! Kubernetes `Quantity` strings parsed once, at ingest, into integers.
//!
//! CPU becomes millicores, everything else becomes a count of base units (bytes for
//! memory). Fractions round up, as `resource.Quantity.MilliValue()`/`Value()` do, so a
//! request is never undercounted.

use thiserror::Error;

/// A quantity that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    /// The string is empty.
    #[error("empty quantity")]
    Empty,
    /// The string is not of the form `<number><suffix>`.
    #[error(
        "malformed quantity {0:?}: expected a number with an optional suffix such as 500m, 2, 4Gi or 1e3"
    )]
    Malformed(String),
    /// The suffix is not one Kubernetes knows.
    #[error("unknown suffix in quantity {0:?}: use one of n u m k M G T P E Ki Mi Gi Ti Pi Ei")]
    UnknownSuffix(String),
    /// The value does not fit in 63 bits.
    #[error("quantity {0:?} is out of range")]
    OutOfRange(String),
    /// The value is negative where only non-negative values make sense.
    #[error("quantity {0:?} is negative")]
    Negative(String),
}

/// Parses `s` and returns `value * 10^scale`, rounded up towards +infinity.
/// `scale` is 3 for millicores and 0 for plain units.
fn parse_scaled(s: &str, scale: i32) -> Result<i64, QuantityError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(QuantityError::Malformed(s.to_string()));
    }
    // Binary suffixes multiply by 2^(10k); decimal ones shift the decimal exponent.
    let (mut exp10, mul2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        x if x.starts_with(['e', 'E']) => {
            let e: i32 = x[1..]
                .parse()
                .map_err(|_| QuantityError::Malformed(s.to_string()))?;
            (e, 0)
        }
        _ => return Err(QuantityError::UnknownSuffix(s.to_string())),
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    exp10 += scale - frac_part.len() as i32;
    let overflow = || QuantityError::OutOfRange(s.to_string());
    if digits.len() > 36 {
        return Err(overflow());
    }
    let mut v: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| overflow())?
    };
    v = v.checked_mul(1i128 << mul2).ok_or_else(overflow)?;
    if exp10 >= 0 {
        for _ in 0..exp10 {
            v = v.checked_mul(10).ok_or_else(overflow)?;
        }
    } else {
        let mut div: i128 = 1;
        for _ in 0..(-exp10) {
            div = match div.checked_mul(10) {
                Some(d) => d,
                None => {
                    // Divisor larger than any value: the result rounds up to 0 or 1.
                    v = i128::from(v > 0);
                    div = 1;
                    break;
                }
            };
        }
        v = (v + div - 1) / div;
    }
    if neg {
        v = -v;
    }
    i64::try_from(v).map_err(|_| overflow())
}

/// Parses a CPU quantity into millicores (`"500m"` → 500, `"2"` → 2000).
pub fn parse_cpu_millis(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 3)
}

/// Parses a quantity into whole base units (`"4Gi"` → 4294967296, `"1"` → 1).
pub fn parse_units(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 0)
}

/// Parses a non-negative quantity for the named resource: CPU in millicores, anything
/// else in base units.
pub fn parse_resource(resource: &str, s: &str) -> Result<i64, QuantityError> {
    let v = if resource == "cpu" {
        parse_cpu_millis(s)?
    } else {
        parse_units(s)?
    };
    if v < 0 {
        return Err(QuantityError::Negative(s.to_string()));
    }
    Ok(v)
}

/// Formats a byte count the way people read memory sizes (`4Gi`, `512Mi`, `1500`).
pub fn format_bytes(v: i64) -> String {
    const UNITS: [(&str, i64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if v != 0 && v % size == 0 {
            return format!("{}{suffix}", v / size);
        }
    }
    for (suffix, size) in UNITS {
        if v.abs() >= size {
            return format!("{:.1}{suffix}", v as f64 / size as f64);
        }
    }
    v.to_string()
}

/// Formats an amount of `kind` as a valid Kubernetes quantity (`2`, `1500m`, `4Gi`,
/// `1536Mi`, `12345`).
pub fn format_quantity(kind: &crate::model::ResourceKind, v: i64) -> String {
    use crate::model::ResourceKind;
    match kind {
        ResourceKind::Cpu => format_cpu(v),
        ResourceKind::Memory | ResourceKind::EphemeralStorage => {
            for (suffix, size) in [
                ("Ti", 1i64 << 40),
                ("Gi", 1 << 30),
                ("Mi", 1 << 20),
                ("Ki", 1 << 10),
            ] {
                if v != 0 && v % size == 0 {
                    return format!("{}{suffix}", v / size);
                }
            }
            v.to_string()
        }
        _ => v.to_string(),
    }
}

/// Formats millicores (`1500` → `1500m`, `2000` → `2`).
pub fn format_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_table() {
        let cases = [
            ("500m", 500),
            ("1", 1000),
            ("2.5", 2500),
            ("0.1", 100),
            ("100u", 1),
            ("1n", 1),
            ("0", 0),
            ("1k", 1_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("+3", 3000),
            ("-1", -1000),
            (" 250m ", 250),
            (".5", 500),
        ];
        for (s, want) in cases {
            assert_eq!(parse_cpu_millis(s), Ok(want), "parse_cpu_millis({s:?})");
        }
    }

    #[test]
    fn unit_table() {
        let cases = [
            ("4Gi", 4 << 30),
            ("512Mi", 512 << 20),
            ("1Ki", 1024),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("123Mi", 123 << 20),
            ("8", 8),
            ("1m", 1),
            ("1Ei", 1 << 60),
            ("0.5", 1),
        ];
        for (s, want) in cases {
            assert_eq!(parse_units(s), Ok(want), "parse_units({s:?})");
        }
    }

    #[test]
    fn errors_table() {
        assert_eq!(parse_units(""), Err(QuantityError::Empty));
        assert!(matches!(
            parse_units("abc"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_units("1.2.3"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_units("4GB"),
            Err(QuantityError::UnknownSuffix(_))
        ));
        assert!(matches!(
            parse_units("4gi"),
            Err(QuantityError::UnknownSuffix(_))
        ));
        assert!(matches!(
            parse_units("16Ei"),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_units("1e40"),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_resource("memory", "-1Gi"),
            Err(QuantityError::Negative(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        assert_eq!(format_bytes(4 << 30), "4Gi");
        assert_eq!(format_bytes(1500), "1.5Ki");
        assert_eq!(format_bytes(7), "7");
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_cpu(2000), "2");
        for s in ["4Gi", "512Mi", "3Ki"] {
            assert_eq!(format_bytes(parse_units(s).unwrap()), s);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = parse_units(&s);
            let _ = parse_cpu_millis(&s);
        }

        #[test]
        fn integers_round_trip(v in 0i64..1_000_000_000_000) {
            proptest::prop_assert_eq!(parse_units(&v.to_string()), Ok(v));
            proptest::prop_assert_eq!(parse_cpu_millis(&format!("{v}m")), Ok(v));
        }
    }
}
