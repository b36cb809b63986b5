//! calyx-run's side of the ledger: one use taken before the payload starts, the run's end
//! recorded after it.
//!
//! Nothing of the ledger runs before the clone, where the runner must stay single-threaded:
//! [`RunUse::begin`], called right after it, opens the ledger and takes the use on a thread of
//! its own, so the open and the write's fdatasync overlap the uid/gid maps, the sentinel's start and init building its view.
//! [`RunUse::take`] waits for that answer before the payload may start; a refusal, or a
//! ledger that cannot be opened or written, kills the unreleased init, so nothing of the
//! payload has run (77 or 125).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};

use time::OffsetDateTime;

use super::{Decision, FileLedger, LeaseRecord, Ledger, LedgerError, Refusal, RunEnd};
use crate::lease::model::Lease;

/// The storage a run uses: None only in a `bench-baseline` build (see Cargo.toml).
type Store = Option<Box<dyn Ledger>>;

/// What the thread of [`RunUse::begin`] hands back: the store (when it opened) and whether
/// the use was granted.
type Taken = (Store, Result<(), UseStop>);

/// One run's use of one lease.
pub struct RunUse {
    state: State,
    record: LeaseRecord,
    run_id: String,
    consumed: bool,
    refusal: Option<Refusal>,
}

enum State {
    /// Not opened yet: the embedded ledger of this state directory.
    Closed(PathBuf),
    /// Opened (a test double or a fleet's store), use not taken yet.
    Open(Store),
    /// Open and take running on a thread, which announces a grant on the second channel
    /// before it commits it, and hands back its answer on the first as its last act.
    Taking(Receiver<Taken>, Receiver<()>),
    /// The use was decided (or failed): the store stays for [`RunUse::finish`].
    Decided(Store),
    /// The thread could not be started (the process is out of threads): the run refuses.
    NoThread(std::io::Error),
    /// A second take: nothing more to do.
    Spent,
}

/// Why the use could not be taken: the run must not start.
#[derive(Debug)]
pub enum UseStop {
    /// Refused by the ledger (77).
    Refused(Refusal),
    /// The ledger failed, or stayed locked past its timeout (125).
    Failed(LedgerError),
    /// The thread taking the use died, or none could be started (125).
    Lost(Option<std::io::Error>),
}

impl fmt::Display for UseStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UseStop::Refused(r) => write!(f, "refused: {r}"),
            UseStop::Failed(e) => write!(f, "{e}"),
            UseStop::Lost(None) => write!(f, "the lease ledger's thread died before it answered"),
            UseStop::Lost(Some(e)) => write!(f, "starting the lease ledger's thread: {e}"),
        }
    }
}

impl RunUse {
    /// The embedded ledger of `state_dir`, for `lease`, run `run_id`. Opens nothing yet.
    pub fn new(state_dir: &Path, lease: &Lease, run_id: &str) -> RunUse {
        Self::in_dir(state_dir, LeaseRecord::of(lease), run_id)
    }

    /// [`new`](Self::new) for a lease record.
    pub fn in_dir(state_dir: &Path, record: LeaseRecord, run_id: &str) -> RunUse {
        let state = if cfg!(feature = "bench-baseline") {
            // The benchmark's baseline build measures calyx-run without the ledger.
            State::Open(None)
        } else {
            State::Closed(state_dir.to_owned())
        };
        RunUse {
            state,
            record,
            run_id: run_id.to_owned(),
            consumed: false,
            refusal: None,
        }
    }

    /// With any backend (a fleet's shared store, or a test double).
    pub fn with(ledger: Box<dyn Ledger>, record: LeaseRecord, run_id: &str) -> RunUse {
        RunUse {
            state: State::Open(Some(ledger)),
            record,
            run_id: run_id.to_owned(),
            consumed: false,
            refusal: None,
        }
    }

