//! Idempotent writes: a client batch named by a [`BatchId`] is stored once, however many
//! times it is sent.
//!
//! A batch id travels with its records into the raft log (one id per client batch, next to
//! the records it covers) and is checked when the entry is applied, inside the store's
//! apply transaction: a batch whose id the partition has already applied is skipped. The
//! ids a partition remembers are its [`IdWindow`], which the store persists with the rows
//! and a snapshot carries, so a retry is recognised across leader changes, restarts and
//! snapshot installs.
//!
//! Every replica must take the same decision for the same log, so the window depends on the
//! log alone, never on a local clock: each entry carries the time its leader proposed it,
//! the window's clock is the largest such time seen (a leader with a slow clock cannot move
//! it back), and an id is forgotten once it is older than [`WINDOW_MICROS`] by that clock or
//! when more than [`MAX_IDS_PER_PARTITION`] newer ids were stored after it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long a partition remembers a batch id, by the log's clock: one hour.
pub const WINDOW_MICROS: i64 = 3_600 * 1_000_000;

/// Most batch ids a partition remembers; beyond it the oldest are forgotten first.
pub const MAX_IDS_PER_PARTITION: usize = 50_000;

/// Longest batch id, in bytes.
pub const MAX_BATCH_ID_LEN: usize = 128;

/// A client's name for one insert batch (the `Idempotency-Key` header): 1 to 128 visible
/// ASCII characters. Two batches with the same id in the same partition are the same batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BatchId(String);

impl BatchId {
    /// Checks `id`: 1 to [`MAX_BATCH_ID_LEN`] characters from `!` to `~`.
    pub fn parse(id: &str) -> Result<Self> {
        if id.is_empty() || id.len() > MAX_BATCH_ID_LEN {
            return Err(Error::InvalidRequest(format!(
                "a batch id (Idempotency-Key) must be 1 to {MAX_BATCH_ID_LEN} characters, got {}",
                id.len()
            )));
        }
        if let Some(c) = id.chars().find(|c| !matches!(c, '!'..='~')) {
            return Err(Error::InvalidRequest(format!(
                "a batch id (Idempotency-Key) may only hold visible ASCII characters, not {c:?}"
            )));
        }
        Ok(BatchId(id.to_string()))
    }

    /// A new id that no other batch will draw: 128 bits from the process's random hasher
    /// keys, the time and a counter, as 32 hex digits.
    pub fn random() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let half = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.write_u64(count);
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.finish()
        };
        BatchId(format!("{:016x}{:016x}", half(1), half(2)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BatchId {
    type Error = Error;
    fn try_from(id: String) -> Result<Self> {
        BatchId::parse(&id).map(|_| BatchId(id))
    }
}

impl From<BatchId> for String {
    fn from(id: BatchId) -> String {
        id.0
    }
}

/// The records `start..start + len` of a log entry form the client batch `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSpan {
    pub id: BatchId,
    pub start: u32,
    pub len: u32,
}

/// Checks that `spans` lie within `records` records, in order and without overlap.
pub fn check_spans(spans: &[IdSpan], records: usize) -> Result<()> {
    let mut end = 0u64;
    for s in spans {
        let start = u64::from(s.start);
        let stop = start + u64::from(s.len);
        if start < end || stop > records as u64 {
            return Err(Error::InvalidRequest(format!(
                "batch id spans out of order or beyond the {records} records of their entry"
            )));
        }
        end = stop;
    }
    Ok(())
}

/// A remembered id, as stored and as carried in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRow {
    pub id: BatchId,
    /// The window's clock when the id was stored, µs.
    pub at_micros: i64,
}

/// The batch ids a partition remembers, oldest first.
#[derive(Clone, Debug, Default)]
pub struct IdWindow {
    clock: i64,
    at: HashMap<BatchId, i64>,
    order: VecDeque<IdRow>,
}

/// What applying one entry's ids decided.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Spans (by position in the entry's span list) already stored: their records are skipped.
    pub duplicate: Vec<usize>,
    /// New rows to remember, in order.
    pub added: Vec<IdRow>,
    /// Every row with `at_micros` at or below this is forgotten (`None`: nothing is).
    pub forget_through: Option<i64>,
}

impl IdWindow {
    /// Rebuilds a window from stored rows (any order).
    pub fn from_rows(mut rows: Vec<IdRow>) -> Self {
        rows.sort_by(|a, b| (a.at_micros, &a.id).cmp(&(b.at_micros, &b.id)));
        let mut w = IdWindow::default();
        for row in rows {
            w.clock = w.clock.max(row.at_micros);
            w.at.insert(row.id.clone(), row.at_micros);
            w.order.push_back(row);
        }
        w
    }

