//! Authentication with an upstream registry, for [`super::upstream`]: reading the challenges of a
//! `WWW-Authenticate` header (RFC 7235, as Docker and OCI registries send them), reading a token
//! service's answer, and the cache of bearer tokens per (service, scope).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::Mutex;

/// How long a token lives when the token service does not say (the distribution spec's default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A cached token is not used during the last tenth of its life, and never during its last 5 s.
const MIN_SLACK: Duration = Duration::from_secs(5);

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, in lower case (`bearer`, `basic`…).
    pub scheme: String,
    /// The parameters in order, names in lower case; a token68 is one parameter with an empty name.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn skip(b: &[u8], i: &mut usize, what: impl Fn(u8) -> bool) {
    while *i < b.len() && what(b[*i]) {
        *i += 1;
    }
}

fn token<'a>(b: &'a [u8], i: &mut usize) -> &'a [u8] {
    let start = *i;
    skip(b, i, is_tchar);
    &b[start..*i]
}

/// A token68 (`abc+/def==`) at `i` followed by the end or a comma: where it ends.
fn token68_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    skip(b, &mut j, |c| c.is_ascii_alphanumeric() || b"-._~+/".contains(&c));
    if j == i {
        return None;
    }
    skip(b, &mut j, |c| c == b'=');
    let mut k = j;
    skip(b, &mut k, is_ws);
    (k == b.len() || b[k] == b',').then_some(j)
}

fn quoted(b: &[u8], i: &mut usize) -> Result<String, String> {
    let start = *i;
    *i += 1;
    let mut out = Vec::new();
    while *i < b.len() {
        match b[*i] {
            b'"' => {
                *i += 1;
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            b'\\' if *i + 1 < b.len() => {
                out.push(b[*i + 1]);
                *i += 2;
            }
            c => {
                out.push(c);
                *i += 1;
            }
        }
    }
    Err(format!("unterminated quoted string at byte {start}"))
}

/// The challenges of one `WWW-Authenticate` value: `Bearer realm="…",service=…, Basic realm="…"`.
/// Scheme and parameter names are case-insensitive (returned in lower case); values may be tokens
/// or quoted strings (with commas and `\"` inside). Anything else is an error naming the byte.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, String> {
    let b = header.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        skip(b, &mut i, |c| c == b',' || is_ws(c));
        if i == b.len() {
            break;
        }
        let scheme = token(b, &mut i);
        if scheme.is_empty() {
            return Err(format!("expected an auth scheme at byte {i}, found {:?}", b[i] as char));
        }
        let mut challenge = Challenge {
            scheme: String::from_utf8_lossy(scheme).to_ascii_lowercase(),
            params: Vec::new(),
        };
        if i < b.len() && is_ws(b[i]) {
            skip(b, &mut i, is_ws);
            if let Some(end) = token68_end(b, i) {
                let t68 = String::from_utf8_lossy(&b[i..end]).into_owned();
                challenge.params.push((String::new(), t68));
                i = end;
            }
        }
        // After a token68, no parameters.
        let mut more = challenge.params.is_empty();
        while more {
            skip(b, &mut i, |c| c == b',' || is_ws(c));
            if i == b.len() {
                break;
            }
            let start = i;
            let name = token(b, &mut i);
            if name.is_empty() {
                return Err(format!("unexpected {:?} at byte {i}", b[i] as char));
            }
            skip(b, &mut i, is_ws);
            if i == b.len() || b[i] != b'=' {
                // Not `name=value`: the next challenge starts here.
                i = start;
                more = false;
                continue;
            }
            i += 1;
            skip(b, &mut i, is_ws);
            let value = if i < b.len() && b[i] == b'"' {
                quoted(b, &mut i)?
            } else {
                let vs = i;
                skip(b, &mut i, |c| c != b',' && c != b'"' && !is_ws(c));
                if i == vs {
                    return Err(format!("parameter without a value at byte {vs}"));
                }
                String::from_utf8_lossy(&b[vs..i]).into_owned()
            };
            challenge
                .params
                .push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
        }
        out.push(challenge);
    }
    if out.is_empty() {
        return Err("no challenge".into());
    }
    Ok(out)
}

