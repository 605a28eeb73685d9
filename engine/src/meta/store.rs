//! The embedded SQLite store behind the [`MetaStore`] interface: each operation runs its
//! statements on the blocking pool, in one transaction where it writes.

use std::sync::Arc;

use crate::change::{Change, ChangeSink};
use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::group::Group;
use crate::manifest;
use crate::meta::DataVersion;
use crate::meta::{Meta, NewManifest, RepoGc, StoredManifest};
use crate::name::{Reference, RepoName, Tag, UploadId};
use crate::page::Page;
use crate::reach::Sweep;
use crate::store::{
    BlobLink, CatalogFilter, Feed, GcLease, ManifestRecord, MetaStore, Outcome, Placement, Removal, StagedBlob,
};
use crate::usage::ImageUse;

/// A blob commit waiting for its group's transaction.
struct Commit {
    link: BlobLink,
    placement: Box<dyn Placement>,
}

/// How far the change log has been delivered.
struct Delivered {
    /// The data version it was read at (`None`: not yet).
    version: Option<DataVersion>,
    /// The last row delivered.
    seq: i64,
}

/// SQLite (WAL) as the metadata store.
///
/// Changes: every write transaction (of any process) that changes a cached answer appends one
/// row to the `changes` log naming what it changed. When the data version moved since the log
/// was last read ([`MetaStore::feed`] is [`Feed::Behind`]), [`MetaStore::catch_up`] reads the
/// rows after the last one delivered and passes their changes on; rows pruned before they were
/// read deliver [`Change::All`]. (The data version also moves without a commit — a write
/// rolled back after the WAL restarted, a checkpoint — so it cannot tell a writer that does not
/// log; every process on one database must be of a version that logs.)
#[derive(Clone)]
pub struct SqliteStore {
    meta: Arc<Meta>,
    /// Blob commits of concurrent uploads, grouped into shared transactions.
    commits: Arc<Group<Commit, Result<()>>>,
    delivered: Arc<parking_lot::Mutex<Delivered>>,
    /// A fingerprint of `delivered.version`, compared without the lock on every lookup.
    delivered_at: Arc<std::sync::atomic::AtomicU64>,
    sink: Arc<parking_lot::RwLock<Option<ChangeSink>>>,
}

/// 64 bits of a data version (SipHash with fixed keys; 0 is kept for "none"): two versions in a
/// row collide with probability 2^-64.
fn fingerprint(v: DataVersion) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish() | 1
}

impl SqliteStore {
    /// The store over an open database.
    pub fn new(meta: Meta) -> SqliteStore {
        // The version first: a commit in between is then read again (at worst as `All`), never
        // skipped.
        let version = meta.stable_data_version().ok();
        let seq = meta.last_change().unwrap_or(0);
        SqliteStore {
            meta: Arc::new(meta),
            commits: Arc::new(Group::default()),
            delivered_at: Arc::new(std::sync::atomic::AtomicU64::new(version.map_or(0, fingerprint))),
            delivered: Arc::new(parking_lot::Mutex::new(Delivered { version, seq })),
            sink: Arc::new(parking_lot::RwLock::new(None)),
        }
    }

    /// The database itself.
    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// Run `f` on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Meta) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(&meta))
            .await
            .map_err(|e| Error::Meta(MetaError::TaskLost(e.to_string())))?
    }
}

impl MetaStore for SqliteStore {
    async fn check(&self) -> Result<()> {
        self.run(|m| m.check()).await
    }

    fn subscribe(&self, sink: ChangeSink) {
        *self.sink.write() = Some(sink);
    }

    fn feed(&self) -> Feed {
        match self.meta.data_version() {
            Ok(v) if self.delivered_at.load(std::sync::atomic::Ordering::Acquire) == fingerprint(v) => Feed::Current,
            Ok(_) => Feed::Behind,
            Err(_) => Feed::Unknown,
        }
    }

