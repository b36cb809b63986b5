//! Standard output of the `calyx` binary, written through [`outln!`](crate::outln) and
//! [`out!`](crate::out) instead of `println!`, which panics when the write fails: `calyx
//! lease list | head -1` aborted (134) once the list outgrew the pipe's buffer, after the
//! command had done its work.
//!
//! A reader that went away (EPIPE; the binary ignores SIGPIPE) ends the output quietly and
//! leaves the exit code to the command's own result, as `calyx audit tail` always did: the
//! reader took what it wanted. Any other write error (a full disk behind a redirection) is
//! reported once on stderr, and a command that otherwise succeeded exits 1 (its output was
//! its result); what it changed on disk stays changed.

use std::fmt;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};

const OPEN: u8 = 0;
const READER_GONE: u8 = 1;
const FAILED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(OPEN);

/// Writes `args` to standard output and flushes it, returning the error that `print!` would
/// have panicked on (EPIPE, with SIGPIPE ignored, when the reader went away). calyx-run's
/// result and plan use it directly, with their own rules; `calyx` goes through [`write`].
pub fn try_write(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush())
}

/// Writes `args` to standard output and flushes it; after a failed write, nothing more is
/// written. Use [`outln!`](crate::outln) and [`out!`](crate::out).
pub fn write(args: fmt::Arguments<'_>) {
    if STATE.load(Ordering::Relaxed) != OPEN {
        return;
    }
    if let Err(e) = try_write(args) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            STATE.store(READER_GONE, Ordering::Relaxed);
        } else {
            STATE.store(FAILED, Ordering::Relaxed);
            eprintln!("calyx: writing to standard output: {e}");
        }
    }
}

/// The exit code of a command that returned `code`: 1 instead of 0 when its output could not
/// be written for another reason than its reader leaving.
pub fn exit_code(code: u8) -> u8 {
    if code == 0 && STATE.load(Ordering::Relaxed) == FAILED {
        1
    } else {
        code
    }
}

/// `println!` for the `calyx` binary (see [`crate::cli::out`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the `calyx` binary (see [`crate::cli::out`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*))
    };
}
