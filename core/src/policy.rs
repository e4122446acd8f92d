//! Policies as data: which windows limit a lane, from the task's kind and the
//! user's tier. Like governor's `Quota`, this module only describes limits; `slot.rs`
//! applies them.
//!
//! - A **window** admits `q` units per `w` (1 s to 24 h, `q` from 1 to 1,000), written
//!   `"<q>/<n><s|m|h>"`: `"20/60s"` is 20 units in any rolling 60 seconds.
//! - A **policy** is any number of windows; a task runs only when every one of them allows
//!   it. No windows: no limit.
//! - A **kind** names the policy of its tasks; every (user, kind) is its own **lane**.
//! - A **tier** overrides the policies of the kinds it names and inherits the others. A user
//!   without a tier (or with one this configuration does not define) has the built-in one.
//!
//! The `policies` variable holds it all as JSON, checked when an instance loads it:
//!
//! ```json
//! {"kinds": {"default": ["1/1s", "20/60s"], "email": ["5/60s"], "report": ["1/10s", "100/24h"]},
//!  "tiers": {"pro": {"default": ["5/1s", "100/60s"], "email": ["50/60s"]}}}
//! ```
//!
//! A kind may instead be an object that also names where its tasks are **delivered**
//! (`delivery.rs`): `{"windows": ["5/60s"], "target": "http://mailer.internal:8080/send",
//! "timeout": "10s", "attempts": 5, "concurrency": 2}`, or that workers **pull** them
//! (`"pull": true` instead of a target: `POST /api/v1/claims`); only `windows` is required,
//! and `timeout`, `attempts` and `concurrency` need a `target` or `pull`. A tier overrides
//! windows only.
//!
//! Unset (or without a `default` kind), the `default` kind is the default policy (1/s and 20/min) from
//! `per_second` and `per_minute`, with the window names of the rate-limit fields as before
//! (`burst` and `minute`).

use crate::delivery::Delivery;
use crate::outbound::AllowedHosts;
use crate::slot::Window;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The kind of a task that names none.
pub const DEFAULT_KIND: &str = "default";
/// Largest quota of a window: a lane keeps that many entries of history at most.
pub const MAX_QUOTA: u32 = 1_000;
pub const MIN_WINDOW_MS: i64 = 1_000;
pub const MAX_WINDOW_MS: i64 = 24 * 3_600_000;
/// Longest kind or tier name. Names are `[A-Za-z0-9_.-]`, so they are safe in keys, metric
/// labels and header values as they are.
pub const MAX_NAME: usize = 64;

/// The windows of one lane, each with the name the rate-limit fields give it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    windows: Vec<Window>,
    names: Vec<String>,
    /// `spec()`, built once: every admission sends it.
    spec: String,
}

impl Policy {
    /// The default policy: `per_second` per 1 s and `per_minute` per 60 s (0 switches a
    /// window off).
    pub fn legacy(per_second: u32, per_minute: u32) -> Policy {
        let mut policy = Policy::default();
        for (name, quota, window_ms) in [("burst", per_second, 1_000), ("minute", per_minute, 60_000)] {
            if quota > 0 {
                policy.windows.push(Window { quota, window_ms });
                policy.names.push(name.to_string());
            }
        }
        policy.spec = spec_of(&policy.windows);
        policy
    }

