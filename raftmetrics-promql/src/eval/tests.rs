use super::*;
use crate::plan::plan;

const S: i64 = 1_000; // one second in ms

/// A series `name{labels}` with samples `(seconds, value)`.
fn series(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
    let mut l: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert(METRIC_NAME.into(), name.into());
    Series {
        labels: l,
        timestamps: samples.iter().map(|(t, _)| t * 1_000_000).collect(),
        values: samples.iter().map(|(_, v)| *v).collect(),
    }
}

/// Evaluates `query` at `t` seconds over `stored`, each selector reading the series its
/// matchers select.
fn at(query: &str, stored: &[Series], t: i64) -> Value {
    let p = plan(query, t * S, t * S).unwrap();
    let data = p
        .fetches
        .iter()
        .map(|(key, f)| {
            (
                key.clone(),
                stored
                    .iter()
                    .filter(|s| f.matches(&s.labels))
                    .cloned()
                    .collect(),
            )
        })
        .collect();
    instant(&p.expr, &Inputs::raw(data), t * S).unwrap()
}

fn values(v: Value) -> Vec<(String, f64)> {
    let Value::Vector(samples) = v else {
        panic!("not a vector: {v:?}")
    };
    let mut out: Vec<(String, f64)> = samples
        .into_iter()
        .map(|s| (show(&s.labels), s.value))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn one(v: Value) -> f64 {
    let vs = values(v);
    assert_eq!(vs.len(), 1, "{vs:?}");
    vs[0].1
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} != {b}");
}

#[test]
fn lookback_is_inclusive_and_five_minutes() {
    let s = [series("m", &[], &[(100, 1.0), (200, 2.0)])];
    assert_eq!(one(at("m", &s, 200)), 2.0);
    assert_eq!(one(at("m", &s, 199)), 1.0);
    assert_eq!(one(at("m", &s, 500)), 2.0);
    assert!(values(at("m", &s, 501)).is_empty());
    assert!(values(at("m", &s, 99)).is_empty());
    assert_eq!(one(at("m offset 100s", &s, 300)), 2.0);
}

#[test]
fn rate_extrapolates_as_prometheus_does() {
    // Samples every 10 s from 10 to 50 s, +10 each: a 60 s window at 60 s starts at 0.
    let s = [series(
        "c",
        &[],
        &[(10, 10.0), (20, 20.0), (30, 30.0), (40, 40.0), (50, 50.0)],
    )];
    // 40 over 40 s sampled; 10 s to each end, under 1.1 × 10 s: extrapolated to 60 s,
    // but the counter would reach zero 10 s before the first sample: to 60 s.
    close(one(at("increase(c[60s])", &s, 60)), 60.0);
    close(one(at("rate(c[60s])", &s, 60)), 1.0);
    // As a gauge there is no zero bound: also 60.
    close(one(at("delta(c[60s])", &s, 60)), 60.0);
    // Far ends: 30 s of window beyond the last sample extrapolate only half an interval.
    // At 80 s: samples 20 to 50 s, 0 s to the start, 30 s past the last: 30 × 35 / 30.
    close(one(at("increase(c[60s])", &s, 80)), 35.0);
}

#[test]
fn counter_resets_are_added_back() {
    let s = [series(
        "c",
        &[],
        &[(10, 5.0), (20, 8.0), (30, 2.0), (40, 4.0)],
    )];
    // Increase: 4 - 5 + 8 (the reset) = 7 over 30 s; ends 10 s and 0 s away.
    let sampled = 30.0;
    let average = 10.0;
    // Zero bound: 30 × 5/7 = 21.4 > 10, so the start extends 10 s (< 11).
    let expected = 7.0 * (sampled + 10.0 + 0.0) / sampled;
    let _ = average;
    close(one(at("increase(c[40s])", &s, 40)), expected);
    close(one(at("irate(c[40s])", &s, 40)), 0.2);
    close(one(at("irate(c[25s])", &s, 30)), 0.2);
}

#[test]
fn over_time_functions() {
    let s = [series(
        "g",
        &[("a", "x")],
        &[(10, 3.0), (20, 1.0), (30, 2.0), (40, 10.0)],
    )];
    assert_eq!(one(at("count_over_time(g[30s])", &s, 40)), 4.0);
    assert_eq!(one(at("count_over_time(g[29s])", &s, 40)), 3.0);
    assert_eq!(one(at("sum_over_time(g[30s])", &s, 40)), 16.0);
    assert_eq!(one(at("avg_over_time(g[30s])", &s, 40)), 4.0);
    assert_eq!(one(at("min_over_time(g[30s])", &s, 40)), 1.0);
    assert_eq!(one(at("max_over_time(g[30s])", &s, 40)), 10.0);
    assert_eq!(one(at("quantile_over_time(0.5, g[30s])", &s, 40)), 2.5);
    // last_over_time keeps the name; the others drop it.
    assert_eq!(
        values(at("last_over_time(g[30s])", &s, 40)),
        vec![("{__name__=\"g\", a=\"x\"}".to_string(), 10.0)]
    );
    assert_eq!(
        values(at("max_over_time(g[30s])", &s, 40)),
        vec![("{a=\"x\"}".to_string(), 10.0)]
    );
}

