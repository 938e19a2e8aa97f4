//! The parameter forms of the Prometheus HTTP API: times (`time`, `start`, `end`) and
//! durations (`step`, `timeout`), each in either of Prometheus' two spellings.

use crate::error::{PromError, Result};

/// Most steps a range query may evaluate, as in Prometheus.
pub const MAX_STEPS: i64 = 11_000;

/// A time as Unix seconds with an optional fraction (`1700000000.25`, kept to the
/// millisecond, rounded) or RFC 3339 (`2026-12-08T10:00:00.5Z`), in milliseconds since the
/// epoch.
pub fn parse_time(text: &str) -> Result<i64> {
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
        && seconds.abs() < 9.2e15
    {
        let whole = seconds.trunc();
        let fraction = ((seconds - whole) * 1000.0).round();
        return Ok(whole as i64 * 1000 + fraction as i64);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    Err(PromError::bad(format!(
        "cannot parse {text:?} to a valid timestamp"
    )))
}

/// A duration as seconds with an optional fraction (`15`, `0.5`) or Prometheus' duration
/// units in descending order (`90s`, `1h30m`, `5ms`, `1y`: a year is 365 days, a week 7),
/// in milliseconds (a fraction of a millisecond is dropped, as Prometheus' engine does).
pub fn parse_duration(text: &str) -> Result<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        let nanos = seconds * 1e9;
        if !nanos.is_finite() || nanos.abs() >= 9.2e18 {
            return Err(PromError::bad(format!(
                "cannot parse {text:?} to a valid duration. It overflows int64"
            )));
        }
        return Ok(nanos as i64 / 1_000_000);
    }
    units_duration(text)
        .ok_or_else(|| PromError::bad(format!("cannot parse {text:?} to a valid duration")))
}

/// `[0-9]+(y|w|d|h|m|s|ms)` repeated, each unit at most once and in that order, or `0`.
fn units_duration(text: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if text == "0" {
        return Some(0);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut next_unit = 0;
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // "ms" before "m": the longer unit where both would read.
        let (index, unit) = UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, (name, _))| rest.starts_with(name))
            .max_by_key(|(_, (name, _))| name.len())?;
        if unit.0 == "m" && rest.starts_with("ms") {
            return None;
        }
        rest = &rest[unit.0.len()..];
        total = total.checked_add(number.checked_mul(unit.1)?)?;
        next_unit = index + 1;
    }
    Some(total)
}

/// `millis` (at least 1) as a PromQL duration in descending units (`2d3h0m5s`, `1500ms`
/// as `1s500ms`), exact to the millisecond and readable by the parser whatever its size.
pub fn duration_text(millis: i64) -> String {
    let mut rest = millis.max(1);
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

/// The evaluation times of a range query: `start`, `start + step`, ... up to `end`,
/// checked as Prometheus checks them.
pub fn range_steps(start: i64, end: i64, step: i64) -> Result<(i64, i64, i64)> {
    if end < start {
        return Err(PromError::bad(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    if step <= 0 {
        return Err(PromError::bad(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > MAX_STEPS {
        return Err(PromError::bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    Ok((start, end, step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_forms() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1700000000.25").unwrap(), 1_700_000_000_250);
        assert_eq!(parse_time("1700000000.1234").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_time("1e9").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_time("-1.5").unwrap(), -1_500);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00").unwrap(),
            1_700_000_000_500
        );
        let err = parse_time("abc").unwrap_err();
        assert_eq!(err.to_string(), "cannot parse \"abc\" to a valid timestamp");
        assert!(parse_time("NaN").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn durations_in_both_forms() {
        assert_eq!(parse_duration("15").unwrap(), 15_000);
        assert_eq!(parse_duration("0.5").unwrap(), 500);
        assert_eq!(parse_duration("90s").unwrap(), 90_000);
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("5ms").unwrap(), 5);
        assert_eq!(parse_duration("1m5ms").unwrap(), 60_005);
        assert_eq!(parse_duration("1y").unwrap(), 365 * 86_400_000);
        assert_eq!(parse_duration("2w1d").unwrap(), 15 * 86_400_000);
        assert_eq!(parse_duration("0").unwrap(), 0);
        for bad in ["", "1h1h", "30m1h", "1.5h", "h", "1x", "-1h", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_written_as_the_parser_reads_them() {
        for millis in [
            1,
            999,
            1_000,
            1_500,
            90_061_001,
            1_796_000_000_123,
            60 * 86_400_000,
        ] {
            let text = duration_text(millis);
            assert_eq!(parse_duration(&text).unwrap(), millis, "{text}");
            let p = crate::plan::plan(&format!("last_over_time(m[{text}])"), 0, 0).unwrap();
            let f = p.fetches.values().next().unwrap();
            assert_eq!(f.from, -millis, "{text}");
        }
    }

    #[test]
    fn range_steps_are_checked_as_prometheus_checks_them() {
        assert!(range_steps(0, 10, 1).is_ok());
        assert!(
            range_steps(10, 0, 1)
                .unwrap_err()
                .to_string()
                .contains("end timestamp")
        );
        assert!(
            range_steps(0, 10, 0)
                .unwrap_err()
                .to_string()
                .contains("zero or negative")
        );
        assert!(range_steps(0, 11_000, 1).is_ok());
        assert!(
            range_steps(0, 11_001, 1)
                .unwrap_err()
                .to_string()
                .contains("11,000")
        );
    }
}
