//! Copying a registry's metadata from its SQLite database into a shared PostgreSQL database
//! (`berth migrate`), in pages, so that memory does not grow with the registry. Every step is
//! idempotent, so an interrupted copy is finished by running it again. The blobs stay where
//! they are ([`Blobs::InPlace`]), or are copied into an S3 bucket ([`Blobs::ToS3`]): each
//! blob file once, in parts, its SHA-256 checked as it is read, before its first link is
//! recorded (a blob already recorded in the target is not copied again). When the copy is
//! complete the storage is bound to the database ([`crate::layout::Layout::database_binding`])
//! and no longer opens with SQLite.

use std::path::{Path, PathBuf};

use crate::engine::manifest_record;
use crate::error::{Error, Result};
use crate::meta::Meta;
use crate::name::Reference;
use crate::store::{BlobLink, MetaStore, Outcome, Placement, StagedBlob};

/// Rows read per page.
const PAGE: usize = 500;

/// Where the blobs of a copy go.
pub enum Blobs<'a> {
    /// They stay where they are (the same directory, now with its metadata in PostgreSQL).
    InPlace,
    /// Each blob file of the storage at `layout` is copied into the bucket `client` reaches,
    /// in parts of `part_size` bytes.
    ToS3 {
        /// The source storage.
        layout: &'a crate::layout::Layout,
        /// The target bucket.
        client: &'a crate::s3::S3Client,
        /// The part size (`storage.s3.chunksize`).
        part_size: u64,
    },
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Blob links copied.
    pub links: u64,
    /// Manifests copied (each once per repository that holds it).
    pub manifests: u64,
    /// Tags copied.
    pub tags: u64,
    /// Blob files copied into the object store.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
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
    blobs: &Blobs<'_>,
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
            let object = match blobs {
                Blobs::InPlace => None,
                // A blob the target records already keeps its object (its link names none).
                Blobs::ToS3 { .. } if target.blob(&digest).await?.is_some() => None,
                Blobs::ToS3 {
                    layout,
                    client,
                    part_size,
                } => {
                    let id = copy_blob(client, &layout.blob(&digest), &digest, size, *part_size).await?;
                    report.blobs += 1;
                    report.bytes += size;
                    Some(id)
                }
            };
            target
                .commit_blob(
                    BlobLink {
                        repo,
                        digest,
                        size,
                        object,
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

/// Copy one blob file into the bucket as a new object (one PUT when it is smaller than a part,
/// else a multipart upload of `part_size` parts read one at a time), checking its SHA-256 as it
/// is read; returns the object's id. A file whose bytes do not match its digest is not copied
/// and fails the migration, naming it.
async fn copy_blob(
    client: &crate::s3::S3Client,
    path: &Path,
    digest: &crate::digest::Digest,
    size: u64,
    part_size: u64,
) -> Result<crate::name::UploadId> {
    let id = crate::name::UploadId::random();
    let key = crate::s3::blobs::object_key(id);
    let mut file = HashedFile {
        file: tokio::fs::File::open(path).await?,
        hasher: crate::digest::Hasher::new(digest.algorithm()),
    };
    let part_size = usize::try_from(part_size).unwrap_or(usize::MAX);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size <= part_size {
        let data = file.read(size).await?;
        check_copied(&file.hasher, digest, path)?;
        client.put(&key, data).await?;
        return Ok(id);
    }
    let upload = client.create_multipart(&key).await?;
    let mut etags = Vec::new();
    let mut left = size;
    let copied: Result<()> = async {
        while left > 0 {
            let n = left.min(part_size);
            let data = file.read(n).await?;
            left -= n;
            let number = u16::try_from(etags.len() + 1).map_err(|_| {
                Error::Io(std::io::Error::other(
                    "the blob needs more than 10000 parts: raise storage.s3.chunksize",
                ))
            })?;
            etags.push(client.upload_part(&key, &upload, number, data).await?);
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied.and_then(|()| check_copied(&file.hasher, digest, path)) {
        let _ = client.abort_multipart(&key, &upload).await;
        return Err(e);
    }
    client.complete_multipart(&key, &upload, &etags).await?;
    Ok(id)
}

/// A blob file read in parts, hashed as it is read.
struct HashedFile {
    file: tokio::fs::File,
    hasher: crate::digest::Hasher,
}

impl HashedFile {
    /// The next `n` bytes.
    async fn read(&mut self, n: usize) -> Result<bytes::Bytes> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; n];
        self.file.read_exact(&mut buf).await?;
        self.hasher.update(&buf);
        Ok(bytes::Bytes::from(buf))
    }
}

fn check_copied(hasher: &crate::digest::Hasher, digest: &crate::digest::Digest, path: &Path) -> Result<()> {
    let actual = hasher.finish();
    if &actual == digest {
        return Ok(());
    }
    Err(Error::Meta(crate::error::MetaError::Corrupt(format!(
        "{} holds {actual}, not {digest}: the source storage is damaged; remove the blob (or restore it) and run berth migrate again",
        path.display()
    ))))
}
