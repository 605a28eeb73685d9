//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and the incremental hasher behind them.

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
    /// ([`crate::io::sha256x2`]): about 1.7–1.9 times the rate of hashing them one after the
    /// other, where the CPU has the SHA extensions. Otherwise (or for SHA-512) it is the two
    /// calls.
    pub fn update_pair(a: &mut Hasher, mut a_bytes: &[u8], b: &mut Hasher, mut b_bytes: &[u8]) {
        let (Hasher::Sha256(ha), Hasher::Sha256(hb)) = (&mut *a, &mut *b) else {
            a.update(a_bytes);
            b.update(b_bytes);
            return;
        };
        if crate::io::sha256x2::available() {
            // Each to the end of its partial block, so that the rest starts on a block.
            a_bytes = to_block_end(ha, a_bytes);
            b_bytes = to_block_end(hb, b_bytes);
            let n = a_bytes.len().min(b_bytes.len()) / SHA256_BLOCK * SHA256_BLOCK;
            if n > 0 && buffered(ha) == 0 && buffered(hb) == 0 {
                let (mut sa, mut sb) = (ha.serialize(), hb.serialize());
                let (mut wa, mut wb) = (state_words(&sa), state_words(&sb));
                if crate::io::sha256x2::compress_pair(&mut wa, &a_bytes[..n], &mut wb, &b_bytes[..n]) {
                    let blocks = (n / SHA256_BLOCK) as u64;
                    set_state(&mut sa, &wa, blocks);
                    set_state(&mut sb, &wb, blocks);
                    // A state this function wrote from one `sha2` gave back is a valid one.
                    if let (Ok(na), Ok(nb)) = (sha2::Sha256::deserialize(&sa), sha2::Sha256::deserialize(&sb)) {
                        *ha = na;
                        *hb = nb;
                        a_bytes = &a_bytes[n..];
                        b_bytes = &b_bytes[n..];
                    }
                }
            }
        }
        ha.update(a_bytes);
        hb.update(b_bytes);
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
