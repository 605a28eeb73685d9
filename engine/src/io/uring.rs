//! The io_uring engine: one thread owns a ring and submits the engine's upload writes and their
//! early writeback, so no thread of ours blocks in `pwrite`; callers await a completion. (The
//! commit's `fdatasync` runs on the blocking pool with the rest of the commit: the kernel hands
//! an `fsync` to an io_uring worker thread anyway.) Picked at start-up when the kernel allows io_uring
//! (`BERTH_IO_ENGINE=uring`, the default), else the std engine serves (see [`super::engine`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};

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
    /// An eventfd the ring thread keeps a read on, written after an operation is sent while
    /// few are in flight, so a thread waiting for completions wakes and submits it.
    wake: Arc<File>,
    /// Operations in flight (as the ring thread last counted them).
    in_flight: Arc<AtomicUsize>,
}

/// `user_data` of the read on the wake-up eventfd.
const WAKE: u64 = u64::MAX - 1;

/// With at least this many operations in flight, one sent is not worth a wake-up of the ring
/// thread: a completion comes soon and the thread submits what arrived then, together. With
/// fewer, it is woken: an upload's writes (up to three in flight) would otherwise wait for each
/// other. Waking it for every operation cost 64 concurrent 16 MiB pushes 7 % more server CPU.
const WAKE_BELOW: usize = 4;

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
        let wake = Arc::new(eventfd()?);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = crossbeam_channel::unbounded();
        let (thread_wake, thread_count) = (wake.clone(), in_flight.clone());
        std::thread::Builder::new()
            .name("berth-uring".into())
            .spawn(move || run(ring, rx, &thread_wake, &thread_count))?;
        Ok(Ring { tx, wake, in_flight })
    }

    /// Send `op` to the ring thread, and wake it unless enough operations are in flight.
    fn send(&self, op: Op) -> Result<(), crossbeam_channel::SendError<Op>> {
        self.tx.send(op)?;
        // Pairs with the fence in `run` between counting and taking operations: either the
        // thread takes this one, or this sees the count it will wait with.
        fence(Ordering::SeqCst);
        if self.in_flight.load(Ordering::Relaxed) < WAKE_BELOW {
            // Cannot fail short of a counter overflow (2^64 - 2 wake-ups unread), which would
            // only mean the thread is awake already.
            let _ = (&*self.wake).write(&1u64.to_ne_bytes());
        }
        Ok(())
    }

    /// Hand an operation to the ring thread now; the future answers when it completes.
    fn submit(&self, file: Arc<File>, kind: Kind) -> impl Future<Output = io::Result<()>> + use<> {
        let (done, rx) = oneshot::channel();
        let sent = self.send(Op { file, kind, done });
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
        let _ = self.send(Op { file, kind, done });
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
    // until the entry's completion is reaped; the no-op of `Ring::start` points at nothing; the
    // wake-up read points at the eventfd, which the thread holds for as long as it runs, and at
    // a leaked (never freed) 8-byte buffer.
    unsafe { ring.submission().push(e) }.map_err(|_| io::Error::other("io_uring submission queue full"))
}

/// An eventfd. Blocking: io_uring would answer a read of a non-blocking one at once with
/// `EAGAIN` instead of waiting for a write (and a write blocks only at a count of 2^64 - 2).
fn eventfd() -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers; the descriptor it returns is new and owned by nothing
    // else, so the `File` may own it.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above: `fd` is a fresh descriptor that only this `File` closes.
    #[allow(unsafe_code)]
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The ring thread: submit what arrives, hand back what completes.
///
/// A read on the `wake` eventfd is always in flight, so the one wait, for a completion, also
/// ends when a sender wakes it (see [`WAKE_BELOW`]). Waiting for a completion alone, as this
/// did before, left an operation sent while others ran unsubmitted until one of them finished:
/// a single upload's third write in flight waited for its first.
fn run(mut ring: IoUring, rx: Receiver<Op>, wake: &File, shared_count: &AtomicUsize) {
    let mut slots: Vec<Option<Op>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut queued: VecDeque<Op> = VecDeque::new();
    let mut in_flight = 0usize;
    // Leaked: the kernel may write to it until the ring is gone, and the ring goes only with
    // the process.
    let count: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let count_ptr = count.as_mut_ptr();
    let mut armed = false;
    loop {
        if !armed {
            let read = opcode::Read::new(types::Fd(wake.as_raw_fd()), count_ptr, 8)
                .build()
                .user_data(WAKE);
            if push(&mut ring, &read).is_ok() {
                armed = true;
            }
        }
        // The count senders see while this thread would wait: what is in flight now (a send
        // that sees it at or above `WAKE_BELOW` does not wake the thread, which takes the
        // operation after the next completion).
        shared_count.store(in_flight, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        loop {
            match rx.try_recv() {
                Ok(op) => queued.push_back(op),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    if in_flight == 0 && queued.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        // One entry stays for the wake-up read.
        while in_flight < ENTRIES as usize - 1 {
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
        match ring.submit_and_wait(usize::from(in_flight > 0 || armed)) {
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
            if ud == WAKE {
                // Re-armed at the top of the loop, after the channel is drained.
                armed = false;
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// An operation sent while another is in flight is submitted at once, not after the other
    /// completes: a write into a full socket stays pending while a file write behind it finishes.
    #[test]
    fn an_operation_does_not_wait_for_one_in_flight() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ring = Ring::start().expect("io_uring");
            let (mut reader, writer) = UnixStream::pair().unwrap();
            // Fill the socket, so that the ring's write into it waits for a reader.
            writer.set_nonblocking(true).unwrap();
            let chunk = vec![7u8; 4096];
            let mut filled = 0usize;
            while let Ok(n) = (&writer).write(&chunk) {
                filled += n;
            }
            writer.set_nonblocking(false).unwrap();
            assert!(filled > 0);
            let writer = File::from(std::os::fd::OwnedFd::from(writer));
            let stuck = tokio::spawn(ring.write(Arc::new(writer), vec![Bytes::from_static(b"after")], 0));
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!stuck.is_finished(), "a write into a full socket finished");

            let dir = tempfile::tempdir().unwrap();
            let file = Arc::new(File::create(dir.path().join("f")).unwrap());
            let behind = ring.write(file, vec![Bytes::from_static(b"hello")], 0);
            tokio::time::timeout(Duration::from_secs(5), behind)
                .await
                .expect("a file write waited for the socket write in flight")
                .unwrap();
            assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
            assert!(!stuck.is_finished());

            // Drain the socket: the first write then completes too.
            let mut drained = vec![0u8; filled];
            reader.read_exact(&mut drained).unwrap();
            tokio::time::timeout(Duration::from_secs(5), stuck)
                .await
                .expect("the socket write never completed")
                .unwrap()
                .unwrap();
            let mut tail = [0u8; 5];
            reader.read_exact(&mut tail).unwrap();
            assert_eq!(&tail, b"after");
        });
    }
}
