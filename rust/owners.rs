//! Owner records: who holds ports, and whether they still live.
//!
//! A process that reserves ports takes one of the table's 4,096 owner records
//! by taking an open-file-description lock (`F_OFD_SETLK`) on that record's
//! first byte, then bumps the record's generation. Its held slots name the
//! record and the generation. The kernel drops the lock when the process dies,
//! SIGKILL included, so "is the record locked?" answers "is the owner alive?"
//! for every process that can see the file: across users, and across pid
//! namespaces, where a pid means nothing (two containers sharing a runtime or
//! temp directory each have a pid 1). A generation that moved on means the
//! record was taken again: the old owner's slots are dead.
//!
//! A record's lock is taken on a descriptor of its own, which a forked child
//! closes at once (`forget_inherited_locks`, from the fork hook): the child is
//! another process and takes a record of its own when it first reserves; the
//! parent's lock stays with the parent, so the parent's death is seen even
//! while the child lives.
//!
//! Word layout of a record: generation, pid (as the owner's own pid namespace
//! numbers it), pid namespace inode, the clock second it was taken.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::process;
use crate::slot::OwnerId;
use crate::table_file::{TableFile, RECORDS, RECORDS_AT, RECORD_WORDS};

/// Lock descriptors this process holds, so a forked child can close them.
const MAX_LOCKS: usize = 64;
static LOCK_FDS: [AtomicI32; MAX_LOCKS] = [const { AtomicI32::new(-1) }; MAX_LOCKS];

/// Called in a forked child, before anything else runs there.
pub fn forget_inherited_locks() {
    for slot in &LOCK_FDS {
        let fd = slot.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: close is async-signal-safe; the descriptor was ours (the
            // parent's lock fd, inherited) and nothing else in the child uses it.
            unsafe { libc::close(fd) };
        }
    }
}

/// A taken owner record: its id and the lock that keeps it alive.
pub struct Registration {
    pub id: OwnerId,
    lock_slot: Option<usize>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(slot) = self.lock_slot {
            let fd = LOCK_FDS[slot].swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                // SAFETY: the descriptor is ours; swapping it out of the
                // registry first means no one closes it twice.
                unsafe { libc::close(fd) };
            }
        }
    }
}

fn records(table: &TableFile) -> &[AtomicU64] {
    table.words(RECORDS_AT, RECORDS * RECORD_WORDS)
}

fn lock_offset(index: u16) -> i64 {
    (RECORDS_AT + usize::from(index) * RECORD_WORDS * 8) as i64
}

#[cfg(target_os = "linux")]
const SETLK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(target_os = "linux")]
const GETLK: libc::c_int = libc::F_OFD_GETLK;
// Elsewhere, process-owned locks: the fork hook and our own descriptor still
// keep them per process; closing another descriptor of the file would drop
// them, which this crate never does while a registration lives.
#[cfg(not(target_os = "linux"))]
const SETLK: libc::c_int = libc::F_SETLK;
#[cfg(not(target_os = "linux"))]
const GETLK: libc::c_int = libc::F_GETLK;

fn flock_for(index: u16) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = lock_offset(index) as _;
    lock.l_len = 1;
    lock
}

/// Take a free owner record of `table`. The in-process table has a single
/// owner, this process: its record 0 gets a new generation (which also makes
/// every slot a forked parent left in this private copy dead).
pub fn register(table: &TableFile) -> Result<Registration> {
    let records = records(table);
    let Some(file) = table.file() else {
        let id = bump(records, 0);
        return Ok(Registration {
            id,
            lock_slot: None,
        });
    };
    let lock = lock_descriptor(table, file)?;
    let start = (crate::ports::random_u64() % RECORDS as u64) as usize;
    for k in 0..RECORDS {
        let index = ((start + k) % RECORDS) as u16;
        let request = flock_for(index);
        // SAFETY: a valid descriptor and a valid flock.
        let rc = unsafe { libc::fcntl(lock.as_raw_fd(), SETLK, &request) };
        if rc == 0 {
            let id = bump(records, index);
            let base = usize::from(index) * RECORD_WORDS;
            records[base + 1].store(u64::from(process::my_pid()), Ordering::Release);
            records[base + 2].store(process::namespace_id("pid"), Ordering::Release);
            records[base + 3].store(process::clock_seconds(), Ordering::Release);
            let lock_slot = keep_lock(lock.into_raw_fd());
            return Ok(Registration { id, lock_slot });
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => continue,
            _ => return Err(Error::os("locking an owner record of the port table", err)),
        }
    }
    Err(Error::InvalidArgument(format!(
        "the port table has no free owner record: {RECORDS} live processes hold ports"
    )))
}

/// A new generation for record `index` (never 0: 0 marks nothing).
fn bump(records: &[AtomicU64], index: u16) -> OwnerId {
    let word = &records[usize::from(index) * RECORD_WORDS];
    loop {
        let generation = word.fetch_add(1, Ordering::AcqRel).wrapping_add(1) as u32;
        if generation != 0 {
            return OwnerId { index, generation };
        }
    }
}

/// A descriptor of the table's own inode whose locks are ours alone: opening
/// the file again gives a new open file description.
fn lock_descriptor(table: &TableFile, file: &File) -> Result<File> {
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&by_fd);
    let lock = match opened {
        Ok(lock) => lock,
        Err(_) => {
            // No /proc: the path, if it still names the same file.
            let path = table
                .path()
                .ok_or_else(|| Error::InvalidArgument("port table has no path".into()))?;
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| Error::io("opening port table for locking", path, e))?
        }
    };
    let same = match (lock.metadata(), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if !same {
        return Err(Error::InvalidArgument(
            "the port table was replaced while registering".into(),
        ));
    }
    Ok(lock)
}

fn keep_lock(fd: RawFd) -> Option<usize> {
    for (i, slot) in LOCK_FDS.iter().enumerate() {
        if slot
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Some(i);
        }
    }
    // More tables than places: the lock stays open (and alive) for good,
    // which is safe; only a forked child cannot close it.
    None
}

/// Is the owner `id` of a slot still alive? None when it cannot be told (the
/// filesystem refuses lock queries): callers then treat it as alive.
pub fn is_alive(table: &TableFile, id: OwnerId) -> Option<bool> {
    let records = records(table);
    let current = records[usize::from(id.index) * RECORD_WORDS].load(Ordering::Acquire) as u32;
    if current != id.generation {
        return Some(false);
    }
    let file = table.file()?;
    let mut query = flock_for(id.index);
    // SAFETY: a valid descriptor and a valid, writable flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), GETLK, &mut query) };
    if rc != 0 {
        return None;
    }
    Some(i32::from(query.l_type) != libc::F_UNLCK)
}

/// The pid an owner record names (its own namespace's number) and whether
/// that namespace is ours; None if the record moved on.
pub fn pid_of(table: &TableFile, index: u16, matches: impl Fn(u32) -> bool) -> Option<(u32, bool)> {
    let records = records(table);
    let base = usize::from(index) * RECORD_WORDS;
    let generation = records[base].load(Ordering::Acquire) as u32;
    if !matches(generation) {
        return None;
    }
    let pid = records[base + 1].load(Ordering::Acquire) as u32;
    let ns = records[base + 2].load(Ordering::Acquire);
    Some((pid, ns == process::namespace_id("pid")))
}
