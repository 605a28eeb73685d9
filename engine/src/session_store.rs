//! Upload sessions kept as rows of a shared database, for a blob store whose upload bytes go to
//! an object store's multipart parts ([`crate::s3`]): whichever replica receives a session's
//! next request continues it from its row. A request first *claims* the session at the offset
//! it declares (one claim at a time, held for a lease the writer renews), streams, then saves the
//! new state and lets the claim go in one statement; a second request for the same offset finds
//! the session claimed or moved on, and is refused.
//!
//! The bytes after the last full part (the *tail*, shorter than a part) are kept beside the row
//! as pieces, each written once and read once when the next part is cut.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::digest::Hasher;
use crate::error::Result;
use crate::name::{RepoName, UploadId};
use crate::upload_caps::UploadLimits;

/// A claimed session's state.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Bytes received.
    pub offset: u64,
    /// The hash of those bytes, so far.
    pub hasher: Hasher,
    /// The object store's multipart upload id, once the first part is stored.
    pub multipart: Option<String>,
    /// ETags of the stored parts, in order (part `n` is `etags[n - 1]`).
    pub etags: Vec<String>,
    /// Bytes held as pieces after the last part.
    pub tail: u64,
    /// Every byte is in the session's object already (a commit of it failed and may be tried
    /// again).
    pub stored: bool,
}

/// What a request changes in its session's tail.
#[derive(Debug, Clone)]
pub enum TailChange {
    /// The pieces stay; `Some` adds one more, starting at that offset.
    Append(Option<(u64, Bytes)>),
    /// Every piece goes (a part took them); `Some` is the one that replaces them.
    Replace(Option<(u64, Bytes)>),
}

/// The state a request leaves its session in.
#[derive(Debug, Clone)]
pub struct SessionUpdate {
    /// Bytes received.
    pub offset: u64,
    /// Their hash.
    pub hasher: Hasher,
    /// The multipart upload id.
    pub multipart: Option<String>,
    /// ETags of the parts this request stored (appended to the session's).
    pub new_etags: Vec<String>,
    /// The tail after the request.
    pub tail: TailChange,
    /// Bytes held as pieces after it.
    pub tail_len: u64,
    /// Every byte is in the session's object.
    pub stored: bool,
}

/// A session that has been idle too long, claimed for removal.
#[derive(Debug, Clone)]
pub struct Expired {
    /// Its id.
    pub id: UploadId,
    /// Its claim.
    pub token: String,
    /// Its multipart upload, when one was started.
    pub multipart: Option<String>,
}

/// The session rows.
pub trait SessionRecords: Send + Sync + 'static {
    /// Record a new session of `owner` in `repo`, unless a cap on open sessions (counted over
    /// every replica) refuses it ([`crate::Error::TooManyUploads`]).
    fn open_session(
        &self,
        id: UploadId,
        repo: &RepoName,
        owner: &str,
        hasher: &Hasher,
        limits: UploadLimits,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Claim a session of `repo` for one request, for `lease`: with `start`, only when the
    /// session has exactly that many bytes ([`crate::Error::RangeMismatch`] otherwise, also
    /// while another request holds it); without, [`crate::Error::UploadBusy`] while another
    /// request holds it. Returns the state and the claim's token.
    fn claim_session(
        &self,
        repo: &RepoName,
        id: UploadId,
        start: Option<u64>,
        lease: Duration,
    ) -> impl Future<Output = Result<(SessionRow, String)>> + Send;

    /// Extend a claim; [`crate::Error::UploadBusy`] when it was lost.
    fn renew_claim(&self, id: UploadId, token: &str, lease: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Let a claim go without changing the session.
    fn release_claim(&self, id: UploadId, token: &str) -> impl Future<Output = Result<()>> + Send;

    /// Save what a request did and let its claim go, in one transaction;
    /// [`crate::Error::UploadBusy`] when the claim was lost (nothing is saved).
    fn save_session(&self, id: UploadId, token: &str, update: SessionUpdate)
    -> impl Future<Output = Result<()>> + Send;

    /// The tail's pieces, in order.
    fn session_pieces(&self, id: UploadId) -> impl Future<Output = Result<Vec<Bytes>>> + Send;

    /// Bytes a session of `repo` has received.
    fn session_offset(&self, repo: &RepoName, id: UploadId) -> impl Future<Output = Result<u64>> + Send;

    /// Remove a session's row and pieces.
    fn end_session(&self, id: UploadId) -> impl Future<Output = Result<()>> + Send;

    /// Claim, for `lease`, the sessions untouched for longer than `idle` (at most `limit`).
    fn claim_expired(
        &self,
        idle: Duration,
        lease: Duration,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Expired>>> + Send;

    /// Whether a blob record names the object `id` or a session of that id exists.
    fn object_in_use(&self, id: UploadId) -> impl Future<Output = Result<bool>> + Send;

    /// Sessions open over every replica.
    fn session_count(&self) -> impl Future<Output = Result<u64>> + Send;
}
