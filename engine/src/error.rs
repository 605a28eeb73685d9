//! The engine's error type.

use crate::digest::Digest;

/// Why a string is not a valid name, tag, digest or id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Invalid repository name.
    #[error("invalid repository name: {0}")]
    Name(&'static str),
    /// Invalid tag.
    #[error("invalid tag: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag,
    /// Invalid digest.
    #[error("invalid digest: {0}")]
    Digest(&'static str),
    /// Invalid upload id.
    #[error("invalid upload id")]
    UploadId,
}

/// Everything an engine operation can fail with. The server maps each variant to an OCI error
/// code and HTTP status in one table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The blob is not in the repository.
    #[error("blob unknown to registry")]
    BlobUnknown(Digest),
    /// The upload session does not exist (or belongs to another repository).
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    /// Another request is writing to this upload session right now.
    #[error("another request is writing to this upload session")]
    UploadBusy,
    /// A chunk does not start where the upload currently ends.
    #[error("chunk starts at {start} but the upload has {offset} bytes")]
    RangeMismatch {
        /// First byte of the rejected chunk.
        start: u64,
        /// Bytes received so far.
        offset: u64,
    },
    /// The body length disagrees with the declared length.
    #[error("body has {actual} bytes but {declared} were declared")]
    SizeMismatch {
        /// Declared length.
        declared: u64,
        /// Received length.
        actual: u64,
    },
    /// The uploaded content does not match the digest the client named.
    #[error("digest did not match content: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The client's digest.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// The manifest is not in the repository.
    #[error("manifest unknown to registry")]
    ManifestUnknown(String),
    /// The manifest cannot be accepted.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The manifest references content the repository does not have.
    #[error("manifest references {0}, which is not in the repository")]
    ManifestBlobUnknown(Digest),
    /// The repository has no content.
    #[error("repository name not known to registry")]
    NameUnknown(String),
    /// The client's body stream failed.
    #[error("request body failed: {0}")]
    Body(String),
    /// Storage failure.
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    /// The storage is locked by another process: by a serving berth (`exclusive`: this process
    /// wanted it alone), or by offline maintenance such as `berth gc`.
    #[error("{}", if *exclusive { "the storage is in use by a running berth process" } else { "the storage is locked by offline maintenance (berth gc)" })]
    StorageInUse {
        /// Whether this process asked for the storage alone.
        exclusive: bool,
    },
    /// Metadata store failure.
    #[error("metadata store error: {0}")]
    Meta(MetaError),
    /// Object store failure.
    #[error("object store error: {0}")]
    ObjectStore(ObjectStoreError),
    /// A cap on open upload sessions refuses a new one.
    #[error("too many open upload sessions for this {}: the limit is {limit}", cap.as_str())]
    TooManyUploads {
        /// Which cap.
        cap: crate::upload_caps::UploadCap,
        /// Its limit.
        limit: usize,
    },
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // The disk is full: the same answer as a full disk under a blob.
            Some(rusqlite::ErrorCode::DiskFull) => Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => Error::Meta(MetaError::Database(e.to_string())),
        }
    }
}

/// Why the metadata store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The database refused or failed a statement (its message).
    #[error("{0}")]
    Database(String),
    /// The database cannot be reached right now (connection refused or lost, the server
    /// shutting down, no connection free in time): worth retrying, a 503 at the edge.
    #[error("the metadata database is unavailable: {0}")]
    Unavailable(String),
    /// A setting of the database connection is wrong (the message names it).
    #[error("{0}")]
    Settings(String),
    /// A stored record cannot be read back (what, and why).
    #[error("a damaged record: {0}")]
    Corrupt(String),
    /// The work ran on a task that was lost (it panicked or the runtime is shutting down).
    #[error("the metadata task was lost: {0}")]
    TaskLost(String),
    /// Importing the records of an older Berth's store failed.
    #[error("{0}")]
    Import(String),
    /// An operation shared with other callers (a group commit) failed before this caller's part
    /// could run.
    #[error("{0}")]
    Shared(String),
}

/// Why the object store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectStoreError {
    /// The store cannot be reached right now, or answered that it is busy or failing (5xx):
    /// worth retrying, a 503 at the edge.
    #[error("the object store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused a request (its status, and what it said).
    #[error("{detail}")]
    Refused {
        /// HTTP status of the answer.
        status: u16,
        /// The request, the status, the store's error code and message.
        detail: String,
    },
    /// There is no such object.
    #[error("no object {0}")]
    NotFound(String),
    /// A setting of the object store is wrong (the message names it).
    #[error("{0}")]
    Settings(String),
    /// Anything else (the message says what).
    #[error("{0}")]
    Failed(String),
}

/// Engine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `e` and its sources, joined by `: ` (what a driver or client error says, with its causes).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Error {
    /// The same failure once more, for each of several callers that shared one operation (a
    /// group commit): I/O errors keep their OS code and kind, so a full disk still answers as one.
    pub(crate) fn replicate(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(e.kind(), e.to_string()),
            }),
            Error::Meta(m) => Error::Meta(m.clone()),
            other => Error::Meta(MetaError::Shared(other.to_string())),
        }
    }
}
