//! TLS for the listener (`http.tls`): rustls with the aws-lc-rs provider, HTTP/2 and HTTP/1.1
//! by ALPN, optional client certificates (`http.tls.clientcas`), and certificate reload without
//! a restart: the files are checked every few seconds and a changed set is loaded for new
//! connections (a set that does not load is logged and the previous one kept).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate signed by one.
    pub clientcas: Vec<PathBuf>,
    /// Refuse TLS 1.2 (`http.tls.minimumtls: tls1.3`).
    pub tls13_only: bool,
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

/// A reloadable server configuration.
pub struct Tls {
    cfg: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamp: Mutex<Stamp>,
}

fn stamp(cfg: &TlsConfig) -> Stamp {
    std::iter::once(&cfg.certificate)
        .chain(std::iter::once(&cfg.key))
        .chain(cfg.clientcas.iter())
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Why a file of PEM certificates cannot be used; each caller words it for its setting.
#[derive(Debug)]
pub(crate) enum PemCertificatesError {
    /// The file cannot be read.
    Unreadable(pem::Error),
    /// It holds something that is not a PEM certificate.
    NotPem(pem::Error),
    /// It holds no certificate at all.
    Empty,
}

/// The certificates of a PEM file (a chain, or a CA bundle): at least one.
pub(crate) fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemCertificatesError> {
    let list = CertificateDer::pem_file_iter(path)
        .map_err(PemCertificatesError::Unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemCertificatesError::NotPem)?;
    if list.is_empty() {
        return Err(PemCertificatesError::Empty);
    }
    Ok(list)
}

fn certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    pem_certificates(path).map_err(|e| match e {
        PemCertificatesError::Unreadable(e) => format!("{setting}: cannot read {shown}: {e}"),
        PemCertificatesError::NotPem(e) => format!("{setting}: {shown} is not PEM certificates: {e}"),
        PemCertificatesError::Empty => {
            format!("{setting}: {shown} holds no certificate (expected -----BEGIN CERTIFICATE-----)")
        }
    })
}

/// Build a rustls server configuration from the files.
pub fn server_config(cfg: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let chain = certs(&cfg.certificate, "http.tls.certificate")?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| {
        format!(
            "http.tls.key: cannot read a private key from {}: {e} (expected PEM: BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            cfg.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if cfg.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("http.tls: {e}"))?;
    let builder = if cfg.clientcas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for p in &cfg.clientcas {
            for c in certs(p, "http.tls.clientcas")? {
                roots
                    .add(c)
                    .map_err(|e| format!("http.tls.clientcas: {}: {e}", p.display()))?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("http.tls.clientcas: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut sc = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "http.tls.certificate / http.tls.key: {} and {} cannot be used together: {e}",
            cfg.certificate.display(),
            cfg.key.display()
        )
    })?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(sc)
}

impl Tls {
    /// Load the files; any problem is an error naming the setting and the file.
    pub fn load(cfg: TlsConfig) -> Result<Tls, String> {
        let sc = server_config(&cfg)?;
        Ok(Tls {
            stamp: Mutex::new(stamp(&cfg)),
            current: RwLock::new(Arc::new(sc)),
            cfg,
        })
    }

    /// The acceptor for a new connection (with the configuration in force now).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().clone())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        !self.cfg.clientcas.is_empty()
    }

    /// Load the files again if any changed. `Ok(true)` when a new configuration is in force;
    /// an error (the previous configuration stays) when the changed files do not load, e.g.
    /// while a new certificate is written but its key not yet.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.cfg);
        if *self.stamp.lock() == now {
            return Ok(false);
        }
        let sc = server_config(&self.cfg)?;
        *self.current.write() = Arc::new(sc);
        *self.stamp.lock() = now;
        Ok(true)
    }

    /// Check the files every [`RELOAD_INTERVAL`] and reload them when they change.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let t = me.clone();
                match tokio::task::spawn_blocking(move || t.reload_if_changed()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(certificate = %me.cfg.certificate.display(), "TLS certificate reloaded")
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!("TLS files changed but cannot be used yet, keeping the previous ones: {e}")
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![cn.to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn cfg(c: &Path, k: &Path) -> TlsConfig {
        TlsConfig {
            certificate: c.into(),
            key: k.into(),
            clientcas: Vec::new(),
            tls13_only: false,
        }
    }

    #[test]
    fn loads_reloads_and_names_problems() {
        let t = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(t.path(), "a", "localhost");
        let tls = Tls::load(cfg(&c, &k)).unwrap();
        assert_eq!(
            tls.current.read().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(!tls.reload_if_changed().unwrap());
        // A mismatched pair (new certificate, old key) is refused and the old one kept.
        let (c2, k2) = write_pair(t.path(), "b", "localhost");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::copy(&c2, &c).unwrap();
        let before = tls.current.read().clone();
        assert!(tls.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&before, &tls.current.read()));
        // Once the key follows, the new pair is taken.
        std::fs::copy(&k2, &k).unwrap();
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&before, &tls.current.read()));

        let e = Tls::load(cfg(&t.path().join("missing.crt"), &k)).err().unwrap();
        assert!(
            e.starts_with("http.tls.certificate:") && e.contains("missing.crt"),
            "{e}"
        );
        let e = Tls::load(cfg(&c, &c)).err().unwrap();
        assert!(e.starts_with("http.tls.key:"), "{e}");
        let e = Tls::load(cfg(&k, &k)).err().unwrap();
        assert!(e.contains("holds no certificate"), "{e}");
        let mut with_cas = cfg(&c, &k);
        with_cas.clientcas = vec![k.clone()];
        let e = Tls::load(with_cas).err().unwrap();
        assert!(e.starts_with("http.tls.clientcas:"), "{e}");
        let mut with_cas = cfg(&c, &k);
        with_cas.clientcas = vec![c2];
        assert!(Tls::load(with_cas).unwrap().requires_client_certificates());
    }
}
