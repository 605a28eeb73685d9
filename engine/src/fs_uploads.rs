//! Upload sessions on the local filesystem: each session's data file and checkpoint live in its
//! own directory ([`crate::layout`]), the table of sessions this process holds is
//! [`crate::upload::Uploads`], and a verified session's data becomes the blob by a rename
//! ([`FsBlobs::stage`]).

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::fs_blobs::FsBlobs;
use crate::io::{self, AppendError};
use crate::layout::Layout;
use crate::name::{RepoName, UploadId};
use crate::store::{BlobLink, StagedBlob};
use crate::upload::{SessionState, Uploads};
use crate::upload_caps::UploadLimits;
use crate::upload_store::{Chunk, UploadStore};

/// Upload sessions under a storage root.
pub struct FsUploads {
    layout: Layout,
    blobs: FsBlobs,
    uploads: Uploads,
}

impl FsUploads {
    /// The sessions of the storage at `layout`, with `limits` on how many may be open.
    pub fn new(layout: Layout, limits: UploadLimits) -> FsUploads {
        FsUploads {
            blobs: FsBlobs::new(layout.clone()),
            uploads: Uploads::new(layout.clone(), limits),
            layout,
        }
    }
}

impl UploadStore for FsUploads {
    async fn start(&self, repo: &RepoName, owner: &str) -> Result<UploadId> {
        Ok(self.uploads.start(repo, owner).await?.id)
    }

    async fn offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        self.uploads.status(repo, id).await
    }

    async fn append<S, E>(&self, repo: &RepoName, id: UploadId, chunk: Chunk<S>) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let session = self.uploads.get(repo, id).await?;
        let mut state = self.uploads.lock(&session).await?;
        append(&mut state, chunk).await?;
        self.uploads.checkpoint(&session, state.offset, &state.hasher).await?;
        Ok(state.offset)
    }

    async fn finish<S, E, C, F>(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        chunk: Chunk<S>,
        commit: C,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
        C: FnOnce(BlobLink, Box<dyn StagedBlob>) -> F + Send,
        F: Future<Output = Result<()>> + Send,
    {
        let session = self.uploads.get(repo, id).await?;
        let mut state = self.uploads.lock(&session).await?;
        let (before_offset, before_hasher) = (state.offset, state.hasher.clone());
        append(&mut state, chunk).await?;
        let actual = if digest.algorithm() == state.hasher.algorithm() {
            state.hasher.finish()
        } else {
            let fresh = Hasher::new(digest.algorithm());
            state.file()?.rehash(state.offset, fresh).await?.finish()
        };
        if &actual != digest {
            state.file()?.truncate(before_offset).await?;
            state.offset = before_offset;
            state.hasher = before_hasher;
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let size = state.offset;
        let file = state.file.take().ok_or(Error::UploadUnknown)?;
        let checkpoint = self.uploads.checkpoint_bytes(&session, size, &state.hasher)?;
        let link = BlobLink {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            object: None,
        };
        let committed = commit(link, self.blobs.stage(file, id, digest, checkpoint)).await;
        drop(state);
        if let Err(e) = committed {
            // The session is left as it was (its checkpoint restored), so that the client can
            // try the PUT again, unless the failure took its data.
            if io::file_len(self.layout.upload_data(id)).await?.is_none() {
                self.uploads.remove(id).await?;
            }
            return Err(e);
        }
        self.uploads.forget(id);
        Ok(size)
    }

    async fn cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        let session = self.uploads.get(repo, id).await?;
        let mut state = self.uploads.lock(&session).await?;
        state.file = None;
        drop(state);
        self.uploads.remove(id).await
    }

    async fn reap(&self, timeout: Duration) -> Result<usize> {
        self.uploads.reap(timeout).await
    }

    fn in_progress(&self) -> usize {
        self.uploads.len()
    }

    fn limits(&self) -> UploadLimits {
        self.uploads.caps().limits()
    }
}

/// Append a body to a locked session, enforcing a declared chunk range.
async fn append<S, E>(state: &mut SessionState, chunk: Chunk<S>) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let Chunk { range, length, body } = chunk;
    if let Some(r) = range
        && (r.start != state.offset || r.end < r.start)
    {
        return Err(Error::RangeMismatch {
            start: r.start,
            offset: state.offset,
        });
    }
    let mut hasher = state.hasher.clone();
    let length = range.map(|r| r.end - r.start + 1).or(length);
    let written = match state.file()?.append(state.offset, &mut hasher, length, body).await {
        Ok(n) => n,
        Err(AppendError::Body(e)) => return Err(Error::Body(e)),
        Err(AppendError::Io(e)) => return Err(Error::Io(e)),
    };
    if let Some(r) = range {
        let declared = r.end - r.start + 1;
        if written != declared {
            state.file()?.truncate(state.offset).await?;
            return Err(Error::SizeMismatch {
                declared,
                actual: written,
            });
        }
    }
    state.hasher = hasher;
    state.offset += written;
    Ok(())
}
