//! `berth-loadtest push-pull`: pulls right after a push, as a CI job pulls what another one has just
//! pushed.
//!
//! ```text
//! berth-loadtest push-pull --url http://127.0.0.1:5000 --pid 1234 [--url http://127.0.0.1:5001 --pid 5678] \
//!     [--size 1GiB] [--pulls 5] [--rounds 3]
//! ```
//!
//! Every round, for each registry in turn (the order rotates from round to round): push one fresh blob
//! (pseudo-random, `POST` + monolithic `PUT`), then at once `GET` it `--pulls` times, one after the
//! other on one connection. Printed per registry and round: the push rate, the first pull's rate, the
//! rate of all the pulls together (their bytes over the sum of their times), and — with `--pid` (the registry's process, in the order of `--url`)
//! — the server's CPU seconds per GB pulled, from `/proc/<pid>/stat`. The summary gives the median of
//! the rounds and each figure as a ratio to the last `--url` (the reference). Bodies are copied into a
//! buffer written through beforehand and hashed after the clock stops: a wrong body is an error.

use std::sync::Arc;
use std::time::Instant;

use crate::blob::{Blob, Pattern, ReqBody, tail};
use crate::client::{Conn, Target};
use crate::ops::{self, MonoMode};
use crate::pull::{Check, timed_get};
use crate::scenario::{ClientArgs, block_on, run_id};
use crate::stats::median;
use crate::units::{GIB, format_size, parse_size};

/// Arguments of `push-pull`.
#[derive(Debug, clap::Args, Clone)]
pub struct PushPullArgs {
    /// Registry base URL (repeatable; the last one is the reference of the ratios).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The process of the registry of the same position, for its CPU time.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Blob size (at most 4 GiB: the body is held in memory to be checked).
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    size: u64,
    /// Pulls after each push.
    #[arg(long, default_value_t = 5)]
    pulls: u32,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Repository of the blobs.
    #[arg(long, default_value = "berth-pushpull")]
    repo: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// One registry's figures in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    push_gb_s: f64,
    first_gb_s: f64,
    all_gb_s: f64,
    /// Server CPU seconds per GB pulled, over all the pulls.
    cpu_s_per_gb: Option<f64>,
}

/// Runs `push-pull`; returns the exit status.
pub fn run(args: &PushPullArgs) -> i32 {
    if args.rounds == 0 || args.pulls == 0 || args.size == 0 || args.size > 4 * GIB {
        eprintln!("error: --rounds and --pulls must be positive, --size between 1 byte and 4GiB");
        return 2;
    }
    if !args.pids.is_empty() && args.pids.len() != args.urls.len() {
        eprintln!("error: give one --pid per --url, or none");
        return 2;
    }
    let mut targets = Vec::new();
    for u in &args.urls {
        match args.client.target(u) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    let args = args.clone();
    block_on(args.client.threads, move |_stop| measure(args, targets))
}

/// CPU seconds (user + system) `pid` has used, from `/proc/<pid>/stat` (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0)
}

async fn measure(args: PushPullArgs, targets: Vec<Arc<Target>>) -> i32 {
    let run_id = run_id();
    let pattern = Arc::new(Pattern::new(run_id));
    let (p, size) = (pattern.clone(), args.size);
    let mut buf = tokio::task::spawn_blocking(move || {
        p.warm(size);
        vec![1u8; size as usize]
    })
    .await
    .unwrap_or_default();
    eprintln!(
        "push-pull: {} blobs, {} pull(s) after each push, {} round(s), registries: {}",
        format_size(size),
        args.pulls,
        args.rounds,
        args.urls.join(", ")
    );
    let n = targets.len();
    let mut results = vec![Vec::new(); n];
    for round in 0..args.rounds {
        for k in 0..n {
            let i = (k + round as usize) % n;
            let blob = pattern.blob(size, tail(b"BLTPSHPL", run_id, u64::from(round), i as u64));
            match one(&args, &targets[i], args.pids.get(i).copied(), &pattern, &blob, &mut buf).await {
                Ok(r) => {
                    eprintln!(
                        "round {} {}: push {:.2} GB/s, first pull {:.2} GB/s, {} pulls {:.2} GB/s{}",
                        round + 1,
                        args.urls[i],
                        r.push_gb_s,
                        r.first_gb_s,
                        args.pulls,
                        r.all_gb_s,
                        r.cpu_s_per_gb
                            .map(|c| format!(", server {c:.3} CPU-s/GB"))
                            .unwrap_or_default()
                    );
                    results[i].push(r);
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", args.urls[i]);
                    return 1;
                }
            }
        }
    }
    println!("\n{}", table(&args.urls, &results));
    0
}

