//! Blob bytes served from memory maps reach a plaintext socket with `sendfile`: the kernel then
//! hands the page cache's pages to the network instead of copying them out of the map.
//!
//! Each map a download serves ([`super::map_range`]) is recorded here, by address, while it
//! lives. The server's plaintext connections look up every slice hyper asks them to write
//! ([`mapped_source`]); a slice that lies in a recorded map is sent from the file at the same
//! offset — the same bytes, since blob files never change — with [`send_file`]. Anything else is
//! written as before. `BERTH_IO_SENDFILE=off` records nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

/// A recorded map: its length, and where its first byte lies in which file.
struct Entry {
    len: usize,
    file: Arc<File>,
    offset: u64,
}

/// Recorded maps by start address.
static MAPS: RwLock<BTreeMap<usize, Entry>> = RwLock::new(BTreeMap::new());
/// Number of recorded maps: with none, a write looks nothing up.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A blob map handed to the network, recorded (when sendfile is on) until dropped: the owner
/// of the `Bytes` a download streams.
pub(super) struct MappedChunk {
    map: memmap2::Mmap,
    recorded: bool,
}

impl MappedChunk {
    /// `map` holds the bytes of `file` from `offset`.
    pub(super) fn new(map: memmap2::Mmap, file: &Arc<File>, offset: u64) -> MappedChunk {
        let recorded = super::settings::SENDFILE.on() && !map.is_empty();
        if recorded {
            let entry = Entry {
                len: map.len(),
                file: file.clone(),
                offset,
            };
            MAPS.write().insert(map.as_ptr() as usize, entry);
            LIVE.fetch_add(1, Ordering::Release);
        }
        MappedChunk { map, recorded }
    }
}

impl AsRef<[u8]> for MappedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for MappedChunk {
    /// The record goes before the map is unmapped (the field is dropped after this), so no
    /// lookup finds an address that is no longer this map's.
    fn drop(&mut self) {
        if self.recorded {
            MAPS.write().remove(&(self.map.as_ptr() as usize));
            LIVE.fetch_sub(1, Ordering::Release);
        }
    }
}

/// When `bytes` starts inside a recorded blob map: the file, the file offset of `bytes[0]`, and
/// how many bytes from there lie in the map (at most `bytes.len()`).
///
/// Sound because `bytes` is borrowed for the call: the memory it points to is alive, and if a
/// live record covers its address, that memory is the recorded map (a record is removed before
/// its map is unmapped, under the same lock this lookup holds).
pub fn mapped_source(bytes: &[u8]) -> Option<(Arc<File>, u64, usize)> {
    if bytes.is_empty() || LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let at = bytes.as_ptr() as usize;
    let maps = MAPS.read();
    let (&start, entry) = maps.range(..=at).next_back()?;
    let into = at - start;
    if into >= entry.len {
        return None;
    }
    Some((
        entry.file.clone(),
        entry.offset + into as u64,
        (entry.len - into).min(bytes.len()),
    ))
}

/// Send up to `count` bytes of `file` from `offset` to `socket` (`sendfile`); returns how many
/// went (fewer when the socket's buffer fills; `WouldBlock` on a non-blocking socket with no
/// room).
pub fn send_file(socket: BorrowedFd<'_>, file: &File, offset: u64, count: usize) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: both descriptors are open for the call (one borrowed, one owned by `file`); `off`
    // is a valid `off_t` on this stack frame that the kernel updates; no buffer of ours is
    // passed.
    #[allow(unsafe_code)]
    let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &raw mut off, count) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    /// A slice of a recorded map is found with its file offset, a slice outside is not, the
    /// record goes with the map, and `send_file` sends the file's bytes.
    #[test]
    fn maps_are_found_by_address_and_sent_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let content: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        // SAFETY: a read-only map of a file this test wrote and does not change.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::MmapOptions::new().offset(4096).len(8192).map(&*file).unwrap() };
        let chunk = MappedChunk::new(map, &file, 4096);
        let bytes = chunk.as_ref();
        let (f, off, n) = mapped_source(&bytes[100..300]).expect("in the map");
        assert!(Arc::ptr_eq(&f, &file));
        assert_eq!((off, n), (4196, 200));
        let other = vec![0u8; 64];
        assert!(mapped_source(&other).is_none());
        assert!(mapped_source(&[]).is_none());

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let sent = send_file(sender.as_fd(), &f, off, n).unwrap();
        assert_eq!(sent, 200);
        let mut got = vec![0u8; 200];
        receiver.read_exact(&mut got).unwrap();
        assert_eq!(&got[..], &content[4196..4396]);
        assert_eq!(&got[..], &bytes[100..300]);

        let at = bytes.as_ptr() as usize;
        drop(chunk);
        assert!(!MAPS.read().contains_key(&at), "the record goes with the map");
        (&sender).flush().unwrap();
    }
}
