//! The InfluxDB line protocol: inserts from Telegraf and the InfluxDB client libraries.
//!
//! One line `measurement[,tag=value...] field=value[,field=value...] [timestamp]` becomes one
//! [`Point`] per field. Everything here is pure (bytes in, points or an error out); the
//! points then pass [`validate_batch`] like every other insert ([`decode_records`] does both
//! and names the line of every error).
//!
//! # Mapping
//!
//! - **Metric name**: `<measurement><separator><field>`, the separator `_` by default, for
//!   every field, `value` included (`cpu,host=a usage_idle=3` → `cpu_usage_idle`,
//!   `temp value=20` → `temp_value`). This is VictoriaMetrics' default rule; its exception
//!   for an empty measurement cannot arise here, since the protocol requires a measurement
//!   and an empty one is a syntax error. The name must then pass the model's rule
//!   `^[a-zA-Z0-9_.-]{1,255}$`.
//! - **Tags**: the line's tags, on every point of the line. A tag key given twice on one line
//!   is refused, and so is a field key given twice (two values for one series and instant).
//! - **Values**: floats (`1.5`, `-2`, `1e3`, `.5`), integers (`12i`, signed 64-bit),
//!   unsigned integers (`12u`, 64-bit) and booleans (`t`, `T`, `true`, `True`, `TRUE` as
//!   1.0; `f`, `F`, `false`, `False`, `FALSE` as 0.0). Integers are converted to the nearest
//!   `f64`: beyond 2^53 in magnitude that is not always the integer itself. An integer out
//!   of its 64-bit range, a float that overflows `f64`, and `NaN` or `inf` are refused: a
//!   stored value is always a finite number.
//! - **String fields** (`f="text"`) refuse the whole request, naming the line and the field:
//!   this is a store of numbers, and a string field is a mistake worth hearing about rather
//!   than something to drop in silence.
//! - **Timestamp**: an integer in the request's [`Precision`] (nanoseconds unless told),
//!   converted to microseconds. Nanoseconds are divided rounding toward negative infinity, so
//!   an instant lands in the microsecond that holds it (for the non-negative timestamps a
//!   store accepts this is plain truncation). One that does not fit in microseconds as an
//!   `i64` is refused. A line without one gets [`LineProtocolOptions::default_time`], the
//!   server's time of receipt.
//!
//! # Syntax
//!
//! As the InfluxDB line protocol reference gives it:
//!
//! | element | ends at | escapes with `\` |
//! |---|---|---|
//! | measurement | `,` or space | comma, space |
//! | tag key | `=` | comma, equals sign, space |
//! | tag value | `,` or space | comma, equals sign, space |
//! | field key | `=` | comma, equals sign, space |
//! | string field value | `"` | double quote, backslash |
//!
//! `\\` is one backslash everywhere; a backslash before any other character is a literal
//! backslash (`a\b` is `a\b`), and one that ends the line escapes nothing and is refused. An
//! unescaped `=` in a tag value or a measurement is literal. Lines end at every `\n` (the
//! protocol supports no newline inside a value), a `\r` before it is dropped, spaces and tabs
//! at either end of a line are ignored, one or more spaces separate the tag set, field set
//! and timestamp, and blank lines and lines whose first character is `#` (after any
//! leading spaces) are skipped. Text must be UTF-8.
//!
//! # Errors and bounds
//!
//! One bad line refuses the whole request: nothing is stored. Every error is a
//! [`FieldError`] named `line N` (1-based, counting every line of the body, blank and
//! comment lines included) saying what is wrong (`line 3: field "x" has a string value; only
//! numbers and booleans are stored`); up to 100 bad lines are listed. Errors about the body
//! as a whole are named `body`. A body may hold at most
//! [`max_lines`](LineProtocolOptions::max_lines) lines with fields and yield at most
//! [`max_points`](LineProtocolOptions::max_points) points; a line may be at most
//! [`MAX_LINE_BYTES`] long and carry at most [`max_tags`](LineProtocolOptions::max_tags)
//! tags. The body's own size is bounded by the HTTP layer; [`gunzip_bounded`] bounds what a
//! `Content-Encoding: gzip` body may inflate to.
//!
//! # Why a parser of our own
//!
//! The `influxdb-line-protocol` crate (InfluxData's, from InfluxDB IOx) escapes correctly,
//! but its line iterator drops blank and comment lines, so its errors cannot name a line; it
//! refuses `\r\n` line ends; some of its errors say only `A generic parsing error occurred:
//! TakeWhile1`, or `No fields were provided` for `value=NaN`; and it brings `nom` 7 and
//! `snafu` 0.7 with a derive macro. The grammar is small and fully specified, so it is
//! parsed here in one pass over the bytes, with errors in the API's terms.

use std::io::Read;
use std::sync::Arc;

use raftmetrics_core::error::Error;
use raftmetrics_core::model::{
    Limits, Point, Record, SharedTagsPoint, Tags, check_metric_name, validate_shared_tags,
};
use raftmetrics_core::time::Timestamp;

use super::{BadLines, name_lines, quote};

/// Longest line, in bytes (its `\r\n` excluded).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Bytes inflated per read of a gzip body.
const GUNZIP_CHUNK: usize = 16 * 1024;

/// The unit of the timestamps of a request (its `precision` parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Nanoseconds, the protocol's default.
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
    /// Minutes.
    M,
    /// Hours.
    H,
}

