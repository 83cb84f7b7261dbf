//! Human durations in config files: `250ms`, `10s`, `2m`, `1h`, and sums such as `1m30s`.
//!
//! A bare number is rejected on purpose: `stop_timeout = 10` could mean seconds or milliseconds,
//! and a config that guesses wrong only shows up when a device hangs at shutdown.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration parsed from a config string; converts into [`std::time::Duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// The longest duration a config may give: a year. Beyond it no timeout or delay means
/// anything on a device, and deadlines (now + duration, doubled backoff delays) stay far
/// from the limits of the clock arithmetic.
pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `"1m30s"`-style text. The error says what was wrong, for the config diagnostic.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (write e.g. \"10s\")".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("bad duration {text:?}: expected a number at {rest:?}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "bad duration {text:?}: missing unit (ms, s, m or h), e.g. \"{number}s\""
                ))
            }
            other => {
                return Err(format!(
                    "bad duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        total = total.saturating_add(part);
    }
    if total > MAX {
        return Err(format!("bad duration {text:?}: longer than the maximum of 8784h (a year)"));
    }
    Ok(total)
}

/// Formats a duration the way the config writes it, for log messages.
pub fn display(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 || ms == 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"10s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "durations need a unit: write \"{v}s\" or \"{v}ms\", not a bare number"
                )))
            }
        }
        deserializer.deserialize_any(DurVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums_parse() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bare_number_is_rejected_with_a_hint() {
        let err = parse("10").unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
        assert!(err.contains("\"10s\""), "{err}");
    }

    #[test]
    fn unknown_unit_and_garbage_are_rejected() {
        assert!(parse("10sec").unwrap_err().contains("unknown unit \"sec\""));
        assert!(parse("s10").unwrap_err().contains("expected a number"));
        assert!(parse("").is_err());
    }

    #[test]
    fn durations_beyond_a_year_are_rejected_so_deadlines_cannot_overflow() {
        assert_eq!(parse("8784h"), Ok(MAX));
        assert!(parse("8785h").unwrap_err().contains("longer than the maximum"));
        // What once panicked PID 1 at the first doubled backoff or stop deadline.
        assert!(parse("9300000000000000000s").unwrap_err().contains("longer than the maximum"));
        assert!(parse("10000000000000000000s").unwrap_err().contains("longer than the maximum"));
    }

    #[test]
    fn display_round_trips_common_values() {
        assert_eq!(display(Duration::from_millis(1500)), "1500ms");
        assert_eq!(display(Duration::from_secs(30)), "30s");
    }
}
