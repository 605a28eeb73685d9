//! `berth-loadtest pull-through`: what a pull-through cache (mirror) costs against pulling from its upstream.
//!
//! ```text
//! berth-loadtest pull-through --upstream http://127.0.0.1:5001 --mirror http://127.0.0.1:5002 [--prefix up] \
//!     [--size 100MiB] [--rounds 5] [--concurrency 50] [--repo berth-pt] [--pause 1s] \
//!     [--json out.json] [--markdown out.md]
//! ```
//!
//! The upstream is a registry that the scenario pushes into (open, or accepting the same `--user` /
//! `--password` / `--token` as the mirror: they go to both); the mirror serves it under `--prefix`
//! (`GET /v2/<prefix>/<repo>/blobs/<digest>` on the mirror is `<repo>/blobs/<digest>` upstream). Every
//! round pushes three fresh blobs of `--size` bytes (pseudo-random, so incompressible, unique to the run
//! and round) to the upstream through the API, then measures, `--pause` apart:
//!
//! 1. **cold**: blob A `GET` straight from the upstream, and blob B `GET` through the mirror, which does
//!    not have it yet and fetches it: throughput (GB/s, request to last byte) and time to first body
//!    byte of each, and the ratio and difference mirror − upstream;
//! 2. **warm**: B again through the mirror (now stored there) and A again from the upstream: both are
//!    local pulls, and the ratio says what serving through the mirror costs. The first read of a blob
//!    just written is slower than later ones, and the mirror served its cold pull from the download,
//!    so one unmeasured pull of B through the mirror comes first: both copies have then been read once;
//! 3. **concurrent cold**: `--concurrency` clients, each on its own connection opened beforehand, `GET`
//!    blob C through the mirror at the same moment; the upstream's `/metrics` counter of blob `GET`s
//!    answered 200 (`berth_http_requests_total{route="blob",method="GET",status="200"}`) is read before
//!    and after: one request is the target however many clients ask. Also the clients' aggregate
//!    throughput, and the mirror's own miss and coalesced counters when it has them.
//!
//! The two pulls of each pair swap order every round (odd rounds start with the upstream), so neither
//! gets the warmer machine systematically. Every body is checked against its digest: single pulls copy
//! the body into a buffer allocated (and written through) once, and hash it after the clock stops, so
//! the client's SHA-256 does not bound the pull (up to 1 GiB; larger ones are hashed as they arrive);
//! the concurrent pulls hash as they arrive, so their aggregate is bounded by the client's hash rate
//! (`berth-loadtest hashrate`). A wrong body, a wrong length or an HTTP error is an error, not
//! a figure: the round stops there. Output: one line per round, a table of the rounds, and the summary
//! table (median and min – max of the rounds, target, met). Exit status: 0 when every pull worked
//! (whether or not the targets are met), 1 on errors, 2 on a usage error, 130 on Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Barrier, watch};

use crate::blob::{Blob, Pattern, ReqBody, tail};
use crate::client::{Conn, Target};
use crate::ops::{self, MonoMode};
use crate::prom;
use crate::pull::{Check, Pull, timed_get};
use crate::pull_through_report::{
    Coalesced, Order, Pair, PullThroughReport, RoundResult, figures, rounds_table, summary_table,
};
use crate::scenario::{ClientArgs, OutputArgs, block_on, run_id, write_reports};
use crate::units::{GIB, format_size, parse_duration, parse_size};

/// Largest body a single pull copies into memory to hash after its clock stops (larger ones are hashed as
/// they arrive).
const HOLD_MAX: u64 = GIB;

