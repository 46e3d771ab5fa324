//! Process hardening, the only module allowed `unsafe`: the libc calls that
//! keep key material out of core dumps and swap, and the one that lets the
//! process open the descriptors its connection limit promises. Each call
//! passes constants, stack values or a live slice, and checks the return
//! code.
#![allow(unsafe_code)]

/// Turns core dumps off (`RLIMIT_CORE` 0) and marks the process
/// non-dumpable (`PR_SET_DUMPABLE` 0), so neither a crash nor a ptrace
/// attach by another user can copy keys out of memory. Returns which steps
/// failed, for a warning; failing here is not fatal.
pub fn disable_core_dumps() -> Vec<&'static str> {
    let mut failed = Vec::new();
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid, initialized rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        failed.push("setrlimit(RLIMIT_CORE)");
    }
    // SAFETY: PR_SET_DUMPABLE takes one integer argument; the rest are unused.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        failed.push("prctl(PR_SET_DUMPABLE)");
    }
    failed
}

/// Replaces the panic message printed to stderr with a log line naming
/// only where the panic happened and on which thread. A panic's message is
/// whatever its code formatted, and a library's assertion may format the
/// values it compared: plaintext, a key, a ciphertext. (The vault's own
/// code may not panic: the workspace denies `panic`, `unwrap`, `expect`
/// and indexing outside tests.) For the server process only: tests keep
/// the default hook and their messages.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let at = at.as_deref().unwrap_or("unknown");
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        // Asked of this very event (its target and fields), so a filter
        // that drops it cannot hide the panic.
        if tracing::event_enabled!(tracing::Level::ERROR, message, at, thread) {
            tracing::error!(
                at,
                thread,
                "A thread panicked (its message is not logged: it could hold data)"
            );
        } else {
            use std::io::Write;
            // Not `eprintln!`, which panics (in the hook: aborts) when
            // stderr is gone.
            let _ = writeln!(
                std::io::stderr(),
                "vault: a thread panicked at {at} (thread {thread}); its message is withheld"
            );
        }
    }));
}

