//! Engine behaviour through its public API, on a real temporary directory.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream;
use proptest::prelude::*;

use berth_engine::{Algorithm, ByteRange, ChunkRange, Digest, Engine, Error, Reference, RepoName};

type Chunks = Vec<Result<Bytes, Infallible>>;

fn body(parts: &[&[u8]]) -> futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, Infallible>>> {
    let v: Chunks = parts.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
    stream::iter(v)
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn names<T: AsRef<str>>(items: &[T]) -> Vec<&str> {
    items.iter().map(AsRef::as_ref).collect()
}

async fn read_all(e: &Engine, d: &Digest, start: u64, len: u64) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut s = e.blob_read(d, ByteRange { start, len }).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

async fn push(e: &Engine, r: &RepoName, data: &[u8]) -> Digest {
    let d = Digest::of(Algorithm::Sha256, data);
    let id = e.upload_start(r).await.unwrap();
    e.upload_finish(r, id, &d, None, Some(data.len() as u64), body(&[data]))
        .await
        .unwrap();
    d
}

#[tokio::test]
async fn chunked_upload_commits_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("a/b");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::of(Algorithm::Sha256, &data);
    let id = e.upload_start(&r).await.unwrap();
    // The session's first checkpoint is written with its file.
    assert_eq!(e.upload_offset(&r, id).await.unwrap(), 0);
    let off = e
        .upload_append(
            &r,
            id,
            Some(ChunkRange { start: 0, end: 39_999 }),
            None,
            body(&[&data[..40_000]]),
        )
        .await
        .unwrap();
    assert_eq!(off, 40_000);
    // out of order
    let err = e
        .upload_append(
            &r,
            id,
            Some(ChunkRange { start: 0, end: 9 }),
            None,
            body(&[&data[..10]]),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::RangeMismatch {
            start: 0,
            offset: 40_000
        }
    ));
    // declared length disagrees with the body: nothing is kept
    let err = e
        .upload_append(
            &r,
            id,
            Some(ChunkRange {
                start: 40_000,
                end: 40_009,
            }),
            None,
            body(&[&data[40_000..40_005]]),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::SizeMismatch {
            declared: 10,
            actual: 5
        }
    ));
    assert_eq!(e.upload_offset(&r, id).await.unwrap(), 40_000);
    e.upload_append(&r, id, None, None, body(&[&data[40_000..70_000]]))
        .await
        .unwrap();
    assert_eq!(
        e.upload_finish(&r, id, &d, None, None, body(&[&data[70_000..]]))
            .await
            .unwrap(),
        100_000
    );
    assert_eq!(e.blob_size(&r, &d).await.unwrap(), 100_000);
    assert_eq!(read_all(&e, &d, 0, 100_000).await, data);
    assert_eq!(read_all(&e, &d, 10, 5).await, &data[10..15]);
    // the session is gone after commit, its directory too
    assert!(matches!(e.upload_offset(&r, id).await, Err(Error::UploadUnknown)));
    assert!(!dir.path().join(format!("uploads/{id}")).exists());
}

#[tokio::test]
async fn a_failed_commit_keeps_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("commit/fails");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let d = Digest::of(Algorithm::Sha256, &data);
    // A file where the blob's directory goes: the rename into place fails.
    let fan_out = dir.path().join(format!("blobs/sha256/{}", &d.hex()[..2]));
    std::fs::create_dir_all(fan_out.parent().unwrap()).unwrap();
    std::fs::write(&fan_out, b"in the way").unwrap();
    let id = e.upload_start(&r).await.unwrap();
    e.upload_append(&r, id, None, None, body(&[&data[..100_000]]))
        .await
        .unwrap();
    let err = e.upload_finish(&r, id, &d, None, None, body(&[&data[100_000..]])).await;
    assert!(matches!(err, Err(Error::Io(_))), "{err:?}");
    assert!(matches!(e.blob_size(&r, &d).await, Err(Error::BlobUnknown(_))));
    // The session holds everything it received and takes the commit again.
    assert_eq!(e.upload_offset(&r, id).await.unwrap(), 300_000);
    std::fs::remove_file(&fan_out).unwrap();
    assert_eq!(
        e.upload_finish(&r, id, &d, None, None, body(&[])).await.unwrap(),
        300_000
    );
    assert_eq!(read_all(&e, &d, 0, 300_000).await, data);
    assert!(!dir.path().join(format!("uploads/{id}")).exists());
}

