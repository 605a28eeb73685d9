//! The engine on an S3 bucket (SeaweedFS, SigV4 enforced) with its metadata in PostgreSQL: what
//! only this pair does — the blob's record names its object, reads and presigned URLs reach it,
//! a duplicate upload's object is deleted, garbage collection deletes unreferenced blobs' objects
//! and objects no record names, expired sessions abort their multipart uploads, and a wrong
//! setting stops start-up naming it.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;

use berth_engine::s3::settings::Encryption;
use berth_engine::s3::{S3Client, S3Settings};
use berth_engine::{Algorithm, ByteRange, Digest, Engine, Error, GcOptions, RepoName};

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn body(data: &[u8]) -> futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, Infallible>>> {
    let frames: Vec<_> = data.chunks(65_536).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures_util::stream::iter(frames)
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

/// An engine on its own root directory in the shared bucket and its own database.
async fn engine(part_size: u64) -> (Engine, S3Settings, S3Client) {
    let db = support::postgres::shared().database().await;
    let root = format!("engine-{}", berth_engine::UploadId::random());
    let s3 = S3Settings {
        part_size,
        ..support::seaweedfs::shared().settings(&root)
    };
    let e = Engine::open_s3(&db, &s3).await.unwrap();
    (e, s3.clone(), S3Client::new(&s3).unwrap())
}

async fn push(e: &Engine, r: &RepoName, data: &[u8]) -> Digest {
    let id = e.upload_start(r).await.unwrap();
    let d = Digest::of(Algorithm::Sha256, data);
    e.upload_finish(r, id, &d, None, Some(data.len() as u64), body(data))
        .await
        .unwrap();
    d
}

async fn read(e: &Engine, d: &Digest, start: u64, len: u64) -> Vec<u8> {
    let mut s = e.blob_read(d, ByteRange { start, len }).await.unwrap();
    let mut out = Vec::new();
    while let Some(b) = futures_util::StreamExt::next(&mut s).await {
        out.extend_from_slice(&b.unwrap());
    }
    out
}

async fn objects(c: &S3Client) -> usize {
    c.list("blobs/").await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_objects_read_by_range_and_by_presigned_url() {
    let (e, _, c) = engine(5 << 20).await;
    assert_eq!((e.blob_store_kind(), e.metadata_kind()), ("s3", "postgresql"));
    assert!(e.root().is_none(), "no local directory is used");
    e.ready().await.unwrap();
    let r = repo("s3/app");
    let data = bytes((11 << 20) + 3, 1);
    let d = push(&e, &r, &data).await;
    assert_eq!(e.blob_size(&r, &d).await.unwrap(), data.len() as u64);
    assert_eq!(read(&e, &d, 0, data.len() as u64).await, data);
    assert_eq!(
        read(&e, &d, (5 << 20) - 2, 10).await,
        &data[(5 << 20) - 2..(5 << 20) + 8]
    );
    let url = e.blob_url(&d).await.unwrap().expect("redirects are on by default");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert_eq!(objects(&c).await, 1);
    // The same bytes pushed again (another repository): linked, and the second object deleted.
    let other = repo("s3/other");
    push(&e, &other, &data).await;
    let mut left = 0;
    for _ in 0..50 {
        left = objects(&c).await;
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 1, "the duplicate upload's object was deleted");
    assert_eq!(e.blob_size(&other, &d).await.unwrap(), data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_deletes_unreferenced_objects() {
    let (e, _, c) = engine(5 << 20).await;
    let r = repo("s3/gc");
    let first = push(&e, &r, b"no manifest needs this blob, so it goes").await;
    let d = push(&e, &r, &bytes(100_000, 2)).await;
    // An object no record names (as a crash between completing an upload and recording it
    // leaves), and an object of an open session, which stays.
    let stray = berth_engine::UploadId::random();
    c.put(&format!("blobs/{stray}"), Bytes::from_static(b"stray"))
        .await
        .unwrap();
    let open = e.upload_start(&r).await.unwrap();
    c.put(&format!("blobs/{open}"), Bytes::from_static(b"in progress"))
        .await
        .unwrap();
    assert_eq!(objects(&c).await, 4);
    let report = e
        .gc(GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!((report.blobs, report.stray_files), (2, 1), "{report:?}");
    assert!(matches!(e.blob_size(&r, &d).await, Err(Error::BlobUnknown(_))));
    assert!(matches!(e.blob_size(&r, &first).await, Err(Error::BlobUnknown(_))));
    let left: Vec<String> = c.list("blobs/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(
        left,
        [format!("blobs/{open}")],
        "only the open session's object is left"
    );
    // A multipart upload no session names (its row gone without it), and one of an open
    // session: the first is aborted, the second stays.
    let lost = berth_engine::UploadId::random();
    let lost_upload = c.create_multipart(&format!("blobs/{lost}")).await.unwrap();
    let kept_upload = c.create_multipart(&format!("blobs/{open}")).await.unwrap();
    // SeaweedFS's gateway lists new multipart uploads after a moment when busy; the collector
    // acts on what the listing shows (a later run takes what this one did not see).
    for _ in 0..50 {
        if c.pending_uploads("blobs/").await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = e
        .gc(GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(report.stray_uploads, 1, "{report:?}");
    let pending: Vec<String> = c
        .pending_uploads("blobs/")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.upload_id)
        .collect();
    assert_eq!(
        pending,
        [kept_upload],
        "the upload no session names ({lost_upload}) was aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_blob_takes_its_object_and_expired_sessions_abort_their_parts() {
    let (e, _, c) = engine(5 << 20).await;
    let r = repo("s3/delete");
    let d = push(&e, &r, &bytes(3000, 3)).await;
    e.blob_delete(&r, &d).await.unwrap();
    assert_eq!(objects(&c).await, 0);
    // A session with one stored part (and a tail), then left idle.
    let id = e.upload_start(&r).await.unwrap();
    let data = bytes((6 << 20) + 5, 4);
    e.upload_append(&r, id, None, Some(data.len() as u64), body(&data))
        .await
        .unwrap();
    assert_eq!(c.pending_uploads("").await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(e.reap_uploads(Duration::from_secs(1)).await.unwrap(), 1);
    assert!(
        c.pending_uploads("").await.unwrap().is_empty(),
        "the multipart upload was aborted"
    );
    assert!(matches!(e.upload_offset(&r, id).await, Err(Error::UploadUnknown)));
}

/// Pseudo-random bytes (incompressible, so the store keeps them as they are) with `marker`
/// written at each of `at`.
fn marked(n: usize, seed: u64, marker: &[u8], at: &[usize]) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for &i in at {
        v[i..i + marker.len()].copy_from_slice(marker);
    }
    v
}

/// Whether any file under `dir` holds `marker`.
fn at_rest(dir: &std::path::Path, marker: &str) -> bool {
    let out = std::process::Command::new("grep")
        .args(["-rlaF", marker])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "grep failed: {out:?}");
    out.status.success()
}

/// `storage.s3.encrypt`: objects written in one PUT and in a multipart upload are stored
/// encrypted (SSE-S3; SeaweedFS runs with a key-encryption key), and read back as written. The
/// same uploads without it leave the bytes readable in SeaweedFS's files: the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_objects_hold_no_plaintext_at_rest() {
    let weed = support::seaweedfs::shared();
    for encryption in [None, Some(Encryption::Aes256)] {
        let db = support::postgres::shared().database().await;
        let id = berth_engine::UploadId::random();
        let s3 = S3Settings {
            part_size: 5 << 20,
            encryption: encryption.clone(),
            ..weed.settings(&format!("sse-{id}"))
        };
        let e = Engine::open_s3(&db, &s3).await.unwrap();
        let r = repo("s3/sse");
        let marker = format!("berth-at-rest-marker-{id}");
        let small = marked(4000, 7, marker.as_bytes(), &[100]);
        // In the first part, and in the tail that becomes the last part.
        let large = marked((6 << 20) + 5, 9, marker.as_bytes(), &[1000, (6 << 20) - 100]);
        let (ds, dl) = (push(&e, &r, &small).await, push(&e, &r, &large).await);
        assert_eq!(read(&e, &ds, 0, small.len() as u64).await, small);
        assert_eq!(read(&e, &dl, 0, large.len() as u64).await, large);
        assert_eq!(
            read(&e, &dl, (6 << 20) - 110, 40).await,
            &large[(6 << 20) - 110..(6 << 20) - 70]
        );
        let plain = at_rest(&weed.data_dir(), &marker);
        match encryption {
            None => assert!(plain, "without encryption the marker is in SeaweedFS's files"),
            Some(_) => assert!(!plain, "with storage.s3.encrypt the marker is stored in plain"),
        }
    }
}

/// `storage.s3.encrypt` on a store that cannot encrypt (SeaweedFS without a key-encryption key)
/// stops start-up naming the setting, instead of failing every push later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_the_store_cannot_do_stops_start_up() {
    let weed = support::seaweedfs::Server::start_with(false);
    let db = support::postgres::shared().database().await;
    let plain = weed.settings("no-sse");
    Engine::open_s3(&db, &plain).await.expect("without encryption it opens");
    let s3 = S3Settings {
        encryption: Some(Encryption::Aes256),
        ..plain
    };
    let err = match Engine::open_s3(&db, &s3).await {
        Ok(_) => panic!("an encrypted write was taken by a store without a key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("storage.s3.encrypt: the store refused"), "{err}");
}

/// A bucket's root directory belongs to the database that first used it: another registry's
/// database is refused (its garbage collection would take this one's objects for strays), while
/// every replica of the same registry opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_root_belongs_to_one_registry() {
    let (first, root) = (
        support::postgres::shared().database().await,
        format!("bound-{}", berth_engine::UploadId::random()),
    );
    let s3 = support::seaweedfs::shared().settings(&root);
    let a = Engine::open_s3(&first, &s3).await.unwrap();
    let b = Engine::open_s3(&first, &s3).await.unwrap();
    drop((a, b));
    let other = support::postgres::shared().database().await;
    let err = match Engine::open_s3(&other, &s3).await {
        Ok(_) => panic!("another registry's database opened the bucket root"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("storage.s3.rootdirectory") && err.contains("another registry"),
        "{err}"
    );
    let elsewhere = support::seaweedfs::shared().settings(&format!("{root}-2"));
    Engine::open_s3(&other, &elsewhere).await.unwrap();
}

/// `berth migrate` into S3: a filesystem registry's blobs are copied into the bucket (a big one
/// in parts), its records into PostgreSQL; the S3 engine then serves the same tags, manifests
/// and bytes. Copying again (what the rerun of an interrupted migration does) copies no blob
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_registry_migrates_into_s3() {
    let db = support::postgres::shared().database().await;
    let s3 = S3Settings {
        part_size: 5 << 20,
        ..support::seaweedfs::shared().settings(&format!("migrate-{}", berth_engine::UploadId::random()))
    };
    let dir = tempfile::tempdir().unwrap();
    let fs = Engine::open(dir.path()).await.unwrap();
    let (app, other) = (repo("mig/app"), repo("mig/other"));
    let big = bytes((11 << 20) + 9, 5);
    let layer = push(&fs, &app, &big).await;
    let config = push(&fs, &app, br#"{"architecture":"amd64","os":"linux"}"#).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{}}}]}}"#,
        big.len()
    );
    let tag: berth_engine::Reference = "v1".parse().unwrap();
    fs.manifest_put(
        &app,
        &tag,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Bytes::from(manifest.clone()),
    )
    .await
    .unwrap();
    assert!(fs.blob_mount(&other, &layer, Some(&app)).await.unwrap());
    drop(fs);

    let fs = Engine::open_exclusive(dir.path()).await.unwrap();
    let report = fs.migrate_metadata(&db, Some(&s3), |_| {}).await.unwrap();
    assert_eq!(
        (report.links, report.manifests, report.tags, report.blobs),
        (3, 1, 1, 2),
        "{report:?}"
    );
    assert_eq!(report.bytes, big.len() as u64 + 37);
    drop(fs);

    let e = Engine::open_s3(&db, &s3).await.unwrap();
    assert_eq!(e.manifest_get(&app, &tag).await.unwrap().bytes, manifest.as_bytes());
    assert_eq!(read(&e, &layer, 0, big.len() as u64).await, big);
    assert_eq!(e.blob_size(&other, &layer).await.unwrap(), big.len() as u64);
    let c = S3Client::new(&s3).unwrap();
    assert_eq!(objects(&c).await, 2, "one object per blob, not per link");
    drop(e);

    // The rerun of an interrupted migration: the storage is bound once the copy is complete,
    // so unbind it to run the copy again; nothing is copied twice.
    std::fs::remove_file(dir.path().join("metadata-database")).unwrap();
    let fs = Engine::open_exclusive(dir.path()).await.unwrap();
    let again = fs.migrate_metadata(&db, Some(&s3), |_| {}).await.unwrap();
    assert_eq!((again.links, again.blobs), (3, 0), "{again:?}");
    assert_eq!(objects(&c).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_settings_stop_start_up_naming_the_setting() {
    let db = support::postgres::shared().database().await;
    let good = support::seaweedfs::shared().settings("settings");
    let cases: [(S3Settings, &str); 3] = [
        (
            S3Settings {
                secret_key: "not-the-secret".into(),
                ..good.clone()
            },
            "storage.s3.secretkey",
        ),
        (
            S3Settings {
                bucket: "no-such-bucket".into(),
                ..good.clone()
            },
            "storage.s3.bucket",
        ),
        (
            S3Settings {
                endpoint: "http://127.0.0.1:9".into(),
                ..good.clone()
            },
            "unavailable",
        ),
    ];
    for (s, named) in cases {
        let err = match Engine::open_s3(&db, &s).await {
            Ok(_) => panic!("opened with {s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(named), "{named}: {err}");
        assert!(
            !err.contains(&good.secret_key) && !err.contains("not-the-secret"),
            "{err}"
        );
    }
}
