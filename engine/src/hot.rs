//! Answers for the small, hot reads — blob sizes (`HEAD` blob) and manifests by tag or digest —
//! kept in memory, so a hit costs a map lookup instead of a metadata query on the blocking pool.
//!
//! Coherence: every lookup first checks whether the database changed since the cache was
//! filled ([`Meta::data_version`], which sees commits of every connection and every process
//! sharing the storage); if it did, the whole generation is dropped. An answer read from the
//! database is added to the generation that was current when the lookup began, so an answer
//! that a concurrent commit made stale lands in a generation already replaced, never in the
//! live one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::digest::Digest;
use crate::meta::{DataVersion, Meta, StoredManifest};
use crate::name::{Reference, RepoName};

/// Most bytes of manifests one generation keeps (beyond it, answers are not added).
const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;
/// Most entries one generation keeps.
const MAX_ENTRIES: usize = 200_000;

/// One generation: valid while the database's data version is `version` (`None`: never).
pub struct Generation {
    version: Option<DataVersion>,
    blobs: papaya::HashMap<(RepoName, Digest), u64>,
    manifests: papaya::HashMap<(RepoName, Reference), Arc<StoredManifest>>,
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

impl Generation {
    fn new(version: Option<DataVersion>) -> Generation {
        Generation {
            version,
            blobs: papaya::HashMap::new(),
            manifests: papaya::HashMap::new(),
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Room for one more entry of `bytes` bytes (reserved if so).
    fn reserve(&self, bytes: usize) -> bool {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= MAX_ENTRIES {
            return false;
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes <= MAX_MANIFEST_BYTES
    }

    /// Size of a blob the repository links, if known here.
    pub fn blob(&self, repo: &RepoName, digest: &Digest) -> Option<u64> {
        self.blobs.pin().get(&(repo.clone(), digest.clone())).copied()
    }

    /// Remember a blob's size.
    pub fn put_blob(&self, repo: &RepoName, digest: &Digest, size: u64) {
        if self.reserve(0) {
            self.blobs.pin().insert((repo.clone(), digest.clone()), size);
        }
    }

    /// A manifest by tag or digest, if known here.
    pub fn manifest(&self, repo: &RepoName, reference: &Reference) -> Option<Arc<StoredManifest>> {
        self.manifests.pin().get(&(repo.clone(), reference.clone())).cloned()
    }

    /// Remember a manifest.
    pub fn put_manifest(&self, repo: &RepoName, reference: &Reference, m: Arc<StoredManifest>) {
        if self.reserve(m.bytes.len()) {
            self.manifests.pin().insert((repo.clone(), reference.clone()), m);
        }
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

    /// The generation valid now: the current one, or a new, empty one when the database changed
    /// since it was made. `None` when the database cannot tell (the caller reads it instead).
    pub fn generation(&self, meta: &Meta) -> Option<Arc<Generation>> {
        let version = Some(meta.data_version().ok()?);
        let mut cur = self.current.lock();
        if cur.version != version {
            *cur = Arc::new(Generation::new(version));
        }
        Some(cur.clone())
    }
}

impl Default for Hot {
    fn default() -> Self {
        Hot::new()
    }
}
