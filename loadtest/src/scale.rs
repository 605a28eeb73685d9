//! `berth-loadtest scale`: read costs as the registry grows, one population size after another.
//!
//! ```text
//! berth-loadtest scale --url http://127.0.0.1:5000 --sizes 1000:100:10,100000:10000:3,1000000:100000:3 \
//!     [--duration 5s] [-c 32] [--push-concurrency 32] [--blob-size 512] [--seed N] [--repo berth-scale] \
//!     [--catalog-page 1000] [--tags-page 100] [--pid PID | --pid-file FILE] \
//!     [--restart-cmd 'systemctl restart berth'] [--json scale.json] [--markdown scale.md]
//! ```
//!
//! Each size `B:R:T` (`k`/`m` suffixes allowed: `1m:100k:3`) is `B` layer blobs of `--blob-size` bytes spread
//! over `R` repositories with `T` tags each (see `population.rs` for the naming). Sizes run in the order
//! given, and each is populated incrementally through the API: only what is missing is pushed (single
//! `POST ?digest=` uploads by default, `--mono post-put` for `POST` + `PUT`), so `1000:100:10` then
//! `100000:10000:10` reuses the first thousand blobs, and a re-run of a size already complete costs one
//! `HEAD`. Then, for `--duration` each, on `-c` keep-alive connections:
//!
//! - random blob `GET`, random manifest `GET` by tag, random blob `HEAD`: each operation draws its item
//!   uniformly from the whole population of that size (seeded by `--seed`), never a hot subset;
//! - a catalog walk `GET /v2/_catalog?n=<catalog-page>` following `Link` headers to the end, on one
//!   connection, at least once (again while the duration lasts): mean time per page;
//! - tag-list walks of random repositories, `n=<tags-page>`, following `Link`: mean time per page;
//! - with `--pid PID` (or `--pid-file FILE`, read each time, for a server that `--restart-cmd` restarts):
//!   the server's VmRSS and VmHWM;
//! - with `--restart-cmd CMD`: `sh -c CMD` runs (it must return once the old process is gone and the new one
//!   is started in the background), then the seconds from its start until it returns (the old process's
//!   shutdown is in there), until `GET /v2/` answers 200 and until the first random manifest `GET` succeeds.
//!
//! Output: one markdown row per size (blobs, repos, tags, populate s, blob GET req/s, manifest GET req/s,
//! HEAD req/s, catalog ms/page, tags ms/page, restart s, RSS MB) and, for every size after the first, a row
//! of its ratios to the first; `--json FILE` gets every figure (latency percentiles, request counts, errors).
//! Exit status: 0 when everything succeeded, 1 on any failed operation, 2 on a usage error, 130 on Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::blob::Rng;
use crate::client::{Conn, Target};
use crate::listing::{walk_catalog, walk_tags};
use crate::ops::{self, Ctx};
use crate::population::{Layout, Spec, populate};
use crate::random_read::{RandomRead, ReadKind, pick_tag};
use crate::scale_report::{Memory, ScaleReport, ScaleRow, Startup, error_notes, markdown};
use crate::scenario::{Common, block_on, write_reports};
use crate::stats;
use crate::timed::run_for;
use crate::units::parse_duration;

