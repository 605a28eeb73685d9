//! Output: per-test lines, markdown tables, the JSON report and registry-vs-registry ratios.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{TestResult, median};

/// A registry as measured in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistryInfo {
    /// Label used in tables.
    pub label: String,
    /// Base URL.
    pub url: String,
    /// Server PID sampled for CPU and memory, if given.
    pub pid: Option<u32>,
}

/// Settings of a run, recorded in the JSON report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// Concurrent workers per test.
    pub concurrency: usize,
    /// Operations per test (`-n`), if bounded by count.
    pub requests: Option<u64>,
    /// Seconds per test (`--duration`), if bounded by time.
    pub duration_s: Option<f64>,
    /// Blob sizes of the sized tests.
    pub sizes: Vec<u64>,
    /// Client runtime threads.
    pub threads: usize,
    /// Monolithic upload flavour.
    pub mono: String,
    /// Chunk size of chunked pushes, if fixed.
    pub chunk_size: Option<u64>,
}

/// The whole JSON report of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Tool name.
    pub tool: String,
    /// Tool version.
    pub version: String,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Registries measured, in command-line order.
    pub registries: Vec<RegistryInfo>,
    /// Run settings.
    pub settings: Settings,
    /// One entry per (test, registry).
    pub results: Vec<TestResult>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

/// Formats a figure with a sensible number of decimals.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Formats an optional figure, `-` when absent.
fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), num)
}

/// A one-line summary of a finished test, printed as the run goes.
pub fn line(r: &TestResult) -> String {
    let mut s = format!(
        "{:<22} {:<20} {:>8} ops {:>5} err {:>10} ops/s {:>9} MB/s  p50 {:>8} ms  p99 {:>8} ms  max {:>8} ms",
        r.label,
        r.shown_test(),
        r.ops,
        r.errors,
        num(r.ops_per_s),
        num(r.mb_per_s),
        num(r.latency.p50_ms),
        num(r.latency.p99_ms),
        num(r.latency.max_ms),
    );
    if let Some(srv) = &r.server {
        let _ = write!(
            s,
            "  | server {} CPU-s, {} CPU-s/GB, {} CPU-µs/op, peak RSS {} MiB",
            num(srv.cpu_s),
            opt(srv.cpu_s_per_gb),
            opt(srv.cpu_us_per_op),
            num(srv.peak_rss_mib)
        );
    }
    if let Some(c) = r.client_cpu_s {
        let _ = write!(s, "  | client {} CPU-s", num(c));
    }
    if let Some(d) = &r.detail {
        let _ = write!(s, "  [{d}]");
    }
    if r.interrupted {
        s.push_str("  (interrupted)");
    }
    s
}

/// The markdown results table.
pub fn markdown_table(results: &[TestResult]) -> String {
    let mut s = String::from(
        "| Registry | Test | Ops | Errors | ops/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | srv CPU-s/GB | srv CPU-µs/op | srv peak RSS MiB |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let srv = r.server.as_ref();
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.shown_test(),
            if r.interrupted { " (interrupted)" } else { "" },
            r.ops,
            r.errors,
            num(r.ops_per_s),
            num(r.mb_per_s),
            num(r.latency.p50_ms),
            num(r.latency.p90_ms),
            num(r.latency.p99_ms),
            num(r.latency.max_ms),
            opt(srv.and_then(|v| v.cpu_s_per_gb)),
            opt(srv.and_then(|v| v.cpu_us_per_op)),
            opt(srv.map(|v| v.peak_rss_mib)),
        );
    }
    s
}

/// Error samples of all tests, as a markdown list (empty when there were none).
pub fn error_list(results: &[TestResult]) -> String {
    let mut s = String::new();
    for r in results.iter().filter(|r| r.errors > 0) {
        let _ = writeln!(s, "- **{} / {}**: {} errors", r.label, r.test, r.errors);
        for e in &r.error_samples {
            let _ = writeln!(s, "  - `{}`", e.replace('`', "'"));
        }
    }
    s
}

