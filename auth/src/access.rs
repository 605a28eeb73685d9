//! Repository access rules: who may pull, push or delete where.
//!
//! ```json
//! {"defaultPolicy": "deny",
//!  "adminUsers": ["root"],
//!  "anonymous": [{"repository": "public/**", "permissions": ["pull"]}],
//!  "rules": [{"repository": "team-a/*", "users": ["alice", "bob"], "permissions": ["pull", "push"]},
//!            {"repository": "${user}/**", "users": ["*"], "permissions": ["pull", "push", "delete"]}]}
//! ```
//!
//! The first rule whose repository pattern and user list both match decides: its permissions are
//! granted and nothing else. Admin users may do everything. When no rule matches, the default
//! policy decides. Patterns: `*` matches within one path segment (`team-*` too), `**` matches
//! any number of segments, `${user}` is the caller's name taken literally. A rule may carry
//! `"ips": ["10.0.0.0/8", "2001:db8::/32"]`: it is then skipped unless the client address is in
//! one of the networks.
//!
//! A namespace credential (see [`crate::secrets`]) may always pull and push in its namespaces,
//! whatever the rules say; rules can grant it more.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use serde::Deserialize;

use crate::scope::{Action, Scope};

/// What happens when no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Everything is allowed.
    Allow,
    /// Nothing is allowed.
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    User,
    Star,
    DoubleStar,
}

/// A compiled repository pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Compile a pattern.
    pub fn new(source: &str) -> Pattern {
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut rest = source;
        while let Some(c) = rest.chars().next() {
            let (tok, len) = if rest.starts_with("**") {
                (Some(Token::DoubleStar), 2)
            } else if rest.starts_with("${user}") {
                (Some(Token::User), 7)
            } else if c == '*' {
                (Some(Token::Star), 1)
            } else {
                lit.push(c);
                (None, c.len_utf8())
            };
            if let Some(t) = tok {
                if !lit.is_empty() {
                    tokens.push(Token::Literal(std::mem::take(&mut lit)));
                }
                tokens.push(t);
            }
            rest = &rest[len..];
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Pattern {
            source: source.to_owned(),
            tokens,
        }
    }

    /// Whether `name` matches for `user` (`None`: anonymous, so `${user}` matches nothing).
    pub fn matches(&self, name: &str, user: Option<&str>) -> bool {
        // Each (token, position) state is decided once and remembered when it fails, and a star
        // either ends or takes one more character: a match costs at most tokens × name length
        // steps, whatever the stars (plain backtracking is exponential in them, and names come
        // from clients).
        struct Matcher<'a> {
            tokens: &'a [Token],
            name: &'a str,
            user: Option<&'a str>,
            failed: Vec<bool>,
        }
        impl Matcher<'_> {
            fn go(&mut self, t: usize, pos: usize) -> bool {
                let state = t * (self.name.len() + 1) + pos;
                if self.failed[state] {
                    return false;
                }
                let rest = &self.name[pos..];
                // Only char boundaries are split points: a name may hold multi-byte characters.
                let next = rest.chars().next().map(char::len_utf8);
                let ok = match self.tokens.get(t) {
                    None => rest.is_empty(),
                    Some(Token::Literal(l)) => rest.starts_with(l.as_str()) && self.go(t + 1, pos + l.len()),
                    Some(Token::User) => match self.user {
                        Some(u) => rest.starts_with(u) && self.go(t + 1, pos + u.len()),
                        None => false,
                    },
                    Some(Token::Star) => {
                        self.go(t + 1, pos) || (!rest.starts_with('/') && next.is_some_and(|n| self.go(t, pos + n)))
                    }
                    Some(Token::DoubleStar) => self.go(t + 1, pos) || next.is_some_and(|n| self.go(t, pos + n)),
                };
                if !ok {
                    self.failed[state] = true;
                }
                ok
            }
        }
        let mut m = Matcher {
            tokens: &self.tokens,
            name,
            user,
            failed: vec![false; (self.tokens.len() + 1) * (name.len() + 1)],
        };
        m.go(0, 0)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Repository pattern.
    pub repository: Pattern,
    /// User names; `*` is every authenticated user.
    pub users: Vec<String>,
    /// Granted actions.
    pub permissions: Vec<Action>,
    /// Client networks the rule is limited to (empty: any client).
    pub ips: Vec<IpNet>,
}

