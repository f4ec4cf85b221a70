//! The port reservation table and the bind-probe loop.
//!
//! One slot word per TCP port in a shared mapped file (`table_file.rs`).
//! A reservation is a compare-and-swap of a slot from free (or from a
//! reservation that has ended) to this process's word, so threads and
//! processes that share the file never hold one port at once: no mutex, no
//! daemon. Only the slot's winner then bind-probes the port.
//!
//! Two kinds of reservation (`slot.rs`): *held*, which lasts while its owner
//! lives (until returned, or the owner exits or dies), and a *lease*, which
//! ends by itself at a time, for ports that no object will ever return.
//!
//! Cost does not grow with occupancy:
//! - a summary bitmap (one bit per slot, set while the slot is taken) lets a
//!   walk skip 64 taken slots with one load;
//! - an owner's liveness is judged once per call, not once per slot;
//! - taken slots are re-examined for dead owners and ended leases (a "sweep")
//!   only when a span of candidates looks full, at most every
//!   [`SWEEP_INTERVAL_MS`] per process, and always before giving up;
//! - a span that was full at its sweep is passed over until the next one.
//!
//! The bitmap is a hint: its bit may be clear for a taken slot (two updates
//! crossed) or set for a free one (an owner died between its two stores, or
//! the port failed its bind probe: something outside the table uses it).
//! The first costs a look at the slot; the second waits for a sweep.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::owners::{self, Registration};
use crate::process;
use crate::slot::{OwnerId, Slot};
use crate::table_file::{Access, TableFile, SLOTS, SLOTS_AT, SUMMARY_AT, SUMMARY_WORDS};

/// How often one process may re-examine a span that looks full.
pub const SWEEP_INTERVAL_MS: u64 = 200;
/// `mine` marker for a held port (anything else non-zero is a lease's expiry).
const MINE_HELD: u32 = u32::MAX;

/// What a reservation is: held by its owner, or leased for some seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Held,
    Lease { seconds: u32 },
}

/// One taken slot, as reported by [`PortTable::held`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub port: u16,
    /// The owner's pid in its own pid namespace (0 when no longer known).
    pub pid: u32,
    /// False when the pid is another pid namespace's number.
    pub pid_here: bool,
    /// Still protected: a live owner, or a lease not yet over.
    pub alive: bool,
    pub lease_until: Option<u64>,
}

/// A mapped table plus this process's registration with it.
struct Mapped {
    file: TableFile,
    /// Packed (fork epoch, owner id), or 0 before this process registered.
    me: AtomicU64,
    registration: Mutex<Option<Registration>>,
}

const EPOCH_BITS: u32 = 18;

fn pack(epoch: u64, id: OwnerId) -> u64 {
    (1 << 63)
        | ((epoch & ((1 << EPOCH_BITS) - 1)) << 45)
        | (u64::from(id.index) << 32)
        | u64::from(id.generation)
}

fn unpack(word: u64, epoch: u64) -> Option<OwnerId> {
    let valid = word >> 63 == 1
        && (word >> 45) & ((1 << EPOCH_BITS) - 1) == epoch & ((1 << EPOCH_BITS) - 1);
    valid.then_some(OwnerId {
        index: ((word >> 32) & 0x1fff) as u16,
        generation: (word & 0xffff_ffff) as u32,
    })
}

impl Mapped {
    fn new(file: TableFile) -> Arc<Mapped> {
        Arc::new(Mapped {
            file,
            me: AtomicU64::new(0),
            registration: Mutex::new(None),
        })
    }

    fn slots(&self) -> &[AtomicU64] {
        self.file.words(SLOTS_AT, SLOTS)
    }

    fn summary(&self) -> &[AtomicU64] {
        self.file.words(SUMMARY_AT, SUMMARY_WORDS)
    }

    /// This process's owner id here, if it registered since its last fork.
    fn registered(&self) -> Option<OwnerId> {
        unpack(self.me.load(Ordering::Acquire), process::fork_epoch())
    }

