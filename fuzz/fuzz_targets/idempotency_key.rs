//! The Idempotency-Key header's bytes: the check never panics, accepts exactly 1–128 visible
//! ASCII characters, keeps them as sent, and the key it names is safe in Redis.
#![no_main]

use libfuzzer_sys::fuzz_target;
use task_core::keys::{Keys, UserKey};
use task_core::request::{MAX_IDEMPOTENCY_KEY, check_idempotency_key};

fuzz_target!(|data: &[u8]| {
    let visible =
        !data.is_empty() && data.len() <= MAX_IDEMPOTENCY_KEY && data.iter().all(|b| (0x21..=0x7e).contains(b));
    match check_idempotency_key(data) {
        Ok(key) => {
            assert!(visible, "{data:?} accepted");
            assert_eq!(key.as_bytes(), data);
            let stored = Keys::new("taskq:", "task_log").idempotency(&UserKey::new("u"), &key);
            let encoded = stored.strip_prefix("taskq:idem:u:").unwrap_or_else(|| panic!("{stored}"));
            assert!(!encoded.contains([':', '*', '{', '}', ' ']), "{stored}");
        }
        Err(_) => assert!(!visible, "{data:?} refused"),
    }
});