impl Rule {
    fn admits_client(&self, client: Option<IpAddr>) -> bool {
        self.ips.is_empty() || client.is_some_and(|c| self.ips.iter().any(|n| n.contains(&c.to_canonical())))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    repository: String,
    #[serde(default)]
    users: Vec<String>,
    permissions: Vec<String>,
    #[serde(default)]
    ips: Vec<String>,
}

/// Who asks, as far as access decisions go.
#[derive(Debug, Clone, Copy, Default)]
pub struct Principal<'a> {
    /// The authenticated user; `None` for anonymous clients.
    pub user: Option<&'a str>,
    /// For a namespace credential, its namespaces (`None` for other users).
    pub namespaces: Option<&'a [String]>,
    /// The client's address, for rules with `ips`.
    pub client: Option<IpAddr>,
}

impl<'a> Principal<'a> {
    /// An htpasswd (or token) user, or anonymous, with no address known.
    pub fn user(user: Option<&'a str>) -> Principal<'a> {
        Principal {
            user,
            ..Principal::default()
        }
    }

    /// Whether `name` is in one of the principal's namespaces (`ns` itself or `ns/...`).
    pub fn owns(&self, name: &str) -> bool {
        self.namespaces.is_some_and(|list| {
            list.iter().any(|ns| {
                name.strip_prefix(ns.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            })
        })
    }
}

/// An address or a network (`10.0.0.0/8`, `192.168.1.7`, `2001:db8::/32`), host bits cleared.
pub fn parse_network(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()
        .map(|n| n.trunc())
}

/// What a namespace credential may do in its own namespaces.
const NAMESPACE_ACTIONS: [Action; 2] = [Action::Pull, Action::Push];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRules {
    default_policy: Option<Policy>,
    #[serde(default)]
    admin_users: Vec<String>,
    #[serde(default)]
    anonymous: Vec<RawRule>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// Why an access-rules file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct RulesError {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

/// The access rules.
#[derive(Debug, Clone)]
pub struct AccessRules {
    /// When nothing matches.
    pub default_policy: Policy,
    /// Users who may do everything.
    pub admin_users: Vec<String>,
    /// Rules for clients without credentials.
    pub anonymous: Vec<Rule>,
    /// Rules for authenticated users.
    pub rules: Vec<Rule>,
}

fn compile(raw: Vec<RawRule>, what: &str) -> Result<Vec<Rule>, String> {
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let permissions = r
                .permissions
                .iter()
                .map(|p| match p.as_str() {
                    "pull" => Ok(Action::Pull),
                    "push" => Ok(Action::Push),
                    "delete" => Ok(Action::Delete),
                    "*" => Ok(Action::All),
                    other => Err(format!(
                        "{what}[{i}]: unknown permission {other:?}; use pull, push, delete or *"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if r.repository.is_empty() {
                return Err(format!("{what}[{i}]: empty repository pattern"));
            }
            let ips = r
                .ips
                .iter()
                .map(|n| {
                    parse_network(n).ok_or_else(|| {
                        format!(
                            "{what}[{i}].ips: {n:?} is not an address or a network such as 10.0.0.0/8 or 2001:db8::/32"
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Rule {
                repository: Pattern::new(&r.repository),
                users: r.users,
                permissions,
                ips,
            })
        })
        .collect()
}

impl AccessRules {
    /// Allow everything (what no rules file means).
    pub fn allow_all() -> AccessRules {
        AccessRules {
            default_policy: Policy::Allow,
            admin_users: Vec::new(),
            anonymous: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// Parse rules JSON; `file` is used in messages.
    pub fn parse(file: &Path, text: &str) -> Result<AccessRules, RulesError> {
        let err = |reason: String| RulesError {
            file: file.display().to_string(),
            reason,
        };
        let raw: RawRules = serde_json::from_str(text).map_err(|e| err(format!("invalid access rules: {e}")))?;
        Ok(AccessRules {
            default_policy: raw.default_policy.unwrap_or(Policy::Deny),
            admin_users: raw.admin_users,
            anonymous: compile(raw.anonymous, "anonymous").map_err(err)?,
            rules: compile(raw.rules, "rules").map_err(err)?,
        })
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<AccessRules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError {
            file: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        AccessRules::parse(path, &text)
    }

    /// The actions the rules give `who` on repository `name` (namespace rights not included:
    /// see [`permitted`]).
    pub fn granted(&self, who: &Principal<'_>, name: &str) -> Vec<Action> {
        let user = who.user;
        if let Some(u) = user
            && self.admin_users.iter().any(|a| a == u)
        {
            return vec![Action::All];
        }
        let rules = if user.is_some() { &self.rules } else { &self.anonymous };
        let hit = rules.iter().find(|r| {
            let user_ok = match user {
                None => true,
                Some(u) => r.users.iter().any(|x| x == "*" || x == u),
            };
            user_ok && r.admits_client(who.client) && r.repository.matches(name, user)
        });
        match (hit, self.default_policy) {
            (Some(r), _) => r.permissions.clone(),
            (None, Policy::Allow) => vec![Action::All],
            (None, Policy::Deny) => Vec::new(),
        }
    }

    /// Whether `who` may do `action` on repository `name` (see [`permitted`]).
    pub fn allows(&self, who: &Principal<'_>, name: &str, action: Action) -> bool {
        permits(Some(self), who, name, action)
    }
}

/// The actions `who` has on repository `name`: what the rules give (without rules, everything
/// for an authenticated user and nothing for anonymous), plus pull and push in a namespace
/// credential's own namespaces. A namespace credential has nothing else unless rules give it.
pub fn permitted(rules: Option<&AccessRules>, who: &Principal<'_>, name: &str) -> Vec<Action> {
    let mut actions = match rules {
        Some(r) => r.granted(who, name),
        None if who.user.is_some() && who.namespaces.is_none() => vec![Action::All],
        None => Vec::new(),
    };
    if who.owns(name) {
        actions.extend(NAMESPACE_ACTIONS);
    }
    actions
}

/// Whether the [`permitted`] actions of `who` on `name` cover `action`.
pub fn permits(rules: Option<&AccessRules>, who: &Principal<'_>, name: &str, action: Action) -> bool {
    permitted(rules, who, name).iter().any(|a| a.covers(action))
}

/// What a token server grants for one requested scope: the requested actions that are
/// [`permitted`]. The catalog (`registry:catalog:*`) goes to authenticated users; the listing
/// itself is filtered.
pub fn grant(rules: Option<&AccessRules>, who: &Principal<'_>, requested: &Scope) -> Scope {
    let allowed: Vec<Action> = match requested.resource_type.as_str() {
        "repository" => permitted(rules, who, &requested.name),
        "registry" if who.user.is_some() => vec![Action::All],
        _ => Vec::new(),
    };
    let wanted: Vec<Action> = if requested.actions.contains(&Action::All) {
        if requested.resource_type == "registry" {
            vec![Action::All]
        } else {
            vec![Action::Pull, Action::Push, Action::Delete]
        }
    } else {
        requested.actions.clone()
    };
    let actions: Vec<Action> = wanted
        .into_iter()
        .filter(|w| allowed.iter().any(|a| a.covers(*w)))
        .collect();
    Scope {
        resource_type: requested.resource_type.clone(),
        name: requested.name.clone(),
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Pattern::new("team-a/*");
        assert!(p.matches("team-a/app", None));
        assert!(!p.matches("team-a/app/sub", None));
        assert!(!p.matches("team-a", None));
        let p = Pattern::new("team-*/app");
        assert!(p.matches("team-x/app", None));
        assert!(!p.matches("team-x/y/app", None));
        let p = Pattern::new("team-a/**");
        assert!(p.matches("team-a/x/y/z", None));
        let p = Pattern::new("${user}/**");
        assert!(p.matches("alice/app", Some("alice")));
        assert!(!p.matches("bob/app", Some("alice")));
        assert!(!p.matches("alice/app", None));
        // a user name is literal, never a glob
        assert!(!Pattern::new("${user}/x").matches("anything/x", Some("*")));
        assert!(Pattern::new("**").matches("a/b", None));
    }

    #[test]
    fn many_stars_do_not_backtrack() {
        // Exponential for a backtracking matcher (this test would not finish); linear states here.
        let name = "a".repeat(255);
        let stars = "**a".repeat(30) + "b";
        assert!(!Pattern::new(&stars).matches(&name, None));
        assert!(Pattern::new(&("**a".repeat(30) + "**")).matches(&name, None));
        let single = "*a".repeat(40) + "*b";
        assert!(!Pattern::new(&single).matches(&name, None));
        assert!(Pattern::new(&("*a".repeat(40) + "*")).matches(&name, None));
        let segments = "*/".repeat(20) + "x";
        assert!(!Pattern::new(&segments).matches(&"a/".repeat(120), None));
        assert!(Pattern::new(&("*/".repeat(3) + "x")).matches("a/bb/c/x", None));
    }

    #[test]
    fn patterns_with_multi_byte_names() {
        // `*` used to try every byte offset of the segment and slice inside "é".
        let p = Pattern::new("team-a/*");
        assert!(p.matches("team-a/é", None));
        assert!(p.matches("team-a/日本", None));
        assert!(!p.matches("team-a/é/x", None));
        assert!(Pattern::new("team-*/app").matches("team-ü/app", None));
        assert!(Pattern::new("*é*").matches("aéb", None));
        assert!(!Pattern::new("*é*").matches("aeb", None));
        assert!(Pattern::new("é/**").matches("é/ß/x", None));
        assert!(Pattern::new("${user}/*").matches("jürgen/ü", Some("jürgen")));
        let want: Scope = "repository:team-a/é:pull".parse().unwrap();
        let r = AccessRules::parse(
            Path::new("r.json"),
            r#"{"rules":[{"repository":"team-a/*","users":["*"],"permissions":["pull"]}]}"#,
        )
        .unwrap();
        assert_eq!(grant(Some(&r), &u("alice"), &want).actions, vec![Action::Pull]);
    }

    proptest::proptest! {
        #[test]
        fn matcher_never_panics(pattern in "\\PC{0,12}", name in "\\PC{0,16}", user in proptest::option::of("\\PC{0,6}")) {
            let _ = Pattern::new(&pattern).matches(&name, user.as_deref());
        }

        #[test]
        fn matcher_never_panics_on_globs(pattern in "[a*/é${}user日]{0,12}", name in "[a/é日ß]{0,16}") {
            let p = Pattern::new(&pattern);
            let _ = p.matches(&name, Some("é"));
            let _ = p.matches(&name, None);
        }
    }

    const RULES: &str = r#"{
        "defaultPolicy": "deny",
        "adminUsers": ["root"],
        "anonymous": [{"repository": "public/**", "permissions": ["pull"]}],
        "rules": [
            {"repository": "team-a/*", "users": ["alice", "bob"], "permissions": ["pull", "push"]},
            {"repository": "team-a/*", "users": ["*"], "permissions": ["pull"]},
            {"repository": "${user}/**", "users": ["*"], "permissions": ["pull", "push", "delete"]},
            {"repository": "public/**", "users": ["*"], "permissions": ["pull"]}
        ]}"#;

    fn u(name: &str) -> Principal<'_> {
        Principal::user(Some(name))
    }

    const ANON: Principal<'static> = Principal {
        user: None,
        namespaces: None,
        client: None,
    };

    #[test]
    fn first_match_wins() {
        let r = AccessRules::parse(Path::new("rules.json"), RULES).unwrap();
        assert!(r.allows(&u("alice"), "team-a/app", Action::Push));
        assert!(!r.allows(&u("alice"), "team-a/app", Action::Delete));
        assert!(r.allows(&u("carol"), "team-a/app", Action::Pull));
        assert!(!r.allows(&u("carol"), "team-a/app", Action::Push));
        assert!(r.allows(&u("carol"), "carol/x/y", Action::Delete));
        assert!(!r.allows(&u("carol"), "alice/x", Action::Pull));
        assert!(r.allows(&u("root"), "anything/at/all", Action::Delete));
        assert!(r.allows(&ANON, "public/base", Action::Pull));
        assert!(!r.allows(&ANON, "public/base", Action::Push));
        assert!(!r.allows(&ANON, "team-a/app", Action::Pull));
        assert!(!r.allows(&u("carol"), "other", Action::Pull), "default deny");
        let open = AccessRules::parse(Path::new("r.json"), r#"{"defaultPolicy":"allow"}"#).unwrap();
        assert!(open.allows(&u("x"), "y", Action::Delete));
    }

    #[test]
    fn grants_are_the_allowed_subset() {
        let r = AccessRules::parse(Path::new("rules.json"), RULES).unwrap();
        let want: Scope = "repository:team-a/app:pull,push".parse().unwrap();
        assert_eq!(
            grant(Some(&r), &u("carol"), &want).to_string(),
            "repository:team-a/app:pull"
        );
        assert_eq!(
            grant(Some(&r), &u("alice"), &want).to_string(),
            "repository:team-a/app:pull,push"
        );
        assert!(grant(Some(&r), &ANON, &want).actions.is_empty());
        assert_eq!(grant(None, &u("x"), &want).actions, vec![Action::Pull, Action::Push]);
        assert!(grant(None, &ANON, &want).actions.is_empty());
        let all: Scope = "repository:carol/x:*".parse().unwrap();
        assert_eq!(
            grant(Some(&r), &u("carol"), &all).actions,
            vec![Action::Pull, Action::Push, Action::Delete]
        );
        let cat: Scope = "registry:catalog:*".parse().unwrap();
        assert_eq!(grant(Some(&r), &u("carol"), &cat).actions, vec![Action::All]);
        assert!(grant(Some(&r), &ANON, &cat).actions.is_empty());
    }

    #[test]
    fn client_networks() {
        let r = AccessRules::parse(
            Path::new("r.json"),
            r#"{"anonymous": [{"repository": "**", "permissions": ["pull"], "ips": ["10.0.0.0/8", "2001:db8::/32"]}],
                "rules": [{"repository": "ci/**", "users": ["*"], "permissions": ["push", "pull"], "ips": ["192.168.1.7"]},
                          {"repository": "ci/**", "users": ["*"], "permissions": ["pull"]}]}"#,
        )
        .unwrap();
        let at = |user: Option<&'static str>, ip: &str| Principal {
            user,
            namespaces: None,
            client: Some(ip.parse().unwrap()),
        };
        assert!(r.allows(&at(None, "10.1.2.3"), "x", Action::Pull));
        assert!(
            r.allows(&at(None, "::ffff:10.1.2.3"), "x", Action::Pull),
            "v4-mapped peers match v4 nets"
        );
        assert!(r.allows(&at(None, "2001:db8::1"), "x", Action::Pull));
        assert!(!r.allows(&at(None, "11.0.0.1"), "x", Action::Pull));
        assert!(
            !r.allows(&ANON, "x", Action::Pull),
            "an unknown address matches no ips rule"
        );
        assert!(r.allows(&at(Some("bot"), "192.168.1.7"), "ci/app", Action::Push));
        assert!(
            !r.allows(&at(Some("bot"), "192.168.1.8"), "ci/app", Action::Push),
            "next rule: pull only"
        );
        assert!(r.allows(&at(Some("bot"), "192.168.1.8"), "ci/app", Action::Pull));
        let e = AccessRules::parse(
            Path::new("r.json"),
            r#"{"rules":[{"repository":"a","permissions":["pull"],"ips":["10.0.0.0/33"]}]}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("rules[0].ips") && e.to_string().contains("10.0.0.0/33"),
            "{e}"
        );
    }

    #[test]
    fn namespace_credentials() {
        let ns = vec!["team-a".to_owned()];
        let who = Principal {
            user: Some("ci-a"),
            namespaces: Some(&ns),
            client: None,
        };
        assert!(who.owns("team-a") && who.owns("team-a/app") && who.owns("team-a/x/y"));
        assert!(!who.owns("team-ab/app") && !who.owns("team") && !who.owns("other/team-a"));
        // Without rules: pull and push in the namespace, nothing else, no delete.
        assert_eq!(permitted(None, &who, "team-a/app"), vec![Action::Pull, Action::Push]);
        assert!(permitted(None, &who, "team-b/app").is_empty());
        let want: Scope = "repository:team-a/app:pull,push,delete".parse().unwrap();
        assert_eq!(grant(None, &who, &want).actions, vec![Action::Pull, Action::Push]);
        // Rules add to it.
        let r = AccessRules::parse(Path::new("rules.json"), RULES).unwrap();
        assert!(r.allows(&who, "team-a/app", Action::Push));
        assert!(r.allows(&who, "public/base", Action::Pull));
        assert!(!r.allows(&who, "team-b/app", Action::Pull));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let e = AccessRules::parse(
            Path::new("r.json"),
            r#"{"rules":[{"repository":"a","permissions":["fly"]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("r.json") && e.to_string().contains("fly"), "{e}");
        assert!(AccessRules::parse(Path::new("r.json"), r#"{"defaultPolicy":"maybe"}"#).is_err());
        assert!(AccessRules::parse(Path::new("r.json"), r#"{"rulez":[]}"#).is_err());
    }
}
