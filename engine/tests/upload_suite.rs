//! The upload session suite: what every [`UploadStore`] implementation must do, run against each
//! of them: the filesystem's sessions, and the object store's (SeaweedFS, with the session rows
//! in PostgreSQL). Each check is a generic function over the store; the commit step it is given
//! stands in for the metadata store and records what it was handed.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;

use berth_engine::store::{BlobLink, Outcome, StagedBlob};
use berth_engine::upload_store::Chunk;
use berth_engine::{Algorithm, ChunkRange, Digest, Error, RepoName, UploadLimits, UploadStore};

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

type Body = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

/// A body of `data` in frames of `frame` bytes.
fn body(data: &[u8], frame: usize) -> Body {
    let frames: Vec<_> = data
        .chunks(frame.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(frames)
}

fn chunk(data: &[u8], range: Option<(u64, u64)>) -> Chunk<Body> {
    Chunk {
        range: range.map(|(start, end)| ChunkRange { start, end }),
        length: Some(data.len() as u64),
        body: body(data, 4093),
    }
}

fn empty() -> Chunk<Body> {
    Chunk {
        range: None,
        length: Some(0),
        body: body(&[], 1),
    }
}

/// Some bytes that are not all alike.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// What the commit step was handed.
#[derive(Clone, Default)]
struct Committed(Arc<Mutex<Vec<BlobLink>>>);

impl Committed {
    /// A commit step that stores the blob (prepare, place, finish) and records its link, or
    /// fails after preparing, before placing, when `fail`.
    fn step(
        &self,
        fail: bool,
    ) -> impl FnOnce(BlobLink, Box<dyn StagedBlob>) -> std::future::Ready<berth_engine::Result<()>> {
        let seen = self.0.clone();
        move |link, mut staged| {
            let done = staged.prepare().and_then(|p| {
                if fail {
                    // The transaction failed before the placement ran.
                    return Err(Error::Io(std::io::Error::other("commit refused")));
                }
                p.place().map(|_| ())
            });
            staged.finish(if done.is_ok() { Outcome::Linked } else { Outcome::Failed });
            if done.is_ok() {
                seen.lock().unwrap().push(link);
            }
            std::future::ready(done)
        }
    }
    fn links(&self) -> Vec<BlobLink> {
        self.0.lock().unwrap().clone()
    }
}

async fn chunks_of_any_size_make_the_blob<U: UploadStore>(u: &U) {
    let r = repo("suite/chunks");
    let data = bytes(3 * 1024 * 1024 + 17, 1);
    let id = u.start(&r, "user:alice").await.unwrap();
    assert_eq!(u.offset(&r, id).await.unwrap(), 0);
    let mut at = 0usize;
    for size in [1usize, 4096, 1 << 20, 12345, 999_999] {
        let end = (at + size).min(data.len());
        let part = &data[at..end];
        let range = Some((at as u64, end as u64 - 1));
        assert_eq!(u.append(&r, id, chunk(part, range)).await.unwrap(), end as u64);
        assert_eq!(u.offset(&r, id).await.unwrap(), end as u64);
        at = end;
    }
    let digest = Digest::of(Algorithm::Sha256, &data);
    let c = Committed::default();
    let size = u
        .finish(&r, id, &digest, chunk(&data[at..], None), c.step(false))
        .await
        .unwrap();
    assert_eq!(size, data.len() as u64);
    assert_eq!(
        c.links(),
        [BlobLink {
            repo: r.clone(),
            digest,
            size,
            object: c.links()[0].object,
        }]
    );
    assert!(
        matches!(u.offset(&r, id).await, Err(Error::UploadUnknown)),
        "the session ended"
    );
}

async fn a_chunk_out_of_order_is_refused_and_changes_nothing<U: UploadStore>(u: &U) {
    let r = repo("suite/order");
    let data = bytes(10_000, 2);
    let id = u.start(&r, "").await.unwrap();
    u.append(&r, id, chunk(&data[..6000], Some((0, 5999)))).await.unwrap();
    // A retried earlier chunk, and one past the end.
    for range in [(0, 5999), (7000, 9999)] {
        let (s, e) = (range.0 as usize, range.1 as usize);
        let err = u.append(&r, id, chunk(&data[s..=e], Some(range))).await.unwrap_err();
        assert!(
            matches!(err, Error::RangeMismatch { offset: 6000, .. }),
            "{range:?}: {err:?}"
        );
        assert_eq!(u.offset(&r, id).await.unwrap(), 6000);
    }
    // A chunk shorter than it declared.
    let err = u
        .append(&r, id, chunk(&data[6000..7000], Some((6000, 7999))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err:?}");
    assert_eq!(u.offset(&r, id).await.unwrap(), 6000);
    u.append(&r, id, chunk(&data[6000..], Some((6000, 9999))))
        .await
        .unwrap();
    let c = Committed::default();
    let digest = Digest::of(Algorithm::Sha256, &data);
    u.finish(&r, id, &digest, empty(), c.step(false)).await.unwrap();
    assert_eq!(c.links().len(), 1);
}

async fn a_wrong_digest_leaves_the_session_as_it_was<U: UploadStore>(u: &U) {
    let r = repo("suite/digest");
    let data = bytes(70_000, 3);
    let id = u.start(&r, "").await.unwrap();
    u.append(&r, id, chunk(&data[..50_000], None)).await.unwrap();
    let c = Committed::default();
    let wrong = Digest::of(Algorithm::Sha256, b"something else");
    let err = u
        .finish(&r, id, &wrong, chunk(&data[50_000..], None), c.step(false))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(c.links().is_empty());
    assert_eq!(u.offset(&r, id).await.unwrap(), 50_000, "the last chunk was not kept");
    let digest = Digest::of(Algorithm::Sha256, &data);
    u.finish(&r, id, &digest, chunk(&data[50_000..], None), c.step(false))
        .await
        .unwrap();
    assert_eq!(c.links().len(), 1);
}

async fn a_failed_commit_keeps_the_session<U: UploadStore>(u: &U) {
    let r = repo("suite/commit-fails");
    let data = bytes(40_000, 4);
    let id = u.start(&r, "").await.unwrap();
    let digest = Digest::of(Algorithm::Sha256, &data);
    let c = Committed::default();
    let err = u
        .finish(&r, id, &digest, chunk(&data, None), c.step(true))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("commit refused"), "{err}");
    assert_eq!(u.offset(&r, id).await.unwrap(), data.len() as u64);
    u.finish(&r, id, &digest, empty(), c.step(false)).await.unwrap();
    assert_eq!(c.links()[0].size, data.len() as u64);
}

async fn sessions_belong_to_their_repository<U: UploadStore>(u: &U) {
    let (r, other) = (repo("suite/mine"), repo("suite/theirs"));
    let id = u.start(&r, "").await.unwrap();
    assert!(matches!(u.offset(&other, id).await, Err(Error::UploadUnknown)));
    assert!(matches!(
        u.append(&other, id, chunk(b"x", None)).await,
        Err(Error::UploadUnknown)
    ));
    assert_eq!(u.offset(&r, id).await.unwrap(), 0);
}

async fn a_cancelled_session_is_gone<U: UploadStore>(u: &U) {
    let r = repo("suite/cancel");
    let id = u.start(&r, "").await.unwrap();
    u.append(&r, id, chunk(b"some bytes", None)).await.unwrap();
    let open = u.in_progress();
    u.cancel(&r, id).await.unwrap();
    assert_eq!(u.in_progress(), open - 1);
    assert!(matches!(u.offset(&r, id).await, Err(Error::UploadUnknown)));
    assert!(matches!(u.cancel(&r, id).await, Err(Error::UploadUnknown)));
}

async fn idle_sessions_are_reaped<U: UploadStore>(u: &U) {
    let r = repo("suite/reap");
    let id = u.start(&r, "").await.unwrap();
    u.append(&r, id, chunk(b"idle", None)).await.unwrap();
    assert_eq!(u.reap(Duration::from_secs(3600)).await.unwrap(), 0);
    // Idle times are counted in whole seconds: 2.1 s is past a 1 s timeout whatever the rounding.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(u.reap(Duration::from_secs(1)).await.unwrap() >= 1);
    assert!(matches!(u.offset(&r, id).await, Err(Error::UploadUnknown)));
}

/// Run against a store made with `per_owner` 2, `per_repository` 3, `total` 4.
async fn caps_refuse_sessions_beyond_them<U: UploadStore>(u: &U) {
    let (a, b) = (repo("suite/caps-a"), repo("suite/caps-b"));
    let mine = [
        u.start(&a, "user:alice").await.unwrap(),
        u.start(&a, "user:alice").await.unwrap(),
    ];
    let err = u.start(&a, "user:alice").await.unwrap_err();
    assert!(matches!(err, Error::TooManyUploads { .. }), "{err:?}");
    // Others are not refused for alice's sessions, up to the repository's cap.
    u.start(&a, "user:bob").await.unwrap();
    assert!(matches!(
        u.start(&a, "user:carol").await,
        Err(Error::TooManyUploads { .. })
    ));
    u.start(&b, "user:carol").await.unwrap();
    assert!(matches!(
        u.start(&b, "user:dave").await,
        Err(Error::TooManyUploads { .. })
    ));
    // An ended session gives its place back.
    u.cancel(&a, mine[0]).await.unwrap();
    u.start(&a, "user:alice").await.unwrap();
}

/// Every check above as a test of the module it is used in, whose `async fn store(limits)`
/// makes the store under test (with what must live as long as it). The caps check runs with
/// `per_owner` 2, `per_repository` 3, `total` 4.
macro_rules! suite {
    () => {
        suite!(@each
            chunks_of_any_size_make_the_blob,
            a_chunk_out_of_order_is_refused_and_changes_nothing,
            a_wrong_digest_leaves_the_session_as_it_was,
            a_failed_commit_keeps_the_session,
            sessions_belong_to_their_repository,
            a_cancelled_session_is_gone,
            idle_sessions_are_reaped,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn caps_refuse_sessions_beyond_them() {
            let limits = UploadLimits {
                per_owner: 2,
                per_repository: 3,
                total: 4,
            };
            let (_keep, u) = store(limits).await;
            super::caps_refuse_sessions_beyond_them(&u).await;
        }
    };
    (@each $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (_keep, u) = store(UploadLimits::default()).await;
                super::$check(&u).await;
            }
        )*
    };
}