    /// A policy from its windows as written in the configuration; `at` names the entry in
    /// errors (`kinds.email`).
    pub fn parse(written: &[String], at: &str) -> Result<Policy, String> {
        let mut policy = Policy::default();
        for (i, text) in written.iter().enumerate() {
            let window = parse_window(text).map_err(|e| format!("{at}[{i}] {text:?}: {e}"))?;
            if policy.windows.iter().any(|w| w.window_ms == window.window_ms) {
                return Err(format!("{at}[{i}] {text:?}: another window of the policy has the same length"));
            }
            policy.windows.push(window);
            policy.names.push(text.split_once('/').map_or(text.as_str(), |(_, w)| w).to_string());
        }
        policy.spec = spec_of(&policy.windows);
        Ok(policy)
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// `(name, window)` pairs, in the order the configuration gives them.
    pub fn named(&self) -> impl Iterator<Item = (&str, &Window)> {
        self.names.iter().map(String::as_str).zip(&self.windows)
    }

    /// The most units one task may cost: a task costing more could never run.
    pub fn max_cost(&self) -> Option<&Window> {
        self.windows.iter().min_by_key(|w| w.quota)
    }

    /// Entries of history the rule can look at (each counts at least one unit).
    pub fn history(&self) -> u32 {
        self.windows.iter().map(|w| w.quota).max().unwrap_or(0)
    }

    /// The longest window, in ms (0 without windows).
    pub fn longest_ms(&self) -> i64 {
        self.windows.iter().map(|w| w.window_ms).max().unwrap_or(0)
    }

    /// The windows as the Lua scripts and the log carry them: `<q>/<w ms>` joined by `,`
    /// (`"1/1000,20/60000"`; empty for no windows).
    pub fn spec(&self) -> &str {
        &self.spec
    }
}

fn spec_of(windows: &[Window]) -> String {
    let parts: Vec<String> = windows.iter().map(|w| format!("{}/{}", w.quota, w.window_ms)).collect();
    parts.join(",")
}

/// `"<q>/<n><s|m|h>"`.
fn parse_window(text: &str) -> Result<Window, String> {
    let (quota, length) = text.split_once('/').ok_or("a window is written <units>/<length>, like \"20/60s\"")?;
    // Digits only: Rust's parse would also take a sign ("+5"), which no one means here.
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(quota) {
        return Err("the units before / must be a whole number".to_string());
    }
    let quota: u32 = quota.parse().map_err(|_| format!("the units must be from 1 to {MAX_QUOTA}"))?;
    if !(1..=MAX_QUOTA).contains(&quota) {
        return Err(format!("the units must be from 1 to {MAX_QUOTA}"));
    }
    let unit_ms = match length.as_bytes().last() {
        Some(b's') => 1_000,
        Some(b'm') => 60_000,
        Some(b'h') => 3_600_000,
        _ => return Err("the length must end in s, m or h".to_string()),
    };
    let count = &length[..length.len() - 1];
    if !digits(count) {
        return Err("the length must be a whole number of s, m or h".to_string());
    }
    let count: i64 = count.parse().map_err(|_| "the length must be from 1s to 24h")?;
    let window_ms = count.saturating_mul(unit_ms);
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err("the length must be from 1s to 24h".to_string());
    }
    Ok(Window { quota, window_ms })
}

/// Every kind's policy, and the tiers' overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policies {
    kinds: BTreeMap<String, Policy>,
    tiers: BTreeMap<String, BTreeMap<String, Policy>>,
    /// The kinds with a target or pulled.
    deliveries: BTreeMap<String, Delivery>,
}

/// The `policies` variable as written. A kind is a list of windows or an object
/// (`WrittenKind`), told apart here so that errors can name the entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    kinds: BTreeMap<String, Value>,
    #[serde(default)]
    tiers: BTreeMap<String, BTreeMap<String, Value>>,
}

/// A kind's object form. The numbers stay JSON values so that a bad one is named with its
/// field (`kinds.email.attempts`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenKind {
    windows: Vec<String>,
    target: Option<String>,
    pull: Option<bool>,
    timeout: Option<String>,
    attempts: Option<Value>,
    concurrency: Option<Value>,
}

