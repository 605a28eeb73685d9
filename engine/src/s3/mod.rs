//! An S3-compatible object store as the blob store of a scale-out deployment.
//!
//! - [`settings`]: the `storage.s3` settings (as distribution names them).
//! - [`client`]: the signed requests (SigV4 by `rusty-s3`, sent by hyper).
//! - [`blobs`]: the blob store ([`crate::BlobStore`]): one object per blob, named by its record.
//! - [`uploads`]: upload sessions ([`crate::UploadStore`]) in multipart parts, their rows in the
//!   shared database.
//! - `xml`: the answers `rusty-s3` has no type for.

pub mod blobs;
pub mod client;
pub mod settings;
pub mod uploads;
mod xml;

pub use blobs::S3Blobs;
pub use client::S3Client;
pub use settings::S3Settings;
pub use uploads::S3Uploads;
