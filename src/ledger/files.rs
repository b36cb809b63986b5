//! The embedded ledger: one small file per lease in `STATE_DIR/ledger/` (see the module doc of
//! [`crate::ledger`] for the format and why).
//!
//! A lease's file holds its record twice, in two 4 KiB slots, each with a sequence number and
//! a SHA-256 of its contents; the valid slot with the higher sequence number is the record. A
//! write goes to the other slot and is synced (`fdatasync`) before the lock is released, so a
//! crash or a torn write can only ever damage the slot being written: the other one still
//! holds the last durable record. The file's `flock` makes read, decide and write one step
//! for every process sharing the state directory. A run's end goes to a third region,
//! written without a sync; losing it only makes `list` say `unknown`.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    Decision, LeaseRecord, LeaseStatus, Ledger, LedgerError, Revocation, Revoked, RunEnd, UseState,
    decide, io_error, rfc3339,
};

/// The ledger's directory in the state directory.
pub const DIR_NAME: &str = "ledger";

/// How long an operation waits for a lease's lock before refusing (125). A use holds it for
/// one read, one write and one `fdatasync`, well under a millisecond on a healthy disk; 50
/// runners of one lease arriving at once queue for a few tens of milliseconds. 15 s leaves room
/// for a slow or loaded disk while still failing a run that waits on a stuck lock holder long
/// before anyone mistakes it for a hang.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// The size of one record slot; a record is at most this minus [`HEADER`] bytes.
const SLOT: usize = 4096;
/// Where the last run's end is kept, and the room for it.
const END_AT: usize = 2 * SLOT;
const END_SIZE: usize = 512;
/// Every frame (a slot's record, the run's end) starts with its magic (7 bytes) and the format
/// version (1), a sequence number (8, little-endian; 0 for the run's end), the payload's
/// length (4) and a SHA-256 over these 20 bytes and the payload (32).
const HEADER: usize = 52;
/// The frames' magic.
const SLOT_MAGIC: &[u8; 7] = b"calyxLR";
const END_MAGIC: &[u8; 7] = b"calyxLE";
/// The format this build writes; a newer one is refused rather than misread.
const FORMAT: u8 = 1;

/// Longest lease id the ledger keeps (ids calyx issues are 32 characters).
pub const MAX_ID: usize = 512;
/// Longest revocation reason.
pub const MAX_REASON: usize = 1024;
/// A lease's intent, subject and expiry are kept for `list` only, cut to this many bytes
/// (with `…`): enforcement never reads them.
const MAX_LABEL: usize = 256;

/// What a lease's file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    lease_id: String,
    intent_id: Option<String>,
    subject: Option<String>,
    expires_at: Option<String>,
    max_uses: Option<u32>,
    used: u32,
    /// When the ledger first heard of the lease (Unix time, nanoseconds): `list`'s order.
    first_seen_ns: u64,
    revoked: Option<Revocation>,
    /// The latest run that took a use.
    last_run_id: Option<String>,
}

/// How a run ended, in the end region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ended {
    run_id: String,
    outcome: String,
    exit_code: u8,
    ended_at: String,
}

/// A lease's file, opened and locked.
struct Locked {
    file: File,
    path: PathBuf,
    /// Made by this open: its name is synced with the first record.
    created: bool,
    /// The record and the sequence number of its slot (0: none yet).
    stored: Option<Stored>,
    seq: u64,
}

/// The ledger in `STATE_DIR/ledger/`.
pub struct FileLedger {
    dir: PathBuf,
    busy: Duration,
    /// The lease file of the use this ledger took, kept open for the run's end.
    used: Option<(String, File)>,
}

