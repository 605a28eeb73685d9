//! Answers for the small, hot reads — blob sizes (`HEAD` blob and the check before a blob
//! `GET`) and manifests by tag or digest — kept in memory within a budget in bytes, so that a hit
//! costs a lookup in a sharded map instead of a metadata query on the blocking pool.
//!
//! Eviction: `quick_cache`'s S3-FIFO-like policy (a small probation queue, a main queue and a
//! ghost list of recently evicted keys), weighted by each answer's bytes; one-hit wonders leave
//! first, so a scan of many cold manifests does not flush the hot ones.
//!
//! Coherence, per key: the metadata store tells the cache what each commit changed
//! ([`Change`]) — its own commits at once, other processes' and replicas' as it learns of them —
//! and only those answers go. [`Change::Repo`] and [`Change::All`] bump a generation (one per
//! slot of repository names, and one for everything) that entries carry, so they cost O(1).
//! An answer read from the database while a change arrived is not kept: every change bumps an
//! epoch, and an answer is kept only if the epoch did not move between the start of its read and
//! its insertion (checked again after inserting, so an invalidation racing with the insert
//! removes it). Before a lookup trusts the cache, the caller brings the store's feed up to date
//! ([`crate::store::MetaStore::feed`]); a store that cannot tell what changed is read instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use crate::change::Change;
use crate::digest::Digest;
use crate::error::Result;
use crate::meta::StoredManifest;
use crate::name::{Reference, RepoName};

/// Default budget of the cache, in bytes (`cache.memory`).
pub const DEFAULT_BUDGET: u64 = 128 << 20;
/// Slots of per-repository generations (repositories share a slot by hash; a repository-wide
/// invalidation then also drops its slot-mates' answers, which costs misses, never staleness).
const REPO_SLOTS: usize = 4096;
/// What an entry costs beyond its key's and value's own bytes (map slot, `Arc`, queues).
const OVERHEAD: u64 = 96;

/// What is cached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// Size of a blob the repository links.
    Blob(RepoName, Digest),
    /// A manifest of the repository by tag or digest.
    Manifest(RepoName, Reference),
}

impl Key {
    fn repo(&self) -> &RepoName {
        match self {
            Key::Blob(r, _) | Key::Manifest(r, _) => r,
        }
    }
}

/// A cached answer.
#[derive(Clone, Debug)]
enum Value {
    Size(u64),
    Manifest(Arc<StoredManifest>),
}

#[derive(Clone, Debug)]
struct Entry {
    value: Value,
    /// The generations (everything, the repository's slot) it was read under.
    all: u64,
    repo: u64,
}

#[derive(Clone)]
struct Weigh;

impl Weighter<Key, Entry> for Weigh {
    fn weight(&self, key: &Key, e: &Entry) -> u64 {
        let key_bytes = match key {
            Key::Blob(r, _) => r.as_str().len() + 72,
            Key::Manifest(r, reference) => r.as_str().len() + reference.to_string().len(),
        };
        let value_bytes = match &e.value {
            Value::Size(_) => 8,
            Value::Manifest(m) => m.bytes.len() + m.media_type.len() + 64,
        };
        key_bytes as u64 + value_bytes as u64 + OVERHEAD
    }
}

/// Counters of the cache, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    bypassed: AtomicU64,
}

/// A snapshot of the cache's counters and size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups read from the metadata store (then kept, when there is room and nothing changed).
    pub misses: u64,
    /// Answers evicted to stay within the budget.
    pub evictions: u64,
    /// Changes applied (each drops one answer, a repository's or everything).
    pub invalidations: u64,
    /// Lookups that did not use the cache because the store could not tell what changed.
    pub bypassed: u64,
    /// Answers held.
    pub entries: u64,
    /// Their weight in bytes.
    pub bytes: u64,
    /// The budget in bytes.
    pub budget: u64,
}

#[derive(Clone)]
struct Evictions(Arc<Counters>);

impl Lifecycle<Key, Entry> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut Self::RequestState, _: Key, _: Entry) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

/// The cache.
pub struct Hot {
    cache: Cache<Key, Entry, Weigh, DefaultHashBuilder, Evictions>,
    slots: DefaultHashBuilder,
    /// Bumped by every change applied.
    epoch: AtomicU64,
    all: AtomicU64,
    repos: Box<[AtomicU64]>,
    counters: Arc<Counters>,
    budget: u64,
}

