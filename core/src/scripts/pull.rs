//! `pull.lua`: a worker's claim of the due tasks of a pulled kind (`POST /api/v1/claims`).

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{PULL, Script};
use crate::scripts::shared::{Claim, claim};

/// Claims up to `max` tasks of `kind` that may start now; `nonce` (random) makes the claims'
/// tokens. `last`: the caller's wait is over, so this reply is the answer (the script then
/// counts its 200, as it does whenever it claims).
pub struct Pull<'a> {
    pub kind: &'a str,
    pub max: u32,
    pub nonce: &'a str,
    pub last: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Pulled {
    /// Redis's clock when the call ran.
    pub now: i64,
    /// Until the kind's soonest lane may start (0: more due now); `None` with none queued.
    pub next_in_ms: Option<i64>,
    pub claims: Vec<Claim>,
}

impl Call for Pull<'_> {
    type Output = Pulled;

    fn script(&self) -> &'static Script {
        &PULL
    }

    fn args(&self) -> Vec<String> {
        vec![self.kind.to_string(), self.max.to_string(), self.nonce.to_string(), u8::from(self.last).to_string()]
    }

    /// `[now, next_in (-1: none), n, claims×n]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Pulled, Unexpected> {
        let now = reply.int()?;
        let next_in_ms = Some(reply.int()?).filter(|ms| *ms >= 0);
        let n = reply.count()?;
        let claims = (0..n).map(|_| claim(reply)).collect::<Result<Vec<_>, _>>()?;
        if claims.iter().any(|c| c.token.is_none() || c.kind != self.kind) {
            return Err(reply.fail(format_args!("a claim of kind {} without its token or of another kind", self.kind)));
        }
        Ok(Pulled { now, next_in_ms, claims })
    }
}

#[cfg(test)]
mod tests {
    use super::super::drain::tests::a_claim;
    use super::super::read_reply;
    use super::super::reply::Reply::{self, Int};
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn claims_with_their_tokens() {
        let call = Pull { kind: "mail", max: 5, nonce: "n1", last: false };
        assert_eq!(call.args(), ["mail", "5", "n1", "0"]);
        assert_eq!(Pull { last: true, ..call }.args()[3], "1");
        let mut one = a_claim();
        one[8] = text("n1.1");
        let mut reply: Vec<Reply> = vec![Int(100), Int(0), Int(1)];
        reply.extend(one.clone());
        let pulled = read_reply(&call, &reply).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((pulled.now, pulled.next_in_ms, pulled.claims.len()), (100, Some(0), 1));
        assert_eq!(pulled.claims[0].token.as_deref(), Some("n1.1"));
        assert_eq!(pulled.claims[0].deadline, 23);
        assert_eq!(read_reply(&call, &[Int(100), Int(-1), Int(0)]).map(|p| p.next_in_ms), Ok(None));
        // A claim without a token is the drainer's, never a worker's; one short is cut.
        let mut tokenless: Vec<Reply> = vec![Int(100), Int(0), Int(1)];
        tokenless.extend(a_claim());
        assert!(read_reply(&call, &tokenless).is_err());
        assert!(read_reply(&call, &reply[..reply.len() - 1]).is_err());
        let other = Pull { kind: "sms", ..call };
        assert!(read_reply(&other, &reply).is_err());
    }
}
