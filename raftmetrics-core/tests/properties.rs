//! Property tests: merging is order-free, validation refuses what it must, and hostile
//! strings are only ever data.

use proptest::prelude::*;
use raftmetrics_core::aggregate::{PartialAggregate, PartialState};
use raftmetrics_core::model::{Limits, validate_batch};
use raftmetrics_core::store::conformance::HOSTILE;
use raftmetrics_core::{Agg, Engine, EngineConfig, Error, Point, Query, SketchConfig, Timestamp};

fn now() -> Timestamp {
    Timestamp::parse("2026-01-01T00:00:00Z").unwrap()
}

/// Group, bucket, timestamp (a few, so that ties are common), value.
type Obs = (u8, u8, u8, f64);

fn aggregate(obs: &[Obs]) -> PartialAggregate {
    let cfg = SketchConfig::default();
    let mut p = PartialAggregate::default();
    for &(g, b, t, v) in obs {
        p.state_mut(vec![Some(format!("g{g}"))], i64::from(b))
            .add_at(&cfg, i64::from(t), v, true);
    }
    p
}

fn assert_same(a: &PartialAggregate, b: &PartialAggregate) {
    assert_eq!(
        a.groups.keys().collect::<Vec<_>>(),
        b.groups.keys().collect::<Vec<_>>()
    );
    for (g, buckets) in &a.groups {
        for (k, x) in buckets {
            let y: &PartialState = &b.groups[g][k];
            assert_eq!((x.count, x.min, x.max), (y.count, y.min, y.max));
            assert_eq!((x.last, x.first), (y.last, y.first));
            assert_eq!(x.sketch, y.sketch);
            assert!((x.sum - y.sum).abs() <= 1e-9 * x.sum.abs().max(1.0));
        }
    }
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e6..1e6f64,
        Just(0.0),
        (1e-300..1e300f64),
        (-1e300..-1e-300f64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn merge_is_associative_and_commutative(
        a in prop::collection::vec((0u8..4, 0u8..3, 0u8..5, value()), 0..60),
        b in prop::collection::vec((0u8..4, 0u8..3, 0u8..5, value()), 0..60),
        c in prop::collection::vec((0u8..4, 0u8..3, 0u8..5, value()), 0..60),
    ) {
        let (pa, pb, pc) = (aggregate(&a), aggregate(&b), aggregate(&c));
        let mut left = pa.clone();
        left.merge(pb.clone());
        left.merge(pc.clone());
        let mut bc = pb.clone();
        bc.merge(pc.clone());
        let mut right = pa.clone();
        right.merge(bc);
        let mut swapped = pc;
        swapped.merge(pa);
        swapped.merge(pb);
        let all: Vec<Obs> = a.iter().chain(&b).chain(&c).copied().collect();
        let whole = aggregate(&all);
        assert_same(&left, &right);
        assert_same(&left, &swapped);
        assert_same(&left, &whole);
        // Finalized percentiles do not depend on the merge order either.
        let cfg = SketchConfig::default();
        for (g, buckets) in &left.groups {
            for (k, s) in buckets {
                prop_assert_eq!(s.value(Agg::P95, &cfg), swapped.groups[g][k].value(Agg::P95, &cfg));
                prop_assert_eq!(s.value(Agg::Last, &cfg), swapped.groups[g][k].value(Agg::Last, &cfg));
                prop_assert_eq!(s.value(Agg::First, &cfg), swapped.groups[g][k].value(Agg::First, &cfg));
            }
        }
    }

    #[test]
    fn validation_refuses_non_finite_values(v in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]) {
        let err = validate_batch(vec![Point::new("m", v)], now(), &Limits::default()).unwrap_err();
        prop_assert!(matches!(err, Error::Validation(ref f) if f[0].field == "points[0].value"));
    }

    #[test]
    fn validation_accepts_finite_values(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
        prop_assert!(validate_batch(vec![Point::new("m", v)], now(), &Limits::default()).is_ok());
    }

    #[test]
    fn metric_names_follow_the_pattern(name in "[a-zA-Z0-9_.-]{1,255}", bad in "[a-z]{0,5}[^a-zA-Z0-9_.-][a-z]{0,5}") {
        prop_assert!(validate_batch(vec![Point::new(name, 1.0)], now(), &Limits::default()).is_ok());
        prop_assert!(validate_batch(vec![Point::new(bad.clone(), 1.0)], now(), &Limits::default()).is_err());
        // In a query a comma separates metrics: `a,b` names two good ones (`a,a` one twice,
        // `a,` or `,b` an empty one).
        let parts: Vec<&str> = bad.split(',').collect();
        let two_good = parts.len() == 2
            && parts[0] != parts[1]
            && parts
                .iter()
                .all(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_lowercase()));
        prop_assert_eq!(Query::from_params(&[("metric", bad.as_str())]).is_err(), !two_good);
    }

    #[test]
    fn oversized_tags_are_refused(extra in 1usize..100, count in 33usize..40) {
        let limits = Limits::default();
        let long = Point::new("m", 1.0).tag("host", "x".repeat(limits.max_tag_value_bytes + extra));
        prop_assert!(validate_batch(vec![long], now(), &limits).is_err());
        let long_key = Point::new("m", 1.0).tag("k".repeat(limits.max_tag_key_bytes + extra), "v");
        prop_assert!(validate_batch(vec![long_key], now(), &limits).is_err());
        let mut many = Point::new("m", 1.0);
        for i in 0..count {
            many = many.tag(format!("t{i}"), "v");
        }
        prop_assert!(validate_batch(vec![many], now(), &limits).is_err());
    }
}

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(HOSTILE.to_vec()).prop_map(str::to_string),
        "[a-zA-Z0-9 '\";%_()\\\\/=-]{1,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn hostile_strings_are_only_data(s in hostile()) {
        prop_assume!(s.trim() == s && !s.contains(','));
        let engine = Engine::open_in_memory(EngineConfig::default()).unwrap();
        let t = Timestamp::parse("2025-06-01T00:00:00Z").unwrap();
        engine.insert(vec![
            Point::new("cpu", 1.0).at(t).tag("host", s.as_str()).tag("env", s.as_str()),
            Point::new("cpu", 2.0).at(t).tag("host", "plain").tag("env", "prod"),
            Point::new("cpu", 4.0).at(t).tag("host", "other").tag("env", "dev"),
        ]).unwrap();
        for param in ["hosts", "tags"] {
            let value = if param == "tags" { format!("env:{s}") } else { s.clone() };
            let q = Query::from_params(&[("metric", "cpu"), (param, value.as_str()), ("agg", "count,sum")]).unwrap();
            let r = engine.query(&q).unwrap();
            prop_assert_eq!(r.get(Agg::Count), Some(1.0), "{} = {:?}", param, s);
            prop_assert_eq!(r.get(Agg::Sum), Some(1.0));
        }
        // As a metric name it is refused (unless it is a valid name), and nothing changed.
        if Query::from_params(&[("metric", s.as_str())]).is_ok() {
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
        }
        let all = engine.query(&Query::from_params(&[("metric", "cpu"), ("agg", "count")]).unwrap()).unwrap();
        prop_assert_eq!(all.get(Agg::Count), Some(3.0));
    }
}