/// Arguments of `pull-through`.
#[derive(Debug, clap::Args, Clone)]
pub struct PullThroughArgs {
    /// The upstream registry (open: the scenario pushes into it).
    #[arg(long)]
    pub upstream: String,
    /// The mirror (pull-through cache) of that upstream.
    #[arg(long)]
    pub mirror: String,
    /// The mirror's prefix for the upstream.
    #[arg(long, default_value = "up")]
    pub prefix: String,
    /// Blob size.
    #[arg(long, value_parser = parse_size, default_value = "100MiB")]
    pub size: u64,
    /// Rounds (each with fresh blobs); the summary gives the median and the range.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Clients of the concurrent cold pull.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub concurrency: usize,
    /// Repository (upstream name) of the blobs.
    #[arg(long, default_value = "berth-pt")]
    pub repo: String,
    /// Pause before each measurement (lets the previous one's disk writes settle).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub pause: Duration,
    /// Time limit of one push or pull.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub timeout: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The upstream and the mirror, and what every step needs.
struct Setup {
    args: PullThroughArgs,
    upstream: Arc<Target>,
    mirror: Arc<Target>,
    pattern: Arc<Pattern>,
    run_id: u64,
}

impl Setup {
    /// Path of `blob` straight from the upstream.
    fn upstream_path(&self, blob: &Blob) -> String {
        format!("/v2/{}/blobs/{}", self.args.repo, blob.digest)
    }

    /// Path of `blob` through the mirror.
    fn mirror_path(&self, blob: &Blob) -> String {
        format!("/v2/{}/{}/blobs/{}", self.args.prefix, self.args.repo, blob.digest)
    }