fn hosts() -> Vec<Series> {
    vec![
        series("cpu", &[("host", "a"), ("dc", "east")], &[(10, 1.0)]),
        series("cpu", &[("host", "b"), ("dc", "east")], &[(10, 5.0)]),
        series("cpu", &[("host", "c"), ("dc", "west")], &[(10, 3.0)]),
        series("mem", &[("host", "a"), ("dc", "east")], &[(10, 10.0)]),
        series("mem", &[("host", "b"), ("dc", "east")], &[(10, 20.0)]),
    ]
}

#[test]
fn aggregations_group_by_and_without() {
    let s = hosts();
    assert_eq!(
        values(at("sum by (dc) (cpu)", &s, 10)),
        vec![("{dc=\"east\"}".into(), 6.0), ("{dc=\"west\"}".into(), 3.0)]
    );
    assert_eq!(
        values(at("max without (host) (cpu)", &s, 10)),
        vec![("{dc=\"east\"}".into(), 5.0), ("{dc=\"west\"}".into(), 3.0)]
    );
    assert_eq!(one(at("count(cpu)", &s, 10)), 3.0);
    assert_eq!(one(at("avg(cpu)", &s, 10)), 3.0);
    assert_eq!(one(at("quantile(0.5, cpu)", &s, 10)), 3.0);
    let top = values(at("topk(2, cpu)", &s, 10));
    assert_eq!(top.len(), 2);
    assert!(top.iter().all(|(l, _)| l.contains("__name__")));
    assert_eq!(top.iter().map(|t| t.1).sum::<f64>(), 8.0);
    assert_eq!(values(at("bottomk(1, cpu)", &s, 10))[0].1, 1.0);
    assert!(values(at("topk(0, cpu)", &s, 10)).is_empty());
}

#[test]
fn binary_operators_match_and_name_as_prometheus() {
    let s = hosts();
    // Comparison filters and keeps the name; bool drops it.
    let gt = values(at("cpu > 2", &s, 10));
    assert_eq!(gt.len(), 2);
    assert!(gt[0].0.contains("__name__"));
    let b = values(at("cpu > bool 2", &s, 10));
    assert_eq!(b.len(), 3);
    assert!(!b[0].0.contains("__name__"));
    // Scalar on the left of a comparison keeps the vector's value.
    assert_eq!(
        values(at("2 < cpu", &s, 10))
            .iter()
            .map(|v| v.1)
            .sum::<f64>(),
        8.0
    );
    // One-to-one: mem / cpu per host.
    assert_eq!(
        values(at("mem / cpu", &s, 10)),
        vec![
            ("{dc=\"east\", host=\"a\"}".into(), 10.0),
            ("{dc=\"east\", host=\"b\"}".into(), 4.0)
        ]
    );
    assert_eq!(
        values(at("mem - on(host) cpu", &s, 10)),
        vec![("{host=\"a\"}".into(), 9.0), ("{host=\"b\"}".into(), 15.0)]
    );
    assert_eq!(
        values(at("mem - ignoring(dc) cpu", &s, 10)),
        vec![("{host=\"a\"}".into(), 9.0), ("{host=\"b\"}".into(), 15.0)]
    );
    assert_eq!(at("1 + 2 * 3", &s, 10), Value::Scalar(7.0));
    assert_eq!(at("2 > bool 1", &s, 10), Value::Scalar(1.0));
    // Many on one side of a one-to-one match is an error.
    let p = plan("cpu + on(dc) mem", 10 * S, 10 * S).unwrap();
    let data: Data = p
        .fetches
        .iter()
        .map(|(k, f)| {
            (
                k.clone(),
                s.iter().filter(|x| f.matches(&x.labels)).cloned().collect(),
            )
        })
        .collect();
    assert!(matches!(
        instant(&p.expr, &Inputs::raw(data), 10 * S),
        Err(PromError::Execution(_))
    ));
}