impl std::fmt::Debug for FileLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLedger")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FileLedger {
    /// Opens the ledger of `state_dir`, creating the state directory and the ledger's (0700).
    /// A `ledger.sqlite` left by an earlier calyx is imported first (see [`super::import`]).
    pub fn open_in(state_dir: &Path) -> Result<FileLedger, LedgerError> {
        Self::open_with(state_dir, BUSY_TIMEOUT)
    }

    /// Opens the ledger if one exists (for read-mostly commands that should not create one).
    pub fn open_existing(state_dir: &Path) -> Result<Option<FileLedger>, LedgerError> {
        use super::import::present;
        if present(&state_dir.join(DIR_NAME))?
            || present(&state_dir.join(super::import::FILE_NAME))?
        {
            return Self::open_in(state_dir).map(Some);
        }
        Ok(None)
    }

    /// [`open_in`](Self::open_in) with another busy timeout (tests).
    pub fn open_with(state_dir: &Path, busy: Duration) -> Result<FileLedger, LedgerError> {
        prepare_dir(state_dir, "state directory")?;
        let dir = state_dir.join(DIR_NAME);
        let made = prepare_dir(&dir, "ledger directory")?;
        if made {
            // The directory's own name, once: every lease file's name is synced in it.
            sync_dir(state_dir)?;
        }
        let ledger = FileLedger {
            dir,
            busy,
            used: None,
        };
        super::import::if_present(state_dir, &ledger)?;
        Ok(ledger)
    }

    /// The ledger's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// What the ledger holds of `lease_id` (no use taken and no revocation when it is
    /// unknown): `calyx lease verify` asks this of one lease rather than listing them all.
    pub fn state_of(&self, lease_id: &str) -> Result<UseState, LedgerError> {
        check_id(lease_id)?;
        let path = self.file_of(lease_id);
        let Some(file) = open_lease_file(&path)? else {
            return Ok(UseState::default());
        };
        let locked = holding(self.lock(file, path, false, false, "reading")?, lease_id)?;
        Ok(locked.stored.map_or_else(UseState::default, |s| UseState {
            used: s.used,
            revoked: s.revoked,
        }))
    }

    /// The file of `lease_id`: the first 128 bits of its SHA-256 in hex (any id is a safe
    /// file name that way; the file holds the id itself, which every read checks).
    fn file_of(&self, lease_id: &str) -> PathBuf {
        let digest = Sha256::digest(lease_id.as_bytes());
        self.dir
            .join(format!("{}.lease", hex::encode(&digest[..16])))
    }

    /// Opens the file of `lease_id` for writing (creating it when missing), takes its
    /// exclusive lock and reads its record.
    fn open_locked(&self, lease_id: &str, op: &'static str) -> Result<Locked, LedgerError> {
        check_id(lease_id)?;
        let path = self.file_of(lease_id);
        let (file, created) = create_lease_file(&path)?;
        holding(self.lock(file, path, created, true, op)?, lease_id)
    }

    /// Takes the file's lock (waiting up to the busy timeout) and reads it.
    fn lock(
        &self,
        file: File,
        path: PathBuf,
        created: bool,
        exclusive: bool,
        op: &'static str,
    ) -> Result<Locked, LedgerError> {
        let deadline = Instant::now() + self.busy;
        let mut pause = Duration::from_micros(100);
        loop {
            match crate::sys::lock::try_lock(file.as_fd(), exclusive) {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Ok(false) => {
                    return Err(LedgerError::Busy {
                        op,
                        path,
                        secs: self.busy.as_secs(),
                    });
                }
                Err(source) => {
                    return Err(LedgerError::Io {
                        op: "locking",
                        path,
                        source,
                    });
                }
            }
        }
        let (stored, seq) = read_record(&file, &path)?;
        Ok(Locked {
            file,
            path,
            created,
            stored,
            seq,
        })
    }

    /// Writes `stored` as the next record of `locked` and syncs it (and, for a new file, its
    /// name). `before_sync` runs between the write and the sync.
    fn commit(
        &self,
        locked: &mut Locked,
        stored: &Stored,
        before_sync: &mut dyn FnMut(),
    ) -> Result<(), LedgerError> {
        let seq = locked.seq + 1;
        let slot = encode_slot(seq, stored, &locked.path)?;
        let at = (seq % 2) * SLOT as u64;
        locked
            .file
            .write_all_at(&slot, at)
            .map_err(io_error("writing", &locked.path))?;
        before_sync();
        locked
            .file
            .sync_data()
            .map_err(io_error("syncing", &locked.path))?;
        if locked.created {
            sync_dir(&self.dir)?;
            locked.created = false;
        }
        locked.seq = seq;
        locked.stored = Some(stored.clone());
        Ok(())
    }

    /// Stores an imported lease in a new or existing file without deciding anything. An
    /// existing record keeps the larger count and its own revocation; an imported reason
    /// longer than [`MAX_REASON`] is cut (the old store had no limit), never the count.
    pub(super) fn merge(&self, imported: &ImportedLease) -> Result<(), LedgerError> {
        let mut locked = self.open_locked(&imported.lease_id, "importing into")?;
        let mut s = locked.stored.clone().unwrap_or_else(|| Stored {
            lease_id: imported.lease_id.clone(),
            first_seen_ns: imported.first_seen_ns,
            ..Stored::default()
        });
        s.intent_id = s
            .intent_id
            .or_else(|| imported.intent_id.as_deref().map(label));
        s.subject = s.subject.or_else(|| imported.subject.as_deref().map(label));
        s.expires_at = s
            .expires_at
            .or_else(|| imported.expires_at.as_deref().map(label));
        s.max_uses = s.max_uses.or(imported.max_uses);
        s.used = s.used.max(imported.used);
        s.revoked = s.revoked.or_else(|| {
            imported.revoked.as_ref().map(|r| Revocation {
                at: cut(&r.at, MAX_LABEL),
                by: cut(&r.by, MAX_LABEL),
                reason: cut(&r.reason, MAX_REASON),
            })
        });
        if s.last_run_id.is_none() {
            s.last_run_id = imported.last_run_id.clone();
        }
        self.commit(&mut locked, &s, &mut || {})?;
        if let (Some(run_id), Some(outcome), Some(code)) = (
            &imported.last_run_id,
            &imported.last_outcome,
            imported.last_exit_code,
        ) && s.last_run_id.as_ref() == Some(run_id)
        {
            let ended = Ended {
                run_id: run_id.clone(),
                outcome: outcome.clone(),
                exit_code: code,
                ended_at: imported.ended_at.clone().unwrap_or_default(),
            };
            write_end(&locked.file, &locked.path, &ended)?;
            locked
                .file
                .sync_data()
                .map_err(io_error("syncing", &locked.path))?;
        }
        Ok(())
    }
}

