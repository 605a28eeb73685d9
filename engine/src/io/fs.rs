//! File-system calls outside the upload data path: placing a blob, removals, small atomic
//! files, directory listings, the storage lock, directory syncs and the blob store's listing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::blocking;

/// Move upload data at `src` into the blob store at `dest` (in a directory made, and made
/// durable, if missing), or drop it when `dest` is already there. `synced` says whether
/// [`UploadFile::sync_for_commit`](super::UploadFile::sync_for_commit) synced the data; if not and
/// `dest` has gone since, it is synced here. Returns the directory that received the rename: the
/// caller syncs it (once for all the blobs of a group commit) before the transaction that links the
/// blob commits. Blocking: runs inside that metadata transaction, so that no garbage collection of
/// any process removes `dest` between this and the link.
pub fn place_blob(src: &Path, dest: &Path, synced: bool) -> io::Result<Option<PathBuf>> {
    if dest.exists() {
        return remove_file_now(src).map(|()| None);
    }
    if !synced {
        File::open(src)?.sync_data()?;
    }
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::other("blob path has no parent"))?;
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    fs::rename(src, dest)?;
    Ok(Some(dir.to_owned()))
}

/// Remove a file now (blocking); a file that is already gone is not an error.
pub fn remove_file_now(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Size of a file, or `None` when it does not exist.
pub async fn file_len(path: PathBuf) -> io::Result<Option<u64>> {
    blocking(move || match fs::metadata(&path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
}

/// Remove a file; a file that is already gone is not an error.
pub async fn remove_file(path: PathBuf) -> io::Result<()> {
    blocking(move || remove_file_now(&path)).await
}

/// Remove a directory tree; one that is already gone is not an error.
pub async fn remove_dir_all(path: PathBuf) -> io::Result<()> {
    blocking(move || remove_dir_all_now(&path)).await
}

/// [`remove_dir_all`], blocking.
pub fn remove_dir_all_now(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Replace a small file atomically (write a sibling, rename over).
pub async fn write_atomic(path: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
    blocking(move || write_atomic_now(&path, &bytes)).await
}

/// [`write_atomic`], blocking.
pub fn write_atomic_now(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Read a small file whole; `None` when it does not exist.
pub async fn read_small(path: PathBuf) -> io::Result<Option<Vec<u8>>> {
    blocking(move || match fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
}

/// Names of the entries of a directory (empty when it does not exist).
pub async fn list_dir(path: PathBuf) -> io::Result<Vec<String>> {
    blocking(move || entry_names(&path)).await
}

/// Names (UTF-8 only) in a directory; one that does not exist is empty.
fn entry_names(path: &Path) -> io::Result<Vec<String>> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        if let Ok(name) = entry?.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Lock the storage at `path` (a lock file made if missing) for the caller's lifetime of the
/// returned handle: shared for a serving process (several may share one storage), exclusive for
/// offline maintenance. Fails with `WouldBlock` at once when the other kind holds it.
pub fn lock_storage(path: &Path, exclusive: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let res = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match res {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Create a directory and its parents.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)
}

/// Last modification time of a path, in seconds since the epoch; `None` when it is gone.
pub async fn modified_secs(path: PathBuf) -> io::Result<Option<u64>> {
    blocking(move || match fs::metadata(&path) {
        Ok(m) => Ok(Some(
            m.modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
}

/// A file in the blob store: `<alg>:<hex>` from its path, size and age.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// `<alg>:<hex>`, as the path spells it (not validated here).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Seconds since its last modification.
    pub age_secs: u64,
}

/// Every file under `blobs/<alg>/<xx>/`.
pub async fn list_blob_files(blobs_dir: PathBuf) -> io::Result<Vec<StoredFile>> {
    blocking(move || {
        let mut out = Vec::new();
        let now = std::time::SystemTime::now();
        for alg in entry_names(&blobs_dir)? {
            let alg_dir = blobs_dir.join(&alg);
            for shard in entry_names(&alg_dir)? {
                let shard_dir = alg_dir.join(shard);
                for hex in entry_names(&shard_dir)? {
                    let path = shard_dir.join(&hex);
                    let Ok(m) = fs::metadata(&path) else { continue };
                    if !m.is_file() {
                        continue;
                    }
                    let age_secs = m
                        .modified()
                        .ok()
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    out.push(StoredFile {
                        name: format!("{alg}:{hex}"),
                        size: m.len(),
                        age_secs,
                    });
                }
            }
        }
        Ok(out)
    })
    .await
}
