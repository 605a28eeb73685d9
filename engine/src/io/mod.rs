//! All disk I/O of the engine goes through this module.
//!
//! Two engines serve upload data: io_uring ([`uring`], the default where the kernel allows it),
//! where one thread owns a ring and the upload path hashes a batch while the ring writes it; and
//! std, blocking file calls on tokio's blocking pool (a thread hashes and writes each batch).
//! `BERTH_IO_ENGINE=uring|std` chooses; when io_uring cannot be set up, std serves and that is
//! logged once. Either way the body of an upload is pipelined, so the network side keeps
//! receiving while the previous batch is hashed and written. Metadata-like calls (open, rename,
//! directory sync) use the blocking pool in both; blob reads are memory maps.

pub mod sendfile;
pub mod sha256x2;
mod uring;
pub mod walindex;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::digest::Hasher;

/// Bytes of request body gathered into one write (and the most received ahead of the disk).
pub const WRITE_BATCH: usize = 256 * 1024;
/// Upload data is pushed to the disk as it arrives (`sync_file_range`), and the writer waits
/// for the window before the last one to be on disk: at most about two windows are dirty when
/// the commit's `fsync` comes, so the commit of a large upload does not stall on gigabytes of
/// page cache, and memory stays flat however large the blob.
pub const WRITEBACK_WINDOW: u64 = 32 * 1024 * 1024;
/// Chunks read ahead of the client on a blob download.
const READ_AHEAD: usize = 2;
/// Size of the reads that serve a blob.
const READ_CHUNK: usize = 256 * 1024;
/// Ranges of at least this many bytes are served from a memory map.
const MAP_MIN: u64 = 1024 * 1024;
/// Size of the slices of a memory-mapped blob handed to the network.
const MAP_CHUNK: usize = 2 * 1024 * 1024;

/// The io_uring ring, when that engine serves (decided once, at first use).
fn ring() -> Option<&'static uring::Ring> {
    static RING: std::sync::OnceLock<Option<uring::Ring>> = std::sync::OnceLock::new();
    RING.get_or_init(|| {
        if std::env::var("BERTH_IO_ENGINE").is_ok_and(|v| v == "std") {
            tracing::info!("io engine: std (BERTH_IO_ENGINE=std)");
            return None;
        }
        match uring::Ring::start() {
            Ok(r) => {
                tracing::info!("io engine: io_uring");
                Some(r)
            }
            Err(e) => {
                tracing::warn!(error = %e, "io_uring is not usable here; the std engine (file calls on a thread pool) serves instead");
                None
            }
        }
    })
    .as_ref()
}

/// Which engine serves upload data: `"io_uring"` or `"std"` (starts the ring on first call).
pub fn engine_name() -> &'static str {
    if ring().is_some() { "io_uring" } else { "std" }
}

/// The `BERTH_IO_*` settings and the values each accepts ([`check_settings`]).
const SETTINGS: [(&str, &[&str]); 6] = [
    ("BERTH_IO_ENGINE", &["uring", "std"]),
    ("BERTH_IO_WRITEBACK", &["on", "off"]),
    ("BERTH_IO_MMAP", &["on", "off"]),
    ("BERTH_IO_DIRECT", &["on", "off"]),
    ("BERTH_IO_SENDFILE", &["on", "off"]),
    ("BERTH_IO_HASH_PAIRS", &["on", "off"]),
];

/// Check the `BERTH_IO_*` environment: an error that names the first setting with a value it
/// does not accept, and the values it does (start-up stops on it).
pub fn check_settings() -> Result<(), String> {
    for (var, allowed) in SETTINGS {
        if let Ok(v) = std::env::var(var)
            && !allowed.contains(&v.as_str())
        {
            return Err(format!(
                "{var}={v:?} is not one of {}: unset it or set one of those",
                allowed.join(", ")
            ));
        }
    }
    large_buffers_from_env()?;
    hash_threads_setting(std::env::var(HASH_THREADS_VAR).ok().as_deref()).map(|_| ())
}

/// The setting of the number of hashing threads ([`hash_pool`]).
const HASH_THREADS_VAR: &str = "BERTH_IO_HASH_THREADS";
/// Most hashing threads it may ask for.
const HASH_THREADS_LIMIT: usize = 256;

/// The number of hashing threads a value of [`HASH_THREADS_VAR`] asks for (one a core when
/// unset), or an error naming the setting and what it accepts.
fn hash_threads_setting(value: Option<&str>) -> Result<usize, String> {
    let Some(v) = value else {
        return Ok(std::thread::available_parallelism().map_or(2, |n| n.get()));
    };
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=HASH_THREADS_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "{HASH_THREADS_VAR}={v:?} is not a number of threads from 1 to {HASH_THREADS_LIMIT}: \
             unset it (default: one a core) or set one"
        )),
    }
}

/// The setting of [`large_buffers`].
const LARGE_BUFFERS_VAR: &str = "BERTH_IO_LARGE_BUFFERS";
/// Most large buffers [`LARGE_BUFFERS_VAR`] may ask for: 4 GiB of them.
const LARGE_BUFFERS_LIMIT: usize = 4096;

/// The number of large direct-write buffers a value of [`LARGE_BUFFERS_VAR`] asks for
/// ([`DIRECT_LARGE_MAX`] when unset), or an error naming the setting and what it accepts.
fn large_buffers_setting(value: Option<&str>) -> Result<usize, String> {
    let Some(v) = value else {
        return Ok(DIRECT_LARGE_MAX);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if n <= LARGE_BUFFERS_LIMIT => Ok(n),
        _ => Err(format!(
            "{LARGE_BUFFERS_VAR}={v:?} is not a number of 1 MiB buffers from 0 to {LARGE_BUFFERS_LIMIT}: \
             unset it (default {DIRECT_LARGE_MAX}) or set one"
        )),
    }
}

/// What [`LARGE_BUFFERS_VAR`] in the environment asks for ([`large_buffers_setting`]).
fn large_buffers_from_env() -> Result<usize, String> {
    large_buffers_setting(std::env::var(LARGE_BUFFERS_VAR).ok().as_deref())
}

/// Most large direct-write buffers in existence at once: [`DIRECT_LARGE_MAX`] unless
/// `BERTH_IO_LARGE_BUFFERS` says otherwise (checked at start-up by [`check_settings`]).
fn large_buffers() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| large_buffers_from_env().unwrap_or(DIRECT_LARGE_MAX))
}

/// An on/off setting of the environment, read once: on unless set to `off`. They exist to
/// measure what each mechanism changes (docs/performance.md).
struct Switch {
    var: &'static str,
    on: std::sync::OnceLock<bool>,
}

impl Switch {
    const fn new(var: &'static str) -> Switch {
        Switch {
            var,
            on: std::sync::OnceLock::new(),
        }
    }

