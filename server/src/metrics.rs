//! Prometheus metrics: request counts by route kind, method and status, latency histograms,
//! bytes in and out, authentication failures by reason, upload sessions in progress and the
//! size of the blob store. Counters are plain atomics in fixed tables (no lock, no allocation
//! per request); the text exposition is built when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// Route kinds (the `route` label).
const KINDS: &[&str] = &[
    "base",
    "catalog",
    "tags",
    "manifest",
    "blob",
    "upload_start",
    "upload",
    "referrers",
    "healthz",
    "readyz",
    "metrics",
    "token",
    "jwks",
    "invalid",
];
/// Methods (the `method` label); anything else is `other`.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];
/// Statuses tracked exactly: 100..=599.
const STATUSES: usize = 500;
/// Latency bucket bounds in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Authentication and authorization failure reasons (the `reason` label).
pub const AUTH_REASONS: &[&str] = &[
    "no_credentials",
    "basic_malformed",
    "basic_invalid",
    "bearer_missing",
    "insufficient_scope",
    "denied",
    "token_request_invalid_credentials",
    "token_request_invalid_refresh",
    "throttled",
    // token verification (berth_auth::token::VerifyError::reason)
    "malformed",
    "alg_none",
    "alg_not_accepted",
    "unknown_kid",
    "no_kid",
    "x5c",
    "alg_mismatch",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "issuer",
    "audience",
    "missing_claim",
];
/// How long a computed storage size is reused.
const STORAGE_TTL: Duration = Duration::from_secs(10);

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

fn index(list: &[&str], name: &str) -> usize {
    list.iter().position(|k| *k == name).unwrap_or(list.len() - 1)
}

/// The registry's metrics.
pub struct Metrics {
    requests: Box<[AtomicU64]>,
    latency_buckets: Box<[AtomicU64]>,
    latency_sum_ns: Box<[AtomicU64]>,
    latency_count: Box<[AtomicU64]>,
    bytes_in: Box<[AtomicU64]>,
    bytes_out: Box<[AtomicU64]>,
    auth_failures: Box<[AtomicU64]>,
    throttled: AtomicU64,
    started: SystemTime,
    storage: Mutex<Option<(Instant, u64, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Values read from the engine when scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Upload sessions this process holds.
    pub uploads_in_progress: u64,
    /// Blobs in the store and their bytes, if they could be read.
    pub storage: Option<(u64, u64)>,
    /// The read cache's counters.
    pub cache: berth_engine::hot::HotStats,
    /// The small-blob cache's counters.
    pub blob_cache: berth_engine::bodies::BodyStats,
}

impl Metrics {
    /// All zero.
    pub fn new() -> Metrics {
        let k = KINDS.len();
        Metrics {
            requests: counters(k * METHODS.len() * STATUSES),
            latency_buckets: counters(k * BUCKETS.len()),
            latency_sum_ns: counters(k),
            latency_count: counters(k),
            bytes_in: counters(k),
            bytes_out: counters(k),
            auth_failures: counters(AUTH_REASONS.len()),
            throttled: AtomicU64::new(0),
            started: SystemTime::now(),
            storage: Mutex::new(None),
        }
    }

    /// Count one finished request. `bytes_in` is what is known from the request headers; upload
    /// bodies are counted as they stream ([`Metrics::received`]).
    pub fn request(&self, kind: &str, method: &http::Method, status: u16, elapsed: Duration, bytes_out: u64) {
        let k = index(KINDS, kind);
        let m = index(METHODS, method.as_str());
        let s = usize::from(status.clamp(100, 599) - 100);
        self.requests[(k * METHODS.len() + m) * STATUSES + s].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
            self.latency_buckets[k * BUCKETS.len() + b].fetch_add(1, Relaxed);
        }
        self.latency_sum_ns[k].fetch_add(elapsed.as_nanos() as u64, Relaxed);
        self.latency_count[k].fetch_add(1, Relaxed);
        self.bytes_out[k].fetch_add(bytes_out, Relaxed);
    }

    /// Count request body bytes received for a route kind.
    pub fn received(&self, kind: &str, bytes: u64) {
        self.bytes_in[index(KINDS, kind)].fetch_add(bytes, Relaxed);
    }

    /// Count an authentication or authorization failure.
    pub fn auth_failure(&self, reason: &str) {
        if let Some(i) = AUTH_REASONS.iter().position(|r| *r == reason) {
            self.auth_failures[i].fetch_add(1, Relaxed);
        }
        if reason == "throttled" {
            self.throttled.fetch_add(1, Relaxed);
        }
    }

    /// The remembered storage size, if fresh; otherwise `None` (the caller recomputes it).
    pub fn cached_storage(&self) -> Option<(u64, u64)> {
        match *self.storage.lock() {
            Some((at, n, bytes)) if at.elapsed() < STORAGE_TTL => Some((n, bytes)),
            _ => None,
        }
    }

