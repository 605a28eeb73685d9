//! The blob and upload stores an engine was opened with: the local filesystem (the default) or
//! an S3-compatible object store with its upload sessions in the shared database (scale-out).
//! One enum each, so that a call costs one match and no allocation, whichever it is.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::blob_store::{BlobStore, BlobStream, StoredData};
use crate::digest::Digest;
use crate::engine::ByteRange;
use crate::error::Result;
use crate::fs_blobs::FsBlobs;
use crate::fs_uploads::FsUploads;
use crate::name::{RepoName, UploadId};
use crate::postgres::PgStore;
use crate::s3::{S3Blobs, S3Uploads};
use crate::store::{BlobLink, Removal, StagedBlob};
use crate::upload_caps::UploadLimits;
use crate::upload_store::{Chunk, UploadStore};

/// One of the blob stores.
#[derive(Clone, Debug)]
pub enum Blobs {
    /// Files under the storage root.
    Fs(FsBlobs),
    /// Objects in a bucket.
    S3(S3Blobs),
}

/// One of the upload session stores.
pub enum Uploads {
    /// Session directories under the storage root.
    Fs(FsUploads),
    /// Multipart uploads, their rows in PostgreSQL.
    S3(S3Uploads<PgStore>),
}

macro_rules! blobs {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Blobs::Fs($s) => $call,
            Blobs::S3($s) => $call,
        }
    };
}

macro_rules! uploads {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Uploads::Fs($s) => $call,
            Uploads::S3($s) => $call,
        }
    };
}

impl Blobs {
    /// Which store this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Blobs::Fs(_) => "filesystem",
            Blobs::S3(_) => "s3",
        }
    }
}

impl BlobStore for Blobs {
    async fn read(&self, digest: &Digest, object: Option<UploadId>, range: ByteRange) -> Result<BlobStream> {
        blobs!(self, s => s.read(digest, object, range).await)
    }

    fn removal(&self, digest: &Digest) -> Removal {
        blobs!(self, s => s.removal(digest))
    }

    async fn list(&self) -> Result<Vec<StoredData>> {
        blobs!(self, s => s.list().await)
    }

    async fn probe(&self) -> Result<()> {
        blobs!(self, s => s.probe().await)
    }
}

impl UploadStore for Uploads {
    async fn start(&self, repo: &RepoName, owner: &str) -> Result<UploadId> {
        uploads!(self, s => s.start(repo, owner).await)
    }

    async fn offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        uploads!(self, s => s.offset(repo, id).await)
    }

    async fn append<S, E>(&self, repo: &RepoName, id: UploadId, chunk: Chunk<S>) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        uploads!(self, s => s.append(repo, id, chunk).await)
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
        uploads!(self, s => s.finish(repo, id, digest, chunk, commit).await)
    }

    async fn cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        uploads!(self, s => s.cancel(repo, id).await)
    }

    async fn reap(&self, timeout: Duration) -> Result<usize> {
        uploads!(self, s => s.reap(timeout).await)
    }

    fn in_progress(&self) -> usize {
        uploads!(self, s => s.in_progress())
    }

    fn limits(&self) -> UploadLimits {
        uploads!(self, s => s.limits())
    }
}
