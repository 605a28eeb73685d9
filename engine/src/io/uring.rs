//! The io_uring engine: one thread owns a ring and submits the engine's upload writes and their
//! early writeback, so no thread of ours blocks in `pwrite`; callers await a completion. (The
//! commit's `fdatasync` runs on the blocking pool with the rest of the commit: the kernel hands
//! an `fsync` to an io_uring worker thread anyway.) Picked at start-up when the kernel allows io_uring
//! (`BERTH_IO_ENGINE=uring`, the default), else the std engine serves (see [`super::engine`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use io_uring::{IoUring, opcode, squeue, types};
use tokio::sync::oneshot;

/// Submission queue size; also the most operations in flight at once.
const ENTRIES: u32 = 256;
/// At most this many buffers go in one `writev` (the kernel's `IOV_MAX`); the rest follow as the
/// remainder of a short write.
const IOV_MAX: usize = 1024;

enum Kind {
    Write {
        bufs: Vec<Bytes>,
        iov: Vec<libc::iovec>,
        offset: u64,
        total: usize,
        written: usize,
    },
    SyncRange {
        offset: u64,
        len: u32,
        flags: u32,
    },
}

struct Op {
    file: Arc<File>,
    kind: Kind,
    done: oneshot::Sender<io::Result<()>>,
}

#[allow(unsafe_code)]
// SAFETY: the pointers in `iov` point into the `Bytes` in `bufs` of the same `Op` (shared,
// immutable, heap-allocated data that does not move when the `Op` moves); sending the `Op` to
// the ring thread sends both together.
unsafe impl Send for Kind {}

/// The ring thread's handle.
pub(super) struct Ring {
    tx: Sender<Op>,
}

impl Ring {
    /// Set up a ring and its thread, after checking with a no-op that the kernel runs it (a
    /// seccomp profile may allow `io_uring_setup` and refuse the rest).
    pub(super) fn start() -> io::Result<Ring> {
        let mut ring = IoUring::new(ENTRIES)?;
        let nop = opcode::Nop::new().build().user_data(u64::MAX);
        push(&mut ring, &nop)?;
        ring.submit_and_wait(1)?;
        let res = ring.completion().next().map(|c| c.result());
        if res != Some(0) {
            return Err(io::Error::other(format!("io_uring no-op answered {res:?}")));
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("berth-uring".into())
            .spawn(move || run(ring, rx))?;
        Ok(Ring { tx })
    }

    /// Hand an operation to the ring thread now; the future answers when it completes.
    fn submit(&self, file: Arc<File>, kind: Kind) -> impl Future<Output = io::Result<()>> + use<> {
        let (done, rx) = oneshot::channel();
        let sent = self.tx.send(Op { file, kind, done });
        async move {
            sent.map_err(|_| io::Error::other("the io_uring thread is gone"))?;
            rx.await.map_err(|_| io::Error::other("the io_uring thread is gone"))?
        }
    }

    /// Write `bufs` back to back at `offset`. The write is submitted at once (before the returned
    /// future is first polled), so the caller can work while it runs.
    pub(super) fn write(
        &self,
        file: Arc<File>,
        bufs: Vec<Bytes>,
        offset: u64,
    ) -> impl Future<Output = io::Result<()>> + use<> {
        let total = bufs.iter().map(Bytes::len).sum();
        let mut kind = Kind::Write {
            bufs,
            iov: Vec::new(),
            offset,
            total,
            written: 0,
        };
        fill_iov(&mut kind);
        let pending = (total > 0).then(|| self.submit(file, kind));
        async move {
            match pending {
                Some(p) => p.await,
                None => Ok(()),
            }
        }
    }

    /// Start the writeback of bytes `start..end` (`sync_file_range(WRITE)`), without waiting
    /// for it.
    pub(super) fn start_writeback(&self, file: Arc<File>, start: u64, end: u64) {
        let Ok(len) = u32::try_from(end - start) else { return };
        let (done, _) = oneshot::channel();
        let kind = Kind::SyncRange {
            offset: start,
            len,
            flags: libc::SYNC_FILE_RANGE_WRITE,
        };
        let _ = self.tx.send(Op { file, kind, done });
    }

    /// Write back `len` bytes at `offset` and wait until they are on disk (with writeback
    /// already under way there).
    pub(super) async fn wait_writeback(&self, file: Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        let len = u32::try_from(len).map_err(io::Error::other)?;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        self.submit(file, Kind::SyncRange { offset, len, flags }).await
    }
}

/// Point the iovec array at what is still to be written.
fn fill_iov(kind: &mut Kind) {
    let Kind::Write { bufs, iov, written, .. } = kind else {
        return;
    };
    iov.clear();
    let mut skip = *written;
    for b in bufs.iter() {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let rest = &b[skip..];
        skip = 0;
        iov.push(libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        });
        if iov.len() == IOV_MAX {
            break;
        }
    }
}

fn entry(op: &Op) -> squeue::Entry {
    let fd = types::Fd(op.file.as_raw_fd());
    match &op.kind {
        Kind::Write {
            iov, offset, written, ..
        } => opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
            .offset(offset + *written as u64)
            .build(),
        Kind::SyncRange { offset, len, flags } => opcode::SyncFileRange::new(fd, *len)
            .offset(*offset)
            .flags(*flags)
            .build(),
    }
}

#[allow(unsafe_code)]
fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every entry pushed here points only at memory and descriptors owned by its `Op`
    // (file, buffers, iovec array), which the ring thread keeps in its slot table, untouched,
    // until the entry's completion is reaped; the no-op of `Ring::start` points at nothing.
    unsafe { ring.submission().push(e) }.map_err(|_| io::Error::other("io_uring submission queue full"))
}

fn run(mut ring: IoUring, rx: Receiver<Op>) {
    let mut slots: Vec<Option<Op>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut queued: VecDeque<Op> = VecDeque::new();
    let mut in_flight = 0usize;
    loop {
        if in_flight == 0 && queued.is_empty() {
            match rx.recv() {
                Ok(op) => queued.push_back(op),
                Err(_) => return,
            }
        }
        queued.extend(rx.try_iter());
        while in_flight < ENTRIES as usize {
            let Some(op) = queued.pop_front() else { break };
            let e = entry(&op);
            let idx = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            if let Err(err) = push(&mut ring, &e.user_data(idx as u64)) {
                let _ = op.done.send(Err(err));
                free.push(idx);
                continue;
            }
            slots[idx] = Some(op);
            in_flight += 1;
        }
        match ring.submit_and_wait(usize::from(in_flight > 0)) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
            Err(e) => {
                // Submitted entries may still point at their operations' memory, so nothing is
                // dropped: log, and try again.
                tracing::error!(error = %e, "io_uring submit failed; retrying");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        }
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (ud, res) in done {
            let idx = ud as usize;
            let Some(mut op) = slots.get_mut(idx).and_then(Option::take) else {
                continue;
            };
            free.push(idx);
            in_flight -= 1;
            let outcome = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else if let Kind::Write { total, written, .. } = &mut op.kind {
                if res == 0 {
                    Err(io::ErrorKind::WriteZero.into())
                } else {
                    *written += res as usize;
                    if *written < *total {
                        // A short write: the rest goes in again.
                        fill_iov(&mut op.kind);
                        queued.push_front(op);
                        continue;
                    }
                    Ok(())
                }
            } else {
                Ok(())
            };
            // The operation's buffers and file go before its caller hears, so that a caller who
            // reuses a buffer finds it no longer shared.
            let Op { file, kind, done } = op;
            drop((file, kind));
            let _ = done.send(outcome);
        }
    }
}
