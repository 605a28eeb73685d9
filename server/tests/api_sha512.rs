//! sha512 content (the conformance suite's "blobs-sha512" and "sha512" data sets): blob uploads
//! of every kind and manifests pushed by a sha512 digest.

mod common;

use common::*;
use reqwest::{Method, Url};
use serde_json::json;
use sha2::{Digest as _, Sha512};

fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

#[tokio::test(flavor = "multi_thread")]
async fn sha512_blob_uploads() {
    let reg = Registry::start().await;
    let repo = unique_repo("sha512/blobs");

    // POST (announcing the algorithm) + chunked PATCH + PUT.
    let data = random_bytes(9000, 61);
    let d = sha512(&data);
    let mut u = Url::parse(&reg.url(&format!("/v2/{repo}/blobs/uploads/"))).unwrap();
    u.query_pairs_mut().append_pair("digest-algorithm", "sha512");
    let r = reg.request(Method::POST, u).await;
    r.expect(202);
    let url = reg.resolve(&r.must_header("location"));
    let r = reg
        .send(
            reg.client
                .patch(url)
                .header("content-type", OCTET)
                .header("content-range", "0-4999")
                .body(data[..5000].to_vec()),
        )
        .await;
    r.expect(202);
    let url = reg.resolve(&r.must_header("location"));
    let r = reg
        .send(
            reg.client
                .put(Registry::with_digest(&url, &d))
                .header("content-type", OCTET)
                .body(data[5000..].to_vec()),
        )
        .await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    let g = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
    g.expect(200);
    assert!(g.body == data);

    // The sha256 name of the same bytes was not created.
    assert_eq!(reg.blob_status(&repo, &sha256(&data)).await, 404);

    // Wrong sha512 digest.
    let url = reg.start_upload(&repo).await;
    let r = reg
        .send(
            reg.client
                .put(Registry::with_digest(&url, &sha512(b"other")))
                .header("content-type", OCTET)
                .body(data.clone()),
        )
        .await;
    r.expect_error(400, &["DIGEST_INVALID"]);
    assert_eq!(reg.blob_status(&repo, &sha512(b"other")).await, 404);

    // Monolithic.
    let data = random_bytes(5000, 60);
    let d = sha512(&data);
    let r = reg.post_blob_monolithic(&repo, &d, data.clone()).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    let h = reg.head(&format!("/v2/{repo}/blobs/{d}")).await;
    h.expect(200);
    h.expect_header("docker-content-digest", &d);
    h.expect_header("content-length", "5000");
    let g = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
    g.expect(200);
    assert!(g.body == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_by_sha512_digest() {
    let reg = Registry::start().await;
    let repo = unique_repo("sha512/manifest");
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = random_bytes(700, 62);
    let cd = sha512(config);
    let ld = sha512(&layer);
    reg.push_blob_as(&repo, config, &cd).await;
    reg.push_blob_as(&repo, &layer, &ld).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": layer.len()}],
    }))
    .unwrap();
    let md = sha512(&m);
    let r = reg.put_manifest(&repo, &md, OCI_MANIFEST, &m).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &md);
    let g = reg.get_manifest(&repo, &md).await;
    g.expect(200);
    assert!(g.body == m);
    g.expect_header("docker-content-digest", &md);
    let h = reg.head_manifest(&repo, &md).await;
    h.expect(200);
    h.expect_header("docker-content-digest", &md);
    h.expect_header("content-length", &m.len().to_string());

    // A sha512 index over it.
    let idx = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": m.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let id = sha512(&idx);
    reg.put_manifest(&repo, &id, OCI_INDEX, &idx).await.expect(201);
    reg.get_manifest(&repo, &id).await.expect(200);

    // A sha512 reference that does not match the body.
    reg.put_manifest(&repo, &sha512(b"nope"), OCI_MANIFEST, &m)
        .await
        .expect_error(400, &["DIGEST_INVALID"]);
}
