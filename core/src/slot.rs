//! The schedule rule (the product's promise, for any policy's windows), pure: no I/O, no
//! clock. Times are epoch milliseconds.
//!
//! A lane's tasks are numbered 1, 2, 3, … in admission order; task *n* costs `c[n]` units
//! and its policy is a list of windows, each `q` units per `w` ms. Then
//!
//! ```text
//! slot[n] = max(arrival[n], slot[n-1], and for each window (q, w): slot[j] + w)
//! ```
//!
//! where *j* is the newest earlier task with `c[j] + … + c[n-1] + c[n] > q` (no such *j*: no
//! term). It is the earliest FIFO schedule in which every rolling window of length `w` holds at
//! most `q` units: no fixed windows, no token buckets. With cost 1 everywhere and the default
//! windows (1 per 1 s, 20 per 60 s) this is `max(arrival, slot[n-1] + 1000, slot[n-20] + 60000)`.
//!
//! The executor applies the same rule to the lane's *completion* times when it claims a task
//! (`earliest_start` in `lib.lua`), so a task that ran late pushes the next one back.

/// One window of a policy: at most `quota` units in any `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub quota: u32,
    pub window_ms: i64,
}

/// An earlier task of the lane: its slot (or completion time) and its cost in units.
pub type Spent = (i64, u32);

/// The earliest slot for a task of `cost` units arriving at `arrival`, given the lane's
/// earlier tasks (`recent`, oldest first, in admission order; only the newest few matter).
pub fn next_slot(windows: &[Window], recent: &[Spent], arrival: i64, cost: u32) -> i64 {
    let mut slot = recent.last().map_or(arrival, |&(last, _)| arrival.max(last));
    for window in windows {
        if let Some(at) = newest_over(window, recent, cost) {
            slot = slot.max(at + window.window_ms);
        }
    }
    slot
}

/// The slot of the newest earlier task *j* with `c[j] + … + c[n-1] + cost > quota`.
fn newest_over(window: &Window, recent: &[Spent], cost: u32) -> Option<i64> {
    let mut units = u64::from(cost);
    for &(at, spent) in recent.iter().rev() {
        units += u64::from(spent);
        if units > u64::from(window.quota) {
            return Some(at);
        }
    }
    None
}

/// What is left of one window at `now`, for the IETF `RateLimit` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left {
    pub window: Window,
    /// Units a task starting now could still use.
    pub remaining: u32,
    /// Seconds until more units are available (the task that frees the next one leaves
    /// the window); `None` when nothing in the window is used.
    pub reset_s: Option<i64>,
}

