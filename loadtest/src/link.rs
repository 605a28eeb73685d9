//! `berth-loadtest link`: a TCP relay that stands in for the network between a registry and its
//! clients, with a shared bandwidth limit on what the registry sends.
//!
//! ```text
//! berth-loadtest link --listen 127.0.0.1:5003 --to 127.0.0.1:5001 --rate 250MB
//! ```
//!
//! Every connection to `--listen` is relayed to `--to`. Bytes from `--to` back to the clients share
//! one token bucket of `--rate` bytes per second (as one link would: two pulls at once get half each);
//! requests towards `--to` are not limited. On one machine the upstream of a pull-through cache reads
//! its page cache and hands it to loopback at many GB/s, far faster than any network between two
//! registries; this puts a link of a chosen speed in between, for the direct pull and the mirror's
//! download alike. The relay's own cost is a copy through a 256 KiB buffer per direction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::units::parse_size;

/// Arguments of `link`.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// Address every connection is relayed to.
    #[arg(long)]
    to: String,
    /// Bytes per second from `--to` to the clients, all connections together (e.g. 250MB, 1GiB).
    #[arg(long)]
    rate: String,
}

/// When the link is next free to send.
struct Bucket {
    rate: f64,
    free_at: Mutex<Instant>,
}

impl Bucket {
    /// Wait until `n` more bytes may go.
    async fn take(&self, n: usize) {
        let at = {
            let mut free = self.free_at.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Idle time is not saved up beyond a few milliseconds (no bursts after a pause).
            let floor = now.checked_sub(Duration::from_millis(5)).unwrap_or(now);
            let start = (*free).max(floor);
            *free = start + Duration::from_secs_f64(n as f64 / self.rate);
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Run the relay until killed; 2 on a usage error, 1 if it cannot listen.
pub fn run(args: &LinkArgs) -> i32 {
    let rate = match parse_size(&args.rate) {
        Ok(r) if r > 0 => r as f64,
        Ok(_) => {
            eprintln!("link: --rate must be more than 0");
            return 2;
        }
        Err(e) => {
            eprintln!("link: --rate: {e}");
            return 2;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let listener = match TcpListener::bind(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("link: listening on {}: {e}", args.listen);
                return 1;
            }
        };
        let bucket = Arc::new(Bucket {
            rate,
            free_at: Mutex::new(Instant::now()),
        });
        eprintln!("link: {} -> {} at {} bytes/s", args.listen, args.to, rate);
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let (to, bucket) = (args.to.clone(), bucket.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&to).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        bucket.take(n).await;
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    })
}
