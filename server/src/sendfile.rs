//! Plaintext connections send memory-mapped blob bytes with `sendfile`
//! ([`berth_engine::io::sendfile`]): hyper writes a download's body as slices of the blob's
//! maps, and each slice found in one goes from the file instead — the kernel passes the page
//! cache's pages to the network without copying them. Every other write is passed through.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use berth_engine::io::sendfile::{mapped_source, send_file};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A plaintext connection's socket.
pub struct SendfileStream {
    inner: TcpStream,
}

impl SendfileStream {
    /// Serve `inner`.
    pub fn new(inner: TcpStream) -> SendfileStream {
        SendfileStream { inner }
    }

    /// Send up to `count` bytes of `file` from `offset`, once the socket has room.
    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        (file, offset, count): (std::sync::Arc<std::fs::File>, u64, usize),
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_io(Interest::WRITABLE, || {
                send_file(self.inner.as_fd(), &file, offset, count)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return Poll::Ready(res),
            }
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(source) = mapped_source(buf) {
            return self.poll_send_file(cx, source);
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    /// The slices before the first mapped one go in one vectored write; a mapped slice at the
    /// front goes by `sendfile`. Either way the count written is returned, as a write may.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs);
        };
        if let Some(source) = mapped_source(&bufs[first]) {
            return self.poll_send_file(cx, source);
        }
        let plain = bufs[first..]
            .iter()
            .position(|b| mapped_source(b).is_some())
            .map_or(bufs.len(), |n| first + n);
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, &bufs[..plain])
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
