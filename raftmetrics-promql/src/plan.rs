//! From a PromQL text to what must be read: the expression, checked against the subset
//! this evaluator implements, and the selectors it reads with the time range of each.
//! Pure: the runner that reads is the server's.

use std::collections::BTreeMap;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{
    self, AggregateExpr, Call, Expr, Offset, VectorMatchCardinality, VectorSelector,
};

use crate::error::{PromError, Result};
use crate::value::METRIC_NAME;

/// Prometheus' default lookback delta: an instant selector takes a series' latest sample at
/// most this old.
pub const LOOKBACK_MILLIS: i64 = 5 * 60 * 1000;

/// The functions evaluated here besides [`RANGE_FUNCTIONS`], by name.
pub const OTHER_FUNCTIONS: &[&str] = &[
    "abs",
    "clamp_min",
    "clamp_max",
    "round",
    "time",
    "vector",
    "scalar",
];

/// Whether the function `name` is evaluated here.
pub fn is_function(name: &str) -> bool {
    RANGE_FUNCTIONS.contains(&name) || OTHER_FUNCTIONS.contains(&name)
}

/// The aggregations evaluated here.
const AGGREGATIONS: &[TokenId] = &[
    token::T_SUM,
    token::T_AVG,
    token::T_MIN,
    token::T_MAX,
    token::T_COUNT,
    token::T_QUANTILE,
    token::T_TOPK,
    token::T_BOTTOMK,
];

/// The binary operators evaluated here.
const OPERATORS: &[TokenId] = &[
    token::T_ADD,
    token::T_SUB,
    token::T_MUL,
    token::T_DIV,
    token::T_MOD,
    token::T_POW,
    token::T_EQLC,
    token::T_NEQ,
    token::T_GTR,
    token::T_LSS,
    token::T_GTE,
    token::T_LTE,
];

/// One selector's read: the series its matchers select, over `[from, to]` (milliseconds,
/// inclusive), the union of what every use of the selector in the expression needs.
#[derive(Clone, Debug)]
pub struct Fetch {
    /// The selector's matchers, the metric name's among them.
    pub matchers: Vec<Matcher>,
    pub from: i64,
    pub to: i64,
}

impl Fetch {
    /// The metric name the selector asks for exactly (`name{...}` or `{__name__="name"}`),
    /// the name as PromQL spells it.
    pub fn metric(&self) -> Option<&str> {
        self.matchers
            .iter()
            .find(|m| m.name == METRIC_NAME && m.op == MatchOp::Equal)
            .map(|m| m.value.as_str())
    }

    /// The label matchers that ask for one exact, non-empty value (`label="value"`): a
    /// store can select series by them; every matcher is still checked on what it returns.
    pub fn exact_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.matchers
            .iter()
            .filter(|m| m.name != METRIC_NAME && m.op == MatchOp::Equal && !m.value.is_empty())
            .map(|m| (m.name.as_str(), m.value.as_str()))
    }

    /// Whether a series with `labels` is selected.
    pub fn matches(&self, labels: &crate::value::Labels) -> bool {
        self.matchers
            .iter()
            .all(|m| m.is_match(labels.get(&m.name).map_or("", String::as_str)))
    }
}

/// A parsed, checked expression and its reads.
#[derive(Debug)]
pub struct Plan {
    pub expr: Expr,
    /// The raw reads, by [`selector_key`].
    pub fetches: BTreeMap<String, Fetch>,
    /// The range functions the stores evaluate, by [`pushdown_key`] (empty unless asked
    /// for, see [`plan_pushed`]).
    pub pushdowns: BTreeMap<String, PushDown>,
}

/// A range function over a selector (`rate(m{...}[5m])`), or an instant selector (as
/// `last_over_time` over the lookback, which is what it selects), that a store evaluates
/// per series at every step, where its points are: only the results travel, not the points. A series
/// lives in one partition, so the partitions' results together are the whole answer. When
/// the function is the argument of `sum`, `avg`, `min`, `max` or `count` (with `by` or
/// `without`), the stores also group its results and send a partial state per group and
/// step (sum, count, min, max), which merge into the aggregation's value.
#[derive(Clone, Debug, PartialEq)]
pub struct PushDown {
    /// The call, or the aggregation of it, as PromQL text, for the store to plan and
    /// evaluate.
    pub text: String,
}