#[tokio::test]
async fn wrong_digest_stores_nothing_and_keeps_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("x");
    let wrong = Digest::of(Algorithm::Sha256, b"something else");
    let id = e.upload_start(&r).await.unwrap();
    e.upload_append(&r, id, None, None, body(&[b"abc"])).await.unwrap();
    let err = e
        .upload_finish(&r, id, &wrong, None, None, body(&[b"def"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }));
    assert!(matches!(e.blob_size(&r, &wrong).await, Err(Error::BlobUnknown(_))));
    assert_eq!(
        e.upload_offset(&r, id).await.unwrap(),
        3,
        "the failed final chunk was rolled back"
    );
    let right = Digest::of(Algorithm::Sha256, b"abcdef");
    e.upload_finish(&r, id, &right, None, None, body(&[b"def"]))
        .await
        .unwrap();
    assert_eq!(e.blob_size(&r, &right).await.unwrap(), 6);
}

#[tokio::test]
async fn sha512_commit_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("x");
    let d = Digest::of(Algorithm::Sha512, b"hello");
    let id = e.upload_start(&r).await.unwrap();
    e.upload_finish(&r, id, &d, None, None, body(&[b"hel", b"lo"]))
        .await
        .unwrap();
    assert_eq!(read_all(&e, &d, 0, 5).await, b"hello");
}

#[tokio::test]
async fn sessions_belong_to_their_repository() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let id = e.upload_start(&repo("a")).await.unwrap();
    assert!(matches!(
        e.upload_offset(&repo("b"), id).await,
        Err(Error::UploadUnknown)
    ));
    e.upload_cancel(&repo("a"), id).await.unwrap();
    assert!(matches!(
        e.upload_offset(&repo("a"), id).await,
        Err(Error::UploadUnknown)
    ));
}

/// The caps on open sessions refuse beyond their limit; a commit, a cancel or a reopen of the
/// storage (where sessions on disk count for their recorded owner) gives places back as it
/// should, and a session loaded from disk is never refused.
#[tokio::test]
async fn upload_caps_count_open_sessions_until_they_end() {
    use berth_engine::{UploadCap, UploadLimits};
    let dir = tempfile::tempdir().unwrap();
    let limits = UploadLimits {
        per_owner: 2,
        per_repository: 0,
        total: 3,
    };
    let e = Engine::open(dir.path()).await.unwrap().with_upload_limits(limits);
    let r = repo("caps");
    let a1 = e.upload_start_as(&r, "alice").await.unwrap();
    let a2 = e.upload_start_as(&r, "alice").await.unwrap();
    assert!(matches!(
        e.upload_start_as(&r, "alice").await,
        Err(Error::TooManyUploads {
            cap: UploadCap::Owner,
            limit: 2
        })
    ));
    let b1 = e.upload_start_as(&r, "bob").await.unwrap();
    assert!(matches!(
        e.upload_start_as(&r, "carol").await,
        Err(Error::TooManyUploads {
            cap: UploadCap::Total,
            limit: 3
        })
    ));
    // A commit frees its place, and so does a cancel.
    let d = Digest::of(Algorithm::Sha256, b"one");
    e.upload_finish(&r, a1, &d, None, None, body(&[b"one"])).await.unwrap();
    let a3 = e.upload_start_as(&r, "alice").await.unwrap();
    e.upload_cancel(&r, b1).await.unwrap();
    e.upload_start_as(&r, "carol").await.unwrap();
    drop(e);
    // After a reopen the sessions on disk count again once used, for their owner, and are
    // never refused themselves.
    let e = Engine::open(dir.path()).await.unwrap().with_upload_limits(limits);
    e.upload_append(&r, a2, None, None, body(&[b"x"])).await.unwrap();
    e.upload_append(&r, a3, None, None, body(&[b"y"])).await.unwrap();
    assert!(matches!(
        e.upload_start_as(&r, "alice").await,
        Err(Error::TooManyUploads {
            cap: UploadCap::Owner,
            ..
        })
    ));
    e.upload_start_as(&r, "dave").await.unwrap();
}

#[tokio::test]
async fn upload_resumes_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = repo("resume/me");
    let id = {
        let e = Engine::open(dir.path()).await.unwrap();
        let id = e.upload_start(&r).await.unwrap();
        e.upload_append(&r, id, None, None, body(&[b"first half, "]))
            .await
            .unwrap();
        id
    };
    let e = Engine::open(dir.path()).await.unwrap();
    assert_eq!(e.upload_offset(&r, id).await.unwrap(), 12);
    let d = Digest::of(Algorithm::Sha256, b"first half, second half");
    e.upload_append(
        &r,
        id,
        Some(ChunkRange { start: 12, end: 22 }),
        None,
        body(&[b"second half"]),
    )
    .await
    .unwrap();
    e.upload_finish(&r, id, &d, None, None, body(&[])).await.unwrap();
    assert_eq!(read_all(&e, &d, 0, 23).await, b"first half, second half");
}

