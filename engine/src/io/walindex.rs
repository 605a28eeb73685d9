//! A lock-free look at whether SQLite's database changed: the header of its WAL index (the
//! `-shm` file every connection of every process maps), which each commit rewrites.
//!
//! SQLite keeps two copies of the 48-byte header at the start of the WAL index
//! (<https://www.sqlite.org/walformat.html>, "The WAL-Index Header"). A writer updates the
//! second copy, then the first, with a memory barrier between; a reader takes the first, then
//! the second, and trusts them only when they agree. The header holds a change counter, the last
//! valid frame and the WAL's salts, so any commit of any connection changes it.
//!
//! Asking SQLite instead (`PRAGMA data_version`) starts and ends a read transaction: two
//! `fcntl` locks and a connection behind a mutex per call, which cost `HEAD` blob about a third
//! of its server CPU (docs/performance.md).

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering, fence};

/// Bytes of one copy of the header.
const HEADER: usize = 48;
/// 32-bit words in one copy.
const WORDS: usize = HEADER / 4;

/// The two header copies of a WAL index, mapped read-only.
pub struct WalIndexHead {
    map: memmap2::Mmap,
}

/// One consistent copy of the header: equal values mean no commit happened in between.
pub type WalHeader = [u32; WORDS];

impl WalIndexHead {
    /// Map the header of the WAL index at `shm` (`<database>-shm`). Call while a connection to
    /// the database is open, and keep one open as long as this lives: SQLite only truncates the
    /// file when its first connection (of any process) opens it.
    #[allow(unsafe_code)]
    pub fn open(shm: &Path) -> io::Result<WalIndexHead> {
        let file = File::open(shm)?;
        if file.metadata()?.len() < 2 * HEADER as u64 {
            return Err(io::Error::other("the WAL index is not initialised"));
        }
        // SAFETY: a read-only shared mapping of the first 96 bytes, which the file was checked
        // to have. SQLite never shrinks the file while a connection is open (it truncates it
        // only when the first connection opens it, holding a lock no other connection can hold
        // at the same time), and the caller keeps one open for the life of this map. Other
        // processes write these bytes concurrently: they are read only through atomic loads
        // (see `read`), never as a plain slice.
        let map = unsafe { memmap2::MmapOptions::new().len(2 * HEADER).map(&file)? };
        Ok(WalIndexHead { map })
    }

    /// The header, when its two copies agree (else a writer is updating it: ask SQLite).
    pub fn read(&self) -> Option<WalHeader> {
        let first = self.copy(0);
        fence(Ordering::Acquire);
        let second = self.copy(WORDS);
        (first == second).then_some(first)
    }

    #[allow(unsafe_code)]
    fn copy(&self, from: usize) -> WalHeader {
        let base = self.map.as_ptr().cast::<AtomicU32>();
        std::array::from_fn(|i| {
            // SAFETY: `from + i` < 2 × WORDS, so the word lies inside the 96-byte mapping; the
            // mapping is page-aligned, so every word is 4-byte aligned as AtomicU32 requires;
            // and the memory stays mapped while `self` (and so the borrow) lives. Loads of
            // AtomicU32 are the sound way to read memory that other processes store to.
            unsafe { (*base.add(from + i)).load(Ordering::Relaxed) }
        })
    }
}
