//! `sweep.lua`: wakes the drainer if tasks wait and nobody leads (`GET /healthz`, and an
//! admission's handler after a wake-up nobody heard).

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{SWEEP, Script};

/// Wakes the drainer if tasks wait and nobody leads; a probe's 200 is counted.
pub struct Sweep {
    /// A liveness probe (`GET /healthz`), whose answer the script counts.
    pub probe: bool,
}

/// How a wake-up went (`wake_drainer` in lib.lua).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// None was needed (a drainer leads, or nothing waits), or one went out within 200 ms.
    Quiet,
    /// A tick went out and a replica's Redis trigger heard it.
    Heard,
    /// A tick went out and no replica had subscribed to hear it.
    Unheard,
}

impl Call for Sweep {
    type Output = Wake;

    fn script(&self) -> &'static Script {
        &SWEEP
    }

    fn args(&self) -> Vec<String> {
        vec![if self.probe { "1" } else { "0" }.to_string()]
    }

    /// `0`, `1` or `2`: `Wake`'s three, in order.
    fn parse(&self, reply: &mut Cursor) -> Result<Wake, Unexpected> {
        match reply.int()? {
            0 => Ok(Wake::Quiet),
            1 => Ok(Wake::Heard),
            2 => Ok(Wake::Unheard),
            n => Err(reply.fail(format_args!("a wake-up's outcome is 0, 1 or 2, not {n}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::*;

    #[test]
    fn how_the_wake_up_went() {
        let sweep = Sweep { probe: true };
        assert_eq!(read_reply(&sweep, &[Int(0)]), Ok(Wake::Quiet));
        assert_eq!(read_reply(&sweep, &[Int(1)]), Ok(Wake::Heard));
        assert_eq!(read_reply(&sweep, &[Int(2)]), Ok(Wake::Unheard));
        assert!(read_reply(&sweep, &[Int(3)]).is_err());
        assert!(read_reply(&sweep, &[]).is_err());
        assert!(read_reply(&sweep, &[Int(0), Int(0)]).is_err());
        assert_eq!((sweep.args(), Sweep { probe: false }.args()), (vec!["1".to_string()], vec!["0".to_string()]));
    }
}
