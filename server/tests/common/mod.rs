//! Shared harness for the black-box API tests: starts a real `berth serve` process on a free
//! loopback port with its own temporary storage, talks to it over TCP with reqwest, and offers
//! small helpers for the OCI Distribution flows (blob and manifest pushes, error bodies).
//!
//! Set `BERTH_TEST_URL=http://host:port` to run the tests against an already running registry
//! instead (for example a reference registry, to check the expectations themselves). In that
//! mode tests that need a particular configuration or a restart are skipped, and
//! `BERTH_TEST_DELETE_ENABLED` (default `true`) says whether that registry allows deletes.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Client, Method, Response, StatusCode, Url};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCTET: &str = "application/octet-stream";

/// Digest of the two bytes `{}` (the OCI empty descriptor).
pub const EMPTY_JSON_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// Digest of zero bytes.
pub const EMPTY_DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Every manifest type, for `Accept` on manifest requests (some registries answer only the
/// types a client says it accepts).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json";

// ---------------------------------------------------------------------------------------------
// Small pure helpers
// ---------------------------------------------------------------------------------------------

/// `sha256:<hex>` of the bytes.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures can be reproduced from the seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An htpasswd file of `users` (bcrypt cost 4) in `dir`, written by `berth htpasswd`; its path.
pub fn htpasswd(dir: &std::path::Path, users: &[(&str, &str)]) -> String {
    let mut lines = String::new();
    for (u, p) in users {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["htpasswd", u, "--cost", "4"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{p}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        lines.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    let path = dir.join("htpasswd");
    std::fs::write(&path, lines).unwrap();
    path.display().to_string()
}

/// A token signing key and certificate in `dir`, made by `berth keygen --alg es256`: their paths.
pub fn keygen(dir: &std::path::Path) -> (String, String) {
    let (key, cert) = (dir.join("token.pem"), dir.join("token.crt"));
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["keygen", "--alg", "es256", "--key"])
        .arg(&key)
        .arg("--cert")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (key.display().to_string(), cert.display().to_string())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A value unique to this process and call, for seeds and names.
pub fn unique_u64() -> u64 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let h = Sha256::digest(format!("{}-{}-{}", std::process::id(), t, n).as_bytes());
    u64::from_le_bytes(h[..8].try_into().unwrap())
}

/// A repository name unique to this run: `<prefix>-<10 hex>`. `prefix` may contain slashes.
pub fn unique_repo(prefix: &str) -> String {
    format!("{prefix}-{:010x}", unique_u64() & 0xff_ffff_ffff)
}

/// A random, never-pushed sha256 digest.
pub fn random_digest() -> String {
    sha256(&unique_u64().to_le_bytes())
}

/// A random UUID-shaped string (v4 layout).
pub fn random_uuid() -> String {
    let a = unique_u64();
    let b = unique_u64();
    let h = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Header value as a string, if present and text.
pub fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Header value that must be present.
pub fn must_header(h: &HeaderMap, name: &str) -> String {
    header(h, name).unwrap_or_else(|| panic!("response has no {name} header; headers: {h:?}"))
}

/// Content-Type without parameters, lowercased.
pub fn media_type(h: &HeaderMap) -> Option<String> {
    header(h, "content-type").map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Status, headers and body of a response, read completely.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// `METHOD url`, for messages.
    pub what: String,
}

impl Reply {
    pub async fn read(what: String, resp: Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        // A body that breaks off (e.g. a Content-Length the server does not honour) is kept as
        // what arrived; assertions on the bytes will say so.
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                eprintln!("{what}: reading the response body failed: {e:?}");
                Vec::new()
            }
        };
        Reply {
            status,
            headers,
            body,
            what,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.headers, name)
    }

    pub fn must_header(&self, name: &str) -> String {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "{}: response ({}) has no {name} header; headers: {:?}",
                self.what, self.status, self.headers
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.text()))
    }

    /// Panic with a full description unless the status is `want`.
    pub fn expect(&self, want: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            want,
            "{}: expected status {want}, got {}; headers {:?}; body {:?}",
            self.what,
            self.status,
            self.headers,
            truncate(&self.text(), 2000)
        );
        self
    }

    /// Assert a header's exact value.
    pub fn expect_header(&self, name: &str, want: &str) -> &Self {
        assert_eq!(
            self.header(name).as_deref(),
            Some(want),
            "{}: header {name}; all headers {:?}",
            self.what,
            self.headers
        );
        self
    }

    /// Assert an OCI error: this status, `Content-Type: application/json`, and a body
    /// `{"errors":[{"code":…,"message":…}]}` whose first code is one of `codes` (any code when
    /// `codes` is empty). Returns the first error object.
    pub fn expect_error(&self, status: u16, codes: &[&str]) -> Value {
        self.expect(status);
        let ct = media_type(&self.headers);
        assert_eq!(
            ct.as_deref(),
            Some("application/json"),
            "{}: error response Content-Type; headers {:?}; body {:?}",
            self.what,
            self.headers,
            truncate(&self.text(), 500)
        );
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: error body is not JSON ({e}): {:?}",
                self.what,
                truncate(&self.text(), 500)
            )
        });
        let first = v
            .get("errors")
            .and_then(|e| e.as_array())
            .and_then(|a| a.first())
            .unwrap_or_else(|| panic!("{}: error body has no errors[0]: {v}", self.what))
            .clone();
        let code = first
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or_else(|| panic!("{}: errors[0] has no string code: {v}", self.what));
        assert!(
            code.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !code.is_empty(),
            "{}: error code {code:?} is not UPPER_SNAKE",
            self.what
        );
        assert!(
            first.get("message").map(|m| m.is_string()).unwrap_or(false),
            "{}: errors[0] has no string message: {v}",
            self.what
        );
        if !codes.is_empty() {
            assert!(
                codes.contains(&code),
                "{}: expected error code {codes:?}, got {code:?}; body {v}",
                self.what
            );
        }
        first
    }

    /// The error code of an OCI error body, if there is one.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_owned)
    }
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut i = n;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        format!("{}…({} bytes)", &s[..i], s.len())
    }
}

