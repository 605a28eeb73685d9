//! TLS to PostgreSQL (`database.sslmode`, `sslrootcert`, `sslcert`, `sslkey`) against real
//! servers: one with `ssl = on` whose `pg_hba.conf` lets the stores' roles in over TLS only
//! (its certificate names `localhost` only, signed by a test CA), and the plain one of the other
//! tests, which has no TLS.

mod support;

use std::sync::LazyLock;

use berth_engine::postgres::{PgSettings, PgStore};
use berth_engine::{Error, MetaStore};
use support::postgres::{CERT_USER, Pki, Server, shared};

static TLS: LazyLock<Server> = LazyLock::new(Server::start_tls);

fn pki() -> &'static Pki {
    TLS.tls.as_ref().unwrap()
}

/// A new database on the TLS server, reached with `sslmode`.
async fn tls_database(sslmode: &str) -> PgSettings {
    PgSettings {
        sslmode: sslmode.into(),
        ..TLS.database().await
    }
}

fn refused(r: Result<PgStore, Error>) -> String {
    match r {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => {
            println!("refused: {e}");
            e.to_string()
        }
    }
}

/// The TLS version of `store`'s pooled connection; panics when it is plain.
async fn tls_of(store: &PgStore) -> String {
    store
        .tls_version()
        .await
        .unwrap()
        .expect("the connection should be TLS")
}

#[tokio::test]
async fn require_uses_tls_on_every_connection_of_the_store() {
    let s = tls_database("require").await;
    let store = PgStore::connect(&s).await.expect("require connects");
    store.check().await.unwrap();
    assert!(tls_of(&store).await.starts_with("TLSv1."));
    // The migration connection came through too: the server lets `berth` in over TLS only.
    // The pool and the listener, as the server sees them:
    let admin = TLS.admin().await;
    let rows = admin
        .query(
            "SELECT a.query, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.usename = 'berth'",
            &[&s.dbname],
        )
        .await
        .unwrap();
    assert!(
        rows.len() >= 2,
        "the pool's connection and the listener: {}",
        rows.len()
    );
    assert!(rows.iter().all(|r| r.get::<_, bool>(1)), "every connection uses TLS");
    assert!(
        rows.iter().any(|r| r.get::<_, String>(0).starts_with("LISTEN")),
        "the listener is among them"
    );
    // The garbage collection leader holds its lock on a connection from the same pool.
    let lease = store.gc_lease().await.unwrap().expect("the only replica leads");
    let holder = admin
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_locks l JOIN pg_stat_ssl s USING (pid) \
             WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = $1)",
            &[&s.dbname],
        )
        .await
        .unwrap();
    assert_eq!(
        holder.get::<_, Option<bool>>(0),
        Some(true),
        "the lease's connection uses TLS"
    );
    drop(lease);
}

