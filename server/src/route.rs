//! Parsing request paths into routes. Repository names contain slashes, so routes are
//! recognised by their suffix (`…/blobs/<digest>`, `…/manifests/<reference>`, …) and the rest of
//! the path must be a valid name; no limit is put on the number of name segments beyond the
//! name's length limit.

use berth_engine::{Digest, Reference, RepoName, UploadId};

use crate::error::{ApiError, Kind};

/// A registry API route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/manifests/<reference>` with a reference that is neither a valid tag nor a
    /// valid digest (kept as sent, for the error message): reads answer that no such manifest
    /// exists, pushes that the tag is invalid.
    ManifestBadRef(RepoName, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Route {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) | Route::ManifestBadRef(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) => "upload_start",
            Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    /// The repository the route addresses, if any.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(r)
            | Route::Manifest(r, _)
            | Route::ManifestBadRef(r, _)
            | Route::Blob(r, _)
            | Route::UploadStart(r)
            | Route::Upload(r, _)
            | Route::Referrers(r, _) => Some(r),
        }
    }
}

impl Route {
    /// The same route on another repository (`f` of this one's).
    pub fn map_repo(self, f: impl FnOnce(RepoName) -> RepoName) -> Route {
        match self {
            Route::Base | Route::Catalog => self,
            Route::Tags(r) => Route::Tags(f(r)),
            Route::Manifest(r, x) => Route::Manifest(f(r), x),
            Route::ManifestBadRef(r, x) => Route::ManifestBadRef(f(r), x),
            Route::Blob(r, d) => Route::Blob(f(r), d),
            Route::UploadStart(r) => Route::UploadStart(f(r)),
            Route::Upload(r, id) => Route::Upload(f(r), id),
            Route::Referrers(r, d) => Route::Referrers(f(r), d),
        }
    }
}

fn name(segments: &[&str]) -> Result<RepoName, ApiError> {
    Ok(segments.join("/").parse::<RepoName>()?)
}

/// Parse a request path (without query).
pub fn parse(path: &str) -> Result<Route, ApiError> {
    let rest = match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/v2/_catalog" => return Ok(Route::Catalog),
        _ => path.strip_prefix("/v2/").ok_or(Kind::NotFound)?,
    };
    let s: Vec<&str> = rest.split('/').collect();
    let n = s.len();
    // Longest suffixes first: `blobs/uploads/…` before `blobs/…`.
    if n >= 4 && s[n - 3] == "blobs" && s[n - 2] == "uploads" {
        let repo = name(&s[..n - 3])?;
        return if s[n - 1].is_empty() {
            Ok(Route::UploadStart(repo))
        } else {
            Ok(Route::Upload(repo, s[n - 1].parse()?))
        };
    }
    if n >= 3 && s[n - 2] == "blobs" && s[n - 1] == "uploads" {
        return Ok(Route::UploadStart(name(&s[..n - 2])?));
    }
    if n >= 3 && s[n - 2] == "tags" && s[n - 1] == "list" {
        return Ok(Route::Tags(name(&s[..n - 2])?));
    }
    if n >= 3 {
        let (kind, last) = (s[n - 2], s[n - 1]);
        match kind {
            "manifests" => {
                let repo = name(&s[..n - 2])?;
                return Ok(match last.parse() {
                    Ok(reference) => Route::Manifest(repo, reference),
                    Err(_) => Route::ManifestBadRef(repo, last.to_owned()),
                });
            }
            "blobs" => return Ok(Route::Blob(name(&s[..n - 2])?, last.parse()?)),
            "referrers" => return Ok(Route::Referrers(name(&s[..n - 2])?, last.parse()?)),
            _ => {}
        }
    }
    Err(Kind::NotFound.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert!(matches!(parse("/v2/a/b/c/tags/list").unwrap(), Route::Tags(r) if r.as_str() == "a/b/c"));
        assert!(matches!(parse(&format!("/v2/x/blobs/{D}")).unwrap(), Route::Blob(r, _) if r.as_str() == "x"));
        assert!(matches!(parse("/v2/x/blobs/uploads/").unwrap(), Route::UploadStart(_)));
        assert!(matches!(parse("/v2/x/blobs/uploads").unwrap(), Route::UploadStart(_)));
        let id = UploadId::random();
        assert!(
            matches!(parse(&format!("/v2/a/b/blobs/uploads/{id}")).unwrap(), Route::Upload(r, i) if r.as_str() == "a/b" && i == id)
        );
        assert!(matches!(
            parse("/v2/m/manifests/latest").unwrap(),
            Route::Manifest(_, Reference::Tag(_))
        ));
        assert!(matches!(
            parse(&format!("/v2/m/referrers/{D}")).unwrap(),
            Route::Referrers(..)
        ));
    }

    #[test]
    fn names_with_route_words() {
        assert!(matches!(parse(&format!("/v2/blobs/blobs/{D}")).unwrap(), Route::Blob(r, _) if r.as_str() == "blobs"));
        assert!(
            matches!(parse("/v2/a/manifests/b/manifests/v1").unwrap(), Route::Manifest(r, _) if r.as_str() == "a/manifests/b")
        );
        assert!(matches!(parse("/v2/tags/list/tags/list").unwrap(), Route::Tags(r) if r.as_str() == "tags/list"));
    }

    #[test]
    fn malformed_manifest_references_keep_their_route() {
        for bad in ["-bad", ".INVALID_MANIFEST_NAME", "sha256:xyz", "a:b", &"t".repeat(129)] {
            let route = parse(&format!("/v2/a/b/manifests/{bad}")).unwrap();
            assert!(
                matches!(&route, Route::ManifestBadRef(r, s) if r.as_str() == "a/b" && s == bad),
                "{bad}: {route:?}"
            );
            assert_eq!(route.kind(), "manifest");
        }
        // The name is still checked first.
        assert_eq!(parse("/v2/A/manifests/-bad").unwrap_err().kind, Kind::NameInvalid);
    }

    #[test]
    fn errors() {
        let code = |p: &str| parse(p).unwrap_err().kind;
        assert_eq!(code("/v2/A/tags/list"), Kind::NameInvalid);
        assert_eq!(code("/v2/a/../b/tags/list"), Kind::NameInvalid);
        assert_eq!(code("/v2/a%2e%2e/tags/list"), Kind::NameInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:xyz"), Kind::DigestInvalid);
        assert_eq!(code("/v2/a/../blobs/uploads/"), Kind::NameInvalid);
        assert_eq!(code("/v2/a/blobs/uploads/not-a-uuid"), Kind::BlobUploadUnknown);
        assert_eq!(code("/v2/a/whatever"), Kind::NotFound);
        assert_eq!(code("/v1/"), Kind::NotFound);
        let long = format!("/v2/{}/tags/list", vec!["a"; 5000].join("/"));
        assert_eq!(code(&long), Kind::NameInvalid);
    }
}
