//! Malformed requests: invalid digests and tags in URLs, unknown routes and methods, and the
//! shape of every error response (`Content-Type: application/json`, `errors[0].code/message`).

mod common;

use common::*;
use reqwest::Method;

const BAD_DIGESTS: &[&str] = &[
    "sha256:xyz",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
    "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855a",
    "notadigest",
    "sha256:",
    ":e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

#[tokio::test(flavor = "multi_thread")]
async fn invalid_digest_in_blob_url_is_digest_invalid() {
    let reg = Registry::start().await;
    let repo = unique_repo("err/digest");
    reg.push_blob(&repo, b"repo exists").await;
    for d in BAD_DIGESTS {
        reg.get(&format!("/v2/{repo}/blobs/{d}"))
            .await
            .expect_error(400, &["DIGEST_INVALID"]);
        reg.head(&format!("/v2/{repo}/blobs/{d}")).await.expect(400);
    }
}

/// A malformed digest in a manifest URL: reads and deletes find no such manifest (404
/// `MANIFEST_UNKNOWN`, as clients and the reference registry expect), a push is told the digest
/// is invalid (docs/api.md).
#[tokio::test(flavor = "multi_thread")]
async fn invalid_digest_in_manifest_url_is_unknown_to_reads_and_invalid_to_pushes() {
    let Some(reg) = Registry::start_delete_enabled().await else {
        return;
    };
    let repo = unique_repo("err/mdigest");
    let (m, _) = reg.push_image(&repo, "t").await;
    // Everything with a ':' is a digest (tags cannot contain one).
    for d in BAD_DIGESTS.iter().filter(|d| d.contains(':')) {
        reg.get_manifest(&repo, d)
            .await
            .expect_error(404, &["MANIFEST_UNKNOWN"]);
        reg.head_manifest(&repo, d).await.expect(404);
        reg.delete(&format!("/v2/{repo}/manifests/{d}"))
            .await
            .expect_error(404, &["MANIFEST_UNKNOWN"]);
        reg.put_manifest(&repo, d, OCI_MANIFEST, &m)
            .await
            .expect_error(400, &["DIGEST_INVALID"]);
    }
    reg.assert_manifest(&repo, "t", OCI_MANIFEST, &m).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_tags_are_400() {
    let reg = Registry::start().await;
    let repo = unique_repo("err/tag");
    let (m, _) = reg.push_image(&repo, "ok").await;
    let long = "t".repeat(129);
    for tag in ["-bad", ".bad", long.as_str(), "a+b", "a%20b", "caf%C3%A9"] {
        let r = reg.put_manifest(&repo, tag, OCI_MANIFEST, &m).await;
        r.expect_error(400, &["TAG_INVALID"]);
        // Reads of a reference that cannot exist find nothing, like any unknown manifest.
        reg.get_manifest(&repo, tag)
            .await
            .expect_error(404, &["MANIFEST_UNKNOWN"]);
        reg.head_manifest(&repo, tag).await.expect(404);
    }
    // The spec conformance suite's own malformed reference.
    reg.get_manifest(&repo, ".INVALID_MANIFEST_NAME")
        .await
        .expect_error(404, &["MANIFEST_UNKNOWN"]);
    reg.head_manifest(&repo, ".INVALID_MANIFEST_NAME").await.expect(404);
    assert_eq!(reg.tags(&repo).await, vec!["ok".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_are_404_with_an_error_body() {
    let reg = Registry::start().await;
    let repo = unique_repo("err/routes");
    reg.push_blob(&repo, b"x").await;
    for p in [
        format!("/v2/{repo}/whatever"),
        format!("/v2/{repo}/blobs"),
        "/v1/".to_string(),
        "/".to_string(),
        "/v2/_catalog/extra".to_string(),
    ] {
        let r = reg.get(&p).await;
        r.expect_error(404, &[]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_methods_are_405_with_an_error_body() {
    let reg = Registry::start().await;
    let repo = unique_repo("err/methods");
    reg.push_image(&repo, "t").await;
    for (m, p) in [
        (Method::DELETE, "/v2/_catalog".to_string()),
        (Method::PUT, format!("/v2/{repo}/tags/list")),
        (Method::POST, format!("/v2/{repo}/referrers/{}", random_digest())),
    ] {
        let r = reg.request(m, reg.url(&p)).await;
        r.expect_error(405, &[]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn error_bodies_have_the_oci_shape() {
    // A sample of errors from every area; each must be JSON with errors[0].code and message.
    let reg = Registry::start().await;
    let repo = unique_repo("err/shape");
    reg.push_blob(&repo, b"x").await;
    let samples = [
        reg.get(&format!("/v2/{repo}/blobs/{}", random_digest())).await,
        reg.get(&format!("/v2/{repo}/manifests/nope")).await,
        reg.get(&format!("/v2/{}/tags/list", unique_repo("err/none"))).await,
        reg.get(&format!("/v2/{repo}/blobs/uploads/{}", random_uuid())).await,
        reg.put_manifest(&repo, "t", OCI_MANIFEST, b"{").await,
    ];
    for r in &samples {
        assert!(r.status.is_client_error(), "{}: {}", r.what, r.status);
        let e = r.expect_error(r.status.as_u16(), &[]);
        let v = r.json();
        assert!(
            v["errors"].as_array().unwrap().iter().all(|e| e["code"].is_string()),
            "{v}"
        );
        let _ = e;
    }
}
