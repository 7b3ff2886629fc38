//! Process hardening for invariant 1 (content never at rest): memory locked so nothing is
//! swapped out, no core dumps. Each step that the environment does not permit is reported as a
//! warning and the node carries on (development machines, unprivileged test runs).

use nix::sys::mman::{MlockAllFlags, mlockall};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Memory the node may lock before `mlockall(MCL_FUTURE)` would make allocations fail: below
/// this `RLIMIT_MEMLOCK`, locking future memory would turn into out-of-memory aborts, so it is
/// skipped with a warning instead (the image's unit raises the limit).
const MIN_MEMLOCK_FOR_MLOCKALL: u64 = 1 << 30;

/// What `lock_down` achieved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hardening {
    pub memory_locked: bool,
    pub core_dumps_disabled: bool,
    pub not_dumpable: bool,
    pub warnings: Vec<String>,
}

/// Disables core dumps, marks the process non-dumpable and locks its memory.
pub fn lock_down() -> Hardening {
    let mut h = Hardening::default();
    match setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        Ok(()) => h.core_dumps_disabled = true,
        Err(e) => h.warnings.push(format!("cannot set RLIMIT_CORE to 0: {e}")),
    }
    match nix::sys::prctl::set_dumpable(false) {
        Ok(()) => h.not_dumpable = true,
        Err(e) => h
            .warnings
            .push(format!("cannot clear PR_SET_DUMPABLE: {e}")),
    }
    let limit_ok = match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) => {
            soft == nix::sys::resource::RLIM_INFINITY || soft >= MIN_MEMLOCK_FOR_MLOCKALL
        }
        Err(_) => false,
    };
    let privileged = nix::unistd::geteuid().is_root();
    if limit_ok || privileged {
        match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
            Ok(()) => h.memory_locked = true,
            Err(e) => h.warnings.push(format!("mlockall failed: {e}")),
        }
    } else {
        h.warnings.push(
            "RLIMIT_MEMLOCK is too small for mlockall; memory is not locked (set LimitMEMLOCK=infinity)"
                .into(),
        );
    }
    h
}