/// Panics the hook of [`quiet_panics`] has seen: `vault_panics_total`.
static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many panics the server's hook has seen since start.
pub fn panics() -> u64 {
    PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Moves the variable `name` out of the environment: returns its value (in
/// a buffer wiped on drop), overwrites the bytes the environment held with
/// zeros, where `/proc/<pid>/environ` and a core file would find them, and
/// removes the name, so no child process inherits it. `None` when it is
/// unset or not UTF-8 (then it is left as it is). Call it while the
/// process has one thread: the environment is not safe to change while
/// another thread may read it.
pub fn take_env(name: &str) -> Option<zeroize::Zeroizing<String>> {
    use zeroize::Zeroize;
    // getenv("A=B") would match the variable A with a value starting "B=".
    if name.is_empty() || name.contains('=') {
        return None;
    }
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the
    // call; getenv returns NULL or a pointer into the environment.
    let value = unsafe { libc::getenv(c_name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a non-NULL getenv result is a NUL-terminated string.
    let len = unsafe { libc::strlen(value) };
    // SAFETY: the `len` bytes before its NUL belong to the environment
    // string, writable process memory; nothing else holds a reference to
    // them while the process has one thread.
    let bytes = unsafe { std::slice::from_raw_parts_mut(value.cast::<u8>(), len) };
    let mut out = zeroize::Zeroizing::new(String::with_capacity(len));
    out.push_str(std::str::from_utf8(bytes).ok()?);
    bytes.zeroize();
    std::env::remove_var(name);
    Some(out)
}

/// Turns a terminal's echo off until the guard drops (then restores its
/// settings): for a secret typed at it. `None` when `fd` is not a terminal
/// or its settings cannot be changed.
pub fn echo_off(fd: std::os::fd::BorrowedFd<'_>) -> Option<EchoGuard> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `raw` is a descriptor borrowed for this call; `saved` is a
    // valid, writable termios.
    if unsafe { libc::tcgetattr(raw, &mut saved) } != 0 {
        return None;
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
    // TCSAFLUSH, as getpass does: what was typed ahead (and echoed)
    // before the prompt is dropped, not taken as the secret.
    // SAFETY: as above, with a termios read from this terminal.
    if unsafe { libc::tcsetattr(raw, libc::TCSAFLUSH, &quiet) } != 0 {
        return None;
    }
    Some(EchoGuard { fd: raw, saved })
}

/// Restores a terminal's settings as [`echo_off`] found them.
pub struct EchoGuard {
    fd: std::os::fd::RawFd,
    saved: libc::termios,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        // SAFETY: the settings read from this descriptor, which stays open
        // for the process (standard input).
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Raises the soft limit on open descriptors to the hard limit, which any
/// process may do, and returns the soft limit now in force (`None` when it
/// cannot be read). The common default of 1,024 is below the default
/// `server.max-connections` (4,096): connections would otherwise take the
/// descriptors RocksDB needs for its files.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(lim.rlim_cur)
}

/// Locks the pages holding `bytes` in RAM (`mlock`) so key material is never
/// written to swap. Best effort: an unprivileged process may exceed
/// `RLIMIT_MEMLOCK`, and then the key is still zeroized on drop. The pages
/// are not unlocked on drop: they may hold other keys (locks do not nest),
/// and a locked page that is reused costs nothing more.
pub fn lock_in_memory(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    // Keys are made per request (a subject's value key): one system call
    // per page and thread, not per key.
    thread_local! {
        static LOCKED: std::cell::RefCell<std::collections::HashSet<usize>> = Default::default();
    }
    const PAGE: usize = 4096;
    let first = bytes.as_ptr() as usize / PAGE;
    let last = (bytes.as_ptr() as usize + bytes.len() - 1) / PAGE;
    let known = LOCKED.with(|l| {
        let l = l.borrow();
        (first..=last).all(|p| l.contains(&p))
    });
    if known {
        return true;
    }
    // SAFETY: the pointer and length describe one live, initialized slice;
    // mlock only changes the paging of the pages that contain it.
    let locked = unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) == 0 };
    if locked {
        LOCKED.with(|l| l.borrow_mut().extend(first..=last));
    }
    locked
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

    /// With a log filter that drops the panic's line, the hook says so on
    /// stderr, still without the message.
    #[test]
    fn a_panic_the_log_would_drop_goes_to_stderr_without_its_message() {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: `fds` is a live array of two descriptors for pipe2(2).
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: dup(2) of the standard error descriptor, which is open.
        let saved = unsafe { libc::dup(2) };
        assert!(saved >= 0);
        // SAFETY: both descriptors are open; 2 is replaced by the pipe.
        assert_eq!(unsafe { libc::dup2(fds[1], 2) }, 2);
        let before = std::panic::take_hook();
        super::quiet_panics();
        let silent = tracing_subscriber::fmt()
            .with_max_level(tracing::level_filters::LevelFilter::OFF)
            .finish();
        let caught = tracing::subscriber::with_default(silent, || {
            std::panic::catch_unwind(|| panic!("the value 350102199003071234"))
        });
        std::panic::set_hook(before);
        // SAFETY: `saved` is open; 2 gets it back, then the copies close.
        unsafe {
            assert_eq!(libc::dup2(saved, 2), 2);
            libc::close(saved);
            libc::close(fds[1]);
        }
        assert!(caught.is_err());
        // SAFETY: the read end is open and owned from here on.
        let mut read = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut out = String::new();
        read.read_to_string(&mut out).unwrap();
        assert!(out.contains("vault: a thread panicked at "), "{out}");
        assert!(out.contains("hardening.rs:"), "{out}");
        assert!(!out.contains("350102199003071234"), "{out}");
    }

    /// A panic's message never reaches the log; where it happened does.
    #[test]
    fn a_panic_is_logged_without_its_message() {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let before = std::panic::take_hook();
        let counted = super::panics();
        super::quiet_panics();
        let line = line!() + 3;
        let caught = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| {
                panic!("the value 350102199003071234 and key 00ff00ff");
            })
        });
        std::panic::set_hook(before);
        assert!(caught.is_err());
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("A thread panicked"), "{log}");
        assert!(log.contains(&format!("hardening.rs:{line}:")), "{log}");
        assert!(!log.contains("350102199003071234"), "{log}");
        assert!(!log.contains("00ff00ff"), "{log}");
        assert!(super::panics() > counted);
    }

    /// On a pseudo-terminal: echo is off while the guard lives, and the
    /// terminal's settings are back as they were after.
    #[test]
    fn echo_is_off_while_the_guard_lives_and_restored_after() {
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        // SAFETY: posix_openpt returns a new descriptor or -1.
        let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(master >= 0);
        // SAFETY: `master` is a new descriptor owned from here on.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        use std::os::fd::AsRawFd;
        // SAFETY: valid master descriptor; ptsname's buffer is copied at once.
        let name = unsafe {
            assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
            assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
            std::ffi::CStr::from_ptr(libc::ptsname(master.as_raw_fd())).to_owned()
        };
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("pty name"))
            .expect("open the pty");
        let echo = || {
            // SAFETY: plain data filled by tcgetattr on an open terminal.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) }, 0);
            t.c_lflag & libc::ECHO != 0
        };
        assert!(echo());
        let guard = super::echo_off(tty.as_fd()).expect("a terminal");
        assert!(!echo());
        drop(guard);
        assert!(echo());
        // Not a terminal: nothing to do.
        let file = tempfile::tempfile().expect("a file");
        assert!(super::echo_off(file.as_fd()).is_none());
    }

    #[test]
    fn the_open_files_limit_ends_at_the_hard_limit() {
        let now = super::raise_open_files_limit().expect("readable");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid, writable rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((now, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }

    #[test]
    fn locking_a_live_buffer_succeeds_or_fails_cleanly() {
        let buf = vec![7u8; 64];
        // Either outcome is allowed (RLIMIT_MEMLOCK); the call must not
        // disturb the bytes.
        let _ = super::lock_in_memory(&buf);
        assert!(super::lock_in_memory(&[]));
        assert_eq!(buf, vec![7u8; 64]);
    }
}
