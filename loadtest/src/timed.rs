//! Timed runs of one operation on many keep-alive connections, and their summary.
//!
//! The `scale` and `readers-under-push` scenarios describe an operation as an [`Op`]; [`run_for`]
//! runs it on `workers` connections (each with its own seeded [`Rng`]) until a deadline or a stop,
//! and returns a [`Rate`]: successes per second, errors, and latency percentiles.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::blob::Rng;
use crate::client::{Conn, Target};
use crate::stats::{Latency, new_histogram};

/// One operation of a timed run: returns the payload bytes it moved, or why it failed.
pub trait Op: Send + Sync + 'static {
    /// Runs the operation once; `worker` and `seq` identify it (for unique names), `rng` picks what it hits.
    fn run(
        &self,
        conn: &mut Conn,
        rng: &mut Rng,
        worker: u64,
        seq: u64,
    ) -> impl Future<Output = Result<u64, String>> + Send;
}

/// The summary of a timed run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Rate {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// HTTP requests sent.
    pub requests: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub per_s: f64,
    /// Latency of the successful operations.
    pub latency: Latency,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
}

/// What one worker measured.
struct WorkerOut {
    hist: hdrhistogram::Histogram<u64>,
    ops: u64,
    errors: u64,
    requests: u64,
    samples: Vec<String>,
}

/// Runs `op` on `workers` connections for `duration` (or until `stop`); worker `i` seeds its generator with `seed ^ i`.
pub async fn run_for<O: Op>(
    target: &Arc<Target>,
    op: Arc<O>,
    workers: usize,
    duration: Duration,
    seed: u64,
    stop: &watch::Receiver<bool>,
) -> Rate {
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..workers as u64)
        .map(|id| {
            let (target, op, mut stop) = (Arc::clone(target), Arc::clone(&op), stop.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(target);
                let mut rng = Rng::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut out = WorkerOut {
                    hist: new_histogram(),
                    ops: 0,
                    errors: 0,
                    requests: 0,
                    samples: Vec::new(),
                };
                let mut seq = 0;
                while Instant::now() < deadline && !*stop.borrow() {
                    seq += 1;
                    let began = Instant::now();
                    let result = tokio::select! {
                        r = tokio::time::timeout(Duration::from_secs(60), op.run(&mut conn, &mut rng, id, seq)) => {
                            r.unwrap_or_else(|_| Err("operation timed out after 60s".into()))
                        }
                        _ = stop.changed() => break,
                    };
                    match result {
                        Ok(_) => {
                            out.hist.saturating_record(began.elapsed().as_micros().max(1) as u64);
                            out.ops += 1;
                        }
                        Err(e) => {
                            out.errors += 1;
                            if out.samples.len() < 3 && !out.samples.contains(&e) {
                                out.samples.push(e);
                            }
                            conn.reset();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                out.requests = conn.requests;
                out
            })
        })
        .collect();
    let mut hist = new_histogram();
    let mut rate = Rate::default();
    for h in handles {
        match h.await {
            Ok(w) => {
                let _ = hist.add(&w.hist);
                rate.ops += w.ops;
                rate.errors += w.errors;
                rate.requests += w.requests;
                for s in w.samples {
                    if rate.error_samples.len() < 5 && !rate.error_samples.contains(&s) {
                        rate.error_samples.push(s);
                    }
                }
            }
            Err(e) => {
                rate.errors += 1;
                rate.error_samples.push(format!("worker failed: {e}"));
            }
        }
    }
    rate.seconds = start.elapsed().as_secs_f64();
    rate.per_s = rate.ops as f64 / rate.seconds.max(1e-9);
    rate.latency = Latency::from_histogram(&hist);
    rate
}

/// `a / b`, or `None` when `b` is zero or either is not finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// A ratio as tables show it: `0.97x`, or `-` when there is none.
pub fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(show_ratio(Some(0.456)), "0.46x");
        assert_eq!(show_ratio(None), "-");
    }
}
