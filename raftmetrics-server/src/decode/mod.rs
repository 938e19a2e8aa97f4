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

/// Most bad lines listed in one error.
pub(crate) const MAX_BAD_LINES: usize = 100;

/// The bad lines of a body, each a [`FieldError`] named `line N`, at most [`MAX_BAD_LINES`]
/// of them and then a `body` error saying checking stopped.
#[derive(Default)]
pub(crate) struct BadLines(Vec<FieldError>);

impl BadLines {
    /// Records what is wrong with line `number`; false once the list is full and checking
    /// should stop.
    pub(crate) fn add(&mut self, number: usize, message: String) -> bool {
        self.0
            .push(FieldError::new(format!("line {number}"), message));
        if self.0.len() < MAX_BAD_LINES {
            return true;
        }
        self.0.push(FieldError::new(
            "body",
            "too many bad lines; stopped checking",
        ));
        false
    }

    /// Whether no line was bad so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `value` when no line was bad, else every bad line as one validation error.
    pub(crate) fn or_ok<T>(self, value: T) -> Result<T, Error> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::Validation(self.0))
        }
    }
}

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
