//! A user's id, checked once where it comes in (a task's body, a path, a query, a token's
//! claim, an API key's record): `UserId::parse` is the one place the rule is, and a `UserId`
//! is an id that passed it. Each entry point words its own refusal (the messages differ by
//! where the id came from), from `NotUserId`.

use serde::Serialize;
use std::fmt;
use std::ops::Deref;

/// Longest user id, in characters, wherever it comes from (body, path, query, token).
pub const MAX_USER_ID_CHARS: usize = 128;

/// A user id: 1 to `MAX_USER_ID_CHARS` characters, any of them. Read it as a `&str`
/// (`as_str`, or through `Deref`); it serialises as that string.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

/// Why a text is not a user id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotUserId {
    Empty,
    /// Over `MAX_USER_ID_CHARS` characters.
    TooLong,
}

impl UserId {
    /// The id, if `id` is 1 to `MAX_USER_ID_CHARS` characters.
    pub fn parse(id: impl Into<String>) -> Result<UserId, NotUserId> {
        let id = id.into();
        match id.chars().count() {
            0 => Err(NotUserId::Empty),
            n if n > MAX_USER_ID_CHARS => Err(NotUserId::TooLong),
            _ => Ok(UserId(id)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for UserId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// As its text's (`"alice"`), so messages that quote an id read as they did with a `String`.
impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_128_characters_of_anything() {
        assert_eq!(UserId::parse(""), Err(NotUserId::Empty));
        assert_eq!(UserId::parse("a").map(UserId::into_string), Ok("a".to_string()));
        // Characters, not bytes: 128 four-byte characters are an id, 129 are not.
        let emoji = "😀".repeat(MAX_USER_ID_CHARS);
        assert_eq!(UserId::parse(emoji.as_str()).as_deref(), Ok(emoji.as_str()));
        assert_eq!(UserId::parse(format!("{emoji}x")), Err(NotUserId::TooLong));
        assert_eq!(UserId::parse("a\0b\n ").as_deref(), Ok("a\0b\n "));
    }

    #[test]
    fn it_serialises_and_shows_as_its_text() {
        let id = UserId::parse("a\"b").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(serde_json::to_string(&id).ok().as_deref(), Some(r#""a\"b""#));
        assert_eq!(id.to_string(), "a\"b");
        assert_eq!(id.as_str(), "a\"b");
        assert_eq!(format!("{id:?}"), r#""a\"b""#);
    }
}