#[tokio::test]
async fn blobs_are_shared_and_deleted_with_their_last_link() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let (a, b) = (repo("a"), repo("b"));
    let d = push(&e, &a, b"shared").await;
    assert!(
        matches!(e.blob_size(&b, &d).await, Err(Error::BlobUnknown(_))),
        "repositories are isolated"
    );
    assert!(e.blob_mount(&b, &d, Some(&a)).await.unwrap());
    assert!(!e.blob_mount(&b, &d, Some(&repo("c"))).await.unwrap());
    let again = push(&e, &b, b"shared").await; // deduplicated
    assert_eq!(again, d);
    e.blob_delete(&a, &d).await.unwrap();
    assert!(matches!(e.blob_size(&a, &d).await, Err(Error::BlobUnknown(_))));
    assert_eq!(read_all(&e, &d, 0, 6).await, b"shared", "b still links it");
    e.blob_delete(&b, &d).await.unwrap();
    assert!(matches!(
        e.blob_read(&d, ByteRange { start: 0, len: 6 }).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(!e.blob_mount(&a, &d, None).await.unwrap());
}

fn image_manifest(config: &Digest, layer: &Digest, extra: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":5}}]{extra}}}"#
    ))
}

#[tokio::test]
async fn manifests_tags_and_referrers() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("app");
    let config = push(&e, &r, b"{}").await;
    let layer = push(&e, &r, b"layer").await;
    let ct = Some("application/vnd.oci.image.manifest.v1+json");
    let body = image_manifest(&config, &layer, "");
    let pushed = e
        .manifest_put(&r, &"v1".parse().unwrap(), ct, body.clone())
        .await
        .unwrap();
    assert_eq!(pushed.digest, Digest::of(Algorithm::Sha256, &body));
    let got = e.manifest_get(&r, &"v1".parse().unwrap()).await.unwrap();
    assert_eq!(got.bytes, body.to_vec());
    assert_eq!(Some(got.media_type.as_str()), ct);

    // a missing layer is refused, in another repository too
    let missing = Digest::of(Algorithm::Sha256, b"nope");
    let err = e
        .manifest_put(&r, &"v2".parse().unwrap(), ct, image_manifest(&config, &missing, ""))
        .await;
    assert!(matches!(err, Err(Error::ManifestBlobUnknown(d)) if d == missing));
    let err = e
        .manifest_put(&repo("other"), &"v1".parse().unwrap(), ct, body.clone())
        .await;
    assert!(matches!(err, Err(Error::ManifestBlobUnknown(_))));

    // a referrer
    let subject = format!(
        r#","artifactType":"application/x-sig","subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{}}},"annotations":{{"k":"v"}}"#,
        pushed.digest,
        body.len()
    );
    let sig = e
        .manifest_put(
            &r,
            &"sig".parse().unwrap(),
            ct,
            image_manifest(&config, &layer, &subject),
        )
        .await
        .unwrap();
    assert_eq!(sig.subject.as_ref(), Some(&pushed.digest));
    let refs = e.referrers(&r, &pushed.digest, None).await.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, sig.digest);
    assert_eq!(refs[0].artifact_type.as_deref(), Some("application/x-sig"));
    assert_eq!(refs[0].annotations.as_ref().unwrap()["k"], "v");
    let listed = serde_json::to_value(&refs[0]).unwrap();
    assert_eq!(listed["digest"], sig.digest.to_string());
    assert_eq!(listed["artifactType"], "application/x-sig");
    assert!(
        e.referrers(&r, &pushed.digest, Some("application/other"))
            .await
            .unwrap()
            .is_empty()
    );

    // tags: sorted pages
    for t in ["b", "a", "c"] {
        e.manifest_put(&r, &t.parse().unwrap(), ct, body.clone()).await.unwrap();
    }
    let first = e.tags(&r, None, 2).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    assert!(first.more);
    let rest = e.tags(&r, Some("b".into()), 10).await.unwrap();
    assert_eq!(names(&rest.items), ["c", "sig", "v1"]);
    assert!(!rest.more);
    assert!(matches!(
        e.tags(&repo("nothing"), None, 10).await,
        Err(Error::NameUnknown(_))
    ));

    // delete by tag removes only the tag; by digest removes all its tags and its referrer entry
    e.manifest_delete(&r, &"a".parse().unwrap()).await.unwrap();
    assert!(
        e.manifest_get(&r, &Reference::Digest(pushed.digest.clone()))
            .await
            .is_ok()
    );
    e.manifest_delete(&r, &Reference::Digest(sig.digest.clone()))
        .await
        .unwrap();
    assert!(e.referrers(&r, &pushed.digest, None).await.unwrap().is_empty());
    e.manifest_delete(&r, &Reference::Digest(pushed.digest.clone()))
        .await
        .unwrap();
    let left = e.tags(&r, None, 10).await.unwrap().items;
    assert!(left.is_empty(), "{left:?}");
    assert!(matches!(
        e.manifest_get(&r, &"v1".parse().unwrap()).await,
        Err(Error::ManifestUnknown(_))
    ));
}

