//! Validated names: repositories, tags, references and upload session ids.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::ParseError;

/// Longest repository name accepted (distribution's limit; it keeps paths and URLs bounded).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name following the OCI grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`MAX_NAME_LEN`] bytes. Any number of `/` segments is allowed within that length.
///
/// Because every component starts and ends with `[a-z0-9]`, no component can be `.` or `..`,
/// and the name contains nothing but `[a-z0-9._/-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParseError::Name("empty repository name"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(ParseError::Name("repository name longer than 255 characters"));
        }
        if !s.split('/').all(valid_component) {
            return Err(ParseError::Name(
                "repository name must match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((.|_|__|-+)[a-z0-9]+)*)*",
            ));
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl AsRef<str> for RepoName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ParseError::Tag)
        }
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// By tag.
    Tag(Tag),
    /// By digest.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(Reference::Digest)
        } else {
            s.parse().map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// An upload session id: a UUID in its lowercase hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(uuid::Uuid);

impl UploadId {
    /// A new random id.
    pub fn random() -> UploadId {
        UploadId(uuid::Uuid::new_v4())
    }
}

impl FromStr for UploadId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical hyphenated lowercase form: one spelling per session.
        let id = uuid::Uuid::try_parse(s).map_err(|_| ParseError::UploadId)?;
        let canonical = id.hyphenated().to_string();
        if canonical == s {
            Ok(UploadId(id))
        } else {
            Err(ParseError::UploadId)
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "a",
            "library/ubuntu",
            "a/b/c/d/e",
            "foo.bar",
            "a__b",
            "a---b",
            "x9/y_z",
            "0",
        ] {
            assert!(good.parse::<RepoName>().is_ok(), "{good} rejected");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a/../b", "..", "a/./b", "-a", "a-", "a___b", "a._b", "a%2eb", "a b", "a\0b",
            "a\\b", "a.", "_a",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} accepted");
        }
        let long = vec!["a"; 200].join("/");
        assert!(long.parse::<RepoName>().is_err());
    }

    #[test]
    fn tags() {
        assert!("latest".parse::<Tag>().is_ok());
        assert!("_x.Y-1".parse::<Tag>().is_ok());
        assert!("x".repeat(128).parse::<Tag>().is_ok());
        for bad in ["", ".x", "-x", "x".repeat(129).as_str(), "a/b", "a:b", "..", "a\0"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn references_and_ids() {
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert!("sha256:zz".parse::<Reference>().is_err());
        let id = UploadId::random();
        assert_eq!(id.to_string().parse::<UploadId>().unwrap(), id);
        assert!(id.to_string().to_uppercase().parse::<UploadId>().is_err());
        assert!("../x".parse::<UploadId>().is_err());
    }
}
