//! The aligned buffers of direct writes: their sizes, and the pools that keep idle ones for the
//! next upload and bound how many large ones exist.

use super::settings::large_buffers;

/// Alignment of direct writes (offsets, lengths and buffer addresses): covers 512-byte and
/// 4 KiB logical blocks.
pub(super) const DIRECT_ALIGN: usize = 4096;
/// Bytes gathered in an aligned buffer before one direct write, while large buffers are all
/// taken.
pub(super) const DIRECT_BUF: usize = 128 * 1024;
/// The buffer an upload takes first: on this project's machines a direct write of 128 KiB at a
/// time reaches about half of what the disk takes in 1 MiB writes, and costs eight times the
/// operations. Until 2026-11-24 an upload took these only past its first 4 MiB (to keep them
/// for large uploads); taking them from the first byte measured the same for 64 concurrent
/// 16 MiB pushes and cut the server CPU of 1 MiB pushes by about 10 % (one write instead of
/// eight), and a buffer goes back to the pool as soon as its write completes.
pub(super) const DIRECT_LARGE: usize = 1024 * 1024;
/// Most large buffers in existence at once (in use or idle) by default, so memory stays bounded
/// however many uploads run: the rest go on with small buffers. Each upload holds one filling
/// and up to [`DIRECT_LARGE_IN_FLIGHT`](super::direct::DIRECT_LARGE_IN_FLIGHT) being written. With
/// 64 concurrent 16 MiB pushes beside a 4 GiB one, 8, 16 and 32 peaked at 78, 82 and 105 MiB. More,
/// for those with memory to spare, with `BERTH_IO_LARGE_BUFFERS` ([`large_buffers`]): 64 made 64
/// concurrent 16 MiB pushes 4–15 % faster at about 130 MiB (docs/performance.md).
pub(super) const DIRECT_LARGE_MAX: usize = 16;

/// A heap buffer at a [`DIRECT_ALIGN`]-aligned address, as direct I/O wants, of either size.
pub(super) struct AlignedBuf {
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
    pub(super) fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let off = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, off, len }
    }

    /// A buffer for an upload's next bytes: a large one when one is free (or may still be
    /// made), else a small one; from the pools when they have one.
    pub(super) fn take() -> AlignedBuf {
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
    pub(super) fn give(self) {
        if self.len == DIRECT_LARGE {
            DIRECT_LARGE_POOL.lock().push(self);
            return;
        }
        let mut pool = DIRECT_POOL.lock();
        if pool.len() < DIRECT_POOL_MAX {
            pool.push(self);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
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