/// A kind as written: its windows, and its delivery if it has a target or is pulled.
fn parse_kind(value: Value, at: &str) -> Result<(Policy, Option<Delivery>), String> {
    if value.is_array() {
        return Ok((Policy::parse(&windows(value, at)?, at)?, None));
    }
    if !value.is_object() {
        return Err(format!("not a policies document: {at} must be a list of windows or an object"));
    }
    let kind: WrittenKind = serde_json::from_value(value).map_err(|e| format!("{at}: {e}"))?;
    let policy = Policy::parse(&kind.windows, &format!("{at}.windows"))?;
    let whole = |value: Option<Value>, field: &str| match value {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("{at}.{field} {v}: must be a whole number")),
    };
    let attempts = whole(kind.attempts, "attempts")?;
    let concurrency = whole(kind.concurrency, "concurrency")?;
    let delivery = match (kind.target, kind.pull.unwrap_or(false)) {
        (Some(_), true) => return Err(format!("{at}: a kind has a target or \"pull\": true, not both")),
        (Some(target), false) => {
            Some(Delivery::parse(Some(&target), kind.timeout.as_deref(), attempts, concurrency, at)?)
        }
        (None, true) => Some(Delivery::parse(None, kind.timeout.as_deref(), attempts, concurrency, at)?),
        (None, false) => {
            let given = [
                ("timeout", kind.timeout.is_some()),
                ("attempts", attempts.is_some()),
                ("concurrency", concurrency.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, set)| *set) {
                return Err(format!("{at}.{field}: only a kind with a target or \"pull\": true has a {field}"));
            }
            None
        }
    };
    Ok((policy, delivery))
}

/// A list of windows as written.
fn windows(value: Value, at: &str) -> Result<Vec<String>, String> {
    serde_json::from_value(value).map_err(|e| format!("{at}: {e}"))
}

impl Policies {
    /// Only the `default` kind, with `legacy` as its policy.
    pub fn only(legacy: Policy) -> Policies {
        Policies {
            kinds: BTreeMap::from([(DEFAULT_KIND.to_string(), legacy)]),
            tiers: BTreeMap::new(),
            deliveries: BTreeMap::new(),
        }
    }

    /// The `policies` variable (empty: `only(legacy)`). `legacy` is the `default` kind's
    /// policy unless the JSON names that kind. Errors name the bad entry.
    pub fn parse(json: &str, legacy: Policy) -> Result<Policies, String> {
        if json.trim().is_empty() {
            return Ok(Policies::only(legacy));
        }
        let written: Written = serde_json::from_str(json).map_err(|e| format!("not a policies document: {e}"))?;
        let mut kinds = BTreeMap::new();
        let mut deliveries = BTreeMap::new();
        for (kind, written) in written.kinds {
            check_name(&kind).map_err(|e| format!("kinds.{kind}: {e}"))?;
            let (policy, delivery) = parse_kind(written, &format!("kinds.{kind}"))?;
            if let Some(delivery) = delivery {
                deliveries.insert(kind.clone(), delivery);
            }
            kinds.insert(kind, policy);
        }
        kinds.entry(DEFAULT_KIND.to_string()).or_insert(legacy);
        let mut tiers = BTreeMap::new();
        for (tier, overrides) in written.tiers {
            check_name(&tier).map_err(|e| format!("tiers.{tier}: {e}"))?;
            let mut policies = BTreeMap::new();
            for (kind, written) in overrides {
                let at = format!("tiers.{tier}.{kind}");
                if !kinds.contains_key(&kind) {
                    return Err(format!("{at}: no such kind (kinds are {})", names(kinds.keys())));
                }
                if !written.is_array() {
                    return Err(format!("{at}: a tier overrides a kind's windows only: a list like [\"5/60s\"]"));
                }
                policies.insert(kind, Policy::parse(&windows(written, &at)?, &at)?);
            }
            tiers.insert(tier, policies);
        }
        Ok(Policies { kinds, tiers, deliveries })
    }

    /// The policy of `kind` for a user of `tier` (`None`: the built-in tier; a tier this
    /// configuration does not define counts as the built-in one). `None` for an unknown kind.
    pub fn resolve(&self, kind: &str, tier: Option<&str>) -> Option<&Policy> {
        let tiered = tier.and_then(|t| self.tiers.get(t)).and_then(|t| t.get(kind));
        tiered.or_else(|| self.kinds.get(kind))
    }

    /// Where `kind`'s tasks are delivered; `None` for a kind without a target or `pull`
    /// (or unknown).
    pub fn delivery(&self, kind: &str) -> Option<&Delivery> {
        self.deliveries.get(kind)
    }

