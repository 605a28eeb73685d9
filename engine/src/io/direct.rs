//! Upload data written with `O_DIRECT`: each frame copied into an aligned buffer as it arrives,
//! a full buffer written at a block-aligned offset (by the ring, or on the blocking pool) and
//! hashed by the hashing threads while the next one fills.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::AppendError;
use super::buffers::{AlignedBuf, DIRECT_ALIGN, DIRECT_LARGE};
use super::hash_pool::{HashJob, Hashing, hash_pool};
use super::preallocate::Ahead;
use super::settings::ring;
use crate::digest::Hasher;

/// [`UploadFile::append`](super::UploadFile::append) with direct writes.
pub(super) async fn append_direct<S, E>(
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

/// Writes of large buffers one upload keeps in flight. With one, a 1 GiB push left the two cores
/// 40 % idle: filling 1 MiB and writing it took about as long, so each wait for the disk stalled
/// the body, and with it the connection. Large buffers are capped in number
/// ([`large_buffers`](super::settings::large_buffers)), so this adds no memory beyond that cap.
pub(super) const DIRECT_LARGE_IN_FLIGHT: usize = 3;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
