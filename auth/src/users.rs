//! Where users come from: an htpasswd file, a directory of per-namespace secrets, or both.

use std::path::Path;
use std::sync::Arc;

use crate::basic::{BasicAuth, BasicCredentials};
use crate::htpasswd::HtpasswdError;
use crate::secrets::{SecretsDir, SecretsError};

/// A checked identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub user: String,
    /// `Some` for a namespace credential: the namespaces it holds, to which it is confined
    /// unless access rules grant more. `None` for an htpasswd user.
    pub namespaces: Option<Arc<[String]>>,
}

/// Why a user source cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The htpasswd file.
    #[error("auth.htpasswd.path: {0}")]
    Htpasswd(#[from] HtpasswdError),
    /// The secrets directory.
    #[error("auth.secrets.directory: {0}")]
    Secrets(#[from] SecretsError),
}

/// What changed at a reload, for the log.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The htpasswd file was re-read; its user count.
    pub htpasswd: Option<usize>,
    /// The secrets directory changed; its namespaces.
    pub namespaces: Option<Vec<String>>,
    /// The htpasswd file changed but cannot be used (the previous users stay).
    pub htpasswd_error: Option<String>,
}

/// The configured user sources.
#[derive(Default)]
pub struct Users {
    htpasswd: Option<BasicAuth>,
    secrets: Option<SecretsDir>,
}

impl Users {
    /// Open the sources that are configured.
    pub fn open(htpasswd: Option<&Path>, secrets: Option<&Path>) -> Result<Users, UsersError> {
        Ok(Users {
            htpasswd: htpasswd.map(BasicAuth::open).transpose()?,
            secrets: secrets.map(SecretsDir::open).transpose()?,
        })
    }

    /// The htpasswd source, if configured.
    pub fn htpasswd(&self) -> Option<&BasicAuth> {
        self.htpasswd.as_ref()
    }

    /// The secrets source, if configured.
    pub fn secrets(&self) -> Option<&SecretsDir> {
        self.secrets.as_ref()
    }

    /// Whether no source holds any user.
    pub fn is_empty(&self) -> bool {
        self.htpasswd.as_ref().is_none_or(|h| h.users() == 0)
            && self.secrets.as_ref().is_none_or(|s| s.namespaces().is_empty())
    }

    /// Check credentials: namespace secrets first (a constant-time comparison of digests),
    /// then the htpasswd file (bcrypt, cached).
    pub async fn verify(&self, c: &BasicCredentials) -> Option<Identity> {
        if let Some(s) = &self.secrets {
            let ns = s.check(&c.user, &c.password);
            if !ns.is_empty() {
                return Some(Identity {
                    user: c.user.clone(),
                    namespaces: Some(ns.into()),
                });
            }
        }
        match &self.htpasswd {
            Some(h) if h.verify(c).await => Some(Identity {
                user: c.user.clone(),
                namespaces: None,
            }),
            _ => None,
        }
    }

    /// The identity of a user who presents no password (a refresh token): an htpasswd user
    /// keeps full standing; a namespace user gets the namespaces that still carry that name.
    pub fn lookup(&self, user: &str) -> Option<Identity> {
        if self.htpasswd.as_ref().is_some_and(|h| h.knows(user)) {
            return Some(Identity {
                user: user.to_owned(),
                namespaces: None,
            });
        }
        let ns = self.secrets.as_ref()?.namespaces_of(user);
        (!ns.is_empty()).then(|| Identity {
            user: user.to_owned(),
            namespaces: Some(ns.into()),
        })
    }

    /// Re-read what changed.
    pub fn reload(&self) -> Reloaded {
        let mut r = Reloaded::default();
        if let Some(h) = &self.htpasswd {
            match h.reload_if_changed() {
                Ok(true) => r.htpasswd = Some(h.users()),
                Ok(false) => {}
                Err(e) => r.htpasswd_error = Some(e.to_string()),
            }
        }
        if let Some(s) = &self.secrets {
            r.namespaces = s.reload();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_sources() {
        let t = tempfile::tempdir().unwrap();
        let ht = t.path().join("htpasswd");
        std::fs::write(&ht, format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let sec = t.path().join("secrets");
        std::fs::create_dir_all(sec.join("team-a")).unwrap();
        std::fs::write(sec.join("team-a/username"), "alice").unwrap();
        std::fs::write(sec.join("team-a/password"), "ns-pw").unwrap();
        let u = Users::open(Some(&ht), Some(&sec)).unwrap();
        let a = u.verify(&BasicCredentials::new("alice", "pw")).await.unwrap();
        assert_eq!(a.namespaces, None, "the htpasswd alice is not confined");
        let b = u.verify(&BasicCredentials::new("alice", "ns-pw")).await.unwrap();
        assert_eq!(b.namespaces.as_deref(), Some(&["team-a".to_owned()][..]));
        assert!(u.verify(&BasicCredentials::new("alice", "nope")).await.is_none());
        assert_eq!(u.lookup("alice").unwrap().namespaces, None);
        let only = Users::open(None, Some(&sec)).unwrap();
        assert_eq!(only.lookup("alice").unwrap().namespaces.unwrap().len(), 1);
        assert!(only.lookup("bob").is_none());
        assert!(!only.is_empty());
        assert!(Users::open(None, Some(&t.path().join("missing"))).is_err());
    }
}
