//! Data after the cpu-only use case of the Time Series Benchmark Suite (TSBS).
//!
//! A dataset has `scale` hosts. Each host has ten fixed tags ([`TAG_KEYS`]): `hostname`
//! (`host_<i>`), `region` (one of nine), `datacenter` (one of its region's zones), `rack`,
//! `os`, `arch`, `team`, `service`, `service_version` and `service_environment`, drawn once
//! from the seed. Every interval (10 s by default), every host reports one point for each of
//! the ten `usage_*` fields ([`FIELDS`]); each field is a random walk that starts uniformly in
//! [0, 100], steps by N(0, 1) and is clamped to [0, 100].
//!
//! Everything comes from the seed: the same seed and scale give the same hosts and the same
//! values, whatever the number of points asked for. Points are produced in time order
//! (interval, then host, then field), as [`Sample`]s (no strings, for the plain DuckDB
//! reference) or as API [`Point`]s (for the cluster).

use std::f64::consts::TAU;

use raftmetrics_client::PointRef;
use raftmetrics_core::{Point, Tags, Timestamp};

/// The ten CPU fields of TSBS's cpu-only use case; each is one metric.
pub const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

/// The tag keys of every host, in the column order of the reference table.
pub const TAG_KEYS: [&str; 10] = [
    "hostname",
    "region",
    "datacenter",
    "rack",
    "os",
    "arch",
    "team",
    "service",
    "service_version",
    "service_environment",
];

/// The nine regions and their datacenters (zones).
pub const REGIONS: [(&str, &[&str]); 9] = [
    (
        "us-east-1",
        &["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1e"],
    ),
    ("us-west-1", &["us-west-1a", "us-west-1b"]),
    ("us-west-2", &["us-west-2a", "us-west-2b", "us-west-2c"]),
    ("eu-west-1", &["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    ("eu-central-1", &["eu-central-1a", "eu-central-1b"]),
    ("ap-southeast-1", &["ap-southeast-1a", "ap-southeast-1b"]),
    ("ap-southeast-2", &["ap-southeast-2a", "ap-southeast-2b"]),
    ("ap-northeast-1", &["ap-northeast-1a", "ap-northeast-1c"]),
    ("sa-east-1", &["sa-east-1a", "sa-east-1b", "sa-east-1c"]),
];

const OS: [&str; 3] = ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"];
const ARCH: [&str; 2] = ["x64", "x86"];
const TEAMS: [&str; 4] = ["SF", "NYC", "LON", "CHI"];
const ENVIRONMENTS: [&str; 3] = ["production", "staging", "test"];
const RACKS: u64 = 100;
const SERVICES: u64 = 20;
const SERVICE_VERSIONS: u64 = 2;

/// Where the walks' stream is derived from the seed, apart from the hosts' stream.
const WALK_STREAM: u64 = 0x5753_414c_4b5f_5354;

/// A seeded xoshiro256** generator (seeded through SplitMix64), with normal deviates by the
/// Box–Muller transform.
#[derive(Clone, Debug)]
pub struct Rng {
    state: [u64; 4],
    /// The second deviate of the last Box–Muller pair.
    spare: Option<f64>,
}

impl Rng {
    /// A generator whose whole output is decided by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            state: [next(), next(), next(), next()],
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (bias below 2^-32 for small `n`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// One of `items`, uniformly.
    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A standard normal deviate, N(0, 1).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        self.spare = Some(r * (TAU * u2).sin());
        r * (TAU * u2).cos()
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// Number of hosts.
    pub scale: u32,
    /// Time of the first interval.
    pub start: Timestamp,
    /// Time between two reports of a host, in microseconds.
    pub interval_micros: i64,
}

impl Config {
    /// TSBS's defaults: 2016-01-01T00:00:00Z, every 10 s.
    pub fn new(seed: u64, scale: u32) -> Config {
        Config {
            seed,
            scale,
            start: Timestamp::from_micros(1_451_606_400_000_000),
            interval_micros: 10_000_000,
        }
    }
}

/// A host and its fixed tags.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    /// Tag values in [`TAG_KEYS`] order.
    pub values: [String; 10],
    /// The same tags as a map, as points carry them.
    pub tags: Tags,
}

impl Host {
    fn draw(i: u32, rng: &mut Rng) -> Host {
        let (region, zones) = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        let datacenter = rng.pick(zones);
        let rack = rng.below(RACKS).to_string();
        let arch = rng.pick(&ARCH);
        let os = rng.pick(&OS);
        let service = rng.below(SERVICES).to_string();
        let version = rng.below(SERVICE_VERSIONS).to_string();
        let environment = rng.pick(&ENVIRONMENTS);
        let team = rng.pick(&TEAMS);
        let values = [
            format!("host_{i}"),
            region.to_string(),
            datacenter.to_string(),
            rack,
            os.to_string(),
            arch.to_string(),
            team.to_string(),
            service,
            version,
            environment.to_string(),
        ];
        let tags = TAG_KEYS
            .iter()
            .zip(values.iter())
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Host { values, tags }
    }

    /// The `hostname` tag.
    #[cfg(test)]
    pub fn hostname(&self) -> &str {
        &self.values[0]
    }

    /// The `datacenter` tag.
    #[cfg(test)]
    pub fn datacenter(&self) -> &str {
        &self.values[2]
    }
}

/// One generated value, before it becomes a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Index into [`Dataset::hosts`].
    pub host: u32,
    /// Index into [`FIELDS`].
    pub field: u8,
    /// Microseconds since the epoch.
    pub ts: i64,
    pub value: f64,
}

/// The hosts of a configuration, and the samples of any range of intervals.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub config: Config,
    pub hosts: Vec<Host>,
}

