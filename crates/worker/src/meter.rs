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
    /// CPU time on a core: the thread CPU time spent inside polls of the guest while it held a
    /// slot. Parked, queued and I/O-blocked time are excluded, and so is time the OS took the
    /// thread away from us.
    pub cpu: Duration,
    /// Wall time inside those polls (equal to `cpu` on an idle machine; larger when the OS
    /// schedules other threads on the core).
    pub on_core: Duration,
    /// Submit to end.
    pub wall: Duration,
    /// Submit to first slot (zero if it never ran).
    pub queued: Duration,
    /// Largest linear memory (all its memories together), bytes.
    pub peak_memory_bytes: u64,
    /// Linear memory integrated over the instance's life, in MB-seconds: wasm memory only grows,
    /// so the integral is exact (updated at every grow and at the end), not sampled.
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
#[derive(Debug)]
pub struct MemoryMeter {
    state: Mutex<MemoryState>,
}

#[derive(Debug)]
struct MemoryState {
    bytes: u64,
    peak: u64,
    since: Instant,
    byte_nanos: u128,
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
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(MemoryState {
                bytes: 0,
                peak: 0,
                since: now,
                byte_nanos: 0,
                pending_grow: None,
                cap_hit: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding this lock leaves plain numbers behind; they stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Peak bytes and MB-seconds up to `now`.
    pub fn totals(&self, now: Instant) -> (u64, f64) {
        let mut s = self.lock();
        s.integrate(now);
        let mb_seconds = s.byte_nanos as f64 / (BYTES_PER_MB as f64 * 1e9);
        (s.peak, mb_seconds)
    }
}

impl MemoryState {
    fn integrate(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.since);
        self.byte_nanos += u128::from(self.bytes) * dt.as_nanos();
        self.since = now;
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
