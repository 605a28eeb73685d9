//! Berth processes sharing one storage directory with their metadata in PostgreSQL (a server
//! this test binary starts): a tag moved through one is served by the other within a second
//! (measured), the database going away gives clear 503s and a failing readiness probe, and
//! everything works again when it is back; wrong database settings stop start-up naming the
//! setting.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn env_of(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_moved_through_one_replica_is_served_by_the_other_within_a_second() {
    if is_external() {
        return;
    }
    let db = database_env().await;
    let a = Registry::start_local(&env_of(&db)).await.unwrap();
    let b = a.share().await;
    let repo = "replicas/app";
    let (m1, d1) = a.push_image(repo, "v1").await;
    b.assert_manifest(repo, "v1", OCI_MANIFEST, &m1).await;
    // B has served v1 (its caches hold it); A moves the tag.
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        let (m2, d2) = a.push_image(repo, "v1").await;
        assert_ne!(d1, d2);
        let moved = Instant::now();
        loop {
            let r = b.get_manifest(repo, "v1").await;
            r.expect(200);
            if r.must_header("docker-content-digest") == d2 {
                assert_eq!(r.body, m2);
                break;
            }
            assert!(
                moved.elapsed() < Duration::from_secs(1),
                "round {round}: the other replica still serves the old digest after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worst = worst.max(moved.elapsed());
    }
    eprintln!("a tag moved through one replica was served by the other after at most {worst:?}");
    // Blobs pushed through one are there for the other, and a delete through B is seen by A.
    assert_eq!(b.tags(repo).await, ["v1"]);
    let storage = a.storage();
    assert!(
        !storage.join("meta.db").exists(),
        "the metadata is in PostgreSQL, not SQLite"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_going_away_gives_503s_and_service_comes_back() {
    if is_external() {
        return;
    }
    let server = postgres::Server::start();
    let s = server.database().await;
    let db = vec![
        ("REGISTRY_DATABASE_ENABLED".to_owned(), "true".to_owned()),
        ("REGISTRY_DATABASE_HOST".to_owned(), s.host.clone()),
        ("REGISTRY_DATABASE_PORT".to_owned(), s.port.to_string()),
        ("REGISTRY_DATABASE_USER".to_owned(), s.user.clone()),
        ("REGISTRY_DATABASE_PASSWORD".to_owned(), s.password.clone()),
        ("REGISTRY_DATABASE_DBNAME".to_owned(), s.dbname.clone()),
        ("REGISTRY_DATABASE_CONNECTTIMEOUT".to_owned(), "1s".to_owned()),
    ];
    let reg = Registry::start_local(&env_of(&db)).await.unwrap();
    let repo = "outage/app";
    let (m1, _) = reg.push_image(repo, "v1").await;
    reg.get("/readyz").await.expect(200);

    server.stop_fast();
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    r.expect_error(503, &["UNAVAILABLE"]);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    let r = reg.get("/readyz").await;
    r.expect(503);
    assert!(r.text().contains("metadata store"), "{}", r.text());
    // A push while it is down fails cleanly too, and stores nothing half-way.
    let data = random_bytes(4096, 7);
    let r = reg.post_blob_monolithic(repo, &sha256(&data), data.clone()).await;
    assert_eq!(r.status, 503, "{}", r.text());

    server.start_again();
    let back = Instant::now();
    loop {
        if reg.get("/readyz").await.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "not ready 10 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("ready again {:?} after the database came back", back.elapsed());
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &m1).await;
    reg.push_image(repo, "v2").await;
    assert_eq!(reg.tags(repo).await, ["v1", "v2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_database_settings_stop_start_up_naming_the_setting() {
    if is_external() {
        return;
    }
    let s = postgres::shared().database().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        ("REGISTRY_DATABASE_PASSWORD", "wrong".to_owned(), "database.password"),
        ("REGISTRY_DATABASE_DBNAME", "no_such_db".to_owned(), "database.dbname"),
        ("REGISTRY_DATABASE_PORT", closed.to_string(), "database.host"),
        ("REGISTRY_DATABASE_SSLMODE", "require".to_owned(), "database.sslmode"),
    ];
    for (var, value, setting) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--no-config-file"])
            .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
            .env("REGISTRY_STORAGE_PATH", dir.path())
            .env("REGISTRY_DATABASE_ENABLED", "true")
            .env("REGISTRY_DATABASE_HOST", &s.host)
            .env("REGISTRY_DATABASE_PORT", s.port.to_string())
            .env("REGISTRY_DATABASE_USER", &s.user)
            .env("REGISTRY_DATABASE_PASSWORD", &s.password)
            .env("REGISTRY_DATABASE_DBNAME", &s.dbname)
            .env("REGISTRY_DATABASE_CONNECTTIMEOUT", "2s")
            .env(var, &value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: started");
        assert!(err.contains(setting), "{var}={value}: {err}");
        assert!(!err.contains(&s.password), "the password is never printed: {err}");
    }
}

/// Online garbage collection every second on one replica (grace 1 s, untagged manifests too)
/// while another takes pushes: every push whose manifest was acknowledged stays whole, and a
/// push that lost a race to the collector fails with an error and succeeds when retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_on_one_replica_while_another_takes_pushes_loses_nothing_acknowledged() {
    if is_external() {
        return;
    }
    let mut env = database_env().await;
    env.push(("REGISTRY_STORAGE_DELETE_ENABLED".into(), "true".into()));
    let pusher = Registry::start_local(&env_of(&env)).await.unwrap();
    let mut gc_env = env.clone();
    for (k, v) in [
        ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL", "1s"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_GRACE", "1s"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_UNTAGGED", "true"),
    ] {
        gc_env.push((k.into(), v.into()));
    }
    let collector = Registry::spawn_sharing(&pusher, &env_of(&gc_env)).await;
    let repo = "gcrace/app";
    let started = Instant::now();
    let mut acknowledged = Vec::new();
    let mut retried = 0;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(6) {
        // Untagged images for the collector to take, and tagged ones it must leave.
        let tag = format!("t{i}");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let parts = pusher.push_image_parts(repo, 2, false).await;
            let m = parts.oci_manifest(json!({}));
            let r = pusher.put_manifest(repo, &tag, OCI_MANIFEST, &m).await;
            if r.status == 201 {
                acknowledged.push((tag.clone(), m));
                break;
            }
            assert!(
                matches!(r.status.as_u16(), 400 | 503),
                "a push that lost a race gets an error to retry on: {} {}",
                r.status,
                r.text()
            );
            assert!(attempts < 5, "a retried push keeps failing: {}", r.text());
            retried += 1;
        }
        pusher.push_image_parts(repo, 1, false).await; // blobs no manifest will name
        if i % 3 == 0 {
            // An untagged manifest, which the collector removes after the grace period.
            let parts = pusher.push_image_parts(repo, 1, false).await;
            let m = parts.oci_manifest(json!({"annotations": {"i": i.to_string()}}));
            let d = sha256(&m);
            pusher.put_manifest(repo, &d, OCI_MANIFEST, &m).await.expect(201);
        }
        i += 1;
    }
    // Let the collector run at least twice more past the grace period of the last pushes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = collector.log_text();
    let removed: u64 = log
        .lines()
        .filter(|l| l.contains("garbage collection done"))
        .filter_map(|l| l.split("blobs_removed=").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        removed > 0,
        "the collector removed nothing, so this raced nothing:\n{log}"
    );
    for (tag, m) in &acknowledged {
        for reg in [&pusher, &collector] {
            reg.assert_manifest(repo, tag, OCI_MANIFEST, m).await;
            let v: Value = serde_json::from_slice(m).unwrap();
            let layers = v["layers"].as_array().unwrap().iter();
            for d in layers.chain(std::iter::once(&v["config"])) {
                let digest = d["digest"].as_str().unwrap();
                let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
                r.expect(200);
                assert_eq!(sha256(&r.body), digest, "blob {digest} of {tag} is intact");
            }
        }
    }
    eprintln!(
        "{} pushes acknowledged and intact after online collection on the other replica removed {removed} blobs ({retried} retried)",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 10,
        "too few pushes to mean anything: {}",
        acknowledged.len()
    );
}

/// `berth migrate` moves a stopped registry's metadata from SQLite into PostgreSQL; the
/// registry then serves the same content from the database.
#[tokio::test(flavor = "multi_thread")]
async fn berth_migrate_moves_a_registry_onto_postgres() {
    if is_external() {
        return;
    }
    let mut reg = Registry::start_local(&[("REGISTRY_DATABASE_ENABLED", "false")])
        .await
        .unwrap();
    let repo = "migrate/app";
    let (m1, _) = reg.push_image(repo, "v1").await;
    let (m2, _) = reg.push_image(repo, "v2").await;
    reg.stop();
    let storage = reg.storage();
    let migrate = |env: &[(String, String)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["migrate", "--no-config-file"])
            .env("REGISTRY_STORAGE_PATH", &storage)
            .envs(env.iter().cloned())
            .output()
            .unwrap()
    };
    let out = migrate(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("database.enabled"),
        "{out:?}"
    );
    let db = database_env().await;
    let out = migrate(&db);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("copied") && stdout.contains("2 tags"), "{stdout}");
    for (k, v) in &db {
        reg.set_env(k, v);
    }
    reg.restart().await;
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &m1).await;
    reg.assert_manifest(repo, "v2", OCI_MANIFEST, &m2).await;
    assert!(reg.log_text().contains("postgresql"));
}
