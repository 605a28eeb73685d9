//! Blob upload sessions: monolithic, POST+PUT, streamed and chunked PATCH, out-of-order chunks,
//! status, cancel, cross-repository mounts and digest checks.

mod common;

use common::*;
use reqwest::{Method, Url};

async fn patch(reg: &Registry, url: &Url, data: &[u8], range: Option<(usize, usize)>) -> Reply {
    let mut rb = reg
        .client
        .patch(url.clone())
        .header("content-type", OCTET)
        .body(data.to_vec());
    if let Some((a, b)) = range {
        rb = rb.header("content-range", format!("{a}-{b}"));
    }
    reg.send(rb).await
}

async fn put_final(reg: &Registry, url: &Url, digest: &str, data: &[u8], range: Option<(usize, usize)>) -> Reply {
    let mut rb = reg
        .client
        .put(Registry::with_digest(url, digest))
        .header("content-type", OCTET)
        .body(data.to_vec());
    if let Some((a, b)) = range {
        rb = rb.header("content-range", format!("{a}-{b}"));
    }
    reg.send(rb).await
}

/// The session URL a reply hands out (each chunk reply's Location should be used next).
fn next_location(reg: &Registry, r: &Reply) -> Url {
    reg.resolve(&r.must_header("location"))
}

#[tokio::test(flavor = "multi_thread")]
async fn post_starts_a_session() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/start");
    let r = reg
        .request(Method::POST, reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .await;
    r.expect(202);
    let loc = r.must_header("location");
    let uuid = r.must_header("docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert!(
        loc.contains(&uuid),
        "Location {loc:?} does not contain the session id {uuid:?}"
    );
    r.expect_header("range", "0-0");
    let min = r.must_header("oci-chunk-min-length");
    let min: u64 = min
        .parse()
        .unwrap_or_else(|_| panic!("OCI-Chunk-Min-Length {min:?} is not a number"));
    assert!(min > 0);
    let url = reg.resolve(&loc);
    assert!(
        url.path().starts_with(&format!("/v2/{repo}/blobs/uploads/")),
        "session Location {url} is not under the repository"
    );
    // Fresh session status.
    let s = reg.request(Method::GET, url).await;
    s.expect(204);
    s.expect_header("range", "0-0");
    s.expect_header("docker-upload-uuid", &uuid);
    s.must_header("location");
}