/// One lease as an earlier calyx's SQLite ledger held it (see [`super::import`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ImportedLease {
    pub lease_id: String,
    pub intent_id: Option<String>,
    pub subject: Option<String>,
    pub expires_at: Option<String>,
    pub max_uses: Option<u32>,
    pub used: u32,
    pub first_seen_ns: u64,
    pub revoked: Option<Revocation>,
    pub last_run_id: Option<String>,
    pub last_outcome: Option<String>,
    pub last_exit_code: Option<u8>,
    pub ended_at: Option<String>,
}

impl Ledger for FileLedger {
    fn consume_announced(
        &mut self,
        lease: &LeaseRecord,
        run_id: &str,
        now: OffsetDateTime,
        granted: &mut dyn FnMut(),
    ) -> Result<Decision, LedgerError> {
        // The exclusive lock is taken before the read, so the count read is the count the
        // increment applies to, whatever other runners do.
        let mut locked = self.open_locked(&lease.lease_id, "taking a use of")?;
        let state = locked
            .stored
            .as_ref()
            .map_or_else(UseState::default, |s| UseState {
                used: s.used,
                revoked: s.revoked.clone(),
            });
        let decision = decide(&lease.lease_id, lease.max_uses, &state);
        let Decision::Granted { used, .. } = decision else {
            // Refused: nothing to write.
            return Ok(decision);
        };
        // The verified lease's fields replace any stored from an unauthenticated file.
        let stored = Stored {
            lease_id: lease.lease_id.clone(),
            intent_id: Some(label(&lease.intent_id)),
            subject: Some(label(&lease.subject)),
            expires_at: Some(label(&lease.expires_at)),
            max_uses: Some(lease.max_uses),
            used,
            first_seen_ns: locked
                .stored
                .as_ref()
                .map_or_else(|| unix_ns(now), |s| s.first_seen_ns),
            revoked: None,
            last_run_id: Some(run_id.to_owned()),
        };
        // The lock is held until the sync, so no other runner can take this use meanwhile;
        // the caller's own sync may run beside this one.
        self.commit(&mut locked, &stored, &mut || granted())?;
        // Kept open for the run's end, unlocked: an open file description holds its flock.
        crate::sys::lock::unlock(locked.file.as_fd())
            .map_err(io_error("unlocking", &locked.path))?;
        self.used = Some((lease.lease_id.clone(), locked.file));
        Ok(decision)
    }

