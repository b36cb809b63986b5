//! The halt policy (`policies/halt.toml`): default rules, validated, and merged with a
//! lease's rules, which may add and tighten but never loosen.

use std::path::Path;

use serde::Deserialize;

use super::SentinelError;
use crate::lease::model::{HaltAction, HaltMetric, HaltRule, Limits};

/// Policy files are a few hundred bytes; refuse anything absurd before parsing it.
const MAX_POLICY_BYTES: u64 = 64 * 1024;

/// A CPU-time budget derived from the lease's `cpu` × `timeout_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuBudget {
    /// Fraction of cpu × timeout after which the rule fires.
    pub share: f64,
    /// What to do.
    #[serde(default)]
    pub action: HaltAction,
}

/// The contents of a halt policy file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltPolicy {
    /// Rules, in order.
    #[serde(default, rename = "rule")]
    pub rules: Vec<HaltRule>,
    /// Optional CPU-time budget.
    #[serde(default)]
    pub cpu_budget: Option<CpuBudget>,
}

/// Check one rule: a threshold that cannot be crossed or a huge wait is a mistake.
pub fn validate_rule(origin: &str, index: usize, r: &HaltRule) -> Result<(), SentinelError> {
    let invalid = |reason| SentinelError::RuleInvalid {
        origin: origin.to_owned(),
        index,
        reason,
    };
    if !r.above.is_finite() || r.above < 0.0 {
        return Err(invalid("`above` must be a finite number ≥ 0"));
    }
    let percent = matches!(
        r.metric,
        HaltMetric::MemoryPercent | HaltMetric::PidsPercent | HaltMetric::MemoryPressureSomeAvg10
    );
    if percent && r.above >= 100.0 {
        return Err(invalid(
            "a percentage can never be above 100: the rule could never fire",
        ));
    }
    if r.for_ms > 3_600_000 {
        return Err(invalid("`for_ms` over one hour"));
    }
    Ok(())
}

impl HaltPolicy {
    /// Parse and validate policy text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SentinelError> {
        let policy: Self = toml::from_str(text).map_err(|source| SentinelError::PolicyParse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        policy.validated(path)
    }

    /// The policy if every rule and the CPU budget are in range.
    fn validated(self, path: &Path) -> Result<Self, SentinelError> {
        let origin = path.display().to_string();
        for (i, r) in self.rules.iter().enumerate() {
            validate_rule(&origin, i, r)?;
        }
        if let Some(b) = self.cpu_budget
            && (!b.share.is_finite() || b.share <= 0.0 || b.share > 1.0)
        {
            return Err(SentinelError::RuleInvalid {
                origin,
                index: self.rules.len(),
                reason: "cpu_budget.share must be in (0, 1]",
            });
        }
        Ok(self)
    }

    /// Read, bound, parse and validate a policy file.
    pub fn load(path: &Path) -> Result<Self, SentinelError> {
        let read_err = |source| SentinelError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let text =
            crate::lease::read_text_capped(&file, MAX_POLICY_BYTES, None).map_err(read_err)?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(read_err(std::io::Error::from(
                std::io::ErrorKind::FileTooLarge,
            )));
        }
        Self::parse(&text, path)
    }

    /// The policy shipped with calyx (`policies/halt.toml`), compiled in as the JSON that
    /// build.rs makes of it (parsed faster, at every run; see build.rs).
    pub fn builtin() -> Result<Self, SentinelError> {
        let path = Path::new("policies/halt.toml");
        let policy: Self =
            serde_json::from_str(include_str!(concat!(env!("OUT_DIR"), "/halt.json"))).map_err(
                |source| SentinelError::PolicyParse {
                    path: path.to_owned(),
                    source: Box::new(source),
                },
            )?;
        policy.validated(path)
    }
}

/// Why a lease rule did not simply replace a profile rule.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeNote {
    /// The lease rule is looser on some axis; the profile's rule stays in force beside it.
    LooserKept {
        /// The lease's rule.
        lease: HaltRule,
        /// The profile's rule that still applies.
        profile: HaltRule,
    },
}

/// The rules a run is watched with, and how they were merged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EffectiveRules {
    /// Rules for the evaluator.
    pub rules: Vec<HaltRule>,
    /// Merge notes to report.
    pub notes: Vec<MergeNote>,
}

