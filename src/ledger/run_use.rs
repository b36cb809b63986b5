//! calyx-run's side of the ledger: one use taken before the payload starts, the run's end
//! recorded after it.
//!
//! `cli::run` opens the ledger before the clone (an unusable ledger refuses the run, 125,
//! before anything is created), then takes the use in the window after init is released and
//! before the payload may start, where it overlaps init's own setup on the other core; a
//! refusal there kills the unreleased init, so nothing of the payload has run.

use std::fmt;
use std::path::Path;

use time::OffsetDateTime;

use super::{Decision, LeaseRecord, Ledger, LedgerError, Refusal, RunEnd, SqliteLedger};
use crate::lease::model::Lease;

/// One run's use of one lease.
pub struct RunUse {
    /// None only in a `bench-baseline` build (see Cargo.toml): no ledger at all.
    ledger: Option<Box<dyn Ledger>>,
    record: LeaseRecord,
    run_id: String,
    consumed: bool,
    refusal: Option<Refusal>,
}

/// Why the use could not be taken: the run must not start.
#[derive(Debug)]
pub enum UseStop {
    /// Refused by the ledger (77).
    Refused(Refusal),
    /// The ledger failed, or stayed locked past its timeout (125).
    Failed(LedgerError),
}

impl fmt::Display for UseStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UseStop::Refused(r) => write!(f, "refused: {r}"),
            UseStop::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl RunUse {
    /// Opens the embedded ledger of `state_dir` for `lease`, run `run_id`.
    pub fn open(state_dir: &Path, lease: &Lease, run_id: &str) -> Result<RunUse, LedgerError> {
        if cfg!(feature = "bench-baseline") {
            // The benchmark's baseline build measures calyx-run without the ledger.
            return Ok(RunUse {
                ledger: None,
                record: LeaseRecord::of(lease),
                run_id: run_id.to_owned(),
                consumed: false,
                refusal: None,
            });
        }
        let ledger = SqliteLedger::open_in(state_dir)?;
        Ok(Self::with(Box::new(ledger), LeaseRecord::of(lease), run_id))
    }

    /// With any backend (a fleet's shared store, or a test double).
    pub fn with(ledger: Box<dyn Ledger>, record: LeaseRecord, run_id: &str) -> RunUse {
        RunUse {
            ledger: Some(ledger),
            record,
            run_id: run_id.to_owned(),
            consumed: false,
            refusal: None,
        }
    }

    /// Takes one use, durably, or says why not. Called once, before the payload can start.
    pub fn take(&mut self) -> Result<(), UseStop> {
        let Some(ledger) = self.ledger.as_mut() else {
            return Ok(());
        };
        let decision = ledger
            .consume(&self.record, &self.run_id, OffsetDateTime::now_utc())
            .map_err(UseStop::Failed)?;
        match decision {
            Decision::Granted { .. } => {
                self.consumed = true;
                Ok(())
            }
            Decision::Refused(r) => {
                self.refusal = Some(r.clone());
                Err(UseStop::Refused(r))
            }
        }
    }

    /// The ledger's refusal, when [`take`](Self::take) was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// Records how the run ended, when it consumed a use (a refused or never-started run has
    /// nothing to record).
    pub fn finish(&mut self, outcome: &str, exit_code: u8) -> Result<(), LedgerError> {
        let (true, Some(ledger)) = (self.consumed, self.ledger.as_mut()) else {
            return Ok(());
        };
        let end = RunEnd {
            run_id: self.run_id.clone(),
            outcome: outcome.to_owned(),
            exit_code,
        };
        ledger.record_end(&end, OffsetDateTime::now_utc())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn record(max_uses: u32) -> LeaseRecord {
        LeaseRecord {
            lease_id: "LEASE-r".into(),
            intent_id: "INT-r".into(),
            subject: "s".into(),
            expires_at: "2026-11-23T00:00:00Z".into(),
            max_uses,
        }
    }

    #[test]
    fn a_refused_use_records_nothing_and_names_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let open = || Box::new(SqliteLedger::open_in(tmp.path()).unwrap());
        let mut first = RunUse::with(open(), record(1), "RUN-1");
        first.take().unwrap();
        first.finish("exited", 0).unwrap();
        let mut second = RunUse::with(open(), record(1), "RUN-2");
        let stop = second.take().unwrap_err();
        assert_eq!(
            stop.to_string(),
            "refused: lease LEASE-r used 1 of 1 time(s)"
        );
        assert!(second.refusal().is_some());
        second.finish("rejected", 77).unwrap();
        let rows = SqliteLedger::open_in(tmp.path()).unwrap().list().unwrap();
        assert_eq!(rows[0].last_run_id.as_deref(), Some("RUN-1"));
        assert_eq!(rows[0].last_outcome.as_deref(), Some("exited"));
    }
}
