//! Result tables, printed as Markdown so they paste into `docs/benchmarks.md` unchanged.

use std::fmt::Write as _;
use std::time::Duration;

/// A Markdown table: numbers right-aligned, text columns (the first, and those named with
/// [`Table::text_columns`]) left-aligned.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    left: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            left: (0..headers.len()).map(|c| c == 0).collect(),
            rows: Vec::new(),
        }
    }

    /// Left-aligns these columns too.
    pub fn text_columns(mut self, columns: &[usize]) -> Table {
        for &c in columns {
            if let Some(l) = self.left.get_mut(c) {
                *l = true;
            }
        }
        self
    }

    /// Adds a row; missing cells are left empty, extra cells dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as Markdown, columns padded to line up in plain text too.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.headers[c].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for (c, cell) in cells.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if self.left[c] {
                    let _ = write!(out, " {cell}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(out, " {}{cell} |", " ".repeat(pad));
                }
            }
            out.push('\n');
            out
        };
        let mut out = line(&self.headers);
        out.push('|');
        for (c, w) in widths.iter().enumerate() {
            let dashes = "-".repeat(w.saturating_sub(1));
            if self.left[c] {
                let _ = write!(out, " {dashes}- |");
            } else {
                let _ = write!(out, " {dashes}: |");
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// One measured ingest run, as a row of the ingest table.
#[derive(Clone, Debug)]
pub struct IngestRow {
    pub name: String,
    pub points: u64,
    pub points_per_second: f64,
    /// Points per second of the row this one is compared with.
    pub reference_rate: f64,
    /// Acknowledgement latencies `(p50, p99)`; `None` for the reference.
    pub latency: Option<(Duration, Duration)>,
    /// CPU seconds of the cluster's processes and of the load tool.
    pub cpu_cluster: Option<f64>,
    pub cpu_loader: f64,
    /// The goal and whether it was met.
    pub goal: Option<(String, bool)>,
}

/// The ingest table.
pub fn ingest_table(rows: &[IngestRow]) -> Table {
    let mut table = Table::new(&[
        "run",
        "points",
        "points/s",
        "ratio",
        "ack p50",
        "ack p99",
        "CPU-s/M points: cluster",
        "load tool",
        "goal",
    ])
    .text_columns(&[8]);
    for r in rows {
        let per_million = |cpu: f64| format!("{:.2}", cpu / (r.points as f64 / 1e6).max(1e-9));
        table.row(vec![
            r.name.clone(),
            thousands(r.points as f64),
            thousands(r.points_per_second),
            ratio(r.points_per_second / r.reference_rate.max(1e-9)),
            r.latency.map(|l| millis(l.0)).unwrap_or_else(|| "-".into()),
            r.latency.map(|l| millis(l.1)).unwrap_or_else(|| "-".into()),
            r.cpu_cluster.map(per_million).unwrap_or_else(|| "-".into()),
            per_million(r.cpu_loader),
            r.goal
                .as_ref()
                .map(|(text, met)| format!("{text}: {}", verdict(*met)))
                .unwrap_or_default(),
        ]);
    }
    table
}

/// One query of the set, as a row of the query table.
#[derive(Clone, Debug)]
pub struct QueryRow {
    pub name: String,
    pub description: String,
    pub rows: usize,
    pub reference: Duration,
    pub cluster: Duration,
    /// `Ok(note)` when the answers agree, `Err(why)` when not.
    pub answers: Result<String, String>,
}

impl QueryRow {
    /// The fan-out goal: at most 1.3x the reference plus 5 ms.
    pub fn goal_met(&self) -> bool {
        self.cluster.as_secs_f64() <= 1.3 * self.reference.as_secs_f64() + 0.005
    }
}

/// The query table.
pub fn query_table(rows: &[QueryRow]) -> Table {
    let mut table = Table::new(&[
        "query",
        "what",
        "rows",
        "plain DuckDB",
        "cluster",
        "ratio",
        "goal <= 1.3x + 5 ms",
        "answers",
    ])
    .text_columns(&[1, 7]);
    for r in rows {
        table.row(vec![
            r.name.clone(),
            r.description.clone(),
            r.rows.to_string(),
            millis(r.reference),
            millis(r.cluster),
            ratio(r.cluster.as_secs_f64() / r.reference.as_secs_f64().max(1e-9)),
            verdict(r.goal_met()).to_string(),
            match &r.answers {
                Ok(note) => note.clone(),
                Err(why) => format!("DIFFER: {why}"),
            },
        ]);
    }
    table
}

/// `1,234,567`.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Milliseconds with one decimal.
pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A ratio with two decimals, `x` suffixed.
pub fn ratio(value: f64) -> String {
    format!("{value:.2}x")
}

/// `met` or `MISSED` for a goal.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_markdown() {
        let mut t = Table::new(&["writer", "points/s"]);
        t.row(vec!["reference".into(), thousands(1_234_567.4)]);
        t.row(vec!["cluster".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "| writer    |  points/s |");
        assert_eq!(lines[1], "| --------- | --------: |");
        assert_eq!(lines[2], "| reference | 1,234,567 |");
        assert_eq!(lines[3], "| cluster   |           |");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(ratio(0.4049), "0.40x");
        assert_eq!(millis(Duration::from_micros(12_345)), "12.3 ms");
    }
}
