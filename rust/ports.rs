//! The port reservation table and the bind-probe loop.
//!
//! One table per user per host: a memory-mapped file of 65,536 atomic words,
//! one per port. A word is 0 (free) or the packed [`Owner`] that reserved the
//! port. Reserving is a compare-and-swap, so threads and processes that share
//! the file can never hold the same port at once: no mutex, no daemon. A word
//! whose owner has died (SIGKILL included) is reclaimed by the next allocation
//! that meets it. Word 0 (port 0 is never handed out) holds a magic number that
//! marks the file as ours.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use memmap2::{MmapOptions, MmapRaw};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::process::{me, Owner};

/// Number of slots: one per TCP port.
pub const SLOTS: usize = 65_536;
const TABLE_BYTES: u64 = (SLOTS * std::mem::size_of::<u64>()) as u64;
/// "KCPORTS1" little-endian: marks a file as a version-1 port table.
const MAGIC: u64 = u64::from_le_bytes(*b"KCPORTS1");

/// One held slot, as reported by [`PortTable::held`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding {
    pub port: u16,
    pub owner: Owner,
    pub alive: bool,
}

/// A shared (file-backed) or private (anonymous) table of port reservations.
pub struct PortTable {
    map: MmapRaw,
    path: Option<PathBuf>,
}

