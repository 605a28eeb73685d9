//! Where users come from: an htpasswd file, a directory of per-namespace secrets, or both.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::basic::{BasicAuth, BasicCredentials};
use crate::htpasswd::HtpasswdError;
use crate::secrets::{SecretsDir, SecretsError};
use crate::throttle::{Throttle, ThrottleConfig, Throttled};

/// A checked identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub user: String,
    /// `Some` for a namespace credential: the namespaces it holds, to which it is confined
    /// unless access rules grant more. `None` for an htpasswd user.
    pub namespaces: Option<Arc<[String]>>,
}

/// Where a user's credential is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// The htpasswd file.
    Htpasswd,
    /// The per-namespace secrets directory.
    Secrets,
}

impl CredentialSource {
    /// A short stable name (written into refresh tokens).
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Htpasswd => "htpasswd",
            CredentialSource::Secrets => "secrets",
        }
    }

    /// The source named by [`CredentialSource::as_str`].
    pub fn parse(s: &str) -> Option<CredentialSource> {
        match s {
            "htpasswd" => Some(CredentialSource::Htpasswd),
            "secrets" => Some(CredentialSource::Secrets),
            _ => None,
        }
    }
}

impl Identity {
    /// Where the credential this identity logged in with is kept.
    pub fn source(&self) -> CredentialSource {
        if self.namespaces.is_some() {
            CredentialSource::Secrets
        } else {
            CredentialSource::Htpasswd
        }
    }
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

/// The configured user sources, and the book of failed logins.
#[derive(Default)]
pub struct Users {
    htpasswd: Option<BasicAuth>,
    secrets: Option<SecretsDir>,
    throttle: Throttle,
}

impl Users {
    /// Open the sources that are configured.
    pub fn open(htpasswd: Option<&Path>, secrets: Option<&Path>) -> Result<Users, UsersError> {
        Ok(Users {
            htpasswd: htpasswd.map(BasicAuth::open).transpose()?,
            secrets: secrets.map(SecretsDir::open).transpose()?,
            throttle: Throttle::default(),
        })
    }

    /// Throttle failed logins with these settings (the default: [`ThrottleConfig::default`]).
    pub fn with_throttle(mut self, config: ThrottleConfig) -> Users {
        self.throttle = Throttle::new(config);
        self
    }

    /// The failed-login book.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
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

    /// Check credentials presented from `client`: refused at once while that user name or
    /// address is in back-off (see [`crate::throttle`]); otherwise namespace secrets first (a
    /// constant-time comparison of digests), then the htpasswd file (bcrypt, cached). A
    /// failure is counted whether the user exists or not.
    pub async fn verify(&self, c: &BasicCredentials, client: Option<IpAddr>) -> Result<Option<Identity>, Throttled> {
        let t = &self.throttle;
        t.check(&c.user, client)?;
        if let Some(s) = &self.secrets {
            let ns = s.check(&c.user, &c.password);
            if !ns.is_empty() {
                t.succeeded(&c.user, client);
                return Ok(Some(Identity {
                    user: c.user.clone(),
                    namespaces: Some(ns.into()),
                }));
            }
        }
        let ok = match &self.htpasswd {
            Some(h) => h.verify_gated(c, || t.check(&c.user, client)).await?,
            None => false,
        };
        if ok {
            t.succeeded(&c.user, client);
            Ok(Some(Identity {
                user: c.user.clone(),
                namespaces: None,
            }))
        } else {
            t.failed(&c.user, client);
            Ok(None)
        }
    }

    /// The identity of `user` as `source` holds it now, with that source's stored credential
    /// (a bcrypt hash line, or digests of the namespace secrets) for checking a refresh token's
    /// binding. `None` when the source no longer has the user.
    pub fn credential(&self, user: &str, source: CredentialSource) -> Option<(Identity, Vec<u8>)> {
        match source {
            CredentialSource::Htpasswd => {
                let hash = self.htpasswd.as_ref()?.stored_hash(user)?;
                Some((
                    Identity {
                        user: user.to_owned(),
                        namespaces: None,
                    },
                    hash.into_bytes(),
                ))
            }
            CredentialSource::Secrets => {
                let s = self.secrets.as_ref()?;
                let stamp = s.credential_stamp(user)?;
                Some((
                    Identity {
                        user: user.to_owned(),
                        namespaces: Some(s.namespaces_of(user).into()),
                    },
                    stamp,
                ))
            }
        }
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
        let a = u
            .verify(&BasicCredentials::new("alice", "pw"), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.namespaces, None, "the htpasswd alice is not confined");
        let b = u
            .verify(&BasicCredentials::new("alice", "ns-pw"), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.namespaces.as_deref(), Some(&["team-a".to_owned()][..]));
        assert!(
            u.verify(&BasicCredentials::new("alice", "nope"), None)
                .await
                .unwrap()
                .is_none()
        );
        // A refresh looks in the source the token was issued from: the htpasswd alice and the
        // namespace alice are different credentials.
        let (id, hash) = u.credential("alice", CredentialSource::Htpasswd).unwrap();
        assert_eq!((id.source(), id.namespaces), (CredentialSource::Htpasswd, None));
        assert!(hash.starts_with(b"$2"));
        let (id, _) = u.credential("alice", CredentialSource::Secrets).unwrap();
        assert_eq!(id.source(), CredentialSource::Secrets);
        let only = Users::open(None, Some(&sec)).unwrap();
        assert_eq!(
            only.credential("alice", CredentialSource::Secrets)
                .unwrap()
                .0
                .namespaces
                .unwrap()
                .len(),
            1
        );
        assert!(only.credential("alice", CredentialSource::Htpasswd).is_none());
        assert!(only.credential("bob", CredentialSource::Secrets).is_none());
        assert!(!only.is_empty());
        assert!(Users::open(None, Some(&t.path().join("missing"))).is_err());
    }

    #[tokio::test]
    async fn failed_logins_are_throttled_before_bcrypt() {
        let t = tempfile::tempdir().unwrap();
        let ht = t.path().join("htpasswd");
        std::fs::write(&ht, format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let u = Users::open(Some(&ht), None).unwrap().with_throttle(ThrottleConfig {
            enabled: true,
            free_attempts: 2,
            address_free_attempts: 100,
            max_backoff: std::time::Duration::from_secs(60),
        });
        let attacker: Option<IpAddr> = Some("198.51.100.7".parse().unwrap());
        let office: Option<IpAddr> = Some("203.0.113.9".parse().unwrap());
        let creds = |u: &str, p: &str| BasicCredentials::new(u, p);
        for user in ["alice", "mallory"] {
            for _ in 0..3 {
                assert!(u.verify(&creds(user, "guess"), attacker).await.unwrap().is_none());
            }
            // In back-off, even the right password is refused without being checked, and the
            // answer is the same whether the user exists or not.
            let e = u.verify(&creds(user, "pw"), attacker).await.unwrap_err();
            assert_eq!(e.retry_after_secs(), 1, "{user}");
        }
        assert!(u.verify(&creds("alice", "pw"), office).await.unwrap().is_some());
    }
}
