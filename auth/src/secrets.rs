//! One credential per namespace, from a directory laid out the way Kubernetes mounts Secrets:
//!
//! ```text
//! <directory>/team-a/username
//! <directory>/team-a/password
//! <directory>/team-b/username
//! <directory>/team-b/password
//! ```
//!
//! Each subfolder is a namespace; a client whose user name and password equal the two files may
//! pull and push under `<namespace>` and `<namespace>/**`. Names starting with `.` are skipped
//! (Kubernetes keeps its `..data` and timestamped folders there), symlinks are followed, and
//! one trailing line break is dropped from each file (`echo secret > password` works).
//!
//! The directory is re-read by [`SecretsDir::reload`]; Kubernetes' atomic update (a new
//! timestamped folder, then the `..data` symlink swapped to it) is seen as one change. Passwords
//! are kept only as keyed SHA-256 digests and compared in constant time, plus one digest salted
//! with the namespace and user name that stays the same across restarts, so the token server
//! can tell whether a password changed since a refresh token was issued (tokens carry only an
//! HMAC of it, keyed by the signing key). Nothing read from a file is ever logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Largest `username` or `password` file taken.
const MAX_FILE: u64 = 4096;

/// Why the secrets directory cannot be used at all.
#[derive(Debug, thiserror::Error)]
#[error("{dir}: {reason}")]
pub struct SecretsError {
    /// The directory.
    pub dir: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    namespace: String,
    user: [u8; 32],
    password: [u8; 32],
    /// Kept to answer "which namespaces does this user have" for refresh tokens.
    user_name: String,
    /// Salted digest of namespace, user and password, stable across restarts (see the module
    /// documentation).
    stamp: [u8; 32],
}

fn stamp(namespace: &str, user: &str, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"berth secrets credential stamp v1\0");
    for part in [namespace.as_bytes(), user.as_bytes(), password] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// What one reading of the directory found.
#[derive(Clone, Default, PartialEq, Eq)]
struct Snapshot {
    entries: Vec<Entry>,
    /// Folders skipped, with the reason (no secret content), for the log.
    skipped: Vec<String>,
}

/// The per-namespace credentials.
pub struct SecretsDir {
    dir: PathBuf,
    key: [u8; 32],
    current: RwLock<Arc<Snapshot>>,
}

impl std::fmt::Debug for SecretsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsDir")
            .field("dir", &self.dir)
            .field("namespaces", &self.namespaces())
            .finish()
    }
}

/// Whether `name` can be a repository namespace: path components of lowercase letters and
/// digits joined by `.`, `_`, `__` or `-` runs (the distribution grammar), no `/`.
fn valid_namespace(name: &str) -> bool {
    fn sep_ok(s: &str) -> bool {
        s == "." || s == "_" || s == "__" || s.bytes().all(|b| b == b'-')
    }
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 255 || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut sep = String::new();
    for &c in b {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !sep.is_empty() && !sep_ok(&sep) {
                return false;
            }
            sep.clear();
        } else if matches!(c, b'.' | b'_' | b'-') {
            sep.push(c as char);
        } else {
            return false;
        }
    }
    true
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut v)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if v.len() as u64 > MAX_FILE {
        return Err(format!("{} is larger than {MAX_FILE} bytes", path.display()));
    }
    if v.ends_with(b"\n") {
        v.pop();
        if v.ends_with(b"\r") {
            v.pop();
        }
    }
    Ok(v)
}

impl SecretsDir {
    /// Read the directory. It must exist and be readable; individual namespaces that are
    /// incomplete or misnamed are skipped with a warning (see [`SecretsDir::skipped`]).
    pub fn open(dir: &Path) -> Result<SecretsDir, SecretsError> {
        let s = SecretsDir {
            dir: dir.to_owned(),
            key: rand::random(),
            current: RwLock::new(Arc::default()),
        };
        let snap = s.read().map_err(|reason| SecretsError {
            dir: dir.display().to_string(),
            reason,
        })?;
        *s.current.write() = Arc::new(snap);
        Ok(s)
    }

