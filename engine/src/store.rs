//! The storage seam: the interface the engine uses for metadata records, so that the embedded
//! SQLite store (the default) and a shared database (scale-out) can stand behind it. Each
//! operation is one call, dispatched once per request, never per body frame.
//!
//! It holds every metadata operation: blob lookups and mounts, manifests, tags, listings,
//! referrers, the change feed the caches use, the per-repository sweep of garbage collection,
//! and the operations that run a blob store's step inside their transaction — a blob's commit
//! ([`MetaStore::commit_blob`] with a [`StagedBlob`]) and its removal (with a [`Removal`]) — so
//! that no process commits a blob while another removes it (see docs/architecture.md, "The
//! storage seam").
//!
//! Every implementation passes the suite in `engine/tests/meta_suite.rs`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::change::ChangeSink;
use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::error::Result;
use crate::meta::{RepoGc, StoredManifest};
use crate::name::{Reference, RepoName, Tag, UploadId};
use crate::page::Page;
use crate::reach::Sweep;
use crate::usage::{FillClaim, ImageUse};

/// How far the cache may trust what the store has told it of changes ([`MetaStore::feed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Every change committed so far has been delivered, or is on its way within milliseconds
    /// (a shared database's notifications).
    Current,
    /// Something committed that has not been delivered yet: call [`MetaStore::catch_up`].
    Behind,
    /// The store cannot tell what changes (its notification connection is down): read it.
    Unknown,
}

/// A manifest to record.
#[derive(Debug, Clone)]
pub struct ManifestRecord {
    /// Repository.
    pub repo: RepoName,
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Media type to serve.
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: Bytes,
    /// Tag to point at it.
    pub tag: Option<Tag>,
    /// Blobs that must be linked in the repository.
    pub blobs: Vec<Digest>,
    /// Manifests that must be in the repository.
    pub children: Vec<Digest>,
    /// Subject and the referrer descriptor to index under it.
    pub referrer: Option<(Digest, Descriptor)>,
}

/// A verified blob to link into a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLink {
    /// Repository that receives the link.
    pub repo: RepoName,
    /// The blob's digest, checked against its bytes.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The object its data is stored as, for a blob store that names data by the upload that
    /// stored it rather than by digest (an object store); `None` for one that names it by
    /// digest (the filesystem).
    pub object: Option<UploadId>,
}

/// How a commit ended, for [`StagedBlob::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was linked.
    Failed,
    /// The blob is linked, stored as this upload's data.
    Linked,
    /// The blob is linked, but it was stored already: this upload's data is not used.
    Duplicate,
}

/// A verified upload on its way into the blob store, handed to [`MetaStore::commit_blob`]. The
/// store calls, on one blocking thread: [`prepare`](StagedBlob::prepare) before its
/// transaction; the returned [`Placement`] inside it; then [`finish`](StagedBlob::finish)
/// once the outcome is known.
pub trait StagedBlob: Send + 'static {
    /// Work before the transaction: make the data durable. Returns the step that puts the data
    /// at the blob's location.
    fn prepare(&mut self) -> Result<Box<dyn Placement>>;

    /// Release what the upload held, by how the commit ended.
    fn finish(self: Box<Self>, outcome: Outcome);
}

/// The blob store's step inside the metadata transaction that links a blob: it runs while no
/// other process can commit or remove the same digest.
pub trait Placement: Send + 'static {
    /// Put the data at the blob's location (or drop it, when the blob is stored already).
    /// Returns a directory whose entries must be made durable before the transaction commits;
    /// the store flushes each such directory once per transaction.
    fn place(&self) -> Result<Option<PathBuf>>;

    /// Make a directory that [`place`](Placement::place) returned durable.
    fn flush(&self, dir: &Path) -> Result<()>;
}

/// The blob store's step that removes a blob's data, run by the metadata store when no
/// repository links the blob any more, before any process can commit the digest again. It is
/// given the object the record named ([`BlobLink::object`]).
pub type Removal = Box<dyn FnOnce(Option<UploadId>) -> Result<()> + Send>;

/// The right to run garbage collection, held until dropped (see [`MetaStore::gc_lease`]).
pub type GcLease = Box<dyn Send + Sync>;

