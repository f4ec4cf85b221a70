//! The port table's file: its layout, how it is created, opened, and judged
//! still ours before every operation.
//!
//! Layout (all little-endian 64-bit words, naturally aligned):
//!
//! | bytes                | what                                               |
//! |----------------------|----------------------------------------------------|
//! | 0..4096              | header: magic "KCPORTS2", then the layout's sizes  |
//! | 4096..+512 KiB       | 65,536 slots, one per port (see `slot.rs`)         |
//! | then 8 KiB           | summary: one bit per slot, set while it is taken   |
//! | then 128 KiB         | 4,096 owner records of 32 bytes (see `owners.rs`)  |
//!
//! A table is created complete under a temporary name (its space allocated up
//! front, so writing to it can never fault for want of disk, its header
//! written) and only then linked to its path: a process that finds a file at
//! the path finds a whole table or something that is not a table, which it
//! never modifies. A table that lost its size (truncated by someone) is
//! replaced by a fresh one, atomically, by whoever finds it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::sigbus;

/// Number of slots: one per TCP port.
pub const SLOTS: usize = 65_536;
/// Owner records: processes that can hold ports at once.
pub const RECORDS: usize = 4_096;
/// Words per owner record.
pub const RECORD_WORDS: usize = 4;

const WORD: usize = std::mem::size_of::<u64>();
const HEADER_BYTES: usize = 4_096;
pub const SLOTS_AT: usize = HEADER_BYTES;
pub const SUMMARY_AT: usize = SLOTS_AT + SLOTS * WORD;
pub const SUMMARY_WORDS: usize = SLOTS / 64;
pub const RECORDS_AT: usize = SUMMARY_AT + SUMMARY_WORDS * WORD;
pub const TABLE_BYTES: usize = RECORDS_AT + RECORDS * RECORD_WORDS * WORD;

const MAGIC: [u8; 8] = *b"KCPORTS2";

/// Who may use a table file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every user on the host (mode 0666, any owner): one table per port space.
    Host,
    /// This user only (mode 0600, and the file must be ours).
    User,
}

/// The header a table of this layout starts with.
fn header() -> Vec<u8> {
    let mut head = Vec::with_capacity(5 * WORD);
    head.extend_from_slice(&MAGIC);
    for size in [SLOTS, RECORDS, RECORD_WORDS, TABLE_BYTES] {
        head.extend_from_slice(&(size as u64).to_le_bytes());
    }
    head
}

/// A table file, mapped. Unmapped (and unwatched) on drop.
pub struct TableFile {
    // Field order matters: the guard unregisters before the map is unmapped.
    guard: sigbus::Guard,
    map: MmapRaw,
    /// None for the in-process table.
    file: Option<File>,
    path: Option<PathBuf>,
}

/// What was found at a table path.
enum Found {
    Table(TableFile),
    Missing,
    /// Our magic (or nothing at all) but not our size: a table someone truncated.
    Damaged,
    /// The file changed size while we looked at it: look again.
    Changing,
}

impl TableFile {
    /// Open the table at `path`, creating it (or replacing a damaged one) if needed.
    pub fn open(path: &Path, access: Access) -> Result<TableFile> {
        // Bounded: each round either returns or saw another process change
        // the path between two of our steps.
        for _ in 0..8 {
            match open_existing(path, access)? {
                Found::Table(table) => return Ok(table),
                Found::Missing => create(path, access, false)?,
                Found::Damaged => create(path, access, true)?,
                Found::Changing => {}
            }
        }
        Err(Error::io(
            "the port table keeps changing under us (is something truncating it?):",
            path,
            std::io::Error::from_raw_os_error(libc::EAGAIN),
        ))
    }

