//! Signing keys of the built-in token server, and generating them.

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use x509_parser::pem::Pem;

use super::keys::{KeySet, libtrust_kid};

/// How the `kid` header of issued tokens is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KidFormat {
    /// RFC 7638 thumbprint (SHA-256, base64url): what distribution v3 matches against a JWKS
    /// or root-bundle key.
    #[default]
    Thumbprint,
    /// libtrust fingerprint (`ABCD:EFGH:…`), what distribution 2.x matches against a root
    /// certificate without `x5c`.
    Libtrust,
}

/// One signing key with its public half.
pub struct SigningKey {
    /// For jsonwebtoken.
    pub encoding: EncodingKey,
    /// Algorithm it signs with.
    pub alg: Algorithm,
    /// `kid` put in token headers.
    pub kid: String,
    /// Public JWK (with `kid`, `alg`, `use`).
    pub jwk: Jwk,
    /// The certificate (base64 DER) to send as `x5c`, when one is configured.
    pub x5c: Option<String>,
    /// The PEM of the public key or certificate, so the registry can verify locally.
    pub public_pem: Vec<u8>,
    /// Secret derived from the private key that keys the credential binding of refresh tokens
    /// (see [`super::Issuer`]): stable as long as the key file is, never sent anywhere.
    pub(crate) binding: [u8; 32],
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl SigningKey {
    /// Load a PKCS#8 private key (`PRIVATE KEY`), with an optional certificate for the same
    /// key. `source` names the file in messages.
    pub fn from_pem(
        source: &str,
        key_pem: &[u8],
        cert_pem: Option<&[u8]>,
        kid: KidFormat,
    ) -> Result<SigningKey, String> {
        let key_pair = rcgen::KeyPair::from_pem(std::str::from_utf8(key_pem).map_err(|_| format!("{source}: not a PEM file"))?)
            .map_err(|e| {
                format!(
                    "{source}: cannot read the private key ({e}); it must be unencrypted PKCS#8 (BEGIN PRIVATE KEY) — convert with `openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW`"
                )
            })?;
        let alg = if key_pair.is_compatible(&rcgen::PKCS_RSA_SHA256) {
            Algorithm::RS256
        } else if key_pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            Algorithm::ES256
        } else if key_pair.is_compatible(&rcgen::PKCS_ECDSA_P384_SHA384) {
            Algorithm::ES384
        } else {
            return Err(format!(
                "{source}: unsupported key type; use RSA (RS256), P-256 (ES256) or P-384 (ES384)"
            ));
        };
        let pkcs8 = key_pair.serialize_der();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(
                &rsa_pkcs1_from_pkcs8(&pkcs8).ok_or_else(|| format!("{source}: cannot read the RSA key"))?,
            ),
            _ => EncodingKey::from_ec_der(&pkcs8),
        };
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key_pair);
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| format!("{source}: {e}"))?;
        let kid = match kid {
            KidFormat::Thumbprint => jwk
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|e| format!("{source}: {e}"))?,
            KidFormat::Libtrust => libtrust_kid(&spki),
        };
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(match alg {
            Algorithm::RS256 => KeyAlgorithm::RS256,
            Algorithm::ES384 => KeyAlgorithm::ES384,
            _ => KeyAlgorithm::ES256,
        });
        let (x5c, public_pem) = match cert_pem {
            Some(pem) => {
                let block = Pem::iter_from_buffer(pem)
                    .filter_map(Result::ok)
                    .find(|b| b.label == "CERTIFICATE")
                    .ok_or_else(|| format!("{source}: the certificate file has no CERTIFICATE block"))?;
                let cert = block
                    .parse_x509()
                    .map_err(|e| format!("{source}: invalid certificate: {e}"))?;
                if cert.public_key().raw != spki.as_slice() {
                    return Err(format!("{source}: the certificate is not for this private key"));
                }
                (
                    Some(base64::engine::general_purpose::STANDARD.encode(&block.contents)),
                    pem.to_vec(),
                )
            }
            None => (None, pem_block("PUBLIC KEY", &spki).into_bytes()),
        };
        let binding = hmac_sha256(&pkcs8, &[b"berth refresh-token credential binding v1"]);
        Ok(SigningKey {
            encoding,
            alg,
            kid,
            jwk,
            x5c,
            public_pem,
            binding,
        })
    }

    /// Add this key's public half to a verification key set.
    pub fn add_to(&self, keys: &mut KeySet) -> Result<(), String> {
        let set = serde_json::json!({"keys": [self.jwk]});
        keys.add_jwks(std::path::Path::new("(token server key)"), &set.to_string())
    }
}

/// Generate a new signing key and a self-signed certificate for it, as PEM:
/// `(private key PKCS#8, certificate)`.
pub fn generate(alg: Algorithm, common_name: &str, days: u32) -> Result<(String, String), String> {
    let sig = match alg {
        Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        other => return Err(format!("cannot generate {other:?} keys; use RS256, ES256 or ES384")),
    };
    let key = rcgen::KeyPair::generate_for(sig).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let now = time_now();
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), cert.pem()))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Extract the PKCS#1 RSAPrivateKey from a PKCS#8 PrivateKeyInfo (the OCTET STRING after the
/// version and algorithm identifier).
fn rsa_pkcs1_from_pkcs8(der: &[u8]) -> Option<Vec<u8>> {
    fn read_len(b: &[u8]) -> Option<(usize, usize)> {
        let first = *b.first()?;
        if first < 0x80 {
            return Some((first as usize, 1));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < 1 + n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[1..=n] {
            len = (len << 8) | x as usize;
        }
        Some((len, 1 + n))
    }
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let (len, l) = read_len(&b[1..])?;
        let start = 1 + l;
        let body = b.get(start..start + len)?;
        Some((tag, body, &b[start + len..]))
    }
    let (tag, seq, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _version, rest) = tlv(seq)?;
    let (_, _alg, rest) = tlv(rest)?;
    let (tag, key, _) = tlv(rest)?;
    (tag == 0x04).then(|| key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::hmac_sha256;

    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", &[b"what do ya ", b"want for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
