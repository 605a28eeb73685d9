//! Metadata records in an embedded transactional store (redb): which repository links which
//! blobs and manifests, tags, referrers, and reference counts. Blob bytes are not here.
//!
//! Keys join validated parts with NUL, which no name, tag or digest can contain, so a
//! repository's records form one contiguous key range.

use std::ops::Bound;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::name::{RepoName, Tag};

/// digest → (size, number of repositories linking it)
const BLOBS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("blobs");
/// repo NUL digest → size
const REPO_BLOBS: TableDefinition<&str, u64> = TableDefinition::new("repo_blobs");
/// digest → (number of repositories linking it, media type, bytes)
const MANIFESTS: TableDefinition<&str, (u64, &str, &[u8])> = TableDefinition::new("manifests");
/// repo NUL digest → ()
const REPO_MANIFESTS: TableDefinition<&str, ()> = TableDefinition::new("repo_manifests");
/// repo NUL tag → digest
const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
/// repo NUL subject digest NUL referrer digest → descriptor JSON
const REFERRERS: TableDefinition<&str, &[u8]> = TableDefinition::new("referrers");
/// repo → ()
const REPOS: TableDefinition<&str, ()> = TableDefinition::new("repos");
/// "b" NUL repo NUL digest (blob link) or "m" NUL repo NUL digest (manifest) → when it was last
/// linked or pushed, seconds since the epoch; garbage collection spares what is younger than
/// its grace period. Records older than this table count as old.
const LINK_TIMES: TableDefinition<&str, u64> = TableDefinition::new("link_times");

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What garbage collection did (or, in a dry run, would do) in one repository.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepoGc {
    /// Untagged manifests removed.
    pub manifests: Vec<Digest>,
    /// Blob links removed (digest, size).
    pub links: Vec<(Digest, u64)>,
    /// Blobs no repository links any more: their files may go (digest, size).
    pub orphans: Vec<(Digest, u64)>,
    /// Set when a stored manifest could not be read: nothing of the repository was removed.
    pub skipped: Option<String>,
}

fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// `[prefix NUL, prefix \x01)`: every key that starts with `prefix` and a separator.
fn prefix_range(prefix: &str) -> (String, String) {
    (format!("{prefix}\0"), format!("{prefix}\u{1}"))
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: Vec<u8>,
}

/// What [`Meta::put_manifest`] records.
pub struct NewManifest<'a> {
    /// Repository.
    pub repo: &'a RepoName,
    /// Digest of `bytes`.
    pub digest: &'a Digest,
    /// Media type to serve.
    pub media_type: &'a str,
    /// Exact bytes.
    pub bytes: &'a [u8],
    /// Tag to point at it.
    pub tag: Option<&'a Tag>,
    /// Blobs that must be linked in the repository.
    pub blobs: &'a [Digest],
    /// Manifests that must be in the repository.
    pub children: &'a [Digest],
    /// Subject and the referrer descriptor to index under it.
    pub referrer: Option<(&'a Digest, Vec<u8>)>,
}

/// The metadata store.
pub struct Meta {
    db: Database,
}

