//! Metadata records in SQLite (WAL mode): which repository links which blobs and manifests,
//! tags, referrers, and reference counts. Blob bytes are not here.
//!
//! Several Berth processes may share one storage directory: SQLite's file locks order their
//! writes, and every write runs in one `BEGIN IMMEDIATE` transaction. Work that must not
//! interleave with another process's (placing a blob file and recording its link, or checking
//! that nothing links a blob and removing its file) runs inside such a transaction
//! ([`Meta::write`]). Within a process, one writer connection behind a mutex avoids SQLite's
//! sleeping busy handler; readers take connections from a small pool and never block writers.

mod export;
mod redb_import;
mod store;
mod usage;

pub use store::SqliteStore;

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::change::Change;
use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::io::walindex::{WalHeader, WalIndexHead};
use crate::name::{RepoName, Tag};
use crate::page::Page;
use crate::reach::Sweep;

/// How long a statement waits for another process's write transaction before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blobs(
  digest TEXT PRIMARY KEY, size INTEGER NOT NULL, refs INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS repo_blobs(
  repo TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL, linked INTEGER NOT NULL,
  PRIMARY KEY(repo, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests(
  digest TEXT PRIMARY KEY, refs INTEGER NOT NULL, media_type TEXT NOT NULL, bytes BLOB NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS repo_manifests(
  repo TEXT NOT NULL, digest TEXT NOT NULL, pushed INTEGER NOT NULL,
  PRIMARY KEY(repo, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags(
  repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,
  PRIMARY KEY(repo, tag)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_digest ON tags(repo, digest);
CREATE TABLE IF NOT EXISTS referrers(
  repo TEXT NOT NULL, subject TEXT NOT NULL, digest TEXT NOT NULL, descriptor BLOB NOT NULL,
  PRIMARY KEY(repo, subject, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS repos(name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes(seq INTEGER PRIMARY KEY AUTOINCREMENT, lines TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pulls(
  repo TEXT NOT NULL, digest TEXT NOT NULL, at INTEGER NOT NULL,
  PRIMARY KEY(repo, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fills(digest TEXT PRIMARY KEY, owner TEXT NOT NULL, until INTEGER NOT NULL) WITHOUT ROWID;
";

/// Rows of the change log kept (older ones are pruned; a process that fell further behind drops
/// its whole cache).
const CHANGE_LOG_ROWS: i64 = 20_000;
/// Longest text one change-log row holds before its changes are coarsened ([`Change::encode_all`]).
const CHANGE_LOG_ROW_BYTES: usize = 64 * 1024;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What garbage collection did (or, in a dry run, would do) in one repository.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepoGc {
    /// Untagged manifests removed.
    pub manifests: Vec<Digest>,
    /// Blob links removed (digest, size).
    pub links: Vec<(Digest, u64)>,
    /// Blobs no repository links any more: their files may go (digest, size).
    pub orphans: Vec<(Digest, u64)>,
    /// The objects of those blobs, for a blob store that names data by the upload that stored
    /// it ([`crate::store::BlobLink::object`]): no record names them any more, and none can
    /// again (a new upload of the digest stores a new object).
    pub orphan_objects: Vec<crate::name::UploadId>,
    /// Set when a stored manifest could not be read: nothing of the repository was removed.
    pub skipped: Option<String>,
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: bytes::Bytes,
}

/// What [`Tx::put_manifest`] records.
pub struct NewManifest<'a> {
    /// Repository.
    pub repo: &'a RepoName,
    /// Digest of `bytes`.
    pub digest: &'a Digest,
    /// Media type to serve.
    pub media_type: &'a str,
    /// Exact bytes.
    pub bytes: &'a [u8],
    /// Tag to point at it.
    pub tag: Option<&'a Tag>,
    /// Blobs that must be linked in the repository.
    pub blobs: &'a [Digest],
    /// Manifests that must be in the repository.
    pub children: &'a [Digest],
    /// Subject and the referrer descriptor to index under it.
    pub referrer: Option<(&'a Digest, Descriptor)>,
}

/// The metadata store.
pub struct Meta {
    /// The WAL index's header, read for [`Meta::data_version`] without a transaction (`None`
    /// where the WAL index cannot be mapped: then `watcher` is asked).
    head: Option<WalIndexHead>,
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Only asks `PRAGMA data_version` (see [`Meta::data_version`]).
    watcher: Mutex<Connection>,
}

/// What [`Meta::data_version`] answers: two equal values mean that no transaction committed in
/// between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataVersion {
    /// The WAL index's header.
    Header(WalHeader),
    /// SQLite's `PRAGMA data_version`, when the header was being rewritten or is not mapped.
    Pragma(i64),
}

/// Statements over one connection: inside a write transaction ([`Meta::write`]) or for a read
/// ([`Meta::read`]).
pub struct Tx<'a>(&'a Connection, std::cell::RefCell<Vec<Change>>);

/// What [`Meta::changes_since`] found in the change log.
#[derive(Debug, Default)]
pub struct LoggedChanges {
    /// The changes, in commit order.
    pub changes: Vec<Change>,
    /// The last row read (the next read starts after it).
    pub seq: i64,
    /// Rows the reader had not seen were pruned: it must drop everything.
    pub gap: bool,
    /// Rows read.
    pub rows: usize,
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets readers (of every process) go on while one transaction writes; FULL makes each
    // commit durable (the WAL is synced) before the caller acknowledges anything.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl Meta {
    /// Open (or create) the store at `path`. Records of an older Berth's redb store
    /// (`meta.redb` beside it) are imported once.
    pub fn open(path: &Path) -> Result<Meta> {
        let mut writer = connect(path)?;
        let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let legacy = path.with_file_name("meta.redb");
        redb_import::import_once(&tx, &legacy)?;
        tx.commit()?;
        redb_import::retire(&legacy)?;
        let watcher = connect(path)?;
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        let head = match WalIndexHead::open(Path::new(&shm)) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot map SQLite's WAL index; checking for changes through SQLite instead");
                None
            }
        };
        Ok(Meta {
            head,
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            watcher: Mutex::new(watcher),
        })
    }

    /// A value that changes whenever a transaction of any connection — this process's writer or
    /// another process's — has committed since the last call. Read from the WAL index's header
    /// in shared memory (no lock, no system call); while a writer is rewriting the header, or
    /// where it is not mapped, SQLite is asked (`PRAGMA data_version` on a connection that never
    /// writes, so that every commit counts).
    pub fn data_version(&self) -> Result<DataVersion> {
        if let Some(h) = self.head.as_ref().and_then(WalIndexHead::read) {
            return Ok(DataVersion::Header(h));
        }
        let conn = self.watcher.lock();
        Ok(DataVersion::Pragma(
            conn.prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))?,
        ))
    }

    /// The change log after row `seq`, read in one read transaction on the connection that
    /// never writes (so a pruning in between cannot hide a gap).
    pub fn changes_since(&self, seq: i64) -> Result<LoggedChanges> {
        let conn = self.watcher.lock();
        conn.execute_batch("BEGIN")?;
        let out = (|| -> Result<LoggedChanges> {
            let first: Option<i64> = conn
                .prepare_cached("SELECT min(seq) FROM changes")?
                .query_row([], |r| r.get(0))?;
            let mut out = LoggedChanges {
                seq,
                gap: first.is_some_and(|f| f > seq + 1),
                ..LoggedChanges::default()
            };
            let mut stmt = conn.prepare_cached("SELECT seq, lines FROM changes WHERE seq > ?1 ORDER BY seq")?;
            let rows = stmt.query_map([seq], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (n, lines) = row?;
                out.seq = n;
                out.rows += 1;
                out.changes.extend(Change::decode_all(&lines));
            }
            Ok(out)
        })();
        conn.execute_batch("COMMIT")?;
        out
    }

    /// The last row of the change log (0 when empty).
    pub fn last_change(&self) -> Result<i64> {
        let conn = self.watcher.lock();
        Ok(conn
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM changes")?
            .query_row([], |r| r.get(0))?)
    }

    /// [`Meta::data_version`], but from the WAL index's header whenever it is mapped: a writer
    /// rewriting it is waited out (a few microseconds) instead of asking SQLite, so that two
    /// values are of the same kind and differ only when a transaction committed.
    pub fn stable_data_version(&self) -> Result<DataVersion> {
        if let Some(head) = &self.head {
            for _ in 0..10_000 {
                if let Some(h) = head.read() {
                    return Ok(DataVersion::Header(h));
                }
                std::hint::spin_loop();
            }
        }
        self.data_version()
    }

    /// Run `f` in one write transaction that no other writer of any process interleaves with;
    /// it commits when `f` succeeds and rolls back when it fails.
    pub fn write<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.write_if(f, |_| true)
    }

    /// Like [`Meta::write`], but commits only when `keep` says so for the result.
    fn write_if<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>, keep: impl FnOnce(&T) -> bool) -> Result<T> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let t = Tx(&tx, Default::default());
        let out = f(&t)?;
        if keep(&out) {
            // One row per transaction that changed a cached answer.
            let changes = t.1.take();
            if !changes.is_empty() {
                let lines = Change::encode_all(&changes, CHANGE_LOG_ROW_BYTES);
                let seq = tx
                    .prepare_cached("INSERT INTO changes(lines) VALUES (?1) RETURNING seq")?
                    .query_row([lines], |r| r.get::<_, i64>(0))?;
                if seq % 512 == 0 {
                    tx.prepare_cached("DELETE FROM changes WHERE seq <= ?1")?
                        .execute([seq - CHANGE_LOG_ROWS])?;
                }
            }
            tx.commit()?;
        }
        Ok(out)
    }

    /// Run reads on a pooled connection.
    pub fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&Tx(&conn, Default::default()));
        self.readers.lock().push(conn);
        out
    }

    /// Whether the store answers a read.
    pub fn check(&self) -> Result<()> {
        self.read(|t| Ok(t.0.query_row("SELECT count(*) FROM info", [], |_| Ok(()))?))
    }

    /// Size of a blob if `repo` links it.
    pub fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.read(|t| t.repo_blob(repo, digest))
    }

    /// Size of a blob if any repository links it.
    pub fn blob(&self, digest: &Digest) -> Result<Option<u64>> {
        self.read(|t| t.blob(digest))
    }

    /// Number of stored blobs and their total size in bytes.
    pub fn blob_stats(&self) -> Result<(u64, u64)> {
        self.read(|t| {
            Ok(t.0
                .query_row("SELECT count(*), coalesce(sum(size), 0) FROM blobs", [], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })?)
        })
    }

    /// Record a manifest (see [`Tx::put_manifest`]).
    pub fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        self.write(|t| t.put_manifest(m))
    }

    /// The digest a tag points at.
    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.read(|t| t.resolve_tag(repo, tag))
    }

    /// A manifest of the repository, by digest.
    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        self.read(|t| t.manifest(repo, digest))
    }

    /// Remove a tag. Returns false when it did not exist.
    pub fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.write(|t| {
            let n =
                t.0.prepare_cached("DELETE FROM tags WHERE repo = ?1 AND tag = ?2")?
                    .execute(params![repo.as_str(), tag.as_str()])?;
            if n > 0 {
                t.changed(Change::Tag(repo.clone(), tag.clone()));
            }
            Ok(n > 0)
        })
    }

    /// Whether the repository has any content.
    pub fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        self.read(|t| t.repo_exists(repo.as_str()))
    }

    /// Up to `n` tags after `last`, sorted by bytes; the flag says whether more remain.
    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Page<Tag>> {
        self.read(|t| {
            let mut stmt =
                t.0.prepare_cached("SELECT tag FROM tags WHERE repo = ?1 AND tag > ?2 ORDER BY tag LIMIT ?3")?;
            let limit = i64::try_from(n.saturating_add(1)).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![repo.as_str(), last.unwrap_or(""), limit], |r| r.get(0))?;
            page(rows, n, |_| true)
        })
    }

    /// Up to `n` repository names after `last` for which `keep` holds, sorted by bytes; the flag
    /// says whether more remain.
    pub fn catalog(&self, last: Option<&str>, n: usize, keep: &dyn Fn(&str) -> bool) -> Result<Page<RepoName>> {
        self.read(|t| {
            let mut stmt =
                t.0.prepare_cached("SELECT name FROM repos WHERE name > ?1 ORDER BY name")?;
            let rows = stmt.query_map(params![last.unwrap_or("")], |r| r.get(0))?;
            page(rows, n, keep)
        })
    }

    /// The descriptor of every manifest in `repo` whose subject is `subject`, by digest.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        self.read(|t| {
            let mut stmt = t
                .0
                .prepare_cached("SELECT descriptor FROM referrers WHERE repo = ?1 AND subject = ?2 ORDER BY digest")?;
            let rows = stmt.query_map(params![repo.as_str(), subject.to_string()], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for raw in rows {
                // A damaged descriptor hides that one referrer, not the whole list.
                match serde_json::from_slice(&raw?) {
                    Ok(d) => out.push(d),
                    Err(e) => tracing::warn!(repo = %repo, subject = %subject, error = %e, "skipping a damaged referrer descriptor"),
                }
            }
            Ok(out)
        })
    }

    /// Collect garbage in one repository, in one write transaction, so that no manifest push
    /// or blob link of any process interleaves. The manifests `sweep` names go first
    /// ([`Sweep::Untagged`]: those that no tag reaches — directly, through an index, or as a
    /// referrer of a reached manifest). Then blob links that no remaining manifest references
    /// go. Anything linked or pushed less than `grace_secs` ago stays (and keeps what it
    /// references). `dry_run` rolls everything back.
    pub fn gc_repo(&self, repo: &RepoName, grace_secs: u64, sweep: &Sweep, dry_run: bool) -> Result<RepoGc> {
        self.write_if(
            |t| t.gc_repo(repo, grace_secs, sweep),
            |out| !dry_run && out.skipped.is_none(),
        )
    }
}

