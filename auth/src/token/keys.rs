//! Verification keys: from a JWKS file (by `kid`), from the certificates of a root bundle (by
//! the RFC 7638 thumbprint or the libtrust fingerprint of their key, or through an `x5c`
//! chain), or from a single PEM public key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest as _, Sha256};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Algorithms Berth accepts in tokens. HMAC and `none` are never accepted.
pub const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The kind of a key, which fixes the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: RS256/384/512.
    Rsa,
    /// P-256: ES256.
    P256,
    /// P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (KeyKind::Rsa, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
                | (KeyKind::P256, Algorithm::ES256)
                | (KeyKind::P384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One verification key.
pub struct Key {
    /// For jsonwebtoken.
    pub decoding: DecodingKey,
    /// Its kind.
    pub kind: KeyKind,
    /// The `alg` a JWKS entry pins it to, if any.
    pub alg: Option<Algorithm>,
    /// Where it came from, for messages.
    pub source: String,
}

/// Every key tokens may be verified with.
#[derive(Default, Clone)]
pub struct KeySet {
    /// By `kid`.
    pub by_kid: BTreeMap<String, Arc<Key>>,
    /// DER of the root certificates (for `x5c` chains).
    pub roots: Vec<Vec<u8>>,
    /// A key that verifies tokens without `kid` (only when exactly one key was configured).
    pub sole: Option<Arc<Key>>,
    distinct: usize,
}

/// `kid` by libtrust's rule: base32 of the first 240 bits of SHA-256 over the DER
/// SubjectPublicKeyInfo, in twelve groups of four separated by `:` (distribution 2.x).
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    let bytes = &hash[..30];
    let mut out = String::with_capacity(59);
    let mut buffer: u64 = 0;
    let mut bits = 0;
    let mut n = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            if n > 0 && n % 4 == 0 {
                out.push(':');
            }
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
            n += 1;
        }
    }
    out
}

/// RFC 7638 thumbprint (SHA-256, base64url) of a key.
pub fn thumbprint(key: &DecodingKey) -> Option<String> {
    Jwk::from_decoding_key(key, None)
        .ok()?
        .thumbprint(ThumbprintHash::SHA256)
        .ok()
}

const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// A key from a SubjectPublicKeyInfo.
pub fn key_from_spki(spki: &SubjectPublicKeyInfo<'_>, source: &str) -> Result<Key, String> {
    let data = spki.subject_public_key.data.as_ref();
    let (decoding, kind) = if spki.algorithm.algorithm.to_id_string() == OID_ED25519 {
        (DecodingKey::from_ed_der(data), KeyKind::Ed25519)
    } else {
        match spki.parsed() {
            Ok(PublicKey::RSA(_)) => (DecodingKey::from_rsa_der(data), KeyKind::Rsa),
            Ok(PublicKey::EC(_)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                let kind = match curve.as_str() {
                    OID_P256 => KeyKind::P256,
                    OID_P384 => KeyKind::P384,
                    other => {
                        return Err(format!(
                            "{source}: unsupported elliptic curve {other}; use P-256 or P-384"
                        ));
                    }
                };
                (DecodingKey::from_ec_der(data), kind)
            }
            _ => {
                return Err(format!(
                    "{source}: unsupported key type; use RSA, P-256, P-384 or Ed25519"
                ));
            }
        }
    };
    Ok(Key {
        decoding,
        kind,
        alg: None,
        source: source.to_owned(),
    })
}

impl KeySet {
    fn add(&mut self, kids: &[String], key: Key) {
        let key = Arc::new(key);
        for kid in kids {
            self.by_kid.insert(kid.clone(), key.clone());
        }
        self.distinct += 1;
        self.sole = if self.distinct == 1 { Some(key) } else { None };
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.distinct
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.distinct == 0
    }

    /// The `kid`s tokens may carry.
    pub fn kids(&self) -> Vec<&str> {
        self.by_kid.keys().map(String::as_str).collect()
    }

