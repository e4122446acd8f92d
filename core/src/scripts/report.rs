//! `report.lua`: a worker's outcome for its claim (`POST /api/v1/task/{id}/outcome`).

use crate::scripts::call::Call;
use crate::scripts::drain::Ended;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{REPORT, Script};

/// Records `result` for the attempt `token` claimed of task `task_id`, if the caller may
/// report for its kind (`kinds`: `None` for any).
pub struct Report<'a> {
    pub task_id: &'a str,
    pub token: &'a str,
    pub result: Ended,
    /// The backend's `Retry-After` as the worker gave it, in ms (0 for none).
    pub retry_after_ms: i64,
    /// The worker's `detail` (JSON text).
    pub detail: Option<&'a str>,
    pub kinds: Option<&'a [String]>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Reported {
    Completed {
        at: i64,
    },
    /// Admitted again for another attempt, at this slot.
    Queued {
        slot: i64,
    },
    Failed {
        at: i64,
    },
    /// The token is not the task's open claim (it lapsed, was reported, or is another's).
    Stale,
    /// The caller may not report for the task's kind.
    Forbidden,
    Unknown,
}

impl Call for Report<'_> {
    type Output = Reported;

    fn script(&self) -> &'static Script {
        &REPORT
    }

    fn args(&self) -> Vec<String> {
        let kinds = self.kinds.map_or_else(String::new, |kinds| format!(",{},", kinds.join(",")));
        let word = match self.result {
            Ended::Completed => "completed",
            Ended::Retry => "retry",
            Ended::Failed => "failed",
        };
        vec![
            self.task_id.to_string(),
            self.token.to_string(),
            self.result.word().to_string(),
            word.to_string(),
            self.retry_after_ms.to_string(),
            self.detail.unwrap_or("").to_string(),
            kinds,
        ]
    }

    /// `[state, at]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Reported, Unexpected> {
        let (state, at) = (reply.text()?, reply.int()?);
        match state.as_str() {
            "completed" => Ok(Reported::Completed { at }),
            "queued" => Ok(Reported::Queued { slot: at }),
            "failed" => Ok(Reported::Failed { at }),
            "stale" => Ok(Reported::Stale),
            "forbidden" => Ok(Reported::Forbidden),
            "unknown" => Ok(Reported::Unknown),
            other => Err(reply.fail(format_args!("report answered {other:?} for task {}", self.task_id))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn every_state_and_the_arguments() {
        let kinds = ["mail".to_string(), "sms".to_string()];
        let call = Report {
            task_id: "t",
            token: "n.1",
            result: Ended::Retry,
            retry_after_ms: 2_000,
            detail: Some(r#"{"why":"busy"}"#),
            kinds: Some(&kinds),
        };
        assert_eq!(call.args(), ["t", "n.1", "retry", "retry", "2000", r#"{"why":"busy"}"#, ",mail,sms,"]);
        let any = Report { kinds: None, detail: None, result: Ended::Completed, ..call };
        assert_eq!(any.args(), ["t", "n.1", "ok", "completed", "2000", "", ""]);
        assert_eq!(read_reply(&call, &[text("completed"), Int(5)]), Ok(Reported::Completed { at: 5 }));
        assert_eq!(read_reply(&call, &[text("queued"), Int(6)]), Ok(Reported::Queued { slot: 6 }));
        assert_eq!(read_reply(&call, &[text("failed"), Int(7)]), Ok(Reported::Failed { at: 7 }));
        assert_eq!(read_reply(&call, &[text("stale"), Int(0)]), Ok(Reported::Stale));
        assert_eq!(read_reply(&call, &[text("forbidden"), Int(0)]), Ok(Reported::Forbidden));
        assert_eq!(read_reply(&call, &[text("unknown"), Int(0)]), Ok(Reported::Unknown));
        assert!(read_reply(&call, &[text("lost"), Int(0)]).is_err());
        assert!(read_reply(&call, &[text("stale")]).is_err());
    }
}