impl PortTable {
    /// Open or create the shared table at `path` (mode 0600, owner-only).
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("opening port table", path, e))?;
        check_ownership(&file, path)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("inspecting port table", path, e))?
            .len();
        if len > TABLE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{} is not a kernel-connect port table ({len} bytes, expected {TABLE_BYTES})",
                path.display()
            )));
        }
        if len < TABLE_BYTES {
            // Racing creators all extend to the same size with zeros: harmless.
            file.set_len(TABLE_BYTES)
                .map_err(|e| Error::io("sizing port table", path, e))?;
        }
        let map = MmapOptions::new()
            .len(SLOTS * std::mem::size_of::<u64>())
            .map_raw(&file)
            .map_err(|e| Error::io("mapping port table", path, e))?;
        let table = PortTable {
            map,
            path: Some(path.to_path_buf()),
        };
        table.check_magic()?;
        Ok(table)
    }

    /// A table private to this process: the fallback when no shared file can be used.
    pub fn in_process() -> Result<Self> {
        let map = MmapOptions::new()
            .len(SLOTS * std::mem::size_of::<u64>())
            .map_anon()
            .map_err(|e| Error::os("mapping in-process port table", e))?;
        let table = PortTable {
            map: MmapRaw::from(map),
            path: None,
        };
        table.check_magic()?;
        Ok(table)
    }

    /// The backing file, or None for an in-process table.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn slots(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is SLOTS * 8 bytes, page-aligned (so 8-aligned), and
        // lives as long as `self`. Every access, from any thread or process, goes
        // through these atomics, so shared mutation is well defined.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), SLOTS) }
    }

    fn check_magic(&self) -> Result<()> {
        let head = &self.slots()[0];
        match head.compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(found) if found == MAGIC => Ok(()),
            Err(_) => Err(Error::InvalidArgument(format!(
                "{} is not a kernel-connect port table (bad magic)",
                self.path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "in-process table".into())
            ))),
        }
    }

    /// Claim `port` for this process. Reclaims it if its owner is dead.
    /// False if a live process (this one included) already holds it.
    pub fn try_claim(&self, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        let slot = &self.slots()[usize::from(port)];
        let mine = me();
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current != 0 && (current == mine || Owner::decode(current).is_alive()) {
                return false;
            }
            match slot.compare_exchange(current, mine, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(found) => current = found,
            }
        }
    }

    /// Free `port` if this process holds it. Unknown ports are ignored (false).
    pub fn release(&self, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        self.slots()[usize::from(port)]
            .compare_exchange(me(), 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Free every port this process holds; returns how many.
    pub fn release_all(&self) -> usize {
        let mine = me();
        self.slots()[1..]
            .iter()
            .filter(|slot| {
                slot.load(Ordering::Relaxed) == mine
                    && slot
                        .compare_exchange(mine, 0, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
            .count()
    }

    /// Who holds `port`, if anyone.
    pub fn owner(&self, port: u16) -> Option<Owner> {
        if port == 0 {
            return None;
        }
        match self.slots()[usize::from(port)].load(Ordering::Acquire) {
            0 => None,
            word => Some(Owner::decode(word)),
        }
    }

    /// True if this process holds `port`.
    pub fn holds(&self, port: u16) -> bool {
        port != 0 && self.slots()[usize::from(port)].load(Ordering::Acquire) == me()
    }

    /// Every held slot, with its owner and whether that owner still lives.
    pub fn held(&self) -> Vec<Holding> {
        let mut out = Vec::new();
        for (index, slot) in self.slots().iter().enumerate().skip(1) {
            let word = slot.load(Ordering::Acquire);
            if word != 0 {
                let owner = Owner::decode(word);
                out.push(Holding {
                    port: index as u16,
                    owner,
                    alive: owner.is_alive(),
                });
            }
        }
        out
    }

    /// Reserve `count` distinct ports bindable on `ip`.
    ///
    /// Candidates are the ports the OS never hands out by itself (above its
    /// ephemeral range), then the ephemeral range's odd ports; or, with `range`,
    /// every port of that inclusive range. Each candidate's slot is won
    /// first and only then is the port bind-probed on `ip`: a process never binds
    /// a port that another process holds, so a kernel's own bind can never lose
    /// a race against someone's probe.
    pub fn reserve(&self, ip: &str, count: usize, range: Option<(u16, u16)>) -> Result<Vec<u16>> {
        let addr = resolve(ip)?;
        let candidates = match range {
            None => Candidates::default_spans(),
            Some((lo, hi)) => Candidates::range(lo, hi)?,
        };
        let mut claim = Claim {
            table: self,
            ports: Vec::with_capacity(count),
        };
        let mut tried = 0usize;
        // A socket whose bind failed is unbound still and can probe the next port.
        let mut spare: Option<Socket> = None;
        for port in candidates.iter() {
            if claim.ports.len() == count {
                break;
            }
            tried += 1;
            if !self.try_claim(port) {
                continue;
            }
            let socket = match spare.take() {
                Some(socket) => socket,
                None => probe_socket(addr)?,
            };
            match bind(&socket, addr, port) {
                Ok(()) => claim.ports.push(port),
                Err(err) if err.errno() == Some(libc::EADDRINUSE) => {
                    self.release(port);
                    spare = Some(socket);
                }
                Err(err) => {
                    self.release(port);
                    return Err(err);
                }
            }
        }
        if claim.ports.len() == count {
            Ok(claim.keep())
        } else {
            Err(Error::NoFreePort {
                ip: addr.ip().to_string(),
                attempts: tried,
            })
        }
    }
}

/// The ports one `reserve` call walks: spans in order, each visited from a
/// random start so concurrent allocators spread out instead of contending.
struct Candidates {
    spans: Vec<Span>,
}

#[derive(Clone, Copy)]
struct Span {
    lo: u16,
    hi: u16,
    step: u16,
}

impl Span {
    fn iter(self) -> impl Iterator<Item = u16> {
        let len = if self.hi < self.lo {
            0
        } else {
            usize::from(self.hi - self.lo) / usize::from(self.step) + 1
        };
        let start = if len == 0 {
            0
        } else {
            (random_u64() % len as u64) as usize
        };
        (0..len).map(move |i| self.lo + (((start + i) % len) as u16) * self.step)
    }
}

impl Candidates {
    fn range(lo: u16, hi: u16) -> Result<Self> {
        if lo == 0 || lo > hi {
            return Err(Error::InvalidArgument(format!(
                "port range {lo}-{hi} is invalid: expected 1 <= low <= high <= 65535"
            )));
        }
        Ok(Candidates {
            spans: vec![Span { lo, hi, step: 1 }],
        })
    }

    /// First the ports above the OS's ephemeral range: the OS never hands those
    /// out, neither to bind(0) (which ipykernel itself calls for a socket of its
    /// own in every kernel) nor to outgoing connections, so nothing but an
    /// explicit bind to that very port can take one between our reservation and
    /// the kernel's bind. Then, if those run out, the ephemeral range's odd ports
    /// (Linux's bind(0) uses odd ones, leaving even ones to connect()).
    fn default_spans() -> Self {
        let (lo, hi) = ephemeral_range();
        let mut spans = Vec::with_capacity(2);
        if hi < u16::MAX {
            spans.push(Span {
                lo: hi + 1,
                hi: u16::MAX,
                step: 1,
            });
        }
        spans.push(Span {
            lo: lo | 1,
            hi,
            step: 2,
        });
        Candidates { spans }
    }

    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.spans.iter().flat_map(|span| span.iter())
    }
}

/// The OS's ephemeral port range (Linux: /proc/sys/net/ipv4/ip_local_port_range,
/// read once per process; elsewhere the IANA dynamic range).
pub fn ephemeral_range() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut it = text.split_ascii_whitespace().map(|v| v.parse::<u16>());
                match (it.next(), it.next()) {
                    (Some(Ok(lo)), Some(Ok(hi))) if 0 < lo && lo <= hi => Some((lo, hi)),
                    _ => None,
                }
            })
            .unwrap_or((49_152, 65_535))
    })
}

