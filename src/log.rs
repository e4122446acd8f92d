//! The task log's second copy: each completion's seed-format line on the component's stdout
//! (which `spin up` 4.1 shows on its stderr and keeps under `.spin/logs/`). The log stream in Redis, written by the same script
//! that ran the task, is the source of truth.

use crate::queue::Completion;

/// Prints each completion's seed-format line (`<user_id>-task completed at-<epoch ms>`).
pub fn print_log(ran: &[Completion]) {
    for completion in ran {
        println!("{}", completion.line());
    }
}
