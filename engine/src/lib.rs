//! Berth's storage engine.
//!
//! The engine knows nothing of HTTP. It owns every byte on disk and every metadata record, and
//! speaks in validated domain types: [`Digest`], [`RepoName`], [`Tag`], [`Reference`],
//! [`UploadId`]. Paths are built in one module ([`layout`]) from those types only, and all file
//! I/O goes through one module ([`io`]).
//!
//! - Blobs are content-addressed files, one copy for all repositories.
//! - Uploads stream to a session file while SHA-256 is computed in the same pass; the hash state
//!   and offset are checkpointed after each request; commit checks the digest, syncs the data,
//!   renames it into place and syncs the directory before the blob is linked.
//! - Links, tags, manifests and referrers are records in an embedded transactional store.

pub mod backend;
pub mod blob_store;
pub mod bodies;
pub mod change;
pub mod descriptor;
pub mod digest;
pub mod engine;
pub mod error;
pub mod fs_blobs;
pub mod fs_uploads;
mod group;
pub mod hot;
pub mod io;
pub mod layout;
pub mod manifest;
pub mod meta;
pub mod metadata;
pub mod migrate;
pub mod name;
pub mod page;
pub mod postgres;
mod reach;
pub mod s3;
pub mod session_store;
pub mod store;
pub mod tls_verify;
pub mod upload;
pub mod upload_caps;
pub mod upload_store;
pub mod usage;

pub use blob_store::BlobStore;
pub use descriptor::Descriptor;
pub use digest::{Algorithm, Digest, Hasher};
pub use engine::{BlobStream, ByteRange, ChunkRange, Engine, GcOptions, GcReport, PushedManifest};
pub use error::{Error, MetaError, ObjectStoreError, ParseError, Result, error_chain};
pub use io::engine_name as io_engine;
pub use meta::StoredManifest;
pub use name::{Reference, RepoName, Tag, UploadId};
pub use page::Page;
pub use reach::Sweep;
pub use store::MetaStore;
pub use upload_caps::{UploadCap, UploadLimits};
pub use upload_store::UploadStore;
pub use usage::{FillClaim, ImageUse};
