//! The local filesystem as the blob store: blobs are content-addressed files (see
//! [`crate::layout`]); a verified upload's data file is renamed into place inside the metadata
//! transaction that links it, and a blob's file is removed inside the one that unlinks it last.

use std::path::{Path, PathBuf};

use crate::blob_store::{BlobStore, BlobStream, DataName, StoredData};
use crate::digest::Digest;
use crate::engine::ByteRange;
use crate::error::{Error, Result};
use crate::io::{self, UploadFile};
use crate::layout::Layout;
use crate::name::UploadId;
use crate::store::{Outcome, Placement, Removal, StagedBlob};

/// A blob file that is not there is a blob the store does not have.
fn not_found_is_unknown(e: std::io::Error, digest: &Digest) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::BlobUnknown(digest.clone())
    } else {
        Error::Io(e)
    }
}

/// Blob files under a storage root.
#[derive(Clone, Debug)]
pub struct FsBlobs {
    layout: Layout,
}

impl FsBlobs {
    /// The blob store of the storage at `layout`.
    pub fn new(layout: Layout) -> FsBlobs {
        FsBlobs { layout }
    }

    /// A small range of a blob in one read (see [`io::read_once`]), and whether it is the whole
    /// blob.
    pub async fn read_once(&self, digest: &Digest, range: ByteRange) -> Result<(bytes::Bytes, bool)> {
        let len = usize::try_from(range.len).map_err(|_| Error::Io(std::io::Error::other("range too long")))?;
        io::read_once(self.layout.blob(digest), range.start, len)
            .await
            .map_err(|e| not_found_is_unknown(e, digest))
    }

    /// A verified upload session's data, staged for [`crate::MetaStore::commit_blob`]: its
    /// checkpoint is retired first (so that no process continues the session once its data
    /// becomes the blob), the data synced, then renamed to the blob's path; once committed, the
    /// session's directory goes. When the commit fails with the data still there, `checkpoint`
    /// (the session's last) is written back before the file and its lock are let go, so the
    /// session goes on from where it was.
    pub fn stage(&self, file: UploadFile, id: UploadId, digest: &Digest, checkpoint: Vec<u8>) -> Box<dyn StagedBlob> {
        Box::new(FsStaged {
            file: Some(file),
            checkpoint,
            state: self.layout.upload_state(id),
            data: self.layout.upload_data(id),
            dir: self.layout.upload_dir(id),
            dest: self.layout.blob(digest),
        })
    }
}

impl BlobStore for FsBlobs {
    async fn read(&self, digest: &Digest, _object: Option<UploadId>, range: ByteRange) -> Result<BlobStream> {
        let rx = io::blob_range(self.layout.blob(digest), range.start, range.len)
            .await
            .map_err(|e| not_found_is_unknown(e, digest))?;
        Ok(BlobStream::new(rx))
    }

    fn removal(&self, digest: &Digest) -> Removal {
        let path = self.layout.blob(digest);
        Box::new(move |_| io::remove_file_now(&path).map_err(Error::Io))
    }

    async fn list(&self) -> Result<Vec<StoredData>> {
        let files = io::list_blob_files(self.layout.blobs_dir()).await?;
        Ok(files
            .into_iter()
            .filter_map(|f| {
                let digest = f.name.parse::<Digest>().ok()?;
                Some(StoredData {
                    name: DataName::Digest(digest),
                    size: f.size,
                    age_secs: f.age_secs,
                })
            })
            .collect())
    }

    async fn probe(&self) -> Result<()> {
        let probe = self.layout.uploads_dir().join(".ready-probe");
        io::write_atomic(probe.clone(), b"ok".to_vec()).await.map_err(|e| {
            let why = format!("storage not writable ({}): {e}", self.layout.root().display());
            Error::Io(std::io::Error::new(e.kind(), why))
        })?;
        io::remove_file(probe).await?;
        Ok(())
    }
}

/// An upload session's data on its way to the blob's path.
struct FsStaged {
    /// The session's data file, open and locked.
    file: Option<UploadFile>,
    checkpoint: Vec<u8>,
    state: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    dest: PathBuf,
}

impl StagedBlob for FsStaged {
    fn prepare(&mut self) -> Result<Box<dyn Placement>> {
        io::remove_file_now(&self.state)?;
        let file = self.file.as_ref().ok_or(Error::UploadUnknown)?;
        let synced = file.sync_for_commit(&self.dest)?;
        Ok(Box::new(FsPlacement {
            data: self.data.clone(),
            dest: self.dest.clone(),
            synced,
        }))
    }

    fn finish(mut self: Box<Self>, outcome: Outcome) {
        if outcome == Outcome::Failed {
            if self.data.exists()
                && let Err(e) = io::write_atomic_now(&self.state, &self.checkpoint)
            {
                tracing::warn!(error = %e, dir = %self.dir.display(), "could not restore an upload session's checkpoint after a failed commit");
            }
            drop(self.file.take());
            return;
        }
        drop(self.file.take());
        if let Err(e) = io::remove_dir_all_now(&self.dir) {
            // The blob is stored; the reaper removes the leftover session later.
            tracing::warn!(error = %e, dir = %self.dir.display(), "could not remove a committed upload session");
        }
    }
}

/// The rename of a session's data file to the blob's path.
struct FsPlacement {
    data: PathBuf,
    dest: PathBuf,
    /// Whether the data was synced before the commit was queued.
    synced: bool,
}

impl Placement for FsPlacement {
    fn place(&self) -> Result<Option<PathBuf>> {
        Ok(io::place_blob(&self.data, &self.dest, self.synced)?)
    }

    fn flush(&self, dir: &Path) -> Result<()> {
        Ok(io::sync_dir(dir)?)
    }
}
