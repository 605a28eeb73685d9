//! Coalesced blob fills: one upstream download per digest, however many clients ask for it at
//! once, streamed to each of them as it arrives.
//!
//! The first request for a blob that is not stored starts a fill: a task, independent of that
//! request, that downloads the blob from the upstream, writes each piece to an unnamed spool
//! file and hands it to the engine as the body of one upload (hashed as it streams and
//! committed under the digest only when the digest matches). Every request for the digest
//! while the fill runs — the first included — reads the spool file from its own position,
//! waiting for the bytes it needs. The last byte of the blob is held back from every reader
//! until the engine has verified and committed it: on a mismatch, or when the upstream fails
//! for good, the readers' streams end with an error, so no client ever receives a complete
//! wrong blob. An interrupted download resumes with a `Range` request at the offset reached.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use berth_engine::{ByteRange, Digest, Engine, RepoName};

use super::upstream::{BlobBody, Upstream, UpstreamError};

/// Bytes gathered from the upstream before one write to the spool file.
const BATCH: usize = 256 * 1024;
/// Most bytes one read of the spool file hands to a client.
const READ: usize = 256 * 1024;
/// Times an interrupted download is resumed before the fill fails.
const RESUMES: u32 = 3;
/// Bytes of the latest pieces kept in memory, so that readers keeping up with the download take
/// them from there (no read of the spool file, no copy).
const RECENT: usize = 8 << 20;

/// Why a fill did not store its blob.
#[derive(Debug, Clone)]
pub enum FillFailure {
    /// The upstream refused or could not answer.
    Upstream(UpstreamError),
    /// The bytes did not hash to the digest: nothing was stored.
    Mismatch(String),
    /// The local store refused the blob (full, a cap on open uploads, …).
    Store(Arc<berth_engine::Error>),
}

impl std::fmt::Display for FillFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillFailure::Upstream(e) => write!(f, "{e}"),
            FillFailure::Mismatch(m) => write!(f, "{m}"),
            FillFailure::Store(e) => write!(f, "storing the blob failed: {e}"),
        }
    }
}

#[derive(Clone)]
enum State {
    /// Waiting for the upstream's answer.
    Starting,
    /// `written` of `size` bytes are in the spool file.
    Running { size: u64, written: u64 },
    /// Verified and committed.
    Done { size: u64 },
    /// Given up; nothing is stored.
    Failed(FillFailure),
}

/// One blob being fetched.
pub struct Fill {
    state: watch::Receiver<State>,
    spool: OnceLock<Arc<File>>,
    /// The latest pieces, by offset, at most [`RECENT`] bytes.
    recent: Mutex<Recent>,
    /// The token another process presents to read it (see [`super::peer`]).
    token: String,
    /// The repository it was started for (the one the blob is linked into).
    repo: RepoName,
}

/// The latest pieces of a download and their bytes.
#[derive(Default)]
struct Recent {
    pieces: std::collections::VecDeque<(u64, Bytes)>,
    held: usize,
}

