//! `berth-loadtest readers-under-push`: do read caches survive writes?
//!
//! ```text
//! berth-loadtest readers-under-push --url http://127.0.0.1:5000 [--set 1000:100:10] [--op manifest|blob|head] \
//!     [-r 16] [-p 2] [--duration 10s] [--rounds 1] [--push-into same|separate] \
//!     [--push-url URL] [--push-url-other http://127.0.0.1:5001] [--json out.json] [--markdown out.md]
//! ```
//!
//! `--set B:R:T` is the readers' population, pushed first (incrementally, as `scale` does; same `--repo`,
//! `--seed` and `--blob-size` reuse a `scale` population). Each round then runs, for `--duration` each:
//!
//! 1. `-r` reader connections alone, each operation (`--op`) on a uniformly random item of the set;
//! 2. the readers again while `-p` pusher connections push continuously to `--push-url` (default: `--url`,
//!    the readers' own registry): a fresh small layer, its config and a manifest under a fresh tag, into the
//!    readers' repositories round-robin (`--push-into same`, the default) or into `<repo>/pushes`;
//! 3. with `--push-url-other`, the same pushes to that other registry process instead: the CPU contention of
//!    pushing on this machine without any state shared with the readers' registry.
//!
//! It prints each phase's readers' rate and p50/p99 with their ratios to the round's idle phase, the
//! pushers' pushes/s and p99, then summary ratios (medians over `--rounds`): under pushes / alone, and with
//! both URLs, same registry / other registry — near 1.0 means the pushes cost the readers only CPU, not
//! cache invalidation or locks. Exit status: 0 when everything succeeded, 1 on failures, 130 on Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::blob::{Rng, tail};
use crate::client::{Conn, Target};
use crate::ops::{self, Ctx, Upload};
use crate::population::{Layout, Spec, populate};
use crate::random_read::{RandomRead, ReadKind};
use crate::readers_report::{Phase, PhaseResult, Summary, markdown, summarise, summary_lines};
use crate::scenario::{Common, block_on, run_id, write_reports};
use crate::timed::{Op, Rate, run_for};
use crate::units::parse_duration;

/// Where pushers push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum PushInto {
    /// The readers' repositories, round-robin.
    Same,
    /// One repository of their own, `<repo>/pushes`.
    Separate,
}

/// Arguments of `readers-under-push`.
#[derive(Debug, clap::Args, Clone)]
pub struct ReadersArgs {
    /// The readers' registry.
    #[arg(long)]
    pub url: String,
    /// The pushers' registry (default: --url).
    #[arg(long)]
    pub push_url: Option<String>,
    /// A second pushers' registry: one more phase with the pushers there, and the ratio same/other.
    #[arg(long)]
    pub push_url_other: Option<String>,
    /// The readers' population, blobs:repos:tags-per-repo.
    #[arg(long, value_parser = Spec::parse, default_value = "1000:100:10")]
    pub set: Spec,
    /// What the readers do.
    #[arg(long, value_enum, default_value = "manifest")]
    pub op: ReadKind,
    /// Reader connections.
    #[arg(short = 'r', long, default_value_t = 16)]
    pub readers: usize,
    /// Pusher connections.
    #[arg(short = 'p', long, default_value_t = 2)]
    pub pushers: usize,
    /// Time of each phase.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Rounds of all phases (the summary takes the median of the rounds' ratios).
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Which repositories the pushers push into.
    #[arg(long, value_enum, default_value = "same")]
    pub push_into: PushInto,
    #[command(flatten)]
    pub common: Common,
}

/// The JSON report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadersReport {
    /// The readers' registry.
    pub url: String,
    /// The readers' population.
    pub set: Spec,
    /// The readers' operation.
    pub op: ReadKind,
    /// Reader connections.
    pub readers: usize,
    /// Pusher connections.
    pub pushers: usize,
    /// Seconds per phase.
    pub duration_s: f64,
    /// Every phase of every round.
    pub phases: Vec<PhaseResult>,
    /// The ratios.
    pub summary: Summary,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

/// A continuous pusher: one fresh one-layer image per operation.
struct Push {
    ctx: Arc<Ctx>,
    layout: Arc<Layout>,
    set: Spec,
    into: PushInto,
    /// Makes blobs and tags unique to this run (and phase).
    run_id: u64,
}

impl Op for Push {
    async fn run(&self, conn: &mut Conn, _rng: &mut Rng, worker: u64, seq: u64) -> Result<u64, String> {
        let repo = match self.into {
            PushInto::Same => self.layout.repo((worker.wrapping_mul(7919) + seq) % self.set.repos),
            PushInto::Separate => format!("{}/pushes", self.layout.prefix),
        };
        let layer = self
            .ctx
            .pattern
            .blob(self.layout.blob_size, tail(b"BLTRUPSH", self.run_id, worker, seq));
        let tag = format!("p{:x}-{worker}-{seq}", self.run_id);
        ops::push_image(conn, &self.ctx, &repo, &tag, &layer, Upload::Mono).await
    }
}

