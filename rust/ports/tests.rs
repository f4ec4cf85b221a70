//! Unit tests of the table: plain Rust, real files, real sockets, real forks.

use super::*;
use std::collections::HashSet;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;

fn table() -> (tempfile::TempDir, PortTable) {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = PortTable::open(&dir.path().join("ports"), Access::User).expect("open table");
    (dir, table)
}

/// Run `f` in a forked child that then exits at once (SIGKILL-like: no
/// clean-up), returning what it wrote to a pipe.
fn in_child(f: impl FnOnce() -> Vec<u16>) -> Vec<u16> {
    let mut fds = [0; 2];
    // SAFETY: a valid array for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child runs `f` (our own code, no locks held by other test
    // threads matter to it), writes, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ports = f();
        let bytes: Vec<u8> = ports.iter().flat_map(|p| p.to_le_bytes()).collect();
        // SAFETY: writing our buffer to the pipe, then leaving without clean-up.
        unsafe {
            libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end; reading into a local buffer.
    unsafe { libc::close(fds[1]) };
    let mut buf = vec![0u8; 1 << 16];
    let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
    let mut status = 0;
    // SAFETY: reaping our child; closing our read end.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::close(fds[0]);
    }
    buf[..usize::try_from(n).unwrap_or(0)]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn reserve_gives_distinct_bindable_ports() {
    let (_dir, table) = table();
    let ports = table
        .reserve("127.0.0.1", 5, None, Kind::Held)
        .expect("reserve");
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 5);
    for &port in &ports {
        assert!(table.holds(port).expect("holds"));
        TcpListener::bind(("127.0.0.1", port)).expect("reserved port is bindable");
    }
}

#[test]
fn a_claimed_port_is_released_once() {
    let (_dir, table) = table();
    let port = table
        .reserve("127.0.0.1", 1, None, Kind::Held)
        .expect("reserve")[0];
    assert!(table.release(port).expect("release"));
    assert!(
        !table.release(port).expect("again"),
        "second release is a no-op"
    );
    assert!(!table.holds(port).expect("holds"));
}

#[test]
fn two_mappings_see_each_other() {
    let (dir, table) = table();
    let other = PortTable::open(&dir.path().join("ports"), Access::User).expect("reopen");
    let port = table
        .reserve("127.0.0.1", 1, None, Kind::Held)
        .expect("reserve")[0];
    let (_, alive) = other.owner(port).expect("owner").expect("taken");
    assert!(alive);
    let got = other.reserve(
        "127.0.0.1",
        50,
        Some((port, port.saturating_add(49).max(port))),
        Kind::Held,
    );
    if let Ok(got) = got {
        assert!(!got.contains(&port));
    }
}

#[test]
fn a_dead_owner_is_reclaimed_and_a_live_one_never() {
    let (dir, table) = table();
    let path = dir.path().join("ports");
    let range = (47_000, 47_009);
    // A forked child reserves the whole range and dies without clean-up.
    let theirs = in_child(|| {
        let t = PortTable::open(&path, Access::User).expect("open in child");
        t.reserve("127.0.0.1", 10, Some(range), Kind::Held)
            .unwrap_or_default()
    });
    assert_eq!(theirs.len(), 10, "the child got the range");
    let ours = table
        .reserve("127.0.0.1", 10, Some(range), Kind::Held)
        .expect("reclaim");
    assert_eq!(
        ours.iter().collect::<HashSet<_>>(),
        theirs.iter().collect::<HashSet<_>>()
    );
    // Now a live owner (us) holds it all: a second process gets nothing.
    let none = in_child(|| {
        let t = PortTable::open(&path, Access::User).expect("open in child");
        t.reserve("127.0.0.1", 1, Some(range), Kind::Held)
            .unwrap_or_default()
    });
    assert!(none.is_empty(), "a live owner's ports were taken: {none:?}");
}

#[test]
fn a_forked_child_never_releases_its_parents_ports() {
    let (_dir, table) = table();
    let ports = table
        .reserve("127.0.0.1", 3, None, Kind::Held)
        .expect("reserve");
    let freed = in_child(|| {
        let mut out = Vec::new();
        for &p in &ports {
            if table.release(p).unwrap_or(false) {
                out.push(p);
            }
        }
        out.push(table.release_all().unwrap_or(0) as u16);
        out
    });
    assert_eq!(freed, vec![0], "the child released nothing");
    for &p in &ports {
        assert!(table.holds(p).expect("holds"), "parent still holds {p}");
    }
}

#[test]
fn a_lease_outlives_its_maker_until_it_ends() {
    let (dir, table) = table();
    let path = dir.path().join("ports");
    let range = (47_100, 47_101);
    let leased = in_child(|| {
        let t = PortTable::open(&path, Access::User).expect("open in child");
        t.reserve("127.0.0.1", 2, Some(range), Kind::Lease { seconds: 600 })
            .unwrap_or_default()
    });
    assert_eq!(leased.len(), 2);
    assert!(
        table
            .reserve("127.0.0.1", 1, Some(range), Kind::Held)
            .is_err(),
        "a lease protects its ports after its maker exits"
    );
    let (_, alive) = table.owner(leased[0]).expect("owner").expect("taken");
    assert!(alive);
    // Make the lease end now (as time would): rewrite its expiry in the past.
    let mapped = table.mapped().expect("mapped");
    for &p in &leased {
        let slot = &mapped.slots()[usize::from(p)];
        let word = slot.load(Ordering::Acquire);
        slot.store(word & !0xffff_ffff | 1, Ordering::Release);
    }
    let again = table
        .reserve("127.0.0.1", 2, Some(range), Kind::Held)
        .expect("reclaim");
    assert_eq!(again.len(), 2);
}

