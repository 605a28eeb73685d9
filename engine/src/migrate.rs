//! Copying a registry's metadata from its SQLite database into a shared PostgreSQL database
//! (`berth migrate`), in pages, so that memory does not grow with the registry. Every step is
//! idempotent, so an interrupted copy is finished by running it again. The blobs stay where
//! they are; when the copy is complete the storage is bound to the database
//! ([`crate::layout::Layout::database_binding`]) and no longer opens with SQLite.

use std::path::{Path, PathBuf};

use crate::engine::manifest_record;
use crate::error::{Error, Result};
use crate::meta::Meta;
use crate::name::Reference;
use crate::store::{BlobLink, MetaStore, Outcome, Placement, StagedBlob};

/// Rows read per page.
const PAGE: usize = 500;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Blob links copied.
    pub links: u64,
    /// Manifests copied (each once per repository that holds it).
    pub manifests: u64,
    /// Tags copied.
    pub tags: u64,
    /// Manifests that could not be copied, with the reason (a child or blob missing in the
    /// source itself).
    pub failed: Vec<String>,
}

/// A blob whose data is already in place: linking it needs no step of the blob store.
struct InPlace;

impl StagedBlob for InPlace {
    fn prepare(&mut self) -> Result<Box<dyn Placement>> {
        Ok(Box::new(InPlace))
    }
    fn finish(self: Box<Self>, _outcome: Outcome) {}
}

impl Placement for InPlace {
    fn place(&self) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    fn flush(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Run blocking reads of the source off the async workers.
async fn read<T: Send + 'static>(
    source: &std::sync::Arc<Meta>,
    f: impl FnOnce(&Meta) -> Result<T> + Send + 'static,
) -> Result<T> {
    let m = source.clone();
    tokio::task::spawn_blocking(move || f(&m))
        .await
        .map_err(|e| Error::Meta(crate::error::MetaError::TaskLost(e.to_string())))?
}

/// Copy every record of `source` into `target`: blob links, then manifests (a manifest whose
/// children are not copied yet waits for a later pass), then tags. `progress` hears about each
/// page.
pub async fn copy_metadata<M: MetaStore>(
    source: &std::sync::Arc<Meta>,
    target: &M,
    mut progress: impl FnMut(&CopyReport),
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    let mut after = None;
    loop {
        let cursor = after.clone();
        let page = read(source, move |m| m.links_after(&cursor, PAGE)).await?;
        let Some((r, d, _)) = page.last() else { break };
        after = Some((r.to_string(), d.to_string()));
        for (repo, digest, size) in page {
            target
                .commit_blob(
                    BlobLink {
                        repo,
                        digest,
                        size,
                        object: None,
                    },
                    Box::new(InPlace),
                )
                .await?;
            report.links += 1;
        }
        progress(&report);
    }
    // Manifests in passes: an index is recorded only once its children are.
    let mut waiting: Vec<(crate::name::RepoName, crate::digest::Digest)> = Vec::new();
    let mut after = None;
    loop {
        let cursor = after.clone();
        let page = read(source, move |m| m.manifests_after(&cursor, PAGE)).await?;
        let Some((r, m)) = page.last() else { break };
        after = Some((r.to_string(), m.digest.to_string()));
        for (repo, m) in page {
            let reference = Reference::Digest(m.digest.clone());
            let record = manifest_record(&repo, &reference, Some(&m.media_type), m.bytes)?;
            match target.put_manifest(record).await {
                Ok(()) => report.manifests += 1,
                Err(Error::ManifestBlobUnknown(_)) => waiting.push((repo, m.digest)),
                Err(e) => return Err(e),
            }
        }
        progress(&report);
    }
    while !waiting.is_empty() {
        let (mut still, mut recorded) = (Vec::new(), 0);
        for (repo, digest) in std::mem::take(&mut waiting) {
            let (r, d) = (repo.clone(), digest.clone());
            let Some(m) = read(source, move |m| m.manifest(&r, &d)).await? else {
                continue;
            };
            let reference = Reference::Digest(digest.clone());
            let record = manifest_record(&repo, &reference, Some(&m.media_type), m.bytes)?;
            match target.put_manifest(record).await {
                Ok(()) => {
                    report.manifests += 1;
                    recorded += 1;
                }
                Err(Error::ManifestBlobUnknown(missing)) => still.push((repo, digest, missing)),
                Err(e) => return Err(e),
            }
        }
        if recorded == 0 {
            // Nothing of this pass went in: what is left misses content in the source itself.
            report.failed = still
                .iter()
                .map(|(r, d, missing)| format!("{r}@{d}: references {missing}, which the source does not hold"))
                .collect();
            break;
        }
        waiting = still.into_iter().map(|(r, d, _)| (r, d)).collect();
        progress(&report);
    }
    let mut after = None;
    loop {
        let cursor = after.clone();
        let page = read(source, move |m| m.tags_after(&cursor, PAGE)).await?;
        let Some((r, t, _)) = page.last() else { break };
        after = Some((r.to_string(), t.to_string()));
        for (repo, tag, digest) in page {
            let (r, d) = (repo.clone(), digest.clone());
            let Some(m) = read(source, move |m| m.manifest(&r, &d)).await? else {
                continue;
            };
            let record = manifest_record(&repo, &Reference::Tag(tag.clone()), Some(&m.media_type), m.bytes)?;
            match target.put_manifest(record).await {
                Ok(()) => report.tags += 1,
                Err(Error::ManifestBlobUnknown(missing)) => report.failed.push(format!(
                    "{repo}:{tag}: its manifest references {missing}, which the source does not hold"
                )),
                Err(e) => return Err(e),
            }
        }
        progress(&report);
    }
    Ok(report)
}
