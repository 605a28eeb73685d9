//! Authentication and authorization over TCP against a `berth` process: basic mode with access
//! rules, token mode with the built-in token server, and start-up refusals.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Registry, Reply, htpasswd, keygen, sha256};
use reqwest::Method;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

const RULES: &str = r#"{"defaultPolicy":"deny","adminUsers":["root"],
  "anonymous":[{"repository":"public/**","permissions":["pull"]}],
  "rules":[{"repository":"${user}/**","users":["*"],"permissions":["pull","push","delete"]},
           {"repository":"public/**","users":["*"],"permissions":["pull","push"]}]}"#;

fn rules(dir: &Path) -> String {
    let p = dir.join("rules.json");
    std::fs::write(&p, RULES).unwrap();
    p.display().to_string()
}

async fn send(reg: &Registry, method: Method, path: &str, auth: Option<&str>, body: Vec<u8>) -> Reply {
    let mut rb = reg.client.request(method, reg.url(path)).body(body);
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    reg.send(rb).await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn push_blob(reg: &Registry, repo: &str, auth: &str, data: &[u8]) -> Reply {
    let path = format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data));
    send(reg, Method::POST, &path, Some(auth), data.to_vec()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_with_access_rules() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(
        dir.path(),
        &[("alice", "a-pass"), ("bob", "b-pass"), ("root", "r-pass")],
    );
    let rules = rules(dir.path());
    let Some(reg) = Registry::start_local(&[
        ("REGISTRY_AUTH_TYPE", "basic"),
        ("REGISTRY_AUTH_HTPASSWD", &pw),
        ("REGISTRY_AUTH_REALM", "Test Realm"),
        ("REGISTRY_ACCESS_CONTROL_CONFIG", &rules),
    ])
    .await
    else {
        return;
    };
    let alice = basic("alice", "a-pass");
    let bob = basic("bob", "b-pass");

    let r = send(&reg, Method::GET, "/v2/", None, vec![]).await;
    r.expect_error(401, &["UNAUTHORIZED"]);
    r.expect_header("www-authenticate", "Basic realm=\"Test Realm\", charset=\"UTF-8\"");
    send(&reg, Method::GET, "/v2/", Some(&basic("alice", "wrong")), vec![])
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    send(&reg, Method::GET, "/v2/", Some(&basic("mallory", "a-pass")), vec![])
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    send(&reg, Method::GET, "/v2/", Some(&alice), vec![]).await.expect(200);

    // own namespace: push and pull; someone else's: 403 DENIED
    push_blob(&reg, "alice/app", &alice, b"alice's layer").await.expect(201);
    let d = sha256(b"alice's layer");
    send(
        &reg,
        Method::GET,
        &format!("/v2/alice/app/blobs/{d}"),
        Some(&alice),
        vec![],
    )
    .await
    .expect(200);
    let r = push_blob(&reg, "alice/app", &bob, b"bob's layer").await;
    let err = r.expect_error(403, &["DENIED"]);
    assert_eq!(err["detail"]["action"], "push");
    send(
        &reg,
        Method::GET,
        &format!("/v2/alice/app/blobs/{d}"),
        Some(&bob),
        vec![],
    )
    .await
    .expect_error(403, &["DENIED"]);
    // anonymous: pull under public/** only, and a 401 (not 403) elsewhere so clients can log in
    push_blob(&reg, "public/base", &bob, b"public layer").await.expect(201);
    let pd = sha256(b"public layer");
    send(&reg, Method::GET, &format!("/v2/public/base/blobs/{pd}"), None, vec![])
        .await
        .expect(200);
    send(&reg, Method::POST, "/v2/public/base/blobs/uploads/", None, vec![])
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    // admin may do anything
    push_blob(&reg, "anything/at/all", &basic("root", "r-pass"), b"root")
        .await
        .expect(201);
    // catalog: only what the caller may pull
    let cat = send(&reg, Method::GET, "/v2/_catalog", Some(&bob), vec![]).await;
    cat.expect(200);
    assert_eq!(cat.json()["repositories"], serde_json::json!(["public/base"]));
    let cat = send(&reg, Method::GET, "/v2/_catalog", Some(&alice), vec![]).await;
    assert_eq!(
        cat.json()["repositories"],
        serde_json::json!(["alice/app", "public/base"])
    );
    // mounting from a repository the caller may not read gives a plain upload session
    let r = send(
        &reg,
        Method::POST,
        &format!("/v2/bob/x/blobs/uploads/?mount={d}&from=alice/app"),
        Some(&bob),
        vec![],
    )
    .await;
    r.expect(202);
    let r = send(
        &reg,
        Method::POST,
        &format!("/v2/alice/y/blobs/uploads/?mount={d}&from=alice/app"),
        Some(&alice),
        vec![],
    )
    .await;
    r.expect(201);
    // the password never reaches the log
    assert!(!reg.log_text().contains("a-pass"));
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn post_form(reg: &Registry, form: &str) -> Reply {
    let rb = reg
        .client
        .post(reg.url("/auth"))
        .header("Content-Type", "application/x-www-form-urlencoded");
    reg.send(rb.body(form.to_owned())).await
}

async fn token(reg: &Registry, auth: Option<&str>, query: &str) -> Reply {
    send(reg, Method::GET, &format!("/auth?{query}"), auth, vec![]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn token_mode_with_the_built_in_token_server() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "a-pass"), ("bob", "b-pass")]);
    let rules = rules(dir.path());
    let (key, cert) = keygen(dir.path());
    let realm = "http://registry.test/auth";
    let env = [
        ("REGISTRY_AUTH_TYPE", "token"),
        ("REGISTRY_AUTH_TOKEN_REALM", realm),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "berth-test"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "berth-issuer"),
        ("REGISTRY_AUTH_TOKEN_SERVER_ENABLED", "true"),
        ("REGISTRY_AUTH_TOKEN_SERVER_KEY", key.as_str()),
        ("REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE", cert.as_str()),
        ("REGISTRY_AUTH_HTPASSWD", pw.as_str()),
        ("REGISTRY_ACCESS_CONTROL_CONFIG", rules.as_str()),
    ];
    let Some(reg) = Registry::start_local(&env).await else {
        return;
    };
    // challenges name exactly what is needed
    let r = send(&reg, Method::GET, "/v2/", None, vec![]).await;
    r.expect(401).expect_header(
        "www-authenticate",
        &format!("Bearer realm=\"{realm}\",service=\"berth-test\""),
    );
    let r = send(&reg, Method::POST, "/v2/alice/app/blobs/uploads/", None, vec![]).await;
    r.expect_header(
        "www-authenticate",
        &format!("Bearer realm=\"{realm}\",service=\"berth-test\",scope=\"repository:alice/app:pull,push\""),
    );
    let r = send(&reg, Method::GET, "/v2/_catalog", None, vec![]).await;
    assert!(
        r.must_header("www-authenticate")
            .contains("scope=\"registry:catalog:*\"")
    );

    // the token endpoint
    let alice = basic("alice", "a-pass");
    token(&reg, Some(&alice), "scope=repository:alice/app:pull")
        .await
        .expect_error(400, &["INVALID_REQUEST"]);
    let r = token(&reg, Some(&alice), "service=other").await;
    let e = r.expect_error(400, &["INVALID_REQUEST"]);
    assert!(e["message"].as_str().unwrap().contains("berth-test"));
    token(&reg, Some(&basic("alice", "nope")), "service=berth-test")
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    let r = token(
        &reg,
        Some(&alice),
        "service=berth-test&scope=repository:alice/app:pull,push&scope=repository:bob/x:pull,push&offline_token=true",
    )
    .await;
    r.expect(200);
    let t: Value = r.json();
    for k in ["token", "access_token", "expires_in", "issued_at", "refresh_token"] {
        assert!(!t[k].is_null(), "{k} missing in {t}");
    }
    assert_eq!(t["expires_in"], 300);
    let tok = t["token"].as_str().unwrap().to_owned();

    // the token pushes into alice/app and nothing into bob/x (granted subset, not an error)
    push_blob(&reg, "alice/app", &bearer(&tok), b"layer").await.expect(201);
    let r = push_blob(&reg, "bob/x", &bearer(&tok), b"layer").await;
    r.expect(401);
    let c = r.must_header("www-authenticate");
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"repository:bob/x:pull,push\""),
        "{c}"
    );
    send(&reg, Method::GET, "/v2/", Some(&bearer(&tok)), vec![])
        .await
        .expect(200);

    // OAuth2 POST: password and refresh_token grants
    let form = "grant_type=password&username=alice&password=a-pass&service=berth-test&client_id=test&scope=repository%3Aalice%2Fapp%3Apull";
    let r = post_form(&reg, form).await;
    r.expect(200);
    let refresh = r.json()["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh token: {}", r.text()))
        .to_owned();
    let form = format!(
        "grant_type=refresh_token&refresh_token={refresh}&service=berth-test&scope=repository%3Aalice%2Fapp%3Apull"
    );
    let r = post_form(&reg, &form).await;
    r.expect(200);
    let pulled = r.json()["token"].as_str().unwrap().to_owned();
    let d = sha256(b"layer");
    send(
        &reg,
        Method::GET,
        &format!("/v2/alice/app/blobs/{d}"),
        Some(&bearer(&pulled)),
        vec![],
    )
    .await
    .expect(200);
    let r = post_form(
        &reg,
        "grant_type=refresh_token&refresh_token=garbage&service=berth-test",
    )
    .await;
    r.expect_error(401, &["UNAUTHORIZED"]);

    // `berth token` mints a token offline with the same key
    let mut cmd = Command::new(BERTH);
    cmd.args([
        "token",
        "--no-config-file",
        "--user",
        "ci",
        "--scope",
        "repository:alice/app:pull",
    ]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    send(
        &reg,
        Method::GET,
        &format!("/v2/alice/app/blobs/{d}"),
        Some(&bearer(&minted)),
        vec![],
    )
    .await
    .expect(200);
    send(
        &reg,
        Method::POST,
        "/v2/alice/app/blobs/uploads/",
        Some(&bearer(&minted)),
        vec![],
    )
    .await
    .expect(401);

    // published keys, and forged tokens
    let jwks = send(&reg, Method::GET, "/.well-known/jwks.json", None, vec![]).await;
    jwks.expect(200);
    let kid = jwks.json()["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert!(!kid.is_empty());
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let payload = tok.split('.').nth(1).unwrap();
    let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let r = send(&reg, Method::GET, "/v2/", Some(&bearer(&none)), vec![]).await;
    r.expect(401);
    assert!(r.must_header("www-authenticate").contains("error=\"invalid_token\""));
    assert!(
        reg.log_text().contains("alg \\\"none\\\"") || reg.log_text().contains("alg \"none\""),
        "the log says why"
    );
    // a basic header in token mode is refused with the Bearer challenge
    let r = send(&reg, Method::GET, "/v2/", Some(&alice), vec![]).await;
    r.expect(401);
    assert!(r.must_header("www-authenticate").starts_with("Bearer "));
    assert!(!reg.log_text().contains("a-pass"));
}

fn start_fails(env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BERTH);
    cmd.args(["serve", "--no-config-file"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("REGISTRY_HTTP_ADDR", "127.0.0.1:0");
    cmd.env("REGISTRY_STORAGE_PATH", std::env::temp_dir().join("berth-never-used"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "berth should refuse to start: {out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn misconfigurations_stop_start_up_with_the_fix() {
    let e = start_fails(&[
        ("REGISTRY_AUTH_TYPE", "token"),
        ("REGISTRY_AUTH_TOKEN_REALM", "https://auth.example.com/token"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "issuer"),
        ("REGISTRY_AUTH_TOKEN_JWKS", "/nonexistent/jwks.json"),
    ]);
    assert!(
        e.contains("auth.token.service (env REGISTRY_AUTH_TOKEN_SERVICE) is required"),
        "{e}"
    );
    let e = start_fails(&[("REGISTRY_AUTH_TYPE", "basic")]);
    assert!(e.contains("REGISTRY_AUTH_HTPASSWD"), "{e}");
    let e = start_fails(&[("BERTH_IO_ENGINE", "uring2")]);
    assert!(
        e.contains("BERTH_IO_ENGINE=\"uring2\" is not one of uring, std: unset it or set one of those"),
        "{e}"
    );
    let e = start_fails(&[("BERTH_IO_LARGE_BUFFERS", "lots")]);
    assert!(
        e.contains("BERTH_IO_LARGE_BUFFERS=\"lots\" is not a number of 1 MiB buffers from 0 to 4096"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("htpasswd");
    std::fs::write(
        &bad,
        "ok:$2y$04$abcdefghijklmnopqrstuuJ0VzmQ8HGY4d6UeI3eN6m0rbx8YwSlm\nbob:$apr1$xyz$abc\n",
    )
    .unwrap();
    let out = Command::new(BERTH)
        .args(["serve", "--no-config-file"])
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .env("REGISTRY_STORAGE_PATH", dir.path().join("s"))
        .env("REGISTRY_AUTH_TYPE", "basic")
        .env("REGISTRY_AUTH_HTPASSWD", &bad)
        .output()
        .unwrap();
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        e.contains(&format!("{}:2:", bad.display())) && e.contains("htpasswd -B"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn separate_token_server_and_registry() {
    if common::is_external() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("carol", "c-pass")]);
    let (key, cert) = keygen(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let realm = format!("http://127.0.0.1:{port}/token");
    let common_env = [
        ("REGISTRY_AUTH_TYPE", "token"),
        ("REGISTRY_AUTH_TOKEN_REALM", realm.as_str()),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "split"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "split-issuer"),
    ];
    let mut ts = Command::new(BERTH);
    ts.args([
        "token-server",
        "--no-config-file",
        "--addr",
        &format!("127.0.0.1:{port}"),
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") {
            ts.env_remove(k);
        }
    }
    ts.envs(common_env)
        .env("REGISTRY_AUTH_TOKEN_SERVER_ENABLED", "true")
        .env("REGISTRY_AUTH_TOKEN_SERVER_PATH", "/token")
        .env("REGISTRY_AUTH_TOKEN_SERVER_KEY", &key)
        .env("REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE", &cert)
        .env("REGISTRY_AUTH_HTPASSWD", &pw)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // A registry that gets the keys from the token server's JWKS URL starts before the token
    // server: its first fetch fails, and the first token with the then unknown kid fetches again.
    let jwks_url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let mut url_env = common_env.to_vec();
    url_env.push(("REGISTRY_AUTH_TOKEN_JWKSURL", jwks_url.as_str()));
    let by_url = Registry::start_local(&url_env).await.unwrap();
    let _ts = Kill(ts.spawn().unwrap());
    let mut registry_env = common_env.to_vec();
    registry_env.push(("REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE", cert.as_str()));
    let reg = Registry::start_local(&registry_env).await.unwrap();
    let client = common::client();
    let url = format!("{realm}?service=split&scope=repository:carol/app:pull,push");
    let mut token = None;
    for _ in 0..200 {
        if let Ok(r) = client.get(&url).basic_auth("carol", Some("c-pass")).send().await {
            assert_eq!(r.status(), 200);
            token = Some(r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let token = token.expect("the token server did not answer");
    push_blob(&reg, "carol/app", &bearer(&token), b"split")
        .await
        .expect(201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = push_blob(&by_url, "carol/app", &bearer(&token), b"split").await;
        if r.status == 201 {
            break;
        }
        r.expect(401);
        assert!(
            std::time::Instant::now() < deadline,
            "the JWKS was not fetched again: {}",
            by_url.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(by_url.log_text().contains("JWKS fetched"), "{}", by_url.log_text());
    // the token server serves nothing else
    let r = client.get(format!("http://127.0.0.1:{port}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// Lay out `<dir>` as the kubelet does for a projected Secret volume: the files live in a
/// timestamped folder, `..data` points at it, and each namespace folder is a link through it.
fn kube_secrets(dir: &Path, generation: &str, creds: &[(&str, &str, &str)]) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..{generation}");
    for (ns, user, password) in creds {
        let d = dir.join(&stamp).join(ns);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("username"), user).unwrap();
        std::fs::write(d.join("password"), format!("{password}\n")).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.starts_with('.') && !creds.iter().any(|(ns, _, _)| *ns == name) {
            std::fs::remove_file(dir.join(&name)).unwrap();
        }
    }
    for (ns, _, _) in creds {
        if std::fs::symlink_metadata(dir.join(ns)).is_err() {
            symlink(format!("..data/{ns}"), dir.join(ns)).unwrap();
        }
    }
}

/// Poll until `check` holds (the secrets directory is re-read every 2 s).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_credentials_from_mounted_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "a-pass")]);
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    kube_secrets(
        &secrets,
        "2026_11_23_01",
        &[("team-a", "ci-a", "first-secret"), ("team-b", "ci-b", "b-secret")],
    );
    let Some(reg) = Registry::start_local(&[
        ("REGISTRY_AUTH_HTPASSWD", &pw),
        ("REGISTRY_AUTH_SECRETS_DIRECTORY", secrets.to_str().unwrap()),
    ])
    .await
    else {
        return;
    };
    let ci_a = basic("ci-a", "first-secret");
    send(&reg, Method::GET, "/v2/", Some(&ci_a), vec![]).await.expect(200);
    send(&reg, Method::GET, "/v2/", Some(&basic("ci-a", "b-secret")), vec![])
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    // Pull and push under the namespace (and the namespace itself); nowhere else.
    push_blob(&reg, "team-a/app", &ci_a, b"a layer").await.expect(201);
    push_blob(&reg, "team-a", &ci_a, b"a layer").await.expect(201);
    let d = sha256(b"a layer");
    send(
        &reg,
        Method::GET,
        &format!("/v2/team-a/app/blobs/{d}"),
        Some(&ci_a),
        vec![],
    )
    .await
    .expect(200);
    push_blob(&reg, "team-b/app", &ci_a, b"a layer")
        .await
        .expect_error(403, &["DENIED"]);
    push_blob(&reg, "team-ab/app", &ci_a, b"a layer")
        .await
        .expect_error(403, &["DENIED"]);
    let ci_b = basic("ci-b", "b-secret");
    push_blob(&reg, "team-b/app", &ci_b, b"b layer").await.expect(201);
    send(
        &reg,
        Method::GET,
        &format!("/v2/team-a/app/blobs/{d}"),
        Some(&ci_b),
        vec![],
    )
    .await
    .expect_error(403, &["DENIED"]);
    // The htpasswd user is not confined; the catalog shows a namespace user only its own.
    push_blob(&reg, "elsewhere/app", &basic("alice", "a-pass"), b"x")
        .await
        .expect(201);
    let cat = send(&reg, Method::GET, "/v2/_catalog", Some(&ci_a), vec![]).await;
    assert_eq!(cat.json()["repositories"], serde_json::json!(["team-a", "team-a/app"]));
    let cat = send(
        &reg,
        Method::GET,
        "/v2/_catalog",
        Some(&basic("alice", "a-pass")),
        vec![],
    )
    .await;
    assert_eq!(cat.json()["repositories"].as_array().unwrap().len(), 4);

    // Kubernetes updates the Secret: team-a's password rotates, team-b is removed.
    kube_secrets(&secrets, "2026_11_23_02", &[("team-a", "ci-a", "second-secret")]);
    eventually("the rotated password works", async || {
        send(&reg, Method::GET, "/v2/", Some(&basic("ci-a", "second-secret")), vec![])
            .await
            .status
            == 200
    })
    .await;
    send(&reg, Method::GET, "/v2/", Some(&ci_a), vec![])
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    send(&reg, Method::GET, "/v2/", Some(&ci_b), vec![])
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    let log = reg.log_text();
    assert!(log.contains("namespace credentials reloaded"), "{log}");
    for secret in ["first-secret", "second-secret", "b-secret", "a-pass"] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_credentials_with_the_token_server() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    for (ns, user, password) in [("team-a", "ci-a", "a-secret"), ("team-b", "ci-b", "b-secret")] {
        std::fs::create_dir_all(secrets.join(ns)).unwrap();
        std::fs::write(secrets.join(ns).join("username"), user).unwrap();
        std::fs::write(secrets.join(ns).join("password"), password).unwrap();
    }
    let (key, _) = keygen(dir.path());
    let Some(reg) = Registry::start_local(&[
        ("REGISTRY_AUTH_TOKEN_REALM", "http://registry.test/auth"),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "berth-test"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "berth-issuer"),
        ("REGISTRY_AUTH_TOKEN_SERVER_ENABLED", "true"),
        ("REGISTRY_AUTH_TOKEN_SERVER_KEY", key.as_str()),
        ("REGISTRY_AUTH_SECRETS_DIRECTORY", secrets.to_str().unwrap()),
    ])
    .await
    else {
        return;
    };
    let ci_a = basic("ci-a", "a-secret");
    let scope = "scope=repository:team-a/app:pull,push&scope=repository:team-b/app:pull,push";
    let r = token(&reg, Some(&ci_a), &format!("service=berth-test&{scope}")).await;
    r.expect(200);
    let tok = r.json()["token"].as_str().unwrap().to_owned();
    let claims: Value = {
        use base64::Engine as _;
        let payload = tok.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}]),
        "nothing is granted outside the namespace"
    );
    push_blob(&reg, "team-a/app", &bearer(&tok), b"via token")
        .await
        .expect(201);
    push_blob(&reg, "team-b/app", &bearer(&tok), b"via token")
        .await
        .expect(401);
    token(&reg, Some(&basic("ci-a", "b-secret")), "service=berth-test")
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    // The OAuth2 form (docker login with a refresh token) works for namespace users too.
    let r = post_form(&reg, "grant_type=password&service=berth-test&client_id=t&username=ci-b&password=b-secret&scope=repository:team-b/app:push,pull").await;
    r.expect(200);
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let r = post_form(
        &reg,
        &format!("grant_type=refresh_token&service=berth-test&client_id=t&refresh_token={refresh}&scope=repository:team-a/app:pull"),
    )
    .await;
    r.expect(200);
    let tok = r.json()["access_token"].as_str().unwrap().to_owned();
    send(
        &reg,
        Method::HEAD,
        &format!("/v2/team-a/app/blobs/{}", sha256(b"via token")),
        Some(&bearer(&tok)),
        vec![],
    )
    .await
    .expect(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_address_rules_and_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "a-pass")]);
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"defaultPolicy": "deny",
            "anonymous": [{"repository": "**", "permissions": ["pull"], "ips": ["127.0.0.1", "::1"]}],
            "rules": [{"repository": "**", "users": ["*"], "permissions": ["pull", "push"], "ips": ["203.0.113.0/24"]},
                      {"repository": "**", "users": ["*"], "permissions": ["pull"]}]}"#,
    )
    .unwrap();
    let base = [
        ("REGISTRY_AUTH_HTPASSWD", pw.as_str()),
        ("REGISTRY_ACCESS_CONTROL_CONFIG", rules.to_str().unwrap()),
    ];
    let alice = basic("alice", "a-pass");
    let push_from = async |reg: &Registry, xff: Option<&str>, data: &[u8]| {
        let path = format!("/v2/ci/app/blobs/uploads/?digest={}", sha256(data));
        let mut rb = reg
            .client
            .post(reg.url(&path))
            .header("Authorization", &alice)
            .body(data.to_vec());
        if let Some(x) = xff {
            rb = rb.header("X-Forwarded-For", x);
        }
        reg.send(rb).await
    };
    // Without trusted proxies, X-Forwarded-For is ignored: the peer (loopback) decides.
    let Some(reg) = Registry::start_local(&base).await else {
        return;
    };
    push_from(&reg, Some("203.0.113.5"), b"one")
        .await
        .expect_error(403, &["DENIED"]);
    let mut env = base.to_vec();
    env.push(("REGISTRY_HTTP_TRUSTEDPROXIES", "127.0.0.0/8, ::1"));
    let reg = Registry::start_local(&env).await.unwrap();
    push_from(&reg, Some("203.0.113.5"), b"two").await.expect(201);
    push_from(&reg, Some("203.0.113.5, 127.0.0.1"), b"three")
        .await
        .expect(201);
    push_from(&reg, Some("198.51.100.1"), b"four")
        .await
        .expect_error(403, &["DENIED"]);
    push_from(&reg, Some("203.0.113.5, 198.51.100.1"), b"five")
        .await
        .expect_error(403, &["DENIED"]);
    // Anonymous pulls only from loopback itself.
    let blob = format!("/v2/ci/app/blobs/{}", sha256(b"two"));
    send(&reg, Method::GET, &blob, None, vec![]).await.expect(200);
    let r = reg
        .send(reg.client.get(reg.url(&blob)).header("X-Forwarded-For", "198.51.100.1"))
        .await;
    r.expect_error(401, &["UNAUTHORIZED"]);
}

#[test]
fn keygen_if_missing_keeps_an_existing_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = keygen(dir.path());
    let before = std::fs::read(&key).unwrap();
    let run = |extra: &[&str]| {
        Command::new(BERTH)
            .args(["keygen", "--key", &key, "--cert", &cert])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--if-missing"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key was kept");
    assert!(
        !run(&[]).status.success(),
        "without --if-missing an existing key is not overwritten"
    );
    std::fs::remove_file(&cert).unwrap();
    let out = run(&["--if-missing"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not"),
        "{out:?}"
    );
}

/// Claims of a JWT, unverified (the test only reads what the server wrote).
fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// Settings of a registry with the built-in token server, users from `htpasswd` (and
/// `secrets`), plus `extra`.
fn token_env<'a>(key: &'a str, htpasswd: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("REGISTRY_AUTH_TOKEN_REALM", "http://registry.test/auth"),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "berth-test"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "berth-issuer"),
        ("REGISTRY_AUTH_TOKEN_SERVER_ENABLED", "true"),
        ("REGISTRY_AUTH_TOKEN_SERVER_KEY", key),
        ("REGISTRY_AUTH_HTPASSWD", htpasswd),
    ];
    env.extend_from_slice(extra);
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_refuses_malformed_credentials_and_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "a-pass")]);
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[{"repository":"team-a/*","users":["*"],"permissions":["pull"]},
                     {"repository":"${user}/**","users":["*"],"permissions":["pull","push","delete"]}]}"#,
    )
    .unwrap();
    let (key, _) = keygen(dir.path());
    let env = token_env(
        &key,
        &pw,
        &[("REGISTRY_ACCESS_CONTROL_CONFIG", rules.to_str().unwrap())],
    );
    let Some(reg) = Registry::start_local(&env).await else {
        return;
    };
    // A malformed Authorization header is a 401 with the Basic challenge, never an anonymous token.
    use base64::Engine as _;
    let no_colon = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice"));
    for bad in ["Basic !!!", "Basic", no_colon.as_str(), "Bearer abc", "Digest x"] {
        let r = token(&reg, Some(bad), "service=berth-test&scope=repository:alice/app:pull").await;
        r.expect_error(401, &["UNAUTHORIZED"]);
        assert!(
            r.must_header("www-authenticate").starts_with("Basic realm="),
            "{bad}: {:?}",
            r.headers
        );
    }
    let r = reg
        .raw("GET", "/auth?service=berth-test", &[("Authorization", "Basic é")], b"")
        .await;
    r.expect_error(401, &["UNAUTHORIZED"]);
    // The same header on a registry request is a 401 too, not an anonymous caller.
    let r = reg.raw("GET", "/v2/", &[("Authorization", "Bearer é")], b"").await;
    r.expect_error(401, &["UNAUTHORIZED"]);
    assert!(r.must_header("www-authenticate").starts_with("Bearer "));

    // Scopes naming something that is not a repository name are refused, naming the scope.
    let alice = basic("alice", "a-pass");
    for bad in [
        "repository:Alice/App:pull",
        "repository:team-a/%C3%A9:pull",
        "repository:team-a/*:pull",
        "repository:a//b:pull",
    ] {
        let r = token(&reg, Some(&alice), &format!("service=berth-test&scope={bad}")).await;
        let e = r.expect_error(400, &["INVALID_REQUEST"]);
        assert!(
            e["message"].as_str().unwrap().contains("invalid repository name"),
            "{e}"
        );
    }
    // Duplicate scopes become one access entry with the union of what was granted.
    let r = token(
        &reg,
        Some(&alice),
        "service=berth-test&scope=repository:alice/app:pull&scope=repository:team-a/x:pull&scope=repository:alice/app:push%20repository:alice/app:delete,pull",
    )
    .await;
    r.expect(200);
    assert_eq!(
        claims_of(r.json()["token"].as_str().unwrap())["access"],
        serde_json::json!([
            {"type": "repository", "name": "alice/app", "actions": ["pull", "push", "delete"]},
            {"type": "repository", "name": "team-a/x", "actions": ["pull"]}
        ])
    );
}

