//! Process hardening for invariant 1 (content never at rest): memory locked so nothing is
//! swapped out, no core dumps. Each step that the environment does not permit is reported as a
//! warning and the node carries on (development machines, unprivileged test runs).
//!
//! Memory is locked with `MCL_ONFAULT`: a page is locked when it is first touched instead of
//! when it is mapped. A page that holds message content has been touched, so it is locked
//! before the content lands in it, exactly as without the flag; what changes is that untouched
//! reservations (2 MiB thread stacks, malloc arenas, I/O buffers, the unused parts of shared
//! libraries) no longer become resident. Without it, every thread of the blocking pool costs
//! 2 MiB of RAM and an idle node holds every page of every library it maps.

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
        let everything = MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE;
        // nix 0.30 has no name for MCL_ONFAULT (Linux 4.4); kernels without it refuse the flag
        // with EINVAL, and locking everything up front is the fallback.
        let on_fault = everything | MlockAllFlags::from_bits_retain(nix::libc::MCL_ONFAULT);
        match mlockall(on_fault).or_else(|_| mlockall(everything)) {
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

/// Whether a connection comes from the box itself: a peer of exactly 127.0.0.1 or ::1 (the
/// kernel drops packets from the network that claim a loopback source). The SMTP and HTTPS
/// listeners keep a few slots beyond their limits for such peers, so the boot's health check
/// always gets in, however many remote clients hold the rest (issue 16: forced rollback).
pub fn is_the_box_itself(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
        || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
        || ip == IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())
}
