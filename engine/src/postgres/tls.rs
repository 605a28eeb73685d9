//! TLS to PostgreSQL (`database.sslmode`, `sslrootcert`, `sslcert`, `sslkey`), with libpq's
//! meanings, over rustls with the aws-lc-rs provider and `rustls-tokio-postgres` as the driver's
//! connector. One connector is built from the settings and used by every connection: the pool,
//! the migration connection, the listener and (through the pool) the garbage collection leader.
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` | when the server accepts it (tried first), else plain | not checked; with `sslrootcert`, its chain is verified against it (as libpq does when the file exists) |
//! | `require` | always | the same |
//! | `verify-ca` | always | chain verified against `sslrootcert`, or the system's roots; any host name |
//! | `verify-full` | always | the same, and it must name `database.host` |
//!
//! libpq's `allow` tries a plain connection first and TLS second; the driver has no such mode,
//! so `allow` behaves as `prefer` (TLS first): the outcome differs only in that Berth uses TLS
//! where libpq would not. Under both, Berth falls back to plain only when the server declines
//! TLS, not when a handshake fails (libpq retries without TLS then). Over a Unix socket
//! (`database.host` starting with `/`) PostgreSQL has no TLS, and, as libpq, Berth connects
//! without it whatever the mode.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, RootCertStore};
use rustls_tokio_postgres::MakeRustlsConnect;

use super::settings::{PgSettings, SslMode};
use crate::error::{Error, MetaError, Result};
use crate::tls_verify::{AnyCertificate, AnyName};

/// How connections are made: plain, or TLS with one client configuration.
#[derive(Clone)]
pub(crate) enum Tls {
    /// `sslmode: disable`, or a Unix socket.
    Off,
    /// Every other mode (the driver's `ssl_mode` says whether TLS is required).
    On(MakeRustlsConnect),
}

fn settings_error(msg: String) -> Error {
    Error::Meta(MetaError::Settings(msg))
}

/// The PEM certificates of `path`, the file named by `setting`.
fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).map_err(|e| settings_error(format!("{setting}: cannot read {}: {e}", path.display())))?;
    let list = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| settings_error(format!("{setting}: {} is not PEM certificates: {e}", path.display())))?;
    if list.is_empty() {
        return Err(settings_error(format!(
            "{setting}: {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(list)
}

/// The roots of `database.sslrootcert`.
fn root_file(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certificates(path, "database.sslrootcert")? {
        roots.add(c).map_err(|e| {
            settings_error(format!(
                "database.sslrootcert: {} holds a certificate that cannot be a root: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The system's roots; the Mozilla roots built into the binary where it has none (an image
/// `FROM scratch`).
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::info!(errors = ?found.errors, "no system root certificates for database.sslmode; using the built-in Mozilla roots (set database.sslrootcert to name the CA)");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// The connector for `settings` (already checked by `PgSettings::config`). The files are read
/// here, once; an unreadable one is an error naming its setting and the file.
pub(crate) fn connector(settings: &PgSettings) -> Result<Tls> {
    let mode = SslMode::parse(&settings.sslmode)?;
    if mode == SslMode::Disable || settings.is_unix_socket() {
        return Ok(Tls::Off);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match (&settings.sslrootcert, mode) {
        (Some(path), _) => Some(root_file(path)?),
        (None, m) if m.verifies() => Some(system_roots()),
        (None, _) => None,
    };
    let verifier = verifier(mode, roots, &provider)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| settings_error(format!("database.sslmode: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.sslcert, &settings.sslkey) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "database.sslcert")?;
            let pem = std::fs::read(key)
                .map_err(|e| settings_error(format!("database.sslkey: cannot read {}: {e}", key.display())))?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                settings_error(format!(
                    "database.sslkey: cannot read a private key from {}: {e} (expected unencrypted PEM: BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                settings_error(format!(
                    "database.sslcert / database.sslkey: {} and {} cannot be used together: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (Some(_), None) => {
            return Err(settings_error(
                "database.sslkey must be set with database.sslcert".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(settings_error(
                "database.sslcert must be set with database.sslkey".into(),
            ));
        }
    };
    Ok(Tls::On(MakeRustlsConnect::new(config)))
}

/// What checks the server's certificate in `mode`, given the roots (`None`: no check).
fn verifier(
    mode: SslMode,
    roots: Option<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>> {
    let Some(roots) = roots else {
        return Ok(Arc::new(AnyCertificate(provider.clone())));
    };
    let roots = Arc::new(roots);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| settings_error(format!("database.sslrootcert: {e}")))?;
    Ok(if mode == SslMode::VerifyFull {
        webpki
    } else {
        Arc::new(AnyName {
            inner: webpki,
            roots,
            provider: provider.clone(),
        })
    })
}

/// The rustls error somewhere in `e`'s chain (tokio-rustls wraps it in an `io::Error`).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = c.source();
    }
    None
}

/// What a TLS failure of the first connection means, naming the setting to fix; `None` when
/// `e` is no TLS failure.
pub(crate) fn explain(settings: &PgSettings, e: &tokio_postgres::Error) -> Option<Error> {
    use std::error::Error as _;
    let at = format!("database.host={:?} database.port={}", settings.host, settings.port);
    let mode = &settings.sslmode;
    let said = super::error::chain(e);
    if e.source()
        .is_some_and(|s| s.to_string() == "server does not support TLS")
    {
        return Some(settings_error(format!(
            "database.sslmode: {mode} needs TLS, and the PostgreSQL server at {at} does not accept it (ssl = off in its postgresql.conf); \
             turn ssl on at the server, or set database.sslmode: prefer or disable"
        )));
    }
    let r = rustls_error(e)?;
    let roots = match &settings.sslrootcert {
        Some(p) => format!("database.sslrootcert={}", p.display()),
        None => "the system's root certificates (database.sslrootcert is not set)".to_owned(),
    };
    let msg = match r {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            format!(
                "database.sslmode: verify-full checks the host name, and the server's certificate does not name database.host={:?} ({r}); \
                 set database.host to a name the certificate holds, or use database.sslmode: verify-ca (the chain is still verified against {roots})",
                settings.host
            )
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            format!(
                "database.sslrootcert: the PostgreSQL server at {at} presented an expired certificate ({r}); renew the server's certificate"
            )
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => format!(
            "database.sslrootcert: the PostgreSQL server at {at} presented a certificate that is not valid yet ({r}); check the clocks"
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => format!(
            "database.sslrootcert: the PostgreSQL server at {at} presented a certificate that is not trusted ({r}): \
             database.sslmode is {mode}, so its chain must lead to a CA in {roots}; set database.sslrootcert to the CA \
             that signed the server's certificate (a root file is verified under verify-ca and verify-full, and under \
             require, prefer and allow when set)"
        ),
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            match alert {
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired => {
                    let sent = match &settings.sslcert {
                        Some(p) => format!("the client certificate database.sslcert={}", p.display()),
                        None => "no client certificate (database.sslcert is not set)".to_owned(),
                    };
                    format!(
                        "database.sslcert: the PostgreSQL server at {at} refused {sent} ({r}); \
                         give database.sslcert and database.sslkey a certificate signed by a CA in the server's ssl_ca_file"
                    )
                }
                _ => format!("database.sslmode: the TLS handshake with the PostgreSQL server at {at} failed: {said}"),
            }
        }
        _ => format!("database.sslmode: the TLS handshake with the PostgreSQL server at {at} failed: {said}"),
    };
    Some(settings_error(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{ServerName, UnixTime};

    use crate::tls_verify::name_mismatch;

    /// A CA, and a way to issue server certificates from it.
    struct Ca {
        issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
            Ca {
                issuer: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap(),
            }
        }

        fn roots(&self) -> RootCertStore {
            let mut r = RootCertStore::empty();
            r.add(self.issuer.der().clone()).unwrap();
            r
        }

        /// A server certificate for `names`; `expired`: one that ended in 2001.
        fn server(&self, names: &[&str], expired: bool) -> CertificateDer<'static> {
            let mut params =
                rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            if expired {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
            let key = rcgen::KeyPair::generate().unwrap();
            params.signed_by(&key, &self.issuer).unwrap().der().clone()
        }
    }

    fn check(
        v: &Arc<dyn ServerCertVerifier>,
        cert: &CertificateDer<'_>,
        host: &str,
    ) -> std::result::Result<(), rustls::Error> {
        v.verify_server_cert(cert, &[], &ServerName::try_from(host).unwrap(), &[], UnixTime::now())
            .map(|_| ())
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    #[test]
    fn verify_ca_lets_only_a_name_mismatch_through() {
        let ca = Ca::new("berth test CA");
        let other = Ca::new("another CA");
        let v = verifier(SslMode::VerifyCa, Some(ca.roots()), &provider()).unwrap();
        // The right CA: any name.
        check(&v, &ca.server(&["db.internal"], false), "db.internal").unwrap();
        check(&v, &ca.server(&["db.internal"], false), "127.0.0.1").unwrap();
        check(&v, &ca.server(&["db.internal"], false), "elsewhere.example").unwrap();
        // Another CA, with the right name or not: refused.
        for host in ["db.internal", "elsewhere.example"] {
            let e = check(&v, &other.server(&["db.internal"], false), host).unwrap_err();
            assert!(
                matches!(e, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                "{host}: {e:?}"
            );
        }
        // The right CA but expired, with the right name or not: refused.
        for host in ["db.internal", "elsewhere.example"] {
            let e = check(&v, &ca.server(&["db.internal"], true), host).unwrap_err();
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        CertificateError::Expired | CertificateError::ExpiredContext { .. }
                    )
                ),
                "{host}: {e:?}"
            );
        }
        // A self-signed certificate naming the host: refused.
        let own = rcgen::generate_simple_self_signed(vec!["db.internal".to_owned()]).unwrap();
        assert!(check(&v, own.cert.der(), "db.internal").is_err());
        // The same rules for require (and prefer, allow) when sslrootcert is set.
        let v = verifier(SslMode::Require, Some(ca.roots()), &provider()).unwrap();
        check(&v, &ca.server(&["db.internal"], false), "127.0.0.1").unwrap();
        assert!(check(&v, &other.server(&["db.internal"], false), "db.internal").is_err());
    }

    #[test]
    fn verify_full_also_checks_the_name() {
        let ca = Ca::new("berth test CA");
        let v = verifier(SslMode::VerifyFull, Some(ca.roots()), &provider()).unwrap();
        check(&v, &ca.server(&["db.internal", "127.0.0.1"], false), "db.internal").unwrap();
        check(&v, &ca.server(&["db.internal", "127.0.0.1"], false), "127.0.0.1").unwrap();
        let e = check(&v, &ca.server(&["db.internal"], false), "127.0.0.1").unwrap_err();
        assert!(name_mismatch(&e), "{e:?}");
        let e = check(
            &v,
            &Ca::new("another CA").server(&["db.internal"], false),
            "db.internal",
        )
        .unwrap_err();
        assert!(!name_mismatch(&e), "{e:?}");
    }

    #[test]
    fn require_without_a_root_accepts_any_certificate() {
        let v = verifier(SslMode::Require, None, &provider()).unwrap();
        let own = rcgen::generate_simple_self_signed(vec!["db.internal".to_owned()]).unwrap();
        check(&v, own.cert.der(), "127.0.0.1").unwrap();
    }

    fn tls_settings(dir: &Path) -> PgSettings {
        PgSettings {
            sslmode: "verify-full".into(),
            sslrootcert: Some(dir.join("root.crt")),
            ..PgSettings::default()
        }
    }

    fn refusal(s: &PgSettings) -> String {
        match connector(s) {
            Ok(_) => panic!("{s:?} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unreadable_files_are_named_with_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = Ca::new("berth test CA");
        // Missing root file.
        let e = refusal(&tls_settings(d));
        assert!(e.contains("database.sslrootcert") && e.contains("root.crt"), "{e}");
        // A root file without a certificate.
        std::fs::write(d.join("root.crt"), "not a certificate\n").unwrap();
        let e = refusal(&tls_settings(d));
        assert!(
            e.contains("database.sslrootcert") && e.contains("no certificate"),
            "{e}"
        );
        std::fs::write(d.join("root.crt"), ca.issuer.pem()).unwrap();
        assert!(connector(&tls_settings(d)).is_ok());
        // Client certificate and key.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "berth");
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        std::fs::write(d.join("client.crt"), cert.pem()).unwrap();
        let with_client = |key_file: &str| PgSettings {
            sslcert: Some(d.join("client.crt")),
            sslkey: Some(d.join(key_file)),
            ..tls_settings(d)
        };
        let e = refusal(&with_client("missing.key"));
        assert!(e.contains("database.sslkey") && e.contains("missing.key"), "{e}");
        std::fs::write(d.join("garbage.key"), "-----BEGIN NOTHING-----\n").unwrap();
        let e = refusal(&with_client("garbage.key"));
        assert!(e.contains("database.sslkey") && e.contains("garbage.key"), "{e}");
        std::fs::write(d.join("other.key"), rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let e = refusal(&with_client("other.key"));
        assert!(e.contains("database.sslcert / database.sslkey"), "{e}");
        std::fs::write(d.join("client.key"), key.serialize_pem()).unwrap();
        assert!(connector(&with_client("client.key")).is_ok());
        let e = refusal(&PgSettings {
            sslcert: Some(d.join("no-such.crt")),
            ..with_client("client.key")
        });
        assert!(e.contains("database.sslcert") && e.contains("no-such.crt"), "{e}");
        // disable reads nothing, and neither does a Unix socket.
        for s in [
            PgSettings {
                sslmode: "disable".into(),
                ..with_client("missing.key")
            },
            PgSettings {
                host: "/run/postgresql".into(),
                ..with_client("missing.key")
            },
        ] {
            assert!(matches!(connector(&s), Ok(Tls::Off)), "{s:?}");
        }
    }
}
