//! `count_status.lua`: counts an HTTP answer that no script counted.

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{COUNT_STATUS, Script};

pub struct CountStatus {
    pub status: u16,
}

impl Call for CountStatus {
    type Output = ();

    fn script(&self) -> &'static Script {
        &COUNT_STATUS
    }

    fn args(&self) -> Vec<String> {
        vec![self.status.to_string()]
    }

    /// `0`.
    fn parse(&self, reply: &mut Cursor) -> Result<(), Unexpected> {
        reply.int().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::*;

    #[test]
    fn it_answers_one_item() {
        let call = CountStatus { status: 503 };
        assert_eq!(call.args(), ["503"]);
        assert_eq!(read_reply(&call, &[Int(0)]), Ok(()));
        assert!(read_reply(&call, &[]).is_err());
        assert!(read_reply(&call, &[Int(0), Int(0)]).is_err());
    }
}
