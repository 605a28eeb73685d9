//! A deterministic registry population of small images, pushed incrementally through the API.
//!
//! A [`Spec`] `B:R:T` is `B` small layer blobs spread over `R` repositories, and `T` tags in each
//! repository. Everything is named by its indices, so any run can recompute what is (or should be)
//! in the registry without remembering it:
//!
//! - repository `r` is `<prefix>/r<r>`;
//! - global blob `g` (`0 <= g < B`) is blob `k = g / R` of repository `r = g % R`; its content is
//!   [`Pattern`] bytes ending with a tail made of the seed, `r` and `k`, so repository `r` holds
//!   blobs `0..n_r` with `n_r = B / R + (r < B % R)`;
//! - tag `t<t>` of repository `r` is a one-layer image of blob `t % n_r` (its config names the
//!   layer, so config and manifest are unique per layer).
//!
//! A larger spec with at least as many blobs per repository and tags per repository as a smaller one
//! contains it, so growing `1000:100:10` to `100000:10000:10` pushes only what is new. Population works
//! repository by repository: one worker pushes a repository's blobs, then its tags, the last tag last.
//! A repository whose last blob and last tag answer `HEAD` is skipped in two requests; a repository
//! that needs work has each item checked before it is pushed. A marker tag (in `<prefix>/done`) is
//! put after a spec is complete, so a re-run of the same spec costs one request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Method, StatusCode};
use tokio::sync::watch;

use crate::blob::{Blob, Pattern, ReqBody, tail};
use crate::client::{Conn, Target, drain};
use crate::ops::{self, Ctx};

/// A population size: blobs, repositories, tags per repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// Layer blobs in all.
    pub blobs: u64,
    /// Repositories.
    pub repos: u64,
    /// Tags in each repository.
    pub tags: u64,
}

impl Spec {
    /// Parses `blobs:repos:tags`, e.g. `100000:10000:3`; `k` and `m` suffixes mean 10^3 and 10^6.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let [b, r, t] = parts[..] else {
            return Err(format!(
                "invalid size {text:?}: expected blobs:repos:tags, e.g. 1000:100:10"
            ));
        };
        let num = |s: &str, what: &str| -> Result<u64, String> {
            let s = s.trim().to_ascii_lowercase();
            let (digits, mult) = match s.strip_suffix('k') {
                Some(d) => (d, 1_000),
                None => match s.strip_suffix('m') {
                    Some(d) => (d, 1_000_000),
                    None => (s.as_str(), 1),
                },
            };
            let v: u64 = digits
                .parse()
                .map_err(|_| format!("invalid {what} {s:?} in {text:?}"))?;
            v.checked_mul(mult)
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("{what} in {text:?} must be positive"))
        };
        let spec = Spec {
            blobs: num(b, "blob count")?,
            repos: num(r, "repository count")?,
            tags: num(t, "tag count")?,
        };
        if spec.repos > spec.blobs {
            return Err(format!(
                "{text:?}: more repositories than blobs (each repository needs one)"
            ));
        }
        Ok(spec)
    }

    /// Blobs in repository `r`.
    pub fn blobs_in(&self, r: u64) -> u64 {
        self.blobs / self.repos + u64::from(r < self.blobs % self.repos)
    }

    /// Repository and in-repository index of global blob `g`.
    pub fn locate(&self, g: u64) -> (u64, u64) {
        (g % self.repos, g / self.repos)
    }

    /// Tags in all.
    pub fn total_tags(&self) -> u64 {
        self.repos * self.tags
    }

    /// Whether every item of `smaller` is also an item of `self`.
    pub fn contains(&self, smaller: &Spec) -> bool {
        // `blobs_in` is non-increasing in `r`, and `smaller` needs `q + 1` blobs below `rem` and
        // `q` from there on: checking the last repository of each stretch is enough.
        let rem = smaller.blobs % smaller.repos;
        self.repos >= smaller.repos
            && self.tags >= smaller.tags
            && (rem == 0 || self.blobs_in(rem - 1) >= smaller.blobs_in(rem - 1))
            && self.blobs_in(smaller.repos - 1) >= smaller.blobs_in(smaller.repos - 1)
    }

    /// Text form, `blobs:repos:tags`.
    pub fn label(&self) -> String {
        format!("{}:{}:{}", self.blobs, self.repos, self.tags)
    }
}