#[tokio::test]
async fn concurrent_writes_to_one_session_are_refused_not_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(Engine::open(dir.path()).await.unwrap());
    let r = repo("busy");
    let id = e.upload_start(&r).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
    let slow = {
        let (e, r) = (e.clone(), r.clone());
        tokio::spawn(async move { e.upload_append(&r, id, None, None, tokio_stream(rx)).await })
    };
    tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let err = e.upload_append(&r, id, None, None, body(&[b"y"])).await.unwrap_err();
    assert!(matches!(err, Error::UploadBusy));
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap(), 1);
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn catalog_lists_repositories_with_content() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    for name in ["z/z", "a", "m/n/o"] {
        push(&e, &repo(name), name.as_bytes()).await;
    }
    assert_eq!(names(&e.catalog(None, 10).await.unwrap().items), ["a", "m/n/o", "z/z"]);
    let page = e.catalog(Some("a".into()), 1).await.unwrap();
    assert_eq!(names(&page.items), ["m/n/o"]);
    assert!(page.more);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any split of a blob into chunks, declared or streamed, gives the same digest and bytes.
    #[test]
    fn any_chunking_gives_the_same_blob(
        data in proptest::collection::vec(any::<u8>(), 0..200_000),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        declared in any::<bool>(),
        frames in 1usize..5,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let e = Engine::open(dir.path()).await.unwrap();
            let r = repo("prop");
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            points.dedup();
            let id = e.upload_start(&r).await.unwrap();
            for w in points.windows(2) {
                let chunk = &data[w[0]..w[1]];
                if chunk.is_empty() { continue; }
                // each chunk arrives as several body frames
                let step = chunk.len().div_ceil(frames);
                let parts: Vec<&[u8]> = chunk.chunks(step).collect();
                let range = declared.then(|| ChunkRange { start: w[0] as u64, end: w[1] as u64 - 1 });
                e.upload_append(&r, id, range, None, body(&parts)).await.unwrap();
            }
            let d = Digest::of(Algorithm::Sha256, &data);
            prop_assert_eq!(e.upload_finish(&r, id, &d, None, None, body(&[])).await.unwrap(), data.len() as u64);
            if !data.is_empty() {
                prop_assert_eq!(read_all(&e, &d, 0, data.len() as u64).await, data.clone());
            }
            Ok(())
        })?;
    }
}

/// Slow clients must not pin threads: with more stalled uploads than the blocking pool has
/// threads (512), another upload and a read still complete at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_hold_no_threads() {
    // The whole test is bounded: with threads pinned by slow clients it would hang.
    tokio::time::timeout(std::time::Duration::from_secs(60), stalled_uploads())
        .await
        .expect("uploads or reads were starved by stalled uploads");
}

async fn stalled_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(Engine::open(dir.path()).await.unwrap());
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..600 {
        let r = repo(&format!("stall/r{i}"));
        let id = e.upload_start(&r).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
        tx.send(Ok(Bytes::from_static(b"first frame"))).await.unwrap();
        senders.push(tx);
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.upload_append(&r, id, None, None, tokio_stream(rx)).await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = repo("stall/free");
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), push(&e, &r, b"gets through"))
        .await
        .expect("an upload was starved by stalled ones");
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), read_all(&e, &d, 0, 12))
        .await
        .unwrap();
    assert_eq!(read, b"gets through");
    drop(senders);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 11);
    }
}

fn index_of(children: &[&Digest]) -> Bytes {
    let list: Vec<String> = children
        .iter()
        .map(|d| format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":10}}"#))
        .collect();
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        list.join(",")
    ))
}

const OCI: Option<&str> = Some("application/vnd.oci.image.manifest.v1+json");
const INDEX: Option<&str> = Some("application/vnd.oci.image.index.v1+json");

