//! `berth-loadtest hashrate`: how fast this machine computes SHA-256, on one thread and on several
//! at once.
//!
//! A registry must hash every byte it receives to check the digest the client names, and SHA-256
//! of one stream cannot be split across cores: one thread's rate here is the most that one
//! upload can ever be taken at, whatever the registry; the rate of all threads together bounds
//! concurrent uploads. It uses the `sha2` crate, as Berth's engine does (SHA-NI where the CPU has
//! it), over a 1 MiB buffer of pseudo-random bytes, which stays in cache like a received frame.

use std::time::{Duration, Instant};

use clap::Args;
use sha2::{Digest, Sha256};

use crate::blob::Rng;

/// Arguments of `hashrate`.
#[derive(Debug, Args, Clone)]
pub struct HashrateArgs {
    /// Thread counts to measure in turn (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
}

/// Size of the buffer hashed over and over.
const BUF: usize = 1024 * 1024;

/// One measurement: bytes hashed by each thread (one entry a thread) and the time they took.
#[derive(Debug)]
pub struct Rate {
    /// Bytes each thread hashed.
    pub bytes: Vec<u64>,
    /// Wall time of the measurement.
    pub elapsed: Duration,
}

impl Rate {
    /// Total rate in MB/s (10^6 bytes per second).
    pub fn total_mb_s(&self) -> f64 {
        self.bytes.iter().sum::<u64>() as f64 / self.elapsed.as_secs_f64() / 1e6
    }
    /// Rate of one thread on average, MB/s.
    pub fn per_thread_mb_s(&self) -> f64 {
        self.total_mb_s() / self.bytes.len() as f64
    }
}

/// Hash a 1 MiB buffer over and over on `threads` threads at once for `time`. Each thread times
/// its own loop; the rate is taken over the longest of them.
pub fn measure(threads: usize, time: Duration) -> Rate {
    let buf = pseudo_random(BUF);
    let runs: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let buf = &buf;
                s.spawn(move || {
                    let start = Instant::now();
                    let mut h = Sha256::new();
                    let mut rounds = 0u64;
                    while rounds == 0 || start.elapsed() < time {
                        h.update(buf);
                        rounds += 1;
                    }
                    std::hint::black_box(h.finalize());
                    (rounds * buf.len() as u64, start.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("hash thread")).collect()
    });
    Rate {
        bytes: runs.iter().map(|r| r.0).collect(),
        elapsed: runs.iter().map(|r| r.1).max().unwrap_or_default(),
    }
}

/// Whether this build's SHA-256 gives the standard answer (FIPS 180-2, "abc"), so that no rate
/// is reported for a hasher that is wrong.
fn hasher_is_sound() -> bool {
    let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    hex::encode(Sha256::digest(b"abc")) == want
}

/// Run the measurements and print one line each.
pub fn run(args: &HashrateArgs) -> i32 {
    if args.seconds <= 0.0 || args.threads.contains(&0) {
        eprintln!("error: --seconds and --threads must be positive");
        return 2;
    }
    if !hasher_is_sound() {
        eprintln!("error: SHA-256 of \"abc\" is wrong in this build");
        return 1;
    }
    for &n in &args.threads {
        let r = measure(n, Duration::from_secs_f64(args.seconds));
        println!(
            "hashrate sha256 {n} thread{}: {:.0} MB/s in all, {:.0} MB/s a thread",
            if n == 1 { "" } else { "s" },
            r.total_mb_s(),
            r.per_thread_mb_s()
        );
    }
    0
}

/// `len` (a multiple of 8) bytes of the loadtest's seeded generator.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut rng = Rng::new(len as u64);
    (0..len / 8).flat_map(|_| rng.next_u64().to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hasher_gives_the_standard_digest() {
        assert!(hasher_is_sound());
    }

    #[test]
    fn a_measurement_counts_whole_buffers_on_every_thread() {
        let r = measure(2, Duration::from_millis(50));
        assert_eq!(r.bytes.len(), 2);
        for &b in &r.bytes {
            assert!(b >= BUF as u64 && b % BUF as u64 == 0, "{b}");
        }
        assert!(r.elapsed >= Duration::from_millis(50));
        let total = r.bytes.iter().sum::<u64>() as f64 / r.elapsed.as_secs_f64() / 1e6;
        assert!((r.total_mb_s() - total).abs() < 1e-9);
        assert!((r.per_thread_mb_s() * 2.0 - total).abs() < 1e-9);
    }

    #[test]
    fn the_buffer_is_not_constant() {
        let b = pseudo_random(4096);
        assert_eq!(b.len(), 4096);
        assert!(b.iter().any(|&x| x != b[0]));
        assert_eq!(b, pseudo_random(4096));
    }
}