// ---------------------------------------------------------------------------------------------
// The registry process
// ---------------------------------------------------------------------------------------------

fn external_url() -> Option<String> {
    std::env::var("BERTH_TEST_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().trim_end_matches('/').to_owned())
}

/// Whether the tests run against an external registry (`BERTH_TEST_URL`).
/// The throwaway PostgreSQL server of this test binary (the engine's test harness).
#[path = "../../../engine/tests/support/postgres.rs"]
pub mod postgres;

/// Whether registries this binary starts keep their metadata in PostgreSQL
/// (`BERTH_TEST_POSTGRES=1`): each gets a new database on a server this binary starts, and a
/// registry sharing another's storage shares its database too.
pub fn on_postgres() -> bool {
    std::env::var("BERTH_TEST_POSTGRES").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// `REGISTRY_DATABASE_*` settings for a new, empty database on this binary's PostgreSQL server.
pub async fn database_env() -> Vec<(String, String)> {
    let s = postgres::shared().database().await;
    [
        ("REGISTRY_DATABASE_ENABLED", "true".to_owned()),
        ("REGISTRY_DATABASE_HOST", s.host),
        ("REGISTRY_DATABASE_PORT", s.port.to_string()),
        ("REGISTRY_DATABASE_USER", s.user),
        ("REGISTRY_DATABASE_PASSWORD", s.password),
        ("REGISTRY_DATABASE_DBNAME", s.dbname),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub fn is_external() -> bool {
    external_url().is_some()
}

fn external_delete_enabled() -> bool {
    std::env::var("BERTH_TEST_DELETE_ENABLED")
        .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
        .unwrap_or(true)
}

fn skip(why: &str) {
    eprintln!("SKIPPED against BERTH_TEST_URL: {why}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().unwrap().port()
}

/// A reqwest client that talks plain HTTP/1.1 to loopback: no proxies, no redirects.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("building the HTTP client")
}

/// A running registry under test.
pub struct Registry {
    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub base: String,
    pub client: Client,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    /// The storage of another registry this one shares ([`Registry::share`]).
    shared: Option<PathBuf>,
}

impl Registry {
    /// A registry with the default configuration, or the external one. Only for tests whose
    /// expectations do not depend on configuration.
    pub async fn start() -> Registry {
        match external_url() {
            Some(u) => Registry::external(u),
            None => Registry::spawn(Vec::new()).await,
        }
    }

    /// A registry with these `REGISTRY_*` settings. Against an external registry this is `None`
    /// (the test skips) unless the settings are ones that registry is known to have.
    pub async fn start_with(env: &[(&str, &str)]) -> Option<Registry> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match external_url() {
            Some(u) => {
                let ok = env
                    .iter()
                    .all(|(k, v)| k == "REGISTRY_STORAGE_DELETE_ENABLED" && (v == "true") == external_delete_enabled());
                if ok {
                    Some(Registry::external(u))
                } else {
                    skip(&format!("needs configuration {env:?}"));
                    None
                }
            }
            None => Some(Registry::spawn(env).await),
        }
    }

    /// A registry with deletes enabled.
    pub async fn start_delete_enabled() -> Option<Registry> {
        Registry::start_with(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]).await
    }

    /// A registry with the built-in defaults (no `REGISTRY_*` settings beyond address and
    /// storage). Against an external registry only when `BERTH_TEST_DELETE_ENABLED=false`.
    pub async fn start_default() -> Option<Registry> {
        match external_url() {
            Some(u) if !external_delete_enabled() => Some(Registry::external(u)),
            Some(_) => {
                skip("needs the default configuration (deletes disabled)");
                None
            }
            None => Some(Registry::spawn(Vec::new()).await),
        }
    }

    /// A registry process this test owns (for restarts); `None` against an external registry.
    pub async fn start_local(env: &[(&str, &str)]) -> Option<Registry> {
        if is_external() {
            skip("needs a registry process of its own");
            return None;
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Some(Registry::spawn(env).await)
    }

    /// A handle on a registry another handle runs, by its base URL (for tasks).
    pub fn attach(base: &str) -> Registry {
        Registry::external(base.trim_end_matches('/').to_owned())
    }

    fn external(base: String) -> Registry {
        Registry {
            base,
            client: client(),
            child: None,
            dir: None,
            env: Vec::new(),
            log: None,
            shared: None,
        }
    }

    async fn spawn(env: Vec<(String, String)>) -> Registry {
        Registry::spawn_on(env, None).await
    }

    async fn spawn_on(mut env: Vec<(String, String)>, shared: Option<PathBuf>) -> Registry {
        if on_postgres() && shared.is_none() && !env.iter().any(|(k, _)| k == "REGISTRY_DATABASE_ENABLED") {
            env.extend(database_env().await);
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-api-test")
            .tempdir()
            .expect("tempdir");
        let mut reg = Registry {
            base: String::new(),
            client: client(),
            child: None,
            log: Some(dir.path().join("berth.log")),
            dir: Some(dir),
            env,
            shared,
        };
        reg.launch().await;
        reg
    }

    /// A second berth process, with the same settings, on this registry's storage directory
    /// (which this registry keeps: drop it last).
    pub async fn share(&self) -> Registry {
        Registry::spawn_on(self.env.clone(), Some(self.storage())).await
    }

    /// A second berth process on `other`'s storage directory, with these settings instead of
    /// `other`'s (`other` keeps the directory: drop it last).
    pub async fn spawn_sharing(other: &Registry, env: &[(&str, &str)]) -> Registry {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Registry::spawn_on(env, Some(other.storage())).await
    }

    /// This registry's `REGISTRY_DATABASE_*` settings (none unless its metadata is in
    /// PostgreSQL), for other commands on its storage.
    pub fn database_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter(|(k, _)| k.starts_with("REGISTRY_DATABASE_"))
            .cloned()
            .collect()
    }

    /// The process id of the berth this test started (`None` against an external registry).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The storage directory (local registries only).
    pub fn storage(&self) -> PathBuf {
        match &self.shared {
            Some(s) => s.clone(),
            None => self.dir.as_ref().expect("local registry").path().join("storage"),
        }
    }

    async fn launch(&mut self) {
        let storage = self.storage();
        std::fs::create_dir_all(&storage).unwrap();
        let mut last_err = String::new();
        // A port picked by binding and dropping can be taken by someone else before berth binds
        // it; try a few.
        for _attempt in 0..3 {
            let port = free_port();
            let log_path = self.log.clone().unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
            // --no-config-file: a machine-wide /etc/docker/registry/config.yml must not leak in.
            cmd.arg("serve").arg("--no-config-file");
            for (k, _) in std::env::vars() {
                if k.starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            cmd.env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("REGISTRY_STORAGE_PATH", &storage)
                .env("REGISTRY_LOG_LEVEL", "info");
            // `@BASE@` in a value is this registry's own URL (a token realm on itself).
            for (k, v) in &self.env {
                cmd.env(k, v.replace("@BASE@", &format!("http://127.0.0.1:{port}")));
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log));
            let child = cmd.spawn().expect("spawning berth serve");
            self.child = Some(child);
            self.base = format!("http://127.0.0.1:{port}");
            match self.wait_ready().await {
                Ok(()) => {
                    if self
                        .env
                        .iter()
                        .any(|(k, v)| k == "REGISTRY_DATABASE_ENABLED" && v == "true")
                    {
                        let log = self.log_text();
                        assert!(
                            log.contains("postgresql"),
                            "berth does not say it keeps its metadata in PostgreSQL:\n{log}"
                        );
                    }
                    return;
                }
                Err(e) => {
                    last_err = e;
                    self.kill();
                    let log = self.log_text();
                    // Retry only when the port was taken under us.
                    if !log.to_ascii_lowercase().contains("address") {
                        break;
                    }
                }
            }
        }
        panic!(
            "berth did not start: {last_err}\n--- berth log ---\n{}",
            self.log_text()
        );
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("berth exited early with {status}"));
            }
            if let Ok(r) = probe.get(format!("{}/v2/", self.base)).send().await
                && r.status().as_u16() < 500
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("GET /v2/ did not answer within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the process (SIGKILL); [`Registry::restart`] starts it again.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Set (or replace) a `REGISTRY_*` setting for the next [`Registry::restart`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Stop the process and start it again on the same storage (on a new port: `base` changes).
    pub async fn restart(&mut self) {
        assert!(self.dir.is_some(), "restart needs a local registry");
        self.kill();
        // Connections pooled to the old process are dead.
        self.client = client();
        self.launch().await;
    }

    /// What berth wrote to stderr/stdout so far.
    pub fn log_text(&self) -> String {
        let Some(p) = &self.log else { return String::new() };
        let mut s = String::new();
        if let Ok(mut f) = File::open(p) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    // -----------------------------------------------------------------------------------------
    // URLs and raw requests
    // -----------------------------------------------------------------------------------------

    /// `base` + path (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Resolve a `Location` header (absolute, absolute-path or relative) against the base URL.
    pub fn resolve(&self, location: &str) -> Url {
        let base = Url::parse(&format!("{}/v2/", self.base)).unwrap();
        base.join(location)
            .unwrap_or_else(|e| panic!("bad Location {location:?}: {e}"))
    }

    /// Like [`Registry::resolve`] but keep only path and query and put them on the current base
    /// (for locations handed out by a process that has since been restarted on another port).
    pub fn rebase(&self, location: &str) -> Url {
        let u = self.resolve(location);
        let mut pq = u.path().to_owned();
        if let Some(q) = u.query() {
            pq.push('?');
            pq.push_str(q);
        }
        Url::parse(&self.url(&pq)).unwrap()
    }

    /// Send a request and read the whole reply.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        let req = rb.build().expect("building request");
        let what = format!("{} {}", req.method(), req.url());
        let resp = self
            .client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"));
        Reply::read(what, resp).await
    }

    pub async fn request(&self, method: Method, url: impl reqwest::IntoUrl) -> Reply {
        self.send(self.client.request(method, url)).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, self.url(path)).await
    }

    pub async fn head(&self, path: &str) -> Reply {
        self.request(Method::HEAD, self.url(path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request(Method::DELETE, self.url(path)).await
    }

    /// A request written byte for byte onto a new TCP connection (for paths an URL library
    /// would normalise, such as `..`). `Connection: close`; chunked bodies are decoded.
    pub async fn raw(&self, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hostport = self.base.trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(&hostport).await.expect("connect");
        let mut req = format!("{method} {raw_path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "PUT" || method == "POST" || method == "PATCH" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
            .await
            .expect("raw request timed out")
            .expect("reading raw response");
        parse_raw_response(&format!("{method} {raw_path} (raw)"), &buf, method == "HEAD")
    }

    // -----------------------------------------------------------------------------------------
    // Blobs
    // -----------------------------------------------------------------------------------------

    /// Monolithic push: `POST /v2/<repo>/blobs/uploads/?digest=` with the whole body; asserts
    /// 201 and returns the digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.push_blob_as(repo, data, &sha256(data)).await
    }

    /// [`Registry::push_blob`] under a digest the caller computed (e.g. sha512).
    pub async fn push_blob_as(&self, repo: &str, data: &[u8], digest: &str) -> String {
        let d = digest.to_owned();
        let mut r = self.post_blob_monolithic(repo, &d, data.to_vec()).await;
        if r.status.as_u16() == 202 && is_external() {
            // Registries without single-request uploads (allowed by the spec: "SHOULD") answer
            // 202 and a session; finish with PUT. Berth itself must answer 201 here.
            let loc = self.resolve(&r.must_header("location"));
            r = self
                .send(
                    self.client
                        .put(Registry::with_digest(&loc, &d))
                        .header("content-type", OCTET)
                        .body(data.to_vec()),
                )
                .await;
        }
        r.expect(201);
        assert_eq!(
            r.header("docker-content-digest").as_deref(),
            Some(d.as_str()),
            "{}",
            r.what
        );
        d
    }

    pub async fn post_blob_monolithic(&self, repo: &str, digest: &str, data: Vec<u8>) -> Reply {
        let mut u = Url::parse(&self.url(&format!("/v2/{repo}/blobs/uploads/"))).unwrap();
        u.query_pairs_mut().append_pair("digest", digest);
        self.send(self.client.post(u).header("content-type", OCTET).body(data))
            .await
    }

    /// `POST` a new upload session; asserts 202 and returns the resolved session URL.
    pub async fn start_upload(&self, repo: &str) -> Url {
        let r = self
            .request(Method::POST, self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .await;
        r.expect(202);
        self.resolve(&r.must_header("location"))
    }

    /// `url` with `digest=<d>` added to its query.
    pub fn with_digest(url: &Url, digest: &str) -> Url {
        let mut u = url.clone();
        u.query_pairs_mut().append_pair("digest", digest);
        u
    }

    /// POST then PUT with the whole body; asserts 201 and returns the digest.
    pub async fn push_blob_post_put(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let loc = self.start_upload(repo).await;
        let r = self
            .send(
                self.client
                    .put(Registry::with_digest(&loc, &d))
                    .header("content-type", OCTET)
                    .body(data.to_vec()),
            )
            .await;
        r.expect(201);
        assert_eq!(
            r.header("docker-content-digest").as_deref(),
            Some(d.as_str()),
            "{}",
            r.what
        );
        d
    }

    /// GET a blob and assert it has exactly these bytes.
    pub async fn assert_blob(&self, repo: &str, data: &[u8]) {
        let d = sha256(data);
        let r = self.get(&format!("/v2/{repo}/blobs/{d}")).await;
        r.expect(200);
        assert_eq!(r.body.len(), data.len(), "{}: body length", r.what);
        assert!(r.body == data, "{}: body bytes differ", r.what);
    }

    /// HEAD a blob, returning the status.
    pub async fn blob_status(&self, repo: &str, digest: &str) -> u16 {
        self.head(&format!("/v2/{repo}/blobs/{digest}")).await.status.as_u16()
    }

    // -----------------------------------------------------------------------------------------
    // Manifests
    // -----------------------------------------------------------------------------------------

    pub async fn put_manifest(&self, repo: &str, reference: &str, content_type: &str, body: &[u8]) -> Reply {
        self.send(
            self.client
                .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                .header("content-type", content_type)
                .body(body.to_vec()),
        )
        .await
    }

    /// PUT a manifest, assert 201 and the digest header, return the digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, content_type: &str, body: &[u8]) -> String {
        let r = self.put_manifest(repo, reference, content_type, body).await;
        r.expect(201);
        let d = sha256(body);
        assert_eq!(
            r.header("docker-content-digest").as_deref(),
            Some(d.as_str()),
            "{}",
            r.what
        );
        d
    }

    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Reply {
        self.send(
            self.client
                .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                .header("accept", ACCEPT_MANIFESTS),
        )
        .await
    }

    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Reply {
        self.send(
            self.client
                .head(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                .header("accept", ACCEPT_MANIFESTS),
        )
        .await
    }

    /// Assert GET by `reference` returns exactly `body` with the right headers.
    pub async fn assert_manifest(&self, repo: &str, reference: &str, content_type: &str, body: &[u8]) {
        let r = self.get_manifest(repo, reference).await;
        r.expect(200);
        assert!(
            r.body == body,
            "{}: body differs from what was pushed:\n got {:?}\nwant {:?}",
            r.what,
            truncate(&r.text(), 400),
            truncate(&String::from_utf8_lossy(body), 400)
        );
        r.expect_header("docker-content-digest", &sha256(body));
        assert_eq!(
            media_type(&r.headers).as_deref(),
            Some(content_type),
            "{}: Content-Type",
            r.what
        );
        r.expect_header("content-length", &body.len().to_string());
    }

    /// Push a config and `layers` random layers; return descriptors (not the manifest).
    pub async fn push_image_parts(&self, repo: &str, layers: usize, docker: bool) -> ImageParts {
        let seed = unique_u64();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {},
            "created": "2024-01-01T00:00:00Z",
            "x-seed": seed.to_string(),
        }))
        .unwrap();
        let config_d = self.push_blob(repo, &config).await;
        let mut ls = Vec::new();
        for i in 0..layers {
            let data = random_bytes(300 + i * 17, seed.wrapping_add(i as u64 + 1));
            let d = self.push_blob(repo, &data).await;
            ls.push(Desc {
                media_type: if docker { DOCKER_LAYER } else { OCI_LAYER }.into(),
                digest: d,
                size: data.len(),
            });
        }
        ImageParts {
            config: Desc {
                media_type: if docker { DOCKER_CONFIG } else { OCI_CONFIG }.into(),
                digest: config_d,
                size: config.len(),
            },
            layers: ls,
        }
    }

    /// Push blobs and an OCI image manifest under `reference`; return (bytes, digest).
    pub async fn push_image(&self, repo: &str, reference: &str) -> (Vec<u8>, String) {
        let parts = self.push_image_parts(repo, 2, false).await;
        let m = parts.oci_manifest(json!({}));
        let d = self.push_manifest(repo, reference, OCI_MANIFEST, &m).await;
        (m, d)
    }

    /// Tags list of a repository (asserting 200), without paging parameters.
    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let r = self.get(&format!("/v2/{repo}/tags/list")).await;
        r.expect(200);
        let v = r.json();
        v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!(
                "--- berth log ({}) ---\n{}\n--- end of berth log ---",
                self.base,
                self.log_text()
            );
        }
        self.kill();
    }
}

