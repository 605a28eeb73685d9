//! Authorization at the HTTP edge: which action a request needs, and whether the caller has it.

use http::Method;

use berth_auth::{AccessRules, Action, permits};
use berth_engine::RepoName;

use crate::authn::Authn;
pub use crate::authn::Caller;
use crate::error::{ApiError, Kind};
use crate::route::Route;

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Only to be authenticated when authentication is on (`/v2/`).
    Login,
    /// The catalog (`registry:catalog:*` in token mode).
    Catalog,
    /// An action on a repository.
    Repo(RepoName, Action),
}

impl Need {
    /// The scope a token must carry, as written in a Bearer challenge (`pull,push` for pushes,
    /// which is what clients ask for).
    pub fn scope(&self) -> Option<String> {
        match self {
            Need::Login => None,
            Need::Catalog => Some("registry:catalog:*".into()),
            Need::Repo(r, Action::Push) => Some(format!("repository:{r}:pull,push")),
            Need::Repo(r, a) => Some(format!("repository:{r}:{}", a.as_str())),
        }
    }
}

/// The need of a route and method: `pull` for reads, `push` for uploads and manifest writes,
/// `delete` for deletes.
pub fn need(route: &Route, method: &Method) -> Need {
    let action = match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    match route {
        Route::Base => Need::Login,
        Route::Catalog => Need::Catalog,
        // Reading or cancelling one's own upload session is part of pushing.
        Route::Upload(r, _) | Route::UploadStart(r) => Need::Repo(r.clone(), Action::Push),
        Route::Tags(r)
        | Route::Manifest(r, _)
        | Route::ManifestBadRef(r, _)
        | Route::Blob(r, _)
        | Route::Referrers(r, _) => Need::Repo(r.clone(), action),
    }
}

/// Rules in force (none: every authenticated caller may do everything).
pub struct Access {
    rules: Option<AccessRules>,
}

impl Access {
    /// Wrap optional rules.
    pub fn new(rules: Option<AccessRules>) -> Access {
        Access { rules }
    }

    /// The rules, if any.
    pub fn rules(&self) -> Option<&AccessRules> {
        self.rules.as_ref()
    }

    /// Whether the caller may do `action` on `repo`. In token mode the token decides; the
    /// rules were applied when it was issued.
    pub fn allows(&self, authn: &Authn, caller: &Caller, repo: &str, action: Action) -> bool {
        if let Authn::Token(_) = authn {
            return caller
                .grant
                .as_ref()
                .is_some_and(|g| g.allows("repository", repo, action));
        }
        if !authn.required() && self.rules.is_none() {
            return true;
        }
        // Without rules, an htpasswd user may do everything and a namespace credential works
        // in its namespaces; rules decide otherwise.
        permits(self.rules.as_ref(), &caller.principal(), repo, action)
    }

    /// Whether the catalog must be filtered per caller.
    pub fn filters_catalog_for(&self, caller: &Caller) -> bool {
        self.rules.is_some() || caller.namespaces.is_some()
    }

    /// Whether a catalog entry is shown to the caller.
    pub fn lists(&self, caller: &Caller, repo: &str) -> bool {
        if !self.filters_catalog_for(caller) {
            return true;
        }
        permits(self.rules.as_ref(), &caller.principal(), repo, Action::Pull)
    }

    /// Admit or refuse a request: 401 with the challenge when the caller must (re)authenticate
    /// or, in token mode, needs a token with more scope; 403 `DENIED` when a known caller lacks
    /// the action in basic mode.
    pub fn authorize(&self, authn: &Authn, caller: &Caller, need: &Need) -> Result<(), ApiError> {
        if let Authn::Token(_) = authn {
            let ok = match (need, &caller.grant) {
                (_, None) => false,
                (Need::Login, Some(_)) => true,
                (Need::Catalog, Some(g)) => g.allows("registry", "catalog", Action::All),
                (Need::Repo(r, a), Some(g)) => g.allows("repository", r.as_str(), *a),
            };
            return if ok {
                Ok(())
            } else {
                let error = caller.grant.as_ref().map(|_| "insufficient_scope");
                let message = error.map(|_| "the token does not grant this access");
                Err(authn
                    .unauthorized(message, need.scope().as_deref(), error)
                    .auth_failure(error.unwrap_or("no_credentials")))
            };
        }
        let anonymous_needs_login = caller.user.is_none() && authn.required();
        let allowed = match need {
            Need::Login | Need::Catalog => !anonymous_needs_login,
            Need::Repo(repo, action) => self.allows(authn, caller, repo.as_str(), *action),
        };
        match (allowed, anonymous_needs_login) {
            (true, _) => Ok(()),
            (false, true) => Err(authn.unauthorized(None, None, None).auth_failure("no_credentials")),
            (false, false) => Err(ApiError::new(Kind::Denied).auth_failure("denied").detail(match need {
                Need::Repo(repo, action) => serde_json::json!({"name": repo.as_str(), "action": action.as_str()}),
                Need::Login | Need::Catalog => serde_json::Value::Null,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_and_scopes() {
        let r: RepoName = "a".parse().unwrap();
        let id = berth_engine::UploadId::random();
        assert_eq!(need(&Route::Base, &Method::GET), Need::Login);
        assert_eq!(
            need(&Route::Catalog, &Method::GET).scope().as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(
            need(&Route::Tags(r.clone()), &Method::GET),
            Need::Repo(r.clone(), Action::Pull)
        );
        assert_eq!(
            need(&Route::UploadStart(r.clone()), &Method::POST),
            Need::Repo(r.clone(), Action::Push)
        );
        assert_eq!(
            need(&Route::Upload(r.clone(), id), &Method::GET),
            Need::Repo(r.clone(), Action::Push)
        );
        assert_eq!(
            need(&Route::Upload(r.clone(), id), &Method::DELETE),
            Need::Repo(r.clone(), Action::Push)
        );
        let m = Route::Manifest(r.clone(), "v1".parse().unwrap());
        assert_eq!(
            need(&m, &Method::PUT).scope().as_deref(),
            Some("repository:a:pull,push")
        );
        assert_eq!(need(&m, &Method::GET).scope().as_deref(), Some("repository:a:pull"));
        assert_eq!(need(&m, &Method::DELETE), Need::Repo(r, Action::Delete));
    }
}
