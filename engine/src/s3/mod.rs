//! An S3-compatible object store as the blob store of a scale-out deployment.
//!
//! - [`settings`]: the `storage.s3` settings (as distribution names them).

pub mod settings;

pub use settings::S3Settings;
