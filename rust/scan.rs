//! Runtime-directory scans for `find_connection_file`.
//!
//! A farm's runtime directory holds thousands of stale kernel-*.json files.
//! jupyter_client globs (which stats entries) and then stats every match again
//! to sort by access time. Here a directory is read once, names are matched
//! against the pattern without a stat, and only when several match is each
//! match stat'ed, relative to the open directory, to pick the newest.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Python's `fnmatch.fnmatchcase`: `*`, `?`, `[seq]`, `[!seq]`; no escapes.
pub fn fnmatch(name: &str, pattern: &str) -> bool {
    if name.is_ascii() && pattern.is_ascii() {
        // One byte is one character: match without decoding or allocating.
        return matches_from(name.as_bytes(), pattern.as_bytes());
    }
    let name: Vec<char> = name.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    matches_from(&name, &pattern)
}

/// A pattern/name unit: bytes for ASCII, chars otherwise.
trait Unit: Copy + Eq + Ord {
    const STAR: Self;
    const QUESTION: Self;
    const OPEN: Self;
    const CLOSE: Self;
    const BANG: Self;
    const DASH: Self;
}

impl Unit for u8 {
    const STAR: u8 = b'*';
    const QUESTION: u8 = b'?';
    const OPEN: u8 = b'[';
    const CLOSE: u8 = b']';
    const BANG: u8 = b'!';
    const DASH: u8 = b'-';
}

impl Unit for char {
    const STAR: char = '*';
    const QUESTION: char = '?';
    const OPEN: char = '[';
    const CLOSE: char = ']';
    const BANG: char = '!';
    const DASH: char = '-';
}

fn matches_from<T: Unit>(name: &[T], pattern: &[T]) -> bool {
    // Iterative wildcard matching with single-star backtracking: linear-ish and
    // free of recursion blow-ups on patterns like "*a*a*a*".
    let (mut n, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            let c = pattern[p];
            if c == T::STAR {
                star = Some((p, n));
                p += 1;
                continue;
            }
            if c == T::QUESTION {
                n += 1;
                p += 1;
                continue;
            }
            if c == T::OPEN {
                match class_match(&pattern[p..], name[n]) {
                    Some((true, next)) => {
                        n += 1;
                        p += next;
                        continue;
                    }
                    Some((false, _)) => {}
                    // An unclosed '[' is a literal.
                    None if name[n] == T::OPEN => {
                        n += 1;
                        p += 1;
                        continue;
                    }
                    None => {}
                }
            } else if c == name[n] {
                n += 1;
                p += 1;
                continue;
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == T::STAR)
}

/// Match one character against the class starting at `pattern[0] == '['`.
/// Returns (matched, pattern length consumed), or None if the class is unclosed.
fn class_match<T: Unit>(pattern: &[T], c: T) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = pattern.get(i) == Some(&T::BANG);
    if negate {
        i += 1;
    }
    // A ']' right after '[' or '[!' is a member, not the end.
    if pattern.get(i) == Some(&T::CLOSE) {
        i += 1;
    }
    let close = i + pattern[i..].iter().position(|&ch| ch == T::CLOSE)?;
    let body = &pattern[if negate { 2 } else { 1 }..close];
    let mut hit = false;
    let mut j = 0;
    while j < body.len() {
        if j + 2 < body.len() && body[j + 1] == T::DASH {
            // A reversed range (z-a) matches nothing, as in fnmatch.
            if body[j] <= c && c <= body[j + 2] {
                hit = true;
            }
            j += 3;
        } else {
            if body[j] == c {
                hit = true;
            }
            j += 1;
        }
    }
    Some((hit != negate, close + 1))
}

/// Names in `dir` matching `pattern`, in directory order, as `glob.glob` would
/// list them: hidden names only when the pattern itself starts with '.'.
/// A missing or unreadable directory matches nothing, as with glob. Names that
/// are not UTF-8 are skipped.
pub fn glob_names(dir: &Path, pattern: &str) -> Vec<String> {
    let hidden_ok = pattern.starts_with('.');
    let mut out = Vec::new();
    let Ok(fd) = DirFd::open(dir) else {
        return out;
    };
    for_each_name(&fd, |raw| {
        if let Some(name) = matching_name(raw, pattern, hidden_ok) {
            out.push(name);
        }
    });
    out
}

