//! Keeping mirrored content within its budget: when each image was pulled, and the eviction of
//! the least recently pulled whole images when an upstream's content outgrows its `budget`.
//!
//! Pull times are noted in memory as manifests are served and written to the metadata store in
//! batches (every few seconds, and before each eviction pass), so they survive restarts and are
//! shared by replicas. An eviction pass runs after a fill stores a blob and every few seconds:
//! for each upstream with a budget it sums the bytes its repositories link and, while that is
//! over the budget, evicts the least recently used images ([`berth_engine::Sweep::Image`]: the
//! manifest and its tags in one transaction, what only it reaches, then the links of its blobs
//! that nothing remaining references). A blob another image of the repository, or any other
//! repository, still references stays; a tag never points at a half-evicted image.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use berth_engine::{Digest, Engine, RepoName};

use super::{Entry, Mirrors};

/// How often pull times are written and budgets checked when nothing else triggers it.
const INTERVAL: Duration = Duration::from_secs(10);
/// Pull times noted before they are written at once.
const PENDING: usize = 50_000;
/// Least used manifests read per round of a pass.
const CANDIDATES: usize = 256;

/// Pull times not yet written, and the trigger of an eviction pass.
#[derive(Default)]
pub struct Pulls {
    pending: Mutex<HashMap<(RepoName, Digest), u64>>,
    wake: Notify,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Pulls {
    /// A client pulled this manifest now.
    pub fn note(&self, repo: &RepoName, digest: &Digest) {
        let mut p = self.pending.lock();
        // Bounded even when nothing writes them (read-only mode): past twice the batch, new
        // manifests' times are dropped until the next write (their last use then counts from
        // when they were stored or last written).
        if p.len() >= 2 * PENDING && !p.contains_key(&(repo.clone(), digest.clone())) {
            return;
        }
        p.insert((repo.clone(), digest.clone()), now_secs());
        if p.len() >= PENDING {
            self.wake.notify_one();
        }
    }

    /// Something was stored: check the budgets soon.
    pub fn stored(&self) {
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<(RepoName, Digest, u64)> {
        std::mem::take(&mut *self.pending.lock())
            .into_iter()
            .map(|((r, d), t)| (r, d, t))
            .collect()
    }
}

/// Write pull times and evict over-budget content, every [`INTERVAL`] and when woken, for as
/// long as the process runs.
pub fn spawn(engine: Arc<Engine>, mirrors: Arc<Mirrors>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = mirrors.pulls.wake.notified() => {}
                () = tokio::time::sleep(INTERVAL) => {}
            }
            pass(&engine, &mirrors).await;
        }
    });
}

/// One pass: write the pull times, then bring every upstream with a budget within it.
pub async fn pass(engine: &Engine, mirrors: &Mirrors) {
    let batch = mirrors.pulls.take();
    if let Err(e) = engine.record_pulls(batch).await {
        tracing::warn!(error = %e, "recording the pull times of mirrored images failed");
    }
    for entry in mirrors.entries() {
        let Some(budget) = entry.config.budget else {
            continue;
        };
        if let Err(e) = within_budget(engine, mirrors, entry, budget).await {
            tracing::warn!(upstream = %entry.config.name, error = %e, "evicting mirrored images failed");
        }
    }
}

/// The bytes the repositories of `entry` link.
async fn usage(engine: &Engine, mirrors: &Mirrors, entry: &Entry) -> berth_engine::Result<u64> {
    Ok(engine
        .repo_usage(&entry.config.prefix)
        .await?
        .iter()
        .filter(|(r, _)| mirrors.owner(r).is_some_and(|e| std::ptr::eq(e, entry)))
        .map(|(_, bytes)| bytes)
        .sum())
}

/// Evict the least recently used images of `entry` until its repositories link at most
/// `budget` bytes (or nothing more can go).
async fn within_budget(engine: &Engine, mirrors: &Mirrors, entry: &Entry, budget: u64) -> berth_engine::Result<()> {
    let mut used = usage(engine, mirrors, entry).await?;
    let mut tried = HashSet::new();
    while used > budget {
        let candidates: Vec<_> = engine
            .least_used(&entry.config.prefix, CANDIDATES + tried.len())
            .await?
            .into_iter()
            .filter(|c| mirrors.owner(&c.repo).is_some_and(|e| std::ptr::eq(e, entry)))
            .filter(|c| !tried.contains(&(c.repo.clone(), c.digest.clone())))
            .collect();
        if candidates.is_empty() {
            tracing::warn!(upstream = %entry.config.name, used, budget, "mirrored content is over its budget and nothing more can be evicted (blobs no image references wait for garbage collection)");
            return Ok(());
        }
        for c in candidates {
            tried.insert((c.repo.clone(), c.digest.clone()));
            let r = engine.evict_image(&c.repo, &c.digest, Duration::ZERO).await?;
            if r.manifests == 0 {
                // A child of an index that stays, or gone already.
                continue;
            }
            entry.stats.evicted_images.fetch_add(1, Relaxed);
            entry.stats.evicted_bytes.fetch_add(r.link_bytes, Relaxed);
            used = used.saturating_sub(r.link_bytes);
            tracing::info!(upstream = %entry.config.name, repo = %c.repo, digest = %c.digest, manifests = r.manifests, bytes = r.link_bytes, files = r.blobs, last_used = c.used, "evicted a mirrored image");
            if used <= budget {
                break;
            }
        }
        // What others stored meanwhile counts too.
        used = usage(engine, mirrors, entry).await?;
    }
    Ok(())
}
