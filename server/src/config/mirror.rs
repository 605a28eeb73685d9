//! The pull-through cache settings: distribution's `proxy` section (the whole registry mirrors
//! one upstream) and Berth's `mirrors` list (several upstreams, each under a local prefix).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::ConfigError;
use super::load::parse_yaml_value;
use super::tree::{get_path, get_str, parse_duration};

/// How long a tag read from an upstream is served without asking the upstream again, unless
/// configured.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);
/// Longest wait for an upstream's answer (connection and response headers), unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One upstream registry and the local names it serves.
#[derive(Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Name, for logs, metrics and errors.
    pub name: String,
    /// Base URL of the upstream registry (scheme, host, port).
    pub url: String,
    /// Local namespace: `<prefix>/<name>` here is `<name>` upstream. Empty: every repository of
    /// this registry is the upstream's (distribution's `proxy` mode).
    pub prefix: String,
    /// Values of containerd's `ns` query parameter routed to this upstream (its registry host
    /// names, such as `docker.io`).
    pub hosts: Vec<String>,
    /// User for the upstream.
    pub username: Option<String>,
    /// Password or token for the upstream (never shown in Debug output).
    pub password: Option<String>,
    /// PEM bundle of CAs to trust for the upstream beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from the upstream (tests only).
    pub insecure: bool,
    /// How long a tag is served without asking the upstream.
    pub tag_ttl: Duration,
    /// Upstream repositories that may be mirrored (glob patterns; empty: all).
    pub repositories: Vec<String>,
    /// Whether clients may push into the local namespace.
    pub push: bool,
    /// Longest wait for an upstream's answer.
    pub timeout: Duration,
    /// Bytes of mirrored content kept before the least recently pulled images are evicted
    /// (`None`: no limit).
    pub budget: Option<u64>,
}

impl std::fmt::Debug for MirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("hosts", &self.hosts)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .field("tag_ttl", &self.tag_ttl)
            .field("repositories", &self.repositories)
            .field("push", &self.push)
            .field("timeout", &self.timeout)
            .field("budget", &self.budget)
            .finish()
    }
}

/// Keys of one `mirrors` entry.
const MIRROR_KEYS: &[&str] = &[
    "name",
    "url",
    "prefix",
    "hosts",
    "username",
    "password",
    "passwordfile",
    "passwordenv",
    "cafile",
    "insecure",
    "tagttl",
    "repositories",
    "push",
    "timeout",
    "budget",
];

/// The upstreams of `proxy` and `mirrors` (both may be given: `proxy` is then the mirror with
/// the empty prefix).
pub(super) fn mirror_settings(tree: &Value, env: &BTreeMap<String, String>) -> Result<Vec<MirrorConfig>, ConfigError> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    match proxy_section(tree, env) {
        Ok(Some(m)) => out.push(m),
        Ok(None) => {}
        Err(ConfigError(e)) => errors.push(e),
    }
    let list = match get_path(tree, "mirrors") {
        None => Vec::new(),
        // From REGISTRY_MIRRORS: a YAML list in a string.
        Some(Value::String(s)) => match parse_yaml_value(s) {
            Value::Array(a) => a,
            _ => {
                return Err(ConfigError(
                    "mirrors (env REGISTRY_MIRRORS): expected a list of upstreams, such as [{name: hub, url: 'https://registry-1.docker.io', hosts: [docker.io]}]".into(),
                ));
            }
        },
        Some(Value::Array(a)) => a.clone(),
        Some(v) => {
            return Err(ConfigError(format!(
                "mirrors (env REGISTRY_MIRRORS): expected a list of upstreams, got {v}"
            )));
        }
    };
    for (i, item) in list.iter().enumerate() {
        match mirror_entry(&format!("mirrors[{i}]"), item, env) {
            Ok(m) => out.push(m),
            Err(ConfigError(e)) => errors.extend(e.lines().map(str::to_owned)),
        }
    }
    if errors.is_empty() {
        check_unique(&out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError(errors.join("\n")))
    }
}