/// Send wrong passwords for `user` as the client `xff` until the answer is a 429 with at least
/// `min_wait` seconds to wait; the statuses seen on the way.
async fn drive_into_backoff(reg: &Registry, path: &str, user: &str, xff: &str, min_wait: u64) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let rb = reg
            .client
            .get(reg.url(path))
            .header("Authorization", basic(user, "wrong guess"))
            .header("X-Forwarded-For", xff);
        let r = reg.send(rb).await;
        seen.push(r.status.as_u16());
        if r.status == 429 {
            let e = r.expect_error(429, &["TOOMANYREQUESTS"]);
            assert!(!e["message"].as_str().unwrap().contains(user), "{e}");
            let wait: u64 = r.must_header("retry-after").parse().unwrap();
            if wait >= min_wait {
                return seen;
            }
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        } else {
            r.expect_error(401, &["UNAUTHORIZED"]);
        }
    }
    panic!("no back-off after {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "a-pass")]);
    let throttle = [
        ("REGISTRY_HTTP_TRUSTEDPROXIES", "127.0.0.0/8"),
        ("REGISTRY_AUTH_THROTTLE_FREEATTEMPTS", "2"),
        ("REGISTRY_AUTH_THROTTLE_ADDRESSFREEATTEMPTS", "1000"),
        ("REGISTRY_AUTH_THROTTLE_MAXBACKOFF", "30s"),
    ];
    let mut env = vec![("REGISTRY_AUTH_HTPASSWD", pw.as_str())];
    env.extend_from_slice(&throttle);
    let Some(reg) = Registry::start_local(&env).await else {
        return;
    };
    let from = |xff: &'static str, auth: String| {
        reg.client
            .get(reg.url("/v2/"))
            .header("Authorization", auth)
            .header("X-Forwarded-For", xff)
    };
    // Two free failures, then back-off; an unknown user sees exactly the same answers.
    let known = drive_into_backoff(&reg, "/v2/", "alice", "198.51.100.7", 1).await;
    let unknown = drive_into_backoff(&reg, "/v2/", "mallory", "198.51.100.7", 1).await;
    assert_eq!(known, vec![401, 401, 401, 429]);
    assert_eq!(unknown, known, "the answers do not tell which users exist");
    // Now longer waits: the right password is refused too while the wait lasts (bcrypt never runs)...
    drive_into_backoff(&reg, "/v2/", "alice", "198.51.100.7", 3).await;
    let r = reg.send(from("198.51.100.7", basic("alice", "a-pass"))).await;
    r.expect_error(429, &["TOOMANYREQUESTS"]);
    let wait: u64 = r.must_header("retry-after").parse().unwrap();
    // ...but alice from another address logs in at once.
    reg.send(from("203.0.113.9", basic("alice", "a-pass")))
        .await
        .expect(200);
    // After the wait, the right password works from the attacker's address and resets it.
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    reg.send(from("198.51.100.7", basic("alice", "a-pass")))
        .await
        .expect(200);
    reg.send(from("198.51.100.7", basic("alice", "wrong")))
        .await
        .expect_error(401, &["UNAUTHORIZED"]);
    // A malformed header on a registry request is a clear 401 with the Basic challenge.
    let r = reg.raw("GET", "/v2/", &[("Authorization", "Basic é")], b"").await;
    r.expect_error(401, &["UNAUTHORIZED"]);
    assert!(r.must_header("www-authenticate").starts_with("Basic realm="));
    let metrics = reg.get("/metrics").await.text();
    let throttled: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_auth_throttled_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(throttled >= 3, "{throttled}");
    assert!(!reg.log_text().contains("a-pass") && !reg.log_text().contains("wrong guess"));

    // The token server throttles the same way: Basic header and password grant.
    let (key, _) = keygen(dir.path());
    let env = token_env(&key, &pw, &throttle);
    let reg = Registry::start_local(&env).await.unwrap();
    let seen = drive_into_backoff(&reg, "/auth?service=berth-test", "alice", "198.51.100.7", 1).await;
    assert_eq!(seen, vec![401, 401, 401, 429]);
    let r = reg
        .send(
            reg.client
                .post(reg.url("/auth"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("X-Forwarded-For", "198.51.100.7")
                .body("grant_type=password&username=alice&password=a-pass&service=berth-test"),
        )
        .await;
    r.expect_error(429, &["TOOMANYREQUESTS"]);
    assert!(r.header("retry-after").is_some());
    let r = reg
        .send(
            reg.client
                .get(reg.url("/auth?service=berth-test"))
                .header("Authorization", basic("alice", "a-pass"))
                .header("X-Forwarded-For", "203.0.113.9"),
        )
        .await;
    r.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_stop_working_when_the_password_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "a-pass"), ("bob", "b-pass")]);
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("team-a")).unwrap();
    std::fs::write(secrets.join("team-a/username"), "ci-a").unwrap();
    std::fs::write(secrets.join("team-a/password"), "first-secret").unwrap();
    let (key, _) = keygen(dir.path());
    let env = token_env(
        &key,
        &pw,
        &[
            ("REGISTRY_AUTH_SECRETS_DIRECTORY", secrets.to_str().unwrap()),
            ("REGISTRY_AUTH_TOKEN_SERVER_REFRESHEXPIRATION", "1h"),
        ],
    );
    let Some(mut reg) = Registry::start_local(&env).await else {
        return;
    };
    let login = async |reg: &Registry, user: &str, password: &str| {
        let r = post_form(
            reg,
            &format!("grant_type=password&username={user}&password={password}&service=berth-test&client_id=t"),
        )
        .await;
        r.expect(200);
        r.json()["refresh_token"].as_str().unwrap().to_owned()
    };
    let refresh = async |reg: &Registry, t: &str| {
        post_form(
            reg,
            &format!("grant_type=refresh_token&refresh_token={t}&service=berth-test&client_id=t&scope=repository:alice/app:pull"),
        )
        .await
    };
    let alice = login(&reg, "alice", "a-pass").await;
    let bob = login(&reg, "bob", "b-pass").await;
    let ci = login(&reg, "ci-a", "first-secret").await;
    let c = claims_of(&alice);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 3600);
    assert!(!alice.contains("a-pass") && !c.to_string().contains("$2"), "{c}");
    for t in [&alice, &bob, &ci] {
        refresh(&reg, t).await.expect(200);
    }
    // A restart keeps them valid (the binding key comes from the signing key).
    reg.restart().await;
    for t in [&alice, &bob, &ci] {
        refresh(&reg, t).await.expect(200);
    }
    // alice's password changes, bob is removed, ci-a's secret rotates.
    let new_pw = htpasswd(dir.path(), &[("alice", "new-pass")]);
    assert_eq!(new_pw, pw);
    std::fs::write(secrets.join("team-a/password"), "second-secret").unwrap();
    eventually("the new password is in force", async || {
        post_form(
            &reg,
            "grant_type=password&username=alice&password=new-pass&service=berth-test",
        )
        .await
        .status
            == 200
    })
    .await;
    eventually("the new secret is in force", async || {
        post_form(
            &reg,
            "grant_type=password&username=ci-a&password=second-secret&service=berth-test",
        )
        .await
        .status
            == 200
    })
    .await;
    for (who, t) in [("alice", &alice), ("bob", &bob), ("ci-a", &ci)] {
        let r = refresh(&reg, t).await;
        let e = r.expect_error(401, &["UNAUTHORIZED"]);
        assert!(e["message"].as_str().unwrap().contains("log in again"), "{who}: {e}");
        assert!(r.must_header("www-authenticate").starts_with("Basic realm="));
    }
    // A refresh token issued now works.
    let fresh = login(&reg, "alice", "new-pass").await;
    refresh(&reg, &fresh).await.expect(200);
}

