//! A mapped table that another process truncates must not kill us.
//!
//! Touching a page of a shared file mapping past the file's end raises SIGBUS,
//! and any process that can write the table file can truncate it. The table
//! checks the file's size with fstat before every operation (`table_file.rs`),
//! which catches a truncation that happened between operations; this guard
//! covers the one that lands in the middle of one. Its handler, for a fault
//! inside a registered table mapping, maps private zero pages over the whole
//! mapping and marks it broken, then returns: the faulting instruction runs
//! again on memory that exists. The operation under way finishes on a table
//! nobody else sees, notices the mark, throws its result away and starts again
//! on a freshly opened table. Faults anywhere else go to the handler that was
//! installed before ours (or to the default action), exactly as without us.
//!
//! Mapping over a region cannot shrink anything else's memory, and the
//! alternative designs were worse: a sealed memfd cannot be found by path by
//! other users' processes, and SysV shared memory cannot be moved by a setting
//! or inspected as a file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Table mappings a process can have open at once (tests open a few; a user
/// one or two). A mapping that finds no free place is still checked by fstat.
const REGIONS: usize = 64;

struct Region {
    start: AtomicUsize,
    len: AtomicUsize,
    broken: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Region = Region {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    broken: AtomicBool::new(false),
};

static TABLE: [Region; REGIONS] = [EMPTY; REGIONS];
/// Serializes registration (not the handler, which only reads).
static REGISTER: Mutex<()> = Mutex::new(());
/// The SIGBUS action in place before ours, to pass foreign faults on to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A registered mapping; unregisters on drop (before the mapping is unmapped).
pub struct Guard {
    index: Option<usize>,
}

impl Guard {
    /// Watch `len` bytes at `start`. Installs the handler on first use.
    pub fn watch(start: *const u8, len: usize) -> Guard {
        install();
        let _lock = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
        let index = TABLE
            .iter()
            .position(|r| r.len.load(Ordering::Acquire) == 0);
        if let Some(i) = index {
            let region = &TABLE[i];
            region.broken.store(false, Ordering::Release);
            region.start.store(start as usize, Ordering::Release);
            // len last: the handler reads len first, so a half-written entry
            // is never taken as covering an address.
            region.len.store(len, Ordering::Release);
        }
        Guard { index }
    }

    /// True once a fault inside the mapping was repaired with private pages:
    /// the mapping no longer shows the shared table.
    pub fn broken(&self) -> bool {
        self.index
            .is_some_and(|i| TABLE[i].broken.load(Ordering::Acquire))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            let _lock = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
            TABLE[i].len.store(0, Ordering::Release);
            TABLE[i].start.store(0, Ordering::Release);
        }
    }
}

fn install() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid "no handler" value to fill in;
        // sigaction is called with valid pointers to it and to `old`.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut old) != 0 {
                // Could not install: the fstat checks still protect us between
                // operations. Keep the default as "previous".
                old.sa_sigaction = libc::SIG_DFL;
            }
            old
        }
    });
}

#[cfg(target_os = "linux")]
fn fault_address(info: *mut libc::siginfo_t) -> usize {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
    // si_addr is defined for SIGBUS.
    unsafe { (*info).si_addr() as usize }
}

#[cfg(not(target_os = "linux"))]
fn fault_address(info: *mut libc::siginfo_t) -> usize {
    // SAFETY: as above; on the BSDs and macOS si_addr is a plain field.
    unsafe { (*info).si_addr as usize }
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let address = fault_address(info);
    for region in &TABLE {
        let len = region.len.load(Ordering::Acquire);
        let start = region.start.load(Ordering::Acquire);
        if len != 0 && (start..start + len).contains(&address) {
            // SAFETY: [start, start + len) is a mapping this process made and
            // still owns (the guard unregisters before unmapping). MAP_FIXED
            // replaces it in place with private zero pages; mmap is a plain
            // system call, safe to make from a signal handler on Linux and the
            // BSDs although POSIX does not list it.
            let mapped = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped != libc::MAP_FAILED {
                region.broken.store(true, Ordering::Release);
                return;
            }
        }
    }
    pass_on(signal, info, context);
}

/// A fault that is not ours: what would have happened without us.
fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: restoring the default action with a valid, zeroed sigaction;
        // returning re-runs the faulting instruction, which then gets it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        return;
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it
        // has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: installed without SA_SIGINFO, so a one-argument handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn a_truncated_mapping_is_repaired_not_fatal() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&[7u8; 8192]).expect("fill");
        // SAFETY: mapping a file we own; the test truncates it on purpose.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let guard = Guard::watch(map as *const u8, 8192);
        file.set_len(0).expect("truncate");
        // SAFETY: the guard makes this read survive; volatile so it happens.
        let value = unsafe { std::ptr::read_volatile((map as *const u8).add(4096)) };
        assert_eq!(value, 0, "private zero pages replaced the lost ones");
        assert!(guard.broken());
        drop(guard);
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(map, 8192) };
    }
}
