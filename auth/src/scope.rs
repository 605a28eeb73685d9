//! Access scopes as used by the Docker/OCI token protocol: `type:name:action[,action…]`, e.g.
//! `repository:team/app:pull,push` or `registry:catalog:*`.

use std::fmt;
use std::str::FromStr;

/// An action on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Read.
    Pull,
    /// Write.
    Push,
    /// Delete.
    Delete,
    /// Everything (`*`).
    All,
}

impl Action {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::All => "*",
        }
    }

    /// Whether holding `self` allows `wanted`.
    pub fn covers(self, wanted: Action) -> bool {
        self == Action::All || self == wanted
    }
}

/// Why a scope string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not `type:name:actions`.
    #[error("scope must look like type:name:actions, e.g. repository:team/app:pull,push")]
    Shape,
    /// Resource type empty or with invalid characters.
    #[error("invalid resource type in scope")]
    Type,
    /// Resource name empty.
    #[error("empty resource name in scope")]
    Name,
}

/// One requested or granted scope. Unknown action words are kept out (they grant nothing), so a
/// scope always lists known actions only, sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Resource type: `repository`, `registry`, …
    pub resource_type: String,
    /// Resource name; for repositories it may contain `/`, and for hosts with a port `:`.
    pub name: String,
    /// Actions.
    pub actions: Vec<Action>,
}

impl Scope {
    /// A repository scope.
    pub fn repository(name: &str, actions: &[Action]) -> Scope {
        let mut actions = actions.to_vec();
        actions.sort_unstable();
        actions.dedup();
        Scope {
            resource_type: "repository".into(),
            name: name.into(),
            actions,
        }
    }

    /// Whether this scope allows `action` on `resource_type:name`.
    pub fn allows(&self, resource_type: &str, name: &str, action: Action) -> bool {
        self.resource_type == resource_type && self.name == name && self.actions.iter().any(|a| a.covers(action))
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (resource_type, rest) = s.split_once(':').ok_or(ScopeError::Shape)?;
        let (name, actions) = rest.rsplit_once(':').ok_or(ScopeError::Shape)?;
        // "repository(plugin):name" style class suffixes are accepted and dropped.
        let resource_type = match resource_type.split_once('(') {
            Some((base, class)) if class.ends_with(')') => base,
            Some(_) => return Err(ScopeError::Type),
            None => resource_type,
        };
        let type_ok = !resource_type.is_empty()
            && resource_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !type_ok {
            return Err(ScopeError::Type);
        }
        if name.is_empty() {
            return Err(ScopeError::Name);
        }
        let mut acts: Vec<Action> = actions
            .split(',')
            .filter_map(|a| match a.trim() {
                "pull" => Some(Action::Pull),
                "push" => Some(Action::Push),
                "delete" => Some(Action::Delete),
                "*" => Some(Action::All),
                _ => None,
            })
            .collect();
        acts.sort_unstable();
        acts.dedup();
        Ok(Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: acts,
        })
    }
}

/// Merge scopes that name the same resource (type and name) into one holding the union of
/// their actions, in the order each resource first appears. `repository:a:pull` and
/// `repository:a:push` become `repository:a:pull,push`.
pub fn merge(scopes: impl IntoIterator<Item = Scope>) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for s in scopes {
        match out
            .iter_mut()
            .find(|o| o.resource_type == s.resource_type && o.name == s.name)
        {
            Some(o) => {
                o.actions.extend(s.actions);
                o.actions.sort_unstable();
                o.actions.dedup();
            }
            None => out.push(s),
        }
    }
    out
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
        write!(f, "{}:{}:{}", self.resource_type, self.name, actions.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_scopes() {
        let s: Scope = "repository:team/app:push,pull".parse().unwrap();
        assert_eq!(s.resource_type, "repository");
        assert_eq!(s.name, "team/app");
        assert_eq!(s.actions, vec![Action::Pull, Action::Push]);
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        assert!(s.allows("repository", "team/app", Action::Push));
        assert!(!s.allows("repository", "team/app", Action::Delete));
        assert!(!s.allows("repository", "team/other", Action::Pull));
    }

    #[test]
    fn names_may_hold_colons_and_unknown_actions_grant_nothing() {
        let s: Scope = "repository:host:5000/app:pull,fly".parse().unwrap();
        assert_eq!(s.name, "host:5000/app");
        assert_eq!(s.actions, vec![Action::Pull]);
        let c: Scope = "registry:catalog:*".parse().unwrap();
        assert!(c.allows("registry", "catalog", Action::Pull));
        let p: Scope = "repository(plugin):x:pull".parse().unwrap();
        assert_eq!(p.resource_type, "repository");
    }

    #[test]
    fn duplicates_merge_into_the_union() {
        let parse = |v: &[&str]| v.iter().map(|s| s.parse::<Scope>().unwrap()).collect::<Vec<_>>();
        let merged = merge(parse(&[
            "repository:a:pull",
            "registry:catalog:*",
            "repository:b:push",
            "repository:a:push,pull",
            "repository:a:delete",
            "repository(plugin):b:pull",
        ]));
        let text: Vec<String> = merged.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            text,
            [
                "repository:a:pull,push,delete",
                "registry:catalog:*",
                "repository:b:pull,push"
            ]
        );
        assert!(merge(Vec::new()).is_empty());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "repository",
            "repository:app",
            ":app:pull",
            "repository::pull",
            "re po:app:pull",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
    }
}