/// Take rows up to `n` that `keep` accepts, parsed; the page says whether another accepted row
/// follows. A stored name that does not parse is a damaged record.
fn page<T: std::str::FromStr>(
    rows: impl Iterator<Item = rusqlite::Result<String>>,
    n: usize,
    keep: impl Fn(&str) -> bool,
) -> Result<Page<T>> {
    let mut items = Vec::new();
    for row in rows {
        let name = row?;
        if !keep(&name) {
            continue;
        }
        if items.len() == n {
            return Ok(Page { items, more: true });
        }
        let item = name
            .parse()
            .map_err(|_| Error::Meta(MetaError::Corrupt(format!("a stored name {name:?} is not valid"))))?;
        items.push(item);
    }
    Ok(Page { items, more: false })
}

impl Tx<'_> {
    /// Note what this transaction changes, for the change log.
    pub fn changed(&self, c: Change) {
        self.1.borrow_mut().push(c);
    }

    /// Run `f` inside a savepoint of the transaction: what it wrote stays when it succeeds and
    /// is undone when it fails, while the rest of the transaction goes on either way.
    pub fn savepoint<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.0.execute_batch("SAVEPOINT one")?;
        match f(self) {
            Ok(v) => {
                self.0.execute_batch("RELEASE one")?;
                Ok(v)
            }
            Err(e) => {
                self.0.execute_batch("ROLLBACK TO one; RELEASE one")?;
                Err(e)
            }
        }
    }

    /// Size of a blob if `repo` links it.
    pub fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .0
            .prepare_cached("SELECT size FROM repo_blobs WHERE repo = ?1 AND digest = ?2")?
            .query_row(params![repo.as_str(), digest.to_string()], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
    }

    /// Size of a blob if any repository links it.
    pub fn blob(&self, digest: &Digest) -> Result<Option<u64>> {
        self.blob_row(&digest.to_string()).map(|b| b.map(|(size, _)| size))
    }

    fn blob_row(&self, d: &str) -> Result<Option<(u64, u64)>> {
        Ok(self
            .0
            .prepare_cached("SELECT size, refs FROM blobs WHERE digest = ?1")?
            .query_row([d], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
            .optional()?)
    }

    /// Link a blob into a repository (idempotent; refreshes the link's time).
    pub fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let (r, d) = (repo.as_str(), digest.to_string());
        let added = self
            .0
            .prepare_cached("INSERT OR IGNORE INTO repo_blobs(repo, digest, size, linked) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![r, d, size as i64, now_secs()])?;
        if added == 0 {
            self.0
                .prepare_cached("UPDATE repo_blobs SET linked = ?3 WHERE repo = ?1 AND digest = ?2")?
                .execute(params![r, d, now_secs()])?;
            return Ok(());
        }
        self.0
            .prepare_cached(
                "INSERT INTO blobs(digest, size, refs) VALUES (?1, ?2, 1)
                 ON CONFLICT(digest) DO UPDATE SET refs = refs + 1",
            )?
            .execute(params![d, size as i64])?;
        self.0
            .prepare_cached("INSERT OR IGNORE INTO repos(name) VALUES (?1)")?
            .execute([r])?;
        Ok(())
    }

    /// Unlink a blob from a repository. Returns `Some(true)` when no repository links it any
    /// more (its file may go), `Some(false)` when others still do, `None` when it was not linked.
    pub fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<bool>> {
        let removed = self.unlink_blob_in(repo.as_str(), &digest.to_string())?;
        if removed.is_some() {
            self.changed(Change::Blob(repo.clone(), digest.clone()));
            self.forget_repo_if_empty(repo.as_str())?;
        }
        Ok(removed.map(|(_, last)| last))
    }

    /// Record a manifest, after checking in the same transaction that everything it references
    /// is in the repository.
    pub fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        let repo = m.repo.as_str();
        let d = m.digest.to_string();
        for b in m.blobs {
            if self.repo_blob(m.repo, b)?.is_none() {
                return Err(Error::ManifestBlobUnknown(b.clone()));
            }
        }
        for c in m.children {
            if !self.has_manifest(repo, &c.to_string())? {
                return Err(Error::ManifestBlobUnknown(c.clone()));
            }
        }
        let newly_linked = self
            .0
            .prepare_cached("INSERT OR IGNORE INTO repo_manifests(repo, digest, pushed) VALUES (?1, ?2, ?3)")?
            .execute(params![repo, d, now_secs()])?
            > 0;
        if !newly_linked {
            self.0
                .prepare_cached("UPDATE repo_manifests SET pushed = ?3 WHERE repo = ?1 AND digest = ?2")?
                .execute(params![repo, d, now_secs()])?;
        }
        self.0
            .prepare_cached(
                "INSERT INTO manifests(digest, refs, media_type, bytes) VALUES (?1, 1, ?2, ?3)
                 ON CONFLICT(digest) DO UPDATE SET
                   refs = CASE WHEN ?4 THEN refs + 1 ELSE max(refs, 1) END,
                   media_type = excluded.media_type, bytes = excluded.bytes",
            )?
            .execute(params![d, m.media_type, m.bytes, newly_linked])?;
        self.changed(Change::Manifest(m.repo.clone(), m.digest.clone()));
        if let Some(tag) = m.tag {
            self.0
                .prepare_cached("INSERT OR REPLACE INTO tags(repo, tag, digest) VALUES (?1, ?2, ?3)")?
                .execute(params![repo, tag.as_str(), d])?;
            self.changed(Change::Tag(m.repo.clone(), tag.clone()));
        }
        if let Some((subject, descriptor)) = &m.referrer {
            let descriptor =
                serde_json::to_vec(descriptor).map_err(|e| Error::Meta(MetaError::Corrupt(e.to_string())))?;
            self.0
                .prepare_cached(
                    "INSERT OR REPLACE INTO referrers(repo, subject, digest, descriptor) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![repo, subject.to_string(), d, descriptor])?;
        }
        self.0
            .prepare_cached("INSERT OR IGNORE INTO repos(name) VALUES (?1)")?
            .execute([repo])?;
        Ok(())
    }

    fn has_manifest(&self, repo: &str, d: &str) -> Result<bool> {
        Ok(self
            .0
            .prepare_cached("SELECT 1 FROM repo_manifests WHERE repo = ?1 AND digest = ?2")?
            .exists(params![repo, d])?)
    }

    /// The digest a tag points at.
    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let found: Option<String> = self
            .0
            .prepare_cached("SELECT digest FROM tags WHERE repo = ?1 AND tag = ?2")?
            .query_row(params![repo.as_str(), tag.as_str()], |r| r.get(0))
            .optional()?;
        Ok(found.and_then(|d| d.parse().ok()))
    }

    /// A manifest of the repository, by digest.
    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT m.media_type, m.bytes FROM repo_manifests r JOIN manifests m ON m.digest = r.digest
                 WHERE r.repo = ?1 AND r.digest = ?2",
            )?
            .query_row(params![repo.as_str(), digest.to_string()], |r| {
                Ok(StoredManifest {
                    digest: digest.clone(),
                    media_type: r.get(0)?,
                    bytes: r.get::<_, Vec<u8>>(1)?.into(),
                })
            })
            .optional()?)
    }

    /// Remove a manifest from a repository with every tag pointing at it and its referrer
    /// record (`subject`). Returns false when the repository did not have it.
    pub fn delete_manifest(&self, repo: &RepoName, digest: &Digest, subject: Option<&Digest>) -> Result<bool> {
        if !self.remove_manifest_in(repo.as_str(), &digest.to_string(), subject)? {
            return Ok(false);
        }
        // Its tags went with it.
        self.changed(Change::Repo(repo.clone()));
        self.forget_repo_if_empty(repo.as_str())?;
        Ok(true)
    }

    fn repo_exists(&self, repo: &str) -> Result<bool> {
        Ok(self
            .0
            .prepare_cached("SELECT 1 FROM repos WHERE name = ?1")?
            .exists([repo])?)
    }

    fn gc_repo(&self, name: &RepoName, grace_secs: u64, sweep: &Sweep) -> Result<RepoGc> {
        let repo = name.as_str();
        use crate::reach::{Refs, removable};
        use std::collections::{HashMap, HashSet};
        let now = now_secs();
        let young = |t: i64| now.saturating_sub(t) < grace_secs as i64;
        let mut out = RepoGc::default();
        // Every manifest of the repository: what it references.
        let mut manifests: HashMap<String, Refs> = HashMap::new();
        {
            let mut stmt = self.0.prepare_cached(
                "SELECT r.digest, r.pushed, m.media_type, m.bytes FROM repo_manifests r
                 JOIN manifests m ON m.digest = r.digest WHERE r.repo = ?1",
            )?;
            let mut rows = stmt.query([repo])?;
            while let Some(row) = rows.next()? {
                let d: String = row.get(0)?;
                let pushed: i64 = row.get(1)?;
                let mt: String = row.get(2)?;
                let bytes = row
                    .get_ref(3)?
                    .as_blob()
                    .map_err(|e| Error::Meta(MetaError::Corrupt(format!("a manifest's bytes: {e}"))))?;
                match Refs::of(&mt, bytes, young(pushed)) {
                    Ok(refs) => manifests.insert(d, refs),
                    Err(e) => {
                        out.skipped = Some(format!("manifest {d} cannot be read ({e}); nothing removed"));
                        return Ok(out);
                    }
                };
            }
        }
        let mut tags_read = Ok(());
        let tagged = || {
            let read = (|| {
                self.0
                    .prepare_cached("SELECT digest FROM tags WHERE repo = ?1")?
                    .query_map([repo], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })();
            read.unwrap_or_else(|e| {
                tags_read = Err(e);
                Vec::new()
            })
        };
        let gone = removable(&manifests, sweep, tagged);
        tags_read?;
        // An eviction touches only the links of what it removed (a link pushed a moment ago for
        // a manifest on its way stays, whatever the grace).
        let only: Option<HashSet<String>> = matches!(sweep, Sweep::Image(_)).then(|| {
            gone.iter()
                .filter_map(|d| manifests.get(d))
                .flat_map(|r| r.blobs.iter().map(|b| b.to_string()))
                .collect()
        });
        // An evicted image's tags go with it; manifests no tag reached change no tag answer.
        let tags_change = matches!(sweep, Sweep::Image(_)) && !gone.is_empty();
        for d in gone {
            let r = manifests.remove(&d).expect("listed by removable");
            let subject = r.subject.as_deref().and_then(|s| s.parse::<Digest>().ok());
            if self.remove_manifest_in(repo, &d, subject.as_ref())?
                && let Ok(digest) = d.parse::<Digest>()
            {
                self.changed(Change::Manifest(name.clone(), digest.clone()));
                out.manifests.push(digest);
            }
        }
        if tags_change {
            self.changed(Change::Repo(name.clone()));
        }
        let referenced: HashSet<String> = manifests
            .values()
            .flat_map(|r| r.blobs.iter().map(|b| b.to_string()))
            .collect();
        let candidates: Vec<(String, i64)> = self
            .0
            .prepare_cached("SELECT digest, linked FROM repo_blobs WHERE repo = ?1")?
            .query_map([repo], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (d, linked) in candidates {
            if referenced.contains(&d) || young(linked) || only.as_ref().is_some_and(|o| !o.contains(&d)) {
                continue;
            }
            if let Some((size, last)) = self.unlink_blob_in(repo, &d)?
                && let Ok(digest) = d.parse::<Digest>()
            {
                self.changed(Change::Blob(name.clone(), digest.clone()));
                if last {
                    out.orphans.push((digest.clone(), size));
                }
                out.links.push((digest, size));
            }
        }
        self.forget_repo_if_empty(repo)?;
        Ok(out)
    }

    /// Remove the link of `repo` to blob `d`; returns (size, whether it was the last link), or
    /// `None` when there was no link.
    fn unlink_blob_in(&self, repo: &str, d: &str) -> Result<Option<(u64, bool)>> {
        let n = self
            .0
            .prepare_cached("DELETE FROM repo_blobs WHERE repo = ?1 AND digest = ?2")?
            .execute(params![repo, d])?;
        if n == 0 {
            return Ok(None);
        }
        let (size, refs) = self.blob_row(d)?.unwrap_or((0, 1));
        let last = refs <= 1;
        if last {
            self.0
                .prepare_cached("DELETE FROM blobs WHERE digest = ?1")?
                .execute([d])?;
        } else {
            self.0
                .prepare_cached("UPDATE blobs SET refs = refs - 1 WHERE digest = ?1")?
                .execute([d])?;
        }
        Ok(Some((size, last)))
    }

    /// Remove manifest `d` from `repo`, with the tags pointing at it and its referrer record
    /// (`subject`). False when the repository did not have it.
    fn remove_manifest_in(&self, r: &str, d: &str, subject: Option<&Digest>) -> Result<bool> {
        let n = self
            .0
            .prepare_cached("DELETE FROM repo_manifests WHERE repo = ?1 AND digest = ?2")?
            .execute(params![r, d])?;
        if n == 0 {
            return Ok(false);
        }
        let gone = self
            .0
            .prepare_cached("DELETE FROM manifests WHERE digest = ?1 AND refs <= 1")?
            .execute([d])?;
        if gone == 0 {
            self.0
                .prepare_cached("UPDATE manifests SET refs = refs - 1 WHERE digest = ?1")?
                .execute([d])?;
        }
        self.0
            .prepare_cached("DELETE FROM tags WHERE repo = ?1 AND digest = ?2")?
            .execute(params![r, d])?;
        self.0
            .prepare_cached("DELETE FROM pulls WHERE repo = ?1 AND digest = ?2")?
            .execute(params![r, d])?;
        if let Some(subject) = subject {
            self.0
                .prepare_cached("DELETE FROM referrers WHERE repo = ?1 AND subject = ?2 AND digest = ?3")?
                .execute(params![r, subject.to_string(), d])?;
        }
        Ok(true)
    }

    /// Drop the repository from the catalog when it links nothing any more.
    fn forget_repo_if_empty(&self, repo: &str) -> Result<()> {
        self.0
            .prepare_cached(
                "DELETE FROM repos WHERE name = ?1
                 AND NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = ?1)
                 AND NOT EXISTS (SELECT 1 FROM repo_manifests WHERE repo = ?1)",
            )?
            .execute([repo])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The change check reads the WAL index's header (not SQLite), and sees every commit: of
    /// this store's writer, and of a connection it does not know (as another process's would
    /// be), while reads and rolled-back writes change nothing.
    #[test]
    fn every_commit_changes_the_data_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let meta = Meta::open(&path).unwrap();
        let v0 = meta.data_version().unwrap();
        assert!(
            matches!(v0, DataVersion::Header(_)),
            "read from the mapped header: {v0:?}"
        );
        meta.check().unwrap();
        assert_eq!(meta.data_version().unwrap(), v0, "a read is not a change");

        meta.write(|t| {
            t.0.execute("INSERT INTO blobs(digest, size, refs) VALUES ('sha256:a', 1, 0)", [])?;
            Ok(())
        })
        .unwrap();
        let v1 = meta.data_version().unwrap();
        assert_ne!(v1, v0, "this store's own commit");

        let failed: Result<()> = meta.write(|t| {
            t.0.execute("INSERT INTO blobs(digest, size, refs) VALUES ('sha256:b', 1, 0)", [])?;
            Err(Error::UploadUnknown)
        });
        assert!(failed.is_err());
        assert_eq!(meta.data_version().unwrap(), v1, "a rolled-back write is not a change");

        let other = connect(&path).unwrap();
        other
            .execute("UPDATE blobs SET size = 2 WHERE digest = 'sha256:a'", [])
            .unwrap();
        let v2 = meta.data_version().unwrap();
        assert_ne!(v2, v1, "a commit of a connection this store does not know");
        let mut prev = v2;
        for _ in 0..3 {
            other.execute("UPDATE blobs SET refs = refs + 1", []).unwrap();
            let v = meta.data_version().unwrap();
            assert_ne!(v, prev);
            assert_eq!(meta.data_version().unwrap(), v, "stable until the next commit");
            prev = v;
        }
    }
    /// A failed savepoint undoes its own writes alone: the writes before and after it, in the
    /// same transaction, commit (a group commit's failed blob does not take the others with it).
    #[test]
    fn a_failed_savepoint_undoes_only_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        let count = |digest: &str| -> i64 {
            meta.write(|t| {
                Ok(t.0.query_row("SELECT count(*) FROM blobs WHERE digest = ?1", [digest], |r| r.get(0))?)
            })
            .unwrap()
        };
        meta.write(|t| {
            t.0.execute("INSERT INTO blobs(digest, size, refs) VALUES ('sha256:a', 1, 0)", [])?;
            let failed: Result<()> = t.savepoint(|t| {
                t.0.execute("INSERT INTO blobs(digest, size, refs) VALUES ('sha256:b', 1, 0)", [])?;
                Err(Error::UploadUnknown)
            });
            assert!(matches!(failed, Err(Error::UploadUnknown)));
            t.savepoint(|t| {
                t.0.execute("INSERT INTO blobs(digest, size, refs) VALUES ('sha256:c', 1, 0)", [])?;
                Ok(())
            })
        })
        .unwrap();
        assert_eq!((count("sha256:a"), count("sha256:b"), count("sha256:c")), (1, 0, 1));
    }
}
