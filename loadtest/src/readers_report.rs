//! The results of `readers-under-push`: per-phase rows and the ratios that answer "do caches survive writes".

use crate::stats::median;
use crate::timed::{Rate, ratio, show_ratio};

/// Where the pushers of a phase pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// Readers alone.
    Idle,
    /// Pushers on `--push-url` (by default the readers' registry).
    Same,
    /// Pushers on `--push-url-other` (another registry process: CPU contention without shared state).
    Other,
}

impl Phase {
    /// Name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "readers alone",
            Phase::Same => "pushers on --push-url",
            Phase::Other => "pushers on --push-url-other",
        }
    }
}

/// One phase of one round.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PhaseResult {
    /// Round number, from 1.
    pub round: u32,
    /// Which phase.
    pub phase: Phase,
    /// Where the pushers pushed (absent when idle).
    pub push_url: Option<String>,
    /// The readers.
    pub readers: Rate,
    /// The pushers.
    pub pushers: Option<Rate>,
}

/// Readers under pushes relative to a baseline: medians over the rounds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Relative {
    /// Readers' rate over the baseline's.
    pub rate: Option<f64>,
    /// Readers' p99 over the baseline's.
    pub p99: Option<f64>,
    /// Each round's rate ratio.
    pub rate_rounds: Vec<f64>,
    /// Each round's p99 ratio.
    pub p99_rounds: Vec<f64>,
}

/// The summary of all rounds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    /// Pushers on `--push-url`, relative to readers alone.
    pub same_vs_idle: Relative,
    /// Pushers on `--push-url-other`, relative to readers alone.
    pub other_vs_idle: Option<Relative>,
    /// Pushers on `--push-url` relative to pushers on `--push-url-other`.
    pub same_vs_other: Option<Relative>,
}

/// Per-round ratios of phase `a` to phase `b` (rounds that have both), with their medians.
pub fn relative(results: &[PhaseResult], a: Phase, b: Phase) -> Option<Relative> {
    let mut rel = Relative::default();
    for x in results.iter().filter(|r| r.phase == a) {
        let Some(y) = results.iter().find(|r| r.phase == b && r.round == x.round) else {
            continue;
        };
        if let Some(q) = ratio(x.readers.per_s, y.readers.per_s) {
            rel.rate_rounds.push(q);
        }
        if let Some(q) = ratio(x.readers.latency.p99_ms, y.readers.latency.p99_ms) {
            rel.p99_rounds.push(q);
        }
    }
    if rel.rate_rounds.is_empty() && rel.p99_rounds.is_empty() {
        return None;
    }
    rel.rate = median(&rel.rate_rounds);
    rel.p99 = median(&rel.p99_rounds);
    Some(rel)
}

/// Summarises the rounds.
pub fn summarise(results: &[PhaseResult]) -> Summary {
    Summary {
        same_vs_idle: relative(results, Phase::Same, Phase::Idle).unwrap_or_default(),
        other_vs_idle: relative(results, Phase::Other, Phase::Idle),
        same_vs_other: relative(results, Phase::Same, Phase::Other),
    }
}

/// The markdown table of every phase, with each phase's ratios to its round's idle phase.
pub fn markdown(results: &[PhaseResult], read_op: &str) -> String {
    let mut out = format!(
        "| round | phase | readers ({read_op}) req/s | vs idle | p50 ms | p99 ms | p99 vs idle | pushes/s | push p99 ms | errors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in results {
        let idle = results.iter().find(|i| i.phase == Phase::Idle && i.round == r.round);
        let vs = |f: fn(&Rate) -> f64| show_ratio(idle.and_then(|i| ratio(f(&r.readers), f(&i.readers))));
        let errors = r.readers.errors + r.pushers.as_ref().map_or(0, |p| p.errors);
        out += &format!(
            "| {} | {} | {:.0} | {} | {:.3} | {:.3} | {} | {} | {} | {errors} |\n",
            r.round,
            r.push_url
                .as_ref()
                .map_or_else(|| r.phase.name().to_string(), |u| format!("{} ({u})", r.phase.name())),
            r.readers.per_s,
            vs(|x| x.per_s),
            r.readers.latency.p50_ms,
            r.readers.latency.p99_ms,
            vs(|x| x.latency.p99_ms),
            r.pushers
                .as_ref()
                .map_or_else(|| "-".into(), |p| format!("{:.0}", p.per_s)),
            r.pushers
                .as_ref()
                .map_or_else(|| "-".into(), |p| format!("{:.3}", p.latency.p99_ms)),
        );
    }
    out
}