    /// Whether workers pull `kind`'s tasks.
    pub fn is_pulled(&self, kind: &str) -> bool {
        self.delivery(kind).is_some_and(|d| d.target.is_none())
    }

    /// The kinds workers pull.
    pub fn pulled_kinds(&self) -> Vec<&str> {
        self.deliveries().filter(|(_, d)| d.target.is_none()).map(|(kind, _)| kind).collect()
    }

    /// The kinds with a target or pulled, and their deliveries.
    pub fn deliveries(&self) -> impl Iterator<Item = (&str, &Delivery)> {
        self.deliveries.iter().map(|(kind, d)| (kind.as_str(), d))
    }

    /// Every target is one `allowed` (the `delivery_hosts` variable) lets the app call;
    /// the error names the first kind and target it does not.
    pub fn check_targets(&self, allowed: &AllowedHosts) -> Result<(), String> {
        let targets = self.deliveries.iter().filter_map(|(kind, d)| Some((kind, d.target.as_deref()?)));
        match targets.into_iter().find(|(_, target)| !allowed.allows(target)) {
            None => Ok(()),
            Some((kind, target)) if allowed.is_empty() => Err(format!(
                "kinds.{kind}.target {target:?}: delivery_hosts is empty, so the app may call no host: set it to an \
                 allowed_outbound_hosts entry that covers the target (like \"http://127.0.0.1:8080\")",
            )),
            Some((kind, target)) => {
                Err(format!("kinds.{kind}.target {target:?}: not allowed by delivery_hosts {:?}", allowed.to_string()))
            }
        }
    }

    /// The tiers that override `kind`, with their policies.
    pub fn overrides(&self, kind: &str) -> impl Iterator<Item = (&str, &Policy)> {
        self.tiers.iter().filter_map(move |(tier, kinds)| Some((tier.as_str(), kinds.get(kind)?)))
    }

    /// What a lane of `kind` must keep, whatever the user's tier: (entries, ms).
    pub fn lane_history(&self, kind: &str) -> (u32, i64) {
        let all = self.kinds.get(kind).into_iter().chain(self.overrides(kind).map(|(_, p)| p));
        all.fold((0, 0), |(n, ms), p| (n.max(p.history()), ms.max(p.longest_ms())))
    }

    /// What any lane must keep: (entries, ms), for the executor's completion history.
    pub fn history(&self) -> (u32, i64) {
        self.kinds.keys().map(|k| self.lane_history(k)).fold((0, 0), |(n, ms), (a, b)| (n.max(a), ms.max(b)))
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    pub fn is_kind(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    pub fn is_tier(&self, tier: &str) -> bool {
        self.tiers.contains_key(tier)
    }

    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }

    pub fn tier_names(&self) -> String {
        names(self.tiers.keys())
    }

    pub fn kind_names(&self) -> String {
        names(self.kinds.keys())
    }
}

/// A kind or tier name: 1 to `MAX_NAME` of `[A-Za-z0-9_.-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    let safe = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name.is_empty() || name.len() > MAX_NAME || !safe {
        return Err(format!("a name must be 1 to {MAX_NAME} of A-Z a-z 0-9 _ . -"));
    }
    Ok(())
}

