//! # berth-loadtest
//!
//! A load generator for OCI (distribution-spec) registries, following the test matrix of zot's `zb`: monolithic and
//! chunked pushes, pulls, blob HEADs, manifest GETs, catalog listing and a 75 % pull / 25 % push mix, at blob sizes
//! from 1 MiB to 1 GiB. It measures several registries in one run (interleaved test by test, so background load hits
//! them alike) and can read each server's CPU time and peak RSS from `/proc`.
//!
//! ## Usage
//!
//! ```text
//! # Default matrix (all tests at 1MiB and 10MiB, 8 workers, 10 s per test) against one registry:
//! berth-loadtest --url http://127.0.0.1:5000
//!
//! # Chosen tests and sizes, fixed request count, server CPU/RSS figures, JSON + markdown reports:
//! berth-loadtest --url http://127.0.0.1:5000 --pid $(pgrep -n berth) \
//!     --test push-mono,push-chunked,pull --size 1MiB,100MiB,1GiB -c 4 -n 40 \
//!     --json out.json --markdown out.md
//!
//! # Small-request throughput (HEAD blob) with many workers:
//! berth-loadtest --url http://127.0.0.1:5000 --test head -c 64 --duration 10s
//!
//! # Two registries in one run, with ratios of the first to the second for every test:
//! berth-loadtest compare --url http://127.0.0.1:5002 --label berth --pid $BERTH_PID \
//!                        --url http://127.0.0.1:5001 --label distribution --pid $REF_PID \
//!                        --test all --size 1MiB,10MiB -c 8 --duration 10s
//!
//! # Ratios from earlier JSON reports, without running anything:
//! berth-loadtest compare --input berth.json --input distribution.json
//!
//! # The same compare in rounds (each against fresh registries), then the median of the rounds' ratios:
//! for k in 1 2 3; do berth-loadtest compare --round $k ... --json r$k.json; done
//! berth-loadtest compare --input r1.json --input r2.json --input r3.json
//!
//! # Push calibration: a target that receives and SHA-256s every upload body and stores nothing
//! # (the ceiling of this machine for pushes, as nginx sendfile is for pulls):
//! berth-loadtest sink --listen 127.0.0.1:5009 --hash pipelined &
//! berth-loadtest --url http://127.0.0.1:5009 --pid $! --test push-mono --size 1GiB -c 1 -n 3
//!
//! # SHA-256 on one thread and on two at once (the bound of one upload, and of concurrent ones):
//! berth-loadtest hashrate --threads 1,2 --seconds 3
//!
//! # Read costs as the registry grows (blobs:repos:tags-per-repo, populated incrementally through the API),
//! # with server memory and start-up time (see scale.rs):
//! berth-loadtest scale --url http://127.0.0.1:5000 --sizes 1000:100:10,100000:10000:3,1m:100k:3 \
//!     --pid-file /tmp/berth.pid --restart-cmd ./restart-berth.sh --json scale.json
//!
//! # Readers alone, then under continuous small pushes to the same registry and to another one (see readers.rs):
//! berth-loadtest readers-under-push --url http://127.0.0.1:5000 --push-url-other http://127.0.0.1:5001 \
//!     --set 10000:1000:3 --op manifest -r 16 -p 2 --duration 10s
//!
//! # A pull-through cache against its upstream: cold and warm pulls through it vs straight from the upstream,
//! # and the upstream requests of 50 concurrent cold pulls of one blob (see pull_through.rs):
//! berth-loadtest pull-through --upstream http://127.0.0.1:5001 --mirror http://127.0.0.1:5002 --prefix up \
//!     --size 100MiB --rounds 5 --concurrency 50 --json pt.json --markdown pt.md
//! ```
//!
//! ## Tests (`--test`, repeatable or comma-separated; default `all`)
//!
//! | name | one operation | sized |
//! |---|---|---|
//! | `push-mono` | upload layer (`POST` + `PUT ?digest=` with the body, or with `--mono post` a single `POST ?digest=`), config blob, manifest `PUT` under a fresh tag | yes |
//! | `push-chunked` | like `push-mono`, but the layer goes as `POST`, `PATCH` × k with `Content-Range`, `PUT ?digest=` | yes |
//! | `pull` | `GET` a layer blob, check its length (and digest with `--verify-digest`) | yes |
//! | `head` | `HEAD` a layer blob, check `Content-Length` | no (smallest size) |
//! | `manifest` | `GET` a manifest by tag | no |
//! | `catalog` | `GET /v2/_catalog` | no |
//! | `mixed` | 75 % `pull`, 25 % `push-mono` | yes |
//!
//! Sized tests run once per `--size` (default `1MiB,10MiB`; zb's full matrix is `1MiB,10MiB,100MiB,1GiB`).
//! Before the timed phase, a setup phase pushes up to `--pull-images` images per needed size (fewer above 256 MiB)
//! into `<repo>/pull-<size>` for `pull`, `mixed`, `head` and `manifest` to hit; it skips blobs already present, so
//! re-runs against the same registry are quick. Pushes go to `<repo>/<test>-<size>` under unique tags.
//!
//! Each test runs `-c` workers, each with its own keep-alive HTTP/1.1 connection, until `-n` operations in total
//! were started or `--duration` has passed (default 10 s); operations in flight then finish and count.
//!
//! ## Blob data
//!
//! Blobs are generated, never stored: a 4 MiB pool of seeded (`--seed`) pseudo-random bytes repeats through the body
//! and the last 32 bytes are unique per blob (run id, test, worker, sequence number). The SHA-256 state of the shared body
//! is computed once per size (about half a second for 1 GiB), so each blob's digest costs one 32-byte update, and
//! uploads stream slices of the pool without copying. Memory use stays at a few MiB whatever the blob size.
//!
//! ## Output
//!
//! Per (registry, test): successful operations, errors (with the first few distinct messages), HTTP requests,
//! operations/s, MB/s (10^6 bytes of payload per second: sent for pushes, received for pulls), latency
//! min/mean/p50/p90/p99/max of successful operations (HdrHistogram), and with `--pid` the server's CPU seconds
//! (utime + stime) per GB moved and per operation plus its peak RSS (VmHWM; `--reset-peak-rss` resets it before each
//! test so the figure is per test), plus the load generator's own CPU seconds, to spot a client-bound run (the client
//! costs about 15 µs of CPU per small request, two thirds of it loopback TCP in the kernel). Lines print as tests
//! finish; a markdown table (and, with two or more registries, a ratio table: first registry / other) prints at the
//! end and goes to `--markdown FILE`; `--json FILE` gets everything. With `--round K` every result carries its round;
//! the ratio table pairs results within a round and gives each test's median over its rounds, every round's throughput
//! ratio beside it. Ctrl-C stops the run and still prints and writes what was measured (press twice to quit at once).
//!
//! Exit status: 0 when every operation succeeded, 1 when any failed, 2 on a usage error, 130 when interrupted.

