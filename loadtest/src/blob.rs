//! Generated blob content: seeded pseudo-random bytes, streamed in frames and never held whole in memory.
//!
//! A blob of `size` bytes is the first `size - 32` bytes of an endless stream that repeats a 4 MiB pool of
//! seeded pseudo-random bytes, followed by a 32-byte *tail* that is unique per blob (run id, worker, sequence).
//! Because the tail comes last, the SHA-256 state after the shared body can be computed once per size and cached;
//! each blob's digest is then that state plus its 32-byte tail, so pushes of distinct 1 GiB blobs cost no client
//! hashing at all and uploads just hand out slices of the pool (no copying, no generation on the hot path).

use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};

/// Length of the repeating pseudo-random pool.
pub const POOL_LEN: usize = 4 << 20;
/// Largest frame handed to hyper when streaming a generated body.
const FRAME_LEN: usize = 256 << 10;
/// Length of the unique tail at the end of every blob (shorter only for blobs smaller than this).
pub const TAIL_LEN: usize = 32;

/// One step of the SplitMix64 generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small seeded pseudo-random number generator (SplitMix64) for workload decisions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next pseudo-random 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// A pseudo-random value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The shared source of blob content: the pseudo-random pool plus cached SHA-256 prefix states.
pub struct Pattern {
    pool: Bytes,
    prefixes: Mutex<HashMap<u64, Sha256>>,
}

/// A blob to upload or expect: its size, unique tail and digest (`sha256:<hex>`).
#[derive(Debug, Clone)]
pub struct Blob {
    /// Total length in bytes.
    pub size: u64,
    /// The unique tail; only the first `min(size, TAIL_LEN)` bytes are used.
    pub tail: [u8; TAIL_LEN],
    /// The content digest, `sha256:<hex>`.
    pub digest: String,
}

impl Pattern {
    /// Generates the pool from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut state = seed ^ 0xB3E7_7B10_AD7E_5700;
        let mut pool = Vec::with_capacity(POOL_LEN);
        while pool.len() < POOL_LEN {
            pool.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        Pattern {
            pool: Bytes::from(pool),
            prefixes: Mutex::new(HashMap::new()),
        }
    }

    /// The SHA-256 state after the first `len` bytes of the repeating pool, computed once per length and cached.
    fn prefix_state(&self, len: u64) -> Sha256 {
        if let Some(state) = self.prefixes.lock().unwrap_or_else(|e| e.into_inner()).get(&len) {
            return state.clone();
        }
        let mut hasher = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(POOL_LEN as u64) as usize;
            hasher.update(&self.pool[..n]);
            left -= n as u64;
        }
        self.prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(len, hasher.clone());
        hasher
    }

    /// Precomputes (and caches) the body hash state for blobs of `size` bytes; slow for large sizes.
    pub fn warm(&self, size: u64) {
        let _ = self.prefix_state(body_len(size));
    }

    /// Describes the blob of `size` bytes ending with `tail`, computing its digest.
    pub fn blob(&self, size: u64, tail: [u8; TAIL_LEN]) -> Blob {
        let mut hasher = self.prefix_state(body_len(size));
        hasher.update(&tail[..tail_len(size)]);
        Blob {
            size,
            tail,
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        }
    }

    /// A streaming request body with bytes `range` of `blob`.
    pub fn body(self: &Arc<Self>, blob: &Blob, range: Range<u64>) -> GenBody {
        debug_assert!(range.end <= blob.size);
        GenBody {
            pattern: Arc::clone(self),
            pos: range.start,
            end: range.end,
            body_len: body_len(blob.size),
            tail: blob.tail,
        }
    }
}

/// Length of the unique tail of a `size`-byte blob.
fn tail_len(size: u64) -> usize {
    size.min(TAIL_LEN as u64) as usize
}

/// Length of the shared pseudo-random part of a `size`-byte blob.
fn body_len(size: u64) -> u64 {
    size - tail_len(size) as u64
}

/// Builds a 32-byte tail from a tag and three numbers.
pub fn tail(tag: &[u8; 8], a: u64, b: u64, c: u64) -> [u8; TAIL_LEN] {
    let mut t = [0u8; TAIL_LEN];
    t[..8].copy_from_slice(tag);
    t[8..16].copy_from_slice(&a.to_le_bytes());
    t[16..24].copy_from_slice(&b.to_le_bytes());
    t[24..32].copy_from_slice(&c.to_le_bytes());
    t
}

