//! The HTTP server: accept loop, HTTP/1.1 and h2c on one port, graceful shutdown, and the
//! background task that removes idle upload sessions.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api::{self, App};
use crate::tls::Tls;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS, when configured.
    pub tls: Option<Arc<Tls>>,
    /// Time a client may take to send request headers.
    pub header_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Serve the registry (and, when enabled, its token server) on `listener`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(move |req| api::handle(app.clone(), req), listener, opts, shutdown).await
}

/// Serve requests with `handler` until `shutdown` completes, then drain connections.
pub async fn serve_with<H, F>(
    handler: H,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<api::Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true)
        .max_buf_size(read_buffer());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let handler = handler.clone();
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(crate::client::Peer(peer));
            let fut = handler(req);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let watcher = graceful.watcher();
        let tls = opts.tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let stream = crate::sendfile::SendfileStream::new(stream);
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
    Ok(())
}

/// Default of the largest HTTP/1 read buffer of a connection, in bytes.
pub const READ_BUFFER: usize = 128 * 1024;

/// The largest HTTP/1 read buffer of a connection (`BERTH_HTTP_READ_BUFFER`, at least 8 KiB).
/// Upload bodies reach the engine as slices of this buffer, and the connection reads the next
/// one while the engine takes the last, so each upload holds up to about two. Larger reads cost
/// fewer system calls: a 1 GiB push ran at 620–700 MB/s with 64 KiB and 720–890 MB/s with
/// 128 or 256 KiB, while 64 concurrent uploads peaked at 66–70, 85 and 92–97 MiB
/// (docs/performance.md); hyper's own default (about 400 KiB) held ~140 MiB.
pub fn read_buffer() -> usize {
    std::env::var("BERTH_HTTP_READ_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(READ_BUFFER, |n: usize| n.max(8192))
}

/// Collect garbage every configured interval (online GC).
pub fn spawn_gc(app: Arc<App>) {
    let (Some(interval), opts) = (app.config.gc_interval, app.config.gc) else {
        return;
    };
    tracing::info!(
        interval = ?interval,
        grace = ?opts.grace,
        untagged = opts.untagged,
        "online garbage collection on"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let started = std::time::Instant::now();
            match app.engine.gc(opts).await {
                Ok(r) if r.elsewhere => {
                    tracing::info!("garbage collection left to the process that holds the collection lease");
                }
                Ok(r) => {
                    tracing::info!(
                        repositories = r.repositories,
                        manifests_removed = r.manifests,
                        links_removed = r.links,
                        blobs_removed = r.blobs + r.stray_files,
                        bytes_freed = r.bytes + r.stray_bytes,
                        ms = started.elapsed().as_millis() as u64,
                        "garbage collection done"
                    );
                    for s in r.skipped {
                        tracing::warn!("garbage collection skipped {s}");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    });
}

/// Remove idle upload sessions every `interval`.
pub fn spawn_upload_reaper(app: Arc<App>) {
    if !app.config.upload_purging {
        return;
    }
    let (interval, timeout) = (app.config.upload_cleanup_interval, app.config.upload_timeout);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match app.engine.reap_uploads(timeout).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed idle upload sessions"),
                Err(e) => tracing::warn!(error = %e, "removing idle upload sessions failed"),
            }
        }
    });
}