/// Every row of a result: the overall aggregations, each group's, each bucket's (of the
/// groups or of the whole), in the order they come.
fn rows(r: &raftmetrics_core::QueryResult) -> Vec<Vec<raftmetrics_core::aggregate::AggValue>> {
    let mut out = vec![r.aggregations.clone()];
    for g in &r.groups {
        out.push(g.aggregations.clone());
        out.extend(g.buckets.iter().map(|b| b.aggregations.clone()));
    }
    out.extend(r.buckets.iter().map(|b| b.aggregations.clone()));
    out
}

/// Points of metric `m` over two hours: host `h0..h3`, datacenter `d0`/`d1`, values from a
/// small set (so constant series and ties are common) or anywhere.
fn percentile_points() -> impl Strategy<Value = Vec<(u8, u8, u16, f64)>> {
    let value = prop_oneof![
        3 => prop::sample::select(vec![10.0, 10.0, 10.0, -2.5, 0.0, 7.25, 1e6]),
        1 => -1e4..1e4f64,
    ];
    prop::collection::vec((0u8..4, 0u8..2, 0u16..7200, value), 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A percentile is the same number whatever else the query asks, in every group, bucket
    /// and rolling window, and lies within the minimum and maximum of its row.
    #[test]
    fn percentiles_do_not_depend_on_the_other_aggregations(
        points in percentile_points(),
        shape in 0usize..4,
        window in 0usize..3,
        others in prop::sample::subsequence(vec!["avg", "min", "max", "sum", "count"], 0..=5),
        percentiles in prop::sample::subsequence(vec!["p50", "p95", "p99"], 1..=3),
    ) {
        let engine = Engine::open_in_memory(EngineConfig::default()).unwrap();
        let t0 = Timestamp::parse("2026-03-01T00:00:00Z").unwrap().as_micros();
        engine.insert(points.iter().map(|&(h, d, s, v)| {
            Point::new("m", v)
                .at(Timestamp::from_micros(t0 + i64::from(s) * 1_000_000))
                .tag("host", format!("h{h}"))
                .tag("datacenter", format!("d{d}"))
        }).collect()).unwrap();
        let mut params = vec![("metric", "m".to_string())];
        match shape {
            1 => params.push(("group_by", "host".into())),
            2 => params.push(("group_by", "datacenter".into())),
            3 => params.push(("group_by", "datacenter,host".into())),
            _ => {}
        }
        match window {
            1 => params.push(("window", "10m".into())),
            2 => {
                params.push(("window", "30m".into()));
                params.push(("rolling", "true".into()));
            }
            _ => {}
        }
        let ask = |aggs: &[&str]| {
            let mut p = params.clone();
            p.push(("agg", aggs.join(",")));
            let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
            engine.query(&Query::from_params(&p).unwrap()).unwrap()
        };
        let full = ask(&["avg", "min", "max", "sum", "count", "p50", "p95", "p99"]);
        let asked: Vec<&str> = others.iter().chain(&percentiles).copied().collect();
        let part = ask(&asked);
        let alone = ask(&percentiles);
        let (full_rows, part_rows, alone_rows) = (rows(&full), rows(&part), rows(&alone));
        prop_assert_eq!(full_rows.len(), part_rows.len());
        prop_assert_eq!(full_rows.len(), alone_rows.len());
        for ((f, p), a) in full_rows.iter().zip(&part_rows).zip(&alone_rows) {
            for name in &percentiles {
                let agg: Agg = name.parse().unwrap();
                let want = raftmetrics_core::aggregate::find(f, agg);
                prop_assert_eq!(raftmetrics_core::aggregate::find(p, agg), want, "{} with {:?}", name, asked);
                prop_assert_eq!(raftmetrics_core::aggregate::find(a, agg), want, "{} alone", name);
            }
            let get = |agg| raftmetrics_core::aggregate::find(f, agg);
            if get(Agg::Count).unwrap_or(0.0) > 0.0 {
                let chain = [Agg::Min, Agg::P50, Agg::P95, Agg::P99, Agg::Max].map(|a| get(a).unwrap());
                prop_assert!(chain.windows(2).all(|w| w[0] <= w[1]), "min <= p50 <= p95 <= p99 <= max: {:?}", chain);
            }
        }
    }
}

/// The constant series of three points answers its constant for every percentile, whatever
/// else is asked (a percentile was once above the maximum when `max` alone came with it).
#[test]
fn a_constant_series_answers_its_constant() {
    let engine = Engine::open_in_memory(EngineConfig::default()).unwrap();
    engine
        .insert(vec![
            Point::new("m", 10.0),
            Point::new("m", 10.0),
            Point::new("m", 10.0),
        ])
        .unwrap();
    for aggs in [
        "p95",
        "max,p95",
        "min,p95",
        "min,max,p95",
        "avg,p50,p95,p99",
        "count,p99",
    ] {
        let q = Query::from_params(&[("metric", "m"), ("agg", aggs)]).unwrap();
        let r = engine.query(&q).unwrap();
        for agg in q.aggs.iter().filter(|a| a.is_percentile()) {
            assert_eq!(r.get(*agg), Some(10.0), "{agg} of agg={aggs}");
        }
    }
}
