//! Timestamps and durations: microseconds since the Unix epoch, UTC.
//!
//! In human-readable encodings (JSON) a [`Timestamp`] is an ISO 8601 / RFC 3339 string; in
//! binary encodings (bincode) it is the raw `i64` of microseconds.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Microseconds in one second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// A point in time: microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch, the earliest timestamp a point may carry.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The greatest representable timestamp (used as an open upper bound).
    pub const MAX: Timestamp = Timestamp(i64::MAX);
    /// The least representable timestamp (used as an open lower bound).
    pub const MIN: Timestamp = Timestamp(i64::MIN);

    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_micros())
    }

    /// Parses ISO 8601: RFC 3339 with an offset (`2024-01-20T15:30:00Z`,
    /// `2024-01-20T17:30:00+02:00`), or a date-time without offset (read as UTC, `T` or a
    /// space between date and time), or a plain date (midnight UTC). Fractions of a second
    /// are kept to the microsecond.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let parsed = DateTime::parse_from_rfc3339(text)
            .map(|dt| dt.with_timezone(&Utc))
            .or_else(|_| {
                NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc())
            })
            .or_else(|_| {
                NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
            })
            .or_else(|_| {
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
            })
            .map_err(|_| "must be a valid ISO 8601 timestamp".to_string())?;
        Ok(Timestamp(parsed.timestamp_micros()))
    }

    /// RFC 3339 in UTC with the shortest exact fraction (`2024-01-20T15:30:00Z`).
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            None => self.0.to_string(),
        }
    }
}

impl Timestamp {
    /// RFC 3339 in UTC with exactly six fraction digits (`2024-01-20T15:30:00.000000Z`):
    /// every timestamp of a column has the same width and sorts as text.
    pub fn to_rfc3339_micros(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Micros, true),
            None => self.0.to_string(),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_rfc3339())
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Timestamp::parse(&text).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(deserializer).map(Timestamp)
        }
    }
}

/// Parses a duration such as `10s`, `1m`, `5m`, `1h`, `1d`, `1w` into microseconds.
/// The number must be a positive integer; units: `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration_micros(text: &str) -> Result<i64, String> {
    const ERR: &str = "must be a positive duration such as 10s, 1m, 5m, 1h, 1d or 1w";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| ERR.to_string())?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().map_err(|_| ERR.to_string())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(ERR.to_string()),
    };
    if n <= 0 || n > 36_500 * 86_400 / unit_secs {
        return Err(ERR.to_string());
    }
    Ok(n * unit_secs * MICROS_PER_SECOND)
}

/// Formats microseconds as the shortest exact duration string (`90m` stays `90m`, `3600s`
/// becomes `1h`).
pub fn format_duration_micros(micros: i64) -> String {
    let secs = micros / MICROS_PER_SECOND;
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs % size == 0 && secs >= size {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iso8601_forms() {
        let z = Timestamp::parse("2024-01-20T15:30:00Z").unwrap();
        assert_eq!(z.as_micros(), 1_705_764_600 * MICROS_PER_SECOND);
        assert_eq!(Timestamp::parse("2024-01-20T17:30:00+02:00").unwrap(), z);
        assert_eq!(Timestamp::parse("2024-01-20T15:30:00").unwrap(), z);
        assert_eq!(Timestamp::parse("2024-01-20 15:30:00").unwrap(), z);
        assert_eq!(
            Timestamp::parse("2024-01-20T15:30:00.25Z")
                .unwrap()
                .as_micros(),
            z.as_micros() + 250_000
        );
        assert_eq!(
            Timestamp::parse("2024-01-20").unwrap().as_micros(),
            1_705_708_800 * MICROS_PER_SECOND
        );
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-01-20T25:00:00Z",
            "1705764600",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse("2024-01-20T15:30:00.123456Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-20T15:30:00.123456Z");
        assert_eq!(Timestamp::parse(&t.to_rfc3339()).unwrap(), t);
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp::EPOCH.to_rfc3339_micros(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(Timestamp::parse(&t.to_rfc3339_micros()).unwrap(), t);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_micros("1m").unwrap(), 60 * MICROS_PER_SECOND);
        assert_eq!(
            parse_duration_micros("5m").unwrap(),
            300 * MICROS_PER_SECOND
        );
        assert_eq!(
            parse_duration_micros("1h").unwrap(),
            3_600 * MICROS_PER_SECOND
        );
        assert_eq!(
            parse_duration_micros("1d").unwrap(),
            86_400 * MICROS_PER_SECOND
        );
        for bad in ["", "0m", "-1m", "1", "m", "1y", "1.5h", "99999999999999d"] {
            assert!(parse_duration_micros(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration_micros(3_600 * MICROS_PER_SECOND), "1h");
        assert_eq!(format_duration_micros(90 * 60 * MICROS_PER_SECOND), "90m");
        assert_eq!(format_duration_micros(10 * MICROS_PER_SECOND), "10s");
    }
}