    /// Runs `f` within `--timeout`.
    async fn limit<T>(&self, what: &str, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
        tokio::time::timeout(self.args.timeout, f)
            .await
            .unwrap_or_else(|_| Err(format!("{what}: timed out after {:?}", self.args.timeout)))
    }
}

/// Runs `pull-through`; returns the exit status.
pub fn run(args: &PullThroughArgs) -> i32 {
    if args.rounds == 0 || args.concurrency == 0 {
        eprintln!("error: --rounds and --concurrency must be positive");
        return 2;
    }
    let prefix = args.prefix.trim_matches('/');
    if prefix.is_empty() {
        eprintln!("error: --prefix must not be empty (the scenario reaches the upstream under it)");
        return 2;
    }
    let (upstream, mirror) = match (args.client.target(&args.upstream), args.client.target(&args.mirror)) {
        (Ok(u), Ok(m)) => (u, m),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let run_id = run_id();
    let mut args = args.clone();
    args.prefix = prefix.to_string();
    args.repo = args.repo.trim_matches('/').to_string();
    let setup = Setup {
        pattern: Arc::new(Pattern::new(run_id)),
        args,
        upstream,
        mirror,
        run_id,
    };
    block_on(setup.args.client.threads, |stop| measure(setup, stop))
}

/// Checks both registries, runs the rounds, prints and writes the report.
async fn measure(s: Setup, stop: watch::Receiver<bool>) -> i32 {
    for t in [&s.upstream, &s.mirror] {
        if let Err(e) = ops::ping(&mut Conn::new(Arc::clone(t))).await {
            eprintln!("error: {}: {e}", t.url);
            return 1;
        }
    }
    if let Err(e) = blob_gets(&s.upstream).await {
        eprintln!("error: upstream {}: {e}", s.upstream.url);
        return 1;
    }
    let (pattern, size) = (Arc::clone(&s.pattern), s.args.size);
    // The blobs' digest states, and the buffer of single pulls written through once so that no page
    // fault lands in a measurement.
    let mut buf = tokio::task::spawn_blocking(move || {
        pattern.warm(size);
        (size <= HOLD_MAX).then(|| vec![1u8; size as usize])
    })
    .await
    .unwrap_or_default();
    eprintln!(
        "pull-through: upstream {}, mirror {} (prefix {}), {} blobs, {} round(s), {} concurrent clients",
        s.upstream.url,
        s.mirror.url,
        s.args.prefix,
        format_size(size),
        s.args.rounds,
        s.args.concurrency
    );
    let mut results = Vec::new();
    for round in 1..=s.args.rounds {
        let mut stopped = stop.clone();
        if *stopped.borrow() {
            break;
        }
        let mut r = RoundResult {
            round,
            order: Order::of_round(round),
            cold: None,
            warm: None,
            coalesced: None,
            errors: Vec::new(),
        };
        tokio::select! {
            out = run_round(&s, &mut r, buf.as_mut()) => if let Err(e) = out { r.errors.push(e) },
            _ = stopped.changed() => r.errors.push("interrupted".into()),
        }
        progress(&r);
        results.push(r);
    }
    let figures = figures(&results, s.args.concurrency);
    let table = format!("{}\n{}", rounds_table(&results), summary_table(&figures, results.len()));
    println!("\n{table}");
    let interrupted = *stop.borrow();
    let failed = results.iter().any(|r| !r.errors.is_empty());
    let report = PullThroughReport {
        upstream: s.upstream.url.clone(),
        mirror: s.mirror.url.clone(),
        prefix: s.args.prefix.clone(),
        size: s.args.size,
        concurrency: s.args.concurrency,
        results,
        figures,
        interrupted,
    };
    let ok = write_reports(&s.args.output, &report, &table);
    if interrupted {
        130
    } else if failed || !ok {
        1
    } else {
        0
    }
}

/// Prints one round as it finishes.
fn progress(r: &RoundResult) {
    let pair = |name: &str, p: &Pair| {
        format!(
            "{name}: upstream {:.2} GB/s (first byte {:.1} ms), mirror {:.2} GB/s ({:.1} ms): {:.2}x",
            p.upstream.gb_per_s,
            p.upstream.ttfb_ms,
            p.mirror.gb_per_s,
            p.mirror.ttfb_ms,
            p.ratio().unwrap_or(f64::NAN)
        )
    };
    let mut parts = Vec::new();
    parts.extend(r.cold.as_ref().map(|p| pair("cold", p)));
    parts.extend(r.warm.as_ref().map(|p| pair("warm", p)));
    parts.extend(r.coalesced.as_ref().map(|c| {
        format!(
            "{} concurrent: {} upstream GET(s), {}/{} right bytes, {:.2} GB/s together",
            c.clients, c.upstream_gets, c.right_bytes, c.clients, c.gb_per_s
        )
    }));
    eprintln!("round {} ({}): {}", r.round, r.order.name(), parts.join("; "));
    for e in &r.errors {
        eprintln!("    error: {e}");
    }
}

/// One round: push three fresh blobs, then the cold pair, the warm pair and the concurrent pulls.
async fn run_round(s: &Setup, r: &mut RoundResult, mut buf: Option<&mut Vec<u8>>) -> Result<(), String> {
    let blobs: Vec<Blob> = (0..3)
        .map(|k| {
            s.pattern
                .blob(s.args.size, tail(b"BLTPULLT", s.run_id, u64::from(r.round), k))
        })
        .collect();
    let mut push = Conn::new(Arc::clone(&s.upstream));
    for b in &blobs {
        let body = ReqBody::Gen(s.pattern.body(b, 0..b.size));
        let pushed = ops::upload_mono(&mut push, MonoMode::PostPut, &s.args.repo, &b.digest, body);
        s.limit("push", pushed).await?;
    }
    let [a, b, c] = [&blobs[0], &blobs[1], &blobs[2]];
    r.cold = Some(pair(s, r.order, a, b, "berth_mirror_misses_total", buf.as_deref_mut()).await?);
    // The mirror served its cold pull from the download, so its stored copy of B was never read, while
    // the upstream's copy of A was read by the cold pull; the first read of a freshly written blob is
    // slower than later ones (on both). One unmeasured pull of B through the mirror evens that out.
    let path = s.mirror_path(b);
    let mut conn = Conn::new(Arc::clone(&s.mirror));
    s.limit(&path, timed_get(&mut conn, &path, b, Check::with(&mut buf)))
        .await?;
    r.warm = Some(pair(s, r.order, a, b, "berth_mirror_hits_total", buf).await?);
    r.coalesced = Some(concurrent(s, c).await?);
    Ok(())
}

/// `GET` of `up` straight from the upstream and of `through` via the mirror, in `order`, each after
/// `--pause`; `counter` is the mirror counter that should rise by one over its pull.
async fn pair(
    s: &Setup,
    order: Order,
    up: &Blob,
    through: &Blob,
    counter: &str,
    mut buf: Option<&mut Vec<u8>>,
) -> Result<Pair, String> {
    let mut p = Pair::default();
    for mirror_turn in match order {
        Order::UpstreamFirst => [false, true],
        Order::MirrorFirst => [true, false],
    } {
        let (target, path, blob) = if mirror_turn {
            (&s.mirror, s.mirror_path(through), through)
        } else {
            (&s.upstream, s.upstream_path(up), up)
        };
        let mut conn = Conn::new(Arc::clone(target));
        let before = if mirror_turn {
            mirror_counter(s, counter).await
        } else {
            None
        };
        ops::ping(&mut conn).await?;
        tokio::time::sleep(s.args.pause).await;
        let pulled = s
            .limit(&path, timed_get(&mut conn, &path, blob, Check::with(&mut buf)))
            .await?;
        if mirror_turn {
            p.mirror = pulled;
            let after = mirror_counter(s, counter).await;
            p.mirror_counter = before.zip(after).map(|(b, a)| a - b);
        } else {
            p.upstream = pulled;
        }
    }
    if p.mirror_counter.is_some_and(|d| d != 1.0) {
        eprintln!(
            "warning: the mirror's {counter} rose by {} over its pull, not 1: the pull may not be what it is meant to be",
            p.mirror_counter.unwrap_or_default()
        );
    }
    Ok(p)
}

/// The sum over all upstreams of one of the mirror's counters; `None` when it has none.
async fn mirror_counter(s: &Setup, name: &str) -> Option<f64> {
    let text = prom::scrape(&mut Conn::new(Arc::clone(&s.mirror))).await.ok()?;
    prom::sum(&text, name, &[])
}

/// The upstream's count of blob `GET`s answered 200.
async fn blob_gets(upstream: &Arc<Target>) -> Result<f64, String> {
    let text = prom::scrape(&mut Conn::new(Arc::clone(upstream))).await?;
    let want = [("route", "blob"), ("method", "GET"), ("status", "200")];
    prom::sum(&text, "berth_http_requests_total", &want)
        .ok_or_else(|| "its /metrics has no berth_http_requests_total (needed to count its blob GETs)".into())
}

/// `--concurrency` clients `GET` one fresh blob through the mirror at once.
async fn concurrent(s: &Setup, blob: &Blob) -> Result<Coalesced, String> {
    let n = s.args.concurrency;
    let path = s.mirror_path(blob);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = Conn::new(Arc::clone(&s.mirror));
        ops::ping(&mut conn).await?;
        conns.push(conn);
    }
    let misses = mirror_counter(s, "berth_mirror_misses_total").await;
    let coalesced = mirror_counter(s, "berth_mirror_coalesced_total").await;
    let gets_before = blob_gets(&s.upstream).await?;
    tokio::time::sleep(s.args.pause).await;
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (barrier, path, blob, limit) = (Arc::clone(&barrier), path.clone(), blob.clone(), s.args.timeout);
            tokio::spawn(async move {
                barrier.wait().await;
                let start = Instant::now();
                let pulled = tokio::time::timeout(limit, timed_get(&mut conn, &path, &blob, Check::Inline))
                    .await
                    .unwrap_or_else(|_| Err(format!("GET {path}: timed out after {limit:?}")));
                (start, Instant::now(), pulled)
            })
        })
        .collect();
    let mut out = Coalesced {
        clients: n,
        ..Coalesced::default()
    };
    let (mut first, mut last, mut errors) = (None::<Instant>, None::<Instant>, Vec::new());
    for t in tasks {
        let (start, end, pulled) = t.await.map_err(|e| format!("client task failed: {e}"))?;
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
        match pulled {
            Ok(p) => {
                out.right_bytes += 1;
                out.ttfb_max_ms = out.ttfb_max_ms.max(p.ttfb_ms);
            }
            Err(e) if !errors.contains(&e) => errors.push(e),
            Err(_) => {}
        }
    }
    out.upstream_gets = blob_gets(&s.upstream).await? - gets_before;
    let delta = |before: Option<f64>, now: Option<f64>| before.zip(now).map(|(b, a)| a - b);
    out.mirror_misses = delta(misses, mirror_counter(s, "berth_mirror_misses_total").await);
    out.mirror_coalesced = delta(coalesced, mirror_counter(s, "berth_mirror_coalesced_total").await);
    out.seconds = first.zip(last).map_or(0.0, |(f, l)| (l - f).as_secs_f64());
    out.gb_per_s = Pull::new(out.right_bytes as u64 * blob.size, out.seconds, 0.0).gb_per_s;
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "{} of {n} concurrent pulls failed: {}",
            n - out.right_bytes,
            errors.join("; ")
        ))
    }
}
