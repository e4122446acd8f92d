//! The schedule rule (SPEC §1), pure: no I/O, no clock. Times are epoch milliseconds.
//!
//! For one user, number the accepted tasks 1, 2, 3, … in admission order. Task *n* gets
//!
//! ```text
//! slot[n] = max(arrival[n], slot[n - per_second] + 1 s, slot[n - per_minute] + 60 s)
//! ```
//!
//! (terms with an index below 1 are left out; with the default limits this is
//! `max(arrival, slot[n-1] + 1000, slot[n-20] + 60000)`). It is the earliest FIFO schedule in
//! which every 1-second window holds at most `per_second` tasks and every rolling 60-second
//! window at most `per_minute`: no fixed windows, no token buckets. A limit of 0 switches that
//! window off.
//!
//! The executor applies the same rule to the user's *completion* times when it claims a task
//! (see `queue.rs`, `earliest_start`), so a task that ran late pushes the next one back.

/// Length of the short window, in milliseconds.
pub const SECOND_MS: i64 = 1_000;
/// Length of the rolling window, in milliseconds.
pub const MINUTE_MS: i64 = 60_000;

/// How many tasks each window admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_second: u32,
    pub per_minute: u32,
}

impl Limits {
    /// The two windows as `(name, quota, window_ms)`, in the order the rate-limit headers use.
    pub fn windows(self) -> [(&'static str, u32, i64); 2] {
        [("burst", self.per_second, SECOND_MS), ("minute", self.per_minute, MINUTE_MS)]
    }

    /// How many of a user's most recent slots the rule needs to see.
    pub fn history(self) -> usize {
        self.per_second.max(self.per_minute) as usize
    }
}

/// The earliest slot for a task arriving at `arrival`, given the user's earlier slots
/// (`recent`, oldest first; only the last `limits.history()` matter).
pub fn next_slot(limits: Limits, recent: &[i64], arrival: i64) -> i64 {
    let mut slot = arrival;
    for (_, quota, window_ms) in limits.windows() {
        let quota = quota as usize;
        if quota > 0 && recent.len() >= quota {
            slot = slot.max(recent[recent.len() - quota] + window_ms);
        }
    }
    slot
}

/// What is left of each window at `now`, after the slots in `recent` (oldest first):
/// `(name, quota, remaining, seconds until more quota is available)`, for the IETF
/// `RateLimit` field. "Remaining" counts tasks that would still start at once; the seconds
/// run until the slot that frees the next unit leaves the window (`None` when nothing in the
/// window is used, so there is no more to come).
pub fn remaining(limits: Limits, recent: &[i64], now: i64) -> Vec<(&'static str, u32, u32, Option<i64>)> {
    limits
        .windows()
        .into_iter()
        .filter(|(_, quota, _)| *quota > 0)
        .map(|(name, quota, window_ms)| {
            // Slots still inside the window that ends at `now`, plus every future slot: a
            // queued task holds its place in the window it will run in.
            let counted: Vec<i64> = recent.iter().copied().filter(|s| s + window_ms > now).collect();
            let used = counted.len().min(quota as usize) as u32;
            // With fewer slots than the quota the oldest frees a unit; with more (queued
            // tasks), the window has room once all but quota - 1 of them have left it.
            let frees = counted.get(counted.len().saturating_sub(quota as usize)).copied();
            let reset_s = frees.map(|slot| ((slot + window_ms - now).max(0) + 999) / 1000);
            (name, quota, quota - used, reset_s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::XorShift;

    const DEFAULT: Limits = Limits { per_second: 1, per_minute: 20 };

    fn schedule(limits: Limits, arrivals: &[i64]) -> Vec<i64> {
        let mut slots = Vec::new();
        for &arrival in arrivals {
            let slot = next_slot(limits, &slots, arrival);
            slots.push(slot);
        }
        slots
    }

    /// SPEC §1: 100 requests at t=0 run at 0..19 s, 60..79 s, 120..139 s, …, the 100th at 259 s.
    #[test]
    fn hundred_requests_at_once_follow_the_spec_example() {
        let slots = schedule(DEFAULT, &[0; 100]);
        for (i, slot) in slots.iter().enumerate() {
            let minute = (i / 20) as i64;
            let second = (i % 20) as i64;
            assert_eq!(*slot, minute * 60_000 + second * 1_000, "task {}", i + 1);
        }
        assert_eq!(slots[99], 259_000);
    }

    #[test]
    fn a_lone_task_runs_on_arrival() {
        assert_eq!(next_slot(DEFAULT, &[], 1234), 1234);
        assert_eq!(next_slot(DEFAULT, &[0], 5_000), 5_000);
    }

    #[test]
    fn zero_switches_a_window_off() {
        let off = Limits { per_second: 0, per_minute: 0 };
        assert_eq!(schedule(off, &[7; 5]), vec![7; 5]);
        let minute_only = Limits { per_second: 0, per_minute: 2 };
        assert_eq!(schedule(minute_only, &[0; 4]), vec![0, 0, 60_000, 60_000]);
    }

    /// Brute force: count tasks in every window that starts at a slot.
    fn max_in_window(slots: &[i64], window_ms: i64) -> usize {
        slots
            .iter()
            .map(|&start| slots.iter().filter(|&&s| s >= start && s < start + window_ms).count())
            .max()
            .unwrap_or(0)
    }

    /// Random arrival sequences: the windows are never over quota, the schedule is FIFO, no
    /// task starts before it arrives, and each slot is the earliest the windows allow (one
    /// millisecond earlier would overfill a window).
    #[test]
    fn random_arrivals_keep_both_windows_and_are_earliest() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for case in 0..300 {
            let limits = Limits {
                per_second: 1 + rng.next(3) as u32,
                per_minute: 1 + rng.next(25) as u32,
            };
            let mut t = 0;
            let arrivals: Vec<i64> = (0..1 + rng.next(80))
                .map(|_| {
                    t += rng.next(4_000) as i64 * (rng.next(2) as i64);
                    t
                })
                .collect();
            let slots = schedule(limits, &arrivals);
            assert!(max_in_window(&slots, SECOND_MS) <= limits.per_second as usize, "case {case}");
            assert!(max_in_window(&slots, MINUTE_MS) <= limits.per_minute as usize, "case {case}");
            for i in 0..slots.len() {
                assert!(slots[i] >= arrivals[i], "case {case}: before arrival");
                if i > 0 {
                    assert!(slots[i] >= slots[i - 1], "case {case}: not FIFO");
                }
                if slots[i] > arrivals[i] {
                    let mut earlier = slots[..=i].to_vec();
                    earlier[i] -= 1;
                    let over = max_in_window(&earlier, SECOND_MS) > limits.per_second as usize
                        || max_in_window(&earlier, MINUTE_MS) > limits.per_minute as usize
                        || (i > 0 && earlier[i] < earlier[i - 1]);
                    assert!(over, "case {case}: slot {i} could have been earlier");
                }
            }
        }
    }

    #[test]
    fn remaining_counts_what_is_left_of_each_window() {
        // One task just took the slot at 10_000: the burst window is used up for 1 s, the
        // minute window has 19 left and gets the used one back in 60 s.
        let left = remaining(DEFAULT, &[10_000], 10_000);
        assert_eq!(left, vec![("burst", 1, 0, Some(1)), ("minute", 20, 19, Some(60))]);
        // Twenty slots from 0 to 19 s, asked at 19.5 s: the minute window reopens at 60 s.
        let slots: Vec<i64> = (0..20).map(|i| i * 1_000).collect();
        let left = remaining(DEFAULT, &slots, 19_500);
        assert_eq!(left[1], ("minute", 20, 0, Some(41)));
        // Two more queued (slots 60 s and 61 s): room again once the slot at 2 s leaves.
        let queued: Vec<i64> = slots.iter().copied().chain([60_000, 61_000]).collect();
        assert_eq!(remaining(DEFAULT, &queued, 19_500)[1], ("minute", 20, 0, Some(43)));
        // Nothing used: the whole quota is left and nothing is to come back.
        assert_eq!(remaining(DEFAULT, &[0], 61_000), vec![("burst", 1, 1, None), ("minute", 20, 20, None)]);
    }
}
