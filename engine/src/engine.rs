//! The engine: every operation the registry offers, in domain types.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::backend::{Blobs, Uploads};
use crate::blob_store::BlobStore;
pub use crate::blob_store::BlobStream;
use crate::blob_store::DataName;
use crate::bodies::{Bodies, BodyStats};
use crate::descriptor::Descriptor;
use crate::digest::{Algorithm, Digest};
use crate::error::ObjectStoreError;
use crate::error::{Error, Result};
use crate::fs_blobs::FsBlobs;
use crate::fs_uploads::FsUploads;
use crate::hot::{Hot, HotStats};
use crate::io;
use crate::layout::Layout;
use crate::manifest::{self, ManifestError};
use crate::meta::{Meta, SqliteStore, StoredManifest};
use crate::metadata::Metadata;
use crate::name::{Reference, RepoName, Tag, UploadId};
use crate::page::Page;
use crate::postgres::{PgSettings, PgStore};
use crate::reach::Sweep;
use crate::s3::{S3Blobs, S3Client, S3Settings, S3Uploads};
use crate::session_store::SessionRecords;
use crate::store::Feed;
use crate::store::{ManifestRecord, MetaStore};
use crate::upload_caps::UploadLimits;
use crate::upload_store::{Chunk, UploadStore};

/// A byte range of a blob: first byte and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Number of bytes.
    pub len: u64,
}

/// A chunk the client declared with `Content-Range: start-end` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
}

/// Result of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    /// Digest of the stored bytes.
    pub digest: Digest,
    /// The `subject` the manifest refers to.
    pub subject: Option<Digest>,
}

/// What a garbage collection should do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcOptions {
    /// Blob links and manifests younger than this stay, referenced or not (an upload whose
    /// manifest is still to come).
    pub grace: Duration,
    /// Also remove manifests that no tag reaches.
    pub untagged: bool,
    /// Only report.
    pub dry_run: bool,
}

/// What a garbage collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Repositories looked at.
    pub repositories: usize,
    /// Manifests removed (untagged ones, or an evicted image's).
    pub manifests: usize,
    /// Blob links removed from repositories.
    pub links: usize,
    /// Bytes of the blobs those links named.
    pub link_bytes: u64,
    /// Blob files removed (no repository linked them any more).
    pub blobs: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// Files in the blob store that no record names (left by a crash between the rename of an
    /// upload and its link), removed.
    pub stray_files: usize,
    /// Bytes of those files.
    pub stray_bytes: u64,
    /// Repositories left alone, with the reason.
    pub skipped: Vec<String>,
    /// Nothing was done: another process sharing the metadata store is collecting.
    pub elsewhere: bool,
    /// Unfinished multipart uploads that no upload session names, aborted (an object store).
    pub stray_uploads: usize,
}

/// A storage bound to a shared database, opened without it.
#[derive(Debug)]
struct DatabaseBound(String);

impl std::fmt::Display for DatabaseBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DatabaseBound {}

/// The storage engine.
pub struct Engine {
    /// The storage directory (none when blobs are in an object store).
    layout: Option<Layout>,
    store: Metadata,
    blobs: Blobs,
    uploads: Uploads,
    /// Held open for the engine's life: the storage lock (see [`io::lock_storage`]).
    _lock: Option<std::fs::File>,
    hot: Arc<Hot>,
    /// Small blobs' bytes in memory.
    bodies: Arc<Bodies>,
    /// Whether blob GETs may be answered with a redirect to the object store.
    redirect: bool,
}

impl Engine {
    /// Open the storage rooted at `root`, creating it when missing. Several processes may open
    /// one storage this way at once (each holds a shared lock on it).
    pub async fn open(root: impl Into<std::path::PathBuf>) -> Result<Engine> {
        Engine::open_with(root.into(), false).await
    }

    /// Open the storage for offline maintenance: fails with [`Error::StorageInUse`] while any
    /// other process has it open.
    pub async fn open_exclusive(root: impl Into<std::path::PathBuf>) -> Result<Engine> {
        Engine::open_with(root.into(), true).await
    }

