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
    let keep = |name: &[u8]| {
        if (!hidden_ok && name.first() == Some(&b'.')) || name == b"." || name == b".." {
            return None;
        }
        let name = std::str::from_utf8(name).ok()?;
        fnmatch(name, pattern).then(|| name.to_owned())
    };
    let Ok(fd) = DirFd::open(dir) else {
        return out;
    };
    for_each_name(&fd, |name| {
        if let Some(hit) = keep(name) {
            out.push(hit);
        }
    });
    out
}

/// Call `visit` with every entry name of the open directory, in directory order.
/// On Linux this reads entries in large batches straight from getdents64, with
/// no allocation per entry; elsewhere it uses the standard library.
#[cfg(target_os = "linux")]
fn for_each_name(dir: &DirFd, mut visit: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 256 * 1024];
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
pub fn find_newest(dirs: &[PathBuf], pattern: &str) -> Result<Option<PathBuf>> {
    let matches: Vec<(usize, Vec<String>)> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| (i, glob_names(dir, pattern)))
        .filter(|(_, names)| !names.is_empty())
        .collect();
    let total: usize = matches.iter().map(|(_, names)| names.len()).sum();
    if total <= 1 {
        return Ok(matches
            .into_iter()
            .next()
            .and_then(|(i, names)| names.into_iter().next().map(|n| dirs[i].join(n))));
    }
    let mut best: Option<((i64, i64), PathBuf)> = None;
    for (i, names) in matches {
        let Ok(fd) = DirFd::open(&dirs[i]) else {
            continue;
        };
        if let Some((t, name)) = newest_in(fd.0, &names) {
            if best.as_ref().is_none_or(|(b, _)| t >= *b) {
                best = Some((t, dirs[i].join(name)));
            }
        }
    }
    Ok(best.map(|(_, path)| path))
}

/// The newest of `names` (relative to the open directory) by access time, the
/// last of equals. Large lists are stat'ed by several threads: a stat is a
/// syscall each, and thousands of them dominate a farm directory's scan.
fn newest_in(dir_fd: libc::c_int, names: &[String]) -> Option<((i64, i64), &str)> {
    let newest_of = |chunk: &[String]| {
        let mut best: Option<((i64, i64), usize)> = None;
        for (i, name) in chunk.iter().enumerate() {
            if let Some(t) = atime(dir_fd, name) {
                if best.is_none_or(|(b, _)| t >= b) {
                    best = Some((t, i));
                }
            }
        }
        best
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1);
    if threads < 2 || names.len() < 2048 {
        return newest_of(names).map(|(t, i)| (t, names[i].as_str()));
    }
    let size = names.len().div_ceil(threads);
    let partial: Vec<Option<((i64, i64), usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(size)
            .enumerate()
            .map(|(c, chunk)| scope.spawn(move || newest_of(chunk).map(|(t, i)| (t, c * size + i))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    // Chunks are in order, so ">=" keeps the last of equals across chunks too.
    let mut best: Option<((i64, i64), usize)> = None;
    for (t, i) in partial.into_iter().flatten() {
        if best.is_none_or(|(b, _)| t >= b) {
            best = Some((t, i));
        }
    }
    best.map(|(t, i)| (t, names[i].as_str()))
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
