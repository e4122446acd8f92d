//! A script's reply as Redis gives it (nested arrays flattened, as Spin's Redis does), and a
//! cursor that reads it item by item, each read saying what it expected, and that must reach
//! the end: a reply with an item more or less than its script's contract is refused.

use std::fmt;

/// One item of a reply: what Spin's `RedisResult` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Status(String),
}

/// A reply that does not follow its script's contract: a bug, never the client's fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unexpected(pub String);

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unexpected {}

/// Reads a reply from its first item on.
pub struct Cursor<'r> {
    items: &'r [Reply],
    at: usize,
}

impl<'r> Cursor<'r> {
    pub fn new(items: &'r [Reply]) -> Self {
        Cursor { items, at: 0 }
    }

    /// The next item, which should be `expected`.
    fn next(&mut self, expected: &str) -> Result<&'r Reply, Unexpected> {
        let item = self
            .items
            .get(self.at)
            .ok_or_else(|| Unexpected(format!("item {}: expected {expected}, the reply ended", self.at)))?;
        self.at += 1;
        Ok(item)
    }

    /// An error about the item just read.
    pub fn fail(&self, what: impl fmt::Display) -> Unexpected {
        Unexpected(format!("item {}: {what}", self.at.saturating_sub(1)))
    }

    fn wrong(&self, expected: &str, found: &Reply) -> Unexpected {
        self.fail(format_args!("expected {expected}, found {found:?}"))
    }

    /// The next item's text, without reading it (`None` at the end or for another item).
    pub fn peek_bytes(&self) -> Option<&'r [u8]> {
        match self.items.get(self.at)? {
            Reply::Bytes(b) => Some(b),
            Reply::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// Text or a status.
    pub fn bytes(&mut self) -> Result<&'r [u8], Unexpected> {
        match self.next("text")? {
            Reply::Bytes(b) => Ok(b),
            Reply::Status(s) => Ok(s.as_bytes()),
            other => Err(self.wrong("text", other)),
        }
    }

    /// Text (bytes that are not UTF-8 are replaced, as a reply only ever echoes ours).
    pub fn text(&mut self) -> Result<String, Unexpected> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    /// Text, or nothing for nil (a hash field that is not set).
    pub fn optional(&mut self) -> Result<Option<&'r [u8]>, Unexpected> {
        match self.next("text or nil")? {
            Reply::Nil => Ok(None),
            Reply::Bytes(b) => Ok(Some(b)),
            Reply::Status(s) => Ok(Some(s.as_bytes())),
            other => Err(self.wrong("text or nil", other)),
        }
    }

    /// An integer, as Redis's integer or as its decimal text (Lua turns some into text).
    pub fn int(&mut self) -> Result<i64, Unexpected> {
        match self.next("an integer")? {
            Reply::Int(n) => Ok(*n),
            Reply::Bytes(b) => parse_int(b).ok_or_else(|| self.fail(format_args!("not an integer: {:?}", lossy(b)))),
            Reply::Status(s) => s.parse().map_err(|_| self.fail(format_args!("not an integer: {s:?}"))),
            other => Err(self.wrong("an integer", other)),
        }
    }

    /// A 0/1 flag.
    pub fn flag(&mut self) -> Result<bool, Unexpected> {
        match self.int()? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(self.fail(format_args!("expected a flag (0 or 1), found {n}"))),
        }
    }

    /// A count of the items or groups that follow; no more than the items left, so a
    /// reply cannot make its reader allocate for items it does not have.
    pub fn count(&mut self) -> Result<usize, Unexpected> {
        let n = self.int()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.items.len() - self.at => Ok(n),
            _ => Err(self.fail(format_args!("a count of {n} with {} items left", self.items.len() - self.at))),
        }
    }

    /// Whether every item was read (for a reply that ends with a run of items).
    pub fn at_end(&self) -> bool {
        self.at >= self.items.len()
    }

    /// The end of the reply: nothing may be left.
    pub fn finish(&self) -> Result<(), Unexpected> {
        match self.items.len().checked_sub(self.at) {
            Some(0) | None => Ok(()),
            Some(left) => Err(Unexpected(format!("item {}: {left} items left over", self.at))),
        }
    }
}

pub(crate) fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test replies: text items.
    pub fn text(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn typed_reads_in_order_then_the_end() {
        let items = [text("queued"), Reply::Int(4), text("-12"), Reply::Status("OK".into()), Reply::Nil, Reply::Int(1)];
        let mut cursor = Cursor::new(&items);
        assert_eq!(cursor.text().as_deref(), Ok("queued"));
        assert_eq!(cursor.int(), Ok(4));
        assert_eq!(cursor.int(), Ok(-12));
        assert_eq!(cursor.bytes(), Ok(&b"OK"[..]));
        assert_eq!(cursor.optional(), Ok(None));
        assert!(!cursor.at_end());
        assert_eq!(cursor.flag(), Ok(true));
        assert!(cursor.at_end());
        assert_eq!(cursor.finish(), Ok(()));
    }

    #[test]
    fn each_read_says_what_it_expected_at_which_item() {
        let items = [text("x"), Reply::Nil, Reply::Int(2)];
        let mut cursor = Cursor::new(&items);
        assert_eq!(cursor.int(), Err(Unexpected("item 0: not an integer: \"x\"".into())));
        assert_eq!(cursor.text(), Err(Unexpected("item 1: expected text, found Nil".into())));
        assert_eq!(cursor.flag(), Err(Unexpected("item 2: expected a flag (0 or 1), found 2".into())));
        assert_eq!(cursor.int(), Err(Unexpected("item 3: expected an integer, the reply ended".into())));
    }

    #[test]
    fn items_left_over_are_refused() {
        let items = [Reply::Int(1), Reply::Int(2)];
        let mut cursor = Cursor::new(&items);
        assert_eq!(cursor.int(), Ok(1));
        assert_eq!(cursor.finish(), Err(Unexpected("item 1: 1 items left over".into())));
    }

    #[test]
    fn counts_are_bounded_by_what_is_left() {
        let items = [Reply::Int(2), Reply::Int(7), Reply::Int(8)];
        assert_eq!(Cursor::new(&items).count(), Ok(2));
        let items = [Reply::Int(3), Reply::Int(7), Reply::Int(8)];
        assert!(Cursor::new(&items).count().is_err());
        assert!(Cursor::new(&[Reply::Int(-1)]).count().is_err());
        assert!(Cursor::new(&[Reply::Int(1)]).optional().is_err());
    }
}
