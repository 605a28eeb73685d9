//! Small blobs' bytes kept in memory, within a budget in bytes, so that a `GET` of a config blob,
//! a signature or a small layer costs a map lookup instead of a file open and read on the
//! blocking pool.
//!
//! Blobs are content-addressed and never change, so an entry is never stale: a blob a repository
//! no longer links is refused by the link check before its bytes are asked for, and whoever
//! pushes the digest again pushes the same bytes. Entries go only by eviction (S3-FIFO-like, as
//! in [`crate::hot`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use crate::digest::Digest;

/// Default budget (`cache.blobmemory`).
pub const DEFAULT_BUDGET: u64 = 64 << 20;
/// Default largest blob kept (`cache.blobmaxsize`).
pub const DEFAULT_MAX_BLOB: u64 = 256 << 10;
/// What an entry costs beyond its bytes.
const OVERHEAD: u64 = 160;

#[derive(Clone)]
struct Weigh;

impl Weighter<Digest, Bytes> for Weigh {
    fn weight(&self, _: &Digest, b: &Bytes) -> u64 {
        b.len() as u64 + OVERHEAD
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Clone)]
struct Evictions(Arc<Counters>);

impl Lifecycle<Digest, Bytes> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut Self::RequestState, _: Digest, _: Bytes) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters and size of the cache of small blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads of a blob small enough to keep that went to the file.
    pub misses: u64,
    /// Blobs evicted to stay within the budget.
    pub evictions: u64,
    /// Blobs held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
    /// The budget in bytes.
    pub budget: u64,
}

/// The cache of small blobs.
pub struct Bodies {
    cache: Cache<Digest, Bytes, Weigh, DefaultHashBuilder, Evictions>,
    max_blob: u64,
    budget: u64,
    counters: Arc<Counters>,
}

impl Bodies {
    /// At most `budget` bytes, of blobs up to `max_blob` bytes each (0 for either: nothing is
    /// kept).
    pub fn new(budget: u64, max_blob: u64) -> Bodies {
        let counters = Arc::new(Counters::default());
        let typical = max_blob.clamp(1, 16 << 10);
        let items = usize::try_from(budget / typical).unwrap_or(usize::MAX).max(16);
        Bodies {
            cache: Cache::with(
                items,
                budget.max(1),
                Weigh,
                DefaultHashBuilder::default(),
                Evictions(counters.clone()),
            ),
            max_blob: if budget == 0 { 0 } else { max_blob.min(budget) },
            budget,
            counters,
        }
    }

    /// Whether a read of `len` bytes goes through this cache.
    pub fn covers(&self, len: u64) -> bool {
        len > 0 && len <= self.max_blob
    }

    /// The blob's bytes, when held.
    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        let got = self.cache.get(digest);
        let c = if got.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
        got
    }

    /// Keep a whole blob read from its file.
    pub fn insert(&self, digest: &Digest, bytes: Bytes) {
        if self.covers(bytes.len() as u64) {
            self.cache.insert(digest.clone(), bytes);
        }
    }

    /// Forget a blob (its data is being removed).
    pub fn remove(&self, digest: &Digest) {
        self.cache.remove(digest);
    }

    /// Counters and size.
    pub fn stats(&self) -> BodyStats {
        BodyStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
            budget: self.budget,
        }
    }
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies::new(DEFAULT_BUDGET, DEFAULT_MAX_BLOB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn blob(i: u32, len: usize) -> (Digest, Bytes) {
        let b = Bytes::from(vec![i as u8; len]);
        (Digest::of(Algorithm::Sha256, &[&i.to_le_bytes()[..], &b].concat()), b)
    }

    #[test]
    fn small_blobs_are_kept_within_the_budget() {
        let c = Bodies::new(1 << 20, 64 << 10);
        let (d, b) = blob(1, 1000);
        assert!(c.get(&d).is_none());
        c.insert(&d, b.clone());
        assert_eq!(c.get(&d), Some(b));
        let (big, bb) = blob(2, (64 << 10) + 1);
        assert!(!c.covers(bb.len() as u64));
        c.insert(&big, bb);
        assert!(c.get(&big).is_none(), "above blobmaxsize nothing is kept");
        for i in 10..200 {
            let (d, b) = blob(i, 32 << 10);
            c.insert(&d, b);
        }
        let s = c.stats();
        assert!(s.bytes <= 1 << 20, "{s:?}");
        assert!(s.evictions > 0 && s.entries < 190, "{s:?}");
        assert_eq!((s.hits, s.misses), (1, 2), "{s:?}");
        c.remove(&d);
        assert!(c.get(&d).is_none(), "removed");
        let off = Bodies::new(0, 64 << 10);
        assert!(!off.covers(10));
    }
}
