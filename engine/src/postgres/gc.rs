//! Garbage collection of one repository, inside the caller's transaction (which holds the
//! repository's lock, so no push or deletion of the repository interleaves). The rules are the
//! embedded store's, from one place ([`crate::reach`]): the manifests the [`Sweep`] names go
//! first (with `Untagged`, those no tag reaches — directly, through an index, or as a referrer
//! of a reached manifest; with `Image`, one evicted image); then blob links that no remaining
//! manifest references. Anything linked or pushed less than
//! `grace_secs` ago (by the database's clock) stays, with what it references.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::records::{NOW, digest, forget_repo_if_empty, remove_manifest, row, rows, unlink_blob};
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::meta::RepoGc;
use crate::reach::{Refs, Sweep, removable};

/// Sweep `repo` (see the module's comment).
pub(super) async fn sweep(tx: &Transaction<'_>, repo: &str, grace_secs: u64, sweep: &Sweep) -> Result<RepoGc> {
    let now: i64 = row(tx, &format!("SELECT {NOW}"), &[])
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| Error::Meta(MetaError::Database("the clock query returned no row".into())))?;
    let grace = i64::try_from(grace_secs).unwrap_or(i64::MAX);
    let young = |t: i64| now.saturating_sub(t) < grace;
    let mut out = RepoGc::default();
    let mut manifests: HashMap<String, Refs> = HashMap::new();
    let stored = rows(
        tx,
        "SELECT r.digest, r.pushed, m.media_type, m.bytes FROM repo_manifests r
         JOIN manifests m ON m.digest = r.digest WHERE r.repo = $1",
        &[&repo],
    )
    .await?;
    for r in &stored {
        let d: String = r.get(0);
        let media_type: String = r.get(2);
        let bytes: &[u8] = r.get(3);
        match Refs::of(&media_type, bytes, young(r.get(1))) {
            Ok(refs) => manifests.insert(d, refs),
            Err(e) => {
                out.skipped = Some(format!("manifest {d} cannot be read ({e}); nothing removed"));
                return Ok(out);
            }
        };
    }
    let tagged: Vec<String> = if matches!(sweep, Sweep::Untagged) {
        rows(tx, "SELECT digest FROM tags WHERE repo = $1", &[&repo])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    let gone = removable(&manifests, sweep, || tagged);
    // An eviction touches only the links of what it removed (a link pushed a moment ago for a
    // manifest on its way stays, whatever the grace).
    let only: Option<HashSet<String>> = matches!(sweep, Sweep::Image(_)).then(|| {
        gone.iter()
            .filter_map(|d| manifests.get(d))
            .flat_map(|r| r.blobs.iter().map(Digest::to_string))
            .collect()
    });
    for d in gone {
        manifests.remove(&d);
        if remove_manifest(tx, repo, &d).await? {
            out.manifests.push(digest(&d)?);
        }
    }
    let referenced: HashSet<String> = manifests
        .values()
        .flat_map(|r| r.blobs.iter().map(Digest::to_string))
        .collect();
    let links = rows(
        tx,
        "SELECT digest, linked FROM repo_blobs WHERE repo = $1 ORDER BY digest",
        &[&repo],
    )
    .await?;
    for r in &links {
        let d: String = r.get(0);
        if referenced.contains(&d) || young(r.get(1)) || only.as_ref().is_some_and(|o| !o.contains(&d)) {
            continue;
        }
        if let Some((size, last, object)) = unlink_blob(tx, repo, &d).await? {
            let digest = digest(&d)?;
            if last {
                out.orphans.push((digest.clone(), size));
            }
            if let Some(o) = object {
                let id = o
                    .parse()
                    .map_err(|_| Error::Meta(MetaError::Corrupt(format!("a stored object id {o:?} is not valid"))))?;
                out.orphan_objects.push(id);
            }
            out.links.push((digest, size));
        }
    }
    forget_repo_if_empty(tx, repo).await?;
    Ok(out)
}
