//! Decoders of the insert formats other systems speak: each turns a request body into
//! [`Point`](raftmetrics_core::Point)s (pure functions: bytes in, points or an error out, no
//! I/O), which then pass the one validation gate,
//! [`validate_batch`](raftmetrics_core::model::validate_batch), like every other insert.

pub mod import;
pub mod line_protocol;
pub mod remote_write;

use raftmetrics_core::error::{Error, FieldError};

/// Longest piece of a request quoted in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 64;

/// `text` quoted for an error message, cut to [`MAX_QUOTED_CHARS`] characters.
pub(crate) fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Names the errors of [`validate_batch`](raftmetrics_core::model::validate_batch)
/// (`points[4].tags.host`) by the line each point came from (`lines[4]`, 1-based: `line 2`,
/// `tag "host": ...`); errors about the batch as a whole are named `body`. Repeats (several
/// points of one line) are dropped.
pub(crate) fn name_lines(err: Error, lines: &[usize]) -> Error {
    let Error::Validation(fields) = err else {
        return err;
    };
    let mut named: Vec<FieldError> = Vec::with_capacity(fields.len());
    for field in fields {
        let field = name_line(field, lines);
        if !named.contains(&field) {
            named.push(field);
        }
    }
    Error::Validation(named)
}

fn name_line(error: FieldError, lines: &[usize]) -> FieldError {
    if error.field == "points" {
        return FieldError::new("body", error.error);
    }
    let parsed = error
        .field
        .strip_prefix("points[")
        .and_then(|rest| rest.split_once("]."))
        .and_then(|(index, what)| Some((lines.get(index.parse::<usize>().ok()?)?, what)));
    let Some((line, what)) = parsed else {
        return error;
    };
    let what = match what.strip_prefix("tags.") {
        Some(key) => format!("tag {}", quote(key)),
        None => what.to_string(),
    };
    FieldError::new(format!("line {line}"), format!("{what}: {}", error.error))
}
