//! The PostgreSQL store beyond the shared suite (`meta_suite.rs`): schema migrations (from an
//! empty database, from the previous version, replicas starting together, a schema newer than
//! the binary), the change token across two stores, losing and regaining the server, and the
//! errors of wrong settings. Each test has its own database on a server this binary starts.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use berth_engine::change::Change;
use berth_engine::postgres::{MIGRATION_LOCK, MIGRATIONS, PgSettings, PgStore, migrate};
use berth_engine::store::{Feed, ManifestRecord};
use berth_engine::{Algorithm, Digest, Error, MetaError, MetaStore, Reference, RepoName, Sweep, Tag};
use support::postgres::{Server, raw, shared};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn record(repo: &str, salt: &str, tag: Option<&str>) -> ManifestRecord {
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[],"annotations":{{"salt":"{salt}"}}}}"#
    ));
    ManifestRecord {
        repo: repo.parse().unwrap(),
        digest: Digest::of(Algorithm::Sha256, &bytes),
        media_type: INDEX.into(),
        bytes,
        tag: tag.map(|t| t.parse().unwrap()),
        blobs: Vec::new(),
        children: Vec::new(),
        referrer: None,
    }
}

async fn versions(s: &PgSettings) -> Vec<i64> {
    raw(s)
        .await
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn latest() -> i64 {
    MIGRATIONS.last().unwrap().version
}

#[tokio::test]
async fn migrates_an_empty_database_once() {
    let s = shared().database().await;
    let store = PgStore::connect(&s).await.unwrap();
    store.check().await.unwrap();
    let all: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions(&s).await, all);
    // A second start finds nothing to do.
    let again = migrate::migrate(&s, MIGRATIONS).await.unwrap();
    assert_eq!(again.before, latest());
    assert!(again.applied.is_empty(), "{again:?}");
}

