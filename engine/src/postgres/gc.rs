//! Garbage collection of one repository, inside the caller's transaction (which holds the
//! repository's lock, so no push or deletion of the repository interleaves). The rules are the
//! embedded store's (see [`crate::meta::Meta::gc_repo`]): with `untagged`, manifests that no
//! tag reaches — directly, through an index, or as a referrer of a reached manifest — go first;
//! then blob links that no remaining manifest references. Anything linked or pushed less than
//! `grace_secs` ago (by the database's clock) stays, with what it references.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::records::{NOW, digest, forget_repo_if_empty, remove_manifest, row, rows, unlink_blob};
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::meta::RepoGc;

/// What one manifest of the repository references.
struct Refs {
    blobs: Vec<Digest>,
    children: Vec<String>,
    subject: Option<String>,
    young: bool,
}

/// The manifests that nothing keeps: not tagged, not young, not reached from either through
/// children, nor a referrer of anything reached.
fn unreached(manifests: &HashMap<String, Refs>, tagged: Vec<String>) -> Vec<String> {
    let mut reached: HashSet<&str> = HashSet::new();
    let mut todo: Vec<&str> = tagged.iter().map(String::as_str).collect();
    todo.extend(manifests.iter().filter(|(_, r)| r.young).map(|(d, _)| d.as_str()));
    loop {
        while let Some(d) = todo.pop() {
            if let Some((key, r)) = manifests.get_key_value(d)
                && reached.insert(key.as_str())
            {
                todo.extend(r.children.iter().map(String::as_str));
            }
        }
        // Referrers (signatures, SBOMs) of what is reached are reached too.
        todo = manifests
            .iter()
            .filter(|(d, r)| !reached.contains(d.as_str()) && r.subject.as_deref().is_some_and(|s| reached.contains(s)))
            .map(|(d, _)| d.as_str())
            .collect();
        if todo.is_empty() {
            break;
        }
    }
    let mut out: Vec<String> = manifests
        .keys()
        .filter(|d| !reached.contains(d.as_str()))
        .cloned()
        .collect();
    out.sort();
    out
}

/// Sweep `repo` (see the module's comment).
pub(super) async fn sweep(tx: &Transaction<'_>, repo: &str, grace_secs: u64, untagged: bool) -> Result<RepoGc> {
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
        let info = match crate::manifest::parse(Some(&media_type), bytes) {
            Ok(i) => i,
            Err(e) => {
                out.skipped = Some(format!("manifest {d} cannot be read ({e}); nothing removed"));
                return Ok(out);
            }
        };
        manifests.insert(
            d,
            Refs {
                blobs: info.blobs,
                children: info.children.iter().map(Digest::to_string).collect(),
                subject: info.subject.map(|s| s.to_string()),
                young: young(r.get(1)),
            },
        );
    }
    if untagged {
        let tagged = rows(tx, "SELECT digest FROM tags WHERE repo = $1", &[&repo])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for d in unreached(&manifests, tagged) {
            manifests.remove(&d);
            if remove_manifest(tx, repo, &d).await? {
                out.manifests.push(digest(&d)?);
            }
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
        if referenced.contains(&d) || young(r.get(1)) {
            continue;
        }
        if let Some((size, last)) = unlink_blob(tx, repo, &d).await? {
            let digest = digest(&d)?;
            if last {
                out.orphans.push((digest.clone(), size));
            }
            out.links.push((digest, size));
        }
    }
    forget_repo_if_empty(tx, repo).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(children: &[&str], subject: Option<&str>, young: bool) -> Refs {
        Refs {
            blobs: Vec::new(),
            children: children.iter().map(|s| s.to_string()).collect(),
            subject: subject.map(str::to_string),
            young,
        }
    }

    #[test]
    fn tags_children_referrers_and_young_manifests_are_kept() {
        let mut m = HashMap::new();
        m.insert("index".to_string(), refs(&["child"], None, false));
        m.insert("child".to_string(), refs(&[], None, false));
        m.insert("sig".to_string(), refs(&[], Some("child"), false));
        m.insert("sig-of-sig".to_string(), refs(&[], Some("sig"), false));
        m.insert("new".to_string(), refs(&[], None, true));
        m.insert("loose".to_string(), refs(&["child"], None, false));
        m.insert("loose-sig".to_string(), refs(&[], Some("loose"), false));
        assert_eq!(unreached(&m, vec!["index".into()]), ["loose", "loose-sig"]);
    }
}
