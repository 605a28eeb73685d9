//! Upload sessions whose bytes go to an object store's multipart parts and whose state is a row
//! of the shared database ([`SessionRecords`]), so that any replica continues any session.
//!
//! A request claims its session at the offset it declares, hashes the body as it streams and
//! cuts it into parts of the configured size (up to three parts uploading while the next fills,
//! each taking room in one memory budget shared by every request), keeps what is left after the last full part as a piece
//! of the session's tail, and saves the new state (offset, hash state, parts' ETags, tail) as it
//! lets the claim go. The multipart upload is started with the first full part; a blob smaller
//! than one part is stored with one PUT. The last request completes the multipart upload in
//! place, and the blob's record names the object: the blob is never copied or read back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::blobs::object_key;
use super::client::S3Client;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::engine::ChunkRange;
use crate::error::{Error, ObjectStoreError, Result};
use crate::name::{RepoName, UploadId};
use crate::session_store::{SessionRecords, SessionRow, SessionUpdate, TailChange};
use crate::store::{BlobLink, Outcome, Placement, StagedBlob};
use crate::upload_caps::UploadLimits;
use crate::upload_store::{Chunk, UploadStore};

/// How long a request's claim on its session lasts unless renewed (it is renewed every third
/// of this while the request streams; a replica that dies lets it lapse).
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// The most parts of one request uploading at once (each holds its room in the budget).
const PARTS_IN_FLIGHT: usize = 3;
/// The most parts S3 takes in one upload.
const MAX_PARTS: usize = 10_000;

/// Upload sessions in an object store, their rows in `R`.
pub struct S3Uploads<R> {
    client: S3Client,
    records: R,
    part_size: usize,
    limits: UploadLimits,
    open: Arc<AtomicUsize>,
    memory: Memory,
}

/// The budget of part buffers, shared by every request of the process: room for one part is
/// taken before a buffer starts to fill, and given back when its part is stored (or the
/// request ends).
#[derive(Clone)]
struct Memory {
    room: Arc<Semaphore>,
    per_part: u32,
}

/// The budget's unit.
const UNIT: u64 = 64 << 10;

impl Memory {
    fn new(total: u64, part_size: u64) -> Memory {
        let per_part = part_size.div_ceil(UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        let units = (total / UNIT)
            .max(u64::from(per_part))
            .min(Semaphore::MAX_PERMITS as u64) as usize;
        Memory {
            room: Arc::new(Semaphore::new(units)),
            per_part,
        }
    }

    /// Room for one part's buffer, once there is some.
    async fn part(&self) -> Result<OwnedSemaphorePermit> {
        self.room
            .clone()
            .acquire_many_owned(self.per_part)
            .await
            .map_err(|_| Error::ObjectStore(ObjectStoreError::Failed("the part buffers were closed".into())))
    }
}

impl<R: SessionRecords + Clone> S3Uploads<R> {
    /// Sessions in the bucket `client` reaches, rows in `records`, parts of `part_size` bytes,
    /// the part buffers of all requests within `memory` bytes (at least one part).
    pub fn new(client: S3Client, records: R, part_size: u64, memory: u64, limits: UploadLimits) -> S3Uploads<R> {
        S3Uploads {
            client,
            records,
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            memory: Memory::new(memory, part_size),
        }
    }

    /// The same sessions under other caps.
    pub fn with_limits(mut self, limits: UploadLimits) -> S3Uploads<R> {
        self.limits = limits;
        self
    }