mod blob;
mod client;
mod hashrate;
mod link;
mod listing;
mod ops;
mod population;
mod prom;
mod pull;
mod pull_through;
mod pull_through_report;
mod push_pull;
mod random_read;
mod readers;
mod readers_report;
mod report;
mod scale;
mod scale_report;
mod scenario;
mod sink;
mod stats;
mod timed;
mod units;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::blob::{Blob, Pattern, Rng, tail};
use crate::client::{Conn, Credentials, Target};
use crate::ops::{Ctx, MonoMode, Upload};
use crate::report::{RegistryInfo, Report, Settings};
use crate::stats::{Latency, TestResult, new_histogram};
use crate::units::{GIB, MIB, format_size, parse_duration, parse_size};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "berth-loadtest",
    version,
    about = "Load generator for OCI registries (zot zb-style test matrix)"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

/// Subcommands; without one, the arguments are those of `run`.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the test matrix (the default).
    Run(RunArgs),
    /// Run the matrix against two or more registries, or load JSON reports, and print first/other ratios.
    Compare(CompareArgs),
    /// Calibration target for pushes: answer uploads, receive and SHA-256 every body, store nothing.
    Sink(sink::SinkArgs),
    /// Calibration for pushes: SHA-256 rate of this machine on one thread and on several at once.
    Hashrate(hashrate::HashrateArgs),
    /// Populate ever larger registries (blobs:repos:tags) through the API and measure small reads, listings,
    /// start-up and memory at each size.
    Scale(scale::ScaleArgs),
    /// Readers alone, then under continuous small pushes (to the same registry, and optionally to another).
    ReadersUnderPush(readers::ReadersArgs),
    /// A pull-through cache against its upstream: cold and warm pulls through it vs straight from the
    /// upstream, and how many upstream requests many concurrent cold pulls of one blob cost.
    PullThrough(pull_through::PullThroughArgs),
    /// A TCP relay with a bandwidth limit on what the far side sends: a network link of a chosen speed
    /// between a registry and its clients (for `pull-through` against an upstream "elsewhere").
    Link(link::LinkArgs),
    /// Pulls right after a push: the first pull's rate, all pulls', and the server's CPU per GB, side by
    /// side for several registries.
    PushPull(push_pull::PushPullArgs),
}

