//! Answers for the small, hot reads — blob sizes (`HEAD` blob) and manifests by tag or digest —
//! kept in memory, so a hit costs a map lookup instead of a metadata query on the blocking pool.
//!
//! Coherence: every lookup first checks whether the database changed since the cache was
//! filled (the metadata store's [`ChangeToken`], which sees commits of every connection and
//! every process sharing the storage); if it did, the whole generation is dropped. An answer read from the
//! database is added to the generation that was current when the lookup began, so an answer
//! that a concurrent commit made stale lands in a generation already replaced, never in the
//! live one.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::digest::Digest;
use crate::error::Result;
use crate::meta::StoredManifest;
use crate::name::{Reference, RepoName};
use crate::store::ChangeToken;

/// Most bytes of manifests one generation keeps (beyond it, answers are not added).
const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;
/// Most entries one generation keeps.
const MAX_ENTRIES: usize = 200_000;

/// One generation: valid while the store's change token is `version` (`None`: never).
pub struct Generation {
    version: Option<ChangeToken>,
    blobs: Table<(RepoName, Digest), u64>,
    manifests: Table<(RepoName, Reference), Arc<StoredManifest>>,
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

/// Answers of one kind, and what each weighs against [`MAX_MANIFEST_BYTES`].
pub struct Table<K, V> {
    map: papaya::HashMap<K, V>,
    weigh: fn(&V) -> usize,
}

impl<K, V> Table<K, V> {
    fn new(weigh: fn(&V) -> usize) -> Table<K, V> {
        Table {
            map: papaya::HashMap::new(),
            weigh,
        }
    }
}

impl Generation {
    fn new(version: Option<ChangeToken>) -> Generation {
        Generation {
            version,
            blobs: Table::new(|_| 0),
            manifests: Table::new(|m| m.bytes.len()),
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Blob sizes by repository and digest (`HEAD` blob).
    pub fn blobs(&self) -> &Table<(RepoName, Digest), u64> {
        &self.blobs
    }

    /// Manifests by repository and tag or digest.
    pub fn manifests(&self) -> &Table<(RepoName, Reference), Arc<StoredManifest>> {
        &self.manifests
    }

    /// Room for one more entry of `bytes` bytes (reserved if so).
    fn reserve(&self, bytes: usize) -> bool {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= MAX_ENTRIES {
            return false;
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes <= MAX_MANIFEST_BYTES
    }
}

/// The cache.
pub struct Hot {
    current: Mutex<Arc<Generation>>,
}

impl Hot {
    /// An empty cache.
    pub fn new() -> Hot {
        Hot {
            current: Mutex::new(Arc::new(Generation::new(None))),
        }
    }

    /// The generation valid at `token`: the current one, or a new, empty one when the store
    /// changed since it was made. `None` when the store cannot tell (the caller reads it
    /// instead).
    fn generation(&self, token: Option<ChangeToken>) -> Option<Arc<Generation>> {
        let version = Some(token?);
        let mut cur = self.current.lock();
        if cur.version != version {
            *cur = Arc::new(Generation::new(version));
        }
        Some(cur.clone())
    }

    /// The answer for `key` from memory, or else from `load`, which is then remembered in the
    /// generation that was current when this lookup began (so an answer a concurrent commit made
    /// stale is never added to a live generation). Failures are not remembered.
    pub async fn get_or_load<K, V>(
        &self,
        token: Option<ChangeToken>,
        table: fn(&Generation) -> &Table<K, V>,
        key: K,
        load: impl Future<Output = Result<V>>,
    ) -> Result<V>
    where
        K: Eq + Hash,
        V: Clone,
    {
        let generation = self.generation(token);
        if let Some(v) = generation.as_ref().and_then(|g| table(g).map.pin().get(&key).cloned()) {
            return Ok(v);
        }
        let v = load.await?;
        if let Some(g) = generation {
            let t = table(&g);
            if g.reserve((t.weigh)(&v)) {
                t.map.pin().insert(key, v.clone());
            }
        }
        Ok(v)
    }
}

impl Default for Hot {
    fn default() -> Self {
        Hot::new()
    }
}
