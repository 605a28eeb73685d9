//! The engine's SHA-256 threads: the full buffers of direct writes queue per upload, and each
//! thread holds up to two uploads and hashes their buffers side by side.

use std::sync::Arc;

use super::buffers::AlignedBuf;
use super::settings::{HASH_THREADS_VAR, hash_threads_setting};
use crate::digest::Hasher;

/// The hash state of an append's direct writes.
///
/// Full buffers are hashed by the engine's hashing threads ([`hash_pool`]) while the task fills
/// the next ones: they queue here, and the upload waits in the pool's queue while it has
/// buffers and no thread holds it. A thread takes the upload's hasher and its buffers in order,
/// going straight on to the next one queued without waiting for the task; when the queue is
/// empty it puts the hasher back. Nothing holds a thread while the upload waits for its client.
///
/// Before, each upload's buffers were hashed by a job of its own on the blocking pool (and
/// small buffers by the task itself); a thread of the pool now hashes two uploads at once
/// ([`Hasher::update_pair`]), which on these machines' SHA extensions nearly doubles what one
/// core hashes when uploads run side by side.
pub(super) struct Hashing {
    /// The hasher, while no hashing thread holds it.
    pub(super) hasher: Option<Hasher>,
    /// Buffers waiting to be hashed, oldest first.
    pub(super) queue: std::collections::VecDeque<HashJob>,
    /// Whether the upload is in the pool's queue or held by a hashing thread.
    pub(super) running: bool,
}

/// A full buffer to hash: its bytes `from..len`; `done` fires once they are (and the thread has
/// let go of the buffer).
pub(super) struct HashJob {
    pub(super) buf: Arc<AlignedBuf>,
    pub(super) from: usize,
    pub(super) len: usize,
    pub(super) done: tokio::sync::oneshot::Sender<()>,
}

/// An upload's hash state, as the pool's queue carries it.
type HashingRef = Arc<parking_lot::Mutex<Hashing>>;

/// The hashing threads' queue of uploads with buffers to hash (started at first use): one
/// thread a core (`BERTH_IO_HASH_THREADS`).
pub(super) fn hash_pool() -> &'static crossbeam_channel::Sender<HashingRef> {
    static POOL: std::sync::OnceLock<crossbeam_channel::Sender<HashingRef>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<HashingRef>();
        let threads = hash_threads_setting(std::env::var(HASH_THREADS_VAR).ok().as_deref())
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(2, |n| n.get()));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("berth-hash-{i}"))
                .spawn(move || hash_thread(&rx))
                .expect("a hashing thread starts");
        }
        tx
    })
}

/// An upload a hashing thread holds: its hasher, the buffer being hashed and how far.
struct Held {
    hashing: HashingRef,
    hasher: Hasher,
    job: HashJob,
    at: usize,
}

impl Held {
    /// Take `hashing`'s hasher and first buffer (none when it has no buffer queued).
    fn take(hashing: HashingRef) -> Option<Held> {
        let mut h = hashing.lock();
        let (Some(job), Some(hasher)) = (h.queue.pop_front(), h.hasher.take()) else {
            // Not reached: an upload is queued with its hasher and a buffer.
            h.running = false;
            return None;
        };
        drop(h);
        let at = job.from;
        Some(Held {
            hashing,
            hasher,
            job,
            at,
        })
    }

    fn rest(&self) -> &[u8] {
        &self.job.buf.bytes()[self.at..self.job.len]
    }

    /// Once its buffer is hashed: on with the next one queued (`Some`), or the hasher back and
    /// the upload let go (`None`); still held while its buffer has bytes left. The buffer's `done` fires after the state says where the
    /// hasher is, so that a task that has seen every `done` finds it back.
    fn next(self) -> Option<Held> {
        if self.at < self.job.len {
            return Some(self);
        }
        let Held {
            hashing, hasher, job, ..
        } = self;
        let HashJob { buf, done, .. } = job;
        drop(buf);
        let mut h = hashing.lock();
        match h.queue.pop_front() {
            Some(next) => {
                drop(h);
                let _ = done.send(());
                let at = next.from;
                Some(Held {
                    hashing,
                    hasher,
                    job: next,
                    at,
                })
            }
            None => {
                h.hasher = Some(hasher);
                h.running = false;
                drop(h);
                let _ = done.send(());
                None
            }
        }
    }
}

/// A hashing thread: hold up to two uploads, and hash their buffers two at a time (one alone
/// when no other is waiting), taking another waiting upload whenever one is let go.
fn hash_thread(rx: &crossbeam_channel::Receiver<HashingRef>) {
    let mut held: Vec<Held> = Vec::with_capacity(2);
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(u) => held.extend(Held::take(u)),
                Err(_) => return,
            }
        }
        if held.len() < 2
            && let Ok(u) = rx.try_recv()
        {
            held.extend(Held::take(u));
        }
        hash_held(&mut held);
        held = held.into_iter().filter_map(Held::next).collect();
    }
}