/// A well-mixed random number: clock, pid and a counter through splitmix64.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ports claimed during one `reserve` call; released again unless kept.
struct Claim<'a> {
    table: &'a PortTable,
    ports: Vec<u16>,
}

impl Claim<'_> {
    fn keep(mut self) -> Vec<u16> {
        std::mem::take(&mut self.ports)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        for &port in &self.ports {
            self.table.release(port);
        }
    }
}

/// Refuse a table file that another user could write to or that is not a file.
fn check_ownership(file: &File, path: &Path) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io("inspecting port table", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(Error::InvalidArgument(format!(
            "port table {} belongs to uid {}, not to us (uid {euid})",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("restricting port table permissions", path, e))?;
    }
    Ok(())
}

/// `ip` as a socket address with port 0; "" means loopback, "*" any address.
pub fn resolve(ip: &str) -> Result<SocketAddr> {
    let host = match ip {
        "" => "127.0.0.1",
        "*" => "0.0.0.0",
        other => other.trim_start_matches('[').trim_end_matches(']'),
    };
    if let Ok(addr) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(addr, 0));
    }
    (host, 0)
        .to_socket_addrs()
        .map_err(|e| Error::os(format!("resolving {host:?}"), e))?
        .next()
        .ok_or_else(|| Error::InvalidArgument(format!("{host:?} resolves to no address")))
}

/// A TCP socket for probing. No SO_REUSEADDR: a probe must fail where a
/// listener holds the port, and stay conservative about TIME_WAIT.
fn probe_socket(addr: SocketAddr) -> Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Error::os("creating probe socket", e))?;
    if addr.is_ipv6() {
        // Probe only the IPv6 address the caller asked for.
        socket
            .set_only_v6(true)
            .map_err(|e| Error::os("configuring probe socket", e))?;
    }
    Ok(socket)
}