#[test]
fn own_lease_is_returned_early_but_not_by_release_all() {
    let (_dir, table) = table();
    let leased = table
        .reserve("127.0.0.1", 2, None, Kind::Lease { seconds: 60 })
        .expect("lease");
    assert_eq!(
        table.release_all().expect("release_all"),
        0,
        "leases outlive release_all"
    );
    assert!(table.holds(leased[0]).expect("holds"));
    assert!(table.release(leased[0]).expect("release"));
    assert!(!table.holds(leased[0]).expect("holds"));
}

#[test]
fn bound_port_is_skipped() {
    let (_dir, table) = table();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = listener.local_addr().expect("addr").port();
    let got = table
        .reserve("127.0.0.1", 1, Some((busy, busy)), Kind::Held)
        .expect_err("the only candidate is bound");
    assert!(matches!(got, Error::NoFreePort { .. }));
    assert!(
        !table.holds(busy).expect("holds"),
        "a failed probe releases its slot"
    );
    assert!(table.owner(busy).expect("owner").is_none());
}

#[test]
fn bad_arguments_are_errors_before_any_allocation() {
    let (_dir, table) = table();
    for count in [1usize << 40, 1 << 62, usize::MAX, 65_536] {
        assert!(matches!(
            table.reserve("127.0.0.1", count, None, Kind::Held),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        table.reserve("127.0.0.1", 11, Some((45_000, 45_009)), Kind::Held),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        table.reserve("127.0.0.1", 1, Some((10, 5)), Kind::Held),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        table.reserve("127.0.0.1", 1, None, Kind::Lease { seconds: 0 }),
        Err(Error::InvalidArgument(_))
    ));
    // A bind probe on an address this host lacks fails; a bind sends nothing.
    assert!(table.reserve("203.0.113.7", 1, None, Kind::Held).is_err());
    assert!(table.held().expect("held").is_empty());
}

#[test]
fn threads_never_share_a_port() {
    let (_dir, table) = table();
    let table = Arc::new(table);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                table
                    .reserve("127.0.0.1", 50, None, Kind::Held)
                    .expect("reserve")
            })
        })
        .collect();
    let mut all = HashSet::new();
    for handle in handles {
        for port in handle.join().expect("thread") {
            assert!(all.insert(port), "port {port} handed out twice");
        }
    }
    assert_eq!(table.release_all().expect("release_all"), 400);
    assert!(table.held().expect("held").is_empty());
}

#[test]
fn a_full_span_is_skipped_and_the_next_used() {
    let (_dir, table) = table();
    let (above, odd, _) = default_capacity();
    if above == 0 {
        return;
    }
    let (lo, hi) = ephemeral_range();
    // Hold every port above the ephemeral range (as a live owner, us, would:
    // slot word and summary bit), without binding any of them.
    let mapped = table.mapped().expect("mapped");
    let word = mapped.me().expect("me").held();
    for port in hi + 1..=u16::MAX {
        mapped.slots()[usize::from(port)].store(word, Ordering::Release);
        mapped.mark(port);
    }
    for _ in 0..3 {
        let next = table
            .reserve("127.0.0.1", 5, None, Kind::Held)
            .expect("reserve");
        assert!(odd > 0);
        assert!(
            next.iter().all(|&p| p >= lo && p <= hi && p % 2 == 1),
            "{next:?}"
        );
    }
}

#[test]
fn a_deleted_table_is_noticed_and_reservations_move() {
    let (dir, table) = table();
    let path = dir.path().join("ports");
    let held = table
        .reserve("127.0.0.1", 3, None, Kind::Held)
        .expect("reserve");
    std::fs::remove_file(&path).expect("rm");
    // The next operation opens a new table and moves our ports there.
    let more = table
        .reserve("127.0.0.1", 1, None, Kind::Held)
        .expect("reserve");
    assert!(!held.contains(&more[0]));
    let notices = table.take_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let newcomer = PortTable::open(&path, Access::User).expect("open new");
    for &p in &held {
        let (_, alive) = newcomer.owner(p).expect("owner").expect("moved");
        assert!(alive, "port {p} protected in the new table");
    }
    assert_eq!(std::fs::metadata(&path).expect("stat").nlink(), 1);
}

#[test]
fn a_truncated_table_never_crashes_and_is_replaced() {
    let (dir, table) = table();
    let path = dir.path().join("ports");
    let held = table
        .reserve("127.0.0.1", 2, None, Kind::Held)
        .expect("reserve");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    let more = table
        .reserve("127.0.0.1", 1, None, Kind::Held)
        .expect("reserve after truncation");
    assert!(!held.contains(&more[0]));
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        crate::table_file::TABLE_BYTES as u64
    );
    let newcomer = PortTable::open(&path, Access::User).expect("open");
    for &p in &held {
        assert!(newcomer.owner(p).expect("owner").is_some_and(|(_, a)| a));
    }
}

#[test]
fn in_process_table_works() {
    let table = PortTable::in_process().expect("anon");
    assert!(table.path().is_none());
    let ports = table.reserve("", 2, None, Kind::Held).expect("reserve");
    assert_eq!(table.held().expect("held").len(), 2);
    assert!(ports.iter().all(|&p| table.holds(p).unwrap_or(false)));
}

#[test]
fn default_candidates_avoid_what_the_os_hands_out_first() {
    let (lo, hi) = ephemeral_range();
    let spans = Candidates::default_spans();
    assert_eq!(
        spans.len(),
        usize::from(u16::MAX - hi) + usize::from(hi - lo) + 1
    );
    if hi < u16::MAX {
        assert_eq!(spans.spans[0].lo, hi + 1);
    }
    assert!(spans.spans.iter().all(|s| s.lo >= lo));
}