    fn on(&self) -> bool {
        *self
            .on
            .get_or_init(|| std::env::var(self.var).map_or(true, |v| v != "off"))
    }
}

/// Early writeback of buffered upload data.
static WRITEBACK: Switch = Switch::new("BERTH_IO_WRITEBACK");
/// Upload data written with `O_DIRECT`.
static DIRECT: Switch = Switch::new("BERTH_IO_DIRECT");
/// Large ranges served from memory maps (else by reads).
static MMAP: Switch = Switch::new("BERTH_IO_MMAP");
/// Memory-mapped blob bytes sent to plaintext sockets with `sendfile` ([`sendfile`]).
static SENDFILE: Switch = Switch::new("BERTH_IO_SENDFILE");
/// Buffers of two uploads hashed side by side ([`sha256x2`]).
static HASH_PAIRS: Switch = Switch::new("BERTH_IO_HASH_PAIRS");

/// Run a blocking closure on the blocking pool.
pub async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

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
    /// checkpoint `checkpoint` at `state` (as [`write_atomic`] does) in the same trip to the
    /// blocking pool. The file is closed again: requests open it ([`UploadFile::open_claimed`]).
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
    /// gathered into batches of up to [`WRITE_BATCH`] bytes, one written while the next is
    /// received. No thread is held while the client is slow. If the body fails, or the disk
    /// does, the file is cut back to `offset` and `hasher` is left as it was, so a failed request
    /// changes nothing.
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
    /// to [`place_blob`], inside the metadata transaction that records the link. Blocking: the
    /// commit runs it on the blocking pool together with the rest of its file work.
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

/// [`UploadFile::append`] with direct writes.
async fn append_direct<S, E>(
    file: &Arc<File>,
    fd: &Arc<File>,
    offset: u64,
    hasher: &mut Hasher,
    length: Option<u64>,
    body: S,
) -> Result<u64, AppendError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let end = length.and_then(|n| offset.checked_add(n));
    let mut d = Direct::start(file, fd, offset, end, hasher.clone())
        .await
        .map_err(AppendError::Io)?;
    let mut body = std::pin::pin!(body);
    let mut pos = offset;
    let res = 'body: loop {
        let frame = match body.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => break Err(AppendError::Body(e.to_string())),
            None => break Ok(()),
        };
        // The frame is copied here, then dropped: the connection reuses its read buffer instead
        // of the upload holding on to it. Its bytes are hashed from the aligned buffer.
        pos += frame.len() as u64;
        let mut taken = 0;
        while taken < frame.len() {
            taken += d.fill_from(&frame[taken..]);
            if d.fill == d.buf.len()
                && let Err(e) = d.write_full().await
            {
                break 'body Err(AppendError::Io(e));
            }
        }
    };
    // The writes in flight end before anything else happens to the file (a failed append cuts
    // the file back next).
    let finished = d.finish(file, res.is_ok()).await;
    res?;
    *hasher = finished.map_err(AppendError::Io)?;
    Ok(pos - offset)
}

/// [`UploadFile::append`] through the page cache.
async fn append_buffered<S, E>(file: &Arc<File>, offset: u64, hasher: &mut Hasher, body: S) -> Result<u64, AppendError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    type Write = tokio::task::JoinHandle<(Hasher, io::Result<()>)>;
    // The hasher travels with the write that uses it; `idle` holds it between writes.
    let mut idle = Some(hasher.clone());
    let mut in_flight: Option<Write> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let mut pos = offset;
    let mut body = std::pin::pin!(body);

    // Wait for the write in flight, if any; on success its hasher is idle again.
    async fn settle(in_flight: &mut Option<Write>, idle: &mut Option<Hasher>) -> io::Result<()> {
        if let Some(w) = in_flight.take() {
            let (hasher, res) = w.await.map_err(io::Error::other)?;
            *idle = Some(hasher);
            res?;
        }
        Ok(())
    }

    let res = loop {
        let done = match body.next().await {
            Some(Ok(f)) => {
                if !f.is_empty() {
                    batch_len += f.len();
                    batch.push(f);
                }
                false
            }
            Some(Err(e)) => break Err(AppendError::Body(e.to_string())),
            None => true,
        };
        // Start a write when the batch is full, when nothing is being written (so the disk is
        // never idle while data waits), or at the end.
        if batch_len > 0 && (batch_len >= WRITE_BATCH || in_flight.is_none() || done) {
            if let Err(e) = settle(&mut in_flight, &mut idle).await {
                break Err(AppendError::Io(e));
            }
            let Some(h) = idle.take() else {
                break Err(AppendError::Io(io::Error::other("an upload write task was lost")));
            };
            in_flight = Some(write_batch(file.clone(), h, std::mem::take(&mut batch), pos));
            pos += batch_len as u64;
            batch_len = 0;
        }
        if done {
            break Ok(());
        }
    };
    let settled = settle(&mut in_flight, &mut idle).await;
    res?;
    settled.map_err(AppendError::Io)?;
    *hasher = idle.ok_or_else(|| AppendError::Io(io::Error::other("an upload write task was lost")))?;
    Ok(pos - offset)
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

/// Move upload data at `src` into the blob store at `dest` (in a directory made, and made
/// durable, if missing), or drop it when `dest` is already there. `synced` says whether
/// [`UploadFile::sync_for_commit`] synced the data; if not and `dest` has gone since, it is synced
/// here. Returns the directory that received the rename: the caller syncs it (once for all the
/// blobs of a group commit) before the transaction that links the blob commits. Blocking: runs
/// inside that metadata transaction, so that no garbage collection of any process removes
/// `dest` between this and the link.
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

/// Alignment of direct writes (offsets, lengths and buffer addresses): covers 512-byte and
/// 4 KiB logical blocks.
const DIRECT_ALIGN: usize = 4096;
/// Bytes gathered in an aligned buffer before one direct write, while large buffers are all
/// taken.
const DIRECT_BUF: usize = 128 * 1024;
/// The buffer an upload takes first: on this project's machines a direct write of 128 KiB at a
/// time reaches about half of what the disk takes in 1 MiB writes, and costs eight times the
/// operations. Until 2026-11-24 an upload took these only past its first 4 MiB (to keep them
/// for large uploads); taking them from the first byte measured the same for 64 concurrent
/// 16 MiB pushes and cut the server CPU of 1 MiB pushes by about 10 % (one write instead of
/// eight), and a buffer goes back to the pool as soon as its write completes.
const DIRECT_LARGE: usize = 1024 * 1024;
/// Most large buffers in existence at once (in use or idle) by default, so memory stays bounded
/// however many uploads run: the rest go on with small buffers. Each upload holds one filling
/// and up to [`DIRECT_LARGE_IN_FLIGHT`] being written. With 64 concurrent 16 MiB pushes beside a
/// 4 GiB one, 8, 16 and 32 peaked at 78, 82 and 105 MiB. More, for those with memory to spare,
/// with `BERTH_IO_LARGE_BUFFERS` ([`large_buffers`]): 64 made 64 concurrent 16 MiB pushes 4–15 %
/// faster at about 130 MiB (docs/performance.md).
const DIRECT_LARGE_MAX: usize = 16;