impl Dataset {
    pub fn new(config: Config) -> Dataset {
        let mut rng = Rng::new(config.seed);
        let hosts = (0..config.scale).map(|i| Host::draw(i, &mut rng)).collect();
        Dataset { config, hosts }
    }

    /// Points in one interval: one per host and field.
    pub fn points_per_interval(&self) -> u64 {
        u64::from(self.config.scale) * FIELDS.len() as u64
    }

    /// Whole intervals in `points` points (rounded down, at least one).
    pub fn intervals_for(&self, points: u64) -> u64 {
        (points / self.points_per_interval()).max(1)
    }

    /// Start of interval `i`.
    pub fn time_of(&self, interval: u64) -> Timestamp {
        Timestamp::from_micros(
            self.config.start.as_micros() + interval as i64 * self.config.interval_micros,
        )
    }

    /// The samples of intervals `first..first + count`, in time order. The walks run from
    /// interval 0, so a range continues exactly where an earlier one stopped.
    pub fn samples(&self, first: u64, count: u64) -> Samples<'_> {
        let mut rng = Rng::new(self.config.seed ^ WALK_STREAM);
        let mut level: Vec<f64> = (0..self.points_per_interval())
            .map(|_| rng.next_f64() * 100.0)
            .collect();
        for _ in 0..first {
            for l in level.iter_mut() {
                *l = step(*l, &mut rng);
            }
        }
        Samples {
            dataset: self,
            rng,
            level,
            interval: first,
            end: first + count,
            slot: 0,
        }
    }

    /// The API point of a sample.
    pub fn point(&self, s: &Sample) -> Point {
        let p = self.point_ref(s);
        Point {
            metric: p.metric.to_owned(),
            value: p.value,
            timestamp: p.timestamp,
            tags: p.tags.clone(),
            partition_key: None,
        }
    }

    /// The API point of a sample, borrowing its metric and its host's tags.
    pub fn point_ref(&self, s: &Sample) -> PointRef<'_> {
        PointRef {
            metric: FIELDS[usize::from(s.field)],
            value: s.value,
            timestamp: Some(Timestamp::from_micros(s.ts)),
            tags: &self.hosts[s.host as usize].tags,
            partition_key: None,
        }
    }
}

fn step(level: f64, rng: &mut Rng) -> f64 {
    (level + rng.normal()).clamp(0.0, 100.0)
}

/// The samples of a range of intervals; see [`Dataset::samples`].
pub struct Samples<'a> {
    dataset: &'a Dataset,
    rng: Rng,
    /// Current value of every (host, field) walk, host-major.
    level: Vec<f64>,
    interval: u64,
    end: u64,
    /// Next (host, field) slot within the interval.
    slot: usize,
}

impl Samples<'_> {
    /// Up to `n` next samples (empty when done).
    pub fn take_batch(&mut self, n: usize) -> Vec<Sample> {
        self.by_ref().take(n).collect()
    }
}

