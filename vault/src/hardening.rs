//! Process hardening, the only module allowed `unsafe`: three libc calls
//! that keep key material out of core dumps and swap. Each call passes
//! constants, stack values or a live slice, and checks the return code.
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