/// Hash what the held uploads' buffers have left: two side by side for the length they share,
/// or the one to its end.
fn hash_held(held: &mut [Held]) {
    match held {
        [a, b] => {
            let n = a.rest().len().min(b.rest().len());
            Hasher::update_pair(
                &mut a.hasher,
                &a.job.buf.bytes()[a.at..a.at + n],
                &mut b.hasher,
                &b.job.buf.bytes()[b.at..b.at + n],
            );
            a.at += n;
            b.at += n;
        }
        [a] => {
            a.hasher.update(&a.job.buf.bytes()[a.at..a.job.len]);
            a.at = a.job.len;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::buffers::{DIRECT_BUF, DIRECT_LARGE};

    /// A hashing thread takes each upload's buffers in order — two uploads side by side, of
    /// different lengths and starting mid-block, then a third alone — lets go of each buffer
    /// before saying it is hashed, and puts each hasher back when its queue is empty.
    #[test]
    fn queued_buffers_are_hashed_in_order() {
        use crate::digest::Algorithm;
        let bufs: Vec<Arc<AlignedBuf>> = (0..7u8)
            .map(|n| {
                let mut b = AlignedBuf::new(if n == 6 { DIRECT_LARGE } else { DIRECT_BUF });
                for (i, x) in b.bytes_mut().iter_mut().enumerate() {
                    *x = (i as u8).wrapping_mul(31) ^ n;
                }
                Arc::new(b)
            })
            .collect();
        let mut done = Vec::new();
        let mut job = |n: usize, from: usize, len: usize| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            done.push(rx);
            HashJob {
                buf: bufs[n].clone(),
                from,
                len,
                done: tx,
            }
        };
        // Upload A: a first buffer from a partial block on, three behind it (the last part-full).
        // Upload B: two buffers, the first from byte 7. Upload C: one large buffer.
        let uploads = [
            vec![
                (0, 100, DIRECT_BUF),
                (1, 0, DIRECT_BUF),
                (2, 0, DIRECT_BUF),
                (3, 0, 5000),
            ],
            vec![(4, 7, DIRECT_BUF), (5, 0, DIRECT_BUF)],
            vec![(6, 0, DIRECT_LARGE)],
        ];
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut states = Vec::new();
        for jobs in &uploads {
            let queue = jobs.iter().map(|&(n, from, len)| job(n, from, len)).collect();
            let hashing = Arc::new(parking_lot::Mutex::new(Hashing {
                hasher: Some(Hasher::new(Algorithm::Sha256)),
                queue,
                running: true,
            }));
            tx.send(hashing.clone()).unwrap();
            states.push(hashing);
        }
        drop(tx);
        // Run here until the queue is empty: A and B are taken together, C after.
        hash_thread(&rx);

        for (jobs, hashing) in uploads.iter().zip(&states) {
            let mut expect = Hasher::new(Algorithm::Sha256);
            for &(n, from, len) in jobs {
                expect.update(&bufs[n].bytes()[from..len]);
            }
            let mut h = hashing.lock();
            assert!(!h.running && h.queue.is_empty());
            assert_eq!(h.hasher.take().expect("the hasher is back").finish(), expect.finish());
        }
        for (n, mut rx) in done.into_iter().enumerate() {
            assert!(rx.try_recv().is_ok(), "buffer {n} is said to be hashed");
            assert_eq!(Arc::strong_count(&bufs[n]), 1, "the thread let go of buffer {n}");
        }
    }

    /// Uploads as the hashing pool gets them, at random: two or three uploads, each with a
    /// random part already hashed (an earlier request that ended mid-block), then small and
    /// large buffers whose hashed part starts and ends anywhere (a request resumed from a
    /// partial block, a part-full last buffer). One hashing thread takes the first two side by
    /// side ([`Hasher::update_pair`]: interleaved where the CPU has the SHA extensions and
    /// `BERTH_IO_HASH_PAIRS` is on) and the third when one of them is done; every upload's digest
    /// is `sha2`'s of all its bytes.
    #[test]
    fn the_pool_hashes_random_uploads_as_sha2_does() {
        use proptest::prelude::*;
        use proptest::sample::Index;
        use proptest::test_runner::{Config, TestRunner};
        use sha2::Digest as _;

        use crate::digest::Algorithm;

        let upload = (
            0usize..300,
            proptest::collection::vec((any::<bool>(), any::<Index>(), any::<Index>(), any::<u8>()), 1..5),
        );
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(upload, 2..=3), |uploads| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let mut states = Vec::new();
                for (u, (prefix, jobs)) in uploads.iter().enumerate() {
                    let mut hasher = Hasher::new(Algorithm::Sha256);
                    let mut all: Vec<u8> = (0..*prefix).map(|i| (i * 13 + u) as u8).collect();
                    hasher.update(&all);
                    let mut queue = std::collections::VecDeque::new();
                    for &(large, a, b, fill) in jobs {
                        let mut buf = AlignedBuf::new(if large { DIRECT_LARGE } else { DIRECT_BUF });
                        for (i, x) in buf.bytes_mut().iter_mut().enumerate() {
                            *x = ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ fill;
                        }
                        let (p, q) = (a.index(buf.len() + 1), b.index(buf.len() + 1));
                        let (from, len) = (p.min(q), p.max(q));
                        all.extend_from_slice(&buf.bytes()[from..len]);
                        let (done, _) = tokio::sync::oneshot::channel();
                        queue.push_back(HashJob {
                            buf: Arc::new(buf),
                            from,
                            len,
                            done,
                        });
                    }
                    let hashing = Arc::new(parking_lot::Mutex::new(Hashing {
                        hasher: Some(hasher),
                        queue,
                        running: true,
                    }));
                    tx.send(hashing.clone()).unwrap();
                    states.push((hashing, hex::encode(sha2::Sha256::digest(&all))));
                }
                drop(tx);
                hash_thread(&rx);
                for (u, (hashing, want)) in states.iter().enumerate() {
                    let mut h = hashing.lock();
                    prop_assert!(!h.running && h.queue.is_empty());
                    let got = h.hasher.take().expect("the hasher is back").finish();
                    prop_assert_eq!(got.hex(), want.as_str(), "upload {}", u);
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
