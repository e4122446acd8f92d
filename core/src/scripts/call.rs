//! One call of a script: the trait each script's type implements, and its reply read whole.

use crate::scripts::reply::{Cursor, Reply, Unexpected};
use crate::scripts::script::Script;

/// One call of a script: what it runs, its arguments, and how its reply reads.
pub trait Call {
    type Output;
    /// The script it runs.
    fn script(&self) -> &'static Script;
    /// Its own arguments (ARGV from 7, after the `Header`).
    fn args(&self) -> Vec<String>;
    /// Its reply, read from the first item; `read_reply` checks that it reached the end.
    fn parse(&self, reply: &mut Cursor) -> Result<Self::Output, Unexpected>;
}

/// `call`'s reply, read whole: an item more or less than its contract is refused.
pub fn read_reply<C: Call + ?Sized>(call: &C, reply: &[Reply]) -> Result<C::Output, Unexpected> {
    let mut cursor = Cursor::new(reply);
    let output = call.parse(&mut cursor)?;
    cursor.finish()?;
    Ok(output)
}
