//! Ids from the path and query: a task id (`/api/v1/task/{id}`), a user id
//! (`/api/v1/users/{id}`, percent-encoded) and `percent_decode` in both modes (path, and
//! query where `+` is a space). Nothing panics; an accepted id is what the keys expect; and a
//! decoded value, encoded again, decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use task_core::keys::{Keys, TASK_ID_LEN, UserKey, is_task_id};
use task_core::request::{decode_user_id, percent_decode};
use task_core::user::MAX_USER_ID_CHARS;

/// Every byte but the unreserved ones as `%XX`: valid input to either decoding mode.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // The host hands the component the path as text.
    let Ok(text) = std::str::from_utf8(data) else { return };

    if is_task_id(text) {
        assert_eq!(text.len(), TASK_ID_LEN);
        assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{text:?}");
        assert_eq!(Keys::new("taskq:", "task_log").task(text), format!("taskq:t:{text}"));
    }

    if let Some(id) = decode_user_id(text) {
        assert!((1..=MAX_USER_ID_CHARS).contains(&id.chars().count()), "{text:?} -> {id:?}");
        let key = UserKey::new(&id).0;
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{id:?} -> {key}");
        assert_eq!(decode_user_id(&encode(&id)).as_ref(), Some(&id));
    }

    for plus_is_space in [false, true] {
        let Some(decoded) = percent_decode(text, plus_is_space) else { continue };
        assert_eq!(percent_decode(&encode(&decoded), plus_is_space).as_ref(), Some(&decoded), "{text:?}");
        // Without escapes (or, in the query, a +) the text is the value.
        if !(text.contains('%') || plus_is_space && text.contains('+')) {
            assert_eq!(decoded, text);
        }
    }
});
