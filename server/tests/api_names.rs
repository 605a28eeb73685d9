//! Repository names: multi-segment names, names made of route words, and invalid names.

mod common;

use common::*;
use reqwest::Method;

/// Every API on one repository name: chunked upload, blob reads, manifest push/pull, tags,
/// referrers, catalog.
async fn full_cycle(reg: &Registry, repo: &str) {
    let data = random_bytes(3000, unique_u64());
    let d = sha256(&data);
    let url = reg.start_upload(repo).await;
    assert!(
        url.path().starts_with(&format!("/v2/{repo}/blobs/uploads/")),
        "{repo}: session URL {url}"
    );
    let r = reg
        .send(
            reg.client
                .patch(url)
                .header("content-type", OCTET)
                .header("content-range", "0-1499")
                .body(data[..1500].to_vec()),
        )
        .await;
    r.expect(202);
    let url = reg.resolve(&r.must_header("location"));
    let s = reg.request(Method::GET, url.clone()).await;
    s.expect(204);
    s.expect_header("range", "0-1499");
    let r = reg
        .send(
            reg.client
                .put(Registry::with_digest(&url, &d))
                .header("content-type", OCTET)
                .body(data[1500..].to_vec()),
        )
        .await;
    r.expect(201);
    assert_eq!(
        reg.resolve(&r.must_header("location")).path(),
        format!("/v2/{repo}/blobs/{d}")
    );
    reg.assert_blob(repo, &data).await;
    assert_eq!(reg.blob_status(repo, &d).await, 200);

    let (m, md) = reg.push_image(repo, "v1").await;
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &m).await;
    reg.assert_manifest(repo, &md, OCI_MANIFEST, &m).await;
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    r.expect(200);
    assert_eq!(r.json(), serde_json::json!({"name": repo, "tags": ["v1"]}));
    // In the catalog: ask for the one entry after a string that sorts just before the name
    // (last character decremented, then '~', which sorts after every character a name may use).
    let last = repo.as_bytes()[repo.len() - 1];
    let before = format!("{}{}~", &repo[..repo.len() - 1], (last - 1) as char);
    let mut u = reqwest::Url::parse(&reg.url("/v2/_catalog")).unwrap();
    u.query_pairs_mut().append_pair("n", "1").append_pair("last", &before);
    let r = reg.request(Method::GET, u).await;
    r.expect(200);
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!([repo]),
        "catalog entry for {repo}"
    );

    let r = reg.get(&format!("/v2/{repo}/referrers/{md}")).await;
    r.expect(200);
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_segment_and_route_word_names() {
    let reg = Registry::start().await;
    let u = unique_repo("n");
    let names = [
        format!("{u}/a/b/c/d/e"),
        format!("{u}/x/blobs/y"),
        format!("{u}/x/manifests/z"),
        format!("{u}/x/tags/list/q"),
        format!("{u}/x/blobs/uploads/w"),
        format!("{u}/x/referrers/r"),
        format!("{u}/blobs"),
        format!("{u}/manifests/v"),
        format!("{u}/tags/list"),
        format!("{u}/a.b_c__d-e--f/g0"),
    ];
    let reg = std::sync::Arc::new(reg);
    let mut set = tokio::task::JoinSet::new();
    for n in names {
        let reg = reg.clone();
        set.spawn(async move { full_cycle(&reg, &n).await });
    }
    while let Some(res) = set.join_next().await {
        if let Err(e) = res {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Raw request; the reply must be 400 NAME_INVALID.
async fn expect_name_invalid(reg: &Registry, method: &str, path: &str) {
    let r = reg.raw(method, path, &[], b"").await;
    r.expect_error(400, &["NAME_INVALID"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names_are_name_invalid() {
    let reg = Registry::start().await;
    let long = "a".repeat(300);
    let bad = [
        "UPPER",
        "a//b",
        "a/../b",
        "%2e%2e",
        "a/%2e%2e/b",
        "a/./b",
        "-a",
        "a-",
        "a___b",
        "a..b",
        "a/",
        long.as_str(),
    ];
    let d = random_digest();
    for name in bad {
        expect_name_invalid(&reg, "GET", &format!("/v2/{name}/tags/list")).await;
        expect_name_invalid(&reg, "GET", &format!("/v2/{name}/manifests/latest")).await;
        expect_name_invalid(&reg, "GET", &format!("/v2/{name}/blobs/{d}")).await;
        expect_name_invalid(&reg, "POST", &format!("/v2/{name}/blobs/uploads/")).await;
        expect_name_invalid(&reg, "PUT", &format!("/v2/{name}/manifests/latest")).await;
    }
    // Nothing was created.
    let r = reg.get("/v2/_catalog").await;
    r.expect(200);
    let v = r.json();
    for n in v["repositories"].as_array().cloned().unwrap_or_default() {
        let n = n.as_str().unwrap();
        assert!(
            !n.contains("..") && !n.contains("//") && n != "UPPER",
            "catalog has {n:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn longest_reasonable_name_works() {
    // 200 characters in several segments.
    let reg = Registry::start().await;
    let u = unique_repo("long");
    let mut name = u.clone();
    while name.len() < 190 {
        name.push_str("/segment");
    }
    let data = random_bytes(100, 40);
    reg.push_blob(&name, &data).await;
    reg.assert_blob(&name, &data).await;
    let (m, _) = reg.push_image(&name, "t").await;
    reg.assert_manifest(&name, "t", OCI_MANIFEST, &m).await;
}
