//! What a request may carry, checked before anything is stored: the user-id rule, and (as
//! they move here from the HTTP layer) the body and header parsers.

/// Longest user id, in characters, wherever it comes from (body, path, query, token).
pub const MAX_USER_ID_CHARS: usize = 128;

/// A user id's one rule wherever it comes from (body, path, query, token): 1–128 characters.
pub fn is_user_id(id: &str) -> bool {
    (1..=MAX_USER_ID_CHARS).contains(&id.chars().count())
}