/// Prints one phase as it finishes.
fn progress(round: u32, phase: Phase, readers: &Rate, pushers: Option<&Rate>) {
    let pushes = pushers.map_or_else(String::new, |p| {
        format!(
            ", pushers {:.0} pushes/s (p99 {:.2} ms, {} errors)",
            p.per_s, p.latency.p99_ms, p.errors
        )
    });
    eprintln!(
        "round {round}: {}: readers {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors{pushes}",
        phase.name(),
        readers.per_s,
        readers.latency.p50_ms,
        readers.latency.p99_ms,
        readers.errors
    );
    for e in readers
        .error_samples
        .iter()
        .chain(pushers.iter().flat_map(|p| p.error_samples.iter()))
    {
        eprintln!("    error: {e}");
    }
}

/// Runs `readers-under-push`; returns the exit status.
pub fn run(args: &ReadersArgs) -> i32 {
    if args.readers == 0 || args.pushers == 0 || args.rounds == 0 {
        eprintln!("error: -r, -p and --rounds must be positive");
        return 2;
    }
    let resolve = |u: &str| args.common.target(u);
    let targets = (|| -> Result<_, String> {
        let read = resolve(&args.url)?;
        let push = match &args.push_url {
            Some(u) => resolve(u)?,
            None => Arc::clone(&read),
        };
        let other = args.push_url_other.as_deref().map(resolve).transpose()?;
        Ok((read, push, other))
    })();
    let (read, push, other) = match targets {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    block_on(args.common.client.threads, |stop| {
        measure(args, read, push, other, stop)
    })
}

/// Populates, then runs the rounds.
async fn measure(
    args: &ReadersArgs,
    read: Arc<Target>,
    push: Arc<Target>,
    other: Option<Arc<Target>>,
    stop: watch::Receiver<bool>,
) -> i32 {
    let (ctx, layout) = args.common.ctx_layout();
    match populate(&read, &ctx, &layout, args.set, args.common.push_concurrency, &stop).await {
        Ok(p) => eprintln!(
            "readers-under-push: set {} ready in {:.1}s ({} blobs and {} manifests pushed)",
            args.set.label(),
            p.seconds,
            p.blobs_pushed,
            p.manifests_put
        ),
        Err(e) => {
            eprintln!("error: populating {}: {e}", args.set.label());
            return 1;
        }
    }
    let run_base = run_id();
    let reader_op = Arc::new(RandomRead {
        kind: args.op,
        spec: args.set,
        layout: Arc::clone(&layout),
        ctx: Arc::clone(&ctx),
    });
    let mut phases = Vec::new();
    let mut pushers_of: Vec<(Phase, Arc<Target>)> = vec![(Phase::Same, push)];
    if let Some(o) = other {
        pushers_of.push((Phase::Other, o));
    }
    'rounds: for round in 1..=args.rounds {
        let seed = args.common.seed ^ (u64::from(round) << 40);
        if *stop.borrow() {
            break;
        }
        let idle = run_for(&read, Arc::clone(&reader_op), args.readers, args.duration, seed, &stop).await;
        progress(round, Phase::Idle, &idle, None);
        phases.push(PhaseResult {
            round,
            phase: Phase::Idle,
            push_url: None,
            readers: idle,
            pushers: None,
        });
        for (i, (phase, target)) in pushers_of.iter().enumerate() {
            if *stop.borrow() {
                break 'rounds;
            }
            let pusher = Arc::new(Push {
                ctx: Arc::clone(&ctx),
                layout: Arc::clone(&layout),
                set: args.set,
                into: args.push_into,
                run_id: run_base ^ (u64::from(round) << 48) ^ ((i as u64) << 56),
            });
            let (readers, pushers) = tokio::join!(
                run_for(&read, Arc::clone(&reader_op), args.readers, args.duration, seed, &stop),
                run_for(target, pusher, args.pushers, args.duration, seed, &stop),
            );
            progress(round, *phase, &readers, Some(&pushers));
            phases.push(PhaseResult {
                round,
                phase: *phase,
                push_url: Some(target.url.clone()),
                readers,
                pushers: Some(pushers),
            });
        }
    }
    let summary = summarise(&phases);
    let table = markdown(&phases, args.op.name());
    println!("\n{table}");
    for line in summary_lines(&summary, args.rounds as usize) {
        println!("{line}");
    }
    let failed = phases
        .iter()
        .any(|p| p.readers.errors > 0 || p.pushers.as_ref().is_some_and(|x| x.errors > 0));
    let interrupted = *stop.borrow();
    let report = ReadersReport {
        url: read.url.clone(),
        set: args.set,
        op: args.op,
        readers: args.readers,
        pushers: args.pushers,
        duration_s: args.duration.as_secs_f64(),
        phases,
        summary,
        interrupted,
    };
    let ok = write_reports(&args.common.output, &report, &table);
    if interrupted {
        130
    } else if failed || !ok {
        1
    } else {
        0
    }
}