fn parse_raw_response(what: &str, buf: &[u8], head: bool) -> Reply {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no header end in {:?}", String::from_utf8_lossy(buf)));
    let head_text = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
    let mut headers = HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.append(
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_str(v.trim()).unwrap(),
            );
        }
    }
    let mut body = buf[split + 4..].to_vec();
    if head {
        body.clear();
    } else if header(&headers, "transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    }
    Reply {
        status: StatusCode::from_u16(code).unwrap(),
        headers,
        body,
        what: what.to_owned(),
    }
}

/// A content descriptor.
#[derive(Debug, Clone)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Desc {
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// Config and layers of an image, already pushed.
#[derive(Debug, Clone)]
pub struct ImageParts {
    pub config: Desc,
    pub layers: Vec<Desc>,
}

impl ImageParts {
    /// An OCI image manifest; `extra` fields (an object) are merged in at the top level.
    pub fn oci_manifest(&self, extra: Value) -> Vec<u8> {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.config.json(),
            "layers": self.layers.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        merge(&mut m, extra);
        serde_json::to_vec(&m).unwrap()
    }

    /// A Docker schema 2 manifest.
    pub fn docker_manifest(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": self.config.json(),
            "layers": self.layers.iter().map(Desc::json).collect::<Vec<_>>(),
        }))
        .unwrap()
    }
}