    /// This process's owner id here, registering on first use (and in a
    /// forked child, whose parent's registration is not its own).
    fn me(&self) -> Result<OwnerId> {
        if let Some(id) = self.registered() {
            return Ok(id);
        }
        let epoch = process::fork_epoch();
        let mut guard = self.registration.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = self.registered() {
            return Ok(id);
        }
        let registration = owners::register(&self.file)?;
        let id = registration.id;
        // Replacing an inherited registration drops it: its lock descriptor
        // was already closed by the fork hook, so nothing of the parent's is
        // touched.
        *guard = Some(registration);
        self.me.store(pack(epoch, id), Ordering::Release);
        Ok(id)
    }

    fn mark(&self, port: u16) {
        self.summary()[usize::from(port) / 64].fetch_or(1 << (port % 64), Ordering::AcqRel);
    }

    fn unmark(&self, port: u16) {
        self.summary()[usize::from(port) / 64].fetch_and(!(1 << (port % 64)), Ordering::AcqRel);
    }

    /// Free `port` if `id` made its reservation (held or leased).
    fn release_as(&self, id: OwnerId, port: u16) -> bool {
        let slot = &self.slots()[usize::from(port)];
        let word = slot.load(Ordering::Acquire);
        if !id.made(Slot::decode(word)) {
            return false;
        }
        let done = slot
            .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if done {
            self.unmark(port);
        }
        done
    }
}

/// Where a table comes from.
enum Source {
    File { path: PathBuf, access: Access },
    InProcess,
}

/// A shared (file-backed) or private (in-process) table of port reservations.
pub struct PortTable {
    source: Source,
    current: ArcSwap<Mapped>,
    /// Serializes reopening after the file was deleted, replaced or truncated.
    reopening: Mutex<()>,
    /// What this process reserved (for moving to a new table and for
    /// release_all): 0, [`MINE_HELD`], or a lease's expiry.
    mine: Box<[AtomicU32]>,
    /// The fork epoch `mine` belongs to; a child starts with an empty `mine`.
    mine_epoch: AtomicU64,
    notices: Mutex<Vec<String>>,
    has_notices: AtomicBool,
    /// When this process last swept, and last found full, each span.
    span_memo: SpanMemos,
}

impl PortTable {
    /// Open or create the table at `path`.
    pub fn open(path: &Path, access: Access) -> Result<Self> {
        let file = TableFile::open(path, access)?;
        Ok(Self::with(
            Source::File {
                path: path.to_path_buf(),
                access,
            },
            file,
        ))
    }

    /// A table private to this process: the fallback when no file can be used.
    pub fn in_process() -> Result<Self> {
        Ok(Self::with(Source::InProcess, TableFile::anonymous()?))
    }

    fn with(source: Source, file: TableFile) -> Self {
        PortTable {
            source,
            current: ArcSwap::new(Mapped::new(file)),
            reopening: Mutex::new(()),
            mine: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            mine_epoch: AtomicU64::new(process::fork_epoch()),
            notices: Mutex::new(Vec::new()),
            has_notices: AtomicBool::new(false),
            span_memo: SpanMemos::default(),
        }
    }

