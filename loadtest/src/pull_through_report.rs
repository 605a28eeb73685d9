//! The results of `pull-through`: per-round measurements, the figures with their targets, and the tables.

use crate::pull::Pull;
use crate::stats::Spread;
use crate::timed::{ratio, show_ratio};

/// Cold throughput ratio mirror / upstream that meets the target, and the warm one taken as "1.0×".
pub const RATIO_TARGET: f64 = 0.95;
/// Largest cold time-to-first-byte difference, mirror − upstream, that meets the target.
pub const TTFB_TARGET_MS: f64 = 10.0;

/// Which pull of a pair went first in a round (they alternate round by round).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Order {
    /// Straight from the upstream, then through the mirror.
    UpstreamFirst,
    /// Through the mirror, then straight from the upstream.
    MirrorFirst,
}

impl Order {
    /// The order of round `round` (from 1): odd rounds start with the upstream.
    pub fn of_round(round: u32) -> Self {
        if round % 2 == 1 {
            Order::UpstreamFirst
        } else {
            Order::MirrorFirst
        }
    }

    /// Name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Order::UpstreamFirst => "upstream first",
            Order::MirrorFirst => "mirror first",
        }
    }
}

/// The same kind of pull of two blobs of one size: straight from the upstream and through the mirror.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Pair {
    /// `GET` from the upstream.
    pub upstream: Pull,
    /// `GET` through the mirror.
    pub mirror: Pull,
    /// How much the mirror's miss (cold) or hit (warm) counter rose over its pull: 1 when the pull was
    /// of the kind meant; absent when the mirror has no such counter.
    pub mirror_counter: Option<f64>,
}

impl Pair {
    /// Throughput through the mirror over throughput from the upstream.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.mirror.gb_per_s, self.upstream.gb_per_s)
    }

    /// Time to first byte through the mirror minus from the upstream, milliseconds.
    pub fn ttfb_diff_ms(&self) -> f64 {
        self.mirror.ttfb_ms - self.upstream.ttfb_ms
    }
}

/// Many clients pulling one blob the mirror does not have, all at once.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Coalesced {
    /// Clients started.
    pub clients: usize,
    /// Clients that received the whole blob with the right digest.
    pub right_bytes: usize,
    /// Blob `GET`s the upstream answered 200 meanwhile (its `/metrics`).
    pub upstream_gets: f64,
    /// Rise of the mirror's `berth_mirror_misses_total` (all upstreams), when it has the counter.
    pub mirror_misses: Option<f64>,
    /// Rise of the mirror's `berth_mirror_coalesced_total` (all upstreams), when it has the counter.
    pub mirror_coalesced: Option<f64>,
    /// From the first request to the last byte of the slowest client, seconds.
    pub seconds: f64,
    /// Bytes received by all clients over `seconds`, GB/s.
    pub gb_per_s: f64,
    /// Largest time to first byte of a client, milliseconds.
    pub ttfb_max_ms: f64,
}

/// Everything measured in one round.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RoundResult {
    /// Round number, from 1.
    pub round: u32,
    /// Which pull of each pair went first.
    pub order: Order,
    /// First pulls: fresh blobs, the mirror fetches its one from the upstream.
    pub cold: Option<Pair>,
    /// Second pulls: the mirror serves the blob it stored in the cold pull.
    pub warm: Option<Pair>,
    /// Concurrent cold pulls of one fresh blob through the mirror.
    pub coalesced: Option<Coalesced>,
    /// What failed (the round stops at the first failed step).
    pub errors: Vec<String>,
}

/// How a figure's values are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Unit {
    /// A ratio, `0.97x`.
    Ratio,
    /// A signed difference in milliseconds.
    Ms,
    /// A count.
    Count,
    /// GB/s.
    GbPerS,
}

impl Unit {
    /// One value as tables show it.
    fn show(self, v: f64) -> String {
        match self {
            Unit::Ratio => show_ratio(Some(v)),
            Unit::Ms => format!("{v:+.1} ms"),
            Unit::Count => format!("{v:.0}"),
            Unit::GbPerS => format!("{v:.2} GB/s"),
        }
    }
}

/// One line of the summary: a figure over the rounds, its target and whether the median meets it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Figure {
    /// What is measured.
    pub name: String,
    /// How values are shown.
    pub unit: Unit,
    /// Each round's value (rounds where the step failed have none).
    pub rounds: Vec<f64>,
    /// Median, min and max of the rounds.
    pub spread: Option<Spread>,
    /// The target, as text.
    pub target: String,
    /// Whether the figure meets it (absent without a target or without values).
    pub met: Option<bool>,
}