impl Hot {
    /// An empty cache holding at most `budget` bytes of answers (0: nothing is kept).
    pub fn new(budget: u64) -> Hot {
        let counters = Arc::new(Counters::default());
        // About 1 KiB per answer on average (blob sizes are ~200 bytes, manifests 1–4 KiB).
        let items = usize::try_from(budget / 1024).unwrap_or(usize::MAX).max(16);
        Hot {
            cache: Cache::with(
                items,
                budget.max(1),
                Weigh,
                DefaultHashBuilder::default(),
                Evictions(counters.clone()),
            ),
            slots: DefaultHashBuilder::default(),
            epoch: AtomicU64::new(0),
            all: AtomicU64::new(0),
            repos: (0..REPO_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            counters,
            budget,
        }
    }

    fn slot(&self, repo: &RepoName) -> &AtomicU64 {
        let h = self.slots.hash_one(repo.as_str()) as usize;
        &self.repos[h % REPO_SLOTS]
    }

    /// Drop what `changes` made wrong.
    pub fn apply(&self, changes: &[Change]) {
        for c in changes {
            // Before the removal: a read that began before it sees a moved epoch.
            self.epoch.fetch_add(1, Ordering::AcqRel);
            match c {
                Change::Tag(r, t) => {
                    self.cache.remove(&Key::Manifest(r.clone(), Reference::Tag(t.clone())));
                }
                Change::Manifest(r, d) => {
                    self.cache
                        .remove(&Key::Manifest(r.clone(), Reference::Digest(d.clone())));
                }
                Change::Blob(r, d) => {
                    self.cache.remove(&Key::Blob(r.clone(), d.clone()));
                }
                Change::Repo(r) => {
                    self.slot(r).fetch_add(1, Ordering::AcqRel);
                }
                Change::All => {
                    self.all.fetch_add(1, Ordering::AcqRel);
                }
            }
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A blob size from memory or from `load` (see [`Hot::lookup`]).
    pub async fn blob_size(
        &self,
        trusted: bool,
        repo: &RepoName,
        digest: &Digest,
        load: impl Future<Output = Result<u64>>,
    ) -> Result<u64> {
        let key = Key::Blob(repo.clone(), digest.clone());
        let v = self.lookup(trusted, key, async { load.await.map(Value::Size) }).await?;
        match v {
            Value::Size(s) => Ok(s),
            Value::Manifest(_) => unreachable!("a blob key holds a size"),
        }
    }

    /// A manifest from memory or from `load` (see [`Hot::lookup`]).
    pub async fn manifest(
        &self,
        trusted: bool,
        repo: &RepoName,
        reference: &Reference,
        load: impl Future<Output = Result<Arc<StoredManifest>>>,
    ) -> Result<Arc<StoredManifest>> {
        let key = Key::Manifest(repo.clone(), reference.clone());
        let v = self
            .lookup(trusted, key, async { load.await.map(Value::Manifest) })
            .await?;
        match v {
            Value::Manifest(m) => Ok(m),
            Value::Size(_) => unreachable!("a manifest key holds a manifest"),
        }
    }

    /// The answer for `key` from memory, or else from `load`, kept unless a change arrived
    /// meanwhile. With `trusted` false (the store cannot tell what changed) the cache is neither
    /// read nor filled. Failures (a missing blob or manifest) are never kept.
    async fn lookup(&self, trusted: bool, key: Key, load: impl Future<Output = Result<Value>>) -> Result<Value> {
        if !trusted {
            self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return load.await;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let all = self.all.load(Ordering::Acquire);
        let repo = self.slot(key.repo()).load(Ordering::Acquire);
        if let Some(e) = self.cache.get(&key)
            && e.all == all
            && e.repo == repo
        {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(e.value);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let value = load.await?;
        if self.budget > 0 && self.epoch.load(Ordering::Acquire) == epoch {
            self.cache.insert(
                key.clone(),
                Entry {
                    value: value.clone(),
                    all,
                    repo,
                },
            );
            // A change applied between the check and the insert may have found nothing to
            // remove: take the answer out again.
            if self.epoch.load(Ordering::Acquire) != epoch {
                self.cache.remove(&key);
            }
        }
        Ok(value)
    }

    /// Counters and size.
    pub fn stats(&self) -> HotStats {
        let c = &self.counters;
        HotStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
            budget: self.budget,
        }
    }
}

impl Default for Hot {
    fn default() -> Self {
        Hot::new(DEFAULT_BUDGET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::error::Error;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    fn manifest(bytes: usize) -> Arc<StoredManifest> {
        let b = vec![b'{'; bytes];
        Arc::new(StoredManifest {
            digest: Digest::of(Algorithm::Sha256, &b),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: b.into(),
        })
    }

    async fn size(h: &Hot, r: &RepoName, d: &Digest, answer: u64) -> u64 {
        h.blob_size(true, r, d, async move { Ok(answer) }).await.unwrap()
    }

    #[tokio::test]
    async fn a_change_drops_only_what_it_names() {
        let h = Hot::new(1 << 20);
        let (a, b) = (repo("a"), repo("b"));
        let d = Digest::of(Algorithm::Sha256, b"blob");
        let (t1, t2): (Reference, Reference) = ("v1".parse().unwrap(), "v2".parse().unwrap());
        assert_eq!(size(&h, &a, &d, 1).await, 1);
        assert_eq!(size(&h, &b, &d, 2).await, 2);
        for t in [&t1, &t2] {
            h.manifest(true, &a, t, async { Ok(manifest(10)) }).await.unwrap();
        }
        // Kept: a different answer from `load` is not asked for.
        assert_eq!(size(&h, &a, &d, 99).await, 1);
        h.apply(&[Change::Tag(a.clone(), "v1".parse().unwrap())]);
        let fresh = manifest(20);
        let got = h.manifest(true, &a, &t1, async { Ok(fresh.clone()) }).await.unwrap();
        assert!(Arc::ptr_eq(&got, &fresh), "the changed tag is read again");
        let other = h.manifest(true, &a, &t2, async { Ok(manifest(30)) }).await.unwrap();
        assert_eq!(other.bytes.len(), 10, "the other tag stays");
        assert_eq!(size(&h, &a, &d, 99).await, 1, "the blob stays");
        h.apply(&[Change::Blob(a.clone(), d.clone())]);
        assert_eq!(size(&h, &a, &d, 3).await, 3);
        assert_eq!(size(&h, &b, &d, 99).await, 2, "another repository's link stays");
        h.apply(&[Change::Repo(b.clone())]);
        assert_eq!(size(&h, &b, &d, 4).await, 4);
        h.apply(&[Change::All]);
        assert_eq!(size(&h, &a, &d, 5).await, 5);
        let s = h.stats();
        assert_eq!((s.invalidations, s.entries), (4, 4), "{s:?}");
        assert!(s.hits >= 4 && s.misses >= 8, "{s:?}");
    }

    #[tokio::test]
    async fn an_answer_read_while_a_change_arrives_is_not_kept() {
        let h = Hot::new(1 << 20);
        let a = repo("a");
        let d = Digest::of(Algorithm::Sha256, b"blob");
        // The change lands while the (old) answer is being read.
        let got = h
            .blob_size(true, &a, &d, async {
                h.apply(&[Change::Blob(a.clone(), d.clone())]);
                Ok(1)
            })
            .await
            .unwrap();
        assert_eq!(got, 1);
        assert_eq!(size(&h, &a, &d, 2).await, 2, "the racing answer was not kept");
        assert_eq!(size(&h, &a, &d, 3).await, 2, "the next one was");
    }

    #[tokio::test]
    async fn failures_untrusted_stores_and_a_zero_budget_keep_nothing() {
        let h = Hot::new(1 << 20);
        let a = repo("a");
        let d = Digest::of(Algorithm::Sha256, b"blob");
        let e = h
            .blob_size(true, &a, &d, async { Err(Error::BlobUnknown(d.clone())) })
            .await;
        assert!(matches!(e, Err(Error::BlobUnknown(_))));
        assert_eq!(h.blob_size(false, &a, &d, async { Ok(1) }).await.unwrap(), 1);
        assert_eq!(
            size(&h, &a, &d, 2).await,
            2,
            "neither the failure nor the bypass was kept"
        );
        assert_eq!(h.stats().bypassed, 1);
        let none = Hot::new(0);
        assert_eq!(size(&none, &a, &d, 1).await, 1);
        assert_eq!(size(&none, &a, &d, 2).await, 2);
        assert_eq!(none.stats().entries, 0);
    }

    #[tokio::test]
    async fn the_budget_holds_and_evictions_are_counted() {
        let budget = 256 << 10;
        let h = Hot::new(budget);
        let a = repo("a");
        for i in 0..2000 {
            let t: Reference = format!("t{i}").parse().unwrap();
            h.manifest(true, &a, &t, async { Ok(manifest(1000)) }).await.unwrap();
        }
        let s = h.stats();
        assert!(s.bytes <= budget, "{s:?}");
        assert!(s.entries > 100 && s.entries < 2000, "{s:?}");
        assert!(s.evictions >= 2000 - s.entries, "{s:?}");
    }
}