#[test]
fn functions_and_scalars() {
    let s = hosts();
    assert_eq!(one(at("abs(-cpu{host=\"b\"})", &s, 10)), 5.0);
    assert_eq!(one(at("clamp_max(cpu{host=\"b\"}, 4)", &s, 10)), 4.0);
    assert_eq!(one(at("clamp_min(cpu{host=\"a\"}, 4)", &s, 10)), 4.0);
    assert_eq!(one(at("round(cpu{host=\"b\"} / 3, 0.5)", &s, 10)), 1.5);
    assert_eq!(at("time()", &s, 10), Value::Scalar(10.0));
    assert_eq!(at("scalar(cpu{host=\"c\"})", &s, 10), Value::Scalar(3.0));
    assert!(matches!(at("scalar(cpu)", &s, 10), Value::Scalar(v) if v.is_nan()));
    assert_eq!(values(at("vector(2)", &s, 10)), vec![("{}".into(), 2.0)]);
    assert_eq!(
        values(at("cpu{host=~\"a|c\", dc!=\"west\"}", &s, 10)).len(),
        1
    );
    assert_eq!(values(at("cpu{host!~\"a.*\"}", &s, 10)).len(), 2);
    assert_eq!(
        values(at("{__name__=~\"cpu|mem\", host=\"a\"}", &s, 10)).len(),
        2
    );
}

#[test]
fn range_queries_gather_steps_per_series() {
    let s = [series(
        "m",
        &[("a", "1")],
        &[(0, 1.0), (60, 2.0), (400, 3.0)],
    )];
    let p = plan("m", 0, 600 * S).unwrap();
    let data: Data = p
        .fetches
        .iter()
        .map(|(k, f)| {
            (
                k.clone(),
                s.iter().filter(|x| f.matches(&x.labels)).cloned().collect(),
            )
        })
        .collect();
    let r = range(&p.expr, &Inputs::raw(data.clone()), 0, 600 * S, 120 * S).unwrap();
    assert_eq!(r.len(), 1);
    // 0: 1; 120: 2; 240: 2; 360: 2 (300 s back reaches 60); 480: 3; 600: 3.
    let points: Vec<(i64, f64)> = r[0].1.clone();
    assert_eq!(
        points,
        vec![
            (0, 1.0),
            (120_000, 2.0),
            (240_000, 2.0),
            (360_000, 2.0),
            (480_000, 3.0),
            (600_000, 3.0)
        ]
    );
    let p = plan("m[1m]", 0, 0).unwrap();
    let err = range(&p.expr, &Inputs::raw(data), 0, 60 * S, S).unwrap_err();
    assert!(err.to_string().contains("range vector"), "{err}");
}

#[test]
fn dropping_names_that_collide_is_an_error() {
    let s = [
        series("a", &[("x", "1")], &[(10, 1.0)]),
        series("b", &[("x", "1")], &[(10, 2.0)]),
    ];
    let p = plan("abs({x=\"1\"})", 10 * S, 10 * S).unwrap();
    let data: Data = p
        .fetches
        .iter()
        .map(|(k, f)| {
            (
                k.clone(),
                s.iter().filter(|x| f.matches(&x.labels)).cloned().collect(),
            )
        })
        .collect();
    assert!(matches!(
        instant(&p.expr, &Inputs::raw(data), 10 * S),
        Err(PromError::Execution(_))
    ));
}

#[test]
fn quantile_interpolates_between_ranks() {
    assert_eq!(quantile(0.5, &mut [1.0, 2.0, 3.0, 4.0]), 2.5);
    assert_eq!(quantile(0.0, &mut [3.0, 1.0]), 1.0);
    assert_eq!(quantile(1.0, &mut [3.0, 1.0]), 3.0);
    assert_eq!(quantile(1.5, &mut [3.0, 1.0]), f64::INFINITY);
    assert!(quantile(0.5, &mut []).is_nan());
}

#[test]
fn pushed_down_calls_answer_as_evaluated_in_place() {
    let stored = [
        series(
            "c",
            &[("host", "a"), ("dc", "e")],
            &[(0, 0.0), (30, 30.0), (60, 90.0), (90, 100.0)],
        ),
        series(
            "c",
            &[("host", "b"), ("dc", "e")],
            &[(0, 5.0), (30, 10.0), (60, 2.0), (90, 8.0)],
        ),
        series(
            "c",
            &[("host", "c"), ("dc", "w")],
            &[(10, 1.0), (40, 4.0), (70, 9.0)],
        ),
    ];
    check_pushed(
        &stored,
        "sum by (dc) (rate(c[1m])) * 2 + on(dc) max_over_time(c{host=\"c\"}[2m])",
        2,
    );
    for agg in ["sum", "avg", "min", "max", "count"] {
        check_pushed(
            &stored,
            &format!("{agg} without (host) (increase(c[1m]))"),
            1,
        );
        check_pushed(&stored, &format!("{agg} (max_over_time(c[2m])) / 2"), 1);
        check_pushed(&stored, &format!("{agg} by (dc) (rate(c[1m])) > 0"), 1);
    }
    check_pushed(&stored, "topk(1, rate(c[1m]))", 1);
    // Bare selectors: as the latest sample in the lookback, alone and aggregated.
    check_pushed(&stored, "c", 1);
    check_pushed(&stored, "c offset 30s / 2", 1);
    for agg in ["sum", "avg", "min", "max", "count"] {
        check_pushed(&stored, &format!("{agg} by (dc) (c)"), 1);
        check_pushed(&stored, &format!("{agg} without (host) (c) - 1"), 1);
    }
    check_pushed(&stored, "c - on(host) c offset 1m", 2);
}

