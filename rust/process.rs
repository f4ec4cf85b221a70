//! Who this process is, as the port table needs to know: its pid, its pid and
//! network namespaces, whether it is a fork of the process that registered with
//! a table, and a clock that every process on the host reads alike.
//!
//! Liveness itself is not judged from pids (see `owners.rs`): a pid means
//! nothing in another pid namespace, and is recycled. The pid and the pid
//! namespace are kept only to say who holds a port.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Incremented in every forked child, before it runs anything else.
static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Registers the fork hook once. A process that forks before it ever touched a
/// table has nothing of a table to forget, so installing it lazily is enough.
fn install_fork_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a child handler that only stores to atomics and
        // closes file descriptors, both async-signal-safe as fork requires.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

extern "C" fn after_fork_in_child() {
    FORK_EPOCH.fetch_add(1, Ordering::AcqRel);
    crate::owners::forget_inherited_locks();
}

/// This process's fork generation: it changes in a forked child, so a value
/// saved by the parent no longer matches there.
pub fn fork_epoch() -> u64 {
    install_fork_hook();
    FORK_EPOCH.load(Ordering::Acquire)
}

/// This process's pid as its own pid namespace numbers it.
pub fn my_pid() -> u32 {
    std::process::id()
}

/// The inode of a namespace of this process (`/proc/self/ns/<kind>`), which
/// names it host-wide; 0 where the system does not expose namespaces.
pub fn namespace_id(kind: &str) -> u64 {
    std::fs::metadata(format!("/proc/self/ns/{kind}"))
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Seconds on a clock that all processes on the host share and that never
/// jumps (boot time on Linux, counting suspend; monotonic elsewhere). Leases
/// written by one process are read against it by another.
pub fn clock_seconds() -> u64 {
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant
    // every supported system has, so the call cannot fail.
    unsafe { libc::clock_gettime(CLOCK, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_has_another_epoch() {
        let parent = fork_epoch();
        // SAFETY: the child calls only fork_epoch (an atomic load) and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = fork_epoch() != parent;
            // SAFETY: leaving the forked test child without running destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(fork_epoch(), parent);
    }

    #[test]
    fn clock_moves_forward_only() {
        let a = clock_seconds();
        let b = clock_seconds();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn namespaces_are_named() {
        if std::path::Path::new("/proc/self/ns/net").exists() {
            assert_ne!(namespace_id("net"), 0);
            assert_ne!(namespace_id("pid"), 0);
        }
        assert_eq!(namespace_id("no-such-namespace"), 0);
    }
}