    /// Add the keys of a JWKS document; every key needs a `kid`.
    pub fn add_jwks(&mut self, file: &Path, text: &str) -> Result<(), String> {
        let f = file.display();
        let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("{f}: not a JWKS document: {e}"))?;
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| format!("{f}: key {i} has no \"kid\""))?;
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("{f}: key {kid:?}: {e}"))?;
            let alg = match jwk.common.key_algorithm {
                Some(a) => Some(
                    serde_json::to_value(a)
                        .ok()
                        .and_then(|v| v.as_str().and_then(|s| s.parse::<Algorithm>().ok()))
                        .filter(|a| ALLOWED.contains(a))
                        .ok_or_else(|| format!("{f}: key {kid:?}: algorithm {a:?} is not accepted"))?,
                ),
                None => None,
            };
            let kind = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => KeyKind::Rsa,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    jsonwebtoken::jwk::EllipticCurve::P256 => KeyKind::P256,
                    jsonwebtoken::jwk::EllipticCurve::P384 => KeyKind::P384,
                    ref c => return Err(format!("{f}: key {kid:?}: unsupported curve {c:?}")),
                },
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed25519,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                    return Err(format!(
                        "{f}: key {kid:?} is a symmetric (HMAC) key; only public keys are accepted"
                    ));
                }
                _ => return Err(format!("{f}: key {kid:?} has an unsupported key type")),
            };
            if let Some(a) = alg
                && !kind.fits(a)
            {
                return Err(format!("{f}: key {kid:?}: alg {a:?} does not fit a {kind:?} key"));
            }
            self.add(
                &[kid],
                Key {
                    decoding,
                    kind,
                    alg,
                    source: format!("{f}"),
                },
            );
        }
        Ok(())
    }

    /// Add the certificates of a PEM bundle: each is a root for `x5c` chains, and its key is
    /// known by its RFC 7638 thumbprint and its libtrust fingerprint.
    pub fn add_root_bundle(&mut self, file: &Path, pem: &[u8]) -> Result<(), String> {
        let f = file.display();
        let mut count = 0;
        for block in Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| format!("{f}: not a PEM file: {e}"))?;
            if block.label != "CERTIFICATE" {
                continue;
            }
            let cert = block
                .parse_x509()
                .map_err(|e| format!("{f}: certificate {count}: {e}"))?;
            let key = key_from_spki(cert.public_key(), &format!("{f} (certificate {count})"))?;
            let mut kids = vec![libtrust_kid(cert.public_key().raw)];
            kids.extend(thumbprint(&key.decoding));
            self.roots.push(block.contents.clone());
            self.add(&kids, key);
            count += 1;
        }
        if count == 0 {
            return Err(format!("{f}: no CERTIFICATE block found"));
        }
        Ok(())
    }

    /// Add a PEM public key (`PUBLIC KEY`) or a certificate's key.
    pub fn add_public_key(&mut self, file: &Path, pem: &[u8]) -> Result<(), String> {
        let f = file.display();
        let block = Pem::iter_from_buffer(pem)
            .next()
            .ok_or_else(|| format!("{f}: no PEM block found"))?;
        {
            let block = block.map_err(|e| format!("{f}: not a PEM file: {e}"))?;
            let (key, spki_raw) = match block.label.as_str() {
                "PUBLIC KEY" => {
                    let (_, spki) = SubjectPublicKeyInfo::from_der(&block.contents)
                        .map_err(|e| format!("{f}: invalid public key: {e}"))?;
                    (key_from_spki(&spki, &f.to_string())?, spki.raw.to_vec())
                }
                "CERTIFICATE" => {
                    let cert = block
                        .parse_x509()
                        .map_err(|e| format!("{f}: invalid certificate: {e}"))?;
                    (
                        key_from_spki(cert.public_key(), &f.to_string())?,
                        cert.public_key().raw.to_vec(),
                    )
                }
                "RSA PUBLIC KEY" => {
                    return Err(format!(
                        "{f}: PKCS#1 \"RSA PUBLIC KEY\" is not supported; convert it with `openssl rsa -RSAPublicKey_in -in {f} -pubout`"
                    ));
                }
                other => {
                    return Err(format!(
                        "{f}: expected a PUBLIC KEY or CERTIFICATE block, found {other}"
                    ));
                }
            };
            let mut kids = vec![libtrust_kid(&spki_raw)];
            kids.extend(thumbprint(&key.decoding));
            self.add(&kids, key);
            Ok(())
        }
    }

    /// Verify an `x5c` chain (leaf first, base64 DER) up to one of the roots, checking each
    /// certificate's validity period and signature, and return the leaf's key.
    pub fn key_from_x5c(&self, chain: &[String]) -> Result<Key, String> {
        if self.roots.is_empty() {
            return Err("the token has an x5c chain but no rootcertbundle is configured".into());
        }
        let ders: Vec<Vec<u8>> = chain
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.decode(c))
            .collect::<Result<_, _>>()
            .map_err(|_| "x5c holds invalid base64".to_string())?;
        let certs: Vec<X509Certificate<'_>> = ders
            .iter()
            .map(|d| X509Certificate::from_der(d).map(|(_, c)| c))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("x5c holds an invalid certificate: {e}"))?;
        let leaf = certs.first().ok_or("x5c is empty")?;
        for c in &certs {
            if !c.validity().is_valid() {
                return Err("a certificate of the x5c chain is expired or not yet valid".into());
            }
        }
        for pair in certs.windows(2) {
            pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .map_err(|_| "the x5c chain is broken: a certificate is not signed by the next one".to_string())?;
        }
        let last = certs.last().ok_or("x5c is empty")?;
        let anchored = self.roots.iter().any(|root| {
            root.as_slice() == ders.last().map(Vec::as_slice).unwrap_or_default()
                || X509Certificate::from_der(root)
                    .map(|(_, r)| last.verify_signature(Some(r.public_key())).is_ok())
                    .unwrap_or(false)
        });
        if !anchored {
            return Err(
                "the x5c chain does not end at a certificate of rootcertbundle (token signed by untrusted key)".into(),
            );
        }
        key_from_spki(leaf.public_key(), "x5c leaf certificate")
    }
}

