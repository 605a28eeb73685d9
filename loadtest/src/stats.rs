//! Measurements: latency histograms, per-test results and server process figures from `/proc`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux fixes USER_HZ at 100 on every mainstream architecture,
/// which saves an `unsafe` `sysconf(_SC_CLK_TCK)` call.
const CLK_TCK: f64 = 100.0;

/// A new latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Fastest successful operation.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest successful operation.
    pub max_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microsecond latencies (all zero when it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Server-side figures for one test, from `/proc/<pid>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerStats {
    /// Server CPU time (user + system) spent during the test, in seconds.
    pub cpu_s: f64,
    /// CPU seconds per GB (10^9 bytes) of payload moved; absent when the test moves (almost) no payload.
    pub cpu_s_per_gb: Option<f64>,
    /// CPU microseconds per operation.
    pub cpu_us_per_op: Option<f64>,
    /// Peak resident set size (VmHWM) before the test, MiB.
    pub peak_rss_mib_before: f64,
    /// Peak resident set size (VmHWM) after the test, MiB.
    pub peak_rss_mib: f64,
    /// Resident set size (VmRSS) after the test, MiB.
    pub rss_mib: f64,
}

/// The outcome of one test against one registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TestResult {
    /// Registry label.
    pub label: String,
    /// Registry URL.
    pub url: String,
    /// Test name, e.g. `push-mono 10MiB`.
    pub test: String,
    /// Blob size of a sized test.
    pub size_bytes: Option<u64>,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// HTTP requests sent (a push operation is several requests).
    pub http_requests: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    /// Wall time of the timed phase, seconds.
    pub duration_s: f64,
    /// Payload bytes moved by successful operations (sent for pushes, received for pulls).
    pub bytes: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Payload throughput, MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Latency of successful operations.
    pub latency: Latency,
    /// Server process figures, when `--pid` was given.
    pub server: Option<ServerStats>,
    /// CPU seconds the load generator itself used during the test (to spot a client-bound measurement).
    #[serde(default)]
    pub client_cpu_s: Option<f64>,
    /// Extra detail, e.g. the pull/push split of the mixed test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether Ctrl-C cut the test short.
    #[serde(default)]
    pub interrupted: bool,
    /// The round this result belongs to, when the same tests ran several times (`--round`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
}

impl TestResult {
    /// The test's name as tables show it: with its round, when it has one.
    pub fn shown_test(&self) -> String {
        match self.round {
            Some(k) => format!("{} (round {k})", self.test),
            None => self.test.clone(),
        }
    }
}

/// The median of `values` (the mean of the middle two when their number is even), ignoring values
/// that are not finite; `None` when none is left.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The median and range of a figure measured in several rounds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    /// Median of the rounds.
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
}

impl Spread {
    /// The spread of the finite `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let finite = values.iter().copied().filter(|x| x.is_finite());
        Some(Spread {
            median: median(values)?,
            min: finite.clone().fold(f64::INFINITY, f64::min),
            max: finite.fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One reading of a process's CPU time and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Peak RSS (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Current RSS (VmRSS), KiB.
    pub rss_kib: u64,
}

/// utime + stime (fields 14 and 15) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is parenthesised and may contain spaces or parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` value such as `VmHWM:` from the text of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        line.strip_prefix(key)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// Reads CPU time and memory of process `pid`.
pub fn sample(pid: u32) -> Result<ProcSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("pid {pid}: {e}"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("pid {pid}: {e}"))?;
    Ok(ProcSample {
        cpu_ticks: parse_stat_ticks(&stat).ok_or_else(|| format!("pid {pid}: unparsable stat"))?,
        hwm_kib: parse_status_kib(&status, "VmHWM:").unwrap_or(0),
        rss_kib: parse_status_kib(&status, "VmRSS:").unwrap_or(0),
    })
}

/// Resets the process's peak RSS to its current RSS (writes `5` to `/proc/<pid>/clear_refs`).
pub fn reset_peak_rss(pid: u32) -> Result<(), String> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").map_err(|e| format!("pid {pid}: clear_refs: {e}"))
}

/// Derives per-test figures of a process from samples taken before and after the test.
pub fn server_stats(before: ProcSample, after: ProcSample, ops: u64, bytes: u64) -> ServerStats {
    let cpu_s = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / CLK_TCK;
    let gb = bytes as f64 / 1e9;
    ServerStats {
        cpu_s,
        // Below 1 MB moved the per-GB figure is noise; per-op is the useful one then.
        cpu_s_per_gb: (bytes >= 1_000_000).then(|| cpu_s / gb),
        cpu_us_per_op: (ops > 0).then(|| cpu_s * 1e6 / ops as f64),
        peak_rss_mib_before: before.hwm_kib as f64 / 1024.0,
        peak_rss_mib: after.hwm_kib as f64 / 1024.0,
        rss_mib: after.rss_kib as f64 / 1024.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_summarise() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1 ms .. 1000 ms
        }
        let l = Latency::from_histogram(&h);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.01;
        assert!(close(l.min_ms, 1.0), "{l:?}");
        assert!(close(l.p50_ms, 500.0), "{l:?}");
        assert!(close(l.p90_ms, 900.0), "{l:?}");
        assert!(close(l.p99_ms, 990.0), "{l:?}");
        assert!(close(l.max_ms, 1000.0), "{l:?}");
        assert!(close(l.mean_ms, 500.5), "{l:?}");
        assert_eq!(Latency::from_histogram(&new_histogram()), Latency::default());
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
        assert_eq!(
            Spread::of(&[0.9, f64::NAN, 1.2, 1.0]),
            Some(Spread {
                median: 1.0,
                min: 0.9,
                max: 1.2
            })
        );
        assert_eq!(Spread::of(&[f64::INFINITY]), None);
    }

    #[test]
    fn proc_text_parses() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4096 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(4096));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn own_process_samples() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.hwm_kib > 0 && s.rss_kib > 0);
        let later = ProcSample {
            cpu_ticks: s.cpu_ticks + 200,
            ..s
        };
        let st = server_stats(s, later, 1000, 2_000_000_000);
        assert_eq!(st.cpu_s, 2.0);
        assert_eq!(st.cpu_s_per_gb, Some(1.0));
        assert_eq!(st.cpu_us_per_op, Some(2000.0));
        assert_eq!(server_stats(s, later, 10, 0).cpu_s_per_gb, None);
    }
}
