//! Blob reads over HTTP: HEAD/GET headers, byte ranges, repository isolation and deletion.

mod common;

use common::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread")]
async fn base_endpoint_answers_empty_object_with_api_version() {
    let reg = Registry::start().await;
    let r = reg.get("/v2/").await;
    r.expect(200);
    r.expect_header("docker-distribution-api-version", "registry/2.0");
    assert_eq!(r.json(), serde_json::json!({}), "GET /v2/ body: {:?}", r.text());
    assert_eq!(r.text().trim(), "{}");
    // Without the trailing slash too (clients probe both).
    let r = reg.get("/v2").await;
    assert!(
        r.status.as_u16() == 200 || r.status.is_redirection(),
        "GET /v2 answered {}",
        r.status
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_get_blob_headers_and_body() {
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/headers");
    let data = random_bytes(2048, 1);
    let d = reg.push_blob(&repo, &data).await;

    let h = reg.head(&format!("/v2/{repo}/blobs/{d}")).await;
    h.expect(200);
    h.expect_header("content-length", "2048");
    h.expect_header("docker-content-digest", &d);
    assert_eq!(
        media_type(&h.headers).as_deref(),
        Some(OCTET),
        "{}: Content-Type",
        h.what
    );
    h.expect_header("accept-ranges", "bytes");
    assert!(h.body.is_empty(), "HEAD returned a body");

    let g = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
    g.expect(200);
    g.expect_header("content-length", "2048");
    g.expect_header("docker-content-digest", &d);
    assert_eq!(
        media_type(&g.headers).as_deref(),
        Some(OCTET),
        "{}: Content-Type",
        g.what
    );
    g.expect_header("accept-ranges", "bytes");
    assert!(g.body == data, "GET blob bytes differ");
    assert_eq!(sha256(&g.body), d);
}

async fn range_get(reg: &Registry, path: &str, range: &str) -> Reply {
    reg.send(reg.client.get(reg.url(path)).header("range", range)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn byte_ranges_return_206_with_content_range() {
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/range");
    let data = random_bytes(2048, 2);
    let d = reg.push_blob(&repo, &data).await;
    let path = format!("/v2/{repo}/blobs/{d}");

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=500-1499", 500, 1499),
        ("bytes=0-0", 0, 0),
        ("bytes=500-", 500, 2047),
        ("bytes=-500", 1548, 2047),
        ("bytes=2047-2047", 2047, 2047),
        ("bytes=0-2047", 0, 2047),
        // An end past the size is clipped to the last byte.
        ("bytes=2000-5000", 2000, 2047),
        ("bytes=-5000", 0, 2047),
    ];
    for &(range, a, b) in cases {
        let r = range_get(&reg, &path, range).await;
        r.expect(206);
        assert_eq!(
            r.header("content-range").as_deref(),
            Some(format!("bytes {a}-{b}/2048").as_str()),
            "Range {range}: Content-Range"
        );
        r.expect_header("content-length", &(b - a + 1).to_string());
        assert!(
            r.body == data[a..=b],
            "Range {range}: wrong bytes (got {} bytes)",
            r.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsatisfiable_ranges_return_416() {
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/range416");
    let data = random_bytes(2048, 3);
    let d = reg.push_blob(&repo, &data).await;
    let path = format!("/v2/{repo}/blobs/{d}");
    for range in ["bytes=2048-", "bytes=2048-3000", "bytes=5000-10000"] {
        let r = range_get(&reg, &path, range).await;
        assert_eq!(
            r.status.as_u16(),
            416,
            "Range {range}: expected 416, got {} ({:?})",
            r.status,
            r.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inverted_range_is_416_as_the_conformance_suite_expects() {
    // RFC 9110 lets a server ignore an invalid range (answer 200), but the OCI conformance suite
    // ("range 500-0") counts a full 200 answer as a failure and wants 416.
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/range-inverted");
    let data = random_bytes(2048, 33);
    let d = reg.push_blob(&repo, &data).await;
    let r = range_get(&reg, &format!("/v2/{repo}/blobs/{d}"), "bytes=500-0").await;
    assert_eq!(
        r.status.as_u16(),
        416,
        "Range bytes=500-0: expected 416, got {} ({:?})",
        r.status,
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsatisfiable_range_reports_size_in_content_range() {
    // RFC 9110 §14.4: a 416 for a byte range SHOULD carry `Content-Range: bytes */<size>`.
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/range416cr");
    let data = random_bytes(100, 4);
    let d = reg.push_blob(&repo, &data).await;
    let r = range_get(&reg, &format!("/v2/{repo}/blobs/{d}"), "bytes=100-").await;
    r.expect(416);
    r.expect_header("content-range", "bytes */100");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_blob_is_404_blob_unknown() {
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/unknown");
    // In a repository that exists …
    reg.push_blob(&repo, b"something").await;
    let d = random_digest();
    reg.get(&format!("/v2/{repo}/blobs/{d}"))
        .await
        .expect_error(404, &["BLOB_UNKNOWN"]);
    reg.head(&format!("/v2/{repo}/blobs/{d}")).await.expect(404);
    // … and in one that does not.
    let other = unique_repo("blobs/nowhere");
    let r = reg.get(&format!("/v2/{other}/blobs/{d}")).await;
    r.expect_error(404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]);
    reg.head(&format!("/v2/{other}/blobs/{d}")).await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_is_not_visible_from_another_repository() {
    let reg = Registry::start().await;
    let a = unique_repo("blobs/iso-a");
    let b = unique_repo("blobs/iso-b");
    let data = random_bytes(777, 5);
    let d = reg.push_blob(&a, &data).await;
    reg.assert_blob(&a, &data).await;
    // B does not exist yet.
    let r = reg.get(&format!("/v2/{b}/blobs/{d}")).await;
    r.expect_error(404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]);
    assert_eq!(reg.blob_status(&b, &d).await, 404);
    // B exists (other content) but still does not have it.
    reg.push_blob(&b, b"other content").await;
    reg.get(&format!("/v2/{b}/blobs/{d}"))
        .await
        .expect_error(404, &["BLOB_UNKNOWN"]);
    assert_eq!(reg.blob_status(&b, &d).await, 404);
    let r = range_get(&reg, &format!("/v2/{b}/blobs/{d}"), "bytes=0-10").await;
    r.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_and_empty_json_blobs() {
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/empty");
    let d = reg.push_blob(&repo, b"").await;
    assert_eq!(d, EMPTY_DIGEST);
    let h = reg.head(&format!("/v2/{repo}/blobs/{d}")).await;
    h.expect(200);
    h.expect_header("content-length", "0");
    h.expect_header("docker-content-digest", EMPTY_DIGEST);
    let g = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
    g.expect(200);
    assert!(g.body.is_empty());

    let d = reg.push_blob(&repo, b"{}").await;
    assert_eq!(d, EMPTY_JSON_DIGEST);
    reg.assert_blob(&repo, b"{}").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_delete_is_unsupported_by_default() {
    let Some(reg) = Registry::start_default().await else {
        return;
    };
    let repo = unique_repo("blobs/nodelete");
    let data = random_bytes(64, 6);
    let d = reg.push_blob(&repo, &data).await;
    reg.delete(&format!("/v2/{repo}/blobs/{d}"))
        .await
        .expect_error(405, &["UNSUPPORTED"]);
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_delete_when_enabled() {
    let Some(reg) = Registry::start_delete_enabled().await else {
        return;
    };
    let repo = unique_repo("blobs/delete");
    let data = random_bytes(64, 7);
    let d = reg.push_blob(&repo, &data).await;
    reg.delete(&format!("/v2/{repo}/blobs/{d}")).await.expect(202);
    assert_eq!(reg.blob_status(&repo, &d).await, 404);
    reg.get(&format!("/v2/{repo}/blobs/{d}"))
        .await
        .expect_error(404, &["BLOB_UNKNOWN"]);
    // Deleting again: unknown.
    reg.delete(&format!("/v2/{repo}/blobs/{d}"))
        .await
        .expect_error(404, &["BLOB_UNKNOWN"]);
    // A never-pushed digest: unknown.
    reg.delete(&format!("/v2/{repo}/blobs/{}", random_digest()))
        .await
        .expect_error(404, &["BLOB_UNKNOWN"]);
    // It can be pushed again afterwards.
    reg.push_blob(&repo, &data).await;
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_delete_in_one_repository_keeps_it_in_another() {
    let Some(reg) = Registry::start_delete_enabled().await else {
        return;
    };
    let a = unique_repo("blobs/shared-a");
    let b = unique_repo("blobs/shared-b");
    let data = random_bytes(4000, 8);
    let d = reg.push_blob(&a, &data).await;
    reg.push_blob(&b, &data).await;
    reg.delete(&format!("/v2/{a}/blobs/{d}")).await.expect(202);
    assert_eq!(reg.blob_status(&a, &d).await, 404);
    reg.assert_blob(&b, &data).await;
    assert_eq!(reg.blob_status(&b, &d).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_of_the_same_blob_all_succeed() {
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/concurrent");
    let data = random_bytes(200_000, 9);
    let d = sha256(&data);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let client = client();
        let base = reg.base.clone();
        let repo = repo.clone();
        let data = data.clone();
        let d = d.clone();
        set.spawn(async move {
            let url = if i % 2 == 0 {
                format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")
            } else {
                // Same content into a second repository at the same time.
                format!("{base}/v2/{repo}-twin/blobs/uploads/?digest={d}")
            };
            let r = client
                .post(url)
                .header("content-type", OCTET)
                .body(data)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 201, "a concurrent monolithic push failed");
    }
    reg.assert_blob(&repo, &data).await;
    reg.assert_blob(&format!("{repo}-twin"), &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_routes_reject_unsupported_methods() {
    let reg = Registry::start().await;
    let repo = unique_repo("blobs/methods");
    let d = reg.push_blob(&repo, b"x").await;
    let r = reg
        .request(Method::PUT, reg.url(&format!("/v2/{repo}/blobs/{d}")))
        .await;
    assert!(
        r.status.as_u16() == 405 || r.status.as_u16() == 404,
        "{}: expected 405 (or 404), got {}",
        r.what,
        r.status
    );
    r.expect_error(r.status.as_u16(), &[]);
}

/// Blobs of 1 MiB and more are served from memory maps, sent to plaintext connections with
/// `sendfile`: whole and in ranges that start off a page boundary and cross the 2 MiB slices
/// the maps are cut into, the client gets exactly the stored bytes; and the same with sendfile
/// off.
#[tokio::test(flavor = "multi_thread")]
async fn large_blobs_and_ranges_arrive_intact_from_maps() {
    let size = 5 * 1024 * 1024 + 777;
    let data = random_bytes(size, 11);
    for env in [&[][..], &[("BERTH_IO_SENDFILE", "off")][..]] {
        let Some(reg) = Registry::start_with(env).await else {
            return;
        };
        let repo = unique_repo("blobs/mapped");
        let d = reg.push_blob(&repo, &data).await;
        let path = format!("/v2/{repo}/blobs/{d}");
        let r = reg.send(reg.client.get(reg.url(&path))).await;
        r.expect(200);
        assert!(r.body == data, "{env:?}: whole blob differs ({} bytes)", r.body.len());
        let cases: &[(&str, usize, usize)] = &[
            ("bytes=1000001-3500000", 1_000_001, 3_500_000),
            ("bytes=2097000-", 2_097_000, size - 1),
            ("bytes=-3000000", size - 3_000_000, size - 1),
        ];
        for &(range, a, b) in cases {
            let r = range_get(&reg, &path, range).await;
            r.expect(206);
            assert!(
                r.body == data[a..=b],
                "{env:?} Range {range}: wrong bytes (got {} bytes)",
                r.body.len()
            );
        }
    }
}
