//! `metrics.lua`: every counter behind `/metrics`.

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{METRICS, Script};

/// Every counter of the metrics hash, and the number of lanes with queued tasks.
pub struct Metrics;

impl Call for Metrics {
    /// (counter, value) pairs, `waiting_users` last.
    type Output = Vec<(String, i64)>;

    fn script(&self) -> &'static Script {
        &METRICS
    }

    fn args(&self) -> Vec<String> {
        Vec::new()
    }

    /// `[field, value, …, 'waiting_users', n]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Vec<(String, i64)>, Unexpected> {
        let mut counters = Vec::new();
        while !reply.at_end() {
            counters.push((reply.text()?, reply.int()?));
        }
        Ok(counters)
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn pairs_to_the_end() {
        let reply = [text("queued"), text("3"), text("waiting_users"), text("1")];
        let expected = vec![("queued".to_string(), 3), ("waiting_users".to_string(), 1)];
        assert_eq!(read_reply(&Metrics, &reply), Ok(expected));
        // A field without its value.
        assert!(read_reply(&Metrics, &reply[..3]).is_err());
    }
}
