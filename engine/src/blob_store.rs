//! The storage seam's blob side: the interface the engine uses for blob bytes at rest, so that
//! the local filesystem (the default) and an S3-compatible object store (scale-out) can stand
//! behind it. Each operation is one call per request, never one per body frame.
//!
//! It has reading a range of a stored blob, the step that deletes a blob's data (run by the
//! metadata store inside its transaction, see [`crate::store::Removal`]), listing what is
//! stored (for garbage collection of data no record names) and the readiness probe. An
//! upload's data and its placement at commit ([`crate::store::StagedBlob`]) belong to each
//! store's upload side ([`crate::fs_uploads`], [`crate::s3::uploads`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::engine::ByteRange;
use crate::error::Result;
use crate::name::UploadId;
use crate::store::Removal;

/// A stream of blob bytes; its memory use does not grow with the blob.
pub struct BlobStream(Source);

enum Source {
    /// What a reader task sends.
    Reader(mpsc::Receiver<std::io::Result<Bytes>>),
    /// Bytes at hand (a small blob, read in one go or from memory).
    Ready(Option<Bytes>),
}

impl BlobStream {
    /// The stream of what a reader task sends.
    pub fn new(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> BlobStream {
        BlobStream(Source::Reader(rx))
    }

    /// A stream of one chunk.
    pub fn ready(bytes: Bytes) -> BlobStream {
        BlobStream(Source::Ready(Some(bytes)))
    }
}

impl Stream for BlobStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.0 {
            Source::Reader(rx) => rx.poll_recv(cx),
            Source::Ready(b) => Poll::Ready(b.take().map(Ok)),
        }
    }
}

/// What names data at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataName {
    /// The digest its location spells (the filesystem store).
    Digest(Digest),
    /// The upload that stored it (an object store: see [`crate::store::BlobLink::object`]).
    Object(UploadId),
}

/// Data at rest under a name (not yet checked against any record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredData {
    /// Its name.
    pub name: DataName,
    /// Size in bytes.
    pub size: u64,
    /// Seconds since it was last written.
    pub age_secs: u64,
}

/// The blob store.
pub trait BlobStore: Send + Sync + 'static {
    /// Stream `range` of a stored blob (the caller has checked it against the size), its data
    /// the `object` its record names, if any; `BlobUnknown` when its data is not there.
    fn read(
        &self,
        digest: &Digest,
        object: Option<UploadId>,
        range: ByteRange,
    ) -> impl Future<Output = Result<BlobStream>> + Send;

    /// The step that deletes a blob's data (a blob already gone is not an error).
    fn removal(&self, digest: &Digest) -> Removal;

    /// Everything stored under a blob's name, records or not.
    fn list(&self) -> impl Future<Output = Result<Vec<StoredData>>> + Send;

    /// Whether the store takes a write; the error says why not.
    fn probe(&self) -> impl Future<Output = Result<()>> + Send;
}
