//! Process identity: who owns a reservation, and is that owner still alive?
//!
//! A pid alone is not an identity: pids are recycled, so a reservation made by a
//! process that was SIGKILLed could look alive again once its pid is reused. We
//! pair the pid with a stamp taken from the process's start time (Linux:
//! `/proc/<pid>/stat` field 22), which a recycled pid does not share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

/// The owner of a reservation: pid plus a start-time stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub stamp: u32,
}

impl Owner {
    /// Packed into one table word. A real owner never packs to 0 (pid 0 is the kernel).
    pub fn encode(self) -> u64 {
        (u64::from(self.pid) << 32) | u64::from(self.stamp)
    }

    pub fn decode(word: u64) -> Owner {
        Owner {
            pid: (word >> 32) as u32,
            stamp: (word & 0xffff_ffff) as u32,
        }
    }

    /// True while the process that made the reservation still runs.
    /// Zombies count as dead: they will never bind anything again.
    pub fn is_alive(self) -> bool {
        if self.pid == 0 {
            return false;
        }
        match start_stamp(self.pid) {
            Probe::Alive(stamp) => stamp == self.stamp,
            Probe::AliveUnknownStamp => true,
            Probe::Dead => false,
        }
    }
}

enum Probe {
    Alive(u32),
    AliveUnknownStamp,
    Dead,
}

/// Whether /proc gives us start times on this machine (checked once).
fn proc_stat_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| read_proc_stat(std::process::id()).is_some())
}

/// (state, starttime) of a process from /proc/<pid>/stat, or None if it is gone.
fn read_proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything,
    // spaces and ')' included, so parse from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come fields 4..; starttime is field 22, i.e. 18 further on.
    let start = fields.nth(18)?.parse::<u64>().ok()?;
    Some((state, start))
}

fn start_stamp(pid: u32) -> Probe {
    if proc_stat_available() {
        return match read_proc_stat(pid) {
            Some(('Z' | 'X', _)) | None => Probe::Dead,
            Some((_, start)) => Probe::Alive(start as u32),
        };
    }
    kill_probe(pid)
}

/// Without /proc (macOS, or /proc not mounted) liveness is kill(pid, 0); the
/// stamp is unknown, so a recycled pid is (conservatively) taken as alive.
fn kill_probe(pid: u32) -> Probe {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Probe::Dead;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        Probe::AliveUnknownStamp
    } else {
        Probe::Dead
    }
}

/// This process's owner word: computed once, forgotten in a forked child
/// (which is another process) by a pthread_atfork hook, so the hot path makes
/// no system call.
pub fn me() -> u64 {
    static FORK_HOOK: Once = Once::new();
    FORK_HOOK.call_once(|| {
        // SAFETY: registers a child handler that only stores to an atomic,
        // which is async-signal-safe as fork requires.
        unsafe { libc::pthread_atfork(None, None, Some(forget_identity)) };
    });
    let cached = IDENTITY.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let pid = std::process::id();
    let stamp = match start_stamp(pid) {
        Probe::Alive(stamp) => stamp,
        Probe::AliveUnknownStamp | Probe::Dead => 0,
    };
    let word = Owner { pid, stamp }.encode();
    IDENTITY.store(word, Ordering::Relaxed);
    word
}

/// This process's identity once known; 0 until then and in a fresh fork child.
static IDENTITY: AtomicU64 = AtomicU64::new(0);

extern "C" fn forget_identity() {
    IDENTITY.store(0, Ordering::Relaxed);
}

/// This process's pid, without a system call once `me` has run.
pub fn my_pid() -> u32 {
    Owner::decode(me()).pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips() {
        let owner = Owner {
            pid: 4_194_303,
            stamp: 0xdead_beef,
        };
        assert_eq!(Owner::decode(owner.encode()), owner);
        assert_ne!(owner.encode(), 0);
    }

    #[test]
    fn self_is_alive_and_a_wrong_stamp_is_not() {
        let mine = Owner::decode(me());
        assert_eq!(mine.pid, std::process::id());
        assert!(mine.is_alive());
        if proc_stat_available() {
            let recycled = Owner {
                pid: mine.pid,
                stamp: mine.stamp.wrapping_add(1),
            };
            assert!(
                !recycled.is_alive(),
                "a different start time is another process"
            );
        }
    }

    #[test]
    fn a_forked_child_is_someone_else() {
        let parent = me();
        // SAFETY: the child only calls async-signal-safe code (me() reads
        // /proc through std, which allocates: acceptable in this single-purpose
        // test child) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let child = me();
            let ok = child != parent && Owner::decode(child).pid == std::process::id();
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn reaped_child_is_dead() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        let owner = Owner { pid, stamp: 0 };
        // The pid could in theory be reused at once; a fresh process would have
        // a different stamp anyway, so with /proc this is deterministic.
        if proc_stat_available() {
            assert!(!owner.is_alive());
        }
    }

    #[test]
    fn zombie_is_dead() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Wait for it to exit without reaping it: poll /proc until it is a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(read_proc_stat(pid), Some(('Z', _)) | None) {
                break;
            }
            std::thread::yield_now();
        }
        if proc_stat_available() {
            let stamp = read_proc_stat(pid).map(|(_, s)| s as u32).unwrap_or(0);
            assert!(!Owner { pid, stamp }.is_alive());
        }
        child.wait().expect("reap");
    }
}