/// Names and contents of the items of a population.
pub struct Layout {
    /// Repository name prefix.
    pub prefix: String,
    /// Seed of the blob tails.
    pub seed: u64,
    /// Layer blob size in bytes.
    pub blob_size: u64,
    /// Content source.
    pub pattern: Arc<Pattern>,
}

impl Layout {
    /// Name of repository `r`.
    pub fn repo(&self, r: u64) -> String {
        format!("{}/r{r}", self.prefix)
    }

    /// Layer blob `k` of repository `r`.
    pub fn blob(&self, r: u64, k: u64) -> Blob {
        self.pattern.blob(self.blob_size, tail(b"BLTSCALE", self.seed, r, k))
    }

    /// Name of tag `t`.
    pub fn tag(t: u64) -> String {
        format!("t{t}")
    }

    /// Repository and tag of the marker put once `spec` is complete.
    fn marker(&self, spec: &Spec) -> (String, String) {
        (
            format!("{}/done", self.prefix),
            format!(
                "b{}-r{}-t{}-s{}-z{}",
                spec.blobs, spec.repos, spec.tags, self.seed, self.blob_size
            ),
        )
    }
}

/// What populating one spec did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Populated {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Repositories that needed work.
    pub repos_touched: u64,
    /// Blobs uploaded (layers and configs).
    pub blobs_pushed: u64,
    /// Manifests put.
    pub manifests_put: u64,
    /// HTTP requests sent.
    pub requests: u64,
    /// Whether the marker showed the spec complete already.
    pub already_complete: bool,
}

/// HEADs a path: `Ok(true)` on 200, `Ok(false)` on 404.
async fn exists(conn: &mut Conn, path: &str) -> Result<bool, String> {
    let resp = conn.send(Method::HEAD, path, &[], ReqBody::Empty).await?;
    let status = resp.status();
    drain(resp.into_body(), None).await?;
    match status {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        other => Err(format!("HEAD {path}: {other}")),
    }
}

/// Counters shared by the populating workers.
#[derive(Default)]
struct Counts {
    next_repo: AtomicU64,
    touched: AtomicU64,
    blobs: AtomicU64,
    manifests: AtomicU64,
}