/// The key of a pushed-down call or aggregation: its PromQL text.
pub fn pushdown_key(expr: &Expr) -> String {
    expr.to_string()
}

/// The aggregations whose partial states merge: per group and step, sum, count, min, max.
pub const MERGEABLE_AGGREGATIONS: &[TokenId] = &[
    token::T_SUM,
    token::T_AVG,
    token::T_MIN,
    token::T_MAX,
    token::T_COUNT,
];

/// The selector of an aggregation of mergeable partial states whose argument the stores
/// can evaluate (a pushable call, or an instant selector), if it is one.
pub fn pushable_aggregate(agg: &AggregateExpr) -> Option<&VectorSelector> {
    if agg.param.is_some() || !MERGEABLE_AGGREGATIONS.contains(&agg.op.id()) {
        return None;
    }
    match unparen(&agg.expr) {
        Expr::Call(call) if pushable(call) => call.args.args.iter().find_map(|a| match &**a {
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        }),
        Expr::VectorSelector(vs) => Some(vs),
        _ => None,
    }
}

/// `expr` without the parentheses around it.
pub fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

/// Whether `call` can be evaluated by the stores: a range function (see
/// [`RANGE_FUNCTIONS`]) of a range selector, any parameter a number.
pub fn pushable(call: &Call) -> bool {
    if !RANGE_FUNCTIONS.contains(&call.func.name) {
        return false;
    }
    call.args
        .args
        .iter()
        .all(|a| matches!(**a, Expr::MatrixSelector(_) | Expr::NumberLiteral(_)))
}

/// The functions of a range vector that read only the one series they are given.
pub const RANGE_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
];

/// Parses `query`, refuses what the subset does not evaluate (naming the construct), and
/// lists the reads an evaluation at every time in `[start, end]` (milliseconds) needs.
pub fn plan(query: &str, start: i64, end: i64) -> Result<Plan> {
    plan_with(query, start, end, false)
}

/// As [`plan`], and every [`pushable`] call becomes a [`PushDown`] instead of a raw read.
pub fn plan_pushed(query: &str, start: i64, end: i64) -> Result<Plan> {
    plan_with(query, start, end, true)
}

