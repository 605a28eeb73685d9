//! One blob `GET` timed to its first and its last body byte, the body checked against the digest.

use std::time::Instant;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::blob::{Blob, ReqBody};
use crate::client::Conn;

/// Bytes per GB in throughput figures (10^9, as MB/s elsewhere is 10^6 bytes per second).
const GB: f64 = 1e9;

/// One timed blob `GET`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Pull {
    /// From sending the request to the last byte, seconds.
    pub seconds: f64,
    /// From sending the request to the first body byte, milliseconds.
    pub ttfb_ms: f64,
    /// Body bytes per second over `seconds`, in GB (10^9 bytes).
    pub gb_per_s: f64,
}

impl Pull {
    /// A pull of `bytes` that took `seconds`, its first byte after `ttfb_s`.
    pub fn new(bytes: u64, seconds: f64, ttfb_s: f64) -> Self {
        Pull {
            seconds,
            ttfb_ms: ttfb_s * 1000.0,
            gb_per_s: bytes as f64 / GB / seconds.max(1e-9),
        }
    }
}

/// Where a timed `GET` puts the body it checks.
pub enum Check<'a> {
    /// Copied into this buffer (allocated and touched beforehand, reused from pull to pull) and hashed
    /// after the clock stops: costs the client one memory copy during the pull.
    Copy(&'a mut Vec<u8>),
    /// Hashed as it arrives (the client's SHA-256 rate bounds the pull).
    Inline,
}

impl<'a> Check<'a> {
    /// Into `buf` when there is one, else inline.
    pub fn with(buf: &'a mut Option<&mut Vec<u8>>) -> Self {
        match buf.as_deref_mut() {
            Some(b) => Check::Copy(b),
            None => Check::Inline,
        }
    }
}

/// `GET path`, timing the first body byte and the last; checks the length and the digest of the body.
pub async fn timed_get(conn: &mut Conn, path: &str, blob: &Blob, check: Check<'_>) -> Result<Pull, String> {
    let start = Instant::now();
    let resp = conn
        .expect(Method::GET, path, &[], ReqBody::Empty, StatusCode::OK)
        .await?;
    let mut body = resp.into_body();
    let (mut first, mut n, mut hasher) = (None, 0usize, Sha256::new());
    let mut buf = match check {
        Check::Copy(buf) => Some(buf),
        Check::Inline => None,
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            conn.reset();
            format!("GET {path}: reading body after {n} bytes: {e}")
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        first.get_or_insert_with(|| start.elapsed());
        match buf.as_deref_mut() {
            Some(b) if n + data.len() <= b.len() => b[n..n + data.len()].copy_from_slice(&data),
            Some(_) => return Err(format!("GET {path}: more than {} bytes", blob.size)),
            None => hasher.update(&data),
        }
        n += data.len();
    }
    let seconds = start.elapsed().as_secs_f64();
    if n as u64 != blob.size {
        return Err(format!("GET {path}: got {n} bytes, want {}", blob.size));
    }
    let digest = match buf {
        Some(b) => {
            let held = std::mem::take(b);
            let (held, digest) = tokio::task::spawn_blocking(move || {
                let digest = Sha256::digest(&held[..n]);
                (held, digest)
            })
            .await
            .map_err(|e| format!("hashing: {e}"))?;
            *b = held;
            digest
        }
        None => hasher.finalize(),
    };
    let got = format!("sha256:{}", hex::encode(digest));
    if got != blob.digest {
        return Err(format!("GET {path}: wrong body: its digest is {got}"));
    }
    Ok(Pull::new(n as u64, seconds, first.unwrap_or_default().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::io::{Read, Write};

    use super::*;
    use crate::blob::TAIL_LEN;
    use crate::client::{Credentials, Target};

    /// A server that answers one request with a 200 of `len` bytes and `body` (a thread, plain std I/O).
    fn serve(body: Vec<u8>, len: usize) -> Arc<Target> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let (mut req, mut buf) = (Vec::new(), [0u8; 1024]);
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            let _ = sock.write_all(head.as_bytes()).and_then(|()| sock.write_all(&body));
        });
        Arc::new(Target::resolve(&url, None, &Credentials::default()).unwrap())
    }

    fn blob_of(bytes: &[u8]) -> Blob {
        Blob {
            size: bytes.len() as u64,
            tail: [0; TAIL_LEN],
            digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        }
    }

    #[tokio::test]
    async fn bodies_are_checked_both_ways() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let blob = blob_of(&body);
        for copy in [true, false] {
            let mut buf = copy.then(|| vec![0u8; body.len()]);
            let mut held = buf.as_mut();
            let mut conn = Conn::new(serve(body.clone(), body.len()));
            let pull = timed_get(&mut conn, "/v2/a/blobs/x", &blob, Check::with(&mut held))
                .await
                .unwrap();
            assert!(pull.seconds > 0.0 && pull.ttfb_ms <= pull.seconds * 1000.0, "{pull:?}");

            let mut wrong = body.clone();
            wrong[1000] ^= 1;
            let mut conn = Conn::new(serve(wrong, body.len()));
            let e = timed_get(&mut conn, "/v2/a/blobs/x", &blob, Check::with(&mut held))
                .await
                .unwrap_err();
            assert!(e.contains("wrong body"), "{e}");

            let mut conn = Conn::new(serve(body[..1000].to_vec(), 1000));
            let e = timed_get(&mut conn, "/v2/a/blobs/x", &blob, Check::with(&mut held))
                .await
                .unwrap_err();
            assert!(e.contains("got 1000 bytes, want 300000"), "{e}");
        }
    }

    #[test]
    fn throughput_in_gb() {
        let p = Pull::new(2_000_000_000, 2.0, 0.0015);
        assert_eq!((p.gb_per_s, p.ttfb_ms), (1.0, 1.5));
    }
}