/// The public JWK (with `kid` = RFC 7638 thumbprint, `alg`, `use: sig`) of a PEM certificate,
/// public key or PKCS#8 private key, for publishing in a JWKS file.
pub fn public_jwk(file: &Path, pem: &[u8]) -> Result<Jwk, String> {
    let f = file.display().to_string();
    let text = std::str::from_utf8(pem).map_err(|_| format!("{f}: not a PEM file"))?;
    if text.contains("PRIVATE KEY-----") {
        let k = super::signing::SigningKey::from_pem(&f, pem, None, super::signing::KidFormat::Thumbprint)?;
        return Ok(k.jwk);
    }
    let block = Pem::iter_from_buffer(pem)
        .next()
        .ok_or_else(|| format!("{f}: no PEM block found"))?;
    let block = block.map_err(|e| format!("{f}: not a PEM file: {e}"))?;
    let key = match block.label.as_str() {
        "CERTIFICATE" => key_from_spki(block.parse_x509().map_err(|e| format!("{f}: {e}"))?.public_key(), &f)?,
        "PUBLIC KEY" => {
            let (_, spki) = SubjectPublicKeyInfo::from_der(&block.contents).map_err(|e| format!("{f}: {e}"))?;
            key_from_spki(&spki, &f)?
        }
        other => {
            return Err(format!(
                "{f}: expected a CERTIFICATE, PUBLIC KEY or PRIVATE KEY block, found {other}"
            ));
        }
    };
    let alg = match key.kind {
        KeyKind::Rsa => Algorithm::RS256,
        KeyKind::P256 => Algorithm::ES256,
        KeyKind::P384 => Algorithm::ES384,
        KeyKind::Ed25519 => Algorithm::EdDSA,
    };
    let mut jwk = Jwk::from_decoding_key(&key.decoding, Some(alg)).map_err(|e| format!("{f}: {e}"))?;
    jwk.common.key_id = Some(
        jwk.thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("{f}: {e}"))?,
    );
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtrust_format() {
        let kid = libtrust_kid(b"any bytes");
        assert_eq!(kid.len(), 59);
        assert_eq!(kid.split(':').count(), 12);
        assert!(kid.split(':').all(|g| g.len() == 4));
    }

    #[test]
    fn hmac_jwks_refused() {
        let mut ks = KeySet::default();
        let e = ks
            .add_jwks(
                Path::new("j.json"),
                r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#,
            )
            .unwrap_err();
        assert!(e.contains("symmetric"), "{e}");
        let e = ks.add_jwks(
            Path::new("j.json"),
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
        );
        assert!(e.unwrap_err().contains("kid"));
    }
}
