//! Two berth processes on one storage directory: an upload session moves between them (and
//! survives one of them being killed in the middle of a chunk), content pushed through one is
//! served by the other, deletes are seen by both, a session one process is writing is busy for
//! the other, and offline GC refuses the storage while either runs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use reqwest::Url;

/// Time for another process's change to arrive: none on SQLite (read before the cache is
/// trusted), the notification's way with PostgreSQL (milliseconds; 100 ms is far above it).
async fn settle() {
    if on_postgres() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn patch(reg: &Registry, url: Url, range: Option<(usize, usize)>, body: Vec<u8>) -> reqwest::RequestBuilder {
    let mut rb = reg.client.patch(url).header("content-type", OCTET);
    if let Some((start, end)) = range {
        rb = rb.header("content-range", format!("{start}-{end}"));
    }
    rb.body(body)
}

async fn upload_range(reg: &Registry, location: &str) -> String {
    let r = reg.send(reg.client.get(reg.rebase(location))).await;
    r.expect(204);
    r.must_header("range")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_continues_on_a_second_process_sharing_the_storage() {
    let Some(mut a) = Registry::start_local(&[]).await else {
        return;
    };
    let b = a.share().await;
    let repo = "shared/app";
    let data = random_bytes(3 << 20, 90);
    let digest = sha256(&data);
    let mib = 1 << 20;

    // First chunk on A, second on B, third on A again: each process takes the session from the
    // checkpoint the other left.
    let url = a.start_upload(repo).await;
    let r = a.send(patch(&a, url, Some((0, mib - 1)), data[..mib].to_vec())).await;
    r.expect(202).expect_header("range", &format!("0-{}", mib - 1));
    let loc = r.must_header("location");
    assert_eq!(upload_range(&b, &loc).await, format!("0-{}", mib - 1));
    let r = b
        .send(patch(
            &b,
            b.rebase(&loc),
            Some((mib, 2 * mib - 1)),
            data[mib..2 * mib].to_vec(),
        ))
        .await;
    r.expect(202).expect_header("range", &format!("0-{}", 2 * mib - 1));
    let loc = r.must_header("location");
    assert_eq!(upload_range(&a, &loc).await, format!("0-{}", 2 * mib - 1));
    let half = 2 * mib + mib / 2;
    let r = a
        .send(patch(
            &a,
            a.rebase(&loc),
            Some((2 * mib, half - 1)),
            data[2 * mib..half].to_vec(),
        ))
        .await;
    r.expect(202).expect_header("range", &format!("0-{}", half - 1));
    let loc = r.must_header("location");

    // A is killed while a chunk streams in: part of it reaches the data file, none of it counts.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let streaming = a
        .client
        .patch(a.rebase(&loc))
        .header("content-type", OCTET)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let pending = tokio::spawn(streaming);
    // Enough to fill a whole direct-write buffer (1 MiB), which then reaches the file.
    for _ in 0..5 {
        tx.send(Ok(Bytes::from(vec![0xAB; 300_000]))).await.unwrap();
    }
    let data_file = a.storage().join("uploads");
    // Wait until those bytes are in the session's data file, so the kill leaves a tail.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let longest = std::fs::read_dir(&data_file)
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path().join("data")).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        if longest > half as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "streamed bytes never reached the data file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop();
    // The client sees its connection die (an error or a reset reply; nothing to check).
    let _ = pending.await;
    drop(tx);

    // B answers with the last acknowledged offset, takes the rest, and the digest is right.
    assert_eq!(upload_range(&b, &loc).await, format!("0-{}", half - 1));
    let put = Registry::with_digest(&b.rebase(&loc), &digest);
    let r = b
        .send(
            b.client
                .put(put)
                .header("content-type", OCTET)
                .header("content-range", format!("{half}-{}", data.len() - 1))
                .body(data[half..].to_vec()),
        )
        .await;
    r.expect(201).expect_header("docker-content-digest", &digest);
    b.assert_blob(repo, &data).await;
    // The session is gone for both processes.
    b.send(b.client.get(b.rebase(&loc)))
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    a.restart().await;
    a.assert_blob(repo, &data).await;
    a.send(a.client.get(a.rebase(&loc)))
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_serve_one_registry() {
    let Some(a) = Registry::start_local(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]).await else {
        return;
    };
    let b = a.share().await;

    // Pushes through both at once: blobs through one process, the manifest through the other.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (a2, b2) = (a.url(""), b.url(""));
        tasks.push(tokio::spawn(async move {
            let (blobs_via, manifest_via) = if i % 2 == 0 { (a2, b2) } else { (b2, a2) };
            let up = Registry::attach(&blobs_via);
            let down = Registry::attach(&manifest_via);
            let repo = format!("shared/multi{}", i % 3);
            let parts = up.push_image_parts(&repo, 3, false).await;
            let m = parts.oci_manifest(serde_json::json!({}));
            let d = down.push_manifest(&repo, &format!("t{i}"), OCI_MANIFEST, &m).await;
            (repo, format!("t{i}"), m, d)
        }));
    }
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.unwrap());
    }
    for (repo, tag, m, d) in &pushed {
        for reg in [&a, &b] {
            reg.assert_manifest(repo, tag, OCI_MANIFEST, m).await;
            reg.assert_manifest(repo, d, OCI_MANIFEST, m).await;
        }
    }
    for repo in ["shared/multi0", "shared/multi1", "shared/multi2"] {
        assert_eq!(a.tags(repo).await, b.tags(repo).await);
    }
    assert_eq!(
        a.get("/v2/_catalog").await.expect(200).json(),
        b.get("/v2/_catalog").await.expect(200).json()
    );

    // Both processes answer from memory now; a tag moved through one is seen by the other
    // (images 1 and 4 are both in shared/multi1). On SQLite at once (the other process checks
    // the database's change log before it trusts its cache); with PostgreSQL the change comes
    // by notification, within milliseconds (docs/scale-out.md).
    let (repo, tag, m1, _) = &pushed[1];
    let (repo4, _, m4, _) = &pushed[4];
    assert_eq!(repo, repo4);
    b.assert_manifest(repo, tag, OCI_MANIFEST, m1).await;
    a.push_manifest(repo, tag, OCI_MANIFEST, m4).await;
    settle().await;
    b.assert_manifest(repo, tag, OCI_MANIFEST, m4).await;

    // A blob delete through one is seen by the other, which had the blob's size in memory.
    let layer = random_bytes(5000, 91);
    let ld = a.push_blob("shared/blobdel", &layer).await;
    assert_eq!(b.blob_status("shared/blobdel", &ld).await, 200);
    a.delete(&format!("/v2/shared/blobdel/blobs/{ld}")).await.expect(202);
    settle().await;
    assert_eq!(b.blob_status("shared/blobdel", &ld).await, 404);

    // A delete through one is seen by the other.
    let (repo, tag, _, d) = &pushed[0];
    a.delete(&format!("/v2/{repo}/manifests/{d}")).await.expect(202);
    settle().await;
    b.get_manifest(repo, tag).await.expect_error(404, &["MANIFEST_UNKNOWN"]);
    b.get_manifest(repo, d).await.expect_error(404, &["MANIFEST_UNKNOWN"]);

    // A session one process is writing is busy for the other; it is free again afterwards.
    let url = a.start_upload("shared/busy").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let slow = tokio::spawn(
        a.client
            .patch(url.clone())
            .header("content-type", OCTET)
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    tx.send(Ok(Bytes::from(vec![1u8; 1000]))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = url.path().to_owned() + "?" + url.query().unwrap_or("");
    let r = b.send(patch(&b, b.rebase(&path), None, vec![2u8; 10])).await;
    r.expect_error(409, &["BLOB_UPLOAD_INVALID"]);
    drop(tx);
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(upload_range(&b, &path).await, "0-999");
    let r = b
        .send(patch(&b, b.rebase(&path), Some((1000, 1009)), vec![2u8; 10]))
        .await;
    r.expect(202).expect_header("range", "0-1009");

    // Offline garbage collection refuses the storage while either process runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--no-config-file", "--dry-run"])
        .env("REGISTRY_STORAGE_PATH", a.storage())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by a running berth process"),
        "{out:?}"
    );
    drop(b);
}
