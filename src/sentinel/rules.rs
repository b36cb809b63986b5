//! Halt rules, evaluated as a pure function of timestamped samples: a rule fires once its
//! metric has stayed above the threshold for `for_ms`, measured from the first sample that
//! showed the breach. A breach that clears before then resets the rule.

use serde::Serialize;

use super::stats::Sample;
use crate::lease::model::{HaltAction, HaltRule};

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The rule.
    pub rule: HaltRule,
    /// Position of the rule in the evaluator's list.
    pub rule_index: usize,
    /// Observed value when it fired.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// When the breach was first seen (ms since the watch started).
    pub breach_since_ms: u64,
    /// When the rule fired (ms since the watch started).
    pub at_ms: u64,
}

impl Decision {
    /// The action to take.
    pub fn action(&self) -> HaltAction {
        self.rule.action
    }
}

/// Below this fraction of every threshold the watcher considers the run calm.
pub const CALM_FRACTION: f64 = 0.5;

/// Severity order of actions: kill > freeze > warn.
pub fn severity(a: HaltAction) -> u8 {
    match a {
        HaltAction::Warn => 0,
        HaltAction::Freeze => 1,
        HaltAction::Kill => 2,
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RuleState {
    since: Option<u64>,
    fired: bool,
}

/// Evaluates a fixed list of rules over a stream of samples.
#[derive(Debug, Clone)]
pub struct Evaluator {
    rules: Vec<HaltRule>,
    state: Vec<RuleState>,
}

impl Evaluator {
    /// An evaluator for `rules`.
    pub fn new(rules: Vec<HaltRule>) -> Self {
        let state = vec![RuleState::default(); rules.len()];
        Self { rules, state }
    }

    /// The rules evaluated.
    pub fn rules(&self) -> &[HaltRule] {
        &self.rules
    }

    /// Feed the sample taken at `t_ms`; returns the rules that fire now, most severe first.
    /// A fired rule fires again only after its metric has gone back under the threshold.
    pub fn observe(&mut self, t_ms: u64, sample: &Sample) -> Vec<Decision> {
        let mut out = Vec::new();
        for (i, (rule, st)) in self.rules.iter().zip(self.state.iter_mut()).enumerate() {
            // A metric the host does not offer (no limit, no PSI) cannot be in breach.
            let value = sample.metric(rule.metric).filter(|v| *v > rule.above);
            let Some(value) = value else {
                *st = RuleState::default();
                continue;
            };
            let since = *st.since.get_or_insert(t_ms);
            if !st.fired && t_ms.saturating_sub(since) >= rule.for_ms {
                st.fired = true;
                out.push(Decision {
                    rule: rule.clone(),
                    rule_index: i,
                    value,
                    threshold: rule.above,
                    breach_since_ms: since,
                    at_ms: t_ms,
                });
            }
        }
        out.sort_by_key(|d| std::cmp::Reverse(severity(d.action())));
        out
    }

    /// True when no rule is near firing: no breach pending and every metric under
    /// [`CALM_FRACTION`] of its threshold. The watcher then samples less often, which is what
    /// keeps an idle sentinel's cost negligible; the kernel's own limits (memory.max,
    /// pids.max) bound what a sudden jump can do in between.
    pub fn is_calm(&self, sample: &Sample) -> bool {
        self.rules.iter().zip(&self.state).all(|(r, st)| {
            st.since.is_none()
                && sample
                    .metric(r.metric)
                    .is_none_or(|v| v < r.above * CALM_FRACTION)
        })
    }

    /// The earliest time a pending breach would fire if it lasts, so the watcher can wake
    /// exactly then rather than poll faster.
    pub fn next_deadline(&self) -> Option<u64> {
        self.rules
            .iter()
            .zip(&self.state)
            .filter(|(_, st)| !st.fired)
            .filter_map(|(r, st)| st.since.map(|s| s.saturating_add(r.for_ms)))
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::lease::model::HaltMetric;

    fn rule(metric: HaltMetric, above: f64, for_ms: u64, action: HaltAction) -> HaltRule {
        HaltRule {
            metric,
            above,
            for_ms,
            action,
        }
    }

    fn mem(percent: u64) -> Sample {
        Sample {
            memory_bytes: Some(percent),
            memory_limit: Some(100),
            ..Sample::default()
        }
    }

    /// Feed (t, memory %) points; return (t, action) of every decision.
    fn run(rules: Vec<HaltRule>, timeline: &[(u64, u64)]) -> Vec<(u64, HaltAction)> {
        let mut ev = Evaluator::new(rules);
        timeline
            .iter()
            .flat_map(|(t, p)| {
                ev.observe(*t, &mem(*p))
                    .into_iter()
                    .map(|d| (d.at_ms, d.action()))
            })
            .collect()
    }

    /// (case name, rules, timeline of (t, memory %), expected (t, action) decisions).
    type Case = (
        &'static str,
        Vec<HaltRule>,
        Vec<(u64, u64)>,
        Vec<(u64, HaltAction)>,
    );

    #[test]
    fn sustained_breach_table() {
        use HaltAction::*;
        let kill_500 = || vec![rule(HaltMetric::MemoryPercent, 90.0, 500, Kill)];
        let cases: Vec<Case> = vec![
            (
                "never above",
                kill_500(),
                vec![(0, 10), (100, 90), (1000, 50)],
                vec![],
            ),
            // Exactly at the threshold is not above it.
            ("at threshold", kill_500(), vec![(0, 90), (600, 90)], vec![]),
            (
                "clears before for_ms",
                kill_500(),
                vec![(0, 95), (200, 99), (400, 80), (600, 95), (900, 95)],
                vec![],
            ),
            (
                "lasts: fires at since+for_ms",
                kill_500(),
                vec![
                    (0, 50),
                    (100, 95),
                    (300, 97),
                    (550, 99),
                    (600, 99),
                    (700, 99),
                ],
                vec![(600, Kill)],
            ),
            (
                "fires once per breach",
                kill_500(),
                vec![(0, 95), (500, 95), (1000, 95)],
                vec![(500, Kill)],
            ),
            (
                "re-arms after clearing",
                vec![rule(HaltMetric::MemoryPercent, 90.0, 0, Warn)],
                vec![(0, 95), (50, 95), (100, 10), (150, 95)],
                vec![(0, Warn), (150, Warn)],
            ),
            (
                "most severe first",
                vec![
                    rule(HaltMetric::MemoryPercent, 80.0, 0, Warn),
                    rule(HaltMetric::MemoryPercent, 90.0, 0, Freeze),
                    rule(HaltMetric::MemoryPercent, 70.0, 0, Kill),
                ],
                vec![(0, 95)],
                vec![(0, Kill), (0, Freeze), (0, Warn)],
            ),
        ];
        for (name, rules, timeline, want) in cases {
            assert_eq!(run(rules, &timeline), want, "{name}");
        }
    }

    #[test]
    fn decision_carries_value_threshold_and_start() {
        let mut ev = Evaluator::new(vec![rule(
            HaltMetric::PidsPercent,
            95.0,
            200,
            HaltAction::Kill,
        )]);
        let s = |p| Sample {
            pids: Some(p),
            pids_limit: Some(32),
            ..Sample::default()
        };
        assert!(ev.observe(10, &s(31)).is_empty());
        assert_eq!(ev.next_deadline(), Some(210));
        let d = ev.observe(210, &s(32)).pop().unwrap();
        assert_eq!(
            (d.value, d.threshold, d.breach_since_ms, d.at_ms),
            (100.0, 95.0, 10, 210)
        );
        assert_eq!(ev.next_deadline(), None);
    }

    #[test]
    fn calm_table() {
        let mut ev = Evaluator::new(vec![rule(
            HaltMetric::MemoryPercent,
            90.0,
            500,
            HaltAction::Kill,
        )]);
        assert!(ev.is_calm(&mem(10)));
        assert!(
            ev.is_calm(&Sample::default()),
            "no metric, nothing to watch closely"
        );
        assert!(
            !ev.is_calm(&mem(45)),
            "at half the threshold: watch closely"
        );
        ev.observe(0, &mem(95));
        assert!(!ev.is_calm(&mem(10)), "a pending breach is never calm");
        ev.observe(10, &mem(10));
        assert!(ev.is_calm(&mem(10)));
    }

    #[test]
    fn missing_metric_never_fires() {
        let mut ev = Evaluator::new(vec![rule(
            HaltMetric::MemoryPressureSomeAvg10,
            10.0,
            0,
            HaltAction::Kill,
        )]);
        assert!(ev.observe(0, &Sample::default()).is_empty());
        let s = Sample {
            memory_pressure_some_avg10: Some(12.0),
            ..Sample::default()
        };
        assert_eq!(ev.observe(1, &s).len(), 1);
        let cpu = Sample {
            cpu_usec: Some(3_000_001),
            output_bytes: Some(10),
            ..Sample::default()
        };
        let mut ev = Evaluator::new(vec![
            rule(HaltMetric::CpuSeconds, 3.0, 0, HaltAction::Kill),
            rule(HaltMetric::OutputBytes, 10.0, 0, HaltAction::Kill),
        ]);
        assert_eq!(ev.observe(0, &cpu).len(), 1);
    }
}
