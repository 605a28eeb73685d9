//! Tag lists and the catalog: order, `n`/`last` paging with `Link: <…>; rel="next"`, limits.

mod common;

use common::*;
use serde_json::json;

fn list(r: &Reply, field: &str) -> Vec<String> {
    let v = r.json();
    match &v[field] {
        serde_json::Value::Null => Vec::new(),
        a => a
            .as_array()
            .unwrap_or_else(|| panic!("{}: {field} is not an array: {v}", r.what))
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect(),
    }
}

/// Check a `Link` header: next page of `path` with `n` and `last`.
fn assert_link(reg: &Registry, r: &Reply, path: &str, n: Option<usize>, last: &str) -> String {
    let link = r.must_header("link");
    let (p, q) = parse_next_link(reg, &link);
    assert_eq!(p, path, "Link {link:?}: path");
    assert_eq!(param(&q, "last"), Some(last), "Link {link:?}: last");
    if let Some(n) = n {
        assert_eq!(param(&q, "n"), Some(n.to_string().as_str()), "Link {link:?}: n");
    }
    let target = link.trim().trim_start_matches('<');
    target[..target.find('>').unwrap()].to_owned()
}

async fn follow(reg: &Registry, target: &str) -> Reply {
    let u = reg.resolve(target);
    reg.request(reqwest::Method::GET, u).await
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_sorted() {
    let reg = Registry::start().await;
    let repo = unique_repo("list/sorted");
    let (m, _) = reg.push_image(&repo, "latest").await;
    for t in ["b", "v1.9", "a", "v1.10", "1.0", "a-1"] {
        reg.push_manifest(&repo, t, OCI_MANIFEST, &m).await;
    }
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    r.expect(200);
    assert_eq!(media_type(&r.headers).as_deref(), Some("application/json"));
    assert_eq!(r.json()["name"], json!(repo));
    assert_eq!(list(&r, "tags"), ["1.0", "a", "a-1", "b", "latest", "v1.10", "v1.9"]);
    assert_eq!(r.header("link"), None, "no Link without paging");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_paging_with_link() {
    let reg = Registry::start().await;
    let repo = unique_repo("list/paging");
    let (m, _) = reg.push_image(&repo, "t5").await;
    for t in ["t3", "t1", "t4", "t2"] {
        reg.push_manifest(&repo, t, OCI_MANIFEST, &m).await;
    }
    let path = format!("/v2/{repo}/tags/list");
    let r = reg.get(&format!("{path}?n=2")).await;
    r.expect(200);
    assert_eq!(list(&r, "tags"), ["t1", "t2"]);
    assert_eq!(r.json()["name"], json!(repo));
    let next = assert_link(&reg, &r, &path, Some(2), "t2");

    let r = follow(&reg, &next).await;
    r.expect(200);
    assert_eq!(list(&r, "tags"), ["t3", "t4"]);
    let next = assert_link(&reg, &r, &path, Some(2), "t4");

    let r = follow(&reg, &next).await;
    r.expect(200);
    assert_eq!(list(&r, "tags"), ["t5"]);
    assert_eq!(r.header("link"), None, "last page has a Link");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_n_and_last_parameters() {
    let reg = Registry::start().await;
    let repo = unique_repo("list/params");
    let (m, _) = reg.push_image(&repo, "t1").await;
    for t in ["t2", "t3", "t4", "t5"] {
        reg.push_manifest(&repo, t, OCI_MANIFEST, &m).await;
    }
    let path = format!("/v2/{repo}/tags/list");
    // last alone
    let r = reg.get(&format!("{path}?last=t2")).await;
    r.expect(200);
    assert_eq!(list(&r, "tags"), ["t3", "t4", "t5"]);
    // last that is not a tag: everything after it
    let r = reg.get(&format!("{path}?last=t25")).await;
    r.expect(200);
    assert_eq!(list(&r, "tags"), ["t3", "t4", "t5"]);
    // last past the end
    let r = reg.get(&format!("{path}?last=zzz")).await;
    r.expect(200);
    assert!(list(&r, "tags").is_empty());
    assert_eq!(r.header("link"), None);
    // n and last
    let r = reg.get(&format!("{path}?n=1&last=t2")).await;
    r.expect(200);
    assert_eq!(list(&r, "tags"), ["t3"]);
    assert_link(&reg, &r, &path, Some(1), "t3");
    // n larger than the list
    let r = reg.get(&format!("{path}?n=10")).await;
    r.expect(200);
    assert_eq!(list(&r, "tags"), ["t1", "t2", "t3", "t4", "t5"]);
    assert_eq!(r.header("link"), None);
    // n = 0: an empty list and no Link
    let r = reg.get(&format!("{path}?n=0")).await;
    r.expect(200);
    assert!(r.json()["tags"].is_array(), "n=0 must give an empty list: {}", r.text());
    assert!(list(&r, "tags").is_empty());
    assert_eq!(r.header("link"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_bad_n_is_400() {
    let reg = Registry::start().await;
    let repo = unique_repo("list/badn");
    reg.push_image(&repo, "t").await;
    for n in ["abc", "-1"] {
        reg.get(&format!("/v2/{repo}/tags/list?n={n}"))
            .await
            .expect_error(400, &[]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_of_unknown_repository_is_name_unknown() {
    let reg = Registry::start().await;
    let repo = unique_repo("list/nope");
    reg.get(&format!("/v2/{repo}/tags/list"))
        .await
        .expect_error(404, &["NAME_UNKNOWN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_is_sorted_and_pages() {
    let reg = Registry::start().await;
    let prefix = unique_repo("cat");
    let names = [
        format!("{prefix}/c"),
        format!("{prefix}/a"),
        format!("{prefix}/b/deep/er"),
        format!("{prefix}/b"),
    ];
    for n in &names {
        reg.push_image(n, "t").await;
    }
    let mut sorted: Vec<String> = names.to_vec();
    sorted.sort();

    let r = reg.get("/v2/_catalog").await;
    r.expect(200);
    assert_eq!(media_type(&r.headers).as_deref(), Some("application/json"));
    let all = list(&r, "repositories");
    let mine: Vec<String> = all
        .iter()
        .filter(|n| n.starts_with(&format!("{prefix}/")))
        .cloned()
        .collect();
    assert_eq!(mine, sorted);
    let mut check = all.clone();
    check.sort();
    assert_eq!(all, check, "catalog is not sorted");
    if !is_external() {
        assert_eq!(all, sorted, "a fresh registry lists exactly the pushed repositories");
    }

    // Paging from just before our prefix.
    let r = reg.get(&format!("/v2/_catalog?n=2&last={prefix}")).await;
    r.expect(200);
    assert_eq!(list(&r, "repositories"), sorted[..2]);
    let next = assert_link(&reg, &r, "/v2/_catalog", Some(2), &sorted[1]);
    let r = follow(&reg, &next).await;
    r.expect(200);
    assert_eq!(list(&r, "repositories"), sorted[2..4]);
    if !is_external() {
        // Exactly 2 left: a Link may or may not follow; if it does, the next page is empty.
        if let Some(l) = r.header("link") {
            let (_, q) = parse_next_link(&reg, &l);
            assert_eq!(param(&q, "last"), Some(sorted[3].as_str()));
        }
        let r = reg.get(&format!("/v2/_catalog?n=3&last={}", sorted[1])).await;
        r.expect(200);
        assert_eq!(list(&r, "repositories"), sorted[2..4]);
        assert_eq!(r.header("link"), None, "last page has a Link");
        let r = reg.get("/v2/_catalog?n=0").await;
        r.expect(200);
        assert!(list(&r, "repositories").is_empty());
        assert_eq!(r.header("link"), None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_default_and_max_page_size() {
    let Some(reg) = Registry::start_with(&[
        ("REGISTRY_PAGINATION_DEFAULT_LIMIT", "3"),
        ("REGISTRY_PAGINATION_MAX_LIMIT", "5"),
    ])
    .await
    else {
        return;
    };
    let mut names: Vec<String> = (0..7).map(|i| format!("pg/repo{i}")).collect();
    for n in &names {
        reg.push_image(n, "t").await;
    }
    names.sort();

    // Default page size.
    let r = reg.get("/v2/_catalog").await;
    r.expect(200);
    assert_eq!(list(&r, "repositories"), names[..3]);
    let next = assert_link(&reg, &r, "/v2/_catalog", None, &names[2]);
    let r = follow(&reg, &next).await;
    r.expect(200);
    assert_eq!(list(&r, "repositories"), names[3..6]);

    // n above the maximum is capped.
    let r = reg.get("/v2/_catalog?n=100").await;
    r.expect(200);
    assert_eq!(list(&r, "repositories"), names[..5]);
    let mut next = Some(assert_link(&reg, &r, "/v2/_catalog", None, &names[4]));
    let mut seen = list(&r, "repositories");
    // Walking every page yields every repository once, in order.
    while let Some(t) = next {
        let r = follow(&reg, &t).await;
        r.expect(200);
        let page = list(&r, "repositories");
        assert!(page.len() <= 5);
        seen.extend(page);
        next = r.header("link").map(|l| {
            let t = l.trim().trim_start_matches('<');
            t[..t.find('>').unwrap()].to_owned()
        });
    }
    assert_eq!(seen, names);

    // A tags list may be capped too, but then it must say so with a Link.
    let (m, _) = reg.push_image("pg/tags", "t0").await;
    for i in 1..7 {
        reg.push_manifest("pg/tags", &format!("t{i}"), OCI_MANIFEST, &m).await;
    }
    let r = reg.get("/v2/pg/tags/tags/list?n=100").await;
    r.expect(200);
    let tags = list(&r, "tags");
    let all: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    assert_eq!(tags, all[..tags.len()]);
    if tags.len() < 7 {
        assert_link(&reg, &r, "/v2/pg/tags/tags/list", None, &tags[tags.len() - 1]);
    }
}
