//! Token verification and issuing, with keys generated for each test.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use berth_auth::token::signing::generate;
use berth_auth::token::{Issuer, KeySet, KidFormat, RefreshBinding, RefreshError, SigningKey, Verifier, VerifyError};
use berth_auth::{Action, Scope};

const ISS: &str = "test-issuer";
const SVC: &str = "test-registry";

fn signer(alg: Algorithm, kid: KidFormat, with_cert: bool) -> SigningKey {
    let (key, cert) = generate(alg, "berth test", 1).unwrap();
    SigningKey::from_pem("test", key.as_bytes(), with_cert.then_some(cert.as_bytes()), kid).unwrap()
}

fn issuer(keys: Vec<SigningKey>) -> Issuer {
    Issuer::new(ISS.into(), SVC.into(), Duration::from_secs(300), keys).unwrap()
}

fn verifier_for(keys: &[&SigningKey]) -> Verifier {
    let mut set = KeySet::default();
    for k in keys {
        k.add_to(&mut set).unwrap();
    }
    Verifier::new(ISS.into(), SVC.into(), set, Duration::from_secs(30))
}

fn scope(s: &str) -> Scope {
    s.parse().unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(exp: u64) -> serde_json::Value {
    json!({"iss": ISS, "aud": SVC, "sub": "alice", "exp": exp, "iat": now(), "nbf": now() - 1,
           "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]})
}

fn sign_raw(k: &SigningKey, alg: Algorithm, kid: Option<&str>, c: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, c, &k.encoding).unwrap()
}

#[test]
fn issued_tokens_verify_and_grant_exactly_their_access() {
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::ES384] {
        let k = signer(alg, KidFormat::Thumbprint, false);
        let v = verifier_for(&[&k]);
        let iss = issuer(vec![k]);
        let t = iss
            .issue("alice", &[scope("repository:team/app:pull,push")], None)
            .unwrap();
        assert_eq!(t.token, t.access_token);
        assert_eq!(t.expires_in, 300);
        assert!(t.issued_at.contains('T'), "{}", t.issued_at);
        let g = v.verify(&t.token).unwrap();
        assert_eq!(g.subject.as_deref(), Some("alice"));
        assert!(g.allows("repository", "team/app", Action::Push));
        assert!(!g.allows("repository", "team/app", Action::Delete));
        assert!(!g.allows("repository", "team/other", Action::Pull));
        // cached: the same Arc comes back
        assert!(std::sync::Arc::ptr_eq(&g, &v.verify(&t.token).unwrap()));
    }
}

#[test]
fn rejections() {
    let k = signer(Algorithm::RS256, KidFormat::Thumbprint, false);
    let kid = k.kid.clone();
    let v = verifier_for(&[&k]);
    // alg none
    let hdr = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x"}"#);
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(now() + 60).to_string());
    assert_eq!(v.verify(&format!("{hdr}.{body}.")).unwrap_err(), VerifyError::AlgNone);
    // HS256 signed with the public key's bytes (key confusion)
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.clone());
    let hs = jsonwebtoken::encode(&h, &claims(now() + 60), &EncodingKey::from_secret(&k.public_pem)).unwrap();
    assert!(matches!(v.verify(&hs).unwrap_err(), VerifyError::AlgNotAccepted(a) if a == "HS256"));
    // unknown kid: the message lists the known ones
    let other = signer(Algorithm::RS256, KidFormat::Thumbprint, false);
    let t = sign_raw(&other, Algorithm::RS256, Some("nope"), &claims(now() + 60));
    let e = v.verify(&t).unwrap_err();
    assert!(
        matches!(&e, VerifyError::UnknownKid { known, .. } if known.contains(&kid)),
        "{e}"
    );
    // right kid, wrong key
    let t = sign_raw(&other, Algorithm::RS256, Some(&kid), &claims(now() + 60));
    assert_eq!(v.verify(&t).unwrap_err(), VerifyError::BadSignature);
    // tampered payload
    let good = sign_raw(&k, Algorithm::RS256, Some(&kid), &claims(now() + 60));
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut c = claims(now() + 60);
    c["access"][0]["actions"] = json!(["pull", "push", "delete"]);
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
    parts[1] = &forged;
    assert_eq!(v.verify(&parts.join(".")).unwrap_err(), VerifyError::BadSignature);
    // expired, audience, issuer, not yet valid, issued in the future
    assert_eq!(
        v.verify(&sign_raw(&k, Algorithm::RS256, Some(&kid), &claims(now() - 3600)))
            .unwrap_err(),
        VerifyError::Expired
    );
    let mut c = claims(now() + 60);
    c["aud"] = json!(["other", "another"]);
    assert_eq!(
        v.verify(&sign_raw(&k, Algorithm::RS256, Some(&kid), &c)).unwrap_err(),
        VerifyError::Audience
    );
    let mut c = claims(now() + 60);
    c["aud"] = json!(["other", SVC]);
    assert!(
        v.verify(&sign_raw(&k, Algorithm::RS256, Some(&kid), &c)).is_ok(),
        "aud as an array"
    );
    let mut c = claims(now() + 60);
    c["iss"] = json!("mallory");
    assert_eq!(
        v.verify(&sign_raw(&k, Algorithm::RS256, Some(&kid), &c)).unwrap_err(),
        VerifyError::Issuer
    );
    let mut c = claims(now() + 7200);
    c["nbf"] = json!(now() + 3600);
    assert_eq!(
        v.verify(&sign_raw(&k, Algorithm::RS256, Some(&kid), &c)).unwrap_err(),
        VerifyError::NotYetValid
    );
    let mut c = claims(now() + 7200);
    c["iat"] = json!(now() + 3600);
    c["nbf"] = json!(now() - 1);
    assert_eq!(
        v.verify(&sign_raw(&k, Algorithm::RS256, Some(&kid), &c)).unwrap_err(),
        VerifyError::IssuedInFuture
    );
    // garbage
    assert!(matches!(v.verify("a.b").unwrap_err(), VerifyError::Malformed(_)));
}