    /// Claim a session for one request, renewing the claim until the returned guard drops.
    async fn claim(&self, repo: &RepoName, id: UploadId, range: Option<ChunkRange>) -> Result<(SessionRow, Claim<R>)> {
        if let Some(r) = range
            && r.end < r.start
        {
            let offset = self.records.session_offset(repo, id).await?;
            return Err(Error::RangeMismatch { start: r.start, offset });
        }
        let (row, token) = self
            .records
            .claim_session(repo, id, range.map(|r| r.start), CLAIM_LEASE)
            .await?;
        let (records, tok) = (self.records.clone(), token.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(CLAIM_LEASE / 3).await;
                if let Err(e) = records.renew_claim(id, &tok, CLAIM_LEASE).await {
                    tracing::warn!(upload = %id, error = %e, "could not renew an upload's claim");
                    return;
                }
            }
        });
        Ok((
            row,
            Claim {
                records: self.records.clone(),
                id,
                token,
                renewer,
            },
        ))
    }

    /// Stream a chunk into parts from the session's state; `load_tail`: take the tail's pieces
    /// into the buffer first (the last request, which needs every byte).
    async fn stream<S, E>(&self, id: UploadId, row: &SessionRow, chunk: Chunk<S>, load_tail: bool) -> Result<Cut>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let Chunk { range, length, body } = chunk;
        let declared = range.map(|r| r.end - r.start + 1).or(length);
        let mut w = PartWriter {
            client: &self.client,
            records: &self.records,
            key: object_key(id),
            id,
            part_size: self.part_size,
            multipart: row.multipart.clone(),
            parts_before: row.etags.len(),
            new_etags: Vec::new(),
            buf: BytesMut::new(),
            buf_start: row.offset,
            old_tail: row.tail,
            tail_taken: false,
            inflight: VecDeque::new(),
            hasher: row.hasher.clone(),
            memory: &self.memory,
            room: None,
        };
        if load_tail {
            w.take_tail().await?;
        }
        let mut written = 0u64;
        let mut body = std::pin::pin!(body.map(|f| f.map_err(|e| Error::Body(e.to_string()))));
        while let Some(frame) = body.next().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    w.abandon().await;
                    return Err(e);
                }
            };
            written += frame.len() as u64;
            if declared.is_some_and(|d| written > d) {
                break;
            }
            w.hasher.update(&frame);
            if let Err(e) = w.push(&frame).await {
                w.abandon().await;
                return Err(e);
            }
        }
        if let Some(r) = range {
            let d = r.end - r.start + 1;
            if written != d {
                w.abandon().await;
                return Err(Error::SizeMismatch {
                    declared: d,
                    actual: written,
                });
            }
        }
        w.settle().await?;
        Ok(Cut {
            offset: row.offset + written,
            hasher: w.hasher,
            multipart: w.multipart,
            old_etags: row.etags.clone(),
            new_etags: w.new_etags,
            buf: w.buf,
            buf_start: w.buf_start,
            old_tail: w.old_tail,
            tail_taken: w.tail_taken,
            _room: w.room.take(),
        })
    }

    /// Remove what a session stored: its unfinished multipart upload, its row, and its object
    /// unless a blob's record names it.
    async fn discard(&self, id: UploadId, multipart: Option<&str>) -> Result<()> {
        let key = object_key(id);
        if let Some(m) = multipart {
            self.client.abort_multipart(&key, m).await?;
        }
        self.records.end_session(id).await?;
        if !self.records.object_in_use(id).await? {
            self.client.delete(&key).await?;
        }
        Ok(())
    }

    fn ended(&self) {
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

impl<R: SessionRecords + Clone> UploadStore for S3Uploads<R> {
    async fn start(&self, repo: &RepoName, owner: &str) -> Result<UploadId> {
        let id = UploadId::random();
        let hasher = Hasher::new(Algorithm::Sha256);
        self.records.open_session(id, repo, owner, &hasher, self.limits).await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    async fn offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        self.records.session_offset(repo, id).await
    }

    async fn append<S, E>(&self, repo: &RepoName, id: UploadId, chunk: Chunk<S>) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let (row, claim) = self.claim(repo, id, chunk.range).await?;
        if row.stored {
            // Every byte is in the object already, waiting for its commit to be tried again.
            let done = no_more_bytes(chunk).await;
            claim.release().await;
            return done.map(|()| row.offset);
        }
        let cut = match self.stream(id, &row, chunk, false).await {
            Ok(c) => c,
            Err(e) => {
                claim.release().await;
                return Err(e);
            }
        };
        let offset = cut.offset;
        claim.save(cut.update()).await?;
        Ok(offset)
    }

    async fn finish<S, E, C, F>(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        chunk: Chunk<S>,
        commit: C,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
        C: FnOnce(BlobLink, Box<dyn StagedBlob>) -> F + Send,
        F: Future<Output = Result<()>> + Send,
    {
        let (row, claim) = self.claim(repo, id, chunk.range).await?;
        let key = object_key(id);
        let (size, hasher) = if row.stored {
            // A commit failed before: the object holds every byte; this request adds none.
            if let Err(e) = no_more_bytes(chunk).await {
                claim.release().await;
                return Err(e);
            }
            (row.offset, row.hasher.clone())
        } else {
            let cut = match self.stream(id, &row, chunk, true).await {
                Ok(c) => c,
                Err(e) => {
                    claim.release().await;
                    return Err(e);
                }
            };
            let (size, hasher) = (cut.offset, cut.hasher.clone());
            if let Err(e) = check(digest, &hasher) {
                // The session stays as it was before this request (parts past the saved ones
                // are replaced by the next request's, or never completed).
                claim.release().await;
                return Err(e);
            }
            if let Err(e) = self.store_object(&key, cut).await {
                claim.release().await;
                return Err(e);
            }
            (size, hasher)
        };
        if row.stored
            && let Err(e) = check(digest, &hasher)
        {
            claim.release().await;
            return Err(e);
        }
        if digest.algorithm() != hasher.algorithm() {
            // Another algorithm than the session's: hash the stored object once.
            let actual = self.hash_object(&key, size, digest.algorithm()).await;
            if actual.as_ref().is_ok_and(|a| a != digest) || actual.is_err() {
                let stored = SessionUpdate::stored(size, hasher);
                claim.save(stored).await?;
                return Err(match actual {
                    Ok(actual) => Error::DigestMismatch {
                        expected: digest.clone(),
                        actual,
                    },
                    Err(e) => e,
                });
            }
        }
        let link = BlobLink {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            object: Some(id),
        };
        let staged = Box::new(S3Staged {
            client: self.client.clone(),
            key,
            handle: tokio::runtime::Handle::current(),
        });
        match commit(link, staged).await {
            Ok(()) => {
                claim.forget();
                self.records.end_session(id).await?;
                self.ended();
                Ok(size)
            }
            Err(e) => {
                // The object stays the session's: the client can try the PUT again.
                claim.save(SessionUpdate::stored(size, hasher)).await?;
                Err(e)
            }
        }
    }

    async fn cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        let (row, claim) = self.claim(repo, id, None).await?;
        claim.forget();
        self.discard(id, row.multipart.as_deref()).await?;
        self.ended();
        Ok(())
    }

    async fn reap(&self, timeout: Duration) -> Result<usize> {
        let mut n = 0;
        loop {
            let expired = self.records.claim_expired(timeout, CLAIM_LEASE, 100).await?;
            if expired.is_empty() {
                return Ok(n);
            }
            for e in expired {
                if let Err(err) = self.discard(e.id, e.multipart.as_deref()).await {
                    tracing::warn!(upload = %e.id, error = %err, "could not remove an expired upload session");
                    let _ = self.records.release_claim(e.id, &e.token).await;
                    return Ok(n);
                }
                self.ended();
                n += 1;
            }
        }
    }

    fn in_progress(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn limits(&self) -> UploadLimits {
        self.limits
    }
}

impl<R: SessionRecords + Clone> S3Uploads<R> {
    /// Store the whole blob: complete the multipart upload with the last part, or, when no part
    /// was stored, put the object in one request.
    async fn store_object(&self, key: &str, cut: Cut) -> Result<()> {
        let Cut {
            multipart,
            new_etags,
            old_etags,
            buf,
            ..
        } = cut;
        match multipart {
            None => self.client.put(key, buf.freeze()).await,
            Some(m) => {
                let mut etags = old_etags;
                etags.extend(new_etags);
                if !buf.is_empty() || etags.is_empty() {
                    let n = part_number(etags.len() + 1)?;
                    etags.push(self.client.upload_part(key, &m, n, buf.freeze()).await?);
                }
                self.client.complete_multipart(key, &m, &etags).await
            }
        }
    }

    async fn hash_object(&self, key: &str, size: u64, algorithm: Algorithm) -> Result<Digest> {
        let mut h = Hasher::new(algorithm);
        if size > 0 {
            let mut rx = self.client.get(key, 0, size).await?;
            while let Some(b) = rx.recv().await {
                h.update(&b.map_err(Error::Io)?);
            }
        }
        Ok(h.finish())
    }
}

/// Whether the content hashed by `hasher` is `digest`'s (when it is of the same algorithm).
fn check(digest: &Digest, hasher: &Hasher) -> Result<()> {
    if digest.algorithm() != hasher.algorithm() {
        return Ok(());
    }
    let actual = hasher.finish();
    if &actual == digest {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            expected: digest.clone(),
            actual,
        })
    }
}