#[tokio::test]
async fn garbage_collection() {
    use berth_engine::GcOptions;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("gc/app");
    let tag = |t: &str| Reference::Tag(t.parse().unwrap());
    let config = push(&e, &r, b"{}").await;
    let layer = push(&e, &r, b"layer").await;
    let loose = push(&e, &r, b"uploaded, never referenced").await;
    let shared = push(&e, &r, b"shared with another repository").await;
    // gc/other links the shared blob and references it from a manifest of its own.
    let other = repo("gc/other");
    push(&e, &other, b"shared with another repository").await;
    let other_config = push(&e, &other, b"{}").await;
    e.manifest_put(&other, &tag("v1"), OCI, image_manifest(&other_config, &shared, ""))
        .await
        .unwrap();
    let tagged = e
        .manifest_put(&r, &tag("v1"), OCI, image_manifest(&config, &layer, ""))
        .await
        .unwrap()
        .digest;
    // An untagged image (pushed by digest) with its own layer, and an index reaching it.
    let only_untagged = push(&e, &r, b"only in the untagged image").await;
    let untagged_m = image_manifest(&config, &only_untagged, "");
    let untagged = Digest::of(Algorithm::Sha256, &untagged_m);
    e.manifest_put(&r, &Reference::Digest(untagged.clone()), OCI, untagged_m)
        .await
        .unwrap();
    // A signature (referrer) of the tagged image: reached through its subject.
    let sig_m = image_manifest(
        &config,
        &layer,
        &format!(
            r#","subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{tagged}","size":1}}"#
        ),
    );
    let sig = Digest::of(Algorithm::Sha256, &sig_m);
    e.manifest_put(&r, &Reference::Digest(sig.clone()), OCI, sig_m)
        .await
        .unwrap();

    let opts = |grace_secs: u64, untagged: bool, dry_run: bool| GcOptions {
        grace: Duration::from_secs(grace_secs),
        untagged,
        dry_run,
    };
    // Within the grace period nothing goes.
    let rep = e.gc(opts(3600, true, false)).await.unwrap();
    assert_eq!((rep.manifests, rep.links, rep.blobs), (0, 0, 0), "{rep:?}");
    // A dry run reports and removes nothing.
    let dry = e.gc(opts(0, false, true)).await.unwrap();
    assert_eq!((dry.links, dry.blobs), (2, 1), "{dry:?}");
    assert_eq!(e.blob_size(&r, &loose).await.unwrap(), 26);
    // Unreferenced links go; a blob still linked elsewhere keeps its file.
    let rep = e.gc(opts(0, false, false)).await.unwrap();
    assert_eq!(
        (rep.manifests, rep.links, rep.blobs, rep.bytes),
        (0, 2, 1, 26),
        "{rep:?}"
    );
    assert!(matches!(e.blob_size(&r, &loose).await, Err(Error::BlobUnknown(_))));
    assert!(
        !dir.path()
            .join(format!("blobs/sha256/{}/{}", &loose.hex()[..2], loose.hex()))
            .exists()
    );
    assert!(matches!(e.blob_size(&r, &shared).await, Err(Error::BlobUnknown(_))));
    assert_eq!(e.blob_size(&repo("gc/other"), &shared).await.unwrap(), 30);
    assert_eq!(read_all(&e, &shared, 0, 30).await, b"shared with another repository");
    // The untagged image's layer is referenced by it, so it stays until untagged removal.
    assert_eq!(e.blob_size(&r, &only_untagged).await.unwrap(), 26);
    let rep = e.gc(opts(0, true, false)).await.unwrap();
    assert_eq!((rep.manifests, rep.links, rep.blobs), (1, 1, 1), "{rep:?}");
    assert!(e.manifest_get(&r, &Reference::Digest(untagged)).await.is_err());
    assert!(
        e.manifest_get(&r, &Reference::Digest(sig)).await.is_ok(),
        "a referrer of a tagged image stays"
    );
    assert!(e.manifest_get(&r, &tag("v1")).await.is_ok());
    for d in [&config, &layer] {
        assert!(e.blob_size(&r, d).await.is_ok(), "referenced blob {d} removed");
    }
    // An index keeps the manifests it lists.
    let child_m = image_manifest(&config, &layer, r#","annotations":{"x":"child"}"#);
    let child = Digest::of(Algorithm::Sha256, &child_m);
    e.manifest_put(&r, &Reference::Digest(child.clone()), OCI, child_m)
        .await
        .unwrap();
    e.manifest_put(&r, &tag("multi"), INDEX, index_of(&[&child]))
        .await
        .unwrap();
    assert_eq!(e.gc(opts(0, true, false)).await.unwrap().manifests, 0);
    assert!(e.manifest_get(&r, &Reference::Digest(child.clone())).await.is_ok());
    // A stray file (a crash between rename and link) goes; a recorded one stays.
    let stray = Digest::of(Algorithm::Sha256, b"stray");
    let p = dir.path().join(format!("blobs/sha256/{}", &stray.hex()[..2]));
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(stray.hex()), b"stray").unwrap();
    let rep = e.gc(opts(0, false, false)).await.unwrap();
    assert_eq!((rep.stray_files, rep.stray_bytes), (1, 5), "{rep:?}");
    assert!(!p.join(stray.hex()).exists());
    assert_eq!(read_all(&e, &layer, 0, 5).await, b"layer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_collection_during_pushes_never_breaks_a_pushed_manifest() {
    use berth_engine::GcOptions;
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path()).await.unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // GC with no grace at all, in a loop: the harshest schedule.
    let gc = {
        let (e, stop) = (e.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let opts = GcOptions {
                    grace: Duration::ZERO,
                    untagged: true,
                    dry_run: false,
                };
                e.gc(opts).await.unwrap();
                runs += 1;
            }
            runs
        })
    };
    let mut pushers = Vec::new();
    for p in 0..8 {
        let e = e.clone();
        pushers.push(tokio::spawn(async move {
            let mut pushed = Vec::new();
            for i in 0..25 {
                let r = repo(&format!("race/p{p}"));
                let config = format!(r#"{{"p":{p},"i":{i}}}"#).into_bytes();
                let layer = format!("layer {p} {i} shared-part").into_bytes();
                let (Ok(c), Ok(l)) = (try_push(&e, &r, &config).await, try_push(&e, &r, &layer).await) else {
                    continue;
                };
                let m = image_manifest(&c, &l, "");
                let tag = Reference::Tag(format!("t{i}").parse().unwrap());
                // With no grace, GC may take the blobs before the manifest comes: then the push
                // is refused (MANIFEST_BLOB_UNKNOWN), never accepted with a blob missing.
                match e.manifest_put(&r, &tag, OCI, m).await {
                    Ok(_) => pushed.push((r, tag, c, l)),
                    Err(Error::ManifestBlobUnknown(_)) => {}
                    Err(other) => panic!("unexpected manifest error: {other}"),
                }
            }
            pushed
        }));
    }
    let mut all = Vec::new();
    for p in pushers {
        all.extend(p.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc.await.unwrap();
    assert!(runs > 0 && !all.is_empty(), "runs {runs}, pushed {}", all.len());
    // One more collection after the pushes: every pushed image keeps all its blobs.
    e.gc(GcOptions {
        grace: Duration::ZERO,
        untagged: true,
        dry_run: false,
    })
    .await
    .unwrap();
    for (r, tag, c, l) in &all {
        e.manifest_get(r, tag).await.unwrap();
        for d in [c, l] {
            let size = e
                .blob_size(r, d)
                .await
                .unwrap_or_else(|err| panic!("{r}: blob {d} of {tag:?} lost: {err}"));
            assert_eq!(read_all(&e, d, 0, size).await.len() as u64, size);
        }
    }
    eprintln!(
        "{} images pushed during {runs} garbage collections, all intact",
        all.len()
    );
}

async fn try_push(e: &Engine, r: &RepoName, data: &[u8]) -> Result<Digest, Error> {
    let d = Digest::of(Algorithm::Sha256, data);
    let id = e.upload_start(r).await?;
    e.upload_finish(r, id, &d, None, Some(data.len() as u64), body(&[data]))
        .await?;
    Ok(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_across_writeback_windows_are_whole() {
    // 100 MiB in 1 MiB frames crosses three early-writeback windows (32 MiB): the waits and
    // writeback hints leave the bytes and the digest exactly as sent.
    use berth_engine::io::WRITEBACK_WINDOW;
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("big/app");
    let frame: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let frames = (100 * 1024 * 1024 / frame.len() as u64) as usize;
    assert!(frames as u64 * frame.len() as u64 > 3 * WRITEBACK_WINDOW);
    let mut h = berth_engine::Hasher::new(Algorithm::Sha256);
    for i in 0..frames {
        let mut f = frame.clone();
        f[0] = i as u8;
        h.update(&f);
    }
    let digest = h.finish();
    let id = e.upload_start(&r).await.unwrap();
    let chunks: Chunks = (0..frames)
        .map(|i| {
            let mut f = frame.clone();
            f[0] = i as u8;
            Ok(Bytes::from(f))
        })
        .collect();
    let size = e
        .upload_finish(&r, id, &digest, None, None, stream::iter(chunks))
        .await
        .unwrap();
    assert_eq!(size, frames as u64 * frame.len() as u64);
    let mut back = berth_engine::Hasher::new(Algorithm::Sha256);
    back.update(&read_all(&e, &digest, 0, size).await);
    assert_eq!(back.finish(), digest);
}

/// Ranges of a blob large enough to be served from memory maps (and, with BERTH_IO_MMAP=off,
/// by reads): every byte where it belongs, at offsets that are not page-aligned and across the
/// boundaries of the mapped chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_ranges_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("big/ranges");
    let len = 5 * 1024 * 1024 + 123;
    let data: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let d = push(&e, &r, &data).await;
    let two_mib = 2 * 1024 * 1024;
    for (start, n) in [
        (0, len),
        (1, len - 1),
        (4097, two_mib + 5),
        (two_mib - 3, 1024 * 1024 + 7),
        (len - 1, 1),
        (len - 1_500_000, 1_500_000),
    ] {
        let got = read_all(&e, &d, start as u64, n as u64).await;
        assert_eq!(got.len(), n, "length of range {start}+{n}");
        assert!(got == data[start..start + n], "bytes of range {start}+{n}");
    }
    // Deleting the blob while a read is under way does not disturb the read.
    use futures_util::StreamExt;
    let mut s = e
        .blob_read(
            &d,
            ByteRange {
                start: 0,
                len: len as u64,
            },
        )
        .await
        .unwrap();
    let first = s.next().await.unwrap().unwrap();
    e.blob_delete(&r, &d).await.unwrap();
    let mut got = first.to_vec();
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert!(got == data, "a read that began before the delete completes intact");
}

/// CI runs these tests under both engines (BERTH_IO_ENGINE=uring and std): make sure the one
/// asked for is the one that runs (a machine without io_uring fails here, loudly, instead of
/// testing std twice).
#[test]
fn the_io_engine_asked_for_is_the_one_that_serves() {
    match std::env::var("BERTH_IO_ENGINE").as_deref() {
        Ok("std") => assert_eq!(berth_engine::io_engine(), "std"),
        Ok("uring") => assert_eq!(berth_engine::io_engine(), "io_uring"),
        _ => assert!(["std", "io_uring"].contains(&berth_engine::io_engine())),
    }
}

/// CI runs these tests with paired hashing on and off (BERTH_IO_HASH_PAIRS): make sure the
/// setting is the one in effect, so that the pass with it off does not quietly pair.
#[test]
fn paired_hashing_follows_its_setting() {
    use berth_engine::digest::sha256x2;
    match std::env::var("BERTH_IO_HASH_PAIRS").as_deref() {
        Ok("off") => assert!(!sha256x2::available()),
        _ => assert_eq!(sha256x2::available(), sha256x2::supported()),
    }
}

/// A body of thousands of tiny frames: more buffers in one batch than one vectored write takes
/// (IOV_MAX), so the io_uring engine writes it in several rounds; every byte lands in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tiny_frames_are_written_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap();
    let r = repo("tiny/frames");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let frames: Vec<&[u8]> = data.chunks(97).collect();
    let d = Digest::of(Algorithm::Sha256, &data);
    let id = e.upload_start(&r).await.unwrap();
    let off = e.upload_append(&r, id, None, None, body(&frames)).await.unwrap();
    assert_eq!(off, data.len() as u64);
    e.upload_finish(&r, id, &d, None, None, body(&[])).await.unwrap();
    assert!(read_all(&e, &d, 0, data.len() as u64).await == data);
}

/// Uploads that grow past the size where direct writes move to large buffers, more of them at
/// once than there are large buffers, each sent in requests that end at unaligned offsets on
/// both sides of that size: every upload switches (or cannot, and goes on with small buffers)
/// mid-request and resumes from a partial block, and every blob reads back exactly, whether
/// or not the requests declare their length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_uploads_share_the_large_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(Engine::open(dir.path()).await.unwrap());
    let r = repo("big/many");
    let len = 11 * 1024 * 1024 + 4099;
    let mut tasks = Vec::new();
    for n in 0..12u64 {
        let (e, r, root) = (e.clone(), r.clone(), dir.path().to_path_buf());
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..len as u64)
                .map(|i| ((i ^ n).wrapping_mul(2654435761) >> 11) as u8)
                .collect();
            let d = Digest::of(Algorithm::Sha256, &data);
            let id = e.upload_start(&r).await.unwrap();
            // Requests of 3 MiB + a few bytes, in frames of 200,003 bytes.
            let mut sent = 0;
            let session = root.join(format!("uploads/{id}/data"));
            for req in data.chunks(3 * 1024 * 1024 + 13 + n as usize) {
                let frames: Vec<&[u8]> = req.chunks(200_003).collect();
                // Half the uploads declare each request's length, as with Content-Length.
                let length = (n % 2 == 1).then_some(req.len() as u64);
                sent = e.upload_append(&r, id, None, length, body(&frames)).await.unwrap();
                // Space allocated ahead of the writes is gone once the request ends (or was
                // never past its declared end).
                let on_disk = std::fs::metadata(&session).unwrap().len();
                assert_eq!(on_disk, sent, "upload {n}: the session file ends where its data does");
            }
            assert_eq!(sent, len as u64);
            e.upload_finish(&r, id, &d, None, None, body(&[])).await.unwrap();
            assert!(read_all(&e, &d, 0, len as u64).await == data, "upload {n} reads back");
            let blob = root.join(format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex()));
            assert_eq!(
                std::fs::metadata(blob).unwrap().len(),
                len as u64,
                "upload {n}: blob file length"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Many uploads committing at once share metadata transactions (group commit): each still gets
/// its own answer, lands in its own repository, and survives a reopen — including uploads of the
/// same bytes committing together, in one repository or several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_are_each_linked_and_durable() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path()).await.unwrap());
    let tasks: Vec<_> = (0..64u32)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move {
                let r = repo(&format!("group/r{}", i % 4));
                let data = format!("blob {} of the group test", i % 24).repeat(100 + i as usize % 24);
                let d = push(&e, &r, data.as_bytes()).await;
                (r, d, data.len() as u64)
            })
        })
        .collect();
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.unwrap());
    }
    drop(e);
    let e = Engine::open(dir.path()).await.unwrap();
    for (r, d, len) in &pushed {
        assert_eq!(e.blob_size(r, d).await.unwrap(), *len, "{r} {d}");
        let data = read_all(&e, d, 0, *len).await;
        assert_eq!(Digest::of(Algorithm::Sha256, &data), *d);
    }
    // A repository that never pushed a blob does not get it from sharing a transaction.
    let (r0, d0, _) = &pushed[0];
    assert_eq!(r0.to_string(), "group/r0");
    assert!(e.blob_size(&repo("group/none"), d0).await.is_err());
}

