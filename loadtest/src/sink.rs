//! `berth-loadtest sink`: a calibration target for pushes, as nginx is for pulls.
//!
//! It answers the upload requests of `push-mono` and `push-chunked` (`GET /v2/`, `POST` an upload,
//! `PATCH`, `PUT ?digest=`, `PUT` a manifest) like a registry, receives every body over the same
//! loopback TCP and SHA-256s it, checks the digest — and stores nothing. A run against it shows
//! how fast this machine can take a push at all, with the same client on the same cores: the
//! ceiling for any registry that hashes what it receives, before a byte reaches a disk.
//!
//! One thread per connection reads each body into 1 MiB buffers; with `--hash pipelined` (the
//! default) a second thread hashes filled buffers while the first reads the next, as a registry
//! that hashes beside receiving does; `inline` hashes in the reading thread; `none` only reads.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};

/// Arguments of `sink`.
#[derive(Debug, Args, Clone)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5009")]
    pub listen: String,
    /// How bodies are hashed.
    #[arg(long, value_enum, default_value = "pipelined")]
    pub hash: HashMode,
}

/// How the sink hashes what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HashMode {
    /// A second thread hashes each filled 1 MiB buffer while the next is read.
    Pipelined,
    /// The reading thread hashes each read.
    Inline,
    /// No hashing: receive and discard (digests are not checked).
    None,
}

/// Read size and pipelined buffer size.
const BUF: usize = 1024 * 1024;
/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Upload sessions: id → the hash of what their `PATCH`es sent so far.
type Sessions = Arc<Mutex<HashMap<u64, Sha256>>>;

/// Listen and serve until killed; returns an exit status when the address cannot be bound.
pub fn run(args: &SinkArgs) -> i32 {
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: sink: cannot listen on {}: {e}", args.listen);
            return 2;
        }
    };
    eprintln!("sink listening on {} (hash: {:?})", args.listen, args.hash);
    serve(listener, args.hash);
    0
}

/// Accept connections forever, one thread each.
pub fn serve(listener: TcpListener, mode: HashMode) {
    let sessions: Sessions = Arc::default();
    let next_id = Arc::new(AtomicU64::new(1));
    for stream in listener.incoming().flatten() {
        let (sessions, next_id) = (sessions.clone(), next_id.clone());
        std::thread::spawn(move || {
            let _ = Connection::new(stream, mode, sessions, next_id).serve();
        });
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq)]
struct Head {
    method: String,
    path: String,
    query: String,
    content_length: u64,
}

/// Parse a request head (without the blank line); `None` when it is not one this sink takes.
fn parse_head(text: &str) -> Option<Head> {
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut content_length = 0;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    Some(Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        content_length,
    })
}

/// The `digest` query parameter.
fn digest_param(query: &str) -> Option<&str> {
    query.split('&').find_map(|p| p.strip_prefix("digest="))
}

/// `sha256:<hex>` of a finished hash.
fn digest_of(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The repository and the upload id of `/v2/<name>/blobs/uploads/<id>`.
fn upload_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v2/")?;
    let (name, id) = rest.rsplit_once("/blobs/uploads/")?;
    Some((name, id))
}

struct Connection {
    stream: TcpStream,
    mode: HashMode,
    sessions: Sessions,
    next_id: Arc<AtomicU64>,
    /// Bytes read past the current request head.
    pending: Vec<u8>,
    /// The read buffer of the `inline` and `none` modes (allocated at the first body).
    read_buf: Vec<u8>,
    /// The pipelined hasher thread: filled buffers go in, empty ones come back.
    pipe: Option<Pipe>,
}

/// The channels to a connection's hashing thread: jobs in, empty buffers and finished hashes back.
type Pipe = (SyncSender<Job>, Receiver<Vec<u8>>, Receiver<Sha256>);

/// Work for the hashing thread.
enum Job {
    Start(Sha256),
    Data(Vec<u8>, usize),
    Finish,
}

impl Connection {
    fn new(stream: TcpStream, mode: HashMode, sessions: Sessions, next_id: Arc<AtomicU64>) -> Connection {
        Connection {
            stream,
            mode,
            sessions,
            next_id,
            pending: Vec::new(),
            read_buf: Vec::new(),
            pipe: None,
        }
    }

    fn serve(mut self) -> io::Result<()> {
        let _ = self.stream.set_nodelay(true);
        while let Some(head) = self.read_head()? {
            self.handle(head)?;
        }
        Ok(())
    }

