//! Authorization at the HTTP edge: which action a request needs, and whether the caller has it.

use http::Method;

use berth_auth::{AccessRules, Action};
use berth_engine::RepoName;

use crate::authn::Authn;
use crate::error::{ApiError, Kind};
use crate::route::Route;

/// Who is calling.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Authenticated user name; `None` for anonymous clients.
    pub user: Option<String>,
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Only to be authenticated when authentication is on (`/v2/`, the catalog).
    Login,
    /// An action on a repository.
    Repo(RepoName, Action),
}

/// The need of a route and method: `pull` for reads, `push` for uploads and manifest writes,
/// `delete` for deletes.
pub fn need(route: &Route, method: &Method) -> Need {
    let action = match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    let action = match route {
        // Reading or cancelling one's own upload session is part of pushing.
        Route::Upload(..) | Route::UploadStart(_) => Action::Push,
        _ => action,
    };
    match route.repo() {
        None => Need::Login,
        Some(r) => Need::Repo(r.clone(), action),
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

    /// Whether rules are in force.
    pub fn enabled(&self) -> bool {
        self.rules.is_some()
    }

    /// Whether the caller may do `action` on `repo`.
    pub fn allows(&self, authn: &Authn, caller: &Caller, repo: &str, action: Action) -> bool {
        match &self.rules {
            Some(r) => r.allows(caller.user.as_deref(), repo, action),
            // Without rules, authentication (if any) is all that is asked.
            None => caller.user.is_some() || !authn.required(),
        }
    }

    /// Admit or refuse a request: 401 (with the challenge) when an anonymous caller needs to log
    /// in, 403 `DENIED` when the caller is known but lacks the action.
    pub fn authorize(&self, authn: &Authn, caller: &Caller, need: &Need) -> Result<(), ApiError> {
        let anonymous_needs_login = caller.user.is_none() && authn.required();
        let allowed = match need {
            Need::Login => !anonymous_needs_login,
            Need::Repo(repo, action) => self.allows(authn, caller, repo.as_str(), *action),
        };
        match (allowed, anonymous_needs_login) {
            (true, _) => Ok(()),
            (false, true) => Err(authn.unauthorized(None)),
            (false, false) => Err(ApiError::new(Kind::Denied).detail(match need {
                Need::Repo(repo, action) => serde_json::json!({"name": repo.as_str(), "action": action.as_str()}),
                Need::Login => serde_json::Value::Null,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs() {
        let r: RepoName = "a".parse().unwrap();
        let id = berth_engine::UploadId::random();
        assert_eq!(need(&Route::Base, &Method::GET), Need::Login);
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
        assert_eq!(need(&m, &Method::PUT), Need::Repo(r.clone(), Action::Push));
        assert_eq!(need(&m, &Method::DELETE), Need::Repo(r, Action::Delete));
    }
}