/// The summary as sentences.
pub fn summary_lines(s: &Summary, rounds: usize) -> Vec<String> {
    let of = if rounds > 1 {
        format!(" (median of {rounds} rounds)")
    } else {
        String::new()
    };
    let line = |what: &str, r: &Relative| {
        format!(
            "{what}: readers' rate {}, p99 {}{of}",
            show_ratio(r.rate),
            show_ratio(r.p99)
        )
    };
    let mut out = vec![line("pushers on --push-url / readers alone", &s.same_vs_idle)];
    if let Some(r) = &s.other_vs_idle {
        out.push(line("pushers on --push-url-other / readers alone", r));
    }
    if let Some(r) = &s.same_vs_other {
        out.push(line("pushers on --push-url / pushers on --push-url-other", r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn phase(round: u32, phase: Phase, per_s: f64, p99_ms: f64) -> PhaseResult {
        PhaseResult {
            round,
            phase,
            push_url: (phase != Phase::Idle).then(|| "http://x:1".into()),
            readers: Rate {
                per_s,
                latency: Latency {
                    p99_ms,
                    ..Latency::default()
                },
                ..Rate::default()
            },
            pushers: (phase != Phase::Idle).then(|| Rate {
                per_s: 50.0,
                ..Rate::default()
            }),
        }
    }

    #[test]
    fn ratios_pair_phases_within_rounds() {
        let results = [
            phase(1, Phase::Idle, 1000.0, 1.0),
            phase(1, Phase::Same, 500.0, 4.0),
            phase(1, Phase::Other, 800.0, 2.0),
            phase(2, Phase::Idle, 2000.0, 1.0),
            phase(2, Phase::Same, 1200.0, 2.0),
            phase(2, Phase::Other, 1600.0, 2.0),
            phase(3, Phase::Idle, 1000.0, 2.0),
            phase(3, Phase::Same, 700.0, 2.0),
        ];
        let s = summarise(&results);
        assert_eq!(s.same_vs_idle.rate_rounds, [0.5, 0.6, 0.7]);
        assert_eq!(s.same_vs_idle.rate, Some(0.6));
        assert_eq!(s.same_vs_idle.p99_rounds, [4.0, 2.0, 1.0]);
        assert_eq!(s.same_vs_idle.p99, Some(2.0));
        let other = s.same_vs_other.unwrap();
        assert_eq!(other.rate_rounds, [0.625, 0.75], "round 3 has no other phase");
        assert_eq!(other.rate, Some(0.6875));
        assert_eq!(s.other_vs_idle.unwrap().rate_rounds, [0.8, 0.8]);
        let lines = summary_lines(&summarise(&results[..3]), 1);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "pushers on --push-url / readers alone: readers' rate 0.50x, p99 4.00x"
        );
        assert_eq!(
            lines[2],
            "pushers on --push-url / pushers on --push-url-other: readers' rate 0.62x, p99 2.00x"
        );
    }

    #[test]
    fn no_other_url_means_no_other_ratios() {
        let results = [phase(1, Phase::Idle, 1000.0, 1.0), phase(1, Phase::Same, 900.0, 1.5)];
        let s = summarise(&results);
        assert!(s.other_vs_idle.is_none() && s.same_vs_other.is_none());
        let t = markdown(&results, "manifest GET");
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert!(rows[2].starts_with("| 1 | readers alone | 1000 | 1.00x |"), "{t}");
        assert!(
            rows[3].contains("| 900 | 0.90x |") && rows[3].contains("| 1.50x | 50 |"),
            "{t}"
        );
    }
}