    /// Starts opening the ledger and taking the use on a thread. Call only where the process
    /// may have threads (after the clone). Without it, [`take`](Self::take) does the work
    /// itself.
    pub fn begin(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Spent);
        let (record, run_id) = (self.record.clone(), self.run_id.clone());
        let (tx, rx) = channel();
        let mut announce = move || {
            let _ = tx.send(());
        };
        let work: Box<dyn FnOnce() -> Taken + Send> = match state {
            State::Closed(dir) => {
                Box::new(move || open_and_take(&dir, &record, &run_id, &mut announce))
            }
            // No store (bench-baseline): nothing to wait for, no thread.
            State::Open(None) => {
                self.state = State::Open(None);
                return;
            }
            State::Open(store) => Box::new(move || take_on(store, &record, &run_id, &mut announce)),
            other => {
                self.state = other;
                return;
            }
        };
        // The answer comes back on a channel rather than through a join: the run goes on as
        // soon as the commit is done, not once the thread has also exited (its stack given
        // back, the joiner woken: 0.04 ms at the median, 0.12 at the 90th percentile, on the
        // way to the payload's start). The thread is not joined; it ends on its own.
        let (done, answer) = channel();
        let spawned = std::thread::Builder::new()
            .name("calyx:ledger".into())
            .spawn(move || {
                let _ = done.send(work());
            });
        self.state = match spawned {
            Ok(_detached) => State::Taking(answer, rx),
            Err(e) => State::NoThread(e),
        };
    }

    /// Takes one use, durably, or says why not: waits for [`begin`](Self::begin)'s thread,
    /// or does the work here. Called once, before the payload can start.
    pub fn take(&mut self) -> Result<(), UseStop> {
        self.take_beside(|| ()).0
    }

    /// [`take`](Self::take), running `during` once the use is granted: beside the ledger's
    /// commit when [`begin`](Self::begin)'s thread holds the use (written, write lock held,
    /// commit under way), else after the use is durable. `during`'s result is Some whenever
    /// the use was taken; it may also be Some when the commit then failed, in which case the
    /// use was not recorded and the run must not start.
    pub fn take_beside<T>(
        &mut self,
        during: impl FnOnce() -> T,
    ) -> (Result<(), UseStop>, Option<T>) {
        let mut during = Some(during);
        let mut ran = None;
        let (store, answer) = match std::mem::replace(&mut self.state, State::Spent) {
            State::Taking(answer, rx) => {
                // A message: granted, commit under way. The sender dropped without one: the
                // thread ended refused, failed or dead.
                if rx.recv().is_ok() {
                    ran = during.take().map(|f| f());
                }
                // No answer: the thread died (a panic) before it gave one.
                answer.recv().unwrap_or((None, Err(UseStop::Lost(None))))
            }
            State::NoThread(e) => (None, Err(UseStop::Lost(Some(e)))),
            State::Closed(dir) => open_and_take(&dir, &self.record, &self.run_id, &mut || {}),
            State::Open(store) => take_on(store, &self.record, &self.run_id, &mut || {}),
            State::Decided(_) | State::Spent => (None, Err(UseStop::Lost(None))),
        };
        self.state = State::Decided(store);
        let answer = match answer {
            Ok(()) => {
                self.consumed = true;
                Ok(())
            }
            Err(UseStop::Refused(r)) => {
                self.refusal = Some(r.clone());
                Err(UseStop::Refused(r))
            }
            Err(other) => Err(other),
        };
        if answer.is_ok() && ran.is_none() {
            ran = during.take().map(|f| f());
        }
        (answer, ran)
    }

    /// The ledger's refusal, when [`take`](Self::take) was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// Records how the run ended, when it consumed a use (a refused or never-started run has
    /// nothing to record).
    pub fn finish(&mut self, outcome: &str, exit_code: u8) -> Result<(), LedgerError> {
        let (true, State::Decided(Some(ledger))) = (self.consumed, &mut self.state) else {
            return Ok(());
        };
        let end = RunEnd {
            lease_id: self.record.lease_id.clone(),
            run_id: self.run_id.clone(),
            outcome: outcome.to_owned(),
            exit_code,
        };
        ledger.record_end(&end, OffsetDateTime::now_utc())
    }
}

/// Opens the embedded ledger of `dir` and takes one use of `record` on it; `granted` as in
/// [`Ledger::consume_announced`].
fn open_and_take(
    dir: &Path,
    record: &LeaseRecord,
    run_id: &str,
    granted: &mut dyn FnMut(),
) -> Taken {
    match FileLedger::open_in(dir) {
        Ok(l) => {
            crate::timeline::mark("ledger opened");
            take_on(Some(Box::new(l)), record, run_id, granted)
        }
        Err(e) => (None, Err(UseStop::Failed(e))),
    }
}

