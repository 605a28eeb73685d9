//! What a pull-through cache's eviction reads and records: when each image was last used, and
//! how many bytes each repository links. Both metadata stores answer it; the rule of which image
//! goes is the caller's, the rule of what goes with it is [`crate::Sweep::Image`].

use crate::digest::Digest;
use crate::name::RepoName;

/// A manifest of a repository and when it was last used (pulled, or stored: whichever is later),
/// in seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// The repository.
    pub repo: RepoName,
    /// The manifest.
    pub digest: Digest,
    /// Last use, seconds since the epoch.
    pub used: u64,
}

/// How a claim on a blob's download ended (see [`crate::MetaStore::claim_fill`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillClaim {
    /// The caller holds it (new, renewed, or taken over from an expired claim).
    Ours,
    /// Another owner holds an unexpired claim: its owner text, as it claimed (empty when the
    /// claim ended between the attempt and the look at it).
    Held(String),
}

impl FillClaim {
    /// Whether the caller holds the claim.
    pub fn is_ours(&self) -> bool {
        matches!(self, FillClaim::Ours)
    }
}

/// Repositories whose names start with `prefix/` (every repository when `prefix` is empty), as
/// the range of names `[low, high)`: names are lowercase letters, digits and `._-/`, so `/` + 1
/// (`0`) ends a prefix's range and `{` (after `z`) ends all.
pub fn name_range(prefix: &str) -> (String, String) {
    if prefix.is_empty() {
        (String::new(), "{".to_owned())
    } else {
        (format!("{prefix}/"), format!("{prefix}0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_holds_exactly_its_names() {
        let (lo, hi) = name_range("hub");
        let inside = |n: &str| n >= lo.as_str() && n < hi.as_str();
        assert!(inside("hub/library/alpine") && inside("hub/a") && inside("hub/z-z/9"));
        assert!(!inside("hub") && !inside("hubx/a") && !inside("hub-x/a") && !inside("hub.a/b") && !inside("hu/b"));
        let (lo, hi) = name_range("");
        assert!(
            ["a", "zzz/z", "0", "9.9/_"]
                .iter()
                .all(|n| *n >= lo.as_str() && *n < hi.as_str())
        );
    }
}