/// Arguments of `compare`.
#[derive(Debug, Args)]
struct CompareArgs {
    /// Take results from this JSON report instead of running tests (repeatable; results are concatenated).
    #[arg(long = "input")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

/// Arguments of a run.
#[derive(Debug, Args, Clone)]
struct RunArgs {
    /// Registry base URL, e.g. http://127.0.0.1:5000 (repeatable: registries are measured in turn).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Label for the registry of the same position (default: host:port).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Tests to run (repeatable or comma-separated).
    #[arg(long = "test", value_enum, value_delimiter = ',', default_value = "all")]
    tests: Vec<TestKind>,
    /// Concurrent workers (each with its own connection).
    #[arg(short = 'c', long, default_value_t = 8)]
    concurrency: usize,
    /// Operations per test (all workers together).
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Time per test, e.g. 10s, 2m (default 10s unless -n is given; with both, whichever comes first).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Blob sizes of the sized tests, e.g. 1MiB,10MiB,100MiB,1GiB.
    #[arg(long, value_parser = parse_size, value_delimiter = ',', default_value = "1MiB,10MiB")]
    size: Vec<u64>,
    /// Chunk size of chunked pushes (default: a sixteenth of the blob, at least 64KiB).
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// How monolithic pushes send the blob.
    #[arg(long, value_enum, default_value = "post-put")]
    mono: MonoMode,
    /// Repository prefix for test data.
    #[arg(long, default_value = "berth-lt")]
    repo: String,
    /// Basic-auth user.
    #[arg(long)]
    user: Option<String>,
    /// Basic-auth password.
    #[arg(long)]
    password: Option<String>,
    /// Bearer token (sent as-is, instead of basic auth).
    #[arg(long)]
    token: Option<String>,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown tables to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Server PID for the registry of the same position: CPU time and peak RSS from /proc (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Reset the server's peak RSS before each test (writes 5 to /proc/PID/clear_refs) for per-test peaks.
    #[arg(long)]
    reset_peak_rss: bool,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Hash pulled blobs and compare with their digest (costs client CPU).
    #[arg(long)]
    verify_digest: bool,
    /// Images pushed per size in the setup phase for pull/head/manifest/mixed to use.
    #[arg(long, default_value_t = 4)]
    pull_images: usize,
    /// Time limit of one operation.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    timeout: Duration,
    /// Client runtime threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the blob content.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
    /// Round number stamped on every result, when the same tests run several times (each run
    /// its own process, e.g. against fresh registries): `compare --input` over the runs' reports
    /// then takes each ratio within a round and prints the median over the rounds.
    #[arg(long)]
    round: Option<u32>,
}

/// A test name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TestKind {
    /// Monolithic push.
    PushMono,
    /// Chunked push.
    PushChunked,
    /// Blob GET.
    Pull,
    /// Blob HEAD.
    Head,
    /// Manifest GET by tag.
    Manifest,
    /// Catalog listing.
    Catalog,
    /// 75 % pull, 25 % push.
    Mixed,
    /// Every test above.
    All,
}

/// One concrete test of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    PushMono(u64),
    PushChunked(u64),
    Pull(u64),
    Head,
    Manifest,
    Catalog,
    Mixed(u64),
}

impl Work {
    /// Name used in reports.
    fn name(self) -> String {
        match self {
            Work::PushMono(s) => format!("push-mono {}", format_size(s)),
            Work::PushChunked(s) => format!("push-chunked {}", format_size(s)),
            Work::Pull(s) => format!("pull {}", format_size(s)),
            Work::Head => "head".into(),
            Work::Manifest => "manifest".into(),
            Work::Catalog => "catalog".into(),
            Work::Mixed(s) => format!("mixed 75/25 {}", format_size(s)),
        }
    }

    /// Blob size of a sized test.
    fn size(self) -> Option<u64> {
        match self {
            Work::PushMono(s) | Work::PushChunked(s) | Work::Pull(s) | Work::Mixed(s) => Some(s),
            Work::Head | Work::Manifest | Work::Catalog => None,
        }
    }
}

/// Expands test names and sizes into the ordered, de-duplicated matrix.
fn expand(tests: &[TestKind], sizes: &[u64]) -> Vec<Work> {
    let has = |k: TestKind| tests.contains(&TestKind::All) || tests.contains(&k);
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    let mut out = Vec::new();
    for (kind, make) in [
        (TestKind::PushMono, Work::PushMono as fn(u64) -> Work),
        (TestKind::PushChunked, Work::PushChunked),
        (TestKind::Pull, Work::Pull),
    ] {
        if has(kind) {
            out.extend(sizes.iter().map(|&s| make(s)));
        }
    }
    for (kind, work) in [(TestKind::Head, Work::Head), (TestKind::Manifest, Work::Manifest)] {
        if has(kind) {
            out.push(work);
        }
    }
    if has(TestKind::Mixed) {
        out.extend(sizes.iter().map(|&s| Work::Mixed(s)));
    }
    if has(TestKind::Catalog) {
        out.push(Work::Catalog);
    }
    out
}

