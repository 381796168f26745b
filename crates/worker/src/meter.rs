//! What an invocation used: CPU time on a core, peak and time-integrated linear memory.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use turnpike_policy::ClassId;

use crate::swap::SwapTotals;

/// Bytes per MB in Turnpike's memory figures (the guests' `mb=` is MiB too).
pub const BYTES_PER_MB: u64 = 1 << 20;

/// Usage of one invocation, reported whether it succeeded or not (a timed-out guest still
/// burned its CPU). This is what billing reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    /// The price class it ran at.
    pub class: ClassId,
    /// CPU time on a core, what the invocation is billed for: the thread CPU time spent inside
    /// polls of the guest while it held a slot. Parked, queued and I/O-blocked time are
    /// excluded, and so is time the OS took the thread away from us, and a swap-in of its
    /// memory before a poll (the swap-out was the platform's doing, as for memory billing).
    pub cpu: Duration,
    /// Wall time holding a slot: those polls and the swap-ins before them (equal to `cpu` on
    /// an idle machine without swapping; larger when the OS schedules other threads on the
    /// core). What the scheduler counts as the invocation's time on the core.
    pub on_core: Duration,
    /// Submit to end.
    pub wall: Duration,
    /// Submit to first slot (zero if it never ran).
    pub queued: Duration,
    /// Largest linear memory (all its memories together), bytes.
    pub peak_memory_bytes: u64,
    /// Linear memory integrated over the time the invocation used it, in MB-seconds: while it
    /// held a core slot or waited on its own I/O (a sleep, a body read, a call to another
    /// function), not while the worker kept it waiting for a slot: queued before its first run,
    /// parked by a preemption for a higher class (swapped out or not), ready again after its
    /// I/O but not yet given a slot back, or having its memory read back from swap before it
    /// runs again. So an invocation starved by higher classes is billed about what it would be
    /// run alone. Wasm memory only grows, so the integral is exact (updated at every grow, every
    /// change between billed and unbilled time, and at the end), not sampled. See
    /// [`crate::worker`] for which scheduler phases are billed.
    pub memory_mb_seconds: f64,
    /// Times the machine scheduler preempted it.
    pub parks: u32,
    /// Times it gave its slot back while blocked on I/O (a sleep, a body read).
    pub blocks: u32,
    /// Times its memory was swapped out, the bytes written to and read back from swap, and
    /// the time that took (writing off the slots; reading on a slot, before it ran again: the
    /// latency swapping added to it).
    pub swap: SwapTotals,
}

/// Linear memory of one invocation, updated by its store's resource limiter at every grow and
/// read by the executor (to tell the machine scheduler) and at the end (for [`Usage`]).
///
/// Its MB-seconds accrue only while the invocation is billed: the worker's gate says when
/// with [`set_billed`] at every change of the invocation's phase, and brackets a swap-in with
/// [`set_restoring`] (unbilled whatever the phase). Memory grown while unbilled (a guest
/// preempted a moment ago still finishing its poll) counts from the next billed instant.
///
/// [`set_billed`]: MemoryMeter::set_billed
/// [`set_restoring`]: MemoryMeter::set_restoring
#[derive(Debug)]
pub struct MemoryMeter {
    state: Mutex<MemoryState>,
}

#[derive(Debug)]
struct MemoryState {
    bytes: u64,
    peak: u64,
    /// The last time `byte_nanos` was brought up to date; never goes back.
    since: Instant,
    byte_nanos: u128,
    /// The invocation's phase is billed (see [`MemoryMeter::set_billed`]).
    billed: bool,
    /// Its memory is being read back from swap (see [`MemoryMeter::set_restoring`]).
    restoring: bool,
    /// The last grow the limiter allowed, undone if wasmtime then fails it. wasmtime reports
    /// failures but not successes, so this is cleared at the next epoch tick ([`settled`]),
    /// by which time the grow has certainly completed.
    ///
    /// [`settled`]: MemoryMeter::settled
    pending_grow: Option<u64>,
    /// Set when a grow was refused for exceeding the cap: `(cap, requested)`.
    cap_hit: Option<(u64, u64)>,
}

impl MemoryMeter {
    /// A meter billed from `now` on, for an invocation run outside a worker's scheduler.
    pub fn new(now: Instant) -> Self {
        Self::with_billed(true, now)
    }

    /// A meter that bills nothing until [`set_billed`](Self::set_billed): a worker's
    /// invocation, which arrives waiting for a slot.
    pub fn unbilled(now: Instant) -> Self {
        Self::with_billed(false, now)
    }