/// A heap buffer at a [`DIRECT_ALIGN`]-aligned address, as direct I/O wants, of either size.
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

/// Idle small aligned buffers, kept for the next upload: allocating one per request churned the
/// allocator (and, allocated on blocking threads, left memory with them).
static DIRECT_POOL: parking_lot::Mutex<Vec<AlignedBuf>> = parking_lot::Mutex::new(Vec::new());
/// Most idle small buffers kept.
const DIRECT_POOL_MAX: usize = 64;
/// Idle large buffers (all of them are kept: there are at most [`large_buffers`]).
static DIRECT_LARGE_POOL: parking_lot::Mutex<Vec<AlignedBuf>> = parking_lot::Mutex::new(Vec::new());
/// Large buffers in existence.
static DIRECT_LARGE_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let off = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, off, len }
    }

    /// A buffer for an upload's next bytes: a large one when one is free (or may still be
    /// made), else a small one; from the pools when they have one.
    fn take() -> AlignedBuf {
        AlignedBuf::take_large()
            .or_else(|| DIRECT_POOL.lock().pop())
            .unwrap_or_else(|| AlignedBuf::new(DIRECT_BUF))
    }

    /// An idle large buffer, or a new one while fewer than [`large_buffers`] exist.
    fn take_large() -> Option<AlignedBuf> {
        use std::sync::atomic::Ordering;
        if let Some(b) = DIRECT_LARGE_POOL.lock().pop() {
            return Some(b);
        }
        let max = large_buffers();
        DIRECT_LARGE_COUNT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| AlignedBuf::new(DIRECT_LARGE))
    }

    /// Back to its pool (a small one is dropped when its pool is full).
    fn give(self) {
        if self.len == DIRECT_LARGE {
            DIRECT_LARGE_POOL.lock().push(self);
            return;
        }
        let mut pool = DIRECT_POOL.lock();
        if pool.len() < DIRECT_POOL_MAX {
            pool.push(self);
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len == DIRECT_LARGE {
            DIRECT_LARGE_COUNT.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// The first `len` bytes of a shared aligned buffer, as `Bytes` for the ring.
struct AlignedView(Arc<AlignedBuf>, usize);

impl AsRef<[u8]> for AlignedView {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes()[..self.1]
    }
}

/// The direct-write state of an append: frames are copied into an aligned buffer, which is
/// written whole at block-aligned offsets with `O_DIRECT`; the unaligned tail of a request goes
/// through the page cache at the end ([`Direct::finish`]), and the next request starts by reading
/// back the partial block.
///
/// Direct writes skip the page cache's copy, allocation and writeback, which on this project's
/// machines cost more CPU than hashing (docs/performance.md); they also leave nothing dirty for
/// the commit's sync.
struct Direct {
    fd: Arc<File>,
    buf: Arc<AlignedBuf>,
    /// File offset of `buf[0]` (block-aligned).
    at: u64,
    /// Bytes of `buf` filled.
    fill: usize,
    /// Writes of earlier full buffers, oldest first, still in flight while this one fills, and
    /// their buffers: one for small buffers (double buffering), up to
    /// [`DIRECT_LARGE_IN_FLIGHT`] for large ones.
    pending: std::collections::VecDeque<(Arc<AlignedBuf>, PendingWrite, Hashed)>,
    /// Where the bytes of `buf` that this append received begin (after the partial block read
    /// back at the start).
    new_from: usize,
    /// The upload's hash state, and the full buffers waiting to be hashed.
    hashing: Arc<parking_lot::Mutex<Hashing>>,
    /// Space allocated ahead of the writes.
    ahead: Ahead,
}

fn hash_lost() -> io::Error {
    io::Error::other("the upload's hash state was lost (a hashing task failed)")
}

/// The hash state of an append's direct writes.
///
/// Full buffers are hashed by the engine's hashing threads ([`hash_pool`]) while the task fills
/// the next ones: they queue here, and the upload waits in the pool's queue while it has
/// buffers and no thread holds it. A thread takes the upload's hasher and its buffers in order,
/// going straight on to the next one queued without waiting for the task; when the queue is
/// empty it puts the hasher back. Nothing holds a thread while the upload waits for its client.
///
/// Before, each upload's buffers were hashed by a job of its own on the blocking pool (and
/// small buffers by the task itself); a thread of the pool now hashes two uploads at once
/// ([`Hasher::update_pair`]), which on these machines' SHA extensions nearly doubles what one
/// core hashes when uploads run side by side.
struct Hashing {
    /// The hasher, while no hashing thread holds it.
    hasher: Option<Hasher>,
    /// Buffers waiting to be hashed, oldest first.
    queue: std::collections::VecDeque<HashJob>,
    /// Whether the upload is in the pool's queue or held by a hashing thread.
    running: bool,
}

/// A full buffer to hash: its bytes `from..len`; `done` fires once they are (and the thread has
/// let go of the buffer).
struct HashJob {
    buf: Arc<AlignedBuf>,
    from: usize,
    len: usize,
    done: tokio::sync::oneshot::Sender<()>,
}

/// An upload's hash state, as the pool's queue carries it.
type HashingRef = Arc<parking_lot::Mutex<Hashing>>;

/// The hashing threads' queue of uploads with buffers to hash (started at first use): one
/// thread a core (`BERTH_IO_HASH_THREADS`).
fn hash_pool() -> &'static crossbeam_channel::Sender<HashingRef> {
    static POOL: std::sync::OnceLock<crossbeam_channel::Sender<HashingRef>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<HashingRef>();
        let threads = hash_threads_setting(std::env::var(HASH_THREADS_VAR).ok().as_deref())
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(2, |n| n.get()));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("berth-hash-{i}"))
                .spawn(move || hash_thread(&rx))
                .expect("a hashing thread starts");
        }
        tx
    })
}

/// An upload a hashing thread holds: its hasher, the buffer being hashed and how far.
struct Held {
    hashing: HashingRef,
    hasher: Hasher,
    job: HashJob,
    at: usize,
}

impl Held {
    /// Take `hashing`'s hasher and first buffer (none when it has no buffer queued).
    fn take(hashing: HashingRef) -> Option<Held> {
        let mut h = hashing.lock();
        let (Some(job), Some(hasher)) = (h.queue.pop_front(), h.hasher.take()) else {
            // Not reached: an upload is queued with its hasher and a buffer.
            h.running = false;
            return None;
        };
        drop(h);
        let at = job.from;
        Some(Held {
            hashing,
            hasher,
            job,
            at,
        })
    }

