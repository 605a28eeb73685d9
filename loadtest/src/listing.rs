//! Paginated listings walked the way clients walk them: first page with `n=`, then each `Link: rel="next"`.
//!
//! [`walk_catalog`] walks the whole catalog at least once (more walks while time is left);
//! [`walk_tags`] walks the tag list of a random repository again and again for a fixed time. Both time
//! every page on one connection and report the time per page.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::blob::Rng;
use crate::client::{Conn, Target};
use crate::ops;
use crate::stats::{Latency, new_histogram};

/// Time per page of a series of walks.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PageStats {
    /// Complete walks.
    pub walks: u64,
    /// Pages fetched in all.
    pub pages: u64,
    /// Entries listed by the first complete walk.
    pub entries_first_walk: u64,
    /// Failed pages (a failure ends that walk).
    pub errors: u64,
    /// The first error, if any.
    pub error: Option<String>,
    /// Time per page.
    pub page: Latency,
}

/// Accumulates page times.
struct Pages {
    hist: hdrhistogram::Histogram<u64>,
    stats: PageStats,
}

impl Pages {
    fn new() -> Self {
        Pages {
            hist: new_histogram(),
            stats: PageStats::default(),
        }
    }

    /// Walks from `first` to the last page; returns the entries listed, or `None` if a page failed.
    async fn walk(&mut self, conn: &mut Conn, first: String, stop: &watch::Receiver<bool>) -> Option<u64> {
        let mut path = first;
        let mut entries = 0;
        loop {
            if *stop.borrow() {
                return None;
            }
            let began = Instant::now();
            match ops::list_page(conn, &path).await {
                Ok((n, next)) => {
                    self.hist.saturating_record(began.elapsed().as_micros().max(1) as u64);
                    self.stats.pages += 1;
                    entries += n;
                    match next {
                        Some(p) => path = p,
                        None => break,
                    }
                }
                Err(e) => {
                    self.stats.errors += 1;
                    self.stats.error.get_or_insert(e);
                    conn.reset();
                    return None;
                }
            }
        }
        if self.stats.walks == 0 {
            self.stats.entries_first_walk = entries;
        }
        self.stats.walks += 1;
        Some(entries)
    }

    fn finish(mut self) -> PageStats {
        self.stats.page = Latency::from_histogram(&self.hist);
        self.stats
    }
}

/// Walks `/v2/_catalog?n=<page>` to the end, at least once and then again while `duration` lasts.
pub async fn walk_catalog(
    target: &Arc<Target>,
    page: u64,
    duration: Duration,
    stop: &watch::Receiver<bool>,
) -> PageStats {
    let mut conn = Conn::new(Arc::clone(target));
    let mut pages = Pages::new();
    let start = Instant::now();
    // A failed walk is retried only while time is left, so a broken catalog cannot loop forever.
    while (pages.stats.walks == 0 || start.elapsed() < duration) && !*stop.borrow() {
        let done = pages.walk(&mut conn, format!("/v2/_catalog?n={page}"), stop).await;
        if done.is_none() && start.elapsed() >= duration {
            break;
        }
    }
    pages.finish()
}

/// Walks the tag list of a random repository (`repo(i)`, `i` uniform in `0..repos`) with `n=<page>`, for `duration`.
pub async fn walk_tags(
    target: &Arc<Target>,
    repo: impl Fn(u64) -> String,
    repos: u64,
    page: u64,
    duration: Duration,
    seed: u64,
    stop: &watch::Receiver<bool>,
) -> PageStats {
    let mut conn = Conn::new(Arc::clone(target));
    let mut rng = Rng::new(seed);
    let mut pages = Pages::new();
    let start = Instant::now();
    while start.elapsed() < duration && !*stop.borrow() {
        let name = repo(rng.below(repos));
        pages
            .walk(&mut conn, format!("/v2/{name}/tags/list?n={page}"), stop)
            .await;
    }
    pages.finish()
}