#[test]
fn jwks_alg_pin_and_key_kind_are_enforced() {
    let rsa = signer(Algorithm::RS256, KidFormat::Thumbprint, false);
    let mut jwk = rsa.jwk.clone();
    jwk.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS512);
    let mut set = KeySet::default();
    set.add_jwks(Path::new("jwks.json"), &json!({"keys": [jwk]}).to_string())
        .unwrap();
    let v = Verifier::new(ISS.into(), SVC.into(), set, Duration::from_secs(30));
    let t = sign_raw(&rsa, Algorithm::RS256, Some(&rsa.kid), &claims(now() + 60));
    assert!(matches!(v.verify(&t).unwrap_err(), VerifyError::AlgMismatch { .. }));
    // an EC token whose kid names an RSA key
    let ec = signer(Algorithm::ES256, KidFormat::Thumbprint, false);
    let v = verifier_for(&[&rsa]);
    let t = sign_raw(&ec, Algorithm::ES256, Some(&rsa.kid), &claims(now() + 60));
    assert!(matches!(v.verify(&t).unwrap_err(), VerifyError::AlgMismatch { .. }));
}

#[test]
fn root_bundle_by_libtrust_kid_thumbprint_and_x5c() {
    let (key_pem, cert_pem) = generate(Algorithm::RS256, "root", 1).unwrap();
    let mut set = KeySet::default();
    set.add_root_bundle(Path::new("bundle.pem"), cert_pem.as_bytes())
        .unwrap();
    let v = Verifier::new(ISS.into(), SVC.into(), set, Duration::from_secs(30));
    for kid in [KidFormat::Libtrust, KidFormat::Thumbprint] {
        let k = SigningKey::from_pem("k", key_pem.as_bytes(), None, kid).unwrap();
        let t = issuer(vec![k])
            .issue("alice", &[scope("repository:a:pull")], None)
            .unwrap();
        assert!(v.verify(&t.token).is_ok(), "{kid:?}");
    }
    // x5c with the certificate itself (what distribution 2.8 checks), and an unknown kid
    let k = SigningKey::from_pem(
        "k",
        key_pem.as_bytes(),
        Some(cert_pem.as_bytes()),
        KidFormat::Thumbprint,
    )
    .unwrap();
    assert!(k.x5c.is_some());
    let t = issuer(vec![k]).issue("alice", &[], None).unwrap();
    assert!(v.verify(&t.token).is_ok());
    // a self-signed certificate that is not in the bundle
    let (k2, c2) = generate(Algorithm::RS256, "stranger", 1).unwrap();
    let s = SigningKey::from_pem("s", k2.as_bytes(), Some(c2.as_bytes()), KidFormat::Thumbprint).unwrap();
    let t = issuer(vec![s]).issue("alice", &[], None).unwrap();
    assert!(matches!(v.verify(&t.token).unwrap_err(), VerifyError::X5c(m) if m.contains("untrusted")));
}

