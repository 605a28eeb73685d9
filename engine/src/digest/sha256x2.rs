//! SHA-256 of two independent messages at once on one core, with the x86 SHA extensions.
//!
//! One message's SHA-256 is a chain: each `sha256rnds2` waits for the one before it, so a single
//! stream leaves the unit idle for most of each instruction's latency. Two messages interleaved
//! fill those gaps: on this project's machines one core hashes two streams at 1.7–1.9 times the
//! rate of one (docs/performance.md). The engine's hashing threads pair buffers of different
//! uploads through [`compress_pair`] ([`crate::digest::Hasher::update_pair`]).
//!
//! The rounds are those of the SHA extensions' reference sequence (the same as the `sha2`
//! crate's single-stream backend); tests check every result against `sha2`.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_loadu_si128, _mm_set_epi64x, _mm_sha256msg1_epu32,
    _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi8, _mm_shuffle_epi32, _mm_storeu_si128,
};

/// Whether paired hashing serves: this CPU has what [`compress_pair`] needs ([`supported`]) and
/// `BERTH_IO_HASH_PAIRS` is not `off` (checked once).
pub fn available() -> bool {
    supported() && crate::io::HASH_PAIRS.on()
}

/// Whether this CPU has the extensions [`compress_pair`] is compiled for (checked once),
/// whatever `BERTH_IO_HASH_PAIRS` says.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("sha")
                && std::arch::is_x86_feature_detected!("sse4.1")
                && std::arch::is_x86_feature_detected!("ssse3")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Compress the whole 64-byte blocks of `a` into `sa` and those of `b` into `sb`, the two
/// interleaved. `a` and `b` must be of the same length, a multiple of 64. Returns false (and
/// changes nothing) when the CPU lacks the SHA extensions or the lengths do not fit. It does not
/// look at `BERTH_IO_HASH_PAIRS`: callers that honour the setting ask [`available`] first.
pub fn compress_pair(sa: &mut [u32; 8], a: &[u8], sb: &mut [u32; 8], b: &[u8]) -> bool {
    if a.len() != b.len() || !a.len().is_multiple_of(64) || !supported() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `supported` found the SHA, SSE4.1 and SSSE3 extensions on this CPU, the ones
        // the function is compiled for; it reads only within `a` and `b` (whole blocks of their
        // equal lengths) and writes only the two states.
        #[allow(unsafe_code)]
        unsafe {
            pair(sa, a, sb, b)
        };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// The state words as the rounds want them: (ABEF, CDGH).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn load_state(state: &[u32; 8]) -> (__m128i, __m128i) {
    // SAFETY: two 16-byte unaligned loads within the 32-byte array.
    #[allow(unsafe_code)]
    let (dcba, hgfe) = unsafe {
        let p = state.as_ptr().cast::<__m128i>();
        (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)))
    };
    let cdab = _mm_shuffle_epi32(dcba, 0xB1);
    let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    (_mm_alignr_epi8(cdab, efgh, 8), _mm_blend_epi16(efgh, cdab, 0xF0))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn store_state(state: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
    let feba = _mm_shuffle_epi32(abef, 0x1B);
    let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    // SAFETY: two 16-byte unaligned stores within the 32-byte array.
    #[allow(unsafe_code)]
    unsafe {
        let p = state.as_mut_ptr().cast::<__m128i>();
        _mm_storeu_si128(p, _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128(p.add(1), _mm_alignr_epi8(dchg, feba, 8));
    }
}

/// The 16 message words of a block, big-endian, four to a vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn load_block(block: &[u8]) -> [__m128i; 4] {
    assert!(block.len() >= 64);
    let mask = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
    // SAFETY: four 16-byte unaligned loads within the first 64 bytes of `block` (checked above).
    #[allow(unsafe_code)]
    unsafe {
        let p = block.as_ptr().cast::<__m128i>();
        [
            _mm_shuffle_epi8(_mm_loadu_si128(p), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), mask),
        ]
    }
}

/// The constants of rounds `4 * step` to `4 * step + 3`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn round_constants(step: usize) -> __m128i {
    let k = &K[4 * step..4 * step + 4];
    // SAFETY: a 16-byte unaligned load of the four words `k` holds.
    #[allow(unsafe_code)]
    unsafe {
        _mm_loadu_si128(k.as_ptr().cast::<__m128i>())
    }
}

