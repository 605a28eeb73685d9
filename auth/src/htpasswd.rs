//! htpasswd files, bcrypt only.

use std::collections::HashMap;
use std::path::Path;

/// A parsed htpasswd file: user → bcrypt hash.
#[derive(Debug, Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

/// Why an htpasswd file cannot be used. The message names the file and the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtpasswdError {
    /// The file.
    pub file: String,
    /// 1-based line number (0 when the file itself is the problem).
    pub line: usize,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl std::fmt::Display for HtpasswdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.reason)
        }
    }
}

impl std::error::Error for HtpasswdError {}

fn scheme_name(hash: &str) -> &'static str {
    if hash.starts_with("$apr1$") {
        "MD5 (apr1)"
    } else if hash.starts_with("{SHA}") {
        "SHA-1"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "SHA-crypt"
    } else if hash.starts_with("$2x$") {
        "bcrypt $2x$ (buggy variant)"
    } else {
        "crypt or plain text"
    }
}

impl Htpasswd {
    /// Parse file contents; `file` is only used in error messages.
    pub fn parse(file: &Path, text: &str) -> Result<Htpasswd, HtpasswdError> {
        let err = |line: usize, reason: String| HtpasswdError {
            file: file.display().to_string(),
            line,
            reason,
        };
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err(i + 1, "expected user:hash".into()))?;
            if user.is_empty() {
                return Err(err(i + 1, "empty user name".into()));
            }
            let bcrypt_prefix = ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p));
            if !bcrypt_prefix {
                return Err(err(
                    i + 1,
                    format!(
                        "user {user:?} has a {} hash; only bcrypt ($2y$, $2a$, $2b$) is supported — recreate it with `htpasswd -B`",
                        scheme_name(hash)
                    ),
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(err(i + 1, format!("user {user:?} has a malformed bcrypt hash")));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(err(i + 1, format!("user {user:?} appears twice")));
            }
        }
        Ok(Htpasswd { users })
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|e| HtpasswdError {
            file: path.display().to_string(),
            line: 0,
            reason: format!("cannot read the htpasswd file: {e}"),
        })?;
        Htpasswd::parse(path, &text)
    }

    /// The hash of a user.
    pub fn hash(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Default bcrypt cost of [`entry`].
pub const DEFAULT_COST: u32 = 10;

/// An htpasswd line `user:$2y$…` for a password.
pub fn entry(user: &str, password: &str, cost: u32) -> Result<String, String> {
    if user.is_empty() || user.contains(':') || user.contains(char::is_whitespace) {
        return Err("the user name must be non-empty, without ':' or spaces".into());
    }
    if !(4..=31).contains(&cost) {
        return Err("the bcrypt cost must be between 4 and 31".into());
    }
    let parts = bcrypt::hash_with_result(password, cost).map_err(|e| e.to_string())?;
    Ok(format!("{user}:{}", parts.format_for_version(bcrypt::Version::TwoY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_verify() {
        let line = entry("ci", "s3cret", 4).unwrap();
        let h = Htpasswd::parse(Path::new("x"), &line).unwrap();
        assert!(h.hash("ci").unwrap().starts_with("$2y$04$"));
        assert!(bcrypt::verify("s3cret", h.hash("ci").unwrap()).unwrap());
        assert!(entry("a:b", "p", 4).is_err());
        assert!(entry("a", "p", 3).is_err());
    }

    #[test]
    fn bcrypt_only_with_line_numbers() {
        let p = Path::new("/etc/registry/htpasswd");
        let good = bcrypt::hash("secret", 4).unwrap();
        let h = Htpasswd::parse(p, &format!("# comment\n\nalice:{good}\n")).unwrap();
        assert_eq!(h.len(), 1);
        assert!(h.hash("alice").is_some());
        let e = Htpasswd::parse(p, &format!("alice:{good}\nbob:$apr1$abc$def\n")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("/etc/registry/htpasswd:2:"), "{e}");
        assert!(e.reason.contains("htpasswd -B") && e.reason.contains("MD5"), "{e}");
        assert!(
            Htpasswd::parse(p, "carol:{SHA}xyz")
                .unwrap_err()
                .reason
                .contains("SHA-1")
        );
        assert!(Htpasswd::parse(p, "dave:$2y$10$short").is_err());
        assert!(Htpasswd::parse(p, "nocolon").is_err());
        assert!(Htpasswd::parse(p, &format!("a:{good}\na:{good}")).is_err());
    }
}