/// The challenge to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Fetch a token from `realm`.
    Bearer {
        /// The token service's URL.
        realm: String,
        /// Its `service` parameter, when given.
        service: Option<String>,
        /// Its `scope` parameter, when given.
        scope: Option<String>,
    },
    /// Send Basic credentials.
    Basic,
}

/// The challenge to answer among all `WWW-Authenticate` values of a 401: Bearer when there is
/// one, else Basic.
pub fn choose(values: &[&str]) -> Result<Auth, String> {
    if values.is_empty() {
        return Err("401 without a WWW-Authenticate header".into());
    }
    let mut all = Vec::new();
    for v in values {
        all.extend(parse_challenges(v).map_err(|e| format!("WWW-Authenticate {v:?}: {e}"))?);
    }
    if let Some(c) = all.iter().find(|c| c.scheme == "bearer") {
        let realm = c.param("realm").filter(|r| !r.is_empty());
        let realm = realm.ok_or_else(|| format!("Bearer challenge without a realm: {values:?}"))?;
        return Ok(Auth::Bearer {
            realm: realm.to_owned(),
            service: c.param("service").map(str::to_owned),
            scope: c.param("scope").filter(|s| !s.is_empty()).map(str::to_owned),
        });
    }
    if all.iter().any(|c| c.scheme == "basic") {
        return Ok(Auth::Basic);
    }
    let schemes: Vec<&str> = all.iter().map(|c| c.scheme.as_str()).collect();
    Err(format!(
        "no Bearer or Basic challenge (schemes: {})",
        schemes.join(", ")
    ))
}

/// The value of an `Authorization: Basic` header.
pub fn basic(username: &str, password: &str) -> String {
    let pair = format!("{username}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
}

/// A token from a token service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The bearer token.
    pub token: String,
    /// `expires_in`, counted from when the answer arrived ([`DEFAULT_TOKEN_LIFETIME`] without it).
    pub lifetime: Duration,
}

/// Read a token service's JSON answer: `token` (or `access_token`), `expires_in` (seconds),
/// `issued_at` (accepted, not used: the lifetime is counted from the answer's arrival, so the two
/// clocks need not agree).
pub fn parse_token(body: &[u8]) -> Result<Token, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the token answer is not JSON: {e}"))?;
    let text = |k: &str| v.get(k).and_then(|t| t.as_str()).filter(|t| !t.is_empty());
    let token = text("token").or_else(|| text("access_token"));
    let token = token.ok_or("the token answer has neither `token` nor `access_token`")?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token holds characters that cannot be sent in a header".into());
    }
    let lifetime = match v.get("expires_in").and_then(|e| e.as_f64()) {
        Some(s) if s > 0.0 => Duration::from_secs_f64(s.min(1e9)),
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    Ok(Token {
        token: token.to_owned(),
        lifetime,
    })
}