#[tokio::test]
async fn migrates_from_the_previous_version_keeping_the_data() {
    let s = shared().database().await;
    let first = migrate::migrate(&s, &MIGRATIONS[..1]).await.unwrap();
    assert_eq!((first.before, first.applied.clone()), (0, vec![1]));
    // Records written by a binary that knew only version 1.
    let m = record("old/app", "kept", Some("v1"));
    let blob = Digest::of(Algorithm::Sha256, b"a layer");
    let db = raw(&s).await;
    db.execute(
        "INSERT INTO blobs(digest, size, refs) VALUES ($1, 7, 1)",
        &[&blob.to_string()],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO repo_blobs(repo, digest, size, linked) VALUES ('old/app', $1, 7, 0)",
        &[&blob.to_string()],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO manifests(digest, refs, media_type, bytes) VALUES ($1, 1, $2, $3)",
        &[&m.digest.to_string(), &INDEX, &&m.bytes[..]],
    )
    .await
    .unwrap();
    db.batch_execute(&format!(
        "INSERT INTO repo_manifests(repo, digest, pushed) VALUES ('old/app', '{d}', 0);
         INSERT INTO tags(repo, tag, digest) VALUES ('old/app', 'v1', '{d}');
         INSERT INTO repos(name) VALUES ('old/app');",
        d = m.digest
    ))
    .await
    .unwrap();

    let store = PgStore::connect(&s).await.unwrap();
    assert_eq!(versions(&s).await.last().copied(), Some(latest()));
    let repo: RepoName = "old/app".parse().unwrap();
    assert_eq!(store.repo_blob(&repo, &blob).await.unwrap(), Some(7));
    let got = store
        .manifest(&repo, &Reference::Tag("v1".parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.bytes, m.bytes);
    let state: String = db
        .query_one("SELECT state FROM blobs WHERE digest = $1", &[&blob.to_string()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "live", "version 2 marks existing blobs live");
    // And the upgraded schema takes new records.
    store.put_manifest(record("old/app", "new", Some("v2"))).await.unwrap();
    assert!(
        store
            .mount_blob(&"new/app".parse().unwrap(), &blob, None)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_replica_waits_for_the_one_migrating() {
    let s = shared().database().await;
    // Another replica is migrating: it holds the lock.
    let holder = raw(&shared().settings(&s.dbname)).await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { PgStore::connect(&s).await.map(|_| Instant::now()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a replica must not migrate while another holds the lock"
    );
    let released = Instant::now();
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .unwrap();
    let started = waiting.await.unwrap().unwrap();
    assert!(started >= released);

    // Two replicas starting together on an empty database: one migrates, both work.
    let s = shared().database().await;
    let (a, b) = tokio::join!(PgStore::connect(&s), PgStore::connect(&s));
    let (a, b) = (a.unwrap(), b.unwrap());
    let all: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions(&s).await, all, "each version applied once");
    a.put_manifest(record("both/app", "a", Some("v1"))).await.unwrap();
    let seen = b
        .manifest(&"both/app".parse().unwrap(), &Reference::Tag("v1".parse().unwrap()))
        .await
        .unwrap();
    assert!(seen.is_some());
}

#[tokio::test]
async fn a_newer_schema_is_accepted_only_when_marked_compatible() {
    let s = shared().database().await;
    migrate::migrate(&s, MIGRATIONS).await.unwrap();
    let db = raw(&s).await;
    let newer = latest() + 1;
    db.execute(
        "INSERT INTO schema_migrations(version, description, backward_compatible) VALUES ($1, 'from a newer Berth', true)",
        &[&newer],
    )
    .await
    .unwrap();
    let applied = migrate::migrate(&s, MIGRATIONS).await.unwrap();
    assert_eq!(applied.unknown, vec![newer]);
    PgStore::connect(&s)
        .await
        .expect("a compatible newer schema still serves");

    let breaking = latest() + 2;
    db.execute(
        "INSERT INTO schema_migrations(version, description, backward_compatible) VALUES ($1, 'breaking', false)",
        &[&breaking],
    )
    .await
    .unwrap();
    let err = PgStore::connect(&s)
        .await
        .err()
        .expect("an incompatible schema is refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&breaking.to_string()) && msg.contains("upgrade Berth"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_write_through_one_store_reaches_the_others_subscriber_within_a_second() {
    let s = shared().database().await;
    let a = PgStore::connect(&s).await.unwrap();
    let b = PgStore::connect(&s).await.unwrap();
    let got = collector(&b);
    let want = Change::Tag("cross/app".parse().unwrap(), "v1".parse().unwrap());
    let mut latencies = Vec::new();
    for i in 0..5 {
        assert_eq!(b.feed(), Feed::Current, "b listens");
        got.lock().unwrap().clear();
        let t0 = Instant::now();
        a.put_manifest(record("cross/app", &i.to_string(), Some("v1")))
            .await
            .unwrap();
        let committed = t0.elapsed();
        loop {
            if got.lock().unwrap().contains(&want) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "b did not see a's write within 1 s"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push((committed, t0.elapsed()));
    }
    for (commit, seen) in &latencies {
        println!(
            "cross-store change: write committed after {commit:?}, seen by the other store {:?} after the commit",
            seen.saturating_sub(*commit)
        );
    }
    // And b reads what a wrote.
    let got = b
        .manifest(&"cross/app".parse().unwrap(), &Reference::Tag("v1".parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.digest, record("cross/app", "4", None).digest);
}

/// A subscriber that keeps what it is given.
fn collector(s: &PgStore) -> Arc<Mutex<Vec<Change>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    s.subscribe(Arc::new(move |c: &[Change]| g.lock().unwrap().extend_from_slice(c)));
    got
}

/// Wait up to `limit` for `f` to hold.
async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn the_store_survives_the_server_going_away_and_coming_back() {
    // A server of this test alone: stopping it must not disturb the others.
    let server = Server::start();
    let s = server.database().await;
    let store = PgStore::connect(&s).await.unwrap();
    let repo: RepoName = "down/app".parse().unwrap();
    let v1: Tag = "v1".parse().unwrap();
    store.put_manifest(record("down/app", "one", Some("v1"))).await.unwrap();
    let got = collector(&store);
    assert_eq!(store.feed(), Feed::Current, "listening");

    server.stop_fast();
    assert!(
        eventually(Duration::from_secs(2), async || store.feed() == Feed::Unknown).await,
        "the feed is not trusted while the listener is down"
    );
    let t0 = Instant::now();
    let err = store.manifest(&repo, &Reference::Tag(v1.clone())).await.unwrap_err();
    let took = t0.elapsed();
    println!("a read with the server down failed after {took:?}: {err}");
    assert!(matches!(err, Error::Meta(MetaError::Unavailable(_))), "{err:?}");
    assert!(took < s.connect_timeout + Duration::from_secs(2), "{took:?}");
    let err = store
        .put_manifest(record("down/app", "two", Some("v2")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Meta(MetaError::Unavailable(_))), "{err:?}");
    assert!(store.check().await.is_err());
    assert_eq!(store.feed(), Feed::Unknown);
    got.lock().unwrap().clear();

    server.start_again();
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), async || store.check().await.is_ok()).await,
        "operations succeed again once the server is back"
    );
    assert!(
        eventually(Duration::from_secs(10), async || store.feed() == Feed::Current).await,
        "the listener reconnects"
    );
    println!("back after {:?}", t0.elapsed());
    assert!(
        got.lock().unwrap().contains(&Change::All),
        "everything cached before the gap is dropped: {:?}",
        got.lock().unwrap()
    );
    let found = store.manifest(&repo, &Reference::Tag(v1)).await.unwrap();
    assert!(found.is_some());
    store.put_manifest(record("down/app", "two", Some("v2"))).await.unwrap();
    assert!(
        got.lock()
            .unwrap()
            .contains(&Change::Tag(repo.clone(), "v2".parse().unwrap()))
    );
}

fn settings_error(r: Result<PgStore, Error>) -> String {
    match r {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => {
            println!("refused: {e}");
            e.to_string()
        }
    }
}

#[tokio::test]
async fn wrong_settings_are_named() {
    let good = shared().database().await;

    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let msg = settings_error(
        PgStore::connect(&PgSettings {
            port: unused,
            ..good.clone()
        })
        .await,
    );
    assert!(msg.contains("database.host"), "{msg}");

    let t0 = Instant::now();
    let msg = settings_error(
        PgStore::connect(&PgSettings {
            host: "no-such-host.invalid".into(),
            ..good.clone()
        })
        .await,
    );
    assert!(msg.contains("database.host"), "{msg}");
    assert!(t0.elapsed() < good.connect_timeout + Duration::from_secs(2));

    let msg = settings_error(
        PgStore::connect(&PgSettings {
            password: "wrong".into(),
            ..good.clone()
        })
        .await,
    );
    assert!(msg.contains("database.password"), "{msg}");

    let msg = settings_error(
        PgStore::connect(&PgSettings {
            dbname: "no_such_database".into(),
            ..good.clone()
        })
        .await,
    );
    assert!(
        msg.contains("database.dbname") && msg.contains("no_such_database"),
        "{msg}"
    );

    let msg = settings_error(
        PgStore::connect(&PgSettings {
            sslmode: "require".into(),
            ..good.clone()
        })
        .await,
    );
    assert!(msg.contains("database.sslmode"), "{msg}");

    PgStore::connect(&good).await.expect("the right settings connect");
}

/// Mounts out of a repository racing the sweep that unlinks the blob there, on two stores: the
/// blob's reference count always equals its links, and a blob reported orphaned is linked nowhere.
#[tokio::test]
async fn mounts_racing_a_sweep_keep_the_counts_right() {
    let s = shared().database().await;
    let a = PgStore::connect(&s).await.unwrap();
    let b = PgStore::connect(&s).await.unwrap();
    let db = raw(&s).await;
    for round in 0..5 {
        let blob = Digest::of(Algorithm::Sha256, format!("layer {round}").as_bytes());
        let d = blob.to_string();
        db.execute("INSERT INTO blobs(digest, size, refs) VALUES ($1, 3, 1)", &[&d])
            .await
            .unwrap();
        db.execute(
            "INSERT INTO repo_blobs(repo, digest, size, linked) VALUES ('race/src', $1, 3, 0)",
            &[&d],
        )
        .await
        .unwrap();
        db.execute(
            "INSERT INTO repos(name) VALUES ('race/src') ON CONFLICT DO NOTHING",
            &[],
        )
        .await
        .unwrap();
        let src: RepoName = "race/src".parse().unwrap();
        let mounts = async {
            let mut ok = 0;
            for i in 0..8 {
                let dst: RepoName = format!("race/dst{round}-{i}").parse().unwrap();
                if a.mount_blob(&dst, &blob, Some(&src)).await.unwrap() {
                    ok += 1;
                }
            }
            ok
        };
        let sweep = async {
            tokio::time::sleep(Duration::from_millis(2 * round)).await;
            b.gc_repo(&src, 0, &Sweep::Untagged, false).await.unwrap()
        };
        let (mounted, swept) = tokio::join!(mounts, sweep);
        println!("round {round}: {mounted} of 8 mounts before the sweep unlinked the source");
        let links: i64 = db
            .query_one("SELECT count(*) FROM repo_blobs WHERE digest = $1", &[&d])
            .await
            .unwrap()
            .get(0);
        let refs: Option<i64> = db
            .query_opt("SELECT refs FROM blobs WHERE digest = $1", &[&d])
            .await
            .unwrap()
            .map(|r| r.get(0));
        assert_eq!(refs.unwrap_or(0), links, "round {round}: refs match links");
        assert_eq!(links, mounted, "round {round}: the source link went, the mounts stayed");
        let orphaned = swept.orphans.iter().any(|(o, _)| *o == blob);
        assert_eq!(
            orphaned,
            mounted == 0,
            "round {round}: orphaned only when nothing mounted it"
        );
    }
}

/// A staged upload whose steps do nothing (its data is "placed" already).
struct Placed;

impl berth_engine::store::StagedBlob for Placed {
    fn prepare(&mut self) -> berth_engine::Result<Box<dyn berth_engine::store::Placement>> {
        Ok(Box::new(Placed))
    }
    fn finish(self: Box<Self>, _outcome: berth_engine::store::Outcome) {}
}

impl berth_engine::store::Placement for Placed {
    fn place(&self) -> berth_engine::Result<Option<std::path::PathBuf>> {
        Ok(None)
    }
    fn flush(&self, _dir: &std::path::Path) -> berth_engine::Result<()> {
        Ok(())
    }
}

/// While one replica removes a blob's data (its last link gone), another replica's commit of
/// the same digest is refused with an error the client can retry — it cannot link data that is
/// about to vanish — and succeeds once the removal is over; the database is not held meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_racing_a_removal_is_fenced_and_retryable() {
    use berth_engine::store::BlobLink;
    let s = shared().database().await;
    let (gc, pusher) = (PgStore::connect(&s).await.unwrap(), PgStore::connect(&s).await.unwrap());
    let repo: RepoName = "fence/app".parse().unwrap();
    let link = BlobLink {
        repo: repo.clone(),
        digest: Digest::of(Algorithm::Sha256, b"a layer"),
        size: 7,
        object: None,
    };
    gc.commit_blob(link.clone(), Box::new(Placed)).await.unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let removal: berth_engine::store::Removal = Box::new(move |_| {
        started_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        Ok(())
    });
    let (r, d) = (repo.clone(), link.digest.clone());
    let gc2 = gc.clone();
    let unlink = tokio::spawn(async move { gc2.unlink_blob(&r, &d, removal).await });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    // The removal is under way: the other replica's push of the same blob is refused, at once.
    let t0 = Instant::now();
    let err = pusher.commit_blob(link.clone(), Box::new(Placed)).await.unwrap_err();
    assert!(matches!(err, Error::Meta(MetaError::Unavailable(_))), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "not held behind the removal: {:?}",
        t0.elapsed()
    );
    assert_eq!(pusher.blob(&link.digest).await.unwrap(), None);
    // Reads and other writes go on meanwhile.
    pusher
        .put_manifest(record("fence/other", "x", Some("v1")))
        .await
        .unwrap();
    go_tx.send(()).unwrap();
    assert!(unlink.await.unwrap().unwrap());
    // Retried after the removal, the push succeeds.
    pusher.commit_blob(link.clone(), Box::new(Placed)).await.unwrap();
    assert_eq!(gc.repo_blob(&repo, &link.digest).await.unwrap(), Some(7));
}

/// A storage whose metadata is in a shared database is bound to it: opened without the
/// database (SQLite, which would hold no records and so make every blob look unreferenced to
/// garbage collection), it refuses, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_bound_to_a_database_does_not_open_without_it() {
    let s = shared().database().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = berth_engine::Engine::open_shared(dir.path(), &s, false).await.unwrap();
    assert_eq!(engine.metadata_kind(), "postgresql");
    drop(engine);
    let bound = std::fs::read_to_string(dir.path().join("metadata-database")).unwrap();
    assert!(bound.contains(&s.dbname) && !bound.contains(&s.password), "{bound}");
    for exclusive in [false, true] {
        let open = if exclusive {
            berth_engine::Engine::open_exclusive(dir.path()).await
        } else {
            berth_engine::Engine::open(dir.path()).await
        };
        let err = open.err().expect("opened with SQLite");
        assert!(matches!(err, Error::Meta(MetaError::Settings(_))), "{err:?}");
        assert!(err.to_string().contains("database.enabled"), "{err}");
    }
    assert!(!dir.path().join("meta.db").exists(), "no SQLite database was made");
    // With the database it opens again.
    berth_engine::Engine::open_shared(dir.path(), &s, true).await.unwrap();
}

/// One replica collects garbage at a time: the lease is exclusive across stores, and it goes
/// with its holder (dropped, or the replica gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_at_a_time_holds_the_gc_lease() {
    let s = shared().database().await;
    let (a, b) = (PgStore::connect(&s).await.unwrap(), PgStore::connect(&s).await.unwrap());
    let lease = a.gc_lease().await.unwrap().expect("the first asks, the first gets it");
    assert!(b.gc_lease().await.unwrap().is_none(), "held elsewhere");
    assert!(a.gc_lease().await.unwrap().is_none(), "not twice, even in one process");
    // The engine over B finds the lease taken, and does nothing.
    let dir = tempfile::tempdir().unwrap();
    let engine = berth_engine::Engine::open_shared(dir.path(), &s, false).await.unwrap();
    let report = engine.gc(berth_engine::GcOptions::default()).await.unwrap();
    assert!(report.elsewhere && report.repositories == 0, "{report:?}");
    drop(lease);
    let t0 = Instant::now();
    loop {
        if let Some(l) = b.gc_lease().await.unwrap() {
            drop(l);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the lease did not come free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lease goes with its connection, which the server notices a moment later.
    let t0 = Instant::now();
    while engine.gc(berth_engine::GcOptions::default()).await.unwrap().elsewhere {
        assert!(t0.elapsed() < Duration::from_secs(5), "the engine never got the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn push_blob(e: &berth_engine::Engine, repo: &RepoName, data: &[u8]) -> (Digest, usize) {
    let d = Digest::of(Algorithm::Sha256, data);
    let id = e.upload_start(repo).await.unwrap();
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
    e.upload_finish(repo, id, &d, None, Some(data.len() as u64), body)
        .await
        .unwrap();
    (d, data.len())
}

const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";

/// `berth migrate`: a registry on SQLite — blobs, an image, an index naming it, a referrer,
/// tags in two repositories — copied into PostgreSQL twice (the second run finds everything
/// there: an interrupted copy is finished the same way) and served the same from there; the
/// storage is then bound to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_registry_is_migrated_into_postgres() {
    use berth_engine::Engine;
    let s = shared().database().await;
    let dir = tempfile::tempdir().unwrap();
    let (app, other): (RepoName, RepoName) = ("mig/app".parse().unwrap(), "mig/other".parse().unwrap());
    let e = Engine::open(dir.path()).await.unwrap();
    let (cfg, cfg_n) = push_blob(&e, &app, br#"{"architecture":"amd64","os":"linux"}"#).await;
    let (layer, layer_n) = push_blob(&e, &app, &vec![7u8; 100_000]).await;
    let image = format!(
        r#"{{"schemaVersion":2,"mediaType":"{IMAGE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":{cfg_n}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_n}}}]}}"#
    );
    let tag = |t: &str| Reference::Tag(t.parse().unwrap());
    let img = e
        .manifest_put(&app, &tag("v1"), Some(IMAGE), Bytes::from(image.clone()))
        .await
        .unwrap();
    e.manifest_put(&app, &tag("latest"), Some(IMAGE), Bytes::from(image.clone()))
        .await
        .unwrap();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{IMAGE}","digest":"{}","size":{}}}]}}"#,
        img.digest,
        image.len()
    );
    let idx = e
        .manifest_put(&app, &tag("multi"), Some(INDEX), Bytes::from(index))
        .await
        .unwrap();
    let sig = format!(
        r#"{{"schemaVersion":2,"mediaType":"{IMAGE}","artifactType":"application/x.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{cfg}","size":{cfg_n}}},"layers":[],"subject":{{"mediaType":"{IMAGE}","digest":"{}","size":{}}}}}"#,
        img.digest,
        image.len()
    );
    let sig = e
        .manifest_put(
            &app,
            &Reference::Digest(Digest::of(Algorithm::Sha256, sig.as_bytes())),
            Some(IMAGE),
            Bytes::from(sig),
        )
        .await
        .unwrap();
    assert!(e.blob_mount(&other, &layer, Some(&app)).await.unwrap());
    push_blob(&e, &other, b"another config").await;
    let before = (
        e.tags(&app, None, 100).await.unwrap().items,
        e.catalog(None, 100).await.unwrap().items,
        e.storage_stats().await.unwrap(),
    );
    drop(e);

    let e = Engine::open_exclusive(dir.path()).await.unwrap();
    let mut pages = 0;
    let first = e.migrate_metadata(&s, None, |_| pages += 1).await.unwrap();
    assert!(pages > 0);
    assert_eq!((first.links, first.manifests, first.tags), (4, 3, 3), "{first:?}");
    drop(e);
    // Bound now: it opens with the database only.
    assert!(Engine::open(dir.path()).await.is_err());
    // Copying again into the same database changes nothing (what an interrupted copy's rerun does).
    let source = std::sync::Arc::new(berth_engine::meta::Meta::open(&dir.path().join("meta.db")).unwrap());
    let target = PgStore::connect(&s).await.unwrap();
    let stats = target.blob_stats().await.unwrap();
    let again = berth_engine::migrate::copy_metadata(&source, &target, &berth_engine::migrate::Blobs::InPlace, |_| {})
        .await
        .unwrap();
    assert_eq!((again.links, again.manifests, again.tags), (4, 3, 3));
    assert_eq!(target.blob_stats().await.unwrap(), stats);

    let e = Engine::open_shared(dir.path(), &s, false).await.unwrap();
    let after = (
        e.tags(&app, None, 100).await.unwrap().items,
        e.catalog(None, 100).await.unwrap().items,
        e.storage_stats().await.unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(e.manifest_get(&app, &tag("latest")).await.unwrap().digest, img.digest);
    assert_eq!(e.manifest_get(&app, &tag("multi")).await.unwrap().digest, idx.digest);
    let refs = e.referrers(&app, &img.digest, None).await.unwrap();
    assert_eq!(refs.iter().map(|d| d.digest.clone()).collect::<Vec<_>>(), [sig.digest]);
    assert_eq!(e.blob_size(&other, &layer).await.unwrap(), layer_n as u64);
    // Garbage collection on the copy (no grace period) keeps everything the manifests reach and
    // takes only what no manifest names: mig/other's two links, and the one blob only it held.
    let report = e.gc(berth_engine::GcOptions::default()).await.unwrap();
    assert_eq!(
        (
            report.manifests,
            report.links,
            report.blobs,
            report.bytes,
            report.stray_files
        ),
        (0, 2, 1, 14, 0),
        "{report:?}"
    );
    assert_eq!(e.blob_size(&app, &layer).await.unwrap(), layer_n as u64);
}