    fn rest(&self) -> &[u8] {
        &self.job.buf.bytes()[self.at..self.job.len]
    }

    /// Once its buffer is hashed: on with the next one queued (`Some`), or the hasher back and
    /// the upload let go (`None`); still held while its buffer has bytes left. The buffer's `done` fires after the state says where the
    /// hasher is, so that a task that has seen every `done` finds it back.
    fn next(self) -> Option<Held> {
        if self.at < self.job.len {
            return Some(self);
        }
        let Held {
            hashing, hasher, job, ..
        } = self;
        let HashJob { buf, done, .. } = job;
        drop(buf);
        let mut h = hashing.lock();
        match h.queue.pop_front() {
            Some(next) => {
                drop(h);
                let _ = done.send(());
                let at = next.from;
                Some(Held {
                    hashing,
                    hasher,
                    job: next,
                    at,
                })
            }
            None => {
                h.hasher = Some(hasher);
                h.running = false;
                drop(h);
                let _ = done.send(());
                None
            }
        }
    }
}

/// A hashing thread: hold up to two uploads, and hash their buffers two at a time (one alone
/// when no other is waiting), taking another waiting upload whenever one is let go.
fn hash_thread(rx: &crossbeam_channel::Receiver<HashingRef>) {
    let mut held: Vec<Held> = Vec::with_capacity(2);
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(u) => held.extend(Held::take(u)),
                Err(_) => return,
            }
        }
        if held.len() < 2
            && let Ok(u) = rx.try_recv()
        {
            held.extend(Held::take(u));
        }
        hash_held(&mut held);
        held = held.into_iter().filter_map(Held::next).collect();
    }
}

/// Hash what the held uploads' buffers have left: two side by side for the length they share,
/// or the one to its end.
fn hash_held(held: &mut [Held]) {
    match held {
        [a, b] => {
            let n = a.rest().len().min(b.rest().len());
            Hasher::update_pair(
                &mut a.hasher,
                &a.job.buf.bytes()[a.at..a.at + n],
                &mut b.hasher,
                &b.job.buf.bytes()[b.at..b.at + n],
            );
            a.at += n;
            b.at += n;
        }
        [a] => {
            a.hasher.update(&a.job.buf.bytes()[a.at..a.job.len]);
            a.at = a.job.len;
        }
        _ => {}
    }
}

/// Writes of large buffers one upload keeps in flight. With one, a 1 GiB push left the two cores
/// 40 % idle: filling 1 MiB and writing it took about as long, so each wait for the disk stalled
/// the body, and with it the connection. Large buffers are capped in number
/// ([`large_buffers`]), so this adds no memory beyond that cap.
const DIRECT_LARGE_IN_FLIGHT: usize = 3;

type PendingWrite = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>;
/// Fires once a queued buffer is hashed ([`HashJob::done`]).
type Hashed = tokio::sync::oneshot::Receiver<()>;

impl Direct {
    /// Direct writes from `offset` (to `end` when the length is known): the partial block before
    /// it is read back into the buffer.
    async fn start(
        file: &Arc<File>,
        fd: &Arc<File>,
        offset: u64,
        end: Option<u64>,
        hasher: Hasher,
    ) -> io::Result<Direct> {
        // Taken here, on the runtime's threads, where it is also given back.
        let mut buf = AlignedBuf::take();
        let at = offset - offset % DIRECT_ALIGN as u64;
        let head = (offset - at) as usize;
        // At a block boundary (every monolithic upload, and chunks of whole blocks) there is
        // nothing to read back, and no trip to the blocking pool.
        let res = if head == 0 {
            Ok((buf, Ok(())))
        } else {
            let reader = file.clone();
            tokio::task::spawn_blocking(move || {
                let r = reader.read_exact_at(&mut buf.bytes_mut()[..head], at);
                (buf, r)
            })
            .await
        };
        match res {
            Ok((buf, Ok(()))) => Ok(Direct {
                fd: fd.clone(),
                buf: Arc::new(buf),
                at,
                fill: head,
                pending: std::collections::VecDeque::new(),
                new_from: head,
                hashing: Arc::new(parking_lot::Mutex::new(Hashing {
                    hasher: Some(hasher),
                    queue: std::collections::VecDeque::new(),
                    running: false,
                })),
                ahead: Ahead::new(at, end),
            }),
            Ok((buf, Err(e))) => {
                buf.give();
                Err(e)
            }
            Err(e) => panic!("read thread panicked: {e}"),
        }
    }

    /// Copy `frame` into the buffer up to its end; returns the bytes taken.
    fn fill_from(&mut self, frame: &[u8]) -> usize {
        let buf = Arc::get_mut(&mut self.buf).expect("the direct buffer is not shared between writes");
        let n = frame.len().min(buf.len() - self.fill);
        copy_streaming(&mut buf.bytes_mut()[self.fill..self.fill + n], &frame[..n]);
        self.fill += n;
        n
    }

    /// Send the full buffer to the disk (once fewer writes than allowed are in flight) and go on
    /// with another (large when one is free).
    async fn write_full(&mut self) -> io::Result<()> {
        let allowed = if self.buf.len() == DIRECT_LARGE {
            DIRECT_LARGE_IN_FLIGHT
        } else {
            1
        };
        while self.pending.len() >= allowed {
            self.settle_oldest().await?;
        }
        let len = self.buf.len();
        let next = Arc::new(AlignedBuf::take());
        let full = std::mem::replace(&mut self.buf, next);
        // Hash what this append put in the buffer on a hashing thread, so that hashing (the
        // most CPU of a push) runs beside receiving and copying the next buffer instead of
        // between them.
        let from = std::mem::take(&mut self.new_from);
        let hashed = self.hash(&full, from, len)?;
        self.ahead.keep_ahead(&self.fd, self.at, len).await?;
        let write: PendingWrite = match ring() {
            Some(ring) => {
                let view = Bytes::from_owner(AlignedView(full.clone(), len));
                Box::pin(ring.write(self.fd.clone(), vec![view], self.at))
            }
            None => {
                let (fd, buf, at) = (self.fd.clone(), full.clone(), self.at);
                let writing = tokio::task::spawn_blocking(move || fd.write_all_at(buf.bytes(), at));
                Box::pin(async move { writing.await.map_err(io::Error::other)? })
            }
        };
        self.pending.push_back((full, write, hashed));
        self.at += len as u64;
        self.fill = 0;
        Ok(())
    }