/// Call `visit` with every entry name of the open directory, in directory order.
/// On Linux this reads entries in large batches straight from getdents64, with
/// no allocation per entry; elsewhere it uses the standard library.
#[cfg(target_os = "linux")]
fn for_each_name(dir: &DirFd, mut visit: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: buf is writable for its whole length and dir.0 is an open directory.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir.0, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            return;
        }
        let filled = &buf[..n as usize];
        let mut offset = 0usize;
        // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name[]
        while offset + 19 <= filled.len() {
            let reclen = usize::from(u16::from_ne_bytes([
                filled[offset + 16],
                filled[offset + 17],
            ]));
            if reclen == 0 || offset + reclen > filled.len() {
                return;
            }
            let name_area = &filled[offset + 19..offset + reclen];
            let len = name_area
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_area.len());
            visit(&name_area[..len]);
            offset += reclen;
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn for_each_name(dir: &DirFd, mut visit: impl FnMut(&[u8])) {
    let Ok(entries) = std::fs::read_dir(&dir.1) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        visit(entry.file_name().as_bytes());
    }
}

/// Access time of `dir/name` (following symlinks, like os.stat), or None if it
/// vanished meanwhile.
fn atime(dir_fd: libc::c_int, name: &str) -> Option<(i64, i64)> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: an all-zero `stat` is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: dir_fd is an open directory, c_name a valid C string, st writable.
    let rc = unsafe { libc::fstatat(dir_fd, c_name.as_ptr(), &mut st, 0) };
    (rc == 0).then_some((st.st_atime, st.st_atime_nsec))
}

