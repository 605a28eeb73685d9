//! Reads of a uniformly random item of a [`Spec`] population: blob `GET`, blob `HEAD`, manifest `GET` by tag.
//!
//! The choice is over the whole population (a global blob index in `0..blobs`, or a repository and a
//! tag in `0..repos × 0..tags`), never a hot subset, so a cache that only holds part of it shows.
//! Digests are recomputed per operation from the layout (about a microsecond for a small blob),
//! so a million-blob population needs no table in memory.

use std::sync::Arc;

use crate::blob::Rng;
use crate::client::Conn;
use crate::ops::{self, Ctx};
use crate::population::{Layout, Spec};
use crate::timed::Op;

/// Which read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum ReadKind {
    /// `GET` a random blob, checking its length.
    Blob,
    /// `GET` the manifest of a random tag of a random repository.
    Manifest,
    /// `HEAD` a random blob, checking its `Content-Length`.
    Head,
}

impl ReadKind {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ReadKind::Blob => "blob GET",
            ReadKind::Manifest => "manifest GET",
            ReadKind::Head => "blob HEAD",
        }
    }
}

/// A random read over a population.
pub struct RandomRead {
    /// What to read.
    pub kind: ReadKind,
    /// The population read from.
    pub spec: Spec,
    /// Its names and contents.
    pub layout: Arc<Layout>,
    /// Operation settings (digest checks of pulls).
    pub ctx: Arc<Ctx>,
}

/// A uniformly random `(repository, tag)` of `spec`.
pub fn pick_tag(spec: &Spec, rng: &mut Rng) -> (u64, u64) {
    let i = rng.below(spec.total_tags());
    (i / spec.tags, i % spec.tags)
}

/// A uniformly random `(repository, blob)` of `spec`.
pub fn pick_blob(spec: &Spec, rng: &mut Rng) -> (u64, u64) {
    spec.locate(rng.below(spec.blobs))
}

impl Op for RandomRead {
    async fn run(&self, conn: &mut Conn, rng: &mut Rng, _worker: u64, _seq: u64) -> Result<u64, String> {
        match self.kind {
            ReadKind::Manifest => {
                let (r, t) = pick_tag(&self.spec, rng);
                ops::get_manifest(conn, &self.layout.repo(r), &Layout::tag(t)).await
            }
            ReadKind::Blob | ReadKind::Head => {
                let (r, k) = pick_blob(&self.spec, rng);
                let blob = self.layout.blob(r, k);
                let repo = self.layout.repo(r);
                if self.kind == ReadKind::Head {
                    ops::head_blob(conn, &repo, &blob.digest, blob.size).await
                } else {
                    ops::pull_blob(conn, &self.ctx, &repo, &blob.digest, blob.size).await
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chi-square-style check that picks cover the whole population evenly, not a hot subset.
    #[test]
    fn picks_are_uniform_over_the_population() {
        let spec = Spec::parse("1000:100:10").unwrap();
        let mut rng = Rng::new(42);
        let mut blob_hits = vec![0u32; spec.blobs as usize];
        let mut tag_hits = vec![0u32; spec.total_tags() as usize];
        let draws = 200_000;
        for _ in 0..draws {
            let (r, k) = pick_blob(&spec, &mut rng);
            assert!(k < spec.blobs_in(r));
            blob_hits[(k * spec.repos + r) as usize] += 1; // the inverse of `locate`
            let (r, t) = pick_tag(&spec, &mut rng);
            assert!(r < spec.repos && t < spec.tags);
            tag_hits[(r * spec.tags + t) as usize] += 1;
        }
        for hits in [&blob_hits, &tag_hits] {
            let expect = draws as f64 / hits.len() as f64; // 200 per item
            assert!(hits.iter().all(|&h| h > 0), "some items never drawn");
            let chi2: f64 = hits.iter().map(|&h| (h as f64 - expect).powi(2) / expect).sum();
            // 999 degrees of freedom: mean 999, sd ~45; 1200 is far out in the tail.
            assert!(chi2 < 1200.0, "chi2 {chi2}");
            let max = *hits.iter().max().unwrap() as f64;
            assert!(max < expect * 1.5, "hot item: {max} hits, expected ~{expect}");
        }
    }

    #[test]
    fn seeds_change_the_sequence() {
        let spec = Spec::parse("1000000:100000:3").unwrap();
        let seq = |seed| {
            let mut rng = Rng::new(seed);
            (0..8).map(|_| pick_blob(&spec, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(seq(1), seq(1));
        assert_ne!(seq(1), seq(2));
        // Large populations are reached too: some pick lands in the upper half of the repositories.
        let mut rng = Rng::new(5);
        assert!((0..64).any(|_| pick_blob(&spec, &mut rng).0 >= 50_000));
    }
}