/// A streamed range of a generated blob, handed to hyper frame by frame as slices of the shared pool.
pub struct GenBody {
    pattern: Arc<Pattern>,
    pos: u64,
    end: u64,
    body_len: u64,
    tail: [u8; TAIL_LEN],
}

impl GenBody {
    /// The next frame of at most `FRAME_LEN` bytes, or `None` at the end of the range.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.pos >= self.end {
            return None;
        }
        let chunk = if self.pos < self.body_len {
            let offset = (self.pos % POOL_LEN as u64) as usize;
            let n = (FRAME_LEN as u64)
                .min((POOL_LEN - offset) as u64)
                .min(self.body_len - self.pos)
                .min(self.end - self.pos) as usize;
            self.pattern.pool.slice(offset..offset + n)
        } else {
            let from = (self.pos - self.body_len) as usize;
            let to = (self.end - self.body_len) as usize;
            Bytes::copy_from_slice(&self.tail[from..to])
        };
        self.pos += chunk.len() as u64;
        Some(chunk)
    }
}

/// A request body: empty, a small in-memory buffer, or a generated blob range.
pub enum ReqBody {
    /// No body.
    Empty,
    /// A buffer sent as one frame (taken on first poll).
    Full(Option<Bytes>),
    /// A generated, streamed blob range.
    Gen(GenBody),
}

impl ReqBody {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ReqBody::Full(Some(bytes.into()))
    }

    /// The exact number of bytes this body will yield.
    pub fn len(&self) -> u64 {
        match self {
            ReqBody::Empty => 0,
            ReqBody::Full(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            ReqBody::Gen(g) => g.end - g.pos,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = match self.get_mut() {
            ReqBody::Empty => None,
            ReqBody::Full(b) => b.take(),
            ReqBody::Gen(g) => g.next_chunk(),
        };
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(mut body: ReqBody) -> Vec<u8> {
        let mut out = Vec::new();
        let mut frame_count = 0;
        loop {
            let chunk = match &mut body {
                ReqBody::Empty => None,
                ReqBody::Full(b) => b.take(),
                ReqBody::Gen(g) => g.next_chunk(),
            };
            match chunk {
                Some(c) => {
                    assert!(!c.is_empty());
                    assert!(c.len() <= FRAME_LEN);
                    out.extend_from_slice(&c);
                    frame_count += 1;
                }
                None => break,
            }
        }
        assert!(frame_count > 0 || out.is_empty());
        out
    }

    #[test]
    fn streamed_content_matches_digest_and_ranges() {
        let pattern = Arc::new(Pattern::new(7));
        for size in [1u64, 31, 32, 33, 1000, (POOL_LEN as u64) * 2 + 12345] {
            let blob = pattern.blob(size, tail(b"TESTTEST", size, 1, 2));
            let whole = collect(ReqBody::Gen(pattern.body(&blob, 0..size)));
            assert_eq!(whole.len() as u64, size);
            let expect = format!("sha256:{}", hex::encode(Sha256::digest(&whole)));
            assert_eq!(blob.digest, expect, "size {size}");
            // Chunked ranges reassemble to the same bytes.
            let chunk = (size / 3).max(1);
            let mut joined = Vec::new();
            for r in crate::units::split_chunks(size, chunk) {
                joined.extend(collect(ReqBody::Gen(pattern.body(&blob, r))));
            }
            assert_eq!(joined, whole);
        }
    }

    #[test]
    fn tails_make_digests_unique() {
        let pattern = Pattern::new(1);
        let a = pattern.blob(4096, tail(b"TESTTEST", 1, 0, 0));
        let b = pattern.blob(4096, tail(b"TESTTEST", 2, 0, 0));
        assert_ne!(a.digest, b.digest);
        assert_eq!(a.digest, pattern.blob(4096, tail(b"TESTTEST", 1, 0, 0)).digest);
    }

    #[test]
    fn rng_below_is_in_range() {
        let mut rng = Rng::new(3);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[rng.below(4) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
    }
}