/// distribution's `proxy` section: the whole registry mirrors `proxy.remoteurl`.
fn proxy_section(tree: &Value, env: &BTreeMap<String, String>) -> Result<Option<MirrorConfig>, ConfigError> {
    let Some(section) = get_path(tree, "proxy") else {
        return Ok(None);
    };
    if section.as_object().is_some_and(Map::is_empty) {
        return Ok(None);
    }
    let url = get_str(tree, "proxy.remoteurl")?
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let Some(url) = url else {
        return Err(ConfigError(
            "proxy.remoteurl (env REGISTRY_PROXY_REMOTEURL): the proxy section needs the upstream's URL, such as https://registry-1.docker.io".into(),
        ));
    };
    let mut item = Map::new();
    item.insert("name".into(), Value::String("proxy".into()));
    item.insert("url".into(), Value::String(url.to_owned()));
    item.insert("prefix".into(), Value::String(String::new()));
    for (key, from) in [
        ("username", "proxy.username"),
        ("password", "proxy.password"),
        ("tagttl", "proxy.tagttl"),
        ("budget", "proxy.budget"),
    ] {
        if let Some(v) = get_path(tree, from) {
            item.insert(key.into(), v.clone());
        }
    }
    // proxy.ttl is how long distribution keeps proxied content before deleting it; Berth keeps
    // it until the cache budget needs the room, so the value is read (and must be a duration)
    // but changes nothing.
    if let Some(ttl) = get_str(tree, "proxy.ttl")?
        && parse_duration(ttl).is_none()
    {
        return Err(ConfigError(format!(
            "proxy.ttl (env REGISTRY_PROXY_TTL): {ttl:?} is not a duration such as 168h"
        )));
    }
    mirror_entry("proxy", &Value::Object(item), env)
        .map(Some)
        .map_err(|ConfigError(e)| {
            ConfigError(
                e.replace("proxy.url", "proxy.remoteurl (env REGISTRY_PROXY_REMOTEURL)")
                    .replace("proxy.tagttl", "proxy.tagttl (env REGISTRY_PROXY_TAGTTL)")
                    .replace("proxy.budget", "proxy.budget (env REGISTRY_PROXY_BUDGET)")
                    .replace("proxy.username:", "proxy.username (env REGISTRY_PROXY_USERNAME):"),
            )
        })
}

fn text(item: &Map<String, Value>, at: &str, key: &str) -> Result<Option<String>, ConfigError> {
    match item.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(v) => Err(ConfigError(format!("{at}.{key}: expected a string, got {v}"))),
    }
}

fn flag(item: &Map<String, Value>, at: &str, key: &str) -> Result<bool, ConfigError> {
    match item.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(ConfigError(format!("{at}.{key}: expected true or false, got {v}"))),
    }
}

fn strings(item: &Map<String, Value>, at: &str, key: &str) -> Result<Vec<String>, ConfigError> {
    match item.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| ConfigError(format!("{at}.{key}: expected a list of strings, got {v}")))
            })
            .collect(),
        Some(v) => Err(ConfigError(format!("{at}.{key}: expected a list of strings, got {v}"))),
    }
}

fn duration(item: &Map<String, Value>, at: &str, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match text(item, at, key)? {
        None => Ok(default),
        Some(s) => parse_duration(&s)
            .ok_or_else(|| ConfigError(format!("{at}.{key}: {s:?} is not a duration such as 30s, 5m or 1h"))),
    }
}

/// The URL's host (with its port, if it names one), when it is an http(s) URL without a path,
/// query or credentials: the `ns` value containerd sends for images named after that host.
pub(super) fn url_host(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.query().is_some() {
        return None;
    }
    if !matches!(uri.path(), "" | "/") {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    Some(authority.as_str().to_ascii_lowercase())
}

/// A local prefix: empty, or name components of lowercase letters, digits and separators.
fn valid_prefix(p: &str) -> bool {
    p.is_empty() || format!("{p}/x").parse::<berth_engine::RepoName>().is_ok()
}

/// A repository pattern: name characters and `*`.
fn valid_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b))
}

