//! Durability across a restart of the process on the same storage: blobs, manifests, tags,
//! referrers and an upload session in progress.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn content_and_sessions_survive_a_restart() {
    let Some(mut reg) = Registry::start_local(&[]).await else {
        return;
    };
    let repo = "restart/app";
    let other = "restart/other";

    // Content.
    let blob = random_bytes(70_000, 50);
    let bd = reg.push_blob(repo, &blob).await;
    let (m, md) = reg.push_image(repo, "v1").await;
    reg.push_manifest(repo, "latest", OCI_MANIFEST, &m).await;
    let (m2, _) = reg.push_image(other, "x").await;
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": md, "size": m.len()},
    }))
    .unwrap();
    reg.push_blob(repo, b"{}").await;
    let rd = reg
        .push_manifest(repo, &sha256(&referrer), OCI_MANIFEST, &referrer)
        .await;

    // An upload session with two chunks in it.
    let up = random_bytes(50_000, 51);
    let ud = sha256(&up);
    let url = reg.start_upload(repo).await;
    let r = reg
        .send(
            reg.client
                .patch(url)
                .header("content-type", OCTET)
                .header("content-range", "0-19999")
                .body(up[..20_000].to_vec()),
        )
        .await;
    r.expect(202);
    let url = reg.resolve(&r.must_header("location"));
    let r = reg
        .send(
            reg.client
                .patch(url)
                .header("content-type", OCTET)
                .body(up[20_000..30_000].to_vec()),
        )
        .await;
    r.expect(202);
    r.expect_header("range", "0-29999");
    let session = r.must_header("location");
    let uuid = r.must_header("docker-upload-uuid");

    reg.restart().await;

    // Everything is still there.
    reg.assert_blob(repo, &blob).await;
    assert_eq!(reg.blob_status(repo, &bd).await, 200);
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &m).await;
    reg.assert_manifest(repo, "latest", OCI_MANIFEST, &m).await;
    reg.assert_manifest(repo, &md, OCI_MANIFEST, &m).await;
    reg.assert_manifest(other, "x", OCI_MANIFEST, &m2).await;
    assert_eq!(reg.tags(repo).await, ["latest", "v1"]);
    let r = reg.get("/v2/_catalog").await;
    r.expect(200);
    assert_eq!(
        r.json()["repositories"],
        json!([other, repo].iter().copied().collect::<std::collections::BTreeSet<_>>())
    );
    let r = reg.get(&format!("/v2/{repo}/referrers/{md}")).await;
    r.expect(200);
    let list = r.json()["manifests"].clone();
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    assert_eq!(list[0]["digest"], json!(rd));
    // Repository isolation still holds.
    assert_eq!(reg.blob_status(other, &bd).await, 404);

    // The session continues where it was.
    let url = reg.rebase(&session);
    let s = reg.request(Method::GET, url.clone()).await;
    s.expect(204);
    s.expect_header("range", "0-29999");
    s.expect_header("docker-upload-uuid", &uuid);
    let url = reg.rebase(&s.must_header("location"));
    // Out of order is still refused with the persisted offset.
    let r = reg
        .send(
            reg.client
                .patch(url.clone())
                .header("content-type", OCTET)
                .header("content-range", "0-9")
                .body(up[..10].to_vec()),
        )
        .await;
    r.expect(416);
    r.expect_header("range", "0-29999");
    let r = reg
        .send(
            reg.client
                .patch(url)
                .header("content-type", OCTET)
                .header("content-range", "30000-39999")
                .body(up[30_000..40_000].to_vec()),
        )
        .await;
    r.expect(202);
    r.expect_header("range", "0-39999");
    let url = reg.rebase(&r.must_header("location"));
    let r = reg
        .send(
            reg.client
                .put(Registry::with_digest(&url, &ud))
                .header("content-type", OCTET)
                .body(up[40_000..].to_vec()),
        )
        .await;
    r.expect(201);
    r.expect_header("docker-content-digest", &ud);
    reg.assert_blob(repo, &up).await;

    // And a second restart keeps the completed upload.
    reg.restart().await;
    reg.assert_blob(repo, &up).await;
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &m).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_survive_a_restart() {
    let Some(mut reg) = Registry::start_local(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]).await else {
        return;
    };
    let repo = "restart/del";
    let (m, md) = reg.push_image(repo, "a").await;
    reg.push_manifest(repo, "b", OCI_MANIFEST, &m).await;
    let (m2, _) = reg.push_image(repo, "c").await;
    let blob = reg.push_blob(repo, b"to delete").await;
    reg.delete(&format!("/v2/{repo}/manifests/b")).await.expect(202);
    reg.delete(&format!("/v2/{repo}/blobs/{blob}")).await.expect(202);
    let cancelled = reg.start_upload(repo).await;
    reg.request(Method::DELETE, cancelled.clone()).await.expect(204);

    reg.restart().await;

    reg.get_manifest(repo, "b").await.expect(404);
    reg.assert_manifest(repo, "a", OCI_MANIFEST, &m).await;
    reg.assert_manifest(repo, &md, OCI_MANIFEST, &m).await;
    reg.assert_manifest(repo, "c", OCI_MANIFEST, &m2).await;
    assert_eq!(reg.blob_status(repo, &blob).await, 404);
    assert_eq!(reg.tags(repo).await, ["a", "c"]);
    reg.request(Method::GET, reg.rebase(cancelled.as_str()))
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
}