/// Four rounds: `w` the four message words, `k` their constants.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn rounds4(abef: &mut __m128i, cdgh: &mut __m128i, w: __m128i, k: __m128i) {
    let t1 = _mm_add_epi32(w, k);
    *cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, t1);
    let t2 = _mm_shuffle_epi32(t1, 0x0E);
    *abef = _mm_sha256rnds2_epu32(*abef, *cdgh, t2);
}

/// The next four message words from the last sixteen.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
    let t1 = _mm_sha256msg1_epu32(w0, w1);
    let t2 = _mm_alignr_epi8(w3, w2, 4);
    _mm_sha256msg2_epu32(_mm_add_epi32(t1, t2), w3)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn pair(sa: &mut [u32; 8], a: &[u8], sb: &mut [u32; 8], b: &[u8]) {
    let (mut abef0, mut cdgh0) = load_state(sa);
    let (mut abef1, mut cdgh1) = load_state(sb);
    for (x, y) in a.chunks_exact(64).zip(b.chunks_exact(64)) {
        let (s0, t0, s1, t1) = (abef0, cdgh0, abef1, cdgh1);
        let mut w = load_block(x);
        let mut v = load_block(y);
        // Sixteen steps of four rounds, each on both messages; written out so that the words
        // stay in registers (the constants are loaded as each step needs them: sixteen vectors
        // of them held ahead would take every register).
        macro_rules! step {
            ($i:expr) => {
                let k = round_constants($i);
                if $i < 4 {
                    rounds4(&mut abef0, &mut cdgh0, w[$i % 4], k);
                    rounds4(&mut abef1, &mut cdgh1, v[$i % 4], k);
                } else {
                    w[$i % 4] = schedule(w[$i % 4], w[($i + 1) % 4], w[($i + 2) % 4], w[($i + 3) % 4]);
                    rounds4(&mut abef0, &mut cdgh0, w[$i % 4], k);
                    v[$i % 4] = schedule(v[$i % 4], v[($i + 1) % 4], v[($i + 2) % 4], v[($i + 3) % 4]);
                    rounds4(&mut abef1, &mut cdgh1, v[$i % 4], k);
                }
            };
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        step!(4);
        step!(5);
        step!(6);
        step!(7);
        step!(8);
        step!(9);
        step!(10);
        step!(11);
        step!(12);
        step!(13);
        step!(14);
        step!(15);
        abef0 = _mm_add_epi32(abef0, s0);
        cdgh0 = _mm_add_epi32(cdgh0, t0);
        abef1 = _mm_add_epi32(abef1, s1);
        cdgh1 = _mm_add_epi32(cdgh1, t1);
    }
    store_state(sa, abef0, cdgh0);
    store_state(sb, abef1, cdgh1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const H0: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn reference(state: &mut [u32; 8], data: &[u8]) {
        let blocks: Vec<[u8; 64]> = data.chunks_exact(64).map(|c| c.try_into().unwrap()).collect();
        sha2::block_api::compress256(state, &blocks);
    }

    /// Each of the two states ends as `sha2` leaves it for the same blocks, from fresh states
    /// and from states already advanced differently.
    #[test]
    fn pairs_compress_as_sha2_does() {
        if !supported() {
            eprintln!("no SHA extensions here: nothing to compare");
            return;
        }
        for (i, blocks) in [0usize, 1, 2, 3, 17, 1024].into_iter().enumerate() {
            let a = bytes(2 * i as u64 + 1, 64 * blocks);
            let b = bytes(2 * i as u64 + 2, 64 * blocks);
            // The first state starts one block on, the second fresh.
            let mut sa = H0;
            reference(&mut sa, &bytes(99, 64));
            let mut sb = H0;
            let (mut ra, mut rb) = (sa, sb);
            reference(&mut ra, &a);
            reference(&mut rb, &b);
            assert!(compress_pair(&mut sa, &a, &mut sb, &b));
            assert_eq!(sa, ra, "first message, {blocks} blocks");
            assert_eq!(sb, rb, "second message, {blocks} blocks");
        }
    }

    #[test]
    fn unfit_lengths_change_nothing() {
        let (mut sa, mut sb) = (H0, H0);
        assert!(!compress_pair(&mut sa, &[0; 64], &mut sb, &[0; 128]));
        assert!(!compress_pair(&mut sa, &[0; 65], &mut sb, &[0; 65]));
        assert_eq!((sa, sb), (H0, H0));
    }
}
