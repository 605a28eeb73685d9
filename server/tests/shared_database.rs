//! Berth processes sharing one storage directory with their metadata in PostgreSQL (a server
//! this test binary starts): a tag moved through one is served by the other within a second
//! (measured), the database going away gives clear 503s and a failing readiness probe, and
//! everything works again when it is back; wrong database settings stop start-up naming the
//! setting.

mod common;

use std::time::{Duration, Instant};

use common::*;

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
