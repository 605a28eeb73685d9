//! Process-level behaviour: Kubernetes service-link variables never stop the server, the I/O
//! settings of the environment are the ones that serve, and idle upload sessions are removed by
//! the background reaper.

mod common;

use std::time::{Duration, Instant};

use common::Registry;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_service_variables_are_ignored_and_pushes_work() {
    // What Kubernetes injects for Services named `registry` and `registry-auth`.
    let Some(reg) = Registry::start_local(&[
        ("REGISTRY_PORT", "tcp://10.0.0.7:5000"),
        ("REGISTRY_PORT_5000_TCP", "tcp://10.0.0.7:5000"),
        ("REGISTRY_PORT_5000_TCP_ADDR", "10.0.0.7"),
        ("REGISTRY_PORT_5000_TCP_PORT", "5000"),
        ("REGISTRY_PORT_5000_TCP_PROTO", "tcp"),
        ("REGISTRY_SERVICE_HOST", "10.0.0.7"),
        ("REGISTRY_SERVICE_PORT", "5000"),
        ("REGISTRY_AUTH_PORT", "tcp://10.0.0.8:80"),
        ("REGISTRY_AUTH_PORT_80_TCP", "tcp://10.0.0.8:80"),
        ("REGISTRY_AUTH_PORT_80_TCP_ADDR", "10.0.0.8"),
        ("REGISTRY_AUTH_SERVICE_HOST", "10.0.0.8"),
        ("REGISTRY_AUTH_SERVICE_PORT", "80"),
    ])
    .await
    else {
        return;
    };
    let (manifest, _) = reg.push_image("k8s/app", "v1").await;
    reg.get_manifest("k8s/app", "v1").await.expect(200);
    assert_eq!(reg.get_manifest("k8s/app", "v1").await.body, manifest);
    let log = reg.log_text();
    assert!(log.contains("ignoring REGISTRY_AUTH_PORT_80_TCP_ADDR"), "{log}");
    assert!(log.contains("ignoring REGISTRY_PORT:"), "{log}");
}