impl Precision {
    /// The names of the 1.x (`n`, `u`, `µ`, `ms`, `s`, `m`, `h`) and 2.x (`ns`, `us`, `ms`,
    /// `s`) APIs, and `us`/`ns` for 1.x too. Anything else is a validation error naming
    /// `precision`.
    pub fn parse(text: &str) -> Result<Precision, Error> {
        Ok(match text {
            "n" | "ns" => Precision::Ns,
            // The micro sign (U+00B5) and the Greek small mu (U+03BC) look alike.
            "u" | "us" | "\u{b5}" | "\u{3bc}" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            "m" => Precision::M,
            "h" => Precision::H,
            _ => {
                return Err(Error::field(
                    "precision",
                    format!(
                        "unknown precision {}; expected one of ns, n, us, u, µ, ms, s, m, h",
                        quote(text)
                    ),
                ));
            }
        })
    }

    /// The canonical name (`ns`, `us`, `ms`, `s`, `m`, `h`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
            Precision::M => "m",
            Precision::H => "h",
        }
    }

    /// `value` in this precision as microseconds, if it fits in an `i64`. Nanoseconds round
    /// toward negative infinity.
    pub fn to_micros(self, value: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(value.div_euclid(1_000)),
            Precision::Us => Some(value),
            Precision::Ms => value.checked_mul(1_000),
            Precision::S => value.checked_mul(1_000_000),
            Precision::M => value.checked_mul(60 * 1_000_000),
            Precision::H => value.checked_mul(3_600 * 1_000_000),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Precision::parse(text)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a body is read.
#[derive(Clone, Debug, PartialEq)]
pub struct LineProtocolOptions {
    /// The unit of the body's timestamps.
    pub precision: Precision,
    /// Between the measurement and the field in a metric name; `_` by default.
    pub separator: String,
    /// The timestamp of lines without one: the server's time of receipt.
    pub default_time: Timestamp,
    /// Most lines with fields in one body.
    pub max_lines: usize,
    /// Most points one body may yield (one per field of each line).
    pub max_points: usize,
    /// Most tags on one line.
    pub max_tags: usize,
}

impl LineProtocolOptions {
    /// Nanosecond timestamps, the `_` separator, `default_time` for lines without a
    /// timestamp, and the bounds of `limits` (a batch's points bound the lines too, since
    /// every line yields at least one point).
    pub fn new(default_time: Timestamp, limits: &Limits) -> Self {
        LineProtocolOptions {
            precision: Precision::Ns,
            separator: "_".to_string(),
            default_time,
            max_lines: limits.max_batch_points,
            max_points: limits.max_batch_points,
            max_tags: limits.max_tags,
        }
    }
}

/// The points of a line protocol body, in order: one per field of each line. Blank and
/// comment lines yield none, so an empty body decodes to no points.
///
/// Every bad line is listed in one [`Error::Validation`] (fields `line N`); a bound of the
/// body as a whole that is passed is named `body`.
pub fn decode(body: &[u8], opts: &LineProtocolOptions) -> Result<Vec<Point>, Error> {
    decode_lines(body, opts).map(|decoded| decoded.points.into_iter().map(Point::from).collect())
}

/// [`decode`], then [`validate_batch`] with [`LineProtocolOptions::default_time`] as the
/// time of receipt; the errors validation finds are named by line (`line 4`, `tag "host":
/// ...`) rather than by point. A body with no points is refused, as an empty batch is.
pub fn decode_records(
    body: &[u8],
    opts: &LineProtocolOptions,
    limits: &Limits,
) -> Result<Vec<Record>, Error> {
    let Decoded { points, lines } = decode_lines(body, opts)?;
    validate_shared_tags(points, opts.default_time, limits).map_err(|e| name_lines(e, &lines))
}

/// Inflates a `Content-Encoding: gzip` body (one or more gzip members) into at most `limit`
/// bytes. A body that would inflate to more is refused as soon as it passes `limit`, so a
/// small body that inflates enormously costs at most about `limit` bytes of memory and the
/// time to inflate `limit` bytes. A corrupt or truncated body is refused too; both are
/// [`Error::InvalidRequest`].
pub fn gunzip_bounded(body: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    gunzip_into(body, limit, &mut out)?;
    Ok(out)
}

/// [`gunzip_bounded`] into `out`, which may hold what was inflated before an error.
fn gunzip_into(body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    let mut chunk = vec![0u8; GUNZIP_CHUNK];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::InvalidRequest(format!(
                    "the request body is not valid gzip (Content-Encoding: gzip): {e}"
                )));
            }
        };
        if out.len().saturating_add(n) > limit {
            return Err(Error::InvalidRequest(format!(
                "the gzip request body inflates to more than the limit of {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// The points of a body and, for each, the line it came from.
struct Decoded {
    points: Vec<SharedTagsPoint>,
    /// `lines[i]` is the 1-based line of `points[i]`.
    lines: Vec<usize>,
}

fn decode_lines(body: &[u8], opts: &LineProtocolOptions) -> Result<Decoded, Error> {
    let mut points = Vec::new();
    let mut lines = Vec::new();
    let mut errors = BadLines::default();
    let mut data_lines = 0usize;
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let parsed = if raw.len() > MAX_LINE_BYTES {
            Err(format!("longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match std::str::from_utf8(raw) {
                Err(e) => Err(format!(
                    "not valid UTF-8 (from byte {} of the line)",
                    e.valid_up_to()
                )),
                Ok(text) => {
                    let text = text.trim_matches([' ', '\t']);
                    if text.is_empty() || text.starts_with('#') {
                        continue;
                    }
                    parse_line(text, opts).and_then(|line| {
                        let names = metric_names(&line, &opts.separator)?;
                        Ok((line, names))
                    })
                }
            }
        };
        data_lines += 1;
        if data_lines > opts.max_lines {
            return Err(Error::field(
                "body",
                format!("at most {} lines per request", opts.max_lines),
            ));
        }
        match parsed {
            // Once a line is bad nothing will be stored: the rest is only checked.
            Ok((line, names)) if errors.is_empty() => {
                if points.len() + names.len() > opts.max_points {
                    return Err(Error::field(
                        "body",
                        format!(
                            "at most {} points per request (one per field of each line)",
                            opts.max_points
                        ),
                    ));
                }
                line.into_points(names, |point| {
                    points.push(point);
                    lines.push(number);
                });
            }
            Ok(_) => {}
            Err(message) => {
                if !errors.add(number, message) {
                    break;
                }
            }
        }
    }
    errors.or_ok(Decoded { points, lines })
}

/// One parsed line, its names unescaped and its values converted.
struct Line {
    measurement: String,
    tags: Tags,
    fields: Vec<(String, f64)>,
    timestamp: Timestamp,
}

impl Line {
    /// One point per field, named by `names` (one per field), handed to `push`; they share
    /// the line's tags.
    fn into_points(self, names: Vec<String>, mut push: impl FnMut(SharedTagsPoint)) {
        let Line {
            tags,
            fields,
            timestamp,
            ..
        } = self;
        let tags = Arc::new(tags);
        for (metric, (_, value)) in names.into_iter().zip(fields) {
            push(SharedTagsPoint {
                metric,
                value,
                timestamp: Some(timestamp),
                tags: Arc::clone(&tags),
            });
        }
    }
}

fn metric_name(measurement: &str, separator: &str, field: &str) -> String {
    let mut name = String::with_capacity(measurement.len() + separator.len() + field.len());
    name.push_str(measurement);
    name.push_str(separator);
    name.push_str(field);
    name
}

/// What ends each element and what a backslash escapes in it.
const MEASUREMENT_ENDS: &[u8] = b", ";
const MEASUREMENT_ESCAPES: &[u8] = b", \\";
/// Tag and field keys end at `=`; a comma or space there is an error, found by ending there.
const KEY_ENDS: &[u8] = b"=, ";
const TAG_VALUE_ENDS: &[u8] = b", ";
/// Tag keys, tag values and field keys.
const NAME_ESCAPES: &[u8] = b",= \\";

/// Reads an element of `text` from `start` to the first unescaped byte of `ends` (or the end
/// of the line), unescaping it. Returns it and where it ended.
fn read_element(
    text: &str,
    start: usize,
    ends: &[u8],
    escapes: &[u8],
    what: &str,
) -> Result<(String, usize), String> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut run = start;
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            match bytes.get(i + 1) {
                None => {
                    return Err(format!(
                        "{what} ends the line with a backslash, which escapes nothing"
                    ));
                }
                Some(&next) if escapes.contains(&next) => {
                    out.push_str(&text[run..i]);
                    out.push(char::from(next));
                    i += 2;
                    run = i;
                }
                // A literal backslash; the next character is read as any other.
                Some(_) => i += 1,
            }
        } else if ends.contains(&b) {
            break;
        } else {
            i += 1;
        }
    }
    // `run` and `i` are at ASCII bytes or the end, so both are character boundaries.
    out.push_str(&text[run..i]);
    Ok((out, i))
}

const MISSING_FIELDS: &str = "no fields: a line is measurement[,tag=value...] \
                              field=value[,field=value...] [timestamp]";

fn parse_line(text: &str, opts: &LineProtocolOptions) -> Result<Line, String> {
    let bytes = text.as_bytes();
    let (measurement, mut i) = read_element(
        text,
        0,
        MEASUREMENT_ENDS,
        MEASUREMENT_ESCAPES,
        "the measurement",
    )?;
    if measurement.is_empty() {
        return Err("no measurement: a line starts with its measurement name".to_string());
    }

    let mut tags = Tags::new();
    if bytes.get(i) == Some(&b',') {
        loop {
            let (key, at) = read_element(text, i + 1, KEY_ENDS, NAME_ESCAPES, "a tag key")?;
            if key.is_empty() {
                return Err("a tag key is empty".to_string());
            }
            if bytes.get(at) != Some(&b'=') {
                return Err(format!("tag {} has no value (`=` expected)", quote(&key)));
            }
            let what = format!("tag {}", quote(&key));
            let (value, end) = read_element(text, at + 1, TAG_VALUE_ENDS, NAME_ESCAPES, &what)?;
            if value.is_empty() {
                return Err(format!("tag {} has an empty value", quote(&key)));
            }
            if tags.contains_key(&key) {
                return Err(format!("tag {} is given twice", quote(&key)));
            }
            if tags.len() >= opts.max_tags {
                return Err(format!("more than {} tags", opts.max_tags));
            }
            tags.insert(key, value);
            i = end;
            match bytes.get(i) {
                Some(b',') => continue,
                Some(_) => break,
                None => return Err(MISSING_FIELDS.to_string()),
            }
        }
    }
    if i >= bytes.len() {
        return Err(MISSING_FIELDS.to_string());
    }
    i = skip_spaces(bytes, i);

    let mut fields: Vec<(String, f64)> = Vec::new();
    loop {
        let (key, at) = read_element(text, i, KEY_ENDS, NAME_ESCAPES, "a field key")?;
        if key.is_empty() {
            return Err(if fields.is_empty() && at >= bytes.len() {
                MISSING_FIELDS.to_string()
            } else {
                "a field key is empty".to_string()
            });
        }
        if bytes.get(at) != Some(&b'=') {
            return Err(format!("field {} has no value (`=` expected)", quote(&key)));
        }
        let start = at + 1;
        if bytes.get(start) == Some(&b'"') {
            return Err(if string_end(bytes, start).is_some() {
                format!(
                    "field {} has a string value; only numbers and booleans are stored",
                    quote(&key)
                )
            } else {
                format!(
                    "field {} has a string value with no closing `\"`",
                    quote(&key)
                )
            });
        }
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b',' || b == b' ')
            .map_or(bytes.len(), |p| start + p);
        let value =
            parse_value(&text[start..end]).map_err(|e| format!("field {}: {e}", quote(&key)))?;
        fields.push((key, value));
        i = end;
        match bytes.get(i) {
            Some(b',') => i += 1,
            _ => break,
        }
    }
    check_unique_fields(&fields)?;

    i = skip_spaces(bytes, i);
    let timestamp = if i < bytes.len() {
        let end = bytes[i..]
            .iter()
            .position(|&b| b == b' ')
            .map_or(bytes.len(), |p| i + p);
        let token = &text[i..end];
        let rest = skip_spaces(bytes, end);
        if rest < bytes.len() {
            return Err(format!(
                "unexpected {} after the timestamp",
                quote(&text[rest..])
            ));
        }
        parse_timestamp(token, opts.precision)?
    } else {
        opts.default_time
    };

    Ok(Line {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

/// The metric name of every field of `line`, each checked against the model's rule so that
/// a bad one is named by its line.
fn metric_names(line: &Line, separator: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::with_capacity(line.fields.len());
    for (field, _) in &line.fields {
        let name = metric_name(&line.measurement, separator, field);
        if let Err(e) = check_metric_name(&name) {
            return Err(format!(
                "metric name {} (measurement {} and field {}) {e}",
                quote(&name),
                quote(&line.measurement),
                quote(field)
            ));
        }
        names.push(name);
    }
    Ok(names)
}

fn skip_spaces(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

/// Where the string value opening at `start` (a `"`) ends: just past its closing `"`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            // `\"` and `\\` are escapes; before anything else the backslash is literal, and
            // skipping that character too changes nothing.
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Refuses a field key given twice on one line.
fn check_unique_fields(fields: &[(String, f64)]) -> Result<(), String> {
    if fields.len() < 2 {
        return Ok(());
    }
    let mut keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    match keys.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("field {} is given twice", quote(w[0]))),
        None => Ok(()),
    }
}

/// A field value as a number: float, `i` integer, `u` unsigned integer or boolean.
fn parse_value(token: &str) -> Result<f64, String> {
    match token {
        "" => return Err("no value after `=`".to_string()),
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(1.0),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(0.0),
        _ => {}
    }
    if let Some(digits) = token.strip_suffix('i')
        && is_integer(digits)
    {
        return digits
            .parse::<i64>()
            // Beyond 2^53 in magnitude the nearest f64 is taken.
            .map(|v| v as f64)
            .map_err(|_| format!("integer {} is out of the signed 64-bit range", quote(token)));
    }
    if let Some(digits) = token.strip_suffix('u')
        && !digits.starts_with('-')
        && is_integer(digits)
    {
        return digits.parse::<u64>().map(|v| v as f64).map_err(|_| {
            format!(
                "integer {} is out of the unsigned 64-bit range",
                quote(token)
            )
        });
    }
    if is_float(token) {
        let value: f64 = token
            .parse()
            .map_err(|_| format!("{} is not a number", quote(token)))?;
        return if value.is_finite() {
            Ok(value)
        } else {
            Err(format!(
                "{} is out of the range of a 64-bit float; values must be finite",
                quote(token)
            ))
        };
    }
    let word = token.trim_start_matches(['-', '+']).to_ascii_lowercase();
    if matches!(word.as_str(), "nan" | "inf" | "infinity") {
        return Err(format!(
            "{} is not a finite number; values must be finite",
            quote(token)
        ));
    }
    Err(format!(
        "{} is not a number or a boolean (1.5, -2, 1e3, 12i, 12u, true, false)",
        quote(token)
    ))
}

/// `-?[0-9]+`
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?`
fn is_float(text: &str) -> bool {
    let bytes = text.strip_prefix('-').unwrap_or(text).as_bytes();
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(bytes.len() - from)
    };
    let whole = digits(0);
    let mut i = whole;
    let mut fraction = 0;
    if bytes.get(i) == Some(&b'.') {
        fraction = digits(i + 1);
        i += 1 + fraction;
    }
    if whole == 0 && fraction == 0 {
        return false;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exponent = digits(i);
        if exponent == 0 {
            return false;
        }
        i += exponent;
    }
    i == bytes.len()
}

fn parse_timestamp(token: &str, precision: Precision) -> Result<Timestamp, String> {
    if !is_integer(token) {
        return Err(format!(
            "timestamp {} is not an integer (a Unix time in {precision})",
            quote(token)
        ));
    }
    let value: i64 = token.parse().map_err(|_| {
        format!(
            "timestamp {} is out of the signed 64-bit range",
            quote(token)
        )
    })?;
    precision
        .to_micros(value)
        .map(Timestamp::from_micros)
        .ok_or_else(|| format!("timestamp {value} in precision {precision} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::MAX_BAD_LINES;
    use std::io::Write;

    const NOW: i64 = 1_705_764_600_000_000;

    fn opts() -> LineProtocolOptions {
        LineProtocolOptions::new(Timestamp::from_micros(NOW), &Limits::default())
    }

    fn decode_ok(body: &str) -> Vec<Point> {
        decode(body.as_bytes(), &opts()).unwrap_or_else(|e| panic!("{body:?}: {e}"))
    }

    fn one(body: &str) -> Point {
        let mut points = decode_ok(body);
        assert_eq!(points.len(), 1, "{body:?}: {points:?}");
        points.remove(0)
    }

    /// The errors of a bad body as `(field, message)`.
    fn errors_with(body: &[u8], opts: &LineProtocolOptions) -> Vec<(String, String)> {
        match decode(body, opts) {
            Err(Error::Validation(fields)) => {
                fields.into_iter().map(|f| (f.field, f.error)).collect()
            }
            other => panic!("{:?}: expected a validation error, got {other:?}", body),
        }
    }

    /// The one error of a one-line body, which must name line 1.
    fn error(body: &str) -> String {
        let errors = errors_with(body.as_bytes(), &opts());
        assert_eq!(errors.len(), 1, "{body:?}: {errors:?}");
        assert_eq!(errors[0].0, "line 1", "{body:?}: {errors:?}");
        errors[0].1.clone()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_line_becomes_one_point_per_field() {
        let points =
            decode_ok("cpu,host=a,dc=west usage_idle=3,usage_user=1.5 1705764600000000000");
        let at = Timestamp::from_micros(NOW);
        assert_eq!(
            points,
            vec![
                Point::new("cpu_usage_idle", 3.0)
                    .at(at)
                    .tag("host", "a")
                    .tag("dc", "west"),
                Point::new("cpu_usage_user", 1.5)
                    .at(at)
                    .tag("host", "a")
                    .tag("dc", "west"),
            ]
        );
        // `value` is a field like any other.
        assert_eq!(one("temp value=20").metric, "temp_value");
        let mut custom = opts();
        custom.separator = ".".into();
        let points = decode(b"cpu idle=1", &custom).unwrap();
        assert_eq!(points[0].metric, "cpu.idle");
    }

    #[test]
    fn every_field_type_is_a_number() {
        let cases: &[(&str, f64)] = &[
            ("1.5", 1.5),
            ("-2", -2.0),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            ("-1.5e-3", -0.0015),
            ("2.5E+2", 250.0),
            (".5", 0.5),
            ("1.", 1.0),
            ("0", 0.0),
            ("12i", 12.0),
            ("-12i", -12.0),
            ("9223372036854775807i", 9_223_372_036_854_775_807_i64 as f64),
            ("-9223372036854775808i", i64::MIN as f64),
            ("12u", 12.0),
            ("18446744073709551615u", u64::MAX as f64),
            ("1.7976931348623157e308", f64::MAX),
            ("t", 1.0),
            ("T", 1.0),
            ("true", 1.0),
            ("True", 1.0),
            ("TRUE", 1.0),
            ("f", 0.0),
            ("F", 0.0),
            ("false", 0.0),
            ("False", 0.0),
            ("FALSE", 0.0),
        ];
        for (text, want) in cases {
            let point = one(&format!("m v={text}"));
            assert_eq!(point.value, *want, "{text}");
        }
        // Beyond 2^53 the nearest f64 is taken.
        assert_eq!(one("m v=9007199254740993i").value, 9_007_199_254_740_992.0);
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            ("m v=NaN", "not a finite number"),
            ("m v=nan", "not a finite number"),
            ("m v=inf", "not a finite number"),
            ("m v=-Inf", "not a finite number"),
            ("m v=+Infinity", "not a finite number"),
            ("m v=1e400", "out of the range of a 64-bit float"),
            ("m v=-1e400", "out of the range of a 64-bit float"),
            ("m v=9223372036854775808i", "out of the signed 64-bit range"),
            (
                "m v=-9223372036854775809i",
                "out of the signed 64-bit range",
            ),
            (
                "m v=18446744073709551616u",
                "out of the unsigned 64-bit range",
            ),
            ("m v=-1u", "not a number or a boolean"),
            ("m v=1.5i", "not a number or a boolean"),
            ("m v=1x", "not a number or a boolean"),
            ("m v=+1", "not a number or a boolean"),
            ("m v=yes", "not a number or a boolean"),
            ("m v=tru", "not a number or a boolean"),
            ("m v=1e", "not a number or a boolean"),
            ("m v=.", "not a number or a boolean"),
            ("m v=-", "not a number or a boolean"),
            ("m v=1..2", "not a number or a boolean"),
            ("m v=0x10", "not a number or a boolean"),
            ("m v=", "no value after `=`"),
            ("m v=,w=1", "no value after `=`"),
        ];
        for (body, want) in cases {
            let message = error(body);
            assert!(
                message.starts_with("field \"v\": ") && message.contains(want),
                "{body:?}: {message}"
            );
        }
    }

    #[test]
    fn string_fields_refuse_the_request() {
        assert_eq!(
            error(r#"m msg="hello",v=1"#),
            "field \"msg\" has a string value; only numbers and booleans are stored"
        );
        assert!(error(r#"m v=1,msg="""#).contains("string value; only numbers"));
        // An escaped quote does not close the string.
        assert!(error(r#"m msg="a \" b""#).contains("string value; only numbers"));
        assert_eq!(
            error(r#"m msg="no end"#),
            "field \"msg\" has a string value with no closing `\"`"
        );
        assert!(error(r#"m msg="ends in an escaped quote\""#).contains("no closing"));
        // A newline inside a string value ends the line, so the string has no end.
        let errors = errors_with(b"m s=\"a\nb\" 1", &opts());
        assert_eq!(errors[0].0, "line 1");
        assert!(errors[0].1.contains("no closing"), "{errors:?}");
    }

    #[test]
    fn escapes_follow_the_protocol_reference() {
        /// A line, the metric name of its first field and its tags.
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            // Measurement: comma and space.
            (r"cpu\,1 v=1", "cpu,1_v", &[]),
            (r"cpu\ 1 v=1", "cpu 1_v", &[]),
            // An `=` in a measurement is literal, escaped or not.
            (r"a=b v=1", "a=b_v", &[]),
            (r"a\=b v=1", r"a\=b_v", &[]),
            // Tag keys and values: comma, equals sign, space.
            (r"m,k\,1=v v=1", "m_v", &[("k,1", "v")]),
            (r"m,k\=1=v v=1", "m_v", &[("k=1", "v")]),
            (r"m,k\ 1=v v=1", "m_v", &[("k 1", "v")]),
            (r"m,k=v\,1 v=1", "m_v", &[("k", "v,1")]),
            (r"m,k=v\=1 v=1", "m_v", &[("k", "v=1")]),
            (r"m,k=v\ 1 v=1", "m_v", &[("k", "v 1")]),
            // An unescaped `=` in a tag value is literal.
            (r"m,k=a=b v=1", "m_v", &[("k", "a=b")]),
            // Field keys: comma, equals sign, space.
            (r"m f\,1=1", "m_f,1", &[]),
            (r"m f\=1=1", "m_f=1", &[]),
            (r"m f\ 1=1", "m_f 1", &[]),
            // Backslashes: `\\` is one; before anything else a backslash is literal.
            (r"m,k=a\b v=1", "m_v", &[("k", r"a\b")]),
            (r"m,k=a\\b v=1", "m_v", &[("k", r"a\b")]),
            (r"m,k=a\\\b v=1", "m_v", &[("k", r"a\\b")]),
            (r"m,k=a\\\\b v=1", "m_v", &[("k", r"a\\b")]),
            (r"m,k=a\\ v=1", "m_v", &[("k", r"a\")]),
            (r"m,k=a\\\\ v=1", "m_v", &[("k", r"a\\")]),
            (r"m\\x v=1", r"m\x_v", &[]),
            (r"m,k=é\é v=1", "m_v", &[("k", r"é\é")]),
            // Spec example: spaces and commas escaped in every element.
            (
                r"my\ Measurement,tag\ Key1=tag\ Value1,tag\,Key2=tag\,Value2 fieldKey=1",
                "my Measurement_fieldKey",
                &[("tag Key1", "tag Value1"), ("tag,Key2", "tag,Value2")],
            ),
        ];
        for (line, metric, want_tags) in cases {
            let parsed = parse_line(line, &opts()).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                metric_name(&parsed.measurement, "_", &parsed.fields[0].0),
                *metric,
                "{line}"
            );
            assert_eq!(parsed.tags, tags(want_tags), "{line}");
        }
    }

    #[test]
    fn escaped_names_reach_the_model_and_bad_ones_name_the_line() {
        let message = error(r"cpu\ load v=1");
        assert!(
            message.starts_with(
                "metric name \"cpu load_v\" (measurement \"cpu load\" and field \"v\") must match"
            ),
            "{message}"
        );
        // Tag text is checked by the model; decode_records names its line, once.
        let body = "m,host=a v=1\nm,ho\\ st=a v=1,w=2\n";
        let err = decode_records(body.as_bytes(), &opts(), &Limits::default()).unwrap_err();
        let Error::Validation(fields) = err else {
            panic!("{err:?}")
        };
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert_eq!(fields[0].field, "line 2");
        assert!(
            fields[0].error.starts_with("tags: tag keys must match"),
            "{fields:?}"
        );
    }

    #[test]
    fn syntax_errors_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("cpu", "no fields"),
            ("cpu ", "no fields"),
            ("cpu,host=a", "no fields"),
            ("cpu,host=a ", "no fields"),
            (",host=a v=1", "no measurement"),
            ("cpu, v=1", "a tag key is empty"),
            ("cpu,=a v=1", "a tag key is empty"),
            ("cpu,host v=1", "tag \"host\" has no value"),
            ("cpu,host= v=1", "tag \"host\" has an empty value"),
            ("cpu,host=a, v=1", "a tag key is empty"),
            ("cpu,host=a,host=b v=1", "tag \"host\" is given twice"),
            ("cpu v", "field \"v\" has no value"),
            ("cpu v=1,", "a field key is empty"),
            ("cpu =1", "a field key is empty"),
            ("cpu v=1,v=2", "field \"v\" is given twice"),
            ("cpu a b=1", "field \"a\" has no value"),
            ("cpu v=1 1 2", "unexpected \"2\" after the timestamp"),
            ("cpu v=1 abc", "timestamp \"abc\" is not an integer"),
            ("cpu v=1 1.5", "timestamp \"1.5\" is not an integer"),
            (
                "cpu v=1 99999999999999999999",
                "out of the signed 64-bit range",
            ),
            // Trailing backslashes escape nothing.
            ("cpu\\", "the measurement ends the line with a backslash"),
            ("cpu,k\\", "a tag key ends the line with a backslash"),
            ("cpu,k=v\\", "tag \"k\" ends the line with a backslash"),
            ("cpu v\\", "a field key ends the line with a backslash"),
            ("cpu v=1\\", "not a number or a boolean"),
        ];
        for (body, want) in cases {
            let message = error(body);
            assert!(message.contains(want), "{body:?}: {message}");
        }
    }

    #[test]
    fn comments_blank_lines_and_line_ends() {
        let body = "# a comment\n\n  \t\ncpu v=1\r\n   # indented comment\r\n\r\n  cpu v=2  \t\r\ncpu v=3 1000\t \n";
        let points = decode_ok(body);
        let values: Vec<f64> = points.iter().map(|p| p.value).collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0]);
        assert_eq!(points[2].timestamp, Some(Timestamp::from_micros(1)));
        // Several spaces between the sections.
        let p = one("cpu,h=a    v=1    2000");
        assert_eq!(p.timestamp, Some(Timestamp::from_micros(2)));
        // No points at all is not an error for the decoder.
        assert!(decode_ok("").is_empty());
        assert!(decode_ok("# only a comment\n\n").is_empty());
        // ... but it is an empty batch for validation.
        let err = decode_records(b"\n", &opts(), &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, Error::Validation(f) if f[0].field == "body"),
            "{err:?}"
        );
    }

    #[test]
    fn precisions_convert_to_microseconds() {
        let cases: &[(&str, Precision, i64, i64)] = &[
            (
                "ns",
                Precision::Ns,
                1_705_764_600_123_456_789,
                1_705_764_600_123_456,
            ),
            ("n", Precision::Ns, 999, 0),
            (
                "us",
                Precision::Us,
                1_705_764_600_123_456,
                1_705_764_600_123_456,
            ),
            ("u", Precision::Us, 7, 7),
            ("\u{b5}", Precision::Us, 7, 7),
            (
                "ms",
                Precision::Ms,
                1_705_764_600_123,
                1_705_764_600_123_000,
            ),
            ("s", Precision::S, 1_705_764_600, 1_705_764_600_000_000),
            ("m", Precision::M, 28_429_410, 1_705_764_600_000_000),
            ("h", Precision::H, 473_823, 1_705_762_800_000_000),
        ];
        for (name, precision, value, micros) in cases {
            let parsed: Precision = name.parse().unwrap();
            assert_eq!(parsed, *precision, "{name}");
            let mut o = opts();
            o.precision = parsed;
            let points = decode(format!("m v=1 {value}").as_bytes(), &o).unwrap();
            assert_eq!(
                points[0].timestamp,
                Some(Timestamp::from_micros(*micros)),
                "{name}"
            );
        }
        // Nanoseconds round toward negative infinity.
        assert_eq!(Precision::Ns.to_micros(-1), Some(-1));
        assert_eq!(Precision::Ns.to_micros(-1000), Some(-1));
        assert_eq!(Precision::Ns.to_micros(-1001), Some(-2));
        assert_eq!(Precision::Ns.to_micros(1999), Some(1));
        assert_eq!(Precision::default(), Precision::Ns);
        for name in ["", "NS", "sec", "mu", "d", "us "] {
            let err = Precision::parse(name).unwrap_err();
            assert!(
                matches!(&err, Error::Validation(f) if f[0].field == "precision"),
                "{name:?}: {err:?}"
            );
        }
    }

    #[test]
    fn a_missing_timestamp_is_the_time_of_receipt() {
        assert_eq!(one("m v=1").timestamp, Some(Timestamp::from_micros(NOW)));
        assert_eq!(
            one("m,h=a v=1   ").timestamp,
            Some(Timestamp::from_micros(NOW))
        );
    }

    #[test]
    fn timestamps_out_of_range_are_refused() {
        let mut o = opts();
        o.precision = Precision::S;
        let errors = errors_with(b"m v=1 1\nm v=1 9223372036854775807\n", &o);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "line 2");
        assert!(
            errors[0].1.contains("in precision s is out of range"),
            "{errors:?}"
        );
        o.precision = Precision::H;
        assert!(decode(b"m v=1 -9223372036854775807", &o).is_err());
    }

    #[test]
    fn every_bad_line_is_named_and_nothing_is_kept() {
        let body = "# header\ncpu v=1\ncpu v=\"x\"\n\ncpu v=2\ncpu\ncpu v=3\n";
        let errors = errors_with(body.as_bytes(), &opts());
        let names: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, vec!["line 3", "line 6"]);
        assert!(errors[0].1.contains("string value"), "{errors:?}");
        // The error reads as the API writes it.
        let err = decode(body.as_bytes(), &opts()).unwrap_err();
        assert!(
            err.to_string()
                .contains("line 3: field \"v\" has a string value"),
            "{err}"
        );
        // A body of bad lines lists at most 100 of them.
        let body = "cpu\n".repeat(500);
        let errors = errors_with(body.as_bytes(), &opts());
        assert_eq!(errors.len(), MAX_BAD_LINES + 1);
        assert_eq!(errors[MAX_BAD_LINES].0, "body");
    }

    #[test]
    fn bounds_are_kept() {
        let mut o = opts();
        o.max_lines = 3;
        assert_eq!(
            decode(b"m v=1\nm v=2\n# c\n\nm v=3\n", &o).unwrap().len(),
            3
        );
        let errors = errors_with(b"m v=1\nm v=2\nm v=3\nm v=4\n", &o);
        assert_eq!(
            errors,
            vec![(
                "body".to_string(),
                "at most 3 lines per request".to_string()
            )]
        );

        let mut o = opts();
        o.max_points = 4;
        assert_eq!(decode(b"m a=1,b=2\nm a=1,b=2\n", &o).unwrap().len(), 4);
        let errors = errors_with(b"m a=1,b=2\nm a=1,b=2,c=3\n", &o);
        assert_eq!(errors[0].0, "body");
        assert!(errors[0].1.contains("at most 4 points"), "{errors:?}");

        let mut o = opts();
        o.max_tags = 2;
        assert!(decode(b"m,a=1,b=2 v=1", &o).is_ok());
        let errors = errors_with(b"m,a=1,b=2,c=3 v=1", &o);
        assert_eq!(
            errors[0],
            ("line 1".to_string(), "more than 2 tags".to_string())
        );

        let long = format!("m,k={} v=1\nm v=1", "x".repeat(MAX_LINE_BYTES));
        let errors = errors_with(long.as_bytes(), &opts());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "line 1");
        assert!(
            errors[0].1.contains("longer than 65536 bytes"),
            "{errors:?}"
        );

        let errors = errors_with(b"m v=1\nm,k=\xff v=1\n", &opts());
        assert_eq!(errors[0].0, "line 2");
        assert!(errors[0].1.contains("UTF-8"), "{errors:?}");

        // Quoted text in a message is cut short.
        let message = error(&format!("m v={}", "z".repeat(10_000)));
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn records_are_validated_and_errors_name_lines() {
        let limits = Limits::default();
        let body = b"cpu,host=a idle=90,user=5 1705764600000000000\nmem,host=a used=1i\n";
        let records = decode_records(body, &opts(), &limits).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].metric(), "cpu_idle");
        assert_eq!(records[2].metric(), "mem_used");
        assert_eq!(records[2].timestamp, Timestamp::from_micros(NOW));
        // Seconds sent as nanoseconds would be 1970; seconds sent as milliseconds land far in
        // the future, which validation refuses, named by line, once per line.
        let mut o = opts();
        o.precision = Precision::S;
        let body = b"cpu v=1 1705764600\ncpu a=1,b=2 1705764600000\n";
        let err = decode_records(body, &o, &limits).unwrap_err();
        let Error::Validation(fields) = err else {
            panic!("{err:?}")
        };
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert_eq!(fields[0].field, "line 2");
        assert!(
            fields[0]
                .error
                .starts_with("timestamp: must not be more than"),
            "{fields:?}"
        );
        // A control character in a tag value.
        let err = decode_records(b"cpu,h=a\tb v=1", &opts(), &limits).unwrap_err();
        let Error::Validation(fields) = err else {
            panic!("{err:?}")
        };
        assert_eq!(fields[0].field, "line 1");
        assert!(fields[0].error.starts_with("tag \"h\": "), "{fields:?}");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_bodies_round_trip() {
        let body = b"cpu,host=a v=1\ncpu,host=b v=2\n".repeat(100);
        assert_eq!(gunzip_bounded(&gzip(&body), body.len()).unwrap(), body);
        // Two members, as a stream of concatenated gzip files.
        let mut two = gzip(b"a v=1\n");
        two.extend(gzip(b"b v=2\n"));
        assert_eq!(gunzip_bounded(&two, 1024).unwrap(), b"a v=1\nb v=2\n");
        assert_eq!(gunzip_bounded(&gzip(b""), 0).unwrap(), b"");
        // One byte over the limit is refused.
        let err = gunzip_bounded(&gzip(&body), body.len() - 1).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest(m) if m.contains("more than the limit")),
            "{err:?}"
        );
    }

    #[test]
    fn corrupt_gzip_is_refused() {
        let packed = gzip(&b"cpu v=1\n".repeat(1000));
        for cut in [
            1,
            5,
            10,
            packed.len() / 2,
            packed.len() - 4,
            packed.len() - 1,
        ] {
            let err = gunzip_bounded(&packed[..cut], 1 << 20).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidRequest(m) if m.contains("not valid gzip")),
                "{cut}: {err:?}"
            );
        }
        assert!(gunzip_bounded(b"cpu v=1\n", 1 << 20).is_err());
        let mut bad_crc = packed.clone();
        let at = bad_crc.len() - 6;
        bad_crc[at] ^= 0xff;
        assert!(gunzip_bounded(&bad_crc, 1 << 20).is_err());
    }

    #[test]
    fn a_gzip_bomb_is_refused_quickly_and_small() {
        // 100 MB of zeros packs into about 100 KB.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let limit = 1 << 20;
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let err = gunzip_into(&bomb, limit, &mut out).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest(m) if m.contains("more than the limit")),
            "{err:?}"
        );
        // Stopped at the limit: what was held never outgrew it by more than doubling.
        assert!(
            out.len() <= limit && out.capacity() <= 2 * limit,
            "{}",
            out.capacity()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