    /// Queue bytes `from..len` of the full buffer `buf` for the hashing threads (and the
    /// upload for them, when it is not queued or held already). Returns what says they are
    /// hashed.
    fn hash(&mut self, buf: &Arc<AlignedBuf>, from: usize, len: usize) -> io::Result<Hashed> {
        let mut h = self.hashing.lock();
        let (done, hashed) = tokio::sync::oneshot::channel();
        h.queue.push_back(HashJob {
            buf: buf.clone(),
            from,
            len,
            done,
        });
        if !h.running {
            if h.hasher.is_none() {
                return Err(hash_lost());
            }
            h.running = true;
            drop(h);
            hash_pool().send(self.hashing.clone()).map_err(|_| hash_lost())?;
        }
        Ok(hashed)
    }

    /// The hasher back, once every queued buffer is hashed (after [`Direct::settle`]).
    fn take_hasher(&self) -> io::Result<Hasher> {
        let mut h = self.hashing.lock();
        if h.running || !h.queue.is_empty() {
            return Err(hash_lost());
        }
        h.hasher.take().ok_or_else(hash_lost)
    }

    /// Wait for the oldest write in flight, if any, and for its buffer's hash; the buffer then
    /// goes back to the pool.
    async fn settle_oldest(&mut self) -> io::Result<()> {
        if let Some((buf, write, hashed)) = self.pending.pop_front() {
            let mut res = write.await;
            res = res.and(hashed.await.map_err(|_| hash_lost()));
            if let Ok(buf) = Arc::try_unwrap(buf) {
                buf.give();
            }
            res?;
        }
        Ok(())
    }

    /// Wait for every write in flight (all of them, even after one failed); the first error.
    async fn settle(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        while !self.pending.is_empty() {
            let res = self.settle_oldest().await;
            if first.is_ok() {
                first = res;
            }
        }
        first
    }

    /// End the append: wait for the writes in flight and the hashing, then (when `write`) hash
    /// and write what the buffer still holds: its whole blocks directly, the rest through the
    /// page cache (`file`). Returns the hasher.
    async fn finish(mut self, file: &Arc<File>, write: bool) -> io::Result<Hasher> {
        let settled = self.settle().await;
        let hasher = self.take_hasher();
        // No allocation may extend the file after it is cut to its data, here or by the caller.
        let allocated = self.ahead.wait().await;
        let Direct {
            fd,
            buf,
            at,
            fill,
            new_from,
            ahead,
            ..
        } = self;
        let give = |buf: Arc<AlignedBuf>| {
            if let Ok(buf) = Arc::try_unwrap(buf) {
                buf.give();
            }
        };
        let mut hasher = match settled.and(allocated).and(hasher) {
            Ok(h) if write => h,
            other => {
                give(buf);
                return other;
            }
        };
        hasher.update(&buf.bytes()[new_from..fill]);
        let file = file.clone();
        let res = tokio::task::spawn_blocking(move || {
            let whole = fill - fill % DIRECT_ALIGN;
            let bytes = buf.bytes();
            let mut r = fd.write_all_at(&bytes[..whole], at);
            if r.is_ok() {
                r = file.write_all_at(&bytes[whole..fill], at + whole as u64);
            }
            if r.is_ok() && ahead.asked && (ahead.refused || ahead.end != at + fill as u64) {
                // The space allocated ahead goes; the file ends where the data does.
                r = file.set_len(at + fill as u64);
            }
            (buf, r)
        })
        .await;
        match res {
            Ok((buf, r)) => {
                give(buf);
                r.map(|()| hasher)
            }
            Err(e) => panic!("write thread panicked: {e}"),
        }
    }
}

/// Space allocated ahead of an append's direct writes ([`preallocate`]).
struct Ahead {
    /// End of the space allocated so far.
    end: u64,
    /// Where the data will end, when the request declared its length: nothing is allocated
    /// past it (unless the data goes past it).
    data_end: Option<u64>,
    /// The next allocation, running on the blocking pool while the writes go on: its end and
    /// whether it worked.
    running: Option<(u64, tokio::task::JoinHandle<bool>)>,
    /// Set once the filesystem refused to preallocate: not asked again.
    refused: bool,
    /// Whether any allocation was asked for (a failed one may still have extended the file), so
    /// that the file is cut back to its data when the append ends.
    asked: bool,
}

impl Ahead {
    /// Nothing allocated yet; writes start at `at`, and the data ends at `data_end` when known.
    fn new(at: u64, data_end: Option<u64>) -> Ahead {
        Ahead {
            end: at,
            data_end,
            running: None,
            refused: false,
            asked: false,
        }
    }

    /// Keep space allocated ahead of a write of `len` bytes at `at` into `fd`: the next
    /// [`PREALLOCATE_BUFFERS`] buffers' worth (or what is left up to the declared end) starts
    /// allocating on the blocking pool once the writes are half-way through the last, and is
    /// waited for only when a write reaches it (by then it is long done, except for the first).
    async fn keep_ahead(&mut self, fd: &Arc<File>, at: u64, len: usize) -> io::Result<()> {
        if self.refused {
            return Ok(());
        }
        let step = (len * PREALLOCATE_BUFFERS) as u64;
        let limit = match self.data_end {
            Some(end) if at + len as u64 <= end => end,
            _ => u64::MAX,
        };
        if self.running.is_none() && at + step / 2 >= self.end && self.end.max(at) < limit {
            let from = self.end.max(at);
            let size = step.min(limit - from);
            let fd = fd.clone();
            let job = tokio::task::spawn_blocking(move || preallocate(&fd, from, size));
            self.running = Some((from + size, job));
            self.asked = true;
        }
        if at + len as u64 > self.end {
            self.wait().await?;
        }
        Ok(())
    }

    /// Wait for the allocation running, if any.
    async fn wait(&mut self) -> io::Result<()> {
        if let Some((end, job)) = self.running.take() {
            if job.await.map_err(io::Error::other)? {
                self.end = end;
            } else {
                self.refused = true;
            }
        }
        Ok(())
    }
}

/// Space allocated ahead of an append's direct writes at a time, in buffers of the size being
/// written (16 MiB with large buffers, 2 MiB with small ones), never past the end of a body
/// whose length the request declared; what is left over when the request ends is cut off.
/// Three same-build A/Bs of 64 concurrent 16 MiB pushes:
/// server CPU 1.87 → 1.73, 1.82 → 1.60 and 1.68 → 1.63 CPU-s/GB, context switches halved
/// (throughput unchanged within this machine's noise); on a 1 GiB push the io_uring worker
/// threads' share of server CPU fell from 10 % to nothing. Growing the step with the request
/// instead (less left over, more calls) saved less.
const PREALLOCATE_BUFFERS: usize = 16;