fn names<'a>(all: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<&str> = all.map(String::as_str).collect();
    if all.is_empty() { "none".to_string() } else { all.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"kinds": {"default": ["1/1s", "20/60s"], "email": ["5/60s"], "report": ["1/10s", "100/24h"]},
        "tiers": {"pro": {"default": ["5/1s", "100/60s"], "email": ["50/60s"]}}}"#;

    fn example() -> Policies {
        Policies::parse(EXAMPLE, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn quotas(policy: Option<&Policy>) -> Vec<(u32, i64)> {
        policy.map(|p| p.windows().iter().map(|w| (w.quota, w.window_ms)).collect()).unwrap_or_default()
    }

    #[test]
    fn the_issue_example_resolves_per_kind_and_tier() {
        let policies = example();
        assert_eq!(quotas(policies.resolve("default", None)), [(1, 1_000), (20, 60_000)]);
        assert_eq!(quotas(policies.resolve("report", None)), [(1, 10_000), (100, 86_400_000)]);
        assert_eq!(quotas(policies.resolve("default", Some("pro"))), [(5, 1_000), (100, 60_000)]);
        assert_eq!(quotas(policies.resolve("email", Some("pro"))), [(50, 60_000)]);
        // A tier inherits the kinds it does not name, and an unknown tier is the built-in one.
        assert_eq!(quotas(policies.resolve("report", Some("pro"))), [(1, 10_000), (100, 86_400_000)]);
        assert_eq!(quotas(policies.resolve("email", Some("gone"))), [(5, 60_000)]);
        assert!(policies.resolve("sms", None).is_none());
        // A lane keeps what its largest quota and longest window need over every tier.
        assert_eq!(policies.lane_history("email"), (50, 60_000));
        assert_eq!(policies.history(), (100, 86_400_000));
        let names: Vec<&str> =
            policies.resolve("report", None).map(|p| p.named().map(|(n, _)| n).collect()).unwrap_or_default();
        assert_eq!(names, ["10s", "24h"]);
        assert_eq!(policies.resolve("report", None).map(Policy::spec), Some("1/10000,100/86400000"));
    }

    #[test]
    fn unset_means_spec_section_one_with_its_window_names() {
        let policies = Policies::parse("  ", Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"));
        let default = policies.resolve(DEFAULT_KIND, None);
        assert_eq!(quotas(default), [(1, 1_000), (20, 60_000)]);
        let names: Vec<&str> = default.map(|p| p.named().map(|(n, _)| n).collect()).unwrap_or_default();
        assert_eq!(names, ["burst", "minute"]);
        // Without a `default` kind in the JSON, per_second/per_minute still define it.
        let policies = Policies::parse(r#"{"kinds": {"email": ["5/60s"]}}"#, Policy::legacy(2, 0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(quotas(policies.resolve(DEFAULT_KIND, None)), [(2, 1_000)]);
        assert_eq!(policies.kind_names(), "default, email");
    }

    #[test]
    fn bad_configurations_name_the_bad_entry() {
        for (json, expected) in [
            (r#"{"kinds": {"email": ["5/60x"]}}"#, r#"kinds.email[0] "5/60x""#),
            (r#"{"kinds": {"email": ["0/60s"]}}"#, "units must be from 1 to 1000"),
            (r#"{"kinds": {"email": ["1001/60s"]}}"#, "kinds.email[0]"),
            (r#"{"kinds": {"email": ["5/25h"]}}"#, "from 1s to 24h"),
            (r#"{"kinds": {"email": ["5/0s"]}}"#, "from 1s to 24h"),
            (r#"{"kinds": {"email": ["+5/60s"]}}"#, "whole number"),
            (r#"{"kinds": {"email": ["5/+60s"]}}"#, "whole number of s, m or h"),
            (r#"{"kinds": {"email": ["5/99999999999999999999s"]}}"#, "from 1s to 24h"),
            (r#"{"kinds": {"email": ["5/1s", "2/1000x"]}}"#, "kinds.email[1]"),
            (r#"{"kinds": {"email": ["5/60s", "7/1m"]}}"#, "same length"),
            (r#"{"kinds": {"e mail": ["5/60s"]}}"#, "kinds.e mail"),
            (r#"{"tiers": {"pro": {"sms": ["5/60s"]}}}"#, "tiers.pro.sms: no such kind"),
            (r#"{"tiers": {"pro": {"default": ["x"]}}}"#, r#"tiers.pro.default[0] "x""#),
            (r#"{"kind": {}}"#, "unknown field `kind`"),
            (r#"{"kinds": {"email": "5/60s"}}"#, "not a policies document"),
            ("[", "not a policies document"),
        ] {
            match Policies::parse(json, Policy::legacy(1, 20)) {
                Err(e) => assert!(e.contains(expected), "{json}: {e}"),
                Ok(p) => panic!("{json} was accepted: {p:?}"),
            }
        }
    }

    const DELIVERED: &str = r#"{"kinds": {"email": {"windows": ["5/60s"], "target": "http://mailer.internal:8080/send",
        "timeout": "2s", "attempts": 3, "concurrency": 2}, "report": {"windows": ["1/10s"]},
        "sms": {"windows": [], "target": "https://sms.example.com/v1"}, "chat": ["1/1s"]},
        "tiers": {"pro": {"email": ["50/60s"]}}}"#;

    #[test]
    fn a_kind_with_a_target_has_a_delivery_and_its_windows_as_before() {
        let policies = Policies::parse(DELIVERED, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"));
        let email = policies.delivery("email").unwrap_or_else(|| panic!("email has a target"));
        assert_eq!(email.target.as_deref(), Some("http://mailer.internal:8080/send"));
        assert_eq!(email.spec(), "2000/3/2");
        assert!(!policies.is_pulled("email") && !policies.is_pulled("report"));
        assert_eq!(policies.delivery("sms").map(|d| d.spec()), Some("10000/5/0".to_string()));
        for kind in ["report", "chat", "default", "nope"] {
            assert!(policies.delivery(kind).is_none(), "{kind}");
        }
        assert_eq!(policies.deliveries().map(|(k, _)| k).collect::<Vec<_>>(), ["email", "sms"]);
        // Windows resolve as for the list form, and a tier overrides them only.
        assert_eq!(quotas(policies.resolve("email", None)), [(5, 60_000)]);
        assert_eq!(quotas(policies.resolve("email", Some("pro"))), [(50, 60_000)]);
        assert_eq!(quotas(policies.resolve("report", None)), [(1, 10_000)]);
        assert_eq!(quotas(policies.resolve("sms", None)), []);
        // The object form without a target is the list form.
        let listed = Policies::parse(r#"{"kinds": {"report": ["1/10s"]}}"#, Policy::legacy(1, 20));
        let object = Policies::parse(r#"{"kinds": {"report": {"windows": ["1/10s"]}}}"#, Policy::legacy(1, 20));
        assert_eq!(listed, object);
    }

    #[test]
    fn a_pulled_kind_has_a_delivery_without_a_target_and_needs_no_hosts() {
        let json = r#"{"kinds": {"render": {"windows": ["2/1s"], "pull": true, "timeout": "30s", "concurrency": 4},
            "email": {"windows": [], "target": "http://h/", "pull": false}}}"#;
        let policies = Policies::parse(json, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"));
        assert!(policies.is_pulled("render") && !policies.is_pulled("email") && !policies.is_pulled("default"));
        assert_eq!(policies.pulled_kinds(), ["render"]);
        assert_eq!(policies.delivery("render").map(|d| d.spec()), Some("30000/5/4/pull".to_string()));
        let hosts = |entry: &str| AllowedHosts::parse(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(policies.check_targets(&hosts("http://h")), Ok(()));
        assert!(policies.check_targets(&hosts("")).is_err_and(|e| e.contains("kinds.email.target")));
        let pulled_only =
            Policies::parse(r#"{"kinds": {"render": {"windows": [], "pull": true}}}"#, Policy::legacy(1, 20));
        assert_eq!(pulled_only.map(|p| p.check_targets(&hosts(""))), Ok(Ok(())));
    }

    #[test]
    fn targets_must_be_allowed_by_delivery_hosts() {
        let policies = Policies::parse(DELIVERED, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"));
        let hosts = |entry: &str| AllowedHosts::parse(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(policies.check_targets(&hosts("*://*:*")), Ok(()));
        let err = |entry: &str| policies.check_targets(&hosts(entry)).err().unwrap_or_default();
        assert!(err("").contains(r#"kinds.email.target "http://mailer.internal:8080/send": delivery_hosts is empty"#));
        let e = err("http://mailer.internal:8080");
        assert!(e.contains(r#"kinds.sms.target "https://sms.example.com/v1": not allowed by delivery_hosts "http://mailer.internal:8080""#), "{e}");
        assert!(err("https://*.example.com").contains("kinds.email.target"));
        // Kinds without a target need no hosts at all.
        assert_eq!(example().check_targets(&hosts("")), Ok(()));
    }

    #[test]
    fn bad_kind_objects_name_the_bad_entry() {
        for (json, expected) in [
            (
                r#"{"kinds": {"email": {"windows": ["5/60s"], "timeout": "5s"}}}"#,
                "kinds.email.timeout: only a kind with a target or \"pull\": true has a timeout",
            ),
            (
                r#"{"kinds": {"email": {"windows": [], "target": "http://h", "pull": true}}}"#,
                "kinds.email: a kind has a target or \"pull\": true, not both",
            ),
            (r#"{"kinds": {"email": {"windows": [], "pull": "yes"}}}"#, "kinds.email: invalid type"),
            (r#"{"kinds": {"email": {"windows": [], "pull": true, "attempts": 21}}}"#, "kinds.email.attempts 21"),
            (
                r#"{"kinds": {"email": {"windows": [], "attempts": 3}}}"#,
                "kinds.email.attempts: only a kind with a target",
            ),
            (r#"{"kinds": {"email": {"windows": [], "concurrency": 3}}}"#, "kinds.email.concurrency"),
            (
                r#"{"kinds": {"email": {"windows": [], "target": "http://h", "timeout": "70s"}}}"#,
                r#"kinds.email.timeout "70s""#,
            ),
            (r#"{"kinds": {"email": {"windows": [], "target": "http://h", "attempts": 0}}}"#, "kinds.email.attempts 0"),
            (
                r#"{"kinds": {"email": {"windows": [], "target": "http://h", "attempts": "5"}}}"#,
                r#"kinds.email.attempts "5": must be a whole number"#,
            ),
            (
                r#"{"kinds": {"email": {"windows": [], "target": "http://h", "attempts": 2.5}}}"#,
                "kinds.email.attempts 2.5",
            ),
            (
                r#"{"kinds": {"email": {"windows": [], "target": "http://h", "concurrency": -1}}}"#,
                "kinds.email.concurrency -1",
            ),
            (
                r#"{"kinds": {"email": {"windows": [], "target": "http://h", "concurrency": 1001}}}"#,
                "kinds.email.concurrency 1001",
            ),
            (r#"{"kinds": {"email": {"windows": [], "target": "ftp://h"}}}"#, r#"kinds.email.target "ftp://h""#),
            (r#"{"kinds": {"email": {"windows": [], "target": "http://h/#x"}}}"#, "no fragment"),
            (r#"{"kinds": {"email": {"windows": [], "target": 5}}}"#, "kinds.email: invalid type"),
            (
                r#"{"kinds": {"email": {"windows": ["5/60x"], "target": "http://h"}}}"#,
                r#"kinds.email.windows[0] "5/60x""#,
            ),
            (r#"{"kinds": {"email": {"window": ["5/60s"]}}}"#, "kinds.email: unknown field `window`"),
            (r#"{"kinds": {"email": {"target": "http://h"}}}"#, "kinds.email: missing field `windows`"),
            (r#"{"kinds": {"email": [5]}}"#, "kinds.email: invalid type"),
            (
                r#"{"tiers": {"pro": {"default": {"windows": ["5/1s"]}}}}"#,
                "tiers.pro.default: a tier overrides a kind's windows only",
            ),
        ] {
            match Policies::parse(json, Policy::legacy(1, 20)) {
                Err(e) => assert!(e.contains(expected), "{json}: {e}"),
                Ok(p) => panic!("{json} was accepted: {p:?}"),
            }
        }
    }

    #[test]
    fn the_most_a_task_may_cost_is_the_smallest_quota() {
        let policies = example();
        assert_eq!(policies.resolve("report", None).and_then(Policy::max_cost).map(|w| w.quota), Some(1));
        assert_eq!(policies.resolve("default", Some("pro")).and_then(Policy::max_cost).map(|w| w.quota), Some(5));
        assert!(Policy::legacy(0, 0).max_cost().is_none());
    }
}
