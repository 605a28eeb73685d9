//! Blob reads: ranges streamed from memory maps or positioned reads, a little ahead of the
//! network.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::settings::MMAP;
use super::{blocking, sendfile};

/// Chunks read ahead of the client on a blob download.
const READ_AHEAD: usize = 2;
/// Size of the reads that serve a blob.
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// Ranges of at least this many bytes are served from a memory map.
const MAP_MIN: u64 = 1024 * 1024;
/// Whole small files of at least this many bytes are mapped by [`read_once`] (below it a copy
/// costs less than a map, and a map takes a whole page).
pub const MAP_SMALL_MIN: u64 = 16 * 1024;
/// Size of the slices of a memory-mapped blob handed to the network.
const MAP_CHUNK: usize = 2 * 1024 * 1024;

/// Stream `len` bytes of the file at `path` from `start`. Large ranges are served from a
/// memory map ([`map_range`]); small ones with positioned reads ([`read_range`]).
pub async fn blob_range(path: PathBuf, start: u64, len: u64) -> io::Result<mpsc::Receiver<io::Result<Bytes>>> {
    if MMAP.on() && len >= MAP_MIN {
        map_range(path, start, len).await
    } else {
        read_range(path, start, len).await
    }
}

/// Read `len` bytes of the file at `path` from `start` in one go, on the blocking pool (one hop:
/// open, positioned reads, close), for small ranges. Also says whether they are the whole file:
/// from the start, and nothing after them (one byte more is asked for to know).
///
/// A whole file of at least [`MAP_SMALL_MIN`] bytes is mapped instead of read (with sendfile
/// on): kept in the small-blob cache, its bytes then reach plaintext sockets with `sendfile`
/// from the page cache, with no copy of ours.
pub async fn read_once(path: PathBuf, start: u64, len: usize) -> io::Result<(Bytes, bool)> {
    if start == 0 && len as u64 >= MAP_SMALL_MIN && MMAP.on() && super::settings::SENDFILE.on() {
        let mapped = blocking(move || {
            let f = Arc::new(File::open(&path)?);
            if f.metadata()?.len() != len as u64 {
                return Ok(Err(path));
            }
            let map = map_file(&f, 0, len as u64)?;
            match map.advise(memmap2::Advice::PopulateRead) {
                Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
                _ => {}
            }
            Ok(Ok(Bytes::from_owner(sendfile::MappedChunk::new(map, &f, 0))))
        })
        .await?;
        return match mapped {
            Ok(b) => Ok((b, true)),
            Err(path) => read_into_memory(path, start, len).await,
        };
    }
    read_into_memory(path, start, len).await
}

async fn read_into_memory(path: PathBuf, start: u64, len: usize) -> io::Result<(Bytes, bool)> {
    // Allocated here, on the runtime's threads (see `read_range`).
    let probe = usize::from(start == 0);
    let mut buf = BytesMut::zeroed(len + probe);
    blocking(move || {
        let f = File::open(&path)?;
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got < len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let whole = start == 0 && got == len;
        buf.truncate(len);
        Ok((buf.freeze(), whole))
    })
    .await
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