fn plan_with(query: &str, start: i64, end: i64, push: bool) -> Result<Plan> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(PromError::bad(format!(
            "invalid parameter \"query\": longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    let expr = parser::parse(query)
        .map_err(|e| PromError::bad(format!("invalid parameter \"query\": {e}")))?;
    let mut walker = Walker {
        start,
        end,
        push,
        fetches: BTreeMap::new(),
        pushdowns: BTreeMap::new(),
    };
    walker.walk(&expr)?;
    Ok(Plan {
        expr,
        fetches: walker.fetches,
        pushdowns: walker.pushdowns,
    })
}

/// Most bytes of a query's text.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// The matchers of a series selector (`match[]` of the listing endpoints:
/// `name{label="v"}` or `{label=~"re"}`), or why `text` is not one.
pub fn series_selector(text: &str) -> Result<Vec<Matcher>> {
    let invalid = |why: String| PromError::bad(format!("invalid parameter \"match[]\": {why}"));
    match parser::parse(text).map_err(invalid)? {
        Expr::VectorSelector(vs) => {
            check_selector(&vs)?;
            Ok(matchers_of(&vs))
        }
        _ => Err(invalid(format!("{text:?} is not a series selector"))),
    }
}

/// Most bytes of one regular expression in a matcher.
pub const MAX_REGEX_BYTES: usize = 4 * 1024;

fn unsupported(what: impl std::fmt::Display) -> PromError {
    PromError::bad(format!("not supported here: {what}"))
}

/// The key of a selector's read: its matchers, sorted, without offset.
pub fn selector_key(vs: &VectorSelector) -> String {
    let mut parts: Vec<String> = matchers_of(vs).iter().map(|m| m.to_string()).collect();
    parts.sort();
    parts.join(",")
}

/// A selector's matchers, its metric name as one of them.
pub fn matchers_of(vs: &VectorSelector) -> Vec<Matcher> {
    let mut matchers = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name
        && !matchers.iter().any(|m| m.name == METRIC_NAME)
    {
        matchers.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
    }
    matchers
}

/// A selector's offset in milliseconds (negative for `offset -5m`).
pub fn offset_millis(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

fn check_selector(vs: &VectorSelector) -> Result<()> {
    if vs.at.is_some() {
        return Err(unsupported("the @ modifier"));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported("`or` between label matchers"));
    }
    for m in &vs.matchers.matchers {
        if matches!(m.op, MatchOp::Re(_) | MatchOp::NotRe(_)) && m.value.len() > MAX_REGEX_BYTES {
            return Err(PromError::bad(format!(
                "a regular expression of {} bytes; at most {MAX_REGEX_BYTES}",
                m.value.len()
            )));
        }
    }
    Ok(())
}

struct Walker {
    start: i64,
    end: i64,
    push: bool,
    fetches: BTreeMap<String, Fetch>,
    pushdowns: BTreeMap<String, PushDown>,
}

impl Walker {
    fn add_fetch(&mut self, vs: &VectorSelector, back: i64) -> Result<()> {
        check_selector(vs)?;
        let offset = offset_millis(&vs.offset);
        let from = self.start.saturating_sub(offset).saturating_sub(back);
        let to = self.end.saturating_sub(offset);
        self.fetches
            .entry(selector_key(vs))
            .and_modify(|f| {
                f.from = f.from.min(from);
                f.to = f.to.max(to);
            })
            .or_insert_with(|| Fetch {
                matchers: matchers_of(vs),
                from,
                to,
            });
        Ok(())
    }

    fn walk(&mut self, expr: &Expr) -> Result<()> {
        match expr {
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
            Expr::Paren(p) => self.walk(&p.expr),
            Expr::Unary(u) => self.walk(&u.expr),
            Expr::VectorSelector(vs) if self.push => {
                // A series' latest sample in the lookback is `last_over_time` over it.
                check_selector(vs)?;
                let window = promql_parser::parser::MatrixSelector {
                    vs: vs.clone(),
                    range: std::time::Duration::from_millis(LOOKBACK_MILLIS as u64),
                };
                self.pushdowns
                    .entry(pushdown_key(expr))
                    .or_insert(PushDown {
                        text: format!("last_over_time({window})"),
                    });
                Ok(())
            }
            Expr::VectorSelector(vs) => self.add_fetch(vs, LOOKBACK_MILLIS),
            Expr::MatrixSelector(ms) => self.add_fetch(&ms.vs, ms.range.as_millis() as i64),
            Expr::Subquery(_) => Err(unsupported("subquery (`expr[range:step]`)")),
            Expr::Extension(_) => Err(unsupported("extension expression")),
            Expr::Call(call) => {
                let name = call.func.name;
                if !is_function(name) {
                    return Err(unsupported(format!("function {name}")));
                }
                if self.push && pushable(call) {
                    for arg in &call.args.args {
                        if let Expr::MatrixSelector(ms) = &**arg {
                            check_selector(&ms.vs)?;
                        }
                    }
                    let key = pushdown_key(expr);
                    self.pushdowns
                        .entry(key.clone())
                        .or_insert(PushDown { text: key });
                    return Ok(());
                }
                for arg in &call.args.args {
                    self.walk(arg)?;
                }
                Ok(())
            }
            Expr::Aggregate(agg) => {
                if !AGGREGATIONS.contains(&agg.op.id()) {
                    return Err(unsupported(format!("aggregation {}", agg.op)));
                }
                if self.push
                    && let Some(vs) = pushable_aggregate(agg)
                {
                    check_selector(vs)?;
                    let key = pushdown_key(expr);
                    self.pushdowns
                        .entry(key.clone())
                        .or_insert(PushDown { text: key });
                    return Ok(());
                }
                if let Some(param) = &agg.param {
                    self.walk(param)?;
                }
                self.walk(&agg.expr)
            }
            Expr::Binary(bin) => {
                if !OPERATORS.contains(&bin.op.id()) {
                    return Err(unsupported(format!("operator {}", bin.op)));
                }
                if let Some(modifier) = &bin.modifier {
                    match modifier.card {
                        VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany => {}
                        _ => return Err(unsupported("group_left/group_right")),
                    }
                    if modifier.fill_values.lhs.is_some() || modifier.fill_values.rhs.is_some() {
                        return Err(unsupported("fill modifiers"));
                    }
                }
                self.walk(&bin.lhs)?;
                self.walk(&bin.rhs)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: &str) -> String {
        plan(query, 0, 0).unwrap_err().to_string()
    }

    #[test]
    fn unsupported_constructs_are_named() {
        assert!(refused("rate(m[5m:1m])").contains("subquery"));
        assert!(refused("a or b").contains("operator or"));
        assert!(refused("a and b").contains("operator and"));
        assert!(refused("histogram_quantile(0.9, m)").contains("function histogram_quantile"));
        assert!(refused("label_replace(m, \"a\", \"b\", \"c\", \"d\")").contains("label_replace"));
        assert!(refused("stddev(m)").contains("aggregation stddev"));
        assert!(refused("a * on(x) group_left b").contains("group_left"));
        assert!(refused("m @ 100").contains("@ modifier"));
        assert!(refused("m{").contains("invalid parameter \"query\""));
    }

    #[test]
    fn reads_cover_every_use_of_a_selector() {
        let p = plan(
            "rate(m{a=\"1\"}[5m]) + m{a=\"1\"} offset 1h",
            10_000_000,
            20_000_000,
        )
        .unwrap();
        assert_eq!(p.fetches.len(), 1);
        let f = p.fetches.values().next().unwrap();
        assert_eq!(f.from, 10_000_000 - 3_600_000 - LOOKBACK_MILLIS);
        assert_eq!(f.to, 20_000_000);
        assert_eq!(f.metric(), Some("m"));
        assert_eq!(f.exact_labels().collect::<Vec<_>>(), vec![("a", "1")]);
    }

    #[test]
    fn selectors_differing_in_matchers_are_read_apart() {
        let p = plan("m{a=\"1\"} / m{a=~\"1|2\"}", 0, 0).unwrap();
        assert_eq!(p.fetches.len(), 2);
        let p = plan("{__name__=\"m\", a!=\"x\"}", 0, 0).unwrap();
        let f = p.fetches.values().next().unwrap();
        assert_eq!(f.metric(), Some("m"));
        assert_eq!(f.exact_labels().count(), 0);
    }

    #[test]
    fn range_functions_of_selectors_are_pushed_down() {
        let p = plan_pushed(
            "sum by (dc) (rate(m{a=~\"x.*\"}[5m])) / quantile_over_time(0.9, g[1m]) + abs(h)",
            0,
            0,
        )
        .unwrap();
        let keys: Vec<&String> = p.pushdowns.keys().collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(p.pushdowns.values().all(|d| plan(&d.text, 0, 0).is_ok()));
        // The sum of rates goes down whole: the stores send partial sums per group.
        assert!(
            keys.iter().any(|k| k.starts_with("sum by (dc) (rate(")),
            "{keys:?}"
        );
        // `h` too, as the latest sample in the lookback; nothing is read raw.
        assert!(p.fetches.is_empty());
        assert_eq!(
            p.pushdowns.get("h").map(|d| d.text.as_str()),
            Some("last_over_time(h[5m])")
        );
        let p = plan_pushed("m{a=\"1\"} offset 1h", 0, 0).unwrap();
        assert_eq!(
            p.pushdowns.values().next().map(|d| d.text.as_str()),
            Some("last_over_time(m{a=\"1\"}[5m] offset 1h)")
        );
        // A range selector outside a function (an instant query's matrix) is read raw.
        let p = plan_pushed("m[5m]", 0, 0).unwrap();
        assert!(p.pushdowns.is_empty());
        assert_eq!(p.fetches.len(), 1);
        // A quantile's partial states do not merge: only its argument goes down.
        let p = plan_pushed("quantile by (dc) (0.5, rate(m[5m]))", 0, 0).unwrap();
        assert!(p.pushdowns.keys().all(|k| k.starts_with("rate(")));
        // An aggregation of a selector goes down whole too.
        let p = plan_pushed("max by (dc) (m{a=\"1\"})", 0, 0).unwrap();
        assert_eq!(p.pushdowns.len(), 1);
        assert!(p.pushdowns.keys().all(|k| k.starts_with("max by (dc) (m")));
        // Without pushing, everything is read raw.
        let p = plan("rate(m[5m])", 0, 0).unwrap();
        assert!(p.pushdowns.is_empty());
        assert_eq!(p.fetches.len(), 1);
    }

    #[test]
    fn regexes_are_bounded() {
        let long = format!("m{{a=~\"{}\"}}", "x".repeat(MAX_REGEX_BYTES + 1));
        assert!(refused(&long).contains("regular expression"));
    }
}
