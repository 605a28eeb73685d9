//! When each mirrored tag was last confirmed by its upstream, and which are being refreshed.
//!
//! Kept in memory with a bounded number of entries: a tag that is not here (never checked by
//! this process, or pushed out by others) counts as stale, so it is served from the cache and
//! checked once in the background — a restart costs one upstream request per tag pulled, never
//! a failed pull.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use berth_engine::{RepoName, Tag};

/// Tags whose last check is remembered.
const REMEMBERED: usize = 100_000;
/// Refreshes in progress at once; more stale tags are served as they are and checked later.
const REFRESHING: usize = 256;

/// The freshness of mirrored tags.
pub struct Tags {
    checked: quick_cache::sync::Cache<(RepoName, Tag), Instant>,
    refreshing: Mutex<HashSet<(RepoName, Tag)>>,
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            checked: quick_cache::sync::Cache::new(REMEMBERED),
            refreshing: Mutex::new(HashSet::new()),
        }
    }
}

impl Tags {
    /// Whether the upstream confirmed the tag less than `ttl` ago.
    pub fn fresh(&self, repo: &RepoName, tag: &Tag, ttl: Duration) -> bool {
        self.checked
            .get(&(repo.clone(), tag.clone()))
            .is_some_and(|t| t.elapsed() < ttl)
    }

    /// The upstream has just confirmed the tag.
    pub fn confirmed(&self, repo: &RepoName, tag: &Tag) {
        self.checked.insert((repo.clone(), tag.clone()), Instant::now());
    }

    /// Claim the refresh of a tag: `None` when one is running already (or too many are).
    pub fn claim(self: &Arc<Self>, repo: &RepoName, tag: &Tag) -> Option<Refresh> {
        let key = (repo.clone(), tag.clone());
        let mut r = self.refreshing.lock();
        if r.len() >= REFRESHING || !r.insert(key.clone()) {
            return None;
        }
        Some(Refresh {
            tags: self.clone(),
            key,
        })
    }
}

/// A refresh in progress; dropping it ends the claim.
pub struct Refresh {
    tags: Arc<Tags>,
    key: (RepoName, Tag),
}

impl Drop for Refresh {
    fn drop(&mut self) {
        self.tags.refreshing.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_within_the_ttl_and_one_refresh_at_a_time() {
        let t = Arc::new(Tags::default());
        let (r, tag): (RepoName, Tag) = ("hub/library/alpine".parse().unwrap(), "3".parse().unwrap());
        assert!(!t.fresh(&r, &tag, Duration::from_secs(60)), "never checked: stale");
        t.confirmed(&r, &tag);
        assert!(t.fresh(&r, &tag, Duration::from_secs(60)));
        assert!(!t.fresh(&r, &tag, Duration::ZERO));
        let first = t.claim(&r, &tag).expect("first claim");
        assert!(t.claim(&r, &tag).is_none(), "a second refresh waits for the first");
        drop(first);
        assert!(t.claim(&r, &tag).is_some());
    }
}