impl Iterator for Samples<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        if self.interval >= self.end {
            return None;
        }
        let slot = self.slot;
        let value = self.level[slot];
        self.level[slot] = step(value, &mut self.rng);
        let sample = Sample {
            host: (slot / FIELDS.len()) as u32,
            field: (slot % FIELDS.len()) as u8,
            ts: self.dataset.time_of(self.interval).as_micros(),
            value,
        };
        self.slot += 1;
        if self.slot == self.level.len() {
            self.slot = 0;
            self.interval += 1;
        }
        Some(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(seed: u64) -> Dataset {
        Dataset::new(Config::new(seed, 7))
    }

    #[test]
    fn the_same_seed_gives_the_same_points() {
        let a: Vec<Sample> = dataset(3).samples(0, 50).collect();
        let b: Vec<Sample> = dataset(3).samples(0, 50).collect();
        assert_eq!(a, b);
        assert_eq!(dataset(3).hosts, dataset(3).hosts);
        let c: Vec<Sample> = dataset(4).samples(0, 50).collect();
        assert_ne!(a, c);
        // A later range continues the walks exactly.
        let tail: Vec<Sample> = dataset(3).samples(20, 30).collect();
        assert_eq!(tail, a[20 * 70..]);
    }

    #[test]
    fn values_stay_within_bounds_and_walk_by_small_steps() {
        let d = dataset(9);
        let samples: Vec<Sample> = d.samples(0, 2_000).collect();
        assert_eq!(samples.len(), 2_000 * 70);
        assert!(samples.iter().all(|s| (0.0..=100.0).contains(&s.value)));
        // Consecutive values of one walk differ by |N(0,1)|: never by more than ~6.
        let walk: Vec<f64> = samples
            .iter()
            .filter(|s| s.host == 2 && s.field == 5)
            .map(|s| s.value)
            .collect();
        assert_eq!(walk.len(), 2_000);
        assert!(walk.windows(2).all(|w| (w[1] - w[0]).abs() < 7.0));
        let mean_step =
            walk.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (walk.len() - 1) as f64;
        // E|N(0,1)| = 0.798; clamping only shortens steps.
        assert!((0.6..0.9).contains(&mean_step), "{mean_step}");
    }

    #[test]
    fn hosts_have_the_tsbs_tag_shapes() {
        let d = Dataset::new(Config::new(1, 200));
        for (i, host) in d.hosts.iter().enumerate() {
            assert_eq!(host.hostname(), format!("host_{i}"));
            let keys: Vec<&str> = host.tags.keys().map(String::as_str).collect();
            let mut expected = TAG_KEYS.to_vec();
            expected.sort_unstable();
            assert_eq!(keys, expected);
            let (_, zones) = REGIONS
                .iter()
                .find(|(r, _)| *r == host.values[1])
                .expect("a known region");
            assert!(zones.contains(&host.datacenter()));
            assert!(host.values[3].parse::<u64>().unwrap() < RACKS);
            assert!(OS.contains(&host.values[4].as_str()));
            assert!(ARCH.contains(&host.values[5].as_str()));
            assert!(TEAMS.contains(&host.values[6].as_str()));
            assert!(host.values[7].parse::<u64>().unwrap() < SERVICES);
            assert!(host.values[8].parse::<u64>().unwrap() < SERVICE_VERSIONS);
            assert!(ENVIRONMENTS.contains(&host.values[9].as_str()));
        }
        // 200 hosts cover every region.
        for (region, _) in REGIONS {
            assert!(d.hosts.iter().any(|h| h.values[1] == region), "{region}");
        }
    }

    #[test]
    fn points_are_api_points_in_time_order() {
        let d = dataset(5);
        let mut samples = d.samples(0, 3);
        let points: Vec<Point> = samples.take_batch(100).iter().map(|s| d.point(s)).collect();
        assert_eq!(points.len(), 100);
        assert_eq!(samples.take_batch(1_000).len(), 3 * 70 - 100);
        assert!(samples.take_batch(1).is_empty());
        let sample = d.samples(0, 1).nth(10).unwrap();
        assert_eq!(PointRef::from(&d.point(&sample)), d.point_ref(&sample));
        assert_eq!(points[0].metric, "usage_user");
        assert_eq!(points[9].metric, "usage_guest_nice");
        assert_eq!(points[10].tags["hostname"], "host_1");
        assert_eq!(points[0].timestamp, Some(d.config.start));
        assert_eq!(points[70].timestamp, Some(d.time_of(1)));
        assert!(points.iter().all(|p| p.partition_key.is_none()));
        assert_eq!(d.intervals_for(1_000), 14);
        assert_eq!(d.intervals_for(5), 1);
    }

    #[test]
    fn normal_deviates_have_unit_variance() {
        let mut rng = Rng::new(11);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.03, "{var}");
    }
}
