//! The one place that maps validated names to paths.
//!
//! ```text
//! <root>/
//!   berth.lock                         flock: shared while serving, exclusive for `berth gc`
//!   meta.db (+ -wal, -shm)             metadata (SQLite): links, tags, manifests, referrers
//!   metadata-database                  instead of meta.db: names the shared database that holds
//!                                      this storage's metadata (database.enabled)
//!   blobs/<alg>/<hex[0..2]>/<hex>      blob bytes, one file per digest for all repositories
//!   uploads/<uuid>/data                bytes received so far for an upload session
//!   uploads/<uuid>/state               checkpoint: repository, offset, hash state
//! ```
//!
//! Every path component comes from a validated [`Digest`] (lowercase hex) or [`UploadId`]
//! (canonical UUID), so no request string ever becomes part of a path.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::name::UploadId;

/// Paths under a storage root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database file.
    pub fn meta(&self) -> PathBuf {
        self.root.join("meta.db")
    }

    /// The file that binds the storage to a shared database: while it exists, the storage
    /// does not open with SQLite (whose empty records would make every blob look unreferenced).
    pub fn database_binding(&self) -> PathBuf {
        self.root.join("metadata-database")
    }

    /// The lock file: shared by serving processes, exclusive for offline maintenance.
    pub fn lock(&self) -> PathBuf {
        self.root.join("berth.lock")
    }

    /// Directory of all blobs.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The file holding a blob's bytes.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs_dir()
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Directory of all upload sessions.
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// Directory of one upload session.
    pub fn upload_dir(&self, id: UploadId) -> PathBuf {
        self.uploads_dir().join(id.to_string())
    }

    /// Bytes received by an upload session.
    pub fn upload_data(&self, id: UploadId) -> PathBuf {
        self.upload_dir(id).join("data")
    }

    /// Checkpoint of an upload session.
    pub fn upload_state(&self, id: UploadId) -> PathBuf {
        self.upload_dir(id).join("state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn blob_paths_are_sharded() {
        let l = Layout::new("/r");
        let d = Digest::of(Algorithm::Sha256, b"");
        assert_eq!(
            l.blob(&d),
            PathBuf::from("/r/blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }
}
