//! `settle.lua`: the outcomes of attempts that admissions started, recorded by the HTTP
//! handler that made them.

use crate::scripts::call::Call;
use crate::scripts::drain::Outcome;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{SETTLE, Script};
use crate::scripts::shared::{Completion, completions};

/// Records `outcomes`; answers the tasks they completed.
pub struct Settle<'a> {
    pub outcomes: &'a [Outcome],
}

impl Call for Settle<'_> {
    type Output = Vec<Completion>;

    fn script(&self) -> &'static Script {
        &SETTLE
    }

    fn args(&self) -> Vec<String> {
        self.outcomes.iter().flat_map(Outcome::args).collect()
    }

    /// Completions, 4 items each.
    fn parse(&self, reply: &mut Cursor) -> Result<Vec<Completion>, Unexpected> {
        completions(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::super::drain::Ended;
    use super::super::read_reply;
    use super::super::shared::tests::completion;
    use super::*;

    #[test]
    fn settle_sends_the_outcomes_and_reads_the_completions() {
        let outcomes = [Outcome {
            task_id: "t1".into(),
            attempt: 1,
            result: Ended::Completed,
            status: "200".into(),
            duration_ms: Some(100),
            retry_after_ms: 0,
        }];
        let call = Settle { outcomes: &outcomes };
        assert_eq!(call.args(), ["t1", "1", "ok", "200", "100", "0"]);
        let ran = read_reply(&call, &completion("t1", "ann", 10, 111));
        assert!(matches!(ran.as_deref(), Ok([done]) if done.task_id == "t1" && done.completed_at == 111));
        assert!(read_reply(&call, &completion("t1", "ann", 10, 111)[..3]).is_err());
    }
}