    /// The next request head, or `None` at the end of the connection.
    fn read_head(&mut self) -> io::Result<Option<Head>> {
        let mut buf = std::mem::take(&mut self.pending);
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = parse_head(std::str::from_utf8(&buf[..end]).unwrap_or(""));
                self.pending = buf[end + 4..].to_vec();
                return match head {
                    Some(h) => Ok(Some(h)),
                    None => {
                        self.respond("400 Bad Request", &[], r#"{"errors":[{"code":"UNSUPPORTED","message":"the sink takes requests with Content-Length only"}]}"#)?;
                        Ok(None)
                    }
                };
            }
            if buf.len() > MAX_HEAD {
                return Ok(None);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn handle(&mut self, head: Head) -> io::Result<()> {
        let method = head.method.as_str();
        if method == "GET" && head.path == "/v2/" {
            return self.respond("200 OK", &[], "{}");
        }
        if method == "POST" && head.path.ends_with("/blobs/uploads/") {
            self.body(Sha256::new(), head.content_length)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Sha256::new());
            let location = format!("{}{id}", head.path);
            return self.respond("202 Accepted", &[("Location", &location), ("Range", "0-0")], "");
        }
        if let Some((name, id)) = upload_path(&head.path)
            && (method == "PATCH" || method == "PUT")
        {
            let id: u64 = id.parse().unwrap_or(0);
            let Some(hasher) = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) else {
                self.body(Sha256::new(), head.content_length)?;
                return self.error("404 Not Found", "BLOB_UPLOAD_UNKNOWN", "no such upload");
            };
            let hasher = self.body(hasher, head.content_length)?;
            if method == "PATCH" {
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, hasher);
                return self.respond("202 Accepted", &[("Location", &head.path)], "");
            }
            let Some(expected) = digest_param(&head.query).map(|d| d.replace("%3A", ":")) else {
                return self.error("400 Bad Request", "DIGEST_INVALID", "no digest parameter");
            };
            if self.mode != HashMode::None && digest_of(hasher) != expected {
                return self.error(
                    "400 Bad Request",
                    "DIGEST_INVALID",
                    "the body does not match the digest",
                );
            }
            let location = format!("/v2/{name}/blobs/{expected}");
            return self.respond(
                "201 Created",
                &[("Location", &location), ("Docker-Content-Digest", &expected)],
                "",
            );
        }
        if method == "PUT" && head.path.contains("/manifests/") {
            let digest = digest_of(self.body(Sha256::new(), head.content_length)?);
            return self.respond(
                "201 Created",
                &[("Location", &head.path), ("Docker-Content-Digest", &digest)],
                "",
            );
        }
        self.body(Sha256::new(), head.content_length)?;
        if method == "HEAD" {
            return self.respond("404 Not Found", &[], "");
        }
        self.error("404 Not Found", "UNSUPPORTED", "the sink answers uploads only")
    }

    /// Read a body of `len` bytes, hashing it onto `hasher` as the mode says.
    fn body(&mut self, mut hasher: Sha256, len: u64) -> io::Result<Sha256> {
        let from_pending = self.pending.len().min(len as usize);
        if self.mode != HashMode::None {
            hasher.update(&self.pending[..from_pending]);
        }
        self.pending.drain(..from_pending);
        let mut left = len - from_pending as u64;
        if self.mode == HashMode::Pipelined && left > 0 {
            return self.body_pipelined(hasher, left);
        }
        if left > 0 && self.read_buf.is_empty() {
            self.read_buf = vec![0u8; BUF];
        }
        while left > 0 {
            let want = self.read_buf.len().min(left as usize);
            let n = self.stream.read(&mut self.read_buf[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if self.mode == HashMode::Inline {
                hasher.update(&self.read_buf[..n]);
            }
            left -= n as u64;
        }
        Ok(hasher)
    }

    fn body_pipelined(&mut self, hasher: Sha256, mut left: u64) -> io::Result<Sha256> {
        let (jobs, empties, done) = self.pipe.get_or_insert_with(|| {
            let (job_tx, job_rx) = sync_channel::<Job>(4);
            let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(8);
            let (done_tx, done_rx) = sync_channel::<Sha256>(1);
            for _ in 0..4 {
                let _ = empty_tx.send(vec![0u8; BUF]);
            }
            std::thread::spawn(move || {
                let mut hasher = Sha256::new();
                for job in job_rx {
                    match job {
                        Job::Start(h) => hasher = h,
                        Job::Data(buf, n) => {
                            hasher.update(&buf[..n]);
                            let _ = empty_tx.send(buf);
                        }
                        Job::Finish => {
                            let _ = done_tx.send(std::mem::take(&mut hasher));
                        }
                    }
                }
            });
            (job_tx, empty_rx, done_rx)
        });
        let lost = || io::Error::other("the hashing thread ended");
        jobs.send(Job::Start(hasher)).map_err(|_| lost())?;
        while left > 0 {
            let mut buf = empties.recv().map_err(|_| lost())?;
            let mut fill = 0;
            while fill < buf.len() && left > 0 {
                let want = (buf.len() - fill).min(left as usize);
                let n = self.stream.read(&mut buf[fill..fill + want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                fill += n;
                left -= n as u64;
            }
            jobs.send(Job::Data(buf, fill)).map_err(|_| lost())?;
        }
        jobs.send(Job::Finish).map_err(|_| lost())?;
        done.recv().map_err(|_| lost())
    }

    fn error(&mut self, status: &str, code: &str, message: &str) -> io::Result<()> {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":null}}]}}"#);
        self.respond(status, &[("Content-Type", "application/json")], &body)
    }

    fn respond(&mut self, status: &str, headers: &[(&str, &str)], body: &str) -> io::Result<()> {
        let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(body);
        self.stream.write_all(out.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let h = parse_head("PUT /v2/a/b/blobs/uploads/7?digest=sha256:ab HTTP/1.1\r\nHost: x\r\ncontent-length: 12")
            .expect("a head");
        assert_eq!(h.method, "PUT");
        assert_eq!(h.path, "/v2/a/b/blobs/uploads/7");
        assert_eq!(digest_param(&h.query), Some("sha256:ab"));
        assert_eq!(h.content_length, 12);
        assert_eq!(upload_path(&h.path), Some(("a/b", "7")));
        assert!(parse_head("PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked").is_none());
    }

    /// Over a real socket: a pushed body's digest is checked in every hashing mode, chunked
    /// uploads continue their hash, and a wrong digest is refused with a spec error body.
    #[test]
    fn checks_digests_over_tcp() {
        let body: Vec<u8> = (0..3 * BUF + 12345).map(|i| (i % 251) as u8).collect();
        let good = digest_of(Sha256::new_with_prefix(&body));
        for mode in [HashMode::Pipelined, HashMode::Inline] {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            std::thread::spawn(move || serve(listener, mode));
            let mut s = TcpStream::connect(addr).expect("connect");
            let mut ask = |req: String, body: &[u8]| -> String {
                s.write_all(req.as_bytes()).expect("send");
                s.write_all(body).expect("send body");
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).expect("read");
                    assert!(n > 0, "connection closed");
                    got.extend_from_slice(&b[..n]);
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                while got.len() < head_end + len {
                    let n = s.read(&mut b).expect("read");
                    got.extend_from_slice(&b[..n]);
                }
                String::from_utf8_lossy(&got).to_string()
            };
            let post = |ask: &mut dyn FnMut(String, &[u8]) -> String| {
                let r = ask(
                    "POST /v2/r/blobs/uploads/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n".into(),
                    &[],
                );
                assert!(r.starts_with("HTTP/1.1 202"), "{r}");
                r.lines()
                    .find_map(|l| l.strip_prefix("Location: "))
                    .expect("location")
                    .to_string()
            };
            let put = |loc: &str, digest: &str, body: &[u8]| {
                format!(
                    "PUT {loc}?digest={digest} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
            };
            let loc = post(&mut ask);
            let r = ask(put(&loc, &good, &body), &body);
            assert!(r.starts_with("HTTP/1.1 201"), "{mode:?}: {r}");
            let loc = post(&mut ask);
            let (a, b) = body.split_at(BUF + 7);
            let r = ask(
                format!("PATCH {loc} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", a.len()),
                a,
            );
            assert!(r.starts_with("HTTP/1.1 202"), "{r}");
            let r = ask(put(&loc, &good, b), b);
            assert!(r.starts_with("HTTP/1.1 201"), "{mode:?} chunked: {r}");
            let loc = post(&mut ask);
            let bad = digest_of(Sha256::new_with_prefix(b"other"));
            let r = ask(put(&loc, &bad, &body), &body);
            assert!(r.starts_with("HTTP/1.1 400"), "{r}");
            assert!(r.contains(r#""code":"DIGEST_INVALID""#), "{r}");
        }
    }
}
