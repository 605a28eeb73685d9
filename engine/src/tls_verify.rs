//! Certificate verifiers that relax rustls's WebPKI check in one stated way each, for the
//! settings that ask for it: `storage.s3.skipverify`, `database.sslmode` `require` without a
//! root certificate and, in the server, a mirror's `insecure` ([`AnyCertificate`]), and
//! `database.sslmode verify-ca` ([`AnyName`]). Only rustls is involved, no HTTP: a verifier goes
//! into a `rustls::ClientConfig` through `dangerous().with_custom_certificate_verifier`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore};

/// Accepts any server certificate: `storage.s3.skipverify`, `database.sslmode` `require`
/// (and `prefer`, `allow`) without `sslrootcert`, as libpq, and a mirror's `insecure`. The
/// provider is the one the client configuration is built with; its algorithms check the
/// handshake's signatures.
/// The handshake's signatures are still checked, so the connection is encrypted to whoever holds
/// the certificate's key, and channel binding (SCRAM-SHA-256-PLUS) ties the login to it; only
/// who that is goes unchecked.
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require` with `sslrootcert`): rustls's WebPKI verifier, except that a
/// certificate naming another host is accepted — and only that. Every other verdict of the inner
/// verifier (unknown issuer, bad signature, expired, wrong purpose…) stands. Before a name
/// mismatch is let through, the chain is verified once more on its own
/// ([`rustls::client::verify_server_cert_signed_by_trust_anchor`]), so the acceptance does not
/// rest on the order in which the inner verifier checks things.
#[derive(Debug)]
pub struct AnyName {
    /// The WebPKI verifier, built over `roots` with `provider`.
    pub inner: Arc<WebPkiServerVerifier>,
    /// The trust anchors, for checking the chain alone when only the name does not match.
    pub roots: Arc<RootCertStore>,
    /// The provider whose algorithms check that chain's signatures.
    pub provider: Arc<CryptoProvider>,
}

/// Whether `e` says only that the certificate names another host.
pub(crate) fn name_mismatch(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(v) => Ok(v),
            Err(e) if name_mismatch(&e) => {
                let cert = ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    &self.roots,
                    intermediates,
                    now,
                    self.provider.signature_verification_algorithms.all,
                )?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_name_mismatch_counts_as_one() {
        assert!(name_mismatch(&rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName
        )));
        assert!(name_mismatch(&rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("db.internal").unwrap(),
                presented: vec!["other.internal".into()],
            }
        )));
        for other in [
            CertificateError::UnknownIssuer,
            CertificateError::BadSignature,
            CertificateError::Expired,
            CertificateError::InvalidPurpose,
            CertificateError::BadEncoding,
            CertificateError::ApplicationVerificationFailure,
        ] {
            assert!(!name_mismatch(&rustls::Error::InvalidCertificate(other)));
        }
        assert!(!name_mismatch(&rustls::Error::General("NotValidForName".into())));
    }
}