/// Brings repository `r` to its share of `spec`.
///
/// Any spec pushes a repository's blob 0 first, so a repository without it was never touched and
/// its items go up unchecked; otherwise each item is checked with a `HEAD` before it is pushed.
async fn fill_repo(
    conn: &mut Conn,
    ctx: &Ctx,
    layout: &Layout,
    spec: &Spec,
    r: u64,
    counts: &Counts,
) -> Result<(), String> {
    let repo = layout.repo(r);
    let blob_path = |digest: &str| format!("/v2/{repo}/blobs/{digest}");
    let n = spec.blobs_in(r);
    let last_tag = Layout::tag(spec.tags - 1);
    if exists(conn, &blob_path(&layout.blob(r, n - 1).digest)).await?
        && exists(conn, &format!("/v2/{repo}/manifests/{last_tag}")).await?
    {
        return Ok(());
    }
    counts.touched.fetch_add(1, Ordering::Relaxed);
    let fresh = n == 1 || !exists(conn, &blob_path(&layout.blob(r, 0).digest)).await?;
    for k in 0..n {
        let layer = layout.blob(r, k);
        if fresh || !exists(conn, &blob_path(&layer.digest)).await? {
            ops::upload_layer(conn, ctx, &repo, &layer, ops::Upload::Mono).await?;
            counts.blobs.fetch_add(1, Ordering::Relaxed);
        }
    }
    for t in 0..spec.tags {
        let tag = Layout::tag(t);
        if !fresh && exists(conn, &format!("/v2/{repo}/manifests/{tag}")).await? {
            continue;
        }
        let docs = ops::image_docs(&layout.blob(r, t % n));
        // Tags `t` and `t + n` share a layer, hence a config: only the first one pushes it.
        if t < n && (fresh || !exists(conn, &blob_path(&docs.config_digest)).await?) {
            ops::upload_mono(conn, ctx.mono, &repo, &docs.config_digest, ReqBody::full(docs.config)).await?;
            counts.blobs.fetch_add(1, Ordering::Relaxed);
        }
        ops::put_manifest(conn, &repo, &tag, docs.manifest).await?;
        counts.manifests.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Pushes whatever `spec` needs that the registry lacks, with `workers` connections.
pub async fn populate(
    target: &Arc<Target>,
    ctx: &Arc<Ctx>,
    layout: &Arc<Layout>,
    spec: Spec,
    workers: usize,
    stop: &watch::Receiver<bool>,
) -> Result<Populated, String> {
    let start = Instant::now();
    let (marker_repo, marker_tag) = layout.marker(&spec);
    let mut conn = Conn::new(Arc::clone(target));
    if exists(&mut conn, &format!("/v2/{marker_repo}/manifests/{marker_tag}")).await? {
        return Ok(Populated {
            seconds: start.elapsed().as_secs_f64(),
            requests: conn.requests,
            already_complete: true,
            ..Populated::default()
        });
    }
    let counts = Arc::new(Counts::default());
    let handles: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (target, ctx, layout, counts) = (
                Arc::clone(target),
                Arc::clone(ctx),
                Arc::clone(layout),
                Arc::clone(&counts),
            );
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(target);
                loop {
                    if *stop.borrow() {
                        return (conn.requests, Err("interrupted".to_string()));
                    }
                    let r = counts.next_repo.fetch_add(1, Ordering::Relaxed);
                    if r >= spec.repos {
                        return (conn.requests, Ok(()));
                    }
                    // One retry on a fresh connection: a dropped keep-alive connection is not a failure.
                    let mut result = fill_repo(&mut conn, &ctx, &layout, &spec, r, &counts).await;
                    if result.is_err() {
                        conn.reset();
                        result = fill_repo(&mut conn, &ctx, &layout, &spec, r, &counts).await;
                    }
                    if let Err(e) = result {
                        return (conn.requests, Err(format!("{}: {e}", layout.repo(r))));
                    }
                }
            })
        })
        .collect();
    let mut requests = 0;
    let mut first_error = None;
    for h in handles {
        match h.await {
            Ok((n, res)) => {
                requests += n;
                if let Err(e) = res {
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => {
                first_error.get_or_insert(format!("populate worker failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // The marker: an image of the first blob of repository 0, tagged after everything else is in.
    let docs = ops::image_docs(&layout.blob(0, 0));
    ops::upload_layer(&mut conn, ctx, &marker_repo, &layout.blob(0, 0), ops::Upload::Mono).await?;
    ops::upload_mono(
        &mut conn,
        ctx.mono,
        &marker_repo,
        &docs.config_digest,
        ReqBody::full(docs.config),
    )
    .await?;
    ops::put_manifest(&mut conn, &marker_repo, &marker_tag, docs.manifest).await?;
    Ok(Populated {
        seconds: start.elapsed().as_secs_f64(),
        repos_touched: counts.touched.load(Ordering::Relaxed),
        blobs_pushed: counts.blobs.load(Ordering::Relaxed),
        manifests_put: counts.manifests.load(Ordering::Relaxed),
        requests: requests + conn.requests,
        already_complete: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            Spec::parse("1000:100:10").unwrap(),
            Spec {
                blobs: 1000,
                repos: 100,
                tags: 10
            }
        );
        assert_eq!(
            Spec::parse(" 1m:100k:3 ").unwrap(),
            Spec {
                blobs: 1_000_000,
                repos: 100_000,
                tags: 3
            }
        );
        for bad in [
            "1000:100",
            "1000:100:10:1",
            "a:1:1",
            "0:1:1",
            "10:0:1",
            "10:1:0",
            "10:20:1",
            "-1:1:1",
            "",
        ] {
            assert!(Spec::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn blobs_map_one_to_one_onto_repositories() {
        let spec = Spec::parse("1003:10:2").unwrap();
        let total: u64 = (0..spec.repos).map(|r| spec.blobs_in(r)).sum();
        assert_eq!(total, spec.blobs);
        assert_eq!(spec.blobs_in(0), 101);
        assert_eq!(spec.blobs_in(3), 100);
        let mut seen = std::collections::HashSet::new();
        for g in 0..spec.blobs {
            let (r, k) = spec.locate(g);
            assert!(
                r < spec.repos && k < spec.blobs_in(r),
                "blob {g} -> ({r}, {k}) out of range"
            );
            assert!(seen.insert((r, k)), "blob {g} maps onto an item already taken");
        }
    }

    #[test]
    fn growth_contains_smaller_specs() {
        let s = |t: &str| Spec::parse(t).unwrap();
        assert!(s("100000:10000:3").contains(&s("1000:100:3")));
        assert!(s("100000:10000:10").contains(&s("1000:100:10")));
        assert!(
            !s("100000:10000:3").contains(&s("1000:100:10")),
            "fewer tags per repository"
        );
        assert!(
            !s("10000:10000:3").contains(&s("1000:100:3")),
            "fewer blobs per repository"
        );
        assert!(!s("1000:50:3").contains(&s("1000:100:3")), "fewer repositories");
        // 1005:10 puts 101 blobs in repositories 0..5; 1004:10 only in 0..4.
        assert!(s("1005:10:1").contains(&s("1004:10:1")));
        assert!(!s("1004:10:1").contains(&s("1005:10:1")));
        // Brute force over small specs: `contains` agrees with item-by-item inclusion.
        for a in [(5, 2), (6, 2), (7, 3), (9, 3), (10, 4), (12, 4)] {
            for b in [(5, 2), (6, 2), (7, 3), (9, 3), (10, 4), (12, 4)] {
                let (big, small) = (
                    Spec {
                        blobs: a.0,
                        repos: a.1,
                        tags: 1,
                    },
                    Spec {
                        blobs: b.0,
                        repos: b.1,
                        tags: 1,
                    },
                );
                let by_items =
                    big.repos >= small.repos && (0..small.repos).all(|r| big.blobs_in(r) >= small.blobs_in(r));
                assert_eq!(big.contains(&small), by_items, "{a:?} contains {b:?}");
            }
        }
    }

    #[test]
    fn layout_names_are_deterministic_and_distinct() {
        let layout = Layout {
            prefix: "p".into(),
            seed: 9,
            blob_size: 300,
            pattern: Arc::new(Pattern::new(9)),
        };
        assert_eq!(layout.repo(42), "p/r42");
        assert_eq!(Layout::tag(7), "t7");
        assert_eq!(layout.blob(1, 2).digest, layout.blob(1, 2).digest);
        assert_ne!(layout.blob(1, 2).digest, layout.blob(2, 1).digest);
        assert_eq!(layout.blob(1, 2).size, 300);
        let other_seed = Layout {
            prefix: "p".into(),
            seed: 10,
            blob_size: 300,
            pattern: Arc::clone(&layout.pattern),
        };
        assert_ne!(other_seed.blob(1, 2).digest, layout.blob(1, 2).digest);
    }
}
