//! The operations that run a blob store's step while no other replica can commit or remove the
//! same digest: a blob's commit, its last unlink and the removal of data no record names.
//!
//! Every one takes the digest's advisory lock (after the repository's, when it takes that too,
//! so the order is the same everywhere). A removal is fenced: the blob's row is marked
//! `deleting` and committed before the blob store deletes the data, and dropped after; a commit
//! that meets the mark fails with an error the client can retry ([`MetaError::Unavailable`]),
//! so no manifest can come to point at data being deleted, and the database is never held in a
//! transaction while the blob store works. A replica that dies between the two leaves the
//! mark, which the next removal of that digest completes.

use crate::change::Change;
use deadpool_postgres::Transaction;

use super::PgStore;
use super::records::{exec, forget_repo_if_empty, link_blob, row, size};
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::name::RepoName;
use crate::store::{BlobLink, Outcome, Removal, StagedBlob};

/// The first key of the two-key advisory locks on digests ("blob").
const BLOB_LOCK_CLASS: i32 = 0x626c_6f62;

/// Run blocking work (a blob store's step) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Meta(MetaError::TaskLost(e.to_string())))
}

async fn lock_digest(tx: &Transaction<'_>, d: &str) -> Result<()> {
    exec(
        tx,
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&BLOB_LOCK_CLASS, &d],
    )
    .await?;
    Ok(())
}

/// The blob's row state, under the digest's lock: `None` when there is no row.
async fn state(tx: &Transaction<'_>, d: &str) -> Result<Option<String>> {
    Ok(row(tx, "SELECT state FROM blobs WHERE digest = $1", &[&d])
        .await?
        .map(|r| r.get(0)))
}

/// The object id a row names.
fn object_id(object: Option<String>) -> Result<Option<crate::name::UploadId>> {
    object
        .map(|o| {
            o.parse()
                .map_err(|_| Error::Meta(MetaError::Corrupt(format!("a stored object id {o:?} is not valid"))))
        })
        .transpose()
}

fn being_deleted(d: &str) -> Error {
    Error::Meta(MetaError::Unavailable(format!(
        "blob {d} is being deleted by garbage collection; push it again"
    )))
}

