//! The metadata store an engine was opened with: the embedded SQLite database (the default) or
//! a shared PostgreSQL database (scale-out). One enum, so that a call costs one match and no
//! allocation, whichever it is.

use crate::change::ChangeSink;
use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::error::Result;
use crate::meta::{RepoGc, SqliteStore, StoredManifest};
use crate::name::{Reference, RepoName, Tag, UploadId};
use crate::page::Page;
use crate::postgres::PgStore;
use crate::reach::Sweep;
use crate::store::{BlobLink, CatalogFilter, Feed, GcLease, ManifestRecord, MetaStore, Removal, StagedBlob};
use crate::usage::{FillClaim, ImageUse};

/// One of the metadata stores.
#[derive(Clone)]
pub enum Metadata {
    /// SQLite next to the blobs.
    Sqlite(SqliteStore),
    /// A shared PostgreSQL database.
    Postgres(PgStore),
}

impl Metadata {
    /// Which store this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Metadata::Sqlite(_) => "sqlite",
            Metadata::Postgres(_) => "postgresql",
        }
    }
}

/// Forward a call to whichever store this is.
macro_rules! either {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Metadata::Sqlite($s) => $call,
            Metadata::Postgres($s) => $call,
        }
    };
}

impl MetaStore for Metadata {
    async fn check(&self) -> Result<()> {
        either!(self, s => s.check().await)
    }

    fn subscribe(&self, sink: ChangeSink) {
        either!(self, s => s.subscribe(sink))
    }

    fn feed(&self) -> Feed {
        either!(self, s => s.feed())
    }

    async fn catch_up(&self) -> Result<()> {
        either!(self, s => s.catch_up().await)
    }

    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        either!(self, s => s.repo_blob(repo, digest).await)
    }

    async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        either!(self, s => s.mount_blob(repo, digest, from).await)
    }

    async fn blob_object(&self, digest: &Digest) -> Result<Option<UploadId>> {
        either!(self, s => s.blob_object(digest).await)
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<u64>> {
        either!(self, s => s.blob(digest).await)
    }

    async fn commit_blob(&self, link: BlobLink, staged: Box<dyn StagedBlob>) -> Result<()> {
        either!(self, s => s.commit_blob(link, staged).await)
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest, remove: Removal) -> Result<bool> {
        either!(self, s => s.unlink_blob(repo, digest, remove).await)
    }

    async fn remove_unrecorded(&self, digest: &Digest, remove: Option<Removal>) -> Result<bool> {
        either!(self, s => s.remove_unrecorded(digest, remove).await)
    }

    async fn blob_stats(&self) -> Result<(u64, u64)> {
        either!(self, s => s.blob_stats().await)
    }

    async fn put_manifest(&self, m: ManifestRecord) -> Result<()> {
        either!(self, s => s.put_manifest(m).await)
    }

    async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>> {
        either!(self, s => s.manifest(repo, reference).await)
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        either!(self, s => s.delete_tag(repo, tag).await)
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        either!(self, s => s.delete_manifest(repo, digest).await)
    }

    async fn tags(&self, repo: &RepoName, last: Option<String>, n: usize) -> Result<Page<Tag>> {
        either!(self, s => s.tags(repo, last, n).await)
    }

    async fn catalog(&self, last: Option<String>, n: usize, keep: CatalogFilter) -> Result<Page<RepoName>> {
        either!(self, s => s.catalog(last, n, keep).await)
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        either!(self, s => s.referrers(repo, subject).await)
    }

    async fn gc_lease(&self) -> Result<Option<GcLease>> {
        either!(self, s => s.gc_lease().await)
    }

    async fn record_pulls(&self, pulls: Vec<(RepoName, Digest, u64)>) -> Result<()> {
        either!(self, s => s.record_pulls(pulls).await)
    }

    async fn least_used(&self, prefix: &str, limit: usize) -> Result<Vec<ImageUse>> {
        either!(self, s => s.least_used(prefix, limit).await)
    }

    async fn repo_usage(&self, prefix: &str) -> Result<Vec<(RepoName, u64)>> {
        either!(self, s => s.repo_usage(prefix).await)
    }

    async fn claim_fill(&self, digest: &Digest, owner: &str, lease_secs: u64) -> Result<FillClaim> {
        either!(self, s => s.claim_fill(digest, owner, lease_secs).await)
    }

    async fn release_fill(&self, digest: &Digest, owner: &str) -> Result<()> {
        either!(self, s => s.release_fill(digest, owner).await)
    }

    async fn gc_repo(&self, repo: &RepoName, grace_secs: u64, sweep: &Sweep, dry_run: bool) -> Result<RepoGc> {
        either!(self, s => s.gc_repo(repo, grace_secs, sweep, dry_run).await)
    }
}