/// An open directory descriptor (and its path), closed on drop.
struct DirFd(libc::c_int, #[allow(dead_code)] PathBuf);

impl DirFd {
    fn open(dir: &Path) -> Result<DirFd> {
        let c_dir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidArgument(format!("{} contains NUL", dir.display())))?;
        // SAFETY: c_dir is a valid C string; the flags ask for a directory fd.
        let fd = unsafe {
            libc::open(
                c_dir.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::io(
                "opening directory",
                dir,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(DirFd(fd, dir.to_path_buf()))
    }
}

impl Drop for DirFd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

/// The match `find_connection_file` returns: across `dirs` in order, the only
/// match, or with several the newest by access time (the last of equals, as a
/// stable sort's last element). None when nothing matches.
///
/// Reading a big directory and stat'ing its matches are both a syscall per
/// entry, so they run side by side: while this thread reads entries, a helper
/// thread stats the matches found so far, and both stat what is left at the
/// end. Nothing is stat'ed until a second match shows that a choice is needed.
pub fn find_newest(dirs: &[PathBuf], pattern: &str) -> Result<Option<PathBuf>> {
    let hidden_ok = pattern.starts_with('.');
    let fds: Vec<Option<DirFd>> = dirs.iter().map(|d| DirFd::open(d).ok()).collect();
    let pool = StatPool::default();
    let mut first: Option<(usize, String)> = None;
    let mut seen = 0usize;
    let newest = std::thread::scope(|scope| {
        let helper = scope.spawn(|| pool.work(&fds));
        let mut batch = Batch::default();
        for (dir, fd) in fds.iter().enumerate() {
            let Some(fd) = fd else { continue };
            for_each_name(fd, |raw| {
                let Some(name) = matching_name(raw, pattern, hidden_ok) else {
                    return;
                };
                seen += 1;
                if seen == 1 {
                    first = Some((dir, name));
                    return;
                }
                if let Some((d, n)) = first.take() {
                    batch.push(d, n, 0);
                }
                batch.push(dir, name, seen - 1);
                if batch.names.len() >= STAT_BATCH {
                    pool.submit(std::mem::take(&mut batch));
                }
            });
        }
        if !batch.names.is_empty() {
            pool.submit(batch);
        }
        pool.close();
        let mine = pool.work(&fds);
        let theirs = helper.join().unwrap_or(None);
        newer(mine, theirs)
    });
    if seen == 1 {
        return Ok(first.map(|(dir, name)| dirs[dir].join(name)));
    }
    Ok(newest.map(|hit| dirs[hit.dir].join(hit.name)))
}

/// Names are handed to the stat workers in batches of this many.
const STAT_BATCH: usize = 256;

/// `raw` as a name if it matches: never "." or "..", hidden names only when the
/// pattern is hidden too (glob's rule), UTF-8 only.
fn matching_name(raw: &[u8], pattern: &str, hidden_ok: bool) -> Option<String> {
    if (!hidden_ok && raw.first() == Some(&b'.')) || raw == b"." || raw == b".." {
        return None;
    }
    let name = std::str::from_utf8(raw).ok()?;
    fnmatch(name, pattern).then(|| name.to_owned())
}

/// Matches in the order they were found: `order` ranks them for ties.
#[derive(Default)]
struct Batch {
    names: Vec<(usize, String)>,
    order: usize,
}

impl Batch {
    /// Add the match that came `order`-th (from 0); a batch holds consecutive ones.
    fn push(&mut self, dir: usize, name: String, order: usize) {
        if self.names.is_empty() {
            self.order = order;
        }
        self.names.push((dir, name));
    }
}

/// The best match so far: newest access time, then latest in match order.
struct Hit {
    atime: (i64, i64),
    order: usize,
    dir: usize,
    name: String,
}

fn newer(a: Option<Hit>, b: Option<Hit>) -> Option<Hit> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (b.atime, b.order) > (a.atime, a.order) {
            b
        } else {
            a
        }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A queue of batches to stat, drained by any number of workers.
#[derive(Default)]
struct StatPool {
    queue: std::sync::Mutex<(Vec<Batch>, bool)>,
    ready: std::sync::Condvar,
}

impl StatPool {
    fn submit(&self, batch: Batch) {
        if let Ok(mut q) = self.queue.lock() {
            q.0.push(batch);
        }
        self.ready.notify_one();
    }

    fn close(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.1 = true;
        }
        self.ready.notify_all();
    }

    /// Stat batches until the queue is closed and empty; the newest seen.
    fn work(&self, fds: &[Option<DirFd>]) -> Option<Hit> {
        let mut best: Option<Hit> = None;
        loop {
            let batch = {
                let Ok(mut q) = self.queue.lock() else {
                    return best;
                };
                loop {
                    if let Some(batch) = q.0.pop() {
                        break batch;
                    }
                    if q.1 {
                        return best;
                    }
                    q = match self.ready.wait(q) {
                        Ok(q) => q,
                        Err(_) => return best,
                    };
                }
            };
            for (i, (dir, name)) in batch.names.into_iter().enumerate() {
                let Some(Some(fd)) = fds.get(dir) else {
                    continue;
                };
                if let Some(atime) = atime(fd.0, &name) {
                    let hit = Hit {
                        atime,
                        order: batch.order + i,
                        dir,
                        name,
                    };
                    best = newer(best, Some(hit));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_follows_python_rules() {
        let yes = [
            ("kernel-1.json", "kernel-*.json"),
            ("kernel-.json", "kernel-*.json"),
            ("abc", "a?c"),
            ("a]c", "a[]]c"),
            ("a-c", "a[!b]c"),
            ("a[c", "a[c"),
            ("x", "[a-z]"),
            ("aaa", "*a*a*a*"),
            ("a\\b", "a\\b"),
        ];
        for (name, pat) in yes {
            assert!(fnmatch(name, pat), "{name} ~ {pat}");
        }
        let no = [
            ("kernel-1.jsonx", "kernel-*.json"),
            ("abc", "a[!b]c"),
            ("m", "[z-a]"),
            ("aa", "*a*a*a*"),
            ("", "?"),
        ];
        for (name, pat) in no {
            assert!(!fnmatch(name, pat), "{name} !~ {pat}");
        }
    }

    #[test]
    fn newest_by_atime_and_single_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "kernel-a.json",
            "kernel-b.json",
            ".kernel-hidden.json",
            "other",
        ] {
            std::fs::write(dir.path().join(name), "{}").expect("write");
        }
        let old = libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        };
        let times = [old, old];
        let c =
            CString::new(dir.path().join("kernel-a.json").as_os_str().as_bytes()).expect("cstring");
        // SAFETY: valid path and a two-element timespec array.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
            0
        );
        let dirs = vec![dir.path().to_path_buf()];
        let newest = find_newest(&dirs, "kernel-*.json").expect("scan");
        assert_eq!(newest, Some(dir.path().join("kernel-b.json")));
        let single = find_newest(&dirs, "*-a*").expect("scan");
        assert_eq!(single, Some(dir.path().join("kernel-a.json")));
        assert_eq!(find_newest(&dirs, "*nothing*").expect("scan"), None);
        assert_eq!(glob_names(dir.path(), ".kernel*").len(), 1);
        assert!(glob_names(Path::new("/no/such/dir"), "*").is_empty());
    }
}