/// Read a body that must be empty.
async fn no_more_bytes<S, E>(chunk: Chunk<S>) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let mut body = std::pin::pin!(chunk.body.map(|f| f.map_err(|e| Error::Body(e.to_string()))));
    let mut n = 0u64;
    while let Some(frame) = body.next().await {
        n += frame?.len() as u64;
    }
    if n > 0 {
        return Err(Error::SizeMismatch { declared: 0, actual: n });
    }
    Ok(())
}

/// What a request's body became.
struct Cut {
    offset: u64,
    hasher: Hasher,
    multipart: Option<String>,
    /// ETags of the parts stored before this request.
    old_etags: Vec<String>,
    new_etags: Vec<String>,
    /// The bytes after the last part this request stored (with the tail's pieces when it
    /// took them).
    buf: BytesMut,
    buf_start: u64,
    old_tail: u64,
    tail_taken: bool,
    /// The budget's room for `buf`, held as long as it is.
    _room: Option<OwnedSemaphorePermit>,
}

impl SessionUpdate {
    /// A session whose object holds all its `size` bytes.
    fn stored(size: u64, hasher: Hasher) -> SessionUpdate {
        SessionUpdate {
            offset: size,
            hasher,
            multipart: None,
            new_etags: Vec::new(),
            tail: TailChange::Replace(None),
            tail_len: 0,
            stored: true,
        }
    }
}