/// `a / b`, or `None` when either side is missing or `b` is zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Registry labels in order of first appearance.
pub fn labels(results: &[TestResult]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in results {
        if !out.contains(&r.label) {
            out.push(r.label.clone());
        }
    }
    out
}

/// Ratio tables of the first registry against each other one, per test.
///
/// Throughput ratios above 1 and latency or CPU ratios below 1 mean the first registry did better.
/// A result is paired with the other registry's result of the same test and round; when a test
/// ran in several rounds (`--round`), its row gives the median of each registry's rate and the
/// median of the rounds' ratios, and its last column each round's throughput ratio.
pub fn compare_table(results: &[TestResult]) -> String {
    let labels = labels(results);
    let mut s = String::new();
    let Some(base) = labels.first() else { return s };
    let mut tests: Vec<&str> = Vec::new();
    for r in results.iter().filter(|r| &r.label == base) {
        if !tests.contains(&r.test.as_str()) {
            tests.push(&r.test);
        }
    }
    // Per-GB CPU for sized (blob) tests, per-op CPU otherwise.
    let cpu = |r: &TestResult| {
        r.server.as_ref().and_then(|v| {
            if r.size_bytes.is_some() {
                v.cpu_s_per_gb
            } else {
                v.cpu_us_per_op
            }
        })
    };
    let pos = |x: f64| (x > 0.0).then_some(x);
    for other in labels.iter().skip(1) {
        let _ = writeln!(
            s,
            "Ratios {base} / {other} (throughput > 1: {base} faster; latency and CPU < 1: {base} better)\n"
        );
        s.push_str(
            "| Test | ops/s A | ops/s B | throughput A/B | p50 A/B | p99 A/B | srv CPU A/B | errors A / B | rounds: throughput A/B |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for test in &tests {
            let pairs: Vec<(&TestResult, &TestResult)> = results
                .iter()
                .filter(|a| &a.label == base && a.test == *test)
                .filter_map(|a| {
                    results
                        .iter()
                        .find(|b| &b.label == other && b.test == a.test && b.round == a.round)
                        .map(|b| (a, b))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&TestResult, &TestResult) -> Option<f64>| {
                median(&pairs.iter().filter_map(|(a, b)| f(a, b)).collect::<Vec<_>>())
            };
            let throughput: Vec<Option<f64>> = pairs
                .iter()
                .map(|(a, b)| ratio(pos(a.ops_per_s), pos(b.ops_per_s)))
                .collect();
            let rounds = if pairs.len() == 1 {
                "1".to_string()
            } else {
                let each: Vec<String> = throughput.iter().map(|&t| opt(t)).collect();
                format!("{}: {}", pairs.len(), each.join(", "))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                test,
                opt(med(&|a, _| Some(a.ops_per_s))),
                opt(med(&|_, b| Some(b.ops_per_s))),
                opt(median(&throughput.into_iter().flatten().collect::<Vec<_>>())),
                opt(med(&|a, b| ratio(pos(a.latency.p50_ms), pos(b.latency.p50_ms)))),
                opt(med(&|a, b| ratio(pos(a.latency.p99_ms), pos(b.latency.p99_ms)))),
                opt(med(&|a, b| ratio(cpu(a), cpu(b)))),
                pairs.iter().map(|(a, _)| a.errors).sum::<u64>(),
                pairs.iter().map(|(_, b)| b.errors).sum::<u64>(),
                rounds,
            );
        }
        s.push('\n');
    }
    s
}

/// The full markdown document: results, ratios when several registries were measured, and error samples.
pub fn markdown(report: &Report) -> String {
    let mut s = String::from("## Registry load test\n\n");
    let set = &report.settings;
    let _ = writeln!(
        s,
        "Concurrency {}, {}, {} client threads, monolithic pushes via {}.\n",
        set.concurrency,
        match (set.requests, set.duration_s) {
            (Some(n), Some(d)) => format!("{n} operations or {d} s per test"),
            (Some(n), None) => format!("{n} operations per test"),
            (None, Some(d)) => format!("{d} s per test"),
            (None, None) => "unbounded".into(),
        },
        set.threads,
        set.mono
    );
    s.push_str(&markdown_table(&report.results));
    if labels(&report.results).len() > 1 {
        s.push('\n');
        s.push_str(&compare_table(&report.results));
    }
    let errors = error_list(&report.results);
    if !errors.is_empty() {
        s.push_str("\n### Errors\n\n");
        s.push_str(&errors);
    }
    if report.interrupted {
        s.push_str("\n_Interrupted: partial results._\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Latency, ServerStats};

    fn result(label: &str, test: &str, ops_per_s: f64, p50: f64) -> TestResult {
        TestResult {
            label: label.into(),
            test: test.into(),
            size_bytes: Some(1),
            ops: 100,
            bytes: 1_000_000_000,
            ops_per_s,
            latency: Latency {
                p50_ms: p50,
                p99_ms: p50 * 2.0,
                ..Latency::default()
            },
            server: Some(ServerStats {
                cpu_s_per_gb: Some(p50),
                ..ServerStats::default()
            }),
            ..TestResult::default()
        }
    }

    #[test]
    fn compare_computes_ratios() {
        let results = vec![
            result("a", "pull 1MiB", 200.0, 1.0),
            result("b", "pull 1MiB", 100.0, 4.0),
            result("a", "head", 50.0, 1.0),
        ];
        let t = compare_table(&results);
        assert!(
            t.contains("| pull 1MiB | 200.0 | 100.0 | 2.00 | 0.250 | 0.250 | 0.250 | 0 / 0 |"),
            "{t}"
        );
        assert!(!t.contains("| head |"), "tests missing on one side are skipped: {t}");
        let md = markdown(&Report {
            results,
            ..Report::default()
        });
        assert!(md.contains("| a | pull 1MiB | 100 | 0 | 200.0 |"), "{md}");
    }

    #[test]
    fn rounds_pair_within_a_round_and_report_the_median() {
        let in_round = |label: &str, round: u32, ops_per_s: f64, p50: f64, errors: u64| TestResult {
            round: Some(round),
            errors,
            ..result(label, "push-mono 1GiB", ops_per_s, p50)
        };
        let results = vec![
            // Round 1: 6x; round 2: 4x; round 3: 5x (listed out of order on the other side).
            in_round("a", 1, 600.0, 1.0, 0),
            in_round("a", 2, 800.0, 1.0, 1),
            in_round("a", 3, 500.0, 1.0, 0),
            in_round("b", 3, 100.0, 2.0, 0),
            in_round("b", 1, 100.0, 3.0, 0),
            in_round("b", 2, 200.0, 4.0, 2),
            // Only one side ran round 4: not paired, not counted.
            in_round("a", 4, 9000.0, 1.0, 0),
        ];
        let t = compare_table(&results);
        // Rates: medians of the paired rounds' 600/800/500 and 100/100/200; throughput: the
        // median of the rounds' 6, 4 and 5; p50: of 1/3, 1/4, 1/2; errors summed.
        assert!(
            t.contains(
                "| push-mono 1GiB | 600.0 | 100.0 | 5.00 | 0.333 | 0.333 | 0.333 | 1 / 2 | 3: 6.00, 4.00, 5.00 |"
            ),
            "{t}"
        );
        let md = markdown(&Report {
            results,
            ..Report::default()
        });
        assert!(md.contains("| a | push-mono 1GiB (round 2) | 100 | 1 |"), "{md}");
    }

    #[test]
    fn report_round_trips_json() {
        let report = Report {
            results: vec![result("a", "catalog", 1.0, 1.0)],
            ..Report::default()
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), report);
    }
}