fn mirror_entry(at: &str, item: &Value, env: &BTreeMap<String, String>) -> Result<MirrorConfig, ConfigError> {
    let Value::Object(item) = item else {
        return Err(ConfigError(format!(
            "{at}: expected a mapping with name and url, got {item}"
        )));
    };
    let mut errors = Vec::new();
    for key in item.keys().filter(|k| !MIRROR_KEYS.contains(&k.as_str())) {
        errors.push(format!(
            "{at}.{key}: unknown setting of an upstream (known: {})",
            MIRROR_KEYS.join(", ")
        ));
    }
    let mut take = |r: Result<(), ConfigError>| {
        if let Err(ConfigError(e)) = r {
            errors.push(e);
        }
    };
    let mut name = String::new();
    take(text(item, at, "name").and_then(|n| {
        match n {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
            {
                name = n;
                Ok(())
            }
            Some(n) => Err(ConfigError(format!(
                "{at}.name: {n:?} is not a name of up to 64 lowercase letters, digits and dashes"
            ))),
            None => Err(ConfigError(format!(
                "{at}.name: every upstream needs a name, such as hub"
            ))),
        }
    }));
    let mut url = String::new();
    let mut host = None;
    take(text(item, at, "url").and_then(|u| match u {
        Some(u) => {
            let u = u.trim_end_matches('/').to_owned();
            host = url_host(&u);
            if host.is_none() {
                return Err(ConfigError(format!(
                    "{at}.url: {u:?} is not an http:// or https:// URL of a registry (scheme, host and port only, such as https://registry-1.docker.io)"
                )));
            }
            url = u;
            Ok(())
        }
        None => Err(ConfigError(format!("{at}.url: every upstream needs the URL of its registry"))),
    }));
    let mut prefix = String::new();
    take(text(item, at, "prefix").and_then(|p| {
        let p = match p {
            Some(p) => p.trim_matches('/').to_owned(),
            None => name.clone(),
        };
        if !valid_prefix(&p) {
            return Err(ConfigError(format!(
                "{at}.prefix: {p:?} is not a repository name prefix (lowercase letters, digits, '.', '_', '-' and '/')"
            )));
        }
        prefix = p;
        Ok(())
    }));
    let mut hosts = Vec::new();
    take(strings(item, at, "hosts").map(|h| hosts = h.into_iter().map(|h| h.to_ascii_lowercase()).collect()));
    if hosts.is_empty()
        && let Some(h) = &host
    {
        hosts.push(h.clone());
    }
    let mut username = None;
    take(text(item, at, "username").map(|u| username = u.filter(|u| !u.is_empty())));
    let mut password = None;
    take(password_of(item, at, env).map(|p| password = p));
    if password.is_some() && username.is_none() {
        take(Err(ConfigError(format!(
            "{at}.username: a password is set but no username"
        ))));
    }
    let mut ca_file = None;
    take(text(item, at, "cafile").and_then(|c| {
        if let Some(c) = c.filter(|c| !c.is_empty()) {
            std::fs::metadata(&c).map_err(|e| ConfigError(format!("{at}.cafile: cannot read {c}: {e}")))?;
            ca_file = Some(PathBuf::from(c));
        }
        Ok(())
    }));
    let (mut insecure, mut push) = (false, false);
    take(flag(item, at, "insecure").map(|f| insecure = f));
    take(flag(item, at, "push").map(|f| push = f));
    let mut tag_ttl = DEFAULT_TAG_TTL;
    take(duration(item, at, "tagttl", DEFAULT_TAG_TTL).map(|d| tag_ttl = d));
    let mut timeout = DEFAULT_TIMEOUT;
    take(duration(item, at, "timeout", DEFAULT_TIMEOUT).and_then(|d| {
        if d.is_zero() {
            return Err(ConfigError(format!("{at}.timeout must be greater than 0")));
        }
        timeout = d;
        Ok(())
    }));
    let mut budget = None;
    take(text(item, at, "budget").and_then(|b| {
        let Some(b) = b.filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        match super::cache::parse_size(&b) {
            Some(n) if n > 0 => {
                budget = Some(n);
                Ok(())
            }
            _ => Err(ConfigError(format!(
                "{at}.budget: {b:?} is not a size greater than 0, such as 50GiB or 2TB"
            ))),
        }
    }));
    let mut repositories = Vec::new();
    take(strings(item, at, "repositories").and_then(|r| {
        if let Some(bad) = r.iter().find(|p| !valid_pattern(p)) {
            return Err(ConfigError(format!(
                "{at}.repositories: {bad:?} is not a repository pattern (name characters and *, such as library/*)"
            )));
        }
        repositories = r;
        Ok(())
    }));
    if !errors.is_empty() {
        return Err(ConfigError(errors.join("\n")));
    }
    Ok(MirrorConfig {
        name,
        url,
        prefix,
        hosts,
        username,
        password,
        ca_file,
        insecure,
        tag_ttl,
        repositories,
        push,
        timeout,
        budget,
    })
}