/// The token endpoint reads its form under the body limits: a form that drips a byte at a time
/// is cut after one period of `http.timeouts.body` for bringing less than
/// `http.limits.bodyminrate`, instead of holding the connection for as long as it drips.
#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_token_form_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "a-pass")]);
    let (key, _) = keygen(dir.path());
    let env = [
        ("REGISTRY_AUTH_TYPE", "token"),
        ("REGISTRY_AUTH_TOKEN_REALM", "http://registry.test/auth"),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "berth-test"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "berth-issuer"),
        ("REGISTRY_AUTH_TOKEN_SERVER_ENABLED", "true"),
        ("REGISTRY_AUTH_TOKEN_SERVER_KEY", key.as_str()),
        ("REGISTRY_AUTH_HTPASSWD", pw.as_str()),
        ("REGISTRY_HTTP_TIMEOUTS_BODY", "2s"),
        ("REGISTRY_HTTP_LIMITS_BODYMINRATE", "100"),
    ];
    let Some(reg) = Registry::start_local(&env).await else {
        return;
    };
    let form = b"grant_type=password&service=berth-test&username=alice&password=a-pass&padding=".repeat(4);
    let head = format!(
        "POST /auth HTTP/1.1\r\nHost: r\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        form.len()
    );
    let s = tokio::net::TcpStream::connect(reg.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let drip = tokio::spawn(async move {
        for b in form {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
    drip.abort();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("http.limits.bodyminrate"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "cut after {:?}",
        started.elapsed()
    );
}