/// Arguments of `scale`.
#[derive(Debug, clap::Args, Clone)]
pub struct ScaleArgs {
    /// Registry base URL.
    #[arg(long)]
    pub url: String,
    /// Population sizes `blobs:repos:tags-per-repo`, comma-separated, run in this order (e.g. 1000:100:10,100000:10000:3).
    #[arg(long, value_parser = Spec::parse, value_delimiter = ',', required = true)]
    pub sizes: Vec<Spec>,
    /// Time of each timed read at each size.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Connections of the timed reads.
    #[arg(short = 'c', long, default_value_t = 32)]
    pub concurrency: usize,
    /// Page size (`n=`) of the catalog walk.
    #[arg(long, default_value_t = 1000)]
    pub catalog_page: u64,
    /// Page size (`n=`) of the tag-list walks.
    #[arg(long, default_value_t = 100)]
    pub tags_page: u64,
    /// Server PID, for VmRSS / VmHWM.
    #[arg(long, conflicts_with = "pid_file")]
    pub pid: Option<u32>,
    /// File holding the server PID, read at each sample (for a server that --restart-cmd restarts).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Shell command that restarts the registry, run after each size's reads to time the start-up.
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// How long to wait for the registry to answer after --restart-cmd.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub startup_timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `scale`; returns the exit status.
pub fn run(args: &ScaleArgs) -> i32 {
    if args.concurrency == 0 || args.catalog_page == 0 || args.tags_page == 0 {
        eprintln!("error: -c, --catalog-page and --tags-page must be positive");
        return 2;
    }
    let target = match args.common.target(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    block_on(args.common.client.threads, |stop| measure_all(args, target, stop))
}

/// Reads the server's memory figures, if a PID was given.
fn memory(args: &ScaleArgs) -> Option<Memory> {
    let pid = match (&args.pid, &args.pid_file) {
        (Some(pid), _) => *pid,
        (None, Some(file)) => match std::fs::read_to_string(file).map(|t| t.trim().parse::<u32>()) {
            Ok(Ok(pid)) => pid,
            other => {
                eprintln!("warning: no PID in {}: {other:?}", file.display());
                return None;
            }
        },
        (None, None) => return None,
    };
    match stats::sample(pid) {
        Ok(s) => Some(Memory {
            rss_mib: s.rss_kib as f64 / 1024.0,
            hwm_mib: s.hwm_kib as f64 / 1024.0,
        }),
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    }
}

/// Runs the restart command, then times the way back to `/v2/` and to a random manifest.
async fn restart(
    cmd: &str,
    target: &Arc<Target>,
    layout: &Arc<Layout>,
    spec: &Spec,
    timeout: Duration,
    seed: u64,
) -> Startup {
    let start = Instant::now();
    let command = cmd.to_string();
    let status =
        tokio::task::spawn_blocking(move || std::process::Command::new("sh").arg("-c").arg(command).status()).await;
    let mut startup = Startup::default();
    match status {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => startup.error = Some(format!("--restart-cmd exited with {s}")),
        Ok(Err(e)) => startup.error = Some(format!("--restart-cmd: {e}")),
        Err(e) => startup.error = Some(format!("--restart-cmd: {e}")),
    }
    startup.command_s = Some(start.elapsed().as_secs_f64());
    if startup.error.is_some() {
        return startup;
    }
    let mut conn = Conn::new(Arc::clone(target));
    let mut rng = Rng::new(seed);
    let mut last_error = String::new();
    while start.elapsed() < timeout {
        let attempt = if startup.v2_s.is_none() {
            ops::ping(&mut conn).await.map(|()| true)
        } else {
            let (r, t) = pick_tag(spec, &mut rng);
            ops::get_manifest(&mut conn, &layout.repo(r), &Layout::tag(t))
                .await
                .map(|_| false)
        };
        match attempt {
            Ok(true) => startup.v2_s = Some(start.elapsed().as_secs_f64()),
            Ok(false) => {
                startup.manifest_s = Some(start.elapsed().as_secs_f64());
                return startup;
            }
            Err(e) => {
                last_error = e;
                conn.reset();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    startup.error = Some(format!("not back after {timeout:?}: {last_error}"));
    startup
}

/// Populates and measures one size.
async fn measure(
    args: &ScaleArgs,
    target: &Arc<Target>,
    ctx: &Arc<Ctx>,
    layout: &Arc<Layout>,
    step: u64,
    spec: Spec,
    stop: &watch::Receiver<bool>,
) -> Result<ScaleRow, String> {
    let label = spec.label();
    eprintln!(
        "scale {label}: populating ({} blobs, {} repositories, {} tags)",
        spec.blobs,
        spec.repos,
        spec.total_tags()
    );
    let populated = populate(target, ctx, layout, spec, args.common.push_concurrency, stop).await?;
    eprintln!(
        "scale {label}: populated in {:.1}s ({} repositories touched, {} blobs and {} manifests pushed, {} requests{})",
        populated.seconds,
        populated.repos_touched,
        populated.blobs_pushed,
        populated.manifests_put,
        populated.requests,
        if populated.already_complete {
            ", already complete"
        } else {
            ""
        }
    );
    let seed = |what: u64| args.common.seed ^ (step << 40) ^ (what << 32);
    let mut rates = Vec::new();
    for (i, kind) in [ReadKind::Blob, ReadKind::Manifest, ReadKind::Head]
        .into_iter()
        .enumerate()
    {
        let op = Arc::new(RandomRead {
            kind,
            spec,
            layout: Arc::clone(layout),
            ctx: Arc::clone(ctx),
        });
        let rate = run_for(target, op, args.concurrency, args.duration, seed(i as u64), stop).await;
        eprintln!(
            "scale {label}: {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
            kind.name(),
            rate.per_s,
            rate.latency.p50_ms,
            rate.latency.p99_ms,
            rate.errors
        );
        rates.push(rate);
    }
    let catalog = walk_catalog(target, args.catalog_page, args.duration, stop).await;
    eprintln!(
        "scale {label}: catalog: {} walk(s), {} pages, {} repositories listed, {:.2} ms/page (p99 {:.2})",
        catalog.walks, catalog.pages, catalog.entries_first_walk, catalog.page.mean_ms, catalog.page.p99_ms
    );
    let tags = walk_tags(
        target,
        |r| layout.repo(r),
        spec.repos,
        args.tags_page,
        args.duration,
        seed(7),
        stop,
    )
    .await;
    eprintln!(
        "scale {label}: tags: {} walk(s), {} pages, {:.2} ms/page (p99 {:.2})",
        tags.walks, tags.pages, tags.page.mean_ms, tags.page.p99_ms
    );
    let memory = memory(args);
    let startup = match &args.restart_cmd {
        Some(cmd) if !*stop.borrow() => {
            let s = restart(cmd, target, layout, &spec, args.startup_timeout, seed(8)).await;
            let secs = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.3}"));
            eprintln!(
                "scale {label}: restart: command returned after {} s, /v2/ 200 after {} s, first manifest after {} s {}",
                secs(s.command_s),
                secs(s.v2_s),
                secs(s.manifest_s),
                s.error.as_deref().unwrap_or("")
            );
            Some(s)
        }
        _ => None,
    };
    let mut rates = rates.into_iter();
    let mut next = || rates.next().unwrap_or_default();
    Ok(ScaleRow {
        spec,
        populate: populated,
        blob_get: next(),
        manifest_get: next(),
        head: next(),
        catalog,
        tags,
        startup,
        memory,
    })
}

/// Every size in turn, then the table and the files.
async fn measure_all(args: &ScaleArgs, target: Arc<Target>, stop: watch::Receiver<bool>) -> i32 {
    let (ctx, layout) = args.common.ctx_layout();
    let mut rows: Vec<ScaleRow> = Vec::new();
    let mut failed = false;
    for (step, &spec) in args.sizes.iter().enumerate() {
        if *stop.borrow() {
            break;
        }
        if let Some(prev) = rows.last()
            && !spec.contains(&prev.spec)
        {
            eprintln!(
                "note: {} does not contain {} (fewer repositories, tags or blobs per repository): \
                 the extra items stay in the registry but are not drawn",
                spec.label(),
                prev.spec.label()
            );
        }
        match measure(args, &target, &ctx, &layout, step as u64, spec, &stop).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("error: populating {}: {e}", spec.label());
                failed = true;
                break;
            }
        }
    }
    let table = markdown(&rows);
    println!("\n{table}");
    let notes = error_notes(&rows);
    for n in &notes {
        println!("error: {n}");
    }
    let interrupted = *stop.borrow();
    let report = ScaleReport {
        url: target.url.clone(),
        concurrency: args.concurrency,
        duration_s: args.duration.as_secs_f64(),
        blob_size: args.common.blob_size,
        seed: args.common.seed,
        catalog_page: args.catalog_page,
        tags_page: args.tags_page,
        rows,
        interrupted,
    };
    let ok = write_reports(&args.common.output, &report, &table);
    if interrupted {
        130
    } else if failed || !notes.is_empty() || !ok {
        1
    } else {
        0
    }
}
