//! The object store as the blob store: each blob's data is the object its upload completed,
//! `blobs/<upload id>` under the root directory, named by the blob's record
//! ([`crate::store::BlobLink::object`]); nothing is ever copied or renamed.

use tokio::runtime::Handle;

use super::client::{PendingUpload, S3Client};
use crate::blob_store::{BlobStore, BlobStream, DataName, StoredData};
use crate::digest::Digest;
use crate::engine::ByteRange;
use crate::error::{Error, ObjectStoreError, Result};
use crate::name::UploadId;
use crate::store::Removal;

/// Where blob objects live, below the root directory.
pub const BLOBS_PREFIX: &str = "blobs/";

/// The key of the object an upload stores.
pub fn object_key(id: UploadId) -> String {
    format!("{BLOBS_PREFIX}{id}")
}

/// Blob objects in a bucket.
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: S3Client,
}

impl S3Blobs {
    /// The blob store of the bucket `client` reaches.
    pub fn new(client: S3Client) -> S3Blobs {
        S3Blobs { client }
    }

    /// Delete an object (one already gone is not an error).
    pub async fn delete(&self, object: UploadId) -> Result<()> {
        self.client.delete(&object_key(object)).await
    }

    /// The unfinished multipart uploads of blob objects, by the upload session that started
    /// them.
    pub async fn pending_uploads(&self) -> Result<Vec<(UploadId, PendingUpload)>> {
        let pending = self.client.pending_uploads(BLOBS_PREFIX).await?;
        Ok(pending
            .into_iter()
            .filter_map(|p| {
                let id = p.key.strip_prefix(BLOBS_PREFIX)?.parse::<UploadId>().ok()?;
                Some((id, p))
            })
            .collect())
    }

    /// Abort the multipart upload `upload_id` of `object`.
    pub async fn abort(&self, object: UploadId, upload_id: &str) -> Result<()> {
        self.client.abort_multipart(&object_key(object), upload_id).await
    }

    /// A presigned URL of a blob's object, for a redirect.
    pub fn url(&self, object: UploadId) -> String {
        self.client.presign_get(&object_key(object)).to_string()
    }
}

impl BlobStore for S3Blobs {
    async fn read(&self, digest: &Digest, object: Option<UploadId>, range: ByteRange) -> Result<BlobStream> {
        let object = object.ok_or_else(|| Error::BlobUnknown(digest.clone()))?;
        match self.client.get(&object_key(object), range.start, range.len).await {
            Ok(rx) => Ok(BlobStream::new(rx)),
            Err(Error::ObjectStore(ObjectStoreError::NotFound(_))) => Err(Error::BlobUnknown(digest.clone())),
            Err(e) => Err(e),
        }
    }

    fn removal(&self, _digest: &Digest) -> Removal {
        let (client, handle) = (self.client.clone(), Handle::current());
        // Run on a blocking thread by the metadata store: wait there for the request.
        Box::new(move |object| match object {
            Some(id) => handle.block_on(client.delete(&object_key(id))),
            None => Ok(()),
        })
    }

    async fn list(&self) -> Result<Vec<StoredData>> {
        let listed = self.client.list(BLOBS_PREFIX).await?;
        Ok(listed
            .into_iter()
            .filter_map(|o| {
                let id = o.key.strip_prefix(BLOBS_PREFIX)?.parse::<UploadId>().ok()?;
                Some(StoredData {
                    name: DataName::Object(id),
                    size: o.size,
                    age_secs: o.age_secs,
                })
            })
            .collect())
    }

    async fn probe(&self) -> Result<()> {
        self.client.check_bucket().await
    }
}
