//! Human-sized durations (`30s`, `5m`, `1h`, `2d`) and sizes (`64M`, `1G`), parsed and printed.
//!
//! One grammar is shared by the trust policy (`max_lifetime`, `clock_skew`), the `calyx lease
//! issue` flags (`--ttl`, `--timeout`, `--memory`) and the refusal messages, so what a person
//! writes is what they later read back.

use thiserror::Error;

/// A duration or size string that does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    /// Nothing, or only a unit, was given.
    #[error("empty {what}: expected a number with a unit, e.g. {example}")]
    Empty {
        /// "duration" or "size".
        what: &'static str,
        /// An example of a valid value.
        example: &'static str,
    },
    /// The number part is not a whole number, or the unit is unknown.
    #[error("invalid {what} {text:?}: expected a whole number with a unit, e.g. {example}")]
    Invalid {
        /// "duration" or "size".
        what: &'static str,
        /// The offending text.
        text: String,
        /// An example of a valid value.
        example: &'static str,
    },
    /// The value does not fit in 64 bits.
    #[error("{what} {text:?} is too large")]
    Overflow {
        /// "duration" or "size".
        what: &'static str,
        /// The offending text.
        text: String,
    },
}

/// Splits `"30m"` into `(30, "m")`.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Parses a duration in whole seconds: `90s`, `30m`, `1h`, `2d`, `1w`, or a bare number of
/// seconds. Compound forms (`1h30m`) are accepted so printed values parse back.
pub fn parse_duration_secs(text: &str) -> Result<u64, UnitError> {
    const EXAMPLE: &str = "30s, 5m, 1h or 2d";
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty {
            what: "duration",
            example: EXAMPLE,
        });
    }
    let invalid = || UnitError::Invalid {
        what: "duration",
        text: text.to_owned(),
        example: EXAMPLE,
    };
    let overflow = || UnitError::Overflow {
        what: "duration",
        text: text.to_owned(),
    };
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (digits, after) = split_number(rest);
        if digits.is_empty() {
            return Err(invalid());
        }
        let n: u64 = digits.parse().map_err(|_| overflow())?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = match unit {
            "" if next.is_empty() && total == 0 => 1,
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(invalid()),
        };
        let part = n.checked_mul(scale).ok_or_else(overflow)?;
        total = total.checked_add(part).ok_or_else(overflow)?;
        rest = next;
    }
    Ok(total)
}

/// Prints whole seconds compactly with at most two units: `45s`, `3m`, `3m12s`, `2h`, `48h`,
/// `2h5m`, `10d`. Days are used from three days up, so policy limits such as `48h` read as
/// written.
pub fn format_duration_secs(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hours, rem) = (rem / 3_600, rem % 3_600);
    let (mins, s) = (rem / 60, rem % 60);
    if secs >= 3 * 86_400 {
        return if hours == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{hours}h")
        };
    }
    let hours = hours + days * 24;
    match (hours, mins, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Parses a size in bytes: `512`, `64K`, `64M`, `1G`, `2T` (binary multiples; `KiB`, `MiB`,
/// `GiB`, `TiB` and a trailing `B` are accepted too).
pub fn parse_size_bytes(text: &str) -> Result<u64, UnitError> {
    const EXAMPLE: &str = "512K, 64M or 1G";
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty {
            what: "size",
            example: EXAMPLE,
        });
    }
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(UnitError::Invalid {
            what: "size",
            text: text.to_owned(),
            example: EXAMPLE,
        });
    }
    let shift = match unit {
        "" | "B" => 0,
        "K" | "k" | "KB" | "KiB" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        "T" | "TB" | "TiB" => 40,
        _ => {
            return Err(UnitError::Invalid {
                what: "size",
                text: text.to_owned(),
                example: EXAMPLE,
            });
        }
    };
    let overflow = || UnitError::Overflow {
        what: "size",
        text: text.to_owned(),
    };
    let n: u64 = digits.parse().map_err(|_| overflow())?;
    n.checked_mul(1u64 << shift).ok_or_else(overflow)
}

/// Prints a byte count with the largest binary unit that divides it exactly (`64M`, `1536K`).
pub fn format_size_bytes(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_a_table() {
        for (text, secs) in [
            ("45", 45),
            ("45s", 45),
            ("30m", 1_800),
            ("1h", 3_600),
            ("2d", 172_800),
            ("1w", 604_800),
            ("1h30m", 5_400),
            ("3m12s", 192),
        ] {
            assert_eq!(parse_duration_secs(text), Ok(secs), "{text}");
        }
        for bad in [
            "",
            "h",
            "1x",
            "1.5h",
            "-1h",
            "1h 2m",
            "99999999999999999999s",
        ] {
            assert!(
                parse_duration_secs(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
        assert!(matches!(
            parse_duration_secs("9999999999999999999w"),
            Err(UnitError::Overflow { .. })
        ));
    }

    #[test]
    fn durations_print_and_parse_back() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (180, "3m"),
            (192, "3m12s"),
            (7_200, "2h"),
            (172_800, "48h"),
            (7_500, "2h5m"),
            (864_000, "10d"),
            (266_400, "3d2h"),
        ] {
            assert_eq!(format_duration_secs(secs), text);
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes) in [
            ("512", 512),
            ("64K", 65_536),
            ("64M", 67_108_864),
            ("1G", 1_073_741_824),
            ("1GiB", 1_073_741_824),
            ("2T", 2_199_023_255_552),
        ] {
            assert_eq!(parse_size_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "M", "1.5G", "12Q", "-1K"] {
            assert!(parse_size_bytes(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(format_size_bytes(67_108_864), "64M");
        assert_eq!(format_size_bytes(1_572_864), "1536K");
        assert_eq!(format_size_bytes(100), "100B");
    }
}
