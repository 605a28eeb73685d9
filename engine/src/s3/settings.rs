//! How the S3-compatible object store is reached, shaped like distribution's `storage.s3`
//! section (`accesskey`, `secretkey`, `region`, `regionendpoint`, `bucket`, `rootdirectory`,
//! `forcepathstyle`, `secure`, `skipverify`, `chunksize`, `storageclass`), plus
//! `storage.redirect.disable`.

use std::time::Duration;

/// The smallest part S3 accepts for any part but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// The part size when none is set (distribution's default `chunksize`).
pub const DEFAULT_PART_SIZE: u64 = 10 << 20;
/// The memory for part buffers when none is set (`uploadmemory`).
pub const DEFAULT_UPLOAD_MEMORY: u64 = 48 << 20;

/// The object store's settings. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Base URL of the S3 API, with scheme (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://minio:9000`); from `regionendpoint`, or derived from `region` and `secure`.
    pub endpoint: String,
    /// Region the requests are signed for.
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token of temporary credentials (`AWS_SESSION_TOKEN`), if any.
    pub session_token: Option<String>,
    /// Prefix of every key Berth writes, without leading or trailing `/` (empty: the bucket's
    /// root).
    pub root_directory: String,
    /// Path-style URLs (`endpoint/bucket/key`) instead of virtual-hosted ones
    /// (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Size of each multipart part but the last, in bytes (`chunksize`).
    pub part_size: u64,
    /// Most bytes the part buffers of all upload requests of this process hold at once
    /// (`uploadmemory`); a request whose next part finds no room waits for it (its client is
    /// slowed by TCP flow control), so memory does not grow with the number of uploads.
    pub upload_memory: u64,
    /// Do not verify the endpoint's TLS certificate (`skipverify`).
    pub skip_verify: bool,
    /// Storage class of new objects (`storageclass`), when not the bucket's default.
    pub storage_class: Option<String>,
    /// Server-side encryption asked for on every object written (`encrypt`, `keyid`); `None`:
    /// the bucket's default applies.
    pub encryption: Option<Encryption>,
    /// Answer blob GETs with a `307` to a presigned URL (unless `storage.redirect.disable`).
    pub redirect: bool,
    /// How long a presigned URL stays valid.
    pub presign_expiry: Duration,
    /// How long one connection attempt to the endpoint may take.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "(set)" };
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &set(&self.secret_key))
            .field("session_token", &self.session_token.as_deref().map(set))
            .field("root_directory", &self.root_directory)
            .field("path_style", &self.path_style)
            .field("part_size", &self.part_size)
            .field("upload_memory", &self.upload_memory)
            .field("skip_verify", &self.skip_verify)
            .field("storage_class", &self.storage_class)
            .field("encryption", &self.encryption)
            .field("redirect", &self.redirect)
            .field("presign_expiry", &self.presign_expiry)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Server-side encryption of the objects Berth writes, as distribution's `encrypt` and `keyid`
/// ask for it: sent with every PUT and CreateMultipartUpload (the parts and the reads need
/// nothing more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// SSE-S3: keys managed by the store (`x-amz-server-side-encryption: AES256`).
    Aes256,
    /// SSE-KMS with this key (`x-amz-server-side-encryption: aws:kms` and
    /// `x-amz-server-side-encryption-aws-kms-key-id`).
    Kms(String),
}

impl Encryption {
    /// The request headers that ask for it, names in lower case.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Encryption::Aes256 => vec![("x-amz-server-side-encryption", "AES256".into())],
            Encryption::Kms(key) => vec![
                ("x-amz-server-side-encryption", "aws:kms".into()),
                ("x-amz-server-side-encryption-aws-kms-key-id", key.clone()),
            ],
        }
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: "https://s3.us-east-1.amazonaws.com".into(),
            region: "us-east-1".into(),
            bucket: String::new(),
            access_key: String::new(),
            secret_key: String::new(),
            session_token: None,
            root_directory: String::new(),
            path_style: false,
            part_size: DEFAULT_PART_SIZE,
            upload_memory: DEFAULT_UPLOAD_MEMORY,
            skip_verify: false,
            storage_class: None,
            encryption: None,
            redirect: true,
            presign_expiry: Duration::from_secs(20 * 60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl S3Settings {
    /// The endpoint AWS serves `region` at.
    pub fn aws_endpoint(region: &str, secure: bool) -> String {
        let scheme = if secure { "https" } else { "http" };
        format!("{scheme}://s3.{region}.amazonaws.com")
    }

    /// What is wrong with these settings, naming the setting (as in `storage.s3.*`); `None`
    /// when nothing is.
    pub fn problem(&self) -> Option<String> {
        if self.bucket.trim().is_empty() {
            return Some("storage.s3.bucket is not set; name the bucket Berth keeps its blobs in".into());
        }
        if self.region.trim().is_empty() {
            return Some("storage.s3.region is not set (S3-compatible stores usually accept us-east-1)".into());
        }
        if self.access_key.is_empty() != self.secret_key.is_empty() {
            return Some(
                "storage.s3.accesskey and storage.s3.secretkey must be set together (or neither, to take AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .into(),
            );
        }
        if self.access_key.is_empty() {
            return Some(
                "no S3 credentials: set storage.s3.accesskey and storage.s3.secretkey, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .into(),
            );
        }
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Some(format!(
                "storage.s3.regionendpoint: {:?} is not an http:// or https:// URL",
                self.endpoint
            ));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Some(format!(
                "storage.s3.chunksize: {} is outside what S3 accepts for a part ({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)",
                self.part_size
            ));
        }
        if self.upload_memory < 2 * self.part_size {
            return Some(format!(
                "storage.s3.uploadmemory: {} bytes cannot hold two parts of storage.s3.chunksize ({} bytes each); raise it or lower the chunk size",
                self.upload_memory, self.part_size
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret_and_problems_name_the_setting() {
        let s = S3Settings {
            bucket: "b".into(),
            access_key: "AK".into(),
            secret_key: "very-secret".into(),
            session_token: Some("tok-secret".into()),
            ..S3Settings::default()
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains("tok-secret"),
            "{shown}"
        );
        assert_eq!(s.problem(), None);
        let p = |f: fn(&mut S3Settings)| {
            let mut t = s.clone();
            f(&mut t);
            t.problem().unwrap_or_default()
        };
        assert!(p(|t| t.bucket.clear()).contains("storage.s3.bucket"));
        assert!(p(|t| t.secret_key.clear()).contains("storage.s3.secretkey"));
        assert!(p(|t| t.part_size = 1 << 20).contains("storage.s3.chunksize"));
        assert!(p(|t| t.endpoint = "minio:9000".into()).contains("storage.s3.regionendpoint"));
        assert!(p(|t| t.upload_memory = t.part_size).contains("storage.s3.uploadmemory"));
    }
}