    /// The backing file, or None for an in-process table.
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File { path, .. } => Some(path),
            Source::InProcess => None,
        }
    }

    /// Warnings for the user since the last call (a table that was replaced
    /// under us, ports another process took meanwhile).
    pub fn take_notices(&self) -> Vec<String> {
        if !self.has_notices.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn notice(&self, text: String) {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
        self.has_notices.store(true, Ordering::Release);
    }

    /// `mine`, emptied first in a forked child (what it holds is the parent's).
    fn mine(&self) -> &[AtomicU32] {
        let epoch = process::fork_epoch();
        if self.mine_epoch.swap(epoch, Ordering::AcqRel) != epoch {
            for entry in self.mine.iter() {
                entry.store(0, Ordering::Relaxed);
            }
        }
        &self.mine
    }

    /// The current mapping, reopened first if the file is no longer ours
    /// (deleted, replaced, truncated) or a fault was repaired in it. Checked
    /// before every operation, so a truncated file is seen before its pages
    /// are touched (the SIGBUS guard covers the rest).
    fn mapped(&self) -> Result<Arc<Mapped>> {
        let mapped = self.current.load_full();
        if mapped.file.is_current() {
            return Ok(mapped);
        }
        self.reopen(&mapped)
    }

    fn reopen(&self, stale: &Arc<Mapped>) -> Result<Arc<Mapped>> {
        let Source::File { path, access } = &self.source else {
            return Ok(Arc::clone(stale));
        };
        let _serial = self.reopening.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.current.load_full();
        if !Arc::ptr_eq(&now, stale) && now.file.is_current() {
            return Ok(now);
        }
        let fresh = Mapped::new(TableFile::open(path, *access)?);
        let ports: Vec<(u16, u32)> = self
            .mine()
            .iter()
            .enumerate()
            .filter_map(|(port, m)| {
                let m = m.load(Ordering::Acquire);
                (m != 0).then_some((port as u16, m))
            })
            .collect();
        self.migrate(&fresh, &ports)?;
        self.current.store(Arc::clone(&fresh));
        self.notice(format!(
            "the port table {} was deleted, replaced or truncated while in use; \
             this process's {} reservation(s) moved to the new table",
            path.display(),
            ports.len()
        ));
        Ok(fresh)
    }

    /// Claim `ports` (with their `mine` markers) in `fresh` for this process.
    /// Idempotent. A port some live process took meanwhile is reported: the
    /// reservation can no longer be guaranteed, and the user must hear of it.
    fn migrate(&self, fresh: &Mapped, ports: &[(u16, u32)]) -> Result<()> {
        let id = fresh.me()?;
        let mut judge = Judge::new(fresh, id);
        for &(port, marker) in ports {
            let word = if marker == MINE_HELD {
                id.held()
            } else {
                id.lease(marker)
            };
            let slot = &fresh.slots()[usize::from(port)];
            let mut current = slot.load(Ordering::Acquire);
            loop {
                if current == word {
                    break;
                }
                if current != 0 && !judge.reclaimable(current) {
                    self.mine()[usize::from(port)].store(0, Ordering::Release);
                    self.notice(format!(
                        "port {port}, reserved by this process, was taken by another \
                         process (pid {}) after the port table was replaced",
                        pid_label(fresh, current)
                    ));
                    break;
                }
                match slot.compare_exchange(current, word, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        fresh.mark(port);
                        break;
                    }
                    Err(found) => current = found,
                }
            }
        }
        Ok(())
    }

    /// Reserve `count` distinct ports bindable on `ip`.
    ///
    /// Candidates are the ports the OS never hands out by itself (above its
    /// ephemeral range), then the ephemeral range's odd ports, then its even
    /// ones; or, with `range`, every port of that inclusive range. Each
    /// candidate's slot is won first and only then is the port bind-probed on
    /// `ip`: a process never binds a port that another process holds, so a
    /// kernel's own bind can never lose a race against someone's probe.
    pub fn reserve(
        &self,
        ip: &str,
        count: usize,
        range: Option<(u16, u16)>,
        kind: Kind,
    ) -> Result<Vec<u16>> {
        let candidates = match range {
            None => Candidates::default_spans(),
            Some((lo, hi)) => Candidates::range(lo, hi)?,
        };
        let total = candidates.len();
        if count > total {
            return Err(Error::InvalidArgument(format!(
                "cannot reserve {count} ports: there are {total} candidate ports"
            )));
        }
        if let Kind::Lease { seconds: 0 } = kind {
            return Err(Error::InvalidArgument(
                "a lease must last at least 1 second".into(),
            ));
        }
        let addr = resolve(ip)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        // A table replaced mid-call is noticed at the end and the call redone
        // on the new one; more than a few in a row means someone is at war
        // with the file.
        for _ in 0..4 {
            let mapped = self.mapped()?;
            let id = mapped.me()?;
            let until = match kind {
                Kind::Held => None,
                Kind::Lease { seconds } => Some(
                    u32::try_from(process::clock_seconds().saturating_add(u64::from(seconds)))
                        .unwrap_or(u32::MAX - 1),
                ),
            };
            let word = until.map_or_else(|| id.held(), |until| id.lease(until));
            let mut claim = Claim {
                mapped: &mapped,
                id,
                ports: Vec::with_capacity(count),
            };
            self.fill(&mapped, &candidates, addr, word, count, &mut claim)?;
            if claim.ports.len() < count {
                return Err(Error::NoFreePort {
                    ip: addr.ip().to_string(),
                    attempts: total,
                });
            }
            if !mapped.file.is_current() {
                continue; // `claim` releases (on a table nobody uses any more)
            }
            let ports = claim.keep();
            let marker = until.unwrap_or(MINE_HELD);
            let mine = self.mine();
            for &port in &ports {
                mine[usize::from(port)].store(marker, Ordering::Release);
            }
            // A reopen that ran between our check and the markers above may
            // have missed them: make sure they are in the current table too.
            let now = self.current.load_full();
            if !Arc::ptr_eq(&now, &mapped) {
                let moved: Vec<(u16, u32)> = ports.iter().map(|&p| (p, marker)).collect();
                self.migrate(&now, &moved)?;
            }
            return Ok(ports);
        }
        Err(Error::os(
            "the port table keeps being replaced while in use",
            std::io::Error::from_raw_os_error(libc::EAGAIN),
        ))
    }

    /// Walk the candidates, claiming and probing, until `claim` has `count`.
    fn fill(
        &self,
        mapped: &Mapped,
        candidates: &Candidates,
        addr: SocketAddr,
        word: u64,
        count: usize,
        claim: &mut Claim<'_>,
    ) -> Result<()> {
        let mut judge = Judge::new(mapped, claim.id);
        let mut probe = Probe::new(addr);
        let now_ms = elapsed_ms();
        // Pass 0 visits slots whose summary bit is clear; pass 1 sweeps the
        // taken ones of a span that had too few free, if not swept lately;
        // pass 2 (only if still short) sweeps everything before giving up.
        for forced in [false, true] {
            for span in &candidates.spans {
                let start = span.random_start();
                let mut error = None;
                let mut visit = |port: u16| -> bool {
                    if let Err(e) = self.try_port(mapped, &mut judge, &mut probe, word, port, claim)
                    {
                        error = Some(e);
                        return true;
                    }
                    claim.ports.len() == count
                };
                let memo = self.span_memo.entry(*span);
                // A span found full (after its sweep) a moment ago is passed
                // over without a look until the next sweep is due.
                if !forced && memo.is_some_and(|m| m.recently(&m.full, now_ms)) {
                    continue;
                }
                if mapped.walk(*span, start, false, &mut visit) {
                    return error.map_or(Ok(()), Err);
                }
                if forced || !memo.is_some_and(|m| m.recently(&m.swept, now_ms)) {
                    if let Some(m) = memo {
                        m.swept.store(now_ms.max(1), Ordering::Relaxed);
                    }
                    if mapped.walk(*span, start, true, &mut visit) {
                        return error.map_or(Ok(()), Err);
                    }
                }
                if let Some(e) = error {
                    return Err(e);
                }
                if let Some(m) = memo {
                    m.full.store(now_ms.max(1), Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Try to win `port`'s slot and, if won, probe it.
    fn try_port(
        &self,
        mapped: &Mapped,
        judge: &mut Judge<'_>,
        probe: &mut Probe,
        word: u64,
        port: u16,
        claim: &mut Claim<'_>,
    ) -> Result<()> {
        if port == 0 || claim.ports.contains(&port) {
            return Ok(());
        }
        let slot = &mapped.slots()[usize::from(port)];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current != 0 && !judge.reclaimable(current) {
                mapped.mark(port); // repair a stale clear bit
                return Ok(());
            }
            match slot.compare_exchange(current, word, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(found) => current = found,
            }
        }
        mapped.mark(port);
        match probe.bind(port) {
            Ok(true) => {
                claim.ports.push(port);
                Ok(())
            }
            Ok(false) => {
                // Bound by something outside the table. The slot goes back,
                // but its summary bit stays set: walks skip the port until a
                // sweep looks at it again, so a few such ports cannot make
                // every call probe them in vain.
                mapped.release_as(claim.id, port);
                mapped.mark(port);
                Ok(())
            }
            Err(e) => {
                mapped.release_as(claim.id, port);
                Err(e)
            }
        }
    }

    /// Free `port` if this process reserved it (held or leased). Ports it
    /// does not hold are ignored (false).
    pub fn release(&self, port: u16) -> Result<bool> {
        if port == 0 {
            return Ok(false);
        }
        self.mine()[usize::from(port)].store(0, Ordering::Release);
        Ok(match self.live_mapping() {
            Some(mapped) => mapped
                .registered()
                .is_some_and(|id| mapped.release_as(id, port)),
            None => false,
        })
    }

    /// The current mapping if it is still the table at the path, without
    /// reopening: a release has nothing to do in a table that is gone (our
    /// ports reach a new table only when we reopen, which then sees that they
    /// were released), and must not fail or create files, at exit above all.
    fn live_mapping(&self) -> Option<Arc<Mapped>> {
        let mapped = self.current.load_full();
        mapped.file.is_current().then_some(mapped)
    }

    /// Free every port this process holds (not its leases, which outlive it
    /// by design); returns how many. A forked child holds nothing of its
    /// parent's, so this never frees the parent's ports.
    pub fn release_all(&self) -> Result<usize> {
        let mapped = self.live_mapping();
        let id = mapped.as_ref().and_then(|m| m.registered());
        let mut freed = 0;
        for (port, entry) in self.mine().iter().enumerate() {
            if entry.load(Ordering::Acquire) == MINE_HELD {
                entry.store(0, Ordering::Release);
                if let (Some(mapped), Some(id)) = (&mapped, id) {
                    if mapped.release_as(id, port as u16) {
                        freed += 1;
                    }
                }
            }
        }
        Ok(freed)
    }

    /// True if this process holds or leases `port` (a lease until it ends).
    pub fn holds(&self, port: u16) -> Result<bool> {
        if port == 0 {
            return Ok(false);
        }
        let mapped = self.mapped()?;
        let Some(id) = mapped.registered() else {
            return Ok(false);
        };
        let slot = Slot::decode(mapped.slots()[usize::from(port)].load(Ordering::Acquire));
        Ok(match slot {
            Slot::Lease { until, .. } if u64::from(until) <= process::clock_seconds() => false,
            other => id.made(other),
        })
    }

    /// Who reserved `port`, if anyone: (pid, still protected).
    pub fn owner(&self, port: u16) -> Result<Option<(u32, bool)>> {
        if port == 0 {
            return Ok(None);
        }
        Ok(self
            .holding(&*self.mapped()?, port)?
            .map(|h| (h.pid, h.alive)))
    }

    fn holding(&self, mapped: &Mapped, port: u16) -> Result<Option<Holding>> {
        let word = mapped.slots()[usize::from(port)].load(Ordering::Acquire);
        if word == 0 {
            return Ok(None);
        }
        let id = mapped.registered().unwrap_or(OwnerId {
            index: u16::MAX,
            generation: 0,
        });
        let mut judge = Judge::new(mapped, id);
        Ok(Some(describe(mapped, &mut judge, port, word)))
    }

    /// Every taken slot, with its owner and whether it is still protected.
    pub fn held(&self) -> Result<Vec<Holding>> {
        let mapped = self.mapped()?;
        let id = mapped.registered().unwrap_or(OwnerId {
            index: u16::MAX,
            generation: 0,
        });
        let mut judge = Judge::new(&mapped, id);
        let mut out = Vec::new();
        for (index, slot) in mapped.slots().iter().enumerate().skip(1) {
            let word = slot.load(Ordering::Acquire);
            if word != 0 {
                out.push(describe(&mapped, &mut judge, index as u16, word));
            }
        }
        Ok(out)
    }
}

fn describe(mapped: &Mapped, judge: &mut Judge<'_>, port: u16, word: u64) -> Holding {
    let slot = Slot::decode(word);
    let alive = !judge.reclaimable(word);
    let (pid, pid_here) = owner_pid(mapped, slot).unwrap_or((0, true));
    Holding {
        port,
        pid,
        pid_here,
        alive,
        lease_until: match slot {
            Slot::Lease { until, .. } => Some(u64::from(until)),
            _ => None,
        },
    }
}

fn owner_pid(mapped: &Mapped, slot: Slot) -> Option<(u32, bool)> {
    match slot {
        Slot::Held { owner, generation } => {
            owners::pid_of(&mapped.file, owner, |g| g == generation)
        }
        Slot::Lease { owner, tag, .. } => {
            owners::pid_of(&mapped.file, owner, |g| g & crate::slot::TAG_MASK == tag)
        }
        Slot::Free | Slot::Corrupt => None,
    }
}

fn pid_label(mapped: &Mapped, word: u64) -> String {
    match owner_pid(mapped, Slot::decode(word)) {
        Some((pid, true)) => pid.to_string(),
        Some((pid, false)) => format!("{pid} in another pid namespace"),
        None => "unknown".into(),
    }
}

/// Decides, once per owner per call, whether a taken slot has ended.
struct Judge<'a> {
    mapped: &'a Mapped,
    me: OwnerId,
    now: u64,
    memo: Vec<(OwnerId, bool)>,
}

impl<'a> Judge<'a> {
    fn new(mapped: &'a Mapped, me: OwnerId) -> Self {
        Judge {
            mapped,
            me,
            now: process::clock_seconds(),
            memo: Vec::new(),
        }
    }

    /// True if the reservation in `word` has ended: its owner died (or its
    /// record was taken again), its lease ran out, or it is not a word this
    /// protocol writes. An owner whose liveness cannot be told is alive.
    fn reclaimable(&mut self, word: u64) -> bool {
        match Slot::decode(word) {
            Slot::Free | Slot::Corrupt => true,
            Slot::Lease { until, .. } => u64::from(until) <= self.now,
            Slot::Held { owner, generation } => {
                let id = OwnerId {
                    index: owner,
                    generation,
                };
                if id == self.me {
                    return false;
                }
                if let Some(&(_, alive)) = self.memo.iter().find(|(o, _)| *o == id) {
                    return !alive;
                }
                let alive = if self.mapped.file.file().is_none() {
                    // In-process: any owner but us is a forked parent's ghost.
                    false
                } else {
                    owners::is_alive(&self.mapped.file, id).unwrap_or(true)
                };
                self.memo.push((id, alive));
                !alive
            }
        }
    }
}

impl Mapped {
    /// Visit the span's ports from `start` on (wrapping), only those whose
    /// summary bit is `taken`. Stops when `visit` returns true; returns that.
    fn walk(
        &self,
        span: Span,
        start: u16,
        taken: bool,
        visit: &mut impl FnMut(u16) -> bool,
    ) -> bool {
        let summary = self.summary();
        let mut pieces = vec![(start, span.hi)];
        if start > span.lo {
            pieces.push((span.lo, start - 1));
        }
        for (a, b) in pieces {
            let (a, b) = (usize::from(a), usize::from(b));
            for (w, word) in summary.iter().enumerate().take(b / 64 + 1).skip(a / 64) {
                let base = w * 64;
                let lo = a.max(base) - base;
                let hi = b.min(base + 63) - base;
                let mut mask = if hi - lo == 63 {
                    u64::MAX
                } else {
                    ((1u64 << (hi - lo + 1)) - 1) << lo
                };
                if span.step == 2 {
                    mask &= if span.lo % 2 == 1 {
                        0xAAAA_AAAA_AAAA_AAAA
                    } else {
                        0x5555_5555_5555_5555
                    };
                }
                let bits = word.load(Ordering::Acquire);
                let mut bits = mask & if taken { bits } else { !bits };
                while bits != 0 {
                    let port = (base + bits.trailing_zeros() as usize) as u16;
                    bits &= bits - 1;
                    if visit(port) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// What one process remembers of a span between calls: hints only, so that
/// threads racing on them can at worst cost a look or a sweep.
#[derive(Default)]
struct SpanMemo {
    key: AtomicU64,
    swept: AtomicU64,
    full: AtomicU64,
}

impl SpanMemo {
    fn recently(&self, at: &AtomicU64, now_ms: u64) -> bool {
        let last = at.load(Ordering::Relaxed);
        last != 0 && now_ms.saturating_sub(last) < SWEEP_INTERVAL_MS
    }
}

/// A few spans' memos (the default three, and ranges callers use).
#[derive(Default)]
struct SpanMemos {
    entries: [SpanMemo; 8],
    next: AtomicU64,
}

impl SpanMemos {
    /// The memo of `span`, taking over the oldest entry for a new one.
    fn entry(&self, span: Span) -> Option<&SpanMemo> {
        let key = (1 << 48)
            | (u64::from(span.lo) << 32)
            | (u64::from(span.hi) << 16)
            | u64::from(span.step);
        if let Some(found) = self
            .entries
            .iter()
            .find(|e| e.key.load(Ordering::Acquire) == key)
        {
            return Some(found);
        }
        let i = (self.next.fetch_add(1, Ordering::Relaxed) % 8) as usize;
        let entry = &self.entries[i];
        entry.swept.store(0, Ordering::Relaxed);
        entry.full.store(0, Ordering::Relaxed);
        entry.key.store(key, Ordering::Release);
        Some(entry)
    }
}

/// Milliseconds since this process first asked (only differences matter).
fn elapsed_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The ports one `reserve` call walks: spans in order, each visited from a
/// random start so concurrent allocators spread out instead of contending.
struct Candidates {
    spans: Vec<Span>,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    lo: u16,
    hi: u16,
    step: u16,
}

impl Span {
    fn len(self) -> usize {
        if self.hi < self.lo {
            0
        } else {
            usize::from(self.hi - self.lo) / usize::from(self.step) + 1
        }
    }

    fn random_start(self) -> u16 {
        let len = self.len().max(1) as u64;
        self.lo + ((random_u64() % len) as u16) * self.step
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
    /// the kernel's bind. Then, if those run out, the ephemeral range's odd
    /// ports (Linux's bind(0) uses odd ones, leaving even ones to connect()),
    /// then its even ones.
    fn default_spans() -> Self {
        let (lo, hi) = ephemeral_range();
        let mut spans = Vec::with_capacity(3);
        if hi < u16::MAX {
            spans.push(Span {
                lo: hi + 1,
                hi: u16::MAX,
                step: 1,
            });
        }
        let (odd, even) = if lo % 2 == 1 {
            (lo, lo + 1)
        } else {
            (lo + 1, lo)
        };
        spans.push(Span {
            lo: odd,
            hi,
            step: 2,
        });
        spans.push(Span {
            lo: even,
            hi,
            step: 2,
        });
        Candidates { spans }
    }

    fn len(&self) -> usize {
        self.spans.iter().map(|s| s.len()).sum()
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
                    (Some(Ok(lo)), Some(Ok(hi))) if 1 < lo && lo < hi => Some((lo, hi)),
                    _ => None,
                }
            })
            .unwrap_or((49_152, 65_535))
    })
}

/// How many ports the default candidates hold, by span: (above the
/// ephemeral range, its odd ports, its even ports).
pub fn default_capacity() -> (usize, usize, usize) {
    let spans = Candidates::default_spans().spans;
    let mut lens: Vec<usize> = spans.iter().map(|s| s.len()).collect();
    while lens.len() < 3 {
        lens.insert(0, 0);
    }
    (lens[0], lens[1], lens[2])
}

/// A well-mixed random number: clock, pid and a counter through splitmix64.
pub fn random_u64() -> u64 {
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
    mapped: &'a Mapped,
    id: OwnerId,
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
            self.mapped.release_as(self.id, port);
        }
    }
}

/// Bind-probes ports on one address, reusing a socket whose bind failed.
struct Probe {
    addr: SocketAddr,
    spare: Option<Socket>,
}

impl Probe {
    fn new(addr: SocketAddr) -> Self {
        Probe { addr, spare: None }
    }

    /// True if `port` is free to bind on the address; false if in use.
    fn bind(&mut self, port: u16) -> Result<bool> {
        let socket = match self.spare.take() {
            Some(socket) => socket,
            None => probe_socket(self.addr)?,
        };
        let mut target = self.addr;
        target.set_port(port);
        match socket.bind(&target.into()) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                // An unbound socket can probe the next port.
                self.spare = Some(socket);
                Ok(false)
            }
            Err(e) => Err(Error::os(format!("binding {target}"), e)),
        }
    }
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

#[cfg(test)]
mod tests;