    async fn catch_up(&self) -> Result<()> {
        // A few microseconds (a read of the newest log rows by primary key on the connection
        // that never writes), so it runs here rather than on the blocking pool; one caller at a
        // time, the others then find it done.
        let mut d = self.delivered.lock();
        let version = self.meta.stable_data_version()?;
        if d.version == Some(version) {
            return Ok(());
        }
        let logged = self.meta.changes_since(d.seq)?;
        let mut changes = logged.changes;
        if logged.gap {
            tracing::debug!(
                gap = logged.gap,
                seq = d.seq,
                "change log: changes were missed, dropping every cached answer"
            );
            changes = vec![Change::All];
        }
        if let Some(sink) = self.sink.read().as_ref() {
            sink(&changes);
        }
        d.version = Some(version);
        d.seq = logged.seq;
        self.delivered_at
            .store(fingerprint(version), std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let (r, d) = (repo.clone(), digest.clone());
        self.run(move |m| m.repo_blob(&r, &d)).await
    }

    async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        let (r, d, f) = (repo.clone(), digest.clone(), from.cloned());
        self.run(move |m| {
            m.write(|tx| {
                let size = match &f {
                    Some(f) => tx.repo_blob(f, &d)?,
                    None => tx.blob(&d)?,
                };
                match size {
                    Some(size) => tx.link_blob(&r, &d, size).map(|()| true),
                    None => Ok(false),
                }
            })
        })
        .await
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let d = digest.clone();
        self.run(move |m| m.blob(&d)).await
    }