struct Entry {
    token: String,
    fetched: Instant,
    reuse_until: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// The slots by (service, scope), each with when it was last used.
#[derive(Default)]
struct Slots {
    seq: u64,
    map: HashMap<(String, String), (u64, Slot)>,
}

/// Bearer tokens per (service, scope), up to a number of scopes (the least recently used goes
/// first). One fetch per scope at a time: callers that miss while a fetch runs wait for it.
pub struct TokenCache {
    capacity: usize,
    slots: Mutex<Slots>,
    /// Added to the clock; only tests move it.
    skew_ms: AtomicU64,
}

impl TokenCache {
    /// A cache for at most `capacity` scopes.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity: capacity.max(1),
            slots: Mutex::default(),
            skew_ms: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.skew_ms.load(Ordering::Relaxed))
    }

    /// Move the cache's clock forward.
    #[cfg(test)]
    pub fn advance(&self, by: Duration) {
        self.skew_ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    fn slot(&self, key: (String, String), create: bool) -> Option<Slot> {
        let mut guard = self.slots.lock();
        let Slots { seq, map } = &mut *guard;
        *seq += 1;
        if let Some((used, slot)) = map.get_mut(&key) {
            *used = *seq;
            return Some(slot.clone());
        }
        if !create {
            return None;
        }
        if map.len() >= self.capacity
            && let Some(oldest) = map.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let slot = Slot::default();
        map.insert(key, (*seq, slot.clone()));
        Some(slot)
    }

    /// A token for the scope that can still be used, without waiting or fetching.
    pub fn cached(&self, service: &str, scope: &str) -> Option<String> {
        let slot = self.slot((service.to_owned(), scope.to_owned()), false)?;
        let entry = slot.try_lock().ok()?;
        let e = entry.as_ref()?;
        (e.reuse_until > self.now()).then(|| e.token.clone())
    }

    /// The token for the scope: the cached one unless it is too old or is `stale` (one the
    /// registry has just refused), else the one `fetch` returns (which is cached).
    pub async fn get<E, F, Fut>(&self, service: &str, scope: &str, stale: Option<&str>, fetch: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, E>>,
    {
        let arrived = self.now();
        let slot = self
            .slot((service.to_owned(), scope.to_owned()), true)
            .unwrap_or_default();
        let mut entry = slot.lock().await;
        if let Some(e) = entry.as_ref()
            // Fetched while this caller waited: fresh, even when its life is shorter than the slack.
            && (e.reuse_until > self.now() || e.fetched >= arrived)
            && stale != Some(e.token.as_str())
        {
            return Ok(e.token.clone());
        }
        let t = fetch().await?;
        let now = self.now();
        let slack = (t.lifetime / 10).max(MIN_SLACK);
        *entry = Some(Entry {
            token: t.token.clone(),
            fetched: now,
            reuse_until: now + t.lifetime.saturating_sub(slack),
        });
        Ok(t.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn c(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn challenges_parse() {
        let h =
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenges(h).unwrap(),
            vec![c(
                "bearer",
                &[
                    ("realm", "https://auth.example/token"),
                    ("service", "registry.example"),
                    ("scope", "repository:a/b:pull,push")
                ]
            )]
        );
        // Unquoted values, odd case and spacing, an escaped quote, several challenges.
        let h = r#"BASIC Realm=mock , bEaReR realm = "https://a/t?x=1" ,error="say \"no\", twice", Scope=repository:x:pull"#;
        assert_eq!(
            parse_challenges(h).unwrap(),
            vec![
                c("basic", &[("realm", "mock")]),
                c(
                    "bearer",
                    &[
                        ("realm", "https://a/t?x=1"),
                        ("error", r#"say "no", twice"#),
                        ("scope", "repository:x:pull")
                    ]
                ),
            ]
        );
        // A scheme alone, and a token68.
        assert_eq!(
            parse_challenges("Negotiate, NTLM abc+/d==, Basic realm=\"r\"").unwrap(),
            vec![
                c("negotiate", &[]),
                c("ntlm", &[("", "abc+/d==")]),
                c("basic", &[("realm", "r")])
            ]
        );
        for junk in [
            "",
            " , ",
            "\"Bearer\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=, service=x",
            "=x",
            "Bearer realm=\"a\" ;",
            "Bearer realm=a\"b\"",
        ] {
            assert!(parse_challenges(junk).is_err(), "{junk:?} parsed");
        }
    }

    #[test]
    fn bearer_is_preferred_and_needs_a_realm() {
        let bearer = Auth::Bearer {
            realm: "http://h/t".into(),
            service: Some("s".into()),
            scope: None,
        };
        assert_eq!(
            choose(&["Basic realm=x", r#"Bearer realm="http://h/t",service=s"#]).unwrap(),
            bearer
        );
        assert_eq!(
            choose(&[r#"Basic realm=x, Bearer realm="http://h/t",service=s"#]).unwrap(),
            bearer
        );
        assert_eq!(choose(&["Basic realm=x"]).unwrap(), Auth::Basic);
        assert!(choose(&["Bearer service=s"]).unwrap_err().contains("without a realm"));
        // `realm=` alone reads as a token68, so: no realm.
        assert!(choose(&["Bearer realm="]).unwrap_err().contains("without a realm"));
        assert!(choose(&["Digest realm=x"]).unwrap_err().contains("digest"));
        assert!(choose(&[]).is_err());
        assert!(choose(&["Basic realm=x", "Bearer realm=\"x"]).is_err());
    }

    #[test]
    fn token_answers() {
        let t = parse_token(br#"{"token":"abc","expires_in":300,"issued_at":"2026-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!((t.token.as_str(), t.lifetime), ("abc", Duration::from_secs(300)));
        let t = parse_token(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!((t.token.as_str(), t.lifetime), ("xyz", DEFAULT_TOKEN_LIFETIME));
        let t = parse_token(br#"{"token":"","access_token":"xyz","expires_in":0}"#).unwrap();
        assert_eq!((t.token.as_str(), t.lifetime), ("xyz", DEFAULT_TOKEN_LIFETIME));
        assert!(parse_token(b"<html>").is_err());
        assert!(parse_token(br#"{"expires_in":3}"#).is_err());
        assert!(parse_token(br#"{"token":"a\r\nX: y"}"#).is_err());
        assert_eq!(basic("alice", "s3cret:x"), "Basic YWxpY2U6czNjcmV0Ong=");
    }

    #[tokio::test]
    async fn tokens_are_cached_shared_and_expire() {
        let cache = Arc::new(TokenCache::new(2));
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = |lifetime: u64| {
            let fetches = fetches.clone();
            move || async move {
                let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, String>(Token {
                    token: format!("t{n}"),
                    lifetime: Duration::from_secs(lifetime),
                })
            }
        };
        // Eight concurrent misses: one fetch.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, f) = (cache.clone(), fetch(100));
            tasks.push(tokio::spawn(
                async move { cache.get("svc", "s1", None, f).await.unwrap() },
            ));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "t1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(cache.cached("svc", "s1").as_deref(), Some("t1"));
        assert_eq!(cache.cached("other", "s1"), None);
        // A refused token is replaced.
        assert_eq!(cache.get("svc", "s1", Some("t1"), fetch(100)).await.unwrap(), "t2");
        // 100 s lifetime: reused for 90 s, not after.
        cache.advance(Duration::from_secs(89));
        assert_eq!(cache.get("svc", "s1", None, fetch(100)).await.unwrap(), "t2");
        cache.advance(Duration::from_secs(2));
        assert_eq!(cache.cached("svc", "s1"), None);
        assert_eq!(cache.get("svc", "s1", None, fetch(100)).await.unwrap(), "t3");
        // A 3 s token is inside the 5 s slack: not reused by a later caller.
        assert_eq!(cache.get("svc", "short", None, fetch(3)).await.unwrap(), "t4");
        assert_eq!(cache.get("svc", "short", None, fetch(3)).await.unwrap(), "t5");
        // Capacity 2: a third scope pushes out the least recently used one (s1 was used last).
        cache.get("svc", "s1", None, fetch(100)).await.unwrap();
        cache.get("svc", "s3", None, fetch(100)).await.unwrap();
        assert!(cache.cached("svc", "s1").is_some());
        assert_eq!(cache.slots.lock().map.len(), 2);
        assert!(
            !cache
                .slots
                .lock()
                .map
                .contains_key(&("svc".to_owned(), "short".to_owned()))
        );
        // A failed fetch caches nothing.
        let err = cache
            .get("svc", "s4", None, || async { Err::<Token, _>("down".to_string()) })
            .await;
        assert_eq!(err.unwrap_err(), "down");
        assert_eq!(cache.cached("svc", "s4"), None);
    }
}