/// Allocate `len` bytes at `offset` (unwritten extents, zeros to readers) and extend the file
/// over them, so that the direct writes that follow land inside the file on allocated blocks:
/// ext4 then takes them without blocking, from the ring's own thread, where a write past the
/// end needs block allocation and is handed to an io_uring worker thread (a sleep and a wake
/// per write). Says whether it worked (not every filesystem preallocates).
fn preallocate(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: fallocate on a file descriptor this `File` owns (open for the call's duration);
    // no memory is passed.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    r == 0
}

/// Copy `src` into `dst` (same length) with non-temporal stores on x86_64: the destination is
/// an aligned buffer on its way to the disk, cold in the cache, and ordinary stores first read
/// each of its lines from memory. On this project's machines the plain copy ran at about 4 GB/s,
/// a sixth of a push's server CPU; streamed, a 1 GiB push took 10 % less CPU per GB
/// (docs/performance.md).
fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let blocks = (dst.len() - head) / 16;
        let end = head + blocks * 16;
        let (d, s) = (dst[head..end].as_mut_ptr(), src[head..end].as_ptr());
        for i in 0..blocks {
            // SAFETY: both ranges hold `blocks` 16-byte blocks (equal-length subslices
            // `head..end`), so every access is in bounds; `d` is 16-byte aligned (align_offset
            // above), as the streaming store needs; the load is an unaligned load; SSE2 is part
            // of x86_64.
            #[allow(unsafe_code)]
            unsafe {
                let v = _mm_loadu_si128(s.add(i * 16).cast::<__m128i>());
                _mm_stream_si128(d.add(i * 16).cast::<__m128i>(), v);
            }
        }
        // SAFETY: a store fence (SSE, part of x86_64): the streamed stores are ordered before
        // what follows, such as handing the buffer to the hashing thread or the kernel.
        #[allow(unsafe_code)]
        unsafe {
            _mm_sfence();
        }
        dst[end..].copy_from_slice(&src[end..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Hash and write one batch of frames at `at` through the page cache: with io_uring the ring
/// writes while this task hashes; with std one blocking thread does both in turn; writeback
/// starts as the bytes land.
fn write_batch(
    file: Arc<File>,
    mut hasher: Hasher,
    frames: Vec<Bytes>,
    at: u64,
) -> tokio::task::JoinHandle<(Hasher, io::Result<()>)> {
    let end = at + frames.iter().map(|f| f.len() as u64).sum::<u64>();
    if let Some(ring) = ring() {
        return tokio::spawn(async move {
            let writing = ring.write(file.clone(), frames.clone(), at);
            for f in &frames {
                hasher.update(f);
            }
            let res = writing.await;
            if res.is_ok() && WRITEBACK.on() {
                ring.start_writeback(file.clone(), at, end);
                if let Some((from, len)) = writeback_wait(at, end) {
                    // Advisory, like the std engine's: durability comes from the commit's sync.
                    let _ = ring.wait_writeback(file, from, len).await;
                }
            }
            (hasher, res)
        });
    }
    tokio::task::spawn_blocking(move || {
        let mut res = Ok(());
        let mut pos = at;
        for f in &frames {
            hasher.update(f);
            if let Err(e) = file.write_all_at(f, pos) {
                res = Err(e);
                break;
            }
            pos += f.len() as u64;
        }
        if res.is_ok() {
            early_writeback(&file, at, end);
        }
        (hasher, res)
    })
}

/// Why an append failed.
#[derive(Debug)]
pub enum AppendError {
    /// The client's body failed.
    Body(String),
    /// The disk failed.
    Io(io::Error),
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

/// Stream `len` bytes of the file at `path` from `start`. Large ranges are served from a
/// memory map ([`map_range`]); small ones with positioned reads ([`read_range`]).
pub async fn blob_range(path: PathBuf, start: u64, len: u64) -> io::Result<mpsc::Receiver<io::Result<Bytes>>> {
    if MMAP.on() && len >= MAP_MIN {
        map_range(path, start, len).await
    } else {
        read_range(path, start, len).await
    }
}

/// Stream `len` bytes of the file at `path` from `start`. Each chunk is one positioned read on
/// the blocking pool, a little ahead of the consumer; no thread is held while the client is slow,
/// and memory use is bounded by the read-ahead, whatever the blob size.
pub async fn read_range(path: PathBuf, start: u64, len: u64) -> io::Result<mpsc::Receiver<io::Result<Bytes>>> {
    let file = Arc::new(blocking(move || File::open(&path)).await?);
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let mut pos = start;
        let end = start + len;
        while pos < end {
            let want = READ_CHUNK.min((end - pos) as usize);
            let f = file.clone();
            let at = pos;
            // Allocated here, on the runtime's threads, where it is also freed once sent: the
            // blocking threads come and go, and memory they allocate lingers with them.
            let mut buf = BytesMut::zeroed(want);
            let res = tokio::task::spawn_blocking(move || {
                let n = f.read_at(&mut buf, at)?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                buf.truncate(n);
                Ok(buf.freeze())
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            if let Ok(b) = &res {
                pos += b.len() as u64;
            }
            let failed = res.is_err();
            if tx.send(res).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(rx)
}

/// Stream `len` bytes of the file at `path` from `start` as read-only memory maps of
/// [`MAP_CHUNK`] bytes each: the bytes go from the page cache to the socket without a copy
/// through a buffer of ours (and without allocating or zeroing one). Each chunk is mapped, and
/// its pages faulted in (`MADV_POPULATE_READ`), on the blocking pool, a little ahead of the
/// consumer, so the thread that writes to the socket never waits on the disk and a read error
/// shows up as an error on the stream; a chunk is unmapped when the network is done with it, so
/// what is mapped at once stays bounded whatever the blob size.
pub async fn map_range(path: PathBuf, start: u64, len: u64) -> io::Result<mpsc::Receiver<io::Result<Bytes>>> {
    let file = Arc::new(
        blocking(move || {
            let file = File::open(&path)?;
            if file.metadata()?.len() < start + len {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            Ok(file)
        })
        .await?,
    );
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let n = (MAP_CHUNK as u64).min(end - pos);
            let (f, at) = (file.clone(), pos);
            let res = tokio::task::spawn_blocking(move || {
                let map = map_file(&f, at, n)?;
                match map.advise(memmap2::Advice::PopulateRead) {
                    // Older kernels lack MADV_POPULATE_READ: the pages fault in as they are sent.
                    Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
                    _ => {}
                }
                Ok(Bytes::from_owner(sendfile::MappedChunk::new(map, &f, at)))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            pos += n;
            let failed = res.is_err();
            if tx.send(res).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(rx)
}

#[allow(unsafe_code)]
fn map_file(file: &File, start: u64, len: u64) -> io::Result<memmap2::Mmap> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the map is read-only and private to this process, and it covers only bytes the
    // file was checked to have. What would make reading it undefined is the file shrinking or
    // changing underneath; blob files never do: a blob is written under uploads/, synced and
    // renamed into blobs/ whole, is never opened for writing there, and goes only by unlink (a
    // mapping keeps an unlinked file's pages). A rename over it (the same content, by digest)
    // replaces the directory entry, not this inode.
    unsafe { memmap2::MmapOptions::new().offset(start).len(len).map(file) }
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

/// After bytes `start..end` of an upload were written: start their writeback, and when a
/// [`WRITEBACK_WINDOW`] boundary was crossed, wait for the window before the previous one.
/// Advisory: errors are ignored, durability comes from the `fsync` at commit.
fn early_writeback(file: &File, start: u64, end: u64) {
    if !WRITEBACK.on() {
        return;
    }
    sync_file_range(file, start, end - start, false);
    if let Some((from, len)) = writeback_wait(start, end) {
        sync_file_range(file, from, len, true);
    }
}

/// The window to wait for after bytes `start..end` were written: the one before the previous
/// window, when a [`WRITEBACK_WINDOW`] boundary was crossed.
fn writeback_wait(start: u64, end: u64) -> Option<(u64, u64)> {
    let w = WRITEBACK_WINDOW;
    (start / w != end / w && end / w >= 2).then(|| ((end / w - 2) * w, w))
}

#[allow(unsafe_code)]
fn sync_file_range(file: &File, offset: u64, len: u64, wait: bool) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: the descriptor belongs to `file`, which is borrowed for the whole call and so stays
    // open; sync_file_range touches no memory of this process (it schedules, or waits for, the
    // writeback of the file's pages in the given range), and offset and length are checked to
    // fit its off64_t arguments.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
}

/// Turn transparent huge pages off for this process (`PR_SET_THP_DISABLE`); call before the
/// first large allocation. The allocator asks for huge pages on its segments, and a segment
/// with a few live buffers then holds whole 2 MiB pages: 64 concurrent 16 MiB pushes peaked at
/// 94 MiB with them and 62 MiB without, at the same rate (docs/performance.md).
#[allow(unsafe_code)]
pub fn disable_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of this
    // process; it only sets a flag on the process's address space that later faults read.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// How long, in milliseconds, the allocator keeps memory freed by the process before it returns
/// it to the system, unless `MIMALLOC_PURGE_DELAY` in the environment says otherwise.
/// mimalloc 3 waits a second by default, so the buffers of uploads that just ended still count
/// while the next ones fill theirs: 64 concurrent 16 MiB pushes peaked at 87–89 MiB with the
/// default and 78–80 MiB with 10 ms, at the same rate and the same small-request rate
/// (docs/performance.md).
pub const ALLOCATOR_PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Set the allocator's purge delay to [`ALLOCATOR_PURGE_DELAY_MS`] (a default: a
/// `MIMALLOC_PURGE_DELAY` in the environment, read by the allocator when the process starts,
/// wins). Call early; the delay applies to memory freed from then on.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // Read first, so that a value from the environment is in place before the default is set.
    let _ = allocator_purge_delay_ms();
    // SAFETY: mi_option_set_default only stores an integer in the allocator's option table (an
    // option index in range and a plain value); it touches no memory the program owns.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) }
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in mimalloc 2 and 3; the Rust
/// bindings do not name it). A test checks it against `MIMALLOC_PURGE_DELAY`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The allocator's purge delay in force, in milliseconds.
#[allow(unsafe_code)]
pub fn allocator_purge_delay_ms() -> std::os::raw::c_long {
    // SAFETY: mi_option_get reads an integer from the allocator's option table; the index is in
    // range.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocator's purge delay becomes ours, unless the environment set one; and the option
    /// read and set is the one `MIMALLOC_PURGE_DELAY` sets (checked in a child process, since the
    /// allocator reads its environment once).
    #[test]
    fn the_allocator_returns_freed_memory_within_the_set_delay() {
        tune_allocator();
        if let Ok(v) = std::env::var("MIMALLOC_PURGE_DELAY") {
            assert_eq!(allocator_purge_delay_ms().to_string(), v.trim());
        } else {
            assert_eq!(allocator_purge_delay_ms(), ALLOCATOR_PURGE_DELAY_MS);
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "io::tests::the_allocator_returns_freed_memory_within_the_set_delay",
                ])
                .env("MIMALLOC_PURGE_DELAY", "250")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(text.contains("1 passed"), "{text}");
        }
    }

    /// Every destination alignment and length around the 16-byte blocks: the copy equals the
    /// source and writes nothing outside the destination.
    #[test]
    fn streaming_copy_copies_exactly() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for dst_off in 0..20 {
            for src_off in [0, 1, 5, 16] {
                for len in (0..70).chain([127, 128, 129, 255]) {
                    let mut dst = vec![0xEEu8; 320];
                    copy_streaming(&mut dst[dst_off..dst_off + len], &src[src_off..src_off + len]);
                    assert_eq!(&dst[dst_off..dst_off + len], &src[src_off..src_off + len]);
                    assert!(
                        dst[..dst_off].iter().all(|&b| b == 0xEE),
                        "wrote before the destination"
                    );
                    assert!(
                        dst[dst_off + len..].iter().all(|&b| b == 0xEE),
                        "wrote past the destination"
                    );
                }
            }
        }
    }

    #[test]
    fn large_buffers_setting_is_checked() {
        assert_eq!(large_buffers_setting(None), Ok(DIRECT_LARGE_MAX));
        assert_eq!(large_buffers_setting(Some("256")), Ok(256));
        assert_eq!(large_buffers_setting(Some("0")), Ok(0));
        assert_eq!(large_buffers_setting(Some("4096")), Ok(4096));
        for bad in ["4097", "-1", "16MiB", ""] {
            let e = large_buffers_setting(Some(bad)).unwrap_err();
            assert!(
                e.starts_with(&format!("BERTH_IO_LARGE_BUFFERS={bad:?} is not a number")) && e.contains("default 16"),
                "{e}"
            );
        }
    }

    #[test]
    fn hash_threads_setting_is_checked() {
        assert!(hash_threads_setting(None).is_ok_and(|n| n >= 1));
        assert_eq!(hash_threads_setting(Some("1")), Ok(1));
        assert_eq!(hash_threads_setting(Some(" 8 ")), Ok(8));
        for bad in ["0", "257", "-1", "two", ""] {
            let e = hash_threads_setting(Some(bad)).unwrap_err();
            assert!(
                e.starts_with(&format!("BERTH_IO_HASH_THREADS={bad:?} is not a number")),
                "{e}"
            );
        }
    }

    /// Space is allocated ahead a step at a time, but with a declared length never past where
    /// the data will end, so nothing is left over to cut off; a body that goes past its declared
    /// length still gets space ahead.
    #[test]
    fn allocation_ahead_stops_at_the_declared_end() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dir.path().join(name))
                .unwrap();
            Arc::new(f)
        };
        let len = 4 * DIRECT_ALIGN;
        let step = (len * PREALLOCATE_BUFFERS) as u64;
        rt.block_on(async {
            // Three and a half buffers declared; the writes of the three full ones.
            let declared = (len * 7 / 2) as u64;
            let file = open("declared");
            let mut ahead = Ahead::new(0, Some(declared));
            for i in 0..3 {
                ahead.keep_ahead(&file, (i * len) as u64, len).await.unwrap();
            }
            ahead.wait().await.unwrap();
            if ahead.refused {
                eprintln!("this filesystem does not preallocate; nothing to check");
                return;
            }
            assert_eq!(ahead.end, declared);
            assert_eq!(file.metadata().unwrap().len(), declared);
            // More data than declared: the next write gets a step's worth past it.
            ahead.keep_ahead(&file, declared, len).await.unwrap();
            ahead.wait().await.unwrap();
            assert_eq!(file.metadata().unwrap().len(), declared + step);

            // Length unknown: a step's worth from the first write.
            let file = open("unknown");
            let mut ahead = Ahead::new(0, None);
            ahead.keep_ahead(&file, 0, len).await.unwrap();
            ahead.wait().await.unwrap();
            assert_eq!(file.metadata().unwrap().len(), step);
        });
    }

    /// A hashing thread takes each upload's buffers in order — two uploads side by side, of
    /// different lengths and starting mid-block, then a third alone — lets go of each buffer
    /// before saying it is hashed, and puts each hasher back when its queue is empty.
    #[test]
    fn queued_buffers_are_hashed_in_order() {
        use crate::digest::Algorithm;
        let bufs: Vec<Arc<AlignedBuf>> = (0..7u8)
            .map(|n| {
                let mut b = AlignedBuf::new(if n == 6 { DIRECT_LARGE } else { DIRECT_BUF });
                for (i, x) in b.bytes_mut().iter_mut().enumerate() {
                    *x = (i as u8).wrapping_mul(31) ^ n;
                }
                Arc::new(b)
            })
            .collect();
        let mut done = Vec::new();
        let mut job = |n: usize, from: usize, len: usize| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            done.push(rx);
            HashJob {
                buf: bufs[n].clone(),
                from,
                len,
                done: tx,
            }
        };
        // Upload A: a first buffer from a partial block on, three behind it (the last part-full).
        // Upload B: two buffers, the first from byte 7. Upload C: one large buffer.
        let uploads = [
            vec![
                (0, 100, DIRECT_BUF),
                (1, 0, DIRECT_BUF),
                (2, 0, DIRECT_BUF),
                (3, 0, 5000),
            ],
            vec![(4, 7, DIRECT_BUF), (5, 0, DIRECT_BUF)],
            vec![(6, 0, DIRECT_LARGE)],
        ];
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut states = Vec::new();
        for jobs in &uploads {
            let queue = jobs.iter().map(|&(n, from, len)| job(n, from, len)).collect();
            let hashing = Arc::new(parking_lot::Mutex::new(Hashing {
                hasher: Some(Hasher::new(Algorithm::Sha256)),
                queue,
                running: true,
            }));
            tx.send(hashing.clone()).unwrap();
            states.push(hashing);
        }
        drop(tx);
        // Run here until the queue is empty: A and B are taken together, C after.
        hash_thread(&rx);

        for (jobs, hashing) in uploads.iter().zip(&states) {
            let mut expect = Hasher::new(Algorithm::Sha256);
            for &(n, from, len) in jobs {
                expect.update(&bufs[n].bytes()[from..len]);
            }
            let mut h = hashing.lock();
            assert!(!h.running && h.queue.is_empty());
            assert_eq!(h.hasher.take().expect("the hasher is back").finish(), expect.finish());
        }
        for (n, mut rx) in done.into_iter().enumerate() {
            assert!(rx.try_recv().is_ok(), "buffer {n} is said to be hashed");
            assert_eq!(Arc::strong_count(&bufs[n]), 1, "the thread let go of buffer {n}");
        }
    }

    /// Uploads as the hashing pool gets them, at random: two or three uploads, each with a
    /// random part already hashed (an earlier request that ended mid-block), then small and
    /// large buffers whose hashed part starts and ends anywhere (a request resumed from a
    /// partial block, a part-full last buffer). One hashing thread takes the first two side by
    /// side ([`Hasher::update_pair`]: interleaved where the CPU has the SHA extensions and
    /// `BERTH_IO_HASH_PAIRS` is on) and the third when one of them is done; every upload's digest
    /// is `sha2`'s of all its bytes.
    #[test]
    fn the_pool_hashes_random_uploads_as_sha2_does() {
        use proptest::prelude::*;
        use proptest::sample::Index;
        use proptest::test_runner::{Config, TestRunner};
        use sha2::Digest as _;

        use crate::digest::Algorithm;

        let upload = (
            0usize..300,
            proptest::collection::vec((any::<bool>(), any::<Index>(), any::<Index>(), any::<u8>()), 1..5),
        );
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(upload, 2..=3), |uploads| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let mut states = Vec::new();
                for (u, (prefix, jobs)) in uploads.iter().enumerate() {
                    let mut hasher = Hasher::new(Algorithm::Sha256);
                    let mut all: Vec<u8> = (0..*prefix).map(|i| (i * 13 + u) as u8).collect();
                    hasher.update(&all);
                    let mut queue = std::collections::VecDeque::new();
                    for &(large, a, b, fill) in jobs {
                        let mut buf = AlignedBuf::new(if large { DIRECT_LARGE } else { DIRECT_BUF });
                        for (i, x) in buf.bytes_mut().iter_mut().enumerate() {
                            *x = ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ fill;
                        }
                        let (p, q) = (a.index(buf.len() + 1), b.index(buf.len() + 1));
                        let (from, len) = (p.min(q), p.max(q));
                        all.extend_from_slice(&buf.bytes()[from..len]);
                        let (done, _) = tokio::sync::oneshot::channel();
                        queue.push_back(HashJob {
                            buf: Arc::new(buf),
                            from,
                            len,
                            done,
                        });
                    }
                    let hashing = Arc::new(parking_lot::Mutex::new(Hashing {
                        hasher: Some(hasher),
                        queue,
                        running: true,
                    }));
                    tx.send(hashing.clone()).unwrap();
                    states.push((hashing, hex::encode(sha2::Sha256::digest(&all))));
                }
                drop(tx);
                hash_thread(&rx);
                for (u, (hashing, want)) in states.iter().enumerate() {
                    let mut h = hashing.lock();
                    prop_assert!(!h.running && h.queue.is_empty());
                    let got = h.hasher.take().expect("the hasher is back").finish();
                    prop_assert_eq!(got.hex(), want.as_str(), "upload {}", u);
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
