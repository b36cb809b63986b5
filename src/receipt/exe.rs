//! The executable digest of a run, kept off the start-up path where that is safe.
//!
//! A pinned command needs no work: init hashes the opened file and executes that same fd, so
//! the pinned digest is the executed file's. Otherwise calyx-run hashes the host file at argv[0]
//! (the view binds system paths and grants at the same place, so it is the file the sandbox
//! executes). Hashing a large interpreter costs milliseconds (python3, 6.8 MB: 5-20 ms here),
//! as much as the whole start-up, so the file is opened before the clone and hashed on a
//! thread started once the payload is released, while it runs; the result is
//! collected after the run. The payload cannot change the file meanwhile when it lies outside
//! every write grant (read-only binds). When argv[0] lies inside a write grant the payload
//! could rewrite it, so it is hashed synchronously before the clone instead.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::{ExeDigestSource, Executable};
use crate::plan::{Access, MountStep, Plan};

/// Hashes everything `file` reads.
fn sha256_reader(file: &mut dyn Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The executable digest computed at once: the pinned one, or the host file's.
pub fn executable(argv0: &str, pinned: Option<&str>) -> Executable {
    let digest = match pinned {
        Some(pin) => Ok(pin.to_ascii_lowercase()),
        None => File::open(argv0).and_then(|mut f| sha256_reader(&mut f)),
    };
    done(argv0, pinned.is_some(), digest)
}

fn done(argv0: &str, pinned: bool, digest: io::Result<String>) -> Executable {
    let (sha256, source) = match (digest, pinned) {
        (Ok(d), true) => (Some(d), ExeDigestSource::PinnedVerified),
        (Ok(d), false) => (Some(d), ExeDigestSource::HostFile),
        (Err(_), _) => (None, ExeDigestSource::Unavailable),
    };
    Executable {
        path: argv0.to_owned(),
        sha256,
        source,
    }
}

/// Whether `path` lies in a read-write bind.
fn in_write_grant(mounts: &[MountStep], path: &Path) -> bool {
    mounts.iter().any(
        |m| matches!(m, MountStep::Bind { path: p, access: Access::Rw, .. } if path.starts_with(p)),
    )
}

enum State {
    Done(Executable),
    Opened(File),
    Hashing(JoinHandle<io::Result<String>>),
}

/// The digest of a run's executable: decided before the clone, hashed while it runs.
pub struct ExeDigestJob {
    path: String,
    state: State,
}

impl ExeDigestJob {
    /// Before the clone: pinned → done; inside a write grant → hashed now; else the file is
    /// opened now (O_CLOEXEC; init closes every inherited descriptor anyway) for [`Self::start`].
    pub fn prepare(plan: &Plan) -> ExeDigestJob {
        let argv0 = plan.argv.first().map(String::as_str).unwrap_or("");
        Self::prepare_for(argv0, plan.exe_sha256.as_deref(), &plan.mounts)
    }

    /// [`Self::prepare`] from the parts of a plan it needs.
    pub fn prepare_for(argv0: &str, pinned: Option<&str>, mounts: &[MountStep]) -> ExeDigestJob {
        let state = if pinned.is_some() || in_write_grant(mounts, Path::new(argv0)) {
            State::Done(executable(argv0, pinned))
        } else {
            match File::open(argv0) {
                Ok(f) => State::Opened(f),
                Err(e) => State::Done(done(argv0, false, Err(e))),
            }
        };
        ExeDigestJob {
            path: argv0.to_owned(),
            state,
        }
    }

    /// Starts hashing on a thread (call once the sandbox is cloned: the runner stays
    /// single-threaded until then). Hashes inline should the thread not start.
    pub fn start(self) -> ExeDigestJob {
        let state = match self.state {
            State::Opened(mut file) => {
                match std::thread::Builder::new()
                    .name("calyx-exe-hash".into())
                    .spawn(move || sha256_reader(&mut file))
                {
                    Ok(h) => State::Hashing(h),
                    Err(e) => State::Done(done(&self.path, false, Err(e))),
                }
            }
            other => other,
        };
        ExeDigestJob {
            path: self.path,
            state,
        }
    }

    /// The result (waits for the thread; hashes inline when never started).
    pub fn finish(self) -> Executable {
        match self.state {
            State::Done(e) => e,
            State::Opened(mut file) => done(&self.path, false, sha256_reader(&mut file)),
            State::Hashing(h) => {
                let digest = h
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked")));
                done(&self.path, false, digest)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn executable_digest_says_where_it_comes_from() {
        assert_eq!(
            executable("/x", Some("AB")).source,
            ExeDigestSource::PinnedVerified
        );
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("exe");
        std::fs::write(&exe, b"hello").unwrap();
        let e = executable(exe.to_str().unwrap(), None);
        assert_eq!(e.source, ExeDigestSource::HostFile);
        assert_eq!(e.sha256.as_deref(), Some(HELLO));
        assert_eq!(
            executable("/nonexistent/exe", None).source,
            ExeDigestSource::Unavailable
        );
    }

    #[test]
    fn write_grant_executables_are_hashed_before_the_run_others_on_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("exe");
        std::fs::write(&exe, b"hello").unwrap();
        let argv0 = exe.display().to_string();
        let mounts = |access| {
            vec![MountStep::Bind {
                path: dir.path().to_owned(),
                dir: true,
                access,
                exec: true,
            }]
        };
        // In a write grant: hashed in prepare, so a rewrite during the run changes nothing.
        let job = ExeDigestJob::prepare_for(&argv0, None, &mounts(Access::Rw));
        std::fs::write(&exe, b"rewritten").unwrap();
        assert_eq!(
            job.finish().sha256.as_deref(),
            Some(sha_of(b"hello").as_str())
        );
        // Read-only: opened in prepare, hashed on the thread.
        std::fs::write(&exe, b"hello").unwrap();
        let job = ExeDigestJob::prepare_for(&argv0, None, &mounts(Access::Ro));
        assert!(matches!(job.state, State::Opened(_)));
        let job = job.start();
        assert!(matches!(job.state, State::Hashing(_)));
        let e = job.finish();
        assert_eq!(
            (e.sha256.as_deref(), e.source),
            (Some(HELLO), ExeDigestSource::HostFile)
        );
    }

    fn sha_of(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }
}