    fn digest(&self, what: &[u8], field: u8) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update([field]);
        h.update(what);
        h.finalize().into()
    }

    fn read(&self) -> Result<Snapshot, String> {
        let listing = std::fs::read_dir(&self.dir).map_err(|e| format!("cannot read the directory: {e}"))?;
        let mut snap = Snapshot::default();
        let mut names: Vec<String> = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| format!("cannot read the directory: {e}"))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                snap.skipped.push("a folder whose name is not UTF-8".into());
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            // Follows symlinks (Kubernetes links each key to ..data/<key>).
            if !entry.path().is_dir() {
                continue;
            }
            names.push(name);
        }
        names.sort();
        for name in names {
            if !valid_namespace(&name) {
                snap.skipped.push(format!(
                    "{name}: not a valid repository namespace (lowercase letters, digits, and . _ - between them)"
                ));
                continue;
            }
            let folder = self.dir.join(&name);
            let user = read_small(&folder.join("username"));
            let password = read_small(&folder.join("password"));
            let (user, password) = match (user, password) {
                (Ok(u), Ok(p)) => (u, p),
                (Err(e), _) | (_, Err(e)) => {
                    snap.skipped.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let Ok(user_name) = String::from_utf8(user) else {
                snap.skipped.push(format!("{name}: username is not UTF-8"));
                continue;
            };
            if user_name.is_empty() || password.is_empty() || user_name.contains(':') {
                snap.skipped.push(format!(
                    "{name}: username and password must not be empty, and username must not contain ':'"
                ));
                continue;
            }
            snap.entries.push(Entry {
                stamp: stamp(&name, &user_name, &password),
                namespace: name,
                user: self.digest(user_name.as_bytes(), b'u'),
                password: self.digest(&password, b'p'),
                user_name,
            });
        }
        Ok(snap)
    }

    /// Re-read the directory. Returns `Some(namespaces)` when what it holds changed. An
    /// unreadable directory counts as empty, so removed credentials stop working.
    pub fn reload(&self) -> Option<Vec<String>> {
        let snap = match self.read() {
            Ok(s) => s,
            Err(reason) => {
                tracing::warn!(dir = %self.dir.display(), %reason, "secrets directory unreadable: no namespace credentials are accepted until it is back");
                Snapshot::default()
            }
        };
        if *self.current.read().as_ref() == snap {
            return None;
        }
        *self.current.write() = Arc::new(snap);
        Some(self.namespaces())
    }

    /// The namespaces with usable credentials.
    pub fn namespaces(&self) -> Vec<String> {
        self.current
            .read()
            .entries
            .iter()
            .map(|e| e.namespace.clone())
            .collect()
    }

    /// Folders that were skipped at the last reading, with the reason (never file contents).
    pub fn skipped(&self) -> Vec<String> {
        self.current.read().skipped.clone()
    }

    /// The namespaces whose credentials are exactly `user` and `password`. Every entry is
    /// compared, in constant time, whatever matches.
    pub fn check(&self, user: &str, password: &str) -> Vec<String> {
        let u = self.digest(user.as_bytes(), b'u');
        let p = self.digest(password.as_bytes(), b'p');
        let snap = self.current.read().clone();
        let mut out = Vec::new();
        for e in &snap.entries {
            let hit = e.user.ct_eq(&u) & e.password.ct_eq(&p);
            if bool::from(hit) {
                out.push(e.namespace.clone());
            }
        }
        out
    }

    /// The namespaces held by `user` (for refresh tokens, where no password is presented).
    pub fn namespaces_of(&self, user: &str) -> Vec<String> {
        let snap = self.current.read().clone();
        snap.entries
            .iter()
            .filter(|e| e.user_name == user)
            .map(|e| e.namespace.clone())
            .collect()
    }

    /// What `user`'s credentials are now, as bytes that change whenever one of their
    /// namespaces or passwords does (`None` when the user holds no namespace). For binding
    /// refresh tokens; it holds digests only.
    pub fn credential_stamp(&self, user: &str) -> Option<Vec<u8>> {
        let snap = self.current.read().clone();
        let mut out = Vec::new();
        for e in snap.entries.iter().filter(|e| e.user_name == user) {
            out.extend_from_slice(&(e.namespace.len() as u64).to_le_bytes());
            out.extend_from_slice(e.namespace.as_bytes());
            out.extend_from_slice(&e.stamp);
        }
        (!out.is_empty()).then_some(out)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, ns: &str, user: &str, password: &str) {
        std::fs::create_dir_all(dir.join(ns)).unwrap();
        std::fs::write(dir.join(ns).join("username"), user).unwrap();
        std::fs::write(dir.join(ns).join("password"), password).unwrap();
    }

    #[test]
    fn namespace_names() {
        for ok in ["team-a", "a", "a.b", "a__b", "a--b", "0x"] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a/b", "a..b", "a___b", "..data", "a b", "a._b"] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn reads_checks_and_reloads() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        put(d, "team-a", "ci-a", "s3cret\n");
        put(d, "team-b", "ci-b", "other");
        std::fs::create_dir_all(d.join("Bad_Name")).unwrap();
        std::fs::create_dir_all(d.join("half")).unwrap();
        std::fs::write(d.join("half/username"), "x").unwrap();
        std::fs::write(d.join("stray-file"), "x").unwrap();
        let s = SecretsDir::open(d).unwrap();
        assert_eq!(s.namespaces(), vec!["team-a", "team-b"]);
        assert_eq!(s.skipped().len(), 2, "{:?}", s.skipped());
        assert!(s.skipped().iter().all(|r| !r.contains("s3cret")));
        assert_eq!(s.check("ci-a", "s3cret"), vec!["team-a"]);
        assert!(s.check("ci-a", "s3cret\n").is_empty());
        assert!(s.check("ci-a", "other").is_empty());
        assert!(s.check("ci-b", "s3cret").is_empty());
        assert!(s.check("nobody", "").is_empty());
        assert_eq!(s.namespaces_of("ci-b"), vec!["team-b"]);
        let stamp_a = s.credential_stamp("ci-a").unwrap();
        assert!(s.credential_stamp("nobody").is_none());
        assert!(!stamp_a.windows(6).any(|w| w == b"s3cret"), "no password in the stamp");
        assert_eq!(
            SecretsDir::open(d).unwrap().credential_stamp("ci-a").unwrap(),
            stamp_a,
            "the stamp survives a restart"
        );
        assert!(s.reload().is_none(), "nothing changed");
        std::fs::remove_dir_all(d.join("team-b")).unwrap();
        assert_eq!(s.reload(), Some(vec!["team-a".to_owned()]));
        assert!(s.check("ci-b", "other").is_empty());
        put(d, "team-a", "ci-a", "rotated");
        assert!(s.reload().is_some());
        assert_ne!(
            s.credential_stamp("ci-a").unwrap(),
            stamp_a,
            "a new password, a new stamp"
        );
        assert!(s.check("ci-a", "s3cret").is_empty());
        assert_eq!(s.check("ci-a", "rotated"), vec!["team-a"]);
        assert!(!format!("{s:?}").contains("rotated"));
    }

    #[cfg(unix)]
    #[test]
    fn kubernetes_atomic_update() {
        use std::os::unix::fs::symlink;
        // The layout of a projected Secret volume with items team-a/username, team-a/password:
        // <dir>/..2026_01/team-a/{username,password}, <dir>/..data -> ..2026_01,
        // <dir>/team-a -> ..data/team-a
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        put(&d.join("..2026_01"), "team-a", "ci", "one");
        symlink("..2026_01", d.join("..data")).unwrap();
        symlink("..data/team-a", d.join("team-a")).unwrap();
        let s = SecretsDir::open(d).unwrap();
        assert_eq!(s.namespaces(), vec!["team-a"]);
        assert_eq!(s.check("ci", "one"), vec!["team-a"]);
        // The kubelet writes a new timestamped folder, then renames a new ..data link over the old.
        put(&d.join("..2026_02"), "team-a", "ci", "two");
        symlink("..2026_02", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..2026_01")).unwrap();
        assert!(s.reload().is_some());
        assert!(s.check("ci", "one").is_empty());
        assert_eq!(s.check("ci", "two"), vec!["team-a"]);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let e = SecretsDir::open(Path::new("/nonexistent/berth-secrets")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/berth-secrets"), "{e}");
    }
}