    /// In one trip to the blocking pool (each trip costs thread wake-ups, which showed as a
    /// tenth of a small push's server CPU): prepare, then queue for the group's transaction
    /// ([`commit_group`]), then finish.
    async fn commit_blob(&self, link: BlobLink, mut staged: Box<dyn StagedBlob>) -> Result<()> {
        if link.object.is_some() {
            staged.finish(Outcome::Failed);
            return Err(Error::Meta(MetaError::Settings(
                "blobs in an object store need the shared database (database.enabled)".into(),
            )));
        }
        let group = self.commits.clone();
        self.run(move |m| {
            let done = staged.prepare().and_then(|placement| {
                group.run(
                    Commit { link, placement },
                    |jobs| commit_group(m, &jobs),
                    || {
                        Err(Error::Meta(MetaError::Shared(
                            "the group commit of this blob failed".into(),
                        )))
                    },
                )
            });
            staged.finish(if done.is_ok() { Outcome::Linked } else { Outcome::Failed });
            done
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest, remove: Removal) -> Result<bool> {
        let (r, d) = (repo.clone(), digest.clone());
        self.run(move |m| {
            m.write(|tx| match tx.unlink_blob(&r, &d)? {
                None => Ok(false),
                Some(true) => remove(None).map(|()| true),
                Some(false) => Ok(true),
            })
        })
        .await
    }

    async fn remove_unrecorded(&self, digest: &Digest, remove: Option<Removal>) -> Result<bool> {
        let d = digest.clone();
        self.run(move |m| {
            let Some(remove) = remove else {
                return Ok(m.blob(&d)?.is_none());
            };
            m.write(|tx| {
                if tx.blob(&d)?.is_some() {
                    return Ok(false);
                }
                remove(None)?;
                Ok(true)
            })
        })
        .await
    }

    async fn blob_object(&self, _digest: &Digest) -> Result<Option<UploadId>> {
        // SQLite keeps the blobs of the filesystem store, which names data by digest.
        Ok(None)
    }

    async fn blob_stats(&self) -> Result<(u64, u64)> {
        self.run(|m| m.blob_stats()).await
    }

    async fn put_manifest(&self, m: ManifestRecord) -> Result<()> {
        self.run(move |meta| {
            meta.put_manifest(NewManifest {
                repo: &m.repo,
                digest: &m.digest,
                media_type: &m.media_type,
                bytes: &m.bytes,
                tag: m.tag.as_ref(),
                blobs: &m.blobs,
                children: &m.children,
                referrer: m.referrer.as_ref().map(|(s, d)| (s, d.clone())),
            })
        })
        .await
    }

    async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>> {
        let (r, re) = (repo.clone(), reference.clone());
        self.run(move |m| {
            m.read(|t| {
                let digest = match &re {
                    Reference::Digest(d) => Some(d.clone()),
                    Reference::Tag(tag) => t.resolve_tag(&r, tag)?,
                };
                match digest {
                    Some(d) => t.manifest(&r, &d),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let (r, t) = (repo.clone(), tag.clone());
        self.run(move |m| m.delete_tag(&r, &t)).await
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (r, d) = (repo.clone(), digest.clone());
        self.run(move |m| {
            m.write(|tx| {
                let Some(stored) = tx.manifest(&r, &d)? else {
                    return Ok(false);
                };
                // Its referrer entry is found through the subject it names.
                let subject = manifest::parse(Some(&stored.media_type), &stored.bytes)
                    .ok()
                    .and_then(|i| i.subject);
                tx.delete_manifest(&r, &d, subject.as_ref())
            })
        })
        .await
    }

    async fn tags(&self, repo: &RepoName, last: Option<String>, n: usize) -> Result<Page<Tag>> {
        let r = repo.clone();
        self.run(move |m| {
            if !m.repo_exists(&r)? {
                return Err(Error::NameUnknown(r.to_string()));
            }
            m.tags(&r, last.as_deref(), n)
        })
        .await
    }

    async fn catalog(&self, last: Option<String>, n: usize, keep: CatalogFilter) -> Result<Page<RepoName>> {
        self.run(move |m| m.catalog(last.as_deref(), n, &*keep)).await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let (r, s) = (repo.clone(), subject.clone());
        self.run(move |m| m.referrers(&r, &s)).await
    }

    /// Every process may collect: each repository's sweep is one SQLite transaction, and so is
    /// each removal.
    async fn gc_lease(&self) -> Result<Option<GcLease>> {
        Ok(Some(Box::new(())))
    }

    async fn record_pulls(&self, pulls: Vec<(RepoName, Digest, u64)>) -> Result<()> {
        self.run(move |m| m.record_pulls(&pulls)).await
    }

    async fn least_used(&self, prefix: &str, limit: usize) -> Result<Vec<ImageUse>> {
        let prefix = prefix.to_owned();
        self.run(move |m| m.least_used(&prefix, limit)).await
    }

    async fn repo_usage(&self, prefix: &str) -> Result<Vec<(RepoName, u64)>> {
        let prefix = prefix.to_owned();
        self.run(move |m| m.repo_usage(&prefix)).await
    }

    async fn claim_fill(&self, digest: &Digest, owner: &str, lease_secs: u64) -> Result<crate::FillClaim> {
        let (d, o) = (digest.clone(), owner.to_owned());
        self.run(move |m| m.claim_fill(&d, &o, lease_secs)).await
    }

    async fn release_fill(&self, digest: &Digest, owner: &str) -> Result<()> {
        let (d, o) = (digest.clone(), owner.to_owned());
        self.run(move |m| m.release_fill(&d, &o)).await
    }

    async fn gc_repo(&self, repo: &RepoName, grace_secs: u64, sweep: &Sweep, dry_run: bool) -> Result<RepoGc> {
        let (r, sweep) = (repo.clone(), sweep.clone());
        self.run(move |m| m.gc_repo(&r, grace_secs, &sweep, dry_run)).await
    }
}

/// Commit a group of blobs in one transaction: each is placed and linked inside its own
/// savepoint (a failure undoes that blob's link alone), the directories the placements name are
/// flushed — each once — and the transaction commits with one WAL sync for the group. Durability
/// keeps its order for every blob: data durable (before the job was queued), placement durable,
/// then the link committed. One result per job, in order; when the transaction itself fails,
/// every job fails with its error.
fn commit_group(m: &Meta, jobs: &[Commit]) -> Vec<Result<()>> {
    let mut results = Vec::with_capacity(jobs.len());
    let committed = m.write(|tx| {
        results.clear();
        let mut flush: Vec<(std::path::PathBuf, usize)> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            let placed = tx.savepoint(|tx| {
                let dir = j.placement.place()?;
                tx.link_blob(&j.link.repo, &j.link.digest, j.link.size)?;
                Ok(dir)
            });
            results.push(placed.map(|dir| flush.extend(dir.map(|d| (d, i)))));
        }
        flush.sort_unstable();
        flush.dedup_by(|a, b| a.0 == b.0);
        for (dir, i) in &flush {
            jobs[*i].placement.flush(dir)?;
        }
        Ok(())
    });
    match committed {
        Ok(()) => results,
        Err(e) => jobs.iter().map(|_| Err(e.replicate())).collect(),
    }
}