/// What is left of each window at `now`, after the tasks in `recent` (oldest first).
/// "Remaining" counts units a task could still use at once; a queued task holds its units in
/// the window it will run in, so future slots count too.
pub fn remaining(windows: &[Window], recent: &[Spent], now: i64) -> Vec<Left> {
    windows
        .iter()
        .map(|&window| {
            let counted: Vec<Spent> = recent.iter().copied().filter(|(at, _)| at + window.window_ms > now).collect();
            let used: u64 = counted.iter().map(|&(_, c)| u64::from(c)).sum();
            let remaining = u64::from(window.quota).saturating_sub(used) as u32;
            // The window has room for one more unit once every task up to the newest one
            // whose units, with those after it, fill the quota has left it; below the quota,
            // the oldest one leaving frees a unit.
            let mut units = 0u64;
            let mut frees = counted.first().map(|&(at, _)| at);
            for &(at, c) in counted.iter().rev() {
                units += u64::from(c);
                if units >= u64::from(window.quota) {
                    frees = Some(at);
                    break;
                }
            }
            let reset_s = frees.map(|at| ((at + window.window_ms - now).max(0) + 999) / 1000);
            Left { window, remaining, reset_s }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::XorShift;

    const SECOND: Window = Window { quota: 1, window_ms: 1_000 };
    const MINUTE: Window = Window { quota: 20, window_ms: 60_000 };
    const DEFAULT: [Window; 2] = [SECOND, MINUTE];

    /// Slots for tasks arriving at `arrivals` with `costs`, one by one.
    fn schedule(windows: &[Window], arrivals: &[i64], costs: &[u32]) -> Vec<i64> {
        let mut recent: Vec<Spent> = Vec::new();
        for (&arrival, &cost) in arrivals.iter().zip(costs) {
            let slot = next_slot(windows, &recent, arrival, cost);
            recent.push((slot, cost));
        }
        recent.into_iter().map(|(slot, _)| slot).collect()
    }

    /// The default policy (1/s, 20/min): 100 requests at t=0 run at 0..19 s, 60..79 s, 120..139 s, …, the 100th at 259 s.
    #[test]
    fn hundred_requests_at_once_follow_the_spec_example() {
        let slots = schedule(&DEFAULT, &[0; 100], &[1; 100]);
        for (i, slot) in slots.iter().enumerate() {
            let minute = (i / 20) as i64;
            let second = (i % 20) as i64;
            assert_eq!(*slot, minute * 60_000 + second * 1_000, "task {}", i + 1);
        }
        assert_eq!(slots[99], 259_000);
    }

    #[test]
    fn a_lone_task_runs_on_arrival() {
        assert_eq!(next_slot(&DEFAULT, &[], 1234, 1), 1234);
        assert_eq!(next_slot(&DEFAULT, &[(0, 1)], 5_000, 1), 5_000);
    }

    #[test]
    fn no_windows_no_limit_and_one_window_alone() {
        assert_eq!(schedule(&[], &[7; 5], &[1; 5]), vec![7; 5]);
        let minute_only = [Window { quota: 2, window_ms: 60_000 }];
        assert_eq!(schedule(&minute_only, &[0; 4], &[1; 4]), vec![0, 0, 60_000, 60_000]);
    }

    /// With weights: 5 units per 10 s; tasks of 2, 2, 2, 1, 3 units at once run at 0,
    /// 0, 10 s (the third would make 6), 10 s, 20 s (2 + 1 + 3 > 5 counts back to the third).
    #[test]
    fn weighted_tasks_count_units() {
        let five_per_ten = [Window { quota: 5, window_ms: 10_000 }];
        assert_eq!(schedule(&five_per_ten, &[0; 5], &[2, 2, 2, 1, 3]), vec![0, 0, 10_000, 10_000, 20_000]);
        // A task costing the whole quota waits for the window to empty, and the next waits
        // for it.
        assert_eq!(schedule(&five_per_ten, &[0; 3], &[1, 5, 1]), vec![0, 10_000, 20_000]);
    }

    /// Units of every task in `(slot[n] - w, slot[n]]`, task n's own included, for each n
    /// (brute force over all earlier tasks).
    fn worst_window(slots: &[i64], costs: &[u32], n: usize, window: &Window) -> u64 {
        (0..=n).filter(|&j| slots[j] > slots[n] - window.window_ms).map(|j| u64::from(costs[j])).sum()
    }

    /// Random policies of 1–3 windows, costs up to the smallest quota and arrival
    /// sequences: no window ever holds more than its quota, the schedule is FIFO, no task
    /// starts before it arrives, and each slot is the earliest the windows allow (one
    /// millisecond earlier would overfill a window).
    #[test]
    fn random_policies_and_costs_keep_every_window_and_are_earliest() {
        let lengths = [1_000, 2_000, 5_000, 10_000, 60_000];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut delayed = 0;
        for case in 0..400 {
            let windows: Vec<Window> = (0..1 + rng.next(3))
                .map(|_| Window { quota: 1 + rng.next(12) as u32, window_ms: lengths[rng.next(5) as usize] })
                .collect();
            let max_cost = windows.iter().map(|w| w.quota).min().unwrap_or(1);
            let mut t = 0;
            let arrivals: Vec<i64> = (0..1 + rng.next(60))
                .map(|_| {
                    t += rng.next(4_000) as i64 * (rng.next(2) as i64);
                    t
                })
                .collect();
            let costs: Vec<u32> = arrivals.iter().map(|_| 1 + rng.next(u64::from(max_cost)) as u32).collect();
            let slots = schedule(&windows, &arrivals, &costs);
            for n in 0..slots.len() {
                for window in &windows {
                    assert!(
                        worst_window(&slots, &costs, n, window) <= u64::from(window.quota),
                        "case {case}: task {n} overfills {window:?}"
                    );
                }
                assert!(slots[n] >= arrivals[n], "case {case}: before arrival");
                let floor = if n > 0 { arrivals[n].max(slots[n - 1]) } else { arrivals[n] };
                assert!(slots[n] >= floor, "case {case}: not FIFO");
                if slots[n] > floor {
                    delayed += 1;
                    let mut earlier = slots[..=n].to_vec();
                    earlier[n] -= 1;
                    let over = windows.iter().any(|w| worst_window(&earlier, &costs, n, w) > u64::from(w.quota));
                    assert!(over, "case {case}: slot {n} could have been earlier");
                }
            }
        }
        assert!(delayed > 1_000, "the cases do reach the windows ({delayed} delayed)");
    }

    fn left(quota: u32, window_ms: i64, remaining: u32, reset_s: Option<i64>) -> Left {
        Left { window: Window { quota, window_ms }, remaining, reset_s }
    }

    #[test]
    fn remaining_counts_what_is_left_of_each_window() {
        // One task just took the slot at 10_000: the burst window is used up for 1 s, the
        // minute window has 19 left and gets the used one back in 60 s.
        let got = remaining(&DEFAULT, &[(10_000, 1)], 10_000);
        assert_eq!(got, vec![left(1, 1_000, 0, Some(1)), left(20, 60_000, 19, Some(60))]);
        // Twenty slots from 0 to 19 s, asked at 19.5 s: the minute window reopens at 60 s.
        let slots: Vec<Spent> = (0..20).map(|i| (i * 1_000, 1)).collect();
        assert_eq!(remaining(&DEFAULT, &slots, 19_500)[1], left(20, 60_000, 0, Some(41)));
        // Two more queued (slots 60 s and 61 s): room again once the slot at 2 s leaves.
        let queued: Vec<Spent> = slots.iter().copied().chain([(60_000, 1), (61_000, 1)]).collect();
        assert_eq!(remaining(&DEFAULT, &queued, 19_500)[1], left(20, 60_000, 0, Some(43)));
        // Nothing used: the whole quota is left and nothing is to come back.
        assert_eq!(remaining(&DEFAULT, &[(0, 1)], 61_000), vec![left(1, 1_000, 1, None), left(20, 60_000, 20, None)]);
        // Units: 3 of 5 used by one task; a 4-unit task then a 2-unit one fill it past the quota.
        let five = [Window { quota: 5, window_ms: 10_000 }];
        assert_eq!(remaining(&five, &[(0, 3)], 1_000), vec![left(5, 10_000, 2, Some(9))]);
        assert_eq!(remaining(&five, &[(0, 4), (0, 2)], 1_000), vec![left(5, 10_000, 0, Some(9))]);
    }
}