impl Meta {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Meta> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(BLOBS)?;
        tx.open_table(REPO_BLOBS)?;
        tx.open_table(MANIFESTS)?;
        tx.open_table(REPO_MANIFESTS)?;
        tx.open_table(TAGS)?;
        tx.open_table(REFERRERS)?;
        tx.open_table(REPOS)?;
        tx.open_table(LINK_TIMES)?;
        tx.commit()?;
        Ok(Meta { db })
    }

    /// Whether the store answers a read.
    pub fn check(&self) -> Result<()> {
        let tx = self.db.begin_read()?;
        tx.open_table(REPOS)?;
        Ok(())
    }

    /// Size of a blob if `repo` links it.
    pub fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REPO_BLOBS)?;
        Ok(t.get(key(&[repo.as_str(), &digest.to_string()]).as_str())?
            .map(|v| v.value()))
    }

    /// Size of a blob if any repository links it.
    pub fn blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        Ok(t.get(digest.to_string().as_str())?.map(|v| v.value().0))
    }

    /// Number of stored blobs and their total size in bytes.
    pub fn blob_stats(&self) -> Result<(u64, u64)> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        let (mut n, mut bytes) = (0u64, 0u64);
        for row in t.iter()? {
            let (_, v) = row?;
            n += 1;
            bytes += v.value().0;
        }
        Ok((n, bytes))
    }

    /// Link a blob into a repository (idempotent).
    pub fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let d = digest.to_string();
            tx.open_table(LINK_TIMES)?
                .insert(key(&["b", repo.as_str(), &d]).as_str(), now_secs())?;
            let mut links = tx.open_table(REPO_BLOBS)?;
            if links.insert(key(&[repo.as_str(), &d]).as_str(), size)?.is_none() {
                let mut blobs = tx.open_table(BLOBS)?;
                let refs = blobs.get(d.as_str())?.map(|v| v.value().1).unwrap_or(0);
                blobs.insert(d.as_str(), (size, refs + 1))?;
                tx.open_table(REPOS)?.insert(repo.as_str(), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Unlink a blob from a repository. Returns `Some(true)` when no repository links it any
    /// more (its file may go), `Some(false)` when others still do, `None` when it was not linked.
    pub fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<bool>> {
        let tx = self.db.begin_write()?;
        let out = {
            let d = digest.to_string();
            let removed = unlink_blob_in(&tx, repo.as_str(), &d)?;
            if removed.is_some() {
                forget_repo_if_empty(&tx, repo.as_str())?;
            }
            removed.map(|(_, last)| last)
        };
        tx.commit()?;
        Ok(out)
    }

    /// Record a manifest, after checking in the same transaction that everything it references
    /// is in the repository.
    pub fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        let repo = m.repo.as_str();
        let d = m.digest.to_string();
        let tx = self.db.begin_write()?;
        {
            let links = tx.open_table(REPO_BLOBS)?;
            for b in m.blobs {
                if links.get(key(&[repo, &b.to_string()]).as_str())?.is_none() {
                    return Err(Error::ManifestBlobUnknown(b.clone()));
                }
            }
            let mut repo_manifests = tx.open_table(REPO_MANIFESTS)?;
            for c in m.children {
                if repo_manifests.get(key(&[repo, &c.to_string()]).as_str())?.is_none() {
                    return Err(Error::ManifestBlobUnknown(c.clone()));
                }
            }
            let newly_linked = repo_manifests.insert(key(&[repo, &d]).as_str(), ())?.is_none();
            tx.open_table(LINK_TIMES)?
                .insert(key(&["m", repo, &d]).as_str(), now_secs())?;
            let mut manifests = tx.open_table(MANIFESTS)?;
            let refs = manifests.get(d.as_str())?.map(|v| v.value().0).unwrap_or(0);
            let refs = if newly_linked { refs + 1 } else { refs.max(1) };
            manifests.insert(d.as_str(), (refs, m.media_type, m.bytes))?;
            if let Some(tag) = m.tag {
                tx.open_table(TAGS)?
                    .insert(key(&[repo, tag.as_str()]).as_str(), d.as_str())?;
            }
            if let Some((subject, descriptor)) = &m.referrer {
                tx.open_table(REFERRERS)?
                    .insert(key(&[repo, &subject.to_string(), &d]).as_str(), descriptor.as_slice())?;
            }
            tx.open_table(REPOS)?.insert(repo, ())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The digest a tag points at.
    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TAGS)?;
        let found = t.get(key(&[repo.as_str(), tag.as_str()]).as_str())?;
        Ok(found.and_then(|v| v.value().parse().ok()))
    }

    /// A manifest of the repository, by digest.
    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        let tx = self.db.begin_read()?;
        let d = digest.to_string();
        if tx
            .open_table(REPO_MANIFESTS)?
            .get(key(&[repo.as_str(), &d]).as_str())?
            .is_none()
        {
            return Ok(None);
        }
        let t = tx.open_table(MANIFESTS)?;
        Ok(t.get(d.as_str())?.map(|v| {
            let (_, media_type, bytes) = v.value();
            StoredManifest {
                digest: digest.clone(),
                media_type: media_type.to_owned(),
                bytes: bytes.to_vec(),
            }
        }))
    }

    /// Remove a manifest from a repository with every tag pointing at it and its referrer
    /// record (`subject`). Returns false when the repository did not have it.
    pub fn delete_manifest(&self, repo: &RepoName, digest: &Digest, subject: Option<&Digest>) -> Result<bool> {
        let tx = self.db.begin_write()?;
        if !remove_manifest_in(&tx, repo.as_str(), &digest.to_string(), subject)? {
            return Ok(false);
        }
        forget_repo_if_empty(&tx, repo.as_str())?;
        tx.commit()?;
        Ok(true)
    }

    /// Remove a tag. Returns false when it did not exist.
    pub fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let tx = self.db.begin_write()?;
        let removed = tx
            .open_table(TAGS)?
            .remove(key(&[repo.as_str(), tag.as_str()]).as_str())?
            .is_some();
        tx.commit()?;
        Ok(removed)
    }

    /// Whether the repository has any content.
    pub fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(REPOS)?.get(repo.as_str())?.is_some())
    }

    /// Up to `n` tags after `last`, sorted; the flag says whether more remain.
    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<(Vec<String>, bool)> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TAGS)?;
        let (lo, hi) = prefix_range(repo.as_str());
        let start = last.map(|l| key(&[repo.as_str(), l]));
        let lower = match &start {
            Some(s) => Bound::Excluded(s.as_str()),
            None => Bound::Included(lo.as_str()),
        };
        let skip = lo.len();
        page(t.range::<&str>((lower, Bound::Excluded(hi.as_str())))?, n, |k| {
            k[skip..].to_owned()
        })
    }

    /// Up to `n` repository names after `last` for which `keep` holds, sorted; the flag says
    /// whether more remain.
    pub fn catalog(&self, last: Option<&str>, n: usize, keep: &dyn Fn(&str) -> bool) -> Result<(Vec<String>, bool)> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REPOS)?;
        let lower = match last {
            Some(l) => Bound::Excluded(l),
            None => Bound::Unbounded,
        };
        let iter = t.range::<&str>((lower, Bound::Unbounded))?.filter(|e| match e {
            Ok((k, _)) => keep(k.value()),
            Err(_) => true,
        });
        page(iter, n, str::to_owned)
    }

    /// Collect garbage in one repository, in one write transaction, so that no manifest push
    /// or blob link interleaves. With `untagged`, manifests that no tag reaches — directly,
    /// through an index, or as a referrer of a reached manifest — go first. Then blob links that
    /// no remaining manifest references go. Anything linked or pushed less than `grace_secs` ago
    /// stays (and keeps what it references). `dry_run` rolls everything back.
    pub fn gc_repo(&self, repo: &str, grace_secs: u64, untagged: bool, dry_run: bool) -> Result<RepoGc> {
        use std::collections::{HashMap, HashSet};
        let now = now_secs();
        let young = |t: Option<u64>| t.is_some_and(|t| now.saturating_sub(t) < grace_secs);
        let tx = self.db.begin_write()?;
        let mut out = RepoGc::default();
        let (lo, hi) = prefix_range(repo);
        let skip = lo.len();
        // Every manifest of the repository: what it references.
        struct Refs {
            blobs: Vec<Digest>,
            children: Vec<String>,
            subject: Option<String>,
            young: bool,
        }
        let mut manifests: HashMap<String, Refs> = HashMap::new();
        {
            let repo_manifests = tx.open_table(REPO_MANIFESTS)?;
            let all = tx.open_table(MANIFESTS)?;
            let times = tx.open_table(LINK_TIMES)?;
            for e in repo_manifests.range::<&str>(lo.as_str()..hi.as_str())? {
                let d = e?.0.value()[skip..].to_owned();
                let Some(row) = all.get(d.as_str())? else { continue };
                let (_, mt, bytes) = row.value();
                let info = match crate::manifest::parse(Some(mt), bytes) {
                    Ok(i) => i,
                    Err(e) => {
                        out.skipped = Some(format!("manifest {d} cannot be read ({e}); nothing removed"));
                        break;
                    }
                };
                let t = times.get(key(&["m", repo, &d]).as_str())?.map(|v| v.value());
                manifests.insert(
                    d,
                    Refs {
                        blobs: info.blobs,
                        children: info.children.iter().map(|c| c.to_string()).collect(),
                        subject: info.subject.map(|s| s.to_string()),
                        young: young(t),
                    },
                );
            }
        }
        if out.skipped.is_some() {
            tx.abort()?;
            return Ok(out);
        }
        if untagged {
            let mut reached: HashSet<String> = HashSet::new();
            let mut todo: Vec<String> = Vec::new();
            for e in tx.open_table(TAGS)?.range::<&str>(lo.as_str()..hi.as_str())? {
                todo.push(e?.1.value().to_owned());
            }
            todo.extend(manifests.iter().filter(|(_, r)| r.young).map(|(d, _)| d.clone()));
            loop {
                while let Some(d) = todo.pop() {
                    if let Some(r) = manifests.get(&d)
                        && reached.insert(d.clone())
                    {
                        todo.extend(r.children.iter().cloned());
                    }
                }
                // Referrers (signatures, SBOMs) of what is reached are reached too.
                todo = manifests
                    .iter()
                    .filter(|(d, r)| !reached.contains(*d) && r.subject.as_ref().is_some_and(|s| reached.contains(s)))
                    .map(|(d, _)| d.clone())
                    .collect();
                if todo.is_empty() {
                    break;
                }
            }
            let doomed: Vec<String> = manifests.keys().filter(|d| !reached.contains(*d)).cloned().collect();
            for d in doomed {
                let r = manifests.remove(&d).expect("listed above");
                let subject = r.subject.as_deref().and_then(|s| s.parse::<Digest>().ok());
                if remove_manifest_in(&tx, repo, &d, subject.as_ref())?
                    && let Ok(digest) = d.parse()
                {
                    out.manifests.push(digest);
                }
            }
        }
        let referenced: HashSet<String> = manifests
            .values()
            .flat_map(|r| r.blobs.iter().map(|b| b.to_string()))
            .collect();
        let mut candidates = Vec::new();
        {
            let links = tx.open_table(REPO_BLOBS)?;
            let times = tx.open_table(LINK_TIMES)?;
            for e in links.range::<&str>(lo.as_str()..hi.as_str())? {
                let d = e?.0.value()[skip..].to_owned();
                if referenced.contains(&d) {
                    continue;
                }
                let t = times.get(key(&["b", repo, &d]).as_str())?.map(|v| v.value());
                if !young(t) {
                    candidates.push(d);
                }
            }
        }
        for d in candidates {
            if let Some((size, last)) = unlink_blob_in(&tx, repo, &d)?
                && let Ok(digest) = d.parse::<Digest>()
            {
                if last {
                    out.orphans.push((digest.clone(), size));
                }
                out.links.push((digest, size));
            }
        }
        forget_repo_if_empty(&tx, repo)?;
        if dry_run {
            tx.abort()?;
        } else {
            tx.commit()?;
        }
        Ok(out)
    }

    /// Descriptor JSON of every manifest in `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REFERRERS)?;
        let (lo, hi) = prefix_range(&key(&[repo.as_str(), &subject.to_string()]));
        let mut out = Vec::new();
        for e in t.range::<&str>(lo.as_str()..hi.as_str())? {
            out.push(e?.1.value().to_vec());
        }
        Ok(out)
    }
}

