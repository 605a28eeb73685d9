//! Output: per-test lines, markdown tables, the JSON report and registry-vs-registry ratios.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::TestResult;

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
        r.test,
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
            r.test,
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
pub fn compare_table(results: &[TestResult]) -> String {
    let labels = labels(results);
    let mut s = String::new();
    let Some(base) = labels.first() else { return s };
    for other in labels.iter().skip(1) {
        let _ = writeln!(
            s,
            "Ratios {base} / {other} (throughput > 1: {base} faster; latency and CPU < 1: {base} better)\n"
        );
        s.push_str(
            "| Test | ops/s A | ops/s B | throughput A/B | p50 A/B | p99 A/B | srv CPU A/B | errors A / B |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for a in results.iter().filter(|r| &r.label == base) {
            let Some(b) = results.iter().find(|r| &r.label == other && r.test == a.test) else {
                continue;
            };
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
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                a.test,
                num(a.ops_per_s),
                num(b.ops_per_s),
                opt(ratio(pos(a.ops_per_s), pos(b.ops_per_s))),
                opt(ratio(pos(a.latency.p50_ms), pos(b.latency.p50_ms))),
                opt(ratio(pos(a.latency.p99_ms), pos(b.latency.p99_ms))),
                opt(ratio(cpu(a), cpu(b))),
                a.errors,
                b.errors,
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
    fn report_round_trips_json() {
        let report = Report {
            results: vec![result("a", "catalog", 1.0, 1.0)],
            ..Report::default()
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), report);
    }
}
