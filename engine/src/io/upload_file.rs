//! The data file of an upload session: created with the session's first checkpoint, opened and
//! locked by each request that writes it ([`UploadFile::open_claimed`]), appended to through
//! direct or buffered writes, synced for the commit; and the removal of an idle session.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::buffered::append_buffered;
use super::direct::append_direct;
use super::fs::write_atomic_now;
use super::read::READ_CHUNK;
use super::settings::DIRECT;
use super::{AppendError, blocking};
use crate::digest::Hasher;

/// The open data file of an upload session.
#[derive(Debug)]
pub struct UploadFile {
    file: Arc<File>,
    /// The same file opened with `O_DIRECT`, where the filesystem takes it and direct writes
    /// are on (`BERTH_IO_DIRECT`).
    direct: Option<Arc<File>>,
}

/// Open `path` again with `O_DIRECT` for writing; `None` where the filesystem refuses it
/// (tmpfs before Linux 6.6, some network filesystems) or direct writes are off.
fn open_direct(path: &Path) -> Option<Arc<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    if !DIRECT.on() {
        return None;
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
        .map(Arc::new)
}

impl UploadFile {
    /// Create a new, empty session file (and its directory), and write the session's first
    /// checkpoint `checkpoint` at `state` (as [`write_atomic`](super::write_atomic) does) in the
    /// same trip to the blocking pool. The file is closed again: requests open it
    /// ([`UploadFile::open_claimed`]).
    pub async fn create(path: PathBuf, state: PathBuf, checkpoint: Vec<u8>) -> io::Result<()> {
        blocking(move || {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            OpenOptions::new().write(true).create_new(true).open(&path)?;
            write_atomic_now(&state, &checkpoint)
        })
        .await
    }

    /// Open an existing session file at `path` and take its file lock (`flock`, exclusive,
    /// without waiting: a session another request of any process writes is busy, and the error's
    /// kind is `WouldBlock`), then read its checkpoint at `state` and the data's length, in one
    /// trip to the blocking pool. `None` when the session was committed or cancelled (its files
    /// are gone). Every Berth process sharing the storage takes this lock before it writes a
    /// session, and keeps it until the request's checkpoint is written ([`UploadFile::unlock`],
    /// or closing the file). Sessions hold no descriptor between requests: the file is opened
    /// here, for one request, so idle sessions cost no descriptors.
    ///
    /// The data's length is not touched here: the caller fits it to the checkpoint.
    pub async fn open_claimed(path: PathBuf, state: PathBuf) -> io::Result<Option<(UploadFile, Vec<u8>, u64)>> {
        blocking(move || {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let Some((checkpoint, len)) = claim(&file, &state)? else {
                return Ok(None);
            };
            let direct = open_direct(&path);
            Ok(Some((
                UploadFile {
                    file: Arc::new(file),
                    direct,
                },
                checkpoint,
                len,
            )))
        })
        .await
    }

    /// Release the lock [`UploadFile::claim`] took.
    pub fn unlock(&self) {
        let _ = self.file.unlock();
    }

    /// Stream `body` to the end of the file at `offset`, feeding every byte to `hasher` in the
    /// same pass. With direct writes each frame is copied into an aligned buffer as it arrives,
    /// and a full buffer is hashed and written while the next one fills; buffered, frames are
    /// gathered into batches of up to [`WRITE_BATCH`](super::WRITE_BATCH) bytes, one written while
    /// the next is received. No thread is held while the client is slow. If the body fails, or the
    /// disk does, the file is cut back to `offset` and `hasher` is left as it was, so a failed
    /// request changes nothing.
    ///
    /// `length` is the body's length when the request declared it: direct writes then allocate
    /// space ahead up to its end and no further (without it, a step at a time, and what is left
    /// over is cut off at the end).
    ///
    /// Returns the number of bytes appended.
    pub async fn append<S, E>(
        &self,
        offset: u64,
        hasher: &mut Hasher,
        length: Option<u64>,
        body: S,
    ) -> Result<u64, AppendError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        // Both paths update `hasher` only once everything is written.
        let res = match &self.direct {
            Some(fd) => append_direct(&self.file, fd, offset, hasher, length, body).await,
            None => append_buffered(&self.file, offset, hasher, body).await,
        };
        let Err(err) = res else { return res };
        match self.truncate(offset).await {
            Ok(()) => Err(err),
            Err(e) => Err(AppendError::Io(e)),
        }
    }

    /// Cut the file back to `len` bytes (used to undo an append that must not count).
    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        let file = self.file.clone();
        blocking(move || file.set_len(len)).await
    }

    /// Make the data durable before it becomes a blob, unless `dest` already exists (same
    /// digest, so identical content that is dropped instead). Says whether it synced; pass that
    /// to [`place_blob`](super::place_blob), inside the metadata transaction that records the link.
    /// Blocking: the commit runs it on the blocking pool together with the rest of its file work.
    pub fn sync_for_commit(&self, dest: &Path) -> io::Result<bool> {
        if dest.exists() {
            return Ok(false);
        }
        self.file.sync_data().map(|()| true)
    }

    /// Hash the first `len` bytes of the file again (only when the client commits with a digest
    /// algorithm other than the one the session hashed with).
    pub async fn rehash(&self, len: u64, mut hasher: Hasher) -> io::Result<Hasher> {
        let file = self.file.clone();
        blocking(move || {
            let mut reader = &*file;
            reader.seek(SeekFrom::Start(0))?;
            let mut buf = vec![0u8; READ_CHUNK];
            let mut left = len;
            while left > 0 {
                let n = reader.read(&mut buf[..READ_CHUNK.min(left as usize)])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            Ok(hasher)
        })
        .await
    }
}

fn claim(file: &File, state: &Path) -> io::Result<Option<(Vec<u8>, u64)>> {
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    let checkpoint = match fs::read(state) {
        Ok(b) => b,
        Err(e) => {
            let _ = file.unlock();
            return if e.kind() == io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            };
        }
    };
    match file.metadata() {
        Ok(m) => Ok(Some((checkpoint, m.len()))),
        Err(e) => {
            let _ = file.unlock();
            Err(e)
        }
    }
}

/// Remove the directory of an upload session whose data file no request of any process holds
/// locked. Returns false when the session is busy.
pub async fn remove_session_if_idle(dir: PathBuf, data: PathBuf) -> io::Result<bool> {
    blocking(move || {
        let file = match File::open(&data) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(f) = &file {
            match f.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(false),
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(true),
        }
    })
    .await
}
