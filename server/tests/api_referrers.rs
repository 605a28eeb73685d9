//! The referrers API (OCI Distribution 1.1): `OCI-Subject` on push, listing, `artifactType`
//! filtering, subjects that do not exist (yet), and removal on delete.

mod common;

use common::*;
use serde_json::{Value, json};

/// Push an artifact manifest referring to `subject` (a digest and size) and return
/// (bytes, digest). `artifact_type` None leaves the field out (the config type then stands in).
async fn push_referrer(
    reg: &Registry,
    repo: &str,
    reference: Option<&str>,
    subject: (&str, usize),
    artifact_type: Option<&str>,
    annotations: Value,
) -> (Vec<u8>, String) {
    reg.push_blob(repo, b"{}").await;
    let payload = random_bytes(64, unique_u64());
    let pd = reg.push_blob(repo, &payload).await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
        "layers": [{"mediaType": "application/vnd.example.payload", "digest": pd, "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
        "annotations": annotations,
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    let body = serde_json::to_vec(&m).unwrap();
    let d = sha256(&body);
    let r = reg
        .put_manifest(repo, reference.unwrap_or(&d), OCI_MANIFEST, &body)
        .await;
    r.expect(201);
    r.expect_header("docker-content-digest", &d);
    r.expect_header("oci-subject", subject.0);
    (body, d)
}

async fn referrers(reg: &Registry, repo: &str, subject: &str, query: &str) -> Reply {
    let r = reg.get(&format!("/v2/{repo}/referrers/{subject}{query}")).await;
    r.expect(200);
    assert_eq!(
        media_type(&r.headers).as_deref(),
        Some(OCI_INDEX),
        "{}: Content-Type",
        r.what
    );
    let v = r.json();
    assert_eq!(v["schemaVersion"], json!(2), "{}: {v}", r.what);
    assert_eq!(v["mediaType"], json!(OCI_INDEX), "{}: {v}", r.what);
    assert!(v["manifests"].is_array(), "{}: manifests is not an array: {v}", r.what);
    r
}

fn entries(r: &Reply) -> Vec<Value> {
    r.json()["manifests"].as_array().unwrap().clone()
}

fn find<'a>(list: &'a [Value], digest: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["digest"] == json!(digest))
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_are_listed_with_descriptor_fields() {
    let reg = Registry::start().await;
    let repo = unique_repo("ref/list");
    let (subj, sd) = reg.push_image(&repo, "image").await;
    let (a, ad) = push_referrer(
        &reg,
        &repo,
        Some("tagged-artifact1"),
        (&sd, subj.len()),
        Some("application/vnd.example.sbom"),
        json!({"org.example.kind": "sbom", "org.example.n": "1"}),
    )
    .await;
    let (b, bd) = push_referrer(
        &reg,
        &repo,
        None,
        (&sd, subj.len()),
        Some("application/vnd.example.sig"),
        json!({"org.example.kind": "sig"}),
    )
    .await;

    let r = referrers(&reg, &repo, &sd, "").await;
    let list = entries(&r);
    assert_eq!(list.len(), 2, "referrers: {list:?}");
    for (body, d, at, ann) in [
        (
            &a,
            &ad,
            "application/vnd.example.sbom",
            json!({"org.example.kind": "sbom", "org.example.n": "1"}),
        ),
        (
            &b,
            &bd,
            "application/vnd.example.sig",
            json!({"org.example.kind": "sig"}),
        ),
    ] {
        let e = find(&list, d).unwrap_or_else(|| panic!("referrer {d} missing from {list:?}"));
        assert_eq!(e["mediaType"], json!(OCI_MANIFEST), "{e}");
        assert_eq!(e["size"], json!(body.len()), "{e}");
        assert_eq!(e["artifactType"], json!(at), "{e}");
        assert_eq!(e["annotations"], ann, "{e}");
    }
    // The subject itself is still a normal manifest.
    reg.assert_manifest(&repo, "image", OCI_MANIFEST, &subj).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_type_filter() {
    let reg = Registry::start().await;
    let repo = unique_repo("ref/filter");
    let (subj, sd) = reg.push_image(&repo, "image").await;
    let (_, ad) = push_referrer(
        &reg,
        &repo,
        None,
        (&sd, subj.len()),
        Some("application/vnd.example.a"),
        json!({}),
    )
    .await;
    let (_, a2d) = push_referrer(
        &reg,
        &repo,
        None,
        (&sd, subj.len()),
        Some("application/vnd.example.a"),
        json!({"n": "2"}),
    )
    .await;
    let (_, bd) = push_referrer(
        &reg,
        &repo,
        None,
        (&sd, subj.len()),
        Some("application/vnd.example.b"),
        json!({}),
    )
    .await;

    let r = referrers(&reg, &repo, &sd, "?artifactType=application/vnd.example.a").await;
    let applied = r.must_header("oci-filters-applied");
    assert!(
        applied.split(',').any(|f| f.trim() == "artifactType"),
        "OCI-Filters-Applied: {applied:?}"
    );
    let list = entries(&r);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(find(&list, &ad).is_some() && find(&list, &a2d).is_some(), "{list:?}");
    assert!(find(&list, &bd).is_none(), "{list:?}");

    let r = referrers(&reg, &repo, &sd, "?artifactType=application%2Fvnd.example.b").await;
    let list = entries(&r);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], json!(bd));

    let r = referrers(&reg, &repo, &sd, "?artifactType=application/vnd.example.none").await;
    r.must_header("oci-filters-applied");
    assert!(entries(&r).is_empty());

    // Without a filter, no filter header.
    let r = referrers(&reg, &repo, &sd, "").await;
    assert_eq!(r.header("oci-filters-applied"), None);
    assert_eq!(entries(&r).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_artifact_type_falls_back_to_config_media_type() {
    let reg = Registry::start().await;
    let repo = unique_repo("ref/configtype");
    let (subj, sd) = reg.push_image(&repo, "image").await;
    // An image manifest (no artifactType) with a subject.
    let parts = reg.push_image_parts(&repo, 1, false).await;
    let m = parts.oci_manifest(json!({
        "subject": {"mediaType": OCI_MANIFEST, "digest": sd, "size": subj.len()},
        "annotations": {"k": "v"},
    }));
    let r = reg.put_manifest(&repo, &sha256(&m), OCI_MANIFEST, &m).await;
    r.expect(201);
    r.expect_header("oci-subject", &sd);
    let list = entries(&referrers(&reg, &repo, &sd, "").await);
    let e = find(&list, &sha256(&m)).unwrap_or_else(|| panic!("missing from {list:?}"));
    assert_eq!(e["artifactType"], json!(OCI_CONFIG), "{e}");
    assert_eq!(e["annotations"], json!({"k": "v"}), "{e}");
    // Filtering on the config type finds it.
    // '+' must be percent-encoded in a query (a bare '+' means a space).
    let q = format!("?artifactType={}", OCI_CONFIG.replace('+', "%2B"));
    let list = entries(&referrers(&reg, &repo, &sd, &q).await);
    assert_eq!(list.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn index_with_subject_is_a_referrer() {
    let reg = Registry::start().await;
    let repo = unique_repo("ref/index");
    let (subj, sd) = reg.push_image(&repo, "image").await;
    let (child, cd) = reg.push_image(&repo, "child").await;
    let c = Desc {
        media_type: OCI_MANIFEST.into(),
        digest: cd,
        size: child.len(),
    };
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": sd, "size": subj.len()});
    let with_type = oci_index(
        &[(c.clone(), "amd64")],
        json!({"artifactType": "application/vnd.example.idx", "subject": subject, "annotations": {"i": "1"}}),
    );
    let r = reg.put_manifest(&repo, "tagged-index", OCI_INDEX, &with_type).await;
    r.expect(201);
    r.expect_header("oci-subject", &sd);
    let without_type = oci_index(&[(c, "arm64")], json!({"subject": subject}));
    let r = reg
        .put_manifest(&repo, &sha256(&without_type), OCI_INDEX, &without_type)
        .await;
    r.expect(201);
    r.expect_header("oci-subject", &sd);

    let list = entries(&referrers(&reg, &repo, &sd, "").await);
    assert_eq!(list.len(), 2, "{list:?}");
    let e = find(&list, &sha256(&with_type)).expect("index with artifactType listed");
    assert_eq!(e["mediaType"], json!(OCI_INDEX));
    assert_eq!(e["size"], json!(with_type.len()));
    assert_eq!(e["artifactType"], json!("application/vnd.example.idx"));
    assert_eq!(e["annotations"], json!({"i": "1"}));
    let e = find(&list, &sha256(&without_type)).expect("index without artifactType listed");
    assert!(
        e.get("artifactType").is_none() || e["artifactType"].is_null(),
        "an index without artifactType must not get one: {e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subject_need_not_exist() {
    let reg = Registry::start().await;
    let repo = unique_repo("ref/nosubject");
    let ghost = random_digest();
    let (_, d) = push_referrer(
        &reg,
        &repo,
        Some("tagged-artifact"),
        (&ghost, 1234),
        Some("application/vnd.example.x"),
        json!({}),
    )
    .await;
    let list = entries(&referrers(&reg, &repo, &ghost, "").await);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], json!(d));
    // Pushing the subject afterwards changes nothing.
    let (_, sd) = reg.push_image(&repo, "image").await;
    assert!(entries(&referrers(&reg, &repo, &sd, "").await).is_empty());
    assert_eq!(entries(&referrers(&reg, &repo, &ghost, "").await).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_referrers_is_an_empty_list() {
    let reg = Registry::start().await;
    let repo = unique_repo("ref/empty");
    let (_, sd) = reg.push_image(&repo, "image").await;
    assert!(entries(&referrers(&reg, &repo, &sd, "").await).is_empty());
    assert!(entries(&referrers(&reg, &repo, &random_digest(), "").await).is_empty());
    // Even for a repository that does not exist: the API must not answer 404.
    let nowhere = unique_repo("ref/nowhere");
    assert!(entries(&referrers(&reg, &nowhere, &random_digest(), "").await).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_are_per_repository() {
    let reg = Registry::start().await;
    let a = unique_repo("ref/iso-a");
    let b = unique_repo("ref/iso-b");
    let subject = random_digest();
    push_referrer(
        &reg,
        &a,
        None,
        (&subject, 10),
        Some("application/vnd.example.x"),
        json!({}),
    )
    .await;
    reg.push_image(&b, "x").await;
    assert_eq!(entries(&referrers(&reg, &a, &subject, "").await).len(), 1);
    assert!(entries(&referrers(&reg, &b, &subject, "").await).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_referrers_digest_is_400() {
    let reg = Registry::start().await;
    let repo = unique_repo("ref/baddigest");
    reg.push_image(&repo, "image").await;
    for bad in ["sha256:xyz", "latest", "sha256:ABC"] {
        reg.get(&format!("/v2/{repo}/referrers/{bad}"))
            .await
            .expect_error(400, &["DIGEST_INVALID"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_referrer_disappears() {
    let Some(reg) = Registry::start_delete_enabled().await else {
        return;
    };
    let repo = unique_repo("ref/delete");
    let (subj, sd) = reg.push_image(&repo, "image").await;
    let (_, keep) = push_referrer(
        &reg,
        &repo,
        None,
        (&sd, subj.len()),
        Some("application/vnd.example.k"),
        json!({}),
    )
    .await;
    let (_, gone) = push_referrer(
        &reg,
        &repo,
        Some("gone-tag"),
        (&sd, subj.len()),
        Some("application/vnd.example.g"),
        json!({}),
    )
    .await;
    assert_eq!(entries(&referrers(&reg, &repo, &sd, "").await).len(), 2);
    // Removing only a tag keeps the referrer (the manifest still exists).
    reg.delete(&format!("/v2/{repo}/manifests/gone-tag")).await.expect(202);
    assert_eq!(entries(&referrers(&reg, &repo, &sd, "").await).len(), 2);
    // Deleting the manifest removes it.
    reg.delete(&format!("/v2/{repo}/manifests/{gone}")).await.expect(202);
    let list = entries(&referrers(&reg, &repo, &sd, "").await);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], json!(keep));
}