/// Small blobs are read in one go and kept in memory: a second read comes from memory (the
/// file is gone and it is still served), ranges of a kept blob are slices of it, a range that
/// does not start at 0 is read but not kept, and blobs above the size limit stream from the file.
#[tokio::test]
async fn small_blobs_are_served_from_memory_after_their_first_read() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).await.unwrap().with_blob_cache(1 << 20, 4096);
    let r = repo("small/blobs");
    let small: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let other: Vec<u8> = (0..2000u32).map(|i| (i % 13) as u8).collect();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
    let (ds, dother, dbig) = (
        push(&e, &r, &small).await,
        push(&e, &r, &other).await,
        push(&e, &r, &big).await,
    );
    assert_eq!(read_all(&e, &ds, 0, 3000).await, small);
    assert_eq!(read_all(&e, &dother, 100, 50).await, &other[100..150]);
    assert_eq!(read_all(&e, &dbig, 0, 10_000).await, big);
    let s = e.blob_cache_stats();
    assert_eq!((s.entries, s.misses, s.hits), (1, 2, 0), "{s:?}");
    // Served from memory even with the file gone (only the cache could answer now).
    let path = |d: &Digest| {
        let hex = d.to_string();
        let hex = hex.trim_start_matches("sha256:");
        dir.path().join("blobs/sha256").join(&hex[..2]).join(hex)
    };
    std::fs::rename(path(&ds), dir.path().join("moved")).unwrap();
    assert_eq!(read_all(&e, &ds, 0, 3000).await, small);
    assert_eq!(read_all(&e, &ds, 2990, 10).await, &small[2990..]);
    assert_eq!(e.blob_cache_stats().hits, 2);
    // The partly read blob was not kept: its file is read again.
    std::fs::remove_file(path(&dother)).unwrap();
    assert!(matches!(
        e.blob_read(&dother, ByteRange { start: 0, len: 2000 }).await,
        Err(Error::BlobUnknown(_))
    ));
    std::fs::rename(dir.path().join("moved"), path(&ds)).unwrap();
    // Off: every read goes to the file.
    let e = e.with_blob_cache(0, 4096);
    assert_eq!(read_all(&e, &ds, 0, 3000).await, small);
    assert_eq!(e.blob_cache_stats().entries, 0);
}

/// A whole small blob of at least 16 KiB is kept as a memory map of its file (sent with
/// sendfile on plaintext sockets): the bytes and any range of them read back exactly.
#[tokio::test]
async fn mapped_small_blobs_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path())
        .await
        .unwrap()
        .with_blob_cache(1 << 20, 64 << 10);
    let r = repo("small/mapped");
    let data: Vec<u8> = (0..40_000u32).map(|i| (i.wrapping_mul(31) % 253) as u8).collect();
    let d = push(&e, &r, &data).await;
    assert_eq!(read_all(&e, &d, 0, 40_000).await, data);
    assert_eq!(read_all(&e, &d, 0, 40_000).await, data);
    assert_eq!(read_all(&e, &d, 12_345, 1000).await, &data[12_345..13_345]);
    let s = e.blob_cache_stats();
    assert_eq!((s.entries, s.hits), (1, 2), "{s:?}");
    // Deleting the blob takes it out of the cache (and so lets its file's space go).
    e.blob_delete(&r, &d).await.unwrap();
    assert_eq!(e.blob_cache_stats().entries, 0);
}
