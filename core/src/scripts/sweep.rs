//! `sweep.lua`: wakes the drainer if tasks wait and nobody leads (`GET /healthz`).

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{SWEEP, Script};

/// Wakes the drainer if tasks wait and nobody leads, and counts the probe's 200.
pub struct Sweep;

impl Call for Sweep {
    /// Whether it published a tick.
    type Output = bool;

    fn script(&self) -> &'static Script {
        &SWEEP
    }

    fn args(&self) -> Vec<String> {
        Vec::new()
    }

    /// `1` if it published a tick, else `0`.
    fn parse(&self, reply: &mut Cursor) -> Result<bool, Unexpected> {
        reply.flag()
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::*;

    #[test]
    fn one_flag() {
        assert_eq!(read_reply(&Sweep, &[Int(1)]), Ok(true));
        assert_eq!(read_reply(&Sweep, &[Int(0)]), Ok(false));
        assert!(read_reply(&Sweep, &[]).is_err());
        assert!(read_reply(&Sweep, &[Int(0), Int(0)]).is_err());
    }
}
