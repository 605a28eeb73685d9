//! What a committed write changed, in the terms of the read caches: the answers that may now be
//! wrong. Metadata stores pass them to the engine's cache for their own commits and for those of
//! other processes or replicas (SQLite: a log table read when the database changed; PostgreSQL:
//! the payload of the notification each write sends), so that a commit drops only what it
//! changed.
//!
//! A change travels as one line of text, `<kind> <repository> <key>`, so every store and every
//! replica reads the others' changes.

use crate::digest::Digest;
use crate::name::{RepoName, Tag};

/// The answers a write may have made wrong.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// The tag now points elsewhere or nowhere.
    Tag(RepoName, Tag),
    /// The repository's manifest with this digest was put or removed.
    Manifest(RepoName, Digest),
    /// The repository no longer links this blob.
    Blob(RepoName, Digest),
    /// Anything of the repository (a manifest deleted with its tags, a garbage collection).
    Repo(RepoName),
    /// Anything at all (changes were missed: a lost notification connection, a pruned log, a
    /// writer that does not log).
    All,
}

impl Change {
    /// The line this change travels as.
    pub fn encode(&self) -> String {
        match self {
            Change::Tag(r, t) => format!("t {r} {t}"),
            Change::Manifest(r, d) => format!("m {r} {d}"),
            Change::Blob(r, d) => format!("b {r} {d}"),
            Change::Repo(r) => format!("r {r}"),
            Change::All => "*".to_owned(),
        }
    }

    /// The change a line names. A line this version cannot read means [`Change::All`], except a
    /// bare repository name, which is what earlier versions notified: [`Change::Repo`].
    pub fn decode(line: &str) -> Change {
        let mut parts = line.splitn(3, ' ');
        let (kind, repo, key) = (parts.next(), parts.next(), parts.next());
        let repo_of = |r: Option<&str>| r.and_then(|r| r.parse::<RepoName>().ok());
        let parsed = match (kind, repo_of(repo), key) {
            (Some("t"), Some(r), Some(k)) => k.parse::<Tag>().ok().map(|t| Change::Tag(r, t)),
            (Some("m"), Some(r), Some(k)) => k.parse::<Digest>().ok().map(|d| Change::Manifest(r, d)),
            (Some("b"), Some(r), Some(k)) => k.parse::<Digest>().ok().map(|d| Change::Blob(r, d)),
            (Some("r"), Some(r), None) => Some(Change::Repo(r)),
            (Some("*"), None, None) => Some(Change::All),
            (Some(bare), None, None) => bare.parse::<RepoName>().ok().map(Change::Repo),
            _ => None,
        };
        parsed.unwrap_or(Change::All)
    }

    /// Several changes as one text (lines), at most `limit` bytes: when they do not fit, one
    /// [`Change::Repo`] per repository, and when even that does not fit, [`Change::All`].
    pub fn encode_all(changes: &[Change], limit: usize) -> String {
        let text = changes.iter().map(Change::encode).collect::<Vec<_>>().join("\n");
        if text.len() <= limit {
            return text;
        }
        let mut repos: Vec<&RepoName> = changes.iter().filter_map(Change::repo).collect();
        repos.sort();
        repos.dedup();
        let coarse = repos.iter().map(|r| format!("r {r}")).collect::<Vec<_>>().join("\n");
        if coarse.len() <= limit && !changes.contains(&Change::All) {
            coarse
        } else {
            Change::All.encode()
        }
    }

    /// The changes a text of lines names.
    pub fn decode_all(text: &str) -> Vec<Change> {
        text.lines().filter(|l| !l.is_empty()).map(Change::decode).collect()
    }

    /// The repository it is about (`None` for [`Change::All`]).
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Change::Tag(r, _) | Change::Manifest(r, _) | Change::Blob(r, _) | Change::Repo(r) => Some(r),
            Change::All => None,
        }
    }
}

/// Where a store delivers changes (the engine's cache).
pub type ChangeSink = std::sync::Arc<dyn Fn(&[Change]) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn every_change_reads_back_as_written() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        for c in [
            Change::Tag(repo("a/b"), "v1.0-rc_1".parse().unwrap()),
            Change::Manifest(repo("a"), d.clone()),
            Change::Blob(repo("x/y/z"), d),
            Change::Repo(repo("library/alpine")),
            Change::All,
        ] {
            assert_eq!(Change::decode(&c.encode()), c);
        }
    }

    #[test]
    fn what_cannot_be_read_drops_everything_and_a_bare_name_is_its_repository() {
        assert_eq!(Change::decode("library/alpine"), Change::Repo(repo("library/alpine")));
        for bad in [
            "",
            "t a",
            "t a bad:tag!",
            "m a sha256:zz",
            "q a b",
            "r a extra",
            "Not A Repo",
            "* x",
        ] {
            assert_eq!(Change::decode(bad), Change::All, "{bad:?}");
        }
    }

    #[test]
    fn too_many_changes_become_repositories_then_everything() {
        let tags: Vec<Change> = (0..100)
            .map(|i| {
                Change::Tag(
                    repo(if i % 2 == 0 { "a" } else { "b" }),
                    format!("t{i}").parse().unwrap(),
                )
            })
            .collect();
        let all = Change::encode_all(&tags, 10_000);
        assert_eq!(Change::decode_all(&all), tags);
        assert_eq!(
            Change::decode_all(&Change::encode_all(&tags, 100)),
            [Change::Repo(repo("a")), Change::Repo(repo("b"))]
        );
        assert_eq!(Change::decode_all(&Change::encode_all(&tags, 5)), [Change::All]);
        assert!(Change::decode_all("").is_empty());
    }
}
