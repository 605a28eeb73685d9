//! Bearer token verification against a key set: never panics, and accepts nothing that was
//! not signed by the configured key (the fuzzer has no key, so every input is refused).
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

use berth_auth::token::{KeySet, KidFormat, SigningKey, Verifier};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let (key, cert) =
            berth_auth::token::signing::generate(jsonwebtoken::Algorithm::ES256, "fuzz", 1).expect("key");
        let signing =
            SigningKey::from_pem("fuzz", key.as_bytes(), Some(cert.as_bytes()), KidFormat::Thumbprint).expect("pem");
        let mut keys = KeySet::default();
        signing.add_to(&mut keys).expect("add");
        Verifier::new("issuer".into(), "service".into(), keys, Duration::from_secs(60))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    assert!(verifier().verify_uncached(token).is_err(), "an unsigned token was accepted: {token}");
});