impl PgStore {
    pub(super) async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let c = self.client().await?;
        let found = row(
            &c,
            "SELECT size FROM blobs WHERE digest = $1 AND state = 'live'",
            &[&digest.to_string()],
        )
        .await?;
        Ok(found.map(|r| size(r.get(0))))
    }

    pub(super) async fn object_of(&self, digest: &Digest) -> Result<Option<crate::name::UploadId>> {
        let c = self.client().await?;
        let found = row(
            &c,
            "SELECT object FROM blobs WHERE digest = $1 AND state = 'live'",
            &[&digest.to_string()],
        )
        .await?;
        object_id(found.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    pub(super) async fn commit_staged(&self, link: BlobLink, staged: Box<dyn StagedBlob>) -> Result<()> {
        let (staged, prepared) = blocking(move || {
            let mut staged = staged;
            let p = staged.prepare();
            (staged, p)
        })
        .await?;
        let done = match prepared {
            Ok(placement) => self.link_placed(&link, placement).await,
            Err(e) => Err(e),
        };
        let outcome = match done {
            Ok(true) => Outcome::Duplicate,
            Ok(false) => Outcome::Linked,
            Err(_) => Outcome::Failed,
        };
        blocking(move || staged.finish(outcome)).await?;
        done.map(|_| ())
    }

    /// Link a placed blob; whether it was stored already.
    async fn link_placed(&self, link: &BlobLink, placement: Box<dyn crate::store::Placement>) -> Result<bool> {
        let (r, d) = (link.repo.as_str(), link.digest.to_string());
        let mut c = self.client().await?;
        let tx = self.begin(&mut c, r).await?;
        lock_digest(&tx, &d).await?;
        if state(&tx, &d).await?.is_some_and(|s| s == "deleting") {
            return Err(being_deleted(&d));
        }
        let placed = blocking(move || {
            let dir = placement.place()?;
            if let Some(dir) = &dir {
                placement.flush(dir)?;
            }
            Ok::<_, Error>(())
        })
        .await?;
        placed?;
        let size =
            i64::try_from(link.size).map_err(|_| Error::Meta(MetaError::Database("blob size out of range".into())))?;
        let object = link.object.map(|o| o.to_string());
        let existed = link_blob(&tx, r, &d, size, object.as_deref()).await?;
        self.commit(tx, &[]).await?;
        Ok(existed)
    }

    pub(super) async fn unlink_fenced(&self, repo: &RepoName, digest: &Digest, remove: Removal) -> Result<bool> {
        let (r, d) = (repo.as_str(), digest.to_string());
        let mut c = self.client().await?;
        let tx = self.begin(&mut c, r).await?;
        lock_digest(&tx, &d).await?;
        let Some(link) = row(
            &tx,
            "DELETE FROM repo_blobs WHERE repo = $1 AND digest = $2 RETURNING size",
            &[&r, &d],
        )
        .await?
        else {
            return Ok(false);
        };
        let size: i64 = link.get(0);
        let left = row(
            &tx,
            "UPDATE blobs SET refs = refs - 1 WHERE digest = $1 RETURNING refs",
            &[&d],
        )
        .await?
        .map_or(0, |r| r.get::<_, i64>(0));
        forget_repo_if_empty(&tx, r).await?;
        let unlinked = [Change::Blob(repo.clone(), digest.clone())];
        if left > 0 {
            self.commit(tx, &unlinked).await?;
            return Ok(true);
        }
        // The last link: fence the digest, let go of the database, then remove the data.
        let object = row(
            &tx,
            "UPDATE blobs SET state = 'deleting', refs = 0 WHERE digest = $1 RETURNING object",
            &[&d],
        )
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0));
        self.commit(tx, &unlinked).await?;
        let object = object_id(object)?;
        let removed = blocking(move || remove(object)).await?;
        let tx = self.begin(&mut c, r).await?;
        lock_digest(&tx, &d).await?;
        match removed {
            Ok(()) => {
                exec(&tx, "DELETE FROM blobs WHERE digest = $1 AND state = 'deleting'", &[&d]).await?;
                self.commit(tx, &[]).await?;
                Ok(true)
            }
            Err(e) => {
                // The data is still there: the link comes back, and the fence goes.
                exec(&tx, "UPDATE blobs SET state = 'live' WHERE digest = $1", &[&d]).await?;
                link_blob(&tx, r, &d, size, None).await?;
                self.commit(tx, &[]).await?;
                Err(e)
            }
        }
    }

    pub(super) async fn remove_fenced(&self, digest: &Digest, remove: Option<Removal>) -> Result<bool> {
        let d = digest.to_string();
        let Some(remove) = remove else {
            return Ok(self.blob_size(digest).await?.is_none());
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        lock_digest(&tx, &d).await?;
        let object = row(&tx, "SELECT object FROM blobs WHERE digest = $1", &[&d])
            .await?
            .and_then(|r| r.get::<_, Option<String>>(0));
        match state(&tx, &d).await?.as_deref() {
            Some("live") => return Ok(false),
            Some(_) => {}
            None => {
                exec(
                    &tx,
                    "INSERT INTO blobs(digest, size, refs, state) VALUES ($1, 0, 0, 'deleting')",
                    &[&d],
                )
                .await?;
            }
        }
        tx.commit().await?;
        let object = object_id(object)?;
        let removed = blocking(move || remove(object)).await?;
        // Whether or not the data went, no record names it: the fence goes (a failed removal
        // is tried again by the next collection).
        let tx = c.transaction().await?;
        lock_digest(&tx, &d).await?;
        exec(&tx, "DELETE FROM blobs WHERE digest = $1 AND state = 'deleting'", &[&d]).await?;
        tx.commit().await?;
        removed.map(|()| true)
    }
}