#[tokio::test(flavor = "multi_thread")]
async fn monolithic_post_with_digest() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/mono");
    let data = random_bytes(5000, 10);
    let d = sha256(&data);
    let r = reg.post_blob_monolithic(&repo, &d, data.clone()).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    let loc = reg.resolve(&r.must_header("location"));
    assert_eq!(loc.path(), format!("/v2/{repo}/blobs/{d}"), "blob Location");
    let g = reg.request(Method::GET, loc).await;
    g.expect(200);
    assert!(g.body == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_then_put_whole_body() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/postput");
    let data = random_bytes(3000, 11);
    let d = sha256(&data);
    let url = reg.start_upload(&repo).await;
    let r = put_final(&reg, &url, &d, &data, None).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    let loc = reg.resolve(&r.must_header("location"));
    assert_eq!(loc.path(), format!("/v2/{repo}/blobs/{d}"));
    reg.assert_blob(&repo, &data).await;
    // The session is gone once completed.
    reg.request(Method::GET, url.clone())
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    patch(&reg, &url, b"more", None)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_patch_then_put() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/stream");
    let data = random_bytes(100_000, 12);
    let d = sha256(&data);
    let url = reg.start_upload(&repo).await;
    // A streamed body: chunked transfer encoding, no Content-Length, no Content-Range.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(7000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = reg
        .send(reg.client.patch(url.clone()).header("content-type", OCTET).body(body))
        .await;
    r.expect(202);
    r.expect_header("range", &format!("0-{}", data.len() - 1));
    r.must_header("docker-upload-uuid");
    let url = next_location(&reg, &r);
    let r = put_final(&reg, &url, &d, &[], None).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn several_streamed_patches_append() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/stream2");
    let data = random_bytes(10_000, 13);
    let d = sha256(&data);
    let mut url = reg.start_upload(&repo).await;
    let mut off = 0;
    for part in data.chunks(3333) {
        let r = patch(&reg, &url, part, None).await;
        r.expect(202);
        off += part.len();
        r.expect_header("range", &format!("0-{}", off - 1));
        url = next_location(&reg, &r);
    }
    put_final(&reg, &url, &d, &[], None).await.expect(201);
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_patch_with_content_range_and_status() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/chunked");
    let data = random_bytes(30_000, 14);
    let d = sha256(&data);
    let mut url = reg.start_upload(&repo).await;
    let mut uuid = None;
    for (i, part) in data.chunks(10_000).enumerate() {
        let a = i * 10_000;
        let b = a + part.len() - 1;
        let r = patch(&reg, &url, part, Some((a, b))).await;
        r.expect(202);
        r.expect_header("range", &format!("0-{b}"));
        let u = r.must_header("docker-upload-uuid");
        if let Some(prev) = &uuid {
            assert_eq!(prev, &u, "Docker-Upload-UUID changed between chunks");
        }
        uuid = Some(u);
        url = next_location(&reg, &r);
        let s = reg.request(Method::GET, url.clone()).await;
        s.expect(204);
        s.expect_header("range", &format!("0-{b}"));
        s.expect_header("docker-upload-uuid", uuid.as_deref().unwrap());
        assert!(s.body.is_empty());
    }
    let r = put_final(&reg, &url, &d, &[], None).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn final_chunk_in_put_body() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/putchunk");
    let data = random_bytes(25_000, 15);
    let d = sha256(&data);
    let url = reg.start_upload(&repo).await;
    let r = patch(&reg, &url, &data[..10_000], Some((0, 9_999))).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    let r = patch(&reg, &url, &data[10_000..20_000], Some((10_000, 19_999))).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    let r = put_final(&reg, &url, &d, &data[20_000..], Some((20_000, 24_999))).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    reg.assert_blob(&repo, &data).await;

    // Final chunk in the PUT without Content-Range, after a streamed PATCH.
    let data = random_bytes(9_000, 16);
    let d = sha256(&data);
    let url = reg.start_upload(&repo).await;
    let r = patch(&reg, &url, &data[..4_000], None).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    put_final(&reg, &url, &d, &data[4_000..], None).await.expect(201);
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_chunks_are_416_with_current_range() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/ooo");
    let data = random_bytes(3_000, 17);
    let d = sha256(&data);
    let url = reg.start_upload(&repo).await;

    // The first chunk must start at 0.
    let r = patch(&reg, &url, &data[1000..2000], Some((1000, 1999))).await;
    r.expect(416);

    let r = patch(&reg, &url, &data[..1000], Some((0, 999))).await;
    r.expect(202);
    let url = next_location(&reg, &r);

    // Skipping ahead.
    let r = patch(&reg, &url, &data[2000..], Some((2000, 2999))).await;
    r.expect(416);
    r.expect_header("range", "0-999");
    // Going back to the start.
    let r = patch(&reg, &url, &data[..1000], Some((0, 999))).await;
    r.expect(416);
    r.expect_header("range", "0-999");
    // Overlapping the end by one byte.
    let r = patch(&reg, &url, &data[999..1999], Some((999, 1998))).await;
    r.expect(416);
    r.expect_header("range", "0-999");

    // Recover with GET.
    let s = reg.request(Method::GET, url.clone()).await;
    s.expect(204);
    s.expect_header("range", "0-999");
    let url = next_location(&reg, &s);

    // A final chunk out of order in the PUT is 416 too, and nothing is committed.
    let r = put_final(&reg, &url, &d, &data[2000..], Some((2000, 2999))).await;
    r.expect(416);
    assert_eq!(reg.blob_status(&repo, &d).await, 404);

    // The session is still usable: continue in order.
    let r = patch(&reg, &url, &data[1000..2000], Some((1000, 1999))).await;
    r.expect(202);
    r.expect_header("range", "0-1999");
    let url = next_location(&reg, &r);
    put_final(&reg, &url, &d, &data[2000..], Some((2000, 2999)))
        .await
        .expect(201);
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_of_the_advertised_minimum_length() {
    // The conformance suite's "chunked multi": a blob of 3 × min − 5 bytes in min-sized chunks.
    let reg = Registry::start().await;
    let repo = unique_repo("up/minchunk");
    let r = reg
        .request(Method::POST, reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .await;
    r.expect(202);
    let min: usize = r
        .header("oci-chunk-min-length")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1024 * 1024)
        .clamp(1024, 8 * 1024 * 1024);
    let mut url = reg.resolve(&r.must_header("location"));
    let data = random_bytes(3 * min - 5, 18);
    let d = sha256(&data);
    let mut start = 0;
    for part in data.chunks(min) {
        let end = start + part.len() - 1;
        let r = patch(&reg, &url, part, Some((start, end))).await;
        r.expect(202);
        r.expect_header("range", &format!("0-{end}"));
        url = next_location(&reg, &r);
        start = end + 1;
    }
    put_final(&reg, &url, &d, &[], None).await.expect(201);
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_digest_is_rejected_and_nothing_is_stored() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/baddigest");
    let data = random_bytes(4000, 19);
    let real = sha256(&data);
    let claimed = sha256(b"something else entirely");

    // POST+PUT
    let url = reg.start_upload(&repo).await;
    put_final(&reg, &url, &claimed, &data, None)
        .await
        .expect_error(400, &["DIGEST_INVALID"]);
    assert_eq!(reg.blob_status(&repo, &claimed).await, 404);
    assert_eq!(reg.blob_status(&repo, &real).await, 404);

    // Streamed PATCH then PUT
    let url = reg.start_upload(&repo).await;
    let r = patch(&reg, &url, &data, None).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    put_final(&reg, &url, &claimed, &[], None)
        .await
        .expect_error(400, &["DIGEST_INVALID"]);
    assert_eq!(reg.blob_status(&repo, &claimed).await, 404);
    assert_eq!(reg.blob_status(&repo, &real).await, 404);

    // Chunked with the last chunk in the PUT
    let url = reg.start_upload(&repo).await;
    let r = patch(&reg, &url, &data[..2000], Some((0, 1999))).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    put_final(&reg, &url, &claimed, &data[2000..], Some((2000, 3999)))
        .await
        .expect_error(400, &["DIGEST_INVALID"]);
    assert_eq!(reg.blob_status(&repo, &claimed).await, 404);
    assert_eq!(reg.blob_status(&repo, &real).await, 404);

    // Monolithic POST
    reg.post_blob_monolithic(&repo, &claimed, data.clone())
        .await
        .expect_error(400, &["DIGEST_INVALID"]);
    assert_eq!(reg.blob_status(&repo, &claimed).await, 404);
    assert_eq!(reg.blob_status(&repo, &real).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_digest_is_digest_invalid() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/malformed");
    let bad = [
        "sha256:xyz",
        "notadigest",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
    ];
    for bad in bad {
        let url = reg.start_upload(&repo).await;
        put_final(&reg, &url, bad, b"", None)
            .await
            .expect_error(400, &["DIGEST_INVALID"]);
    }
    // PUT without any digest cannot complete.
    let url = reg.start_upload(&repo).await;
    let r = reg
        .send(reg.client.put(url).header("content-type", OCTET).body(b"abc".to_vec()))
        .await;
    r.expect_error(400, &["DIGEST_INVALID"]);
    for bad in bad {
        reg.post_blob_monolithic(&repo, bad, b"abc".to_vec())
            .await
            .expect_error(400, &["DIGEST_INVALID"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_session() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/cancel");
    let url = reg.start_upload(&repo).await;
    let r = patch(&reg, &url, b"partial", None).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    reg.request(Method::DELETE, url.clone()).await.expect(204);
    reg.request(Method::GET, url.clone())
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    patch(&reg, &url, b"more", None)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    put_final(&reg, &url, &sha256(b"partial"), b"", None)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    reg.request(Method::DELETE, url)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_eq!(reg.blob_status(&repo, &sha256(b"partial")).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_session_id_is_blob_upload_unknown() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/unknown");
    reg.push_blob(&repo, b"make the repo exist").await;
    let url = Url::parse(&reg.url(&format!("/v2/{repo}/blobs/uploads/{}", random_uuid()))).unwrap();
    reg.request(Method::GET, url.clone())
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    patch(&reg, &url, b"abc", None)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    put_final(&reg, &url, &sha256(b"abc"), b"abc", None)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    reg.request(Method::DELETE, url)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    // Not a UUID at all.
    let r = reg.get(&format!("/v2/{repo}/blobs/uploads/not-a-session")).await;
    r.expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_is_bound_to_its_repository() {
    let reg = Registry::start().await;
    let a = unique_repo("up/bound-a");
    let b = unique_repo("up/bound-b");
    reg.push_blob(&b, b"b exists").await;
    let url = reg.start_upload(&a).await;
    let r = patch(&reg, &url, b"0123456789", None).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    let prefix = format!("/v2/{a}/");
    assert!(url.path().starts_with(&prefix), "session URL {url} not under {prefix}");
    let mut other = url.clone();
    other.set_path(&url.path().replacen(&prefix, &format!("/v2/{b}/"), 1));
    reg.request(Method::GET, other.clone())
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    patch(&reg, &other, b"abc", None)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    put_final(&reg, &other, &sha256(b"0123456789"), b"", None)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    reg.request(Method::DELETE, other)
        .await
        .expect_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_eq!(reg.blob_status(&b, &sha256(b"0123456789")).await, 404);
    // The session in A is untouched.
    let s = reg.request(Method::GET, url.clone()).await;
    s.expect(204);
    s.expect_header("range", "0-9");
    put_final(&reg, &url, &sha256(b"0123456789"), b"", None)
        .await
        .expect(201);
    reg.assert_blob(&a, b"0123456789").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_from_repository() {
    let reg = Registry::start().await;
    let src = unique_repo("up/mount-src");
    let dst = unique_repo("up/mount-dst");
    let data = random_bytes(1234, 20);
    let d = reg.push_blob(&src, &data).await;
    let mut u = Url::parse(&reg.url(&format!("/v2/{dst}/blobs/uploads/"))).unwrap();
    u.query_pairs_mut().append_pair("mount", &d).append_pair("from", &src);
    let r = reg.request(Method::POST, u).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    let loc = reg.resolve(&r.must_header("location"));
    assert_eq!(loc.path(), format!("/v2/{dst}/blobs/{d}"), "mount Location");
    let g = reg.request(Method::GET, loc).await;
    g.expect(200);
    assert!(g.body == data);
    reg.assert_blob(&dst, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_without_from() {
    let reg = Registry::start().await;
    let src = unique_repo("up/anon-src");
    let dst = unique_repo("up/anon-dst");
    let data = random_bytes(999, 21);
    let d = reg.push_blob(&src, &data).await;
    let mut u = Url::parse(&reg.url(&format!("/v2/{dst}/blobs/uploads/"))).unwrap();
    u.query_pairs_mut().append_pair("mount", &d);
    let r = reg.request(Method::POST, u).await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    let loc = reg.resolve(&r.must_header("location"));
    assert_eq!(loc.path(), format!("/v2/{dst}/blobs/{d}"));
    reg.assert_blob(&dst, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_of_unknown_blob_opens_a_session() {
    let reg = Registry::start().await;
    let src = unique_repo("up/mmiss-src");
    let dst = unique_repo("up/mmiss-dst");
    reg.push_blob(&src, b"src exists").await;
    let data = random_bytes(2222, 22);
    let d = sha256(&data);
    let mut u = Url::parse(&reg.url(&format!("/v2/{dst}/blobs/uploads/"))).unwrap();
    u.query_pairs_mut().append_pair("mount", &d).append_pair("from", &src);
    let r = reg.request(Method::POST, u).await;
    r.expect(202);
    r.must_header("docker-upload-uuid");
    let url = reg.resolve(&r.must_header("location"));
    let r = put_final(&reg, &url, &d, &data, None).await;
    r.expect(201);
    reg.assert_blob(&dst, &data).await;
    // Not mounted into the source as a side effect.
    assert_eq!(reg.blob_status(&src, &d).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_from_a_repository_without_the_blob_is_not_a_mount() {
    let reg = Registry::start().await;
    let has = unique_repo("up/mhas");
    let lacks = unique_repo("up/mlacks");
    let dst = unique_repo("up/mdst");
    let data = random_bytes(321, 23);
    let d = reg.push_blob(&has, &data).await;
    reg.push_blob(&lacks, b"lacks exists").await;
    let mut u = Url::parse(&reg.url(&format!("/v2/{dst}/blobs/uploads/"))).unwrap();
    u.query_pairs_mut().append_pair("mount", &d).append_pair("from", &lacks);
    let r = reg.request(Method::POST, u).await;
    r.expect(202);
    assert_eq!(reg.blob_status(&dst, &d).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_blob_uploads() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/empty");
    // POST + PUT with no body.
    let url = reg.start_upload(&repo).await;
    let r = put_final(&reg, &url, EMPTY_DIGEST, b"", None).await;
    r.expect(201);
    r.expect_header("docker-content-digest", EMPTY_DIGEST);
    let h = reg.head(&format!("/v2/{repo}/blobs/{EMPTY_DIGEST}")).await;
    h.expect(200);
    h.expect_header("content-length", "0");
    // Monolithic, into another repository.
    let repo2 = unique_repo("up/empty2");
    reg.push_blob(&repo2, b"").await;
    let g = reg.get(&format!("/v2/{repo2}/blobs/{EMPTY_DIGEST}")).await;
    g.expect(200);
    assert!(g.body.is_empty());
    // POST + empty streamed PATCH + PUT.
    let repo3 = unique_repo("up/empty3");
    let url = reg.start_upload(&repo3).await;
    let r = patch(&reg, &url, b"", None).await;
    r.expect(202);
    let url = next_location(&reg, &r);
    put_final(&reg, &url, EMPTY_DIGEST, b"", None).await.expect(201);
    assert_eq!(reg.blob_status(&repo3, EMPTY_DIGEST).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn pushing_an_existing_blob_again_succeeds() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/again");
    let data = random_bytes(500, 24);
    reg.push_blob(&repo, &data).await;
    reg.push_blob(&repo, &data).await;
    reg.push_blob_post_put(&repo, &data).await;
    reg.assert_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_content_range_is_rejected() {
    let reg = Registry::start().await;
    let repo = unique_repo("up/badrange");
    let url = reg.start_upload(&repo).await;
    // (A `bytes=` prefix is tolerated by some registries, so it is not tested here.)
    for bad in ["abc", "3-0", "0-", "-3", "0-x"] {
        let r = reg
            .send(
                reg.client
                    .patch(url.clone())
                    .header("content-type", OCTET)
                    .header("content-range", bad)
                    .body(b"abcd".to_vec()),
            )
            .await;
        assert!(
            r.status.as_u16() == 400 || r.status.as_u16() == 416,
            "Content-Range {bad:?}: expected 400 or 416, got {}",
            r.status
        );
        r.expect_error(r.status.as_u16(), &[]);
    }
    // Nothing was appended.
    let s = reg.request(Method::GET, url).await;
    s.expect(204);
    s.expect_header("range", "0-0");
}

#[tokio::test(flavor = "multi_thread")]
async fn content_range_length_mismatch_is_rejected() {
    // Content-Range says 10 bytes, the body has 4.
    let reg = Registry::start().await;
    let repo = unique_repo("up/lenmismatch");
    let url = reg.start_upload(&repo).await;
    let r = patch(&reg, &url, b"abcd", Some((0, 9))).await;
    assert!(
        matches!(r.status.as_u16(), 400 | 416),
        "{}: expected 400 or 416, got {}",
        r.what,
        r.status
    );
    r.expect_error(r.status.as_u16(), &[]);
}
