//! The key path of `auth = api_key`: an `Authorization` header's bytes through the bearer
//! parser and the key's shape check. Never panics; accepts exactly `tk_<16 hex>_<64 hex>`
//! (lowercase), whose id is a key id and whose digest is 64 lowercase hex characters.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use task_core::credentials::{bearer_token, is_key_id, key_digest, parse_api_key};

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    // What the component's `auth::bearer` does with the header: visible ASCII, then the token.
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let Ok(value) = value.to_str() else { return };
    let Some(token) = bearer_token(value) else { return };
    let shaped = token
        .strip_prefix("tk_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(id, secret)| lower_hex(id, 16) && lower_hex(secret, 64));
    match parse_api_key(token) {
        Some(key) => {
            assert!(shaped, "{token:?} accepted");
            assert!(is_key_id(key.key_id) && token[3..].starts_with(key.key_id));
            let digest = key_digest(token);
            assert!(digest.len() == 64 && digest.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
        None => assert!(!shaped, "{token:?} refused"),
    }
});
