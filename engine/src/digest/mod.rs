//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and the incremental hasher behind them.

pub mod sha256x2;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

use crate::error::ParseError;

/// A digest algorithm Berth can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, 64 lowercase hex characters.
    Sha256,
    /// SHA-512, 128 lowercase hex characters.
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0…`.
///
/// The only way to get one is to parse a string that matches the OCI digest grammar for a
/// supported algorithm with the exact hex length, or to finish a [`Hasher`]. The hex part is
/// therefore always `[0-9a-f]` and safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding of the hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Digest of a byte slice with the given algorithm.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or(ParseError::Digest("missing ':'"))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => {
                // The grammar allows other algorithms; say clearly that they are not supported.
                let valid_alg = !alg.is_empty()
                    && alg
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
                return Err(if valid_alg {
                    ParseError::Digest("unsupported algorithm (sha256 and sha512 are supported)")
                } else {
                    ParseError::Digest("malformed algorithm")
                });
            }
        };
        if hex.len() != algorithm.hex_len() {
            return Err(ParseError::Digest("wrong length for the algorithm"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseError::Digest("encoded part must be lowercase hex"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hasher for one of the supported algorithms; its state can be saved and restored
/// so an upload can resume after a restart without re-reading what it already received.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm().as_str())
    }
}

/// Version tag written in front of a saved hasher state.
const STATE_VERSION: u8 = 1;

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// The algorithm of this hasher.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Feed `a_bytes` to `a` and `b_bytes` to `b`, as two [`Hasher::update`] calls would, but
    /// with the whole blocks the two share in length hashed side by side on this thread
    /// ([`sha256x2`]): about 1.7–1.9 times the rate of hashing them one after the
    /// other, where the CPU has the SHA extensions and `BERTH_IO_HASH_PAIRS` is not `off`.
    /// Otherwise (or for SHA-512) it is the two calls.
    pub fn update_pair(a: &mut Hasher, a_bytes: &[u8], b: &mut Hasher, b_bytes: &[u8]) {
        let pairing = if sha256x2::available() {
            Pairing::Interleaved
        } else {
            Pairing::Separate
        };
        Hasher::update_pair_as(a, a_bytes, b, b_bytes, pairing);
    }

    /// [`Hasher::update_pair`] the way the caller chooses (so the tests run each path whatever
    /// `BERTH_IO_HASH_PAIRS` says, and the portable one on a CPU with the extensions). Returns
    /// how many bytes of each message were hashed interleaved.
    fn update_pair_as(
        a: &mut Hasher,
        mut a_bytes: &[u8],
        b: &mut Hasher,
        mut b_bytes: &[u8],
        pairing: Pairing,
    ) -> usize {
        let (Hasher::Sha256(ha), Hasher::Sha256(hb)) = (&mut *a, &mut *b) else {
            a.update(a_bytes);
            b.update(b_bytes);
            return 0;
        };
        let mut paired = 0;
        if pairing == Pairing::Interleaved {
            // Each to the end of its partial block, so that the rest starts on a block.
            a_bytes = to_block_end(ha, a_bytes);
            b_bytes = to_block_end(hb, b_bytes);
            let n = a_bytes.len().min(b_bytes.len()) / SHA256_BLOCK * SHA256_BLOCK;
            if n > 0 && buffered(ha) == 0 && buffered(hb) == 0 {
                let (mut sa, mut sb) = (ha.serialize(), hb.serialize());
                let (mut wa, mut wb) = (state_words(&sa), state_words(&sb));
                if sha256x2::compress_pair(&mut wa, &a_bytes[..n], &mut wb, &b_bytes[..n]) {
                    let blocks = (n / SHA256_BLOCK) as u64;
                    set_state(&mut sa, &wa, blocks);
                    set_state(&mut sb, &wb, blocks);
                    // A state this function wrote from one `sha2` gave back is a valid one.
                    if let (Ok(na), Ok(nb)) = (sha2::Sha256::deserialize(&sa), sha2::Sha256::deserialize(&sb)) {
                        *ha = na;
                        *hb = nb;
                        a_bytes = &a_bytes[n..];
                        b_bytes = &b_bytes[n..];
                        paired = n;
                    }
                }
            }
        }
        ha.update(a_bytes);
        hb.update(b_bytes);
        paired
    }

    /// The digest of everything fed so far (the hasher itself is left untouched).
    pub fn finish(&self) -> Digest {
        let hex = match self {
            Hasher::Sha256(h) => hex::encode(h.clone().finalize()),
            Hasher::Sha512(h) => hex::encode(h.clone().finalize()),
        };
        Digest {
            algorithm: self.algorithm(),
            hex,
        }
    }

    /// Serialize the internal state: a version byte, an algorithm byte, then the state.
    pub fn save(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        match self {
            Hasher::Sha256(h) => {
                out.push(0);
                out.extend_from_slice(h.serialize().as_slice());
            }
            Hasher::Sha512(h) => {
                out.push(1);
                out.extend_from_slice(h.serialize().as_slice());
            }
        }
        out
    }

    /// Restore a state written by [`Hasher::save`].
    pub fn restore(bytes: &[u8]) -> Option<Hasher> {
        match bytes {
            [STATE_VERSION, 0, rest @ ..] => {
                let state = SerializedState::<sha2::Sha256>::try_from(rest).ok()?;
                sha2::Sha256::deserialize(&state).ok().map(Hasher::Sha256)
            }
            [STATE_VERSION, 1, rest @ ..] => {
                let state = SerializedState::<sha2::Sha512>::try_from(rest).ok()?;
                sha2::Sha512::deserialize(&state).ok().map(Hasher::Sha512)
            }
            _ => None,
        }
    }
}

/// How [`Hasher::update_pair`] hashes two SHA-256 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pairing {
    /// The whole blocks the two share in length side by side ([`sha256x2`]), where
    /// the CPU has the SHA extensions (else as `Separate`).
    Interleaved,
    /// One after the other, each by `sha2` (the portable path).
    Separate,
}

/// SHA-256's block size.
const SHA256_BLOCK: usize = 64;

// A saved `sha2::Sha256` (sha2 0.11): the eight state words (little-endian), the count of
// blocks compressed (u64, little-endian), then the partial block: its length, then its bytes.
// `update_pair`'s test fails if a new `sha2` lays it out otherwise.
const STATE_WORDS_END: usize = 32;
const BLOCK_COUNT_END: usize = 40;

/// Feed `h` from `bytes` up to the end of its partial block; the bytes left.
fn to_block_end<'a>(h: &mut sha2::Sha256, bytes: &'a [u8]) -> &'a [u8] {
    let fill = (SHA256_BLOCK - buffered(h)) % SHA256_BLOCK;
    let (head, rest) = bytes.split_at(fill.min(bytes.len()));
    h.update(head);
    rest
}

/// Bytes of `h`'s partial block.
fn buffered(h: &sha2::Sha256) -> usize {
    usize::from(h.serialize()[BLOCK_COUNT_END])
}

fn state_words(s: &SerializedState<sha2::Sha256>) -> [u32; 8] {
    std::array::from_fn(|i| u32::from_le_bytes(s[4 * i..4 * i + 4].try_into().expect("four bytes")))
}

/// Write `words` into a saved state and count `blocks` more compressed.
fn set_state(s: &mut SerializedState<sha2::Sha256>, words: &[u32; 8], blocks: u64) {
    for (i, w) in words.iter().enumerate() {
        s[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    let count = u64::from_le_bytes(s[STATE_WORDS_END..BLOCK_COUNT_END].try_into().expect("eight bytes"));
    s[STATE_WORDS_END..BLOCK_COUNT_END].copy_from_slice(&(count + blocks).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(Algorithm::Sha256, b""));
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "sha256:../../../../etc/passwd",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85\0",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sha512_round_trip() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(d.hex().len(), 128);
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    /// Pairs of updates of every shape — partial blocks before, unequal lengths, empty sides,
    /// SHA-512 — end where the same updates one at a time do, and the hashers go on alike.
    #[test]
    fn paired_updates_match_single_ones() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let shapes = [
            (0, 0, 0, 0),
            (0, 64, 0, 64),
            (0, 4096, 0, 4096),
            (3, 100_000, 61, 70_000),
            (63, 128, 1, 129),
            (0, 131_072, 0, 0),
            (5, 1, 7, 200_000),
        ];
        for (pre_a, len_a, pre_b, len_b) in shapes {
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                let (mut a, mut b) = (Hasher::new(alg), Hasher::new(alg));
                a.update(&data[..pre_a]);
                b.update(&data[1000..1000 + pre_b]);
                let (mut ra, mut rb) = (a.clone(), b.clone());
                let (da, db) = (&data[pre_a..pre_a + len_a], &data[1000 + pre_b..1000 + pre_b + len_b]);
                Hasher::update_pair(&mut a, da, &mut b, db);
                ra.update(da);
                rb.update(db);
                assert_eq!(a.finish(), ra.finish(), "{alg:?} a {pre_a}+{len_a}");
                assert_eq!(b.finish(), rb.finish(), "{alg:?} b {pre_b}+{len_b}");
                a.update(b"tail");
                ra.update(b"tail");
                assert_eq!(a.finish(), ra.finish());
                assert_eq!(a.save(), ra.save(), "the saved states are the same");
            }
        }
    }

    /// Published SHA-256 values (FIPS 180-2 examples), through both ways of pairing, each
    /// message paired with another: a check on `sha2` itself as much as on the pairing.
    #[test]
    fn paired_updates_give_the_published_values() {
        let million = vec![b'a'; 1_000_000];
        let vectors: [(&[u8], &str); 4] = [
            (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                &million,
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
            ),
        ];
        for pairing in [Pairing::Interleaved, Pairing::Separate] {
            let mut paired = 0;
            // Each message beside another (the million `a`s beside themselves, cut elsewhere).
            for (i, j) in [(3, 3), (0, 3), (1, 2), (2, 3), (3, 1), (0, 0)] {
                let ((a, want_a), (b, want_b)) = (vectors[i], vectors[j]);
                let (mut ha, mut hb) = (Hasher::new(Algorithm::Sha256), Hasher::new(Algorithm::Sha256));
                // In two pairs of updates, cut at different points, so both go on mid-block.
                let (a1, a2) = a.split_at(a.len() / 3);
                let (b1, b2) = b.split_at(b.len() / 2);
                paired += Hasher::update_pair_as(&mut ha, a1, &mut hb, b1, pairing);
                paired += Hasher::update_pair_as(&mut ha, a2, &mut hb, b2, pairing);
                assert_eq!(ha.finish().hex(), want_a, "{pairing:?}, message {i} beside {j}");
                assert_eq!(hb.finish().hex(), want_b, "{pairing:?}, message {j} beside {i}");
            }
            let interleaved = pairing == Pairing::Interleaved && sha256x2::supported();
            assert_eq!(
                paired > 0,
                interleaved,
                "{pairing:?}: {paired} bytes hashed interleaved"
            );
        }
    }

    /// Bytes that look random, fast to make in a debug build.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed;
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Two messages, each cut into chunks, and how they are fed to [`Hasher::update_pair_as`].
    #[derive(Debug, Clone)]
    struct PairCase {
        seed: u64,
        lens: [usize; 2],
        /// Where each message is cut: (a point in it, whether rounded down to a block).
        cuts: [Vec<(proptest::sample::Index, bool)>; 2],
        /// As the hashing pool does (the length the two current chunks share side by side,
        /// then on), or whole chunks of unequal lengths side by side.
        like_pool: bool,
        /// After which steps both hashers are saved and restored (as an upload's checkpoint
        /// is), and go on from the restored state.
        resume: Vec<bool>,
    }

    /// Lengths around the padding boundaries (55/56 bytes, a block, two blocks), multiples of a
    /// block and one off them, and anything up to 3 MiB.
    fn message_len() -> impl proptest::strategy::Strategy<Value = usize> {
        use proptest::prelude::*;
        let boundaries = vec![
            0usize, 1, 55, 56, 57, 63, 64, 65, 119, 120, 121, 127, 128, 129, 191, 192, 193,
        ];
        prop_oneof![
            3 => proptest::sample::select(boundaries),
            2 => (0usize..=64, -1isize..=1).prop_map(|(k, d)| (64 * k).saturating_add_signed(d)),
            2 => (0usize..=(3 << 20) / 64, -1isize..=1).prop_map(|(k, d)| (64 * k).saturating_add_signed(d)),
            2 => 0usize..=3 << 20,
        ]
    }

    fn pair_case() -> impl proptest::strategy::Strategy<Value = PairCase> {
        use proptest::prelude::*;
        let cuts = || proptest::collection::vec(any::<(proptest::sample::Index, bool)>(), 0..12);
        (
            any::<u64>(),
            [message_len(), message_len()],
            [cuts(), cuts()],
            any::<bool>(),
            proptest::collection::vec(proptest::bool::weighted(0.2), 0..24),
        )
            .prop_map(|(seed, lens, cuts, like_pool, resume)| PairCase {
                seed,
                lens,
                cuts,
                like_pool,
                resume,
            })
    }

    /// Feed the case's two messages as it says; the two hashers and the bytes of each hashed
    /// interleaved.
    fn feed(case: &PairCase, msgs: [&[u8]; 2], pairing: Pairing) -> ([Hasher; 2], usize) {
        let chunks = |m: usize| -> std::collections::VecDeque<&[u8]> {
            let msg = msgs[m];
            let mut points: Vec<usize> = case.cuts[m]
                .iter()
                .map(|(at, to_block)| {
                    let p = at.index(msg.len() + 1);
                    if *to_block { p / SHA256_BLOCK * SHA256_BLOCK } else { p }
                })
                .collect();
            points.sort_unstable();
            let mut out = std::collections::VecDeque::new();
            let mut from = 0;
            for p in points.into_iter().chain([msg.len()]) {
                out.push_back(&msg[from..p]);
                from = p;
            }
            out
        };
        let (mut qa, mut qb) = (chunks(0), chunks(1));
        let (mut a, mut b) = (Hasher::new(Algorithm::Sha256), Hasher::new(Algorithm::Sha256));
        let mut paired = 0;
        for step in 0.. {
            if case.like_pool {
                match (qa.front_mut(), qb.front_mut()) {
                    (Some(x), Some(y)) => {
                        let n = x.len().min(y.len());
                        paired += Hasher::update_pair_as(&mut a, &x[..n], &mut b, &y[..n], pairing);
                        *x = &x[n..];
                        *y = &y[n..];
                    }
                    (Some(x), None) => {
                        a.update(x);
                        *x = &[];
                    }
                    (None, Some(y)) => {
                        b.update(y);
                        *y = &[];
                    }
                    (None, None) => break,
                }
                qa.retain(|c| !c.is_empty());
                qb.retain(|c| !c.is_empty());
            } else {
                let (x, y) = (qa.pop_front(), qb.pop_front());
                if x.is_none() && y.is_none() {
                    break;
                }
                paired += Hasher::update_pair_as(&mut a, x.unwrap_or(&[]), &mut b, y.unwrap_or(&[]), pairing);
            }
            if case.resume.get(step).copied().unwrap_or(false) {
                a = Hasher::restore(&a.save()).expect("a saved state restores");
                b = Hasher::restore(&b.save()).expect("a saved state restores");
            }
        }
        ([a, b], paired)
    }

    /// Run `cases` random [`PairCase`]s through `pairing`: each message's digest is `sha2`'s of
    /// the whole message. Returns the bytes hashed interleaved over all cases.
    fn check_pairing(pairing: Pairing, cases: u32) -> usize {
        use proptest::test_runner::{Config, TestRunner};
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let total = std::cell::Cell::new(0);
        runner
            .run(&pair_case(), |case| {
                let (ma, mb) = (noise(case.seed, case.lens[0]), noise(!case.seed, case.lens[1]));
                let ([a, b], paired) = feed(&case, [&ma, &mb], pairing);
                let (da, db) = (a.finish(), b.finish());
                proptest::prop_assert_eq!(da.hex(), hex::encode(sha2::Sha256::digest(&ma)), "first message");
                proptest::prop_assert_eq!(db.hex(), hex::encode(sha2::Sha256::digest(&mb)), "second message");
                proptest::prop_assert!(paired % SHA256_BLOCK == 0 && paired <= ma.len().min(mb.len()));
                if pairing == Pairing::Separate {
                    proptest::prop_assert_eq!(paired, 0);
                }
                total.set(total.get() + paired);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{pairing:?}: {e}"));
        total.get()
    }

    /// The interleaved path (SHA extensions), over random lengths and cuts, with saved and
    /// restored states between updates; whatever `BERTH_IO_HASH_PAIRS` says.
    #[test]
    fn interleaved_pairs_hash_random_messages_as_sha2_does() {
        if !sha256x2::supported() {
            eprintln!(
                "this CPU has no SHA extensions: the interleaved path cannot run here (the portable one is tested)"
            );
            return;
        }
        let paired = check_pairing(Pairing::Interleaved, 128);
        assert!(
            paired > 0,
            "no block was hashed interleaved: the test did not test the path"
        );
    }

    /// The portable path (each message by `sha2` alone), forced on whatever the CPU has.
    #[test]
    fn separate_pairs_hash_random_messages_as_sha2_does() {
        check_pairing(Pairing::Separate, 128);
    }

    #[test]
    fn saved_state_resumes() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut h = Hasher::new(alg);
            h.update(b"hello ");
            let saved = h.save();
            let mut r = Hasher::restore(&saved).unwrap();
            r.update(b"world");
            assert_eq!(r.finish(), Digest::of(alg, b"hello world"));
        }
        assert!(Hasher::restore(&[9, 0, 1, 2]).is_none());
    }
}