/// Sizes for which the setup phase must push images.
fn setup_sizes(work: &[Work], sizes: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = work
        .iter()
        .filter(|w| matches!(w, Work::Pull(_) | Work::Mixed(_)))
        .filter_map(|w| w.size())
        .collect();
    if work.iter().any(|w| matches!(w, Work::Head | Work::Manifest))
        && let Some(&min) = sizes.iter().min()
    {
        out.push(min);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Images available to the read tests for one size.
#[derive(Debug)]
struct Images {
    /// Repository holding them.
    repo: String,
    /// Layer blobs; image `i` is tagged `setup-<i>`.
    layers: Vec<Blob>,
}

/// Repository name component for a size, e.g. `10mib`.
fn size_tag(size: u64) -> String {
    format_size(size).to_ascii_lowercase()
}

/// Everything a test's workers share.
struct Plan {
    work: Work,
    ctx: Arc<Ctx>,
    run_id: u64,
    /// The test's place in the matrix: pushes of different tests (push-mono and push-chunked of
    /// one size, say) push different blobs.
    test_no: u64,
    push_repo: String,
    images: Option<Arc<Images>>,
    requests: Option<u64>,
    deadline: Option<Instant>,
    timeout: Duration,
}

/// Live counters of a running test.
#[derive(Default)]
struct Shared {
    claimed: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    samples: Mutex<Vec<String>>,
}

/// What one worker measured.
struct WorkerOut {
    hist: hdrhistogram::Histogram<u64>,
    requests: u64,
    pulls: u64,
    pushes: u64,
}

/// Which half of the mixed workload an operation was.
#[derive(Clone, Copy)]
enum Side {
    Pull,
    Push,
    Other,
}

/// Runs one operation of the plan.
async fn one_op(conn: &mut Conn, plan: &Plan, worker: u64, seq: u64, rng: &mut Rng) -> (Result<u64, String>, Side) {
    let pick = |seq: u64| -> Result<(&Images, usize), String> {
        let images = plan.images.as_deref().ok_or("no setup images")?;
        if images.layers.is_empty() {
            return Err("no setup images".into());
        }
        Ok((images, ((worker + seq) % images.layers.len() as u64) as usize))
    };
    match plan.work {
        Work::PushMono(s) => (push(conn, plan, worker, seq, s, Upload::Mono).await, Side::Other),
        Work::PushChunked(s) => (push(conn, plan, worker, seq, s, Upload::Chunked).await, Side::Other),
        Work::Pull(_) => (pull(conn, plan, pick(seq)).await, Side::Other),
        Work::Head => {
            let r = match pick(seq) {
                Ok((img, i)) => ops::head_blob(conn, &img.repo, &img.layers[i].digest, img.layers[i].size).await,
                Err(e) => Err(e),
            };
            (r, Side::Other)
        }
        Work::Manifest => {
            let r = match pick(seq) {
                Ok((img, i)) => ops::get_manifest(conn, &img.repo, &format!("setup-{i}")).await,
                Err(e) => Err(e),
            };
            (r, Side::Other)
        }
        Work::Catalog => (ops::catalog(conn).await, Side::Other),
        Work::Mixed(s) => {
            if rng.below(4) == 0 {
                (push(conn, plan, worker, seq, s, Upload::Mono).await, Side::Push)
            } else {
                (pull(conn, plan, pick(seq)).await, Side::Pull)
            }
        }
    }
}

/// The tail that makes a pushed layer unique: to the run, the test, the worker and its operation.
/// Without the test, the second push test of a size pushed the first one's blobs again, which a
/// registry then only had to recognise instead of store (no data sync, no new file).
fn push_tail(run_id: u64, test_no: u64, worker: u64, seq: u64) -> [u8; blob::TAIL_LEN] {
    tail(b"BLTPUSH_", run_id, (test_no << 32) | (worker & 0xFFFF_FFFF), seq)
}

/// Pushes a fresh one-layer image of `size` bytes under a unique tag.
async fn push(conn: &mut Conn, plan: &Plan, worker: u64, seq: u64, size: u64, how: Upload) -> Result<u64, String> {
    let layer = plan
        .ctx
        .pattern
        .blob(size, push_tail(plan.run_id, plan.test_no, worker, seq));
    let tag = format!("{:x}-{worker}-{seq}", plan.run_id);
    ops::push_image(conn, &plan.ctx, &plan.push_repo, &tag, &layer, how).await
}

/// Pulls the chosen setup layer.
async fn pull(conn: &mut Conn, plan: &Plan, choice: Result<(&Images, usize), String>) -> Result<u64, String> {
    let (img, i) = choice?;
    let layer = &img.layers[i];
    ops::pull_blob(conn, &plan.ctx, &img.repo, &layer.digest, layer.size).await
}

/// One worker: runs operations on its own connection until the plan's limits or a stop.
async fn worker(
    id: u64,
    target: Arc<Target>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> WorkerOut {
    let mut conn = Conn::new(target);
    let mut out = WorkerOut {
        hist: new_histogram(),
        requests: 0,
        pulls: 0,
        pushes: 0,
    };
    let mut rng = Rng::new(plan.run_id ^ id.wrapping_mul(0x9E37_79B9));
    let mut seq = 0u64;
    loop {
        if *stop.borrow() || plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(n) = plan.requests
            && shared.claimed.fetch_add(1, Ordering::Relaxed) >= n
        {
            break;
        }
        seq += 1;
        let start = Instant::now();
        let outcome = tokio::select! {
            r = tokio::time::timeout(plan.timeout, one_op(&mut conn, &plan, id, seq, &mut rng)) => r,
            _ = stop.changed() => break, // interrupted: the operation in flight is not counted
        };
        let elapsed = start.elapsed();
        let result = match outcome {
            Ok((r, side)) => {
                match (side, &r) {
                    (Side::Pull, Ok(_)) => out.pulls += 1,
                    (Side::Push, Ok(_)) => out.pushes += 1,
                    _ => {}
                }
                r
            }
            Err(_) => Err(format!(
                "{}: operation timed out after {:?}",
                plan.work.name(),
                plan.timeout
            )),
        };
        match result {
            Ok(bytes) => {
                out.hist.saturating_record(elapsed.as_micros().max(1) as u64);
                shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(msg) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                {
                    let mut samples = shared.samples.lock().unwrap_or_else(|e| e.into_inner());
                    if samples.len() < 5 && !samples.contains(&msg) {
                        samples.push(msg);
                    }
                }
                // The connection may be mid-request: start afresh, and do not spin on a dead server.
                conn.reset();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    out.requests = conn.requests;
    out
}

/// A registry under test.
struct Registry {
    target: Arc<Target>,
    pid: Option<u32>,
    images: HashMap<u64, Arc<Images>>,
}

/// Run-wide settings and state.
struct Env {
    args: RunArgs,
    ctx: Arc<Ctx>,
    run_id: u64,
    show_progress: bool,
}

/// Runs one test against one registry and summarises it.
async fn run_test(reg: &Registry, work: Work, test_no: u64, env: &Env, stop: &watch::Receiver<bool>) -> TestResult {
    let args = &env.args;
    let repo_prefix = args.repo.trim_end_matches('/');
    let push_repo = match work {
        Work::PushMono(s) => format!("{repo_prefix}/push-mono-{}", size_tag(s)),
        Work::PushChunked(s) => format!("{repo_prefix}/push-chunked-{}", size_tag(s)),
        Work::Mixed(s) => format!("{repo_prefix}/mixed-{}", size_tag(s)),
        _ => String::new(),
    };
    let image_size = match work {
        Work::Pull(s) | Work::Mixed(s) => Some(s),
        Work::Head | Work::Manifest => args.size.iter().min().copied(),
        _ => None,
    };
    let images = image_size.and_then(|s| reg.images.get(&s).cloned());

    if let Some(pid) = reg.pid
        && args.reset_peak_rss
        && let Err(e) = stats::reset_peak_rss(pid)
    {
        eprintln!("warning: {e}");
    }
    let before = reg.pid.map(stats::sample);
    let client_before = stats::sample(std::process::id()).ok();
    let start = Instant::now();
    let plan = Arc::new(Plan {
        work,
        ctx: Arc::clone(&env.ctx),
        run_id: env.run_id,
        test_no,
        push_repo,
        images,
        requests: args.requests,
        deadline: args.duration.map(|d| start + d),
        timeout: args.timeout,
    });
    let shared = Arc::new(Shared::default());
    let handles: Vec<_> = (0..args.concurrency as u64)
        .map(|id| {
            tokio::spawn(worker(
                id,
                Arc::clone(&reg.target),
                Arc::clone(&plan),
                Arc::clone(&shared),
                stop.clone(),
            ))
        })
        .collect();

    let finished = Arc::new(AtomicBool::new(false));
    let ticker = spawn_progress(env, reg, work, &shared, &finished, start);

    let mut hist = new_histogram();
    let (mut requests, mut pulls, mut pushes) = (0, 0, 0);
    for h in handles {
        match h.await {
            Ok(w) => {
                let _ = hist.add(&w.hist);
                requests += w.requests;
                pulls += w.pulls;
                pushes += w.pushes;
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared
                    .samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("worker failed: {e}"));
            }
        }
    }
    let duration = start.elapsed().as_secs_f64();
    finished.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    let after = reg.pid.map(stats::sample);
    let client_cpu_s = client_before
        .zip(stats::sample(std::process::id()).ok())
        .map(|(b, a)| stats::server_stats(b, a, 0, 0).cpu_s);

    let ops = shared.done.load(Ordering::Relaxed);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    let server = match (before, after) {
        (Some(Ok(b)), Some(Ok(a))) => {
            let mut srv = stats::server_stats(b, a, ops, bytes);
            if work.size().is_none() {
                srv.cpu_s_per_gb = None; // manifests and catalogs are too small for a per-GB figure to mean much
            }
            Some(srv)
        }
        (Some(Err(e)), _) | (_, Some(Err(e))) => {
            eprintln!("warning: cannot sample server process: {e}");
            None
        }
        _ => None,
    };
    TestResult {
        label: reg.target.label.clone(),
        url: reg.target.url.clone(),
        test: work.name(),
        size_bytes: work.size(),
        concurrency: args.concurrency,
        ops,
        errors: shared.errors.load(Ordering::Relaxed),
        http_requests: requests,
        error_samples: std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|e| e.into_inner())),
        duration_s: duration,
        bytes,
        ops_per_s: ops as f64 / duration.max(1e-9),
        mb_per_s: bytes as f64 / 1e6 / duration.max(1e-9),
        latency: Latency::from_histogram(&hist),
        server,
        client_cpu_s,
        detail: matches!(work, Work::Mixed(_)).then(|| format!("pull {pulls} / push {pushes}")),
        interrupted: *stop.borrow(),
        round: args.round,
    }
}

/// Spawns the progress-bar ticker of a test (a no-op bar when hidden).
fn spawn_progress(
    env: &Env,
    reg: &Registry,
    work: Work,
    shared: &Arc<Shared>,
    finished: &Arc<AtomicBool>,
    start: Instant,
) -> tokio::task::JoinHandle<()> {
    let args = &env.args;
    let by_time = args.duration.filter(|_| args.requests.is_none());
    let bar = if !env.show_progress {
        ProgressBar::hidden()
    } else if let Some(d) = by_time {
        ProgressBar::new(d.as_millis() as u64)
    } else {
        ProgressBar::new(args.requests.unwrap_or(0))
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{} {}", reg.target.label, work.name()));
    let (shared, finished) = (Arc::clone(shared), Arc::clone(finished));
    tokio::spawn(async move {
        while !finished.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let done = shared.done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let pos = if by_time.is_some() {
                start.elapsed().as_millis() as u64
            } else {
                done
            };
            bar.set_position(pos.min(bar.length().unwrap_or(u64::MAX)));
            bar.set_message(format!(
                "{done} ops, {} err, {:.0} ops/s, {:.1} MB/s",
                shared.errors.load(Ordering::Relaxed),
                done as f64 / secs,
                shared.bytes.load(Ordering::Relaxed) as f64 / 1e6 / secs
            ));
        }
        bar.finish_and_clear();
    })
}

/// Pushes the images the read tests use; failures are reported, not fatal.
async fn setup(reg: &mut Registry, sizes: &[u64], layers: &HashMap<u64, Vec<Blob>>, env: &Env) {
    let mut conn = Conn::new(Arc::clone(&reg.target));
    if let Err(e) = ops::ping(&mut conn).await {
        eprintln!("warning: {}: {e}", reg.target.label);
    }
    for &size in sizes {
        let repo = format!("{}/pull-{}", env.args.repo.trim_end_matches('/'), size_tag(size));
        let mut ok = Vec::new();
        let started = Instant::now();
        for (i, layer) in layers[&size].iter().enumerate() {
            match ops::ensure_image(&mut conn, &env.ctx, &repo, &format!("setup-{i}"), layer).await {
                Ok(()) => ok.push(layer.clone()),
                Err(e) => {
                    eprintln!("warning: {}: setup of {repo}:setup-{i} failed: {e}", reg.target.label);
                    conn.reset();
                    break; // keep the images pushed so far; tags are positional, so stop at the first gap
                }
            }
        }
        eprintln!(
            "setup {}: {repo}: {} image(s) of {} ready in {:.1}s",
            reg.target.label,
            ok.len(),
            format_size(size),
            started.elapsed().as_secs_f64()
        );
        reg.images.insert(size, Arc::new(Images { repo, layers: ok }));
    }
}

/// The whole run: setup, then every test against every registry in turn.
async fn run(args: RunArgs, compare: bool) -> i32 {
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let creds = Credentials {
        user: args.user.clone(),
        password: args.password.clone(),
        token: args.token.clone(),
    };
    let mut registries = Vec::new();
    for (i, url) in args.urls.iter().enumerate() {
        match Target::resolve(url, args.labels.get(i).cloned(), &creds) {
            Ok(mut t) => {
                if registries.iter().any(|r: &Registry| r.target.label == t.label) {
                    t.label = format!("{}#{}", t.label, i + 1);
                }
                registries.push(Registry {
                    target: Arc::new(t),
                    pid: args.pids.get(i).copied(),
                    images: HashMap::new(),
                })
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    if compare && registries.len() < 2 {
        eprintln!("error: compare needs at least two --url (or --input reports)");
        return 2;
    }
    let work = expand(&args.tests, &args.size);
    let run_id = scenario::run_id();
    let pattern = Arc::new(Pattern::new(args.seed));
    let ctx = Arc::new(Ctx {
        pattern: Arc::clone(&pattern),
        mono: args.mono,
        chunk_size: args.chunk_size,
        verify_digest: args.verify_digest,
    });
    let show_progress = !args.no_progress;
    let env = Env {
        args: args.clone(),
        ctx,
        run_id,
        show_progress,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut interrupted = false;
        while tokio::signal::ctrl_c().await.is_ok() {
            if interrupted {
                eprintln!("interrupted twice: exiting");
                std::process::exit(130);
            }
            interrupted = true;
            eprintln!("\ninterrupted: stopping (Ctrl-C again to quit at once)");
            let _ = stop_tx.send(true);
        }
    });

    eprintln!(
        "berth-loadtest: {} registr{}, {} test(s), -c {}, {}",
        registries.len(),
        if registries.len() == 1 { "y" } else { "ies" },
        work.len(),
        args.concurrency,
        match (args.requests, args.duration) {
            (Some(n), Some(d)) => format!("{n} ops or {d:?} per test"),
            (Some(n), None) => format!("{n} ops per test"),
            (None, Some(d)) => format!("{d:?} per test"),
            (None, None) => unreachable!("main sets a default duration"),
        }
    );

    // Digest states of every size used (the slow part for large sizes), off the async threads.
    let mut sizes: Vec<u64> = work.iter().filter_map(|w| w.size()).collect();
    let setup_sizes = setup_sizes(&work, &args.size);
    sizes.extend(&setup_sizes);
    sizes.sort_unstable();
    sizes.dedup();
    let hashing = Instant::now();
    let warm = Arc::clone(&pattern);
    let warm_sizes = sizes.clone();
    let _ = tokio::task::spawn_blocking(move || warm_sizes.iter().for_each(|&s| warm.warm(s))).await;
    if hashing.elapsed() > Duration::from_millis(200) {
        eprintln!("hashed blob bodies in {:.1}s", hashing.elapsed().as_secs_f64());
    }
    let layers: HashMap<u64, Vec<Blob>> = setup_sizes
        .iter()
        .map(|&size| {
            let count = args.pull_images.min((GIB / size).max(1) as usize).max(1);
            let blobs = (0..count as u64)
                .map(|i| pattern.blob(size, tail(b"BLTSETUP", args.seed, size, i)))
                .collect();
            (size, blobs)
        })
        .collect();

    for reg in &mut registries {
        if *stop_rx.borrow() {
            break;
        }
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = setup(reg, &setup_sizes, &layers, &env) => {}
            _ = stop.changed() => {}
        }
    }

    let mut results = Vec::new();
    'tests: for (test_no, &w) in work.iter().enumerate() {
        for reg in &registries {
            if *stop_rx.borrow() {
                break 'tests;
            }
            let r = run_test(reg, w, test_no as u64, &env, &stop_rx).await;
            println!("{}", report::line(&r));
            for e in &r.error_samples {
                println!("    error: {e}");
            }
            results.push(r);
        }
    }

    let interrupted = *stop_rx.borrow();
    let report = Report {
        tool: "berth-loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_unix,
        registries: registries
            .iter()
            .map(|r| RegistryInfo {
                label: r.target.label.clone(),
                url: r.target.url.clone(),
                pid: r.pid,
            })
            .collect(),
        settings: Settings {
            concurrency: args.concurrency,
            requests: args.requests,
            duration_s: args.duration.map(|d| d.as_secs_f64()),
            sizes: args.size.clone(),
            threads: args.threads.unwrap_or(0),
            mono: args
                .mono
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string()),
            chunk_size: args.chunk_size,
        },
        results,
        interrupted,
    };
    finish(&report, &args)
}

/// Prints the final tables, writes the requested files and picks the exit status.
fn finish(report: &Report, args: &RunArgs) -> i32 {
    println!();
    println!("{}", report::markdown(report));
    let mut code = if report.interrupted {
        130
    } else if report.results.iter().any(|r| r.errors > 0) {
        1
    } else {
        0
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report).expect("report serialises");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("error: writing {}: {e}", path.display());
            code = code.max(1);
        }
    }
    if let Some(path) = &args.markdown
        && let Err(e) = std::fs::write(path, report::markdown(report))
    {
        eprintln!("error: writing {}: {e}", path.display());
        code = code.max(1);
    }
    code
}