    /// Open the storage rooted at `root` for its blobs and upload sessions, with the metadata in
    /// the shared PostgreSQL database `db` (its schema migrated first, one process at a time).
    /// `exclusive` as for [`Engine::open_exclusive`], for the directory.
    pub async fn open_shared(root: impl Into<std::path::PathBuf>, db: &PgSettings, exclusive: bool) -> Result<Engine> {
        let (layout, lock, _) = Engine::open_dir(root.into(), exclusive, false).await?;
        let store = PgStore::connect(db).await?;
        let (binding, name) = (layout.database_binding(), db.name());
        io::blocking(move || match std::fs::read_to_string(&binding) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                io::write_atomic_now(&binding, format!("postgresql {name}\n").as_bytes())
            }
            Err(e) => Err(e),
        })
        .await?;
        Ok(Engine::assemble(layout, lock, Metadata::Postgres(store)))
    }

    /// Open the blob store in the bucket `s3` names, with the metadata and upload sessions in
    /// the shared PostgreSQL database `db` (its schema migrated first). No local directory is
    /// used. Fails, naming the setting, when the bucket or the database cannot be used.
    pub async fn open_s3(db: &PgSettings, s3: &S3Settings) -> Result<Engine> {
        if let Some(p) = s3.problem() {
            return Err(Error::ObjectStore(ObjectStoreError::Settings(p)));
        }
        let client = S3Client::new(s3)?;
        client.check_bucket().await?;
        client.check_encryption().await?;
        let store = PgStore::connect(db).await?;
        bind_bucket(&client, &store, s3, db).await?;
        Ok(Engine::subscribed(Engine {
            layout: None,
            uploads: Uploads::S3(S3Uploads::new(
                client.clone(),
                store.clone(),
                s3.part_size,
                s3.upload_memory,
                UploadLimits::default(),
            )),
            blobs: Blobs::S3(S3Blobs::new(client)),
            store: Metadata::Postgres(store),
            _lock: None,
            hot: Arc::new(Hot::default()),
            bodies: Arc::new(Bodies::default()),
            redirect: s3.redirect,
        }))
    }

    async fn open_with(root: std::path::PathBuf, exclusive: bool) -> Result<Engine> {
        let (layout, lock, meta) = Engine::open_dir(root, exclusive, true).await?;
        let meta = meta.ok_or_else(|| Error::Io(std::io::Error::other("the metadata database was not opened")))?;
        Ok(Engine::assemble(layout, lock, Metadata::Sqlite(SqliteStore::new(meta))))
    }

    /// Create the storage directories, take the storage lock, and open the SQLite database when
    /// `sqlite`.
    async fn open_dir(
        root: std::path::PathBuf,
        exclusive: bool,
        sqlite: bool,
    ) -> Result<(Layout, std::fs::File, Option<Meta>)> {
        let layout = Layout::new(root);
        let l = layout.clone();
        let (lock, meta) = io::blocking(move || {
            io::create_dir_all(&l.blobs_dir())?;
            io::create_dir_all(&l.uploads_dir())?;
            let lock = io::lock_storage(&l.lock(), exclusive)?;
            if sqlite && let Ok(bound) = std::fs::read_to_string(l.database_binding()) {
                return Err(std::io::Error::other(DatabaseBound(format!(
                    "{} keeps its metadata in a shared database ({}), not in SQLite: set database.enabled and the other database.* settings to open it (or remove {} if that database is gone for good)",
                    l.root().display(),
                    bound.trim(),
                    l.database_binding().display()
                ))));
            }
            let meta = if sqlite {
                Some(Meta::open(&l.meta()).map_err(std::io::Error::other)?)
            } else {
                None
            };
            Ok((lock, meta))
        })
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => Error::StorageInUse { exclusive },
            _ => match e.get_ref().and_then(|i| i.downcast_ref::<DatabaseBound>()) {
                Some(DatabaseBound(m)) => Error::Meta(crate::error::MetaError::Settings(m.clone())),
                None => Error::Io(e),
            },
        })?;
        Ok((layout, lock, meta))
    }

    fn assemble(layout: Layout, lock: std::fs::File, store: Metadata) -> Engine {
        Engine::subscribed(Engine {
            uploads: Uploads::Fs(FsUploads::new(layout.clone(), UploadLimits::default())),
            blobs: Blobs::Fs(FsBlobs::new(layout.clone())),
            layout: Some(layout),
            store,
            _lock: Some(lock),
            hot: Arc::new(Hot::default()),
            bodies: Arc::new(Bodies::default()),
            redirect: false,
        })
    }

    /// The engine with its store delivering changes to its cache.
    fn subscribed(e: Engine) -> Engine {
        let hot = e.hot.clone();
        e.store.subscribe(Arc::new(move |changes| hot.apply(changes)));
        e
    }

    /// Keep at most `budget` bytes of answers in the read cache (`cache.memory`; 0 turns it
    /// off). The cache starts empty.
    pub fn with_cache_budget(mut self, budget: u64) -> Engine {
        self.hot = Arc::new(Hot::new(budget));
        Engine::subscribed(self)
    }

    /// Keep small blobs' bytes in memory: at most `budget` bytes (`cache.blobmemory`), of
    /// blobs up to `max_blob` bytes (`cache.blobmaxsize`); 0 for either turns it off.
    pub fn with_blob_cache(mut self, budget: u64, max_blob: u64) -> Engine {
        self.bodies = Arc::new(Bodies::new(budget, max_blob));
        self
    }

    /// The read cache's counters.
    pub fn cache_stats(&self) -> HotStats {
        self.hot.stats()
    }

    /// The small-blob cache's counters.
    pub fn blob_cache_stats(&self) -> BodyStats {
        self.bodies.stats()
    }

    /// Whether the cache may be used now: the store's feed brought up to date (when it can be).
    async fn cache_trusted(&self) -> bool {
        match self.store.feed() {
            Feed::Current => true,
            Feed::Behind => self.store.catch_up().await.is_ok(),
            Feed::Unknown => false,
        }
    }

    /// Copy this engine's metadata (it must be on SQLite, opened with
    /// [`Engine::open_exclusive`]) into the PostgreSQL database `db` — and, with `s3`, its blob
    /// files into that bucket, binding the bucket's root directory to the database — then bind
    /// the storage to that database. Fails, binding the storage to nothing, when some record
    /// could not be copied.
    pub async fn migrate_metadata(
        &self,
        db: &PgSettings,
        s3: Option<&S3Settings>,
        progress: impl FnMut(&crate::migrate::CopyReport),
    ) -> Result<crate::migrate::CopyReport> {
        let (Metadata::Sqlite(source), Some(layout)) = (&self.store, &self.layout) else {
            return Err(Error::Meta(crate::error::MetaError::Settings(
                "the metadata is in a shared database already".into(),
            )));
        };
        let target = PgStore::connect(db).await?;
        let client = match s3 {
            Some(s) => {
                if let Some(p) = s.problem() {
                    return Err(Error::ObjectStore(ObjectStoreError::Settings(p)));
                }
                let client = S3Client::new(s)?;
                client.check_bucket().await?;
                bind_bucket(&client, &target, s, db).await?;
                Some((client, s.part_size))
            }
            None => None,
        };
        let blobs = match &client {
            Some((client, part_size)) => crate::migrate::Blobs::ToS3 {
                layout,
                client,
                part_size: *part_size,
            },
            None => crate::migrate::Blobs::InPlace,
        };
        let report = crate::migrate::copy_metadata(source.meta(), &target, &blobs, progress).await?;
        if !report.failed.is_empty() {
            return Err(Error::Meta(crate::error::MetaError::Corrupt(format!(
                "{} records could not be copied: {}",
                report.failed.len(),
                report.failed.join("; ")
            ))));
        }
        let (binding, name) = (layout.database_binding(), db.name());
        io::blocking(move || io::write_atomic_now(&binding, format!("postgresql {name}\n").as_bytes())).await?;
        Ok(report)
    }

    /// Which metadata store the engine uses (`sqlite` or `postgresql`).
    pub fn metadata_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// The same engine with other caps on open upload sessions (before any session is
    /// started; the defaults are [`UploadLimits::default`]).
    pub fn with_upload_limits(mut self, limits: UploadLimits) -> Engine {
        self.uploads = match (self.uploads, &self.layout) {
            (Uploads::S3(s), _) => Uploads::S3(s.with_limits(limits)),
            (Uploads::Fs(_), Some(layout)) => Uploads::Fs(FsUploads::new(layout.clone(), limits)),
            (fs, None) => fs,
        };
        self
    }

    /// The caps on open upload sessions.
    pub fn upload_limits(&self) -> UploadLimits {
        self.uploads.limits()
    }

    /// The storage directory (`None` when blobs are in an object store).
    pub fn root(&self) -> Option<&std::path::Path> {
        self.layout.as_ref().map(Layout::root)
    }

    /// Which blob store the engine uses (`filesystem` or `s3`).
    pub fn blob_store_kind(&self) -> &'static str {
        self.blobs.kind()
    }

    /// Whether the engine can serve: the metadata store answers and the storage directory takes
    /// a write. The error says which check failed.
    pub async fn ready(&self) -> std::result::Result<(), String> {
        self.store.check().await.map_err(|e| format!("metadata store: {e}"))?;
        self.blobs.probe().await.map_err(|e| format!("blob store: {e}"))
    }

    // ---- blobs ----

    /// Size of a blob the repository links.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let load = async {
            self.store
                .repo_blob(repo, digest)
                .await?
                .ok_or_else(|| Error::BlobUnknown(digest.clone()))
        };
        let trusted = self.cache_trusted().await;
        self.hot.blob_size(trusted, repo, digest, load).await
    }

    /// Size of a blob when any repository links it (whether `repo`-independent data is stored:
    /// a pull-through cache links it into another repository instead of fetching it again).
    pub async fn blob_stored(&self, digest: &Digest) -> Result<Option<u64>> {
        self.store.blob(digest).await
    }

    /// Read `range` of a blob (the caller has checked it against the size).
    pub async fn blob_read(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let object = match &self.blobs {
            Blobs::Fs(fs) if self.bodies.covers(range.len) => {
                // A small read: from memory, or from the file in one go (kept when it is the
                // whole blob).
                if let Some(b) = self.bodies.get(digest) {
                    let (start, end) = (range.start as usize, (range.start + range.len) as usize);
                    if end <= b.len() {
                        return Ok(BlobStream::ready(b.slice(start..end)));
                    }
                }
                let (bytes, whole) = fs.read_once(digest, range).await?;
                if whole {
                    self.bodies.insert(digest, bytes.clone());
                }
                return Ok(BlobStream::ready(bytes));
            }
            Blobs::Fs(_) => None,
            Blobs::S3(_) => self.store.blob_object(digest).await?,
        };
        self.blobs.read(digest, object, range).await
    }

    /// A URL the client can fetch the blob's bytes from directly (a presigned URL of its object),
    /// when the blob store gives one and redirects are on.
    pub async fn blob_url(&self, digest: &Digest) -> Result<Option<String>> {
        let Blobs::S3(s3) = &self.blobs else {
            return Ok(None);
        };
        if !self.redirect {
            return Ok(None);
        }
        Ok(self.store.blob_object(digest).await?.map(|o| s3.url(o)))
    }

    /// Unlink a blob from a repository; its file goes when no repository links it any more
    /// (in the same metadata transaction, so no process's upload of it interleaves).
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let found = self.store.unlink_blob(repo, digest, self.removal(digest)).await?;
        if found {
            Ok(())
        } else {
            Err(Error::BlobUnknown(digest.clone()))
        }
    }

    /// Link an existing blob into `repo` from `from`, or from any repository when `from` is
    /// `None`. Returns false when the blob is not available there.
    pub async fn blob_mount(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        self.store.mount_blob(repo, digest, from).await
    }

    // ---- uploads ----

    /// Start an upload session with no known owner (it counts towards the repository's and the
    /// total cap only, under the empty owner).
    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadId> {
        self.upload_start_as(repo, "").await
    }

    /// Start an upload session of `owner` (the user, or the client's address when anonymous),
    /// unless a cap on open sessions refuses it ([`Error::TooManyUploads`]).
    pub async fn upload_start_as(&self, repo: &RepoName, owner: &str) -> Result<UploadId> {
        self.uploads.start(repo, owner).await
    }

    /// Bytes an upload session has received (by the requests that finished).
    pub async fn upload_offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        self.uploads.offset(repo, id).await
    }

    /// Append a request body to a session. With `range`, the chunk must start at the current
    /// offset and have exactly the declared length. `length` is the body's length when the
    /// request declared it (`Content-Length`): the engine then allocates space for exactly that
    /// much. Returns the new offset.
    pub async fn upload_append<S, E>(
        &self,
        repo: &RepoName,
        id: UploadId,
        range: Option<ChunkRange>,
        length: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let chunk = Chunk { range, length, body };
        self.uploads.append(repo, id, chunk).await
    }

    /// Append an optional last chunk, check the digest, and commit the blob durably. On a digest
    /// mismatch nothing is stored and the session is left as it was before this request.
    /// Returns the blob's size.
    pub async fn upload_finish<S, E>(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        range: Option<ChunkRange>,
        length: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let chunk = Chunk { range, length, body };
        let store = &self.store;
        self.uploads
            .finish(repo, id, digest, chunk, |link, staged| store.commit_blob(link, staged))
            .await
    }

    /// Cancel a session and delete what it received.
    pub async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        self.uploads.cancel(repo, id).await
    }

    /// Remove upload sessions idle for longer than `timeout`.
    pub async fn reap_uploads(&self, timeout: Duration) -> Result<usize> {
        self.uploads.reap(timeout).await
    }

    /// Number of stored blobs and their total size in bytes (reads every blob record: for
    /// metrics, not for hot paths).
    pub async fn storage_stats(&self) -> Result<(u64, u64)> {
        self.store.blob_stats().await
    }

    /// Delete what no manifest references: blob links nobody's manifest needs (and blob files
    /// no repository links), optionally untagged manifests; everything younger than the grace
    /// period stays. Safe while pushes run: each repository is swept in one metadata
    /// transaction (a manifest push waits for it, or it sees the push), and a file is removed
    /// under the blob's commit lock only when no record names it at that moment.
    pub async fn gc(&self, opts: GcOptions) -> Result<GcReport> {
        let mut report = GcReport::default();
        let Some(_lease) = self.store.gc_lease().await? else {
            report.elsewhere = true;
            return Ok(report);
        };
        let repos = self.store.catalog(None, usize::MAX, Arc::new(|_| true)).await?.items;
        let grace = opts.grace.as_secs();
        let sweep = if opts.untagged { Sweep::Untagged } else { Sweep::Links };
        for repo in repos {
            self.sweep_repo(&repo, grace, &sweep, opts.dry_run, &mut report).await?;
        }
        for f in self.blobs.list().await? {
            if f.age_secs < grace {
                continue;
            }
            let removed = match &f.name {
                DataName::Digest(d) => self.remove_unrecorded(d, opts.dry_run).await?,
                DataName::Object(id) => self.remove_unnamed_object(*id, opts.dry_run).await?,
            };
            if removed {
                report.stray_files += 1;
                report.stray_bytes += f.size;
            }
        }
        if let Blobs::S3(s3) = &self.blobs {
            report.stray_uploads = self.abort_unnamed_uploads(s3, grace, opts.dry_run).await?;
        }
        Ok(report)
    }

    /// Sweep one repository (see [`MetaStore::gc_repo`]) and remove the data no repository
    /// links any more; adds what went to `report`.
    async fn sweep_repo(
        &self,
        repo: &RepoName,
        grace: u64,
        sweep: &Sweep,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        let res = self.store.gc_repo(repo, grace, sweep, dry_run).await?;
        report.repositories += 1;
        if let Some(why) = res.skipped {
            report.skipped.push(format!("{repo}: {why}"));
            return Ok(());
        }
        report.manifests += res.manifests.len();
        report.links += res.links.len();
        report.link_bytes += res.links.iter().map(|(_, size)| size).sum::<u64>();
        if !dry_run && let Blobs::S3(s3) = &self.blobs {
            for id in &res.orphan_objects {
                s3.delete(*id).await?;
            }
        }
        for (digest, size) in res.orphans {
            // In a dry run the records were rolled back: these would have gone.
            if dry_run || self.remove_unrecorded(&digest, false).await? {
                report.blobs += 1;
                report.bytes += size;
            }
        }
        Ok(())
    }

    /// Evict one image of a pull-through cache: the manifest, its tags and what only it
    /// reaches ([`Sweep::Image`]), then the repository's blob links no remaining manifest
    /// references, and the data no repository links any more. Anything stored less than
    /// `grace` ago stays. Nothing goes when the manifest is part of an image that stays (a child
    /// of an index of the repository).
    pub async fn evict_image(&self, repo: &RepoName, digest: &Digest, grace: Duration) -> Result<GcReport> {
        let mut report = GcReport::default();
        let sweep = Sweep::Image(digest.clone());
        self.sweep_repo(repo, grace.as_secs(), &sweep, false, &mut report)
            .await?;
        Ok(report)
    }

    /// Claim a blob's download for this process (see [`MetaStore::claim_fill`]).
    pub async fn claim_fill(&self, digest: &Digest, owner: &str, lease: Duration) -> Result<crate::FillClaim> {
        self.store.claim_fill(digest, owner, lease.as_secs().max(1)).await
    }

    /// Give up a claim on a blob's download (see [`MetaStore::release_fill`]).
    pub async fn release_fill(&self, digest: &Digest, owner: &str) -> Result<()> {
        self.store.release_fill(digest, owner).await
    }

    /// Record when mirrored manifests were last pulled (see [`MetaStore::record_pulls`]).
    pub async fn record_pulls(&self, pulls: Vec<(RepoName, Digest, u64)>) -> Result<()> {
        self.store.record_pulls(pulls).await
    }

    /// The least recently used manifests under a repository prefix (see [`MetaStore::least_used`]).
    pub async fn least_used(&self, prefix: &str, limit: usize) -> Result<Vec<crate::ImageUse>> {
        self.store.least_used(prefix, limit).await
    }

    /// Bytes of blobs linked per repository under a prefix (see [`MetaStore::repo_usage`]).
    pub async fn repo_usage(&self, prefix: &str) -> Result<Vec<(RepoName, u64)>> {
        self.store.repo_usage(prefix).await
    }

    /// The step that removes a blob's data: the blob store's, and the blob's bytes leave the
    /// small-blob cache (a mapped entry would keep the removed file's space until evicted).
    fn removal(&self, digest: &Digest) -> crate::store::Removal {
        let (inner, bodies, d) = (self.blobs.removal(digest), self.bodies.clone(), digest.clone());
        Box::new(move |object| {
            bodies.remove(&d);
            inner(object)
        })
    }

    /// Whether no repository links the blob; its data is then removed unless `dry_run`, in the
    /// metadata store's transaction, so that no process's upload of it interleaves.
    async fn remove_unrecorded(&self, digest: &Digest, dry_run: bool) -> Result<bool> {
        let remove = (!dry_run).then(|| self.removal(digest));
        self.store.remove_unrecorded(digest, remove).await
    }

    /// Whether no record names the object (no blob, no upload session); it is then removed
    /// unless `dry_run`. Objects are named by the upload that stored them, and only that upload
    /// can come to name one, so what no record names after the grace period stays unnamed.
    async fn remove_unnamed_object(&self, id: UploadId, dry_run: bool) -> Result<bool> {
        let (Blobs::S3(s3), Metadata::Postgres(pg)) = (&self.blobs, &self.store) else {
            return Ok(false);
        };
        if pg.object_in_use(id).await? {
            return Ok(false);
        }
        if !dry_run {
            s3.delete(id).await?;
        }
        Ok(true)
    }

    /// Abort the multipart uploads older than `grace_secs` that no upload session names (left
    /// when a session's row went without its upload: a crash between the two, or a row removed
    /// by hand); returns how many.
    async fn abort_unnamed_uploads(&self, s3: &S3Blobs, grace_secs: u64, dry_run: bool) -> Result<usize> {
        let Metadata::Postgres(pg) = &self.store else {
            return Ok(0);
        };
        let mut n = 0;
        for (id, upload) in s3.pending_uploads().await? {
            if upload.age_secs < grace_secs || pg.object_in_use(id).await? {
                continue;
            }
            if !dry_run {
                s3.abort(id, &upload.upload_id).await?;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Number of upload sessions this process holds.
    pub fn uploads_in_progress(&self) -> usize {
        self.uploads.in_progress()
    }

    // ---- manifests ----

    /// Store a manifest under a tag or digest reference.
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PushedManifest> {
        self.record_manifest(manifest_record(repo, reference, content_type, bytes)?)
            .await
    }

    /// Store a manifest fetched from an upstream registry (a pull-through cache): as
    /// [`Engine::manifest_put`] checks it, but the blobs and child manifests it references need
    /// not be stored yet: they are fetched when they are pulled.
    pub async fn manifest_put_cached(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PushedManifest> {
        let mut record = manifest_record(repo, reference, content_type, bytes)?;
        record.blobs.clear();
        record.children.clear();
        self.record_manifest(record).await
    }

    async fn record_manifest(&self, record: ManifestRecord) -> Result<PushedManifest> {
        let (digest, subject) = (record.digest.clone(), record.referrer.as_ref().map(|(s, _)| s.clone()));
        self.store.put_manifest(record).await?;
        Ok(PushedManifest { digest, subject })
    }

    /// A manifest by tag or digest.
    pub async fn manifest_get(&self, repo: &RepoName, reference: &Reference) -> Result<Arc<StoredManifest>> {
        let load = async {
            let m = self
                .store
                .manifest(repo, reference)
                .await?
                .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
            Ok(Arc::new(m))
        };
        let trusted = self.cache_trusted().await;
        self.hot.manifest(trusted, repo, reference, load).await
    }

    /// Delete by digest (the manifest and every tag pointing at it) or by tag (the tag only).
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let found = match reference {
            Reference::Tag(t) => self.store.delete_tag(repo, t).await?,
            Reference::Digest(d) => self.store.delete_manifest(repo, d).await?,
        };
        if found {
            Ok(())
        } else {
            Err(Error::ManifestUnknown(reference.to_string()))
        }
    }

    // ---- listings ----

    /// A page of a repository's tags, sorted. Unknown repository → [`Error::NameUnknown`].
    pub async fn tags(&self, repo: &RepoName, last: Option<String>, n: usize) -> Result<Page<Tag>> {
        self.store.tags(repo, last, n).await
    }

    /// A page of repository names, sorted.
    pub async fn catalog(&self, last: Option<String>, n: usize) -> Result<Page<RepoName>> {
        self.store.catalog(last, n, Arc::new(|_| true)).await
    }

    /// A page of the repository names for which `keep` holds (e.g. those a caller may read).
    pub async fn catalog_filtered<F>(&self, last: Option<String>, n: usize, keep: F) -> Result<Page<RepoName>>
    where
        F: Fn(&str) -> bool + Send + Sync + 'static,
    {
        self.store.catalog(last, n, Arc::new(keep)).await
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`, optionally only those
    /// of one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let all = self.store.referrers(repo, subject).await?;
        Ok(all
            .into_iter()
            .filter(|d| artifact_type.is_none_or(|at| d.artifact_type.as_deref() == Some(at)))
            .collect())
    }
}

/// The object, under the root directory, that names the database a bucket's blobs belong to.
const BUCKET_BINDING: &str = "berth-registry";

/// Bind the bucket's root directory to the database (its registry id), or check that it is bound
/// to this one: objects that another registry's records name would look unreferenced to this
/// one's garbage collection, which would delete them.
async fn bind_bucket(client: &S3Client, store: &PgStore, s3: &S3Settings, db: &PgSettings) -> Result<()> {
    let id = store.registry_id().await?;
    let line = format!("registry {id}\n");
    match client.get_small(BUCKET_BINDING).await? {
        None => client.put(BUCKET_BINDING, Bytes::from(line)).await,
        Some(found) if found.as_ref() == line.as_bytes() => Ok(()),
        Some(found) => Err(Error::ObjectStore(ObjectStoreError::Settings(format!(
            "storage.s3.bucket {:?} under storage.s3.rootdirectory {:?} holds the blobs of another registry ({}), not of the one in database {} (registry {id}): point database.* at that registry's database, or give this one its own storage.s3.rootdirectory",
            s3.bucket,
            s3.root_directory,
            String::from_utf8_lossy(&found).trim(),
            db.name(),
        )))),
    }
}

/// What pushing `bytes` under `reference` records: the manifest parsed and checked against a
/// digest reference, what it references, its tag, and its referrer entry.
pub(crate) fn manifest_record(
    repo: &RepoName,
    reference: &Reference,
    content_type: Option<&str>,
    bytes: Bytes,
) -> Result<ManifestRecord> {
    let info = manifest::parse(content_type, &bytes).map_err(|e| match e {
        ManifestError::TooLarge => Error::ManifestInvalid(e.to_string()),
        ManifestError::Invalid(m) => Error::ManifestInvalid(m),
    })?;
    let algorithm = match reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, &bytes);
    if let Reference::Digest(d) = reference
        && d != &digest
    {
        return Err(Error::DigestMismatch {
            expected: d.clone(),
            actual: digest,
        });
    }
    let referrer = info.subject.as_ref().map(|s| {
        let desc = Descriptor {
            media_type: info.media_type.clone(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            artifact_type: info.artifact_type.clone(),
            annotations: info.annotations.clone(),
        };
        (s.clone(), desc)
    });
    let tag = match reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    Ok(ManifestRecord {
        repo: repo.clone(),
        digest,
        media_type: info.media_type,
        bytes,
        tag,
        blobs: info.blobs,
        children: info.children,
        referrer,
    })
}