    fn record_end(&mut self, run: &RunEnd, now: OffsetDateTime) -> Result<(), LedgerError> {
        let locked = match self.used.take() {
            Some((id, file)) if id == run.lease_id => {
                let path = self.file_of(&id);
                self.lock(file, path, false, true, "recording the end of a run in")?
            }
            _ => self.open_locked(&run.lease_id, "recording the end of a run in")?,
        };
        // Only the latest run's end is kept: `list` shows the latest run.
        if locked.stored.as_ref().and_then(|s| s.last_run_id.as_ref()) != Some(&run.run_id) {
            return Ok(());
        }
        let ended = Ended {
            run_id: run.run_id.clone(),
            outcome: run.outcome.clone(),
            exit_code: run.exit_code,
            ended_at: rfc3339(now),
        };
        // No sync: the run is over, its exit code decided, and the audit log's synced closing
        // record is the durable account of it.
        write_end(&locked.file, &locked.path, &ended)
    }

    fn revoke(
        &mut self,
        lease_id: &str,
        record: Option<&LeaseRecord>,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Revoked, LedgerError> {
        if reason.len() > MAX_REASON {
            return Err(LedgerError::TooLong {
                what: "revocation reason",
                len: reason.len(),
                max: MAX_REASON,
            });
        }
        let mut locked = self.open_locked(lease_id, "revoking in")?;
        if let Some(first) = locked.stored.as_ref().and_then(|s| s.revoked.clone()) {
            return Ok(Revoked::Already(first));
        }
        let revocation = Revocation {
            at: rfc3339(now),
            by: by.to_owned(),
            reason: reason.to_owned(),
        };
        // Fields from a lease file are unauthenticated: they fill gaps, never replace.
        let mut s = locked.stored.clone().unwrap_or_else(|| Stored {
            lease_id: lease_id.to_owned(),
            first_seen_ns: unix_ns(now),
            ..Stored::default()
        });
        if let Some(r) = record {
            s.intent_id = s.intent_id.or_else(|| Some(label(&r.intent_id)));
            s.subject = s.subject.or_else(|| Some(label(&r.subject)));
            s.expires_at = s.expires_at.or_else(|| Some(label(&r.expires_at)));
            s.max_uses = s.max_uses.or(Some(r.max_uses));
        }
        s.revoked = Some(revocation.clone());
        self.commit(&mut locked, &s, &mut || {})?;
        Ok(Revoked::Now(revocation))
    }

    fn list(&mut self) -> Result<Vec<LeaseStatus>, LedgerError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_error("listing", &self.dir))?;
        let mut rows = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("listing", &self.dir))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "lease") {
                continue;
            }
            let Some(file) = open_lease_file(&path)? else {
                continue;
            };
            let locked = self.lock(file, path, false, false, "listing")?;
            let Some(s) = locked.stored else { continue };
            let ended = read_end(&locked.file, &locked.path)?
                .filter(|e| s.last_run_id.as_ref() == Some(&e.run_id));
            rows.push((s.first_seen_ns, status_of(s, ended)));
        }
        rows.sort_by(|a, b| (&a.0, &a.1.lease_id).cmp(&(&b.0, &b.1.lease_id)));
        Ok(rows.into_iter().map(|(_, row)| row).collect())
    }
}

/// `locked`, when its record (if any) is `lease_id`'s.
fn holding(locked: Locked, lease_id: &str) -> Result<Locked, LedgerError> {
    match &locked.stored {
        Some(s) if s.lease_id != lease_id => Err(LedgerError::Damaged {
            path: locked.path.clone(),
            why: format!("it holds lease {}, not {lease_id}", s.lease_id),
        }),
        _ => Ok(locked),
    }
}

fn status_of(s: Stored, ended: Option<Ended>) -> LeaseStatus {
    let uses_left = match (&s.revoked, s.max_uses) {
        (Some(_), _) => Some(0),
        (None, Some(m)) => Some(m.saturating_sub(s.used)),
        (None, None) => None,
    };
    let last_outcome = s.last_run_id.as_ref().map(|_| {
        ended
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |e| e.outcome.clone())
    });
    LeaseStatus {
        lease_id: s.lease_id,
        intent_id: s.intent_id,
        subject: s.subject,
        expires_at: s.expires_at,
        used: s.used,
        max_uses: s.max_uses,
        uses_left,
        last_outcome,
        last_exit_code: ended.map(|e| e.exit_code),
        last_run_id: s.last_run_id,
        revoked: s.revoked,
    }
}

fn unix_ns(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0)
}

/// A display-only field, cut to [`MAX_LABEL`] bytes.
fn label(s: &str) -> String {
    cut(s, MAX_LABEL)
}