    /// Remember a computed storage size.
    pub fn set_storage(&self, blobs: u64, bytes: u64) {
        *self.storage.lock() = Some((Instant::now(), blobs, bytes));
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(16 * 1024);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "berth_http_requests_total",
            "counter",
            "HTTP requests by route kind, method and status.",
        );
        for (k, kind) in KINDS.iter().enumerate() {
            for (m, method) in METHODS.iter().enumerate() {
                for s in 0..STATUSES {
                    let v = self.requests[(k * METHODS.len() + m) * STATUSES + s].load(Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            o,
                            "berth_http_requests_total{{route=\"{kind}\",method=\"{method}\",status=\"{}\"}} {v}",
                            s + 100
                        );
                    }
                }
            }
        }
        head(
            &mut o,
            "berth_http_request_duration_seconds",
            "histogram",
            "Time from request head to response head, by route kind (bodies stream after it).",
        );
        for (k, kind) in KINDS.iter().enumerate() {
            let count = self.latency_count[k].load(Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, le) in BUCKETS.iter().enumerate() {
                cumulative += self.latency_buckets[k * BUCKETS.len() + b].load(Relaxed);
                let _ = writeln!(
                    o,
                    "berth_http_request_duration_seconds_bucket{{route=\"{kind}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                o,
                "berth_http_request_duration_seconds_bucket{{route=\"{kind}\",le=\"+Inf\"}} {count}"
            );
            let sum = self.latency_sum_ns[k].load(Relaxed) as f64 / 1e9;
            let _ = writeln!(o, "berth_http_request_duration_seconds_sum{{route=\"{kind}\"}} {sum}");
            let _ = writeln!(
                o,
                "berth_http_request_duration_seconds_count{{route=\"{kind}\"}} {count}"
            );
        }
        for (name, help, table) in [
            (
                "berth_http_request_bytes_total",
                "Request body bytes received, by route kind.",
                &self.bytes_in,
            ),
            (
                "berth_http_response_bytes_total",
                "Response body bytes sent (Content-Length), by route kind.",
                &self.bytes_out,
            ),
        ] {
            head(&mut o, name, "counter", help);
            for (k, kind) in KINDS.iter().enumerate() {
                let v = table[k].load(Relaxed);
                if v > 0 {
                    let _ = writeln!(o, "{name}{{route=\"{kind}\"}} {v}");
                }
            }
        }
        head(
            &mut o,
            "berth_auth_failures_total",
            "counter",
            "Refused authentications and authorizations by reason (no_credentials is the normal first step of a login).",
        );
        for (i, reason) in AUTH_REASONS.iter().enumerate() {
            let _ = writeln!(
                o,
                "berth_auth_failures_total{{reason=\"{reason}\"}} {}",
                self.auth_failures[i].load(Relaxed)
            );
        }
        head(
            &mut o,
            "berth_auth_throttled_total",
            "counter",
            "Logins refused with 429 because the user name at that address, or the address, is in back-off after failed logins (auth.throttle).",
        );
        let _ = writeln!(o, "berth_auth_throttled_total {}", self.throttled.load(Relaxed));
        head(
            &mut o,
            "berth_uploads_in_progress",
            "gauge",
            "Upload sessions open in this process.",
        );
        let _ = writeln!(o, "berth_uploads_in_progress {}", g.uploads_in_progress);
        if let Some((blobs, bytes)) = g.storage {
            head(&mut o, "berth_storage_blobs", "gauge", "Blobs in the store.");
            let _ = writeln!(o, "berth_storage_blobs {blobs}");
            head(
                &mut o,
                "berth_storage_bytes",
                "gauge",
                "Bytes of all blobs in the store.",
            );
            let _ = writeln!(o, "berth_storage_bytes {bytes}");
        }
        let c = &g.cache;
        for (name, help, v) in [
            (
                "berth_cache_hits_total",
                "Blob size and manifest lookups answered from the read cache.",
                c.hits,
            ),
            (
                "berth_cache_misses_total",
                "Lookups read from the metadata store (then cached when nothing changed meanwhile).",
                c.misses,
            ),
            (
                "berth_cache_evictions_total",
                "Answers evicted to stay within cache.memory.",
                c.evictions,
            ),
            (
                "berth_cache_invalidations_total",
                "Changes applied to the cache (a moved tag, a removed link, a repository, everything).",
                c.invalidations,
            ),
            (
                "berth_cache_bypassed_total",
                "Lookups that skipped the cache because the metadata store could not say what changed (its notification connection was down).",
                c.bypassed,
            ),
        ] {
            head(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        for (name, help, v) in [
            ("berth_cache_entries", "Answers the read cache holds.", c.entries),
            (
                "berth_cache_bytes",
                "Bytes the read cache holds (keys and answers).",
                c.bytes,
            ),
            (
                "berth_cache_budget_bytes",
                "The read cache's budget (cache.memory).",
                c.budget,
            ),
        ] {
            head(&mut o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
        let b = &g.blob_cache;
        for (name, kind, help, v) in [
            (
                "berth_blob_cache_hits_total",
                "counter",
                "Small-blob GETs answered from memory.",
                b.hits,
            ),
            (
                "berth_blob_cache_misses_total",
                "counter",
                "Small-blob GETs read from the file.",
                b.misses,
            ),
            (
                "berth_blob_cache_evictions_total",
                "counter",
                "Small blobs evicted to stay within cache.blobmemory.",
                b.evictions,
            ),
            (
                "berth_blob_cache_entries",
                "gauge",
                "Small blobs held in memory.",
                b.entries,
            ),
            (
                "berth_blob_cache_bytes",
                "gauge",
                "Bytes of small blobs held in memory.",
                b.bytes,
            ),
            (
                "berth_blob_cache_budget_bytes",
                "gauge",
                "The small-blob cache's budget (cache.blobmemory).",
                b.budget,
            ),
        ] {
            head(&mut o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
        head(&mut o, "berth_build_info", "gauge", "Version of the running binary.");
        let _ = writeln!(o, "berth_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        head(
            &mut o,
            "berth_start_time_seconds",
            "gauge",
            "Start time of the process, seconds since the epoch.",
        );
        let start = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = writeln!(o, "berth_start_time_seconds {start}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::new();
        m.request("blob", &http::Method::GET, 200, Duration::from_micros(300), 1000);
        m.request("blob", &http::Method::GET, 200, Duration::from_millis(30), 24);
        m.request("blob", &http::Method::HEAD, 404, Duration::from_secs(100), 0);
        m.request(
            "nonsense",
            &http::Method::from_bytes(b"BREW").unwrap(),
            999,
            Duration::ZERO,
            0,
        );
        m.received("upload", 4096);
        m.auth_failure("expired");
        m.auth_failure("not a reason");
        m.auth_failure("throttled");
        let t = m.render(&Gauges {
            uploads_in_progress: 3,
            storage: Some((2, 5000)),
            cache: berth_engine::hot::HotStats {
                hits: 7,
                misses: 2,
                evictions: 1,
                entries: 4,
                bytes: 900,
                budget: 1024,
                ..Default::default()
            },
            blob_cache: berth_engine::bodies::BodyStats {
                hits: 5,
                ..Default::default()
            },
        });
        assert!(t.contains("berth_blob_cache_hits_total 5\n"), "{t}");
        for line in [
            "berth_cache_hits_total 7\n",
            "berth_cache_misses_total 2\n",
            "berth_cache_evictions_total 1\n",
            "berth_cache_invalidations_total 0\n",
            "berth_cache_entries 4\n",
            "berth_cache_bytes 900\n",
            "berth_cache_budget_bytes 1024\n",
        ] {
            assert!(t.contains(line), "{line} in {t}");
        }
        assert!(
            t.contains("berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("berth_http_requests_total{route=\"blob\",method=\"HEAD\",status=\"404\"} 1\n"));
        assert!(t.contains("berth_http_requests_total{route=\"invalid\",method=\"other\",status=\"599\"} 1\n"));
        assert!(t.contains("berth_http_request_duration_seconds_bucket{route=\"blob\",le=\"0.0005\"} 1\n"));
        assert!(t.contains("berth_http_request_duration_seconds_bucket{route=\"blob\",le=\"0.05\"} 2\n"));
        assert!(t.contains("berth_http_request_duration_seconds_bucket{route=\"blob\",le=\"60\"} 2\n"));
        assert!(t.contains("berth_http_request_duration_seconds_bucket{route=\"blob\",le=\"+Inf\"} 3\n"));
        assert!(t.contains("berth_http_request_duration_seconds_count{route=\"blob\"} 3\n"));
        assert!(t.contains("berth_http_response_bytes_total{route=\"blob\"} 1024\n"));
        assert!(t.contains("berth_http_request_bytes_total{route=\"upload\"} 4096\n"));
        assert!(t.contains("berth_auth_failures_total{reason=\"expired\"} 1\n"));
        assert!(t.contains("berth_uploads_in_progress 3\n"));
        assert!(t.contains("berth_auth_throttled_total 1\n"));
        assert!(t.contains("berth_auth_failures_total{reason=\"throttled\"} 1\n"));
        assert!(t.contains("berth_storage_bytes 5000\n"));
        // Every sample line belongs to a declared metric family.
        let families: Vec<&str> = t
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                families.iter().any(|f| name == *f
                    || name
                        .strip_prefix(f)
                        .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                "{line}"
            );
        }
    }
}