/// The filesystem's sessions.
mod fs {
    use super::*;
    use berth_engine::fs_uploads::FsUploads;
    use berth_engine::layout::Layout;

    async fn store(limits: UploadLimits) -> (tempfile::TempDir, FsUploads) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(layout.uploads_dir()).unwrap();
        std::fs::create_dir_all(layout.blobs_dir()).unwrap();
        (dir, FsUploads::new(layout, limits))
    }

    suite!();

    /// The committed data is the blob, at its content-addressed path.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_committed_data_is_at_the_blob_path() {
        let (dir, u) = store(UploadLimits::default()).await;
        let r = repo("suite/path");
        let data = bytes(123_456, 9);
        let id = u.start(&r, "").await.unwrap();
        let digest = Digest::of(Algorithm::Sha256, &data);
        u.finish(&r, id, &digest, chunk(&data, None), Committed::default().step(false))
            .await
            .unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(std::fs::read(layout.blob(&digest)).unwrap(), data);
        assert!(!layout.upload_dir(id).exists(), "the session's directory went");
    }
}

/// The object store's sessions: SeaweedFS for the parts, PostgreSQL for the rows.
mod s3 {
    use super::*;
    use berth_engine::postgres::PgStore;
    use berth_engine::s3::{S3Client, S3Uploads, blobs::object_key};

