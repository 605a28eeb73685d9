//! Which manifests of a repository garbage collection keeps — the one rule both metadata
//! stores apply: a manifest stays when it is tagged, younger than the grace period, reached from
//! one of those through an index's children, or a referrer (signature, SBOM) of a manifest that
//! stays.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;
use crate::manifest::{self, ManifestError};

/// What one manifest of the repository references.
pub(crate) struct Refs {
    /// Blobs it references.
    pub(crate) blobs: Vec<Digest>,
    /// Manifests it lists (an index's children).
    pub(crate) children: Vec<String>,
    /// The manifest it refers to (`subject`).
    pub(crate) subject: Option<String>,
    /// Pushed within the grace period.
    pub(crate) young: bool,
}

impl Refs {
    /// What the stored manifest `bytes` of `media_type` references.
    pub(crate) fn of(media_type: &str, bytes: &[u8], young: bool) -> Result<Refs, ManifestError> {
        let info = manifest::parse(Some(media_type), bytes)?;
        Ok(Refs {
            blobs: info.blobs,
            children: info.children.iter().map(Digest::to_string).collect(),
            subject: info.subject.map(|s| s.to_string()),
            young,
        })
    }
}

/// Which manifests a sweep of one repository removes (before the blob links that no remaining
/// manifest references).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sweep {
    /// None.
    Links,
    /// Those no tag reaches ([`unreached`] from the tags).
    Untagged,
    /// One image, as a pull-through cache evicts it: this manifest, with its tags, and what
    /// only it reaches (the children of an index, referrers), then the links of the blobs they
    /// referenced that no remaining manifest references (no other link). Nothing when another
    /// manifest of the repository lists it as a child: it is part of an image that stays.
    Image(Digest),
}

/// The manifests `sweep` removes from a repository holding `manifests`, whose tags point at
/// `tagged` (read only for [`Sweep::Untagged`]).
pub(crate) fn removable(
    manifests: &HashMap<String, Refs>,
    sweep: &Sweep,
    tagged: impl FnOnce() -> Vec<String>,
) -> Vec<String> {
    match sweep {
        Sweep::Links => Vec::new(),
        Sweep::Untagged => unreached(manifests, tagged()),
        Sweep::Image(d) => {
            let target = d.to_string();
            let listed = |m: &str| manifests.values().any(|r| r.children.iter().any(|c| c == m));
            if !manifests.contains_key(&target) || listed(&target) {
                return Vec::new();
            }
            // Every other image stays: each manifest no index lists and that refers to nothing
            // (a referrer stays with its subject).
            let roots = manifests
                .iter()
                .filter(|(m, r)| **m != target && r.subject.is_none() && !listed(m))
                .map(|(m, _)| m.clone())
                .collect();
            unreached(manifests, roots)
        }
    }
}

/// The manifests that nothing keeps: not tagged, not young, not reached from either through
/// children, nor a referrer of anything reached.
pub(crate) fn unreached(manifests: &HashMap<String, Refs>, tagged: Vec<String>) -> Vec<String> {
    let mut reached: HashSet<&str> = HashSet::new();
    let mut todo: Vec<&str> = tagged.iter().map(String::as_str).collect();
    todo.extend(manifests.iter().filter(|(_, r)| r.young).map(|(d, _)| d.as_str()));
    loop {
        while let Some(d) = todo.pop() {
            if let Some((key, r)) = manifests.get_key_value(d)
                && reached.insert(key.as_str())
            {
                todo.extend(r.children.iter().map(String::as_str));
            }
        }
        // Referrers (signatures, SBOMs) of what is reached are reached too.
        todo = manifests
            .iter()
            .filter(|(d, r)| !reached.contains(d.as_str()) && r.subject.as_deref().is_some_and(|s| reached.contains(s)))
            .map(|(d, _)| d.as_str())
            .collect();
        if todo.is_empty() {
            break;
        }
    }
    let mut out: Vec<String> = manifests
        .keys()
        .filter(|d| !reached.contains(d.as_str()))
        .cloned()
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(children: &[&str], subject: Option<&str>, young: bool) -> Refs {
        Refs {
            blobs: Vec::new(),
            children: children.iter().map(|s| s.to_string()).collect(),
            subject: subject.map(str::to_string),
            young,
        }
    }

    #[test]
    fn tags_children_referrers_and_young_manifests_are_kept() {
        let mut m = HashMap::new();
        m.insert("index".to_string(), refs(&["child"], None, false));
        m.insert("child".to_string(), refs(&[], None, false));
        m.insert("sig".to_string(), refs(&[], Some("child"), false));
        m.insert("sig-of-sig".to_string(), refs(&[], Some("sig"), false));
        m.insert("new".to_string(), refs(&[], None, true));
        m.insert("loose".to_string(), refs(&["child"], None, false));
        m.insert("loose-sig".to_string(), refs(&[], Some("loose"), false));
        assert_eq!(unreached(&m, vec!["index".into()]), ["loose", "loose-sig"]);
    }

    #[test]
    fn an_image_goes_with_what_only_it_reaches() {
        let d = |s: &str| Digest::of(crate::digest::Algorithm::Sha256, s.as_bytes());
        let k = |s: &str| d(s).to_string();
        let mut m = HashMap::new();
        m.insert(k("index"), refs(&[&k("child"), &k("shared")], None, false));
        m.insert(k("child"), refs(&[], None, false));
        m.insert(k("shared"), refs(&[], None, false));
        m.insert(k("other-index"), refs(&[&k("shared")], None, false));
        m.insert(k("sig"), refs(&[], Some(&k("index")), false));
        m.insert(k("plain"), refs(&[], None, false));
        m.insert(k("fresh"), refs(&[], None, true));
        let mut want = vec![k("index"), k("child"), k("sig")];
        want.sort();
        assert_eq!(removable(&m, &Sweep::Image(d("index")), Vec::new), want);
        // A child of an index that stays, a young image, an unknown one: nothing.
        assert!(removable(&m, &Sweep::Image(d("shared")), Vec::new).is_empty());
        assert!(removable(&m, &Sweep::Image(d("fresh")), Vec::new).is_empty());
        assert!(removable(&m, &Sweep::Image(d("nope")), Vec::new).is_empty());
        assert_eq!(removable(&m, &Sweep::Image(d("plain")), Vec::new), [k("plain")]);
        assert!(removable(&m, &Sweep::Links, Vec::new).is_empty());
    }
}
