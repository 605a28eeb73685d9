//! All disk I/O of the engine goes through this module.
//!
//! Two engines serve upload data: io_uring ([`uring`], the default where the kernel allows it),
//! where one thread owns a ring and the upload path hashes a batch while the ring writes it; and
//! std, blocking file calls on tokio's blocking pool (a thread hashes and writes each batch).
//! `BERTH_IO_ENGINE=uring|std` chooses; when io_uring cannot be set up, std serves and that is
//! logged once. Either way the body of an upload is pipelined, so the network side keeps
//! receiving while the previous batch is hashed and written. Metadata-like calls (open, rename,
//! directory sync) use the blocking pool in both; blob reads are memory maps.
//!
//! The layer, file by file:
//!
//! - `settings`: the `BERTH_IO_*` switches and numbers ([`check_settings`]), which engine serves
//!   ([`engine_name`]), and the allocator's tuning ([`tune_allocator`], [`disable_huge_pages`]).
//! - `upload_file`: an upload session's data file ([`UploadFile`]): create, open and lock for a
//!   request, append, cut back, sync for the commit, hash again; removal of an idle session.
//! - `direct`: appends with `O_DIRECT`, through aligned buffers (`buffers`), with space
//!   allocated ahead (`preallocate`) and the SHA-256 threads (`hash_pool`) hashing full buffers
//!   while the next ones fill.
//! - `buffered`: appends through the page cache, in batches of [`WRITE_BATCH`], with early
//!   writeback ([`WRITEBACK_WINDOW`]).
//! - `read`: blob ranges, from memory maps ([`map_range`]) or positioned reads ([`read_range`]).
//! - `fs`: placing a blob, removals, small atomic files, listings, the storage lock, directory
//!   syncs.
//! - [`sendfile`]: mapped blob bytes sent to plaintext sockets with `sendfile`.
//! - `uring`: the io_uring engine's ring thread.
//! - [`walindex`]: a lock-free look at SQLite's WAL index header.
//!
//! Paired SHA-256 (two uploads hashed at once on one core) is digest code:
//! [`crate::digest::sha256x2`].

mod buffered;
mod buffers;
mod direct;
mod fs;
mod hash_pool;
mod preallocate;
mod read;
pub mod sendfile;
mod settings;
mod upload_file;
mod uring;
pub mod walindex;

use std::io;

pub use buffered::{WRITE_BATCH, WRITEBACK_WINDOW};
pub use fs::{
    StoredFile, create_dir_all, file_len, list_blob_files, list_dir, lock_storage, modified_secs, place_blob,
    read_small, remove_dir_all, remove_dir_all_now, remove_file, remove_file_now, sync_dir, write_atomic,
    write_atomic_now,
};
pub use read::{blob_range, map_range, read_once, read_range};
pub(crate) use settings::HASH_PAIRS;
pub use settings::{
    ALLOCATOR_PURGE_DELAY_MS, allocator_purge_delay_ms, check_settings, disable_huge_pages, engine_name, tune_allocator,
};
pub use upload_file::{UploadFile, remove_session_if_idle};

/// Run a blocking closure on the blocking pool.
pub async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Why an append failed.
#[derive(Debug)]
pub enum AppendError {
    /// The client's body failed.
    Body(String),
    /// The disk failed.
    Io(io::Error),
}