    fn with_billed(billed: bool, now: Instant) -> Self {
        Self {
            state: Mutex::new(MemoryState {
                bytes: 0,
                peak: 0,
                since: now,
                byte_nanos: 0,
                billed,
                restoring: false,
                pending_grow: None,
                cap_hit: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding this lock leaves plain numbers behind; they stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the invocation is in a billed phase (as last told by
    /// [`set_billed`](Self::set_billed)).
    pub fn billed(&self) -> bool {
        self.lock().billed
    }

    /// Current linear memory, bytes.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// A memory of the instance grew (or was created) by `delta` bytes at `now`.
    pub fn grew(&self, delta: u64, now: Instant) {
        let mut s = self.lock();
        s.integrate(now);
        s.bytes += delta;
        s.peak = s.peak.max(s.bytes);
        s.pending_grow = Some(delta);
    }

    /// From `now` on, the invocation is (`true`) or is not (`false`) in a billed phase. The
    /// worker calls this at every phase change, under the lock that orders those changes.
    pub fn set_billed(&self, billed: bool, now: Instant) {
        let mut s = self.lock();
        s.integrate(now);
        s.billed = billed;
    }

    /// From `now` on, its memory is (`true`) or is no longer (`false`) being read back from
    /// swap; that time is not billed, whatever the phase. Kept apart from
    /// [`set_billed`](Self::set_billed) so a phase change during a swap-in is not lost.
    pub fn set_restoring(&self, restoring: bool, now: Instant) {
        let mut s = self.lock();
        s.integrate(now);
        s.restoring = restoring;
    }

    /// wasmtime failed a grow: undo the one the limiter had just allowed, if any (wasmtime also
    /// reports failures that never reached the limiter, which changed nothing).
    pub fn grow_failed(&self, now: Instant) {
        let mut s = self.lock();
        if let Some(delta) = s.pending_grow.take() {
            s.integrate(now);
            s.bytes -= delta;
        }
    }

    /// The guest ran on after its last grow, so that grow succeeded.
    pub fn settled(&self) {
        self.lock().pending_grow = None;
    }

    pub fn cap_hit(&self, cap: u64, requested: u64) {
        self.lock().cap_hit = Some((cap, requested));
    }

    /// `(cap, requested)` if a grow was refused for exceeding the cap.
    pub fn cap_exceeded(&self) -> Option<(u64, u64)> {
        self.lock().cap_hit
    }

    /// Peak bytes and billed MB-seconds up to `now`.
    pub fn totals(&self, now: Instant) -> (u64, f64) {
        let mut s = self.lock();
        s.integrate(now);
        let mb_seconds = s.byte_nanos as f64 / (BYTES_PER_MB as f64 * 1e9);
        (s.peak, mb_seconds)
    }
}

impl MemoryState {
    /// Brings `byte_nanos` up to `now`: the time since the last update is billed if the
    /// invocation was billed and not restoring throughout it (every change of either flag
    /// integrates first). Callers read the clock before taking the lock, so `now` can be a
    /// little behind `since`; that span was already counted and is not counted again.
    fn integrate(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.since);
        if self.billed && !self.restoring {
            self.byte_nanos += u128::from(self.bytes) * dt.as_nanos();
        }
        self.since = self.since.max(now);
    }
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_is_exact_for_piecewise_constant_memory() {
        let t0 = Instant::now();
        let m = MemoryMeter::new(t0);
        m.grew(BYTES_PER_MB, t0);
        m.grew(BYTES_PER_MB, t0 + Duration::from_secs(1));
        let (peak, mbs) = m.totals(t0 + Duration::from_secs(3));
        assert_eq!(peak, 2 * BYTES_PER_MB);
        // 1 MB for 1 s, then 2 MB for 2 s.
        assert!((mbs - 5.0).abs() < 1e-9, "{mbs}");
    }

    #[test]
    fn unbilled_and_restoring_time_does_not_accrue() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let m = MemoryMeter::unbilled(t0);
        // Queued 1 s: nothing accrues even once memory exists.
        m.set_billed(true, s(1));
        m.grew(2 * BYTES_PER_MB, s(1));
        // Billed 2 s (4 MB-s), parked 10 s, grown while parked (a guest finishing its poll).
        m.set_billed(false, s(3));
        m.grew(BYTES_PER_MB, s(4));
        // Resumed, swapping in for 5 s: unbilled; then 1 s running at 3 MB (3 MB-s).
        m.set_billed(true, s(13));
        m.set_restoring(true, s(13));
        m.set_restoring(false, s(18));
        let (peak, mbs) = m.totals(s(19));
        assert_eq!(peak, 3 * BYTES_PER_MB);
        assert!((mbs - 7.0).abs() < 1e-9, "{mbs}");
        // A phase change during a swap-in keeps the swap-in unbilled and takes effect after.
        m.set_restoring(true, s(19));
        m.set_billed(false, s(20));
        m.set_billed(true, s(21));
        m.set_restoring(false, s(22));
        let (_, mbs) = m.totals(s(23));
        assert!((mbs - 10.0).abs() < 1e-9, "{mbs}");
    }

    #[test]
    fn a_late_clock_reading_is_not_counted_twice() {
        let t0 = Instant::now();
        let m = MemoryMeter::new(t0);
        m.grew(BYTES_PER_MB, t0);
        m.set_billed(true, t0 + Duration::from_secs(2));
        // Read before the lock, by a thread that got the lock second.
        m.grew(BYTES_PER_MB, t0 + Duration::from_secs(1));
        let (_, mbs) = m.totals(t0 + Duration::from_secs(3));
        // 1 MB for 2 s, then 2 MB from 2 s to 3 s.
        assert!((mbs - 4.0).abs() < 1e-9, "{mbs}");
    }

    #[test]
    fn a_failed_grow_is_undone() {
        let t0 = Instant::now();
        let m = MemoryMeter::new(t0);
        m.grew(10, t0);
        m.settled();
        m.grew(5, t0);
        m.grow_failed(t0);
        assert_eq!(m.bytes(), 10);
        // A failure that never reached the limiter undoes nothing.
        m.grow_failed(t0);
        assert_eq!(m.bytes(), 10);
    }

    #[test]
    fn thread_cpu_time_advances_with_work() {
        let before = thread_cpu_time();
        let mut x = 1u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        assert!(thread_cpu_time() > before, "{x}");
    }
}
