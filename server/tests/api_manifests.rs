//! Manifests: pushing every supported type by tag and by digest, exact-byte storage, reference
//! checks, validation errors, size limit, lookups and deletion.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

/// HEAD by reference: 200 with the digest, type and length of `body`, and no body.
async fn assert_head(reg: &Registry, repo: &str, reference: &str, content_type: &str, body: &[u8]) {
    let h = reg.head_manifest(repo, reference).await;
    h.expect(200);
    h.expect_header("docker-content-digest", &sha256(body));
    h.expect_header("content-length", &body.len().to_string());
    assert_eq!(
        media_type(&h.headers).as_deref(),
        Some(content_type),
        "{}: Content-Type",
        h.what
    );
    assert!(h.body.is_empty(), "HEAD returned a body");
}

/// Full check of a pushed manifest: GET and HEAD by `tag` (if any) and by digest.
async fn assert_pulls(reg: &Registry, repo: &str, tag: Option<&str>, content_type: &str, body: &[u8]) {
    let d = sha256(body);
    if let Some(t) = tag {
        reg.assert_manifest(repo, t, content_type, body).await;
        assert_head(reg, repo, t, content_type, body).await;
    }
    reg.assert_manifest(repo, &d, content_type, body).await;
    assert_head(reg, repo, &d, content_type, body).await;
}