impl Figure {
    /// A figure from its rounds' values; `meets` judges the spread against the target.
    fn new(name: String, unit: Unit, rounds: Vec<f64>, target: &str, meets: Option<fn(&Spread) -> bool>) -> Self {
        let spread = Spread::of(&rounds);
        let met = meets.zip(spread.as_ref()).map(|(f, s)| f(s));
        Figure {
            name,
            unit,
            rounds,
            spread,
            target: target.into(),
            met,
        }
    }

    /// Met only when every round's value is `want`.
    fn require_all(mut self, want: f64) -> Self {
        self.met = self.spread.map(|s| s.min == want && s.max == want);
        self
    }

    /// `median (min – max)`, or `-` without values.
    pub fn measured(&self) -> String {
        match &self.spread {
            None => "-".into(),
            Some(s) if self.rounds.len() == 1 => self.unit.show(s.median),
            Some(s) => format!(
                "{} ({} – {})",
                self.unit.show(s.median),
                self.unit.show(s.min),
                self.unit.show(s.max)
            ),
        }
    }
}

/// The figures of the summary, from every round's results.
pub fn figures(results: &[RoundResult], concurrency: usize) -> Vec<Figure> {
    let cold: Vec<&Pair> = results.iter().filter_map(|r| r.cold.as_ref()).collect();
    let warm: Vec<&Pair> = results.iter().filter_map(|r| r.warm.as_ref()).collect();
    let many: Vec<&Coalesced> = results.iter().filter_map(|r| r.coalesced.as_ref()).collect();
    let n = concurrency;
    vec![
        Figure::new(
            "cold pull throughput, mirror / upstream".into(),
            Unit::Ratio,
            cold.iter().filter_map(|p| p.ratio()).collect(),
            "≥ 0.95x",
            Some(|s| s.median >= RATIO_TARGET),
        ),
        Figure::new(
            "cold pull time to first byte, mirror − upstream".into(),
            Unit::Ms,
            cold.iter().map(|p| p.ttfb_diff_ms()).collect(),
            "≤ +10 ms",
            Some(|s| s.median <= TTFB_TARGET_MS),
        ),
        Figure::new(
            "warm pull throughput, mirror / upstream".into(),
            Unit::Ratio,
            warm.iter().filter_map(|p| p.ratio()).collect(),
            "1.0x (met at ≥ 0.95x)",
            Some(|s| s.median >= RATIO_TARGET),
        ),
        Figure::new(
            format!("upstream blob GETs for {n} concurrent cold pulls of one blob"),
            Unit::Count,
            many.iter().map(|c| c.upstream_gets).collect(),
            "1 (every round)",
            None,
        )
        .require_all(1.0),
        Figure::new(
            format!("clients of {n} that got the right bytes"),
            Unit::Count,
            many.iter().map(|c| c.right_bytes as f64).collect(),
            &format!("{n} (every round)"),
            None,
        )
        .require_all(n as f64),
        Figure::new(
            format!("aggregate client throughput, {n} concurrent cold pulls"),
            Unit::GbPerS,
            many.iter().map(|c| c.gb_per_s).collect(),
            "-",
            None,
        ),
    ]
}

/// The summary table: one row per figure.
pub fn summary_table(figures: &[Figure], rounds: usize) -> String {
    let mut out = format!(
        "| figure | measured (median, min – max of {rounds} round{}) | target | met |\n|---|---:|---:|---|\n",
        if rounds == 1 { "" } else { "s" }
    );
    for f in figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        out += &format!("| {} | {} | {} | {met} |\n", f.name, f.measured(), f.target);
    }
    out
}

/// The per-round table.
pub fn rounds_table(results: &[RoundResult]) -> String {
    let mut out = String::from(
        "| round | order | cold upstream GB/s | cold mirror GB/s | ratio | TTFB upstream ms | TTFB mirror ms \
         | warm upstream GB/s | warm mirror GB/s | ratio | concurrent: upstream GETs | right bytes | GB/s | errors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let f = |v: Option<f64>, decimals: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"));
    for r in results {
        let (c, w, m) = (r.cold.as_ref(), r.warm.as_ref(), r.coalesced.as_ref());
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.round,
            r.order.name(),
            f(c.map(|p| p.upstream.gb_per_s), 2),
            f(c.map(|p| p.mirror.gb_per_s), 2),
            show_ratio(c.and_then(Pair::ratio)),
            f(c.map(|p| p.upstream.ttfb_ms), 1),
            f(c.map(|p| p.mirror.ttfb_ms), 1),
            f(w.map(|p| p.upstream.gb_per_s), 2),
            f(w.map(|p| p.mirror.gb_per_s), 2),
            show_ratio(w.and_then(Pair::ratio)),
            f(m.map(|x| x.upstream_gets), 0),
            m.map_or_else(|| "-".into(), |x| format!("{}/{}", x.right_bytes, x.clients)),
            f(m.map(|x| x.gb_per_s), 2),
            r.errors.len(),
        );
    }
    out
}