    /// A table in this process's memory only (the last fallback).
    pub fn anonymous() -> Result<TableFile> {
        let mut map = MmapOptions::new()
            .len(TABLE_BYTES)
            .map_anon()
            .map_err(|e| Error::os("mapping in-process port table", e))?;
        map[..5 * WORD].copy_from_slice(&header());
        let map = MmapRaw::from(map);
        Ok(TableFile {
            guard: sigbus::Guard::watch(map.as_ptr(), TABLE_BYTES),
            map,
            file: None,
            path: None,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The open file (None for the in-process table).
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// `count` words from byte `offset` of the mapping.
    pub fn words(&self, offset: usize, count: usize) -> &[AtomicU64] {
        assert!(offset % WORD == 0 && offset + count * WORD <= TABLE_BYTES);
        // SAFETY: the mapping is TABLE_BYTES long, page-aligned (so word
        // aligned), lives as long as `self`, and the assert keeps the range
        // inside it. Every access, from any thread or process, goes through
        // these atomics. Its pages cannot vanish under us without the SIGBUS
        // guard putting private pages in their place (see sigbus.rs).
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(offset).cast::<AtomicU64>(), count)
        }
    }

    /// Still the table at its path, whole, and never faulted? Checked (one
    /// fstat) before every operation: a table that was deleted or renamed over
    /// has no links left, a truncated one has lost its size.
    pub fn is_current(&self) -> bool {
        if self.guard.broken() {
            return false;
        }
        match &self.file {
            None => true,
            Some(file) => match file.metadata() {
                Ok(meta) => meta.nlink() > 0 && meta.len() == TABLE_BYTES as u64,
                Err(_) => false,
            },
        }
    }

    /// True once a fault in the mapping was repaired with private pages.
    pub fn faulted(&self) -> bool {
        self.guard.broken()
    }
}

fn open_existing(path: &Path, access: Access) -> Result<Found> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(Error::io("opening port table", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io("inspecting port table", path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_a_table(path, "not a regular file"));
    }
    if access == Access::User {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(Error::InvalidArgument(format!(
                "port table {} belongs to uid {}, not to us (uid {euid})",
                path.display(),
                meta.uid()
            )));
        }
    }
    // Read the header with a plain read, never through a mapping: a file that
    // is not a table is judged without touching (or sizing) it.
    let expected = header();
    let mut head = vec![0u8; expected.len()];
    let got =
        read_prefix(&file, &mut head).map_err(|e| Error::io("reading port table", path, e))?;
    let size = meta.len();
    let after = file
        .metadata()
        .map_err(|e| Error::io("inspecting port table", path, e))?
        .len();
    if after != size {
        return Ok(Found::Changing);
    }
    if size == TABLE_BYTES as u64 && got == head.len() && head == expected {
        let map = MmapOptions::new()
            .len(TABLE_BYTES)
            .map_raw(&file)
            .map_err(|e| Error::io("mapping port table", path, e))?;
        return Ok(Found::Table(TableFile {
            guard: sigbus::Guard::watch(map.as_ptr(), TABLE_BYTES),
            map,
            file: Some(file),
            path: Some(path.to_path_buf()),
        }));
    }
    let ours = size == 0 || (got >= MAGIC.len() && head[..MAGIC.len()] == MAGIC);
    if ours && size < TABLE_BYTES as u64 {
        return Ok(Found::Damaged);
    }
    Err(not_a_table(
        path,
        &format!("{size} bytes, not a kernel-connect port table of this version"),
    ))
}

fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn not_a_table(path: &Path, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "{} is not a kernel-connect port table ({why}); it was left untouched",
        path.display()
    ))
}

/// Build a whole table under a temporary name beside `path`, then link it to
/// `path` (or, for a damaged table, rename it over `path`).
fn create(path: &Path, access: Access, replace: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}-{:x}.tmp",
        std::process::id(),
        crate::ports::random_u64()
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)
        .map_err(|e| Error::io("creating port table", &temp, e))?;
    let built = build(&file, access).map_err(|e| Error::io("creating port table", path, e));
    let placed = built.and_then(|()| {
        if replace {
            std::fs::rename(&temp, path).map_err(|e| Error::io("replacing port table", path, e))
        } else {
            match std::fs::hard_link(&temp, path) {
                Ok(()) => Ok(()),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Error::io("creating port table", path, e)),
            }
        }
    });
    // After a rename the temporary name is gone already; otherwise remove it.
    let _ = std::fs::remove_file(&temp);
    placed
}

/// Allocate the table's space, write its header and set its mode.
fn build(file: &File, access: Access) -> std::io::Result<()> {
    allocate(file, TABLE_BYTES)?;
    file.write_all_at(&header(), 0)?;
    let mode = match access {
        Access::Host => 0o666,
        Access::User => 0o600,
    };
    // Explicitly, because the umask applied to the creation mode.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Reserve `len` bytes of real space, so that no later write to the mapping
/// can fault for want of it (a sparse file would SIGBUS on a full disk).
#[cfg(target_os = "linux")]
fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a valid open descriptor and a non-negative range.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Elsewhere, writing the zeros allocates the blocks just as well.
#[cfg(not(target_os = "linux"))]
fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    let zeros = vec![0u8; 64 * 1024];
    let mut at = 0;
    while at < len {
        let n = zeros.len().min(len - at);
        file.write_all_at(&zeros[..n], at as u64)?;
        at += n;
    }
    file.sync_all()
}

/// `path` as a C string, for the few calls std does not wrap.
pub fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("{} contains a NUL byte", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_whole_private_and_allocated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        let table = TableFile::open(&path, Access::User).expect("open");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), TABLE_BYTES as u64);
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(
            meta.blocks() * 512 >= TABLE_BYTES as u64,
            "space allocated up front"
        );
        assert!(table.is_current());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn host_tables_are_writable_by_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        TableFile::open(&path, Access::Host).expect("open");
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o666);
    }

    #[test]
    fn a_foreign_file_is_never_modified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, b"{\"not\": \"a table\"}").expect("write");
        assert!(TableFile::open(&path, Access::User).is_err());
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"{\"not\": \"a table\"}"
        );
    }

    #[test]
    fn deletion_and_truncation_are_noticed_and_a_damaged_table_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        let table = TableFile::open(&path, Access::User).expect("open");
        std::fs::remove_file(&path).expect("rm");
        assert!(!table.is_current());
        let second = TableFile::open(&path, Access::User).expect("recreate");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(100))
            .expect("truncate");
        assert!(!second.is_current());
        let third = TableFile::open(&path, Access::User).expect("replace damaged");
        assert!(third.is_current());
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            TABLE_BYTES as u64
        );
    }
}