/// PUT and check the 201 reply: digest header, and a Location that pulls the same bytes.
async fn put_and_check(reg: &Registry, repo: &str, reference: &str, content_type: &str, body: &[u8]) -> String {
    let r = reg.put_manifest(repo, reference, content_type, body).await;
    r.expect(201);
    let d = sha256(body);
    r.expect_header("docker-content-digest", &d);
    let loc = reg.resolve(&r.must_header("location"));
    let g = reg.send(reg.client.get(loc).header("accept", ACCEPT_MANIFESTS)).await;
    g.expect(200);
    assert!(g.body == body, "{}: Location does not pull the pushed bytes", g.what);
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_image_manifest_by_tag() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/oci");
    let parts = reg.push_image_parts(&repo, 2, false).await;
    let m = parts.oci_manifest(json!({"annotations": {"org.example.k": "v"}}));
    put_and_check(&reg, &repo, "v1", OCI_MANIFEST, &m).await;
    assert_pulls(&reg, &repo, Some("v1"), OCI_MANIFEST, &m).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_index_and_nested_index() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/index");
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let parts = reg.push_image_parts(&repo, 1, false).await;
        let m = parts.oci_manifest(json!({}));
        let d = put_and_check(&reg, &repo, &sha256(&m), OCI_MANIFEST, &m).await;
        children.push((
            Desc {
                media_type: OCI_MANIFEST.into(),
                digest: d,
                size: m.len(),
            },
            arch,
        ));
    }
    let idx = oci_index(&children, json!({}));
    put_and_check(&reg, &repo, "multi", OCI_INDEX, &idx).await;
    assert_pulls(&reg, &repo, Some("multi"), OCI_INDEX, &idx).await;

    // An index of indexes.
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": sha256(&idx), "size": idx.len()}],
    }))
    .unwrap();
    put_and_check(&reg, &repo, "nested", OCI_INDEX, &nested).await;
    assert_pulls(&reg, &repo, Some("nested"), OCI_INDEX, &nested).await;

    // An empty index.
    let empty = oci_index(&[], json!({}));
    put_and_check(&reg, &repo, "empty-index", OCI_INDEX, &empty).await;
    assert_pulls(&reg, &repo, Some("empty-index"), OCI_INDEX, &empty).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_manifest_and_list() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/docker");
    let mut children = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let parts = reg.push_image_parts(&repo, 2, true).await;
        let m = parts.docker_manifest();
        let tag = format!("d{i}");
        put_and_check(&reg, &repo, &tag, DOCKER_MANIFEST, &m).await;
        assert_pulls(&reg, &repo, Some(&tag), DOCKER_MANIFEST, &m).await;
        children.push(json!({
            "mediaType": DOCKER_MANIFEST,
            "digest": sha256(&m),
            "size": m.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let list = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": children,
    }))
    .unwrap();
    put_and_check(&reg, &repo, "list", DOCKER_LIST, &list).await;
    assert_pulls(&reg, &repo, Some("list"), DOCKER_LIST, &list).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_manifests_with_empty_config() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/artifact");
    let cfg = reg.push_blob(&repo, b"{}").await;
    assert_eq!(cfg, EMPTY_JSON_DIGEST);
    let payload = random_bytes(1000, 30);
    let pd = reg.push_blob(&repo, &payload).await;
    let empty = json!({"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2});

    let art = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": empty,
        "layers": [{"mediaType": "application/vnd.example.sbom.v1+json", "digest": pd, "size": payload.len()}],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }))
    .unwrap();
    put_and_check(&reg, &repo, "artifact", OCI_MANIFEST, &art).await;
    assert_pulls(&reg, &repo, Some("artifact"), OCI_MANIFEST, &art).await;

    // The empty descriptor as the only layer.
    let no_payload = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": empty,
        "layers": [empty],
    }))
    .unwrap();
    put_and_check(&reg, &repo, "artifact-without-layers", OCI_MANIFEST, &no_payload).await;
    assert_pulls(&reg, &repo, Some("artifact-without-layers"), OCI_MANIFEST, &no_payload).await;

    // No layers at all.
    let none = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing.v1",
        "config": empty,
        "layers": [],
    }))
    .unwrap();
    put_and_check(&reg, &repo, "no-layers", OCI_MANIFEST, &none).await;
    assert_pulls(&reg, &repo, Some("no-layers"), OCI_MANIFEST, &none).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unusual_fields_are_accepted_and_kept() {
    // Conformance data sets "custom-fields", "data-field" and "non-distributable-layers".
    let reg = Registry::start().await;
    let repo = unique_repo("man/fields");
    let parts = reg.push_image_parts(&repo, 1, false).await;

    let custom = parts.oci_manifest(json!({"x-custom-field": {"nested": [1, 2, 3]}, "annotations": {"a": "b"}}));
    put_and_check(&reg, &repo, "custom-fields", OCI_MANIFEST, &custom).await;
    assert_pulls(&reg, &repo, Some("custom-fields"), OCI_MANIFEST, &custom).await;

    let mut layer = parts.layers[0].json();
    layer["data"] = json!("AAAA");
    let mut config = parts.config.json();
    config["data"] = json!("e30=");
    let data = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer],
    }))
    .unwrap();
    put_and_check(&reg, &repo, "data-field", OCI_MANIFEST, &data).await;

    // Non-distributable layers carry URLs and are not pushed to the registry.
    let nd = sha256(&random_bytes(256, 31));
    let nd2 = sha256(&random_bytes(256, 32));
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": parts.config.json(),
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": nd, "size": 123456,
             "urls": [format!("https://store.example.com/blobs/sha256/{}", &nd[7..])]},
            {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar", "digest": nd2, "size": 12345,
             "urls": [format!("https://store.example.com/blobs/sha256/{}", &nd2[7..])]},
            parts.layers[0].json(),
        ],
    }))
    .unwrap();
    put_and_check(&reg, &repo, "non-distributable-image", OCI_MANIFEST, &m).await;
    assert_pulls(&reg, &repo, Some("non-distributable-image"), OCI_MANIFEST, &m).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_are_stored_exactly_as_sent() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/exact");
    let parts = reg.push_image_parts(&repo, 1, false).await;
    let l = &parts.layers[0];
    let c = &parts.config;
    // Odd whitespace, reversed key order, an escaped character, CRLF and a trailing newline.
    let text = format!(
        "{{\r\n\t\"layers\" :[ {{ \"size\":{} , \"digest\" : \"{}\",\"mediaType\":\"{}\" }} ] ,\n   \"config\":{{\"size\": {},\"digest\":\"{}\", \"mediaType\":\"{}\"}},\n \"mediaType\":\"{}\",\"annotations\":{{\"note\":\"caf\\u00e9 \\\"quoted\\\"\"}},\"schemaVersion\" : 2   }}\n\n",
        l.size, l.digest, l.media_type, c.size, c.digest, c.media_type, OCI_MANIFEST
    );
    let body = text.as_bytes();
    serde_json::from_slice::<serde_json::Value>(body).expect("test manifest is valid JSON");
    let d = put_and_check(&reg, &repo, "odd", OCI_MANIFEST, body).await;
    assert_eq!(d, sha256(body));
    assert_pulls(&reg, &repo, Some("odd"), OCI_MANIFEST, body).await;

    // The same document compacted is a different manifest with its own digest.
    let compact = serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(body).unwrap()).unwrap();
    let d2 = put_and_check(&reg, &repo, "compact", OCI_MANIFEST, &compact).await;
    assert_ne!(d, d2);
    assert_pulls(&reg, &repo, Some("odd"), OCI_MANIFEST, body).await;
    assert_pulls(&reg, &repo, Some("compact"), OCI_MANIFEST, &compact).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_type_parameters_are_ignored() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/ctparams");
    let parts = reg.push_image_parts(&repo, 1, false).await;
    let m = parts.oci_manifest(json!({}));
    let r = reg
        .put_manifest(&repo, "p", &format!("{OCI_MANIFEST}; charset=utf-8"), &m)
        .await;
    r.expect(201);
    let g = reg.get_manifest(&repo, "p").await;
    g.expect(200);
    g.expect_header("content-type", OCI_MANIFEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_by_digest() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/bydigest");
    let parts = reg.push_image_parts(&repo, 1, false).await;
    let m = parts.oci_manifest(json!({}));
    let d = sha256(&m);
    put_and_check(&reg, &repo, &d, OCI_MANIFEST, &m).await;
    assert_pulls(&reg, &repo, None, OCI_MANIFEST, &m).await;
    // Pushing the same bytes again is fine.
    reg.push_manifest(&repo, &d, OCI_MANIFEST, &m).await;
    // No tag was created.
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    if r.status.as_u16() == 200 {
        let tags = r.json()["tags"].clone();
        assert!(
            tags.is_null() || tags.as_array().unwrap().is_empty(),
            "tags after a digest push: {tags}"
        );
    } else {
        r.expect_error(404, &["NAME_UNKNOWN"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_by_wrong_digest_is_digest_invalid() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/wrongdigest");
    let parts = reg.push_image_parts(&repo, 1, false).await;
    let m = parts.oci_manifest(json!({}));
    let wrong = random_digest();
    reg.put_manifest(&repo, &wrong, OCI_MANIFEST, &m)
        .await
        .expect_error(400, &["DIGEST_INVALID"]);
    reg.get_manifest(&repo, &wrong).await.expect(404);
    reg.get_manifest(&repo, &sha256(&m)).await.expect(404);
    // Malformed digest as the reference.
    reg.put_manifest(&repo, "sha256:baddigeststring", OCI_MANIFEST, &m)
        .await
        .expect_error(400, &["DIGEST_INVALID"]);
    reg.get_manifest(&repo, &sha256(&m)).await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_blobs_are_manifest_blob_unknown() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/missing");
    let other = unique_repo("man/missing-other");
    let parts = reg.push_image_parts(&repo, 1, false).await;

    // Missing layer.
    let mut p = parts.clone();
    p.layers.push(Desc {
        media_type: OCI_LAYER.into(),
        digest: random_digest(),
        size: 10,
    });
    reg.put_manifest(&repo, "missing-layer", OCI_MANIFEST, &p.oci_manifest(json!({})))
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);
    reg.get_manifest(&repo, "missing-layer").await.expect(404);

    // Missing config.
    let mut p = parts.clone();
    p.config.digest = random_digest();
    reg.put_manifest(&repo, "missing-config", OCI_MANIFEST, &p.oci_manifest(json!({})))
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);
    reg.get_manifest(&repo, "missing-config").await.expect(404);

    // Same for Docker schema 2.
    let mut p = reg.push_image_parts(&repo, 1, true).await;
    p.layers.push(Desc {
        media_type: DOCKER_LAYER.into(),
        digest: random_digest(),
        size: 10,
    });
    reg.put_manifest(&repo, "missing-docker", DOCKER_MANIFEST, &p.docker_manifest())
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);

    // Blobs that exist only in another repository do not count.
    let foreign = reg.push_image_parts(&other, 1, false).await;
    reg.put_manifest(&repo, "foreign", OCI_MANIFEST, &foreign.oci_manifest(json!({})))
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);
    reg.get_manifest(&repo, "foreign").await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn index_with_missing_child_is_manifest_blob_unknown() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/idxmissing");
    let other = unique_repo("man/idxmissing-other");
    let parts = reg.push_image_parts(&repo, 1, false).await;
    let m = parts.oci_manifest(json!({}));
    let d = reg.push_manifest(&repo, &sha256(&m), OCI_MANIFEST, &m).await;
    let present = Desc {
        media_type: OCI_MANIFEST.into(),
        digest: d,
        size: m.len(),
    };

    let absent = Desc {
        media_type: OCI_MANIFEST.into(),
        digest: random_digest(),
        size: 1024,
    };
    let idx = oci_index(&[(present.clone(), "amd64"), (absent, "arm64")], json!({}));
    reg.put_manifest(&repo, "idx", OCI_INDEX, &idx)
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);
    reg.get_manifest(&repo, "idx").await.expect(404);

    // A child that exists only as a blob (a layer), not as a manifest.
    let layer = Desc {
        media_type: OCI_MANIFEST.into(),
        ..parts.layers[0].clone()
    };
    let idx = oci_index(&[(present.clone(), "amd64"), (layer, "arm64")], json!({}));
    reg.put_manifest(&repo, "idx-blob-child", OCI_INDEX, &idx)
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);

    // A child manifest that exists only in another repository.
    let op = reg.push_image_parts(&other, 1, false).await;
    let om = op.oci_manifest(json!({}));
    let od = reg.push_manifest(&other, &sha256(&om), OCI_MANIFEST, &om).await;
    let foreign = Desc {
        media_type: OCI_MANIFEST.into(),
        digest: od,
        size: om.len(),
    };
    let idx = oci_index(&[(present, "amd64"), (foreign, "arm64")], json!({}));
    reg.put_manifest(&repo, "idx-foreign", OCI_INDEX, &idx)
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);

    // Docker manifest list with a missing child.
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": random_digest(), "size": 500,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    reg.put_manifest(&repo, "list", DOCKER_LIST, &list)
        .await
        .expect_error(400, &["MANIFEST_BLOB_UNKNOWN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_is_manifest_invalid() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/invalid");
    reg.push_blob(&repo, b"repo exists").await;
    let cases: &[(&str, &[u8])] = &[
        (OCI_MANIFEST, b"{not json"),
        (
            OCI_MANIFEST,
            b"{\"schemaVersion\": 2, \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\", ",
        ),
        (OCI_MANIFEST, b""),
        (OCI_INDEX, b"[1, 2, 3]"),
        (DOCKER_MANIFEST, b"\xff\xfe garbage"),
    ];
    for (ct, body) in cases {
        let r = reg.put_manifest(&repo, "bad", ct, body).await;
        r.expect_error(400, &["MANIFEST_INVALID"]);
    }
    reg.get_manifest(&repo, "bad").await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn schema1_is_rejected() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/schema1");
    let layer = reg.push_blob(&repo, b"layer").await;
    let m = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 1,
        "name": repo,
        "tag": "old",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layer}],
        "history": [{"v1Compatibility": "{\"id\":\"abc\"}"}],
        "signatures": [],
    }))
    .unwrap();
    for ct in [
        DOCKER_SCHEMA1_SIGNED,
        "application/vnd.docker.distribution.manifest.v1+json",
    ] {
        let r = reg.put_manifest(&repo, "old", ct, &m).await;
        let e = r.expect_error(400, &["MANIFEST_INVALID"]);
        let msg = e["message"].as_str().unwrap_or("").to_ascii_lowercase();
        let detail = e
            .get("detail")
            .map(|d| d.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        assert!(
            ["schema 1", "schema1", "schema version 1", "schemaversion 1"]
                .iter()
                .any(|s| msg.contains(s) || detail.contains(s)),
            "{ct}: error does not mention schema 1: {e}"
        );
    }
    reg.get_manifest(&repo, "old").await.expect(404);
}

