//! The JWT path of `auth = jwt`: an `Authorization` header's bytes through the bearer parser
//! and the verifier (an HS256 secret and the test RSA and P-256 keys). Never panics; whatever
//! it accepts names a user of 1–128 characters, and a refusal is fixed text that never
//! repeats a token.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use task_core::credentials::{JwtSettings, JwtVerifier, bearer_token};

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let public_keys = concat!(
            include_str!("../../runtime-tests/fixtures/jwt/rsa-public.pem"),
            include_str!("../../runtime-tests/fixtures/jwt/ec-public.pem")
        );
        let settings = JwtSettings {
            hs256_secret: "a-fuzz-secret-of-at-least-32-bytes!",
            public_keys,
            issuer: "https://issuer.test",
            audience: "task-api",
            user_claim: "sub",
        };
        JwtVerifier::new(&settings).unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    // What the component's `auth::bearer` does with the header: visible ASCII, then the token.
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let Ok(value) = value.to_str() else { return };
    let Some(token) = bearer_token(value) else { return };
    match verifier().verify(token) {
        Ok(user) => assert!((1..=128).contains(&user.chars().count()), "{user:?}"),
        // Every reason is fixed text (with at most an algorithm or claim name) and has no '.',
        // so no JWT-shaped text (two dots) can be repeated in it. A dot-free token may
        // coincide with a word of that text, which repeats nothing of the caller's.
        Err(why) => {
            assert!(!why.contains('.'), "{why:?} holds more than fixed text");
            assert!(!token.contains('.') || !why.contains(token), "{why:?} repeats the token");
        }
    }
});
