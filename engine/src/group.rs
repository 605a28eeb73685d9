//! Group commit: concurrent callers hand their jobs to one leader, which runs every job queued
//! at that moment as one batch (for blob commits: one metadata transaction and one WAL sync for
//! the batch instead of one each), and hands each caller its own result.
//!
//! Callers run on blocking threads. The first caller to find no leader becomes it; the others
//! wait on their own slot. A leader runs one batch — which always holds its own job — and then
//! passes the lead to the oldest job still queued, so no caller serves others for longer than
//! one batch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

enum Turn<R> {
    Wait,
    Lead,
    Done(R),
}

struct Slot<R> {
    turn: Mutex<Turn<R>>,
    cv: Condvar,
}

impl<R> Slot<R> {
    fn set(&self, turn: Turn<R>) {
        *self.turn.lock() = turn;
        self.cv.notify_one();
    }
}

struct Queue<J, R> {
    jobs: Vec<(J, Arc<Slot<R>>)>,
    leading: bool,
}

/// A group-commit point for jobs `J` with results `R`.
pub struct Group<J, R> {
    queue: Mutex<Queue<J, R>>,
}

impl<J, R> Default for Group<J, R> {
    fn default() -> Self {
        Group {
            queue: Mutex::new(Queue {
                jobs: Vec::new(),
                leading: false,
            }),
        }
    }
}

impl<J, R> Group<J, R> {
    /// Run `job` in a batch with whatever other callers queued meanwhile, and return its result.
    /// `batch` gets the jobs in queue order and must return one result per job, in that order;
    /// `failed` stands for every result of a batch that panicked (or miscounted). Blocks.
    pub fn run(&self, job: J, batch: impl FnOnce(Vec<J>) -> Vec<R>, failed: impl Fn() -> R) -> R {
        let slot = Arc::new(Slot {
            turn: Mutex::new(Turn::Wait),
            cv: Condvar::new(),
        });
        let lead = {
            let mut q = self.queue.lock();
            q.jobs.push((job, slot.clone()));
            !std::mem::replace(&mut q.leading, true)
        };
        if !lead {
            let mut turn = slot.turn.lock();
            loop {
                match std::mem::replace(&mut *turn, Turn::Wait) {
                    Turn::Wait => slot.cv.wait(&mut turn),
                    Turn::Done(r) => return r,
                    Turn::Lead => break,
                }
            }
        }
        // Leading: take everything queued (this caller's job is among it: a job leaves the
        // queue only in a batch, and the lead goes only to a job still queued).
        let taken = std::mem::take(&mut self.queue.lock().jobs);
        let (jobs, slots): (Vec<J>, Vec<Arc<Slot<R>>>) = taken.into_iter().unzip();
        let n = jobs.len();
        let results = match catch_unwind(AssertUnwindSafe(|| batch(jobs))) {
            Ok(r) if r.len() == n => r,
            _ => (0..n).map(|_| failed()).collect(),
        };
        let mut own = None;
        for (s, r) in slots.iter().zip(results) {
            if Arc::ptr_eq(s, &slot) {
                own = Some(r);
            } else {
                s.set(Turn::Done(r));
            }
        }
        {
            let mut q = self.queue.lock();
            match q.jobs.first() {
                Some((_, next)) => next.set(Turn::Lead),
                None => q.leading = false,
            }
        }
        own.unwrap_or_else(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn each_caller_gets_its_own_result_and_jobs_are_batched() {
        let group: Arc<Group<u64, u64>> = Arc::new(Group::default());
        let batches = Arc::new(AtomicUsize::new(0));
        let threads = 16;
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads as u64)
            .map(|i| {
                let (g, b, s) = (group.clone(), batches.clone(), start.clone());
                std::thread::spawn(move || {
                    s.wait();
                    let mut out = Vec::new();
                    for k in 0..50 {
                        let job = i * 1000 + k;
                        let r = g.run(
                            job,
                            |jobs| {
                                b.fetch_add(1, Ordering::SeqCst);
                                // Slow enough that others queue up behind the leader.
                                std::thread::sleep(Duration::from_micros(200));
                                jobs.iter().map(|j| j * 2).collect()
                            },
                            || u64::MAX,
                        );
                        out.push((job, r));
                    }
                    out
                })
            })
            .collect();
        let mut count = 0;
        for h in handles {
            for (job, r) in h.join().unwrap() {
                assert_eq!(r, job * 2);
                count += 1;
            }
        }
        assert_eq!(count, 16 * 50);
        let b = batches.load(Ordering::SeqCst);
        assert!(b < count, "{b} batches for {count} jobs: nothing was grouped");
        assert!(!group.queue.lock().leading);
    }

    #[test]
    fn a_panicking_batch_fails_every_job_and_the_group_goes_on() {
        let group: Arc<Group<u32, Result<u32, ()>>> = Arc::new(Group::default());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let g = group.clone();
                std::thread::spawn(move || {
                    g.run(
                        i,
                        |jobs| {
                            std::thread::sleep(Duration::from_millis(5));
                            if jobs.contains(&3) {
                                panic!("batch with job 3");
                            }
                            jobs.into_iter().map(Ok).collect()
                        },
                        || Err(()),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results[3], Err(()));
        assert!(
            results
                .iter()
                .enumerate()
                .all(|(i, r)| *r == Err(()) || *r == Ok(i as u32))
        );
        assert_eq!(group.run(9, |j| j.into_iter().map(Ok).collect(), || Err(())), Ok(9));
    }

    #[test]
    fn a_short_result_list_fails_the_batch() {
        let group: Group<u32, Option<u32>> = Group::default();
        assert_eq!(group.run(1, |_| Vec::new(), || None), None);
        assert_eq!(group.run(2, |j| j.into_iter().map(Some).collect(), || None), Some(2));
    }
}