/// A valid OCI manifest padded with annotations to exactly `size` bytes.
fn padded_manifest(parts: &ImageParts, size: usize) -> Vec<u8> {
    let base = parts.oci_manifest(json!({"annotations": {"pad": ""}}));
    assert!(size > base.len());
    let pad = "A".repeat(size - base.len());
    let m = parts.oci_manifest(json!({"annotations": {"pad": pad}}));
    assert_eq!(m.len(), size);
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_size_limit() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/size");
    let parts = reg.push_image_parts(&repo, 1, false).await;
    // Just under 4 MiB is accepted (the conformance suite pushes ~3.9 MB).
    let big = padded_manifest(&parts, 4 * 1024 * 1024 - 1024);
    put_and_check(&reg, &repo, "big", OCI_MANIFEST, &big).await;
    reg.assert_manifest(&repo, "big", OCI_MANIFEST, &big).await;
    // Over 4 MiB is 413 with an OCI error body.
    let huge = padded_manifest(&parts, 4 * 1024 * 1024 + 1);
    let r = reg.put_manifest(&repo, "huge", OCI_MANIFEST, &huge).await;
    r.expect_error(413, &["SIZE_INVALID", "MANIFEST_INVALID"]);
    // The same client goes on using its keep-alive connection: if the server answered without
    // reading the body it must close the connection cleanly (`Connection: close`) so that the
    // next request does not land on a dead connection.
    let next = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/huge")))
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await;
    match next {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 404),
        Err(e) => panic!(
            "the request after the 413 failed on a reused connection ({e:?}); 413 reply headers: {:?}",
            r.headers
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_manifests_are_404() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/unknown");
    reg.push_image(&repo, "exists").await;
    reg.get_manifest(&repo, "nope")
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    reg.head_manifest(&repo, "nope").await.expect(404);
    let d = random_digest();
    reg.get_manifest(&repo, &d)
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    reg.head_manifest(&repo, &d).await.expect(404);
    // A blob digest is not a manifest.
    let b = reg.push_blob(&repo, b"just a blob").await;
    reg.get_manifest(&repo, &b)
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    // Unknown repository.
    let missing = unique_repo("man/no-such-repo");
    reg.get_manifest(&missing, "latest")
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    reg.get_manifest(&missing, &d)
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    reg.head_manifest(&missing, "latest").await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_is_not_visible_from_another_repository() {
    let reg = Registry::start().await;
    let a = unique_repo("man/iso-a");
    let b = unique_repo("man/iso-b");
    let (_, d) = reg.push_image(&a, "t").await;
    reg.push_image(&b, "other").await;
    reg.get_manifest(&b, &d).await.expect_error(404, &["MANIFEST_UNKNOWN"]);
    reg.get_manifest(&b, "t").await.expect_error(404, &["MANIFEST_UNKNOWN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_move_and_share() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/tags");
    let (m1, d1) = reg.push_image(&repo, "latest").await;
    let (m2, d2) = reg.push_image(&repo, "other").await;
    // Move `latest` to the second manifest.
    reg.push_manifest(&repo, "latest", OCI_MANIFEST, &m2).await;
    reg.assert_manifest(&repo, "latest", OCI_MANIFEST, &m2).await;
    reg.assert_manifest(&repo, &d1, OCI_MANIFEST, &m1).await;
    reg.assert_manifest(&repo, &d2, OCI_MANIFEST, &m2).await;
    // Valid tags of every shape.
    let long = format!("T{}", "x".repeat(127));
    for tag in ["v1.2.3_rc-1", "UPPER", "_under", "0", long.as_str()] {
        reg.push_manifest(&repo, tag, OCI_MANIFEST, &m1).await;
        reg.assert_manifest(&repo, tag, OCI_MANIFEST, &m1).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_delete_is_unsupported_by_default() {
    let Some(reg) = Registry::start_default().await else {
        return;
    };
    let repo = unique_repo("man/nodelete");
    let (m, d) = reg.push_image(&repo, "keep").await;
    reg.delete(&format!("/v2/{repo}/manifests/{d}"))
        .await
        .expect_error(405, &["UNSUPPORTED"]);
    reg.delete(&format!("/v2/{repo}/manifests/keep"))
        .await
        .expect_error(405, &["UNSUPPORTED"]);
    reg.assert_manifest(&repo, "keep", OCI_MANIFEST, &m).await;
    reg.assert_manifest(&repo, &d, OCI_MANIFEST, &m).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_by_digest_removes_manifest_and_its_tags() {
    let Some(reg) = Registry::start_delete_enabled().await else {
        return;
    };
    let repo = unique_repo("man/deldigest");
    let (m, d) = reg.push_image(&repo, "a").await;
    reg.push_manifest(&repo, "b", OCI_MANIFEST, &m).await;
    let (m2, d2) = reg.push_image(&repo, "c").await;
    reg.delete(&format!("/v2/{repo}/manifests/{d}")).await.expect(202);
    reg.get_manifest(&repo, &d)
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    reg.head_manifest(&repo, &d).await.expect(404);
    reg.get_manifest(&repo, "a")
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    reg.get_manifest(&repo, "b")
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    assert_eq!(reg.tags(&repo).await, vec!["c".to_string()]);
    // The other manifest is untouched.
    reg.assert_manifest(&repo, "c", OCI_MANIFEST, &m2).await;
    reg.assert_manifest(&repo, &d2, OCI_MANIFEST, &m2).await;
    // Deleting again: unknown.
    reg.delete(&format!("/v2/{repo}/manifests/{d}"))
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    // It can be pushed again.
    reg.push_manifest(&repo, "a", OCI_MANIFEST, &m).await;
    reg.assert_manifest(&repo, "a", OCI_MANIFEST, &m).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_by_tag_removes_only_the_tag() {
    let Some(reg) = Registry::start_delete_enabled().await else {
        return;
    };
    let repo = unique_repo("man/deltag");
    let (m, d) = reg.push_image(&repo, "one").await;
    reg.push_manifest(&repo, "two", OCI_MANIFEST, &m).await;
    reg.delete(&format!("/v2/{repo}/manifests/one")).await.expect(202);
    reg.get_manifest(&repo, "one")
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    reg.head_manifest(&repo, "one").await.expect(404);
    reg.assert_manifest(&repo, &d, OCI_MANIFEST, &m).await;
    reg.assert_manifest(&repo, "two", OCI_MANIFEST, &m).await;
    assert_eq!(reg.tags(&repo).await, vec!["two".to_string()]);
    // Unknown tag.
    reg.delete(&format!("/v2/{repo}/manifests/one"))
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_routes_reject_unsupported_methods() {
    let reg = Registry::start().await;
    let repo = unique_repo("man/methods");
    reg.push_image(&repo, "t").await;
    for m in [Method::POST, Method::PATCH] {
        let r = reg.request(m, reg.url(&format!("/v2/{repo}/manifests/t"))).await;
        r.expect_error(405, &[]);
    }
}