/// `query` evaluated with its `pushdowns` pushable parts pushed down to stores that hold
/// one series each answers as evaluated in place.
fn check_pushed(stored: &[Series], query: &str, pushdowns: usize) {
    use crate::plan::plan_pushed;
    let (start, end, step) = (60 * S, 120 * S, 15 * S);
    let raw = |p: &crate::plan::Plan, series: &[Series]| -> Data {
        p.fetches
            .iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    series
                        .iter()
                        .filter(|x| f.matches(&x.labels))
                        .cloned()
                        .collect(),
                )
            })
            .collect()
    };
    let whole = plan(query, start, end).unwrap();
    let expected = range(
        &whole.expr,
        &Inputs::raw(raw(&whole, stored)),
        start,
        end,
        step,
    )
    .unwrap();
    let pushed = plan_pushed(query, start, end).unwrap();
    assert_eq!(pushed.pushdowns.len(), pushdowns, "{query}");
    let mut inputs = Inputs::raw(raw(&pushed, stored));
    for (key, down) in &pushed.pushdowns {
        // Each series in a store of its own, as partitions would hold them.
        for one in stored {
            let p = plan(&down.text, start, end).unwrap();
            let part = super::pushed(
                &p.expr,
                &Inputs::raw(raw(&p, std::slice::from_ref(one))),
                start,
                end,
                step,
            )
            .unwrap();
            inputs.add_pushed(key, part);
        }
    }
    let got = range(&pushed.expr, &inputs, start, end, step).unwrap();
    assert!(!expected.is_empty(), "{query}");
    assert_eq!(got.len(), expected.len(), "{query}");
    for ((gl, gp), (el, ep)) in got.iter().zip(&expected) {
        assert_eq!(gl, el, "{query}");
        assert_eq!(gp.len(), ep.len(), "{query}");
        for (g, e) in gp.iter().zip(ep) {
            assert_eq!(g.0, e.0, "{query}");
            // Partial sums merge in another order.
            assert!(
                (g.1 - e.1).abs() <= 1e-12 * e.1.abs().max(1.0),
                "{query}: {g:?} {e:?}"
            );
        }
    }
}

#[test]
fn range_functions_by_series_answer_as_step_by_step() {
    // Irregular samples with a counter reset and a gap.
    let stored = [
        series(
            "c",
            &[("host", "a")],
            &[
                (0, 1.0),
                (7, 4.0),
                (19, 9.0),
                (31, 2.0),
                (40, 6.0),
                (200, 8.0),
                (211, 15.0),
            ],
        ),
        series(
            "c",
            &[("host", "b")],
            &[(3, 10.0), (13, 10.0), (23, 13.5), (33, 20.0)],
        ),
    ];
    let (start, end, step) = (0, 240 * S, 7 * S);
    for f in crate::plan::RANGE_FUNCTIONS {
        let query = if *f == "quantile_over_time" {
            "quantile_over_time(0.3, c[25s] offset 2s)".to_string()
        } else {
            format!("{f}(c[25s] offset 2s)")
        };
        let p = plan(&query, start, end).unwrap();
        let data: Data = p
            .fetches
            .iter()
            .map(|(k, fe)| {
                (
                    k.clone(),
                    stored
                        .iter()
                        .filter(|x| fe.matches(&x.labels))
                        .cloned()
                        .collect(),
                )
            })
            .collect();
        let inputs = Inputs::raw(data);
        let by_series = range(&p.expr, &inputs, start, end, step).unwrap();
        let mut by_step: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut t = start;
        while t <= end {
            if let Value::Vector(samples) = instant(&p.expr, &inputs, t).unwrap() {
                for s in samples {
                    by_step.entry(s.labels).or_default().push((t, s.value));
                }
            }
            t += step;
        }
        let by_step: RangeResult = by_step.into_iter().collect();
        assert!(!by_series.is_empty(), "{query}");
        assert_eq!(by_series, by_step, "{query}");
    }
}
