//! Request and response bodies in JSON or bincode, chosen by `Content-Type` and `Accept`.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use raftmetrics_core::api::{BINCODE_MEDIA_TYPE, IDEMPOTENCY_KEY_HEADER, JsonInsert, JsonPoint};
use raftmetrics_core::error::{Error, FieldError};
use raftmetrics_core::model::{Limits, Record, validate_batch, validate_encoded_batch};
use raftmetrics_core::{BatchId, Point, Timestamp, codec};
use serde::Serialize;

use super::error::ApiError;
use crate::decode::line_protocol::gunzip_bounded;

/// A body codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Bincode,
}

fn media_type(value: &HeaderValue) -> String {
    value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The codec of a request body: bincode for `application/octet-stream`, JSON for
/// `application/json` or no `Content-Type`; anything else is 415.
pub fn request_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    match headers.get(header::CONTENT_TYPE).map(media_type).as_deref() {
        None | Some("application/json") => Ok(Format::Json),
        Some(BINCODE_MEDIA_TYPE) => Ok(Format::Bincode),
        Some(_) => Err(ApiError::unsupported_media_type([
            "application/json",
            BINCODE_MEDIA_TYPE,
        ])),
    }
}

/// The batch id of an insert: its `Idempotency-Key` header, else a new random id (so the
/// cluster may resend the batch inside itself without storing it twice).
pub fn batch_id(headers: &HeaderMap) -> Result<BatchId, ApiError> {
    match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(BatchId::random()),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                Error::InvalidRequest(
                    "the Idempotency-Key header may only hold visible ASCII characters".into(),
                )
            })?;
            Ok(BatchId::parse(text)?)
        }
    }
}

/// The codec of the answer: what `Accept` asks for, else `default`.
pub fn response_format(headers: &HeaderMap, default: Format) -> Format {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return default;
    };
    let wants = |m: &str| accept.split(',').any(|part| part.trim().starts_with(m));
    if wants(BINCODE_MEDIA_TYPE) {
        Format::Bincode
    } else if wants("application/json") {
        Format::Json
    } else {
        default
    }
}

/// `value` in `format`.
pub fn respond<T: Serialize>(format: Format, value: &T) -> Response {
    match format {
        Format::Json => axum::Json(value).into_response(),
        Format::Bincode => match codec::encode(value) {
            Ok(bytes) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(BINCODE_MEDIA_TYPE),
                )],
                bytes,
            )
                .into_response(),
            Err(e) => ApiError::from(e).into_response(),
        },
    }
}

/// The validated records of an insert body: bincode `Vec<Point>` (read in place, see
/// [`validate_encoded_batch`]), or JSON (one point or an array).
pub fn decode_records(
    format: Format,
    body: &Bytes,
    now: Timestamp,
    limits: &Limits,
) -> Result<Vec<Record>, ApiError> {
    Ok(match format {
        Format::Bincode => validate_encoded_batch(body, now, limits)?,
        Format::Json => validate_batch(json_points(body)?, now, limits)?,
    })
}

/// The points of a JSON insert body: one point or an array.
fn json_points(body: &Bytes) -> Result<Vec<Point>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidRequest(format!("request body is not valid JSON: {e}")))?;
    let parsed = match value {
        serde_json::Value::Array(items) => {
            let mut points = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let p: JsonPoint = serde_json::from_value(item)
                    .map_err(|e| Error::field(format!("points[{i}]"), e.to_string()))?;
                points.push(p);
            }
            JsonInsert::Many(points)
        }
        obj @ serde_json::Value::Object(_) => JsonInsert::One(
            serde_json::from_value(obj).map_err(|e| Error::field("body", e.to_string()))?,
        ),
        _ => {
            return Err(Error::InvalidRequest(
                "request body must be a JSON object or an array of objects".into(),
            )
            .into());
        }
    };
    Ok(parsed.into_points())
}

/// The query parameters of a protocol endpoint that takes `known` only, each at most once:
/// each given one as (key, value). Every unknown or repeated parameter is listed in
/// `errors`; the parameters after such an error are still checked.
pub fn known_params<'a>(
    params: &'a [(String, String)],
    known: &[&str],
    errors: &mut Vec<FieldError>,
) -> Vec<(&'a str, &'a str)> {
    let mut given: Vec<(&str, &str)> = Vec::new();
    for (key, value) in params {
        if !known.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key.clone(),
                format!(
                    "unknown parameter; this endpoint takes {}",
                    known.join(", ")
                ),
            ));
        } else if given.iter().any(|(k, _)| k == key) {
            errors.push(FieldError::new(key.clone(), "must be given at most once"));
        } else {
            given.push((key, value));
        }
    }
    given
}

/// The request body, inflated when it came with `Content-Encoding: gzip` (into at most
/// `limit` bytes, see [`gunzip_bounded`]); any other encoding, or more than one, is refused.
pub fn inflated<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, Error> {
    match content_encoding(headers)?.as_deref() {
        None | Some("identity") => Ok(Cow::Borrowed(body)),
        Some("gzip") => gunzip_bounded(body, limit).map(Cow::Owned),
        Some(other) => Err(Error::InvalidRequest(format!(
            "Content-Encoding {other:?} is not supported: send the body plain or gzip"
        ))),
    }
}

/// The body's `Content-Encoding`, lower case; more than one is refused.
fn content_encoding(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::InvalidRequest(
            "more than one Content-Encoding header".into(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| Error::InvalidRequest("Content-Encoding is not text".into()))?;
    Ok(Some(text.trim().to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(request_format(&h).unwrap(), Format::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        assert_eq!(request_format(&h).unwrap(), Format::Bincode);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(request_format(&h).is_err());
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*"),
        );
        assert_eq!(response_format(&h, Format::Bincode), Format::Json);
        assert_eq!(
            response_format(&HeaderMap::new(), Format::Bincode),
            Format::Bincode
        );
    }

    #[test]
    fn json_bodies_name_the_bad_point() {
        let body = Bytes::from_static(br#"[{"metric":"a","value":1},{"metric":"a","value":"x"}]"#);
        let err = json_points(&body).unwrap_err();
        assert!(format!("{err}").contains("points[1]"), "{err}");
    }

    #[test]
    fn one_content_encoding_at_most() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_encoding(&headers).unwrap(), None);
        headers.insert(header::CONTENT_ENCODING, "GZip".parse().unwrap());
        assert_eq!(content_encoding(&headers).unwrap().as_deref(), Some("gzip"));
        headers.append(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(content_encoding(&headers).is_err());
    }
}