/// One use of `record` on `store` (no store: the bench-baseline build, always granted).
fn take_on(
    mut store: Store,
    record: &LeaseRecord,
    run_id: &str,
    granted: &mut dyn FnMut(),
) -> Taken {
    let Some(ledger) = store.as_mut() else {
        return (store, Ok(()));
    };
    let now = OffsetDateTime::now_utc();
    let answer = match ledger.consume_announced(record, run_id, now, granted) {
        Ok(Decision::Granted { .. }) => Ok(()),
        Ok(Decision::Refused(r)) => Err(UseStop::Refused(r)),
        Err(e) => Err(UseStop::Failed(e)),
    };
    crate::timeline::mark("ledger use decided and committed");
    (store, answer)
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
    fn a_use_begun_on_a_thread_is_taken_exactly_once() {
        let tmp = tempfile::tempdir().unwrap();
        // Nothing is opened before begin/take: a state directory that does not exist yet
        // is created by the thread.
        let dir = tmp.path().join("state");
        let mut first = RunUse::in_dir(&dir, record(1), "RUN-1");
        assert!(!dir.exists());
        first.begin();
        first.take().unwrap();
        first.finish("exited", 0).unwrap();
        // A second take of the same RunUse is not a second use.
        assert!(matches!(first.take(), Err(UseStop::Lost(None))));
        let mut second = RunUse::in_dir(&dir, record(1), "RUN-2");
        second.begin();
        let stop = second.take().unwrap_err();
        assert!(matches!(stop, UseStop::Refused(_)), "{stop}");
        assert!(second.refusal().is_some());
        // Without begin, take does the work itself.
        let mut third = RunUse::in_dir(&dir, record(1), "RUN-3");
        assert!(matches!(third.take(), Err(UseStop::Refused(_))));
        let rows = FileLedger::open_in(&dir).unwrap().list().unwrap();
        assert_eq!(
            (rows[0].used, rows[0].last_run_id.as_deref()),
            (1, Some("RUN-1"))
        );
    }

    #[test]
    fn the_start_record_is_written_beside_the_commit_only_for_a_grant() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let mut first = RunUse::in_dir(&dir, record(1), "RUN-1");
        first.begin();
        let (taken, ran) = first.take_beside(|| "STARTED");
        assert!(taken.is_ok(), "{taken:?}");
        assert_eq!(ran, Some("STARTED"));
        first.finish("exited", 0).unwrap();
        // Refused: the closure never runs, on the thread's path or the inline one.
        let mut second = RunUse::in_dir(&dir, record(1), "RUN-2");
        second.begin();
        let (taken, ran) = second.take_beside(|| unreachable!("no start for a refusal"));
        assert!(matches!(taken, Err(UseStop::Refused(_))), "{taken:?}");
        assert!(ran.is_none());
        let mut third = RunUse::in_dir(&dir, record(2), "RUN-3");
        let (taken, ran) = third.take_beside(|| 3);
        assert!(taken.is_ok(), "{taken:?}");
        assert_eq!(ran, Some(3));
        let rows = FileLedger::open_in(&dir).unwrap().list().unwrap();
        assert_eq!(rows[0].used, 2);
    }

    /// A store whose commit fails after it announced the grant.
    struct FailsAtCommit;

    impl Ledger for FailsAtCommit {
        fn consume_announced(
            &mut self,
            _: &LeaseRecord,
            _: &str,
            _: OffsetDateTime,
            granted: &mut dyn FnMut(),
        ) -> Result<Decision, LedgerError> {
            granted();
            Err(LedgerError::Io {
                op: "committing a use to",
                path: "ledger/x.lease".into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        }
        fn record_end(&mut self, _: &RunEnd, _: OffsetDateTime) -> Result<(), LedgerError> {
            unreachable!("a use that was not recorded has no end to record")
        }
        fn revoke(
            &mut self,
            _: &str,
            _: Option<&LeaseRecord>,
            _: &str,
            _: &str,
            _: OffsetDateTime,
        ) -> Result<super::super::Revoked, LedgerError> {
            unreachable!()
        }
        fn list(&mut self) -> Result<Vec<super::super::LeaseStatus>, LedgerError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_commit_failing_after_the_grant_stops_the_run_though_its_start_was_written() {
        let mut u = RunUse::with(Box::new(FailsAtCommit), record(1), "RUN-1");
        u.begin();
        let (taken, ran) = u.take_beside(|| "STARTED");
        // The caller wrote its record beside the commit, and learns the use was not taken.
        assert_eq!(ran, Some("STARTED"));
        let stop = taken.unwrap_err();
        assert!(matches!(stop, UseStop::Failed(_)), "{stop}");
        assert!(stop.to_string().contains("committing a use to"), "{stop}");
        // Nothing was consumed, so nothing is recorded at the end (record_end would panic).
        u.finish("setup_failed", 125).unwrap();
    }

    #[test]
    fn a_ledger_that_cannot_open_stops_the_run_from_the_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let mut u = RunUse::in_dir(&file.join("state"), record(1), "RUN-1");
        u.begin();
        let stop = u.take().unwrap_err();
        assert!(matches!(stop, UseStop::Failed(_)), "{stop}");
        assert!(u.refusal().is_none());
        u.finish("setup_failed", 125).unwrap();
    }

    #[test]
    fn a_refused_use_records_nothing_and_names_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let open = || Box::new(FileLedger::open_in(tmp.path()).unwrap());
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
        let rows = FileLedger::open_in(tmp.path()).unwrap().list().unwrap();
        assert_eq!(rows[0].last_run_id.as_deref(), Some("RUN-1"));
        assert_eq!(rows[0].last_outcome.as_deref(), Some("exited"));
    }
}