#[test]
fn rotation_and_refresh() {
    let old = signer(Algorithm::RS256, KidFormat::Thumbprint, false);
    let new = signer(Algorithm::ES256, KidFormat::Thumbprint, false);
    let v = verifier_for(&[&old, &new]);
    let (old_kid, new_kid) = (old.kid.clone(), new.kid.clone());
    let iss = issuer(vec![old, new]);
    let jwks = iss.jwks();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![old_kid.as_str(), new_kid.as_str()]);
    let bound = RefreshBinding {
        source: "htpasswd",
        credential: b"$2y$04$stored-hash-of-bob",
    };
    let t = iss.issue("bob", &[scope("repository:x:pull")], Some(bound)).unwrap();
    let header = jsonwebtoken::decode_header(&t.token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()), "the newest key signs");
    assert!(v.verify(&t.token).is_ok());
    let refresh = t.refresh_token.unwrap();
    let stored =
        |hash: &'static [u8]| move |user: &str, src: &str| (user == "bob" && src == "htpasswd").then(|| hash.to_vec());
    let ok = iss.refresh(&refresh, stored(b"$2y$04$stored-hash-of-bob")).unwrap();
    assert_eq!((ok.user.as_str(), ok.source.as_str()), ("bob", "htpasswd"));
    assert!(
        matches!(
            iss.refresh(&t.token, stored(b"$2y$04$stored-hash-of-bob")),
            Err(RefreshError::Invalid(_))
        ),
        "an access token is not a refresh token"
    );
    assert_eq!(
        iss.refresh(&refresh, stored(b"$2y$04$a-new-password-hash")),
        Err(RefreshError::Revoked),
        "a changed password revokes the refresh token"
    );
    assert_eq!(
        iss.refresh(&refresh, |_, _| None),
        Err(RefreshError::Revoked),
        "a removed user revokes it"
    );
    // The token carries neither the credential nor anything but a 128-bit keyed hash of it.
    let payload = refresh.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["src"], "htpasswd");
    assert_eq!(claims["cred"].as_str().unwrap().len(), 22, "{claims}");
    assert!(!payload.contains("stored-hash"));
    let exp = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(exp, 90 * 24 * 3600, "the default refresh lifetime");
    // Verified with the key that signed it, after a rotation too.
    let old2 = signer(Algorithm::RS256, KidFormat::Thumbprint, false);
    let iss2 = issuer(vec![old2]).with_refresh_lifetime(Duration::from_secs(3600));
    let t2 = iss2.issue("bob", &[], Some(bound)).unwrap().refresh_token.unwrap();
    assert!(
        iss.refresh(&t2, stored(b"$2y$04$stored-hash-of-bob")).is_err(),
        "another issuer's refresh token"
    );
    assert!(iss2.refresh(&t2, stored(b"$2y$04$stored-hash-of-bob")).is_ok());
    assert!(
        v.verify(&refresh).unwrap().access.is_empty(),
        "a refresh token grants nothing"
    );
}

#[test]
fn rs384_rs512_and_eddsa_verify() {
    // RSA key without an alg pin: RS384 and RS512 tokens verify too.
    let rsa = signer(Algorithm::RS256, KidFormat::Thumbprint, false);
    let mut jwk = rsa.jwk.clone();
    jwk.common.key_algorithm = None;
    let mut set = KeySet::default();
    set.add_jwks(Path::new("jwks.json"), &json!({"keys": [jwk]}).to_string())
        .unwrap();
    let v = Verifier::new(ISS.into(), SVC.into(), set, Duration::from_secs(30));
    for alg in [Algorithm::RS384, Algorithm::RS512] {
        let t = sign_raw(&rsa, alg, Some(&rsa.kid), &claims(now() + 60));
        assert!(v.verify(&t).is_ok(), "{alg:?}");
    }
    // Ed25519 key in a JWKS, EdDSA token.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
    let mut set = KeySet::default();
    set.add_jwks(
        Path::new("jwks.json"),
        &json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"}]}).to_string(),
    )
    .unwrap();
    let v = Verifier::new(ISS.into(), SVC.into(), set, Duration::from_secs(30));
    let enc = EncodingKey::from_ed_der(&kp.serialize_der());
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("ed".into());
    let t = jsonwebtoken::encode(&h, &claims(now() + 60), &enc).unwrap();
    let g = v.verify(&t).unwrap();
    assert!(g.allows("repository", "team/app", Action::Pull));
    // an RS256 token naming the Ed25519 key is refused
    let t = sign_raw(&rsa, Algorithm::RS256, Some("ed"), &claims(now() + 60));
    assert!(matches!(v.verify(&t).unwrap_err(), VerifyError::AlgMismatch { .. }));
}