impl Cut {
    fn update(self) -> SessionUpdate {
        let piece = (!self.buf.is_empty()).then(|| (self.buf_start, self.buf.freeze()));
        let (tail, tail_len) = if self.tail_taken {
            let len = piece.as_ref().map_or(0, |p| p.1.len() as u64);
            (TailChange::Replace(piece), len)
        } else {
            let len = self.old_tail + piece.as_ref().map_or(0, |p| p.1.len() as u64);
            (TailChange::Append(piece), len)
        };
        SessionUpdate {
            offset: self.offset,
            hasher: self.hasher,
            multipart: self.multipart,
            new_etags: self.new_etags,
            tail,
            tail_len,
            stored: false,
        }
    }
}

/// Cuts a body into parts as it streams.
struct PartWriter<'a, R> {
    client: &'a S3Client,
    records: &'a R,
    key: String,
    id: UploadId,
    part_size: usize,
    multipart: Option<String>,
    /// Parts the session had before this request.
    parts_before: usize,
    /// ETags of the parts this request stored.
    new_etags: Vec<String>,
    buf: BytesMut,
    /// Offset of `buf`'s first byte in the blob.
    buf_start: u64,
    /// Bytes of the session's tail (pieces), before this request.
    old_tail: u64,
    /// Whether the pieces were taken into `buf`.
    tail_taken: bool,
    /// The parts uploading while the next fills, in order.
    inflight: VecDeque<JoinHandle<Result<String>>>,
    hasher: Hasher,
    memory: &'a Memory,
    /// The budget's room for `buf`.
    room: Option<OwnedSemaphorePermit>,
}

impl<R: SessionRecords> PartWriter<'_, R> {
    /// Take the tail's pieces into the front of the buffer.
    async fn take_tail(&mut self) -> Result<()> {
        if self.tail_taken {
            return Ok(());
        }
        self.tail_taken = true;
        if self.old_tail == 0 {
            return Ok(());
        }
        self.make_room().await?;
        let pieces = self.records.session_pieces(self.id).await?;
        let mut buf = BytesMut::with_capacity(self.part_size.max(self.old_tail as usize + self.buf.len()));
        for p in &pieces {
            buf.extend_from_slice(p);
        }
        if buf.len() as u64 != self.old_tail {
            return Err(Error::Meta(crate::error::MetaError::Corrupt(format!(
                "upload session {}: its tail has {} bytes, its row says {}",
                self.id,
                buf.len(),
                self.old_tail
            ))));
        }
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
        self.buf_start -= self.old_tail;
        Ok(())
    }

    /// Room in the budget for the buffer, and the buffer's memory, once.
    async fn make_room(&mut self) -> Result<()> {
        if self.room.is_none() {
            self.room = Some(self.memory.part().await?);
            let want = self.part_size.saturating_add(UNIT as usize);
            self.buf.reserve(want.saturating_sub(self.buf.len()));
        }
        Ok(())
    }

    /// Add a frame; store every part it completes.
    async fn push(&mut self, frame: &[u8]) -> Result<()> {
        self.make_room().await?;
        self.buf.extend_from_slice(frame);
        loop {
            let pending = if self.tail_taken { 0 } else { self.old_tail as usize };
            if self.buf.len() + pending < self.part_size {
                return Ok(());
            }
            if !self.tail_taken {
                self.take_tail().await?;
                continue;
            }
            // The rest (less than a frame) is copied out: left a view of the part's memory, it
            // would keep that memory after the part is stored, outside the budget, while this
            // request waits for new room.
            let mut whole = std::mem::take(&mut self.buf);
            self.buf = BytesMut::from(&whole[self.part_size..]);
            whole.truncate(self.part_size);
            let part = whole.freeze();
            self.buf_start += part.len() as u64;
            // The room goes with the part, until it is stored; the rest of the buffer (less
            // than a frame) waits for new room.
            let room = self.room.take();
            self.send(part, room).await?;
            self.make_room().await?;
        }
    }

    /// Store a full part, with at most [`PARTS_IN_FLIGHT`] of this request's parts uploading at
    /// once; `room` is let go when it is stored.
    async fn send(&mut self, part: Bytes, room: Option<OwnedSemaphorePermit>) -> Result<()> {
        while self.inflight.len() >= PARTS_IN_FLIGHT {
            self.collect().await?;
        }
        let multipart = match &self.multipart {
            Some(m) => m.clone(),
            None => {
                let m = self.client.create_multipart(&self.key).await?;
                self.multipart = Some(m.clone());
                m
            }
        };
        let n = part_number(self.parts_before + self.new_etags.len() + self.inflight.len() + 1)?;
        let (client, key) = (self.client.clone(), self.key.clone());
        self.inflight.push_back(tokio::spawn(async move {
            let stored = client.upload_part(&key, &multipart, n, part).await;
            drop(room);
            stored
        }));
        Ok(())
    }

    /// Wait for the oldest part in flight.
    async fn collect(&mut self) -> Result<()> {
        if let Some(h) = self.inflight.pop_front() {
            let etag = h
                .await
                .map_err(|e| Error::ObjectStore(ObjectStoreError::Failed(format!("a part upload was lost: {e}"))))??;
            self.new_etags.push(etag);
        }
        Ok(())
    }

    /// The body ended: wait for every part in flight.
    async fn settle(&mut self) -> Result<()> {
        while !self.inflight.is_empty() {
            self.collect().await?;
        }
        Ok(())
    }

    /// The request failed: let the part in flight finish (its number is reused by the next
    /// request, which replaces it).
    async fn abandon(&mut self) {
        while let Some(h) = self.inflight.pop_front() {
            let _ = h.await;
        }
    }
}