/// Merge the profile's policy with the lease's rules for a run with `limits`.
///
/// A lease rule with the same metric and action as a profile rule replaces it when it is at
/// least as strict (threshold and duration both ≤); otherwise both apply, so a lease can
/// tighten but never loosen. Other lease rules are added.
pub fn merge(
    policy: &HaltPolicy,
    lease_rules: &[HaltRule],
    limits: &Limits,
) -> Result<EffectiveRules, SentinelError> {
    let mut rules = policy.rules.clone();
    if let (Some(b), Some(cpu), Some(timeout)) =
        (policy.cpu_budget, limits.cpu, limits.timeout_secs)
    {
        #[allow(clippy::cast_precision_loss)] // timeouts are far below 2^52 seconds
        let budget = b.share * cpu * timeout as f64;
        rules.push(HaltRule {
            metric: HaltMetric::CpuSeconds,
            above: budget,
            for_ms: 0,
            action: b.action,
        });
    }
    let mut notes = Vec::new();
    for (i, lr) in lease_rules.iter().enumerate() {
        validate_rule("lease", i, lr)?;
        let same = rules
            .iter()
            .position(|p| p.metric == lr.metric && p.action == lr.action);
        match same {
            Some(j) if lr.above <= rules[j].above && lr.for_ms <= rules[j].for_ms => {
                rules[j] = lr.clone()
            }
            Some(j) => {
                notes.push(MergeNote::LooserKept {
                    lease: lr.clone(),
                    profile: rules[j].clone(),
                });
                rules.push(lr.clone());
            }
            None => rules.push(lr.clone()),
        }
    }
    Ok(EffectiveRules { rules, notes })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn r(metric: HaltMetric, above: f64, for_ms: u64, action: HaltAction) -> HaltRule {
        HaltRule {
            metric,
            above,
            for_ms,
            action,
        }
    }

    #[test]
    fn the_builtin_json_is_the_toml_source() {
        let toml = HaltPolicy::parse(
            include_str!("../../policies/halt.toml"),
            Path::new("policies/halt.toml"),
        )
        .unwrap();
        let json = HaltPolicy::builtin().unwrap();
        assert_eq!(json, toml);
        assert!(!json.rules.is_empty() && json.cpu_budget.is_some());
    }

    #[test]
    fn builtin_policy_loads() {
        let p = HaltPolicy::builtin().unwrap();
        assert_eq!(
            p.rules[0],
            r(HaltMetric::MemoryPercent, 90.0, 500, HaltAction::Kill)
        );
        assert_eq!(
            p.rules[1],
            r(HaltMetric::PidsPercent, 95.0, 0, HaltAction::Kill)
        );
        assert_eq!(p.cpu_budget.unwrap().share, 0.9);
        // The file on disk is the one compiled in.
        let disk = HaltPolicy::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/halt.toml"
        )))
        .unwrap();
        assert_eq!(disk, p);
    }

    #[test]
    fn invalid_policies_table() {
        let cases = [
            (
                "unknown top-level key",
                "[[rule]]\nmetric='memory_percent'\nabove=1.0\n[extra]\n",
            ),
            (
                "unknown rule field",
                "[[rule]]\nmetric='memory_percent'\nabove=1.0\nbelow=2.0\n",
            ),
            (
                "unknown metric",
                "[[rule]]\nmetric='disk_percent'\nabove=1.0\n",
            ),
            (
                "percent over 100",
                "[[rule]]\nmetric='pids_percent'\nabove=100.0\n",
            ),
            ("negative", "[[rule]]\nmetric='cpu_seconds'\nabove=-1.0\n"),
            (
                "for_ms too long",
                "[[rule]]\nmetric='cpu_seconds'\nabove=1.0\nfor_ms=4000000\n",
            ),
            ("budget share", "[cpu_budget]\nshare=1.5\n"),
        ];
        for (name, text) in cases {
            assert!(
                HaltPolicy::parse(text, Path::new("t.toml")).is_err(),
                "{name}"
            );
        }
        let ok = HaltPolicy::parse(
            "[[rule]]\nmetric='output_bytes'\nabove=1e6\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(ok.rules[0].action, HaltAction::Kill);
    }

    #[test]
    fn merge_table() {
        use HaltAction::*;
        use HaltMetric::*;
        let policy = HaltPolicy {
            rules: vec![
                r(MemoryPercent, 90.0, 500, Kill),
                r(PidsPercent, 95.0, 0, Kill),
            ],
            cpu_budget: Some(CpuBudget {
                share: 0.5,
                action: Kill,
            }),
        };
        let limits = Limits {
            cpu: Some(0.5),
            timeout_secs: Some(10),
            ..Limits::default()
        };
        // No lease rules: profile rules plus the budget (0.5 × 0.5 core × 10 s = 2.5 s).
        let m = merge(&policy, &[], &limits).unwrap();
        assert_eq!(m.rules[2], r(CpuSeconds, 2.5, 0, Kill));
        // No timeout: no budget.
        assert_eq!(
            merge(&policy, &[], &Limits::default()).unwrap().rules.len(),
            2
        );
        // Tighter lease rule replaces the profile's.
        let m = merge(
            &policy,
            &[r(MemoryPercent, 80.0, 200, Kill)],
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            m.rules,
            vec![
                r(MemoryPercent, 80.0, 200, Kill),
                r(PidsPercent, 95.0, 0, Kill)
            ]
        );
        assert!(m.notes.is_empty());
        // Looser lease rule: both stay, the profile floor still applies, and it is noted.
        let m = merge(
            &policy,
            &[r(MemoryPercent, 99.0, 100, Kill)],
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(m.rules.len(), 3);
        assert!(m.rules.contains(&r(MemoryPercent, 90.0, 500, Kill)));
        assert_eq!(m.notes.len(), 1);
        // A different action is a separate rule.
        let m = merge(
            &policy,
            &[r(MemoryPercent, 70.0, 0, Warn)],
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(m.rules.len(), 3);
        // Lease rules are validated too.
        assert!(
            merge(
                &policy,
                &[r(PidsPercent, 150.0, 0, Kill)],
                &Limits::default()
            )
            .is_err()
        );
    }
}