/// Which repository names a catalog page may show.
pub type CatalogFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The metadata store.
pub trait MetaStore: Send + Sync + 'static {
    /// Whether the store answers.
    fn check(&self) -> impl Future<Output = Result<()>> + Send;

    /// Deliver what commits change to `sink` from now on (replacing an earlier sink): this
    /// store's own commits before they are acknowledged, other processes' and replicas' as the
    /// store learns of them ([`Feed`]).
    fn subscribe(&self, sink: ChangeSink);

    /// Whether everything committed has been delivered to the sink, without waiting.
    fn feed(&self) -> Feed;

    /// Deliver what committed and was not delivered yet (when [`MetaStore::feed`] is
    /// [`Feed::Behind`]).
    fn catch_up(&self) -> impl Future<Output = Result<()>> + Send;

    /// Size of a blob if `repo` links it.
    fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Link a blob into `repo` when `from` links it (any repository when `None`); false when
    /// it is not there.
    fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Size of a blob if any repository links it.
    fn blob(&self, digest: &Digest) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// The object a stored blob's data is ([`BlobLink::object`]); `None` when the blob is not
    /// stored or its data is named by its digest.
    fn blob_object(&self, digest: &Digest) -> impl Future<Output = Result<Option<UploadId>>> + Send;

    /// Link a verified upload into a repository, placing its data with the blob store's step
    /// inside the same transaction (see [`StagedBlob`]). When the step fails nothing is linked
    /// and the error is returned. Concurrent commits may share one transaction.
    fn commit_blob(&self, link: BlobLink, staged: Box<dyn StagedBlob>) -> impl Future<Output = Result<()>> + Send;

    /// Unlink a blob from `repo`; when no repository links it any more, `remove` deletes its
    /// data before any process can commit the digest again. False when `repo` did not link it.
    fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        remove: Removal,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Whether no repository links the blob; when none does and `remove` is given, it deletes
    /// the data before any process can commit the digest again (without `remove`: a dry run).
    fn remove_unrecorded(&self, digest: &Digest, remove: Option<Removal>) -> impl Future<Output = Result<bool>> + Send;

    /// Number of blobs and their total size in bytes (for metrics).
    fn blob_stats(&self) -> impl Future<Output = Result<(u64, u64)>> + Send;

    /// Record a manifest, its links to blobs and children, its tag and its referrer entry, in
    /// one transaction. Fails with `ManifestBlobUnknown` when a blob or child is missing.
    fn put_manifest(&self, m: ManifestRecord) -> impl Future<Output = Result<()>> + Send;

    /// A manifest of `repo` by tag or digest.
    fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> impl Future<Output = Result<Option<StoredManifest>>> + Send;

    /// Remove a tag (the manifest stays); false when there was none.
    fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> impl Future<Output = Result<bool>> + Send;

    /// Remove a manifest from `repo` with every tag pointing at it and its referrer entry;
    /// false when `repo` has no such manifest.
    fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> impl Future<Output = Result<bool>> + Send;

    /// A page of `repo`'s tags after `last`, sorted; `NameUnknown` when the repository has
    /// no content.
    fn tags(&self, repo: &RepoName, last: Option<String>, n: usize) -> impl Future<Output = Result<Page<Tag>>> + Send;

    /// A page of repository names after `last` for which `keep` holds, sorted.
    fn catalog(
        &self,
        last: Option<String>,
        n: usize,
        keep: CatalogFilter,
    ) -> impl Future<Output = Result<Page<RepoName>>> + Send;

    /// Descriptors of the manifests in `repo` whose subject is `subject`, by digest.
    fn referrers(&self, repo: &RepoName, subject: &Digest) -> impl Future<Output = Result<Vec<Descriptor>>> + Send;

    /// The lease of the one process that collects garbage at a time, or `None` while another
    /// process holds it. A store whose every sweep is safe alongside others' may lease to all.
    fn gc_lease(&self) -> impl Future<Output = Result<Option<GcLease>>> + Send;

    /// Record when manifests were last pulled (`(repo, manifest, seconds since the epoch)`; a
    /// later time wins, a manifest the repository does not hold is skipped).
    fn record_pulls(&self, pulls: Vec<(RepoName, Digest, u64)>) -> impl Future<Output = Result<()>> + Send;

    /// Up to `limit` manifests of the repositories under `prefix` (all when empty), least
    /// recently used first (see [`ImageUse`]).
    fn least_used(&self, prefix: &str, limit: usize) -> impl Future<Output = Result<Vec<ImageUse>>> + Send;

    /// The bytes of blobs each repository under `prefix` (all when empty) links.
    fn repo_usage(&self, prefix: &str) -> impl Future<Output = Result<Vec<(RepoName, u64)>>> + Send;

    /// Claim the download of a blob for `owner` (a pull-through cache's process) for `lease_secs`:
    /// ours when no other owner holds an unexpired claim on it (claiming again renews it);
    /// otherwise the holder's owner text, so that the caller can find the download in progress.
    fn claim_fill(
        &self,
        digest: &Digest,
        owner: &str,
        lease_secs: u64,
    ) -> impl Future<Output = Result<FillClaim>> + Send;

    /// Give up `owner`'s claim on a blob's download.
    fn release_fill(&self, digest: &Digest, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// Sweep one repository for garbage collection (see [`crate::meta::Meta::gc_repo`]).
    fn gc_repo(
        &self,
        repo: &RepoName,
        grace_secs: u64,
        sweep: &Sweep,
        dry_run: bool,
    ) -> impl Future<Output = Result<RepoGc>> + Send;
}