/// Push `blob`, then pull it `--pulls` times.
async fn one(
    args: &PushPullArgs,
    target: &Arc<Target>,
    pid: Option<u32>,
    pattern: &Arc<Pattern>,
    blob: &Blob,
    buf: &mut Vec<u8>,
) -> Result<Round, String> {
    let mut conn = Conn::new(Arc::clone(target));
    ops::ping(&mut conn).await?;
    let start = Instant::now();
    let body = ReqBody::Gen(pattern.body(blob, 0..blob.size));
    ops::upload_mono(&mut conn, MonoMode::PostPut, &args.repo, &blob.digest, body).await?;
    let push_s = start.elapsed().as_secs_f64();
    let path = format!("/v2/{}/blobs/{}", args.repo, blob.digest);
    let cpu0 = pid.and_then(cpu_seconds);
    // The pulls' own times (request to last byte), not the client's check of each body after it.
    let (mut first, mut all_s) = (0.0, 0.0);
    for k in 0..args.pulls {
        let mut b = Some(&mut *buf);
        let p = timed_get(&mut conn, &path, blob, Check::with(&mut b)).await?;
        if k == 0 {
            first = p.gb_per_s;
        }
        all_s += p.seconds;
    }
    let gb = blob.size as f64 / 1e9;
    let cpu = pid
        .and_then(cpu_seconds)
        .zip(cpu0)
        .map(|(b, a)| (b - a) / (gb * f64::from(args.pulls)));
    Ok(Round {
        push_gb_s: gb / push_s,
        first_gb_s: first,
        all_gb_s: gb * f64::from(args.pulls) / all_s,
        cpu_s_per_gb: cpu,
    })
}

/// The summary: medians, and ratios to the last registry.
fn table(urls: &[String], results: &[Vec<Round>]) -> String {
    let med = |i: usize, f: fn(&Round) -> f64| {
        let v: Vec<f64> = results[i].iter().map(f).collect();
        median(&v).unwrap_or(f64::NAN)
    };
    let last = urls.len() - 1;
    let ratio = |i: usize, f: fn(&Round) -> f64| {
        if i == last {
            String::new()
        } else {
            format!(" ({:.2}x)", med(i, f) / med(last, f))
        }
    };
    let mut t = String::from(
        "| registry | push GB/s | first pull after push GB/s | all pulls GB/s | server CPU-s/GB |\n|---|---:|---:|---:|---:|\n",
    );
    for (i, u) in urls.iter().enumerate() {
        let cpu: Vec<f64> = results[i].iter().filter_map(|r| r.cpu_s_per_gb).collect();
        let cpu = median(&cpu).map_or_else(|| "-".to_string(), |c| format!("{c:.3}"));
        t.push_str(&format!(
            "| {u} | {:.2}{} | {:.2}{} | {:.2}{} | {cpu} |\n",
            med(i, |r| r.push_gb_s),
            ratio(i, |r| r.push_gb_s),
            med(i, |r| r.first_gb_s),
            ratio(i, |r| r.first_gb_s),
            med(i, |r| r.all_gb_s),
            ratio(i, |r| r.all_gb_s),
        ));
    }
    t.push_str(&format!(
        "\nMedians of {} round(s); in parentheses, the ratio to {}.\n",
        results[0].len(),
        urls[last]
    ));
    t
}