/// Merge the fields of object `extra` into object `m`.
pub fn merge(m: &mut Value, extra: Value) {
    if let (Some(m), Value::Object(e)) = (m.as_object_mut(), extra) {
        for (k, v) in e {
            m.insert(k, v);
        }
    }
}

/// An OCI index over `children` (descriptors with a platform each).
pub fn oci_index(children: &[(Desc, &str)], extra: Value) -> Vec<u8> {
    let ms: Vec<Value> = children
        .iter()
        .map(|(d, arch)| {
            let mut v = d.json();
            v["platform"] = json!({"architecture": arch, "os": "linux"});
            v
        })
        .collect();
    let mut m = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ms});
    merge(&mut m, extra);
    serde_json::to_vec(&m).unwrap()
}

/// Parse a `Link: <url>; rel="next"` header into (path, query pairs). Panics if malformed.
pub fn parse_next_link(base: &Registry, link: &str) -> (String, Vec<(String, String)>) {
    let link = link.trim();
    assert!(link.starts_with('<'), "Link {link:?} does not start with <");
    let end = link.find('>').unwrap_or_else(|| panic!("Link {link:?} has no >"));
    let target = &link[1..end];
    let params = link[end + 1..].to_ascii_lowercase().replace(' ', "");
    assert!(
        params.contains(";rel=\"next\"") || params.contains(";rel=next"),
        "Link {link:?} is not rel=\"next\""
    );
    let u = base.resolve(target);
    let pairs = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    (u.path().to_owned(), pairs)
}

/// Value of a query parameter.
pub fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}