/// CI runs the server tests on the io_uring engine with paired hashing, and again on the std
/// engine without it (scripts/test.sh): the berth process says at start-up which it runs, and
/// it must be what the environment the tests inherited asks for.
#[tokio::test(flavor = "multi_thread")]
async fn the_io_settings_asked_for_are_the_ones_that_serve() {
    let Some(reg) = Registry::start_local(&[("REGISTRY_LOG_FORMATTER", "json")]).await else {
        return;
    };
    let log = reg.log_text();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"].as_str().is_some_and(|m| m.contains("listening")))
        .unwrap_or_else(|| panic!("no start-up line in the log:\n{log}"));
    let fields = &line["fields"];
    match std::env::var("BERTH_IO_ENGINE").as_deref() {
        Ok("std") => assert_eq!(fields["io"], "std", "{line}"),
        Ok("uring") => assert_eq!(fields["io"], "io_uring", "{line}"),
        _ => assert!(fields["io"] == "std" || fields["io"] == "io_uring", "{line}"),
    }
    let pairs = std::env::var("BERTH_IO_HASH_PAIRS").map_or(true, |v| v != "off");
    assert_eq!(
        fields["hash_pairs"],
        pairs && berth_engine::digest::sha256x2::supported(),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_upload_sessions_are_reaped() {
    let Some(reg) = Registry::start_local(&[
        ("REGISTRY_UPLOAD_TIMEOUT", "1"),
        ("REGISTRY_UPLOAD_CLEANUP_INTERVAL", "1"),
    ])
    .await
    else {
        return;
    };
    let idle = reg.start_upload("reap/me").await;
    reg.request(Method::GET, idle.clone()).await.expect(204);
    let uploads = reg.storage().join("uploads");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = reg.request(Method::GET, idle.clone()).await.status;
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle session is still there after 15 s (status {status})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&uploads).unwrap().collect();
    assert!(left.is_empty(), "session files left behind: {left:?}");
}

/// An htpasswd file with one user, for tests that only need authentication to be on (they never
/// send credentials).
fn one_user_htpasswd(dir: &std::path::Path) -> String {
    let path = dir.join("htpasswd");
    std::fs::write(
        &path,
        "u:$2y$04$7ZgAWbr3ylBttMXuC7A1ou7Y53IbiHHLzsgKbjoVg4txxXLhbnV1i\n",
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_answer_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = one_user_htpasswd(dir.path());
    let Some(reg) =
        Registry::start_local(&[("REGISTRY_AUTH_TYPE", "basic"), ("REGISTRY_AUTH_HTPASSWD", &htpasswd)]).await
    else {
        return;
    };
    reg.get("/v2/").await.expect(401);
    let h = reg.get("/healthz").await;
    h.expect(200);
    assert_eq!(h.json()["status"], "ok");
    reg.get("/readyz").await.expect(200);
    // `berth healthcheck` (the probe of shell-less images) agrees.
    let addr = reg.base.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let probe = |addr: &str, path: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["healthcheck", "--addr", addr, "--path", path, "--timeout", "5"])
            .output()
            .unwrap()
    };
    let out = probe(&addr, "/readyz");
    assert!(out.status.success(), "{out:?}");
    let out = probe(&addr, "/v2/");
    assert_eq!(out.status.code(), Some(1), "a 401 is not healthy: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = probe(&closed.to_string(), "/healthz");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // storage that cannot take a write: not ready, and the reason says so
    let uploads = reg.storage().join("uploads");
    std::fs::remove_dir_all(&uploads).unwrap();
    std::fs::write(&uploads, b"not a directory").unwrap();
    let r = reg.get("/readyz").await;
    r.expect(503);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("storage not writable"),
        "{}",
        r.text()
    );
    std::fs::remove_file(&uploads).unwrap();
    std::fs::create_dir(&uploads).unwrap();
    reg.get("/readyz").await.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_headers_and_cors_preflight() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = one_user_htpasswd(dir.path());
    let Some(reg) = Registry::start_local(&[
        ("REGISTRY_AUTH_TYPE", "basic"),
        ("REGISTRY_AUTH_HTPASSWD", &htpasswd),
        ("REGISTRY_HTTP_HEADERS_Access-Control-Allow-Origin", "['*']"),
        (
            "REGISTRY_HTTP_HEADERS_Access-Control-Allow-Methods",
            "['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS']",
        ),
        (
            "REGISTRY_HTTP_HEADERS_Access-Control-Allow-Headers",
            "['Authorization', 'Accept', 'Content-Type']",
        ),
        ("REGISTRY_HTTP_HEADERS_X-Content-Type-Options", "nosniff"),
    ])
    .await
    else {
        return;
    };
    // preflight: no credentials needed, configured headers present
    let r = reg.request(Method::OPTIONS, reg.url("/v2/team/app/manifests/v1")).await;
    r.expect(204);
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("*"));
    let methods: Vec<String> = r
        .headers
        .get_all("access-control-allow-methods")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(methods, ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]);
    // every response carries them, and exposes the registry's headers to scripts
    let r = reg.get("/v2/").await;
    r.expect(401);
    assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("*"));
    let expose = r.must_header("access-control-expose-headers");
    for h in [
        "Docker-Content-Digest",
        "Location",
        "Range",
        "Link",
        "Docker-Upload-UUID",
        "WWW-Authenticate",
    ] {
        assert!(expose.contains(h), "{h} not exposed: {expose}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_maintenance_mode() {
    let Some(mut reg) = Registry::start_local(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]).await else {
        return;
    };
    let (manifest, digest) = reg.push_image("ro/app", "v1").await;
    let layer = reg.push_blob("ro/app", b"a layer pushed before maintenance").await;
    reg.set_env("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true");
    reg.restart().await;
    assert!(reg.log_text().contains("read-only maintenance mode"));
    // Pulls work.
    assert_eq!(reg.get_manifest("ro/app", "v1").await.expect(200).body, manifest);
    reg.head(&format!("/v2/ro/app/blobs/{layer}")).await.expect(200);
    reg.get("/v2/ro/app/tags/list").await.expect(200);
    reg.get("/v2/_catalog").await.expect(200);
    // Writes are refused with a message that says why.
    for (method, path) in [
        (Method::POST, "/v2/ro/app/blobs/uploads/".to_owned()),
        (
            Method::POST,
            format!("/v2/ro/other/blobs/uploads/?mount={layer}&from=ro/app"),
        ),
        (Method::DELETE, format!("/v2/ro/app/manifests/{digest}")),
        (Method::DELETE, format!("/v2/ro/app/blobs/{layer}")),
    ] {
        let r = reg.request(method.clone(), reg.url(&path)).await;
        let e = r.expect_error(405, &["UNSUPPORTED"]);
        assert!(
            e["message"].as_str().unwrap().contains("read-only"),
            "{method} {path}: {e}"
        );
    }
    let r = reg
        .put_manifest("ro/app", "v2", "application/vnd.oci.image.manifest.v1+json", &manifest)
        .await;
    r.expect_error(405, &["UNSUPPORTED"]);
    // Nothing changed, and after maintenance writes work again.
    reg.set_env("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "false");
    reg.restart().await;
    assert_eq!(reg.get_manifest("ro/app", "v1").await.expect(200).body, manifest);
    reg.get_manifest("ro/app", "v2").await.expect(404);
    reg.push_blob("ro/app", b"after maintenance").await;
}

/// The value of one sample line of a Prometheus exposition (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics() {
    let Some(reg) = Registry::start_local(&[]).await else {
        return;
    };
    let data = common::random_bytes(300_000, 7);
    let digest = reg.push_blob("metrics/app", &data).await;
    reg.get(&format!("/v2/metrics/app/blobs/{digest}")).await.expect(200);
    reg.head(&format!("/v2/metrics/app/blobs/{digest}")).await.expect(200);
    reg.get("/v2/metrics/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000")
        .await
        .expect(404);
    let _open = reg.start_upload("metrics/app").await;
    let m = reg.get("/metrics").await;
    m.expect(200);
    assert!(m.must_header("content-type").starts_with("text/plain; version=0.0.4"));
    let t = m.text();
    assert_eq!(
        sample(
            &t,
            r#"berth_http_requests_total{route="blob",method="GET",status="200"}"#
        ),
        1.0,
        "{t}"
    );
    // The GET read the blob's size from the database (a miss, then cached); the HEAD found it
    // in the cache; the unknown blob is a miss that is not kept.
    assert_eq!(sample(&t, "berth_cache_hits_total"), 1.0, "{t}");
    assert_eq!(sample(&t, "berth_cache_misses_total"), 2.0, "{t}");
    assert_eq!(sample(&t, "berth_cache_entries"), 1.0, "{t}");
    assert_eq!(sample(&t, "berth_cache_budget_bytes"), (128u64 << 20) as f64, "{t}");
    assert!(sample(&t, "berth_cache_bytes") > 0.0, "{t}");
    // The 300,000-byte blob is above cache.blobmaxsize (256 KiB): read from its file.
    assert_eq!(sample(&t, "berth_blob_cache_entries"), 0.0, "{t}");
    assert_eq!(
        sample(
            &t,
            r#"berth_http_requests_total{route="blob",method="GET",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &t,
            r#"berth_http_requests_total{route="blob",method="HEAD",status="200"}"#
        ),
        1.0
    );
    assert!(
        sample(&t, r#"berth_http_request_bytes_total{route="upload_start"}"#)
            + sample(&t, r#"berth_http_request_bytes_total{route="upload"}"#)
            >= 300_000.0,
        "{t}"
    );
    assert!(sample(&t, r#"berth_http_response_bytes_total{route="blob"}"#) >= 300_000.0);
    assert!(sample(&t, r#"berth_http_request_duration_seconds_count{route="blob"}"#) >= 3.0);
    assert_eq!(sample(&t, "berth_uploads_in_progress"), 1.0);
    assert!(sample(&t, "berth_storage_bytes") >= 300_000.0);
    assert!(sample(&t, "berth_storage_blobs") >= 1.0);

    // Authentication failures by reason.
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = one_user_htpasswd(dir.path());
    let reg = Registry::start_local(&[("REGISTRY_AUTH_HTPASSWD", &htpasswd)])
        .await
        .unwrap();
    reg.get("/v2/").await.expect(401);
    let wrong = format!("Basic {}", base64_of("u:wrong"));
    for _ in 0..2 {
        reg.send(reg.client.get(reg.url("/v2/")).header("Authorization", &wrong))
            .await
            .expect(401);
    }
    let t = reg.get("/metrics").await.expect(200).text();
    assert_eq!(
        sample(&t, r#"berth_auth_failures_total{reason="basic_invalid"}"#),
        2.0,
        "{t}"
    );
    // (the harness's readiness probe is anonymous too)
    assert!(sample(&t, r#"berth_auth_failures_total{reason="no_credentials"}"#) >= 1.0);
    assert_eq!(sample(&t, r#"berth_auth_failures_total{reason="denied"}"#), 0.0);

    // A separate metrics listener: the main one no longer serves them.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let reg = Registry::start_local(&[
        ("REGISTRY_HTTP_DEBUG_ADDR", &addr),
        ("REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH", "/m"),
    ])
    .await
    .unwrap();
    reg.get("/m").await.expect(404);
    reg.get("/v2/").await.expect(200);
    let r = reg.client.get(format!("http://{addr}/m")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let t = r.text().await.unwrap();
    assert_eq!(
        sample(
            &t,
            r#"berth_http_requests_total{route="base",method="GET",status="200"}"#
        ),
        2.0,
        "{t}"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_collection_online_and_offline() {
    let Some(mut reg) = Registry::start_local(&[
        ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL", "1s"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_GRACE", "3s"),
    ])
    .await
    else {
        return;
    };
    let (manifest, _) = reg.push_image("gc/app", "v1").await;
    let doc: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layer = doc["layers"][0]["digest"].as_str().unwrap().to_owned();
    let loose = reg.push_blob("gc/app", b"uploaded and never referenced").await;
    // Within the grace period the loose blob stays; after it, online GC takes it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reg.head(&format!("/v2/gc/app/blobs/{loose}")).await.expect(200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while reg.head(&format!("/v2/gc/app/blobs/{loose}")).await.status != 404 {
        assert!(Instant::now() < deadline, "online GC did not remove the loose blob");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(reg.log_text().contains("garbage collection done"));
    reg.head(&format!("/v2/gc/app/blobs/{layer}")).await.expect(200);
    assert_eq!(reg.get_manifest("gc/app", "v1").await.expect(200).body, manifest);

    // Offline: `berth gc` refuses a storage a running berth holds, then works once it stops.
    let loose2 = reg.push_blob("gc/app", b"another loose blob").await;
    let storage = reg.storage();
    let database = reg.database_env();
    let gc = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("gc")
            .args(args)
            .args(["--no-config-file", "--grace", "0s"])
            .env("REGISTRY_STORAGE_PATH", &storage)
            .envs(database.iter().cloned())
            .env_remove("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED")
            .output()
            .unwrap()
    };
    let out = gc(&[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("in use by a running berth process: stop every berth on it first"),
        "{out:?}"
    );
    reg.set_env("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "false");
    reg.stop();
    let out = gc(&["--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with("would remove: 0 untagged manifests, 1 blob links, 1 blobs (18 bytes)"),
        "{text}"
    );
    let out = gc(&[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("removed: 0 untagged manifests, 1 blob links, 1 blobs (18 bytes)"),
        "{text}"
    );
    reg.restart().await;
    reg.head(&format!("/v2/gc/app/blobs/{loose2}")).await.expect(404);
    reg.head(&format!("/v2/gc/app/blobs/{layer}")).await.expect(200);
    assert_eq!(reg.get_manifest("gc/app", "v1").await.expect(200).body, manifest);
}

/// `berth check-config` reads the TLS files of `database.*` as start-up would, without connecting.
#[test]
fn check_config_reads_the_database_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("ca.key"), dir.path().join("ca.pem"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["keygen", "--alg", "es256", "--name", "db.internal"])
        .arg("--key")
        .arg(&key)
        .arg("--cert")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let garbage = dir.path().join("not-a-certificate.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let check = |rootcert: &std::path::Path, client: Option<(&std::path::Path, &std::path::Path)>| {
        let conf = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\ndatabase:\n  enabled: true\n  host: 127.0.0.1\n  sslmode: verify-full\n  sslrootcert: {}\n",
            dir.path().join("data").display(),
            rootcert.display()
        );
        if let Some((c, k)) = client {
            text += &format!("  sslcert: {}\n  sslkey: {}\n", c.display(), k.display());
        }
        std::fs::write(&conf, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("check-config")
            .arg(&conf)
            .env_remove("REGISTRY_DATABASE_ENABLED")
            .output()
            .unwrap()
    };
    let out = check(&cert, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = check(&cert, Some((&cert, &key)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = check(&garbage, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("database.sslrootcert") && err.contains("config.yml"),
        "{err}"
    );
    let out = check(&cert, Some((&cert, &garbage)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("database.sslkey"), "{err}");
    let out = check(&dir.path().join("missing.pem"), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("database.sslrootcert") && err.contains("missing.pem"),
        "{err}"
    );
}
