//! Process hardening, the only module allowed `unsafe`: two libc calls that
//! keep key material out of core dumps. Each call passes constants and
//! stack values only and checks the return code.
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