fn bind(socket: &Socket, addr: SocketAddr, port: u16) -> Result<()> {
    let mut target = addr;
    target.set_port(port);
    socket
        .bind(&target.into())
        .map_err(|e| Error::os(format!("binding {target}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::TcpListener;
    use std::sync::Arc;

    fn shared_table() -> (tempfile::TempDir, PortTable) {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = PortTable::open(&dir.path().join("ports")).expect("open table");
        (dir, table)
    }

    #[test]
    fn file_is_private_and_sized() {
        let (dir, _table) = shared_table();
        let meta = std::fs::metadata(dir.path().join("ports")).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), TABLE_BYTES);
    }

    #[test]
    fn reserve_gives_distinct_bindable_ports() {
        let (_dir, table) = shared_table();
        let ports = table.reserve("127.0.0.1", 5, None).expect("reserve");
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 5);
        for &port in &ports {
            assert!(table.holds(port));
            TcpListener::bind(("127.0.0.1", port)).expect("reserved port is bindable");
        }
    }

    #[test]
    fn a_claimed_port_cannot_be_claimed_again_until_released() {
        let (_dir, table) = shared_table();
        let port = table.reserve("127.0.0.1", 1, None).expect("reserve")[0];
        assert!(!table.try_claim(port));
        assert!(table.release(port));
        assert!(!table.release(port), "second release is a no-op");
        assert!(table.try_claim(port));
    }

    #[test]
    fn two_mappings_of_one_file_share_reservations() {
        let (dir, table) = shared_table();
        let other = PortTable::open(&dir.path().join("ports")).expect("reopen");
        let port = table.reserve("127.0.0.1", 1, None).expect("reserve")[0];
        assert!(other.holds(port));
        assert!(!other.try_claim(port));
    }

    #[test]
    fn dead_owner_is_reclaimed() {
        let (_dir, table) = shared_table();
        let dead = Owner {
            pid: u32::MAX >> 1,
            stamp: 7,
        };
        table.slots()[40_000].store(dead.encode(), Ordering::Release);
        assert!(table.try_claim(40_000));
        assert!(table.holds(40_000));
    }

    #[test]
    fn bound_port_is_skipped_in_range_mode() {
        let (_dir, table) = shared_table();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let busy = listener.local_addr().expect("addr").port();
        let got = table
            .reserve("127.0.0.1", 1, Some((busy, busy)))
            .expect_err("the only candidate is bound");
        assert!(matches!(got, Error::NoFreePort { .. }));
        assert!(!table.holds(busy), "a failed probe releases its slot");
    }

    #[test]
    fn range_mode_stays_in_range() {
        let (_dir, table) = shared_table();
        let ports = table
            .reserve("127.0.0.1", 3, Some((45_000, 45_031)))
            .expect("reserve");
        assert!(ports.iter().all(|p| (45_000..=45_031).contains(p)));
    }

    #[test]
    fn bad_range_and_bad_ip_are_errors() {
        let (_dir, table) = shared_table();
        assert!(matches!(
            table.reserve("127.0.0.1", 1, Some((10, 5))),
            Err(Error::InvalidArgument(_))
        ));
        assert!(table.reserve("203.0.113.7", 1, None).is_err());
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ports");
        std::fs::write(&path, vec![0xffu8; 64]).expect("write");
        assert!(PortTable::open(&path).is_err());
    }

    #[test]
    fn threads_never_share_a_port() {
        let (_dir, table) = shared_table();
        let table = Arc::new(table);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || table.reserve("127.0.0.1", 50, None).expect("reserve"))
            })
            .collect();
        let mut all = HashSet::new();
        for handle in handles {
            for port in handle.join().expect("thread") {
                assert!(all.insert(port), "port {port} handed out twice");
            }
        }
        assert_eq!(table.release_all(), 400);
        assert!(table.held().is_empty());
    }

    #[test]
    fn default_candidates_avoid_what_the_os_hands_out() {
        let (lo, hi) = ephemeral_range();
        let spans = Candidates::default_spans();
        let first: Vec<u16> = spans.iter().take(100).collect();
        if hi < u16::MAX {
            assert!(first.iter().all(|&p| p > hi), "{first:?}");
        }
        assert!(spans.iter().all(|p| p > hi || (p >= lo && p % 2 == 1)));
    }

    #[test]
    fn in_process_table_works() {
        let table = PortTable::in_process().expect("anon");
        assert!(table.path().is_none());
        let ports = table.reserve("", 2, None).expect("reserve");
        assert_eq!(table.held().len(), 2);
        assert!(ports.iter().all(|&p| table.holds(p)));
    }
}