/// The JSON report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PullThroughReport {
    /// The upstream registry.
    pub upstream: String,
    /// The mirror.
    pub mirror: String,
    /// The mirror's prefix for the upstream.
    pub prefix: String,
    /// Blob size, bytes.
    pub size: u64,
    /// Concurrent clients of the coalescing measurement.
    pub concurrency: usize,
    /// Every round.
    pub results: Vec<RoundResult>,
    /// The summary.
    pub figures: Vec<Figure>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(up: f64, mirror: f64, up_ttfb: f64, mirror_ttfb: f64) -> Pair {
        Pair {
            upstream: Pull {
                gb_per_s: up,
                ttfb_ms: up_ttfb,
                seconds: 1.0,
            },
            mirror: Pull {
                gb_per_s: mirror,
                ttfb_ms: mirror_ttfb,
                seconds: 1.0,
            },
            mirror_counter: Some(1.0),
        }
    }

    fn round(round: u32, cold: Pair, warm: Pair, gets: f64, right: usize) -> RoundResult {
        RoundResult {
            round,
            order: Order::of_round(round),
            cold: Some(cold),
            warm: Some(warm),
            coalesced: Some(Coalesced {
                clients: 4,
                right_bytes: right,
                upstream_gets: gets,
                gb_per_s: 3.0,
                ..Coalesced::default()
            }),
            errors: Vec::new(),
        }
    }

    #[test]
    fn orders_and_pairs() {
        assert_eq!(Order::of_round(1), Order::UpstreamFirst);
        assert_eq!(Order::of_round(2), Order::MirrorFirst);
        let q = pair(2.0, 1.0, 1.0, 4.5);
        assert_eq!((q.ratio(), q.ttfb_diff_ms()), (Some(0.5), 3.5));
        assert_eq!(pair(0.0, 1.0, 0.0, 0.0).ratio(), None);
    }

    #[test]
    fn figures_take_medians_and_judge_targets() {
        let results = [
            round(1, pair(2.0, 1.9, 1.0, 3.0), pair(2.0, 2.0, 1.0, 1.0), 1.0, 4),
            round(2, pair(2.0, 1.8, 1.0, 13.0), pair(2.0, 1.8, 1.0, 1.0), 1.0, 4),
            round(3, pair(2.0, 2.0, 1.0, 5.0), pair(2.0, 1.9, 1.0, 1.0), 2.0, 4),
        ];
        let f = figures(&results, 4);
        assert_eq!(f.len(), 6);
        assert_eq!(f[0].rounds, [0.95, 0.9, 1.0]);
        assert_eq!(f[0].spread.unwrap().median, 0.95);
        assert_eq!(f[0].met, Some(true));
        assert_eq!(f[1].spread.unwrap().median, 4.0);
        assert_eq!(f[1].met, Some(true));
        assert_eq!(f[2].met, Some(true));
        assert_eq!(f[3].spread.unwrap().median, 1.0);
        assert_eq!(
            f[3].met,
            Some(false),
            "one round with two upstream GETs misses the target"
        );
        assert_eq!(f[4].met, Some(true));
        assert_eq!(f[5].met, None);
        assert_eq!(f[0].measured(), "0.95x (0.90x – 1.00x)");
        assert_eq!(f[1].measured(), "+4.0 ms (+2.0 ms – +12.0 ms)");

        let mut short = results[..1].to_vec();
        short[0].coalesced.as_mut().unwrap().right_bytes = 3;
        let f = figures(&short, 4);
        assert_eq!(f[4].met, Some(false));
        assert_eq!(f[4].measured(), "3");
        let t = summary_table(&f, 1);
        assert!(
            t.contains("| clients of 4 that got the right bytes | 3 | 4 (every round) | no |"),
            "{t}"
        );
        assert!(t.contains("of 1 round) |"), "{t}");
    }

    #[test]
    fn failed_steps_leave_gaps() {
        let mut r = round(1, pair(2.0, 1.0, 1.0, 2.0), pair(2.0, 2.0, 1.0, 1.0), 1.0, 4);
        r.warm = None;
        r.coalesced = None;
        r.errors.push("GET /v2/x: 500".into());
        let f = figures(std::slice::from_ref(&r), 4);
        assert_eq!(f[2].measured(), "-");
        assert_eq!(f[2].met, None);
        let t = rounds_table(&[r]);
        let row = t.lines().nth(2).unwrap();
        assert!(
            row.starts_with("| 1 | upstream first | 2.00 | 1.00 | 0.50x | 1.0 | 2.0 | - | - | -"),
            "{t}"
        );
        assert!(row.ends_with("| - | - | - | 1 |"), "{t}");
        assert_eq!(t.lines().next().unwrap().matches('|').count(), row.matches('|').count());
    }
}
