//! What every script gets first (ARGV[1..6], read by `configure` in `lib.lua`).

use crate::keys::Keys;

/// Completed and cancelled task records are kept this long for `GET /api/v1/task/{id}`.
pub const TASK_TTL_MS: i64 = 24 * 3_600_000;

/// The shared header: key prefix, log key, task record lifetime, the default policy, and
/// what a lane's completion history keeps.
pub struct Header<'a> {
    pub keys: &'a Keys,
    /// The policy of a task whose record names none (`Policy::spec` of the built-in tier's
    /// `default` kind).
    pub default_spec: &'a str,
    /// The largest quota of any policy (entries) and its longest window (ms).
    pub history: u32,
    pub history_ms: i64,
}

impl Header<'_> {
    /// ARGV[1..6], in `configure`'s order.
    pub fn argv(&self) -> [String; 6] {
        [
            self.keys.prefix().to_string(),
            self.keys.log().to_string(),
            TASK_TTL_MS.to_string(),
            self.default_spec.to_string(),
            self.history.to_string(),
            self.history_ms.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_configures_order() {
        let keys = Keys::new("taskq:", "task_log");
        let header = Header { keys: &keys, default_spec: "1/1000,20/60000", history: 20, history_ms: 60_000 };
        assert_eq!(header.argv(), ["taskq:", "task_log", "86400000", "1/1000,20/60000", "20", "60000"]);
        // lib.lua reads them in this order.
        let lib = include_str!("lib.lua");
        assert!(lib.contains("prefix, log_key, task_ttl = argv[1], argv[2], tonumber(argv[3])"));
        assert!(lib.contains("default_spec, history, history_ms = argv[4], tonumber(argv[5]), tonumber(argv[6])"));
    }
}