/// `compare --input ...`: ratios from saved reports.
fn compare_inputs(inputs: &[PathBuf], args: &RunArgs) -> i32 {
    let mut report = Report::default();
    for path in inputs {
        let loaded: Report = match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: reading {}: {e}", path.display());
                return 2;
            }
        };
        if report.results.is_empty() {
            report.settings = loaded.settings.clone();
        }
        report.registries.extend(loaded.registries);
        report.results.extend(loaded.results);
        report.interrupted |= loaded.interrupted;
    }
    if report::labels(&report.results).len() < 2 {
        eprintln!("error: the reports hold fewer than two registries (labels must differ)");
        return 2;
    }
    let table = report::compare_table(&report.results);
    println!("{table}");
    if let Some(path) = &args.markdown
        && let Err(e) = std::fs::write(path, &table)
    {
        eprintln!("error: writing {}: {e}", path.display());
        return 1;
    }
    0
}

fn main() {
    let cli = Cli::parse();
    let (mut args, compare, inputs) = match cli.cmd {
        None => (cli.run, false, Vec::new()),
        Some(Cmd::Run(a)) => (a, false, Vec::new()),
        Some(Cmd::Compare(c)) => (c.run, true, c.inputs),
        Some(Cmd::Sink(s)) => std::process::exit(sink::run(&s)),
        Some(Cmd::Hashrate(h)) => std::process::exit(hashrate::run(&h)),
        Some(Cmd::Scale(a)) => std::process::exit(scale::run(&a)),
        Some(Cmd::ReadersUnderPush(a)) => std::process::exit(readers::run(&a)),
        Some(Cmd::PullThrough(a)) => std::process::exit(pull_through::run(&a)),
        Some(Cmd::Link(a)) => std::process::exit(link::run(&a)),
        Some(Cmd::PushPull(a)) => std::process::exit(push_pull::run(&a)),
    };
    if !inputs.is_empty() {
        std::process::exit(compare_inputs(&inputs, &args));
    }
    if args.urls.is_empty() {
        eprintln!("error: at least one --url is required (see --help)");
        std::process::exit(2);
    }
    if args.concurrency == 0 || args.size.is_empty() || args.requests == Some(0) {
        eprintln!("error: -c, -n and --size must be positive");
        std::process::exit(2);
    }
    if args.chunk_size.is_some_and(|c| c < 1) || args.pull_images == 0 {
        eprintln!("error: --chunk-size and --pull-images must be positive");
        std::process::exit(2);
    }
    if args.pids.len() > args.urls.len() || args.labels.len() > args.urls.len() {
        eprintln!("error: more --pid or --label values than --url values");
        std::process::exit(2);
    }
    if args.requests.is_none() && args.duration.is_none() {
        args.duration = Some(Duration::from_secs(10));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    args.threads = Some(threads);
    if args.size.iter().any(|&s| s > 4 * GIB) {
        eprintln!("note: sizes above 4GiB are unusual for registries; continuing");
    }
    if args.size.iter().any(|&s| s < MIB / 1024) {
        eprintln!("note: sizes below 1KiB measure request overhead more than transfer");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(run(args, compare));
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_expands_in_order() {
        let w = expand(&[TestKind::All], &[10 * MIB, MIB]);
        let names: Vec<String> = w.iter().map(|w| w.name()).collect();
        assert_eq!(
            names,
            [
                "push-mono 1MiB",
                "push-mono 10MiB",
                "push-chunked 1MiB",
                "push-chunked 10MiB",
                "pull 1MiB",
                "pull 10MiB",
                "head",
                "manifest",
                "mixed 75/25 1MiB",
                "mixed 75/25 10MiB",
                "catalog"
            ]
        );
        assert_eq!(setup_sizes(&w, &[10 * MIB, MIB]), [MIB, 10 * MIB]);
        let only_head = expand(&[TestKind::Head, TestKind::Head], &[GIB, MIB]);
        assert_eq!(only_head, [Work::Head]);
        assert_eq!(setup_sizes(&only_head, &[GIB, MIB]), [MIB]);
        assert!(setup_sizes(&expand(&[TestKind::PushMono], &[MIB]), &[MIB]).is_empty());
    }

    #[test]
    fn each_push_test_pushes_its_own_blobs() {
        let run = 0x1234_5678_9abc_def0;
        let first = push_tail(run, 0, 3, 7);
        assert_eq!(first, push_tail(run, 0, 3, 7), "reproducible");
        for other in [
            push_tail(run, 1, 3, 7),
            push_tail(run, 0, 4, 7),
            push_tail(run, 0, 3, 8),
        ] {
            assert_ne!(first, other);
        }
        // What the tail is for: the layers themselves differ.
        let pattern = Pattern::new(1);
        let a = pattern.blob(MIB, push_tail(run, 0, 0, 0));
        let b = pattern.blob(MIB, push_tail(run, 1, 0, 0));
        assert_ne!(
            a.digest, b.digest,
            "push-mono and push-chunked of one size push different blobs"
        );
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "berth-loadtest",
            "--url",
            "http://a:1",
            "--url",
            "http://b:2",
            "--test",
            "pull,head",
            "--size",
            "1MiB,1GiB",
            "-c",
            "4",
            "--duration",
            "5s",
        ])
        .unwrap();
        assert!(cli.cmd.is_none());
        assert_eq!(cli.run.urls.len(), 2);
        assert_eq!(cli.run.tests, [TestKind::Pull, TestKind::Head]);
        assert_eq!(cli.run.size, [MIB, GIB]);
        assert_eq!(cli.run.duration, Some(Duration::from_secs(5)));
        let cli = Cli::try_parse_from([
            "berth-loadtest",
            "compare",
            "--url",
            "http://a:1",
            "--url",
            "http://b:2",
        ])
        .unwrap();
        assert!(matches!(cli.cmd, Some(Cmd::Compare(ref c)) if c.run.urls.len() == 2));
    }

    #[test]
    fn scale_cli_parses() {
        let cli = Cli::try_parse_from([
            "berth-loadtest",
            "scale",
            "--url",
            "http://a:1",
            "--sizes",
            "1000:100:10,1m:100k:3",
            "--duration",
            "2s",
            "--blob-size",
            "300",
            "--seed",
            "7",
            "--restart-cmd",
            "true",
        ])
        .unwrap();
        let Some(Cmd::Scale(a)) = cli.cmd else {
            panic!("not scale: {:?}", cli.cmd)
        };
        assert_eq!(a.sizes.len(), 2);
        assert_eq!(
            (a.sizes[1].blobs, a.sizes[1].repos, a.sizes[1].tags),
            (1_000_000, 100_000, 3)
        );
        assert_eq!(a.duration, Duration::from_secs(2));
        assert_eq!((a.common.blob_size, a.common.seed), (300, 7));
        assert_eq!(a.common.mono, MonoMode::Post);
        assert_eq!(a.restart_cmd.as_deref(), Some("true"));
        // A size is required, and must have three fields; --pid and --pid-file exclude each other.
        assert!(Cli::try_parse_from(["berth-loadtest", "scale", "--url", "http://a:1"]).is_err());
        assert!(
            Cli::try_parse_from(["berth-loadtest", "scale", "--url", "http://a:1", "--sizes", "1000:100"]).is_err()
        );
        assert!(
            Cli::try_parse_from([
                "berth-loadtest",
                "scale",
                "--url",
                "http://a:1",
                "--sizes",
                "10:1:1",
                "--pid",
                "1",
                "--pid-file",
                "/x"
            ])
            .is_err()
        );
    }

    #[test]
    fn pull_through_cli_parses() {
        let cli = Cli::try_parse_from([
            "berth-loadtest",
            "pull-through",
            "--upstream",
            "http://a:1",
            "--mirror",
            "http://b:2",
            "--rounds",
            "3",
            "--json",
            "/tmp/x.json",
        ])
        .unwrap();
        let Some(Cmd::PullThrough(a)) = cli.cmd else {
            panic!("not pull-through: {:?}", cli.cmd)
        };
        assert_eq!(
            (a.prefix.as_str(), a.size, a.rounds, a.concurrency),
            ("up", 100 * MIB, 3, 50)
        );
        assert_eq!(a.output.json.as_deref(), Some(std::path::Path::new("/tmp/x.json")));
        assert!(Cli::try_parse_from(["berth-loadtest", "pull-through", "--upstream", "http://a:1"]).is_err());
    }

    #[test]
    fn readers_cli_parses() {
        let cli = Cli::try_parse_from([
            "berth-loadtest",
            "readers-under-push",
            "--url",
            "http://a:1",
            "--push-url-other",
            "http://b:2",
            "--op",
            "head",
            "-r",
            "8",
            "-p",
            "3",
            "--set",
            "10000:1000:3",
            "--push-into",
            "separate",
        ])
        .unwrap();
        let Some(Cmd::ReadersUnderPush(a)) = cli.cmd else {
            panic!("not readers-under-push: {:?}", cli.cmd)
        };
        assert_eq!(a.op, random_read::ReadKind::Head);
        assert_eq!((a.readers, a.pushers, a.rounds), (8, 3, 1));
        assert_eq!(a.set.repos, 1000);
        assert_eq!(a.push_url, None);
        assert_eq!(a.push_url_other.as_deref(), Some("http://b:2"));
        assert_eq!(a.push_into, readers::PushInto::Separate);
        assert!(
            Cli::try_parse_from([
                "berth-loadtest",
                "readers-under-push",
                "--url",
                "http://a:1",
                "--op",
                "tags"
            ])
            .is_err()
        );
    }
}