/// `s` in at most `max` bytes, cut at a character boundary and ending in `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn check_id(lease_id: &str) -> Result<(), LedgerError> {
    if lease_id.len() > MAX_ID {
        return Err(LedgerError::TooLong {
            what: "lease id",
            len: lease_id.len(),
            max: MAX_ID,
        });
    }
    Ok(())
}

/// Opens a lease's file read-only: `None` when it does not exist.
fn open_lease_file(path: &Path) -> Result<Option<File>, LedgerError> {
    match opened(path, false) {
        Ok(f) => Ok(Some(f)),
        Err(LedgerError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens a lease's file for writing, made 0600 when missing (true: made here). The file of a
/// lease used before exists: that open comes first, one system call for every later use.
fn create_lease_file(path: &Path) -> Result<(File, bool), LedgerError> {
    let io_kind = |e: &LedgerError, kind| matches!(e, LedgerError::Io { source, .. } if source.kind() == kind);
    match writable(path) {
        Err(e) if io_kind(&e, ErrorKind::NotFound) => match opened(path, true) {
            Ok(f) => Ok((f, true)),
            // Made by another runner in between.
            Err(e) if io_kind(&e, ErrorKind::AlreadyExists) => Ok((writable(path)?, false)),
            Err(e) => Err(e),
        },
        other => other.map(|f| (f, false)),
    }
}

fn writable(path: &Path) -> Result<File, LedgerError> {
    open_checked(path, OpenOptions::new().read(true).write(true))
}

/// `new`: created 0600 (failing if it exists); otherwise opened read-only.
fn opened(path: &Path, new: bool) -> Result<File, LedgerError> {
    let mut o = OpenOptions::new();
    o.read(true);
    if new {
        o.write(true).create_new(true).mode(0o600);
    }
    open_checked(path, &mut o)
}

/// Opens without following a symlink, and refuses anything but a regular file that only its
/// owner may write.
fn open_checked(path: &Path, o: &mut OpenOptions) -> Result<File, LedgerError> {
    let file = o
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_error("opening", path))?;
    let meta = file.metadata().map_err(io_error("inspecting", path))?;
    if !meta.is_file() {
        return Err(LedgerError::Damaged {
            path: path.to_owned(),
            why: "it is not a regular file".to_owned(),
        });
    }
    check_mode("ledger file", path, meta.mode(), 0o600)?;
    Ok(file)
}

/// Reads both slots: the valid one with the higher sequence number, or none for a new file.
fn read_record(file: &File, path: &Path) -> Result<(Option<Stored>, u64), LedgerError> {
    let mut buf = vec![0u8; 2 * SLOT];
    let n = read_upto(file, &mut buf, 0, path)?;
    let buf = &buf[..n];
    if buf.iter().all(|&b| b == 0) {
        return Ok((None, 0));
    }
    let mut best: Option<(u64, Stored)> = None;
    for (index, slot) in buf.chunks(SLOT).enumerate() {
        match decode_slot(slot, path)? {
            Some((seq, _)) if seq % 2 != index as u64 => {
                return Err(LedgerError::Damaged {
                    path: path.to_owned(),
                    why: format!("slot {index} holds a record of the other slot"),
                });
            }
            Some((seq, stored)) if best.as_ref().is_none_or(|(b, _)| seq > *b) => {
                best = Some((seq, stored));
            }
            _ => {}
        }
    }
    match best {
        Some((seq, stored)) => Ok((Some(stored), seq)),
        // Slot 0 never written and the first record (slot 1) torn: that write was never
        // synced, so nothing it held was granted.
        None if buf[..SLOT.min(buf.len())].iter().all(|&b| b == 0) => Ok((None, 0)),
        None => Err(LedgerError::Damaged {
            path: path.to_owned(),
            why: "neither record slot is intact".to_owned(),
        }),
    }
}

fn read_upto(file: &File, buf: &mut [u8], at: u64, path: &Path) -> Result<usize, LedgerError> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(LedgerError::Io {
                    op: "reading",
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(n)
}

fn encode_slot(seq: u64, stored: &Stored, path: &Path) -> Result<Vec<u8>, LedgerError> {
    let payload = serde_json::to_vec(stored).map_err(|e| LedgerError::Damaged {
        path: path.to_owned(),
        why: format!("encoding its record: {e}"),
    })?;
    frame(SLOT_MAGIC, seq, &payload, SLOT, "lease record")
}

/// A slot's record: None when it is empty or does not check out (torn or never written).
fn decode_slot(slot: &[u8], path: &Path) -> Result<Option<(u64, Stored)>, LedgerError> {
    let Some((seq, payload)) = unframe(slot, SLOT_MAGIC, path)? else {
        return Ok(None);
    };
    // Checksummed yet unreadable: written by something else, not torn.
    let stored = serde_json::from_slice(payload).map_err(|e| LedgerError::Damaged {
        path: path.to_owned(),
        why: format!("its record does not parse: {e}"),
    })?;
    Ok(Some((seq, stored)))
}

fn write_end(file: &File, path: &Path, ended: &Ended) -> Result<(), LedgerError> {
    let payload = serde_json::to_vec(ended).map_err(|e| LedgerError::Damaged {
        path: path.to_owned(),
        why: format!("encoding a run's end: {e}"),
    })?;
    let region = frame(END_MAGIC, 0, &payload, END_SIZE, "run end")?;
    file.write_all_at(&region, END_AT as u64)
        .map_err(io_error("writing a run's end to", path))
}

/// The last run's end, if one was recorded and is intact.
fn read_end(file: &File, path: &Path) -> Result<Option<Ended>, LedgerError> {
    let mut buf = [0u8; END_SIZE];
    let n = read_upto(file, &mut buf, END_AT as u64, path)?;
    Ok(unframe(&buf[..n], END_MAGIC, path)?.and_then(|(_, p)| serde_json::from_slice(p).ok()))
}

/// `payload` framed (see [`HEADER`]), refused when the frame would not fit in `room`.
fn frame(
    magic: &[u8; 7],
    seq: u64,
    payload: &[u8],
    room: usize,
    what: &'static str,
) -> Result<Vec<u8>, LedgerError> {
    if HEADER + payload.len() > room {
        return Err(LedgerError::TooLong {
            what,
            len: payload.len(),
            max: room - HEADER,
        });
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(magic);
    out.push(FORMAT);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let digest = Sha256::new()
        .chain_update(&out[..20])
        .chain_update(payload)
        .finalize();
    out.extend_from_slice(&digest);
    out.extend_from_slice(payload);
    Ok(out)
}

/// A frame's sequence number and payload: None when `buf` holds no frame with `magic` whose
/// digest checks out (empty, torn, never written); an error for a newer format.
fn unframe<'a>(
    buf: &'a [u8],
    magic: &[u8; 7],
    path: &Path,
) -> Result<Option<(u64, &'a [u8])>, LedgerError> {
    if buf.len() < HEADER || &buf[..7] != magic {
        return Ok(None);
    }
    if buf[7] > FORMAT {
        return Err(LedgerError::Format {
            path: path.to_owned(),
            found: buf[7],
            known: FORMAT,
        });
    }
    let seq = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(buf[16..20].try_into().unwrap_or_default()) as usize;
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Ok(None);
    };
    let digest = Sha256::new()
        .chain_update(&buf[..20])
        .chain_update(payload)
        .finalize();
    if digest.as_slice() != &buf[20..HEADER] {
        return Ok(None);
    }
    Ok(Some((seq, payload)))
}

/// Makes the names of new files in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing the directory", dir))
}

/// Creates `dir` (0700) if missing, and refuses one that others may write: they could delete
/// the ledger's files and with them every count and revocation. True when it was made here.
fn prepare_dir(dir: &Path, what: &'static str) -> Result<bool, LedgerError> {
    // Looked at first: it exists at every run but a state directory's first.
    let (meta, made) = match std::fs::metadata(dir) {
        Ok(meta) => (meta, false),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error("creating the directory", dir))?;
            (
                std::fs::metadata(dir).map_err(io_error("inspecting", dir))?,
                true,
            )
        }
        Err(e) => return Err(io_error("inspecting", dir)(e)),
    };
    if !meta.is_dir() {
        return Err(LedgerError::Io {
            op: "using as a directory",
            path: dir.to_owned(),
            source: std::io::Error::from(ErrorKind::NotADirectory),
        });
    }
    check_mode(what, dir, meta.mode(), 0o700)?;
    Ok(made)
}

pub(super) fn check_mode(
    what: &'static str,
    path: &Path,
    mode: u32,
    fix: u32,
) -> Result<(), LedgerError> {
    if mode & 0o022 != 0 {
        return Err(LedgerError::Unsafe {
            what,
            path: path.to_owned(),
            mode: mode & 0o7777,
            fix,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;