/// The password: inline, from a file (trailing newline dropped) or from a variable.
fn password_of(
    item: &Map<String, Value>,
    at: &str,
    env: &BTreeMap<String, String>,
) -> Result<Option<String>, ConfigError> {
    let inline = text(item, at, "password")?;
    let file = text(item, at, "passwordfile")?.filter(|f| !f.is_empty());
    let var = text(item, at, "passwordenv")?.filter(|v| !v.is_empty());
    match (inline, file, var) {
        (p, None, None) => Ok(p.filter(|p| !p.is_empty())),
        (None, Some(f), None) => {
            let s = std::fs::read_to_string(&f)
                .map_err(|e| ConfigError(format!("{at}.passwordfile: cannot read {f}: {e}")))?;
            Ok(Some(s.trim_end_matches(['\r', '\n']).to_owned()))
        }
        (None, None, Some(v)) => env
            .get(&v)
            .map(|p| Some(p.clone()))
            .ok_or_else(|| ConfigError(format!("{at}.passwordenv: the variable {v} is not set"))),
        _ => Err(ConfigError(format!(
            "{at}: give the password one way only: password, passwordfile or passwordenv"
        ))),
    }
}

/// Names, prefixes and `ns` hosts must each lead to one upstream.
fn check_unique(all: &[MirrorConfig], errors: &mut Vec<String>) {
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            if a.name == b.name {
                errors.push(format!("mirrors: two upstreams are named {:?}", a.name));
            }
            let overlap = a.prefix == b.prefix
                || a.prefix.starts_with(&format!("{}/", b.prefix))
                || b.prefix.starts_with(&format!("{}/", a.prefix));
            if overlap {
                errors.push(format!(
                    "mirrors: the prefixes of {:?} ({:?}) and {:?} ({:?}) overlap; give each upstream its own namespace",
                    b.name, b.prefix, a.name, a.prefix
                ));
            }
            if let Some(h) = a.hosts.iter().find(|h| b.hosts.contains(h)) {
                errors.push(format!(
                    "mirrors: {:?} and {:?} both serve the host {h:?}; list it in the hosts of one of them",
                    b.name, a.name
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_str;
    use super::*;

    #[test]
    fn distributions_proxy_section_mirrors_the_whole_registry() {
        let (c, w) = load_str(
            "proxy: {remoteurl: 'https://registry-1.docker.io', username: u, password: p, ttl: 168h}",
            &[],
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.mirrors.len(), 1);
        let m = &c.mirrors[0];
        assert_eq!((m.name.as_str(), m.prefix.as_str()), ("proxy", ""));
        assert_eq!(m.url, "https://registry-1.docker.io");
        assert_eq!(m.hosts, vec!["registry-1.docker.io".to_owned()]);
        assert_eq!((m.username.as_deref(), m.password.as_deref()), (Some("u"), Some("p")));
        assert_eq!(m.tag_ttl, DEFAULT_TAG_TTL);
        assert!(
            !format!("{m:?}").contains("\"p\""),
            "the password is not in Debug output"
        );
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_PROXY_REMOTEURL", "http://127.0.0.1:5001/"),
                ("REGISTRY_PROXY_TAGTTL", "10s"),
            ],
        )
        .unwrap();
        assert_eq!(c.mirrors[0].url, "http://127.0.0.1:5001");
        assert_eq!(c.mirrors[0].tag_ttl, Duration::from_secs(10));
        for (yaml, want) in [
            ("proxy: {username: u}", "proxy.remoteurl"),
            ("proxy: {remoteurl: 'ftp://x'}", "proxy.remoteurl"),
            ("proxy: {remoteurl: 'https://h/v2/x'}", "proxy.remoteurl"),
            ("proxy: {remoteurl: 'https://h', ttl: forever}", "proxy.ttl"),
            ("proxy: {remoteurl: 'https://h', tagttl: soon}", "proxy.tagttl"),
            ("proxy: {remoteurl: 'https://h', budget: all}", "proxy.budget"),
            ("proxy: {remoteurl: 'https://h', password: p}", "proxy.username"),
        ] {
            let e = load_str(yaml, &[]).unwrap_err().0;
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
        assert!(load_str("", &[]).unwrap().0.mirrors.is_empty());
    }

    #[test]
    fn several_upstreams_each_under_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("quay-token");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        let yaml = format!(
            "mirrors:\n\
             - {{name: hub, url: 'https://registry-1.docker.io', hosts: [docker.io], tagttl: 1m, repositories: ['library/*'], budget: 50GiB}}\n\
             - {{name: quay, url: 'https://quay.io', prefix: 'vendor/quay', username: bot, passwordfile: '{}'}}\n\
             - {{name: ghcr, url: 'https://ghcr.io', username: me, passwordenv: GHCR_TOKEN, push: true, timeout: 5s}}\n",
            secret.display()
        );
        let (c, w) = load_str(&yaml, &[("GHCR_TOKEN", "tok")]).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let [hub, quay, ghcr] = &c.mirrors[..] else {
            panic!("{:?}", c.mirrors)
        };
        assert_eq!(
            (hub.prefix.as_str(), hub.hosts.clone()),
            ("hub", vec!["docker.io".to_owned()])
        );
        assert_eq!(hub.tag_ttl, Duration::from_secs(60));
        assert_eq!(hub.repositories, vec!["library/*".to_owned()]);
        assert_eq!(
            (quay.prefix.as_str(), quay.password.as_deref()),
            ("vendor/quay", Some("s3cr3t"))
        );
        assert_eq!(quay.hosts, vec!["quay.io".to_owned()]);
        assert_eq!((ghcr.password.as_deref(), ghcr.push), (Some("tok"), true));
        assert_eq!(ghcr.timeout, Duration::from_secs(5));
        assert_eq!((hub.budget, quay.budget), (Some(50 << 30), None));
        // From the variable, as a YAML list.
        let (c, _) = load_str(
            "",
            &[("REGISTRY_MIRRORS", "[{name: up, url: 'http://127.0.0.1:5001'}]")],
        )
        .unwrap();
        assert_eq!(c.mirrors[0].prefix, "up");
    }

    #[test]
    fn bad_upstreams_are_refused_naming_the_setting() {
        for (yaml, want) in [
            ("mirrors: {name: a}", "mirrors (env REGISTRY_MIRRORS)"),
            ("mirrors: [{url: 'https://a'}]", "mirrors[0].name"),
            ("mirrors: [{name: A, url: 'https://a'}]", "mirrors[0].name"),
            ("mirrors: [{name: a}]", "mirrors[0].url"),
            ("mirrors: [{name: a, url: 'https://u:p@a'}]", "mirrors[0].url"),
            (
                "mirrors: [{name: a, url: 'https://a', prefix: 'Up'}]",
                "mirrors[0].prefix",
            ),
            ("mirrors: [{name: a, url: 'https://a', tagttl: x}]", "mirrors[0].tagttl"),
            (
                "mirrors: [{name: a, url: 'https://a', budget: lots}]",
                "mirrors[0].budget",
            ),
            ("mirrors: [{name: a, url: 'https://a', budget: 0}]", "mirrors[0].budget"),
            (
                "mirrors: [{name: a, url: 'https://a', timeout: 0s}]",
                "mirrors[0].timeout",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', insecure: maybe}]",
                "mirrors[0].insecure",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', repositories: ['a b']}]",
                "mirrors[0].repositories",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', passwordenv: NOPE, username: u}]",
                "mirrors[0].passwordenv",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', passwordfile: /nonexistent/x, username: u}]",
                "mirrors[0].passwordfile",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', password: p, passwordenv: V, username: u}]",
                "mirrors[0]: give",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', cafile: /nonexistent/ca.pem}]",
                "mirrors[0].cafile",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', colour: red}]",
                "mirrors[0].colour",
            ),
            (
                "mirrors: [{name: a, url: 'https://a'}, {name: a, url: 'https://b'}]",
                "mirrors: two upstreams",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', prefix: x}, {name: b, url: 'https://b', prefix: x/y}]",
                "mirrors: the prefixes",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', hosts: [h]}, {name: b, url: 'https://b', hosts: [h]}]",
                "mirrors: \"a\" and \"b\" both serve",
            ),
            (
                "mirrors: [{name: a, url: 'https://a', prefix: ''}, {name: b, url: 'https://b', prefix: ''}]",
                "mirrors: the prefixes",
            ),
        ] {
            let e = load_str(yaml, &[]).unwrap_err().0;
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
        // The root mirror and a prefixed one do not overlap: the longer prefix wins.
        let (c, _) = load_str(
            "mirrors: [{name: a, url: 'https://a', prefix: ''}, {name: b, url: 'https://b'}]",
            &[],
        )
        .unwrap();
        assert_eq!(c.mirrors.len(), 2);
    }
}