    /// The smallest part S3 accepts, so that a few MiB make several parts.
    const PART: u64 = 5 << 20;

    async fn store(limits: UploadLimits) -> (S3Client, S3Uploads<PgStore>) {
        let db = crate::support::postgres::shared().database().await;
        let pg = PgStore::connect(&db).await.unwrap();
        let root = format!("suite-{}", berth_engine::UploadId::random());
        let client = S3Client::new(&crate::support::seaweedfs::shared().settings(&root)).unwrap();
        client.check_bucket().await.unwrap();
        (client.clone(), S3Uploads::new(client, pg, PART, 4 * PART, limits))
    }

    suite!();

    async fn read_all(c: &S3Client, key: &str, len: u64) -> Vec<u8> {
        let mut rx = c.get(key, 0, len).await.unwrap();
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b.unwrap());
        }
        out
    }

    /// Chunks that cross part boundaries anywhere (one byte, less than a part, more than a
    /// part) make parts of the fixed size and a tail; the completed object is the blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_across_part_boundaries_make_the_object() {
        let (c, u) = store(UploadLimits::default()).await;
        let r = repo("suite/parts");
        let data = bytes((2 * PART + PART / 3) as usize, 7);
        let id = u.start(&r, "").await.unwrap();
        let mut at = 0usize;
        for size in [1usize, (PART - 1) as usize, 3, (PART + 12345) as usize] {
            let part = &data[at..at + size];
            let range = Some((at as u64, (at + size) as u64 - 1));
            assert_eq!(u.append(&r, id, chunk(part, range)).await.unwrap(), (at + size) as u64);
            at += size;
        }
        let digest = Digest::of(Algorithm::Sha256, &data);
        let links = Committed::default();
        let size = u
            .finish(&r, id, &digest, chunk(&data[at..], None), links.step(false))
            .await
            .unwrap();
        assert_eq!(size, data.len() as u64);
        let link = &links.links()[0];
        assert_eq!(link.object, Some(id), "the record names the session's object");
        let stored = read_all(&c, &object_key(id), size).await;
        assert!(stored == data, "the object holds the blob's bytes");
    }

    /// Eight uploads of three parts each at once, with room for only two part buffers: they
    /// wait for room in turn and all complete, each with its own bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_beyond_the_memory_budget_wait_and_complete() {
        let db = crate::support::postgres::shared().database().await;
        let pg = PgStore::connect(&db).await.unwrap();
        let root = format!("budget-{}", berth_engine::UploadId::random());
        let client = S3Client::new(&crate::support::seaweedfs::shared().settings(&root)).unwrap();
        let u = std::sync::Arc::new(S3Uploads::new(
            client.clone(),
            pg,
            PART,
            2 * PART,
            UploadLimits::default(),
        ));
        let r = repo("suite/budget");
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let (u, r) = (u.clone(), r.clone());
                tokio::spawn(async move {
                    let data = bytes((3 * PART) as usize - 7, i);
                    let id = u.start(&r, "").await.unwrap();
                    let digest = Digest::of(Algorithm::Sha256, &data);
                    u.finish(&r, id, &digest, chunk(&data, None), Committed::default().step(false))
                        .await
                        .unwrap();
                    (id, data)
                })
            })
            .collect();
        for t in tasks {
            let (id, data) = tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .unwrap()
                .unwrap();
            assert!(read_all(&client, &object_key(id), data.len() as u64).await == data);
        }
    }

    /// A blob smaller than a part is stored with one PUT, no multipart upload.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_blob_is_one_object() {
        let (c, u) = store(UploadLimits::default()).await;
        let r = repo("suite/small");
        let data = bytes(1000, 8);
        let id = u.start(&r, "").await.unwrap();
        let digest = Digest::of(Algorithm::Sha256, &data);
        u.finish(&r, id, &digest, chunk(&data, None), Committed::default().step(false))
            .await
            .unwrap();
        assert_eq!(read_all(&c, &object_key(id), 1000).await, data);
        assert!(
            c.pending_uploads("").await.unwrap().is_empty(),
            "no multipart upload was left"
        );
    }

    /// Two stores (two replicas) race for the same offset: one wins, the other is refused
    /// with the session's offset, and the session goes on from the winner's bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_chunks_for_one_offset_one_wins() {
        let db = crate::support::postgres::shared().database().await;
        let root = format!("race-{}", berth_engine::UploadId::random());
        let settings = crate::support::seaweedfs::shared().settings(&root);
        let replica = || async {
            let pg = PgStore::connect(&db).await.unwrap();
            S3Uploads::new(
                S3Client::new(&settings).unwrap(),
                pg,
                PART,
                4 * PART,
                UploadLimits::default(),
            )
        };
        let (a, b) = (replica().await, replica().await);
        let r = repo("suite/race");
        let data = bytes(3 << 20, 9);
        let id = a.start(&r, "").await.unwrap();
        let range = Some((0, data.len() as u64 - 1));
        let (ra, rb) = tokio::join!(
            a.append(&r, id, chunk(&data, range)),
            b.append(&r, id, chunk(&data, range))
        );
        let won = [ra.is_ok(), rb.is_ok()];
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{ra:?} {rb:?}");
        let lost = if won[0] { rb } else { ra };
        assert!(matches!(lost, Err(Error::RangeMismatch { start: 0, .. })), "{lost:?}");
        assert_eq!(b.offset(&r, id).await.unwrap(), data.len() as u64);
        let digest = Digest::of(Algorithm::Sha256, &data);
        b.finish(&r, id, &digest, empty(), Committed::default().step(false))
            .await
            .unwrap();
    }
}
