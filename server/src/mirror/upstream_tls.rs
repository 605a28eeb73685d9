//! The TLS client configuration of an upstream: any certificate with `insecure` (the engine's
//! [`AnyCertificate`], which still checks the handshake's signatures); else the system's roots,
//! the Mozilla roots built into the binary when it has none (an image `FROM scratch`), plus the
//! certificates of `ca_file`; and the HTTP client built on it ([`https_client`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use berth_engine::tls_verify::AnyCertificate;

use super::upstream::UpstreamSettings;
use crate::tls::{PemCertificatesError, pem_certificates};

/// The TLS client configuration for `s`; `label` starts every message.
pub(super) fn tls_config(s: &UpstreamSettings, label: &str) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{label}: TLS: {e}"))?;
    if s.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    if roots.add_parsable_certificates(found.certs).0 == 0 {
        tracing::info!(errors = ?found.errors, "no system root certificates; using the built-in Mozilla roots for {label}");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &s.ca_file {
        let at = format!("{label}: CA file {}", path.display());
        let list = pem_certificates(path).map_err(|e| match e {
            PemCertificatesError::Unreadable(e) => format!("{at}: cannot read it: {e}"),
            PemCertificatesError::NotPem(e) => format!("{at}: not PEM certificates: {e}"),
            PemCertificatesError::Empty => {
                format!("{at}: holds no certificate (expected -----BEGIN CERTIFICATE-----)")
            }
        })?;
        for c in list {
            roots
                .add(c)
                .map_err(|e| format!("{at}: a certificate cannot be a root: {e}"))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The HTTP/1 client of the mirror's upstreams and of the other replicas: plain `http` or TLS as
/// [`tls_config`] sets it up for `s`, connections within `s.timeout`, idle ones kept a minute.
pub(super) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An [`HttpsClient`] for `s`; `label` starts every message.
pub(super) fn https_client(s: &UpstreamSettings, label: &str) -> Result<HttpsClient, String> {
    let tls = tls_config(s, label)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(s.timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}