fn part_number(n: usize) -> Result<u16> {
    if n > MAX_PARTS {
        return Err(Error::ObjectStore(ObjectStoreError::Failed(format!(
            "the blob needs more than {MAX_PARTS} parts: raise storage.s3.chunksize"
        ))));
    }
    Ok(n as u16)
}

/// A session's claim, renewed until dropped.
struct Claim<R: SessionRecords> {
    records: R,
    id: UploadId,
    token: String,
    renewer: JoinHandle<()>,
}

impl<R: SessionRecords> Claim<R> {
    /// Save the request's state and let the claim go.
    async fn save(self, update: SessionUpdate) -> Result<()> {
        self.renewer.abort();
        self.records.save_session(self.id, &self.token, update).await
    }

    /// Let the claim go, the session unchanged.
    async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.records.release_claim(self.id, &self.token).await {
            tracing::warn!(upload = %self.id, error = %e, "could not release an upload's claim; it lapses");
        }
    }

    /// Stop renewing (the session is ending).
    fn forget(self) {
        self.renewer.abort();
    }
}

impl<R: SessionRecords> Drop for Claim<R> {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A completed upload's object, handed to the metadata store: nothing to place (the record
/// names the object); when the blob was stored already, the object goes.
struct S3Staged {
    client: S3Client,
    key: String,
    handle: tokio::runtime::Handle,
}

impl StagedBlob for S3Staged {
    fn prepare(&mut self) -> Result<Box<dyn Placement>> {
        Ok(Box::new(NoPlacement))
    }

    fn finish(self: Box<Self>, outcome: Outcome) {
        // A failed commit leaves the object to the session, which may try again.
        if outcome != Outcome::Duplicate {
            return;
        }
        let S3Staged { client, key, handle } = *self;
        handle.spawn(async move {
            if let Err(e) = client.delete(&key).await {
                // The reconciler removes it later: no record names it.
                tracing::warn!(object = %key, error = %e, "could not delete an unused upload object");
            }
        });
    }
}

struct NoPlacement;

impl Placement for NoPlacement {
    fn place(&self) -> Result<Option<std::path::PathBuf>> {
        Ok(None)
    }

    fn flush(&self, _dir: &std::path::Path) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_holds_as_many_parts_as_fit() {
        let m = Memory::new(10 << 20, 5 << 20);
        let a = m.part().await.unwrap();
        let _b = m.part().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), m.part()).await;
        assert!(third.is_err(), "a third part fits in two parts' room");
        drop(a);
        let _room = tokio::time::timeout(Duration::from_millis(50), m.part())
            .await
            .expect("room given back")
            .unwrap();
    }
}
