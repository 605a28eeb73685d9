//! Tag lists, the catalog and referrers.

use std::collections::HashMap;

use http::{Response, StatusCode, header};
use serde_json::json;

use berth_engine::manifest::OCI_INDEX;
use berth_engine::{Digest, Page, RepoName};

use super::{App, Body, Req, finish, full, json_response, query, response};
use crate::access::Caller;
use crate::error::{ApiError, Kind};

/// `n` and `last` of a paginated listing; `n` is capped at the configured maximum.
fn page_params(app: &App, q: &HashMap<String, String>) -> Result<(usize, Option<String>), ApiError> {
    let n = match q.get("n") {
        None => app.config.page_default,
        Some(v) => v.parse::<usize>().map_err(|_| {
            ApiError::new(Kind::PaginationNumberInvalid).message(format!(
                "n must be a whole number (pages hold at most {}; larger values are capped)",
                app.config.page_max
            ))
        })?,
    };
    Ok((
        n.min(app.config.page_max),
        q.get("last").cloned().filter(|l| !l.is_empty()),
    ))
}

fn with_link(status: StatusCode, body: &serde_json::Value, next: Option<String>) -> Result<Response<Body>, ApiError> {
    let mut resp = json_response(status, body)?;
    if let Some(link) = next
        && let Ok(v) = link.parse()
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

fn next_link<T: AsRef<str>>(path: &str, n: usize, page: &Page<T>) -> Option<String> {
    let last = page.next_after()?;
    let last: String = form_urlencoded::byte_serialize(last.as_ref().as_bytes()).collect();
    Some(format!("<{path}?n={n}&last={last}>; rel=\"next\""))
}

pub(super) async fn tags(app: &App, repo: &RepoName, req: &Req) -> Result<Response<Body>, ApiError> {
    let (n, last) = page_params(app, &query(req.uri()))?;
    let page = app.engine.tags(repo, last, n).await?;
    let next = next_link(&format!("/v2/{repo}/tags/list"), n, &page);
    let tags: Vec<&str> = page.items.iter().map(|t| t.as_str()).collect();
    with_link(StatusCode::OK, &json!({"name": repo.as_str(), "tags": tags}), next)
}

pub(super) async fn catalog(app: &App, caller: &Caller, req: &Req) -> Result<Response<Body>, ApiError> {
    let (n, last) = page_params(app, &query(req.uri()))?;
    let page = if app.access.filters_catalog_for(caller) {
        // Only the repositories the caller may pull.
        let (access, caller) = (app.access.clone(), caller.clone());
        app.engine
            .catalog_filtered(last, n, move |name| access.lists(&caller, name))
            .await?
    } else {
        app.engine.catalog(last, n).await?
    };
    let next = next_link("/v2/_catalog", n, &page);
    let repos: Vec<&str> = page.items.iter().map(|r| r.as_str()).collect();
    with_link(StatusCode::OK, &json!({"repositories": repos}), next)
}

pub(super) async fn referrers(
    app: &App,
    repo: &RepoName,
    subject: &Digest,
    req: &Req,
) -> Result<Response<Body>, ApiError> {
    let q = query(req.uri());
    let artifact_type = q.get("artifactType").filter(|a| !a.is_empty());
    let manifests = app
        .engine
        .referrers(repo, subject, artifact_type.map(String::as_str))
        .await?;
    let body = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
        .unwrap_or_default();
    let mut b = response(StatusCode::OK)
        .header(header::CONTENT_TYPE, OCI_INDEX)
        .header(header::CONTENT_LENGTH, body.len());
    if artifact_type.is_some() {
        b = b.header("oci-filters-applied", "artifactType");
    }
    finish(b, full(body))
}