impl Fill {
    /// The repository it was started for.
    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    /// Whether `token` is this download's (compared in constant time).
    pub fn admits(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.token.as_bytes().ct_eq(token.as_bytes()))
    }

    /// Keep the piece at `at` among the latest ones.
    fn keep(&self, at: u64, piece: Bytes) {
        let mut r = self.recent.lock();
        r.held += piece.len();
        r.pieces.push_back((at, piece));
        while r.held > RECENT && r.pieces.len() > 1 {
            if let Some((_, p)) = r.pieces.pop_front() {
                r.held -= p.len();
            }
        }
    }

    /// The bytes from `pos` (before `end`) among the latest pieces (a reader that keeps up
    /// wants one of the last few).
    fn recent(&self, pos: u64, end: u64) -> Option<Bytes> {
        let r = self.recent.lock();
        let (at, piece) = r
            .pieces
            .iter()
            .rev()
            .find(|(at, p)| *at <= pos && pos < at + p.len() as u64)?;
        let from = (pos - at) as usize;
        let to = ((end - at) as usize).min(piece.len());
        Some(piece.slice(from..to))
    }

    /// The blob's size, once the upstream has answered (or why the fill failed).
    pub async fn size(&self) -> Result<u64, FillFailure> {
        let mut rx = self.state.clone();
        loop {
            match &*rx.borrow_and_update() {
                State::Starting => {}
                State::Running { size, .. } | State::Done { size } => return Ok(*size),
                State::Failed(f) => return Err(f.clone()),
            }
            if rx.changed().await.is_err() {
                return Err(gone());
            }
        }
    }

    /// Once the fill has ended (stored or failed).
    pub async fn settled(&self) {
        let mut rx = self.state.clone();
        loop {
            if matches!(&*rx.borrow_and_update(), State::Done { .. } | State::Failed(_)) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// `range` of the blob, as the fill brings it in. The stream ends with an error if the
    /// fill fails; the blob's last byte comes only after the blob is verified and stored.
    pub fn stream(self: &Arc<Self>, range: ByteRange) -> FillStream {
        let (tx, rx) = mpsc::channel(2);
        let fill = self.clone();
        tokio::spawn(async move {
            let (mut pos, end) = (range.start, range.start + range.len);
            while pos < end {
                let piece = fill.read(pos, end).await;
                let failed = piece.is_err();
                if let Ok(b) = &piece {
                    pos += b.len() as u64;
                }
                // The client went away: stop reading for it.
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
            }
        });
        FillStream(rx)
    }

    /// The next bytes from `pos` (before `end`), once the fill has them.
    async fn read(&self, pos: u64, end: u64) -> std::io::Result<Bytes> {
        let mut rx = self.state.clone();
        let readable = loop {
            let ready = match &*rx.borrow_and_update() {
                State::Starting => Ok(None),
                // Everything but the last byte until the digest is checked.
                State::Running { size, written } => Ok(Some((*written).min(size.saturating_sub(1)))),
                State::Done { size } => Ok(Some(*size)),
                State::Failed(f) => Err(f.to_string()),
            };
            match ready {
                Err(why) => return Err(std::io::Error::other(why)),
                Ok(Some(r)) if r > pos => break r,
                Ok(_) => {}
            }
            if rx.changed().await.is_err() {
                return Err(std::io::Error::other(gone().to_string()));
            }
        };
        let until = readable.min(end);
        if let Some(b) = self.recent(pos, until) {
            return Ok(b);
        }
        let file = self
            .spool
            .get()
            .cloned()
            .ok_or_else(|| std::io::Error::other("the fill has no spool file"))?;
        let n = (until - pos).min(READ as u64) as usize;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// The bytes of a range of a blob being filled (see [`Fill::stream`]).
pub struct FillStream(mpsc::Receiver<std::io::Result<Bytes>>);

impl futures_util::Stream for FillStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn gone() -> FillFailure {
    FillFailure::Upstream(UpstreamError::Unavailable {
        reason: "the fill stopped".into(),
        retry_after: None,
    })
}

/// What a fill needs to know.
pub struct Job {
    /// Where the blob comes from.
    pub upstream: Arc<Upstream>,
    /// Its repository there.
    pub upstream_repo: String,
    /// The repository here that links it.
    pub local: RepoName,
    /// Its digest.
    pub digest: Digest,
    /// Who asked first (the upload cap's owner).
    pub owner: String,
    /// Where it is stored.
    pub engine: Arc<Engine>,
    /// What another process presents to stream it from this one (see [`super::peer`]).
    pub token: String,
}

/// The fills in progress, by digest.
pub struct Fills {
    running: Mutex<HashMap<Digest, Arc<Fill>>>,
    spool: PathBuf,
}

/// How a request got its fill.
pub enum Joined {
    /// It started the fill.
    Started(Arc<Fill>),
    /// The fill was running already.
    Coalesced(Arc<Fill>),
}

/// What a finished fill reports (for metrics and logs).
pub struct Outcome {
    /// The digest.
    pub digest: Digest,
    /// Bytes received from the upstream (more than the blob's size after resumed downloads that
    /// were not honoured as ranges).
    pub received: u64,
    /// Downloads resumed with a Range request.
    pub resumed: u32,
    /// How it ended.
    pub result: Result<u64, FillFailure>,
}

impl Fills {
    /// No fills; spool files go into `spool` (they are unnamed: nothing is left there after a
    /// crash).
    pub fn new(spool: PathBuf) -> Fills {
        Fills {
            running: Mutex::new(HashMap::new()),
            spool,
        }
    }

    /// Fills in progress.
    pub fn len(&self) -> usize {
        self.running.lock().len()
    }

    /// Whether none is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fill of `digest` in progress, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.running.lock().get(digest).cloned()
    }

    /// The fill of `job.digest`: the running one, or a new one. `done` is called when a new
    /// one ends.
    pub fn join_or_start(self: &Arc<Self>, job: Job, done: impl FnOnce(Outcome) + Send + 'static) -> Joined {
        let mut running = self.running.lock();
        if let Some(f) = running.get(&job.digest) {
            return Joined::Coalesced(f.clone());
        }
        let (tx, rx) = watch::channel(State::Starting);
        let fill = Arc::new(Fill {
            state: rx,
            spool: OnceLock::new(),
            recent: Mutex::default(),
            token: job.token.clone(),
            repo: job.local.clone(),
        });
        running.insert(job.digest.clone(), fill.clone());
        drop(running);
        let fills = self.clone();
        let leader = fill.clone();
        tokio::spawn(async move {
            let digest = job.digest.clone();
            let mut report = Outcome {
                digest: digest.clone(),
                received: 0,
                resumed: 0,
                result: Ok(0),
            };
            let result = fetch(&job, &fills.spool, &leader, &tx, &mut report).await;
            tx.send_replace(match &result {
                Ok(size) => State::Done { size: *size },
                Err(f) => State::Failed(f.clone()),
            });
            // Committed (or failed) before it leaves the table: a request that no longer
            // finds the fill finds the blob.
            fills.running.lock().remove(&digest);
            report.result = result;
            done(report);
        });
        Joined::Started(fill)
    }
}

type Commit = tokio::task::JoinHandle<berth_engine::Result<u64>>;

/// Download, spool and store the blob; its size when stored.
async fn fetch(
    job: &Job,
    spool: &std::path::Path,
    fill: &Fill,
    state: &watch::Sender<State>,
    report: &mut Outcome,
) -> Result<u64, FillFailure> {
    let digest_text = job.digest.to_string();
    let first = job
        .upstream
        .blob(&job.upstream_repo, &digest_text, 0)
        .await
        .map_err(FillFailure::Upstream)?;
    let size = first.total.ok_or_else(|| {
        FillFailure::Upstream(UpstreamError::Invalid(format!(
            "{}: the answer for {digest_text} has no length",
            job.upstream.name()
        )))
    })?;
    let file = tempfile::tempfile_in(spool).map_err(|e| FillFailure::Store(Arc::new(berth_engine::Error::Io(e))))?;
    let file = Arc::new(file);
    let _ = fill.spool.set(file.clone());
    let store_err = |e: berth_engine::Error| FillFailure::Store(Arc::new(e));
    let id = job
        .engine
        .upload_start_as(&job.local, &job.owner)
        .await
        .map_err(store_err)?;
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, String>>(8);
    let commit: Commit = {
        let (engine, local, digest) = (job.engine.clone(), job.local.clone(), job.digest.clone());
        tokio::spawn(async move {
            let body = futures_util::stream::unfold(body_rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
            engine.upload_finish(&local, id, &digest, None, Some(size), body).await
        })
    };
    state.send_replace(State::Running { size, written: 0 });
    let copied = copy(job, first.body, size, fill, &file, &body_tx, state, report).await;
    if let Err(f) = copied {
        let _ = body_tx.send(Err(f.to_string())).await;
        drop(body_tx);
        let _ = commit.await;
        let _ = job.engine.upload_cancel(&job.local, id).await;
        return Err(f);
    }
    drop(body_tx);
    match commit.await {
        Ok(Ok(stored)) => Ok(stored),
        Ok(Err(berth_engine::Error::DigestMismatch { expected, actual })) => {
            let _ = job.engine.upload_cancel(&job.local, id).await;
            Err(FillFailure::Mismatch(format!(
                "{} sent bytes for {expected} that hash to {actual}; nothing was stored",
                job.upstream.name()
            )))
        }
        Ok(Err(e)) => {
            let _ = job.engine.upload_cancel(&job.local, id).await;
            Err(store_err(e))
        }
        Err(e) => Err(store_err(berth_engine::Error::Io(std::io::Error::other(e)))),
    }
}

/// Pieces of a download gathered for one write, as they arrived.
#[derive(Default)]
struct Batch {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push(piece);
        }
    }
}

/// What of `chunk` is left after `skip` more bytes are dropped (counting them off).
fn after(skip: &mut u64, chunk: Bytes) -> Bytes {
    let n = (*skip).min(chunk.len() as u64);
    *skip -= n;
    chunk.slice(n as usize..)
}

/// Copy the upstream's bytes into the spool file and the engine's upload, resuming an
/// interrupted download at the offset reached.
#[allow(clippy::too_many_arguments)]
async fn copy(
    job: &Job,
    mut body: BlobBody,
    size: u64,
    fill: &Fill,
    file: &Arc<File>,
    to_engine: &mpsc::Sender<Result<Bytes, String>>,
    state: &watch::Sender<State>,
    report: &mut Outcome,
) -> Result<(), FillFailure> {
    // Bytes at the start of `body` that are stored already (a resumed download whose upstream
    // ignored the Range and sent the blob from its start).
    let mut skip = 0u64;
    let mut written = 0u64;
    // What arrived since the last write, as it arrived (no copy).
    let mut batch = Batch::default();
    loop {
        let next = body.next().await;
        let mut ended = None;
        match next {
            Some(Ok(chunk)) => {
                report.received += chunk.len() as u64;
                batch.push(after(&mut skip, chunk));
                // Take what else is ready now, up to a batch, without waiting.
                while batch.len < BATCH {
                    match body.next().now_or_never() {
                        Some(Some(Ok(c))) => {
                            report.received += c.len() as u64;
                            batch.push(after(&mut skip, c));
                        }
                        Some(other) => {
                            ended = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
            }
            other => ended = Some(other),
        }
        if batch.len > 0 {
            let Batch { pieces, len } = std::mem::take(&mut batch);
            let n = len as u64;
            if written + n > size {
                return Err(FillFailure::Mismatch(format!(
                    "{} sent more than the {size} bytes it announced for {}; nothing was stored",
                    job.upstream.name(),
                    job.digest
                )));
            }
            // Readers take the pieces from memory at once; the spool file (for readers that
            // fall behind or join late) and the upload get them meanwhile.
            let start = written;
            for p in &pieces {
                fill.keep(written, p.clone());
                written += p.len() as u64;
            }
            state.send_replace(State::Running { size, written });
            let (f, ps) = (file.clone(), pieces.clone());
            let spooled = tokio::task::spawn_blocking(move || {
                let mut at = start;
                for p in &ps {
                    f.write_all_at(p, at)?;
                    at += p.len() as u64;
                }
                Ok::<_, std::io::Error>(())
            });
            let send = async {
                for p in pieces {
                    to_engine.send(Ok(p)).await?;
                }
                Ok::<_, mpsc::error::SendError<Result<Bytes, String>>>(())
            };
            let (spooled, sent) = tokio::join!(spooled, send);
            spooled
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|e| FillFailure::Store(Arc::new(berth_engine::Error::Io(e))))?;
            if sent.is_err() {
                // The upload ended early: its error is the commit's.
                return Ok(());
            }
        }
        match ended {
            None => continue,
            Some(Some(Ok(_))) => unreachable!("a chunk is never an end"),
            Some(None) if written == size => return Ok(()),
            Some(end) => {
                // Ended early or failed: resume from `written`.
                let why = match end {
                    Some(Err(e)) => e.to_string(),
                    _ => format!("the answer ended after {written} of {size} bytes"),
                };
                if report.resumed >= RESUMES {
                    return Err(FillFailure::Upstream(UpstreamError::Unavailable {
                        reason: format!(
                            "{}: downloading {} failed {} times, last: {why}",
                            job.upstream.name(),
                            job.digest,
                            RESUMES + 1
                        ),
                        retry_after: None,
                    }));
                }
                report.resumed += 1;
                tracing::info!(upstream = job.upstream.name(), digest = %job.digest, offset = written, reason = %why, "resuming an interrupted blob download");
                let again = job
                    .upstream
                    .blob(&job.upstream_repo, &job.digest.to_string(), written)
                    .await
                    .map_err(FillFailure::Upstream)?;
                skip = if again.start == written { 0 } else { written };
                if again.start != written && again.start != 0 {
                    return Err(FillFailure::Upstream(UpstreamError::Invalid(format!(
                        "{}: asked for {} from byte {written}, got bytes from {}",
                        job.upstream.name(),
                        job.digest,
                        again.start
                    ))));
                }
                body = again.body;
            }
        }
    }
}
