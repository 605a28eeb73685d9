//! HTTP Basic authentication against an htpasswd file, with a short-lived cache of successful
//! checks so that a client with good credentials does not pay for bcrypt on every request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::htpasswd::{Htpasswd, HtpasswdError};

/// How long a successful check is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most remembered successes.
pub const CACHE_CAPACITY: usize = 10_000;
/// bcrypt checks allowed to run at once; more wait, so bad passwords cannot take every core.
const BCRYPT_CONCURRENCY: usize = 4;
/// Verified against for unknown users, so their answer takes as long as a wrong password.
const DECOY_HASH: &str = "$2y$10$/1d0zBKxRXNFI2D8xiVamO6MGP1tRUXMYFx2Iy0FiGQs8fmuVF5be";

/// Credentials from an `Authorization: Basic …` header.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// User name.
    pub user: String,
    /// Password (never logged: `Debug` hides it).
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl BasicCredentials {
    /// Credentials from a user name and a password.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> BasicCredentials {
        BasicCredentials {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Parse an `Authorization` header value; `None` unless it is well-formed Basic.
    pub fn from_header(value: &str) -> Option<BasicCredentials> {
        let (scheme, rest) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        Some(BasicCredentials {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

struct Loaded {
    htpasswd: Htpasswd,
    stamp: Option<(SystemTime, u64)>,
}

/// An htpasswd-backed verifier.
pub struct BasicAuth {
    path: PathBuf,
    file: RwLock<Arc<Loaded>>,
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    cache_key: [u8; 32],
    bcrypt_slots: Semaphore,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl BasicAuth {
    /// Load the htpasswd file; any problem is an error that names the file and line.
    pub fn open(path: &Path) -> Result<BasicAuth, HtpasswdError> {
        let htpasswd = Htpasswd::load(path)?;
        Ok(BasicAuth {
            path: path.to_owned(),
            file: RwLock::new(Arc::new(Loaded {
                htpasswd,
                stamp: stamp(path),
            })),
            cache: Mutex::new(HashMap::new()),
            cache_key: rand::random(),
            bcrypt_slots: Semaphore::new(BCRYPT_CONCURRENCY),
        })
    }

    /// Whether the file has this user.
    pub fn knows(&self, user: &str) -> bool {
        self.file.read().htpasswd.hash(user).is_some()
    }

    /// The stored bcrypt hash of a user (for binding refresh tokens to it; never logged).
    pub fn stored_hash(&self, user: &str) -> Option<String> {
        self.file.read().htpasswd.hash(user).map(str::to_owned)
    }

    /// Number of users in the file.
    pub fn users(&self) -> usize {
        self.file.read().htpasswd.len()
    }

    /// Re-read the file if it changed since it was loaded. A file that no longer parses is
    /// not taken (the previous users stay) and the error is returned for logging.
    pub fn reload_if_changed(&self) -> Result<bool, HtpasswdError> {
        let now = stamp(&self.path);
        if now == self.file.read().stamp {
            return Ok(false);
        }
        let htpasswd = Htpasswd::load(&self.path)?;
        *self.file.write() = Arc::new(Loaded { htpasswd, stamp: now });
        self.cache.lock().clear();
        Ok(true)
    }

    fn key(&self, c: &BasicCredentials) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update((c.user.len() as u64).to_le_bytes());
        h.update(c.user.as_bytes());
        h.update(c.password.as_bytes());
        h.finalize().into()
    }

    /// Check credentials. A recent success is answered from the cache; otherwise bcrypt runs
    /// on a blocking thread, with a bounded number running at once.
    pub async fn verify(&self, c: &BasicCredentials) -> bool {
        self.verify_gated(c, || Ok::<(), std::convert::Infallible>(()))
            .await
            .unwrap_or(false)
    }

    /// [`BasicAuth::verify`], asking `gate` again once a bcrypt slot is free and before bcrypt
    /// runs: attempts queued behind others are refused if those others' failures started a
    /// back-off meanwhile.
    pub async fn verify_gated<E>(&self, c: &BasicCredentials, gate: impl Fn() -> Result<(), E>) -> Result<bool, E> {
        let key = self.key(c);
        let now = Instant::now();
        if self.cache.lock().get(&key).is_some_and(|exp| *exp > now) {
            return Ok(true);
        }
        let hash = self.file.read().htpasswd.hash(&c.user).map(str::to_owned);
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.to_owned());
        let password = c.password.clone();
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return Ok(false);
        };
        gate()?;
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        let ok = matched && known;
        if ok {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, exp| *exp > now);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(key, now + CACHE_TTL);
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> BasicCredentials {
        BasicCredentials::new(u, p)
    }

    #[test]
    fn parses_basic_header() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:pa:ss")
        );
        assert_eq!(BasicCredentials::from_header(&v), Some(creds("bob", "pa:ss")));
        assert_eq!(BasicCredentials::from_header("Bearer abc"), None);
        assert_eq!(BasicCredentials::from_header("Basic !!!"), None);
        assert!(!format!("{:?}", creds("u", "hunter2")).contains("hunter2"));
    }

    #[tokio::test]
    async fn verifies_caches_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", bcrypt::hash("right", 4).unwrap())).unwrap();
        let auth = BasicAuth::open(&path).unwrap();
        assert!(auth.verify(&creds("alice", "right")).await);
        assert!(!auth.verify(&creds("alice", "wrong")).await);
        assert!(!auth.verify(&creds("mallory", "right")).await);
        assert_eq!(auth.cache.lock().len(), 1);
        // change the password: the reload drops the cached success
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(
            &path,
            format!(
                "alice:{}\nbob:{}\n",
                bcrypt::hash("new", 4).unwrap(),
                bcrypt::hash("b", 4).unwrap()
            ),
        )
        .unwrap();
        assert!(auth.reload_if_changed().unwrap());
        assert!(!auth.verify(&creds("alice", "right")).await);
        assert!(auth.verify(&creds("alice", "new")).await);
        assert_eq!(auth.users(), 2);
        // a broken file keeps the previous users
        std::fs::write(&path, "alice:$apr1$x$y\n").unwrap();
        assert!(auth.reload_if_changed().is_err());
        assert!(auth.verify(&creds("bob", "b")).await);
    }
}