    /// Remembered rows, oldest first.
    pub fn rows(&self) -> impl Iterator<Item = &IdRow> {
        self.order.iter()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Decides the spans of one entry proposed at `at_micros`, without changing the window:
    /// [`IdWindow::commit`] makes the decision part of it once the store committed it.
    pub fn decide(&self, spans: &[IdSpan], at_micros: i64) -> Decision {
        let entry_clock = self.clock.max(at_micros);
        let oldest_kept = entry_clock.saturating_sub(WINDOW_MICROS);
        let mut seen_here: HashSet<&BatchId> = HashSet::new();
        let mut d = Decision::default();
        // Every stored row gets its own time, strictly after the previous one, so rows are
        // totally ordered by time and one threshold names any prefix of them.
        let mut row_clock = self.clock;
        for (i, s) in spans.iter().enumerate() {
            let remembered = self.at.get(&s.id).is_some_and(|&t| t >= oldest_kept);
            if remembered || !seen_here.insert(&s.id) {
                d.duplicate.push(i);
            } else {
                row_clock = row_clock.saturating_add(1).max(entry_clock);
                d.added.push(IdRow {
                    id: s.id.clone(),
                    at_micros: row_clock,
                });
            }
        }
        // Forget what fell out of the window, then the oldest beyond the bound.
        let mut forget = self
            .order
            .iter()
            .take_while(|r| r.at_micros < oldest_kept)
            .last()
            .map(|r| r.at_micros);
        let total = self.order.len() + d.added.len();
        if total > MAX_IDS_PER_PARTITION {
            // Only old rows are forgotten: one entry's own ids (at most its records) stay.
            let excess = (total - MAX_IDS_PER_PARTITION).min(self.order.len());
            if let Some(r) = excess.checked_sub(1).and_then(|i| self.order.get(i)) {
                forget = Some(forget.map_or(r.at_micros, |f| f.max(r.at_micros)));
            }
        }
        d.forget_through = forget;
        d
    }

    /// Makes a committed decision part of the window.
    pub fn commit(&mut self, d: Decision) {
        if let Some(through) = d.forget_through {
            while self.order.front().is_some_and(|r| r.at_micros <= through) {
                if let Some(r) = self.order.pop_front() {
                    self.at.remove(&r.id);
                }
            }
        }
        for row in d.added {
            self.clock = self.clock.max(row.at_micros);
            self.at.insert(row.id.clone(), row.at_micros);
            self.order.push_back(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, start: u32, len: u32) -> IdSpan {
        IdSpan {
            id: BatchId::parse(id).unwrap(),
            start,
            len,
        }
    }

    fn apply(w: &mut IdWindow, ids: &[&str], at: i64) -> Vec<usize> {
        let spans: Vec<IdSpan> = ids.iter().map(|id| span(id, 0, 0)).collect();
        let d = w.decide(&spans, at);
        let dup = d.duplicate.clone();
        w.commit(d);
        dup
    }

    #[test]
    fn ids_are_checked() {
        assert!(BatchId::parse("retry-7f3a:1").is_ok());
        assert!(BatchId::parse("").is_err());
        assert!(BatchId::parse("has space").is_err());
        assert!(BatchId::parse("é").is_err());
        assert!(BatchId::parse(&"x".repeat(129)).is_err());
        assert!(BatchId::parse(&"x".repeat(128)).is_ok());
        let a = BatchId::random();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a, BatchId::random());
        let bytes = crate::codec::encode(&a).unwrap();
        assert_eq!(crate::codec::decode::<BatchId>(&bytes).unwrap(), a);
        let bad = crate::codec::encode(&"two words".to_string()).unwrap();
        assert!(crate::codec::decode::<BatchId>(&bad).is_err());
    }

    #[test]
    fn spans_must_be_ordered_and_inside() {
        assert!(check_spans(&[span("a", 0, 2), span("b", 2, 3)], 5).is_ok());
        assert!(check_spans(&[span("a", 0, 2), span("b", 1, 3)], 5).is_err());
        assert!(check_spans(&[span("a", 4, 2)], 5).is_err());
        assert!(check_spans(&[span("a", u32::MAX, u32::MAX)], 5).is_err());
    }

    #[test]
    fn a_repeated_id_is_a_duplicate_within_the_window_only() {
        let mut w = IdWindow::default();
        assert!(apply(&mut w, &["a", "b"], 1_000).is_empty());
        assert_eq!(apply(&mut w, &["b", "c", "c"], 2_000), vec![0, 2]);
        // A leader whose clock is behind does not bring ids back or forget them early.
        assert_eq!(apply(&mut w, &["a"], 10), vec![0]);
        // Past the window, by the log's clock, "a" is forgotten and stored again.
        let later = 1_000 + WINDOW_MICROS + 1;
        assert_eq!(apply(&mut w, &["x"], later), Vec::<usize>::new());
        assert!(!w.at.contains_key(&BatchId::parse("a").unwrap()));
        assert!(apply(&mut w, &["a"], later).is_empty());
    }

    #[test]
    fn the_window_is_bounded_and_rebuilds_from_its_rows() {
        let mut w = IdWindow::default();
        let ids: Vec<String> = (0..MAX_IDS_PER_PARTITION + 10)
            .map(|i| format!("id-{i}"))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            apply(&mut w, &[id], i as i64);
        }
        assert_eq!(w.len(), MAX_IDS_PER_PARTITION);
        assert_eq!(w.rows().next().unwrap().id.as_str(), "id-10");
        // The oldest are forgotten, the newest still recognised.
        assert!(apply(&mut w, &["id-0"], 0).is_empty());
        let last = ids.last().unwrap().as_str();
        assert_eq!(apply(&mut w, &[last], 0), vec![0]);
        let rebuilt = IdWindow::from_rows(w.rows().cloned().collect());
        assert_eq!(rebuilt.len(), w.len());
        let probe = [span(last, 0, 0), span("id-5", 0, 0)];
        assert_eq!(rebuilt.decide(&probe, 0), w.decide(&probe, 0));
    }
}