#[tokio::test]
async fn verify_full_with_the_right_ca_connects() {
    let s = PgSettings {
        host: "localhost".into(),
        sslrootcert: Some(pki().ca.clone()),
        ..tls_database("verify-full").await
    };
    let store = PgStore::connect(&s)
        .await
        .expect("verify-full with the right CA connects");
    tls_of(&store).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_sslrootcert() {
    for mode in ["verify-full", "verify-ca", "require"] {
        let s = PgSettings {
            host: "localhost".into(),
            sslrootcert: Some(pki().other_ca.clone()),
            ..tls_database(mode).await
        };
        let msg = refused(PgStore::connect(&s).await);
        assert!(msg.contains("database.sslrootcert"), "{mode}: {msg}");
        assert!(msg.contains("not trusted"), "{mode}: {msg}");
        assert!(msg.contains("verify-ca and verify-full"), "{mode}: {msg}");
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_and_verify_ca_takes_it() {
    // The certificate names localhost only; 127.0.0.1 is the same server by another name.
    let s = PgSettings {
        host: "127.0.0.1".into(),
        sslrootcert: Some(pki().ca.clone()),
        ..tls_database("verify-full").await
    };
    let msg = refused(PgStore::connect(&s).await);
    assert!(msg.contains("database.sslmode"), "{msg}");
    assert!(msg.contains("does not name database.host=\"127.0.0.1\""), "{msg}");
    assert!(msg.contains("verify-ca"), "{msg}");
    let store = PgStore::connect(&PgSettings {
        sslmode: "verify-ca".into(),
        ..s.clone()
    })
    .await
    .expect("verify-ca does not check the name");
    tls_of(&store).await;
    // require with the root verifies the chain (as libpq does), not the name.
    let store = PgStore::connect(&PgSettings {
        sslmode: "require".into(),
        ..s
    })
    .await
    .expect("require with sslrootcert does not check the name");
    tls_of(&store).await;
}

#[tokio::test]
async fn disable_against_a_tls_only_server_is_refused_naming_sslmode() {
    let s = tls_database("disable").await;
    let msg = refused(PgStore::connect(&s).await);
    assert!(msg.contains("database.sslmode"), "{msg}");
    assert!(msg.contains("only over TLS"), "{msg}");
    assert!(!msg.contains("database.password"), "{msg}");
    // prefer and allow take TLS when the server offers it.
    for mode in ["prefer", "allow"] {
        let store = PgStore::connect(&PgSettings {
            sslmode: mode.into(),
            ..s.clone()
        })
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e}"));
        tls_of(&store).await;
    }
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused_naming_sslmode() {
    let plain = shared().database().await;
    for mode in ["require", "verify-ca", "verify-full"] {
        let msg = refused(
            PgStore::connect(&PgSettings {
                sslmode: mode.into(),
                sslrootcert: Some(pki().ca.clone()),
                ..plain.clone()
            })
            .await,
        );
        assert!(msg.contains("database.sslmode"), "{mode}: {msg}");
        assert!(msg.contains("does not accept it"), "{mode}: {msg}");
    }
    // prefer and allow fall back to a plain connection.
    for mode in ["prefer", "allow"] {
        let store = PgStore::connect(&PgSettings {
            sslmode: mode.into(),
            ..plain.clone()
        })
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(store.tls_version().await.unwrap(), None, "{mode}");
    }
}

#[tokio::test]
async fn a_client_certificate_is_sent_and_accepted() {
    let base = PgSettings {
        host: "localhost".into(),
        sslmode: "verify-full".into(),
        sslrootcert: Some(pki().ca.clone()),
        ..TLS.database_of(CERT_USER).await
    };
    let with_cert = PgSettings {
        sslcert: Some(pki().client_cert.clone()),
        sslkey: Some(pki().client_key.clone()),
        ..base.clone()
    };
    let store = PgStore::connect(&with_cert)
        .await
        .expect("clientcert=verify-ca accepts a certificate from its CA");
    tls_of(&store).await;
    let admin = TLS.admin().await;
    let row = admin
        .query_one(
            "SELECT bool_and(s.client_dn = '/CN=berth_cert') FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1",
            &[&with_cert.dbname],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<bool>>(0),
        Some(true),
        "every connection sent the certificate"
    );

    // Without one, or with one from a CA the server does not trust: named.
    let msg = refused(PgStore::connect(&base).await);
    assert!(msg.contains("database.sslcert"), "{msg}");
    let msg = refused(
        PgStore::connect(&PgSettings {
            sslcert: Some(pki().untrusted_cert.clone()),
            sslkey: Some(pki().untrusted_key.clone()),
            ..base
        })
        .await,
    );
    assert!(msg.contains("database.sslcert"), "{msg}");
}

#[tokio::test]
async fn unreadable_tls_files_are_named() {
    let s = tls_database("verify-full").await;
    let missing = pki().dir().join("no-such-root.crt");
    let msg = refused(
        PgStore::connect(&PgSettings {
            sslrootcert: Some(missing.clone()),
            ..s.clone()
        })
        .await,
    );
    assert!(
        msg.contains("database.sslrootcert") && msg.contains(missing.to_str().unwrap()),
        "{msg}"
    );
    let msg = refused(
        PgStore::connect(&PgSettings {
            sslcert: Some(pki().client_cert.clone()),
            sslkey: Some(pki().dir().join("no-such.key")),
            sslrootcert: Some(pki().ca.clone()),
            ..s
        })
        .await,
    );
    assert!(msg.contains("database.sslkey") && msg.contains("no-such.key"), "{msg}");
}

#[tokio::test]
async fn a_unix_socket_is_plain_whatever_the_mode() {
    let s = shared().database().await;
    let store = PgStore::connect(&PgSettings {
        host: shared().socket_dir().to_str().unwrap().into(),
        sslmode: "verify-full".into(),
        // Not read: PostgreSQL has no TLS over a Unix socket, and libpq does not ask for it.
        sslrootcert: Some(pki().dir().join("no-such-root.crt")),
        ..s
    })
    .await
    .expect("a Unix socket connects without TLS");
    assert_eq!(store.tls_version().await.unwrap(), None);
}
