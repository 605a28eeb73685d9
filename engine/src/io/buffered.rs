//! Upload data written through the page cache (where direct writes are off or refused): body
//! frames gathered into batches, each hashed and written while the next is received, and the
//! early writeback that keeps little of an upload dirty for the commit's sync.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::AppendError;
use super::settings::{WRITEBACK, ring};
use crate::digest::Hasher;

/// Bytes of request body gathered into one write (and the most received ahead of the disk).
pub const WRITE_BATCH: usize = 256 * 1024;
/// Upload data is pushed to the disk as it arrives (`sync_file_range`), and the writer waits
/// for the window before the last one to be on disk: at most about two windows are dirty when
/// the commit's `fsync` comes, so the commit of a large upload does not stall on gigabytes of
/// page cache, and memory stays flat however large the blob.
pub const WRITEBACK_WINDOW: u64 = 32 * 1024 * 1024;

/// [`UploadFile::append`](super::UploadFile::append) through the page cache.
pub(super) async fn append_buffered<S, E>(
    file: &Arc<File>,
    offset: u64,
    hasher: &mut Hasher,
    body: S,
) -> Result<u64, AppendError>
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
