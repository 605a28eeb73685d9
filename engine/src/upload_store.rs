//! The storage seam's upload side: the interface the engine uses for upload sessions, so that
//! sessions kept beside their data on a local filesystem (the default: checkpoint files under
//! a file lock) and sessions kept in a shared database with their bytes in object-store parts
//! (scale-out) can stand behind it. Whichever process or replica receives a session's next
//! request continues it from its last checkpoint. Each operation is one call per request.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::digest::Digest;
use crate::engine::ChunkRange;
use crate::error::Result;
use crate::name::{RepoName, UploadId};
use crate::store::{BlobLink, StagedBlob};
use crate::upload_caps::UploadLimits;

/// A request body for a session: with `range`, the chunk must start at the session's offset
/// (else [`crate::Error::RangeMismatch`]) and have exactly the declared length; `length` is the
/// body's declared length (`Content-Length`), when there is one, so that space for exactly that
/// much can be set aside.
pub struct Chunk<S> {
    /// The range the request declared (`Content-Range`).
    pub range: Option<ChunkRange>,
    /// The body's declared length.
    pub length: Option<u64>,
    /// The body.
    pub body: S,
}

/// The upload session store.
pub trait UploadStore: Send + Sync + 'static {
    /// Start a session of `owner` (the user, or the client's address when anonymous; empty when
    /// unknown) unless a cap on open sessions refuses it ([`crate::Error::TooManyUploads`]).
    fn start(&self, repo: &RepoName, owner: &str) -> impl Future<Output = Result<UploadId>> + Send;

    /// Bytes the session has received, by the requests that finished.
    fn offset(&self, repo: &RepoName, id: UploadId) -> impl Future<Output = Result<u64>> + Send;

    /// Append a chunk, hashing it as it streams. Returns the new offset, checkpointed.
    fn append<S, E>(&self, repo: &RepoName, id: UploadId, chunk: Chunk<S>) -> impl Future<Output = Result<u64>> + Send
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display;

    /// Append an optional last chunk and check the digest; on a match, hand the verified data
    /// to `commit` (which records it, see [`crate::MetaStore::commit_blob`]) while the session
    /// is still held, and end the session when it succeeds. On a digest mismatch nothing is
    /// stored and the session is as it was before this request; when `commit` fails the session
    /// stays too, so that the client can try again. Returns the blob's size.
    fn finish<S, E, C, F>(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        chunk: Chunk<S>,
        commit: C,
    ) -> impl Future<Output = Result<u64>> + Send
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
        C: FnOnce(BlobLink, Box<dyn StagedBlob>) -> F + Send,
        F: Future<Output = Result<()>> + Send;

    /// End a session and delete what it received.
    fn cancel(&self, repo: &RepoName, id: UploadId) -> impl Future<Output = Result<()>> + Send;

    /// End the sessions idle for longer than `timeout`; returns how many.
    fn reap(&self, timeout: Duration) -> impl Future<Output = Result<usize>> + Send;

    /// Sessions this process holds open.
    fn in_progress(&self) -> usize;

    /// The caps on open sessions.
    fn limits(&self) -> UploadLimits;
}