fn page<'a, V, I>(iter: I, n: usize, name: impl Fn(&str) -> String) -> Result<(Vec<String>, bool)>
where
    V: redb::Value + 'static,
    I: Iterator<
        Item = std::result::Result<(redb::AccessGuard<'a, &'static str>, redb::AccessGuard<'a, V>), redb::StorageError>,
    >,
{
    let mut out = Vec::new();
    for e in iter {
        let (k, _) = e?;
        if out.len() == n {
            return Ok((out, true));
        }
        out.push(name(k.value()));
    }
    Ok((out, false))
}

/// Remove the link of `repo` to blob `d` and its time; returns (size, whether it was the last
/// link), or `None` when there was no link.
fn unlink_blob_in(tx: &redb::WriteTransaction, repo: &str, d: &str) -> Result<Option<(u64, bool)>> {
    if tx.open_table(REPO_BLOBS)?.remove(key(&[repo, d]).as_str())?.is_none() {
        return Ok(None);
    }
    tx.open_table(LINK_TIMES)?.remove(key(&["b", repo, d]).as_str())?;
    let mut blobs = tx.open_table(BLOBS)?;
    let (size, refs) = blobs.get(d)?.map(|v| v.value()).unwrap_or((0, 1));
    let last = refs <= 1;
    if last {
        blobs.remove(d)?;
    } else {
        blobs.insert(d, (size, refs - 1))?;
    }
    Ok(Some((size, last)))
}

/// Remove manifest `d` from `repo`, with the tags pointing at it, its time and its referrer
/// record (`subject`). False when the repository did not have it.
fn remove_manifest_in(tx: &redb::WriteTransaction, r: &str, d: &str, subject: Option<&Digest>) -> Result<bool> {
    if tx.open_table(REPO_MANIFESTS)?.remove(key(&[r, d]).as_str())?.is_none() {
        return Ok(false);
    }
    tx.open_table(LINK_TIMES)?.remove(key(&["m", r, d]).as_str())?;
    let mut manifests = tx.open_table(MANIFESTS)?;
    let found = manifests.get(d)?.map(|v| {
        let (refs, mt, bytes) = v.value();
        (refs, mt.to_owned(), bytes.to_vec())
    });
    if let Some((refs, mt, bytes)) = found {
        if refs <= 1 {
            manifests.remove(d)?;
        } else {
            manifests.insert(d, (refs - 1, mt.as_str(), bytes.as_slice()))?;
        }
    }
    drop(manifests);
    let mut tags = tx.open_table(TAGS)?;
    let (lo, hi) = prefix_range(r);
    let doomed: Vec<String> = tags
        .range::<&str>((Bound::Included(lo.as_str()), Bound::Excluded(hi.as_str())))?
        .filter_map(|e| e.ok())
        .filter(|(_, v)| v.value() == d)
        .map(|(k, _)| k.value().to_owned())
        .collect();
    for k in doomed {
        tags.remove(k.as_str())?;
    }
    drop(tags);
    if let Some(subject) = subject {
        tx.open_table(REFERRERS)?
            .remove(key(&[r, &subject.to_string(), d]).as_str())?;
    }
    Ok(true)
}

/// Drop the repository from the catalog when it links nothing any more.
fn forget_repo_if_empty(tx: &redb::WriteTransaction, repo: &str) -> Result<()> {
    let (lo, hi) = prefix_range(repo);
    let range = lo.as_str()..hi.as_str();
    let has_blobs = tx
        .open_table(REPO_BLOBS)?
        .range::<&str>(range.clone())?
        .next()
        .is_some();
    let has_manifests = tx.open_table(REPO_MANIFESTS)?.range::<&str>(range)?.next().is_some();
    if !has_blobs && !has_manifests {
        tx.open_table(REPOS)?.remove(repo)?;
    }
    Ok(())
}
